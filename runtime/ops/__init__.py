"""The node's ops HTTP surface: probes, health, Prometheus metrics, webhooks, a message API.

Build the ASGI app with :func:`ops_app`, or serve it with hypercorn's trio
server through :func:`serve_ops` (``await nursery.start(serve_ops, node,
host=..., port=...)`` returns the bound base URL). Everything reads the node
through :class:`runtime.view.NodeView`.
"""

from .app import MAX_BODY, MESSAGE_API, WEBHOOK_TIMEOUT, ops_app
from .health import (
    CHANNEL_STATES,
    HEALTH_HTTP_STATUS,
    ChannelState,
    HealthStatus,
    channel_state,
    health_report,
    health_summary,
)
from .metrics import NodeCollector, WebhookCounters, WebhookOutcome, ops_registry
from .server import serve_ops

__all__ = [
    "CHANNEL_STATES",
    "HEALTH_HTTP_STATUS",
    "MAX_BODY",
    "MESSAGE_API",
    "WEBHOOK_TIMEOUT",
    "ChannelState",
    "HealthStatus",
    "NodeCollector",
    "WebhookCounters",
    "WebhookOutcome",
    "channel_state",
    "health_report",
    "health_summary",
    "ops_app",
    "ops_registry",
    "serve_ops",
]
