"""The ``storm`` scenario: every connection dropped at once, and the way back.

What it does: connects N channels (to a far end in its own process by
default: for websocket channels the lean far end, :mod:`bench.far_end`, else
the emulator; ``--far-end emulator`` for the hypercorn one), then asks the
far end to drop every connection at once through its fault API
(``POST /_emulator/fault {"kind": "drop"}``, which both far ends serve
alike), and follows each channel through the node's event hub until all are
connected again. ``storms`` repeats it once everything is back.

What it shows, per storm and over all of them:

- time to full recovery, held to the backoff cap plus 5 s;
- the retry rate per ``bin`` seconds and its peak, held to what full
  jitter should allow: after a drop, each channel waits
  ``uniform(0, base)`` before its first retry, so N channels retry at
  about ``N / base`` per second; the bound is that mean rate per bin plus
  four standard deviations (Poisson), and a histogram shows the spread
  (without jitter every channel would land in the first bin). Completed
  reconnects per bin are shown beside it: they bunch up when the
  handshakes in flight outrun the CPU, which the retries' spread cannot
  prevent;
- the scheduled delays themselves (a histogram: flat means full jitter);
- fatal misclassifications: a dropped connection is transient, so any
  channel that goes FAILED is one (must be 0);
- reconnects counted by the channels themselves (must be N per storm);
- CPU per reconnect, the node's and the far end's (from the drop until all
  are back): which of the two bounds the recovery.
"""

from __future__ import annotations

import math
import time
from typing import Final

import attrs
import trio

from runtime.config.model import BackoffConfig

from .report import Figure, Report, Series, Target, load_average, machine_info, utc_now
from .rig import (
    EMULATED,
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

__all__ = ["SCENARIO", "StormParams", "run"]

RECOVERY_SLACK: Final = 5.0  # seconds past the backoff cap the target allows
SIGMAS: Final = 4.0  # Poisson noise allowed above the jitter's mean rate


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@attrs.frozen(kw_only=True)
class StormParams:
    """Knobs of the storm scenario (``bench/scenarios/storm.toml``)."""

    provider: str = attrs.field(
        default="websocket", metadata=_help("websocket or discord (a provider with a live link)")
    )
    channels: int = attrs.field(default=5_000, metadata=_help("channels to connect, then drop"))
    emulator: str = attrs.field(
        default="process", metadata=_help("process (a separate emulator process) or inprocess")
    )
    far_end: str = far_end_field()
    emulator_processes: int = emulator_processes_field()
    storms: int = attrs.field(default=1, metadata=_help("drops, each once all are back"))
    backoff_base: float = attrs.field(
        default=1.0, metadata=_help("seconds: the first retry waits uniform(0, base)")
    )
    backoff_cap: float = attrs.field(default=10.0, metadata=_help("seconds: the longest wait"))
    bin: float = attrs.field(default=0.1, metadata=_help("seconds per reconnect-rate interval"))
    rtt_ms: float = rtt_field()

    def __attrs_post_init__(self) -> None:
        problems = []
        if self.provider not in ("websocket", "discord"):
            problems.append(
                f"provider: storms need a live link (websocket or discord), got {self.provider!r}"
            )
        if self.emulator not in ("process", "inprocess"):
            problems.append(f"emulator: expected 'process' or 'inprocess', got {self.emulator!r}")
        for name in ("channels", "storms"):
            if getattr(self, name) < 1:
                problems.append(f"{name}: expected at least 1, got {getattr(self, name)}")
        for name in ("backoff_base", "backoff_cap", "bin"):
            if getattr(self, name) <= 0:
                problems.append(f"{name}: expected a positive number, got {getattr(self, name)}")
        if self.backoff_cap < self.backoff_base:
            problems.append(
                f"backoff_cap ({self.backoff_cap}) must be at least backoff_base "
                f"({self.backoff_base})"
            )
        if problems:
            raise ValueError("; ".join(problems))


@attrs.frozen(kw_only=True)
class Storm:
    """One drop and the recovery from it, times relative to the drop."""

    dropped: int  # connections the emulator closed
    recovered: bool
    recovery: float  # seconds until all were connected again (or the wait gave up)
    reconnects: list[float]  # every reconnect, seconds after the drop
    delays: list[float]  # every backoff delay scheduled after the drop
    failed: int  # channels that went FAILED after the drop
    node_cpu: float  # seconds of the node's CPU from the drop until all were back
    far_end_cpu: float | None  # the far end's (None: it runs in the node's process)


async def _storm(rig: Rig, n: int, params: StormParams, ctx: RunContext, k: int) -> Storm:
    assert rig.emulator is not None
    states = rig.states
    first_connect = len(states.connected_at)
    first_delay = len(states.backoff_delays)
    failed_before = len(states.failed)
    ctx.progress.phase(f"storm {k}: dropping {states.connected:,} connections at once", n)
    node_cpu, far_end_cpu = cpu_seconds(), rig.emulator.cpu_seconds()
    drop = trio.current_time()
    answer = await rig.emulator.fault(kind="drop")
    wait = params.backoff_cap + RECOVERY_SLACK + 30.0  # past the target: measure how far past
    recovered = False
    with trio.move_on_after(min(wait, max(1.0, ctx.remaining() - 10))):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_show, rig, first_connect, ctx)
            # Every channel connects once more after the drop; then all are up.
            await states.wait_connects(first_connect + n)
            await states.wait_connected(n)
            recovered = True
            nursery.cancel_scope.cancel()
    end = trio.current_time()
    node_cpu = cpu_seconds() - node_cpu
    if far_end_cpu is not None:
        far_end_cpu = (rig.emulator.cpu_seconds() or 0.0) - far_end_cpu
    reconnects = [t - drop for t in states.connected_at[first_connect:]]
    return Storm(
        dropped=int(answer.get("closed", 0)),
        recovered=recovered,
        recovery=(max(reconnects) if recovered and reconnects else end - drop),
        reconnects=reconnects,
        delays=list(states.backoff_delays[first_delay:]),
        failed=len(states.failed) - failed_before,
        node_cpu=node_cpu,
        far_end_cpu=far_end_cpu,
    )


async def _show(rig: Rig, first_connect: int, ctx: RunContext) -> None:
    """Redraw the progress bar until cancelled (a display, not a wait)."""
    while True:
        back = len(rig.states.connected_at) - first_connect
        ctx.progress.update(back, connected=rig.states.connected, failed=len(rig.states.failed))
        await trio.sleep(0.2)


def _allowed_peak(n: int, base: float, width: float) -> float:
    """Connects per second one bin may see if N channels retry at uniform(0, base)."""
    per_bin = n * min(width, base) / base
    return (per_bin + SIGMAS * math.sqrt(per_bin)) / width


async def _run(params: StormParams, ctx: RunContext) -> Report:
    started = utc_now()
    load_before = load_average()
    t0 = time.perf_counter()
    notes: list[str] = []
    sections: dict[str, float] = {}
    external = params.emulator == "process" and params.provider in EMULATED
    fds = 1 if external else 2
    limit = raise_open_files_limit(params.channels * fds + 1_000)
    n = min(params.channels, connection_capacity(fds))
    if n < params.channels:
        notes.append(
            f"the open-files limit ({limit:,}) capped the run at {n:,} channels "
            f"instead of {params.channels:,}"
        )
        ctx.progress.note(notes[-1])
    backoff = BackoffConfig(base=params.backoff_base, cap=params.backoff_cap)
    storms: list[Storm] = []
    async with open_rig(
        params.provider,
        external=external,
        limits=False,
        backoff=backoff,
        port_base=ctx.port_base,
        far_end=params.far_end,
        emulator_processes=params.emulator_processes,
        rtt=params.rtt_ms / 1e3,
    ) as rig:
        notes.append(rig.far_end)
        t = time.perf_counter()
        phase = await connect_all(
            rig, n, rate=0.0, budget=max(1.0, ctx.remaining() / 2), progress=ctx.progress
        )
        sections["connect"] = round(time.perf_counter() - t, 2)
        if phase.connected < n:
            raise ScenarioError(
                f"only {phase.connected:,} of {n:,} channels connected before the storm "
                f"({dict(rig.states.statuses())}); try fewer channels"
            )
        for k in range(1, params.storms + 1):
            if ctx.remaining() < params.backoff_cap + RECOVERY_SLACK + 15:
                notes.append(f"storm {k} and later skipped: the time limit is near")
                break
            t = time.perf_counter()
            storms.append(await _storm(rig, n, params, ctx, k))
            sections[f"storm_{k}"] = round(time.perf_counter() - t, 2)
        snapshots = rig.node.channels()
        reconnects = sum(s.statistics.reconnects for s in snapshots if s.statistics is not None)
    if not storms:
        raise ScenarioError("no storm ran: raise --time-limit")
    figures = _figures(params, n, storms, reconnects)
    notes += [
        f"{params.provider} channels in a real node; the drop is the far end's fault API "
        "(every connection closed with 1001 'going away')",
        f"backoff: full jitter, first retry uniform(0, {params.backoff_base:g} s), cap "
        f"{params.backoff_cap:g} s; recovery target = cap + {RECOVERY_SLACK:g} s",
        f"retry rate: when each channel's retry was due (its scheduled delay after the drop, "
        f"which reaches every channel within milliseconds), per {params.bin:g} s bin; allowed: "
        f"N x bin / base retries per bin plus {SIGMAS:g} standard deviations (Poisson)",
        "completed reconnects bunch up even though the retries are spread: every handshake "
        "in flight shares the node's and the far end's CPU, so a burst of retries finishes "
        "together once that work is done (the reconnect_rate plot shows it); their peak is "
        "reported without a target",
        "figures over several storms: the worst storm (longest recovery, highest peak); "
        "CPU per reconnect over all of them, from each drop until all were back (the node's "
        "includes its event hub and this harness)",
    ]
    if not external:
        notes.append("the emulator runs in the node's process: its CPU is in the node's")
    return Report(
        scenario="storm",
        started=started,
        duration=time.perf_counter() - t0,
        parameters={**attrs.asdict(params), "channels_run": n, "open_files_limit": limit},
        machine=machine_info(),
        load_average={"before": load_before, "after": load_average()},
        section_seconds=sections,
        figures=figures,
        notes=notes,
        series=_series(params, n, storms),
    )


def _figures(params: StormParams, n: int, storms: list[Storm], reconnects: int) -> list[Figure]:
    worst = max(storms, key=lambda s: s.recovery)
    peak = (
        max(
            max(per_interval(s.reconnects, 0.0, max(s.reconnects, default=0) + 1e-9, params.bin))
            for s in storms
        )
        / params.bin
    )
    allowed = _allowed_peak(n, params.backoff_base, params.bin)
    retry_peak = (
        max(
            max(per_interval(s.delays, 0.0, max(s.delays, default=0) + 1e-9, params.bin))
            for s in storms
        )
        / params.bin
    )
    failed = sum(s.failed for s in storms)
    back = sum(len(s.reconnects) for s in storms) or 1
    cpu = [
        Figure.single(
            name="node_cpu_per_reconnect",
            label="node CPU per reconnect, drop → all back",
            unit="µs",
            value=sum(s.node_cpu for s in storms) / back * 1e6,
            better="lower",
        )
    ]
    far_end = [s.far_end_cpu for s in storms]
    if all(c is not None for c in far_end):
        cpu.append(
            Figure.single(
                name="far_end_cpu_per_reconnect",
                label="far end CPU per reconnect, drop → all back",
                unit="µs",
                value=sum(c or 0.0 for c in far_end) / back * 1e6,
                better="lower",
            )
        )
        worst_span = max(worst.recovery, 1e-9)
        cpu.append(
            Figure.single(
                name="far_end_cpu_share",
                label="far end CPU during the worst storm's recovery (% of a core)",
                unit="%",
                value=(worst.far_end_cpu or 0.0) / worst_span * 100,
                better="lower",
            )
        )
    return [
        Figure.single(
            name="channels",
            label="channels connected before each storm",
            unit="channels",
            value=n,
            better="higher",
        ),
        Figure.single(
            name="recovery_time",
            label="drop → all connected again (worst storm)",
            unit="s",
            value=worst.recovery,
            better="lower",
            target=Target(
                applies_to="value",
                op="<=",
                threshold=params.backoff_cap + RECOVERY_SLACK,
                text=f"≤ cap + {RECOVERY_SLACK:g} s ({params.backoff_cap + RECOVERY_SLACK:g} s)",
            ),
        ),
        Figure.single(
            name="recovered",
            label="storms fully recovered",
            unit="storms",
            value=sum(s.recovered for s in storms),
            better="higher",
            target=Target(
                applies_to="value", op=">=", threshold=len(storms), text=f"all {len(storms)}"
            ),
        ),
        Figure.single(
            name="retry_rate_peak",
            label=f"peak retry rate, scheduled ({params.bin:g} s bins)",
            unit="retries/s",
            value=retry_peak,
            better="lower",
            target=Target(
                applies_to="value",
                op="<=",
                threshold=allowed,
                text=f"≤ {allowed:,.0f}/s (jitter)",
            ),
        ),
        Figure.single(
            name="reconnect_rate_peak",
            label=f"peak reconnect rate, completed ({params.bin:g} s bins)",
            unit="connects/s",
            value=peak,
            better="lower",
        ),
        Figure.single(
            name="reconnect_rate_mean",
            label="mean reconnect rate (drop → all back)",
            unit="connects/s",
            value=n / worst.recovery if worst.recovery else 0.0,
            better="higher",
        ),
        Figure.single(
            name="median_reconnect",
            label="median time to reconnect after the drop",
            unit="s",
            value=sorted(worst.reconnects)[len(worst.reconnects) // 2] if worst.reconnects else 0,
            better="lower",
        ),
        Figure.single(
            name="fatal_misclassified",
            label="channels FAILED by a drop (fatal misclassifications)",
            unit="channels",
            value=failed,
            better="lower",
            target=Target(applies_to="value", op="<=", threshold=0, text="0"),
        ),
        Figure.single(
            name="reconnects_counted",
            label="reconnects the channels counted (all storms)",
            unit="reconnects",
            value=reconnects,
            better="higher",
            target=Target(
                applies_to="value",
                op=">=",
                threshold=n * len(storms),
                text=f"= {n * len(storms):,}",
            ),
        ),
        *cpu,
    ]


def _series(params: StormParams, n: int, storms: list[Storm]) -> list[Series]:
    out = []
    end = max(max(s.reconnects, default=0.0) for s in storms) + params.bin
    width = params.bin
    xs = [i * width for i in range(int(end / width) + 1)]
    lines = {
        f"storm {k}": [c / width for c in per_interval(s.reconnects, 0.0, xs[-1] + width, width)]
        for k, s in enumerate(storms, 1)
    }
    for k, storm in enumerate(storms, 1):
        retries = per_interval(storm.delays, 0.0, xs[-1] + width, width)
        lines[f"storm {k}: retries due"] = [c / width for c in retries]
    lines["allowed by jitter"] = [_allowed_peak(n, params.backoff_base, width)] * len(xs)
    out.append(
        Series(
            name="reconnect_rate",
            title=f"retries due and reconnects completed per second after dropping {n:,}",
            x_label="seconds after the drop",
            y_label="connects/s",
            x=xs,
            lines=lines,
            kind="step",
        )
    )
    edges = [i * width for i in range(int(end / width) + 1)]
    out.append(
        Series(
            name="reconnect_histogram",
            title="time to reconnect after the drop (histogram)",
            x_label="seconds after the drop",
            y_label="channels",
            x=edges,
            lines={
                f"storm {k}": [float(c) for c in per_interval(s.reconnects, 0.0, end, width)]
                for k, s in enumerate(storms, 1)
            },
            kind="bar",
        )
    )
    top = max(max(s.delays, default=0.0) for s in storms) + 1e-9
    dwidth = max(top / 40, 1e-3)
    dedges = [i * dwidth for i in range(40)]
    out.append(
        Series(
            name="backoff_delay_histogram",
            title="reconnect delays the channels scheduled (flat = full jitter)",
            x_label="scheduled delay, seconds",
            y_label="channels",
            x=dedges,
            lines={
                f"storm {k}": [
                    float(c) for c in per_interval(s.delays, 0.0, dedges[-1] + dwidth, dwidth)
                ]
                for k, s in enumerate(storms, 1)
            },
            kind="bar",
        )
    )
    return out


def run(params: StormParams, ctx: RunContext) -> Report:
    """Run the storm scenario."""
    if ctx.target is not None:
        raise ScenarioError("storm runs its own node and emulator; --target is not supported")
    return trio.run(_run, params, ctx)


SCENARIO: Final = Scenario(
    name="storm",
    help="drop every connection at once: recovery time, reconnect rate vs jitter, no fatal",
    params=StormParams,
    run=run,
)
