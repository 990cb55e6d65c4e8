"""State that outlives the process (issue 13): ``switchboard run`` killed with SIGKILL.

Each test runs real ``switchboard run`` subprocesses against emulators in
this process, over real sockets, with a durable store (SQLite in a temporary
directory, and PostgreSQL at ``SWITCHBOARD_TEST_PG`` in a schema of its own),
kills the node with SIGKILL at a moment drawn from a seeded random source
(the seed is printed, so a failure can be replayed), starts it again and
judges by what the emulators saw and what the node published. Real time,
hard ceilings.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio

from providers.base import OutboundMessage
from providers.emulators.base import open_emulator
from providers.emulators.discord import DiscordEmulator
from providers.emulators.telegram import TelegramEmulator
from providers.emulators.websocket import WebSocketEmulator
from runtime.config.model import StorageConfig
from runtime.store import KeptMessage, open_store
from tests.test_cli_run import Node, poll, run_node
from tests.test_store import PG_DSN, dropped_afterwards, new_schema, pg_session

CEILING = 120.0  # real seconds per test; only a hang gets near it
SEED = int(os.environ.get("SWITCHBOARD_TEST_SEED", "1913"))
TG_TOKEN = "123456:" + "A" * 35
WS_TOKEN = "ws-kill-token"
API_TOKEN = "kill-api-token"


@attrs.frozen
class Durable:
    """One durable backend: its ``[storage]`` table and how to read its tables."""

    name: str
    storage: str
    config: StorageConfig
    query: Callable[[str], Any]  # async: SQL -> rows (list of tuples)


@pytest.fixture(params=["sqlite", "postgres"])
async def durable(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Durable]:
    if request.param == "sqlite":
        path = tmp_path / "node.sqlite3"

        async def query_sqlite(sql: str) -> Any:
            with sqlite3.connect(path) as conn:
                return conn.execute(sql).fetchall()

        yield Durable(
            "sqlite",
            f'backend = "sqlite"\npath = "{path}"',
            StorageConfig(backend="sqlite", path=str(path)),
            query_sqlite,
        )
        return
    schema = new_schema()

    async def query_pg(sql: str) -> Any:
        async with pg_session() as pg:
            rows = await pg.fetch(sql.replace("FROM ", f'FROM "{schema}".'))
        return [tuple(row.values()) for row in rows]

    async with dropped_afterwards(schema):
        yield Durable(
            "postgres",
            f'backend = "postgres"\ndsn = "{PG_DSN}"\nschema = "{schema}"',
            StorageConfig(backend="postgres", dsn=PG_DSN, schema=schema),
            query_pg,
        )


def rng_for(test: str) -> random.Random:
    print(f"{test}: seed {SEED} (set SWITCHBOARD_TEST_SEED to replay)")
    return random.Random(f"{SEED}:{test}")


def node_file(tmp_path: Path, durable: Durable, channels: str, *, extra: str = "") -> Path:
    path = tmp_path / "node.toml"
    path.write_text(
        f"""
[node]
id = "killed"
drain_deadline = 3.0
start_timeout = 5.0

[storage]
{durable.storage}
checkpoint_interval = 0.2

[ops]
port = 0
api_token = "${{env:SB_KILL_API_TOKEN}}"

[logging]
format = "json"
inbound = true
{extra}
{channels}
"""
    )
    return path


ENV = {"SB_KILL_TG_TOKEN": TG_TOKEN, "SB_KILL_WS_TOKEN": WS_TOKEN, "SB_KILL_API_TOKEN": API_TOKEN}


def published(node: Node) -> list[str]:
    """The platform ids of the inbound messages the node published (its log)."""
    ids = []
    for record in node.log_records():
        if record.get("message", "").startswith("inbound message "):
            ids.append(record["switchboard.message_id"])
    return ids


async def kill(node: Node) -> None:
    node.process.send_signal(signal.SIGKILL)
    with trio.fail_after(30):
        await node.process.wait()


async def connected(node: Node) -> None:
    await node.wait_output(r"connected", stream="err")


# --- Telegram: every update published exactly once across a kill ----------------------------


async def test_telegram_updates_around_a_kill_are_published_exactly_once(
    tmp_path: Path, durable: Durable
) -> None:
    rng = rng_for("telegram")
    emulator = TelegramEmulator()
    seen: list[str] = []
    with trio.fail_after(CEILING):
        async with open_emulator(emulator) as base:
            path = node_file(
                tmp_path,
                durable,
                f"""
[[channels]]
id = "tg"
provider = "telegram"
base_url = "{base}"
credentials = {{ token = "${{env:SB_KILL_TG_TOKEN}}" }}
options = {{ poll_timeout = 1 }}
""",
            )

            async def inject(n: int) -> None:
                await emulator.inject({"chat_id": 42, "text": f"update {n}", "token": TG_TOKEN})

            async with run_node(path, ENV) as node:
                await connected(node)
                for n in range(1, 6):  # before the kill
                    await inject(n)
                await poll(lambda: len(published(node)) >= 3)
                await trio.sleep(rng.uniform(0.0, 0.4))  # some moment while it works
                await kill(node)
                seen.extend(published(node))
            for n in range(6, 9):  # while it is down
                await inject(n)
            async with run_node(path, ENV) as node:
                await connected(node)
                for n in range(9, 11):  # after
                    await inject(n)
                await poll(lambda: len(set(seen) | set(published(node))) >= 10)
                await trio.sleep(1.0)  # a duplicate would show up by now
                seen.extend(published(node))
    assert len(seen) == len(set(seen)) == 10, f"published twice or missing: {sorted(seen)}"


# --- Discord: the restarted node resumes, and gets what was dispatched meanwhile ------------


async def test_discord_resumes_after_a_kill_and_receives_what_it_missed(
    tmp_path: Path, durable: Durable
) -> None:
    emulator = DiscordEmulator()
    with trio.fail_after(CEILING):
        async with open_emulator(emulator) as base:
            path = node_file(
                tmp_path,
                durable,
                f"""
[[channels]]
id = "dc"
provider = "discord"
base_url = "{base}"
credentials = {{ token = "${{env:SB_KILL_DC_TOKEN}}" }}
""",
            )
            env = {**ENV, "SB_KILL_DC_TOKEN": "kill-test-bot-token"}
            async with run_node(path, env) as node:
                await connected(node)

                async def session_saved() -> bool:
                    rows = await durable.query(
                        "SELECT state FROM channel_checkpoints WHERE channel_id = 'dc'"
                    )
                    return bool(rows) and "session_id" in str(rows[0][0])

                for _ in range(200):
                    if await session_saved():
                        break
                    await trio.sleep(0.05)
                assert await session_saved()
                await kill(node)
            identifies = emulator.stats["identify"]
            missed = [
                await emulator.inject({"channel_id": "123", "content": f"missed {n}"})
                for n in range(3)
            ]
            async with run_node(path, env) as node:
                await poll(lambda: emulator.stats["resume"] >= 1)
                await poll(lambda: len(published(node)) >= len(missed))
    assert emulator.stats["identify"] == identifies  # no identify spent
    assert emulator.stats["resume_failed"] == 0


# --- rate limits: a restart loop never sends above the declared rate ------------------------


class CountingEmulator(WebSocketEmulator):
    """Counts every send frame as it arrives, with the time it arrived."""

    def __init__(self) -> None:
        super().__init__(tokens={WS_TOKEN})
        self.send_times: list[float] = []

    def _on_frame(self, client: Any, data: str) -> None:
        if '"send"' in data:
            self.send_times.append(trio.current_time())
        super()._on_frame(client, data)


RATE, BURST = 2.0, 2
JITTER = 0.05  # seconds two arrivals may close up in the sockets between node and emulator


def most_above_the_curve(times: list[float]) -> float:
    """How far the worst window exceeds ``BURST + RATE * length`` (<= 0: never)."""
    times = sorted(times)
    worst = -float("inf")
    for i in range(len(times)):
        for j in range(i, len(times)):
            allowed = BURST + RATE * (times[j] - times[i] + JITTER)
            worst = max(worst, (j - i + 1) - allowed)
    return worst


async def test_a_restart_loop_never_sends_above_the_declared_rate(
    tmp_path: Path, durable: Durable
) -> None:
    rng = rng_for("rate")
    emulator = CountingEmulator()
    with trio.fail_after(CEILING * 2):
        async with open_emulator(emulator) as base:
            ws = base.replace("http", "ws") + "/ws"
            path = node_file(
                tmp_path,
                durable,
                f"""
[[channels]]
id = "ws"
provider = "websocket"
base_url = "{ws}"
credentials = {{ token = "${{env:SB_KILL_WS_TOKEN}}" }}
[channels.rate_limit]
per_channel_rate = {RATE}
per_channel_burst = {BURST}
per_peer_rate = {RATE}
per_peer_burst = {BURST}
""",
            )
            keys = iter(range(1_000_000))
            rounds = 0
            # Ten kill -9 rounds at least, and on until there are sends enough to judge
            # the curve by: a round that ends while the limiter is still paused from
            # the last unclean stop sends nothing (the fail_after above bounds it).
            while rounds < 10 or len(emulator.send_times) < 10:
                rounds += 1
                async with run_node(path, ENV) as node:
                    await node.wait_output(r"channels:\s+1/1 started")
                    ops = node.url("ops HTTP:")
                    async with (
                        httpx.AsyncClient(
                            base_url=ops, headers={"Authorization": f"Bearer {API_TOKEN}"}
                        ) as client,
                        trio.open_nursery() as nursery,
                    ):
                        for _ in range(4):
                            nursery.start_soon(_keep_sending, client, keys)
                        await trio.sleep(rng.uniform(0.5, 1.5))
                        await kill(node)
                        nursery.cancel_scope.cancel()
    assert most_above_the_curve(emulator.send_times) <= 0, emulator.send_times


async def _keep_sending(client: httpx.AsyncClient, keys: Any) -> None:
    while True:
        key = f"k{next(keys)}"
        try:
            await client.post(
                "/v1/channels/ws/messages",
                json={"peer": "user-1", "idempotency_key": key, "text": key},
                timeout=30.0,
            )
        except httpx.TransportError:
            await trio.sleep(0.05)


# --- dead letters: kept across a kill, replayed once -----------------------------------------


async def test_dead_letters_survive_a_kill_and_are_replayed_once(
    tmp_path: Path, durable: Durable
) -> None:
    emulator = WebSocketEmulator(tokens={WS_TOKEN})
    emulator.unknown_peers.add("ghost")
    with trio.fail_after(CEILING):
        async with open_emulator(emulator) as base:
            ws = base.replace("http", "ws") + "/ws"
            path = node_file(
                tmp_path,
                durable,
                f"""
[[channels]]
id = "ws"
provider = "websocket"
base_url = "{ws}"
credentials = {{ token = "${{env:SB_KILL_WS_TOKEN}}" }}
""",
            )
            headers = {"Authorization": f"Bearer {API_TOKEN}"}
            async with run_node(path, ENV) as node:
                await node.wait_output(r"channels:\s+1/1 started")
                async with httpx.AsyncClient(
                    base_url=node.url("ops HTTP:"), headers=headers
                ) as client:
                    await poll(lambda: emulator.clients == 1)
                    refused = await _send(client, "ghost-1", peer="ghost")
                    assert refused.status_code == 422, refused.text
                await kill(node)  # at once: the letter must already be kept
            emulator.unknown_peers.clear()
            async with run_node(path, ENV) as node:
                await node.wait_output(r"channels:\s+1/1 started")
                async with httpx.AsyncClient(
                    base_url=node.url("ops HTTP:"), headers=headers
                ) as client:
                    letters = (await client.get("/v1/dead-letters")).json()["dead_letters"]
                    assert [x["idempotency_key"] for x in letters] == ["ghost-1"]
                    first = letters[0]["id"]
                    answers: list[int] = []
                    async with trio.open_nursery() as nursery:
                        for _ in range(2):
                            nursery.start_soon(_replay, client, first, answers)
                    assert sorted(answers) == [0, 1]
                    await poll(lambda: any(m["id"] == "ghost-1" for m in emulator.sent))
                await kill(node)  # right after the replay: it must not come back
            async with run_node(path, ENV) as node:
                await node.wait_output(r"channels:\s+1/1 started")
                async with httpx.AsyncClient(
                    base_url=node.url("ops HTTP:"), headers=headers
                ) as client:
                    assert (await client.get("/v1/dead-letters")).json()["dead_letters"] == []
    assert [m["id"] for m in emulator.sent] == ["ghost-1"]
    assert emulator.stats["duplicates"] == 0


async def _send(client: httpx.AsyncClient, key: str, *, peer: str = "user-1") -> httpx.Response:
    return await client.post(
        "/v1/channels/ws/messages", json={"peer": peer, "idempotency_key": key, "text": key}
    )


async def _replay(client: httpx.AsyncClient, letter: int, into: list[int]) -> None:
    answer = await client.post("/v1/channels/ws/dead-letters/replay", json={"ids": [letter]})
    into.append(answer.json()["replayed"])


# --- a stale writer cannot overwrite a newer checkpoint ---------------------------------------


async def test_a_stale_node_is_fenced_by_a_newer_one(tmp_path: Path, durable: Durable) -> None:
    emulator = WebSocketEmulator(tokens={WS_TOKEN})
    with trio.fail_after(CEILING):
        async with open_emulator(emulator) as base:
            ws = base.replace("http", "ws") + "/ws"
            channels = f"""
[[channels]]
id = "ws"
provider = "websocket"
base_url = "{ws}"
credentials = {{ token = "${{env:SB_KILL_WS_TOKEN}}" }}
"""
            (tmp_path / "a").mkdir()
            (tmp_path / "b").mkdir()
            first = node_file(tmp_path / "a", durable, channels)
            second = node_file(tmp_path / "b", durable, channels)
            async with run_node(first, ENV) as stale:
                await stale.wait_output(r"channels:\s+1/1 started")
                await connected(stale)
                async with run_node(second, ENV) as newer:
                    await newer.wait_output(r"channels:\s+1/1 started")
                    for _ in range(400):  # the newer node has written its checkpoint
                        tokens = await durable.query(
                            "SELECT owner_token FROM channel_checkpoints WHERE channel_id = 'ws'"
                        )
                        if tokens and tokens[0][0] == 2:
                            break
                        await trio.sleep(0.05)
                    # The stale node's next change (a send moves its limiter) is
                    # written with its older token: refused, reported, stopped.
                    async with httpx.AsyncClient(
                        base_url=stale.url("ops HTTP:"),
                        headers={"Authorization": f"Bearer {API_TOKEN}"},
                    ) as client:
                        await _send(client, "from-the-stale-node")
                    await stale.wait_output(r"was refused: another owner wrote it", stream="err")
                    rows = await durable.query(
                        "SELECT owner_token FROM channel_checkpoints WHERE channel_id = 'ws'"
                    )
                    await trio.sleep(1.0)  # more rounds: the stale node writes nothing more
                    again = await durable.query(
                        "SELECT owner_token FROM channel_checkpoints WHERE channel_id = 'ws'"
                    )
                    await kill(newer)
                await kill(stale)
    assert rows == again
    assert rows[0][0] == 2  # the newer node's token
    records = [r for r in stale.log_records() if "was refused" in r.get("message", "")]
    assert len(records) == 1
    assert json.dumps(records[0]).count("no longer owns the channel") == 1


# --- kept messages: a kill during the next start's resend loses none (issue 11) ----------------

KEPT = 6


async def test_a_kill_during_the_resend_of_kept_messages_loses_none(
    tmp_path: Path, durable: Durable
) -> None:
    """Kept messages leave the store only once the platform took them (or dead-lettered them)."""
    emulator = WebSocketEmulator(tokens={WS_TOKEN})
    keys = [f"kept-{n}" for n in range(KEPT)]
    with trio.fail_after(CEILING):
        async with open_store(durable.config) as store:  # what a drain kept at a deadline
            await store.keep_outbound(
                [
                    KeptMessage(
                        channel_id="ws",
                        message=OutboundMessage(peer=f"user-{n}", idempotency_key=key, text=key),
                        reason="not sent by the drain deadline (3 s)",
                        accepted_at=1_700_000_000.0 + n,
                    )
                    for n, key in enumerate(keys)
                ]
            )
        async with open_emulator(emulator) as base:
            ws = base.replace("http", "ws") + "/ws"
            path = node_file(
                tmp_path,
                durable,
                f"""
[[channels]]
id = "ws"
provider = "websocket"
base_url = "{ws}"
credentials = {{ token = "${{env:SB_KILL_WS_TOKEN}}" }}
""",
            )
            # The next start resends them to a platform that answers nothing,
            # and is killed while they are on their way.
            await emulator.platform_fault({"kind": "silence"})
            async with run_node(path, ENV) as node:
                await node.wait_output(rf"resending {KEPT} message\(s\)", stream="err")
                await kill(node)
            assert not emulator.sent
            assert await durable.query("SELECT count(*) FROM kept_outbound") == [(KEPT,)]

            await emulator.platform_fault({"kind": "resume"})
            async with run_node(path, ENV) as node:
                await poll(lambda: {m["id"] for m in emulator.sent} >= set(keys))
                assert await node.stop(signal.SIGTERM) == 0, node.err
            assert await durable.query("SELECT count(*) FROM kept_outbound") == [(0,)]
    assert sorted(m["id"] for m in emulator.sent) == sorted(keys)
