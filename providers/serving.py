"""Serving an ASGI app with hypercorn's trio server, less a race that ends the server.

Design:
- The emulators and the node's ops HTTP server both serve through
  :func:`serve_asgi`, which is hypercorn's ``hypercorn.trio.serve`` after
  :func:`install_close_fix`.
- The race (hypercorn 0.18, the latest release, on trio): a connection's
  ``TCPServer`` writes under its ``send_lock`` (``protocol_send``), but ends
  the connection in ``_close()`` with ``stream.send_eof()`` *outside* that
  lock, and trio's ``send_eof`` holds the stream's send side across a
  checkpoint. An app that answers before the request body has arrived (a
  503, 401, 404 or 413 on the headers alone) makes hypercorn close the
  connection from the app's task; if the client hangs up at that moment,
  the connection's reader task meets h11's "peer closed connection without
  sending complete message body", answers it with a 400, and its
  ``send_all`` meets the ``send_eof``: ``trio.BusyResourceError``, which
  ``protocol_send`` does not catch. It escapes the connection's task group
  and, through ``trio.serve_listeners``, ends the whole server, cutting
  every other connection.
- The fix: ``_close()`` sends its EOF holding ``send_lock`` (a writer that
  comes later waits, then finds the stream closed, which hypercorn already
  treats as the peer gone). When the lock is taken, a send is under way (or
  this very task is inside ``protocol_send``): the EOF is skipped and the
  stream closed, which is what hypercorn does when ``send_eof`` finds the
  stream busy. Waiting for the lock instead could wait forever: the send
  holding it is shielded, and blocks for as long as the peer does not read.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from hypercorn.trio.tcp_server import TCPServer

__all__ = ["install_close_fix", "serve_asgi"]

_Close = Callable[[TCPServer], Coroutine[Any, Any, None]]


def _locked_close(original: _Close) -> _Close:
    @functools.wraps(original)
    async def _close(self: TCPServer) -> None:
        lock: trio.Lock = self.send_lock
        if lock.locked():
            # Forcefully: a TLS stream's graceful close would queue its
            # close_notify behind the stuck send; this closes the transport.
            await trio.aclose_forcefully(self.stream)
            return
        lock.acquire_nowait()
        try:
            await original(self)
        finally:
            lock.release()

    _close.__switchboard_locked_close__ = True  # type: ignore[attr-defined]
    return _close


def install_close_fix() -> None:
    """Make hypercorn's trio ``TCPServer`` end a connection under its send lock.

    Idempotent; it changes ``hypercorn.trio.tcp_server.TCPServer`` for the
    whole process (see the module's design notes for the race it closes).
    """
    close = TCPServer._close
    if not getattr(close, "__switchboard_locked_close__", False):
        TCPServer._close = _locked_close(close)  # type: ignore[method-assign,assignment]


async def serve_asgi(
    app: Any, config: Config, *, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve ``app`` (ASGI) with hypercorn until cancelled; ``task_status.started(binds)``.

    Args:
        app: the ASGI application.
        config: hypercorn's configuration (binds, timeouts, logs, TLS).
        task_status: receives hypercorn's bound addresses (``http://host:port``).

    Raises:
        OSError: an address cannot be bound.
    """
    install_close_fix()
    await serve(app, config, task_status=task_status, mode="asgi")
