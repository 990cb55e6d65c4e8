"""The console's methods: what each takes, the scope it needs, and what it does.

Design:
- One :class:`Method` per name, in :data:`METHODS`, each with an attrs class
  for its parameters (structured strictly by :func:`runtime.console.rpc.structure_params`),
  the least scope it needs, and whether it changes state. ``system.describe``
  lists them from this table, so the table is the documentation.
- Reads never run user code and never wait for an actor: they read the
  node's snapshots (``channels()``, ``channel_detail()``, ``tree()``,
  ``statistics()``), which copy plain counters.
- Every state-changing method takes a ``reason``; the session audits it
  (token, method, target, reason, outcome) whatever the outcome.
- A method that acts on channels by filter (``channels.stop`` and
  ``channels.restart`` without ``channel``) first answers a ``dry_run`` with
  the count, and acts only when that count is echoed back as ``confirm``
  and still matches: what the operator saw is what happens.
- A token with a tenant list sees only its tenants' channels (lists,
  details, the tree, dead letters, events, the cluster's leases); a call
  naming another tenant's channel is refused (-32003), and node-wide
  changes (a drain, a pause of rebalancing) need a token without a tenant
  list.
- The cluster's controls (``admin``): pause and resume rebalancing, move a
  channel to a named node (a pin every node's placement honours, carried
  out by the planned handoff) and unpin it, release a lease by force. They
  write to Redis through the node; every node applies them
  (``runtime.cluster.controls``).
- Cluster-wide calls fan out: ``cluster.stats`` and
  ``cluster.restart_channels`` are answered by the node the console runs
  on, which asks every live member over the cluster's forwarding
  (``node.ask_members``) and reports each member's outcome; a member (or a
  channel) that failed is listed under ``failed`` (``switchboard ctl`` then
  exits 4, "partial"). A restart by filter is counted on every member
  first (the dry run, and again at the confirmation), then each member
  restarts its own matching channels.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio

from ..cluster import ClusterSurvey
from ..cluster.leases import TOMBSTONE
from ..config.model import ChannelSpec
from ..errors import NodeError, UnknownChannel
from ..events import EVENT_KINDS
from ..node_cluster import MEMBER_ACT_TIMEOUT
from ..view import ChannelSnapshot
from . import shapes
from .auth import Scope
from .errors import ConfirmationRequired, ConsoleError
from .rpc import ErrorCode

if TYPE_CHECKING:
    from .session import Session

__all__ = ["METHODS", "Method", "describe"]

MAX_PAGE: Final = 1_000  # channels per channels.list page
SHOWN_IN_DRY_RUN: Final = 50  # channel ids a dry run lists (the count is exact)
CONSOLE_KINDS: Final = frozenset({"audit"})
STATES: Final = (
    "idle",
    "connecting",
    "connected",
    "backing_off",
    "stopped",
    "failed",
    "not_started",
    "remote",
)


def _page_limit(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not 1 <= value <= MAX_PAGE:
        raise ValueError(f"limit: expected 1 to {MAX_PAGE}, got {value}")


def _not_negative(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name}: expected 0 or more, got {value}")


def _reason(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not value.strip():
        raise ValueError("reason: say why (it goes into the audit log)")


def _state(instance: object, attribute: attrs.Attribute[str | None], value: str | None) -> None:
    if value is not None and value not in STATES:
        raise ValueError(f"state: expected one of {', '.join(STATES)}, got {value!r}")


def _kinds(instance: object, attribute: attrs.Attribute[Any], value: list[str] | None) -> None:
    known = EVENT_KINDS | CONSOLE_KINDS
    unknown = sorted(set(value or ()) - known)
    if unknown:
        raise ValueError(f"kinds: unknown {unknown}; known: {', '.join(sorted(known))}")


# --- parameters -----------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class NoParams:
    """No parameters."""


@attrs.frozen(kw_only=True)
class ChannelFilter:
    """Which channels: every given field must match."""

    tenant: str | None = None
    provider: str | None = None
    state: str | None = attrs.field(default=None, validator=_state)
    owner: str | None = None


@attrs.frozen(kw_only=True)
class ListChannels(ChannelFilter):
    offset: int = attrs.field(default=0, validator=_not_negative)
    limit: int = attrs.field(default=100, validator=_page_limit)


@attrs.frozen(kw_only=True)
class OneChannel:
    channel: str


@attrs.frozen(kw_only=True)
class ChangeChannel:
    channel: str
    reason: str = attrs.field(validator=_reason)


@attrs.frozen(kw_only=True)
class ChangeChannels(ChannelFilter):
    """One ``channel``, or every channel the filter matches (dry run, then confirm)."""

    reason: str = attrs.field(validator=_reason)
    channel: str | None = None
    dry_run: bool = False
    confirm: int | None = None


@attrs.frozen(kw_only=True)
class ListLetters:
    channel: str | None = None
    tenant: str | None = None
    error_type: str | None = None
    older_than: float | None = None
    limit: int = attrs.field(default=100, validator=_page_limit)


@attrs.frozen(kw_only=True)
class ChangeLetters:
    channel: str
    reason: str = attrs.field(validator=_reason)
    ids: list[int] | None = None


@attrs.frozen(kw_only=True)
class Subscribe:
    kinds: list[str] | None = attrs.field(default=None, validator=_kinds)
    tenants: list[str] | None = None
    channels: list[str] | None = None


@attrs.frozen(kw_only=True)
class Unsubscribe:
    subscription: int


@attrs.frozen(kw_only=True)
class Drain:
    reason: str = attrs.field(validator=_reason)
    deadline: float | None = None


@attrs.frozen(kw_only=True)
class LeaseQuery:
    moving_only: bool = False
    limit: int = attrs.field(default=MAX_PAGE, validator=_page_limit)


@attrs.frozen(kw_only=True)
class ChangeMatching(ChannelFilter):
    """The channels a filter matches on every node (dry run, then confirm)."""

    reason: str = attrs.field(validator=_reason)
    dry_run: bool = False
    confirm: int | None = None


@attrs.frozen(kw_only=True)
class ChangeCluster:
    reason: str = attrs.field(validator=_reason)


@attrs.frozen(kw_only=True)
class MoveChannel:
    channel: str
    node: str
    reason: str = attrs.field(validator=_reason)


@attrs.frozen(kw_only=True)
class ReleaseLease:
    channel: str
    reason: str = attrs.field(validator=_reason)
    confirm: int | None = None


# --- the table ------------------------------------------------------------------------------

Handler = Callable[["Session", Any], Awaitable[Any]]


@attrs.frozen(kw_only=True)
class Method:
    """One method of the console.

    Attributes:
        name: its JSON-RPC name.
        scope: the least scope that may call it.
        params: its parameters' attrs class.
        summary: what it does, one line.
        handler: does it.
        changes: it changes state: takes a ``reason``, is audited.
        node_wide: it changes the whole node: a token with a tenant list may not.
    """

    name: str
    scope: Scope
    params: type
    summary: str
    handler: Handler = attrs.field(repr=False)
    changes: bool = False
    node_wide: bool = False


def _type_name(kind: Any) -> str:
    text = str(kind)
    return text.replace("typing.", "").replace("<class '", "").replace("'>", "")


def describe(method: Method) -> dict[str, Any]:
    """``system.describe``'s entry for one method."""
    params = []
    for field in attrs.fields(method.params):
        required = field.default is attrs.NOTHING
        params.append(
            {
                "name": field.name,
                "type": _type_name(field.type),
                "required": required,
                **({} if required else {"default": shapes.jsonable(field.default)}),
            }
        )
    return {
        "name": method.name,
        "scope": method.scope.label,
        "summary": method.summary,
        "changes_state": method.changes,
        "node_wide": method.node_wide,
        "params": params,
    }


# --- reads ----------------------------------------------------------------------------------


async def _describe(session: Session, params: NoParams) -> Any:
    return {
        "methods": [describe(method) for method in METHODS.values()],
        "token": session.grant.describe(),
    }


async def _whoami(session: Session, params: NoParams) -> Any:
    return session.grant.describe()


async def _stats(session: Session, params: NoParams) -> Any:
    node = session.console.node
    statistics = node.statistics()
    visible = session.visible_channels()
    by_state: dict[str, int] = {}
    for snapshot in visible:
        state = shapes.state_of(snapshot)
        by_state[state] = by_state.get(state, 0) + 1
    return {
        "node": node.node_id,
        "state": node.state.value,
        "uptime": statistics.uptime,
        "draining": statistics.draining,
        "store": {"backend": statistics.store_backend, "pending": statistics.store_pending},
        "channels": len(visible),
        "by_state": by_state,
        "sent": sum(s.statistics.sent for s in visible if s.statistics),
        "received": sum(s.statistics.received for s in visible if s.statistics),
        "restarts": sum(s.statistics.restarts for s in visible if s.statistics),
        "clustered": node.config.cluster is not None,
        "console": session.console.counters(),
    }


async def _tree(session: Session, params: NoParams) -> Any:
    node = session.console.node
    tenants = {s.channel_id: s.tenant for s in node.channels()}

    def visible(child_id: str) -> bool:
        tenant = tenants.get(child_id)
        return tenant is None or session.grant.sees(tenant)

    return shapes.tree(node.tree(), visible)


def _matches(snapshot: ChannelSnapshot, where: ChannelFilter) -> bool:
    return (
        (where.tenant is None or snapshot.tenant == where.tenant)
        and (where.provider is None or snapshot.provider == where.provider)
        and (where.state is None or shapes.state_of(snapshot) == where.state)
        and (where.owner is None or snapshot.owner == where.owner)
    )


async def _list_channels(session: Session, params: ListChannels) -> Any:
    session.check_tenant(params.tenant)
    found = [s for s in session.visible_channels() if _matches(s, params)]
    page = found[params.offset : params.offset + params.limit]
    following = params.offset + len(page)
    return {
        "total": len(found),
        "offset": params.offset,
        "items": [shapes.channel(s) for s in page],
        "next_offset": following if following < len(found) else None,
    }


async def _get_channel(session: Session, params: OneChannel) -> Any:
    node = session.console.node
    detail = node.channel_detail(params.channel)
    session.check_tenant(detail.snapshot.tenant)
    return shapes.detail(detail, session.console.history(params.channel))


# --- channel changes ------------------------------------------------------------------------


def _spec_of(session: Session, channel_id: str) -> ChannelSpec:
    node = session.console.node
    for snapshot in node.channels():
        if snapshot.channel_id == channel_id:
            raise ConsoleError(
                ErrorCode.NODE_ERROR,
                f"channel {channel_id!r} is known to the node ({shapes.state_of(snapshot)}); "
                "restart it instead",
                {"error": "ChannelExists"},
            )
    for spec in node.config.channels:
        if spec.id == channel_id:
            return spec
    raise UnknownChannel(channel_id)


def _aim(session: Session, channel_id: str, **target: Any) -> str:
    """The shape every call on one named channel starts with: its tenant, checked and audited.

    Raises:
        UnknownChannel: neither the node nor its file has the channel.
        Refused: the token may not see the channel's tenant.
    """
    tenant = session.tenant_of(channel_id)
    session.check_tenant(tenant)
    session.audit_target(channels=[channel_id], tenants=[tenant], **target)
    return tenant


async def _start(session: Session, params: ChangeChannel) -> Any:
    _aim(session, params.channel)  # the tenant first: another's channel is not even looked at
    spec = _spec_of(session, params.channel)
    snapshot = await session.console.node.start_channel(spec)
    return shapes.channel(snapshot)


def _targets(session: Session, params: ChangeChannels, method: str) -> list[ChannelSnapshot]:
    """The channels a stop or restart acts on, after its dry run and confirmation."""
    node = session.console.node
    if params.channel is not None:
        wanted = [s for s in node.channels() if s.channel_id == params.channel]
        if not wanted:
            raise UnknownChannel(params.channel)
        session.check_tenant(wanted[0].tenant)
        session.audit_target(channels=[params.channel], tenants=[wanted[0].tenant])
        return wanted
    session.check_tenant(params.tenant)
    found = [s for s in session.visible_channels() if _matches(s, params) and not s.remote]
    session.audit_target(
        filter={
            key: value
            for key, value in attrs.asdict(params).items()
            if key in ("tenant", "provider", "state", "owner") and value is not None
        },
        count=len(found),
        tenants=sorted({s.tenant for s in found}),
    )
    if params.dry_run:
        return found
    if params.confirm is None:
        raise ConfirmationRequired(
            f"{method} by filter acts on {len(found)} channel(s): call it with dry_run=true "
            "first, then with confirm=<the count>",
            len(found),
        )
    if params.confirm != len(found):
        raise ConfirmationRequired(
            f"the filter now matches {len(found)} channel(s), not {params.confirm}: "
            "dry-run it again",
            len(found),
        )
    return found


def _dry_run_answer(found: Sequence[ChannelSnapshot]) -> dict[str, Any]:
    return {
        "dry_run": True,
        "count": len(found),
        "channels": [s.channel_id for s in found[:SHOWN_IN_DRY_RUN]],
    }


async def _each(
    found: Sequence[ChannelSnapshot], act: Callable[[str], Awaitable[Any]]
) -> dict[str, Any]:
    done: list[str] = []
    failed: dict[str, str] = {}
    for snapshot in found:
        try:
            await act(snapshot.channel_id)
        except NodeError as exc:
            failed[snapshot.channel_id] = f"{type(exc).__name__}: {exc}"
        else:
            done.append(snapshot.channel_id)
    return {"count": len(done), "channels": done, "failed": failed}


async def _stop(session: Session, params: ChangeChannels) -> Any:
    found = _targets(session, params, "channels.stop")
    if params.dry_run and params.channel is None:
        return _dry_run_answer(found)
    node = session.console.node
    if params.channel is not None:
        await node.stop_channel(params.channel)
        return {"count": 1, "channels": [params.channel], "failed": {}}
    return await _each(found, node.stop_channel)


async def _restart(session: Session, params: ChangeChannels) -> Any:
    found = _targets(session, params, "channels.restart")
    if params.dry_run and params.channel is None:
        return _dry_run_answer(found)
    node = session.console.node
    if params.channel is not None:
        snapshot = await node.restart_channel(params.channel)
        return {"count": 1, "channels": [params.channel], "failed": {}, **shapes.channel(snapshot)}
    return await _each(found, node.restart_channel)


async def _revive(session: Session, params: ChangeChannel) -> Any:
    node = session.console.node
    _aim(session, params.channel)
    snapshot = node.channel_detail(params.channel).snapshot
    if snapshot.status.value != "failed":
        raise ConsoleError(
            ErrorCode.NODE_ERROR,
            f"channel {params.channel!r} is {shapes.state_of(snapshot)}, not failed: "
            "channels.restart starts a channel over",
            {"error": "NotFailed", "state": shapes.state_of(snapshot)},
        )
    return shapes.channel(await node.restart_channel(params.channel))


# --- dead letters ---------------------------------------------------------------------------


async def _letters(session: Session, params: ListLetters) -> Any:
    node = session.console.node
    session.check_tenant(params.tenant)
    if params.channel is not None:
        session.check_tenant(session.tenant_of(params.channel))
    letters = await node.dead_letters(
        channel=params.channel,
        tenant=params.tenant,
        error_type=params.error_type,
        older_than=params.older_than,
        limit=params.limit if session.grant.tenants is None else MAX_PAGE * 10,
    )
    visible = [letter for letter in letters if session.grant.sees(letter.tenant)]
    return [
        {
            "channel": letter.channel_id,
            "tenant": letter.tenant,
            "id": letter.letter.id,
            "error_type": letter.letter.error_type,
            "reason": letter.letter.reason,
            "attempts": letter.letter.attempts,
            "idempotency_key": letter.letter.message.idempotency_key,
            "peer": letter.letter.message.peer,
            "dead_at": letter.letter.at,
        }
        for letter in visible[: params.limit]
    ]


async def _replay(session: Session, params: ChangeLetters) -> Any:
    _aim(session, params.channel, ids=params.ids)
    count = await session.console.node.replay_dead_letters(params.channel, params.ids)
    return {"replayed": count}


async def _discard(session: Session, params: ChangeLetters) -> Any:
    _aim(session, params.channel, ids=params.ids)
    count = await session.console.node.discard_dead_letters(params.channel, params.ids)
    return {"discarded": count}


# --- events ---------------------------------------------------------------------------------


async def _subscribe(session: Session, params: Subscribe) -> Any:
    for tenant in params.tenants or ():
        session.check_tenant(tenant)
    for channel_id in params.channels or ():
        session.check_tenant(session.tenant_of(channel_id))
    number = session.subscribe(
        kinds=None if params.kinds is None else frozenset(params.kinds),
        tenants=None if params.tenants is None else frozenset(params.tenants),
        channels=None if params.channels is None else frozenset(params.channels),
    )
    return {"subscription": number}


async def _unsubscribe(session: Session, params: Unsubscribe) -> Any:
    return session.unsubscribe(params.subscription)


# --- the node and the cluster ---------------------------------------------------------------


async def _drain(session: Session, params: Drain) -> Any:
    node = session.console.node
    session.audit_target(node=node.node_id)
    if node.draining:
        return {"draining": True, "already": True}
    deadline = node.config.node.drain_deadline if params.deadline is None else params.deadline
    session.console.start_soon(node.drain, deadline)
    await trio.lowlevel.checkpoint()
    return {"draining": True, "already": False, "deadline": deadline}


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
    for lease in survey.leases:
        if not session.grant.sees(tenants.get(lease.channel_id, "")):
            continue
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
    _aim(session, params.channel, node=params.node)
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
    _aim(session, params.channel)
    before = await session.console.node.unpin_channel(params.channel)
    return {"channel": params.channel, "unpinned": before is not None, "was_pinned_to": before}


async def _release_lease(session: Session, params: ReleaseLease) -> Any:
    _clustered(session)
    _aim(session, params.channel)
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
    if params.confirm is not None and params.confirm != seen.token:
        raise ConsoleError(
            ErrorCode.CONFIRMATION_REQUIRED,
            f"channel {params.channel!r}'s lease is now {seen.holder}'s with token "
            f"{seen.token}, not {params.confirm}: look again",
            facts,
        )
    free_in = await node.force_release(seen)
    if free_in is None:
        raise ConsoleError(
            ErrorCode.NODE_ERROR,
            f"channel {params.channel!r}'s lease changed hands while it was being released; "
            "nothing was done: look again (cluster.leases)",
            {"error": "LeaseChanged", **facts},
        )
    return {"channel": params.channel, "released": True, "free_in": free_in, **facts}


_TABLE: Final = (
    Method(
        name="system.describe",
        scope=Scope.READ,
        params=NoParams,
        summary="every method with its parameters and scope, and this token",
        handler=_describe,
    ),
    Method(
        name="system.whoami",
        scope=Scope.READ,
        params=NoParams,
        summary="this token's name, scope, tenants and expiry",
        handler=_whoami,
    ),
    Method(
        name="node.stats",
        scope=Scope.READ,
        params=NoParams,
        summary="the node's figures: state, uptime, store, channels by state, totals",
        handler=_stats,
    ),
    Method(
        name="node.tree",
        scope=Scope.READ,
        params=NoParams,
        summary="the supervision tree: ids, states, restart counts, uptimes, mailboxes",
        handler=_tree,
    ),
    Method(
        name="channels.list",
        scope=Scope.READ,
        params=ListChannels,
        summary="channels by tenant, provider, state and owner node, a page at a time",
        handler=_list_channels,
    ),
    Method(
        name="channels.get",
        scope=Scope.READ,
        params=OneChannel,
        summary="one channel in depth: state history, last errors, limits, breaker, "
        "mailbox, session keys, dead letters",
        handler=_get_channel,
    ),
    Method(
        name="channels.start",
        scope=Scope.OPERATE,
        params=ChangeChannel,
        summary="start a channel of the deployment file that is not running",
        handler=_start,
        changes=True,
    ),
    Method(
        name="channels.stop",
        scope=Scope.OPERATE,
        params=ChangeChannels,
        summary="stop a channel, or the channels a filter matches here (dry_run, then confirm)",
        handler=_stop,
        changes=True,
    ),
    Method(
        name="channels.restart",
        scope=Scope.OPERATE,
        params=ChangeChannels,
        summary="restart a channel, or the channels a filter matches here (dry_run, then "
        "confirm; every node's: cluster.restart_channels)",
        handler=_restart,
        changes=True,
    ),
    Method(
        name="channels.revive",
        scope=Scope.OPERATE,
        params=ChangeChannel,
        summary="start a FAILED channel over (after a ban is lifted or a token replaced)",
        handler=_revive,
        changes=True,
    ),
    Method(
        name="dead_letters.list",
        scope=Scope.READ,
        params=ListLetters,
        summary="dead letters, oldest first, by channel, tenant, error type and age",
        handler=_letters,
    ),
    Method(
        name="dead_letters.replay",
        scope=Scope.OPERATE,
        params=ChangeLetters,
        summary="send a channel's dead letters again (all, or these ids)",
        handler=_replay,
        changes=True,
    ),
    Method(
        name="dead_letters.discard",
        scope=Scope.OPERATE,
        params=ChangeLetters,
        summary="forget a channel's dead letters (all, or these ids)",
        handler=_discard,
        changes=True,
    ),
    Method(
        name="events.subscribe",
        scope=Scope.READ,
        params=Subscribe,
        summary="events as 'events.event' notifications (inbound, edited, receipt, state, "
        "connection, audit), filtered here; rate-limited, drops counted",
        handler=_subscribe,
    ),
    Method(
        name="events.unsubscribe",
        scope=Scope.READ,
        params=Unsubscribe,
        summary="end a subscription; answers how many of its events were dropped",
        handler=_unsubscribe,
    ),
    Method(
        name="node.drain",
        scope=Scope.ADMIN,
        params=Drain,
        summary="drain the node (stop taking work, finish or keep sends, stop); "
        "`switchboard run` then exits",
        handler=_drain,
        changes=True,
        node_wide=True,
    ),
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
        summary="channels per node: where placement puts them, who holds them, how many move",
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
        summary="release a channel's lease by force: a dead holder's at once (the next "
        "owner takes it with a higher token, so the old one is fenced); a live holder's "
        "only with confirm=<token>, and nobody connects it before the holder's lease "
        "would have run out",
        handler=_release_lease,
        changes=True,
    ),
)

METHODS: Final = {method.name: method for method in _TABLE}
"""Every method, by name."""
