"""The ``scrape`` scenario: what one ``/metrics`` scrape costs a large node.

A real node (``open_node``) runs N channels on the simulated platform (no
sockets, so the channels cost only what the node keeps of them), every
channel has sent and received a little, and the latency histograms hold
observations. Then the node's own registry (the one ``/metrics`` serves) is
rendered with ``prometheus_client.generate_latest``, ``repeat`` times per
mode, alternating:

- aggregates: per-tenant and per-provider series only, what
  ``[metrics] per_channel = "auto"`` (the default) exports above its limit
  of 1,000 channels (measured with ``per_channel = "never"``);
- per channel: ``per_channel = "always"``, one series per channel in each
  of eleven families (the baseline: what every scrape cost before).

Figures: the median scrape time of each (target: aggregates under 100 ms at
10,000 channels), their ratio, and the series and bytes each returns. The
scrape runs in the node's trio thread, as the ops server runs it, timed
with ``time.perf_counter``.
"""

from __future__ import annotations

import gc
import statistics
import time
from typing import Any, Final

import attrs
import trio
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from providers.base import OutboundMessage
from providers.simulated import SimulatedProvider

from .report import Figure, Report, Target, load_average, machine_info, utc_now
from .scenario import RunContext, Scenario

__all__ = ["SCENARIO", "ScrapeParams", "run"]

SCRAPE_TARGET_MS: Final = 100.0  # milliseconds per scrape at 10,000 channels, aggregates


@attrs.frozen(kw_only=True)
class ScrapeParams:
    """Sizes of the scrape run (``bench/scenarios/scrape.toml``).

    Attributes:
        channels: channels on the node.
        tenants: tenants they are spread over.
        repeat: scrapes per mode (medians are reported).
    """

    channels: int = attrs.field(default=10_000, metadata={"help": "channels on the node"})
    tenants: int = attrs.field(default=20, metadata={"help": "tenants they belong to"})
    repeat: int = attrs.field(default=7, metadata={"help": "scrapes per mode"})


def _config(params: ScrapeParams) -> Any:
    from runtime import parse_config

    return parse_config(
        {
            "node": {"id": "scrape", "start_timeout": 600},
            "ops": {"enabled": False},
            "logging": {"level": "warning"},
            "providers": {"simulated": {"rate_limit": {"enabled": False}}},
            "channels": [
                {"id": f"c{i}", "tenant": f"t{i % params.tenants}", "provider": "simulated"}
                for i in range(params.channels)
            ],
        }
    )


async def _measure(params: ScrapeParams, ctx: RunContext) -> dict[str, Any]:
    from runtime import open_node
    from runtime.config import MetricsConfig
    from runtime.ops import WebhookCounters, ops_registry

    provider = SimulatedProvider(record=False)
    ctx.progress.phase("starting the node", total=params.channels, unit="channels")
    async with open_node(_config(params), providers={"simulated": provider}) as node:
        ctx.progress.update(params.channels)
        ctx.progress.phase("one send and one inbound per channel", total=params.channels)
        for i in range(params.channels):
            await node.send(f"c{i}", OutboundMessage(peer="p", idempotency_key=f"k{i}", text="hi"))
            provider.inject(f"c{i}", "hello")
            if i % 500 == 0:
                ctx.progress.update(i)
        ctx.progress.update(params.channels)
        await trio.sleep(1.0)  # the injected messages are delivered
        modes = {
            "aggregates": ops_registry(
                node, WebhookCounters(), metrics=MetricsConfig(per_channel="never")
            ),
            "per_channel": ops_registry(
                node, WebhookCounters(), metrics=MetricsConfig(per_channel="always")
            ),
        }
        # As a long-running node should (ARCHITECTURE: known traps): the start-up's
        # objects frozen out of the cyclic GC's reach.
        gc.collect()
        gc.freeze()
        times: dict[str, list[float]] = {mode: [] for mode in modes}
        sizes: dict[str, tuple[int, int]] = {}
        ctx.progress.phase("scraping", total=params.repeat * len(modes), unit="scrapes")
        done = 0
        for mode, registry in modes.items():  # one mode at a time: no garbage of the other's
            generate_latest(registry)  # an untimed warm-up
            for _ in range(params.repeat):
                began = time.perf_counter()
                body = generate_latest(registry)
                times[mode].append((time.perf_counter() - began) * 1000)
                done += 1
                ctx.progress.update(done)
            series = sum(
                len(family.samples) for family in text_string_to_metric_families(body.decode())
            )
            sizes[mode] = (series, len(body))
        gc.unfreeze()
        received = sum(s.statistics.received for s in node.channels() if s.statistics is not None)
    return {"times": times, "sizes": sizes, "received": received}


def run(params: ScrapeParams, ctx: RunContext) -> Report:
    """Start the node, scrape it in both modes, report the medians."""
    started = utc_now()
    load_before = load_average()
    t0 = time.perf_counter()
    measured = trio.run(_measure, params, ctx)
    times, sizes = measured["times"], measured["sizes"]
    figures = [
        Figure.from_samples(
            name="scrape_ms",
            label=f"scrape at {params.channels:,} channels, aggregates",
            unit="ms",
            samples=times["aggregates"],
            baseline_samples=times["per_channel"],
            baseline_label="the same scrape with a series per channel (per_channel = always)",
            better="lower",
            target=Target(
                applies_to="value",
                op="<=",
                threshold=SCRAPE_TARGET_MS,
                text=f"<= {SCRAPE_TARGET_MS:g} ms",
            ),
        ),
        Figure.single(
            name="series_aggregates",
            label="series per scrape, aggregates",
            unit="series",
            value=float(sizes["aggregates"][0]),
            better="lower",
        ),
        Figure.single(
            name="series_per_channel",
            label="series per scrape, per channel",
            unit="series",
            value=float(sizes["per_channel"][0]),
            better="lower",
        ),
        Figure.single(
            name="bytes_aggregates",
            label="bytes per scrape, aggregates",
            unit="B",
            value=float(sizes["aggregates"][1]),
            better="lower",
        ),
        Figure.single(
            name="bytes_per_channel",
            label="bytes per scrape, per channel",
            unit="B",
            value=float(sizes["per_channel"][1]),
            better="lower",
        ),
    ]
    notes = [
        f"medians of {params.repeat} scrapes per mode, aggregates first, each after one "
        "untimed warm-up; generate_latest on the node's own registry in its trio thread; "
        "time.perf_counter; gc.collect() and gc.freeze() after start-up, as a long-running "
        "node should (the cyclic GC otherwise walks every channel's objects now and then)",
        f"per-channel samples (ms): {', '.join(f'{t:.1f}' for t in times['per_channel'])}; "
        f"aggregates: {', '.join(f'{t:.1f}' for t in times['aggregates'])}",
        f"{measured['received']:,} inbound events received before the scrapes; "
        f"mean scrape {statistics.mean(times['aggregates']):.1f} ms (aggregates)",
    ]
    return Report(
        scenario="scrape",
        started=started,
        duration=time.perf_counter() - t0,
        parameters={**attrs.asdict(params), "quick": ctx.quick},
        machine=machine_info(),
        load_average={"before": load_before, "after": load_average()},
        section_seconds={"total": round(time.perf_counter() - t0, 2)},
        figures=figures,
        notes=notes,
    )


SCENARIO: Final = Scenario(
    name="scrape",
    help="one /metrics scrape of a large node: aggregates beside a series per channel",
    params=ScrapeParams,
    run=run,
)
