"""Admission control: a send the node cannot take in time is refused at once.

Design:
- Above its capacity a node that queues every send makes each one wait
  until it times out: goodput collapses, and the event loop, busy with
  queues, misses its own liveness deadlines. So the node bounds what it
  holds: sends accepted and not finished, in all
  (``[node] max_sends_in_flight``) and per channel
  (``[node] max_channel_sends``: the channel's window and what waits for
  it). Past a bound a send fails at once with
  :class:`~runtime.errors.Overloaded`, before anything is queued, and says
  when a retry may be taken: the message API answers 503 with
  ``Retry-After``.
- A count is not a time: what a node can carry depends on its machine, its
  providers and everything else it runs, so a bound of sends that keeps one
  node's queue short lets another's grow to seconds. So the node also
  sheds while its event loop runs behind (``[node] max_loop_lag``): a loop
  with more work than it can run wakes every timer late by about the
  length of its batches, and each accepted send waits through several.
  A probe reads that lateness ten times a second (``runtime.lag``); what
  the loop has held over the last two readings (one long batch, or one
  collection pause, is one reading, not two) decides. The node then
  refuses a share of new sends, spread evenly (:class:`Shedder`): at once
  ``1 - bound / behind`` (twice the bound behind, every second send), and
  more the longer the loop stays behind, until it is back within the
  bound; the share then shrinks as it grew, so once the loop is on time
  again sends are all taken within about a second (longer while it stays
  just under the bound). Refusing all or nothing instead swings between an
  idle node and a queue of seconds (measured at 10,000 msgs/s offered to
  1,000 channels: p50 of accepted sends 0.5 to 1.4 s over bounds of 0.1 to
  0.5 s), and a share that only follows the lateness settles past the
  bound (p50 1.5 s with a bound of 0.25 s); see ``bench/RESULTS.md``.
- Only a node that holds :data:`SHED_FLOOR` sends or more sheds: with
  fewer, its sends are not what keeps the loop late (a connect storm, a
  starved machine), and refusing them would not help it.
- A channel's ``retry_after`` is how long it takes to send what it holds at
  its rate (at least a second, at most :data:`MAX_RETRY_AFTER`); a node's is
  a second: its sends spread over many channels.
- The refusal and its message are a pure function (:func:`admit`), as the
  other decisions of the runtime are: of the counts, and of the share the
  :class:`Shedder` refuses where it picked this send. Which sends the
  shedder is asked about (past the floor, not a kept message's resend,
  not one a count already refuses) is the node's to say.
"""

from __future__ import annotations

import math
from typing import Final

from .errors import Overloaded
from .lag import LoopLag

__all__ = ["MAX_RETRY_AFTER", "NODE_RETRY_AFTER", "SHED_FLOOR", "SHED_GAIN", "Shedder", "admit"]

NODE_RETRY_AFTER: Final = 1  # seconds
MAX_RETRY_AFTER: Final = 60  # seconds
SHED_GAIN: Final = 1.0  # a second, for each bound the loop is behind past (or short of) it
SHED_FLOOR: Final = 100  # sends in flight below which a late loop is not the sends' doing


def admit(
    *,
    node_id: str,
    channel_id: str,
    idempotency_key: str,
    node_sends: int,
    node_limit: int,
    channel_sends: int,
    channel_limit: int,
    channel_rate: float,
    loop_shed: float = 0.0,
    loop_bound: float = 0.0,
) -> None:
    """Refuse a send that would take the node or the channel past its bound.

    Args:
        node_id: for the message.
        channel_id: the channel the send is for.
        idempotency_key: the send's key, carried by the error.
        node_sends: sends the node holds now.
        node_limit: the most it may hold.
        channel_sends: sends the channel holds now.
        channel_limit: the most it may hold.
        channel_rate: the channel's messages per second (its limiter's).
        loop_shed: the share of new sends the node refuses while its loop
            runs behind, where the :class:`Shedder` picked this send to be one
            of them; else 0.
        loop_bound: ``[node] max_loop_lag``, for the message.

    Raises:
        Overloaded: a bound is reached; nothing was queued.
    """
    # The error is made by a function of its own and raised where it is made:
    # bound to a local of this frame it would hold the traceback that holds the
    # frame, a cycle only the collector frees, and a node that sheds thousands
    # of sends a second would make its collector shed them.
    if channel_sends >= channel_limit:
        wait = channel_sends / channel_rate if channel_rate > 0 else MAX_RETRY_AFTER
        retry_after = min(MAX_RETRY_AFTER, max(1, math.ceil(wait)))
        raise _overloaded(
            f"channel {channel_id!r} already holds {channel_sends} sends, its bound "
            f"([node] max_channel_sends = {channel_limit}); nothing was queued: retry "
            f"after {retry_after} s, or slow down",
            (channel_id, idempotency_key),
            ("channel", channel_limit, retry_after),
        )
    if node_sends >= node_limit:
        raise _overloaded(
            f"node {node_id!r} already holds {node_sends} sends, its bound "
            f"([node] max_sends_in_flight = {node_limit}); nothing was queued: retry "
            f"after {NODE_RETRY_AFTER} s, or send through another node",
            (channel_id, idempotency_key),
            ("node", node_limit, NODE_RETRY_AFTER),
        )
    if loop_shed:
        raise _overloaded(
            f"node {node_id!r} has run more than its bound behind ([node] max_loop_lag = "
            f"{loop_bound:g} s): it has more work than it can run, and refuses "
            f"{math.ceil(loop_shed * 100)}% of new sends until it catches up; nothing was "
            f"queued: retry after {NODE_RETRY_AFTER} s, or send through another node",
            (channel_id, idempotency_key),
            ("loop", 0, NODE_RETRY_AFTER),
        )


class Shedder:
    """Which new sends a node whose loop runs behind refuses.

    The share it refuses is the larger of two: ``1 - bound / behind`` while
    the loop is behind, which answers at once, and a share that grows while
    the loop is behind and shrinks while it is not (:data:`SHED_GAIN` a
    second for each bound past or short of it, over the time between two
    readings, counted as a second at most), which keeps refusing what the
    node cannot run until the lateness is back at the bound. Refusals are
    spread evenly over the sends (a share of a half refuses every second one).
    It takes the probe's readings as its listener (the probe has one).

    Args:
        lag: the node's probe of its loop.
        bound: ``[node] max_loop_lag``, seconds; 0: refuse none.
    """

    __slots__ = ("_credit", "_held", "_updated", "bound", "lag", "share")

    def __init__(self, lag: LoopLag, bound: float) -> None:
        self.lag = lag
        self.bound = bound
        self.share = 0.0  # of new sends refused
        self._held = 0.0  # the share that lasts, grown or shrunk at each reading
        self._updated = -math.inf  # the reading before
        self._credit = 0.0  # refusals owed, in sends: one is due at 1
        if bound:
            if lag.listener is not None:
                raise ValueError(f"{lag!r} already has a listener")
            lag.listener = self._reading

    def __repr__(self) -> str:
        return f"<Shedder bound={self.bound:g}s share={self.share:.2f}>"

    def refuses(self) -> float:
        """The share of sends refused, where the send arriving now is one of them; else 0."""
        share = self.share
        if not share:
            return 0.0
        credit = self._credit + share
        if credit < 1.0:
            self._credit = credit
            return 0.0
        self._credit = credit - 1.0
        return share

    def _reading(self, now: float) -> None:
        """The probe took a reading at ``now``: the share from here to the next."""
        bound = self.bound
        behind = self.lag.held()
        elapsed = min(now - self._updated, 1.0)  # (the first reading: a second)
        self._updated = now
        held = self._held + SHED_GAIN * elapsed * (behind - bound) / bound
        self._held = held = min(1.0, max(0.0, held))
        self.share = max(held, 1.0 - bound / behind) if behind > bound else held
        if not self.share:
            self._credit = 0.0


def _overloaded(message: str, send: tuple[str, str], bound: tuple[str, int, int]) -> Overloaded:
    """The refusal: ``send`` is (channel, key); ``bound`` (scope, limit, retry after)."""
    channel_id, idempotency_key = send
    error = Overloaded(message, channel_id=channel_id, idempotency_key=idempotency_key)
    error.scope, error.limit, error.retry_after = bound
    return error
