"""JSON on the providers' hot paths: msgspec, with the standard library behind it.

Design:
- A generic websocket channel makes a frame for every message it sends and
  parses one for every answer and event; a Discord bot parses every gateway
  event; the HTTP platforms' answers and webhooks are parsed once each.
  msgspec does each in a fifth of the time of :mod:`json` (0.6 against
  5.1 µs to make a send frame, 0.9 against 4.1 µs to parse an ack, on this
  project's CI machine). orjson is as fast, but turns an integer beyond 64
  bits into a float without a word: msgspec keeps every digit.
- msgspec is stricter than :mod:`json`, and a frame the standard library
  took must not start failing a link or crashing a send. What msgspec
  refuses goes to :mod:`json`, with the result it gave before: half of a
  UTF-16 pair (a lone surrogate, as a client that cut a string inside an
  emoji sends it; written escaped, as ``\\ud83d``), ``NaN`` and numbers
  too large for a float (``1e400``), bytes in UTF-16 or with a byte-order
  mark. Only what neither takes raises. A lone surrogate is read as
  U+FFFD, the replacement character: text with one is no Unicode, and no
  store, log or websocket can carry it (a message a platform sent with one
  is kept, with its cut character shown as such).
- :func:`compact` writes non-ASCII text as UTF-8 (msgspec's way); the text
  the standard library writes for what msgspec refuses escapes it, as
  ``json.dumps`` does. Both are the same JSON value. A float that JSON
  has no way to write (``NaN``, an infinity) is written as ``null``, where
  the standard library wrote ``NaN``, which no other parser takes.
- msgspec also writes some values the standard library refused (a set as
  an array, bytes in base64, a date or a UUID as a string, a dataclass as
  an object). The providers build their frames from JSON's own types, so
  only a caller's stray value in a frame it hands over (a Discord
  presence's ``d``) goes out where it raised before.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

import msgspec

__all__ = ["compact", "parsed"]

_encode: Final = msgspec.json.Encoder().encode
_decode: Final = msgspec.json.Decoder().decode
_stdlib_compact: Final = json.JSONEncoder(separators=(",", ":")).encode


def compact(value: Any) -> str:
    """``value`` as compact JSON text (no spaces)."""
    try:
        return _encode(value).decode()
    except (TypeError, ValueError, msgspec.EncodeError):  # a lone surrogate: UnicodeEncodeError
        return _stdlib_compact(value)


def parsed(data: str | bytes) -> Any:
    """The JSON value of ``data``.

    Raises:
        ValueError: ``data`` is not JSON (a :class:`json.JSONDecodeError`,
            or a :class:`UnicodeDecodeError` for bytes that are not UTF-8), or
            is nested past what the parsers' recursion takes.
    """
    try:
        try:
            return _decode(data)
        except ValueError:  # msgspec.DecodeError
            value = json.loads(data)
    except RecursionError:  # a 10 KB frame of 5,000 nested arrays: unreadable, as any
        raise ValueError("the JSON is nested too deeply to read") from None
    try:  # what msgspec refuses is rare (see the module): its text is looked through
        return _whole(value)
    except RecursionError:  # as deep as json.loads goes: as it is (a store refuses it)
        return value


_SURROGATE: Final = re.compile("[\ud800-\udfff]")


def _whole(value: Any) -> Any:
    """``value`` with each lone surrogate of its text replaced by U+FFFD."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_whole(key): _whole(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_whole(item) for item in value]
    return value
