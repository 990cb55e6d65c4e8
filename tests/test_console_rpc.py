"""The JSON-RPC 2.0 codec against the examples of the specification, and the rest of its rules.

Each example of https://www.jsonrpc.org/specification section 7 is sent
through :func:`parse`, a tiny dispatcher with the specification's methods,
and :func:`encode`; the answer is compared with the example's (errors by
code and id: ours add a ``data`` member saying what was wrong).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import pytest

from runtime.console import rpc
from runtime.console.rpc import Call, ErrorCode, InvalidParams, Response


def _subtract(params: Any) -> Any:
    if isinstance(params, list):
        return params[0] - params[1]
    return params["minuend"] - params["subtrahend"]


METHODS = {
    "subtract": _subtract,
    "sum": lambda params: sum(params),
    "get_data": lambda params: ["hello", 5],
    "update": lambda params: None,
    "notify_hello": lambda params: None,
    "notify_sum": lambda params: None,
}


def dispatch(text: str) -> Any:
    incoming = rpc.parse(text)
    answers: list[Response] = []
    for item in incoming.items:
        if isinstance(item, Response):
            answers.append(item)
            continue
        method = METHODS.get(item.method)
        answer = (
            rpc.failure(item.id, ErrorCode.METHOD_NOT_FOUND)
            if method is None
            else rpc.success(item.id, method(item.params))
        )
        if not item.notification:
            answers.append(answer)
    out = rpc.encode(answers, batch=incoming.batch)
    return None if out is None else json.loads(out)


def without_data(answer: Any) -> Any:
    if isinstance(answer, list):
        return [without_data(item) for item in answer]
    if isinstance(answer, dict) and "error" in answer:
        return {**answer, "error": {k: v for k, v in answer["error"].items() if k != "data"}}
    return answer


SPEC_EXAMPLES = [
    (  # rpc call with positional parameters
        '{"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": 1}',
        {"jsonrpc": "2.0", "result": 19, "id": 1},
    ),
    (
        '{"jsonrpc": "2.0", "method": "subtract", "params": [23, 42], "id": 2}',
        {"jsonrpc": "2.0", "result": -19, "id": 2},
    ),
    (  # rpc call with named parameters
        '{"jsonrpc": "2.0", "method": "subtract", "params": {"subtrahend": 23, "minuend": 42},'
        ' "id": 3}',
        {"jsonrpc": "2.0", "result": 19, "id": 3},
    ),
    (
        '{"jsonrpc": "2.0", "method": "subtract", "params": {"minuend": 42, "subtrahend": 23},'
        ' "id": 4}',
        {"jsonrpc": "2.0", "result": 19, "id": 4},
    ),
    (  # a notification
        '{"jsonrpc": "2.0", "method": "update", "params": [1,2,3,4,5]}',
        None,
    ),
    ('{"jsonrpc": "2.0", "method": "foobar"}', None),
    (  # rpc call of non-existent method
        '{"jsonrpc": "2.0", "method": "foobar", "id": "1"}',
        {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": "1"},
    ),
    (  # rpc call with invalid JSON
        '{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]',
        {"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": None},
    ),
    (  # rpc call with invalid Request object
        '{"jsonrpc": "2.0", "method": 1, "params": "bar"}',
        {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None},
    ),
    (  # rpc call Batch, invalid JSON
        '[ {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},'
        ' {"jsonrpc": "2.0", "method" ]',
        {"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": None},
    ),
    (  # rpc call with an empty Array
        "[]",
        {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None},
    ),
    (  # rpc call with an invalid Batch (but not empty)
        "[1]",
        [{"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None}],
    ),
    (  # rpc call with invalid Batch
        "[1,2,3]",
        [{"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None}]
        * 3,
    ),
    (  # rpc call Batch
        """[
        {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},
        {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]},
        {"jsonrpc": "2.0", "method": "subtract", "params": [42,23], "id": "2"},
        {"foo": "boo"},
        {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},
        {"jsonrpc": "2.0", "method": "get_data", "id": "9"}
        ]""",
        [
            {"jsonrpc": "2.0", "result": 7, "id": "1"},
            {"jsonrpc": "2.0", "result": 19, "id": "2"},
            {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None},
            {
                "jsonrpc": "2.0",
                "error": {"code": -32601, "message": "Method not found"},
                "id": "5",
            },
            {"jsonrpc": "2.0", "result": ["hello", 5], "id": "9"},
        ],
    ),
    (  # rpc call Batch (all notifications)
        """[
        {"jsonrpc": "2.0", "method": "notify_sum", "params": [1,2,4]},
        {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]}
        ]""",
        None,
    ),
]


@pytest.mark.parametrize(("sent", "expected"), SPEC_EXAMPLES)
def test_the_specifications_examples(sent: str, expected: Any) -> None:
    assert without_data(dispatch(sent)) == expected


def test_errors_say_what_was_wrong_in_data() -> None:
    answer = dispatch('{"jsonrpc": "1.0", "method": "sum", "params": [1], "id": 7}')
    assert answer["error"]["code"] == -32600
    assert answer["id"] == 7
    assert "2.0" in answer["error"]["data"]
    parse_error = dispatch("{not json")
    assert "invalid JSON" in parse_error["error"]["data"]


@pytest.mark.parametrize(
    "sent",
    [
        '{"jsonrpc": "2.0", "method": "sum", "params": 3, "id": 1}',  # params a scalar
        '{"jsonrpc": "2.0", "method": "sum", "id": true}',  # id a boolean
        '{"jsonrpc": "2.0", "method": "sum", "id": {"a": 1}}',  # id an object
        '{"jsonrpc": "2.0", "method": "sum", "id": 1, "extra": 2}',  # an unknown member
        '"just a string"',
        "null",
    ],
)
def test_invalid_requests(sent: str) -> None:
    assert dispatch(sent)["error"]["code"] == ErrorCode.INVALID_REQUEST


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_json_numbers_are_a_parse_error(constant: str) -> None:
    sent = f'{{"jsonrpc": "2.0", "method": "sum", "params": [{constant}], "id": 1}}'
    assert dispatch(sent)["error"]["code"] == ErrorCode.PARSE_ERROR


def test_a_key_named_twice_is_a_parse_error_that_names_it() -> None:
    # {"method": "sum", ..., "method": "subtract"}: which one a proxy or an audit
    # log read is anybody's guess; the server runs neither.
    sent = '{"jsonrpc": "2.0", "method": "sum", "params": [1, 2], "id": 1, "method": "subtract"}'
    error = dispatch(sent)["error"]
    assert error["code"] == ErrorCode.PARSE_ERROR
    assert 'names the key "method" twice' in error["data"]
    nested = '{"jsonrpc": "2.0", "method": "sum", "params": {"a": 1, "a": 2}, "id": 1}'
    assert dispatch(nested)["error"]["code"] == ErrorCode.PARSE_ERROR


def test_a_null_id_is_a_request_not_a_notification() -> None:
    (call,) = rpc.parse('{"jsonrpc": "2.0", "method": "get_data", "id": null}').items
    assert isinstance(call, Call)
    assert call.notification is False
    assert dispatch('{"jsonrpc": "2.0", "method": "get_data", "id": null}') == {
        "jsonrpc": "2.0",
        "result": ["hello", 5],
        "id": None,
    }


def test_every_code_is_in_its_range_and_documented() -> None:
    for code in ErrorCode:
        assert -32768 <= code <= -32000
        if code > -32600:
            assert -32099 <= code <= -32000, code  # ours
        assert rpc.MESSAGES[code]
    source = Path(rpc.__file__).read_text(encoding="utf-8")
    for code in ErrorCode:
        block = source.split(f"{code.name} = {int(code)}", 1)[1].split("\n", 2)[1]
        assert '"""' in block, f"{code.name} has no docstring"


def test_client_side_reading() -> None:
    answer = rpc.parse_response('{"jsonrpc":"2.0","result":{"a":1},"id":3}')
    assert answer == Response(id=3, result={"a": 1})
    error = rpc.parse_response(
        '{"jsonrpc":"2.0","error":{"code":-32002,"message":"Forbidden","data":{"needs":"admin"}},'
        '"id":4}'
    )
    assert isinstance(error, Response)
    assert error.error is not None
    assert (error.error.code, error.error.data) == (-32002, {"needs": "admin"})
    event = rpc.parse_response(rpc.notification("event", {"kind": "state"}))
    assert event == Call(method="event", params={"kind": "state"}, notification=True)
    for bad in ['{"jsonrpc":"2.0","id":1}', '{"result":1,"id":1}', "[1]"]:
        with pytest.raises(ValueError):
            rpc.parse_response(bad)
    assert json.loads(rpc.request("sum", [1, 2], 5)) == {
        "jsonrpc": "2.0",
        "method": "sum",
        "params": [1, 2],
        "id": 5,
    }


@attrs.frozen(kw_only=True)
class _Params:
    channel: str
    limit: int = 100
    dry_run: bool = False
    older_than: float | None = None
    tags: list[str] | None = None


def test_params_by_name_and_by_position() -> None:
    assert rpc.structure_params({"channel": "a"}, _Params) == _Params(channel="a")
    assert rpc.structure_params(["a", 5, True], _Params) == _Params(
        channel="a", limit=5, dry_run=True
    )
    assert rpc.structure_params({"channel": "a", "older_than": 3}, _Params).older_than == 3.0


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({"channel": 5}, "expected a string, got a number @ $.channel"),
        ({"channel": "a", "limit": "10"}, "expected an integer, got a string @ $.limit"),
        ({"channel": "a", "limit": True}, "expected an integer, got a boolean @ $.limit"),
        ({"channel": "a", "dry_run": 1}, "expected a boolean, got a number @ $.dry_run"),
        ({}, "required @ $.channel"),
        ({"channel": "a", "bogus": 1}, "unknown parameter(s): bogus @ $"),
        (["a", 1, False, None, None, 9], "at most 5 positional parameter(s), got 6 @ $"),
        # A string is iterable: it was taken as the list of its letters.
        ({"channel": "a", "tags": "inbound"}, "expected an array, got a string @ $.tags"),
        ({"channel": "a", "tags": {"x": 1}}, "expected an array, got an object @ $.tags"),
        ({"channel": "a", "tags": ["x", 2]}, "expected a string, got a number @ $.tags[1]"),
    ],
)
def test_wrong_params_name_the_path(params: Any, problem: str) -> None:
    with pytest.raises(InvalidParams) as caught:
        rpc.structure_params(params, _Params)
    assert problem in caught.value.problems
