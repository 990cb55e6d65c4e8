"""``switchboard run`` and ``switchboard check`` as a user runs them: subprocesses.

Real time and real sockets (the node is another process); every test has a
hard ceiling, and every wait polls a condition with a bound.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio

from providers.emulators.base import open_emulator
from providers.emulators.websocket import WebSocketEmulator

ROOT = Path(__file__).resolve().parent.parent
LOCAL = ROOT / "config" / "local.toml"
CEILING = 60.0  # seconds of real time per test; only a hang gets near it
POLL = 0.05  # seconds between polls of a condition


def switchboard() -> list[str]:
    script = Path(sys.executable).parent / "switchboard"
    if script.exists():
        return [str(script)]
    found = shutil.which("switchboard")
    assert found, "the switchboard console script is not installed (pip install -e .)"
    return [found]


@attrs.define
class Node:
    process: trio.Process
    stdout: bytearray = attrs.field(factory=bytearray)
    stderr: bytearray = attrs.field(factory=bytearray)

    @property
    def out(self) -> str:
        return self.stdout.decode(errors="replace")

    @property
    def err(self) -> str:
        return self.stderr.decode(errors="replace")

    def log_records(self) -> list[dict[str, Any]]:
        """The JSON log lines, their ECS objects as dotted keys (``log.logger``)."""
        records = []
        for line in self.err.splitlines():
            try:
                document = json.loads(line)
            except ValueError:
                continue
            if isinstance(document, dict):
                records.append(dotted(document))
        return records

    def url(self, label: str) -> str:
        match = re.search(rf"{re.escape(label)}\s+(http://\S+)", self.out)
        assert match, f"no {label!r} in the banner:\n{self.out}\n{self.err}"
        return match.group(1)

    async def wait_output(self, pattern: str, *, stream: str = "out", within: float = 30.0) -> str:
        with trio.move_on_after(within):
            while True:
                text = self.out if stream == "out" else self.err
                match = re.search(pattern, text)
                if match:
                    return match.group(0)
                if self.process.returncode is not None:
                    break
                await trio.sleep(POLL)
        raise AssertionError(f"{pattern!r} never appeared on std{stream}:\n{self.out}\n{self.err}")

    async def stop(self, signum: int = signal.SIGTERM) -> int:
        """Send ``signum`` and wait for the exit code (a hang ceiling, not a timing)."""
        self.process.send_signal(signum)
        with trio.fail_after(30):
            return await self.process.wait()

    def drain_report(self) -> str:
        """The node's one-line account of its drain (``runtime.drain.DrainReport``)."""
        (line,) = [r["message"] for r in self.log_records() if "drained in" in r["message"]]
        return str(line)


def dotted(document: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """An ECS log line's nested objects as dotted keys."""
    out: dict[str, Any] = {}
    for key, value in document.items():
        if isinstance(value, dict):
            out.update(dotted(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


async def poll(condition: Any, *, within: float = 30.0) -> None:
    """Wait until ``condition()`` holds, checking every POLL seconds, at most ``within``."""
    for _ in range(int(within / POLL)):
        if condition():
            return
        await trio.sleep(POLL)
    raise AssertionError(f"still not true after {within} s")


async def _pump(stream: Any, into: bytearray) -> None:
    async for chunk in stream:
        into.extend(chunk)


@asynccontextmanager
async def run_node(
    config: Path | str, env: dict[str, str] | None = None, args: Sequence[str] = ()
) -> AsyncIterator[Node]:
    process = await trio.lowlevel.open_process(
        [*switchboard(), "run", str(config), *args],
        stdout=-1,
        stderr=-1,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )
    node = Node(process)
    async with trio.open_nursery() as nursery:
        assert process.stdout is not None and process.stderr is not None
        nursery.start_soon(_pump, process.stdout, node.stdout)
        nursery.start_soon(_pump, process.stderr, node.stderr)
        try:
            yield node
        finally:
            if process.returncode is None:
                process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()


async def run_command(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = await trio.run_process(
        [*switchboard(), *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


async def wait_health(base: str, predicate: Any, *, within: float = 30.0) -> dict[str, Any]:
    last: Any = None
    async with httpx.AsyncClient(base_url=base, timeout=5.0) as client:
        with trio.move_on_after(within):
            while True:
                try:
                    response = await client.get("/health")
                    last = response.json()
                    if predicate(last):
                        return last  # type: ignore[no-any-return]
                except httpx.TransportError as exc:
                    last = exc
                await trio.sleep(POLL)
    raise AssertionError(f"/health never satisfied the test; last answer: {last}")


# --- the README's main command ----------------------------------------------------------


INJECT = {
    "discord": ("discord emulator:", {"channel_id": "123", "content": "hello discord"}),
    "telegram": ("telegram emulator:", {"chat_id": 42, "text": "hello telegram"}),
    "whatsapp": ("whatsapp emulator:", {"from": "16505551234", "text": "hello whatsapp"}),
    "websocket": ("websocket emulator:", {"peer": "user-1", "text": "hello websocket"}),
}


async def test_local_toml_connects_every_channel_logs_inbound_and_drains_on_sigterm() -> None:
    with trio.fail_after(CEILING):
        async with run_node(LOCAL) as node:
            await node.wait_output(r"channels:\s+4/4 started")
            ops = node.url("ops HTTP:")
            assert ops == "http://127.0.0.1:8321"
            health = await wait_health(
                ops, lambda h: h["status"] == "ok" and h["channels"]["started"] == 4
            )
            assert {name: p["connected"] for name, p in health["providers"].items()} == {
                "discord": 1,
                "telegram": 1,
                "whatsapp": 1,
                "websocket": 1,
            }
            async with httpx.AsyncClient(timeout=10.0) as client:
                for platform, (label, payload) in INJECT.items():
                    url = f"{node.url(label)}/_emulator/inject"
                    response = await client.post(url, json=payload)
                    assert response.status_code == 200, (platform, response.text)
            for _, payload in INJECT.values():
                text = payload.get("text") or payload.get("content")
                await node.wait_output(re.escape(str(text)), stream="err")
            inbound = [
                r
                for r in node.log_records()
                if r.get("log.logger") == "switchboard.events" and "inbound message" in r["message"]
            ]
            assert {r["switchboard.channel"] for r in inbound} == {f"{p}-local" for p in INJECT}
            assert all(
                r["switchboard.tenant"] == "demo" and r["service.node.name"] == "local"
                for r in inbound
            )
            # Every fact is a field: who wrote, where, and the platform's id.
            assert all(
                r["switchboard.message_id"] and r["switchboard.peer"] and r["user.id"]
                for r in inbound
            )
            code = await node.stop(signal.SIGTERM)
    assert code == 0, node.err
    assert "Traceback" not in node.err
    # Drained within config/local.toml's deadline: by the node's own account,
    # nothing was left to keep and no channel had to be killed at the deadline.
    report = node.drain_report()
    assert "(deadline 10 s): 0 send(s) in flight, 0 kept, 4 channel(s) stopped" in report
    assert "killed" not in report


# --- bad input --------------------------------------------------------------------------


BAD = """
[node]
id = "bad"
drain_deadline = -1

[ops]
port = "abc"

[logging]
levle = "info"

[[channels]]
id = "tg"
provider = "telegram"
credentials = { token = "SUPERSECRET-LITERAL-123" }

[[channels]]
id = "dc"
provider = "discord"
credentials = { token = "${env:SB_TEST_DISCORD_TOKEN}" }
rate_limit = { per_channel_rate = -5 }

[[channels]]
id = "wa"
provider = "whatsap"
credentials = { token = "${env:SB_TEST_MISSING_VARIABLE}" }
"""


async def test_a_bad_config_exits_2_with_every_problem_and_no_secret(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(BAD)
    env = {"SB_TEST_DISCORD_TOKEN": "TOPSECRET-FROM-ENV-456"}
    env_without = {k: v for k, v in os.environ.items() if k != "SB_TEST_MISSING_VARIABLE"}
    with trio.fail_after(CEILING):
        for command in ("run", "check"):
            result = await trio.run_process(
                [*switchboard(), command, str(path)],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                env={**env_without, **env},
                cwd=ROOT,
            )
            err = result.stderr.decode()
            assert result.returncode == 2, (command, err)
            assert "Traceback" not in err
            assert "SUPERSECRET-LITERAL-123" not in err + result.stdout.decode()
            assert "TOPSECRET-FROM-ENV-456" not in err + result.stdout.decode()
            for path_text in (
                "node.drain_deadline",
                "ops.port",
                "logging",
                "channels[0].credentials.token",
                "channels[1].rate_limit.per_channel_rate",
                "channels[2].provider",
                "channels[2].credentials.token",
            ):
                assert f"@ {path_text}" in err, (command, path_text, err)
            assert '"level"' in err  # the closest valid key for "levle"
            assert "SB_TEST_MISSING_VARIABLE" in err


async def test_check_warns_of_a_deprecated_key_and_passes(tmp_path: Path) -> None:
    path = tmp_path / "old.toml"
    path.write_text("[supervisor.restart_backoff]\nmin = 0.5\n")
    with trio.fail_after(CEILING):
        code, out, err = await run_command("check", str(path))
    assert code == 0, err
    assert "ok" in out
    assert "warning: supervisor.restart_backoff.min is deprecated: call it 'base'" in err


async def test_check_accepts_the_shipped_files() -> None:
    with trio.fail_after(CEILING):
        code, out, err = await run_command("check", str(LOCAL))
        assert code == 0, err
        assert "ok" in out
        example = ROOT / "config" / "production.example.toml"
        settings = "\n".join(
            line for line in example.read_text().splitlines() if not line.lstrip().startswith("#")
        )
        names = set(re.findall(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}", settings))
        assert len(names) >= 5
        code, out, err = await run_command(
            "check", str(example), env={name: f"dummy-{name.lower()}" for name in names}
        )
        assert code == 0, err
        assert "deprecated" not in err  # the shipped files speak the current vocabulary
        code, _, err = await run_command("check", str(example))
        missing = {name for name in names if name not in os.environ}
        assert code == 2
        assert all(name in err for name in missing)


# --- degraded startup -----------------------------------------------------------------------


DEGRADED = """
[node]
id = "degraded"
drain_deadline = 3.0
start_timeout = 5.0

[ops]
port = 0
api_token = "${env:SB_DEGRADED_API_TOKEN}"

[logging]
format = "json"

[emulators.websocket]
port = 0

[providers.websocket]
max_connections = 1

[[channels]]
id = "ws-1"
provider = "websocket"
emulator = true

[[channels]]
id = "ws-2"
provider = "websocket"
emulator = true
"""


async def test_a_channel_that_cannot_start_leaves_the_node_up_and_degraded(
    tmp_path: Path,
) -> None:
    path = tmp_path / "degraded.toml"
    path.write_text(DEGRADED)
    with trio.fail_after(CEILING):
        async with run_node(path, env={"SB_DEGRADED_API_TOKEN": "degraded-api-token"}) as node:
            await node.wait_output(r"channels:\s+1/2 started")
            ops = node.url("ops HTTP:")
            health = await wait_health(ops, lambda h: h["providers"]["websocket"]["connected"] == 1)
            assert (health["status"], health["problem_count"]) == ("degraded", 1)
            async with httpx.AsyncClient(base_url=ops) as client:
                bearer = {"Authorization": "Bearer degraded-api-token"}
                detail = await client.get("/health/detail", headers=bearer)
            problems = {p["channel"]: p["reason"] for p in detail.json()["problems"]}
            assert list(problems) == ["ws-2"]
            assert "providers.websocket.max_connections" in problems["ws-2"]
            async with httpx.AsyncClient(base_url=ops) as client:
                assert (await client.get("/readyz")).status_code == 200
            assert any("started 1/2 channels" in r["message"] for r in node.log_records())
            code = await node.stop(signal.SIGTERM)
    assert code == 0, node.err


# --- SIGTERM under load -----------------------------------------------------------------------


LOADED = """
[node]
id = "loaded"
drain_deadline = 2.0
start_timeout = 5.0

[storage]
backend = "sqlite"
path = "{database}"

[ops]
port = 0
api_token = "${{env:SB_TEST_API_TOKEN}}"

[logging]
format = "json"

[[channels]]
id = "ws"
provider = "websocket"
base_url = "{ws_url}"
credentials = {{ token = "${{env:SB_TEST_WS_TOKEN}}" }}

[channels.rate_limit]
per_channel_rate = "40/s"
per_channel_burst = 1
per_peer_rate = "40/s"
per_peer_burst = 1
"""

TOKEN, API_TOKEN, MESSAGES = "ws-test-token", "api-test-token", 200


async def test_sigterm_under_load_loses_nothing_accepted(tmp_path: Path) -> None:
    emulator = WebSocketEmulator(tokens={TOKEN})
    database = tmp_path / "node.sqlite3"
    env = {"SB_TEST_WS_TOKEN": TOKEN, "SB_TEST_API_TOKEN": API_TOKEN}
    outcomes: dict[str, tuple[int, dict[str, Any]]] = {}
    with trio.fail_after(CEILING * 2):
        async with open_emulator(emulator) as base_url:
            path = tmp_path / "loaded.toml"
            path.write_text(
                LOADED.format(database=database, ws_url=base_url.replace("http", "ws") + "/ws")
            )
            async with run_node(path, env) as node:
                await node.wait_output(r"channels:\s+1/1 started")
                ops = node.url("ops HTTP:")
                await wait_health(ops, lambda h: h["status"] == "ok")
                async with httpx.AsyncClient(
                    base_url=ops,
                    headers={"Authorization": f"Bearer {API_TOKEN}"},
                    limits=httpx.Limits(max_connections=MESSAGES + 10),
                    timeout=30.0,
                ) as client:
                    async with trio.open_nursery() as nursery:
                        for i in range(MESSAGES):
                            nursery.start_soon(_post, client, f"k{i}", outcomes)
                        await poll(lambda: sum(code == 200 for code, _ in outcomes.values()) >= 20)
                        code = await node.stop(signal.SIGTERM)
            assert code == 0, node.err
            delivered = {m["id"] for m in emulator.sent}
            kept = _kept_keys(database)
            ok = {k for k, (status, _) in outcomes.items() if status == 200}
            said_kept = {
                k
                for k, (status, body) in outcomes.items()
                if status == 503 and "kept for the next start" in body.get("message", "")
            }
            assert ok and said_kept, (len(ok), len(said_kept), node.err[-2000:])
            assert ok <= delivered
            assert said_kept <= kept | delivered
            assert kept <= {f"k{i}" for i in range(MESSAGES)}
            reported = " ".join(r["message"] for r in node.log_records())
            assert f"{len(kept)} message(s) not sent by the drain deadline" in reported
            # It stopped at its 2 s deadline with sends left over (40 msgs/s could
            # not send 200 in time), rather than waiting for them all.
            report = node.drain_report()
            assert kept and "(deadline 2 s): " in report and f", {len(kept)} kept, " in report

            # The next start sends what was kept; the platform drops the duplicates.
            async with run_node(path, env) as node:
                await poll(lambda: kept <= {m["id"] for m in emulator.sent})
                code = await node.stop(signal.SIGTERM)
            assert code == 0, node.err
            assert _kept_keys(database) == set()


async def _post(client: httpx.AsyncClient, key: str, into: dict[str, Any]) -> None:
    try:
        response = await client.post(
            "/v1/channels/ws/messages", json={"peer": "user-1", "idempotency_key": key, "text": key}
        )
    except httpx.TransportError:
        return  # the server went away before answering: nothing was promised
    try:
        body = response.json()
    except ValueError:
        body = {}
    into[key] = (response.status_code, body)


def _kept_keys(database: Path) -> set[str]:
    """The idempotency keys the node's SQLite store keeps for its next start."""
    with sqlite3.connect(database) as conn:
        rows = conn.execute("SELECT payload FROM kept_outbound").fetchall()
    return {json.loads(payload)["idempotency_key"] for (payload,) in rows}


@pytest.fixture(autouse=True)
def _no_leftover_env() -> None:
    for name in ("SB_TEST_MISSING_VARIABLE",):
        os.environ.pop(name, None)


async def test_a_busy_port_stops_the_node_with_one_clear_line(tmp_path: Path) -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    path = tmp_path / "busy.toml"
    path.write_text(f'[node]\nid = "busy"\n[ops]\nport = {port}\n[logging]\nformat = "text"\n')
    with trio.fail_after(CEILING), listener:
        code, _, err = await run_command("run", str(path))
    assert code == 1
    # One line, once: the address, why, and the setting to change; no repr, no traceback.
    (line,) = err.splitlines()
    assert line.endswith(
        f"[critical ] cannot start: cannot listen on 127.0.0.1:{port} for ops HTTP: address "
        "already in use; change ops.port, or stop what listens there [switchboard.node] "
        f"node=busy error.type=StartupFailed setting=ops.port server.address=127.0.0.1 "
        f"server.port={port}"
    ), line
    assert "Traceback" not in err and "ActorRef" not in err and "OSError" not in err


@pytest.mark.parametrize(("second", "exit_code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
async def test_a_second_signal_cuts_the_drain_short(
    tmp_path: Path, second: signal.Signals, exit_code: int
) -> None:
    emulator = WebSocketEmulator(tokens={TOKEN})
    env = {"SB_TEST_WS_TOKEN": TOKEN, "SB_TEST_API_TOKEN": API_TOKEN}
    outcomes: dict[str, tuple[int, dict[str, Any]]] = {}
    with trio.fail_after(CEILING):
        async with open_emulator(emulator) as base_url:
            path = tmp_path / "slow.toml"
            config = LOADED.format(
                database=tmp_path / "node.sqlite3", ws_url=base_url.replace("http", "ws") + "/ws"
            )
            path.write_text(config.replace("drain_deadline = 2.0", "drain_deadline = 30.0"))
            async with run_node(path, env) as node:
                await node.wait_output(r"channels:\s+1/1 started")
                ops = node.url("ops HTTP:")
                await wait_health(ops, lambda h: h["status"] == "ok")
                async with httpx.AsyncClient(
                    base_url=ops,
                    headers={"Authorization": f"Bearer {API_TOKEN}"},
                    limits=httpx.Limits(max_connections=MESSAGES + 10),
                    timeout=30.0,
                ) as client:
                    async with trio.open_nursery() as nursery:
                        for i in range(MESSAGES):
                            nursery.start_soon(_post, client, f"k{i}", outcomes)
                        await poll(lambda: len(outcomes) >= 5)
                        # The platform stops answering: the sends in flight cannot
                        # finish, so the drain could only end at its 30 s deadline.
                        await emulator.platform_fault({"kind": "silence"})
                        node.process.send_signal(signal.SIGTERM)
                        await node.wait_output("draining", stream="err")
                        code = await node.stop(second)
                        nursery.cancel_scope.cancel()
    assert code == exit_code, node.err[-2000:]  # 128 + the second signal
    assert "stopping at once" in node.err
    # Cut short: the drain never reported (it waited for sends that could not end).
    assert not [r for r in node.log_records() if "drained in" in r["message"]]
