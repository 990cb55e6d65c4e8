"""Bot API payloads as frozen attrs classes, and the one converter that reads them.

Only the fields the provider acts on are modelled; Telegram adds fields to its
objects with every Bot API release, so unknown keys are ignored rather than
rejected. Everything that comes off the wire (getUpdates results, webhook
bodies, response envelopes) is structured through :data:`CONVERTER`, never
through the global cattrs converter.
"""

from __future__ import annotations

from typing import Any, Final

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, override

__all__ = [
    "CONVERTER",
    "Chat",
    "Envelope",
    "FileRef",
    "Message",
    "ReplyRef",
    "ResponseParameters",
    "SentRef",
    "Update",
    "User",
]


@attrs.frozen(kw_only=True)
class User:
    """A Telegram user or bot (``User``)."""

    id: int
    is_bot: bool = False
    first_name: str = ""
    username: str | None = None


@attrs.frozen(kw_only=True)
class Chat:
    """A chat (``Chat``): private chats have positive ids, groups negative ones."""

    id: int
    type: str = "private"
    title: str | None = None
    username: str | None = None


@attrs.frozen(kw_only=True)
class FileRef:
    """Any file object (``PhotoSize``, ``Video``, ``Document``, ``Audio``)."""

    file_id: str
    file_unique_id: str = ""
    file_name: str | None = None
    mime_type: str | None = None


@attrs.frozen(kw_only=True)
class ReplyRef:
    """The part of a replied-to ``Message`` we need: its id (and chat)."""

    message_id: int
    chat: Chat | None = None


@attrs.frozen(kw_only=True)
class SentRef:
    """The part of a ``Message`` a send answers with that the send needs: its id and chat.

    A send structures only this, not the whole ``Message`` (most of a
    send's parsing cost, for two numbers).
    """

    message_id: int
    chat: Chat


@attrs.frozen(kw_only=True)
class Message:
    """A ``Message``; ``from`` is renamed ``from_user`` (a Python keyword)."""

    message_id: int
    date: int
    chat: Chat
    from_user: User | None = None
    sender_chat: Chat | None = None
    message_thread_id: int | None = None
    text: str | None = None
    caption: str | None = None
    photo: tuple[FileRef, ...] | None = None
    video: FileRef | None = None
    document: FileRef | None = None
    audio: FileRef | None = None
    reply_to_message: ReplyRef | None = None
    edit_date: int | None = None


@attrs.frozen(kw_only=True)
class Update:
    """An ``Update``; kinds we do not model are simply absent here."""

    update_id: int
    message: Message | None = None
    edited_message: Message | None = None
    channel_post: Message | None = None
    edited_channel_post: Message | None = None


@attrs.frozen(kw_only=True)
class ResponseParameters:
    """``ResponseParameters``: why a request failed and what to do."""

    retry_after: int | None = None
    migrate_to_chat_id: int | None = None


@attrs.frozen(kw_only=True)
class Envelope:
    """Every Bot API answer: ``{"ok": true, "result": ...}`` or an error."""

    ok: bool
    result: Any = None
    error_code: int | None = None
    description: str | None = None
    parameters: ResponseParameters | None = None


def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=False)
    converter.register_structure_hook(
        Message,
        make_dict_structure_fn(Message, converter, from_user=override(rename="from")),
    )
    return converter


CONVERTER: Final = _make_converter()
