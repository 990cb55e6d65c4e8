"""Circuit breaker: the state machine holds under random sequences of calls and times."""

from __future__ import annotations

import math

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.breaker import (
    BreakerState,
    BreakerStatistics,
    CircuitBreaker,
    CircuitBreakerState,
)
from actors.errors import ActorError, CircuitOpen

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


@attrs.define
class Model:
    """The specification, written as a table of transitions, state by state.

    CLOSED:    allow -> ok; success -> failures = 0; failure -> failures + 1,
               and OPEN (retry at now + timeout) once failures >= threshold.
    OPEN:      allow before retry_at -> refused; at or after -> HALF_OPEN,
               a new trial round (reclaim at now + timeout), then as HALF_OPEN;
               success / failure -> counted only.
    HALF_OPEN: allow -> a trial if fewer than max are in flight, else refused;
               a round older than the timeout is reclaimed first;
               success -> CLOSED; failure -> OPEN (retry at now + timeout).
    """

    threshold: int
    timeout: float
    max_trials: int
    state: BreakerState = CLOSED
    failures: int = 0
    retry_at: float | None = None
    trials: int = 0

    def allow(self, now: float) -> bool:
        if self.state is CLOSED:
            return True
        assert self.retry_at is not None
        if now >= self.retry_at:  # OPEN timed out, or a HALF_OPEN round is stale
            self.state, self.trials, self.retry_at = HALF_OPEN, 0, now + self.timeout
        if self.state is OPEN or self.trials >= self.max_trials:
            return False
        self.trials += 1
        return True

    def success(self, now: float) -> None:
        if self.state is OPEN:
            return
        self.state, self.failures, self.retry_at, self.trials = CLOSED, 0, None, 0

    def failure(self, now: float) -> None:
        if self.state is OPEN:
            return
        self.failures += 1
        if self.state is HALF_OPEN or self.failures >= self.threshold:
            self.state, self.retry_at, self.trials = OPEN, now + self.timeout, 0


def time_steps(timeout: float) -> st.SearchStrategy[float]:
    return st.one_of(
        st.just(0.0),
        st.just(timeout),
        st.sampled_from([-1e-9, 1e-9, 1e-6]).map(lambda d: max(0.0, timeout + d)),
        st.floats(min_value=0.0, max_value=3 * timeout),
    )


@settings(max_examples=200)
@given(
    st.data(),
    st.integers(min_value=1, max_value=4),
    st.floats(min_value=0.01, max_value=100.0),
    st.integers(min_value=1, max_value=3),
    st.floats(min_value=-1e6, max_value=1e6),
)
def test_transitions_follow_the_specification(
    data: st.DataObject, threshold: int, timeout: float, max_trials: int, start: float
) -> None:
    breaker = CircuitBreaker(
        failure_threshold=threshold, reset_timeout=timeout, half_open_max_calls=max_trials
    )
    model = Model(threshold, timeout, max_trials)
    ops = data.draw(
        st.lists(
            st.tuples(st.sampled_from(["allow", "success", "failure"]), time_steps(timeout)),
            max_size=60,
        )
    )
    now = start
    refused = opened = 0
    for op, step in ops:
        now += step
        was_open = breaker.current_state(now) is OPEN
        if op == "allow":
            expected = model.allow(now)
            try:
                breaker.allow(now)
            except CircuitOpen as exc:
                refused += 1
                assert not expected, f"refused in {model}"
                assert exc.retry_at == model.retry_at
                assert exc.retry_at > now
                assert breaker.current_state(now).name in str(exc)
            else:
                assert expected, f"allowed in {model}"
                assert not was_open, "OPEN let a call through before its timeout"
        elif op == "success":
            model.success(now)
            breaker.record_success(now)
        else:
            before = model.state
            model.failure(now)
            opened += model.state is OPEN and before is not OPEN
            breaker.record_failure(now)
        stats = breaker.statistics()
        assert (stats.state, stats.consecutive_failures, stats.retry_at) == (
            model.state,
            model.failures,
            model.retry_at,
        )
        assert stats.trials_in_flight == model.trials <= max_trials
        assert (stats.rejections, stats.times_opened) == (refused, opened)
        due = model.retry_at is not None and now >= model.retry_at
        assert breaker.current_state(now) is (
            HALF_OPEN if model.state is OPEN and due else model.state
        )


def test_opens_after_threshold_consecutive_failures_only() -> None:
    breaker = CircuitBreaker(failure_threshold=3, reset_timeout=10.0)
    breaker.record_failure(1.0)
    breaker.record_failure(2.0)
    breaker.record_success(3.0)  # breaks the run
    breaker.record_failure(4.0)
    breaker.record_failure(5.0)
    breaker.allow(5.5)
    assert breaker.current_state(5.5) is CLOSED
    breaker.record_failure(6.0)
    assert breaker.current_state(6.0) is OPEN
    with pytest.raises(CircuitOpen) as info:
        breaker.allow(7.0)
    assert info.value.retry_at == 16.0
    assert isinstance(info.value, ActorError)
    message = str(info.value)
    assert "OPEN after 3 consecutive failures (threshold 3)" in message
    assert "until t=16.000 (in 9.000 s)" in message
    assert "1 trial call(s) will be let through" in message


def test_half_open_allows_limited_trials_and_a_success_closes() -> None:
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=5.0, half_open_max_calls=2)
    breaker.record_failure(0.0)
    with pytest.raises(CircuitOpen):
        breaker.allow(math.nextafter(5.0, 0.0))
    assert breaker.current_state(5.0) is HALF_OPEN
    breaker.allow(5.0)
    breaker.allow(5.5)
    with pytest.raises(CircuitOpen, match="HALF_OPEN with 2 trial call") as info:
        breaker.allow(6.0)
    assert info.value.retry_at == 10.0
    breaker.record_success(7.0)
    assert breaker.current_state(7.0) is CLOSED
    assert breaker.statistics().consecutive_failures == 0
    for t in range(8, 20):
        breaker.allow(float(t))


def test_a_released_trial_frees_its_slot_and_closes_nothing() -> None:
    # A send that took the trial slot and then did not call the platform (its
    # limiter said wait) recorded a success: the breaker closed on no evidence.
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=5.0)
    breaker.record_failure(0.0)
    round_ = breaker.allow(5.0)
    with pytest.raises(CircuitOpen):
        breaker.allow(5.1)  # the one slot is taken
    breaker.release(round_)
    assert breaker.current_state(5.2) is HALF_OPEN
    breaker.allow(5.2)  # the slot is free again: another trial
    assert breaker.statistics().successes == 0
    breaker.record_failure(5.5)
    assert breaker.current_state(5.5) is OPEN
    closed = CircuitBreaker(failure_threshold=1, reset_timeout=5.0)
    closed.release(closed.allow(0.0))  # (closed: nothing to give back)
    assert closed.current_state(0.0) is CLOSED


def test_a_slot_of_a_reclaimed_round_given_back_frees_nobody_else_s() -> None:
    # A trial that waited past the round's reclaim gave back the next round's
    # slot, taken by another call: a third call went beside it, two trials at once.
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=10.0)
    breaker.record_failure(0.0)
    stale = breaker.allow(10.0)
    breaker.allow(20.0)  # reclaimed: a new round, its slot taken
    breaker.release(stale)
    with pytest.raises(CircuitOpen):
        breaker.allow(21.0)  # still one trial at a time


def test_a_failed_trial_reopens_with_a_fresh_timeout() -> None:
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout=5.0)
    breaker.record_failure(0.0)
    breaker.record_failure(1.0)
    breaker.allow(6.0)
    breaker.record_failure(8.0)
    assert breaker.current_state(8.0) is OPEN
    assert breaker.statistics().retry_at == 13.0
    with pytest.raises(CircuitOpen):
        breaker.allow(12.9)
    breaker.allow(13.0)
    assert breaker.statistics().times_opened == 2


def test_any_failure_in_half_open_reopens_whatever_the_count() -> None:
    restored = CircuitBreaker(
        failure_threshold=5,
        reset_timeout=5.0,
        state=CircuitBreakerState(state=HALF_OPEN, retry_at=10.0, trials_in_flight=1),
    )
    restored.record_failure(6.0)
    assert restored.current_state(6.0) is OPEN
    assert restored.statistics().retry_at == 11.0


def test_results_of_calls_from_before_the_opening_change_nothing() -> None:
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=5.0)
    breaker.record_failure(0.0)
    breaker.record_success(1.0)  # a straggler: must not close
    breaker.record_failure(2.0)  # a straggler: must not push retry_at out
    stats = breaker.statistics()
    assert (stats.state, stats.retry_at) == (OPEN, 5.0)
    assert (stats.successes, stats.failures) == (1, 2)


def test_unreported_trials_are_reclaimed_after_the_timeout() -> None:
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=5.0)
    breaker.record_failure(0.0)
    breaker.allow(5.0)  # a trial whose caller never reports
    with pytest.raises(CircuitOpen):
        breaker.allow(9.9)
    breaker.allow(10.0)
    assert breaker.statistics().trials_in_flight == 1


def test_state_round_trip_keeps_an_open_breaker_open() -> None:
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout=30.0, name="tg:support/send")
    breaker.record_failure(0.0)
    breaker.record_failure(1.0)
    with pytest.raises(CircuitOpen, match="circuit breaker 'tg:support/send' is OPEN"):
        breaker.allow(2.0)
    saved = breaker.state
    assert saved == CircuitBreakerState(
        state=OPEN, consecutive_failures=2, retry_at=31.0, failures=2, rejections=1, times_opened=1
    )
    restarted = CircuitBreaker(failure_threshold=2, reset_timeout=30.0, state=saved)
    assert restarted.state == saved
    with pytest.raises(CircuitOpen):
        restarted.allow(3.0)


def test_statistics_is_a_frozen_snapshot() -> None:
    breaker = CircuitBreaker(failure_threshold=5)
    breaker.record_success(0.0)
    breaker.record_failure(1.0)
    stats = breaker.statistics()
    assert stats == BreakerStatistics(
        state=CLOSED,
        consecutive_failures=1,
        failure_threshold=5,
        retry_at=None,
        trials_in_flight=0,
        successes=1,
        failures=1,
        rejections=0,
        times_opened=0,
    )
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        stats.failures = 9  # type: ignore[misc]


def test_repr_shows_the_state() -> None:
    breaker = CircuitBreaker(failure_threshold=5, reset_timeout=30.0)
    assert repr(breaker) == "<CircuitBreaker CLOSED failures=0/5>"
    for t in range(5):
        breaker.record_failure(float(t) + 0.5)
    assert repr(breaker) == "<CircuitBreaker OPEN failures=5 retry_at=34.5>"
    breaker.allow(34.5)
    assert repr(breaker) == "<CircuitBreaker HALF_OPEN failures=5 trials=1/1 retry_at=64.5>"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"failure_threshold": 0},
        {"reset_timeout": 0.0},
        {"reset_timeout": math.inf},
        {"half_open_max_calls": 0},
        {"state": CircuitBreakerState(state=OPEN)},
        {"state": CircuitBreakerState(retry_at=3.0)},
        {"state": CircuitBreakerState(state=OPEN, retry_at=3.0, trials_in_flight=1)},
    ],
)
def test_invalid_settings_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("now", [math.nan, math.inf])
def test_non_finite_clock_readings_are_refused(now: float) -> None:
    breaker = CircuitBreaker()
    for method in (breaker.allow, breaker.record_success, breaker.record_failure):
        with pytest.raises(ValueError, match="finite"):
            method(now)
    assert breaker.statistics().failures == 0
