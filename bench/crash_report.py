"""The crash scenario's results: what was measured, and the figures, plots and notes.

Design: :class:`CrashOutcome` is plain data the run fills in as it goes,
kept outside the node so that it survives a node that gives up (too many
escalations) half-way. :func:`figures`, :func:`series` and :func:`notes`
read it and nothing else, so the report says exactly what was measured.
The invariants the scenario exists for carry targets: no message lost, a
restart for every crash, and no escalation while the crash rate stays well
inside the supervisor's restart intensity.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Final

import attrs

from .crash_load import LoadGenerator
from .crash_observe import LogTally
from .report import Figure, Series, Target, percentile

__all__ = ["CrashOutcome", "Sample", "escalation_expected", "figures", "notes", "series"]

SAMPLE_INTERVAL: Final = 1.0  # seconds between samples of the running counters
HISTOGRAM_BIN: Final = 0.025  # seconds per bar of the restart-latency histogram
ESCALATION_SIGMAS: Final = 4.0  # a burst this many standard deviations above the mean
KEEP_UP: Final = 0.9  # delivered / offered below this: the node did not keep up


@attrs.frozen(kw_only=True)
class Sample:
    """The running counters at one moment (``t``: seconds since the load started)."""

    t: float
    offered: int
    delivered: int
    crashes: int
    restarts: int
    escalations: int


@attrs.define(kw_only=True)
class CrashOutcome:
    """Everything one crash run measured.

    Attributes:
        channels: channels that ran.
        provider: their provider.
        crash_mode: ``exception`` or ``kill``.
        load: the load generator, with its keys, latencies and retries.
        load_seconds: how long load was offered.
        crash_times: when each landed crash was triggered, seconds since load start.
        missed: crash triggers that landed on no incarnation.
        skipped: crash times at which no channel was connected and crash-free.
        restarts: channel incarnations started after the load began.
        restart_latencies: seconds from each crash to its channel's next connect.
        restart_waits: seconds from each crash to the new incarnation's first
            connect attempt (the supervisor's decision and restart backoff).
        reconnects: seconds from that attempt to connected.
        not_back: crashed channels that had not connected again at the end.
        escalations: times the channels' supervisor exceeded its restart intensity.
        escalations_expected: whether the crash rate was meant to cause escalations.
        node_failure: why the node itself gave up, if it did.
        delivered_keys: the keys the platform accepted.
        delivered_in_load: messages accepted while load was offered.
        duplicates: repeated sends of an accepted key, absorbed by the platform.
        samples: the running counters, every :data:`SAMPLE_INTERVAL`.
        cut_short: why the run stopped early, if it did.
        settle_seconds: how long the sends took to finish after the load.
    """

    channels: int
    provider: str
    crash_mode: str
    load: LoadGenerator
    load_seconds: float = 0.0
    crash_times: list[float] = attrs.Factory(list)
    missed: int = 0
    skipped: int = 0
    restarts: int = 0
    restart_latencies: list[float] = attrs.Factory(list)
    restart_waits: list[float] = attrs.Factory(list)
    reconnects: list[float] = attrs.Factory(list)
    not_back: int = 0
    escalations: int = 0
    escalations_expected: bool = False
    node_failure: str | None = None
    delivered_keys: set[str] = attrs.Factory(set)
    delivered_in_load: int = 0
    duplicates: int = 0
    samples: list[Sample] = attrs.Factory(list)
    cut_short: str | None = None
    settle_seconds: float = 0.0

    @property
    def crashes(self) -> int:
        return len(self.crash_times)

    @property
    def lost(self) -> int:
        """Messages offered whose key the platform never accepted."""
        return len(set(self.load.keys) - self.delivered_keys)

    @property
    def delivered(self) -> int:
        """Offered messages the platform accepted."""
        return self.load.offered - self.lost


def escalation_expected(crash_rate: float, period: float, intensity: int) -> bool:
    """Whether crashes at ``crash_rate`` may well exceed ``intensity`` restarts per ``period``.

    Poisson crashes average ``crash_rate * period`` per window; a sliding
    window catches the bursts, so escalations are expected once a burst of
    :data:`ESCALATION_SIGMAS` standard deviations would exceed the intensity.
    """
    mean = crash_rate * period
    return mean + ESCALATION_SIGMAS * math.sqrt(mean) > intensity


def figures(outcome: CrashOutcome) -> list[Figure]:
    """The summary figures, in the order the table shows them."""
    load = outcome.load
    crashes = outcome.crashes
    result = [
        Figure.single(
            name="crashes", label="crashes injected", unit="crashes", value=crashes, better="higher"
        ),
        Figure.single(
            name="restarts",
            label="restarts observed (channel statistics)",
            unit="restarts",
            value=outcome.restarts,
            better="higher",
            target=Target(
                applies_to="value", op=">=", threshold=crashes, text=f"one per crash ({crashes})"
            ),
        ),
        Figure.single(
            name="escalations",
            label="supervisor escalations (intensity exceeded)",
            unit="escalations",
            value=outcome.escalations,
            better="lower",
            target=None
            if outcome.escalations_expected
            else Target(applies_to="value", op="<=", threshold=0, text="0 at this crash rate"),
        ),
        Figure.single(
            name="messages_sent",
            label="messages sent",
            unit="msgs",
            value=load.offered,
            better="higher",
        ),
        Figure.single(
            name="messages_delivered",
            label="messages delivered (unique ids at the platform)",
            unit="msgs",
            value=outcome.delivered,
            better="higher",
        ),
        Figure.single(
            name="messages_lost",
            label="messages lost (sent, never delivered)",
            unit="msgs",
            value=outcome.lost,
            better="lower",
            target=Target(applies_to="value", op="<=", threshold=0, text="0"),
        ),
        Figure.single(
            name="duplicates",
            label="duplicates delivered (absorbed by key)",
            unit="msgs",
            value=outcome.duplicates,
            better="lower",
        ),
        Figure.single(
            name="send_retries",
            label="send retries by the load generator",
            unit="retries",
            value=sum(load.retries.values()),
            better="lower",
        ),
    ]
    for name, label, values, quantiles in (
        ("restart_latency", "crash -> connected again", outcome.restart_latencies, (50, 99)),
        ("restart_wait", "  of which crash -> restarted", outcome.restart_waits, (50,)),
        ("reconnect", "  and restarted -> connected", outcome.reconnects, (50,)),
    ):
        ms = sorted(x * 1000 for x in values)
        result += [
            Figure.single(
                name=f"{name}_p{q}",
                label=f"{label}, p{q}",
                unit="ms",
                value=percentile(ms, q),
                better="lower",
            )
            for q in quantiles
            if ms
        ]
    if outcome.load_seconds > 0:
        result.append(
            Figure.single(
                name="delivered_rate",
                label=f"delivered during the load (offered {load.rate:,.0f}/s)",
                unit="msgs/s",
                value=outcome.delivered_in_load / outcome.load_seconds,
                better="higher",
            )
        )
    if load.latencies:
        ms = sorted(x * 1000 for x in load.latencies)
        for q in (50, 99):
            result.append(
                Figure.single(
                    name=f"send_latency_p{q}",
                    label=f"send latency p{q}, retries included",
                    unit="ms",
                    value=percentile(ms, q),
                    better="lower",
                )
            )
    return result


def series(outcome: CrashOutcome) -> list[Series]:
    """The plots: crashes and restarts, deliveries, latencies, over time."""
    result: list[Series] = []
    pairs = list(zip(outcome.samples, outcome.samples[1:], strict=False))
    if pairs:
        x = [round(b.t, 3) for _, b in pairs]

        def rate(field: str) -> list[float]:
            return [
                (getattr(b, field) - getattr(a, field)) / max(b.t - a.t, 1e-9) for a, b in pairs
            ]

        result.append(
            Series(
                name="crashes_over_time",
                title="crashes injected and restarts observed, per second",
                x_label="s since load start",
                y_label="per s",
                x=x,
                lines={"crashes": rate("crashes"), "restarts": rate("restarts")},
                kind="step",
            )
        )
        result.append(
            Series(
                name="delivered_over_time",
                title="messages offered and delivered (unique ids at the platform), per second",
                x_label="s since load start",
                y_label="msgs/s",
                x=x,
                lines={"offered": rate("offered"), "delivered": rate("delivered")},
            )
        )
    latency = _latency_over_time(outcome.load)
    if latency is not None:
        result.append(latency)
    if outcome.restart_latencies:
        result.append(_restart_histogram(outcome.restart_latencies))
    return result


def _latency_over_time(load: LoadGenerator) -> Series | None:
    buckets: dict[int, list[float]] = {}
    for at, latency in zip(load.issued_at, load.latencies, strict=True):
        buckets.setdefault(int(at // SAMPLE_INTERVAL), []).append(latency * 1000)
    if not buckets:
        return None
    keys = sorted(buckets)
    ordered = {k: sorted(buckets[k]) for k in keys}
    return Series(
        name="send_latency_over_time",
        title="send latency (retries included) by when the message was sent",
        x_label="s since load start",
        y_label="ms",
        x=[k * SAMPLE_INTERVAL for k in keys],
        lines={
            "p50": [percentile(ordered[k], 50) for k in keys],
            "p99": [percentile(ordered[k], 99) for k in keys],
        },
    )


def _restart_histogram(latencies: list[float]) -> Series:
    counts = Counter(int(x // HISTOGRAM_BIN) for x in latencies)
    bins = range(min(counts), max(counts) + 1)
    return Series(
        name="restart_latency_histogram",
        title="crash -> connected again (restart backoff, restart, reconnect)",
        x_label="ms",
        y_label="crashes",
        x=[b * HISTOGRAM_BIN * 1000 for b in bins],
        lines={"crashes": [counts.get(b, 0) for b in bins]},
        kind="bar",
    )


def notes(outcome: CrashOutcome, logs: LogTally, setup: str) -> list[str]:
    """What a reader needs to interpret the figures, then anything that went wrong."""
    load = outcome.load
    how = (
        "an exception raised inside the channel actor's connection task, at a random moment "
        "(exit CRASHED; the send in hand fails with ActorCrashed)"
        if outcome.crash_mode == "exception"
        else "ref.kill() (exit KILLED, no on_stop; the send in hand fails with ActorDead)"
    )
    result = [
        setup,
        f"a crash is {how}; crash times are a Poisson process over randomly chosen connected "
        "channels; restart latency runs from the crash to the channel's next CONNECTED and "
        "includes the supervisor's restart backoff",
        "sends are retried with the same idempotency key until acknowledged (at-least-once); "
        "the platform accepts each key once and counts repeats as duplicates",
    ]
    if outcome.load_seconds > 0:
        delivered_rate = outcome.delivered_in_load / outcome.load_seconds
        if delivered_rate < KEEP_UP * load.rate:
            result.append(
                f"the node delivered {delivered_rate:,.0f} of the {load.rate:,.0f} msgs/s offered: "
                "it did not keep up, so the latencies are mostly queueing (lower --rate)"
            )
    if load.retries:
        result.append("retries by cause: " + _counts(load.retries))
    if load.refused or load.abandoned:
        result.append(
            f"not retried: {_counts(load.refused) or 'none'}; given up after every retry: "
            f"{load.abandoned}"
        )
    if outcome.escalations and outcome.restarts != outcome.crashes:
        result.append(
            f"{outcome.escalations} escalation(s): the node restarted the channels' supervisor, "
            "which started every channel anew, so restarts exceed crashes"
        )
    elif outcome.restarts != outcome.crashes:
        result.append(
            f"restarts ({outcome.restarts}) differ from crashes ({outcome.crashes}) with no "
            "escalation: some incarnations ended for another reason (see the logs below)"
        )
    if outcome.escalations_expected:
        result.append("the crash rate is near or above the restart intensity: escalations expected")
    if outcome.node_failure:
        result.append(
            "the node gave up (its root supervisor's own intensity was exceeded too), so the "
            f"run ended early and what was in flight is lost: {outcome.node_failure}"
        )
    if outcome.not_back:
        result.append(f"{outcome.not_back} crashed channel(s) had not connected again at the end")
    if outcome.missed or outcome.skipped:
        result.append(
            f"crash times without a crash: {outcome.skipped} found no connected, crash-free "
            f"channel; {outcome.missed} landed as the link ended for another reason"
        )
    if outcome.cut_short:
        result.append(f"cut short: {outcome.cut_short}")
    if outcome.settle_seconds >= 0.01:
        result.append(f"the last sends finished {outcome.settle_seconds:.2f} s after the load")
    if logs.unexpected:
        result.append(
            f"the node logged {_counts(logs.unexpected)} besides the crashes; first: "
            + " | ".join(logs.examples)
        )
    return result


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{name} {n}" for name, n in counter.most_common())
