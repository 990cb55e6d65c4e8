"""The chaos scenario's outcome, and the figures, notes and plots made of it.

Design: :class:`ChaosOutcome` is everything a run observed, in raw form
(the loads' ledgers, the judges' records, the samples); the figures are
computed from it here, in one place, so that the test of the scenario and
the report read the same numbers. The accounting:

- a message is *delivered* when a platform's record names its key, a
  *dead letter* when it is not delivered and its channel's dead letters
  hold its key (a platform refused it for good), and *lost* otherwise;
- a user message is *stored* when the node's store holds its channel and
  text, and *lost* otherwise;
- a *node restart* is a restart of one of the node's own children (the
  channels supervisor with every channel in it, a service), or the node
  ending before the run did.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any, Final

import attrs

from .report import Figure, Series, Target, percentile

if TYPE_CHECKING:
    from .chaos import ChaosParams
    from .chaos_faults import FaultScript
    from .chaos_load import InboundLoad, SendLoad

__all__ = ["ChaosOutcome", "figures", "notes", "rss_slope", "series"]

MIB: Final = float(1 << 20)
HEALTH_P50: Final = 50.0  # ms
HEALTH_P99: Final = 500.0  # ms
HEALTH_MAX: Final = 2000.0  # ms
WARM_FRACTION: Final = 1 / 3  # RSS is judged once this much of the load has run


@attrs.define
class ChaosOutcome:
    """What one run observed (see the module docstring for the accounting)."""

    channels: dict[str, int]
    sends: SendLoad | None = None
    inbound: InboundLoad | None = None
    script: FaultScript | None = None
    rss: list[tuple[float, int]] = attrs.Factory(list)  # (s since load start, bytes)
    health: list[tuple[float, float, int]] = attrs.Factory(list)  # (s, ms, HTTP status)
    load_seconds: float = 0.0
    load_end: float = 0.0
    settle_end: float = 0.0
    settled: bool = False
    unanswered: dict[str, str] = attrs.Factory(dict)  # key -> channel, sends open at the end
    cut_short: str | None = None
    failure: str | None = None  # why the run could not go on
    node_failure: str | None = None
    platform_keys: Counter[str] = attrs.Factory(Counter)
    platform_stats: dict[str, Any] = attrs.Factory(dict)
    stored: set[tuple[str, str]] = attrs.Factory(set)
    dead_letters: set[str] = attrs.Factory(set)
    dead_letters_dropped: int = 0
    statuses: Counter[str] = attrs.Factory(Counter)
    failed: dict[str, str] = attrs.Factory(dict)
    node_restarts: int = 0
    channel_restarts: int = 0
    log_warnings: dict[str, int] = attrs.Factory(dict)
    log_examples: list[str] = attrs.Factory(list)

    # --- the accounting ----------------------------------------------------------------

    @property
    def offered(self) -> set[str]:
        return set(self.sends.offered) if self.sends else set()

    @property
    def delivered(self) -> set[str]:
        return self.offered & set(self.platform_keys)

    @property
    def dead_lettered(self) -> set[str]:
        return (self.offered - self.delivered) & self.dead_letters

    @property
    def lost(self) -> set[str]:
        return self.offered - self.delivered - self.dead_lettered

    @property
    def owed(self) -> set[tuple[str, str]]:
        return set(self.inbound.owed) if self.inbound else set()

    @property
    def inbound_lost(self) -> set[tuple[str, str]]:
        return self.owed - self.stored

    @property
    def restarts(self) -> int:
        return self.node_restarts + (1 if self.node_failure else 0)

    @property
    def not_connected(self) -> int:
        return sum(n for status, n in self.statuses.items() if status != "connected")


def rss_slope(samples: list[tuple[float, int]], start: float, end: float) -> float:
    """Least-squares slope of RSS over [start, end], MiB per minute (0 with < 2 samples)."""
    points = [(t, b / MIB) for t, b in samples if start <= t <= end]
    if len(points) < 2:
        return 0.0
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(m for _, m in points) / n
    var = sum((t - mx) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    return sum((t - mx) * (m - my) for t, m in points) / var * 60.0


def _rss_at(samples: list[tuple[float, int]], t: float) -> float:
    before = [b for s, b in samples if s <= t]
    return (before[-1] if before else samples[0][1]) / MIB if samples else 0.0


def _count(name: str, label: str, value: float, *, zero: bool = False) -> Figure:
    target = Target(applies_to="value", op="<=", threshold=0.0, text="= 0") if zero else None
    return Figure.single(
        name=name, label=label, unit="", value=float(value), better="lower", target=target
    )


def figures(outcome: ChaosOutcome, params: ChaosParams) -> list[Figure]:
    """The run's figures; the ones the issue asks for carry its targets."""
    sends = outcome.sends
    warm = outcome.load_end * WARM_FRACTION
    out = [
        _count("messages_offered", "messages offered", len(outcome.offered)),
        _count(
            "messages_accepted",
            "messages accepted (send returned)",
            len(sends.accepted) if sends else 0,
        ),
        _count(
            "messages_delivered",
            "messages delivered (platform records the key)",
            len(outcome.delivered),
        ),
        _count(
            "messages_dead_lettered",
            "messages refused for good, held as dead letters",
            len(outcome.dead_lettered),
        ),
        _count("messages_lost", "messages lost", len(outcome.lost), zero=True),
        _count("inbound_injected", "inbound injected (owed to a channel)", len(outcome.owed)),
        _count("inbound_stored", "inbound stored by the node", len(outcome.owed & outcome.stored)),
        _count("inbound_lost", "inbound lost", len(outcome.inbound_lost), zero=True),
        _count(
            "node_restarts",
            "node restarts (root children restarted, node ended)",
            outcome.restarts,
            zero=True,
        ),
        _count(
            "channels_not_connected",
            "channels not connected at the end",
            outcome.not_connected,
            zero=True,
        ),
        _count(
            "faults_applied", "faults applied", len(outcome.script.records) if outcome.script else 0
        ),
        _count(
            "channel_restarts",
            "channel actor restarts (kills and crashes)",
            outcome.channel_restarts,
        ),
        _count(
            "send_retries", "send retries by the load", sum(sends.retries.values()) if sends else 0
        ),
        _count(
            "platform_duplicates",
            "keys the platforms took more than once",
            sum(1 for n in outcome.platform_keys.values() if n > 1),
        ),
    ]
    if outcome.rss:
        out += [
            Figure.single(
                name="rss_warm",
                label="RSS once warm (a third into the load)",
                unit="MiB",
                value=_rss_at(outcome.rss, warm),
                better="lower",
            ),
            Figure.single(
                name="rss_end",
                label="RSS at the end of the load",
                unit="MiB",
                value=_rss_at(outcome.rss, outcome.load_end),
                better="lower",
            ),
            Figure.single(
                name="rss_peak",
                label="RSS peak",
                unit="MiB",
                value=max(b for _, b in outcome.rss) / MIB,
                better="lower",
            ),
            Figure.single(
                name="rss_slope",
                label="RSS slope once warm (least squares)",
                unit="MiB/min",
                value=rss_slope(outcome.rss, warm, outcome.load_end),
                better="lower",
                target=Target(
                    applies_to="value",
                    op="<=",
                    threshold=params.rss_slope_limit,
                    text=f"≤ {params.rss_slope_limit:g}",
                ),
            ),
        ]
    latencies = sorted(ms for _, ms, status in outcome.health if status)
    if latencies:
        for name, q, bound in (
            ("p50", 50.0, HEALTH_P50),
            ("p99", 99.0, HEALTH_P99),
            ("max", 100.0, HEALTH_MAX),
        ):
            out.append(
                Figure.single(
                    name=f"health_{name}",
                    label=f"/health latency {name}",
                    unit="ms",
                    value=percentile(latencies, q),
                    better="lower",
                    target=Target(
                        applies_to="value", op="<=", threshold=bound, text=f"≤ {bound:g}"
                    ),
                    samples=latencies if name == "p50" else None,
                )
            )
    out.append(
        _count(
            "health_unanswered",
            "/health requests not answered",
            sum(1 for *_, s in outcome.health if s == 0),
            zero=True,
        )
    )
    if sends and sends.latencies:
        ordered = sorted(sends.latencies)
        out.append(
            Figure.single(
                name="send_p99",
                label="send latency p99 (due to accepted, retries included)",
                unit="s",
                value=percentile(ordered, 99.0),
                better="lower",
            )
        )
    return out


def _marks(outcome: ChaosOutcome) -> dict[str, float]:
    if outcome.script is None:
        return {}
    return {f"{r.kind} {r.at:.0f}s": r.at for r in outcome.script.records}


def series(outcome: ChaosOutcome) -> list[Series]:
    """RSS and /health latency over the run, the faults marked."""
    out = []
    if outcome.rss:
        out.append(
            Series(
                name="rss_over_time",
                title="node process RSS (faults marked; load ends at the last mark + quiet)",
                x_label="seconds since the load began",
                y_label="MiB",
                x=[t for t, _ in outcome.rss],
                lines={"RSS": [b / MIB for _, b in outcome.rss]},
                marks={**_marks(outcome), "load end": outcome.load_end},
            )
        )
    if outcome.health:
        out.append(
            Series(
                name="health_latency_over_time",
                title="GET /health latency during the run",
                x_label="seconds since the load began",
                y_label="ms",
                x=[t for t, _, _ in outcome.health],
                lines={"/health": [ms if s else None for _, ms, s in outcome.health]},
                marks={**_marks(outcome), "load end": outcome.load_end},
            )
        )
    return out


def notes(outcome: ChaosOutcome, params: ChaosParams) -> list[str]:
    """What a reader needs besides the figures."""
    counts = ", ".join(f"{n} {name}" for name, n in outcome.channels.items())
    out = [
        f"{sum(outcome.channels.values())} channels ({counts}) in one node (open_node) with a "
        "PostgreSQL store behind a TCP link breaker; the four emulators in a process of their "
        f"own; {params.send_rate:g} sends/s and {params.inbound_rate:g} user messages/s for "
        f"{outcome.load_seconds:.0f} s, a fault every {params.fault_interval:g} s from "
        f"{params.warmup:g} s on; /health asked every {params.health_interval:g} s by a thread.",
        "Accounting: delivered = the platform's records name the message's key; dead letter = "
        "not delivered, held in its channel's dead letters; lost = the rest. Inbound stored = "
        "the node's PostgreSQL tables hold (channel, text) after the run.",
    ]
    if outcome.script is not None:
        kinds = Counter(r.kind for r in outcome.script.records)
        out.append(
            "Faults: "
            + ", ".join(f"{k} x{n}" for k, n in kinds.items())
            + f"; banned channels revived: {outcome.script.revived}."
        )
        out += [f"fault not applied: {e}" for e in outcome.script.errors[:5]]
    hits = {
        name: stats.get("http_faults")
        for name, stats in outcome.platform_stats.items()
        if stats.get("http_faults")
    }
    if hits:
        out.append(
            "HTTP-layer faults served by the platforms: "
            + "; ".join(f"{k} {v}" for k, v in hits.items())
            + "."
        )
    if outcome.sends is not None:
        s = outcome.sends
        out.append(
            f"Sends: {len(s.offered)} offered, {len(s.accepted)} accepted, {len(s.permanent)} "
            f"refused for good, {len(s.unsettled)} still retrying when the sends had to stop; "
            f"retries by cause: {dict(s.retries) or 'none'}."
        )
        if s.permanent:
            refusals = Counter(
                (s.offered[key].split("-")[0], error.split(":")[0])
                for key, error in s.permanent.items()
            )
            first = {error.split(":")[0]: error for error in s.permanent.values()}
            out.append(
                f"Refused for good, by channel kind and error: {dict(refusals)}; "
                f"e.g. {list(first.values())[:3]}."
            )
        if outcome.unanswered:
            by_channel = Counter(outcome.unanswered.values()).most_common(5)
            out.append(f"Sends unanswered at the end, by channel (first 5): {by_channel}.")
    if outcome.inbound is not None and outcome.inbound.failed_injects:
        out.append(
            f"Injects the platforms refused (not owed): {dict(outcome.inbound.failed_injects)}."
        )
    if outcome.lost:
        out.append(f"LOST messages (first 10): {sorted(outcome.lost)[:10]}")
    if outcome.inbound_lost:
        out.append(f"LOST inbound (first 10): {sorted(outcome.inbound_lost)[:10]}")
    if outcome.failed:
        out.append(f"FAILED at the end: {dict(list(outcome.failed.items())[:5])}")
    if outcome.dead_letters_dropped:
        out.append(
            f"The dead-letter queues let {outcome.dead_letters_dropped} letters go (bounded)."
        )
    if outcome.node_failure:
        out.append(f"THE NODE ENDED: {outcome.node_failure}")
    if not outcome.settled:
        out.append(
            f"The run did not settle within {params.settle:g} s (sends in flight or channels "
            "not connected at the end)."
        )
    if outcome.cut_short:
        out.append(f"Cut short: {outcome.cut_short}.")
    if outcome.log_warnings:
        out.append(
            f"Node log warnings and errors by level: {outcome.log_warnings}; "
            f"first: {outcome.log_examples[:3]}"
        )
    return out
