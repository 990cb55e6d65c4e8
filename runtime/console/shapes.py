"""What the console sends: the node's snapshots and events as JSON values.

Design: one function per kind of object, plain dicts out. Nothing here
reads a secret: channel credentials never reach a snapshot, a provider
session shows only its keys (:class:`~runtime.view.ChannelDetail`), media
bytes become their size, and the platform's raw metadata of an inbound
message is left out (it is the platform's, and may be large).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from supervisors import ChildSnapshot

from ..events import NodeEvent
from ..view import ChannelDetail, ChannelSnapshot

__all__ = ["channel", "detail", "event", "jsonable", "tree"]

_LEFT_OUT = frozenset({"metadata", "raw"})


def jsonable(value: Any) -> Any:
    """``value`` as JSON values: attrs classes as objects, enums as their values, bytes sized."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if isinstance(value, bytes | bytearray):
        return {"bytes": len(value)}
    if attrs.has(type(value)):
        return {
            field.name: jsonable(getattr(value, field.name))
            for field in attrs.fields(type(value))
            if field.name not in _LEFT_OUT and field.repr is not False
        }
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(item) for item in value]
    return str(value)


def state_of(snapshot: ChannelSnapshot) -> str:
    """The state a channel is listed and filtered by (``not_started``: it could not start)."""
    if snapshot.start_error is not None:
        return "not_started"
    if snapshot.remote:
        return "remote"
    return snapshot.status.value


def channel(snapshot: ChannelSnapshot) -> dict[str, Any]:
    """One line of ``channels.list``."""
    stats = snapshot.statistics
    return {
        "channel": snapshot.channel_id,
        "tenant": snapshot.tenant,
        "provider": snapshot.provider,
        "state": state_of(snapshot),
        "owner": snapshot.owner,
        "mailbox_depth": snapshot.mailbox_depth,
        "sent": stats.sent if stats else 0,
        "received": stats.received if stats else 0,
        "send_failures": stats.send_failures if stats else 0,
        "reconnects": stats.reconnects if stats else 0,
        "restarts": stats.restarts if stats else 0,
        "dead_letters": stats.dead_letters if stats else 0,
        "last_error": (stats.last_error if stats else None) or snapshot.start_error,
    }


def detail(found: ChannelDetail, history: list[dict[str, Any]]) -> dict[str, Any]:
    """``channels.get``: the line, its statistics, limiter, breaker, session, letters, history."""
    snapshot = found.snapshot
    errors = [entry["reason"] for entry in history if entry.get("reason")]
    last = snapshot.statistics.last_error if snapshot.statistics else snapshot.start_error
    if last and (not errors or errors[-1] != last):
        errors.append(last)  # the channel's own, should the history not have it yet
    return {
        **channel(snapshot),
        "lease_token": snapshot.lease_token,
        "statistics": jsonable(snapshot.statistics),
        "limits": dict(found.limits),
        "breaker": jsonable(found.breaker),
        "reconnect_failures": found.reconnect_failures,
        "incarnations": found.incarnations,
        "session": jsonable(found.session),
        "letters": jsonable(list(found.dead_letters)),
        "dead_letters_dropped": found.dead_letters_dropped,
        "inbound_pending": found.inbound_pending,
        "history": history,
        "last_errors": errors[-5:],
    }


def tree(node: ChildSnapshot, visible: Callable[[str], bool]) -> dict[str, Any]:
    """The supervision tree; a worker whose id ``visible`` refuses is left out."""
    return {
        "id": node.id,
        "type": jsonable(node.type),
        "status": jsonable(node.status),
        "actor_class": node.actor_class,
        "state": jsonable(node.state),
        "restarts": node.restarts,
        "uptime": node.uptime,
        "mailbox_depth": node.mailbox_depth,
        "strategy": jsonable(node.strategy),
        "children": [
            tree(child, visible) for child in node.children if child.children or visible(child.id)
        ],
    }


def event(found: NodeEvent) -> dict[str, Any]:
    """A node event, as an ``events.event`` notification carries it."""
    return {
        "kind": found.kind,
        "channel": found.channel_id,
        "tenant": found.tenant,
        "provider": found.provider,
        "event": jsonable(found.event),
    }
