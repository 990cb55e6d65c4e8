"""The peers workloads on asyncio: the same work as the trio baselines.

Each function is one sample and runs under its own ``asyncio.run`` (the
default event loop of the platform, no uvloop), so no state carries over
between samples, as each trio sample has its own ``trio.run``. The
asyncio idioms chosen are the ones an asyncio programmer would write:

- ping-pong: a client ``await``s ``put`` on a request ``asyncio.Queue`` and
  ``get`` on a reply queue (both ``maxsize=1``); a server task does the
  reverse. This is :func:`bench.kernel.ask_trio` with queues for channels.
- fan-in: 100 sender tasks ``await queue.put(i)`` on one
  ``asyncio.Queue(maxsize=capacity)``; one receiver ``await queue.get()``
  and counts. ``put`` and ``get`` do not yield while there is room (or an
  item), which is the semantics of ``ref.send`` and of the trio
  ``send_nowait``-first baseline, so those are the like-for-like peers.
- spawn/stop: N ``create_task`` tasks, each with its own queue (``maxsize``
  = the default mailbox capacity), counted ready when it runs and parks in
  ``get``; then a graceful, awaited stop per task: put a stop sentinel on
  its queue and await the task.
- crash-to-restarted: a supervising coroutine runs the child as a task,
  awaits it, catches the child's exception and starts the next one; the
  child records its start, waits on a queue and raises on a message.

All timed sections use :func:`bench.kernel.gc_settled`, as the other sides.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, Final

from .kernel import CAPACITY, gc_settled
from .restart_clock import Crash, RestartClock

__all__ = [
    "crash_asyncio",
    "fan_in_asyncio",
    "ping_pong_asyncio",
    "spawn_stop_asyncio",
]

CRASH_TIMEOUT: Final = 60.0  # seconds the whole crash loop may take before it is a hang
_STOP: Final = object()  # the graceful-stop sentinel of the spawn/stop workload


async def ping_pong_asyncio(n: int) -> float:
    """µs per ping-pong round trip over two ``asyncio.Queue(maxsize=1)``."""
    requests: asyncio.Queue[int] = asyncio.Queue(maxsize=1)
    replies: asyncio.Queue[int] = asyncio.Queue(maxsize=1)

    async def server() -> None:
        while True:
            await replies.put(await requests.get())

    task = asyncio.create_task(server())
    for i in range(min(n, 1_000)):
        await requests.put(i)
        await replies.get()
    with gc_settled():
        t0 = time.perf_counter()
        for i in range(n):
            await requests.put(i)
            await replies.get()
        t1 = time.perf_counter()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return (t1 - t0) / n * 1e6


async def fan_in_asyncio(senders: int, per_sender: int, capacity: int) -> float:
    """Messages/s from ``senders`` tasks ``await put``-ing on one bounded queue."""
    total = senders * per_sender
    done = asyncio.Event()
    queue: asyncio.Queue[int] = asyncio.Queue(maxsize=capacity)

    async def sender() -> None:
        for i in range(per_sender):
            await queue.put(i)

    async def receiver() -> None:
        count = 0
        while True:
            await queue.get()
            count += 1
            if count == total:
                done.set()

    receiving = asyncio.create_task(receiver())
    with gc_settled():
        t0 = time.perf_counter()
        sending = [asyncio.create_task(sender()) for _ in range(senders)]
        await done.wait()
        t1 = time.perf_counter()
    await asyncio.gather(*sending)
    receiving.cancel()
    await asyncio.gather(receiving, return_exceptions=True)
    return total / (t1 - t0)


class _Readiness:
    """Counts tasks that reached ``get``; fires when all have."""

    __slots__ = ("all_ready", "n", "ready")

    def __init__(self, n: int) -> None:
        self.n = n
        self.ready = 0
        self.all_ready = asyncio.Event()

    def one_ready(self) -> None:
        self.ready += 1
        if self.ready == self.n:
            self.all_ready.set()


async def _parked_task(queue: asyncio.Queue[Any], readiness: _Readiness) -> None:
    readiness.one_ready()
    while await queue.get() is not _STOP:
        pass


async def spawn_stop_asyncio(n: int) -> tuple[float, float]:
    """(tasks/s until all parked, seconds to stop all gracefully) for ``n`` tasks."""
    readiness = _Readiness(n)
    queues: list[asyncio.Queue[Any]] = []
    tasks: list[asyncio.Task[None]] = []
    with gc_settled():
        t0 = time.perf_counter()
        for _ in range(n):
            queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=CAPACITY)
            queues.append(queue)
            tasks.append(asyncio.create_task(_parked_task(queue, readiness)))
        await readiness.all_ready.wait()
        t1 = time.perf_counter()
        for queue, task in zip(queues, tasks, strict=True):
            queue.put_nowait(_STOP)
            await task
        t2 = time.perf_counter()
    return n / (t1 - t0), t2 - t1


async def crash_asyncio(n: int) -> list[float]:
    """Crash-to-restarted latencies (µs) of an asyncio supervising coroutine.

    After ``min(n, 100)`` unrecorded crashes, ``n`` crashes are driven one at
    a time: put a message on the child's queue, wait for the restart.
    """
    clock = RestartClock(asyncio.Event)
    inbox: asyncio.Queue[str] = asyncio.Queue()

    async def child() -> None:
        clock.on_start()
        while True:
            await inbox.get()
            clock.crash()

    async def supervisor() -> None:
        while True:
            with contextlib.suppress(Crash):
                await asyncio.create_task(child())

    async def crash_once() -> None:
        clock.restarted = asyncio.Event()
        inbox.put_nowait("crash")
        await clock.restarted.wait()

    supervising = asyncio.create_task(supervisor())
    async with asyncio.timeout(CRASH_TIMEOUT):
        for _ in range(min(n, 100)):
            await crash_once()
        with gc_settled():
            for _ in range(n):
                await crash_once()
    supervising.cancel()
    await asyncio.gather(supervising, return_exceptions=True)
    return clock.latencies(n)
