"""Slow platforms never starve the others (issue 11): every handshake and request
has a total deadline, so servers that drip a byte at a time cannot hold the
provider's connect gate.

Real sockets on 127.0.0.1, so real time: 70 Telegram channels whose server
drips (more than the gate's 64 slots) and one healthy channel behind them.
The hard ceiling is generous; nothing asserts how long anything took. The
last test is in virtual time: handshakes that never end, behind the actor's
own total deadline.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio

from actors import ChannelSettings, ChannelStatus, ExponentialBackoff
from actors.channel import CONNECTS_IN_FLIGHT
from providers.base import ChannelConfig, SessionState
from providers.emulators import open_emulator
from providers.emulators.telegram import TelegramEmulator
from providers.hostile import drip, open_hostile_server
from providers.testing import FakeConnection, FakeProvider
from runtime import open_node, parse_config

CEILING = 60.0  # seconds; only a hang gets near it
VIRTUAL_CEILING = 600.0  # virtual seconds
DRIPPING = CONNECTS_IN_FLIGHT + 6  # more than the gate holds
SETTINGS = ChannelSettings(reconnect=ExponentialBackoff(base=0.5, cap=2.0))


@pytest.fixture(autouse=True)
def token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SB_TEST_TELEGRAM_TOKEN", "123456:" + "A" * 35)


def channel(channel_id: str, base_url: str, **options: Any) -> dict[str, Any]:
    return {
        "id": channel_id,
        "provider": "telegram",
        "base_url": base_url,
        "credentials": {"token": "${env:SB_TEST_TELEGRAM_TOKEN}"},
        "options": {"poll_timeout": 1, **options},
    }


async def test_a_healthy_channel_connects_while_many_dripping_ones_exist() -> None:
    with trio.fail_after(CEILING):
        async with (
            open_emulator(TelegramEmulator()) as healthy_url,
            open_hostile_server(lambda request: drip(0.2)) as dripping_url,
        ):
            channels = [
                channel(f"drip{n}", dripping_url, request_deadline=1.0) for n in range(DRIPPING)
            ]
            channels.append(channel("healthy", healthy_url))  # queued behind them all
            config = parse_config(
                {
                    "node": {"id": "t", "drain_deadline": 2.0, "start_timeout": 1.0},
                    "ops": {"enabled": False},
                    "channels": channels,
                }
            )
            async with open_node(config, channel_defaults=SETTINGS) as node:
                with trio.move_on_after(CEILING / 2):
                    while True:
                        snapshots = {s.channel_id: s for s in node.channels()}
                        if snapshots["healthy"].status is ChannelStatus.CONNECTED:
                            break
                        await trio.sleep(0.1)
                healthy = snapshots["healthy"]
                assert healthy.status is ChannelStatus.CONNECTED, (
                    healthy,
                    snapshots["drip0"].problem,
                )
                dripping = [s for s in snapshots.values() if s.channel_id != "healthy"]
                assert all(s.status is not ChannelStatus.CONNECTED for s in dripping)
                assert all(s.status is not ChannelStatus.FAILED for s in dripping)


class HangingPlatform(FakeProvider):
    """A platform whose handshakes never end for the channels named ``slow*``."""

    name = "discord"

    @asynccontextmanager
    async def open_connection(
        self, config: ChannelConfig, session: SessionState | None = None
    ) -> AsyncIterator[FakeConnection]:
        if config.channel_id.startswith("slow"):
            self.connects += 1
            await trio.sleep_forever()
        async with super().open_connection(config, session) as conn:
            yield conn


async def test_every_connect_has_a_total_deadline_whatever_the_provider(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SB_TEST_DISCORD_TOKEN", "not-a-real-token")
    platform = HangingPlatform()
    token = {"token": "${env:SB_TEST_DISCORD_TOKEN}"}
    channels = [
        {"id": f"slow{n}", "provider": "discord", "credentials": token}
        for n in range(CONNECTS_IN_FLIGHT * 2)
    ]
    channels.append({"id": "healthy", "provider": "discord", "credentials": token})
    config = parse_config(
        {
            "node": {"id": "t", "drain_deadline": 2.0, "start_timeout": 1.0},
            "ops": {"enabled": False},
            "channels": channels,
        }
    )
    settings = attrs.evolve(SETTINGS, connect_timeout=5.0)
    with trio.fail_after(VIRTUAL_CEILING):
        async with open_node(config, channel_defaults=settings, providers={"discord": platform}):
            await platform.wait_connected(1)  # the healthy one, behind 128 that hang
            assert trio.current_time() < 60.0
            assert platform.connects > CONNECTS_IN_FLIGHT * 2  # the hanging ones retried
