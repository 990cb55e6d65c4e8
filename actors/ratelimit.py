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

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any, Final, Generic, TypeAlias, TypeVar

import attrs

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

K = TypeVar("K", bound=Hashable)

_NS_PER_SECOND: Final = 1_000_000_000  # nanoseconds per second
_TOLERANCE_NS: Final = 1_000  # nanoseconds an arrival may be early
ARRIVAL_TOLERANCE: Final = _TOLERANCE_NS / _NS_PER_SECOND  # seconds (1 us)
CLOCK_ALLOWANCE: Final = 1e-6  # seconds; bounds float-to-grid rounding for |now| < 2**32 s
_CLOCK_LIMIT: Final = 2.0**32  # seconds; readings beyond this are refused (136 years)


def _check_time(now: float, name: str = "now") -> None:
    if not (math.isfinite(now) and -_CLOCK_LIMIT < now < _CLOCK_LIMIT):
        raise ValueError(
            f"{name} must be a finite clock reading in seconds with |{name}| < 2**32, got {now!r}"
        )


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


@attrs.frozen(kw_only=True)
class ArrivalCurve:
    """A token-bucket arrival curve: the most a limiter admits in any window.

    In every closed window of length ``w`` seconds the limiter admits at most
    ``burst + floor(rate * (w + tolerance))`` units (an admission of cost
    ``c`` counts ``c``).

    Attributes:
        rate: long-run units per second.
        burst: units admissible at a single instant (before tolerance).
        tolerance: seconds of timing slack the bound includes.
    """

    rate: float
    burst: int
    tolerance: float = 0.0

    def max_in_window(self, window: float) -> int:
        """Return the most units admitted in any closed window of this length.

        The result is exact for the float arguments (integer arithmetic, no
        rounding).

        Args:
            window: the window length ``t_j - t_i``, in seconds (>= 0).

        Returns:
            ``burst + floor(rate * (window + tolerance))``.

        Raises:
            ValueError: if ``window`` is negative or not finite.
        """
        if not (math.isfinite(window) and window >= 0.0):
            raise ValueError(f"window must be finite seconds >= 0, got {window!r}")
        r_num, r_den = float(self.rate).as_integer_ratio()
        w_num, w_den = float(window).as_integer_ratio()
        t_num, t_den = float(self.tolerance).as_integer_ratio()
        numerator = r_num * (w_num * t_den + t_num * w_den)
        return self.burst + numerator // (r_den * w_den * t_den)


@attrs.frozen(kw_only=True)
class CompositeCurve:
    """The pointwise minimum of several arrival curves.

    Attributes:
        parts: the curves of the parts, in order.
    """

    parts: tuple[ArrivalCurve, ...]

    @property
    def rate(self) -> float:
        """Long-run units per second: the slowest part's rate."""
        return min(part.rate for part in self.parts)

    @property
    def burst(self) -> int:
        """Units admissible at a single instant: the smallest part's burst."""
        return min(part.burst for part in self.parts)

    def max_in_window(self, window: float) -> int:
        """Return the most units admitted in any closed window of this length.

        Args:
            window: the window length, in seconds (>= 0).

        Returns:
            The minimum of the parts' bounds.

        Raises:
            ValueError: if ``window`` is negative or not finite.
        """
        return min(part.max_in_window(window) for part in self.parts)


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

    __slots__ = ("burst", "inc", "limit", "p", "rate")

    def __init__(self, rate: float, burst: int) -> None:
        rate = float(rate)
        if not (math.isfinite(rate) and rate > 0.0):
            raise ValueError(f"rate must be a finite number of units per second > 0, got {rate!r}")
        if not isinstance(burst, int) or burst < 1:
            raise ValueError(f"burst must be an integer >= 1, got {burst!r}")
        p, q = rate.as_integer_ratio()
        self.rate = rate
        self.burst = burst
        self.p = p  # ticks per nanosecond
        self.inc = _NS_PER_SECOND * q  # ticks per unit of cost: the emission interval
        self.limit = burst * self.inc + _TOLERANCE_NS * p  # most TAT may lead now, in ticks

    @property
    def curve(self) -> ArrivalCurve:
        return ArrivalCurve(
            rate=self.rate, burst=self.burst, tolerance=ARRIVAL_TOLERANCE + CLOCK_ALLOWANCE
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
            _check_time(state.paused_until, "state.paused_until")
        tat = None if state.tat_ns is None else state.tat_ns * self.p
        return _Bucket(tat, state.paused_until)

    def describe(self, bucket: _Bucket) -> str:
        tat = None if bucket.tat is None else bucket.tat / self.p / _NS_PER_SECOND
        text = f"rate={self.rate!r}/s burst={self.burst} tat={tat!r}"
        if bucket.paused_until is not None:
            text += f" paused_until={bucket.paused_until!r}"
        return text


class GCRA:
    """A token bucket computed as the Generic Cell Rate Algorithm.

    A fresh bucket admits ``burst`` units at once and then ``rate`` units per
    second; in any window it stays within :attr:`arrival_curve`.

    Args:
        rate: units per second (> 0).
        burst: units admissible at once (>= 1).
        state: a state exported by :attr:`state`, to continue from.

    Raises:
        ValueError: if ``rate`` or ``burst`` is out of range.
    """

    __slots__ = ("_bucket", "_schedule")

    def __init__(self, *, rate: float, burst: int, state: GCRAState | None = None) -> None:
        self._schedule = _Schedule(rate, burst)
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
        _check_time(now)
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
        _check_time(now)
        return _wait(now, self.next_deadline(cost))

    def pause_until(self, t: float) -> None:
        """Admit nothing before ``t`` (a server-imposed wait); pauses only extend.

        The bucket keeps refilling during the pause, within the same curve.

        Args:
            t: the time admissions may resume, in seconds.

        Raises:
            ValueError: if ``t`` is not a valid clock reading.
        """
        _check_time(t, "t")
        self._bucket.paused_until = _later(self._bucket.paused_until, t)

    def _with_state(self, state: GCRAState) -> GCRA:
        return GCRA(rate=self.rate, burst=self.burst, state=state)

    def _check(self, now: float, ns: int, cost: int, key: object) -> bool:
        return self._schedule.admit(self._bucket, now, ns, cost, commit=False)

    def _take(self, now: float, ns: int, cost: int, key: object) -> None:
        admitted = self._schedule.admit(self._bucket, now, ns, cost, commit=True)
        assert admitted, "checked just before, and nothing ran in between"

    def _deadline(self, cost: int, key: object) -> float:
        return self._schedule.deadline(self._bucket, cost)

    def __repr__(self) -> str:
        return f"<GCRA {self._schedule.describe(self._bucket)}>"


@attrs.frozen(kw_only=True)
class KeyedLimiterState(Generic[K]):
    """A keyed limiter's state.

    Attributes:
        buckets: ``(key, bucket state)`` pairs, least recently used first.
        paused_until: no key is admitted before this time, or ``None``.
        new_keys_paused_until: no key without a bucket is admitted before this
            time, or ``None`` (where a per-key pause goes when there was no
            room to give that key a bucket).
    """

    buckets: tuple[tuple[K, GCRAState], ...] = ()
    paused_until: float | None = None
    new_keys_paused_until: float | None = None


class KeyedLimiter(Generic[K]):
    """One GCRA bucket per key, at most ``max_keys`` of them.

    Each key stays within :attr:`arrival_curve` on its own. Memory is bounded
    by evicting buckets, least recently used first, but only buckets that
    are back to full: those are indistinguishable from fresh ones, so eviction
    never lets a key exceed its curve. When all ``max_keys`` buckets are still
    refilling, a key without a bucket is refused, and :meth:`delay` /
    :meth:`next_deadline` report when the first bucket frees up. Keys must be
    hashable and not ``None``.

    Args:
        rate: units per second, per key (> 0).
        burst: units admissible at once, per key (>= 1).
        max_keys: most buckets held at once (>= 1).
        state: a state exported by :attr:`state`, to continue from.

    Raises:
        ValueError: if an argument is out of range or ``state`` holds more
            than ``max_keys`` buckets.
    """

    __slots__ = (
        "_buckets",
        "_max_keys",
        "_new_keys_paused_until",
        "_no_room_before",
        "_paused_until",
        "_schedule",
    )

    def __init__(
        self,
        *,
        rate: float,
        burst: int,
        max_keys: int,
        state: KeyedLimiterState[K] | None = None,
    ) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, got {max_keys!r}")
        state = KeyedLimiterState() if state is None else state
        if len(state.buckets) > max_keys:
            raise ValueError(
                f"state holds {len(state.buckets)} buckets but max_keys is {max_keys}; "
                "dropping busy buckets would refill them early, so restore with "
                "max_keys >= the number of buckets"
            )
        for name in ("paused_until", "new_keys_paused_until"):
            value = getattr(state, name)
            if value is not None:
                _check_time(value, f"state.{name}")
        self._schedule = _Schedule(rate, burst)
        self._max_keys = max_keys
        self._buckets: OrderedDict[K, _Bucket] = OrderedDict(
            (key, self._schedule.restore(bucket)) for key, bucket in state.buckets
        )
        self._paused_until = state.paused_until
        self._new_keys_paused_until = state.new_keys_paused_until
        # No bucket is back to full before this time; only a lower bound, so
        # a full table refuses new keys without scanning until then.
        self._no_room_before = -math.inf

    @property
    def rate(self) -> float:
        """Units per second, per key."""
        return self._schedule.rate

    @property
    def burst(self) -> int:
        """Units admissible at once, per key."""
        return self._schedule.burst

    @property
    def max_keys(self) -> int:
        """Most buckets held at once."""
        return self._max_keys

    @property
    def arrival_curve(self) -> ArrivalCurve:
        """The curve each key's admissions never exceed, over any window."""
        return self._schedule.curve

    @property
    def state(self) -> KeyedLimiterState[K]:
        """A frozen snapshot to hand to a restarted owner's ``KeyedLimiter(state=...)``."""
        return KeyedLimiterState(
            buckets=tuple((key, self._schedule.export(b)) for key, b in self._buckets.items()),
            paused_until=self._paused_until,
            new_keys_paused_until=self._new_keys_paused_until,
        )

    def __len__(self) -> int:
        """Return the number of buckets held."""
        return len(self._buckets)

    def try_acquire(self, now: float, cost: int = 1, *, key: K) -> bool:
        """Admit and charge ``cost`` units for ``key`` now, if its curve allows it.

        Args:
            now: the current time, in seconds.
            cost: units to charge (1 to ``burst``).
            key: whose bucket to charge.

        Returns:
            ``True`` if admitted (and charged); ``False`` if the key's bucket
            is not ready, a pause applies, or the key has no bucket and none
            can be freed.

        Raises:
            ValueError: if ``now``, ``cost`` or ``key`` is invalid.
        """
        _check_time(now)
        self._schedule.check_cost(cost)
        ns = _to_ns(now)
        if not self._check(now, ns, cost, key):
            return False
        self._take(now, ns, cost, key)
        return True

    def next_deadline(self, cost: int = 1, *, key: K) -> float:
        """Return the earliest time at which ``try_acquire(t, cost, key=key)`` succeeds.

        Exact, as long as nothing else is admitted meanwhile. For a key
        without a bucket while all ``max_keys`` are busy, this is when the
        first bucket frees up (found by a scan of all buckets).

        Args:
            cost: units to charge (1 to ``burst``).
            key: whose bucket to ask about.

        Returns:
            A clock time in seconds, possibly in the past, or ``-math.inf``.

        Raises:
            ValueError: if ``cost`` or ``key`` is invalid.
        """
        self._schedule.check_cost(cost)
        return self._deadline(cost, key)

    def delay(self, now: float, cost: int = 1, *, key: K) -> float:
        """Return how long to wait before ``cost`` units for ``key`` would be admitted.

        Args:
            now: the current time, in seconds.
            cost: units to charge (1 to ``burst``).
            key: whose bucket to ask about.

        Returns:
            Seconds to sleep; ``0.0`` if admissible now.

        Raises:
            ValueError: if ``now``, ``cost`` or ``key`` is invalid.
        """
        _check_time(now)
        return _wait(now, self.next_deadline(cost, key=key))

    def pause_until(self, t: float, *, key: K | None = None) -> None:
        """Admit nothing before ``t``, for one key or (``key=None``) for all.

        A paused bucket is busy, so it is not evicted. If ``key`` has no
        bucket and none can be freed, the pause applies to every key that has
        no bucket: stricter than asked, never looser.

        Args:
            t: the time admissions may resume, in seconds.
            key: the key to pause, or ``None`` for all keys.

        Raises:
            ValueError: if ``t`` is not a valid clock reading.
        """
        _check_time(t, "t")
        if key is None:
            self._paused_until = _later(self._paused_until, t)
            return
        bucket = self._buckets.get(key)
        if bucket is None:
            # Telling full buckets from busy ones needs a "now", which this
            # call does not have: use a free slot or nothing, evict no bucket.
            if len(self._buckets) >= self._max_keys:
                self._new_keys_paused_until = _later(self._new_keys_paused_until, t)
                return
            bucket = self._buckets[key] = _Bucket()
            self._no_room_before = -math.inf
        bucket.paused_until = _later(bucket.paused_until, t)

    def _room(self, now: float, ns: int) -> bool:
        """Whether a new bucket fits at ``now``, evicting full buckets if needed."""
        if len(self._buckets) < self._max_keys:
            return True
        if now < self._no_room_before:
            return False
        schedule = self._schedule
        oldest = next(iter(self._buckets))
        if schedule.is_full(self._buckets[oldest], now, ns):
            del self._buckets[oldest]
            return True
        # The least recently used bucket is still busy (a burst can keep a
        # bucket busy longer than later, smaller ones): sweep for any full one.
        full = [k for k, b in self._buckets.items() if schedule.is_full(b, now, ns)]
        for k in full:
            del self._buckets[k]
        if full:
            return True
        self._no_room_before = self._room_at()
        return False

    def _room_at(self) -> float:
        return min(self._schedule.full_at(b) for b in self._buckets.values())

    def _check(self, now: float, ns: int, cost: int, key: K | None) -> bool:
        if key is None:
            raise ValueError("a KeyedLimiter needs a key (any hashable but None)")
        if self._paused_until is not None and now < self._paused_until:
            return False
        bucket = self._buckets.get(key)
        if bucket is not None:
            return self._schedule.admit(bucket, now, ns, cost, commit=False)
        # A fresh bucket admits any cost up to burst; evicting full buckets
        # to make room for it is invisible, so it may happen while checking.
        if self._new_keys_paused_until is not None and now < self._new_keys_paused_until:
            return False
        return self._room(now, ns)

    def _take(self, now: float, ns: int, cost: int, key: K) -> None:
        bucket = self._buckets.get(key)
        if bucket is None:
            assert len(self._buckets) < self._max_keys, "room was made while checking"
            bucket = self._buckets[key] = _Bucket()
            # Only a caller whose clock stepped back can insert below the
            # bound; then the new bucket may free up first, so drop the bound.
            self._no_room_before = -math.inf
        else:
            self._buckets.move_to_end(key)
        admitted = self._schedule.admit(bucket, now, ns, cost, commit=True)
        assert admitted, "checked just before, and nothing ran in between"

    def _deadline(self, cost: int, key: K | None) -> float:
        if key is None:
            raise ValueError("a KeyedLimiter needs a key (any hashable but None)")
        bucket = self._buckets.get(key)
        if bucket is not None:
            earliest = self._schedule.deadline(bucket, cost)
        else:
            earliest = _later(self._new_keys_paused_until, -math.inf)
            if len(self._buckets) >= self._max_keys:
                earliest = max(earliest, self._room_at())
        return _later(self._paused_until, earliest)

    def _with_state(self, state: KeyedLimiterState[K]) -> KeyedLimiter[K]:
        return KeyedLimiter(rate=self.rate, burst=self.burst, max_keys=self._max_keys, state=state)

    def __repr__(self) -> str:
        text = (
            f"<KeyedLimiter rate={self.rate!r}/s burst={self.burst} "
            f"keys={len(self._buckets)}/{self._max_keys}"
        )
        if self._paused_until is not None:
            text += f" paused_until={self._paused_until!r}"
        return text + ">"


_Part: TypeAlias = "GCRA | KeyedLimiter[Any]"


def _restored(part: _Part, saved: GCRAState | KeyedLimiterState[Any]) -> _Part:
    if isinstance(part, GCRA):
        if isinstance(saved, GCRAState):
            return part._with_state(saved)
    elif isinstance(saved, KeyedLimiterState):
        return part._with_state(saved)
    raise ValueError(f"a saved {type(saved).__name__} does not fit part {part!r}")


@attrs.frozen(kw_only=True)
class CompositeLimiterState:
    """A composite limiter's state.

    Attributes:
        parts: the parts' states, in the parts' order.
        paused_until: nothing is admitted before this time, or ``None``.
    """

    parts: tuple[GCRAState | KeyedLimiterState[Any], ...]
    paused_until: float | None = None


class CompositeLimiter:
    """Admits only if every part admits, and then charges every part.

    Atomic: either every part is charged or none is, so a refusal by one
    part never spends another part's budget. Typical use is a per-channel
    :class:`GCRA` plus a per-peer :class:`KeyedLimiter`; keyed parts use the
    ``key`` given to each call, plain parts ignore it.

    Args:
        *parts: the limiters, each a :class:`GCRA` or :class:`KeyedLimiter`,
            each at most once.
        state: a state exported by :attr:`state`; the parts are replaced by
            copies with the same settings and the saved states.

    Raises:
        ValueError: if there are no parts, a part repeats, or ``state`` does
            not match the parts.
    """

    __slots__ = ("_parts", "_paused_until")

    def __init__(self, *parts: _Part, state: CompositeLimiterState | None = None) -> None:
        if not parts:
            raise ValueError("a CompositeLimiter needs at least one part")
        if len({id(part) for part in parts}) != len(parts):
            raise ValueError("each part may appear once: a repeated part would be charged twice")
        self._paused_until: float | None = None
        if state is not None:
            if len(state.parts) != len(parts):
                raise ValueError(f"state has {len(state.parts)} part states for {len(parts)} parts")
            parts = tuple(
                _restored(part, saved) for part, saved in zip(parts, state.parts, strict=True)
            )
            if state.paused_until is not None:
                _check_time(state.paused_until, "state.paused_until")
            self._paused_until = state.paused_until
        self._parts: tuple[_Part, ...] = tuple(parts)

    @property
    def parts(self) -> tuple[GCRA | KeyedLimiter[Any], ...]:
        """The limiters, in order."""
        return self._parts

    @property
    def arrival_curve(self) -> CompositeCurve:
        """The curve the admissions for any one key never exceed.

        Plain parts bound all admissions together, which includes any one
        key's, so the minimum over all parts bounds each key.
        """
        return CompositeCurve(parts=tuple(part.arrival_curve for part in self._parts))

    @property
    def state(self) -> CompositeLimiterState:
        """A frozen snapshot to hand to ``CompositeLimiter(*parts, state=...)``."""
        return CompositeLimiterState(
            parts=tuple(part.state for part in self._parts), paused_until=self._paused_until
        )

    def try_acquire(self, now: float, cost: int = 1, *, key: Hashable | None = None) -> bool:
        """Admit and charge ``cost`` units in every part, or in none.

        Args:
            now: the current time, in seconds.
            cost: units to charge (1 to the smallest burst).
            key: the key for keyed parts (required if there are any).

        Returns:
            ``True`` if every part admitted (all charged), else ``False``
            (none charged).

        Raises:
            ValueError: if ``now`` or ``cost`` is out of range, or a keyed
                part gets no key.
        """
        _check_time(now)
        self._check_cost(cost)
        if self._paused_until is not None and now < self._paused_until:
            return False
        ns = _to_ns(now)
        if not all(part._check(now, ns, cost, key) for part in self._parts):
            return False
        for part in self._parts:
            part._take(now, ns, cost, key)
        return True

    def next_deadline(self, cost: int = 1, *, key: Hashable | None = None) -> float:
        """Return the earliest time at which every part would admit.

        Args:
            cost: units to charge (1 to the smallest burst).
            key: the key for keyed parts.

        Returns:
            A clock time in seconds, possibly in the past, or ``-math.inf``.

        Raises:
            ValueError: if ``cost`` is out of range, or a keyed part gets no key.
        """
        self._check_cost(cost)
        earliest = max(part._deadline(cost, key) for part in self._parts)
        return _later(self._paused_until, earliest)

    def delay(self, now: float, cost: int = 1, *, key: Hashable | None = None) -> float:
        """Return how long to wait before every part would admit.

        Args:
            now: the current time, in seconds.
            cost: units to charge (1 to the smallest burst).
            key: the key for keyed parts.

        Returns:
            Seconds to sleep; ``0.0`` if admissible now.

        Raises:
            ValueError: if ``now`` or ``cost`` is out of range, or a keyed
                part gets no key.
        """
        _check_time(now)
        return _wait(now, self.next_deadline(cost, key=key))

    def pause_until(self, t: float, *, key: Hashable | None = None) -> None:
        """Admit nothing before ``t``: for all calls, or for one key.

        Args:
            t: the time admissions may resume, in seconds.
            key: ``None`` pauses everything; a key pauses it in every keyed part.

        Raises:
            ValueError: if ``t`` is not a valid clock reading, or a key is
                given but no part is keyed.
        """
        _check_time(t, "t")
        if key is None:
            self._paused_until = _later(self._paused_until, t)
            return
        keyed = [part for part in self._parts if isinstance(part, KeyedLimiter)]
        if not keyed:
            raise ValueError(
                f"cannot pause key {key!r}: no part is a KeyedLimiter; pass key=None "
                "to pause everything"
            )
        for part in keyed:
            part.pause_until(t, key=key)

    def _check_cost(self, cost: int) -> None:
        smallest = min(part.burst for part in self._parts)
        if not (isinstance(cost, int) and 1 <= cost <= smallest):
            raise ValueError(
                f"cost must be an integer between 1 and the smallest burst ({smallest}), "
                f"got {cost!r}; a larger cost could never be admitted"
            )

    def __repr__(self) -> str:
        paused = "" if self._paused_until is None else f" paused_until={self._paused_until!r}"
        return f"<CompositeLimiter {list(self._parts)!r}{paused}>"
