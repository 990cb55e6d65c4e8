"""An emulator's latency: answers held back a round trip, in order, on virtual time.

The emulators' ASGI apps (as served: behind the latency and the HTTP faults)
run in memory here, an HTTP one through ``httpx.ASGITransport`` and the
websocket one through a few lines of ASGI, so the autojump clock keeps exact
virtual times (no sockets, no wall clock). The lean far end's latency, in a
process of its own, is in ``tests/test_far_end.py``.
"""

from __future__ import annotations

import argparse
import json
import re
from typing import Any, Final

import httpx
import pytest
import trio
import trio.testing

from bench.channels import ChannelsParams
from bench.far_end import Platform
from bench.platforms import PLATFORMS, PlatformsSpec
from bench.platforms import _converter as _platform_spec_converter
from bench.platforms import _emulators as _platform_emulators
from bench.scenario import add_param_options
from providers.emulators.telegram import TelegramEmulator
from providers.emulators.websocket import WebSocketEmulator
from runtime.cli import main as switchboard

TOKEN: Final = "123456:" + "A" * 35
BASE: Final = "http://emulator.in-memory"  # never resolved: the transport is in memory
CEILING: Final = 30.0  # virtual seconds; only a hang gets near it


def _client(emulator: TelegramEmulator) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=emulator.served_app), base_url=BASE)


@pytest.mark.parametrize("latency", [0.0, 0.15])
async def test_an_http_answer_leaves_the_latency_later(
    latency: float, autojump_clock: trio.testing.MockClock
) -> None:
    emulator = TelegramEmulator()
    with trio.fail_after(CEILING):
        async with _client(emulator) as client:
            began = trio.current_time()
            setting = await client.post(
                "/_emulator/fault", json={"kind": "latency", "seconds": latency}
            )
            set_at = trio.current_time()
            answer = await client.get(f"/bot{TOKEN}/getMe")
            answered_at = trio.current_time()
    assert setting.status_code == 200 and setting.json() == {"latency": latency}
    assert set_at == began  # the control API is the rig's: never held back
    assert answer.status_code == 200 and answer.json()["ok"] is True
    assert answered_at - set_at == pytest.approx(latency, abs=1e-9)  # 0 adds nothing


class _Socket:
    """One websocket connection to an ASGI app, in memory: what it sent and when."""

    def __init__(self, token: str) -> None:
        self.scope = {
            "type": "websocket",
            "asgi": {"version": "3.0"},
            "scheme": "ws",
            "server": ("127.0.0.1", 80),
            "client": ("127.0.0.1", 50000),
            "path": "/ws",
            "raw_path": b"/ws",
            "root_path": "",
            "query_string": f"token={token}".encode(),
            "headers": [],
            "subprotocols": [],
        }
        self._to_app, self._from_client = trio.open_memory_channel[dict[str, Any]](100)
        self.seen: list[tuple[float, str]] = []  # (trio time, frame or message type)
        self.ready = trio.Event()

    async def receive(self) -> dict[str, Any]:
        return await self._from_client.receive()

    async def send(self, message: Any) -> None:
        kind = message["type"]
        self.seen.append((trio.current_time(), message.get("text", kind)))
        if '"ready"' in message.get("text", ""):
            self.ready.set()

    def client_sends(self, text: str) -> None:
        self._to_app.send_nowait({"type": "websocket.receive", "text": text})

    def client_connects(self) -> None:
        self._to_app.send_nowait({"type": "websocket.connect"})

    def client_closes(self) -> None:
        self._to_app.send_nowait({"type": "websocket.disconnect", "code": 1000})


def _label(frame: str) -> str:
    """``websocket.accept``, or a frame's type (and an ack's key)."""
    if not frame.startswith("{"):
        return frame
    decoded = json.loads(frame)
    return f"ack {decoded['id']}" if decoded["type"] == "ack" else str(decoded["type"])


def _send(key: str) -> str:
    return '{"type":"send","id":"' + key + '","peer":"user-1","text":"hi"}'


async def _converse(latency: float) -> list[tuple[float, str]]:
    """Connect, send twice 50 ms apart (and a bad frame), get a user message injected
    100 ms after the first: every frame the emulator sent, at its virtual time since
    the connect."""
    emulator = WebSocketEmulator(heartbeat_interval=None)
    emulator.latency = latency
    socket = _Socket("t1")
    began = trio.current_time()
    with trio.fail_after(CEILING):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(emulator.served_app, socket.scope, socket.receive, socket.send)
            socket.client_connects()
            await socket.ready.wait()
            t0 = trio.current_time()
            socket.client_sends(_send("k1"))
            await trio.sleep_until(t0 + 0.05)
            socket.client_sends(_send("k2"))
            socket.client_sends("not json")
            await trio.sleep_until(t0 + 0.1)
            await emulator.inject({"text": "a user writes", "peer": "user-5", "timestamp": 1.0})
            await trio.sleep_until(t0 + 1.0)
            socket.client_closes()
    return [(t - began, frame) for t, frame in socket.seen]


async def test_a_websocket_answer_leaves_the_latency_later_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen = await _converse(0.15)
    kinds = [(round(t, 6), _label(frame)) for t, frame in seen]
    assert kinds == [
        (0.15, "websocket.accept"),  # the upgrade's answer is held back too
        (0.15, "ready"),
        (0.25, "message"),  # injected at 0.25: not an answer, not held
        (0.3, "ack k1"),  # k1 came at 0.15
        (0.3, "receipt"),
        (0.35, "ack k2"),  # k2 came at 0.2, after k1
        (0.35, "receipt"),
        (0.35, "error"),  # the bad frame's answer keeps its place
    ]


async def test_a_websocket_answer_is_immediate_without_latency(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with_latency = await _converse(0.15)
    without = await _converse(0.0)
    kinds = [(round(t, 6), _label(frame)) for t, frame in without]
    assert kinds == [
        (0.0, "websocket.accept"),
        (0.0, "ready"),
        (0.0, "ack k1"),
        (0.0, "receipt"),
        (0.05, "ack k2"),
        (0.05, "receipt"),
        (0.05, "error"),
        (0.1, "message"),
    ]
    # the same frames, byte for byte, only later (and the injected one in its own place)
    assert sorted(frame for _, frame in with_latency) == sorted(frame for _, frame in without)


@pytest.mark.parametrize(
    ("seconds", "says"),
    [
        (-0.1, "within 0..60 seconds"),
        ("0.15", "a number of seconds, not '0.15'"),
        (None, "a number of seconds, not None"),
        (True, "a number of seconds, not True"),
        (61, "within 0..60 seconds"),
    ],
)
async def test_a_bad_latency_is_refused_saying_what_and_where(seconds: Any, says: str) -> None:
    emulator = TelegramEmulator()
    async with _client(emulator) as client:
        payload = (
            {"kind": "latency"} if seconds is None else {"kind": "latency", "seconds": seconds}
        )
        answer = await client.post("/_emulator/fault", json=payload)
    assert answer.status_code == 400
    assert answer.json()["error"].startswith("latency needs 'seconds': ")
    assert says in answer.json()["error"]
    assert emulator.latency == 0.0
    with pytest.raises(ValueError, match=r"^telegram emulator latency: .*" + re.escape(says)):
        emulator.latency = seconds
    with pytest.raises(ValueError, match=r"^far end latency: "):
        Platform(latency=seconds)
    platform = Platform()
    status, body = platform.control("POST", "/_emulator/fault", _json(payload))
    assert status == 400 and body["error"] == answer.json()["error"]  # both ends alike


def _json(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode()


@pytest.mark.parametrize("rtt_ms", [-1.0, float("nan"), 60_001.0])
def test_a_bad_rtt_is_refused_by_the_bench_and_the_command_line(
    rtt_ms: float, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ValueError, match=r"rtt_ms \(--rtt\): expected milliseconds within 0\.\."):
        ChannelsParams(rtt_ms=rtt_ms)
    assert switchboard(["emulate", "websocket", "--rtt", str(rtt_ms)]) == 2
    assert "switchboard emulate: --rtt " in capsys.readouterr().err
    assert ChannelsParams(rtt_ms=150.0).rtt_ms == 150.0 and ChannelsParams().rtt_ms == 0.0


def test_the_platforms_whatsapp_emulator_knows_any_number_unless_told_which() -> None:
    # The default was an empty tuple, which the emulator read as "no number exists".
    for numbers, known in [(None, None), ((), set()), (("15550001",), {"15550001"})]:
        spec = PlatformsSpec() if numbers is None else PlatformsSpec(whatsapp_numbers=numbers)
        wire = json.dumps(_platform_spec_converter.unstructure(spec))
        through = _platform_spec_converter.structure(json.loads(wire), PlatformsSpec)
        assert _platform_emulators(through)["whatsapp"].phone_number_ids == known


def test_the_platforms_process_and_the_bench_options_carry_the_round_trip() -> None:
    emulators = _platform_emulators(PlatformsSpec(latency=0.15))
    assert {name: e.latency for name, e in emulators.items()} == dict.fromkeys(PLATFORMS, 0.15)
    assert {e.latency for e in _platform_emulators(PlatformsSpec()).values()} == {0.0}
    parser = argparse.ArgumentParser()
    add_param_options(parser, ChannelsParams)
    assert parser.parse_args(["--rtt", "150"]).param__rtt_ms == 150.0
    assert parser.parse_args(["--rtt-ms", "20"]).param__rtt_ms == 20.0
