"""One GCRA bucket per key, in bounded memory."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

import attrs

from .._clock import check_time
from ._grid import _later, _to_ns, _wait
from .curve import ArrivalCurve
from .gcra import GCRAState, _Bucket, _Schedule

K = TypeVar("K", bound=Hashable)


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
        rate: units per second, per key (> 0; ``math.inf``: no limit, only pauses
            apply, and no bucket is kept for a key that was not paused).
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
                check_time(value, f"state.{name}", bounded=True)
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
        check_time(now, bounded=True)
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
        check_time(now, bounded=True)
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
        check_time(t, "t", bounded=True)
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
        if self._schedule.unlimited:
            if len(self._buckets) >= self._max_keys and now >= self._no_room_before:
                # A full table: drop every pause that is over, so the next 429s find slots.
                over = [k for k, b in self._buckets.items() if self._schedule.is_full(b, now, ns)]
                for k in over:
                    del self._buckets[k]
                if not over:
                    self._no_room_before = self._room_at()
            return True  # no bucket is made for it: no room needed
        return self._room(now, ns)

    def _take(self, now: float, ns: int, cost: int, key: K) -> None:
        bucket = self._buckets.get(key)
        if self._schedule.unlimited:
            if bucket is not None:
                del self._buckets[key]  # admitted: its pause is over, and nothing else is kept
            return
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
            if len(self._buckets) >= self._max_keys and not self._schedule.unlimited:
                earliest = max(earliest, self._room_at())
        return _later(self._paused_until, earliest)

    def _untouched(self) -> bool:
        # Only asked of an unlimited one: its buckets are pauses.
        return (
            not self._buckets
            and self._paused_until is None
            and (self._new_keys_paused_until is None)
        )

    def _admits_freely(self, now: float, key: K | None) -> bool:
        # Only asked of an unlimited one (CompositeLimiter._admits_freely): its
        # buckets are pauses, and a key without one is admitted unless all are
        # paused. A full table is left to the slow path, which sweeps out the
        # pauses that are over.
        buckets = self._buckets
        if key is None or key in buckets or len(buckets) >= self._max_keys:
            return False  # (an unhashable key raises here, as on the slow path)
        paused = self._paused_until
        if paused is not None and now < paused:
            return False
        paused = self._new_keys_paused_until
        return paused is None or now >= paused

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
