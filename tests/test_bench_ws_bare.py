"""``python -m bench.ws_bare send|memory``: the bare clients speak the emulator's protocol.

The clients run as the channels scenario runs them, a fresh process, against
an in-process emulator with a tiny load. The figures (CPU, latency, memory)
are measured, not asserted; these check the account: every send acked or
counted as an error, the heartbeats answered (by the send client and by the
idle memory client), and the frames the emulator recorded are the node's
send frames.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Final

import trio

from providers.emulators.base import open_emulator
from providers.emulators.websocket import WebSocketEmulator

ROOT: Final = Path(__file__).resolve().parent.parent
HANG_CEILING: Final = 120.0  # seconds; a tiny run takes about one, more on a loaded machine
FIELDS: Final = {
    "client",
    "await_each",
    "workers",
    "connections",
    "rate",
    "duration",
    "text_size",
    "scheduled",
    "acked",
    "errors",
    "other_frames",
    "unanswered",
    "connections_lost",
    "cpu_seconds",
    "cpu_per_message",
    "p50",
    "p90",
    "p99",
    "elapsed",
}


async def _send(emulator: WebSocketEmulator, *args: str) -> list[dict[str, Any]]:
    return await _ws_bare(emulator, "send", *args)


async def _ws_bare(
    emulator: WebSocketEmulator, command_name: str, *args: str
) -> list[dict[str, Any]]:
    with trio.fail_after(HANG_CEILING):
        async with open_emulator(emulator) as base:
            url = base.replace("http://", "ws://", 1) + "/ws"
            command = [sys.executable, "-m", "bench.ws_bare", command_name, url, *args]
            proc = await trio.run_process(
                command, cwd=ROOT, capture_stdout=True, capture_stderr=True, check=False
            )
            # The client has exited; its last frames may still wait in the
            # emulator's sockets. Each connection ends once they were read.
            await emulator.holders.wait_none_live()
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    return [json.loads(line) for line in proc.stdout.decode().splitlines()]


async def test_every_send_is_acked_and_every_heartbeat_answered() -> None:
    # Heartbeats every 100 ms; the emulator counts the answers it gets, so
    # the test judges counts, not how fast a loaded machine answers.
    emulator = WebSocketEmulator(heartbeat_interval=0.1, client_timeout=None)
    lines = await _send(
        emulator, "--connections", "3", "--rates", "3,40", "--duration", "1.5", "--text-size", "7"
    )
    assert [line["rate"] for line in lines] == [3.0, 40.0]
    for line in lines:
        assert set(line) == FIELDS
        assert line["connections"] == 3 and line["text_size"] == 7
        assert line["scheduled"] == int(line["rate"] * 1.5)
        assert line["acked"] == line["scheduled"], line
        assert line["errors"] == {} and line["unanswered"] == line["connections_lost"] == 0
        assert set(line["other_frames"]) <= {"receipt"}  # a last one may come after the step
        assert 0 < line["p50"] <= line["p90"] <= line["p99"]
        assert line["cpu_per_message"] == line["cpu_seconds"] / line["acked"]
        assert "wsproto" in line["client"]
        assert line["await_each"] is False and line["workers"] == 0  # no task waits on a send
    assert emulator.stats["heartbeat_acks"] >= 3  # at least one for each connection
    assert emulator.stats["connections"] == 3
    sent = emulator.sent
    assert len(sent) == 4 + 60
    assert {m["token"] for m in sent} == {"bare-00000", "bare-00001", "bare-00002"}
    assert len({m["id"] for m in sent}) == len(sent)  # one idempotency key per message
    assert {m["text"] for m in sent} == {"xxxxxxx"}
    assert all(m["peer"].startswith("user-") for m in sent)


async def test_an_error_frame_answers_its_send_and_is_counted_by_code() -> None:
    emulator = WebSocketEmulator(heartbeat_interval=None)
    emulator.failing_sends = [{"code": "rate_limited", "retry_after": 1.0}] * 2
    (line,) = await _send(emulator, "--connections", "2", "--rates", "20", "--duration", "0.5")
    assert line["scheduled"] == 10
    assert line["errors"] == {"rate_limited": 2}
    assert line["acked"] == 8 and line["unanswered"] == 0


async def test_await_each_sends_from_workers_that_each_wait_for_their_ack() -> None:
    # The harness the channels bench drives the node with: a worker per send in
    # flight, woken by its ack or its error frame (an error that did not wake its
    # worker would leave the step waiting until the hang ceiling).
    emulator = WebSocketEmulator(heartbeat_interval=None)
    emulator.failing_sends = [{"code": "rate_limited", "retry_after": 1.0}] * 3
    lines = await _send(
        emulator, "--connections", "2", "--rates", "20,60", "--duration", "0.5", "--await-each"
    )
    assert [line["rate"] for line in lines] == [20.0, 60.0]
    for line in lines:
        assert set(line) == FIELDS
        assert line["await_each"] is True and "awaiting each ack" in line["client"]
        assert line["workers"] >= 1
        assert line["unanswered"] == line["connections_lost"] == 0
    assert sum(sum(line["errors"].values()) for line in lines) == 3
    assert sum(line["acked"] for line in lines) == 10 + 30 - 3
    assert len(emulator.sent) == 10 + 30 - 3  # (a refused send is not recorded as sent)


async def test_the_idle_memory_client_answers_heartbeats_and_measures_the_window() -> None:
    # Heartbeats every 100 ms over an idle window of 1.5 s: every one the client
    # says it answered in the window reached the emulator (counts, not timing).
    emulator = WebSocketEmulator(heartbeat_interval=0.1, client_timeout=None)
    (line,) = await _ws_bare(emulator, "memory", "3", "--idle", "1.5")
    assert line["connections"] == 3 and line["connections_lost"] == 0
    assert line["idle_cpu_seconds"] > 0
    answered = line["idle_heartbeats_answered"]
    assert answered >= 1
    assert emulator.stats["heartbeat_acks"] >= answered
    assert emulator.stats["heartbeats"] >= emulator.stats["heartbeat_acks"]
    assert emulator.stats["connections"] == 3


async def test_the_memory_client_without_an_idle_window_measures_no_idle_cpu() -> None:
    emulator = WebSocketEmulator(heartbeat_interval=None)
    (line,) = await _ws_bare(emulator, "memory", "2")
    assert line["connections"] == 2 and line["per_connection"] == line["rss_delta"] / 2
    assert line["idle_seconds"] == 0.0 and line["idle_cpu_seconds"] is None
    # The connects' own CPU, the baseline for the node's CPU per connect.
    assert line["connect_cpu_seconds"] > 0
    assert line["cpu_per_connect"] == line["connect_cpu_seconds"] / 2


async def test_the_send_client_counts_its_task_steps_when_asked() -> None:
    # --task-steps: the bare client's trio task steps (and spawns) per acked
    # message, the count the node's is set beside (bench channels --task-steps).
    emulator = WebSocketEmulator(heartbeat_interval=None, client_timeout=None)
    lines = await _send(
        emulator, "--connections", "2", "--rates", "20", "--duration", "1", "--task-steps"
    )
    (line,) = lines
    assert set(line) == FIELDS | {"task_steps_per_message", "task_spawns_per_message"}
    assert line["acked"] == 20
    # Its writer and reader run for each message (and its pacer every 2 ms, which
    # at this light load is most of the count); it spawns no task per message.
    assert line["task_steps_per_message"] >= 2
    assert line["task_spawns_per_message"] < 1


class _OneChunk:
    """A stream that reads one chunk, then its end; writes go nowhere."""

    def __init__(self, chunk: bytes) -> None:
        self.chunks = [chunk]

    async def receive_some(self, size: int) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""

    async def send_all(self, data: bytes) -> None:
        pass


async def test_the_websockets_bare_client_takes_a_heartbeat_read_with_the_close() -> None:
    # The protocol parses the whole chunk first: it is closing by the time the
    # heartbeat is handled, and refuses to frame the heartbeat's ack.
    from websockets.client import ClientProtocol
    from websockets.protocol import State
    from websockets.uri import parse_uri

    from bench.ws_bare import _Session, _WebsocketsConnection

    heartbeat = json.dumps({"type": "heartbeat"}).encode()
    chunk = bytes([0x81, len(heartbeat)]) + heartbeat + b"\x88\x02\x03\xe8"  # then a close 1000
    connection = _WebsocketsConnection(_OneChunk(chunk), "t")  # type: ignore[arg-type]
    connection.protocol = ClientProtocol(parse_uri("ws://h/"), state=State.OPEN)
    assert await connection.receive(_Session()) is False  # over, without raising
    assert connection.closed
