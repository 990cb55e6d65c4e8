"""Channels' durable state in the store, the same for every backend (issue 13).

Checkpoints round-trip, owner tokens fence stale writers, dead letters are
listed and discarded by filter, a checkpoint of another version is set
aside, and the durable backends migrate from an empty database and from the
previous release's schema. Real PostgreSQL (``SWITCHBOARD_TEST_PG``, a schema
per test) and SQLite in a temporary directory.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from actors.backoff import BackoffState
from actors.breaker import BreakerState, CircuitBreakerState
from actors.channel.durable import STATE_VERSION, ChannelState, DeadLetterRecord
from actors.channel.state import SentWindow
from actors.ratelimit import CompositeLimiterState, GCRAState, KeyedLimiterState
from providers.base import (
    ConnectionState,
    ConnectionStateChanged,
    OutboundMessage,
    SessionState,
)
from runtime.config.model import StorageConfig
from runtime.errors import StoreError
from runtime.store import MemoryStore, open_store
from runtime.store.codec import dumps, encode_state, state_text
from runtime.store.durable import Checkpoint, DeadLetterFilter
from runtime.store.migrations import POSTGRES, SQLITE
from tests.test_store import (
    CEILING,
    PG_CEILING,
    PG_DSN,
    QUIET,
    Backend,
    dropped_afterwards,
    message,
    new_schema,
    pg_session,
)


def letter(n: int, at: float, error: str = "SendFailed") -> DeadLetterRecord:
    return DeadLetterRecord(
        id=n,
        message=OutboundMessage(peer=f"p{n}", idempotency_key=f"k{n}", text=f"text {n}"),
        reason=f"gave up on {n}",
        error_type=error,
        attempts=3,
        at=at,
    )


def state(*letters: DeadLetterRecord, offset: int = 7, failed: str | None = None) -> ChannelState:
    return ChannelState(
        session=SessionState(provider="telegram", data={"offset": offset}),
        limiter=CompositeLimiterState(
            parts=(
                GCRAState(tat_ns=1_800_000_000_123_456_789),
                KeyedLimiterState(
                    buckets=(("peer-1", GCRAState(tat_ns=1_800_000_000_000_000_001)),)
                ),
            ),
            paused_until=1_800_000_005.5,
        ),
        backoff=BackoffState(failures=2, last_delay=1.25, connected_at=None),
        breaker=CircuitBreakerState(
            state=BreakerState.OPEN, consecutive_failures=5, retry_at=1_800_000_030.0, failures=5
        ),
        seen=("101", "102", "edit:101:1700000000.0"),
        failed=failed,
        dead_letters=letters,
        dead_letters_total=max((item.id for item in letters), default=0),
    )


def checkpoint(channel: str, token: int, st: ChannelState, **fields: Any) -> Checkpoint:
    return Checkpoint(
        channel_id=channel,
        tenant=fields.pop("tenant", "acme"),
        provider="telegram",
        owner_token=token,
        state=st,
        **fields,
    )


async def test_a_checkpoint_round_trips_with_its_dead_letters(backend: Backend) -> None:
    saved = state(letter(1, 1_800_000_000.0), letter(2, 1_800_000_001.0, "BadRecipient"))
    with trio.fail_after(PG_CEILING):
        async with open_store(backend.config()) as store:
            assert await store.load_checkpoint("tg:1") is None
            token = await store.next_owner_token()
            result = await store.write_checkpoints([checkpoint("tg:1", token, saved)])
            assert result.written == ("tg:1",)
            assert result.refused == ()
            loaded = await store.load_checkpoint("tg:1")
    assert loaded is not None
    assert (loaded.owner_token, loaded.version, loaded.problem) == (token, STATE_VERSION, None)
    assert loaded.state == saved


ANSWERS = SentWindow(
    (
        ("k-1", "m-1", "p-1"),
        ('quo"te\\back', "m-2", "\u00fcn\u00efc\u00f6de \U0001f600"),
        ("k-3", "", "line\nbreak"),
    )
)


async def test_send_answers_round_trip_through_the_spliced_encoding(backend: Backend) -> None:
    saved = attrs.evolve(state(letter(1, 1_800_000_000.0)), sent=ANSWERS)
    with trio.fail_after(PG_CEILING):
        async with open_store(backend.config()) as store:
            token = await store.next_owner_token()
            await store.write_checkpoints([checkpoint("tg:1", token, saved)])
            loaded = await store.load_checkpoint("tg:1")
    assert loaded is not None and loaded.problem is None
    assert loaded.state == saved


def test_the_state_text_is_the_state_s_json_with_each_answer_encoded_once() -> None:
    answers = SentWindow(ANSWERS.entries)  # none encoded yet
    saved = attrs.evolve(state(), sent=answers)
    text = state_text(saved)
    assert json.loads(text) == json.loads(dumps(encode_state(saved)))
    as_dumps_writes_them = dumps(
        [{"key": k, "platform_message_id": m, "peer": p} for k, m, p in answers]
    )
    assert text.endswith(f',"sent":{as_dumps_writes_them}}}')
    kept = answers.text(lambda entry: "made again")  # the text kept: nothing is made
    assert json.loads(f"[{kept}]") == json.loads(text)["sent"]
    assert state_text(saved) == text  # a later checkpoint reuses the answers' text
    assert answers.text(str) is kept
    assert json.loads(state_text(state()))["sent"] == []


async def test_owner_tokens_only_grow_and_stay_above_stored_checkpoints(backend: Backend) -> None:
    with trio.fail_after(PG_CEILING):
        async with open_store(backend.config()) as store:
            first = await store.next_owner_token()
            second = await store.next_owner_token()
            assert second > first
            # A node that wrote with a much higher token (a restored backup, say).
            await store.write_checkpoints([checkpoint("tg:1", 1_000, state())])
            assert await store.next_owner_token() > 1_000


async def test_a_stale_writer_cannot_overwrite_a_newer_checkpoint(backend: Backend) -> None:
    newer = state(offset=50)
    with trio.fail_after(PG_CEILING):
        async with open_store(backend.config()) as store:
            await store.write_checkpoints(
                [checkpoint("tg:1", 5, newer), checkpoint("tg:2", 5, newer)]
            )
            result = await store.write_checkpoints(
                [checkpoint("tg:1", 4, state(offset=10)), checkpoint("tg:2", 6, state(offset=60))]
            )
            assert result.written == ("tg:2",)
            assert result.refused == (("tg:1", 5),)
            kept = await store.load_checkpoint("tg:1")
            moved = await store.load_checkpoint("tg:2")
            same = await store.write_checkpoints([checkpoint("tg:1", 5, state(offset=51))])
            again = await store.load_checkpoint("tg:1")
    assert kept is not None and kept.state is not None and kept.owner_token == 5
    assert kept.state.session == newer.session  # the stale write changed nothing
    assert moved is not None and moved.owner_token == 6
    assert same.written == ("tg:1",)  # the same token may write again
    assert again is not None and again.state is not None
    assert again.state.session == SessionState(provider="telegram", data={"offset": 51})


async def test_a_checkpoint_with_more_letters_than_a_listing_shows_reads_back_whole(
    backend: Backend,
) -> None:
    # It read back the oldest 1,000 (a listing's limit), and the first checkpoint
    # after the start wrote those back over the channel's rows: the rest deleted.
    many = [letter(n, 1_800_000_000.0 + n) for n in range(1, 1_502)]
    with trio.fail_after(PG_CEILING):
        async with open_store(backend.config()) as store:
            await store.write_checkpoints([checkpoint("tg:1", 1, state(*many))])
            loaded = await store.load_checkpoint("tg:1")
    assert loaded is not None and loaded.state is not None
    assert [each.id for each in loaded.state.dead_letters] == list(range(1, 1_502))


@pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)  # (rows to spoil)
async def test_a_dead_letter_row_that_is_no_letter_is_left_out_the_others_read(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    # One such row kept its channel from starting (StoreError reading its
    # checkpoint) and failed every listing of every channel.
    letters = [letter(n, 1_800_000_000.0 + n) for n in (1, 2, 3)]
    spoilt = "UPDATE {table} SET message = '{{\"peer\": 1}}' WHERE letter_id = 2"
    with trio.fail_after(PG_CEILING):
        async with open_store(backend.config()) as store:
            await store.write_checkpoints([checkpoint("tg:1", 1, state(*letters))])
            if backend.name == "sqlite":
                with sqlite3.connect(backend.base.path) as conn:
                    conn.execute(spoilt.format(table="dead_letters"))
            else:
                async with pg_session() as pg:
                    await pg.execute(spoilt.format(table=f'"{backend.base.schema}".dead_letters'))
            loaded = await store.load_checkpoint("tg:1")
            listed = await store.dead_letters(DeadLetterFilter())
    assert loaded is not None and loaded.state is not None
    assert [each.id for each in loaded.state.dead_letters] == [1, 3]
    assert [item.letter.id for item in listed] == [1, 3]
    assert "dead letter 2 of channel 'tg:1' is not a letter" in caplog.text
    assert '"peer": 1' not in caplog.text  # its row is named, never its content


async def test_unchanged_dead_letters_are_not_rewritten(backend: Backend) -> None:
    one, two = letter(1, 1_800_000_000.0), letter(2, 1_800_000_001.0)
    with trio.fail_after(PG_CEILING):
        async with open_store(backend.config()) as store:
            await store.write_checkpoints([checkpoint("tg:1", 1, state(one, two))])
            # A write that says the letters did not change leaves the rows alone ...
            await store.write_checkpoints([checkpoint("tg:1", 1, state(), letters_changed=False)])
            unchanged = await store.dead_letters(DeadLetterFilter(channel_id="tg:1"))
            # ... and one that says they did replaces them.
            await store.write_checkpoints([checkpoint("tg:1", 1, state(two))])
            replaced = await store.dead_letters(DeadLetterFilter(channel_id="tg:1"))
    assert [item.letter for item in unchanged] == [one, two]
    assert [item.letter for item in replaced] == [two]


async def test_dead_letters_are_listed_by_filter_oldest_first(backend: Backend) -> None:
    a1, a2 = letter(1, 1_800_000_010.0), letter(2, 1_800_000_030.0, "BadRecipient")
    b1 = letter(1, 1_800_000_020.0)
    with trio.fail_after(PG_CEILING):
        async with open_store(backend.config()) as store:
            await store.write_checkpoints(
                [
                    checkpoint("tg:a", 1, state(a1, a2)),
                    checkpoint("tg:b", 1, state(b1), tenant="globex"),
                ]
            )

            async def listed(**where: Any) -> list[tuple[str, int]]:
                found = await store.dead_letters(DeadLetterFilter(**where))
                return [(item.channel_id, item.letter.id) for item in found]

            assert await listed() == [("tg:a", 1), ("tg:b", 1), ("tg:a", 2)]
            assert await listed(channel_id="tg:a") == [("tg:a", 1), ("tg:a", 2)]
            assert await listed(tenant="globex") == [("tg:b", 1)]
            assert await listed(error_type="BadRecipient") == [("tg:a", 2)]
            assert await listed(older_than=1_800_000_025.0) == [("tg:a", 1), ("tg:b", 1)]
            assert await listed(channel_id="tg:a", ids=(2,)) == [("tg:a", 2)]
            assert await listed(limit=2) == [("tg:a", 1), ("tg:b", 1)]
            full = await store.dead_letters(DeadLetterFilter(tenant="globex"))
            assert full[0].tenant == "globex"
            assert full[0].letter == b1

            assert (
                await store.discard_dead_letters(DeadLetterFilter(channel_id="tg:a", ids=(1,))) == 1
            )
            assert await listed() == [("tg:b", 1), ("tg:a", 2)]
            assert await store.discard_dead_letters(DeadLetterFilter()) == 2
            assert await listed() == []


async def test_a_checkpoint_of_another_version_is_set_aside_not_raised(
    backend: Backend,
) -> None:
    with trio.fail_after(PG_CEILING):
        async with open_store(backend.config()) as store:
            future = attrs.evolve(state(), version=STATE_VERSION + 1)
            await store.write_checkpoints([checkpoint("tg:1", 1, future)])
            loaded = await store.load_checkpoint("tg:1")
    assert loaded is not None
    assert loaded.state is None
    assert loaded.problem is not None
    assert f"v{STATE_VERSION + 1}" in loaded.problem


async def test_a_node_that_sets_a_checkpoint_aside_keeps_the_channel_s_dead_letters(
    backend: Backend,
) -> None:
    # Its letters are rows of their own: the state set aside (another version,
    # a row that does not decode) took them with it, and the first checkpoint
    # of the fresh state deleted them.
    from providers.simulated import SimulatedProvider
    from runtime import open_node
    from tests.test_node_embedded import FAST, node_config, sim, wait_connected

    kept = (letter(1, 1_800_000_000.0), letter(2, 1_800_000_001.0, "BadRecipient"))
    future = attrs.evolve(state(*kept), version=STATE_VERSION + 1)
    with trio.fail_after(PG_CEILING):
        async with open_store(backend.config()) as store:
            await store.write_checkpoints([checkpoint("a", 1, future)])
            async with open_node(
                node_config([sim("a")]),
                store=store,
                channel_defaults=FAST,
                providers={"simulated": SimulatedProvider()},
            ) as node:
                await wait_connected(node, 1)
                letters = await node.channel("a").dead_letters()
                await node.send("a", OutboundMessage(peer="p", idempotency_key="k", text="t"))
            rows = await store.dead_letters(DeadLetterFilter(channel_id="a"))
    assert [(each.id, each.message) for each in letters] == [(r.id, r.message) for r in kept]
    assert [item.letter.id for item in rows] == [1, 2]


# --- migrations -------------------------------------------------------------------------


# The schema the release before checkpoints created, verbatim.
PREVIOUS_POSTGRES = """
    CREATE SCHEMA IF NOT EXISTS {s};
    CREATE TABLE IF NOT EXISTS {s}.inbound_events (
        channel_id text NOT NULL,
        kind text NOT NULL,
        platform_message_id text NOT NULL,
        status text NOT NULL DEFAULT '',
        payload jsonb NOT NULL,
        stored_at timestamptz NOT NULL DEFAULT now(),
        seq bigserial NOT NULL,
        PRIMARY KEY (channel_id, kind, platform_message_id, status)
    );
    CREATE INDEX IF NOT EXISTS inbound_events_channel_seq ON {s}.inbound_events (channel_id, seq);
    CREATE INDEX IF NOT EXISTS inbound_events_seq ON {s}.inbound_events (seq);
    CREATE TABLE IF NOT EXISTS {s}.kept_outbound (
        id bigserial PRIMARY KEY,
        channel_id text NOT NULL,
        payload jsonb NOT NULL,
        reason text NOT NULL,
        accepted_at timestamptz NOT NULL
    );
"""

KEPT_PAYLOAD = json.dumps({"peer": "+1555", "idempotency_key": "old-1", "text": "kept before"})


async def test_postgres_migrates_the_previous_release_s_schema_keeping_its_data() -> None:
    schema = new_schema()
    quoted = f'"{schema}"'
    with trio.fail_after(PG_CEILING):
        async with dropped_afterwards(schema):
            async with pg_session() as pg:
                await pg.execute(PREVIOUS_POSTGRES.format(s=quoted))
                await pg.execute(
                    f"INSERT INTO {quoted}.kept_outbound "
                    "(channel_id, payload, reason, accepted_at) "
                    "VALUES ('wa:1', $1::jsonb, 'drain', now())",
                    KEPT_PAYLOAD,
                )
            config = StorageConfig(backend="postgres", dsn=PG_DSN, schema=schema)
            async with open_store(config) as store:
                kept = await store.read_outbound()
                await store.write_checkpoints([checkpoint("tg:1", 1, state())])
            async with open_store(config) as again:  # migrating twice is a no-op
                assert await again.load_checkpoint("tg:1") is not None
            async with pg_session() as pg:
                versions = await pg.fetch(f"SELECT version FROM {quoted}.schema_migrations")
    assert [item.message.idempotency_key for item in kept] == ["old-1"]
    assert sorted(row["version"] for row in versions) == [m[0] for m in POSTGRES]


async def test_postgres_refuses_a_schema_newer_than_it_knows() -> None:
    schema = new_schema()
    quoted = f'"{schema}"'
    config = StorageConfig(backend="postgres", dsn=PG_DSN, schema=schema)
    with trio.fail_after(PG_CEILING):
        async with dropped_afterwards(schema):
            async with open_store(config):
                pass
            async with pg_session() as pg:
                await pg.execute(
                    f"INSERT INTO {quoted}.schema_migrations (version, description) "
                    "VALUES (99, 'from the future')"
                )
            with pytest.raises(StoreError, match="schema version 99, newer than"):
                async with open_store(config):
                    raise AssertionError("must not open")


async def test_sqlite_migrates_from_an_empty_file_and_refuses_a_newer_schema(
    tmp_path: Path,
) -> None:
    path = tmp_path / "node.sqlite3"
    config = StorageConfig(backend="sqlite", path=str(path))
    with trio.fail_after(PG_CEILING):
        async with open_store(config) as store:
            await store.write_checkpoints([checkpoint("tg:1", 1, state())])
        async with open_store(config) as again:
            assert await again.load_checkpoint("tg:1") is not None
        with sqlite3.connect(path) as conn:
            versions = [row[0] for row in conn.execute("SELECT version FROM schema_migrations")]
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
            conn.execute("INSERT INTO schema_migrations VALUES (99, 'from the future', 0)")
        assert sorted(versions) == [m[0] for m in SQLITE]
        assert mode == "wal"
        with pytest.raises(StoreError, match="schema version 99, newer than"):
            async with open_store(config):
                raise AssertionError("must not open")


async def test_an_sqlite_file_that_cannot_be_made_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    config = StorageConfig(backend="sqlite", path=str(blocker / "node.sqlite3"))
    with pytest.raises(StoreError, match=r"could not open the SQLite store at .*storage\.path"):
        async with open_store(config):
            raise AssertionError("must not open")


# --- inbound events kept durably before they are published -----------------------------


async def test_store_inbound_says_what_is_new_and_is_durable_when_it_returns(
    backend: Backend,
) -> None:
    first, second = message(1), message(2)
    state_change = ConnectionStateChanged(
        channel_id="tg:1", state=ConnectionState.CONNECTED, detail="up"
    )
    with trio.fail_after(PG_CEILING):
        async with open_store(backend.config(flush_interval=QUIET)) as store:
            assert await store.store_inbound([first, state_change, second]) == [True, True]
            # Written when it returned: no flush, no interval.
            assert await store.recent_inbound() == [first, second]
            assert store.statistics().inbound_pending == 0
            assert await store.store_inbound([second, message(3)]) == [False, True]


async def test_concurrent_channels_share_one_write(autojump_clock: Any) -> None:
    with trio.fail_after(CEILING):
        async with open_store(StorageConfig(flush_interval=QUIET)) as store:
            answers: list[list[bool]] = []

            async def channel(n: int) -> None:
                answers.append(await store.store_inbound([message(n, channel=f"c{n}")]))

            async with trio.open_nursery() as nursery:
                for n in range(10):
                    nursery.start_soon(channel, n)
            assert answers == [[True]] * 10
            assert store.statistics().batches == 1


async def test_store_inbound_waits_out_a_failing_store_instead_of_refusing(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(CEILING):
        async with open_store(StorageConfig(flush_interval=0.1)) as store:
            real = MemoryStore._write_batch
            down = True

            async def flaky(self: MemoryStore, batch: Any) -> Any:
                if down:
                    raise StoreError("the disk is full (test)")
                return await real(self, batch)

            monkeypatch.setattr(MemoryStore, "_write_batch", flaky)
            answer: list[bool] = []

            async def keep() -> None:
                answer.extend(await store.store_inbound([message(1)]))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(keep)
                await trio.sleep(30.0)  # far past BACKPRESSURE_WAIT: still waiting, no error
                assert answer == []
                assert store.statistics().errors > 3
                down = False
            assert answer == [True]
            assert await store.recent_inbound() == [message(1)]


async def test_closing_the_store_releases_whoever_waits(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def never(self: MemoryStore, batch: Any) -> Any:
        raise StoreError("down for good (test)")

    monkeypatch.setattr(MemoryStore, "_write_batch", never)
    caught: list[BaseException] = []

    async def keep(store: Any) -> None:
        try:
            await store.store_inbound([message(1)])
        except StoreError as exc:
            caught.append(exc)

    with trio.fail_after(CEILING):
        async with trio.open_nursery() as nursery:
            # The close reports the events it could not write.
            with pytest.raises(StoreError, match="unwritten"):
                async with open_store(StorageConfig()) as store:
                    nursery.start_soon(keep, store)
                    await trio.sleep(1.0)
    assert len(caught) == 1
    assert "closed before these events were written" in str(caught[0])


# --- one bad record never spoils a batch (issue 11) -------------------------------------------


async def test_a_checkpoint_or_letter_json_cannot_carry_is_left_out_the_rest_written(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    poisoned_letter = attrs.evolve(
        letter(2, 1_800_000_001.0),
        message=OutboundMessage(
            peer="p2", idempotency_key="k2", text="t", metadata={"score": float("nan")}
        ),
    )
    last = letter(3, 1_800_000_002.0)
    bad_state = attrs.evolve(
        state(), session=SessionState(provider="telegram", data={"offset": float("inf")})
    )
    with trio.fail_after(PG_CEILING):
        async with open_store(backend.config()) as store:
            token = await store.next_owner_token()
            result = await store.write_checkpoints(
                [
                    checkpoint("tg:1", token, state(letter(1, 1_800_000_000.0))),
                    checkpoint("tg:bad", token, bad_state),
                    checkpoint(
                        "tg:3",
                        token,
                        state(letter(1, 1_800_000_000.0), poisoned_letter, last),
                        letters_changed=True,
                    ),
                ]
            )
            assert result.written == ("tg:1", "tg:3")
            assert result.refused == ()
            assert [channel for channel, _ in result.rejected] == ["tg:bad", "tg:3"]
            assert "dead letter 2 (idempotency key 'k2')" in result.rejected[1][1]
            assert await store.load_checkpoint("tg:bad") is None
            third = await store.load_checkpoint("tg:3")
            assert third is not None and third.state is not None
            assert [item.id for item in third.state.dead_letters] == [1, 3]
            assert store.statistics().errors == 2
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "channel tg:bad" in logged and "channel tg:3" in logged
