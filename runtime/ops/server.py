"""Serve the ops app with hypercorn's trio server until cancelled.

Design:
- :func:`serve_ops` follows trio's ``serve_*`` convention: it runs until its
  cancel scope is cancelled and calls ``task_status.started(base_url)`` once
  the socket listens, so ``await nursery.start(serve_ops, ...)`` returns the
  bound address (port 0 picks a free one, which tests rely on).
- The HTTP parsing is hypercorn's; the app is Starlette's, which speaks the
  ASGI lifespan protocol hypercorn's trio server insists on. It is served
  through :func:`providers.serving.serve_asgi`: the app refuses some requests
  on their headers alone, and a client hanging up at that moment would
  otherwise end the whole server (a race in hypercorn's trio server).
- Cancellation is the shutdown: hypercorn's listeners and connection tasks
  live in nurseries under our scope, so cancelling it closes the listening
  socket and every open (keep-alive) connection at once; nothing waits for
  hypercorn's graceful timeout. A node that wants in-flight requests to
  finish stops routing to the node first (``/readyz`` answers 503 while it
  drains) and cancels afterwards.
- An idle kept-alive connection stays open :data:`KEEP_ALIVE` seconds, not
  hypercorn's 5. The ops port sits behind load balancers and receives
  webhooks through them; a balancer reuses an idle connection to its
  backend until its own idle timeout (60 s is common), and a backend that
  closes first can close one just as a request goes out on it: the
  balancer answers 502 for a request the node never saw. The same race
  with a client whose pool keeps connections 5 s (httpx's) showed up once
  as "Server disconnected without sending a response" in a test run on a
  starved machine. So the node closes last, as nginx (75 s) does.
- A connection that sends nothing for :data:`READ_TIMEOUT` seconds is closed
  (hypercorn's ``read_timeout``; its default waits forever), whatever it was
  doing: a client that stops in the middle of its headers or body would
  otherwise hold its connection, file descriptor and task for as long as the
  node runs. It is longer than :data:`KEEP_ALIVE`, which closes idle
  connections first, and than the longest answer a client waits for (a send:
  60 s).
- No access log (probes and scrapes every few seconds would drown the log);
  hypercorn's error log goes to the ``switchboard.ops.http`` logger, less its
  "Running on ... (CTRL + C to quit)" line: the node says where it listens.
- TLS is hypercorn's (``certfile``/``keyfile``). The context is built before
  anything binds, so a bad file is one clear :class:`StartupFailed` naming
  the file and the setting, not a traceback from inside the server.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterable
from typing import Any, Final

import trio
from hypercorn.config import Config

from providers.serving import serve_asgi

from ..config.model import MetricsConfig
from ..errors import StartupFailed
from ..telemetry.redaction import Redactor
from ..view import NodeView
from .app import ops_app

__all__ = ["serve_ops"]

log = logging.getLogger("switchboard.ops.http")

# Seconds an idle kept-alive connection stays open: past a load balancer's idle timeout.
KEEP_ALIVE: Final = 75.0
# Seconds a connection may send nothing, mid-request included, before it is closed.
READ_TIMEOUT: Final = 90


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _NoBanner(logging.Filter):
    """Drops hypercorn's "Running on ... (CTRL + C to quit)": the node's own line says it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Running on")


log.addFilter(_NoBanner())


# OpenSSL's reasons, as a person would say them.
_TLS_REASONS: Final = {
    "PEM_LIB": "not a PEM certificate chain and private key",
    "KEY_VALUES_MISMATCH": "the private key does not match the certificate",
    "NO_START_LINE": "not a PEM file",
}


def _check_tls(config: Config, certfile: str, keyfile: str) -> None:
    """Build the TLS context once, so a bad file fails here with a clear message.

    Raises:
        StartupFailed: a file is missing, unreadable, not PEM, or the key
            does not match the certificate.
    """
    try:
        config.create_ssl_context()
    except (OSError, ssl.SSLError) as exc:
        code = getattr(exc, "reason", None) or ("PEM_LIB" if "PEM lib" in str(exc) else "")
        reason = _TLS_REASONS.get(code) or str(getattr(exc, "strerror", None) or exc).lower()
        path = getattr(exc, "filename", None)
        where = path or f"{certfile} with key {keyfile}"
        raise StartupFailed(
            f"cannot serve ops HTTP over TLS from {where}: {reason}; "
            "fix ops.certfile and ops.keyfile (PEM files: a certificate chain and its key)",
            setting="ops.certfile",
            exit_code=2,
            fields={"file.path": str(path or certfile)},
        ) from exc


async def serve_ops(
    node: NodeView,
    *,
    host: str,
    port: int,
    api_token: str | None = None,
    certfile: str | None = None,
    keyfile: str | None = None,
    metrics: MetricsConfig | None = None,
    secrets: Iterable[str] = (),
    redactor: Redactor | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the ops HTTP app for ``node`` until cancelled.

    Args:
        node: the node.
        host: the interface to bind (``127.0.0.1`` keeps it on loopback).
        port: the TCP port; 0 picks a free one.
        api_token: enables the message API with this bearer token.
        certfile: serve HTTPS with this PEM certificate (chain).
        keyfile: its PEM private key (needed with ``certfile``).
        metrics: what ``/metrics`` exports (default: ``[metrics]``'s defaults).
        secrets: values never to show in an answer (``NodeConfig.secrets()``).
        redactor: the node's own, which learns the secrets of channels started
            later (``Node.redactor``); else one of ``secrets``.
        task_status: receives the bound base URL, e.g. ``http://127.0.0.1:8321``.

    Raises:
        ValueError: ``api_token`` is empty, or only one of the TLS files is given.
        StartupFailed: the TLS files cannot be used.
        OSError: the address cannot be bound (in use, not permitted).
    """
    app = ops_app(node, api_token=api_token, metrics=metrics, secrets=secrets, redactor=redactor)
    config = Config()
    config.bind = [_bind(host, port)]
    config.accesslog = None
    config.errorlog = log
    config.include_server_header = False
    config.keep_alive_timeout = KEEP_ALIVE
    config.read_timeout = READ_TIMEOUT
    if certfile is not None or keyfile is not None:
        if certfile is None or keyfile is None:
            raise ValueError("TLS needs both certfile and keyfile")
        config.certfile = certfile
        config.keyfile = keyfile
        _check_tls(config, certfile, keyfile)

    async def run(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        await serve_asgi(app, config, task_status=task_status)

    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(run)
        log.info("ops HTTP for node %s on %s", node.node_id, binds[0])
        task_status.started(binds[0])
