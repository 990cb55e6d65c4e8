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
- A channel's ``retry_after`` is how long it takes to send what it holds at
  its rate (at least a second, at most :data:`MAX_RETRY_AFTER`); a node's is
  a second: its sends spread over many channels.
- The decision is a pure function of the counts (:func:`admit`), as the
  other decisions of the runtime are; the node only counts.
"""

from __future__ import annotations

import math
from typing import Final

from .errors import Overloaded

__all__ = ["MAX_RETRY_AFTER", "NODE_RETRY_AFTER", "admit"]

NODE_RETRY_AFTER: Final = 1  # seconds
MAX_RETRY_AFTER: Final = 60  # seconds


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


def _overloaded(message: str, send: tuple[str, str], bound: tuple[str, int, int]) -> Overloaded:
    """The refusal: ``send`` is (channel, key); ``bound`` (scope, limit, retry after)."""
    channel_id, idempotency_key = send
    error = Overloaded(message, channel_id=channel_id, idempotency_key=idempotency_key)
    error.scope, error.limit, error.retry_after = bound
    return error
