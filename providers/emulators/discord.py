"""A protocol-faithful local Discord: REST v10 and gateway v10 on one port.

Design:
- The REST routes live at Discord's paths under ``/api/v10`` and answer with
  Discord's JSON shapes, ``Content-Type: application/json`` and the
  ``X-RateLimit-*`` headers of a per-channel bucket on
  ``POST /channels/{id}/messages``; the gateway speaks the real protocol on
  ``/gateway`` (and ``/resume``, the ``resume_gateway_url``, so tests can see
  which URL a client resumed on): Hello, Identify/Resume validation, READY,
  sequence numbers, heartbeat ACKs, dispatches, the 120-per-60-s frame limit
  (close 4008) and Discord's close codes.
- The bot is a member of one guild (``DEFAULT_GUILD_ID``, owned by
  ``OWNER_ID``): READY lists it unavailable and GUILD_CREATE follows, as on
  Discord. An inject into a channel (or guild) not seen before creates it
  first with CHANNEL_CREATE (or GUILD_CREATE), so a client's cache resolves
  ``message.channel`` to a text channel; guild MESSAGE_CREATEs carry
  ``guild_id`` and ``member``; op 8 is answered with GUILD_MEMBERS_CHUNK.
  discord.py runs against this unchanged (tests/test_emulator_compat.py).
- REST answers carry ``Via: 1.1 google`` like Discord's; a 429 without it is
  Cloudflare's ban, so only the ``ip_block`` fault leaves it out.
- Sessions outlive their sockets: dispatches for a session whose socket is
  gone are kept (bounded) and replayed on Resume, as Discord does, so a
  resumed client loses nothing. A close with 1000/1001 ends the session.
- Every socket has a writer task fed through a memory channel, so injects and
  faults from other tasks never write to a websocket concurrently.
- Faults (``POST /_emulator/fault``), besides the base's ``ban_token`` (REST
  401, gateway close 4004) and ``rate_limit`` (global 429 with headers)::

      {"kind": "drop"}                        sockets end without a Discord close code
      {"kind": "close", "code": 4009}         sockets close with that code
      {"kind": "reconnect"}                   op 7 on every socket
      {"kind": "invalid_session", "resumable": false}   op 9
      {"kind": "withhold_acks"}               current sockets get no heartbeat ACKs
      {"kind": "ip_block", "duration": 5}     REST 429s without rate-limit headers
      {"kind": "delete_channel", "channel_id": "1"}     404 Unknown Channel

  ASGI cannot reset a TCP connection, so ``drop`` ends the socket the way a
  crashed gateway node does: the server closes with 1011 (internal error).
- Known gap: hypercorn 0.18 reports every client-initiated close to the app
  as 1006, so the emulator cannot tell a client's 1000 (session ends) from
  4000 (session stays); it keeps the session resumable in both cases.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
import uuid
import zlib
from collections import deque
from typing import Any, Final

import attrs
import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Match, Route, WebSocketRoute
from starlette.websockets import WebSocket

from ..discord.wire import DISCORD_EPOCH_MS, PRIVILEGED_INTENTS, Intents, Op
from .base import Emulator, FaultError

__all__ = ["DiscordEmulator"]

HEARTBEAT_INTERVAL: Final = 41.25  # seconds, Discord's usual value
BACKLOG: Final = 1000  # dispatches kept per session for Resume
MAX_CONTENT: Final = 2000  # characters
MAX_NONCE: Final = 25  # characters
RATE_LIMITED: Final = "You are being rate limited."
HTTP_METHODS: Final = ("GET", "POST", "PUT", "PATCH", "DELETE")
DEFAULT_GUILD_ID: Final = "200000000000000001"
DEFAULT_AUTHOR_ID: Final = "100000000000000001"
# @everyone in an emulated guild: VIEW_CHANNEL, SEND_MESSAGES, EMBED_LINKS, ATTACH_FILES,
# READ_MESSAGE_HISTORY, ADD_REACTIONS, USE_EXTERNAL_EMOJIS.
EVERYONE_PERMISSIONS: Final = str(
    (1 << 10) | (1 << 11) | (1 << 14) | (1 << 15) | (1 << 16) | (1 << 6) | (1 << 18)
)
OWNER_ID: Final = "100000000000000000"  # the made-up owner of every application and guild
OWNER: Final[dict[str, Any]] = {
    "id": OWNER_ID,
    "username": "owner",
    "discriminator": "0",
    "global_name": None,
    "avatar": None,
    "public_flags": 0,
}
# GATEWAY_MESSAGE_CONTENT_LIMITED | GATEWAY_GUILD_MEMBERS_LIMITED | GATEWAY_PRESENCE_LIMITED:
# an unverified bot that may request every privileged intent.
APPLICATION_FLAGS: Final = (1 << 19) | (1 << 15) | (1 << 13)
INVALIDATING_CLOSE_CODES: Final = frozenset({4004, 4007, 4009, 4010, 4011, 4012, 4013, 4014})


@attrs.define(eq=False)
class _Session:
    id: str
    token: str
    user_id: str
    intents: int
    seq: int = 0
    backlog: deque[dict[str, Any]] = attrs.field(factory=lambda: deque(maxlen=BACKLOG))
    link: _Link | None = None
    invalid: bool = False


@attrs.define(eq=False)
class _Link:
    """One gateway socket."""

    outbox: trio.MemorySendChannel[tuple[Any, ...]]
    netloc: str
    compress: bool
    session: _Session | None = None
    withhold_acks: bool = False
    received: deque[float] = attrs.field(factory=deque)
    last_heartbeat: float = 0.0

    def push(self, *item: Any) -> None:
        # A socket that is going away, or hopelessly behind, misses the item; it will close.
        with contextlib.suppress(
            trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError
        ):
            self.outbox.send_nowait(item)


@attrs.define(eq=False)
class _Guild:
    """A guild every emulated bot is a member of, and its text channels."""

    id: str
    joined_at: str
    channels: dict[str, dict[str, Any]] = attrs.field(factory=dict)

    def add_channel(self, channel_id: str) -> dict[str, Any]:
        channel = self.channels[channel_id] = {
            "id": channel_id,
            "type": 0,
            "guild_id": self.id,
            "name": f"channel-{len(self.channels) + 1}",
            "position": len(self.channels),
            "permission_overwrites": [],
            "parent_id": None,
            "topic": None,
            "nsfw": False,
            "last_message_id": None,
            "rate_limit_per_user": 0,
            "flags": 0,
        }
        return channel

    def member(self, user: dict[str, Any] | None) -> dict[str, Any]:
        """A guild member object; ``user`` is left out inside MESSAGE_CREATE, as on Discord."""
        member: dict[str, Any] = {
            "roles": [],
            "nick": None,
            "avatar": None,
            "joined_at": self.joined_at,
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
        }
        if user is not None:
            member["user"] = user
        return member

    def payload(self, bot_user: dict[str, Any]) -> dict[str, Any]:
        """GUILD_CREATE's ``d`` as ``bot_user`` sees it."""
        return {
            "id": self.id,
            "name": f"Emulated Guild {self.id[-4:]}",
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "owner_id": OWNER_ID,
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "roles": [
                {
                    "id": self.id,  # @everyone has the guild's id
                    "name": "@everyone",
                    "color": 0,
                    "hoist": False,
                    "icon": None,
                    "unicode_emoji": None,
                    "position": 0,
                    "permissions": EVERYONE_PERMISSIONS,
                    "managed": False,
                    "mentionable": False,
                    "flags": 0,
                }
            ],
            "emojis": [],
            "stickers": [],
            "features": [],
            "mfa_level": 0,
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "vanity_url_code": None,
            "description": None,
            "banner": None,
            "premium_tier": 0,
            "preferred_locale": "en-US",
            "public_updates_channel_id": None,
            "nsfw_level": 0,
            "premium_progress_bar_enabled": False,
            "joined_at": self.joined_at,
            "large": False,
            "unavailable": False,
            "member_count": 2,
            "members": [self.member(bot_user)],
            "channels": [
                {k: v for k, v in c.items() if k != "guild_id"} for c in self.channels.values()
            ],
            "threads": [],
            "presences": [],
            "voice_states": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
        }


def _timestamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000+00:00", time.gmtime())


@attrs.define
class _Bucket:
    remaining: int
    reset_at: float


def _json(
    data: Any, status: int = 200, headers: dict[str, str] | None = None, *, via: bool = True
) -> Response:
    """A REST answer. Discord's API answers pass its Google front end (``Via: 1.1
    google``); a 429 without ``Via`` is Cloudflare's ban, and discord.py tells the two
    apart by exactly that, so only the ``ip_block`` fault leaves it out."""
    headers = {**(headers or {}), **({"Via": "1.1 google"} if via else {})}
    return JSONResponse(data, status_code=status, headers=headers)


class DiscordEmulator(Emulator):
    """Discord's REST and gateway, faithful enough for a real client library.

    Args:
        heartbeat_interval: seconds announced in Hello (tests use tiny values).
        heartbeat_timeout: seconds without a heartbeat before close 4009
            (default: 1.5 intervals plus one second of slack).
        session_start_total: identifies per day (``session_start_limit``).
        gateway_send_limit: (frames, seconds) a client may send per socket.
        message_bucket: (requests, seconds) per channel on the send route.
        allowed_privileged_intents: privileged intents this bot may request
            (others close with 4014).
        tokens: the valid bot tokens (``None``: any non-empty token).
    """

    name = "discord"

    def __init__(
        self,
        *,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        heartbeat_timeout: float | None = None,
        session_start_total: int = 1000,
        gateway_send_limit: tuple[int, float] = (120, 60.0),
        message_bucket: tuple[int, float] = (5, 5.0),
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
        self.allowed_privileged_intents = int(allowed_privileged_intents)
        self.tokens = tokens
        self.ip_blocked_until = 0.0
        self.deleted_channels: set[str] = set()
        self.sessions: dict[str, _Session] = {}
        self._links: set[_Link] = set()
        self._buckets: dict[str, _Bucket] = {}
        self._nonces: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._messages: dict[str, dict[str, Any]] = {}
        self._counter = 0
        self.guilds: dict[str, _Guild] = {
            DEFAULT_GUILD_ID: _Guild(id=DEFAULT_GUILD_ID, joined_at=_timestamp())
        }

    def __repr__(self) -> str:
        return (
            f"<DiscordEmulator [sockets={len(self._links)} sessions={len(self.sessions)} "
            f"sent={len(self.sent)} heartbeat={self.heartbeat_interval:g}s]>"
        )

    # --- helpers --------------------------------------------------------------------

    def _snowflake(self) -> str:
        self._counter += 1
        millis = int(time.time() * 1000) - DISCORD_EPOCH_MS
        return str((millis << 22) | (self._counter & 0x3FFFFF))

    @staticmethod
    def user_id_for(token: str) -> str:
        """The bot user id the emulator gives ``token`` (stable)."""
        return str(int(hashlib.sha256(token.encode()).hexdigest()[:14], 16))

    def _token_ok(self, token: str | None) -> bool:
        if not token or self.is_banned(token):
            return False
        return self.tokens is None or token in self.tokens

    def platform_routes(self) -> list[BaseRoute]:
        """Discord's REST paths and the gateway sockets."""
        return [
            Route("/api/v10/gateway", self._get_gateway, methods=["GET"]),
            Route("/api/v10/gateway/bot", self._get_gateway_bot, methods=["GET"]),
            Route("/api/v10/users/@me", self._get_me, methods=["GET"]),
            Route("/api/v10/oauth2/applications/@me", self._get_application, methods=["GET"]),
            Route("/api/v10/channels/{channel_id}/messages", self._post_message, methods=["POST"]),
            # Last: Discord answers unknown routes and wrong methods in JSON, not plain text.
            Route("/api/v10/{rest:path}", self._no_route, methods=list(HTTP_METHODS)),
            WebSocketRoute("/gateway", self._gateway),
            WebSocketRoute("/resume", self._gateway),
        ]

    async def _no_route(self, request: Request) -> Response:
        for route in self.app.routes:
            if route.endpoint is self._no_route:  # type: ignore[attr-defined]
                break
            if route.matches(request.scope)[0] is Match.PARTIAL:
                return _json({"message": "405: Method Not Allowed", "code": 0}, 405)
        return _json({"message": "404: Not Found", "code": 0}, 404)

    # --- REST ---------------------------------------------------------------------------

    def _admit(self, request: Request) -> Response | str:
        """Common REST checks; the bot token when the request may proceed."""
        self.stats["rest_requests"] += 1
        now = trio.current_time()
        if now < self.ip_blocked_until:
            self.stats["rest_ip_blocked"] += 1
            return _json(
                {
                    "message": "You are being blocked from accessing our API temporarily due "
                    "to exceeding our rate limits frequently.",
                    "code": 0,
                },
                429,
                via=False,
            )
        auth = request.headers.get("authorization", "")
        token = auth[4:] if auth.startswith("Bot ") else None
        if not self._token_ok(token):
            self.stats["rest_401"] += 1
            return _json({"message": "401: Unauthorized", "code": 0}, 401)
        assert token is not None
        remaining = self.rate_limit_remaining()
        if remaining > 0:
            self.stats["rest_429"] += 1
            return _json(
                {
                    "message": "You are being rate limited.",
                    "retry_after": remaining,
                    "global": True,
                },
                429,
                {
                    "Retry-After": str(max(1, round(remaining))),
                    "X-RateLimit-Global": "true",
                    "X-RateLimit-Scope": "global",
                },
            )
        return token

    async def _get_gateway(self, request: Request) -> Response:
        return _json({"url": f"ws://{request.url.netloc}/gateway"})

    async def _get_gateway_bot(self, request: Request) -> Response:
        admitted = self._admit(request)
        if isinstance(admitted, Response):
            return admitted
        return _json(
            {
                "url": f"ws://{request.url.netloc}/gateway",
                "shards": 1,
                "session_start_limit": {
                    "total": self.session_start_total,
                    "remaining": self.session_start_remaining,
                    "reset_after": 86_400_000,
                    "max_concurrency": 1,
                },
            }
        )

    async def _get_me(self, request: Request) -> Response:
        admitted = self._admit(request)
        if isinstance(admitted, Response):
            return admitted
        return _json(self._bot_user(admitted))

    async def _get_application(self, request: Request) -> Response:
        admitted = self._admit(request)
        if isinstance(admitted, Response):
            return admitted
        user = self._bot_user(admitted)
        # The bot's application shares the bot user's id, as on Discord; an
        # emulated bot has no team, so its owner is a (made-up) user.
        return _json(
            {
                "id": user["id"],
                "name": user["username"],
                "icon": None,
                "description": "",
                "summary": "",
                "type": None,
                "bot_public": True,
                "bot_require_code_grant": False,
                "verify_key": hashlib.sha256(admitted.encode()).hexdigest(),
                "flags": APPLICATION_FLAGS,
                "bot": user,
                "owner": OWNER,
                "team": None,
                "redirect_uris": [],
                "interactions_endpoint_url": None,
            }
        )

    def _bot_user(self, token: str) -> dict[str, Any]:
        user_id = self.user_id_for(token)
        return {
            "id": user_id,
            "username": f"bot-{user_id[-4:]}",
            "discriminator": "0",
            "global_name": None,
            "avatar": None,
            "bot": True,
            "flags": 0,
        }

    def _bucket_headers(self, bucket: _Bucket, now: float) -> dict[str, str]:
        reset_after = max(0.0, bucket.reset_at - now)
        return {
            "X-RateLimit-Limit": str(self.message_bucket[0]),
            "X-RateLimit-Remaining": str(bucket.remaining),
            "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
            "X-RateLimit-Reset-After": f"{reset_after:.3f}",
            "X-RateLimit-Bucket": "emulated-create-message",
        }

    async def _post_message(self, request: Request) -> Response:
        admitted = self._admit(request)
        if isinstance(admitted, Response):
            return admitted
        token = admitted
        channel_id = request.path_params["channel_id"]
        if not channel_id.isdigit() or channel_id in self.deleted_channels:
            return _json({"message": "Unknown Channel", "code": 10003}, 404)
        now = trio.current_time()
        limit, per = self.message_bucket
        bucket = self._buckets.get(channel_id)
        if bucket is None or now >= bucket.reset_at:
            bucket = self._buckets[channel_id] = _Bucket(limit, now + per)
        if bucket.remaining <= 0:
            self.stats["rest_429"] += 1
            retry_after = round(bucket.reset_at - now, 3)
            headers = self._bucket_headers(bucket, now)
            headers.update(
                {"Retry-After": str(max(1, round(retry_after))), "X-RateLimit-Scope": "user"}
            )
            return _json(
                {
                    "message": "You are being rate limited.",
                    "retry_after": retry_after,
                    "global": False,
                },
                429,
                headers,
            )
        bucket.remaining -= 1
        headers = self._bucket_headers(bucket, now)
        try:
            body = await request.json()
        except ValueError:
            return _json({"message": "400: Bad Request", "code": 0}, 400, headers)
        if not isinstance(body, dict):
            return _json({"message": "400: Bad Request", "code": 0}, 400, headers)
        content = body.get("content") or ""
        nonce = body.get("nonce")
        errors: dict[str, Any] = {}
        if not isinstance(content, str) or len(content) > MAX_CONTENT:
            errors["content"] = {
                "_errors": [
                    {"code": "BASE_TYPE_MAX_LENGTH", "message": "Must be 2000 or fewer in length."}
                ]
            }
        if nonce is not None and len(str(nonce)) > MAX_NONCE:
            errors["nonce"] = {
                "_errors": [{"code": "BASE_TYPE_MAX_LENGTH", "message": "Must be 25 or fewer."}]
            }
        if errors:
            invalid = {"message": "Invalid Form Body", "code": 50035, "errors": errors}
            return _json(invalid, 400, headers)
        if not content and not body.get("embeds") and not body.get("attachments"):
            return _json({"message": "Cannot send an empty message", "code": 50006}, 400, headers)
        nonce_key = (token, channel_id, str(nonce))
        if nonce is not None and body.get("enforce_nonce") and nonce_key in self._nonces:
            self.stats["nonce_deduplicated"] += 1
            return _json(self._nonces[nonce_key], 200, headers)
        guild = self._guild_of(channel_id)
        message = self._message(
            channel_id=channel_id,
            content=content,
            author=self._bot_user(token),
            guild_id=None,
            nonce=nonce,
            reply_to=(body.get("message_reference") or {}).get("message_id"),
            reference_guild_id=None if guild is None else guild.id,
        )
        if nonce is not None:
            self._nonces[nonce_key] = message
        self.record_sent(message)
        if guild is None:
            self._broadcast("MESSAGE_CREATE", message)
        else:
            # The REST answer has neither; the gateway's MESSAGE_CREATE has both.
            member = guild.member(None)
            self._broadcast("MESSAGE_CREATE", {**message, "guild_id": guild.id, "member": member})
        return _json(message, 200, headers)

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
            "timestamp": _timestamp(),
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

    # --- the control API -----------------------------------------------------------------

    async def inject(self, payload: dict[str, Any]) -> dict[str, Any]:
        """A user posts (or, with ``edit``: edits) a message the bots can see.

        Payload: ``channel_id`` and ``content``; optional ``author_id``,
        ``username``, ``guild_id`` (default ``DEFAULT_GUILD_ID``; ``null`` for
        a DM), ``reply_to``, ``attachments`` (Discord attachment objects) and
        ``edit`` (the id of an earlier message: a MESSAGE_UPDATE instead). A
        channel seen for the first time joins that guild (CHANNEL_CREATE), a
        guild seen for the first time is joined (GUILD_CREATE).

        Raises:
            FaultError: bad arguments, or no message to edit.
        """
        channel_id = str(payload.get("channel_id", ""))
        content = payload.get("content", "")
        if not channel_id.isdigit() or not isinstance(content, str):
            raise FaultError("inject needs a numeric 'channel_id' and a string 'content'")
        edit = payload.get("edit")
        if edit is not None:
            original = self._messages.get(str(edit))
            if original is None:
                raise FaultError(f"inject: no message {edit!r} to edit")
            original.update(
                content=content,
                edited_timestamp=_timestamp(),
            )
            self._broadcast("MESSAGE_UPDATE", original)
            return original
        author = {
            "id": str(payload.get("author_id", DEFAULT_AUTHOR_ID)),
            "username": str(payload.get("username", "user")),
            "discriminator": "0",
            "global_name": None,
            "avatar": None,
            "public_flags": 0,
        }
        guild_id = payload.get("guild_id", DEFAULT_GUILD_ID)
        guild = None if guild_id is None else self._ensure_channel(str(guild_id), channel_id)
        message = self._message(
            channel_id=channel_id,
            content=content,
            author=author,
            guild_id=None if guild is None else guild.id,
            reply_to=payload.get("reply_to"),
            attachments=payload.get("attachments"),
        )
        if guild is not None:
            message["member"] = guild.member(None)
        self._broadcast("MESSAGE_CREATE", message)
        return message

    def _guild_of(self, channel_id: str) -> _Guild | None:
        for guild in self.guilds.values():
            if channel_id in guild.channels:
                return guild
        return None

    def _ensure_channel(self, guild_id: str, channel_id: str) -> _Guild:
        """The guild holding ``channel_id``; the bot joins it and the channel is created,
        with the GUILD_CREATE / CHANNEL_CREATE dispatches Discord sends, when new."""
        guild = self._guild_of(channel_id)
        if guild is not None:
            return guild
        guild = self.guilds.get(guild_id)
        if guild is None:
            guild = self.guilds[guild_id] = _Guild(id=guild_id, joined_at=_timestamp())
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

    def _guild_sessions(self) -> list[_Session]:
        return [s for s in self.sessions.values() if not s.invalid and s.intents & Intents.GUILDS]

    async def platform_fault(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Apply a Discord fault (see the module docstring)."""
        kind = payload.get("kind")
        links = list(self._links)
        if kind == "drop":
            for link in links:
                link.push("drop")
        elif kind == "close":
            code = payload.get("code")
            if not isinstance(code, int) or not 1000 <= code <= 4999:
                raise FaultError("close needs an integer 'code' (1000-4999)")
            for link in links:
                self._close(link, code, str(payload.get("reason", "emulated close")))
        elif kind == "reconnect":
            for link in links:
                link.push("frame", {"op": int(Op.RECONNECT), "d": None, "s": None, "t": None})
        elif kind == "invalid_session":
            resumable = bool(payload.get("resumable", False))
            for link in links:
                if link.session is not None and not resumable:
                    link.session.invalid = True
                frame = {"op": int(Op.INVALID_SESSION), "d": resumable, "s": None, "t": None}
                link.push("frame", frame)
        elif kind == "withhold_acks":
            for link in links:
                link.withhold_acks = bool(payload.get("enabled", True))
        elif kind == "ip_block":
            duration = payload.get("duration")
            if not isinstance(duration, int | float) or duration <= 0:
                raise FaultError("ip_block needs a positive number 'duration' (seconds)")
            self.ip_blocked_until = trio.current_time() + float(duration)
        elif kind == "delete_channel":
            self.deleted_channels.add(str(payload.get("channel_id")))
        else:
            return await super().platform_fault(payload)
        return {"applied": kind, "sockets": len(links)}

    # --- the gateway --------------------------------------------------------------------

    def _broadcast(self, name: str, message: dict[str, Any]) -> None:
        for session in list(self.sessions.values()):
            if session.invalid:
                continue
            needed = Intents.GUILD_MESSAGES if "guild_id" in message else Intents.DIRECT_MESSAGES
            if not session.intents & needed:
                continue
            data = dict(message)
            is_own = message["author"]["id"] == session.user_id
            if not session.intents & Intents.MESSAGE_CONTENT and not is_own:
                data["content"] = ""
            self._dispatch(session, name, data)

    def _dispatch(self, session: _Session, name: str, data: dict[str, Any]) -> None:
        session.seq += 1
        frame = {"op": int(Op.DISPATCH), "t": name, "s": session.seq, "d": data}
        session.backlog.append(frame)
        self.stats["dispatched"] += 1
        if session.link is not None:
            session.link.push("frame", frame)

    def _close(self, link: _Link, code: int, reason: str) -> None:
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
        link = _Link(
            outbox=send,
            netloc=websocket.url.netloc,
            compress=params.get("compress") == "zlib-stream",
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
            if link.session is not None and link.session.link is link:
                link.session.link = None

    async def _writer(
        self,
        websocket: WebSocket,
        link: _Link,
        receive: trio.MemoryReceiveChannel[tuple[Any, ...]],
    ) -> None:
        deflate = zlib.compressobj() if link.compress else None
        async for item in receive:
            if item[0] == "drop":
                return  # the app ends without a close: hypercorn closes with 1011
            if item[0] == "close":
                await websocket.close(item[1], item[2])
                return
            text = json.dumps(item[1], separators=(",", ":"))
            if deflate is not None:
                data = deflate.compress(text.encode()) + deflate.flush(zlib.Z_SYNC_FLUSH)
                await websocket.send_bytes(data)
            else:
                await websocket.send_text(text)

    async def _reader(self, websocket: WebSocket, link: _Link) -> None:
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
                if link.session is not None and code in (1000, 1001):
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

    def _handle(self, link: _Link, op: Any, d: Any) -> bool:
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

    def _members_chunk(self, session: _Session, d: Any) -> None:
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

    def _identify(self, link: _Link, d: Any) -> bool:
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
        session = _Session(id=uuid.uuid4().hex, token=token, user_id=user_id, intents=intents)
        self.sessions[session.id] = session
        session.link = link
        link.session = session
        ready = {
            "v": 10,
            "user": self._bot_user(token),
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

    def _resume(self, link: _Link, d: Any) -> bool:
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
        for frame in replay:
            link.push("frame", frame)
        self._dispatch(session, "RESUMED", {})
        return True
