"""The peers workloads on Pykka (``pykka.ThreadingActor``: one OS thread per actor).

Pykka is the established actor library for Python; its threading actors are
what a Python team would otherwise reach for. The workloads do the same work
as the other runtimes, in Pykka's own idioms; where Pykka cannot do the same
thing, the difference is stated here and in the scenario's notes:

- ping-pong: ``ref.ask(i)`` from the main thread to an actor whose
  ``on_receive`` returns its argument (a blocking ask: the caller waits on
  the reply future, the actor thread handles the message).
- fan-in: 100 sender threads each ``ref.tell(i)`` M times to one counting
  actor, which sets a ``threading.Event`` at the total. Pykka's inbox is an
  unbounded ``queue.Queue``: there is no backpressure, unlike the bounded
  mailboxes and queues of the other sides.
- spawn/stop: ``Idle.start()`` N times; each actor counts itself ready in
  ``on_start`` (in its own thread) and the clock stops when all are; then
  ``ref.stop()`` on each in turn (blocks until that actor has stopped: a
  graceful, awaited stop). N is much smaller than on the other sides: each
  actor is an OS thread.
- crash-to-restarted: Pykka has no supervisor, so this module writes the
  smallest honest one. A supervisor actor starts the child; the child's
  ``on_failure`` (which Pykka calls after an unhandled exception in a
  ``tell``, once it has logged it and marked the actor stopped) tells the
  supervisor, whose ``on_receive`` starts a new child. Latency runs from
  just before the child raises to the new child's ``on_start`` (in its new
  thread). Pykka logs each failure with its traceback at ERROR; the caller
  silences the ``pykka`` logger (:func:`silenced_pykka_logs`) as the
  kernel silences ours.

All timed sections use :func:`bench.kernel.gc_settled`, as the other sides.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Final

import pykka

from .kernel import gc_settled
from .restart_clock import RestartClock

__all__ = [
    "crash_pykka",
    "fan_in_pykka",
    "ping_pong_pykka",
    "silenced_pykka_logs",
    "spawn_stop_pykka",
]

TIMEOUT: Final = 60.0  # seconds any single wait may take before it is a hang


class _Echo(pykka.ThreadingActor):
    def on_receive(self, message: Any) -> Any:
        return message


def ping_pong_pykka(n: int) -> float:
    """µs per blocking ``ref.ask(i)`` round trip to a Pykka actor."""
    ref = _Echo.start()
    try:
        for i in range(min(n, 1_000)):
            ref.ask(i, timeout=TIMEOUT)
        with gc_settled():
            t0 = time.perf_counter()
            for i in range(n):
                ref.ask(i, timeout=TIMEOUT)
            t1 = time.perf_counter()
    finally:
        ref.stop()
    return (t1 - t0) / n * 1e6


class _Counter(pykka.ThreadingActor):
    """Counts messages; sets ``done`` when it has seen ``total``."""

    def __init__(self, total: int, done: threading.Event) -> None:
        super().__init__()
        self.count = 0
        self.total = total
        self.done = done

    def on_receive(self, message: Any) -> None:
        self.count += 1
        if self.count == self.total:
            self.done.set()


def fan_in_pykka(senders: int, per_sender: int) -> float:
    """Messages/s from ``senders`` threads doing ``ref.tell(i)`` to one actor."""
    total = senders * per_sender
    done = threading.Event()
    ref = _Counter.start(total, done)

    def send() -> None:
        for i in range(per_sender):
            ref.tell(i)

    threads = [threading.Thread(target=send, daemon=True) for _ in range(senders)]
    try:
        with gc_settled():
            t0 = time.perf_counter()
            for thread in threads:
                thread.start()
            if not done.wait(TIMEOUT):
                raise TimeoutError(f"the counting actor saw fewer than {total} messages")
            t1 = time.perf_counter()
        for thread in threads:
            thread.join()
    finally:
        ref.stop()
    return total / (t1 - t0)


class _Readiness:
    """Counts actors whose ``on_start`` ran (in their threads); fires when all have."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.ready = 0
        self.lock = threading.Lock()
        self.all_ready = threading.Event()

    def one_ready(self) -> None:
        with self.lock:
            self.ready += 1
            if self.ready == self.n:
                self.all_ready.set()


class _Idle(pykka.ThreadingActor):
    def __init__(self, readiness: _Readiness) -> None:
        super().__init__()
        self.readiness = readiness

    def on_start(self) -> None:
        self.readiness.one_ready()

    def on_receive(self, message: Any) -> None:
        return None


def spawn_stop_pykka(n: int) -> tuple[float, float]:
    """(actors/s until all started, seconds to stop all) for ``n`` Pykka actors."""
    readiness = _Readiness(n)
    refs: list[pykka.ActorRef[_Idle]] = []
    try:
        with gc_settled():
            t0 = time.perf_counter()
            for _ in range(n):
                refs.append(_Idle.start(readiness))
            if not readiness.all_ready.wait(TIMEOUT):
                raise TimeoutError(f"only {readiness.ready} of {n} actors started")
            t1 = time.perf_counter()
            for ref in refs:
                ref.stop()
            t2 = time.perf_counter()
    finally:
        pykka.ActorRegistry.stop_all()
    return n / (t1 - t0), t2 - t1


class _RestartClock(RestartClock[threading.Event]):
    """The shared clock, plus the current child for the driving thread.

    Written from the child threads, read by the driving thread between
    crashes (each crash waits for the restart it causes, so the writes are
    ordered by the ``restarted`` event). Unlike the other sides, the first
    start sets ``restarted`` too: the driver waits for the first child.
    """

    def __init__(self) -> None:
        super().__init__(threading.Event)
        self.current: pykka.ActorRef[Any] | None = None

    def on_start_ref(self, ref: pykka.ActorRef[Any]) -> None:
        """An incarnation ``ref`` starts (``current`` is set before ``restarted``)."""
        self.current = ref
        super().on_start()
        self.restarted.set()


class _ChildFailed:
    """What a crashed child tells its supervisor."""

    __slots__ = ("ref",)

    def __init__(self, ref: pykka.ActorRef[Any]) -> None:
        self.ref = ref


class _CrashyChild(pykka.ThreadingActor):
    def __init__(self, clock: _RestartClock, supervisor: pykka.ActorRef[Any]) -> None:
        super().__init__()
        self.clock = clock
        self.supervisor = supervisor

    def on_start(self) -> None:
        self.clock.on_start_ref(self.actor_ref)

    def on_receive(self, message: Any) -> None:
        self.clock.crash()

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.supervisor.tell(_ChildFailed(self.actor_ref))


class _Supervisor(pykka.ThreadingActor):
    """One-for-one, permanent, unlimited restarts: start a new child on each failure."""

    def __init__(self, clock: _RestartClock) -> None:
        super().__init__()
        self.clock = clock

    def on_start(self) -> None:
        _CrashyChild.start(self.clock, self.actor_ref)

    def on_receive(self, message: Any) -> None:
        if isinstance(message, _ChildFailed):
            _CrashyChild.start(self.clock, self.actor_ref)


def _crash_once(clock: _RestartClock) -> None:
    child = clock.current
    assert child is not None, "the supervisor has not started its child"
    clock.restarted = threading.Event()
    child.tell("crash")
    if not clock.restarted.wait(TIMEOUT):
        raise TimeoutError("the crashed child was not restarted")


def crash_pykka(n: int) -> list[float]:
    """Crash-to-restarted latencies (µs) under the minimal Pykka supervisor.

    After ``min(n, 100)`` unrecorded crashes, ``n`` crashes are driven one at
    a time from this thread: tell the current child, wait for the restart.
    """
    clock = _RestartClock()
    supervisor = _Supervisor.start(clock)
    try:
        if not clock.restarted.wait(TIMEOUT):
            raise TimeoutError("the supervisor did not start its child")
        for _ in range(min(n, 100)):
            _crash_once(clock)
        with gc_settled():
            for _ in range(n):
                _crash_once(clock)
    finally:
        supervisor.stop()
        pykka.ActorRegistry.stop_all()
    return clock.latencies(n)


@contextmanager
def silenced_pykka_logs() -> Iterator[None]:
    """Raise the ``pykka`` logger above CRITICAL for the duration."""
    logger = logging.getLogger("pykka")
    saved = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(saved)
