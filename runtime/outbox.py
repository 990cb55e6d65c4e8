"""Outbox: many sends in flight from one task, with no task waiting on each.

Design: ``await node.send(...)`` parks its caller until the platform
answers, so a caller with thousands of messages out at once (a broadcast
through one number, a load generator) needs a task for each, and pays a
task's wake-up and its frames on every message. An outbox starts each send
without waiting (:meth:`Outbox.send` is synchronous) and hands back how
each one ended as a :class:`Sent`, as a task that awaited ``node.send``
would have seen it: the ``SendResult`` it returned or the error it raised.

What ``send`` refuses at once (a bad argument, a node not accepting work,
an unknown channel, ``Overloaded``, a reused key) is raised by ``send``
itself, and nothing was sent. Each send is otherwise the same as
``node.send``'s: the channel's window, limiters, breaker, retries and dead
letters, the caller's timeout, and the drain, which keeps a send still out
at its deadline (its ``Sent`` then holds ``NodeDraining``). A send of a
key answered recently is answered at once; one of a key on its way already,
or on a node in a cluster, goes the long way, in a task of the node's (it
goes on, like every send out, if the outbox's block ends first), one a
channel and peer at a time, so that a peer's messages keep their order. On a node
in a cluster every send goes so (its channel may run on another node): what
refuses it after the checks of its arguments (``UnknownChannel``,
``Overloaded``, ...) comes as its :class:`Sent`, not raised by ``send``.

The outcomes come either to ``on_sent`` or through ``async for sent in
outbox``, which ends once the outbox is closed and every outcome was taken.
The task that learns an outcome (a connection's reader, the actor's, the
tracker's timer) only queues it: it may be deep inside the channel's send
path, where a caller's code that sends again would run inside a send that
is not finished. ``on_sent`` runs in a task of the outbox's own, which
takes every outcome queued since it last ran in one wake-up: a task step
per batch of answers, not per send.
"""

from __future__ import annotations

import functools
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Final

import trio

from providers.base import SendResult
from providers.groups import ungrouped
from providers.operations import Operation

if TYPE_CHECKING:
    from .node import Node

__all__ = ["Outbox", "Sent"]

log = logging.getLogger("switchboard.outbox")

FAIRNESS_BATCH: Final = 64
"""Outcomes ``async for`` hands over before it lets the other tasks run."""


class Sent:
    """How one send of an :class:`Outbox` ended.

    Attributes:
        channel_id: the channel it went to.
        message: the operation, as given to :meth:`Outbox.send`.
        result: what ``node.perform`` returns for it (a ``SendResult`` for
            a message or an edit, else ``None``); ``None`` when it failed.
        error: what ``node.perform`` raises for it, or ``None`` when it was sent.
        at: trio time at which the node learnt the outcome.
    """

    __slots__ = ("at", "channel_id", "error", "message", "result")

    def __init__(
        self,
        channel_id: str,
        message: Operation,
        result: SendResult | None,
        error: BaseException | None,
        at: float,
    ) -> None:
        self.channel_id = channel_id
        self.message = message
        self.result = result
        self.error = error
        self.at = at

    @property
    def ok(self) -> bool:
        """Whether the platform took it."""
        return self.error is None

    def __repr__(self) -> str:
        key = getattr(self.message, "idempotency_key", None)
        how = f"error={type(self.error).__name__}" if self.error is not None else "ok"
        return f"<Sent channel={self.channel_id!r} key={key!r} {how}>"


class Outbox:
    """Sends in flight from one task: made by :meth:`runtime.Node.outbox`."""

    def __init__(
        self,
        node: Node,
        nursery: trio.Nursery,
        *,
        timeout: float | None,
        on_sent: Callable[[Sent], object] | None,
    ) -> None:
        self._node = node
        self._now = trio.lowlevel.current_clock().current_time  # (made in the run)
        self._nursery = nursery
        self._timeout = timeout
        self._on_sent = on_sent
        self._outcomes: deque[Sent] = deque()
        self._waiting = trio.lowlevel.ParkingLot()  # the task in `async for`, or on_sent's
        self._all_done = trio.Event()
        self._outstanding = 0
        self._closed = False
        self._abandoned = False  # its block ended under an error: outcomes go nowhere
        self._handed = 0  # outcomes handed over since `async for` last let others run
        # Long-way sends waiting for the one before them, by channel and peer.
        self._chains: dict[tuple[str, str | None], deque[tuple[Operation, float, float]]] = {}
        if on_sent is not None:
            nursery.start_soon(self._hand_to, on_sent)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Outbox {state}, {self._outstanding} out, {len(self._outcomes)} to take>"

    @property
    def outstanding(self) -> int:
        """Sends started and not ended yet."""
        return self._outstanding

    def send(self, channel_id: str, message: Operation) -> None:
        """Start sending ``message`` (any operation) on ``channel_id``; do not wait.

        Synchronous: it never yields to other tasks. A caller that sends
        thousands in a loop lets the others run now and then
        (``await trio.lowlevel.checkpoint()``), or the answers it waits for
        are read late.

        Raises (nothing was sent):
            RuntimeError: the outbox is closed.
            TypeError, ValueError, InvalidMessage: a bad argument.
            NodeStarting, NodeDraining: the node does not take sends now.
            UnknownChannel, ChannelFailed, KeyReused, MailboxFull: as ``node.send``.
            Overloaded: the node or the channel holds its bound of sends:
                retry after ``retry_after`` seconds.

        On a node in a cluster, only what is wrong with the call itself (the
        outbox closed, a bad argument, a node still starting) is raised here;
        the rest comes as the send's :class:`Sent` (the channel may run on
        another node, which decides).
        """
        if self._closed:
            raise RuntimeError(f"{self!r}: the outbox is closed; nothing was sent")
        node = self._node
        timeout = node._checked(channel_id, message, self._timeout)
        self._outstanding += 1
        try:
            ended = functools.partial(self._ended, channel_id, message)
            if not node._send_soon(channel_id, message, timeout, ended):
                self._long_way(channel_id, message, timeout)
        except BaseException:
            self._outstanding -= 1
            raise

    def close(self) -> None:
        """Take no more sends: ``async for`` ends once every outcome was taken."""
        self._closed = True
        if not self._outstanding:
            self._all_done.set()
            self._waiting.unpark_all()

    def __aiter__(self) -> AsyncIterator[Sent]:
        return self

    async def __anext__(self) -> Sent:
        """The next outcome, in the order they came.

        Raises:
            StopAsyncIteration: the outbox is closed and every outcome was taken.
            RuntimeError: the outbox hands its outcomes to ``on_sent``.
        """
        if self._on_sent is not None:
            raise RuntimeError(f"{self!r} hands its outcomes to on_sent; there are none to take")
        outcomes = self._outcomes
        while not outcomes:
            if self._closed and (not self._outstanding or self._abandoned):
                raise StopAsyncIteration
            self._handed = 0
            await self._waiting.park()
        self._handed += 1
        if self._handed >= FAIRNESS_BATCH:
            self._handed = 0
            await trio.lowlevel.checkpoint()
        else:
            await trio.lowlevel.checkpoint_if_cancelled()
        if not outcomes:  # (taken meanwhile by another task's loop)
            return await self.__anext__()
        return outcomes.popleft()

    def _abandon(self) -> None:
        """Its block ended under an error: nobody listens any more."""
        self._abandoned = True
        self.close()
        self._all_done.set()
        self._waiting.unpark_all()

    async def wait_done(self) -> None:
        """Wait until the outbox is closed and every send it started has ended."""
        await self._all_done.wait()

    # --- inside -----------------------------------------------------------------------

    def _ended(
        self,
        channel_id: str,
        message: Operation,
        result: SendResult | None,
        error: BaseException | None,
    ) -> None:
        """One send ended (in whichever task learnt it): hand its outcome over."""
        self._outstanding -= 1
        if not self._abandoned:
            self._outcomes.append(Sent(channel_id, message, result, error, self._now()))
            self._waiting.unpark()
        if not self._outstanding and self._closed:
            self._all_done.set()
            self._waiting.unpark_all()

    async def _hand_to(self, on_sent: Callable[[Sent], object]) -> None:
        """Hand each outcome to ``on_sent`` as it comes (a task of the outbox's)."""
        outcomes = self._outcomes
        while True:
            while not outcomes:
                if self._closed and not self._outstanding:
                    return
                await self._waiting.park()
            handed = 0
            while outcomes:
                sent = outcomes.popleft()
                try:
                    on_sent(sent)
                except Exception:
                    log.exception("an outbox's on_sent raised on %r; the outcome is dropped", sent)
                handed += 1
                if handed >= FAIRNESS_BATCH:
                    handed = 0
                    await trio.lowlevel.checkpoint()

    def _long_way(self, channel_id: str, message: Operation, timeout: float) -> None:
        """Send ``message`` the long way (a key on its way, a cluster's node), in
        a task of the node's: it goes on (tracked, drained) if this outbox's
        block ends first.

        One task a channel and peer at a time, each send after the one before
        it ended, so that a peer's messages go in the order they were given
        (tasks started together run in any order; a channel runs one send a
        peer at a time all the same). Each one's timeout runs from here.
        """
        chain = (channel_id, getattr(message, "peer", None))
        waiting = self._chains.get(chain)
        if waiting is not None:
            waiting.append((message, timeout, self._now()))
            return
        self._node._background(self._send_chain, chain, message, timeout, self._now())
        self._chains[chain] = deque()

    async def _send_chain(
        self,
        chain: tuple[str, str | None],
        message: Operation,
        timeout: float,  # noqa: ASYNC109
        given: float,
    ) -> None:
        """Send a channel and peer's long-way sends in turn (see :meth:`_long_way`)."""
        channel_id = chain[0]
        waiting = self._chains[chain]
        try:
            while True:
                left = max(0.0, timeout - (self._now() - given))
                try:
                    result = await self._node._route(channel_id, message, left)
                except Exception as exc:
                    self._ended(channel_id, message, None, exc)
                else:
                    self._ended(channel_id, message, result, None)
                if not waiting:
                    return
                message, timeout, given = waiting.popleft()
        except BaseException as exc:  # the node's end cancelled it: every one ended all the same
            self._ended(channel_id, message, None, exc)
            while waiting:
                self._ended(channel_id, waiting.popleft()[0], None, exc)
            raise
        finally:
            del self._chains[chain]


@asynccontextmanager
async def open_outbox(
    node: Node,
    *,
    timeout: float | None = None,  # noqa: ASYNC109
    on_sent: Callable[[Sent], object] | None = None,
) -> AsyncIterator[Outbox]:
    """:meth:`runtime.Node.outbox`."""
    async with ungrouped(trio.open_nursery()) as nursery:
        outbox = Outbox(node, nursery, timeout=timeout, on_sent=on_sent)
        try:
            yield outbox
            outbox.close()
            await outbox.wait_done()
        except BaseException:
            # Left under an error, or cancelled while it waited: the sends out
            # now go on in the node (tracked, bounded, drained), their outcomes
            # unheard.
            outbox._abandon()
            raise
