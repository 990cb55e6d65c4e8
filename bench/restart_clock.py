"""The crash-to-restarted clock every side of the crash workload shares.

Design: one recorder for Switchboard's supervisor, the trio loop
(:mod:`bench.kernel_crash`), asyncio (:mod:`bench.peers_asyncio`) and Pykka
(:mod:`bench.peers_pykka`), so the four latencies are taken the same way:
the child calls :meth:`RestartClock.crash` just before it raises and
:meth:`RestartClock.on_start` first thing in every incarnation; latency is
the restart time minus the crash time. Only the ``restarted`` event differs
by runtime (``trio.Event``, ``asyncio.Event``, ``threading.Event``): the
caller passes its kind, and the driver replaces it before each crash.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Generic, NoReturn, Protocol, TypeVar

__all__ = ["Crash", "RestartClock"]


class _Event(Protocol):
    def set(self) -> None: ...


E = TypeVar("E", bound=_Event)


class Crash(Exception):
    """The deliberate failure of the crash workload."""


class RestartClock(Generic[E]):
    """Crash and restart timestamps, shared by every incarnation of the child.

    Args:
        event: makes the ``restarted`` event of the caller's runtime.
    """

    def __init__(self, event: Callable[[], E]) -> None:
        self.starts = 0
        self.crash_times: list[float] = []
        self.restart_times: list[float] = []
        self.restarted = event()

    def __repr__(self) -> str:
        return f"<RestartClock starts={self.starts} crashes={len(self.crash_times)}>"

    def on_start(self) -> None:
        """An incarnation starts; every one after the first is a restart."""
        now = time.perf_counter()
        self.starts += 1
        if self.starts > 1:
            self.restart_times.append(now)
            self.restarted.set()

    def crash(self) -> NoReturn:
        """Record the crash time and raise :class:`Crash`."""
        self.crash_times.append(time.perf_counter())
        raise Crash("deliberate crash (benchmark)")

    def latencies(self, last: int) -> list[float]:
        """µs from each of the ``last`` crashes to the restart that followed."""
        pairs = zip(self.crash_times[-last:], self.restart_times[-last:], strict=True)
        return [(restart - crash) * 1e6 for crash, restart in pairs]
