"""Tenure: until when this node may hold a channel's platform connection.

Design:
- In a cluster a node connects a channel only while it holds the channel's
  lease, and must stop *before* the lease can expire anywhere. The lease
  layer keeps a :class:`Tenure` per channel and moves its deadline (on this
  process's trio clock) forward at each renewal; the channel runs every
  connection inside :meth:`Tenure.hold`, a cancel scope whose deadline *is*
  the tenure's. So when renewals stop (Redis unreachable, the node frozen
  by SIGSTOP and thawed) trio itself cancels the connection at the
  deadline, and its I/O stops at its next checkpoint, before any further
  byte goes out; nothing has to run in time to stop it.
- A channel with no tenure (a node alone) holds forever.
- A lapsed tenure does not crash anything: the channel waits, not
  connecting, until the tenure is extended (a renewal came through after
  all) or the node stops the channel.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import trio

__all__ = ["Tenure"]


class Tenure:
    """The deadline until which this node may hold one channel's connection.

    Args:
        deadline: the first deadline, trio time (``-inf``: none yet).
    """

    __slots__ = ("_deadline", "_extended", "_revoked", "_scopes", "token")

    def __init__(self, deadline: float = -math.inf, *, token: int = 0) -> None:
        self._deadline = deadline
        self._scopes: set[trio.CancelScope] = set()
        self._extended = trio.Event()
        self._revoked = False
        self.token = token  # the lease's fencing token, for reports

    def __repr__(self) -> str:
        return f"<Tenure token={self.token} deadline={self._deadline:.3f}>"

    @property
    def deadline(self) -> float:
        """Trio time after which the connection must be gone."""
        return self._deadline

    @property
    def revoked(self) -> bool:
        """Whether :meth:`revoke` ended it (no renewal brings it back)."""
        return self._revoked

    def valid(self) -> bool:
        """Whether the connection may be held now."""
        return trio.current_time() < self._deadline

    def extend(self, deadline: float) -> None:
        """Move the deadline (a renewal went through); a shorter one also applies.

        Nothing moves a revoked tenure: a renewal that was on its way when
        the lease was proven lost does not bring the connection back.
        """
        if self._revoked:
            return
        self._deadline = deadline
        for scope in self._scopes:
            scope.deadline = deadline
        if deadline > trio.current_time():
            self._extended.set()
            self._extended = trio.Event()

    def revoke(self) -> None:
        """End the tenure now (the lease was lost): held connections are cancelled."""
        self.extend(-math.inf)
        self._revoked = True

    async def wait_valid(self) -> None:
        """Return once the tenure is valid (at once if it is)."""
        while not self.valid():
            await self._extended.wait()

    @contextmanager
    def hold(self) -> Iterator[trio.CancelScope]:
        """A cancel scope that ends at the tenure's deadline, following its changes."""
        with trio.CancelScope(deadline=self._deadline) as scope:
            self._scopes.add(scope)
            try:
                yield scope
            finally:
                self._scopes.discard(scope)
