"""Restart intensity: ``add_restart`` against a brute-force model of OTP's rule."""

from __future__ import annotations

from collections import deque

from hypothesis import given
from hypothesis import strategies as st

from supervisors import add_restart

gaps = st.lists(
    st.one_of(st.just(0.0), st.floats(min_value=0.0, max_value=20.0, allow_nan=False)),
    max_size=60,
)


def model(history: list[float], period: float, intensity: int) -> bool:
    """OTP: give up once more than ``intensity`` restarts fall in [now - period, now]."""
    now = history[-1]
    return sum(1 for t in history if t >= now - period) <= intensity


@given(gaps=gaps, period=st.floats(min_value=0.001, max_value=30.0), intensity=st.integers(0, 8))
def test_add_restart_matches_the_model_until_it_gives_up(
    gaps: list[float], period: float, intensity: int
) -> None:
    restarts: deque[float] = deque()
    history: list[float] = []
    now = 0.0
    for gap in gaps:
        now += gap
        history.append(now)
        allowed = add_restart(restarts, now, period, intensity)
        assert allowed == model(history, period, intensity), (history, period, intensity)
        assert len(restarts) <= intensity + 1  # bounded memory, whatever the intensity
        if not allowed:
            break  # the supervisor is gone


def test_default_intensity_allows_one_restart_per_period() -> None:
    restarts: deque[float] = deque()
    assert add_restart(restarts, 0.0, 5.0, 1)
    assert not add_restart(restarts, 5.0, 5.0, 1)  # t=0 is still inside [0, 5]
    restarts.clear()
    assert add_restart(restarts, 0.0, 5.0, 1)
    assert add_restart(restarts, 5.001, 5.0, 1)  # t=0 has left the window


def test_zero_intensity_gives_up_at_the_first_restart() -> None:
    assert not add_restart(deque(), 0.0, 5.0, 0)
