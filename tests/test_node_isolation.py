"""One platform's outage never stops the node (issue 11): 500 channels of one
provider failing together while another provider's channels keep sending.

Virtual time, memory store: the failing provider is a scripted platform
(``providers.testing.FakeProvider``), the healthy one the simulated platform.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from actors import ChannelFailed, ChannelSettings, ChannelStatus, ExponentialBackoff
from providers.base import ChannelConfig, OutboundMessage, SessionState, TransientError
from providers.simulated import SimulatedProvider
from providers.testing import FakeConnection, FakeProvider
from runtime import open_node, parse_config
from runtime.ops.health import health_report

from .support import CEILING

FAILING = 500  # channels of the provider that fails
HEALTHY = 20  # channels of the provider that keeps working
FAST = ChannelSettings(
    reconnect=ExponentialBackoff(base=0.5, cap=5.0),
    send_backoff=ExponentialBackoff(base=0.01, cap=0.05),
    connect_wait=5.0,
)


class CrashingPlatform(FakeProvider):
    """A platform whose every connect makes the provider raise what no table
    classified: the channel actor crashes, as it did on ConnectionRejected."""

    name = "discord"

    def __init__(self, error: type[Exception], text: str) -> None:
        super().__init__()
        self.error = error
        self.text = text
        self.healed = False

    @asynccontextmanager
    async def open_connection(
        self, config: ChannelConfig, session: SessionState | None = None
    ) -> AsyncIterator[FakeConnection]:
        self.connects += 1
        self.connect_times.append(trio.current_time())
        await trio.sleep(0.01)
        if self.healed:
            async with super().open_connection(config, session) as conn:
                yield conn
            return
        raise self.error(self.text)  # a new one each time, as a platform's would be


def config(failing: int, healthy: int) -> Any:
    channels = [
        {
            "id": f"dc{n}",
            "tenant": "acme",
            "provider": "discord",
            "credentials": {"token": "${env:SB_TEST_DISCORD_TOKEN}"},
        }
        for n in range(failing)
    ] + [{"id": f"sim{n}", "tenant": "acme", "provider": "simulated"} for n in range(healthy)]
    return parse_config(
        {
            "node": {"id": "t", "drain_deadline": 2.0, "start_timeout": 1.0},
            "ops": {"enabled": False},
            "providers": {"simulated": {"rate_limit": {"enabled": False}}},
            "channels": channels,
        }
    )


async def send_all(node: Any, round_: int) -> int:
    delivered = 0

    async def one(n: int) -> None:
        nonlocal delivered
        message = OutboundMessage(peer="p", idempotency_key=f"r{round_}-{n}", text="hi")
        await node.send(f"sim{n}", message)
        delivered += 1

    async with trio.open_nursery() as nursery:
        for n in range(HEALTHY):
            nursery.start_soon(one, n)
    return delivered


@pytest.fixture(autouse=True)
def token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SB_TEST_DISCORD_TOKEN", "not-a-real-token")


async def test_500_channels_crashing_together_are_failed_alone_and_the_node_stays_up(
    autojump_clock: Any,
) -> None:
    crashing = CrashingPlatform(RuntimeError, "the gateway answered in a way nobody classified")
    healthy = SimulatedProvider()
    delivered = 0
    with trio.fail_after(CEILING * 10):
        async with open_node(
            config(FAILING, HEALTHY),
            channel_defaults=FAST,
            providers={"discord": crashing, "simulated": healthy},
        ) as node:
            # Several crash-restart rounds of all 500 go by while the others send.
            for round_ in range(30):
                delivered += await send_all(node, round_)
                await trio.sleep(1.0)
            snapshots = {s.channel_id: s for s in node.channels()}
            failed = [s for s in snapshots.values() if s.status is ChannelStatus.FAILED]
            assert len(failed) == FAILING
            assert all(s.provider == "discord" for s in failed)
            assert "kept crashing" in (failed[0].problem or "")
            assert "nobody classified" in (failed[0].problem or "")
            report = health_report(node)
            assert report["providers"]["discord"]["failed"] == FAILING
            assert report["providers"]["simulated"]["connected"] == HEALTHY
            reasons = {p["reason"] for p in report["problems"] if p["provider"] == "discord"}
            assert all("kept crashing" in reason for reason in reasons)
            # A FAILED channel refuses sends at once, and the others still deliver.
            with pytest.raises(ChannelFailed):
                await node.send("dc7", OutboundMessage(peer="p", idempotency_key="x", text="x"))
            delivered += await send_all(node, 99)
            attempts_then = crashing.connects
            await trio.sleep(120.0)
            assert crashing.connects == attempts_then  # a FAILED channel never hammers
            # Once the cause is fixed, an operator's restart brings one back.
            crashing.healed = True
            await node.restart_channel("dc7")
            await crashing.wait_connected(1)
            await trio.sleep(0.1)
            assert node.channel("dc7").statistics().status is ChannelStatus.CONNECTED
            assert {s.channel_id for s in node.channels() if s.status is ChannelStatus.FAILED} == {
                f"dc{n}" for n in range(FAILING) if n != 7
            }
    assert delivered == HEALTHY * 31
    assert len(healthy.sent) == HEALTHY * 31


async def test_500_channels_whose_platform_answers_503_keep_backing_off(
    autojump_clock: Any,
) -> None:
    unavailable = CrashingPlatform(TransientError, "the upgrade was refused with HTTP 503")
    healthy = SimulatedProvider()
    delivered = 0
    with trio.fail_after(CEILING * 10):
        async with open_node(
            config(FAILING, HEALTHY),
            channel_defaults=FAST,
            providers={"discord": unavailable, "simulated": healthy},
        ) as node:
            for round_ in range(10):
                delivered += await send_all(node, round_)
                await trio.sleep(3.0)
            statuses = {s.status for s in node.channels() if s.provider == "discord"}
            assert statuses <= {ChannelStatus.BACKING_OFF, ChannelStatus.CONNECTING}
            assert unavailable.connects > FAILING * 3  # they keep retrying ...
            first = unavailable.connect_times[:FAILING]
            assert max(first) - min(first) < 1.0
            last = {s.channel_id: s for s in node.channels()}["dc0"]
            assert "503" in (last.problem or "")
    assert delivered == HEALTHY * 10
