"""Small defects an earlier fault run found, each with the test that shows it fixed:
a websocket receipt of an unknown status, a Discord Resume the gateway never
answers, the embedded API given arguments of the wrong type, a subscription of
the wrong filters or buffer, a text log line forged through an ``extra`` key, and
a channel credential that is no string.

Pure tests and virtual time (trio's autojump clock); no sockets.
"""

from __future__ import annotations

import inspect
import io
import json
import logging
import math
import re
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

import pytest
import trio
import trio.testing

from providers.base import DeliveryReceipt, ReceiptStatus, SessionState, TransientError
from providers.discord import DiscordProvider
from providers.discord.gateway import CloseSocket, GatewayCore, GatewayState
from providers.discord.gateway import Fail as GatewayFail
from providers.operations import EditMessage
from providers.simulated import Fixed, SimulatedProvider
from providers.websocket.core import Emit, Fail, Phase, WebSocketCore
from runtime import open_node
from runtime.config import ChannelSpec
from runtime.config.model import LoggingConfig
from runtime.telemetry import configure_logging

from .support import MidwayJitter
from .test_node_embedded import FAST, message, node_config, sim, wait_connected
from .test_provider_faults import FakeGateway, discord_config, patch_discord, plain_rest

VIRTUAL_CEILING = 3_600.0  # virtual seconds: only a hang gets near it

# --- 1. a websocket receipt of a status this node does not know ----------------------------


def ready_core() -> WebSocketCore:
    core = WebSocketCore(
        "ch", now=0.0, ping_interval=None, pong_timeout=5.0, liveness_timeout=None, send_timeout=8.0
    )
    core.frame_received('{"type":"ready"}', 0.0)
    return core


@pytest.mark.parametrize(
    "fields",
    [
        {"id": "o1", "status": "bounced", "peer": "p"},  # a status the server added
        {"id": "o1", "status": "bounced", "timestamp": 3},  # ... through the converter's path
        {"status": "bounced"},  # ... on a receipt this node could not place anyway
    ],
    ids=["plain", "converted", "without-id"],
)
def test_a_websocket_receipt_of_an_unknown_status_is_skipped_not_the_link_failed(
    fields: dict[str, Any],
) -> None:
    """A receipt whose status is a string this node does not know is skipped (and
    counted), and the link stays open: the next receipt is read. It failed the whole
    link as a protocol violation, so a server adding a status took every channel
    on it down at every receipt."""
    core = ready_core()
    actions = core.frame_received(json.dumps({"type": "receipt", **fields}), 1.0)
    assert not any(isinstance(action, Fail) for action in actions), actions
    assert actions == []
    assert core.phase is Phase.OPEN and core.ignored_frames == 1
    [known] = core.frame_received('{"type":"receipt","id":"o2","status":"read","peer":"p"}', 2.0)
    assert known == Emit(
        event=DeliveryReceipt(
            channel_id="ch", platform_message_id="o2", peer="p", status=ReceiptStatus.READ
        )
    )


def test_a_websocket_receipt_whose_status_is_no_string_still_fails_the_link() -> None:
    """A status of another type is a malformed frame, as before: the link fails (only
    a new status word is forward compatible)."""
    core = ready_core()
    actions = core.frame_received('{"type":"receipt","id":"o1","status":7}', 1.0)
    assert isinstance(actions[-1], Fail) and core.phase is Phase.FAILED


# --- 2. a Discord Resume the gateway never answers -----------------------------------------


async def test_a_discord_resume_the_gateway_never_answers_fails_the_link_in_time(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a reconnect's Resume, a gateway that acknowledges heartbeats but never
    answers RESUMED (nor op 9, nor a dispatch) fails the connection with a
    TransientError, so the channel reconnects through its backoff; the session stays
    resumable. Nothing bounded that wait: the connection waited for ever, its
    events never came, and nothing reported it."""
    gateway = FakeGateway()
    patch_discord(monkeypatch, gateway, plain_rest)
    raised: list[BaseException] = []
    with trio.fail_after(VIRTUAL_CEILING):
        async with DiscordProvider(rng=MidwayJitter()).open_connection(discord_config()) as conn:
            gateway.answer_resume = False
            gateway.sockets[-1].push({"op": 7, "d": None})  # reconnect: the next socket resumes
            try:
                async for _ in conn.events():
                    pass
            except TransientError as exc:
                raised.append(exc)
            session = conn.session_state()
    assert len(gateway.sockets) == 2
    assert [frame["op"] for frame in gateway.sockets[1].sent if frame["op"] != 1] == [6]
    assert raised and "RESUMED" in str(raised[0]), raised
    assert session.data.get("session_id") == "s1"  # still resumable


def test_the_discord_core_bounds_the_wait_for_ready_and_for_resumed() -> None:
    """The core arms a deadline with its Identify and with its Resume: past it, the
    socket is closed resumably and the connection fails transiently; each dispatch a
    Resume replays starts the wait again, and READY or RESUMED disarms it. No
    deadline was armed after either, so a silent gateway was waited on for ever."""
    hello = json.dumps({"op": 10, "d": {"heartbeat_interval": 1_000_000}})

    def dispatch(seq: int, t: str) -> str:
        return json.dumps({"op": 0, "s": seq, "t": t, "d": {"id": f"m{seq}", "channel_id": "5"}})

    # The first heartbeat is drawn at 500 s (and 600 s): only the READY / RESUMED
    # deadline can be the earliest one below. Unseeded, it was drawn anywhere in
    # [0, 1000) s and came first in about 1 run of 26 (``next_deadline()`` 9.76, not 20).
    core = GatewayCore(
        token="t", channel_id="dc", gateway_url="wss://g", rng=MidwayJitter(), session_timeout=20.0
    )
    core.connection_made(0.0)
    core.receive(hello, 0.0)
    assert core.state is GatewayState.IDENTIFYING and core.next_deadline() == 20.0
    close, fail = core.timer(20.0)
    assert isinstance(close, CloseSocket) and close.code == 4000
    assert isinstance(fail, GatewayFail) and isinstance(fail.error, TransientError)
    assert "no READY" in str(fail.error)

    session = {"session_id": "s", "seq": 4, "resume_gateway_url": "wss://r", "user_id": "9"}
    core = GatewayCore(
        token="t",
        channel_id="dc",
        gateway_url="wss://g",
        session=SessionState(provider="discord", data=session),
        rng=MidwayJitter(),
        session_timeout=20.0,
    )
    core.connection_made(100.0)
    core.receive(hello, 100.0)
    assert core.state is GatewayState.RESUMING and core.next_deadline() == 120.0
    core.receive(dispatch(5, "MESSAGE_CREATE"), 115.0)  # a replayed event: waits on
    assert core.next_deadline() == 135.0
    core.receive(json.dumps({"op": 0, "s": 6, "t": "RESUMED", "d": {}}), 130.0)
    assert core.state is GatewayState.CONNECTED
    assert not any(isinstance(action, GatewayFail) for action in core.timer(135.0))


# --- 3, 4. the embedded API given arguments of the wrong type ------------------------------


@pytest.fixture
async def node(autojump_clock: trio.testing.MockClock) -> AsyncIterator[Any]:
    provider = SimulatedProvider(latency=Fixed(seconds=0.1))
    async with open_node(
        node_config([sim("a")]), channel_defaults=FAST, providers={"simulated": provider}
    ) as node:
        await wait_connected(node, 1)
        yield node


def _calls(node: Any) -> dict[str, Callable[[], Any]]:
    """Each entry point called with one argument of the wrong type."""
    return {
        "send-int-channel": lambda: node.send(123, message("k1")),
        "send-bytes-channel": lambda: node.send(b"a", message("k1")),
        "edit-none-channel": lambda: node.edit(
            None, EditMessage(peer="p1", idempotency_key="e1", message_id="m1", text="x")
        ),
        "stop-list-channel": lambda: node.stop_channel(["a"]),
        "restart-int-channel": lambda: node.restart_channel(1),
        "channel-list": lambda: node.channel(["a"]),
        "channel-detail-int": lambda: node.channel_detail(1),
        "start-dict": lambda: node.start_channel({"id": "b", "provider": "simulated"}),
        "start-channels-str": lambda: node.start_channels("b"),
        "learn-one-str": lambda: node.learn_secrets("a-long-secret"),
        "learn-bytes": lambda: node.learn_secrets([b"a-long-secret"]),
        "subscribe-bytes-channel": lambda: node.subscribe(channel=b"a"),
        "subscribe-int-tenant": lambda: node.subscribe(tenant=5),
        "subscribe-int-kind": lambda: node.subscribe(kind=["inbound", 5]),
        "subscribe-inf-buffer": lambda: node.subscribe(buffer=math.inf),
        "subscribe-nan-buffer": lambda: node.subscribe(buffer=math.nan),
        "subscribe-float-buffer": lambda: node.subscribe(buffer=1.5),
    }


NAMED: Final = {
    "send-int-channel": "channel_id",
    "send-bytes-channel": "channel_id",
    "edit-none-channel": "channel_id",
    "stop-list-channel": "channel_id",
    "restart-int-channel": "channel_id",
    "channel-list": "channel_id",
    "channel-detail-int": "channel_id",
    "start-dict": "spec",
    "start-channels-str": "specs",
    "learn-one-str": "values",
    "learn-bytes": "values[0]",
    "subscribe-bytes-channel": "channel",
    "subscribe-int-tenant": "tenant",
    "subscribe-int-kind": "an item of kind",
    "subscribe-inf-buffer": "buffer",
    "subscribe-nan-buffer": "buffer",
    "subscribe-float-buffer": "buffer",
}


@pytest.mark.parametrize("call", sorted(NAMED))
async def test_the_embedded_api_refuses_an_argument_of_the_wrong_type_by_name(
    node: Any, call: str
) -> None:
    """Each entry point given an argument of the wrong type raises a TypeError at the
    call that names the argument and what it must be, and changes nothing. They
    failed deep inside (an AttributeError for a dict spec, ``unhashable type`` for
    a list id), or wrongly (a number id as an unknown channel), or not at all:
    ``subscribe(channel=b"a")`` matched nothing, ``buffer=math.inf`` buffered
    without bound, and ``learn_secrets("...")`` learnt its characters, each too
    short to redact."""
    subscribers = len(node._hub._subscribers)
    with pytest.raises(TypeError) as raised:
        outcome = _calls(node)[call]()
        if inspect.isawaitable(outcome):
            await outcome
    assert str(raised.value).startswith(f"{NAMED[call]} must be "), raised.value
    assert "nothing was done" in str(raised.value)
    assert [s.channel_id for s in node.channels()] == ["a"]
    assert len(node._hub._subscribers) == subscribers


async def test_start_channels_answers_an_item_of_the_wrong_type_and_starts_the_rest(
    node: Any,
) -> None:
    """start_channels answers an item that is no ChannelSpec with a TypeError in its
    place and starts the others; it answered an AttributeError from inside the
    node."""
    spec = ChannelSpec(id="b", provider="simulated")
    first, second = await node.start_channels([{"id": "c", "provider": "simulated"}, spec])
    assert isinstance(first, TypeError) and str(first).startswith("spec must be a ")
    assert second.channel_id == "b"


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"provider": 5}, "provider: expected a string, got 5"),
        ({"options": "x"}, "options: expected a table whose keys are strings"),
        ({"base_url": 5}, "base_url: expected an http(s):// or ws(s):// URL"),
    ],
    ids=["provider", "options", "base_url"],
)
def test_a_channel_spec_field_of_the_wrong_type_is_refused_by_name(
    fields: dict[str, Any], named: str
) -> None:
    """A ChannelSpec built with a field of the wrong type raises a ValueError naming
    the field. A provider that was a number came back from a start as an unknown
    provider; a masked field (options, base_url) raised the masking repr's own
    AttributeError or TypeError instead of the check's error."""
    with pytest.raises(ValueError, match=re.escape(named)):
        ChannelSpec(**{"id": "c", "provider": "simulated", **fields})


# --- 5. a text log line forged through an extra's key -------------------------------------

FORGED_LINE: Final = "\n2026-11-22T10:00:00.000Z [error    ] forged [switchboard.node]"


@pytest.mark.parametrize(
    ("logger", "extra"),
    [
        ("switchboard.x", {"k" + FORGED_LINE: 1}),  # an extra's key
        ("switchboard.x", {"k" + FORGED_LINE + " x": "v"}),  # ... quoted by the renderer
        ("switchboard.x", {"k\x1b[31m\u2028": "v"}),  # controls without a blank
        ("switchboard.x" + FORGED_LINE, {}),  # a logger's name
    ],
    ids=["key", "spaced-key", "controls-key", "logger-name"],
)
def test_a_text_log_line_cannot_be_forged_through_a_key_or_a_logger_name(
    logger: str, extra: dict[str, Any]
) -> None:
    """Newlines and other control characters in an ``extra`` key or a logger's name
    are escaped in the text format, as they were in values: the record is one line.
    Keys and the logger's name were written as they were, so a newline in one wrote
    a second, forged log line."""
    stream = io.StringIO()
    with configure_logging(LoggingConfig(format="text", level="debug"), node_id="n", stream=stream):
        logging.getLogger(logger).info("hello", extra=extra)
    (line,) = stream.getvalue().splitlines()
    assert not any(ch in line for ch in "\r\x1b\u2028"), line
    assert "hello" in line


def test_a_text_log_key_cannot_forge_a_field() -> None:
    """A key with a blank or ``=`` is quoted, as a value is, so ``x=1 node`` cannot
    pass for a field ``node``; it was written bare: ``x=1 node=forged``."""
    stream = io.StringIO()
    with configure_logging(LoggingConfig(format="text", level="debug"), node_id="n", stream=stream):
        logging.getLogger("switchboard.x").info("hello", extra={"x=1 node": "forged"})
    assert " node=forged" not in stream.getvalue()
    assert "'x=1 node'=forged" in stream.getvalue()


# --- 6. a channel credential that is no string ---------------------------------------------


@pytest.mark.parametrize(
    "credentials",
    [{"token": b"bytes-token-0123456789"}, {"token": bytearray(b"bytes-token-0123456789")}],
    ids=["bytes", "bytearray"],
)
def test_a_credential_given_as_bytes_is_refused_when_the_spec_is_built(
    credentials: dict[str, Any],
) -> None:
    """A ChannelSpec whose credential is no string is refused where it is built, with a
    ValueError that names the field and never shows the value. It was taken: the
    redactor learns strings only, so the token reached the provider but was
    redacted from no log line, error or ``/health`` answer."""
    with pytest.raises(
        ValueError, match=r"^credentials: expected a table whose keys and values are strings"
    ) as raised:
        ChannelSpec(id="c", provider="simulated", credentials=credentials)
    assert "bytes-token" not in str(raised.value)
