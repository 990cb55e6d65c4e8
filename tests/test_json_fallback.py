"""The providers' JSON (``providers._json``): msgspec's speed, the standard library's reach.

Whatever :mod:`json` parsed before, :func:`parsed` gives the same value;
whatever it wrote, :func:`compact` writes the same JSON value, without spaces
(but ``null`` for a NaN or an infinity, which JSON cannot write).
"""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from providers._json import compact, parsed

# Any text, halves of UTF-16 pairs (lone surrogates) included.
any_text = st.text(st.characters(blacklist_categories=()), max_size=20)
values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)  # beyond 64 bits too
    | st.floats(allow_nan=False, allow_infinity=False)
    | any_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=12,
)


def whole(value: Any) -> Any:
    """``value`` with each lone surrogate (half of a UTF-16 pair) as U+FFFD."""
    if isinstance(value, str):
        return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in value)
    if isinstance(value, list):
        return [whole(item) for item in value]
    if isinstance(value, dict):
        return {whole(key): whole(item) for key, item in value.items()}
    return value


def same(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down (1 is not 1.0 here)."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@given(values)
@example({"text": "cut \ud83d", "n": 2**70})  # a lone surrogate; an integer over 64 bits
def test_compact_writes_the_value_json_reads_back(value: Any) -> None:
    text = compact(value)
    assert same(json.loads(text), value)
    assert same(parsed(text), whole(value))  # a lone surrogate is read as U+FFFD


@given(values, st.sampled_from([", ", ",", " , "]))
@example({"text": "cut \ud83d", "n": -(2**70)}, ",")
def test_parsed_reads_whatever_json_wrote_as_json_reads_it(value: Any, comma: str) -> None:
    for ascii_only in (True, False):
        text = json.dumps(value, ensure_ascii=ascii_only, separators=(comma, ":"))
        assert same(parsed(text), whole(json.loads(text)))
        if ascii_only or not any("\ud800" <= c <= "\udfff" for c in text):
            data = text.encode()
            assert same(parsed(data), whole(json.loads(data)))
    data = json.dumps(value).encode("utf-16")  # bytes with a byte-order mark
    assert same(parsed(data), whole(json.loads(data)))


def test_what_msgspec_refuses_comes_out_as_the_standard_library_gives_it() -> None:
    cut = "see you \ud83d"  # the first half of an emoji only
    assert compact({"text": cut}) == '{"text":"see you \\ud83d"}'
    assert parsed('{"text":"see you \\ud83d"}') == {"text": "see you \ufffd"}
    for big in ("123456789012345678901234567890", "18446744073709551616", "-9223372036854775809"):
        for text in (f"[{big}]", f'{{"n": {big}}}', f'{{"n":{big}}}', big):
            assert same(parsed(text), json.loads(text)), text
            assert same(parsed(text.encode()), json.loads(text)), text
    assert parsed('{"id":"1234567890123456789"}') == {"id": "1234567890123456789"}  # in quotes
    assert math.isnan(parsed('{"t":NaN}')["t"])
    assert compact({"t": math.nan, "u": -math.inf}) == '{"t":null,"u":null}'
    assert compact({"text": "olá 👍"}) == '{"text":"olá 👍"}'  # UTF-8, not escapes


def test_what_neither_reads_is_a_value_error() -> None:
    for bad in ("{not json", "", b"\xff\xfe\xff", "[1,]"):
        try:
            parsed(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} parsed")
