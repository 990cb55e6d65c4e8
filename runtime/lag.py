"""How late the event loop has been running lately.

Two parts of a node read it: a lease gives that much up (the cluster), and
admission limits the sends in flight once the loop has stayed behind
(``runtime.admission``).

Design:
- A node whose event loop is starved (the CPU shared with other work, a
  long batch, a collection) runs every timer late, the one that cancels a
  channel's connection at its tenure's deadline included. The lease clock
  (``runtime.cluster.leases.LeaseClock``) only covers the drift of two
  clocks; a cancel that fires 0.3 s late on a loop that has been 0.3 s late
  for a while can overlap the next owner's connection by as much.
- So a probe task asks to wake every :data:`PROBE_INTERVAL` and records how
  late it woke; :meth:`LoopLag.worst` is the worst lateness within the last
  ``window`` seconds (a sliding maximum: a monotonic deque, O(1) amortised),
  and each renewal's tenure ends :data:`LAG_FACTOR` times that much sooner,
  capped (:meth:`LoopLag.allowance`) so that a lagging node never cuts its
  own connections before its next renewal could extend them.
- What this cannot cover is a stall that comes without warning (a SIGSTOP,
  a swap storm): nothing inside a process can. The fencing tokens keep such
  a node from writing anything durable once another holds the channel.
- Admission asks a different question: how far behind has the loop
  stayed? :meth:`LoopLag.held` is the mean of the last two lateness
  readings. A loop with more work than it can run wakes a timer late by
  the rest of the batch its deadline falls in, then the timer's task's
  place in the next (trio runs a batch in shuffled order): about a batch
  on average, from nothing to two. One long batch or one collection pause
  counts half. The lesser of the two readings, tried first, often read
  none of it: in a traced run it read 0.0-0.13 s while the node held 8,837
  sends and answered them after 0.9 s (p50). Each reading is handed to a
  ``listener`` (the node's :class:`~runtime.admission.Shedder`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Final

import trio

__all__ = ["LAG_FACTOR", "PROBE_INTERVAL", "LoopLag"]

PROBE_INTERVAL: Final = 0.1  # seconds between the probe's wake-ups
LAG_FACTOR: Final = 2.0  # a tenure ends this many times the recent worst lateness sooner


class LoopLag:
    """The event loop's lateness: the worst over a sliding window, and the one it held.

    Args:
        window: seconds a lateness is remembered.
        cap: the most :meth:`allowance` ever gives up, seconds (0: a probe
            that gives up nothing, as admission's).
    """

    __slots__ = ("_last", "_samples", "cap", "listener", "window")

    def __init__(self, *, window: float, cap: float = 0.0) -> None:
        self.window = window
        self.cap = cap
        self._samples: deque[tuple[float, float]] = deque()  # (when, late), late decreasing
        self._last = (0.0, 0.0)  # the two newest readings: (the one before, the newest)
        # Called with the time of each reading once it is recorded (runtime.admission).
        self.listener: Callable[[float], None] | None = None

    def __repr__(self) -> str:
        late = self._samples[0][1] if self._samples else 0.0
        return f"<LoopLag worst={late:.3f}s window={self.window:g}s>"

    def record(self, now: float, late: float) -> None:
        """The probe woke ``late`` seconds after it asked to, at ``now``."""
        samples = self._samples
        while samples and samples[-1][1] <= late:
            samples.pop()  # never the worst again: this one is as bad and newer
        samples.append((now, late))
        self._forget(now)
        self._last = (self._last[1], late)
        if self.listener is not None:
            self.listener(now)

    def held(self) -> float:
        """The lateness the loop has kept: the mean of the last two readings."""
        return sum(self._last) / 2

    def worst(self, now: float) -> float:
        """The worst lateness recorded within the window before ``now`` (0 if none)."""
        self._forget(now)
        return self._samples[0][1] if self._samples else 0.0

    def allowance(self, now: float) -> float:
        """Seconds a tenure renewed at ``now`` gives up for the loop's lateness."""
        return min(LAG_FACTOR * self.worst(now), self.cap)

    def _forget(self, now: float) -> None:
        samples = self._samples
        while samples and samples[0][0] < now - self.window:
            samples.popleft()

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Probe the loop until cancelled."""
        task_status.started()
        while True:
            due = trio.current_time() + PROBE_INTERVAL
            await trio.sleep_until(due)
            now = trio.current_time()
            self.record(now, max(0.0, now - due))
