"""Ownership: which channels this node runs, and the leases that let it.

Design:
- Placement says who *should* own a channel (the ring of live members);
  a lease says who *may* connect it. The reconciler compares the channels
  this node should own with the ones it runs: for each it should run and
  does not, it takes the lease (a fencing token above the store's) and
  starts the channel inside a :class:`~actors.channel.Tenure`; for each it
  runs and should not, it stops the channel (its final checkpoint written)
  and only then releases the lease. A lease held elsewhere is tried again
  when it expires (Redis says when), or at once when its holder announces
  the release: a dead node's channels move once their leases run out, never
  before, and a live node's as soon as it has let them go.
- Renewals go in batches every third of the TTL; each success moves the
  tenures' deadlines to ``sent + ttl - margin`` on this node's monotonic
  clock, so a node cut off from Redis (or frozen) has its connections
  cancelled by trio before any other node can take the leases. A loop that
  has been running late gives up twice its recent lateness more
  (``runtime.lag``): its cancel would come that late. A renewal
  that says a lease is gone revokes that tenure at once and stops the
  channel.
- Moves away from this node are paced (``runtime.cluster.rebalance``):
  after a membership change settles, not sooner than a cooldown after the
  channel arrived, a bounded number at a time. Taking a free channel is not
  delayed.
- Placement hashes a channel only over the members that can run it: a
  file entry of the catalog (no spec in the store) over the members whose
  published file holds it, any other channel over every member. A member
  that published nothing (an older node) places over every member, as
  before: it is given a file channel only where that ring puts it, which
  is where it would take it itself. A channel no live member can run is placed nowhere and reported
  (a warning when it becomes so, ``unplaced`` in the operator's view); a
  member's file set changing (it restarted with another file) or a
  catalog entry changing kind moves channels as a membership change does,
  under the same pacing; nothing moves while neither changes.
- Operator controls (``runtime.cluster.controls``): while rebalancing is
  paused no voluntary move is made; a channel pinned to a live member is
  owned by that member, and the node holding it lets it go at once (the
  planned path, past settle, cooldown and pause).
- A channel the platform says is held elsewhere (Telegram's 409, a Discord
  session invalidated by another connection) is proof of being fenced: it
  is stopped and released, and not tried again until the cluster changes.
- The channels run through a :class:`ChannelRunner` (the node): nothing in
  ``runtime.cluster`` imports the node.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Final, Protocol

import attrs
import trio

from actors.channel import Tenure

from ..lag import LoopLag
from .leases import Acquired, Leases
from .placement import HashRing
from .rebalance import Pacing, Rebalancer
from .redis import ClusterUnavailable

__all__ = ["ChannelRunner", "OwnedChannel", "Ownership"]

log = logging.getLogger("switchboard.cluster")

RETRY_UNREACHABLE: Final = 1.0  # seconds before a reconcile that could not reach Redis is retried
MIN_RETRY: Final = 0.05  # seconds: the soonest a held lease is tried again


class ChannelRunner(Protocol):
    """What ownership asks of the node."""

    async def floor_token(self, channel_id: str) -> int:
        """The highest owner token the durable store knows for the channel (0: none)."""
        ...

    async def start_owned(self, channel_id: str, tenure: Tenure) -> None:
        """Run the channel here under ``tenure`` (restoring its checkpoint)."""
        ...

    async def stop_owned(self, channel_id: str) -> None:
        """Stop running the channel here (its final checkpoint written)."""
        ...

    def released(self, channel_id: str) -> None:
        """The channel's lease was given back (or found lost) after :meth:`stop_owned`."""
        ...

    def catalog_changed(self, channel_ids: frozenset[str]) -> None:
        """The cluster's channel set is now ``channel_ids`` (the specs are in the catalog)."""
        ...


@attrs.define
class OwnedChannel:
    """A channel this node holds the lease of."""

    token: int
    tenure: Tenure


class Ownership:
    """Runs the channels this node owns (see the module docstring).

    Args:
        node_id: this node's name.
        leases: the cluster's leases.
        runner: the node.
        vnodes: points per member on the placement ring.
        renew_batch: leases renewed per script call.
    """

    def __init__(
        self,
        *,
        node_id: str,
        leases: Leases,
        runner: ChannelRunner,
        vnodes: int,
        renew_batch: int,
        pacing: Pacing | None = None,
    ) -> None:
        self.node_id = node_id
        self.leases = leases
        self.runner = runner
        self.vnodes = vnodes
        self.renew_batch = renew_batch
        self.rebalancer = Rebalancer(pacing or Pacing())
        # The loop's recent lateness shortens each tenure; never by more than a
        # renewal interval, so a lagging node is not cut off between renewals.
        self.lag = LoopLag(window=leases.ttl, cap=leases.ttl / 3)
        self._kept_until = math.inf  # the soonest a channel kept by the pacing may go
        self.ring = HashRing((), vnodes=vnodes)
        self.catalog: frozenset[str] = frozenset()  # the cluster's channels this node can run
        # The catalog's file entries (this node's file's or another's): they run
        # only on the members whose file holds them.
        self.from_file: frozenset[str] = frozenset()
        self.files: dict[str, frozenset[str]] = {}  # member -> its file's channels, if published
        self._unplaced: frozenset[str] = frozenset()  # as last reported
        self.pins: dict[str, str] = {}  # an operator's: channel -> node (runtime.cluster.controls)
        self.owned: dict[str, OwnedChannel] = {}
        self.fenced: set[str] = (
            set()
        )  # the platform said: held elsewhere (until the cluster changes)
        self._retry_at: dict[str, float] = {}
        self._acquiring: set[str] = set()  # acquire calls in flight
        self._released: set[str] = set()  # releases announced during one of those
        self._lost: set[str] = set()  # leases proven lost, let go at the next reconcile
        self._changed = trio.Event()
        self._lock = trio.Lock()
        self.frozen = False  # a drain: take nothing more, let nothing go, keep renewing
        self.renewals = 0  # script calls that renewed leases
        self.lost = 0  # leases found lost at a renewal

    def __repr__(self) -> str:
        return (
            f"<Ownership {self.node_id} owned={len(self.owned)}/{len(self.catalog)} "
            f"members={len(self.ring.members)}>"
        )

    # --- inputs ------------------------------------------------------------------------------

    def set_members(
        self, members: Iterable[str], files: Mapping[str, frozenset[str]] | None = None
    ) -> None:
        """The live members (and the file channels each published) changed: place again.

        Args:
            members: the live members.
            files: each member's file channels, for those that published them
                (``None``: as before).
        """
        members = tuple(sorted(members))
        found = self.files if files is None else {m: files[m] for m in members if m in files}
        if members != self.ring.members or found != self.files:
            if members != self.ring.members:
                self.ring = HashRing(members, vnodes=self.vnodes)
            self.files = found
            self.fenced.clear()
            self.rebalancer.members_changed(trio.current_time())
        self._changed.set()

    def set_catalog(
        self, channel_ids: Iterable[str], from_file: Iterable[str] | None = None
    ) -> None:
        """The cluster's channel set changed.

        Args:
            channel_ids: the catalog's channels this node can run.
            from_file: the catalog's file entries, this node's or another's
                (``None``: as before).
        """
        self.catalog = frozenset(channel_ids)
        if from_file is not None:
            self.from_file = frozenset(from_file)
        self._changed.set()

    def set_controls(self, *, paused: bool, pins: Mapping[str, str]) -> None:
        """An operator paused or resumed rebalancing, or pinned channels: place again."""
        self.rebalancer.paused = paused
        self.pins = dict(pins)
        self._changed.set()

    def can_run(self, member: str, channel_id: str) -> bool:
        """Whether ``member`` can run the channel (as far as it published)."""
        if channel_id not in self.from_file:
            return True  # its spec is in the store: any member reads it
        files = self.files.get(member)
        return files is None or channel_id in files

    def owner(self, channel_id: str) -> str | None:
        """The node that should own ``channel_id``.

        Its pin if a live member that can run it, else placement over the
        members that can run it; ``None`` if none can.
        """
        pinned = self.pins.get(channel_id)
        if pinned is not None and pinned in self.ring.members and self.can_run(pinned, channel_id):
            return pinned
        if channel_id not in self.from_file or not self.files:
            return self.ring.owner(channel_id)
        return self.ring.owner(channel_id, lambda member: self._takes(member, channel_id))

    def _takes(self, member: str, channel_id: str) -> bool:
        """Whether placement may give ``member`` the channel (pins aside).

        A member that publishes nothing (an older node) places over every
        member: it takes only what the ring over all of them gives it.
        """
        if channel_id in self.from_file and member not in self.files:
            return self.ring.owner(channel_id) == member
        return self.can_run(member, channel_id)

    def unplaced(self) -> frozenset[str]:
        """The channels of the catalog no live member can run (placed nowhere)."""
        if not self.ring.members:
            return frozenset()  # no members at all: nothing is placed, nothing to say
        # This node, a member, can run the channels of its own catalog: only the
        # other files' channels may have nowhere to go.
        maybe = (
            self.from_file - self.catalog if self.node_id in self.ring.members else self.from_file
        )
        return frozenset(c for c in maybe if self.owner(c) is None)

    def mark_fenced(self, channel_id: str) -> None:
        """The platform says another client holds the channel: let it go."""
        self.fenced.add(channel_id)
        self._changed.set()

    def lease_lost(self, channel_id: str) -> None:
        """Something proved the channel's lease is another's (a refused checkpoint)."""
        owned = self.owned.get(channel_id)
        if owned is not None:
            owned.tenure.revoke()  # its connection goes at once
            self._lost.add(channel_id)
            self._changed.set()

    def waiting(self) -> dict[str, float]:
        """Channels placed here that another node still holds: when each is asked for again."""
        return {c: at for c, at in self._retry_at.items() if c not in self.owned}

    def wanted(self) -> set[str]:
        """The channels this node should run now."""
        me = self.node_id
        owner = self.owner
        return {c for c in self.catalog if c not in self.fenced and owner(c) == me}

    # --- the loops ------------------------------------------------------------------------------

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Reconcile on every change and renew the leases, until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._renew_loop)
            nursery.start_soon(self.lag.run)
            nursery.start_soon(self._watch_releases)
            task_status.started()
            while True:
                wake = min(min(self._retry_at.values(), default=math.inf), self._kept_until)
                with trio.move_on_at(wake):
                    await self._changed.wait()
                self._changed = trio.Event()
                try:
                    await self.reconcile()
                except ClusterUnavailable as exc:
                    log.warning("cluster: could not reconcile ownership (retrying): %s", exc)
                    with trio.move_on_after(RETRY_UNREACHABLE):
                        await self._changed.wait()
                    self._changed.set()

    def _deadline(self, sent: float) -> float:
        """The tenure a lease (re)set by a request sent at ``sent`` gives."""
        return self.leases.clock.deadline(sent, lag=self.lag.allowance(trio.current_time()))

    async def _watch_releases(self) -> None:
        async for channel_id in self.leases.released():
            if channel_id in self._retry_at or channel_id in self._acquiring:
                # Waiting for it, or asking for it right now (the answer may
                # predate the release): try (again) now.
                log.debug("cluster: channel %s was released; taking it", channel_id)
                self._released.add(channel_id)
                self._retry_at[channel_id] = -math.inf
                self._changed.set()

    async def reconcile(self) -> None:
        """Stop what this node should no longer run; take and start what it should.

        Both go concurrently (at most the pacing's ``moves`` at a time): a node that
        rejoins takes its share back in a few round trips, not one channel
        after another.

        Raises:
            ClusterUnavailable: Redis did not answer (the rest is retried).
        """
        async with self._lock:
            if self.frozen:
                return
            lost, self._lost = self._lost, set()
            wanted = self.wanted() - lost
            now = trio.current_time()
            going: list[str] = []
            self._kept_until = math.inf
            for channel_id in [c for c in self.owned if c not in wanted]:
                pinned = self.pins.get(channel_id)
                forced = (
                    channel_id in lost
                    or channel_id in self.fenced
                    # pinned to another live member that can run it: an operator's
                    # move, now, paused or not
                    or (pinned is not None and self.owner(channel_id) == pinned)
                )
                if forced or self.rebalancer.may_let_go(channel_id, now):
                    going.append(channel_id)
                else:  # placement moved it, the pacing keeps it here a while
                    when = self.rebalancer.when_may_let_go(channel_id)
                    self._kept_until = min(self._kept_until, when)
            await self._each(going, self._let_go)
            if lost:  # let go, but placed here still: try them again (their holders may go)
                self._changed.set()
            now = trio.current_time()
            coming = [
                channel_id
                for channel_id in sorted(wanted - self.owned.keys())
                if self._retry_at.get(channel_id, -math.inf) <= now
            ]
            await self._each(coming, self._take)
            for channel_id in [c for c in self._retry_at if c not in wanted]:
                del self._retry_at[channel_id]
            self._report_unplaced()

    def _report_unplaced(self) -> None:
        """Say so when channels become unplaceable, and when they are placed again."""
        unplaced = self.unplaced()
        if unplaced == self._unplaced:
            return
        news = sorted(unplaced - self._unplaced)
        placed = sorted((self._unplaced - unplaced) & self.from_file)  # (not: taken out)
        self._unplaced = unplaced
        if news:
            log.warning(
                "cluster: %d channel(s) can run on no live member (each is a channel of a "
                "deployment file no member's file holds), so no node runs them: %s; run a "
                "node whose file holds them, or start them through the API",
                len(news),
                ", ".join(news[:10]) + (", ..." if len(news) > 10 else ""),
            )
        if placed:
            log.info(
                "cluster: %d channel(s) can run on a live member again: %s",
                len(placed),
                ", ".join(placed[:10]) + (", ..." if len(placed) > 10 else ""),
            )

    async def _each(self, channel_ids: list[str], step: Callable[[str], Awaitable[None]]) -> None:
        """``step`` for every channel, concurrently; Redis unreachable is raised once, after."""
        if not channel_ids:
            return
        limiter = trio.CapacityLimiter(self.rebalancer.pacing.moves)
        unreachable: list[ClusterUnavailable] = []

        async def one(channel_id: str) -> None:
            async with limiter:
                try:
                    await step(channel_id)
                except ClusterUnavailable as exc:
                    unreachable.append(exc)

        async with trio.open_nursery() as nursery:
            for channel_id in channel_ids:
                nursery.start_soon(one, channel_id)
        if unreachable:
            raise unreachable[0]

    async def _take(self, channel_id: str) -> None:
        try:
            floor = await self.runner.floor_token(channel_id)
        except Exception as exc:  # the store: the lease must wait for its floor
            log.warning(
                "cluster: channel %s's checkpoint could not be read (retrying): %s",
                channel_id,
                exc,
                extra={"channel": channel_id},
            )
            self._retry_at[channel_id] = trio.current_time() + RETRY_UNREACHABLE
            return
        sent = trio.current_time()
        self._released.discard(channel_id)
        self._acquiring.add(channel_id)
        try:
            answer = await self.leases.acquire(channel_id, floor=floor)
        finally:
            self._acquiring.discard(channel_id)
        if not isinstance(answer, Acquired):
            # Held: by a node that is gone (its lease runs out) or one that
            # still stops it (it announces the release). Tried again then,
            # or at once if the release was announced while we asked.
            wait = MIN_RETRY if channel_id in self._released else answer.expires_in
            self._released.discard(channel_id)
            self._retry_at[channel_id] = trio.current_time() + max(wait, MIN_RETRY)
            log.debug(
                "cluster: channel %s is held by %s for %.2f s more",
                channel_id,
                answer.holder,
                answer.expires_in,
            )
            return
        self._retry_at.pop(channel_id, None)
        tenure = Tenure(self._deadline(sent), token=answer.token)
        self.owned[channel_id] = OwnedChannel(answer.token, tenure)
        self.rebalancer.arrived(channel_id, trio.current_time())
        log.info(
            "cluster: took channel %s (lease token %d)",
            channel_id,
            answer.token,
            extra={"channel": channel_id},
        )
        try:
            await self.runner.start_owned(channel_id, tenure)
        except Exception as exc:
            log.error(
                "cluster: channel %s could not start here; its lease is given back: %s",
                channel_id,
                exc,
                extra={"channel": channel_id},
            )
            await self._release(channel_id)
            self._retry_at[channel_id] = trio.current_time() + self.leases.ttl

    async def _let_go(self, channel_id: str) -> None:
        """Stop the channel first, then release its lease (never the other way round)."""
        try:
            await self.runner.stop_owned(channel_id)
        finally:
            await self._release(channel_id)
            self.runner.released(channel_id)

    async def _release(self, channel_id: str) -> None:
        owned = self.owned.get(channel_id)
        if owned is None:
            self.rebalancer.left(channel_id)
            return
        owned.tenure.revoke()
        try:
            await self.leases.release(channel_id, owned.token)
        except ClusterUnavailable as exc:  # it expires by itself
            log.warning("cluster: releasing channel %s's lease failed: %s", channel_id, exc)
        # Cancelled before here (a drain's hand-off ran out of time), the lease
        # stays held, revoked: :meth:`release_all` gives it back once the
        # drain has stopped the channel, instead of leaving it to expire.
        if self.owned.get(channel_id) is owned:
            del self.owned[channel_id]
        self.rebalancer.left(channel_id)
        log.info("cluster: let channel %s go", channel_id, extra={"channel": channel_id})

    async def hand_off(self, deadline: float) -> int:
        """Let every channel go, paced, by trio time ``deadline`` (a drain); how many went.

        Taking stops first (``frozen``); each channel is stopped (its sends
        finish, its final checkpoint is written) before its lease is released
        and announced, so the nodes that take over start where it stopped.
        """
        async with self._lock:
            self.frozen = True
            going = list(self.owned)
            with trio.move_on_at(deadline):
                await self._each(going, self._let_go)
            return sum(channel_id not in self.owned for channel_id in going)

    async def release_all(self) -> None:
        """Give every lease back (after the node stopped its channels: a drain)."""
        async with self._lock:
            for channel_id in list(self.owned):
                await self._release(channel_id)
                self.runner.released(channel_id)

    async def _renew_loop(self) -> None:
        interval = self.leases.ttl / 3
        while True:
            await trio.sleep(interval)
            await self.renew()

    async def renew(self) -> None:
        """Renew every lease held, in batches; extend tenures, revoke lost ones."""
        held = [
            (c, o.token, o.tenure.valid()) for c, o in self.owned.items() if not o.tenure.revoked
        ]
        for start in range(0, len(held), self.renew_batch):
            batch = held[start : start + self.renew_batch]
            sent = trio.current_time()
            try:
                lost = await self.leases.renew(batch)
            except ClusterUnavailable as exc:
                # Not renewed: the tenures run out by themselves at their deadlines.
                log.warning("cluster: lease renewal failed: %s", exc)
                return
            self.renewals += 1
            deadline = self._deadline(sent)
            lost_set = set(lost)
            for channel_id, token, _ in batch:
                owned = self.owned.get(channel_id)
                if owned is None or owned.token != token or owned.tenure.revoked:
                    continue  # let go meanwhile (or being let go): not lost
                if channel_id in lost_set:
                    self.lost += 1
                    owned.tenure.revoke()
                    self._lost.add(channel_id)  # let go by the next reconcile
                    log.error(
                        "cluster: the lease of channel %s was lost (another node holds it, or "
                        "Redis forgot it); its connection is dropped",
                        channel_id,
                        extra={"channel": channel_id},
                    )
                else:
                    owned.tenure.extend(deadline)
            if lost_set:
                self._changed.set()
