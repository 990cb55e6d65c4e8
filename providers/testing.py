"""Fault injection for tests: a scripted fake provider, and a TCP link breaker.

Design: the test drives the platform side. ``FakeProvider.connect_script``
says what each ``open_connection`` does (succeed, or raise a given error);
a :class:`FakeConnection` yields the events the test pushes with
:meth:`FakeConnection.push`, ends or breaks when told (:meth:`drop`,
:meth:`fail`), and answers each ``send`` from ``send_script`` (a result, an
error to raise, or a delay). Everything is plain trio, so it runs in virtual
time (``MockClock(autojump_threshold=0)``) and tests assert exact times.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import trio

from .base import (
    DEFAULT_LIMITS,
    ChannelConfig,
    Event,
    OutboundMessage,
    PlatformLimits,
    ProviderError,
    SendResult,
    SessionState,
    TransientError,
)
from .operations import (
    DeleteMessage,
    EditMessage,
    MarkRead,
    Operation,
    OperationKind,
    React,
    SendTyping,
)

__all__ = ["FakeConnection", "FakeProvider", "LinkBreaker", "SendDelay"]


class SendDelay:
    """A ``send_script`` entry: take ``seconds`` before answering (then succeed)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __repr__(self) -> str:
        return f"SendDelay({self.seconds})"


class FakeConnection:
    """One scripted connection; the test feeds it."""

    def __init__(self, provider: FakeProvider, session: SessionState | None) -> None:
        self.provider = provider
        self.opened_with = session
        send, receive = trio.open_memory_channel[Event | BaseException | None](1000)
        self._to_events = send
        self._events = receive
        self.closed = False
        self.closed_resumable: bool | None = None
        self._seq = 0

    @property
    def unread(self) -> int:
        """Events pushed that the consumer of ``events()`` has not taken yet."""
        return self._events.statistics().current_buffer_used

    def push(self, *events: Event) -> None:
        """Deliver events to the consumer of ``events()``."""
        for event in events:
            self._to_events.send_nowait(event)

    def drop(self) -> None:
        """The platform closes the link: ``events()`` ends."""
        self._to_events.send_nowait(None)

    def fail(self, error: BaseException) -> None:
        """The link breaks with ``error`` (raised from ``events()``)."""
        self._to_events.send_nowait(error)

    async def events(self) -> AsyncIterator[Event]:
        async for item in self._events:
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    async def send(self, msg: OutboundMessage) -> SendResult:
        result = await self._answer(msg)
        assert result is not None
        return result

    async def edit(self, op: EditMessage) -> SendResult:
        result = await self._answer(op)
        assert result is not None
        return result

    async def delete(self, op: DeleteMessage) -> None:
        await self._answer(op)

    async def typing(self, op: SendTyping) -> None:
        await self._answer(op)

    async def mark_read(self, op: MarkRead) -> None:
        await self._answer(op)

    async def react(self, op: React) -> None:
        await self._answer(op)

    async def _answer(self, msg: Operation) -> SendResult | None:
        """Every operation answers from the one ``send_script``, as a send does."""
        if self.closed:
            raise TransientError("fake connection is closed")
        self.provider.send_attempts.append((trio.current_time(), msg))
        script = self.provider.send_script
        outcome: Any = script.popleft() if script else None
        if isinstance(outcome, SendDelay):
            await trio.sleep(outcome.seconds)
            outcome = None
        if isinstance(outcome, BaseException):
            raise outcome
        if outcome is None:
            self._seq += 1
            outcome = SendResult(platform_message_id=f"m{next(self.provider._ids)}", peer=msg.peer)
        self.provider.sent.append((trio.current_time(), msg))
        return outcome if isinstance(msg, OutboundMessage | EditMessage) else None

    def session_state(self) -> SessionState:
        return SessionState(provider="fake", data={"connection": self.provider.connects})

    async def close(self, *, resumable: bool = True) -> None:
        self.closed = True
        self.closed_resumable = resumable

    def __repr__(self) -> str:
        return f"<FakeConnection #{self.provider.connects} closed={self.closed}>"


class FakeProvider:
    """A provider whose platform is the test.

    Attributes:
        connect_script: what each connect attempt does, in order: ``None``
            (succeed) or an exception to raise. When empty, connects succeed.
        send_script: what each send does: ``None`` (succeed), a
            :class:`SendResult`, an exception, or a :class:`SendDelay`.
        connections: every connection opened, oldest first.
        connect_times: when each connect was attempted.
        sent: ``(time, message)`` for every accepted send (and other operation).
        send_attempts: ``(time, message)`` for every send attempt.
        operations: what the fake platform can do (every operation by default).
    """

    name = "fake"

    def __init__(
        self,
        *,
        limits: PlatformLimits = DEFAULT_LIMITS,
        connect_script: Iterable[ProviderError | None] = (),
        send_script: Iterable[Any] = (),
        operations: Iterable[OperationKind] = tuple(OperationKind),
    ) -> None:
        self.limits = limits
        self.operations = frozenset(operations)
        self.connect_script: deque[ProviderError | None] = deque(connect_script)
        self.send_script: deque[Any] = deque(send_script)
        self.connections: list[FakeConnection] = []
        self.connect_times: list[float] = []
        self.sessions_seen: list[SessionState | None] = []
        self.sent: list[tuple[float, Operation]] = []
        self.send_attempts: list[tuple[float, Operation]] = []
        self.connects = 0
        self._ids = itertools.count(1)
        self._connected = trio.Event()

    @property
    def current(self) -> FakeConnection:
        """The most recent connection."""
        return self.connections[-1]

    async def wait_connected(self, count: int) -> FakeConnection:
        """Wait until ``count`` connections have been opened; return the last."""
        while len(self.connections) < count:
            await self._connected.wait()
        return self.connections[count - 1]

    @asynccontextmanager
    async def open_connection(
        self, config: ChannelConfig, session: SessionState | None = None
    ) -> AsyncIterator[FakeConnection]:
        self.connect_times.append(trio.current_time())
        self.sessions_seen.append(session)
        outcome = self.connect_script.popleft() if self.connect_script else None
        await trio.lowlevel.checkpoint()
        if outcome is not None:
            raise outcome
        self.connects += 1
        conn = FakeConnection(self, session)
        self.connections.append(conn)
        self._connected.set()
        self._connected = trio.Event()
        try:
            yield conn
        finally:
            conn.closed = True

    def __repr__(self) -> str:
        return f"<FakeProvider connects={self.connects} sent={len(self.sent)}>"


class LinkBreaker:
    """A TCP proxy on 127.0.0.1 that can freeze or cut the links through it.

    Faults below the protocol layer that an ASGI emulator cannot produce:
    ``frozen = True`` makes bytes vanish while both sockets stay open (a
    zombie link: only keepalives notice), ``cut()`` drops every link at once,
    ``refusing = True`` closes every new connection at once (a server that
    is down: with ``cut()``, an outage; ``False`` again ends it).

    Usage: ``port = await nursery.start(breaker.serve)``, then point the
    client at ``127.0.0.1:port`` instead of the target.
    """

    def __init__(self, target_port: int, *, target_host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.frozen = False
        self.refusing = False
        self._scopes: list[trio.CancelScope] = []

    async def serve(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Accept and forward connections until cancelled; ``started(port)``."""
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.SocketStream) -> None:
        if self.refusing:
            await client.aclose()
            return
        try:
            server = await trio.open_tcp_stream(self.target_host, self.target_port)
        except OSError:  # the far end is down (Redis restarting): so is this link
            await client.aclose()
            return
        async with client, server:
            with trio.CancelScope() as scope:
                self._scopes.append(scope)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pipe, client, server)
                    nursery.start_soon(self._pipe, server, client)
            self._scopes.remove(scope)

    async def _pipe(self, source: trio.SocketStream, sink: trio.SocketStream) -> None:
        try:
            async for chunk in source:
                if not self.frozen:  # frozen: bytes vanish, the sockets stay open
                    await sink.send_all(chunk)
        except trio.BrokenResourceError:
            return  # the other side went away: this direction is over

    def cut(self) -> None:
        """Drop every link through the proxy now."""
        for scope in self._scopes:
            scope.cancel()

    def __repr__(self) -> str:
        state = "refusing" if self.refusing else "frozen" if self.frozen else "passing"
        target = f"{self.target_host}:{self.target_port}"
        return f"<LinkBreaker -> {target} {state} links={len(self._scopes)}>"
