"""Child specifications and supervisor flags, as in OTP's ``supervisor`` module.

Defaults are OTP's: a child is a permanent worker with a 5 s shutdown (a
child supervisor waits ``infinity``); a supervisor is one_for_one with an
intensity of 1 restart per 5 s. Beyond OTP, :class:`RestartBackoff` delays
restarts (Akka's BackoffSupervisor) so a crash loop cannot become a
reconnect storm, and a child may be *isolated* (``ChildSpec.intensity``):
its crashes are counted against its own intensity only, so that thousands
of children failing together (every channel of one platform) cannot make
their supervisor give up and take their healthy siblings down with it.
"""

from __future__ import annotations

import enum
import math
import random
import warnings
from collections.abc import Callable
from typing import Any, Final, Literal

import attrs

from actors import Actor, Exit, MailboxConfig, ProportionalJitterBackoff

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


def _check_intensity(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ValueError(f"{attribute.name} must be None or an int >= 0, got {value!r}")


def _check_period(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{attribute.name} must be a positive number of seconds, got {value!r}")


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
        intensity: beyond OTP, an *isolated* child: at most this many
            restarts of this child within ``period``, counted for it alone
            and never against its supervisor's intensity. One more and the
            supervisor stops restarting it (it stays, not running, until
            ``restart_child``) and calls ``on_give_up``; the supervisor
            itself carries on. ``None`` (the default): OTP's rule, every
            restart counts against the supervisor.
        period: the window of ``intensity``, in seconds.
        on_give_up: called with the child's last exit when the supervisor
            stops restarting an isolated child (must not block or raise).
    """

    id: str = attrs.field(validator=_check_id)
    start: Callable[[], Actor]
    restart: Restart = Restart.PERMANENT
    type: ChildType = ChildType.WORKER
    shutdown: Shutdown = attrs.field(validator=_check_shutdown)
    name: str | None = None
    mailbox: MailboxConfig | None = None
    intensity: int | None = attrs.field(default=None, validator=_check_intensity)
    period: float = attrs.field(default=60.0, validator=_check_period)
    on_give_up: Callable[[Exit], None] | None = attrs.field(default=None, repr=False)

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


@attrs.frozen(kw_only=True, init=False)
class RestartBackoff:
    """Delay restarts exponentially (Akka's BackoffSupervisor).

    In the kernel's backoff vocabulary (``actors.backoff``): the n-th
    consecutive restart of a child waits
    ``min(cap, base * 2**(n-1)) * (1 + random_factor * U)`` with ``U``
    uniform in [0, 1) (a :class:`~actors.ProportionalJitterBackoff`); the
    count resets once the child has run for ``reset_after`` seconds without
    exiting. While it waits the child is ``restarting`` and can be terminated.

    Attributes:
        base: seconds before the first restart.
        cap: the longest delay before jitter, in seconds.
        random_factor: jitter as a fraction of the delay.
        reset_after: seconds of uptime after which the count resets.

    ``min_delay`` and ``max_delay`` are the deprecated names of ``base`` and
    ``cap``; they are still accepted, with a ``DeprecationWarning``.
    """

    base: float
    cap: float
    random_factor: float
    reset_after: float

    def __init__(
        self,
        *,
        base: float | None = None,
        cap: float | None = None,
        random_factor: float = 0.2,
        reset_after: float = 60.0,
        min_delay: float | None = None,
        max_delay: float | None = None,
    ) -> None:
        base = _renamed("min_delay", min_delay, "base", base, 0.1)
        cap = _renamed("max_delay", max_delay, "cap", cap, 30.0)
        for name, value in (("base", base), ("cap", cap), ("reset_after", reset_after)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        if not (math.isfinite(random_factor) and random_factor >= 0):
            raise ValueError(f"random_factor must be >= 0, got {random_factor!r}")
        if cap < base:
            raise ValueError(f"cap ({cap}) must be >= base ({base})")
        self.__attrs_init__(
            base=base, cap=cap, random_factor=random_factor, reset_after=reset_after
        )

    @property
    def policy(self) -> ProportionalJitterBackoff:
        """The delay policy, for an :class:`~actors.Backoff` tracker."""
        return ProportionalJitterBackoff(
            base=self.base, cap=self.cap, factor=2.0, random_factor=self.random_factor
        )

    def compute(self, consecutive: int, rng: random.Random) -> float:
        """Seconds to wait before the ``consecutive``-th restart (1-based)."""
        return self.policy.compute(max(consecutive, 1), rng=rng)


def _renamed(
    old: str, old_value: float | None, new: str, value: float | None, default: float
) -> float:
    if old_value is None:
        return default if value is None else value
    if value is not None:
        raise TypeError(f"RestartBackoff: give {new!r} only ({old!r} is its deprecated name)")
    warnings.warn(
        f"RestartBackoff({old}=...) is deprecated; use {new}=...", DeprecationWarning, stacklevel=3
    )
    return old_value
