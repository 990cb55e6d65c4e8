"""What the bare-client baselines share (:mod:`bench.ws_bare`, :mod:`bench.http_bare`).

Kept free of the bench's report stack: a baseline runs in a fresh process
holding as little as it can, so that its CPU and memory are the client's.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Generic, TypeVar

import trio

__all__ = [
    "TaskSteps",
    "Workers",
    "add_load_arguments",
    "cpu_seconds",
    "print_lines",
    "rates",
    "step_answers",
]


def cpu_seconds() -> float:
    """User + system time of this process, as :func:`bench.rig.cpu_seconds` measures the node."""
    return time.process_time()


class TaskSteps(trio.abc.Instrument):
    """Counts the trio task steps and task spawns of a load step (``--task-steps``).

    A count, not a time: per delivered message it does not move with the
    machine's load, so two versions compare in one run each. The counting
    itself costs a call per step, so CPU figures are read from runs without it.
    """

    def __init__(self) -> None:
        self.steps = 0
        self.spawns = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps += 1

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.spawns += 1

    def __enter__(self) -> TaskSteps:
        trio.lowlevel.add_instrument(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        trio.lowlevel.remove_instrument(self)

    def per_message(self, delivered: int) -> dict[str, float | None]:
        """Steps and spawns per delivered message (``None`` when none was delivered)."""
        return {
            "task_steps_per_message": self.steps / delivered if delivered else None,
            "task_spawns_per_message": self.spawns / delivered if delivered else None,
        }


T = TypeVar("T")


class Workers(Generic[T]):
    """Due items taken off one queue by worker tasks, one at a time each.

    The harness of every load that awaits each send (the channels bench's
    callers of ``Node.send``, :mod:`bench.http_bare`, ``bench.ws_bare send
    --await-each``): the pacer appends what is due and calls :meth:`wake`;
    a worker awaits ``handle(item)``, then takes the next, and parks while
    the queue is empty. A worker is started only when every one is busy: no
    task per message.
    """

    def __init__(self, handle: Callable[[T], Awaitable[None]]) -> None:
        self.handle = handle
        self.due: collections.deque[T] = collections.deque()
        self.idle = trio.lowlevel.ParkingLot()
        self.workers = 0  # started so far

    async def work(self) -> None:
        """Handle due items one at a time; park while there are none."""
        due = self.due
        handle = self.handle
        while True:
            while not due:
                await self.idle.park()
            await handle(due.popleft())

    def wake(self, nursery: trio.Nursery, cap: float = math.inf) -> None:
        """Wake a parked worker per due item; start more (up to ``cap`` in all)
        only when every one is busy."""
        woken = len(self.idle.unpark(count=len(self.due)))
        missing = len(self.due) - woken
        if missing > 0 and self.workers < cap:  # every parked one is woken: all are busy
            for _ in range(int(min(missing, cap - self.workers))):
                nursery.start_soon(self.work)
                self.workers += 1


def rates(text: str) -> list[float]:
    """``--rates``: msgs/s, comma-separated."""
    return [float(r) for r in text.split(",") if r.strip()]


def add_load_arguments(send: argparse.ArgumentParser) -> None:
    """The load options of both ``send`` commands: ``--rates``, ``--duration``, ``--text-size``."""
    send.add_argument("--rates", type=rates, required=True, help="msgs/s, comma-separated")
    send.add_argument("--duration", type=float, required=True, help="seconds per rate")
    send.add_argument("--text-size", type=int, default=40, help="characters per message")


def print_lines(results: Iterable[dict[str, Any]]) -> None:
    """One JSON line per result, as the benches read them."""
    for result in results:
        print(json.dumps(result), flush=True)


def step_answers(
    latencies: list[float], cpu: float, last_answer: float, start: float
) -> dict[str, Any]:
    """A load step's acked count, CPU per acked message, latency percentiles and length."""
    ordered = sorted(latencies)
    acked = len(ordered)
    return {
        "acked": acked,
        "cpu_seconds": cpu,
        "cpu_per_message": cpu / acked if acked else None,
        "p50": _percentile(ordered, 50),
        "p90": _percentile(ordered, 90),
        "p99": _percentile(ordered, 99),
        "elapsed": (last_answer or trio.current_time()) - start,
    }


def _percentile(ordered: list[float], q: float) -> float | None:
    # Nearest rank, as bench.report.percentile (not imported: it loads the report stack).
    if not ordered:
        return None
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]
