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
  bounds its sends by time (``[node] max_loop_lag``): a loop with more work
  than it can run wakes every timer late by about the length of its
  batches, and each accepted send waits through several. A probe reads that
  lateness ten times a second (``runtime.lag``); the mean of the last two
  readings decides (one long batch, or one collection pause, counts half).
- What it decides is a limit of sends in flight (:class:`Shedder`), not a
  share of sends refused. A saturated loop runs a batch of about every send
  it holds, so its lateness is about its sends times what one costs: held
  ``behind`` with ``n`` sends, it runs ``n * bound / behind`` within the
  bound, and the limit drops to that at once. The loop stays behind while
  what it held past the new limit drains, so the limit is cut again only
  once the sends held are back under it, and by half at most (a loop made
  late by something else, a collection, with few sends held, would
  otherwise cut it to the floor); never below :data:`SHED_FLOOR`, never
  up while the loop is behind. While the loop is within its bound the
  limit grows by as much as the lateness says still fits (by
  :data:`LIMIT_GROWTH` while the node holds less than half of it: then its
  sends are not what keeps the loop late), that much a reading at most,
  and is gone once it passes ``[node] max_sends_in_flight``: from the
  floor, about 2.8 s of readings on time. A send past the limit is
  refused, so the node refuses what arrives while it is full, and takes
  sends again as soon as it has room. Designs that refused a share of new
  sends instead were measured and dropped (``bench/RESULTS.md``): refusing all or
  nothing swung between an idle node and a queue of seconds, and a share
  that grew the longer the loop stayed behind refused nearly every send
  for a second at a time, then let in more than the loop could run (at
  14,000 msgs/s offered to 1,000 channels it delivered 4,170-4,570 msgs/s
  against 6,000-6,470 with no bound at all).
- Below :data:`SHED_FLOOR` sends in flight the node never sheds, and a
  late loop starts or cuts no limit: with fewer, its sends are not what
  keeps the loop late (a connect storm, a starved machine, a collection),
  and refusing them would not help it.
- In a cluster a node holds the sends it forwards to their channel's
  owner too, until the owner answers (or, while the owner is gone or the
  channel moves, until the caller's deadline): they count toward its
  bounds, the channel's included, as the owner's count them toward its own.
- A channel's ``retry_after`` (a channel this node runs) is how long it
  takes to send what it holds at its rate (at least a second, at most
  :data:`MAX_RETRY_AFTER`); a node's is a second: its sends spread over many
  channels. So is a remote channel's: its rate is its owner's to know.
- The refusal and its message are a pure function (:func:`admit`), as the
  other decisions of the runtime are: of the counts and the limits. Which
  sends the loop's limit applies to (not a kept message's resend) is the
  node's to say.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final

from .errors import Overloaded
from .lag import LoopLag

__all__ = [
    "LIMIT_GROWTH",
    "MAX_RETRY_AFTER",
    "NODE_RETRY_AFTER",
    "SHED_FLOOR",
    "Shedder",
    "admit",
]

NODE_RETRY_AFTER: Final = 1  # seconds
MAX_RETRY_AFTER: Final = 60  # seconds
SHED_FLOOR: Final = 100  # sends in flight below which a late loop is not the sends' doing
LIMIT_GROWTH: Final = 1.25  # the most the loop's limit grows in a reading


def admit(
    *,
    node_id: str,
    channel_id: str,
    idempotency_key: str,
    node_sends: int,
    node_limit: int,
    channel_sends: int,
    channel_limit: int,
    channel_rate: float | None,
    loop_limit: float = math.inf,
    loop_bound: float = 0.0,
) -> None:
    """Refuse a send that would take the node or the channel past its bound.

    Args:
        node_id: for the message.
        channel_id: the channel the send is for.
        idempotency_key: the send's key, carried by the error.
        node_sends: sends the node holds now.
        node_limit: the most it may hold.
        channel_sends: sends of the channel this node holds now.
        channel_limit: the most it may hold.
        channel_rate: the channel's messages per second (its limiter's);
            ``None`` for a channel another node runs (this node forwards
            its sends, and does not know its rate): a retry after a second.
        loop_limit: the most sends the node holds while its loop runs
            behind (:attr:`Shedder.limit`; ``math.inf``: none).
        loop_bound: ``[node] max_loop_lag``, for the message.

    Raises:
        Overloaded: a bound is reached; nothing was queued.
    """
    # The error is made by a function of its own and raised where it is made:
    # bound to a local of this frame it would hold the traceback that holds the
    # frame, a cycle only the collector frees, and a node that sheds thousands
    # of sends a second would make its collector shed them.
    if channel_sends >= channel_limit and channel_rate is None:
        raise _overloaded(
            f"node {node_id!r} already forwards {channel_sends} sends of channel "
            f"{channel_id!r} to the node that runs it, the channel's bound ([node] "
            f"max_channel_sends = {channel_limit}); nothing was queued: retry after "
            f"{NODE_RETRY_AFTER} s, or slow down",
            (channel_id, idempotency_key),
            ("channel", channel_limit, NODE_RETRY_AFTER),
        )
    if channel_sends >= channel_limit:
        rate = channel_rate or 0.0  # (None was refused above)
        wait = channel_sends / rate if rate > 0 else MAX_RETRY_AFTER
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
    if node_sends >= loop_limit:
        limit = int(loop_limit)
        raise _overloaded(
            f"node {node_id!r} already holds {node_sends} sends, as many as its event loop "
            f"now runs within its bound ([node] max_loop_lag = {loop_bound:g} s); nothing "
            f"was queued: retry after {NODE_RETRY_AFTER} s, or send through another node",
            (channel_id, idempotency_key),
            ("loop", limit, NODE_RETRY_AFTER),
        )


class Shedder:
    """How many sends a node whose loop runs behind holds: its :attr:`limit`.

    At each reading of the probe (it takes them as its listener; the probe
    has one): while the loop has held more than ``bound`` behind and the
    node holds no more than the limit and at least :data:`SHED_FLOOR`
    sends, the limit drops to the sends it holds times ``bound / behind``
    (what its batches run within the bound), by half at most once there is
    a limit, never below the floor and never up; while it is within the
    bound, the limit grows by ``bound / behind`` while the node holds at
    least half of it, else by :data:`LIMIT_GROWTH`, and by that at most, and
    is gone (``math.inf``) once past ``most``.

    Args:
        lag: the node's probe of its loop.
        bound: ``[node] max_loop_lag``, seconds; 0: no limit ever.
        holding: the sends the node holds now.
        most: ``[node] max_sends_in_flight``: a limit past it is no limit.
    """

    __slots__ = ("bound", "holding", "lag", "limit", "most")

    def __init__(self, lag: LoopLag, bound: float, holding: Callable[[], int], most: int) -> None:
        self.lag = lag
        self.bound = bound
        self.holding = holding
        self.most = most
        self.limit: float = math.inf  # sends in flight; math.inf: none
        if bound:
            if lag.listener is not None:
                raise ValueError(f"{lag!r} already has a listener")
            lag.listener = self._reading

    def __repr__(self) -> str:
        return f"<Shedder bound={self.bound:g}s limit={self.limit:g}>"

    def _reading(self, now: float) -> None:
        """The probe took a reading: the limit from here to the next."""
        bound, limit = self.bound, self.limit
        behind = self.lag.held()
        holding = self.holding()
        if behind > bound:
            # Past the limit, what the last cut left out still drains; below the
            # floor, sends are not what keeps the loop late.
            if SHED_FLOOR <= holding <= limit:
                fits = math.floor(holding * bound / behind)
                self.limit = max(SHED_FLOOR, fits, limit // 2 if limit != math.inf else 0)
        elif limit != math.inf:
            # Full, it grows by what the lateness says still fits; with room to
            # spare, the lateness is not its sends'.
            full = behind > 0 and holding * 2 >= limit
            grown = math.ceil(limit * (min(LIMIT_GROWTH, bound / behind) if full else LIMIT_GROWTH))
            self.limit = grown if grown <= self.most else math.inf


def _overloaded(message: str, send: tuple[str, str], bound: tuple[str, int, int]) -> Overloaded:
    """The refusal: ``send`` is (channel, key); ``bound`` (scope, limit, retry after)."""
    channel_id, idempotency_key = send
    error = Overloaded(message, channel_id=channel_id, idempotency_key=idempotency_key)
    error.scope, error.limit, error.retry_after = bound
    return error
