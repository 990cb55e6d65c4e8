"""The emulated Discord's gateway (v10): one websocket per client session.

Design:
- ``/gateway`` (and ``/resume``, the ``resume_gateway_url``, so tests can see
  which URL a client resumed on) speak the real protocol: Hello,
  Identify/Resume validation, READY, sequence numbers, heartbeat ACKs,
  dispatches, the 120-per-60-s frame limit (close 4008) and Discord's close
  codes; ``compress=zlib-stream`` and ``compress=zstd-stream`` are honoured
  (BINARY frames, one shared compression stream per socket, flushed after
  every payload, as Discord does).
- Only the client's own close (1000 or 1001) ends a session. When the
  emulator closes a socket (4000, 4008, the ``close`` fault...), hypercorn
  reports the peer's disconnect as 1000 as well; that is not the client's
  word, so the session stays resumable unless the code itself invalidates it.
- Each socket runs two tasks: a reader that applies the client's frames and a
  writer that drains the socket's outbox (see ``Link``); whichever ends first
  ends the other.
- READY lists the guilds unavailable and GUILD_CREATE follows, as on Discord;
  op 8 is answered with GUILD_MEMBERS_CHUNK.
"""

from __future__ import annotations

import json
import uuid
import zlib
from typing import Any, Final

import trio
import zstandard
from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket

from ...discord.wire import PRIVILEGED_INTENTS, Intents, Op
from .model import APPLICATION_FLAGS, OWNER, own_user
from .state import BACKLOG, DiscordState, Link, Session

__all__ = ["COMPRESSIONS", "INVALIDATING_CLOSE_CODES", "DiscordGateway"]

INVALIDATING_CLOSE_CODES: Final = frozenset({4004, 4007, 4009, 4010, 4011, 4012, 4013, 4014})
COMPRESSIONS: Final = frozenset({"zlib-stream", "zstd-stream"})


class DiscordGateway(DiscordState):
    """Discord's gateway sockets over :class:`DiscordState`."""

    def _gateway_routes(self) -> list[BaseRoute]:
        return [
            WebSocketRoute("/gateway", self._gateway),
            WebSocketRoute("/resume", self._gateway),
        ]

    def _close(self, link: Link, code: int, reason: str) -> None:
        link.server_closed = True
        link.why = f"the emulator closed it: {code} {reason}"
        if link.session is not None and code in INVALIDATING_CLOSE_CODES:
            link.session.invalid = True
        self.stats[f"gateway_close_{code}"] += 1
        link.push("close", code, reason)

    async def _gateway(self, websocket: WebSocket) -> None:
        await websocket.accept()
        self.stats["gateway_connections"] += 1
        self.stats[f"gateway_connections{websocket.url.path.replace('/', '_')}"] += 1
        send, receive = trio.open_memory_channel[tuple[Any, ...]](BACKLOG + 100)
        params = websocket.query_params
        compress = params.get("compress")
        link = Link(
            outbox=send,
            netloc=websocket.url.netloc,
            compress=compress if compress in COMPRESSIONS else None,
            last_heartbeat=trio.current_time(),
        )
        self._links.add(link)
        try:
            async with trio.open_nursery() as nursery:

                async def write() -> None:
                    await self._writer(websocket, link, receive)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(write)
                if params.get("v", "10") != "10":
                    self._close(link, 4012, "Invalid API version")
                elif params.get("encoding", "json") != "json":
                    self._close(link, 4002, "the emulator speaks only encoding=json")
                else:
                    hello = {"heartbeat_interval": round(self.heartbeat_interval * 1000)}
                    link.push("frame", {"op": int(Op.HELLO), "d": hello, "s": None, "t": None})
                    await self._reader(websocket, link)
                    nursery.cancel_scope.cancel()
        finally:
            self._links.discard(link)
            if link.holder is not None:
                self.holders.closed(*link.holder, link.why)
            if link.session is not None and link.session.link is link:
                link.session.link = None

    async def _writer(
        self,
        websocket: WebSocket,
        link: Link,
        receive: trio.MemoryReceiveChannel[tuple[Any, ...]],
    ) -> None:
        deflate = zlib.compressobj() if link.compress == "zlib-stream" else None
        zstd = zstandard.ZstdCompressor().compressobj() if link.compress == "zstd-stream" else None
        async for item in receive:
            if link.behind:
                self.stats["gateway_dropped_behind"] += 1
                return  # as "drop": the session resumes and its backlog is replayed
            if item[0] == "drop":
                return  # the app ends without a close: hypercorn closes with 1011
            if item[0] == "close":
                await websocket.close(item[1], item[2])
                return
            text = json.dumps(item[1], separators=(",", ":"))
            self.stats["gateway_payload_bytes"] += len(text)
            if deflate is not None:
                data = deflate.compress(text.encode()) + deflate.flush(zlib.Z_SYNC_FLUSH)
            elif zstd is not None:
                data = zstd.compress(text.encode()) + zstd.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
            else:
                self.stats["gateway_wire_bytes"] += len(text)
                await websocket.send_text(text)
                continue
            self.stats["gateway_wire_bytes"] += len(data)
            await websocket.send_bytes(data)

    async def _reader(self, websocket: WebSocket, link: Link) -> None:
        limit, window = self.gateway_send_limit
        while True:
            with trio.move_on_at(link.last_heartbeat + self.heartbeat_timeout) as scope:
                message = await websocket.receive()
            if scope.cancelled_caught:
                self._close(link, 4009, "Session timed out")
                await trio.sleep_forever()  # the writer closes and cancels us
            if message["type"] == "websocket.disconnect":
                code = message.get("code", 1005)
                self.stats[f"client_close_{code}"] += 1
                # Only the client's own 1000/1001 ends the session; after our close,
                # hypercorn reports 1000 whatever the client said.
                if link.session is not None and code in (1000, 1001) and not link.server_closed:
                    link.session.invalid = True
                return
            now = trio.current_time()
            link.received.append(now)
            while link.received and link.received[0] <= now - window:
                link.received.popleft()
            if len(link.received) > limit:
                self._close(link, 4008, "Rate limited.")
                await trio.sleep_forever()
            raw = message.get("text") if message.get("text") is not None else message.get("bytes")
            try:
                frame = json.loads(raw or "")
                op = frame["op"]
            except (ValueError, TypeError, KeyError):
                self._close(link, 4002, "Error while decoding payload.")
                await trio.sleep_forever()
            if not self._handle(link, op, frame.get("d")):
                await trio.sleep_forever()

    def _handle(self, link: Link, op: Any, d: Any) -> bool:
        """Apply one client frame; ``False`` once the socket is being closed."""
        if op == Op.HEARTBEAT:
            self.stats["heartbeats"] += 1
            link.last_heartbeat = trio.current_time()
            if link.withhold_acks:
                self.stats["heartbeat_acks_withheld"] += 1
            else:
                self.stats["heartbeat_acks"] += 1
                link.push("frame", {"op": int(Op.HEARTBEAT_ACK), "d": None, "s": None, "t": None})
            return True
        if op == Op.IDENTIFY:
            return self._identify(link, d)
        if op == Op.RESUME:
            return self._resume(link, d)
        if op in (Op.PRESENCE_UPDATE, Op.VOICE_STATE_UPDATE, Op.REQUEST_GUILD_MEMBERS):
            if link.session is None:
                self._close(link, 4003, "Not authenticated.")
                return False
            self.stats[f"op_{int(op)}"] += 1
            if op == Op.REQUEST_GUILD_MEMBERS:
                self._members_chunk(link.session, d)
            return True
        self._close(link, 4001, "Unknown opcode.")
        return False

    def _members_chunk(self, session: Session, d: Any) -> None:
        """Answer op 8 with one GUILD_MEMBERS_CHUNK per known guild asked for.

        An emulated guild's members are its owner and the bot; clients that
        chunk guilds at startup (discord.py with the members intent) wait for
        this answer before they report ready.
        """
        if not isinstance(d, dict):
            return
        guild_ids = d.get("guild_id")
        guild_ids = guild_ids if isinstance(guild_ids, list) else [guild_ids]
        users = [OWNER, self._bot_user(session.token)]
        query, user_ids, limit = d.get("query"), d.get("user_ids"), d.get("limit")
        for guild_id in guild_ids:
            guild = self.guilds.get(str(guild_id))
            if guild is None:
                continue
            chunk: dict[str, Any] = {"guild_id": guild.id, "chunk_index": 0, "chunk_count": 1}
            if user_ids is not None:
                wanted = {str(u) for u in (user_ids if isinstance(user_ids, list) else [user_ids])}
                found = [u for u in users if u["id"] in wanted]
                chunk["not_found"] = sorted(wanted - {u["id"] for u in found})
            else:
                prefix = query.lower() if isinstance(query, str) else ""
                found = [u for u in users if u["username"].lower().startswith(prefix)]
                if isinstance(limit, int) and limit > 0:
                    found = found[:limit]
            chunk["members"] = [guild.member(u) for u in found]
            if d.get("nonce") is not None:
                chunk["nonce"] = d["nonce"]
            self._dispatch(session, "GUILD_MEMBERS_CHUNK", chunk)

    def _identify(self, link: Link, d: Any) -> bool:
        if link.session is not None:
            self._close(link, 4005, "Already authenticated.")
            return False
        if not isinstance(d, dict) or not isinstance(d.get("properties"), dict):
            self._close(link, 4002, "Error while decoding payload.")
            return False
        token = d.get("token")
        if not isinstance(token, str) or not self._token_ok(token):
            self._close(link, 4004, "Authentication failed.")
            return False
        intents = d.get("intents")
        if not isinstance(intents, int) or intents < 0:
            self._close(link, 4013, "Invalid intent(s).")
            return False
        if intents & PRIVILEGED_INTENTS & ~self.allowed_privileged_intents:
            self._close(link, 4014, "Disallowed intent(s).")
            return False
        self.stats["identify"] += 1
        if self.session_start_remaining <= 0:
            self.stats["identify_refused"] += 1
            link.push("frame", {"op": int(Op.INVALID_SESSION), "d": False, "s": None, "t": None})
            return True
        self.session_start_remaining -= 1
        user_id = self.user_id_for(token)
        session = Session(id=uuid.uuid4().hex, token=token, user_id=user_id, intents=intents)
        self.sessions[session.id] = session
        session.link = link
        link.session = session
        link.holder = (token, self.holders.opened(token))
        ready = {
            "v": 10,
            "user": own_user(token),
            "guilds": [{"id": guild_id, "unavailable": True} for guild_id in self.guilds],
            "session_id": session.id,
            "resume_gateway_url": f"ws://{link.netloc}/resume",
            "shard": [0, 1],
            "application": {"id": user_id, "flags": APPLICATION_FLAGS},
        }
        self._dispatch(session, "READY", ready)
        if intents & Intents.GUILDS:
            # Discord lazy-loads the guilds READY listed as unavailable.
            for guild in self.guilds.values():
                self._dispatch(session, "GUILD_CREATE", guild.payload(self._bot_user(token)))
        return True

    def _resume(self, link: Link, d: Any) -> bool:
        if link.session is not None:
            self._close(link, 4005, "Already authenticated.")
            return False
        if not isinstance(d, dict):
            self._close(link, 4002, "Error while decoding payload.")
            return False
        token, seq = d.get("token"), d.get("seq")
        if not isinstance(token, str) or not self._token_ok(token):
            self._close(link, 4004, "Authentication failed.")
            return False
        session = self.sessions.get(str(d.get("session_id")))
        replay: list[dict[str, Any]] = []
        if session is not None and isinstance(seq, int) and not session.invalid:
            replay = [frame for frame in session.backlog if frame["s"] > seq]
        lost = bool(replay) and isinstance(seq, int) and replay[0]["s"] != seq + 1
        if session is None or session.invalid or session.token != token or lost:
            self.stats["resume_failed"] += 1
            link.push("frame", {"op": int(Op.INVALID_SESSION), "d": False, "s": None, "t": None})
            return True
        if not isinstance(seq, int) or seq > session.seq:
            self._close(link, 4007, "Invalid seq.")
            return False
        self.stats["resume"] += 1
        if session.link is not None and session.link is not link:
            session.link.session = None
            self._close(session.link, 4000, "session resumed elsewhere")
        session.link = link
        link.session = session
        link.holder = (token, self.holders.opened(token))
        for frame in replay:
            link.push("frame", frame)
        self._dispatch(session, "RESUMED", {})
        return True
