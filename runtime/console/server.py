"""The admin listener: JSON-RPC 2.0 over a websocket, on a Unix socket and/or TCP.

Design:
- trio-websocket does the websocket (wsproto underneath); this module only
  makes the listeners, checks the bearer token in the handshake, and pumps
  messages through a :class:`~runtime.console.session.Session`.
- A Unix socket is bound, made 0600 (owner only) and only then listens, so
  nobody else can ever connect; a stale socket file left by a killed node is
  replaced, a live one (another node answers on it) or a file that is not
  a socket is a :class:`~runtime.errors.StartupFailed` naming the setting.
  The file is removed when the console stops.
- TCP on loopback, or elsewhere with TLS (``wss://``). Without TLS beyond
  loopback (``insecure = true``, which ``switchboard check`` insists on) it
  is logged at CRITICAL at every start: tokens cross the network in clear.
- The handshake is refused with 401 (and a JSON-RPC error body) without a
  valid token; such refusals are counted with the calls' refusals.
- At most ``max_connections`` connections at once; more are refused (503).
- Messages are bounded by ``max_message_size``: a bigger one closes the
  connection with 1009 (message too big), and the node goes on serving.
  Calls of one connection run one at a time, in order; its event
  notifications interleave between them. A connection whose peer reads
  slowly waits on its own sends; nothing else does.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket as stdlib_socket
import ssl
import stat
from collections.abc import Awaitable, Callable
from typing import Any, Final

import attrs
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, WebSocketServer

from providers.emulators.base import is_loopback

from ..config.model import AdminConfig
from ..errors import StartupFailed
from ..node import Node
from . import rpc
from .auth import Grant, Unauthenticated, bearer
from .session import Console

__all__ = ["AdminAddresses", "serve_admin"]

log = logging.getLogger("switchboard.console")

CONNECT_TIMEOUT: Final = 10.0  # seconds a client has for the websocket handshake
DISCONNECT_TIMEOUT: Final = 5.0  # seconds for the closing handshake
BACKLOG: Final = 128


@attrs.frozen(kw_only=True)
class AdminAddresses:
    """Where the console listens.

    Attributes:
        urls: ``unix:/path`` and/or ``ws://host:port`` / ``wss://host:port``.
        console: the console behind them.
    """

    urls: tuple[str, ...]
    console: Console = attrs.field(repr=False)


def _tls_context(config: AdminConfig) -> ssl.SSLContext:
    assert config.certfile is not None and config.keyfile is not None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.certfile, config.keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise StartupFailed(
            f"cannot serve the admin console over TLS from {config.certfile} with key "
            f"{config.keyfile}: {getattr(exc, 'strerror', None) or exc}; fix admin.certfile "
            "and admin.keyfile (PEM files: a certificate chain and its key)",
            setting="admin.certfile",
            exit_code=2,
        ) from exc
    return context


class _UnixListener(trio.abc.Listener[trio.SocketStream]):
    """A Unix socket listener (trio-websocket reads TCP addresses off plain SocketListeners)."""

    def __init__(self, listener: trio.SocketListener, path: str) -> None:
        self._listener = listener
        self.path = path

    def __repr__(self) -> str:
        return f"unix:{self.path}"

    async def accept(self) -> trio.SocketStream:
        return await self._listener.accept()

    async def aclose(self) -> None:
        await self._listener.aclose()


async def _unix_listener(path: str) -> _UnixListener:
    """A listening Unix socket at ``path``, 0600 before it listens.

    Raises:
        StartupFailed: ``path`` is taken (a live socket, or not a socket).
    """
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None:
        if not stat.S_ISSOCK(mode):
            raise StartupFailed(
                f"cannot serve the admin console on {path}: the file exists and is not a "
                "socket; remove it or change admin.socket",
                setting="admin.socket",
            )
        probe = trio.socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
        try:
            await probe.connect(path)
        except OSError:
            os.unlink(path)  # left by a node that did not stop cleanly
        else:
            raise StartupFailed(
                f"cannot serve the admin console on {path}: another process listens on it; "
                "stop it or change admin.socket",
                setting="admin.socket",
            )
        finally:
            probe.close()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    sock = trio.socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
    try:
        await sock.bind(path)
        os.chmod(path, 0o600)  # before listen(): nobody else ever gets to connect
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise StartupFailed(
            f"cannot serve the admin console on {path}: {exc.strerror or exc}; change admin.socket",
            setting="admin.socket",
        ) from exc
    return _UnixListener(trio.SocketListener(sock), path)


async def _tcp_listeners(
    config: AdminConfig, context: ssl.SSLContext | None
) -> tuple[list[trio.SocketListener | trio.SSLListener[trio.SocketStream]], str]:
    assert config.host is not None
    try:
        sockets = await trio.open_tcp_listeners(config.port, host=config.host)
    except OSError as exc:
        why = "the port is in use" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
        raise StartupFailed(
            f"cannot serve the admin console on {config.host}:{config.port}: {why}; "
            "change admin.port (0 picks a free one)",
            setting="admin.port",
        ) from exc
    port = sockets[0].socket.getsockname()[1]
    host = f"[{config.host}]" if ":" in config.host else config.host
    if context is None:
        return list(sockets), f"ws://{host}:{port}"
    wrapped: list[trio.SocketListener | trio.SSLListener[trio.SocketStream]] = [
        trio.SSLListener(listener, context, https_compatible=True) for listener in sockets
    ]
    return wrapped, f"wss://{host}:{port}"


async def serve_admin(
    node: Node,
    config: AdminConfig,
    *,
    console: Console | None = None,
    task_status: trio.TaskStatus[AdminAddresses] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the admin console of ``node`` until cancelled.

    Args:
        node: the running node.
        config: the ``[admin]`` section.
        console: the console to serve (default: a new one for ``node``).
        task_status: receives the :class:`AdminAddresses` once it listens.

    Raises:
        StartupFailed: a listener could not be made (a port in use, a socket
            path taken, a bad TLS file).
    """
    context = _tls_context(config) if config.tls else None
    if config.host is not None and not is_loopback(config.host) and context is None:
        log.critical(
            "the admin console listens on %s without TLS (admin.insecure = true): bearer "
            "tokens and everything the console shows cross the network in clear text; "
            "set admin.certfile and admin.keyfile",
            config.host,
            extra={"switchboard.setting": "admin.insecure"},
        )
    listeners: list[Any] = []
    urls: list[str] = []
    try:
        if config.socket is not None:
            listeners.append(await _unix_listener(config.socket))
            urls.append(f"unix:{config.socket}")
        if config.host is not None:
            tcp, url = await _tcp_listeners(config, context)
            listeners.extend(tcp)
            urls.append(url)
        console = console or Console(node, config)
        async with trio.open_nursery() as nursery:
            if not console.running:
                await nursery.start(console.run)
            server = WebSocketServer(
                _handler(console),
                listeners,
                handler_nursery=nursery,
                max_message_size=config.max_message_size,
                connect_timeout=CONNECT_TIMEOUT,
                disconnect_timeout=DISCONNECT_TIMEOUT,
            )
            await nursery.start(server.run)
            log.info("admin console of node %s on %s", node.node_id, ", ".join(urls))
            task_status.started(AdminAddresses(urls=tuple(urls), console=console))
    finally:
        if config.socket is not None and listeners:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(config.socket)
        with trio.CancelScope(shield=True):
            for listener in listeners:
                with contextlib.suppress(trio.ClosedResourceError, OSError):
                    await listener.aclose()


async def _handshake(
    console: Console, request: WebSocketRequest
) -> tuple[Grant, WebSocketConnection] | None:
    """The connection's grant and the accepted websocket; None if refused or gone."""
    try:
        grant = console.authenticate(bearer(request.headers))
    except Unauthenticated as exc:
        body = rpc.encode([rpc.failure(None, rpc.ErrorCode.UNAUTHENTICATED, str(exc))], batch=False)
        assert body is not None
        with contextlib.suppress(ConnectionClosed, trio.BrokenResourceError):
            await request.reject(
                401, extra_headers=[(b"content-type", b"application/json")], body=body.encode()
            )
        return None
    try:
        return grant, await request.accept()
    except (ConnectionClosed, trio.BrokenResourceError):
        return None


def _handler(console: Console) -> Callable[[WebSocketRequest], Awaitable[None]]:
    async def handle(request: WebSocketRequest) -> None:
        try:
            await _serve_connection(console, request)
        except Exception:  # one connection never takes the listener down
            log.exception("admin console: a connection failed")

    return handle


async def _serve_connection(console: Console, request: WebSocketRequest) -> None:
    # A handshake holds its place from the check on: those that arrive together
    # each see the others (counted once accepted, they all found room).
    if console.connections + console.arriving >= console.config.max_connections:
        console.refusals.refuse("rate_limited")
        with contextlib.suppress(ConnectionClosed, trio.BrokenResourceError):
            await request.reject(503, body=b"too many admin console connections\n")
        return
    console.arriving += 1
    try:
        accepted = await _handshake(console, request)
    finally:
        console.arriving -= 1  # (open_session counts it, with no checkpoint between)
    if accepted is None:
        return
    grant, connection = accepted
    lock = trio.Lock()

    async def send(text: str) -> None:
        # A peer gone mid-send ends the connection through get_message below.
        with contextlib.suppress(ConnectionClosed, trio.BrokenResourceError):
            async with lock:
                await connection.send_message(text)

    async with console.open_session(grant, send) as session:
        with contextlib.suppress(ConnectionClosed, trio.BrokenResourceError):
            while True:
                message = await connection.get_message()
                answer = await session.handle(message)
                if answer is not None:
                    await send(answer)
