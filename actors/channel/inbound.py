"""The inbound path: events from the platform to the subscribers and the sink.

Design:
- Each event is deduplicated by its platform id (a bounded window of recent
  ids), published to subscribers at once (never blocking: a subscriber that
  falls behind loses events, counted), and handed to the sink (the node's
  store) on the reader's own task, without a task or a timer of its own.
- One batcher: the sink batches (the store writes in batches of its own
  size); the channel hands events over as they come and keeps only what the
  sink refused. ``save_inbound`` on a store with room returns without a
  checkpoint, so the common path costs an append.
- A sink that refuses (the store is down) keeps the events in the channel's
  memory, in order, and the reader retries every ``inbound_retry`` seconds
  before it reads more: the platform waits (its own buffers and redelivery),
  nothing is dropped, and the channel does not crash. A killed incarnation
  leaves them in the memory for the next one, which hands them over before
  it connects.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import trio

from providers.base import DeliveryReceipt, Event, InboundMessage, MessageEdited

if TYPE_CHECKING:
    from .state import ChannelMemory, ChannelSettings

__all__ = ["InboundPath", "InboundSink", "MemoryInboundSink"]


class InboundSink(Protocol):
    """Where a channel hands its inbound events (the node's store)."""

    async def save_inbound(self, events: Sequence[Event]) -> None:
        """Take a batch of inbound events; raise to refuse them (they are kept)."""
        ...


class MemoryInboundSink:
    """An in-memory sink: keeps every batch it was given."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.batches = 0
        self._saved = trio.Event()

    async def save_inbound(self, events: Sequence[Event]) -> None:
        self.events.extend(events)
        self.batches += 1
        self._saved.set()
        self._saved = trio.Event()

    async def wait_for(self, count: int) -> None:
        """Wait until at least ``count`` events have been saved."""
        while len(self.events) < count:
            await self._saved.wait()


class InboundPath:
    """The inbound half of a :class:`~actors.ChannelActor` (a mixin).

    It reads the actor's ``memory``, ``settings`` and ``sink``.
    """

    # Empty slots, so the actor keeps no __dict__; hidden from mypy, which
    # would otherwise refuse the actor's own slots assigned here.
    if not TYPE_CHECKING:
        __slots__ = ()

    memory: ChannelMemory
    settings: ChannelSettings
    sink: InboundSink | None

    if TYPE_CHECKING:

        @property
        def _log(self) -> logging.LoggerAdapter[logging.Logger]: ...

    async def _on_event(self, event: Event) -> None:
        memory = self.memory
        if isinstance(event, InboundMessage | MessageEdited):
            key = event.platform_message_id
            if isinstance(event, MessageEdited):
                key = f"edit:{key}:{event.timestamp}"
            if not memory.seen.add(key):
                memory.counters["duplicates"] += 1
                return
            memory.counters["received"] += 1
            memory.pending.append(event)
        elif isinstance(event, DeliveryReceipt):
            memory.pending.append(event)
        self._publish(event)
        if memory.pending:
            await self._hand_over(retry=True)

    async def _hand_over(self, *, retry: bool) -> None:
        """Give the pending events to the sink, oldest first.

        Args:
            retry: while the sink refuses, wait ``inbound_retry`` and try
                again (the reader); else try once and keep them (a stop).
        """
        memory = self.memory
        sink = self.sink
        if sink is None:
            memory.pending.clear()
            return
        failing = False
        while memory.pending:
            batch, memory.pending = memory.pending, []
            try:
                await sink.save_inbound(batch)
            except Exception as exc:
                memory.pending[:0] = batch  # kept, in order, for the next try
                memory.counters["sink_failures"] += 1
                if not failing:
                    self._log.warning(
                        "%r: the sink refused %d inbound event(s), kept for retry: %s",
                        self,
                        len(memory.pending),
                        exc,
                    )
                failing = True
                if not retry:
                    return
                await trio.sleep(self.settings.inbound_retry)
        if failing:
            self._log.info("%r: the sink takes inbound events again", self)

    def _publish(self, event: Any) -> None:
        memory = self.memory
        for subscriber in list(memory.subscribers):
            channel, accepts = subscriber
            if accepts is not None and not accepts(event):
                continue
            try:
                channel.send_nowait(event)
            except trio.WouldBlock:
                memory.counters["subscriber_drops"] += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                memory.subscribers.remove(subscriber)
