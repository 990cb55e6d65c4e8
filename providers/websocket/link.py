"""A websocket client link on the sans-I/O protocol of ``websockets``: the shell's transport.

Design: a channel holds its link for hours and a node holds ten thousand of
them, so the link is as small as a websocket can be: a non-blocking socket
(TLS on it through OpenSSL's memory BIOs), read while its reader is parked
by the run's read hub (:mod:`providers.websocket.hub`), one
``websockets`` ``ClientProtocol`` (it speaks the handshake, frames, masks
and the closing handshake; the link only moves bytes), a send lock, and no
task of its own. trio-websocket would add a reader task, a message channel
and the handshake state to every link (11 KB each, measured: 17.6 KB for
its connection and a reader, against 5.8 KB for this link and the shell's
reader), and a task switch to every frame.

Why ``websockets`` and not wsproto (which trio-websocket and hypercorn use,
and this link used before): one send and the two frames that answer it
(an ack and a receipt) cost 13-16 µs in its protocol against 35-58 µs in
wsproto's, measured side by side in one process; its frames are parsed
with less Python and masked in C. On the node's send path that was a
fifth of the node's CPU per message.

The link does not read by itself. Its owner (the shell's reader) drives
it in three steps, so that only the first can be cancelled, by a timer,
without harm:

1. ``await link.receive_bytes()``: the next chunk from the socket (cancel-safe:
   nothing is consumed when it is cancelled);
2. ``link.feed(data)``: parse, synchronously, into messages (``str`` or
   ``bytes``), :class:`Pong` and :class:`Closed` items; pings are answered
   and a peer's close is acknowledged (by the protocol), as control
   replies queued for step 3;
3. ``await link.flush()``: send those replies.

Or, for step 1, ``await link.receive_taking(take)``: the reader parks in
the run's read hub (:mod:`providers.websocket.hub`), which reads the
socket (and decrypts, over TLS) and calls ``take`` with the bytes in its
own task; the reader wakes only with what ``take`` hands back.

Sends (``send_text``, ``ping``, ``close``) may come from any task; one lock
keeps frames whole. A send that is cancelled half-way leaves the stream
unusable, so the link is marked broken and later sends fail.

The reader never waits for that lock. A sender may hold it for long,
blocked on a full socket because the peer reads nothing until its own
writes to us drain; a reader that waited behind it to answer a ping would
stop reading, and both ends would wait for each other for good. So what
the reader sends (the control replies of step 3, and its own frames with
``queue=True``) is framed at once and, while someone holds the lock, left
for the holder, which writes it after its own frame before letting go.

Errors (all :class:`LinkError`, never trio's or websockets' own)::

    LinkError
    ├── LinkRejected          the server answered the upgrade with an HTTP status
    ├── LinkHandshakeFailed   the server does not speak websocket (or hung up)
    └── LinkClosed            the link is closed: by us, by the peer, or broken

Connecting raises ``OSError`` for TCP and TLS failures, untouched.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
from collections.abc import Callable
from functools import partial
from typing import Any, Final
from urllib.parse import urlsplit

import trio
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.streams import StreamReader
from websockets.uri import parse_uri

from .._tls import tls_context
from .hub import ReadHub, read_hub, started_hub

__all__ = [
    "Closed",
    "LinkClosed",
    "LinkError",
    "LinkHandshakeFailed",
    "LinkRejected",
    "Pong",
    "WebSocketLink",
    "open_link",
    "tls_context",
]

RECEIVE_SIZE: Final = 65_536  # bytes read from the socket at once
MAX_MESSAGE_SIZE: Final = 1 << 20  # bytes in one message (a text's in UTF-8)
MAX_REJECT_BODY: Final = 65_536  # bytes of a refusal's body kept for the error
MAX_REJECT_HEAD: Final = MAX_REJECT_BODY + 65_536  # bytes of a refusal kept to re-read it
INVALID_DATA: Final = 1007  # RFC 6455: a text message that is not UTF-8
# Seconds the send lock's holder gives the reader's frames it writes as it
# lets go, cancelled or not; a socket that takes none by then is wedged.
REPLY_GRACE: Final = 5.0


class LinkError(Exception):
    """Base of the link's errors."""


class LinkRejected(LinkError):
    """The server refused the upgrade with an HTTP response.

    Attributes:
        status_code: the HTTP status.
        headers: the response headers, names lower-cased.
        body: the start of the response body.
    """

    def __init__(
        self, status_code: int, headers: list[tuple[bytes, bytes]], body: bytes = b""
    ) -> None:
        super().__init__(f"the server refused the websocket upgrade with HTTP {status_code}")
        self.status_code = status_code
        self.headers = headers
        self.body = body


class LinkHandshakeFailed(LinkError):
    """The server's answer to the upgrade was not a websocket handshake."""


class LinkClosed(LinkError):
    """The link is closed; nothing more can be sent on it."""


class Pong:
    """A pong arrived with this payload."""

    __slots__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def __repr__(self) -> str:
        return f"Pong({self.payload!r})"


class Closed:
    """The link ended: the peer's close ``code`` and ``reason``, or ``code=None``
    when it broke without a close frame (RFC 6455's 1006)."""

    __slots__ = ("code", "reason")

    def __init__(self, code: int | None, reason: str | None) -> None:
        self.code = code
        self.reason = reason

    def __repr__(self) -> str:
        return f"Closed({self.code!r}, {self.reason!r})"


Incoming = str | bytes | Pong | Closed

Buffer = bytes | bytearray | memoryview  # a frame's payload

_TEXT: Final = Opcode.TEXT
_CONT: Final = Opcode.CONT
_PING: Final = Opcode.PING
_PONG: Final = Opcode.PONG
_CLOSE: Final = Opcode.CLOSE


async def open_link(
    url: str,
    headers: list[tuple[bytes, bytes]],
    *,
    ssl_context: ssl.SSLContext | None = None,
    max_message_size: int = MAX_MESSAGE_SIZE,
) -> WebSocketLink:
    """Connect to ``url`` (``ws://`` or ``wss://``) and complete the upgrade.

    Args:
        url: the endpoint, with its path and query.
        headers: extra request headers (``Authorization``...).
        ssl_context: for ``wss://``; the system's trust store if None (one
            context for every link).
        max_message_size: the largest message accepted, in bytes (a text's
            in UTF-8); a larger one closes the link with 1009.

    Raises:
        OSError: TCP or TLS failed.
        LinkRejected: the server answered with an HTTP status instead of 101.
        LinkHandshakeFailed: the answer was not a valid websocket handshake,
            or the server hung up during it.
        ValueError: ``url`` is not a ws:// or wss:// URL, its port is not a
            number from 1 to 65535, or a header holds CR, LF or NUL.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"not a websocket URL: {url!r} (expected ws://host[:port]/path)")
    secure = parts.scheme == "wss"
    try:
        port = parts.port
    except ValueError as exc:  # not a number, or past 65535
        raise ValueError(f"the URL's port is not a number from 1 to 65535 ({exc})") from None
    if port == 0:  # (not the scheme's default: nothing listens on port 0)
        raise ValueError("the URL's port is 0; give one from 1 to 65535, or none")
    if port is None:
        port = 443 if secure else 80
    sock = await _connect_tcp(parts.hostname, port)
    io: _SocketIO | _TLSSocketIO
    tls: _TLSSocketIO | None = None
    if secure:
        try:
            io = tls = _TLSSocketIO(sock, ssl_context or tls_context(), parts.hostname)
        except BaseException:
            sock.close()
            raise
    else:
        io = _SocketIO(sock)
    try:
        if tls is not None:
            await tls.handshake()
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return await _handshake(
            io,
            parts.netloc.rpartition("@")[2],
            target,
            headers,
            secure=secure,
            max_message_size=max_message_size,
        )
    except BaseException:
        await io.aclose()
        raise


async def _connect_tcp(host: str, port: int) -> socket.socket:
    """A connected non-blocking TCP socket (``TCP_NODELAY``).

    A host with one address is connected here; one with several (a
    dual-stack host) by trio's happy eyeballs, which tries the next address
    250 ms after the last began, so one that drops packets (a broken IPv6
    route) does not hold the connect until its timeout.

    Raises:
        OSError: no address could be connected (the last error).
    """
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if len(infos) > 1:
        stream = await trio.open_tcp_stream(host, port)  # (resolves again: a cache's work)
        ours = stream.socket
        sock = socket.socket(ours.family, ours.type, ours.proto, fileno=ours.detach())
        sock.setblocking(False)  # (it is at the OS; this tells Python so)
        return sock
    error: OSError = OSError(f"{host!r} has no address")
    for family, type_, proto, _, address in infos:
        sock = socket.socket(family, type_, proto)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                sock.connect(address)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(sock)
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    raise OSError(code, f"connect to {address}: {os.strerror(code)}") from None
        except OSError as exc:
            sock.close()
            error = exc
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    try:
        raise error
    finally:
        del error  # no cycle through this frame's traceback


class _SocketIO:
    """Bytes over a plain non-blocking socket: its reader parks in the read hub,
    everything else waits through trio's I/O manager.

    Used for ``ws://``: trio's ``SocketStream`` and socket wrapper would add
    about 1.4 KB per link and a few layers to every read and write. Reads and
    writes are checkpoints, as trio's own are.
    """

    __slots__ = ("_sock",)

    backlogged: Final = False  # (see _TLSSocketIO) what send_now took, the socket took

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    @property
    def sock(self) -> socket.socket:
        return self._sock

    async def receive(self) -> bytes | None:
        """The next bytes; ``None`` at the end of the stream or once closed (cancel-safe)."""
        sock = self._sock
        await trio.lowlevel.checkpoint_if_cancelled()
        waited = False
        while True:
            try:
                data = sock.recv(RECEIVE_SIZE)
            except BlockingIOError:
                data = None  # wait outside the handler: the error and its traceback stay alive
            except OSError:  # reset by the peer, or closed by us
                return None
            if data is None:  # across the await otherwise (~0.5 KB per idle link)
                try:
                    await trio.lowlevel.wait_readable(sock)
                except trio.ClosedResourceError:
                    return None
                waited = True
                continue
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()
            return data or None

    async def receive_taking(self, take: Callable[[bytes], Any]) -> Any:
        """Park in this run's :mod:`read hub <providers.websocket.hub>`: what
        ``take`` hands back from the bytes it applied in place, ``None`` at
        the end of the stream or once closed (cancel-safe). Without a hub, the
        next bytes, as :meth:`receive`.
        """
        hub = read_hub()
        if hub is None:
            return await self.receive()
        return await hub.receive(self._sock, take, RECEIVE_SIZE)

    async def send_all(self, data: bytes, *, schedule: bool = True) -> None:
        """Write all of ``data``.

        ``schedule=False``: the caller waits for an answer right after (a
        checkpoint of its own), so a write the socket takes at once lets no
        other task run first (one task step per send fewer); it still raises
        if the caller is cancelled, and waits if the socket is full.

        Raises:
            LinkClosed: the socket is closed or broke.
        """
        sock = self._sock
        await trio.lowlevel.checkpoint_if_cancelled()
        view = memoryview(data)
        waited = False
        while view:
            try:
                view = view[sock.send(view) :]
            except BlockingIOError:
                await self.wait_writable()
                waited = True
            except OSError as exc:
                raise LinkClosed(f"the link broke while sending: {exc}") from exc
        if not waited and schedule:
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def wait_writable(self) -> None:
        """Until the socket takes more.

        Raises:
            LinkClosed: the socket was closed meanwhile.
        """
        try:
            await trio.lowlevel.wait_writable(self._sock)
        except trio.ClosedResourceError as exc:
            raise LinkClosed("the link was closed while sending") from exc

    def send_now(self, data: bytes | bytearray | memoryview) -> int:
        """Write what the socket takes of ``data`` in this call, with no checkpoint.

        Returns:
            How many bytes it took (0 when it is full).

        Raises:
            LinkClosed: the socket is closed or broke.
        """
        try:
            return self._sock.send(data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise LinkClosed(f"the link broke while sending: {exc}") from exc

    async def aclose(self) -> None:
        """Close the socket, waking any task that waits on it; idempotent."""
        sock = self._sock
        if sock.fileno() != -1:
            hub = started_hub()
            if hub is not None:
                hub.closing(sock)
            trio.lowlevel.notify_closing(sock)
            sock.close()
        await trio.lowlevel.checkpoint()


class _More:
    """The TLS engine needs more ciphertext (a marker: ``_MORE``)."""

    __slots__ = ()


_MORE: Final = _More()
_ENDED: Final = object()  # what the TLS link's take hands the hub at the end of the stream


class _TLSSocketIO:
    """TLS over a plain non-blocking socket: the ``wss://`` counterpart of :class:`_SocketIO`.

    OpenSSL does all of TLS (``ssl.SSLObject`` on two memory BIOs, as trio's
    ``SSLStream`` and asyncio's transports use it); this class only carries
    records between the engine and the socket, through a :class:`_SocketIO`
    of its own. What it gives over ``SSLStream``: a write the socket takes
    at once needs no task switch (:meth:`send_now`, the path of a send made
    at once), and reads and writes go through no stream layers, locks or
    conflict detectors.

    Ciphertext leaves the engine in the order it was made: whatever the
    socket did not take waits in one backlog, and every writer (a sender,
    or the reader answering the engine's own records, such as a TLS 1.3
    key update) writes from its front. A writer that must wait for room
    holds the link's lock, so at most one task waits on the socket to write.
    """

    __slots__ = ("_backlog", "_incoming", "_outgoing", "_raw", "_tls")

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, hostname: str) -> None:
        self._raw = _SocketIO(sock)
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_hostname=hostname)
        self._backlog = bytearray()  # ciphertext the socket has not taken yet

    @property
    def backlogged(self) -> bool:
        """Whether ciphertext waits for the socket (after :meth:`send_now`: write it
        with ``send_all(b"")``)."""
        return bool(self._backlog)

    async def handshake(self) -> None:
        """The TLS handshake, certificate and hostname checks included.

        Raises:
            ssl.SSLError: TLS failed (an untrusted certificate, a name that
                does not match, a server that does not speak TLS...).
            OSError: the connection broke or ended during the handshake.
        """
        tls = self._tls
        try:
            while True:
                try:
                    tls.do_handshake()
                except ssl.SSLWantReadError:
                    await self._drain()
                    chunk = await self._raw.receive()
                    if chunk is None:
                        raise ConnectionResetError(
                            "the server closed the connection during the TLS handshake"
                        ) from None
                    self._incoming.write(chunk)
                    continue
                await self._drain()
                return
        except LinkClosed as exc:  # (_drain's word for a broken socket): a connect error
            raise ConnectionResetError(f"during the TLS handshake, {exc}") from None

    async def receive(self) -> bytes | None:
        """The next bytes; ``None`` at the end of the stream or once closed (cancel-safe:
        ciphertext read is kept in the engine).

        The end: the peer's TLS goodbye, the connection ending with or without
        one, or a record that fails TLS's checks (nothing more can be read).
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        read = False  # from the socket: a checkpoint was made there
        while True:
            data = self._decrypt()
            if not isinstance(data, _More):
                if data is not None and not read:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                return data
            chunk = await self._raw.receive()
            if chunk is None:
                return None
            self._incoming.write(chunk)
            read = True

    async def receive_taking(self, take: Callable[[bytes], Any]) -> Any:
        """As ``_SocketIO.receive_taking``, the records decrypted in the hub's task;
        what the engine holds already is returned as bytes, not taken (cancel-safe)."""
        hub = read_hub()
        if hub is None:
            return await self.receive()
        await trio.lowlevel.checkpoint_if_cancelled()
        data = self._decrypt()
        if not isinstance(data, _More):  # decrypted already (or the end): nothing to wait for
            if data is not None:
                await trio.lowlevel.cancel_shielded_checkpoint()
            return data
        taking = partial(self._take_records, take, hub)
        got = await hub.receive(self._raw.sock, taking, RECEIVE_SIZE)
        return None if got is _ENDED else got

    def _take_records(self, take: Callable[[bytes], Any], hub: ReadHub, chunk: bytes) -> Any:
        """In the hub's task: ``chunk`` of ciphertext into the engine, and all it
        decrypts to into ``take`` (a read's worth at a time: the engine may hold
        more than one, and nothing of it is left for the socket to signal). A
        record in parts waits for the rest (``None``: the reader stays parked);
        the end wakes the reader (``_ENDED``)."""
        self._incoming.write(chunk)
        while True:  # until the engine holds nothing more: the socket has nothing of it
            data = self._decrypt()
            if isinstance(data, _More):
                return None
            if data is None:
                return _ENDED
            handed = take(data)
            if handed is not None or hub.reader_cancelled:  # (the rest: the reader's)
                return handed

    def _decrypt(self) -> bytes | _More | None:
        """What the ciphertext received decrypts to; ``None`` at the end (the
        peer's goodbye, an end without one, a forged record); ``_MORE`` when
        more ciphertext is needed. Writes what reading made the engine say."""
        try:
            data = self._tls.read(RECEIVE_SIZE)
        except ssl.SSLWantReadError:
            self._answer()
            return _MORE
        except ssl.SSLError:
            return None
        if not data:
            return None
        data = self._read_more(data)
        self._answer()
        return data

    def _read_more(self, data: bytes) -> bytes:
        """``data`` and whatever else the ciphertext already received decrypts to
        (one record a read otherwise: a read per small frame)."""
        parts = [data]
        size = len(data)
        tls = self._tls
        while size < RECEIVE_SIZE:
            try:
                more = tls.read(RECEIVE_SIZE - size)
            except ssl.SSLError:  # wants more, or the end: the next receive sees it
                break
            if not more:
                break
            parts.append(more)
            size += len(more)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _answer(self) -> None:
        """Put what reading made the engine say (session tickets are only read; a
        key update is answered) behind the backlog, and write what the socket takes;
        a broken socket is left for the next read or write to find."""
        if self._outgoing.pending:
            self._backlog += self._outgoing.read()
            with contextlib.suppress(LinkClosed):
                self._write_some()

    def _write_some(self) -> int:
        """Write what the socket takes of the backlog now; how much it took.

        Raises:
            LinkClosed: the socket broke.
        """
        backlog = self._backlog
        sent = self._raw.send_now(backlog)
        del backlog[:sent]
        return sent

    def send_now(self, data: bytes) -> int:
        """Take all of ``data`` and write what the socket takes of it in this
        call, with no checkpoint; the rest waits in the backlog (:attr:`backlogged`).

        Returns:
            ``len(data)``: the engine took it all.

        Raises:
            LinkClosed: TLS refused, or the socket broke.
        """
        try:
            self._tls.write(data)
        except ssl.SSLError as exc:  # (a renegotiation would want a read: refused above)
            raise LinkClosed(f"TLS refused to send: {exc}") from None
        records = self._outgoing.read()
        if self._backlog:  # behind what waits
            self._backlog += records
            self._write_some()
        else:  # (the common case: no copy into the backlog unless the socket is full)
            sent = self._raw.send_now(records)
            if sent < len(records):
                self._backlog += memoryview(records)[sent:]
        return len(data)

    async def send_all(self, data: bytes, *, schedule: bool = True) -> None:
        """Write all of ``data`` (``b""``: the backlog); ``schedule`` as for
        :meth:`_SocketIO.send_all`.

        Raises:
            LinkClosed: TLS refused, or the socket is closed or broke.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        if data:
            self.send_now(data)
        waited = await self._drain() if self._backlog else False
        if not waited and schedule:
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def _drain(self) -> bool:
        """Write the backlog (and what the engine has to say), waiting for room;
        whether it waited.

        Raises:
            LinkClosed: the socket is closed or broke.
        """
        if self._outgoing.pending:
            self._backlog += self._outgoing.read()
        waited = False
        while self._backlog:
            if not self._write_some():
                await self._raw.wait_writable()
                waited = True
        return waited

    async def aclose(self) -> None:
        """Close the socket at once (no TLS goodbye), waking any task that waits
        on it; idempotent."""
        await self._raw.aclose()


class _StreamIO:
    """Bytes over any trio stream (the tests' memory streams)."""

    backlogged: Final = False

    __slots__ = ("_stream",)

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream

    async def receive(self) -> bytes | None:
        """The next bytes; ``None`` at the end of the stream or once closed (cancel-safe)."""
        try:
            data = await self._stream.receive_some(RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return None
        return bytes(data) or None

    async def send_all(self, data: bytes, *, schedule: bool = True) -> None:
        """Write all of ``data`` (a TLS stream's write is always a checkpoint).

        Raises:
            LinkClosed: the stream is closed or broke.
        """
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise LinkClosed(f"the link broke while sending: {exc}") from exc

    async def aclose(self) -> None:
        """Close the stream at once (no TLS goodbye); idempotent."""
        await trio.aclose_forcefully(self._stream)


async def _handshake(
    io: _SocketIO | _TLSSocketIO | _StreamIO,
    host: str,
    target: str,
    headers: list[tuple[bytes, bytes]],
    *,
    secure: bool = False,
    max_message_size: int = MAX_MESSAGE_SIZE,
) -> WebSocketLink:
    """Send the upgrade over ``io`` and read the answer: the open link, or a link error.

    Raises:
        LinkRejected, LinkHandshakeFailed: see :func:`open_link`.
        LinkClosed: the link broke while the upgrade was being sent.
        ValueError: a header name or value holds CR, LF or NUL (nothing was sent).
    """
    # (open_link checked the URL: a scheme, a host, no fragment, no user)
    uri = parse_uri(f"{'wss' if secure else 'ws'}://{host}{target}")
    protocol = ClientProtocol(uri, max_size=max_message_size)
    protocol.debug = False  # its DEBUG log would write every request header (the token)
    request = protocol.connect()
    for name, value in headers:
        if _UNSAFE.intersection(name) or _UNSAFE.intersection(value):
            # Checked here, not by the HTTP layer: its error would quote the value (a token).
            raise ValueError(
                f"the request header {name.decode('latin-1')!r} holds CR, LF or NUL, "
                "which a header cannot carry; nothing was sent"
            )
        request.headers[name.decode("latin-1")] = value.decode("latin-1")
    protocol.send_request(request)
    try:
        await io.send_all(b"".join(protocol.data_to_send()))
    except LinkClosed as exc:
        raise LinkHandshakeFailed(f"the link broke during the handshake: {exc}") from exc
    heard = False
    head = bytearray()  # the start of the answer: a refusal websockets' parser gives up on
    while True:
        data = await io.receive()
        if data is None:
            protocol.receive_eof()  # a refusal's body may end with the connection
        else:
            heard = True
            if len(head) < MAX_REJECT_HEAD:
                head += data
            protocol.receive_data(data)
        events = protocol.events_received()
        if events:
            response = events[0]
            assert isinstance(response, Response)
            failure = protocol.handshake_exc
            if isinstance(failure, InvalidStatus):
                raise _rejected(response, response.body)
            if failure is not None:
                raise LinkHandshakeFailed(f"bad websocket handshake from the server: {failure}")
            # The protocol's parser keeps the answer for the link's life (a
            # local of its suspended frame): its headers go, 1.5 KB a link.
            response.headers.clear()
            response.body = b""
            # Frames that came with the answer (and replies to them) wait for the first feed.
            return WebSocketLink(io, protocol, early=events[1:])
        failure = protocol.handshake_exc
        if failure is None and data is not None:
            continue  # more of the answer to come
        if failure is not None:
            rejected = _refusal(bytes(head))
            if rejected is not None:
                raise rejected
        if not heard or failure is None:
            raise LinkHandshakeFailed("the server hung up during the websocket handshake")
        cause = failure.__cause__
        # The cause quotes what the server sent, which may echo our request (a token).
        detail = f"{failure}" + (f" ({type(cause).__name__})" if cause is not None else "")
        raise LinkHandshakeFailed(f"bad websocket handshake from the server: {detail}")


def _refusal(head: bytes) -> LinkRejected | None:
    """An HTTP refusal whose body (too big, cut short) or version (HTTP/1.0)
    websockets' parser refused, as the wsproto link reported it: or None."""
    reader = StreamReader()
    reader.feed_data(head)
    reader.feed_eof()
    parser = Response.parse(reader.read_line, reader.read_exact, reader.read_to_eof, proxy=True)
    try:
        next(parser)
    except StopIteration as done:
        response = done.value
    except Exception:
        return None
    else:
        return None
    if response.status_code == 101:
        return None
    return _rejected(response, head[head.find(b"\r\n\r\n") + 4 :])


def _rejected(response: Response, body: bytes | bytearray) -> LinkRejected:
    """The refusal ``response`` as a link error: its status, headers (names lower-cased)
    and the start of ``body``."""
    headers = [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in response.headers.raw_items()
    ]
    return LinkRejected(response.status_code, headers, bytes(body[:MAX_REJECT_BODY]))


_UNSAFE: Final = frozenset(b"\r\n\x00")  # bytes no header may hold (a header injection)


class WebSocketLink:
    """An open client websocket (see the module docstring for how to drive it)."""

    __slots__ = (
        "_broken",
        "_close_seen",
        "_early",
        "_fault_told",
        "_fragments",
        "_io",
        "_lock",
        "_reading_ended",
        "_replies",
        "_text",
        "_ws",
    )

    def __init__(
        self,
        io: _SocketIO | _TLSSocketIO | _StreamIO,
        protocol: ClientProtocol,
        *,
        early: list[Any] | None = None,
    ) -> None:
        """``protocol``: open (handshake done); ``early``: frames it parsed with the handshake."""
        self._io = io
        self._ws = protocol
        # Not a trio.Lock: a send made now may leave the rest of its frame to
        # a task of its own (send_text_now), which lets go of it.
        self._lock = trio.Semaphore(1, max_value=1)
        self._replies: list[bytes] = protocol.data_to_send()  # owed to the peer, for flush()
        self._early = early or None  # parsed with the handshake: the first feed's
        self._fragments: list[Buffer] | None = None  # a message arriving in parts
        self._text = False  # whether that message is a text
        self._fault_told = False  # the protocol's fault (or the stream's end) was fed
        self._close_seen: trio.Event | None = None  # made by wait_closed()
        self._broken = False
        self._reading_ended = False

    def __repr__(self) -> str:
        return f"<WebSocketLink {self._ws.state.name}{' broken' if self._broken else ''}>"

    @property
    def open(self) -> bool:
        """Whether messages can still be sent."""
        return not self._broken and self._ws.state is State.OPEN

    @property
    def _locked(self) -> bool:
        return self._lock.value == 0

    @property
    def finished(self) -> bool:
        """Whether the closing handshake is over or the link broke: nothing more will arrive."""
        ws = self._ws
        return (
            self._broken
            or ws.state is State.CLOSED
            or (ws.close_rcvd is not None and ws.close_sent is not None)
        )

    # --- reading ------------------------------------------------------------------------

    async def receive_bytes(self) -> bytes | None:
        """The next chunk from the socket; ``None`` when the link ended or broke.

        Cancel-safe: a cancelled call consumes nothing.
        """
        return await self._io.receive()

    async def receive_taking(self, take: Callable[[bytes], Any]) -> Any:
        """Wait for bytes and hand them to ``take`` in place (see
        :mod:`providers.websocket.hub`): what ``take`` handed back, or ``None``
        when the link ended or broke. Bytes that need no wait (TLS records
        already decrypted, a link on a trio stream, no hub) are returned as
        they are, not taken, as :meth:`receive_bytes` returns them.

        Cancel-safe: a cancelled call consumes nothing.
        """
        io = self._io
        if isinstance(io, _StreamIO):
            return await io.receive()
        return await io.receive_taking(take)

    @property
    def owes_replies(self) -> bool:
        """Whether :meth:`flush` has something to send (control replies that
        :meth:`feed` queued, or TLS records)."""
        return bool(self._replies) or self._io.backlogged

    def feed(self, data: bytes | None) -> list[Incoming]:
        """Parse ``data`` (``None``: the link ended) into what the peer sent.

        Returns:
            Messages (``str`` for text, ``bytes`` for binary), :class:`Pong`
            and at most one :class:`Closed`, the last item, in order.
        """
        ws = self._ws
        if ws.state is State.CLOSED:
            return [] if data is not None else [self._ended()]
        if data is None:
            ws.receive_eof()
        elif data:
            ws.receive_data(data)
        frames: list[Any] = ws.events_received()
        early = self._early
        if early is not None:
            self._early = None
            frames = early + frames
        replies = ws.data_to_send()  # pongs, the echo of a close, a close for a fault
        if replies:
            if not replies[-1]:  # SEND_EOF: nothing to write (aclose ends the socket)
                replies.pop()
            self._replies += replies
        items: list[Incoming] = []
        for frame in frames:
            opcode = frame.opcode
            if opcode is _TEXT and frame.fin and self._fragments is None:
                try:  # nearly every frame: one text, whole
                    items.append(str(frame.data, "utf-8"))
                except UnicodeDecodeError:
                    items.append(self._refuse_text())
                    return items
            elif opcode is _PONG:
                items.append(Pong(bytes(frame.data)))
            elif opcode is _CLOSE:
                items.append(self._peer_closed())
                return items
            elif opcode is not _PING:  # a ping is answered by the protocol
                message = self._assemble(frame)
                if message is not None:
                    items.append(message)
                    if type(message) is Closed:
                        return items
        failure = ws.parser_exc
        if failure is not None and not self._fault_told:
            items.append(self._fault(failure))
        return items

    def _assemble(self, frame: Frame) -> str | bytes | Closed | None:
        """A binary frame, or a part of a message in parts (the protocol bounds
        the message's size, and refuses parts that do not follow each other)."""
        fragments = self._fragments
        if frame.opcode is _CONT and fragments is not None:
            fragments.append(frame.data)
        else:
            fragments = self._fragments = [frame.data]
            self._text = frame.opcode is _TEXT
        if not frame.fin:
            return None
        self._fragments = None
        data = fragments[0] if len(fragments) == 1 else b"".join(fragments)
        if not self._text:
            return bytes(data)
        try:
            return str(data, "utf-8")
        except UnicodeDecodeError:
            return self._refuse_text()

    def _refuse_text(self) -> Closed:
        """A text message that is not UTF-8: close the link with 1007, as RFC 6455 says."""
        reason = "a text message that is not UTF-8"
        ws = self._ws
        ws.fail(INVALID_DATA, reason)  # reads nothing more; queues the close frame
        self._replies += ws.data_to_send()
        self._fault_told = True
        self._mark_close_seen()
        return Closed(INVALID_DATA, f"we closed the link: {reason}")

    def _fault(self, failure: Exception) -> Closed:
        """The protocol found a fault in the peer's frames, or the stream ended."""
        self._fault_told = True
        if isinstance(failure, EOFError):
            return self._ended()
        rcvd = self._ws.close_rcvd
        if rcvd is not None:  # the peer's close came inside a fragmented message
            self._mark_close_seen()
            return Closed(rcvd.code, rcvd.reason or None)
        # It has queued the close to send (a client then waits for the server to hang up).
        sent = self._ws.close_sent
        self._mark_close_seen()
        return Closed(sent.code if sent is not None else None, f"we closed the link: {failure}")

    def _peer_closed(self) -> Closed:
        """The peer's close frame (the protocol has queued its echo)."""
        close = self._ws.close_rcvd
        assert close is not None
        self._mark_close_seen()
        return Closed(close.code, close.reason or None)

    def _ended(self) -> Closed:
        self._broken = True
        self._mark_close_seen()
        return Closed(None, "the TCP link broke")

    def _mark_close_seen(self) -> None:
        if self._close_seen is not None:
            self._close_seen.set()

    async def flush(self) -> None:
        """Send the control replies that :meth:`feed` queued (pongs, close echoes),
        and over TLS the records the engine made while reading, if no sender will.

        While the link is open, never waits for a sender: while one holds
        the lock, it sends them. A close's echo, the last thing the reader
        sends, does wait: nothing more is read, and it must go before the
        socket is closed.
        """
        ws = self._ws
        if self._locked and (
            ws.state is State.OPEN or (ws.close_rcvd is None and not self._fault_told)
        ):
            return  # the holder writes them after its own frame (pongs after our close too)
        while self._replies:
            data = b"".join(self._replies)
            self._replies.clear()
            try:
                await self._write(data)
            except LinkClosed:
                return
        if self._io.backlogged and not self._locked and not self._broken:
            # What TLS itself said while reading (a key update's answer) that
            # the socket did not take then, and no sender holds the lock to write.
            with contextlib.suppress(LinkClosed):
                await self._write(b"")

    # --- sending ------------------------------------------------------------------------

    @property
    def can_send_now(self) -> bool:
        """Whether :meth:`send_text_now` may be called: open, nobody writing, a socket of
        ours (plain or TLS)."""
        return (
            not self._locked
            and not self._broken
            and self._ws.state is State.OPEN
            and type(self._io) is not _StreamIO
        )

    def send_text_now(self, text: str) -> bytes | None:
        """Send one text message in this call, with no checkpoint (see :attr:`can_send_now`).

        The frame is made and handed to the socket at once, behind what the
        reader left to send; no other task runs meanwhile.

        Returns:
            ``None`` if the socket took all of it. Otherwise what it did not
            take: the link stays locked (the reader leaves its frames for
            later, as for any sender), and the caller must start
            :meth:`send_rest` with it in a task at once.

        Raises:
            LinkClosed: the link broke (it is marked broken).
        """
        io = self._io
        assert not isinstance(io, _StreamIO)
        ws = self._ws
        if self._broken or ws.state is not State.OPEN:  # (not a websockets error)
            raise LinkClosed(f"the link is closed ({ws.state.name})")
        self._lock.acquire_nowait()
        try:
            ws.send_text(text.encode())  # open: it cannot refuse
            writes = ws.data_to_send()
            data = writes[0] if len(writes) == 1 else b"".join(writes)
            if self._replies:  # the reader's, framed before this one: they go first
                data = b"".join(self._replies) + data
                self._replies.clear()
            sent = io.send_now(data)
        except BaseException as exc:
            if isinstance(exc, LinkClosed):
                self._broken = True
                self._mark_close_seen()
            self._lock.release()
            raise
        if sent == len(data) and not io.backlogged:
            self._lock.release()
            return None
        return data[sent:]  # (TLS: b"", the backlog is written)

    async def send_rest(self, rest: bytes) -> None:
        """Write what :meth:`send_text_now` left, then let go of the link's lock."""
        try:
            try:
                await self._write_locked(rest)
            finally:
                await self._release()  # may write the reader's frames, and find the link broken
        except LinkClosed:
            pass  # the reader sees the end of the link

    async def send_text(self, text: str, *, schedule: bool = True, queue: bool = False) -> None:
        """Send one text message.

        ``schedule=False``: the caller waits for an answer right after; see
        ``_SocketIO.send_all``. ``queue=True`` (the reader): while another
        task holds the lock, leave the frame for it to write and return.

        Raises:
            LinkClosed: the link is closed or broke.
        """
        await self._send(self._ws.send_text, text.encode(), schedule=schedule, queue=queue)

    async def ping(self, payload: bytes, *, queue: bool = False) -> None:
        """Send a ping; its pong comes back through :meth:`feed`.

        ``queue``: as for :meth:`send_text`.

        Raises:
            LinkClosed: the link is closed or broke.
        """
        await self._send(self._ws.send_ping, payload, queue=queue)

    async def close(self, code: int, reason: str) -> None:
        """Start the closing handshake (nothing happens if it has started already).

        Raises:
            LinkClosed: the link broke.
        """
        if self._ws.state is State.OPEN:  # (the protocol echoes a peer's close itself)
            await self._send(self._ws.send_close, code, reason)

    @property
    def refused_peer(self) -> bool:
        """We closed the link over a fault in the peer's frames, and it has not hung up yet."""
        ws = self._ws
        return self._fault_told and not self._broken and ws.state is not State.CLOSED

    async def read_out(self) -> None:
        """Read and drop what the peer sends until it hangs up (bound it with a cancel scope).

        After :attr:`refused_peer`: RFC 6455 has a client wait for the server
        to close the TCP connection. Closing ours with its frames unread
        would reset the connection, and the peer could lose our close frame,
        with the code that says why.
        """
        ws = self._ws
        while ws.state is not State.CLOSED:
            data = await self._io.receive()
            if data is None:
                ws.receive_eof()
                return
            ws.receive_data(data)  # (the protocol reads nothing more: it drops them)
            ws.events_received()
            ws.data_to_send()

    async def wait_closed(self) -> None:
        """Wait until the peer's close (or the end of the link) has been fed."""
        if self.finished or self._reading_ended:
            return
        if self._close_seen is None:
            self._close_seen = trio.Event()
        await self._close_seen.wait()

    def reading_ended(self) -> None:
        """Nothing more will be fed (the reader is gone): :meth:`wait_closed` returns."""
        self._reading_ended = True
        self._mark_close_seen()

    async def aclose(self) -> None:
        """Close the socket at once (after a closing handshake, or instead of one)."""
        self._broken = True
        self._mark_close_seen()
        await self._io.aclose()

    async def _send(
        self,
        send: Callable[..., None],
        *args: object,
        schedule: bool = True,
        queue: bool = False,
    ) -> None:
        if queue and self._locked:
            # Framed now, in the order frames are made (a compressed link's
            # order), and written by the holder after its own frame.
            await trio.lowlevel.checkpoint_if_cancelled()
            self._replies.append(self._frame(send, *args))
            return
        await self._acquire()
        try:
            if self._broken:
                raise LinkClosed("the link is closed")
            # Cancelled before a byte of it is made or written: the link stays whole.
            await trio.lowlevel.checkpoint_if_cancelled()
            data = self._frame(send, *args)
            if self._replies:  # the reader's, framed before this one: they go first
                data = b"".join(self._replies) + data  # (nothing may follow a close)
                self._replies.clear()
            await self._write_locked(data, schedule=schedule)
        finally:
            await self._release()

    def _frame(self, send: Callable[..., None], *args: object) -> bytes:
        """The bytes of the frame the protocol's ``send`` makes of ``args``.

        Raises:
            LinkClosed: the link is broken, or closing (nothing may follow our close).
        """
        if self._broken:
            raise LinkClosed("the link is closed")
        ws = self._ws
        if ws.state is not State.OPEN:
            raise LinkClosed(f"the link is closing ({ws.state.name})")
        send(*args)
        return b"".join(ws.data_to_send())

    async def _write(self, data: bytes) -> None:
        await self._acquire()
        try:
            if self._broken:
                raise LinkClosed("the link is closed")
            await trio.lowlevel.checkpoint_if_cancelled()  # not a byte written yet: still whole
            await self._write_locked(data)
        finally:
            await self._release()

    async def _release(self) -> None:
        """Write what the reader left while this task held the lock, then let go.

        Written even by a holder that was cancelled, or that took the lock
        only to give up (the peer may wait for its pong and send nothing
        until then, and nobody else may write soon): shielded, within
        :data:`REPLY_GRACE`. A socket that takes none of it by then is
        wedged, and the link broken.
        """
        try:
            while self._replies and not self._broken:
                data = b"".join(self._replies)
                self._replies.clear()
                with trio.CancelScope(shield=True) as shield:
                    shield.deadline = trio.current_time() + REPLY_GRACE
                    await self._write_locked(data, schedule=False)
        finally:
            self._lock.release()

    async def _acquire(self) -> None:
        # Uncontended (nearly always), take the lock without the extra trip
        # through the scheduler that Lock.acquire makes; the write that
        # follows is a checkpoint anyway.
        if self._locked:
            await self._lock.acquire()
        else:
            self._lock.acquire_nowait()

    async def _write_locked(self, data: bytes, *, schedule: bool = True) -> None:
        done = False
        try:
            await self._io.send_all(data, schedule=schedule)
            done = True
        finally:
            if not done:  # broken, or cancelled half-way: the stream is unusable
                self._broken = True
                self._mark_close_seen()
