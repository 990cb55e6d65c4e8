"""The TLS client context of the providers' own sockets (``wss://`` websocket
links, Discord's gateway): made once per process for each trust store.

The HTTP calls have theirs (``providers._http.shared_ssl_context``, httpx's,
whose ALPN httpcore sets on every connection it opens): a websocket
handshake must never be offered HTTP/2, so the sockets' is another.
"""

from __future__ import annotations

import functools
import ssl

__all__ = ["tls_context"]


@functools.cache
def tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """A client TLS context: certificates must chain to the system's trust store,
    or to the CAs in the PEM file ``ca_file`` instead; hostnames are checked,
    and TLS 1.2's renegotiation is refused (it would make a write wait for a
    read: see ``providers.websocket.link._TLSSocketIO``).

    Made once per process for each ``ca_file``: making one loads the
    certificates, 22-35 ms of CPU and 0.8 MB for the system's store, which
    a context per link kept for the link's life (measured). A file changed
    on disk is read again only by a new process.

    Raises:
        OSError: ``ca_file`` cannot be read.
        ssl.SSLError: it holds no certificate OpenSSL can load.
    """
    context = ssl.create_default_context(cafile=ca_file)
    context.options |= ssl.OP_NO_RENEGOTIATION
    return context
