"""The kernel's low-level surface: what a supervisor does to the refs it owns.

Design: as ``trio.lowlevel`` is to trio, this module is the documented,
stable contract between the actor kernel and the layer above it
(``supervisors``). A parent implements :class:`Parent`; the kernel calls it
when a child's incarnation ends, and the parent answers with the calls
below. Nothing above the kernel touches a ref's private members.

The lifecycle of a supervised ref, in these terms::

    spawn(parent=...) ─► running ─(exit)─► RESTARTING ─► parent decides:
                                              │ start_incarnation(ref)  (new incarnation, same ref)
                                              └ terminate(ref, exit)    (for good)

- :func:`start_incarnation` / :func:`start_incarnation_nowait` start a new
  incarnation on a ref that is between incarnations (``RESTARTING``);
- :func:`stop_incarnation` ends the running incarnation on the parent's
  behalf (OTP's shutdown: a stop request, a bounded wait, then a kill) and
  leaves the ref ``RESTARTING`` without telling the parent;
- :func:`kill_incarnation` ends it at once (the parent is told, as after a
  crash); :func:`kill_linked` kills it for a parent that is itself dying;
- :func:`terminate` ends the ref for good: queued asks fail with
  ``ActorDead``, queued tells go to the dead letters, the name is freed;
- :func:`request_stop` asks an incarnation to end after its current message.

An actor that answers requests out of order (a window of sends in flight)
uses two more: :func:`defer_reply` takes over answering the ask being
handled (the :class:`Ask` is answered later, from any task, with
``reply``/``fail``), and :func:`requeue` hands messages taken off the
mailbox back to its front, so that an incarnation that ends with work in
hand loses none of it. Such an actor may also take an ask in the asker's
task while it is idle (``Actor.receive_at_once``; :data:`AT_LEISURE` leaves
it to the mailbox), sparing the hop through its mailbox.

A caller that bounds many asks at once passes each an :class:`AskWatch`
(``ActorRef.ask(..., watch=)``) instead of a timeout: the kernel hands it
the :class:`Ask` as the asker parks, and the watch fails it when its bound
runs out (one timer for all of them, no cancel scope per ask).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

from ._incarnation import (
    defer_reply,
    kill_linked,
    new_instance,
    request_stop,
    requeue,
    terminate,
)
from ._incarnation import kill as kill_incarnation
from ._incarnation import start as start_incarnation
from ._incarnation import start_nowait as start_incarnation_nowait
from ._incarnation import stop as stop_incarnation
from ._messages import Ask, AskWatch, ChildExited, Parent
from .actor import AT_LEISURE, Actor, ActorState, Exit
from .mailbox import MailboxConfig
from .ref import ActorRef
from .system import ActorSystem

__all__ = [
    "AT_LEISURE",
    "Ask",
    "AskWatch",
    "ChildExited",
    "Parent",
    "current_instance",
    "defer_reply",
    "factory_class",
    "idle",
    "kill_incarnation",
    "kill_linked",
    "last_exit",
    "mailbox_depth",
    "needs_task",
    "new_instance",
    "request_stop",
    "requeue",
    "runs_in_task",
    "set_undelivered",
    "spawn_nowait",
    "start_incarnation",
    "start_incarnation_nowait",
    "start_system_task",
    "starts_without_waiting",
    "stop_incarnation",
    "terminate",
]


def needs_task(inst: Actor) -> bool:
    """Whether ``inst`` runs in a task of its own (it has an async hook).

    Such an incarnation is started with :func:`start_incarnation` (which
    awaits its ``on_start``), never :func:`start_incarnation_nowait`.
    """
    return inst._needs_task


def runs_in_task(ref: ActorRef) -> bool:
    """Whether the current (or last) incarnation of ``ref`` runs in a task."""
    return ref._task_mode


def current_instance(ref: ActorRef) -> Actor | None:
    """The running incarnation's instance, or ``None`` between incarnations.

    For introspection only: never call its hooks.
    """
    return ref._instance


def last_exit(ref: ActorRef) -> Exit | None:
    """How the most recent incarnation of ``ref`` ended, if one has."""
    return ref._last_exit


def mailbox_depth(ref: ActorRef) -> int:
    """User messages queued for ``ref``, without building a statistics snapshot."""
    return ref._mailbox.depth


def set_undelivered(ref: ActorRef, handler: Callable[[Any, Exit], bool] | None) -> None:
    """Hand ``handler`` each told message ``ref`` never handled, as it terminates.

    The messages still queued when the actor ends for good (and any handed
    back to it after) go to the actor system's dead letters, which only
    count them; asks fail with ``ActorDead``, so their askers hear it, but a
    told message nobody waits for is gone. ``handler(message, exit)`` runs
    first, synchronously, in the task that terminates the actor: True if it
    took the message (kept it somewhere of its owner's), False to let it go
    to the dead letters. An exception it raises is logged, never raised.
    A restart keeps the mailbox, and the handler: it is called only at the end.
    """
    ref._undelivered = handler


def start_system_task(system: ActorSystem, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
    """Run ``fn(*args)`` as a task of ``system``: it ends when the system closes."""
    system._nursery.start_soon(fn, *args)


def factory_class(factory: Callable[..., Any]) -> type[Actor] | None:
    """The actor class ``factory`` makes, when the factory says so.

    An ``Actor`` subclass, or a ``functools.partial`` of one, says so; any
    other callable may return anything, and ``None`` is returned.
    """
    while isinstance(factory, functools.partial):
        factory = factory.func
    if isinstance(factory, type) and issubclass(factory, Actor):
        return factory
    return None


def starts_without_waiting(factory: Callable[..., Any]) -> bool:
    """Whether an actor from ``factory`` is known to start without awaiting.

    True for a plain actor and for one whose ``on_start`` is a plain
    function (an eager start): :func:`spawn_nowait` can start it.
    """
    cls = factory_class(factory)
    return cls is not None and not cls._async_on_start


def idle(ref: ActorRef) -> bool:
    """Whether the task-mode actor of ``ref`` waits for mail with none queued.

    A parent may then handle a request at the caller's site instead of
    through its mailbox, provided the handling never awaits: nothing is
    queued ahead of it, and the actor's own task cannot run meanwhile (the
    kernel does this for a child's exit, ``Parent.child_exited_now``).
    """
    return (
        ref._task_mode
        and ref._parked is not None
        and ref._state is ActorState.RUNNING
        and ref._stop_request is None
        and not ref._mailbox
    )


def spawn_nowait(
    system: ActorSystem,
    factory: Callable[[], Actor],
    *,
    name: str | None = None,
    mailbox: MailboxConfig | None = None,
    parent: ActorRef | None = None,
) -> ActorRef:
    """:meth:`ActorSystem.spawn` for a factory that starts without waiting.

    Raises:
        ValueError: ``starts_without_waiting(factory)`` is false.
        NameTaken, StartFailed, RuntimeError: as ``spawn``.
    """
    if not starts_without_waiting(factory):
        raise ValueError(f"{factory!r} is not known to start without waiting: spawn() it")
    return system._spawn_nowait(factory, name=name, mailbox=mailbox, parent=parent)
