"""Rebalancing, paced: when a channel that runs well here may move to where placement says.

Design:
- Placement changes with every membership change; following it at once
  makes a node that flaps (a long GC pause, a frozen VM, a flaky link) drag
  its channels away and back, each move a reconnect. So voluntary moves
  (letting go of a channel this node holds a good lease on) wait:
  - until the membership has held still for ``settle`` seconds;
  - until the channel has run here for ``cooldown`` seconds (a channel
    taken over from a node that died is not handed back the moment that
    node returns; it goes back once the cooldown is over, as a planned
    move).
- Taking a channel nobody holds is never delayed: that is availability, and
  the lease already decides when it is free.
- Moves in flight per node are bounded (``moves``): a node that joins takes
  its share a batch at a time, so the platforms' connect limits (the
  per-node connect gate, per-bot identify budgets) hold across the cluster;
  a draining node hands off under the same bound.
- An operator may pause rebalancing (``runtime.cluster.controls``): while
  :attr:`Rebalancer.paused`, no voluntary move is due at all.
- Pure: the clock is passed in, so the policy is tested without time.
"""

from __future__ import annotations

import math

import attrs

__all__ = ["Pacing", "Rebalancer"]


@attrs.frozen(kw_only=True)
class Pacing:
    """How fast channels follow placement.

    Attributes:
        settle: seconds the membership must hold still before a voluntary move.
        cooldown: seconds a channel runs on a node before it may move away again.
        moves: channels taken or let go at once by one node.
    """

    settle: float = 2.0
    cooldown: float = 30.0
    moves: int = 64

    def __attrs_post_init__(self) -> None:
        if self.settle < 0 or self.cooldown < 0:
            raise ValueError("settle and cooldown must be 0 or more seconds")
        if self.moves < 1:
            raise ValueError(f"moves must be at least 1, got {self.moves}")


class Rebalancer:
    """One node's pacing state (see the module docstring)."""

    def __init__(self, pacing: Pacing) -> None:
        self.pacing = pacing
        self._settled_at = -math.inf  # when the membership last changed + settle
        self._arrived: dict[str, float] = {}  # channel -> when it started here
        self.paused = False  # an operator paused rebalancing: no voluntary move is due

    def members_changed(self, now: float) -> None:
        """The member set changed at ``now``: voluntary moves wait for it to settle."""
        self._settled_at = now + self.pacing.settle

    def arrived(self, channel_id: str, now: float) -> None:
        """The channel started here at ``now``."""
        self._arrived[channel_id] = now

    def left(self, channel_id: str) -> None:
        """The channel no longer runs here."""
        self._arrived.pop(channel_id, None)

    def may_let_go(self, channel_id: str, now: float) -> bool:
        """Whether a channel placement sends elsewhere may go now (voluntarily)."""
        return now >= self.when_may_let_go(channel_id)

    def when_may_let_go(self, channel_id: str) -> float:
        """The time from which :meth:`may_let_go` holds (never while paused)."""
        if self.paused:
            return math.inf
        arrived = self._arrived.get(channel_id, -math.inf)
        return max(self._settled_at, arrived + self.pacing.cooldown)
