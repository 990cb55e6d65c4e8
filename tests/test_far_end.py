"""The lean far end (:mod:`bench.far_end`) speaks the websocket emulator's protocol.

One script of frames goes to the hypercorn emulator (in this process) and to
the lean far end (a process of its own, as the benchmark runs it), and both
must answer with the same frames, byte for byte and in the same order. Then
a node's websocket channels connect to lean far ends and send through them
(real sockets, short real ceilings, no MockClock: virtual time and real
sockets do not mix).
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from bench.channels import ChannelsParams
from bench.rig import FarEndProcess, far_end_of, open_far_end_process, open_rig
from bench.scenario import ScenarioError
from bench.storm import StormParams
from providers.base import InboundMessage
from providers.emulators.base import open_emulator
from providers.emulators.latency import MAX_LATENCY
from providers.emulators.websocket import WebSocketEmulator

CEILING = 30.0  # seconds; only a hang gets near it
TOKEN = "token-1"
HEARTBEAT = 15.0  # seconds, both ends' default: no heartbeat interleaves with the script

# Sent in order on one connection; every answer of both ends is compared.
SCRIPT = (
    '{"type":"send","id":"k1","peer":"user-1","text":"hello"}',
    '{"type":"send","id":"k1","peer":"user-1","text":"hello"}',  # a resend: the same id
    '{"type":"heartbeat_ack"}',  # answered by nothing
    '{"type":"send","id":"k2","peer":"user-2","text":"' + "x" * 16_385 + '"}',
    '{"type":"send","id":"k3","peer":"user-1"}',
    '{"type":"send","id":"k4","peer":"","text":"hi"}',
    "not json",
    '{"type":"send","peer":"user-1","text":"no id"}',
    '{"type":"hello"}',
    '{"type":"send","id":"k5","peer":"user-3","media":{"kind":"image","data":"!!"}}',
    '{"type":"send","id":"k6","peer":"user-3","media":{"kind":"image","url":"http://x/a.png"}}',
    '{"type":"send","id":"k7","peer":"user-4","text":"caf\\u00e9 \\ud83d\\ude00"}',
    '{"type":"send","id":"k\\"8","peer":"us\u00e9r/\\"9","text":"quoted"}',
    ' {"type":"send","id":"k9","peer":"user-1","text":"spaced"}\n',
    '{"type":"send","id":"k10","peer":"user-1","text":"trailing"} x',
    '{"type":"send","id":"k11","peer":"user-1","text":"\\ud800"}',
    '{"type":"send","id":"end","peer":"user-1","text":"the last"}',
)
LAST_ACK = '{"type":"ack","id":"end","message_id":"out-7"}'

End = Callable[..., AbstractAsyncContextManager[FarEndProcess]]


@asynccontextmanager
async def emulator_end(
    heartbeat_interval: float = HEARTBEAT, latency: float = 0.0
) -> AsyncIterator[FarEndProcess]:
    """The hypercorn websocket emulator, in this process."""
    emulator = WebSocketEmulator(heartbeat_interval=heartbeat_interval)
    emulator.latency = latency
    async with open_emulator(emulator) as url:
        ws_url = url.replace("http://", "ws://", 1) + "/ws"
        yield FarEndProcess(channel_url=ws_url, control_url=url, pid=os.getpid())


@asynccontextmanager
async def lean_end(
    heartbeat_interval: float = HEARTBEAT, latency: float = 0.0
) -> AsyncIterator[FarEndProcess]:
    """The lean far end, in a process of its own."""
    async with open_far_end_process(
        heartbeat_interval=heartbeat_interval, latency=latency
    ) as far_end:
        yield far_end


ENDS: dict[str, End] = {"emulator": emulator_end, "lean": lean_end}


async def _transcript(end: FarEndProcess) -> list[Any]:
    """Everything one end answers to the script, the control API's answers included."""
    seen: list[Any] = []
    async with httpx.AsyncClient(base_url=end.control_url) as http:
        early = {"token": TOKEN, "text": "early", "peer": "user-9", "timestamp": 1.0}
        answer = await http.post("/_emulator/inject", json=early)  # nobody connected: queued
        seen.append((answer.status_code, answer.json()))
        async with open_websocket_url(f"{end.channel_url}?token={TOKEN}") as ws:
            seen += [await ws.get_message(), await ws.get_message()]  # ready, then the backlog
            for frame in SCRIPT:
                await ws.send_message(frame)
            while not seen or seen[-1] != LAST_ACK:
                seen.append(await ws.get_message())
            seen.append(await ws.get_message())  # the last receipt
            await ws.ping(b"are you there")  # returns once the pong came
            for payload in (
                {"text": "a user writes", "peer": "user-5", "timestamp": 2.0},
                {"text": "to a token", "peer": "user-5", "id": "in-x", "token": TOKEN},
                {"type": "edit", "id": "in-x", "peer": "user-5", "sender": "u", "text": "t"},
            ):
                answer = await http.post("/_emulator/inject", json=payload)
                seen.append((answer.status_code, _wall_clock_out(answer.text)))
                seen.append(_wall_clock_out(await ws.get_message()))
    return seen


def _wall_clock_out(text: str) -> str:
    """``text`` with a made-up timestamp's value taken out (the one field that differs)."""
    return re.sub(r'"timestamp": ?[0-9.e+-]{5,}', '"timestamp":T', text)


async def test_both_ends_answer_the_script_with_the_same_frames() -> None:
    with trio.fail_after(CEILING):
        async with emulator_end() as emulator:
            expected = await _transcript(emulator)
        async with lean_end() as lean:
            got = await _transcript(lean)
    assert got == expected
    # and the script exercised what the benchmark relies on
    assert expected[1] == '{"type":"ready","session":"s-1"}'
    assert '{"type":"ack","id":"k1","message_id":"out-1"}' in expected
    assert expected.count('{"type":"ack","id":"k1","message_id":"out-1"}') == 2
    assert '{"type":"receipt","id":"out-1","peer":"user-1","status":"delivered"}' in expected
    errors = [f for f in expected if isinstance(f, str) and f.startswith('{"type":"error"')]
    assert len(errors) == 8  # too_long, bad_recipient, bad_request with an id or without


async def test_both_ends_answer_the_script_alike_under_latency() -> None:
    # The same frames in the same order as without latency: held answers keep
    # their order, and what the platform sends on its own (the injected
    # messages) is not held behind them.
    with trio.fail_after(CEILING):
        async with emulator_end() as emulator:
            expected = await _transcript(emulator)
        async with emulator_end(latency=0.05) as emulator:
            held = await _transcript(emulator)
        async with lean_end(latency=0.05) as lean:
            got = await _transcript(lean)
    assert held == expected
    assert got == expected


@pytest.mark.parametrize("name", list(ENDS))
async def test_a_held_answer_comes_behind_what_the_platform_sends_on_its_own(name: str) -> None:
    # Real sockets, so no clock is read: the order of the frames says it.
    # Without latency the ack and receipt come at once, ahead of a user's
    # message injected after them. With a latency far longer than any inject
    # takes, the ack stays held: a pong proves the far end has taken the send
    # (frames are taken in order), and the user's message injected after it
    # arrives first.
    async def inject(text: str) -> None:
        injected = {"text": text, "peer": "user-5", "timestamp": 2.0}
        assert (await http.post("/_emulator/inject", json=injected)).status_code == 200

    async def latency(seconds: float) -> None:
        answer = await http.post("/_emulator/fault", json={"kind": "latency", "seconds": seconds})
        assert answer.status_code == 200 and answer.json() == {"latency": seconds}

    with trio.fail_after(CEILING):
        async with (
            ENDS[name]() as end,
            httpx.AsyncClient(base_url=end.control_url) as http,
            open_websocket_url(f"{end.channel_url}?token={TOKEN}") as ws,
        ):
            assert await ws.get_message() == '{"type":"ready","session":"s-1"}'
            await latency(0)
            await ws.send_message('{"type":"send","id":"a","peer":"u","text":"t"}')
            unheld = [await ws.get_message(), await ws.get_message()]
            await inject("after a")
            unheld.append(await ws.get_message())
            await latency(MAX_LATENCY)
            await ws.send_message('{"type":"send","id":"b","peer":"u","text":"t"}')
            await ws.ping(b"taken?")  # returns once the pong came
            await inject("after b")
            held = await ws.get_message()
    acked, receipt, user = unheld
    assert acked == '{"type":"ack","id":"a","message_id":"out-1"}'
    assert receipt.startswith('{"type":"receipt","id":"out-1"')
    assert '"type":"message"' in user and '"text":"after a"' in user
    assert '"type":"message"' in held and '"text":"after b"' in held  # b's ack is held


@pytest.mark.parametrize("name", list(ENDS))
async def test_a_client_without_a_token_is_refused_alike(name: str) -> None:
    with trio.fail_after(CEILING):
        async with ENDS[name]() as end, open_websocket_url(end.channel_url) as ws:
            frame = await ws.get_message()
            with pytest.raises(ConnectionClosed) as closed:
                await ws.get_message()
    assert frame == '{"type":"error","code":"unauthorized","message":"unknown token"}'
    assert (closed.value.reason.code, closed.value.reason.reason) == (4001, "unauthorized")


@pytest.mark.parametrize("name", list(ENDS))
async def test_heartbeats_follow_ready_alike(name: str) -> None:
    with trio.fail_after(CEILING):
        async with (
            ENDS[name](heartbeat_interval=0.05) as end,
            open_websocket_url(f"{end.channel_url}?token={TOKEN}") as ws,
        ):
            frames = [await ws.get_message() for _ in range(3)]
    assert frames == ['{"type":"ready","session":"s-1"}', *['{"type":"heartbeat"}'] * 2]


async def test_the_lean_end_counts_heartbeats_and_their_acks() -> None:
    # What the channels bench's idle window reads to check that both of its
    # windows saw the same heartbeats.
    with trio.fail_after(CEILING):
        async with (
            lean_end(heartbeat_interval=0.05) as end,
            httpx.AsyncClient(base_url=end.control_url) as http,
            open_websocket_url(f"{end.channel_url}?token={TOKEN}") as ws,
        ):
            assert await ws.get_message() == '{"type":"ready","session":"s-1"}'
            for _ in range(2):
                assert await ws.get_message() == '{"type":"heartbeat"}'
                await ws.send_message('{"type":"heartbeat_ack"}')
            await ws.send_message("not json")  # answered after the acks were read
            while (frame := await ws.get_message()) == '{"type":"heartbeat"}':
                pass
            stats = (await http.get("/_emulator/stats")).json()
    assert frame.startswith('{"type":"error","code":"bad_request"')
    assert stats["heartbeat_acks"] == 2 and stats["heartbeats"] >= 2
    assert stats["frames_received"] == 1  # the acks are not frames to answer


async def test_the_lean_end_refuses_what_it_does_not_serve_out_loud() -> None:
    with trio.fail_after(CEILING):
        async with (
            lean_end() as end,
            httpx.AsyncClient(base_url=end.control_url) as http,
            open_websocket_url(f"{end.channel_url}?token={TOKEN}") as ws,
        ):
            await ws.get_message()  # ready
            await ws.send_message('{"type":"typing","id":"t1","peer":"user-1","action":"typing"}')
            frame = await ws.get_message()
            fault = await http.post("/_emulator/fault", json={"kind": "silence"})
            sent = await http.get("/_emulator/sent")
            stats = (await http.get("/_emulator/stats")).json()
    assert frame.startswith('{"type":"error","code":"unsupported","message":"the lean far end')
    assert frame.endswith('"id":"t1","peer":"user-1"}')
    assert (fault.status_code, sent.status_code) == (501, 501)
    assert "'silence'" in fault.json()["error"] and "--far-end emulator" in fault.json()["error"]
    assert stats["errors_unsupported"] == 1 and stats["connections"] == 1


async def _drops(end: FarEndProcess) -> list[Any]:
    """What one end answers to drops and closes: the control API's answers, and
    each dropped client's close code and reason (or the frame it got instead).

    Every fault but the first names a token of its own, so that a connection
    closed earlier and not yet gone from the end's books cannot be counted.
    """
    seen: list[Any] = []

    async def fault(http: httpx.AsyncClient, **payload: Any) -> None:
        answer = await http.post("/_emulator/fault", json=payload)
        seen.append((payload, answer.status_code, answer.json()))

    async def closed(ws: WebSocketConnection) -> None:
        try:
            seen.append(await ws.get_message())  # nothing: a frame here is a difference
        except ConnectionClosed as exc:
            seen.append((exc.reason.code, exc.reason.reason))

    async with (
        httpx.AsyncClient(base_url=end.control_url) as http,
        open_websocket_url(f"{end.channel_url}?token=token-x") as x,
    ):
        seen.append(await x.get_message())  # ready
        await fault(http, kind="drop")  # every connection: the one there is
        await closed(x)
    async with (
        httpx.AsyncClient(base_url=end.control_url) as http,
        open_websocket_url(f"{end.channel_url}?token=token-a") as a,
        open_websocket_url(f"{end.channel_url}?token=token-b") as b,
    ):
        seen += [await a.get_message(), await b.get_message()]  # ready, ready
        await fault(http, kind="drop", token="token-z")  # nobody has it
        await fault(http, kind="close", code=999, token="token-a")  # refused: not a close code
        await fault(http, kind="close", code="4000", token="token-a")  # nor a string
        await fault(http, kind="drop", token="token-b")
        await closed(b)
        await fault(http, kind="close", code=4000, reason="bye", token="token-a")
        await closed(a)
        stats = (await http.get("/_emulator/stats")).json()
    seen.append({k: stats.get(k) for k in ("fault_drop", "fault_close", "connections")})
    return seen


async def test_both_ends_answer_drops_and_closes_alike() -> None:
    # What the storm bench does (a drop of every connection), and the close
    # fault beside it: the same answers, close codes and reasons from both.
    with trio.fail_after(CEILING):
        async with emulator_end() as emulator:
            expected = await _drops(emulator)
        async with lean_end() as lean:
            got = await _drops(lean)
    assert got == expected
    dropped = (1001, "dropped by the emulator")
    assert expected[1:3] == [({"kind": "drop"}, 200, {"closed": 1, "code": 1001}), dropped]
    assert expected[5][1:] == (200, {"closed": 0, "code": 1001})
    assert expected[6][1] == expected[7][1] == 400
    assert expected[8:10] == [
        ({"kind": "drop", "token": "token-b"}, 200, {"closed": 1, "code": 1001}),
        dropped,
    ]
    assert expected[10][1:] == (200, {"closed": 1, "code": 4000})
    assert expected[11] == (4000, "bye")
    assert expected[-1] == {"fault_drop": 3, "fault_close": 1, "connections": 3}


async def test_a_node_sends_through_two_lean_far_end_processes() -> None:
    with trio.fail_after(CEILING):
        async with open_rig(
            "websocket", external=True, limits=False, far_end="lean", emulator_processes=2
        ) as rig:
            await rig.start_channels(4)
            await rig.states.wait_connected(4)
            ids = []
            for i in range(8):
                message = rig.message(i, f"k{i}", "hello")
                result = await rig.node.send(rig.channel_ids[i % 4], message)
                ids.append(result.platform_message_id)
            with rig.node.subscribe(kind="inbound") as events:
                assert rig.emulator is not None
                injected = await rig.emulator.inject(text="a user writes", peer="user-7")
                texts = []
                async for event in events:
                    assert isinstance(event.event, InboundMessage)
                    texts.append((event.event.channel_id, event.event.text))
                    if len(texts) == 4:
                        break
            stats = await rig.emulator.stats()
            cpu = rig.emulator.cpu_seconds()
            with pytest.raises(ScenarioError, match="501"):
                await rig.emulator.fault(kind="silence")
            dropped = await rig.emulator.fault(kind="drop")  # what the storm bench does
            await rig.states.wait_connects(8)  # every channel once more
            await rig.states.wait_connected(4)
    assert injected["delivered_to"] == 4
    assert sorted(texts) == [(c, "a user writes") for c in rig.channel_ids]
    # channels 0 and 2 on the first process, 1 and 3 on the second: ids never collide
    assert ids == [
        *("out-1", "out-1000000000001", "out-2", "out-1000000000002"),
        *("out-3", "out-1000000000003", "out-4", "out-1000000000004"),
    ]
    assert stats["messages_sent"] == 8 and stats["connections"] == 4
    assert cpu is not None and cpu > 0
    assert dropped["closed"] == 4 and dropped["code"] == 1001  # summed over the processes
    assert [a["closed"] for a in dropped["processes"]] == [2, 2]
    assert "lean websocket far end" in rig.far_end and "2 processes" in rig.far_end


@pytest.mark.parametrize(
    ("provider", "external", "far_end", "processes", "expected"),
    [
        ("websocket", True, "auto", 1, "lean"),
        ("discord", True, "auto", 3, "emulator"),
        ("whatsapp", True, "auto", 2, "emulator"),  # webhooks wired once a channel is up
        ("websocket", False, "auto", 1, "emulator"),
        ("discord", True, "lean", 1, ScenarioError),
        ("websocket", False, "lean", 1, ScenarioError),
        ("websocket", False, "emulator", 2, ScenarioError),
        ("websocket", True, "picows", 1, ScenarioError),
    ],
)
def test_which_far_end_a_run_gets(
    provider: str, external: bool, far_end: str, processes: int, expected: Any
) -> None:
    if isinstance(expected, str):
        got = far_end_of(provider, external=external, far_end=far_end, processes=processes)
        assert got == expected
    else:
        with pytest.raises(expected):
            far_end_of(provider, external=external, far_end=far_end, processes=processes)


@pytest.mark.parametrize("name", list(ENDS))
async def test_a_client_close_is_answered_with_its_code(name: str) -> None:
    with trio.fail_after(CEILING):
        async with (
            ENDS[name]() as end,
            open_websocket_url(f"{end.channel_url}?token={TOKEN}") as ws,
        ):
            await ws.get_message()  # ready
            await ws.aclose(code=4000, reason="bye")
    assert ws.closed is not None and ws.closed.code == 4000


@pytest.mark.parametrize("params", [ChannelsParams, StormParams])
def test_the_scenarios_with_far_ends_take_the_same_far_end_parameters(params: Any) -> None:
    assert (params().far_end, params().emulator_processes) == ("auto", 1)
    assert params(far_end="emulator", emulator_processes=2).far_end == "emulator"
    with pytest.raises(ValueError, match="far_end: expected one of auto, lean, emulator"):
        params(far_end="picows")
    with pytest.raises(ValueError, match="emulator_processes: expected at least 1"):
        params(emulator_processes=0)


async def test_a_whatsapp_emulator_process_posts_its_statuses_to_the_node() -> None:
    # Out of the node's process, the rig wires the emulator's webhooks to the
    # node's ops server once a channel is up: a send's statuses come back as receipts.
    with trio.fail_after(CEILING):
        async with open_rig("whatsapp", external=True, limits=False) as rig:
            await rig.start_channels(2)
            await rig.states.wait_connected(2)
            await rig.wire_webhooks()
            await rig.wire_webhooks()  # once is enough: the second changes nothing
            with rig.node.subscribe(kind="receipt") as events:
                for i in range(2):
                    await rig.node.send(rig.channel_ids[i], rig.message(i, f"k{i}", "hello"))
                receipts = []
                async for event in events:
                    receipts.append(event.event.channel_id)
                    if len(receipts) == 6:  # sent, delivered, read for each
                        break
            assert rig.emulator is not None
            stats = await rig.emulator.stats()
            while stats.get("webhooks_delivered", 0) < 6 and "webhooks_refused" not in stats:
                # The node publishes a status as it keeps it, then answers 200: the
                # last answer may still be on its way back to the emulator's count.
                stats = await rig.emulator.stats()
    assert sorted(receipts) == sorted(rig.channel_ids * 3)
    assert stats["webhooks_delivered"] == 6 and "webhooks_refused" not in stats
    assert "in processes of their own" in rig.far_end
