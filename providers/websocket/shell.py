"""The trio-websocket shell around :mod:`providers.websocket.core`.

Design: the shell only moves bytes and time. One reader task feeds frames to
the core, one timer task sleeps until ``core.next_deadline()`` (a cancel
scope whose deadline is moved whenever the core changes) and calls
``core.tick``; pings run as short tasks because trio-websocket's ``ping``
waits for its pong. All of them live in a nursery owned by
:meth:`WebSocketProvider.open_connection`, so none outlives the block. The
background tasks never raise: they record the failure in the core, and
``events()`` raises it, so what leaves the block is its own exception, which
:func:`providers._nursery.open_connection_nursery` hands back unwrapped by
an ExceptionGroup. trio-websocket and OS errors are mapped into the provider
error tree here, at the boundary, and chained.

Configuration (``ChannelConfig``):

- ``base_url``: ``ws://host:port/ws`` (or ``wss://``).
- ``credentials["token"]``: sent as ``Authorization: Bearer <token>``, or as
  the ``token`` query parameter when ``options["token_in_query"]`` is true
  (for servers behind proxies that strip headers).
- ``options``: see :class:`WebSocketOptions`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, Final
from urllib.parse import urlencode, urlsplit, urlunsplit

import attrs
import cattrs
import trio
import trio_websocket
from cattrs.v import format_exception

from providers._nursery import open_connection_nursery
from providers.base import (
    AuthenticationFailed,
    Banned,
    ChannelConfig,
    ConnectionStateChanged,
    Event,
    FatalError,
    OutboundMessage,
    PlatformLimits,
    ProviderError,
    RateLimited,
    SendResult,
    SessionState,
    TransientError,
)

from .core import (
    DEFAULT_RETRY_AFTER,
    Action,
    CloseLink,
    CompleteSend,
    Emit,
    Fail,
    Phase,
    SendFrame,
    SendPing,
    WebSocketCore,
)

__all__ = ["WEBSOCKET_LIMITS", "WebSocketConnection", "WebSocketOptions", "WebSocketProvider"]

#: Generous defaults: a generic endpoint is usually our own or a partner's
#: server, limited by its capacity rather than by an anti-spam policy.
WEBSOCKET_LIMITS: Final = PlatformLimits(
    per_channel_rate=100.0,  # messages per second
    per_channel_burst=200,
    per_peer_rate=10.0,  # messages per second
    per_peer_burst=20,
    max_text_length=16_384,  # characters
)


def _positive(instance: Any, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{attribute.name} must be a positive number of seconds, got {value!r}")


@attrs.frozen(kw_only=True)
class WebSocketOptions:
    """``ChannelConfig.options`` for the websocket provider.

    Attributes:
        ping_interval: seconds between websocket pings; None disables keepalive.
        pong_timeout: seconds a pong may take before the link is dead.
        liveness_timeout: seconds without any application frame (heartbeats
            count, pongs do not) before the link is dead; None disables it.
        send_timeout: seconds a send waits for its ack.
        connect_timeout: seconds for TCP, the handshake and the ``ready`` frame.
        close_timeout: seconds the closing handshake may take before the
            socket is simply closed.
        token_in_query: send the token as ``?token=`` instead of a header.
        event_buffer: inbound events buffered for a slow consumer; beyond it the
            reader waits (and a long stall trips the keepalive).
    """

    ping_interval: float | None = attrs.field(default=20.0, validator=_positive)
    pong_timeout: float = attrs.field(default=10.0, validator=_positive)
    liveness_timeout: float | None = attrs.field(default=60.0, validator=_positive)
    send_timeout: float = attrs.field(default=10.0, validator=_positive)
    connect_timeout: float = attrs.field(default=10.0, validator=_positive)
    close_timeout: float = attrs.field(default=2.0, validator=_positive)
    token_in_query: bool = False
    event_buffer: int = attrs.field(default=1024, validator=attrs.validators.ge(1))


_OPTIONS: Final = cattrs.Converter(forbid_extra_keys=True)


def parse_options(options: Mapping[str, Any]) -> WebSocketOptions:
    """Validate ``options`` into :class:`WebSocketOptions`.

    Raises:
        FatalError: unknown keys or bad values (retrying cannot fix a config).
    """
    try:
        return _OPTIONS.structure(dict(options), WebSocketOptions)
    except Exception as exc:
        problems = "; ".join(
            cattrs.transform_error(exc, path="$.options", format_exception=_describe)
        )
        raise FatalError(f"invalid websocket channel options: {problems}") from exc


def _describe(exc: BaseException, type_: type | None) -> str:
    # attrs validators raise ValueError with a message worth keeping
    if type_ is None and isinstance(exc, ValueError):
        return str(exc)
    return format_exception(exc, type_)


class WebSocketConnection:
    """One open websocket channel (see :class:`providers.base.Connection`)."""

    def __init__(
        self, config: ChannelConfig, options: WebSocketOptions, nursery: trio.Nursery
    ) -> None:
        self.channel_id = config.channel_id
        self._config = config
        self._options = options
        self._nursery = nursery
        self._core = WebSocketCore(
            config.channel_id,
            now=trio.current_time(),
            ping_interval=options.ping_interval,
            pong_timeout=options.pong_timeout,
            liveness_timeout=options.liveness_timeout,
            send_timeout=options.send_timeout,
        )
        self._ws: trio_websocket.WebSocketConnection | None = None
        self._events_in, self._events_out = trio.open_memory_channel[Event](options.event_buffer)
        self._waiters: dict[str, _Waiter] = {}
        self._ready = trio.Event()
        self._timer_scope: trio.CancelScope | None = None
        self._resumable = True

    def __repr__(self) -> str:
        return (
            f"<WebSocketConnection {self.channel_id} [{self._core.phase.name} "
            f"pending={self._core.pending} frames={self._core.frames_received}]>"
        )

    @property
    def phase(self) -> Phase:
        """The link's phase, as the core sees it."""
        return self._core.phase

    # --- the Connection protocol ------------------------------------------------------------

    async def events(self) -> AsyncIterator[Event]:
        """Inbound events until the link ends.

        Raises:
            TransientError, RateLimited, FatalError: the link broke (after the
                events received before the break have been yielded).
        """
        async for event in self._events_out:
            yield event
        if self._core.phase is Phase.FAILED and self._core.failure is not None:
            raise self._core.failure

    async def send(self, msg: OutboundMessage) -> SendResult:
        """Send ``msg`` and wait for the server's ack.

        Raises:
            TransientError: no ack within ``send_timeout``, or the link failed
                or was closed before the ack.
            RateLimited: the server asked us to wait.
            FatalError: the token is refused or banned.
            PermanentSendError: bad recipient, too long, or a template.
        """
        waiter = self._waiters.get(msg.idempotency_key)
        if waiter is None:
            actions = self._core.start_send(msg, trio.current_time())
            waiter = self._waiters[msg.idempotency_key] = _Waiter()
            await self._apply(actions)
        await waiter.done.wait()
        if waiter.error is not None:
            raise waiter.error
        assert waiter.result is not None
        return waiter.result

    def session_state(self) -> SessionState:
        """The last inbound message id (informational: the protocol has no replay)."""
        data: dict[str, Any] = {}
        if self._resumable and self._core.last_message_id is not None:
            data["last_message_id"] = self._core.last_message_id
        return SessionState(provider="websocket", data=data)

    async def close(self, *, resumable: bool = True) -> None:
        """Close the link (code 1000); ``resumable=False`` also forgets the session."""
        self._resumable = resumable
        await self._apply(self._core.close())

    # --- the shell ------------------------------------------------------------------------------

    async def _start(self, session: SessionState | None) -> None:
        """Connect, wait for ``ready``, start the background tasks; map every failure."""
        url, headers = _target(self._config, self._options)
        try:
            with trio.fail_after(self._options.connect_timeout):
                self._ws = await trio_websocket.connect_websocket_url(
                    self._nursery, url, extra_headers=headers
                )
                self._nursery.start_soon(self._read)
                self._nursery.start_soon(self._run_timers)
                await self._ready.wait()
        except trio.TooSlowError as exc:
            await self.close()
            raise TransientError(
                f"no 'ready' from {_redacted(url)} within {self._options.connect_timeout}s; "
                "retry with backoff"
            ) from exc
        except trio_websocket.ConnectionRejected as exc:
            raise _rejected(exc, url) from exc
        except (trio_websocket.HandshakeError, OSError) as exc:
            raise TransientError(
                f"cannot connect to {_redacted(url)}: {exc!r}; retry with backoff"
            ) from exc
        if self._core.phase is Phase.FAILED and self._core.failure is not None:
            raise self._core.failure

    async def _shutdown(self) -> None:
        """Close gracefully (bounded by ``close_timeout``) if still open."""
        await self._apply(self._core.close())
        if self._ws is not None:
            with trio.move_on_after(self._options.close_timeout):
                await self._ws.aclose()

    async def _read(self) -> None:
        assert self._ws is not None
        ws = self._ws
        while True:
            try:
                data = await ws.get_message()
            except trio_websocket.ConnectionClosed as exc:
                reason = exc.reason
                code = None if reason is None else reason.code
                text = None if reason is None else reason.reason
                if code == 1006:  # wsproto's "abnormal closure": no close frame at all
                    code, text = None, "the TCP link broke"
                await self._apply(self._core.connection_lost(code, text))
                return
            await self._apply(self._core.frame_received(data, trio.current_time()))
            if self._core.phase in (Phase.CLOSED, Phase.FAILED):
                return

    async def _run_timers(self) -> None:
        while self._core.phase not in (Phase.CLOSED, Phase.FAILED):
            with trio.CancelScope(deadline=self._core.next_deadline()) as scope:
                self._timer_scope = scope
                await trio.sleep_forever()
            self._timer_scope = None
            await self._apply(self._core.tick(trio.current_time()))

    async def _ping(self, payload: bytes) -> None:
        assert self._ws is not None
        try:
            await self._ws.ping(payload)
        except trio_websocket.ConnectionClosed:
            return  # the reader reports the close
        await self._apply(self._core.pong_received(payload, trio.current_time()))

    async def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, SendFrame):
                assert self._ws is not None
                try:
                    await self._ws.send_message(action.text)
                except trio_websocket.ConnectionClosed as exc:
                    reason = exc.reason
                    await self._apply(
                        self._core.connection_lost(
                            None if reason is None else reason.code,
                            None if reason is None else reason.reason,
                        )
                    )
            elif isinstance(action, SendPing):
                self._nursery.start_soon(self._ping, action.payload)
            elif isinstance(action, Emit):
                if isinstance(action.event, ConnectionStateChanged):
                    self._ready.set()
                # closed while we waited for buffer space: nobody wants it any more
                with contextlib.suppress(trio.ClosedResourceError):
                    await self._events_in.send(action.event)
            elif isinstance(action, CompleteSend):
                waiter = self._waiters.pop(action.key, None)
                if waiter is not None:
                    waiter.result, waiter.error = action.result, action.error
                    waiter.done.set()
            elif isinstance(action, Fail):
                self._ready.set()
                self._events_in.close()
                self._nursery.start_soon(self._drop_link, 1000, "client gives up on the link")
            elif isinstance(action, CloseLink):
                self._ready.set()
                # Handshake first, then end the events: a consumer that leaves
                # the connection's block when they end would cut the handshake.
                if self._ws is not None:
                    with trio.move_on_after(self._options.close_timeout):
                        await self._ws.aclose(action.code, action.reason)
                self._events_in.close()
        if self._timer_scope is not None:
            self._timer_scope.deadline = self._core.next_deadline()

    async def _drop_link(self, code: int, reason: str) -> None:
        if self._ws is not None:
            with trio.move_on_after(self._options.close_timeout):
                await self._ws.aclose(code, reason)


@attrs.define
class _Waiter:
    done: trio.Event = attrs.field(factory=trio.Event)
    result: SendResult | None = None
    error: ProviderError | None = None


class WebSocketProvider:
    """A generic JSON-over-websocket platform (see :mod:`providers.websocket.core`).

    Args:
        limits: the platform limits; :data:`WEBSOCKET_LIMITS` by default.
    """

    name = "websocket"

    def __init__(self, *, limits: PlatformLimits = WEBSOCKET_LIMITS) -> None:
        self.limits = limits

    def __repr__(self) -> str:
        return f"<WebSocketProvider limits={self.limits.per_channel_rate}/s>"

    @asynccontextmanager
    async def open_connection(
        self, config: ChannelConfig, session: SessionState | None = None
    ) -> AsyncIterator[WebSocketConnection]:
        """Connect ``config.base_url`` and wait for the server's ``ready``.

        Args:
            config: ``base_url``, ``credentials["token"]`` and options.
            session: accepted for the protocol; this server protocol has no replay.

        Raises:
            TransientError: network errors, timeouts, server closes.
            RateLimited: the server refused the connection for a while.
            FatalError: bad options, a refused or banned token.
        """
        options = parse_options(config.options)
        if not config.base_url:
            raise FatalError(
                f"channel {config.channel_id}: the websocket provider needs base_url "
                "(ws://host:port/path)"
            )
        async with open_connection_nursery() as nursery:
            conn = WebSocketConnection(config, options, nursery)
            try:
                await conn._start(session)
                yield conn
            finally:
                with trio.CancelScope(shield=True):
                    await conn._shutdown()
                nursery.cancel_scope.cancel()


def _target(
    config: ChannelConfig, options: WebSocketOptions
) -> tuple[str, list[tuple[bytes, bytes]]]:
    assert config.base_url is not None
    token = config.credentials.get("token", "")
    if options.token_in_query and token:
        parts = urlsplit(config.base_url)
        query = "&".join(q for q in (parts.query, urlencode({"token": token})) if q)
        return urlunsplit(parts._replace(query=query)), []
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    return config.base_url, headers


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(query="")) if "token=" in parts.query else url


def _rejected(exc: trio_websocket.ConnectionRejected, url: str) -> ProviderError:
    where = f"{_redacted(url)} refused the websocket handshake with HTTP {exc.status_code}"
    if exc.status_code == 401:
        return AuthenticationFailed(f"{where}: bad token")
    if exc.status_code == 403:
        return Banned(f"{where}: banned, do not reconnect")
    if exc.status_code == 429:
        headers = dict(exc.headers)
        try:
            wait = float(headers.get(b"retry-after", b"").decode())
        except ValueError:
            wait = DEFAULT_RETRY_AFTER
        return RateLimited(where, retry_after=wait)
    return TransientError(f"{where}; retry with backoff")
