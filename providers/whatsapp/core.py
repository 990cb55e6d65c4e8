"""The sans-IO half of the WhatsApp Cloud API client: requests out, results or errors in.

Design:
- Everything here is a pure function of its arguments: settings and an
  :class:`~providers.base.OutboundMessage` become an :class:`ApiRequest`
  (method, URL, headers, JSON body); a status, headers and raw body become a
  :class:`~providers.base.SendResult` or a :class:`~providers.base.ProviderError`.
  No sockets, no clock (but for a ``Retry-After`` given as an HTTP date:
  :func:`~providers._http.retry_after_header` reads the wall clock for it),
  so every branch is unit-tested without a server, and
  the trio shell (:mod:`providers.whatsapp.shell`) only moves bytes.
- Graph API errors are mapped by their ``code``, not by the HTTP status
  (Meta answers most WhatsApp errors with 400), into the tree of
  :mod:`providers.base`::

      code 130429 throughput reached    -> RateLimited(CHANNEL, 1 s)
      code 131056 pair rate limit       -> RateLimited(PEER, 6 s, peer=to)
      code 4 application limit          -> RateLimited(GLOBAL, 60 s)
      code 80007 account limit          -> RateLimited(CHANNEL, 60 s)
      code 131047 re-engagement (24 h)  -> OutsideWindow
      code 131026 undeliverable         -> BadRecipient (and 131021, 131030)
      code 100 + text too long          -> MessageTooLong
      code 100 + message not found      -> MessageNotFound (a read mark or reaction
                                           of a message WhatsApp does not have)
      code 100/131008/131009/131051     -> PermanentSendError
      code 368 / 131031 policy block    -> Banned
      code 190, 0, HTTP 401             -> AuthenticationFailed
      code 10, 200-299                  -> MissingPermissions
      code 1, 2, 131000, 131016, 5xx    -> TransientError (a 503's Retry-After
                                           is its least wait, ``retry_after``)

  The Cloud API gives no ``Retry-After`` for these; the waits above are the
  documented windows (throughput is counted per second, the pair limit
  allows about one message per 6 s). A ``Retry-After`` header, or the
  ``estimated_time_to_regain_access`` of ``X-Business-Use-Case-Usage``
  (minutes), overrides them when present.
- Beyond sending: ``status: read`` marks a message read, and with
  ``typing_indicator`` shows "typing…" (the Cloud API's only typing signal);
  reactions are ``type: reaction`` messages (an empty emoji removes one);
  uploads go to ``POST /{phone_number_id}/media`` first and the message
  carries the media ``id``. The Cloud API cannot edit or delete a business
  message: those are not in :data:`OPERATIONS`.
- Recipients: a phone number (``wa_id``) goes in ``to``, a business-scoped
  user id (BSUID, ``US.13491208655302741918``, what webhooks carry as
  ``user_id`` for users who hide their number) in ``recipient``.
- Platform payloads are structured with cattrs through one converter for
  the Graph wire format (:data:`GRAPH`), so a malformed answer reads like
  ``expected int @ $.error.code``. Ids are strict strings: ``"id": null``
  is no id, not the id ``"None"``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, override

from providers._http import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_REQUEST_DEADLINE,
    check_token,
    json_body,
    lower_keys,
    quoted,
    redirect_error,
    retry_after_header,
    unavailable_wait,
)
from providers.base import (
    AuthenticationFailed,
    BadRecipient,
    Banned,
    ChannelConfig,
    FatalError,
    MessageNotFound,
    MessageTooLong,
    MissingPermissions,
    OutboundMessage,
    OutsideWindow,
    PermanentSendError,
    PlatformLimits,
    ProviderError,
    RateLimited,
    RateLimitScope,
    SendResult,
    TransientError,
    retry_after_seconds,
)
from providers.media import Upload
from providers.operations import OperationKind, React
from providers.options import buffer_size, limit, options_converter, options_error

__all__ = [
    "APP_RETRY_AFTER",
    "DEFAULT_API_VERSION",
    "DEFAULT_BASE_URL",
    "DEFAULT_RETRY_AFTER",
    "GRAPH",
    "MAX_CAPTION_LENGTH",
    "MAX_TEXT_LENGTH",
    "OPERATIONS",
    "PAIR_RETRY_AFTER",
    "THROUGHPUT_RETRY_AFTER",
    "WHATSAPP_LIMITS",
    "ApiRequest",
    "GraphError",
    "WhatsAppSettings",
    "build_media_upload",
    "build_phone_number_request",
    "build_reaction_request",
    "build_read_request",
    "build_send_request",
    "is_bsuid",
    "map_error",
    "message_payload",
    "parse_media_response",
    "parse_phone_number_response",
    "parse_send_response",
    "parse_success_response",
]

DEFAULT_BASE_URL: Final = "https://graph.facebook.com"
DEFAULT_API_VERSION: Final = "v21.0"
MAX_TEXT_LENGTH: Final = 4096  # characters
MAX_CAPTION_LENGTH: Final = 1024  # characters
THROUGHPUT_RETRY_AFTER: Final = 1.0  # seconds: 80 msgs/s per number, counted per second
PAIR_RETRY_AFTER: Final = 6.0  # seconds: about one message per 6 s to one recipient
APP_RETRY_AFTER: Final = 60.0  # seconds: app/account limits use hourly windows; re-probe
DEFAULT_RETRY_AFTER: Final = 1.0  # seconds: an HTTP 429 without any other guidance

# 80 messages in any second per number, refused with 130429 past that: no
# burst on top (a burst of 80 and then 80/s sends 160 in the first second).
WHATSAPP_LIMITS: Final = PlatformLimits(
    per_channel_rate=80.0,
    per_channel_burst=1,
    per_channel_strict=True,
    per_peer_rate=1 / 6,
    per_peer_burst=3,
    max_text_length=MAX_TEXT_LENGTH,
    max_upload_bytes=100 * 1024 * 1024,  # bytes: documents; images 5 MB, video 16 MB
)
OPERATIONS: Final = frozenset(
    {
        OperationKind.SEND,
        OperationKind.UPLOAD,
        OperationKind.TYPING,
        OperationKind.MARK_READ,
        OperationKind.REACT,
    }
)
# A business-scoped user id: country, optionally ENT (a parent BSUID), digits.
BSUID: Final = re.compile(r"[A-Z]{2}\.(?:ENT\.)?\d+")

GRAPH: Final = cattrs.Converter(detailed_validation=True)
"""The converter for Graph API payloads (never the global one)."""

_VERSION_SUFFIX: Final = re.compile(r"/(v\d+(?:\.\d+)?)/*$")


def graph_version_problem(base_url: str) -> str | None:
    """Why ``base_url`` cannot be a Graph API root, or ``None`` if it can.

    The provider puts the version after the root itself (``api_version``),
    so a root that already ends in one would be called as ``/v21.0/v21.0/``.
    """
    match = _VERSION_SUFFIX.search(urlsplit(base_url).path)
    if match is None:
        return None
    root = base_url[: base_url.rindex(match.group(1))].rstrip("/")
    return (
        f'base_url ends in the Graph API version "{match.group(1)}", which the provider adds '
        f'itself: write "{root}" (the version is options.api_version, '
        f'default "{DEFAULT_API_VERSION}")'
    )


# --- settings ----------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class _Options:
    phone_number_id: str
    api_version: str = DEFAULT_API_VERSION
    timeout: float = attrs.field(default=10.0, validator=limit("seconds"))  # per HTTP request
    verify_on_open: bool = True
    # events queued between webhook and consumer
    event_buffer: int = attrs.field(default=1024, validator=buffer_size)
    # bytes of one Graph API answer; seconds for a whole call
    max_body_bytes: int = attrs.field(default=DEFAULT_MAX_BODY_BYTES, validator=limit("bytes"))
    request_deadline: float = attrs.field(
        default=DEFAULT_REQUEST_DEADLINE, validator=limit("seconds")
    )


_OPTIONS: Final = options_converter()


@attrs.frozen(kw_only=True)
class WhatsAppSettings:
    """Everything one WhatsApp channel needs, validated once at open.

    Attributes:
        channel_id: our channel id.
        phone_number_id: the Cloud API phone number id the channel sends from.
        token: the system-user access token (Bearer).
        app_secret: the Meta app secret that signs webhooks.
        verify_token: the token Meta echoes during webhook verification.
        base_url: the Graph API root (an emulator's in tests).
        api_version: the Graph API version path segment, e.g. ``v21.0``.
        timeout: seconds per HTTP read or write (httpx's timeouts).
        verify_on_open: check the token and number with one GET on open.
        event_buffer: events that may wait between webhook and consumer.
        max_body_bytes: the largest Graph API answer read; a larger one is a
            transient error.
        request_deadline: seconds for a whole call and its answer, whatever
            pace the server keeps.
    """

    channel_id: str
    phone_number_id: str
    token: str = attrs.field(repr=False)
    app_secret: str = attrs.field(repr=False)
    verify_token: str = attrs.field(repr=False)
    base_url: str = DEFAULT_BASE_URL
    api_version: str = DEFAULT_API_VERSION
    timeout: float = 10.0
    verify_on_open: bool = True
    event_buffer: int = 1024
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    request_deadline: float = DEFAULT_REQUEST_DEADLINE

    @property
    def api_root(self) -> str:
        """``{base_url}/{api_version}``, without a trailing slash."""
        return f"{self.base_url.rstrip('/')}/{self.api_version}"

    @classmethod
    def from_config(cls, config: ChannelConfig) -> WhatsAppSettings:
        """Validate a channel's config.

        Raises:
            AuthenticationFailed: a credential is missing or empty.
            FatalError: the options are malformed (the message names the field).
        """
        if config.base_url is not None and (problem := graph_version_problem(config.base_url)):
            raise FatalError(f"whatsapp channel {config.channel_id!r}: {problem}")
        missing = [
            key
            for key in ("token", "app_secret", "verify_token")
            if not config.credentials.get(key)
        ]
        if missing:
            raise AuthenticationFailed(
                f"whatsapp channel {config.channel_id!r} lacks credentials {missing}: set the "
                "system-user access token, the app secret and the webhook verify token"
            )
        check_token(config.credentials["token"], f"whatsapp channel {config.channel_id!r}")
        try:
            options = _OPTIONS.structure(dict(config.options), _Options)
        except cattrs.BaseValidationError as exc:
            raise FatalError(
                f"whatsapp channel {config.channel_id!r} has invalid options: {options_error(exc)}"
            ) from exc
        return cls(
            channel_id=config.channel_id,
            phone_number_id=options.phone_number_id,
            token=config.credentials["token"],
            app_secret=config.credentials["app_secret"],
            verify_token=config.credentials["verify_token"],
            base_url=config.base_url or DEFAULT_BASE_URL,
            api_version=options.api_version,
            timeout=options.timeout,
            verify_on_open=options.verify_on_open,
            event_buffer=options.event_buffer,
            max_body_bytes=options.max_body_bytes,
            request_deadline=options.request_deadline,
        )


# --- requests ----------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class ApiRequest:
    """One HTTP request for the shell to perform.

    Attributes:
        method: the HTTP method.
        url: the absolute URL.
        headers: request headers (they hold the token, so ``repr`` hides them).
        json: the JSON body, if any.
        form: multipart fields (with ``upload`` as the ``file`` part).
        upload: the file of a media upload.
    """

    method: Literal["GET", "POST"]
    url: str
    headers: Mapping[str, str] = attrs.field(repr=False)
    json: Mapping[str, Any] | None = None
    form: Mapping[str, str] | None = None
    upload: Upload | None = None


def _auth(settings: WhatsAppSettings) -> dict[str, str]:
    return {"Authorization": f"Bearer {settings.token}"}


def is_bsuid(peer: str) -> bool:
    """Whether ``peer`` is a business-scoped user id rather than a phone number."""
    return BSUID.fullmatch(peer) is not None


def _recipient(peer: str) -> dict[str, Any]:
    if is_bsuid(peer):
        return {"recipient": peer, "recipient_type": "individual"}
    return {"recipient_type": "individual", "to": peer}


def message_payload(
    msg: OutboundMessage, *, max_text_length: int = MAX_TEXT_LENGTH, media_id: str | None = None
) -> dict[str, Any]:
    """The Cloud API JSON body for ``msg``.

    Args:
        msg: the message; ``metadata["preview_url"]`` turns on link previews for text.
        max_text_length: the longest text accepted, checked before any request.
        media_id: the id an upload of ``msg.media`` got (``POST /media``).

    Returns:
        The body for ``POST /{version}/{phone_number_id}/messages``.

    Raises:
        MessageTooLong: text or caption over the limit.
        PermanentSendError: content the Cloud API cannot carry (a caption on audio).
    """
    body: dict[str, Any] = {"messaging_product": "whatsapp", **_recipient(msg.peer)}
    if msg.text is not None:
        if len(msg.text) > max_text_length:
            raise MessageTooLong(
                f"text of {len(msg.text)} characters exceeds WhatsApp's {max_text_length}; "
                "split it or send a document",
                peer=msg.peer,
            )
        body["type"] = "text"
        body["text"] = {"body": msg.text, "preview_url": bool(msg.metadata.get("preview_url"))}
    elif msg.media is not None:
        kind = msg.media.kind.value
        part: dict[str, Any] = {"id": media_id} if media_id is not None else {"link": msg.media.url}
        if msg.media.caption is not None:
            if kind == "audio":
                raise PermanentSendError(
                    "WhatsApp audio messages cannot carry a caption; send the text separately",
                    peer=msg.peer,
                )
            if len(msg.media.caption) > MAX_CAPTION_LENGTH:
                raise MessageTooLong(
                    f"caption of {len(msg.media.caption)} characters exceeds WhatsApp's "
                    f"{MAX_CAPTION_LENGTH}",
                    peer=msg.peer,
                )
            part["caption"] = msg.media.caption
        if kind == "document" and msg.media.filename is not None:
            part["filename"] = msg.media.filename
        body["type"] = kind
        body[kind] = part
    else:
        assert msg.template is not None  # OutboundMessage guarantees exactly one
        template: dict[str, Any] = {
            "name": msg.template.name,
            "language": {"code": msg.template.language},
        }
        if msg.template.components:
            template["components"] = [dict(c) for c in msg.template.components]
        body["type"] = "template"
        body["template"] = template
    if msg.reply_to is not None:
        body["context"] = {"message_id": msg.reply_to}
    return body


def build_send_request(
    settings: WhatsAppSettings, msg: OutboundMessage, *, media_id: str | None = None
) -> ApiRequest:
    """``POST /{version}/{phone_number_id}/messages`` for ``msg``.

    Raises:
        MessageTooLong, PermanentSendError: see :func:`message_payload`.
    """
    return ApiRequest(
        method="POST",
        url=f"{settings.api_root}/{settings.phone_number_id}/messages",
        headers=_auth(settings),
        json=message_payload(msg, media_id=media_id),
    )


def build_read_request(
    settings: WhatsAppSettings, message_id: str, *, typing: bool = False
) -> ApiRequest:
    """``status: read`` for an inbound message, with the typing indicator if asked."""
    body: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "status": "read",
        "message_id": message_id,
    }
    if typing:
        body["typing_indicator"] = {"type": "text"}
    return ApiRequest(
        method="POST",
        url=f"{settings.api_root}/{settings.phone_number_id}/messages",
        headers=_auth(settings),
        json=body,
    )


def build_reaction_request(settings: WhatsAppSettings, op: React) -> ApiRequest:
    """A ``reaction`` message (an empty emoji removes the business's reaction)."""
    body = {
        "messaging_product": "whatsapp",
        **_recipient(op.peer),
        "type": "reaction",
        "reaction": {"message_id": op.message_id, "emoji": "" if op.remove else op.emoji},
    }
    return ApiRequest(
        method="POST",
        url=f"{settings.api_root}/{settings.phone_number_id}/messages",
        headers=_auth(settings),
        json=body,
    )


def build_media_upload(settings: WhatsAppSettings, upload: Upload) -> ApiRequest:
    """``POST /{version}/{phone_number_id}/media``: multipart ``file``, ``type``,
    ``messaging_product``; the answer's ``id`` goes in the message."""
    return ApiRequest(
        method="POST",
        url=f"{settings.api_root}/{settings.phone_number_id}/media",
        headers=_auth(settings),
        form={"messaging_product": "whatsapp", "type": upload.mime_type},
        upload=upload,
    )


def build_phone_number_request(settings: WhatsAppSettings) -> ApiRequest:
    """``GET /{version}/{phone_number_id}``: proves the token and the number on open."""
    return ApiRequest(
        method="GET",
        url=(
            f"{settings.api_root}/{settings.phone_number_id}"
            "?fields=id,display_phone_number,verified_name"
        ),
        headers=_auth(settings),
    )


# --- responses ---------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class GraphError:
    """The ``error`` object of a Graph API error response.

    Attributes:
        code: the Graph error code (the one the mapping uses).
        message: Meta's message, e.g. ``(#131047) Re-engagement message``.
        type: e.g. ``OAuthException``.
        error_subcode: a finer code, when given.
        error_data: ``{"messaging_product": ..., "details": ...}``, when given.
        fbtrace_id: Meta's trace id for support requests.
    """

    code: int
    message: str = ""
    type: str = ""
    error_subcode: int | None = None
    error_data: Mapping[str, Any] | None = None
    fbtrace_id: str | None = None

    @property
    def details(self) -> str:
        """``error_data.details``, or ``""``."""
        detail = (self.error_data or {}).get("details")
        return detail if isinstance(detail, str) else ""

    def describe(self) -> str:
        """One line for error messages: code, message, details, trace id."""
        text = f"code {self.code}: {quoted(self.message) or 'no message'}"
        if self.details:
            text += f" ({quoted(self.details)})"
        if self.fbtrace_id:
            text += f" [fbtrace_id {quoted(self.fbtrace_id, 40)}]"
        return text


@attrs.frozen(kw_only=True)
class _ErrorBody:
    error: GraphError


@attrs.frozen(kw_only=True)
class _MessageId:
    id: str


def _strict_str(value: Any, _: type) -> str:
    # cattrs' default is str(value): an id of null was read as the id "None", 5 as "5".
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


# Only the ids are read strictly: a Graph error's message of another type is
# still the error its code says.
GRAPH.register_structure_hook(
    _MessageId, make_dict_structure_fn(_MessageId, GRAPH, id=override(struct_hook=_strict_str))
)


@attrs.frozen(kw_only=True)
class _SendBody:
    messages: list[_MessageId]


def _retry_after(headers: Mapping[str, str], default: float) -> float:
    """The wait the server asked for, else ``default``: within 0 and
    :data:`~providers.base.MAX_RETRY_AFTER` (``retry_after_seconds``; a
    header's ``99999999`` paused the channel for years, and a usage estimate
    no float holds raised OverflowError out of the send)."""
    seconds = retry_after_header(headers)
    if seconds is not None:
        return retry_after_seconds(seconds, default)
    usage = json_body(lower_keys(headers).get("x-business-use-case-usage", "").encode())
    if isinstance(usage, dict):
        minutes = [
            entry.get("estimated_time_to_regain_access", 0)
            for entries in usage.values()
            if isinstance(entries, list)
            for entry in entries
            if isinstance(entry, dict)
        ]
        waits = [
            m for m in minutes if isinstance(m, int | float) and not isinstance(m, bool) and m > 0
        ]
        if waits:
            return retry_after_seconds(max(waits) * 60, default)
    return default


def _too_long(error: GraphError) -> bool:
    text = f"{error.message} {error.details}".lower()
    return "too long" in text or ("at most" in text and "character" in text)


def map_error(
    status: int, headers: Mapping[str, str], body: bytes, *, peer: str | None = None
) -> ProviderError:
    """The :class:`~providers.base.ProviderError` for a failed Graph API call.

    Args:
        status: the HTTP status (not 2xx).
        headers: the response headers (``Retry-After``, ``X-Business-Use-Case-Usage``).
        body: the raw response body, normally ``{"error": {...}}``.
        peer: the recipient, for peer-scoped errors.

    Returns:
        The error to raise (the caller raises it, so tracebacks start there).
    """
    if (redirect := redirect_error(status, headers, "a Graph API call")) is not None:
        return redirect
    parsed = json_body(body)
    # Only what has the Graph API's shape is structured: a failed structuring keeps
    # its errors in a cycle with its frame, one per proxy error page.
    if not (isinstance(parsed, dict) and isinstance(parsed.get("error"), dict)):
        return _map_status(status, headers, body, peer=peer)
    try:
        error = GRAPH.structure(parsed, _ErrorBody).error
    except (cattrs.BaseValidationError, TypeError, AttributeError):
        return _map_status(status, headers, body, peer=peer)
    code, what = error.code, error.describe()
    if code == 130429:
        return RateLimited(
            f"WhatsApp throughput limit reached for this number ({what}); "
            "wait and resend, or lower the channel rate",
            retry_after=_retry_after(headers, THROUGHPUT_RETRY_AFTER),
            scope=RateLimitScope.CHANNEL,
        )
    if code == 131056:
        return RateLimited(
            f"too many messages to {peer!r} in a short time ({what}); "
            "wait before messaging this recipient again",
            retry_after=_retry_after(headers, PAIR_RETRY_AFTER),
            scope=RateLimitScope.PEER,
            peer=peer,
        )
    if code == 4:
        return RateLimited(
            f"the Meta app's request limit is reached ({what})",
            retry_after=_retry_after(headers, APP_RETRY_AFTER),
            scope=RateLimitScope.GLOBAL,
        )
    if code in (80007, 131048):
        return RateLimited(
            f"the WhatsApp business account is rate limited ({what})",
            retry_after=_retry_after(headers, APP_RETRY_AFTER),
            scope=RateLimitScope.CHANNEL,
        )
    if code == 131047:
        return OutsideWindow(
            f"{peer!r} has not written within 24 hours ({what}); "
            "only a template message can re-open the conversation",
            peer=peer,
        )
    if code in (131026, 131021, 131030):
        return BadRecipient(
            f"the message to {peer!r} is undeliverable ({what}); the number may not be on "
            "WhatsApp or may not accept messages from this business",
            peer=peer,
        )
    if code in (368, 131031):
        return Banned(
            f"Meta blocks this WhatsApp account ({what}); stop and resolve it in the "
            "WhatsApp Manager before reconnecting"
        )
    if code in (0, 190) or status == 401:
        return AuthenticationFailed(
            f"the WhatsApp access token was rejected ({what}); "
            "generate a new system-user token and update the channel's credentials"
        )
    if code == 10 or 200 <= code <= 299:
        return MissingPermissions(
            f"the access token lacks a permission ({what}); grant whatsapp_business_messaging"
        )
    if code == 100 and _too_long(error):
        return MessageTooLong(f"WhatsApp rejected the text as too long ({what})", peer=peer)
    if code == 100 and "not found" in f"{error.message} {error.details}".lower():
        return MessageNotFound(f"WhatsApp does not have that message ({what})", peer=peer)
    if code in (1, 2, 131000, 131016) or status >= 500:
        least = unavailable_wait(status, headers)
        return TransientError(
            f"WhatsApp is temporarily failing ({what}); {_retry_with_backoff(least)}",
            retry_after=least,
        )
    if status == 429:
        return RateLimited(
            f"WhatsApp answered 429 ({what})",
            retry_after=_retry_after(headers, DEFAULT_RETRY_AFTER),
            scope=RateLimitScope.CHANNEL,
        )
    refused = (
        "the request" if peer is None else f"the message to {peer!r}"
    )  # (a connect's: no peer)
    return PermanentSendError(
        f"WhatsApp refused {refused} with HTTP {status} ({what}); it will not succeed unchanged",
        peer=peer,
    )


def _retry_with_backoff(least: float | None) -> str:
    """What a transient error says of its retry (a 503's ``Retry-After``: not before)."""
    if least is None:
        return "retry with backoff"
    return f"retry with backoff, in {least:g} s at the earliest (the answer's Retry-After)"


def _map_status(
    status: int, headers: Mapping[str, str], body: bytes, *, peer: str | None
) -> ProviderError:
    """The mapping when the body is not a Graph error (a proxy, a load balancer)."""
    snippet = body[:200].decode("utf-8", "replace")
    if status == 401:
        return AuthenticationFailed(f"HTTP 401 from the Graph API: {snippet!r}; check the token")
    if status == 429:
        return RateLimited(
            f"HTTP 429 from the Graph API: {snippet!r}",
            retry_after=_retry_after(headers, DEFAULT_RETRY_AFTER),
        )
    if status >= 500 or status in (408, 425):
        least = unavailable_wait(status, headers)
        return TransientError(
            f"HTTP {status} from the Graph API: {snippet!r}; {_retry_with_backoff(least)}",
            retry_after=least,
        )
    if status == 403:
        # Not the Graph API's refusal (that has an error object): a WAF's or a
        # proxy's, which says nothing of the token's permissions. It failed the
        # channel for good (MissingPermissions); it is retried with backoff.
        return TransientError(
            f"HTTP 403 without a Graph error object (a proxy's or a firewall's?): "
            f"{snippet!r}; retry with backoff"
        )
    return PermanentSendError(
        f"HTTP {status} from the Graph API without an error object: {snippet!r}", peer=peer
    )


def parse_send_response(
    status: int, headers: Mapping[str, str], body: bytes, *, peer: str
) -> SendResult:
    """The :class:`~providers.base.SendResult` of a messages call.

    A 2xx answer of the Graph API's own (``"messaging_product": "whatsapp"``)
    without a readable ``messages[0].id`` (none, or one that is not a string:
    ``null``) says the message was taken: it is
    answered with no message id (``""``), not sent again (the Cloud API has
    no idempotency key, so a retry would deliver it twice).

    Raises:
        ProviderError: the mapped error (see :func:`map_error`); a 2xx answer
            that is not the Graph API's (a proxy's page) is a ``TransientError``
            (the message may or may not have been sent).
    """
    if not 200 <= status < 300:
        raise map_error(status, headers, body, peer=peer)
    answer = json_body(body)
    try:
        parsed = GRAPH.structure(answer, _SendBody)
        message_id = parsed.messages[0].id
    except (cattrs.BaseValidationError, TypeError, AttributeError, IndexError) as exc:
        if isinstance(answer, dict) and answer.get("messaging_product") == "whatsapp":
            return SendResult(platform_message_id="", peer=peer)
        raise TransientError(
            f"WhatsApp accepted the message to {peer!r} with HTTP {status} but the answer "
            f"has no messages[0].id: {body[:200]!r}"
        ) from exc
    return SendResult(platform_message_id=message_id, peer=peer)


@attrs.frozen(kw_only=True)
class _Success:
    success: bool


def parse_success_response(
    status: int, headers: Mapping[str, str], body: bytes, *, peer: str
) -> None:
    """The answer to a read mark: ``{"success": true}``.

    Raises:
        ProviderError: the mapped error; a 2xx without ``success: true`` is transient.
    """
    if not 200 <= status < 300:
        raise map_error(status, headers, body, peer=peer)
    try:
        ok = GRAPH.structure(json_body(body), _Success).success
    except (cattrs.BaseValidationError, TypeError, AttributeError) as exc:
        raise TransientError(f"WhatsApp answered {status} without success: {body[:200]!r}") from exc
    if not ok:
        raise TransientError(f"WhatsApp answered success: false ({body[:200]!r}); retry")


def parse_media_response(status: int, headers: Mapping[str, str], body: bytes, *, peer: str) -> str:
    """The media id of an upload's answer ``{"id": ...}``.

    Raises:
        ProviderError: the mapped error; a 2xx without an id is transient.
    """
    if not 200 <= status < 300:
        raise map_error(status, headers, body, peer=peer)
    try:
        return GRAPH.structure(json_body(body), _MessageId).id
    except (cattrs.BaseValidationError, TypeError, AttributeError) as exc:
        raise TransientError(f"WhatsApp took the upload without an id: {body[:200]!r}") from exc


def parse_phone_number_response(
    status: int, headers: Mapping[str, str], body: bytes
) -> Mapping[str, Any]:
    """The phone-number object returned on open.

    Raises:
        FatalError: the token or number is wrong (``AuthenticationFailed``,
            ``Banned``, ``MissingPermissions``, or a plain ``FatalError`` for a
            number that does not exist).
        TransientError, RateLimited: try again later.
    """
    if 200 <= status < 300:
        parsed = json_body(body)
        return parsed if isinstance(parsed, dict) else {}
    error = map_error(status, headers, body)
    if isinstance(error, PermanentSendError):
        raise FatalError(
            f"the WhatsApp phone number cannot be used: {error}; check options.phone_number_id"
        ) from error
    try:
        raise error
    finally:
        del error  # no cycle through this frame's traceback (a 429 storm makes thousands)
