"""The shape of a console method: its spec, its parameters' shared pieces, its description.

Design:
- A method is a :class:`Method` spec: its name, the least scope, an attrs
  class for its parameters, a one-line summary, its handler, and whether it
  changes state (then it takes a ``reason`` and is audited) or the whole
  node. ``runtime.console.methods`` and ``runtime.console.cluster_methods``
  each hold a table of them; ``system.describe`` lists them (:func:`describe`),
  so the table is the documentation.
- What several methods share lives here: the validators, the common
  parameter classes, and :func:`aim` (a call on one named channel: its
  tenant checked and audited).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

import attrs

from . import shapes
from .auth import Scope

if TYPE_CHECKING:
    from .session import Session

__all__ = [
    "MAX_PAGE",
    "SHOWN_IN_DRY_RUN",
    "STATES",
    "ChangeChannel",
    "ChannelFilter",
    "Handler",
    "Method",
    "NoParams",
    "aim",
    "describe",
    "page_limit",
    "reason_given",
]

MAX_PAGE: Final = 1_000  # channels per channels.list page
SHOWN_IN_DRY_RUN: Final = 50  # channel ids a dry run lists (the count is exact)
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


def page_limit(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not 1 <= value <= MAX_PAGE:
        raise ValueError(f"limit: expected 1 to {MAX_PAGE}, got {value}")


def reason_given(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not value.strip():
        raise ValueError("reason: say why (it goes into the audit log)")


def _state(instance: object, attribute: attrs.Attribute[str | None], value: str | None) -> None:
    if value is not None and value not in STATES:
        raise ValueError(f"state: expected one of {', '.join(STATES)}, got {value!r}")


# --- shared parameters ----------------------------------------------------------------------


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
class ChangeChannel:
    channel: str
    reason: str = attrs.field(validator=reason_given)


# --- the spec ------------------------------------------------------------------------------

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


def aim(session: Session, channel_id: str, **target: Any) -> str:
    """The shape every call on one named channel starts with: its tenant, checked and audited.

    Raises:
        UnknownChannel: neither the node nor its file has the channel.
        Refused: the token may not see the channel's tenant (answered as
            an unknown channel).
    """
    tenant = session.tenant_of(channel_id)
    session.check_channel(channel_id, tenant)
    session.audit_target(channels=[channel_id], tenants=[tenant], **target)
    return tenant
