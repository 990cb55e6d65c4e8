"""Serve the ops app with hypercorn's trio server until cancelled.

Design:
- :func:`serve_ops` follows trio's ``serve_*`` convention: it runs until its
  cancel scope is cancelled and calls ``task_status.started(base_url)`` once
  the socket listens, so ``await nursery.start(serve_ops, ...)`` returns the
  bound address (port 0 picks a free one, which tests rely on).
- The HTTP parsing is hypercorn's; the app is Starlette's, which speaks the
  ASGI lifespan protocol hypercorn's trio server insists on.
- Cancellation is the shutdown: hypercorn's listeners and connection tasks
  live in nurseries under our scope, so cancelling it closes the listening
  socket and every open (keep-alive) connection at once; nothing waits for
  hypercorn's graceful timeout. A node that wants in-flight requests to
  finish stops routing to the node first (``/readyz`` answers 503 while it
  drains) and cancels afterwards.
- No access log (probes and scrapes every few seconds would drown the log);
  hypercorn's error log goes to the ``switchboard.ops.http`` logger.
"""

from __future__ import annotations

import logging
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from ..view import NodeView
from .app import ops_app

__all__ = ["serve_ops"]

log = logging.getLogger("switchboard.ops.http")


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def serve_ops(
    node: NodeView,
    *,
    host: str,
    port: int,
    api_token: str | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the ops HTTP app for ``node`` until cancelled.

    Args:
        node: the node.
        host: the interface to bind (``127.0.0.1`` keeps it on loopback).
        port: the TCP port; 0 picks a free one.
        api_token: enables the message API with this bearer token.
        task_status: receives the bound base URL, e.g. ``http://127.0.0.1:8321``.

    Raises:
        ValueError: ``api_token`` is empty.
        OSError: the address cannot be bound (in use, not permitted).
    """
    app = ops_app(node, api_token=api_token)
    config = Config()
    config.bind = [_bind(host, port)]
    config.accesslog = None
    config.errorlog = log
    config.include_server_header = False

    async def run(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        await serve(app, config, task_status=task_status, mode="asgi")  # type: ignore[arg-type]

    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(run)
        log.info("ops HTTP for node %s on %s", node.node_id, binds[0])
        task_status.started(binds[0])
