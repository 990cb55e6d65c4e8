"""The connection pool of an HTTP provider's channel, sized to its send window.

Design: a channel has up to its send window of sends in flight
(:func:`~providers.base.send_window`), each an HTTP request of its own. The
client's pool keeps that many connections, so a pipelined channel neither
queues on the pool nor opens and closes a connection per send (httpx keeps
20 by default). Kept apart from :mod:`providers._http`, which the sans-IO
cores share and which must not import an HTTP client.

With ``options.http2`` (Telegram, WhatsApp) the window's requests share
one HTTP/2 connection instead, as many streams at once as the server allows
(a second connection opens only past that): one TCP and TLS handshake per
channel instead of one per send in flight, which over a long round trip is
a window of 30 to 80 connections per bot or number. Over ``https://`` the
client offers HTTP/2 and HTTP/1.1 and takes what the platform picks (ALPN);
over cleartext ``http://`` (an emulator, a proxy of one's own) there is no
such choice, so it speaks HTTP/2 from the first byte (prior knowledge), and
the server must too.
"""

from __future__ import annotations

from typing import TypedDict

import httpx

from .base import ChannelConfig, PlatformLimits, send_window

__all__ = ["HttpVersions", "http_versions", "pool_limits"]


class HttpVersions(TypedDict):
    """The protocol arguments of ``httpx.AsyncClient``."""

    http1: bool
    http2: bool


def pool_limits(config: ChannelConfig, limits: PlatformLimits, *, extra: int = 0) -> httpx.Limits:
    """The pool of one channel's client: a connection per send in flight,
    plus ``extra`` that the connection holds itself (a long poll)."""
    size = send_window(config, limits) + extra
    return httpx.Limits(max_connections=size, max_keepalive_connections=size)


def http_versions(base_url: str, *, http2: bool) -> HttpVersions:
    """The ``http1`` and ``http2`` arguments of the channel's client (see the module docstring)."""
    if not http2:
        return {"http1": True, "http2": False}
    return {"http1": not base_url.lower().startswith("http://"), "http2": True}
