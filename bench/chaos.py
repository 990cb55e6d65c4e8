"""The ``chaos`` scenario: channels of every platform under load while faults hit them.

Design:
- One real node (``open_node``, the embedding API) runs the channels of all
  four platforms (websocket, Telegram, Discord, WhatsApp) against their
  emulators, which run in a process of their own
  (:mod:`bench.chaos_platforms`): they are the judges of what was sent,
  and what they keep must not count in the node's memory. The node's
  store is PostgreSQL, reached through a :class:`~providers.testing.LinkBreaker`
  that the script cuts for a store outage; its ops listener serves
  ``/health`` and the WhatsApp webhooks.
- For ``duration`` seconds the run sends at ``send_rate`` through
  ``Node.send`` and injects user messages at ``inbound_rate`` at the
  platforms (:mod:`bench.chaos_load`), while :mod:`bench.chaos_faults`
  applies a fault every ``fault_interval`` seconds after ``warmup``. A
  thread asks ``/health`` every ``health_interval`` seconds and times the
  answer (its own clock, outside the node's loop); the node's RSS is
  sampled every second.
- Then the run settles (bounded by ``settle``): sends still retrying may
  finish, every channel must be connected again, the store must hold what
  was injected. Then it counts, on the judges' side:

  * messages: offered, accepted (the send returned), delivered (the
    platform's records name the key), dead-lettered (refused for good,
    and held in the channel's dead letters), **lost** = offered, neither
    delivered nor a dead letter;
  * inbound: injected (owed to a channel), stored (the node's PostgreSQL
    tables hold it), **lost** = owed, not stored;
  * node restarts: restarts of the node's own children (the channels
    supervisor restarted with every channel in it, a service) plus the
    node ending before the run did;
  * RSS: a third into the load, at the end of the load, and its slope
    (least squares) over the load once warm (after the first third);
  * ``/health``: p50, p99 and max latency over the run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any, Final

import attrs
import httpx
import psutil
import trio

from actors import ChannelStatus
from providers.testing import LinkBreaker
from runtime import Node, NodeError, StoreError, open_node, parse_config
from runtime.config import NodeConfig
from supervisors import SupervisorExited

from .chaos_faults import KINDS, FaultScript
from .chaos_load import KEY_PREFIX, ChaosChannel, InboundLoad, SendLoad
from .chaos_platforms import (
    PLATFORMS,
    WA_APP_SECRET,
    WA_VERIFY_TOKEN,
    open_platforms,
    token,
    wa_number,
)
from .chaos_report import ChaosOutcome, figures, notes, series
from .cluster_rig import drop_pg_schema
from .crash_observe import captured_logs
from .report import Report, load_average, machine_info, utc_now
from .rig import EmulatorControl, rtt_field
from .scenario import RunContext, Scenario, ScenarioError

__all__ = ["SCENARIO", "ChaosParams", "run"]

SHARES: Final = {"websocket": 0.3, "telegram": 0.25, "whatsapp": 0.25, "discord": 0.2}
PREFIXES: Final = {"websocket": "ws", "telegram": "tg", "discord": "dc", "whatsapp": "wa"}
START_BASE: Final = 30.0  # seconds for every channel to connect ...
START_PER: Final = 0.12  # ... plus this per channel
DRAIN_RESERVE: Final = 25.0  # seconds kept for leaving the node and reading the judges
RSS_INTERVAL: Final = 1.0  # seconds between RSS samples
PAGE: Final = 10_000  # messages read from a platform's record at once
KEY: Final = re.compile(re.escape(KEY_PREFIX) + r"(k\d+)")
TELEGRAM_POLL: Final = 10  # seconds a getUpdates waits (250 bots polling every second: load)
DEFAULT_PG: Final = "postgresql://postgres@127.0.0.1:5432/test"


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@attrs.frozen(kw_only=True)
class ChaosParams:
    """The knobs of the chaos scenario (each is also a ``--option``)."""

    channels: int = attrs.field(
        default=1000,
        validator=attrs.validators.ge(4),
        metadata=_help(
            "channels over the four platforms (30% websocket, 25% Telegram, "
            "25% WhatsApp, 20% Discord)"
        ),
    )
    duration: float = attrs.field(
        default=120.0, validator=attrs.validators.gt(0.0), metadata=_help("seconds of load")
    )
    send_rate: float = attrs.field(
        default=50.0,
        validator=attrs.validators.gt(0.0),
        metadata=_help("messages sent per second, all channels together"),
    )
    inbound_rate: float = attrs.field(
        default=20.0,
        validator=attrs.validators.gt(0.0),
        metadata=_help("user messages per second injected at the platforms"),
    )
    warmup: float = attrs.field(
        default=10.0,
        validator=attrs.validators.ge(0.0),
        metadata=_help("seconds of load before the first fault"),
    )
    fault_interval: float = attrs.field(
        default=5.0, validator=attrs.validators.gt(0.0), metadata=_help("seconds between faults")
    )
    share: float = attrs.field(
        default=0.05,
        validator=[attrs.validators.gt(0.0), attrs.validators.le(1.0)],
        metadata=_help("fraction of a platform's channels (or requests) one fault hits"),
    )
    outage: float = attrs.field(
        default=15.0,
        validator=attrs.validators.gt(0.0),
        metadata=_help("seconds a store outage lasts"),
    )
    ban_seconds: float = attrs.field(
        default=10.0,
        validator=attrs.validators.gt(0.0),
        metadata=_help("seconds a ban lasts before it is lifted and the channel revived"),
    )
    settle: float = attrs.field(
        default=90.0,
        validator=attrs.validators.gt(0.0),
        metadata=_help("seconds at most for the last sends, reconnects and stores after the load"),
    )
    health_interval: float = attrs.field(
        default=0.25,
        validator=attrs.validators.gt(0.0),
        metadata=_help("seconds between two /health requests"),
    )
    rss_slope_limit: float = attrs.field(
        default=6.0,
        validator=attrs.validators.gt(0.0),
        metadata=_help("target: RSS growth once warm, MB per minute, at most"),
    )
    pg_dsn: str = attrs.field(
        default=os.environ.get("SWITCHBOARD_TEST_PG", DEFAULT_PG),
        metadata=_help("PostgreSQL for the node's store (a schema of its own, dropped after)"),
    )
    seed: int = attrs.field(default=1, metadata=_help("seed of the faults' targets"))
    rtt_ms: float = rtt_field()


def run(params: ChaosParams, ctx: RunContext) -> Report:
    """Run the scenario and build its report."""
    if ctx.target is not None:
        raise ScenarioError("chaos runs its own node (it kills actors inside it); no --target")
    started, before, clock = utc_now(), load_average(), time.monotonic()
    sections: dict[str, float] = {}
    with captured_logs() as logs, _quiet("asyncpg", logs):
        outcome = trio.run(_measure, params, ctx, sections)
    outcome.log_warnings = dict(logs.unexpected)
    outcome.log_examples = list(logs.examples)
    return Report(
        scenario="chaos",
        started=started,
        duration=time.monotonic() - clock,
        parameters={**attrs.asdict(params), "pg_dsn": "(hidden)", "quick": ctx.quick},
        machine=machine_info(),
        load_average={"before": before, "after": load_average()},
        section_seconds=sections,
        figures=figures(outcome, params),
        notes=notes(outcome, params),
        series=series(outcome),
    )


@contextlib.contextmanager
def _quiet(name: str, tally: logging.Handler) -> Iterator[None]:
    """Logger ``name``'s records go to ``tally`` only (asyncpg's pool logs tracebacks
    to stderr during a store outage; the node's own records say the same in one line)."""
    logger = logging.getLogger(name)
    propagate = logger.propagate
    logger.addHandler(tally)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(tally)
        logger.propagate = propagate


# ---------------------------------------------------------------- the rig


def make_channels(total: int) -> list[ChaosChannel]:
    """``total`` channels over the platforms by :data:`SHARES` (at least one each)."""
    counts = {name: max(1, math.floor(total * share)) for name, share in SHARES.items()}
    counts["websocket"] += total - sum(counts.values())
    return [
        ChaosChannel(
            id=f"{PREFIXES[provider]}-{i:04d}",
            provider=provider,
            index=i,
            token=token(provider, i),
        )
        for provider in PLATFORMS
        for i in range(counts[provider])
    ]


def node_config(
    channels: list[ChaosChannel], urls: dict[str, str], dsn: str, schema: str, ops_port: int
) -> NodeConfig:
    """The node under test: PostgreSQL store, ops listener, every channel."""
    env = {f"SB_CHAOS_{c.id.replace('-', '_').upper()}": c.token for c in channels}
    env["SB_CHAOS_WA_SECRET"] = WA_APP_SECRET
    env["SB_CHAOS_WA_VERIFY"] = WA_VERIFY_TOKEN
    tables: list[dict[str, Any]] = []
    for c in channels:
        base = urls[c.provider]
        if c.provider == "websocket":
            base = base.replace("http://", "ws://", 1) + "/ws"
        credentials = {"token": f"${{env:SB_CHAOS_{c.id.replace('-', '_').upper()}}}"}
        table: dict[str, Any] = {"id": c.id, "provider": c.provider, "base_url": base}
        if c.provider == "whatsapp":
            credentials["app_secret"] = "${env:SB_CHAOS_WA_SECRET}"
            credentials["verify_token"] = "${env:SB_CHAOS_WA_VERIFY}"
            table["options"] = {"phone_number_id": wa_number(c.index)}
        elif c.provider == "telegram":
            table["options"] = {"poll_timeout": TELEGRAM_POLL}
        table["credentials"] = credentials
        tables.append(table)
    return parse_config(
        {
            "node": {"id": "chaos", "drain_deadline": 5.0, "start_timeout": 600.0},
            "ops": {"port": ops_port},
            "logging": {"level": "error"},
            "storage": {
                "backend": "postgres",
                "dsn": dsn,
                "schema": schema,
                "flush_interval": 0.1,
                "checkpoint_interval": 1.0,
            },
            "channels": tables,
        },
        source="bench chaos",
        env=env,
    )


class HealthProbe:
    """A thread that times ``GET /health`` on the node: (seconds since start, ms, status)."""

    def __init__(self, url: str, interval: float) -> None:
        self.url = url
        self.interval = interval
        self.samples: list[tuple[float, float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-health", daemon=True)
        self._start = time.monotonic()

    def __repr__(self) -> str:
        return f"<HealthProbe {self.url} samples={len(self.samples)}>"

    def start(self) -> None:
        self._start = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15.0)

    def _run(self) -> None:
        with httpx.Client(timeout=30.0) as client:
            while not self._stop.is_set():
                began = time.monotonic()
                try:
                    status = client.get(self.url).status_code
                except httpx.HTTPError:
                    status = 0
                done = time.monotonic()
                self.samples.append((began - self._start, (done - began) * 1000.0, status))
                self._stop.wait(max(0.0, self.interval - (done - began)))


# ---------------------------------------------------------------- the run


async def _measure(
    params: ChaosParams, ctx: RunContext, sections: dict[str, float]
) -> ChaosOutcome:
    channels = make_channels(params.channels)
    counts = Counter(c.provider for c in channels)
    outcome = ChaosOutcome(channels=dict(counts))
    schema = f"sb_chaos_{int(time.time() * 1000) % 10**9}_{os.getpid()}"
    host_port = params.pg_dsn.split("@")[-1].split("/")[0]
    host, _, port = host_port.partition(":")
    breaker = LinkBreaker(int(port or 5432), target_host=host)
    clock = time.monotonic()
    try:
        async with (
            trio.open_nursery() as services,
            httpx.AsyncClient(timeout=30.0) as client,
            open_platforms(
                dict(counts),
                port_base=ctx.port_base + 1 if ctx.port_base else 0,
                latency=params.rtt_ms / 1e3,
            ) as (
                urls,
                pid,
            ),
        ):
            proxy = await services.start(breaker.serve)
            dsn = params.pg_dsn.replace(host_port, f"127.0.0.1:{proxy}")
            controls = {name: EmulatorControl(name, url, client, pid) for name, url in urls.items()}
            config = node_config(channels, urls, dsn, schema, ctx.port_base)
            ctx.progress.phase(f"starting a node with {len(channels):,} channels")
            try:
                async with open_node(config) as node:
                    await _run_inside(
                        params, ctx, node, channels, controls, breaker, outcome, sections, clock
                    )
                    clock = time.monotonic()
                    ctx.progress.phase("leaving the node (drain)")
            except SupervisorExited as exc:
                outcome.node_failure = str(exc.exit)
            sections["drain"] = time.monotonic() - clock
            clock = time.monotonic()
            ctx.progress.phase("reading the judges: platforms and store")
            outcome.platform_keys = await _sent_keys(controls)
            outcome.platform_stats = {name: await c.stats() for name, c in controls.items()}
            services.cancel_scope.cancel()
        outcome.stored = await stored_texts(params.pg_dsn, schema)
        sections["judges"] = time.monotonic() - clock
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(30):
            await drop_pg_schema(params.pg_dsn, schema)
    if outcome.failure is not None:
        raise ScenarioError(outcome.failure)
    return outcome


async def _run_inside(
    params: ChaosParams,
    ctx: RunContext,
    node: Node,
    channels: list[ChaosChannel],
    controls: dict[str, EmulatorControl],
    breaker: LinkBreaker,
    outcome: ChaosOutcome,
    sections: dict[str, float],
    clock: float,
) -> None:
    assert node.ops_url is not None
    if not await _wait_connected(node, len(channels), START_BASE + START_PER * len(channels), ctx):
        outcome.failure = (
            f"only {_connected(node)}/{len(channels)} channels connected in time; "
            "try fewer channels or a longer time_limit"
        )
        return
    if "whatsapp" in controls:
        # Once connected: the node answers Meta's verification only for a live
        # number (503 before), and over a round trip (--rtt) none is live yet.
        response = await controls["whatsapp"].client.post(
            f"{controls['whatsapp'].url}/_emulator/webhook",
            json={"url": node.ops_url + "/webhooks/whatsapp", "verify_token": WA_VERIFY_TOKEN},
        )
        if response.status_code >= 400:
            outcome.failure = f"the WhatsApp emulator refused the webhook: {response.text[:300]}"
            return
    sections["start"] = time.monotonic() - clock
    clock = time.monotonic()
    banned: set[str] = set()
    sends = SendLoad(node, channels, params.send_rate, banned=banned)
    inbound = InboundLoad(controls, channels, params.inbound_rate, banned=banned)
    script = FaultScript(
        node=node,
        controls=controls,
        channels=channels,
        breaker=breaker,
        banned=banned,
        seed=params.seed,
        share=params.share,
        outage=params.outage,
        ban_seconds=params.ban_seconds,
    )
    outcome.sends, outcome.inbound, outcome.script = sends, inbound, script
    duration = min(params.duration, ctx.remaining() - DRAIN_RESERVE - 10.0)
    if duration <= 0:
        outcome.failure = f"the time limit leaves no time for the load ({ctx.remaining():.0f} s)"
        return
    if duration < params.duration:
        outcome.cut_short = f"the load ran {duration:.0f} s of {params.duration:g} (time limit)"
    ctx.progress.phase("the WhatsApp users write first (the sends need their window open)")
    async with trio.open_nursery() as greeting:
        await inbound.greet(greeting)
    probe = HealthProbe(node.ops_url + "/health", params.health_interval)
    start = trio.current_time()
    outcome.load_seconds = duration
    probe.start()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_sample_rss, outcome, start)
            nursery.start_soon(_report, ctx, outcome, start, duration)
            async with trio.open_nursery() as load:
                # The sends' own tasks live in the outer nursery: they retry into the settling.
                load.start_soon(sends.offer, duration, nursery)
                load.start_soon(inbound.offer, duration)
                quiet = min(
                    duration, max(params.outage, params.ban_seconds) + params.fault_interval
                )
                load.start_soon(
                    lambda: script.run(
                        duration - quiet, params.fault_interval, first=min(params.warmup, duration)
                    )
                )
            outcome.load_end = trio.current_time() - start
            sections["load"] = time.monotonic() - clock
            clock = time.monotonic()
            await _settle(params, ctx, node, outcome, len(channels), start)
            sections["settle"] = time.monotonic() - clock
            nursery.cancel_scope.cancel()
    finally:
        probe.stop()
    outcome.health = list(probe.samples)
    _collect(node, outcome, channels)


def _connected(node: Node) -> int:
    return sum(s.status is ChannelStatus.CONNECTED for s in node.channels())


async def _wait_connected(node: Node, n: int, limit: float, ctx: RunContext) -> bool:
    ctx.progress.phase("connecting", total=n, unit="channels")
    with trio.move_on_after(min(limit, max(1.0, ctx.remaining() - DRAIN_RESERVE))):
        while (up := _connected(node)) < n:
            ctx.progress.update(up)
            await trio.sleep(0.5)
        return True
    return False


async def _sample_rss(outcome: ChaosOutcome, start: float) -> None:
    process = psutil.Process()
    while True:
        outcome.rss.append((trio.current_time() - start, process.memory_info().rss))
        await trio.sleep(RSS_INTERVAL)


async def _report(ctx: RunContext, outcome: ChaosOutcome, start: float, duration: float) -> None:
    ctx.progress.phase("load with faults", total=duration, unit="s")
    while True:
        await trio.sleep(1.0)
        s = outcome.sends
        ctx.progress.update(
            min(duration, trio.current_time() - start),
            accepted=len(s.accepted) if s else 0,
            in_flight=s.in_flight if s else 0,
            faults=len(outcome.script.records) if outcome.script else 0,
        )


async def _settle(
    params: ChaosParams,
    ctx: RunContext,
    node: Node,
    outcome: ChaosOutcome,
    total: int,
    start: float,
) -> None:
    """Until the sends ended, every channel is connected and the store holds the inbound."""
    assert outcome.sends is not None and outcome.inbound is not None
    sends, inbound = outcome.sends, outcome.inbound
    limit = min(params.settle, max(1.0, ctx.remaining() - DRAIN_RESERVE))
    sends.stop_at = trio.current_time() + limit
    ctx.progress.phase("settling: last sends, reconnects, stores", total=limit, unit="s")
    began = trio.current_time()
    with trio.move_on_after(limit):
        while sends.in_flight or _connected(node) < total:
            ctx.progress.update(trio.current_time() - began, in_flight=sends.in_flight)
            await trio.sleep(0.5)
        while len(inbound.owed - await _stored_now(node, len(inbound.owed))) > 0:
            ctx.progress.update(trio.current_time() - began)
            await trio.sleep(2.0)
    outcome.settle_end = trio.current_time() - start
    outcome.unanswered = dict(sends.pending)
    outcome.settled = not sends.in_flight and _connected(node) == total


async def _stored_now(node: Node, owed: int) -> set[tuple[str, str]]:
    """``(channel, text)`` of the user messages the node's store holds now."""
    try:
        events = await node.store.recent_inbound(None, limit=owed + 100_000)
    except StoreError:
        return set()
    return {(e.channel_id, str(getattr(e, "text", ""))) for e in events}


def _collect(node: Node, outcome: ChaosOutcome, channels: list[ChaosChannel]) -> None:
    """What only the running node can say: dead letters, statuses, its own restarts."""
    for c in channels:
        try:
            detail = node.channel_detail(c.id)
        except NodeError as exc:
            outcome.failed.setdefault(c.id, f"no detail: {exc}")
            continue
        outcome.dead_letters.update(str(d["idempotency_key"]) for d in detail.dead_letters)
        outcome.dead_letters_dropped += detail.dead_letters_dropped
    outcome.statuses = Counter(s.status.value for s in node.channels())
    outcome.failed = {
        s.channel_id: str(s.statistics.last_error if s.statistics else "")
        for s in node.channels()
        if s.status is ChannelStatus.FAILED
    }
    tree = node.tree()
    outcome.node_restarts = sum(child.restarts for child in tree.children)
    outcome.channel_restarts = node.statistics().restarts


async def _sent_keys(controls: dict[str, EmulatorControl]) -> Counter[str]:
    """Every key in what the platforms recorded as sent (a key twice: a duplicate)."""
    keys: Counter[str] = Counter()
    for control in controls.values():
        offset = 0
        while True:
            response = await control.client.get(
                f"{control.url}/_emulator/sent", params={"offset": offset, "limit": PAGE}
            )
            response.raise_for_status()
            page = response.json()
            if not page:
                break
            for record in page:
                keys.update(set(KEY.findall(json.dumps(record))))
            offset += len(page)
    return keys


async def stored_texts(dsn: str, schema: str) -> set[tuple[str, str]]:
    """``(channel, text)`` of every user message in the node's store (read after the run)."""
    import asyncpg  # type: ignore[import-untyped]
    import trio_asyncio  # type: ignore[import-untyped]

    async with trio_asyncio.open_loop() as loop:
        conn = await trio_asyncio.aio_as_trio(asyncpg.connect, loop=loop)(dsn)
        try:
            rows = await trio_asyncio.aio_as_trio(conn.fetch, loop=loop)(
                f"SELECT channel_id, payload->>'text' AS text FROM \"{schema}\".inbound_events"
            )
        finally:
            await trio_asyncio.aio_as_trio(conn.close, loop=loop)()
    return {(row["channel_id"], row["text"]) for row in rows}


SCENARIO: Final = Scenario(
    name="chaos",
    help="channels of every platform under send and inbound load while platform, store and "
    f"actor faults hit them ({', '.join(KINDS)}): lost (must be 0), node restarts, RSS, "
    "/health latency",
    params=ChaosParams,
    run=run,
)
