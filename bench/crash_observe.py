"""What the crash scenario watches: reconnects, deliveries at the platform, the logs.

Design:
- Reconnect times are taken inside the channel, at the moment it happens:
  :class:`ReconnectWatch` hands each channel a receiver that the actor
  publishes its state changes to synchronously (the ``EventReceiver`` its
  memory keeps beside the node's own tap), so no queue or scheduling delay
  sits between "connected" and the timestamp. The memory outlives every
  incarnation, so the receiver sees every restart, and every rebuild of the
  channels' supervisor.
- Deliveries are counted on the platform's side, by unique idempotency key:
  the websocket emulator's record of accepted messages (it keeps one per
  key and counts repeated keys as duplicates), or the simulated platform's.
  The sender's own count would only say what the sender believes.
- The node logs every crash with its traceback, and escalations as errors.
  :func:`captured_logs` takes the ``switchboard`` loggers off the terminal
  for the run (they would tear the progress bar) and sorts the records
  into expected (our crashes, escalations) and unexpected, keeping a few of
  the latter for the report's notes.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final, Protocol

import trio

from actors import ChannelMemory, ChannelStateChanged, ChannelStatus
from providers.emulators.websocket import WebSocketEmulator
from providers.simulated import SimulatedProvider
from supervisors import ReachedMaxRestartIntensity

from .crash_faults import InjectedCrash

__all__ = [
    "EmulatorLedger",
    "Ledger",
    "LogTally",
    "ReconnectWatch",
    "SimulatedLedger",
    "captured_logs",
]

KEPT_MESSAGES: Final = 5  # unexpected log messages quoted in the notes


class _Receiver:
    """Takes one channel's published events without waiting (an ``EventReceiver``)."""

    __slots__ = ("channel_id", "watch")

    def __init__(self, watch: ReconnectWatch, channel_id: str) -> None:
        self.watch = watch
        self.channel_id = channel_id

    def send_nowait(self, value: Any, /) -> None:
        if type(value) is not ChannelStateChanged:
            return
        if value.status is ChannelStatus.CONNECTED:
            self.watch._connected(self.channel_id)
        elif value.status is ChannelStatus.CONNECTING:
            self.watch._connecting(self.channel_id)


class ReconnectWatch:
    """Crash-to-connected-again times, and the first connect of every channel.

    A crashed channel's first CONNECTING is its new incarnation starting its
    connection loop, which splits the time in two: the supervisor's part
    (deciding, the restart backoff, starting the actor) and the reconnect.

    Attributes:
        latencies: seconds from each crash to its channel's next connect.
        restart_waits: seconds from each crash to the new incarnation's first
            connect attempt.
        reconnects: seconds from that attempt to connected.
        pending: crashed channels not connected again yet, with the crash time.
        connected: channels that connected at least once.
    """

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.restart_waits: list[float] = []
        self.reconnects: list[float] = []
        self.pending: dict[str, float] = {}
        self._restarted: dict[str, float] = {}
        self.connected: set[str] = set()
        self._wanted = 0
        self._all_connected = trio.Event()
        self._all_back = trio.Event()

    def __repr__(self) -> str:
        return (
            f"<ReconnectWatch connected={len(self.connected)} pending={len(self.pending)} "
            f"samples={len(self.latencies)}>"
        )

    def attach(self, channel_id: str, memory: ChannelMemory) -> None:
        """Watch one channel from now on."""
        memory.subscribers.append((_Receiver(self, channel_id), None))
        self._wanted += 1
        if memory.status is ChannelStatus.CONNECTED:
            self._connected(channel_id)

    def crashed(self, channel_id: str, at: float) -> None:
        """``channel_id`` crashed at ``at``: time its next connect."""
        self.pending[channel_id] = at

    async def wait_all_connected(self) -> None:
        """Until every attached channel has connected once."""
        if len(self.connected) >= self._wanted:
            await trio.lowlevel.checkpoint()
            return
        self._all_connected = trio.Event()
        await self._all_connected.wait()

    async def wait_all_back(self) -> None:
        """Until every crashed channel has connected again."""
        if not self.pending:
            await trio.lowlevel.checkpoint()
            return
        self._all_back = trio.Event()
        await self._all_back.wait()

    def _connected(self, channel_id: str) -> None:
        if channel_id not in self.connected:
            self.connected.add(channel_id)
            if len(self.connected) >= self._wanted:
                self._all_connected.set()
        crashed_at = self.pending.pop(channel_id, None)
        if crashed_at is None:
            return
        now = trio.current_time()
        self.latencies.append(now - crashed_at)
        restarted_at = self._restarted.pop(channel_id, None)
        if restarted_at is not None:
            self.restart_waits.append(restarted_at - crashed_at)
            self.reconnects.append(now - restarted_at)
        if not self.pending:
            self._all_back.set()

    def _connecting(self, channel_id: str) -> None:
        if channel_id in self.pending and channel_id not in self._restarted:
            self._restarted[channel_id] = trio.current_time()


class Ledger(Protocol):
    """What the platform accepted, by idempotency key."""

    def delivered(self) -> int:
        """Messages accepted (each key once)."""
        ...

    def delivered_keys(self) -> set[str]:
        """The keys of the accepted messages."""
        ...

    def duplicates(self) -> int:
        """Sends of a key already accepted (absorbed by the platform)."""
        ...


class EmulatorLedger:
    """Deliveries as the websocket emulator recorded them."""

    def __init__(self, emulator: WebSocketEmulator) -> None:
        self.emulator = emulator
        emulator.max_kept = None  # the ledger counts every delivery, not the last ones

    def delivered(self) -> int:
        return len(self.emulator.sent)

    def delivered_keys(self) -> set[str]:
        return {str(message["id"]) for message in self.emulator.sent}

    def duplicates(self) -> int:
        return self.emulator.stats["duplicates"]


class SimulatedLedger:
    """Deliveries as the simulated platform recorded them."""

    def __init__(self, provider: SimulatedProvider) -> None:
        self.provider = provider

    def delivered(self) -> int:
        return len(self.provider.sent)

    def delivered_keys(self) -> set[str]:
        return {record.idempotency_key for record in self.provider.sent}

    def duplicates(self) -> int:
        return self.provider.statistics().duplicates


class LogTally(logging.Handler):
    """Counts the node's warnings and errors, expected or not.

    Attributes:
        crashes: crash reports of our injected crashes.
        escalations: "reached its maximum restart intensity" reports.
        unexpected: every other record, by level name.
        examples: the first few unexpected messages.
    """

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.crashes = 0
        self.escalations = 0
        self.unexpected: Counter[str] = Counter()
        self.examples: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, InjectedCrash):
            self.crashes += 1
            return
        args = record.args if isinstance(record.args, tuple) else ()
        if any(isinstance(arg, ReachedMaxRestartIntensity) for arg in args):
            self.escalations += 1
            return
        self.unexpected[record.levelname] += 1
        if len(self.examples) < KEPT_MESSAGES:
            self.examples.append(f"{record.name} {record.levelname}: {record.getMessage()[:300]}")


@contextmanager
def captured_logs() -> Iterator[LogTally]:
    """Route the ``switchboard`` loggers' warnings and errors to a tally, off the terminal."""
    logger = logging.getLogger("switchboard")
    tally = LogTally()
    propagate = logger.propagate
    logger.addHandler(tally)
    logger.propagate = False
    try:
        yield tally
    finally:
        logger.removeHandler(tally)
        logger.propagate = propagate
