"""A send refused, dead-lettered or timed out, and a failed connect, leave no cycle.

An error bound to a local of a frame its traceback holds (``error = X();
raise error``, a caught error kept for later, an error kept on an object
the frame holds) is a reference cycle: reference counting never frees it,
only the collector does, and every such object counts towards the next
collection. A node that sheds thousands of sends a second, a platform
outage that dead-letters or times out every send, and a reconnect storm
each made their collector work in step with their failures. Each path here
is run with the collector off, then one collection says what it left.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Awaitable, Callable
from typing import Any, Final

import attrs
import pytest
import trio
import trio.testing

from actors import ChannelStatus
from providers.base import PermanentSendError, ProviderError
from providers.simulated import FailureRates, Fixed, SimulatedProvider
from providers.telegram import core as telegram
from providers.whatsapp import core as whatsapp
from runtime import (
    AskTimeout,
    ChannelUnavailable,
    Overloaded,
    SendFailed,
    Unsupported,
    open_node,
    parse_config,
)

from .support import (
    CEILING,
    FAST_CHANNELS,
    text_to_own_peer,
    two_simulated_channels,
)

FAST: Final = attrs.evolve(FAST_CHANNELS, connect_wait=1.0)
TELEGRAM_SEND: Final = telegram.ApiRequest(method="sendMessage", params={"chat_id": 1}, peer="1")
FEW: Final = 20  # objects a path may leave in all (the node's own, once), not per failure


async def garbage_of(work: Callable[[], Awaitable[None]]) -> int:
    """Objects in reference cycles that ``work`` left, found by one collection."""
    gc.collect()
    gc.disable()
    try:
        await work()
        return gc.collect()
    finally:
        gc.enable()


async def connected(node: Any) -> None:
    with node.subscribe(kind="state") as changes:
        while any(s.status is not ChannelStatus.CONNECTED for s in node.channels()):
            await changes.receive()


async def test_refused_sends_leave_no_cycle(autojump_clock: trio.testing.MockClock) -> None:
    # Each refusal was 14 objects: the error, five tracebacks, four frames.
    provider = SimulatedProvider(latency=Fixed(seconds=1.0))
    with trio.fail_after(CEILING):
        async with open_node(
            two_simulated_channels(max_sends_in_flight=2, max_channel_sends=1),
            channel_defaults=FAST,
            providers={"simulated": provider},
        ) as node:
            await connected(node)

            async def refused(channel: str) -> None:
                for n in range(200):
                    with pytest.raises(Overloaded):
                        await node.send(channel, text_to_own_peer(f"{channel}{n}"))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(node.send, "a", text_to_own_peer("held-a"))
                await trio.testing.wait_all_tasks_blocked()
                assert await garbage_of(lambda: refused("a")) < FEW  # the channel's bound
                nursery.start_soon(node.send, "b", text_to_own_peer("held-b"))
                await trio.testing.wait_all_tasks_blocked()
                assert await garbage_of(lambda: refused("b")) < FEW  # the node's bound


@pytest.mark.parametrize(
    ("failures", "latency", "error", "wait", "count"),
    [
        (FailureRates(send_permanent=1.0), 0.0, PermanentSendError, 60.0, 50),
        # Transient failures past the attempts; then the breaker opens and the
        # next sends wait for it, so one is enough.
        (FailureRates(send_transient=1.0), 0.0, SendFailed, 60.0, 1),
        (FailureRates(), 2.0, AskTimeout, 0.5, 10),
    ],
    ids=["dead-letter", "attempts-spent", "deadline"],
)
async def test_failed_sends_leave_no_cycle(
    autojump_clock: trio.testing.MockClock,
    failures: FailureRates,
    latency: float,
    error: type[Exception],
    wait: float,
    count: int,
) -> None:
    # A dead letter was 53 objects (two frames kept the error), a send past its
    # deadline 18 (its pending send kept the error that stopped it).
    provider = SimulatedProvider(latency=Fixed(seconds=latency), failures=failures)
    with trio.fail_after(CEILING):
        async with open_node(
            two_simulated_channels(), channel_defaults=FAST, providers={"simulated": provider}
        ) as node:
            await connected(node)

            async def failed() -> None:
                for n in range(count):
                    with pytest.raises(error):
                        await node.send("a", text_to_own_peer(f"f{n}"), timeout=wait)

            assert await garbage_of(failed) < FEW


async def test_failed_connects_leave_no_cycle(autojump_clock: trio.testing.MockClock) -> None:
    # Each failed connect was 12 objects: the connection loop kept the error.
    failing = SimulatedProvider(failures=FailureRates(connect_transient=1.0))
    with trio.fail_after(CEILING):
        async with open_node(
            two_simulated_channels(), channel_defaults=FAST, providers={"simulated": failing}
        ) as node:

            async def reconnecting() -> None:
                for n in range(20):  # each waits connect_wait while the connects fail
                    with pytest.raises(ChannelUnavailable):
                        await node.send("a", text_to_own_peer(f"c{n}"))

            before = sum(s.statistics.reconnects for s in node.channels() if s.statistics)
            assert await garbage_of(reconnecting) < FEW
            stats = [s.statistics for s in node.channels() if s.statistics]
            assert sum(s.reconnects for s in stats) - before >= 20  # it did fail, again and again


async def test_a_websocket_channel_s_refused_and_retried_sends_leave_no_cycle() -> None:
    # A refusal of a send made at once was kept by two frames of its send task
    # (30 objects a send); one that waited for its ack by the frame that waited
    # (15). Against the emulator, in real time.
    emulated = parse_config(
        {
            "node": {"id": "n1", "start_timeout": 5.0},
            "ops": {"enabled": False},
            "providers": {"websocket": {"rate_limit": {"enabled": False}}},
            "emulators": {"websocket": {}},
            "channels": [{"id": "w", "provider": "websocket", "emulator": True}],
        }
    )
    with trio.fail_after(CEILING):
        async with open_node(emulated, channel_defaults=FAST) as node:
            await connected(node)
            # Faults go to the emulator object itself: a control call over HTTP would
            # leave the emulator's side of its connection to be torn down meanwhile.
            assert node.emulators is not None
            fault = node.emulators.emulators["websocket"].platform_fault
            await node.send("w", text_to_own_peer("warm"))  # the first send's one-time making

            async def refused() -> None:
                for n in range(20):
                    with pytest.raises(Unsupported):
                        await node.send("w", text_to_own_peer(f"u{n}"))

            await fault({"kind": "fail_sends", "code": "unsupported", "count": 20})
            assert await garbage_of(refused) < FEW

            async def retried() -> None:
                for n in range(10):  # the first fails 4 times: tried again on the task path
                    await node.send("w", text_to_own_peer(f"r{n}"))

            await fault({"kind": "fail_sends", "code": "internal", "count": 4})
            assert await garbage_of(retried) < FEW


@pytest.mark.parametrize(
    "answer",
    [
        lambda: whatsapp.map_error(503, {}, b"<html>502 Bad Gateway</html>", peer="1"),
        lambda: whatsapp.map_error(400, {}, b'{"error": "text"}', peer="1"),
        lambda: telegram.parse_response(TELEGRAM_SEND, 502, b'{"message": "upstream"}', {}),
        lambda: telegram.parse_response(TELEGRAM_SEND, 400, b"<html>Bad Request</html>", {}),
    ],
    ids=["whatsapp-html", "whatsapp-odd-json", "telegram-odd-json", "telegram-html"],
)
def test_an_error_page_that_is_not_the_platform_s_leaves_no_cycle(
    answer: Callable[[], object],
) -> None:
    # A proxy's page (a 502 from a load balancer) went through the platform's
    # structuring, whose failure kept its errors in a cycle: 11-12 objects each.
    gc.collect()
    gc.disable()
    try:
        for _ in range(100):
            with contextlib.suppress(ProviderError):
                error = answer()
                assert isinstance(error, ProviderError)  # WhatsApp's is returned
        left = gc.collect()
    finally:
        gc.enable()
    assert left < FEW
