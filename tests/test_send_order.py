"""The per-channel send path under attack: order per peer, each send answered
once, one idempotency key for one message, the breaker and the window together.

Failures of a chain's head (permanent, rate limited, retried out), crashes and
kills in the middle of a chain, callers that give up, a key sent to two peers
at once, the breaker opening with several peers in flight, sends started at
once whose acks the test delivers, and random interleavings of all of these.
Virtual time only (autojump_clock), against scripted fake platforms.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from actors import KeyReused, SendFailed
from actors.channel import ChannelRef
from providers.base import (
    BadRecipient,
    ChannelConfig,
    OutboundMessage,
    ProviderError,
    RateLimited,
    RateLimitScope,
    SendResult,
    TransientError,
)
from providers.testing import FakeProvider
from tests.support import CEILING, record_outcome
from tests.test_send_window import (
    GENEROUS,
    RTT,
    RoundTrip,
    one_channel_node,
    open_channel,
    out,
    send_all,
)


def _in_order_and_serial(provider: RoundTrip, peer: str) -> list[str]:
    """The keys attempted to ``peer``, checking no two attempts overlapped."""
    spans = provider.spans.get(peer, [])
    for (_, ended, _), (began, _, _) in itertools.pairwise(spans):
        assert began >= ended, spans
    return [key for _, _, key in spans]


async def _ask_in_order(
    channel: ChannelRef, messages: list[OutboundMessage], results: dict[str, Any], nursery: Any
) -> None:
    for message in messages:
        nursery.start_soon(
            record_outcome, results, message.idempotency_key, channel.send(message, timeout=CEILING)
        )
        await trio.testing.wait_all_tasks_blocked()


# --- failures of the head of a chain ------------------------------------------------------


async def test_permanent_failure_of_first_then_second_goes_after(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = RoundTrip(scripts={"a": [BadRecipient("blocked", peer="a")]})
    with trio.fail_after(CEILING):
        async with open_channel(provider, window=8) as channel:
            await provider.wait_connected(1)
            results = await send_all(channel, [out("a", "a1"), out("a", "a2"), out("a", "a3")])
            letters = await channel.dead_letters()
    assert isinstance(results["a1"], BadRecipient)
    assert isinstance(results["a2"], SendResult) and isinstance(results["a3"], SendResult)
    assert _in_order_and_serial(provider, "a") == ["a1", "a2", "a3"]
    assert [letter.message.idempotency_key for letter in letters] == ["a1"]


@pytest.mark.parametrize("scope", [RateLimitScope.PEER, RateLimitScope.CHANNEL])
async def test_rate_limited_head_holds_its_chain_and_goes_first(
    autojump_clock: trio.testing.MockClock, scope: RateLimitScope
) -> None:
    provider = RoundTrip(
        scripts={"a": [RateLimited("slow", retry_after=2.0, scope=scope, peer="a")]}
    )
    with trio.fail_after(CEILING):
        async with open_channel(provider, window=8) as channel:
            await provider.wait_connected(1)
            results = await send_all(
                channel, [out("a", "a1"), out("a", "a2"), out("b", "b1"), out("a", "a3")]
            )
            stats = channel.statistics()
    assert all(isinstance(r, SendResult) for r in results.values()), results
    assert _in_order_and_serial(provider, "a") == ["a1", "a1", "a2", "a3"]
    # a1's retry waits out the pause, a2 only after a1 was accepted
    a_spans = provider.spans["a"]
    assert a_spans[1][0] >= RTT + 2.0 - 1e-9
    assert stats.send_failures == 0  # a pause is no failure


async def test_retries_exhausted_on_head_then_chain_continues_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = RoundTrip(scripts={"a": [TransientError("503")] * 3})
    with trio.fail_after(CEILING):
        async with open_channel(provider, window=8, send_attempts=3) as channel:
            await provider.wait_connected(1)
            results = await send_all(channel, [out("a", "a1"), out("a", "a2")])
            stats = channel.statistics()
            letters = await channel.dead_letters()
    assert isinstance(results["a1"], SendFailed)
    assert isinstance(results["a2"], SendResult)
    assert _in_order_and_serial(provider, "a") == ["a1", "a1", "a1", "a2"]
    assert (stats.sent, stats.send_failures) == (1, 3)
    assert [(x.message.idempotency_key, x.attempts) for x in letters] == [("a1", 3)]


# --- a crash in the middle of a chain -----------------------------------------------------


async def test_crash_while_head_waits_its_retry_backoff_keeps_order_and_sends_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # a1 fails once: its retry sleeps 1 s (send_backoff); the actor crashes
    # in that sleep. a1 and a2 go back to the mailbox and go again in order;
    # each is accepted exactly once.
    provider = RoundTrip(scripts={"a": [TransientError("503")]})
    results: dict[str, Any] = {}
    with trio.fail_after(CEILING):
        async with open_channel(provider, window=8) as channel:
            await provider.wait_connected(1)
            async with trio.open_nursery() as nursery:
                await _ask_in_order(
                    channel, [out("a", "a1"), out("a", "a2"), out("b", "b1")], results, nursery
                )
                await trio.sleep(RTT + 1e-6)  # a1 failed, its retry waits (full jitter in [0, 1 s])
                assert [k for _, _, k in provider.spans["a"]] == ["a1"]
                channel.ref.tell(object())  # crash
                await provider.wait_connected(2)
    assert all(isinstance(r, SendResult) for r in results.values()), results
    assert _in_order_and_serial(provider, "a") == ["a1", "a1", "a2"]
    assert [m.idempotency_key for _, m in provider.sent if m.peer == "a"] == ["a1", "a2"]
    assert sorted(m.idempotency_key for _, m in provider.sent) == ["a1", "a2", "b1"]


async def test_crash_after_head_accepted_does_not_send_it_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # a1 is accepted and a2 is on the wire when the actor crashes: a1 is not
    # sent again, a2 is sent again (its attempt was cut) and answered once.
    provider = RoundTrip()
    results: dict[str, Any] = {}
    with trio.fail_after(CEILING):
        async with open_channel(provider, window=8) as channel:
            await provider.wait_connected(1)
            async with trio.open_nursery() as nursery:
                await _ask_in_order(
                    channel, [out("a", "a1"), out("a", "a2"), out("a", "a3")], results, nursery
                )
                await trio.sleep(RTT * 1.5)  # a1 accepted, a2 mid-flight
                channel.ref.tell(object())
                await provider.wait_connected(2)
    assert all(isinstance(r, SendResult) for r in results.values()), results
    assert [m.idempotency_key for _, m in provider.sent] == ["a1", "a2", "a3"]
    # (spans record completed attempts only: a2's cut attempt never completed)
    assert _in_order_and_serial(provider, "a") == ["a1", "a2", "a3"]


# --- idempotency keys -----------------------------------------------------------------------


async def test_same_key_to_two_peers_at_once_is_refused_not_sent_twice(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = RoundTrip()
    results: dict[str, Any] = {}
    with trio.fail_after(CEILING):
        async with open_channel(provider, window=8) as channel:
            await provider.wait_connected(1)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(record_outcome, results, "to-a", channel.send(out("a", "k")))
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(record_outcome, results, "to-b", channel.send(out("b", "k")))
            # later, the first caller's retry of its own message: answered as the first
            await record_outcome(results, "retry-a", channel.send(out("a", "k")))
    assert isinstance(results["to-a"], SendResult)
    sent = [(m.peer, m.idempotency_key) for _, m in provider.sent]
    # the key was reused for another message: refused, never sent
    assert isinstance(results["to-b"], KeyReused), (results, sent)
    assert sent == [("a", "k")]
    assert isinstance(results["retry-a"], SendResult), results


async def test_a_replayed_letter_whose_key_is_on_its_way_to_another_peer_stays_a_letter(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Nobody waits for a replay: refused for its key, it is a letter again.
    provider = RoundTrip(scripts={"a": [BadRecipient("blocked", peer="a")]})
    with trio.fail_after(CEILING):
        async with open_channel(provider, window=8) as channel:
            await provider.wait_connected(1)
            with pytest.raises(BadRecipient):
                await channel.send(out("a", "k"))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(channel.send, out("b", "k"))  # the key, now to b
                await trio.testing.wait_all_tasks_blocked()
                assert await channel.replay_dead_letters() == 1
            (letter,) = await channel.dead_letters()
    assert (letter.message.peer, letter.error_type) == ("a", "KeyReused")
    assert [m.peer for _, m in provider.sent] == ["b"]


async def test_same_key_same_peer_twice_at_once_is_sent_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = RoundTrip()
    results: dict[int, Any] = {}
    with trio.fail_after(CEILING):
        async with open_channel(provider, window=8) as channel:
            await provider.wait_connected(1)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(record_outcome, results, 1, channel.send(out("a", "k")))
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(record_outcome, results, 2, channel.send(out("a", "k")))
                await trio.testing.wait_all_tasks_blocked()
                other = OutboundMessage(peer="a", idempotency_key="k", text="other")
                nursery.start_soon(record_outcome, results, 3, channel.send(other))
    assert isinstance(results[1], SendResult) and results[1] == results[2]
    assert isinstance(results[3], KeyReused), results
    assert [m.idempotency_key for _, m in provider.sent] == ["k"]


async def test_caller_cancelled_in_flight_then_asks_again_is_answered_not_resent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = RoundTrip()
    with trio.fail_after(CEILING):
        async with open_channel(provider, window=8) as channel:
            await provider.wait_connected(1)
            with trio.move_on_after(RTT / 2):
                await channel.send(out("a", "k"))
            again = await channel.send(out("a", "k"))
            stats = channel.statistics()
    assert again.platform_message_id == "id-k"
    assert [m.idempotency_key for _, m in provider.sent] == ["k"]
    assert stats.sent == 1


async def test_caller_cancelled_in_flight_then_crash_sends_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The caller of a1 gives up; a1 is cut by a crash: the rest of the chain
    # still goes, in order.
    provider = RoundTrip()
    provider.gate = trio.Event()
    results: dict[str, Any] = {}
    with trio.fail_after(CEILING):
        async with open_channel(provider, window=8) as channel:
            await provider.wait_connected(1)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    record_outcome, results, "a1", channel.send(out("a", "a1"), timeout=0.1)
                )
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(
                    record_outcome, results, "a2", channel.send(out("a", "a2"), timeout=CEILING)
                )
                await trio.sleep(1.0)  # a1's caller timed out
                channel.ref.tell(object())
                await provider.wait_connected(2)
                provider.gate.set()
    assert isinstance(results["a2"], SendResult), results
    keys = [m.idempotency_key for _, m in provider.sent]
    assert keys.count("a2") == 1
    assert keys.index("a1") < keys.index("a2")


# --- the breaker with several sends in flight -----------------------------------------------


async def test_breaker_opening_with_sends_in_flight_to_several_peers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Five peers fail at once (threshold 5, reset 30 s): the breaker opens at
    # t=0.3. At t=30.3 one trial goes (half_open_max_calls=1), is accepted at
    # 30.6 and closes the breaker. The other four peers' retries, refused
    # while the trial was out, must then go: the breaker is closed. Expected:
    # every send done shortly after 30.6 (callers have 60 s).
    scripts = {f"p{i}": [TransientError("503")] for i in range(5)}
    provider = RoundTrip(scripts=scripts)
    messages = [out(f"p{i}", f"p{i}-1") for i in range(5)] + [
        out(f"p{i}", f"p{i}-2") for i in range(5)
    ]
    with trio.fail_after(CEILING * 4):
        async with open_channel(provider, window=16, send_attempts=4) as channel:
            await provider.wait_connected(1)
            results = await send_all(channel, messages)  # each caller: 60 s
            breaker = channel.memory.breaker.statistics()
    starts = {key: start for spans in provider.spans.values() for start, _, key in spans}
    assert breaker.times_opened == 1
    assert all(isinstance(r, SendResult) for r in results.values()), (results, starts)
    for i in range(5):
        assert _in_order_and_serial(provider, f"p{i}") == [f"p{i}-1", f"p{i}-1", f"p{i}-2"]
    assert max(starts.values()) < 32.0, starts


async def test_half_open_trial_success_lets_waiting_sends_go(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Minimal form: threshold 1, reset 10 s. p0 fails (opens at 0.3). p1 and
    # p2 are asked at t=1: refused by the open breaker, they sleep to 10.3.
    # At 10.3 one is the trial, the other is refused (slot taken): it must go
    # once the trial closes the breaker at 10.6, not at 20.3.
    provider = RoundTrip(scripts={"p0": [TransientError("x")]})
    results: dict[str, Any] = {}
    with trio.fail_after(CEILING * 2):
        async with open_channel(
            provider, window=8, send_attempts=1, breaker_threshold=1, breaker_reset=10.0
        ) as channel:
            await provider.wait_connected(1)
            assert isinstance(await _outcome_of(channel.send(out("p0", "k0"))), SendFailed)
            async with trio.open_nursery() as nursery:
                await _ask_in_order(channel, [out("p1", "k1"), out("p2", "k2")], results, nursery)
    assert all(isinstance(r, SendResult) for r in results.values()), results
    ends = {key: end for spans in provider.spans.values() for _, end, key in spans}
    assert ends["k1"] == pytest.approx(10.6) or ends["k2"] == pytest.approx(10.6), ends
    assert max(ends["k1"], ends["k2"]) <= 11.0, ends


async def _outcome_of(call: Any) -> Any:
    try:
        return await call
    except Exception as exc:
        return exc


# --- the node: one key, two recipients, at once ---------------------------------------------


async def test_node_same_key_to_two_peers_at_once_is_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    results: dict[str, Any] = {}
    async with one_channel_node() as (node, provider):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(record_outcome, results, "to-a", node.send("a", out("a", "k")))
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(record_outcome, results, "to-b", node.send("a", out("b", "k")))
    assert isinstance(results["to-a"], SendResult)
    assert isinstance(results["to-b"], KeyReused), results
    assert [(m.peer, m.idempotency_key) for m in provider.sent] == [("a", "k")]


# --- sends started at once (a scripted link whose acks the test delivers) -------------------


class AtOnceProvider(FakeProvider):
    """A platform whose connections start sends at once (``start_at_once``) and
    answer them when the test calls :meth:`ack`; the ordinary ``send`` (the
    retry path) answers after ``RTT``. A link's end fails every send still
    waiting for its ack (as a websocket link does)."""

    def __init__(self) -> None:
        super().__init__(limits=GENEROUS)
        self.waiting: deque[tuple[OutboundMessage, Callable[..., None]]] = deque()
        self.started: list[tuple[float, str, str]] = []  # (time, how, key)
        self.accepted: list[str] = []
        self.ordinary_script: deque[Any] = deque()
        self.at_once = True

    def ack(self, error: ProviderError | None = None) -> None:
        msg, done = self.waiting.popleft()
        if error is None:
            self.accepted.append(msg.idempotency_key)
            done(SendResult(platform_message_id=f"id-{msg.idempotency_key}", peer=msg.peer), None)
        else:
            done(None, error)

    @asynccontextmanager
    async def open_connection(
        self, config: ChannelConfig, session: Any = None
    ) -> AsyncIterator[Any]:
        async with super().open_connection(config, session) as inner:
            link = _AtOnceLink(self, inner)
            try:
                yield link
            finally:
                link.open = False
                while self.waiting:  # the link ended: every send waiting for an ack fails
                    _, done = self.waiting.popleft()
                    done(None, TransientError("the link closed"))


class _AtOnceLink:
    def __init__(self, provider: AtOnceProvider, inner: Any) -> None:
        self._provider = provider
        self._inner = inner
        self.open = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def can_start_at_once(self, msg: Any) -> bool:
        return self.open and self._provider.at_once and type(msg) is OutboundMessage

    def start_at_once(self, msg: OutboundMessage, done: Callable[..., None]) -> None:
        self._provider.started.append((trio.current_time(), "now", msg.idempotency_key))
        self._provider.waiting.append((msg, done))

    async def send(self, msg: OutboundMessage) -> SendResult:
        provider = self._provider
        provider.started.append((trio.current_time(), "task", msg.idempotency_key))
        await trio.sleep(RTT)
        outcome = provider.ordinary_script.popleft() if provider.ordinary_script else None
        if isinstance(outcome, BaseException):
            raise outcome
        provider.accepted.append(msg.idempotency_key)
        return SendResult(platform_message_id=f"id-{msg.idempotency_key}", peer=msg.peer)


@asynccontextmanager
async def at_once_channel(**options: Any) -> AsyncIterator[tuple[AtOnceProvider, ChannelRef]]:
    """``(platform, channel)``: a channel of an :class:`AtOnceProvider`, window 8,
    connected and idle, under a hang ceiling."""
    provider = AtOnceProvider()
    with trio.fail_after(CEILING):
        async with open_channel(provider, window=8, **options) as channel:
            await provider.wait_connected(1)
            await trio.testing.wait_all_tasks_blocked()
            yield provider, channel


def _keys_started(provider: AtOnceProvider) -> list[str]:
    return [key for _, _, key in provider.started]


async def test_at_once_chain_goes_in_order_from_the_ack(
    autojump_clock: trio.testing.MockClock,
) -> None:
    results: dict[str, Any] = {}
    async with at_once_channel() as (provider, channel):
        async with trio.open_nursery() as nursery:
            await _ask_in_order(
                channel,
                [out("a", "a1"), out("a", "a2"), out("b", "b1"), out("a", "a3")],
                results,
                nursery,
            )
            assert _keys_started(provider) == ["a1", "b1"]
            provider.ack()  # a1
            await trio.testing.wait_all_tasks_blocked()
            assert _keys_started(provider) == ["a1", "b1", "a2"]
            provider.ack()  # b1
            provider.ack()  # a2
            await trio.testing.wait_all_tasks_blocked()
            provider.ack()  # a3
    assert all(isinstance(r, SendResult) for r in results.values()), results
    assert provider.accepted == ["a1", "b1", "a2", "a3"]
    assert channel.statistics().sent == 4


async def test_at_once_head_fails_then_chain_waits_for_its_retry(
    autojump_clock: trio.testing.MockClock,
) -> None:
    results: dict[str, Any] = {}
    async with at_once_channel(send_attempts=4) as (provider, channel):
        provider.ordinary_script.append(TransientError("503 again"))
        async with trio.open_nursery() as nursery:
            await _ask_in_order(channel, [out("a", "a1"), out("a", "a2")], results, nursery)
            provider.ack(TransientError("503"))  # a1's first attempt fails
            while "a1" not in provider.accepted:  # noqa: ASYNC110
                await trio.sleep(0.05)
            await trio.testing.wait_all_tasks_blocked()
            while provider.waiting:
                provider.ack()
                await trio.testing.wait_all_tasks_blocked()
        stats = channel.statistics()
    assert all(isinstance(r, SendResult) for r in results.values()), results
    assert provider.accepted == ["a1", "a2"]
    assert _keys_started(provider) == ["a1", "a1", "a1", "a2"]
    a1_accepted = [t for t, how, k in provider.started if k == "a1"][-1] + RTT
    a2_started = next(t for t, _, k in provider.started if k == "a2")
    assert a2_started >= a1_accepted
    assert (stats.sent, stats.send_failures) == (2, 2)


@pytest.mark.parametrize("how", ["kill", "crash", "restart"])
async def test_at_once_head_cut_by_end_of_incarnation_goes_again_first(
    autojump_clock: trio.testing.MockClock, how: str
) -> None:
    results: dict[str, Any] = {}
    async with at_once_channel() as (provider, channel):
        async with trio.open_nursery() as nursery:
            await _ask_in_order(
                channel, [out("a", "a1"), out("a", "a2"), out("b", "b1")], results, nursery
            )
            if how == "kill":
                channel.ref.kill()
            elif how == "restart":
                channel.ref.restart()
            else:
                channel.ref.tell(object())
            await provider.wait_connected(2)
            for _ in range(20):
                await trio.testing.wait_all_tasks_blocked()
                while provider.waiting:
                    provider.ack()
                await trio.sleep(0.01)
        stats = channel.statistics()
        breaker = channel.memory.breaker.statistics()
    assert all(isinstance(r, SendResult) for r in results.values()), results
    assert [k for k in provider.accepted if k.startswith("a")] == ["a1", "a2"]
    assert sorted(provider.accepted) == ["a1", "a2", "b1"]
    assert stats.send_failures == 0 and breaker.failures == 0


async def test_at_once_ack_delivered_under_a_cancelled_scope_as_kill_lands(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The ack of a1 comes in a task whose scope is cancelled (a kill as the
    # ack came): a2, waiting behind a1, must still be sent exactly once after
    # a1, by this incarnation or the next; every caller answered once.
    results: dict[str, Any] = {}
    async with at_once_channel() as (provider, channel):
        async with trio.open_nursery() as nursery:
            await _ask_in_order(channel, [out("a", "a1"), out("a", "a2")], results, nursery)
            channel.ref.kill()
            with trio.CancelScope() as scope:  # noqa: ASYNC100
                scope.cancel()
                provider.ack()  # a1 accepted, in a cancelled scope
            await provider.wait_connected(2)
            for _ in range(20):
                await trio.testing.wait_all_tasks_blocked()
                while provider.waiting:
                    provider.ack()
                await trio.sleep(0.01)
    assert all(isinstance(r, SendResult) for r in results.values()), results
    assert provider.accepted == ["a1", "a2"]


# --- the drain with a chain in the window ---------------------------------------------------


async def test_drain_keeps_what_waits_behind_a_send_on_the_wire(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # a1 is on the wire (1 s), a2 and a3 wait behind it, b1 on the wire too.
    # The drain (2.5 s: sends until 1.875, a reserve of a quarter) lets a1,
    # b1 finish at 1.0; a2 leaves then and is on the wire at the cut (1.875):
    # it finishes (2.0) and is not kept; a3, never sent, is kept.
    results: dict[str, Any] = {}
    async with one_channel_node(2.5) as (node, provider):
        async with trio.open_nursery() as nursery:
            for key, peer in (("a1", "a"), ("a2", "a"), ("b1", "b"), ("a3", "a")):
                nursery.start_soon(record_outcome, results, key, node.send("a", out(peer, key)))
                await trio.testing.wait_all_tasks_blocked()
            report = await node.drain()
    sent = [m.idempotency_key for m in provider.sent]
    kept = [k.message.idempotency_key for k in report.kept]
    assert isinstance(results["a1"], SendResult) and isinstance(results["b1"], SendResult), results
    assert sorted(sent) == ["a1", "a2", "b1"], sent
    assert kept == ["a3"], (kept, results)
    assert type(results["a3"]).__name__ == "NodeDraining", results
    assert report.in_flight == 4


@pytest.mark.parametrize("how", ["cancelled", "timed_out"])
async def test_node_key_reused_for_another_peer_after_the_first_caller_gave_up(
    autojump_clock: trio.testing.MockClock, how: str
) -> None:
    # The first send of key k (to a) is on the wire (1 s); its caller gives
    # up at 0.5 s. The key is then asked for another recipient (b): the key
    # is reused for another message, which must be refused (KeyReused), not
    # sent beside the first.
    results: dict[str, Any] = {}
    async with one_channel_node(10.0) as (node, provider):
        if how == "cancelled":
            with trio.move_on_after(0.5):
                await node.send("a", out("a", "k"))
        else:
            await record_outcome(results, "first", node.send("a", out("a", "k"), timeout=0.5))
            assert type(results["first"]).__name__ == "AskTimeout", results
        await record_outcome(results, "to-b", node.send("a", out("b", "k")))
        await trio.sleep(2.0)
        # the first caller's retry of its own message: answered as the first
        await record_outcome(results, "retry-a", node.send("a", out("a", "k")))
        channel_sent = node.channel("a").statistics().sent
    sent = [(m.peer, m.idempotency_key) for m in provider.sent]
    # (the simulated platform dedupes by key: a real one would deliver to b)
    assert (channel_sent, isinstance(results["to-b"], KeyReused)) == (1, True), (
        channel_sent,
        results,
        sent,
    )
    assert isinstance(results["retry-a"], SendResult), results
    assert sent == [("a", "k")], sent


# --- many peers, random faults, random crashes ----------------------------------------------


@pytest.mark.parametrize("seed", range(40))
async def test_random_interleavings_keep_per_peer_order_and_answer_once(
    autojump_clock: trio.testing.MockClock, seed: int
) -> None:
    import random

    rng = random.Random(seed)
    peers = [f"p{i}" for i in range(rng.randint(2, 6))]

    def fault(peer: str) -> Any:
        roll = rng.random()
        if roll < 0.55:
            return None
        if roll < 0.75:
            return TransientError("503")
        if roll < 0.85:
            return RateLimited("slow", retry_after=0.5, scope=RateLimitScope.PEER, peer=peer)
        if roll < 0.92:
            return RateLimited("slow", retry_after=0.5)
        return BadRecipient("gone", peer=peer)

    scripts = {peer: [fault(peer) for _ in range(12)] for peer in peers}
    provider = RoundTrip(scripts=scripts)
    messages = [out(rng.choice(peers), f"k{i}") for i in range(rng.randint(8, 25))]
    crashes = sorted(rng.uniform(0.0, 4.0) for _ in range(rng.randint(0, 2)))
    results: dict[str, Any] = {}
    answers: dict[str, int] = {}

    async def ask(message: OutboundMessage) -> None:
        key = message.idempotency_key
        try:
            results[key] = await channel.send(message, timeout=CEILING * 3)
        except Exception as exc:
            results[key] = exc
        answers[key] = answers.get(key, 0) + 1

    with trio.fail_after(CEILING * 5):
        async with open_channel(
            provider, window=rng.randint(1, 8), send_attempts=3, breaker_threshold=1000
        ) as channel:
            await provider.wait_connected(1)
            async with trio.open_nursery() as nursery:
                for message in messages:
                    nursery.start_soon(ask, message)
                    await trio.testing.wait_all_tasks_blocked()
                began = trio.current_time()
                for at in crashes:
                    await trio.sleep_until(began + at)
                    channel.ref.tell(object())
    assert sorted(answers) == sorted(m.idempotency_key for m in messages)
    assert set(answers.values()) == {1}
    accepted = [m.idempotency_key for _, m in provider.sent]
    assert len(accepted) == len(set(accepted)), accepted  # each at most once
    for key, result in results.items():
        assert isinstance(result, (SendResult, BadRecipient, SendFailed)), (key, result)
        assert isinstance(result, SendResult) == (key in accepted), (key, result)
    for peer in peers:
        asked = [m.idempotency_key for m in messages if m.peer == peer]
        attempted = _in_order_and_serial(provider, peer)
        # attempts follow the order asked (a key may be attempted several times in a row)
        firsts = [k for i, k in enumerate(attempted) if i == 0 or attempted[i - 1] != k]
        assert firsts == [k for k in asked if k in firsts], (peer, asked, attempted)
        assert [k for k in accepted if k in asked] == [k for k in asked if k in accepted]


async def test_at_once_fatal_error_fails_channel_and_answers_every_chain_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from actors import ChannelFailed

    results: dict[str, Any] = {}
    answers: dict[str, int] = {}
    async with at_once_channel() as (provider, channel):

        async def ask(message: OutboundMessage) -> None:
            await record_outcome(results, message.idempotency_key, channel.send(message))
            answers[message.idempotency_key] = answers.get(message.idempotency_key, 0) + 1

        async with trio.open_nursery() as nursery:
            for message in (out("a", "a1"), out("a", "a2"), out("b", "b1"), out("b", "b2")):
                nursery.start_soon(ask, message)
                await trio.testing.wait_all_tasks_blocked()
            from providers.base import FatalError

            provider.ack(FatalError("token revoked"))  # a1
            await trio.testing.wait_all_tasks_blocked()
            while provider.waiting:
                provider.ack()
                await trio.testing.wait_all_tasks_blocked()
    assert answers == {"a1": 1, "a2": 1, "b1": 1, "b2": 1}, answers
    assert isinstance(results["a1"], ChannelFailed) and isinstance(results["a2"], ChannelFailed)
    assert "a2" not in provider.accepted and "b2" not in provider.accepted


async def test_at_once_graceful_stop_finishes_the_wire_and_hands_back_the_rest(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from supervisors import Restart

    results: dict[str, Any] = {}
    async with at_once_channel(restart=Restart.TEMPORARY) as (provider, channel):
        async with trio.open_nursery() as nursery:
            await _ask_in_order(
                channel, [out("a", "a1"), out("a", "a2"), out("b", "b1")], results, nursery
            )

            async def stop() -> None:
                await channel.ref.stop()

            nursery.start_soon(stop)
            await trio.testing.wait_all_tasks_blocked()
            provider.ack()  # a1
            provider.ack()  # b1
    assert isinstance(results["a1"], SendResult) and isinstance(results["b1"], SendResult), results
    assert type(results["a2"]).__name__ == "ActorDead", results
    assert provider.accepted == ["a1", "b1"]
