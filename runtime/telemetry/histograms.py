"""Latency histograms the message path fills with plain ints, and the scrape reads.

Design: as the counters, nothing on the message path touches
prometheus_client (its ``Histogram.observe`` takes a lock per call). A
:class:`Histogram` is a list of per-bucket counts and a sum; ``observe`` is
one ``bisect`` and two additions, in the node's trio thread, so it needs no
lock. The scrape takes a :class:`LatencySnapshot` (cumulative counts, as
Prometheus wants them) and the collector builds the families from it.

What is timed, per provider (seconds, on trio's clock):

- ``send``: a send accepted by the node until the platform accepted it
  (queueing, rate-limit waits and retries included);
- ``connect``: a handshake, from its turn at the provider's connect gate
  until the link is up;
- ``inbound``: an inbound event read from the platform until it reached the
  subscribers (the store's write included);

and, per node, ``store_flush``: one batch written to the store.

The buckets resolve 1 ms to 30 s (:data:`LATENCY_BUCKETS`).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from typing import Final, Literal

import attrs

__all__ = [
    "LATENCY_BUCKETS",
    "Histogram",
    "LatencySnapshot",
    "NodeTimings",
    "ProviderTimings",
    "Timing",
]

LATENCY_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)  # seconds: the upper bounds, +Inf besides

Timing = Literal["send", "connect", "inbound", "store_flush"]


@attrs.frozen(kw_only=True)
class LatencySnapshot:
    """One histogram at one instant.

    Attributes:
        timing: what it times.
        provider: the provider (empty for node-wide timings).
        bounds: the buckets' upper bounds, seconds (``+Inf`` not included).
        cumulative: observations at or below each bound, then the total.
        total: the sum of the observations, seconds.
    """

    timing: Timing
    provider: str
    bounds: tuple[float, ...]
    cumulative: tuple[int, ...]
    total: float

    @property
    def count(self) -> int:
        """How many observations."""
        return self.cumulative[-1]


class Histogram:
    """Counts of observations per bucket, and their sum.

    Args:
        bounds: the buckets' upper bounds, ascending (default :data:`LATENCY_BUCKETS`).
    """

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS) -> None:
        if list(bounds) != sorted(set(bounds)):
            raise ValueError(f"bucket bounds must ascend without repeats, got {list(bounds)}")
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last: above every bound
        self.total = 0.0

    def __repr__(self) -> str:
        return f"<Histogram count={sum(self.counts)} sum={self.total:.3f}s>"

    def observe(self, value: float) -> None:
        """Count one observation (``value <= bound`` falls in that bucket: Prometheus' ``le``)."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def snapshot(self, timing: Timing, provider: str = "") -> LatencySnapshot:
        """The histogram now, with cumulative counts."""
        cumulative = []
        running = 0
        for count in self.counts:
            running += count
            cumulative.append(running)
        return LatencySnapshot(
            timing=timing,
            provider=provider,
            bounds=self.bounds,
            cumulative=tuple(cumulative),
            total=self.total,
        )


class ProviderTimings:
    """The histograms of one provider's channels (shared by all of them).

    A channel's memory holds it as its ``timings``: the channel calls
    :meth:`connected` and :meth:`delivered`; the node calls :meth:`sent`.
    """

    __slots__ = ("connect", "inbound", "send")

    def __init__(self) -> None:
        self.send = Histogram()
        self.connect = Histogram()
        self.inbound = Histogram()

    def __repr__(self) -> str:
        return f"<ProviderTimings send={self.send!r} connect={self.connect!r}>"

    def sent(self, seconds: float) -> None:
        """A send took this long, accepted to platform-accepted."""
        self.send.observe(seconds)

    def connected(self, seconds: float) -> None:
        """A handshake took this long."""
        self.connect.observe(seconds)

    def delivered(self, seconds: float) -> None:
        """An inbound event took this long to reach the subscribers."""
        self.inbound.observe(seconds)


class NodeTimings:
    """Every provider's timings, and the store's flushes, for one node."""

    __slots__ = ("providers", "store_flush")

    def __init__(self, store_flush: Histogram | None = None) -> None:
        self.providers: dict[str, ProviderTimings] = {}
        self.store_flush = store_flush

    def __repr__(self) -> str:
        return f"<NodeTimings providers={sorted(self.providers)}>"

    def provider(self, name: str) -> ProviderTimings:
        """The timings of provider ``name`` (made on first use)."""
        found = self.providers.get(name)
        if found is None:
            found = self.providers[name] = ProviderTimings()
        return found

    def snapshots(self) -> tuple[LatencySnapshot, ...]:
        """Every histogram now, providers in name order."""
        taken = []
        for name, timings in sorted(self.providers.items()):
            taken.append(timings.send.snapshot("send", name))
            taken.append(timings.connect.snapshot("connect", name))
            taken.append(timings.inbound.snapshot("inbound", name))
        if self.store_flush is not None:
            taken.append(self.store_flush.snapshot("store_flush"))
        return tuple(taken)
