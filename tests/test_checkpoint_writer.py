"""The checkpoint writer's round: written in slices, so it never holds the event loop for all.

A round of many dirty channels is exported and written a slice at a time:
other tasks run between slices, every channel is written, and a slice the
store fails leaves it and the ones after it dirty for the next round.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import trio

from actors.channel import ChannelMemory, ChannelSettings
from providers.testing import DEFAULT_LIMITS
from runtime.checkpoints import EXPORT_STEP, SLICE, CheckpointWriter
from runtime.errors import StoreError
from runtime.store.durable import ENCODE_STEP, Checkpoint, CheckpointResult
from runtime.store.memory import MemoryStore
from tests.support import CEILING

CHANNELS = SLICE * 2 + SLICE // 2  # three slices, the last one short


class CountingStore(MemoryStore):
    """The memory store, counting its batches and failing the one it is told to."""

    def __init__(self) -> None:
        super().__init__(batch_size=100, flush_interval=1.0)
        self.batches: list[int] = []
        self.ticks_seen: list[int] = []
        self.fail_batch: int | None = None
        self.ticks = 0

    async def write_checkpoints(self, items: Sequence[Checkpoint]) -> CheckpointResult:
        self.batches.append(len(items))
        self.ticks_seen.append(self.ticks)
        if self.fail_batch == len(self.batches):
            raise StoreError("the store is down")
        return await super().write_checkpoints(items)


def attach_all(writer: CheckpointWriter) -> list[ChannelMemory]:
    memories = []
    for i in range(CHANNELS):
        memory = ChannelMemory(DEFAULT_LIMITS, ChannelSettings())
        writer.attach(memory, f"ch-{i:04d}", "default", "fake")
        memories.append(memory)
    return memories


async def test_a_round_is_written_in_slices_with_other_tasks_running_between() -> None:
    store = CountingStore()
    writer = CheckpointWriter(store, token=1)
    attach_all(writer)

    async def other_task() -> None:
        while True:
            store.ticks += 1
            await trio.lowlevel.checkpoint()

    with trio.fail_after(CEILING):
        async with store.serving(), trio.open_nursery() as nursery:
            nursery.start_soon(other_task)
            await writer.flush()
            nursery.cancel_scope.cancel()
            for i in (0, SLICE, CHANNELS - 1):
                assert await store.load_checkpoint(f"ch-{i:04d}") is not None
    assert store.batches == [SLICE, SLICE, SLICE // 2]
    assert store.ticks_seen[0] < store.ticks_seen[1] < store.ticks_seen[2]  # it ran between
    assert writer.statistics().written == CHANNELS
    assert writer.statistics().dirty == 0


async def test_a_failed_slice_leaves_it_and_the_rest_dirty_for_the_next_round() -> None:
    store = CountingStore()
    store.fail_batch = 2
    writer = CheckpointWriter(store, token=1)
    attach_all(writer)
    with trio.fail_after(CEILING):
        async with store.serving():
            with pytest.raises(StoreError):
                await writer.flush()
            assert store.batches == [SLICE, SLICE]  # the third slice was not tried
            assert writer.statistics().written == SLICE
            assert writer.statistics().dirty == CHANNELS - SLICE  # kept for the next round
            store.fail_batch = None
            await writer.flush()
    assert writer.statistics().written == CHANNELS
    assert writer.statistics().dirty == 0


async def test_a_slice_is_exported_and_encoded_a_few_channels_at_a_time() -> None:
    # A slice held at once was tens of milliseconds of a busy node's loop.
    store = CountingStore()
    writer = CheckpointWriter(store, token=1)
    attach_all(writer)
    ran: list[int] = []  # the other task's ticks, each time the store was entered

    async def other_task() -> None:
        while True:
            store.ticks += 1
            await trio.lowlevel.checkpoint()

    with trio.fail_after(CEILING):
        async with store.serving(), trio.open_nursery() as nursery:
            nursery.start_soon(other_task)
            await trio.lowlevel.checkpoint()
            before = store.ticks
            await writer.flush()
            ran.append(store.ticks - before)
            nursery.cancel_scope.cancel()
    # Both the export and the store's encoding let it run every 25 channels
    # or fewer (a slice's last step of each may be short): not only between slices.
    assert EXPORT_STEP <= 25 and ENCODE_STEP <= 25
    assert ran[0] >= 2 * (CHANNELS // 25) - 2 * len(store.batches)
    assert writer.statistics().written == CHANNELS


async def test_a_round_cut_in_the_middle_of_an_export_leaves_every_channel_dirty() -> None:
    store = CountingStore()
    writer = CheckpointWriter(store, token=1)
    memories = attach_all(writer)
    with trio.fail_after(CEILING):
        async with store.serving():
            with trio.CancelScope() as cut:

                async def cut_after_the_first_step() -> None:
                    await trio.lowlevel.checkpoint()
                    cut.cancel()

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(cut_after_the_first_step)
                    await writer.flush()
            assert cut.cancelled_caught
            assert store.batches == []  # cut before the first slice reached the store
            assert writer.statistics().dirty == CHANNELS
            assert all(memory.dirty for memory in memories)
            await writer.flush()
    assert writer.statistics().written == CHANNELS
