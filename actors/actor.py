"""The ``Actor`` base class, its lifecycle states and exit reasons.

Design:
- An actor is a plain object with three hooks: ``on_start``, ``receive`` and
  ``on_stop``. The kernel calls them one at a time; an actor never runs two
  messages at once.
- The hooks may be plain functions or coroutines, and that choice decides how
  the actor runs. An actor whose hooks are all plain functions costs no task:
  the system's dispatcher runs it when it has mail, and an ``ask`` to an idle
  one runs inline in the caller. An actor with any ``async`` hook gets a task
  of its own for each incarnation, may await in its hooks and may own tasks
  (``start_task``). Both obey the same contract.
- Exit reasons follow Erlang/OTP: ``NORMAL`` (it stopped itself),
  ``SHUTDOWN`` (its parent stopped it), ``KILLED`` (stopped without running
  ``on_stop``), ``CRASHED`` (an exception). Transient children restart on
  ``KILLED`` and ``CRASHED`` only.
"""

from __future__ import annotations

import enum
import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar, Final

import attrs

from .errors import NotInActorContext

if TYPE_CHECKING:
    from .ref import ActorRef
    from .system import ActorSystem
    from .timers import Timer

__all__ = ["Actor", "ActorState", "Exit", "ExitKind"]


class ActorState(enum.Enum):
    """Where an actor is in its life.

    ``STARTING`` → ``RUNNING`` → ``STOPPING`` → ``STOPPED``; a crash moves a
    supervised actor to ``RESTARTING`` until its supervisor decides, and an
    unsupervised one (or one its supervisor gives up on) to ``FAILED``.
    """

    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


class ExitKind(enum.Enum):
    """Why an incarnation of an actor ended (OTP's exit reasons)."""

    NORMAL = "normal"
    SHUTDOWN = "shutdown"
    KILLED = "killed"
    CRASHED = "crashed"


@attrs.frozen(kw_only=True)
class Exit:
    """The exit reason of one incarnation.

    Attributes:
        kind: normal, shutdown, killed or crashed.
        error: the exception behind a crash (or an annotated shutdown).
    """

    kind: ExitKind
    error: BaseException | None = None

    @property
    def abnormal(self) -> bool:
        """True for exits a *transient* child is restarted after."""
        return self.kind in (ExitKind.KILLED, ExitKind.CRASHED)

    def __str__(self) -> str:
        if self.error is None:
            return self.kind.value
        return f"{self.kind.value}: {type(self.error).__name__}: {self.error}"


EXIT_NORMAL = Exit(kind=ExitKind.NORMAL)
EXIT_SHUTDOWN = Exit(kind=ExitKind.SHUTDOWN)
EXIT_KILLED = Exit(kind=ExitKind.KILLED)


class _AtLeisure:
    """The type of :data:`AT_LEISURE`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "AT_LEISURE"


AT_LEISURE: Final = _AtLeisure()
"""What ``Actor.receive_at_once`` returns for an ask it leaves to ``receive``."""


def _is_async(fn: Any) -> bool:
    return inspect.iscoroutinefunction(fn)


class Actor:
    """Base class of every actor. Override the hooks you need.

    Hooks (each a plain method or ``async def``):

    - ``on_start()``: runs before the first message of every incarnation. If
      it raises, the start fails (``spawn`` raises
      :class:`~actors.errors.StartFailed`).
    - ``receive(msg)``: handles one message. Its return value is the reply to
      an ``ask`` (ignored for ``tell``). Raising crashes this incarnation. To
      refuse a request without crashing, return ``outcome.Error(exc)``: the
      asker gets ``exc`` raised (the way trio hands a task an error).
    - ``on_stop(exit)``: runs when the incarnation ends for any reason but a
      brutal kill, with the :class:`Exit` reason.
    - ``async on_stopping(exit)`` (actors with a task only): runs when a stop
      was requested, *before* the incarnation's own tasks are cancelled, so
      a connection can say goodbye while its reader still runs (a websocket
      close handshake). It is bounded by the stopper's shutdown timeout.

    Inside the hooks, ``self.ref``, ``self.system``, ``self.stop()``,
    ``self.start_timer()`` and (async actors only) ``self.start_task()`` are
    available.
    """

    __slots__ = ("_ref",)
    _ref: ActorRef

    # Decided once per class: does any hook need a task of its own?
    _needs_task: ClassVar[bool] = False
    _async_on_start: ClassVar[bool] = False
    _async_receive: ClassVar[bool] = False
    _async_on_stop: ClassVar[bool] = False
    _has_on_start: ClassVar[bool] = False
    _has_on_stop: ClassVar[bool] = False
    _has_on_stopping: ClassVar[bool] = False
    _receives_at_once: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._async_on_start = _is_async(cls.on_start)
        cls._async_receive = _is_async(cls.receive)
        cls._async_on_stop = _is_async(cls.on_stop)
        cls._has_on_start = cls.on_start is not Actor.on_start
        cls._has_on_stop = cls.on_stop is not Actor.on_stop
        cls._has_on_stopping = cls.on_stopping is not Actor.on_stopping
        cls._receives_at_once = cls.receive_at_once is not Actor.receive_at_once
        cls._needs_task = (
            cls._async_on_start or cls._async_receive or cls._async_on_stop or cls._has_on_stopping
        )

    def on_start(self) -> Awaitable[None] | None:
        """Called before the first message of each incarnation."""
        return None

    async def on_stopping(self, exit: Exit) -> None:
        """Called on a requested stop while the incarnation's tasks still run."""
        return None

    def receive(self, msg: Any) -> Any:
        """Handle one message; the return value answers an ``ask``.

        Return ``outcome.Error(exc)`` to refuse: the asker gets ``exc`` raised.
        """
        raise NotImplementedError(
            f"{type(self).__name__} got {msg!r} but does not override receive()"
        )

    def receive_at_once(self, msg: Any) -> Any:
        """Handle an ask in the asker's task, if it can be done without waiting.

        Optional, for a task-mode actor (an ``async receive``) whose
        ``receive`` of some messages never waits. The kernel calls it
        instead of queueing the ask only while the actor is idle (running,
        parked on an empty mailbox, no stop asked for), so nothing is
        overtaken; it must not wait, and it may ``defer_reply`` and
        ``start_task`` as ``receive`` does (an ask taken over and answered
        before it returns is answered all the same). It returns what
        ``receive`` would, or :data:`AT_LEISURE` to have the ask queued as
        usual, which it must do before changing anything if it cannot
        finish. An exception queues the ask as well: ``receive`` then meets
        the same message in the actor's task, and a defect crashes the
        actor there; but once it took the ask over (``defer_reply``), the
        asker gets ``ActorCrashed`` at once instead, the ask is not queued
        again and a later answer to it goes nowhere.
        """
        return AT_LEISURE

    def on_stop(self, exit: Exit) -> Awaitable[None] | None:
        """Called when this incarnation ends (not after a brutal kill)."""
        return None

    def status(self) -> dict[str, Any]:
        """Extra state for introspection (the console shows it). Must not block."""
        return {}

    # --- context, valid once the kernel has bound the actor to its ref -------

    @property
    def ref(self) -> ActorRef:
        """This actor's own ref."""
        try:
            return self._ref
        except AttributeError:
            raise NotInActorContext(
                f"{type(self).__name__} is not running: create actors with "
                "system.spawn() or a supervisor child spec, not by calling the class"
            ) from None

    @property
    def system(self) -> ActorSystem:
        """The actor system this actor runs in."""
        return self.ref.system

    def stop(self) -> None:
        """Stop this actor normally once the current message is handled."""
        _incarnation.request_stop(self.ref)

    def start_timer(self, delay: float, msg: Any, *, interval: float | None = None) -> Timer:
        """Send ``msg`` to this actor after ``delay`` seconds (then every ``interval``).

        The timer belongs to this incarnation: it is cancelled when the actor
        stops or crashes.
        """
        return _incarnation.start_timer(self.ref, delay, msg, interval)

    def start_task(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``fn(*args)`` as a task owned by this incarnation.

        The task is cancelled when the actor stops or crashes; if it raises,
        the actor crashes with that exception. Only actors with an ``async``
        hook have a task context to own tasks in.

        Raises:
            NotInActorContext: the actor runs on the dispatcher (no async hook).
        """
        _incarnation.start_owned_task(self.ref, fn, args)


# The incarnation machinery calls back into this module's classes, so it is
# imported once they exist.
from . import _incarnation  # noqa: E402
