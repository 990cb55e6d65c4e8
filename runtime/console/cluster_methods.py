"""The console's cluster methods: views, fanned-out calls, and the operator's controls.

Design:
- Views (``read``): members, placement, leases, as Redis holds them now,
  with the operator's controls (a pause, the pins); a token with a tenant
  list sees its tenants' channels only.
- Cluster-wide calls fan out: ``cluster.stats`` and
  ``cluster.restart_channels`` are answered by the node the console runs
  on, which asks every live member over the cluster's forwarding
  (``node.ask_members``) and reports each member's outcome; a member (or a
  channel) that failed is listed under ``failed`` (``switchboard ctl`` then
  exits 4, "partial"). A restart by filter is counted on every member
  first (the dry run, and again at the confirmation), then each member
  restarts its own matching channels.
- The controls (``admin``): pause and resume rebalancing, move a channel to
  a named node (a pin every node's placement honours, carried out by the
  planned handoff) and unpin it, release a lease by force. They write to
  Redis through the node; every node applies them
  (``runtime.cluster.controls``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import attrs

from ..cluster import ClusterSurvey
from ..cluster.leases import TOMBSTONE
from ..node_cluster import MEMBER_ACT_TIMEOUT
from . import shapes
from .auth import Scope
from .errors import ConfirmationRequired, ConsoleError
from .rpc import ErrorCode
from .specs import (
    MAX_PAGE,
    SHOWN_IN_DRY_RUN,
    ChangeChannel,
    ChannelFilter,
    Method,
    NoParams,
    aim,
    page_limit,
    reason_given,
)

if TYPE_CHECKING:
    from .session import Session

__all__ = ["CLUSTER_METHODS"]


# --- parameters -----------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class LeaseQuery:
    moving_only: bool = False
    limit: int = attrs.field(default=MAX_PAGE, validator=page_limit)


@attrs.frozen(kw_only=True)
class ChangeMatching(ChannelFilter):
    """The channels a filter matches on every node (dry run, then confirm)."""

    reason: str = attrs.field(validator=reason_given)
    dry_run: bool = False
    confirm: int | None = None


@attrs.frozen(kw_only=True)
class ChangeCluster:
    reason: str = attrs.field(validator=reason_given)


@attrs.frozen(kw_only=True)
class MoveChannel:
    channel: str
    node: str
    reason: str = attrs.field(validator=reason_given)


@attrs.frozen(kw_only=True)
class ReleaseLease:
    channel: str
    reason: str = attrs.field(validator=reason_given)
    confirm: int | None = None


# --- views and fanned-out calls ------------------------------------------------------------


def _clustered(session: Session) -> None:
    node = session.console.node
    if node.config.cluster is None:
        raise ConsoleError(
            ErrorCode.UNAVAILABLE,
            f"node {node.node_id!r} is not in a cluster (no [cluster] section)",
            {"error": "NotClustered"},
        )


async def _survey(session: Session) -> ClusterSurvey:
    _clustered(session)
    return await session.console.node.cluster()


def _controls(session: Session, survey: ClusterSurvey) -> dict[str, Any]:
    """Rebalancing paused (by whom, why) and the pins this token may see."""
    tenants = {s.channel_id: s.tenant for s in session.console.node.channels()}
    return {
        "paused": None if survey.paused is None else dict(survey.paused),
        "pins": {
            channel: node
            for channel, node in survey.pins.items()
            if session.grant.sees(tenants.get(channel, ""))
        },
    }


async def _members(session: Session, params: NoParams) -> Any:
    survey = await _survey(session)
    return {
        "node": survey.node_id,
        "epoch": survey.epoch,
        "quarantine": survey.quarantine,
        "members": [shapes.jsonable(member) for member in survey.members],
        **_controls(session, survey),
    }


async def _leases(session: Session, params: LeaseQuery) -> Any:
    survey = await _survey(session)
    tenants = {s.channel_id: s.tenant for s in session.console.node.channels()}
    leases = [
        lease
        for lease in survey.leases
        if session.grant.sees(tenants.get(lease.channel_id, ""))
        and (lease.moving or not params.moving_only)
    ]
    return {
        "node": survey.node_id,
        "total": len(leases),
        "leases": [
            {**shapes.jsonable(lease), "moving": lease.moving} for lease in leases[: params.limit]
        ],
        "handing_off": list(survey.handing_off),
        "waiting_for": dict(survey.waiting_for),
    }


async def _placement(session: Session, params: NoParams) -> Any:
    survey = await _survey(session)
    tenants = {s.channel_id: s.tenant for s in session.console.node.channels()}
    placed: dict[str, int] = {}
    held: dict[str, int] = {}
    moving = 0
    unplaced = set(survey.unplaced)
    nowhere: list[str] = []  # no live member can run them
    for lease in survey.leases:
        if not session.grant.sees(tenants.get(lease.channel_id, "")):
            continue
        if lease.channel_id in unplaced:
            nowhere.append(lease.channel_id)
        if lease.placed_on is not None:
            placed[lease.placed_on] = placed.get(lease.placed_on, 0) + 1
        if lease.holder is not None:
            held[lease.holder] = held.get(lease.holder, 0) + 1
        moving += lease.moving
    return {
        "node": survey.node_id,
        "placed": placed,
        "held": held,
        "moving": moving,
        "unplaced": nowhere,
        **_controls(session, survey),
    }


async def _cluster_stats(session: Session, params: NoParams) -> Any:
    _clustered(session)
    tenants = session.grant.tenants
    outcomes = await session.console.node.ask_members(
        "figures", {"tenants": None if tenants is None else sorted(tenants)}
    )
    answered = {node: outcome["ok"] for node, outcome in outcomes.items() if "ok" in outcome}
    totals: dict[str, Any] = {"channels": 0, "sent": 0, "received": 0, "restarts": 0}
    by_state: dict[str, int] = {}
    for figures in answered.values():
        for key in ("channels", "sent", "received", "restarts"):
            totals[key] += int(figures.get(key, 0))
        for state, count in figures.get("by_state", {}).items():
            by_state[state] = by_state.get(state, 0) + int(count)
    return {
        "node": session.console.node.node_id,
        "members": len(outcomes),
        "answered": len(answered),
        **totals,
        "by_state": by_state,
        "nodes": [{"node": node, **figures} for node, figures in answered.items()],
        "failed": {node: o["error"] for node, o in outcomes.items() if "error" in o},
    }


async def _cluster_restart(session: Session, params: ChangeMatching) -> Any:
    _clustered(session)
    session.check_tenant(params.tenant)
    node = session.console.node
    where = {
        key: getattr(params, key)
        for key in ("tenant", "provider", "state", "owner")
        if getattr(params, key) is not None
    }
    tenants = session.grant.tenants
    body = {"where": where, "tenants": None if tenants is None else sorted(tenants)}
    counted = await node.ask_members("restart_matching", {**body, "dry_run": True})
    counts = {n: o["ok"] for n, o in counted.items() if "ok" in o}
    silent = {n: o["error"] for n, o in counted.items() if "error" in o}
    total = sum(int(found["count"]) for found in counts.values())
    session.audit_target(
        filter=where,
        count=total,
        cluster=True,
        tenants=sorted(
            {
                s.tenant
                for s in session.visible_channels()
                if where.get("tenant") in (None, s.tenant)
            }
        ),
    )
    if params.dry_run:
        channels = sorted(c for found in counts.values() for c in found["channels"])
        return {
            "dry_run": True,
            "count": total,
            "nodes": {n: int(found["count"]) for n, found in counts.items()},
            "channels": channels[:SHOWN_IN_DRY_RUN],
            "failed": silent,
        }
    if params.confirm is None:
        raise ConfirmationRequired(
            f"cluster.restart_channels acts on {total} channel(s) across "
            f"{len(counts)} node(s): call it with dry_run=true first, then with "
            "confirm=<the count>",
            total,
        )
    if params.confirm != total:
        raise ConfirmationRequired(
            f"the filter now matches {total} channel(s) across the cluster, not "
            f"{params.confirm}: dry-run it again",
            total,
        )
    acted = await node.ask_members(
        "restart_matching", {**body, "dry_run": False}, within=MEMBER_ACT_TIMEOUT
    )
    nodes: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for member, outcome in acted.items():
        if "error" in outcome:
            failed[member] = outcome["error"]
            continue
        done = outcome["ok"]
        nodes[member] = {"count": int(done["count"]), "failed": dict(done.get("failed", {}))}
        failed.update(done.get("failed", {}))
    return {
        "count": sum(entry["count"] for entry in nodes.values()),
        "nodes": nodes,
        "failed": failed,
    }


# --- the cluster's controls (admin) ---------------------------------------------------------


async def _pause(session: Session, params: ChangeCluster) -> Any:
    _clustered(session)
    node = session.console.node
    session.audit_target(cluster=True)
    paused = await node.pause_rebalancing(by=session.grant.name, reason=params.reason)
    return {"paused": True, "already": not paused}


async def _resume(session: Session, params: ChangeCluster) -> Any:
    _clustered(session)
    session.audit_target(cluster=True)
    resumed = await session.console.node.resume_rebalancing()
    return {"paused": False, "already": not resumed}


async def _move(session: Session, params: MoveChannel) -> Any:
    _clustered(session)
    aim(session, params.channel, node=params.node)
    node = session.console.node
    before = await node.pin_channel(params.channel, params.node)
    seen = await node.lease_holder(params.channel)
    return {
        "channel": params.channel,
        "node": params.node,
        "pinned_before": before,
        "holder": seen.holder,
        "token": seen.token,
        "moving": seen.holder != params.node,
    }


async def _unpin(session: Session, params: ChangeChannel) -> Any:
    _clustered(session)
    aim(session, params.channel)
    before = await session.console.node.unpin_channel(params.channel)
    return {"channel": params.channel, "unpinned": before is not None, "was_pinned_to": before}


async def _release_lease(session: Session, params: ReleaseLease) -> Any:
    _clustered(session)
    aim(session, params.channel)
    node = session.console.node
    seen = await node.lease_holder(params.channel)
    session.audit_target(holder=seen.holder, token=seen.token, holder_alive=seen.alive)
    if seen.holder is None or seen.token is None:
        raise ConsoleError(
            ErrorCode.NOT_FOUND,
            f"channel {params.channel!r} has no lease: nobody holds it, and the node "
            "placement puts it on takes it at its next try",
            {"error": "NoLease"},
        )
    if seen.holder.startswith(TOMBSTONE):
        return {
            "channel": params.channel,
            "released": True,
            "already": True,
            "free_in": seen.expires_in,
        }
    facts = {
        "holder": seen.holder,
        "token": seen.token,
        "holder_alive": seen.alive,
        "heartbeat_age": seen.heartbeat_age,
        "expires_in": seen.expires_in,
    }
    if seen.alive and params.confirm != seen.token:
        age = f"{seen.heartbeat_age:.1f} s" if seen.heartbeat_age is not None else "just"
        raise ConsoleError(
            ErrorCode.CONFIRMATION_REQUIRED,
            f"node {seen.holder!r} holds channel {params.channel!r}'s lease (token "
            f"{seen.token}) and is alive (its last heartbeat {age} ago). A live holder gives a "
            "channel up by itself: cluster.move_channel moves it with nothing lost, "
            "channels.restart starts it over. Released by force, the holder drops the "
            "connection at its next renewal without handing anything over; no node connects "
            f"it before the lease would have run out (in {seen.expires_in or 0:.1f} s), and the "
            f"next holder gets a token above {seen.token}. To do it anyway, call again with "
            f"confirm={seen.token}",
            facts,
        )
    if not seen.alive and params.confirm != seen.token:
        # Dead by membership is not gone: a node cut off from Redis keeps its
        # connection until its own deadline, which is when the lease runs out.
        raise ConsoleError(
            ErrorCode.CONFIRMATION_REQUIRED,
            f"node {seen.holder!r} holds channel {params.channel!r}'s lease (token "
            f"{seen.token}) and is not a member any more; the lease runs out by itself in "
            f"{seen.expires_in or 0:.1f} s, and the node placement puts the channel on takes "
            "it then. A holder cut off from Redis may still hold the platform connection "
            "until that moment. If you know its process is gone (and its connection with it), "
            f"call again with confirm={seen.token}: the lease is freed now and the next holder "
            f"gets a token above {seen.token}",
            facts,
        )
    if params.confirm is not None and params.confirm != seen.token:
        raise ConsoleError(
            ErrorCode.CONFIRMATION_REQUIRED,
            f"channel {params.channel!r}'s lease is now {seen.holder}'s with token "
            f"{seen.token}, not {params.confirm}: look again",
            facts,
        )
    # Confirmed: a live holder's lease becomes a tombstone until it would have
    # run out; a dead holder's is freed now, on the operator's word.
    free_in = await node.force_release(seen, at_once=not seen.alive)
    if free_in is None:
        raise ConsoleError(
            ErrorCode.NODE_ERROR,
            f"channel {params.channel!r}'s lease changed hands while it was being released; "
            "nothing was done: look again (cluster.leases)",
            {"error": "LeaseChanged", **facts},
        )
    return {"channel": params.channel, "released": True, "free_in": free_in, **facts}


CLUSTER_METHODS: Final = (
    Method(
        name="cluster.members",
        scope=Scope.READ,
        params=NoParams,
        summary="the cluster's live members, their heartbeats, channels placed and held",
        handler=_members,
    ),
    Method(
        name="cluster.placement",
        scope=Scope.READ,
        params=NoParams,
        summary="channels per node: where placement puts them, who holds them, how many "
        "move, which no live member can run",
        handler=_placement,
    ),
    Method(
        name="cluster.leases",
        scope=Scope.READ,
        params=LeaseQuery,
        summary="each channel's lease: placed on, holder, fencing token, time left, moving",
        handler=_leases,
    ),
    Method(
        name="cluster.stats",
        scope=Scope.READ,
        params=NoParams,
        summary="every live member's figures, asked by this node over the cluster's "
        "forwarding (5 s each): per node, the totals, and under 'failed' the members that "
        "did not answer (ctl exits 4)",
        handler=_cluster_stats,
    ),
    Method(
        name="cluster.restart_channels",
        scope=Scope.OPERATE,
        params=ChangeMatching,
        summary="restart the channels a filter matches on every node (dry_run, then "
        "confirm): this node asks each live member over the cluster's forwarding to count, "
        "then to restart its own; per node, and under 'failed' the channels and the nodes "
        "that failed (ctl exits 4)",
        handler=_cluster_restart,
        changes=True,
    ),
    Method(
        name="cluster.pause_rebalancing",
        scope=Scope.ADMIN,
        params=ChangeCluster,
        summary="stop placement-driven moves on every node (taking free channels, drains "
        "and cluster.move_channel go on); shown in cluster.members",
        handler=_pause,
        changes=True,
        node_wide=True,
    ),
    Method(
        name="cluster.resume_rebalancing",
        scope=Scope.ADMIN,
        params=ChangeCluster,
        summary="let every node move channels where placement puts them again (paced)",
        handler=_resume,
        changes=True,
        node_wide=True,
    ),
    Method(
        name="cluster.move_channel",
        scope=Scope.ADMIN,
        params=MoveChannel,
        summary="pin a channel to a live node: its holder hands it over by the planned "
        "handoff (nothing lost), now; it stays there until cluster.unpin_channel",
        handler=_move,
        changes=True,
    ),
    Method(
        name="cluster.unpin_channel",
        scope=Scope.ADMIN,
        params=ChangeChannel,
        summary="remove a channel's pin: placement decides again (under the usual pacing)",
        handler=_unpin,
        changes=True,
    ),
    Method(
        name="cluster.release_lease",
        scope=Scope.ADMIN,
        params=ReleaseLease,
        summary="release a channel's lease by force, with confirm=<its token>: a dead "
        "holder's (you know its process is gone) at once, the next owner taking it with a "
        "higher token, so the old one is fenced; a live holder's so that it drops the "
        "connection, and nobody connects it before the holder's lease would have run out",
        handler=_release_lease,
        changes=True,
    ),
)
"""The cluster's methods (each refuses a node without a ``[cluster]`` section)."""
