"""Leases: the right to connect a channel, with a fencing token that only grows.

Design:
- ``<prefix>:lease:<channel>`` holds ``"<node>|<token>"`` with a TTL (Redis
  expires it); ``<prefix>:token:<channel>`` is the channel's token counter.
  Acquiring is one Lua script: if nobody holds the lease, the token becomes
  ``max(counter + 1, floor + 1)`` (``floor``: the highest token the durable
  store has seen for the channel, so a Redis that lost its data cannot hand
  out an old token) and the lease is set with the TTL. Held by someone
  else: the answer is who, and for how much longer.
- A counter expires :data:`TOKEN_KEEP` after it last handed out a token
  (or a rebirth raised it): the counters of channels taken out of the
  catalog stayed in Redis for good. One gone that way is one Redis lost:
  the floor (the token of the channel's checkpoints) carries the count on,
  and while its lease is held nobody else acquires it.
- Renewal is batched: one script call renews up to ``renew_batch`` leases
  (each only if still ``"<node>|<token>"``) and says which were lost. For
  1,000,000 channels on 100 nodes at a 10 s TTL, renewing at TTL/3 in
  batches of 500 is 10,000 leases per node per 3.3 s: 6 script calls a
  second per node, 600 in all, where one by one would be 300,000 commands.
- A Redis that lost its data hands out no lease for one TTL, and live
  holders re-assert theirs meanwhile (``runtime.cluster.rebirth``).
- Release is compare-and-delete, after the connection is closed, and
  publishes the channel on ``<prefix>:released``: a node waiting for that
  lease (the channel moves to it) takes it at once instead of at the
  expiry Redis had announced. A missed message costs only that wait.
- An operator may release a lease by force (``force_release``), compare-and-
  set on the ``"<node>|<token>"`` they saw. A holder that is dead: the lease
  is deleted and the release announced, and the next owner acquires it with
  a higher token at once. A holder that is alive but stuck: the lease is
  replaced by a tombstone that lives as long as the lease had left, so the
  holder's next renewal finds it lost (it drops the connection) and nobody
  may acquire it before the holder's own deadline has passed. Either way
  the old token is fenced: the next one is higher, and the store refuses a
  checkpoint with a lower one.
- A lease key whose value no node wrote (``"<node>|<token>"``, with an
  expiry) is another deployment's or program's under the same prefix: it
  is read as held by nobody a call could go to, and asked for again a
  TTL later, with a warning that says so.
- The node-side guarantee is :class:`LeaseClock` (pure): a lease renewed by
  a request *sent* at ``t`` (the node's monotonic clock) is safe to use
  until ``t + ttl - margin``; Redis cannot expire it sooner, whatever the
  network did. The margin covers the two clocks' drift; a loop that has been
  running late gives that up too (``lag``, see ``runtime.lag``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from typing import Final

import attrs

from . import rebirth
from .redis import RedisLink

__all__ = ["Acquired", "Held", "LeaseClock", "Leases", "parse_lease"]

log = logging.getLogger("switchboard.cluster")

DRIFT: Final = 0.02  # the fraction of a TTL by which two clocks may disagree
MARGIN_MIN: Final = 0.25  # seconds; never less than this
TOKEN_KEEP: Final = 7 * 86_400.0  # seconds a token counter outlives the last token it gave

_ACQUIRE: Final = (
    rebirth.LUA
    + """
local known = ARGV[4] == '1' or tonumber(ARGV[3]) > 0
local quarantine = reborn(KEYS[3], KEYS[4], known, ARGV[2])
if quarantine > 0 then
  return {0, '(Redis lost its data: quarantine)', quarantine}
end
local held = redis.call('GET', KEYS[1])
if held then
  return {0, held, redis.call('PTTL', KEYS[1])}
end
local token = redis.call('INCR', KEYS[2])
local floor = tonumber(ARGV[3])
if token <= floor then
  token = floor + 1
  redis.call('SET', KEYS[2], token)
end
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. token, 'PX', ARGV[2])
return {1, token, tonumber(ARGV[2])}
"""
)

# KEYS: alive, reborn, n lease keys, n token keys; ARGV: ttl, n values, n tokens
# (a token of -1: this holder's tenure has lapsed, it may not re-assert), TOKEN_KEEP.
_RENEW: Final = (
    rebirth.LUA
    + """
local quarantine = reborn(KEYS[1], KEYS[2], true, ARGV[1])
local n = (#KEYS - 2) / 2
local keep = ARGV[2 + 2 * n]
local lost = {}
for i = 1, n do
  local key = KEYS[2 + i]
  local held = redis.call('GET', key)
  if held == ARGV[1 + i] then
    redis.call('PEXPIRE', key, ARGV[1])
  else
    local token = tonumber(ARGV[1 + n + i])
    local counter = tonumber(redis.call('GET', KEYS[2 + n + i]) or '0')
    if not held and quarantine > 0 and token >= 0 and counter <= token then
      redis.call('SET', key, ARGV[1 + i], 'PX', ARGV[1])
      redis.call('SET', KEYS[2 + n + i], token, 'PX', keep)
    else
      lost[#lost + 1] = i
    end
  end
end
return lost
"""
)

_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 1
end
return 0
"""


# KEYS: the lease; ARGV: the value seen, tombstone ('' = delete), released channel, channel id
_FORCE_RELEASE: Final = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return -1
end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[3], ARGV[4])
  return 0
end
local left = redis.call('PTTL', KEYS[1])
if left <= 0 then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[3], ARGV[4])
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', left)
return left
"""

_TOKEN_KEEP_MS: Final = round(TOKEN_KEEP * 1000)
TOMBSTONE: Final = "(force-released)"  # the holder a tombstone shows (see force_release)


def parse_lease(text: str) -> tuple[str, int] | None:
    """``(node, token)`` of a lease's value; ``None`` for a value no node wrote.

    Such a value is another program's, or another deployment's that uses the
    same key prefix on this Redis (or a tombstone, which callers look for first).
    """
    node, sep, token = text.rpartition("|")
    if not sep or not node or not (token.isascii() and token.isdigit()):
        return None
    return node, int(token)


@attrs.frozen
class Acquired:
    """The lease is ours. Attributes: the fencing token."""

    token: int


@attrs.frozen
class Held:
    """Someone else holds the lease.

    Attributes:
        holder: their ``"<node>|<token>"``.
        expires_in: seconds left on it (Redis's count).
    """

    holder: str
    expires_in: float


@attrs.frozen
class LeaseClock:
    """How long a renewed lease may be used, on the node's own clock.

    Attributes:
        ttl: the lease's TTL, seconds.
    """

    ttl: float

    @property
    def margin(self) -> float:
        """Seconds given up at the end of each lease, for clock drift."""
        return max(MARGIN_MIN, self.ttl * DRIFT)

    def deadline(self, sent_at: float, *, lag: float = 0.0) -> float:
        """Until when a lease (re)set by a request sent at ``sent_at`` is safe to use.

        Args:
            sent_at: when the request left, on the node's monotonic clock.
            lag: seconds more to give up, for an event loop that runs late
                (its cancel at the deadline would come that late).
        """
        return sent_at + self.ttl - self.margin - lag


class Leases:
    """The cluster's leases, as one node acquires, renews and releases them.

    Args:
        link: the cluster's Redis.
        prefix: the cluster's key prefix.
        node_id: this node's name.
        ttl: the lease TTL, seconds.
    """

    def __init__(self, link: RedisLink, *, prefix: str, node_id: str, ttl: float) -> None:
        self.link = link
        self.prefix = prefix
        self.node_id = node_id
        self.ttl = ttl
        self.clock = LeaseClock(ttl)
        self.known = False  # this node has seen the cluster (a rebirth is then noticed)
        self._rebirth = rebirth.keys(prefix)
        self._acquire = link.script(_ACQUIRE)
        self._renew = link.script(_RENEW)
        self._release = link.script(_RELEASE)
        self._force_release = link.script(_FORCE_RELEASE)

    @property
    def released_channel(self) -> str:
        """The pub/sub channel on which released leases are announced."""
        return f"{self.prefix}:released"

    def lease_key(self, channel_id: str) -> str:
        return f"{self.prefix}:lease:{channel_id}"

    def token_key(self, channel_id: str) -> str:
        return f"{self.prefix}:token:{channel_id}"

    def value(self, token: int) -> str:
        return f"{self.node_id}|{token}"

    async def acquire(self, channel_id: str, *, floor: int = 0) -> Acquired | Held:
        """Take the channel's lease if nobody holds it.

        Args:
            channel_id: the channel.
            floor: the highest token known for it (the store's checkpoint).

        Raises:
            ClusterUnavailable: Redis did not answer.
        """
        ok, value, ttl_ms = await self._acquire(
            [self.lease_key(channel_id), self.token_key(channel_id), *self._rebirth],
            [self.node_id, round(self.ttl * 1000), floor, int(self.known), _TOKEN_KEEP_MS],
        )
        if int(ok) == 1:
            self.known = True
            return Acquired(int(value))
        holder = value.decode() if isinstance(value, bytes) else str(value)
        if int(ttl_ms) < 0 or (parse_lease(holder) is None and not holder.startswith("(")):
            # Every lease and tombstone this cluster writes expires, and reads
            # "<node>|<token>": asked again at once, it was asked 20 times a
            # second (a store read each), for good, and said nothing.
            log.warning(
                "cluster: channel %s's lease key %s holds a value no node of this cluster "
                "wrote%s: another deployment or program uses key_prefix %r on this Redis "
                "(give each deployment a key_prefix of its own); asked again in %g s",
                channel_id,
                self.lease_key(channel_id),
                ", with no expiry" if int(ttl_ms) < 0 else "",
                self.prefix,
                self.ttl,
                extra={"channel": channel_id},
            )
            return Held(holder, self.ttl)
        return Held(holder, max(int(ttl_ms), 0) / 1000)

    async def renew(self, held: Sequence[tuple[str, int, bool]]) -> list[str]:
        """Renew these ``(channel, token, tenure valid)`` leases in one script call.

        A lease Redis forgot in a rebirth is re-asserted if its tenure is
        still valid (``rebirth``). Returns the channels whose leases are lost.

        Raises:
            ClusterUnavailable: Redis did not answer (none may be assumed renewed).
        """
        if not held:
            return []
        self.known = True
        keys = [
            *self._rebirth,
            *(self.lease_key(channel) for channel, _, _ in held),
            *(self.token_key(channel) for channel, _, _ in held),
        ]
        args = [
            round(self.ttl * 1000),
            *(self.value(token) for _, token, _ in held),
            *(token if valid else -1 for _, token, valid in held),
            _TOKEN_KEEP_MS,
        ]
        lost = await self._renew(keys, args)
        return [held[int(i) - 1][0] for i in lost]

    async def release(self, channel_id: str, token: int) -> bool:
        """Give the lease up if it is still ours (compare-and-delete).

        Raises:
            ClusterUnavailable: Redis did not answer (it then expires by itself).
        """
        deleted = await self._release(
            [self.lease_key(channel_id)], [self.value(token), self.released_channel, channel_id]
        )
        return bool(int(deleted))

    async def force_release(self, channel_id: str, seen: str, *, keep: bool) -> float | None:
        """An operator's release of a lease still ``seen`` (``"<node>|<token>"``).

        Args:
            channel_id: the channel.
            seen: the lease's value as the operator saw it; another means it
                changed hands meanwhile, and nothing is done.
            keep: the holder may still run: leave a tombstone for the
                lease's remaining time instead of deleting it.

        Returns:
            ``None``: the lease is no longer ``seen``; else seconds until it
            may be acquired (0: now).

        Raises:
            ClusterUnavailable: Redis did not answer.
        """
        node, _, token = seen.rpartition("|")
        tombstone = f"{TOMBSTONE} {node}|{token}" if keep else ""
        left = int(
            await self._force_release(
                [self.lease_key(channel_id)],
                [seen, tombstone, self.released_channel, channel_id],
            )
        )
        return None if left < 0 else left / 1000

    async def released(self) -> AsyncIterator[str]:
        """The channels whose leases other nodes release, as announced, until cancelled."""
        async for message in self.link.listen(self.released_channel):
            yield message.decode() if isinstance(message, bytes) else str(message)

    async def holders(self, channel_ids: Sequence[str]) -> dict[str, tuple[str, int]]:
        """Who holds each of these leases now: ``{channel: (node, token)}``.

        A force-released lease's tombstone is held by nobody a call could be
        forwarded to: it is left out (placement decides, as for a free lease).
        """
        if not channel_ids:
            return {}
        values = await self.link.call("MGET", *(self.lease_key(c) for c in channel_ids))
        found: dict[str, tuple[str, int]] = {}
        for channel, value in zip(channel_ids, values, strict=True):
            if value is None:
                continue
            text = value.decode() if isinstance(value, bytes) else str(value)
            if text.startswith(TOMBSTONE):
                continue
            parsed = parse_lease(text)
            if parsed is None:  # not this cluster's (acquire says whose): placement decides
                continue
            found[channel] = parsed
        return found
