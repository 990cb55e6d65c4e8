"""The send window: which sends a channel has taken off its mailbox, per peer.

Design:
- A platform is 50-300 ms away; one send at a time caps a channel at
  1/RTT messages per second. So the actor takes up to ``capacity`` sends
  off its mailbox at once and runs them side by side, each through the
  whole send path (limiters, breaker, retries, dead letters).
- Order per recipient: sends to one peer form a *chain*; only its head is
  in flight, and the next one leaves once the head's fate is known
  (accepted, or given up on). A platform may reorder two requests in
  flight at once, so two messages to one peer never are.
- The window is a plain data structure (it never blocks by itself, like the
  mailbox): the actor parks in :meth:`wait_for_room` and :meth:`wait_idle`,
  and whoever learns a send's fate (the task that runs its chain, or the
  connection's reader for a send started at once) calls :meth:`finish`.
- A stop lets the sends on the wire (the chains' heads) finish, and hands
  what waits behind them back to the mailbox (:attr:`closing`), as a stop
  used to let the one send in hand finish and leave the rest queued.
- One idempotency key, one peer: a key on its way to one peer is refused
  for another (:meth:`SendWindow.elsewhere`). Two sends of it would both go
  out (each its own chain, each unanswered when it leaves), and the later
  answer would stand for both; one peer's sends of a key follow each other
  in its chain, and the channel answers the later ones from the first.
- A chain whose task is cancelled (the incarnation ends: a crash, a kill, a
  restart, a stop that outlasted its grace) is handed back whole, in order,
  by :meth:`abandon`; the actor puts it back at the front of its mailbox,
  which outlives the incarnation, so a crash mid-window loses no send.
"""

from __future__ import annotations

from typing import Any

from trio.lowlevel import ParkingLot

from providers.operations import Operation

__all__ = ["Flight", "SendWindow"]


class Flight:
    """One send taken off the mailbox.

    Attributes:
        message: what to send.
        item: the mailbox item it came as (the pending ask, or the message
            itself when it was told), handed back if the send is abandoned.
        settled: its fate is decided (dead-lettered): an abandoned chain
            does not hand it back to be sent again.
    """

    __slots__ = ("item", "message", "settled")

    def __init__(self, message: Operation, item: Any) -> None:
        self.message = message
        self.item = item
        self.settled = False

    def __repr__(self) -> str:
        return f"<Flight {self.message.idempotency_key!r} to {self.message.peer!r}>"


class SendWindow:
    """Up to ``capacity`` sends taken, in chains per peer.

    The chains' and keys' tables are made by the first send (and kept: no
    allocation per send) and the parking lots by the first waiter: a node
    runs ten thousand channels, most of them idle.
    """

    __slots__ = ("_chains", "_count", "_idle", "_keys", "_room", "capacity", "closing")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"a send window holds at least one send, not {capacity}")
        self.capacity = capacity
        self._chains: dict[str, list[Flight]] | None = None
        # Each key in the window, with its latest send (all of one peer, so the
        # latest is the last of them to finish: its finish lets the key go).
        self._keys: dict[str, Flight] | None = None
        self._count = 0
        self._room: ParkingLot | None = None
        self._idle: ParkingLot | None = None
        # The actor is stopping: what waits behind a send on the wire goes
        # back to the mailbox instead of following it.
        self.closing = False

    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        return f"<SendWindow {self._count}/{self.capacity} peers={self.in_flight}>"

    @property
    def full(self) -> bool:
        return self._count >= self.capacity

    @property
    def in_flight(self) -> int:
        """Sends on their way to the platform now (one per peer chain)."""
        return 0 if self._chains is None else len(self._chains)

    def elsewhere(self, message: Operation) -> bool:
        """Whether ``message``'s idempotency key is in the window for another peer."""
        keys = self._keys
        if keys is None:
            return False
        other = keys.get(message.idempotency_key)
        return other is not None and other.message.peer != message.peer

    def admit(self, flight: Flight) -> bool:
        """Take ``flight``; True if it may leave now (no send to its peer is out).

        Its key must not be :meth:`elsewhere`.
        """
        self._count += 1
        message = flight.message
        peer = message.peer
        chains = self._chains
        if chains is None:
            chains = self._chains = {}
            self._keys = {}
        assert self._keys is not None
        self._keys[message.idempotency_key] = flight
        chain = chains.get(peer)
        if chain is None:
            chains[peer] = [flight]
            return True
        chain.append(flight)
        return False

    def finish(self, flight: Flight) -> Flight | None:
        """The head of its chain is done; returns the next send to its peer, if any."""
        peer = flight.message.peer
        chains = self._chains
        assert chains is not None
        chain = chains[peer]
        assert chain[0] is flight, (flight, chain)
        del chain[0]
        keys = self._keys
        assert keys is not None
        key = flight.message.idempotency_key
        if keys.get(key) is flight:
            del keys[key]
        self._freed(1)
        if chain:
            return chain[0]
        del chains[peer]
        return None

    def abandon(self, flight: Flight) -> list[Flight]:
        """Remove the chain that ``flight`` heads; returns what of it must go again."""
        chains = self._chains
        assert chains is not None
        chain = chains.pop(flight.message.peer)
        assert chain[0] is flight, (flight, chain)
        keys = self._keys
        assert keys is not None
        for each in chain:
            key = each.message.idempotency_key
            if keys.get(key) is each:
                del keys[key]
        self._freed(len(chain))
        return [each for each in chain if not each.settled]

    def _freed(self, count: int) -> None:
        self._count -= count
        if self._room is not None and self._room:
            self._room.unpark(count=count)
        if self._count == 0 and self._idle is not None:
            self._idle.unpark_all()

    async def wait_for_room(self) -> None:
        """Return once the window has room for another send."""
        while self.full:
            if self._room is None:
                self._room = ParkingLot()
            await self._room.park()

    async def wait_idle(self) -> None:
        """Return once no send is left in the window."""
        while self._count:
            if self._idle is None:
                self._idle = ParkingLot()
            await self._idle.park()
