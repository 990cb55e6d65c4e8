"""The ``kernel`` scenario: sizes, repetitions, and the figures and targets.

The workloads live in :mod:`bench.kernel` (ask, fan-in, spawn/stop, the idle
memory launcher), :mod:`bench.kernel_memory`, :mod:`bench.kernel_crash` and
:mod:`bench.kernel_supervisor`; their docstrings say how each figure is
measured. This module runs them:
one untimed warm-up per side at a tenth of the size, then ``--repeat``
repetitions alternating ours and trio's, and turns the medians into
:class:`~bench.report.Figure` rows with their targets:

- ask round trip (plain actor): ratio <= 0.5 of the trio ping-pong time;
- fan-in 100 -> 1: ratio >= 7 of the trio ``await send`` rate;
- spawn rate: >= 200,000 actors/s;
- idle memory: <= 2.0 KB (2048 bytes) per actor;
- crash-to-restarted median: <= 10 us;
- supervisor start and stop per child at the largest size: ratio <= 4 of the
  same at 1,000 children (linear; quadratic work would be about 100).
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from typing import Final, Literal, TypeVar

import attrs
import trio

from .kernel import (
    FAN_IN_CAPACITY,
    AsyncEcho,
    Echo,
    ask_actor,
    ask_trio,
    fan_in_actor,
    fan_in_trio,
    idle_memory,
    spawn_stop_actor,
    spawn_stop_trio,
)
from .kernel_crash import crash_actor, crash_trio, percentiles, silenced_switchboard_logs
from .kernel_supervisor import SCALING_BASE, SCALING_TARGET, supervisor_start_stop
from .progress import Progress
from .report import Figure, Report, Target, load_average, machine_info, utc_now
from .scenario import RunContext, Scenario

__all__ = ["SCENARIO", "KernelParams", "run"]

T = TypeVar("T")

DEFAULT_ACTORS: Final = 100_000
QUICK_ACTORS: Final = 20_000  # below this the RSS delta drowns in allocator noise
DEFAULT_REPEAT: Final = 5
DEFAULT_SUPERVISOR_CHILDREN: Final = 100_000
FAN_IN_SENDERS: Final = 100
WARMUP_FRACTION: Final = 10  # warm-up runs use 1/10 of the measured size
STOP_MODES: Final[tuple[Literal["cancel"], Literal["graceful"]]] = ("cancel", "graceful")


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@attrs.frozen(kw_only=True)
class KernelParams:
    """Sizes of the kernel workloads (``bench/scenarios/kernel.toml``).

    Attributes:
        actors: actors (and trio tasks) for spawn/stop and idle memory.
        repeat: repetitions per workload.
        asks: round trips per ask sample.
        fan_in_messages: messages each of the 100 senders sends.
        crashes: crashes per crash-latency sample.
        supervisor_children: children of the largest supervisor in the
            start/stop scaling figures (compared with 1,000).
    """

    actors: int = attrs.field(
        default=DEFAULT_ACTORS,
        metadata=_help(
            f"actors for spawn/stop and idle memory (below {QUICK_ACTORS:,} the RSS delta "
            "drowns in allocator noise)"
        ),
    )
    repeat: int = attrs.field(
        default=DEFAULT_REPEAT, metadata=_help("repetitions per workload; medians are reported")
    )
    asks: int = attrs.field(default=50_000, metadata=_help("round trips per ask sample"))
    fan_in_messages: int = attrs.field(
        default=2_000, metadata=_help("messages each of the 100 fan-in senders sends")
    )
    crashes: int = attrs.field(default=1_000, metadata=_help("crashes per crash-latency sample"))
    supervisor_children: int = attrs.field(
        default=DEFAULT_SUPERVISOR_CHILDREN,
        metadata=_help(
            f"children of the largest supervisor in the start/stop scaling figures "
            f"(compared with {SCALING_BASE:,}; at least that many)"
        ),
    )

    def __attrs_post_init__(self) -> None:
        for field in attrs.fields(type(self)):
            if getattr(self, field.name) < 1:
                raise ValueError(
                    f"{field.name}: expected at least 1, got {getattr(self, field.name)}"
                )
        if self.supervisor_children < SCALING_BASE:
            raise ValueError(
                f"supervisor_children: expected at least {SCALING_BASE:,} (the size it is "
                f"compared with), got {self.supervisor_children}"
            )


def _alternate(
    repeat: int, ours: Callable[[], T], base: Callable[[], T]
) -> tuple[list[T], list[T]]:
    a: list[T] = []
    b: list[T] = []
    for _ in range(repeat):
        a.append(ours())
        b.append(base())
    return a, b


def _figures_ask(p: KernelParams, progress: Progress) -> list[Figure]:
    progress.phase(f"ask round trip: {p.asks:,} asks x {p.repeat}")
    warm = max(p.asks // WARMUP_FRACTION, 1)
    trio.run(ask_actor, Echo, warm)
    trio.run(ask_actor, AsyncEcho, warm)
    trio.run(ask_trio, warm)
    plain: list[float] = []
    task: list[float] = []
    base: list[float] = []
    for _ in range(p.repeat):
        plain.append(trio.run(ask_actor, Echo, p.asks))
        task.append(trio.run(ask_actor, AsyncEcho, p.asks))
        base.append(trio.run(ask_trio, p.asks))
    ping_pong = "client/server ping-pong on two trio memory channels (await send/receive)"
    return [
        Figure.from_samples(
            name="ask_round_trip",
            label="ask round trip, plain actor (inline)",
            unit="µs",
            samples=plain,
            baseline_samples=base,
            baseline_label=ping_pong,
            better="lower",
            target=Target(applies_to="ratio", op="<=", threshold=0.5, text="ratio ≤ 0.5"),
        ),
        Figure.from_samples(
            name="ask_round_trip_task_mode",
            label="ask round trip, async-receive actor (task)",
            unit="µs",
            samples=task,
            baseline_samples=base,
            baseline_label=ping_pong,
            better="lower",
        ),
    ]


def _figures_fan_in(p: KernelParams, progress: Progress) -> list[Figure]:
    progress.phase(
        f"fan-in: {FAN_IN_SENDERS} senders x {p.fan_in_messages:,} messages x {p.repeat}"
    )
    warm = max(p.fan_in_messages // WARMUP_FRACTION, 1)
    trio.run(fan_in_actor, FAN_IN_SENDERS, warm)
    trio.run(functools.partial(fan_in_trio, FAN_IN_SENDERS, warm, nowait=False))
    trio.run(functools.partial(fan_in_trio, FAN_IN_SENDERS, warm, nowait=True))
    ours: list[float] = []
    awaited: list[float] = []
    nowait: list[float] = []
    for _ in range(p.repeat):
        ours.append(trio.run(fan_in_actor, FAN_IN_SENDERS, p.fan_in_messages))
        awaited.append(
            trio.run(
                functools.partial(fan_in_trio, FAN_IN_SENDERS, p.fan_in_messages, nowait=False)
            )
        )
        nowait.append(
            trio.run(functools.partial(fan_in_trio, FAN_IN_SENDERS, p.fan_in_messages, nowait=True))
        )
    return [
        Figure.from_samples(
            name="fan_in",
            label="tell fan-in 100→1 (await ref.send)",
            unit="msgs/s",
            samples=ours,
            baseline_samples=awaited,
            baseline_label=(
                f"100 tasks `await send` on one trio channel (capacity {FAN_IN_CAPACITY}), "
                "receiver `async for`"
            ),
            better="higher",
            target=Target(applies_to="ratio", op=">=", threshold=7.0, text="ratio ≥ 7"),
        ),
        Figure.from_samples(
            name="fan_in_vs_send_nowait",
            label="tell fan-in 100→1 vs trio send_nowait",
            unit="msgs/s",
            samples=ours,
            baseline_samples=nowait,
            baseline_label=(
                "100 tasks `send_nowait` (await send only when full), receiver drains "
                "with `receive_nowait` (awaits only when empty)"
            ),
            better="higher",
        ),
    ]


def _figures_spawn_stop(p: KernelParams, progress: Progress) -> list[Figure]:
    n = p.actors
    progress.phase(f"spawn/stop: {n:,} actors x {p.repeat}")
    warm = max(n // WARMUP_FRACTION, 1)
    trio.run(spawn_stop_actor, warm)
    trio.run(spawn_stop_trio, warm, "cancel")
    trio.run(spawn_stop_trio, warm, "graceful")
    spawn_ours: list[float] = []
    stop_ours: list[float] = []
    spawn_trio: list[float] = []
    cancel_trio: list[float] = []
    graceful_trio: list[float] = []
    for i in range(p.repeat):
        rate, stop = trio.run(spawn_stop_actor, n)
        spawn_ours.append(rate)
        stop_ours.append(stop * 1e3)
        # One trio spawn of 100k tasks costs seconds: the stop baselines take turns.
        modes = STOP_MODES if p.repeat == 1 else (STOP_MODES[i % 2],)
        for mode in modes:
            rate, stop = trio.run(functools.partial(spawn_stop_trio, n, mode))
            spawn_trio.append(rate)
            (cancel_trio if mode == "cancel" else graceful_trio).append(stop * 1e3)
    return [
        Figure.from_samples(
            name="spawn_rate",
            label=f"spawn rate ({n:,} plain actors)",
            unit="actors/s",
            samples=spawn_ours,
            baseline_samples=spawn_trio,
            baseline_label="nursery.start_soon tasks, each with its own memory channel, "
            "until all are parked in receive",
            better="higher",
            target=Target(
                applies_to="value", op=">=", threshold=200_000, text="≥ 200,000 actors/s"
            ),
        ),
        Figure.from_samples(
            name="stop_time",
            label=f"stop all {n:,} (await ref.stop() each)",
            unit="ms",
            samples=stop_ours,
            baseline_samples=cancel_trio,
            baseline_label="cancel the nursery holding the parked tasks, until all ended",
            better="lower",
        ),
        Figure.from_samples(
            name="stop_time_vs_graceful",
            label=f"stop all {n:,} vs trio graceful stop",
            unit="ms",
            samples=stop_ours,
            baseline_samples=graceful_trio,
            baseline_label="close each task's channel in turn and await its 'done' message",
            better="lower",
        ),
    ]


def _figures_memory(p: KernelParams, progress: Progress) -> list[Figure]:
    n = p.actors
    progress.phase(f"idle memory: {n:,} actors x {p.repeat}, one subprocess per sample")
    ours, base = _alternate(
        p.repeat,
        functools.partial(idle_memory, "actors", n),
        functools.partial(idle_memory, "trio", n),
    )
    return [
        Figure.from_samples(
            name="idle_memory",
            label=f"idle memory per actor (RSS Δ at {n:,})",
            unit="bytes",
            samples=ours,
            baseline_samples=base,
            baseline_label="trio task parked on its own memory channel after one message",
            better="lower",
            target=Target(
                applies_to="value", op="<=", threshold=2048, text="≤ 2.0 KB (2048 bytes)"
            ),
        )
    ]


def _figures_crash(p: KernelParams, progress: Progress) -> list[Figure]:
    progress.phase(
        f"crash-to-restarted: {p.crashes:,} crashes x {p.repeat} (switchboard logs silenced)"
    )
    with silenced_switchboard_logs():
        trio.run(crash_actor, max(p.crashes // WARMUP_FRACTION, 1))
        trio.run(crash_trio, max(p.crashes // WARMUP_FRACTION, 1))
        ours, base = _alternate(
            p.repeat,
            lambda: percentiles(trio.run(crash_actor, p.crashes)),
            lambda: percentiles(trio.run(crash_trio, p.crashes)),
        )
    label = (
        "trio supervisor loop: child task in a fresh nursery (start_soon), "
        "raises on a channel message, caught with except*, next child started"
    )
    figures = []
    for i, name in enumerate(("median", "p90", "p99")):
        figures.append(
            Figure.from_samples(
                name=f"crash_restart_{name}",
                label=f"crash→restarted {name} ({p.crashes:,} crashes)",
                unit="µs",
                samples=[s[i] for s in ours],
                baseline_samples=[s[i] for s in base],
                baseline_label=label,
                better="lower",
                target=(
                    Target(applies_to="value", op="<=", threshold=10.0, text="≤ 10 µs")
                    if name == "median"
                    else None
                ),
            )
        )
    return figures


def _scaling_sizes(largest: int) -> list[int]:
    """SCALING_BASE, then x10 steps below ``largest``, then ``largest``: 1k, 10k, 100k."""
    sizes = [SCALING_BASE]
    while sizes[-1] * 10 < largest:
        sizes.append(sizes[-1] * 10)
    if largest > sizes[-1]:
        sizes.append(largest)
    return sizes


def _figures_supervisor(p: KernelParams, progress: Progress, notes: list[str]) -> list[Figure]:
    sizes = _scaling_sizes(p.supervisor_children)
    progress.phase(
        f"supervisor start/stop: {', '.join(f'{n:,}' for n in sizes)} children x {p.repeat}"
    )
    trio.run(supervisor_start_stop, SCALING_BASE)  # warm-up
    start: dict[int, list[float]] = {n: [] for n in sizes}
    stop: dict[int, list[float]] = {n: [] for n in sizes}
    for _ in range(p.repeat):
        for n in sizes:  # every size in every repetition: drift hits them alike
            per_start, per_stop = trio.run(supervisor_start_stop, n)
            start[n].append(per_start)
            stop[n].append(per_stop)
    largest = sizes[-1]
    for what, samples in (("start", start), ("stop", stop)):
        per_size = ", ".join(f"{n:,}: {statistics.median(samples[n]):.2f}" for n in sizes)
        notes.append(f"supervisor {what}, µs per child by children (medians): {per_size}")
    target = Target(
        applies_to="ratio",
        op="<=",
        threshold=SCALING_TARGET,
        text=f"ratio ≤ {SCALING_TARGET:g} (linear)",
    )
    baseline_label = f"the same supervisor with {SCALING_BASE:,} children"
    return [
        Figure.from_samples(
            name=f"supervisor_{what}_scaling",
            label=f"supervisor {what} per child at {largest:,} children",
            unit="µs",
            samples=samples[largest],
            baseline_samples=samples[SCALING_BASE],
            baseline_label=baseline_label,
            better="lower",
            target=target,
        )
        for what, samples in (("start", start), ("stop", stop))
    ]


def run(params: KernelParams, ctx: RunContext) -> Report:
    """Run every kernel workload and return the report."""
    started = utc_now()
    load_before = load_average()
    t0 = time.perf_counter()
    figures: list[Figure] = []
    sections: dict[str, float] = {}

    def section(name: str, fn: Callable[[KernelParams, Progress], list[Figure]]) -> None:
        t = time.perf_counter()
        figures.extend(fn(params, ctx.progress))
        sections[name] = round(time.perf_counter() - t, 2)

    notes: list[str] = []
    section("ask", _figures_ask)
    section("fan_in", _figures_fan_in)
    section("spawn_stop", _figures_spawn_stop)
    section("idle_memory", _figures_memory)
    section("crash", _figures_crash)
    section("supervisor", functools.partial(_figures_supervisor, notes=notes))
    notes += [
        f"medians of {params.repeat} repetition(s) after one untimed warm-up per side; "
        "sides alternate; time.perf_counter",
        "gc.collect() + gc.freeze() before and gc.unfreeze() after every timed section, "
        "on both sides; the cyclic GC stays enabled at default thresholds",
        "ratio = switchboard / trio baseline in the figure's unit "
        "(for rates, > 1 is faster; for times and bytes, < 1 is better)",
        "the plain-actor ask runs inline in the caller (no task switch) and "
        "`await ref.send` does not checkpoint while the mailbox has room: the "
        "task-mode ask and the send_nowait fan-in rows are the like-for-like comparisons",
        "the 'switchboard' loggers were silenced (level above CRITICAL) during the crash "
        "workload: every crash is logged with its traceback, and a log handler would "
        "dominate the latency",
        "stop baselines: one trio spawn of 100k tasks costs seconds, so cancel and graceful "
        "stop take turns across repetitions (cancel in odd, graceful in even ones; both "
        "with one repetition); the spawn baseline uses every trio run",
        "idle memory: each side in a fresh subprocess (python -m bench.kernel_memory); "
        "KB = 1024 bytes",
        f"supervisor scaling: the baseline is the same workload at {SCALING_BASE:,} children "
        "(not trio), so the ratio is how the per-child cost grows with the tree",
    ]
    return Report(
        scenario="kernel",
        started=started,
        duration=time.perf_counter() - t0,
        parameters={
            "actors": params.actors,
            "repeat": params.repeat,
            "asks": params.asks,
            "fan_in_senders": FAN_IN_SENDERS,
            "fan_in_messages_per_sender": params.fan_in_messages,
            "fan_in_capacity": FAN_IN_CAPACITY,
            "crashes": params.crashes,
            "supervisor_children": params.supervisor_children,
            "quick": ctx.quick,
        },
        machine=machine_info(),
        load_average={"before": load_before, "after": load_average()},
        section_seconds=sections,
        figures=figures,
        notes=notes,
    )


SCENARIO: Final = Scenario(
    name="kernel",
    help=(
        "actor kernel: ask, fan-in, spawn/stop, idle memory, crash-to-restarted beside trio; "
        "supervisor scaling"
    ),
    params=KernelParams,
    run=run,
)
