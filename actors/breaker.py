"""A circuit breaker: stop calling a peer that keeps failing, probe, recover.

CLOSED lets calls through and counts consecutive failures; at
``failure_threshold`` it opens. OPEN refuses every call with
:class:`~actors.errors.CircuitOpen` until ``reset_timeout`` has passed, then
the breaker is HALF_OPEN: up to ``half_open_max_calls`` trial calls go
through at once; a trial success closes it, a trial failure opens it again
with a fresh timeout. Its whole state is a :class:`CircuitBreakerState` that a
restarted actor hands back, so a crash never closes an open breaker.
"""

# Design: a pure state machine; time enters as ``now`` and nothing reads a
# clock, so the transitions are tested exhaustively with hypothesis and the
# actor loop only applies them. OPEN turns into HALF_OPEN lazily: the stored
# state changes when ``allow`` grants the first trial, while
# ``current_state(now)`` already reports HALF_OPEN once the timeout passed.
# Results reported while the stored state is OPEN come from calls admitted
# before the breaker opened; they are counted in the statistics but change
# nothing, so a straggler can neither close the breaker nor push its retry
# time further out. A trial whose caller never reports (cancelled, crashed)
# would wedge HALF_OPEN forever, so trial slots are reclaimed ``reset_timeout``
# after the trial round began.

from __future__ import annotations

import enum
import math
from typing import Any, Final, NoReturn

import attrs

from ._clock import check_time
from .errors import CircuitOpen

__all__ = [
    "DEFAULT_FAILURE_THRESHOLD",
    "DEFAULT_HALF_OPEN_MAX_CALLS",
    "DEFAULT_RESET_TIMEOUT",
    "BreakerState",
    "BreakerStatistics",
    "CircuitBreaker",
    "CircuitBreakerState",
]

DEFAULT_FAILURE_THRESHOLD: Final = 5  # consecutive failures
DEFAULT_RESET_TIMEOUT: Final = 30.0  # seconds
DEFAULT_HALF_OPEN_MAX_CALLS: Final = 1  # concurrent trial calls


class BreakerState(enum.Enum):
    """Where a circuit breaker is in its cycle."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@attrs.frozen(kw_only=True)
class CircuitBreakerState:
    """Everything a :class:`CircuitBreaker` remembers, for export across a restart.

    Attributes:
        state: the recorded state (OPEN may already be due for HALF_OPEN).
        consecutive_failures: failures since the last success.
        retry_at: OPEN: when trial calls begin; HALF_OPEN: when unreported
            trial slots are reclaimed; CLOSED: ``None``. Seconds.
        trials_in_flight: trial calls granted in HALF_OPEN and not yet reported.
        successes: successes reported, ever.
        failures: failures reported, ever.
        rejections: calls refused with ``CircuitOpen``, ever.
        times_opened: transitions into OPEN, ever.
    """

    state: BreakerState = BreakerState.CLOSED
    consecutive_failures: int = 0
    retry_at: float | None = None
    trials_in_flight: int = 0
    successes: int = 0
    failures: int = 0
    rejections: int = 0
    times_opened: int = 0


@attrs.frozen(kw_only=True)
class BreakerStatistics(CircuitBreakerState):
    """A snapshot of a breaker, as recorded (see :meth:`CircuitBreaker.current_state`).

    Everything its :class:`CircuitBreakerState` holds (the recorded state,
    ``retry_at``, the trial calls in flight and the counters), plus:

    Attributes:
        failure_threshold: consecutive failures that open the breaker.
    """

    failure_threshold: int


class CircuitBreaker:
    """Refuses calls to a failing peer for a while, then probes it.

    Call :meth:`allow` before each call, then :meth:`record_success` or
    :meth:`record_failure` with its outcome.

    Args:
        failure_threshold: consecutive failures that open the breaker (>= 1).
        reset_timeout: seconds OPEN lasts before trial calls (> 0); also how
            long an unreported trial holds its slot.
        half_open_max_calls: trial calls allowed at once in HALF_OPEN (>= 1).
        name: what the breaker guards, for error messages (optional).
        state: a state exported by :attr:`state`, to continue from.

    Raises:
        ValueError: if an argument is out of range or ``state`` is inconsistent.
    """

    __slots__ = (
        "_consecutive",
        "_failures",
        "_rejections",
        "_retry_at",
        "_round",
        "_state",
        "_successes",
        "_times_opened",
        "_trials",
        "failure_threshold",
        "half_open_max_calls",
        "name",
        "reset_timeout",
    )

    def __init__(
        self,
        *,
        failure_threshold: int = DEFAULT_FAILURE_THRESHOLD,
        reset_timeout: float = DEFAULT_RESET_TIMEOUT,
        half_open_max_calls: int = DEFAULT_HALF_OPEN_MAX_CALLS,
        name: str = "",
        state: CircuitBreakerState | None = None,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1, got {failure_threshold!r}")
        if not (math.isfinite(reset_timeout) and reset_timeout > 0.0):
            raise ValueError(f"reset_timeout must be finite seconds > 0, got {reset_timeout!r}")
        if half_open_max_calls < 1:
            raise ValueError(f"half_open_max_calls must be >= 1, got {half_open_max_calls!r}")
        state = CircuitBreakerState() if state is None else state
        if (state.retry_at is None) != (state.state is BreakerState.CLOSED):
            raise ValueError(f"state {state.state.name} and retry_at={state.retry_at!r} disagree")
        if state.trials_in_flight and state.state is not BreakerState.HALF_OPEN:
            raise ValueError(f"trials_in_flight must be 0 in {state.state.name}")
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self.half_open_max_calls = half_open_max_calls
        self.name = name
        self._state = state.state
        self._consecutive = state.consecutive_failures
        self._retry_at = state.retry_at
        self._round = 0  # of trials: a slot given back belongs to its own round
        self._trials = state.trials_in_flight
        self._successes = state.successes
        self._failures = state.failures
        self._rejections = state.rejections
        self._times_opened = state.times_opened

    @property
    def closed(self) -> bool:
        """Whether calls go through without a check of the clock (recorded CLOSED)."""
        return self._state is BreakerState.CLOSED

    @property
    def state(self) -> CircuitBreakerState:
        """A frozen snapshot to hand to a restarted owner's ``CircuitBreaker(state=...)``."""
        return CircuitBreakerState(**self._recorded())

    def current_state(self, now: float) -> BreakerState:
        """Return the state as of ``now``, counting an elapsed OPEN timeout.

        Args:
            now: the current time, in seconds.

        Returns:
            HALF_OPEN if the breaker is OPEN and ``retry_at`` has passed,
            otherwise the recorded state.

        Raises:
            ValueError: if ``now`` is not finite.
        """
        check_time(now)
        if self._state is BreakerState.OPEN and self._due(now):
            return BreakerState.HALF_OPEN
        return self._state

    def allow(self, now: float) -> int:
        """Let one call through, or refuse it.

        In HALF_OPEN the call is a trial and takes a slot until its outcome
        is recorded.

        Args:
            now: the current time, in seconds.

        Returns:
            the round of trials the call's slot belongs to (for :meth:`release`).

        Raises:
            CircuitOpen: OPEN and ``retry_at`` not reached, or HALF_OPEN with
                every trial slot taken; ``retry_at`` says when to come back.
            ValueError: if ``now`` is not finite.
        """
        check_time(now)
        if self._state is BreakerState.CLOSED:
            return self._round
        if self._state is BreakerState.OPEN:
            if not self._due(now):
                self._refuse(
                    now,
                    f"is OPEN after {self._consecutive} consecutive failures "
                    f"(threshold {self.failure_threshold})",
                    f"up to {self.half_open_max_calls} trial call(s) will be let through",
                )
            self._state = BreakerState.HALF_OPEN
            self._start_trials(now)
        elif self._due(now):
            # A whole reset_timeout without a report: those trials are lost.
            self._start_trials(now)
        if self._trials >= self.half_open_max_calls:
            self._refuse(
                now,
                f"is HALF_OPEN with {self._trials} trial call(s) in flight "
                f"(max {self.half_open_max_calls})",
                "unreported trial slots are reclaimed (sooner if a trial call reports)",
            )
        self._trials += 1
        return self._round

    def record_success(self, now: float) -> None:
        """Report that a call succeeded.

        Closes a HALF_OPEN breaker; resets the failure count when CLOSED; is
        only counted when OPEN (the call predates the opening).

        Args:
            now: the current time, in seconds.

        Raises:
            ValueError: if ``now`` is not finite.
        """
        if not -math.inf < now < math.inf:  # (NaN too; checked inline: once a send)
            check_time(now)
        self._successes += 1
        if self._state is BreakerState.OPEN:
            return
        self._consecutive = 0
        if self._state is BreakerState.HALF_OPEN:
            self._state = BreakerState.CLOSED
            self._retry_at = None
            self._trials = 0

    def release(self, round_: int) -> None:
        """Give back a call's slot without an outcome (it never reached the platform).

        ``round_``: what :meth:`allow` returned for it. In HALF_OPEN its
        trial slot is free again, and the breaker stays HALF_OPEN: no call has
        shown the platform is back. Nothing otherwise, nor for a slot of an
        earlier round (reclaimed since, and taken by another call).
        """
        if self._state is BreakerState.HALF_OPEN and round_ == self._round and self._trials:
            self._trials -= 1

    def record_failure(self, now: float) -> None:
        """Report that a call failed.

        Opens a CLOSED breaker at ``failure_threshold`` consecutive failures;
        re-opens a HALF_OPEN one with a fresh timeout; is only counted when
        OPEN (the call predates the opening).

        Args:
            now: the current time, in seconds.

        Raises:
            ValueError: if ``now`` is not finite.
        """
        check_time(now)
        self._failures += 1
        if self._state is BreakerState.OPEN:
            return
        self._consecutive += 1
        if self._state is BreakerState.HALF_OPEN or self._consecutive >= self.failure_threshold:
            self._state = BreakerState.OPEN
            self._retry_at = now + self.reset_timeout
            self._trials = 0
            self._times_opened += 1

    def statistics(self) -> BreakerStatistics:
        """Return a frozen snapshot of the recorded state and the counters."""
        return BreakerStatistics(failure_threshold=self.failure_threshold, **self._recorded())

    def _recorded(self) -> dict[str, Any]:
        """The fields of :class:`CircuitBreakerState`, as recorded now."""
        return {
            "state": self._state,
            "consecutive_failures": self._consecutive,
            "retry_at": self._retry_at,
            "trials_in_flight": self._trials,
            "successes": self._successes,
            "failures": self._failures,
            "rejections": self._rejections,
            "times_opened": self._times_opened,
        }

    def _due(self, now: float) -> bool:
        return self._retry_at is not None and now >= self._retry_at

    def _start_trials(self, now: float) -> None:
        self._round += 1
        self._trials = 0
        self._retry_at = now + self.reset_timeout

    def _refuse(self, now: float, why: str, then: str) -> NoReturn:
        assert self._retry_at is not None
        self._rejections += 1
        subject = f"circuit breaker {self.name!r}" if self.name else "circuit breaker"
        raise CircuitOpen(
            f"{subject} {why}; calls are refused until t={self._retry_at:.3f} "
            f"(in {self._retry_at - now:.3f} s), then {then}",
            retry_at=self._retry_at,
        )

    def __repr__(self) -> str:
        name = f" {self.name}" if self.name else ""
        text = f"<CircuitBreaker{name} {self._state.name} failures={self._consecutive}"
        if self._state is BreakerState.CLOSED:
            text += f"/{self.failure_threshold}"
        if self._state is BreakerState.HALF_OPEN:
            text += f" trials={self._trials}/{self.half_open_max_calls}"
        if self._retry_at is not None:
            text += f" retry_at={self._retry_at!r}"
        return text + ">"
