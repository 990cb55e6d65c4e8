"""Prometheus metrics for the node, read from the node at scrape time.

Design:
- Nothing on the message path touches prometheus_client. Channels keep
  plain ``int`` counters in their ``ChannelMemory`` (incremented by the one
  task that owns the channel, so they need no lock) and the node exposes
  them through :meth:`NodeView.channels` / :meth:`NodeView.statistics` as
  frozen snapshots. :class:`NodeCollector` is a custom collector: on every
  scrape it reads those snapshots and builds the metric families then. A
  million messages cost a million ``+= 1`` and no lock; a scrape costs one
  pass over the channels.
- The ops app counts webhook requests the same way: :class:`WebhookCounters`
  holds plain ints the app increments (the app runs in the node's trio
  thread) and the collector reads; no prometheus ``Counter`` on the hot path.
- Each ops app gets a :class:`~prometheus_client.CollectorRegistry` of its
  own (:func:`ops_registry`), never the process-global ``REGISTRY``: two
  nodes in one process (tests, embedding) must not collide, and nothing a
  library registers globally leaks into our scrape. The registry also holds
  prometheus_client's process, platform and GC collectors.
- Collection runs in the trio thread (``generate_latest`` is synchronous),
  so snapshots are consistent with the node's state at one instant.
- Cardinality: per-tenant and per-provider aggregates are always exported;
  series per channel (eleven families, one series each per channel: 110,000
  at 10,000 channels) only as ``[metrics] per_channel`` says (by default up
  to 1,000 channels). ``switchboard_metrics_per_channel`` says which.
- Surfaces above the node (the admin console) add families of their own
  through ``node.metric_sources``: callables read at scrape time like the rest.
- Latency histograms (send, connect, inbound delivery per provider; store
  flushes) are plain bucket counts the node fills
  (:mod:`runtime.telemetry.histograms`), exported as Prometheus histograms
  with buckets from 1 ms to 30 s.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Final, Literal

from prometheus_client import (
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import CollectorRegistry
from prometheus_client.utils import floatToGoString

from ..config.model import MetricsConfig
from ..telemetry.histograms import LatencySnapshot
from ..view import ChannelSnapshot, ChannelTotals, NodeStatistics, NodeView
from .health import CHANNEL_STATES, channel_state, state_of

__all__ = [
    "PREFIX",
    "NodeCollector",
    "WebhookCounters",
    "WebhookOutcome",
    "ops_registry",
    "webhook_outcome",
]

PREFIX: Final = "switchboard_"

WebhookOutcome = Literal[
    "accepted", "bad_request", "rejected", "unknown_channel", "unavailable", "error"
]
"""How a webhook request ended, by the HTTP status it was answered with."""

_OUTCOMES: Final[dict[int, WebhookOutcome]] = {
    400: "bad_request",
    403: "rejected",
    404: "unknown_channel",
    413: "bad_request",
    503: "unavailable",
}

# Rejections that exist from the start, so their series read 0 before the first one.
_KNOWN_REJECTIONS: Final = (
    ("telegram", "secret"),
    ("whatsapp", "signature"),
    ("whatsapp", "verify_token"),
)

_CHANNEL_LABELS: Final = ("channel", "tenant", "provider")
_AGGREGATE_LABELS: Final = ("tenant", "provider")

# (histogram family, help) by what LatencySnapshot.timing names.
_HISTOGRAMS: Final = {
    "send": (
        "send_latency_seconds",
        "Sends from accepted by the node to accepted by the platform, by provider.",
    ),
    "connect": ("connect_seconds", "Handshakes, from their turn to a live link, by provider."),
    "inbound": (
        "inbound_delivery_seconds",
        "Inbound events from read off the platform to handed to subscribers, by provider.",
    ),
    "store_flush": ("store_flush_seconds", "Batches of inbound events written to the store."),
}


def webhook_outcome(status: int) -> WebhookOutcome:
    """The outcome label for a webhook answered with ``status``."""
    if 200 <= status < 300:
        return "accepted"
    return _OUTCOMES.get(status, "error")


class WebhookCounters:
    """Webhook requests and rejections, as plain ints the collector reads.

    Only the node's trio thread increments them (the ops app's handlers), so
    they need no lock.
    """

    def __init__(self) -> None:
        self._requests: Counter[tuple[str, WebhookOutcome]] = Counter()
        self._rejected: Counter[tuple[str, str]] = Counter(dict.fromkeys(_KNOWN_REJECTIONS, 0))
        self._dropped: Counter[str] = Counter({"whatsapp": 0})

    def __repr__(self) -> str:
        return (
            f"<WebhookCounters requests={self._requests.total()} rejected={self._rejected.total()}>"
        )

    def count(self, provider: str, status: int, *, reason: str | None = None) -> None:
        """Count one webhook request answered with ``status``.

        Args:
            provider: ``whatsapp`` or ``telegram``.
            status: the HTTP status it was answered with.
            reason: for a 403, why it was refused (``signature``,
                ``verify_token``, ``secret``); counted as a rejection.
        """
        self._requests[provider, webhook_outcome(status)] += 1
        if status == 403 and reason is not None:
            self._rejected[provider, reason] += 1

    def dropped(self, provider: str, items: int) -> None:
        """Count ``items`` malformed items that channels left out of signed notifications."""
        if items:
            self._dropped[provider] += items

    def dropped_items(self) -> Mapping[str, int]:
        """Malformed items left out of signed notifications, by provider."""
        return dict(self._dropped)

    def requests(self) -> Mapping[tuple[str, WebhookOutcome], int]:
        """Requests by ``(provider, outcome)``."""
        return dict(self._requests)

    def rejected(self) -> Mapping[tuple[str, str], int]:
        """Rejections by ``(provider, reason)``, known reasons included at 0."""
        return dict(self._rejected)


def _channel_counter(name: str, documentation: str) -> CounterMetricFamily:
    return CounterMetricFamily(PREFIX + name, documentation, labels=_CHANNEL_LABELS)


def _channel_gauge(name: str, documentation: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, documentation, labels=_CHANNEL_LABELS)


# (per-channel name, aggregate name, help, ChannelStatistics attribute) for the counters.
_CHANNEL_COUNTERS: Final = (
    ("channel_messages_sent", "messages_sent", "Messages the platform accepted.", "sent"),
    ("channel_send_failures", "send_failures", "Send attempts that failed.", "send_failures"),
    (
        "channel_messages_received",
        "messages_received",
        "Inbound events accepted (after dedupe).",
        "received",
    ),
    (
        "channel_duplicates",
        "inbound_duplicates",
        "Inbound events dropped as duplicates.",
        "duplicates",
    ),
    ("channel_reconnects", "reconnects", "Reconnections after a lost link.", "reconnects"),
    (
        "channel_rate_limit_waits",
        "rate_limit_waits",
        "Sends that waited for a rate limiter.",
        "rate_limit_waits",
    ),
    (
        "channel_restarts",
        "actor_restarts",
        "Restarts of channel actors by their supervisor.",
        "restarts",
    ),
    (
        "channel_subscriber_drops",
        "subscriber_drops",
        "Events dropped for full subscribers.",
        "subscriber_drops",
    ),
)
# (per-channel name, aggregate name, help) for the gauges.
_CHANNEL_GAUGES: Final = (
    ("channel_dead_letters", "dead_letters", "Messages in the dead-letter queue."),
    ("channel_mailbox_depth", "mailbox_depth", "Messages waiting in the mailbox."),
    ("channel_connected", "channels_connected", "Channels connected (1 while connected)."),
)


class NodeCollector:
    """A prometheus_client collector that reads the node on every scrape.

    Args:
        view: the node.
        webhooks: the ops app's webhook counters.
        metrics: whether series per channel are exported.
    """

    def __init__(
        self, view: NodeView, webhooks: WebhookCounters, metrics: MetricsConfig | None = None
    ) -> None:
        self._view = view
        self._webhooks = webhooks
        self._metrics = metrics or MetricsConfig()

    def __repr__(self) -> str:
        return (
            f"<NodeCollector node={self._view.node_id!r} per_channel={self._metrics.per_channel}>"
        )

    def collect(self) -> Iterable[Metric]:
        """Build every ``switchboard_*`` family from the node's current state."""
        # Only the channels running here: another node of a cluster reports its own.
        totals = self._view.channel_totals()
        per_channel = self._metrics.per_channel_series(totals.channels)
        yield self._states(totals)
        yield from self._aggregates(totals)
        yield GaugeMetricFamily(
            PREFIX + "metrics_per_channel",
            "1 when the switchboard_channel_* series (one per channel) are exported.",
            1 if per_channel else 0,
        )
        if per_channel:
            yield from self._channels([s for s in self._view.channels() if not s.remote])
        statistics = self._view.statistics()
        yield from self._node(statistics)
        yield from self._histograms(statistics.latencies, statistics.store_backend)
        yield from self._webhook_families()
        # Families of the node's other surfaces (the admin console's refusals).
        for source in list(getattr(self._view, "metric_sources", ())):
            yield from source()

    def _states(self, totals: ChannelTotals) -> Metric:
        family = GaugeMetricFamily(
            PREFIX + "channels",
            "Channels by provider and state (every state listed, 0 included).",
            labels=("provider", "state"),
        )
        counts: dict[str, Counter[str]] = {}
        for (provider, status), count in totals.states.items():
            counts.setdefault(provider, Counter())[state_of(status)] += count
        for provider, states in sorted(counts.items()):
            for state in CHANNEL_STATES:
                family.add_metric((provider, state), states[state])
        return family

    def _aggregates(self, totals: ChannelTotals) -> Iterator[Metric]:
        """The channel figures summed per (tenant, provider): a few series at any size."""
        families: list[CounterMetricFamily | GaugeMetricFamily] = []
        # The counters, then the gauges: TOTAL_FIELDS' order.
        for _, name, documentation, _ in _CHANNEL_COUNTERS:
            families.append(
                CounterMetricFamily(
                    PREFIX + name,
                    f"{documentation} Per tenant and provider.",
                    labels=_AGGREGATE_LABELS,
                )
            )
        for _, name, documentation in _CHANNEL_GAUGES:
            families.append(
                GaugeMetricFamily(
                    PREFIX + name,
                    f"{documentation} Per tenant and provider.",
                    labels=_AGGREGATE_LABELS,
                )
            )
        for labels, row in sorted(totals.sums.items()):
            for family, value in zip(families, row, strict=True):
                family.add_metric(labels, value)
        yield from families

    def _channels(self, snapshots: Sequence[ChannelSnapshot]) -> Iterator[Metric]:
        counters = [
            (_channel_counter(name, documentation), attribute)
            for name, _, documentation, attribute in _CHANNEL_COUNTERS
        ]
        dead_letters, depth, connected = (
            _channel_gauge(name, documentation) for name, _, documentation in _CHANNEL_GAUGES
        )
        for snapshot in snapshots:
            labels = (snapshot.channel_id, snapshot.tenant, snapshot.provider)
            statistics = snapshot.statistics
            for family, attribute in counters:
                # A channel that never started has sent and received nothing: 0, not absent.
                value = getattr(statistics, attribute) if statistics is not None else 0
                family.add_metric(labels, value)
            dead_letters.add_metric(labels, statistics.dead_letters if statistics else 0)
            depth.add_metric(labels, snapshot.mailbox_depth)
            connected.add_metric(labels, 1 if channel_state(snapshot) == "connected" else 0)
        for family, _ in counters:
            yield family
        yield from (dead_letters, depth, connected)

    def _histograms(self, latencies: Sequence[LatencySnapshot], backend: str) -> Iterator[Metric]:
        families: dict[str, HistogramMetricFamily] = {}
        for timing, (name, documentation) in _HISTOGRAMS.items():
            labels = ("backend",) if timing == "store_flush" else ("provider",)
            families[timing] = HistogramMetricFamily(PREFIX + name, documentation, labels=labels)
        for latency in latencies:
            buckets = [
                (floatToGoString(bound), count)
                for bound, count in zip(latency.bounds, latency.cumulative, strict=False)
            ]
            buckets.append(("+Inf", latency.count))
            label = backend if latency.timing == "store_flush" else latency.provider
            families[latency.timing].add_metric((label,), buckets, latency.total)
        yield from families.values()

    def _node(self, statistics: NodeStatistics) -> Iterator[Metric]:
        info = GaugeMetricFamily(PREFIX + "node_info", "The node (always 1).", labels=("node",))
        info.add_metric((statistics.node_id,), 1)
        yield info
        yield GaugeMetricFamily(
            PREFIX + "node_uptime_seconds", "Seconds since the node started.", statistics.uptime
        )
        yield GaugeMetricFamily(
            PREFIX + "node_draining",
            "1 while the node is shutting down.",
            1 if statistics.draining else 0,
        )
        yield GaugeMetricFamily(
            PREFIX + "node_channels_configured",
            "Channels the configuration asks for.",
            statistics.configured,
        )
        yield GaugeMetricFamily(
            PREFIX + "node_channels_started", "Channels started.", statistics.started
        )
        yield GaugeMetricFamily(
            PREFIX + "store_pending_events",
            "Inbound events not yet written to the store.",
            statistics.store_pending,
        )
        yield GaugeMetricFamily(
            PREFIX + "node_sends_in_flight",
            "Sends this node holds and has not finished (in a cluster, those it "
            "forwarded to their channel's owner too).",
            statistics.sends_in_flight,
        )
        if statistics.sends_limit is not None:
            yield GaugeMetricFamily(
                PREFIX + "node_sends_limit",
                "The most sends in flight this node takes now: fewer than its bound once "
                "its event loop has run behind, until the limit has grown back.",
                statistics.sends_limit,
            )
        yield GaugeMetricFamily(
            PREFIX + "node_loop_lag_seconds",
            "The event loop's worst lateness in the last ten seconds.",
            statistics.loop_lag,
        )
        refused = CounterMetricFamily(
            PREFIX + "node_sends_refused",
            "Sends refused by admission control (Overloaded), by the bound that refused them.",
            labels=("scope",),
        )
        for scope in ("node", "channel", "loop"):
            refused.add_metric((scope,), statistics.sends_refused.get(scope, 0))
        yield refused

    def _webhook_families(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            PREFIX + "webhook_requests",
            "Webhook requests by provider and outcome.",
            labels=("provider", "outcome"),
        )
        for (provider, outcome), count in sorted(self._webhooks.requests().items()):
            requests.add_metric((provider, outcome), count)
        yield requests
        rejected = CounterMetricFamily(
            PREFIX + "webhook_rejected",
            "Webhook requests refused with 403 (bad signature, secret or verify token).",
            labels=("provider", "reason"),
        )
        for (provider, reason), count in sorted(self._webhooks.rejected().items()):
            rejected.add_metric((provider, reason), count)
        yield rejected
        dropped = CounterMetricFamily(
            PREFIX + "webhook_items_dropped",
            "Malformed items (messages, statuses, contacts) left out of signed notifications.",
            labels=("provider",),
        )
        for provider, count in sorted(self._webhooks.dropped_items().items()):
            dropped.add_metric((provider,), count)
        yield dropped


def ops_registry(
    view: NodeView, webhooks: WebhookCounters, *, metrics: MetricsConfig | None = None
) -> CollectorRegistry:
    """A registry of our own with the node's collector and the process collectors.

    Args:
        view: the node.
        webhooks: the ops app's webhook counters.
        metrics: whether series per channel are exported (default: ``[metrics]``'s defaults).

    Returns:
        A registry holding :class:`NodeCollector`, ``ProcessCollector``,
        ``PlatformCollector`` and ``GCCollector`` (never the global one).
    """
    registry = CollectorRegistry()
    registry.register(NodeCollector(view, webhooks, metrics))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry
