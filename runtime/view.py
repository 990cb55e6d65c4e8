"""What the node shows of itself: channel snapshots, and the face the ops server sees.

Design: the ops HTTP server, the metrics collector and the admin console read
the node through :class:`NodeView` only, so they can be tested against a
small stand-in and never reach into the supervision tree. Snapshots are
frozen and cheap: they read counters the channels keep as plain integers, so
a scrape costs no lock on the message path.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol

import attrs

from actors import ChannelStatistics, ChannelStatus
from providers.base import Connection, OutboundMessage, SendResult
from providers.operations import Operation

from .telemetry.histograms import LatencySnapshot

if TYPE_CHECKING:
    from providers.whatsapp.webhook import PostSignatures

    from .store.durable import StoredDeadLetter
    from .webhooks import WebhookReply

__all__ = [
    "TOTAL_FIELDS",
    "ChannelDetail",
    "ChannelSnapshot",
    "ChannelTotals",
    "NodeStatistics",
    "NodeView",
    "PostChecker",
    "WebhookLinks",
    "WebhookTarget",
    "links_of",
    "totals_of",
]

TOTAL_FIELDS: Final = (
    "sent",
    "send_failures",
    "received",
    "duplicates",
    "reconnects",
    "rate_limit_waits",
    "restarts",
    "subscriber_drops",
    "dead_letters",
    "mailbox_depth",
    "connected",
)
"""The figures :class:`ChannelTotals` sums per tenant and provider, in order."""


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
class ChannelDetail:
    """One channel in depth, read off its memory without asking its actor.

    Everything here is a copy made at one instant; nothing waits for a busy
    channel and no secret is in it (the session shows only its keys).

    Attributes:
        snapshot: what :meth:`runtime.node.Node.channels` shows of it.
        limits: its send limits (rates per second, bursts, text length).
        breaker: its circuit breaker (state, counters), if it runs here.
        reconnect_failures: consecutive failed connects so far.
        incarnations: actor incarnations (1 + restarts).
        session: the provider's session, keys only, and which provider wrote it.
        dead_letters: its dead letters, oldest first (id, error, attempts,
            idempotency key, peer).
        dead_letters_dropped: letters the bounded queue let go.
        inbound_pending: inbound events the store has not taken yet.
    """

    snapshot: ChannelSnapshot
    limits: Mapping[str, float] = attrs.field(factory=dict)
    breaker: Mapping[str, Any] | None = None
    reconnect_failures: int = 0
    incarnations: int = 0
    session: Mapping[str, Any] | None = None
    dead_letters: tuple[Mapping[str, Any], ...] = ()
    dead_letters_dropped: int = 0
    inbound_pending: int = 0


class WebhookTarget:
    """A channel that takes platform input by webhook.

    Attributes:
        channel_id: the channel.
        options: its provider options (WhatsApp: ``phone_number_id``).
        connection: its live connection, or ``None`` while it is not connected
            (answer 503 so the platform retries). Read when asked: a target
            made from a running channel (``channel``) reads its channel's
            connection at that moment, so a node can keep its targets between
            requests and never hand a webhook to a link that has gone.
        remote: in a cluster, it runs on another node: a request for it is
            checked here and carried there (:meth:`NodeView.forward_webhook`).
        signer: a WhatsApp channel's signature check made from its config
            (``webhook_signer``, ``check_post``), for a post that comes while it
            has no live link here: a post that no channel's app secret signed is
            refused before it is read. None: only its live link judges.
    """

    __slots__ = ("_channel", "_connection", "channel_id", "options", "remote", "signer")

    def __init__(
        self,
        *,
        channel_id: str,
        options: Mapping[str, Any],
        connection: Connection | None = None,
        remote: bool = False,
        channel: _HasConnection | None = None,
        signer: PostChecker | None = None,
    ) -> None:
        self.channel_id = channel_id
        self.options = options
        self.remote = remote
        self.signer = signer
        self._connection = connection
        self._channel = channel

    @property
    def connection(self) -> Connection | None:
        channel = self._channel
        return self._connection if channel is None else channel.connection

    def __repr__(self) -> str:
        where = "remote" if self.remote else "here"
        return f"<WebhookTarget {self.channel_id!r} {where}>"


class PostChecker(Protocol):
    """What checks a WhatsApp post's signature: a live link, or a channel's config."""

    @property
    def webhook_signer(self) -> str:
        """The app secret's signer id (no secret)."""
        ...

    def check_post(self, signatures: PostSignatures) -> bool:
        """Whether the post is signed with the app secret."""
        ...


@attrs.frozen(kw_only=True)
class WebhookLinks:
    """The live links among a provider's webhook targets, as they stood at one instant.

    What a WhatsApp post is checked against before it is parsed: the app
    secrets (signers) of the channels connected here. A node keeps it until a
    link comes or goes or its table changes, so a webhook is never a walk
    over every channel; each target still reads its live link when a post is
    handed to it, so a link that has gone since is never handed one.

    Attributes:
        live: the targets with a live link here, in the targets' order.
        signers: per signer id (``webhook_signer``, no secret), the first
            live link that judges by it: one to check a post's signature with.
        judged: how many of ``live`` judge by a signer (the rest judge for
            themselves).
        remote: whether any target runs on another node.
        elsewhere: per signer id, the configured check (``WebhookTarget.signer``)
            of the first target with no live link here, for signers no live link has.
        complete: whether every target (at least one) is judged by a signer,
            its live link's or its config's: a post none of them signed is forged.
    """

    live: Sequence[WebhookTarget]
    signers: Mapping[str, Connection]
    judged: int
    remote: bool
    elsewhere: Mapping[str, PostChecker] = attrs.field(factory=dict)
    complete: bool = False


def links_of(targets: Sequence[WebhookTarget]) -> WebhookLinks:
    """:class:`WebhookLinks` of ``targets``, each target's live link read once."""
    live: list[WebhookTarget] = []
    signers: dict[str, Connection] = {}
    elsewhere: dict[str, PostChecker] = {}
    judged = 0
    unjudged = 0  # targets judged by no signer: their own links decide
    remote = False
    for target in targets:
        remote = remote or target.remote
        link = target.connection
        if link is None:
            if target.signer is None:
                unjudged += 1
            else:
                elsewhere.setdefault(target.signer.webhook_signer, target.signer)
            continue
        live.append(target)
        signer = getattr(link, "webhook_signer", None)
        if isinstance(signer, str):
            judged += 1
            signers.setdefault(signer, link)
        else:
            unjudged += 1
    for signer in signers:
        elsewhere.pop(signer, None)
    return WebhookLinks(
        live=live,
        signers=signers,
        judged=judged,
        remote=remote,
        elsewhere=elsewhere,
        complete=bool(targets) and not unjudged,
    )


class _HasConnection(Protocol):
    @property
    def connection(self) -> Connection | None: ...


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
        sends_in_flight: sends the node holds, not finished: those it sends
            (its callers' and those other nodes forwarded to it) and, in a
            cluster, those it forwarded to their channel's owner (bounded by
            ``[node] max_sends_in_flight``).
        sends_limit: the most sends in flight the node takes now:
            ``[node] max_sends_in_flight``, or fewer once its event loop has
            run behind (as many as it runs within ``[node] max_loop_lag``,
            until the limit has grown back); None where it was not reported.
        sends_refused: sends refused by admission control since the start,
            by ``Overloaded.scope`` (``node``, ``channel``, ``loop``).
        loop_lag: the event loop's worst lateness in the last ten seconds,
            in seconds (past ``[node] max_loop_lag``, the node limits its sends
            in flight).
        latencies: the node's latency histograms (send, connect and inbound
            per provider; store flushes), as they stand.
    """

    node_id: str
    started: int
    configured: int
    restarts: int
    draining: bool
    uptime: float
    store_backend: str
    store_pending: int
    latencies: tuple[LatencySnapshot, ...] = ()
    sends_in_flight: int = 0
    sends_limit: int | None = None
    sends_refused: Mapping[str, int] = attrs.field(factory=dict)
    loop_lag: float = 0.0


@attrs.frozen(kw_only=True)
class ChannelTotals:
    """The channels of a node summed, for metrics that do not grow with them.

    Attributes:
        sums: ``(tenant, provider)`` -> the :data:`TOTAL_FIELDS` in order
            (``connected``: how many channels are connected).
        states: ``(provider, status)`` -> channels; ``None`` for a channel
            the node could not start.
        channels: the channels counted (those running here, started or not).
    """

    sums: Mapping[tuple[str, str], tuple[int, ...]]
    states: Mapping[tuple[str, ChannelStatus | None], int]
    channels: int


def totals_of(snapshots: Sequence[ChannelSnapshot]) -> ChannelTotals:
    """:class:`ChannelTotals` from snapshots (a node may count faster from its own state)."""
    sums: dict[tuple[str, str], list[int]] = {}
    states: dict[tuple[str, ChannelStatus | None], int] = {}
    count = 0
    for snapshot in snapshots:
        if snapshot.remote:
            continue
        count += 1
        status = None if snapshot.start_error is not None else snapshot.status
        states[snapshot.provider, status] = states.get((snapshot.provider, status), 0) + 1
        row = sums.setdefault((snapshot.tenant, snapshot.provider), [0] * len(TOTAL_FIELDS))
        stats = snapshot.statistics
        if stats is not None:
            for index, name in enumerate(TOTAL_FIELDS[:-2]):
                row[index] += getattr(stats, name)
        row[-2] += snapshot.mailbox_depth
        row[-1] += 1 if status is ChannelStatus.CONNECTED else 0
    return ChannelTotals(
        sums={key: tuple(values) for key, values in sums.items()}, states=states, channels=count
    )


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

    def channel_totals(self) -> ChannelTotals:
        """The channels running here, summed (no object per channel)."""
        ...

    def webhook_targets(self, provider: str) -> Sequence[WebhookTarget]:
        """The channels of ``provider`` that take input by webhook."""
        ...

    def webhook_target(self, provider: str, channel_id: str) -> WebhookTarget | None:
        """The one of :meth:`webhook_targets` with ``channel_id``, found without a walk."""
        ...

    def webhook_targets_for(
        self, provider: str, numbers: Collection[str]
    ) -> Sequence[WebhookTarget]:
        """Those of :meth:`webhook_targets` whose ``phone_number_id`` is in ``numbers``.

        In the order of :meth:`webhook_targets`, found without a walk.
        """
        ...

    def webhook_links(self, provider: str) -> WebhookLinks:
        """The live links among :meth:`webhook_targets`, as they are now, found without a walk."""
        ...

    def check_webhook_headers(
        self, provider: str, channel_id: str, headers: Mapping[str, str]
    ) -> WebhookReply | None:
        """A webhook for a channel that runs elsewhere, judged by its headers before its body.

        ``None``: read the body and :meth:`forward_webhook` it; else the answer.
        """
        ...

    async def forward_webhook(
        self,
        provider: str,
        channel_id: str,
        method: str,
        query: Mapping[str, str],
        headers: Mapping[str, str],
        body: bytes,
        *,
        signatures: PostSignatures | None = None,
    ) -> WebhookReply:
        """A webhook for a channel that runs on another node: checked here, answered there.

        ``signatures``: a WhatsApp post's verdicts, shared by the channels it names.
        """
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
