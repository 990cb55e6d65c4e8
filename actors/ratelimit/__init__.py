"""Rate limiters: GCRA, one GCRA per key, and composites that all must admit.

:class:`GCRA` is a token bucket (``rate`` per second, ``burst`` at once)
computed as the Generic Cell Rate Algorithm. :class:`KeyedLimiter` keeps one
such bucket per key (peer, chat) in bounded memory. :class:`CompositeLimiter`
admits only when every part admits, and then charges every part. Each limiter
declares the :class:`ArrivalCurve` it never exceeds, over any window.
Every limiter's whole state is a frozen record (``.state``) that a restarted
actor passes back in (``state=``), so a restart never refills a bucket.
"""

# Design: time enters as ``now`` (seconds, float) and is floored onto a
# nanosecond grid; from there all arithmetic is exact integers. The rate is
# taken as the exact fraction p/q its float denotes and the theoretical
# arrival time (TAT) is kept in ticks of 1/p ns, so the emission interval
# (10**9 * q ticks) is an integer: a saturated limiter never drifts, however
# long it runs. Exactness on the grid is not enough, because float clock
# readings carry their own rounding (about 240 ns near 2**31 s) and a client
# that sends at ``t0 + k / rate`` can land a few hundred ns early. So GCRA
# forgives arrivals up to ARRIVAL_TOLERANCE (1 us) early, the one deliberate
# leniency, and the declared curve includes it plus CLOCK_ALLOWANCE for the
# float-to-grid rounding: max_in_window(w) = burst + floor(rate * (w + 2 us)),
# evaluated exactly. The limiter's own bound (burst + floor(rate * (dN + 1 us))
# on grid windows dN) sits at least 0.25 us inside that for every accepted
# clock reading (|now| < 2**32 s), so boundary cases err on the side of not
# admitting. Deadlines go back to floats as the smallest float that maps to
# the admitting grid point, so ``try_acquire(now + delay(now))`` succeeds and
# anything earlier fails: the task loop may sleep exactly what it is told.
# Pauses (server-imposed waits) compare floats directly, with no grid, so
# "nothing before t" is exact.
#
# Eviction: a bucket that is back to full (TAT in the past, no pause pending)
# behaves exactly like a fresh one, so dropping it is invisible; a bucket
# that is still refilling is never dropped, because forgetting it would
# refill it early. When all ``max_keys`` buckets are busy, a new key is
# refused and ``delay`` reports when the first bucket frees up.

from ._grid import ARRIVAL_TOLERANCE, CLOCK_ALLOWANCE
from .composite import CompositeLimiter, CompositeLimiterState
from .curve import ArrivalCurve, CompositeCurve
from .gcra import GCRA, GCRAState
from .keyed import KeyedLimiter, KeyedLimiterState

__all__ = [
    "ARRIVAL_TOLERANCE",
    "CLOCK_ALLOWANCE",
    "GCRA",
    "ArrivalCurve",
    "CompositeCurve",
    "CompositeLimiter",
    "CompositeLimiterState",
    "GCRAState",
    "KeyedLimiter",
    "KeyedLimiterState",
]
