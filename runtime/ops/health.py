"""The node's health, as one pure function of what the node shows of itself.

Design:
- :func:`health_report` reads a :class:`~runtime.view.NodeView` (its channel
  snapshots and node statistics) and returns a JSON-ready ``dict``; no I/O,
  no clock, so it is tested with plain snapshots. The ops app serves it,
  scrubbed, at ``GET /health/detail`` (behind the API token), and its
  :func:`health_summary` (status and counts, no channel named) at the
  public ``GET /health``, both with :data:`HEALTH_HTTP_STATUS`.
- Each channel is put in one of :data:`CHANNEL_STATES`, the vocabulary shared
  with the ``switchboard_channels{provider,state}`` metric: a channel the
  node could not start (``start_error``) or whose actor has not begun to
  connect (``idle``) is ``not_started``; the other states are the channel's
  own.
- The overall status:

  - ``ok``: every channel is connected (a node without channels is ``ok``);
  - ``degraded``: some channel is not connected, but at least one is
    connected or still trying (``connecting`` / ``backing_off``), so the
    node may recover by itself;
  - ``error``: channels exist, none is connected and none is trying (all
    failed, stopped or not started): nothing will improve without an operator.

  Draining does not change the status: it is reported (``draining``) and it
  is what ``/readyz`` answers; channels a draining node has stopped show up
  as ``stopped`` anyway.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Final, Literal

from actors import ChannelStatus

from ..view import ChannelSnapshot, NodeView

__all__ = [
    "CHANNEL_STATES",
    "HEALTH_HTTP_STATUS",
    "ChannelState",
    "HealthStatus",
    "channel_state",
    "health_report",
    "health_summary",
    "state_of",
]

ChannelState = Literal["connected", "connecting", "backing_off", "failed", "stopped", "not_started"]
"""Where a channel stands, as health and metrics report it."""

HealthStatus = Literal["ok", "degraded", "error"]
"""The node's overall health."""

CHANNEL_STATES: Final[tuple[ChannelState, ...]] = (
    "connected",
    "connecting",
    "backing_off",
    "failed",
    "stopped",
    "not_started",
)

HEALTH_HTTP_STATUS: Final[dict[HealthStatus, int]] = {"ok": 200, "degraded": 200, "error": 503}
"""The HTTP status ``GET /health`` answers for each overall status."""

_STATES: Final[dict[ChannelStatus, ChannelState]] = {
    ChannelStatus.IDLE: "not_started",
    ChannelStatus.CONNECTING: "connecting",
    ChannelStatus.CONNECTED: "connected",
    ChannelStatus.BACKING_OFF: "backing_off",
    ChannelStatus.STOPPED: "stopped",
    ChannelStatus.FAILED: "failed",
}

_TRYING: Final = ("connecting", "backing_off")
_UPTIME_DIGITS: Final = 3  # milliseconds are enough for a probe


def channel_state(snapshot: ChannelSnapshot) -> ChannelState:
    """The state health and metrics report for one channel.

    Args:
        snapshot: the channel.

    Returns:
        ``not_started`` if the node could not start it or it has not begun
        to connect, else its own status (``connected``, ``backing_off`` ...).
    """
    if snapshot.start_error is not None:
        return "not_started"
    return _STATES[snapshot.status]


def state_of(status: ChannelStatus | None) -> ChannelState:
    """The state of a channel in ``status`` (``None``: the node could not start it)."""
    return "not_started" if status is None else _STATES[status]


def _overall(states: Counter[ChannelState], total: int) -> HealthStatus:
    if states["connected"] == total:
        return "ok"  # includes the empty node
    if states["connected"] or any(states[state] for state in _TRYING):
        return "degraded"
    return "error"


def health_report(view: NodeView) -> dict[str, Any]:
    """The node's health, ready to serialize as JSON.

    Args:
        view: the node.

    Returns:
        ``{"status", "node", "uptime", "draining", "channels": {"started",
        "configured"}, "providers": {name: {"total", <every state>: count}},
        "problems": [{"channel", "tenant", "provider", "status", "reason"}]}``
        where ``problems`` lists every channel that is not connected, sorted
        by channel id, and ``providers`` is sorted by name.
    """
    snapshots = view.channels()
    statistics = view.statistics()
    overall: Counter[ChannelState] = Counter()
    per_provider: dict[str, Counter[ChannelState]] = {}
    problems: list[dict[str, str]] = []
    for snapshot in snapshots:
        if snapshot.remote:
            continue  # another node of the cluster runs it, and reports on it
        state = channel_state(snapshot)
        overall[state] += 1
        per_provider.setdefault(snapshot.provider, Counter())[state] += 1
        if state != "connected":
            problems.append(
                {
                    "channel": snapshot.channel_id,
                    "tenant": snapshot.tenant,
                    "provider": snapshot.provider,
                    "status": state,
                    "reason": snapshot.problem or state,
                }
            )
    problems.sort(key=lambda problem: problem["channel"])
    providers = {
        name: {"total": sum(counts.values()), **{state: counts[state] for state in CHANNEL_STATES}}
        for name, counts in sorted(per_provider.items())
    }
    return {
        "status": _overall(overall, sum(overall.values())),
        "node": view.node_id,
        "uptime": round(statistics.uptime, _UPTIME_DIGITS),
        "draining": statistics.draining,
        "channels": {"started": statistics.started, "configured": statistics.configured},
        "providers": providers,
        "problems": problems,
    }


def health_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The public part of a :func:`health_report`: the status and the counts.

    Which channels have problems, their tenants and their errors stay in the
    report (served behind the API token): a platform's error text may echo
    a credential, and channel ids and tenants are not public.

    Args:
        report: a :func:`health_report`.

    Returns:
        The report without ``problems``, with ``problem_count`` instead.
    """
    summary = {key: value for key, value in report.items() if key != "problems"}
    summary["problem_count"] = len(report["problems"])
    return summary
