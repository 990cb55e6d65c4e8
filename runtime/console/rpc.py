"""JSON-RPC 2.0, sans-IO: text in, calls out; answers in, text out.

Design:
- Exactly the JSON-RPC 2.0 specification (https://www.jsonrpc.org/specification):
  a request is an object with ``"jsonrpc": "2.0"``, a string ``method``,
  optional ``params`` (an array or an object) and an ``id`` (a string, a
  number or null); without ``id`` it is a notification, which gets no answer,
  not even an error. A batch is a non-empty array of them; its answers come
  back as one array (in any order; here, in the order of the calls), and a
  batch of notifications gets no answer at all. Invalid JSON is one
  ``-32700`` answer with a null id; an empty array or a member that is not a
  request is a ``-32600`` answer with a null id (for a member, in the batch's
  array). Method names starting with ``rpc.`` are reserved: ``-32601``.
- :func:`parse` only reads; it never runs anything. The I/O shell (the admin
  server) dispatches each :class:`Call`, turns its outcome into a
  :class:`Response` with :func:`success` or :func:`failure`, and hands the
  responses to :func:`encode`. The same module reads answers on the client
  side (:func:`parse_response`), so ``switchboard ctl`` speaks exactly what
  the server does.
- The wire shapes are attrs classes, unstructured by a converter of this
  module's own (:data:`WIRE`); parameters are structured into each method's
  attrs class by :func:`structure_params`, with every problem and its path
  (``expected int @ $.limit``), as the config loader does.
- JSON that Python would read but JSON does not allow (``NaN``,
  ``Infinity``) is a parse error.
"""

from __future__ import annotations

import enum
import json
import math
import re
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Final, TypeAlias, TypeVar

import attrs
import cattrs
from cattrs.cols import list_structure_factory

from providers.bounded_json import refuse_repeated_keys

__all__ = [
    "JSONRPC",
    "WIRE",
    "Call",
    "ErrorCode",
    "ErrorObject",
    "Incoming",
    "InvalidParams",
    "Response",
    "encode",
    "failure",
    "notification",
    "parse",
    "parse_response",
    "request",
    "structure_params",
    "success",
]

JSONRPC: Final = "2.0"

Id: TypeAlias = str | int | float | None
"""A request id: a string, a number, or null."""


class ErrorCode(enum.IntEnum):
    """The error codes the console answers with.

    The first five are the specification's; ours are in its range for
    implementation-defined server errors, -32000 to -32099.
    """

    PARSE_ERROR = -32700
    """The text is not JSON."""
    INVALID_REQUEST = -32600
    """The JSON is not a request object (nor a non-empty batch of them)."""
    METHOD_NOT_FOUND = -32601
    """No such method (``system.describe`` lists them)."""
    INVALID_PARAMS = -32602
    """Parameters of the wrong shape or type; ``data.problems`` lists each with its path."""
    INTERNAL_ERROR = -32603
    """The console failed to answer; the node's log has the details."""

    NODE_ERROR = -32000
    """The node refused or failed the call; ``data.error`` names the node's error class."""
    UNAUTHENTICATED = -32001
    """No valid token: missing, unknown or expired (the connection is refused too)."""
    FORBIDDEN = -32002
    """The token's scope does not allow the method; ``data.needs`` says which does."""
    TENANT_FORBIDDEN = -32003
    """The call touches a tenant the token may not see."""
    CONFIRMATION_REQUIRED = -32004
    """A call on many channels: call it with ``dry_run`` first, then echo ``data.count``
    back as ``confirm``; also when the echoed count no longer matches."""
    RATE_LIMITED = -32005
    """Too many calls on this connection (``data.retry_after`` is in seconds), or too
    many subscriptions open on it."""
    NOT_FOUND = -32006
    """No such channel (or dead letter) on this node, or none the token may see."""
    UNAVAILABLE = -32007
    """The node cannot do it now (draining, the cluster's Redis unreachable, not in a
    cluster); retry later or elsewhere."""


MESSAGES: Final[Mapping[ErrorCode, str]] = {
    ErrorCode.PARSE_ERROR: "Parse error",
    ErrorCode.INVALID_REQUEST: "Invalid Request",
    ErrorCode.METHOD_NOT_FOUND: "Method not found",
    ErrorCode.INVALID_PARAMS: "Invalid params",
    ErrorCode.INTERNAL_ERROR: "Internal error",
    ErrorCode.NODE_ERROR: "Node error",
    ErrorCode.UNAUTHENTICATED: "Unauthenticated",
    ErrorCode.FORBIDDEN: "Forbidden",
    ErrorCode.TENANT_FORBIDDEN: "Tenant forbidden",
    ErrorCode.CONFIRMATION_REQUIRED: "Confirmation required",
    ErrorCode.RATE_LIMITED: "Rate limited",
    ErrorCode.NOT_FOUND: "Not found",
    ErrorCode.UNAVAILABLE: "Unavailable",
}
"""The short message that goes with each code (the specification's words for its own)."""


@attrs.frozen(kw_only=True)
class ErrorObject:
    """A JSON-RPC error object.

    Attributes:
        code: the code (:class:`ErrorCode`, or any integer from a peer).
        message: a short description.
        data: more about it (problems, the node's error class), or ``None``.
    """

    code: int
    message: str
    data: Any = None


@attrs.frozen(kw_only=True)
class Response:
    """An answer to one request: a ``result`` or an ``error``, never both.

    Attributes:
        id: the request's id (null when it could not be read).
        result: the result, when the call succeeded.
        error: the error, when it did not.
    """

    id: Id
    result: Any = None
    error: ErrorObject | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@attrs.frozen(kw_only=True)
class Call:
    """A request or a notification, read and checked.

    Attributes:
        method: the method's name.
        params: an object, an array, or ``None`` when absent.
        id: the request's id; meaningless for a notification.
        notification: no ``id`` member: answer nothing.
    """

    method: str
    params: dict[str, Any] | list[Any] | None = None
    id: Id = None
    notification: bool = False


@attrs.frozen(kw_only=True)
class Incoming:
    """What one text held.

    Attributes:
        items: in order, each a :class:`Call` to dispatch or the
            :class:`Response` already decided for a member that was no request.
        batch: the text was an array: the answers go back as one.
    """

    items: tuple[Call | Response, ...]
    batch: bool


WIRE: Final = cattrs.Converter(omit_if_default=False)
"""The converter for the JSON-RPC envelope (never the global one)."""


def _unstructure_response(response: Response) -> dict[str, Any]:
    out: dict[str, Any] = {"jsonrpc": JSONRPC}
    if response.error is None:
        out["result"] = response.result
    else:
        error: dict[str, Any] = {"code": response.error.code, "message": response.error.message}
        if response.error.data is not None:
            error["data"] = response.error.data
        out["error"] = error
    out["id"] = response.id
    return out


WIRE.register_unstructure_hook(Response, _unstructure_response)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _loads(text: str | bytes) -> Any:
    return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=refuse_repeated_keys)


def dumps(value: Any) -> str:
    """Compact JSON, valid UTF-8 text: a float that is not finite becomes null (JSON
    has no NaN), and a lone surrogate (a cut emoji a platform sent) is escaped."""
    try:
        text = json.dumps(
            value, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_default
        )
    except ValueError:  # NaN or infinity somewhere in it
        text = json.dumps(
            _finite(value),
            separators=(",", ":"),
            ensure_ascii=False,
            default=lambda item: _finite(_default(item)),
        )
    if _SURROGATE.search(text) is not None:  # UTF-8 cannot carry it: \ud83d instead
        return json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=True)
    return text


_SURROGATE: Final = re.compile("[\ud800-\udfff]")


def _finite(value: Any) -> Any:
    """``value`` with every float that is not finite replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def _default(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if attrs.has(type(value)):
        return attrs.asdict(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def failure(id: Id, code: int, message: str | None = None, data: Any = None) -> Response:
    """An error answer; ``message`` defaults to the code's own words."""
    if message is None:
        message = MESSAGES.get(ErrorCode(code), "Server error") if code in _CODES else "Error"
    return Response(id=id, error=ErrorObject(code=int(code), message=message, data=data))


_CODES: Final = frozenset(int(code) for code in ErrorCode)


def success(id: Id, result: Any) -> Response:
    """A result answer."""
    return Response(id=id, result=result)


def _valid_id(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, str | int)


def _read_call(raw: Any) -> Call | Response:
    if not isinstance(raw, dict):
        return failure(None, ErrorCode.INVALID_REQUEST, data="a request is a JSON object")
    has_id = "id" in raw
    id_ = raw.get("id")
    if has_id and not _valid_id(id_):
        problem = "id: expected a string, a number or null"
        return failure(None, ErrorCode.INVALID_REQUEST, data=problem)
    answer_id = id_ if has_id else None
    if raw.get("jsonrpc") != JSONRPC:
        return failure(answer_id, ErrorCode.INVALID_REQUEST, data='jsonrpc: expected "2.0"')
    method = raw.get("method")
    if not isinstance(method, str):
        return failure(answer_id, ErrorCode.INVALID_REQUEST, data="method: expected a string")
    params = raw.get("params")
    if "params" in raw and not isinstance(params, dict | list):
        return failure(
            answer_id, ErrorCode.INVALID_REQUEST, data="params: expected an array or an object"
        )
    extra = sorted(set(raw) - {"jsonrpc", "method", "params", "id"})
    if extra:
        return failure(
            answer_id, ErrorCode.INVALID_REQUEST, data=f"unknown member(s): {', '.join(extra)}"
        )
    return Call(method=method, params=params, id=id_, notification=not has_id)


def parse(text: str | bytes) -> Incoming:
    """Read one websocket message: a request, a notification, or a batch.

    Never raises: what cannot be read becomes the :class:`Response` the
    specification prescribes.
    """
    try:
        raw = _loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        return Incoming(
            items=(failure(None, ErrorCode.PARSE_ERROR, data=f"invalid JSON: {exc}"),),
            batch=False,
        )
    except RecursionError:
        nested = failure(None, ErrorCode.PARSE_ERROR, data="JSON nested too deeply")
        return Incoming(items=(nested,), batch=False)
    if isinstance(raw, list):
        if not raw:
            empty = failure(None, ErrorCode.INVALID_REQUEST, data="an empty batch")
            return Incoming(items=(empty,), batch=False)
        return Incoming(items=tuple(_read_call(item) for item in raw), batch=True)
    return Incoming(items=(_read_call(raw),), batch=False)


def encode(responses: Sequence[Response], *, batch: bool) -> str | None:
    """The text to send back, or ``None`` when there is nothing to answer.

    Args:
        responses: the answers, notifications' left out.
        batch: the request was a batch (the answers go in one array).
    """
    if not responses:
        return None
    if batch:
        return dumps([WIRE.unstructure(r, Response) for r in responses])
    (only,) = responses
    return dumps(WIRE.unstructure(only, Response))


def request(method: str, params: Mapping[str, Any] | Sequence[Any] | None, id: Id) -> str:
    """A request's text (``id=None`` still answers: use :func:`notification` for none)."""
    body: dict[str, Any] = {"jsonrpc": JSONRPC, "method": method}
    if params is not None:
        body["params"] = params if isinstance(params, Mapping) else list(params)
    body["id"] = id
    return dumps(body)


def notification(method: str, params: Mapping[str, Any] | Sequence[Any] | None = None) -> str:
    """A notification's text: a request without an id, never answered."""
    body: dict[str, Any] = {"jsonrpc": JSONRPC, "method": method}
    if params is not None:
        body["params"] = params if isinstance(params, Mapping) else list(params)
    return dumps(body)


def parse_response(text: str | bytes) -> Response | Call:
    """Read what a server sent: an answer, or a notification (events).

    Raises:
        ValueError: the text is neither (the peer does not speak JSON-RPC 2.0).
    """
    raw = _loads(text)
    if not isinstance(raw, dict) or raw.get("jsonrpc") != JSONRPC:
        raise ValueError("not a JSON-RPC 2.0 message")
    if "method" in raw:
        call = _read_call(raw)
        if isinstance(call, Response):
            raise ValueError(f"an invalid notification: {call.error}")
        return call
    if ("result" in raw) == ("error" in raw):
        raise ValueError("an answer has exactly one of result and error")
    if "error" in raw:
        error = raw["error"]
        if not isinstance(error, dict) or not isinstance(error.get("code"), int):
            raise ValueError("an error object has an integer code")
        return Response(
            id=raw.get("id"),
            error=ErrorObject(
                code=error["code"], message=str(error.get("message", "")), data=error.get("data")
            ),
        )
    return Response(id=raw.get("id"), result=raw["result"])


# --- parameters ---------------------------------------------------------------------------


class InvalidParams(ValueError):
    """Parameters that do not fit a method, each problem with its path."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


PARAMS: Final = cattrs.Converter(detailed_validation=True, forbid_extra_keys=True)
"""The converter for methods' parameters (strict: ``5`` is no string, ``true`` no number)."""


def _strict(kind: type, *accepted: type) -> Any:
    def hook(value: Any, _: type) -> Any:
        if isinstance(value, bool) and kind is not bool:
            raise TypeError(f"expected {_NAMES[kind]}, got a boolean")
        if not isinstance(value, accepted):
            raise TypeError(f"expected {_NAMES[kind]}, got {_json_type(value)}")
        checked: Any = value  # narrowed to object by the isinstance above
        if kind is float and not math.isfinite(checked):
            raise ValueError("expected a finite number")
        return kind(checked)

    return hook


_NAMES: Final = {str: "a string", int: "an integer", float: "a number", bool: "a boolean"}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


PARAMS.register_structure_hook(str, _strict(str, str))
PARAMS.register_structure_hook(int, _strict(int, int))
PARAMS.register_structure_hook(float, _strict(float, int, float))
PARAMS.register_structure_hook(bool, _strict(bool, bool))


def _strict_list(kind: Any, converter: cattrs.Converter) -> Any:
    """A list parameter from an array only: cattrs takes any iterable, so a
    string became its letters (``kinds="inbound"`` was refused as the kinds
    b, d, i, n, o, u)."""
    items = list_structure_factory(kind, converter)

    def hook(value: Any, type_: Any) -> Any:
        if not isinstance(value, list):
            raise TypeError(f"expected an array, got {_json_type(value)}")
        return items(value, type_)

    return hook


PARAMS.register_structure_hook_factory(lambda kind: typing.get_origin(kind) is list, _strict_list)

_P = TypeVar("_P")


def _describe(exc: BaseException, type_: type | None) -> str:
    if isinstance(exc, KeyError):
        return "required"
    if isinstance(exc, cattrs.ForbiddenExtraKeysError):
        return f"unknown parameter(s): {', '.join(sorted(exc.extra_fields))}"
    text = str(exc)
    if text.startswith("expected"):
        return text
    return f"invalid value ({text})"


def structure_params(params: dict[str, Any] | list[Any] | None, cls: type[_P]) -> _P:
    """A method's parameters as its attrs class ``cls``.

    An array is matched to the class's fields in order (the specification's
    "by-position"); an object by name; ``None`` is no parameters.

    Raises:
        InvalidParams: every problem, with its path (``expected an integer @ $.limit``).
    """
    fields = attrs.fields(cls)  # type: ignore[arg-type]
    if params is None:
        named: dict[str, Any] = {}
    elif isinstance(params, list):
        if len(params) > len(fields):
            raise InvalidParams(
                [f"at most {len(fields)} positional parameter(s), got {len(params)} @ $"]
            )
        named = {field.name: value for field, value in zip(fields, params, strict=False)}
    else:
        named = params
    try:
        return PARAMS.structure(named, cls)
    except cattrs.BaseValidationError as exc:
        problems = cattrs.transform_error(exc, path="$", format_exception=_describe)
        raise InvalidParams(problems) from None
    except (TypeError, ValueError) as exc:  # raised by the class's own validators
        raise InvalidParams([f"{exc} @ $"]) from None
