"""The chaos scenario's load: sends through the node, user messages into the platforms.

Design:
- Sends are open-loop (message ``i`` is due at ``start + i / rate``
  whatever happened before it), round-robin over the channels that are not
  banned right now, each through ``Node.send`` as a product sends, and
  retried with the same idempotency key for as long as the failure says
  the message may not have been taken or the channel may come back
  (crashed, killed, timed out, unavailable, failed while banned, the node
  or channel overloaded, transient failures past the channel's retries),
  until the run's last moment for sends. A permanent refusal is not
  retried: the node must hold that message as a dead letter. The key is in
  the text too, so every platform's record of what it took names it.
- User messages are injected at the platforms through their control API,
  open-loop at their own rate, round-robin over the channels (Discord
  shows a guild message to every bot in it, so one inject there is owed to
  every Discord channel). Each carries a unique text; what the node owes
  is ``(channel, text)``, and the judge is the node's store.
- Nothing is counted as lost here: the ledgers keep what was offered and
  what each send's last answer was; :mod:`bench.chaos` compares them with
  what the platforms and the store hold once everything settled.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Final

import attrs
import httpx
import trio

from providers.base import OutboundMessage
from runtime import (
    AskTimeout,
    ChannelCrashed,
    ChannelFailed,
    ChannelUnavailable,
    MailboxFull,
    Node,
    NodeStarting,
    Overloaded,
    PermanentSendError,
    SendFailed,
)

from .chaos_platforms import wa_number
from .rig import EmulatorControl

__all__ = ["KEY_PREFIX", "ChaosChannel", "InboundLoad", "SendLoad"]

TICK: Final = 0.02  # seconds between pacer wake-ups
KEY_PREFIX: Final = "chaos-key:"  # a message's key in its text: what the platforms' records name
RETRY_FIRST: Final = 0.05  # seconds before the first retry, doubling ...
RETRY_CAP: Final = 2.0  # ... up to this
SEND_TIMEOUT: Final = 15.0  # seconds one attempt may take
DISCORD_TEXT_CHANNEL: Final = 100000000000000001  # the first text channel the sends use
PEERS_PER_CHANNEL: Final = 5  # Discord text channels, WhatsApp users per channel
DISCORD_INBOUND_CHANNEL: Final = "123"

#: Failures after which the message may not have been taken, or the channel may come back.
RETRYABLE: Final = (
    ChannelCrashed,
    AskTimeout,
    ChannelUnavailable,
    ChannelFailed,
    SendFailed,
    MailboxFull,
    Overloaded,
    NodeStarting,
)


@attrs.frozen(kw_only=True)
class ChaosChannel:
    """One channel of the run: its id, platform, index there and platform token."""

    id: str
    provider: str
    index: int
    token: str

    def peer(self, n: int) -> str:
        """Recipient of this channel's ``n``-th message (WhatsApp: the user who wrote)."""
        if self.provider == "telegram":
            return str(1_000 + n % 97)
        if self.provider == "discord":
            # A text channel of its own (the emulator's send bucket is per text channel).
            return str(
                DISCORD_TEXT_CHANNEL + self.index * PEERS_PER_CHANNEL + n % PEERS_PER_CHANNEL
            )
        if self.provider == "whatsapp":
            return self.wa_user(n)
        return f"user-{n % 97}"

    def wa_user(self, n: int) -> str:
        """A WhatsApp user who writes to this channel (one of a few: the pair limit)."""
        return f"1555{self.index:05d}{n % PEERS_PER_CHANNEL:02d}"


class SendLoad:
    """Sends at ``rate`` per second over the channels, each retried until it settles.

    Attributes:
        offered: channel of every key offered, in order.
        accepted: keys whose send returned (the platform took them).
        permanent: keys the node refused for good (must be dead letters), with the error.
        retries: retries, by the failure that caused them.
        unsettled: keys still failing when the sends had to stop.
        latencies: seconds from due to accepted, per accepted key.
    """

    def __init__(
        self, node: Node, channels: Sequence[ChaosChannel], rate: float, *, banned: set[str]
    ) -> None:
        self.node = node
        self.channels = list(channels)
        self.rate = rate
        self.banned = banned
        self.offered: dict[str, str] = {}
        self.accepted: set[str] = set()
        self.permanent: dict[str, str] = {}
        self.retries: Counter[str] = Counter()
        self.unsettled: set[str] = set()
        self.latencies: list[float] = []
        self.pending: dict[str, str] = {}  # key -> channel, sends not answered yet
        self.stop_at = float("inf")  # trio time after which no attempt starts
        self._next = itertools.count()

    @property
    def in_flight(self) -> int:
        """Sends not answered yet (retries included)."""
        return len(self.pending)

    def __repr__(self) -> str:
        return (
            f"<SendLoad {self.rate:g}/s offered={len(self.offered)} "
            f"accepted={len(self.accepted)} in_flight={self.in_flight}>"
        )

    async def offer(self, duration: float, nursery: trio.Nursery) -> None:
        """Start messages at the rate for ``duration`` seconds; their sends run in ``nursery``."""
        start = trio.current_time()
        total, started = int(self.rate * duration), 0
        while started < total:
            await trio.sleep(TICK)
            due = min(total, int(self.rate * (trio.current_time() - start)))
            for _ in range(due - started):
                self._start_one(nursery)
            started = max(started, due)

    def _start_one(self, nursery: trio.Nursery) -> None:
        seq = next(self._next)
        for step in range(len(self.channels)):
            channel = self.channels[(seq + step) % len(self.channels)]
            if channel.id not in self.banned:
                break
        else:
            return  # every channel banned: nothing to send on
        key = f"k{seq}"
        self.offered[key] = channel.id
        message = OutboundMessage(
            peer=channel.peer(seq // len(self.channels)),
            idempotency_key=key,
            text=f"chaos message {KEY_PREFIX}{key}",
        )
        nursery.start_soon(self._deliver, channel.id, message, trio.current_time())

    async def _deliver(self, channel_id: str, message: OutboundMessage, due: float) -> None:
        key = message.idempotency_key
        assert key is not None
        self.pending[key] = channel_id
        try:
            for attempt in itertools.count():
                if trio.current_time() >= self.stop_at:
                    self.unsettled.add(key)
                    return
                try:
                    await self.node.send(channel_id, message, timeout=SEND_TIMEOUT)
                except PermanentSendError as exc:
                    self.permanent[key] = f"{type(exc).__name__}: {str(exc)[:160]}"
                    return
                except RETRYABLE as exc:
                    self.retries[type(exc).__name__] += 1
                    await trio.sleep(min(RETRY_CAP, RETRY_FIRST * 2.0**attempt))
                    continue
                self.accepted.add(key)
                self.latencies.append(trio.current_time() - due)
                return
        finally:
            del self.pending[key]


class InboundLoad:
    """User messages injected at the platforms: what the node owes its store.

    Attributes:
        owed: ``(channel, text)`` of every message a channel must store.
        failed_injects: injects the platform refused or did not confirm (not owed).
    """

    def __init__(
        self,
        controls: dict[str, EmulatorControl],
        channels: Sequence[ChaosChannel],
        rate: float,
        *,
        banned: set[str],
    ) -> None:
        self.controls = controls
        self.channels = [c for c in channels if c.provider != "discord"]
        self.discord = [c for c in channels if c.provider == "discord"]
        self.rate = rate
        self.banned = banned
        self.owed: set[tuple[str, str]] = set()
        self.failed_injects: Counter[str] = Counter()
        self._numbers = itertools.count()

    def __repr__(self) -> str:
        return f"<InboundLoad {self.rate:g}/s owed={len(self.owed)}>"

    @property
    def injected(self) -> int:
        return len(self.owed)

    async def greet(self, nursery: trio.Nursery) -> None:
        """Every WhatsApp user writes first (opens the window the sends need); owed too.

        The caller waits for ``nursery`` before the sends begin: a send to a user
        whose message has not landed yet is refused for good (131047).
        """
        limit = trio.CapacityLimiter(16)
        for channel in self.channels:
            if channel.provider == "whatsapp":
                for n in range(PEERS_PER_CHANNEL):
                    nursery.start_soon(self._inject_one, channel, limit, n)

    async def offer(self, duration: float) -> None:
        """Inject at the rate for ``duration`` seconds (Discord's share as guild messages)."""
        share = len(self.discord) / max(1, len(self.discord) + len(self.channels))
        # One guild message is owed to every Discord channel: inject its share of events.
        discord_rate = self.rate * share / max(1, len(self.discord))
        plain_rate = self.rate * (1 - share)
        limit = trio.CapacityLimiter(32)
        start = trio.current_time()
        done_plain = done_discord = 0
        rr = itertools.count()
        async with trio.open_nursery() as nursery:
            while (now := trio.current_time()) - start < duration:
                await trio.sleep(TICK)
                elapsed = now - start
                for _ in range(int(plain_rate * elapsed) - done_plain):
                    done_plain += 1
                    channel = self._pick(rr)
                    if channel is not None:
                        nursery.start_soon(self._inject_one, channel, limit)
                if self.discord:
                    for _ in range(int(discord_rate * elapsed) - done_discord):
                        done_discord += 1
                        nursery.start_soon(self._inject_discord, limit)

    def _pick(self, rr: itertools.count[int]) -> ChaosChannel | None:
        for _ in range(len(self.channels)):
            channel = self.channels[next(rr) % len(self.channels)]
            if channel.id not in self.banned:
                return channel
        return None

    async def _inject_one(
        self, channel: ChaosChannel, limit: trio.CapacityLimiter, user: int | None = None
    ) -> None:
        n = next(self._numbers)
        text = f"chaos inbound {n}"
        payload: dict[str, object]
        if channel.provider == "websocket":
            payload = {"id": f"in-{n}", "text": text, "token": channel.token}
        elif channel.provider == "telegram":
            payload = {"chat_id": 42 + n % 7, "text": text, "token": channel.token}
        else:
            payload = {
                "from": channel.wa_user(n if user is None else user),
                "text": text,
                "phone_number_id": wa_number(channel.index),
            }
        await self._inject(channel.provider, payload, [(channel.id, text)], limit)

    async def _inject_discord(self, limit: trio.CapacityLimiter) -> None:
        n = next(self._numbers)
        text = f"chaos inbound {n}"
        payload = {"channel_id": DISCORD_INBOUND_CHANNEL, "content": text}
        await self._inject("discord", payload, [(c.id, text) for c in self.discord], limit)

    async def _inject(
        self,
        provider: str,
        payload: Mapping[str, object],
        owed: list[tuple[str, str]],
        limit: trio.CapacityLimiter,
    ) -> None:
        async with limit:
            # Owed from the moment it is asked for: a platform may deliver before it answers.
            self.owed.update(owed)
            try:
                response = await self.controls[provider].client.post(
                    f"{self.controls[provider].url}/_emulator/inject", json=payload
                )
                refused = response.status_code >= 400 or "error" in response.json()
            except httpx.HTTPError as exc:
                # Unconfirmed (the platform may have taken it): not owed, but said.
                refused, provider = True, f"{provider} ({type(exc).__name__})"
            if refused:
                self.owed.difference_update(owed)
                self.failed_injects[provider] += 1
