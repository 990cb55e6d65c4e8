"""The ``peers`` scenario: Switchboard beside bare trio, asyncio and Pykka, same work.

Five workloads, each written once per runtime in that runtime's own idiom
(the exact work of every side is in its ``Side.work`` text, which the report
repeats in its notes and baseline labels):

- ping-pong: one request/reply round trip between two parties;
- fan-in: 100 senders -> 1 receiver;
- spawn/stop: start N actors (tasks) until all are ready, then stop each
  gracefully, awaited one at a time;
- idle memory: RSS delta per idle actor, each sample a fresh subprocess;
- crash-to-restarted: a supervised child crashes and is restarted.

Switchboard's and trio's sides are the kernel scenario's workloads
(:mod:`bench.kernel`, :mod:`bench.kernel_crash`, :mod:`bench.kernel_memory`),
imported unchanged; asyncio's are in :mod:`bench.peers_asyncio`, Pykka's in
:mod:`bench.peers_pykka`, their idle memory in :mod:`bench.peers_memory`.

Method (the same for every side): one untimed warm-up at a tenth of the size
(idle memory excepted: every sample is a fresh process that warms up one
actor before measuring), then ``repeat`` repetitions; in each repetition
every side runs once, in an order rotated from one repetition to the next so
no side always runs first; each sample has its own ``trio.run`` /
``asyncio.run`` (Pykka runs in plain threads); medians are reported. Every
Figure is Switchboard's median (value) against one peer's (baseline), so its
ratio is switchboard / peer in the figure's unit.

Time: each workload gets an equal share of the time left when it starts
(what an earlier one left unused passes on); a workload runs at least one
repetition and stops repeating when the next one would overrun its share,
and the report says so.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Final, Literal

import attrs
import trio

from .kernel import (
    FAN_IN_CAPACITY,
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
from .peers_asyncio import crash_asyncio, fan_in_asyncio, ping_pong_asyncio, spawn_stop_asyncio
from .report import Figure, Report, Series, load_average, machine_info, median, utc_now
from .scenario import RunContext, Scenario

__all__ = ["SCENARIO", "PeersParams", "run"]

PEERS: Final = ("trio", "asyncio", "pykka")
WARMUP_FRACTION: Final = 10  # warm-up runs use 1/10 of the measured size
RESERVE: Final = 10.0  # seconds of the time limit kept for the report and the plots
MEMORY_TIMEOUT: Final = 600.0  # seconds one idle-memory subprocess may take


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@attrs.frozen(kw_only=True)
class PeersParams:
    """Sizes of the peers workloads (``bench/scenarios/peers.toml``).

    Attributes:
        repeat: repetitions per workload.
        peers: which peers to measure beside Switchboard.
        ping_pongs: round trips per ping-pong sample.
        fan_in_senders: senders in the fan-in.
        fan_in_messages: messages each sender sends.
        actors: actors (tasks) for spawn/stop and idle memory on Switchboard,
            trio and asyncio.
        pykka_actors: the same for Pykka, whose every actor is an OS thread.
        crashes: crashes per crash-latency sample.
    """

    repeat: int = attrs.field(
        default=5, metadata=_help("repetitions per workload; medians are reported")
    )
    peers: list[str] = attrs.field(
        factory=lambda: list(PEERS),
        metadata=_help("peers beside Switchboard (pykka is skipped when not installed)"),
    )
    ping_pongs: int = attrs.field(default=20_000, metadata=_help("round trips per sample"))
    fan_in_senders: int = attrs.field(default=100, metadata=_help("senders in the fan-in"))
    fan_in_messages: int = attrs.field(
        default=2_000, metadata=_help("messages each fan-in sender sends")
    )
    actors: int = attrs.field(
        default=50_000,
        metadata=_help("actors (tasks) for spawn/stop and idle memory, except Pykka's"),
    )
    pykka_actors: int = attrs.field(
        default=1_000, metadata=_help("Pykka actors (one OS thread each) for spawn/stop and memory")
    )
    crashes: int = attrs.field(default=1_000, metadata=_help("crashes per crash-latency sample"))

    def __attrs_post_init__(self) -> None:
        for field in attrs.fields(type(self)):
            value = getattr(self, field.name)
            if isinstance(value, int) and value < 1:
                raise ValueError(f"{field.name}: expected at least 1, got {value}")
        unknown = [p for p in self.peers if p not in PEERS]
        if unknown or not self.peers:
            raise ValueError(
                f"peers: expected some of {', '.join(PEERS)}, got {','.join(self.peers) or '[]'}"
            )


# ---------------------------------------------------------------- workloads


@attrs.frozen(kw_only=True)
class Metric:
    """One figure a workload yields on every side."""

    name: str
    label: str
    unit: str
    better: Literal["lower", "higher"]


@attrs.frozen(kw_only=True)
class Side:
    """One runtime's version of a workload.

    Attributes:
        runtime: ``"switchboard"`` or a peer's name.
        work: exactly what this side does (for the notes and baseline labels).
        measure: one sample; the argument says "warm-up size"; returns one
            value per metric of the workload, in order.
    """

    runtime: str
    work: str
    measure: Callable[[bool], tuple[float, ...]]


@attrs.frozen(kw_only=True)
class Workload:
    """One workload on every runtime.

    Attributes:
        name: its section (and ``section_seconds`` key).
        title: the progress phase.
        metrics: the figures each sample yields, in order.
        sides: Switchboard first, then the peers.
        warm_up: run one untimed sample per side at a tenth of the size first.
    """

    name: str
    title: str
    metrics: tuple[Metric, ...]
    sides: tuple[Side, ...]
    warm_up: bool = True


def _size(n: int, warm: bool) -> int:
    return max(n // WARMUP_FRACTION, 1) if warm else n


def _ping_pong(p: PeersParams, pykka: bool) -> Workload:
    n = p.ping_pongs
    sides = [
        Side(
            runtime="switchboard",
            work="`await ref.ask(i)` to a plain actor whose receive returns its argument "
            "(an ask to an idle plain actor runs inline in the caller: no task switch)",
            measure=lambda warm: (trio.run(ask_actor, Echo, _size(n, warm)),),
        ),
        Side(
            runtime="trio",
            work="client task `await send`s i on a request memory channel, a server task "
            "`await send`s it back on a reply channel (both capacity 1)",
            measure=lambda warm: (trio.run(ask_trio, _size(n, warm)),),
        ),
        Side(
            runtime="asyncio",
            work="client `await put`s i on a request asyncio.Queue, a server task `await put`s "
            "it back on a reply queue (both maxsize 1)",
            measure=lambda warm: (asyncio.run(ping_pong_asyncio(_size(n, warm))),),
        ),
    ]
    if pykka:
        from .peers_pykka import ping_pong_pykka

        sides.append(
            Side(
                runtime="pykka",
                work="blocking `ref.ask(i)` from the main thread to a ThreadingActor whose "
                "on_receive returns its argument",
                measure=lambda warm: (ping_pong_pykka(_size(n, warm)),),
            )
        )
    return Workload(
        name="ping_pong",
        title=f"ping-pong: {n:,} round trips",
        metrics=(
            Metric(name="ping_pong", label="ping-pong round trip", unit="µs", better="lower"),
        ),
        sides=tuple(sides),
    )


def _fan_in(p: PeersParams, pykka: bool) -> Workload:
    senders, m, cap = p.fan_in_senders, p.fan_in_messages, FAN_IN_CAPACITY

    def trio_side(warm: bool) -> tuple[float]:
        return (trio.run(functools.partial(fan_in_trio, senders, _size(m, warm), nowait=True)),)

    sides = [
        Side(
            runtime="switchboard",
            work=f"{senders} tasks `await ref.send(i)` to one counting plain actor "
            f"(mailbox capacity {cap}, overflow WAIT)",
            measure=lambda warm: (trio.run(fan_in_actor, senders, _size(m, warm)),),
        ),
        Side(
            runtime="trio",
            work=f"{senders} tasks `send_nowait` (`await send` only when full) on one memory "
            f"channel (capacity {cap}); one receiver drains with `receive_nowait`, awaiting "
            "only when empty",
            measure=trio_side,
        ),
        Side(
            runtime="asyncio",
            work=f"{senders} tasks `await queue.put(i)` on one asyncio.Queue (maxsize {cap}); "
            "one receiver task `await queue.get()`",
            measure=lambda warm: (asyncio.run(fan_in_asyncio(senders, _size(m, warm), cap)),),
        ),
    ]
    if pykka:
        from .peers_pykka import fan_in_pykka

        sides.append(
            Side(
                runtime="pykka",
                work=f"{senders} threads `ref.tell(i)` to one counting ThreadingActor "
                "(unbounded inbox: no backpressure)",
                measure=lambda warm: (fan_in_pykka(senders, _size(m, warm)),),
            )
        )
    return Workload(
        name="fan_in",
        title=f"fan-in: {senders} senders x {m:,} messages",
        metrics=(
            Metric(name="fan_in", label=f"fan-in {senders}→1", unit="msgs/s", better="higher"),
        ),
        sides=tuple(sides),
    )


def _rates(spawn_per_s: float, stop_seconds: float, n: int) -> tuple[float, float]:
    """(spawns/s, stops/s): stop as a rate, so Pykka's smaller N compares per actor."""
    return spawn_per_s, n / stop_seconds


def _spawn_stop(p: PeersParams, pykka: bool) -> Workload:
    n, pn = p.actors, p.pykka_actors

    def ours(warm: bool) -> tuple[float, float]:
        k = _size(n, warm)
        return _rates(*trio.run(spawn_stop_actor, k), k)

    def on_trio(warm: bool) -> tuple[float, float]:
        k = _size(n, warm)
        return _rates(*trio.run(spawn_stop_trio, k, "graceful"), k)

    def on_asyncio(warm: bool) -> tuple[float, float]:
        k = _size(n, warm)
        return _rates(*asyncio.run(spawn_stop_asyncio(k)), k)

    sides = [
        Side(
            runtime="switchboard",
            work=f"`await system.spawn(Idle)` x {n:,} (a plain actor is ready when spawn "
            "returns), then `await ref.stop()` on each in turn",
            measure=ours,
        ),
        Side(
            runtime="trio",
            work=f"{n:,} `start_soon` tasks, each with its own memory channel, until all are "
            "parked in receive; then close each channel in turn and await that task's 'done'",
            measure=on_trio,
        ),
        Side(
            runtime="asyncio",
            work=f"{n:,} `create_task` tasks, each with its own asyncio.Queue, until all are "
            "parked in get; then put a stop sentinel on each queue in turn and await that task",
            measure=on_asyncio,
        ),
    ]
    if pykka:
        from .peers_pykka import spawn_stop_pykka

        def on_pykka(warm: bool) -> tuple[float, float]:
            k = _size(pn, warm)
            return _rates(*spawn_stop_pykka(k), k)

        sides.append(
            Side(
                runtime="pykka",
                work=f"`ThreadingActor.start()` x {pn:,} (one OS thread each) until every "
                "on_start ran; then blocking `ref.stop()` on each in turn",
                measure=on_pykka,
            )
        )
    return Workload(
        name="spawn_stop",
        title=f"spawn/stop: {n:,} actors ({pn:,} on pykka)",
        metrics=(
            Metric(name="spawn", label="spawn rate", unit="actors/s", better="higher"),
            Metric(name="stop", label="graceful stop rate", unit="actors/s", better="higher"),
        ),
        sides=tuple(sides),
    )


def _peer_memory(side: str, n: int) -> float:
    """Bytes per idle task (actor) of a peer, measured by :mod:`bench.peers_memory`."""
    cmd = [sys.executable, "-m", "bench.peers_memory", "--side", side, "--actors", str(n)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=MEMORY_TIMEOUT)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed with exit code {out.returncode}:\n{out.stderr}")
    return float(json.loads(out.stdout.strip().splitlines()[-1])["bytes_per_actor"])


def _idle_memory(p: PeersParams, pykka: bool) -> Workload:
    n, pn = p.actors, p.pykka_actors
    sides = [
        Side(
            runtime="switchboard",
            work=f"{n:,} plain actors, each told one message and idle again "
            "(python -m bench.kernel_memory --side actors)",
            measure=lambda warm: (idle_memory("actors", n),),
        ),
        Side(
            runtime="trio",
            work=f"{n:,} tasks, each parked on its own memory channel after one message "
            "(python -m bench.kernel_memory --side trio)",
            measure=lambda warm: (idle_memory("trio", n),),
        ),
        Side(
            runtime="asyncio",
            work=f"{n:,} tasks, each parked on its own asyncio.Queue after one message "
            "(python -m bench.peers_memory --side asyncio)",
            measure=lambda warm: (_peer_memory("asyncio", n),),
        ),
    ]
    if pykka:
        sides.append(
            Side(
                runtime="pykka",
                work=f"{pn:,} ThreadingActors (one OS thread each, touched stack pages "
                "included), each told one message and idle again "
                "(python -m bench.peers_memory --side pykka)",
                measure=lambda warm: (_peer_memory("pykka", pn),),
            )
        )
    return Workload(
        name="idle_memory",
        title=f"idle memory: {n:,} actors ({pn:,} on pykka), a fresh process per sample",
        metrics=(
            Metric(name="idle_memory", label="idle memory per actor", unit="bytes", better="lower"),
        ),
        sides=tuple(sides),
        warm_up=False,
    )


def _crash(p: PeersParams, pykka: bool) -> Workload:
    n = p.crashes

    def ours(warm: bool) -> tuple[float, float]:
        with silenced_switchboard_logs():
            return _median_p99(trio.run(crash_actor, _size(n, warm)))

    sides = [
        Side(
            runtime="switchboard",
            work="plain child under open_supervisor (one-for-one, permanent); crash = raise "
            "in receive on a tell, restarted = the new incarnation's on_start",
            measure=ours,
        ),
        Side(
            runtime="trio",
            work="supervisor task runs the child in a fresh nursery (start_soon), catches its "
            "exception with except* and starts the next one; restarted = its first statement",
            measure=lambda warm: _median_p99(trio.run(crash_trio, _size(n, warm))),
        ),
        Side(
            runtime="asyncio",
            work="supervising coroutine awaits the child task, catches its exception and "
            "creates the next task; restarted = its first statement",
            measure=lambda warm: _median_p99(asyncio.run(crash_asyncio(_size(n, warm)))),
        ),
    ]
    if pykka:
        from .peers_pykka import crash_pykka, silenced_pykka_logs

        def on_pykka(warm: bool) -> tuple[float, float]:
            with silenced_pykka_logs():
                return _median_p99(crash_pykka(_size(n, warm)))

        sides.append(
            Side(
                runtime="pykka",
                work="Pykka has no supervisor; the minimal equivalent: the child's on_failure "
                "tells a supervisor actor, which starts a new child ThreadingActor (a new "
                "thread); restarted = the new child's on_start",
                measure=on_pykka,
            )
        )
    return Workload(
        name="crash",
        title=f"crash-to-restarted: {n:,} crashes",
        metrics=(
            Metric(name="crash_restart", label="crash→restarted median", unit="µs", better="lower"),
            Metric(
                name="crash_restart_p99", label="crash→restarted p99", unit="µs", better="lower"
            ),
        ),
        sides=tuple(sides),
    )


def _median_p99(latencies: list[float]) -> tuple[float, float]:
    mid, _, p99 = percentiles(latencies)
    return mid, p99


WORKLOADS: Final[tuple[Callable[[PeersParams, bool], Workload], ...]] = (
    _ping_pong,
    _fan_in,
    _spawn_stop,
    _idle_memory,
    _crash,
)

# ---------------------------------------------------------------- running


def _fmt(x: float, unit: str) -> str:
    return f"{x:,.3g} {unit}" if x < 1_000 else f"{x:,.0f} {unit}"


def _measure(
    workload: Workload, repeat: int, ctx: RunContext, share: float
) -> tuple[dict[str, list[tuple[float, ...]]], str | None]:
    """Warm up, then interleave the sides for up to ``repeat`` repetitions.

    Returns:
        each runtime's samples (one tuple of metric values per repetition),
        and a note if the time share cut the repetitions short.
    """
    sides = workload.sides
    progress = ctx.progress
    progress.phase(workload.title, total=repeat * len(sides), unit="samples")
    t0 = time.perf_counter()
    if workload.warm_up:
        for side in sides:
            side.measure(True)
    samples: dict[str, list[tuple[float, ...]]] = {s.runtime: [] for s in sides}
    longest = 0.0
    first = workload.metrics[0]
    for rep in range(repeat):
        spent = time.perf_counter() - t0
        if rep and spent + longest > share:
            return samples, (
                f"{workload.name}: {rep} of {repeat} repetitions, stopped to keep within "
                f"the time limit ({spent:.0f} s of a {share:.0f} s share spent)"
            )
        t_rep = time.perf_counter()
        for i in range(len(sides)):
            side = sides[(rep + i) % len(sides)]
            samples[side.runtime].append(side.measure(False))
            running = {
                rt: _fmt(median([v[0] for v in vs]), first.unit) for rt, vs in samples.items() if vs
            }
            progress.update(rep * len(sides) + i + 1, **running)
        longest = max(longest, time.perf_counter() - t_rep)
    return samples, None


def _figures(
    workload: Workload, samples: dict[str, list[tuple[float, ...]]]
) -> tuple[list[Figure], list[Series]]:
    work = {s.runtime: s.work for s in workload.sides}
    figures: list[Figure] = []
    series: list[Series] = []
    for k, metric in enumerate(workload.metrics):
        values = {rt: [v[k] for v in vs] for rt, vs in samples.items()}
        ours = values["switchboard"]
        for peer in (rt for rt in values if rt != "switchboard"):
            figures.append(
                Figure.from_samples(
                    name=f"{metric.name}_vs_{peer}",
                    label=f"{metric.label} vs {peer}",
                    unit=metric.unit,
                    samples=ours,
                    baseline_samples=values[peer],
                    baseline_label=f"{peer}: {work[peer]}",
                    better=metric.better,
                )
            )
        runtimes = list(values)
        series.append(
            Series(
                name=f"peers_{metric.name}",
                title=f"{metric.label} ({metric.unit}, {metric.better} is better)"
                + (f", median of {len(ours)} runs" if len(ours) > 1 else ", one run"),
                x_label="runtime",
                y_label=metric.unit,
                x=[float(i) for i in range(len(runtimes))],
                lines={"median": [median(values[rt]) for rt in runtimes]},
                kind="bar",
                categories=runtimes,
                group="peers",
            )
        )
    return figures, series


def _notes(params: PeersParams, peers: tuple[str, ...], installed: bool) -> list[str]:
    """What a reader must know beyond the figures: method, absences, caveats."""
    notes = [f"{p}: not measured (not in --peers)" for p in PEERS if p not in params.peers]
    if "pykka" in params.peers and not installed:
        notes.append(
            "pykka: NOT MEASURED, it is not installed (pip install -e '.[bench]'); "
            "its figures are absent"
        )
    notes += [
        f"medians of up to {params.repeat} repetition(s); every side runs once per repetition, "
        "in an order rotated each repetition; one untimed warm-up per side at 1/10 size "
        "(idle memory: none, each sample is a fresh process that warms up one actor first); "
        "each sample in its own trio.run / asyncio.run (default event loop) / plain threads "
        "(pykka); time.perf_counter",
        "gc.collect() + gc.freeze() before and gc.unfreeze() after every timed section, on "
        "every side; the cyclic GC stays enabled at default thresholds",
        "ratio = switchboard / peer in the figure's unit (for rates > 1 is faster; for "
        "times and bytes < 1 is better)",
        "ping-pong: Switchboard's ask to an idle plain actor runs the handler inline in the "
        "caller (no task switch); `python -m bench kernel` also reports the task-mode ask "
        "(one switch each way, like the trio and asyncio ping-pongs)",
        "fan-in: `ref.send`, trio's send_nowait-first senders and asyncio's `Queue.put` all "
        "return without yielding while there is room",
        "crash: the 'switchboard' (and 'pykka') loggers were silenced (above CRITICAL) during "
        "the crash workload: both log each crash with its traceback",
        "idle memory: psutil RSS delta after gc.collect(), divided by N; KB = 1024 bytes",
    ]
    if "pykka" in peers:
        notes.append(
            "pykka: every actor is an OS thread (GIL-bound); spawn/stop and idle memory use "
            f"{params.pykka_actors:,} actors instead of {params.actors:,}, so compare them per "
            "actor (rates and bytes per actor); its fan-in `tell` never waits (unbounded "
            "inbox); it has no supervisor, so the crash workload uses the minimal one described "
            "in the crash line below"
        )
    notes.append("what each runtime does, per workload (the same work in each runtime's idiom):")
    return notes


def run(params: PeersParams, ctx: RunContext) -> Report:
    """Run every workload on Switchboard and each requested peer; return the report."""
    started = utc_now()
    load_before = load_average()
    t0 = time.perf_counter()
    installed = importlib.util.find_spec("pykka") is not None
    peers = tuple(p for p in PEERS if p in params.peers and (p != "pykka" or installed))
    figures: list[Figure] = []
    series: list[Series] = []
    sections: dict[str, float] = {}
    notes: list[str] = []
    work_notes: list[str] = []
    for i, build in enumerate(WORKLOADS):
        built = build(params, "pykka" in peers)
        workload = attrs.evolve(
            built, sides=tuple(s for s in built.sides if s.runtime in ("switchboard", *peers))
        )
        share = (ctx.remaining() - RESERVE) / (len(WORKLOADS) - i)
        if share <= 0:
            notes.append(f"{workload.name}: NOT MEASURED, the time limit was reached")
            ctx.progress.note(notes[-1])
            continue
        t = time.perf_counter()
        samples, cut = _measure(workload, params.repeat, ctx, share)
        sections[workload.name] = round(time.perf_counter() - t, 2)
        if cut is not None:
            notes.append(cut)
            ctx.progress.note(cut)
        more_figures, more_series = _figures(workload, samples)
        figures += more_figures
        series += more_series
        work_notes.append(
            f"{workload.name}: " + "; ".join(f"{s.runtime}: {s.work}" for s in workload.sides)
        )
    notes += _notes(params, peers, installed) + work_notes
    parameters = attrs.asdict(params) | {
        "fan_in_capacity": FAN_IN_CAPACITY,
        "runtimes": ["switchboard", *peers],
        "quick": ctx.quick,
    }
    return Report(
        scenario="peers",
        started=started,
        duration=time.perf_counter() - t0,
        parameters=parameters,
        machine=machine_info(),
        load_average={"before": load_before, "after": load_average()},
        section_seconds=sections,
        figures=figures,
        notes=notes,
        series=series,
    )


SCENARIO: Final = Scenario(
    name="peers",
    help="Switchboard beside bare trio, asyncio and Pykka: ping-pong, fan-in, spawn/stop, "
    "idle memory, crash-to-restarted; same work, medians, ratios",
    params=PeersParams,
    run=run,
)
