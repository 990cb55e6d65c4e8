"""The dead-letter API beside ``/v1/channels``: list, replay, discard.

Routes (behind the API token, like the message API):

- ``GET /v1/dead-letters?channel=&tenant=&error=&older_than=&limit=``: the
  letters of every channel, oldest first; ``older_than`` is unix seconds.
- ``POST /v1/channels/{id}/dead-letters/replay``: body ``{"ids": [1, 2]}``
  or ``{}`` for all; answers ``{"replayed": n}``. Each letter is sent again
  once, with its original idempotency key.
- ``POST /v1/channels/{id}/dead-letters/discard``: the same shape;
  ``{"discarded": n}``.

A bad query or body is a 400 naming the parameter (an unknown or repeated
parameter too: a misspelt ``channel=`` would list every channel's letters;
a NUL character too, which no channel id, tenant or error type has and
PostgreSQL cannot compare); a body past :data:`MAX_BODY` is a 413 on its
``Content-Length`` alone, read no further; a channel that does not run here
cannot replay (503); the store failing is a 503.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from providers import bounded_json
from providers.masking import shown

from ..errors import NodeError, UnknownChannel
from ..store.durable import DEFAULT_LETTER_LIMIT, NO_LETTER_ID, StoredDeadLetter
from ..view import NodeView

__all__ = ["DeadLetterApi"]

MAX_BODY = 64 * 1024  # bytes; a list of ids, nothing more


class _BadRequest(ValueError):
    pass


class DeadLetterApi:
    """The handlers, bound to a node and the ops server's error answers.

    Args:
        node: the node.
        error: builds an error response ``(status, error name, message)``.
        scrub: removes secrets from a message that leaves the process.
        read_body: reads a request's body up to a limit in bytes; ``None``
            past it (the ops app's bounded read).
    """

    def __init__(
        self,
        node: NodeView,
        error: Callable[[int, str, str], Response],
        scrub: Callable[[str], str],
        read_body: Callable[[Request, int], Awaitable[bytes | None]],
    ) -> None:
        self.node = node
        self._error = error
        self._scrub = scrub
        self._read_body = read_body

    async def list(self, request: Request) -> Response:
        query = request.query_params
        try:
            _check_names(query.multi_items())
            for name in ("channel", "tenant", "error"):
                _no_nul(query.get(name), f"query parameter {name!r}")
            older = _number(query.get("older_than"), "older_than")
            if older is not None and older < 0:
                raise _BadRequest(f"older_than must be unix seconds >= 0, got {older:g}")
            limit = _number(query.get("limit"), "limit")
            if limit is not None and (limit != int(limit) or limit < 0):
                raise _BadRequest("limit must be a whole number >= 0")
        except _BadRequest as exc:
            return self._error(400, "InvalidQuery", self._scrub(str(exc)))
        return await self._answer(
            lambda: self._listed(
                channel=query.get("channel"),
                tenant=query.get("tenant"),
                error_type=query.get("error"),
                older_than=older,
                limit=DEFAULT_LETTER_LIMIT if limit is None else int(limit),
            )
        )

    async def replay(self, request: Request) -> Response:
        return await self._act(request, "replayed", self.node.replay_dead_letters)

    async def discard(self, request: Request) -> Response:
        return await self._act(request, "discarded", self.node.discard_dead_letters)

    async def _listed(self, **where: Any) -> Response:
        letters = await self.node.dead_letters(**where)
        listed = [_letter(item, self._scrub) for item in letters]
        return JSONResponse({"dead_letters": listed})

    async def _act(
        self,
        request: Request,
        verb: str,
        act: Callable[[str, Sequence[int] | None], Awaitable[int]],
    ) -> Response:
        channel_id = request.path_params["channel_id"]
        body = await self._read_body(request, MAX_BODY)
        if body is None:
            return self._error(413, "PayloadTooLarge", f"the body exceeds {MAX_BODY} bytes")
        try:
            _no_nul(channel_id, "the channel id")
            ids = _ids(body)
        except _BadRequest as exc:
            return self._error(400, "InvalidBody", str(exc))

        async def run() -> Response:
            return JSONResponse({"channel": channel_id, verb: await act(channel_id, ids)})

        return await self._answer(run)

    async def _answer(self, call: Callable[[], Awaitable[Response]]) -> Response:
        try:
            return await call()
        except UnknownChannel as exc:
            return self._error(404, "UnknownChannel", self._scrub(str(exc)))
        except NodeError as exc:  # ChannelUnavailable, StoreError
            return self._error(503, type(exc).__name__, self._scrub(str(exc)))


_LIST_PARAMETERS = ("channel", "tenant", "error", "older_than", "limit")


def _check_names(items: Sequence[tuple[str, str]]) -> None:
    """Refuse a parameter the listing does not know, or one given twice:
    either would quietly list other letters than those asked for."""
    seen: set[str] = set()
    for name, _ in items:
        if name not in _LIST_PARAMETERS:
            raise _BadRequest(
                f"unknown query parameter {shown(name)}; the listing takes "
                + ", ".join(_LIST_PARAMETERS)
            )
        if name in seen:
            raise _BadRequest(f"query parameter {name!r} is given more than once; give it once")
        seen.add(name)


def _no_nul(text: str | None, what: str) -> None:
    """Refuse a NUL: no channel id, tenant or error type has one (PostgreSQL cannot store it)."""
    if text is not None and "\x00" in text:
        raise _BadRequest(f"{what} has a NUL character; no channel id, tenant or error has one")


def _number(text: str | None, name: str) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise _BadRequest(f"{name} must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise _BadRequest(f"{name} must be a finite number, got {text!r}")
    return value


def _ids(body: bytes) -> list[int] | None:
    """The ``ids`` of a body; ``None`` (all) for an empty body or no ``ids``."""
    if not body.strip():
        return None
    try:
        data = bounded_json.loads(body, unique_keys=True)
    except bounded_json.JSONDuplicateKey as exc:
        raise _BadRequest(f"the body is ambiguous: {exc}") from None
    except ValueError as exc:
        raise _BadRequest(f"the body is not JSON: {exc}") from None
    if not isinstance(data, dict) or set(data) - {"ids"}:
        raise _BadRequest('the body must be {"ids": [letter ids]} or {} for all')
    ids = data.get("ids")
    if ids is None:
        return None
    if not isinstance(ids, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) and 0 <= i < NO_LETTER_ID for i in ids
    ):
        raise _BadRequest("ids must be a list of whole numbers from 0 to 2**63 - 1 @ $.ids")
    return ids


def _letter(item: StoredDeadLetter, scrub: Callable[[str], str]) -> dict[str, Any]:
    letter = item.letter
    message = letter.message
    return {
        "channel": item.channel_id,
        "tenant": item.tenant,
        "id": letter.id,
        "peer": message.peer,
        "idempotency_key": message.idempotency_key,
        "error": letter.error_type,
        "reason": scrub(letter.reason),  # a platform's words may echo a credential
        "attempts": letter.attempts,
        "at": letter.at,
    }
