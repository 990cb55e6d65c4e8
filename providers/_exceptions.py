"""Mapping a lower layer's exceptions into ours, in one place per boundary.

Design: httpcore's ``map_exceptions({trio.TooSlowError: ReadTimeout, ...})``
(``_exceptions.py``), used around each transport call. Each I/O shell keeps
one mapping table (a function of the call's context, because our messages
say which call failed and what to do next) and wraps every transport call
in :class:`map_exceptions` with it, so the classification of httpx, trio,
trio-websocket, wsproto and OS errors into the :mod:`providers.base` tree is
written once per shell and every mapped error is chained to its cause
(``raise X(...) from exc``).

It is a class rather than a ``@contextmanager`` generator: it wraps every
send, and a plain ``__exit__`` costs a fraction of a generator's frame.

The classification policy (every provider follows it; the cores apply the
status rows, the shells' tables the rest). Whatever the platform side does,
what leaves a provider is a ``ProviderError``: never trio's, trio-websocket's,
wsproto's, h11's or httpx's own exception, which would crash the channel actor.

======================================================  =====================
what the platform side did                              class
======================================================  =====================
connect refused or reset, TLS failure, DNS failure      TransientError
no answer within the call's total deadline (a server    TransientError
that drips a byte at a time included)
HTTP 5xx, 408, an upgrade refused with such a status    TransientError
HTTP 3xx (a redirect: never followed, see below)        TransientError
a body or websocket message over the provider's limit   TransientError
a protocol violation: a bad accept key, bad framing,    TransientError
an unreadable or malformed answer, a dropped socket
anything else raised while talking to the platform      TransientError
HTTP 429 (or the platform's rate-limit signal)          RateLimited
HTTP 401, a revoked token                               AuthenticationFailed
HTTP 403 for the bot as a whole, a ban, an IP block     Banned
privileged intents or scopes missing                    MissingPermissions
another client holds the session (Telegram 409)         Conflict
bad channel configuration (options, base URL scheme)    FatalError
one message refused for good (4xx about the message)    PermanentSendError
======================================================  =====================

"Anything else" is transient on purpose: a peer can make our libraries raise
what nobody listed, and a defect of ours then shows as a channel that keeps
reconnecting with backoff and its error logged, never as a crashed actor.
Tables put ``ProviderError: None`` (pass unchanged) before such a catch-all,
so the cores' own verdicts keep their class.

Redirects: no provider follows one (httpx does not by default, and a
platform API that moved is not something to follow silently with the bot's
token in the headers). A 3xx is transient in every provider: a proxy or a
load balancer in the way redirects for a while, and a redirect that persists
shows as a channel that keeps backing off with the status and ``Location`` in
its last error, never as a channel FAILED for good.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, TypeAlias

__all__ = ["ExceptionMap", "map_exceptions"]

ExceptionMap: TypeAlias = Mapping[
    type[Exception] | tuple[type[Exception], ...], Callable[[Any], Exception] | None
]
"""From an exception class (or a tuple of them) to what makes its replacement
(``None``: leave it unchanged, like ``except X: raise``)."""


class map_exceptions:  # a context manager, named like contextlib.suppress
    """Replace an exception that leaves the block by the mapped one, chained.

    The first entry whose classes match wins, as in a chain of ``except``
    clauses: list subclasses before their bases. An exception that matches
    no entry, or an entry whose value is ``None``, leaves unchanged, and so
    does every ``BaseException`` that is not an ``Exception``
    (``trio.Cancelled``, ``KeyboardInterrupt``).

    Args:
        mapping: exception classes and, for each, a callable that takes the
            caught exception and returns the one to raise in its place, or
            ``None`` to let it pass (an entry before a catch-all).
    """

    __slots__ = ("_mapping",)

    def __init__(self, mapping: ExceptionMap) -> None:
        self._mapping = mapping

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if not isinstance(exc, Exception):
            return
        for kinds, make in self._mapping.items():
            if isinstance(exc, kinds):
                if make is None:
                    return
                raise make(exc) from exc
