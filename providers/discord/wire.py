"""Discord's wire vocabulary: opcodes, intents, payload shapes and their converter.

Design:
- Payloads from the platform are structured with one cattrs converter for
  Discord's JSON (never the global one); unknown keys are ignored because
  Discord adds fields without notice, missing required keys are an error.
- Translating a message payload into a :mod:`providers.base` event happens
  here, once, for both the gateway (MESSAGE_CREATE / MESSAGE_UPDATE) and
  anything else that may see message objects.
"""

from __future__ import annotations

import datetime as _dt
import enum
from collections.abc import Mapping
from typing import Any, Final, TypeVar

import attrs
import cattrs

from ..base import InboundMessage, Media, MediaKind, MessageEdited

__all__ = [
    "API_VERSION",
    "DEFAULT_INTENTS",
    "DISCORD_EPOCH_MS",
    "PRIVILEGED_INTENTS",
    "Attachment",
    "Author",
    "GatewayBot",
    "Intents",
    "MessagePayload",
    "MessageReference",
    "Op",
    "PayloadError",
    "SessionStartLimit",
    "converter",
    "message_event",
    "parse",
]

API_VERSION: Final = 10
DISCORD_EPOCH_MS: Final = 1_420_070_400_000  # milliseconds since the Unix epoch


class PayloadError(ValueError):
    """A platform payload does not have the shape Discord documents."""


class Op(enum.IntEnum):
    """Gateway opcodes (https://discord.com/developers/docs/topics/opcodes-and-status-codes)."""

    DISPATCH = 0
    HEARTBEAT = 1
    IDENTIFY = 2
    PRESENCE_UPDATE = 3
    VOICE_STATE_UPDATE = 4
    RESUME = 6
    RECONNECT = 7
    REQUEST_GUILD_MEMBERS = 8
    INVALID_SESSION = 9
    HELLO = 10
    HEARTBEAT_ACK = 11


class Intents(enum.IntFlag):
    """The gateway intents this provider knows about (privileged ones marked)."""

    GUILDS = 1 << 0
    GUILD_MEMBERS = 1 << 1  # privileged
    GUILD_PRESENCES = 1 << 8  # privileged
    GUILD_MESSAGES = 1 << 9
    DIRECT_MESSAGES = 1 << 12
    MESSAGE_CONTENT = 1 << 15  # privileged


PRIVILEGED_INTENTS: Final = (
    Intents.GUILD_MEMBERS | Intents.GUILD_PRESENCES | Intents.MESSAGE_CONTENT
)
DEFAULT_INTENTS: Final = (
    Intents.GUILDS | Intents.GUILD_MESSAGES | Intents.DIRECT_MESSAGES | Intents.MESSAGE_CONTENT
)


@attrs.frozen(kw_only=True)
class SessionStartLimit:
    """The identify budget from ``GET /gateway/bot``.

    Attributes:
        total: identifies allowed per reset period.
        remaining: identifies left in this period.
        reset_after: milliseconds until ``remaining`` is reset to ``total``.
        max_concurrency: identifies allowed per 5 seconds (sharding buckets).
    """

    total: int
    remaining: int
    reset_after: int
    max_concurrency: int = 1


@attrs.frozen(kw_only=True)
class GatewayBot:
    """The answer of ``GET /gateway/bot``."""

    url: str
    shards: int = 1
    session_start_limit: SessionStartLimit


@attrs.frozen(kw_only=True)
class Author:
    """A message author (a user or a bot)."""

    id: str
    username: str = ""
    bot: bool = False


@attrs.frozen(kw_only=True)
class Attachment:
    """A file attached to a message."""

    id: str
    url: str
    filename: str = ""
    content_type: str | None = None


@attrs.frozen(kw_only=True)
class MessageReference:
    """What a message replies to."""

    message_id: str | None = None
    channel_id: str | None = None
    guild_id: str | None = None


@attrs.frozen(kw_only=True)
class MessagePayload:
    """The fields of a Discord message object this provider uses."""

    id: str
    channel_id: str
    author: Author | None = None
    content: str | None = None
    timestamp: str | None = None
    edited_timestamp: str | None = None
    guild_id: str | None = None
    attachments: tuple[Attachment, ...] = ()
    message_reference: MessageReference | None = None


converter: Final = cattrs.Converter(forbid_extra_keys=False)
_T = TypeVar("_T")


def parse(cls: type[_T], obj: Any) -> _T:
    """Structure ``obj`` (decoded JSON) as ``cls``.

    Raises:
        PayloadError: the payload lacks a required field or has a wrong type;
            the message names the path, e.g. ``expected str @ $.author.id``.
    """
    try:
        return converter.structure(obj, cls)
    except (cattrs.BaseValidationError, ValueError, TypeError, KeyError) as exc:
        if isinstance(exc, cattrs.BaseValidationError):
            detail = "; ".join(cattrs.transform_error(exc))
        else:
            detail = str(exc)
        raise PayloadError(f"malformed Discord {cls.__name__} payload: {detail}") from exc


def _epoch(iso: str | None) -> float | None:
    if not iso:
        return None
    try:
        return _dt.datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return None


def _media_kind(content_type: str | None) -> MediaKind:
    major = (content_type or "").partition("/")[0]
    return {
        "image": MediaKind.IMAGE,
        "video": MediaKind.VIDEO,
        "audio": MediaKind.AUDIO,
    }.get(major, MediaKind.DOCUMENT)


def message_event(
    kind: str,
    data: Mapping[str, Any],
    *,
    channel_id: str,
    own_user_id: str | None,
) -> InboundMessage | MessageEdited | None:
    """Translate a MESSAGE_CREATE / MESSAGE_UPDATE dispatch into an event.

    Args:
        kind: the dispatch name (``MESSAGE_CREATE`` or ``MESSAGE_UPDATE``).
        data: the dispatch's ``d``.
        channel_id: our channel id (not Discord's channel: that is the peer).
        own_user_id: the bot's user id; its own messages are dropped.

    Returns:
        The event, or ``None`` for the bot's own messages and other dispatches.

    Raises:
        PayloadError: the message object is malformed.
    """
    if kind not in ("MESSAGE_CREATE", "MESSAGE_UPDATE"):
        return None
    msg = parse(MessagePayload, data)
    sender = msg.author.id if msg.author is not None else ""
    if own_user_id is not None and sender == own_user_id:
        return None
    if kind == "MESSAGE_UPDATE":
        return MessageEdited(
            channel_id=channel_id,
            platform_message_id=msg.id,
            peer=msg.channel_id,
            sender=sender,
            text=msg.content,
            timestamp=_epoch(msg.edited_timestamp),
        )
    media = None
    if msg.attachments:
        first = msg.attachments[0]
        media = Media(
            kind=_media_kind(first.content_type), url=first.url, filename=first.filename or None
        )
    metadata: dict[str, Any] = {}
    if msg.guild_id is not None:
        metadata["guild_id"] = msg.guild_id
    if msg.author is not None:
        metadata["author_name"] = msg.author.username
        metadata["author_is_bot"] = msg.author.bot
    return InboundMessage(
        channel_id=channel_id,
        platform_message_id=msg.id,
        peer=msg.channel_id,
        sender=sender,
        text=msg.content or None,
        media=media,
        reply_to=msg.message_reference.message_id if msg.message_reference else None,
        timestamp=_epoch(msg.timestamp),
        metadata=metadata,
    )
