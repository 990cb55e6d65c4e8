"""The connection loop: connect, read until the link ends, decide, reconnect.

Design:
- The loop runs in a task the actor owns: connect, read events until the
  link ends, then decide by the error's class alone: ``RateLimited`` waits
  exactly ``retry_after`` (not a failure), ``TransientError`` backs off with
  full jitter (the count resets once a connection has been stable for
  ``reset_after``; one with a ``retry_after``, a 503's, waits at least
  that), ``FatalError`` marks the channel FAILED and never reconnects (a ban
  must not be hammered). A connect refused with a rate
  limit again, with no link between that stayed up ``reset_after``, waits
  at least the reconnect backoff's delay for as many refusals: a platform that keeps answering 429
  with no wait is not reconnected to at once, for ever. A link that
  delivers nothing for ``liveness_timeout`` is treated as dead. A task of
  the actor watches it (:class:`_Liveness`) and cancels the reader's wait
  once that long passed with no event: cancelled, the provider's async
  iterator of events is closed, so the watch first looks whether it fires
  late (more than ``LATE_TIMER`` after the deadline: the node's own loop
  was busy, and what the peer sent meanwhile may sit unread in the socket)
  and then gives the link as long again as the loop looked away, once, as
  the providers' cores do with their own timers.
- At most :data:`CONNECTS_IN_FLIGHT` handshakes per provider run at once in
  a node (a trio run); the others wait their turn, still CONNECTING, and
  their connect timeout starts when their turn comes. Ten thousand channels
  starting together, or coming back after a platform dropped them all, would
  otherwise start ten thousand handshakes at once: the event loop then
  serves each so slowly that most time out and retry, which multiplies the
  work (measured: 6,630 wasted attempts for a storm of 10,000), and every
  connected channel's sends stall meanwhile. A connect that holds a slot has
  a total deadline (``settings.connect_timeout``) whatever the provider's
  own timeouts, so platforms that drip their answers cannot hold the gate.
- Sends wait here for a live link (``_live_connection``), up to
  ``connect_wait``; a channel that failed for good refuses them at once.
  A link past the channel's tenure is no live link, even before trio has
  cancelled it: a node thawed after its lease ran out wakes its sends and
  its connection together, in either order.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any, Final

import trio
from trio.lowlevel import RunVar

from providers.base import (
    LATE_TIMER,
    Connection,
    Event,
    FatalError,
    ProviderError,
    RateLimited,
    TransientError,
)

from ..errors import ChannelFailed, ChannelUnavailable, RetriesExhausted
from .state import ChannelStatus

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from providers.base import ChannelConfig, Provider

    from .state import ChannelMemory, ChannelSettings
    from .tenure import Tenure

__all__ = ["CLOSE_GRACE", "CONNECTS_IN_FLIGHT", "ConnectionLoop"]

CLOSE_GRACE: Final = 2.0  # seconds for a resumable close when the actor stops
CONNECTS_IN_FLIGHT: Final = 64  # handshakes at once, per provider, per node

_CONNECT_GATES: Final[RunVar[dict[str, trio.CapacityLimiter]]] = RunVar("connect_gates")


def connect_gate(provider: str) -> trio.CapacityLimiter:
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


class ConnectionLoop:
    """The connection half of a :class:`~actors.ChannelActor` (a mixin).

    It owns the actor's ``_conn``, ``_connected`` and ``_connection_scope``,
    and relies on the actor for ``_set_status``, ``_fail``, ``_log`` and the
    inbound half's ``_on_event``.
    """

    # Empty slots, so the actor keeps no __dict__; hidden from mypy, which
    # would otherwise refuse the actor's own slots assigned here.
    if not TYPE_CHECKING:
        __slots__ = ()

    config: ChannelConfig
    provider: Provider
    memory: ChannelMemory
    settings: ChannelSettings
    _conn: Connection | None
    _connected: trio.Event | None
    _connection_scope: trio.CancelScope | None
    _failure: BaseException | None
    _rate_limited: int
    _stopping: bool

    if TYPE_CHECKING:

        @property
        def _log(self) -> logging.LoggerAdapter[logging.Logger]: ...

        def _set_status(
            self, status: ChannelStatus, *, reason: str | None = None, delay: float | None = None
        ) -> None: ...

        def _fail(self, error: BaseException) -> None: ...

        async def _on_event(self, event: Event) -> None: ...

        def _event_at_once(self, event: Event) -> bool: ...

        async def _calls_answered(self) -> None: ...

        def start_task(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None: ...

    async def _run_connection(self) -> None:
        memory = self.memory
        while not self._stopping and memory.status is not ChannelStatus.FAILED:
            self._set_status(ChannelStatus.CONNECTING)
            wait: float
            try:
                tenure = memory.tenure
                if tenure is None:  # straight in: no frame kept for the connection's life
                    wait, reason = await self._connect_held(None)
                else:
                    wait, reason = await self._connect_in_tenure(tenure)
            except (FatalError, RetriesExhausted) as exc:
                self._fail(exc)
                return
            if self._stopping or memory.status is ChannelStatus.FAILED:
                return  # stopped, or failed by a send, while it connected
            memory.counters["reconnects"] += 1
            self._set_status(ChannelStatus.BACKING_OFF, reason=reason, delay=wait)
            self._log.info(
                "%r: %s; reconnecting in %.3f s",
                self,
                reason,
                wait,
                extra={
                    "switchboard.attempt": memory.backoff.failures,
                    "switchboard.delay_s": round(wait, 6),
                    # "Name: text" names the error's class; other reasons do not.
                    **(
                        {"error.type": name}
                        if (name := reason.partition(":")[0]).isidentifier()
                        else {}
                    ),
                },
            )
            with trio.move_on_after(wait) as self._connection_scope:
                await trio.sleep_forever()
            self._connection_scope = None

    async def _connect_in_tenure(self, tenure: Tenure) -> tuple[float, str]:
        """One connection's life inside the channel's tenure (its lease, in a cluster).

        It is cancelled at the tenure's deadline, and then dropped without a
        goodbye, since by then another node may take over.

        Raises:
            FatalError: the platform refuses us for good.
            RetriesExhausted: too many consecutive failed connects.
        """
        if not tenure.valid():
            with trio.CancelScope() as self._connection_scope:
                await tenure.wait_valid()
            self._connection_scope = None
            if self._stopping or self.memory.status is ChannelStatus.FAILED:
                return 0.0, "stopped while it waited for its tenure"
        with tenure.hold() as held:
            return await self._connect_held(held)
        return 0.0, "the lease lapsed: the connection was dropped before it could expire"

    async def _connect_held(self, held: trio.CancelScope | None) -> tuple[float, str]:
        """One connection's life: connect, read until the link ends.

        Returns (seconds to wait, why) when it ends.

        One cancel scope for the whole attempt: what a stop or a failure found
        by a send cancels (``_connection_scope``), and, from the turn at the
        gate until connected, the connect's total deadline. It wraps the whole
        block: one around the entry alone would close inside the provider's
        nursery.

        Raises:
            FatalError: the platform refuses us for good.
            RetriesExhausted: too many consecutive failed connects.
        """
        memory = self.memory
        gate = connect_gate(self.provider.name)
        handshaking = False  # holds a turn at the gate
        timeout = self.settings.connect_timeout
        attempt = self._connection_scope = trio.CancelScope()
        linked_at: float | None = None  # when the link opened, if it did
        least = 0.0  # the platform's least wait before the next attempt (a 503's)
        try:
            with attempt:
                await gate.acquire()
                handshaking = True
                began = trio.current_time()
                if timeout is not None:
                    attempt.deadline = began + timeout
                async with self.provider.open_connection(self.config, memory.session) as conn:
                    attempt.deadline = math.inf
                    gate.release()  # connected: the next channel may start its handshake
                    handshaking = False
                    if memory.timings is not None:
                        memory.timings.connected(trio.current_time() - began)
                    self._set_link(conn)
                    linked_at = trio.current_time()
                    memory.backoff.connected(linked_at)
                    memory.touch()
                    self._set_status(ChannelStatus.CONNECTED)
                    self._wake_senders()
                    # Why it ended, as text: an error kept in a local would hold its
                    # traceback, which holds this frame (a cycle per reconnect).
                    try:
                        await self._read(conn)
                        why = _why(TransientError("the platform closed the connection"))
                    except TransientError as exc:
                        why, least = _why(exc), _least_wait(exc)
                    finally:
                        self._set_link(None)
                        memory.session = conn.session_state()
                        if held is None or not held.cancel_called:  # no goodbye past the tenure
                            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_GRACE):
                                await conn.close(resumable=True)
                                if getattr(conn, "answers_after_close", False):
                                    # The sends on their way get their answers before
                                    # the block's end closes the provider's client under
                                    # them (cut off, one the platform took went again).
                                    await self._calls_answered()
            if attempt.cancelled_caught:
                if self._stopping or memory.status is ChannelStatus.FAILED:
                    return 0.0, "stopped"  # cancelled by the stop or the failure: no attempt
                why = _why(
                    TransientError(
                        f"the platform did not complete the connect within {timeout} s "
                        "(the connect's total deadline); retry with backoff"
                    )
                )
        except RateLimited as exc:
            memory.counters["rate_limit_waits"] += 1
            # Providers keep their waits sane; should one not, a negative wait makes
            # move_on_after raise (an actor crash per attempt): it is clamped, and a
            # NaN or infinite one (no wait at all, or never reconnect) backs off.
            if linked_at is not None and (
                trio.current_time() - linked_at >= memory.backoff.reset_after
            ):
                # A link that stayed up (as long as resets the reconnect count): this
                # refusal is the first of a new run. One refused soon after it opened
                # (Telegram's getMe passes, its first poll gets the 429) is not.
                self._rate_limited = 0
            self._rate_limited += 1
            if math.isfinite(exc.retry_after):
                # Not capped: Discord's session starts come back after up to a day.
                wait = max(0.0, exc.retry_after)
                if self._rate_limited > 1:
                    # Refused so before: a platform that keeps asking for (next to) no
                    # wait is not hammered; the reconnect backoff's delay at least.
                    floor = memory.backoff.policy.compute(self._rate_limited - 1, rng=memory.rng)
                    wait = max(wait, floor)
                return wait, f"rate limited by the platform: {exc}"
            why = _why(exc)
        except FatalError:
            raise
        except ProviderError as exc:
            why, least = _why(exc), _least_wait(exc)
        finally:
            self._connection_scope = None
            if handshaking:
                gate.release()
        memory.touch()
        delay = memory.backoff.failure(trio.current_time())
        return max(delay, least), why

    async def _read(self, conn: Connection) -> None:
        """Handle events until the connection ends (returns) or breaks (raises)."""
        liveness = self.settings.liveness_timeout
        events = conn.events().__aiter__()
        # Receipts taken in the connection's own reader task, with no hop to
        # this one (not when the liveness timeout counts this task's events).
        offer = getattr(conn, "take_events_at_once", None) if liveness is None else None
        if offer is not None:
            offer(self._event_at_once)
        # This reader reads on only once the last event is kept: a webhook may
        # wait for that before the platform hears 200 (which it never repeats).
        keeping = getattr(conn, "answer_when_kept", None)
        if keeping is not None:
            keeping()
        try:
            await self._read_events(conn, events, liveness)
        finally:
            if offer is not None:
                offer(None)

    async def _read_events(
        self, conn: Connection, events: AsyncIterator[Event], liveness: float | None
    ) -> None:
        memory = self.memory
        watch = None if liveness is None else _Liveness(liveness)
        if watch is not None:
            self.start_task(watch.run)
        try:
            while True:
                if watch is None:  # no cancel scope per event when there is no timeout
                    try:
                        event = await anext(events)
                    except StopAsyncIteration:
                        return
                else:
                    with watch.park() as scope:
                        try:
                            event = await anext(events)
                        except StopAsyncIteration:
                            return
                        finally:
                            watch.parked = False
                    if scope.cancelled_caught:
                        raise TransientError(
                            f"no event for {liveness} s (liveness timeout): "
                            "treating the connection as dead"
                        )
                await self._on_event(event)
                memory.session = conn.session_state()
                if not memory.dirty:  # the session and the dedupe window moved
                    memory.touch()
        finally:
            if watch is not None:
                watch.stop()

    async def _close_for_stop(self) -> None:
        """Close the link resumably while the provider's tasks still run."""
        self._stopping = True  # the connection loop must not reconnect now
        conn = self._conn
        if conn is not None:
            self._set_link(None)
            self.memory.session = conn.session_state()
            with trio.move_on_after(CLOSE_GRACE):
                await conn.close(resumable=True)
        if self._connection_scope is not None:
            self._connection_scope.cancel()

    def _set_link(self, conn: Connection | None) -> None:
        """The live link (``None``: none), told to whoever watches links (``memory.links``)."""
        if conn is self._conn:
            return  # a stop drops it, and then the connection's end: told once
        self._conn = conn
        links = self.memory.links
        if links is not None:
            links.link_changed()

    # --- what sends wait for ------------------------------------------------------

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
        conn = self._conn
        if conn is not None:  # the common case needs no cancel scope
            tenure = self.memory.tenure
            if tenure is None or tenure.valid():
                return conn
        wait = self.settings.connect_wait
        with trio.move_on_after(wait):
            while True:
                conn = self._conn
                if conn is not None:
                    tenure = self.memory.tenure
                    if tenure is None or tenure.valid():
                        return conn
                    # Past the tenure (a node thawed after its lease ran out): the
                    # link is dropped at trio's next look at its deadline, and no
                    # send may go out on it meanwhile; another node may hold the
                    # channel now. Sent here only if a renewal comes through; the
                    # channel's failure (a 409 to a send in flight) is heard at
                    # once, as by a send that waits for a link.
                    self._raise_if_failed()
                    await self._tenure_or_woken(tenure)
                    continue
                self._raise_if_failed()
                if self._connected is None:
                    self._connected = trio.Event()
                await self._connected.wait()
        raise ChannelUnavailable(
            f"channel {self.config.channel_id!r} is {self.memory.status.value} and did not "
            f"connect within {wait} s (last error: {self.memory.last_error})",
            channel_id=self.config.channel_id,
        )

    async def _tenure_or_woken(self, tenure: Tenure) -> None:
        """Return once the tenure is valid again, or the senders are woken (a new
        link, the channel's failure: see :meth:`_wake_senders`)."""
        if self._connected is None:
            self._connected = trio.Event()
        woken = self._connected
        async with trio.open_nursery() as race:

            async def renewed() -> None:
                await tenure.wait_valid()
                race.cancel_scope.cancel()

            race.start_soon(renewed)
            await woken.wait()
            race.cancel_scope.cancel()


def _least_wait(error: ProviderError) -> float:
    """The seconds the platform asked a failed attempt to wait at least (0: none)."""
    if isinstance(error, TransientError) and error.retry_after is not None:
        return error.retry_after
    return 0.0


def _why(error: ProviderError) -> str:
    """How a connection's end is reported: the error's class and message."""
    return f"{type(error).__name__}: {error}"


class _Liveness:
    """The watch on a link's liveness: the reader's wait for an event is cancelled
    once ``timeout`` passed since it began, unless the watch fired late.

    The reader calls :meth:`park` around each wait (the scope it returns is
    what the watch cancels); :meth:`run` is the watch's task, ended by
    :meth:`stop`. A wake-up more than ``LATE_TIMER`` after the deadline
    found the node's own loop busy: the reader is given as long again as
    the loop looked away (at most ``timeout``), once per wait, and only then
    is the link judged.
    """

    __slots__ = ("_done", "_scope", "_turn", "parked", "parked_at", "timeout")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.parked = False
        self.parked_at = trio.current_time()
        self._turn = 0  # waits begun: the watch tells one from the next
        self._scope: trio.CancelScope | None = None
        self._done = trio.CancelScope()

    def park(self) -> trio.CancelScope:
        """The reader begins a wait for an event: the scope to wait in."""
        self._turn += 1
        self.parked_at = trio.current_time()
        self.parked = True
        scope = self._scope = trio.CancelScope()
        return scope

    def stop(self) -> None:
        """The reader is done: the watch ends."""
        self._done.cancel()

    async def run(self) -> None:
        with self._done:
            turn, deadline, graced = self._turn, self.parked_at + self.timeout, False
            while True:
                await trio.sleep_until(deadline)
                now = trio.current_time()
                if not self.parked or self._turn != turn:
                    # An event came (or is being handled): watch the next wait.
                    turn, graced = self._turn, False
                    deadline = (self.parked_at if self.parked else now) + self.timeout
                    continue
                late = now - deadline
                if late > LATE_TIMER and not graced:
                    # Our loop was busy past the deadline: what the peer sent
                    # meanwhile may be unread. Look as long again, once.
                    graced = True
                    deadline = now + min(late, self.timeout)
                    continue
                assert self._scope is not None  # (parked)
                self._scope.cancel()
                # Should the event have come in this same turn, the reader handles
                # it and waits again: watched from its next wait.
                deadline = now + self.timeout
