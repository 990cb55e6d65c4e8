"""Backoff policies and the failure tracker: bounds, determinism, budget, reset."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.backoff import (
    Backoff,
    BackoffState,
    DecorrelatedJitterBackoff,
    ExponentialBackoff,
    ProportionalJitterBackoff,
)
from actors.errors import RetriesExhausted

seeds = st.integers(min_value=0, max_value=2**32 - 1)
bases = st.floats(min_value=1e-3, max_value=10.0)
times = st.floats(min_value=-1e6, max_value=1e6)


@st.composite
def exponential_policies(draw: st.DrawFn) -> ExponentialBackoff:
    base = draw(bases)
    cap = draw(st.floats(min_value=base, max_value=1e4))
    factor = draw(st.floats(min_value=1.0, max_value=4.0))
    return ExponentialBackoff(base=base, cap=cap, factor=factor)


@st.composite
def decorrelated_policies(draw: st.DrawFn) -> DecorrelatedJitterBackoff:
    base = draw(bases)
    return DecorrelatedJitterBackoff(base=base, cap=draw(st.floats(min_value=base, max_value=1e4)))


policies = st.one_of(exponential_policies(), decorrelated_policies())


def expected_ceiling(policy: ExponentialBackoff, failures: int) -> float:
    # Independent of the implementation: compare exponents in log space
    # first, so huge counts never overflow.
    exponent = failures - 1
    if (
        policy.factor > 1.0
        and exponent * math.log(policy.factor) > math.log(policy.cap / policy.base) + 1.0
    ):
        return policy.cap
    return min(policy.cap, policy.base * policy.factor**exponent)


@given(exponential_policies(), st.integers(min_value=1, max_value=5000), seeds)
def test_full_jitter_stays_within_its_ceiling(
    policy: ExponentialBackoff, failures: int, seed: int
) -> None:
    delay = policy.compute(failures, rng=random.Random(seed))
    ceiling = expected_ceiling(policy, failures)
    assert policy.ceiling(failures) == ceiling
    assert 0.0 <= delay <= ceiling <= policy.cap


def test_full_jitter_spreads_over_the_whole_range() -> None:
    policy = ExponentialBackoff(base=1.0, cap=100.0, factor=2.0)
    rng = random.Random(7)
    draws = [policy.compute(4, rng=rng) for _ in range(2000)]
    # ceiling for the 4th failure is 1 * 2**3 = 8
    assert max(draws) <= 8.0
    assert max(draws) > 7.9
    assert min(draws) < 0.1
    assert 3.5 < sum(draws) / len(draws) < 4.5


def test_full_jitter_ceiling_grows_then_caps() -> None:
    policy = ExponentialBackoff(base=0.5, cap=10.0, factor=3.0)
    assert [policy.ceiling(n) for n in range(1, 6)] == [0.5, 1.5, 4.5, 10.0, 10.0]
    assert policy.ceiling(10**6) == 10.0


@given(decorrelated_policies(), st.lists(seeds, min_size=1, max_size=30))
def test_decorrelated_jitter_stays_within_base_and_cap(
    policy: DecorrelatedJitterBackoff, seeds_: list[int]
) -> None:
    previous: float | None = None
    for n, seed in enumerate(seeds_, start=1):
        delay = policy.compute(n, rng=random.Random(seed), previous=previous)
        start = policy.base if previous is None else previous
        assert policy.base <= delay <= policy.cap
        assert delay <= max(policy.base, start * 3.0)
        previous = delay


def test_decorrelated_jitter_grows_from_the_previous_delay() -> None:
    policy = DecorrelatedJitterBackoff(base=1.0, cap=1000.0)
    rng = random.Random(3)
    from_small = [policy.compute(1, rng=rng, previous=1.0) for _ in range(500)]
    from_large = [policy.compute(1, rng=rng, previous=100.0) for _ in range(500)]
    assert max(from_small) <= 3.0
    assert max(from_large) > 250.0


@pytest.mark.parametrize("policy", [ExponentialBackoff(), DecorrelatedJitterBackoff()])
def test_compute_rejects_a_failure_count_below_one(
    policy: ExponentialBackoff | DecorrelatedJitterBackoff,
) -> None:
    with pytest.raises(ValueError, match="counts from 1"):
        policy.compute(0, rng=random.Random(0))


@pytest.mark.parametrize(
    "make",
    [
        lambda: ExponentialBackoff(base=0.0),
        lambda: ExponentialBackoff(base=2.0, cap=1.0),
        lambda: ExponentialBackoff(factor=0.5),
        lambda: ExponentialBackoff(cap=math.inf),
        lambda: DecorrelatedJitterBackoff(base=-1.0),
        lambda: DecorrelatedJitterBackoff(base=5.0, cap=4.0),
        lambda: Backoff(rng=random.Random(0), max_attempts=0),
        lambda: Backoff(rng=random.Random(0), reset_after=-1.0),
        lambda: Backoff(rng=random.Random(0), state=BackoffState(failures=-1)),
    ],
)
def test_invalid_settings_are_refused(make: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        make()


@given(policies, seeds, st.lists(times, min_size=1, max_size=20))
def test_tracker_is_deterministic_for_a_seeded_rng(
    policy: ExponentialBackoff | DecorrelatedJitterBackoff, seed: int, nows: list[float]
) -> None:
    def run() -> list[float]:
        backoff = Backoff(policy, rng=random.Random(seed))
        return [backoff.failure(now) for now in sorted(nows)]

    first, second = run(), run()
    assert first == second
    assert all(0.0 <= d <= policy.cap for d in first)


@given(exponential_policies(), seeds, st.integers(min_value=1, max_value=40))
def test_tracker_feeds_the_failure_count_to_the_policy(
    policy: ExponentialBackoff, seed: int, count: int
) -> None:
    backoff = Backoff(policy, rng=random.Random(seed))
    reference = random.Random(seed)
    for n in range(1, count + 1):
        assert backoff.failure(float(n)) == policy.compute(n, rng=reference)
    assert backoff.failures == count


@given(decorrelated_policies(), seeds, st.integers(min_value=1, max_value=40))
def test_tracker_feeds_the_previous_delay_to_decorrelated_jitter(
    policy: DecorrelatedJitterBackoff, seed: int, count: int
) -> None:
    backoff = Backoff(policy, rng=random.Random(seed))
    reference = random.Random(seed)
    previous: float | None = None
    for n in range(1, count + 1):
        previous = policy.compute(n, rng=reference, previous=previous)
        assert backoff.failure(float(n)) == previous


@given(st.integers(min_value=1, max_value=30), seeds)
def test_the_attempt_budget_raises_on_the_last_allowed_attempt(
    max_attempts: int, seed: int
) -> None:
    backoff = Backoff(rng=random.Random(seed), max_attempts=max_attempts)
    for n in range(1, max_attempts):
        backoff.failure(float(n))
    message = f"after {max_attempts} consecutive failed attempts"
    with pytest.raises(RetriesExhausted, match=message) as info:
        backoff.failure(float(max_attempts))
    assert info.value.attempts == max_attempts
    assert "restart the channel" in str(info.value)
    # Exhausted stays exhausted.
    with pytest.raises(RetriesExhausted):
        backoff.failure(float(max_attempts + 1))


def test_reset_clears_an_exhausted_budget() -> None:
    backoff = Backoff(rng=random.Random(0), max_attempts=2)
    backoff.failure(0.0)
    with pytest.raises(RetriesExhausted):
        backoff.failure(1.0)
    backoff.reset()
    assert backoff.failures == 0
    assert backoff.failure(2.0) >= 0.0


@given(
    st.integers(min_value=0, max_value=8),
    st.floats(min_value=0.0, max_value=1e4),
    times,
    st.floats(min_value=0.0, max_value=2e4),
    seeds,
)
def test_only_a_stable_connection_resets_the_count(
    prior: int, reset_after: float, connected_at: float, uptime: float, seed: int
) -> None:
    backoff = Backoff(rng=random.Random(seed), reset_after=reset_after)
    for _ in range(prior):
        backoff.failure(connected_at)
    backoff.connected(connected_at)
    assert backoff.is_connected
    dropped_at = connected_at + uptime
    backoff.failure(dropped_at)
    stable = dropped_at - connected_at >= reset_after
    assert backoff.failures == (1 if stable else prior + 1)
    assert not backoff.is_connected


def test_reset_boundary_is_inclusive_and_connected_is_idempotent() -> None:
    backoff = Backoff(rng=random.Random(1), reset_after=60.0)
    for t in range(3):
        backoff.failure(float(t))
    backoff.connected(100.0)
    backoff.connected(150.0)  # still the same connection: the clock keeps running from 100
    backoff.failure(159.999)
    assert backoff.failures == 4
    backoff.connected(200.0)
    backoff.failure(260.0)
    assert backoff.failures == 1


@given(
    st.floats(min_value=0.01, max_value=10.0),
    st.floats(min_value=1.0, max_value=4.0),
    st.floats(min_value=0.0, max_value=1.0),
    seeds,
    st.integers(min_value=1, max_value=80),
)
def test_proportional_jitter_stays_between_the_delay_and_its_jittered_top(
    base: float, factor: float, random_factor: float, seed: int, failures: int
) -> None:
    policy = ProportionalJitterBackoff(
        base=base, cap=base * 16, factor=factor, random_factor=random_factor
    )
    delay = policy.compute(failures, rng=random.Random(seed))
    ceiling = min(base * 16, base * factor ** (failures - 1))
    assert ceiling <= delay <= ceiling * (1 + random_factor) + 1e-9
    assert policy.ceiling(failures) == pytest.approx(ceiling)


@given(policies, seeds, st.integers(min_value=0, max_value=6), st.booleans())
def test_a_restored_tracker_continues_exactly(
    policy: ExponentialBackoff | DecorrelatedJitterBackoff, seed: int, prior: int, up: bool
) -> None:
    original = Backoff(policy, rng=random.Random(seed), max_attempts=10)
    for n in range(prior):
        original.failure(float(n))
    if up:
        original.connected(50.0)
    restored = Backoff(policy, rng=random.Random(seed + 1), max_attempts=10, state=original.state)
    assert restored.state == original.state
    # Give both the same randomness from here on; the budget must carry over.
    original.rng = random.Random(seed + 1)
    for n in range(prior, 9):
        assert restored.failure(60.0 + n) == original.failure(60.0 + n)
    with pytest.raises(RetriesExhausted):
        restored.failure(100.0)


def test_a_restart_never_resets_the_budget() -> None:
    backoff = Backoff(rng=random.Random(0), max_attempts=3)
    backoff.failure(0.0)
    backoff.failure(1.0)
    after_crash = Backoff(rng=random.Random(99), max_attempts=3, state=backoff.state)
    with pytest.raises(RetriesExhausted) as info:
        after_crash.failure(2.0)
    assert info.value.attempts == 3


def test_repr_shows_the_state() -> None:
    backoff = Backoff(ExponentialBackoff(base=1.0), rng=random.Random(0), max_attempts=10)
    assert repr(backoff) == (
        "<Backoff ExponentialBackoff DISCONNECTED failures=0/10 last_delay=None>"
    )
    delay = backoff.failure(0.0)
    backoff.connected(12.5)
    assert repr(backoff) == (
        f"<Backoff ExponentialBackoff CONNECTED since=12.5 failures=1/10 last_delay={delay!r}>"
    )


@pytest.mark.parametrize("now", [math.nan, math.inf, -math.inf])
def test_non_finite_clock_readings_are_refused(now: float) -> None:
    backoff = Backoff(rng=random.Random(0))
    with pytest.raises(ValueError, match="finite"):
        backoff.failure(now)
    with pytest.raises(ValueError, match="finite"):
        backoff.connected(now)
