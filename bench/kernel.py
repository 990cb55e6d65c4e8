"""Kernel workloads: the actor kernel beside the same work on plain trio.

This module holds the ask, fan-in and spawn/stop workloads and launches the
idle-memory one (:mod:`bench.kernel_memory`); the crash workload is in
:mod:`bench.kernel_crash` and the scenario that runs them all, with sizes
and targets, in :mod:`bench.kernel_scenario`. What follows describes every
figure of ``python -m bench kernel``.

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
    baseline). Target: the plain ask takes ≤ 0.5x the ping-pong time.

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
    Target: ≥ 7x the ``await send`` rate.

spawn rate (actors/s) and stop time (ms for all N)
    ``await system.spawn(Idle)`` N times (a plain actor is ready when spawn
    returns), versus N ``nursery.start_soon`` tasks, each given its own memory
    channel (capacity = the default mailbox capacity) and counted ready when
    it runs and parks in ``receive``; the clock stops when the last one is
    ready. Then stop all: ``await ref.stop()`` on every ref in turn (each a
    graceful stop through the dispatcher, awaited), versus cancelling the
    nursery and waiting for all N tasks to end, or, the fairer baseline,
    closing each task's channel in turn and awaiting that task's "done"
    message: a graceful, awaited stop per task, like ours. A trio run spawns
    once, so the two stop baselines take turns across repetitions (cancel in
    the 1st, 3rd, 5th; graceful in the 2nd, 4th; both with one repetition):
    spawning 100k trio tasks takes seconds. The spawn baseline uses every
    trio run.
    Target: ≥ 200k spawns/s (absolute).

idle memory (bytes per actor; measured by :mod:`bench.kernel_memory`)
    RSS delta (psutil, after ``gc.collect()``) from before spawning N plain
    actors to after each has handled one message and gone idle, divided by
    N; versus N trio tasks each parked on its own memory channel after
    receiving one message. Each side runs in a fresh subprocess
    (``python -m bench.kernel_memory``) so one side's heap does not distort
    the other's. All N messages are queued before any is handled, so the
    RSS keeps the allocator's high-water mark of N one-message queues: an
    upper bound of the steady-state cost (``--trace`` there shows what stays
    allocated). Target: ≤ 2.0 KB = 2048 bytes per idle actor.

crash-to-restarted latency (µs; workload in :mod:`bench.kernel_crash`)
    A supervised plain child (``open_supervisor``, one-for-one, permanent,
    intensity 10⁹ per 1 s) records ``perf_counter()`` just before raising in
    ``receive``; its ``on_start`` records the time it runs (the first start
    skipped); latency = restart time - crash time, over 1000 crashes (100
    with ``--quick``) after 100 unrecorded ones, driven one at a time by
    ``ref.tell``. Baseline: a trio "supervisor" task runs the child in a
    loop, each incarnation in a fresh nursery via ``start_soon``; the child
    raises on a message from a memory channel, the supervisor catches it
    (``except*``) and starts the next child, whose first statement records
    the time. Median, p90, p99 per repetition; medians of those over the
    repetitions. The ``switchboard`` loggers are silenced during this
    workload (each crash is logged with its traceback, and formatting 1000
    tracebacks would dominate).
    Target: median ≤ 10 µs (absolute).

supervisor start / stop scaling (µs per child; workload in :mod:`bench.kernel_supervisor`)
    One supervisor started and stopped with 1,000, 10,000 and 100,000 plain
    children; the baseline is the per-child cost at 1,000, not trio, so the
    ratio says how the cost grows with the tree (quadratic work: about 100).
    Target: ratio ≤ 4.
"""

from __future__ import annotations

import gc
import json
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final, Literal

import trio

from actors import Actor, MailboxConfig, Overflow, open_actor_system

__all__ = [
    "CAPACITY",
    "FAN_IN_CAPACITY",
    "AsyncEcho",
    "Echo",
    "ask_actor",
    "ask_trio",
    "fan_in_actor",
    "fan_in_trio",
    "gc_settled",
    "idle_memory",
    "spawn_stop_actor",
    "spawn_stop_trio",
]

CAPACITY: Final = MailboxConfig().capacity  # messages; the default mailbox bound
FAN_IN_CAPACITY: Final = 1_000  # messages; mailbox / channel bound in the fan-in


@contextmanager
def gc_settled() -> Iterator[None]:
    """The same GC treatment for both sides of every timed section."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


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
        with gc_settled():
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
        with gc_settled():
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
        with gc_settled():
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
        with gc_settled():
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
        with gc_settled():
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


async def _parked_task(
    recv: trio.MemoryReceiveChannel[Any],
    readiness: _Readiness,
    done: trio.MemorySendChannel[None],
) -> None:
    readiness.one_ready()
    async for _ in recv:
        pass
    done.send_nowait(None)  # reached on a graceful stop (channel closed), not on cancel


async def spawn_stop_trio(n: int, stop: Literal["cancel", "graceful"]) -> tuple[float, float]:
    """(tasks/s until all parked, seconds to stop all) for ``n`` trio tasks.

    Args:
        stop: ``"cancel"`` cancels the nursery and waits for every task to
            end; ``"graceful"`` closes each task's channel in turn and awaits
            that task's "done" message.
    """
    readiness = _Readiness(n)
    done_send, done_recv = trio.open_memory_channel[None](math.inf)
    sends = []
    with gc_settled():
        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(n):
                send, recv = trio.open_memory_channel[Any](CAPACITY)
                sends.append(send)
                nursery.start_soon(_parked_task, recv, readiness, done_send)
            await readiness.all_ready.wait()
            t1 = time.perf_counter()
            if stop == "cancel":
                nursery.cancel_scope.cancel()
            else:
                for send in sends:
                    send.close()
                    await done_recv.receive()
        t2 = time.perf_counter()
    return n / (t1 - t0), t2 - t1


# ============================================================ idle memory


def idle_memory(side: str, n: int) -> float:
    """Bytes per idle actor (or parked task), measured in a fresh subprocess."""
    cmd = [sys.executable, "-m", "bench.kernel_memory", "--side", side, "--actors", str(n)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed with exit code {out.returncode}:\n{out.stderr}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return float(result["bytes_per_actor"])
