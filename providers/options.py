"""Provider and emulator options checked before anything runs (``switchboard check``).

Design:
- A channel's ``options`` are read by its provider when the channel opens;
  a bad one used to surface only then, as a traceback on every restart
  (Discord ``intents = "all"``), while ``check`` passed the file. So each
  provider's own reading of its options runs here too, on the merged
  options of a channel, and what it refuses becomes a problem for the
  config; nothing connects and no credential is needed (placeholders stand
  in for them: whether credentials are present is the config's own rule).
- Emulator options are the keyword arguments of the emulator class: an
  unknown name is refused with the known ones, and the class is built once
  with them, so a value it refuses is refused here.
- Providers are imported lazily, by name (:mod:`providers.registry`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, Final

from .base import ChannelConfig, FatalError
from .registry import EMULATORS, load

__all__ = ["discord_compress", "discord_intents", "emulator_problems", "option_problems"]

_PLACEHOLDER: Final = "placeholder-for-check"
MAX_INTENTS: Final = 2**53  # far above every intent bit Discord defines


def discord_intents(options: Mapping[str, Any], default: int) -> int:
    """The gateway intents of a Discord channel's options.

    Raises:
        FatalError: ``intents`` is not a whole number from 0 (a bit set).
    """
    value = options.get("intents", default)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < MAX_INTENTS:
        raise FatalError(
            f"options.intents is {value!r}; expected the gateway intents as a whole number "
            "(a bit set, e.g. 33281 for guilds, guild messages, direct messages and "
            "message content)"
        )
    return value


def discord_compress(options: Mapping[str, Any], default: str | None) -> str | None:
    """The gateway transport compression of a Discord channel's options (``None``: off).

    Raises:
        FatalError: not one of the compressions Discord offers, nor ``"none"``.
    """
    from .discord.compress import COMPRESSIONS

    value = options.get("compress", default)
    if value == "none" or value is None:
        return None
    if value not in COMPRESSIONS:
        raise FatalError(
            f"options.compress is {value!r}; use one of {', '.join(COMPRESSIONS)} or none"
        )
    return str(value)


def _discord(options: Mapping[str, Any]) -> None:
    discord_intents(options, 0)
    discord_compress(options, None)


def _telegram(options: Mapping[str, Any]) -> None:
    from .telegram.core import parse_options

    parse_options(options, {"webhook_secret": _PLACEHOLDER})


def _whatsapp(options: Mapping[str, Any]) -> None:
    from .whatsapp.core import WhatsAppSettings

    credentials = dict.fromkeys(("token", "app_secret", "verify_token"), _PLACEHOLDER)
    filled = {"phone_number_id": _PLACEHOLDER, **options}  # a missing one is reported elsewhere
    config = ChannelConfig(
        channel_id="check", provider="whatsapp", credentials=credentials, options=filled
    )
    WhatsAppSettings.from_config(config)


def _websocket(options: Mapping[str, Any]) -> None:
    from .websocket.shell import parse_options

    parse_options(options)


_CHECKS: Final[Mapping[str, Callable[[Mapping[str, Any]], None]]] = {
    "discord": _discord,
    "telegram": _telegram,
    "whatsapp": _whatsapp,
    "websocket": _websocket,
}


def option_problems(provider: str, options: Mapping[str, Any]) -> list[str]:
    """What ``provider`` would refuse in a channel's (merged) ``options``.

    Args:
        provider: the provider name (one without a check, ``simulated``, takes any).
        options: the channel's options over its provider defaults'.

    Returns:
        One message per refusal, in the provider's words; empty when fine.
    """
    check = _CHECKS.get(provider)
    if check is None:
        return []
    try:
        check(options)
    except FatalError as exc:
        return [str(exc)]
    except (TypeError, ValueError) as exc:  # a provider's reading that is not yet mapped
        return [f"invalid options: {exc}"]
    return []


def emulator_problems(platform: str, options: Mapping[str, Any]) -> list[tuple[str, str]]:
    """What the ``platform`` emulator would refuse in its ``options``: ``(key, message)``.

    The key is ``""`` for a refusal of the options as a whole.
    """
    if platform not in EMULATORS:
        return []  # an unknown emulator is reported by the config's own rule
    emulator = load(EMULATORS, platform)
    parameters = inspect.signature(emulator).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    known = [
        name
        for name, p in parameters.items()
        if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    unknown = [(key, known) for key in options if key not in known and not takes_any]
    if unknown:
        return [
            (key, f"unknown option {key!r}; the {platform} emulator takes {', '.join(names)}")
            for key, names in unknown
        ]
    try:
        emulator(**options)
    except Exception as exc:  # the emulator's own refusal, in its words, never a traceback
        return [("", f"the {platform} emulator refused its options: {exc}")]
    return []
