"""The trio I/O shell around the Discord gateway and REST cores.

Design:
- All protocol decisions live in :mod:`.gateway` and :mod:`.rest`; this
  module only moves bytes, sleeps until ``next_deadline()`` and applies the
  cores' actions, as trio-websocket does around wsproto.
- One driver task per connection runs the gateway: it waits for a frame or
  the core's next deadline, whichever comes first, so heartbeats, zombie
  checks and reads are sequential and never race. It reconnects (resume or
  identify) when the core says so, within one :class:`DiscordConnection`;
  when the core gives up, the error is handed to :meth:`DiscordConnection.events`
  so the channel actor's backoff decides what happens next.
- Backpressure: inbound events wait in a bounded buffer (``EVENT_BUFFER``)
  for the consumer; when it is full (the channel's store is down) the driver
  waits and reads no more. Should the gateway drop the socket meanwhile (no
  heartbeats), the core resumes from the last seq received, every event up
  to which is in the buffer. A connection that ends with events unread
  saves the seq of the last one taken (``session_state``), so the next
  connection's resume replays the rest.
- Every trio, trio-websocket and httpx error is mapped here into the
  :mod:`providers.base` tree, through one table (:func:`_transport_errors`)
  and :class:`~providers._exceptions.map_exceptions`, chained to its cause.
- Defaults (:data:`DISCORD_LIMITS`): Discord's global limit is 50 requests
  per second per bot, counted over every route and refused past it with a
  global 429 (which pauses the whole channel). A burst of 50 on top of
  50/s would put up to 99 requests into one second, so the channel's rate is
  strict (``per_channel_strict``, burst 1): it paces a little below 50/s,
  which leaves room for the one ``GET /gateway/bot`` of a connect. The route
  limit on ``POST /channels/{id}/messages`` is commonly observed as 5 per 5 s
  per Discord channel, hence 1/s with a burst of 5 per peer; 2000 characters.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import random
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Final
from urllib.parse import urlsplit

import httpx
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    connect_websocket_url,
)

from .._exceptions import ExceptionMap, map_exceptions
from .._http import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_REQUEST_DEADLINE,
    Answer,
    check_token,
    fetch,
    shared_ssl_context,
)
from .._nursery import open_connection_nursery
from .._pool import pool_limits
from .._tls import tls_context
from ..base import (
    AuthenticationFailed,
    ChannelConfig,
    Event,
    FatalError,
    OutboundMessage,
    PermanentSendError,
    PlatformLimits,
    ProviderError,
    RateLimited,
    RateLimitScope,
    SendResult,
    SessionState,
    TransientError,
    Unsupported,
)
from ..groups import lone_exception, reraise
from ..masking import shown
from ..media import read_upload
from ..operations import DeleteMessage, EditMessage, MarkRead, React, SendTyping
from ..options import OptionValueError, discord_compress, discord_intents, read_limit
from .compress import Compression, CompressionError, Inflater
from .gateway import (
    INVALID_SESSION_DELAY,
    Action,
    CloseSocket,
    EmitEvent,
    Fail,
    GatewayCore,
    GatewayState,
    Reconnect,
    SendFrame,
)
from .rest import (
    OPERATIONS,
    BucketTracker,
    RestRequest,
    build_gateway_bot,
    build_operation,
    build_send,
    interpret_done,
    interpret_gateway_bot,
    interpret_send,
)
from .wire import DEFAULT_INTENTS

__all__ = ["DISCORD_LIMITS", "DiscordConnection", "DiscordProvider"]

DISCORD_LIMITS: Final = PlatformLimits(
    per_channel_rate=50.0,
    per_channel_burst=1,
    per_channel_strict=True,
    per_peer_rate=1.0,
    per_peer_burst=5,
    max_text_length=2000,
    max_upload_bytes=10 * 1024 * 1024,  # bytes: Discord's limit for a bot's upload
)
DEFAULT_BASE_URL: Final = "https://discord.com"
USER_AGENT: Final = "DiscordBot (https://github.com/switchboard/switchboard, 0.1.0)"
CONNECT_TIMEOUT: Final = 10.0  # seconds to open a gateway socket
HTTP_TIMEOUT: Final = 10.0  # seconds per REST call
CLOSE_TIMEOUT: Final = 2.0  # seconds for a websocket close handshake
MAX_MESSAGE_BYTES: Final = 1 << 20  # bytes in one gateway message (after inflating)
MAX_BUCKET_WAIT: Final = 30.0  # seconds we wait for a bucket before raising RateLimited
EVENT_BUFFER: Final = 1_024  # inbound events buffered for a slow consumer, then backpressure

# What Discord's transports raise: httpx (REST), trio-websocket and the OS (the
# gateway socket), and the connect deadline. A call can only raise its own
# transport's; every one is transient.
TRANSPORT_ERRORS: Final = (httpx.HTTPError, HandshakeError, OSError, trio.TooSlowError)


def _socket_fault(exc: Exception) -> str:
    """What the gateway did, short: a refused upgrade by its status, not its body."""
    if isinstance(exc, ConnectionRejected):
        return f"the upgrade was refused with HTTP {exc.status_code}"
    text = repr(exc)
    return text if len(text) <= 200 else text[:200] + "..."


def _transport_errors(describe: Callable[[Exception], str]) -> ExceptionMap:
    """The shell's mapping table: every transport failure is a :class:`TransientError`.

    The core then resumes (or identifies anew) and the channel actor backs
    off; ``describe`` says which call failed and what happens next.
    """
    return {TRANSPORT_ERRORS: lambda exc: TransientError(describe(exc))}


def _gateway_tls(url: str) -> ssl.SSLContext | None:
    """The TLS context of a gateway socket over ``wss://``: the system's trust
    store, as trio-websocket's own default, but made once per process
    (:func:`providers._tls.tls_context`; not the REST calls' context, whose
    ALPN httpcore sets). trio-websocket would make one per socket, every
    connect and resume: 22-35 ms of CPU to load the trust store, and 0.8 MB
    held for the socket's life (measured)."""
    return tls_context() if urlsplit(url).scheme == "wss" else None


def _gateway_errors(describe: Callable[[Exception], str]) -> ExceptionMap:
    """The gateway socket's table: what the transport table maps, and whatever
    else the peer can make trio-websocket, wsproto or h11 raise.

    Our own :class:`ProviderError` s (the core's verdicts) pass unchanged;
    everything else that leaves a socket is the platform's doing (or our
    libraries' reaction to it), so it is transient: the core resumes and the
    channel actor backs off. A bug of ours then shows as a channel that keeps
    reconnecting with its error logged, never as a node that goes down.
    """
    return {ProviderError: None, Exception: lambda exc: TransientError(describe(exc))}


def _size_option(config: ChannelConfig, name: str, default: int) -> int:
    """``config.options[name]``, a number of bytes (else ``default``).

    Raises:
        FatalError: the option is not a whole number of bytes within
            :func:`~providers.options.limit_problem`'s bounds, the rule
            ``switchboard check`` applies too (retrying cannot fix it).
    """
    if name not in config.options:
        return default
    try:
        return int(read_limit(name, "bytes", config.options[name]))
    except OptionValueError as exc:
        raise FatalError(f"discord channel {config.channel_id!r}: {exc}") from None


@asynccontextmanager
async def _open_socket_nursery() -> AsyncIterator[trio.Nursery]:
    """The nursery of one gateway socket (trio-websocket's reader task runs in it).

    Like :func:`~providers._nursery.open_connection_nursery`, and one case
    more: a peer's fault raised by the reader (a refused upgrade) in the
    same moment as our own cancellation (the channel stops) would leave as a
    group of both, which no mapping table can classify; the cancellation
    wins, since nobody waits for the socket any more.
    """
    cancelled: BaseException | None = None
    try:
        async with open_connection_nursery() as nursery:
            yield nursery
    except BaseExceptionGroup as group:
        only_cancelled, _ = group.split(trio.Cancelled)
        if only_cancelled is None:
            raise
        cancelled = lone_exception(only_cancelled)
    if cancelled is not None:
        reraise(cancelled)  # outside the except clause: it leaves as it was raised


class DiscordProvider:
    """The Discord adapter: gateway v10 for events, REST v10 for sending.

    Args:
        intents: the gateway intents (``config.options["intents"]`` overrides).
        rng: randomness for heartbeat jitter and the op 9 delay (tests seed it).
        invalid_session_delay: (low, high) seconds before identifying after op 9.
        connect_timeout: seconds to open a gateway socket.
        http_timeout: seconds per REST call.
        max_bucket_wait: longest wait for an exhausted bucket before
            :class:`~providers.base.RateLimited` is raised instead.
        compress: gateway transport compression, ``"zlib-stream"`` or
            ``"zstd-stream"`` (``config.options["compress"]`` overrides; ``None``
            or ``"none"`` turns it off). Payloads are then BINARY frames of
            one compression stream per socket, a fraction of their JSON size.
        max_message_bytes: the largest gateway message read, in bytes
            (``config.options["max_message_bytes"]`` overrides); a larger one
            ends the socket as a :class:`~providers.base.TransientError`.
        max_body_bytes: the largest REST answer read, in bytes
            (``config.options["max_body_bytes"]`` overrides); larger is transient.
        request_deadline: seconds for a whole REST call and its answer,
            whatever pace the server keeps (``http_timeout`` is per read).
    """

    name = "discord"
    limits = DISCORD_LIMITS
    operations = OPERATIONS

    def __init__(
        self,
        *,
        intents: int = DEFAULT_INTENTS,
        rng: random.Random | None = None,
        invalid_session_delay: tuple[float, float] = INVALID_SESSION_DELAY,
        connect_timeout: float = CONNECT_TIMEOUT,
        http_timeout: float = HTTP_TIMEOUT,
        max_bucket_wait: float = MAX_BUCKET_WAIT,
        compress: Compression | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        request_deadline: float = DEFAULT_REQUEST_DEADLINE,
    ) -> None:
        self.intents = int(intents)
        self.compress = compress
        self.max_message_bytes = max_message_bytes
        self.max_body_bytes = max_body_bytes
        self.request_deadline = request_deadline
        self._rng = rng or random.Random()
        self._invalid_session_delay = invalid_session_delay
        self._connect_timeout = connect_timeout
        self._http_timeout = http_timeout
        self._max_bucket_wait = max_bucket_wait

    def __repr__(self) -> str:
        return f"<DiscordProvider intents={self.intents:#x}>"

    @asynccontextmanager
    async def open_connection(
        self, config: ChannelConfig, session: SessionState | None = None
    ) -> AsyncIterator[DiscordConnection]:
        """Connect to the gateway (resuming ``session`` if it is resumable).

        The block is entered once READY or RESUMED arrived; leaving it closes
        the connection resumably.

        Raises:
            AuthenticationFailed: no token, or Discord rejected it.
            RateLimited: a 429, or no identifies left today.
            Banned: an IP block.
            FatalError: a fatal gateway close code (4010-4014).
            TransientError: network failures and server errors.
        """
        try:
            compress: Any = discord_compress(config.options, self.compress)
            intents = discord_intents(config.options, self.intents)
        except FatalError as exc:
            raise FatalError(f"discord channel {config.channel_id!r}: {exc}") from exc
        token = config.credentials.get("token")
        if not token:
            raise AuthenticationFailed(
                f"discord channel {config.channel_id!r} has no credentials['token']; "
                "add the bot token to the channel's config"
            )
        check_token(token, f"discord channel {config.channel_id!r}")
        max_body = _size_option(config, "max_body_bytes", self.max_body_bytes)
        max_message = _size_option(config, "max_message_bytes", self.max_message_bytes)
        base_url = (config.base_url or DEFAULT_BASE_URL).rstrip("/")
        headers = {"Authorization": f"Bot {token}", "User-Agent": USER_AGENT}
        async with httpx.AsyncClient(
            base_url=base_url,
            headers=headers,
            timeout=self._http_timeout,
            limits=pool_limits(config, self.limits),
            verify=shared_ssl_context(),
        ) as http:
            request = build_gateway_bot()
            with map_exceptions(
                _transport_errors(
                    lambda exc: (
                        f"asking Discord at {base_url} for the gateway failed: {exc!r}; retry"
                    )
                )
            ):
                response = await fetch(
                    http,
                    request.method,
                    request.path,
                    deadline=self.request_deadline,
                    max_body=max_body,
                    what="asking Discord for the gateway (GET /gateway/bot)",
                )
            gateway = interpret_gateway_bot(
                response.status_code, response.headers, response.content
            )
            if urlsplit(gateway.url).scheme != "wss" and urlsplit(base_url).scheme == "https":
                # The Identify carries the token: over TLS only (plain ws:// is an
                # emulator's, behind a plain http:// API).
                raise TransientError(
                    f"Discord at {base_url} answered a gateway that is not wss:// "
                    f"({shown(gateway.url)}); the token is sent over TLS only"
                )
            core = GatewayCore(
                token=token,
                channel_id=config.channel_id,
                gateway_url=gateway.url,
                intents=intents,
                session=session,
                session_start_limit=gateway.session_start_limit,
                now=trio.current_time(),
                rng=self._rng,
                invalid_session_delay=self._invalid_session_delay,
                compress=compress,
            )
            async with open_connection_nursery() as nursery:
                conn = DiscordConnection(
                    core=core,
                    http=http,
                    nursery=nursery,
                    connect_timeout=self._connect_timeout,
                    max_bucket_wait=self._max_bucket_wait,
                    max_message_bytes=max_message,
                    max_body_bytes=max_body,
                    request_deadline=self.request_deadline,
                )
                await nursery.start(conn._drive)
                try:
                    yield conn
                finally:
                    with trio.CancelScope(shield=True):
                        await conn.close()
                nursery.cancel_scope.cancel()


class DiscordConnection:
    """An open Discord gateway session plus its REST client (one channel)."""

    # A send on its way at close() still gets its answer until the block ends
    # (which closes the HTTP client): the channel waits for it (see Connection).
    answers_after_close = True

    def __init__(
        self,
        *,
        core: GatewayCore,
        http: httpx.AsyncClient,
        nursery: trio.Nursery,
        connect_timeout: float,
        max_bucket_wait: float,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        request_deadline: float = DEFAULT_REQUEST_DEADLINE,
    ) -> None:
        self._core = core
        self._max_message_bytes = max_message_bytes
        self._max_body_bytes = max_body_bytes
        self._request_deadline = request_deadline
        self._http = http
        self._nursery = nursery
        self._connect_timeout = connect_timeout
        self._max_bucket_wait = max_bucket_wait
        self._buckets = BucketTracker()
        self._upload_limit = DISCORD_LIMITS.max_upload_bytes
        # Each event with the seq and session of its dispatch: a resume starts
        # after the last one the consumer took (see session_state).
        self._send_events, self._receive_events = trio.open_memory_channel[
            tuple[Event, int | None, str | None]
        ](EVENT_BUFFER)
        self._taken_seq = core.seq
        self._taken_session = core.session_id
        self._ws: WebSocketConnection | None = None
        self._drive_scope = trio.CancelScope()
        self._error: BaseException | None = None
        self._closed = False
        self._started = False
        self.sockets_opened = 0
        self.inflater: Inflater | None = None  # the current socket's, when compressed

    def __repr__(self) -> str:
        state = "CLOSED" if self._closed else self._core.state.name
        session = self._core.session_id[:8] if self._core.session_id else None
        return (
            f"<DiscordConnection discord:{self._core.channel_id} [{state} seq={self._core.seq} "
            f"session={session} sockets={self.sockets_opened}]>"
        )

    # --- the Connection protocol ---------------------------------------------------------

    async def events(self) -> AsyncIterator[Event]:
        """Inbound events until the connection ends.

        Raises:
            TransientError, RateLimited, FatalError: the gateway link failed
                in a way the core could not repair by reconnecting.
        """
        async for event, seq, session in self._receive_events:
            self._taken_seq, self._taken_session = seq, session
            yield event
        if self._error is not None:
            raise self._error

    async def send(self, msg: OutboundMessage) -> SendResult:
        """Send ``msg`` through ``POST /channels/{peer}/messages`` (an upload as an
        attachment, multipart).

        Waits first when the route's bucket is known to be empty.

        Raises:
            trio.ClosedResourceError: this connection was closed by its owner.
            RateLimited, Banned, AuthenticationFailed, MissingPermissions,
            BadRecipient, MessageTooLong, PermanentSendError, TransientError.
        """
        self._check_open()
        upload = None
        if msg.media is not None and msg.media.is_upload:
            upload = await read_upload(
                msg.media, limit=self._upload_limit, peer=msg.peer, platform="discord"
            )
        request = build_send(msg, upload=upload)
        response = await self._rest(
            request,
            msg.peer,
            "(the nonce keeps the retry from duplicating the message)",
        )
        return interpret_send(
            response.status_code, response.headers, response.content, peer=msg.peer
        )

    async def edit(self, op: EditMessage) -> SendResult:
        """``PATCH /channels/{peer}/messages/{id}`` with the new content.

        Raises:
            MessageNotFound: Discord's 10008 Unknown Message.
            The errors of :meth:`send` otherwise.
        """
        self._check_open()
        response = await self._rest(build_operation(op), op.peer, "(an edit is idempotent)")
        return interpret_send(
            response.status_code, response.headers, response.content, peer=op.peer
        )

    async def delete(self, op: DeleteMessage) -> None:
        """``DELETE /channels/{peer}/messages/{id}`` (MessageNotFound: 10008)."""
        await self._done(op, "deleting a message")

    async def typing(self, op: SendTyping) -> None:
        """``POST /channels/{peer}/typing``: "typing…" for about 10 s."""
        await self._done(op, "showing typing")

    async def mark_read(self, op: MarkRead) -> None:
        """Bots cannot mark Discord messages read.

        Raises:
            Unsupported: always.
        """
        raise Unsupported(
            "discord bots cannot mark messages read; nothing was sent",
            peer=op.peer,
            operation="mark_read",
            provider="discord",
        )

    async def react(self, op: React) -> None:
        """``PUT`` (or with ``remove``, ``DELETE``) ``…/reactions/{emoji}/@me``."""
        await self._done(op, "reacting to a message")

    async def _done(self, op: DeleteMessage | SendTyping | React, what: str) -> None:
        self._check_open()
        response = await self._rest(build_operation(op), op.peer, "(it is idempotent)")
        interpret_done(
            response.status_code,
            response.headers,
            response.content,
            peer=op.peer,
            what=f"{what} in Discord channel {op.peer}",
        )

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError(
                f"discord connection for {self._core.channel_id!r} was closed; "
                "open a new one to send"
            )

    async def _rest(self, request: RestRequest, peer: str, retry_note: str) -> Answer:
        """Perform ``request`` within its bucket: wait first when the bucket is known
        to be empty (up to ``max_bucket_wait``, else ``RateLimited``)."""
        route, major = request.route, request.major
        while (wait := self._buckets.reserve(route, major, trio.current_time())) > 0:
            if wait > self._max_bucket_wait:
                raise RateLimited(
                    f"Discord bucket for channel {peer} is empty for {wait:.1f}s more",
                    retry_after=wait,
                    scope=RateLimitScope.CHANNEL,
                    peer=peer,
                )
            await trio.sleep(wait)
        with map_exceptions(
            {
                **_transport_errors(
                    lambda exc: (
                        f"{request.method} to Discord channel {peer} failed: {exc!r}; retry "
                        f"{retry_note}"
                    )
                ),
                # A URL httpx refuses to make (an id the checks let through): the
                # same request never can be; before, the channel's actor crashed.
                httpx.InvalidURL: lambda exc: PermanentSendError(
                    f"{request.method} to Discord channel {peer}: the request cannot be "
                    f"made ({type(exc).__name__}); not retried",
                    peer=peer,
                ),
            }
        ):
            call = functools.partial(
                fetch,
                self._http,
                request.method,
                request.path,
                deadline=self._request_deadline,
                max_body=self._max_body_bytes,
                what=f"{request.method} to Discord channel {peer}",
            )
            if request.files:
                files = [
                    (f"files[{n}]", (upload.filename, upload.data, upload.mime_type))
                    for n, upload in enumerate(request.files)
                ]
                payload = json.dumps(request.json or {})
                response = await call(data={"payload_json": payload}, files=files)
            else:
                response = await call(json=request.json)
        now = trio.current_time()
        status = response.status_code
        body = response.content if status == 429 else b""  # its exact retry_after
        self._buckets.update(route, major, status, response.headers, now, body=body)
        return response

    def session_state(self) -> SessionState:
        """``session_id``, ``seq`` and ``resume_gateway_url`` for a later resume.

        The ``seq`` is that of the last event the consumer took while events
        wait in the buffer (a consumer held back by its store): they die
        with this connection, and the resume must have the gateway replay
        them. Duplicates of a replay are dropped by id downstream.
        """
        state = self._core.session_state()
        unread = self._receive_events.statistics().current_buffer_used
        if state.data and unread:
            # The last event taken was of another session (an op 9 began this
            # one): none of this session's was taken, so it is resumed from its
            # start, not after a seq of the other's.
            same = self._taken_session == state.data.get("session_id")
            seq = self._taken_seq if same else 0
            state = SessionState(provider="discord", data={**state.data, "seq": seq})
        return state

    async def close(self, *, resumable: bool = True) -> None:
        """Close the gateway socket: code 4000 keeps the session, 1000 ends it."""
        if self._closed:
            return
        self._closed = True
        # The close frame goes out while the socket's reader still runs, so the
        # gateway's answer ends the handshake at once; with the driver (and
        # the reader) cancelled first, every close sat out CLOSE_TIMEOUT, and a
        # moving channel stayed dark that long.
        try:
            for action in self._core.close(resumable=resumable):
                if isinstance(action, CloseSocket) and self._ws is not None:
                    await self._close_socket(self._ws, action)
        finally:
            self._drive_scope.cancel()
            self._send_events.close()

    # --- the driver ---------------------------------------------------------------------

    async def _drive(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Run gateway sockets until closed; ``started()`` at the first READY/RESUMED."""
        with self._drive_scope:
            try:
                while not self._closed:  # close() has the last socket: no new one
                    reconnect = await self._run_socket(None if self._started else task_status)
                    await trio.sleep(reconnect.delay)
                await trio.sleep_forever()  # close() cancels us
            except ProviderError as error:
                if not self._started:
                    raise
                self._error = error
                self._send_events.close()

    async def _run_socket(self, task_status: Any) -> Reconnect:
        """Open one gateway socket and pump it until the core asks for another.

        trio-websocket raises some of the peer's faults in its reader task
        (an upgrade refused with an HTTP status, a 101 whose accept key is
        wrong, wsproto's protocol errors): that task runs in a nursery of
        this socket's own, so they end this socket as a mapped
        :class:`TransientError` instead of crashing the connection.
        """
        url = self._core.connect_url()
        resumable = "stays resumable" if self._core.resumable else "will identify"
        with map_exceptions(
            _gateway_errors(
                lambda exc: (
                    f"the Discord gateway at {url} failed: {_socket_fault(exc)}; "
                    f"the session {resumable}"
                )
            )
        ):
            async with _open_socket_nursery() as socket_nursery:
                with trio.fail_after(self._connect_timeout):
                    ws = await connect_websocket_url(
                        socket_nursery,
                        url,
                        _gateway_tls(url),
                        max_message_size=self._max_message_bytes,
                    )
                self._ws = ws
                self.sockets_opened += 1
                try:
                    await self._apply(ws, self._core.connection_made(trio.current_time()))
                    return await self._pump(ws, task_status)
                finally:
                    with trio.move_on_after(CLOSE_TIMEOUT):
                        await ws.aclose()
                    socket_nursery.cancel_scope.cancel()
        raise AssertionError("unreachable: the socket's block returns or raises")

    async def _pump(self, ws: WebSocketConnection, task_status: Any) -> Reconnect:
        """Read and time one socket until the core asks for another."""
        core = self._core
        inflater = (
            Inflater(core.compress, self._max_message_bytes) if core.compress is not None else None
        )
        self.inflater = inflater
        while True:
            deadline = core.next_deadline()
            actions: list[Action] = []
            message: str | bytes | None = None
            lost: ConnectionClosed | None = None
            with trio.move_on_at(math.inf if deadline is None else deadline) as scope:
                try:
                    message = await ws.get_message()
                except ConnectionClosed as exc:
                    lost = exc
            if self._closed:
                # close() has the socket: it sends the close frame, this socket's
                # reader reads the gateway's answer, and close() then cancels us.
                await trio.sleep_forever()
            now = trio.current_time()
            if lost is not None:
                code = lost.reason.code if lost.reason is not None else None
                why = (lost.reason.reason if lost.reason is not None else None) or ""
                actions = core.connection_lost(code, now, why)
            elif scope.cancelled_caught:
                actions = core.timer(now, due=deadline)
            elif message is not None:
                payload: str | bytes | None = message
                if inflater is not None:
                    try:
                        payload = inflater.feed(message)
                    except CompressionError as error:
                        payload = None
                        actions = core.protocol_error(str(error), now)
                if payload is not None:
                    actions = core.receive(payload, now)
            reconnect = await self._apply(ws, actions)
            if task_status is not None and core.state is GatewayState.CONNECTED:
                task_status.started()
                task_status = None
                self._started = True
            if reconnect is not None:
                return reconnect

    async def _apply(self, ws: WebSocketConnection, actions: list[Action]) -> Reconnect | None:
        for action in actions:
            if isinstance(action, SendFrame):
                # A closed socket is reported, with its code, by the next get_message().
                with contextlib.suppress(ConnectionClosed):
                    await ws.send_message(action.text())
            elif isinstance(action, CloseSocket):
                await self._close_socket(ws, action)
            elif isinstance(action, EmitEvent):
                await self._emit(action.event)
            elif isinstance(action, Reconnect):
                return action
            elif isinstance(action, Fail):
                raise action.error
        return None

    async def _close_socket(self, ws: WebSocketConnection, action: CloseSocket) -> None:
        with trio.move_on_after(CLOSE_TIMEOUT):
            await ws.aclose(action.code, action.reason)

    async def _emit(self, event: Event) -> None:
        # Backpressure: with the buffer full (a consumer held back by its store)
        # the driver waits and reads no more. Its heartbeats wait too, so the
        # gateway may drop the socket meanwhile: the core then resumes from the
        # last seq received, and every event up to it is in the buffer.
        with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
            await self._send_events.send((event, self._core.seq, self._core.session_id))
