"""ChannelRef: the handle a product uses to talk to one channel.

Design: the handle reads what it can without asking the actor (statistics
from the channel's memory, the live connection) and asks for the rest
(sends, dead letters). It follows the actor when a supervisor started anew
from scratch gives the channel a new ref, through the memory's
``current_ref``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import outcome
import trio

from providers.base import Connection, OutboundMessage, SendResult
from providers.operations import Operation

from .. import lowlevel
from .._messages import AskWatch
from ..errors import ChannelFailed
from ..ref import ActorRef
from .actor import ChannelActor, DiscardDeadLetters, ListDeadLetters, ReplayDeadLetters, Send
from .state import (
    ChannelMemory,
    ChannelStatistics,
    ChannelStatus,
    OutboundDeadLetter,
    channel_statistics,
)

__all__ = ["ChannelRef"]

DEFAULT_SUBSCRIBER_BUFFER = 1_000  # events a subscriber may fall behind before losing some


class ChannelRef:
    """The handle a product uses to talk to one channel."""

    def __init__(
        self, ref: ActorRef, memory: ChannelMemory, channel_id: str, provider_name: str
    ) -> None:
        self._ref = ref
        self.memory = memory
        self.channel_id = channel_id
        self.provider_name = provider_name

    @property
    def ref(self) -> ActorRef:
        """The channel actor's ref; follows it if its supervisor started it anew."""
        current: ActorRef | None = self.memory.current_ref
        return current if current is not None else self._ref

    def __repr__(self) -> str:
        return f"<ChannelRef {self.channel_id} [{self.memory.status.name}]>"

    async def send(self, message: OutboundMessage, *, timeout: float = 60.0) -> SendResult:  # noqa: ASYNC109
        """Send and return once the platform accepted the message.

        Raises:
            MessageTooLong, BadRecipient, OutsideWindow (PermanentSendError):
                the platform will never take it (dead-lettered, except a
                too-long text, which is refused before sending).
            SendFailed: transient failures outlasted the retries (dead-lettered).
            ChannelFailed: the channel stopped for good.
            ChannelUnavailable: it did not connect in time.
            AskTimeout: no answer within ``timeout``.
            MailboxFull: the channel's queue is full.
            ActorDead: the channel was stopped for good before it answered.
        """
        self._raise_if_given_up()
        result: SendResult = await self.ref.ask(Send(message), timeout=timeout)
        return result

    def _raise_if_given_up(self) -> None:
        """A channel its supervisor gave up on has no actor left to refuse a send:
        refuse it here, as the actor of a FAILED channel does."""
        if self.memory.status is ChannelStatus.FAILED and not self.ref.alive:
            raise ChannelFailed(
                f"channel {self.channel_id!r} has failed ({self.memory.last_error}) "
                "and does not reconnect; fix the cause and restart it",
                channel_id=self.channel_id,
            )

    async def perform(
        self,
        op: Operation,
        *,
        timeout: float = 60.0,  # noqa: ASYNC109
        keep_refused: bool = False,
        watch: AskWatch | None = None,
    ) -> SendResult | None:
        """Perform an operation (edit, delete, typing, mark read, react, or a send)
        through the channel's send path: its limiters, breaker, retries and dead letters.

        ``keep_refused``: a refusal before sending is dead-lettered too (once
        per idempotency key), for a kept message that nobody waits for.
        ``watch``: bounds the wait without a cancel scope (``ActorRef.ask``).

        Returns:
            The ``SendResult`` of a send or an edit; ``None`` for the others.

        Raises:
            Unsupported: the platform has no such operation (refused before sending).
            MessageNotFound: the platform no longer has the message (dead-lettered).
            The errors of :meth:`send` otherwise.
        """
        result: SendResult | None = await self.asking(
            op, timeout=timeout, keep_refused=keep_refused, watch=watch
        )
        return result

    def asking(
        self,
        op: Operation,
        *,
        timeout: float = 60.0,
        keep_refused: bool = False,
        watch: AskWatch | None = None,
    ) -> Awaitable[SendResult | None]:
        """:meth:`perform`'s ask, for a caller that awaits it at once.

        Not a coroutine: the caller awaits the actor's ask itself, one frame
        fewer on a send that waits for its answer (a node's every send).
        A channel given up on raises ``ChannelFailed`` here, as the call.
        """
        self._raise_if_given_up()
        send = Send(op, keep_refused=keep_refused)
        answer: Awaitable[SendResult | None] = self.ref.ask(send, timeout=timeout, watch=watch)
        return answer

    def asking_soon(
        self,
        op: Operation,
        answered: Callable[[outcome.Outcome[SendResult | None]], object],
        *,
        watch: AskWatch | None = None,
    ) -> None:
        """:meth:`perform`'s ask with no task waiting for it (``ActorRef.ask_soon``):
        ``answered`` gets its outcome, and ``watch`` bounds it.

        Raises (nothing was sent): ``ChannelFailed`` for a channel given up
        on, and the errors of ``ActorRef.ask_soon``.
        """
        self._raise_if_given_up()
        self.ref.ask_soon(Send(op), answered, watch=watch)

    def subscribe(
        self, *, buffer: int | None = None, accepts: Callable[[Any], bool] | None = None
    ) -> trio.MemoryReceiveChannel[Any]:
        """Inbound events, receipts and state changes, as a trio receive channel.

        A subscriber that falls ``buffer`` events behind loses the newest
        ones (counted in statistics); the channel never waits for it. Close
        the receive channel to unsubscribe.
        """
        size = buffer if buffer is not None else DEFAULT_SUBSCRIBER_BUFFER
        send, receive = trio.open_memory_channel[Any](size)
        self.memory.subscribers.append((send, accepts))
        return receive

    async def dead_letters(self) -> list[OutboundDeadLetter]:
        """The messages this channel gave up on, oldest first."""
        letters: list[OutboundDeadLetter] = await self.ref.ask(ListDeadLetters())
        return letters

    async def replay_dead_letters(self, ids: Sequence[int] | None = None) -> int:
        """Send dead letters again (all, or the given ids); returns how many."""
        count: int = await self.ref.ask(ReplayDeadLetters(None if ids is None else tuple(ids)))
        return count

    async def discard_dead_letters(self, ids: Sequence[int] | None = None) -> int:
        """Forget dead letters (all, or the given ids); returns how many."""
        count: int = await self.ref.ask(DiscardDeadLetters(None if ids is None else tuple(ids)))
        return count

    @property
    def connection(self) -> Connection | None:
        """The live provider connection, or ``None`` while not connected.

        For code that must hand the connection platform input from outside,
        such as an HTTP server routing a WhatsApp or Telegram webhook to it.
        A link past the channel's tenure is no live link, as for sends
        (``_live_connection``): a node thawed after its lease ran out hands
        nothing to it, even before trio has cancelled it (another node may
        run the channel by now).
        """
        inst = lowlevel.current_instance(self.ref)
        if not isinstance(inst, ChannelActor):
            return None
        tenure = inst.memory.tenure
        if tenure is not None and not tenure.valid():
            return None
        return inst._conn

    def statistics(self) -> ChannelStatistics:
        """A snapshot of the channel; valid while it restarts, too."""
        return channel_statistics(self.channel_id, self.provider_name, self.memory)
