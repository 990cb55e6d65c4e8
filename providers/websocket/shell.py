"""The trio shell around :mod:`providers.websocket.core`, on a link of ``websockets``' protocol.

Design: the shell only moves bytes and time. Each connection has exactly one
task of its own, the reader: it waits for bytes from the
:class:`~providers.websocket.link.WebSocketLink` under a long-lived cancel
scope that the run's timer service cancels at ``core.next_deadline()``
(:mod:`providers.websocket.timers`), so frames, pongs and timers
(``core.tick``) reach the core one at a time and never race. Over a
socket of its own (``ws://`` and ``wss://``), the parked reader's bytes are
read and applied by the run's read hub (:mod:`providers.websocket.hub`)
as far as nothing waits: an ack and a receipt the channel takes never wake
the reader's task (:meth:`WebSocketConnection._take`). Pings are
plain frames whose pongs the reader feeds back, so they need no task
either. A node runs ten thousand of these connections:
one task of its own, no trio-websocket machinery (see
``providers.websocket.link``) and a small event buffer instead of a trio
memory channel keep a whole channel, actor included, near 23 KB (measured
at 10,000 channels; a bare trio-websocket connection with its reader costs
about 17 KB here). The reader lives in a nursery owned by
:meth:`WebSocketProvider.open_connection`, so it never outlives the block,
and it never raises: failures are recorded in the core and ``events()``
raises them, so what leaves the block is its own exception, which
:func:`providers._nursery.open_connection_nursery` hands back unwrapped by
an ExceptionGroup. Link and OS errors are mapped into the provider error
tree here, at the boundary, through one table (:func:`_connect_errors`) and
:class:`~providers._exceptions.map_exceptions`, and chained.

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
import os
from collections.abc import AsyncIterator, Callable, Mapping
from types import TracebackType
from typing import Any, Final
from urllib.parse import urlencode, urlsplit, urlunsplit

import attrs
import trio
import trio.lowlevel
from trio.lowlevel import Task

from providers._exceptions import ExceptionMap, map_exceptions
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
from providers.media import read_upload
from providers.operations import (
    DeleteMessage,
    EditMessage,
    MarkRead,
    Operation,
    OperationKind,
    React,
    SendTyping,
)
from providers.options import (
    OptionValueError,
    buffer_size,
    limit,
    options_converter,
    options_error,
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
    unacknowledged,
)
from .hub import started_hub
from .link import (
    MAX_MESSAGE_SIZE,
    Closed,
    Incoming,
    LinkClosed,
    LinkHandshakeFailed,
    LinkRejected,
    Pong,
    WebSocketLink,
    open_link,
    tls_context,
)
from .timers import ReaderTimer, timer_service

__all__ = ["WEBSOCKET_LIMITS", "WebSocketConnection", "WebSocketOptions", "WebSocketProvider"]

#: Generous defaults: a generic endpoint is usually our own or a partner's
#: server, limited by its capacity rather than by an anti-spam policy.
WEBSOCKET_LIMITS: Final = PlatformLimits(
    per_channel_rate=100.0,  # messages per second
    per_channel_burst=200,
    per_peer_rate=10.0,  # messages per second
    per_peer_burst=20,
    max_text_length=16_384,  # characters
    max_upload_bytes=8 * 1024 * 1024,  # bytes, before base64 (frames stay moderate)
)
MAX_UPLOAD_BYTES: Final = WEBSOCKET_LIMITS.max_upload_bytes


def _positive(instance: Any, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{attribute.name} must be a positive number of seconds, got {value!r}")


def _trust_store(instance: Any, attribute: attrs.Attribute[Any], value: str | None) -> None:
    """``ca_file`` is an absolute path, and loads (the context it makes is the one
    its links use). An empty one would be no file, the system's store, and a
    relative one would depend on the directory the node was started in."""
    if value is None:
        return
    if not os.path.isabs(value):
        raise OptionValueError(
            f"options.{attribute.name} is {'empty' if not value else repr(value)}; "
            "expected the absolute path of a PEM file of certificate authorities"
        )
    try:
        tls_context(value)
    except (OSError, ValueError) as exc:  # (ssl.SSLError is an OSError)
        raise OptionValueError(
            f"options.{attribute.name}: the certificate authorities in {value!r} "
            f"cannot be loaded: {exc}"
        ) from None


@attrs.frozen(kw_only=True)
class WebSocketOptions:
    """``ChannelConfig.options`` for the websocket provider.

    Attributes:
        ping_interval: seconds of silence from the server before a websocket ping
            (a frame from it puts the ping off); None disables keepalive.
        pong_timeout: seconds a pong may take before the link is dead.
        liveness_timeout: seconds without any application frame (heartbeats
            count, pongs do not) before the link is dead; None disables it.
        send_timeout: seconds a send waits for its ack.
        connect_timeout: seconds for TCP, the handshake and the ``ready`` frame.
        close_timeout: seconds the closing handshake may take before the
            socket is simply closed.
        token_in_query: send the token as ``?token=`` instead of a header.
        event_buffer: inbound events buffered for a slow consumer; beyond it the
            reader stops reading (the server's TCP window closes) until there is
            room, and the keepalive does not count that time against the link.
        max_message_bytes: the largest message read, in bytes (a text's in
            UTF-8); a larger one closes the link with 1009 as its frame's
            header comes, before its bytes are read: a transient error (the
            channel reconnects with backoff).
        ca_file: for ``wss://``, the absolute path of a PEM file of the
            certificate authorities the server's certificate must chain to,
            instead of the system's trust store (a platform behind a private
            CA). Read once per process:
            one that cannot be read, or holds no certificate, is refused with
            the options (the channel fails; ``switchboard check`` names it).
    """

    ping_interval: float | None = attrs.field(default=20.0, validator=_positive)
    pong_timeout: float = attrs.field(default=10.0, validator=_positive)
    liveness_timeout: float | None = attrs.field(default=60.0, validator=_positive)
    send_timeout: float = attrs.field(default=10.0, validator=_positive)
    connect_timeout: float = attrs.field(default=10.0, validator=_positive)
    close_timeout: float = attrs.field(default=2.0, validator=_positive)
    token_in_query: bool = False
    event_buffer: int = attrs.field(default=1024, validator=buffer_size)
    max_message_bytes: int = attrs.field(default=MAX_MESSAGE_SIZE, validator=limit("bytes"))
    ca_file: str | None = attrs.field(default=None, validator=_trust_store)


_OPTIONS: Final = options_converter()
_ANSWERED: Final = (OutboundMessage, EditMessage)  # the operations a send answers with a result


_PARSED_MAX: Final = 256  # distinct option sets remembered (channels mostly share a few)
_parsed: dict[tuple[tuple[str, type, Any], ...], WebSocketOptions] = {}


def parse_options(options: Mapping[str, Any]) -> WebSocketOptions:
    """Validate ``options`` into :class:`WebSocketOptions`.

    Parsed once per distinct set of options (the result is frozen): every
    connect asks, and channels mostly share theirs. The key holds each
    value's type, so ``True`` is not taken for ``1``.

    Raises:
        FatalError: unknown keys or bad values (retrying cannot fix a config).
    """
    try:
        key = tuple((name, type(value), value) for name, value in sorted(options.items()))
        found = _parsed.get(key)
    except TypeError:  # names that do not sort, a value that is no key: parsed every time
        return _parse_options(options)
    if found is None:
        found = _parse_options(options)
        if len(_parsed) < _PARSED_MAX:
            _parsed[key] = found
    return found


def _parse_options(options: Mapping[str, Any]) -> WebSocketOptions:
    try:
        return _OPTIONS.structure(dict(options), WebSocketOptions)
    except Exception as exc:
        raise FatalError(f"invalid websocket channel options: {options_error(exc)}") from exc


class WebSocketConnection:
    """One open websocket channel (see :class:`providers.base.Connection`)."""

    __slots__ = (
        "_config",
        "_core",
        "_events",
        "_link",
        "_now",
        "_nursery",
        "_options",
        "_ready",
        "_resumable",
        "_take_at_once",
        "_timer",
        "_waiters",
        "channel_id",
    )

    def __init__(
        self, config: ChannelConfig, options: WebSocketOptions, nursery: trio.Nursery
    ) -> None:
        self.channel_id = config.channel_id
        self._config = config
        self._options = options
        self._nursery = nursery
        # The run's clock reader: trio.current_time less two frames (read on every send).
        self._now = trio.lowlevel.current_clock().current_time
        self._core = WebSocketCore(
            config.channel_id,
            now=self._now(),
            ping_interval=options.ping_interval,
            pong_timeout=options.pong_timeout,
            liveness_timeout=options.liveness_timeout,
            send_timeout=options.send_timeout,
        )
        self._link: WebSocketLink | None = None
        self._events = _EventBuffer(options.event_buffer)
        self._waiters: dict[str, _Waiter] = {}
        self._ready: trio.Event | None = trio.Event()  # dropped once _start is over
        self._timer: ReaderTimer | None = None  # the reader's, while it runs
        self._resumable = True
        self._take_at_once: Callable[[Event], bool] | None = None

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
        while (event := await self._events.get()) is not None:
            yield event
        if self._core.phase is Phase.FAILED and self._core.failure is not None:
            raise self._core.failure

    def take_events_at_once(self, take: Callable[[Event], bool] | None) -> None:
        """Offer each event to ``take`` first, where it is read (``None``: stop): in
        the read hub's task or the reader's, in the reader's context.

        Offered only while no event waits ahead of it and the consumer of
        :meth:`events` waits for one, so order holds; ``take`` returns True
        for an event it took (it never reaches :meth:`events`), and must
        neither block nor raise. One task step fewer per event taken: the
        hop to the consumer's task (a channel takes its receipts so).
        """
        self._take_at_once = take

    async def send(self, msg: OutboundMessage) -> SendResult:
        """Send ``msg`` (text, media by URL or uploaded as base64) and wait for the ack.

        Raises:
            TransientError: no ack within ``send_timeout``, or the link failed
                or was closed before the ack.
            RateLimited: the server asked us to wait.
            FatalError: the token is refused or banned.
            PermanentSendError: bad recipient, too long, or a template.
        """
        if msg.media is not None and msg.media.path is not None:
            upload = await read_upload(
                msg.media, limit=MAX_UPLOAD_BYTES, peer=msg.peer, platform="websocket"
            )
            media = attrs.evolve(
                msg.media,
                path=None,
                content=upload.data,
                filename=upload.filename,
                mime_type=upload.mime_type,
            )
            msg = attrs.evolve(msg, media=media)
        result = await self._perform(msg)
        assert result is not None
        return result

    async def edit(self, op: EditMessage) -> SendResult:
        """Replace a sent message's text; the ack names the message.

        Raises:
            MessageNotFound: the server has no such message (``not_found``).
            The errors of :meth:`send` otherwise.
        """
        result = await self._perform(op)
        assert result is not None
        return result

    async def delete(self, op: DeleteMessage) -> None:
        """Delete a message (``delete`` frame); errors as :meth:`edit`."""
        await self._perform(op)

    async def typing(self, op: SendTyping) -> None:
        """Show a chat action (``typing`` frame); errors as :meth:`send`."""
        await self._perform(op)

    async def mark_read(self, op: MarkRead) -> None:
        """Mark an inbound message read (``read`` frame); errors as :meth:`edit`."""
        await self._perform(op)

    async def react(self, op: React) -> None:
        """Set or remove the bot's reaction (``react`` frame); errors as :meth:`edit`."""
        await self._perform(op)

    async def _perform(self, msg: Operation) -> SendResult | None:
        """Send the frame for ``msg`` and wait for its ack (or error)."""
        waiter = self._waiters.get(msg.idempotency_key)
        if waiter is None:
            actions = self._core.start_send(msg, self._now())
            waiter = self._waiters[msg.idempotency_key] = _Waiter(msg)
            # Made before the frame goes: its fate may come while this task
            # still waits in the link (for its lock, or writing the reader's frames).
            waiter.done = trio.Event()
            await self._apply(actions, schedule=False)  # the wait below is the checkpoint
        elif waiter.done is None:  # joins a send started at once
            waiter.done = trio.Event()
        await waiter.done.wait()
        error = waiter.error
        if error is None:
            return waiter.answer()
        # Neither the waiter (which keeps the error for every task that waits on it)
        # nor the error stays in this frame, which the error's traceback holds.
        del waiter
        try:
            raise error
        finally:
            del error

    def can_start_at_once(self, msg: Operation) -> bool:
        """Whether :meth:`start_at_once` can send ``msg`` now, without waiting for anything.

        It can while the link is open and ready, nobody else writes to it
        (``ws://`` or ``wss://``), no send with the same key is out, and
        ``msg`` uploads no file.
        """
        if type(msg) is OutboundMessage and msg.media is not None and msg.media.path is not None:
            return False
        link = self._link
        return (
            link is not None
            and link.can_send_now
            and self._core.phase is Phase.OPEN
            and msg.idempotency_key not in self._waiters
        )

    def start_at_once(
        self, msg: Operation, done: Callable[[SendResult | None, ProviderError | None], None]
    ) -> None:
        """Send ``msg``'s frame in this call (as :meth:`can_start_at_once` allowed);
        ``done`` hears its fate later, from whichever task learns it.

        No task waits for the ack: ``done`` is called once, with the result
        (``None`` for an operation that has none) or the error :meth:`send`
        would raise, by the read hub or the reader when the answer comes, or
        by whoever ends the link. It must neither block nor raise. One task and two task
        steps fewer per send than a task that awaits :meth:`send`.

        Raises:
            PermanentSendError: ``msg`` cannot be expressed in this protocol
                (nothing was sent, and ``done`` is not called).
        """
        link = self._link
        assert link is not None  # (and the rest that can_start_at_once checked)
        actions = self._core.start_send(msg, self._now())
        self._waiters[msg.idempotency_key] = _Waiter(msg, done)
        for action in actions:
            assert type(action) is SendFrame, action
            try:
                rest = link.send_text_now(action.text)
            except LinkClosed:  # the reader reports the end of the link, and the send's fate
                continue
            if rest is not None:  # the socket is full: the rest in a task, which waits
                self._nursery.start_soon(link.send_rest, rest)
        if self._core.pending == 1:
            # Its ack is the one due first only when no other is out (the core
            # stamps sends in order, with one timeout); else the timer stands.
            self._rearm()

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
        """Connect, wait for ``ready``, start the reader; map every failure."""
        url, headers = _target(self._config, self._options)
        assert self._ready is not None
        timeout = self._options.connect_timeout
        ca_file = self._options.ca_file  # (None: the system's store, for wss:// only)
        try:
            with map_exceptions(_connect_errors(url, timeout)):
                # A plain cancel scope, as fail_after is (less its generator).
                with trio.CancelScope(deadline=self._now() + timeout) as deadline:
                    self._link = await open_link(
                        url,
                        headers,
                        ssl_context=None if ca_file is None else tls_context(ca_file),
                        max_message_size=self._options.max_message_bytes,
                    )
                    self._nursery.start_soon(self._run)
                    await self._ready.wait()
                if deadline.cancelled_caught:
                    await self.close()  # the link may be up: close it before the error leaves
                    raise trio.TooSlowError
        finally:
            self._ready = None
        if self._core.phase is Phase.FAILED and self._core.failure is not None:
            raise self._core.failure

    async def _shutdown(self) -> None:
        """Close gracefully (bounded by ``close_timeout``) if still open; free the socket."""
        await self._apply(self._core.close())
        if self._link is not None:
            await self._link.aclose()

    async def _run(self) -> None:
        """The reader: frames and timers, one at a time, until the link is over.

        The wait for bytes runs under one long-lived cancel scope that only
        the run's timer service cancels, and only while the reader is parked
        in that wait (:mod:`providers.websocket.timers`): a timer never
        interrupts a frame half-applied, and no scope is entered per read.
        A timer that comes due while the reader is busy is handled before it
        next parks. When the service cancels the scope just as bytes came
        (the reader was already rescheduled), the reader leaves the scope
        with them, untouched by any checkpoint, and applies them first.

        Over a socket of its own (``ws://`` and ``wss://``) the reader parks
        in the run's read hub (:mod:`providers.websocket.hub`), which
        applies what came in place (:meth:`_take`) and wakes the reader only
        with what needs a wait: a :class:`_Rest`, applied here as if read
        here.
        """
        link = self._link
        assert link is not None
        core = self._core
        timer = self._timer = timer_service().register(core)
        take = self._take
        data: bytes | _Rest | None = b""  # first, the frames that came with the handshake
        try:
            while True:
                with trio.CancelScope() as scope:  # until a timer fires
                    timer.scope = scope
                    while True:
                        rest: list[Action] = []
                        if isinstance(data, _Rest):  # the part the hub could not apply
                            if data.error is not None:
                                await self._defect(data.error)
                                return
                            items, rest = data.items, data.actions
                        else:
                            try:
                                items = link.feed(data)
                            except Exception as exc:  # a defect in the protocol's reaction
                                await self._defect(exc)
                                return
                        data = b""  # fed: whatever happens next, never fed again
                        await link.flush()  # pongs and close acks first: the peer waits for them
                        if rest:
                            await self._apply(rest, reader=True)
                        now = self._now()
                        for item in items:
                            if isinstance(item, str):  # a text frame: nearly every item
                                actions = core.frame_received(item, now)
                            elif isinstance(item, Pong):
                                actions = core.pong_received(item.payload, now)
                            elif isinstance(item, Closed):
                                actions = core.connection_lost(item.code, item.reason)
                            else:
                                actions = core.frame_received(item, now)
                            await self._apply(actions, reader=True)
                        if link.finished:
                            # Broken by a write (no Closed fed): the core must hear
                            # of it, or its sends and events() wait for good.
                            await self._apply(
                                core.connection_lost(None, "the link broke while sending"),
                                reader=True,
                            )
                            return
                        deadline = core.next_deadline()
                        if deadline < timer.deadline:  # later needs nothing: re-armed lazily
                            timer.arm(deadline)
                        if timer.due is not None:  # came due while the reader was busy:
                            timer.due = deadline  # judged as the core stands now (a stall moves it)
                            break
                        timer.parked = True
                        data = await link.receive_taking(take)
                        timer.parked = False
                        if timer.due is not None:  # fired as the bytes came: the scope is cancelled
                            break
                timer.parked = False
                if data == b"":  # else: apply the bytes first, in a new scope, then tick
                    due, timer.due = timer.due, None
                    await self._apply(core.tick(self._now(), due=due), reader=True)
        finally:
            self._timer = None
            timer.close()
            # No close frame is fed from now on: a closing handshake (a kill
            # cancels the reader, then the shielded close runs) does not wait
            # out close_timeout for one.
            link.reading_ended()

    async def _defect(self, exc: Exception) -> None:
        """The protocol failed on the peer's bytes (a defect): the link is lost."""
        assert self._link is not None
        why = f"the link failed: {repr(exc)[:200]}"
        await self._apply(self._core.connection_lost(None, why), reader=True)
        await self._link.aclose()

    def _take(self, data: bytes) -> _Rest | None:
        """Apply ``data`` in the read hub's task, as far as nothing has to wait
        (the reader stays parked): ``None``, or the rest for the reader.

        What is applied here is what :meth:`_run` and :meth:`_apply` would
        do, in the same order: frames and pongs into the core, a send's
        completion, and an event the channel takes at once. Anything else (a
        reply the peer waits for, a close, a frame to send, an event for the
        buffer, the link's end) goes to the reader with everything after it;
        the reader offers an event the channel did not take once more.
        """
        link = self._link
        assert link is not None
        try:
            items = link.feed(data)
        except Exception as exc:
            return _Rest([], [], exc)
        if link.owes_replies:
            return _Rest(items, [])
        core = self._core
        waiters = self._waiters
        take = self._take_at_once
        events = self._events
        hub = started_hub()  # (the caller)
        now = self._now()
        for index, item in enumerate(items):
            if hub is not None and hub.reader_cancelled:
                # A callback killed the channel (the send's, the event's):
                # the rest is the reader's, whose task sees the cancellation.
                return _Rest(items[index:], [])
            if isinstance(item, str):  # a text frame: nearly every item
                actions = core.frame_received(item, now)
            elif isinstance(item, Pong):
                actions = core.pong_received(item.payload, now)
            elif isinstance(item, Closed):  # the reader's
                return _Rest(items[index:], [])
            else:
                actions = core.frame_received(item, now)
            for at, action in enumerate(actions):
                if type(action) is CompleteSend:
                    waiter = waiters.pop(action.key, None)
                    if waiter is not None:
                        waiter.settle(action.result, action.error)
                elif not (
                    type(action) is Emit and take is not None and events.idle and take(action.event)
                ):
                    return _Rest(items[index + 1 :], actions[at:])
        if link.finished:
            return _Rest([], [])
        self._rearm()
        return None

    async def _apply(
        self, actions: list[Action], *, schedule: bool = True, reader: bool = False
    ) -> None:
        """Carry out the core's actions in order.

        ``schedule``: see ``WebSocketLink.send_text``. ``reader``: the reader
        carries them out; its frames never wait for a sender's (``queue``).
        """
        for action in actions:
            # The two actions of every send first: its completion, its receipt's Emit.
            if isinstance(action, CompleteSend):
                waiter = self._waiters.pop(action.key, None)
                if waiter is not None:
                    waiter.settle(action.result, action.error)
            elif isinstance(action, Emit):
                take = self._take_at_once
                if take is not None and self._events.idle and take(action.event):
                    continue
                if isinstance(action.event, ConnectionStateChanged):
                    self._set_ready()
                # closed while we waited for buffer space: nobody wants it any more
                began = self._now()
                with contextlib.suppress(trio.ClosedResourceError):
                    await self._events.put(action.event)
                # A full buffer stops the reading (backpressure): the timers must
                # not count that against the link (see WebSocketCore.reader_stalled).
                await self._apply(self._core.reader_stalled(began, self._now()), reader=reader)
            elif isinstance(action, SendFrame):
                assert self._link is not None
                # A closed link is the reader's to report, with the peer's close code
                # when a close frame came: a frame answered in the same read as the
                # close must not turn a clean close into "the TCP link broke".
                with contextlib.suppress(LinkClosed):
                    await self._link.send_text(action.text, schedule=schedule, queue=reader)
            elif isinstance(action, SendPing):
                assert self._link is not None
                with contextlib.suppress(LinkClosed):  # the reader sees the end of the link
                    await self._link.ping(action.payload, queue=reader)
            elif isinstance(action, Fail):
                self._set_ready()
                link = self._link
                if link is not None and link.refused_peer:
                    # We closed it over the server's frames: let the server read
                    # why before the consumer hears of it and may close the socket.
                    with trio.move_on_after(self._options.close_timeout):
                        await link.read_out()
                self._events.close()
                await self._end_link(1000, "client gives up on the link", handshake=False)
            elif isinstance(action, CloseLink):
                self._set_ready()
                # Handshake first, then end the events: a consumer that leaves
                # the connection's block when they end would cut the handshake.
                await self._end_link(action.code, action.reason, handshake=True)
                self._events.close()
        self._rearm()

    def _rearm(self) -> None:
        timer = self._timer
        if timer is not None and timer.parked:
            # The reader arms its timer before it parks; while it is parked,
            # a change here (a send starts) may bring the deadline earlier.
            # Only ever earlier: the service finds a later one by itself.
            deadline = self._core.next_deadline()
            if deadline < timer.deadline:
                timer.arm(deadline)

    def _settle_waiters(self, why: str) -> None:
        """Give every send still waiting for an ack its error: the link is over.

        The core hands each pending send a ``CompleteSend`` when the link
        ends; this is for the ones whose completion was cut off (the reader
        cancelled while it applied them), so that no send waits for good.
        """
        waiters, self._waiters = self._waiters, {}
        for key, waiter in waiters.items():
            waiter.settle(None, unacknowledged(key, why))

    def _set_ready(self) -> None:
        if self._ready is not None:
            self._ready.set()

    async def _end_link(self, code: int, reason: str, *, handshake: bool) -> None:
        """Send a close frame and close the socket, within ``close_timeout``.

        With ``handshake``, wait for the server's close frame in between (the
        reader feeds it); a link declared dead is not waited for.
        """
        link = self._link
        if link is None:
            return
        with trio.move_on_after(self._options.close_timeout):
            with contextlib.suppress(LinkClosed):
                await link.close(code, reason)
            if handshake:
                await link.wait_closed()
        await link.aclose()


class _Rest:
    """What the read hub left for the reader (see ``WebSocketConnection._take``):
    the rest of one item's ``actions``, then ``items`` to apply; or the
    protocol's ``error`` on the bytes."""

    __slots__ = ("actions", "error", "items")

    def __init__(
        self, items: list[Incoming], actions: list[Action], error: Exception | None = None
    ) -> None:
        self.items = items
        self.actions = actions
        self.error = error


class _EventBuffer:
    """Events on their way from the reader to the consumer of ``events()``.

    A bounded FIFO, as a trio memory channel would be, at a fraction of its
    size (ten thousand connections each hold one, and an idle channel's
    consumer always waits in it): a list, and the parked tasks, put to sleep
    with ``trio.lowlevel.wait_task_rescheduled`` as the actor kernel does,
    with no ``trio.Event`` or parking lot. When ``capacity`` events wait, the
    reader waits too (a wait the keepalive does not count against the link).
    Neither side
    yields when it does not have to wait: a burst of frames is parsed, and
    a backlog of events consumed, in one go (each is bounded by the other's
    capacity).
    """

    __slots__ = ("_capacity", "_closed", "_consumers", "_head", "_items", "_producers")

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._items: list[Event] = []
        self._head = 0  # index of the next event to hand out
        self._closed = False
        self._consumers: list[Task] = []  # waiting for an event
        self._producers: list[Task] = []  # waiting for room

    @property
    def idle(self) -> bool:
        """No event waits, and the consumer waits for one (it handles none now)."""
        return self._head == len(self._items) and bool(self._consumers) and not self._closed

    async def put(self, event: Event) -> None:
        """Append ``event``, first waiting for room if the buffer is full.

        Raises:
            trio.ClosedResourceError: the buffer was closed.
        """
        while not self._closed and len(self._items) - self._head >= self._capacity:
            await _park(self._producers)
        if self._closed:
            raise trio.ClosedResourceError("the connection's events have ended")
        self._items.append(event)
        _unpark_all(self._consumers)

    async def get(self) -> Event | None:
        """The next event, waiting for one; ``None`` once closed and drained."""
        items = self._items
        while self._head == len(items):
            if self._closed:
                return None
            await _park(self._consumers)
        event = items[self._head]
        self._head += 1
        if self._head == len(items):
            items.clear()
            self._head = 0
        elif self._head >= self._capacity:  # a consumer that never quite catches up
            del items[: self._head]
            self._head = 0
        _unpark_all(self._producers)
        return event

    def close(self) -> None:
        """No more events: the consumer gets the buffered ones, then the end."""
        self._closed = True
        _unpark_all(self._consumers)
        _unpark_all(self._producers)


async def _park(waiting: list[Task]) -> None:
    """Sleep in ``waiting`` until :func:`_unpark_all` (or a cancellation)."""
    task = trio.lowlevel.current_task()
    waiting.append(task)

    def abort(_: Any) -> trio.lowlevel.Abort:
        waiting.remove(task)
        return trio.lowlevel.Abort.SUCCEEDED

    await trio.lowlevel.wait_task_rescheduled(abort)


def _unpark_all(waiting: list[Task]) -> None:
    for task in waiting:
        trio.lowlevel.reschedule(task)
    waiting.clear()


class _Waiter:
    """A send out on the link, until its ack (or error) comes.

    Attributes:
        done: set once settled, for a task that waits (made by the first).
        then: called once settled, for a send nobody waits for (``start_at_once``).
    """

    __slots__ = ("done", "error", "msg", "result", "then")

    def __init__(
        self,
        msg: Operation,
        then: Callable[[SendResult | None, ProviderError | None], None] | None = None,
    ) -> None:
        self.msg = msg
        self.then = then
        self.done: trio.Event | None = None
        self.result: SendResult | None = None
        self.error: ProviderError | None = None

    def answer(self) -> SendResult | None:
        """The result as :meth:`WebSocketConnection.send` returns it (``None`` for the others)."""
        assert self.result is not None
        return self.result if isinstance(self.msg, _ANSWERED) else None

    def settle(self, result: SendResult | None, error: ProviderError | None) -> None:
        self.result, self.error = result, error
        if self.done is not None:
            self.done.set()
        then = self.then
        if then is not None:
            self.then = None
            if error is not None:
                then(None, error)
            else:
                then(self.answer(), None)


class WebSocketProvider:
    """A generic JSON-over-websocket platform (see :mod:`providers.websocket.core`).

    Args:
        limits: the platform limits; :data:`WEBSOCKET_LIMITS` by default.
    """

    name = "websocket"
    operations = frozenset(OperationKind)

    def __init__(self, *, limits: PlatformLimits = WEBSOCKET_LIMITS) -> None:
        self.limits = limits

    def __repr__(self) -> str:
        return f"<WebSocketProvider limits={self.limits.per_channel_rate}/s>"

    def open_connection(
        self, config: ChannelConfig, session: SessionState | None = None
    ) -> WebSocketBlock:
        """Connect ``config.base_url`` and wait for the server's ``ready``.

        Used as ``async with provider.open_connection(config) as conn:``.

        Args:
            config: ``base_url``, ``credentials["token"]`` and options.
            session: accepted for the protocol; this server protocol has no replay.

        Raises:
            TransientError: network errors, timeouts, server closes.
            RateLimited: the server refused the connection for a while.
            FatalError: bad options, a refused or banned token.
        """
        return WebSocketBlock(config, session)


class WebSocketBlock:
    """The ``async with`` block of :meth:`WebSocketProvider.open_connection`.

    A class rather than an ``@asynccontextmanager``, as
    :class:`~providers._nursery.open_connection_nursery` is: every connected
    channel holds its block for the connection's life, and a generator-based
    manager would keep a manager object, a suspended generator frame and
    trio's weak reference to the generator besides (about 600 bytes). The
    steps are the generator's: validate, open the nursery, connect; on the
    way out (or when the connect fails) a shielded close, then the reader
    is cancelled and the nursery hands back the block's lone exception
    unwrapped.
    """

    __slots__ = ("_config", "_conn", "_manager", "_session")

    def __init__(self, config: ChannelConfig, session: SessionState | None) -> None:
        self._config = config
        self._session = session
        self._manager: open_connection_nursery | None = None
        self._conn: WebSocketConnection | None = None

    async def __aenter__(self) -> WebSocketConnection:
        config = self._config
        options = parse_options(config.options)
        url = urlsplit(config.base_url or "")
        if url.scheme not in ("ws", "wss") or not url.hostname:
            raise FatalError(
                f"channel {config.channel_id}: the websocket provider needs base_url "
                f"ws://host:port/path (or wss://), got {config.base_url!r}"
            )
        manager = self._manager = open_connection_nursery()
        nursery = await manager.__aenter__()
        conn = self._conn = WebSocketConnection(config, options, nursery)
        try:
            await conn._start(self._session)
        except BaseException as exc:
            failure = exc
        else:
            return conn
        try:
            # Outside the except clause: what leaves is the very exception raised
            # (or the nursery's group, when a task failed too).
            await self._end(failure)
            raise failure
        finally:
            del failure  # no cycle through this frame's traceback

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        return await self._end(exc)

    async def _end(self, exc: BaseException | None) -> bool:
        """Close (shielded), cancel the reader, leave the nursery with ``exc``."""
        conn, manager = self._conn, self._manager
        assert conn is not None and manager is not None
        self._conn = self._manager = None
        try:
            with trio.CancelScope(shield=True):
                await conn._shutdown()
        except BaseException as failure:
            conn._settle_waiters("the connection ended")
            conn._nursery.cancel_scope.cancel()
            if exc is not None and failure.__context__ is None:
                failure.__context__ = exc
            if not await manager.__aexit__(type(failure), failure, failure.__traceback__):
                raise
            return True
        conn._settle_waiters("the connection ended")
        conn._nursery.cancel_scope.cancel()
        if exc is None:
            return await manager.__aexit__(None, None, None)
        return await manager.__aexit__(type(exc), exc, exc.__traceback__)


def _target(
    config: ChannelConfig, options: WebSocketOptions
) -> tuple[str, list[tuple[bytes, bytes]]]:
    assert config.base_url is not None
    token = config.credentials.get("token", "")
    if options.token_in_query and token:
        parts = urlsplit(config.base_url)
        query = "&".join(q for q in (parts.query, urlencode({"token": token})) if q)
        return urlunsplit(parts._replace(query=query)), []
    if any(c in token for c in "\r\n\x00"):
        # Refused here, by name: the HTTP layer's error would quote the header (the token).
        raise FatalError(
            f"channel {config.channel_id!r}: credentials['token'] holds CR, LF or NUL, which "
            "an Authorization header cannot carry; fix the credential"
        )
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    return config.base_url, headers


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(query="")) if "token=" in parts.query else url


def _connect_errors(url: str, timeout: float) -> ExceptionMap:
    """The shell's mapping table: connect failures in the provider tree (first match wins)."""
    return {
        trio.TooSlowError: lambda exc: TransientError(
            f"no 'ready' from {_redacted(url)} within {timeout}s; retry with backoff"
        ),
        LinkRejected: lambda exc: _rejected(exc, url),
        (LinkHandshakeFailed, OSError): lambda exc: TransientError(
            f"cannot connect to {_redacted(url)}: {exc!r}; retry with backoff"
        ),
        # open_link refusing the URL itself (its port): retrying cannot fix a config.
        ValueError: lambda exc: FatalError(
            f"cannot connect to {_redacted(url)}: {exc}; fix the channel's base_url"
        ),
    }


def _rejected(exc: LinkRejected, url: str) -> ProviderError:
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
