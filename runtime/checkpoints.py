"""The node's checkpoint writer: channels' durable state, written behind.

Design:
- One writer per node, never on the send path. A change to a channel's
  durable state calls ``memory.touch()``, which marks the memory dirty and
  puts it in the writer's dirty set, once. Every ``interval`` seconds the
  writer takes the whole set, exports each channel's state
  (``actors.channel.durable.export_state``) and writes them in batches of
  :data:`SLICE` (one statement per table per batch; the next slice is
  exported only once the last is written): a channel is written at most
  once per interval, and a crash of the node loses at most the last round.
  The event loop is never held for a slice: the export, and the store's
  encoding (``encode_checkpoints_in_steps``), let the other tasks run
  every few dozen channels. A slice of busy channels held at once was tens
  of milliseconds, every second: the tail latency of every send meanwhile.
- A channel's ``on_stop`` marks it dirty; once its actor has ended for good
  (a stop, the drain) its checkpoint is written marked *clean* (it holds
  everything: restored, its limiters are exact). The drain writes every
  stopped channel in one batch (``flush``); ``stop_channel`` writes its one
  (``write_now``). A new dead letter is written at once (``write_now``).
- The memory is marked clean *before* it is exported, so a change made
  while the batch is on its way marks it dirty again for the next round.
  A batch the store refuses as a whole (the store is down) marks every
  channel of it dirty again: nothing is lost, it is written when the store
  is back. That is logged once per outage, not once per round.
- Every write carries the node's owner token. A write the store refuses for
  a lower token means another owner took the channel over (fencing): it is
  logged, counted, and reported to ``on_fenced`` (the node stops the
  channel); the writer stops writing for it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, Final

import attrs
import trio

from actors.channel import ChannelMemory
from actors.channel.durable import export_state

from .errors import StoreError
from .store import Store
from .store.durable import Checkpoint

__all__ = ["CheckpointStatistics", "CheckpointWriter", "clock_offset"]

log = logging.getLogger("switchboard.checkpoints")

DEFAULT_INTERVAL: Final = 1.0  # seconds between two checkpoints of one channel
SLICE: Final = 200  # channels exported and written per batch
EXPORT_STEP: Final = 25  # channels exported between two yields to the other tasks


wall_clock: Callable[[], float] = time.time
"""Where unix time comes from (tests under a virtual trio clock replace it)."""


def clock_offset() -> float:
    """``wall - trio``: what turns this process's trio times into unix times."""
    return wall_clock() - trio.current_time()


@attrs.frozen(kw_only=True)
class CheckpointStatistics:
    """The writer's counters.

    Attributes:
        token: the owner token its writes carry.
        dirty: channels waiting for the next round.
        written: checkpoints written.
        refused: checkpoints refused for a lower token (fenced).
        failures: batches the store failed to write (written again later).
        rounds: rounds that wrote at least one checkpoint.
        last_batch: checkpoints in the last round's batch.
        last_seconds: how long the last round's write took.
    """

    token: int
    dirty: int
    written: int
    refused: int
    failures: int
    rounds: int
    last_batch: int
    last_seconds: float


@attrs.define
class _Channel:
    channel_id: str
    tenant: str
    provider: str
    token: int  # the owner token its writes carry (the node's, or the lease's)
    letters_written: int = -1  # the queue's ``changes`` at the last write
    fenced: bool = False


class CheckpointWriter:
    """Writes dirty channels' checkpoints in batches (see the module docstring).

    Args:
        store: where checkpoints go.
        token: the owner token every write carries.
        interval: seconds between rounds.
        on_fenced: called with a channel id when a write is refused.
    """

    def __init__(
        self,
        store: Store,
        *,
        token: int,
        interval: float = DEFAULT_INTERVAL,
        on_fenced: Callable[[str], Any] | None = None,
    ) -> None:
        self.store = store
        self.token = token
        self.interval = interval
        self.on_fenced = on_fenced
        self._channels: dict[ChannelMemory, _Channel] = {}
        self._dirty: dict[ChannelMemory, None] = {}
        self._lock = trio.Lock()
        self._urgent = _Urgent()  # write_now's next group
        self._failing = False
        self._written = self._refused = self._failures = self._rounds = 0
        self._last_batch = 0
        self._last_seconds = 0.0

    def __repr__(self) -> str:
        return (
            f"<CheckpointWriter token={self.token} channels={len(self._channels)} "
            f"dirty={len(self._dirty)} written={self._written}>"
        )

    # --- what the node and the channels call -------------------------------------------

    def attach(
        self,
        memory: ChannelMemory,
        channel_id: str,
        tenant: str,
        provider: str,
        *,
        token: int | None = None,
    ) -> None:
        """Checkpoint ``memory`` from now on, as ``channel_id``; it is written at the next round.

        Args:
            token: the owner token of its writes (in a cluster, its lease's);
                default the node's.
        """
        self._channels[memory] = _Channel(
            channel_id, tenant, provider, self.token if token is None else token
        )
        memory.checkpoints = self
        memory.dirty = False
        memory.touch()

    def detach(self, memory: ChannelMemory) -> None:
        """Stop checkpointing ``memory`` (its channel was stopped and written)."""
        self._channels.pop(memory, None)
        self._dirty.pop(memory, None)
        if memory.checkpoints is self:
            memory.checkpoints = None

    def mark(self, memory: ChannelMemory) -> None:
        """Part of ``CheckpointSink``: write ``memory`` at the next round."""
        if memory in self._channels:
            self._dirty[memory] = None

    async def write_now(self, memory: ChannelMemory) -> None:
        """Part of ``CheckpointSink``: write ``memory`` now (a new dead letter, a stop).

        Group commit: the channels that ask while a write is in flight go
        together in the next one (a node letting a hundred channels go
        writes them in a few batches, not a hundred one after another).

        Raises:
            StoreError: the store failed; the memory stays dirty.
        """
        if memory not in self._channels:
            return
        self._dirty.pop(memory, None)
        batch = self._urgent
        batch.memories[memory] = None
        try:
            await self._lock.acquire()
        except BaseException:
            if not batch.done:  # gave up waiting: the next round writes it instead
                batch.memories.pop(memory, None)
                self.mark(memory)
            raise
        try:
            if not batch.done:  # nobody wrote it while this waited: write all that asked
                self._urgent = _Urgent()
                batch.done = True
                try:
                    await self._write(list(batch.memories))
                except BaseException as exc:  # a cancelled leader wrote nothing either
                    batch.error = str(exc) or type(exc).__name__
                    raise
        finally:
            self._lock.release()
        if batch.error is not None:
            raise StoreError(f"checkpoint not written: {batch.error}")

    async def flush(self) -> None:
        """Write every dirty channel now (the drain, or a listing of dead letters).

        Raises:
            StoreError: the store failed; the channels stay dirty.
        """
        async with self._lock:  # after a round in flight: what it writes is written
            taken = list(self._dirty)
            self._dirty.clear()
            await self._write(taken)

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Write a round every ``interval`` seconds until cancelled."""
        task_status.started()
        while True:
            await trio.sleep(self.interval)
            if not self._dirty:
                continue
            with contextlib.suppress(StoreError):  # logged; the channels are dirty again
                await self.flush()

    def statistics(self) -> CheckpointStatistics:
        return CheckpointStatistics(
            token=self.token,
            dirty=len(self._dirty),
            written=self._written,
            refused=self._refused,
            failures=self._failures,
            rounds=self._rounds,
            last_batch=self._last_batch,
            last_seconds=self._last_seconds,
        )

    # --- the round ----------------------------------------------------------------------

    async def _write(self, memories: list[ChannelMemory]) -> None:
        """Write ``memories`` in slices; the caller holds the lock (one round at a time).

        Each slice of :data:`SLICE` channels is exported and written as one
        batch before the next is exported, the others running every
        :data:`EXPORT_STEP` channels of an export (and of the store's encoding).

        Raises:
            StoreError: a slice failed; it and the slices after it stay dirty.
        """
        memories = [m for m in memories if m in self._channels and not self._channels[m].fenced]
        if not memories:
            return
        started = trio.current_time()
        for first in range(0, len(memories), SLICE):
            try:
                if first:
                    await trio.lowlevel.checkpoint()  # the others run between slices
                await self._write_slice(memories[first : first + SLICE])
            except BaseException:
                for memory in memories[first:]:
                    self.mark(memory)  # not written (still dirty): the next round
                raise
        if self._failing:
            log.info("checkpoints are written again")
            self._failing = False
        self._rounds += 1
        self._last_batch = len(memories)
        self._last_seconds = trio.current_time() - started

    async def _write_slice(self, memories: list[ChannelMemory]) -> None:
        items = []
        exported = []
        letters_seen = []
        try:
            for i, memory in enumerate(memories):
                if i % EXPORT_STEP == 0:
                    if i:
                        await trio.lowlevel.checkpoint()  # the others run between steps
                    now = trio.current_time()
                    offset = clock_offset()
                channel = self._channels.get(memory)
                if channel is None:  # detached while the others ran
                    continue
                memory.dirty = False  # a change from here on marks it again
                letters = memory.dead_letters.changes
                exported.append(memory)
                letters_seen.append(letters)
                items.append(
                    Checkpoint(
                        channel_id=channel.channel_id,
                        tenant=channel.tenant,
                        provider=channel.provider,
                        owner_token=channel.token,
                        state=export_state(
                            memory, now=now, clock_offset=offset, clean=_ended(memory)
                        ),
                        letters_changed=letters != channel.letters_written,
                    )
                )
            result = await self.store.write_checkpoints(items)
        except BaseException as exc:
            for memory in memories:  # written at the next round instead
                memory.dirty = True
                self.mark(memory)
            if isinstance(exc, StoreError):
                self._failures += 1
                if not self._failing:
                    log.error(
                        "checkpoints of %d channel(s) could not be written; they are "
                        "kept and written again every %g s: %s",
                        len(items),
                        self.interval,
                        exc,
                    )
                self._failing = True
            raise
        self._written += len(result.written)
        done = set(result.written)
        for memory, item, letters in zip(exported, items, letters_seen, strict=True):
            kept = self._channels.get(memory)
            if kept is not None and item.channel_id in done:
                kept.letters_written = letters
        for channel_id, stored in result.refused:
            self._fenced(channel_id, stored)

    def _fenced(self, channel_id: str, stored: int) -> None:
        self._refused += 1
        ours = self.token
        for memory, channel in self._channels.items():
            if channel.channel_id == channel_id:
                channel.fenced = True
                ours = channel.token
                self._dirty.pop(memory, None)
        log.error(
            "the checkpoint of channel %s was refused: another owner wrote it with token %d, "
            "above this node's %d; this node no longer owns the channel and stops it",
            channel_id,
            stored,
            ours,
            extra={"channel": channel_id},
        )
        if self.on_fenced is not None:
            self.on_fenced(channel_id)


class _Urgent:
    """One group of :meth:`CheckpointWriter.write_now` requests, written together."""

    __slots__ = ("done", "error", "memories")

    def __init__(self) -> None:
        self.memories: dict[ChannelMemory, None] = {}
        self.done = False
        self.error: str | None = None


def _ended(memory: ChannelMemory) -> bool:
    """Whether the channel's actor ended for good: its checkpoint then holds everything."""
    ref = memory.current_ref
    return ref is not None and not ref.alive
