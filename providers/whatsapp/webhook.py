"""The sans-IO half of WhatsApp's inbound side: webhook verification and parsing.

Design:
- The Cloud API pushes everything inbound (user messages and the statuses of
  our messages) to one HTTPS callback. Meta first proves the callback with a
  GET (``hub.mode=subscribe``, ``hub.verify_token``, ``hub.challenge``), then
  POSTs JSON notifications signed with ``X-Hub-Signature-256: sha256=<hex>``,
  an HMAC-SHA256 of the raw body keyed with the app secret.
- :func:`handle_webhook` is one pure function from (method, query, headers,
  raw body) to a :class:`WebhookOutcome` (the HTTP answer plus the events), so
  the whole inbound path is tested without a server; the shell only queues
  the events. Signatures use :mod:`hmac` and :mod:`hashlib` and are compared
  with :func:`hmac.compare_digest`; the signature is checked on the raw bytes
  before any JSON is parsed.
- One POST names many numbers, often of one Meta app, and so one app
  secret. :class:`PostSignatures` is that post's verdicts, one per app
  secret, computed at most once: whoever routes the post (the node's ops
  server) checks it there, and each channel it is handed to reads the same
  verdict instead of hashing the body again. A post without a well-formed
  header, or over :data:`MAX_NOTIFICATION_BYTES`, is refused unhashed.
- Statuses may arrive out of order (``read`` before ``delivered``) and more
  than once: they are emitted as they come, one
  :class:`~providers.base.DeliveryReceipt` each; consumers keep the furthest
  status per message (sent < delivered < read; failed is final) and
  deduplicate inbound messages by ``platform_message_id``.
- Business-scoped user ids (BSUIDs): contacts carry ``user_id`` beside
  ``wa_id``, statuses ``recipient_user_id`` beside ``recipient_id``. A user
  who hides their number has no ``wa_id`` (nor ``from``): then the BSUID is
  the peer (the provider sends to it with ``recipient``); otherwise the peer
  stays the phone number and the BSUID is in ``metadata["user_id"]``.
- Inbound media arrive as media ids, not URLs: :attr:`Media.url` is the Graph
  URL of the media object (``{api_root}/{media_id}``), which answers, with the
  bearer token, the short-lived download URL.
- Notification payloads are structured with cattrs through one converter
  (:data:`WEBHOOK`); unknown fields are ignored, as Meta adds them freely.
  Strings are strict: ``"from": null`` or ``"id": 5`` is not turned into the
  text ``"None"`` or ``"5"`` (cattrs' default would), it is a malformed item.
- A signed notification is read item by item: one malformed message, status
  or contact is dropped, named with its path in
  :attr:`WebhookOutcome.dropped`, and the rest are kept (answering 400 for
  the whole body would make Meta redeliver the good items with the bad one,
  for days). Only a body that is not a WhatsApp notification at all (not
  JSON, too deep, another ``object``) answers 400.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Mapping
from typing import Any, Final, TypeVar

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, override

from providers import bounded_json
from providers.base import (
    DeliveryReceipt,
    Event,
    InboundMessage,
    Media,
    MediaKind,
    ReceiptStatus,
)

__all__ = [
    "MAX_NOTIFICATION_BYTES",
    "SIGNATURE_HEADER",
    "WEBHOOK",
    "Notification",
    "PostSignatures",
    "WebhookOutcome",
    "WebhookPayloadError",
    "handle_webhook",
    "parse_notification",
    "read_notification",
    "sign",
    "signature_header_valid",
    "signer_id",
    "verify_signature",
    "verify_subscription",
]

SIGNATURE_HEADER: Final = "x-hub-signature-256"
MAX_NOTIFICATION_BYTES: Final = 4 * 1024 * 1024  # bytes; larger: 413, before any hashing
_PREFIX: Final = "sha256="

WEBHOOK: Final = cattrs.Converter(detailed_validation=True)
"""The converter for webhook notification payloads (never the global one)."""


class WebhookPayloadError(ValueError):
    """A correctly signed notification that is not a WhatsApp payload we can read."""


@attrs.frozen(kw_only=True)
class WebhookOutcome:
    """What to answer Meta, and what the notification carried.

    Attributes:
        status: the HTTP status to answer.
        body: the response body (the challenge for a verification).
        content_type: its media type.
        events: the events to queue, in payload order.
        dropped: the malformed items left out, each ``"<path>: <problem>"``.
    """

    status: int
    body: bytes = b""
    content_type: str = "text/plain"
    events: tuple[Event, ...] = ()
    dropped: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class Notification:
    """What one signed notification carried.

    Attributes:
        events: the events, in payload order.
        dropped: the malformed items left out, each ``"<path>: <problem>"``.
    """

    events: tuple[Event, ...] = ()
    dropped: tuple[str, ...] = ()


# --- authentication ----------------------------------------------------------------------


def sign(app_secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value Meta sends for ``body``."""
    return _PREFIX + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


def signer_id(app_secret: str) -> str:
    """A name for ``app_secret`` that tells apps apart without revealing the secret.

    Channels of one Meta app share an app secret and so a signature: whoever
    routes a notification checks it once per signer id, not once per channel.
    The id is an HMAC of a fixed label keyed with the secret, cut to 16 hex
    digits: it cannot be turned back into the secret, nor forge a signature.
    """
    label = b"switchboard whatsapp signer id"
    return hmac.new(app_secret.encode(), label, hashlib.sha256).hexdigest()[:16]


def signature_header_valid(headers: Mapping[str, str]) -> bool:
    """Whether ``headers`` carry an ``X-Hub-Signature-256`` of the right form at all.

    A request without one is refused before its body is hashed or read as JSON.
    """
    given = _header(headers, SIGNATURE_HEADER)
    if given is None:
        return False
    value = given.strip().lower()
    digits = value.removeprefix(_PREFIX)
    return (
        value.startswith(_PREFIX)
        and len(digits) == 64
        and all(c in "0123456789abcdef" for c in digits)
    )


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def verify_signature(app_secret: str, headers: Mapping[str, str], body: bytes) -> bool:
    """Whether ``body`` carries a valid ``X-Hub-Signature-256`` for ``app_secret``.

    Args:
        app_secret: the Meta app secret.
        headers: the request headers (names compared case-insensitively).
        body: the raw request body, exactly as received.
    """
    if not signature_header_valid(headers) or len(body) > MAX_NOTIFICATION_BYTES:
        return False
    given = _header(headers, SIGNATURE_HEADER) or ""
    expected = sign(app_secret, body)
    return hmac.compare_digest(expected.encode(), given.strip().lower().encode())


class PostSignatures:
    """One POST's ``X-Hub-Signature-256``, checked at most once per app secret.

    Thread-safe for one checker at a time (the ops server hashes large bodies
    in a worker thread, one secret after another). The channels a post is
    handed to trust its verdicts only for the very body and header it was
    made from (:meth:`covers`); any other request they check themselves.

    Attributes:
        hashed: how many times the body was hashed (at most once per secret).
    """

    __slots__ = ("_body", "_given", "_verdicts", "hashed")

    def __init__(self, headers: Mapping[str, str], body: bytes) -> None:
        self._body = body
        well_formed = signature_header_valid(headers) and len(body) <= MAX_NOTIFICATION_BYTES
        self._given = (_header(headers, SIGNATURE_HEADER) or "") if well_formed else None
        self._verdicts: dict[str, bool] = {}  # app secret -> signed by it
        self.hashed = 0

    def __repr__(self) -> str:  # never the secrets it was checked against
        state = "UNSIGNED" if self._given is None else f"checked={len(self._verdicts)}"
        return f"<PostSignatures {len(self._body)} bytes [{state} hashed={self.hashed}]>"

    @property
    def well_formed(self) -> bool:
        """Whether the post carries a signature of the right form at all (else: unhashed)."""
        return self._given is not None

    def covers(self, headers: Mapping[str, str], body: bytes) -> bool:
        """Whether these verdicts are about exactly this body and signature header."""
        if body is not self._body and body != self._body:
            return False
        if self._given is None:
            return not signature_header_valid(headers)
        return _header(headers, SIGNATURE_HEADER) == self._given

    def signed_by(self, app_secret: str) -> bool:
        """Whether the post is signed with ``app_secret``: hashed the first time only."""
        if self._given is None:
            return False
        verdict = self._verdicts.get(app_secret)
        if verdict is None:
            self.hashed += 1
            expected = sign(app_secret, self._body)
            verdict = hmac.compare_digest(expected.encode(), self._given.strip().lower().encode())
            self._verdicts[app_secret] = verdict
        return verdict


def verify_subscription(query: Mapping[str, str], verify_token: str) -> WebhookOutcome:
    """Answer Meta's GET verification: the challenge with 200, else 403.

    Args:
        query: the query parameters (``hub.mode``, ``hub.verify_token``, ``hub.challenge``).
        verify_token: the token configured for this webhook.
    """
    mode = query.get("hub.mode")
    token = query.get("hub.verify_token", "")
    challenge = query.get("hub.challenge")
    if (
        mode == "subscribe"
        and challenge is not None
        and hmac.compare_digest(token.encode(), verify_token.encode())
    ):
        return WebhookOutcome(status=200, body=challenge.encode())
    return WebhookOutcome(status=403, body=b"verification failed")


# --- the notification payload -----------------------------------------------------------


@attrs.frozen(kw_only=True)
class _Text:
    body: str


@attrs.frozen(kw_only=True)
class _MediaPart:
    id: str
    mime_type: str | None = None
    sha256: str | None = None
    caption: str | None = None
    filename: str | None = None


@attrs.frozen(kw_only=True)
class _Context:
    id: str | None = None
    sender: str | None = None  # "from" on the wire


@attrs.frozen(kw_only=True)
class _Message:
    id: str
    sender: str | None = None  # "from" on the wire; absent for a hidden number
    from_user_id: str | None = None
    timestamp: str | None = None
    type: str = "text"
    text: _Text | None = None
    image: _MediaPart | None = None
    video: _MediaPart | None = None
    document: _MediaPart | None = None
    audio: _MediaPart | None = None
    context: _Context | None = None
    button: Mapping[str, Any] | None = None
    interactive: Mapping[str, Any] | None = None


@attrs.frozen(kw_only=True)
class _StatusError:
    code: int
    title: str = ""
    message: str = ""
    error_data: Mapping[str, Any] | None = None


@attrs.frozen(kw_only=True)
class _Status:
    id: str
    status: str
    recipient_id: str | None = None
    recipient_user_id: str | None = None
    timestamp: str | None = None
    errors: list[_StatusError] = attrs.field(factory=list)


@attrs.frozen(kw_only=True)
class _Metadata:
    phone_number_id: str
    display_phone_number: str | None = None


@attrs.frozen(kw_only=True)
class _Profile:
    name: str | None = None


@attrs.frozen(kw_only=True)
class _Contact:
    wa_id: str | None = None
    user_id: str | None = None
    profile: _Profile | None = None


@attrs.frozen(kw_only=True)
class _Value:
    metadata: _Metadata
    contacts: list[Any] = attrs.field(factory=list)  # each structured on its own
    messages: list[Any] = attrs.field(factory=list)
    statuses: list[Any] = attrs.field(factory=list)


@attrs.frozen(kw_only=True)
class _Change:
    field: str
    value: Mapping[str, Any]  # structured only for field == "messages"


@attrs.frozen(kw_only=True)
class _Entry:
    id: str | None = None
    changes: list[_Change] = attrs.field(factory=list)


@attrs.frozen(kw_only=True)
class _Notification:
    object: str
    entry: list[_Entry] = attrs.field(factory=list)


def _strict_str(value: Any, _: type) -> str:
    # cattrs' default is str(value): null would become "None", 5 would become "5".
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


WEBHOOK.register_structure_hook(str, _strict_str)
WEBHOOK.register_structure_hook(
    _Message, make_dict_structure_fn(_Message, WEBHOOK, sender=override(rename="from"))
)
WEBHOOK.register_structure_hook(
    _Context, make_dict_structure_fn(_Context, WEBHOOK, sender=override(rename="from"))
)

_MEDIA_KINDS: Final = {kind.value: kind for kind in MediaKind}
_STATUSES: Final = {status.value: status for status in ReceiptStatus}


def _time(raw: str | None) -> float | None:
    """A timestamp's seconds, or None (unknown) for text that is not a finite number:
    the durable stores refuse NaN and infinities, which would lose the message."""
    try:
        seconds = float(raw) if raw is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and math.isfinite(seconds) else None


def _inbound(
    message: _Message,
    names: Mapping[str, str],
    contacts: list[_Contact],
    *,
    channel_id: str,
    media_root: str,
) -> InboundMessage | None:
    contact = next(
        (
            c
            for c in contacts
            if (message.sender and c.wa_id == message.sender)
            or (message.from_user_id and c.user_id == message.from_user_id)
        ),
        contacts[0] if len(contacts) == 1 else None,
    )
    user_id = message.from_user_id or (contact.user_id if contact is not None else None)
    sender = message.sender or (contact.wa_id if contact is not None else None) or user_id
    if sender is None:
        return None  # nobody to answer: not a message for the runtime
    text: str | None = None
    media: Media | None = None
    if message.text is not None:
        text = message.text.body
    part = getattr(message, message.type, None) if message.type in _MEDIA_KINDS else None
    if isinstance(part, _MediaPart):
        media = Media(
            kind=_MEDIA_KINDS[message.type],
            url=f"{media_root.rstrip('/')}/{part.id}",
            caption=part.caption,
            filename=part.filename,
        )
    if message.button is not None and isinstance(message.button.get("text"), str):
        text = message.button["text"]  # a quick-reply button of a template
    if message.interactive is not None:
        reply = message.interactive.get("button_reply") or message.interactive.get("list_reply")
        if isinstance(reply, Mapping) and isinstance(reply.get("title"), str):
            text = reply["title"]
    metadata: dict[str, Any] = {"type": message.type}
    if isinstance(part, _MediaPart):
        metadata.update(media_id=part.id, mime_type=part.mime_type, sha256=part.sha256)
    if sender in names:
        metadata["profile_name"] = names[sender]
    if user_id is not None:
        metadata["user_id"] = user_id
    return InboundMessage(
        channel_id=channel_id,
        platform_message_id=message.id,
        peer=sender,
        sender=sender,
        text=text,
        media=media,
        reply_to=message.context.id if message.context is not None else None,
        timestamp=_time(message.timestamp),
        metadata=metadata,
    )


def _receipt(status: _Status, *, channel_id: str) -> DeliveryReceipt | None:
    kind = _STATUSES.get(status.status)
    if kind is None:
        return None  # "deleted", "warning", ...: nothing the runtime tracks
    error = None
    if status.errors:
        first = status.errors[0]
        details = (first.error_data or {}).get("details")
        error = f"{first.code} {first.title or first.message}".strip()
        if isinstance(details, str) and details:
            error += f": {details}"
    return DeliveryReceipt(
        channel_id=channel_id,
        platform_message_id=status.id,
        peer=status.recipient_id or status.recipient_user_id or "",
        status=kind,
        timestamp=_time(status.timestamp),
        error=error,
    )


def parse_notification(
    body: bytes, *, channel_id: str, phone_number_id: str | None = None, media_root: str = ""
) -> list[Event]:
    """The events of one webhook notification, in payload order (see :func:`read_notification`).

    Raises:
        WebhookPayloadError: the body is not JSON or not a WhatsApp notification.
    """
    notification = read_notification(
        body, channel_id=channel_id, phone_number_id=phone_number_id, media_root=media_root
    )
    return list(notification.events)


_T = TypeVar("_T")


def _items(raw: list[Any], kind: type[_T], path: str, dropped: list[str]) -> list[_T]:
    """Each of ``raw`` structured as ``kind``; a malformed one goes to ``dropped``."""
    items: list[_T] = []
    for i, item in enumerate(raw):
        try:
            items.append(WEBHOOK.structure(item, kind))
        except (cattrs.BaseValidationError, TypeError, ValueError, AttributeError) as exc:
            dropped.append(_describe(exc, f"{path}[{i}]"))
    return items


def read_notification(
    body: bytes, *, channel_id: str, phone_number_id: str | None = None, media_root: str = ""
) -> Notification:
    """The events of one webhook notification, and the malformed items left out.

    Args:
        body: the raw, already authenticated, request body.
        channel_id: our channel id, stamped on every event.
        phone_number_id: keep only changes for this number (one Meta app may
            serve several numbers on one callback); ``None`` keeps all.
        media_root: the Graph API root (``{base_url}/{version}``) for media URLs.

    Returns:
        InboundMessage for each message, DeliveryReceipt for each
        sent/delivered/read/failed status; other fields are skipped; each
        malformed change, message, status or contact is dropped and named.

    Raises:
        WebhookPayloadError: the body is not JSON or not a WhatsApp notification.
    """
    try:
        raw = bounded_json.loads(body, max_bytes=MAX_NOTIFICATION_BYTES)
    except ValueError as exc:
        raise WebhookPayloadError(f"the webhook body is not JSON: {exc}") from exc
    try:
        notification = WEBHOOK.structure(raw, _Notification)
    except (cattrs.BaseValidationError, TypeError, AttributeError) as exc:
        raise WebhookPayloadError(_describe(exc, "$")) from exc
    if notification.object != "whatsapp_business_account":
        raise WebhookPayloadError(
            f"webhook object is {notification.object!r}, not 'whatsapp_business_account'"
        )
    events: list[Event] = []
    dropped: list[str] = []
    for e, entry in enumerate(notification.entry):
        for c, change in enumerate(entry.changes):
            if change.field != "messages":
                continue  # account updates, template reviews...: not channel events
            path = f"$.entry[{e}].changes[{c}].value"
            try:
                value = WEBHOOK.structure(change.value, _Value)
            except (cattrs.BaseValidationError, TypeError, AttributeError) as exc:
                dropped.append(_describe(exc, path))
                continue
            if phone_number_id is not None and value.metadata.phone_number_id != phone_number_id:
                continue
            contacts = _items(value.contacts, _Contact, f"{path}.contacts", dropped)
            names = {
                (contact.wa_id or contact.user_id or ""): contact.profile.name
                for contact in contacts
                if contact.profile is not None and contact.profile.name is not None
            }
            messages = _items(value.messages, _Message, f"{path}.messages", dropped)
            for message in messages:
                inbound = _inbound(
                    message, names, contacts, channel_id=channel_id, media_root=media_root
                )
                if inbound is None:
                    dropped.append(
                        f"message {message.id!r} has no sender (from, from_user_id or one "
                        f"contact) @ {path}.messages"
                    )
                else:
                    events.append(inbound)
            for status in _items(value.statuses, _Status, f"{path}.statuses", dropped):
                receipt = _receipt(status, channel_id=channel_id)
                if receipt is not None:
                    events.append(receipt)
    return Notification(events=tuple(events), dropped=tuple(dropped))


def _describe(exc: Exception, path: str) -> str:
    if isinstance(exc, cattrs.BaseValidationError):
        # cattrs names attributes, not wire keys: "sender" is "from" on the wire.
        lines = (
            line.replace(".sender", ".from") for line in cattrs.transform_error(exc, path=path)
        )
        return "malformed WhatsApp notification: " + "; ".join(lines)
    return f"malformed WhatsApp notification: {exc} @ {path}"


# --- the whole exchange ------------------------------------------------------------------


def handle_webhook(
    method: str,
    query: Mapping[str, str],
    headers: Mapping[str, str],
    body: bytes,
    *,
    app_secret: str,
    verify_token: str,
    channel_id: str,
    phone_number_id: str | None = None,
    media_root: str = "",
    signatures: PostSignatures | None = None,
) -> WebhookOutcome:
    """Answer one webhook request and extract its events.

    Args:
        method: ``GET`` (verification) or ``POST`` (notification).
        query: the query parameters.
        headers: the request headers.
        body: the raw body.
        app_secret: the key of ``X-Hub-Signature-256``.
        verify_token: the token Meta must echo on verification.
        channel_id: stamped on the events.
        phone_number_id: see :func:`parse_notification`.
        media_root: see :func:`parse_notification`.
        signatures: the post's verdicts, when whoever routed it checked it
            already (:class:`PostSignatures`): read, not hashed again, if they
            cover this very body and header.

    Returns:
        200 with the challenge or the events; 403 for a failed verification
        or a bad signature (no events); 400 for a signed but unreadable body
        (not JSON, nested deeper than :data:`providers.bounded_json.MAX_DEPTH`);
        413 for a body over :data:`MAX_NOTIFICATION_BYTES` (refused before
        it is hashed); 405 for other methods.
    """
    if method.upper() == "GET":
        return verify_subscription(query, verify_token)
    if method.upper() != "POST":
        return WebhookOutcome(status=405, body=b"only GET and POST")
    if len(body) > MAX_NOTIFICATION_BYTES:
        return WebhookOutcome(
            status=413, body=f"the body exceeds {MAX_NOTIFICATION_BYTES} bytes".encode()
        )
    if signatures is None or not signatures.covers(headers, body):
        signatures = PostSignatures(headers, body)
    if not signatures.signed_by(app_secret):
        return WebhookOutcome(status=403, body=b"invalid X-Hub-Signature-256")
    try:
        notification = read_notification(
            body, channel_id=channel_id, phone_number_id=phone_number_id, media_root=media_root
        )
    except WebhookPayloadError as exc:
        return WebhookOutcome(status=400, body=str(exc).encode())
    return WebhookOutcome(
        status=200, body=b"ok", events=notification.events, dropped=notification.dropped
    )
