"""The configuration's vocabulary: units in values, and the rate-limit keys of PlatformLimits."""

from __future__ import annotations

import pytest

from runtime.config import ConfigError, RateLimitConfig, parse_config
from runtime.config.units import parse_duration, parse_rate

SIM = '[[channels]]\nid = "sim"\nprovider = "simulated"\n'
DURATION = 'expected a duration such as "10s", "250ms", "2m" or "1h"'
RATE = 'expected a rate such as "30/s", "20/min" or "1/6s"'


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("10s", 10.0),
        ("250ms", 0.25),
        ("2m", 120.0),
        ("2min", 120.0),
        ("1h", 3600.0),
        ("1m30s", 90.0),
        ("1h 2m", 3720.0),
        (".5s", 0.5),
        ("0s", 0.0),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["10", "s", "10 sec", "-5s", "5s10", "1d", "", "10s!"])
def test_not_durations(text: str) -> None:
    assert parse_duration(text) is None


@pytest.mark.parametrize(
    ("text", "per_second"),
    [("30/s", 30.0), ("20/min", 1 / 3), ("100/h", 100 / 3600), ("1/6s", 1 / 6), ("0.5 / s", 0.5)],
)
def test_rates(text: str, per_second: float) -> None:
    assert parse_rate(text) == pytest.approx(per_second)


@pytest.mark.parametrize("text", ["30", "/s", "30/", "5/fortnight", "30/0s", "x/s", "30s"])
def test_not_rates(text: str) -> None:
    assert parse_rate(text) is None


def test_units_in_the_file_become_seconds_and_rates_per_second() -> None:
    config = parse_config(
        '[node]\ndrain_deadline = "1m30s"\n'
        '[storage]\nflush_interval = "250ms"\n'
        '[providers.simulated.rate_limit]\nper_channel_rate = "30/s"\nper_peer_rate = "20/min"\n'
        + SIM
        + 'liveness_timeout = "1h"\nbackoff = { base = "1s", cap = "2m" }\n',
        env={},
    )
    assert config.node.drain_deadline == 90.0
    assert config.storage.flush_interval == 0.25
    limits = config.providers["simulated"].rate_limit
    assert (limits.per_channel_rate, limits.per_peer_rate) == (30.0, pytest.approx(1 / 3))
    channel = config.channels[0]
    assert channel.liveness_timeout == 3600.0
    assert channel.backoff is not None and (channel.backoff.base, channel.backoff.cap) == (1, 120)
    assert config.deprecations == ()


def test_a_bare_number_is_read_in_the_base_unit_and_reported_once() -> None:
    config = parse_config(
        "[node]\ndrain_deadline = 20\n[supervisor]\nperiod = 5.5\n"
        "[providers.simulated.rate_limit]\nper_channel_rate = 30\n",
        env={},
    )
    assert (config.node.drain_deadline, config.supervisor.period) == (20.0, 5.5)
    assert config.providers["simulated"].rate_limit.per_channel_rate == 30.0
    assert config.deprecations == (
        "3 number(s) without their unit, read as seconds (rates: per second), which is "
        'deprecated: write the unit, as in drain_deadline = "10s" or per_channel_rate = "30/s": '
        "node.drain_deadline, supervisor.period, providers.simulated.rate_limit.per_channel_rate",
    )


def test_a_number_from_the_environment_is_not_a_bare_number() -> None:
    config = parse_config('[node]\ndrain_deadline = "${env:DEADLINE}"\n', env={"DEADLINE": "30"})
    assert config.node.drain_deadline == 30.0
    assert config.deprecations == ()
    config = parse_config('[node]\ndrain_deadline = "${env:DEADLINE}"\n', env={"DEADLINE": "2m"})
    assert config.node.drain_deadline == 120.0


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('[node]\ndrain_deadline = "10 sec"\n', f'{DURATION}, got "10 sec" @ node.drain_deadline'),
        (
            '[node]\ndrain_deadline = "0s"\n',
            'expected a positive number, got "0s" @ node.drain_deadline',
        ),
        (
            SIM + 'rate_limit = { per_peer_rate = "5/fortnight" }\n',
            f'{RATE}, got "5/fortnight" @ channels[0].rate_limit.per_peer_rate',
        ),
        (
            SIM + 'rate_limit = { per_channel_rate = "30s" }\n',
            f'{RATE}, got "30s" @ channels[0].rate_limit.per_channel_rate',
        ),
        (
            SIM + 'rate_limit = { per_channel_rate = "60/min", per_peer_rate = "2/s" }\n',
            "per_peer_rate (2) is above per_channel_rate (1): no peer is sent to faster than "
            "the channel @ channels[0].rate_limit",
        ),
        (
            '[supervisor]\nrestart_backoff = { base = "1m", cap = "10s" }\n',
            "cap (10) is below base (60): the longest delay cannot be shorter than the first "
            "@ supervisor.restart_backoff",
        ),
    ],
)
def test_a_bad_unit_says_what_was_expected_and_where(text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, env={})
    assert [str(p) for p in caught.value.problems] == [problem]


def test_the_old_rate_limit_keys_are_read_under_platform_limits_names() -> None:
    config = parse_config(
        "[providers.simulated.rate_limit]\nper_second = 30\nburst = 5\n"
        + SIM
        + "rate_limit = { per_peer_per_second = 1 }\n",
        env={},
    )
    assert config.providers["simulated"].rate_limit == RateLimitConfig(
        per_channel_rate=30.0, per_channel_burst=5
    )
    assert config.channels[0].rate_limit == RateLimitConfig(per_peer_rate=1.0)
    assert config.deprecations[:3] == (
        "providers.simulated.rate_limit.per_second is deprecated: call it 'per_channel_rate' "
        "(read as providers.simulated.rate_limit.per_channel_rate)",
        "providers.simulated.rate_limit.burst is deprecated: call it 'per_channel_burst' "
        "(read as providers.simulated.rate_limit.per_channel_burst)",
        "channels[0].rate_limit.per_peer_per_second is deprecated: call it 'per_peer_rate' "
        "(read as channels[0].rate_limit.per_peer_rate)",
    )
    with pytest.raises(ConfigError, match="both 'burst' and 'per_channel_burst' are set"):
        parse_config(SIM + "rate_limit = { burst = 1, per_channel_burst = 2 }\n", env={})


def test_a_duration_from_the_command_line() -> None:
    config = parse_config("", overrides=["node.drain_deadline=30s"], env={})
    assert config.node.drain_deadline == 30.0
    assert config.deprecations == ()
