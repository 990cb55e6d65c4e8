"""One error story at the node boundary (issue 10): every error is a NodeError,
the layer's own class still catches it, and the cause is chained."""

from __future__ import annotations

from typing import Any

import pytest
import trio

import actors
import providers.base as platform
import runtime
import supervisors
from actors import ChannelSettings, ExponentialBackoff
from providers.base import OutboundMessage
from providers.simulated import FailureRates, Fixed, SimulatedProvider
from runtime import open_node, parse_config
from runtime.errors import send_error

from .support import CEILING

FAST = ChannelSettings(
    reconnect=ExponentialBackoff(base=0.05, cap=0.2),
    send_backoff=ExponentialBackoff(base=0.01, cap=0.05),
    send_attempts=2,
    connect_wait=1.0,
)


def config(*channels: dict[str, Any], **providers_section: Any) -> Any:
    return parse_config(
        {
            "node": {"id": "t", "drain_deadline": 2.0, "start_timeout": 1.0},
            "ops": {"enabled": False},
            "providers": {"simulated": {"rate_limit": {"enabled": False}, **providers_section}},
            "channels": list(channels),
        }
    )


def sim(channel_id: str) -> dict[str, Any]:
    return {"id": channel_id, "tenant": "acme", "provider": "simulated"}


@pytest.mark.parametrize(
    ("failures", "node_class", "layer_class"),
    [
        (FailureRates(send_permanent=1.0), runtime.PermanentSendError, platform.PermanentSendError),
        (FailureRates(send_transient=1.0), runtime.SendFailed, actors.SendFailed),
    ],
    ids=["permanent", "transient"],
)
async def test_send_errors_are_node_errors_and_still_the_layers_classes(
    autojump_clock: Any, failures: FailureRates, node_class: type, layer_class: type
) -> None:
    provider = SimulatedProvider(failures=failures)
    with trio.fail_after(CEILING):
        async with open_node(
            config(sim("a")), channel_defaults=FAST, providers={"simulated": provider}
        ) as node:
            with pytest.raises(runtime.NodeError) as raised:
                await node.send("a", OutboundMessage(peer="p", idempotency_key="k1", text="x"))
    error = raised.value
    assert isinstance(error, node_class)
    assert isinstance(error, runtime.SendError)
    assert isinstance(error, layer_class)  # `except layer_class` keeps working
    assert type(error.__cause__) is not type(error)
    assert isinstance(error.__cause__, layer_class)  # the original, chained
    assert error.channel_id == "a"
    assert error.idempotency_key == "k1"


async def test_a_too_long_text_is_the_node_s_and_the_provider_s_message_too_long(
    autojump_clock: Any,
) -> None:
    provider = SimulatedProvider()
    with trio.fail_after(CEILING):
        async with open_node(
            config(sim("a"), rate_limit={"max_text_length": 5}),
            channel_defaults=FAST,
            providers={"simulated": provider},
        ) as node:
            with pytest.raises(platform.MessageTooLong) as raised:
                await node.send("a", OutboundMessage(peer="p9", idempotency_key="k", text="x" * 9))
    assert isinstance(raised.value, runtime.MessageTooLong)
    assert raised.value.peer == "p9"
    assert "exceeds" in str(raised.value)


async def test_a_banned_channel_fails_sends_with_channel_failed(autojump_clock: Any) -> None:
    provider = SimulatedProvider()
    provider.banned.add("a")
    with trio.fail_after(CEILING):
        async with open_node(
            config(sim("a")), channel_defaults=FAST, providers={"simulated": provider}
        ) as node:
            await trio.sleep(0.5)
            with pytest.raises(actors.ChannelFailed) as raised:
                await node.send("a", OutboundMessage(peer="p", idempotency_key="k", text="x"))
    assert isinstance(raised.value, runtime.ChannelFailed)
    assert isinstance(raised.value.__cause__, actors.ChannelFailed)


async def test_start_channel_errors_are_node_errors(autojump_clock: Any) -> None:
    with trio.fail_after(CEILING):
        async with open_node(config(), channel_defaults=FAST) as node:
            spec = runtime.ChannelSpec(id="x", provider="nonesuch", tenant="t")
            with pytest.raises(KeyError) as raised:  # what callers caught before
                await node.start_channel(spec)
            assert isinstance(raised.value, runtime.UnknownProvider)
            assert "nonesuch" in str(raised.value)
            emulated = runtime.ChannelSpec(id="y", provider="telegram", tenant="t", emulator=True)
            with pytest.raises(runtime.UnknownProvider, match="emulator"):
                await node.start_channel(emulated)


async def test_a_channel_whose_actor_cannot_start_is_channel_start_failed(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(self: Any) -> None:
        raise RuntimeError("no start today")

    monkeypatch.setattr(actors.ChannelActor, "on_start", refuse)
    with trio.fail_after(CEILING):
        async with open_node(
            config(), channel_defaults=FAST, providers={"simulated": SimulatedProvider()}
        ) as node:
            with pytest.raises(supervisors.StartChildFailed) as raised:
                await node.start_channel(runtime.ChannelSpec(id="a", provider="simulated"))
            assert isinstance(raised.value, runtime.ChannelStartFailed)
            assert raised.value.child_id == "a"
            snapshot = node.channels()[0]
            assert snapshot.start_error is not None
            assert "no start today" in snapshot.start_error


def test_send_error_passes_node_errors_and_defects_and_maps_the_rest() -> None:
    assert send_error(runtime.NodeDraining("bye"), "c", "k") is None
    assert send_error(ZeroDivisionError(), "c", "k") is None
    unavailable = send_error(actors.ActorDead("gone", reason=None), "c", "k")
    assert isinstance(unavailable, runtime.ChannelUnavailable)
    assert (unavailable.channel_id, unavailable.idempotency_key) == ("c", "k")
    full = send_error(actors.MailboxFull("full", actor="a", capacity=7), "c", "k")
    assert isinstance(full, runtime.MailboxFull) and isinstance(full, actors.MailboxFull)
    assert full.capacity == 7


def test_the_node_state_is_one_enum() -> None:
    assert [s.value for s in runtime.NodeState] == ["starting", "ready", "draining", "drained"]


async def test_the_node_moves_through_its_states(autojump_clock: Any) -> None:
    with trio.fail_after(CEILING):
        async with open_node(
            config(sim("a")), channel_defaults=FAST, providers={"simulated": SimulatedProvider()}
        ) as node:
            assert node.state is runtime.NodeState.READY
            assert node.ready and not node.draining
            report = await node.drain()
            assert node.state is runtime.NodeState.DRAINED
            assert node.draining and not node.ready
            assert await node.drain() is report  # idempotent
            with pytest.raises(runtime.NodeDraining):
                await node.send("a", OutboundMessage(peer="p", idempotency_key="k", text="x"))


async def test_a_send_not_answered_in_time_is_ask_timeout_and_goes_on(
    autojump_clock: Any,
) -> None:
    # The caller's timeout bounds the whole send (the node's timer, not a cancel scope):
    # past it the caller hears AskTimeout, the node tracks it no more, and the
    # channel still sends the message and remembers the answer: a repeat of
    # the key is answered at once, not sent a second time.
    provider = SimulatedProvider(latency=Fixed(seconds=5.0), connect_latency=Fixed(seconds=0.0))
    message = OutboundMessage(peer="p", idempotency_key="slow", text="x")
    with trio.fail_after(CEILING):
        async with open_node(
            config(sim("a")), channel_defaults=FAST, providers={"simulated": provider}
        ) as node:
            await trio.sleep(0.5)  # connected
            began = trio.current_time()
            with pytest.raises(actors.AskTimeout) as raised:
                await node.send("a", message, timeout=1.0)
            assert trio.current_time() - began == pytest.approx(1.0)
            assert isinstance(raised.value, runtime.AskTimeout)
            assert raised.value.channel_id == "a"
            assert raised.value.idempotency_key == "slow"
            assert "within 1.0 s" in str(raised.value)
            assert node.statistics().sends_in_flight == 0
            await trio.sleep(5.0)
            assert [sent.idempotency_key for sent in provider.sent] == ["slow"]
            before = trio.current_time()
            again = await node.send("a", message, timeout=10.0)
            assert trio.current_time() == before  # from the channel's memory: no round trip
            assert again.peer == "p"
    assert [sent.idempotency_key for sent in provider.sent] == ["slow"]
