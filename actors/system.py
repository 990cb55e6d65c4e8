"""The actor system: dispatcher, timers, name registry and dead letters.

Design:
- ``open_actor_system()`` owns one nursery. Everything an actor system runs
  (the dispatcher, the timer task, task-mode actors) is a task in it, so
  nothing outlives the ``async with`` block.
- The dispatcher is one task with a run queue of refs that have mail. It
  gives each actor up to ``throughput`` messages per turn (Akka's fairness
  knob) and checkpoints after every pass over the queue, so plain actors
  share one task fairly and never starve the rest of the trio program.
- Shutdown is graceful request → bounded wait → hard cancel: top-level
  actors are stopped newest first, each within its shutdown grace, then the
  nursery is cancelled.
"""

from __future__ import annotations

import functools
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Final

import attrs
import trio
from trio.lowlevel import Abort, checkpoint, current_task, reschedule, wait_task_rescheduled

from . import _incarnation
from .actor import Actor, Exit, ExitKind
from .errors import ActorNotFound, NameTaken, StartFailed
from .mailbox import MailboxConfig
from .ref import ActorRef
from .timers import TimerService

__all__ = [
    "DEFAULT_THROUGHPUT",
    "ActorSystem",
    "DeadLetter",
    "SystemStatistics",
    "open_actor_system",
]

log = logging.getLogger("switchboard.actors")

DEFAULT_THROUGHPUT: Final = 256  # messages per actor per dispatcher turn
DEAD_LETTER_KEEP: Final = 1_000  # most recent dead letters kept for inspection
SHUTDOWN_GRACE: Final = 5.0  # seconds each top-level actor gets to stop


@attrs.frozen(kw_only=True)
class DeadLetter:
    """A message that reached an actor which terminated before handling it.

    Attributes:
        recipient: ``repr`` of the terminated actor.
        message: the undelivered message.
        reason: how the recipient ended.
    """

    recipient: str
    message: Any
    reason: Exit


@attrs.frozen(kw_only=True)
class SystemStatistics:
    """A snapshot of an actor system.

    Attributes:
        actors: live actors (not yet terminated).
        named: names in the registry.
        run_queue: actors waiting for the dispatcher.
        timers: active timers.
        timers_fired: timers fired so far.
        dead_letters: messages dead-lettered so far.
    """

    actors: int
    named: int
    run_queue: int
    timers: int
    timers_fired: int
    dead_letters: int


class ActorSystem:
    """Spawns actors and runs the machinery they share.

    Create one with :func:`open_actor_system`.
    """

    def __init__(self, nursery: trio.Nursery, *, throughput: int = DEFAULT_THROUGHPUT) -> None:
        if throughput < 1:
            raise ValueError(f"throughput must be >= 1, got {throughput}")
        self._nursery = nursery
        self._throughput = throughput
        self._run_queue: deque[ActorRef] = deque()
        self._dispatcher: Any = None
        self._dispatcher_parked = False
        self._timers = TimerService()
        self._registry: dict[str, ActorRef] = {}
        self._top: dict[int, ActorRef] = {}
        self._next_id = 0
        self._live = 0
        self._inline_asks = 0
        self._dead_letter_count = 0
        self.dead_letters: deque[DeadLetter] = deque(maxlen=DEAD_LETTER_KEEP)
        self._closing = False

    # ------------------------------------------------------------------ public

    async def spawn(
        self,
        factory: Callable[..., Actor],
        *args: Any,
        name: str | None = None,
        mailbox: MailboxConfig | None = None,
        parent: ActorRef | None = None,
    ) -> ActorRef:
        """Create an actor, run its ``on_start``, and return its ref.

        Returns once ``on_start`` has succeeded (the actor is ready). For an
        actor without async hooks this does not yield to the scheduler.

        Args:
            factory: the actor class, or any callable returning an ``Actor``;
                called again for every restart.
            *args: passed to ``factory``.
            name: register the actor under this name (unique while it lives).
            mailbox: bounds and overflow policy; defaults to
                ``MailboxConfig()``.
            parent: the supervising actor that decides on its exits; ``None``
                for a top-level actor, which is terminated if it crashes.

        Raises:
            NameTaken: ``name`` is held by a live actor.
            StartFailed: the factory or ``on_start`` raised (chained).
            RuntimeError: the system is shutting down.
        """
        if self._closing:
            raise RuntimeError("the actor system is shutting down: no new actors")
        if args:
            factory = functools.partial(factory, *args)
        ref = self._new_ref(factory, name=name, mailbox=mailbox, parent=parent)
        try:
            await _incarnation.start(ref)
        except StartFailed as exc:
            _incarnation.terminate(ref, Exit(kind=ExitKind.CRASHED, error=exc))
            raise
        return ref

    def _spawn_nowait(
        self,
        factory: Callable[[], Actor],
        *,
        name: str | None,
        mailbox: MailboxConfig | None,
        parent: ActorRef | None,
    ) -> ActorRef:
        """``spawn`` for an actor that starts without awaiting (see ``lowlevel.spawn_nowait``)."""
        if self._closing:
            raise RuntimeError("the actor system is shutting down: no new actors")
        ref = self._new_ref(factory, name=name, mailbox=mailbox, parent=parent)
        try:
            _incarnation.start_without_waiting(ref)
        except StartFailed as exc:
            _incarnation.terminate(ref, Exit(kind=ExitKind.CRASHED, error=exc))
            raise
        return ref

    def whereis(self, name: str) -> ActorRef | None:
        """The live actor registered as ``name``, or ``None``."""
        return self._registry.get(name)

    def lookup(self, name: str) -> ActorRef:
        """The live actor registered as ``name``.

        Raises:
            ActorNotFound: no live actor holds the name.
        """
        try:
            return self._registry[name]
        except KeyError:
            raise ActorNotFound(f"no live actor is registered as {name!r}") from None

    def registered(self) -> list[str]:
        """Every registered name."""
        return list(self._registry)

    def statistics(self) -> SystemStatistics:
        return SystemStatistics(
            actors=self._live,
            named=len(self._registry),
            run_queue=len(self._run_queue),
            timers=len(self._timers),
            timers_fired=self._timers.fired,
            dead_letters=self._dead_letter_count,
        )

    def __repr__(self) -> str:
        return f"<ActorSystem actors={self._live} run_queue={len(self._run_queue)}>"

    # ---------------------------------------------------------------- internal

    def _new_ref(
        self,
        factory: Callable[[], Actor],
        *,
        name: str | None,
        mailbox: MailboxConfig | None,
        parent: ActorRef | None,
    ) -> ActorRef:
        if name is not None and name in self._registry:
            raise NameTaken(
                f"the name {name!r} is already held by {self._registry[name]!r}; "
                "stop it first or pick another name"
            )
        self._next_id += 1
        ref = ActorRef(
            self, factory, actor_id=self._next_id, name=name, parent=parent, mailbox=mailbox
        )
        if name is not None:
            self._registry[name] = ref
        if parent is None:
            self._top[ref._id] = ref
        self._live += 1
        return ref

    def _forget(self, ref: ActorRef) -> None:
        """Called once when ``ref`` terminates: it leaves no trace behind."""
        name = ref._name
        if name is not None and self._registry.get(name) is ref:
            del self._registry[name]
        self._top.pop(ref._id, None)
        self._live -= 1

    def _enqueue(self, ref: ActorRef) -> None:
        self._run_queue.append(ref)
        if self._dispatcher_parked:
            self._dispatcher_parked = False
            reschedule(self._dispatcher)

    def _dead_letter(self, ref: ActorRef, msg: Any, exit: Exit) -> None:
        self._dead_letter_count += 1
        self.dead_letters.append(DeadLetter(recipient=repr(ref), message=msg, reason=exit))
        log.debug("dead letter to %r (%s): %r", ref, exit, msg)

    async def _dispatch(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        run_queue = self._run_queue
        throughput = self._throughput
        run_batch = _incarnation.run_batch
        self._dispatcher = current_task()

        def abort(_: Any) -> Abort:
            self._dispatcher_parked = False
            return Abort.SUCCEEDED

        task_status.started()
        while True:
            if not run_queue:
                self._dispatcher_parked = True
                await wait_task_rescheduled(abort)
                continue
            for _ in range(len(run_queue)):
                run_batch(run_queue.popleft(), throughput)
            await checkpoint()

    async def _shutdown(self, grace: float) -> None:
        self._closing = True
        for ref in reversed(list(self._top.values())):
            # stop() escalates to a kill after ``grace`` and waits for the kill
            # to land; an outer deadline of the same length would expire first
            # and leave the ref killed but never terminated.
            await ref.stop(timeout=grace)
            if ref.alive:
                _incarnation.kill(ref)


@asynccontextmanager
async def open_actor_system(
    *, throughput: int = DEFAULT_THROUGHPUT, shutdown_grace: float = SHUTDOWN_GRACE
) -> AsyncIterator[ActorSystem]:
    """Run an actor system for the duration of the block.

    On exit, top-level actors are stopped newest first (each gets
    ``shutdown_grace`` seconds for ``on_stop``, then is killed), and every
    remaining task is cancelled.

    Args:
        throughput: messages a plain actor handles per dispatcher turn.
        shutdown_grace: seconds each top-level actor gets to stop.
    """
    async with trio.open_nursery() as nursery:
        system = ActorSystem(nursery, throughput=throughput)
        await nursery.start(system._dispatch)
        await nursery.start(system._timers.run)
        try:
            yield system
        finally:
            with trio.CancelScope(shield=True):
                await system._shutdown(shutdown_grace)
            nursery.cancel_scope.cancel()
