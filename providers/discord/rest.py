"""Discord's REST API as sans-IO: build requests, track rate-limit buckets, read answers.

Design:
- Nothing here performs I/O: :func:`build_send` turns an
  :class:`~providers.base.OutboundMessage` into a :class:`RestRequest`,
  :class:`BucketTracker` turns ``X-RateLimit-*`` headers and ``now`` into
  "wait this long first", and :func:`interpret_send` /
  :func:`interpret_gateway_bot` turn a status, headers and body into a result
  or a mapped :class:`~providers.base.ProviderError`. The trio shell only
  sleeps and moves bytes.
- Status mapping::

      2xx                               the result
      429 with X-RateLimit-* headers    RateLimited (GLOBAL if "global", else CHANNEL)
      429 without them                  Banned (Cloudflare IP block: alert, never retry)
      401                               AuthenticationFailed
      403                               MissingPermissions (50007: BadRecipient)
      404 code 10008                    MessageNotFound (unknown message)
      404                               BadRecipient (unknown channel)
      400 code 50035 on "content"       MessageTooLong
      other 4xx                         PermanentSendError
      5xx, 408, unreadable 2xx body     TransientError (nonce makes the retry safe)

- Media by URL is sent as text: the content is the caption (if any) and the
  media URL on its own line, which Discord unfurls into an image/video
  preview (one JSON request, every media kind; the URL shows). Media by
  upload is an attachment: ``multipart/form-data`` with ``payload_json`` and
  ``files[0]`` (:attr:`RestRequest.files`), the caption as the content.
- Operations: edit ``PATCH``, delete ``DELETE /channels/{c}/messages/{m}``,
  typing ``POST /channels/{c}/typing``, reactions ``PUT`` / ``DELETE
  /channels/{c}/messages/{m}/reactions/{emoji}/@me``
  (:func:`build_operation`); each route has its own bucket. Bots have no read
  marks: ``mark_read`` is not in :data:`OPERATIONS`.
- Idempotency: ``nonce`` is the idempotency key (hashed to Discord's 25
  characters when longer) with ``enforce_nonce: true``, so a retry of a
  message whose answer was lost returns the original instead of a duplicate.
- The client keeps a per-route, per-channel bucket from the headers and waits
  before a request it knows would be refused, instead of spending a 429.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import quote

import attrs

from .._http import json_body, lower_keys, redirect_error
from ..base import (
    MAX_RETRY_AFTER,
    AuthenticationFailed,
    BadRecipient,
    Banned,
    FatalError,
    MessageNotFound,
    MessageTooLong,
    MissingPermissions,
    OutboundMessage,
    PermanentSendError,
    ProviderError,
    RateLimited,
    RateLimitScope,
    SendResult,
    TransientError,
)
from ..masking import shown
from ..media import Upload
from ..operations import DeleteMessage, EditMessage, OperationKind, React, SendTyping
from .wire import API_VERSION, GatewayBot, MessagePayload, PayloadError, parse

__all__ = [
    "MAX_NONCE_LENGTH",
    "MAX_TEXT_LENGTH",
    "OPERATIONS",
    "BucketTracker",
    "RestRequest",
    "build_gateway_bot",
    "build_operation",
    "build_send",
    "interpret_done",
    "interpret_gateway_bot",
    "interpret_send",
    "nonce_for",
]

MAX_TEXT_LENGTH: Final = 2000  # characters in a message's content
MAX_NONCE_LENGTH: Final = 25  # characters in a message nonce
SEND_ROUTE: Final = "POST /channels/{channel_id}/messages"
ERROR_INVALID_FORM_BODY: Final = 50035
ERROR_CANNOT_MESSAGE_USER: Final = 50007
ERROR_UNKNOWN_MESSAGE: Final = 10008
# A bot that messages many channels (a broadcast: one DM channel per user) learns
# a bucket for each; once this many are kept, those already reset are dropped.
BUCKETS_SWEPT_AT: Final = 1_024  # buckets
OPERATIONS: Final = frozenset(
    {
        OperationKind.SEND,
        OperationKind.UPLOAD,
        OperationKind.EDIT,
        OperationKind.DELETE,
        OperationKind.TYPING,
        OperationKind.REACT,
    }
)


@attrs.frozen(kw_only=True)
class RestRequest:
    """One REST call to make.

    Attributes:
        method: HTTP method.
        path: path under the API root, including ``/api/v10``.
        json: the JSON body, if any (``payload_json`` when there are files).
        route: the route template (the rate-limit bucket key before the
            platform names the bucket).
        major: the major parameter (channel id) that splits the bucket.
        files: uploads (``files[0]``, ...): the request goes as multipart.
    """

    method: str
    path: str
    json: Mapping[str, Any] | None = None
    route: str
    major: str = ""
    files: tuple[Upload, ...] = ()


def nonce_for(idempotency_key: str) -> str:
    """Discord's nonce for ``idempotency_key``: itself, or a stable 25-character hash."""
    if len(idempotency_key) <= MAX_NONCE_LENGTH:
        return idempotency_key
    return hashlib.sha256(idempotency_key.encode()).hexdigest()[:MAX_NONCE_LENGTH]


def build_gateway_bot() -> RestRequest:
    """``GET /gateway/bot``: the gateway URL and the identify budget."""
    path = f"/api/v{API_VERSION}/gateway/bot"
    return RestRequest(method="GET", path=path, route="GET /gateway/bot")


def build_send(
    msg: OutboundMessage,
    *,
    max_text_length: int = MAX_TEXT_LENGTH,
    upload: Upload | None = None,
) -> RestRequest:
    """The request that sends ``msg`` to the Discord channel ``msg.peer``
    (with ``upload``, the bytes of ``msg.media``, as an attachment).

    Raises:
        MessageTooLong: the content exceeds ``max_text_length`` characters.
        BadRecipient: ``msg.peer`` is not a Discord snowflake.
        PermanentSendError: a template (Discord has none).
    """
    if not is_snowflake(msg.peer):
        raise BadRecipient(
            f"{shown(msg.peer)} is not a Discord channel id (a numeric snowflake)", peer=msg.peer
        )
    if msg.template is not None:
        raise PermanentSendError(
            "Discord has no message templates; send text or media instead", peer=msg.peer
        )
    if msg.media is not None and upload is not None:
        content = msg.media.caption or ""
    elif msg.media is not None:
        content = "\n".join(part for part in (msg.media.caption, msg.media.url) if part)
    else:
        content = msg.text or ""
    if len(content) > max_text_length:
        raise MessageTooLong(
            f"{len(content)} characters exceed Discord's {max_text_length}; split the text",
            peer=msg.peer,
        )
    body: dict[str, Any] = {
        "content": content,
        "nonce": nonce_for(msg.idempotency_key),
        "enforce_nonce": True,
    }
    if msg.reply_to is not None:
        body["message_reference"] = {"message_id": msg.reply_to, "fail_if_not_exists": False}
    files: tuple[Upload, ...] = ()
    if upload is not None:
        body["attachments"] = [{"id": 0, "filename": upload.filename}]
        files = (upload,)
    return RestRequest(
        method="POST",
        path=f"/api/v{API_VERSION}/channels/{msg.peer}/messages",
        json=body,
        route=SEND_ROUTE,
        major=msg.peer,
        files=files,
    )


SNOWFLAKE_DIGITS: Final = 20  # a snowflake is a 64-bit unsigned integer


def is_snowflake(text: str) -> bool:
    """Whether ``text`` can be a Discord id: 1 to 20 ASCII digits (``str.isdigit``
    alone takes "²" and Arabic digits, and any length, which made a URL httpx
    refused, crashing the channel)."""
    return 0 < len(text) <= SNOWFLAKE_DIGITS and text.isascii() and text.isdigit()


def build_operation(
    op: EditMessage | DeleteMessage | SendTyping | React,
    *,
    max_text_length: int = MAX_TEXT_LENGTH,
) -> RestRequest:
    """The request for an edit, a delete, a typing indicator or a reaction.

    Raises:
        BadRecipient: the peer is not a snowflake.
        MessageNotFound: the message id is not a snowflake.
        MessageTooLong: an edit's content is over the limit.
    """
    peer = op.peer
    if not is_snowflake(peer):
        raise BadRecipient(f"{shown(peer)} is not a Discord channel id (a snowflake)", peer=peer)
    channel = f"/api/v{API_VERSION}/channels/{peer}"
    if isinstance(op, SendTyping):
        return RestRequest(
            method="POST",
            path=f"{channel}/typing",
            route="POST /channels/{channel_id}/typing",
            major=peer,
        )
    if not is_snowflake(op.message_id):
        raise MessageNotFound(f"{shown(op.message_id)} is not a Discord message id", peer=peer)
    message = f"{channel}/messages/{op.message_id}"
    if isinstance(op, EditMessage):
        if len(op.text) > max_text_length:
            raise MessageTooLong(
                f"{len(op.text)} characters exceed Discord's {max_text_length}", peer=peer
            )
        return RestRequest(
            method="PATCH",
            path=message,
            json={"content": op.text},
            route="PATCH /channels/{channel_id}/messages/{message_id}",
            major=peer,
        )
    if isinstance(op, DeleteMessage):
        return RestRequest(
            method="DELETE",
            path=message,
            route="DELETE /channels/{channel_id}/messages/{message_id}",
            major=peer,
        )
    method = "DELETE" if op.remove else "PUT"
    return RestRequest(
        method=method,
        path=f"{message}/reactions/{quote(op.emoji, safe='')}/@me",
        route=f"{method} /channels/{{channel_id}}/messages/{{message_id}}/reactions/@me",
        major=peer,
    )


# --- buckets --------------------------------------------------------------------------


@attrs.define
class _Bucket:
    remaining: int
    reset_at: float


class BucketTracker:
    """Discord's per-route rate-limit buckets as the headers describe them.

    Routes map to a bucket id (``X-RateLimit-Bucket``); each bucket is split
    by its major parameter (the channel id). A global 429 blocks every route.
    A bucket past its reset says no more than an unknown one, so those are
    dropped whenever the kept ones reach twice what the last sweep left (at
    least :data:`BUCKETS_SWEPT_AT`): a bot messaging ever new channels keeps
    the buckets of the last few seconds, not one per channel it ever wrote to.
    """

    def __init__(self) -> None:
        self._route_bucket: dict[str, str] = {}
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._sweep_at = BUCKETS_SWEPT_AT
        self.global_until = 0.0

    def __repr__(self) -> str:
        return f"<BucketTracker buckets={len(self._buckets)} global_until={self.global_until:g}>"

    def _key(self, route: str, major: str) -> tuple[str, str]:
        return (self._route_bucket.get(route, route), major)

    def reserve(self, route: str, major: str, now: float) -> float:
        """Seconds to wait before this request may go; 0 takes a slot now."""
        if now < self.global_until:
            return self.global_until - now
        bucket = self._buckets.get(self._key(route, major))
        if bucket is None or now >= bucket.reset_at:
            return 0.0
        if bucket.remaining > 0:
            bucket.remaining -= 1
            return 0.0
        return bucket.reset_at - now

    def update(
        self,
        route: str,
        major: str,
        status: int,
        headers: Mapping[str, str],
        now: float,
        *,
        body: bytes = b"",
    ) -> None:
        """Learn from a response's headers (and a 429's ``retry_after``).

        A global 429 holds every route for the body's ``retry_after`` (exact,
        in seconds), else for the ``Retry-After`` header (rounded up to whole
        seconds by Discord), else a second.
        """
        h = lower_keys(headers)
        bucket_id = h.get("x-ratelimit-bucket")
        if bucket_id:
            self._route_bucket[route] = bucket_id
        try:
            remaining = int(h["x-ratelimit-remaining"])
        except (KeyError, ValueError):
            remaining = None
        reset_after = _float(h.get("x-ratelimit-reset-after"))
        if remaining is not None and reset_after is not None:
            self._buckets[self._key(route, major)] = _Bucket(remaining, now + reset_after)
            if len(self._buckets) >= self._sweep_at:
                self._sweep(now)
        if status == 429 and h.get("x-ratelimit-global", "").lower() == "true":
            data = json_body(body) if body else None
            exact = _float(data.get("retry_after")) if isinstance(data, dict) else None
            retry_after = exact or _float(h.get("retry-after")) or 1.0
            self.global_until = max(self.global_until, now + retry_after)

    def _sweep(self, now: float) -> None:
        """Drop the buckets past their reset (amortised: the next sweep waits for
        twice as many as are left)."""
        self._buckets = {key: b for key, b in self._buckets.items() if now < b.reset_at}
        self._sweep_at = max(BUCKETS_SWEPT_AT, 2 * len(self._buckets))


def _float(value: Any) -> float | None:
    """Seconds Discord said to wait, as a channel can sleep them (0 to
    ``MAX_RETRY_AFTER``); None where it said no number: NaN, an infinity and an
    integer past any float (10**400) too, which paused a route for good or
    raised OverflowError out of a send."""
    try:
        seconds = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER) if math.isfinite(seconds) else None


# --- answers ----------------------------------------------------------------------------


def _error(
    status: int, headers: Mapping[str, str], body: bytes, *, peer: str | None, what: str
) -> ProviderError:
    if (redirect := redirect_error(status, headers, what)) is not None:
        return redirect
    h = lower_keys(headers)
    data = json_body(body)
    data = data if isinstance(data, dict) else {}
    code = data.get("code")
    said = f"{status} {data.get('message', '')}".strip()
    if status == 429:
        if not any(k.startswith("x-ratelimit-") for k in h):
            return Banned(
                f"{what}: Discord answered 429 without rate-limit headers, which is a "
                "Cloudflare block of this IP address (too many invalid requests); do not "
                "retry, find what floods 401/403/429s from this host"
            )
        retry_after = _float(data.get("retry_after")) or _float(h.get("retry-after")) or 1.0
        is_global = bool(data.get("global")) or h.get("x-ratelimit-global", "").lower() == "true"
        scope = RateLimitScope.GLOBAL if is_global else RateLimitScope.CHANNEL
        kind = "global" if is_global else h.get("x-ratelimit-scope", "route")
        return RateLimited(
            f"{what}: rate limited ({kind} limit), retry after {retry_after:g}s",
            retry_after=retry_after,
            scope=scope,
            peer=peer,
        )
    if status == 401:
        return AuthenticationFailed(f"{what}: Discord rejected the bot token ({said})")
    if status == 403:
        if code == ERROR_CANNOT_MESSAGE_USER:
            refused = f"{what}: Discord refuses messages to this user ({said})"
            return BadRecipient(refused, peer=peer)
        return MissingPermissions(
            f"{what}: the bot lacks a permission for this ({said}); grant it in the server"
        )
    if status >= 500 or status == 408:
        return TransientError(f"{what}: Discord server error {said}; retry later")
    if peer is None:
        return FatalError(f"{what}: unexpected {said}; check the configured base_url")
    if status == 404 and code == ERROR_UNKNOWN_MESSAGE:
        return MessageNotFound(f"{what}: the message is gone ({said})", peer=peer)
    if status == 404:
        return BadRecipient(f"{what}: unknown channel {peer} ({said})", peer=peer)
    errors = data.get("errors")
    form_error = status == 400 and code == ERROR_INVALID_FORM_BODY
    if form_error and isinstance(errors, dict) and "content" in errors:
        return MessageTooLong(f"{what}: Discord refused the content ({said})", peer=peer)
    return PermanentSendError(f"{what}: Discord refused the message ({said}: {data})", peer=peer)


def interpret_send(
    status: int, headers: Mapping[str, str], body: bytes, *, peer: str
) -> SendResult:
    """Read the answer to :func:`build_send`.

    Raises:
        RateLimited, Banned, AuthenticationFailed, MissingPermissions,
        BadRecipient, MessageTooLong, PermanentSendError, TransientError:
        as the module docstring's table says.
    """
    what = f"sending to Discord channel {peer}"
    if not 200 <= status < 300:
        raise _error(status, headers, body, peer=peer, what=what)
    try:
        message = parse(MessagePayload, json_body(body))
    except PayloadError as exc:
        raise TransientError(f"{what}: unreadable success answer ({exc})") from exc
    return SendResult(platform_message_id=message.id, peer=message.channel_id or peer)


def interpret_done(
    status: int, headers: Mapping[str, str], body: bytes, *, peer: str, what: str
) -> None:
    """Read the answer to an operation that returns nothing (204) or what we ignore.

    Raises:
        MessageNotFound: 404 with code 10008 (the message is gone).
        The classes of :func:`interpret_send` otherwise.
    """
    if not 200 <= status < 300:
        raise _error(status, headers, body, peer=peer, what=what)


def interpret_gateway_bot(status: int, headers: Mapping[str, str], body: bytes) -> GatewayBot:
    """Read the answer to :func:`build_gateway_bot`.

    Raises:
        RateLimited, Banned, AuthenticationFailed, MissingPermissions,
        TransientError, FatalError: as the module docstring's table says.
    """
    what = "asking Discord for the gateway (GET /gateway/bot)"
    if not 200 <= status < 300:
        raise _error(status, headers, body, peer=None, what=what)
    try:
        return parse(GatewayBot, json_body(body))
    except PayloadError as exc:
        raise TransientError(f"{what}: unreadable answer ({exc})") from exc
