"""The emulated Discord: REST and gateway on one port, the control API, faults.

Design:
- The package splits by concept: ``model`` (users, guilds, channels),
  ``state`` (sessions, sockets, dispatch), ``rest`` (the REST routes),
  ``gateway`` (the gateway sockets); :class:`DiscordEmulator` puts the routes
  together and adds what the base emulator asks of a platform: injects and
  faults. The package docstring describes the behaviour.
"""

from __future__ import annotations

from typing import Any

import trio
from starlette.routing import BaseRoute

from ...discord.wire import Op
from ..base import FaultError
from .gateway import DiscordGateway
from .model import DEFAULT_AUTHOR_ID, DEFAULT_GUILD_ID, timestamp
from .rest import DiscordRest

__all__ = ["DiscordEmulator"]


class DiscordEmulator(DiscordRest, DiscordGateway):
    """Discord's REST and gateway, faithful enough for a real client library.

    Args:
        heartbeat_interval: seconds announced in Hello (tests use tiny values).
        heartbeat_timeout: seconds without a heartbeat before close 4009
            (default: 1.5 intervals plus one second of slack).
        session_start_total: identifies per day (``session_start_limit``).
        gateway_send_limit: (frames, seconds) a client may send per socket.
        message_bucket: (requests, seconds) per channel on the send route.
        global_limit: (requests, seconds) per bot token over every REST route,
            a fixed window from the token's first request (Discord's global
            rate limit, 50 per second).
        allowed_privileged_intents: privileged intents this bot may request
            (others close with 4014).
        tokens: the valid bot tokens (``None``: any non-empty token).
    """

    name = "discord"

    def __repr__(self) -> str:
        return (
            f"<DiscordEmulator [sockets={len(self._links)} sessions={len(self.sessions)} "
            f"sent={len(self.sent)} heartbeat={self.heartbeat_interval:g}s]>"
        )

    def platform_routes(self) -> list[BaseRoute]:
        """Discord's REST paths and the gateway sockets."""
        return self._rest_routes() + self._gateway_routes()

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
                edited_timestamp=timestamp(),
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
