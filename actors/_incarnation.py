"""The life of one incarnation: start it, run its mailbox, end it.

Design:
- An :class:`~actors.ref.ActorRef` outlives its incarnations; this module is
  what the kernel does to a ref from the inside, as functions of the ref.
  The handle's own side (sending, asking, waiting) is in ``actors.ref``; the
  documented subset a supervisor may call is ``actors.lowlevel``.
- Starting: :func:`start` picks the mode from the actor's class. Dispatcher
  mode (:func:`start_nowait`) runs ``on_start`` in the caller; task mode
  (:func:`run_task`) runs one task per incarnation around :func:`_task_loop`.
- Running: :func:`_task_loop` in task mode, :func:`run_batch` (called by the
  system's dispatcher) in dispatcher mode; both give the system lane
  (``Stop``, ``RESTART``, ``Status``, ``ChildExited``) priority.
- Ending: :func:`end` hands the ref to its parent (a ``Parent``, see
  ``actors.lowlevel``) or to an in-place restart; :func:`stop` and
  :func:`kill` end it on request; :func:`terminate` ends the actor for good.
- Timers and owned tasks die with the incarnation that started them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

import outcome
import trio
from trio.lowlevel import Abort, checkpoint, current_task, wait_task_rescheduled

from providers.groups import lone_exception

from ._messages import RESTART, Ask, ChildExited, Parent, Status, Stop
from .actor import EXIT_KILLED, EXIT_NORMAL, EXIT_SHUTDOWN, Actor, ActorState, Exit, ExitKind
from .errors import ActorCrashed, ActorDead, NotInActorContext, StartFailed

if TYPE_CHECKING:
    from .ref import ActorRef
    from .timers import Timer

log = logging.getLogger("switchboard.actors")

TASK_FAIRNESS_BATCH: Final = 64  # messages a task-mode actor handles between checkpoints

RUNNING: Final = ActorState.RUNNING
RESTARTING: Final = ActorState.RESTARTING
STARTING: Final = ActorState.STARTING
STOPPING: Final = ActorState.STOPPING
ACCEPTING: Final = frozenset({ActorState.STARTING, ActorState.RUNNING, ActorState.RESTARTING})
# States in which user messages are still queued: a STOPPING actor is not
# terminated yet; what it is sent goes to its next incarnation, or to the
# dead letters (asks: ActorDead) when it terminates.
QUEUEING: Final = ACCEPTING | {ActorState.STOPPING}

# The exit the task loop returns for a requested in-place restart.
_RESTART_EXIT: Final = Exit(kind=ExitKind.SHUTDOWN)


def _parent_hooks(inst: Actor | None) -> Parent | None:
    """``inst`` if it supervises children, else ``None``."""
    return inst if isinstance(inst, Parent) else None


def _orphan_exit(parent: ActorRef, msg: ChildExited) -> None:
    """A child's exit reached a parent that does not supervise: end the child."""
    log.warning(
        "%r is the parent of %r but does not supervise children; the child is "
        "terminated (%s) instead of restarted",
        parent,
        msg.child,
        msg.exit,
    )
    terminate(msg.child, msg.exit)


def crash_error(ref: ActorRef, exc: BaseException, msg: Any) -> ActorCrashed:
    """What an asker gets when the handler raised on its message (chained)."""
    error = ActorCrashed(f"{ref!r} raised {type(exc).__name__} while handling {msg!r}")
    error.__cause__ = exc
    return error


# --- starting an incarnation ------------------------------------------------------


def new_instance(ref: ActorRef) -> Actor:
    """A new instance from the ref's factory, bound to the ref.

    Raises:
        StartFailed: the factory raised or returned something else than an Actor.
    """
    try:
        inst = ref._factory()
    except Exception as exc:
        raise StartFailed(f"{ref!r}: the actor factory raised {exc!r}") from exc
    if not isinstance(inst, Actor):
        raise StartFailed(f"{ref!r}: the factory returned {inst!r}, which is not an Actor")
    inst._ref = ref
    return inst


async def start(ref: ActorRef, inst: Actor | None = None) -> None:
    """Start a new incarnation and return once ``on_start`` has succeeded.

    Raises:
        StartFailed: the factory or ``on_start`` raised; the ref is left in
            its previous (not running) state.
    """
    if inst is None:
        inst = new_instance(ref)
    if not inst._needs_task:
        start_nowait(ref, inst)
    elif inst._async_on_start:
        await ref.system._nursery.start(run_task, ref, inst)
    else:
        start_eager(ref, inst)


def start_without_waiting(ref: ActorRef) -> None:
    """:func:`start` for an actor that starts without awaiting.

    Raises:
        StartFailed: the factory or ``on_start`` raised, or the factory made
            an actor whose ``on_start`` awaits (it is not started).
    """
    inst = new_instance(ref)
    if not inst._needs_task:
        start_nowait(ref, inst)
    elif not inst._async_on_start:
        start_eager(ref, inst)
    else:
        raise StartFailed(f"{ref!r}: the factory made {inst!r}, whose on_start awaits")


def start_nowait(ref: ActorRef, inst: Actor) -> None:
    """Start a dispatcher-mode incarnation: ``on_start`` runs here and now.

    Raises:
        StartFailed: ``on_start`` raised.
    """
    _begin(ref, inst, task_mode=False)
    if inst._has_on_start:
        try:
            inst.on_start()
        except Exception as exc:
            _abort_start(ref)
            raise StartFailed(f"{ref!r}: on_start raised {exc!r}") from exc
    ref._state = RUNNING
    if ref._mailbox or ref._stop_request is not None:
        ref._scheduled = True
        ref.system._enqueue(ref)


def start_eager(ref: ActorRef, inst: Actor) -> None:
    """Start a task-mode incarnation whose ``on_start`` is a plain function.

    ``on_start`` runs here and now, as in dispatcher mode, and the
    incarnation's task is then spawned to run the mailbox: the caller does
    not wait for it (no ``Nursery.start``, with its temporary nursery and
    two task switches, per actor). The tasks ``on_start`` asked for
    (``start_task``) start with the incarnation's nursery, before its first
    message. Until the task runs, the incarnation is RUNNING with no task:
    mail waits in the mailbox, a stop waits for the task, a kill ends the
    incarnation at once and the task, when it runs, finds it over.

    Raises:
        StartFailed: ``on_start`` raised.
    """
    _begin(ref, inst, task_mode=True)
    ref._killed = False
    early: list[tuple[Callable[..., Awaitable[Any]], tuple[Any, ...]]] = []
    ref._early_tasks = early
    try:
        if inst._has_on_start:
            inst.on_start()
    except Exception as exc:
        _abort_start(ref)
        raise StartFailed(f"{ref!r}: on_start raised {exc!r}") from exc
    finally:
        ref._early_tasks = None
    ref._state = RUNNING
    # run_task itself is the task's coroutine: no wrapper frame kept for the actor's life.
    ref.system._nursery.start_soon(
        run_task, ref, inst, trio.TASK_STATUS_IGNORED, early, ref._incarnation
    )


def _begin(ref: ActorRef, inst: Actor, *, task_mode: bool) -> None:
    ref._instance = inst
    ref._incarnation += 1
    ref._task_mode = task_mode
    ref._state = STARTING
    ref._stop_request = None
    ref._scheduled = False


def _abort_start(ref: ActorRef) -> None:
    cancel_timers(ref)
    ref._instance = None
    ref._incarnation -= 1
    ref._state = RESTARTING if ref._exit is None else ref._state


async def run_task(
    ref: ActorRef,
    inst: Actor,
    task_status: Any = trio.TASK_STATUS_IGNORED,
    early: list[tuple[Callable[..., Awaitable[Any]], tuple[Any, ...]]] | None = None,
    incarnation: int = 0,
) -> None:
    """Run one task-mode incarnation from ``on_start`` to its end.

    A kill cancels ``ref._kill_scope``: the nursery's own scope while the
    nursery runs (no scope of its own around it, kept for the actor's whole
    life), then one around ``on_stop``. ``ref._killed`` tells a kill from the
    cancel that ends the owned tasks once the mailbox loop is over.

    With ``early``, :func:`start_eager` has already run ``on_start`` of
    ``incarnation``; these are the tasks it started, to start in the nursery.
    """
    if early is None:
        _begin(ref, inst, task_mode=True)
        ref._killed = False
    elif ref._instance is not inst or ref._incarnation != incarnation:
        return  # ended (killed, terminated) before its task ran: nothing of it starts
    exit: Exit | None = None
    started = early is not None
    restart_in_place = False
    try:
        try:
            async with trio.open_nursery() as nursery:
                ref._nursery = nursery
                ref._kill_scope = nursery.cancel_scope
                if early is None:
                    result = inst.on_start()
                    if inst._async_on_start:
                        await result  # type: ignore[misc]
                    ref._state = RUNNING
                    started = True
                    task_status.started()
                    # The status holds the nursery that start() made for the
                    # start-up; dropping it frees that nursery (1.2 KB per actor).
                    del task_status
                else:
                    for fn, args in early:
                        nursery.start_soon(fn, *args)
                    early.clear()  # the task's own frame keeps the list for the actor's life
                exit = await _task_loop(ref, inst)
                if inst._has_on_stopping and exit is not _RESTART_EXIT:
                    await _call_on_stopping(ref, inst, exit)
                nursery.cancel_scope.cancel()
        except Exception as exc:
            error = lone_exception(exc)
            if not started:
                ref._nursery = None
                ref._kill_scope = None
                _abort_start(ref)
                raise StartFailed(f"{ref!r}: on_start raised {error!r}") from error
            exit = Exit(kind=ExitKind.CRASHED, error=error)
            _fail_current_ask(ref, error)
        ref._nursery = None
        ref._kill_scope = None
        if not ref._killed:  # killed: no on_stop, as the kill's Cancelled skipped it
            if exit is _RESTART_EXIT:
                restart_in_place = True
                exit = EXIT_SHUTDOWN
            assert exit is not None
            ref._state = STOPPING
            if inst._has_on_stop:
                with trio.CancelScope() as ref._kill_scope:
                    await _call_on_stop_async(ref, inst, exit)
                ref._kill_scope = None
        # A kill may land after on_stop had nothing left to await (a
        # supervisor whose children the kill itself took down): asked is
        # killed, whether or not the Cancelled was delivered.
        if ref._killed:
            exit = EXIT_KILLED
            restart_in_place = False
        if not started:
            _abort_start(ref)
            raise StartFailed(f"{ref!r} was killed before on_start finished")
    finally:
        ref._kill_scope = None
        ref._nursery = None
        if started and ref._instance is inst:
            # Cancelled from outside (system shutdown) leaves exit unset.
            end(ref, exit or EXIT_KILLED, restart_in_place=restart_in_place)


async def _task_loop(ref: ActorRef, inst: Actor) -> Exit:
    mailbox = ref._mailbox
    is_async = inst._async_receive
    since_checkpoint = 0
    while True:
        if mailbox._system:
            exit = await _handle_system(ref, mailbox.pop_system(), inst)
            if exit is not None:
                return exit
            continue
        if ref._stop_request is not None:
            return ref._stop_request
        # Test the lane, not the popped item: ``None`` is a valid message.
        if not mailbox._user:
            mailbox.release()
            ref._parked = current_task()

            def abort(_: Any) -> Abort:
                ref._parked = None
                return Abort.SUCCEEDED

            await wait_task_rescheduled(abort)
            since_checkpoint = 0
            continue
        item = mailbox.pop_user()
        if mailbox.room is not None:
            ref._wake_room_waiters(1)
        if type(item) is Ask:
            ref._current_ask = item
            result = inst.receive(item.msg)
            if is_async:
                result = await result
            if ref._current_ask is item:  # not deferred (see defer_reply)
                ref._current_ask = None
                item.reply(result)
        else:
            result = inst.receive(item)
            if is_async:
                await result
        ref._processed += 1
        since_checkpoint += 1
        if since_checkpoint >= TASK_FAIRNESS_BATCH:
            since_checkpoint = 0
            await checkpoint()


async def _handle_system(ref: ActorRef, msg: Any, inst: Actor) -> Exit | None:
    if type(msg) is Stop:
        return msg.exit
    if msg is RESTART:
        return _RESTART_EXIT
    if type(msg) is Status:
        msg.ask.reply(ref._status_of(inst))
        return None
    if type(msg) is ChildExited:
        parent = _parent_hooks(inst)
        if parent is None:
            _orphan_exit(ref, msg)
            return None
        result = parent.child_exited(msg)
        if result is not None:
            await result
        return None
    raise AssertionError(f"unknown system message {msg!r}")


# --- dispatcher mode ----------------------------------------------------------------


def run_batch(ref: ActorRef, limit: int) -> None:
    """Handle up to ``limit`` user messages; called by the dispatcher only."""
    inst = ref._instance
    mailbox = ref._mailbox
    handled = 0
    while ref._state is RUNNING:
        if mailbox._system:
            msg = mailbox.pop_system()
            if type(msg) is Status:
                msg.ask.reply(ref._status_of(inst))  # type: ignore[arg-type]
                continue
            if type(msg) is Stop:
                _finish_nowait(ref, msg.exit)
                return
            if msg is RESTART:
                _finish_nowait(ref, EXIT_SHUTDOWN, restart_in_place=True)
                return
            assert type(msg) is ChildExited, msg
            _orphan_exit(ref, msg)
            continue
        if ref._stop_request is not None:
            _finish_nowait(ref, ref._stop_request)
            return
        if handled >= limit:
            break
        # Test the lane, not the popped item: ``None`` is a valid message.
        if not mailbox._user:
            break
        item = mailbox.pop_user()
        handled += 1
        if type(item) is Ask:
            try:
                result = inst.receive(item.msg)  # type: ignore[union-attr]
            except Exception as exc:
                item.fail(crash_error(ref, exc, item.msg))
                crashed(ref, exc)
                return
            item.reply(result)
        else:
            try:
                inst.receive(item)  # type: ignore[union-attr]
            except Exception as exc:
                crashed(ref, exc)
                return
        ref._processed += 1
    if mailbox.room is not None:
        # Once per batch, not per message: a woken sender refills at once,
        # so waking one per freed slot made most wake-ups find it full again.
        ref._wake_room_waiters(mailbox.config.capacity - mailbox.depth)
    if ref._state is RUNNING and (mailbox or ref._stop_request is not None):
        ref.system._enqueue(ref)
    else:
        ref._scheduled = False
        mailbox.release()


def _fail_current_ask(ref: ActorRef, exc: BaseException) -> None:
    pending = ref._current_ask
    if pending is not None:
        ref._current_ask = None
        pending.fail(crash_error(ref, exc, pending.msg))


def crashed(ref: ActorRef, exc: BaseException) -> None:
    """A dispatcher-mode handler raised: end the incarnation as crashed."""
    _finish_nowait(ref, Exit(kind=ExitKind.CRASHED, error=exc))


def _finish_nowait(ref: ActorRef, exit: Exit, *, restart_in_place: bool = False) -> None:
    """End a dispatcher-mode incarnation: ``on_stop``, then the aftermath."""
    inst = ref._instance
    ref._scheduled = False
    ref._state = STOPPING
    if inst is not None and inst._has_on_stop:
        try:
            inst.on_stop(exit)
        except Exception:
            log.exception("%r: on_stop raised while ending with %s", ref, exit)
    end(ref, exit, restart_in_place=restart_in_place)


async def _call_on_stop_async(ref: ActorRef, inst: Actor, exit: Exit) -> None:
    if not inst._has_on_stop:
        return
    try:
        result = inst.on_stop(exit)
        if inst._async_on_stop:
            await result  # type: ignore[misc]
    except Exception:
        log.exception("%r: on_stop raised while ending with %s", ref, exit)


async def _call_on_stopping(ref: ActorRef, inst: Actor, exit: Exit) -> None:
    try:
        await inst.on_stopping(exit)
    except Exception:
        log.exception("%r: on_stopping raised; stopping anyway", ref)


# --- ending an incarnation ----------------------------------------------------------


def end(ref: ActorRef, exit: Exit, *, restart_in_place: bool = False) -> None:
    """The incarnation is over; hand the ref to whoever decides what follows."""
    if exit.kind is ExitKind.CRASHED:
        log.error("%r crashed in incarnation %d", ref, ref._incarnation, exc_info=exit.error)
    cancel_timers(ref)
    ref._instance = None
    pending, ref._current_ask = ref._current_ask, None
    if pending is not None:
        # Only a kill (or a cancelled system) gets here with an ask in hand.
        pending.fail(
            ActorDead(
                f"{ref!r} ended ({exit}) while handling {pending.msg!r}; "
                "the message was not answered",
                reason=exit,
            )
        )
    ref._parked = None
    ref._scheduled = False
    ref._last_exit = exit
    ref._state = RESTARTING
    event, ref._incarnation_done = ref._incarnation_done, None
    if event is not None:
        event.set()
    if ref._parent_stopping:
        # The parent is stopping this incarnation and waits for it.
        ref._parent_stopping = False
        return
    if restart_in_place:
        restart_now(ref)
        return
    parent = ref._parent
    if parent is not None and parent.alive:
        if (
            parent._parked is not None
            and not parent._mailbox
            and parent._stop_request is None
            and parent._state is RUNNING
        ):
            # The parent is idle: nothing is queued ahead of this exit, so a
            # parent that can decide without awaiting does it here, saving a
            # task switch (see Parent.child_exited_now).
            hooks = _parent_hooks(parent._instance)
            if hooks is not None and hooks.child_exited_now(ref, exit, ref._incarnation):
                return
        parent._mailbox.put_system(ChildExited(ref, exit, ref._incarnation))
        parent._wake_for_system()
        return
    terminate(ref, exit)


def restart_now(ref: ActorRef) -> None:
    """Start a new incarnation after a requested ``ref.restart()``."""
    try:
        inst = new_instance(ref)
        if inst._needs_task:
            ref.system._nursery.start_soon(_restart_task, ref, inst)
            return
        start_nowait(ref, inst)
    except StartFailed as exc:
        end(ref, Exit(kind=ExitKind.CRASHED, error=exc))


async def _restart_task(ref: ActorRef, inst: Actor) -> None:
    if ref._exit is not None:
        return  # stopped for good while this restart was pending
    try:
        # Run the incarnation in this very task: no scheduling gap in which a
        # stop() could terminate the ref before it starts.
        await run_task(ref, inst)
    except StartFailed as exc:
        end(ref, Exit(kind=ExitKind.CRASHED, error=exc))


def incarnation_event(ref: ActorRef) -> trio.Event:
    """Set when the current incarnation ends."""
    if ref._incarnation_done is None:
        ref._incarnation_done = trio.Event()
    return ref._incarnation_done


async def stop(ref: ActorRef, shutdown: float | None) -> None:
    """Stop the running incarnation for the parent; leave the ref in limbo.

    Args:
        shutdown: seconds to wait for ``on_stop`` before killing; ``0``
            kills at once (OTP's brutal_kill); ``None`` waits forever.
    """
    state = ref._state
    if state is RESTARTING or state not in QUEUEING:
        await checkpoint()
        return
    if state is STARTING:
        # Only task-mode starts can be in flight; wait for the outcome.
        await checkpoint()
    ref._parent_stopping = True
    event = incarnation_event(ref)
    if shutdown == 0:
        kill(ref)
    else:
        ref._mailbox.put_system(Stop(EXIT_SHUTDOWN))
        ref._wake_for_system()
        if shutdown is None:
            await event.wait()
            return
        with trio.move_on_after(shutdown):
            await event.wait()
            return
        kill(ref)
    await event.wait()


def kill(ref: ActorRef) -> None:
    """Brutal kill: no ``on_stop``, owned tasks cancelled."""
    # An actor that owns children (a supervisor) takes them down with it, as
    # linked processes die with a killed OTP supervisor.
    parent = _parent_hooks(ref._instance)
    if parent is not None:
        parent.kill_children()
    if ref._task_mode:
        scope = ref._kill_scope
        if scope is not None:
            ref._killed = True
            scope.cancel()
            return
    if ref._state in (RUNNING, STARTING, STOPPING):
        end(ref, EXIT_KILLED)


def kill_linked(ref: ActorRef) -> None:
    """Kill an incarnation whose parent is being killed, and end the ref.

    The parent hears nothing of it (it is dying itself).
    """
    ref._parent_stopping = True
    kill(ref)
    terminate(ref, EXIT_KILLED)


def terminate(ref: ActorRef, exit: Exit) -> None:
    """Final: the actor will never run again."""
    if ref._exit is not None:
        return
    ref._exit = exit
    ref._state = ActorState.FAILED if exit.kind is ExitKind.CRASHED else ActorState.STOPPED
    ref._instance = None
    ref._parent = None
    system = ref.system
    system._forget(ref)
    mailbox = ref._mailbox
    for msg in mailbox.drain_system():
        if type(msg) is Status:
            msg.ask.fail(ref._dead_error("ask_status"))
    for item in mailbox.drain_user():
        if type(item) is Ask:
            item.fail(ref._dead_error("ask"))
        else:
            _undelivered(ref, item, exit)
    ref._wake_room_waiters(None)
    event, ref._incarnation_done = ref._incarnation_done, None
    if event is not None:
        event.set()
    if ref._done is not None:
        ref._done.set()


def _undelivered(ref: ActorRef, item: Any, exit: Exit) -> None:
    """A told message ``ref`` never handled, as it terminated: its owner's, or a dead letter."""
    handler = ref._undelivered
    if handler is not None:
        try:
            if handler(item, exit):
                return
        except Exception:  # a defect of the handler's: never one of the termination's
            log.exception("%r: the handler of undelivered messages raised on %r", ref, item)
    ref.system._dead_letter(ref, item, exit)


def request_stop(ref: ActorRef, exit: Exit = EXIT_NORMAL) -> None:
    """End the incarnation with ``exit`` once the current message is handled."""
    if ref._stop_request is None:
        ref._stop_request = exit
    if not ref._scheduled:
        ref._wake()


# --- timers and owned tasks -----------------------------------------------------------


def start_timer(ref: ActorRef, delay: float, msg: Any, interval: float | None) -> Timer:
    if ref._state not in (RUNNING, STARTING):
        raise NotInActorContext(f"{ref!r} is not running: cannot start a timer")
    timer = ref.system._timers.start(ref, ref._incarnation, delay, msg, interval)
    if ref._timers is None:
        ref._timers = []
    elif len(ref._timers) > 32:
        ref._timers = [t for t in ref._timers if t.active]
    ref._timers.append(timer)
    return timer


def cancel_timers(ref: ActorRef) -> None:
    timers, ref._timers = ref._timers, None
    for timer in timers or ():
        timer.cancel()


def start_owned_task(
    ref: ActorRef, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...]
) -> None:
    nursery = ref._nursery
    if nursery is None:
        early = ref._early_tasks
        if early is not None:  # on_start of an eager start: the nursery comes with the task
            early.append((fn, args))
            return
        raise NotInActorContext(
            f"{ref!r} has no task context: only an actor with an async hook "
            "(on_start, receive or on_stop) can own tasks"
        )
    nursery.start_soon(fn, *args)


def defer_reply(ref: ActorRef) -> Ask | None:
    """Take over answering the ask being handled (task mode only).

    Returns:
        The pending ask, which the caller must answer later (``reply`` or
        ``fail``); ``None`` when the message being handled was told.

    Raises:
        NotInActorContext: the actor runs on the dispatcher, or handles no message.
    """
    if not ref._task_mode or ref._state is not RUNNING:
        raise NotInActorContext(
            f"{ref!r}: only a running actor with an async hook can defer its reply"
        )
    ask, ref._current_ask = ref._current_ask, None
    return ask


def requeue(ref: ActorRef, items: list[Any]) -> None:
    """Put user messages taken off the mailbox back at its front, in order.

    They were admitted once, so the mailbox's bound does not refuse them. An
    actor that has terminated meanwhile treats them as it treats the
    messages still queued when it terminated (asks: ``ActorDead``).
    """
    if ref._state not in QUEUEING or ref._exit is not None:
        for item in items:
            if type(item) is Ask:
                item.fail(ref._dead_error("hand back a message to"))
            else:
                _undelivered(ref, item, ref._exit or EXIT_KILLED)
        return
    ref._mailbox.put_front(items)
    ref._wake()


def unwrap_reply(reply: Any) -> Any:
    """A handler's return value as the asker sees it: a refusal is raised."""
    if type(reply) is outcome.Error:
        return reply.unwrap()
    return reply
