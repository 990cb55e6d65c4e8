"""Child specifications and supervisor flags, as in OTP's ``supervisor`` module.

Defaults are OTP's: a child is a permanent worker with a 5 s shutdown (a
child supervisor waits ``infinity``); a supervisor is one_for_one with an
intensity of 1 restart per 5 s. Beyond OTP, :class:`RestartBackoff` delays
restarts (Akka's BackoffSupervisor) so a crash loop cannot become a
reconnect storm.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Callable
from typing import Any, Final, Literal

import attrs

from actors import Actor, MailboxConfig

__all__ = [
    "BRUTAL_KILL",
    "DEFAULT_SHUTDOWN",
    "INFINITY",
    "ChildSpec",
    "ChildType",
    "Restart",
    "RestartBackoff",
    "Shutdown",
    "Strategy",
]

BRUTAL_KILL: Final = "brutal_kill"
INFINITY: Final = "infinity"
DEFAULT_SHUTDOWN: Final = 5.0  # seconds a worker gets for on_stop

Shutdown = float | Literal["brutal_kill", "infinity"]


class Restart(enum.Enum):
    """When a child is restarted after it exits."""

    PERMANENT = "permanent"
    """Always."""
    TRANSIENT = "transient"
    """Only after an abnormal exit (a crash or a kill), not after normal or shutdown."""
    TEMPORARY = "temporary"
    """Never; its spec is removed when it exits."""


class Strategy(enum.Enum):
    """Which children are restarted when one of them must be."""

    ONE_FOR_ONE = "one_for_one"
    """Only the child that exited."""
    ONE_FOR_ALL = "one_for_all"
    """Every child: the others are stopped (in reverse order) and all restarted."""
    REST_FOR_ONE = "rest_for_one"
    """The child and the ones started after it."""


class ChildType(enum.Enum):
    """What a child is; only changes its default shutdown (supervisors wait ``infinity``)."""

    WORKER = "worker"
    SUPERVISOR = "supervisor"


def _check_shutdown(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value in (BRUTAL_KILL, INFINITY):
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (value > 0 and math.isfinite(value))
    ):
        raise ValueError(
            f"{attribute.name} must be a positive number of seconds, "
            f"'{BRUTAL_KILL}' or '{INFINITY}', got {value!r}"
        )


def _check_id(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"a child id must be a non-empty string, got {value!r}")


@attrs.frozen(kw_only=True)
class ChildSpec:
    """How to start, restart and stop one child.

    Attributes:
        id: unique among the supervisor's children.
        start: zero-argument callable returning a new ``Actor``; called for
            the first start and every restart.
        restart: permanent (default), transient or temporary.
        type: worker (default) or supervisor.
        shutdown: seconds the child gets for ``on_stop`` before it is
            killed, ``"brutal_kill"``, or ``"infinity"``; defaults to 5 s for
            a worker and ``"infinity"`` for a supervisor (as OTP).
        name: register the child in the system under this name.
        mailbox: the child's mailbox bounds.
    """

    id: str = attrs.field(validator=_check_id)
    start: Callable[[], Actor]
    restart: Restart = Restart.PERMANENT
    type: ChildType = ChildType.WORKER
    shutdown: Shutdown = attrs.field(validator=_check_shutdown)
    name: str | None = None
    mailbox: MailboxConfig | None = None

    @shutdown.default
    def _default_shutdown(self) -> Shutdown:
        return INFINITY if self.type is ChildType.SUPERVISOR else DEFAULT_SHUTDOWN

    def shutdown_timeout(self) -> float | None:
        """The shutdown as the kernel takes it: seconds, 0 to kill, None to wait."""
        if self.shutdown == BRUTAL_KILL:
            return 0.0
        if self.shutdown == INFINITY:
            return None
        return float(self.shutdown)


@attrs.frozen(kw_only=True)
class RestartBackoff:
    """Delay restarts exponentially (Akka's BackoffSupervisor).

    The n-th consecutive restart of a child waits
    ``min(max_delay, min_delay * 2**(n-1)) * (1 + random_factor * U)`` with
    ``U`` uniform in [0, 1); the count resets once the child has run for
    ``reset_after`` seconds without exiting. While it waits the child is
    ``restarting`` and can be terminated.

    Attributes:
        min_delay: seconds before the first restart.
        max_delay: cap in seconds.
        random_factor: jitter as a fraction of the delay.
        reset_after: seconds of uptime after which the count resets.
    """

    min_delay: float = attrs.field(default=0.1, validator=attrs.validators.gt(0.0))
    max_delay: float = attrs.field(default=30.0, validator=attrs.validators.gt(0.0))
    random_factor: float = attrs.field(default=0.2, validator=attrs.validators.ge(0.0))
    reset_after: float = attrs.field(default=60.0, validator=attrs.validators.gt(0.0))

    def __attrs_post_init__(self) -> None:
        if self.max_delay < self.min_delay:
            raise ValueError(
                f"max_delay ({self.max_delay}) must be >= min_delay ({self.min_delay})"
            )

    def compute(self, consecutive: int, rng: random.Random) -> float:
        """Seconds to wait before the ``consecutive``-th restart (1-based)."""
        exponent = min(max(consecutive - 1, 0), 64)
        base = min(self.max_delay, self.min_delay * 2.0**exponent)
        return base * (1.0 + self.random_factor * rng.random())
