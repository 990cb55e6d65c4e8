"""The store's behaviour, the same for both backends, and its codec.

Every behaviour test runs against the memory store and against a real
PostgreSQL (``SWITCHBOARD_TEST_PG``), each PostgreSQL test in a schema of its
own (``sb_test_<hex>``) dropped afterwards. PostgreSQL means real time, so
those tests have hard real-time ceilings and poll with bounded loops; the
memory-only tests that wait use the autojump clock and assert exact times.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Final

import asyncpg
import attrs
import pytest
import trio
import trio_asyncio
from hypothesis import given
from hypothesis import strategies as st

from providers.base import (
    ConnectionState,
    ConnectionStateChanged,
    DeliveryReceipt,
    Event,
    InboundMessage,
    Media,
    MediaKind,
    MessageEdited,
    OutboundMessage,
    ReceiptStatus,
    Template,
)
from runtime.config.model import StorageConfig
from runtime.errors import StoreError
from runtime.store import (
    KeptMessage,
    MemoryStore,
    Store,
    decode_event,
    decode_outbound,
    encode_event,
    encode_kept,
    encode_outbound,
    open_store,
)
from runtime.store.codec import dedupe_key
from runtime.store.postgres import PostgresStore

PG_DSN: Final = os.environ.get("SWITCHBOARD_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
PG_CEILING: Final = 30.0  # real seconds; only a hang gets near it
CEILING: Final = 60.0  # virtual seconds
QUIET: Final = 3600.0  # a flush interval no test reaches: only explicit flushes write


# --- helpers shared with test_store_postgres ------------------------------------------


@attrs.frozen
class PgSession:
    """The test's own PostgreSQL connection, trio-flavoured."""

    conn: Any
    loop: Any

    async def execute(self, sql: str, *args: Any) -> Any:
        return await trio_asyncio.aio_as_trio(self.conn.execute, loop=self.loop)(sql, *args)

    async def fetch(self, sql: str, *args: Any) -> Any:
        return await trio_asyncio.aio_as_trio(self.conn.fetch, loop=self.loop)(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await trio_asyncio.aio_as_trio(self.conn.fetchval, loop=self.loop)(sql, *args)


@contextlib.asynccontextmanager
async def pg_session() -> AsyncIterator[PgSession]:
    """A connection for checks and fault injection, on the current loop or a new one."""
    async with contextlib.AsyncExitStack() as stack:
        loop = trio_asyncio.current_loop.get()
        if loop is None or loop.is_closed():
            loop = await stack.enter_async_context(trio_asyncio.open_loop())
        conn = await trio_asyncio.aio_as_trio(asyncpg.connect, loop=loop)(PG_DSN)
        try:
            yield PgSession(conn, loop)
        finally:
            with trio.CancelScope(shield=True):
                await trio_asyncio.aio_as_trio(conn.close, loop=loop)()


@attrs.frozen
class Backend:
    """One backend under test: its name and a config to open it with."""

    name: str
    base: StorageConfig

    def config(self, **changes: Any) -> StorageConfig:
        return attrs.evolve(self.base, **changes)


def new_schema() -> str:
    return f"sb_test_{secrets.token_hex(6)}"


@contextlib.asynccontextmanager
async def dropped_afterwards(schema: str) -> AsyncIterator[None]:
    try:
        yield
    finally:
        with trio.fail_after(PG_CEILING):
            async with pg_session() as pg:
                await pg.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def wait_until(condition: Callable[[], bool], *, poll: float = 0.01) -> None:
    """Poll ``condition`` until true; the caller's ``fail_after`` bounds it."""
    while not condition():  # noqa: ASYNC110 - the counters change in the store's own task
        await trio.sleep(poll)


def message(n: int, channel: str = "tg:1", **fields: Any) -> InboundMessage:
    return InboundMessage(
        channel_id=channel,
        platform_message_id=str(n),
        peer="chat-1",
        sender="user-1",
        text=f"hello {n}",
        timestamp=1_700_000_000.0 + n,
        **fields,
    )


def receipt(n: int, status: ReceiptStatus, channel: str = "tg:1", **fields: Any) -> DeliveryReceipt:
    fields.setdefault("timestamp", 1_700_000_100.0 + n)
    return DeliveryReceipt(
        channel_id=channel, platform_message_id=str(n), peer="chat-1", status=status, **fields
    )


def edited(n: int, at: float, channel: str = "tg:1") -> MessageEdited:
    return MessageEdited(
        channel_id=channel,
        platform_message_id=str(n),
        peer="chat-1",
        sender="user-1",
        text=f"edited at {at}",
        timestamp=at,
    )


def kept(n: int, **message_fields: Any) -> KeptMessage:
    fields = message_fields or {"text": f"queued {n}"}
    return KeptMessage(
        channel_id="wa:1",
        message=OutboundMessage(peer="+15550100", idempotency_key=f"key-{n}", **fields),
        reason="not sent by the drain deadline (10.0 s)",
        accepted_at=1_700_000_000.5 + n,  # exact in microseconds, as PostgreSQL keeps it
    )


# --- both backends -------------------------------------------------------------------


async def test_saved_events_come_back_in_order_after_a_flush(backend: Backend) -> None:
    events: list[Event] = [
        message(1),
        message(2, channel="tg:2"),
        edited(1, at=1_700_000_050.25),
        receipt(9, ReceiptStatus.SENT),
    ]
    with trio.fail_after(PG_CEILING):
        async with open_store(backend.config(flush_interval=QUIET)) as store:
            assert isinstance(store, Store)
            await store.save_inbound(events)
            assert store.statistics().inbound_pending == 4
            await store.flush()
            stats = store.statistics()
            assert (stats.inbound_written, stats.inbound_pending, stats.batches) == (4, 0, 1)
            assert await store.recent_inbound() == events
            assert await store.recent_inbound("tg:2") == [events[1]]
            assert await store.recent_inbound(limit=2) == events[2:]
            assert await store.recent_inbound("tg:1", limit=0) == []
            with pytest.raises(ValueError, match="negative"):
                await store.recent_inbound(limit=-1)


async def test_the_same_message_twice_is_stored_once(backend: Backend) -> None:
    with trio.fail_after(PG_CEILING):
        async with open_store(backend.config(flush_interval=QUIET)) as store:
            await store.save_inbound([message(1), message(1)])  # within one batch
            await store.flush()
            await store.save_inbound([message(1), message(2)])  # across batches
            await store.flush()
            stats = store.statistics()
            assert (stats.inbound_written, stats.inbound_duplicates) == (2, 2)
            assert await store.recent_inbound() == [message(1), message(2)]


async def test_receipts_with_two_statuses_are_both_kept(backend: Backend) -> None:
    sent, delivered = receipt(7, ReceiptStatus.SENT), receipt(7, ReceiptStatus.DELIVERED)
    with trio.fail_after(PG_CEILING):
        async with open_store(backend.config(flush_interval=QUIET)) as store:
            await store.save_inbound([sent, delivered])
            await store.save_inbound([delivered])
            await store.flush()
            assert await store.recent_inbound() == [sent, delivered]
            assert store.statistics().inbound_duplicates == 1


async def test_edits_of_one_message_at_different_times_are_distinct(backend: Backend) -> None:
    first, second = edited(3, at=1_700_000_010.5), edited(3, at=1_700_000_020.5)
    with trio.fail_after(PG_CEILING):
        async with open_store(backend.config(flush_interval=QUIET)) as store:
            await store.save_inbound([message(3), first, second, second])
            await store.flush()
            assert await store.recent_inbound() == [message(3), first, second]


async def test_connection_state_changes_are_not_stored(backend: Backend) -> None:
    state = ConnectionStateChanged(channel_id="tg:1", state=ConnectionState.CONNECTED)
    with trio.fail_after(PG_CEILING):
        async with open_store(backend.config(flush_interval=QUIET)) as store:
            await store.save_inbound([state, message(1), state])
            assert store.statistics().inbound_pending == 1
            await store.save_inbound([state])
            await store.flush()
            assert await store.recent_inbound() == [message(1)]
            assert store.statistics().inbound_written == 1


async def test_leaving_the_block_writes_what_is_buffered(backend: Backend) -> None:
    events = [message(n) for n in range(10)]
    config = backend.config(flush_interval=QUIET, batch_size=4)
    with trio.fail_after(PG_CEILING):
        async with open_store(config) as store:
            await store.save_inbound(events)
            assert store.statistics().inbound_pending == 10
        stats = store.statistics()
        assert (stats.inbound_written, stats.inbound_pending, stats.batches) == (10, 0, 3)
        with pytest.raises(StoreError, match="closed"):
            await store.save_inbound([message(99)])
        if store.durable:
            async with open_store(config) as reopened:
                assert await reopened.recent_inbound() == events


async def test_cancelling_the_block_still_writes_what_is_buffered(backend: Backend) -> None:
    events = [message(n) for n in range(7)]
    config = backend.config(flush_interval=QUIET)
    with trio.fail_after(PG_CEILING):
        with trio.CancelScope() as scope:
            async with open_store(config) as store:
                await store.save_inbound(events)
                scope.cancel()
                await trio.sleep_forever()
        assert scope.cancelled_caught
        assert store.statistics().inbound_written == 7
        if store.durable:
            async with open_store(config) as reopened:
                assert await reopened.recent_inbound() == events


async def test_a_full_batch_is_written_without_waiting_for_the_interval(
    backend: Backend,
) -> None:
    with trio.fail_after(PG_CEILING):
        async with open_store(backend.config(batch_size=5, flush_interval=QUIET)) as store:
            await store.save_inbound([message(n) for n in range(5)])
            await wait_until(lambda: store.statistics().inbound_written == 5)
            assert store.statistics().batches == 1


async def test_a_partial_batch_is_written_after_the_interval(backend: Backend) -> None:
    with trio.fail_after(PG_CEILING):
        async with open_store(backend.config(batch_size=500, flush_interval=0.05)) as store:
            await store.save_inbound([message(1), message(2)])
            await wait_until(lambda: store.statistics().inbound_written == 2)
            assert await store.recent_inbound() == [message(1), message(2)]


async def test_flush_writes_in_batches_of_batch_size(backend: Backend) -> None:
    with trio.fail_after(PG_CEILING):
        async with open_store(backend.config(batch_size=4, flush_interval=QUIET)) as store:
            await store.save_inbound([message(n) for n in range(10)])
            await store.flush()
            stats = store.statistics()
            assert (stats.inbound_written, stats.batches) == (10, 3)
            assert [e.platform_message_id for e in await store.recent_inbound()] == [
                str(n) for n in range(10)
            ]


async def test_kept_messages_stay_kept_until_forgotten(backend: Backend) -> None:
    """Reading forgets nothing: a process killed while it resends loses none (issue 11)."""
    items = [
        kept(1),
        kept(2, media=Media(kind=MediaKind.DOCUMENT, url="https://x/y.pdf", filename="y.pdf")),
        kept(
            3,
            template=Template(
                name="order_update",
                language="en_US",
                components=({"type": "body", "parameters": [{"type": "text", "text": "42"}]},),
            ),
            metadata={"priority": 2, "tags": ["a", "b"]},
        ),
    ]
    with trio.fail_after(PG_CEILING):
        async with open_store(backend.config()) as store:
            await store.keep_outbound(items[:2])
            await store.keep_outbound(items[2:])
            await store.keep_outbound([])
            assert store.statistics().kept == 3
            read = await store.read_outbound()
            assert read == items
            assert await store.read_outbound() == items  # still kept
            ids = [item.kept_id for item in read if item.kept_id is not None]
            assert all(isinstance(kept_id, int) for kept_id in ids) and len(set(ids)) == 3
            assert await store.forget_outbound([ids[0], ids[2], ids[0]]) == 2
            assert await store.read_outbound() == [items[1]]
            assert await store.forget_outbound([ids[0]]) == 0  # forgotten already
            assert await store.forget_outbound([]) == 0
        async with open_store(backend.config()) as again:
            expected = [items[1]] if again.durable else []
            assert await again.read_outbound() == expected


async def test_an_exception_leaves_the_block_unwrapped(backend: Backend) -> None:
    with trio.fail_after(PG_CEILING):
        with pytest.raises(KeyError, match="boom"):
            async with open_store(backend.config()) as store:
                await store.save_inbound([message(1)])
                raise KeyError("boom")
    assert store.statistics().inbound_written == 1  # written on the way out all the same


async def test_statistics_say_what_survives(backend: Backend, tmp_path: Path) -> None:
    with trio.fail_after(PG_CEILING):
        async with open_store(backend.config()) as store:
            stats = store.statistics()
            assert (stats.backend, stats.durable) == (backend.name, backend.name != "memory")
            assert store.backend == backend.name
            assert "[OPEN pending=0 written=0 errors=0" in repr(store)


# --- the memory backend ---------------------------------------------------------------


async def test_an_old_outbox_file_is_imported_once_into_the_store(
    backend: Backend, tmp_path: Path
) -> None:
    """storage.outbox_file is deprecated: what an earlier release kept there is not lost."""
    path = tmp_path / "state" / "outbox.jsonl"
    path.parent.mkdir()
    lines = [json.dumps(encode_kept(kept(1))), json.dumps(encode_kept(kept(2, text="second")))]
    path.write_text("\n".join(lines) + "\n")
    config = backend.config(outbox_file=str(path))
    with trio.fail_after(PG_CEILING):
        async with open_store(config) as store:
            assert not path.exists()
            read = await store.read_outbound()
            assert read == [kept(1), kept(2, text="second")]
            await store.forget_outbound([item.kept_id for item in read if item.kept_id])
        async with open_store(config) as again:
            assert await again.read_outbound() == []  # imported once


async def test_an_outbox_line_the_store_refuses_stays_in_the_file_alone(
    backend: Backend, tmp_path: Path
) -> None:
    # A line the store refused (a NaN in its metadata) was logged and the file
    # deleted all the same: gone. It stays in the file now, and only it.
    path = tmp_path / "outbox.jsonl"
    nan = json.dumps(encode_kept(kept(2, text="t", metadata={"score": float("nan")})))
    path.write_text(f"{json.dumps(encode_kept(kept(1)))}\n{nan}\n")
    with trio.fail_after(PG_CEILING):
        async with open_store(backend.config(outbox_file=str(path))) as store:
            assert await store.read_outbound() == [kept(1)]
    assert path.read_text() == f"{nan}\n"


@pytest.mark.parametrize(
    ("bad_line", "complaint"),
    [
        ("{not json", "Expecting property name"),
        ('{"channel_id": "wa:1", "reason": "r", "accepted_at": 1.0}', "message"),
        (
            '{"channel_id": "wa:1", "message": {"peer": "p", "idempotency_key": "k"}, '
            '"reason": "r", "accepted_at": 1.0}',
            "exactly one of text, media or template",
        ),
    ],
)
async def test_a_corrupt_outbox_line_is_an_error_naming_file_and_line(
    tmp_path: Path, bad_line: str, complaint: str
) -> None:
    path = tmp_path / "outbox.jsonl"
    good = json.dumps(encode_kept(kept(1)))
    path.write_text(f"{good}\n\n{bad_line}\n{good}\n")
    with pytest.raises(StoreError) as caught:
        async with open_store(StorageConfig(backend="memory", outbox_file=str(path))):
            raise AssertionError("a store whose outbox file cannot be read must not open")
    assert f"{path}:3:" in str(caught.value)
    assert complaint in str(caught.value)
    assert caught.value.__cause__ is not None
    assert path.exists(), "a file that could not be read must be left for a person"


async def test_memory_keeps_unsent_messages_in_memory_without_a_file() -> None:
    async with open_store(StorageConfig(backend="memory")) as store:
        assert not store.durable
        await store.keep_outbound([kept(1), kept(2)])
        read = await store.read_outbound()
        assert read == [kept(1), kept(2)]
        await store.forget_outbound([item.kept_id for item in read if item.kept_id])
        assert await store.read_outbound() == []


async def test_memory_keeps_a_bounded_window_of_recent_events() -> None:
    store = MemoryStore(batch_size=10, flush_interval=QUIET, capacity=3)
    with pytest.raises(StoreError, match="not open yet"):
        await store.save_inbound([message(0)])
    async with store.serving():
        await store.save_inbound([message(n) for n in range(5)])
        await store.flush()
        assert await store.recent_inbound() == [message(2), message(3), message(4)]
        stats = store.statistics()
        assert (stats.inbound_written, stats.inbound_evicted) == (5, 2)


async def test_memory_gives_back_every_kind_of_event_as_written() -> None:
    photo = Media(kind=MediaKind.IMAGE, url="https://example.test/p.jpg", caption="a cat")
    events: list[Event] = [
        message(1),  # text only: kept as a tuple of its fields
        message(2, reply_to="1"),
        InboundMessage(channel_id="tg:1", platform_message_id="3", peer="c", sender="s"),
        message(4, media=photo),  # kept as the event itself
        message(5, metadata={"thread": {"id": 7}}),
        edited(1, at=1_700_000_050.25),
        receipt(1, ReceiptStatus.READ),
        receipt(1, ReceiptStatus.FAILED, channel="tg:2", timestamp=None, error="blocked"),
    ]
    async with open_store(StorageConfig(backend="memory", flush_interval=QUIET)) as store:
        await store.save_inbound(events)
        await store.flush()
        again = await store.recent_inbound()
        assert again == events
        assert [type(e) for e in again] == [type(e) for e in events]
        assert await store.recent_inbound("tg:2") == [events[-1]]


async def test_memory_s_window_of_receipts_and_texts_gives_the_collector_nothing_to_walk() -> None:
    async with open_store(StorageConfig(backend="memory", flush_interval=QUIET)) as store:
        gc.collect()
        before = len(gc.get_objects())
        for n in range(0, 4_000, 100):
            batch: list[Event] = [receipt(i, ReceiptStatus.DELIVERED) for i in range(n, n + 50)]
            batch += [message(i) for i in range(n + 50, n + 100)]
            await store.save_inbound(batch)
            await store.flush()
        del batch
        gc.collect()
        grown = len(gc.get_objects()) - before
        assert store.statistics().inbound_written == 4_000
        assert grown < 400, f"{grown} objects more for the collector after 4,000 events"


async def test_memory_reads_a_channel_s_events_and_no_other_s() -> None:
    # Read by how their keys begin: a channel whose id begins another's is its own.
    odd = "tg:\ud800é"  # a lone surrogate and a letter past ASCII, written as they are
    events: list[Event] = [
        message(1, channel="tg:1"),
        message(1, channel="tg:10"),
        receipt(1, ReceiptStatus.SENT, channel="tg:1", error="\x00\ud800"),
        message(2, channel=odd),
        receipt(2, ReceiptStatus.READ, channel="tg:10", timestamp=float("nan")),
    ]
    async with open_store(StorageConfig(backend="memory", flush_interval=QUIET)) as store:
        await store.save_inbound([*events, message(1, channel="tg:10")])  # a duplicate
        await store.flush()
        assert store.statistics().inbound_written == 5
        assert await store.recent_inbound("tg:1") == [events[0], events[2]]
        tg10 = await store.recent_inbound("tg:10")
        assert tg10[0] == events[1] and math.isnan(tg10[1].timestamp or 0.0)
        assert await store.recent_inbound(odd) == [events[3]]
        assert await store.recent_inbound("tg:") == []


class _Id(str):
    """A program's own string type (marshal takes no subclass of str)."""


async def test_memory_takes_fields_of_a_subclass_of_str() -> None:
    event = InboundMessage(
        channel_id=_Id("tg:9"), platform_message_id=_Id("42"), peer="chat-1", sender="s", text="hi"
    )
    async with open_store(StorageConfig(backend="memory", flush_interval=QUIET)) as store:
        assert await store.store_inbound([event, message(42, channel="tg:9")]) == [True, False]
        assert await store.recent_inbound(_Id("tg:9")) == [event]


async def test_memory_s_window_makes_nothing_that_sets_off_a_young_collection() -> None:
    # CPython starts a young collection once the containers made and not yet freed
    # reach its threshold; kept as tuples, the window made three per event, so a
    # node that sent set off collections until its window was full.
    batches: list[list[Event]] = [
        [receipt(i, ReceiptStatus.DELIVERED) for i in range(n, n + 50)]
        + [message(i) for i in range(n + 50, n + 100)]
        for n in range(0, 4_000, 100)
    ]
    async with open_store(StorageConfig(backend="memory", flush_interval=QUIET)) as store:
        await store.save_inbound([message(-1)])  # the flusher's first round, made once
        await store.flush()
        gc.collect()
        gc.disable()
        try:
            before = gc.get_count()[0]
            for batch in batches:
                await store.save_inbound(batch)
                await store.flush()
            made = gc.get_count()[0] - before
        finally:
            gc.enable()
        assert store.statistics().inbound_written == 4_001
        assert made < 200, f"{made} containers kept for 4,000 events"
        assert len(await store.recent_inbound("tg:1", limit=5_000)) == 4_001


async def test_memory_partial_batch_waits_exactly_the_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(CEILING):
        async with open_store(StorageConfig(batch_size=100, flush_interval=0.5)) as store:
            start = trio.current_time()
            await store.save_inbound([message(1)])
            await wait_until(lambda: store.statistics().inbound_written == 1, poll=0.001)
            assert trio.current_time() - start == pytest.approx(0.5, abs=0.001)


async def test_memory_backpressure_waits_for_the_flusher(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(CEILING):
        async with open_store(StorageConfig(batch_size=2, flush_interval=QUIET)) as store:
            await store.save_inbound([message(n) for n in range(25)])  # over 10 batches
            assert store.statistics().inbound_pending == 25
            start = trio.current_time()
            await store.save_inbound([message(25)])  # waits until the flusher made room
            assert trio.current_time() == start  # no time passed: the flusher was woken
            assert store.statistics().inbound_pending < 20
        assert store.statistics().inbound_written == 26


# --- the codec ------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=10,
)
json_objects = st.dictionaries(st.text(), json_values, max_size=4)
optional_text = st.none() | st.text()
media = st.builds(
    Media,
    kind=st.sampled_from(MediaKind),
    url=st.text(min_size=1),
    caption=optional_text,
    filename=optional_text,
)
templates = st.builds(
    Template,
    name=st.text(min_size=1),
    language=st.sampled_from(["en_US", "pt_BR", "de"]),
    components=st.lists(json_objects, max_size=3).map(tuple),
)
timestamps = st.none() | st.floats(min_value=0, max_value=4e9, allow_nan=False)


@st.composite
def outbound_messages(draw: st.DrawFn) -> OutboundMessage:
    content = draw(st.sampled_from(["text", "media", "template"]))
    return OutboundMessage(
        peer=draw(st.text(min_size=1)),
        idempotency_key=draw(st.text(min_size=1)),
        text=draw(st.text()) if content == "text" else None,
        media=draw(media) if content == "media" else None,
        template=draw(templates) if content == "template" else None,
        reply_to=draw(optional_text),
        metadata=draw(json_objects),
    )


inbound_messages = st.builds(
    InboundMessage,
    channel_id=st.text(min_size=1),
    platform_message_id=st.text(min_size=1),
    peer=st.text(),
    sender=st.text(),
    text=optional_text,
    media=st.none() | media,
    reply_to=optional_text,
    timestamp=timestamps,
    metadata=json_objects,
)


def through_json(data: dict[str, Any]) -> Any:
    return json.loads(json.dumps(data))


@given(outbound_messages())
def test_codec_round_trips_outbound_messages(msg: OutboundMessage) -> None:
    assert decode_outbound(through_json(encode_outbound(msg))) == msg


@given(inbound_messages)
def test_codec_round_trips_inbound_messages(event: InboundMessage) -> None:
    encoded = encode_event(event)
    assert encoded["kind"] == "message"
    assert decode_event(through_json(encoded)) == event


@pytest.mark.parametrize(
    "event",
    [
        edited(1, at=1.5),
        MessageEdited(channel_id="c", platform_message_id="1", peer="p", sender="s"),
        receipt(1, ReceiptStatus.FAILED),
        DeliveryReceipt(
            channel_id="c",
            platform_message_id="1",
            peer="p",
            status=ReceiptStatus.READ,
            error="blocked",
        ),
        ConnectionStateChanged(channel_id="c", state=ConnectionState.RESUMED, detail="seq 4"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_codec_round_trips_every_event_type(event: Event) -> None:
    assert decode_event(through_json(encode_event(event))) == event


def test_codec_errors_say_what_and_where() -> None:
    with pytest.raises(ValueError, match="kind 'nope' is not one of"):
        decode_event({"kind": "nope"})
    bad_status = {**encode_event(receipt(1, ReceiptStatus.SENT)), "status": "lost"}
    with pytest.raises(ValueError, match=r"receipt event.*\$\.status"):
        decode_event(bad_status)
    with pytest.raises(ValueError, match="outbound message"):
        decode_outbound({"peer": "p"})


def test_dedupe_keys_separate_what_must_stay_distinct() -> None:
    assert dedupe_key(message(1)) == ("tg:1", "message", "1", "")
    assert dedupe_key(receipt(1, ReceiptStatus.SENT)) != dedupe_key(receipt(1, ReceiptStatus.READ))
    assert dedupe_key(edited(1, at=2.0)) == ("tg:1", "edited", "1", "2.0")
    assert dedupe_key(edited(1, at=2.0)) != dedupe_key(message(1))


TOO_DEEP: Final = "[" * 5_000 + "]" * 5_000  # json's reader raises RecursionError on it
CORRUPT_PAYLOADS: Final = ['{"peer": "p"}', '{"peer": "p", "metadata": ' + TOO_DEEP + "}"]


@pytest.mark.parametrize("payload", CORRUPT_PAYLOADS, ids=["not-a-message", "too-deep"])
async def test_sqlite_reports_and_skips_a_corrupt_kept_row(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, payload: str
) -> None:
    """One bad row must not hold back every kept message (issue 11)."""
    import sqlite3

    path = tmp_path / "store.sqlite3"
    config = StorageConfig(backend="sqlite", path=str(path))
    async with open_store(config) as store:
        await store.keep_outbound([kept(1)])
        with sqlite3.connect(path) as conn:
            bad_id = conn.execute(
                "INSERT INTO kept_outbound (channel_id, payload, reason, accepted_at) "
                "VALUES ('wa:1', ?, 'r', 1.0) RETURNING id",
                (payload,),
            ).fetchone()[0]
        await store.keep_outbound([kept(2)])
        assert await store.read_outbound() == [kept(1), kept(2)]
        assert store.statistics().errors == 1
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM kept_outbound").fetchone() == (3,)
    assert any(f"row id={bad_id} of kept_outbound" in r.getMessage() for r in caplog.records)


async def test_a_stored_event_nested_too_deep_is_an_error_naming_its_row(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "store.sqlite3"
    async with open_store(StorageConfig(backend="sqlite", path=str(path))) as store:
        await store.store_inbound([message(1), message(2)])
        with sqlite3.connect(path) as conn:
            (seq,) = conn.execute("SELECT min(seq) FROM inbound_events").fetchone()
            conn.execute("UPDATE inbound_events SET payload = ? WHERE seq = ?", (TOO_DEEP, seq))
        with pytest.raises(StoreError, match=f"row seq={seq} of inbound_events") as caught:
            await store.recent_inbound()
        assert "nested too deep to read" in str(caught.value)
        assert store.statistics().errors == 1


async def test_one_message_json_cannot_carry_does_not_spoil_a_kept_batch(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """A NaN in one kept message used to make keep_outbound fail for all (issue 11)."""
    bad = [
        kept(2, text="nan", metadata={"score": float("nan")}),
        kept(3, text="object", metadata={"when": object()}),
    ]
    items = [kept(1), *bad, kept(4)]
    with trio.fail_after(PG_CEILING):
        async with open_store(backend.config()) as store:
            refused = await store.keep_outbound(items)
            assert refused == bad
            assert await store.read_outbound() == [kept(1), kept(4)]
            stats = store.statistics()
            assert (stats.kept, stats.errors) == (2, 2)
            assert await store.keep_outbound(bad) == bad  # nothing to write, nothing raised
    logged = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any("'key-2'" in line and "wa:1" in line for line in logged)
    assert any("'key-3'" in line for line in logged)


async def test_a_session_lost_inside_a_transaction_reports_its_own_error() -> None:
    # The pool takes a lost session back at once; its handle then refuses
    # every call, terminate() included. That refusal must not replace the
    # error of the statement that found the session gone.
    schema = new_schema()
    config = StorageConfig(backend="postgres", dsn=PG_DSN, schema=schema)
    with trio.fail_after(PG_CEILING):
        async with dropped_afterwards(schema), open_store(config) as store:
            assert isinstance(store, PostgresStore)
            async with pg_session() as pg:
                with pytest.raises(asyncpg.InterfaceError) as raised:
                    async with store._connection() as conn, store._transaction(conn):
                        pid = await store._aio(conn.fetchval)("SELECT pg_backend_pid()")
                        await pg.execute("SELECT pg_terminate_backend($1)", pid)
                        while not conn.is_closed():  # noqa: ASYNC110 - the server ends it
                            await trio.sleep(0.01)
                        await store._aio(conn.execute)("SELECT 1")
            assert "terminate()" not in str(raised.value), raised.value
            assert await store.load_checkpoint("nobody") is None  # a new session serves on
