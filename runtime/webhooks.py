"""Platform webhooks wherever they land: handed to the channel's link here, or carried to its owner.

Design:
- A webhook is judged by the channel's own connection (the provider's
  sans-IO code checks the signature or secret and reads the events):
  :func:`deliver` hands one request to it and waits, at most
  :data:`WEBHOOK_TIMEOUT`, for its answer. The ops app does this for a
  channel that runs here.
- In a cluster the platform calls whichever node its URL reaches: WhatsApp
  has one URL for every number of an app, and a Telegram webhook URL behind a
  load balancer reaches any node. A node that does not run the channel checks
  the request itself, from the channel's config (:func:`check_here`:
  ``X-Hub-Signature-256`` with the app secret, the verify token of Meta's
  GET, Telegram's secret token header), so a forged request never gets
  further than the node it reached; then it carries the raw request to the
  owner (``runtime.node_cluster``, request ``webhook``), whose link judges
  and takes it as if it had arrived there.
- A WhatsApp POST is hashed at most once per app secret on the node it
  reached: the ops app makes one :class:`~providers.whatsapp.webhook.PostSignatures`
  per post, checks it once per app secret among the live channels, and hands
  it with the post to each chosen channel (:func:`deliver`) and to
  :func:`check_here` for those that run elsewhere; they read its verdict
  instead of hashing the body again. The owner of a carried post checks it
  again (its own process, its own secret). The platform's answer is the
  owner's: 200 only once the owner's channel has kept the events (Telegram
  and Meta forget what was answered 200), the moment a local webhook is
  answered too. A node that dies mid-forward leaves the
  platform without a 200, and the platform delivers again.
- What travels (:func:`to_wire`): the method, the query, the body (base64)
  and only the headers the links read. Never Telegram's secret token: it is a
  credential, and the owner, which holds the same secret, puts it back
  (:func:`from_wire`) for a request its peer has checked.
- Telegram's secret is a header: it is judged before the body is read, on
  the node the request reached (:func:`telegram_headers`, from the config, for
  a channel that runs elsewhere; the link's own ``check_webhook_headers`` for
  one that runs here), so a forger never makes a node read a body.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, Final

import attrs
import trio

from providers.base import ChannelConfig, ProviderError
from providers.telegram import SECRET_HEADER
from providers.telegram.core import parse_options
from providers.telegram.webhook import secret_matches
from providers.whatsapp.core import WhatsAppSettings
from providers.whatsapp.webhook import (
    SIGNATURE_HEADER,
    PostSignatures,
    signer_id,
    verify_subscription,
)

__all__ = [
    "WEBHOOK_TIMEOUT",
    "ConfiguredSigner",
    "WebhookReply",
    "check_here",
    "configured_signer",
    "deliver",
    "from_wire",
    "reply_from_wire",
    "reply_to_wire",
    "telegram_headers",
    "to_wire",
]

WEBHOOK_TIMEOUT: Final = 30.0  # seconds a channel may take to take a webhook (then 503)
_WIRE_HEADERS: Final = ("content-type", SIGNATURE_HEADER)  # what the links read, less secrets


@attrs.frozen(kw_only=True)
class WebhookReply:
    """What to answer the platform.

    Attributes:
        status: the HTTP status.
        body: the response body (Meta's challenge for a verification).
        media_type: its media type.
        dropped: malformed items the channel left out of a signed notification.
    """

    status: int
    body: bytes
    media_type: str = "text/plain"
    dropped: int = 0


def refusal(status: int, error: str, message: str) -> WebhookReply:
    """An answer that is not the link's (no such channel, not connected, timeout): JSON."""
    body = json.dumps({"error": error, "message": message}).encode()
    return WebhookReply(status=status, body=body, media_type="application/json")


async def deliver(
    provider: str,
    connection: Any,
    method: str,
    query: Mapping[str, str],
    headers: Mapping[str, str],
    body: bytes,
    *,
    signatures: PostSignatures | None = None,
    timeout: float = WEBHOOK_TIMEOUT,  # noqa: ASYNC109 (what is left of a caller's wait)
) -> WebhookReply:
    """Hand one request to a running channel's link; its answer.

    Args:
        provider: ``whatsapp`` (``handle_webhook``) or ``telegram`` (``feed_webhook``).
        connection: the channel's live connection.
        method: the HTTP method.
        query: the query parameters.
        headers: the request headers.
        body: the raw body, exactly as received.
        signatures: a WhatsApp post's signature verdicts, already checked
            where it was routed: the link reads them rather than hashing again.
        timeout: seconds the link may take (then 503): :data:`WEBHOOK_TIMEOUT`,
            or what is left of a forwarded webhook's wait.

    Returns:
        The link's answer; 404 for a link that takes no webhooks (a polling
        Telegram channel), 503 when it does not answer within ``timeout``
        (the platform delivers again).
    """
    hook = getattr(connection, "handle_webhook" if provider == "whatsapp" else "feed_webhook", None)
    if provider not in ("whatsapp", "telegram") or hook is None:
        return refusal(404, "NoWebhook", f"this {provider} channel takes no webhooks")
    with trio.move_on_after(timeout):
        if provider == "whatsapp":
            extra = {} if signatures is None else {"signatures": signatures}
            status, answer = await hook(method, query, headers, body, **extra)
            take_dropped = getattr(connection, "take_dropped", None)
            dropped = take_dropped() if take_dropped is not None else 0
            return WebhookReply(status=int(status), body=bytes(answer), dropped=dropped)
        status = int(await hook(headers, body))  # Telegram reads only the status
        return WebhookReply(status=status, body=HTTPStatus(status).phrase.encode())
    return refusal(503, "Timeout", "the channel did not take the webhook in time")


def telegram_headers(config: ChannelConfig, headers: Mapping[str, str]) -> WebhookReply | None:
    """Judge a Telegram webhook by its headers alone, before its body is read.

    Returns:
        ``None`` when the secret token is right (read the body); else the
        whole answer: 404 for a channel that polls, 403 for a missing or
        wrong secret (compared in constant time).

    Raises:
        ProviderError: the channel's options are ones its link would refuse.
    """
    options = parse_options(config.options, config.credentials)
    secret = options.webhook_secret
    if options.mode != "webhook" or secret is None:  # its link answers 404 too
        return refusal(404, "NoWebhook", "this telegram channel polls; no webhooks")
    if not secret_matches(headers, secret):
        return WebhookReply(status=403, body=b"Forbidden")
    return None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """A header's value by its lower-case ``name``, whatever the case it came in."""
    return next((value for key, value in headers.items() if key.lower() == name), None)


def check_here(
    provider: str,
    config: ChannelConfig,
    method: str,
    query: Mapping[str, str],
    headers: Mapping[str, str],
    body: bytes,
    *,
    signatures: PostSignatures | None = None,
) -> WebhookReply | None:
    """Judge a request for a channel that runs elsewhere, before it travels.

    Args:
        signatures: a WhatsApp post's verdicts, shared by every channel it
            names (hashed here only for an app secret not checked yet).

    Returns:
        ``None`` when the request is the platform's and should be forwarded;
        else the whole answer: 403 for a bad signature or secret, Meta's
        challenge (or 403) for a verification GET, which needs no owner.
    """
    try:
        if provider == "whatsapp":
            settings = WhatsAppSettings.from_config(config)
            if method.upper() == "GET":
                outcome = verify_subscription(query, settings.verify_token)
                return WebhookReply(
                    status=outcome.status, body=outcome.body, media_type=outcome.content_type
                )
            if signatures is None or not signatures.covers(headers, body):
                signatures = PostSignatures(headers, body)
            if not signatures.signed_by(settings.app_secret):
                return WebhookReply(status=403, body=b"invalid X-Hub-Signature-256")
            return None
        if provider == "telegram":
            return telegram_headers(config, headers)
    except ProviderError as exc:  # a channel whose config its own link would refuse
        return refusal(503, "ChannelUnavailable", f"the channel cannot take webhooks: {exc}")
    return refusal(404, "NoWebhook", f"{provider} channels take no webhooks")


class ConfiguredSigner:
    """A WhatsApp channel's app secret, read from its config: the signature check of
    a post for a channel with no live link here (on another node, or reconnecting),
    as a live link's ``webhook_signer`` and ``check_post`` are.

    Attributes:
        webhook_signer: the app secret's signer id (no secret).
    """

    __slots__ = ("_app_secret", "webhook_signer")

    def __init__(self, app_secret: str) -> None:
        self._app_secret = app_secret
        self.webhook_signer = signer_id(app_secret)

    def __repr__(self) -> str:  # never the secret
        return f"<ConfiguredSigner {self.webhook_signer}>"

    def check_post(self, signatures: PostSignatures) -> bool:
        """Whether the post is signed with this app secret (hashed once per secret)."""
        return signatures.signed_by(self._app_secret)


def configured_signer(provider: str, config: ChannelConfig) -> ConfiguredSigner | None:
    """The signature check of a WhatsApp channel's config; None for another provider,
    or a config its own link would refuse (then its posts are judged as before)."""
    if provider != "whatsapp":
        return None
    try:
        return ConfiguredSigner(WhatsAppSettings.from_config(config).app_secret)
    except ProviderError:
        return None


def to_wire(
    method: str, query: Mapping[str, str], headers: Mapping[str, str], body: bytes
) -> dict[str, Any]:
    """A checked request as JSON for its owner (no credential in it)."""
    kept = {name: value for name in _WIRE_HEADERS if (value := _header(headers, name)) is not None}
    return {
        "method": method,
        "query": dict(query),
        "headers": kept,
        "body": base64.b64encode(body).decode("ascii"),
    }


def from_wire(
    provider: str, config: ChannelConfig, wire: Mapping[str, Any]
) -> tuple[str, dict[str, str], dict[str, str], bytes]:
    """The request :func:`to_wire` carried: method, query, headers, body.

    A Telegram request gets its secret token back from the owner's own
    config (the sender checked it against the same secret).

    Raises:
        ValueError, TypeError, KeyError: a malformed request.
        ProviderError: the channel's config has no webhook secret.
    """
    method = str(wire["method"])
    query = {str(k): str(v) for k, v in dict(wire["query"]).items()}
    headers = {str(k): str(v) for k, v in dict(wire["headers"]).items()}
    body = base64.b64decode(str(wire["body"]), validate=True)
    if provider == "telegram":
        secret = parse_options(config.options, config.credentials).webhook_secret
        if secret is not None:
            headers[SECRET_HEADER] = secret
    return method, query, headers, body


def reply_to_wire(reply: WebhookReply) -> dict[str, Any]:
    """The owner's answer as JSON."""
    return {
        "status": reply.status,
        "body": base64.b64encode(reply.body).decode("ascii"),
        "media_type": reply.media_type,
        "dropped": reply.dropped,
    }


def reply_from_wire(wire: Mapping[str, Any]) -> WebhookReply:
    """The owner's answer :func:`reply_to_wire` carried."""
    return WebhookReply(
        status=int(wire["status"]),
        body=base64.b64decode(str(wire["body"]), validate=True),
        media_type=str(wire.get("media_type", "text/plain")),
        dropped=int(wire.get("dropped", 0)),
    )
