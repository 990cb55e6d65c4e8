"""The ``target`` scenario's view of the node: ``/metrics`` scrapes.

Design:
- ``/metrics`` is scraped before, every ``sample_interval`` during, and
  after the load, on a connection of its own: node-wide reconnects, dead
  letters, messages sent and send failures, mailbox depth, and the node
  process's RSS and CPU from prometheus_client's process collector (Linux
  only). A per-channel family is summed over the node's channels.
- A scrape that fails never stops the load: :class:`Sampler` keeps why it
  failed, for the notes.
"""

from __future__ import annotations

import math
from typing import Final

import attrs
import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["SCRAPE_TIMEOUT", "NodeSample", "Sampler", "parse_metrics"]

SCRAPE_TIMEOUT: Final = 5.0  # seconds one /metrics scrape may take (kept for the last one)


@attrs.frozen(kw_only=True)
class NodeSample:
    """One ``/metrics`` scrape, summed over every channel of the node.

    Attributes:
        at: when the scrape began, on the trio clock.
        rss: the node process's resident memory in bytes, if it reports it.
        cpu: the node process's CPU seconds so far, if it reports them.
        reconnects: reconnections after a lost link.
        dead_letters: messages in the dead-letter queues.
        sent: messages the platforms accepted.
        send_failures: send attempts that failed.
        mailbox_depth: messages waiting in mailboxes.
    """

    at: float
    rss: float | None
    cpu: float | None
    reconnects: float
    dead_letters: float
    sent: float
    send_failures: float
    mailbox_depth: float


_SUMMED: Final = {
    "switchboard_channel_reconnects_total": "reconnects",
    "switchboard_channel_dead_letters": "dead_letters",
    "switchboard_channel_messages_sent_total": "sent",
    "switchboard_channel_send_failures_total": "send_failures",
    "switchboard_channel_mailbox_depth": "mailbox_depth",
}
_PROCESS: Final = {"process_resident_memory_bytes": "rss", "process_cpu_seconds_total": "cpu"}


def parse_metrics(text: str, at: float) -> NodeSample:
    """Sum the per-channel families of one scrape and read the process figures.

    Raises:
        ValueError: ``text`` is not Prometheus exposition text.
    """
    sums = dict.fromkeys(_SUMMED.values(), 0.0)
    process: dict[str, float | None] = dict.fromkeys(_PROCESS.values(), None)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in _SUMMED:
                sums[_SUMMED[sample.name]] += sample.value
            elif sample.name in _PROCESS:
                process[_PROCESS[sample.name]] = sample.value
    return NodeSample(
        at=at,
        rss=process["rss"],
        cpu=process["cpu"],
        reconnects=sums["reconnects"],
        dead_letters=sums["dead_letters"],
        sent=sums["sent"],
        send_failures=sums["send_failures"],
        mailbox_depth=sums["mailbox_depth"],
    )


async def _scrape(client: httpx.AsyncClient, at: float) -> NodeSample | str:
    """One scrape, or why it failed (a scrape failure never stops the load)."""
    try:
        response = await client.get("/metrics")
        response.raise_for_status()
        return parse_metrics(response.text, at)
    except (httpx.HTTPError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"


class Sampler:
    """Scrapes ``/metrics`` at a fixed interval while the load runs."""

    def __init__(self, client: httpx.AsyncClient, interval: float) -> None:
        self.client = client
        self.interval = interval
        self.samples: list[NodeSample] = []
        self.failures: list[str] = []

    def __repr__(self) -> str:
        return f"<Sampler {len(self.samples)} samples, {len(self.failures)} failed>"

    async def scrape(self) -> NodeSample | None:
        result = await _scrape(self.client, trio.current_time())
        if isinstance(result, str):
            self.failures.append(result)
            return None
        self.samples.append(result)
        return result

    async def run_until_cancelled(self, t0: float, horizon: float) -> None:
        """Scrape every ``interval`` from ``t0`` for at most ``horizon`` seconds."""
        for k in range(1, math.ceil(horizon / self.interval) + 1):
            await trio.sleep_until(t0 + k * self.interval)
            await self.scrape()
