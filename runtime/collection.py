"""The node's garbage-collection policy (``[node] gc``), and the one for a
serving process that is not a node (:func:`freeze_start_up`: the emulators').

A node is a large, long-lived heap: every channel keeps its actor, its
link, its limiter and their coroutines for hours. CPython's collector
does not know that. Each full collection walks every tracked object (about
0.15 s at 1,000 channels, 0.5 s at 5,000, measured for the throughput
issue), and a walk is a pause for every channel at once: it is the largest
part of the send path's tail.

The policy, ``gc = "tuned"`` (the default):

- **Freeze what settled.** Once the channels have connected (a start-up,
  or a storm of at least :data:`STORM_CONNECTS` connects, stops or failures, then
  :data:`QUIET` seconds without one), the node collects once and freezes
  what survived (``gc.freeze()``): the collector never walks those
  objects again, so a full collection costs what the node allocated since,
  not the node's size. The one collection at that moment is the pause that
  would have come anyway.
- **A frozen object is never collected**, even once it is garbage in a
  cycle (a channel stopped since). So every freeze thaws first
  (``gc.unfreeze()``), and the node settles again at least every
  :data:`REFREEZE_INTERVAL` seconds while channels come and go (a connect,
  a stop or a failure counts): what the channels that left held is
  reclaimed then. The memory it can hold back is bounded by what churn
  frees in that interval.
- **Fewer young collections.** The young generation's threshold goes from
  700 allocations to :data:`YOUNG_THRESHOLD`: per message the send path
  allocates a few dozen objects, nearly all of them freed by reference
  counting; collecting every 700 allocations promotes the ones caught in
  flight into the older generations, where only a full walk frees them.
- **Left as it was on the way out.** Leaving ``open_node`` thaws (what the
  node built can then be collected, even while another node of the process
  runs on; that one freezes again at its next settle) and the last node of
  the process to leave puts the thresholds back, so an embedding program
  gets its collector back. A program that manages the
  collector itself sets ``gc = "default"``: the node then touches nothing.
  It should know that a busy node keeps few long-lived objects the
  collector tracks (its per-message keep is strings, and the two lists of
  each busy channel's checkpoint window), so
  CPython's own rule (a full collection once what was added reaches a
  quarter of what survived the last one) runs one about every tenth
  middle collection, and each visits every channel's table of send answers
  (1,000 entries each). Measured on 1,000 such tables, shifting each
  channel's checkpoint window by one answer took 28 to 31 µs a channel
  under CPython's thresholds, 9 to 10 µs under the tuned policy.

Nodes of one process share the collector; the policy is counted, not
stacked.

The policy counts the channels' changes as the node's event hub publishes
them (a :class:`~runtime.events.Watch`), and its task sleeps until the next
settle could fall due: it wakes a few times per storm, not once per event
(a storm of 1,000 connects publishes 2,000 state events).
"""

from __future__ import annotations

import gc
import logging
import math
import time
from typing import Any, Final

import trio

from actors import ChannelStatus

from .events import EventHub, NodeEvent

__all__ = [
    "QUIET",
    "REFREEZE_INTERVAL",
    "STORM_CONNECTS",
    "YOUNG_THRESHOLD",
    "CollectorPolicy",
    "freeze_start_up",
]

YOUNG_THRESHOLD: Final = 20_000  # allocations between young collections (CPython: 700)
STORM_CONNECTS: Final = 100  # channel changes since the last freeze that make a storm
QUIET: Final = 5.0  # seconds without a channel change before a storm counts as over
REFREEZE_INTERVAL: Final = 600.0  # seconds: the most between settles while channels churn

_CHURN: Final = frozenset((ChannelStatus.CONNECTED, ChannelStatus.STOPPED, ChannelStatus.FAILED))

log = logging.getLogger("switchboard.gc")

_users = 0  # nodes of this process that apply the policy now
_saved: tuple[int, int, int] | None = None


def freeze_start_up() -> int:
    """Tune the collector of a serving process that is not a node (the emulators'
    processes, ``switchboard emulate``), once it serves: returns what it froze.

    It collects once and freezes what start-up built (modules, classes, the
    web stack, the app), which a full collection would otherwise walk again
    and again, and takes the node's young threshold (:data:`YOUNG_THRESHOLD`).
    Under CPython's own thresholds the WhatsApp emulator stopped every few
    seconds for 50-130 ms under 400 requests a second: the p99 of every
    client measured against it, not the client's own. What start-up built
    is kept for good, even once it is garbage in a cycle: the emulators drop
    nothing of it (their app, server and ledgers live as long as the
    process). What the process makes afterwards (every message sent, kept
    for the judges) is never frozen, so a full collection still walks it and
    collects its cycles. Meant for a process of its own: the thresholds stay
    for the rest of the process.
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
    return gc.get_freeze_count()


class CollectorPolicy:
    """The policy for one node: thresholds while it runs, freezes as channels settle.

    Args:
        enabled: ``False`` (``gc = "default"``): nothing is touched.
    """

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self.settles = 0  # collect + freeze rounds done
        self.last_pause = 0.0  # seconds the last round's collection took
        self._changes = 0  # channels connected, stopped or failed since the last settle
        self._last_change = -float("inf")
        self._last_settle = -float("inf")
        self._applied = False
        self._alarm: trio.CancelScope | None = None  # the task's sleep until due_at()

    def __repr__(self) -> str:
        return (
            f"<CollectorPolicy enabled={self.enabled} settles={self.settles} "
            f"pending_changes={self._changes}>"
        )

    def __enter__(self) -> CollectorPolicy:
        global _users, _saved
        if self.enabled:
            if _users == 0:
                _saved = gc.get_threshold()
                _, middle, old = _saved
                gc.set_threshold(YOUNG_THRESHOLD, middle, old)
            _users += 1
            self._applied = True
        return self

    def __exit__(self, *exc_info: object) -> None:
        global _users, _saved
        if not self._applied:
            return
        self._applied = False
        _users -= 1
        gc.unfreeze()  # this node's heap may be garbage now: collectable again
        if _users == 0 and _saved is not None:
            gc.set_threshold(*_saved)
            _saved = None

    def changed(self, now: float) -> None:
        """A channel connected, reconnected, stopped or failed at trio time ``now``."""
        self._changes += 1
        self._last_change = now

    def due_at(self) -> float:
        """When the channels will have settled enough to collect and freeze (trio time)."""
        if not self.enabled or self._changes == 0:
            return math.inf
        at = self._last_change + QUIET  # quiet after a storm...
        if self._changes < STORM_CONNECTS:  # ...or the interval, after a few
            at = max(at, self._last_settle + REFREEZE_INTERVAL)
        return at

    def due(self, now: float) -> bool:
        """Whether the channels have settled enough to collect and freeze now.

        Judged against :meth:`due_at` itself, not by subtracting: a clock that
        wakes exactly at the moment must find it due (``(t + 5) - t`` need not
        be 5 in floating point, and a loop that woke for nothing would spin).
        """
        return now >= self.due_at()

    def settle(self, now: float) -> None:
        """Thaw, collect everything, freeze what survived."""
        began = time.perf_counter()
        gc.unfreeze()
        found = gc.collect()
        gc.freeze()
        self.last_pause = time.perf_counter() - began
        self.settles += 1
        self._changes = 0
        self._last_settle = now
        log.info(
            "gc: collected %d unreachable object(s) in %.3f s; froze %d that survived",
            found,
            self.last_pause,
            gc.get_freeze_count(),
        )

    def observe(self, event: NodeEvent) -> None:
        """A channel's state event, as the hub publishes it: count a change.

        Only an earlier moment wakes the task (the first change after a
        settle, or the one that makes a storm); a later one, as every further
        change of a storm makes it, is found when the task wakes.
        """
        if event.event.status not in _CHURN:
            return
        self.changed(trio.current_time())
        alarm = self._alarm
        if alarm is not None:
            at = self.due_at()
            if at < alarm.deadline:
                alarm.deadline = at

    async def run(self, hub: EventHub, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Follow the channels' states as ``hub`` publishes them; settle when due."""
        if not self.enabled:
            task_status.started()
            return
        with hub.watch(self.observe, kind="state"):
            self._last_settle = trio.current_time()  # a small node waits the whole interval
            task_status.started()
            try:
                while True:
                    with trio.CancelScope(deadline=self.due_at()) as self._alarm:
                        await trio.sleep_forever()
                    now = trio.current_time()
                    if self.due(now):
                        self.settle(now)
            finally:
                self._alarm = None
