"""The message API's bodies: messages (JSON or multipart uploads) and operations.

Design:
- ``POST /v1/channels/{channel}/messages`` takes a JSON message, or a
  ``multipart/form-data`` body with a ``message`` part (the same JSON) and a
  ``file`` part: the file becomes ``media.content`` (its name and type too,
  unless the JSON gives them). In JSON, ``media.content`` is base64.
  ``media.path`` is refused over HTTP: a caller must not make the node read
  (and post to a chat) a file of the node's own machine.
- ``POST /v1/channels/{channel}/operations`` takes one operation tagged by
  ``op``: ``edit`` (``peer``, ``message_id``, ``text``), ``delete``
  (``peer``, ``message_id``), ``typing`` (``peer``, ``action``?,
  ``message_id``?), ``mark_read`` (``peer``, ``message_id``, ``typing``?),
  ``react`` (``peer``, ``message_id``, ``emoji``, ``remove``?);
  each may carry an ``idempotency_key``.
- Bodies are structured with the message API's converter, so every problem
  comes back with its path, as for messages.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from typing import Any, Final

import cattrs
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from providers import bounded_json
from providers.base import OutboundMessage
from providers.operations import (
    DeleteMessage,
    EditMessage,
    MarkRead,
    Operation,
    React,
    SendTyping,
    json_problems,
)

__all__ = [
    "MAX_UPLOAD_BODY",
    "OPERATIONS",
    "InvalidBody",
    "operation_answer",
    "read_multipart",
    "structure_operation",
]

MAX_UPLOAD_BODY: Final = 64 * 1024 * 1024  # bytes of a multipart message with a file
OPERATIONS: Final[Mapping[str, type[Any]]] = {
    "edit": EditMessage,
    "delete": DeleteMessage,
    "typing": SendTyping,
    "mark_read": MarkRead,
    "react": React,
}
_NAMES: Final = {kind: name for name, kind in OPERATIONS.items()}


class InvalidBody(ValueError):
    """A body with problems, each with its path."""

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        self.problems = list(problems)
        count = len(self.problems)
        super().__init__(
            f"{count} problem{'s' if count != 1 else ''}: "
            + "; ".join(f"{message} @ {path}" for path, message in self.problems)
        )


def bytes_hook(value: Any, _: type) -> bytes:
    """``media.content`` arrives as base64 text."""
    if not isinstance(value, str):
        raise TypeError(f"expected base64 text, got {type(value).__name__}")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"not base64 ({exc})") from exc


def no_local_files(message: OutboundMessage) -> list[tuple[str, str]]:
    """The problem of a message that names a file of the node's machine."""
    if message.media is not None and message.media.path is not None:
        return [
            (
                "$.media.path",
                "not accepted over HTTP: send the bytes (media.content, base64, or a "
                "multipart 'file' part) instead",
            )
        ]
    return []


def structure_operation(
    raw: Any, converter: cattrs.Converter, describe: Callable[[BaseException, type | None], str]
) -> Operation:
    """An operations body as an :data:`~providers.operations.Operation`.

    Raises:
        InvalidBody: with every problem and its path.
    """
    if not isinstance(raw, dict):
        raise InvalidBody([("$", f"expected a JSON object, got {type(raw).__name__}")])
    name = raw.get("op")
    if not isinstance(name, str) or name not in OPERATIONS:
        raise InvalidBody([("$.op", f"expected one of {', '.join(OPERATIONS)}, got {name!r}")])
    fields = {key: value for key, value in raw.items() if key != "op"}
    problems = [
        (f"$.{key}", "must not be empty")
        for key in ("peer", "message_id", "idempotency_key")
        if isinstance(fields.get(key), str) and not fields[key].strip()
    ]
    try:
        op: Operation = converter.structure(fields, OPERATIONS[name])
    except cattrs.BaseValidationError as exc:
        for line in cattrs.transform_error(exc, path="$", format_exception=describe):
            text, _, path = line.rpartition(" @ ")
            problems.append((path, text))
        raise InvalidBody(problems) from exc
    problems.extend(p for p in json_problems(op) if p not in problems)  # (empties: twice)
    if problems:
        raise InvalidBody(problems)
    return op


def operation_answer(op: Operation, result: Any) -> dict[str, Any]:
    """The JSON answer to a performed operation."""
    answer: dict[str, Any] = {"op": _NAMES.get(type(op), "send"), "peer": op.peer}
    if result is not None:
        answer["platform_message_id"] = result.platform_message_id
    elif (message_id := getattr(op, "message_id", None)) is not None:
        answer["message_id"] = message_id
    return answer


async def read_multipart(headers: Headers, body: bytes) -> Any:
    """The ``message`` JSON of a multipart body, with its ``file`` part as ``media.content``.

    Returns:
        The message as a JSON value, ready to be structured (``content`` base64).

    Raises:
        InvalidBody: not a multipart body with one JSON ``message`` and at most one file.
    """

    async def stream() -> AsyncGenerator[bytes, None]:
        yield body

    try:
        form = await MultiPartParser(headers, stream(), max_files=1, max_fields=10).parse()
    except MultiPartException as exc:
        raise InvalidBody([("$", f"not a readable multipart body: {exc.message}")]) from exc
    parts = form.getlist("message")
    if len(parts) > 1:  # ambiguous, as a JSON key given twice: a proxy may read another
        raise InvalidBody([("$.message", f"{len(parts)} 'message' parts; give one")])
    part = form.get("message")
    if not isinstance(part, str):
        raise InvalidBody([("$.message", "a multipart message needs a 'message' JSON field")])
    try:
        message = bounded_json.loads(part, unique_keys=True)
    except bounded_json.JSONDuplicateKey as exc:
        raise InvalidBody([("$.message", f"ambiguous: {exc}")]) from exc
    except ValueError as exc:
        raise InvalidBody([("$.message", f"not JSON: {exc}")]) from exc
    upload = form.get("file")
    if upload is None:
        return message
    if not isinstance(upload, UploadFile) or not isinstance(message, dict):
        raise InvalidBody([("$.file", "expected one file part and a JSON object 'message'")])
    data = await upload.read()
    media = message.get("media")
    if not isinstance(media, dict):
        raise InvalidBody([("$.message.media", "a file needs 'media' with its 'kind'")])
    if media.get("url") is not None or media.get("content") is not None:
        raise InvalidBody(
            [("$.message.media", "give the media as the file part or by url, not both")]
        )
    media = {**media, "content": base64.b64encode(data).decode("ascii")}
    media.setdefault("filename", upload.filename)
    if upload.content_type and upload.content_type != "application/octet-stream":
        media.setdefault("mime_type", upload.content_type)
    return {**message, "media": media}
