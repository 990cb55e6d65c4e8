"""Discord's session deadlines and the embedded API's refusals: what holds.

- The Discord core's READY / RESUMED deadline does not fire on the node's own
  lateness: a timer that runs late (the loop was busy) gives the gateway as
  long again before it fails the link, as every other liveness timer does
  (``providers.base.LATE_TIMER``), and a Resume's replay that the shell holds
  back for a slow consumer (its own backpressure) is not failed as "no
  RESUMED". Both failed the link at once when the deadline was new.
- A refused argument that may hold a secret the node never learnt
  (``learn_secrets``' values, a spec given as a dict) is named by its type,
  not quoted: nothing would have redacted it.
- A credential that is a ``str`` subclass is taken and redacted, as before
  credentials were checked for their type.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import AsyncIterator
from typing import Any, Final

import pytest
import trio
import trio.testing

from providers.base import InboundMessage, SessionState
from providers.discord import DiscordProvider
from providers.discord import shell as discord_shell
from providers.discord.gateway import Fail as GatewayFail
from providers.discord.gateway import GatewayCore, GatewayState
from providers.simulated import Fixed, SimulatedProvider
from runtime import open_node
from runtime.config import ChannelSpec

from .support import MidwayJitter
from .test_node_embedded import FAST, node_config, sim, wait_connected
from .test_provider_faults import FakeGateway, FakeSocket, discord_config, patch_discord, plain_rest

VIRTUAL_CEILING: Final = 3_600.0  # virtual seconds: only a hang gets near it
# With ``MidwayJitter`` the first heartbeat is at 500 s, after every deadline below: an
# unseeded core drew it anywhere in [0, 1000) s, before the 20 s deadline 1 run in 50.
HELLO: Final = json.dumps({"op": 10, "d": {"heartbeat_interval": 1_000_000}})
SECRET: Final = "sk-live-0123456789abcdef"


# --- 1. the Discord READY / RESUMED deadline and the node's own lateness -------------------


def _ready(seq: int) -> str:
    d = {"session_id": "s1", "resume_gateway_url": "wss://r", "user": {"id": "9"}}
    return json.dumps({"op": 0, "s": seq, "t": "READY", "d": d})


def test_a_late_ready_timer_does_not_fail_the_discord_link_at_once() -> None:
    """A READY deadline whose timer runs late (here 5 s after it was due: the node's
    loop was busy, a collection, a connect storm) must not fail the link at once:
    READY may sit unread in the socket, so it is read first, as the heartbeat timer
    and every websocket liveness timer do (``LATE_TIMER``: given as long again as
    the node looked away). The new deadline fails at once, closing the socket and
    throwing the session's READY away."""
    core = GatewayCore(
        token="t", channel_id="dc", gateway_url="wss://g", rng=MidwayJitter(), session_timeout=20.0
    )
    core.connection_made(0.0)
    core.receive(HELLO, 0.0)
    assert core.state is GatewayState.IDENTIFYING and core.next_deadline() == 20.0
    actions = core.timer(25.0, due=20.0)  # due at 20, run at 25: the node was late
    assert not any(isinstance(action, GatewayFail) for action in actions), actions
    core.receive(_ready(1), 25.0)  # what waited in the socket
    assert core.state is GatewayState.CONNECTED


def test_a_late_resumed_timer_does_not_fail_the_discord_link_at_once() -> None:
    """The same for RESUMED: a Resume's deadline whose timer runs late reads the
    socket before it blames the gateway; it failed the link at once."""
    session = {"session_id": "s", "seq": 4, "resume_gateway_url": "wss://r", "user_id": "9"}
    core = GatewayCore(
        token="t",
        channel_id="dc",
        gateway_url="wss://g",
        session=SessionState(provider="discord", data=session),
        rng=MidwayJitter(),  # the first heartbeat at 500 s, after the deadline
        session_timeout=20.0,
    )
    core.connection_made(0.0)
    core.receive(HELLO, 0.0)
    assert core.state is GatewayState.RESUMING and core.next_deadline() == 20.0
    actions = core.timer(23.0, due=20.0)
    assert not any(isinstance(action, GatewayFail) for action in actions), actions
    core.receive(json.dumps({"op": 0, "s": 5, "t": "RESUMED", "d": {}}), 23.0)
    assert core.state is GatewayState.CONNECTED


class _ReplayingGateway(FakeGateway):
    """Answers a Resume with ``replay`` missed messages, then RESUMED (as Discord does)."""

    def __init__(self, replay: int) -> None:
        super().__init__(interval_ms=1_000_000_000)  # no heartbeat in the way
        self.replay = replay

    def on_frame(self, sock: FakeSocket, frame: dict[str, Any]) -> None:
        if frame["op"] == 6:
            for n in range(self.replay):
                self.message(sock, n)
            self.dispatch(sock, "RESUMED", {})
            return
        super().on_frame(sock, frame)


async def test_a_discord_resume_replay_held_back_by_a_slow_consumer_is_not_failed(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Resume's replay that the shell reads slowly because its own consumer is slow
    (the event buffer full: backpressure, a consumer held back by its store) is the
    node's delay, not a silent gateway: every replayed event arrives, on the one
    resumed socket, and the connection does not fail. The deadline is restarted at
    each dispatch read, but the shell then waits in ``_emit`` past it; the next turn
    of its pump finds the deadline gone and fails the link with "no RESUMED" while
    the rest of the replay and RESUMED sit unread (then reconnects and replays again,
    into the same backpressure)."""
    monkeypatch.setattr(discord_shell, "EVENT_BUFFER", 1)
    gateway = _ReplayingGateway(replay=4)
    patch_discord(monkeypatch, gateway, plain_rest)
    got: list[str] = []
    with trio.fail_after(VIRTUAL_CEILING):
        async with DiscordProvider(rng=MidwayJitter()).open_connection(discord_config()) as conn:
            gateway.sockets[-1].push({"op": 7, "d": None})  # reconnect: the next one resumes
            async for event in conn.events():
                if isinstance(event, InboundMessage):
                    got.append(event.platform_message_id)
                    if len(got) == gateway.replay:
                        break
                await trio.sleep(30.0)  # (virtual) the consumer's store is slow
    assert got == [f"m{n}" for n in range(gateway.replay)]
    assert len(gateway.sockets) == 2  # the resumed socket carried the whole replay


# --- 2. the embedded API's type errors quote a secret ------------------------------------


@pytest.fixture
async def node(autojump_clock: trio.testing.MockClock) -> AsyncIterator[Any]:
    provider = SimulatedProvider(latency=Fixed(seconds=0.1))
    async with open_node(
        node_config([sim("a")]), channel_defaults=FAST, providers={"simulated": provider}
    ) as node:
        await wait_connected(node, 1)
        yield node


def _secret_calls(node: Any) -> dict[str, Any]:
    spec = {"id": "b", "provider": "simulated", "credentials": {"token": SECRET}}
    return {
        "learn-one-str": lambda: node.learn_secrets(SECRET),
        "learn-bytes": lambda: node.learn_secrets([SECRET.encode()]),
        "learn-bytearray": lambda: node.learn_secrets([bytearray(SECRET.encode())]),
        "start-dict": lambda: node.start_channel(spec),
    }


@pytest.mark.parametrize("call", ["learn-one-str", "learn-bytes", "learn-bytearray", "start-dict"])
async def test_a_refused_argument_that_holds_a_secret_is_not_quoted_in_the_error(
    node: Any, call: str
) -> None:
    """The TypeError for an argument of the wrong type must not quote a secret it
    holds: these values are secrets by what they are given to (``learn_secrets``) or
    where they sit (a spec's credentials), and the node learnt none of them, so no
    redactor scrubs the message where it is logged or shown. ``wrong_argument``
    writes the value's ``repr`` (80 characters: the whole token), where a
    ChannelSpec's credentials check, the config loader and ``--set`` never quote
    a secret."""
    with pytest.raises(TypeError) as raised:
        outcome = _secret_calls(node)[call]()
        if inspect.isawaitable(outcome):
            await outcome
    assert SECRET not in str(raised.value), raised.value
    assert SECRET[:12] not in str(raised.value), raised.value


async def test_start_channels_answers_a_dict_spec_without_quoting_its_credentials(
    node: Any,
) -> None:
    """start_channels answers an item that is no ChannelSpec with a TypeError in its
    place (a result a caller logs); it must not quote the item's credentials. The
    error holds the dict's repr, token included."""
    spec = {"id": "c", "provider": "simulated", "credentials": {"token": SECRET}}
    [answer] = await node.start_channels([spec])
    assert isinstance(answer, TypeError)
    assert SECRET[:12] not in str(answer), answer


# --- 3. a credential that is a str subclass -----------------------------------------------


class _Secret(str):
    """A str that masks itself in a repr (a common way to carry a secret)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "_Secret('***')"


async def test_a_credential_that_is_a_str_subclass_is_taken_and_redacted(
    node: Any,
) -> None:
    """A credential given as a ``str`` subclass is text: the redactor learns it
    (``isinstance``), the providers read it, and ``learn_secrets`` takes it. The new
    check refuses it (``type(x) is str``) when the spec is built, so code that
    wraps its secrets no longer starts a channel; the check's reason (bytes were
    redacted nowhere) does not apply to it."""
    token = _Secret(SECRET)
    spec = ChannelSpec(id="b", provider="simulated", credentials={"token": token})
    snapshot = await node.start_channel(spec)
    assert snapshot.channel_id == "b"
    assert SECRET not in node.redactor.scrub(f"the token is {SECRET}")
