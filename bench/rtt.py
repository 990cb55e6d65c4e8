"""The ``rtt`` scenario: one channel's throughput over a real round trip.

A real platform is 50-300 ms away; on loopback a channel that has one send
in flight looks fast, and over a real link it is capped at 1/RTT messages
per second. This puts a :class:`~bench.delay_proxy.DelayProxy` adding
``rtt_ms`` between a node and the platform's emulator (in a process of its own, which
enforces the platform's own rate: WhatsApp 80 messages/s per number with
130429 past it, Telegram 30/s per bot with 429, Discord 50 requests/s per
bot with a global 429 and 5 per 5 s on each channel's create-message bucket
with 429) and measures, for each platform,
with the node's rate limits off and on:

- ours: the channel's default send window (enough sends in flight for
  the platform's rate over 300 ms);
- baseline: one send in flight (``send_window = 1``), which is how every
  channel sent before the window (main), in the same run.

Discord's bucket for such a broadcast is not the per-channel one (5 per 5 s
on each DM channel: every message has a bucket of its own) but the bot's
global limit, 50 requests/s, which is also the ``per_channel_rate`` that the
Discord provider declares (``DISCORD_LIMITS``). The emulator enforces both
(the global limit as a fixed one-second window per bot token), so with the
node's limits off a Discord channel that goes past 50/s gets global 429s,
each of which pauses it, as real Discord would answer.

Each measurement is a fresh node and a fresh identity on the emulator
(another phone number, another bot), so no rate budget carries over.
``senders`` tasks send closed-loop, every message to a new recipient
(WhatsApp: a template, which the 24-hour window lets through; Discord: a
channel id of its own, as a bot's broadcast posts to each user's DM
channel). Throughput
is the messages accepted between ``warmup`` and ``warmup + duration``
seconds, so the limiter's initial burst is not counted as a rate. Each
measurement also reports the platform's rate-limit refusals (the emulator's
counter), since one costs the channel a pause of a second or more.
"""

from __future__ import annotations

import functools
import itertools
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import attrs
import httpx
import trio

from providers.base import OutboundMessage, Template

from .delay_proxy import DelayProxy
from .report import Figure, Report, Target, load_average, machine_info, utc_now
from .rig import open_external_emulator
from .scenario import RunContext, Scenario, ScenarioError

__all__ = ["SCENARIO", "RttParams", "run"]

# Messages/s per channel (number, bot). Discord's is the bot's global limit:
# each new recipient is a DM channel with a create-message bucket of its own.
PLATFORM_RATES: Final = {"whatsapp": 80.0, "telegram": 30.0, "discord": 50.0}
TARGET_SHARE: Final = 0.95  # of the platform's rate, at the round trip
# The emulator's counter of the refusals that pause a channel (``GET /_emulator/stats``);
# Discord's counts its route 429s and its global ones.
REFUSALS: Final = {"whatsapp": "error_130429", "telegram": "rate_limited", "discord": "rest_429"}
DISCORD_DM_CHANNELS: Final = 900_000_000_000_000_000  # first recipient's DM channel id


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@attrs.frozen(kw_only=True)
class RttParams:
    """Knobs of the rtt scenario (``bench/scenarios/rtt.toml``)."""

    rtt_ms: float = attrs.field(default=150.0, metadata=_help("round trip added, milliseconds"))
    providers: list[str] = attrs.field(
        factory=lambda: ["whatsapp", "telegram", "discord"],
        metadata=_help("platforms to measure: whatsapp, telegram, discord"),
    )
    senders: int = attrs.field(default=60, metadata=_help("concurrent senders (closed loop)"))
    warmup: float = attrs.field(default=1.5, metadata=_help("seconds before counting"))
    duration: float = attrs.field(default=4.0, metadata=_help("seconds counted per measurement"))


@attrs.frozen(kw_only=True)
class Measured:
    provider: str
    limits: bool
    window: int | None  # None: the platform's default
    rate: float  # accepted messages/s in the counted span
    failures: int  # sends that raised (should be none)
    refusals: int  # the platform's rate-limit refusals (429, 130429) during the run
    cpu_per_message: float  # this process's CPU seconds per accepted message (node + proxy)
    connections: int  # connections the emulator saw the channel's requests come on


def _channel(
    provider: str, n: int, base_url: str, limits: bool, window: int | None
) -> dict[str, Any]:
    channel: dict[str, Any] = {
        "id": f"{provider}-{n}",
        "provider": provider,
        "base_url": base_url,
        "rate_limit": {"enabled": limits},
    }
    if window is not None:
        channel["send_window"] = window
    if provider == "whatsapp":
        made = {
            "token": "EAAG" + secrets.token_hex(16),
            "app_secret": secrets.token_hex(16),
            "verify_token": secrets.token_hex(8),
        }
        channel["options"] = {"phone_number_id": str(100_000_000_000 + n)}
    elif provider == "discord":
        made = {"token": f"rtt-bench-bot-{n}.{secrets.token_urlsafe(27)}"}
    else:
        made = {"token": f"{200_000 + n}:{secrets.token_urlsafe(27)[:35]}"}
    # A deployment file names secrets, never holds them: made up, and put
    # where the file's references find them.
    channel["credentials"] = {}
    for name, value in made.items():
        variable = f"SWITCHBOARD_BENCH_RTT_{n}_{name.upper()}"
        os.environ[variable] = value
        channel["credentials"][name] = "${env:" + variable + "}"
    return channel


def _peer(provider: str, seq: int) -> str:
    """Recipient ``seq``: a phone number, a Telegram chat, or a Discord DM channel
    (a snowflake; the emulator takes a channel it does not know for a DM channel,
    with a create-message bucket of its own)."""
    if provider == "discord":
        return str(DISCORD_DM_CHANNELS + seq)
    return str(15_550_000_000 + seq)


def _message(provider: str, seq: int) -> OutboundMessage:
    peer = _peer(provider, seq)
    key = f"rtt-{seq}"
    if provider == "whatsapp":
        return OutboundMessage(
            peer=peer, idempotency_key=key, template=Template(name="hello_world", language="en_US")
        )
    return OutboundMessage(peer=peer, idempotency_key=key, text="hello")


async def _counters(client: httpx.AsyncClient, emulator: str, provider: str) -> tuple[int, int]:
    """The platform's rate-limit refusals so far, and the connections its requests came on."""
    response = await client.get(f"{emulator}/_emulator/stats")
    response.raise_for_status()
    stats = response.json()
    connections = sum(int(each["connections"]) for each in stats.get("http", {}).values())
    return int(stats.get(REFUSALS[provider], 0)), connections


async def _measure_one(
    params: RttParams,
    provider: str,
    base_url: str,
    n: int,
    limits: bool,
    window: int | None,
    counters: Callable[[], Awaitable[tuple[int, int]]],
) -> Measured:
    from runtime import open_node, parse_config

    config = parse_config(
        {
            "node": {"id": f"rtt-{n}", "start_timeout": 30, "drain_deadline": 5},
            "ops": {"enabled": False},
            "logging": {"level": "error"},
            "channels": [_channel(provider, n, base_url, limits, window)],
        }
    )
    channel_id = f"{provider}-{n}"
    seq = itertools.count(n * 1_000_000)
    accepted: list[float] = []
    failures = 0
    refused, connections = await counters()
    async with open_node(config) as node:
        with node.subscribe(kind="state") as changes:
            while node.channels()[0].status.name != "CONNECTED":
                await changes.receive()
        began = trio.current_time()
        cpu_began = time.process_time()

        async def sender() -> None:
            nonlocal failures
            while True:
                try:
                    await node.send(channel_id, _message(provider, next(seq)), timeout=30)
                except Exception:
                    failures += 1
                    await trio.sleep(0.01)  # no hot loop on a refusal
                    continue
                accepted.append(trio.current_time() - began)

        with trio.move_on_after(params.warmup + params.duration):
            async with trio.open_nursery() as nursery:
                for _ in range(params.senders):
                    nursery.start_soon(sender)
        cpu = time.process_time() - cpu_began
        await node.drain(2.0)
    counted = [t for t in accepted if params.warmup <= t < params.warmup + params.duration]
    refused_after, connections_after = await counters()
    return Measured(
        provider=provider,
        limits=limits,
        window=window,
        rate=len(counted) / params.duration,
        failures=failures,
        refusals=refused_after - refused,
        cpu_per_message=cpu / max(1, len(accepted)),
        connections=connections_after - connections,
    )


async def _measure(params: RttParams, ctx: RunContext) -> list[Measured]:
    results: list[Measured] = []
    plan = [
        (p, limits, window)
        for p in params.providers
        for limits in (False, True)
        for window in (1, None)
    ]
    ctx.progress.phase(f"measuring at {params.rtt_ms:g} ms", total=len(plan), unit="runs")
    for provider in params.providers:
        if provider not in PLATFORM_RATES:
            raise ScenarioError(
                f"the rtt scenario measures {', '.join(PLATFORM_RATES)}, not {provider!r}"
            )
    n = 0
    for provider in params.providers:
        # The emulator in a process of its own, as the platform is: the node's
        # CPU is not shared with the far end's (hypercorn's ~0.4 ms a request).
        async with (
            open_external_emulator(provider) as (url, _),
            httpx.AsyncClient(timeout=10.0) as client,
            trio.open_nursery() as nursery,
        ):
            port = int(url.rsplit(":", 1)[1].split("/")[0])
            proxy = DelayProxy(port, rtt=params.rtt_ms / 1e3)
            proxy_port = await nursery.start(proxy.serve)
            for p, limits, window in plan:
                if p != provider:
                    continue
                n += 1
                base_url = f"http://127.0.0.1:{proxy_port}"
                results.append(
                    await _measure_one(
                        params,
                        provider,
                        base_url,
                        n,
                        limits,
                        window,
                        functools.partial(_counters, client, url, provider),
                    )
                )
                ctx.progress.update(n)
            nursery.cancel_scope.cancel()
    return results


def run(params: RttParams, ctx: RunContext) -> Report:
    """Measure each platform, limits off and on, windowed beside one in flight."""
    started = utc_now()
    load_before = load_average()
    t0 = time.perf_counter()
    measured = trio.run(_measure, params, ctx)
    by_key = {(m.provider, m.limits, m.window): m for m in measured}
    figures: list[Figure] = []
    notes = [
        f"one channel, {params.rtt_ms:g} ms round trip added by a TCP delay proxy in front of the "
        f"platform's emulator; {params.senders} closed-loop senders, each message to a new "
        f"recipient; accepted messages counted from {params.warmup:g} s for "
        f"{params.duration:g} s; baseline: send_window = 1 (one send in flight, as before "
        "the window), in the same run; connections: those the emulator saw the channel's "
        "requests come on"
    ]
    for provider in params.providers:
        rate = PLATFORM_RATES[provider]
        for limits in (False, True):
            ours, one = by_key[(provider, limits, None)], by_key[(provider, limits, 1)]
            mode = "on" if limits else "off"
            figures.append(
                Figure.from_samples(
                    name=f"{provider}_limits_{mode}_msgs_s",
                    label=(
                        f"{provider}, one channel at {params.rtt_ms:g} ms, limits {mode} "
                        f"(platform: {rate:g}/s)"
                    ),
                    unit="msgs/s",
                    samples=[ours.rate],
                    baseline_samples=[one.rate],
                    baseline_label="one send in flight (send_window = 1, as on main)",
                    better="higher",
                    target=Target(
                        applies_to="value",
                        op=">=",
                        threshold=TARGET_SHARE * rate,
                        text=f">= {TARGET_SHARE:.0%} of {rate:g}/s",
                    ),
                )
            )
            notes.append(
                f"{provider} limits {mode}: {ours.rate:.1f} msgs/s = {ours.rate / rate:.0%} of "
                f"the platform's {rate:g}/s (one in flight: {one.rate:.1f} msgs/s = "
                f"{one.rate / rate:.0%}); failed sends: {ours.failures} / {one.failures}; "
                f"the platform's rate-limit refusals: {ours.refusals} / {one.refusals}; "
                f"node CPU per message {ours.cpu_per_message * 1e3:.2f} ms / "
                f"{one.cpu_per_message * 1e3:.2f} ms; connections to the platform "
                f"{ours.connections} / {one.connections}"
            )
        if provider == "discord":
            notes.append(
                "discord's rate is the bot's global 50 requests/s: each recipient is a DM "
                "channel with a create-message bucket of its own (5 per 5 s). The emulator "
                "enforces those buckets and the global rate (50 per one-second window per "
                "bot token, a global 429 past it)"
            )
    return Report(
        scenario="rtt",
        started=started,
        duration=time.perf_counter() - t0,
        parameters={**attrs.asdict(params), "quick": ctx.quick},
        machine=machine_info(),
        load_average={"before": load_before, "after": load_average()},
        section_seconds={"total": round(time.perf_counter() - t0, 2)},
        figures=figures,
        notes=notes,
    )


SCENARIO: Final = Scenario(
    name="rtt",
    help="one channel's msgs/s over a real round trip, windowed beside one send in flight",
    params=RttParams,
    run=run,
)
