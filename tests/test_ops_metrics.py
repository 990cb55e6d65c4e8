"""The Prometheus collector: read from the node at scrape time, on a registry of our own."""

from __future__ import annotations

import functools
from typing import Final

import attrs
import httpx
import pytest
import trio
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from actors import ChannelStatus
from runtime.ops import CHANNEL_STATES, WebhookCounters, ops_registry, serve_ops
from runtime.ops.metrics import webhook_outcome

from .test_ops_http import FakeNode, snapshot

CEILING: Final = 15.0  # seconds of real time; only a hang gets near it


def samples(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a scrape, by (name, labels), parsed from the text format."""
    text = generate_latest(registry).decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


def busy_node() -> FakeNode:
    node = FakeNode("node-7")
    node.snapshots = [
        snapshot(
            "tg-1",
            ChannelStatus.CONNECTED,
            tenant="acme",
            mailbox_depth=3,
            sent=120,
            send_failures=4,
            received=77,
            duplicates=2,
            reconnects=5,
            rate_limit_waits=9,
            dead_letters=1,
            subscriber_drops=6,
            restarts=2,
        ),
        snapshot("tg-2", ChannelStatus.BACKING_OFF, tenant="beta", sent=8, reconnects=3),
        snapshot("wa-1", ChannelStatus.FAILED, provider="whatsapp", start_error="bad token"),
    ]
    node.stats = attrs.evolve(
        node.stats,
        started=2,
        configured=3,
        uptime=42.25,
        draining=True,
        store_pending=17,
        sends_in_flight=9,
        sends_limit=300,
        sends_refused={"loop": 4, "channel": 1},
        loop_lag=0.75,
    )
    return node


TG1: Final = {"channel": "tg-1", "tenant": "acme", "provider": "telegram"}
TG2: Final = {"channel": "tg-2", "tenant": "beta", "provider": "telegram"}
WA1: Final = {"channel": "wa-1", "tenant": "acme", "provider": "whatsapp"}


def test_channel_series_carry_each_channels_counters() -> None:
    got = samples(ops_registry(busy_node(), WebhookCounters()))
    expected = {
        "switchboard_channel_messages_sent_total": (120, 8, 0),
        "switchboard_channel_send_failures_total": (4, 0, 0),
        "switchboard_channel_messages_received_total": (77, 0, 0),
        "switchboard_channel_duplicates_total": (2, 0, 0),
        "switchboard_channel_dead_letters": (1, 0, 0),
        "switchboard_channel_reconnects_total": (5, 3, 0),
        "switchboard_channel_rate_limit_waits_total": (9, 0, 0),
        "switchboard_channel_mailbox_depth": (3, 0, 0),
        "switchboard_channel_restarts_total": (2, 0, 0),
        "switchboard_channel_subscriber_drops_total": (6, 0, 0),
        "switchboard_channel_connected": (1, 0, 0),
    }
    for name, values in expected.items():
        assert (
            got[key(name, **TG1)],
            got[key(name, **TG2)],
            got[key(name, **WA1)],
        ) == values, name


def test_channels_by_state_list_every_state_with_zeros() -> None:
    got = samples(ops_registry(busy_node(), WebhookCounters()))
    states = {
        (labels["provider"], labels["state"]): value
        for (name, frozen), value in got.items()
        if name == "switchboard_channels"
        for labels in [dict(frozen)]
    }
    assert set(states) == {(p, s) for p in ("telegram", "whatsapp") for s in CHANNEL_STATES}
    assert {pair: value for pair, value in states.items() if value} == {
        ("telegram", "connected"): 1,
        ("telegram", "backing_off"): 1,
        ("whatsapp", "not_started"): 1,
    }


def test_node_series() -> None:
    got = samples(ops_registry(busy_node(), WebhookCounters()))
    assert got[key("switchboard_node_info", node="node-7")] == 1
    assert got[key("switchboard_node_uptime_seconds")] == 42.25
    assert got[key("switchboard_node_draining")] == 1
    assert got[key("switchboard_node_channels_configured")] == 3
    assert got[key("switchboard_node_channels_started")] == 2
    assert got[key("switchboard_store_pending_events")] == 17
    assert got[key("switchboard_node_sends_in_flight")] == 9
    assert got[key("switchboard_node_sends_limit")] == 300
    assert got[key("switchboard_node_loop_lag_seconds")] == 0.75
    assert {
        scope: got[key("switchboard_node_sends_refused_total", scope=scope)]
        for scope in ("node", "channel", "loop")
    } == {"node": 0, "channel": 1, "loop": 4}


def test_webhook_counters_and_their_zero_rejections() -> None:
    webhooks = WebhookCounters()
    registry = ops_registry(FakeNode(), webhooks)
    before = samples(registry)
    for provider, reason in (("whatsapp", "signature"), ("telegram", "secret")):
        assert (
            before[key("switchboard_webhook_rejected_total", provider=provider, reason=reason)] == 0
        )
    webhooks.count("whatsapp", 200)
    webhooks.count("whatsapp", 200)
    webhooks.count("whatsapp", 403, reason="signature")
    webhooks.count("telegram", 503)
    after = samples(registry)
    requests = "switchboard_webhook_requests_total"
    assert after[key(requests, provider="whatsapp", outcome="accepted")] == 2
    assert after[key(requests, provider="whatsapp", outcome="rejected")] == 1
    assert after[key(requests, provider="telegram", outcome="unavailable")] == 1
    rejected = "switchboard_webhook_rejected_total"
    assert after[key(rejected, provider="whatsapp", reason="signature")] == 1
    assert after[key(rejected, provider="telegram", reason="secret")] == 0
    assert "requests=4 rejected=1" in repr(webhooks)


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, "accepted"),
        (204, "accepted"),
        (400, "bad_request"),
        (403, "rejected"),
        (404, "unknown_channel"),
        (413, "bad_request"),
        (503, "unavailable"),
        (500, "error"),
    ],
)
def test_webhook_outcomes(status: int, outcome: str) -> None:
    assert webhook_outcome(status) == outcome


def test_values_are_read_at_scrape_time() -> None:
    node = busy_node()
    registry = ops_registry(node, WebhookCounters())
    sent = key("switchboard_channel_messages_sent_total", **TG1)
    assert samples(registry)[sent] == 120
    node.snapshots[0] = snapshot("tg-1", ChannelStatus.CONNECTED, tenant="acme", sent=121)
    assert samples(registry)[sent] == 121
    node.snapshots.pop()
    assert key("switchboard_channel_connected", **WA1) not in samples(registry)


def test_process_metrics_are_on_our_registry_not_the_global_one() -> None:
    got = samples(ops_registry(busy_node(), WebhookCounters()))
    names = {name for name, _ in got}
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes"} <= names
    assert any(name.startswith("python_gc_") for name in names)
    assert "python_info" in names
    assert b"switchboard_" not in generate_latest(REGISTRY)
    # Two nodes in one process get two registries that do not collide.
    other = samples(ops_registry(FakeNode("node-8"), WebhookCounters()))
    assert other[key("switchboard_node_info", node="node-8")] == 1


async def test_metrics_over_http() -> None:
    node = busy_node()
    with trio.fail_after(CEILING):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(functools.partial(serve_ops, node, host="127.0.0.1", port=0))
            async with httpx.AsyncClient(base_url=url) as client:
                answer = await client.get("/metrics")
            nursery.cancel_scope.cancel()
    assert answer.status_code == 200
    assert answer.headers["content-type"] == CONTENT_TYPE_LATEST
    got = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }
    assert got[key("switchboard_channel_messages_sent_total", **TG1)] == 120
    assert got[key("switchboard_channel_connected", **TG2)] == 0
    assert got[key("switchboard_channels", provider="whatsapp", state="not_started")] == 1
    assert got[key("switchboard_node_info", node="node-7")] == 1
    assert any(name == "process_cpu_seconds_total" for name, _ in got)
