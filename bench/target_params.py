"""The ``target`` scenario's parameters (``bench/scenarios/target.toml``).

Design: plain attrs with validators; the harness turns every field into a
command-line option, with the field's ``help`` metadata as its help text.
"""

from __future__ import annotations

import math
from typing import Any, Final

import attrs

__all__ = ["TOKEN_ENV", "TargetParams"]

TOKEN_ENV: Final = "SWITCHBOARD_API_TOKEN"


def _positive(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{attribute.name}: expected a positive number, got {value!r}")


def _template(instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    try:
        value.format(n=1)
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(
            f"{attribute.name}: {value!r} is not a recipient template with {{n}} ({exc})"
        ) from None


def _template_name(instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    name, colon, language = value.partition(":")
    if value and not (colon and name.strip() and language.strip()):
        raise ValueError(
            f"{attribute.name}: expected name:language (hello_world:en_US), got {value!r}"
        )


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@attrs.frozen(kw_only=True)
class TargetParams:
    """What load to put on the deployment (``bench/scenarios/target.toml``)."""

    rate: float = attrs.field(
        default=100.0, validator=_positive, metadata=_help("requests per second, all channels")
    )
    duration: float = attrs.field(
        default=30.0, validator=_positive, metadata=_help("seconds of load")
    )
    concurrency: int = attrs.field(
        default=64,
        validator=attrs.validators.ge(1),
        metadata=_help("requests in flight at most"),
    )
    channels: list[str] = attrs.field(
        factory=list, metadata=_help("channel ids to load; empty = every connected channel")
    )
    text_bytes: int = attrs.field(
        default=64, validator=attrs.validators.ge(1), metadata=_help("characters per message")
    )
    peers: int = attrs.field(
        default=1000,
        validator=attrs.validators.ge(1),
        metadata=_help("recipients per channel, cycled (platforms limit each recipient)"),
    )
    discord_peer: str = attrs.field(
        default="{n}", validator=_template, metadata=_help("Discord channel id, {n} = 1..peers")
    )
    telegram_peer: str = attrs.field(
        default="{n}", validator=_template, metadata=_help("Telegram chat id, {n} = 1..peers")
    )
    whatsapp_peer: str = attrs.field(
        default="1650555{n:04d}",
        validator=_template,
        metadata=_help("WhatsApp phone number, {n} = 1..peers"),
    )
    whatsapp_template: str = attrs.field(
        default="hello_world:en_US",
        validator=_template_name,
        metadata=_help(
            "WhatsApp sends this template (name:language); empty = text, which only reaches "
            "users who wrote within 24 h"
        ),
    )
    websocket_peer: str = attrs.field(
        default="user-{n}", validator=_template, metadata=_help("websocket peer, {n} = 1..peers")
    )
    other_peer: str = attrs.field(
        default="user-{n}",
        validator=_template,
        metadata=_help("recipient on any other provider, {n} = 1..peers"),
    )
    timeout: float = attrs.field(
        default=10.0, validator=_positive, metadata=_help("seconds a request may take")
    )
    sample_interval: float = attrs.field(
        default=1.0,
        validator=_positive,
        metadata=_help("seconds between /metrics scrapes and per plot point"),
    )
