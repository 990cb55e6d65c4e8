"""The rtt scenario's rig: the TCP delay proxy, and the scenario file.

The proxy moves real bytes over real sockets, so these tests run on trio's
real clock and assert only what arrives and in which order (never a
duration); the figures themselves are the bench's (``python -m bench rtt``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from bench.__main__ import load_scenario
from bench.delay_proxy import DelayProxy
from bench.rtt import PLATFORM_RATES, REFUSALS, RttParams, _channel, _counters, _message
from bench.scenario import load_run_file, resolve_params
from providers.discord import DISCORD_LIMITS
from providers.emulators.base import open_emulator
from providers.emulators.discord import DiscordEmulator
from providers.emulators.telegram import TelegramEmulator
from runtime import open_node, parse_config

ROOT = Path(__file__).resolve().parent.parent
HANG_CEILING = 30.0  # seconds of real time; only a hang gets near it


async def _echo(stream: trio.SocketStream) -> None:
    async with stream:
        async for data in stream:
            await stream.send_all(data)


async def test_the_proxy_forwards_both_ways_in_order_and_passes_the_end_on() -> None:
    with trio.fail_after(HANG_CEILING):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(trio.serve_tcp, _echo, 0)
            port = listeners[0].socket.getsockname()[1]
            proxy = DelayProxy(port, rtt=0.02)
            proxy_port = await nursery.start(proxy.serve)
            stream = await trio.open_tcp_stream("127.0.0.1", proxy_port)
            chunks = [bytes([i]) * (1 + i * 997) for i in range(40)]
            sent = b"".join(chunks)
            async with stream:
                for chunk in chunks:  # many writes in flight at once
                    await stream.send_all(chunk)
                await stream.send_eof()
                received = bytearray()
                async for data in stream:  # ends when the echo's end comes back
                    received += data
            assert bytes(received) == sent
            assert proxy.connections == 1
            nursery.cancel_scope.cancel()


async def test_a_target_that_is_down_closes_the_client_link() -> None:
    with trio.fail_after(HANG_CEILING):
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        await listeners[0].aclose()  # nothing listens there now
        async with trio.open_nursery() as nursery:
            proxy_port = await nursery.start(DelayProxy(port, rtt=0.0).serve)
            stream = await trio.open_tcp_stream("127.0.0.1", proxy_port)
            async with stream:
                assert await stream.receive_some(10) == b""
            nursery.cancel_scope.cancel()


def test_a_round_trip_must_be_a_finite_number_of_seconds() -> None:
    for bad in (-0.1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="finite number of seconds"):
            DelayProxy(1, rtt=bad)


def test_the_scenario_file_measures_the_three_platforms_at_150_ms() -> None:
    run_file = load_run_file(ROOT / "bench" / "scenarios" / "rtt.toml")
    scenario = load_scenario(run_file.scenario, where="test")
    params = resolve_params(scenario, run_file, quick=True, overrides={})
    assert isinstance(params, RttParams)
    assert (params.rtt_ms, params.providers) == (
        150.0,
        ["whatsapp", "telegram", "discord"],
    )


def test_discord_is_judged_against_the_bots_global_rate_the_provider_declares() -> None:
    """A broadcast's every recipient is a DM channel with a bucket of its own, so the
    bot's global 50/s binds: the rate the provider's limiter paces to."""
    assert PLATFORM_RATES["discord"] == DISCORD_LIMITS.per_channel_rate == 50.0
    assert REFUSALS.keys() == PLATFORM_RATES.keys()
    peers = [_message("discord", seq).peer for seq in range(1_000_000, 1_000_100)]
    assert len(set(peers)) == len(peers)
    assert all(peer.isdigit() and int(peer) < 2**63 for peer in peers)


async def test_the_discord_senders_get_a_bucket_per_recipient_and_no_429() -> None:
    """More messages than one create-message bucket holds (5 per 5 s), each to a new
    recipient, are all accepted at once: nothing waits on a bucket or spends a 429."""
    emulator = DiscordEmulator()
    with trio.fail_after(HANG_CEILING):
        async with open_emulator(emulator) as base:
            channel = _channel("discord", 1, base, limits=True, window=None)
            refused, connections = await _twelve_at_once(channel, "discord", base)
    assert refused == 0 and connections >= 1
    assert len({m["channel_id"] for m in emulator.sent}) == 12


async def _twelve_at_once(channel: dict[str, Any], provider: str, base: str) -> tuple[int, int]:
    """Twelve sends at once through a node with ``channel``; what the bench then reads
    (the platform's refusals, the connections)."""
    config = parse_config(
        {
            "node": {"id": "rtt-test", "drain_deadline": 5.0, "start_timeout": 10.0},
            "ops": {"enabled": False},
            "channels": [channel],
        }
    )
    async with open_node(config) as node:
        with node.subscribe(kind="state") as changes:
            while node.channels()[0].status.name != "CONNECTED":
                await changes.receive()
        async with trio.open_nursery() as nursery:
            for seq in range(12):
                nursery.start_soon(node.send, channel["id"], _message(provider, seq))
    async with httpx.AsyncClient() as client:
        return await _counters(client, base, provider)


async def test_the_bench_reads_the_connections_a_channel_s_window_came_on() -> None:
    """Twelve sends at once from a Telegram channel whose window holds them: the pool
    opens a connection for each request in flight, and the emulator counts them."""
    emulator = TelegramEmulator()
    with trio.fail_after(HANG_CEILING):
        async with open_emulator(emulator) as base:
            channel = _channel("telegram", 2, base, limits=False, window=12)
            refused, connections = await _twelve_at_once(channel, "telegram", base)
    assert refused == 0
    served = emulator.http_versions.statistics()
    assert set(served) == {"1.1"}
    assert connections == served["1.1"]["connections"] > 1
    assert len(emulator.sent) == 12
