"""Pipelined sends: a window of sends in flight per channel, ordered per recipient.

In virtual time against a scripted platform whose answers take a round
trip: sends to distinct recipients overlap, sends to one recipient never
do (and never overtake), failures still retry and dead-letter, a stop lets
the sends on the wire finish, and a crash mid-window loses no send.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import attrs
import httpx
import pytest
import trio
import trio.testing

from actors import ActorCrashed, ChannelFailed, ExponentialBackoff, SendFailed, open_actor_system
from actors.channel import ChannelActor, ChannelMemory, ChannelRef, ChannelSettings
from actors.channel.window import Flight, SendWindow
from providers.base import (
    SEND_WINDOW_MAX,
    BadRecipient,
    ChannelConfig,
    FatalError,
    OutboundMessage,
    PlatformLimits,
    RateLimited,
    SendResult,
    TransientError,
    default_send_window,
    send_window,
)
from providers.discord import DISCORD_LIMITS
from providers.discord.rest import build_gateway_bot, build_send, interpret_send
from providers.emulators.discord import DiscordEmulator
from providers.telegram import TELEGRAM_LIMITS
from providers.testing import FakeConnection, FakeProvider
from providers.whatsapp import WHATSAPP_LIMITS
from supervisors import ChildSpec, Restart, open_supervisor
from tests.support import CEILING, record_outcome

RTT = 0.3  # seconds the scripted platform takes to answer
GENEROUS = PlatformLimits(
    per_channel_rate=1000.0,
    per_channel_burst=1000,
    per_peer_rate=1000.0,
    per_peer_burst=1000,
    max_text_length=100,
)


class Answering(FakeProvider):
    """A fake platform whose connections send through :meth:`answer` (the rest is
    :class:`~providers.testing.FakeConnection`'s)."""

    async def answer(self, msg: OutboundMessage) -> SendResult:
        raise NotImplementedError

    @asynccontextmanager
    async def open_connection(
        self, config: ChannelConfig, session: Any = None
    ) -> AsyncIterator[Any]:
        async with super().open_connection(config, session) as conn:
            yield _AnsweringConnection(self, conn)


class _AnsweringConnection:
    def __init__(self, provider: Answering, inner: FakeConnection) -> None:
        self._provider = provider
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def send(self, msg: OutboundMessage) -> SendResult:
        return await self._provider.answer(msg)


class RoundTrip(Answering):
    """A platform ``RTT`` away that answers per recipient from ``scripts[peer]``.

    Records every attempt as ``(start, end, key)`` and the most sends in
    flight at once.
    """

    def __init__(self, *, scripts: Mapping[str, Iterable[Any]] | None = None) -> None:
        super().__init__(limits=GENEROUS)
        self.scripts = {peer: deque(script) for peer, script in (scripts or {}).items()}
        self.flying = 0
        self.most_flying = 0
        self.spans: dict[str, list[tuple[float, float, str]]] = {}
        self.gate: trio.Event | None = None  # set: answers wait until it is set

    async def answer(self, msg: OutboundMessage) -> SendResult:
        start = trio.current_time()
        self.flying += 1
        self.most_flying = max(self.most_flying, self.flying)
        try:
            await trio.sleep(RTT)
            if self.gate is not None:
                await self.gate.wait()
        finally:
            self.flying -= 1
        self.spans.setdefault(msg.peer, []).append(
            (start, trio.current_time(), msg.idempotency_key)
        )
        script = self.scripts.get(msg.peer)
        outcome = script.popleft() if script else None
        if isinstance(outcome, BaseException):
            raise outcome
        self.sent.append((trio.current_time(), msg))
        return SendResult(platform_message_id=f"id-{msg.idempotency_key}", peer=msg.peer)


def out(peer: str, key: str) -> OutboundMessage:
    return OutboundMessage(peer=peer, idempotency_key=key, text="hi")


@asynccontextmanager
async def open_channel(
    provider: FakeProvider, *, window: int, restart: Restart = Restart.PERMANENT, **settings: Any
) -> AsyncIterator[ChannelRef]:
    chosen = ChannelSettings(
        send_backoff=ExponentialBackoff(base=1.0, cap=1.0),
        **settings,
    )
    config = ChannelConfig(channel_id="ch", provider="fake", send_window=window)
    memory = ChannelMemory(provider.limits, chosen)
    factory, memory = ChannelActor.factory(config, provider, settings=chosen, memory=memory)
    async with open_actor_system() as system:
        async with open_supervisor(
            system, [ChildSpec(id="ch", start=factory, restart=restart)], intensity=10, period=60.0
        ) as sup:
            ref = await sup.whereis_child("ch")
            assert ref is not None
            yield ChannelRef(ref, memory, "ch", provider.name)


async def send_all(channel: ChannelRef, messages: list[OutboundMessage]) -> dict[str, Any]:
    """Send each message from a task of its own, in order; returns key -> result or error."""
    results: dict[str, Any] = {}

    async def one(message: OutboundMessage) -> None:
        try:
            results[message.idempotency_key] = await channel.send(message)
        except Exception as exc:
            results[message.idempotency_key] = exc

    async with trio.open_nursery() as nursery:
        for message in messages:
            nursery.start_soon(one, message)
            await trio.testing.wait_all_tasks_blocked()  # queued in this order
    return results


# --- the window as a data structure ------------------------------------------------------


def test_the_window_chains_sends_per_peer_and_hands_back_what_is_cut_off() -> None:
    window = SendWindow(3)
    a1, b1, a2 = (Flight(out(p, k), k) for p, k in [("a", "a1"), ("b", "b1"), ("a", "a2")])
    assert window.admit(a1) and window.admit(b1)
    assert not window.admit(a2)  # behind a1
    assert window.full and len(window) == 3 and window.in_flight == 2
    assert window.finish(a1) is a2  # a2 is next for its peer
    assert window.abandon(a2) == [a2]
    assert window.abandon(b1) == [b1]
    assert len(window) == 0 and not window.full
    with pytest.raises(ValueError, match="at least one send"):
        SendWindow(0)


def test_a_key_in_the_window_belongs_to_its_peer_until_its_last_send_leaves() -> None:
    window = SendWindow(8)
    first, again = Flight(out("a", "k"), 1), Flight(out("a", "k"), 2)
    assert not window.elsewhere(out("b", "k"))  # (an empty window)
    window.admit(first)
    window.admit(again)  # the same peer's: chained behind it
    assert window.elsewhere(out("b", "k")) and not window.elsewhere(out("a", "k"))
    assert not window.elsewhere(out("b", "other"))
    assert window.finish(first) is again
    assert window.elsewhere(out("b", "k"))  # its second send is still here
    assert window.finish(again) is None
    assert not window.elsewhere(out("b", "k"))
    window.admit(Flight(out("a", "k2"), 3))
    window.admit(Flight(out("a", "k3"), 4))
    (head, behind) = window.abandon(window._chains["a"][0])  # type: ignore[index]
    assert (head.item, behind.item) == (3, 4)
    assert not window.elsewhere(out("b", "k2")) and not window.elsewhere(out("b", "k3"))


def test_the_default_window_covers_the_platform_rate_over_300_ms() -> None:
    def limits(rate: float) -> PlatformLimits:
        return attrs.evolve(GENEROUS, per_channel_rate=rate)

    for rate in (30.0, 50.0, 80.0):
        window = default_send_window(limits(rate))
        assert window / 0.3 >= rate, (rate, window)  # reaches the rate at 300 ms
    assert default_send_window(limits(80.0)) == 30
    assert default_send_window(limits(1e9)) == SEND_WINDOW_MAX  # limits off
    config = ChannelConfig(channel_id="c", provider="fake", send_window=5)
    assert send_window(config, limits(80.0)) == 5


# --- the window in a channel --------------------------------------------------------------


async def test_sends_to_distinct_recipients_are_in_flight_together(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = RoundTrip()
    with trio.fail_after(CEILING):
        async with open_channel(provider, window=4) as channel:
            await provider.wait_connected(1)
            results = await send_all(channel, [out(f"p{i}", f"k{i}") for i in range(8)])
            # Four at a time, one round trip each: two round trips for eight.
            assert trio.current_time() == pytest.approx(2 * RTT)
    assert provider.most_flying == 4
    assert all(isinstance(r, SendResult) for r in results.values()), results
    assert sorted(results) == [f"k{i}" for i in range(8)]


async def test_one_send_in_flight_is_the_old_pace(autojump_clock: trio.testing.MockClock) -> None:
    provider = RoundTrip()
    with trio.fail_after(CEILING):
        async with open_channel(provider, window=1) as channel:
            await provider.wait_connected(1)
            await send_all(channel, [out(f"p{i}", f"k{i}") for i in range(4)])
            assert trio.current_time() == pytest.approx(4 * RTT)
    assert provider.most_flying == 1


async def test_sends_to_one_recipient_never_overlap_nor_overtake(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # a1 fails once and is retried (1 s later): a2 must wait for it, b does not.
    provider = RoundTrip(scripts={"a": [TransientError("503")]})
    messages = [out("a", "a1"), out("a", "a2"), out("b", "b1"), out("a", "a3")]
    with trio.fail_after(CEILING):
        async with open_channel(provider, window=8) as channel:
            await provider.wait_connected(1)
            results = await send_all(channel, messages)
    assert all(isinstance(r, SendResult) for r in results.values()), results
    spans = provider.spans["a"]
    assert [key for _, _, key in spans] == ["a1", "a1", "a2", "a3"]
    for (_, ended, _), (began, _, _) in itertools.pairwise(spans):
        assert began >= ended  # the next leaves once the one before was answered
    assert [key for _, m in provider.sent for key in [m.idempotency_key] if m.peer == "a"] == [
        "a1",
        "a2",
        "a3",
    ]
    # b went at once, beside a1's first attempt
    assert provider.spans["b"] == [(0.0, pytest.approx(RTT), "b1")]


async def test_a_failing_send_retries_and_dead_letters_while_the_others_go(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = RoundTrip(
        scripts={"bad": [TransientError("503")] * 3, "gone": [BadRecipient("blocked", peer="gone")]}
    )
    messages = [
        out("bad", "k-bad"),
        out("gone", "k-gone"),
        *(out(f"p{i}", f"k{i}") for i in range(4)),
    ]
    with trio.fail_after(CEILING):
        async with open_channel(provider, window=8, send_attempts=3) as channel:
            await provider.wait_connected(1)
            results = await send_all(channel, messages)
            letters = await channel.dead_letters()
            stats = channel.statistics()
    assert isinstance(results["k-bad"], SendFailed)
    assert isinstance(results["k-gone"], BadRecipient)
    assert all(isinstance(results[f"k{i}"], SendResult) for i in range(4))
    assert sorted(letter.message.idempotency_key for letter in letters) == ["k-bad", "k-gone"]
    assert [letter.attempts for letter in sorted(letters, key=lambda x: x.message.peer)] == [3, 1]
    assert (stats.sent, stats.send_failures) == (4, 4)
    # the good ones were answered after one round trip, not behind the retries
    assert max(t for t, m in provider.sent) == pytest.approx(RTT)


async def test_a_stop_lets_the_sends_on_the_wire_finish(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = RoundTrip()
    results: dict[str, Any] = {}
    with trio.fail_after(CEILING):
        async with open_channel(provider, window=8, restart=Restart.TEMPORARY) as channel:
            await provider.wait_connected(1)
            async with trio.open_nursery() as nursery:
                for key, peer in [("a1", "a"), ("b1", "b"), ("a2", "a")]:
                    nursery.start_soon(record_outcome, results, key, channel.send(out(peer, key)))
                    await trio.testing.wait_all_tasks_blocked()
                await channel.ref.stop()
    # a1 and b1 were on the wire and finished; a2 waited behind a1 and was
    # not sent: it went back to the mailbox, which the stop ended for good.
    assert isinstance(results["a1"], SendResult) and isinstance(results["b1"], SendResult)
    assert type(results["a2"]).__name__ == "ActorDead", results["a2"]
    assert sorted(m.idempotency_key for _, m in provider.sent) == ["a1", "b1"]


async def test_a_crash_mid_window_loses_no_send(autojump_clock: trio.testing.MockClock) -> None:
    provider = RoundTrip()
    provider.gate = trio.Event()  # every answer waits: the crash lands mid-window
    keys = [f"k{i}" for i in range(6)]
    messages = [out("p0" if i % 3 == 0 else f"p{i}", key) for i, key in enumerate(keys)]
    results: dict[str, Any] = {}
    with trio.fail_after(CEILING):
        async with open_channel(provider, window=8) as channel:
            await provider.wait_connected(1)
            async with trio.open_nursery() as nursery:
                for message in messages:
                    key = message.idempotency_key
                    nursery.start_soon(record_outcome, results, key, channel.send(message))
                    await trio.testing.wait_all_tasks_blocked()
                assert provider.flying == 5  # k3 waits behind k0, the rest are on the wire
                channel.ref.tell(object())  # an unknown message crashes the actor
                await provider.wait_connected(2)
                assert channel.ref.incarnation == 2
                provider.gate.set()
    assert all(isinstance(results[key], SendResult) for key in keys), results
    sent = [m.idempotency_key for _, m in provider.sent]
    assert sorted(sent) == keys  # each once: the cut-off attempts never completed
    p0 = [m.idempotency_key for _, m in provider.sent if m.peer == "p0"]
    assert p0 == ["k0", "k3"]  # still in order for their recipient


async def test_a_defect_in_one_send_fails_that_send_and_keeps_the_rest(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = RoundTrip(scripts={"bug": [ZeroDivisionError("a bug in the provider")]})
    messages = [out("bug", "k-bug"), out("ok", "k-ok"), out("ok", "k-ok2")]
    with trio.fail_after(CEILING):
        async with open_channel(provider, window=8) as channel:
            await provider.wait_connected(1)
            results = await send_all(channel, messages)
            restarts = channel.statistics().restarts
    assert isinstance(results["k-bug"], ActorCrashed)
    assert isinstance(results["k-bug"].__cause__, ZeroDivisionError)
    assert isinstance(results["k-ok"], SendResult) and isinstance(results["k-ok2"], SendResult)
    assert restarts == 1
    assert [m.idempotency_key for _, m in provider.sent] == ["k-ok", "k-ok2"]


# --- the window in a node --------------------------------------------------------------------


def node_config(drain_deadline: float = 10.0, window: int = 8) -> Any:
    """A node of one simulated channel ``a``, limits off, with this send window."""
    from runtime import parse_config

    return parse_config(
        {
            "node": {"id": "t", "drain_deadline": drain_deadline, "start_timeout": 1.0},
            "ops": {"enabled": False},
            "providers": {"simulated": {"rate_limit": {"enabled": False}, "send_window": window}},
            "channels": [{"id": "a", "provider": "simulated"}],
        }
    )


@asynccontextmanager
async def one_channel_node(
    drain_deadline: float = 10.0, window: int = 8
) -> AsyncIterator[tuple[Any, Any]]:
    """``(node, its simulated platform)``: :func:`node_config`'s node, its channel
    connected, each send 1 s on the wire, under a hang ceiling."""
    from providers.simulated import Fixed, SimulatedProvider
    from runtime import open_node

    provider = SimulatedProvider(latency=Fixed(seconds=1.0))
    config = node_config(drain_deadline, window)
    with trio.fail_after(CEILING):
        async with open_node(config, providers={"simulated": provider}) as node:
            with node.subscribe(kind="state") as changes:
                while node.channels()[0].status.name != "CONNECTED":
                    await changes.receive()
            yield node, provider


async def test_a_drain_waits_for_every_send_in_the_window(
    autojump_clock: trio.testing.MockClock,
) -> None:
    results: dict[str, Any] = {}
    async with one_channel_node(window=16) as (node, provider):
        began = trio.current_time()
        async with trio.open_nursery() as nursery:
            for i in range(12):
                key = f"k{i}"
                call = node.send("a", out(f"p{i}", key))
                nursery.start_soon(record_outcome, results, key, call)
            await trio.testing.wait_all_tasks_blocked()
            report = await node.drain()
        # all twelve were on the wire together, and the drain waited for them
        assert trio.current_time() - began == pytest.approx(1.0)
    assert report.in_flight == 12
    assert report.kept == ()
    assert all(isinstance(results[f"k{i}"], SendResult) for i in range(12)), results
    assert sorted(m.idempotency_key for m in provider.sent) == sorted(results)


def test_an_http_channel_pools_a_connection_per_send_in_its_window() -> None:
    from providers._pool import pool_limits

    limits = attrs.evolve(GENEROUS, per_channel_rate=80.0)
    default = pool_limits(ChannelConfig(channel_id="c", provider="whatsapp"), limits)
    assert (default.max_connections, default.max_keepalive_connections) == (30, 30)
    own = ChannelConfig(channel_id="c", provider="telegram", send_window=120)
    polling = pool_limits(own, limits, extra=1)  # + Telegram's long poll
    assert (polling.max_connections, polling.max_keepalive_connections) == (121, 121)


# --- a platform that counts per second -------------------------------------------------


class StrictSecond(Answering):
    """A platform ``RTT`` away that counts a channel's sends over any one second,
    as WhatsApp (130429) and Telegram (429) do: the send past its rate is refused
    for a second, channel-wide. Each send arrives half a round trip after it
    left, moved by up to ``jitter`` (the network, the far end's event loop)."""

    def __init__(self, limits: PlatformLimits, *, jitter: float) -> None:
        super().__init__(limits=limits)
        self.window: deque[float] = deque()
        self.refused = 0
        self.accepted = 0
        # Deterministic, uneven: sends that leave evenly arrive bunched.
        self._jitter = itertools.cycle([jitter, 0.0, 0.3 * jitter, 0.9 * jitter, 0.1 * jitter])

    async def answer(self, msg: OutboundMessage) -> SendResult:
        await trio.sleep(RTT / 2 + next(self._jitter))
        now = trio.current_time()
        window = self.window
        while window and window[0] <= now - 1.0:
            window.popleft()
        refused = len(window) >= self.limits.per_channel_rate
        if not refused:
            window.append(now)
        await trio.sleep(RTT / 2)
        if refused:
            self.refused += 1
            raise RateLimited("throughput reached", retry_after=1.0)
        self.accepted += 1
        return SendResult(platform_message_id=f"id-{msg.idempotency_key}", peer=msg.peer)


@pytest.mark.parametrize(
    "limits",
    [WHATSAPP_LIMITS, TELEGRAM_LIMITS, DISCORD_LIMITS],
    ids=["whatsapp", "telegram", "discord"],
)
async def test_a_channel_keeps_to_a_strict_platform_s_second_and_near_its_rate(
    autojump_clock: trio.testing.MockClock, limits: PlatformLimits
) -> None:
    # Every message to a new recipient, so only the channel's own rate binds;
    # 20 ms of jitter between the node and the platform.
    provider = StrictSecond(limits, jitter=0.02)
    rate = limits.per_channel_rate
    count = int(rate * 20)
    with trio.fail_after(CEILING):
        async with open_channel(provider, window=default_send_window(limits)) as channel:
            await provider.wait_connected(1)
            began = trio.current_time()
            results = await send_all(channel, [out(f"p{i}", f"k{i}") for i in range(count)])
            took = trio.current_time() - began
    assert all(isinstance(r, SendResult) for r in results.values()), results
    # Not one refusal (each costs the channel a second), and 95 % of the rate.
    assert provider.refused == 0
    assert provider.accepted == count
    assert 0.95 * rate <= count / took <= rate, count / took


class DiscordInMemory(Answering):
    """The Discord emulator, in memory (``httpx.ASGITransport``: virtual time, no
    sockets), behind the Discord provider's own REST core: a connect asks for the
    gateway (one request of the bot's), each send is ``POST /channels/{peer}/messages``
    from :func:`build_send`, read by :func:`interpret_send`. The emulator holds
    each answer back a round trip; ``arrivals`` are the times it took the sends."""

    def __init__(self, emulator: DiscordEmulator) -> None:
        super().__init__(limits=DISCORD_LIMITS)
        self.emulator = emulator
        self.arrivals: list[float] = []
        self.http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=emulator.served_app),
            base_url="http://discord.in-memory",  # never resolved
            headers={"Authorization": "Bot window-bot"},
        )

    @asynccontextmanager
    async def open_connection(
        self, config: ChannelConfig, session: Any = None
    ) -> AsyncIterator[Any]:
        gateway = build_gateway_bot()
        answer = await self.http.request(gateway.method, gateway.path)
        assert answer.status_code == 200, answer.text
        async with super().open_connection(config, session) as conn:
            yield conn

    async def answer(self, msg: OutboundMessage) -> SendResult:
        request = build_send(msg)
        self.arrivals.append(trio.current_time())
        answer = await self.http.request(request.method, request.path, json=request.json)
        return interpret_send(answer.status_code, answer.headers, answer.content, peer=msg.peer)


async def test_a_discord_channel_keeps_under_the_emulator_s_global_limit_and_near_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # 200 messages, each to a DM channel of its own (so only the bot's global
    # 50 requests/s binds), 150 ms away: not one global 429 (each pauses the
    # channel), and the emulator takes them at 95-100 % of 50/s.
    emulator = DiscordEmulator()
    emulator.latency = 0.15
    provider = DiscordInMemory(emulator)
    count = 200
    messages = [out(str(900_000_000_000_000_000 + i), f"k{i}") for i in range(count)]
    with trio.fail_after(CEILING):
        async with (
            provider.http,
            open_channel(provider, window=default_send_window(DISCORD_LIMITS)) as channel,
        ):
            await provider.wait_connected(1)
            results = await send_all(channel, messages)
    assert all(isinstance(r, SendResult) for r in results.values()), results
    assert emulator.stats["rest_429"] == 0
    assert emulator.stats["messages_sent"] == count
    arrivals = provider.arrivals
    rate = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
    assert 0.95 * 50 <= rate <= 50, rate


async def test_sends_waiting_for_the_limiter_take_turns_instead_of_all_waking(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A paced channel (10/s, burst 1) with twenty sends waiting at once: each
    # turn lets exactly one go, in the order they came, and wakes about one
    # waiter, not all that wait (twenty wake-ups per turn before).
    provider = RoundTrip()
    provider.limits = attrs.evolve(GENEROUS, per_channel_rate=10.0, per_channel_burst=1)
    with trio.fail_after(CEILING):
        async with open_channel(provider, window=20) as channel:
            await provider.wait_connected(1)
            began = trio.current_time()
            results = await send_all(channel, [out(f"p{i}", f"k{i}") for i in range(20)])
            waits = channel.statistics().rate_limit_waits
    assert all(isinstance(r, SendResult) for r in results.values()), results
    starts = {key: start - began for spans in provider.spans.values() for start, _, key in spans}
    assert [starts[f"k{i}"] for i in range(20)] == pytest.approx(
        [i / 10 for i in range(20)], abs=1e-5
    )
    assert waits <= 2 * 20, waits


async def test_after_a_pause_every_waiting_send_goes_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # No rate limit, but the platform refuses the first five sends with a
    # second's pause: the five wait in line for it and all leave when it
    # ends (none stays parked), and the fifteen behind them follow.
    scripts = {f"p{i}": [RateLimited("slow down", retry_after=1.0)] for i in range(5)}
    provider = RoundTrip(scripts=scripts)
    with trio.fail_after(CEILING):
        async with open_channel(provider, window=5) as channel:
            await provider.wait_connected(1)
            began = trio.current_time()
            results = await send_all(channel, [out(f"p{i}", f"k{i}") for i in range(20)])
            took = trio.current_time() - began
    assert all(isinstance(r, SendResult) for r in results.values()), results
    # Refused after a round trip, a second's pause, then four rounds of five.
    assert took == pytest.approx(RTT + 1.0 + 4 * RTT)


async def test_sends_in_line_behind_the_limiter_are_answered_when_the_channel_fails(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The send woken in turn leaves by an error (the channel failed): it wakes the
    next in line on its way out, so every caller is answered (a review found them
    parked for good)."""
    provider = RoundTrip(scripts={"p0": [FatalError("token revoked")]})
    provider.limits = attrs.evolve(GENEROUS, per_channel_rate=1.0, per_channel_burst=1)
    with trio.fail_after(CEILING):
        async with open_channel(provider, window=5) as channel:
            await provider.wait_connected(1)
            results = await send_all(channel, [out(f"p{i}", f"k{i}") for i in range(5)])
    assert sorted(results) == [f"k{i}" for i in range(5)]
    assert all(isinstance(r, ChannelFailed) for r in results.values()), results


class _Steps(trio.abc.Instrument):
    """The names of the tasks that run, in order."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.names.append(task.name)


async def test_an_idle_channel_takes_a_send_in_the_asker_s_task_until_its_window_would_fill(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Idle, the actor's task does not run for a send: the asker puts it in the
    # window (receive_at_once). The send that would fill the window takes the
    # mailbox and the actor's task, which then waits for room as ever.
    provider = RoundTrip()
    provider.gate = trio.Event()
    steps = _Steps()
    with trio.fail_after(CEILING):
        async with open_channel(provider, window=3) as channel:
            await provider.wait_connected(1)
            await trio.testing.wait_all_tasks_blocked()
            async with trio.open_nursery() as nursery:
                trio.lowlevel.add_instrument(steps)
                try:
                    for i in range(2):
                        nursery.start_soon(channel.send, out(f"p{i}", f"k{i}"))
                        await trio.testing.wait_all_tasks_blocked()
                    assert provider.flying == 2
                    assert not [name for name in steps.names if name.endswith("run_task")]
                    nursery.start_soon(channel.send, out("p2", "k2"))
                    await trio.testing.wait_all_tasks_blocked()
                    assert [name for name in steps.names if name.endswith("run_task")]
                    assert provider.flying == 3
                    # Two taken at once; the third is still in hand: the actor
                    # waits for room before it takes another.
                    assert channel.ref.statistics().processed == 2
                finally:
                    trio.lowlevel.remove_instrument(steps)
                provider.gate.set()
    assert sorted(m.idempotency_key for _, m in provider.sent) == ["k0", "k1", "k2"]


@pytest.mark.parametrize("how", ["kill", "restart"])
async def test_sends_taken_at_once_survive_a_kill_or_restart_mid_flight(
    autojump_clock: trio.testing.MockClock, how: str
) -> None:
    # Taken into the window from the askers' tasks (the actor idle), cut off
    # on the wire by the end of the incarnation: handed back to the mailbox,
    # each sent and answered once by the next incarnation.
    provider = RoundTrip()
    provider.gate = trio.Event()
    results: dict[str, Any] = {}
    with trio.fail_after(CEILING):
        async with open_channel(provider, window=4) as channel:
            await provider.wait_connected(1)
            await trio.testing.wait_all_tasks_blocked()
            async with trio.open_nursery() as nursery:
                for key, peer in (("k0", "p0"), ("k1", "p0"), ("k2", "p1")):
                    nursery.start_soon(record_outcome, results, key, channel.send(out(peer, key)))
                    await trio.testing.wait_all_tasks_blocked()
                assert channel.ref.statistics().processed == 3  # none waits in the mailbox
                if how == "kill":
                    channel.ref.kill()
                else:
                    channel.ref.restart()
                await provider.wait_connected(2)
                provider.gate.set()
    assert {key: r.platform_message_id for key, r in results.items()} == {
        key: f"id-{key}" for key in ("k0", "k1", "k2")
    }
    assert sorted(m.idempotency_key for _, m in provider.sent) == ["k0", "k1", "k2"]
    assert [m.idempotency_key for _, m in provider.sent if m.peer == "p0"] == ["k0", "k1"]
