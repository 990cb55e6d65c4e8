"""The ``channels`` scenario: N live channels under outbound and inbound load.

What it does, in order:

1. Starts the emulator (a separate process by default, so the node's
   open-files limit holds one descriptor per channel) and, for websocket
   channels, measures the baselines against the same emulator, each in a
   fresh process (:mod:`bench.ws_bare`): memory, the same number of bare
   trio-websocket client connections; and sends, a bare trio + wsproto
   client doing each load step's sends (same connections, rate, duration,
   text, pacing and acks), before the node's channels connect, so the
   two never share the machine. For Telegram and WhatsApp channels the
   send baseline is a bare httpx client making the providers' send
   requests (:mod:`bench.http_bare`), the same way.
   The memory baseline's CPU from its first connect to its last open is the
   bare client's CPU per connect, the node's CPU per connect's baseline;
   its connections then stay open ``idle`` seconds with
   nothing to do but answer heartbeats: the bare client's idle CPU.
2. Starts N channels in a node (``connect_rate`` per second, or all at
   once) and waits until every one is connected: connects/s, and memory per
   channel as the node's RSS delta over N, after a full collection. Once the
   node's collector policy has settled, ``idle`` seconds with no load: the
   node's and the far end's CPU while N channels only stay connected,
   beside the bare client's.
3. Drives outbound load open-loop: message ``i`` of a step is due at
   ``start + i / rate``, whether or not earlier sends have finished, on
   channel ``i mod N``, through ``Node.send`` (the embedding API). Latency
   runs from when a message was due to when the platform acknowledged it,
   so a stalled node shows up as latency, not as a slower load
   (no coordinated omission). Each load step in ``rates`` runs for
   ``duration`` seconds; the busiest step gives the throughput figure, the
   step nearest ``latency_at`` gives the latency target's figure.
4. Inbound load (``inbound_rate`` messages/s in all): the websocket
   emulator broadcasts one injected message to every connected channel, so
   one inject per ``N / inbound_rate`` seconds makes the rate; arrivals are
   counted from the node's event hub.
5. Discord gateway compression (``compressions``, Discord only): in a
   fresh node against a fresh emulator, one receive phase per mode (none,
   zlib-stream, zstd-stream): bytes on the wire, node and emulator CPU per
   event, each beside uncompressed in the same run
   (:mod:`bench.channels_compression`).

Everything is bounded: each step's length, the connect phase (by the time
left), and the drain of in-flight sends at a step's end.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import gc
import json
import math
import subprocess
import sys
import time
from collections import Counter
from typing import Any, Final

import attrs
import httpx
import trio

from providers.base import PlatformLimits, default_send_window
from providers.telegram.core import TELEGRAM_LIMITS
from providers.whatsapp.core import WHATSAPP_LIMITS
from runtime.collection import QUIET as GC_QUIET
from runtime.collection import STORM_CONNECTS
from runtime.config.model import NodeSection, StorageConfig
from runtime.outbox import Sent

from .bare import TaskSteps
from .channels_compression import CompressionPhase, compression_figures, measure_compression
from .plots import PERCENTILES, percentile_x
from .report import Figure, Report, Series, Target, load_average, machine_info, percentile, utc_now
from .rig import (
    EMULATED,
    ConnectPhase,
    Rig,
    connect_all,
    connection_capacity,
    cpu_seconds,
    emulator_processes_field,
    far_end_field,
    open_rig,
    per_interval,
    raise_open_files_limit,
    rtt_field,
)
from .scenario import RunContext, Scenario, ScenarioError

__all__ = ["SCENARIO", "ChannelsParams", "run"]

TICK: Final = 0.002  # seconds between pacer wake-ups
KB: Final = 1024
# The HTTP providers whose sends a bare httpx client does beside the node's
# (bench.http_bare), with the limits that size each channel's connection pool.
HTTP_BARE: Final[dict[str, PlatformLimits]] = {
    "telegram": TELEGRAM_LIMITS,
    "whatsapp": WHATSAPP_LIMITS,
}
WS_CPU_RATIO: Final = 1.0  # node / bare CPU per delivered websocket message, at most
HTTP_CPU_RATIO: Final = 1.2  # node / bare CPU per delivered HTTP message, at most


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@attrs.frozen(kw_only=True)
class ChannelsParams:
    """Knobs of the channels scenario (``bench/scenarios/channels*.toml``)."""

    provider: str = attrs.field(
        default="websocket",
        metadata=_help("websocket, discord, telegram, whatsapp or simulated"),
    )
    channels: int = attrs.field(default=1_000, metadata=_help("channels to run"))
    emulator: str = attrs.field(
        default="process",
        metadata=_help("process (a separate emulator process) or inprocess"),
    )
    far_end: str = far_end_field()
    emulator_processes: int = emulator_processes_field()
    rtt_ms: float = rtt_field()
    connect_rate: float = attrs.field(
        default=0.0, metadata=_help("channels started per second (0: all at once)")
    )
    rates: list[float] = attrs.field(
        factory=lambda: [5_000.0, 10_000.0],
        metadata=_help("outbound load steps, messages/s in all (empty: no outbound load)"),
    )
    duration: float = attrs.field(default=15.0, metadata=_help("seconds per load step"))
    idle: float = attrs.field(
        default=0.0,
        metadata=_help(
            "seconds idle after the connects (and the bare baseline's): node, far end and "
            "bare client CPU with no load (0: skipped)"
        ),
    )
    limits: bool = attrs.field(
        default=False, metadata=_help("keep the platforms' rate limits (off: raw throughput)")
    )
    inbound_rate: float = attrs.field(
        default=0.0, metadata=_help("inbound messages/s injected through the emulator")
    )
    latency_at: float = attrs.field(
        default=5_000.0,
        metadata=_help("the load step whose p99 is held to the latency target (msgs/s)"),
    )
    max_in_flight: int = attrs.field(
        default=50_000, metadata=_help("sends outstanding at once before load is shed")
    )
    node_max_in_flight: int = attrs.field(
        default=attrs.fields(NodeSection).max_sends_in_flight.default,
        metadata=_help(
            "the node's [node] max_sends_in_flight: past it a send is refused at once "
            "(Overloaded, counted as failed)"
        ),
    )
    node_max_loop_lag: float = attrs.field(
        default=attrs.fields(NodeSection).max_loop_lag.default,
        metadata=_help(
            "the node's [node] max_loop_lag, seconds (0: off, else at least 0.05): once its "
            "event loop stays this far behind it takes only as many sends in flight as the "
            "loop runs within it, and refuses the rest at once (Overloaded, counted as failed)"
        ),
    )
    checkpoint_interval: float = attrs.field(
        default=attrs.fields(StorageConfig).checkpoint_interval.default,
        metadata=_help(
            "the node's [storage] checkpoint_interval, seconds between two checkpoint rounds "
            "(a round writes every channel a send touched; the bare client keeps no state, so "
            "a long interval shows the send path's cost without them)"
        ),
    )
    text_size: int = attrs.field(default=40, metadata=_help("characters per message"))
    baseline: bool = attrs.field(
        default=True,
        metadata=_help(
            "measure bare clients beside the node (websocket: memory, idle and sends; "
            "telegram, whatsapp: sends)"
        ),
    )
    compressions: list[str] = attrs.field(
        factory=list,
        metadata=_help(
            "discord gateway compression modes to measure (none, zlib-stream, zstd-stream)"
        ),
    )
    webhooks: bool = attrs.field(
        default=True,
        metadata=_help(
            "whatsapp with emulator=process: its status webhooks (three a message) go to "
            "the node (off: the node only sends, as the bare client does)"
        ),
    )
    task_steps: bool = attrs.field(
        default=False,
        metadata=_help(
            "count trio task steps and spawns per delivered message, in the node and the "
            "bare websocket client: counts, steady whatever the machine's load (the "
            "counting costs some CPU, so read CPU figures from a run without it)"
        ),
    )
    send_api: str = attrs.field(
        default="outbox",
        metadata=_help(
            "how the load reaches the node: outbox (Node.outbox: the pacer starts each send "
            "and a callback takes its outcome, no task waits on a send, as the bare client's "
            "pacer and readers) or send (worker tasks each awaiting Node.send, beside the bare "
            "client with worker tasks awaiting each ack)"
        ),
    )
    gc: str = attrs.field(
        default="tuned",
        metadata=_help("the node's [node] gc policy: tuned (freeze what settled) or default"),
    )
    compression_channels: int = attrs.field(
        default=20, metadata=_help("channels per compression phase")
    )
    compression_events: int = attrs.field(
        default=100,
        metadata=_help("messages injected per compression phase (each to every channel)"),
    )

    def __attrs_post_init__(self) -> None:
        problems = []
        if self.channels < 1:
            problems.append(f"channels: expected at least 1, got {self.channels}")
        if self.send_api not in ("outbox", "send"):
            problems.append(f"send_api: expected 'outbox' or 'send', got {self.send_api!r}")
        if self.gc not in ("tuned", "default"):
            problems.append(f"gc: expected 'tuned' or 'default', got {self.gc!r}")
        if self.emulator not in ("process", "inprocess"):
            problems.append(f"emulator: expected 'process' or 'inprocess', got {self.emulator!r}")
        if any(r <= 0 for r in self.rates):
            problems.append(f"rates: every step must be positive, got {self.rates}")
        for name in (
            "duration",
            "text_size",
            "max_in_flight",
            "node_max_in_flight",
            "checkpoint_interval",
        ):
            value = getattr(self, name)
            if not value > 0 or not math.isfinite(value):  # (NaN is neither above nor below)
                problems.append(f"{name}: expected a positive finite number, got {value}")
        if 0 < self.node_max_loop_lag < 0.05:
            lag = self.node_max_loop_lag
            problems.append(f"node_max_loop_lag: expected 0 (off) or at least 0.05, got {lag}")
        for name in ("connect_rate", "inbound_rate", "idle", "node_max_loop_lag"):
            if getattr(self, name) < 0:
                problems.append(f"{name}: expected 0 or more, got {getattr(self, name)}")
        if self.inbound_rate and self.provider != "websocket":
            problems.append("inbound_rate: inbound load is injected for websocket channels only")
        if self.compressions and self.provider != "discord":
            problems.append("compressions: measured for discord channels only")
        for name in ("compression_channels", "compression_events"):
            if getattr(self, name) < 1:
                problems.append(f"{name}: expected at least 1, got {getattr(self, name)}")
        if problems:
            raise ValueError("; ".join(problems))


# ---------------------------------------------------------------- load steps


@attrs.define
class StepResult:
    """One load step's raw results."""

    rate: float
    duration: float
    scheduled: int = 0
    ok: int = 0
    shed: int = 0
    errors: Counter[str] = attrs.Factory(Counter)
    latencies: list[float] = attrs.Factory(list)  # seconds, in completion order
    by_second: list[list[float]] = attrs.Factory(list)  # latencies by due second
    done_at: list[float] = attrs.Factory(list)  # completion times since step start
    elapsed: float = 0.0
    cpu: float = 0.0  # node process CPU seconds
    emulator_cpu: float | None = None
    in_flight_peak: int = 0
    refused: Counter[str] = attrs.Factory(Counter)  # by the node, by Overloaded.scope
    loop_lag: float = 0.0  # the node's worst lateness over the step's last ten seconds
    gc: GcWatch = attrs.Factory(lambda: GcWatch())
    steps: TaskSteps | None = None  # with --task-steps

    @property
    def delivered_rate(self) -> float:
        return self.ok / self.elapsed if self.elapsed else 0.0

    def quantile(self, q: float) -> float:
        return percentile(sorted(self.latencies), q) if self.latencies else math.nan


class GcWatch:
    """The collector's pauses in this process while it is entered (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]  # collections by generation
        self.total = 0.0  # seconds in collections
        self.longest = 0.0  # the longest pause, seconds
        self._began = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
            return
        took = time.perf_counter() - self._began
        self.count[info["generation"]] += 1
        self.total += took
        self.longest = max(self.longest, took)

    def __enter__(self) -> GcWatch:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc_info: object) -> None:
        gc.callbacks.remove(self._callback)


class _Meter:
    """What a load step reads before it and after it: the node's CPU, the far
    end's, and the node's refusals."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.cpu0 = cpu_seconds()
        self.emu0 = rig.emulator.cpu_seconds() if rig.emulator else None
        self.refused0 = Counter(rig.node.statistics().sends_refused)

    def finish(self, result: StepResult, start: float, unfinished: int) -> StepResult:
        if unfinished:
            result.errors["unfinished at the step's deadline"] += unfinished
        result.elapsed = max(result.done_at, default=trio.current_time() - start)
        result.cpu = cpu_seconds() - self.cpu0
        rig = self.rig
        statistics = rig.node.statistics()
        result.refused = Counter(statistics.sends_refused) - self.refused0
        result.loop_lag = statistics.loop_lag
        emu1 = rig.emulator.cpu_seconds() if rig.emulator else None
        emu0 = self.emu0
        result.emulator_cpu = emu1 - emu0 if emu0 is not None and emu1 is not None else None
        return result


def _delivered(result: StepResult, start: float, due_at: float, now: float) -> None:
    """Count a send the far end acknowledged at ``now``, due at ``due_at``."""
    latency = now - due_at
    result.ok += 1
    result.latencies.append(latency)
    result.done_at.append(now - start)
    second = int(due_at - start)
    if 0 <= second < len(result.by_second):
        result.by_second[second].append(latency)


async def _paced(rig: Rig, result: StepResult, ctx: RunContext, sent: int, in_flight: int) -> None:
    """The pacer's wait for its next tick, once it has sent what was due."""
    result.in_flight_peak = max(result.in_flight_peak, in_flight)
    ctx.progress.update(
        sent,
        delivered=result.ok,
        in_flight=in_flight,
        errors=sum(result.errors.values()),
        connected=rig.states.connected,
    )
    await trio.sleep(TICK)


async def _wait_drained(ctx: RunContext, drained: trio.Event, in_flight: int) -> None:
    """Wait, within the run's time, for the sends still out at the step's end."""
    ctx.progress.phase(f"waiting for {in_flight:,} sends in flight")
    if in_flight:
        with trio.move_on_after(min(60.0, ctx.remaining())):
            await drained.wait()


async def _load_step(rig: Rig, params: ChannelsParams, rate: float, ctx: RunContext) -> StepResult:
    if params.send_api == "outbox":
        return await _load_step_outbox(rig, params, rate, ctx)
    result = StepResult(rate=rate, duration=params.duration)
    result.by_second = [[] for _ in range(math.ceil(params.duration))]
    text = ("x" * params.text_size)[: params.text_size]
    ids = rig.channel_ids
    n = len(ids)
    in_flight = 0
    meter = _Meter(rig)

    # The load runs in the node's process, so its cost counts as the node's:
    # no task per message. Workers take due sends off one queue and park when
    # it is empty; a new worker is started only when every one is busy.
    due: collections.deque[int] = collections.deque()
    idle = trio.lowlevel.ParkingLot()

    async def worker() -> None:
        nonlocal in_flight
        while True:
            while not due:
                await idle.park()
            i = due.popleft()
            message = rig.message(i, f"r{rate:.0f}-{i}", text)
            due_at = start + i / rate
            try:
                await rig.node.send(ids[i % n], message)
            except Exception as exc:  # counted by type: the figure is how many failed and why
                result.errors[type(exc).__name__] += 1
            else:
                _delivered(result, start, due_at, trio.current_time())
            finally:
                in_flight -= 1
                if paced and not in_flight:
                    drained.set()

    start = trio.current_time()
    total = int(rate * params.duration)
    workers = 0
    paced = False  # every send of the step is due: what is left is in flight
    drained = trio.Event()
    ctx.progress.phase(f"load {rate:,.0f} msgs/s for {params.duration:g} s", total, "msgs")
    counting = result.steps = TaskSteps() if params.task_steps else None
    with result.gc, counting if counting is not None else contextlib.nullcontext():
        async with trio.open_nursery() as nursery:
            i = 0
            while i < total:
                due_now = min(total, int((trio.current_time() - start) * rate) + 1)
                while i < due_now:
                    if in_flight >= params.max_in_flight:
                        result.shed += 1
                    else:
                        in_flight += 1
                        due.append(i)
                    i += 1
                woken = len(idle.unpark(count=len(due)))
                if woken < len(due) and workers < in_flight:  # every worker is busy
                    for _ in range(min(len(due) - woken, in_flight - workers)):
                        nursery.start_soon(worker)
                        workers += 1
                await _paced(rig, result, ctx, i, in_flight)
            result.scheduled = i
            paced = True
            await _wait_drained(ctx, drained, in_flight)
            unfinished = in_flight  # the cancel below runs the workers' finally blocks
            nursery.cancel_scope.cancel()
    return meter.finish(result, start, unfinished)


async def _load_step_outbox(
    rig: Rig, params: ChannelsParams, rate: float, ctx: RunContext
) -> StepResult:
    """:func:`_load_step` through one ``Node.outbox``: the pacer starts each due
    send, and the outbox's ``on_sent`` counts its outcome (in the outbox's one
    task, a wake-up per batch of answers). No task waits on a send, as in the
    bare client, whose pacer sends and whose readers count the acks."""
    result = StepResult(rate=rate, duration=params.duration)
    result.by_second = [[] for _ in range(math.ceil(params.duration))]
    text = ("x" * params.text_size)[: params.text_size]
    ids = rig.channel_ids
    n = len(ids)
    in_flight = 0
    paced = False  # every send of the step is due: what is left is in flight
    drained = trio.Event()
    meter = _Meter(rig)
    prefix = f"r{rate:.0f}-"
    start = trio.current_time()

    def on_sent(sent: Sent) -> None:
        nonlocal in_flight
        in_flight -= 1
        if sent.error is None:
            i = int(sent.message.idempotency_key[len(prefix) :])
            _delivered(result, start, start + i / rate, sent.at)
        else:
            result.errors[type(sent.error).__name__] += 1
        if paced and not in_flight:
            drained.set()

    total = int(rate * params.duration)
    unfinished = 0
    ctx.progress.phase(f"load {rate:,.0f} msgs/s for {params.duration:g} s", total, "msgs")
    counting = result.steps = TaskSteps() if params.task_steps else None
    with (
        result.gc,
        counting if counting is not None else contextlib.nullcontext(),
        trio.CancelScope() as step,
    ):
        async with rig.node.outbox(on_sent=on_sent) as outbox:
            i = 0
            while i < total:
                due_now = min(total, int((trio.current_time() - start) * rate) + 1)
                while i < due_now:
                    if in_flight >= params.max_in_flight:
                        result.shed += 1
                    else:
                        try:
                            outbox.send(ids[i % n], rig.message(i, f"{prefix}{i}", text))
                        except Exception as exc:  # refused at once: counted by type
                            result.errors[type(exc).__name__] += 1
                        else:
                            in_flight += 1
                    i += 1
                await _paced(rig, result, ctx, i, in_flight)
            result.scheduled = i
            paced = True
            await _wait_drained(ctx, drained, in_flight)
            unfinished = in_flight
            step.cancel()  # what is still out goes on in the node, unheard
    return meter.finish(result, start, unfinished)


@attrs.frozen(kw_only=True)
class IdleResult:
    """The idle window: N channels connected, no load.

    Attributes:
        channels: channels connected during it.
        seconds: its wall time.
        cpu: node process CPU seconds over it.
        emulator_cpu: the far-end processes' CPU seconds (None when in-process).
        heartbeats: heartbeats the far end sent, and the ``heartbeat_acks``
            it received: None where there are none to read (a far end in the
            node's process, a platform other than the websocket one).
        collections: the node's collections by generation (young/middle/full).
        reconnects: reconnects during it (a liveness check that fired).
    """

    channels: int
    seconds: float
    cpu: float
    emulator_cpu: float | None
    heartbeats: tuple[int, int] | None
    collections: list[int]
    reconnects: int


async def _idle_phase(rig: Rig, seconds: float, ctx: RunContext) -> IdleResult:
    """Wait ``seconds`` with every channel connected and nothing sent: what it cost."""
    ctx.progress.phase(f"idle for {seconds:g} s, {rig.states.connected:,} channels, no load")
    beats0 = await _heartbeats(rig)
    reconnects0 = _reconnects(rig)
    emu0 = rig.emulator.cpu_seconds() if rig.emulator else None
    with GcWatch() as watch:
        t0 = trio.current_time()
        cpu0 = cpu_seconds()
        await trio.sleep(seconds)
        cpu = cpu_seconds() - cpu0
        elapsed = trio.current_time() - t0
    emu1 = rig.emulator.cpu_seconds() if rig.emulator else None
    beats1 = await _heartbeats(rig)
    return IdleResult(
        channels=rig.states.connected,
        seconds=elapsed,
        cpu=cpu,
        emulator_cpu=emu1 - emu0 if emu0 is not None and emu1 is not None else None,
        heartbeats=(
            (beats1[0] - beats0[0], beats1[1] - beats0[1])
            if beats0 is not None and beats1 is not None
            else None
        ),
        collections=watch.count,
        reconnects=_reconnects(rig) - reconnects0,
    )


async def _heartbeats(rig: Rig) -> tuple[int, int] | None:
    """The websocket far end's heartbeats sent and acks received so far (the lean
    far end and the emulator both count them)."""
    if rig.emulator is None or rig.provider != "websocket":
        return None
    try:
        stats = await rig.emulator.stats()
    except (httpx.HTTPError, ScenarioError):  # no counters here: the note goes without them
        return None
    return stats.get("heartbeats", 0), stats.get("heartbeat_acks", 0)  # counted from the first


def _reconnects(rig: Rig) -> int:
    return sum(s.statistics.reconnects for s in rig.node.channels() if s.statistics is not None)


async def _inbound(rig: Rig, rate: float, stop: trio.Event) -> None:
    """Broadcast injects: each one reaches every connected channel."""
    assert rig.emulator is not None
    interval = max(len(rig.channel_ids) / rate, 0.001)
    seq = 0
    while not stop.is_set():
        seq += 1
        await rig.emulator.inject(text=f"inbound {seq}", peer="load-user")
        with trio.move_on_after(interval):
            await stop.wait()


async def _count_inbound(rig: Rig, counter: list[int], task_status: Any) -> None:
    with rig.node.subscribe(kind="inbound", buffer=100_000) as events:
        task_status.started()
        async for _ in events:
            counter[0] += 1


# ---------------------------------------------------------------- the run


def _bare_baseline(url: str, count: int, idle: float, ctx: RunContext) -> dict[str, Any] | None:
    idling = f", then idle for {idle:g} s" if idle else ""
    ctx.progress.phase(
        f"baseline: {count:,} bare trio-websocket connections{idling} (fresh process)"
    )
    ws_url = url.replace("http://", "ws://", 1) + "/ws"
    args = ["memory", ws_url, str(count), "--idle", f"{idle:g}"]
    lines = _ws_bare(args, max(30.0, ctx.remaining() / 3) + idle, ctx)
    return lines[-1] if lines else None


def _bare_send_baseline(
    url: str, count: int, params: ChannelsParams, ctx: RunContext, *, await_each: bool = False
) -> dict[float, dict[str, Any]]:
    """The node's load steps done by a bare client: its results by rate.

    Websocket channels: a bare trio + wsproto client (:mod:`bench.ws_bare`),
    whose pacer sends and a reader task counts the acks, or with
    ``await_each`` worker tasks that each await their send's ack, the
    harness this bench drives the node with; Telegram and WhatsApp: a bare
    httpx client (:mod:`bench.http_bare`, worker tasks awaiting each
    answer), one client per channel with the channel's pool (its send window).
    """
    limits = HTTP_BARE.get(params.provider)
    steps = f"{len(params.rates)} steps of {params.duration:g} s of sends (fresh process)"
    if limits is None:
        what = "bare trio + wsproto client" + (", awaiting each ack" if await_each else "")
        module = "bench.ws_bare"
        args = ["send", url.replace("http://", "ws://", 1) + "/ws"]
        if params.task_steps:
            args.append("--task-steps")
        if await_each:
            args.append("--await-each")
    else:
        what = f"bare httpx client ({params.provider})"
        module = "bench.http_bare"
        args = ["send", url, "--provider", params.provider]
        args += ["--window", str(default_send_window(limits))]
    ctx.progress.phase(f"baseline: {what}, {count:,} connections, {steps}")
    args += ["--connections", str(count), "--rates", ",".join(f"{r:g}" for r in params.rates)]
    args += ["--duration", f"{params.duration:g}", "--text-size", str(params.text_size)]
    timeout = min(len(params.rates) * (params.duration + 15) + 30, ctx.remaining() / 3)
    return {float(line["rate"]): line for line in _bare_client(module, args, timeout, ctx)}


def _ws_bare(args: list[str], timeout: float, ctx: RunContext) -> list[dict[str, Any]]:
    """Run ``python -m bench.ws_bare ARGS`` in a fresh process: its JSON lines."""
    return _bare_client("bench.ws_bare", args, timeout, ctx)


def _bare_client(
    module: str, args: list[str], timeout: float, ctx: RunContext
) -> list[dict[str, Any]]:
    """Run ``python -m MODULE ARGS`` in a fresh process: its JSON lines."""
    try:
        out = subprocess.run(
            [sys.executable, "-m", module, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        stderr = exc.stderr if isinstance(exc.stderr, str) else ""
        ctx.progress.note(f"baseline ({args[0]}) not measured: {exc} {stderr[-400:]}")
        return []
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


async def _run(params: ChannelsParams, ctx: RunContext) -> Report:
    started = utc_now()
    load_before = load_average()
    t0 = time.perf_counter()
    notes: list[str] = []
    sections: dict[str, float] = {}
    external = params.emulator == "process" and params.provider in EMULATED
    # One descriptor per channel here; two when the emulator shares the process.
    per_channel_fds = 1 if external or params.provider == "simulated" else 2
    limit = raise_open_files_limit(params.channels * per_channel_fds + 1_000)
    capacity = connection_capacity(per_channel_fds) if params.provider != "simulated" else None
    n = params.channels
    if capacity is not None and n > capacity:
        notes.append(
            f"the open-files limit ({limit:,}) capped the run at {capacity:,} channels "
            f"instead of {params.channels:,}"
        )
        ctx.progress.note(notes[-1])
        n = capacity
    if params.provider == "simulated":
        notes.append("simulated provider: no sockets; channel memory excludes a connection")
    async with open_rig(
        params.provider,
        external=external,
        limits=params.limits,
        port_base=ctx.port_base,
        gc_policy=params.gc,
        far_end=params.far_end,
        emulator_processes=params.emulator_processes,
        rtt=params.rtt_ms / 1e3,
        node_settings={
            "max_sends_in_flight": params.node_max_in_flight,
            "max_loop_lag": params.node_max_loop_lag,
        },
        storage_settings={"checkpoint_interval": params.checkpoint_interval},
    ) as rig:
        notes.append(rig.far_end)
        rig.webhooks = params.webhooks
        baseline = None
        bare_sends: dict[float, dict[str, Any]] = {}
        bare_awaiting: dict[float, dict[str, Any]] = {}  # websocket: the harness's own cost
        if params.baseline and params.provider == "websocket" and rig.emulator is not None:
            t = time.perf_counter()
            if external:
                baseline = await trio.to_thread.run_sync(
                    _bare_baseline, rig.emulator.url, n, params.idle, ctx
                )
                sections["baseline"] = round(time.perf_counter() - t, 2)
                if params.rates:
                    t = time.perf_counter()
                    bare_sends = await trio.to_thread.run_sync(
                        _bare_send_baseline, rig.emulator.url, n, params, ctx
                    )
                    sections["baseline_sends"] = round(time.perf_counter() - t, 2)
                if params.rates and params.send_api == "send":
                    t = time.perf_counter()
                    bare_awaiting = await trio.to_thread.run_sync(
                        functools.partial(
                            _bare_send_baseline,
                            rig.emulator.url,
                            n,
                            params,
                            ctx,
                            await_each=True,
                        )
                    )
                    sections["baseline_sends_awaiting"] = round(time.perf_counter() - t, 2)
            else:
                notes.append("baseline skipped: needs the emulator in its own process")
        elif params.baseline and params.provider in HTTP_BARE and params.rates and rig.emulator:
            # With the emulator in the node's process too (--emulator inprocess): the
            # bare client's process is its own either way; a note then says that the
            # node's CPU includes the emulator's, and the figure has no ratio target.
            t = time.perf_counter()
            bare_sends = await trio.to_thread.run_sync(
                _bare_send_baseline, rig.emulator.url, n, params, ctx
            )
            sections["baseline_sends"] = round(time.perf_counter() - t, 2)
        # --- connect
        t = time.perf_counter()
        phase = await connect_all(
            rig,
            n,
            rate=params.connect_rate,
            budget=max(1.0, ctx.remaining() - _load_budget(params) - 10),
            progress=ctx.progress,
        )
        sections["connect"] = round(time.perf_counter() - t, 2)
        connected = phase.connected
        if connected < n:
            notes.append(
                f"only {connected:,} of {n:,} channels connected within the time available; "
                f"statuses: {dict(rig.states.statuses())}"
            )
            ctx.progress.note(notes[-1])
        # --- load, once the node's collector policy has settled what the connects built
        if params.gc == "tuned" and connected >= STORM_CONNECTS:
            ctx.progress.phase(f"settling for {GC_QUIET + 1:g} s after the connects")
            await trio.sleep(GC_QUIET + 1)
        # --- idle: connected, nothing to send
        idle = None
        if params.idle and connected:
            if ctx.remaining() < params.idle + _load_budget(params) + 10:
                notes.append(f"idle window of {params.idle:g} s skipped: the time limit is near")
                ctx.progress.note(notes[-1])
            else:
                t = time.perf_counter()
                idle = await _idle_phase(rig, params.idle, ctx)
                sections["idle"] = round(time.perf_counter() - t, 2)
        steps: list[StepResult] = []
        inbound = [0]
        stop_inbound = trio.Event()
        async with trio.open_nursery() as background:
            if params.inbound_rate:
                await background.start(_count_inbound, rig, inbound)
                background.start_soon(_inbound, rig, params.inbound_rate, stop_inbound)
            inbound_started = trio.current_time()
            for rate in params.rates:
                if ctx.remaining() < params.duration + 15:
                    notes.append(f"load step {rate:,.0f} msgs/s skipped: the time limit is near")
                    ctx.progress.note(notes[-1])
                    continue
                t = time.perf_counter()
                steps.append(await _load_step(rig, params, rate, ctx))
                sections[f"load_{rate:.0f}"] = round(time.perf_counter() - t, 2)
            if params.inbound_rate and not params.rates:
                ctx.progress.phase(f"inbound only for {params.duration:g} s")
                await trio.sleep(params.duration)
            inbound_seconds = trio.current_time() - inbound_started
            stop_inbound.set()
            background.cancel_scope.cancel()
        snapshots = rig.node.channels()
        stats = [s.statistics for s in snapshots if s.statistics is not None]
        dead_letters = sum(s.dead_letters for s in stats)
        reconnects = sum(s.reconnects for s in stats)
        fatal = len(rig.states.failed)
    compression: list[CompressionPhase] = []
    if params.compressions:
        t = time.perf_counter()
        async with open_rig("discord", external=external, limits=False) as zrig:
            compression = await measure_compression(
                zrig,
                modes=params.compressions,
                channels=params.compression_channels,
                events=params.compression_events,
                text_size=params.text_size,
                ctx=ctx,
            )
        sections["compression"] = round(time.perf_counter() - t, 2)
    figures = _figures(
        params,
        n=n,
        phase=phase,
        baseline=baseline,
        bare_sends=bare_sends,
        bare_awaiting=bare_awaiting,
        steps=steps,
        idle=idle,
        dead_letters=dead_letters,
        reconnects=reconnects,
        fatal=fatal,
        inbound=inbound[0],
        inbound_seconds=inbound_seconds,
        external=external,
    )
    figures += compression_figures(compression)
    notes += _notes(params, steps, baseline, bare_sends, external)
    notes += _idle_notes(idle, baseline)
    return Report(
        scenario="channels",
        started=started,
        duration=time.perf_counter() - t0,
        parameters={**attrs.asdict(params), "channels_run": n, "open_files_limit": limit},
        machine=machine_info(),
        load_average={"before": load_before, "after": load_average()},
        section_seconds=sections,
        figures=figures,
        notes=notes,
        series=_series(steps, phase),
    )


def _load_budget(params: ChannelsParams) -> float:
    return len(params.rates) * (params.duration + 15)


def _figures(
    params: ChannelsParams,
    *,
    n: int,
    phase: ConnectPhase,
    baseline: dict[str, Any] | None,
    bare_sends: dict[float, dict[str, Any]],
    bare_awaiting: dict[float, dict[str, Any]],
    steps: list[StepResult],
    idle: IdleResult | None,
    dead_letters: int,
    reconnects: int,
    fatal: int,
    inbound: int,
    inbound_seconds: float,
    external: bool = True,
) -> list[Figure]:
    connected = phase.connected
    bare_label = _bare_send_label(params.provider)
    per_channel = (phase.rss_after - phase.rss_before) / max(1, connected)
    figures = [
        Figure.single(
            name="channels_connected",
            label=f"{params.provider} channels connected",
            unit="channels",
            value=connected,
            better="higher",
            target=Target(applies_to="value", op=">=", threshold=n, text=f"all {n:,}"),
        ),
        Figure.single(
            name="connect_rate",
            label="connects/s (all channels, start to last connected)",
            unit="connects/s",
            value=phase.rate,
            better="higher",
            target=Target(applies_to="value", op=">=", threshold=1_000, text="≥ 1,000/s"),
        ),
    ]
    if connected:
        # Node and emulator share two cores: the node's own cost per connect
        # says what it could do with a core to itself.
        per_connect = phase.cpu / connected
        if baseline is not None and baseline.get("cpu_per_connect"):
            figures.append(
                Figure.from_samples(
                    name="node_cpu_per_connect",
                    label="node CPU per connect (handshake, actor, events)",
                    unit="ms",
                    samples=[per_connect * 1e3],
                    baseline_samples=[baseline["cpu_per_connect"] * 1e3],
                    baseline_label=(
                        f"bare trio-websocket client's CPU per connect (handshake, "
                        f"reader task), {int(baseline['connections']):,} in a fresh process"
                    ),
                    better="lower",
                    target=Target(applies_to="ratio", op="<=", threshold=1.5, text="ratio ≤ 1.5"),
                )
            )
        else:
            figures.append(
                Figure.single(
                    name="node_cpu_per_connect",
                    label="node CPU per connect (handshake, actor, events)",
                    unit="ms",
                    value=per_connect * 1e3,
                    better="lower",
                )
            )
        if phase.emulator_cpu is not None:
            figures.append(
                Figure.single(
                    name="emulator_cpu_per_connect",
                    label="emulator process CPU per connect",
                    unit="ms",
                    value=phase.emulator_cpu / connected * 1e3,
                    better="lower",
                )
            )
    if phase.times:
        peak = max(per_interval(phase.times, phase.start, max(phase.times) + 1e-9, 1.0))
        figures.append(
            Figure.single(
                name="connect_rate_peak",
                label="connects/s, busiest second",
                unit="connects/s",
                value=peak,
                better="higher",
            )
        )
    target = Target(applies_to="value", op="<=", threshold=25 * KB, text="≤ 25 KB")
    if baseline is not None:
        figures.append(
            Figure.from_samples(
                name="memory_per_channel",
                label="memory per channel, connection included (RSS Δ / channels)",
                unit="bytes",
                samples=[per_channel],
                baseline_samples=[baseline["per_connection"]],
                baseline_label=(
                    f"bare trio-websocket client connection + its reader task, "
                    f"{int(baseline['connections']):,} in a fresh process"
                ),
                better="lower",
                target=target,
            )
        )
    else:
        figures.append(
            Figure.single(
                name="memory_per_channel",
                label="memory per channel (RSS Δ / channels)",
                unit="bytes",
                value=per_channel,
                better="lower",
                target=target if params.provider != "simulated" else None,
            )
        )
    if idle is not None:
        figures += _idle_figures(idle, baseline)
    for step in steps:
        key = f"{step.rate:.0f}"
        total_errors = sum(step.errors.values()) + step.shed
        figures += [
            Figure.single(
                name=f"delivered_rate_at_{key}",
                label=f"delivered msgs/s at {step.rate:,.0f} offered",
                unit="msgs/s",
                value=step.delivered_rate,
                better="higher",
            ),
            Figure.single(
                name=f"send_errors_at_{key}",
                label=f"sends failed or shed at {step.rate:,.0f} msgs/s",
                unit="messages",
                value=total_errors,
                better="lower",
            ),
            Figure.single(
                name=f"refused_at_{key}",
                label=f"refused by the node at {step.rate:,.0f} msgs/s (node/channel/loop: "
                f"{'/'.join(str(step.refused[scope]) for scope in ('node', 'channel', 'loop'))})",
                unit="messages",
                value=step.refused.total(),
                better="lower",
            ),
            Figure.single(
                name=f"loop_lag_at_{key}",
                label=f"node loop lag at {step.rate:,.0f} msgs/s (worst, its last 10 s)",
                unit="ms",
                value=step.loop_lag * 1e3,
                better="lower",
            ),
            Figure.single(
                name=f"gc_pause_max_at_{key}",
                label=f"longest collection pause at {step.rate:,.0f} msgs/s",
                unit="ms",
                value=step.gc.longest * 1e3,
                better="lower",
            ),
            Figure.single(
                name=f"gc_share_at_{key}",
                label=f"time in collections at {step.rate:,.0f} msgs/s "
                f"(young/middle/full: {'/'.join(map(str, step.gc.count))})",
                unit="%",
                value=100 * step.gc.total / step.elapsed if step.elapsed else 0.0,
                better="lower",
            ),
            Figure.single(
                name=f"cpu_at_{key}",
                label=f"node CPU at {step.rate:,.0f} msgs/s (100 % = one core)",
                unit="%",
                value=100 * step.cpu / step.elapsed if step.elapsed else 0.0,
                better="lower",
            ),
        ]
        bare = _bare_step(bare_sends, step.rate)
        if step.ok:
            figures.append(
                _beside(
                    bare,
                    "cpu_per_message",
                    name=f"node_cpu_per_message_at_{key}",
                    label=f"node CPU per delivered message at {step.rate:,.0f} msgs/s",
                    unit="µs",
                    value=step.cpu / step.ok * 1e6,
                    target=_cpu_ratio_target(params.provider, external),
                    baseline_label=bare_label,
                )
            )
            awaiting = _bare_step(bare_awaiting, step.rate)
            if awaiting is not None:
                figures.append(  # no target: what the harness of awaited sends costs
                    _beside(
                        awaiting,
                        "cpu_per_message",
                        name=f"node_cpu_per_message_at_{key}_beside_awaiting",
                        label=f"node CPU per delivered message at {step.rate:,.0f} msgs/s, "
                        "beside the bare client awaiting each ack",
                        unit="µs",
                        value=step.cpu / step.ok * 1e6,
                        target=None,
                        baseline_label=BARE_AWAITING_LABEL,
                    )
                )
        if step.steps is not None and step.ok:
            figures.append(
                _beside(
                    bare,
                    "task_steps_per_message",
                    name=f"node_task_steps_per_message_at_{key}",
                    label=f"node trio task steps per delivered message at {step.rate:,.0f} msgs/s",
                    unit="steps",
                    value=step.steps.steps / step.ok,
                    target=None,
                    baseline_label=bare_label,
                )
            )
            figures.append(  # the bare client spawns none: no ratio to show
                Figure.single(
                    name=f"node_task_spawns_per_message_at_{key}",
                    label=f"node trio tasks spawned per delivered message at {step.rate:,.0f} "
                    "msgs/s",
                    unit="tasks",
                    value=step.steps.spawns / step.ok,
                    better="lower",
                )
            )
        if step.emulator_cpu is not None:
            figures.append(
                Figure.single(
                    name=f"emulator_cpu_at_{key}",
                    label=f"emulator process CPU at {step.rate:,.0f} msgs/s",
                    unit="%",
                    value=100 * step.emulator_cpu / step.elapsed if step.elapsed else 0.0,
                    better="lower",
                )
            )
        if not step.latencies:
            continue  # nothing was delivered: the errors figure and its note say why
        for q in (50, 90, 99):
            latency_target = None
            if q == 99 and math.isclose(step.rate, params.latency_at):
                latency_target = Target(applies_to="value", op="<=", threshold=10.0, text="< 10 ms")
            figures.append(
                _beside(
                    bare,
                    f"p{q}",
                    name=f"latency_p{q}_at_{key}",
                    label=f"send latency p{q} at {step.rate:,.0f} msgs/s",
                    unit="ms",
                    value=step.quantile(q) * 1e3,
                    target=latency_target,
                    baseline_label=bare_label,
                )
            )
        figures.append(
            Figure.single(
                name=f"latency_max_at_{key}",
                label=f"send latency max at {step.rate:,.0f} msgs/s",
                unit="ms",
                value=max(step.latencies, default=math.nan) * 1e3,
                better="lower",
            )
        )
    if steps:
        best = max(steps, key=lambda s: s.delivered_rate)
        figures.append(
            Figure.single(
                name="delivered_rate_max",
                label=f"delivered msgs/s, best step (limits {'on' if params.limits else 'off'})",
                unit="msgs/s",
                value=best.delivered_rate,
                better="higher",
                target=(
                    Target(applies_to="value", op=">=", threshold=10_000, text="≥ 10,000/s")
                    if not params.limits
                    else None
                ),
            )
        )
    figures += [
        Figure.single(
            name="dead_letters",
            label="dead letters",
            unit="messages",
            value=dead_letters,
            better="lower",
        ),
        Figure.single(
            name="reconnects",
            label="reconnects during the run",
            unit="reconnects",
            value=reconnects,
            better="lower",
        ),
        Figure.single(
            name="fatal",
            label="channels FAILED",
            unit="channels",
            value=fatal,
            better="lower",
            target=Target(applies_to="value", op="<=", threshold=0, text="0"),
        ),
    ]
    if params.inbound_rate:
        figures.append(
            Figure.single(
                name="inbound_rate",
                label=f"inbound msgs/s received (offered {params.inbound_rate:,.0f})",
                unit="msgs/s",
                value=inbound / inbound_seconds if inbound_seconds else 0.0,
                better="higher",
            )
        )
    return figures


def _idle_figures(idle: IdleResult, baseline: dict[str, Any] | None) -> list[Figure]:
    """Node CPU while idle, beside the bare connections' idle CPU; the far end's."""
    name = "node_cpu_idle"
    label = f"node CPU while idle, {idle.channels:,} channels (100 % = one core)"
    value = 100 * idle.cpu / idle.seconds if idle.seconds else 0.0
    bare = (
        baseline if baseline is not None and baseline.get("idle_cpu_seconds") is not None else None
    )
    if bare is not None and bare["idle_seconds"]:
        figures = [
            Figure.from_samples(
                name=name,
                label=label,
                unit="%",
                samples=[value],
                baseline_samples=[100 * bare["idle_cpu_seconds"] / bare["idle_seconds"]],
                baseline_label=(
                    f"bare trio-websocket client, {int(bare['connections']):,} connections and "
                    "a reader task each, answering heartbeats, idle for the same window against "
                    "the same far end, in a fresh process before the node's channels connected"
                ),
                better="lower",
                target=Target(applies_to="ratio", op="<=", threshold=2.0, text="ratio ≤ 2.0"),
            )
        ]
    else:
        figures = [Figure.single(name=name, label=label, unit="%", value=value, better="lower")]
    if idle.emulator_cpu is not None:
        figures.append(
            Figure.single(
                name="emulator_cpu_idle",
                label=f"far end CPU while the node idles, {idle.channels:,} channels",
                unit="%",
                value=100 * idle.emulator_cpu / idle.seconds if idle.seconds else 0.0,
                better="lower",
            )
        )
    return figures


def _idle_notes(idle: IdleResult | None, baseline: dict[str, Any] | None) -> list[str]:
    if idle is None:
        return []
    beats = (
        f", the far end sent {idle.heartbeats[0]:,} heartbeats and received "
        f"{idle.heartbeats[1]:,} heartbeat_acks"
        if idle.heartbeats is not None
        else ""
    )
    notes = [
        f"idle window: {idle.seconds:.2f} s, node CPU {idle.cpu:.3f} s{beats}, "
        f"node collections (young/middle/full) {'/'.join(map(str, idle.collections))}, "
        f"reconnects {idle.reconnects}; the node's CPU includes the bench's own tasks in "
        "its process (the state log follower, progress)",
        "idle work: both ends answer the far end's heartbeats (every 15 s by default); the "
        "node pings a link only after the websocket provider's ping_interval (20 s by "
        "default) without a frame from it, so heartbeats more often than that spare the "
        "pings; the bare client never pings. A window of whole heartbeat periods gives "
        "every connection the same heartbeats in both windows",
    ]
    if baseline is not None and baseline.get("idle_cpu_seconds") is not None:
        notes.append(
            f"bare client idle: {baseline['idle_seconds']:.2f} s, "
            f"{baseline['idle_cpu_seconds']:.3f} s CPU, "
            f"{baseline['idle_heartbeats_answered']:,} heartbeats answered, "
            f"{baseline['connections_lost']:,} connections lost"
        )
    return notes


BARE_SEND_LABEL: Final = (
    "bare trio + wsproto client (no trio-websocket, no Switchboard): the same connections, "
    "sends, text, pacing and acks against the same emulator, in a fresh process before the "
    "node's channels connected"
)
BARE_AWAITING_LABEL: Final = (
    "the same bare trio + wsproto client with this bench's harness: each send made by a "
    "worker task that awaits its ack, as the callers of Node.send here do (and as "
    "bench.http_bare's workers await each answer), where the bare client above sends from its "
    "pacer and counts the acks in its readers, no task waiting on a send"
)
BARE_HTTP_LABEL: Final = (
    "bare httpx client on trio (no Switchboard): the {provider} provider's send requests "
    "(URL, JSON body, auth), one client and pool per channel, the same rate, text and pacing "
    "against the same emulator, in a fresh process before the node's channels connected"
)


def _bare_send_label(provider: str) -> str:
    return BARE_HTTP_LABEL.format(provider=provider) if provider in HTTP_BARE else BARE_SEND_LABEL


def _cpu_ratio_target(provider: str, external: bool) -> Target | None:
    """Node over bare CPU per message: ≤ 1.0 for websocket channels, ≤ 1.2 for HTTP
    ones; none when the emulator runs in the node's process (its CPU would count
    as the node's, and the ratio would not measure the node)."""
    if provider not in HTTP_BARE:
        return Target(
            applies_to="ratio", op="<=", threshold=WS_CPU_RATIO, text=f"ratio ≤ {WS_CPU_RATIO:g}"
        )
    if not external:
        return None
    return Target(
        applies_to="ratio", op="<=", threshold=HTTP_CPU_RATIO, text=f"ratio ≤ {HTTP_CPU_RATIO:g}"
    )


BARE_SCALE: Final = {  # to µs, ms; counts as they are
    "cpu_per_message": 1e6,
    "p50": 1e3,
    "p90": 1e3,
    "p99": 1e3,
    "task_steps_per_message": 1.0,
}


def _bare_step(bare_sends: dict[float, dict[str, Any]], rate: float) -> dict[str, Any] | None:
    """The bare client's result at ``rate``, if it ran there and got acks."""
    bare = next((b for r, b in bare_sends.items() if math.isclose(r, rate)), None)
    return bare if bare is not None and bare.get("acked") else None


def _beside(
    bare: dict[str, Any] | None,
    field: str,
    *,
    name: str,
    label: str,
    unit: str,
    value: float,
    target: Target | None,
    baseline_label: str = BARE_SEND_LABEL,
) -> Figure:
    """A lower-is-better figure with the bare client's ``field`` as its baseline when
    there is one; without it, a ratio target is dropped (there is nothing to divide by)."""
    if bare is None or bare.get(field) is None:
        if target is not None and target.applies_to == "ratio":
            target = None
        return Figure.single(
            name=name, label=label, unit=unit, value=value, better="lower", target=target
        )
    return Figure.from_samples(
        name=name,
        label=label,
        unit=unit,
        samples=[value],
        baseline_samples=[bare[field] * BARE_SCALE[field]],
        baseline_label=baseline_label,
        better="lower",
        target=target,
    )


def _series(steps: list[StepResult], phase: ConnectPhase) -> list[Series]:
    series = []
    if phase.times:
        end = max(phase.times) + 1e-9
        width = max(0.05, (end - phase.start) / 60)
        bins = per_interval(phase.times, phase.start, end, width)
        running, total = [], 0
        for b in bins:
            total += b
            running.append(total)
        xs = [i * width for i in range(len(bins))]
        series.append(
            Series(
                name="connects_over_time",
                title="channels connected while starting",
                x_label="seconds since the first start",
                y_label="channels",
                x=xs,
                lines={"connected": [float(v) for v in running]},
            )
        )
        series.append(
            Series(
                name="connect_rate_over_time",
                title="connects per second while starting",
                x_label="seconds since the first start",
                y_label="connects/s",
                x=xs,
                lines={"connects/s": [b / width for b in bins]},
                kind="step",
            )
        )
    for step in steps:
        key = f"{step.rate:.0f}"
        xs = [float(i) for i in range(len(step.by_second))]
        lines: dict[str, list[float | None]] = {}
        for q in (50, 90, 99):
            lines[f"p{q}"] = [percentile(sorted(b), q) * 1e3 if b else None for b in step.by_second]
        lines["max"] = [max(b) * 1e3 if b else None for b in step.by_second]
        series.append(
            Series(
                name=f"latency_over_time_at_{key}",
                title=f"send latency over time at {step.rate:,.0f} msgs/s offered",
                x_label="seconds into the step (by when a message was due)",
                y_label="ms",
                x=xs,
                lines=lines,
                group=f"latency_at_{key}",
            )
        )
        every = sorted(latency for second in step.by_second for latency in second)
        if every:
            series.append(
                Series(
                    name=f"latency_percentiles_at_{key}",
                    title=f"send latency by percentile at {step.rate:,.0f} msgs/s "
                    f"({len(every):,} messages)",
                    x_label="percentile",
                    y_label="ms",
                    x=[percentile_x(q) for q in PERCENTILES],
                    lines={"latency": [percentile(every, q) * 1e3 for q in PERCENTILES]},
                    kind="percentile",
                    group=f"latency_at_{key}",
                )
            )
        end = max(step.elapsed, 1.0)
        done = per_interval(step.done_at, 0.0, end, 1.0)
        series.append(
            Series(
                name=f"throughput_over_time_at_{key}",
                title=f"delivered msgs/s at {step.rate:,.0f} offered",
                x_label="seconds into the step",
                y_label="msgs/s",
                x=[float(i) for i in range(len(done))],
                lines={"delivered": [float(d) for d in done], "offered": [step.rate] * len(done)},
                kind="step",
            )
        )
    return series


def _notes(
    params: ChannelsParams,
    steps: list[StepResult],
    baseline: dict[str, Any] | None,
    bare_sends: dict[float, dict[str, Any]],
    external: bool,
) -> list[str]:
    notes = [
        "channels run in a real node (open_node: supervisor, event hub, memory store); "
        + (
            "sends go through one Node.outbox (the pacer starts each, a callback takes its "
            "outcome: no task waits on a send) and complete when the emulator acknowledged them"
            if params.send_api == "outbox"
            else "sends go through Node.send, each awaited by a worker task, and complete "
            "when the emulator acknowledged them"
        ),
        f"emulator: {'a separate process' if external else 'in the node process'} on 127.0.0.1",
        "load is open-loop: latency runs from when a message was due, not from when it "
        "was sent, so a stall shows as latency (no coordinated omission)",
        "memory per channel: node RSS after all connected minus before the first start, "
        "after gc.collect(), over the channels connected; KB = 1024 bytes",
        "CPU: process user+system seconds over the step's wall time (100 % = one core); "
        "the emulator process competes for the same 2 cores",
        "the 'switchboard' loggers are silenced during the run (a storm logs a line per reconnect)",
    ]
    for step in steps:
        if step.errors or step.shed:
            details = ", ".join(f"{k}: {v}" for k, v in step.errors.most_common())
            shed = f", shed (over max_in_flight): {step.shed}" if step.shed else ""
            notes.append(f"errors at {step.rate:,.0f} msgs/s: {details or 'none'}{shed}")
    if baseline is None and params.provider == "websocket" and params.baseline:
        notes.append("no baseline: the bare trio-websocket measurement did not run")
    for rate, bare in sorted(bare_sends.items()):
        notes.append(
            f"bare client at {rate:,.0f} msgs/s: {bare['acked']:,} of {bare['scheduled']:,} "
            f"acked, {bare['cpu_seconds']:.2f} s CPU over {bare['elapsed']:.2f} s"
            + (f", errors {bare['errors']}" if bare["errors"] else "")
            + (f", {bare['unanswered']:,} unanswered" if bare["unanswered"] else "")
        )
    http = params.provider in HTTP_BARE
    wanted = (
        params.baseline and params.rates and (http or (params.provider == "websocket" and external))
    )
    if wanted and not bare_sends:
        client = "httpx" if http else "trio + wsproto"
        notes.append(f"no send baseline: the bare {client} client did not run")
    if http and bare_sends:
        notes.append(
            "HTTP baseline: the bare client makes only the sends; the node's channels also "
            "opened their clients before the load (getMe / the number's GET, as the bare "
            "client's opening does)"
            + (
                ", and each Telegram channel keeps a getUpdates long poll open (one more "
                "connection, a poll per poll_timeout)"
                if params.provider == "telegram"
                else ""
            )
        )
        if params.provider == "whatsapp" and external:
            notes.append(
                "the WhatsApp emulator's status webhooks (sent, delivered, read: three a "
                "message) go to the node's ops server, which checks each signature and hands "
                "the statuses to the channels as receipts: node CPU per message that the bare "
                "client, which only sends, does not spend (--no-webhooks leaves them out)"
                if params.webhooks
                else "the WhatsApp emulator's status webhooks were off (--no-webhooks): "
                "the node only sends, as the bare client does"
            )
        if not external:
            notes.append(
                f"the {params.provider} emulator runs in the node's process, so the node's CPU "
                "per message includes the emulator's (hypercorn, about 0.4 ms a message)"
                + (
                    " and the three status webhooks per message it posts to the node's ops "
                    "server, which the node then handles"
                    if params.provider == "whatsapp"
                    else ""
                )
                + ": the node-to-bare CPU ratio has no target here"
            )
    return notes


def run(params: ChannelsParams, ctx: RunContext) -> Report:
    """Run the channels scenario."""
    if ctx.target is not None:
        raise ScenarioError(
            "channels runs its own node; to load-test a running deployment use "
            "`python -m bench target --target URL`"
        )
    return trio.run(_run, params, ctx)


SCENARIO: Final = Scenario(
    name="channels",
    help="N live channels vs emulators over real sockets: connects/s, memory per channel, "
    "throughput and latency under load",
    params=ChannelsParams,
    run=run,
)
