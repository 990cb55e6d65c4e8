"""Restart intensity: OTP's ``add_restart`` as a small deterministic function.

A supervisor may restart children at most ``intensity`` times within any
``period`` seconds; one more restart inside the window and it gives up. The
window slides: restarts older than ``now - period`` no longer count (OTP keeps
those with ``time >= now - period``). Time comes in as ``now`` so the rule is
tested without a clock.
"""

from __future__ import annotations

from collections import deque
from typing import Final

__all__ = ["DEFAULT_INTENSITY", "DEFAULT_PERIOD", "add_restart"]

DEFAULT_INTENSITY: Final = 1  # restarts (OTP's default)
DEFAULT_PERIOD: Final = 5.0  # seconds (OTP's default)


def add_restart(restarts: deque[float], now: float, period: float, intensity: int) -> bool:
    """Record a restart at ``now`` and say whether it stays within the intensity.

    ``restarts`` holds the times of recent restarts, oldest first; it is
    updated in place and never holds more than ``intensity + 1`` entries, so
    a supervisor with a large intensity costs O(1) per restart.

    Args:
        restarts: recent restart times, oldest first (mutated).
        now: the current time in seconds.
        period: the window in seconds.
        intensity: the most restarts allowed within the window.

    Returns:
        True if the supervisor may go on; False once the restart makes
        ``intensity + 1`` restarts within ``period`` (the supervisor must
        shut down).
    """
    threshold = now - period
    while restarts and restarts[0] < threshold:
        restarts.popleft()
    restarts.append(now)
    while len(restarts) > intensity + 1:
        restarts.popleft()
    return len(restarts) <= intensity
