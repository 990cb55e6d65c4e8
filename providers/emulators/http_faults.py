"""Faults of the HTTP layer that every emulator shares: a status, a drip, a huge body.

Design: the platform emulators are protocol-faithful, so what a broken
platform does below its protocol (a load balancer answering 503, an
upgrade refused, a server that drips a byte a second, a body far over any
sane size) is injected here, in front of the platform's routes, as an ASGI
middleware. A fault is queued with ``POST /_emulator/fault`` and hits the
next ``count`` requests whose path contains ``path`` (and whose kind is
``scope``: plain HTTP, websocket upgrades or either); such a request never
reaches the platform, so a send it carried was not taken (the client's
retry with the same idempotency key is the only copy). The control API
(``/_emulator/...``) is never faulted.

Kinds (``count`` default 1, at most ``MAX_FAULT_COUNT``; ``path`` default
any; ``scope`` default ``"any"``)::

    {"kind": "http_status", "status": 503}   answer with that status (an
                                             upgrade is refused with it)
    {"kind": "drip", "interval": 1.0, "duration": 30.0}
                                             HTTP: 200, then a byte every
                                             interval for duration seconds;
                                             upgrade: no answer for duration,
                                             then 503
    {"kind": "huge_body", "size": 16777216}  HTTP: 200 and that many bytes;
                                             upgrade: accepted, then one
                                             message of that many bytes
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final, Literal

import attrs
import trio

__all__ = ["HTTP_FAULT_KINDS", "HttpFault", "HttpFaults", "fault_middleware"]

HTTP_FAULT_KINDS: Final = frozenset({"http_status", "drip", "huge_body"})
CONTROL_PREFIX: Final = "/_emulator/"
CHUNK: Final = 65_536  # bytes written at once by huge_body
MAX_SIZE: Final = 1 << 30  # bytes a huge body may ask for
MAX_DURATION: Final = 600.0  # seconds a drip may ask for
DEFAULT_SIZE: Final = 16 << 20  # bytes
FAULT_BODY: Final = b'{"ok": false, "error_code": 503, "description": "emulated fault"}'

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


@attrs.define(kw_only=True)
class HttpFault:
    """One queued fault and how many more requests it hits."""

    kind: Literal["http_status", "drip", "huge_body"]
    remaining: int
    path: str = ""
    scope: Literal["http", "websocket", "any"] = "any"
    status: int = 503
    interval: float = 1.0
    duration: float = 30.0
    size: int = DEFAULT_SIZE

    def matches(self, kind: str, path: str) -> bool:
        return (self.scope in ("any", kind)) and self.path in path


class HttpFaults:
    """The queue of HTTP-layer faults of one emulator.

    Attributes:
        queued: the faults still to hit something, oldest first.
        hits: requests each kind has hit so far.
    """

    def __init__(self, max_count: int) -> None:
        self.queued: list[HttpFault] = []
        self.hits: dict[str, int] = {}
        self._max_count = max_count

    def __repr__(self) -> str:
        return f"<HttpFaults queued={len(self.queued)} hits={self.hits}>"

    def add(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Queue the fault ``payload`` describes; return what was queued.

        Raises:
            ValueError: a bad argument (the control API answers 400).
        """
        kind = payload.get("kind")
        if kind not in HTTP_FAULT_KINDS:
            raise ValueError(f"not an HTTP fault kind: {kind!r}")
        count = payload.get("count", 1)
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise ValueError(f"{kind} needs a positive integer 'count'")
        if count > self._max_count:
            raise ValueError(f"{kind}: 'count' is at most {self._max_count}")
        path = payload.get("path", "")
        scope = payload.get("scope", "any")
        if not isinstance(path, str) or scope not in ("http", "websocket", "any"):
            raise ValueError(f"{kind}: 'path' is a string, 'scope' http, websocket or any")
        fault = HttpFault(kind=kind, remaining=count, path=path, scope=scope)
        if kind == "http_status":
            fault.status = _number(payload, "status", 503, int, 400, 599)
        elif kind == "drip":
            fault.interval = _number(payload, "interval", 1.0, float, 0.001, 60.0)
            fault.duration = _number(payload, "duration", 30.0, float, 0.0, MAX_DURATION)
        else:
            fault.size = _number(payload, "size", DEFAULT_SIZE, int, 1, MAX_SIZE)
        self.queued.append(fault)
        return attrs.asdict(fault)

    def take(self, kind: str, path: str) -> HttpFault | None:
        """The fault the request ``kind``, ``path`` meets, counted; None: serve it normally."""
        if not self.queued or path.startswith(CONTROL_PREFIX):
            return None
        for fault in self.queued:
            if fault.matches(kind, path):
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self.queued.remove(fault)
                self.hits[fault.kind] = self.hits.get(fault.kind, 0) + 1
                return fault
        return None


def _number(
    payload: dict[str, Any], name: str, default: Any, kind: type, low: float, high: float
) -> Any:
    value = payload.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{payload.get('kind')} needs a number {name!r}")
    if kind is int and not isinstance(value, int):
        raise ValueError(f"{payload.get('kind')} needs an integer {name!r}")
    if not low <= value <= high:
        raise ValueError(f"{payload.get('kind')}: {name!r} must be within {low}..{high}")
    return kind(value)


def fault_middleware(app: App, faults: HttpFaults) -> App:
    """``app`` with ``faults`` served in front of it."""

    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        fault = faults.take(kind, scope.get("path", "")) if kind in ("http", "websocket") else None
        if fault is None:
            await app(scope, receive, send)
        elif kind == "http":
            await _serve_http(fault, send)
        else:
            await _serve_upgrade(fault, receive, send)

    return serve


async def _serve_http(fault: HttpFault, send: Send) -> None:
    if fault.kind == "http_status":
        await _respond(send, fault.status, FAULT_BODY)
        return
    length = fault.size if fault.kind == "huge_body" else None
    headers = [(b"content-type", b"application/json")]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    if fault.kind == "huge_body":
        left = fault.size
        while left > 0:
            n = min(CHUNK, left)
            left -= n
            await send({"type": "http.response.body", "body": b" " * n, "more_body": left > 0})
        return
    end = trio.current_time() + fault.duration
    while trio.current_time() < end:
        await send({"type": "http.response.body", "body": b" ", "more_body": True})
        await trio.sleep(fault.interval)
    await send({"type": "http.response.body", "body": b"{}", "more_body": False})


async def _respond(send: Send, status: int, body: bytes, *, upgrade: bool = False) -> None:
    prefix = "websocket.http.response" if upgrade else "http.response"
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": f"{prefix}.start", "status": status, "headers": headers})
    await send({"type": f"{prefix}.body", "body": body})


async def _serve_upgrade(fault: HttpFault, receive: Receive, send: Send) -> None:
    message = await receive()  # websocket.connect
    if message.get("type") != "websocket.connect":
        return
    if fault.kind == "huge_body":
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": '"' + "x" * max(0, fault.size - 2) + '"'})
        await send({"type": "websocket.close", "code": 1000})
        return
    if fault.kind == "drip":
        await trio.sleep(fault.duration)  # the handshake is never answered in time
    await _respond(
        send, fault.status if fault.kind == "http_status" else 503, FAULT_BODY, upgrade=True
    )
