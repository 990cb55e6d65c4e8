"""Arrival curves: the most a limiter admits in any window."""

from __future__ import annotations

import math

import attrs


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
            ValueError: if ``window`` is negative or not finite, or the rate is
                ``math.inf`` (no limit).
        """
        if not (math.isfinite(window) and window >= 0.0):
            raise ValueError(f"window must be finite seconds >= 0, got {window!r}")
        if self.rate == math.inf:
            raise ValueError("an unlimited curve (rate math.inf) bounds no window")
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
            ValueError: if ``window`` is negative or not finite, or every part
                is unlimited.
        """
        bounded = [part for part in self.parts if part.rate != math.inf]
        if not bounded:
            raise ValueError("every part is unlimited (rate math.inf): no window is bounded")
        return min(part.max_in_window(window) for part in bounded)
