"""ChannelActor against a scripted fake provider, in virtual time.

Fault matrices: connect failures of every class, drops and liveness
timeouts, 429 storms, disconnects mid-send, permanent and fatal send
errors, and crashes of the actor itself under a supervisor.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from actors import (
    ActorState,
    ChannelFailed,
    ChannelUnavailable,
    ExponentialBackoff,
    SendFailed,
    open_actor_system,
)
from actors.channel import (
    CONNECTS_IN_FLIGHT,
    ChannelActor,
    ChannelMemory,
    ChannelRef,
    ChannelSettings,
    ChannelStateChanged,
    ChannelStatus,
    MemoryInboundSink,
    Tenure,
)
from actors.ratelimit import KeyedLimiterState
from providers.base import (
    UNLIMITED,
    AuthenticationFailed,
    BadRecipient,
    Banned,
    ChannelConfig,
    DeliveryReceipt,
    FatalError,
    InboundMessage,
    MessageTooLong,
    OutboundMessage,
    PlatformLimits,
    RateLimited,
    RateLimitScope,
    ReceiptStatus,
    SessionState,
    TransientError,
)
from providers.testing import FakeConnection, FakeProvider, SendDelay
from supervisors import ChildSpec, open_supervisor
from tests.support import CEILING

GENEROUS = PlatformLimits(
    per_channel_rate=1000.0,
    per_channel_burst=1000,
    per_peer_rate=1000.0,
    per_peer_burst=1000,
    max_text_length=100,
)


class MaxJitter(random.Random):
    """Full jitter at its ceiling, so backoff delays are exact: 1, 2, 4, 8, ..."""

    def uniform(self, a: float, b: float) -> float:
        return b


def settings(**overrides: Any) -> ChannelSettings:
    base: dict[str, Any] = {
        "reconnect": ExponentialBackoff(base=1.0, cap=8.0, factor=2.0),
        "reset_after": 60.0,
        "send_backoff": ExponentialBackoff(base=1.0, cap=1.0),
    }
    base.update(overrides)
    return ChannelSettings(**base)


def out(text: str = "hi", peer: str = "p1", key: str = "k1") -> OutboundMessage:
    return OutboundMessage(peer=peer, idempotency_key=key, text=text)


def inbound(msg_id: str, text: str = "hello") -> InboundMessage:
    return InboundMessage(
        channel_id="ch", platform_message_id=msg_id, peer="u1", sender="u1", text=text
    )


@asynccontextmanager
async def open_channel(
    provider: FakeProvider,
    *,
    channel_settings: ChannelSettings | None = None,
    sink: MemoryInboundSink | None = None,
    tenure: Tenure | None = None,
) -> AsyncIterator[ChannelRef]:
    channel_settings = channel_settings or settings()
    memory = ChannelMemory(provider.limits, channel_settings, rng=MaxJitter())
    memory.tenure = tenure
    config = ChannelConfig(channel_id="ch", provider="fake", credentials={"token": "s3cret"})
    factory, memory = ChannelActor.factory(
        config, provider, settings=channel_settings, sink=sink, memory=memory
    )
    async with open_actor_system() as system:
        async with open_supervisor(
            system, [ChildSpec(id="ch", start=factory)], intensity=10, period=60.0
        ) as sup:
            ref = await sup.whereis_child("ch")
            assert ref is not None
            yield ChannelRef(ref, memory, "ch", provider.name)


# --- connecting ---------------------------------------------------------------------------


async def test_connects_and_publishes_deduplicated_inbound_in_batches(autojump_clock: Any) -> None:
    provider = FakeProvider(limits=GENEROUS)
    sink = MemoryInboundSink()
    with trio.fail_after(CEILING):
        async with open_channel(provider, sink=sink) as channel:
            events = channel.subscribe(accepts=lambda e: not isinstance(e, ChannelStateChanged))
            conn = await provider.wait_connected(1)
            receipt = DeliveryReceipt(
                channel_id="ch", platform_message_id="m9", peer="u1", status=ReceiptStatus.READ
            )
            conn.push(inbound("a"), inbound("b"), inbound("a"), receipt)
            got = [await events.receive() for _ in range(3)]
            assert [getattr(e, "platform_message_id", None) for e in got] == ["a", "b", "m9"]
            await trio.sleep(1.0)  # virtual: one flush interval
            assert [e.platform_message_id for e in sink.events] == ["a", "b", "m9"]
            stats = channel.statistics()
            assert (stats.status, stats.received, stats.duplicates) == (
                ChannelStatus.CONNECTED,
                2,
                1,
            )
            assert "[CONNECTED]" in repr(channel.ref._instance)


@pytest.mark.parametrize(
    ("failure", "waits", "counts_as_failure"),
    [
        (TransientError("network down"), [1.0, 2.0, 4.0], True),
        (RateLimited("slow down", retry_after=7.5), [7.5, 7.5, 7.5], False),
    ],
)
async def test_connect_failures_back_off_or_wait_exactly_retry_after(
    autojump_clock: Any, failure: Exception, waits: list[float], counts_as_failure: bool
) -> None:
    provider = FakeProvider(limits=GENEROUS, connect_script=[failure, failure, failure])
    with trio.fail_after(CEILING):
        async with open_channel(provider) as channel:
            await provider.wait_connected(1)
            times = provider.connect_times
            assert [b - a for a, b in itertools.pairwise(times)] == waits
            stats = channel.statistics()
            assert stats.status is ChannelStatus.CONNECTED
            assert stats.reconnects == 3
            assert stats.rate_limit_waits == (0 if counts_as_failure else 3)


@pytest.mark.parametrize(
    "fatal",
    [AuthenticationFailed("bad token"), Banned("banned"), FatalError("intents missing")],
)
@pytest.mark.parametrize("when", ["connect", "while_connected"])
async def test_fatal_errors_fail_the_channel_and_never_reconnect(
    autojump_clock: Any, fatal: Exception, when: str
) -> None:
    provider = FakeProvider(limits=GENEROUS, connect_script=[fatal] if when == "connect" else [])
    with trio.fail_after(CEILING * 100):
        async with open_channel(provider) as channel:
            failed = channel.subscribe(
                accepts=lambda e: (
                    isinstance(e, ChannelStateChanged) and e.status is ChannelStatus.FAILED
                )
            )
            if when == "while_connected":
                (await provider.wait_connected(1)).fail(fatal)
            if channel.statistics().status is not ChannelStatus.FAILED:
                await failed.receive()
            assert type(fatal).__name__ in (channel.statistics().last_error or "")
            attempts = len(provider.connect_times)
            await trio.sleep(3600.0)  # an hour of virtual time: no hammering
            assert len(provider.connect_times) == attempts
            with pytest.raises(ChannelFailed, match="does not reconnect"):
                await channel.send(out())
            assert channel.ref.state is ActorState.RUNNING  # alive, for inspection


async def test_backoff_resets_only_after_a_stable_connection(autojump_clock: Any) -> None:
    provider = FakeProvider(limits=GENEROUS, connect_script=[TransientError("x")] * 2)
    with trio.fail_after(CEILING * 10):
        async with open_channel(provider) as channel:
            conn = await provider.wait_connected(1)  # after waits of 1 and 2
            await trio.sleep(10.0)  # up for 10 s < reset_after (60 s)
            conn.drop()
            conn = await provider.wait_connected(2)
            assert provider.connect_times[-1] - provider.connect_times[-2] == 10.0 + 4.0
            await trio.sleep(60.0)  # stable now
            conn.drop()
            await provider.wait_connected(3)
            assert provider.connect_times[-1] - provider.connect_times[-2] == 60.0 + 1.0
            assert channel.statistics().reconnects == 4


async def test_a_silent_connection_is_dead_after_the_liveness_timeout(autojump_clock: Any) -> None:
    provider = FakeProvider(limits=GENEROUS)
    with trio.fail_after(CEILING):
        async with open_channel(
            provider, channel_settings=settings(liveness_timeout=30.0)
        ) as channel:
            conn = await provider.wait_connected(1)
            await trio.sleep(20.0)
            conn.push(inbound("keepalive-ish"))  # activity resets the clock
            await provider.wait_connected(2)
            # dead at 20 + 30 s, reconnect after the first backoff step (1 s)
            assert provider.connect_times[1] - provider.connect_times[0] == 51.0
            assert "liveness timeout" in (channel.statistics().last_error or "")


async def test_states_are_published_and_shown_in_repr(autojump_clock: Any) -> None:
    provider = FakeProvider(
        limits=GENEROUS, connect_script=[TransientError("a"), TransientError("b")]
    )
    with trio.fail_after(CEILING):
        async with open_channel(provider) as channel:
            events = channel.subscribe(accepts=lambda e: isinstance(e, ChannelStateChanged))
            await provider.wait_connected(1)
            seen = []
            while True:
                event = await events.receive()
                seen.append((event.status, event.attempt, event.delay))
                if event.status is ChannelStatus.CONNECTED:
                    break
            # subscribed after the first CONNECTING; the rest in order
            assert seen[-4:] == [
                (ChannelStatus.CONNECTING, 1, None),
                (ChannelStatus.BACKING_OFF, 2, 2.0),
                (ChannelStatus.CONNECTING, 2, None),
                (ChannelStatus.CONNECTED, 2, None),
            ]


# --- sending ---------------------------------------------------------------------------------


async def test_send_returns_the_platform_receipt(autojump_clock: Any) -> None:
    provider = FakeProvider(limits=GENEROUS)
    with trio.fail_after(CEILING):
        async with open_channel(provider) as channel:
            result = await channel.send(out())
            assert result.peer == "p1" and result.platform_message_id == "m1"
            assert channel.statistics().sent == 1


async def test_per_peer_and_per_channel_limits_space_the_sends(autojump_clock: Any) -> None:
    limits = PlatformLimits(
        per_channel_rate=2.0,
        per_channel_burst=2,
        per_peer_rate=1.0,
        per_peer_burst=1,
        max_text_length=100,
    )
    provider = FakeProvider(limits=limits)
    with trio.fail_after(CEILING):
        async with open_channel(provider) as channel:
            await provider.wait_connected(1)
            for i, peer in enumerate(["a", "a", "b", "c", "a"]):
                await channel.send(out(peer=peer, key=f"k{i}"))
            times = [t for t, _ in provider.sent]
            # a@0; a again waits for its peer bucket (1/s) → 1; b takes the
            # channel bucket's second token (2/s, burst 2) → 1; c waits for the
            # channel → 1.5; a waits for both → 2
            assert times == pytest.approx([0.0, 1.0, 1.0, 1.5, 2.0], abs=1e-5), times
            assert channel.statistics().rate_limit_waits >= 3


async def test_a_429_storm_waits_exactly_and_is_not_a_failure(autojump_clock: Any) -> None:
    storm = [RateLimited("429", retry_after=5.0)] * 3
    peer_limit = RateLimited("pair limit", retry_after=6.0, scope=RateLimitScope.PEER, peer="p1")
    provider = FakeProvider(limits=GENEROUS, send_script=[*storm, peer_limit])
    with trio.fail_after(CEILING):
        async with open_channel(provider) as channel:
            await provider.wait_connected(1)
            await channel.send(out())
            attempts = [t for t, _ in provider.send_attempts]
            assert attempts == pytest.approx([0.0, 5.0, 10.0, 15.0, 21.0], abs=1e-5)
            stats = channel.statistics()
            assert (stats.send_failures, stats.rate_limit_waits, stats.dead_letters) == (0, 4, 0)


@pytest.mark.parametrize("said", [math.inf, math.nan, -3.0, 10**400, "soon"])
async def test_a_429_whose_wait_is_unreadable_or_negative_still_lets_the_send_go(
    autojump_clock: Any, said: Any
) -> None:
    # A platform's answer may say anything: an infinite or NaN wait paused the
    # channel's sends for good (pause_until(inf)), 10**400 raised OverflowError.
    from providers.base import UNREADABLE_RETRY_AFTER

    provider = FakeProvider(limits=GENEROUS, send_script=[RateLimited("429", retry_after=said)])
    with trio.fail_after(CEILING):
        async with open_channel(provider) as channel:
            await provider.wait_connected(1)
            await channel.send(out())
    attempts = [t for t, _ in provider.send_attempts]
    wait = 0.0 if said == -3.0 else UNREADABLE_RETRY_AFTER
    assert attempts == pytest.approx([0.0, wait], abs=1e-5)


async def test_limits_off_sends_make_no_limiter_and_a_429_still_waits(
    autojump_clock: Any,
) -> None:
    # Limits off, a channel reads the limiter every such channel shares; the
    # platform's 429 gives it one of its own, which holds the next sends.
    provider = FakeProvider(
        limits=UNLIMITED_LIMITS, send_script=[None] * 20 + [RateLimited("429", retry_after=5.0)]
    )
    with trio.fail_after(CEILING):
        async with open_channel(provider) as channel:
            await provider.wait_connected(1)
            memory = channel.memory
            shared = memory.limiter
            for i in range(20):
                await channel.send(out(key=f"k{i}", peer=f"p{i}"))
            assert not memory.limiter_made and memory.limiter is shared
            await channel.send(out(key="paused", peer="p-late"))
            assert memory.limiter_made and memory.limiter is not shared
            assert shared.untouched  # other channels are not held
            attempts = [t for t, m in provider.send_attempts if m.idempotency_key == "paused"]
            assert attempts == pytest.approx([0.0, 5.0], abs=1e-5)


async def test_disconnect_mid_send_retries_on_the_new_connection(autojump_clock: Any) -> None:
    provider = FakeProvider(limits=GENEROUS, send_script=[TransientError("connection reset")])
    with trio.fail_after(CEILING):
        async with open_channel(provider) as channel:
            first = await provider.wait_connected(1)

            async def break_link() -> None:
                first.drop()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(break_link)
                result = await channel.send(out(key="same-key"))
            assert result.platform_message_id == "m1"
            keys = [m.idempotency_key for _, m in provider.send_attempts]
            assert keys == ["same-key", "same-key"]  # the retry reuses the key
            assert len(provider.connections) == 2


@pytest.mark.parametrize(
    ("error", "raised"),
    [
        (BadRecipient("no such chat", peer="p1"), BadRecipient),
        (TransientError("503"), SendFailed),
    ],
)
async def test_failures_go_to_the_dead_letter_queue_and_replay(
    autojump_clock: Any, error: Exception, raised: type[Exception]
) -> None:
    attempts = 1 if raised is BadRecipient else 3
    provider = FakeProvider(limits=GENEROUS, send_script=[error] * attempts)
    with trio.fail_after(CEILING):
        async with open_channel(provider, channel_settings=settings(send_attempts=3)) as channel:
            await provider.wait_connected(1)
            with pytest.raises(raised):
                await channel.send(out(key="dl-1"))
            [letter] = await channel.dead_letters()
            assert letter.message.idempotency_key == "dl-1"
            assert letter.error_type == type(error).__name__
            assert letter.attempts == attempts
            assert await channel.replay_dead_letters() == 1
            await trio.sleep(5.0)
            assert await channel.dead_letters() == []
            assert [m.idempotency_key for _, m in provider.sent][-1] == "dl-1"


async def test_a_replayed_letter_refused_before_sending_stays_a_letter(
    autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # A kept message refused before sending is a dead letter (MessageTooLong);
    # replayed, the channel refuses it again as it is taken. Nobody waits for
    # a replay: the refusal went nowhere, and the letter, taken off the queue
    # durably, was gone without a word.
    provider = FakeProvider(limits=GENEROUS)
    with trio.fail_after(CEILING):
        async with open_channel(provider) as channel:
            await provider.wait_connected(1)
            with pytest.raises(MessageTooLong):
                await channel.perform(out(text="x" * 101, key="long"), keep_refused=True)
            [letter] = await channel.dead_letters()
            assert letter.error_type == "MessageTooLong"
            assert await channel.replay_dead_letters() == 1
            await trio.testing.wait_all_tasks_blocked()  # (refused as it is taken)
            [again] = await channel.dead_letters()
            assert again.message == letter.message
            assert again.error_type == "MessageTooLong"
            assert provider.send_attempts == []


DOWN_WAIT = 20.0  # connect_wait of letters_and_no_link's channel


@asynccontextmanager
async def letters_and_no_link(
    *messages: OutboundMessage,
) -> AsyncIterator[tuple[FakeProvider, ChannelRef]]:
    """``(platform, channel)``: each of ``messages`` refused by the platform (a dead
    letter each), then the link dropped for good; a send waits ``DOWN_WAIT``."""
    provider = FakeProvider(
        limits=GENEROUS,
        send_script=[BadRecipient("refused", peer=message.peer) for message in messages],
        connect_script=[None] + [TransientError("down")] * 100,
    )
    with trio.fail_after(CEILING * 10):
        async with open_channel(
            provider, channel_settings=settings(connect_wait=DOWN_WAIT)
        ) as channel:
            link = await provider.wait_connected(1)
            for message in messages:
                with pytest.raises(BadRecipient):
                    await channel.send(message)
            link.drop()
            await trio.testing.wait_all_tasks_blocked()
            assert channel.statistics().status is not ChannelStatus.CONNECTED
            yield provider, channel


async def test_a_replayed_letter_that_finds_no_connection_stays_a_letter(
    autojump_clock: Any,
) -> None:
    # Replayed while the platform is down: the send waits connect_wait for a
    # connection and gives up (ChannelUnavailable, which is no dead letter for
    # a caller who hears it). Nobody hears a replay's: it is a letter again.
    async with letters_and_no_link(out(key="down")) as (provider, channel):
        assert await channel.replay_dead_letters() == 1
        await trio.sleep(DOWN_WAIT + 1.0)  # (virtual) its wait for a connection runs out
        [again] = await channel.dead_letters()
        assert (again.message.idempotency_key, again.error_type) == ("down", "ChannelUnavailable")
        assert len(provider.send_attempts) == 1


async def test_a_failed_channel_refuses_a_replay_and_keeps_its_letters(autojump_clock: Any) -> None:
    # Each letter would be refused as it went (ChannelFailed), nobody hearing it.
    provider = FakeProvider(
        limits=GENEROUS,
        send_script=[BadRecipient("no such chat", peer="p1"), AuthenticationFailed("revoked")],
    )
    with trio.fail_after(CEILING):
        async with open_channel(provider) as channel:
            await provider.wait_connected(1)
            with pytest.raises(BadRecipient):
                await channel.send(out(key="kept"))
            with pytest.raises(ChannelFailed):
                await channel.send(out(key="fails-it"))
            before = await channel.dead_letters()
            with pytest.raises(ChannelFailed, match="restart it before replaying"):
                await channel.replay_dead_letters()
            assert await channel.dead_letters() == before
            assert [m.idempotency_key for _, m in provider.send_attempts] == ["kept", "fails-it"]


async def test_too_long_text_is_refused_before_sending(autojump_clock: Any) -> None:
    provider = FakeProvider(limits=GENEROUS)
    with trio.fail_after(CEILING):
        async with open_channel(provider) as channel:
            with pytest.raises(MessageTooLong, match="101 characters exceeds fake's limit of 100"):
                await channel.send(out(text="x" * 101))
            assert provider.send_attempts == []


async def test_fatal_error_while_sending_fails_the_channel(autojump_clock: Any) -> None:
    provider = FakeProvider(limits=GENEROUS, send_script=[AuthenticationFailed("token revoked")])
    with trio.fail_after(CEILING * 100):
        async with open_channel(provider) as channel:
            with pytest.raises(ChannelFailed, match="token revoked"):
                await channel.send(out())
            assert channel.statistics().status is ChannelStatus.FAILED
            # the connection task stops too: the link is closed and never reopened
            await trio.sleep(3600.0)
            assert provider.current.closed
            assert len(provider.connect_times) == 1


async def test_send_waits_for_a_connection_then_gives_up_clearly(autojump_clock: Any) -> None:
    provider = FakeProvider(limits=GENEROUS, connect_script=[TransientError("down")] * 100)
    with trio.fail_after(CEILING * 10):
        async with open_channel(provider, channel_settings=settings(connect_wait=20.0)) as channel:
            with pytest.raises(ChannelUnavailable, match=r"did not connect within 20\.0 s"):
                await channel.send(out())
            assert trio.current_time() == 20.0


async def test_circuit_breaker_opens_after_repeated_send_failures(autojump_clock: Any) -> None:
    failures = [TransientError("500")] * 4
    provider = FakeProvider(limits=GENEROUS, send_script=[*failures, SendDelay(0)])
    chosen = settings(send_attempts=10, breaker_threshold=4, breaker_reset=30.0)
    with trio.fail_after(CEILING):
        async with open_channel(provider, channel_settings=chosen) as channel:
            await provider.wait_connected(1)
            await channel.send(out())
            times = [t for t, _ in provider.send_attempts]
            # four failures 1 s apart open the breaker at t=3; the trial waits 30 s
            assert times == [0.0, 1.0, 2.0, 3.0, 33.0]


# --- many channels connecting at once ----------------------------------------------------------


class SlowHandshakes(FakeProvider):
    """Handshakes that last until the test opens the gate; counts those in flight."""

    def __init__(self, name: str) -> None:
        super().__init__(limits=GENEROUS)
        self.name = name
        self.in_flight = 0
        self.most_in_flight = 0
        self.gate = trio.Event()

    @asynccontextmanager
    async def open_connection(
        self, config: ChannelConfig, session: SessionState | None = None
    ) -> AsyncIterator[FakeConnection]:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await self.gate.wait()
        finally:
            self.in_flight -= 1
        async with super().open_connection(config, session) as conn:
            yield conn


async def test_handshakes_in_flight_are_bounded_per_provider(autojump_clock: Any) -> None:
    slow, quick = SlowHandshakes("slow"), SlowHandshakes("quick")
    quick.gate.set()
    count = CONNECTS_IN_FLIGHT + 20

    def spec(provider: FakeProvider, i: int) -> ChildSpec:
        config = ChannelConfig(channel_id=f"{provider.name}-{i}", provider=provider.name)
        factory, _ = ChannelActor.factory(config, provider, settings=settings())
        return ChildSpec(id=config.channel_id, start=factory)

    with trio.fail_after(CEILING):
        async with open_actor_system() as system, open_supervisor(system, []) as sup:
            for i in range(count):
                await sup.start_child(spec(slow, i))
            await trio.testing.wait_all_tasks_blocked()
            assert slow.in_flight == CONNECTS_IN_FLIGHT  # the others wait their turn
            # the gate is per provider: a stuck platform holds up only its own channels
            await sup.start_child(spec(quick, 0))
            await quick.wait_connected(1)
            slow.gate.set()
            await slow.wait_connected(count)
            assert slow.most_in_flight == CONNECTS_IN_FLIGHT
            assert slow.connect_script == deque()  # every channel connected at its first try


# --- crashes of the actor itself ---------------------------------------------------------------


async def test_a_crash_keeps_budgets_backoff_and_session(autojump_clock: Any) -> None:
    limits = PlatformLimits(
        per_channel_rate=100.0,
        per_channel_burst=100,
        per_peer_rate=0.1,
        per_peer_burst=1,
        max_text_length=100,
    )
    provider = FakeProvider(limits=limits)
    with trio.fail_after(CEILING * 10):
        async with open_channel(provider) as channel:
            conn = await provider.wait_connected(1)
            conn.push(inbound("before-crash"))
            await channel.send(out(peer="p1", key="one"))  # uses p1's only token
            channel.ref.tell(object())  # an unknown message crashes the actor
            await provider.wait_connected(2)
            assert channel.ref.incarnation == 2
            assert provider.sessions_seen[-1] == SessionState(
                provider="fake", data={"connection": 1}
            )
            await channel.send(out(peer="p1", key="two"))
            # the restart did not refill p1's bucket: 10 s between the two sends
            # (the limiter admits up to 1 µs early, by design)
            assert [t for t, _ in provider.sent] == pytest.approx([0.0, 10.0], abs=1e-5)
            provider.current.push(inbound("before-crash"))  # replayed by the platform
            await trio.sleep(1.0)
            assert channel.statistics().duplicates == 1
            assert channel.statistics().restarts == 1


async def test_a_connect_builds_no_log_adapter_when_info_is_off(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Ten thousand channels connect in a storm: with INFO off, no adapter is
    # made for a line that is not logged.
    from actors.channel import actor as channel_actor

    made: list[object] = []

    class Counted(channel_actor._ChannelLog):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            made.append(self)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(channel_actor, "_ChannelLog", Counted)
    caplog.set_level(logging.WARNING, logger="switchboard.channels")
    provider = FakeProvider(limits=GENEROUS)
    with trio.fail_after(CEILING):
        async with open_channel(provider) as channel:
            await provider.wait_connected(1)
            assert channel.statistics().status is ChannelStatus.CONNECTED
            assert made == []
    caplog.set_level(logging.INFO, logger="switchboard.channels")
    with trio.fail_after(CEILING):
        async with open_channel(provider) as channel:
            await provider.wait_connected(2)
            assert "ch [CONNECTED]>: connected" in caplog.text
    assert made


async def test_a_connect_makes_no_limiter_or_breaker_until_the_first_send(
    autojump_clock: Any,
) -> None:
    provider = FakeProvider(limits=GENEROUS)
    with trio.fail_after(CEILING):
        async with open_channel(provider) as channel:
            await provider.wait_connected(1)
            memory = channel.memory
            assert not memory.limiter_made and not memory.breaker_made
            await channel.send(out())
            assert memory.limiter_made and memory.breaker_made
            assert memory.breaker.statistics().successes == 1


UNLIMITED_LIMITS = PlatformLimits(
    per_channel_rate=UNLIMITED,
    per_channel_burst=1,
    per_peer_rate=UNLIMITED,
    per_peer_burst=1,
    max_text_length=100,
)


@pytest.mark.parametrize("limits", [GENEROUS, UNLIMITED_LIMITS], ids=["limited", "unlimited"])
def test_a_checkpoint_of_parts_not_made_is_that_of_fresh_ones(limits: PlatformLimits) -> None:
    from actors.channel.durable import export_state

    lazy = ChannelMemory(limits, settings())
    exported = export_state(lazy, now=5.0, clock_offset=1000.0)
    assert not lazy.limiter_made and not lazy.breaker_made
    made = ChannelMemory(limits, settings())
    assert made.limiter is not None and made.breaker is not None
    assert export_state(made, now=5.0, clock_offset=1000.0) == exported


def test_limits_off_a_used_limiter_checkpoints_as_a_fresh_one_until_a_pause() -> None:
    # Limits off, a limiter that admitted sends keeps nothing: its checkpoint
    # is the fresh state (written without exporting it); a platform's pause
    # is kept, moved to the wall clock, until it is over.
    from actors.channel.durable import export_state

    fresh = export_state(ChannelMemory(UNLIMITED_LIMITS, settings()), now=5.0, clock_offset=1000.0)
    used = ChannelMemory(UNLIMITED_LIMITS, settings())
    assert all(used.limiter.try_acquire(5.0, key=f"peer-{i}") for i in range(100))
    assert used.limiter.untouched
    assert export_state(used, now=5.0, clock_offset=1000.0) == fresh
    shared = used.limiter
    assert not used.limiter_made  # limits off: the limiter every such channel reads
    with pytest.raises(RuntimeError, match="cannot pause"):
        shared.pause_until(7.0)
    used.own_limiter().pause_until(7.0, key="peer-1")
    assert used.limiter_made and used.limiter is not shared
    assert shared.untouched  # the others' is not paused
    assert not used.limiter.untouched
    paused = export_state(used, now=5.0, clock_offset=1000.0)
    assert paused != fresh
    keyed = paused.limiter.parts[1]
    assert isinstance(keyed, KeyedLimiterState)
    assert [key for key, _ in keyed.buckets] == ["peer-1"]
    assert keyed.buckets[0][1].paused_until == pytest.approx(1007.0)
    assert used.limiter.try_acquire(7.0, key="peer-1")  # the pause is over: nothing kept
    assert used.limiter.untouched
    assert export_state(used, now=7.0, clock_offset=1000.0) == fresh
    # A pause of the whole channel (a 429) is kept until it is over, then not.
    used.own_limiter().pause_until(9.0)
    assert export_state(used, now=8.0, clock_offset=1000.0).limiter.paused_until == pytest.approx(
        1009.0
    )  # (moved to the wall clock rounding later)
    assert export_state(used, now=9.5, clock_offset=1000.0) == fresh


def test_limits_off_a_restore_makes_no_limiter_of_the_channel_s_own() -> None:
    # (Found by review.) A restore after a crash pauses a limited channel for
    # its bucket's refill; limits off there is nothing to refill, so its
    # memory keeps reading the shared limiter, as it does after an expired 429.
    from actors.channel.durable import export_state, restore_state

    crashed = ChannelMemory(UNLIMITED_LIMITS, settings())
    crashed.own_limiter().pause_until(6.0)
    state = export_state(crashed, now=7.0, clock_offset=1000.0, clean=False)
    restored = ChannelMemory(UNLIMITED_LIMITS, settings())
    restore_state(restored, state, now=10.0, clock_offset=1000.0)
    assert not restored.limiter_made
    limited = ChannelMemory(GENEROUS, settings())
    restore_state(limited, attrs.evolve(state, limiter=None), now=10.0, clock_offset=1000.0)
    assert limited.limiter_made and limited.limiter.delay(10.0, key="p") > 0
