"""Latency histograms and per-channel series that stay opt-in at scale.

The histograms are checked in virtual time against a simulated platform
whose delays are fixed, so every observation lands in a known bucket.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import trio
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from actors import ChannelStatus
from providers.simulated import Fixed, SimulatedProvider
from runtime import open_node
from runtime.config import MetricsConfig
from runtime.ops import WebhookCounters, ops_registry
from runtime.ops.metrics import _CHANNEL_COUNTERS, _CHANNEL_GAUGES
from runtime.telemetry.histograms import LATENCY_BUCKETS, Histogram
from runtime.view import TOTAL_FIELDS, totals_of

from .support import CEILING
from .test_node_embedded import FAST, message, node_config, sim

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(node: Any, metrics: MetricsConfig | None = None) -> Samples:
    text = generate_latest(ops_registry(node, WebhookCounters(), metrics=metrics)).decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


def test_buckets_resolve_a_millisecond_to_thirty_seconds() -> None:
    assert LATENCY_BUCKETS[0] == 0.001 and LATENCY_BUCKETS[-1] == 30.0
    assert list(LATENCY_BUCKETS) == sorted(LATENCY_BUCKETS)
    # No bucket spans more than a factor 3: a decade takes three or four.
    assert all(b / a <= 3.0 for a, b in itertools.pairwise(LATENCY_BUCKETS))


def test_a_value_on_a_bound_counts_in_that_bucket_as_le_says() -> None:
    histogram = Histogram((0.001, 0.01, 1.0))
    for value in (0.0005, 0.001, 0.0011, 0.01, 0.5, 1.0, 31.0):
        histogram.observe(value)
    snapshot = histogram.snapshot("send", "p")
    assert snapshot.cumulative == (2, 4, 6, 7)
    assert snapshot.count == 7
    assert snapshot.total == pytest.approx(0.0005 + 0.001 + 0.0011 + 0.01 + 0.5 + 1.0 + 31.0)
    with pytest.raises(ValueError, match="ascend"):
        Histogram((1.0, 0.5))


async def test_send_connect_inbound_and_flush_times_reach_metrics_per_provider(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = SimulatedProvider(latency=Fixed(seconds=0.2), connect_latency=Fixed(seconds=0.04))
    config = node_config([sim("a"), sim("b", tenant="globex")])
    with trio.fail_after(CEILING):
        async with open_node(
            config, channel_defaults=FAST, providers={"simulated": provider}
        ) as node:
            with node.subscribe(kind="state") as changes:
                while sum(s.status is ChannelStatus.CONNECTED for s in node.channels()) < 2:
                    await changes.receive()
            for i in range(3):
                await node.send("a", message(f"k{i}"))
            with node.subscribe(kind="inbound") as inbound:
                provider.inject("b", "one")
                provider.inject("b", "two")
                for _ in range(2):
                    await inbound.receive()
            await node.store.flush()
            got = scrape(node)
    send = {"provider": "simulated"}
    bucket = "switchboard_send_latency_seconds_bucket"
    assert got[key(bucket, le="0.1", **send)] == 0
    assert got[key(bucket, le="0.25", **send)] == 3
    assert got[key(bucket, le="+Inf", **send)] == 3
    assert got[key("switchboard_send_latency_seconds_count", **send)] == 3
    assert got[key("switchboard_send_latency_seconds_sum", **send)] == pytest.approx(0.6)
    connect = "switchboard_connect_seconds_bucket"
    assert got[key(connect, le="0.025", **send)] == 0
    assert got[key(connect, le="0.05", **send)] == 2
    assert got[key("switchboard_connect_seconds_sum", **send)] == pytest.approx(0.08)
    assert got[key("switchboard_inbound_delivery_seconds_count", **send)] == 2
    assert got[key("switchboard_store_flush_seconds_count", backend="memory")] >= 1
    # Every bucket from 1 ms to 30 s is there, and +Inf.
    les = {
        dict(labels)["le"]
        for name, labels in got
        if name == bucket and dict(labels)["provider"] == "simulated"
    }
    assert les == {*(repr(b) for b in LATENCY_BUCKETS), "+Inf"}


async def test_per_channel_series_are_opt_in_above_a_channel_count(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = SimulatedProvider()
    config = node_config([sim("a"), sim("b"), sim("c", tenant="globex")])
    with trio.fail_after(CEILING):
        async with open_node(
            config, channel_defaults=FAST, providers={"simulated": provider}
        ) as node:
            with node.subscribe(kind="state") as changes:
                while sum(s.status is ChannelStatus.CONNECTED for s in node.channels()) < 3:
                    await changes.receive()
            await node.send("a", message("k1"))
            await node.send("b", message("k2"))
            await node.send("c", message("k3"))
            small = scrape(node)  # default: auto, up to 1,000 channels
            large = scrape(node, MetricsConfig(per_channel_limit=2))
            never = scrape(node, MetricsConfig(per_channel="never"))
            always = scrape(node, MetricsConfig(per_channel="always", per_channel_limit=0))

    def channel_series(samples: Samples) -> set[str]:
        return {name for name, _ in samples if name.startswith("switchboard_channel_")}

    assert channel_series(small) and channel_series(always)
    assert channel_series(large) == channel_series(never) == set()
    assert small[key("switchboard_metrics_per_channel")] == 1
    assert large[key("switchboard_metrics_per_channel")] == 0
    assert small[key("switchboard_channel_messages_sent_total", channel="a", tenant="acme",
                     provider="simulated")] == 1  # fmt: skip
    for samples in (small, large):
        acme = {"tenant": "acme", "provider": "simulated"}
        globex = {"tenant": "globex", "provider": "simulated"}
        assert samples[key("switchboard_messages_sent_total", **acme)] == 2
        assert samples[key("switchboard_messages_sent_total", **globex)] == 1
        assert samples[key("switchboard_channels_connected", **acme)] == 2
        assert samples[key("switchboard_channels_connected", **globex)] == 1
    # Aggregated, the series do not grow with the channels: 2 label sets here.
    assert {labels for name, labels in large if name == "switchboard_messages_sent_total"} == {
        frozenset({"tenant": "acme", "provider": "simulated"}.items()),
        frozenset({"tenant": "globex", "provider": "simulated"}.items()),
    }


def test_the_aggregate_families_follow_the_totals_fields() -> None:
    attributes = [attribute for *_, attribute in _CHANNEL_COUNTERS]
    assert [*attributes, "dead_letters", "mailbox_depth", "connected"] == list(TOTAL_FIELDS)
    assert len(_CHANNEL_GAUGES) == 3


async def test_the_nodes_own_totals_equal_summing_its_snapshots(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = SimulatedProvider()
    config = node_config(
        [sim("a"), sim("b"), sim("c", tenant="globex"), sim("d")],
        providers={"simulated": {"max_connections": 3, "rate_limit": {"enabled": False}}},
    )
    with trio.fail_after(CEILING):
        async with open_node(
            config, channel_defaults=FAST, providers={"simulated": provider}
        ) as node:
            with node.subscribe(kind="state") as changes:
                while sum(s.status is ChannelStatus.CONNECTED for s in node.channels()) < 3:
                    await changes.receive()
            await node.send("a", message("k1"))
            provider.inject("c", "hi")
            await node.stop_channel("b")
            await trio.sleep(1)
            totals = node.channel_totals()
            assert totals == totals_of(node.channels())
    assert totals.channels == 3  # b was stopped: no longer asked for
    assert totals.states[("simulated", None)] == 1  # d: over max_connections
    assert totals.sums[("acme", "simulated")][0] == 1  # a sent one
    assert totals.sums[("globex", "simulated")][2] == 1  # c received one
