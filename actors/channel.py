"""ChannelActor: one long-lived connection to a chat platform, as an actor.

Design:
- The connection runs in a task the actor owns: connect, read events until
  the link ends, then decide by the error's class alone: ``RateLimited``
  waits exactly ``retry_after`` (not a failure), ``TransientError`` backs
  off with full jitter (the count resets once a connection has been stable
  for ``stable_after``), ``FatalError`` marks the channel FAILED and never
  reconnects (a ban must not be hammered). A link that delivers nothing for
  ``liveness_timeout`` is treated as dead.
- Sends are messages, handled one at a time in order: length check → rate
  limiters (per channel and per peer) → circuit breaker → wait for a live
  connection → provider send → the ``SendResult`` back to the asker.
  Transient failures retry with backoff, reusing the idempotency key;
  permanent ones and exhausted retries go to the dead-letter queue.
- Inbound events are deduplicated by platform id, published to
  subscribers (never blocking: a full subscriber loses events, counted) and
  handed to the sink in batches.
- Everything that must survive a crash lives in a ``ChannelMemory`` the
  factory closes over (see ``actors.channel_state``).
- At most :data:`CONNECTS_IN_FLIGHT` handshakes per provider run at once in
  a node (a trio run); the others wait their turn, still CONNECTING, and
  their connect timeout starts when their turn comes. Ten thousand channels
  starting together, or coming back after a platform dropped them all, would
  otherwise start ten thousand handshakes at once: the event loop then
  serves each so slowly that most time out and retry, which multiplies the
  work (measured: 6,630 wasted attempts for a storm of 10,000), and every
  connected channel's sends stall meanwhile.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol

import attrs
import trio
from trio.lowlevel import RunVar

from providers.base import (
    ChannelConfig,
    Connection,
    DeliveryReceipt,
    Event,
    FatalError,
    InboundMessage,
    MessageEdited,
    MessageTooLong,
    OutboundMessage,
    PermanentSendError,
    Provider,
    ProviderError,
    RateLimited,
    RateLimitScope,
    SendResult,
    TransientError,
)

from .actor import Actor, Exit
from .channel_state import (
    ChannelMemory,
    ChannelSettings,
    ChannelStatistics,
    ChannelStatus,
    OutboundDeadLetter,
)
from .errors import (
    ChannelFailed,
    ChannelUnavailable,
    CircuitOpen,
    RetriesExhausted,
    SendFailed,
)
from .ref import ActorRef

__all__ = [
    "ChannelActor",
    "ChannelRef",
    "ChannelStateChanged",
    "InboundSink",
    "MemoryInboundSink",
    "ReplayDeadLetters",
    "Send",
    "channel_statistics",
]

log = logging.getLogger("switchboard.channels")

CLOSE_GRACE = 2.0  # seconds for a resumable close when the actor stops
CONNECTS_IN_FLIGHT: Final = 64  # handshakes at once, per provider, per node

_CONNECT_GATES: Final[RunVar[dict[str, trio.CapacityLimiter]]] = RunVar("connect_gates")


def _connect_gate(provider: str) -> trio.CapacityLimiter:
    """The run's limiter of concurrent handshakes with ``provider``.

    One per provider, so that a platform whose handshakes hang does not hold
    up the channels of the others.
    """
    try:
        gates = _CONNECT_GATES.get()
    except LookupError:
        gates = {}
        _CONNECT_GATES.set(gates)
    gate = gates.get(provider)
    if gate is None:
        gate = gates[provider] = trio.CapacityLimiter(CONNECTS_IN_FLIGHT)
    return gate


@attrs.frozen(kw_only=True)
class ChannelStateChanged:
    """Published to subscribers whenever the channel's status changes.

    Attributes:
        channel_id: the channel.
        status: the new status.
        previous: the status before.
        reason: why (the error, as text), if any.
        attempt: consecutive reconnect failures so far.
        delay: seconds until the next connect, when backing off.
    """

    channel_id: str
    status: ChannelStatus
    previous: ChannelStatus
    reason: str | None = None
    attempt: int = 0
    delay: float | None = None


@attrs.frozen
class Send:
    """Ask a channel to send ``message``; the reply is its ``SendResult``."""

    message: OutboundMessage


@attrs.frozen
class ReplayDeadLetters:
    """Resend dead letters (all, or the given ids); the reply is how many."""

    ids: tuple[int, ...] | None = None


@attrs.frozen
class _ListDeadLetters:
    pass


@attrs.frozen
class _Refused:
    error: BaseException


class InboundSink(Protocol):
    """Where a channel hands its inbound events (the node's store)."""

    async def save_inbound(self, events: Sequence[Event]) -> None:
        """Persist a batch of inbound events."""
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


class ChannelActor(Actor):
    """The connection actor of one channel.

    Create it through :meth:`factory`, which makes the crash-surviving
    memory once and hands it to every incarnation.
    """

    # A node runs ten thousand of these: no per-instance __dict__.
    __slots__ = (
        "_conn",
        "_connected",
        "_connection_scope",
        "_failure",
        "_flush_scheduled",
        "_stopping",
        "config",
        "memory",
        "provider",
        "settings",
        "sink",
    )

    def __init__(
        self,
        config: ChannelConfig,
        provider: Provider,
        memory: ChannelMemory,
        settings: ChannelSettings,
        sink: InboundSink | None = None,
    ) -> None:
        self.config = config
        self.provider = provider
        self.memory = memory
        self.settings = settings
        self.sink = sink
        self._conn: Connection | None = None
        self._connected: trio.Event | None = None  # made by a send that waits for a link
        self._failure: BaseException | None = None
        self._connection_scope: trio.CancelScope | None = None
        self._stopping = False
        self._flush_scheduled = False

    @classmethod
    def factory(
        cls,
        config: ChannelConfig,
        provider: Provider,
        *,
        settings: ChannelSettings | None = None,
        sink: InboundSink | None = None,
        memory: ChannelMemory | None = None,
    ) -> tuple[Callable[[], ChannelActor], ChannelMemory]:
        """A start factory for a supervisor child spec, and the memory it shares.

        Returns:
            ``(factory, memory)``: call ``factory()`` for each incarnation.
        """
        settings = settings or ChannelSettings()
        shared = memory or ChannelMemory(provider.limits, settings)

        def start() -> ChannelActor:
            return cls(config, provider, shared, settings, sink)

        start.__name__ = cls.__name__
        return start, shared

    @property
    def _log(self) -> logging.LoggerAdapter[logging.Logger]:
        # Made when a line is logged, which is rare, rather than kept by each
        # of ten thousand channels.
        config = self.config
        context = {"channel": config.channel_id, "tenant": config.tenant}
        return logging.LoggerAdapter(log, {**context, "provider": self.provider.name})

    def __repr__(self) -> str:
        memory = self.memory
        extra = ""
        if memory.status is ChannelStatus.BACKING_OFF:
            extra = f" attempt={memory.backoff.failures}"
        elif memory.status is ChannelStatus.FAILED and memory.last_error:
            extra = f" {memory.last_error}"
        return (
            f"<ChannelActor {self.provider.name}:{self.config.channel_id} "
            f"[{memory.status.name}{extra}]>"
        )

    # --- lifecycle ------------------------------------------------------------------

    async def on_start(self) -> None:
        self.memory.incarnations += 1
        self.memory.current_ref = self.ref
        if self.memory.status is ChannelStatus.FAILED:
            # A failed channel stays failed across restarts; only an
            # operator's explicit action (a new memory) revives it.
            return
        self.start_task(self._run_connection)
        if self.memory.pending:  # left by a crashed incarnation
            self._schedule_flush()

    async def on_stopping(self, exit: Exit) -> None:
        # Close while the provider's own tasks still run, so the close
        # handshake completes (Discord: 4000, which keeps the session).
        self._stopping = True  # the connection loop must not reconnect now
        conn = self._conn
        if conn is not None:
            self._conn = None
            self.memory.session = conn.session_state()
            with trio.move_on_after(CLOSE_GRACE):
                await conn.close(resumable=True)
        if self._connection_scope is not None:
            self._connection_scope.cancel()

    async def on_stop(self, exit: Exit) -> None:
        await self._flush()
        if self.memory.status is not ChannelStatus.FAILED:
            self._set_status(ChannelStatus.STOPPED, reason=str(exit))

    def status(self) -> dict[str, Any]:
        return attrs.asdict(self.statistics(), recurse=False)

    def statistics(self) -> ChannelStatistics:
        return channel_statistics(self.config.channel_id, self.provider.name, self.memory)

    # --- status and events ----------------------------------------------------------------

    def _set_status(
        self,
        status: ChannelStatus,
        *,
        reason: str | None = None,
        delay: float | None = None,
    ) -> None:
        memory = self.memory
        previous = memory.status
        memory.status = status
        if reason is not None and status in (ChannelStatus.BACKING_OFF, ChannelStatus.FAILED):
            memory.last_error = reason
        memory.connected_since = trio.current_time() if status is ChannelStatus.CONNECTED else None
        if status is ChannelStatus.CONNECTED and previous is not status:
            self._log.info("%r: connected", self)
        if previous is not status or status is ChannelStatus.BACKING_OFF:
            self._publish(
                ChannelStateChanged(
                    channel_id=self.config.channel_id,
                    status=status,
                    previous=previous,
                    reason=reason,
                    attempt=memory.backoff.failures,
                    delay=delay,
                )
            )

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

    # --- the connection task ------------------------------------------------------------------

    async def _run_connection(self) -> None:
        memory = self.memory
        with trio.CancelScope() as self._connection_scope:
            while not self._stopping:
                self._set_status(ChannelStatus.CONNECTING)
                wait: float
                try:
                    wait, reason = await self._connect_once()
                except (FatalError, RetriesExhausted) as exc:
                    self._fail(exc)
                    return
                if self._stopping:
                    return
                memory.counters["reconnects"] += 1
                self._set_status(ChannelStatus.BACKING_OFF, reason=reason, delay=wait)
                self._log.info("%r: %s; reconnecting in %.3f s", self, reason, wait)
                await trio.sleep(wait)

    async def _connect_once(self) -> tuple[float, str]:
        """One connection's life. Returns (seconds to wait, why) when it ends.

        Raises:
            FatalError: the platform refuses us for good.
            RetriesExhausted: too many consecutive failed connects.
        """
        memory = self.memory
        gate = _connect_gate(self.provider.name)
        await gate.acquire()
        handshaking = True
        try:
            async with self.provider.open_connection(self.config, memory.session) as conn:
                gate.release()  # connected: the next channel may start its handshake
                handshaking = False
                self._conn = conn
                memory.backoff.connected(trio.current_time())
                self._set_status(ChannelStatus.CONNECTED)
                self._wake_senders()
                try:
                    await self._read(conn)
                    error: ProviderError = TransientError("the platform closed the connection")
                except TransientError as exc:
                    error = exc
                finally:
                    self._conn = None
                    memory.session = conn.session_state()
                    with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_GRACE):
                        await conn.close(resumable=True)
        except RateLimited as exc:
            memory.counters["rate_limit_waits"] += 1
            return exc.retry_after, f"rate limited by the platform: {exc}"
        except FatalError:
            raise
        except ProviderError as exc:
            error = exc
        finally:
            if handshaking:
                gate.release()
        delay = memory.backoff.failure(trio.current_time())
        return delay, f"{type(error).__name__}: {error}"

    async def _read(self, conn: Connection) -> None:
        """Handle events until the connection ends (returns) or breaks (raises)."""
        liveness = self.settings.liveness_timeout
        events = conn.events().__aiter__()
        while True:
            if liveness is None:  # no cancel scope per event when there is no timeout
                try:
                    event = await anext(events)
                except StopAsyncIteration:
                    return
            else:
                with trio.move_on_after(liveness) as scope:
                    try:
                        event = await anext(events)
                    except StopAsyncIteration:
                        return
                if scope.cancelled_caught:
                    raise TransientError(
                        f"no event for {liveness} s (liveness timeout): "
                        "treating the connection as dead"
                    )
            self._on_event(event)
            self.memory.session = conn.session_state()
            if len(self.memory.pending) >= self.settings.inbound_batch:
                await self._flush()

    def _on_event(self, event: Event) -> None:
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
            self._schedule_flush()
        elif isinstance(event, DeliveryReceipt):
            memory.pending.append(event)
            self._schedule_flush()
        self._publish(event)

    async def _flush(self) -> None:
        memory = self.memory
        if not memory.pending or self.sink is None:
            memory.pending.clear()
            return
        batch, memory.pending = memory.pending, []
        try:
            await self.sink.save_inbound(batch)
        except BaseException:
            memory.pending[:0] = batch  # keep them for the next flush
            raise

    def _schedule_flush(self) -> None:
        """Make sure pending inbound events reach the sink within ``inbound_flush``.

        A flusher task exists only while events wait: an idle channel costs
        no task and no wake-up (ten thousand channels woken twice a second
        would keep a core busy for nothing).
        """
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.start_task(self._flush_later)

    async def _flush_later(self) -> None:
        failing = False
        try:
            while self.memory.pending:
                await trio.sleep(self.settings.inbound_flush)
                try:
                    await self._flush()
                except Exception as exc:
                    # The sink (the store) is down: the batch stays pending and is
                    # retried next time; the channel keeps running.
                    self.memory.counters["sink_failures"] += 1
                    if not failing:
                        self._log.warning(
                            "%r: the sink refused %d inbound event(s), kept for retry: %s",
                            self,
                            len(self.memory.pending),
                            exc,
                        )
                    failing = True
                else:
                    if failing:
                        self._log.info("%r: the sink takes inbound events again", self)
                    failing = False
        finally:
            self._flush_scheduled = False

    def _fail(self, error: BaseException) -> None:
        if self.memory.status is ChannelStatus.FAILED:
            return
        if self._connection_scope is not None:
            # Found by a send: the connection task must stop calling the platform too.
            self._connection_scope.cancel()
        self._failure = error
        self._log.error("%r failed for good: %s", self, error)
        self._set_status(ChannelStatus.FAILED, reason=f"{type(error).__name__}: {error}")
        self._wake_senders()  # so that they see the failure

    # --- requests -------------------------------------------------------------------------------

    async def receive(self, msg: Any) -> Any:
        if type(msg) is Send:
            try:
                return await self._send(msg.message)
            except (ChannelFailed, ChannelUnavailable, SendFailed, PermanentSendError) as exc:
                return _Refused(exc)
        if type(msg) is _ListDeadLetters:
            return self.memory.dead_letters.letters()
        if type(msg) is ReplayDeadLetters:
            letters = self.memory.dead_letters.take(None if msg.ids is None else list(msg.ids))
            for letter in letters:
                self.ref.tell(Send(letter.message))
            return len(letters)
        raise TypeError(f"{self!r} got an unknown message {msg!r}")

    def _check(self, message: OutboundMessage) -> None:
        limit = self.memory.limits.max_text_length
        for field, text in (("text", message.text), ("caption", _caption(message))):
            if text is not None and len(text) > limit:
                raise MessageTooLong(
                    f"{field} of {len(text)} characters exceeds {self.provider.name}'s limit "
                    f"of {limit} on channel {self.config.channel_id!r}; split the message",
                    peer=message.peer,
                )

    async def _send(self, message: OutboundMessage) -> SendResult:
        self._check(message)
        memory = self.memory
        attempts = 0
        while True:
            self._raise_if_failed()
            now = trio.current_time()
            delay = memory.limiter.delay(now, key=message.peer)
            if delay > 0:
                memory.counters["rate_limit_waits"] += 1
                await trio.sleep(delay)
                continue
            try:
                memory.breaker.allow(now)
            except CircuitOpen as exc:
                await trio.sleep_until(exc.retry_at)
                continue
            conn = await self._live_connection()
            if not memory.limiter.try_acquire(trio.current_time(), key=message.peer):
                memory.breaker.record_success(trio.current_time())  # release a trial slot
                continue
            attempts += 1
            try:
                result = await conn.send(message)
            except RateLimited as exc:
                # Not a failure; the limiter wait it causes is counted below.
                memory.breaker.record_success(trio.current_time())
                until = trio.current_time() + exc.retry_after
                if exc.scope is RateLimitScope.PEER:
                    memory.limiter.pause_until(until, key=exc.peer or message.peer)
                else:
                    memory.limiter.pause_until(until)
                continue
            except PermanentSendError as exc:
                memory.breaker.record_success(trio.current_time())
                memory.counters["send_failures"] += 1
                memory.dead_letters.add(message, exc, attempts)
                raise
            except FatalError as exc:
                memory.dead_letters.add(message, exc, attempts)
                self._fail(exc)
                raise ChannelFailed(
                    f"channel {self.config.channel_id!r} failed while sending: {exc}",
                    channel_id=self.config.channel_id,
                ) from exc
            except ProviderError as exc:
                memory.breaker.record_failure(trio.current_time())
                memory.counters["send_failures"] += 1
                if attempts >= self.settings.send_attempts:
                    memory.dead_letters.add(message, exc, attempts)
                    raise SendFailed(
                        f"giving up on {message.idempotency_key!r} to {message.peer!r} after "
                        f"{attempts} attempts ({type(exc).__name__}: {exc}); it is in the "
                        "dead-letter queue",
                        channel_id=self.config.channel_id,
                    ) from exc
                await trio.sleep(self.settings.send_backoff.compute(attempts, rng=memory.rng))
                continue
            memory.breaker.record_success(trio.current_time())
            memory.counters["sent"] += 1
            return result

    def _wake_senders(self) -> None:
        if self._connected is not None:
            self._connected.set()
            self._connected = None

    def _raise_if_failed(self) -> None:
        if self.memory.status is ChannelStatus.FAILED:
            raise ChannelFailed(
                f"channel {self.config.channel_id!r} has failed ({self.memory.last_error}) "
                "and does not reconnect; fix the cause and restart it",
                channel_id=self.config.channel_id,
            ) from self._failure

    async def _live_connection(self) -> Connection:
        if self._conn is not None:  # the common case needs no cancel scope
            return self._conn
        wait = self.settings.connect_wait
        with trio.move_on_after(wait):
            while self._conn is None:
                self._raise_if_failed()
                if self._connected is None:
                    self._connected = trio.Event()
                await self._connected.wait()
            return self._conn
        raise ChannelUnavailable(
            f"channel {self.config.channel_id!r} is {self.memory.status.value} and did not "
            f"connect within {wait} s (last error: {self.memory.last_error})",
            channel_id=self.config.channel_id,
        )


def channel_statistics(channel_id: str, provider: str, memory: ChannelMemory) -> ChannelStatistics:
    """A snapshot of a channel, from its memory (valid between incarnations too)."""
    counters = memory.counters
    return ChannelStatistics(
        channel_id=channel_id,
        provider=provider,
        status=memory.status,
        reconnect_attempt=memory.backoff.failures,
        connected_since=memory.connected_since,
        sent=counters["sent"],
        send_failures=counters["send_failures"],
        received=counters["received"],
        duplicates=counters["duplicates"],
        reconnects=counters["reconnects"],
        rate_limit_waits=counters["rate_limit_waits"],
        dead_letters=len(memory.dead_letters),
        subscriber_drops=counters["subscriber_drops"],
        restarts=max(0, memory.incarnations - 1),
        last_error=memory.last_error,
    )


def _caption(message: OutboundMessage) -> str | None:
    return message.media.caption if message.media is not None else None


class ChannelRef:
    """The handle a product uses to talk to one channel."""

    def __init__(
        self, ref: ActorRef, memory: ChannelMemory, channel_id: str, provider_name: str
    ) -> None:
        self._ref = ref
        self.memory = memory
        self.channel_id = channel_id
        self.provider_name = provider_name

    @property
    def ref(self) -> ActorRef:
        """The channel actor's ref; follows it if its supervisor started it anew."""
        current: ActorRef | None = self.memory.current_ref
        return current if current is not None else self._ref

    def __repr__(self) -> str:
        return f"<ChannelRef {self.channel_id} [{self.memory.status.name}]>"

    async def send(self, message: OutboundMessage, *, timeout: float = 60.0) -> SendResult:  # noqa: ASYNC109
        """Send and return once the platform accepted the message.

        Raises:
            MessageTooLong, BadRecipient, OutsideWindow (PermanentSendError):
                the platform will never take it (dead-lettered, except a
                too-long text, which is refused before sending).
            SendFailed: transient failures outlasted the retries (dead-lettered).
            ChannelFailed: the channel stopped for good.
            ChannelUnavailable: it did not connect in time.
            AskTimeout: no answer within ``timeout``.
        """
        result = await self.ref.ask(Send(message), timeout=timeout)
        if isinstance(result, _Refused):
            raise result.error
        assert isinstance(result, SendResult)
        return result

    def subscribe(
        self, *, buffer: int | None = None, accepts: Callable[[Any], bool] | None = None
    ) -> trio.MemoryReceiveChannel[Any]:
        """Inbound events, receipts and state changes, as a trio receive channel.

        A subscriber that falls ``buffer`` events behind loses the newest
        ones (counted in statistics); the channel never waits for it. Close
        the receive channel to unsubscribe.
        """
        size = buffer if buffer is not None else 1_000
        send, receive = trio.open_memory_channel[Any](size)
        self.memory.subscribers.append((send, accepts))
        return receive

    async def dead_letters(self) -> list[OutboundDeadLetter]:
        """The messages this channel gave up on, oldest first."""
        letters: list[OutboundDeadLetter] = await self.ref.ask(_ListDeadLetters())
        return letters

    async def replay_dead_letters(self, ids: Sequence[int] | None = None) -> int:
        """Send dead letters again (all, or the given ids); returns how many."""
        count: int = await self.ref.ask(ReplayDeadLetters(None if ids is None else tuple(ids)))
        return count

    @property
    def connection(self) -> Connection | None:
        """The live provider connection, or ``None`` while not connected.

        For code that must hand the connection platform input from outside,
        such as an HTTP server routing a WhatsApp or Telegram webhook to it.
        """
        inst = self.ref._instance
        return inst._conn if isinstance(inst, ChannelActor) else None

    def statistics(self) -> ChannelStatistics:
        """A snapshot of the channel; valid while it restarts, too."""
        return channel_statistics(self.channel_id, self.provider_name, self.memory)
