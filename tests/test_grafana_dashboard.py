"""``config/grafana-dashboard.json``: every expression names a metric the node exports.

The exported names come from a scrape of a real node (simulated channels
that have sent, received and connected, so every family has samples), with
the sample names each family type implies (``_total``; ``_bucket``,
``_sum``, ``_count``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from actors import ChannelStatus
from providers.simulated import SimulatedProvider
from runtime import open_node
from runtime.ops import WebhookCounters, ops_registry

from .support import CEILING
from .test_node_embedded import FAST, message, node_config, sim

DASHBOARD = Path(__file__).resolve().parent.parent / "config" / "grafana-dashboard.json"

# PromQL's own words: functions, aggregations, modifiers; anything else bare is a metric.
_PROMQL = frozenset(
    {
        *("sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk"),
        *("quantile", "count_values", "group", "by", "without", "on", "ignoring"),
        *("group_left", "group_right", "and", "or", "unless", "offset", "bool"),
        *("rate", "irate", "increase", "delta", "idelta", "deriv", "histogram_quantile"),
        *("label_values", "label_replace", "abs", "clamp_min", "clamp_max", "vector"),
        *("time", "scalar", "sort", "sort_desc", "absent", "changes", "resets"),
        *("avg_over_time", "max_over_time", "min_over_time", "sum_over_time"),
    }
)
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{[^}]*\}")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)")
_RANGES = re.compile(r"\[[^\]]*\]")
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads."""
    text = _STRINGS.sub("", _MATCHERS.sub("", expr))
    text = _RANGES.sub("", _GROUPING.sub("", text))
    return {
        name
        for name in _IDENTIFIER.findall(text)
        if name not in _PROMQL and not name.startswith("$")
    }


def expressions(node: Any) -> Iterator[str]:
    """Every ``expr`` and variable ``query`` in the dashboard, however deep."""
    if isinstance(node, dict):
        if node.get("type") == "datasource":  # a data source picker, not a query
            return
        for key, value in node.items():
            if key in ("expr", "query") and isinstance(value, str):
                yield value
            else:
                yield from expressions(value)
    elif isinstance(node, list):
        for item in node:
            yield from expressions(item)


def exported(text: str) -> set[str]:
    names = set()
    for family in text_string_to_metric_families(text):
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names.update(f"{family.name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(family.name)
    return names


async def scrape_a_busy_node() -> str:
    provider = SimulatedProvider()
    with trio.fail_after(CEILING):
        async with open_node(
            node_config([sim("a"), sim("b")]),
            channel_defaults=FAST,
            providers={"simulated": provider},
        ) as node:
            with node.subscribe(kind="state") as changes:
                while sum(s.status is ChannelStatus.CONNECTED for s in node.channels()) < 2:
                    await changes.receive()
            await node.send("a", message("k1"))
            with node.subscribe(kind="inbound") as inbound:
                provider.inject("b", "hi")
                await inbound.receive()
            await node.store.flush()
            return generate_latest(ops_registry(node, WebhookCounters())).decode()


def test_the_extractor_finds_metric_names_and_only_them() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, provider) (rate(switchboard_x_bucket{job=~"$job",'
        ' le!="1"}[$__rate_interval]))) / on (instance) group_left max(process_cpu_seconds_total)'
    )
    assert metric_names(expr) == {"switchboard_x_bucket", "process_cpu_seconds_total"}
    assert metric_names('label_values(switchboard_node_info{job=~"$job"}, instance)') == {
        "switchboard_node_info",
        "instance",  # label_values' label argument: looked up as a label below
    }


def test_the_dashboard_is_grafana_json_with_panels() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["title"] == "Switchboard"
    assert len(dashboard["panels"]) >= 10
    assert len(list(expressions(dashboard))) >= 20


async def test_every_expression_names_a_metric_the_node_exports(
    autojump_clock: trio.testing.MockClock,
) -> None:
    names = exported(await scrape_a_busy_node())
    assert "switchboard_send_latency_seconds_bucket" in names  # the scrape is a real one
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    used: set[str] = set()
    for expr in expressions(dashboard):
        found = metric_names(expr)
        if expr.startswith("label_values("):
            found -= {expr.rsplit(",", 1)[-1].strip(" )")}  # the label asked for
        assert found, f"no metric in {expr!r}"
        missing = found - names
        assert not missing, f"{expr!r} names {sorted(missing)}, which the node does not export"
        used |= found
    # The key service levels are on the dashboard.
    for histogram in ("send_latency", "connect", "inbound_delivery", "store_flush"):
        assert f"switchboard_{histogram}_seconds_bucket" in used


@pytest.mark.parametrize(
    "bogus", ["rate(switchboard_messages_snet_total[5m])", "switchboard_channel_conected"]
)
async def test_a_misspelt_metric_would_be_caught(
    autojump_clock: trio.testing.MockClock, bogus: str
) -> None:
    names = exported(await scrape_a_busy_node())
    assert metric_names(bogus) - names
