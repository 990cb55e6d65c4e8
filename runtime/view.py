"""What the node shows of itself: channel snapshots, and the face the ops server sees.

Design: the ops HTTP server, the metrics collector and the admin console read
the node through :class:`NodeView` only, so they can be tested against a
small stand-in and never reach into the supervision tree. Snapshots are
frozen and cheap: they read counters the channels keep as plain integers, so
a scrape costs no lock on the message path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from actors import ChannelStatistics, ChannelStatus
from providers.base import Connection, OutboundMessage, SendResult
from providers.operations import Operation

if TYPE_CHECKING:
    from .store.durable import StoredDeadLetter

__all__ = ["ChannelSnapshot", "NodeStatistics", "NodeView", "WebhookTarget"]


@attrs.frozen(kw_only=True)
class ChannelSnapshot:
    """One channel as the node sees it.

    Attributes:
        channel_id: the channel.
        tenant: its tenant.
        provider: its provider name.
        status: its connection status; ``FAILED`` too for a channel that
            could not be started at all (see ``start_error``).
        statistics: its counters (``None`` if it never started).
        mailbox_depth: messages waiting in its mailbox.
        start_error: why the node could not start it, if it could not.
        owner: in a cluster, the node that runs it (for a channel elsewhere:
            its lease holder as last read, else the node placement puts it on).
        lease_token: in a cluster, its lease's fencing token, if known.
        remote: in a cluster, it runs on another node (no statistics here).
    """

    channel_id: str
    tenant: str
    provider: str
    status: ChannelStatus
    statistics: ChannelStatistics | None
    mailbox_depth: int = 0
    start_error: str | None = None
    owner: str | None = None
    lease_token: int | None = None
    remote: bool = False

    @property
    def problem(self) -> str | None:
        """Why this channel is not healthy, or ``None`` if it is connected."""
        if self.start_error is not None:
            return f"did not start: {self.start_error}"
        if self.status is ChannelStatus.CONNECTED:
            return None
        last = self.statistics.last_error if self.statistics is not None else None
        return f"{self.status.value}" + (f": {last}" if last else "")


@attrs.frozen(kw_only=True)
class WebhookTarget:
    """A channel that takes platform input by webhook.

    Attributes:
        channel_id: the channel.
        options: its provider options (WhatsApp: ``phone_number_id``).
        connection: its live connection, or ``None`` while it is not connected
            (answer 503 so the platform retries).
    """

    channel_id: str
    options: Mapping[str, Any]
    connection: Connection | None


@attrs.frozen(kw_only=True)
class NodeStatistics:
    """Node-wide figures beyond the channels'.

    Attributes:
        node_id: the node's id.
        started: channels started at startup (or since).
        configured: channels the config asked for.
        restarts: channel restarts by its supervisor.
        draining: the node is shutting down and takes no new work.
        uptime: seconds since the node started.
        store_backend: ``memory`` or ``postgres``.
        store_pending: inbound events not yet written to the store.
    """

    node_id: str
    started: int
    configured: int
    restarts: int
    draining: bool
    uptime: float
    store_backend: str
    store_pending: int


class NodeView(Protocol):
    """The node as the ops server sees it."""

    @property
    def node_id(self) -> str:
        """The node's id."""
        ...

    @property
    def ready(self) -> bool:
        """True once started and until draining begins."""
        ...

    def channels(self) -> Sequence[ChannelSnapshot]:
        """Every configured channel, started or not."""
        ...

    def statistics(self) -> NodeStatistics:
        """Node-wide figures."""
        ...

    def webhook_targets(self, provider: str) -> Sequence[WebhookTarget]:
        """The channels of ``provider`` that take input by webhook."""
        ...

    async def send(
        self,
        channel_id: str,
        message: OutboundMessage,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> SendResult:
        """Send on a channel; see :meth:`runtime.node.Node.send` for the errors."""
        ...

    async def perform(
        self,
        channel_id: str,
        op: Operation,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> SendResult | None:
        """Perform an operation; see :meth:`runtime.node.Node.perform`."""
        ...

    async def dead_letters(
        self,
        *,
        channel: str | None = None,
        tenant: str | None = None,
        error_type: str | None = None,
        older_than: float | None = None,
        limit: int = ...,
    ) -> list[StoredDeadLetter]:
        """Dead letters across channels; see :class:`runtime.dead_letters.DeadLetterOps`."""
        ...

    async def replay_dead_letters(self, channel_id: str, ids: Sequence[int] | None = None) -> int:
        """Send a channel's dead letters again; returns how many."""
        ...

    async def discard_dead_letters(self, channel_id: str, ids: Sequence[int] | None = None) -> int:
        """Forget a channel's dead letters; returns how many."""
        ...
