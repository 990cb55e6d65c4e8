"""The actor's cell: the lifecycle and mailbox-processing machinery behind ``ActorRef``.

``actors.ref`` holds the public handle (``ActorRef``, a subclass of ``_Cell``
that adds no state); this module holds everything the kernel does to the
handle from the inside. See ``actors.ref`` for the design.

- Starting an incarnation: ``_start`` picks the mode from the actor's class;
  dispatcher mode (``_start_inline``) runs ``on_start`` in the caller, task
  mode (``_task_main``) runs one task per incarnation around ``_task_loop``.
- Processing the mailbox: ``_task_loop`` in task mode, ``_run_batch`` (called
  by the system's dispatcher) in dispatcher mode; both give the system lane
  (``_Stop``, ``_RESTART``, ``_Status``, ``ChildExited``) priority.
- Ending an incarnation: ``_end_incarnation`` hands the ref to its parent (or
  to an in-place restart); ``_stop_incarnation`` and ``_kill`` end it on
  request; ``_terminate`` ends the actor for good.
- Timers and owned tasks die with the incarnation that started them.

``_Cell`` owns every slot and is never instantiated on its own: each cell is
an ``ActorRef``. Where a method passes ``self`` to an API that takes an
``ActorRef``, mypy cannot know that (it rejects a subclass as a self-type),
hence the ``# type: ignore`` on those lines; they cost nothing at run time,
unlike a ``cast`` on the hot paths.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

import outcome
import trio
from trio.lowlevel import (
    Abort,
    checkpoint,
    current_task,
    reschedule,
    wait_task_rescheduled,
)

from .actor import EXIT_KILLED, EXIT_NORMAL, EXIT_SHUTDOWN, Actor, ActorState, Exit, ExitKind
from .errors import (
    ActorCrashed,
    ActorDead,
    MailboxFull,
    NotInActorContext,
    StartFailed,
)
from .mailbox import Mailbox, MailboxConfig

if TYPE_CHECKING:
    from .ref import ActorRef, ActorStatus
    from .system import ActorSystem
    from .timers import Timer

log = logging.getLogger("switchboard.actors")


TASK_FAIRNESS_BATCH: Final = 64  # messages a task-mode actor handles between checkpoints

RUNNING: Final = ActorState.RUNNING
RESTARTING: Final = ActorState.RESTARTING
STARTING: Final = ActorState.STARTING
_ACCEPTING: Final = frozenset({ActorState.STARTING, ActorState.RUNNING, ActorState.RESTARTING})
# States in which user messages are still queued: a STOPPING actor is not
# terminated yet; what it is sent goes to its next incarnation, or to the
# dead letters (asks: ActorDead) when it terminates.
_QUEUEING: Final = _ACCEPTING | {ActorState.STOPPING}


class _Ask:
    """A message waiting for a reply, and the task waiting for it."""

    __slots__ = ("msg", "task")

    def __init__(self, msg: Any, task: Any) -> None:
        self.msg = msg
        self.task = task  # None once answered or abandoned

    def reply(self, value: Any) -> None:
        task = self.task
        if task is not None:
            self.task = None
            reschedule(task, outcome.Value(value))

    def fail(self, error: BaseException) -> None:
        task = self.task
        if task is not None:
            self.task = None
            reschedule(task, outcome.Error(error))


class _Stop:
    __slots__ = ("exit",)

    def __init__(self, exit: Exit) -> None:
        self.exit = exit


class _Restart:
    __slots__ = ()


class _Status:
    __slots__ = ("ask",)

    def __init__(self, ask: _Ask) -> None:
        self.ask = ask


class ChildExited:
    """System message to a parent: one incarnation of a child ended."""

    __slots__ = ("child", "exit", "incarnation")

    def __init__(self, child: ActorRef, exit: Exit, incarnation: int) -> None:
        self.child = child
        self.exit = exit
        self.incarnation = incarnation

    def __repr__(self) -> str:
        return f"<ChildExited {self.child!r} incarnation={self.incarnation} {self.exit}>"


_RESTART: Final = _Restart()


def _unwrap(exc: BaseException) -> BaseException:
    """The single real error inside nested one-leaf exception groups."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _orphan_exit(parent: _Cell, msg: ChildExited) -> None:
    """A child's exit reached a parent that does not supervise: end the child."""
    log.warning(
        "%r is the parent of %r but does not supervise children; the child is "
        "terminated (%s) instead of restarted",
        parent,
        msg.child,
        msg.exit,
    )
    msg.child._terminate(msg.exit)


class _Cell:
    """Everything an ``ActorRef`` holds, and the kernel's work on it.

    Never constructed directly: :class:`~actors.ref.ActorRef` is the only
    subclass, and every instance is one.
    """

    __slots__ = (
        "__weakref__",
        "_current_ask",
        "_done",
        "_exit",
        "_factory",
        "_id",
        "_incarnation",
        "_incarnation_done",
        "_instance",
        "_kill_scope",
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
        self._state = STARTING
        self._incarnation = 0
        self._processed = 0
        self._scheduled = False
        self._task_mode = False
        self._stop_request: Exit | None = None
        self._parent_stopping = False
        self._parked: Any = None
        self._current_ask: _Ask | None = None
        self._kill_scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._timers: list[Timer] | None = None
        self._done: trio.Event | None = None
        self._incarnation_done: trio.Event | None = None
        self._exit: Exit | None = None
        self._last_exit: Exit | None = None

    # ---------------------------------------------------------------- internal

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

    def _wake(self) -> None:
        """Make sure someone will process the mailbox (state permitting)."""
        if self._state is not RUNNING:
            return
        if self._task_mode:
            task = self._parked
            if task is not None:
                self._parked = None
                reschedule(task)
        else:
            self._scheduled = True
            self.system._enqueue(self)  # type: ignore[arg-type]

    def _wake_for_system(self) -> None:
        if not self._scheduled or self._task_mode:
            self._wake()

    def _wake_room_waiter(self) -> None:
        waiters = self._mailbox.room_waiters
        if waiters:
            reschedule(waiters.popleft())
            if not waiters:
                self._mailbox.room_waiters = None

    def _wake_room_waiters(self) -> None:
        """Wake as many waiting senders as the mailbox has room for."""
        mailbox = self._mailbox
        waiters = mailbox.room_waiters
        room = mailbox.config.capacity - mailbox.depth
        while waiters and room > 0:
            reschedule(waiters.popleft())
            room -= 1
        if not waiters:
            mailbox.room_waiters = None

    def _wake_all_room_waiters(self) -> None:
        waiters = self._mailbox.room_waiters
        self._mailbox.room_waiters = None
        for task in waiters or ():
            reschedule(task)

    def _incarnation_event(self) -> trio.Event:
        if self._incarnation_done is None:
            self._incarnation_done = trio.Event()
        return self._incarnation_done

    # ---- starting an incarnation ------------------------------------------------

    def _new_instance(self) -> Actor:
        try:
            inst = self._factory()
        except Exception as exc:
            raise StartFailed(f"{self!r}: the actor factory raised {exc!r}") from exc
        if not isinstance(inst, Actor):
            raise StartFailed(f"{self!r}: the factory returned {inst!r}, which is not an Actor")
        inst._ref = self  # type: ignore[assignment]
        return inst

    async def _start(self, inst: Actor | None = None) -> None:
        """Start a new incarnation and return once ``on_start`` has succeeded.

        Args:
            inst: an instance already made by the factory, or ``None`` to make one.

        Raises:
            StartFailed: the factory or ``on_start`` raised; the ref is left
                in its previous (not running) state.
        """
        if inst is None:
            inst = self._new_instance()
        if inst._needs_task:
            await self.system._nursery.start(self._task_main, inst)
        else:
            self._start_inline(inst)

    def _start_inline(self, inst: Actor) -> None:
        self._begin(inst, task_mode=False)
        if inst._has_on_start:
            try:
                inst.on_start()
            except Exception as exc:
                self._abort_start()
                raise StartFailed(f"{self!r}: on_start raised {exc!r}") from exc
        self._state = RUNNING
        if self._mailbox or self._stop_request is not None:
            self._scheduled = True
            self.system._enqueue(self)  # type: ignore[arg-type]

    def _begin(self, inst: Actor, *, task_mode: bool) -> None:
        self._instance = inst
        self._incarnation += 1
        self._task_mode = task_mode
        self._state = STARTING
        self._stop_request = None
        self._scheduled = False

    def _abort_start(self) -> None:
        self._cancel_timers()
        self._instance = None
        self._incarnation -= 1
        self._state = RESTARTING if self._exit is None else self._state

    async def _task_main(self, inst: Actor, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self._begin(inst, task_mode=True)
        exit: Exit | None = None
        started = False
        restart_in_place = False
        try:
            with trio.CancelScope() as kill_scope:
                self._kill_scope = kill_scope
                try:
                    async with trio.open_nursery() as nursery:
                        self._nursery = nursery
                        result = inst.on_start()
                        if inst._async_on_start:
                            await result  # type: ignore[misc]
                        self._state = RUNNING
                        started = True
                        task_status.started()
                        # The status holds the nursery that start() made for the
                        # start-up; dropping it frees that nursery (1.2 KB per actor).
                        del task_status
                        exit = await self._task_loop(inst)
                        if inst._has_on_stopping and exit is not _RESTART_EXIT:
                            await self._call_on_stopping(inst, exit)
                        nursery.cancel_scope.cancel()
                except Exception as exc:
                    error = _unwrap(exc)
                    if not started:
                        self._nursery = None
                        self._abort_start()
                        raise StartFailed(f"{self!r}: on_start raised {error!r}") from error
                    exit = Exit(kind=ExitKind.CRASHED, error=error)
                    self._fail_current_ask(error)
                self._nursery = None
                if exit is _RESTART_EXIT:
                    restart_in_place = True
                    exit = EXIT_SHUTDOWN
                assert exit is not None
                self._state = ActorState.STOPPING
                await self._call_on_stop_async(inst, exit)
            if kill_scope.cancelled_caught:
                exit = EXIT_KILLED
                restart_in_place = False
            if not started:
                self._abort_start()
                raise StartFailed(f"{self!r} was killed before on_start finished")
        finally:
            self._kill_scope = None
            self._nursery = None
            if started and self._instance is inst:
                # Cancelled from outside (system shutdown) leaves exit unset.
                self._end_incarnation(exit or EXIT_KILLED, restart_in_place=restart_in_place)

    async def _task_loop(self, inst: Actor) -> Exit:
        mailbox = self._mailbox
        is_async = inst._async_receive
        since_checkpoint = 0
        while True:
            if mailbox._system:
                exit = await self._handle_system(mailbox.pop_system(), inst)
                if exit is not None:
                    return exit
                continue
            if self._stop_request is not None:
                return self._stop_request
            # Test the lane, not the popped item: ``None`` is a valid message.
            if not mailbox._user:
                mailbox.release()
                self._parked = current_task()

                def abort(_: Any) -> Abort:
                    self._parked = None
                    return Abort.SUCCEEDED

                await wait_task_rescheduled(abort)
                since_checkpoint = 0
                continue
            item = mailbox.pop_user()
            if mailbox.room_waiters:
                self._wake_room_waiter()
            if type(item) is _Ask:
                self._current_ask = item
                result = inst.receive(item.msg)
                if is_async:
                    result = await result
                self._current_ask = None
                item.reply(result)
            else:
                result = inst.receive(item)
                if is_async:
                    await result
            self._processed += 1
            since_checkpoint += 1
            if since_checkpoint >= TASK_FAIRNESS_BATCH:
                since_checkpoint = 0
                await checkpoint()

    async def _handle_system(self, msg: Any, inst: Actor) -> Exit | None:
        if type(msg) is _Stop:
            return msg.exit
        if msg is _RESTART:
            return _RESTART_EXIT
        if type(msg) is _Status:
            msg.ask.reply(self._status_of(inst))
            return None
        if type(msg) is ChildExited:
            handler = getattr(inst, "_on_child_exit", None)
            if handler is None:
                _orphan_exit(self, msg)
                return None
            result = handler(msg)
            if result is not None:
                await result
            return None
        raise AssertionError(f"unknown system message {msg!r}")

    if TYPE_CHECKING:
        # Defined by ActorRef, next to statistics(), which it answers with.
        def _status_of(self, inst: Actor) -> ActorStatus: ...

    # ---- dispatcher mode --------------------------------------------------------

    def _run_batch(self, limit: int) -> None:
        """Handle up to ``limit`` user messages; called by the dispatcher only."""
        inst = self._instance
        mailbox = self._mailbox
        handled = 0
        while self._state is RUNNING:
            if mailbox._system:
                msg = mailbox.pop_system()
                if type(msg) is _Status:
                    msg.ask.reply(self._status_of(inst))  # type: ignore[arg-type]
                    continue
                if type(msg) is _Stop:
                    self._finish_inline(msg.exit)
                    return
                if msg is _RESTART:
                    self._finish_inline(EXIT_SHUTDOWN, restart_in_place=True)
                    return
                assert type(msg) is ChildExited, msg
                _orphan_exit(self, msg)
                continue
            if self._stop_request is not None:
                self._finish_inline(self._stop_request)
                return
            if handled >= limit:
                break
            # Test the lane, not the popped item: ``None`` is a valid message.
            if not mailbox._user:
                break
            item = mailbox.pop_user()
            handled += 1
            if type(item) is _Ask:
                try:
                    result = inst.receive(item.msg)  # type: ignore[union-attr]
                except Exception as exc:
                    item.fail(self._crash_error(exc, item.msg))
                    self._crashed(exc)
                    return
                item.reply(result)
            else:
                try:
                    inst.receive(item)  # type: ignore[union-attr]
                except Exception as exc:
                    self._crashed(exc)
                    return
            self._processed += 1
        if mailbox.room_waiters:
            # Once per batch, not per message: a woken sender refills at once,
            # so waking one per freed slot made most wake-ups find it full again.
            self._wake_room_waiters()
        if self._state is RUNNING and (mailbox or self._stop_request is not None):
            self.system._enqueue(self)  # type: ignore[arg-type]
        else:
            self._scheduled = False
            mailbox.release()

    def _crash_error(self, exc: BaseException, msg: Any) -> ActorCrashed:
        error = ActorCrashed(f"{self!r} raised {type(exc).__name__} while handling {msg!r}")
        error.__cause__ = exc
        return error

    def _fail_current_ask(self, exc: BaseException) -> None:
        pending = self._current_ask
        if pending is not None:
            self._current_ask = None
            pending.fail(self._crash_error(exc, pending.msg))

    def _crashed(self, exc: BaseException) -> None:
        self._finish_inline(Exit(kind=ExitKind.CRASHED, error=exc))

    def _finish_inline(self, exit: Exit, *, restart_in_place: bool = False) -> None:
        """End a dispatcher-mode incarnation: ``on_stop``, then the aftermath."""
        inst = self._instance
        self._scheduled = False
        self._state = ActorState.STOPPING
        if inst is not None and inst._has_on_stop:
            try:
                inst.on_stop(exit)
            except Exception:
                log.exception("%r: on_stop raised while ending with %s", self, exit)
        self._end_incarnation(exit, restart_in_place=restart_in_place)

    async def _call_on_stop_async(self, inst: Actor, exit: Exit) -> None:
        if not inst._has_on_stop:
            return
        try:
            result = inst.on_stop(exit)
            if inst._async_on_stop:
                await result  # type: ignore[misc]
        except Exception:
            log.exception("%r: on_stop raised while ending with %s", self, exit)

    # ---- ending an incarnation --------------------------------------------------

    def _end_incarnation(self, exit: Exit, *, restart_in_place: bool = False) -> None:
        """The incarnation is over; hand the ref to whoever decides what follows."""
        if exit.kind is ExitKind.CRASHED:
            log.error(
                "%r crashed in incarnation %d",
                self,
                self._incarnation,
                exc_info=exit.error,
            )
        self._cancel_timers()
        self._instance = None
        pending, self._current_ask = self._current_ask, None
        if pending is not None:
            # Only a kill (or a cancelled system) gets here with an ask in hand.
            pending.fail(
                ActorDead(
                    f"{self!r} ended ({exit}) while handling {pending.msg!r}; "
                    "the message was not answered",
                    reason=exit,
                )
            )
        self._parked = None
        self._scheduled = False
        self._last_exit = exit
        self._state = RESTARTING
        event, self._incarnation_done = self._incarnation_done, None
        if event is not None:
            event.set()
        if self._parent_stopping:
            # The parent is stopping this incarnation and waits for it.
            self._parent_stopping = False
            return
        if restart_in_place:
            self.system._restart_in_place(self)  # type: ignore[arg-type]
            return
        parent = self._parent
        if parent is not None and parent.alive:
            if (
                parent._parked is not None
                and not parent._mailbox
                and parent._stop_request is None
                and parent._state is RUNNING
            ):
                # The parent is idle: nothing is queued ahead of this exit, so a
                # parent that can decide without awaiting does it here, saving
                # a task switch (see Supervisor._child_exit_inline).
                decide = getattr(parent._instance, "_child_exit_inline", None)
                if decide is not None and decide(self, exit, self._incarnation):
                    return
            parent._mailbox.put_system(ChildExited(self, exit, self._incarnation))  # type: ignore[arg-type]
            parent._wake_for_system()
            return
        self._terminate(exit)

    async def _stop_incarnation(self, shutdown: float | None) -> None:
        """Stop the running incarnation for the parent; leave the ref in limbo.

        Args:
            shutdown: seconds to wait for ``on_stop`` before killing; ``0``
                kills at once (OTP's brutal_kill); ``None`` waits forever.
        """
        if self._state is RESTARTING or (
            self._state not in _ACCEPTING and (self._state is not ActorState.STOPPING)
        ):
            await checkpoint()
            return
        if self._state is STARTING:
            # Only task-mode starts can be in flight; wait for the outcome.
            await checkpoint()
        self._parent_stopping = True
        event = self._incarnation_event()
        if shutdown == 0:
            self._kill()
        else:
            self._mailbox.put_system(_Stop(EXIT_SHUTDOWN))
            self._wake_for_system()
            if shutdown is None:
                await event.wait()
                return
            with trio.move_on_after(shutdown):
                await event.wait()
                return
            self._kill()
        await event.wait()

    async def _call_on_stopping(self, inst: Actor, exit: Exit) -> None:
        try:
            await inst.on_stopping(exit)
        except Exception:
            log.exception("%r: on_stopping raised; stopping anyway", self)

    def _kill(self) -> None:
        """Brutal kill: no ``on_stop``, owned tasks cancelled."""
        # An actor that owns children (a supervisor) takes them down with it,
        # as linked processes die with a killed OTP supervisor.
        on_killed = getattr(self._instance, "_on_killed", None)
        if on_killed is not None:
            on_killed()
        if self._task_mode:
            scope = self._kill_scope
            if scope is not None:
                scope.cancel()
                return
        if self._state in (RUNNING, STARTING, ActorState.STOPPING):
            self._end_incarnation(EXIT_KILLED)

    def _terminate(self, exit: Exit) -> None:
        """Final: the actor will never run again."""
        if self._exit is not None:
            return
        self._exit = exit
        self._state = ActorState.FAILED if exit.kind is ExitKind.CRASHED else ActorState.STOPPED
        self._instance = None
        self._parent = None
        self.system._forget(self)  # type: ignore[arg-type]
        mailbox = self._mailbox
        for msg in mailbox.drain_system():
            if type(msg) is _Status:
                msg.ask.fail(self._dead_error("ask_status"))
        for item in mailbox.drain_user():
            if type(item) is _Ask:
                item.fail(self._dead_error("ask"))
            else:
                self.system._dead_letter(self, item, exit)  # type: ignore[arg-type]
        self._wake_all_room_waiters()
        event, self._incarnation_done = self._incarnation_done, None
        if event is not None:
            event.set()
        if self._done is not None:
            self._done.set()

    # ---- timers and owned tasks -------------------------------------------------

    def _start_timer(self, delay: float, msg: Any, interval: float | None) -> Timer:
        if self._state not in (RUNNING, STARTING):
            raise NotInActorContext(f"{self!r} is not running: cannot start a timer")
        timer = self.system._timers.start(self, self._incarnation, delay, msg, interval)  # type: ignore[arg-type]
        if self._timers is None:
            self._timers = []
        elif len(self._timers) > 32:
            self._timers = [t for t in self._timers if t.active]
        self._timers.append(timer)
        return timer

    def _cancel_timers(self) -> None:
        timers, self._timers = self._timers, None
        for timer in timers or ():
            timer.cancel()

    def _start_owned_task(self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> None:
        nursery = self._nursery
        if nursery is None:
            raise NotInActorContext(
                f"{self!r} has no task context: only an actor with an async hook "
                "(on_start, receive or on_stop) can own tasks"
            )
        nursery.start_soon(fn, *args)

    def _request_self_stop(self) -> None:
        if self._stop_request is None:
            self._stop_request = EXIT_NORMAL
        if not self._scheduled:
            self._wake()


# A sentinel exit returned by the task loop for a requested in-place restart.
_RESTART_EXIT: Final = Exit(kind=ExitKind.SHUTDOWN)
