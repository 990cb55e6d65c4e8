"""The connection pool of an HTTP provider's channel, sized to its send window.

Design: a channel has up to its send window of sends in flight
(:func:`~providers.base.send_window`), each an HTTP request of its own. The
client's pool keeps that many connections, so a pipelined channel neither
queues on the pool nor opens and closes a connection per send (httpx keeps
20 by default). Kept apart from :mod:`providers._http`, which the sans-IO
cores share and which must not import an HTTP client.
"""

from __future__ import annotations

import httpx

from .base import ChannelConfig, PlatformLimits, send_window

__all__ = ["pool_limits"]


def pool_limits(config: ChannelConfig, limits: PlatformLimits, *, extra: int = 0) -> httpx.Limits:
    """The pool of one channel's client: a connection per send in flight,
    plus ``extra`` that the connection holds itself (a long poll)."""
    size = send_window(config, limits) + extra
    return httpx.Limits(max_connections=size, max_keepalive_connections=size)
