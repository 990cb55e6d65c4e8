"""Supervisor start and stop scaling: one supervisor with N plain children.

The kernel's complexity claim, measured as a ratio within one run: the time
per child to start (and to stop) a supervisor of N children, at the largest
size beside the same at :data:`SCALING_BASE` children. Linear work keeps the
ratio near 1; quadratic work shows as about N / SCALING_BASE (100 at 100k).
It lived in the test suite as an assertion on ``perf_counter`` readings,
which failed at random on a loaded machine; the tests keep the functional
part (the counts at 1k, 10k and 100k children).

supervisor start / stop scaling (µs per child; ratio = largest / 1k)
    ``open_supervisor(system, specs, intensity=10)`` with N one-for-one
    permanent ``ChildSpec(start=Idle)`` children: from entering the block
    to the block's body (every child started, in order), and from leaving
    the body to the block's end (every child stopped, in reverse order).
    Each sample is a fresh ``trio.run`` and actor system, under the same
    ``gc.collect(); gc.freeze()`` as every kernel figure. The baseline is
    the same workload at :data:`SCALING_BASE` children, so the figure's
    ratio is the growth of the per-child cost. Target: ratio ≤ 4.
"""

from __future__ import annotations

import time
from typing import Any, Final

from actors import Actor, open_actor_system
from supervisors import ChildSpec, open_supervisor

from .kernel import gc_settled

__all__ = ["SCALING_BASE", "SCALING_TARGET", "supervisor_start_stop"]

SCALING_BASE: Final = 1_000  # children: the size every larger one is compared with
SCALING_TARGET: Final = 4.0  # per-child cost at the largest size / at SCALING_BASE


class Idle(Actor):
    """A plain child that answers what it gets."""

    def receive(self, msg: Any) -> Any:
        return msg


async def supervisor_start_stop(n: int) -> tuple[float, float]:
    """(µs per child to start, µs per child to stop) one supervisor of ``n`` children.

    Raises:
        RuntimeError: the supervisor did not run ``n`` children, or left
            actors behind (the figure would not measure what it says).
    """
    specs = [ChildSpec(id=f"c{i}", start=Idle) for i in range(n)]
    async with open_actor_system() as system:
        with gc_settled():
            t0 = time.perf_counter()
            async with open_supervisor(system, specs, intensity=10) as sup:
                t1 = time.perf_counter()
                counts = await sup.count_children()
                t2 = time.perf_counter()
            t3 = time.perf_counter()
        if counts.active != n or system.statistics().actors != 0:
            raise RuntimeError(
                f"supervisor of {n} children: {counts.active} active, "
                f"{system.statistics().actors} actors left after the stop"
            )
    return (t1 - t0) / n * 1e6, (t3 - t2) / n * 1e6
