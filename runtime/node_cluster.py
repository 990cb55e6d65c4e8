"""The node as one of a cluster: the channels the cluster places here, and routing.

Design:
- The cluster (``runtime.cluster``) decides which channels this node runs
  and drives them through this mixin's :class:`~runtime.cluster.ownership.ChannelRunner`
  methods: the highest token the store knows (the lease's floor), start
  inside a tenure (the lease), stop before the lease is released.
- The node's table holds every channel of the cluster's catalog: the ones
  running here, and the others as rows with no channel, shown with the node
  placement puts them on and, as last read from Redis, their lease.
- ``start_channel`` and ``stop_channel`` change the catalog; whichever node
  owns the channel starts or stops it.
- A send (and a restart, a dead-letter replay or discard) for a channel
  that runs on another node travels there through the cluster's forwarding
  and its answer comes back: the same result, or the same typed error, as
  a local call. The owner is the lease's holder as last read, else the
  placement; a request that finds the channel gone ("moved") is asked of
  the next owner, until the caller's timeout. A caller never sees "not the
  owner".
- A planned move (ownership lets a channel go) holds the channel's new
  sends, lets the ones in flight finish (at most :data:`HANDOFF_WAIT`),
  stops the channel (a resumable close, the final checkpoint) and only then
  is the lease released; the held sends then follow the channel to its new
  owner.
- The owner answers a send repeated with a recent idempotency key (a
  caller's retry, a forwarded request handled twice, a retry after a move)
  from the channel's memory of its sends' answers, which its checkpoints
  carry to its next owner: it is not sent again.
- A webhook that reaches a node that does not run its channel is checked
  there and carried to the owner the same way (``runtime.webhooks``); the
  platform's answer is the owner's link's, so an event is acknowledged only
  once the owner has taken it.
- An operator's controls (``runtime.cluster.controls``): pause and resume
  rebalancing, pin a channel to a node (a planned move) and unpin it,
  release a lease by force. Each is written to Redis and every node's
  ownership honours it; the methods here only check and write.
- A question for every member (:meth:`ClusterMode.ask_members`: each
  node's figures) goes to each over the same forwarding, concurrently,
  and each member's outcome comes back: its answer, or why it gave none.
- A channel the platform says is held elsewhere (``Conflict``: Telegram's
  409) is reported to ownership as fenced, stopped without a checkpoint
  (its FAILED must not follow it to its real owner) and released.
"""

from __future__ import annotations

import collections
import contextlib
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import trio

from actors import ChannelStatus
from actors.channel import Tenure
from providers.base import ProviderError, SendResult
from providers.operations import Operation
from providers.whatsapp.webhook import PostSignatures

from .cluster import ClusterSurvey, ClusterUnavailable, LeaseHolder
from .cluster.forwarding import ForwardTimeout
from .config.model import channel_secrets
from .errors import (
    AskTimeout,
    ChannelUnavailable,
    NodeError,
    StoreError,
    UnknownChannel,
    error_from_wire,
    error_to_wire,
)
from .store.codec import decode_outbound, encode_outbound
from .table import ChannelRow
from .webhooks import (
    WebhookReply,
    check_here,
    deliver,
    from_wire,
    refusal,
    reply_from_wire,
    reply_to_wire,
    telegram_headers,
    to_wire,
)

if TYPE_CHECKING:
    from actors.channel import ChannelRef

    from .checkpoints import CheckpointWriter
    from .cluster import Cluster
    from .config.model import ChannelSpec, NodeConfig
    from .drain import SendTracker
    from .store import Store
    from .store.durable import StoredCheckpoint
    from .table import ChannelTable
    from .view import ChannelSnapshot

__all__ = ["ClusterMode"]

log = logging.getLogger("switchboard.node")

HOLDERS_BATCH: Final = 1_000  # lease keys read per MGET when listing remote channels
HANDOFF_WAIT: Final = 10.0  # seconds a moving channel's in-flight sends may take to finish
FORWARDED_OP_TIMEOUT: Final = 60.0  # seconds a forwarded restart or dead-letter call may take
MEMBER_ANSWER_TIMEOUT: Final = 5.0  # seconds a member may take to answer ask_members
WEBHOOK_FORWARD_TIMEOUT: Final = 20.0  # seconds a webhook may take to reach its owner's link
MEMBER_OPS: Final = frozenset({"figures", "restart_matching"})  # for a node, not a channel
MEMBER_ACT_TIMEOUT: Final = 60.0  # seconds a member may take to restart its matching channels
FORWARD_RETRY_MIN: Final = 0.05  # seconds before asking again after "moved" ...
FORWARD_RETRY_MAX: Final = 1.0  # ... doubling up to this


class ClusterMode:
    """What a node does as a member of a cluster (a mixin of :class:`~runtime.node.Node`)."""

    if TYPE_CHECKING:
        config: NodeConfig
        store: Store
        _table: ChannelTable
        _checkpoints: CheckpointWriter
        _cluster: Cluster | None
        _preloaded: dict[str, StoredCheckpoint]
        _holders: dict[str, tuple[str, int]]
        _starting: dict[str, Any]

        @property
        def node_id(self) -> str: ...

        async def _start_ended(self, channel_id: str) -> None: ...

        async def _start(
            self, spec: ChannelSpec, *, tenure: Tenure | None = None
        ) -> ChannelSnapshot: ...

        async def _stop_local(
            self, row: ChannelRow, *, checkpoint: bool
        ) -> tuple[float, float]: ...

        def _changing(self, channel_id: str) -> contextlib.AbstractAsyncContextManager[None]: ...

        async def _send_here(
            self,
            channel_id: str,
            message: Operation,
            *,
            timeout: float,  # noqa: ASYNC109
            keep_refused: bool = False,
        ) -> SendResult | None: ...

        async def restart_channel(self, channel_id: str) -> ChannelSnapshot: ...

        def channels(self) -> list[ChannelSnapshot]: ...

        def statistics(self) -> Any: ...

        @property
        def state(self) -> Any: ...

        def _channel_config(self, spec: ChannelSpec) -> Any: ...

        _sends: SendTracker
        _calls: SendTracker
        _forwarding: int
        _forwards: collections.Counter[str]
        _moving: dict[str, trio.Event]

        def _held(self) -> int: ...

        def _admit(
            self,
            channel_id: str,
            message: Operation,
            *,
            channel_sends: int,
            channel: ChannelRef | None,
            keep_refused: bool,
        ) -> None: ...

    # --- the runner the cluster drives ---------------------------------------------------

    async def floor_token(self, channel_id: str) -> int:
        """The token of the channel's checkpoint (kept for the start that follows)."""
        stored = await self.store.load_checkpoint(channel_id)
        if stored is None:
            self._preloaded.pop(channel_id, None)
            return 0
        self._preloaded[channel_id] = stored
        return stored.owner_token

    async def start_owned(self, channel_id: str, tenure: Tenure) -> None:
        """Run a channel the cluster placed here, inside its lease's tenure."""
        assert self._cluster is not None
        spec = self._cluster.catalog.specs.get(channel_id)
        if spec is None:
            raise ChannelUnavailable(
                f"channel {channel_id!r} is not in the catalog this node read",
                channel_id=channel_id,
            )
        await self._start(spec, tenure=tenure)

    async def stop_owned(self, channel_id: str) -> None:
        """Stop a channel the cluster moves away (checkpoint written, unless fenced).

        New sends for it are held from now until :meth:`released`; the ones
        in flight may finish first (at most :data:`HANDOFF_WAIT`).
        """
        assert self._cluster is not None
        self._moving.setdefault(channel_id, trio.Event())
        await self._start_ended(channel_id)  # one starting here is stopped once started
        async with self._changing(channel_id):  # (after a restart of it under way)
            row = self._table.find(channel_id)
            if row is None or not row.running:
                return
            began = trio.current_time()
            owned = self._cluster.ownership.owned.get(channel_id)
            tenure = getattr(owned, "tenure", None)
            if tenure is None or tenure.valid():
                with trio.move_on_after(HANDOFF_WAIT):
                    await self._sends.wait_channel_done(channel_id)
            # (Else its lease is lost and its link dropped: what is in flight waits
            # for a connection it will never get here. It left the channel dark
            # for those 10 s more; the stop hands it to the next owner.)
            waited = trio.current_time() - began
            fenced = channel_id in self._cluster.ownership.fenced
            stopping, checkpoint = await self._stop_local(row, checkpoint=not fenced)
            if channel_id in self._cluster.catalog.specs:
                self._table.put(ChannelRow(spec=row.spec))  # shown as running elsewhere
            elif self._table.find(channel_id) is row:
                # Stopped by an operator (on any node): out of the catalog, which
                # will not say so again. Shown as running elsewhere, it was listed
                # here for good, and its sends waited for an owner that never came.
                self._table.remove(channel_id)
        log.info(
            "cluster: stopped channel %s for its move in %.2f s "
            "(sends in flight %.2f s, stop %.2f s, final checkpoint %.2f s)",
            channel_id,
            trio.current_time() - began,
            waited,
            stopping,
            checkpoint,
            extra={"channel": channel_id},
        )

    def released(self, channel_id: str) -> None:
        """The channel's lease is given back: its held sends go to the new owner."""
        moving = self._moving.pop(channel_id, None)
        if moving is not None:
            moving.set()

    def catalog_changed(self, channel_ids: frozenset[str]) -> None:
        """Show every channel of the catalog; forget the ones taken out."""
        assert self._cluster is not None
        specs = self._cluster.catalog.specs
        for channel_id in channel_ids:
            if channel_id not in self._table and channel_id in specs:
                spec = specs[channel_id]
                # Its owner's errors pass through here: its secrets are this node's too.
                self.learn_secrets(channel_secrets(spec))  # type: ignore[attr-defined]
                self._table.put(ChannelRow(spec=spec))
        for row in list(self._table):
            channel_id = row.spec.id
            # (One still starting here is stopped once started: see stop_owned.)
            if (
                channel_id not in channel_ids
                and not row.running
                and channel_id not in self._starting
            ):
                self._table.remove(channel_id)

    async def cluster(self) -> ClusterSurvey:
        """The cluster as Redis holds it now: members, placement, leases, moves.

        Raises:
            NodeError: the node is not in a cluster.
            ClusterUnavailable: Redis did not answer.
        """
        if self._cluster is None:
            raise NodeError(f"node {self.node_id!r} is not in a cluster (no [cluster] section)")
        return await self._cluster.survey(handing_off=list(self._moving))

    # --- an operator's controls ---------------------------------------------------------

    def _clustered(self) -> Cluster:
        if self._cluster is None:
            raise NodeError(f"node {self.node_id!r} is not in a cluster (no [cluster] section)")
        return self._cluster

    async def pause_rebalancing(self, *, by: str, reason: str) -> bool:
        """Pause rebalancing cluster-wide; False if it was paused already.

        Raises:
            NodeError: the node is not in a cluster.
            ClusterUnavailable: Redis did not answer.
        """
        return await self._clustered().controls.pause(by=by, reason=reason)

    async def resume_rebalancing(self) -> bool:
        """Let rebalancing run again cluster-wide; False if it was not paused.

        Raises:
            NodeError: the node is not in a cluster.
            ClusterUnavailable: Redis did not answer.
        """
        return await self._clustered().controls.resume()

    async def pin_channel(self, channel_id: str, node_id: str) -> str | None:
        """Pin a channel of the catalog to a live member; the node it was pinned to before.

        The node that holds it hands it over by the planned path (its sends
        held, in flight finished, its final checkpoint, then the lease).

        Raises:
            NodeError: not in a cluster, or ``node_id`` is not a live member,
                or one that cannot run the channel (its file lacks it).
            UnknownChannel: the channel is not in the cluster's catalog.
            ClusterUnavailable: Redis did not answer.
        """
        cluster = self._clustered()
        if channel_id not in cluster.ownership.catalog | cluster.ownership.from_file:
            raise UnknownChannel(channel_id)
        view = cluster.view
        members = view.members if view is not None else ()
        if node_id not in members:
            raise NodeError(
                f"node {node_id!r} is not a live member of the cluster (members: "
                f"{', '.join(members) or 'none'}); a channel can only move to a live one"
            )
        if not cluster.ownership.can_run(node_id, channel_id):
            raise NodeError(
                f"node {node_id!r} cannot run channel {channel_id!r}: it comes from a "
                "deployment file, and that node's file does not hold it"
            )
        return await cluster.controls.pin(channel_id, node_id)

    async def unpin_channel(self, channel_id: str) -> str | None:
        """Remove a channel's pin (placement decides again); the node it was pinned to.

        Raises:
            NodeError: the node is not in a cluster.
            ClusterUnavailable: Redis did not answer.
        """
        return await self._clustered().controls.unpin(channel_id)

    async def lease_holder(self, channel_id: str) -> LeaseHolder:
        """Who holds a channel's lease now, and whether that node is alive.

        Raises:
            NodeError: not in a cluster.
            UnknownChannel: the channel is not in the cluster's catalog.
            ClusterUnavailable: Redis did not answer.
        """
        cluster = self._clustered()
        if channel_id not in cluster.ownership.catalog | cluster.ownership.from_file:
            raise UnknownChannel(channel_id)
        return await cluster.lease_holder(channel_id)

    async def force_release(self, seen: LeaseHolder, *, at_once: bool) -> float | None:
        """Release a lease by force if it is still as ``seen`` (:meth:`Cluster.force_release`).

        Raises:
            NodeError: not in a cluster.
            ClusterUnavailable: Redis did not answer.
        """
        return await self._clustered().force_release(seen, at_once=at_once)

    def figures(self, tenants: frozenset[str] | None = None) -> dict[str, Any]:
        """This node's own figures (the channels it runs; these tenants' only, if given)."""
        running = [
            s for s in self.channels() if not s.remote and (tenants is None or s.tenant in tenants)
        ]
        by_state: dict[str, int] = {}
        for snapshot in running:
            state = "not_started" if snapshot.start_error is not None else snapshot.status.value
            by_state[state] = by_state.get(state, 0) + 1
        statistics = self.statistics()
        return {
            "node": self.node_id,
            "state": self.state.value,
            "uptime": statistics.uptime,
            "draining": statistics.draining,
            "channels": len(running),
            "by_state": by_state,
            "sent": sum(s.statistics.sent for s in running if s.statistics),
            "received": sum(s.statistics.received for s in running if s.statistics),
            "restarts": sum(s.statistics.restarts for s in running if s.statistics),
        }

    async def ask_members(
        self, op: str, body: Mapping[str, Any], *, within: float = MEMBER_ANSWER_TIMEOUT
    ) -> dict[str, dict[str, Any]]:
        """Ask every live member (this node too) ``op``; each one's outcome, by node.

        Each outcome is ``{"ok": answer}`` or ``{"error": why}``: a member
        that did not answer within ``within`` seconds (dead but not yet declared,
        or cut off), or answered with an error. The questions:
        :data:`MEMBER_OPS` (:meth:`_answer_member`).

        Raises:
            NodeError: the node is not in a cluster.
        """
        cluster = self._clustered()
        view = cluster.view
        members = sorted(set(view.members if view is not None else ()) | {self.node_id})
        outcomes: dict[str, dict[str, Any]] = {}
        body = {**body, "within": within}  # each member stops acting in time to answer

        async def ask(member: str) -> None:
            if member == self.node_id:
                answer = await self._answer_member(op, body)
            else:
                try:
                    answer = await cluster.forwarding.call(member, op, "", body, timeout=within)
                except ForwardTimeout:
                    outcomes[member] = {"error": f"no answer within {within:g} s"}
                    return
                except ClusterUnavailable as exc:
                    outcomes[member] = {"error": f"the request could not be sent: {exc}"}
                    return
            if "ok" in answer:
                outcomes[member] = {"ok": answer["ok"]}
            elif "error" in answer:
                error = answer["error"]
                outcomes[member] = {"error": f"{error.get('type')}: {error.get('message')}"}
            else:
                outcomes[member] = {"error": f"it does not answer {op!r} (an older version?)"}

        async with trio.open_nursery() as nursery:
            for member in members:
                nursery.start_soon(ask, member)
        return dict(sorted(outcomes.items()))

    def matching(
        self, where: Mapping[str, Any], tenants: frozenset[str] | None = None
    ) -> list[str]:
        """The channels this node runs that match a filter, of these tenants if given.

        Args:
            where: ``tenant``, ``provider``, ``state``, ``owner``: each given must match.
            tenants: only these tenants' channels (``None``: all).
        """
        found = []
        for snapshot in self.channels():
            if snapshot.remote or (tenants is not None and snapshot.tenant not in tenants):
                continue
            state = "not_started" if snapshot.start_error is not None else snapshot.status.value
            values = {
                "tenant": snapshot.tenant,
                "provider": snapshot.provider,
                "state": state,
                "owner": snapshot.owner,
            }
            if all(where.get(key) in (None, value) for key, value in values.items()):
                found.append(snapshot.channel_id)
        return found

    async def _answer_member(self, op: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """The answer to a question :meth:`ask_members` asked this node.

        ``figures``: :meth:`figures`. ``restart_matching``: the channels this
        node runs that match ``where`` (of ``tenants``); counted only, unless
        ``dry_run`` is false: then each is restarted, and the ones that
        failed are named.
        """
        tenants = body.get("tenants")
        visible = None if tenants is None else frozenset(str(t) for t in tenants)
        if op == "figures":
            return {"ok": self.figures(visible)}
        if op == "restart_matching":
            found = self.matching(body.get("where") or {}, visible)
            if body.get("dry_run", True) is not False:
                return {"ok": {"count": len(found), "channels": found}}
            done: list[str] = []
            failed: dict[str, str] = {}
            within = float(body.get("within", MEMBER_ACT_TIMEOUT))
            # Stop in time for the answer to reach the caller before it gives up on
            # it: what this node reports is then what it did.
            with trio.move_on_after(within - min(1.0, within / 10)):
                for channel_id in found:
                    try:
                        await self.restart_channel(channel_id)
                    except NodeError as exc:
                        failed[channel_id] = f"{type(exc).__name__}: {exc}"
                    else:
                        done.append(channel_id)
            for channel_id in found:
                if channel_id not in done and channel_id not in failed:
                    failed[channel_id] = "not restarted: the caller's deadline came first"
            return {"ok": {"count": len(done), "channels": done, "failed": failed}}
        return {"error": error_to_wire(NodeError(f"node {self.node_id!r} does not know {op!r}"))}

    async def _hand_off(self, deadline: float) -> None:
        """A drain in a cluster: leave, then hand every channel to its next owner."""
        assert self._cluster is not None
        cluster = self._cluster
        cluster.ownership.frozen = True
        with contextlib.suppress(ClusterUnavailable):
            await cluster.membership.leave()  # the others place this node's channels
        owned = len(cluster.ownership.owned)
        moved = await cluster.ownership.hand_off(deadline)
        log.info(
            "cluster: %d of %d channel(s) handed off%s",
            moved,
            owned,
            "" if moved == owned else " (the rest by the drain)",
        )
        with trio.move_on_at(deadline):  # the sends accepted here, now on their way
            await self._calls.wait_until_done()

    # --- forwarding: the caller's side -----------------------------------------------------

    def _runs_here(self, channel_id: str) -> bool:
        row = self._table.find(channel_id)
        return (
            row is not None
            and row.running
            and self._cluster is not None
            and channel_id in self._cluster.ownership.owned
            and channel_id not in self._moving
        )

    async def _cluster_send(
        self,
        channel_id: str,
        message: Operation,
        *,
        timeout: float,  # noqa: ASYNC109
        keep_refused: bool = False,
    ) -> SendResult | None:
        """A send in a cluster: here if the channel runs here, else on its owner.

        ``keep_refused``: a kept message's resend (see ``Node._send_here``).
        """
        with self._calls.track(channel_id, message):
            return await self._routed_send(
                channel_id, message, timeout=timeout, keep_refused=keep_refused
            )

    async def _routed_send(
        self,
        channel_id: str,
        message: Operation,
        *,
        timeout: float,  # noqa: ASYNC109
        keep_refused: bool = False,
    ) -> SendResult | None:
        self._table.get(channel_id)  # UnknownChannel, before any bound
        deadline = trio.current_time() + timeout
        body: dict[str, Any] = {"message": encode_outbound(message)}
        if keep_refused:
            body["keep_refused"] = True
        while True:
            if self._runs_here(channel_id):
                try:
                    return await self._send_here(
                        channel_id,
                        message,
                        timeout=_left(deadline, channel_id, message),
                        keep_refused=keep_refused,
                    )
                except ChannelUnavailable:
                    if self._runs_here(channel_id):
                        raise
                    continue  # it moved away under the send: ask its new owner
            # Held here until its owner answers (while the owner is gone or the channel
            # moves, until the caller's deadline): a task, its request and its wait, on
            # this node's loop. So it counts toward this node's bounds as a send it
            # performs does, the channel's too (one busy remote channel cannot take all
            # of this node's room); the owner counts it toward its own as well.
            forwards = self._forwards
            self._admit(
                channel_id,
                message,
                channel_sends=forwards[channel_id],
                channel=None,
                keep_refused=keep_refused,
            )
            self._forwarding += 1
            forwards[channel_id] += 1
            try:
                answer = await self._forward(channel_id, "send", body, deadline, message)
            except _RunsHere:
                continue
            finally:
                self._forwarding -= 1
                left = forwards[channel_id] - 1
                if left:
                    forwards[channel_id] = left
                else:
                    del forwards[channel_id]
            if not answer:  # an operation without a result (typing, delete ...)
                return None
            return SendResult(
                platform_message_id=str(answer["platform_message_id"]), peer=str(answer["peer"])
            )

    async def _forward(
        self,
        channel_id: str,
        op: str,
        body: dict[str, Any],
        deadline: float,
        message: Operation | None = None,
    ) -> dict[str, Any]:
        """Ask the channel's owner to do ``op``; its answer, or its error raised here.

        Raises:
            UnknownChannel: the channel is not in the cluster's catalog.
            AskTimeout: no owner answered by ``deadline``.
            NodeError: the owner's error (the same class).
        """
        assert self._cluster is not None
        self._table.get(channel_id)  # UnknownChannel
        wait = FORWARD_RETRY_MIN
        fresh = False  # whether the lease holder was read from Redis for this attempt
        while True:
            moving = self._moving.get(channel_id)
            if moving is not None:  # it is leaving this node: wait until it has
                with trio.move_on_at(deadline):
                    await moving.wait()
                _left(deadline, channel_id, message)
                continue
            if self._runs_here(channel_id):
                raise _RunsHere  # taken here meanwhile: the caller sends it here
            row = self._table.get(channel_id)
            if channel_id in self._cluster.ownership.owned and row.start_error is not None:
                raise ChannelUnavailable(  # held here, and it could not start
                    f"channel {channel_id!r} is not running: {row.start_error}",
                    channel_id=channel_id,
                )
            owner = await self._owner_of(channel_id, fresh=fresh)
            fresh = True
            left = _left(deadline, channel_id, message)
            answer: dict[str, Any] | None = None
            if owner is not None and owner != self.node_id:
                # One attempt lasts at most a lease TTL: an owner that died with
                # the request unread is replaced by then, and asked in its turn.
                attempt = min(left, self._cluster.config.lease_ttl)
                try:
                    answer = await self._cluster.forwarding.call(
                        owner, op, channel_id, body, timeout=attempt
                    )
                except ForwardTimeout:
                    _left(deadline, channel_id, message, last=owner)
                    continue
                except ClusterUnavailable as exc:
                    log.debug("cluster: forwarding to %s failed (retrying): %s", owner, exc)
            if answer is not None:
                if "error" in answer:
                    raise error_from_wire(answer["error"])
                if "ok" in answer:
                    result: dict[str, Any] = answer["ok"]
                    return result
            # Moved, not owned by anyone yet, or unreachable: ask again shortly.
            with trio.move_on_at(deadline):
                await trio.sleep(wait)
            wait = min(wait * 2, FORWARD_RETRY_MAX)

    async def _forward_op(self, channel_id: str, op: str, body: dict[str, Any]) -> dict[str, Any]:
        """An operation on a channel that runs elsewhere (restart, dead letters), forwarded.

        Raises:
            ChannelUnavailable: the channel moved here while the call was on
                its way (rare: the caller may simply ask again, here).
        """
        deadline = trio.current_time() + FORWARDED_OP_TIMEOUT
        try:
            return await self._forward(channel_id, op, body, deadline)
        except _RunsHere:
            raise ChannelUnavailable(
                f"channel {channel_id!r} has just moved to this node; ask again",
                channel_id=channel_id,
            ) from None

    def check_webhook_headers(
        self, provider: str, channel_id: str, headers: Mapping[str, str]
    ) -> WebhookReply | None:
        """Judge a webhook for a channel that runs elsewhere by its headers, before its body.

        Returns:
            ``None`` to read the body and :meth:`forward_webhook` it; else the
            answer (Telegram: 403 for a wrong secret token, 404 for a channel
            that polls). Other providers are judged with the body.
        """
        if provider != "telegram":
            return None
        row = self._table.find(channel_id)
        if row is None:
            return refusal(404, "UnknownChannel", f"no {provider} channel {channel_id!r}")
        try:
            return telegram_headers(self._channel_config(row.spec), headers)
        except (NodeError, ProviderError) as exc:
            return refusal(503, "ChannelUnavailable", f"the channel cannot take webhooks: {exc}")

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

        ``signatures``: a WhatsApp post's verdicts, checked once per app secret
        here for every channel it names (:func:`runtime.webhooks.check_here`).

        Returns:
            The owner's link's answer; this node's own refusal of a forged
            request (403) or its answer to Meta's verification GET; 503 when
            no owner took it in time (the platform delivers it again).
        """
        row = self._table.find(channel_id)
        if row is None:
            return refusal(404, "UnknownChannel", f"no {provider} channel {channel_id!r}")
        try:
            config = self._channel_config(row.spec)
        except NodeError as exc:
            return refusal(503, "ChannelUnavailable", str(exc))
        judged = check_here(provider, config, method, query, headers, body, signatures=signatures)
        if judged is not None:
            return judged
        deadline = trio.current_time() + WEBHOOK_FORWARD_TIMEOUT
        wire = to_wire(method, query, headers, body)
        while True:
            try:
                answer = await self._forward(channel_id, "webhook", wire, deadline)
            except _RunsHere:  # it came here while the request waited
                connection = await self._link_here(channel_id, deadline)
                if connection is None:
                    if trio.current_time() < deadline:
                        continue  # it left again: forwarded to where it went
                    return refusal(
                        503,
                        "ChannelUnavailable",
                        f"channel {channel_id!r} did not connect in time; redeliver",
                    )
                return await deliver(
                    provider,
                    connection,
                    method,
                    query,
                    headers,
                    body,
                    signatures=signatures,
                    # What is left of the wait: the platform hears within it.
                    timeout=max(0.0, deadline - trio.current_time()),
                )
            except NodeError as exc:  # no owner in time, or the owner's error
                log.warning(
                    "cluster: a %s webhook for %r was not handed over: %s",
                    provider,
                    channel_id,
                    exc,
                )
                return refusal(
                    503, "ChannelUnavailable", f"channel {channel_id!r} did not take it; redeliver"
                )
            return reply_from_wire(answer)

    async def _link_here(self, channel_id: str, deadline: float) -> Any:
        """The connection of a channel that runs here, once it has one.

        None if it stops running here, or has no connection by trio time
        ``deadline``. Waits on the channel's state changes: a channel taken
        over here a moment ago is still connecting.
        """
        with (
            self.subscribe(kind="state", channel=channel_id) as changes,  # type: ignore[attr-defined]
            trio.move_on_at(deadline),
        ):
            while self._runs_here(channel_id):
                row = self._table.get(channel_id)
                if row.channel is not None and row.channel.connection is not None:
                    return row.channel.connection
                await changes.receive()
        return None

    async def _owner_of(self, channel_id: str, *, fresh: bool) -> str | None:
        """The node that runs the channel: its lease holder, else its placement."""
        assert self._cluster is not None
        held = self._holders.get(channel_id)
        if fresh or held is None:
            try:
                found = await self._cluster.holders([channel_id])
            except NodeError:
                found = {}
            held = found.get(channel_id)
            if held is not None:
                self._holders[channel_id] = held
        if held is not None:
            return held[0]
        return self._cluster.owner(channel_id)

    # --- forwarding: the owner's side ----------------------------------------------------

    async def handle_forwarded(
        self,
        op: str,
        channel_id: str,
        body: Mapping[str, Any],
        *,
        timeout: float,  # noqa: ASYNC109
    ) -> dict[str, Any]:
        """A call another node forwarded here: its JSON answer."""
        if op in MEMBER_OPS:  # a question for the node, not for a channel
            return await self._answer_member(op, body)
        if not self._runs_here(channel_id):
            return {"moved": True}
        try:
            if op == "send":
                message = decode_outbound(body["message"])
                keep_refused = body.get("keep_refused") is True
                result = await self._send_here(
                    channel_id, message, timeout=timeout, keep_refused=keep_refused
                )
                if result is None:
                    return {"ok": {}}
                sent = {"platform_message_id": result.platform_message_id, "peer": result.peer}
                return {"ok": sent}
            if op == "restart":
                await self.restart_channel(channel_id)
                return {"ok": {}}
            if op == "webhook":
                return {"ok": reply_to_wire(await self._take_webhook(channel_id, body))}
            if op in ("replay", "discard"):
                ids = body.get("ids")
                chosen = None if ids is None else [int(i) for i in ids]
                count = await (
                    self.replay_dead_letters(channel_id, chosen)  # type: ignore[attr-defined]
                    if op == "replay"
                    else self.discard_dead_letters(channel_id, chosen)  # type: ignore[attr-defined]
                )
                return {"ok": {"count": count}}
            raise NodeError(f"node {self.node_id!r} does not know the request {op!r}")
        except (NodeError, ValueError, KeyError, TypeError) as exc:
            if isinstance(exc, ChannelUnavailable) and not self._runs_here(channel_id):
                return {"moved": True}  # it left while the request ran
            if not isinstance(exc, NodeError):
                exc = NodeError(f"a malformed {op!r} request: {type(exc).__name__}: {exc}")
            return {"error": error_to_wire(exc)}

    async def _take_webhook(self, channel_id: str, wire: Mapping[str, Any]) -> WebhookReply:
        """A webhook another node checked and carried here: the link's answer."""
        row = self._table.get(channel_id)
        # (None past the channel's tenure too: a node thawed after its lease ran out
        # hands the platform's request to no link; it delivers again, to the owner.)
        connection = row.channel.connection if row.channel is not None else None
        if connection is None:
            return refusal(
                503, "ChannelUnavailable", f"channel {channel_id!r} is not connected; redeliver"
            )
        provider = row.spec.provider
        try:
            method, query, headers, body = from_wire(provider, self._channel_config(row.spec), wire)
        except ProviderError as exc:  # its config has no secret: its link would refuse it too
            return refusal(503, "ChannelUnavailable", f"channel {channel_id!r}: {exc}")
        return await deliver(provider, connection, method, query, headers, body)

    # --- what the node does differently in a cluster ------------------------------------

    async def _cluster_start(self, spec: ChannelSpec) -> None:
        assert self._cluster is not None
        await self._cluster.catalog.put(spec)
        if spec.id not in self._table:
            self._table.put(ChannelRow(spec=spec))

    async def _cluster_stop(self, channel_id: str) -> None:
        assert self._cluster is not None
        await self._cluster.catalog.remove(channel_id)
        row = self._table.find(channel_id)
        if row is not None and row.running:
            await self._stop_local(row, checkpoint=True)
        self._table.remove(channel_id)

    def _remote_owner(self, channel_id: str) -> str | None:
        """Where a channel that does not run here runs (its lease, else its placement)."""
        held = self._holders.get(channel_id)
        if held is not None:
            return held[0]
        return self._cluster.owner(channel_id) if self._cluster is not None else None

    def _not_here(self, channel_id: str) -> ChannelUnavailable:
        owner = self._remote_owner(channel_id)
        return ChannelUnavailable(
            f"channel {channel_id!r} runs on node {owner!r}, not on {self.node_id!r}; "
            "send through that node",
            channel_id=channel_id,
        )

    async def _watch_cluster(self) -> None:
        """Fence channels the platform says are held elsewhere; keep lease holders fresh."""
        assert self._cluster is not None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_conflicts)
            while True:
                await self._refresh_holders()
                await trio.sleep(self._cluster.config.lease_ttl / 3)

    async def _refresh_holders(self) -> None:
        assert self._cluster is not None
        remote = [row.spec.id for row in self._table if not row.running]
        found: dict[str, tuple[str, int]] = {}
        try:
            for start in range(0, len(remote), HOLDERS_BATCH):
                found.update(await self._cluster.holders(remote[start : start + HOLDERS_BATCH]))
        except NodeError as exc:
            log.debug("cluster: could not read the lease holders: %s", exc)
            return
        self._holders = found

    async def _watch_conflicts(self) -> None:
        assert self._cluster is not None
        with self.subscribe(kind="state") as changes:  # type: ignore[attr-defined]
            async for change in changes:
                event: Any = change.event
                if event.status is ChannelStatus.FAILED and "Conflict" in (event.reason or ""):
                    log.error(
                        "cluster: the platform says channel %s is held elsewhere: this node "
                        "was fenced; it lets the channel go",
                        change.channel_id,
                        extra={"channel": change.channel_id},
                    )
                    with contextlib.suppress(StoreError):
                        self._cluster.ownership.mark_fenced(change.channel_id)


class _RunsHere(Exception):
    """The channel was taken by this node while a call waited to be forwarded."""


def _left(
    deadline: float,
    channel_id: str,
    message: Operation | None,
    *,
    last: str | None = None,
) -> float:
    """Seconds left until ``deadline``; past it, the send's timeout is raised."""
    left = deadline - trio.current_time()
    if left > 0:
        return left
    where = f" (last asked: node {last!r})" if last is not None else ""
    raise AskTimeout(
        f"channel {channel_id!r}: no answer from the node that runs it in time{where}",
        channel_id=channel_id,
        idempotency_key="" if message is None else message.idempotency_key,
    )
