"""Provider and emulator names, resolved lazily so unused adapters are never imported."""

from __future__ import annotations

import importlib
from typing import Any, Final

__all__ = ["EMULATORS", "PROVIDERS", "load"]

PROVIDERS: Final = {
    "discord": "providers.discord:DiscordProvider",
    "telegram": "providers.telegram:TelegramProvider",
    "whatsapp": "providers.whatsapp:WhatsAppProvider",
    "websocket": "providers.websocket:WebSocketProvider",
    "simulated": "providers.simulated:SimulatedProvider",
}

EMULATORS: Final = {
    "discord": "providers.emulators.discord:DiscordEmulator",
    "telegram": "providers.emulators.telegram:TelegramEmulator",
    "whatsapp": "providers.emulators.whatsapp:WhatsAppEmulator",
    "websocket": "providers.emulators.websocket:WebSocketEmulator",
}


def load(table: dict[str, str], name: str) -> Any:
    """The class registered as ``name`` in ``table``.

    Raises:
        KeyError: unknown name (the message lists the known ones).
    """
    try:
        target = table[name]
    except KeyError:
        raise KeyError(f"unknown name {name!r}; known: {', '.join(sorted(table))}") from None
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)
