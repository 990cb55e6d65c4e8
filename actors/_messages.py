"""The kernel's own messages: pending asks and the system lane's vocabulary.

Design: a message in a mailbox is either the user's object, a pending
:class:`Ask` (the user's object and the task waiting for the answer), or, in
the system lane, one of the kernel's signals: :class:`Stop`, ``RESTART``,
:class:`Status` and :class:`ChildExited`. They are tested by ``type(x) is``
on the hot paths, so none is subclassed.

An answer travels to the asking task as an ``outcome``, the way trio resumes
tasks: ``outcome.Value`` for a reply, ``outcome.Error`` for a refusal or a
failure. A handler refuses a request by returning ``outcome.Error(exc)``
(see ``Actor.receive``): the asker gets ``exc`` raised, and the actor carries
on. That is the one way a refusal crosses an ``ask``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, Protocol

import outcome
from trio.lowlevel import Abort, reschedule

if TYPE_CHECKING:
    from .actor import Exit
    from .ref import ActorRef

__all__ = [
    "IN_HAND",
    "RESTART",
    "Answered",
    "Ask",
    "AskWatch",
    "ChildExited",
    "Parent",
    "Restart",
    "Status",
    "Stop",
]


class _InHand:
    """The type of :data:`IN_HAND`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "IN_HAND"


IN_HAND: Final = _InHand()
"""An :class:`Ask`'s task while its asker is still running it (``receive_at_once``):
an answer given then is kept in ``early`` instead of waking a task that is not waiting."""


class Answered:
    """An :class:`Ask`'s task when no task waits for the answer (``ActorRef.ask_soon``).

    The answer is handed to ``fn`` as an ``outcome``, synchronously, in the
    task that gives it (the actor's, a connection's reader, a watch's
    timer): ``fn`` must not block and must not raise.
    """

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[outcome.Outcome[Any]], object]) -> None:
        self.fn = fn

    def __repr__(self) -> str:
        return f"Answered({self.fn!r})"


class Ask:
    """A message waiting for an answer, and the task waiting for it."""

    __slots__ = ("early", "msg", "task")

    def __init__(self, msg: Any, task: Any) -> None:
        self.msg = msg
        self.task = task  # None once answered or abandoned; IN_HAND, Answered: see there
        self.early: outcome.Outcome[Any] | None = None  # an answer given while IN_HAND

    def reply(self, value: Any) -> None:
        """Answer with ``value``; an ``outcome.Error`` is raised in the asker."""
        self._answer(value if type(value) is outcome.Error else outcome.Value(value))

    def fail(self, error: BaseException) -> None:
        """Raise ``error`` in the asker."""
        self._answer(outcome.Error(error))

    def abandon(self, _raise_cancel: object) -> Abort:
        """The abort function of the asker's wait: cancelled, it takes no answer.

        A method, not a closure made for each wait: one object per parked
        ask instead of two, and a node parks an ask for every send in flight.
        """
        self.task = None
        return Abort.SUCCEEDED

    def _answer(self, result: outcome.Outcome[Any]) -> None:
        task = self.task
        if task is not None:
            self.task = None
            if task is IN_HAND:
                self.early = result
            elif type(task) is Answered:
                task.fn(result)
            else:
                reschedule(task, result)


class AskWatch(Protocol):
    """What bounds an ask instead of a cancel scope (``ActorRef.ask(..., watch=)``).

    Design: a caller that bounds many asks at once (a node's sends, each
    with its caller's deadline and the drain's cut) keeps one timer for all
    of them instead of a cancel scope per ask, and fails a parked ask with
    :meth:`Ask.fail`. The kernel hands the watch the ask as its asker parks;
    before that the asker is running, and a task that runs cannot be woken.
    """

    def parking(self, ask: Ask) -> BaseException | None:
        """The asker is about to wait for ``ask``'s answer.

        Returns:
            ``None``: wait (the watch may ``ask.fail(error)`` from now on, from
            any task, until the answer comes); or an error to raise at once
            instead of waiting (the bound ran out while the asker was running).
        """
        ...


class Stop:
    """End the incarnation with ``exit`` (overtakes user messages)."""

    __slots__ = ("exit",)

    def __init__(self, exit: Exit) -> None:
        self.exit = exit


class Restart:
    """End the incarnation and start a new one in place."""

    __slots__ = ()


class Status:
    """Answer ``ask`` with the actor's status, taken inside it."""

    __slots__ = ("ask",)

    def __init__(self, ask: Ask) -> None:
        self.ask = ask


class ChildExited:
    """System message to a parent: one incarnation of a child ended.

    Attributes:
        child: the child's ref, waiting in ``RESTARTING`` for the decision.
        exit: how the incarnation ended.
        incarnation: which incarnation ended (a stale exit names an older one).
    """

    __slots__ = ("child", "exit", "incarnation")

    def __init__(self, child: ActorRef, exit: Exit, incarnation: int) -> None:
        self.child = child
        self.exit = exit
        self.incarnation = incarnation

    def __repr__(self) -> str:
        return f"<ChildExited {self.child!r} incarnation={self.incarnation} {self.exit}>"


RESTART: Final = Restart()


class Parent:
    """What the kernel asks of an actor that supervises children.

    Mix it into an :class:`~actors.Actor` subclass (a supervisor does) and
    pass the actor's ref as ``parent=`` when spawning children. When a
    child's incarnation ends, the kernel leaves the child ``RESTARTING`` and
    tells the parent, which decides: start a new incarnation
    (``lowlevel.start_incarnation``) or end the child for good
    (``lowlevel.terminate``). A parent that is not a ``Parent`` cannot
    decide, and the kernel terminates such children itself.

    A parent needs a task of its own (an async hook), because deciding may
    mean awaiting a start.
    """

    __slots__ = ()

    def child_exited(self, msg: ChildExited) -> Awaitable[None] | None:
        """A child's incarnation ended; handled in order with the system lane.

        Runs in the parent's task, before any queued user message.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement child_exited")

    def child_exited_now(self, child: ActorRef, exit: Exit, incarnation: int) -> bool:
        """Decide a child's exit at the crash site, without awaiting.

        Called only while the parent is idle (nothing queued, no handler
        running), so deciding here is what the queued path would do next,
        minus a task switch. Return False to have the exit queued as a
        :class:`ChildExited` instead (the default).
        """
        return False

    def kill_children(self) -> None:
        """The parent is being killed: take the children down with it.

        OTP's linked processes die with a killed supervisor; use
        ``lowlevel.kill_linked`` on each child.
        """
