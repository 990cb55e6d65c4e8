"""What a channel does beyond sending: edit, delete, typing, mark read, react, upload.

Design:
- Each operation is a frozen attrs class like :class:`~providers.base.OutboundMessage`,
  with the same ``peer`` and ``idempotency_key``, so the channel's one send
  path (limiters, breaker, retries, dead letters, the drain's keeping) carries
  every operation the way it carries a message: :data:`Operation` is what
  that path takes, and :func:`perform` is the one place it calls the
  connection's method for an operation.
- A provider declares in ``Provider.operations`` what its platform can do
  (:class:`OperationKind`); :func:`check_supported` refuses the rest with
  :class:`~providers.base.Unsupported` before any budget is spent. Media by
  upload (bytes or a file) is an ``OutboundMessage`` whose ``media`` has
  ``content`` or ``path``: :data:`OperationKind.UPLOAD`.
- Ids name messages as the provider's ``SendResult`` and ``InboundMessage``
  name them (Telegram ``"<chat_id>:<message_id>"``, Discord snowflakes,
  WhatsApp ``wamid.…``).
- A message the platform no longer has is
  :class:`~providers.base.MessageNotFound`, a permanent failure: dead-lettered,
  never retried.
- Free-form values (``metadata``, template components) travel as JSON: to
  the platform, to the store (kept at a drain, dead-lettered) and between
  nodes. :func:`json_problems` says, with paths, what in an operation JSON
  cannot carry (NaN and infinities, values that are no JSON type, keys that
  are not strings, nesting past :data:`MAX_JSON_DEPTH`), a field declared a
  string that holds another type, and an empty (or blank) peer or
  idempotency key, so such an operation is refused where it enters, never
  discovered later in a batch it spoils.
"""

from __future__ import annotations

import enum
import math
import typing
import uuid
from collections.abc import Mapping
from typing import Any, Final, TypeAlias

import attrs

from .base import Connection, OutboundMessage, Provider, SendResult, Unsupported

__all__ = [
    "MAX_JSON_DEPTH",
    "SEND_ONLY",
    "ChatAction",
    "DeleteMessage",
    "EditMessage",
    "MarkRead",
    "Operation",
    "OperationKind",
    "React",
    "SendTyping",
    "check_supported",
    "json_problems",
    "operation_kind",
    "operation_print",
    "perform",
    "remembered_result",
    "supported_operations",
]


def _new_key() -> str:
    return uuid.uuid4().hex


class OperationKind(enum.Enum):
    """Every operation a channel may perform; providers declare the ones they have."""

    SEND = "send"
    """Text, media by URL, templates: every provider has it."""
    UPLOAD = "upload"
    """Media uploaded from bytes or a file."""
    EDIT = "edit"
    DELETE = "delete"
    TYPING = "typing"
    MARK_READ = "mark_read"
    REACT = "react"


SEND_ONLY: Final = frozenset({OperationKind.SEND})
"""The operations of a provider that declares none (an older adapter)."""


class ChatAction(enum.Enum):
    """What the peer is shown while the bot works (Telegram's chat actions).

    Platforms with a single indicator (Discord, WhatsApp) show "typing…" for each.
    """

    TYPING = "typing"
    UPLOAD_PHOTO = "upload_photo"
    UPLOAD_VIDEO = "upload_video"
    UPLOAD_DOCUMENT = "upload_document"
    RECORD_VOICE = "record_voice"


@attrs.frozen(kw_only=True)
class EditMessage:
    """Replace the text of a message the bot sent.

    Attributes:
        peer: the chat the message is in.
        message_id: the message's ``platform_message_id``.
        text: the new text.
        idempotency_key: identifies this edit (retries reuse it).
        metadata: platform extras (Telegram ``parse_mode``).
    """

    peer: str
    message_id: str
    text: str
    idempotency_key: str = attrs.field(factory=_new_key)
    metadata: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class DeleteMessage:
    """Delete a message (the bot's own; others' where the bot may).

    Attributes:
        peer: the chat the message is in.
        message_id: the message's ``platform_message_id``.
        idempotency_key: identifies this delete.
    """

    peer: str
    message_id: str
    idempotency_key: str = attrs.field(factory=_new_key)


@attrs.frozen(kw_only=True)
class SendTyping:
    """Show a typing indicator (a chat action) to the peer for a few seconds.

    Attributes:
        peer: the chat.
        action: what the peer is shown (Telegram tells them apart).
        message_id: the inbound message being answered. WhatsApp shows typing
            only as part of marking a message read: without this id its
            provider uses the last message it received from the peer.
        idempotency_key: identifies this request.
    """

    peer: str
    action: ChatAction = ChatAction.TYPING
    message_id: str | None = None
    idempotency_key: str = attrs.field(factory=_new_key)


@attrs.frozen(kw_only=True)
class MarkRead:
    """Mark an inbound message (and those before it) as read.

    Attributes:
        peer: the chat.
        message_id: the inbound message's ``platform_message_id``.
        typing: also show the typing indicator (WhatsApp does both in one call).
        idempotency_key: identifies this request.
    """

    peer: str
    message_id: str
    typing: bool = False
    idempotency_key: str = attrs.field(factory=_new_key)


@attrs.frozen(kw_only=True)
class React:
    """Set the bot's reaction to a message, or remove it.

    Attributes:
        peer: the chat.
        message_id: the message's ``platform_message_id``.
        emoji: a unicode emoji (``"👍"``).
        remove: take the bot's reaction ``emoji`` away instead (Telegram and
            WhatsApp clear the bot's reaction whatever it is).
        idempotency_key: identifies this request.
    """

    peer: str
    message_id: str
    emoji: str = attrs.field(validator=attrs.validators.min_len(1))
    remove: bool = False
    idempotency_key: str = attrs.field(factory=_new_key)


Operation: TypeAlias = OutboundMessage | EditMessage | DeleteMessage | SendTyping | MarkRead | React
"""Everything a channel's send path carries."""

_KINDS: Final[Mapping[type, OperationKind]] = {
    EditMessage: OperationKind.EDIT,
    DeleteMessage: OperationKind.DELETE,
    SendTyping: OperationKind.TYPING,
    MarkRead: OperationKind.MARK_READ,
    React: OperationKind.REACT,
}


def operation_kind(op: Operation) -> OperationKind:
    """The kind of ``op`` (a message with uploaded media is an ``UPLOAD``)."""
    if type(op) is OutboundMessage:
        media = op.media
        return OperationKind.UPLOAD if media is not None and media.is_upload else OperationKind.SEND
    return _KINDS[type(op)]


def supported_operations(provider: Provider) -> frozenset[OperationKind]:
    """What ``provider`` declares it can do (:data:`SEND_ONLY` when it declares nothing)."""
    declared = getattr(provider, "operations", None)
    return declared if isinstance(declared, frozenset) else SEND_ONLY


def check_supported(provider: Provider, op: Operation) -> None:
    """Refuse ``op`` when ``provider``'s platform has no such operation.

    Raises:
        Unsupported: with the operation and the provider named.
    """
    kind = operation_kind(op)
    if kind is OperationKind.SEND or kind in supported_operations(provider):
        return
    raise Unsupported(
        f"{provider.name} has no {kind.value.replace('_', ' ')} operation "
        f"(peer {op.peer!r}, key {op.idempotency_key!r}); nothing was sent",
        peer=op.peer,
        operation=kind.value,
        provider=provider.name,
    )


MAX_JSON_DEPTH: Final = 32  # levels of nesting an operation's free-form values may have
_MAX_PROBLEMS: Final = 10  # problems reported per operation (a huge value is not listed whole)
_SCALARS: Final = (str, bytes, bool, int, enum.Enum)  # typed fields JSON (or the codec) carries


def json_problems(op: Operation) -> list[tuple[str, str]]:
    """What in ``op`` cannot be sent, kept and forwarded, as ``(path, problem)``
    (``$.metadata.score``): what JSON cannot carry, a field declared a string
    that holds something else (an ``int`` key was sent, then spoilt every
    checkpoint of its channel), an empty ``peer`` or ``idempotency_key``
    (every message of an empty key was answered as the first one), and text
    that is no Unicode (a lone surrogate, which no platform takes).

    Empty when the operation can be sent, kept and forwarded as it is. At
    most ten problems are listed.
    """
    if type(op) is OutboundMessage and _plain_text(op):
        return []  # (most messages; the walk finds nothing in them either)
    return _walked_problems(op)


def _walked_problems(op: Operation) -> list[tuple[str, str]]:
    """:func:`json_problems` the long way: every field of ``op``, walked."""
    if type(op) not in _OPERATIONS:
        return [("$", f"a {type(op).__name__} is not an operation (one of {_NAMES})")]
    problems: list[tuple[str, str]] = []
    _check_fields(op, "$", problems)
    peer, key = op.peer, op.idempotency_key  # (every operation's: never blank)
    if isinstance(peer, str) and (not peer or peer.isspace()):
        problems.append(("$.peer", "must not be empty"))
    if isinstance(key, str) and (not key or key.isspace()):
        problems.append(("$.idempotency_key", "must not be empty"))
    return problems[:_MAX_PROBLEMS]


def _plain_text(message: OutboundMessage) -> bool:
    """Whether ``message`` is ASCII text to a peer, with none of the problems
    :func:`json_problems` looks for: its fields' checks at the cost of one
    (a message is checked on every send; the walk cost a tenth of a send's
    own work). False only means "walk it"."""
    peer, key, text, reply_to = (
        message.peer,
        message.idempotency_key,
        message.text,
        message.reply_to,
    )
    if (
        type(peer) is not str
        or type(key) is not str
        or type(text) is not str
        or message.media is not None
        or message.template is not None
        or type(message.metadata) is not dict
        or message.metadata
    ):
        return False
    if reply_to is None:
        whole = peer + key + text
    elif type(reply_to) is str:
        whole = peer + key + text + reply_to
    else:
        return False
    return (
        whole.isascii()
        and "\x00" not in whole
        and bool(peer)
        and bool(key)
        and not peer.isspace()
        and not key.isspace()
    )


_OPERATIONS: Final = frozenset(typing.get_args(Operation))
_NAMES: Final = ", ".join(sorted(kind.__name__ for kind in _OPERATIONS))
# attrs class -> its field names, the names of those declared a string (``str``
# or ``str | None``), and of those declared ``str`` alone (None is no value for
# them); cached: the send path checks every operation.
_FIELD_NAMES: dict[type, tuple[tuple[str, ...], frozenset[str], frozenset[str]]] = {}


def _fields_of(kind: type) -> tuple[tuple[str, ...], frozenset[str], frozenset[str]]:
    hints = typing.get_type_hints(kind)
    names = tuple(field.name for field in attrs.fields(kind))
    texts = frozenset(name for name in names if hints.get(name) in (str, str | None))
    required = frozenset(name for name in texts if hints.get(name) is str)
    return names, texts, required


def _check_fields(value: Any, path: str, problems: list[tuple[str, str]]) -> None:
    kind = type(value)
    cached = _FIELD_NAMES.get(kind)
    if cached is None:
        cached = _FIELD_NAMES[kind] = _fields_of(kind)
    names, texts, required = cached
    for name in names:
        item = getattr(value, name)
        if type(item) is str:  # most fields: checked first, cheaply
            if not item.isascii():
                _check_text(item, f"{path}.{name}", problems)
            elif "\x00" in item:
                problems.append((f"{path}.{name}", _NUL))
            continue
        if item is None:
            if name in required:  # (a None peer crashed the channel's actor)
                problems.append((f"{path}.{name}", "must be a string, not None"))
            continue
        if name in texts:
            if not isinstance(item, str):
                problems.append((f"{path}.{name}", f"must be a string, not {type(item).__name__}"))
            elif not item.isascii():
                _check_text(item, f"{path}.{name}", problems)
            elif "\x00" in item:
                problems.append((f"{path}.{name}", _NUL))
            continue
        if type(item) is dict and not item:  # no metadata: no ABC check either
            continue
        if isinstance(item, _SCALARS) or (not item and isinstance(item, Mapping)):
            continue
        if attrs.has(type(item)):
            _check_fields(item, f"{path}.{name}", problems)
        else:
            _check_json(item, f"{path}.{name}", 0, problems)


_NUL: Final = (
    "must not hold a NUL character (U+0000): no platform takes it, and PostgreSQL "
    "cannot store it (its channel's checkpoints would stop)"
)


def _check_text(text: str, path: str, problems: list[tuple[str, str]]) -> None:
    """A lone half of a UTF-16 pair (``"\\udc80"`` in JSON) is no Unicode text:
    no platform takes it, and httpx cannot encode it (sent, it failed as a
    transient error five times, then held every peer of the channel behind
    its open breaker). Nor is a NUL (see :data:`_NUL`)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        problems.append(
            (path, f"not valid Unicode text: a lone surrogate {text[exc.start]!a} at {exc.start}")
        )
        return
    if "\x00" in text:
        problems.append((path, _NUL))


def _check_json(value: Any, path: str, depth: int, problems: list[tuple[str, str]]) -> None:
    if len(problems) >= _MAX_PROBLEMS:
        return
    if isinstance(value, str):
        if not value.isascii():
            _check_text(value, path, problems)
        elif "\x00" in value:
            problems.append((path, _NUL))
        return
    if value is None or isinstance(value, bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            problems.append((path, f"{value} is not a JSON number (only finite numbers are)"))
        return
    if depth >= MAX_JSON_DEPTH:
        problems.append((path, f"nested deeper than {MAX_JSON_DEPTH} levels"))
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                problems.append((path, f"a key must be a string, not {type(key).__name__}"))
                continue
            if not key.isascii():
                _check_text(key, path, problems)
            elif "\x00" in key:
                problems.append((path, "a key " + _NUL))
            _check_json(item, f"{path}.{key}", depth + 1, problems)
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_json(item, f"{path}[{index}]", depth + 1, problems)
        return
    problems.append((path, f"a {type(value).__name__} is not a JSON value"))


def operation_print(op: Operation) -> str:
    """A short text that tells ``op``'s content from another's: what a channel
    keeps beside a key's answer, so that the key reused for another message
    is refused, not answered as the first (see ``SentResults.reused``).

    The same content gives the same print in one process, whichever way it
    came (a caller's objects, or decoded from JSON: a list where a tuple was,
    a mapping's keys in another order); it is not kept across processes
    (``hash``'s seed differs). Values of different JSON types differ (``1``,
    ``1.0`` and ``true``). 32 bits: about one reuse in four billion goes
    unseen, and is answered as the first, as every reuse was before. Never
    raises: content it cannot print (a value no JSON type, which
    :func:`json_problems` lets through in a typed field) gets ``""``, no print,
    which answers any message of its key, as before.
    """
    try:
        if (
            type(op) is OutboundMessage
            and op.media is None
            and op.template is None
            and not op.metadata
        ):  # (most messages: text to a peer)
            content = hash((op.peer, op.text, op.reply_to))
        else:
            content = hash(_canonical(op))
    except Exception:  # (a value no JSON type, hashed or compared its own way)
        return ""
    return f"{content & 0xFFFF_FFFF:x}"


def _canonical(value: Any) -> Any:
    """``value`` as a hashable value equal for equal JSON: attrs instances by
    their class and fields, mappings by their sorted items, sequences as
    tuples, enums by their value, numbers tagged with their type (and ints
    by their digits: ``hash(-1) == hash(-2)``)."""
    kind = type(value)
    if kind is str or value is None:
        return value
    if kind is bool:
        return ("b", value)
    if kind is int:
        return ("i", str(value))
    if kind is float:
        return ("f", repr(value))
    if attrs.has(kind):
        return (
            kind.__name__,
            tuple(_canonical(getattr(value, field.name)) for field in attrs.fields(kind)),
        )
    if isinstance(value, Mapping):
        return ("{", tuple(sorted((str(k), _canonical(v)) for k, v in value.items())))
    if isinstance(value, list | tuple):
        return ("[", tuple(_canonical(item) for item in value))
    if isinstance(value, enum.Enum):
        return _canonical(value.value)
    if isinstance(value, str):  # (a subclass: as the str it is)
        return str(value)
    # A subclass of a number (numpy.float64) as the number it is: JSON brings it
    # back as a plain one, the same message.
    if isinstance(value, bool):
        return ("b", bool(value))
    if isinstance(value, int):
        return ("i", int.__repr__(value))
    if isinstance(value, float):
        return ("f", float.__repr__(value))
    return (kind.__name__, value)  # (bytes; anything else hashes its own way, or raises)


def remembered_result(op: Operation, known: tuple[str, str]) -> SendResult | None:
    """The answer to ``op`` remembered by its key (``(platform message id, peer)``,
    as a channel's ``SentResults`` keeps it): a ``SendResult`` for a message or
    an edit, ``None`` for the others."""
    if isinstance(op, OutboundMessage | EditMessage):
        return SendResult(platform_message_id=known[0], peer=known[1])
    return None


async def perform(conn: Connection, op: Operation) -> SendResult | None:
    """Call the connection's method for ``op``.

    Returns:
        The ``SendResult`` of a send or an edit; ``None`` for the others.

    Raises:
        ProviderError: whatever the connection raises.
    """
    kind = type(op)
    if kind is OutboundMessage:
        assert isinstance(op, OutboundMessage)
        return await conn.send(op)
    if kind is EditMessage:
        assert isinstance(op, EditMessage)
        return await conn.edit(op)
    if kind is DeleteMessage:
        assert isinstance(op, DeleteMessage)
        await conn.delete(op)
    elif kind is SendTyping:
        assert isinstance(op, SendTyping)
        await conn.typing(op)
    elif kind is MarkRead:
        assert isinstance(op, MarkRead)
        await conn.mark_read(op)
    elif kind is React:
        assert isinstance(op, React)
        await conn.react(op)
    else:
        raise TypeError(f"not an operation: {op!r}")
    return None
