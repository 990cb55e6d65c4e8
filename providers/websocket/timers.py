"""The websocket readers' timers: one task per trio run fires them all.

Design: a reader waits for bytes under a cancel scope so that its core's
timers (keepalive, liveness, send acks) can interrupt the wait. A scope
entered with a deadline for every read cost about 12 % of a busy reader's
time (issue 12). Instead each reader waits under ONE long-lived scope with
no deadline, and this service (a system task, one per trio run) cancels it
when the reader's deadline comes, only while the reader is parked in its
wait for bytes: a timer never interrupts a frame half-applied. A timer that
comes due while its reader is busy is only marked due (:attr:`ReaderTimer.due`);
the reader handles it before it next parks. The reader then opens a new
scope, so a scope is entered per timer that fires, not per read.

The service keeps a heap of ``(deadline, seq, timer)`` and re-arms lazily:
a reader pushes only when its deadline moves earlier than the one it armed
(a send starts); most changes move it later (an ack comes, a frame puts the
ping off), and cost nothing until the entry comes up: then the service asks
the owner's ``next_deadline()`` and, when that is still ahead, pushes the
entry again, without waking the reader. The service wakes
:data:`TIMER_SLACK` after the earliest deadline and fires everything due
by then, so timers due close together cost one wake-up of its task. An
entry is live while its ``seq`` is its timer's; the others (armed earlier
since, fired, or closed) are skipped when they come up, and when they are
over half the heap it is rebuilt without them. A closed timer holds no reference to its owner, so a
connection that ended is never kept alive by an entry.

A system task's exception would crash the run: the service never raises
(an owner whose ``next_deadline()`` fails is fired, and its reader meets
the error in its own task, where the shell reports it). Being per run, the
task outlives each connection: it is to the readers what trio's own system
tasks are to a program, idle (no deadline) when no reader is armed.
"""

from __future__ import annotations

import math
from heapq import heapify, heappop, heappush
from typing import Final, Protocol

import attrs
import trio
import trio.lowlevel
from trio.lowlevel import RunVar

__all__ = ["TIMER_SLACK", "ReaderTimer", "TimerService", "TimerStatistics", "timer_service"]

COMPACT_MIN: Final = 64  # dead heap entries tolerated before a rebuild is considered
#: How late the service may fire a timer so that timers due close together
#: fire in one wake-up of its task (an idle node's deadlines, one per link
#: and heartbeat, are spread evenly). A quarter of LATE_TIMER: core.tick
#: takes a timer this late for one on time.
TIMER_SLACK: Final = 0.025  # seconds


class TimerOwner(Protocol):
    """What a timer fires for: a sans-IO core's next deadline."""

    def next_deadline(self) -> float: ...


@attrs.frozen(kw_only=True)
class TimerStatistics:
    """A snapshot of a :class:`TimerService`.

    Attributes:
        timers: registered timers not yet closed.
        entries: heap entries, the dead (skipped when they come up) included.
        dead: heap entries that will be skipped.
    """

    timers: int
    entries: int
    dead: int


class ReaderTimer:
    """One reader's timer in a :class:`TimerService` (made by :meth:`TimerService.register`).

    The reader sets :attr:`scope` to the scope its wait runs under and
    :attr:`parked` around the wait itself; the service cancels the scope
    only while ``parked``. :attr:`due` is when the timer came due, set by
    the service and cleared by the reader when it has called ``tick``.
    """

    __slots__ = ("_seq", "_service", "deadline", "due", "owner", "parked", "scope")

    def __init__(self, service: TimerService, owner: TimerOwner) -> None:
        self._service = service
        self._seq = 0  # the seq of this timer's live heap entry; 0: none
        self.owner: TimerOwner | None = owner  # None once closed
        self.deadline = math.inf  # the live entry's deadline
        self.due: float | None = None
        self.parked = False
        self.scope: trio.CancelScope | None = None

    def __repr__(self) -> str:
        state = "closed" if self.owner is None else ("parked" if self.parked else "busy")
        return f"<ReaderTimer [{state} deadline={self.deadline} due={self.due}]>"

    def arm(self, deadline: float) -> None:
        """Fire at ``deadline``, earlier than :attr:`deadline` (later needs nothing).

        A deadline that moves later is found when the armed one comes up: the
        service asks the owner again then.
        """
        self._service._arm(self, deadline)

    def close(self) -> None:
        """Forget the timer: the service drops its owner and scope now, its entry later."""
        self._service._close(self)


class TimerService:
    """The heap of every reader's next deadline in one trio run (see the module docstring)."""

    __slots__ = ("_dead", "_heap", "_seq", "_sleep", "_timers", "_wake_at")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, ReaderTimer]] = []
        self._seq = 0
        self._timers = 0
        self._dead = 0
        self._wake_at = math.inf  # the deadline of the service's own sleep
        self._sleep: trio.CancelScope | None = None

    def __repr__(self) -> str:
        return f"<TimerService timers={self._timers} entries={len(self._heap)} dead={self._dead}>"

    def statistics(self) -> TimerStatistics:
        """How many timers and heap entries the service holds."""
        return TimerStatistics(timers=self._timers, entries=len(self._heap), dead=self._dead)

    def register(self, owner: TimerOwner) -> ReaderTimer:
        """A timer armed at ``owner.next_deadline()``; close it when the reader ends."""
        timer = ReaderTimer(self, owner)
        self._timers += 1
        timer.arm(owner.next_deadline())
        return timer

    def _arm(self, timer: ReaderTimer, deadline: float) -> None:
        if timer.owner is None:
            return
        if timer._seq:  # the entry armed before is skipped when it comes up
            timer._seq = 0
            self._dead += 1
            self._compact()
        timer.deadline = deadline
        if deadline == math.inf:
            return
        self._seq += 1
        timer._seq = self._seq
        heappush(self._heap, (deadline, self._seq, timer))
        if deadline < self._wake_at:
            self._wake_at = deadline
            if self._sleep is not None:
                self._sleep.deadline = deadline + TIMER_SLACK

    def _close(self, timer: ReaderTimer) -> None:
        if timer.owner is None:
            return
        self._timers -= 1
        timer.owner = timer.scope = None
        timer.deadline = math.inf
        if timer._seq:
            timer._seq = 0
            self._dead += 1
            self._compact()

    def _compact(self) -> None:
        """Rebuild the heap without its dead entries once they are over half of it."""
        heap = self._heap
        if self._dead > COMPACT_MIN and 2 * self._dead > len(heap):
            heap[:] = [entry for entry in heap if entry[1] == entry[2]._seq]
            heapify(heap)
            self._dead = 0

    async def serve(self) -> None:
        """Sleep until the earliest deadline, fire what is due, forever (never raises)."""
        heap = self._heap
        while True:
            with trio.CancelScope(deadline=self._wake_at + TIMER_SLACK) as self._sleep:
                await trio.sleep_forever()
            self._sleep = None
            self._fire(trio.current_time())
            self._wake_at = heap[0][0] if heap else math.inf

    def _fire(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, seq, timer = heappop(heap)
            owner = timer.owner
            if seq != timer._seq or owner is None:
                self._dead -= 1
                continue
            timer._seq = 0
            timer.deadline = math.inf
            try:
                deadline = owner.next_deadline()
            except Exception:
                # Not swallowed: the reader's own tick meets it, in its own task.
                deadline = now
            if deadline > now:  # moved later since it was armed: no wake-up
                self._arm(timer, deadline)
                continue
            if timer.due is None:
                timer.due = deadline
            if timer.parked and timer.scope is not None:
                timer.scope.cancel()


_SERVICE: Final[RunVar[TimerService]] = RunVar("websocket_reader_timers")


def timer_service() -> TimerService:
    """This trio run's service, started (as a system task) on first use."""
    try:
        return _SERVICE.get()
    except LookupError:
        service = TimerService()
        trio.lowlevel.spawn_system_task(service.serve, name="websocket reader timers")
        _SERVICE.set(service)
        return service
