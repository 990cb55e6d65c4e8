"""Operations in the store's wire format: dead letters and kept messages round-trip."""

from __future__ import annotations

import json
from typing import Final

import attrs
import pytest

from providers.base import Media, MediaKind, OutboundMessage, Template
from providers.operations import (
    ChatAction,
    DeleteMessage,
    EditMessage,
    MarkRead,
    Operation,
    React,
    SendTyping,
    json_problems,
    operation_print,
)
from runtime.store import KeptMessage
from runtime.store.codec import decode_kept, decode_outbound, dumps, encode_kept, encode_outbound

NUL: Final = (
    "must not hold a NUL character (U+0000): no platform takes it, and PostgreSQL "
    "cannot store it (its channel's checkpoints would stop)"
)

OPERATIONS: list[Operation] = [
    OutboundMessage(peer="1", idempotency_key="t", text="hi"),
    OutboundMessage(
        peer="1",
        idempotency_key="u",
        media=Media(kind=MediaKind.IMAGE, content=b"\x00\xffbytes", filename="a.png"),
    ),
    OutboundMessage(
        peer="1", idempotency_key="f", media=Media(kind=MediaKind.DOCUMENT, path="/srv/r.pdf")
    ),
    EditMessage(peer="1", message_id="1:2", text="new", idempotency_key="e"),
    DeleteMessage(peer="1", message_id="1:2", idempotency_key="d"),
    SendTyping(peer="1", action=ChatAction.RECORD_VOICE, idempotency_key="y"),
    MarkRead(peer="1", message_id="w", typing=True, idempotency_key="r"),
    React(peer="1", message_id="2", emoji="👍", remove=True, idempotency_key="x"),
]


@pytest.mark.parametrize("op", OPERATIONS, ids=lambda op: type(op).__name__)
def test_every_operation_round_trips_through_json(op: Operation) -> None:
    encoded = json.loads(dumps(encode_outbound(op)))
    assert decode_outbound(encoded) == op
    kept = KeptMessage(channel_id="c", message=op, reason="drain", accepted_at=1.5)
    assert decode_kept(json.loads(dumps(encode_kept(kept)))) == kept


PRINTED: list[Operation] = [
    *OPERATIONS,
    OutboundMessage(
        peer="1", idempotency_key="t", text="hi", metadata={"b": [1, {"c": 2}], "a": 1}
    ),
    OutboundMessage(
        peer="1",
        idempotency_key="t",
        template=Template(
            name="hello", language="en_US", components=({"type": "body", "parameters": []},)
        ),
    ),
]


@pytest.mark.parametrize("op", PRINTED, ids=lambda op: type(op).__name__)
def test_an_operation_has_the_same_print_however_it_came(op: Operation) -> None:
    # Decoded from JSON (a forwarded send, a kept one): lists for tuples,
    # mappings rebuilt; the print is what a key's answer is checked against.
    decoded = decode_outbound(json.loads(dumps(encode_outbound(op))))
    assert operation_print(decoded) == operation_print(op)


def test_values_of_other_json_types_have_other_prints_and_no_value_raises() -> None:
    import enum

    def with_meta(value: object) -> str:
        meta = {"n": value}
        return operation_print(
            OutboundMessage(peer="1", idempotency_key="t", text="hi", metadata=meta)
        )

    prints = [with_meta(v) for v in (-1, -2, 1, 1.0, True, "1", None, [1], {"1": 1})]
    assert len(set(prints)) == len(prints)  # (hash(-1) == hash(-2), hash(True) == hash(1.0))

    class Score(float):  # (numpy.float64 is one)
        pass

    class Count(int):
        pass

    # A subclass of a number is the number JSON brings back: the same print.
    for value in (Score(0.5), Count(3)):
        op = OutboundMessage(peer="1", idempotency_key="t", text="hi", metadata={"n": value})
        decoded = decode_outbound(json.loads(dumps(encode_outbound(op))))
        assert operation_print(decoded) == operation_print(op)

    class Odd(enum.Enum):
        SET = {1}

    odd = OutboundMessage(peer="1", idempotency_key="t", text="hi", metadata=Odd.SET)  # type: ignore[arg-type]
    assert json_problems(odd) == []  # (let through: an enum in a typed field)
    assert operation_print(odd) == ""  # no print, and no error


def test_operations_that_differ_in_anything_but_their_key_have_other_prints() -> None:
    text = OutboundMessage(peer="1", idempotency_key="t", text="hi")
    meta = OutboundMessage(peer="1", idempotency_key="t", text="hi", metadata={"a": 1, "b": 2})
    assert operation_print(meta) == operation_print(attrs.evolve(meta, metadata={"b": 2, "a": 1}))
    assert operation_print(text) == operation_print(attrs.evolve(text, idempotency_key="other"))
    variants: list[Operation] = [
        text,
        attrs.evolve(text, text="ho"),
        attrs.evolve(text, peer="2"),
        attrs.evolve(text, reply_to="1:1"),
        meta,
        attrs.evolve(meta, metadata={"a": 1, "b": 3}),
        EditMessage(peer="1", message_id="1:2", text="hi", idempotency_key="t"),
        EditMessage(peer="1", message_id="1:3", text="hi", idempotency_key="t"),
        *OPERATIONS[1:3],
        attrs.evolve(OPERATIONS[1], media=Media(kind=MediaKind.IMAGE, content=b"other")),
    ]
    prints = [operation_print(op) for op in variants]
    assert len(set(prints)) == len(prints)


def test_a_message_row_written_before_operations_still_reads() -> None:
    old = {
        "peer": "1",
        "idempotency_key": "k",
        "text": None,
        "media": {"kind": "image", "url": "https://x/y.png", "caption": None, "filename": None},
        "template": None,
        "reply_to": None,
        "metadata": {},
    }
    message = decode_outbound(old)
    assert isinstance(message, OutboundMessage)
    assert message.media == Media(kind=MediaKind.IMAGE, url="https://x/y.png")


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ({"op": "pin", "peer": "1"}, "op 'pin' is not one of"),
        ({"op": "edit", "peer": "1", "message_id": "m"}, "text"),
        (
            {"peer": "1", "idempotency_key": "k", "media": {"kind": "image", "content": "%%"}},
            r"\$\.media\.content",
        ),
    ],
)
def test_bad_rows_are_refused_with_what_is_wrong(row: dict[str, object], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        decode_outbound(row)


def _nested(levels: int) -> object:
    value: object = 0
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("op", "problems"),
    [
        (OutboundMessage(peer="p", idempotency_key="k", text="t", metadata={"a": [1, 2.5]}), []),
        (
            OutboundMessage(
                peer="p",
                idempotency_key="k",
                text="t",
                metadata={"a": float("nan"), "b": {"c": [float("-inf")]}, 3: "x", "d": b"raw"},
            ),
            [
                ("$.metadata.a", "nan is not a JSON number (only finite numbers are)"),
                ("$.metadata.b.c[0]", "-inf is not a JSON number (only finite numbers are)"),
                ("$.metadata", "a key must be a string, not int"),
                ("$.metadata.d", "a bytes is not a JSON value"),
            ],
        ),
        (
            OutboundMessage(
                peer="p",
                idempotency_key="k",
                template=Template(name="t", language="en", components=({"x": float("inf")},)),
            ),
            [("$.template.components[0].x", "inf is not a JSON number (only finite numbers are)")],
        ),
        (
            EditMessage(peer="p", message_id="m", text="t", metadata={"deep": _nested(40)}),
            [("$.metadata.deep" + "[0]" * 31, "nested deeper than 32 levels")],
        ),
        (
            # An int key went out, then spoilt every checkpoint of its channel; an
            # int text crashed the channel's actor.
            OutboundMessage(peer=5, idempotency_key=12, text=True),  # type: ignore[arg-type]
            [
                ("$.peer", "must be a string, not int"),
                ("$.idempotency_key", "must be a string, not int"),
                ("$.text", "must be a string, not bool"),
            ],
        ),
        (
            OutboundMessage(
                peer="p", idempotency_key="k", media=Media(kind=MediaKind.IMAGE, url=7)
            ),  # type: ignore[arg-type]
            [("$.media.url", "must be a string, not int")],
        ),
        (
            # A None peer crashed the channel's actor (six of them failed it for good).
            OutboundMessage(peer=None, idempotency_key=None, text="t"),  # type: ignore[arg-type]
            [
                ("$.peer", "must be a string, not None"),
                ("$.idempotency_key", "must be a string, not None"),
            ],
        ),
        (
            EditMessage(peer="p", message_id="m", text=None),  # type: ignore[arg-type]
            [("$.text", "must be a string, not None")],
        ),
        (
            # Every message of an empty key was answered as the first one.
            OutboundMessage(peer="", idempotency_key="", text="t"),
            [("$.peer", "must not be empty"), ("$.idempotency_key", "must not be empty")],
        ),
        (
            # httpx cannot encode it: sent, it failed five times as transient and
            # opened the channel's breaker.
            OutboundMessage(
                peer="p", idempotency_key="k", text="a\udc80b", metadata={"\ud800": ["é\udfff"]}
            ),
            [
                ("$.text", "not valid Unicode text: a lone surrogate '\\udc80' at 1"),
                ("$.metadata", "not valid Unicode text: a lone surrogate '\\ud800' at 0"),
                ("$.metadata.\ud800[0]", "not valid Unicode text: a lone surrogate '\\udfff' at 1"),
            ],
        ),
        (
            # PostgreSQL stores no NUL: a key with one stopped every checkpoint of
            # its channel (its answer was among the newest 256), dead letters too.
            OutboundMessage(
                peer="p\x00",
                idempotency_key="k\x00",
                text="é\x00",
                metadata={"a": ["x\x00"], "b\x00": 1},
            ),
            [
                ("$.peer", NUL),
                ("$.idempotency_key", NUL),
                ("$.text", NUL),
                ("$.metadata.a[0]", NUL),
                ("$.metadata", "a key " + NUL),
            ],
        ),
        (
            "hello",
            [
                (
                    "$",
                    "a str is not an operation (one of DeleteMessage, EditMessage, MarkRead, "
                    "OutboundMessage, React, SendTyping)",
                )
            ],
        ),
    ],
    ids=[
        "fine",
        "metadata",
        "template",
        "too-deep",
        "wrong-types",
        "nested-type",
        "none",
        "none-text",
        "empty",
        "surrogates",
        "nul",
        "no-op",
    ],
)
def test_json_problems_name_every_value_json_cannot_carry(
    op: Operation, problems: list[tuple[str, str]]
) -> None:
    assert json_problems(op) == problems


def test_a_subclass_of_str_is_checked_as_a_str_is() -> None:
    class Text(str):
        pass

    op = OutboundMessage(
        peer=Text("  "), idempotency_key="k", text=Text("a\udc80"), metadata={"x": Text("\ud800")}
    )
    assert json_problems(op) == [
        ("$.text", "not valid Unicode text: a lone surrogate '\\udc80' at 1"),
        ("$.metadata.x", "not valid Unicode text: a lone surrogate '\\ud800' at 0"),
        ("$.peer", "must not be empty"),
    ]


@pytest.mark.parametrize(
    ("message", "path"),
    [
        ({"peer": None, "idempotency_key": "k", "text": "t"}, "$.message.peer"),
        ({"peer": ["a", "b"], "idempotency_key": "k", "text": "t"}, "$.message.peer"),
        ({"peer": "p", "idempotency_key": True, "text": "t"}, "$.message.idempotency_key"),
        ({"peer": "p", "idempotency_key": "k", "text": 5.5}, "$.message.text"),
    ],
)
def test_a_stored_message_with_a_mistyped_string_is_refused_naming_it(
    message: dict[str, object], path: str
) -> None:
    # cattrs' str hook made them strings: sent to "None" or "['a', 'b']", then forgotten.
    row = {"channel_id": "a", "message": message, "reason": "r", "accepted_at": 1.0}
    with pytest.raises(ValueError, match=f"expected str.* @ {path.replace('$', '[$]')}"):
        decode_kept(row)


def test_a_stored_number_where_a_string_is_declared_reads_as_its_digits() -> None:
    # Releases before types were checked where operations enter kept a Telegram
    # chat id or a reply_to as a number: those rows still read (a letter is not lost).
    row = {
        "channel_id": "a",
        "message": {"peer": 12345, "idempotency_key": "k", "text": "t", "reply_to": 42},
        "reason": "r",
        "accepted_at": 1.0,
    }
    message = decode_kept(row).message
    assert (message.peer, message.reply_to) == ("12345", "42")
