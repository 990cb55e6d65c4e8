"""How a channel's entry, its provider's defaults and the platform's limits combine."""

from __future__ import annotations

import attrs
import pytest
import trio
import trio.testing

from actors import ChannelSettings, ExponentialBackoff
from actors.channel import ChannelMemory
from actors.channel.durable import export_state, refill_window
from actors.ratelimit import CompositeLimiterState, GCRAState, KeyedLimiterState
from providers.base import PlatformLimits
from providers.simulated import SimulatedProvider
from runtime import open_node
from runtime.channels import (
    UNLIMITED,
    channel_config,
    channel_settings,
    effective_limits,
    overrides_settings,
)
from runtime.config.model import BackoffConfig, ChannelSpec, ProviderDefaults, RateLimitConfig
from tests.support import CEILING
from tests.test_node_embedded import node_config, sim, wait_connected

PLATFORM = PlatformLimits(
    per_channel_rate=30.0,
    per_channel_burst=30,
    per_peer_rate=1.0,
    per_peer_burst=1,
    max_text_length=4096,
)


def test_channel_overrides_win_over_provider_defaults_over_the_platform() -> None:
    defaults = RateLimitConfig(per_channel_rate=20.0, per_peer_burst=3)
    override = RateLimitConfig(per_channel_rate=5.0, max_text_length=100)
    limits = effective_limits(PLATFORM, defaults, override)
    assert limits == PlatformLimits(
        per_channel_rate=5.0,
        per_channel_burst=30,
        per_peer_rate=1.0,
        per_peer_burst=3,
        max_text_length=100,
    )


@pytest.mark.parametrize("where", ["defaults", "channel"])
def test_limits_can_be_turned_off_at_either_layer(where: str) -> None:
    off = RateLimitConfig(enabled=False)
    limits = (
        effective_limits(PLATFORM, off, None)
        if where == "defaults"
        else effective_limits(PLATFORM, RateLimitConfig(per_channel_rate=2.0), off)
    )
    assert limits.per_channel_rate == UNLIMITED
    assert limits.per_peer_rate == UNLIMITED
    assert limits.max_text_length == 4096  # a platform's length limit is not a rate limit


def test_settings_merge_backoff_field_by_field() -> None:
    spec = ChannelSpec(
        id="c",
        provider="telegram",
        backoff=BackoffConfig(cap=9.0),
        send_attempts=2,
    )
    defaults = ProviderDefaults(
        backoff=BackoffConfig(base=0.5, reset_after=12.0, max_attempts=7),
        liveness_timeout=33.0,
        send_attempts=4,
    )
    settings = channel_settings(spec, defaults, PLATFORM, base=ChannelSettings())
    assert settings.reconnect == ExponentialBackoff(base=0.5, cap=9.0)
    assert settings.reset_after == 12.0
    assert settings.max_reconnects == 7
    assert settings.liveness_timeout == 33.0
    assert settings.send_attempts == 2
    assert settings.limits == PLATFORM


def test_settings_without_overrides_are_the_library_defaults_with_platform_limits() -> None:
    base = ChannelSettings()
    settings = channel_settings(ChannelSpec(id="c", provider="discord"), None, PLATFORM, base=base)
    assert settings.reconnect == base.reconnect
    assert settings.send_attempts == base.send_attempts
    assert settings.limits == PLATFORM


def test_config_merges_options_and_lets_the_node_supply_url_and_credentials() -> None:
    spec = ChannelSpec(
        id="wa",
        tenant="acme",
        provider="whatsapp",
        credentials={"token": "from-file"},
        options={"phone_number_id": "1", "x": "channel"},
    )
    defaults = ProviderDefaults(base_url="https://graph", options={"x": "default", "y": 2})
    plain = channel_config(spec, defaults)
    assert plain.base_url == "https://graph"
    assert dict(plain.options) == {"phone_number_id": "1", "x": "channel", "y": 2}
    assert dict(plain.credentials) == {"token": "from-file"}
    assert plain.tenant == "acme"
    emulated = channel_config(
        spec,
        defaults,
        base_url="http://127.0.0.1:9",
        credentials={"token": "made-up"},
        extra_options={"webhook_url": "http://node"},
    )
    assert emulated.base_url == "http://127.0.0.1:9"
    assert dict(emulated.credentials) == {"token": "made-up"}
    assert emulated.options["webhook_url"] == "http://node"
    assert "from-file" not in repr(emulated)


def test_the_send_window_comes_from_the_channel_then_the_provider_defaults() -> None:
    spec = ChannelSpec(id="wa", provider="whatsapp")
    assert channel_config(spec, None).send_window is None  # the platform's default
    defaults = ProviderDefaults(send_window=40)
    assert channel_config(spec, defaults).send_window == 40
    own = ChannelSpec(id="wa", provider="whatsapp", send_window=3)
    assert channel_config(own, defaults).send_window == 3


def test_a_channel_with_limits_off_keeps_no_limiter_state() -> None:
    limits = effective_limits(PLATFORM, RateLimitConfig(enabled=False), None)
    memory = ChannelMemory(limits, ChannelSettings())
    limiter = memory.limiter
    for i in range(1_000):  # a broadcast: a thousand recipients, two messages each
        assert limiter.delay(10.0, key=f"peer-{i}") == 0.0
        assert limiter.try_acquire(10.0, key=f"peer-{i}")
        assert limiter.try_acquire(10.0, key=f"peer-{i}")
    assert not memory.limiter_made  # it read the limiter every such channel shares
    exported = export_state(memory, now=10.0, clock_offset=0.0).limiter
    assert exported == CompositeLimiterState(parts=(GCRAState(), KeyedLimiterState()))
    assert refill_window(limits) == 0.0  # a crash's restore holds nothing back
    # The platform's own pauses still hold: a recipient's 429, then the channel's,
    # in a limiter of the channel's own; the shared one stays free.
    memory.own_limiter().pause_until(12.0, key="peer-7")
    assert not memory.limiter.try_acquire(11.0, key="peer-7")
    assert memory.limiter.try_acquire(11.0, key="peer-8")
    memory.own_limiter().pause_until(13.0)
    assert memory.limiter.delay(11.0, key="peer-8") == 2.0
    assert limiter.delay(11.0, key="peer-8") == 0.0 and limiter.untouched
    # With limits on, the same sends leave a schedule per recipient behind.
    limited = ChannelMemory(PLATFORM, ChannelSettings())
    assert limited.limiter.try_acquire(10.0, key="peer-1")
    assert export_state(limited, now=10.0, clock_offset=0.0).limiter.parts[1] != KeyedLimiterState()


@pytest.mark.parametrize(
    "override",
    [
        {"backoff": BackoffConfig(base=2.0)},
        {"rate_limit": RateLimitConfig(per_channel_rate=3.0)},
        {"send_attempts": 2},
        {"liveness_timeout": 30.0},
    ],
)
def test_a_channel_overrides_settings_only_with_a_field_they_read(override: dict) -> None:
    plain = ChannelSpec(id="a", provider="discord")
    other = ChannelSpec(id="b", provider="discord", tenant="t2", options={"x": 1})
    assert not overrides_settings(plain) and not overrides_settings(other)
    defaults = ProviderDefaults(send_attempts=4)
    # What a node shares among the channels that override nothing is theirs.
    assert channel_settings(plain, defaults, PLATFORM) == channel_settings(
        other, defaults, PLATFORM
    )
    spec = ChannelSpec(id="c", provider="discord", **override)
    assert overrides_settings(spec)
    assert channel_settings(spec, defaults, PLATFORM) != channel_settings(plain, defaults, PLATFORM)


async def test_a_node_shares_one_settings_object_among_channels_that_override_none(
    autojump_clock: trio.testing.MockClock,
) -> None:
    channels = [sim("a"), sim("b"), {**sim("c"), "send_attempts": 2}]
    with trio.fail_after(CEILING):
        async with open_node(
            node_config(channels), providers={"simulated": SimulatedProvider()}
        ) as node:
            await wait_connected(node, 3)
            a, b, c = (node._table.get(i).channel.ref._instance.settings for i in "abc")
            assert a is b  # one frozen object, not one per channel
            assert c is not a and c.send_attempts == 2
            assert attrs.evolve(c, send_attempts=a.send_attempts) == a
