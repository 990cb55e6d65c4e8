"""The emulated Discord's shared state: sessions, sockets, guilds, messages.

Design:
- :class:`DiscordState` holds everything the REST routes (``rest.py``) and
  the gateway (``gateway.py``) share, and the two ways an event reaches a
  client: ``_dispatch`` (one session, sequenced, kept for Resume) and
  ``_broadcast`` (every session whose intents admit it).
- Sessions outlive their sockets: a session's backlog keeps the last
  ``BACKLOG`` dispatches, replayed on Resume.
- Every socket (:class:`Link`) has an outbox drained by its writer task, so
  injects and faults from other tasks never write to a websocket
  concurrently; ``Link.push`` never blocks.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Final

import attrs
import trio

from ...discord.wire import DISCORD_EPOCH_MS, PRIVILEGED_INTENTS, Intents, Op
from ..base import Emulator
from .model import DEFAULT_GUILD_ID, Bucket, Guild, bot_user, timestamp, user_id_for

__all__ = ["BACKLOG", "GLOBAL_LIMIT", "HEARTBEAT_INTERVAL", "DiscordState", "Link", "Session"]

HEARTBEAT_INTERVAL: Final = 41.25  # seconds, Discord's usual value
BACKLOG: Final = 1000  # dispatches kept per session for Resume
GLOBAL_LIMIT: Final = (50, 1.0)  # (requests, seconds) per bot token: "50 requests per second"
GLOBAL_SWEPT_AT: Final = 1024  # token windows kept before the ended ones are dropped


@attrs.define(eq=False)
class Session:
    id: str
    token: str
    user_id: str
    intents: int
    seq: int = 0
    backlog: deque[dict[str, Any]] = attrs.field(factory=lambda: deque(maxlen=BACKLOG))
    link: Link | None = None
    invalid: bool = False


@attrs.define(eq=False)
class Link:
    """One gateway socket."""

    outbox: trio.MemorySendChannel[tuple[Any, ...]]
    netloc: str
    compress: str | None  # "zlib-stream", "zstd-stream" or None
    session: Session | None = None
    holder: tuple[str, int] | None = None  # (token, handle) in the ownership judge
    withhold_acks: bool = False
    server_closed: bool = False  # we closed it: its disconnect code is not the client's
    why: str = "the client closed it"  # how it ended (the ownership judge's gaps)
    received: deque[float] = attrs.field(factory=deque)
    last_heartbeat: float = 0.0
    behind: bool = False  # its outbox overflowed: the writer drops the socket

    def push(self, *item: Any) -> None:
        try:
            self.outbox.send_nowait(item)
        except trio.WouldBlock:
            # Hopelessly behind: the socket is dropped and the session resumes from its
            # backlog, as on Discord. Skipping the frame instead would leave a gap in the
            # sequence that no client notices: events lost without a trace.
            self.behind = True
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass  # going away: it will close


class DiscordState(Emulator):
    """The state behind the emulated Discord (arguments: see ``DiscordEmulator``)."""

    def __init__(
        self,
        *,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        heartbeat_timeout: float | None = None,
        session_start_total: int = 1000,
        gateway_send_limit: tuple[int, float] = (120, 60.0),
        message_bucket: tuple[int, float] = (5, 5.0),
        global_limit: tuple[int, float] = GLOBAL_LIMIT,
        allowed_privileged_intents: int = PRIVILEGED_INTENTS,
        tokens: set[str] | None = None,
    ) -> None:
        super().__init__()
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = (
            heartbeat_timeout if heartbeat_timeout is not None else heartbeat_interval * 1.5 + 1.0
        )
        self.session_start_total = session_start_total
        self.session_start_remaining = session_start_total
        self.gateway_send_limit = gateway_send_limit
        self.message_bucket = message_bucket
        self.global_limit = global_limit
        self.allowed_privileged_intents = int(allowed_privileged_intents)
        self.tokens = tokens
        self.ip_blocked_until = 0.0
        self.deleted_channels: set[str] = set()
        self.sessions: dict[str, Session] = {}
        self._links: set[Link] = set()
        self._buckets: dict[str, Bucket] = {}
        self._global: dict[str, Bucket] = {}  # bot token -> its global window
        self._global_sweep_at = GLOBAL_SWEPT_AT
        self._nonces: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._messages: dict[str, dict[str, Any]] = {}
        self.files: dict[str, bytes] = {}  # attachment id -> the uploaded bytes
        self._counter = 0
        self.guilds: dict[str, Guild] = {
            DEFAULT_GUILD_ID: Guild(id=DEFAULT_GUILD_ID, joined_at=timestamp())
        }

    # --- helpers --------------------------------------------------------------------

    def _snowflake(self) -> str:
        self._counter += 1
        millis = int(time.time() * 1000) - DISCORD_EPOCH_MS
        return str((millis << 22) | (self._counter & 0x3FFFFF))

    @staticmethod
    def user_id_for(token: str) -> str:
        """The bot user id the emulator gives ``token`` (stable)."""
        return user_id_for(token)

    def _token_ok(self, token: str | None) -> bool:
        if not token or self.is_banned(token):
            return False
        return self.tokens is None or token in self.tokens

    def _bot_user(self, token: str) -> dict[str, Any]:
        return bot_user(token)

    def _message(
        self,
        *,
        channel_id: str,
        content: str,
        author: dict[str, Any],
        guild_id: str | None,
        nonce: Any = None,
        reply_to: str | None = None,
        attachments: list[dict[str, Any]] | None = None,
        reference_guild_id: str | None = None,
    ) -> dict[str, Any]:
        message: dict[str, Any] = {
            "id": self._snowflake(),
            "type": 19 if reply_to else 0,
            "channel_id": channel_id,
            "author": author,
            "content": content,
            "timestamp": timestamp(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": attachments or [],
            "embeds": [],
            "components": [],
            "pinned": False,
            "flags": 0,
        }
        if guild_id is not None:
            message["guild_id"] = guild_id
        if nonce is not None:
            message["nonce"] = nonce
        if reply_to:
            reply_to = str(reply_to)  # clients may send the snowflake as a number
            reference = {"type": 0, "message_id": reply_to, "channel_id": channel_id}
            if guild_id or reference_guild_id:
                reference["guild_id"] = guild_id or reference_guild_id
            message["message_reference"] = reference
            # Discord resolves a reply one level deep (null when the original is gone).
            original = self._messages.get(reply_to)
            message["referenced_message"] = (
                None
                if original is None
                else {k: v for k, v in original.items() if k != "referenced_message"}
            )
        self._messages[message["id"]] = message
        return message

    # --- guilds and dispatches -------------------------------------------------------

    def _guild_of(self, channel_id: str) -> Guild | None:
        for guild in self.guilds.values():
            if channel_id in guild.channels:
                return guild
        return None

    def _ensure_channel(self, guild_id: str, channel_id: str) -> Guild:
        """The guild holding ``channel_id``; the bot joins it and the channel is created,
        with the GUILD_CREATE / CHANNEL_CREATE dispatches Discord sends, when new."""
        guild = self._guild_of(channel_id)
        if guild is not None:
            return guild
        guild = self.guilds.get(guild_id)
        if guild is None:
            guild = self.guilds[guild_id] = Guild(id=guild_id, joined_at=timestamp())
            guild.add_channel(channel_id)
            for session in self._guild_sessions():
                self._dispatch(
                    session, "GUILD_CREATE", guild.payload(self._bot_user(session.token))
                )
            return guild
        channel = guild.add_channel(channel_id)
        for session in self._guild_sessions():
            self._dispatch(session, "CHANNEL_CREATE", channel)
        return guild

    def _guild_sessions(self) -> list[Session]:
        return [s for s in self.sessions.values() if not s.invalid and s.intents & Intents.GUILDS]

    def _broadcast(self, name: str, message: dict[str, Any], *, only: str | None = None) -> None:
        """Dispatch to every session whose intents admit it (``only``: of that user id)."""
        for session in list(self.sessions.values()):
            if session.invalid or (only is not None and session.user_id != only):
                continue
            needed = Intents.GUILD_MESSAGES if "guild_id" in message else Intents.DIRECT_MESSAGES
            if not session.intents & needed:
                continue
            data = dict(message)
            is_own = message["author"]["id"] == session.user_id
            if not session.intents & Intents.MESSAGE_CONTENT and not is_own:
                data["content"] = ""
            self._dispatch(session, name, data)

    def _dispatch(self, session: Session, name: str, data: dict[str, Any]) -> None:
        session.seq += 1
        frame = {"op": int(Op.DISPATCH), "t": name, "s": session.seq, "d": data}
        session.backlog.append(frame)
        self.stats["dispatched"] += 1
        if session.link is not None:
            session.link.push("frame", frame)
