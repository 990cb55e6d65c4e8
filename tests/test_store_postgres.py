"""What only the PostgreSQL store does: connecting, failing, cancelling, the loop.

Real PostgreSQL (``SWITCHBOARD_TEST_PG``), one schema per test dropped at
the end, real time under hard ``trio.fail_after`` ceilings. Faults are made
for real: a port nobody listens on, a table renamed under the store, a lock
held by another session, a row written by hand.
"""

from __future__ import annotations

import socket
import traceback
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import attrs
import pytest
import trio
import trio_asyncio

import runtime.store.base
from runtime.config.model import StorageConfig
from runtime.errors import StoreError
from runtime.store import open_store
from runtime.store.postgres import CLOSE_TIMEOUT, describe_dsn
from tests.test_store import (
    PG_CEILING,
    PG_DSN,
    QUIET,
    dropped_afterwards,
    kept,
    message,
    new_schema,
    pg_session,
    wait_until,
)

PASSWORD = "s3cr3t-Pa55"


@attrs.frozen
class Pg:
    schema: str
    config: StorageConfig

    @property
    def application_name(self) -> str:
        return f"switchboard:{self.schema}"

    def table(self, name: str) -> str:
        return f'"{self.schema}".{name}'


@pytest.fixture
async def pg() -> AsyncIterator[Pg]:
    schema = new_schema()
    async with dropped_afterwards(schema):
        yield Pg(
            schema,
            StorageConfig(backend="postgres", dsn=PG_DSN, schema=schema, flush_interval=QUIET),
        )


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def full_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


async def store_sessions(session: Any, pg: Pg) -> list[Any]:
    return list(
        await session.fetch(
            "SELECT state, wait_event_type FROM pg_stat_activity WHERE application_name = $1",
            pg.application_name,
        )
    )


async def test_a_dsn_that_does_not_connect_is_a_store_error_without_the_password() -> None:
    port = closed_port()
    dsn = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{port}/test"
    with trio.fail_after(PG_CEILING):
        with pytest.raises(StoreError) as caught:
            async with open_store(StorageConfig(backend="postgres", dsn=dsn)):
                pytest.fail("the store opened without a server")
    assert f"could not connect to PostgreSQL at 127.0.0.1:{port}/test" in str(caught.value)
    assert isinstance(caught.value.__cause__, OSError)
    assert PASSWORD not in full_text(caught.value)


@pytest.mark.parametrize(
    ("written", "port_unread"),
    [
        ("x?Tr0ub4dorAndThreeMoreWords", True),  # the rest a query, which the parser quoted
        ("ab#Tr0ub4dorAndThreeMoreWords", True),  # the rest a fragment
        ("p@ss@Tr0ub4dorAndThreeMoreWords", False),  # the rest a host name
        ("a/Tr0ub4dorAndThreeMoreWords", True),  # the rest a path: a database name
    ],
)
async def test_a_password_written_without_its_escapes_leaves_no_piece_in_the_error(
    written: str, port_unread: bool
) -> None:
    # A password with ? # / @ unescaped is not the password a URL parser sees:
    # its rest went to the log in the parser's words ("bad query field: ...").
    # Where the parser takes the password's start for a port ("x", "ab", "a"),
    # the config refuses the URL as it is read; else the store's error names
    # no piece of it.
    dsn = f"postgresql://postgres:{written}@127.0.0.1:{closed_port()}/test"
    if port_unread:
        with pytest.raises(ValueError, match=r"^dsn: expected a postgresql:// URL \(with a port"):
            StorageConfig(backend="postgres", dsn=dsn)
        return
    with trio.fail_after(PG_CEILING), pytest.raises(StoreError) as caught:
        async with open_store(StorageConfig(backend="postgres", dsn=dsn)):
            pytest.fail("the store opened without a server")
    assert "Tr0ub4dor" not in full_text(caught.value), full_text(caught.value)
    assert "could not connect to PostgreSQL" in str(caught.value)


async def test_a_password_with_a_bare_slash_after_digits_is_not_in_the_store_error() -> None:
    # "1234/Tr0ub4dor..." written bare: the URL parser reads the user name as the
    # host, "1234" as the port and the rest as the database, so where the DSN
    # points ("host:port/db", in every message of the store) held the password.
    written = f"{closed_port()}/Tr0ub4dorAndThreeMoreWords"
    dsn = f"postgresql://localhost:{written}@127.0.0.1:5432/test"
    with trio.fail_after(PG_CEILING), pytest.raises(StoreError) as caught:
        async with open_store(StorageConfig(backend="postgres", dsn=dsn)):
            pytest.fail("connected")
    assert "Tr0ub4dor" not in full_text(caught.value), str(caught.value)


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://postgres:1234/Tr0ub4dor@db.example/app",
        "postgresql://postgres:5432#Tr0ub4dor@db.example/app",  # "5432": a piece, as a port
    ],
)
def test_where_a_dsn_points_holds_no_piece_of_its_password(dsn: str) -> None:
    where, secrets = describe_dsn(dsn)
    assert not any(secret in where for secret in secrets), (where, secrets)
    assert "Tr0ub4dor" not in where


async def test_a_missing_database_names_the_database_not_the_password() -> None:
    # The test server's DSN with a password added and the database swapped
    # for one that does not exist (trust auth ignores the password).
    server = urlsplit(PG_DSN)
    host = server.hostname or "127.0.0.1"
    port = server.port or 5432
    user = server.username or "postgres"
    dsn = urlunsplit(
        (server.scheme, f"{user}:{PASSWORD}@{host}:{port}", "/sb_no_such_database", "", "")
    )
    with trio.fail_after(PG_CEILING), pytest.raises(StoreError) as caught:
        async with open_store(StorageConfig(backend="postgres", dsn=dsn)):
            pytest.fail("the store opened a database that does not exist")
    assert f"{host}:{port}/sb_no_such_database" in str(caught.value)
    assert "InvalidCatalogNameError" in str(caught.value)
    assert PASSWORD not in full_text(caught.value)


async def test_no_dsn_is_a_store_error_that_says_what_to_set() -> None:
    with pytest.raises(StoreError, match=r"storage\.dsn is not set"):
        async with open_store(StorageConfig(backend="postgres")):
            pytest.fail("opened without a DSN")


async def test_opening_creates_the_schema_once_and_reopening_keeps_the_data(pg: Pg) -> None:
    with trio.fail_after(PG_CEILING):
        async with open_store(pg.config) as store:
            await store.save_inbound([message(1)])
            await store.keep_outbound([kept(1)])
        async with open_store(pg.config) as store, pg_session() as session:
            tables = await session.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = $1 "
                "ORDER BY table_name",
                pg.schema,
            )
            assert [row["table_name"] for row in tables] == [
                "channel_catalog",
                "channel_checkpoints",
                "dead_letters",
                "inbound_events",
                "kept_outbound",
                "owner_tokens",
                "schema_migrations",
            ]
            assert await store.recent_inbound() == [message(1)]
            assert await store.read_outbound() == [kept(1)]
            assert pg.schema in repr(store) and "127.0.0.1:5432" in repr(store)


async def test_an_open_trio_asyncio_loop_is_reused(pg: Pg) -> None:
    with trio.fail_after(PG_CEILING):
        async with trio_asyncio.open_loop() as loop:
            async with open_store(pg.config) as store:
                assert store._loop is loop  # type: ignore[attr-defined]
                await store.save_inbound([message(1)])
                await store.flush()
            # The store closed its pool but left the caller's loop running.
            assert not loop.is_closed()
            async with pg_session() as session:
                count = await session.fetchval(f"SELECT count(*) FROM {pg.table('inbound_events')}")
                assert count == 1


async def test_what_asyncpg_reports_to_its_loop_is_logged_and_the_node_goes_on(
    pg: Pg, caplog: pytest.LogCaptureFixture
) -> None:
    """asyncpg reports a connection given back inside a transaction to the loop's
    exception handler (and then rolls it back); trio-asyncio's own handler raised
    it into the loop's nursery and a drain ended a node that way (issue 14)."""
    with trio.fail_after(PG_CEILING):
        async with open_store(pg.config) as store:
            loop = store._loop  # type: ignore[attr-defined]
            loop.call_exception_handler(
                {"message": "Resetting connection with an active transaction <conn>"}
            )
            loop.call_exception_handler(
                {"message": "Task exception was never retrieved", "exception": OSError("gone")}
            )
            await trio.lowlevel.checkpoint()  # where trio-asyncio's handler raised
            await store.save_inbound([message(1)])
            await store.flush()  # the store still works
    reports = [r.getMessage() for r in caplog.records if r.name == "switchboard.asyncio"]
    assert any("Resetting connection with an active transaction" in r for r in reports)
    assert any("never retrieved: OSError: gone" in r for r in reports)


async def test_a_failure_right_after_begin_rolls_the_transaction_back(pg: Pg) -> None:
    """BEGIN reached the server but its caller was stopped (a cancel landing on it):
    the session goes back to the pool outside any transaction."""

    class Stopped(BaseException):
        pass

    with trio.fail_after(PG_CEILING):
        async with open_store(pg.config) as store:
            real = store._aio  # type: ignore[attr-defined]

            def stopping_after_begin(fn: Any) -> Any:
                call = real(fn)

                async def wrapped(*args: Any) -> Any:
                    result = await call(*args)
                    if args == ("BEGIN",):
                        raise Stopped
                    return result

                return wrapped

            async with store._connection() as conn:  # type: ignore[attr-defined]
                store._aio = stopping_after_begin  # type: ignore[attr-defined]
                with pytest.raises(Stopped):
                    async with store._transaction(conn):  # type: ignore[attr-defined]
                        pass
                store._aio = real  # type: ignore[attr-defined]
                assert not conn.is_in_transaction()


async def test_a_failing_flush_keeps_the_batch_for_the_next_one(
    pg: Pg, caplog: pytest.LogCaptureFixture
) -> None:
    events = [message(n) for n in range(20)]
    inbound, away = pg.table("inbound_events"), "inbound_events_away"
    with trio.fail_after(PG_CEILING):
        async with open_store(pg.config) as store, pg_session() as session:
            await session.execute(f"ALTER TABLE {inbound} RENAME TO {away}")
            await store.save_inbound(events)
            with pytest.raises(StoreError) as caught:
                await store.flush()
            assert "PostgreSQL at 127.0.0.1:5432/test" in str(caught.value)
            assert "inbound_events" in str(caught.value)
            assert "UndefinedTableError" in str(caught.value)
            stats = store.statistics()
            assert (stats.errors, stats.inbound_pending, stats.inbound_written) == (1, 20, 0)
            assert any(
                r.name == "switchboard.store" and "stay buffered" in r.getMessage()
                for r in caplog.records
            )

            await session.execute(f"ALTER TABLE {pg.table(away)} RENAME TO inbound_events")
            await store.flush()
            stats = store.statistics()
            assert (stats.errors, stats.inbound_pending, stats.inbound_written) == (1, 0, 20)
            assert await store.recent_inbound() == events


async def test_a_full_buffer_refuses_events_while_writes_fail(
    pg: Pg, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime.store.base, "BACKPRESSURE_WAIT", 0.2)
    config = attrs.evolve(pg.config, batch_size=2)  # room for 10 batches: 20 events
    inbound = pg.table("inbound_events")
    with trio.fail_after(PG_CEILING):
        async with open_store(config) as store, pg_session() as session:
            await session.execute(f"ALTER TABLE {inbound} RENAME TO inbound_events_away")
            await store.save_inbound([message(n) for n in range(20)])
            with pytest.raises(StoreError, match="buffer is full") as caught:
                await store.save_inbound([message(20)])
            assert "not accepted" in str(caught.value)
            assert "UndefinedTableError" in str(caught.value)  # the write that failed
            assert store.statistics().inbound_pending == 20

            await session.execute(
                f"ALTER TABLE {pg.table('inbound_events_away')} RENAME TO inbound_events"
            )
            await store.flush()
            await store.save_inbound([message(20)])
            await store.flush()
            assert store.statistics().inbound_written == 21


async def test_cancelling_a_flush_midway_leaks_no_connection(
    pg: Pg, caplog: pytest.LogCaptureFixture
) -> None:
    events = [message(n) for n in range(50)]
    with trio.fail_after(PG_CEILING):
        async with open_store(pg.config) as store:
            async with pg_session() as session:
                # Another session holds the table, so the store's INSERT waits on the server.
                await session.execute("BEGIN")
                await session.execute(
                    f"LOCK TABLE {pg.table('inbound_events')} IN ACCESS EXCLUSIVE MODE"
                )
                await store.save_inbound(events)
                async with trio.open_nursery() as nursery:
                    flushing = trio.CancelScope()

                    async def flush() -> None:
                        with flushing:
                            await store.flush()

                    nursery.start_soon(flush)

                    await wait_until_session(session, pg, waiting_on_lock=True)
                    flushing.cancel()
                assert flushing.cancelled_caught
                assert store.statistics().inbound_pending == 50  # nothing lost
                assert store.statistics().inbound_written == 0
                # The statement was cancelled on the server too: it stops waiting
                # while the lock is still held.
                await wait_until_session(session, pg, waiting_on_lock=False)
                await session.execute("ROLLBACK")
            # Leaving the block: the last flush writes the batch, the pool closes.
    # A leaked connection makes pool.close() hang; the store then terminates the
    # pool after CLOSE_TIMEOUT and says so. No such line: nothing leaked.
    assert PG_CEILING > CLOSE_TIMEOUT  # so a hang gets that far before the ceiling
    assert not [r for r in caplog.records if "terminat" in r.getMessage()]
    assert store.statistics().inbound_written == 50
    with trio.fail_after(PG_CEILING):
        async with pg_session() as session:
            await wait_until_no_sessions(session, pg)
            count = await session.fetchval(f"SELECT count(*) FROM {pg.table('inbound_events')}")
            assert count == 50


async def wait_until_session(session: Any, pg: Pg, *, waiting_on_lock: bool) -> None:
    """Poll the server until the store's INSERT waits on a lock (or none does)."""

    def locked(rows: list[Any]) -> bool:
        return any(row["wait_event_type"] == "Lock" for row in rows)

    # The state lives in the server: polling is the only way to see it.
    while locked(await store_sessions(session, pg)) != waiting_on_lock:  # noqa: ASYNC110
        await trio.sleep(0.01)


async def wait_until_no_sessions(session: Any, pg: Pg) -> None:
    """Poll until the server has seen every connection of the store's pool close."""
    while await store_sessions(session, pg):  # noqa: ASYNC110 - the state lives in the server
        await trio.sleep(0.01)


async def test_an_event_postgres_cannot_store_is_skipped_and_counted(
    pg: Pg, caplog: pytest.LogCaptureFixture
) -> None:
    poisoned = message(2, metadata={"raw": "a\x00b"})
    with trio.fail_after(PG_CEILING):
        async with open_store(pg.config) as store:
            await store.save_inbound([message(1), poisoned, message(3)])
            await store.flush()
            stats = store.statistics()
            assert (stats.inbound_written, stats.errors, stats.inbound_pending) == (2, 1, 0)
            assert await store.recent_inbound() == [message(1), message(3)]
    assert any("NUL" in r.getMessage() and "'2'" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "payload",
    ['{"peer": "p"}', '{"peer": "p", "metadata": ' + "[" * 5_000 + "]" * 5_000 + "}"],
    ids=["not-a-message", "too-deep-for-json"],
)
async def test_a_corrupt_kept_row_is_reported_and_skipped_the_others_are_read(
    pg: Pg, caplog: pytest.LogCaptureFixture, payload: str
) -> None:
    """One bad row must not hold back every kept message (issue 11)."""
    table = pg.table("kept_outbound")
    with trio.fail_after(PG_CEILING):
        async with open_store(pg.config) as store, pg_session() as session:
            await store.keep_outbound([kept(1)])
            bad_id = await session.fetchval(
                f"INSERT INTO {table} (channel_id, payload, reason, accepted_at) "
                "VALUES ('wa:1', $1, 'r', now()) RETURNING id",
                payload,
            )
            await store.keep_outbound([kept(2)])
            assert await store.read_outbound() == [kept(1), kept(2)]
            assert store.statistics().errors == 1
            assert await session.fetchval(f"SELECT count(*) FROM {table}") == 3  # left in place
    assert any(
        f"row id={bad_id} of" in r.getMessage() and "kept_outbound" in r.getMessage()
        for r in caplog.records
    )


async def test_a_kept_row_from_a_time_past_python_s_calendar_is_read(pg: Pg) -> None:
    # A valid timestamptz past datetime's year 9999 failed the whole read (an
    # OverflowError in the driver, no StoreError): the node died at every start.
    from runtime.resend import _when

    table = pg.table("kept_outbound")
    with trio.fail_after(PG_CEILING):
        async with open_store(pg.config) as store, pg_session() as session:
            await store.keep_outbound([kept(1)])
            await session.execute(f"UPDATE {table} SET accepted_at = '200000-01-01 00:00Z'")
            (back,) = await store.read_outbound()
    assert back.message == kept(1).message
    assert back.accepted_at > 6e12
    assert _when(back.accepted_at) == "200000-01-01 00:00:00 UTC"
    assert _when(1e20) == "at unix time 1e+20"  # (past time_t: the orphans' report raised)


async def test_accepted_at_is_kept_to_the_microsecond(pg: Pg) -> None:
    item = attrs.evolve(kept(1), accepted_at=1_700_000_000.123456789)
    with trio.fail_after(PG_CEILING):
        async with open_store(pg.config) as store:
            await store.keep_outbound([item])
            (back,) = await store.read_outbound()
    assert back.message == item.message
    assert back.accepted_at == pytest.approx(item.accepted_at, abs=1e-6)


async def test_the_flusher_writes_while_the_block_runs(pg: Pg) -> None:
    config = attrs.evolve(pg.config, flush_interval=0.02, batch_size=100)
    with trio.fail_after(PG_CEILING):
        async with open_store(config) as store, pg_session() as session:
            for n in range(5):
                await store.save_inbound([message(n)])
                await wait_until(lambda n=n: store.statistics().inbound_written == n + 1)
            count = await session.fetchval(f"SELECT count(*) FROM {pg.table('inbound_events')}")
            assert count == 5


async def test_a_nul_character_spoils_no_batch_of_kept_messages_or_checkpoints(pg: Pg) -> None:
    """jsonb refuses U+0000: one such record used to fail its whole statement (issue 11)."""
    from providers.base import OutboundMessage
    from tests.test_store_durable import checkpoint, letter, state

    nul = kept(2, text="a\x00b")
    nul_letter = attrs.evolve(
        letter(2, 1_800_000_001.0),
        message=OutboundMessage(peer="p", idempotency_key="k2", text="x\x00"),
    )
    literal = kept(3, text="a \\u0000 is text here")  # a backslash, not a NUL
    with trio.fail_after(PG_CEILING):
        async with open_store(pg.config) as store:
            assert await store.keep_outbound([kept(1), nul, literal]) == [nul]
            assert await store.read_outbound() == [kept(1), literal]
            token = await store.next_owner_token()
            result = await store.write_checkpoints(
                [
                    checkpoint("tg:1", token, state(letter(1, 1_800_000_000.0), nul_letter)),
                    checkpoint("tg:2", token, state()),
                ]
            )
            assert result.written == ("tg:1", "tg:2")
            assert [channel for channel, _ in result.rejected] == ["tg:1"]
            loaded = await store.load_checkpoint("tg:1")
    assert loaded is not None and loaded.state is not None
    assert [item.id for item in loaded.state.dead_letters] == [1]
