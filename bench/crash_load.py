"""The crash scenario's outbound load: paced sends, retried until acknowledged.

Design:
- Open loop: message ``i`` is due at ``start + i / rate`` whatever happened
  to the ones before it, so a crashed channel does not slow the offered
  load down (a closed loop would hide the crash by waiting for it). The
  pacer wakes every :data:`TICK` and starts one task per message due;
  messages go round-robin over the channels, to rotating peers.
- Each message is sent through the public API the caller hands in (the
  node's ``send``) and retried, with the same idempotency key, when the
  failure says the message may not have been taken: the actor crashed or
  was killed under it, it did not answer in time, the channel was between
  connections, or its retries ran out. That is at-least-once delivery as a
  product would build it; the platform (emulator) drops the duplicates by
  key, and counts them. Refusals that retrying cannot fix (a permanent send
  error, a failed channel, a draining node) are counted, not retried: such
  a message is lost, and the scenario's loss figure shows it.
- A message's latency runs from the tick that was meant to start it to the
  send that finally returned, retries included: what the product waits.
  Measuring from the tick, not from ``i / rate`` inside it, leaves out the
  pacer's own granularity but keeps any lateness of the pacer (an
  overloaded process starts messages late, and that counts).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import trio

from actors import (
    ActorCrashed,
    ActorDead,
    AskTimeout,
    ChannelFailed,
    ChannelUnavailable,
    MailboxFull,
    SendFailed,
)
from providers.base import OutboundMessage, PermanentSendError
from runtime import NodeDraining, UnknownChannel

__all__ = ["RETRYABLE", "LoadGenerator"]

TICK: Final = 0.01  # seconds between pacer wake-ups
PEERS: Final = 50  # distinct recipients per channel
RETRY_FIRST: Final = 0.01  # seconds before the first retry, doubling ...
RETRY_CAP: Final = 0.5  # ... up to this
MAX_ATTEMPTS: Final = 60  # tries per message (about 28 s of retrying) before giving up

#: The failures after which a message may or may not have been taken: retry.
RETRYABLE: Final = (
    ActorCrashed,
    ActorDead,
    AskTimeout,
    ChannelUnavailable,
    SendFailed,
    MailboxFull,
)
#: The refusals retrying cannot fix: count them.
REFUSED: Final = (PermanentSendError, ChannelFailed, NodeDraining, UnknownChannel)

Send = Callable[[str, OutboundMessage], Awaitable[Any]]


class LoadGenerator:
    """Offers ``rate`` messages per second over ``channels`` through ``send``.

    Args:
        send: sends one message on a channel, returning once it was accepted.
        channels: the channel ids, used round-robin.
        rate: messages per second, all channels together.

    Attributes:
        keys: the idempotency key of every message offered, in order.
        issued_at: seconds from the start to when each acknowledged message
            was meant to start.
        latencies: seconds from then to acknowledged, same order as ``issued_at``.
        retries: retries, by the failure that caused them.
        refused: messages given up on at once, by the refusal.
        abandoned: messages still failing after :data:`MAX_ATTEMPTS` tries.
    """

    def __init__(self, send: Send, channels: Sequence[str], rate: float) -> None:
        if not channels:
            raise ValueError("the load needs at least one channel")
        if not rate > 0:
            raise ValueError(f"rate must be > 0 messages per second, got {rate}")
        self._send = send
        self.channels = list(channels)
        self.rate = rate
        self.keys: list[str] = []
        self.issued_at: list[float] = []
        self.latencies: list[float] = []
        self.retries: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self.abandoned = 0
        self.start = 0.0

    def __repr__(self) -> str:
        return (
            f"<LoadGenerator {self.rate:g}/s over {len(self.channels)} channels "
            f"offered={self.offered} acked={self.acked} in_flight={self.in_flight}>"
        )

    @property
    def offered(self) -> int:
        """Messages started so far."""
        return len(self.keys)

    @property
    def acked(self) -> int:
        """Messages whose send returned."""
        return len(self.latencies)

    @property
    def in_flight(self) -> int:
        """Messages started and not yet acknowledged, refused or abandoned."""
        return self.offered - self.acked - self.abandoned - sum(self.refused.values())

    async def offer(self, duration: float, nursery: trio.Nursery) -> None:
        """Start messages at the rate for ``duration`` seconds, their sends in ``nursery``.

        Returns when the last message has been started; the sends go on in
        ``nursery``, which the caller waits for (or cancels).
        """
        self.start = trio.current_time()
        total = math.floor(self.rate * duration)
        ticks = math.ceil(duration / TICK)
        for tick in range(1, ticks + 1):
            meant = self.start + tick * TICK
            await trio.sleep_until(meant)
            due = min(total, math.floor(self.rate * tick * TICK))
            for seq in range(self.offered, due):
                self._start_one(seq, meant, nursery)

    def _start_one(self, seq: int, meant: float, nursery: trio.Nursery) -> None:
        channel = self.channels[seq % len(self.channels)]
        key = f"{channel}/{seq}"
        self.keys.append(key)
        message = OutboundMessage(
            peer=f"user-{seq // len(self.channels) % PEERS}",
            idempotency_key=key,
            text=f"crash bench message {seq}",
        )
        nursery.start_soon(self._deliver, channel, message, meant)

    async def _deliver(self, channel: str, message: OutboundMessage, meant: float) -> None:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                await self._send(channel, message)
            except RETRYABLE as exc:
                if attempt == MAX_ATTEMPTS:
                    break
                self.retries[type(exc).__name__] += 1
                await trio.sleep(min(RETRY_CAP, RETRY_FIRST * 2.0 ** (attempt - 1)))
                continue
            except REFUSED as exc:
                self.refused[type(exc).__name__] += 1
                return
            self.issued_at.append(meant - self.start)
            self.latencies.append(trio.current_time() - meant)
            return
        self.abandoned += 1
