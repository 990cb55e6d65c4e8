"""What the HTTP adapters share: one bounded request, and reading an answer.

Design:
- Every platform HTTP call goes through :func:`fetch`: a *total* deadline
  (connect, send, headers and the whole body: httpx's own timeouts are per
  read, so a server that drips a byte a second would hold the call, and the
  channel's connect-gate slot, forever) and a cap on the body (a platform, or
  something in between, can answer with 300 MB or a chunked body that never
  ends). Both excesses are :class:`~providers.base.TransientError` (see the
  policy in :mod:`providers._exceptions`); httpx's own errors leave as httpx
  raised them, for the shell's mapping table, and anything else a hostile
  answer makes our libraries raise becomes a ``TransientError`` here.
- Every client verifies TLS with one context per process
  (:func:`shared_ssl_context`): building httpx's default context loads the
  CA bundle, about 0.1 s of CPU, and channels that reconnect every second
  against a slow platform would otherwise spend the node's CPU on it.
- Platform answers are read leniently, because an error answer is often not
  what its documentation says (an HTML page from a proxy, an empty 429):
  :func:`json_body` never raises, and the core decides what a missing or
  malformed body means. Header names are case-insensitive on the wire and
  httpx keeps them as sent, so cores look them up in :func:`lower_keys`.
"""

from __future__ import annotations

import datetime
import functools
import ssl
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any, Final
from urllib.parse import urlsplit

import attrs
import httpx
import trio

from ._exceptions import map_exceptions
from ._json import parsed
from .base import AuthenticationFailed, ProviderError, TransientError, retry_after_seconds
from .masking import SHORTEST_MASKED_TOKEN, mask_token

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_REQUEST_DEADLINE",
    "Answer",
    "check_token",
    "fetch",
    "json_body",
    "lower_keys",
    "quoted",
    "redirect_error",
    "retry_after_header",
    "shared_ssl_context",
    "unavailable_wait",
    "without_token",
]

DEFAULT_MAX_BODY_BYTES: Final = 8 * 1024 * 1024  # bytes of one answer (JSON APIs: far below)
DEFAULT_REQUEST_DEADLINE: Final = 30.0  # seconds for a whole request and its answer
QUOTED_CHARACTERS: Final = 200  # characters of a platform's text an error quotes


def check_token(token: str, where: str) -> None:
    """Refuse a token an HTTP request cannot carry, without quoting it.

    A platform's token is visible ASCII. One with a space, a control
    character (a trailing newline read from a file) or anything past ASCII
    (a byte-order mark a text editor wrote, a zero-width space pasted with
    it) is refused by the HTTP layer, whose error either quotes the
    header, and with it the token, into the channel's error and its logs,
    or is not a provider error at all; and the channel retried forever.

    Raises:
        AuthenticationFailed: ``token`` holds such a character (``where`` names the channel).
    """
    if not all("!" <= c <= "~" for c in token):
        raise AuthenticationFailed(
            f"{where}: credentials['token'] holds whitespace, a control character or a "
            "character past ASCII (a trailing newline or a byte-order mark from a file?), "
            "which a request cannot carry; fix the credential"
        )


@attrs.frozen(kw_only=True)
class Answer:
    """A platform's whole answer, read within its limits.

    Attributes:
        status_code: the HTTP status.
        headers: the response headers (case-insensitive).
        content: the body, at most the call's ``max_body`` bytes (decoded).
    """

    status_code: int
    headers: httpx.Headers = attrs.field(repr=False)
    content: bytes = attrs.field(repr=lambda body: f"<{len(body)} bytes>")


async def fetch(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    deadline: float,
    max_body: int,
    what: str,
    **kwargs: Any,
) -> Answer:
    """Perform one request and read its answer, within ``deadline`` and ``max_body``.

    Args:
        client: the provider's client (its per-read timeouts still apply).
        method: the HTTP method.
        url: the URL (or a path, for a client with a ``base_url``).
        deadline: seconds for everything, from connecting to the last byte.
        max_body: the most bytes of body read (after decoding); more is an error.
        what: the call in words, for the messages (never a token).
        **kwargs: what ``client.stream`` takes (``json``, ``data``, ``files``...).

    Returns:
        The answer, whatever its status: the core interprets it.

    Raises:
        TransientError: the answer was larger than ``max_body``, it was not
            complete within ``deadline``, or it made the HTTP stack raise
            something that is not an httpx error.
        httpx.HTTPError, httpx.InvalidURL: as httpx raised them (the shell maps them).
    """
    passthrough = (ProviderError, httpx.HTTPError, httpx.InvalidURL)
    with (
        map_exceptions(
            {
                passthrough: None,
                Exception: lambda exc: TransientError(
                    f"{what}: the answer could not be read ({type(exc).__name__}); retry"
                ),
            }
        ),
        trio.move_on_after(deadline),
    ):
        # What ``client.stream`` does, without its generator-based context
        # manager: a request is built, sent, read and closed however it ends.
        auth = kwargs.pop("auth", httpx.USE_CLIENT_DEFAULT)  # ``client.send``'s options;
        follow = kwargs.pop("follow_redirects", httpx.USE_CLIENT_DEFAULT)  # the rest build it
        request = client.build_request(method, url, **kwargs)
        if auth is httpx.USE_CLIENT_DEFAULT and follow is httpx.USE_CLIENT_DEFAULT:
            response = await _send_direct(client, request)
        else:
            response = await client.send(request, auth=auth, follow_redirects=follow, stream=True)
        try:
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_body:
                raise _too_large(what, max_body, f"it announced {int(declared)} bytes")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > max_body:
                    raise _too_large(what, max_body, "its body went on past that")
            return Answer(
                status_code=response.status_code, headers=response.headers, content=bytes(body)
            )
        finally:
            await response.aclose()
    raise TransientError(
        f"{what}: no complete answer within {deadline:g} s (the total deadline of a "
        "request); retry with backoff"
    )


async def _send_direct(client: httpx.AsyncClient, request: httpx.Request) -> httpx.Response:
    """``client.send(request, stream=True)``, straight to the client's transport.

    A platform API needs none of the client's layers around each request:
    no auth flow (a provider's token is a header or in the URL), no
    redirects (never followed: :func:`redirect_error`), no cookie jar (no
    platform keeps a session in cookies; one that set them would only grow
    the jar). Those layers were about a tenth of a Telegram send's CPU.
    The transport is the one the client itself picks for the URL, so its
    mounts and the proxies it took from the environment still apply. The
    long way is kept for a client with an auth of its own, a URL with
    ``user:password@`` in it (Basic auth for the server it names, a
    reverse proxy in front of the platform), a closed client, and
    an httpx without that method (it is httpx's own, not public).
    """
    route = getattr(client, "_transport_for_url", None)
    if (
        route is None
        or client.is_closed  # a closed client refuses, as it should
        or client.auth is not None
        or request.url.userinfo  # user:password@ in the URL: Basic auth, by the auth flow
    ):
        return await client.send(request, stream=True)
    try:
        response = await route(request.url).handle_async_request(request)
    except httpx.RequestError as exc:
        exc.request = request  # as the client does: the shells' messages name the call
        raise
    response.request = request
    return response


def _too_large(what: str, limit: int, detail: str) -> TransientError:
    return TransientError(
        f"{what}: the answer is larger than the limit of {limit} bytes ({detail}); "
        "it was not read, retry with backoff (raise the provider's max_body_bytes if "
        "the platform really answers that much)"
    )


@functools.cache
def shared_ssl_context() -> ssl.SSLContext:
    """httpx's default TLS context (its CA bundle, verification on), made once."""
    return httpx.create_ssl_context()


def redirect_error(
    status: int, headers: Mapping[str, str] | None, what: str
) -> TransientError | None:
    """The one redirect policy of every provider (see :mod:`providers._exceptions`).

    No provider follows a redirect: a 3xx is a :class:`TransientError`, so
    the channel backs off and tries again (a proxy or load balancer in the
    way usually redirects for a while), and one that persists shows as a
    channel that keeps backing off with this message, never as a channel
    FAILED for good or a message dead-lettered. Only the target's host is
    named: its path or query may carry a token (Telegram's URLs do).

    Returns:
        The error for a 3xx ``status``; ``None`` for any other status.
    """
    if not 300 <= status < 400:
        return None
    location = lower_keys(headers or {}).get("location", "")
    try:
        host = urlsplit(location).netloc.rpartition("@")[2] if location else ""
    except ValueError:  # not a URL urllib can read ("http://[::1"): no host named
        host = ""
    target = f" to {host}" if host else (" elsewhere" if location else "")
    return TransientError(
        f"{what}: the platform answered HTTP {status}, a redirect{target}; redirects are "
        "never followed (the bot's token would go along): retry with backoff, and if it "
        "persists, check the channel's base_url"
    )


def json_body(body: bytes) -> Any:
    """The JSON value of ``body``; ``None`` when it is empty or not JSON."""
    try:
        return parsed(body)
    except ValueError:  # empty, not JSON, or not UTF-8 (UnicodeDecodeError)
        return None


def retry_after_header(
    headers: Mapping[str, str] | None, *, now: float | None = None
) -> float | None:
    """The seconds of a ``Retry-After`` header, as written (a core keeps them
    sane with :func:`~providers.base.retry_after_seconds`).

    RFC 9110 allows two forms: seconds (``120``) and an HTTP date (``Wed, 21
    Oct 2015 07:28:00 GMT``), which is read as the seconds from ``now`` to it,
    0 for a date gone by. That is the cores' one clock reading: a server's
    date can only be compared with the wall clock.

    Args:
        headers: the answer's headers.
        now: the wall clock's time (``time.time()``) the date is compared with;
            read when ``None``.

    Returns:
        ``None`` without the header, or with one that is neither form.
    """
    raw = lower_keys(headers or {}).get("retry-after")
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        pass
    try:
        date = parsedate_to_datetime(raw)
    except (ValueError, TypeError, IndexError, OverflowError):  # not a date
        return None
    if date.tzinfo is None:  # "-0000": UTC, with no source named (RFC 5322)
        date = date.replace(tzinfo=datetime.UTC)
    return max(0.0, date.timestamp() - (time.time() if now is None else now))


def unavailable_wait(status: int, headers: Mapping[str, str] | None) -> float | None:
    """The least wait before retrying a 503 (a platform in maintenance): its
    ``Retry-After``, kept within 0 and :data:`~providers.base.MAX_RETRY_AFTER`
    as a rate limit's wait is. The error stays a ``TransientError`` (its
    ``retry_after``): the platform failed, it did not ask the channel to slow down.

    Returns:
        The seconds; ``None`` for another status, or a 503 without a readable header.
    """
    if status != 503:
        return None
    seconds = retry_after_header(headers)
    return None if seconds is None else retry_after_seconds(seconds, 0.0)


def without_token(error: BaseException, token: str) -> None:
    """Take ``token`` out of the messages of ``error`` and of the errors it came from.

    A platform echoes a token it cannot parse (the Graph API's "Malformed
    access token EAA..."), a proxy's error page echoes the request's path
    (Telegram's holds the bot's token), and the errors quote what was
    answered: the token went with them to the sender (and the product's own
    logs), the channel's last error and the dead letters. The shells call
    this on an error's way out (:func:`~providers.masking.mask_token`), so
    only an error's path pays for it, never a send's.
    """
    if len(token) < SHORTEST_MASKED_TOKEN:
        return
    head = token[:SHORTEST_MASKED_TOKEN]
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ProviderError) and head in str(current):
            current.args = (mask_token(str(current), token),)
        current = current.__cause__ or current.__context__


def quoted(text: str, limit: int = QUOTED_CHARACTERS) -> str:
    """``text`` as an error quotes it: at most ``limit`` characters, and how long it
    was when cut. A platform's text (an error's description, an answer of the
    wrong shape) can be as long as its whole answer, and an error's message goes
    to every retry's log line, the sender, the channel's last error and the
    dead letter kept in the store."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text):,} characters)"


def lower_keys(headers: Mapping[str, str]) -> dict[str, str]:
    """``headers`` with lower-case names, for case-insensitive lookups."""
    return {k.lower(): v for k, v in headers.items()}
