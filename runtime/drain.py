"""Graceful shutdown of a node within a deadline.

Design (request → bounded wait → hard stop, as in tractor and asyncpg):

1. Stop taking work: ``send`` raises ``NodeDraining`` and ``/readyz`` says so.
2. Wait for the sends already accepted, until the deadline minus a reserve
   for closing the links.
3. Stop the channels: each flushes its inbound events to the store and closes
   its link resumably (Discord: a close that keeps the session). Whatever has
   not stopped by the deadline is killed. A send on the wire at that moment
   either completes (its sender gets the result) or fails with its channel.
4. Every send that has not completed by now is kept in the store (a store
   that fails is tried again until ``STORE_GRACE`` past the deadline) and
   reported, with its channel and idempotency key, *before* its sender is
   told ``NodeDraining``: nothing accepted is silently dropped, and nothing
   sent is kept. (A send cut off on the wire may have reached the platform;
   the next start sends it again with the same idempotency key, so delivery
   is at least once.) A resend of a message an earlier run kept is in the
   store already (``Pending.kept_id``): it stays there and is not kept twice.
   A store still down at the end of the grace: each sender hears that its
   message was not kept, the log names each one (channel, key, peer), the
   last checkpoints and the store's flush are still tried, and the drain
   raises the store's error.
5. Write the channels' last checkpoints, then flush the store.

The drain works on explicit collaborators, never on the node's insides: the
:class:`SendTracker` of accepted sends, a ``stop_channels`` callable that
stops the channels by a deadline, and the store.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from heapq import heapify, heappop, heappush
from typing import Final

import attrs
import trio

from actors.lowlevel import Ask
from providers.operations import Operation

from .checkpoints import CheckpointWriter
from .errors import StoreError
from .store import KeptMessage, Store

__all__ = ["DrainReport", "Pending", "SendStopped", "SendTracker", "drain"]

log = logging.getLogger("switchboard.node")

CLOSE_RESERVE: Final = 2.0  # seconds of the deadline kept for closing links
KEEP_RETRY: Final = 0.25  # seconds before keeping the leftovers is tried again; doubles
STORE_GRACE: Final = 5.0  # seconds past the deadline the final store flush may take


class SendStopped(Exception):
    """Raised in a parked send's caller by its :class:`Pending` (never leaves the node).

    ``cut``: the drain stopped it (it kept the message); else its deadline passed.
    """

    def __init__(self, *, cut: bool) -> None:
        super().__init__("cut by the drain" if cut else "its deadline passed")
        self.cut = cut


class Pending:
    """A send the node accepted and has not finished (a class with slots: one per send).

    It bounds its send without a cancel scope (it is the ask's
    ``actors.AskWatch``): the tracker's timer stops it at its deadline, the
    drain once it kept the message; either fails the parked ask with
    :class:`SendStopped`.

    Attributes:
        channel_id: the channel it goes to.
        message: what it sends.
        accepted_at: unix time the node took it.
        kept_id: a resend of this kept message: in the store already.
        deadline: trio time its caller stops waiting (the caller's timeout).
        cut: the drain deadline passed while it was in flight.
        done: it finished (sent or refused) before it could be kept.
        kept: the drain kept it in the store.
        stopped: why it was stopped (a :class:`SendStopped`), or ``None``.
    """

    __slots__ = (
        "_ask",
        "_finished",
        "_settled",
        "accepted_at",
        "channel_id",
        "cut",
        "deadline",
        "done",
        "kept",
        "kept_id",
        "message",
        "number",
        "stopped",
    )

    def __init__(
        self,
        *,
        channel_id: str,
        message: Operation,
        accepted_at: float,
        kept_id: int | None = None,
        deadline: float = math.inf,
    ) -> None:
        self.channel_id = channel_id
        self.message = message
        self.accepted_at = accepted_at
        self.kept_id = kept_id
        self.deadline = deadline
        self.cut = False
        self.done = False
        self.kept = False
        self.stopped: SendStopped | None = None
        self.number: int | None = None  # its deadline's, in the tracker's heap
        self._ask: Ask | None = None
        self._settled: trio.Event | None = None  # made when first asked for: most sends never are
        self._finished: trio.Event | None = None  # the same

    @property
    def settled(self) -> trio.Event:
        """Set once the drain kept it (or keeping it failed)."""
        event = self._settled
        if event is None:
            event = self._settled = trio.Event()
        return event

    @property
    def finished(self) -> trio.Event:
        """Set once the send is over (sent, refused or given up: its tracker's ``end``).

        What a second send of the same idempotency key waits for.
        """
        event = self._finished
        if event is None:
            event = self._finished = trio.Event()
            if self.done:
                event.set()
        return event

    def land(self) -> None:
        """The send is over: done, and a second send of its key, waiting, goes on."""
        self.done = True
        if self._finished is not None:
            self._finished.set()

    def parking(self, ask: Ask) -> SendStopped | None:
        """``actors.AskWatch``: the send waits for ``ask``'s answer from now on."""
        if self.stopped is not None:
            return self.stopped
        self._ask = ask
        return None

    def stop(self, *, cut: bool) -> None:
        """Stop the send: its parked ask fails now, or as it parks (the first reason stays)."""
        if self.stopped is None:
            self.stopped = SendStopped(cut=cut)
        ask = self._ask
        if ask is not None:
            self._ask = None
            ask.fail(self.stopped)  # nothing if it was answered already

    def __repr__(self) -> str:
        return (
            f"<Pending {self.message.idempotency_key!r} on {self.channel_id!r}"
            f"{' cut' if self.cut else ''}{' done' if self.done else ''}>"
        )


class _Tracked:
    """One send tracked for the length of a ``with`` block (:meth:`SendTracker.track`)."""

    __slots__ = ("_pending", "_tracker")

    def __init__(self, tracker: SendTracker, pending: Pending) -> None:
        self._tracker = tracker
        self._pending = pending

    def __enter__(self) -> Pending:
        self._tracker.begin(self._pending)
        return self._pending

    def __exit__(self, *exc_info: object) -> None:
        self._tracker.end(self._pending)


class SendTracker:
    """The sends a node accepted and has not finished: what a drain waits for.

    ``Node.send`` runs each send inside :meth:`track`; the drain waits until
    none is left, cuts the rest at its deadline and keeps them.

    Design: the sends' deadlines are one heap, kept by one task
    (:meth:`run`), as trio keeps its cancel scopes'. A heap entry is a
    deadline and a number, and the sends with a deadline are found by their
    number: a finished send's entry stays until it comes up (or until the
    heap is rebuilt without such entries, once they are most of it), but
    holds nothing of the send (its message may be megabytes). A cancel
    scope per send cost about 7 % of a node's CPU at 2,000 msgs/s, entered
    and left on every message, for a deadline that nearly never passes.
    """

    def __init__(self) -> None:
        self._pending: set[Pending] = set()
        self._by_channel: Counter[str] = Counter()
        self._changed = trio.Event()
        self._deadlines: list[tuple[float, int]] = []  # (deadline, number), a heap
        self._timed: dict[int, Pending] = {}  # the unfinished sends with a deadline, by number
        self._numbers = itertools.count()
        self._timer: trio.CancelScope | None = None  # the sleep of run(), while it sleeps
        self._armed = math.inf  # that sleep's deadline (a float: read on every send)

    def __len__(self) -> int:
        return len(self._pending)

    def count(self, channel_id: str) -> int:
        """Sends of ``channel_id`` tracked now."""
        return self._by_channel[channel_id]

    def track(
        self,
        channel_id: str,
        message: Operation,
        *,
        kept_id: int | None = None,
        deadline: float = math.inf,
    ) -> _Tracked:
        """Count one send from now until the block ends (``kept_id``: a resend of a kept one).

        A context manager whose ``as`` is the send's :class:`Pending`; while
        :meth:`run` runs, it is stopped at ``deadline`` (trio time).
        """
        return _Tracked(self, self.pending(channel_id, message, kept_id=kept_id, deadline=deadline))

    def pending(
        self,
        channel_id: str,
        message: Operation,
        *,
        kept_id: int | None = None,
        deadline: float = math.inf,
    ) -> Pending:
        """A send to count from :meth:`begin` to :meth:`end` (:meth:`track`'s, in two calls).

        For the node's own send path, which tracks every send in flight:
        ``try``/``finally`` instead of a ``with`` block saves the context
        manager and its bound ``__exit__`` on each send while it waits.
        """
        return Pending(
            channel_id=channel_id,
            message=message,
            accepted_at=time.time(),
            kept_id=kept_id,
            deadline=deadline,
        )

    def begin(self, pending: Pending) -> None:
        """Count ``pending`` from now; stopped at its deadline while :meth:`run` runs."""
        self._pending.add(pending)
        self._by_channel[pending.channel_id] += 1
        deadline = pending.deadline
        if deadline != math.inf:
            heap = self._deadlines
            timed = self._timed
            number = pending.number = next(self._numbers)
            timed[number] = pending
            heappush(heap, (deadline, number))
            if deadline < self._armed and self._timer is not None:
                self._timer.deadline = self._armed = deadline
            if len(heap) > 2 * len(timed) + 1_000:
                # Mostly finished sends: the live ones in a heap of their own.
                heap[:] = [entry for entry in heap if entry[1] in timed]
                heapify(heap)

    def end(self, pending: Pending) -> None:
        """``pending`` is finished: counted no more (for every :meth:`begin`, once)."""
        pending.land()
        self._pending.discard(pending)
        if pending.number is not None:
            self._timed.pop(pending.number, None)
        channel_id = pending.channel_id
        left = self._by_channel[channel_id] - 1
        if left:
            self._by_channel[channel_id] = left
        else:
            del self._by_channel[channel_id]
        self._changed.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Stop each tracked send at its deadline, until cancelled (a task of the node)."""
        heap = self._deadlines
        task_status.started()
        try:
            while True:
                now = trio.current_time()
                timed = self._timed
                while heap and heap[0][0] <= now:
                    pending = timed.pop(heappop(heap)[1], None)
                    if pending is not None:  # not finished yet
                        pending.stop(cut=False)
                self._armed = heap[0][0] if heap else math.inf
                with trio.CancelScope(deadline=self._armed) as self._timer:
                    await trio.sleep_forever()
        finally:
            self._timer = None
            self._armed = math.inf

    async def wait_until_done(self) -> None:
        """Return once no tracked send is left (bound it with a cancel scope)."""
        while self._pending:
            self._changed = trio.Event()
            await self._changed.wait()

    async def wait_channel_done(self, channel_id: str) -> None:
        """Return once no tracked send of ``channel_id`` is left (bound it with a cancel scope)."""
        while any(pending.channel_id == channel_id for pending in self._pending):
            self._changed = trio.Event()
            await self._changed.wait()

    def cut(self) -> list[Pending]:
        """Mark every send still in flight as cut by the deadline; return them."""
        leftovers = list(self._pending)
        for pending in leftovers:
            pending.cut = True
        return leftovers


@attrs.frozen(kw_only=True)
class DrainReport:
    """What a drain did.

    Attributes:
        deadline: the deadline, seconds.
        elapsed: how long it took, seconds.
        in_flight: sends in flight when the drain began.
        kept: the messages not sent by the deadline, kept in the store.
        durable: whether the store keeps them across processes.
        channels_stopped: channels stopped gracefully (the rest were killed).
        channels_killed: channels that had to be killed at the deadline.
    """

    deadline: float
    elapsed: float
    in_flight: int
    kept: tuple[KeptMessage, ...]
    durable: bool
    channels_stopped: int
    channels_killed: int

    def summary(self) -> str:
        """One line for the log."""
        text = (
            f"drained in {self.elapsed:.2f} s (deadline {self.deadline:g} s): "
            f"{self.in_flight} send(s) in flight, {len(self.kept)} kept, "
            f"{self.channels_stopped} channel(s) stopped"
        )
        if self.channels_killed:
            text += f", {self.channels_killed} killed at the deadline"
        return text


async def drain(
    *,
    node_id: str,
    sends: SendTracker,
    stop_channels: Callable[[float], Awaitable[tuple[int, int]]],
    checkpoints: CheckpointWriter,
    store: Store,
    deadline: float,
) -> DrainReport:
    """Drain a node already marked draining; see the module docstring.

    Args:
        node_id: for the log.
        sends: the node's accepted sends.
        stop_channels: stops every channel by the given trio time; returns
            (stopped gracefully, killed at the deadline).
        checkpoints: the channels' checkpoint writer, flushed once they stopped.
        store: where the leftovers are kept, flushed last.
        deadline: seconds the whole drain may take.
    """
    started = trio.current_time()
    end = started + deadline
    in_flight = len(sends)
    log.info("draining node %s: %d send(s) in flight, deadline %g s", node_id, in_flight, deadline)
    with trio.move_on_at(end - min(CLOSE_RESERVE, deadline * 0.25)):
        await sends.wait_until_done()
    cut = sends.cut()
    stopped, killed = await stop_channels(end)
    # One grace for the store's last three writes together (a store that hangs
    # must not take three), however long the channels took to stop.
    grace_end = max(end, trio.current_time()) + STORE_GRACE
    failure: StoreError | None = None
    try:
        kept = await _keep_leftovers(cut, store, deadline, until=grace_end)
    except StoreError as exc:
        # Each sender hears it (NodeDraining: keeping it failed); the log names
        # each one too, and the channels' last checkpoints are still written.
        failure, kept = exc, []
        _report_unkept(cut, exc)
    with trio.move_on_at(grace_end) as checkpoint_scope:
        try:
            await checkpoints.flush()
        except StoreError as exc:
            log.error("the last checkpoints could not be written at the drain: %s", exc)
    if checkpoint_scope.cancelled_caught:
        log.error(
            "the last checkpoints were not written within %g s of the drain deadline", STORE_GRACE
        )
    with trio.move_on_at(grace_end) as flush_scope:
        await store.flush()
    if flush_scope.cancelled_caught:
        log.error("the store did not flush within %g s of the drain deadline", STORE_GRACE)
    report = DrainReport(
        deadline=deadline,
        elapsed=trio.current_time() - started,
        in_flight=in_flight,
        kept=tuple(kept),
        durable=store.durable,
        channels_stopped=stopped,
        channels_killed=killed,
    )
    log.info(
        "%s",
        report.summary(),
        extra={
            "event.duration": round(report.elapsed * 1e9),
            "switchboard.in_flight": in_flight,
            "switchboard.kept": len(report.kept),
            "switchboard.channels_stopped": stopped,
            "switchboard.channels_killed": killed,
        },
    )
    if failure is not None:
        raise failure  # (the node ends with it: what it could not keep is in the log)
    return report


def _report_unkept(cut: list[Pending], error: StoreError) -> None:
    """Name, one line each, the sends the drain could neither finish nor keep."""
    unkept = [pending for pending in cut if not pending.done and pending.kept_id is None]
    if not unkept:
        return
    log.error(
        "%d message(s) not sent by the drain deadline could NOT be kept (the store failed: "
        "%s); their senders were told, each is logged below: send them again",
        len(unkept),
        error,
    )
    for pending in unkept:
        message = pending.message
        log.error(
            "not sent and not kept: idempotency key %s to %s",
            message.idempotency_key,
            message.peer,
            extra={
                "channel": pending.channel_id,
                "switchboard.idempotency_key": message.idempotency_key,
                "switchboard.peer": message.peer,
            },
        )


async def _keep_leftovers(
    leftovers: list[Pending], store: Store, deadline: float, *, until: float
) -> list[KeptMessage]:
    # Sends that finished while the channels stopped are no leftovers.
    leftovers = [pending for pending in leftovers if not pending.done]
    if not leftovers:
        return []
    kept = [
        KeptMessage(
            channel_id=pending.channel_id,
            message=pending.message,
            reason=f"not sent by the drain deadline ({deadline:g} s)",
            accepted_at=pending.accepted_at,
        )
        for pending in leftovers
    ]
    # Kept before the senders hear about it: a crash in between loses nothing.
    # A resend of a kept message is still in the store (see runtime.resend).
    new = [item for item, pending in zip(kept, leftovers, strict=True) if pending.kept_id is None]
    stored = False
    refused: set[int] = set()  # id() of the items the store could not encode (it logged them)
    try:
        refused = {id(item) for item in await _keep(store, new, until)}
        stored = True
    finally:
        for item, pending in zip(kept, leftovers, strict=True):
            pending.kept = stored and id(item) not in refused
            pending.settled.set()
            pending.stop(cut=True)
    kept = [item for item in kept if id(item) not in refused]
    if not kept:
        return []
    by_channel = Counter(item.channel_id for item in kept)
    where = (
        f"kept in the {store.statistics().backend} store for the next start"
        if store.durable
        else "kept in memory only and LOST when this process exits (use storage backend "
        "'sqlite' or 'postgres' to keep them)"
    )
    log.warning(
        "%d message(s) not sent by the drain deadline, %s: %s",
        len(kept),
        where,
        ", ".join(f"{channel}: {count}" for channel, count in sorted(by_channel.items())),
    )
    for item in kept:
        log.warning(
            "not sent by the drain deadline: idempotency key %s to %s",
            item.message.idempotency_key,
            item.message.peer,
            extra={
                "channel": item.channel_id,
                "switchboard.idempotency_key": item.message.idempotency_key,
                "switchboard.peer": item.message.peer,
            },
        )
    return kept


async def _keep(store: Store, items: list[KeptMessage], until: float) -> list[KeptMessage]:
    """``store.keep_outbound(items)``, tried again while the store fails, until ``until``.

    Shielded: a second signal does not cut it short; ``until`` bounds it.
    A store back within the grace (a restarting database) loses nothing.

    Raises:
        StoreError: the store still failed at ``until``; nothing was kept.
    """
    delay = KEEP_RETRY
    with trio.CancelScope(shield=True):
        while True:
            try:
                return await store.keep_outbound(items)
            except StoreError as exc:
                left = until - trio.current_time()
                if left <= 0:
                    raise
                delay = min(delay, left)  # the last try comes at ``until``, not before it
                log.error(
                    "%d unsent message(s) could not be kept yet; tried again in %g s: %s",
                    len(items),
                    delay,
                    exc,
                )
            await trio.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable: the loop returns or raises")  # for mypy
