"""Helpers shared by the tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import trio

CEILING: Final = 60.0  # virtual seconds; only a hang gets near it


async def yield_until(condition: Callable[[], bool], *, steps: int = 1_000) -> None:
    """Yield to other tasks, without letting time pass, until ``condition()``.

    Bounded: a busy loop of ``sleep(0)`` never lets the autojump clock reach a
    ``fail_after`` deadline, so an unbounded one would hang instead of failing.
    """
    for _ in range(steps):
        if condition():
            return
        await trio.lowlevel.checkpoint()
    raise AssertionError(f"still not true after {steps} scheduling rounds")
