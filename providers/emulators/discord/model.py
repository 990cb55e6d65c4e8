"""The Discord objects the emulator hands out: users, the guild and its channels.

Design:
- Plain data and pure functions, no I/O: the REST routes and the gateway both
  build their payloads from here, so a user or a guild looks the same on both.
- A bot's user id is the one its token encodes (a Discord token's first part
  is the base64 of the bot's user id); a token that encodes none (a test's
  ``"compat-token"``) gets a stable id derived from it. The bot's application
  shares that id, as on Discord.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from typing import Any, Final

import attrs

__all__ = [
    "APPLICATION_FLAGS",
    "DEFAULT_AUTHOR_ID",
    "DEFAULT_GUILD_ID",
    "OWNER",
    "OWNER_ID",
    "Bucket",
    "Guild",
    "bot_user",
    "own_user",
    "timestamp",
    "token_for",
    "user_id_for",
]

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


@attrs.define(eq=False)
class Guild:
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
            "application_id": None,  # always present; null unless a bot created the guild
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


def timestamp() -> str:
    """Now, as Discord writes timestamps."""
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000+00:00", time.gmtime())


@attrs.define
class Bucket:
    """A fixed-window rate-limit bucket: a route's per channel, or a token's global one."""

    remaining: int
    reset_at: float


def user_id_for(token: str) -> str:
    """The bot user id ``token`` encodes, or a stable one derived from it."""
    first = token.split(".", 1)[0]
    try:
        decoded = base64.b64decode(first + "=" * (-len(first) % 4), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        decoded = ""
    if decoded.isdigit() and "." in token:
        return decoded
    return str(int(hashlib.sha256(token.encode()).hexdigest()[:14], 16))


def token_for(user_id: str, secret: str = "emulated") -> str:
    """A token in Discord's shape for the bot ``user_id``: ``base64(id).stamp.hmac``."""
    encoded = base64.b64encode(user_id.encode()).decode().rstrip("=")
    mac = hashlib.sha256(f"{user_id}:{secret}".encode()).hexdigest()[:27]
    return f"{encoded}.GemuAA.{mac}"


def bot_user(token: str) -> dict[str, Any]:
    """The user object of the bot that ``token`` belongs to."""
    user_id = user_id_for(token)
    return {
        "id": user_id,
        "username": f"bot-{user_id[-4:]}",
        "discriminator": "0",
        "global_name": None,
        "avatar": None,
        "bot": True,
        "flags": 0,
        "public_flags": 0,
        "banner": None,
        "accent_color": None,
    }


def own_user(token: str) -> dict[str, Any]:
    """The bot's user as ``GET /users/@me`` and READY show it (``UserPIIResponse``)."""
    return {
        **bot_user(token),
        "mfa_enabled": False,
        "locale": "en-US",
        "premium_type": 0,
        "verified": True,
        "email": None,
    }
