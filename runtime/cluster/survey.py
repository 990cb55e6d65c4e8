"""The operator's view of the cluster: members, placement, leases, moves.

Design:
- Read on demand from Redis (one ``ZRANGE`` of the members with their
  deadlines, one script per batch of leases returning each holder with its
  time to live) and from this node's own state; nothing is cached, so
  what an operator sees is what Redis holds now.
- A member's heartbeat age is Redis's clock minus its last heartbeat
  (deadline - member timeout), so nodes whose clocks disagree are shown
  consistently.
- A channel is *moving* when its lease holder is not the node placement
  puts it on (a join, a leave or a failover not finished, or the pacing
  holding it), or when no node holds it yet. A channel no live member can
  run (a file entry no member's file holds) is placed on no node: it is
  *unplaced*, not moving, since it goes nowhere until such a member joins.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Final

import attrs

from .leases import Leases
from .redis import RedisLink

__all__ = ["ClusterSurvey", "LeaseView", "MemberView", "survey"]

BATCH: Final = 1_000  # leases read per script call

_LEASES: Final = """
local out = {}
for i, key in ipairs(KEYS) do
  out[#out + 1] = redis.call('GET', key) or ''
  out[#out + 1] = redis.call('PTTL', key)
end
return out
"""


@attrs.frozen(kw_only=True)
class MemberView:
    """One live member.

    Attributes:
        node: its name.
        heartbeat_age: seconds since its last heartbeat (Redis's clock).
        placed: channels placement puts on it.
        held: channels whose lease it holds.
    """

    node: str
    heartbeat_age: float
    placed: int
    held: int


@attrs.frozen(kw_only=True)
class LeaseView:
    """One channel's lease.

    Attributes:
        channel_id: the channel.
        placed_on: the node placement puts it on (``None``: no live member can
            run it, or there are no members).
        holder: the node holding its lease (``None``: nobody, it is free).
        token: the lease's fencing token.
        expires_in: seconds left on the lease unless renewed.
        moving: placed on a node, and held by another one, or by none.
    """

    channel_id: str
    placed_on: str | None
    holder: str | None
    token: int | None
    expires_in: float | None

    @property
    def moving(self) -> bool:
        if self.placed_on is None:  # unplaced: it goes nowhere
            return False
        return self.holder is None or self.holder != self.placed_on


@attrs.frozen(kw_only=True)
class ClusterSurvey:
    """What ``node.cluster()`` returns.

    Attributes:
        node_id: the node that answered.
        epoch: the membership epoch it last saw.
        members: the live members, by name.
        leases: every channel of the catalog, by id.
        handing_off: channels this node is letting go of now.
        waiting_for: channels placed on this node that another node still
            holds, and when this node asks again (seconds from now).
        quarantine: seconds left of a quarantine after Redis lost its data.
        paused: who paused rebalancing, why and when (``None``: it runs).
        pins: channels an operator pinned to a node (``runtime.cluster.controls``).
    """

    node_id: str
    epoch: int
    members: tuple[MemberView, ...]
    leases: tuple[LeaseView, ...]
    handing_off: tuple[str, ...]
    waiting_for: dict[str, float]
    quarantine: float
    paused: Mapping[str, Any] | None = None
    pins: Mapping[str, str] = attrs.field(factory=dict)

    @property
    def moving(self) -> tuple[LeaseView, ...]:
        """The channels not (yet) where placement puts them."""
        return tuple(lease for lease in self.leases if lease.moving)

    @property
    def unplaced(self) -> tuple[str, ...]:
        """The channels placement puts on no node: no live member can run them."""
        if not self.members:
            return ()
        return tuple(lease.channel_id for lease in self.leases if lease.placed_on is None)


async def survey(
    link: RedisLink,
    *,
    leases: Leases,
    members_key: str,
    member_timeout: float,
    reborn_key: str,
    placement: dict[str, str | None],
) -> tuple[list[MemberView], list[LeaseView], float]:
    """Members and leases as Redis holds them now (see the module docstring).

    Args:
        link: the cluster's Redis.
        leases: the cluster's leases (for the key names).
        members_key: the membership sorted set.
        member_timeout: the membership's timeout, seconds.
        reborn_key: the quarantine key (``runtime.cluster.rebirth``).
        placement: every catalog channel and the node placement puts it on.

    Raises:
        ClusterUnavailable: Redis did not answer.
    """
    seconds, micros = await link.call("TIME")
    now = int(seconds) + int(micros) / 1_000_000
    raw = await link.call("ZRANGE", members_key, 0, -1, "WITHSCORES")
    channel_ids: Sequence[str] = sorted(placement)
    found: list[LeaseView] = []
    script = link.script(_LEASES)
    for start in range(0, len(channel_ids), BATCH):
        batch = channel_ids[start : start + BATCH]
        values = await script([leases.lease_key(c) for c in batch], [])
        for i, channel_id in enumerate(batch):
            text = _text(values[2 * i])
            pttl = int(values[2 * i + 1])
            holder, _, token = text.rpartition("|") if text else ("", "", "")
            found.append(
                LeaseView(
                    channel_id=channel_id,
                    placed_on=placement[channel_id],
                    holder=holder or None,
                    token=int(token) if token.isascii() and token.isdigit() else None,
                    expires_in=pttl / 1000 if pttl >= 0 else None,
                )
            )
    placed = Counter(p for p in placement.values() if p is not None)
    held = Counter(lease.holder for lease in found if lease.holder is not None)
    members = [
        MemberView(
            node=_text(node),
            heartbeat_age=max(now - (float(_text(deadline)) / 1000 - member_timeout), 0.0),
            placed=placed[_text(node)],
            held=held[_text(node)],
        )
        for node, deadline in sorted(_pairs(raw), key=lambda pair: _text(pair[0]))
    ]
    quarantine_ms = int(await link.call("PTTL", reborn_key))
    return members, found, max(quarantine_ms, 0) / 1000


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pairs(raw: object) -> list[tuple[object, object]]:
    """``ZRANGE ... WITHSCORES`` as pairs, whichever shape the client gave."""
    if not isinstance(raw, list | tuple):
        return []
    if raw and isinstance(raw[0], list | tuple):
        return [(item[0], item[1]) for item in raw]
    return [(raw[i], raw[i + 1]) for i in range(0, len(raw) - 1, 2)]
