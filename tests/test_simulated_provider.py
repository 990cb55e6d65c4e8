"""The simulated platform, in virtual time: exact delays, failure kinds, determinism."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing

from providers import registry
from providers.base import (
    AuthenticationFailed,
    Banned,
    ChannelConfig,
    Conflict,
    Connection,
    DeliveryReceipt,
    Event,
    InboundMessage,
    OutboundMessage,
    PermanentSendError,
    Provider,
    ProviderError,
    RateLimited,
    ReceiptStatus,
    SendResult,
    TransientError,
)
from providers.simulated import (
    Exponential,
    FailureRates,
    Fixed,
    SentRecord,
    SimulatedProvider,
    Uniform,
)
from tests.support import CEILING


def cfg(channel: str = "sim-1") -> ChannelConfig:
    return ChannelConfig(channel_id=channel, provider="simulated")


def msg(key: str, peer: str = "p1") -> OutboundMessage:
    return OutboundMessage(peer=peer, idempotency_key=key, text=f"text {key}")


async def next_event(events: AsyncIterator[Event]) -> Event:
    async for event in events:
        return event
    raise AssertionError("the events ended")


async def test_delays_are_exact_in_virtual_time(autojump_clock: trio.testing.MockClock) -> None:
    provider = SimulatedProvider(latency=Fixed(seconds=0.05), connect_latency=Fixed(seconds=0.2))
    with trio.fail_after(CEILING):
        async with provider.open_connection(cfg()) as conn:
            assert isinstance(conn, Connection)
            assert trio.current_time() == 0.2
            result = await conn.send(msg("k1"))
            assert result == SendResult(platform_message_id="sim-1:out-1", peer="p1")
            assert trio.current_time() == pytest.approx(0.25)
            events = conn.events()
            receipt = await next_event(events)
            assert isinstance(receipt, DeliveryReceipt)
            assert (receipt.platform_message_id, receipt.status) == (
                "sim-1:out-1",
                ReceiptStatus.DELIVERED,
            )
            assert trio.current_time() == pytest.approx(0.30)
            await trio.sleep(0.7)  # t = 1.0
            message_id = provider.inject("sim-1", "hello", peer="chat", sender="ann")
            inbound = await next_event(events)
            assert inbound == InboundMessage(
                channel_id="sim-1",
                platform_message_id=message_id,
                peer="chat",
                sender="ann",
                text="hello",
                timestamp=1.0,  # the inject time, exact in virtual time
            )
            assert trio.current_time() == pytest.approx(1.05)
            assert conn.session_state().data == {"last_message_id": message_id}
            assert repr(conn) == "<SimulatedConnection sim-1 [OPEN attempt=1 due=0 delivered=2]>"
        assert provider.sent == [
            SentRecord(
                channel_id="sim-1",
                peer="p1",
                idempotency_key="k1",
                platform_message_id="sim-1:out-1",
                text="text k1",
                at=0.25,
            )
        ]
        assert repr(provider) == "<SimulatedProvider seed=0 open=0 sent=1>"


@pytest.mark.parametrize(
    ("rates", "expected"),
    [
        (FailureRates(connect_transient=1.0), TransientError),
        (FailureRates(connect_fatal=1.0), AuthenticationFailed),
    ],
    ids=["transient", "fatal"],
)
async def test_connect_failures(
    rates: FailureRates, expected: type[ProviderError], autojump_clock: trio.testing.MockClock
) -> None:
    provider = SimulatedProvider(failures=rates, connect_latency=Fixed(seconds=0.1))
    with trio.fail_after(CEILING):
        with pytest.raises(expected, match="simulated"):
            async with provider.open_connection(cfg()):
                pass
        assert trio.current_time() == 0.1  # the failure takes the connect latency
        stats = provider.statistics()
        assert (stats.connects, stats.connect_failures, stats.open_connections) == (0, 1, 0)


@pytest.mark.parametrize(
    ("rates", "expected"),
    [
        (FailureRates(send_transient=1.0), TransientError),
        (FailureRates(send_rate_limited=1.0, retry_after=2.5), RateLimited),
        (FailureRates(send_permanent=1.0), PermanentSendError),
    ],
    ids=["transient", "rate_limited", "permanent"],
)
async def test_send_failures(
    rates: FailureRates, expected: type[ProviderError], autojump_clock: trio.testing.MockClock
) -> None:
    provider = SimulatedProvider(failures=rates, latency=Fixed(seconds=0.01))
    with trio.fail_after(CEILING):
        async with provider.open_connection(cfg()) as conn:
            with pytest.raises(expected) as info:
                await conn.send(msg("k1"))
            assert trio.current_time() == pytest.approx(0.02)
            if isinstance(info.value, RateLimited):
                assert info.value.retry_after == 2.5
        assert provider.sent == []
        assert provider.statistics().send_failures == 1


async def test_failure_rates_hold_on_average(autojump_clock: trio.testing.MockClock) -> None:
    rates = FailureRates(send_transient=0.2, send_rate_limited=0.1, send_permanent=0.05)
    provider = SimulatedProvider(failures=rates, seed=7)
    outcomes: dict[str, int] = {}
    with trio.fail_after(CEILING):
        async with provider.open_connection(cfg()) as conn:
            for i in range(4000):
                try:
                    await conn.send(msg(f"k{i}"))
                    kind = "ok"
                except ProviderError as exc:
                    kind = type(exc).__name__
                outcomes[kind] = outcomes.get(kind, 0) + 1
    assert outcomes["TransientError"] == pytest.approx(800, rel=0.15)
    assert outcomes["RateLimited"] == pytest.approx(400, rel=0.15)
    assert outcomes["PermanentSendError"] == pytest.approx(200, rel=0.25)
    assert outcomes["ok"] == len(provider.sent) == provider.statistics().sends


async def _scenario(seed: int) -> list[tuple[str, str, float]]:
    """Several channels at once, with random latency, failures and drops; a trace."""
    provider = SimulatedProvider(
        latency=Exponential(mean=0.05, cap=1.0),
        connect_latency=Uniform(low=0.1, high=0.3),
        failures=FailureRates(
            connect_transient=0.3, send_transient=0.2, send_rate_limited=0.1, disconnect_rate=0.5
        ),
        seed=seed,
    )
    trace: list[tuple[str, str, float]] = []

    async def channel(name: str) -> None:
        sent = 0
        while sent < 20:
            try:
                async with provider.open_connection(cfg(name)) as conn:
                    trace.append((name, "connected", trio.current_time()))
                    while sent < 20:
                        if conn._failure is not None:
                            raise conn._failure
                        try:
                            result = await conn.send(msg(f"k{sent}"))
                            trace.append((name, result.platform_message_id, trio.current_time()))
                            sent += 1
                        except RateLimited as exc:
                            await trio.sleep(exc.retry_after)
            except TransientError as exc:
                trace.append((name, f"error: {exc}", trio.current_time()))
                await trio.sleep(0.5)

    async with trio.open_nursery() as nursery:
        for i in range(5):
            nursery.start_soon(channel, f"ch{i}")
    return sorted(trace)


async def test_equal_seeds_give_equal_runs(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(10_000):
        first = await _scenario(seed=1)
        start = trio.current_time()
        second = await _scenario(seed=1)
        other = await _scenario(seed=2)
    shifted = [(name, what, at - start) for name, what, at in second]
    assert [(n, w) for n, w, _ in first] == [(n, w) for n, w, _ in shifted]
    assert [at for _, _, at in first] == pytest.approx([at for _, _, at in shifted])
    assert any("error" in what for _, what, _ in first)  # the failures did happen
    assert [(n, w) for n, w, _ in first] != [(n, w) for n, w, _ in other]


async def test_random_drops_come_at_seeded_times(autojump_clock: trio.testing.MockClock) -> None:
    provider = SimulatedProvider(failures=FailureRates(disconnect_rate=2.0), seed=3)
    expected = random.Random("3/sim-1/1/link").expovariate(2.0)
    with trio.fail_after(CEILING):
        async with provider.open_connection(cfg()) as conn:
            with pytest.raises(TransientError, match="simulated link drop"):
                async for _ in conn.events():
                    pass
            assert trio.current_time() == pytest.approx(expected)
            with pytest.raises(TransientError, match="the link failed"):
                await conn.send(msg("k1"))
    assert provider.statistics().drops == 1


async def test_drop_and_ban_break_the_link(autojump_clock: trio.testing.MockClock) -> None:
    provider = SimulatedProvider()
    with trio.fail_after(CEILING):
        async with provider.open_connection(cfg()) as conn:
            assert provider.drop("sim-1") is True
            with pytest.raises(TransientError, match="simulated link drop"):
                async for _ in conn.events():
                    pass
        assert provider.drop("sim-1") is False
        async with provider.open_connection(cfg()) as conn:
            assert conn.attempt == 2
            provider.ban("sim-1")
            with pytest.raises(Banned):
                async for _ in conn.events():
                    pass
        with pytest.raises(Banned, match="do not reconnect"):
            async with provider.open_connection(cfg()):
                pass


async def test_one_connection_per_channel(autojump_clock: trio.testing.MockClock) -> None:
    provider = SimulatedProvider()
    with trio.fail_after(CEILING):
        async with provider.open_connection(cfg()):
            with pytest.raises(Conflict, match="already connected"):
                async with provider.open_connection(cfg()):
                    pass
            async with provider.open_connection(cfg("other")):
                assert provider.statistics().open_connections == 2


async def test_no_inbound_message_is_lost_across_connections(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = SimulatedProvider(latency=Fixed(seconds=1.0), receipts=False)
    with trio.fail_after(CEILING):
        first = provider.inject("sim-1", "before any connection")
        async with provider.open_connection(cfg()) as conn:
            assert trio.current_time() == 1.0
            second = provider.inject("sim-1", "in flight when the link drops")
            await trio.sleep(1.0)  # the first is buffered now, unread; the second is due
            provider.drop("sim-1")
        async with provider.open_connection(cfg()) as conn:
            seen = []
            async for event in conn.events():
                assert isinstance(event, InboundMessage)
                seen.append(event.platform_message_id)
                if len(seen) == 2:
                    break
        assert seen == [first, second]


async def test_close_ends_events_quietly_and_refuses_sends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = SimulatedProvider()
    with trio.fail_after(CEILING):
        async with provider.open_connection(cfg()) as conn:
            await conn.close()
            async for _ in conn.events():
                raise AssertionError("no events after close")
            with pytest.raises(TransientError, match="closed by us"):
                await conn.send(msg("k1"))


async def test_retries_are_deduplicated_by_idempotency_key(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = SimulatedProvider()
    with trio.fail_after(CEILING):
        async with provider.open_connection(cfg()) as conn:
            first = await conn.send(msg("k1"))
            assert await conn.send(msg("k1")) == first
    assert len(provider.sent) == 1 and provider.statistics().duplicates == 1


async def test_an_error_in_the_block_propagates_unwrapped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = SimulatedProvider()
    with pytest.raises(ValueError, match="mine"):
        async with provider.open_connection(cfg()):
            raise ValueError("mine")
    assert provider.statistics().open_connections == 0


async def test_a_thousand_channels_in_virtual_time(autojump_clock: trio.testing.MockClock) -> None:
    provider = SimulatedProvider(latency=Fixed(seconds=0.01), record=False, receipts=False)

    async def channel(name: str) -> None:
        async with provider.open_connection(cfg(name)) as conn:
            for i in range(10):
                await conn.send(msg(f"k{i}"))

    with trio.fail_after(CEILING):
        async with trio.open_nursery() as nursery:
            for i in range(1000):
                nursery.start_soon(channel, f"ch{i}")
    assert trio.current_time() == pytest.approx(0.11)  # connect + 10 sends, all in parallel
    stats = provider.statistics()
    assert (stats.connects, stats.sends, stats.open_connections) == (1000, 10_000, 0)
    assert provider.sent == []


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: FailureRates(send_transient=1.5), "probability"),
        (lambda: FailureRates(send_transient=0.6, send_permanent=0.6), "more than 1"),
        (lambda: Uniform(low=2.0, high=1.0), "high >= low"),
        (lambda: Fixed(seconds=-1.0), "seconds"),
    ],
)
def test_bad_parameters_are_refused(factory: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        factory()


def test_latency_models_stay_in_bounds() -> None:
    rng = random.Random(0)
    uniform = [Uniform(low=0.1, high=0.2).sample(rng) for _ in range(1000)]
    assert all(0.1 <= x <= 0.2 for x in uniform)
    capped = [Exponential(mean=1.0, floor=0.05, cap=2.0).sample(rng) for _ in range(1000)]
    assert all(0.05 <= x <= 2.0 for x in capped) and max(capped) == 2.0
    assert Fixed(seconds=0.3).sample(rng) == 0.3


def test_it_is_a_registered_provider() -> None:
    provider = registry.load(registry.PROVIDERS, "simulated")()
    assert isinstance(provider, SimulatedProvider) and isinstance(provider, Provider)
    assert provider.name == "simulated"
