"""Sans-IO webhook handling: request headers and body in, a verdict out.

In webhook mode Telegram POSTs each update as a JSON body to the URL given to
setWebhook, with the secret from setWebhook in the
``X-Telegram-Bot-Api-Secret-Token`` header. Whoever serves HTTP (the node's
ops server, a test's receiver) hands the headers and raw body to
:meth:`WebhookHandler.handle` and answers with the verdict's status: 403 for
a missing or wrong secret (compared in constant time, so the secret cannot be
guessed byte by byte from timings), 400 for a body that is not an update, 200
otherwise. Telegram redelivers anything not answered with a 2xx, so the shell
answers 200 only after the events were handed out.

The secret is a header, so it is judged before the body is read
(:meth:`WebhookHandler.check_headers`, :func:`secret_matches`): a forger
costs the server a header compare, never a body read up to the cap.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from typing import Final

import attrs

from .. import bounded_json
from ..base import TransientError
from .core import ParsedUpdate, parse_webhook_update

__all__ = [
    "MAX_UPDATE_BYTES",
    "SECRET_HEADER",
    "WebhookHandler",
    "WebhookVerdict",
    "secret_matches",
]

SECRET_HEADER: Final = "X-Telegram-Bot-Api-Secret-Token"
MAX_UPDATE_BYTES: Final = 4 * 1024 * 1024  # bytes one update may have; larger: 413

Headers = Mapping[str, str] | Iterable[tuple[bytes | str, bytes | str]]


@attrs.frozen(kw_only=True)
class WebhookVerdict:
    """What to answer a webhook request, and what it carried.

    Attributes:
        status: the HTTP status to answer (200, 400, 403 or 413).
        update: the parsed update when the request was accepted.
        reason: why it was refused (empty when accepted).
    """

    status: int
    update: ParsedUpdate | None = None
    reason: str = ""


def _text(value: bytes | str) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


def _header(headers: Headers, name: str) -> str | None:
    wanted = name.lower()
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    for key, value in pairs:
        if _text(key).lower() == wanted:
            return _text(value)
    return None


def secret_matches(headers: Headers, secret: str | bytes) -> bool:
    """Whether ``headers`` carry ``secret`` as :data:`SECRET_HEADER` (constant time)."""
    given = _header(headers, SECRET_HEADER)
    expected = secret.encode() if isinstance(secret, str) else secret
    return given is not None and hmac.compare_digest(given.encode(), expected)


class WebhookHandler:
    """Checks and reads webhook requests for one channel.

    Args:
        channel_id: the channel the events belong to.
        secret: the secret_token given to setWebhook.
    """

    def __init__(self, *, channel_id: str, secret: str) -> None:
        self.channel_id = channel_id
        self._secret = secret.encode()
        self.accepted = 0
        self.refused = 0

    def __repr__(self) -> str:
        return f"<WebhookHandler {self.channel_id} accepted={self.accepted} refused={self.refused}>"

    def _refuse(self, status: int, reason: str) -> WebhookVerdict:
        self.refused += 1
        return WebhookVerdict(status=status, reason=reason)

    def check_headers(self, headers: Headers) -> WebhookVerdict | None:
        """Judge a request by its headers alone, before its body is read.

        Returns:
            ``None`` when the secret is right (read the body, then
            :meth:`handle`); else the 403 verdict, counted as refused.
        """
        if not secret_matches(headers, self._secret):
            return self._refuse(403, f"missing or wrong {SECRET_HEADER}")
        return None

    def handle(self, headers: Headers, body: bytes) -> WebhookVerdict:
        """Judge one webhook request.

        Args:
            headers: the request headers (a mapping or raw ASGI pairs; names
                are matched case-insensitively).
            body: the raw request body.

        Returns:
            The verdict: 403 on a bad secret, 413 on a body over
            :data:`MAX_UPDATE_BYTES`, 400 on a malformed body (not JSON,
            nested deeper than :data:`providers.bounded_json.MAX_DEPTH`, not
            an update), else 200 with the update (whose event may be None for
            kinds we ignore).
        """
        refused = self.check_headers(headers)
        if refused is not None:
            return refused
        if len(body) > MAX_UPDATE_BYTES:
            return self._refuse(413, f"the body exceeds {MAX_UPDATE_BYTES} bytes")
        try:
            update = parse_webhook_update(bounded_json.loads(body), self.channel_id)
        except (ValueError, TypeError, TransientError) as exc:
            return self._refuse(400, f"the body is not a Telegram update: {exc}")
        self.accepted += 1
        return WebhookVerdict(status=200, update=update)
