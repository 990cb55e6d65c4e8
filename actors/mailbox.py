"""The bounded, two-lane mailbox of an actor.

Design:
- Two FIFO lanes: a system lane (stop, status, child exits) that always
  overtakes the user lane. Only the user lane is bounded: system messages are
  few, come from the runtime itself, and must never be refused.
- Lanes are allocated on first use and released when drained. An empty
  ``collections.deque`` costs 760 bytes here, more than the rest of an idle
  actor, so an idle actor holds no deque at all.
- The mailbox belongs to the actor's ref, not to the actor instance: a crash
  and restart swaps the instance and keeps every queued message.
- Overflow is an explicit policy. ``REJECT`` raises :class:`MailboxFull` at
  once; ``WAIT`` lets ``await ref.send()`` wait for room up to a deadline and
  then raise. ``ref.tell()`` never waits under either policy.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import Any, Final

import attrs
from trio.lowlevel import ParkingLot

__all__ = ["DEFAULT_CAPACITY", "Mailbox", "MailboxConfig", "MailboxStatistics", "Overflow"]

DEFAULT_CAPACITY: Final = 10_000  # messages in the user lane
DEFAULT_OVERFLOW_TIMEOUT: Final = 5.0  # seconds a WAIT send may wait for room


class Overflow(enum.Enum):
    """What happens when a message arrives at a full mailbox."""

    REJECT = "reject"
    """Raise :class:`~actors.errors.MailboxFull` immediately."""
    WAIT = "wait"
    """``await ref.send()`` waits for room up to ``overflow_timeout``, then raises."""


@attrs.frozen(kw_only=True)
class MailboxConfig:
    """How an actor's mailbox is bounded.

    Attributes:
        capacity: the most user messages the mailbox holds.
        overflow: the policy applied when it is full.
        overflow_timeout: seconds a ``WAIT`` send waits for room.
    """

    capacity: int = attrs.field(default=DEFAULT_CAPACITY, validator=attrs.validators.ge(1))
    overflow: Overflow = Overflow.REJECT
    overflow_timeout: float = attrs.field(
        default=DEFAULT_OVERFLOW_TIMEOUT, validator=attrs.validators.ge(0.0)
    )


DEFAULT_MAILBOX: Final = MailboxConfig()


@attrs.frozen(kw_only=True)
class MailboxStatistics:
    """A snapshot of a mailbox.

    Attributes:
        depth: user messages waiting.
        system_depth: system messages waiting.
        capacity: the bound of the user lane.
        senders_waiting: tasks blocked in ``send`` for room.
    """

    depth: int
    system_depth: int
    capacity: int
    senders_waiting: int


class Mailbox:
    """Two FIFO lanes, the system lane first; only the user lane is bounded.

    This is a plain data structure: it never blocks. Senders waiting for room
    park in :attr:`room` (:class:`~actors.ref.ActorRef` parks and wakes them).
    """

    __slots__ = ("_system", "_user", "config", "room")

    def __init__(self, config: MailboxConfig = DEFAULT_MAILBOX) -> None:
        self._user: deque[Any] | None = None
        self._system: deque[Any] | None = None
        self.config = config
        # Senders parked in ``ActorRef.send`` waiting for room, oldest first;
        # made by the first one (a ParkingLot is larger than an idle actor).
        self.room: ParkingLot | None = None

    def __len__(self) -> int:
        return (len(self._user) if self._user else 0) + (len(self._system) if self._system else 0)

    def __bool__(self) -> bool:
        return bool(self._user) or bool(self._system)

    @property
    def depth(self) -> int:
        """User messages waiting."""
        return len(self._user) if self._user is not None else 0

    def has_room(self) -> bool:
        user = self._user
        return user is None or len(user) < self.config.capacity

    def put(self, item: Any) -> None:
        """Append a user message; the caller has checked :meth:`has_room`."""
        user = self._user
        if user is None:
            user = self._user = deque()
        user.append(item)

    def put_front(self, items: list[Any]) -> None:
        """Put user messages back at the front, in order (never refused: they
        were admitted once)."""
        if not items:
            return
        user = self._user
        if user is None:
            self._user = deque(items)
        else:
            user.extendleft(reversed(items))

    def put_system(self, item: Any) -> None:
        """Append a system message; never refused."""
        lane = self._system
        if lane is None:
            lane = self._system = deque()
        lane.append(item)

    def pop_system(self) -> Any | None:
        """The oldest system message, or ``None``."""
        lane = self._system
        if lane:
            return lane.popleft()
        return None

    def pop_user(self) -> Any | None:
        """The oldest user message, or ``None`` if the lane is empty.

        ``None`` is also a valid message: test :attr:`depth` first.
        """
        user = self._user
        if user:
            return user.popleft()
        return None

    def release(self) -> None:
        """Drop empty lanes so an idle actor holds no deque."""
        if self._user is not None and not self._user:
            self._user = None
        if self._system is not None and not self._system:
            self._system = None

    def drain_user(self) -> list[Any]:
        """Remove and return every user message (used when the actor dies)."""
        user, self._user = self._user, None
        return list(user) if user else []

    def drain_system(self) -> list[Any]:
        lane, self._system = self._system, None
        return list(lane) if lane else []

    def statistics(self) -> MailboxStatistics:
        return MailboxStatistics(
            depth=self.depth,
            system_depth=len(self._system) if self._system else 0,
            capacity=self.config.capacity,
            senders_waiting=len(self.room) if self.room is not None else 0,
        )

    def __repr__(self) -> str:
        return f"<Mailbox {self.depth}/{self.config.capacity} system={len(self._system or ())}>"
