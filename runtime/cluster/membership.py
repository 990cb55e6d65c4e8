"""Membership: which nodes are alive, on Redis's clock.

Design:
- A sorted set ``<prefix>:members`` holds each live node with its deadline
  (Redis time, milliseconds): a heartbeat moves it forward by
  ``member_timeout``. Time comes from Redis (``TIME``), never from the
  nodes' clocks, so nodes whose clocks disagree still agree on who is dead.
- One Lua script does a heartbeat atomically: it removes every member whose
  deadline has passed (so any live node declares the dead ones), adds or
  refreshes this node, and when the set changed bumps ``<prefix>:epoch`` and
  publishes the new epoch on ``<prefix>:events``. The others react to the
  publication at once, and to their own next heartbeat if it was missed.
- A Redis restarted without persistence has no members and epoch 0: each
  node's next heartbeat adds it again, as a change, so the cluster rebuilds
  its view within a heartbeat. Epochs are compared for *difference*, never
  order, for that reason.
- Leaving (a drain) removes the node and publishes at once.
- One process a node id: each process draws a random token, and a
  heartbeat holds ``<prefix>:instance:<id>`` with it for ``member_timeout``.
  A heartbeat that finds another token there does not add the node. A
  second process started with a live node's id (a copied file) shared its
  forwarding inbox and took the other's forwarded sends; now it waits for
  the key to run out (a restart after a crash: the old process's key lasts
  ``member_timeout`` at most) and refuses to join if it does not. A process
  that finds its id taken later (it was silent past ``member_timeout``, and
  another took the id) stops.
- What each member can run goes with its membership record: the channels
  of its deployment file (the catalog's file entries carry no spec, so a
  member whose file lacks one cannot run it). A node writes them once, as
  a set ``<prefix>:files:<id>:<digest>``, and each heartbeat puts the
  digest in the hash ``<prefix>:files`` and gives the set the member's
  expiry, in the same script: the others read the set only when a member's
  digest is new to them, so a steady cluster reads nothing more. A new
  digest is a change of the view (the epoch is bumped and published); a
  dead member's field goes with it, a leaving one removes its own. A
  heartbeat that finds the set gone (a Redis that lost its data) says so,
  and the node writes it again before its next one. A reader takes a set
  only if it matches its digest, and keeps each set by its digest (the
  digest names the content: a digest seen before is never read again, even
  after a heartbeat that missed its member, and members with one file share
  one read). A member whose digest is known but whose set is not read yet
  (lost, being written again) runs no file channel until it is: it
  published a digest, so it is of this version.
- A member with no digest (a node of an older version) publishes nothing:
  it takes the file channels its own placement gives it (the ring over
  every member), as before, and no others.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

import attrs
import trio
import xxhash

from . import rebirth
from .redis import ClusterUnavailable, RedisLink

__all__ = ["Membership", "View", "digest"]

log = logging.getLogger("switchboard.cluster")

_BEAT: Final = (
    rebirth.LUA
    + """
local quarantine = reborn(KEYS[3], KEYS[4], ARGV[4] == '1', ARGV[5])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local changed = false
local taken = 0
local missing = 0
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
if #dead > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  for i = 1, #dead do redis.call('HDEL', KEYS[6], dead[i]) end
  changed = true
end
if ARGV[1] ~= '' then
  local holder = redis.call('GET', KEYS[5])
  if holder and holder ~= ARGV[6] then
    taken = 1
  else
    redis.call('SET', KEYS[5], ARGV[6], 'PX', tonumber(ARGV[2]))
    if redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1]) == 1 then changed = true end
    if ARGV[7] ~= '' then
      -- (an empty file has no set to keep)
      if ARGV[8] ~= '0' and redis.call('PEXPIRE', KEYS[7], tonumber(ARGV[2])) == 0 then
        missing = 1
      end
      if redis.call('HGET', KEYS[6], ARGV[1]) ~= ARGV[7] then
        redis.call('HSET', KEYS[6], ARGV[1], ARGV[7])
        changed = true
      end
    end
  end
end
local epoch
if changed then
  epoch = redis.call('INCR', KEYS[2])
  redis.call('PUBLISH', ARGV[3], epoch)
else
  epoch = tonumber(redis.call('GET', KEYS[2]) or '0')
end
local members = redis.call('ZRANGE', KEYS[1], 0, -1)
local digests = {}
if #members > 0 then digests = redis.call('HMGET', KEYS[6], unpack(members)) end
local named = 0
for i = 1, #members do if digests[i] then named = named + 1 end end
if redis.call('HLEN', KEYS[6]) > named then
  -- fields of members another script declared dead (an older node's): gone too
  for _, name in ipairs(redis.call('HKEYS', KEYS[6])) do
    if not redis.call('ZSCORE', KEYS[1], name) then redis.call('HDEL', KEYS[6], name) end
  end
end
return {epoch, now, members, quarantine, taken, digests, missing}
"""
)

_LEAVE: Final = """
if redis.call('GET', KEYS[3]) ~= ARGV[3] then return 0 end
redis.call('DEL', KEYS[3])
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('DEL', KEYS[5])
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  local epoch = redis.call('INCR', KEYS[2])
  redis.call('PUBLISH', ARGV[2], epoch)
end
return 1
"""

# The set of a node's file channels, written whole (in one script: a reader never
# sees part of it) with the member's expiry; the heartbeat then names its digest.
_FILES: Final = """
redis.call('DEL', KEYS[1])
for i = 2, #ARGV, 1000 do
  redis.call('SADD', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]))
return 1
"""


@attrs.frozen(kw_only=True)
class View:
    """The cluster as one heartbeat saw it.

    Attributes:
        epoch: bumped at every change of the member set (compare for equality).
        members: the live nodes, sorted.
        redis_time: Redis's clock at that heartbeat, seconds.
        files: each member's file channels, for the members that published
            them (one missing from it publishes nothing: it runs every channel).
    """

    epoch: int
    members: tuple[str, ...]
    redis_time: float
    files: Mapping[str, frozenset[str]] = attrs.field(factory=dict)


class Membership:
    """One node's membership (see the module docstring).

    Args:
        link: the cluster's Redis.
        prefix: the cluster's key prefix.
        node_id: this node's name.
        heartbeat_interval: seconds between heartbeats.
        member_timeout: seconds after the last heartbeat a node is dead.
        quarantine: seconds no lease is granted after Redis is found to have
            lost its data (the lease TTL; ``runtime.cluster.rebirth``).
        files: the channels of this node's deployment file (published with
            its membership: the file entries of the catalog it can run).
    """

    def __init__(
        self,
        link: RedisLink,
        *,
        prefix: str,
        node_id: str,
        heartbeat_interval: float,
        member_timeout: float,
        quarantine: float = 0.0,
        files: Iterable[str] = (),
    ) -> None:
        self.link = link
        self.quarantine = quarantine
        self._rebirth = rebirth.keys(prefix)
        self._quarantined = False
        self.node_id = node_id
        self.heartbeat_interval = heartbeat_interval
        self.member_timeout = member_timeout
        self.members_key = f"{prefix}:members"
        self.instance_key = f"{prefix}:instance:{node_id}"
        self.token = secrets.token_hex(8)  # this process's: one process a node id
        self.taken = False  # the last heartbeat found the id held by another process
        self.epoch_key = f"{prefix}:epoch"
        self.events = f"{prefix}:events"
        self._beat = link.script(_BEAT)
        self._leave = link.script(_LEAVE)
        self._write_files = link.script(_FILES)
        self.files = frozenset(files)
        self.files_digest = digest(self.files)
        self.files_hash = f"{prefix}:files"
        self.files_key = f"{self.files_hash}:{node_id}:{self.files_digest}"
        self._files_written = False  # the set is in Redis (as far as this node knows)
        self._sets: dict[str, frozenset[str]] = {}  # digest -> its set, recently seen
        self.files_read = 0  # other members' file sets read from Redis
        self.view: View | None = None
        self.last_beat: float | None = None  # trio time of the last successful heartbeat
        self._poke = trio.Event()
        self._left = False
        # The cluster ran before this process (its store holds checkpoints under
        # leases): a Redis without its marker at the first heartbeat was reborn.
        self.known = False

    def __repr__(self) -> str:
        view = self.view
        members = "?" if view is None else f"{len(view.members)} epoch={view.epoch}"
        return f"<Membership {self.node_id} members={members}>"

    async def beat(self) -> View:
        """One heartbeat: declare the dead, refresh this node; the view it saw.

        Raises:
            ClusterUnavailable: Redis did not answer.
        """
        me = "" if self._left else self.node_id
        known = self.known or self.view is not None
        timeout_ms, quarantine_ms = round(self.member_timeout * 1000), round(self.quarantine * 1000)
        if me and self.files and not self._files_written:
            await self._write_files([self.files_key], [timeout_ms, *sorted(self.files)])
            self._files_written = True
        epoch, now_ms, members, left_ms, taken, digests, missing = await self._beat(
            [
                self.members_key,
                self.epoch_key,
                *self._rebirth,
                self.instance_key,
                self.files_hash,
                self.files_key,
            ],
            [
                me,
                timeout_ms,
                self.events,
                int(known),
                quarantine_ms,
                self.token,
                self.files_digest,
                len(self.files),
            ],
        )
        self.taken = bool(taken)
        if missing:  # Redis lost the set: written again before the next heartbeat
            self._files_written = False
            self._poke.set()
        quarantined = int(left_ms) > 0
        if quarantined and not self._quarantined:
            log.warning(
                "cluster: Redis lost its data (restarted without persistence, or failed "
                "over): no channel changes hands for %.1f s, while the leases granted "
                "before run out; live holders keep theirs",
                int(left_ms) / 1000,
            )
        self._quarantined = quarantined
        names = [_text(m) for m in members]
        published = {m: _text(d) for m, d in zip(names, digests, strict=False) if d is not None}
        view = View(
            epoch=int(epoch),
            members=tuple(sorted(names)),
            redis_time=int(now_ms) / 1000,
            files=await self._files_of(published),
        )
        self.view = view
        self.last_beat = trio.current_time()
        return view

    async def _files_of(self, published: Mapping[str, str]) -> dict[str, frozenset[str]]:
        """Each member's file channels from their digests: read only those new to this node.

        A set that does not match its digest (gone with its member, or a
        Redis that lost it) is not taken: what was known of the member stays
        (for one new here, nothing: it runs no file channel until its set
        is read), and the set is read again at the next heartbeat. Sets
        are kept by digest, the most recent few per member.
        """
        sets = self._sets
        sets[self.files_digest] = self.files
        result: dict[str, frozenset[str]] = {}
        for member, found in published.items():
            if found not in sets:
                raw = await self.link.call("SMEMBERS", f"{self.files_hash}:{member}:{found}")
                self.files_read += 1
                files = frozenset(_text(c) for c in raw)
                if digest(files) == found:
                    sets[found] = files
            # (a member of this version whose set is not read yet runs no file entry)
            result[member] = sets.get(found, frozenset())
        for stale in list(sets)[: max(len(sets) - 4 * len(published) - 16, 0)]:
            del sets[stale]  # (oldest first)
        return dict(sorted(result.items()))

    async def leave(self) -> None:
        """Leave the cluster now (a drain); later heartbeats only watch.

        Raises:
            ClusterUnavailable: Redis did not answer (the node is then
                declared dead after ``member_timeout``).
        """
        self._left = True
        await self._leave(
            [self.members_key, self.epoch_key, self.instance_key, self.files_hash, self.files_key],
            [self.node_id, self.events, self.token],
        )

    async def run(
        self,
        on_view: Callable[[View], Any],
        task_status: Any = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Heartbeat until cancelled; call ``on_view`` whenever the view changed.

        ``started()`` once the node has joined (its first heartbeat).

        Raises:
            ClusterUnavailable: the first heartbeat failed (the node cannot join),
                or another live process holds this node's id.
        """
        last = await self._join()
        on_view(last)
        task_status.started(last)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._listen)
            failing = False
            while True:
                with trio.move_on_after(self.heartbeat_interval):
                    await self._poke.wait()
                self._poke = trio.Event()
                try:
                    view = await self.beat()
                except ClusterUnavailable as exc:
                    if not failing:
                        log.warning("cluster heartbeat failed (retrying): %s", exc)
                    failing = True
                    continue
                if failing:
                    log.info("cluster heartbeats go through again")
                    failing = False
                if self.taken:
                    # Another process runs this node id now: two would place the
                    # same channels on themselves and share its forwarding inbox.
                    nursery.cancel_scope.cancel()
                    break
                if (
                    view.epoch != last.epoch
                    or view.members != last.members
                    or view.files != last.files
                ):
                    last = view
                    on_view(view)
        raise ClusterUnavailable(
            f"node id {self.node_id!r} was taken by another process while this one "
            "was silent past member_timeout; this one stops"
        )

    async def _join(self) -> View:
        """The first heartbeat, once no other process holds this node's id.

        A process that held it and died (a restart after a crash) lets it go
        within ``member_timeout``; one that still beats keeps it.
        """
        patience = self.member_timeout + 2 * self.heartbeat_interval
        until = trio.current_time() + patience
        view = await self.beat()
        if self.taken:
            log.warning(
                "cluster: node id %s is held by another process's heartbeat; waiting up "
                "to %g s for it to run out (a restart after a crash lets it go)",
                self.node_id,
                patience,
            )
        while self.taken:
            if trio.current_time() >= until:
                raise ClusterUnavailable(
                    f"node id {self.node_id!r} is taken: another process runs the cluster "
                    f"node of that id (its heartbeats went on for {patience:g} s); give "
                    "this node an id of its own ([node] id)"
                )
            await trio.sleep(self.heartbeat_interval)
            view = await self.beat()
        return view

    async def _listen(self) -> None:
        async for _ in self.link.listen(self.events):
            self._poke.set()  # another node changed the set: look now


def digest(channel_ids: Iterable[str]) -> str:
    """A set of channel ids' digest (the same for the same set, in any order)."""
    return xxhash.xxh3_128_hexdigest("\n".join(sorted(channel_ids)).encode())


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
