"""JSON from untrusted bytes, with its size and nesting bounded before it is parsed.

Design:
- The stdlib parser recurses once per nesting level: ``b"[" * 50000`` ends
  in :class:`RecursionError`, which is not a :class:`ValueError`, so every
  caller that expected "bad JSON" instead crashed (a 500 with a traceback on
  a webhook, before its signature was even checked). Structuring the result
  (cattrs) and encoding it again recurse as well. So the depth is measured
  on the raw bytes first, and anything deeper than :data:`MAX_DEPTH` (far
  beyond any payload a platform or a client sends) is refused before the
  parser sees it.
- The depth check runs in C: strings are cut out with one regular
  expression (a bracket inside a string does not count), everything but
  brackets is deleted (``bytes.translate``), then innermost pairs are
  removed one level per pass (``bytes.replace``), at most the limit's
  number of passes. A body with fewer opening brackets than the limit
  skips the check altogether (``bytes.count``).
- Both refusals are :class:`ValueError` subclasses, so code that already
  answers "not JSON" for a ``ValueError`` keeps doing so; their messages say
  what the limit is and never echo the body.
- An object that names a key twice (``{"peer": "a", "peer": "b"}``) is valid
  JSON to both parsers, which keep the last value without a word; a proxy
  or a log that read the first one saw another message than the node sent.
  Where a body is our own API's (``unique_keys``), it is refused
  (:class:`JSONDuplicateKey`, naming the key). The check costs no second
  parse: the keys the text spells (every string followed by a colon,
  counted in C) are compared with the keys the parsed objects hold, and
  only a body where they differ is parsed again, by :mod:`json` with a
  hook that finds the key. A body in UTF-16 or UTF-32 is always parsed
  again: its bytes cannot be counted so.

Error tree::

    ValueError
    ├── JSONDuplicateKey
    └── JSONLimitExceeded
        ├── JSONTooDeep
        └── JSONTooLarge
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

from ._json import parsed

__all__ = [
    "MAX_DEPTH",
    "JSONDuplicateKey",
    "JSONLimitExceeded",
    "JSONTooDeep",
    "JSONTooLarge",
    "check_depth",
    "loads",
    "refuse_repeated_keys",
]

MAX_DEPTH: Final = 64  # nesting levels (arrays and objects) a JSON value may have

_STRING: Final = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS: Final = bytes(b for b in range(256) if b not in b"[]{}")
_SQUARE: Final = bytes.maketrans(b"{}", b"[]")
_BLANKS: Final = b" \t\r\n"  # JSON's whitespace


class JSONLimitExceeded(ValueError):
    """A JSON body over one of this module's limits (it was not parsed)."""


class JSONTooDeep(JSONLimitExceeded):
    """A JSON body nested deeper than allowed."""


class JSONTooLarge(JSONLimitExceeded):
    """A JSON body larger than allowed."""


class JSONDuplicateKey(ValueError):
    """A JSON object that names one key twice (``key``: that key)."""

    def __init__(self, key: str) -> None:
        super().__init__(f"an object names the key {json.dumps(key)[:80]} twice")
        self.key = key


def _too_deep(raw: bytes, max_depth: int) -> bool:
    """Whether the arrays and objects of ``raw`` nest deeper than ``max_depth``.

    Brackets inside strings do not count. A run of more than ``max_depth``
    opening brackets settles it at once; otherwise each pass removes the
    innermost pairs (one level), and what is left after ``max_depth`` passes
    is either a deeper nesting (a pair remains) or unmatched brackets, which
    the parser would descend into all the same.
    """
    if raw.count(b"[") + raw.count(b"{") <= max_depth:
        return False
    if b'"' in raw:
        raw = _STRING.sub(b"", raw)
    brackets = raw.translate(_SQUARE, _NOT_BRACKETS)
    run = b"[" * (max_depth + 1)
    for _ in range(max_depth):
        if run in brackets:
            return True
        shorter = brackets.replace(b"[]", b"")
        if len(shorter) == len(brackets):
            break
        brackets = shorter
    return b"[]" in brackets or brackets.count(b"[") > max_depth


def check_depth(data: bytes | str, max_depth: int = MAX_DEPTH) -> None:
    """Refuse ``data`` if it nests deeper than ``max_depth``, without parsing it.

    For a router that must refuse a hostile body before it does anything
    costlier (hashing it, parsing it).

    Raises:
        JSONTooDeep: ``data`` nests deeper than ``max_depth``.
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if _too_deep(raw, max_depth):
        raise JSONTooDeep(f"the JSON body nests more than the {max_depth} levels allowed")


def loads(
    data: bytes | str,
    *,
    max_depth: int = MAX_DEPTH,
    max_bytes: int | None = None,
    unique_keys: bool = False,
) -> Any:
    """Parse ``data`` as JSON once it is known to be within the limits.

    Args:
        data: the raw JSON text (bytes in any encoding :func:`json.loads` accepts).
        max_depth: the most nesting levels allowed.
        max_bytes: the most bytes (UTF-8 for a ``str``) allowed; ``None`` for any.
        unique_keys: refuse an object that names a key twice.

    Returns:
        The JSON value.

    Raises:
        JSONTooLarge: ``data`` is over ``max_bytes``.
        JSONTooDeep: ``data`` nests deeper than ``max_depth``.
        JSONDuplicateKey: ``unique_keys``, and an object names a key twice.
        ValueError: ``data`` is not JSON (:class:`json.JSONDecodeError`, or
            :class:`UnicodeDecodeError` for bytes in no JSON encoding).
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if max_bytes is not None and len(raw) > max_bytes:
        raise JSONTooLarge(f"the JSON body has {len(raw)} bytes, more than the {max_bytes} allowed")
    check_depth(raw, max_depth)
    try:
        value = parsed(data)
    except RecursionError as exc:  # a backstop: the scan should have caught it
        raise JSONTooDeep(f"the JSON body nests more than {max_depth} levels deep") from exc
    if unique_keys:
        held = _keys_held(value)
        if json.detect_encoding(raw) not in ("utf-8", "utf-8-sig"):
            # UTF-16 or -32: the byte counts below mean nothing (a character whose
            # bytes hold '"' and ':' could even make them agree). Parsed again.
            _find_repeated_key(data)
        # Each key spelt takes a colon: as many colons as keys held, none repeats.
        elif raw.count(b":") != held and _keys_spelt(raw) != held:
            _find_repeated_key(data)
    return value


def _keys_spelt(raw: bytes) -> int:
    """How many object keys the UTF-8 text ``raw`` spells: strings followed by a colon.

    Every string becomes one quote; a colon outside strings follows a key
    and nothing else. (Text in another encoding counts wrong, and is then
    parsed again by :func:`_find_repeated_key`, which is exact.)
    """
    return _STRING.sub(b'"', raw).translate(None, _BLANKS).count(b'":')


def _keys_held(value: Any) -> int:
    """How many keys the objects of a parsed JSON value hold, all levels together."""
    count = 0
    todo = [value]
    while todo:
        item = todo.pop()
        if type(item) is dict:
            count += len(item)
            todo += [v for v in item.values() if type(v) is dict or type(v) is list]
        elif type(item) is list:
            todo += [v for v in item if type(v) is dict or type(v) is list]
    return count


def refuse_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An ``object_pairs_hook`` for :func:`json.loads` that raises :class:`JSONDuplicateKey`."""
    value = dict(pairs)
    if len(value) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise JSONDuplicateKey(key)
            seen.add(key)
    return value


def _find_repeated_key(data: bytes | str) -> None:
    """Raise :class:`JSONDuplicateKey` for the first key ``data`` repeats in an object, if any."""
    try:
        json.loads(data, object_pairs_hook=refuse_repeated_keys)
    except JSONDuplicateKey:
        raise
    except (ValueError, RecursionError):  # what msgspec alone took: no repeat was seen
        pass
