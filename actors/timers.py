"""Timers owned by actors: one heap and one task per actor system.

Design: a timer is a heap entry, not a task, so a hundred thousand idle
actors with timers cost a hundred thousand small objects. When a timer fires
it ``tell``s its message to the actor, if the incarnation that started it is
still running; an incarnation's timers are cancelled when it ends. Cancelled
entries are removed lazily and the heap is rebuilt when they outnumber the
live ones, so memory stays bounded under start/cancel churn.
"""

from __future__ import annotations

import heapq
import logging
import math
from typing import TYPE_CHECKING, Any, Final

import trio

from .actor import ActorState
from .errors import ActorError

if TYPE_CHECKING:
    from .ref import ActorRef

__all__ = ["Timer", "TimerService"]

log = logging.getLogger("switchboard.actors")

_COMPACT_MIN: Final = 64  # entries before lazy deletion triggers a rebuild
_LIVE: Final = frozenset({ActorState.STARTING, ActorState.RUNNING})


class Timer:
    """A pending timer; ``cancel()`` it to stop it firing."""

    __slots__ = ("active", "deadline", "incarnation", "interval", "msg", "ref", "seq", "service")

    def __init__(
        self,
        service: TimerService,
        ref: ActorRef,
        incarnation: int,
        deadline: float,
        seq: int,
        msg: Any,
        interval: float | None,
    ) -> None:
        self.service = service
        self.ref = ref
        self.incarnation = incarnation
        self.deadline = deadline
        self.seq = seq
        self.msg = msg
        self.interval = interval
        self.active = True

    def __lt__(self, other: Timer) -> bool:
        return (self.deadline, self.seq) < (other.deadline, other.seq)

    def cancel(self) -> None:
        """Stop the timer; idempotent."""
        if self.active:
            self.active = False
            self.service._cancelled += 1

    def __repr__(self) -> str:
        kind = f"every {self.interval} s" if self.interval else "once"
        state = "active" if self.active else "cancelled"
        return f"<Timer {kind} at {self.deadline:.6f} {state} msg={self.msg!r}>"


class TimerService:
    """The timer heap of one actor system and the task that fires it."""

    def __init__(self) -> None:
        self._heap: list[Timer] = []
        self._seq = 0
        self._cancelled = 0
        self._changed = trio.Event()
        self.fired = 0

    def __len__(self) -> int:
        return len(self._heap) - self._cancelled

    def start(
        self, ref: ActorRef, incarnation: int, delay: float, msg: Any, interval: float | None
    ) -> Timer:
        if not (delay >= 0.0 and math.isfinite(delay)):
            raise ValueError(f"timer delay must be a finite number >= 0, got {delay!r}")
        if interval is not None and not (interval > 0.0 and math.isfinite(interval)):
            raise ValueError(f"timer interval must be a finite number > 0, got {interval!r}")
        self._seq += 1
        timer = Timer(self, ref, incarnation, trio.current_time() + delay, self._seq, msg, interval)
        heap = self._heap
        earliest = heap[0].deadline if heap else math.inf
        heapq.heappush(heap, timer)
        if timer.deadline < earliest:
            self._changed.set()
        if self._cancelled > _COMPACT_MIN and self._cancelled * 2 > len(heap):
            self._compact()
        return timer

    def _compact(self) -> None:
        self._heap = [t for t in self._heap if t.active]
        heapq.heapify(self._heap)
        self._cancelled = 0

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Fire timers until cancelled."""
        task_status.started()
        while True:
            heap = self._heap
            while heap and not heap[0].active:
                heapq.heappop(heap)
                self._cancelled -= 1
            deadline = heap[0].deadline if heap else math.inf
            if self._changed.is_set():
                self._changed = trio.Event()
            with trio.move_on_at(deadline):
                await self._changed.wait()
            self._fire_due(trio.current_time())

    def _fire_due(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0].deadline <= now:
            timer = heapq.heappop(heap)
            if not timer.active:
                self._cancelled -= 1
                continue
            ref = timer.ref
            if ref._incarnation != timer.incarnation or ref.state not in _LIVE:
                timer.active = False
                continue
            self.fired += 1
            try:
                ref.tell(timer.msg)
            except ActorError as exc:
                log.warning("timer message %r to %r was dropped: %s", timer.msg, ref, exc)
            if timer.interval is None:
                timer.active = False
                continue
            # Fixed rate, but never a burst of catch-up ticks after a stall.
            timer.deadline = max(timer.deadline + timer.interval, now)
            heapq.heappush(heap, timer)
