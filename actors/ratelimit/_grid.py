"""The nanosecond time grid: float/grid conversion, waits.

Private helpers shared by the limiters (see the design notes in the package
``__init__``); only ``ARRIVAL_TOLERANCE`` and ``CLOCK_ALLOWANCE`` are public.
"""

from __future__ import annotations

import math
from typing import Final

_NS_PER_SECOND: Final = 1_000_000_000  # nanoseconds per second
_TOLERANCE_NS: Final = 1_000  # nanoseconds an arrival may be early
ARRIVAL_TOLERANCE: Final = _TOLERANCE_NS / _NS_PER_SECOND  # seconds (1 us)
CLOCK_ALLOWANCE: Final = 1e-6  # seconds; bounds float-to-grid rounding for |now| < 2**32 s


def _to_ns(now: float) -> int:
    # Flooring is monotone, so the grid keeps the order of timestamps (equal
    # readings stay equal).
    return math.floor(now * 1e9)


def _time_of(ns: int) -> float:
    """The smallest float ``t`` with ``_to_ns(t) >= ns``."""
    t = ns / 1e9  # within an ulp or two of the answer; walk to it
    if _to_ns(t) >= ns:
        below = math.nextafter(t, -math.inf)
        while _to_ns(below) >= ns:
            t, below = below, math.nextafter(below, -math.inf)
        return t
    while _to_ns(t) < ns:
        t = math.nextafter(t, math.inf)
    return t


def _wait(now: float, deadline: float) -> float:
    """The smallest-ish ``d >= 0`` with ``now + d >= deadline`` in floats."""
    if now >= deadline:
        return 0.0
    d = deadline - now
    while now + d < deadline:
        d = math.nextafter(d, math.inf)
    return d


def _later(a: float | None, b: float) -> float:
    return b if a is None else max(a, b)
