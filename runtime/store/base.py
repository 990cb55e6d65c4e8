"""The store's contract, and the batching every backend shares.

Design:
- :class:`Store` is what the node uses: the channels' inbound sink
  (``save_inbound``), the drain's outbox (``keep_outbound`` at shutdown,
  ``read_outbound`` at the next start, ``forget_outbound`` for each message
  once the platform took it or it was dead-lettered) and a window on recent
  events for the admin console. :func:`open_store` picks the backend from
  the config and owns its lifetime: nothing a store starts outlives the
  ``async with``.
- A kept message leaves the outbox only through ``forget_outbound``: reading
  it forgets nothing, so a process killed while it resends finds every
  message not yet sent at its next start (delivery is at least once; the
  idempotency key makes the repeat harmless). A stored row that cannot be
  decoded is reported and skipped, never allowed to hold back the others.
- The hot path only appends. ``save_inbound`` puts events in a buffer and
  returns without a checkpoint; a flusher task owned by the ``open_store``
  block writes them in batches of ``batch_size`` when a batch fills or every
  ``flush_interval`` seconds. Leaving the block writes what is left under a
  shielded, bounded deadline.
- Nothing is dropped silently. A write that fails is logged, counted in
  ``statistics().errors`` and its batch stays at the head of the buffer, so
  the next flush retries it in order (the flusher backs off while writes
  fail). The buffer is bounded: past ``BUFFER_BATCHES`` batches,
  ``save_inbound`` waits for room for at most ``BACKPRESSURE_WAIT`` seconds,
  then refuses the events with :class:`~runtime.errors.StoreError`, so they
  stay with the caller. ``store_inbound`` (the channels' path) never
  refuses while the store is open: it waits for room and for its write as
  long as an outage lasts (the policy is ``actors.channel.inbound``'s).
- Only one writer runs at a time (a lock), and a batch leaves the buffer only
  after its write succeeded: a write cancelled half-way is written again
  later, and the backends ignore duplicates by key, so nothing is doubled.
- The backends import lazily: the memory store never imports asyncpg or
  trio-asyncio.
"""

from __future__ import annotations

import abc
import collections
import logging
import math
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar, runtime_checkable

import attrs
import trio

from providers.base import ConnectionStateChanged, DeliveryReceipt, Event
from providers.groups import ungrouped
from providers.operations import Operation

from ..config.model import StorageConfig
from ..errors import StoreError
from ..telemetry.histograms import Histogram

if TYPE_CHECKING:
    from .durable import (
        Checkpoint,
        CheckpointResult,
        DeadLetterFilter,
        StoredCheckpoint,
        StoredDeadLetter,
    )

__all__ = [
    "BACKPRESSURE_WAIT",
    "BUFFER_BATCHES",
    "FINAL_FLUSH_DEADLINE",
    "RETRY_DELAY_CAP",
    "BatchResult",
    "BatchingStore",
    "InboundKept",
    "KeptMessage",
    "Store",
    "StoreStatistics",
    "open_store",
]

log = logging.getLogger("switchboard.store")

BUFFER_BATCHES: Final = 10  # batches buffered before save_inbound waits for room
BACKPRESSURE_WAIT: Final = 5.0  # seconds save_inbound waits for room before refusing
FINAL_FLUSH_DEADLINE: Final = 10.0  # seconds the last flush gets when the store closes
RETRY_DELAY_CAP: Final = 5.0  # seconds, the longest pause between failing flushes
MIN_FLUSH_INTERVAL: Final = 0.001  # seconds; 0 would make the flusher spin
# Seconds events handed over without waiting (``store_inbound_later``) may
# wait for others to share their write: a busy node's receipts go in one
# batch every few milliseconds instead of one write each.
LATER_WITHIN: Final = 0.005
_R = TypeVar("_R")


@attrs.frozen(kw_only=True)
class KeptMessage:
    """An outbound message accepted but not sent by the drain deadline.

    Attributes:
        channel_id: the channel it was sent on.
        message: the message, as the product gave it.
        reason: why it was kept, e.g. ``not sent by the drain deadline (10.0 s)``.
        accepted_at: when the channel accepted it, unix time (PostgreSQL keeps
            it to the microsecond).
        kept_id: the store's id for it, set by ``read_outbound`` (what
            ``forget_outbound`` takes); ``None`` before it is kept. It is the
            store's bookkeeping, not part of the message: equality ignores it.
    """

    channel_id: str
    message: Operation
    reason: str
    accepted_at: float
    kept_id: int | None = attrs.field(default=None, eq=False)


@attrs.frozen(kw_only=True)
class StoreStatistics:
    """A snapshot of a store's counters.

    Attributes:
        backend: ``memory`` or ``postgres``.
        durable: whether kept data survives the process.
        inbound_written: inbound events stored (duplicates not counted).
        inbound_pending: inbound events buffered, not yet written.
        inbound_duplicates: inbound events ignored because already stored.
        batches: batches written.
        kept: outbound messages handed to ``keep_outbound`` by this process.
        errors: failed writes and reads, plus events that could not be stored
            at all (each one logged).
        inbound_evicted: memory backend: events pushed out of the bounded
            window of recent events.
    """

    backend: str
    durable: bool
    inbound_written: int
    inbound_pending: int
    inbound_duplicates: int
    batches: int
    kept: int
    errors: int
    inbound_evicted: int = 0


@attrs.frozen(kw_only=True)
class BatchResult:
    """What a backend did with one batch.

    Attributes:
        written: events stored.
        duplicates: events ignored because their key was already stored.
        rejected: events that can never be stored (logged by the backend).
        fresh: for each event of the batch, in order: whether it was not
            stored before (a rejected event counts as fresh: it is news that
            could not be kept).
    """

    written: int = 0
    duplicates: int = 0
    rejected: int = 0
    fresh: tuple[bool, ...] = ()


# Called once the batch holding a ticket's events is written (their
# freshness, ``None`` for the error) or the store closed first (the error).
InboundKept = Callable[[list[bool] | None, StoreError | None], None]


class _Ticket:
    """Events of one caller, waiting for their batch to be written.

    The caller either waits (``store_inbound``: ``done``) or is called back
    from the flusher's task (``store_inbound_later``: ``kept``).
    """

    __slots__ = ("count", "done", "error", "fresh", "kept", "start")

    def __init__(self, start: int, count: int, kept: InboundKept | None = None) -> None:
        self.start = start  # the number of its first event (see BatchingStore._taken)
        self.count = count
        self.fresh: list[bool] = []
        self.kept = kept
        self.done = trio.Event() if kept is None else None
        self.error: StoreError | None = None

    def settle(self) -> None:
        kept = self.kept
        if kept is None:
            assert self.done is not None
            self.done.set()
            return
        try:
            kept(None if self.error is not None else self.fresh, self.error)
        except Exception:  # a caller's defect must not stop the store for every channel
            log.exception("an inbound caller's callback failed; the store goes on")


@runtime_checkable
class Store(Protocol):
    """Where the node keeps inbound events and unsent outbound messages.

    Attributes:
        backend: ``memory`` or ``postgres``.
        durable: whether what it keeps survives the process (sqlite and
            postgres; not memory).
    """

    backend: str
    durable: bool

    async def save_inbound(self, events: Sequence[Event]) -> None:
        """Buffer inbound events for the next batch (the channels' inbound sink).

        ``ConnectionStateChanged`` events are transient and not stored.

        Raises:
            StoreError: the store is closed, or its buffer stayed full for
                ``BACKPRESSURE_WAIT`` seconds because writes fail; the events
                were not accepted.
        """
        ...

    async def store_inbound(self, events: Sequence[Event]) -> list[bool]:
        """Keep inbound events durably; say which were not kept before.

        The channels' inbound path: it returns once the batch holding the
        events is written (the store writes at once while someone waits, so
        many channels share one write), and a channel publishes only what
        was new. While the store cannot write (it is down, or its buffer is
        full) this waits: the channel reads no more from its platform, which
        keeps what is unread. ``ConnectionStateChanged`` events are not kept
        and have no entry in the answer.

        Returns:
            For each kept event, in order: True if it was not stored before.

        Raises:
            StoreError: the store is closed (or closed while this waited).
        """
        ...

    def store_inbound_later(self, events: Sequence[Event], kept: InboundKept) -> bool:
        """:meth:`store_inbound` without waiting: ``kept`` hears the answer.

        For a caller that need not hold its reader while the batch is
        written (a delivery receipt: reading on confirms nothing to the
        platform). ``kept(fresh, None)`` is called from the store's own
        task once the batch holding the events is written, in the order
        the events came (after any earlier caller's, waiting or not);
        ``kept(None, error)`` if the store closes first. ``kept`` must
        not block or raise.

        Returns:
            False, and nothing taken, when the store cannot take the events
            without waiting (its buffer is full, it is not open): the
            caller waits in :meth:`store_inbound` instead.
        """
        ...

    async def flush(self) -> None:
        """Write everything buffered now.

        Raises:
            StoreError: a write failed; the unwritten events stay buffered.
        """
        ...

    async def keep_outbound(self, items: Sequence[KeptMessage]) -> list[KeptMessage]:
        """Keep messages that were not sent, for ``read_outbound`` at the next start.

        One message JSON cannot carry (``node.send`` refuses those, so only a
        defect makes one) is left out, logged with its channel and key, and
        counted in ``statistics().errors``; the others are kept all the same.

        Returns:
            The messages left out that way (empty when all were kept).

        Raises:
            StoreError: they could not be kept; none was.
        """
        ...

    async def read_outbound(self) -> list[KeptMessage]:
        """Every kept message, oldest first, each with its ``kept_id``; none is forgotten.

        A stored row that is not a kept message is logged (with its id),
        counted in ``statistics().errors`` and left where it is; the others
        are returned all the same.

        Raises:
            StoreError: they could not be read.
        """
        ...

    async def forget_outbound(self, kept_ids: Sequence[int]) -> int:
        """Forget these kept messages (sent, or dead-lettered); returns how many were kept.

        Ids no longer kept (forgotten already, by this or another node) are
        ignored.

        Raises:
            StoreError: they could not be forgotten; all are still kept.
        """
        ...

    async def recent_inbound(self, channel_id: str | None = None, limit: int = 100) -> list[Event]:
        """The last ``limit`` stored inbound events (of one channel), oldest first.

        Buffered events are not included: ``flush()`` first to see them.

        Raises:
            StoreError: they could not be read.
            ValueError: ``limit`` is negative.
        """
        ...

    def statistics(self) -> StoreStatistics:
        """A snapshot of the store's counters."""
        ...

    # --- channels' durable state (see runtime.store.durable) ------------------------------

    async def next_owner_token(self) -> int:
        """A new owner token, above every token this store gave out or holds.

        A single node takes one at each start; its checkpoints carry it.

        Raises:
            StoreError: the store could not be read or written.
        """
        ...

    async def write_checkpoints(self, items: Sequence[Checkpoint]) -> CheckpointResult:
        """Keep these channels' checkpoints (and dead letters, where changed).

        Each is written unless its owner token is below the stored one; such
        writes are refused and reported in the result, not raised.

        Raises:
            StoreError: nothing of the batch may be assumed written.
        """
        ...

    async def load_checkpoint(self, channel_id: str) -> StoredCheckpoint | None:
        """The channel's last checkpoint with its dead letters, or ``None``.

        A checkpoint that cannot be used comes back with ``problem`` set.

        Raises:
            StoreError: the store could not be read.
        """
        ...

    async def dead_letters(self, where: DeadLetterFilter) -> list[StoredDeadLetter]:
        """Kept dead letters across channels, oldest first.

        Raises:
            StoreError: the store could not be read.
        """
        ...

    async def discard_dead_letters(self, where: DeadLetterFilter) -> int:
        """Forget the kept dead letters that match (the limit aside); returns how many.

        Only for channels that do not run here: a running channel's letters
        are its own, and its next checkpoint writes them.

        Raises:
            StoreError: the store could not be written.
        """
        ...

    # --- the cluster's channel catalog -----------------------------------------------------

    async def catalog(self) -> dict[str, dict[str, Any]]:
        """Every channel of the cluster: ``{channel id: its spec as JSON-able dict}``.

        Raises:
            StoreError: the store could not be read.
        """
        ...

    async def catalog_put(self, specs: Mapping[str, dict[str, Any]], *, source: str) -> None:
        """Add or replace channels in the catalog (``source``: ``file`` or ``api``).

        Raises:
            StoreError: the store could not be written.
        """
        ...

    async def catalog_remove(self, channel_id: str) -> bool:
        """Take a channel out of the catalog; False if it was not in it.

        Raises:
            StoreError: the store could not be written.
        """
        ...


class BatchingStore(abc.ABC):
    """The buffer, flusher and counters every backend shares.

    A backend implements :meth:`_write_batch` and the outbound and read
    methods; :meth:`serving` runs the flusher for the ``open_store`` block.
    """

    backend: str
    durable: bool

    def __init__(self, *, batch_size: int, flush_interval: float) -> None:
        if batch_size < 1:
            raise ValueError(f"storage.batch_size must be at least 1, not {batch_size}")
        self._batch_size = batch_size
        self._flush_interval = max(flush_interval, MIN_FLUSH_INTERVAL)
        self._max_pending = BUFFER_BATCHES * batch_size
        self._buffer: list[Event] = []
        # Events ever taken off the buffer's head (written): the buffer's
        # first event is number ``_taken``; tickets hold ranges of numbers.
        self._taken = 0
        self._tickets: collections.deque[_Ticket] = collections.deque()
        self._write_lock = trio.Lock()
        self._batch_ready = trio.Event()
        self._progress = trio.Event()
        # When the buffer must be written by (events handed over without
        # waiting), and the flusher's wait, whose deadline that moves.
        self._due = math.inf
        self._idle_wait: trio.CancelScope | None = None
        # Events numbered below this were in a batch whose write failed, and
        # may have been kept all the same (see _settle).
        self._uncertain_until = 0
        self._state = "new"
        self._last_error = ""
        self._written = 0
        self._duplicates = 0
        self._batches = 0
        self._kept = 0
        self._errors = 0
        # Seconds per batch written (read by the node's /metrics).
        self.flush_seconds = Histogram()
        self._evicted = 0

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} [{self._state.upper()} pending={len(self._buffer)} "
            f"written={self._written} errors={self._errors}{self._repr_extra()}]>"
        )

    def _repr_extra(self) -> str:
        return ""

    # --- the hot path -----------------------------------------------------------------

    async def save_inbound(self, events: Sequence[Event]) -> None:
        """See :meth:`Store.save_inbound`."""
        self._check_open()
        stored = [event for event in events if not isinstance(event, ConnectionStateChanged)]
        if not stored:
            return
        if len(self._buffer) >= self._max_pending:
            await self._wait_for_room(len(stored))
        self._buffer.extend(stored)
        if len(self._buffer) >= self._batch_size:
            self._batch_ready.set()

    async def store_inbound(self, events: Sequence[Event]) -> list[bool]:
        """See :meth:`Store.store_inbound`."""
        self._check_open()
        stored = [event for event in events if not isinstance(event, ConnectionStateChanged)]
        if not stored:
            await trio.lowlevel.checkpoint()
            return []
        while len(self._buffer) >= self._max_pending:  # backpressure: no refusal, no timeout
            self._batch_ready.set()
            await self._progress.wait()
            self._check_open()
        ticket = _Ticket(self._taken + len(self._buffer), len(stored))
        self._buffer.extend(stored)
        self._tickets.append(ticket)
        self._batch_ready.set()  # someone waits: write now, not at the interval
        assert ticket.done is not None
        await ticket.done.wait()
        if ticket.error is not None:
            raise ticket.error
        return ticket.fresh

    def store_inbound_later(self, events: Sequence[Event], kept: InboundKept) -> bool:
        """See :meth:`Store.store_inbound_later`."""
        if self._state != "open" or len(self._buffer) >= self._max_pending:
            return False
        if len(events) == 1 and type(events[0]) is DeliveryReceipt:
            stored: Sequence[Event] = events  # (a receipt a send brought: the common case)
        else:
            stored = [event for event in events if not isinstance(event, ConnectionStateChanged)]
        ticket = _Ticket(self._taken + len(self._buffer), len(stored), kept)
        if not stored:
            ticket.settle()
            return True
        self._buffer.extend(stored)
        self._tickets.append(ticket)
        if len(self._buffer) >= self._batch_size:
            self._batch_ready.set()
        elif self._due == math.inf:
            # Nobody waits: written within LATER_WITHIN, with whatever comes
            # meanwhile. (A due time set already is earlier than this one's.)
            due = self._due = trio.current_time() + LATER_WITHIN
            waiting = self._idle_wait
            if waiting is not None and due < waiting.deadline:
                waiting.deadline = due
        return True

    def _settle(self, written: int, fresh: tuple[bool, ...]) -> None:
        """Tell the tickets whose events the last batch (of ``written``) wrote."""
        first = self._taken
        self._taken += written
        doubt = min(self._uncertain_until - first, written)
        if doubt > 0 and fresh:
            # A write of these failed but may have been kept (a lost commit's
            # answer): "stored before" may mean by it, so they count as news
            # (published, perhaps twice; never kept and lost to subscribers).
            fresh = (True,) * doubt + fresh[doubt:]
        tickets = self._tickets
        while tickets and tickets[0].start < self._taken:
            ticket = tickets[0]
            lo = max(ticket.start, first)
            hi = min(ticket.start + ticket.count, self._taken)
            ticket.fresh.extend(fresh[lo - first : hi - first] or (True,) * (hi - lo))
            if ticket.start + ticket.count > self._taken:
                break
            tickets.popleft()
            ticket.settle()

    def _release_tickets(self, error: StoreError) -> None:
        while self._tickets:
            ticket = self._tickets.popleft()
            ticket.error = error
            ticket.settle()

    async def _wait_for_room(self, count: int) -> None:
        self._batch_ready.set()
        with trio.move_on_after(BACKPRESSURE_WAIT):
            while len(self._buffer) >= self._max_pending:
                await self._progress.wait()
        self._check_open()
        if len(self._buffer) >= self._max_pending:
            why = f"; the last write failed: {self._last_error}" if self._last_error else ""
            raise StoreError(
                f"the {self.backend} store's inbound buffer is full ({len(self._buffer)} "
                f"events waiting, limit {self._max_pending}) and did not drain within "
                f"{BACKPRESSURE_WAIT} s{why}. These {count} events were not accepted: "
                "keep them and save them again later"
            )

    async def flush(self) -> None:
        """See :meth:`Store.flush`."""
        self._check_open()
        await trio.lowlevel.checkpoint()
        await self._write_pending()

    async def _write_pending(self) -> None:
        async with self._write_lock:
            remaining = len(self._buffer)
            while remaining > 0 and self._buffer:
                batch = self._buffer[: min(self._batch_size, remaining)]
                began = trio.current_time()
                try:
                    result = await self._write_batch(batch)
                    self.flush_seconds.observe(trio.current_time() - began)
                except StoreError as exc:
                    self._errors += 1
                    self._last_error = str(exc)
                    self._uncertain_until = max(self._uncertain_until, self._taken + len(batch))
                    log.error(
                        "%s store: writing %d inbound events failed; they stay buffered "
                        "(%d pending) and are retried: %s",
                        self.backend,
                        len(batch),
                        len(self._buffer),
                        exc,
                    )
                    self._signal_progress()
                    raise
                # Only the lock holder removes from the head; save_inbound only appends.
                del self._buffer[: len(batch)]
                remaining -= len(batch)
                self._settle(len(batch), result.fresh)
                self._last_error = ""
                self._written += result.written
                self._duplicates += result.duplicates
                self._errors += result.rejected
                self._batches += 1
                self._signal_progress()

    def _signal_progress(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    # --- lifetime -------------------------------------------------------------------------

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[None]:
        """Run the flusher for the block; write what is left on the way out.

        Raises:
            StoreError: the block ended normally but the last flush failed
                (logged with the number of events lost either way).
        """
        self._state = "open"
        failure: StoreError | None = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._run_flusher)
                try:
                    yield
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            self._state = "closing"
            failure = await self._final_flush()
            self._state = "closed"
            self._release_tickets(
                StoreError(f"the {self.backend} store closed before these events were written")
            )
        if failure is not None:
            raise failure

    async def _run_flusher(self) -> None:
        failures = 0
        while True:
            if failures:
                await trio.sleep(min(self._flush_interval * 2**failures, RETRY_DELAY_CAP))
            else:
                deadline = min(trio.current_time() + self._flush_interval, self._due)
                with trio.CancelScope(deadline=deadline) as self._idle_wait:
                    await self._batch_ready.wait()
                self._idle_wait = None
            self._batch_ready = trio.Event()
            self._due = math.inf  # what comes from now on sets it again
            if not self._buffer:
                continue
            try:
                await self._write_pending()
            except StoreError:
                failures += 1  # logged and counted by _write_pending
            else:
                failures = 0

    async def _final_flush(self) -> StoreError | None:
        failure: StoreError | None = None
        with trio.move_on_after(FINAL_FLUSH_DEADLINE, shield=True) as scope:
            try:
                await self._write_pending()
            except StoreError as exc:
                failure = exc
        if scope.cancelled_caught:
            failure = StoreError(f"the last flush did not finish within {FINAL_FLUSH_DEADLINE} s")
        if failure is None:
            return None
        lost = len(self._buffer)
        log.error(
            "%s store: closing with %d inbound events that could not be written: %s",
            self.backend,
            lost,
            failure,
        )
        error = StoreError(
            f"the {self.backend} store closed with {lost} inbound events unwritten: {failure}"
        )
        error.__cause__ = failure
        return error

    def _check_open(self) -> None:
        if self._state in ("open", "closing"):
            return
        if self._state == "new":
            raise StoreError(
                f"the {self.backend} store is not open yet: "
                "use it inside `async with open_store(...)`"
            )
        raise StoreError(f"the {self.backend} store is closed: its open_store block has ended")

    # --- records JSON cannot carry ---------------------------------------------------------

    def _encode_kept(
        self, items: Sequence[KeptMessage], encode: Callable[[KeptMessage], _R]
    ) -> tuple[list[_R], list[KeptMessage]]:
        """``encode`` each kept message; the ones it refuses are logged and left out."""
        rows: list[_R] = []
        refused: list[KeptMessage] = []
        for item in items:
            try:
                rows.append(encode(item))
            except (ValueError, TypeError, OverflowError, RecursionError) as exc:
                self._errors += 1
                refused.append(item)
                log.error(
                    "%s store: a message of channel %s (idempotency key %r) cannot be kept "
                    "and is left out; the %d other(s) are kept: %s",
                    self.backend,
                    item.channel_id,
                    item.message.idempotency_key,
                    len(items) - 1,
                    exc,
                    extra={
                        "channel": item.channel_id,
                        "switchboard.idempotency_key": item.message.idempotency_key,
                    },
                )
        return rows, refused

    def _report_rejected(self, rejected: Sequence[tuple[str, str]]) -> None:
        """Log and count the checkpoints and dead letters left out of a batch."""
        for channel_id, problem in rejected:
            self._errors += 1
            log.error(
                "%s store: channel %s: %s; left out, the rest of the batch is written",
                self.backend,
                channel_id,
                problem,
                extra={"channel": channel_id},
            )

    # --- counters ---------------------------------------------------------------------

    def statistics(self) -> StoreStatistics:
        """See :meth:`Store.statistics`."""
        return StoreStatistics(
            backend=self.backend,
            durable=self.durable,
            inbound_written=self._written,
            inbound_pending=len(self._buffer),
            inbound_duplicates=self._duplicates,
            batches=self._batches,
            kept=self._kept,
            errors=self._errors,
            inbound_evicted=self._evicted,
        )

    # --- what a backend provides ------------------------------------------------------------

    @abc.abstractmethod
    async def _write_batch(self, batch: Sequence[Event]) -> BatchResult:
        """Store one batch, ignoring events already stored.

        Raises:
            StoreError: nothing of the batch may be assumed written.
        """

    @abc.abstractmethod
    async def keep_outbound(self, items: Sequence[KeptMessage]) -> list[KeptMessage]:
        """See :meth:`Store.keep_outbound`."""

    @abc.abstractmethod
    async def read_outbound(self) -> list[KeptMessage]:
        """See :meth:`Store.read_outbound`."""

    @abc.abstractmethod
    async def forget_outbound(self, kept_ids: Sequence[int]) -> int:
        """See :meth:`Store.forget_outbound`."""

    @abc.abstractmethod
    async def recent_inbound(self, channel_id: str | None = None, limit: int = 100) -> list[Event]:
        """See :meth:`Store.recent_inbound`."""

    @abc.abstractmethod
    async def next_owner_token(self) -> int:
        """See :meth:`Store.next_owner_token`."""

    @abc.abstractmethod
    async def write_checkpoints(self, items: Sequence[Checkpoint]) -> CheckpointResult:
        """See :meth:`Store.write_checkpoints`."""

    @abc.abstractmethod
    async def load_checkpoint(self, channel_id: str) -> StoredCheckpoint | None:
        """See :meth:`Store.load_checkpoint`."""

    @abc.abstractmethod
    async def dead_letters(self, where: DeadLetterFilter) -> list[StoredDeadLetter]:
        """See :meth:`Store.dead_letters`."""

    @abc.abstractmethod
    async def discard_dead_letters(self, where: DeadLetterFilter) -> int:
        """See :meth:`Store.discard_dead_letters`."""

    @abc.abstractmethod
    async def catalog(self) -> dict[str, dict[str, Any]]:
        """See :meth:`Store.catalog`."""

    @abc.abstractmethod
    async def catalog_put(self, specs: Mapping[str, dict[str, Any]], *, source: str) -> None:
        """See :meth:`Store.catalog_put`."""

    @abc.abstractmethod
    async def catalog_remove(self, channel_id: str) -> bool:
        """See :meth:`Store.catalog_remove`."""


@asynccontextmanager
async def open_store(config: StorageConfig) -> AsyncIterator[Store]:
    """Open the store the config names, for the duration of the block.

    The store's flusher (and for PostgreSQL its trio-asyncio loop, unless one
    is already open, and its connection pool) live inside the block. Leaving
    it writes the buffered events, then closes.

    An exception leaving the block comes out as it was raised, not wrapped in
    the exception group of the store's own nursery.

    Args:
        config: the ``[storage]`` section.

    Yields:
        The open store.

    Raises:
        StoreError: the store could not be opened (PostgreSQL unreachable,
            schema not creatable), or the block ended normally but its
            buffered events could not all be written.
        ValueError: the config's batch size is below 1.
    """
    async with ungrouped(_open_backend(config)) as store:
        if config.outbox_file:
            from .legacy_outbox import import_legacy_outbox

            await import_legacy_outbox(store, Path(config.outbox_file))
        yield store


@asynccontextmanager
async def _open_backend(config: StorageConfig) -> AsyncIterator[Store]:
    if config.backend == "postgres":
        from .postgres import open_postgres_store

        async with open_postgres_store(config) as pg_store:
            yield pg_store
    elif config.backend == "sqlite":
        from .sqlite import open_sqlite_store

        async with open_sqlite_store(config) as sqlite_store:
            yield sqlite_store
    else:
        from .memory import open_memory_store

        async with open_memory_store(config) as memory_store:
            yield memory_store
