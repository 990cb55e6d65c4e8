"""What the kernel's pure state machines accept as a clock reading.

The backoff, the circuit breaker and the rate limiters take time as a
``now`` argument and never read a clock; they refuse a reading that is not
finite, at the call that passes it, so a NaN never silently poisons their
state. The rate limiters count on an integer nanosecond grid that is exact
only within ±2**32 s, so they ask for that bound too (``bounded``).

The send path does read the clock, several times a send: it keeps the
run's clock reader (:func:`clock_reader`) instead of calling
``trio.current_time``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final

import trio

__all__ = ["CLOCK_LIMIT", "check_time", "clock_reader"]

CLOCK_LIMIT: Final = 2.0**32  # seconds; bounded readings beyond this are refused (136 years)


def check_time(now: float, name: str = "now", *, bounded: bool = False) -> None:
    """Refuse a clock reading that is not finite (or, ``bounded``, not within ±2**32 s).

    Args:
        now: the reading, in seconds.
        name: what to call it in the error message.
        bounded: also require ``|now| < 2**32``.

    Raises:
        ValueError: the reading is refused.
    """
    if bounded:
        if not (math.isfinite(now) and -CLOCK_LIMIT < now < CLOCK_LIMIT):
            raise ValueError(
                f"{name} must be a finite clock reading in seconds with |{name}| < 2**32, "
                f"got {now!r}"
            )
    elif not math.isfinite(now):
        raise ValueError(f"{name} must be a finite clock reading in seconds, got {now!r}")


def clock_reader() -> Callable[[], float]:
    """What reads the running trio program's clock: ``trio.current_time``
    without its two frames, for code that reads the clock on every send.

    An object made inside a trio run keeps it for that run (the clock is
    the run's; a test's ``MockClock`` too). Outside a run this is
    ``trio.current_time`` itself, which reads whichever run calls it.
    """
    try:
        return trio.lowlevel.current_clock().current_time
    except RuntimeError:
        return trio.current_time
