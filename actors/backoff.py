"""Backoff: jittered delay policies and a failure tracker, for every retry loop.

One vocabulary serves the channel's reconnects, its send retries and the
supervisor's restart delays: a policy turns a failure count into a delay
from ``base`` (the first delay's ceiling) growing by ``factor`` up to ``cap``
(:class:`ExponentialBackoff` with full jitter, :class:`ProportionalJitterBackoff`
with Akka's proportional jitter, :class:`DecorrelatedJitterBackoff`), and
:class:`Backoff` tracks one loop's consecutive failures, applies the policy,
gives up after ``max_attempts``, and forgives old failures once the thing
has stayed up for ``reset_after`` seconds. Its whole state is a
:class:`BackoffState` that a restarted actor hands back, so a crash never
resets the count.
"""

# Design: decisions are pure. Time enters as ``now`` (seconds on the caller's
# clock) and randomness as an injected ``random.Random``, so a seeded test
# replays the exact delays and the task loop only sleeps (redis-py's
# backoff.py has the same shape). Jitter follows the AWS architecture blog,
# "Exponential Backoff And Jitter": full jitter spreads reconnects of many
# channels that failed together; decorrelated jitter is the alternative that
# grows from the previous delay. A rate-limit reply is not a failure: the
# server told us exactly when to come back, so it neither advances the
# exponent nor spends an attempt. The random generator's own state is not part
# of BackoffState: a restarted actor brings a fresh generator, and only the
# failure count, the last delay and the connection start need to survive.

from __future__ import annotations

import math
import random
from typing import Final, Protocol

import attrs

from ._clock import check_time
from .errors import RetriesExhausted

__all__ = [
    "DEFAULT_BASE_DELAY",
    "DEFAULT_FACTOR",
    "DEFAULT_MAX_DELAY",
    "DEFAULT_RESET_AFTER",
    "Backoff",
    "BackoffPolicy",
    "BackoffState",
    "DecorrelatedJitterBackoff",
    "ExponentialBackoff",
    "ProportionalJitterBackoff",
]

DEFAULT_BASE_DELAY: Final = 1.0  # seconds
DEFAULT_MAX_DELAY: Final = 60.0  # seconds, the cap on any single delay
DEFAULT_FACTOR: Final = 2.0  # growth per failure, dimensionless
DEFAULT_RESET_AFTER: Final = 60.0  # seconds a connection must stay up to be forgiven
_DECORRELATED_GROWTH: Final = 3.0  # AWS's multiplier on the previous delay


def _check_delay_bounds(base: float, cap: float) -> None:
    if not (math.isfinite(base) and base > 0.0):
        raise ValueError(f"base must be a finite number of seconds > 0, got {base!r}")
    if not (math.isfinite(cap) and cap >= base):
        raise ValueError(f"cap must be finite and >= base ({base!r}), got {cap!r}")


def _check_failures(failures: int) -> None:
    if failures < 1:
        raise ValueError(f"failures counts from 1 (the first failure), got {failures!r}")


class BackoffPolicy(Protocol):
    """Turns the number of consecutive failures into a delay in seconds."""

    def compute(self, failures: int, *, rng: random.Random, previous: float | None = None) -> float:
        """Return the delay to sleep before the next attempt.

        Args:
            failures: consecutive failures so far, counting from 1.
            rng: the random generator to draw jitter from.
            previous: the delay returned for the previous failure, or ``None``
                after the first failure (used by decorrelated jitter).

        Returns:
            The delay in seconds, never negative.

        Raises:
            ValueError: if ``failures`` is less than 1.
        """
        ...


@attrs.frozen(kw_only=True)
class ExponentialBackoff:
    """Exponential backoff with full jitter.

    The n-th consecutive failure sleeps ``uniform(0, min(cap, base * factor**(n-1)))``.

    Attributes:
        base: ceiling of the first delay, in seconds (> 0).
        cap: largest possible delay, in seconds (>= base).
        factor: growth of the ceiling per failure (>= 1).
    """

    base: float = DEFAULT_BASE_DELAY
    cap: float = DEFAULT_MAX_DELAY
    factor: float = DEFAULT_FACTOR

    def __attrs_post_init__(self) -> None:
        _check_delay_bounds(self.base, self.cap)
        if not (math.isfinite(self.factor) and self.factor >= 1.0):
            raise ValueError(f"factor must be finite and >= 1, got {self.factor!r}")

    def ceiling(self, failures: int) -> float:
        """Return the largest delay the n-th consecutive failure can draw.

        Args:
            failures: consecutive failures so far, counting from 1.

        Returns:
            ``min(cap, base * factor**(failures-1))`` in seconds; large counts
            saturate at ``cap`` instead of overflowing.

        Raises:
            ValueError: if ``failures`` is less than 1.
        """
        _check_failures(failures)
        try:
            return min(self.cap, self.base * self.factor ** (failures - 1))
        except OverflowError:
            return self.cap

    def compute(self, failures: int, *, rng: random.Random, previous: float | None = None) -> float:
        """Return ``uniform(0, ceiling(failures))`` (``previous`` is ignored).

        Args:
            failures: consecutive failures so far, counting from 1.
            rng: the random generator to draw jitter from.
            previous: unused; accepted so every policy has one signature.

        Returns:
            A delay in seconds within ``[0, ceiling(failures)]``.

        Raises:
            ValueError: if ``failures`` is less than 1.
        """
        # uniform(0, c) is c * random() with random() < 1, which rounds to at most c.
        return rng.uniform(0.0, self.ceiling(failures))


@attrs.frozen(kw_only=True)
class ProportionalJitterBackoff:
    """Exponential backoff with proportional jitter (Akka's BackoffSupervisor).

    The n-th consecutive failure sleeps
    ``min(cap, base * factor**(n-1)) * (1 + random_factor * U)`` with ``U``
    uniform in [0, 1): never less than the exponential delay, which suits a
    restart loop (a crashing actor must not come back early), while full
    jitter suits many clients reconnecting at once.

    Attributes:
        base: the first delay, in seconds (> 0).
        cap: the largest delay before jitter, in seconds (>= base).
        factor: growth per failure (>= 1).
        random_factor: jitter as a fraction of the delay (>= 0).
    """

    base: float = DEFAULT_BASE_DELAY
    cap: float = DEFAULT_MAX_DELAY
    factor: float = DEFAULT_FACTOR
    random_factor: float = 0.2

    def __attrs_post_init__(self) -> None:
        _check_delay_bounds(self.base, self.cap)
        if not (math.isfinite(self.factor) and self.factor >= 1.0):
            raise ValueError(f"factor must be finite and >= 1, got {self.factor!r}")
        if not (math.isfinite(self.random_factor) and self.random_factor >= 0.0):
            raise ValueError(f"random_factor must be finite and >= 0, got {self.random_factor!r}")

    def ceiling(self, failures: int) -> float:
        """The delay before jitter: ``min(cap, base * factor**(failures-1))``."""
        _check_failures(failures)
        try:
            return min(self.cap, self.base * self.factor ** (failures - 1))
        except OverflowError:
            return self.cap

    def compute(self, failures: int, *, rng: random.Random, previous: float | None = None) -> float:
        """Return ``ceiling(failures) * (1 + random_factor * U)`` (``previous`` is ignored)."""
        return self.ceiling(failures) * (1.0 + self.random_factor * rng.random())


@attrs.frozen(kw_only=True)
class DecorrelatedJitterBackoff:
    """Decorrelated jitter: each delay grows from the previous one.

    The delay is ``min(cap, uniform(base, previous * 3))``, starting from
    ``previous = base``, and always lies within ``[base, cap]``.

    Attributes:
        base: smallest delay, in seconds (> 0).
        cap: largest delay, in seconds (>= base).
    """

    base: float = DEFAULT_BASE_DELAY
    cap: float = DEFAULT_MAX_DELAY

    def __attrs_post_init__(self) -> None:
        _check_delay_bounds(self.base, self.cap)

    def compute(self, failures: int, *, rng: random.Random, previous: float | None = None) -> float:
        """Return ``min(cap, uniform(base, previous * 3))``.

        Args:
            failures: consecutive failures so far, counting from 1; only
                validated, the growth comes from ``previous``.
            rng: the random generator to draw jitter from.
            previous: the previous delay; ``None`` (or anything below
                ``base``) starts from ``base``.

        Returns:
            A delay in seconds within ``[base, cap]``.

        Raises:
            ValueError: if ``failures`` is less than 1.
        """
        _check_failures(failures)
        start = self.base if previous is None else max(self.base, previous)
        drawn = rng.uniform(self.base, start * _DECORRELATED_GROWTH)
        # Clamp both ends: uniform(a, b) may round a hair outside [a, b].
        return min(self.cap, max(self.base, drawn))


@attrs.frozen(kw_only=True)
class BackoffState:
    """Everything a :class:`Backoff` remembers, for export across a restart.

    Attributes:
        failures: consecutive failures recorded (0 after a reset).
        last_delay: the delay returned for the latest failure, or ``None``.
        connected_at: when the current connection came up (caller's clock, in
            seconds), or ``None`` while not connected.
    """

    failures: int = 0
    last_delay: float | None = None
    connected_at: float | None = None


class Backoff:
    """Tracks one connection's failures and decides how long to wait.

    The loop that owns a connection calls :meth:`connected` when it comes up,
    :meth:`failure` when an attempt fails or the connection drops; then it
    sleeps the returned delay. A server's ``retry_after`` is no failure: the
    loop waits exactly that and tells the tracker nothing.

    ``max_attempts`` bounds the attempts in one run of consecutive failures:
    the failure of attempt number ``max_attempts`` raises
    :class:`~actors.errors.RetriesExhausted` instead of returning a delay,
    because another attempt would exceed the limit. A connection that stayed
    up for at least ``reset_after`` seconds before it dropped starts the count
    again from zero; one that dropped sooner continues it.

    Args:
        policy: the delay policy.
        rng: the random generator for jitter (inject a seeded one in tests).
        max_attempts: most attempts in a run of consecutive failures, or
            ``None`` to retry forever.
        reset_after: seconds a connection must stay up to reset the count.
        state: a state exported by :attr:`state`, to continue from.

    Raises:
        ValueError: if ``max_attempts`` < 1, ``reset_after`` is negative or
            not finite, or ``state`` is inconsistent.
    """

    __slots__ = (
        "_connected_at",
        "_failures",
        "_last_delay",
        "max_attempts",
        "policy",
        "reset_after",
        "rng",
    )

    def __init__(
        self,
        policy: BackoffPolicy | None = None,
        *,
        rng: random.Random,
        max_attempts: int | None = None,
        reset_after: float = DEFAULT_RESET_AFTER,
        state: BackoffState | None = None,
    ) -> None:
        if max_attempts is not None and max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1 or None, got {max_attempts!r}")
        if not (math.isfinite(reset_after) and reset_after >= 0.0):
            raise ValueError(f"reset_after must be finite seconds >= 0, got {reset_after!r}")
        state = BackoffState() if state is None else state
        if state.failures < 0:
            raise ValueError(f"state.failures must be >= 0, got {state.failures!r}")
        self.policy: BackoffPolicy = ExponentialBackoff() if policy is None else policy
        self.rng = rng
        self.max_attempts = max_attempts
        self.reset_after = reset_after
        self._failures = state.failures
        self._last_delay = state.last_delay
        self._connected_at = state.connected_at

    @property
    def state(self) -> BackoffState:
        """A frozen snapshot to hand to a restarted owner's ``Backoff(state=...)``."""
        return BackoffState(
            failures=self._failures,
            last_delay=self._last_delay,
            connected_at=self._connected_at,
        )

    @property
    def failures(self) -> int:
        """Consecutive failures recorded so far (0 after a reset)."""
        return self._failures

    @property
    def is_connected(self) -> bool:
        """Whether :meth:`connected` was called since the last failure."""
        return self._connected_at is not None

    def connected(self, now: float) -> None:
        """Record that the connection came up; idempotent while it stays up.

        Args:
            now: the current time, in seconds.

        Raises:
            ValueError: if ``now`` is not finite.
        """
        check_time(now)
        if self._connected_at is None:
            self._connected_at = now

    def failure(self, now: float) -> float:
        """Record a failed attempt or a dropped connection.

        If the connection being lost had been up for at least ``reset_after``
        seconds, earlier failures are forgiven first.

        Args:
            now: the current time, in seconds.

        Returns:
            The delay to sleep before the next attempt, in seconds.

        Raises:
            RetriesExhausted: if this was attempt number ``max_attempts``; the
                state keeps the count, so every later call raises too until
                :meth:`reset`.
            ValueError: if ``now`` is not finite.
        """
        check_time(now)
        if self._connected_at is not None:
            if now - self._connected_at >= self.reset_after:
                self._failures = 0
                self._last_delay = None
            self._connected_at = None
        self._failures += 1
        if self.max_attempts is not None and self._failures >= self.max_attempts:
            raise RetriesExhausted(
                f"gave up after {self._failures} consecutive failed attempts "
                f"(max_attempts={self.max_attempts}); the failure is not going away on "
                "its own: look at the error of the last attempt, fix the cause, then "
                "restart the channel (or raise max_attempts)",
                attempts=self._failures,
            )
        delay = self.policy.compute(self._failures, rng=self.rng, previous=self._last_delay)
        self._last_delay = delay
        return delay

    def reset(self) -> None:
        """Forget all failures, e.g. after an operator fixed the cause."""
        self._failures = 0
        self._last_delay = None

    def __repr__(self) -> str:
        limit = "" if self.max_attempts is None else f"/{self.max_attempts}"
        link = (
            "DISCONNECTED"
            if self._connected_at is None
            else f"CONNECTED since={self._connected_at!r}"
        )
        return (
            f"<Backoff {type(self.policy).__name__} {link} "
            f"failures={self._failures}{limit} last_delay={self._last_delay!r}>"
        )
