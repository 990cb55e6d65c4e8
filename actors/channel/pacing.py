"""Taking turns at the channel's rate limiter: one send waits on the clock, the rest queue.

Design: a paced channel (burst 1, :func:`~actors.channel.state.channel_bucket`)
has up to its send window of sends waiting for the limiter at once, all for
the same next turn. If each slept until that turn, every turn would wake all
of them, one would go and the rest would compute the next turn and sleep
again: about ``window`` wake-ups (a cancel scope, a deadline, a limiter
check each) per message sent, a crowd of runnable tasks just when the turn's
send should leave, and sends leaving in no particular order. So only one
send sleeps on the clock and the others park, in order. The baton passes on
each move: a send that takes its turn (or turns to a wait of its own) wakes
the next parked one (:meth:`Turns.pass_on`), which either goes too (after a
pause they all may, one after another) or finds the next turn ahead and
sleeps on the clock for everyone. Only a wait on what all sends share comes
here (the caller checks
:meth:`~actors.ratelimit.CompositeLimiter.shared_deadline`): a send that
waits on its own peer's bucket or pause sleeps by itself, so it never holds
the others back.
"""

from __future__ import annotations

import trio
from trio.lowlevel import ParkingLot

__all__ = ["Turns"]


class Turns:
    """Sends waiting for the channel's shared limit: one sleeps, the rest park.

    The parking lot is made by the first send that has to park: most
    channels of a node never have two sends waiting at once.
    """

    __slots__ = ("_parked", "_sleeping")

    def __init__(self) -> None:
        self._sleeping = False
        self._parked: ParkingLot | None = None

    def __repr__(self) -> str:
        parked = 0 if self._parked is None else len(self._parked)
        return f"<Turns sleeping={self._sleeping} parked={parked}>"

    async def wait(self, until: float) -> None:
        """Return at ``until``; while another send sleeps on the clock, once woken in turn.

        The caller then looks at the limiter again, and calls
        :meth:`pass_on` when it goes (or waits on something of its own).
        """
        if self._sleeping:
            if self._parked is None:
                self._parked = ParkingLot()
            await self._parked.park()
            return
        self._sleeping = True
        slept = False
        try:
            await trio.sleep_until(until)
            slept = True
        finally:
            self._sleeping = False
            if not slept:  # cancelled: it takes no turn, the next waits in its place
                self.pass_on()

    @property
    def idle(self) -> bool:
        """No send waits in line (a send that would take a token now jumps nobody)."""
        return not self._sleeping and not self._parked

    def pass_on(self) -> None:
        """Wake the next parked send, unless one sleeps on the clock for all."""
        if not self._sleeping and self._parked:
            self._parked.unpark()
