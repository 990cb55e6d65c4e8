"""The node's event stream: every channel's events, filtered per subscriber.

Design: a channel publishes to its subscribers with ``send_nowait`` and never
waits. The node registers one :class:`_ChannelTap` per channel in that list;
the tap wraps the event with its channel's tenant and provider and hands it
to every node subscriber whose filter accepts it, again without waiting. No
task per channel and none per subscriber: fan-out is a loop over the
subscribers at publish time. A subscriber that falls ``buffer`` events behind
loses the newest ones, counted in its ``dropped``.

The node's own followers that only keep a count (the collector policy) take
a :class:`Watch` instead: a function called at publish time, so that no task
wakes for each event (a connect storm publishes two per channel).

Subscribers come and go one at a time (one per conversation or websocket
client is a normal pattern), so each costs O(1) to add and to remove: the
hub keeps them in an insertion-ordered dict and counts, as they come and go,
how many take each kind and how many take every kind, which is what
:meth:`EventHub.wants` reads. :meth:`EventHub.close` (the node has ended)
ends every subscription after what it has buffered and refuses new ones.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Collection
from typing import Any, Final, Literal

import attrs
import trio

from actors import ChannelStateChanged
from providers.base import (
    ConnectionStateChanged,
    DeliveryReceipt,
    InboundMessage,
    MessageEdited,
)

from .errors import NodeNotRunning, wrong_argument

__all__ = ["EventKind", "NodeEvent", "Subscription", "Watch"]

EventKind = Literal["inbound", "edited", "receipt", "state", "connection"]
EVENT_KINDS: Final[frozenset[str]] = frozenset(
    ("inbound", "edited", "receipt", "state", "connection")
)
DEFAULT_BUFFER: Final = 1_000  # events buffered per subscriber
_ABSENT: Final = object()

log = logging.getLogger("switchboard.events")


@attrs.frozen(kw_only=True)
class NodeEvent:
    """An event of one channel, with where it came from.

    Attributes:
        kind: ``inbound`` (InboundMessage), ``edited`` (MessageEdited),
            ``receipt`` (DeliveryReceipt), ``state`` (ChannelStateChanged) or
            ``connection`` (the provider's ConnectionStateChanged).
        channel_id: the channel.
        tenant: its tenant.
        provider: its provider.
        event: the event itself.
    """

    kind: EventKind
    channel_id: str
    tenant: str
    provider: str
    event: Any


def _kind_of(event: Any) -> EventKind | None:
    kind = _KINDS.get(type(event))  # the exact classes: one look-up per event
    if kind is not None:
        return kind
    if isinstance(event, InboundMessage):
        return "inbound"
    if isinstance(event, DeliveryReceipt):
        return "receipt"
    if isinstance(event, ChannelStateChanged):
        return "state"
    if isinstance(event, MessageEdited):
        return "edited"
    if isinstance(event, ConnectionStateChanged):
        return "connection"
    return None


_KINDS: Final[dict[type, EventKind]] = {
    InboundMessage: "inbound",
    DeliveryReceipt: "receipt",
    ChannelStateChanged: "state",
    MessageEdited: "edited",
    ConnectionStateChanged: "connection",
}


class Subscription:
    """An async iterator of :class:`NodeEvent`; close it (or leave its ``with``) to stop.

    Attributes:
        dropped: events this subscriber lost because it fell behind.
    """

    def __init__(
        self,
        hub: EventHub,
        *,
        tenants: frozenset[str] | None,
        channels: frozenset[str] | None,
        kinds: frozenset[str] | None,
        buffer: int,
    ) -> None:
        self._hub = hub
        self.tenants = tenants
        self.channels = channels
        self.kinds = kinds
        self.dropped = 0
        self._send, self._receive = trio.open_memory_channel[NodeEvent](buffer)

    def __repr__(self) -> str:
        return (
            f"<Subscription tenants={sorted(self.tenants or ['*'])} "
            f"channels={sorted(self.channels or ['*'])} kinds={sorted(self.kinds or ['*'])} "
            f"dropped={self.dropped}>"
        )

    def accepts(self, event: NodeEvent) -> bool:
        """Whether this subscriber's filter takes ``event``."""
        return (
            (self.kinds is None or event.kind in self.kinds)
            and (self.channels is None or event.channel_id in self.channels)
            and (self.tenants is None or event.tenant in self.tenants)
        )

    def offer(self, event: NodeEvent) -> None:
        """Hand over ``event`` without waiting (dropped and counted when full)."""
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            self.dropped += 1
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self._hub.remove(self)

    def close(self) -> None:
        """Unsubscribe; iteration ends after the events already buffered."""
        self._hub.remove(self)
        self._send.close()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
        self._receive.close()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> NodeEvent:
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None

    async def receive(self) -> NodeEvent:
        """The next event.

        Raises:
            trio.EndOfChannel: the subscription was closed and is drained.
        """
        return await self._receive.receive()

    def receive_nowait(self) -> NodeEvent:
        """The next event if one is buffered, without waiting.

        Each :meth:`receive` is a checkpoint, so a subscriber that takes one
        event per wake-up gets one per scheduling round: during a connect
        storm, thousands of tasks run in every round and it falls seconds
        behind. Taking what is buffered at each wake-up keeps up.

        Raises:
            trio.WouldBlock: no event is buffered.
            trio.EndOfChannel: the subscription was closed and is drained.
        """
        return self._receive.receive_nowait()


class Watch:
    """A function the hub calls with every event of the watched kinds, as it is published.

    The function runs inside the publishing channel's call: it must be quick,
    must not block and must not raise. Close the watch (or leave its ``with``)
    to stop.
    """

    def __init__(
        self, hub: EventHub, callback: Callable[[NodeEvent], None], kinds: frozenset[str] | None
    ) -> None:
        self._hub = hub
        self._callback = callback
        self.kinds = kinds

    def __repr__(self) -> str:
        return f"<Watch {self._callback!r} kinds={sorted(self.kinds or ['*'])}>"

    def accepts(self, event: NodeEvent) -> bool:
        """Whether ``event`` is of a watched kind."""
        return self.kinds is None or event.kind in self.kinds

    def offer(self, event: NodeEvent) -> None:
        """Call the function with ``event``."""
        self._callback(event)

    def close(self) -> None:
        """Stop watching."""
        self._hub.remove(self)

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventHub:
    """The node's subscribers, and a tap per channel that feeds them."""

    def __init__(self, *, log_inbound: bool = False) -> None:
        # Insertion-ordered (publish offers in subscription order), O(1) to remove.
        self._subscribers: dict[Subscription | Watch, None] = {}
        self.log_inbound = log_inbound
        # How many subscribers take each kind, and how many take every kind, kept as
        # they come and go: a tap makes no NodeEvent of a kind nobody takes (a
        # receipt, nearly always). A kind nobody takes has no key.
        self._kind_counts: Counter[str] = Counter()
        self._unfiltered = 0
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<EventHub subscribers={len(self._subscribers)} [{state}]>"

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called: no subscriber is taken any more."""
        return self._closed

    def wants(self, kind: str) -> bool:
        """Whether an event of ``kind`` goes anywhere: a subscriber, or the inbound log."""
        return (
            self._unfiltered > 0
            or kind in self._kind_counts
            or (kind == "inbound" and self.log_inbound)
        )

    def _add(self, subscriber: Subscription | Watch) -> None:
        self._subscribers[subscriber] = None
        if subscriber.kinds is None:
            self._unfiltered += 1
        else:
            self._kind_counts.update(subscriber.kinds)

    def _refuse_if_closed(self) -> None:
        if self._closed:
            raise NodeNotRunning(
                "the node has ended: its event stream is closed and takes no new "
                "subscribers; subscribe inside the open_node block"
            )

    def subscribe(
        self,
        *,
        tenant: str | Collection[str] | None = None,
        channel: str | Collection[str] | None = None,
        kind: str | Collection[str] | None = None,
        buffer: int = DEFAULT_BUFFER,
    ) -> Subscription:
        """A new subscriber; see :meth:`runtime.node.Node.subscribe`.

        Raises:
            ValueError: an unknown kind, or a buffer below 1.
            TypeError: a filter that is neither a ``str`` nor a collection of
                them (bytes, a number), or a buffer that is no ``int`` (a
                float, infinity or NaN: the buffer is a count of events).
            NodeNotRunning: the hub was closed (the node has ended).
        """
        self._refuse_if_closed()
        kinds = _as_set("kind", kind)
        unknown = sorted((kinds or set()) - EVENT_KINDS)
        if unknown:
            raise ValueError(
                f"unknown event kind(s) {unknown}; known: {', '.join(sorted(EVENT_KINDS))}"
            )
        tenants, channels = _as_set("tenant", tenant), _as_set("channel", channel)
        if not isinstance(buffer, int) or isinstance(buffer, bool):
            # math.inf made the buffer unbounded (a slow subscriber held every
            # event), NaN and 1.5 failed inside trio.
            raise wrong_argument("buffer", "an int >= 1 (events buffered)", buffer)
        if buffer < 1:
            raise ValueError(f"buffer must be at least 1, got {buffer}")
        subscription = Subscription(
            self,
            tenants=tenants,
            channels=channels,
            kinds=kinds,
            buffer=buffer,
        )
        self._add(subscription)
        return subscription

    def watch(
        self, callback: Callable[[NodeEvent], None], *, kind: str | Collection[str] | None = None
    ) -> Watch:
        """Call ``callback`` with every event of ``kind`` (``None``: all) as it is published.

        Raises:
            ValueError: an unknown kind.
            TypeError: ``kind`` is neither a ``str`` nor a collection of them.
            NodeNotRunning: the hub was closed (the node has ended).
        """
        self._refuse_if_closed()
        kinds = _as_set("kind", kind)
        unknown = sorted((kinds or set()) - EVENT_KINDS)
        if unknown:
            raise ValueError(
                f"unknown event kind(s) {unknown}; known: {', '.join(sorted(EVENT_KINDS))}"
            )
        watch = Watch(self, callback, kinds)
        self._add(watch)
        return watch

    def remove(self, subscription: Subscription | Watch) -> None:
        """Stop offering events to ``subscription`` (nothing if it is not subscribed)."""
        if self._subscribers.pop(subscription, _ABSENT) is _ABSENT:
            return
        if subscription.kinds is None:
            self._unfiltered -= 1
            return
        counts = self._kind_counts
        for kind in subscription.kinds:
            counts[kind] -= 1
            if counts[kind] <= 0:
                del counts[kind]

    def close(self) -> None:
        """End every subscription and take no new subscriber (the node has ended).

        Each subscriber's iteration ends after the events it has buffered.
        Watches are left to their owners, who close them as they stop. Closing
        again does nothing.
        """
        self._closed = True
        for subscriber in list(self._subscribers):
            if isinstance(subscriber, Subscription):
                subscriber.close()

    def tap(self, channel_id: str, tenant: str, provider: str) -> _ChannelTap:
        """The object to put in a channel's subscriber list."""
        return _ChannelTap(self, channel_id, tenant, provider)

    def publish(self, event: NodeEvent) -> None:
        if self.log_inbound and event.kind == "inbound":
            message: InboundMessage = event.event
            log.info(
                "inbound message %r",
                (message.text or "")[:200] if message.text is not None else message.media,
                extra={
                    "channel": event.channel_id,
                    "tenant": event.tenant,
                    "provider": event.provider,
                    "switchboard.message_id": message.platform_message_id,
                    "switchboard.peer": message.peer,
                    "user.id": message.sender,
                },
            )
        for subscription in list(self._subscribers):
            if subscription.accepts(event):
                subscription.offer(event)


class _ChannelTap:
    """Looks like a trio send channel to the ChannelActor; never blocks."""

    def __init__(self, hub: EventHub, channel_id: str, tenant: str, provider: str) -> None:
        self._hub = hub
        self.channel_id = channel_id
        self.tenant = tenant
        self.provider = provider

    def send_nowait(self, event: Any) -> None:
        kind = _kind_of(event)
        hub = self._hub
        if kind is None or not hub.wants(kind):
            return  # nobody takes it, nothing logs it: no NodeEvent is made
        hub.publish(
            NodeEvent(
                kind=kind,
                channel_id=self.channel_id,
                tenant=self.tenant,
                provider=self.provider,
                event=event,
            )
        )


def _as_set(argument: str, value: str | Collection[str] | None) -> frozenset[str] | None:
    """A filter's values: ``None`` (all), one ``str``, or a collection of them.

    Raises:
        TypeError: ``value`` is none of those. Bytes (``b"a"``) were taken as a
            collection of numbers, which no event matched, silently.
    """
    if value is None:
        return None
    if isinstance(value, str):
        return frozenset((value,))
    expected = "a str or a collection of str"
    if not isinstance(value, Collection) or isinstance(value, bytes | bytearray):
        raise wrong_argument(argument, expected, value)
    for item in value:
        if not isinstance(item, str):
            raise wrong_argument(f"an item of {argument}", "a str", item)
    return frozenset(value)
