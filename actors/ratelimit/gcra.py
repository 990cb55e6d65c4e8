"""The GCRA: one token bucket, its exact schedule, and its frozen state."""

from __future__ import annotations

import math
from typing import Final

import attrs

from .._clock import check_time
from ._grid import (
    _NS_PER_SECOND,
    _TOLERANCE_NS,
    ARRIVAL_TOLERANCE,
    CLOCK_ALLOWANCE,
    _later,
    _time_of,
    _to_ns,
    _wait,
)
from .curve import ArrivalCurve

MAX_TOLERANCE: Final = 1.0  # seconds; a pacer's lateness, not a second burst


@attrs.frozen(kw_only=True)
class GCRAState:
    """One bucket's state.

    Attributes:
        tat_ns: the theoretical arrival time in whole nanoseconds on the
            caller's clock (rounded up on export, so a restored bucket is at
            most 1 ns stricter), or ``None`` for a fresh bucket.
        paused_until: no admission before this time (seconds), or ``None``.
    """

    tat_ns: int | None = None
    paused_until: float | None = None


class _Bucket:
    __slots__ = ("paused_until", "tat")

    def __init__(self, tat: int | None = None, paused_until: float | None = None) -> None:
        self.tat = tat  # ticks of 1/p ns, or None when fresh
        self.paused_until = paused_until


class _Schedule:
    """Exact GCRA arithmetic for one (rate, burst); buckets hold the state."""

    __slots__ = ("burst", "inc", "limit", "p", "rate", "tolerance", "unlimited")

    def __init__(self, rate: float, burst: int, tolerance: float = ARRIVAL_TOLERANCE) -> None:
        rate = float(rate)
        if not (rate > 0.0 and (math.isfinite(rate) or rate == math.inf)):
            raise ValueError(
                f"rate must be a number of units per second > 0 (math.inf: no limit), got {rate!r}"
            )
        if not isinstance(burst, int) or burst < 1:
            raise ValueError(f"burst must be an integer >= 1, got {burst!r}")
        tolerance = float(tolerance)
        if not (math.isfinite(tolerance) and ARRIVAL_TOLERANCE <= tolerance <= MAX_TOLERANCE):
            raise ValueError(
                f"tolerance must be seconds between {ARRIVAL_TOLERANCE!r} and "
                f"{MAX_TOLERANCE!r}, got {tolerance!r}"
            )
        # No limit (limits off): admit whatever no pause holds, and keep no
        # schedule, so a bucket stays fresh and a keyed limiter makes none.
        self.unlimited = rate == math.inf
        p, q = (1, 0) if self.unlimited else rate.as_integer_ratio()
        self.rate = rate
        self.burst = burst
        self.tolerance = tolerance
        self.p = p  # ticks per nanosecond
        self.inc = _NS_PER_SECOND * q  # ticks per unit of cost: the emission interval
        # Floored onto the grid, so the limiter never forgives more than the curve declares.
        tolerance_ns = max(_TOLERANCE_NS, math.floor(tolerance * _NS_PER_SECOND))
        self.limit = burst * self.inc + tolerance_ns * p  # most TAT may lead now, in ticks

    @property
    def curve(self) -> ArrivalCurve:
        return ArrivalCurve(
            rate=self.rate, burst=self.burst, tolerance=self.tolerance + CLOCK_ALLOWANCE
        )

    def check_cost(self, cost: int) -> None:
        if not (isinstance(cost, int) and 1 <= cost <= self.burst):
            raise ValueError(
                f"cost must be an integer between 1 and burst ({self.burst}), got {cost!r}; "
                "a cost above burst could never be admitted"
            )

    def admit(self, bucket: _Bucket, now: float, ns: int, cost: int, *, commit: bool) -> bool:
        if bucket.paused_until is not None and now < bucket.paused_until:
            return False
        if self.unlimited:
            return True
        now_ticks = ns * self.p
        tat = bucket.tat
        start = now_ticks if tat is None or tat < now_ticks else tat
        new_tat = start + cost * self.inc
        if new_tat - now_ticks > self.limit:
            return False
        if commit:
            bucket.tat = new_tat
        return True

    def deadline(self, bucket: _Bucket, cost: int) -> float:
        earliest = -math.inf
        if bucket.tat is not None:
            need = bucket.tat + cost * self.inc - self.limit  # admit iff now_ticks >= need
            earliest = _time_of(-(-need // self.p))
        return _later(bucket.paused_until, earliest)

    def full_at(self, bucket: _Bucket) -> float:
        earliest = -math.inf if bucket.tat is None else _time_of(-(-bucket.tat // self.p))
        return _later(bucket.paused_until, earliest)

    def is_full(self, bucket: _Bucket, now: float, ns: int) -> bool:
        return (bucket.tat is None or bucket.tat <= ns * self.p) and (
            bucket.paused_until is None or now >= bucket.paused_until
        )

    def export(self, bucket: _Bucket) -> GCRAState:
        tat_ns = None if bucket.tat is None else -(-bucket.tat // self.p)
        return GCRAState(tat_ns=tat_ns, paused_until=bucket.paused_until)

    def restore(self, state: GCRAState) -> _Bucket:
        if state.paused_until is not None:
            check_time(state.paused_until, "state.paused_until", bounded=True)
        # A schedule saved under a limit binds nothing once there is none.
        tat = None if state.tat_ns is None or self.unlimited else state.tat_ns * self.p
        return _Bucket(tat, state.paused_until)

    def describe(self, bucket: _Bucket) -> str:
        tat = None if bucket.tat is None else bucket.tat / self.p / _NS_PER_SECOND
        text = f"rate={self.rate!r}/s burst={self.burst} tat={tat!r}"
        if self.tolerance != ARRIVAL_TOLERANCE:
            text += f" tolerance={self.tolerance!r}"
        if bucket.paused_until is not None:
            text += f" paused_until={bucket.paused_until!r}"
        return text


class GCRA:
    """A token bucket computed as the Generic Cell Rate Algorithm.

    A fresh bucket admits ``burst`` units at once and then ``rate`` units per
    second; in any window it stays within :attr:`arrival_curve`.

    ``tolerance`` is how early an arrival may come before its turn (the
    GCRA's tau beyond the burst): a pacer (``burst=1``) that wakes a little
    late for each turn would otherwise lose that lateness every time and
    send below ``rate``; with a tolerance larger than its lateness it keeps
    the rate, and no two admissions are ever closer than ``1 / rate -
    tolerance``. The curve includes it: ``burst + floor(rate * (w +
    tolerance))``, plus the clock allowance.

    Args:
        rate: units per second (> 0; ``math.inf``: no limit, only pauses apply).
        burst: units admissible at once (>= 1).
        tolerance: seconds an arrival may be early (at least
            :data:`ARRIVAL_TOLERANCE`, the default; at most :data:`MAX_TOLERANCE`).
        state: a state exported by :attr:`state`, to continue from.

    Raises:
        ValueError: if ``rate``, ``burst`` or ``tolerance`` is out of range.
    """

    __slots__ = ("_bucket", "_schedule")

    def __init__(
        self,
        *,
        rate: float,
        burst: int,
        tolerance: float = ARRIVAL_TOLERANCE,
        state: GCRAState | None = None,
    ) -> None:
        self._schedule = _Schedule(rate, burst, tolerance)
        self._bucket = self._schedule.restore(GCRAState() if state is None else state)

    @property
    def rate(self) -> float:
        """Units per second."""
        return self._schedule.rate

    @property
    def burst(self) -> int:
        """Units admissible at once."""
        return self._schedule.burst

    @property
    def tolerance(self) -> float:
        """Seconds an arrival may be early."""
        return self._schedule.tolerance

    @property
    def arrival_curve(self) -> ArrivalCurve:
        """The curve this limiter never exceeds, over any window."""
        return self._schedule.curve

    @property
    def state(self) -> GCRAState:
        """A frozen snapshot to hand to a restarted owner's ``GCRA(state=...)``."""
        return self._schedule.export(self._bucket)

    def try_acquire(self, now: float, cost: int = 1) -> bool:
        """Admit and charge ``cost`` units now, if the curve allows it.

        Args:
            now: the current time, in seconds.
            cost: units to charge (1 to ``burst``).

        Returns:
            ``True`` if admitted (and charged), ``False`` if not (nothing changes).

        Raises:
            ValueError: if ``now`` or ``cost`` is out of range.
        """
        check_time(now, bounded=True)
        self._schedule.check_cost(cost)
        return self._schedule.admit(self._bucket, now, _to_ns(now), cost, commit=True)

    def next_deadline(self, cost: int = 1) -> float:
        """Return the earliest time at which ``try_acquire(t, cost)`` succeeds.

        Exact: it succeeds at every ``t`` at or after the result and fails at
        every ``t`` before it, as long as nothing else is admitted meanwhile.

        Args:
            cost: units to charge (1 to ``burst``).

        Returns:
            A clock time in seconds, possibly in the past; ``-math.inf`` for a
            fresh bucket.

        Raises:
            ValueError: if ``cost`` is out of range.
        """
        self._schedule.check_cost(cost)
        return self._schedule.deadline(self._bucket, cost)

    def delay(self, now: float, cost: int = 1) -> float:
        """Return how long to wait before ``cost`` units would be admitted.

        Args:
            now: the current time, in seconds.
            cost: units to charge (1 to ``burst``).

        Returns:
            Seconds to sleep; ``0.0`` if admissible now. ``now + delay`` is
            itself admissible.

        Raises:
            ValueError: if ``now`` or ``cost`` is out of range.
        """
        check_time(now, bounded=True)
        return _wait(now, self.next_deadline(cost))

    def pause_until(self, t: float) -> None:
        """Admit nothing before ``t`` (a server-imposed wait); pauses only extend.

        The bucket keeps refilling during the pause, within the same curve.

        Args:
            t: the time admissions may resume, in seconds.

        Raises:
            ValueError: if ``t`` is not a valid clock reading.
        """
        check_time(t, "t", bounded=True)
        self._bucket.paused_until = _later(self._bucket.paused_until, t)

    def _with_state(self, state: GCRAState) -> GCRA:
        return GCRA(rate=self.rate, burst=self.burst, tolerance=self.tolerance, state=state)

    def _check(self, now: float, ns: int, cost: int, key: object) -> bool:
        return self._schedule.admit(self._bucket, now, ns, cost, commit=False)

    def _take(self, now: float, ns: int, cost: int, key: object) -> None:
        admitted = self._schedule.admit(self._bucket, now, ns, cost, commit=True)
        assert admitted, "checked just before, and nothing ran in between"

    def _deadline(self, cost: int, key: object) -> float:
        return self._schedule.deadline(self._bucket, cost)

    def _untouched(self) -> bool:
        # Only asked of an unlimited one: it keeps no schedule, so a pause is all it has.
        return self._bucket.paused_until is None

    def _admits_freely(self, now: float, key: object) -> bool:
        # Only asked of an unlimited one (CompositeLimiter._admits_freely): a pause is all it has.
        paused = self._bucket.paused_until
        return paused is None or now >= paused

    def __repr__(self) -> str:
        return f"<GCRA {self._schedule.describe(self._bucket)}>"
