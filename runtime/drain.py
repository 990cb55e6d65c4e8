"""Graceful shutdown of a node within a deadline.

Design (request → bounded wait → hard stop, as in tractor and asyncpg):

1. Stop taking work: ``send`` raises ``NodeDraining`` and ``/readyz`` says so.
2. Wait for the sends already accepted, until the deadline minus a reserve
   for closing the links.
3. Stop the channels: each flushes its inbound events to the store and closes
   its link resumably (Discord: a close that keeps the session). Whatever has
   not stopped by the deadline is killed. A send on the wire at that moment
   either completes (its sender gets the result) or fails with its channel.
4. Every send that has not completed by now is kept in the store and
   reported, with its channel and idempotency key, *before* its sender is
   told ``NodeDraining``: nothing accepted is silently dropped, and nothing
   sent is kept. (A send cut off on the wire may have reached the platform;
   the next start sends it again with the same idempotency key, so delivery
   is at least once.)
5. Flush the store.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING, Final

import attrs
import trio

from providers.base import OutboundMessage

from .store import KeptMessage

if TYPE_CHECKING:
    from .node import Node

__all__ = ["DrainReport", "Pending", "drain_node"]

log = logging.getLogger("switchboard.node")

CLOSE_RESERVE: Final = 2.0  # seconds of the deadline kept for closing links
STORE_GRACE: Final = 5.0  # seconds past the deadline the final store flush may take


@attrs.define(eq=False)
class Pending:
    """A send the node accepted and has not finished."""

    channel_id: str
    message: OutboundMessage
    accepted_at: float  # unix time
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    cut: bool = False  # the drain deadline passed while it was in flight
    kept: bool = False
    settled: trio.Event = attrs.field(factory=trio.Event)  # kept (or keeping failed)


@attrs.frozen(kw_only=True)
class DrainReport:
    """What a drain did.

    Attributes:
        deadline: the deadline, seconds.
        elapsed: how long it took, seconds.
        in_flight: sends in flight when the drain began.
        kept: the messages not sent by the deadline, kept in the store.
        durable: whether the store keeps them across processes.
        channels_stopped: channels stopped gracefully (the rest were killed).
        channels_killed: channels that had to be killed at the deadline.
    """

    deadline: float
    elapsed: float
    in_flight: int
    kept: tuple[KeptMessage, ...]
    durable: bool
    channels_stopped: int
    channels_killed: int

    def summary(self) -> str:
        """One line for the log."""
        text = (
            f"drained in {self.elapsed:.2f} s (deadline {self.deadline:g} s): "
            f"{self.in_flight} send(s) in flight, {len(self.kept)} kept, "
            f"{self.channels_stopped} channel(s) stopped"
        )
        if self.channels_killed:
            text += f", {self.channels_killed} killed at the deadline"
        return text


async def drain_node(node: Node, deadline: float) -> DrainReport:
    """Drain ``node`` (already marked draining); see the module docstring."""
    started = trio.current_time()
    end = started + deadline
    in_flight = len(node._inflight)
    log.info(
        "draining node %s: %d send(s) in flight, deadline %g s", node.node_id, in_flight, deadline
    )
    with trio.move_on_at(end - min(CLOSE_RESERVE, deadline * 0.25)):
        while node._inflight:
            node._inflight_changed = trio.Event()
            await node._inflight_changed.wait()

    for pending in node._inflight:
        pending.cut = True
    stopped, killed = await _stop_channels(node, end)
    kept = await _keep_leftovers(node, deadline)
    with trio.move_on_at(max(end, trio.current_time()) + STORE_GRACE) as flush_scope:
        await node.store.flush()
    if flush_scope.cancelled_caught:
        log.error("the store did not flush within %g s of the drain deadline", STORE_GRACE)
    report = DrainReport(
        deadline=deadline,
        elapsed=trio.current_time() - started,
        in_flight=in_flight,
        kept=tuple(kept),
        durable=node.store.durable,
        channels_stopped=stopped,
        channels_killed=killed,
    )
    log.info("%s", report.summary())
    return report


async def _keep_leftovers(node: Node, deadline: float) -> list[KeptMessage]:
    leftovers = list(node._inflight)
    if not leftovers:
        return []
    kept = [
        KeptMessage(
            channel_id=pending.channel_id,
            message=pending.message,
            reason=f"not sent by the drain deadline ({deadline:g} s)",
            accepted_at=pending.accepted_at,
        )
        for pending in leftovers
    ]
    # Kept before the senders hear about it: a crash in between loses nothing.
    stored = False
    try:
        with trio.CancelScope(shield=True):
            await node.store.keep_outbound(kept)
        stored = True
    finally:
        for pending in leftovers:
            pending.kept = stored
            pending.settled.set()
            pending.scope.cancel()
    by_channel = Counter(item.channel_id for item in kept)
    where = (
        f"kept in the {node.store.statistics().backend} store for the next start"
        if node.store.durable
        else "kept in memory only and LOST when this process exits (set storage.outbox_file "
        "or use the postgres backend to keep them)"
    )
    log.warning(
        "%d message(s) not sent by the drain deadline, %s: %s",
        len(kept),
        where,
        ", ".join(f"{channel}: {count}" for channel, count in sorted(by_channel.items())),
    )
    for item in kept:
        log.warning(
            "not sent by the drain deadline: idempotency key %s to %s",
            item.message.idempotency_key,
            item.message.peer,
            extra={"channel": item.channel_id},
        )
    return kept


async def _stop_channels(node: Node, end: float) -> tuple[int, int]:
    root = node._root
    channels = node._channels
    if root is None or channels is None:
        return 0, 0
    running = [s for s in node.channels() if s.start_error is None]
    with trio.move_on_at(end) as scope:
        # terminate_child, not stop: the root must not restart the channels.
        await root.terminate_child("channels")
    if not scope.cancelled_caught:
        return len(running), 0
    still = [s for s in node.channels() if s.statistics is not None and _alive(node, s.channel_id)]
    log.warning(
        "%d channel(s) did not stop by the drain deadline and are killed: %s",
        len(still),
        ", ".join(s.channel_id for s in still),
    )
    channels.ref.kill()
    await channels.ref.wait_terminated()
    return len(running) - len(still), len(still)


def _alive(node: Node, channel_id: str) -> bool:
    managed = node._managed.get(channel_id)
    return managed is not None and managed.channel is not None and managed.channel.ref.alive
