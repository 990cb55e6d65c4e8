"""The ``kernel`` scenario: the actor kernel beside the same work on plain trio.

Every figure is measured twice in the same process and run: once through the
actor kernel and once written directly on trio memory channels, doing the
same work. Each workload runs in its own ``trio.run``; the two sides
alternate (ours, trio, ours, trio, ...) so that drift on a shared machine
hits both; each side first runs once untimed (warm-up); the reported value is
the median over ``--repeat`` repetitions (default 5). Clocks are
``time.perf_counter``. Around every timed section both sides do the same
``gc.collect(); gc.freeze()`` before and ``gc.unfreeze()`` after, with the
cyclic GC left enabled at its default thresholds (allocation-heavy workloads
such as spawning 100k actors pay for it on both sides alike).

Figures:

ask round trip (µs per ask)
    ``await ref.ask(i)`` in a loop to an actor whose ``receive`` returns its
    argument, versus a trio ping-pong: a client ``await send``s ``i`` on a
    request channel to a server task that ``await send``s it back on a reply
    channel (both channels capacity 1). Measured twice on our side: a plain
    actor, which an idle-actor ``ask`` runs inline in the caller (no task
    switch: the fast path the baseline lacks), and an actor with an
    ``async def receive`` (task mode: one task switch each way, like the
    baseline). Target: the plain ask takes ≤ 0.5× the ping-pong time.

tell fan-in (messages/s)
    100 sender tasks each ``await ref.send(i)`` M times to one plain actor
    whose mailbox is ``MailboxConfig(overflow=Overflow.WAIT, capacity=C)``;
    the actor counts and sets an event at 100·M. ``ref.send`` does not
    checkpoint while there is room (the fast path). Baselines: 100 senders
    ``await send`` on one trio channel of capacity C to one receiver task
    (``async for``), and, the fairer one, senders using ``send_nowait`` and
    falling back to ``await send`` when the channel is full, the receiver
    draining with ``receive_nowait`` and awaiting only when empty. Rate =
    100·M / (time from starting the senders to the count's event).
    Target: ≥ 7× the ``await send`` rate.

spawn rate (actors/s) and stop time (ms for all N)
    ``await system.spawn(Idle)`` N times (a plain actor is ready when spawn
    returns), versus N ``nursery.start_soon`` tasks, each given its own memory
    channel (capacity = the default mailbox capacity) and counted ready when
    it runs and parks in ``receive``; the clock stops when the last one is
    ready. Then stop all: ``await ref.stop()`` on every ref in turn (each a
    graceful stop through the dispatcher, awaited), versus cancelling the
    nursery and waiting for all N tasks to end. The fairer stop baseline
    (a separate trio run) closes each task's channel in turn and awaits that
    task's "done" message: a graceful, awaited stop per task, like ours.
    Target: ≥ 200k spawns/s (absolute).

idle memory (bytes per actor)
    RSS delta (psutil, after ``gc.collect()``) from before spawning N plain
    actors to after each has handled one message and gone idle, divided by
    N; versus N trio tasks each parked on its own memory channel after
    receiving one message. Each side runs in a fresh subprocess
    (``python -m bench.kernel_memory``) so one side's heap does not distort
    the other's. Target: ≤ 2.0 KB = 2048 bytes per idle actor.

crash-to-restarted latency (µs)
    A supervised plain child (``open_supervisor``, one-for-one, permanent,
    intensity 10⁹ per 1 s) records ``perf_counter()`` just before raising in
    ``receive``; its ``on_start`` records the time it runs (the first start
    skipped); latency = restart time − crash time, over ``--crashes``
    crashes (1000), driven one at a time by ``ref.tell``. Baseline: a trio
    "supervisor" task runs the child in a loop, each incarnation in a fresh
    nursery via ``start_soon``; the child raises on a message from a memory
    channel, the supervisor catches it (``except*``) and starts the next
    child, whose first statement records the time. Median, p90, p99 per
    repetition; medians of those over the repetitions. The ``switchboard``
    loggers are silenced during this workload (each crash is logged with
    its traceback, and formatting 1000 tracebacks would dominate).
    Target: median ≤ 10 µs (absolute).
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import logging
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final, TypeVar

import attrs
import trio

from actors import Actor, MailboxConfig, Overflow, open_actor_system

from .report import Figure, Report, Target, load_average, machine_info, utc_now
from .scenario import Scenario

__all__ = ["SCENARIO", "KernelParams"]

T = TypeVar("T")

DEFAULT_ACTORS: Final = 100_000
QUICK_ACTORS: Final = 20_000  # below this the RSS delta drowns in allocator noise
DEFAULT_REPEAT: Final = 5
FAN_IN_SENDERS: Final = 100
CAPACITY: Final = MailboxConfig().capacity  # messages; the default mailbox bound
FAN_IN_CAPACITY: Final = 1_000  # messages; mailbox / channel bound in the fan-in
CRASH_TIMEOUT: Final = 60.0  # seconds the whole crash loop may take before it is a hang
WARMUP_FRACTION: Final = 10  # warm-up runs use 1/10 of the measured size


@attrs.frozen(kw_only=True)
class KernelParams:
    """Sizes of the kernel workloads.

    Attributes:
        actors: actors (and trio tasks) for spawn/stop and idle memory.
        repeat: repetitions per workload.
        asks: round trips per ask sample.
        fan_in_messages: messages each of the 100 senders sends.
        crashes: crashes per crash-latency sample.
        quick: the reduced test mode.
    """

    actors: int
    repeat: int
    asks: int
    fan_in_messages: int
    crashes: int
    quick: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> KernelParams:
        quick = bool(args.quick)
        repeat = args.repeat if args.repeat is not None else (1 if quick else DEFAULT_REPEAT)
        actors = args.actors if args.actors is not None else (
            QUICK_ACTORS if quick else DEFAULT_ACTORS
        )
        return cls(
            actors=actors,
            repeat=repeat,
            asks=5_000 if quick else 50_000,
            fan_in_messages=100 if quick else 2_000,
            crashes=100 if quick else 1_000,
            quick=quick,
        )


def _progress(text: str) -> None:
    print(f"[bench kernel] {text}", file=sys.stderr, flush=True)


@contextmanager
def _gc_settled() -> Iterator[None]:
    """The same GC treatment for both sides of every timed section."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _alternate(
    repeat: int, ours: Callable[[], T], base: Callable[[], T]
) -> tuple[list[T], list[T]]:
    a: list[T] = []
    b: list[T] = []
    for _ in range(repeat):
        a.append(ours())
        b.append(base())
    return a, b


# ===================================================================== ask


class Echo(Actor):
    """Plain actor: runs on the dispatcher, or inline for an idle ``ask``."""

    def receive(self, msg: Any) -> Any:
        return msg


class AsyncEcho(Actor):
    """Task-mode actor: an ``async`` receive gives it a task of its own."""

    async def receive(self, msg: Any) -> Any:
        return msg


async def ask_actor(cls: type[Actor], n: int) -> float:
    """µs per ``await ref.ask(i)`` round trip."""
    async with open_actor_system() as system:
        ref = await system.spawn(cls)
        for i in range(min(n, 1_000)):
            await ref.ask(i)
        with _gc_settled():
            t0 = time.perf_counter()
            for i in range(n):
                await ref.ask(i)
            t1 = time.perf_counter()
        await ref.stop()
    return (t1 - t0) / n * 1e6


async def ask_trio(n: int) -> float:
    """µs per ping-pong round trip over two trio memory channels."""
    req_send, req_recv = trio.open_memory_channel[int](1)
    rep_send, rep_recv = trio.open_memory_channel[int](1)

    async def server() -> None:
        async for msg in req_recv:
            await rep_send.send(msg)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        for i in range(min(n, 1_000)):
            await req_send.send(i)
            await rep_recv.receive()
        with _gc_settled():
            t0 = time.perf_counter()
            for i in range(n):
                await req_send.send(i)
                await rep_recv.receive()
            t1 = time.perf_counter()
        nursery.cancel_scope.cancel()
    return (t1 - t0) / n * 1e6


# ================================================================== fan-in


class Counter(Actor):
    """Counts messages; sets ``done`` when it has seen ``total``."""

    def __init__(self, total: int, done: trio.Event) -> None:
        self.count = 0
        self.total = total
        self.done = done

    def receive(self, msg: Any) -> None:
        self.count += 1
        if self.count == self.total:
            self.done.set()


async def fan_in_actor(senders: int, per_sender: int) -> float:
    """Messages/s from ``senders`` tasks doing ``await ref.send`` to one actor."""
    total = senders * per_sender
    done = trio.Event()
    config = MailboxConfig(overflow=Overflow.WAIT, capacity=FAN_IN_CAPACITY)

    async def sender() -> None:
        for i in range(per_sender):
            await ref.send(i)

    async with open_actor_system() as system:
        ref = await system.spawn(Counter, total, done, mailbox=config)
        with _gc_settled():
            t0 = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for _ in range(senders):
                    nursery.start_soon(sender)
                await done.wait()
                t1 = time.perf_counter()
        await ref.stop()
    return total / (t1 - t0)


async def fan_in_trio(senders: int, per_sender: int, *, nowait: bool) -> float:
    """Messages/s from ``senders`` tasks to one receiver over one trio channel.

    Args:
        nowait: senders try ``send_nowait`` first and the receiver drains with
            ``receive_nowait`` (awaiting only on ``WouldBlock``); otherwise
            every send and receive is awaited.
    """
    total = senders * per_sender
    done = trio.Event()
    send_channel, recv_channel = trio.open_memory_channel[int](FAN_IN_CAPACITY)

    async def sender_await() -> None:
        for i in range(per_sender):
            await send_channel.send(i)

    async def sender_nowait() -> None:
        for i in range(per_sender):
            try:
                send_channel.send_nowait(i)
            except trio.WouldBlock:
                await send_channel.send(i)

    async def receiver_await() -> None:
        count = 0
        async for _ in recv_channel:
            count += 1
            if count == total:
                done.set()

    async def receiver_nowait() -> None:
        count = 0
        while True:
            try:
                recv_channel.receive_nowait()
            except trio.WouldBlock:
                await recv_channel.receive()
            count += 1
            if count == total:
                done.set()

    async with trio.open_nursery() as outer:
        outer.start_soon(receiver_nowait if nowait else receiver_await)
        with _gc_settled():
            t0 = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for _ in range(senders):
                    nursery.start_soon(sender_nowait if nowait else sender_await)
                await done.wait()
                t1 = time.perf_counter()
        outer.cancel_scope.cancel()
    return total / (t1 - t0)


# ============================================================ spawn / stop


class Idle(Actor):
    """A plain actor that ignores what it gets."""

    def receive(self, msg: Any) -> None:
        return None


async def spawn_stop_actor(n: int) -> tuple[float, float]:
    """(spawns/s, seconds to stop all) for ``n`` plain top-level actors."""
    async with open_actor_system() as system:
        refs = []
        with _gc_settled():
            t0 = time.perf_counter()
            for _ in range(n):
                refs.append(await system.spawn(Idle))
            t1 = time.perf_counter()
            for ref in refs:
                await ref.stop()
            t2 = time.perf_counter()
        assert system.statistics().actors == 0
    return n / (t1 - t0), t2 - t1


class _Readiness:
    """Counts trio tasks that reached ``receive``; fires when all have."""

    __slots__ = ("all_ready", "n", "ready")

    def __init__(self, n: int) -> None:
        self.n = n
        self.ready = 0
        self.all_ready = trio.Event()

    def one_ready(self) -> None:
        self.ready += 1
        if self.ready == self.n:
            self.all_ready.set()


async def _parked_task(recv: trio.MemoryReceiveChannel[Any], readiness: _Readiness) -> None:
    readiness.one_ready()
    async for _ in recv:
        pass


async def _parked_task_graceful(
    recv: trio.MemoryReceiveChannel[Any],
    readiness: _Readiness,
    done: trio.MemorySendChannel[None],
) -> None:
    readiness.one_ready()
    async for _ in recv:
        pass
    done.send_nowait(None)


async def spawn_cancel_trio(n: int) -> tuple[float, float]:
    """(tasks/s until all parked, seconds to cancel all) for ``n`` trio tasks."""
    readiness = _Readiness(n)
    sends = []
    with _gc_settled():
        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(n):
                send, recv = trio.open_memory_channel[Any](CAPACITY)
                sends.append(send)
                nursery.start_soon(_parked_task, recv, readiness)
            await readiness.all_ready.wait()
            t1 = time.perf_counter()
            nursery.cancel_scope.cancel()
        t2 = time.perf_counter()
    return n / (t1 - t0), t2 - t1


async def spawn_graceful_stop_trio(n: int) -> float:
    """Seconds to stop ``n`` parked trio tasks one by one: close, await its exit."""
    readiness = _Readiness(n)
    done_send, done_recv = trio.open_memory_channel[None](math.inf)
    sends = []
    with _gc_settled():
        async with trio.open_nursery() as nursery:
            for _ in range(n):
                send, recv = trio.open_memory_channel[Any](CAPACITY)
                sends.append(send)
                nursery.start_soon(_parked_task_graceful, recv, readiness, done_send)
            await readiness.all_ready.wait()
            t1 = time.perf_counter()
            for send in sends:
                send.close()
                await done_recv.receive()
            t2 = time.perf_counter()
    return t2 - t1


# ============================================================ idle memory


def idle_memory(side: str, n: int) -> float:
    """Bytes per idle actor (or parked task), measured in a fresh subprocess."""
    cmd = [sys.executable, "-m", "bench.kernel_memory", "--side", side, "--actors", str(n)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} failed with exit code {out.returncode}:\n{out.stderr}"
        )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return float(result["bytes_per_actor"])


# ================================================================== crashes


class _Crash(Exception):
    """The deliberate failure of the crash workload."""


class CrashRecorder:
    """Crash and restart timestamps, shared by every incarnation of the child."""

    def __init__(self) -> None:
        self.starts = 0
        self.crash_times: list[float] = []
        self.restart_times: list[float] = []
        self.restarted = trio.Event()

    def on_start(self) -> None:
        now = time.perf_counter()
        self.starts += 1
        if self.starts > 1:
            self.restart_times.append(now)
            self.restarted.set()

    def crash(self) -> None:
        self.crash_times.append(time.perf_counter())
        raise _Crash("deliberate crash (benchmark)")

    def latencies(self, last: int) -> list[float]:
        """µs from each of the ``last`` crashes to the restart that followed."""
        pairs = zip(self.crash_times[-last:], self.restart_times[-last:], strict=True)
        return [(restart - crash) * 1e6 for crash, restart in pairs]


class CrashyActor(Actor):
    """A plain child that crashes on every message."""

    def __init__(self, recorder: CrashRecorder) -> None:
        self.recorder = recorder

    def on_start(self) -> None:
        self.recorder.on_start()

    def receive(self, msg: Any) -> None:
        self.recorder.crash()


@contextmanager
def silenced_switchboard_logs() -> Iterator[None]:
    """Raise every ``switchboard`` logger above CRITICAL for the duration."""
    manager = logging.Logger.manager
    loggers = [logging.getLogger("switchboard")] + [
        lg
        for name, lg in list(manager.loggerDict.items())
        if name.startswith("switchboard.") and isinstance(lg, logging.Logger)
    ]
    saved = [(lg, lg.level) for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for lg, level in saved:
            lg.setLevel(level)


async def _drive_crashes(
    tell: Callable[[], None], recorder: CrashRecorder, n: int, warmup: int
) -> list[float]:
    with trio.fail_after(CRASH_TIMEOUT):
        for _ in range(warmup):
            recorder.restarted = trio.Event()
            tell()
            await recorder.restarted.wait()
        with _gc_settled():
            for _ in range(n):
                recorder.restarted = trio.Event()
                tell()
                await recorder.restarted.wait()
    return recorder.latencies(n)


async def crash_actor(n: int) -> list[float]:
    """Crash-to-restarted latencies (µs) of a supervised plain actor."""
    from supervisors import ChildSpec, Strategy, open_supervisor

    recorder = CrashRecorder()
    spec = ChildSpec(id="c", start=functools.partial(CrashyActor, recorder))
    async with (
        open_actor_system() as system,
        open_supervisor(
            system,
            children=[spec],
            strategy=Strategy.ONE_FOR_ONE,
            intensity=10**9,
            period=1.0,
        ) as sup,
    ):
        ref = await sup.whereis_child("c")
        return await _drive_crashes(
            functools.partial(ref.tell, "crash"), recorder, n, warmup=min(n, 100)
        )


async def crash_trio(n: int) -> list[float]:
    """Crash-to-restarted latencies (µs) of a trio supervisor loop."""
    recorder = CrashRecorder()
    send, recv = trio.open_memory_channel[str](math.inf)

    async def child() -> None:
        recorder.on_start()
        async for _ in recv:
            recorder.crash()

    async def supervisor() -> None:
        while True:
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(child)
            except* _Crash:
                pass

    async with trio.open_nursery() as nursery:
        nursery.start_soon(supervisor)
        latencies = await _drive_crashes(
            functools.partial(send.send_nowait, "crash"), recorder, n, warmup=min(n, 100)
        )
        nursery.cancel_scope.cancel()
    return latencies


def _percentiles(latencies: list[float]) -> tuple[float, float, float]:
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return statistics.median(latencies), cuts[89], cuts[98]


# =================================================================== scenario


def _figures_ask(p: KernelParams) -> list[Figure]:
    _progress(f"ask round trip: {p.asks:,} asks x {p.repeat}")
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


def _figures_fan_in(p: KernelParams) -> list[Figure]:
    _progress(f"fan-in: {FAN_IN_SENDERS} senders x {p.fan_in_messages:,} messages x {p.repeat}")
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
            trio.run(functools.partial(fan_in_trio, FAN_IN_SENDERS, p.fan_in_messages, nowait=False))
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


def _figures_spawn_stop(p: KernelParams) -> list[Figure]:
    n = p.actors
    _progress(f"spawn/stop: {n:,} actors x {p.repeat}")
    warm = max(n // WARMUP_FRACTION, 1)
    trio.run(spawn_stop_actor, warm)
    trio.run(spawn_cancel_trio, warm)
    trio.run(spawn_graceful_stop_trio, warm)
    spawn_ours: list[float] = []
    stop_ours: list[float] = []
    spawn_trio: list[float] = []
    cancel_trio: list[float] = []
    graceful_trio: list[float] = []
    for _ in range(p.repeat):
        rate, stop = trio.run(spawn_stop_actor, n)
        spawn_ours.append(rate)
        stop_ours.append(stop * 1e3)
        rate, cancel = trio.run(spawn_cancel_trio, n)
        spawn_trio.append(rate)
        cancel_trio.append(cancel * 1e3)
        graceful_trio.append(trio.run(spawn_graceful_stop_trio, n) * 1e3)
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


def _figures_memory(p: KernelParams) -> list[Figure]:
    n = p.actors
    _progress(f"idle memory: {n:,} actors x {p.repeat}, one subprocess per sample")
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


def _figures_crash(p: KernelParams) -> list[Figure]:
    _progress(f"crash-to-restarted: {p.crashes:,} crashes x {p.repeat} (switchboard logs silenced)")
    with silenced_switchboard_logs():
        trio.run(crash_actor, max(p.crashes // WARMUP_FRACTION, 1))
        trio.run(crash_trio, max(p.crashes // WARMUP_FRACTION, 1))
        ours, base = _alternate(
            p.repeat,
            lambda: _percentiles(trio.run(crash_actor, p.crashes)),
            lambda: _percentiles(trio.run(crash_trio, p.crashes)),
        )
    label = (
        "trio supervisor loop: child task in a fresh nursery (start_soon), "
        "raises on a channel message, caught with except*, next child started"
    )
    figures = []
    for i, (name, what) in enumerate((("median", "median"), ("p90", "p90"), ("p99", "p99"))):
        figures.append(
            Figure.from_samples(
                name=f"crash_restart_{name}",
                label=f"crash→restarted {what} ({p.crashes:,} crashes)",
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


def run(args: argparse.Namespace) -> Report:
    """Run every kernel workload and return the report."""
    params = KernelParams.from_args(args)
    started = utc_now()
    load_before = load_average()
    t0 = time.perf_counter()
    figures: list[Figure] = []
    sections: dict[str, float] = {}

    def section(name: str, fn: Callable[[KernelParams], list[Figure]]) -> None:
        t = time.perf_counter()
        figures.extend(fn(params))
        sections[name] = round(time.perf_counter() - t, 2)

    section("ask", _figures_ask)
    section("fan_in", _figures_fan_in)
    section("spawn_stop", _figures_spawn_stop)
    section("idle_memory", _figures_memory)
    notes: list[str] = []
    try:
        from supervisors import ChildSpec, Strategy, open_supervisor  # noqa: F401
    except ImportError as exc:
        _progress(f"crash-to-restarted: skipped, the supervisor is not importable ({exc})")
        notes.append(
            f"crash-to-restarted NOT MEASURED: the supervisor is not importable ({exc})"
        )
    else:
        section("crash", _figures_crash)
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
        "idle memory: each side in a fresh subprocess (python -m bench.kernel_memory); "
        "KB = 1024 bytes",
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
            "quick": params.quick,
        },
        machine=machine_info(),
        load_average={"before": load_before, "after": load_average()},
        section_seconds=sections,
        figures=figures,
        notes=notes,
    )


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--actors",
        type=int,
        metavar="N",
        help=f"actors for spawn/stop and idle memory (default {DEFAULT_ACTORS:,}; "
        f"{QUICK_ACTORS:,} with --quick)",
    )


SCENARIO: Final = Scenario(
    name="kernel",
    help="actor kernel: ask, fan-in, spawn/stop, idle memory, crash-to-restarted, beside trio",
    add_arguments=_add_arguments,
    run=run,
)
