"""The checkpoint writer's round: written in slices, so it never holds the event loop for all.

A round of many dirty channels is exported and written a slice at a time:
other tasks run between slices, every channel is written, and a slice the
store fails leaves it and the ones after it dirty for the next round.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import trio
import trio.testing

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

    async def tick_forever(self) -> None:
        """Another task of the loop: counts how often it got to run."""
        while True:
            self.ticks += 1
            await trio.lowlevel.checkpoint()

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

    with trio.fail_after(CEILING):
        async with store.serving(), trio.open_nursery() as nursery:
            nursery.start_soon(store.tick_forever)
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

    with trio.fail_after(CEILING):
        async with store.serving(), trio.open_nursery() as nursery:
            nursery.start_soon(store.tick_forever)
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


# --- cut and given-up writes (a review of the stepped export) ----------------------


class GateStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__(batch_size=100, flush_interval=1.0)
        self.hold: trio.Event | None = None
        self.entered = trio.Event()
        self.fail = False
        self.ids: list[list[str]] = []

    async def write_checkpoints(self, items: Sequence[Checkpoint]) -> CheckpointResult:
        self.entered.set()
        self.ids.append([i.channel_id for i in items])
        if self.hold is not None:
            await self.hold.wait()
        if self.fail:
            raise StoreError("down")
        return await super().write_checkpoints(items)


def attach_few(writer: CheckpointWriter, n: int) -> list[ChannelMemory]:
    out = []
    for i in range(n):
        m = ChannelMemory(DEFAULT_LIMITS, ChannelSettings())
        writer.attach(m, f"ch-{i}", "t", "fake")
        out.append(m)
    return out


async def test_a_channel_detached_or_changed_during_an_export_s_yields(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import runtime.checkpoints as cp

    store = GateStore()
    writer = CheckpointWriter(store, token=1)
    ms = attach_few(writer, 3 * EXPORT_STEP)
    real = cp.export_state
    calls = 0

    def export(memory: ChannelMemory, **kw: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == EXPORT_STEP + 1:  # the first export after the first yield
            writer.detach(ms[EXPORT_STEP + 1])  # not exported yet
            ms[0].touch()  # exported already: must be marked again
        return real(memory, **kw)

    monkeypatch.setattr(cp, "export_state", export)
    async with store.serving():
        await writer.flush()
    assert f"ch-{EXPORT_STEP + 1}" not in store.ids[0]
    assert len(store.ids[0]) == 3 * EXPORT_STEP - 1
    assert ms[0].dirty and writer.statistics().dirty == 1


async def test_a_write_now_that_gives_up_waiting_leaves_its_change_for_the_next_round(
    autojump_clock: Any,
) -> None:
    store = GateStore()
    writer = CheckpointWriter(store, token=1)
    a, b = attach_few(writer, 2)
    async with store.serving():
        await writer.flush()  # both written, clean
        store.ids.clear()
        store.hold = trio.Event()
        store.entered = trio.Event()
        async with trio.open_nursery() as nursery:
            a.touch()
            nursery.start_soon(writer.flush)  # holds the lock
            await store.entered.wait()
            b.touch()  # b changes
            with trio.move_on_after(1) as waited:  # b's write_now gives up waiting
                await writer.write_now(b)
            assert waited.cancelled_caught
            store.hold.set()
        store.hold = None
        await writer.flush()  # the next rounds, and the drain's flush
        await writer.flush()
    written = [i for batch in store.ids for i in batch]
    assert "ch-1" in written, f"b's change never written: {store.ids}, dirty={b.dirty}"


async def test_a_write_now_whose_group_write_was_cut_does_not_say_written(
    autojump_clock: Any,
) -> None:
    store = GateStore()
    writer = CheckpointWriter(store, token=1)
    a, b, c = attach_few(writer, 3)
    async with store.serving():
        await writer.flush()
        store.ids.clear()
        store.hold = trio.Event()
        store.entered = trio.Event()
        outcome: list[str] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.flush)  # a round holds the lock (c dirty)
            c.touch()
            await store.entered.wait()
            store.entered = trio.Event()
            a.touch(), b.touch()
            leader = trio.CancelScope()

            async def lead() -> None:
                with leader:
                    await writer.write_now(a)

            async def follow() -> None:
                try:
                    await writer.write_now(b)
                    outcome.append("b reported written")
                except StoreError:
                    outcome.append("b reported not written")

            nursery.start_soon(lead)
            await trio.testing.wait_all_tasks_blocked()  # the leader waits for the lock
            nursery.start_soon(follow)
            await trio.testing.wait_all_tasks_blocked()  # and b joins its group
            store.hold.set()  # the round ends; the leader's group write starts
            store.hold = trio.Event()
            await store.entered.wait()
            leader.cancel()  # the leader's caller gives up during the group write
            await trio.testing.wait_all_tasks_blocked()
            store.hold.set()
    # write_now(b) may only return normally if b's checkpoint was written
    assert outcome == ["b reported not written"] or not b.dirty, (outcome, b.dirty)


class CutAfterFirstBatch(MemoryStore):
    def __init__(self, cut: trio.CancelScope) -> None:
        super().__init__(batch_size=100, flush_interval=1.0)
        self.cut = cut
        self.batches: list[list[str]] = []

    async def write_checkpoints(self, items: Sequence[Checkpoint]) -> CheckpointResult:
        result = await super().write_checkpoints(items)
        self.batches.append([i.channel_id for i in items])
        if len(self.batches) == 1:
            self.cut.cancel()  # lands at the yield between slice 1 and slice 2
        return result


async def test_a_round_cut_between_slices_leaves_the_next_slices_dirty(
    autojump_clock: Any,
) -> None:
    cut = trio.CancelScope()
    store = CutAfterFirstBatch(cut)
    writer = CheckpointWriter(store, token=1)
    memories = attach_few(writer, 3 * SLICE)
    async with store.serving():
        with cut:
            await writer.flush()
        assert cut.cancelled_caught
        assert len(store.batches) == 1  # slice 1 written, then cut at the yield
        unwritten = memories[SLICE:]
        lost = [m for m in unwritten if not (m.dirty and m in writer._dirty)]
        # every channel not written must be waiting for the next round
        assert not lost, f"{len(lost)} channels dirty but in no round: {writer.statistics()}"
