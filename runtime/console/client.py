"""A client of the admin console, for ``switchboard ctl`` and tests.

Design: one websocket, calls one at a time (each waits for the answer with
its id); event notifications that arrive meanwhile are kept (a bounded
deque: the oldest go first) for :meth:`AdminClient.events`. URLs:
``unix:/path/to/admin.sock``, ``ws://host:port``, ``wss://host:port``.

Errors::

    ConsoleClientError
    ├── CannotConnect        no console there (refused, no such socket, TLS failed)
    ├── NotAuthenticated     the console refused the token (401)
    └── RemoteError          the console answered a call with an error (code, message, data)
"""

from __future__ import annotations

import socket as stdlib_socket
import ssl
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final
from urllib.parse import urlsplit

import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    connect_websocket_url,
    wrap_client_stream,
)

from providers.groups import ungrouped

from . import rpc
from .rpc import Call, Response

__all__ = [
    "AdminClient",
    "CannotConnect",
    "ConsoleClientError",
    "NotAuthenticated",
    "RemoteError",
    "open_admin",
]

CONNECT_TIMEOUT: Final = 10.0  # seconds to connect, handshakes included
KEPT_EVENTS: Final = 10_000  # notifications kept while a call waits
MAX_MESSAGE: Final = 64 * 1024 * 1024  # bytes of one answer


class ConsoleClientError(Exception):
    """Anything :func:`open_admin` or a call raises."""


class CannotConnect(ConsoleClientError):
    """No console could be reached at the URL."""


class NotAuthenticated(ConsoleClientError):
    """The console refused the token."""


class RemoteError(ConsoleClientError):
    """The console answered with an error.

    Attributes:
        code: the JSON-RPC error code.
        message: its message.
        data: its data.
    """

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{message} ({code})")
        self.code = code
        self.message = message
        self.data = data


class AdminClient:
    """One connection to a console."""

    def __init__(self, connection: WebSocketConnection) -> None:
        self._connection = connection
        self._ids = 0
        self._events: deque[dict[str, Any]] = deque(maxlen=KEPT_EVENTS)
        self._lock = trio.Lock()  # one call at a time: each reads until its own answer

    async def call(
        self, method: str, params: Mapping[str, Any] | Sequence[Any] | None = None
    ) -> Any:
        """Call ``method`` and return its result.

        Raises:
            RemoteError: the console answered with an error.
            CannotConnect: the connection closed.
        """
        async with self._lock:
            return await self._call(method, params)

    async def _call(self, method: str, params: Mapping[str, Any] | Sequence[Any] | None) -> Any:
        self._ids += 1
        number = self._ids
        try:
            await self._connection.send_message(rpc.request(method, params, number))
            while True:
                message = await self._connection.get_message()
                found = rpc.parse_response(message)
                if isinstance(found, Call):
                    self._events.append({"method": found.method, "params": found.params})
                    continue
                if found.id != number and not (found.id is None and found.error is not None):
                    continue  # (an error without an id: the console could not read the call)
                return _result(found)
        except ConnectionClosed as exc:
            raise CannotConnect(f"the console closed the connection: {exc.reason}") from exc

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Notifications (``events.event``), those kept during calls first."""
        while self._events:
            yield self._events.popleft()
        try:
            while True:
                found = rpc.parse_response(await self._connection.get_message())
                if isinstance(found, Call):
                    yield {"method": found.method, "params": found.params}
        except ConnectionClosed:
            return


def _result(found: Response) -> Any:
    if found.error is not None:
        raise RemoteError(found.error.code, found.error.message, found.error.data)
    return found.result


@asynccontextmanager
async def open_admin(
    url: str,
    token: str | None,
    *,
    cafile: str | None = None,
    connect_timeout: float = CONNECT_TIMEOUT,
) -> AsyncIterator[AdminClient]:
    """Connect to the console at ``url`` with a bearer token.

    Args:
        url: ``unix:/path``, ``ws://host:port`` or ``wss://host:port``.
        token: the bearer token.
        cafile: a PEM file of the certificate authorities to trust (wss://).
        connect_timeout: seconds for the connection and its handshakes.

    Raises:
        CannotConnect: nothing answers there, or not a console.
        NotAuthenticated: the token was refused.
    """
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    try:
        async with ungrouped(trio.open_nursery()) as nursery:
            try:
                with trio.fail_after(connect_timeout):
                    connection = await _connect(nursery, url, headers, cafile)
            except trio.TooSlowError:
                raise CannotConnect(f"no answer from {url} within {connect_timeout:g} s") from None
            except (OSError, HandshakeError, trio.BrokenResourceError, ssl.SSLError) as exc:
                raise CannotConnect(f"no admin console at {url}: {exc}") from None
            try:
                yield AdminClient(connection)
            finally:
                await connection.aclose()
                nursery.cancel_scope.cancel()
    except ConnectionRejected as exc:  # raised by the connection's reader task
        if exc.status_code == 401:
            message = _rejection(exc.body)
            raise NotAuthenticated(f"the console refused the token: {message}") from None
        raise CannotConnect(f"{url} refused the websocket: HTTP {exc.status_code}") from None


async def _connect(
    nursery: trio.Nursery, url: str, headers: list[tuple[bytes, bytes]], cafile: str | None
) -> WebSocketConnection:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        stream = await _open_unix(url[len("unix:") :])
        return await wrap_client_stream(
            nursery, stream, "localhost", "/", extra_headers=headers, max_message_size=MAX_MESSAGE
        )
    if parts.scheme in ("ws", "wss"):
        context = ssl.create_default_context(cafile=cafile) if parts.scheme == "wss" else None
        return await connect_websocket_url(
            nursery, url, context, extra_headers=headers, max_message_size=MAX_MESSAGE
        )
    raise CannotConnect(
        f"cannot use {url!r}: give unix:/path/to/admin.sock, ws://host:port or wss://host:port"
    )


def _rejection(body: bytes | None) -> str:
    try:
        found = rpc.parse_response(body or b"")
    except ValueError:
        return "no reason given"
    if isinstance(found, Response) and found.error is not None:
        return found.error.message
    return "no reason given"


async def _open_unix(path: str) -> trio.SocketStream:
    sock = trio.socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
    try:
        await sock.connect(path)
    except OSError:
        sock.close()
        raise
    return trio.SocketStream(sock)
