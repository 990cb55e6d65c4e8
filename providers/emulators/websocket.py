"""An emulator of the generic JSON-over-websocket platform.

Design: it speaks the protocol documented in :mod:`providers.websocket.core`
at ``/ws`` and keeps its state in plain objects (connected clients, the
messages bots sent, a backlog of injected messages nobody was connected to
receive). Each connection has one writer task draining a bounded queue, so
acks, heartbeats, injected messages and fault-driven closes never interleave
mid-frame, and one heartbeat task. With a ``latency``
(:mod:`providers.emulators.latency`), the upgrade is accepted that much later
and each frame that answers a client's frame (``ack``, ``receipt``,
``error``) is held in the connection's :class:`~.latency.HeldAnswers`, drained
by one more task per connection, started at its first held answer.

The token comes from ``Authorization: Bearer <token>`` or ``?token=``. A
missing or unknown token is accepted then closed with 4001, a banned one with
4003 (``ban_token`` also closes live connections of that token at their next
frame or heartbeat), and during a ``rate_limit`` fault new connections get an
``error`` frame ``rate_limited`` and close 4029, sends get ``rate_limited``
errors with ``retry_after``.

Platform faults (``POST /_emulator/fault``):

- ``{"kind": "drop", "token"?}``: close every connection (of that token) with 1001;
- ``{"kind": "close", "code", "reason"?, "token"?}``: close them with ``code``;
- ``{"kind": "silence", "duration"?}``: send nothing at all (no ready, acks,
  messages or heartbeats) for ``duration`` seconds, or until ``resume``;
- ``{"kind": "resume"}``: end a silence;
- ``{"kind": "fail_sends", "code", "count"?, "message"?, "retry_after"?}``:
  answer the next ``count`` (default 1) sends with this error code;
- ``{"kind": "unknown_peer", "peer"}``: sends to ``peer`` fail ``bad_recipient``.

Operations (``edit``, ``delete``, ``typing``, ``read``, ``react``) are
acknowledged and kept in ``operations``; an edit or delete of a message this
token did not send (or already deleted), and a read or reaction of an unknown
message, are answered ``not_found``. Uploads (``media.data``) are decoded and
counted (``uploaded_bytes`` in ``sent``), larger than ``max_upload_bytes`` is
``too_large``.

Limitation: websocket pongs are answered by hypercorn's protocol layer, below
ASGI, so no fault can suppress them; a dead transport is emulated by a TCP
proxy that stops forwarding (see the provider tests).
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import math
import time
from collections import deque
from collections.abc import Collection
from typing import Any, Final

import attrs
import trio
from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket

from ..websocket.core import HEARTBEAT_ACK
from .base import MAX_FAULT_COUNT, Emulator, FaultError
from .latency import HeldAnswers

__all__ = ["WebSocketEmulator"]

QUEUE_SIZE: Final = 10_000  # frames queued per connection before they are dropped
MAX_TEXT_LENGTH: Final = 16_384  # characters
DROP_CODE: Final = 1001  # "going away"
MAX_UPLOAD_BYTES: Final = 8 * 1024 * 1024  # bytes of an upload, decoded
OPERATIONS: Final = frozenset({"send", "edit", "delete", "typing", "read", "react"})


@attrs.frozen
class _Close:
    code: int
    reason: str


class _Client:
    """One connected websocket and its outbound queue."""

    def __init__(self, token: str, number: int) -> None:
        self.token = token
        self.number = number
        self.last_frame = trio.current_time()
        self.outbox, self.queue = trio.open_memory_channel[str | _Close](QUEUE_SIZE)
        self.dropped = 0
        self.why = "the client closed it"  # how the connection ended (the ownership judge's gaps)
        self.nursery: trio.Nursery | None = None  # the connection's tasks
        self.held: HeldAnswers[str] | None = None  # answers waiting out a latency

    def __repr__(self) -> str:
        return f"<_Client #{self.number} token=...{self.token[-4:]} dropped={self.dropped}>"

    def push(self, item: str | _Close) -> None:
        try:
            self.outbox.send_nowait(item)
        except (trio.WouldBlock, trio.ClosedResourceError):
            self.dropped += 1


def _dumps(frame: dict[str, Any]) -> str:
    return json.dumps(frame, separators=(",", ":"))


class WebSocketEmulator(Emulator):
    """The generic websocket platform, in-process.

    Args:
        tokens: the accepted tokens; None accepts any non-empty token.
        heartbeat_interval: seconds between ``heartbeat`` frames; None sends none.
        client_timeout: seconds a client may stay silent (no frame, not even a
            ``heartbeat_ack``) before it is taken for dead and closed (4009),
            as platforms drop the sessions of clients that stop heartbeating;
            None never drops one.
        receipts: follow every ack with a ``delivered`` receipt.
        max_text_length: longer texts are answered ``too_long``.
        max_upload_bytes: larger uploads are answered ``too_large``.
    """

    name = "websocket"

    def __init__(
        self,
        *,
        tokens: Collection[str] | None = None,
        heartbeat_interval: float | None = 15.0,
        client_timeout: float | None = None,
        receipts: bool = True,
        max_text_length: int = MAX_TEXT_LENGTH,
        max_upload_bytes: int = MAX_UPLOAD_BYTES,
    ) -> None:
        super().__init__()
        self.tokens = None if tokens is None else frozenset(tokens)
        self.heartbeat_interval = heartbeat_interval
        self.client_timeout = client_timeout
        self.receipts = receipts
        self.max_text_length = max_text_length
        self.max_upload_bytes = max_upload_bytes
        self._messages: dict[str, dict[str, Any]] = {}  # sent and not deleted, by message id
        self._inbound: set[str] = set()  # ids of injected user messages
        self.silent_until = 0.0
        self.unknown_peers: set[str] = set()
        self.failing_sends: list[dict[str, Any]] = []
        self._clients: set[_Client] = set()
        self._backlog: deque[tuple[str | None, dict[str, Any]]] = deque()
        self._accepted: dict[tuple[str, str], str] = {}  # (token, idempotency key) -> message id
        self._numbers = itertools.count(1)
        self._inbound_ids = itertools.count(1)
        self._outbound_ids = itertools.count(1)

    def __repr__(self) -> str:
        silent = " silent" if self.silent else ""
        return (
            f"<WebSocketEmulator clients={len(self._clients)} sent={len(self.sent)} "
            f"backlog={len(self._backlog)}{silent}>"
        )

    @property
    def silent(self) -> bool:
        """Whether a ``silence`` fault is in force."""
        return trio.current_time() < self.silent_until

    @property
    def clients(self) -> int:
        """Connections currently open."""
        return len(self._clients)

    # --- Emulator hooks -----------------------------------------------------------------

    def platform_routes(self) -> list[BaseRoute]:
        """The websocket endpoint at ``/ws``."""
        return [WebSocketRoute("/ws", self._serve)]

    async def inject(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Push ``payload`` to the connected clients (of ``payload["token"]`` if given).

        A payload without ``"type"`` is a user message: it is wrapped into the
        ``message`` envelope (``id``, ``peer``, ``sender`` and ``timestamp``
        get defaults). Any other JSON object is pushed as it is. With no
        matching client connected, the frame waits for the next one.
        """
        frame = dict(payload)
        token = frame.pop("token", None)
        if "type" not in frame:
            peer = str(frame.get("peer", "user-1"))
            frame = {
                "type": "message",
                "id": str(frame.get("id", f"in-{next(self._inbound_ids)}")),
                "peer": peer,
                "sender": str(frame.get("sender", peer)),
                "timestamp": frame.get("timestamp", time.time()),
                **{k: v for k, v in frame.items() if k not in ("id", "peer", "sender")},
            }
        if frame.get("type") == "message" and isinstance(frame.get("id"), str):
            self._inbound.add(frame["id"])
        targets = [c for c in self._clients if token is None or c.token == token]
        if not targets:
            self._backlog.append((token, frame))
            if self.max_kept is not None and len(self._backlog) > self.max_kept:
                self._backlog.popleft()  # the oldest undelivered frame goes
            return {"queued": True, "frame": frame}
        text = _dumps(frame)
        for client in targets:
            self._push(client, text)
        return {"delivered_to": len(targets), "frame": frame}

    async def platform_fault(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Apply one of the faults listed in the module docstring.

        Raises:
            FaultError: unknown kind or bad arguments.
        """
        kind = payload.get("kind")
        token = payload.get("token")
        if kind in ("drop", "close"):
            code = DROP_CODE if kind == "drop" else payload.get("code")
            if not isinstance(code, int) or not 1000 <= code <= 4999:
                raise FaultError("close needs an integer 'code' between 1000 and 4999")
            reason = str(payload.get("reason", "dropped by the emulator"))
            closed = [c for c in self._clients if token is None or c.token == token]
            for client in closed:
                client.push(_Close(code, reason))
            return {"closed": len(closed), "code": code}
        if kind == "silence":
            duration = payload.get("duration")
            if duration is not None and (not isinstance(duration, int | float) or duration <= 0):
                raise FaultError("silence takes an optional positive 'duration' (seconds)")
            length = math.inf if duration is None else float(duration)
            self.silent_until = trio.current_time() + length
            return {"silent_for": None if duration is None else length}
        if kind == "resume":
            self.silent_until = 0.0
            return {"silent_for": 0}
        if kind == "fail_sends":
            code = payload.get("code")
            count = payload.get("count", 1)
            if (
                not isinstance(code, str)
                or not isinstance(count, int)
                or not 1 <= count <= MAX_FAULT_COUNT
            ):
                raise FaultError(
                    "fail_sends needs a string 'code' and a positive int 'count' "
                    f"(at most {MAX_FAULT_COUNT})"
                )
            spec: dict[str, Any] = {
                k: payload[k] for k in ("message", "retry_after") if k in payload
            }
            self.failing_sends.extend([{"code": code, **spec}] * count)
            return {"failing_sends": len(self.failing_sends)}
        if kind == "unknown_peer":
            peer = payload.get("peer")
            if not isinstance(peer, str):
                raise FaultError("unknown_peer needs a string 'peer'")
            self.unknown_peers.add(peer)
            return {"unknown_peer": peer}
        return await super().platform_fault(payload)

    # --- the websocket endpoint -----------------------------------------------------------

    async def _serve(self, websocket: WebSocket) -> None:
        token = _token_of(websocket)
        await websocket.accept()
        if not token or (self.tokens is not None and token not in self.tokens):
            self.stats["refused_unauthorized"] += 1
            await websocket.send_text(
                _dumps({"type": "error", "code": "unauthorized", "message": "unknown token"})
            )
            await websocket.close(4001, "unauthorized")
            return
        if self.is_banned(token):
            self.stats["refused_banned"] += 1
            await websocket.close(4003, "banned")
            return
        wait = self.rate_limit_remaining()
        if wait > 0:
            self.stats["refused_rate_limited"] += 1
            frame = {"type": "error", "code": "rate_limited", "retry_after": wait}
            await websocket.send_text(_dumps(frame))
            await websocket.close(4029, f"{wait:.3f}")
            return
        client = _Client(token, next(self._numbers))
        self._clients.add(client)
        self.stats["connections"] += 1
        holder = self.holders.opened(token)
        try:
            async with trio.open_nursery() as nursery:
                client.nursery = nursery
                nursery.start_soon(self._write, websocket, client, nursery.cancel_scope)
                if self.heartbeat_interval is not None:
                    nursery.start_soon(self._heartbeat, client, self.heartbeat_interval)
                self._push(client, _dumps({"type": "ready", "session": f"s-{client.number}"}))
                self._flush_backlog(client)
                await self._receive(websocket, client)
                nursery.cancel_scope.cancel()
        finally:
            self._clients.discard(client)
            self.holders.closed(token, holder, client.why)

    async def _receive(self, websocket: WebSocket, client: _Client) -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("text")
            if data is None:
                data = (message.get("bytes") or b"").decode("utf-8", "replace")
            client.last_frame = trio.current_time()
            if data == HEARTBEAT_ACK:
                self.stats["heartbeat_acks"] += 1
                continue
            self._on_frame(client, data)

    async def _write(self, websocket: WebSocket, client: _Client, scope: trio.CancelScope) -> None:
        async for item in client.queue:
            try:
                if isinstance(item, _Close):
                    client.why = f"the emulator closed it: {item.code} {item.reason}"
                    await websocket.close(item.code, item.reason)
                    scope.cancel()
                    return
                await websocket.send_text(item)
            except Exception:  # the client went away under us: this connection is over
                client.why = "a write to the client failed"
                scope.cancel()
                return

    async def _heartbeat(self, client: _Client, interval: float) -> None:
        while True:
            await trio.sleep(interval)
            if self.is_banned(client.token):
                client.push(_Close(4003, "banned"))
                return
            timeout = self.client_timeout
            if timeout is not None and trio.current_time() - client.last_frame > timeout:
                self.stats["clients_timed_out"] += 1
                client.push(_Close(4009, "no heartbeat_ack: the client is taken for dead"))
                return
            self.stats["heartbeats"] += 1
            self._push(client, '{"type":"heartbeat"}')

    def _push(self, client: _Client, text: str) -> None:
        if self.silent:
            self.stats["silenced_frames"] += 1
            return
        client.push(text)

    def _answer(self, client: _Client, text: str) -> None:
        """Push a frame that answers the client's frame: now, or ``latency`` later."""
        latency = self.latency
        if latency <= 0 and client.held is None:
            self._push(client, text)
            return
        if client.held is None:
            assert client.nursery is not None
            client.held = HeldAnswers(lambda answer: self._push(client, answer))
            client.nursery.start_soon(client.held.run)
        client.held.hold(text, trio.current_time() + latency)

    def _flush_backlog(self, client: _Client) -> None:
        kept: deque[tuple[str | None, dict[str, Any]]] = deque()
        for token, frame in self._backlog:
            if token is None or token == client.token:
                self._push(client, _dumps(frame))
            else:
                kept.append((token, frame))
        self._backlog = kept

    # --- the protocol -------------------------------------------------------------------------

    def _on_frame(self, client: _Client, data: str) -> None:
        self.stats["frames_received"] += 1
        if self.is_banned(client.token):
            client.push(_Close(4003, "banned"))
            return
        try:
            frame = json.loads(data)
        except ValueError:
            frame = None
        kind = frame.get("type") if isinstance(frame, dict) else None
        if not isinstance(frame, dict) or kind not in OPERATIONS:
            self._error(client, None, "bad_request", "expected a JSON 'send' (or operation) frame")
            return
        key, peer = frame.get("id"), frame.get("peer")
        if not isinstance(key, str) or not key or not isinstance(peer, str):
            self._error(client, None, "bad_request", f"a {kind} needs string 'id' and 'peer'")
            return
        wait = self.rate_limit_remaining()
        if wait > 0:
            self._error(client, key, "rate_limited", "slow down", retry_after=wait)
            return
        if self.failing_sends:
            spec = self.failing_sends.pop(0)
            self._error(
                client,
                key,
                spec["code"],
                spec.get("message", "injected failure"),
                retry_after=spec.get("retry_after"),
                peer=peer,
            )
            return
        if not peer or peer in self.unknown_peers:
            self._error(client, key, "bad_recipient", f"no chat {peer!r}", peer=peer)
            return
        if kind == "send":
            self._on_send(client, key, peer, frame)
        else:
            self._on_operation(client, kind, key, peer, frame)

    def _on_send(self, client: _Client, key: str, peer: str, frame: dict[str, Any]) -> None:
        text, media = frame.get("text"), frame.get("media")
        if (text is None) == (media is None):
            self._error(client, key, "bad_request", "a send carries exactly one of text, media")
            return
        if isinstance(text, str) and len(text) > self.max_text_length:
            self._error(client, key, "too_long", f"{len(text)} > {self.max_text_length} chars")
            return
        upload = 0
        if isinstance(media, dict) and isinstance(media.get("data"), str):
            try:
                upload = len(base64.b64decode(media["data"], validate=True))
            except binascii.Error:
                self._error(client, key, "bad_request", "media.data is not base64")
                return
            if upload > self.max_upload_bytes:
                self._error(client, key, "too_large", f"{upload} > {self.max_upload_bytes} bytes")
                return
            media = {k: v for k, v in media.items() if k != "data"}
        message_id = self._accepted.get((client.token, key))
        if message_id is not None:
            self.stats["duplicates"] += 1
        else:
            message_id = f"out-{next(self._outbound_ids)}"
            self._accepted[(client.token, key)] = message_id
            record = {
                "token": client.token,
                "id": key,
                "message_id": message_id,
                "peer": peer,
                "text": text,
                "media": media,
                "reply_to": frame.get("reply_to"),
            }
            if upload:
                record["uploaded_bytes"] = upload
            self.record_sent(record)
            self._messages[message_id] = record
        self._answer(client, _dumps({"type": "ack", "id": key, "message_id": message_id}))
        if self.receipts:
            receipt = {"type": "receipt", "id": message_id, "peer": peer, "status": "delivered"}
            self._answer(client, _dumps(receipt))

    def _on_operation(
        self, client: _Client, kind: str, key: str, peer: str, frame: dict[str, Any]
    ) -> None:
        """``edit``, ``delete``, ``typing``, ``read``, ``react``: recorded in
        :attr:`operations` and acknowledged; a message that is not there is
        ``not_found``."""
        message_id = frame.get("message_id")
        if kind != "typing":
            if not isinstance(message_id, str):
                self._error(client, key, "bad_request", f"a {kind} needs a string 'message_id'")
                return
            target = self._messages.get(message_id)
            known = target is not None or message_id in self._inbound
            own = target is not None and target["token"] == client.token
            if not known or (kind in ("edit", "delete") and not own):
                self._error(client, key, "not_found", f"no message {message_id!r}", peer=peer)
                return
        if kind == "edit":
            text = frame.get("text")
            if not isinstance(text, str) or not text:
                self._error(client, key, "bad_request", "an edit needs a non-empty 'text'")
                return
            if len(text) > self.max_text_length:
                self._error(client, key, "too_long", f"{len(text)} > {self.max_text_length}")
                return
            self._messages[str(message_id)]["text"] = text
        elif kind == "delete":
            del self._messages[str(message_id)]
        record = {"token": client.token, "id": key, "type": kind, "peer": peer}
        record.update(
            (k, frame[k]) for k in ("message_id", "text", "action", "emoji", "remove") if k in frame
        )
        self.record_operation(record)
        self.stats[f"operations_{kind}"] += 1
        answer = message_id if isinstance(message_id, str) else ""
        self._answer(client, _dumps({"type": "ack", "id": key, "message_id": answer}))

    def _error(
        self,
        client: _Client,
        key: str | None,
        code: str,
        message: str,
        *,
        retry_after: float | None = None,
        peer: str | None = None,
    ) -> None:
        self.stats[f"errors_{code}"] += 1
        frame: dict[str, Any] = {"type": "error", "code": code, "message": message}
        if key is not None:
            frame["id"] = key
        if retry_after is not None:
            frame["retry_after"] = retry_after
        if peer is not None:
            frame["peer"] = peer
        self._answer(client, _dumps(frame))


def _token_of(websocket: WebSocket) -> str:
    header = websocket.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return websocket.query_params.get("token", "")
