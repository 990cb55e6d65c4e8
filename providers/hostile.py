"""A hostile platform for fault-injection tests: a real TCP server that misbehaves.

Design: the emulators are protocol-faithful; this server is the opposite, the
far end a provider must survive: an upgrade answered with 503, a 101 with a
bad accept key, a websocket message far over any limit, a body that never
ends, a server that drips one byte at a time, a redirect. Each connection is
served by a :data:`Behaviour` that a test's ``route`` function picks from the
request (so one server can answer Discord's ``GET /gateway/bot`` properly and
then refuse the upgrade). The HTTP side is h11's (requests parsed, responses
framed by it) and the websocket side wsproto's: nothing here parses or frames
by hand. It listens on 127.0.0.1 only and runs in the test's trio loop.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, Final

import h11
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Request,
    TextMessage,
)
from wsproto.utilities import RemoteProtocolError

__all__ = [
    "Behaviour",
    "accept_then_send",
    "bad_accept",
    "drip",
    "endless_chunked",
    "huge_body",
    "json_answer",
    "open_hostile_server",
    "status",
]

CHUNK: Final = 65_536  # bytes written at once by the bulk behaviours

Behaviour = Callable[[trio.SocketStream, h11.Connection, bytes], Awaitable[None]]
"""Serves one connection: its stream, the h11 state that read the request, and
the request's raw bytes (for a websocket upgrade, fed to wsproto)."""


def _headers(pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(name, value) for name, value in pairs]


async def _answer(
    stream: trio.SocketStream,
    conn: h11.Connection,
    code: int,
    headers: Sequence[tuple[str, str]],
    body: bytes,
) -> None:
    head = [*headers, ("content-length", str(len(body))), ("connection", "close")]
    data = conn.send(h11.Response(status_code=code, headers=_headers(head)))
    data += conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
    await stream.send_all(data)


def status(code: int, *, headers: Sequence[tuple[str, str]] = (), body: bytes = b"") -> Behaviour:
    """Answer with HTTP ``code`` (503 to an upgrade, 302 with a ``location``...)."""
    return partial(_status, code, tuple(headers), body)


async def _status(
    code: int,
    headers: Sequence[tuple[str, str]],
    body: bytes,
    stream: trio.SocketStream,
    conn: h11.Connection,
    raw: bytes,
) -> None:
    await _answer(stream, conn, code, headers, body)


def json_answer(value: Any, code: int = 200) -> Behaviour:
    """Answer with ``value`` as JSON."""
    body = json.dumps(value).encode()
    return status(code, headers=[("content-type", "application/json")], body=body)


def bad_accept() -> Behaviour:
    """Answer an upgrade with 101 and a ``Sec-WebSocket-Accept`` that does not match."""
    return _bad_accept


async def _bad_accept(stream: trio.SocketStream, conn: h11.Connection, raw: bytes) -> None:
    headers = [
        ("upgrade", "websocket"),
        ("connection", "Upgrade"),
        ("sec-websocket-accept", "bm90IHRoZSByaWdodCBrZXk="),
    ]
    await stream.send_all(conn.send(h11.InformationalResponse(status_code=101, headers=headers)))
    await trio.sleep_forever()


def accept_then_send(*frames: str | bytes | Event) -> Behaviour:
    """Accept the upgrade (wsproto's handshake), send ``frames`` and stay open
    (answering a close).

    A ``str`` is a text message, ``bytes`` a binary one; a wsproto event
    (``TextMessage(..., message_finished=False)``, ``Ping``) goes as it is.
    """
    return partial(_accept_then_send, frames)


async def _accept_then_send(
    frames: Sequence[str | bytes | Event],
    stream: trio.SocketStream,
    conn: h11.Connection,
    raw: bytes,
) -> None:
    ws = WSConnection(ConnectionType.SERVER)
    ws.receive_data(raw)
    for event in ws.events():
        if isinstance(event, Request):
            await stream.send_all(ws.send(AcceptConnection()))
    for frame in frames:
        if isinstance(frame, str):
            frame = TextMessage(data=frame)
        elif isinstance(frame, bytes):
            frame = BytesMessage(data=frame)
        data = ws.send(frame)
        for start in range(0, len(data), CHUNK):
            await stream.send_all(data[start : start + CHUNK])
    # Then a well-behaved server until the client hangs up: it answers a close
    # at once, so a client's closing handshake does not wait out its timeout.
    while data := await stream.receive_some(CHUNK):
        try:
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, CloseConnection):
                    await stream.send_all(ws.send(event.response()))
                    return
        except RemoteProtocolError:
            return


def huge_body(size: int) -> Behaviour:
    """Answer 200 with a ``content-length`` body of ``size`` bytes, sent in full."""
    return partial(_huge_body, size)


async def _huge_body(
    size: int, stream: trio.SocketStream, conn: h11.Connection, raw: bytes
) -> None:
    head = [("content-type", "application/json"), ("content-length", str(size))]
    await stream.send_all(conn.send(h11.Response(status_code=200, headers=head)))
    chunk = b" " * CHUNK
    left = size
    while left > 0:
        part = chunk[: min(left, CHUNK)]
        await stream.send_all(conn.send(h11.Data(data=part)))
        left -= len(part)
    await stream.send_all(conn.send(h11.EndOfMessage()))


def endless_chunked() -> Behaviour:
    """Answer 200 with a chunked body that never ends."""
    return _endless_chunked


async def _endless_chunked(stream: trio.SocketStream, conn: h11.Connection, raw: bytes) -> None:
    head = [("content-type", "application/json"), ("transfer-encoding", "chunked")]
    await stream.send_all(conn.send(h11.Response(status_code=200, headers=head)))
    chunk = b" " * CHUNK
    while True:
        await stream.send_all(conn.send(h11.Data(data=chunk)))


def drip(interval: float = 1.0) -> Behaviour:
    """Answer 200 one byte every ``interval`` seconds, forever (each read sees progress)."""
    return partial(_drip, interval)


async def _drip(
    interval: float, stream: trio.SocketStream, conn: h11.Connection, raw: bytes
) -> None:
    head = [("content-type", "application/json"), ("content-length", str(1 << 30))]
    data = conn.send(h11.Response(status_code=200, headers=head))
    for i in range(len(data)):
        await stream.send_all(data[i : i + 1])
        await trio.sleep(interval)
    while True:
        await stream.send_all(conn.send(h11.Data(data=b" ")))
        await trio.sleep(interval)


async def _serve_one(route: Callable[[h11.Request], Behaviour], stream: trio.SocketStream) -> None:
    conn = h11.Connection(h11.SERVER)
    raw = bytearray()
    async with stream:
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(CHUNK)
                    if not data:
                        return
                    raw += data
                    conn.receive_data(data)
                    continue
                if isinstance(event, h11.Request):
                    await route(event)(stream, conn, bytes(raw))
                return
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            return  # the client gave up on us: that is what these tests want


@asynccontextmanager
async def open_hostile_server(
    route: Callable[[h11.Request], Behaviour],
) -> AsyncIterator[str]:
    """Serve on 127.0.0.1 (a free port) until the block ends.

    Args:
        route: picks each connection's behaviour from its request
            (``request.target`` is the path and query, as bytes).

    Yields:
        The server's ``http://127.0.0.1:PORT`` URL.
    """
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(trio.serve_tcp, partial(_serve_one, route), 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            nursery.cancel_scope.cancel()
