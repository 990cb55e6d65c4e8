"""The store's wire format: events and messages as JSON-able dicts, and back.

Design:
- One cattrs converter of our own (never the global one). Enums travel as
  their values, tuples as lists (JSON has no tuples; the attrs field types
  bring them back as tuples), ``Mapping[str, Any]`` fields pass through, so
  ``decode(json.loads(json.dumps(encode(x)))) == x`` for every event type and
  for :class:`~providers.base.OutboundMessage` whose free-form values are
  JSON values.
- Outbound operations travel the same way: a message as before (no tag, so
  rows written before operations existed still read), every other operation
  (:mod:`providers.operations`) with an ``op`` tag: ``edit``, ``delete``,
  ``typing``, ``mark_read``, ``react``. Uploaded bytes travel as base64.
- Events carry a ``kind`` discriminator (cattrs' tagged-union strategy):
  ``message``, ``edited``, ``receipt``, ``state``. The same word is the
  ``kind`` column of PostgreSQL's ``inbound_events``.
- Keys the reader does not know are ignored, so a store written by a newer
  node can be read by an older one during a rolling upgrade; missing or
  mistyped fields are errors naming their path (``expected str @ $.peer``).
- :func:`dedupe_key` is the identity of a stored event: the same message
  twice is one row; receipts of one message with different statuses, and
  edits of one message at different times, are distinct.
- A channel's checkpoint (:class:`~actors.channel.durable.ChannelState`)
  travels as one JSON object; a limiter part is told apart by its keys (a
  keyed limiter has ``buckets``). Its dead letters are the store's rows of
  their own, not part of that object.
- A busy channel is checkpointed once a second, so :func:`state_text`
  takes shortcuts that write the same text: the text of the channel's
  window of send answers is kept with it and shifted with it, so an
  answer is encoded once (:func:`sent_json`), the
  inbound ids (up to a thousand a channel) are written by msgspec, and the
  rest of the state is encoded by hand into the dict cattrs makes of it
  (:func:`state_rest`), written by msgspec too where its text is dumps'
  (nearly always: see :func:`_rest_json`). Tests compare each with the
  plain way.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from json.encoder import encode_basestring  # what dumps uses with ensure_ascii=False
from typing import Any, Final, TypeAlias

import attrs
import cattrs
import msgspec
from cattrs.strategies import configure_tagged_union
from cattrs.v import format_exception

from actors.channel.durable import ChannelState, SentEntry, SentWindow
from actors.ratelimit import GCRAState, KeyedLimiterState
from providers.base import (
    ConnectionStateChanged,
    DeliveryReceipt,
    Event,
    InboundMessage,
    MessageEdited,
    OutboundMessage,
)
from providers.operations import (
    DeleteMessage,
    EditMessage,
    MarkRead,
    Operation,
    React,
    SendTyping,
)

from .base import KeptMessage

__all__ = [
    "EVENT_KINDS",
    "DedupeKey",
    "converter",
    "decode_event",
    "decode_kept",
    "decode_outbound",
    "decode_state",
    "dedupe_key",
    "dumps",
    "encode_event",
    "encode_kept",
    "encode_outbound",
    "encode_state",
    "seen_json",
    "sent_json",
    "state_from_text",
    "state_rest",
    "state_text",
    "stored_json",
]

EVENT_KINDS: Final[Mapping[type, str]] = {
    InboundMessage: "message",
    MessageEdited: "edited",
    DeliveryReceipt: "receipt",
    ConnectionStateChanged: "state",
}
_KIND_TAG: Final = "kind"
OPERATION_TAGS: Final[Mapping[type, str]] = {
    EditMessage: "edit",
    DeleteMessage: "delete",
    SendTyping: "typing",
    MarkRead: "mark_read",
    React: "react",
}
_OP_TAG: Final = "op"
_TAGGED: Final = {tag: kind for kind, tag in OPERATION_TAGS.items()}

DedupeKey: TypeAlias = tuple[str, str, str, str]
"""``(channel_id, kind, platform_message_id, status)``: one stored event."""


def _make_converter() -> cattrs.Converter:
    made = cattrs.Converter(unstruct_collection_overrides={tuple: list})
    configure_tagged_union(
        Event,
        made,
        tag_generator=lambda cls: EVENT_KINDS[cls],
        tag_name=_KIND_TAG,
    )
    # cattrs' own str hook calls str(): a stored peer of null or 5, or a list,
    # was sent to "None", "5" or "['a', 'b']" and the row forgotten.
    made.register_structure_hook(str, _str_in)
    made.register_structure_hook(GCRAState | KeyedLimiterState[Any], _limiter_part)
    made.register_unstructure_hook(bytes, _bytes_out)
    made.register_structure_hook(bytes, _bytes_in)
    # A busy channel's checkpoint carries hundreds of these a second: one
    # comprehension instead of cattrs' walk of a generic iterable.
    made.register_unstructure_hook(SentWindow, _sent_out)
    made.register_structure_hook(SentWindow, _sent_in)
    # Late-bound: both functions use the converter being made.
    made.register_unstructure_hook_func(
        lambda t: t == Operation, lambda message: encode_outbound(message)
    )
    made.register_structure_hook_func(
        lambda t: t == Operation, lambda data, _: _structure_operation(data)
    )
    return made


def _str_in(value: Any, _: Any) -> str:
    if type(value) is str:
        return value
    if type(value) is int:
        # Releases before types were checked where operations enter kept a
        # Telegram chat id or a reply_to as written, a number: read as its digits.
        return str(value)
    raise ValueError(f"expected a string, got {type(value).__name__}")


def _sent_out(window: SentWindow) -> list[dict[str, str]]:
    return [{"key": k, "platform_message_id": m, "peer": p} for k, m, p in window]


_SENT_FIELDS: Final = ("key", "platform_message_id", "peer")


def _sent_in(data: Any, _: Any) -> SentWindow:
    if not isinstance(data, list | tuple):
        raise ValueError(f"expected a list of answers, got {type(data).__name__}")
    entries = []
    for index, item in enumerate(data):
        if not isinstance(item, Mapping):
            raise ValueError(f"answer {index}: expected an object, got {type(item).__name__}")
        values = tuple(item.get(name) for name in _SENT_FIELDS)
        for name, value in zip(_SENT_FIELDS, values, strict=True):
            if type(value) is not str:
                if name not in item:
                    raise ValueError(f"answer {index}: {name} is missing")
                got = "null" if value is None else type(value).__name__
                raise ValueError(f"answer {index}: {name} must be a string, got {got}")
        entries.append(values)
    return SentWindow(tuple(entries))  # type: ignore[arg-type]  # three strings, checked


def sent_json(window: SentWindow) -> str:
    """``window`` as the JSON list :func:`dumps` makes of its encoding.

    Each answer is encoded once, the first time a checkpoint writes it: the
    window keeps its text, and the window shifted from it starts from that
    text (``SentWindow.text``). A busy channel's checkpoint (one a second)
    carries its newest answers, hundreds of them, nearly all written before.
    """
    return f"[{_sent_items(window)}]"


def _sent_items(window: SentWindow) -> str:
    """:func:`sent_json` without its brackets."""
    return window.text(_sent_text)


def _sent_text(entry: SentEntry) -> str:
    # What dumps writes for the answer's dict, piece by piece: the strings by
    # the encoder dumps itself uses (ensure_ascii=False).
    key, platform_message_id, peer = entry
    return (
        f'{{"key":{encode_basestring(key)},'
        f'"platform_message_id":{encode_basestring(platform_message_id)},'
        f'"peer":{encode_basestring(peer)}}}'
    )


def _bytes_out(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _bytes_in(value: Any, _: Any) -> bytes:
    if not isinstance(value, str):
        raise TypeError(f"expected base64 text, got {type(value).__name__}")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"not base64: {exc}") from exc


def _optional_float(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number or null, got {type(value).__name__}")
    return float(value)


def _limiter_part(data: Any, _: Any) -> GCRAState | KeyedLimiterState[Any]:
    if not isinstance(data, Mapping):
        raise TypeError(f"expected a limiter state object, got {type(data).__name__}")
    if "buckets" not in data:
        return converter.structure(data, GCRAState)
    buckets = data["buckets"]
    if not isinstance(buckets, list):
        raise TypeError("expected buckets to be a list of [key, bucket] pairs")
    return KeyedLimiterState(
        buckets=tuple((key, converter.structure(bucket, GCRAState)) for key, bucket in buckets),
        paused_until=_optional_float(data.get("paused_until")),
        new_keys_paused_until=_optional_float(data.get("new_keys_paused_until")),
    )


converter: Final = _make_converter()


def _why(exc: BaseException, type_: type | None) -> str:
    if type_ is SentWindow and isinstance(exc, ValueError):
        return str(exc)  # _sent_in's own words: which answer, and what is wrong with it
    text = format_exception(exc, type_)
    return f"{text} ({exc})" if text in ("invalid value", "unknown error") else text


def _invalid(what: str, exc: BaseException) -> ValueError:
    if isinstance(exc, cattrs.BaseValidationError):
        detail = "; ".join(cattrs.transform_error(exc, format_exception=_why))
    elif isinstance(exc, KeyError):
        detail = f"missing or unknown key {exc}"
    else:
        detail = str(exc)
    return ValueError(f"not a valid {what}: {detail}")


# One encoder for every call: json.dumps with options builds a new one per call.
_STORE_JSON: Final = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode


def dumps(data: Any) -> str:
    """Compact JSON for the store; NaN and infinities are refused.

    Raises:
        ValueError: ``data`` holds a float JSON cannot carry (NaN, inf), or
            text that is not Unicode (:func:`storable`).
        TypeError: ``data`` holds a value JSON cannot carry at all.
    """
    return storable(_STORE_JSON(data))


_SURROGATE: Final = re.compile("[\ud800-\udfff]")


def storable(text: str) -> str:
    """``text``, which a store can keep: no lone surrogate (half of a UTF-16
    pair), which neither SQLite's UTF-8 nor PostgreSQL's jsonb can hold.

    Raises:
        ValueError: it holds one (a ``UnicodeEncodeError`` at a store's bind
            failed the whole batch, or the store's flusher task).
    """
    if not text.isascii():
        found = _SURROGATE.search(text)
        if found is not None:
            raise ValueError(
                f"a lone surrogate {found.group()!a} at {found.start()}: not Unicode text"
            )
    return text


def encode_event(event: Event) -> dict[str, Any]:
    """An event as a JSON-able dict with a ``kind`` key."""
    encoded: dict[str, Any] = converter.unstructure(event, unstructure_as=Event)
    return encoded


def decode_event(data: Mapping[str, Any]) -> Event:
    """The event :func:`encode_event` made ``data`` from.

    Raises:
        ValueError: ``data`` is not an encoded event; the message says what
            is wrong and where.
    """
    kind = data.get(_KIND_TAG) if isinstance(data, Mapping) else None
    if kind not in EVENT_KINDS.values():
        known = ", ".join(EVENT_KINDS.values())
        raise ValueError(f"not a valid event: kind {kind!r} is not one of {known}")
    try:
        event: Event = converter.structure(data, Event)  # type: ignore[arg-type]
    except (cattrs.BaseValidationError, KeyError, TypeError, ValueError) as exc:
        raise _invalid(f"{kind} event", exc) from exc
    return event


def encode_outbound(message: Operation) -> dict[str, Any]:
    """An outbound message (or operation, with its ``op`` tag) as a JSON-able dict."""
    encoded: dict[str, Any] = converter.unstructure(message, unstructure_as=type(message))
    tag = OPERATION_TAGS.get(type(message))
    if tag is not None:
        encoded[_OP_TAG] = tag
    return encoded


def decode_outbound(data: Mapping[str, Any]) -> Operation:
    """The message or operation :func:`encode_outbound` made ``data`` from.

    Raises:
        ValueError: ``data`` is not an encoded outbound message or operation.
    """
    tag = data.get(_OP_TAG) if isinstance(data, Mapping) else None
    try:
        return _structure_operation(data)
    except (cattrs.BaseValidationError, KeyError, TypeError, ValueError) as exc:
        raise _invalid(f"outbound {tag or 'message'}", exc) from exc


def _structure_operation(data: Any) -> Operation:
    """A message (no ``op`` tag) or the operation its tag names; cattrs' errors as they are."""
    if not isinstance(data, Mapping):
        raise TypeError(f"expected a JSON object, got {type(data).__name__}")
    tag = data.get(_OP_TAG)
    if tag is None:
        kind: type[Any] = OutboundMessage
    elif tag in _TAGGED:
        kind = _TAGGED[tag]
        data = {key: value for key, value in data.items() if key != _OP_TAG}
    else:
        raise ValueError(f"op {tag!r} is not one of {', '.join(_TAGGED)}")
    decoded: Operation = converter.structure(data, kind)
    return decoded


def encode_kept(kept: KeptMessage) -> dict[str, Any]:
    """A kept message as a JSON-able dict (one line of the memory outbox file)."""
    encoded: dict[str, Any] = converter.unstructure(kept)
    return encoded


def decode_kept(data: Mapping[str, Any]) -> KeptMessage:
    """The kept message :func:`encode_kept` made ``data`` from.

    Raises:
        ValueError: ``data`` is not an encoded kept message.
    """
    try:
        return converter.structure(data, KeptMessage)
    except (cattrs.BaseValidationError, KeyError, TypeError, ValueError) as exc:
        raise _invalid("kept message", exc) from exc


def encode_state(state: ChannelState) -> dict[str, Any]:
    """A channel's durable state as a JSON-able dict, without its dead letters.

    The dead letters are the store's rows of their own (``encode_outbound``
    for each message); the dict keeps their counters.
    """
    encoded: dict[str, Any] = converter.unstructure(attrs.evolve(state, dead_letters=()))
    del encoded["dead_letters"]
    return encoded


def state_text(state: ChannelState) -> str:
    """:func:`encode_state` as :func:`dumps` writes it, the inbound ids and send answers last.

    The answers are spliced in as their window's kept text
    (:func:`sent_json`), the ids as :func:`seen_json` writes them: the rest
    of a busy channel's state is small, its hundreds of answers and up to a
    thousand ids are not.

    Raises:
        ValueError, TypeError: the state holds what JSON cannot carry.
    """
    rest = _rest_json(state)  # an object with at least its version: never "{}"
    return f'{rest[:-1]},"seen":{seen_json(state.seen)},"sent":[{_sent_items(state.sent)}]}}'


_REST_JSON: Final = msgspec.json.Encoder().encode


def _rest_json(state: ChannelState) -> str:
    """``dumps(state_rest(state))``, written by msgspec when its text is the same.

    Design notes: dumps took about 7 µs for this dozen-field object, a
    quarter of a busy channel's checkpoint round; msgspec takes under one.
    For JSON's own values their texts differ only where msgspec writes a
    float with no exponent's sign, or no exponent (``1e16``, ``0.00001``),
    writes NaN and the infinities as ``null`` where dumps refuses them,
    refuses a lone half of a UTF-16 pair, and writes some keys that are not
    strings its own way; and msgspec writes values dumps refuses (bytes,
    dates, sets, UUIDs). So the state's fields are checked first
    (:func:`_plain_scalars`): one that is not of JSON's own types, or such a
    float, sends the whole rest to dumps, as does anything msgspec refuses.
    Walking the whole dict instead would cost what msgspec saves.
    """
    rest = state_rest(state)
    if _plain_scalars(state):
        try:
            return _REST_JSON(rest).decode()
        except (UnicodeEncodeError, msgspec.EncodeError, TypeError):
            pass
    return dumps(rest)


_PLAIN_TYPES: Final = frozenset({str, int, bool, type(None)})


def _plain_scalars(state: ChannelState) -> bool:
    """Whether every value of ``state``'s rest is a str, int, bool, None or a
    float msgspec writes as dumps does (:func:`_plain_float`), its session's
    data included (:func:`_plain_value`): what :func:`_rest_json` may give
    msgspec. The state's own fields by exact type (a subclass goes to dumps);
    the session's free-form data as :func:`_plain_value` judges it."""
    backoff = state.backoff
    breaker = state.breaker
    values: list[Any] = [
        state.version,
        state.failed,
        state.dead_letters_total,
        state.dead_letters_dropped,
        state.clean,
        backoff.failures,
        backoff.last_delay,
        backoff.connected_at,
        breaker.consecutive_failures,
        breaker.retry_at,
        breaker.trials_in_flight,
        breaker.successes,
        breaker.failures,
        breaker.rejections,
        breaker.times_opened,
    ]
    limiter = state.limiter
    if limiter is not None:
        values.append(limiter.paused_until)
        for part in limiter.parts:
            if type(part) is GCRAState:
                values += (part.tat_ns, part.paused_until)
            elif type(part) is KeyedLimiterState:
                values += (part.paused_until, part.new_keys_paused_until)
                for key, bucket in part.buckets:
                    values += (key, bucket.tat_ns, bucket.paused_until)
            else:
                return False  # a part cattrs writes: nothing known of its values
    for value in values:
        kind = type(value)
        if kind is float:
            if not _plain_float(value):
                return False
        elif kind not in _PLAIN_TYPES:
            return False
    session = state.session
    if session is None:
        return True
    return type(session.provider) is str and (not session.data or _plain_value(session.data))


def _plain_float(value: float) -> bool:
    # repr, and so dumps, writes an exponent below 1e-4 and from 1e16; msgspec
    # writes the same digits then, in another form. NaN and inf fail too.
    return value == 0 or 1e-4 <= abs(value) < 1e16


def _plain_value(value: Any) -> bool:
    # Only JSON's own values: msgspec writes bytes, dates and the like that
    # dumps refuses.
    if value is None or isinstance(value, str | int):  # (a bool is an int)
        return True
    if isinstance(value, float):
        return _plain_float(value)
    if isinstance(value, dict):
        return all(type(key) is str and _plain_value(item) for key, item in value.items())
    if isinstance(value, list | tuple):
        return all(_plain_value(item) for item in value)
    return False


_SEEN_JSON: Final = msgspec.json.Encoder().encode


def seen_json(ids: tuple[str, ...]) -> str:
    """The inbound ids as the JSON list :func:`dumps` makes of them, written by msgspec.

    A channel that receives is checkpointed with its newest thousand ids
    every second; :func:`dumps` takes about 100 µs to write them, msgspec
    about a tenth of that, and its text is the same for every string but a
    lone half of a UTF-16 pair, which it refuses: :func:`dumps` writes those.
    """
    try:
        return _SEEN_JSON(ids).decode()
    except (UnicodeEncodeError, msgspec.EncodeError):
        return dumps(list(ids))


def state_rest(state: ChannelState) -> dict[str, Any]:
    """:func:`encode_state` without the inbound ids and the send answers: the dict
    cattrs makes, made by hand.

    Design notes: a busy channel's checkpoint is written once a second, and
    cattrs' walk of it (after a copy of the state without its lists) cost
    as much as the JSON text. The fields are few and fixed; a test compares
    this dict with cattrs' over generated states, so a field added to
    :class:`~actors.channel.durable.ChannelState` or its parts and not here
    fails it. A limiter part of another class than the two known goes to
    cattrs, as does the session (its data are free-form).
    """
    session = state.session
    limiter = state.limiter
    backoff = state.backoff
    breaker = state.breaker
    return {
        "version": state.version,
        "session": None if session is None else converter.unstructure(session),
        "limiter": None
        if limiter is None
        else {
            "parts": [_limiter_part_out(part) for part in limiter.parts],
            "paused_until": limiter.paused_until,
        },
        "backoff": {
            "failures": backoff.failures,
            "last_delay": backoff.last_delay,
            "connected_at": backoff.connected_at,
        },
        "breaker": {
            "state": breaker.state.value,
            "consecutive_failures": breaker.consecutive_failures,
            "retry_at": breaker.retry_at,
            "trials_in_flight": breaker.trials_in_flight,
            "successes": breaker.successes,
            "failures": breaker.failures,
            "rejections": breaker.rejections,
            "times_opened": breaker.times_opened,
        },
        "failed": state.failed,
        "dead_letters_total": state.dead_letters_total,
        "dead_letters_dropped": state.dead_letters_dropped,
        "clean": state.clean,
    }


def _limiter_part_out(part: GCRAState | KeyedLimiterState[Any]) -> Any:
    if type(part) is GCRAState:
        return {"tat_ns": part.tat_ns, "paused_until": part.paused_until}
    if type(part) is KeyedLimiterState:
        # The keys as they are: cattrs passes a type variable's values through.
        return {
            "buckets": [
                [key, {"tat_ns": bucket.tat_ns, "paused_until": bucket.paused_until}]
                for key, bucket in part.buckets
            ],
            "paused_until": part.paused_until,
            "new_keys_paused_until": part.new_keys_paused_until,
        }
    return converter.unstructure(part)


def stored_json(text: str | bytes) -> Any:
    """The value of a stored row's JSON text.

    Raises:
        ValueError: ``text`` is not JSON, or is nested too deep to read (a
            stored row is data, never a crash: json raises RecursionError).
    """
    try:
        return json.loads(text)
    except RecursionError as exc:
        raise ValueError("nested too deep to read") from exc


def state_from_text(text: str) -> ChannelState:
    """The state whose :func:`state_text` ``text`` is.

    Raises:
        ValueError: ``text`` is not a channel state's JSON (nested too deep
            to read included: a stored row is data, never a crash).
    """
    try:
        data = stored_json(text)
    except ValueError as exc:
        raise ValueError(f"not a valid channel state: {exc}") from exc
    return decode_state(data)


def decode_state(data: Mapping[str, Any]) -> ChannelState:
    """The state :func:`encode_state` made ``data`` from (with no dead letters).

    Raises:
        ValueError: ``data`` is not an encoded channel state.
    """
    if not isinstance(data, Mapping):
        raise ValueError("not a valid channel state: expected a JSON object")
    try:
        return converter.structure({**data, "dead_letters": []}, ChannelState)
    except RecursionError as exc:
        raise ValueError("not a valid channel state: nested too deep to read") from exc
    except (cattrs.BaseValidationError, KeyError, TypeError, ValueError) as exc:
        raise _invalid("channel state", exc) from exc


def dedupe_key(event: InboundMessage | MessageEdited | DeliveryReceipt) -> DedupeKey:
    """The identity of a stored event: ``(channel_id, kind, platform_message_id, status)``.

    ``status`` is the receipt's status, an edit's own id where the platform
    gives one (``MessageEdited.edit_id``), else its timestamp (``repr``; empty
    when the platform gave none), and empty for a message.
    """
    if isinstance(event, DeliveryReceipt):
        status = event.status.value
    elif isinstance(event, MessageEdited):
        status = event.edit_id or ("" if event.timestamp is None else repr(event.timestamp))
    else:
        status = ""
    return (event.channel_id, EVENT_KINDS[type(event)], event.platform_message_id, status)
