"""Rate limiters: the arrival curve holds against adversarial clients, and no stricter.

The central property: for a client that takes every admission it can, at
arrival times chosen to hit window boundaries, equal timestamps, float
off-by-an-ulp instants, long idle gaps and pauses, every pair of admitted
timestamps ``t_i <= t_j`` satisfies
``units admitted in [t_i, t_j] <= curve.max_in_window(t_j - t_i)``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from fractions import Fraction
from typing import Any, Literal

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.ratelimit import (
    ARRIVAL_TOLERANCE,
    GCRA,
    ArrivalCurve,
    CompositeCurve,
    CompositeLimiter,
    CompositeLimiterState,
    GCRAState,
    KeyedLimiter,
    KeyedLimiterState,
)

NICE_RATES = [1.0, 2.0, 3.0, 30.0, 0.5, 1 / 3, 0.1, 7.3, 1000.0, 0.01]
rates = st.one_of(st.sampled_from(NICE_RATES), st.floats(min_value=0.01, max_value=1000.0))
bursts = st.integers(min_value=1, max_value=12)
# Clock readings: a MockClock near zero, a monotonic clock after months of
# uptime, and Unix time (the coarsest floats the limiter promises to handle).
starts = st.one_of(
    st.just(0.0),
    st.floats(min_value=-1e4, max_value=1e6),
    st.floats(min_value=1.6e9, max_value=1.8e9),
    st.just(2.0**31 + 0.1),
)
TINY = [-1e-6, -5e-7, -3e-7, -1e-9, -1e-12, 0.0, 1e-12, 1e-9, 3e-7, 5e-7, 1e-6]


@attrs.frozen
class Step:
    """One move of the adversarial client."""

    kind: Literal["advance", "follow", "just_before", "pause"]
    amount: float = 0.0  # seconds to advance, or how far ahead to pause
    cost: int = 1
    key: int = 0


def gaps(rate: float, burst: int) -> st.SearchStrategy[float]:
    interval = 1.0 / rate
    return st.one_of(
        st.just(0.0),
        st.integers(1, burst + 2).map(lambda k: k * interval),
        st.tuples(st.integers(0, burst + 2), st.sampled_from(TINY)).map(
            lambda kt: max(0.0, kt[0] * interval + kt[1])
        ),
        st.floats(min_value=0.0, max_value=3 * interval),
        st.floats(min_value=1e2, max_value=1e5),
    )


@st.composite
def plans(
    draw: st.DrawFn, rate: float, burst: int, keys: int = 1, max_steps: int = 40
) -> list[Step]:
    step = st.one_of(
        st.builds(Step, kind=st.just("advance"), amount=gaps(rate, burst)),
        st.builds(Step, kind=st.just("follow")),
        st.builds(Step, kind=st.just("just_before")),
        st.builds(Step, kind=st.just("pause"), amount=gaps(rate, burst)),
    )
    raw = draw(st.lists(step, min_size=1, max_size=max_steps))
    costs = st.integers(1, burst)
    key_ids = st.integers(0, keys - 1)
    return [attrs.evolve(s, cost=draw(costs), key=draw(key_ids)) for s in raw]


def assert_within_curve(
    admissions: Sequence[tuple[float, int]], curve: ArrivalCurve | CompositeCurve
) -> None:
    """Check every window spanned by two admitted timestamps."""
    units: dict[float, int] = defaultdict(int)
    for t, cost in admissions:
        units[t] += cost
    times = sorted(units)
    cumulative = [0]
    for t in times:
        cumulative.append(cumulative[-1] + units[t])
    for i, start in enumerate(times):
        for j in range(i, len(times)):
            count = cumulative[j + 1] - cumulative[i]
            window = times[j] - start
            assert count <= curve.max_in_window(window), (
                f"{count} units in [{start!r}, {times[j]!r}] (window {window!r}) "
                f"exceeds {curve.max_in_window(window)}"
            )


class Client:
    """A greedy client: takes every admission it can, at adversarial instants.

    ``acquire``, ``deadline`` and ``pause`` adapt one limiter type. Every
    attempt is checked against the limiter's own ``next_deadline`` (taken
    just before), which must predict the outcome exactly.
    """

    def __init__(
        self,
        acquire: Callable[[float, int, int], bool],
        deadline: Callable[[int, int], float],
        pause: Callable[[float, int], None],
        now: float,
    ) -> None:
        self.acquire = acquire
        self.deadline = deadline
        self.pause = pause
        self.now = now
        self.admitted: dict[int, list[tuple[float, int]]] = defaultdict(list)
        self.log: list[tuple[float, int]] = []  # (time, key) of every admission, in order
        self.pauses: list[tuple[int, float, int]] = []  # (key, until, len(log) at the call)

    def greedy(self, cost: int, key: int) -> None:
        for _ in range(10_000):
            expected = self.now >= self.deadline(cost, key)
            got = self.acquire(self.now, cost, key)
            assert got == expected, f"next_deadline predicted {expected}, got {got}"
            if not got:
                return
            self.admitted[key].append((self.now, cost))
            self.log.append((self.now, key))
        raise AssertionError("the limiter never refused a greedy client")

    def run(self, plan: list[Step]) -> None:
        for step in plan:
            if step.kind == "advance":
                self.now += step.amount
            elif step.kind == "follow":
                wait = max(0.0, self.deadline(step.cost, step.key) - self.now)
                target = self.now + wait
                while self.now + wait < target:
                    wait = math.nextafter(wait, math.inf)
                self.now += wait
            elif step.kind == "just_before":
                before = math.nextafter(self.deadline(step.cost, step.key), -math.inf)
                self.now = max(self.now, before)
            else:
                until = self.now + step.amount
                self.pause(until, step.key)
                self.pauses.append((step.key, until, len(self.log)))
                continue
            self.greedy(step.cost, step.key)

    def assert_pauses_respected(self, applies: Callable[[int, int], bool]) -> None:
        """Check that no admission after a pause call came before its end.

        ``applies(pause_key, admitted_key)`` says whether a pause covers a key.
        """
        for pause_key, until, before in self.pauses:
            for t, key in self.log[before:]:
                if applies(pause_key, key):
                    assert t >= until, f"admitted at {t!r} during a pause until {until!r}"


def gcra_client(limiter: GCRA, now: float) -> Client:
    return Client(
        acquire=lambda t, cost, key: limiter.try_acquire(t, cost),
        deadline=lambda cost, key: limiter.next_deadline(cost),
        pause=lambda until, key: limiter.pause_until(until),
        now=now,
    )


# ---------------------------------------------------------------- arrival curves


@settings(max_examples=150, deadline=None)
@given(st.data(), rates, bursts, starts)
def test_gcra_never_exceeds_its_curve(
    data: st.DataObject, rate: float, burst: int, start: float
) -> None:
    limiter = GCRA(rate=rate, burst=burst)
    client = gcra_client(limiter, start)
    client.run(data.draw(plans(rate, burst)))
    assert_within_curve(client.admitted[0], limiter.arrival_curve)
    client.assert_pauses_respected(lambda paused, key: True)


@settings(max_examples=100, deadline=None)
@given(
    st.data(),
    rates,
    bursts,
    st.integers(min_value=1, max_value=3),
    st.integers(min_value=1, max_value=5),
    starts,
)
def test_keyed_limiter_never_exceeds_the_curve_of_any_key(
    data: st.DataObject, rate: float, burst: int, max_keys: int, keys: int, start: float
) -> None:
    limiter: KeyedLimiter[int] = KeyedLimiter(rate=rate, burst=burst, max_keys=max_keys)

    def acquire(t: float, cost: int, key: int) -> bool:
        admitted = limiter.try_acquire(t, cost, key=key)
        assert len(limiter) <= max_keys
        return admitted

    client = Client(
        acquire=acquire,
        deadline=lambda cost, key: limiter.next_deadline(cost, key=key),
        pause=lambda until, key: limiter.pause_until(until, key=key),
        now=start,
    )
    client.run(data.draw(plans(rate, burst, keys=keys)))
    for admissions in client.admitted.values():
        assert_within_curve(admissions, limiter.arrival_curve)
    client.assert_pauses_respected(lambda paused, key: paused == key)


@settings(max_examples=100, deadline=None)
@given(st.data(), rates, bursts, rates, bursts, st.integers(1, 3), starts)
def test_composite_never_exceeds_any_part(
    data: st.DataObject,
    channel_rate: float,
    channel_burst: int,
    peer_rate: float,
    peer_burst: int,
    max_keys: int,
    start: float,
) -> None:
    channel = GCRA(rate=channel_rate, burst=channel_burst)
    peers: KeyedLimiter[int] = KeyedLimiter(rate=peer_rate, burst=peer_burst, max_keys=max_keys)
    limiter = CompositeLimiter(channel, peers)
    burst = min(channel_burst, peer_burst)

    def acquire(t: float, cost: int, key: int) -> bool:
        before = (channel.state, dict(peers.state.buckets).get(key))
        admitted = limiter.try_acquire(t, cost, key=key)
        after = (channel.state, dict(peers.state.buckets).get(key))
        # Atomic: both parts charged, or neither.
        assert (before[0] != after[0]) == admitted
        assert (before[1] != after[1]) == admitted
        return admitted

    # Alternate pauses between the whole composite and single keys.
    def pause(until: float, key: int) -> None:
        limiter.pause_until(until, key=key if key % 2 else None)

    client = Client(
        acquire=acquire,
        deadline=lambda cost, key: limiter.next_deadline(cost, key=key),
        pause=pause,
        now=start,
    )
    client.run(data.draw(plans(max(channel_rate, peer_rate), burst, keys=3)))
    everything = sorted(a for admissions in client.admitted.values() for a in admissions)
    assert_within_curve(everything, channel.arrival_curve)
    for admissions in client.admitted.values():
        assert_within_curve(admissions, limiter.arrival_curve)
        assert_within_curve(admissions, peers.arrival_curve)
    # Odd keys paused only themselves, even ones paused everything.
    client.assert_pauses_respected(lambda paused, key: paused == key or paused % 2 == 0)


def test_the_curve_is_the_token_bucket_bound_plus_tolerance() -> None:
    curve = GCRA(rate=3.0, burst=2).arrival_curve
    assert (curve.rate, curve.burst) == (3.0, 2)
    assert curve.tolerance == pytest.approx(2e-6)
    assert curve.max_in_window(0.0) == 2
    assert curve.max_in_window(1.0) == 5
    assert curve.max_in_window(1.0 - 3e-6) == 4
    exact = ArrivalCurve(rate=3.0, burst=2)
    # 3 * float(1/3) is a hair below 1 as an exact rational: no rounding up.
    assert Fraction(1 / 3) * 3 < 1
    assert exact.max_in_window(1 / 3) == 2
    with pytest.raises(ValueError, match="window"):
        exact.max_in_window(-1.0)
    with pytest.raises(ValueError, match="window"):
        exact.max_in_window(math.inf)


def test_composite_curve_is_the_pointwise_minimum() -> None:
    curve = CompositeCurve(
        parts=(ArrivalCurve(rate=1.0, burst=10), ArrivalCurve(rate=100.0, burst=1))
    )
    assert (curve.rate, curve.burst) == (1.0, 1)
    assert curve.max_in_window(0.0) == 1
    assert curve.max_in_window(0.05) == 6
    assert curve.max_in_window(10.0) == 20


# --------------------------------------------------------------- not too strict


@settings(deadline=None)
@given(rates, bursts, starts, st.integers(min_value=1, max_value=300))
def test_a_client_at_exactly_the_rate_is_always_admitted(
    rate: float, burst: int, start: float, count: int
) -> None:
    limiter = GCRA(rate=rate, burst=burst)
    for k in range(count):
        now = start + k / rate
        assert limiter.try_acquire(now), f"arrival {k} at {now!r} refused: {limiter!r}"


@settings(deadline=None)
@given(rates, bursts, starts, st.integers(min_value=1, max_value=100), st.integers(1, 4))
def test_keyed_clients_at_exactly_the_rate_are_always_admitted(
    rate: float, burst: int, start: float, count: int, keys: int
) -> None:
    limiter: KeyedLimiter[int] = KeyedLimiter(rate=rate, burst=burst, max_keys=keys)
    for key in range(keys):
        assert all(limiter.try_acquire(start, key=key) for _ in range(burst))
        assert not limiter.try_acquire(start, key=key)
    for k in range(1, count):
        for key in range(keys):
            assert limiter.try_acquire(start + k / rate, key=key), f"{key} refused at step {k}"


@settings(deadline=None)
@given(rates, bursts, rates, bursts, starts, st.integers(min_value=1, max_value=100))
def test_composite_admits_a_burst_and_then_the_slowest_rate(
    rate_a: float, burst_a: int, rate_b: float, burst_b: int, start: float, count: int
) -> None:
    limiter = CompositeLimiter(
        GCRA(rate=rate_a, burst=burst_a),
        KeyedLimiter(rate=rate_b, burst=burst_b, max_keys=1),
    )
    burst, rate = min(burst_a, burst_b), min(rate_a, rate_b)
    assert all(limiter.try_acquire(start, key="peer") for _ in range(burst))
    assert not limiter.try_acquire(start, key="peer")
    for k in range(1, count):
        assert limiter.try_acquire(start + k / rate, key="peer"), f"refused at step {k}"


@given(rates, bursts, starts)
def test_a_fresh_bucket_admits_burst_at_once_then_one_per_interval(
    rate: float, burst: int, start: float
) -> None:
    limiter = GCRA(rate=rate, burst=burst)
    assert limiter.next_deadline() == -math.inf
    assert all(limiter.try_acquire(start) for _ in range(burst))
    assert not limiter.try_acquire(start)
    assert limiter.delay(start) > 0.0
    for k in range(1, 20):
        assert limiter.try_acquire(start + k / rate)
        assert not limiter.try_acquire(start + k / rate)


@given(rates, bursts, starts)
def test_a_fresh_bucket_admits_a_full_burst_in_one_go(
    rate: float, burst: int, start: float
) -> None:
    limiter = GCRA(rate=rate, burst=burst)
    assert limiter.try_acquire(start, burst)
    assert not limiter.try_acquire(start, 1)


@settings(deadline=None)
@given(rates, bursts, starts, st.floats(min_value=0.0, max_value=50.0))
def test_a_client_that_sleeps_delay_gets_the_whole_curve(
    rate: float, burst: int, start: float, horizon_intervals: float
) -> None:
    limiter = GCRA(rate=rate, burst=burst)
    horizon = horizon_intervals / rate
    now, admitted = start, 0
    while now - start <= horizon:
        if limiter.try_acquire(now):
            admitted += 1
        else:
            delay = limiter.delay(now)
            assert delay > 0.0
            assert limiter.try_acquire(now + delay), "delay() must land on an admitting instant"
            now += delay
            admitted += 1 if now - start <= horizon else 0
    assert admitted >= burst + math.floor(rate * horizon)
    assert admitted <= limiter.arrival_curve.max_in_window(horizon)


# ------------------------------------------------------------------ GCRA details


def reference_decisions(rate: float, burst: int, arrivals: list[tuple[float, int]]) -> list[bool]:
    """The same GCRA with Fractions of nanoseconds: decisions must agree exactly."""
    interval = Fraction(10**9) / Fraction(rate)
    limit = burst * interval + 1000  # ARRIVAL_TOLERANCE in ns
    tat: Fraction | None = None
    decisions = []
    for now, cost in arrivals:
        ns = Fraction(math.floor(now * 1e9))
        new_tat = max(tat, ns) if tat is not None else ns
        new_tat += cost * interval
        ok = new_tat - ns <= limit
        if ok:
            tat = new_tat
        decisions.append(ok)
    return decisions


@given(st.data(), rates, bursts, starts)
def test_gcra_matches_an_exact_rational_reference(
    data: st.DataObject, rate: float, burst: int, start: float
) -> None:
    limiter = GCRA(rate=rate, burst=burst)
    steps = data.draw(
        st.lists(st.tuples(gaps(rate, burst), st.integers(1, burst)), min_size=1, max_size=60)
    )
    arrivals, now = [], start
    for gap, cost in steps:
        now += gap
        arrivals.append((now, cost))
    ours = [limiter.try_acquire(t, cost) for t, cost in arrivals]
    assert ours == reference_decisions(rate, burst, arrivals)


def test_arrivals_within_the_tolerance_count_as_on_time() -> None:
    limiter = GCRA(rate=1.0, burst=1)
    assert limiter.try_acquire(100.0)
    assert not limiter.try_acquire(101.0 - 2 * ARRIVAL_TOLERANCE)
    assert limiter.try_acquire(101.0 - ARRIVAL_TOLERANCE / 2)


@settings(max_examples=100, deadline=None)
@given(st.data(), rates, bursts, starts, st.sampled_from([2e-6, 0.001, 0.005, 0.02, 0.3]))
def test_a_gcra_with_a_tolerance_never_exceeds_its_curve(
    data: st.DataObject, rate: float, burst: int, start: float, tolerance: float
) -> None:
    limiter = GCRA(rate=rate, burst=burst, tolerance=tolerance)
    client = gcra_client(limiter, start)
    client.run(data.draw(plans(rate, burst)))
    assert limiter.arrival_curve.tolerance > tolerance
    assert_within_curve(client.admitted[0], limiter.arrival_curve)


def pace(limiter: GCRA, lateness: float, sends: int) -> float:
    """A pacer that wakes ``lateness`` after each deadline; the time of its last send."""
    now = 0.0
    for _ in range(sends):
        now = max(now, limiter.next_deadline()) + lateness
        assert limiter.try_acquire(now)
    return now


def test_a_pacer_that_wakes_late_keeps_the_rate_within_its_tolerance() -> None:
    # 80/s paced (burst 1), each wake-up 1 ms late, as a real event loop's timers are.
    strict = GCRA(rate=80.0, burst=1)
    assert pace(strict, 0.001, 801) == pytest.approx(800 * (1 / 80 + 0.001), abs=0.002)
    # Without a tolerance, every turn loses its lateness: 74/s instead of 80.
    tolerant = GCRA(rate=80.0, burst=1, tolerance=0.005)
    assert pace(tolerant, 0.001, 801) == pytest.approx(10.0 - 0.004 + 0.001)
    # No two sends closer than the interval less the tolerance, and never a burst.
    limiter = GCRA(rate=80.0, burst=1, tolerance=0.005)
    assert limiter.try_acquire(1.0)
    assert not limiter.try_acquire(1.0)
    assert not limiter.try_acquire(1.0 + 1 / 80 - 0.006)
    assert limiter.try_acquire(1.0 + 1 / 80 - 0.005)
    assert limiter.arrival_curve.max_in_window(1.0) == 1 + 80  # + floor(80 * 1.005...)
    assert repr(GCRA(rate=80, burst=1, tolerance=0.005)) == (
        "<GCRA rate=80.0/s burst=1 tat=None tolerance=0.005>"
    )
    restored = GCRA(rate=80.0, burst=1, tolerance=0.005, state=limiter.state)
    assert restored.tolerance == 0.005


def test_pause_blocks_until_exactly_t_and_only_extends() -> None:
    limiter = GCRA(rate=10.0, burst=5)
    limiter.pause_until(50.0)
    limiter.pause_until(40.0)  # earlier: ignored
    assert limiter.next_deadline() == 50.0
    assert not limiter.try_acquire(math.nextafter(50.0, -math.inf))
    assert limiter.delay(49.0) == 1.0
    # The bucket refilled during the pause: the full burst, and no more.
    assert all(limiter.try_acquire(50.0) for _ in range(5))
    assert not limiter.try_acquire(50.0)


@given(rates, bursts, starts, st.lists(st.floats(0.0, 3.0), min_size=1, max_size=30))
def test_exported_state_restores_at_most_a_nanosecond_stricter(
    rate: float, burst: int, start: float, gaps_: list[float]
) -> None:
    limiter = GCRA(rate=rate, burst=burst)
    now = start
    for gap in gaps_:
        now += gap / rate
        limiter.try_acquire(now)
    restored = GCRA(rate=rate, burst=burst, state=limiter.state)
    assert restored.state == limiter.state
    for cost in range(1, burst + 1):
        original, again = limiter.next_deadline(cost), restored.next_deadline(cost)
        assert original <= again <= original + 1e-9 + 2 * math.ulp(original)


def test_a_restart_never_refills_the_bucket() -> None:
    limiter = GCRA(rate=1.0, burst=3)
    assert all(limiter.try_acquire(10.0) for _ in range(3))
    restarted = GCRA(rate=1.0, burst=3, state=limiter.state)
    assert not restarted.try_acquire(10.5)
    assert restarted.try_acquire(11.0)


def keyed_any() -> KeyedLimiter[Any]:
    return KeyedLimiter(rate=1.0, burst=1, max_keys=1)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: GCRA(rate=0.0, burst=1), "rate"),
        (lambda: GCRA(rate=math.nan, burst=1), "rate"),
        (lambda: GCRA(rate=1.0, burst=0), "burst"),
        (lambda: GCRA(rate=1.0, burst=1, tolerance=0.0), "tolerance"),
        (lambda: GCRA(rate=1.0, burst=1, tolerance=2.0), "tolerance"),
        (lambda: GCRA(rate=1.0, burst=2).try_acquire(0.0, 3), "cost"),
        (lambda: GCRA(rate=1.0, burst=2).try_acquire(0.0, 0), "cost"),
        (lambda: GCRA(rate=1.0, burst=2).delay(math.nan), "now"),
        (lambda: GCRA(rate=1.0, burst=2).try_acquire(2.0**32), "now"),
        (lambda: GCRA(rate=1.0, burst=2).pause_until(math.inf), "t"),
        (lambda: KeyedLimiter(rate=1.0, burst=1, max_keys=0), "max_keys"),
        (lambda: keyed_any().try_acquire(0.0, key=None), "needs a key"),
        (lambda: CompositeLimiter(), "at least one"),
        (
            lambda: CompositeLimiter(GCRA(rate=1.0, burst=3), GCRA(rate=1.0, burst=2)).delay(
                0.0, 3
            ),
            "smallest burst",
        ),
        (lambda: CompositeLimiter(GCRA(rate=1.0, burst=1)).pause_until(1.0, key="x"), "no part"),
    ],
)
def test_invalid_arguments_are_refused(make: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_reprs_show_the_state() -> None:
    limiter = GCRA(rate=2, burst=2)
    assert repr(limiter) == "<GCRA rate=2.0/s burst=2 tat=None>"
    limiter.try_acquire(12.0)
    assert repr(limiter) == "<GCRA rate=2.0/s burst=2 tat=12.5>"
    limiter.pause_until(20.0)
    assert repr(limiter) == "<GCRA rate=2.0/s burst=2 tat=12.5 paused_until=20.0>"
    peers: KeyedLimiter[str] = KeyedLimiter(rate=1.0, burst=1, max_keys=100)
    peers.try_acquire(0.0, key="chat-1")
    assert repr(peers) == "<KeyedLimiter rate=1.0/s burst=1 keys=1/100>"
    both = CompositeLimiter(limiter, peers)
    assert repr(both) == f"<CompositeLimiter [{limiter!r}, {peers!r}]>"


# ---------------------------------------------------------------- keyed details


def test_a_full_table_of_busy_buckets_refuses_new_keys_until_one_frees() -> None:
    limiter: KeyedLimiter[str] = KeyedLimiter(rate=1.0, burst=2, max_keys=2)
    assert limiter.try_acquire(0.0, 2, key="a")  # busy until 2.0
    assert limiter.try_acquire(0.5, 1, key="b")  # busy until 1.5
    assert not limiter.try_acquire(1.0, key="c")
    assert limiter.next_deadline(key="c") == 1.5
    assert limiter.delay(1.0, key="c") == 0.5
    assert not limiter.try_acquire(math.nextafter(1.5, -math.inf), key="c")
    assert limiter.try_acquire(1.5, key="c")
    assert {key for key, _ in limiter.state.buckets} == {"a", "c"}


def test_eviction_skips_a_busy_least_recently_used_bucket() -> None:
    limiter: KeyedLimiter[str] = KeyedLimiter(rate=1.0, burst=5, max_keys=2)
    assert limiter.try_acquire(0.0, 5, key="old")  # least recently used, busy until 5.0
    assert limiter.try_acquire(1.0, 1, key="new")  # full again at 2.0
    assert limiter.try_acquire(3.0, key="third")  # evicts "new", never "old"
    assert dict(limiter.state.buckets)["old"] == GCRAState(tat_ns=5_000_000_000)
    # Three units refilled since 0.0; a fresh bucket would take five.
    assert not limiter.try_acquire(3.0, 4, key="old")
    assert limiter.try_acquire(3.0, 3, key="old")


@settings(deadline=None)
@given(st.integers(min_value=1, max_value=4), st.integers(min_value=0, max_value=30))
def test_churn_through_other_keys_never_refills_a_busy_key(max_keys: int, others: int) -> None:
    limiter: KeyedLimiter[int] = KeyedLimiter(rate=1.0, burst=3, max_keys=max_keys)
    assert limiter.try_acquire(0.0, 3, key=-1)
    for i in range(others):
        now = i * 0.03  # all before 0.9 s: key -1 has not earned a unit back yet
        limiter.try_acquire(now, key=i)
        assert not limiter.try_acquire(now, key=-1)
    assert limiter.next_deadline(key=-1) == pytest.approx(1.0, abs=2 * ARRIVAL_TOLERANCE)
    assert not limiter.try_acquire(1.0, 2, key=-1)
    assert limiter.try_acquire(1.0, 1, key=-1)


def test_a_key_pause_without_room_holds_back_every_new_key() -> None:
    limiter: KeyedLimiter[str] = KeyedLimiter(rate=1.0, burst=1, max_keys=1)
    assert limiter.try_acquire(0.0, key="a")
    limiter.pause_until(10.0, key="b")  # no room for "b": applies to all new keys
    assert limiter.try_acquire(5.0, key="a")  # keys with a bucket are unaffected
    assert not limiter.try_acquire(9.0, key="b")
    assert not limiter.try_acquire(9.0, key="c")
    assert limiter.next_deadline(key="b") == 10.0
    assert limiter.try_acquire(10.0, key="b")


def test_keyed_pause_for_all_and_for_one() -> None:
    limiter: KeyedLimiter[str] = KeyedLimiter(rate=10.0, burst=1, max_keys=10)
    limiter.pause_until(3.0, key="a")
    assert not limiter.try_acquire(2.0, key="a")
    assert limiter.try_acquire(2.0, key="b")
    limiter.pause_until(4.0)
    assert not limiter.try_acquire(3.5, key="c")
    assert limiter.next_deadline(key="a") == 4.0
    assert limiter.try_acquire(4.0, key="a")


def test_keyed_state_round_trip_and_refusal_to_shrink() -> None:
    limiter: KeyedLimiter[str] = KeyedLimiter(rate=1.0, burst=1, max_keys=3)
    for i, key in enumerate("xyz"):
        limiter.try_acquire(float(i), key=key)
    limiter.pause_until(7.0, key="y")
    state = limiter.state
    assert [key for key, _ in state.buckets] == ["x", "y", "z"]
    restored = KeyedLimiter(rate=1.0, burst=1, max_keys=3, state=state)
    assert restored.state == state
    assert not restored.try_acquire(0.5, key="new")  # no bucket is full yet
    assert restored.try_acquire(2.5, key="new")  # "x" is full again: evicted
    assert [key for key, _ in restored.state.buckets] == ["y", "z", "new"]
    assert not restored.try_acquire(2.5, key="y")  # still paused
    with pytest.raises(ValueError, match="max_keys"):
        KeyedLimiter(rate=1.0, burst=1, max_keys=2, state=state)


# ------------------------------------------------------------ composite details


def test_a_refusal_by_one_part_spends_no_other_budget() -> None:
    channel = GCRA(rate=30.0, burst=30)
    peers: KeyedLimiter[str] = KeyedLimiter(rate=1.0, burst=1, max_keys=10)
    limiter = CompositeLimiter(channel, peers)
    assert limiter.try_acquire(0.0, key="chat")
    spent = channel.state
    for _ in range(100):
        assert not limiter.try_acquire(0.0, key="chat")
    assert channel.state == spent
    assert limiter.delay(0.0, key="chat") == pytest.approx(1.0 - ARRIVAL_TOLERANCE, abs=1e-12)
    assert limiter.delay(0.0, key="other") == 0.0


def test_a_composite_needs_distinct_parts_and_a_key_for_keyed_parts() -> None:
    channel = GCRA(rate=1.0, burst=1)
    with pytest.raises(ValueError, match="once"):
        CompositeLimiter(channel, channel)
    limiter = CompositeLimiter(channel, KeyedLimiter(rate=1.0, burst=1, max_keys=1))
    with pytest.raises(ValueError, match="key"):
        limiter.try_acquire(0.0)
    assert channel.state == GCRAState()


def test_composite_state_round_trip() -> None:
    channel = GCRA(rate=2.0, burst=2)
    peers: KeyedLimiter[Hashable] = KeyedLimiter(rate=1.0, burst=1, max_keys=4)
    limiter = CompositeLimiter(channel, peers)
    limiter.try_acquire(1.0, key="a")
    limiter.pause_until(5.0)
    saved = limiter.state
    fresh_parts: tuple[Any, ...] = (
        GCRA(rate=2.0, burst=2),
        KeyedLimiter(rate=1.0, burst=1, max_keys=4),
    )
    restored = CompositeLimiter(*fresh_parts, state=saved)
    assert restored.state == saved
    assert fresh_parts[0].state == GCRAState()  # the given parts are not mutated
    assert restored.next_deadline(key="a") == limiter.next_deadline(key="a") == 5.0
    with pytest.raises(ValueError, match="does not fit"):
        CompositeLimiter(*reversed(fresh_parts), state=saved)
    with pytest.raises(ValueError, match="part states"):
        CompositeLimiter(fresh_parts[0], state=saved)
    assert isinstance(saved, CompositeLimiterState)
    assert isinstance(saved.parts[1], KeyedLimiterState)


def test_the_shared_deadline_leaves_out_what_one_key_owns() -> None:
    limiter = CompositeLimiter(
        GCRA(rate=10.0, burst=1), KeyedLimiter(rate=1.0, burst=1, max_keys=10)
    )
    assert limiter.shared_deadline() == -math.inf
    assert limiter.try_acquire(5.0, key="a")
    # "a" waits on its own bucket (a second); everyone waits on the channel's (0.1 s).
    assert limiter.next_deadline(key="a") == pytest.approx(6.0)
    assert limiter.shared_deadline() == pytest.approx(5.1)
    assert limiter.next_deadline(key="b") == limiter.shared_deadline()
    limiter.pause_until(7.0, key="b")  # one key's pause is its own
    assert limiter.shared_deadline() == pytest.approx(5.1)
    limiter.parts[1].pause_until(8.0)  # the keyed part's pause of every key is shared
    assert limiter.shared_deadline() == 8.0
    limiter.pause_until(9.0)  # and so is the pause of everything
    assert limiter.shared_deadline() == 9.0


def test_an_unlimited_bucket_admits_everything_but_a_pause_and_keeps_no_schedule() -> None:
    limiter = GCRA(rate=math.inf, burst=1)
    assert all(limiter.try_acquire(5.0) for _ in range(10_000))
    assert limiter.state == GCRAState()  # fresh after any number of admissions
    assert limiter.next_deadline() == -math.inf
    limiter.pause_until(7.0)  # the platform asked to wait: that still holds
    assert not limiter.try_acquire(6.0)
    assert limiter.delay(6.0) == 1.0
    assert limiter.try_acquire(7.0)
    # A schedule saved under a limit binds nothing once the limit is off.
    limited = GCRA(rate=1.0, burst=1)
    assert limited.try_acquire(5.0)
    restored = GCRA(rate=math.inf, burst=1, state=limited.state)
    assert restored.try_acquire(5.0)
    assert restored.state == GCRAState()
    with pytest.raises(ValueError, match="unlimited"):
        restored.arrival_curve.max_in_window(1.0)


def test_an_unlimited_keyed_limiter_keeps_a_bucket_only_for_a_paused_key() -> None:
    limiter: KeyedLimiter[str] = KeyedLimiter(rate=math.inf, burst=1, max_keys=2)
    assert all(limiter.try_acquire(1.0, key=f"peer-{i}") for i in range(1_000))
    assert len(limiter) == 0  # a thousand recipients, no state
    limiter.pause_until(3.0, key="slow")
    assert len(limiter) == 1
    assert not limiter.try_acquire(2.0, key="slow")
    assert limiter.try_acquire(2.0, key="other")
    assert limiter.try_acquire(3.0, key="slow")
    composite = CompositeLimiter(
        GCRA(rate=math.inf, burst=1), KeyedLimiter(rate=math.inf, burst=1, max_keys=2)
    )
    assert all(composite.try_acquire(1.0, key=f"peer-{i}") for i in range(100))
    assert composite.state == CompositeLimiterState(parts=(GCRAState(), KeyedLimiterState()))
    assert composite.admits_freely(1.0, key="peer-0")
    # Beside a limited part, the unlimited one leaves the bound to it.
    mixed = CompositeLimiter(
        GCRA(rate=2.0, burst=1), KeyedLimiter(rate=math.inf, burst=1, max_keys=2)
    )
    assert not mixed.admits_freely(1.0, key="peer-0")  # it charges: the full path
    assert mixed.arrival_curve.max_in_window(1.0) == GCRA(
        rate=2.0, burst=1
    ).arrival_curve.max_in_window(1.0)


def test_with_no_limit_only_a_recipient_s_own_pause_holds_it() -> None:
    """Limits off: buckets exist only for paused recipients, and a full table of
    them never holds back a recipient that was not paused."""
    limiter: KeyedLimiter[str] = KeyedLimiter(rate=math.inf, burst=1, max_keys=2)
    limiter.pause_until(100.0, key="a")
    limiter.pause_until(100.0, key="b")  # the table is full of paused recipients
    assert limiter.delay(1.0, key="c") == 0.0
    assert limiter.try_acquire(1.0, key="c")
    composite = CompositeLimiter(
        GCRA(rate=math.inf, burst=1), KeyedLimiter(rate=math.inf, burst=1, max_keys=2)
    )
    composite.pause_until(100.0, key="a")
    composite.pause_until(100.0, key="b")
    assert composite.delay(1.0, key="c") == 0.0
    # Pauses long over make room for new ones instead of holding everyone new.
    stale: KeyedLimiter[str] = KeyedLimiter(rate=math.inf, burst=1, max_keys=2)
    stale.pause_until(5.0, key="a")
    stale.pause_until(5.0, key="b")
    assert stale.try_acquire(100.0, key="d")
    assert stale.try_acquire(100.0, key="e")
    stale.pause_until(130.0, key="d")
    stale.pause_until(130.0, key="e")
    assert stale.try_acquire(100.0, key="f")  # never paused: not held by d's and e's
    assert not stale.try_acquire(100.0, key="d")
    assert stale.try_acquire(130.0, key="d")
    assert len(stale) <= 2


def _unlimited_pair() -> tuple[CompositeLimiter, CompositeLimiter]:
    """Two unlimited channel limiters: the second never takes the fast path."""

    def make() -> CompositeLimiter:
        return CompositeLimiter(
            GCRA(rate=math.inf, burst=1), KeyedLimiter(rate=math.inf, burst=1, max_keys=3)
        )

    fast, slow = make(), make()
    slow._unlimited = False  # the parts' own arithmetic, every time
    assert fast._unlimited
    return fast, slow


_limits_off_steps = st.lists(
    st.tuples(
        st.sampled_from(
            ["acquire", "delay", "freely", "pause", "pause_key", "pause_keyed", "pause_bucket"]
        ),
        st.sampled_from(["a", "b", "c", "d", "e"]),
        st.floats(min_value=0.0, max_value=3.0),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(_limits_off_steps)
def test_limits_off_admit_as_the_parts_would(steps: list[tuple[str, str, float]]) -> None:
    # Limits off, a channel's limiter skips its parts unless a pause holds: it
    # must answer exactly as the parts do, through pauses of every kind and
    # a full table of paused keys.
    fast, slow = _unlimited_pair()
    for limiter in (fast, slow):
        with pytest.raises(ValueError, match="needs a key"):
            limiter.try_acquire(0.0)
    now = 1.0
    for kind, key, amount in steps:
        now += amount / 4
        for limiter in (fast, slow):
            if kind == "pause":
                limiter.pause_until(now + amount)
            elif kind == "pause_key":
                limiter.pause_until(now + amount, key=key)
            elif kind == "pause_keyed":
                limiter.parts[1].pause_until(now + amount)
            elif kind == "pause_bucket":
                limiter.parts[0].pause_until(now + amount)
        if kind == "acquire":
            assert fast.try_acquire(now, key=key) == slow.try_acquire(now, key=key)
        elif kind == "delay":
            assert fast.delay(now, key=key) == slow.delay(now, key=key)
        elif kind == "freely" and fast.admits_freely(now, key=key):
            # The send path's one check: then the parts admit, and charge nothing.
            before = slow.state
            assert slow.delay(now, key=key) == 0.0 and slow.try_acquire(now, key=key)
            assert slow.state == before
            assert fast.try_acquire(now, key=key)
        assert fast.state == slow.state


def test_limits_off_refuse_a_bad_cost_or_key_as_the_parts_do() -> None:
    fast, slow = _unlimited_pair()
    for limiter in (fast, slow):
        with pytest.raises(ValueError, match="cost must be an integer"):
            limiter.delay(1.0, 1.0, key="a")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="unhashable"):
            limiter.try_acquire(1.0, key=["a"])
