"""Crash-to-restarted latency: a supervised actor beside a trio supervisor loop.

Ours: a plain child under ``open_supervisor`` (one-for-one, permanent,
intensity 10**9 per 1 s). The child records ``perf_counter()`` just before
raising in ``receive``; its ``on_start`` records the time it runs (the first
start is skipped); latency = restart time - crash time. Crashes are driven
one at a time: ``ref.tell("crash")``, then wait for the restart.

Baseline: a trio "supervisor" task runs the child coroutine in a loop, each
incarnation in a fresh nursery via ``start_soon``; the child raises on a
message from a memory channel, the supervisor catches it (``except*``) and
starts the next child, whose first statement records the time. The same
recorder, driver and GC treatment serve both sides.

Each crash is logged by the kernel with its traceback; the caller silences
the ``switchboard`` loggers (:func:`silenced_switchboard_logs`) for the
workload, since formatting 1000 tracebacks would dominate the figure.
"""

from __future__ import annotations

import functools
import logging
import math
import statistics
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final

import trio

from actors import Actor, open_actor_system

from .kernel import gc_settled
from .restart_clock import Crash, RestartClock

__all__ = [
    "CrashyActor",
    "crash_actor",
    "crash_trio",
    "percentiles",
    "silenced_switchboard_logs",
]

CRASH_TIMEOUT: Final = 60.0  # seconds the whole crash loop may take before it is a hang


class CrashyActor(Actor):
    """A plain child that crashes on every message."""

    def __init__(self, recorder: RestartClock[trio.Event]) -> None:
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
    tell: Callable[[], None], recorder: RestartClock[trio.Event], n: int, warmup: int
) -> list[float]:
    with trio.fail_after(CRASH_TIMEOUT):
        for _ in range(warmup):
            recorder.restarted = trio.Event()
            tell()
            await recorder.restarted.wait()
        with gc_settled():
            for _ in range(n):
                recorder.restarted = trio.Event()
                tell()
                await recorder.restarted.wait()
    return recorder.latencies(n)


async def crash_actor(n: int) -> list[float]:
    """Crash-to-restarted latencies (µs) of a supervised plain actor."""
    from supervisors import ChildSpec, Strategy, open_supervisor

    recorder = RestartClock(trio.Event)
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
        assert ref is not None, "the supervisor did not start its child"
        return await _drive_crashes(
            functools.partial(ref.tell, "crash"), recorder, n, warmup=min(n, 100)
        )


async def crash_trio(n: int) -> list[float]:
    """Crash-to-restarted latencies (µs) of a trio supervisor loop."""
    recorder = RestartClock(trio.Event)
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
            except* Crash:
                pass

    async with trio.open_nursery() as nursery:
        nursery.start_soon(supervisor)
        latencies = await _drive_crashes(
            functools.partial(send.send_nowait, "crash"), recorder, n, warmup=min(n, 100)
        )
        nursery.cancel_scope.cancel()
    return latencies


def percentiles(latencies: list[float]) -> tuple[float, float, float]:
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return statistics.median(latencies), cuts[89], cuts[98]
