"""The console's methods: what each takes, the scope it needs, and what it does.

Design:
- One :class:`~runtime.console.specs.Method` per name, in :data:`METHODS`,
  each with an attrs class for its parameters (structured strictly by
  :func:`runtime.console.rpc.structure_params`), the least scope it needs,
  and whether it changes state. ``system.describe`` lists them from this
  table, so the table is the documentation.
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
- The cluster's methods (views, calls fanned out to every member, the
  operator's controls) are in ``runtime.console.cluster_methods``; the
  spec and what the tables share, in ``runtime.console.specs``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio

from ..config.model import ChannelSpec
from ..errors import NodeError, UnknownChannel
from ..events import EVENT_KINDS
from ..store.durable import NO_LETTER_ID
from ..view import ChannelSnapshot
from . import shapes
from .auth import Scope
from .cluster_methods import CLUSTER_METHODS
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
    describe,
    page_limit,
    reason_given,
)

if TYPE_CHECKING:
    from .session import Session

__all__ = ["METHODS", "Method", "describe"]

CONSOLE_KINDS: Final = frozenset({"audit"})

log = logging.getLogger("switchboard.console")


def _not_negative(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name}: expected 0 or more, got {value}")


def _kinds(instance: object, attribute: attrs.Attribute[Any], value: list[str] | None) -> None:
    known = EVENT_KINDS | CONSOLE_KINDS
    unknown = sorted(set(value or ()) - known)
    if unknown:
        raise ValueError(f"kinds: unknown {unknown}; known: {', '.join(sorted(known))}")


def _letter_ids(instance: object, attribute: attrs.Attribute[Any], value: list[int] | None) -> None:
    for index, letter_id in enumerate(value or ()):
        if not 0 <= letter_id < NO_LETTER_ID:  # past what a store's 64-bit integer holds
            raise ValueError(
                f"ids[{index}]: expected a letter id from 0 to 2**63 - 1, got {letter_id}"
            )


def _seconds_or_none(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not value >= 0:  # NaN too
        raise ValueError(f"{attribute.name}: expected seconds >= 0, got {value!r}")


# --- parameters -----------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class ListChannels(ChannelFilter):
    offset: int = attrs.field(default=0, validator=_not_negative)
    limit: int = attrs.field(default=100, validator=page_limit)


@attrs.frozen(kw_only=True)
class OneChannel:
    channel: str


@attrs.frozen(kw_only=True)
class ChangeChannels(ChannelFilter):
    """One ``channel``, or every channel the filter matches (dry run, then confirm)."""

    reason: str = attrs.field(validator=reason_given)
    channel: str | None = None
    dry_run: bool = False
    confirm: int | None = None


@attrs.frozen(kw_only=True)
class ListLetters:
    channel: str | None = None
    tenant: str | None = None
    error_type: str | None = None
    older_than: float | None = None
    limit: int = attrs.field(default=100, validator=page_limit)


@attrs.frozen(kw_only=True)
class ChangeLetters:
    channel: str
    reason: str = attrs.field(validator=reason_given)
    ids: list[int] | None = attrs.field(default=None, validator=_letter_ids)


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
    reason: str = attrs.field(validator=reason_given)
    deadline: float | None = attrs.field(default=None, validator=_seconds_or_none)


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
        "sends_in_flight": statistics.sends_in_flight,
        "sends_limit": statistics.sends_limit,
        "sends_refused": dict(statistics.sends_refused),
        "loop_lag": statistics.loop_lag,
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
    session.check_channel(params.channel, detail.snapshot.tenant)
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


async def _start(session: Session, params: ChangeChannel) -> Any:
    aim(session, params.channel)  # the tenant first: another's channel is not even looked at
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
        session.check_channel(params.channel, wanted[0].tenant)
        session.audit_target(channels=[params.channel], tenants=[wanted[0].tenant])
        # A filter beside it is a condition: "stop a1 if it failed" leaves a connected a1.
        return [s for s in wanted if _matches(s, params)]
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
    if params.dry_run:  # one channel or many: a dry run only counts
        return _dry_run_answer(found)
    node = session.console.node
    if params.channel is not None and not found:
        return {"count": 0, "channels": [], "failed": {}}  # the filter left it alone
    if params.channel is not None:
        await node.stop_channel(params.channel)
        return {"count": 1, "channels": [params.channel], "failed": {}}
    return await _each(found, node.stop_channel)


async def _restart(session: Session, params: ChangeChannels) -> Any:
    found = _targets(session, params, "channels.restart")
    if params.dry_run:  # one channel or many: a dry run only counts
        return _dry_run_answer(found)
    node = session.console.node
    if params.channel is not None and not found:
        return {"count": 0, "channels": [], "failed": {}}  # the filter left it alone
    if params.channel is not None:
        snapshot = await node.restart_channel(params.channel)
        return {"count": 1, "channels": [params.channel], "failed": {}, **shapes.channel(snapshot)}
    return await _each(found, node.restart_channel)


async def _revive(session: Session, params: ChangeChannel) -> Any:
    node = session.console.node
    aim(session, params.channel)
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
        session.check_channel(params.channel, session.tenant_of(params.channel))
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
    aim(session, params.channel, ids=params.ids)
    count = await session.console.node.replay_dead_letters(params.channel, params.ids)
    return {"replayed": count}


async def _discard(session: Session, params: ChangeLetters) -> Any:
    aim(session, params.channel, ids=params.ids)
    count = await session.console.node.discard_dead_letters(params.channel, params.ids)
    return {"discarded": count}


# --- events ---------------------------------------------------------------------------------


async def _subscribe(session: Session, params: Subscribe) -> Any:
    for tenant in params.tenants or ():
        session.check_tenant(tenant)
    for channel_id in params.channels or ():
        session.check_channel(channel_id, session.tenant_of(channel_id))
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
    session.console.start_soon(_drain_node, node, deadline)
    await trio.lowlevel.checkpoint()
    return {"draining": True, "already": False, "deadline": deadline}


async def _drain_node(node: Any, deadline: float) -> None:
    """The drain a console call began, in the console's nursery: its failure (a
    store down) is the node's log's, and takes neither the console nor the node."""
    try:
        await node.drain(deadline)
    except NodeError as exc:
        log.error("admin console: the drain it began failed: %s", exc)


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
    *CLUSTER_METHODS,
)

METHODS: Final = {method.name: method for method in _TABLE}
"""Every method, by name."""
