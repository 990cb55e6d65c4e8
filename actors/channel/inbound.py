"""The inbound path: events from the platform to the store, then to the subscribers.

Design:
- Each event is deduplicated by its platform id (a bounded window of recent
  ids, restored from the checkpoint after a restart), then kept durably by
  the sink (the node's store), then published to subscribers (never
  blocking: a subscriber that falls behind loses events, counted). Kept
  before published: the store's unique key is the dedupe that survives a
  crash, so an event the platform delivers again after a kill -9 (Telegram
  before its offset moved on, Discord replaying on RESUME) is recognised
  and not published twice. The reader reads the next event only once the
  last one is kept and published, so a platform that confirms by reading on
  (Telegram's offset) never drops what is not yet kept.
- One batcher: the store's. ``store_inbound`` waits for the batch that
  holds the event, and the store writes at once while anyone waits, so the
  channels of a node share one write (group commit), on the reader's own
  task, with no task or timer of the channel's.
- A delivery receipt does not hold the reader: the store takes it into
  its batch (``store_inbound_later``) and, once the batch is written,
  publishes it from the store's own task (:func:`receipt_kept`). The
  reader goes on at once to the next frame, often a send's answer, which
  used to wait behind the receipt's write. The store writes such events
  within ``LATER_WITHIN`` (5 ms), so a busy node's receipts share a write.
  The platforms that send receipts (the generic websocket, WhatsApp's
  webhooks) confirm nothing by being read on, so a crash loses no receipt
  the platform would have sent again; what the store took is kept.
- Order holds: the store writes and answers in the order it was given
  events; the reader takes this path only while it holds no event of its
  own (``pending``); what the channel publishes meanwhile (a connection's
  state, its own status, STOPPED) rides behind the receipts read before
  it. A store that cannot take a receipt at once (its buffer is full, it
  closes) gets it the waiting way; one that closes before writing gives
  the receipts back to ``pending``, ahead of anything read after them, and
  publishes what rode behind them.
- During a store outage the reader reads on, handing receipts over, until
  the store's buffer is full (then it waits, as for any event): what the
  channel publishes meanwhile waits behind those receipts until the store
  writes again. A crash, a restart or a stop never waits for them.
- While the store cannot keep them (it is down, or its buffer is full), the
  reader waits: the platform keeps what is unread (Telegram holds updates,
  a gateway's TCP window closes), nothing is dropped, nothing crashes.
- An event handed over but not yet published stays in the channel's memory
  (``pending``), marked as tried; a killed incarnation's successor hands it
  over again and publishes it whatever the store says (the store may have
  kept it, but nobody saw it).

Policy for a store outage (issue 11; ``tests/test_store_outage.py`` holds a
PostgreSQL outage of a minute under inbound load to it: none lost, no
restart, the buffer bounded):

- Nothing is refused and nothing raises while the store is down: the
  store's ``store_inbound`` waits for as long as the outage lasts (its
  flusher retries with a capped backoff), and only a store that closes
  releases the waiters with a ``StoreError``, which this path keeps the
  events through (they stay ``pending`` and are handed over again).
- Bounded per channel: a channel holds the one event it is handing over
  (``pending``) plus what its connection buffers for a slow reader, a fixed
  number per provider (websocket and WhatsApp ``event_buffer``, 1,024 by
  default; Discord ``EVENT_BUFFER``, 1,024; Telegram none: its poller asks
  for more only once the last update was taken).
- Bounded per node: the store buffers at most ``BUFFER_BATCHES`` batches,
  and past that each waiting channel adds only the event in its hands, so
  the node holds at most ``BUFFER_BATCHES * batch_size`` + one event per
  channel, whatever the outage's length.
- Past those bounds the platform holds the rest, each in its own way:
  Telegram keeps the updates it was not asked for (polling), or gets a 503
  after ``WEBHOOK_TIMEOUT`` and redelivers (webhooks: answered 200 only once
  the event is kept); WhatsApp's webhook answers 200 only once every event
  of the notification is kept, 503 once the buffer cannot take a whole
  notification or its channel closes first, and Meta redelivers; Discord's
  gateway driver stops reading (a socket the gateway drops meanwhile is
  resumed, and a connection that ends with events unread resumes after the
  last one taken); the generic websocket stops being read
  (its TCP window closes), and its keepalive does not count the stall
  against the link (``WebSocketCore.reader_stalled``): the link, and what
  the server queued on it, survive. Reading resumes by itself once the
  store writes again, oldest first.
- Limit: the generic websocket protocol has no replay, so a server that
  drops a client for not answering its heartbeats during a long stall
  loses what it had queued for it; nothing on this side can prevent that.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import trio

from providers.base import DeliveryReceipt, Event, InboundMessage, MessageEdited

from .state import seen_key

if TYPE_CHECKING:
    from .state import ChannelMemory, ChannelSettings

__all__ = ["InboundPath", "InboundSink", "MemoryInboundSink", "take_over"]

log = logging.getLogger("switchboard.channels")


class InboundSink(Protocol):
    """Where a channel keeps its inbound events (the node's store).

    A sink may also offer ``store_inbound_later(events, kept) -> bool``
    (:meth:`runtime.store.Store.store_inbound_later`): then a delivery
    receipt does not hold the reader while it is written.
    """

    async def store_inbound(self, events: Sequence[Event]) -> Sequence[bool]:
        """Keep the events durably; return, for each, whether it was not kept before.

        Raise to refuse them: the channel keeps them and tries again.
        """
        ...


def receipt_kept(
    memory: ChannelMemory,
    receipt: DeliveryReceipt,
    fresh: list[bool] | None,
    error: BaseException | None,
) -> None:
    """The store's answer for a receipt it took (called from its task; never raises).

    ``memory.in_store`` holds the channel's receipts the store took, oldest
    first, and what the channel published meanwhile riding behind them as
    ``(event, memory)`` pairs (the memory whose subscribers get it: a
    restart's new memory shares the list, see :func:`take_over`); it
    outlives the incarnation that read them, and nothing waits for it (a
    restart must not wait out a store outage).
    """
    held = memory.in_store
    if not held or held[0] is not receipt:
        return  # given back already, with the ones before it, by the store's closing
    if error is not None:
        # The store closed first: every receipt it holds comes back, oldest
        # first, ahead of what was read after them; perhaps kept, so tried.
        # What rode behind them is published now (it is never kept).
        given = list(held)
        held.clear()
        memory.pending[:0] = [(each, True) for each in given if type(each) is not tuple]
        for each in given:
            if type(each) is tuple:
                publish(each[1], each[0])
        return
    del held[0]
    if fresh and not fresh[0]:
        memory.counters["duplicates"] += 1  # kept before: published before
    else:
        publish(memory, receipt)
    while held and type(held[0]) is tuple:
        event, owner = held.pop(0)
        publish(owner, event)


class MemoryInboundSink:
    """An in-memory sink: keeps every event it was given, once."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.batches = 0
        self._saved = trio.Event()

    async def store_inbound(self, events: Sequence[Event]) -> list[bool]:
        fresh = [event not in self.events for event in events]
        self.events.extend(event for event, new in zip(events, fresh, strict=True) if new)
        self.batches += 1
        self._saved.set()
        self._saved = trio.Event()
        await trio.lowlevel.checkpoint()
        return fresh

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
    _leftover: trio.Event | None  # the last incarnation's events, until kept (the actor's)
    _conn: Any  # the live connection, or None (the actor's)

    if TYPE_CHECKING:

        @property
        def _log(self) -> logging.LoggerAdapter[logging.Logger]: ...

    async def _on_event(self, event: Event) -> None:
        memory = self.memory
        if isinstance(event, InboundMessage | MessageEdited):
            if not memory.seen.add(seen_key(event)):
                memory.counters["duplicates"] += 1
                leftover = self._leftover
                if leftover is not None:
                    # Its first delivery may be among the last incarnation's events,
                    # not kept yet: a webhook answered 200 now would be its loss.
                    await leftover.wait()
                return
        elif not isinstance(event, DeliveryReceipt):
            self._publish(event)  # connection states: not kept, published at once
            return
        elif not memory.pending and not self._answers_when_kept() and self._keep_later(event):
            return  # published by the store once written; the reader goes on
        memory.pending.append((event, False))
        read_at = trio.current_time()
        await self._hand_over(retry=True)
        # Handed over: kept and published (or dropped as a duplicate the store knew).
        if memory.timings is not None and not isinstance(event, DeliveryReceipt):
            memory.timings.delivered(trio.current_time() - read_at)

    def _answers_when_kept(self) -> bool:
        """The connection answers its platform only once the events are kept
        (``answer_when_kept``): a receipt is kept before the reader reads on."""
        return bool(getattr(self._conn, "answers_when_kept", False))

    def _event_at_once(self, event: Event) -> bool:
        """Take a receipt where the connection reads it (``take_events_at_once``).

        The same as :meth:`_on_event` would do with it, without the hop to
        the channel's task; nothing else is taken so. A receipt moves no
        session (the websocket's is the last inbound message's id).
        """
        return (
            isinstance(event, DeliveryReceipt)
            and not self.memory.pending
            and self._keep_later(event)
        )

    def _keep_later(self, receipt: DeliveryReceipt) -> bool:
        """Hand ``receipt`` to the store without waiting; False if it cannot take it now."""
        later: Callable[..., bool] | None = getattr(self.sink, "store_inbound_later", None)
        if later is None:
            return False
        memory = self.memory
        held = memory.in_store
        if held is None:
            held = memory.in_store = []
        held.append(receipt)  # first: a store may answer at once
        taken = False
        try:
            taken = later((receipt,), functools.partial(receipt_kept, memory, receipt))
        finally:
            if not taken:
                held.pop()
        return taken

    async def _hand_over(self, *, retry: bool) -> None:
        """Keep the pending events, then publish the ones nobody saw yet, once
        the events the last incarnation left are kept (they go first).

        Args:
            retry: while the sink refuses, wait ``inbound_retry`` and try
                again (the reader); else try once and keep them (a stop).
        """
        leftover = self._leftover
        if leftover is not None:
            await leftover.wait()
        await self._keep_pending(retry=retry)

    async def _keep_pending(self, *, retry: bool) -> None:
        """:meth:`_hand_over`'s work: the pending events, kept in batches."""
        memory = self.memory
        sink = self.sink
        failing = False
        while memory.pending:
            batch = list(memory.pending)
            # Marked as tried before the wait: if this incarnation dies in it,
            # the next one publishes them whatever the store then says.
            memory.pending[: len(batch)] = [(event, True) for event, _ in batch]
            try:
                if sink is None:
                    fresh: Sequence[bool] = [True] * len(batch)
                else:
                    fresh = await sink.store_inbound([event for event, _ in batch])
            except Exception as exc:
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
                continue
            del memory.pending[: len(batch)]
            for (event, tried), new in zip(batch, fresh, strict=True):
                if new or tried:
                    if not isinstance(event, DeliveryReceipt):
                        memory.counters["received"] += 1
                    self._publish(event)
                else:
                    memory.counters["duplicates"] += 1  # kept before: published before
        if failing:
            self._log.info("%r: the sink takes inbound events again", self)

    def _publish(self, event: Any) -> None:
        publish_in_order(self.memory, event)


def publish_in_order(memory: ChannelMemory, event: Any) -> None:
    """Publish ``event`` behind the channel's receipts still in the store's hands.

    A receipt the store took (``memory.in_store``) is published once the
    store has written it; an event the channel makes meanwhile (a state
    change) rides behind it, so that subscribers see them in the order
    they happened.
    """
    held = memory.in_store
    if held:
        held.append((event, memory))  # after the receipts read before it
        return
    publish(memory, event)


def take_over(memory: ChannelMemory, old: ChannelMemory) -> None:
    """Give a channel's new memory (a restart's) what the old one left with the store.

    Called before the new memory's first incarnation starts. The old
    memory's incarnations are over, but the store may still hold receipts
    they read (``in_store``), with their STOPPED riding behind them, and an
    event the last one could not hand over before its stop ended stays in
    its ``pending``. The new memory shares both lists: what it publishes
    rides behind the old receipts, so subscribers never see the old
    incarnation's STOPPED after the new one's CONNECTED, and its first
    incarnation keeps the old events while it connects, ahead of what it
    reads (they were lost with the old memory before). A store that closes
    gives the receipts back into the shared ``pending`` too.
    """
    if old.in_store:
        memory.in_store = old.in_store
        memory.pending = old.pending
    elif old.pending:
        memory.pending = old.pending


def publish(memory: ChannelMemory, event: Any) -> None:
    """Hand ``event`` to the channel's subscribers; never waits for one, never raises.

    A subscriber whose filter raises is a defect of its own: it is logged
    and unsubscribed (its receive channel ends), and the others still get
    the event.
    """
    for subscriber in list(memory.subscribers):
        channel, accepts = subscriber
        try:
            if accepts is not None and not accepts(event):
                continue
        except Exception:
            log.exception(
                "a subscriber's filter raised on %s; it is unsubscribed", type(event).__name__
            )
            memory.subscribers.remove(subscriber)
            close = getattr(channel, "close", None)  # a trio channel: its receiver ends
            if close is not None:
                close()
            continue
        try:
            channel.send_nowait(event)
        except trio.WouldBlock:
            memory.counters["subscriber_drops"] += 1
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            memory.subscribers.remove(subscriber)
