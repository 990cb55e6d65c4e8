"""A lean far end for the channels and storm benchmarks: the websocket platform on picows.

``python -m bench.far_end [--port P] [--control-port C] [--heartbeat-interval S]
[--first-message-id N] [--rtt MS] [--tls-cert PEM]`` serves the websocket emulator's protocol
(:mod:`providers.emulators.websocket`, frames in :mod:`providers.websocket.core`)
at ``ws://127.0.0.1:P/ws`` and prints one line, ``lean websocket far end listening
on ws://127.0.0.1:P/ws (control API: http://127.0.0.1:C/_emulator/)``, then runs
until SIGTERM or SIGINT. With ``--tls-cert`` (a PEM file holding the
certificate chain and its key) it serves ``wss://`` instead, and the line says so.

Design:
- The hypercorn emulator spends about 400 µs of its own CPU per message
  (ASGI, a writer task and a queue per connection, trio), so on a small
  machine it, not the node, is what saturates. This far end answers a send
  from the read callback, on asyncio with uvloop, with picows doing the
  websocket framing (and answering pings) in C: tens of µs a message.
- It speaks the subset of the protocol a benchmark uses, byte for byte as the
  emulator does (the same ``json.dumps`` separators, fields and order,
  ``tests/test_far_end.py`` drives the same frames through both): the token
  (``Authorization: Bearer`` or ``?token=``; none is ``unauthorized`` and
  close 4001), ``ready``, ``send`` answered with ``ack`` then a ``delivered``
  receipt (a resent idempotency key gets its first message id back), the
  send errors ``bad_request``, ``bad_recipient``, ``too_long``, ``too_large``,
  ``heartbeat`` frames (``heartbeat_ack`` is counted, nothing more), and injected
  messages (``POST /_emulator/inject``, with the backlog for nobody
  connected) and counters (``GET /_emulator/stats``) on a control port of
  its own (picows serves no request bodies). The other operations are
  answered with the emulator's error frame, code ``unsupported``; the faults
  other than ``latency``, ``drop`` and ``close``, and the ledgers (``sent``,
  ``operations``, ``ownership``), with HTTP 501. It keeps no record of what
  was sent, only each key's message id.
- Drops (``POST /_emulator/fault {"kind": "drop", "token"?}``, what the
  storm benchmark does): every connection (of that token) closed with 1001
  and the reason ``dropped by the emulator``; ``{"kind": "close", "code",
  "reason"?, "token"?}`` closes them with ``code``. Both answer
  ``{"closed": N, "code": C}``, as the emulator does; a close comes after
  every frame already sent, and the answers still held back are not sent.
- Latency (``--rtt MS``, or ``POST /_emulator/fault {"kind": "latency",
  "seconds": S}`` as the emulator takes it): each frame that answers a
  client's frame (``ack``, ``receipt``, ``error``) leaves that long after
  the frame it answers arrived, and a new connection gets ``ready`` (or its
  refusal) that long after its upgrade (picows answers the upgrade itself,
  in C; the emulator holds back the upgrade's answer, so a client sees the
  same round trip before ``ready``). The answers wait in one FIFO for the
  whole process (:class:`_Held`), with one ``loop.call_at`` timer armed for
  the oldest: no task and no timer per message, and a fixed latency keeps
  every connection's answers in order.
- Message ids start at ``--first-message-id`` so that several processes
  behind one node (``--emulator-processes``) never hand out the same one.
- The protocol decisions are :class:`Platform`'s (bytes in, frames out, no
  sockets); :class:`_Link` and :class:`_Control` are the I/O around it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import gc
import itertools
import json
import json.encoder
import json.scanner
import math
import signal
import ssl
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol, cast
from urllib.parse import parse_qs, urlsplit

import h11
from picows import WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_create_server

__all__ = ["BANNER", "Platform", "main", "serve"]

BANNER: Final = "lean websocket far end listening on "
HEARTBEAT_INTERVAL: Final = 15.0  # seconds, as the emulator's default
HEARTBEAT_ACK: Final = b'{"type":"heartbeat_ack"}'  # providers.websocket.core's, byte for byte
MAX_TEXT_LENGTH: Final = 16_384  # characters, as the emulator's
MAX_UPLOAD_BYTES: Final = 8 * 1024 * 1024  # bytes of an upload, decoded, as the emulator's
MAX_BACKLOG: Final = 100_000  # injected frames kept for nobody connected (the emulator's MAX_KEPT)
MAX_CONTROL_BODY: Final = 1024 * 1024  # bytes of a control request
LISTEN_BACKLOG: Final = 4096  # pending connections: a connect storm must not be refused
HANDSHAKE_TIMEOUT: Final = 60.0  # seconds from accept to the upgrade request (a storm is slow)
OPERATIONS: Final = frozenset({"send", "edit", "delete", "typing", "read", "react"})
ELSEWHERE: Final = "run the benchmark with --far-end emulator"
NOT_SERVED: Final = frozenset({"fault", "sent", "operations", "ownership", "webhook"})
FAULTS: Final = frozenset({"latency", "drop", "close"})  # the faults served; others get 501
DROP_CODE: Final = 1001  # "going away", as the emulator's
DROP_REASON: Final = "dropped by the emulator"  # the emulator's default close reason
CLOCK_SLACK: Final = 0.001  # seconds: uvloop's clock and timers tick in milliseconds
MAX_LATENCY: Final = 60.0  # seconds, as the emulator's (providers.emulators.latency)


def _dumps(frame: dict[str, Any]) -> bytes:
    return json.dumps(frame, separators=(",", ":")).encode()


# The common path in C: json.loads and json.dumps are a few Python calls deep
# (an encoder built per call), which was half of this far end's CPU per message.
# typeshed types make_scanner as the class it is bound to, not its factory's argument
_scan: Final[Callable[[str, int], tuple[Any, int]]] = json.scanner.make_scanner(
    json.JSONDecoder()  # type: ignore[arg-type]
)
_quoted: Final = json.encoder.encode_basestring_ascii  # a str as json.dumps writes it


def _loads(data: bytes) -> Any:
    """``json.loads(data)``, or None where it raises."""
    try:
        text = data.decode()
        value, end = _scan(text, 0)
        if end == len(text):
            return value
    except (ValueError, StopIteration):
        pass  # json.loads decides: it skips whitespace, reads UTF-16, names the error
    try:
        return json.loads(data)
    except ValueError:
        return None


def checked_latency(value: Any, where: str) -> float:
    """``value`` as a latency in seconds, as the emulator checks it (its
    :func:`providers.emulators.latency.checked_latency`, not imported: that
    package brings the emulators' web stack into this lean process).

    Raises:
        ValueError: not a number, not finite, negative or above the maximum.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where}: a latency is a number of seconds, not {value!r}")
    if not math.isfinite(value) or not 0 <= value <= MAX_LATENCY:
        raise ValueError(
            f"{where}: a latency is within 0..{MAX_LATENCY:g} seconds (0 turns it off), "
            f"not {value!r}"
        )
    return float(value)


class Sink(Protocol):
    """A connected client as the platform sees it: its token, and a way to reach it."""

    token: str

    def push(self, frame: bytes) -> None: ...

    def close(self, code: int, reason: str) -> None: ...


class Platform:
    """The platform's state and answers; the shells do the I/O.

    Args:
        heartbeat_interval: seconds between ``heartbeat`` frames (None: none).
        first_message_id: the number of the first ``out-N`` message id.
        latency: seconds the shell holds back answers and ``ready`` (0: none).

    Raises:
        ValueError: a latency that is not a number of seconds within range.
    """

    def __init__(
        self,
        *,
        heartbeat_interval: float | None = HEARTBEAT_INTERVAL,
        first_message_id: int = 1,
        latency: float = 0.0,
    ) -> None:
        self.heartbeat_interval = heartbeat_interval
        self.latency = checked_latency(latency, "far end latency")
        self.stats: Counter[str] = Counter()
        self.clients: set[Sink] = set()
        self._accepted: dict[tuple[str, str], str] = {}  # (token, idempotency key) -> message id
        self._backlog: deque[tuple[str | None, bytes]] = deque(maxlen=MAX_BACKLOG)
        self._sessions = itertools.count(1)
        self._inbound_ids = itertools.count(1)
        self._outbound_ids = itertools.count(first_message_id)

    def __repr__(self) -> str:
        return (
            f"<Platform clients={len(self.clients)} sent={self.stats['messages_sent']} "
            f"backlog={len(self._backlog)}>"
        )

    # --- connections ------------------------------------------------------------------

    def refusal(self, token: str) -> bytes | None:
        """The error frame that refuses ``token`` (then close 4001), or None."""
        if token:
            return None
        self.stats["refused_unauthorized"] += 1
        return _dumps({"type": "error", "code": "unauthorized", "message": "unknown token"})

    def opened(self, client: Sink) -> None:
        """``client`` is connected: it gets ``ready``, then the backlog meant for it."""
        self.clients.add(client)
        self.stats["connections"] += 1
        client.push(_dumps({"type": "ready", "session": f"s-{next(self._sessions)}"}))
        kept: deque[tuple[str | None, bytes]] = deque(maxlen=MAX_BACKLOG)
        for token, frame in self._backlog:
            if token is None or token == client.token:
                client.push(frame)
            else:
                kept.append((token, frame))
        self._backlog = kept

    def closed(self, client: Sink) -> None:
        self.clients.discard(client)

    # --- frames from a client ---------------------------------------------------------

    def answer(self, token: str, data: bytes) -> tuple[bytes, ...]:
        """The frames that answer one frame from a client (``heartbeat_ack``: none)."""
        if data == HEARTBEAT_ACK:
            self.stats["heartbeat_acks"] += 1  # what an idle bench window checks
            return ()
        self.stats["frames_received"] += 1
        frame = _loads(data)
        kind = frame.get("type") if isinstance(frame, dict) else None
        if not isinstance(frame, dict) or kind not in OPERATIONS:
            expected = "expected a JSON 'send' (or operation) frame"
            return (self._error(None, "bad_request", expected),)
        key, peer = frame.get("id"), frame.get("peer")
        if not isinstance(key, str) or not key or not isinstance(peer, str):
            return (self._error(None, "bad_request", f"a {kind} needs string 'id' and 'peer'"),)
        if not peer:
            return (self._error(key, "bad_recipient", f"no chat {peer!r}", peer=peer),)
        if kind != "send":
            message = f"the lean far end answers sends only, not {kind}: {ELSEWHERE}"
            return (self._error(key, "unsupported", message, peer=peer),)
        return self._send(token, key, peer, frame)

    def _send(self, token: str, key: str, peer: str, frame: dict[str, Any]) -> tuple[bytes, ...]:
        text, media = frame.get("text"), frame.get("media")
        if (text is None) == (media is None):
            return (self._error(key, "bad_request", "a send carries exactly one of text, media"),)
        if isinstance(text, str) and len(text) > MAX_TEXT_LENGTH:
            return (self._error(key, "too_long", f"{len(text)} > {MAX_TEXT_LENGTH} chars"),)
        if isinstance(media, dict) and isinstance(media.get("data"), str):
            try:
                upload = len(base64.b64decode(media["data"], validate=True))
            except binascii.Error:
                return (self._error(key, "bad_request", "media.data is not base64"),)
            if upload > MAX_UPLOAD_BYTES:
                return (self._error(key, "too_large", f"{upload} > {MAX_UPLOAD_BYTES} bytes"),)
        message_id = self._accepted.get((token, key))
        if message_id is not None:
            self.stats["duplicates"] += 1
        else:
            message_id = f"out-{next(self._outbound_ids)}"
            self._accepted[(token, key)] = message_id
            self.stats["messages_sent"] += 1
        # _dumps() of {"type": "ack", "id": key, "message_id": message_id} and of
        # {"type": "receipt", "id": message_id, "peer": peer, "status": "delivered"}
        quoted_id = _quoted(message_id)
        return (
            f'{{"type":"ack","id":{_quoted(key)},"message_id":{quoted_id}}}'.encode(),
            f'{{"type":"receipt","id":{quoted_id},"peer":{_quoted(peer)},'
            f'"status":"delivered"}}'.encode(),
        )

    def _error(self, key: str | None, code: str, message: str, *, peer: str | None = None) -> bytes:
        self.stats[f"errors_{code}"] += 1
        frame: dict[str, Any] = {"type": "error", "code": code, "message": message}
        if key is not None:
            frame["id"] = key
        if peer is not None:
            frame["peer"] = peer
        return _dumps(frame)

    # --- the control API --------------------------------------------------------------

    def inject(self, payload: dict[str, Any]) -> dict[str, Any]:
        """As the emulator's: a user message (no ``"type"``) gets the ``message``
        envelope, anything else goes as it is; nobody to take it: the backlog."""
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
        self.stats["injected"] += 1
        targets = [c for c in self.clients if token is None or c.token == token]
        if not targets:
            self._backlog.append((token, _dumps(frame)))
            return {"queued": True, "frame": frame}
        data = _dumps(frame)
        for client in targets:
            client.push(data)
        return {"delivered_to": len(targets), "frame": frame}

    def fault(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Apply a ``latency``, ``drop`` or ``close`` fault as the emulator does
        (:meth:`providers.emulators.websocket.WebSocketEmulator.platform_fault`).

        Raises:
            ValueError: bad arguments (the control API answers 400 with the message).
        """
        kind = payload.get("kind")
        if kind == "latency":
            self.latency = checked_latency(payload.get("seconds"), "latency needs 'seconds'")
            return {"latency": self.latency}
        if kind not in ("drop", "close"):
            raise ValueError(f"the lean far end serves the faults {sorted(FAULTS)}, not {kind!r}")
        token = payload.get("token")
        code = DROP_CODE if kind == "drop" else payload.get("code")
        if not isinstance(code, int) or not 1000 <= code <= 4999:
            raise ValueError("close needs an integer 'code' between 1000 and 4999")
        reason = str(payload.get("reason", DROP_REASON))
        closed = [c for c in self.clients if token is None or c.token == token]
        for client in closed:
            client.close(code, reason)
        return {"closed": len(closed), "code": code}

    def control(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        """Answer one control request: ``(HTTP status, JSON body)``."""
        what = path.split("?", 1)[0].removeprefix("/_emulator/")
        if what == "stats" and method == "GET":
            return 200, {**self.stats, "clients": len(self.clients)}
        if what == "inject" and method == "POST":
            try:
                payload = json.loads(body)
            except ValueError as exc:
                return 400, {"error": f"the body is not JSON: {exc}"}
            if not isinstance(payload, dict):
                return 400, {"error": "the body must be a JSON object"}
            return 200, self.inject(payload)
        if what == "fault" and method == "POST":
            payload = _loads(body)
            if isinstance(payload, dict) and payload.get("kind") in FAULTS:
                try:
                    answer = self.fault(payload)
                except ValueError as exc:
                    return 400, {"error": str(exc)}
                self.stats[f"fault_{payload['kind']}"] += 1
                return 200, answer
            kind = payload.get("kind") if isinstance(payload, dict) else None
            fault = f"the fault {kind!r}" if kind is not None else path
            return 501, {"error": f"the lean websocket far end does not serve {fault}: {ELSEWHERE}"}
        if what in NOT_SERVED:
            return 501, {"error": f"the lean websocket far end does not serve {path}: {ELSEWHERE}"}
        served = "GET stats, POST inject and POST fault"
        return 404, {"error": f"no {method} {path} here (only {served})"}


# ---------------------------------------------------------------- the websocket shell


class _Held:
    """Answers waiting out the platform's latency, oldest first, for every connection.

    One deque and one ``loop.call_at`` timer, armed for the oldest answer:
    a fixed latency makes the order of arrival the order of due times, so
    what is due is always at the front. After a change of latency the order
    is kept (a shorter one takes effect behind what is already held).
    """

    def __init__(self) -> None:
        self._held: deque[tuple[float, _Link, tuple[bytes, ...]]] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return f"<_Held held={len(self._held)}>"

    def hold(self, link: _Link, frames: tuple[bytes, ...], latency: float) -> None:
        """Send ``frames`` to ``link`` ``latency`` seconds from now."""
        loop = asyncio.get_running_loop()
        self._held.append((loop.time() + latency, link, frames))
        link.waiting += 1
        if self._timer is None:
            self._timer = loop.call_at(self._held[0][0], self._flush)

    def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time() + CLOCK_SLACK
        held = self._held
        while held and held[0][0] <= now:
            _, link, frames = held.popleft()
            link.waiting -= 1
            transport = link.transport
            if transport is not None:  # a connection that went meanwhile gets nothing
                for frame in frames:
                    transport.send(WSMsgType.TEXT, frame)
        self._timer = loop.call_at(held[0][0], self._flush) if held else None


class _Link(WSListener):
    """One client connection: frames in, the platform's answers out."""

    def __init__(self, platform: Platform, token: str, held: _Held) -> None:
        super().__init__()
        self.platform = platform
        self.token = token
        self.held = held
        self.transport: WSTransport | None = None
        self._parts: list[bytes] = []  # a fragmented message so far
        self._beat: asyncio.TimerHandle | None = None
        self._opening: asyncio.TimerHandle | None = None
        self.waiting = 0  # answers of this link held in _Held

    def push(self, frame: bytes) -> None:
        if self.transport is not None:
            self.transport.send(WSMsgType.TEXT, frame)

    def close(self, code: int, reason: str) -> None:
        """Close the connection with ``code`` (a platform fault); nothing is sent after it."""
        transport = self.transport
        if transport is None:
            return
        if self._beat is not None:
            self._beat.cancel()
            self._beat = None
        transport.send(WSMsgType.CLOSE, code.to_bytes(2, "big") + reason.encode())
        transport.disconnect()
        self.transport = None  # held answers, heartbeats and the client's close reply: dropped

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        latency = self.platform.latency
        if latency > 0:  # the upgrade's answer is picows's: ready comes a latency later
            self._opening = asyncio.get_running_loop().call_later(latency, self._open)
        else:
            self._open()

    def _open(self) -> None:
        self._opening = None
        transport = self.transport
        if transport is None:
            return
        refusal = self.platform.refusal(self.token)
        if refusal is not None:
            transport.send(WSMsgType.TEXT, refusal)
            transport.send(WSMsgType.CLOSE, (4001).to_bytes(2, "big") + b"unauthorized")
            transport.disconnect()
            return
        self.platform.opened(self)
        if self.platform.heartbeat_interval is not None:
            self._beat = asyncio.get_running_loop().call_later(
                self.platform.heartbeat_interval, self._heartbeat
            )

    def _heartbeat(self) -> None:
        self.platform.stats["heartbeats"] += 1
        self.push(b'{"type":"heartbeat"}')
        assert self.platform.heartbeat_interval is not None
        self._beat = asyncio.get_running_loop().call_later(
            self.platform.heartbeat_interval, self._heartbeat
        )

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if self.transport is None:  # closed by a fault: what still arrives goes unanswered
            return
        kind = frame.msg_type
        if kind == WSMsgType.TEXT or kind == WSMsgType.BINARY or kind == WSMsgType.CONTINUATION:
            if not frame.fin or self._parts:
                self._parts.append(frame.get_payload_as_bytes())
                if not frame.fin:
                    return
                data = b"".join(self._parts)
                self._parts.clear()
            else:
                data = frame.get_payload_as_bytes()
            answers = self.platform.answer(self.token, data)
            if self.platform.latency > 0 or self.waiting:  # behind what is held
                self.held.hold(self, answers, self.platform.latency)
            else:
                for answer in answers:
                    transport.send(WSMsgType.TEXT, answer)
        elif kind == WSMsgType.CLOSE:
            # echoed as it came: WSCloseCode has no member for an application's 4xxx code
            transport.send(WSMsgType.CLOSE, frame.get_payload_as_bytes())
            transport.disconnect()
        # pings are answered by picows (enable_auto_pong); pongs need nothing

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self._beat is not None:
            self._beat.cancel()
        if self._opening is not None:
            self._opening.cancel()
        self.platform.closed(self)
        self.transport = None


def _token_of(request: WSUpgradeRequest) -> str:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return str(header[7:].strip())
    query = parse_qs(urlsplit(request.path.decode("latin-1")).query)
    return query.get("token", [""])[0]


# ---------------------------------------------------------------- the control shell


class _Control(asyncio.Protocol):
    """One control API connection: HTTP/1.1 through h11, keep-alive."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.http = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_CONTROL_BODY)
        self.transport: asyncio.Transport | None = None
        self.request: h11.Request | None = None
        self.body = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.http.receive_data(data)
        self._events()

    def eof_received(self) -> bool:
        self.http.receive_data(b"")
        self._events()
        return False

    def _events(self) -> None:
        assert self.transport is not None
        while True:
            try:
                event = self.http.next_event()
            except h11.RemoteProtocolError:
                self.transport.close()
                return
            if event is h11.NEED_DATA:
                return
            if event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
                if self.http.our_state is h11.DONE and self.http.their_state is h11.DONE:
                    self.http.start_next_cycle()
                    continue
                self.transport.close()
                return
            if isinstance(event, h11.Request):
                self.request, self.body = event, bytearray()
            elif isinstance(event, h11.Data):
                self.body += event.data
                if len(self.body) > MAX_CONTROL_BODY:
                    self._respond(413, {"error": f"a control body is at most {MAX_CONTROL_BODY}"})
                    self.transport.close()
                    return
            elif isinstance(event, h11.EndOfMessage) and self.request is not None:
                request = self.request
                status, answer = self.platform.control(
                    request.method.decode(), request.target.decode("latin-1"), bytes(self.body)
                )
                self._respond(status, answer)
                if self.http.our_state is h11.MUST_CLOSE:
                    self.transport.close()
                    return

    def _respond(self, status: int, answer: dict[str, Any]) -> None:
        assert self.transport is not None
        # as Starlette's JSONResponse renders it, so the two control APIs answer alike
        body = json.dumps(answer, ensure_ascii=False, separators=(",", ":")).encode()
        headers = [("content-type", "application/json"), ("content-length", str(len(body)))]
        out = self.http.send(h11.Response(status_code=status, headers=headers))
        out = (out or b"") + (self.http.send(h11.Data(data=body)) or b"")
        out += self.http.send(h11.EndOfMessage()) or b""
        self.transport.write(out)


# ---------------------------------------------------------------- serving


async def serve(
    platform: Platform,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    control_port: int = 0,
    tls: ssl.SSLContext | None = None,
) -> tuple[asyncio.Server, asyncio.Server]:
    """Listen for clients (over TLS with ``tls``) and for the control API; returns
    (websocket, control) servers."""

    held = _Held()

    def route(request: WSUpgradeRequest) -> _Link | None:
        if urlsplit(request.path.decode("latin-1")).path != "/ws":
            return None  # picows answers 404
        return _Link(platform, _token_of(request), held)

    websocket = await ws_create_server(
        route,
        host,
        port,
        websocket_handshake_timeout=HANDSHAKE_TIMEOUT,
        backlog=LISTEN_BACKLOG,
        ssl=tls,
    )
    loop = asyncio.get_running_loop()
    control = await loop.create_server(lambda: _Control(platform), host, control_port)
    return websocket, control


def _port(server: asyncio.Server) -> int:
    return int(server.sockets[0].getsockname()[1])


async def _run(args: argparse.Namespace) -> None:
    platform = Platform(
        heartbeat_interval=args.heartbeat_interval or None,
        first_message_id=args.first_message_id,
        latency=args.rtt / 1e3,
    )
    tls = None
    if args.tls_cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.tls_cert)
    websocket, control = await serve(
        platform, host=args.host, port=args.port, control_port=args.control_port, tls=tls
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    gc.freeze()  # what start-up built is never garbage; the collector skips it from now on
    print(
        f"{BANNER}{'wss' if tls else 'ws'}://{args.host}:{_port(websocket)}/ws "
        f"(control API: http://{args.host}:{_port(control)}/_emulator/)",
        flush=True,
    )
    await stop.wait()
    for server in (websocket, control):
        server.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.far_end", description=__doc__)
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        choices=["127.0.0.1", "::1", "localhost"],
        help="loopback only: the control API has no authentication",
    )
    parser.add_argument("--port", type=int, default=0, help="websocket port (0: any free one)")
    parser.add_argument("--control-port", type=int, default=0, help="control API port (0: any)")
    parser.add_argument(
        "--heartbeat-interval",
        type=float,
        default=HEARTBEAT_INTERVAL,
        help="seconds between heartbeat frames (0: none)",
    )
    parser.add_argument("--first-message-id", type=int, default=1, help="the first out-N id")
    parser.add_argument(
        "--rtt",
        type=float,
        default=0.0,
        metavar="MS",
        help="milliseconds every answer (and ready) is held back: a round trip (0: none)",
    )
    parser.add_argument(
        "--tls-cert",
        metavar="PEM",
        help="serve wss:// with this certificate chain and its key in one PEM file",
    )
    args = parser.parse_args(argv)
    try:
        checked_latency(args.rtt / 1e3, f"--rtt {args.rtt:g} (milliseconds)")
    except ValueError as exc:
        parser.error(str(exc))
    try:
        import uvloop
    except ImportError:  # plain asyncio still works, only slower
        asyncio.run(_run(args))
    else:
        uvloop.run(_run(args))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
