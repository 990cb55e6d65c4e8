"""An in-process simulated platform, for benchmarks at scale and virtual-time tests.

Design: no sockets, only ``trio.sleep``, so thousands of channels run in
virtual time under ``MockClock(autojump_threshold=0)`` and every delay is
exact. Behaviour is a pure function of the seed: each connection draws from
its own ``random.Random`` streams, seeded with ``(seed, channel_id, attempt,
purpose)``, because trio deliberately randomises the order in which ready
tasks run, so one shared RNG would make a run depend on the scheduler.
Within one connection, sends are decided in the order they are made; an
actor sends one at a time, which keeps a run reproducible.

Per connection, three streams: ``send`` (latency and outcome of each send,
both drawn before sleeping, so the stream never depends on timing),
``inbound`` (delivery delay of injected messages and receipts) and ``link``
(time to a random disconnect). Connect decisions use a fourth stream.

Failures (:class:`FailureRates`): a connect attempt fails fatally
(AuthenticationFailed) with probability ``connect_fatal``, else transiently
with ``connect_transient``; a send fails with ``send_transient``,
``send_rate_limited`` (RateLimited with ``retry_after``) or
``send_permanent`` (PermanentSendError); an open link drops (TransientError
from ``events()``) after an exponential time with rate ``disconnect_rate``.
Inbound messages a connection did not hand to its consumer go back to the
channel's backlog when it ends, so the next connection delivers them: the
simulated platform loses nothing. Deterministic controls sit beside the
rates: :meth:`SimulatedProvider.drop`, :meth:`~SimulatedProvider.ban` and
:meth:`~SimulatedProvider.inject`.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

import attrs
import trio

from providers._nursery import open_connection_nursery
from providers.base import (
    DEFAULT_LIMITS,
    AuthenticationFailed,
    Banned,
    ChannelConfig,
    Conflict,
    DeliveryReceipt,
    Event,
    InboundMessage,
    OutboundMessage,
    PermanentSendError,
    PlatformLimits,
    ProviderError,
    RateLimited,
    ReceiptStatus,
    SendResult,
    SessionState,
    TransientError,
)
from providers.operations import (
    DeleteMessage,
    EditMessage,
    MarkRead,
    OperationKind,
    React,
    SendTyping,
)

__all__ = [
    "Exponential",
    "FailureRates",
    "Fixed",
    "Latency",
    "SentRecord",
    "SimulatedConnection",
    "SimulatedProvider",
    "SimulatedStatistics",
    "Uniform",
]

EVENT_BUFFER: Final = 1024  # events buffered per connection before delivery waits


# --- latency models -------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Fixed:
    """Always ``seconds``."""

    seconds: float = attrs.field(validator=attrs.validators.ge(0.0))

    def sample(self, rng: random.Random) -> float:
        """The delay, in seconds (draws nothing from ``rng``)."""
        return self.seconds


@attrs.frozen(kw_only=True)
class Uniform:
    """Uniformly between ``low`` and ``high`` seconds."""

    low: float = attrs.field(validator=attrs.validators.ge(0.0))
    high: float

    def __attrs_post_init__(self) -> None:
        if self.high < self.low:
            raise ValueError(f"Uniform latency needs high >= low, got {self.low}..{self.high}")

    def sample(self, rng: random.Random) -> float:
        """A delay, in seconds."""
        return rng.uniform(self.low, self.high)


@attrs.frozen(kw_only=True)
class Exponential:
    """Exponential with mean ``mean`` seconds, shifted by ``floor`` and capped at ``cap``."""

    mean: float = attrs.field(validator=attrs.validators.gt(0.0))
    floor: float = attrs.field(default=0.0, validator=attrs.validators.ge(0.0))
    cap: float = math.inf

    def sample(self, rng: random.Random) -> float:
        """A delay, in seconds."""
        return min(self.cap, self.floor + rng.expovariate(1.0 / self.mean))


Latency = Fixed | Uniform | Exponential


def _probability(instance: Any, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} is a probability in [0, 1], got {value!r}")


@attrs.frozen(kw_only=True)
class FailureRates:
    """How often the simulated platform fails, per kind.

    Attributes:
        connect_fatal: probability a connect raises AuthenticationFailed.
        connect_transient: probability a connect raises TransientError.
        send_transient: probability a send raises TransientError.
        send_rate_limited: probability a send raises RateLimited.
        send_permanent: probability a send raises PermanentSendError.
        disconnect_rate: random link drops per second of connected time.
        retry_after: the ``retry_after`` of a simulated RateLimited, in seconds.
    """

    connect_fatal: float = attrs.field(default=0.0, validator=_probability)
    connect_transient: float = attrs.field(default=0.0, validator=_probability)
    send_transient: float = attrs.field(default=0.0, validator=_probability)
    send_rate_limited: float = attrs.field(default=0.0, validator=_probability)
    send_permanent: float = attrs.field(default=0.0, validator=_probability)
    disconnect_rate: float = attrs.field(default=0.0, validator=attrs.validators.ge(0.0))
    retry_after: float = attrs.field(default=1.0, validator=attrs.validators.ge(0.0))

    def __attrs_post_init__(self) -> None:
        if self.connect_fatal + self.connect_transient > 1.0:
            raise ValueError("connect_fatal + connect_transient must not exceed 1")
        if self.send_transient + self.send_rate_limited + self.send_permanent > 1.0:
            raise ValueError("the send failure probabilities must not add up to more than 1")


# --- records ---------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class SentRecord:
    """A message the simulated platform accepted.

    Attributes:
        channel_id: the channel that sent it.
        peer: its recipient.
        idempotency_key: the sender's key.
        platform_message_id: the id the platform gave it.
        text: its text, if any.
        at: virtual time of acceptance, in seconds.
    """

    channel_id: str
    peer: str
    idempotency_key: str
    platform_message_id: str
    text: str | None
    at: float


@attrs.frozen(kw_only=True)
class SimulatedStatistics:
    """Counters of the simulated platform, at one moment."""

    open_connections: int
    connects: int
    connect_failures: int
    sends: int
    send_failures: int
    duplicates: int
    inbound: int
    drops: int


# --- the connection ---------------------------------------------------------------------------


def _rng(seed: int | str, *parts: object) -> random.Random:
    # str seeds are hashed with SHA-512 by random.Random: stable across runs and PYTHONHASHSEED
    return random.Random("/".join(str(p) for p in (seed, *parts)))


class SimulatedConnection:
    """One open simulated channel (see :class:`providers.base.Connection`)."""

    def __init__(self, provider: SimulatedProvider, config: ChannelConfig, attempt: int) -> None:
        self.channel_id = config.channel_id
        self.attempt = attempt
        self._provider = provider
        self._send_rng = _rng(provider.seed, config.channel_id, attempt, "send")
        self._inbound_rng = _rng(provider.seed, config.channel_id, attempt, "inbound")
        self._link_rng = _rng(provider.seed, config.channel_id, attempt, "link")
        self._events_in, self._events_out = trio.open_memory_channel[Event](EVENT_BUFFER)
        self._due: list[tuple[float, int, Event]] = []  # a heap of (deliver at, seq, event)
        self._seq = itertools.count()
        self._scope: trio.CancelScope | None = None
        self._failure: ProviderError | None = None
        self._closed = False
        self.delivered = 0
        self.last_message_id: str | None = None

    def __repr__(self) -> str:
        state = "CLOSED" if self._closed else "FAILED" if self._failure is not None else "OPEN"
        return (
            f"<SimulatedConnection {self.channel_id} [{state} attempt={self.attempt} "
            f"due={len(self._due)} delivered={self.delivered}]>"
        )

    # --- the Connection protocol --------------------------------------------------------------

    async def events(self) -> AsyncIterator[Event]:
        """Inbound messages and receipts until the link ends.

        Raises:
            TransientError: a simulated drop; Banned: :meth:`SimulatedProvider.ban`.
        """
        async for event in self._events_out:
            self.delivered += 1
            if isinstance(event, InboundMessage):
                self.last_message_id = event.platform_message_id
            yield event
        if self._failure is not None and not self._closed:
            raise self._failure

    async def send(self, msg: OutboundMessage) -> SendResult:
        """Send after a sampled latency; fail as the failure rates say.

        Raises:
            TransientError, RateLimited, PermanentSendError, Banned.
        """
        await self._roll(msg.idempotency_key, msg.peer)
        provider = self._provider
        result = provider._accept(self.channel_id, msg)
        if provider.receipts:
            receipt = DeliveryReceipt(
                channel_id=self.channel_id,
                platform_message_id=result.platform_message_id,
                peer=msg.peer,
                status=ReceiptStatus.DELIVERED,
                timestamp=trio.current_time(),
            )
            self._schedule(receipt)
        return result

    # The other operations take the same latency and failure rates; the
    # simulated platform keeps no messages to edit, so it acknowledges them.

    async def edit(self, op: EditMessage) -> SendResult:
        """Edit after a sampled latency; fail as the failure rates say."""
        await self._roll(op.idempotency_key, op.peer)
        return SendResult(platform_message_id=op.message_id, peer=op.peer)

    async def delete(self, op: DeleteMessage) -> None:
        """Delete after a sampled latency; fail as the failure rates say."""
        await self._roll(op.idempotency_key, op.peer)

    async def typing(self, op: SendTyping) -> None:
        """Show typing after a sampled latency; fail as the failure rates say."""
        await self._roll(op.idempotency_key, op.peer)

    async def mark_read(self, op: MarkRead) -> None:
        """Mark read after a sampled latency; fail as the failure rates say."""
        await self._roll(op.idempotency_key, op.peer)

    async def react(self, op: React) -> None:
        """React after a sampled latency; fail as the failure rates say."""
        await self._roll(op.idempotency_key, op.peer)

    async def _roll(self, key: str, peer: str) -> None:
        """Take a sampled latency, then fail as the failure rates say (or return)."""
        self._check_open(key)
        provider = self._provider
        delay = provider.latency.sample(self._send_rng)
        roll = self._send_rng.random()
        await trio.sleep(delay)
        self._check_open(key)
        f = provider.failures
        error: ProviderError | None = None
        if roll < f.send_transient:
            error = TransientError(f"simulated transient failure of {key!r}")
        elif roll < f.send_transient + f.send_rate_limited:
            error = RateLimited(
                f"simulated rate limit on {self.channel_id}", retry_after=f.retry_after
            )
        elif roll < f.send_transient + f.send_rate_limited + f.send_permanent:
            error = PermanentSendError(f"simulated permanent failure of {key!r}", peer=peer)
        if error is not None:
            provider._stats["send_failures"] += 1
            try:
                raise error
            finally:
                del error  # no cycle through this frame's traceback

    def session_state(self) -> SessionState:
        """The last delivered inbound message id."""
        data = {} if self.last_message_id is None else {"last_message_id": self.last_message_id}
        return SessionState(provider="simulated", data=data)

    async def close(self, *, resumable: bool = True) -> None:
        """End the link: ``events()`` ends quietly, sends raise TransientError."""
        self._closed = True
        self._events_in.close()
        await trio.lowlevel.checkpoint()

    # --- the simulation -----------------------------------------------------------------------

    def _check_open(self, key: str) -> None:
        if self._closed:
            raise TransientError(f"cannot send {key!r}: the connection was closed by us")
        if self._failure is not None:
            raise TransientError(f"cannot send {key!r}: the link failed ({self._failure})")

    def _schedule(self, event: Event) -> None:
        due = trio.current_time() + self._provider.latency.sample(self._inbound_rng)
        heapq.heappush(self._due, (due, next(self._seq), event))
        if self._scope is not None and due < self._scope.deadline:
            self._scope.deadline = due

    def _break(self, error: ProviderError) -> None:
        if self._failure is None and not self._closed:
            self._failure = error
            self._events_in.close()

    async def _deliver(self) -> None:
        while not (self._closed or self._failure is not None):
            with trio.CancelScope(deadline=self._due[0][0] if self._due else math.inf) as scope:
                self._scope = scope
                await trio.sleep_forever()
            self._scope = None
            now = trio.current_time()
            while self._due and self._due[0][0] <= now:
                item = heapq.heappop(self._due)
                event = item[2]
                try:
                    await self._events_in.send(event)
                except trio.ClosedResourceError:
                    heapq.heappush(self._due, item)  # undelivered: kept for the next link
                    return
                except BaseException:  # cancelled before the hand-over: keep it too
                    heapq.heappush(self._due, item)
                    raise

    def _undelivered(self) -> list[InboundMessage]:
        """Inbound messages not yet consumed, in order, for the next connection."""
        unread: list[InboundMessage] = []
        while True:
            try:
                event = self._events_out.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            if isinstance(event, InboundMessage):
                unread.append(event)
        due = [event for _, _, event in sorted(self._due) if isinstance(event, InboundMessage)]
        self._due.clear()
        return unread + due

    async def _random_drops(self, rate: float) -> None:
        await trio.sleep(self._link_rng.expovariate(rate))
        self._provider._stats["drops"] += 1
        self._break(TransientError(f"simulated link drop on {self.channel_id}; reconnect"))


# --- the provider -----------------------------------------------------------------------------


class SimulatedProvider:
    """An in-process platform with configurable latency and failures.

    Args:
        latency: delay of each send and of each inbound delivery.
        connect_latency: delay of each connect (``latency`` if None).
        failures: failure probabilities per kind.
        seed: the run's seed; equal seeds give equal runs.
        limits: the limits the platform claims.
        receipts: emit a ``delivered`` receipt after each accepted send.
        record: keep every accepted message in :attr:`sent` and deduplicate
            retries by idempotency key; both cost memory per message, so huge
            runs turn it off (and then count a retried message twice).
    """

    name = "simulated"
    operations = frozenset(OperationKind)

    def __init__(
        self,
        *,
        latency: Latency = Fixed(seconds=0.0),
        connect_latency: Latency | None = None,
        failures: FailureRates = FailureRates(),
        seed: int | str = 0,
        limits: PlatformLimits = DEFAULT_LIMITS,
        receipts: bool = True,
        record: bool = True,
    ) -> None:
        self.latency = latency
        self.connect_latency = latency if connect_latency is None else connect_latency
        self.failures = failures
        self.seed = seed
        self.limits = limits
        self.receipts = receipts
        self.record = record
        self.sent: list[SentRecord] = []
        self.banned: set[str] = set()
        self._open: dict[str, SimulatedConnection] = {}
        self._attempts: Counter[str] = Counter()
        self._accepted: dict[tuple[str, str], SendResult] = {}
        self._backlog: defaultdict[str, list[InboundMessage]] = defaultdict(list)
        self._stats: Counter[str] = Counter()
        self._inbound_ids: Counter[str] = Counter()  # per channel: ids never depend on
        self._outbound_ids: Counter[str] = Counter()  # the order trio runs channels in

    def __repr__(self) -> str:
        return (
            f"<SimulatedProvider seed={self.seed!r} open={len(self._open)} "
            f"sent={self._stats['sends']}>"
        )

    @asynccontextmanager
    async def open_connection(
        self, config: ChannelConfig, session: SessionState | None = None
    ) -> AsyncIterator[SimulatedConnection]:
        """Connect after ``connect_latency``, failing as the failure rates say.

        Raises:
            TransientError: a simulated transient connect failure.
            AuthenticationFailed: a simulated fatal connect failure.
            Banned: the channel was banned with :meth:`ban`.
            Conflict: the channel already has an open connection.
        """
        channel = config.channel_id
        self._attempts[channel] += 1
        attempt = self._attempts[channel]
        rng = _rng(self.seed, channel, attempt, "connect")
        delay = self.connect_latency.sample(rng)
        roll = rng.random()
        await trio.sleep(delay)
        error: ProviderError | None = None
        if channel in self.banned:
            error = Banned(f"simulated platform: channel {channel} is banned; do not reconnect")
        elif channel in self._open:
            error = Conflict(f"simulated platform: channel {channel} is already connected")
        elif roll < self.failures.connect_fatal:
            error = AuthenticationFailed(f"simulated: credentials of {channel} refused")
        elif roll < self.failures.connect_fatal + self.failures.connect_transient:
            error = TransientError(f"simulated transient connect failure of {channel}; retry")
        if error is not None:
            self._stats["connect_failures"] += 1
            try:
                raise error
            finally:
                del error  # no cycle through this frame's traceback
        conn = SimulatedConnection(self, config, attempt)
        self._open[channel] = conn
        self._stats["connects"] += 1
        for message in self._backlog.pop(channel, []):
            conn._schedule(message)
        try:
            async with open_connection_nursery() as nursery:
                nursery.start_soon(conn._deliver)
                if self.failures.disconnect_rate > 0:
                    nursery.start_soon(conn._random_drops, self.failures.disconnect_rate)
                try:
                    yield conn
                finally:
                    conn._closed = True
                    conn._events_in.close()
                    nursery.cancel_scope.cancel()
        finally:
            del self._open[channel]
            self._backlog[channel].extend(conn._undelivered())

    # --- control -------------------------------------------------------------------------------

    def inject(
        self, channel_id: str, text: str, *, peer: str = "user-1", sender: str | None = None
    ) -> str:
        """A user writes to ``channel_id``; returns the platform message id.

        Delivered after a sampled latency if the channel is connected, else on
        its next connection.
        """
        message = InboundMessage(
            channel_id=channel_id,
            platform_message_id=f"{channel_id}:in-{self._next_id(self._inbound_ids, channel_id)}",
            peer=peer,
            sender=sender or peer,
            text=text,
            timestamp=trio.current_time(),
        )
        self._stats["inbound"] += 1
        conn = self._open.get(channel_id)
        if conn is None:
            self._backlog[channel_id].append(message)
        else:
            conn._schedule(message)
        return message.platform_message_id

    def drop(self, channel_id: str) -> bool:
        """Break the channel's link now (TransientError); False if it was not open."""
        conn = self._open.get(channel_id)
        if conn is None:
            return False
        self._stats["drops"] += 1
        conn._break(TransientError(f"simulated link drop on {channel_id}; reconnect"))
        return True

    def ban(self, channel_id: str) -> None:
        """Ban the channel: its link breaks with Banned and it can never connect again."""
        self.banned.add(channel_id)
        conn = self._open.get(channel_id)
        if conn is not None:
            conn._break(Banned(f"simulated platform banned channel {channel_id}"))

    def connection(self, channel_id: str) -> SimulatedConnection | None:
        """The channel's open connection, if any."""
        return self._open.get(channel_id)

    def statistics(self) -> SimulatedStatistics:
        """A snapshot of the counters."""
        s = self._stats
        return SimulatedStatistics(
            open_connections=len(self._open),
            connects=s["connects"],
            connect_failures=s["connect_failures"],
            sends=s["sends"],
            send_failures=s["send_failures"],
            duplicates=s["duplicates"],
            inbound=s["inbound"],
            drops=s["drops"],
        )

    @staticmethod
    def _next_id(counter: Counter[str], channel_id: str) -> int:
        counter[channel_id] += 1
        return counter[channel_id]

    def _accept(self, channel_id: str, msg: OutboundMessage) -> SendResult:
        key = (channel_id, msg.idempotency_key)
        previous = self._accepted.get(key)
        if previous is not None:
            self._stats["duplicates"] += 1
            return previous
        number = self._next_id(self._outbound_ids, channel_id)
        result = SendResult(platform_message_id=f"{channel_id}:out-{number}", peer=msg.peer)
        self._stats["sends"] += 1
        if self.record:
            self._accepted[key] = result
            self.sent.append(
                SentRecord(
                    channel_id=channel_id,
                    peer=msg.peer,
                    idempotency_key=msg.idempotency_key,
                    platform_message_id=result.platform_message_id,
                    text=msg.text,
                    at=trio.current_time(),
                )
            )
        return result
