"""What the kernel's pure state machines accept as a clock reading.

The backoff, the circuit breaker and the rate limiters take time as a
``now`` argument and never read a clock; they refuse a reading that is not
finite, at the call that passes it, so a NaN never silently poisons their
state. The rate limiters count on an integer nanosecond grid that is exact
only within ±2**32 s, so they ask for that bound too (``bounded``).
"""

from __future__ import annotations

import math
from typing import Final

__all__ = ["CLOCK_LIMIT", "check_time"]

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
