"""The sans-IO Bot API core: requests to build, answers to read, errors to map.

Nothing here opens a socket or reads a clock (but for a ``Retry-After`` given
as an HTTP date, which only the wall clock can read:
:func:`~providers._http.retry_after_header`). The shell asks this module for
an :class:`ApiRequest` (method, JSON parameters, how long the answer may
take), performs it, and hands the status and body back to
:func:`parse_response`, which returns the ``result`` or raises the mapped
:mod:`providers.base` error. Updates become events in :func:`update_event`;
the long-polling position is an :class:`UpdateCursor`.

Ids: Telegram numbers messages per chat, so a message is only identified by
the pair; ``platform_message_id`` is ``f"{chat_id}:{message_id}"`` for inbound
and sent messages alike, and ``reply_to`` takes the same form (a bare message
id means "in the same chat").

Operations: ``editMessageText``, ``deleteMessage``, ``sendChatAction`` and
``setMessageReaction`` (:func:`operation_request`); uploads go as multipart
(:attr:`ApiRequest.files`). Bots have no read receipts, so ``mark_read`` is
not in :data:`OPERATIONS`. "message to edit/delete/react not found" (and
``MESSAGE_ID_INVALID``) map to :class:`~providers.base.MessageNotFound`.

Limits: :data:`TELEGRAM_LIMITS` declares the documented 30 messages/s per bot
and 1 message/s per chat. Telegram also allows at most 20 messages per minute
to one group (negative chat ids); :class:`~providers.base.PlatformLimits` has
no per-peer-class field, so that limit is exported as
:data:`GROUP_MESSAGES_PER_MINUTE` and :func:`is_group_chat` for the
ChannelActor to apply, and a 429 from Telegram (with ``retry_after``) covers
whatever a limiter missed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal

import attrs
import cattrs

from .._http import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_REQUEST_DEADLINE,
    quoted,
    redirect_error,
    retry_after_header,
    unavailable_wait,
)
from .._json import parsed
from ..base import (
    AuthenticationFailed,
    BadRecipient,
    Banned,
    Conflict,
    Event,
    FatalError,
    InboundMessage,
    Media,
    MediaKind,
    MessageEdited,
    MessageNotFound,
    MessageTooLong,
    OutboundMessage,
    PermanentSendError,
    PlatformLimits,
    ProviderError,
    RateLimited,
    RateLimitScope,
    SendResult,
    SessionState,
    TransientError,
    retry_after_seconds,
)
from ..media import Upload
from ..operations import (
    DeleteMessage,
    EditMessage,
    OperationKind,
    React,
    SendTyping,
)
from ..options import MAX_LIMIT_SECONDS, limit, options_converter, options_error
from . import wire

__all__ = [
    "DEFAULT_ALLOWED_UPDATES",
    "DEFAULT_BASE_URL",
    "GROUP_MESSAGES_PER_MINUTE",
    "MAX_CAPTION_LENGTH",
    "MAX_TEXT_LENGTH",
    "OPERATIONS",
    "POLL_READ_GRACE",
    "PROVIDER_NAME",
    "REQUEST_TIMEOUT",
    "TELEGRAM_LIMITS",
    "ApiRequest",
    "ParsedUpdate",
    "TelegramOptions",
    "UpdateCursor",
    "delete_webhook",
    "get_me",
    "get_updates",
    "is_group_chat",
    "message_id",
    "method_url",
    "operation_request",
    "parse_me",
    "parse_options",
    "parse_response",
    "parse_sent",
    "parse_updates",
    "parse_webhook_update",
    "send_request",
    "sent_result",
    "set_webhook",
    "update_event",
]

PROVIDER_NAME: Final = "telegram"
DEFAULT_BASE_URL: Final = "https://api.telegram.org"
MAX_TEXT_LENGTH: Final = 4096  # characters
MAX_CAPTION_LENGTH: Final = 1024  # characters
GROUP_MESSAGES_PER_MINUTE: Final = 20  # messages per minute to one group chat
REQUEST_TIMEOUT: Final = 30.0  # seconds, for every call but getUpdates
POLL_READ_GRACE: Final = 10.0  # seconds a long poll may take beyond its ``timeout``
DEFAULT_POLL_TIMEOUT: Final = 30  # seconds
DEFAULT_ALLOWED_UPDATES: Final = ("message", "edited_message")

# About 30 messages in any second per bot, refused with 429 (retry_after in
# whole seconds) past that: no burst on top of the rate.
TELEGRAM_LIMITS: Final = PlatformLimits(
    per_channel_rate=30.0,
    per_channel_burst=1,
    per_channel_strict=True,
    per_peer_rate=1.0,
    per_peer_burst=1,
    max_text_length=MAX_TEXT_LENGTH,
    max_upload_bytes=50 * 1024 * 1024,  # bytes: the Bot API's upload limit
)
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
_NOT_FOUND: Final = (
    "message to edit not found",
    "message to delete not found",
    "message to react not found",
    "message_id_invalid",
)

_MEDIA_METHODS: Final = {
    MediaKind.IMAGE: ("sendPhoto", "photo"),
    MediaKind.VIDEO: ("sendVideo", "video"),
    MediaKind.DOCUMENT: ("sendDocument", "document"),
    MediaKind.AUDIO: ("sendAudio", "audio"),
}
# OutboundMessage.metadata keys passed through to the send methods unchanged.
_PASSTHROUGH: Final = ("parse_mode", "disable_notification", "protect_content", "message_thread_id")
_SECRET_CHARS: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def is_group_chat(peer: str | int) -> bool:
    """Whether ``peer`` is a group or channel (negative id): 20 messages/minute apply."""
    return str(peer).startswith("-")


def message_id(chat_id: int | str, msg_id: int) -> str:
    """The ``platform_message_id`` of message ``msg_id`` in ``chat_id``."""
    return f"{chat_id}:{msg_id}"


# --- options ------------------------------------------------------------------------


WEBHOOK_SECRET_RULE: Final = "a webhook secret is 1-256 characters of A-Z, a-z, 0-9, _ and -"


def webhook_secret_ok(value: str) -> bool:
    """Whether Telegram takes ``value`` as a webhook's secret token."""
    return 1 <= len(value) <= 256 and set(value) <= _SECRET_CHARS


def _check_secret(_: Any, __: Any, value: str | None) -> None:
    if value is not None and not webhook_secret_ok(value):
        raise ValueError(WEBHOOK_SECRET_RULE)


def _poll_timeout(instance: Any, attribute: Any, value: int) -> None:
    # Each getUpdates' deadline is request_deadline plus this wait: a larger one
    # would leave a dead connection unnoticed for as long.
    if not 0 <= value <= MAX_LIMIT_SECONDS:
        raise ValueError(
            f"options.poll_timeout is {value}; expected a whole number of seconds from 0 to "
            f"{MAX_LIMIT_SECONDS:g}, e.g. poll_timeout = 25"
        )


@attrs.frozen(kw_only=True)
class TelegramOptions:
    """``ChannelConfig.options`` for a Telegram channel.

    Attributes:
        mode: ``polling`` (getUpdates) or ``webhook`` (Telegram POSTs to us).
        poll_timeout: long-poll seconds per getUpdates.
        poll_limit: most updates per getUpdates (1-100).
        allowed_updates: update kinds to receive.
        webhook_url: where Telegram should POST; when given, the connection
            calls setWebhook on open (and deleteWebhook on a final close).
        webhook_secret: the X-Telegram-Bot-Api-Secret-Token value (also read
            from ``credentials["webhook_secret"]``, which wins).
        drop_pending_updates: drop queued updates when setting the webhook.
        max_body_bytes: the largest Bot API answer read; a larger one is a
            transient error (``providers._http.fetch``).
        request_deadline: seconds for a whole call and its answer, whatever
            pace the server keeps (a getUpdates long poll adds its own wait).
    """

    mode: Literal["polling", "webhook"] = "polling"
    poll_timeout: int = attrs.field(default=DEFAULT_POLL_TIMEOUT, validator=_poll_timeout)
    poll_limit: int = attrs.field(
        default=100, validator=[attrs.validators.ge(1), attrs.validators.le(100)]
    )
    allowed_updates: tuple[str, ...] = DEFAULT_ALLOWED_UPDATES
    webhook_url: str | None = None
    webhook_secret: str | None = attrs.field(default=None, repr=False, validator=_check_secret)
    drop_pending_updates: bool = False
    max_body_bytes: int = attrs.field(default=DEFAULT_MAX_BODY_BYTES, validator=limit("bytes"))
    request_deadline: float = attrs.field(
        default=DEFAULT_REQUEST_DEADLINE, validator=limit("seconds")
    )


_OPTIONS_CONVERTER: Final = options_converter()


def parse_options(options: Mapping[str, Any], credentials: Mapping[str, str]) -> TelegramOptions:
    """Read and check a channel's options.

    Raises:
        FatalError: the options are invalid (the message names each bad path),
            or webhook mode lacks a secret.
    """
    raw = dict(options)
    if "webhook_secret" in credentials:
        secret = credentials["webhook_secret"]
        if not isinstance(secret, str) or not webhook_secret_ok(secret):
            # Named where it is (it was reported as an option's, which the file did not have).
            raise FatalError(
                f"telegram: credentials.webhook_secret is refused: {WEBHOOK_SECRET_RULE}"
            )
        raw["webhook_secret"] = secret
    try:
        parsed = _OPTIONS_CONVERTER.structure(raw, TelegramOptions)
    except (cattrs.BaseValidationError, ValueError, TypeError) as exc:
        raise FatalError(f"telegram: invalid channel options: {options_error(exc)}") from exc
    if parsed.mode == "webhook" and parsed.webhook_secret is None:
        raise FatalError(
            "telegram: webhook mode needs a secret (credentials['webhook_secret'] or "
            "options.webhook_secret) so forged updates can be refused"
        )
    return parsed


# --- requests -----------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class ApiRequest:
    """One Bot API call, ready to be POSTed as JSON.

    Attributes:
        method: the Bot API method (``getUpdates``, ``sendMessage``, ...).
        params: its JSON parameters.
        peer: the recipient, for send methods (errors about it name it).
        read_timeout: seconds the answer may take (a long poll's ``timeout``
            plus :data:`POLL_READ_GRACE`).
        files: uploads by parameter name; the request goes as multipart.
    """

    method: str
    params: Mapping[str, Any] = attrs.field(factory=dict)
    peer: str | None = None
    read_timeout: float = REQUEST_TIMEOUT
    files: Mapping[str, Upload] = attrs.field(factory=dict)


def method_url(base_url: str, token: str, method: str) -> str:
    """The URL of ``method`` for the bot ``token`` (which the URL therefore holds)."""
    return f"{base_url.rstrip('/')}/bot{token}/{method}"


def get_me() -> ApiRequest:
    """getMe: checks the token and names the bot."""
    return ApiRequest(method="getMe")


def get_updates(
    *,
    offset: int | None,
    timeout: int,
    limit: int = 100,
    allowed_updates: Sequence[str] | None = None,
) -> ApiRequest:
    """getUpdates: a long poll that also confirms every update below ``offset``."""
    params: dict[str, Any] = {"timeout": timeout, "limit": limit}
    if offset is not None:
        params["offset"] = offset
    if allowed_updates is not None:
        params["allowed_updates"] = list(allowed_updates)
    return ApiRequest(method="getUpdates", params=params, read_timeout=timeout + POLL_READ_GRACE)


def set_webhook(
    *,
    url: str,
    secret_token: str,
    allowed_updates: Sequence[str] | None = None,
    drop_pending_updates: bool = False,
) -> ApiRequest:
    """setWebhook: Telegram will POST updates to ``url`` with ``secret_token``."""
    params: dict[str, Any] = {"url": url, "secret_token": secret_token}
    if allowed_updates is not None:
        params["allowed_updates"] = list(allowed_updates)
    if drop_pending_updates:
        params["drop_pending_updates"] = True
    return ApiRequest(method="setWebhook", params=params)


def delete_webhook(*, drop_pending_updates: bool = False) -> ApiRequest:
    """deleteWebhook: back to getUpdates."""
    return ApiRequest(method="deleteWebhook", params={"drop_pending_updates": drop_pending_updates})


def _chat_id(peer: str) -> int | str:
    """Numeric chat ids travel as integers, ``@channelusername`` as is."""
    try:
        return int(peer)
    except ValueError:
        return peer


def _reply_parameters(reply_to: str, peer: str) -> dict[str, Any]:
    chat, sep, msg = reply_to.rpartition(":")
    try:
        params: dict[str, Any] = {"message_id": int(msg)}
    except ValueError:
        raise PermanentSendError(
            f"telegram: reply_to {reply_to!r} is not '<chat_id>:<message_id>' or a message id",
            peer=peer,
        ) from None
    if sep and chat != peer:
        params["chat_id"] = _chat_id(chat)
    return params


def _message_ref(message_id: str, peer: str) -> tuple[int | str, int]:
    """``(chat_id, message_id)`` of ``"<chat>:<id>"`` (or a bare id in ``peer``'s chat)."""
    chat, sep, msg = message_id.rpartition(":")
    try:
        number = int(msg)
    except ValueError:
        raise MessageNotFound(
            f"telegram: {message_id!r} is not '<chat_id>:<message_id>' or a message id",
            peer=peer,
        ) from None
    return _chat_id(chat if sep else peer), number


def operation_request(op: EditMessage | DeleteMessage | SendTyping | React) -> ApiRequest:
    """editMessageText, deleteMessage, sendChatAction or setMessageReaction for ``op``.

    Raises:
        MessageTooLong: an edit's text is over 4096 characters.
        MessageNotFound: a message id that is not a Telegram id.
    """
    if isinstance(op, SendTyping):
        params: dict[str, Any] = {"chat_id": _chat_id(op.peer), "action": op.action.value}
        return ApiRequest(method="sendChatAction", params=params, peer=op.peer)
    chat_id, number = _message_ref(op.message_id, op.peer)
    params = {"chat_id": chat_id, "message_id": number}
    if isinstance(op, EditMessage):
        if len(op.text) > MAX_TEXT_LENGTH:
            raise MessageTooLong(
                f"telegram: text of {len(op.text)} characters exceeds {MAX_TEXT_LENGTH}",
                peer=op.peer,
            )
        params["text"] = op.text
        for key in _PASSTHROUGH:
            if key in op.metadata:
                params[key] = op.metadata[key]
        return ApiRequest(method="editMessageText", params=params, peer=op.peer)
    if isinstance(op, DeleteMessage):
        return ApiRequest(method="deleteMessage", params=params, peer=op.peer)
    params["reaction"] = [] if op.remove else [{"type": "emoji", "emoji": op.emoji}]
    return ApiRequest(method="setMessageReaction", params=params, peer=op.peer)


def send_request(msg: OutboundMessage, upload: Upload | None = None) -> ApiRequest:
    """sendMessage, or sendPhoto/sendVideo/sendDocument/sendAudio for media by URL
    (or by ``upload``: the bytes of ``msg.media``, sent as multipart).

    Raises:
        MessageTooLong: the text (caption) is over 4096 (1024) characters; the
            platform would refuse it, so no request is made.
        PermanentSendError: a template (Telegram has none) or a bad ``reply_to``.
    """
    params: dict[str, Any] = {"chat_id": _chat_id(msg.peer)}
    files: dict[str, Upload] = {}
    if msg.text is not None:
        if len(msg.text) > MAX_TEXT_LENGTH:
            raise MessageTooLong(
                f"telegram: text of {len(msg.text)} characters exceeds {MAX_TEXT_LENGTH}; "
                "split it before sending",
                peer=msg.peer,
            )
        method = "sendMessage"
        params["text"] = msg.text
    elif msg.media is not None:
        method, field = _MEDIA_METHODS[msg.media.kind]
        if upload is not None:
            files = {field: upload}
        else:
            assert msg.media.url is not None, "an upload needs its bytes read first"
            params[field] = msg.media.url
        if msg.media.caption is not None:
            if len(msg.media.caption) > MAX_CAPTION_LENGTH:
                raise MessageTooLong(
                    f"telegram: caption of {len(msg.media.caption)} characters exceeds "
                    f"{MAX_CAPTION_LENGTH}",
                    peer=msg.peer,
                )
            params["caption"] = msg.media.caption
    else:
        raise PermanentSendError(
            "telegram has no message templates; send text or media instead", peer=msg.peer
        )
    if msg.reply_to is not None:
        params["reply_parameters"] = _reply_parameters(msg.reply_to, msg.peer)
    for key in _PASSTHROUGH:
        if key in msg.metadata:
            params[key] = msg.metadata[key]
    return ApiRequest(method=method, params=params, peer=msg.peer, files=files)


# --- responses ----------------------------------------------------------------------


def _not_bot_api(
    request: ApiRequest, status: int, body: bytes, headers: Mapping[str, str] | None
) -> ProviderError:
    """The error of an answer that is not the Bot API's JSON (a proxy's page, say).

    A 403 says nothing about the recipient then (a WAF, a proxy refusing us):
    not a ``BadRecipient``, which every message would have become.
    """
    if 400 <= status < 500 and status != 403:
        return _map_error(request, status, wire.Envelope(ok=False), headers)
    least = unavailable_wait(status, headers)
    return TransientError(
        f"telegram {request.method}: HTTP {status} with a body that is not a Bot API "
        f"answer ({body[:80]!r}); {_retry_later(least)}",
        retry_after=least,
    )


def _retry_later(least: float | None) -> str:
    """What a transient error says of its retry (a 503's ``Retry-After``: not before)."""
    if least is None:
        return "retry later"
    return f"retry in {least:g} s at the earliest (the answer's Retry-After)"


def _map_error(
    request: ApiRequest, status: int, env: wire.Envelope, headers: Mapping[str, str] | None
) -> ProviderError:
    code = env.error_code or status
    description = env.description or f"HTTP {status}"
    what = f"telegram {request.method}: {code} {quoted(description)}"
    lowered = description.lower()
    peer = request.peer
    params = env.parameters or wire.ResponseParameters()
    if code == 429:
        # The body's wait; else a Retry-After header's (a proxy, a load balancer).
        wait = params.retry_after
        retry_after = retry_after_seconds(
            wait if wait is not None else retry_after_header(headers), 1.0
        )
        # Telegram does not say whether the bot or the chat hit the limit:
        # pausing the whole channel is the safe reading.
        return RateLimited(
            f"{what}; wait {retry_after:g} s",
            retry_after=retry_after,
            scope=RateLimitScope.CHANNEL,
            peer=peer,
        )
    if code == 409:
        return Conflict(
            f"{what}; another getUpdates poller or a webhook holds this bot: stop the other "
            "instance or call deleteWebhook"
        )
    if code in (401, 404):
        return AuthenticationFailed(f"{what}; the bot token is unknown or revoked")
    if code >= 500 or code in (408, 420):
        least = unavailable_wait(status, headers)
        return TransientError(f"{what}; {_retry_later(least)}", retry_after=least)
    if peer is None:
        if code == 403:
            return Banned(f"{what}; the platform refuses this bot")
        return FatalError(f"{what}; the request is invalid, check the channel configuration")
    if "too long" in lowered:
        return MessageTooLong(what, peer=peer)
    if any(text in lowered for text in _NOT_FOUND):
        return MessageNotFound(f"{what}; the message is gone", peer=peer)
    if code == 403 or "chat not found" in lowered or "user not found" in lowered:
        return BadRecipient(what, peer=peer)
    if params.migrate_to_chat_id is not None:
        return BadRecipient(
            f"{what}; the group is now the supergroup {params.migrate_to_chat_id}", peer=peer
        )
    return PermanentSendError(what, peer=peer)


def parse_response(
    request: ApiRequest, status: int, body: bytes, headers: Mapping[str, str] | None = None
) -> Any:
    """The ``result`` of a Bot API answer, or the mapped error.

    Args:
        request: what was asked (its method and peer shape the mapping).
        status: the HTTP status code.
        body: the raw response body.
        headers: the response headers (a redirect's ``Location``).

    Returns:
        The decoded ``result`` value.

    Raises:
        RateLimited: 429, with ``retry_after`` from ``parameters``, else from a
            ``Retry-After`` header (kept within 0 and
            :data:`~providers.base.MAX_RETRY_AFTER` seconds).
        Conflict: 409 (another poller, or a webhook is set).
        AuthenticationFailed: 401 or 404 (Telegram's answers to unknown tokens).
        Banned: 403 to a call that is not a send.
        MessageTooLong: 400 "message is too long" (or caption).
        BadRecipient: 400 "chat not found", 403 "bot was blocked by the user", ...
        PermanentSendError: any other 4xx to a send.
        FatalError: any other 4xx to a non-send call (bad configuration).
        TransientError: 5xx (a 503's ``Retry-After`` is its ``retry_after``),
            a redirect (never followed), or an answer that is not the Bot
            API's JSON (a 403 too, which then says nothing of the peer).
    """
    if (redirect := redirect_error(status, headers, f"telegram {request.method}")) is not None:
        raise redirect
    try:
        data = parsed(body)
    except ValueError as exc:  # empty, not JSON, or not UTF-8: a proxy's page, say
        raise _not_bot_api(request, status, body, headers) from exc
    # Only what has the Bot API's shape is structured: a failed structuring keeps
    # its errors in a cycle with its frame, one per odd answer.
    env = None
    if isinstance(data, dict) and isinstance(data.get("ok"), bool):
        try:
            env = wire.CONVERTER.structure(data, wire.Envelope)
        except (ValueError, TypeError, cattrs.BaseValidationError):
            env = None
    if env is None:
        raise _not_bot_api(request, status, body, headers)
    if env.ok and 200 <= status < 300:
        return env.result
    raise _map_error(request, status, env, headers)


def parse_me(result: Any) -> wire.User:
    """The bot's ``User`` from a getMe result.

    Raises:
        TransientError: the result is not a User.
    """
    try:
        return wire.CONVERTER.structure(result, wire.User)
    except (cattrs.BaseValidationError, TypeError, ValueError) as exc:
        raise TransientError(
            f"telegram getMe: answered {quoted(repr(result))}, not a User"
        ) from exc


def parse_sent(result: Any, peer: str) -> SendResult:
    """The :class:`SendResult` for a send method's ``Message`` result.

    Raises:
        TransientError: the result is not a Message (an edit's may be
            ``True``: see the shell). A send's is read by :func:`sent_result`.
    """
    try:
        sent = wire.CONVERTER.structure(result, wire.SentRef)
    except (cattrs.BaseValidationError, TypeError, ValueError) as exc:
        raise TransientError(
            f"telegram: a send answered {quoted(repr(result))}, not a Message"
        ) from exc
    return SendResult(platform_message_id=message_id(sent.chat.id, sent.message_id), peer=peer)


def sent_result(result: Any, peer: str) -> SendResult:
    """The :class:`SendResult` of a send the Bot API answered ``ok``: its
    ``Message``'s ids, or no id (``""``) when the result is not a Message.

    ``ok: true`` says the message went out, whatever the result holds (a
    newer API's shape, a local Bot API server's, a proxy's): the Bot API has
    no idempotency key, so a retry would deliver it again. Such a send is
    answered without a message id (an edit or a reply to it then cannot
    name it), not retried.
    """
    try:
        return parse_sent(result, peer)
    except TransientError:
        return SendResult(platform_message_id="", peer=peer)


# --- updates ------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class ParsedUpdate:
    """One update: its id (for the offset) and its event (None when ignored).

    Attributes:
        update_id: the update's id.
        event: what it means to us, or None (a kind we do not handle).
    """

    update_id: int
    event: Event | None


def _media(message: wire.Message) -> Media | None:
    # Inbound files carry a file_id, not a URL: a download URL (getFile)
    # embeds the bot token, so it must not be stored in events.
    candidates: list[tuple[MediaKind, wire.FileRef | None]] = [
        (MediaKind.IMAGE, message.photo[-1] if message.photo else None),
        (MediaKind.VIDEO, message.video),
        (MediaKind.DOCUMENT, message.document),
        (MediaKind.AUDIO, message.audio),
    ]
    for kind, ref in candidates:
        if ref is not None:
            return Media(
                kind=kind,
                url=f"tg-file:{ref.file_id}",
                caption=message.caption,
                filename=ref.file_name,
            )
    return None


def _sender(message: wire.Message) -> str:
    if message.from_user is not None:
        return str(message.from_user.id)
    if message.sender_chat is not None:
        return str(message.sender_chat.id)
    return str(message.chat.id)


def update_event(update: wire.Update, channel_id: str) -> Event | None:
    """The event an update means, or None for kinds the provider ignores.

    ``message`` and ``channel_post`` become :class:`InboundMessage`,
    ``edited_message`` and ``edited_channel_post`` :class:`MessageEdited`;
    peer is the chat id, sender the ``from.id`` (or the sending chat).

    Raises:
        OverflowError: a ``date`` or ``edit_date`` past any float (10**400).
    """
    new = update.message or update.channel_post
    if new is not None:
        chat = new.chat.id
        reply = new.reply_to_message
        metadata: dict[str, Any] = {"update_id": update.update_id, "chat_type": new.chat.type}
        if new.message_thread_id is not None:
            metadata["message_thread_id"] = new.message_thread_id
        if new.from_user is not None and new.from_user.username is not None:
            metadata["username"] = new.from_user.username
        media = _media(new)
        return InboundMessage(
            channel_id=channel_id,
            platform_message_id=message_id(chat, new.message_id),
            peer=str(chat),
            sender=_sender(new),
            text=new.text if new.text is not None else (None if media else new.caption),
            media=media,
            reply_to=(
                message_id(reply.chat.id if reply.chat else chat, reply.message_id)
                if reply is not None
                else None
            ),
            timestamp=float(new.date),
            metadata=metadata,
        )
    edited = update.edited_message or update.edited_channel_post
    if edited is not None:
        return MessageEdited(
            channel_id=channel_id,
            platform_message_id=message_id(edited.chat.id, edited.message_id),
            peer=str(edited.chat.id),
            sender=_sender(edited),
            text=edited.text if edited.text is not None else edited.caption,
            timestamp=float(edited.edit_date if edited.edit_date is not None else edited.date),
            metadata={"update_id": update.update_id},
        )
    return None


def _parse_update(raw: Any, channel_id: str) -> ParsedUpdate:
    # OverflowError: a date no float can hold (10**400), found making the event.
    try:
        update = wire.CONVERTER.structure(raw, wire.Update)
        event = update_event(update, channel_id)
    except (cattrs.BaseValidationError, TypeError, ValueError, OverflowError) as exc:
        update_id = raw.get("update_id") if isinstance(raw, Mapping) else None
        if isinstance(update_id, int) and not isinstance(update_id, bool):
            # Well numbered but unreadable: skip it, or it would block the offset forever.
            return ParsedUpdate(update_id=update_id, event=None)
        raise TransientError(
            f"telegram: an update without an update_id: {quoted(repr(raw))}"
        ) from exc
    return ParsedUpdate(update_id=update.update_id, event=event)


def parse_updates(result: Any, channel_id: str) -> tuple[ParsedUpdate, ...]:
    """The updates of a getUpdates result, in update_id order.

    Raises:
        TransientError: the result is not a list of updates.
    """
    if not isinstance(result, list):
        raise TransientError(f"telegram getUpdates: result is {type(result).__name__}, not a list")
    parsed = [_parse_update(raw, channel_id) for raw in result]
    return tuple(sorted(parsed, key=lambda p: p.update_id))


def parse_webhook_update(raw: Any, channel_id: str) -> ParsedUpdate:
    """One webhook body's update (see :func:`parse_updates`).

    Raises:
        TransientError: it has no update_id.
    """
    return _parse_update(raw, channel_id)


# --- the polling position -----------------------------------------------------------


@attrs.define
class UpdateCursor:
    """Where long polling stands: the next update_id wanted.

    ``offset`` moves past an update only once its event was handed out (or it
    was skipped), and is the channel's :class:`~providers.base.SessionState`,
    so a restart neither replays nor drops updates. ``confirmed`` is the
    offset the platform was last told, with a getUpdates that succeeded.

    Attributes:
        offset: the next update_id to ask for (None: none seen yet).
        confirmed: the offset Telegram has acknowledged.
    """

    offset: int | None = None
    confirmed: int | None = None

    @classmethod
    def from_session(cls, session: SessionState | None) -> UpdateCursor:
        """Resume from a saved session (None starts fresh).

        Raises:
            FatalError: the session belongs to another provider or is malformed.
        """
        if session is None:
            return cls()
        if session.provider != PROVIDER_NAME:
            raise FatalError(
                f"telegram: was handed the session state of provider {session.provider!r}; "
                "the channel's stored state is mixed up, clear it to start fresh"
            )
        offset = session.data.get("offset")
        if offset is not None and (not isinstance(offset, int) or isinstance(offset, bool)):
            raise FatalError(f"telegram: session offset must be an integer, got {offset!r}")
        return cls(offset=offset)

    def handed_out(self, update_id: int) -> None:
        """The event of ``update_id`` (or its skip) reached the consumer."""
        if self.offset is None or update_id + 1 > self.offset:
            self.offset = update_id + 1

    def polled(self, offset: int | None) -> None:
        """A getUpdates with ``offset`` succeeded: Telegram dropped everything below it."""
        if offset is not None and (self.confirmed is None or offset > self.confirmed):
            self.confirmed = offset

    def needs_confirmation(self) -> bool:
        """Whether updates were handed out since Telegram last heard the offset."""
        return self.offset is not None and self.offset != self.confirmed

    def session_state(self) -> SessionState:
        """The state to resume from."""
        data = {} if self.offset is None else {"offset": self.offset}
        return SessionState(provider=PROVIDER_NAME, data=data)
