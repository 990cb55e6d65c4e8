"""The Discord provider: gateway v10 for inbound events, REST v10 for sending.

Layout: :mod:`.wire` (opcodes, intents, payload shapes), :mod:`.gateway`
(the sans-IO gateway state machine), :mod:`.rest` (sans-IO requests, buckets
and status mapping) and :mod:`.shell` (the thin trio I/O around them).
"""

from .gateway import GatewayCore, GatewayState
from .shell import DISCORD_LIMITS, DiscordConnection, DiscordProvider
from .wire import DEFAULT_INTENTS, Intents

__all__ = [
    "DEFAULT_INTENTS",
    "DISCORD_LIMITS",
    "DiscordConnection",
    "DiscordProvider",
    "GatewayCore",
    "GatewayState",
    "Intents",
]
