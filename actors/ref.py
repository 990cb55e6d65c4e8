"""``ActorRef``: the handle to an actor, and the actor's cell.

Design:
- One object per actor holds everything that outlives an incarnation: the
  mailbox, the name, counters, the parent link. The ``Actor`` instance is
  swapped on restart; the ref is not, so a crash loses no queued message and
  callers keep a valid handle.
- Two ways to run, chosen per incarnation by the actor's class (see
  ``actors.actor``):
    * dispatcher mode (all hooks plain functions): no task. The system's
      dispatcher drains the mailbox in batches; ``ask`` to an idle actor with
      an empty mailbox runs ``receive`` inline in the caller, which keeps the
      ordering guarantees (nothing is ahead of it) and costs no task switch.
    * task mode (any async hook): one task per incarnation, parked while the
      mailbox is empty and woken by the first message.
- Lifecycle: the kernel ends an incarnation (stop, crash, kill); the parent
  (a supervisor) decides what follows: a new incarnation on the same ref, or
  termination, which fails queued asks with ``ActorDead`` and sends queued
  tells to the dead-letter log.
- Hot paths (``tell``, the dispatcher loop, inline ``ask``) avoid
  allocations and awaits: ``tell`` is a deque append and a flag check.

This module is the handle and the senders' side of it (queueing, waking,
waiting for room or an answer); what the kernel does to a ref from the
inside (starting, running and ending incarnations) is ``actors._incarnation``,
and the part of that a supervisor may use is ``actors.lowlevel``.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any, Final

import attrs
import outcome
import trio
from trio.lowlevel import (
    ParkingLot,
    checkpoint,
    checkpoint_if_cancelled,
    current_task,
    wait_task_rescheduled,
)

from . import _incarnation
from ._incarnation import (
    ACCEPTING,
    QUEUEING,
    RESTARTING,
    RUNNING,
    STARTING,
    TASK_FAIRNESS_BATCH,
)
from ._messages import IN_HAND, RESTART, Answered, Ask, AskWatch, Status, Stop
from .actor import AT_LEISURE, EXIT_SHUTDOWN, Actor, ActorState, Exit
from .errors import ActorDead, AskTimeout, MailboxFull
from .mailbox import Mailbox, MailboxConfig, MailboxStatistics, Overflow

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from .system import ActorSystem
    from .timers import Timer

__all__ = ["DEFAULT_ASK_TIMEOUT", "ActorRef", "ActorStatistics", "ActorStatus"]

DEFAULT_ASK_TIMEOUT: Final = 5.0  # seconds


@attrs.frozen(kw_only=True)
class ActorStatistics:
    """A snapshot of one actor.

    Attributes:
        name: registry name, or ``None``.
        actor_id: the system-unique id of this ref.
        actor_class: class name of the current (or last) incarnation.
        state: lifecycle state.
        mailbox: the mailbox snapshot.
        processed: messages handled to completion, over all incarnations.
        restarts: incarnations started after the first.
        incarnation: 1 for the first incarnation, +1 per restart.
    """

    name: str | None
    actor_id: int
    actor_class: str
    state: ActorState
    mailbox: MailboxStatistics
    processed: int
    restarts: int
    incarnation: int


@attrs.frozen(kw_only=True)
class ActorStatus:
    """The answer to a status request, taken inside the actor.

    Attributes:
        statistics: the ref's statistics at that moment.
        details: what the actor's ``status()`` hook returned.
    """

    statistics: ActorStatistics
    details: dict[str, Any]


class ActorRef:
    """The handle to an actor: send it messages, ask it questions, watch it.

    Refs are created by :meth:`ActorSystem.spawn` or by a supervisor; never
    construct one yourself. A ref stays valid across restarts of its actor.
    """

    __slots__ = (
        "__weakref__",
        "_current_ask",
        "_done",
        "_early_tasks",
        "_exit",
        "_factory",
        "_id",
        "_incarnation",
        "_incarnation_done",
        "_instance",
        "_kill_scope",
        "_killed",
        "_last_exit",
        "_mailbox",
        "_name",
        "_nursery",
        "_parent",
        "_parent_stopping",
        "_parked",
        "_processed",
        "_scheduled",
        "_state",
        "_stop_request",
        "_task_mode",
        "_timers",
        "_undelivered",
        "system",
    )

    def __init__(
        self,
        system: ActorSystem,
        factory: Callable[[], Actor],
        *,
        actor_id: int,
        name: str | None = None,
        parent: ActorRef | None = None,
        mailbox: MailboxConfig | None = None,
    ) -> None:
        self.system = system
        self._factory = factory
        self._id = actor_id
        self._name = name
        self._parent = parent
        self._mailbox = Mailbox(mailbox) if mailbox is not None else Mailbox()
        self._instance: Actor | None = None
        self._state = ActorState.STARTING
        self._incarnation = 0
        self._processed = 0
        self._scheduled = False
        self._task_mode = False
        self._stop_request: Exit | None = None
        self._parent_stopping = False
        self._parked: Any = None  # the task-mode actor's task, while it waits for mail
        self._current_ask: Ask | None = None
        self._kill_scope: trio.CancelScope | None = None
        self._killed = False  # a kill landed on the running task-mode incarnation
        self._nursery: trio.Nursery | None = None
        # The tasks an eager start's on_start asked for, until its task runs.
        self._early_tasks: list[tuple[Callable[..., Awaitable[Any]], tuple[Any, ...]]] | None = None
        self._timers: list[Timer] | None = None
        self._done: trio.Event | None = None
        self._incarnation_done: trio.Event | None = None
        self._exit: Exit | None = None
        self._last_exit: Exit | None = None
        # Told messages it never handled, as it terminates (lowlevel.set_undelivered).
        self._undelivered: Callable[[Any, Exit], bool] | None = None

    # ------------------------------------------------------------------ public

    @property
    def name(self) -> str | None:
        """The registry name, or ``None``."""
        return self._name

    @property
    def state(self) -> ActorState:
        """The current lifecycle state."""
        return self._state

    @property
    def incarnation(self) -> int:
        """1 for the first incarnation; each restart adds one."""
        return self._incarnation

    @property
    def exit(self) -> Exit | None:
        """How the actor ended, once it is terminated; else ``None``."""
        return self._exit

    @property
    def alive(self) -> bool:
        """True until the actor is terminated for good."""
        return self._state in ACCEPTING or self._state is ActorState.STOPPING

    def tell(self, msg: Any) -> None:
        """Queue ``msg`` for the actor and return at once; never waits.

        Raises:
            MailboxFull: the mailbox is at capacity (whatever its policy: use
                ``await send()`` to wait for room under ``Overflow.WAIT``).
            ActorDead: the actor is terminated.
        """
        state = self._state
        if state is not RUNNING and state not in QUEUEING:
            raise self._dead_error("tell")
        mailbox = self._mailbox
        if not mailbox.has_room():
            raise self._full_error()
        mailbox.put(msg)
        if not self._scheduled:
            self._wake()

    async def send(self, msg: Any) -> None:
        """Queue ``msg``, applying the mailbox's overflow policy when it is full.

        Returns at once, without a checkpoint, when there is room. Under
        ``Overflow.WAIT`` it waits for room up to the policy's
        ``overflow_timeout``.

        Raises:
            MailboxFull: no room (at once under ``REJECT``, after the timeout
                under ``WAIT``).
            ActorDead: the actor is terminated, or died while we waited.
        """
        state = self._state
        if (state is RUNNING or state in QUEUEING) and self._mailbox.has_room():
            self._mailbox.put(msg)
            if not self._scheduled:
                self._wake()
            return
        if self._state not in QUEUEING:
            raise self._dead_error("send")
        config = self._mailbox.config
        if config.overflow is Overflow.REJECT:
            raise self._full_error()
        with trio.move_on_after(config.overflow_timeout):
            while True:
                await self._wait_for_room()
                if self._state not in QUEUEING:
                    raise self._dead_error("send")
                if self._mailbox.has_room():
                    self._mailbox.put(msg)
                    if not self._scheduled:
                        self._wake()
                    return
        raise MailboxFull(
            f"{self!r}: mailbox stayed full ({config.capacity} messages) for "
            f"{config.overflow_timeout} s; the actor is not keeping up",
            actor=repr(self),
            capacity=config.capacity,
        )

    # The ask timeout is part of the contract (it becomes AskTimeout, not a
    # bare Cancelled), as in every actor toolkit; hence the noqa.
    async def ask(
        self,
        msg: Any,
        *,
        timeout: float = DEFAULT_ASK_TIMEOUT,  # noqa: ASYNC109
        watch: AskWatch | None = None,
    ) -> Any:
        """Send ``msg`` and wait for the reply (``receive``'s return value).

        Args:
            msg: the message.
            timeout: seconds to wait for the reply.
            watch: what else bounds the wait (see :class:`AskWatch`): it is
                handed the pending ask if the asker parks, and may fail it.

        Returns:
            What the actor's ``receive`` returned for this message.

        Raises:
            AskTimeout: no reply within ``timeout``.
            ActorCrashed: ``receive`` raised on this message (chained).
            ActorDead: the actor is terminated, or was before it answered.
            MailboxFull: the mailbox is at capacity.
            ValueError: ``timeout`` is not a number of seconds >= 0 (checked, and
                nothing sent, before the message would wait in the mailbox).
        """
        if (
            not self._scheduled
            and self._state is RUNNING
            and not self._task_mode
            and not self._mailbox
        ):
            return await self._ask_inline(msg)  # answered at once: no wait to bound
        if not timeout >= 0:  # NaN too; checked before the message is queued
            raise ValueError(f"an ask's timeout is seconds >= 0 (math.inf: none), not {timeout!r}")
        if self._parked is not None and self._stop_request is None and self._state is RUNNING:
            inst = self._instance
            assert inst is not None
            if inst._receives_at_once:
                pending = Ask(msg, IN_HAND)
                reply = self._receive_at_once(inst, pending)
                if reply is not AT_LEISURE:
                    if pending.task is None:  # answered already (at once, or deferred and answered)
                        await checkpoint()
                        early = pending.early
                        return _incarnation.unwrap_reply(reply) if early is None else early.unwrap()
                    pending.task = current_task()  # deferred: its answer comes later
                    return await self._wait_reply(pending, timeout, msg, watch)
        if self._state not in QUEUEING:
            raise self._dead_error("ask")
        mailbox = self._mailbox
        if not mailbox.has_room():
            raise self._full_error()
        pending = Ask(msg, current_task())
        mailbox.put(pending)
        if not self._scheduled:
            self._wake()
        return await self._wait_reply(pending, timeout, msg, watch)

    def ask_soon(
        self,
        msg: Any,
        answered: Callable[[outcome.Outcome[Any]], object],
        *,
        watch: AskWatch | None = None,
    ) -> None:
        """Send ``msg`` as an ask that no task waits for: ``answered`` gets the answer.

        For a caller with many asks out at once (a node's outbox), which
        would otherwise park a task on each. ``answered(outcome)`` is
        called once, synchronously, in the task that answers: the actor's,
        a connection's reader, ``watch``'s timer, or this one before
        ``ask_soon`` returns (an idle actor that answers at once). It must
        not block and must not raise. There is no timeout of its own:
        ``watch`` bounds the ask (its ``parking`` is called once the ask
        is out, and an error it returns is the answer at once).

        Raises (nothing was sent):
            ActorDead: the actor is terminated.
            MailboxFull: the mailbox is at capacity.
        """
        if self._parked is not None and self._stop_request is None and self._state is RUNNING:
            inst = self._instance
            assert inst is not None
            if inst._receives_at_once:
                pending = Ask(msg, IN_HAND)
                reply = self._receive_at_once(inst, pending)
                if reply is not AT_LEISURE:
                    if pending.task is None:  # answered already (at once, or deferred and answered)
                        early = pending.early
                        if early is None:
                            early = reply if type(reply) is outcome.Error else outcome.Value(reply)
                        answered(early)
                        return
                    pending.task = Answered(answered)  # deferred: its answer comes later
                    self._watch_soon(pending, watch)
                    return
        if self._state not in QUEUEING:
            raise self._dead_error("ask")
        mailbox = self._mailbox
        if not mailbox.has_room():
            raise self._full_error()
        pending = Ask(msg, Answered(answered))
        mailbox.put(pending)
        if not self._scheduled:
            self._wake()
        self._watch_soon(pending, watch)

    @staticmethod
    def _watch_soon(pending: Ask, watch: AskWatch | None) -> None:
        """Hand ``watch`` an ask of :meth:`ask_soon`'s, now out; a refusal answers it."""
        if watch is None:
            return
        refused = watch.parking(pending)
        if refused is not None:
            pending.fail(refused)  # (an answer the actor gives later goes nowhere)

    async def ask_status(
        self,
        *,
        timeout: float = DEFAULT_ASK_TIMEOUT,  # noqa: ASYNC109
    ) -> ActorStatus:
        """Ask the actor for its status through the system lane.

        The request overtakes every queued user message.

        Raises:
            AskTimeout: no answer within ``timeout`` (the actor is stuck in a
                handler).
            ActorDead: the actor is terminated.
        """
        if self._state not in ACCEPTING:
            raise self._dead_error("ask_status")
        if not timeout >= 0:  # NaN too; checked before the request is queued
            raise ValueError(f"an ask's timeout is seconds >= 0 (math.inf: none), not {timeout!r}")
        pending = Ask(None, current_task())
        self._mailbox.put_system(Status(pending))
        self._wake_for_system()
        result: ActorStatus = await self._wait_reply(pending, timeout, "status")
        return result

    async def stop(self, *, timeout: float | None = 5.0) -> None:  # noqa: ASYNC109 (OTP shutdown)
        """Ask the actor to stop (exit reason ``SHUTDOWN``) and wait until it has.

        The stop overtakes queued user messages. A supervised actor's
        supervisor then decides, like for any exit (a permanent child is
        restarted); use the supervisor's ``terminate_child`` to stop a child
        for good.

        Args:
            timeout: seconds to wait for ``on_stop`` to finish before the
                actor is killed; ``None`` waits as long as it takes.
        """
        state = self._state
        if state not in ACCEPTING and not (
            # A top-level actor already on its way out (it stopped itself and
            # is in an async on_stop): wait for it, and kill it after timeout.
            state is ActorState.STOPPING and self._parent is None
        ):
            await checkpoint()
            return
        if self._parent is None:
            if state is RESTARTING:
                # Between incarnations (an in-place restart is pending):
                # terminate before yielding, so the restart sees it and
                # does not start a new incarnation on a terminated ref.
                _incarnation.terminate(self, self._last_exit or EXIT_SHUTDOWN)
                await checkpoint()
                return
            await _incarnation.stop(self, timeout)
            _incarnation.terminate(self, self._last_exit or EXIT_SHUTDOWN)
            return
        incarnation = self._incarnation
        self._mailbox.put_system(Stop(EXIT_SHUTDOWN))
        self._wake_for_system()
        event = _incarnation.incarnation_event(self)
        if timeout is None:
            await event.wait()
        else:
            with trio.move_on_after(timeout):
                await event.wait()
            # Still this incarnation, handling messages or hung in on_stop.
            if self._incarnation == incarnation and self._state in (
                RUNNING,
                ActorState.STOPPING,
            ):
                _incarnation.kill(self)
                await event.wait()

    def restart(self) -> None:
        """Ask the actor to restart in place: ``on_stop``, then a fresh instance.

        The request overtakes queued user messages; queued messages are kept.
        It counts as a restart in statistics but not toward a supervisor's
        restart intensity (it is not a failure).
        """
        if self._state not in ACCEPTING:
            raise self._dead_error("restart")
        self._mailbox.put_system(RESTART)
        self._wake_for_system()

    def kill(self) -> None:
        """End the current incarnation at once, without ``on_stop`` (reason ``KILLED``).

        OTP's ``exit(Pid, kill)``: a supervised actor's supervisor then
        decides, like after a crash (a transient child is restarted).
        """
        if self._state in (RUNNING, STARTING, ActorState.STOPPING):
            _incarnation.kill(self)

    async def wait_terminated(self) -> Exit:
        """Wait until the actor is terminated for good; return its exit reason."""
        if self._exit is None:
            if self._done is None:
                self._done = trio.Event()
            await self._done.wait()
        else:
            await checkpoint()
        assert self._exit is not None
        return self._exit

    def statistics(self) -> ActorStatistics:
        """A snapshot: state, mailbox depth, processed count, restarts."""
        return ActorStatistics(
            name=self._name,
            actor_id=self._id,
            actor_class=self._class_name(),
            state=self._state,
            mailbox=self._mailbox.statistics(),
            processed=self._processed,
            restarts=max(0, self._incarnation - 1),
            incarnation=self._incarnation,
        )

    def __repr__(self) -> str:
        label = self._name if self._name is not None else f"#{self._id}"
        return (
            f"<ActorRef {label} {self._class_name()} [{self._state.name}] "
            f"mailbox={self._mailbox.depth}/{self._mailbox.config.capacity}>"
        )

    # ---------------------------------------------------------------- internal

    def _class_name(self) -> str:
        inst = self._instance
        if inst is not None:
            return type(inst).__name__
        factory: Any = self._factory
        while isinstance(factory, functools.partial):  # spawn(Cls, *args)
            factory = factory.func
        return getattr(factory, "__name__", None) or type(factory).__name__

    async def _ask_inline(self, msg: Any) -> Any:
        await checkpoint_if_cancelled()
        inst = self._instance
        assert inst is not None
        self._scheduled = True
        try:
            reply = inst.receive(msg)
        except Exception as exc:
            self._scheduled = False
            _incarnation.crashed(self, exc)
            raise _incarnation.crash_error(self, exc, msg) from exc
        self._processed += 1
        if self._state is RUNNING and (self._mailbox or self._stop_request is not None):
            self.system._enqueue(self)
        else:
            self._scheduled = False
        # Inline asks never reach the scheduler; yield now and then so a
        # task that asks in a loop cannot starve the others.
        system = self.system
        system._inline_asks += 1
        if system._inline_asks >= TASK_FAIRNESS_BATCH:
            system._inline_asks = 0
            await checkpoint()
        return _incarnation.unwrap_reply(reply)

    def _receive_at_once(self, inst: Actor, pending: Ask) -> Any:
        """Have an idle task-mode actor handle ``pending`` in the asker's task.

        Returns what ``receive_at_once`` returned: ``AT_LEISURE`` (queue it
        instead); or a reply, with ``pending.task`` cleared if it was
        answered now, and left for the actor to answer if it deferred it.
        """
        self._current_ask = pending
        try:
            reply = inst.receive_at_once(pending.msg)
        except Exception as exc:
            deferred = self._current_ask is not pending
            self._current_ask = None
            if not deferred:  # queued instead: receive meets it, and crashes if it must
                return AT_LEISURE
            # Raised after taking the ask over (against the contract): its holder
            # may still answer; the asker hears of the defect now, and only once.
            pending.task = pending.early = None
            self._processed += 1
            return outcome.Error(_incarnation.crash_error(self, exc, pending.msg))
        deferred = self._current_ask is not pending
        self._current_ask = None
        if reply is AT_LEISURE:
            if not deferred:
                return reply
            reply = None  # taken over all the same: its holder answers it
        self._processed += 1
        if not deferred:  # this is the answer
            pending.task = None
        return reply

    def _wait_reply(
        self,
        pending: Ask,
        timeout: float,
        msg: Any,
        watch: AskWatch | None = None,
    ) -> Awaitable[Any]:
        """The wait for ``pending``'s answer, for the asker to await at once.

        Not a coroutine of its own: with no timeout the asker awaits trio's
        wait itself, one frame fewer on every ask a node's send parks in.
        """
        if watch is not None:
            refused = watch.parking(pending)
            if refused is not None:
                pending.task = None  # abandoned: an answer to come goes nowhere
                try:
                    raise refused
                finally:
                    del refused  # no cycle through this frame's traceback
        if timeout == math.inf:  # a supervisor's call, a node's send: no cancel scope
            return wait_task_rescheduled(pending.abandon)  # noqa: ASYNC105 (the asker awaits it)
        return self._wait_reply_within(pending, timeout, msg)

    async def _wait_reply_within(
        self,
        pending: Ask,
        timeout: float,  # noqa: ASYNC109
        msg: Any,
    ) -> Any:
        with trio.move_on_after(timeout):
            return await wait_task_rescheduled(pending.abandon)
        raise self.ask_timeout(msg, timeout)

    def ask_timeout(self, msg: Any, timeout: float) -> AskTimeout:
        """The error of an ask of ``msg`` not answered within ``timeout`` seconds.

        For a caller that bounds an ask under a deadline of its own (asking
        with ``timeout=math.inf``): one cancel scope instead of two.
        """
        return AskTimeout(
            f"{self!r} did not answer {msg!r} within {timeout} s "
            f"(state {self._state.name}, {self._mailbox.depth} messages queued)"
        )

    async def _wait_for_room(self) -> None:
        mailbox = self._mailbox
        lot = mailbox.room
        if lot is None:
            lot = mailbox.room = ParkingLot()
        await lot.park()

    def _wake_room_waiters(self, count: int | None) -> None:
        """Wake up to ``count`` senders waiting for room (``None``: all of them)."""
        mailbox = self._mailbox
        lot = mailbox.room
        if lot is None:
            return
        if count is None:
            lot.unpark_all()
        elif count > 0:
            lot.unpark(count=count)
        if not lot:
            mailbox.room = None

    def _wake(self) -> None:
        """Make sure someone will process the mailbox (state permitting)."""
        if self._state is not RUNNING:
            return
        if self._task_mode:
            task = self._parked
            if task is not None:
                self._parked = None
                trio.lowlevel.reschedule(task)
        else:
            self._scheduled = True
            self.system._enqueue(self)

    def _wake_for_system(self) -> None:
        if not self._scheduled or self._task_mode:
            self._wake()

    def _dead_error(self, what: str) -> ActorDead:
        return ActorDead(
            f"cannot {what} {self!r}: the actor has terminated ({self._exit}); "
            "look it up again or start a new one",
            reason=self._exit,
        )

    def _full_error(self) -> MailboxFull:
        capacity = self._mailbox.config.capacity
        return MailboxFull(
            f"{self!r}: mailbox is full ({capacity} messages); the actor is not "
            "keeping up: slow down, or use `await ref.send()` with Overflow.WAIT",
            actor=repr(self),
            capacity=capacity,
        )

    def _status_of(self, inst: Actor) -> ActorStatus:
        try:
            details = inst.status()
        except Exception as exc:
            details = {"status_error": repr(exc)}
        return ActorStatus(statistics=self.statistics(), details=details)
