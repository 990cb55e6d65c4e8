"""The supervisor: an actor that starts, watches and restarts its children.

Design:
- Semantics are OTP's ``supervisor.erl``: children start in order and stop
  in reverse order; the exit matrix of ``do_restart`` (permanent always,
  transient after abnormal exits, temporary never, and removed); restart
  intensity via :func:`~supervisors.intensity.add_restart`, after which the
  supervisor terminates its children and exits with reason ``shutdown``
  carrying :class:`ReachedMaxRestartIntensity` (its parent sees that exit);
  a failed restart leaves the child ``restarting`` and is tried again
  through the supervisor's own mailbox (OTP's ``try_again_restart``), so
  requests such as ``terminate_child`` still get through.
- Group restarts (one_for_all, rest_for_one) restart every child in the
  group, including ones that were not running, and drop temporary ones, as
  OTP does.
- Unlike OTP a restarted child keeps its ref, and with it its mailbox: a
  crash loses no queued message. ``terminate_child`` ends the ref for good;
  ``restart_child`` then starts a new one.
- The supervisor is an async actor (its hooks await children's shutdowns).
  Child exits arrive as system messages, so they overtake admin requests.
- Administrative requests are asks; a refusal is answered as
  ``outcome.Error`` (the kernel raises it in the caller) and never crashes
  the supervisor; neither does a message it does not understand (OTP logs
  "unexpected message" and carries on).
- The supervisor is the kernel's :class:`~actors.lowlevel.Parent`: it works
  on its children's refs only through ``actors.lowlevel``.
"""

from __future__ import annotations

import logging
import math
import random
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal

import attrs
import outcome
import trio

from actors import (
    Actor,
    ActorDead,
    ActorRef,
    ActorState,
    ActorSystem,
    Backoff,
    Exit,
    ExitKind,
    NameTaken,
    StartFailed,
    lowlevel,
)
from actors.lowlevel import ChildExited, Parent

from .errors import (
    AlreadyPresent,
    AlreadyStarted,
    ChildNotFound,
    ChildRestarting,
    ChildRunning,
    ReachedMaxRestartIntensity,
    StartChildFailed,
    SupervisorError,
    SupervisorExited,
)
from .intensity import DEFAULT_INTENSITY, DEFAULT_PERIOD, add_restart
from .spec import ChildSpec, ChildType, Restart, RestartBackoff, Strategy

__all__ = [
    "ChildCounts",
    "ChildInfo",
    "ChildSnapshot",
    "Supervisor",
    "SupervisorRef",
    "open_supervisor",
    "supervisor_spec",
]

log = logging.getLogger("switchboard.supervisors")

ChildStatus = Literal["running", "restarting", "undefined"]
_LIVE_STATES = frozenset({ActorState.STARTING, ActorState.RUNNING, ActorState.STOPPING})


@attrs.frozen(kw_only=True)
class ChildInfo:
    """One row of ``which_children`` (OTP's ``{Id, Child, Type, Modules}``).

    Attributes:
        id: the child id.
        ref: the child's ref when it has one (running, or waiting to restart).
        status: ``running``, ``restarting`` or ``undefined`` (not running).
        type: worker or supervisor.
    """

    id: str
    ref: ActorRef | None
    status: ChildStatus
    type: ChildType


@attrs.frozen(kw_only=True)
class ChildCounts:
    """``count_children``: specs, active children, supervisors, workers."""

    specs: int
    active: int
    supervisors: int
    workers: int


@attrs.frozen(kw_only=True)
class ChildSnapshot:
    """A node of the supervision tree, for introspection.

    Attributes:
        id: the child id (the root's is its registry name or ``"root"``).
        type: worker or supervisor.
        status: running, restarting or undefined.
        actor_class: the class of the current incarnation, if any.
        state: the actor's lifecycle state, if it has a ref.
        restarts: how often the supervisor restarted this child.
        uptime: seconds since the current incarnation started, if running.
        mailbox_depth: queued user messages.
        strategy: for supervisors, their strategy.
        children: for supervisors, their children.
    """

    id: str
    type: ChildType
    status: ChildStatus
    actor_class: str | None
    state: ActorState | None
    restarts: int
    uptime: float | None
    mailbox_depth: int
    strategy: Strategy | None = None
    children: tuple[ChildSnapshot, ...] = ()


class _Child:
    """The supervisor's record of one child."""

    __slots__ = (
        "backoff",
        "delay_token",
        "own_restarts",
        "prepared",
        "ref",
        "restart_count",
        "restarting",
        "spec",
        "started_at",
    )

    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        self.ref: ActorRef | None = None
        self.restarting = False
        self.restart_count = 0
        # Consecutive delayed restarts, made with the first one (restart_backoff only).
        self.backoff: Backoff | None = None
        self.started_at: float | None = None
        self.delay_token = 0
        # An instance made at the crash site, waiting to be started from our task.
        self.prepared: Actor | None = None
        # An isolated child's recent restarts (spec.intensity), counted for it alone;
        # made at its first restart (an empty deque is ~0.7 KB, and most never restart).
        self.own_restarts: deque[float] | None = None

    @property
    def status(self) -> ChildStatus:
        if self.restarting:
            return "restarting"
        ref = self.ref
        if ref is not None and ref.state in _LIVE_STATES:
            return "running"
        return "undefined"


# --- requests (asks to the supervisor) ------------------------------------------


@attrs.frozen
class _StartChild:
    spec: ChildSpec


@attrs.frozen
class _StartChildren:
    specs: tuple[ChildSpec, ...]


@attrs.frozen
class _TerminateChild:
    id: str


@attrs.frozen
class _RestartChild:
    id: str


@attrs.frozen
class _DeleteChild:
    id: str


@attrs.frozen
class _WhichChildren:
    pass


@attrs.frozen
class _CountChildren:
    pass


@attrs.frozen
class _TryAgainRestart:
    id: str


@attrs.frozen
class _StartPrepared:
    id: str


@attrs.frozen
class _DelayedRestart:
    id: str
    token: int


class Supervisor(Actor, Parent):
    """An actor that supervises an ordered list of children.

    Usually created through :func:`open_supervisor` (a root) or
    :func:`supervisor_spec` (a child supervisor).

    Args:
        children: the static children, started in this order.
        strategy: one_for_one (default), one_for_all or rest_for_one.
        intensity: most restarts within ``period`` (OTP default 1).
        period: seconds (OTP default 5).
        restart_backoff: delay restarts with backoff; ``None`` restarts at once.
        rng: random source for the backoff jitter.

    Raises:
        ValueError: duplicate child ids, or a negative intensity / period.
    """

    def __init__(
        self,
        children: Sequence[ChildSpec] = (),
        *,
        strategy: Strategy = Strategy.ONE_FOR_ONE,
        intensity: int = DEFAULT_INTENSITY,
        period: float = DEFAULT_PERIOD,
        restart_backoff: RestartBackoff | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if intensity < 0:
            raise ValueError(f"intensity must be >= 0, got {intensity}")
        if not period > 0:
            raise ValueError(f"period must be > 0 seconds, got {period}")
        seen: set[str] = set()
        for spec in children:
            if spec.id in seen:
                raise ValueError(f"duplicate child id {spec.id!r} in the supervisor's children")
            seen.add(spec.id)
        self._specs = tuple(children)
        self.strategy = strategy
        self.intensity = intensity
        self.period = period
        self.restart_backoff = restart_backoff
        self._rng = rng or random.Random()
        # Insertion order is start order; dicts keep deletes O(1) at 100k children.
        self._children: dict[str, _Child] = {}
        self._by_ref: dict[ActorRef, _Child] = {}
        self._restarts: deque[float] = deque()
        self._started_at = 0.0

    def __repr__(self) -> str:
        return (
            f"<Supervisor {self.strategy.value} children={len(self._children)} "
            f"intensity={self.intensity}/{self.period}s>"
        )

    # --- lifecycle -------------------------------------------------------------

    async def on_start(self) -> None:
        self._started_at = trio.current_time()
        for spec in self._specs:
            child = _Child(spec)
            self._children[spec.id] = child
            try:
                await self._start(child)
            except StartChildFailed:
                del self._children[spec.id]
                await self._terminate_all()
                raise

    async def on_stop(self, exit: Exit) -> None:
        await self._terminate_all()

    def kill_children(self) -> None:
        """Brutally killed: take the children down with us (they are linked)."""
        for child in reversed(list(self._children.values())):
            ref = child.ref
            if ref is not None:
                lowlevel.kill_linked(ref)
        self._children.clear()
        self._by_ref.clear()

    def status(self) -> dict[str, Any]:
        counts = self._counts()
        return {
            "strategy": self.strategy.value,
            "intensity": self.intensity,
            "period": self.period,
            "children": counts.specs,
            "active": counts.active,
        }

    # --- requests --------------------------------------------------------------

    async def receive(self, msg: Any) -> Any:
        try:
            return await self._handle(msg)
        except (
            ChildNotFound,
            AlreadyStarted,
            AlreadyPresent,
            ChildRunning,
            ChildRestarting,
            StartChildFailed,
        ) as exc:
            return outcome.Error(exc)

    async def _handle(self, msg: Any) -> Any:
        kind = type(msg)
        if kind is _WhichChildren:
            return [
                ChildInfo(id=c.spec.id, ref=c.ref, status=c.status, type=c.spec.type)
                for c in self._children.values()
            ]
        if kind is _CountChildren:
            return self._counts()
        if kind is _StartChild:
            return await self._start_new(msg.spec)
        if kind is _StartChildren:
            started: list[ActorRef | SupervisorError] = []
            for spec in msg.specs:
                try:
                    ref = await self._start_new(spec)
                except (AlreadyStarted, AlreadyPresent, StartChildFailed) as exc:
                    started.append(exc)
                else:
                    assert ref is not None  # a started child has its ref
                    started.append(ref)
            return started
        if kind is _TerminateChild:
            child = self._find(msg.id)
            child.restarting = False
            child.delay_token += 1
            child.prepared = None
            await self._shutdown(child, keep_ref=False)
            self._del_child(child)
            return None
        if kind is _RestartChild:
            child = self._find(msg.id)
            self._refuse_if_busy(child, "restart_child")
            await self._start(child)
            return child.ref
        if kind is _DeleteChild:
            child = self._find(msg.id)
            self._refuse_if_busy(child, "delete_child")
            self._remove(child)
            return None
        if kind is _TryAgainRestart:
            waiting = self._children.get(msg.id)
            if waiting is not None and waiting.restarting:
                await self._restart(waiting)
            return None
        if kind is _StartPrepared:
            waiting = self._children.get(msg.id)
            if waiting is not None and waiting.prepared is not None:
                await self._restart_group(waiting)
            return None
        if kind is _DelayedRestart:
            waiting = self._children.get(msg.id)
            if waiting is not None and waiting.restarting and waiting.delay_token == msg.token:
                await self._restart_group(waiting)
            return None
        # OTP's supervisor logs an unexpected message and carries on; an
        # asker is told, so it does not wait for an answer that never comes.
        log.error("%r received an unexpected message, ignored: %r", self.ref, msg)
        return outcome.Error(
            SupervisorError(f"{self.ref!r} does not understand {msg!r} (unexpected message)")
        )

    def _find(self, child_id: str) -> _Child:
        try:
            return self._children[child_id]
        except KeyError:
            raise ChildNotFound(
                f"no child with id {child_id!r}; known ids: {self._ids_hint()}",
                child_id=child_id,
            ) from None

    def _ids_hint(self) -> str:
        ids = list(self._children)
        shown = ", ".join(repr(i) for i in ids[:10])
        return shown + (f", … ({len(ids)} in all)" if len(ids) > 10 else "") or "none"

    def _refuse_if_busy(self, child: _Child, what: str) -> None:
        status = child.status
        if status == "running":
            raise ChildRunning(
                f"{what}: child {child.spec.id!r} is running; terminate_child it first",
                child_id=child.spec.id,
            )
        if status == "restarting":
            raise ChildRestarting(
                f"{what}: child {child.spec.id!r} has a restart pending; terminate_child it first",
                child_id=child.spec.id,
            )

    async def _start_new(self, spec: ChildSpec) -> ActorRef | None:
        self._refuse_taken(spec)
        child = _Child(spec)
        await self._start(child)
        self._children[spec.id] = child
        return child.ref

    def _refuse_taken(self, spec: ChildSpec) -> None:
        existing = self._children.get(spec.id)
        if existing is not None:
            if existing.status == "running":
                raise AlreadyStarted(
                    f"start_child: a child with id {spec.id!r} is already running",
                    child_id=spec.id,
                    ref=existing.ref,
                )
            raise AlreadyPresent(
                f"start_child: the id {spec.id!r} is taken by a child that is not running; "
                "restart_child or delete_child it",
                child_id=spec.id,
            )

    def start_child_now(self, spec: ChildSpec) -> ActorRef:
        """``start_child`` handled at the caller's site, while we are idle.

        For a child known to start without waiting
        (``lowlevel.starts_without_waiting``): nothing awaits, so this is
        the request handled as our task would handle it, without the trip
        through the mailbox (the kernel does the same for a child's exit,
        ``child_exited_now``). The caller checks ``lowlevel.idle`` first.

        Raises:
            AlreadyStarted, AlreadyPresent, StartChildFailed: as ``start_child``.
        """
        self._refuse_taken(spec)
        child = _Child(spec)
        try:
            ref = lowlevel.spawn_nowait(
                self.system, spec.start, name=spec.name, mailbox=spec.mailbox, parent=self.ref
            )
        except (StartFailed, NameTaken) as exc:
            raise self._start_failure(spec, exc) from (exc.__cause__ or exc)
        child.ref = ref
        self._by_ref[ref] = child
        child.started_at = trio.current_time()
        self._children[spec.id] = child
        return ref

    def start_children_now(self, specs: Sequence[ChildSpec]) -> list[ActorRef | SupervisorError]:
        """``start_children`` handled at the caller's site, while we are idle (as
        :meth:`start_child_now`): each child's ref, or why it did not start."""
        started: list[ActorRef | SupervisorError] = []
        for spec in specs:
            try:
                started.append(self.start_child_now(spec))
            except (AlreadyStarted, AlreadyPresent, StartChildFailed) as exc:
                started.append(exc)
        return started

    def _counts(self) -> ChildCounts:
        active = supervisors = 0
        for child in self._children.values():
            if child.spec.type is ChildType.SUPERVISOR:
                supervisors += 1
            if child.status == "running":
                active += 1
        specs = len(self._children)
        return ChildCounts(
            specs=specs, active=active, supervisors=supervisors, workers=specs - supervisors
        )

    # --- child exits -----------------------------------------------------------

    async def child_exited(self, msg: ChildExited) -> None:
        child = self._exit_needs_restart(msg.child, msg.exit, msg.incarnation)
        if child is not None:
            await self._schedule_restart(child)

    def child_exited_now(self, child: ActorRef, exit: Exit, incarnation: int) -> bool:
        """Handle a child's exit at the crash site; the kernel calls this while we are idle.

        Only the case that needs no await is taken here: one_for_one without
        backoff, restarting a plain actor, whose ``on_start`` cannot block.
        Anything else returns False and the exit is queued as a
        ``ChildExited`` system message.
        """
        if (
            self.strategy is not Strategy.ONE_FOR_ONE
            or self.restart_backoff is not None
            or lowlevel.runs_in_task(child)
        ):
            return False
        record = self._exit_needs_restart(child, exit, incarnation)
        if record is not None:
            self._restart_nowait(record, child)
        return True

    def _restart_nowait(self, child: _Child, ref: ActorRef) -> None:
        try:
            inst = lowlevel.new_instance(ref)
            if lowlevel.needs_task(inst):
                # The factory now makes an async actor: start it from our task.
                child.prepared = inst
                child.restarting = True
                self.ref.tell(_StartPrepared(child.spec.id))
                return
            lowlevel.start_incarnation_nowait(ref, inst)
        except StartFailed as exc:
            self._restart_failed(child, _start_error(child.spec, self.ref, exc))
            return
        child.restarting = False
        child.started_at = trio.current_time()

    def _exit_needs_restart(self, ref: ActorRef, exit: Exit, incarnation: int) -> _Child | None:
        """OTP's ``do_restart`` bookkeeping for one exit.

        Returns the child to restart (the restart already counted against the
        intensity), or ``None`` when nothing more is to be done: the exit is
        stale, the child is not restarted, or the supervisor gives up.
        """
        child = self._by_ref.get(ref)
        if child is None or child.ref is not ref:
            # Not (or no longer) ours: never leave it waiting for a decision.
            lowlevel.terminate(ref, exit)
            return None
        stale = ref.incarnation != incarnation or ref.state is not ActorState.RESTARTING
        if child.restarting or stale:
            return None  # a restart already covers it
        restart = child.spec.restart
        if restart is Restart.PERMANENT or (restart is Restart.TRANSIENT and exit.abnormal):
            if exit.kind is not ExitKind.CRASHED:
                log.info("child %r exited (%s); restarting", child.spec.id, exit)
            return child if self._count_restart(child, exit) else None
        self._del_child(child, exit)
        return None

    def _count_restart(self, child: _Child, exit: Exit | None) -> bool:
        """Add a restart; past the intensity, give up: False, and we are stopping
        (or, for an isolated child, it is no longer restarted)."""
        if child.spec.intensity is not None:
            return self._count_isolated_restart(child, exit)
        if add_restart(self._restarts, trio.current_time(), self.period, self.intensity):
            child.restart_count += 1
            return True
        error = ReachedMaxRestartIntensity(
            f"{self.ref!r} reached its maximum restart intensity: more than "
            f"{self.intensity} restart(s) within {self.period} s (last: child "
            f"{child.spec.id!r}, {exit or 'failed to restart'}); shutting down"
        )
        log.error("%s", error)
        self._del_child(child, exit or Exit(kind=ExitKind.CRASHED, error=error))
        lowlevel.request_stop(self.ref, Exit(kind=ExitKind.SHUTDOWN, error=error))
        return False

    def _count_isolated_restart(self, child: _Child, exit: Exit | None) -> bool:
        """An isolated child's restart, against its own intensity; past it, only
        that child stops being restarted: the supervisor carries on."""
        spec = child.spec
        assert spec.intensity is not None
        if child.own_restarts is None:
            child.own_restarts = deque()
        if add_restart(child.own_restarts, trio.current_time(), spec.period, spec.intensity):
            child.restart_count += 1
            return True
        last = exit or Exit(kind=ExitKind.CRASHED)
        log.error(
            "child %r reached its own restart intensity: more than %d restart(s) within "
            "%g s (last: %s); it is no longer restarted, its siblings carry on",
            spec.id,
            spec.intensity,
            spec.period,
            last,
        )
        self._del_child(child, last)
        child.own_restarts.clear()  # a restart_child starts a new count
        if spec.on_give_up is not None:
            try:
                spec.on_give_up(last)
            except Exception:  # a faulty hook must not take the supervisor down
                log.exception("on_give_up of child %r failed", spec.id)
        return False

    async def _restart(self, child: _Child) -> None:
        """Try a failed restart again (OTP's ``try_again_restart``); it counts again."""
        if self._count_restart(child, None):
            await self._schedule_restart(child)

    async def _schedule_restart(self, child: _Child) -> None:
        backoff = self.restart_backoff
        if backoff is None:
            await self._restart_group(child)
            return
        tracker = child.backoff
        if tracker is None:
            tracker = child.backoff = Backoff(
                backoff.policy, rng=self._rng, reset_after=backoff.reset_after
            )
            if child.started_at is not None:
                tracker.connected(child.started_at)
        child.restarting = True
        child.delay_token += 1
        # The count starts over once the child had stayed up for reset_after.
        delay = tracker.failure(trio.current_time())
        log.info(
            "restarting child %r in %.3f s (attempt %d)", child.spec.id, delay, tracker.failures
        )
        self.start_timer(delay, _DelayedRestart(child.spec.id, child.delay_token))

    def _restart_failed(self, child: _Child, error: StartChildFailed) -> None:
        log.error("%s; will try again", error, exc_info=error.__cause__)
        child.restarting = True
        self.ref.tell(_TryAgainRestart(child.spec.id))

    async def _restart_group(self, child: _Child) -> None:
        """Apply the strategy: stop the rest of the group, start it in order."""
        if self.strategy is Strategy.ONE_FOR_ONE:
            group = [child]
        else:
            ids = list(self._children)
            first = 0 if self.strategy is Strategy.ONE_FOR_ALL else ids.index(child.spec.id)
            group = [self._children[i] for i in ids[first:]]
            for other in reversed(group):
                if other is child:
                    continue
                if other.spec.restart is Restart.TEMPORARY:
                    await self._shutdown(other, keep_ref=False)
                    self._remove(other)
                else:
                    await self._shutdown(other, keep_ref=True)
            group = [c for c in group if c.spec.id in self._children]
        for member in group:
            try:
                await self._start(member)
            except StartChildFailed as exc:
                self._restart_failed(member, exc)
                return
            member.restarting = False

    # --- starting and stopping children ------------------------------------------

    async def _start(self, child: _Child) -> None:
        spec = child.spec
        ref = child.ref
        prepared, child.prepared = child.prepared, None
        try:
            if ref is not None and ref.alive:
                await lowlevel.start_incarnation(ref, prepared)
            else:
                ref = await self.system.spawn(
                    spec.start, name=spec.name, mailbox=spec.mailbox, parent=self.ref
                )
                child.ref = ref
                self._by_ref[ref] = child
        except (StartFailed, NameTaken) as exc:
            raise self._start_failure(spec, exc) from (exc.__cause__ or exc)
        child.restarting = False
        child.started_at = trio.current_time()
        if child.backoff is not None:
            child.backoff.connected(child.started_at)

    def _start_failure(self, spec: ChildSpec, exc: StartFailed | NameTaken) -> StartChildFailed:
        if isinstance(exc, StartFailed):
            return _start_error(spec, self.ref, exc)
        # OTP: a registered name already in use is that child's start
        # failure ({already_started, Pid}), never the supervisor's crash.
        return StartChildFailed(
            f"child {spec.id!r} of {self.ref!r} failed to start: {exc}", child_id=spec.id
        )

    async def _shutdown(self, child: _Child, *, keep_ref: bool) -> None:
        """Stop a child's incarnation (OTP ``do_terminate``)."""
        ref = child.ref
        if ref is None:
            return
        await lowlevel.stop_incarnation(ref, child.spec.shutdown_timeout())
        if not keep_ref:
            self._end_ref(child, lowlevel.last_exit(ref) or Exit(kind=ExitKind.SHUTDOWN))

    def _end_ref(self, child: _Child, exit: Exit) -> None:
        ref = child.ref
        if ref is not None:
            child.ref = None
            self._by_ref.pop(ref, None)
            lowlevel.terminate(ref, exit)

    def _del_child(self, child: _Child, exit: Exit | None = None) -> None:
        """OTP ``del_child``: a temporary child is forgotten, others kept undefined."""
        self._end_ref(child, exit or Exit(kind=ExitKind.SHUTDOWN))
        child.restarting = False
        if child.spec.restart is Restart.TEMPORARY:
            self._remove(child)

    def _remove(self, child: _Child) -> None:
        self._end_ref(child, Exit(kind=ExitKind.SHUTDOWN))
        self._children.pop(child.spec.id, None)

    async def _terminate_all(self) -> None:
        for child in reversed(list(self._children.values())):
            child.restarting = False
            child.delay_token += 1
            child.prepared = None
            await self._shutdown(child, keep_ref=False)
        self._children.clear()
        self._by_ref.clear()

    # --- introspection -----------------------------------------------------------

    def _snapshot_children(self, now: float) -> tuple[ChildSnapshot, ...]:
        return tuple(_snapshot_child(c, now) for c in self._children.values())


def _start_error(spec: ChildSpec, sup: ActorRef, exc: StartFailed) -> StartChildFailed:
    error = StartChildFailed(
        f"child {spec.id!r} of {sup!r} failed to start: {exc.__cause__ or exc!r}",
        child_id=spec.id,
    )
    error.__cause__ = exc.__cause__ or exc
    return error


def _snapshot_child(child: _Child, now: float) -> ChildSnapshot:
    ref = child.ref
    inst = lowlevel.current_instance(ref) if ref is not None else None
    running = child.status == "running"
    nested = isinstance(inst, Supervisor)
    return ChildSnapshot(
        id=child.spec.id,
        type=child.spec.type,
        status=child.status,
        actor_class=type(inst).__name__ if inst is not None else None,
        state=ref.state if ref is not None else None,
        restarts=child.restart_count,
        uptime=(now - child.started_at) if running and child.started_at is not None else None,
        mailbox_depth=lowlevel.mailbox_depth(ref) if ref is not None else 0,
        strategy=inst.strategy if nested else None,  # type: ignore[union-attr]
        children=inst._snapshot_children(now) if nested else (),  # type: ignore[union-attr]
    )


class SupervisorRef:
    """A handle to a running supervisor: OTP's child administration calls.

    Every call is an ask to the supervisor, handled in order with child exits.
    """

    def __init__(self, ref: ActorRef) -> None:
        self.ref = ref

    def __repr__(self) -> str:
        return f"<SupervisorRef {self.ref!r}>"

    async def _call(self, request: Any) -> Any:
        # OTP's supervisor calls wait forever; bound them with a trio cancel
        # scope. A refusal comes back raised (SupervisorError subclasses).
        try:
            return await self.ref.ask(request, timeout=math.inf)
        except ActorDead as exc:
            raise SupervisorExited(
                f"supervisor {self.ref!r} has terminated ({self.ref.exit}); "
                "its children are gone: open a new one",
                exit=self.ref.exit,
            ) from exc

    async def start_child(self, spec: ChildSpec) -> ActorRef:
        """Add and start a child at the end of the start order.

        Raises:
            AlreadyStarted: the id is held by a running child.
            AlreadyPresent: the id is held by a child that is not running.
            StartChildFailed: the child failed to start (it is not added).
        """
        await trio.lowlevel.checkpoint()
        sup = self.ref
        # Idle, and nothing to await: handled here, with no trip through its mailbox.
        if lowlevel.idle(sup) and lowlevel.starts_without_waiting(spec.start):
            inst = lowlevel.current_instance(sup)
            if isinstance(inst, Supervisor):
                return inst.start_child_now(spec)
        ref: ActorRef = await self._call(_StartChild(spec))
        return ref

    async def start_children(self, specs: Sequence[ChildSpec]) -> list[ActorRef | SupervisorError]:
        """``start_child`` for each spec, in order, as one request: for each, the
        child's ref, or the error ``start_child`` would have raised
        (``AlreadyStarted``, ``AlreadyPresent``, ``StartChildFailed``).

        One child that cannot start does not stop the ones after it. Many
        children started so start within one step of the caller (children
        that start without waiting, the supervisor idle) or one trip
        through its mailbox, where ``start_child`` for each would take a
        scheduling round each.
        """
        await trio.lowlevel.checkpoint()
        sup = self.ref
        if lowlevel.idle(sup) and all(lowlevel.starts_without_waiting(s.start) for s in specs):
            inst = lowlevel.current_instance(sup)
            if isinstance(inst, Supervisor):
                return inst.start_children_now(specs)
        started: list[ActorRef | SupervisorError] = await self._call(_StartChildren(tuple(specs)))
        return started

    async def terminate_child(self, child_id: str) -> None:
        """Stop a child (its shutdown applies) and keep its spec (temporary: drop it).

        Works on a child that is waiting to restart, cancelling the restart.

        Raises:
            ChildNotFound: no such child.
        """
        await self._call(_TerminateChild(child_id))

    async def restart_child(self, child_id: str) -> ActorRef:
        """Start a terminated child again from its spec.

        Raises:
            ChildNotFound, ChildRunning, ChildRestarting, StartChildFailed.
        """
        ref: ActorRef = await self._call(_RestartChild(child_id))
        return ref

    async def delete_child(self, child_id: str) -> None:
        """Forget a terminated child's spec.

        Raises:
            ChildNotFound, ChildRunning, ChildRestarting.
        """
        await self._call(_DeleteChild(child_id))

    async def which_children(self) -> list[ChildInfo]:
        """Every child in start order, with its ref and status."""
        children: list[ChildInfo] = await self._call(_WhichChildren())
        return children

    async def count_children(self) -> ChildCounts:
        """Counts of specs, active children, supervisors and workers."""
        counts: ChildCounts = await self._call(_CountChildren())
        return counts

    async def whereis_child(self, child_id: str) -> ActorRef | None:
        """The ref of a child, or ``None`` if it has none right now."""
        for info in await self.which_children():
            if info.id == child_id:
                return info.ref
        return None

    def snapshot(self) -> ChildSnapshot:
        """The whole supervision tree below (and including) this supervisor.

        Synchronous and consistent: it reads the tree without yielding.

        Raises:
            SupervisorExited: the supervisor is not running.
        """
        inst = lowlevel.current_instance(self.ref)
        if not isinstance(inst, Supervisor):
            raise SupervisorExited(
                f"{self.ref!r} is not running; no tree to show", exit=self.ref.exit
            )
        now = trio.current_time()
        stats = self.ref.statistics()
        return ChildSnapshot(
            id=self.ref.name or "root",
            type=ChildType.SUPERVISOR,
            status="running",
            actor_class=type(inst).__name__,
            state=stats.state,
            restarts=stats.restarts,
            uptime=now - inst._started_at,
            mailbox_depth=stats.mailbox.depth,
            strategy=inst.strategy,
            children=inst._snapshot_children(now),
        )

    async def stop(self) -> None:
        """Stop the supervisor and, first, all its children in reverse order."""
        await self.ref.stop(timeout=None)


def supervisor_spec(
    child_id: str,
    children: Sequence[ChildSpec] = (),
    *,
    restart: Restart = Restart.PERMANENT,
    name: str | None = None,
    **flags: Any,
) -> ChildSpec:
    """A child spec for a nested supervisor (type supervisor, shutdown infinity).

    Args:
        child_id: the id in the parent.
        children: the nested supervisor's children.
        restart: its restart type in the parent.
        name: register it under this name.
        **flags: ``strategy``, ``intensity``, ``period``, ``restart_backoff``.
    """
    children = tuple(children)
    Supervisor(children, **flags)  # validate now, not at the first start

    def start() -> Supervisor:
        return Supervisor(children, **flags)

    start.__name__ = "Supervisor"
    return ChildSpec(
        id=child_id, start=start, restart=restart, type=ChildType.SUPERVISOR, name=name
    )


@asynccontextmanager
async def open_supervisor(
    system: ActorSystem,
    children: Sequence[ChildSpec] = (),
    *,
    name: str | None = None,
    **flags: Any,
) -> AsyncIterator[SupervisorRef]:
    """Run a root supervisor for the duration of the block.

    Children start in order before the block is entered; on exit they stop
    in reverse order. If the supervisor gives up (restart intensity) the
    block is cancelled and :class:`SupervisorExited` is raised from it.

    Args:
        system: the actor system to run in.
        children: the static children.
        name: register the supervisor under this name.
        **flags: ``strategy``, ``intensity``, ``period``, ``restart_backoff``,
            ``rng`` (see :class:`Supervisor`).

    Raises:
        StartChildFailed: a child failed to start (the ones already started
            were stopped).
        SupervisorExited: the supervisor terminated while the block ran.
    """
    specs = tuple(children)

    def start() -> Supervisor:
        return Supervisor(specs, **flags)

    start.__name__ = "Supervisor"
    try:
        ref = await system.spawn(start, name=name)
    except StartFailed as exc:
        if isinstance(exc.__cause__, StartChildFailed):
            raise exc.__cause__ from exc.__cause__.__cause__
        raise
    handle = SupervisorRef(ref)
    closing = False
    with trio.CancelScope() as body:

        async def watch() -> None:
            await ref.wait_terminated()
            if not closing:
                body.cancel()

        lowlevel.start_system_task(system, watch)
        try:
            yield handle
        finally:
            closing = True
            with trio.CancelScope(shield=True):
                await ref.stop(timeout=None)
    # Only the watcher cancels ``body``: the supervisor ended under the caller.
    if body.cancelled_caught:
        assert ref.exit is not None
        raise SupervisorExited(
            f"supervisor {ref!r} terminated while in use: {ref.exit}", exit=ref.exit
        ) from ref.exit.error
