"""Delivery receipts kept without holding the reader (``store_inbound_later``).

The store takes a receipt into its batch and publishes it from its own task
once the batch is written; the channel's reader goes on at once. These
tests hold the store's writes at a gate (a real memory store, its write
delayed) to see what happens while a receipt is in the store's hands.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from actors import open_actor_system
from actors.channel import (
    ChannelActor,
    ChannelMemory,
    ChannelRef,
    ChannelSettings,
    ChannelStateChanged,
    ChannelStatus,
)
from providers.base import (
    ChannelConfig,
    ConnectionState,
    ConnectionStateChanged,
    DeliveryReceipt,
    Event,
    InboundMessage,
    PlatformLimits,
    ReceiptStatus,
)
from providers.testing import FakeProvider
from runtime import open_store
from runtime.config import StorageConfig
from runtime.errors import StoreError
from runtime.store import Store
from runtime.store.base import BUFFER_BATCHES, LATER_WITHIN
from supervisors import ChildSpec, open_supervisor
from tests.support import CEILING

LIMITS = PlatformLimits(
    per_channel_rate=1000.0,
    per_channel_burst=1000,
    per_peer_rate=1000.0,
    per_peer_burst=1000,
    max_text_length=100,
)


def receipt(msg_id: str) -> DeliveryReceipt:
    return DeliveryReceipt(
        channel_id="ch", platform_message_id=msg_id, peer="u1", status=ReceiptStatus.DELIVERED
    )


def message(msg_id: str) -> InboundMessage:
    return InboundMessage(
        channel_id="ch", platform_message_id=msg_id, peer="u1", sender="u1", text="hello"
    )


def state_change() -> ConnectionStateChanged:
    return ConnectionStateChanged(channel_id="ch", state=ConnectionState.CONNECTED)


def ids(events: Sequence[Any]) -> list[str]:
    return [getattr(event, "platform_message_id", type(event).__name__) for event in events]


class Gate:
    """Holds a real store's batch writes until opened (``gate.open``)."""

    def __init__(self, store: Any) -> None:
        self.opened = trio.Event()
        self.writes = 0
        write = store._write_batch

        async def held(batch: Sequence[Event]) -> Any:
            await self.opened.wait()
            self.writes += 1
            return await write(batch)

        store._write_batch = held

    def open(self) -> None:
        self.opened.set()


@asynccontextmanager
async def gated_store(**config: Any) -> AsyncIterator[tuple[Store, Gate]]:
    async with open_store(StorageConfig(**config)) as store:
        yield store, Gate(store)


@asynccontextmanager
async def open_channel(provider: FakeProvider, store: Any) -> AsyncIterator[ChannelRef]:
    channel_settings = ChannelSettings()
    memory = ChannelMemory(provider.limits, channel_settings)
    config = ChannelConfig(channel_id="ch", provider="fake", credentials={"token": "s3cret"})
    factory, memory = ChannelActor.factory(
        config, provider, settings=channel_settings, sink=store, memory=memory
    )
    async with open_actor_system() as system:
        async with open_supervisor(
            system, [ChildSpec(id="ch", start=factory)], intensity=10, period=60.0
        ) as sup:
            ref = await sup.whereis_child("ch")
            assert ref is not None
            yield ChannelRef(ref, memory, "ch", provider.name)


@asynccontextmanager
async def gated_channel() -> AsyncIterator[tuple[FakeProvider, Store, Gate, ChannelRef]]:
    """A channel on a fake platform, keeping its events in a gated store."""
    provider = FakeProvider(limits=LIMITS)
    async with gated_store() as (store, gate), open_channel(provider, store) as channel:
        yield provider, store, gate, channel


def not_states(event: Any) -> bool:
    return not isinstance(event, ChannelStateChanged)


# --- the store ------------------------------------------------------------------------------


async def test_the_store_answers_receipts_it_took_in_order_with_the_callers_who_wait() -> None:
    heard: list[tuple[str, Any, Any]] = []

    def told(name: str) -> Any:
        return lambda fresh, error: heard.append((name, fresh, error))

    with trio.fail_after(CEILING):
        async with gated_store() as (store, gate):
            assert store.store_inbound_later([receipt("r1")], told("r1"))
            waited: list[tuple[list[bool], list[str]]] = []

            async def wait_for_m1() -> None:
                fresh = await store.store_inbound([message("m1")])
                # Taken before this caller's events: answered before it returns.
                waited.append((fresh, [name for name, _, _ in heard]))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait_for_m1)
                await trio.testing.wait_all_tasks_blocked()
                assert store.store_inbound_later([receipt("r2")], told("r2"))
                assert store.store_inbound_later([receipt("r1")], told("r1 again"))
                await trio.testing.wait_all_tasks_blocked()
                assert heard == [] and waited == []  # nothing written yet: nobody told
                gate.open()
            await store.flush()
            assert waited == [([True], ["r1"])]
            assert heard == [
                ("r1", [True], None),
                ("r2", [True], None),
                ("r1 again", [False], None),  # the store had it: not news
            ]
            assert ids(await store.recent_inbound("ch")) == ["r1", "m1", "r2"]


async def test_a_store_with_a_full_buffer_takes_no_receipt_without_waiting() -> None:
    with trio.fail_after(CEILING):
        async with gated_store(batch_size=1) as (store, gate):
            taken = 0
            while store.store_inbound_later([receipt(f"r{taken}")], lambda fresh, error: None):
                taken += 1
            assert taken == BUFFER_BATCHES  # batches of one
            assert store.statistics().inbound_pending == 10  # the refused one was not taken
            gate.open()
            await store.flush()
            assert store.store_inbound_later([receipt("after")], lambda fresh, error: None)


async def test_receipts_handed_over_together_share_one_write_within_a_few_ms(
    mock_clock: trio.testing.MockClock,
) -> None:
    heard: list[Any] = []
    with trio.fail_after(CEILING):
        async with open_store(StorageConfig()) as store:
            await trio.testing.wait_all_tasks_blocked()  # the flusher waits
            for name in ("r1", "r2", "r3"):
                assert store.store_inbound_later([receipt(name)], lambda f, e: heard.append(f))
            mock_clock.jump(LATER_WITHIN * 0.9)
            await trio.testing.wait_all_tasks_blocked()
            assert store.statistics().batches == 0 and heard == []
            mock_clock.jump(LATER_WITHIN * 0.2)
            await trio.testing.wait_all_tasks_blocked()
            assert store.statistics().batches == 1
            assert heard == [[True], [True], [True]]


async def test_a_store_that_closes_before_writing_tells_each_receipt_why(
    autojump_clock: trio.testing.MockClock,
) -> None:
    heard: list[tuple[Any, Any]] = []
    with trio.fail_after(CEILING):
        with pytest.raises(StoreError, match="2 inbound events unwritten"):
            async with gated_store() as (store, _gate):
                for name in ("r1", "r2"):
                    assert store.store_inbound_later(
                        [receipt(name)], lambda fresh, error: heard.append((fresh, error))
                    )
        # The last flush waited for the gate until its deadline (virtual time).
        assert [fresh for fresh, _ in heard] == [None, None]
        assert all(isinstance(error, StoreError) for _, error in heard)
        assert not store.store_inbound_later([receipt("late")], lambda fresh, error: None)


# --- the channel ----------------------------------------------------------------------------


async def test_a_receipt_does_not_hold_the_reader_while_the_store_writes_it() -> None:
    with trio.fail_after(CEILING):
        async with gated_channel() as (provider, store, gate, channel):
            events = channel.subscribe(accepts=not_states)
            conn = await provider.wait_connected(1)
            conn.push(receipt("r1"), receipt("r2"), receipt("r3"))
            await trio.testing.wait_all_tasks_blocked()
            # All read while the first one's batch waits at the gate.
            assert conn.unread == 0
            assert len(channel.memory.in_store or ()) == 3
            assert ids(await store.recent_inbound("ch")) == []
            gate.open()
            published = [await events.receive() for _ in range(3)]
            assert ids(published) == ["r1", "r2", "r3"]
            # Published once kept, never before.
            assert ids(await store.recent_inbound("ch")) == ["r1", "r2", "r3"]
            assert len(channel.memory.in_store or ()) == 0


async def test_what_the_channel_publishes_meanwhile_waits_behind_the_receipts() -> None:
    with trio.fail_after(CEILING):
        async with gated_channel() as (provider, _store, gate, channel):
            conn = await provider.wait_connected(1)
            await trio.testing.wait_all_tasks_blocked()  # CONNECTED is published
            events = channel.subscribe()
            conn.push(receipt("r1"), state_change(), receipt("r2"))
            await trio.testing.wait_all_tasks_blocked()
            conn.drop()  # the channel says it reconnects: after the receipts too
            await trio.testing.wait_all_tasks_blocked()
            assert conn.unread == 0
            gate.open()
            got = [await events.receive() for _ in range(4)]
            assert ids(got[:3]) == ["r1", "ConnectionStateChanged", "r2"]
            assert isinstance(got[3], ChannelStateChanged)
            assert got[3].previous is ChannelStatus.CONNECTED


async def test_a_receipt_the_store_had_is_counted_not_published_again() -> None:
    with trio.fail_after(CEILING):
        async with gated_channel() as (provider, _store, gate, channel):
            events = channel.subscribe(accepts=not_states)
            conn = await provider.wait_connected(1)
            conn.push(receipt("r1"), receipt("r1"), message("m1"))
            await trio.testing.wait_all_tasks_blocked()
            gate.open()
            got = [await events.receive() for _ in range(2)]
            assert ids(got) == ["r1", "m1"]
            assert channel.memory.counters["duplicates"] == 1


def write_then_lose_the_answer(store: Any) -> list[int]:
    """The first batch is written, then reported failed (a commit whose answer was lost)."""
    calls: list[int] = []
    write = store._write_batch

    async def flaky(batch: Sequence[Event]) -> Any:
        calls.append(len(batch))
        result = await write(batch)
        if len(calls) == 1:
            raise StoreError("the connection was lost after COMMIT (test)")
        return result

    store._write_batch = flaky
    return calls


@pytest.mark.parametrize("event", [receipt("e1"), message("e1")], ids=["receipt", "message"])
async def test_an_event_whose_write_failed_but_was_kept_is_still_published(
    autojump_clock: trio.testing.MockClock, event: Event
) -> None:
    # The store writes it again, finds it "stored before" (by the write that
    # said it failed), and must not take that for a duplicate seen before.
    with trio.fail_after(CEILING):
        async with gated_channel() as (provider, store, gate, channel):
            calls = write_then_lose_the_answer(store)
            gate.open()
            events = channel.subscribe(accepts=not_states)
            conn = await provider.wait_connected(1)
            conn.push(event)
            assert ids([await events.receive()]) == ["e1"]
            assert calls == [1, 1]  # written, "failed", written again
            assert ids(await store.recent_inbound("ch")) == ["e1"]
            assert channel.memory.counters["duplicates"] == 0


async def test_a_subscriber_whose_filter_raises_is_dropped_and_the_others_get_the_receipt(
    caplog: pytest.LogCaptureFixture,
) -> None:

    def broken(event: Any) -> bool:
        if isinstance(event, DeliveryReceipt):
            return bool(event.text)  # type: ignore[attr-defined]  # a receipt has none
        return True

    with trio.fail_after(CEILING):
        async with gated_channel() as (provider, _store, gate, channel):
            dropped = channel.subscribe(accepts=broken)
            kept = channel.subscribe(accepts=not_states)
            conn = await provider.wait_connected(1)
            conn.push(receipt("r1"))
            await trio.testing.wait_all_tasks_blocked()
            gate.open()
            assert ids([await kept.receive()]) == ["r1"]
            await channel.ref.stop()  # nothing is stalled
            assert channel.statistics().status is ChannelStatus.STOPPED
            with pytest.raises(trio.EndOfChannel):  # unsubscribed, not left hanging
                while True:
                    dropped.receive_nowait()
    assert "a subscriber's filter raised on DeliveryReceipt" in caplog.text


async def test_receipts_and_messages_are_published_in_the_order_read() -> None:
    with trio.fail_after(CEILING):
        async with gated_channel() as (provider, _store, gate, channel):
            events = channel.subscribe(accepts=not_states)
            conn = await provider.wait_connected(1)
            conn.push(receipt("r1"), receipt("r2"), message("m1"), receipt("r3"))
            await trio.testing.wait_all_tasks_blocked()
            gate.open()
            got = [await events.receive() for _ in range(4)]
            assert ids(got) == ["r1", "r2", "m1", "r3"]
            assert channel.statistics().received == 1  # receipts are not messages received


async def test_a_receipt_in_the_store_when_the_channel_is_killed_is_published_once() -> None:
    with trio.fail_after(CEILING):
        async with gated_channel() as (provider, store, gate, channel):
            events = channel.subscribe(accepts=not_states)
            conn = await provider.wait_connected(1)
            conn.push(receipt("r1"))
            await trio.testing.wait_all_tasks_blocked()
            assert channel.memory.in_store is not None and len(channel.memory.in_store) == 1
            channel.ref.kill()
            await provider.wait_connected(2)  # the next incarnation runs
            assert channel.memory.pending == []  # nothing for it to hand over again
            gate.open()
            assert ids([await events.receive()]) == ["r1"]
            provider.current.push(message("m1"))
            assert ids([await events.receive()]) == ["m1"]  # not r1 a second time
            assert ids(await store.recent_inbound("ch")) == ["r1", "m1"]


async def test_a_stop_does_not_wait_for_the_store_and_stopped_comes_after_the_receipts() -> None:
    with trio.fail_after(CEILING):
        async with gated_channel() as (provider, _store, gate, channel):
            events = channel.subscribe()
            conn = await provider.wait_connected(1)
            conn.push(receipt("r1"))
            await trio.testing.wait_all_tasks_blocked()
            await channel.ref.stop()  # the store still holds r1 at its gate
            assert channel.statistics().status is ChannelStatus.STOPPED
            gate.open()
            seen = []
            while (
                not seen
                or not isinstance(seen[-1], ChannelStateChanged)
                or (seen[-1].status is not ChannelStatus.STOPPED)
            ):
                seen.append(await events.receive())
            assert "r1" in ids(seen)  # published before STOPPED, which rode behind it


async def test_a_crash_during_a_store_outage_does_not_hold_the_restart(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(CEILING):
        async with gated_channel() as (provider, _store, gate, channel):
            conn = await provider.wait_connected(1)
            conn.push(receipt("r1"))
            await trio.testing.wait_all_tasks_blocked()
            assert len(channel.memory.in_store or ()) == 1
            conn.fail(RuntimeError("a defect"))  # the incarnation crashes
            with trio.fail_after(5):  # virtual: the restart's own backoff, not the store
                await provider.wait_connected(2)
            events = channel.subscribe(accepts=not_states)
            gate.open()
            assert ids([await events.receive()]) == ["r1"]  # published once the store is back
            assert channel.memory.in_store == []


async def test_a_channel_given_up_for_good_says_failed_behind_the_receipts_in_the_store(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # As the node isolates a channel: past its own intensity the supervisor
    # gives it up and ChannelActor.crashed_for_good marks it FAILED. That
    # state change rides behind the receipt the store still holds, as the
    # actor's own state changes do, so no subscriber sees FAILED first.
    provider = FakeProvider(limits=LIMITS)
    settings = ChannelSettings()
    memory = ChannelMemory(provider.limits, settings)
    config = ChannelConfig(channel_id="ch", provider="fake", credentials={"token": "s3cret"})
    with trio.fail_after(CEILING):
        async with gated_store() as (store, gate):
            factory, memory = ChannelActor.factory(
                config, provider, settings=settings, sink=store, memory=memory
            )
            spec = ChildSpec(
                id="ch",
                start=factory,
                intensity=0,  # the first crash is one too many
                on_give_up=functools.partial(ChannelActor.crashed_for_good, memory, "ch"),
            )
            async with open_actor_system() as system:
                async with open_supervisor(system, [spec], intensity=10, period=60.0) as sup:
                    ref = await sup.whereis_child("ch")
                    assert ref is not None
                    channel = ChannelRef(ref, memory, "ch", provider.name)
                    events = channel.subscribe()
                    conn = await provider.wait_connected(1)
                    conn.push(receipt("r1"))
                    await trio.testing.wait_all_tasks_blocked()
                    assert len(memory.in_store or ()) == 1
                    conn.fail(RuntimeError("a defect"))  # crashes: given up for good
                    await trio.testing.wait_all_tasks_blocked()
                    assert memory.status is ChannelStatus.FAILED
                    gate.open()
                    seen: list[Any] = []
                    while not any(
                        isinstance(e, ChannelStateChanged) and e.status is ChannelStatus.FAILED
                        for e in seen
                    ):
                        seen.append(await events.receive())
                    assert "r1" in ids(seen), ids(seen)  # the receipt first, then FAILED
                    assert memory.in_store == []


async def test_receipts_a_closing_store_gives_back_wait_ahead_of_later_events(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = FakeProvider(limits=LIMITS)
    with trio.fail_after(CEILING):
        async with open_channel(provider, None) as channel:
            events = channel.subscribe()
            with pytest.raises(StoreError, match="2 inbound events unwritten"):
                async with gated_store() as (store, _gate):
                    channel.ref._instance.sink = store  # this incarnation's: the gated store
                    conn = await provider.wait_connected(1)
                    conn.push(receipt("r1"), state_change(), message("m1"))
                    await trio.testing.wait_all_tasks_blocked()
                    assert len(channel.memory.in_store or ()) == 2  # r1 and the state behind it
                    assert ids([event for event, _ in channel.memory.pending]) == ["m1"]
            await trio.testing.wait_all_tasks_blocked()
            # Closed with both unwritten: back to the channel, tried (perhaps
            # kept), r1 ahead of m1; the state, never kept, is published.
            assert [(ids([e])[0], tried) for e, tried in channel.memory.pending] == [
                ("r1", True),
                ("m1", True),
            ]
            assert len(channel.memory.in_store or ()) == 0
            states = []
            while True:
                try:
                    states.append(events.receive_nowait())
                except trio.WouldBlock:
                    break
            assert "ConnectionStateChanged" in ids(states)
