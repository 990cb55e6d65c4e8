"""The ``target`` scenario's results: figures, plots and notes from one run.

Design: :class:`Measured` is plain data that the run fills in;
:func:`figures`, :func:`series` and :func:`notes` read it and nothing else,
so the report says exactly what was measured: the clients' view (requests,
accepted/s, latency, schedule lag, errors, per provider when there are
several), the load generator's CPU, and the node's own ``/metrics`` deltas.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Final, Literal

import attrs

from .report import Figure, Series, percentile
from .target_discover import SHOWN_IDS, ChannelInfo
from .target_load import Answer, Load
from .target_metrics import NodeSample, Sampler

__all__ = ["Measured", "figures", "notes", "series"]

MB: Final = 1024 * 1024
DRIVER_BUSY: Final = 90.0  # % of one core above which the load generator may be the bottleneck


@attrs.frozen(kw_only=True)
class Measured:
    """Everything the run (``bench.target``) brings back from the deployment."""

    node: str
    channels: list[ChannelInfo]
    load: Load
    window: float
    planned: int
    sampler: Sampler
    before: NodeSample | None
    after: NodeSample | None
    sections: dict[str, float]
    driver_cpu: float
    notes: list[str]


def figures(measured: Measured) -> list[Figure]:
    """Every figure of the run: the clients' view, the driver's CPU, the node's deltas."""
    load, window = measured.load, measured.window
    out = _load_figures(load, window)
    out += _provider_figures(load.answers, _span(load, window))
    out.append(
        _fig("driver_cpu", "load generator: CPU, % of one core", "%", measured.driver_cpu, "lower")
    )
    if measured.before is not None and measured.after is not None:
        out += _node_figures(measured.before, measured.after, measured.sampler.samples)
    return out


def series(measured: Measured, width: float) -> list[Series]:
    """The plots: latency and accepted/s per ``width`` seconds, the node's RSS and CPU."""
    out = _load_series(measured.load.answers, width)
    out += _node_series(measured.sampler.samples, measured.load.t0)
    return out


def notes(measured: Measured, base: str) -> list[str]:
    """What a reader needs to interpret the figures."""
    load, sampler = measured.load, measured.sampler
    ids = ", ".join(info.channel for info in measured.channels[:SHOWN_IDS])
    extra = len(measured.channels) - SHOWN_IDS
    more = f" and {extra} more" if extra > 0 else ""
    notes = [
        f"target {base}, node {measured.node!r}, {len(measured.channels)} channel(s): {ids}{more}",
        "latency runs from the request going out to its answer; the message API answers "
        "once the platform accepted the message, so it covers the node's whole send path",
        "schedule lag: how late requests went out because every concurrency slot was busy",
        "node figures are node-wide deltas from its /metrics: other traffic counts too",
        "machine and load averages describe the load generator, not the node",
        *measured.notes,
    ]
    if measured.driver_cpu >= DRIVER_BUSY:
        notes.append(
            f"the load generator used {measured.driver_cpu:.0f}% of a core: it may be what "
            "limits the rate; run it on another machine than the node, or lower the rate"
        )
    unsent = measured.planned - load.sent
    if unsent:
        notes.append(
            f"{unsent} of {measured.planned} scheduled requests were never sent: every "
            "concurrency slot was busy until the load window closed (the node answered "
            "slower than rate x latency needs; raise concurrency or lower the rate)"
        )
    cut = load.sent - len(load.answers)
    if cut:
        notes.append(f"{cut} request(s) were still in flight at the time limit")
    if measured.before is None or measured.after is None:
        notes.append("no node figures: /metrics could not be read before and after the load")
    if sampler.failures:
        notes.append(
            f"{len(sampler.failures)} /metrics scrape(s) failed; first: {sampler.failures[0]}"
        )
    elif measured.before is not None and measured.before.rss is None:
        notes.append("the node's /metrics has no process figures (RSS, CPU): not on Linux?")
    return notes


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def _ms(seconds: float) -> float:
    return seconds * 1000.0


def _span(load: Load, window: float) -> float:
    """Seconds from the load's start to its last answer (at least the window)."""
    return max([window, *(a.start + a.latency for a in load.answers)])


Better = Literal["lower", "higher"]


def _fig(name: str, label: str, unit: str, value: float, better: Better) -> Figure:
    return Figure.single(name=name, label=label, unit=unit, value=value, better=better)


def _latencies(ok: list[float], quantiles: Iterable[int], suffix: str, prefix: str) -> list[Figure]:
    """Percentiles of the sorted latencies ``ok`` (none when nothing was accepted)."""
    if not ok:
        return []
    return [
        _fig(
            f"latency_p{q}{suffix}",
            f"{prefix}send latency p{q}",
            "ms",
            _ms(percentile(ok, q)),
            "lower",
        )
        for q in quantiles
    ]


def _load_figures(load: Load, window: float) -> list[Figure]:
    """Requests, throughput, latency, lag and errors, as the clients saw them."""
    answers = load.answers
    ok = sorted(a.latency for a in answers if a.outcome == "ok")
    answered = sum(a.answered for a in answers)
    errors = Counter(a.outcome for a in answers if a.outcome != "ok")
    figures = [
        _fig("requests_sent", "requests sent", "requests", load.sent, "higher"),
        _fig("requests_answered", "requests answered (any status)", "requests", answered, "higher"),
        _fig("unanswered", "requests without an answer", "requests", load.sent - answered, "lower"),
        _fig("offered_rate", "requests sent per second", "req/s", load.sent / window, "higher"),
        _fig(
            "accepted_per_second",
            "messages accepted per second",
            "msgs/s",
            len(ok) / _span(load, window),
            "higher",
        ),
        _fig("errors", "errors (all kinds)", "requests", sum(errors.values()), "lower"),
    ]
    figures += [
        _fig(f"errors_{_slug(kind)}", f"errors: {kind}", "requests", count, "lower")
        for kind, count in sorted(errors.items())
    ]
    figures += _latencies(ok, (50, 90, 99), "", "")
    if ok:
        figures.append(_fig("latency_max", "send latency max", "ms", _ms(ok[-1]), "lower"))
    if answers:
        lag = percentile(sorted(a.lag for a in answers), 99)
        figures.append(
            _fig("schedule_lag_p99", "start lag behind schedule p99", "ms", _ms(lag), "lower")
        )
    return figures


def _provider_figures(answers: Sequence[Answer], span: float) -> list[Figure]:
    """Accepted/s, p50, p99 and errors per provider, when the load spans several.

    A slow provider holds concurrency slots and so slows the others: this
    says which one it is.
    """
    by_provider: dict[str, list[Answer]] = {}
    for answer in answers:
        by_provider.setdefault(answer.provider, []).append(answer)
    if len(by_provider) < 2:
        return []
    figures = []
    for provider, mine in sorted(by_provider.items()):
        ok = sorted(a.latency for a in mine if a.outcome == "ok")
        slug, tag = _slug(provider), f"[{provider}] "
        figures.append(
            _fig(
                f"accepted_per_second_{slug}",
                f"{tag}messages accepted per second",
                "msgs/s",
                len(ok) / span,
                "higher",
            )
        )
        figures += _latencies(ok, (50, 99), f"_{slug}", tag)
        figures.append(
            _fig(f"errors_{slug}", f"{tag}errors", "requests", len(mine) - len(ok), "lower")
        )
    return figures


# (NodeSample attribute, label, unit, better) for the node's counters, as deltas over the run.
_NODE_DELTAS: Final[tuple[tuple[str, str, str, Better], ...]] = (
    ("sent", "node: messages sent (Δ)", "msgs", "higher"),
    ("send_failures", "node: send failures (Δ)", "attempts", "lower"),
    ("reconnects", "node: reconnects (Δ)", "reconnects", "lower"),
    ("dead_letters", "node: dead letters (Δ)", "msgs", "lower"),
)


def _node_figures(
    before: NodeSample, after: NodeSample, samples: Sequence[NodeSample]
) -> list[Figure]:
    """What the node's own ``/metrics`` said about the run (node-wide)."""
    figures = [
        _fig(f"node_{name}", label, unit, getattr(after, name) - getattr(before, name), better)
        for name, label, unit, better in _NODE_DELTAS
    ]
    every = (before, *samples, after)
    depth = max(s.mailbox_depth for s in every)
    figures.append(
        _fig(
            "node_mailbox_depth_peak", "node: mailbox depth peak (sampled)", "msgs", depth, "lower"
        )
    )
    if before.rss is not None and after.rss is not None:
        peak = max(s.rss for s in every if s.rss is not None)
        figures += [
            _fig("node_rss_before", "node: RSS before", "MB", before.rss / MB, "lower"),
            _fig("node_rss_after", "node: RSS after", "MB", after.rss / MB, "lower"),
            _fig("node_rss_peak", "node: RSS peak (sampled)", "MB", peak / MB, "lower"),
        ]
    if before.cpu is not None and after.cpu is not None and after.at > before.at:
        busy = 100.0 * (after.cpu - before.cpu) / (after.at - before.at)
        figures.append(_fig("node_cpu", "node: CPU, % of one core", "%", busy, "lower"))
    return figures


def _buckets(values: Iterable[tuple[float, float]], width: float) -> dict[int, list[float]]:
    out: dict[int, list[float]] = {}
    for at, value in values:
        out.setdefault(max(0, int(at // width)), []).append(value)
    return out


def _load_series(answers: Sequence[Answer], width: float) -> list[Series]:
    """Latency percentiles and accepted/s per ``width`` seconds, by completion time."""
    ended = [(a.start + a.latency, a) for a in answers]
    latencies = _buckets(((at, a.latency) for at, a in ended if a.outcome == "ok"), width)
    outcomes = _buckets(((at, float(a.outcome == "ok")) for at, a in ended), width)
    keys = sorted(latencies)
    lines = {
        f"p{q}": [_ms(percentile(sorted(latencies[k]), q)) for k in keys] for q in (50, 90, 99)
    }
    span = range(max(outcomes, default=-1) + 1)
    return [
        Series(
            name="latency_over_time",
            title="send latency percentiles",
            x_label="s since load start",
            y_label="ms",
            x=[k * width for k in keys],
            lines=lines,
        ),
        Series(
            name="accepted_over_time",
            title="messages accepted and errors per second",
            x_label="s since load start",
            y_label="per s",
            x=[k * width for k in span],
            lines={
                "accepted/s": [sum(outcomes.get(k, [])) / width for k in span],
                "errors/s": [
                    (len(outcomes.get(k, [])) - sum(outcomes.get(k, []))) / width for k in span
                ],
            },
            kind="step",
        ),
    ]


def _node_series(samples: Sequence[NodeSample], t0: float) -> list[Series]:
    """The node's RSS and CPU over the run, from the scrapes that reported them."""
    series = []
    rss = [(s.at - t0, s.rss / MB) for s in samples if s.rss is not None]
    if rss:
        series.append(
            Series(
                name="node_rss_over_time",
                title="node RSS",
                x_label="s since load start",
                y_label="MB",
                x=[at for at, _ in rss],
                lines={"RSS": [mb for _, mb in rss]},
            )
        )
    cpu = [(s.at - t0, s.cpu) for s in samples if s.cpu is not None]
    busy = [
        (b_at, 100.0 * (b - a) / (b_at - a_at))
        for (a_at, a), (b_at, b) in itertools.pairwise(cpu)
        if b_at > a_at
    ]
    if busy:
        series.append(
            Series(
                name="node_cpu_over_time",
                title="node CPU",
                x_label="s since load start",
                y_label="% of one core",
                x=[at for at, _ in busy],
                lines={"CPU": [percent for _, percent in busy]},
            )
        )
    return series
