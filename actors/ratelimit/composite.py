"""Composite limiters: admit only when every part admits, then charge every part."""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Any, TypeAlias

import attrs

from .._clock import CLOCK_LIMIT, check_time
from ._grid import _later, _to_ns, _wait
from .curve import CompositeCurve
from .gcra import GCRA, GCRAState
from .keyed import KeyedLimiter, KeyedLimiterState

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

    __slots__ = ("_parts", "_paused_until", "_smallest_burst", "_unlimited")

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
                check_time(state.paused_until, "state.paused_until", bounded=True)
            self._paused_until = state.paused_until
        self._parts: tuple[_Part, ...] = tuple(parts)
        self._smallest_burst = min(part.burst for part in self._parts)  # fixed per part
        # No part has a rate (limits off): only pauses can refuse, which
        # :meth:`_admits_freely` checks without the parts' arithmetic.
        self._unlimited = all(part.rate == math.inf for part in self._parts)

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

    @property
    def untouched(self) -> bool:
        """Whether its state is a fresh one's: every part unlimited, nothing paused.

        Limits off, a channel's limiter stays so until the platform asks it
        to wait; a checkpoint then writes the fresh state without exporting.
        """
        if not self._unlimited or self._paused_until is not None:
            return False
        for part in self._parts:  # noqa: SIM110 (a loop: no generator made per checkpoint)
            if not part._untouched():
                return False
        return True

    def admits_freely(self, now: float, *, key: Hashable | None = None) -> bool:
        """Whether one unit for ``key`` is admitted at ``now`` with nothing to charge.

        True when every part is unlimited and no pause holds ``key``: then
        :meth:`try_acquire` would admit it and change nothing, and
        :meth:`delay` would be 0. One check on a send whose channel has its
        limits off, instead of both.

        Raises:
            ValueError: if ``now`` is out of range.
        """
        if not -CLOCK_LIMIT < now < CLOCK_LIMIT:  # (NaN too; checked inline: once a send)
            check_time(now, bounded=True)
        return self._unlimited and self._admits_freely(now, key)

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
        check_time(now, bounded=True)
        self._check_cost(cost)
        if self._unlimited and self._admits_freely(now, key):
            return True  # nothing to charge: an unlimited part keeps no count
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

    def shared_deadline(self, cost: int = 1) -> float:
        """Return the earliest time every part would admit, counting only what
        no key owns: the plain parts and the pauses of everything.

        ``next_deadline(cost, key=k)`` is never earlier; where it is later,
        the wait is ``k``'s own (its bucket, its pause). A caller with many
        keys waiting uses it to let one of them wait on the shared limit for
        all (see :mod:`actors.channel.pacing`).

        Args:
            cost: units to charge (1 to the smallest burst).

        Returns:
            A clock time in seconds, possibly in the past, or ``-math.inf``.

        Raises:
            ValueError: if ``cost`` is out of range.
        """
        self._check_cost(cost)
        earliest = -math.inf
        for part in self._parts:
            if isinstance(part, KeyedLimiter):
                earliest = _later(part._paused_until, earliest)
            else:
                earliest = max(earliest, part._deadline(cost, None))
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
        check_time(now, bounded=True)
        if self._unlimited and cost == 1 and type(cost) is int and self._admits_freely(now, key):
            return 0.0
        return _wait(now, self.next_deadline(cost, key=key))

    def _admits_freely(self, now: float, key: Hashable | None) -> bool:
        """Whether every part is unlimited and no pause holds ``key`` at ``now``.

        Then everything is admitted, and admitting changes nothing: the fast
        path of a channel whose limits are off (checked by the caller:
        ``self._unlimited``). A keyed part without a key is left to the slow
        path, which refuses it.
        """
        paused = self._paused_until
        if paused is not None and now < paused:
            return False
        for part in self._parts:  # noqa: SIM110 (a loop: no generator made per send)
            if not part._admits_freely(now, key):
                return False
        return True

    def pause_until(self, t: float, *, key: Hashable | None = None) -> None:
        """Admit nothing before ``t``: for all calls, or for one key.

        Args:
            t: the time admissions may resume, in seconds.
            key: ``None`` pauses everything; a key pauses it in every keyed part.

        Raises:
            ValueError: if ``t`` is not a valid clock reading, or a key is
                given but no part is keyed.
        """
        check_time(t, "t", bounded=True)
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
        if cost == 1 and type(cost) is int:  # nearly every call: no burst is below 1
            return
        smallest = self._smallest_burst
        if not (isinstance(cost, int) and 1 <= cost <= smallest):
            raise ValueError(
                f"cost must be an integer between 1 and the smallest burst ({smallest}), "
                f"got {cost!r}; a larger cost could never be admitted"
            )

    def __repr__(self) -> str:
        paused = "" if self._paused_until is None else f" paused_until={self._paused_until!r}"
        return f"<CompositeLimiter {list(self._parts)!r}{paused}>"
