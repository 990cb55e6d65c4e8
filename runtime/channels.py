"""From a channel's entry in the deployment file to what its actor needs.

Design: a channel's effective settings are its provider's defaults
(``[providers.<name>]``) overlaid field by field with the channel's own
overrides, over the platform's built-in limits. This module is pure: it
merges config records into a ``ChannelConfig`` (what the provider sees) and
a ``ChannelSettings`` (what the actor does), so the rules are tested without
a node.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import attrs

from actors import ChannelSettings, ExponentialBackoff
from providers.base import UNLIMITED, ChannelConfig, PlatformLimits

from .config.model import BackoffConfig, ChannelSpec, ProviderDefaults, RateLimitConfig

__all__ = [
    "UNLIMITED",
    "channel_config",
    "channel_settings",
    "effective_limits",
    "overrides_settings",
]


_T = TypeVar("_T")


def channel_config(
    spec: ChannelSpec,
    defaults: ProviderDefaults | None,
    *,
    base_url: str | None = None,
    credentials: Mapping[str, str] | None = None,
    extra_options: Mapping[str, Any] | None = None,
) -> ChannelConfig:
    """The provider's view of a channel.

    Args:
        spec: the channel's entry.
        defaults: its provider's defaults, if the file has any.
        base_url: wins over the spec's and the defaults' (an emulator's URL).
        credentials: win over the spec's (made-up ones for an emulator).
        extra_options: options the node adds (a webhook URL), under the spec's.
    """
    defaults = defaults or ProviderDefaults()
    options = {**defaults.options, **(extra_options or {}), **spec.options}
    return ChannelConfig(
        channel_id=spec.id,
        tenant=spec.tenant,
        provider=spec.provider,
        credentials=dict(credentials if credentials is not None else spec.credentials),
        base_url=base_url or spec.base_url or defaults.base_url,
        options=options,
        send_window=_pick_optional(spec.send_window, defaults.send_window),
    )


def effective_limits(
    platform: PlatformLimits, defaults: RateLimitConfig | None, override: RateLimitConfig | None
) -> PlatformLimits:
    """The platform's limits with the provider defaults' and the channel's overrides on top."""
    limits = platform
    for layer in (defaults, override):
        if layer is None:
            continue
        if not layer.enabled:
            return PlatformLimits(
                per_channel_rate=UNLIMITED,
                per_channel_burst=int(UNLIMITED),
                per_peer_rate=UNLIMITED,
                per_peer_burst=int(UNLIMITED),
                max_text_length=_pick(layer.max_text_length, limits.max_text_length),
            )
        limits = attrs.evolve(
            limits,
            per_channel_rate=_pick(layer.per_channel_rate, limits.per_channel_rate),
            per_channel_burst=_pick(layer.per_channel_burst, limits.per_channel_burst),
            per_peer_rate=_pick(layer.per_peer_rate, limits.per_peer_rate),
            per_peer_burst=_pick(layer.per_peer_burst, limits.per_peer_burst),
            max_text_length=_pick(layer.max_text_length, limits.max_text_length),
        )
    return limits


def channel_settings(
    spec: ChannelSpec,
    defaults: ProviderDefaults | None,
    platform: PlatformLimits,
    *,
    base: ChannelSettings | None = None,
) -> ChannelSettings:
    """The actor's settings: ``base`` (library defaults) with the file's layers on top."""
    base = base or ChannelSettings()
    defaults = defaults or ProviderDefaults()
    backoff = _merge_backoff(defaults.backoff, spec.backoff)
    reconnect = base.reconnect
    if backoff.base is not None or backoff.cap is not None:
        new_base = _pick(backoff.base, reconnect.base)
        reconnect = ExponentialBackoff(
            base=new_base, cap=max(new_base, _pick(backoff.cap, reconnect.cap))
        )
    return attrs.evolve(
        base,
        reconnect=reconnect,
        reset_after=_pick(backoff.reset_after, base.reset_after),
        max_reconnects=backoff.max_attempts
        if backoff.max_attempts is not None
        else base.max_reconnects,
        liveness_timeout=_pick_optional(
            spec.liveness_timeout, defaults.liveness_timeout, base.liveness_timeout
        ),
        limits=effective_limits(platform, defaults.rate_limit, spec.rate_limit),
        send_attempts=_pick(spec.send_attempts, _pick(defaults.send_attempts, base.send_attempts)),
    )


def overrides_settings(spec: ChannelSpec) -> bool:
    """Whether ``spec`` sets anything :func:`channel_settings` reads from it.

    A channel that does not gets its provider's settings, the same for every
    such channel: a node makes them once and shares them (they are frozen).
    """
    return (
        spec.backoff is not None
        or spec.liveness_timeout is not None
        or spec.rate_limit is not None
        or spec.send_attempts is not None
    )


def _merge_backoff(defaults: BackoffConfig, override: BackoffConfig | None) -> BackoffConfig:
    if override is None:
        return defaults
    return BackoffConfig(
        base=_pick_optional(override.base, defaults.base),
        cap=_pick_optional(override.cap, defaults.cap),
        reset_after=_pick_optional(override.reset_after, defaults.reset_after),
        max_attempts=_pick_optional(override.max_attempts, defaults.max_attempts),
    )


def _pick(value: _T | None, fallback: _T) -> _T:
    return fallback if value is None else value


def _pick_optional(*values: _T | None) -> _T | None:
    return next((value for value in values if value is not None), None)
