"""A send's deadline without a cancel scope: the ask's watch and the node's one timer.

The contract (``actors.lowlevel.AskWatch``, ``runtime.drain.SendTracker``):
the kernel hands a watch the pending ask as its asker parks, and the watch
may fail it from any task; a bound that ran out before the asker parked is
raised as it parks; an answer that comes after goes nowhere. The node's
tracker stops each send at its deadline, earliest first, from one task, and
keeps nothing of the sends that finished. A send enters no cancel scope in
its caller's task. Virtual time throughout.
"""

from __future__ import annotations

import gc
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from actors import Actor, open_actor_system
from actors import lowlevel as kernel
from providers.base import Media, MediaKind, OutboundMessage
from providers.simulated import Fixed, SimulatedProvider
from runtime import open_node
from runtime.drain import Pending, SendStopped, SendTracker

from .support import CEILING, record_outcome, yield_until
from .test_actor_at_once import Gated
from .test_node_embedded import wait_connected
from .test_node_errors import FAST, config, sim


class Holding(Actor):
    """Takes every ask over and answers none until the test does (``held``)."""

    def __init__(self, held: list[kernel.Ask]) -> None:
        self.held = held

    def receive_at_once(self, msg: Any) -> Any:
        ask = kernel.defer_reply(self.ref)
        assert ask is not None
        self.held.append(ask)
        return None

    async def receive(self, msg: Any) -> Any:
        return msg


class Watch:
    """An ``AskWatch`` the test drives: it keeps the ask and refuses with ``refusal``."""

    def __init__(self, refusal: BaseException | None = None) -> None:
        self.refusal = refusal
        self.asks: list[kernel.Ask] = []

    def parking(self, ask: kernel.Ask) -> BaseException | None:
        self.asks.append(ask)
        return self.refusal


class Stopped(Exception):
    """What the test's watch fails an ask with."""


async def test_a_watch_fails_a_parked_ask_and_the_late_answer_goes_nowhere(
    autojump_clock: trio.testing.MockClock,
) -> None:
    held: list[kernel.Ask] = []
    watch = Watch()
    results: dict[str, Any] = {}
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            ref = await system.spawn(Holding, held)
            await yield_until(lambda: kernel.idle(ref))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(record_outcome, results, "a", ref.ask("a", watch=watch))
                await yield_until(lambda: bool(watch.asks))
                assert watch.asks == held  # the ask the actor holds, handed over as it parked
                watch.asks[0].fail(Stopped("bound ran out"))
            assert isinstance(results["a"], Stopped)
            held[0].reply("too late")  # the asker left: nothing happens
            assert results["a"].args == ("bound ran out",)
            assert kernel.idle(ref) and ref.alive


async def test_a_watch_that_refuses_as_the_asker_parks_is_raised_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    held: list[kernel.Ask] = []
    watch = Watch(refusal=Stopped("ran out before it parked"))
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            ref = await system.spawn(Holding, held)
            await yield_until(lambda: kernel.idle(ref))
            began = trio.current_time()
            with pytest.raises(Stopped, match="ran out before it parked"):
                await ref.ask("a", watch=watch)
            assert trio.current_time() == began
            assert len(held) == 1 and held[0].task is None  # abandoned: its answer goes nowhere
            held[0].reply("late")
            assert ref.alive


async def test_a_watch_fails_an_ask_that_waits_in_the_mailbox(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gate = trio.Event()
    handled: list[Any] = []
    watch = Watch()
    results: dict[str, Any] = {}
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            ref = await system.spawn(Gated, handled, gate)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(record_outcome, results, "first", ref.ask("first"))
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(
                    record_outcome, results, "second", ref.ask("second", watch=watch)
                )
                await yield_until(lambda: bool(watch.asks))
                watch.asks[0].fail(Stopped("gave up"))
                await trio.testing.wait_all_tasks_blocked()
                assert isinstance(results["second"], Stopped)
                gate.set()
            # The actor still handles what it had queued (as after a cancelled ask);
            # its answer to the abandoned ask goes nowhere.
            await yield_until(lambda: handled == ["first", "second"])
            assert results["first"] == "first"
            assert isinstance(results["second"], Stopped)


async def _ask_held(ref: Any, pending: Pending, stops: list[tuple[str, float]]) -> None:
    try:
        await ref.ask(pending.message.idempotency_key, timeout=math.inf, watch=pending)
    except SendStopped as exc:
        assert not exc.cut
        stops.append((pending.message.idempotency_key, trio.current_time()))


@asynccontextmanager
async def held_asks() -> AsyncIterator[tuple[SendTracker, Any, list[kernel.Ask]]]:
    """A tracker whose timer runs, and an actor that holds every ask it is sent."""
    held: list[kernel.Ask] = []
    tracker = SendTracker()
    with trio.fail_after(CEILING):
        async with open_actor_system() as system, trio.open_nursery() as services:
            await services.start(tracker.run)
            ref = await system.spawn(Holding, held)
            await yield_until(lambda: kernel.idle(ref))
            yield tracker, ref, held
            services.cancel_scope.cancel()


async def test_the_tracker_stops_each_send_at_its_deadline_earliest_first(
    autojump_clock: trio.testing.MockClock,
) -> None:
    stops: list[tuple[str, float]] = []
    async with held_asks() as (tracker, ref, held):
        start = trio.current_time()

        async def send(key: str, after: float) -> None:
            message = OutboundMessage(peer="p", idempotency_key=key, text="x")
            with tracker.track("a", message, deadline=start + after) as pending:
                await _ask_held(ref, pending, stops)

        async with trio.open_nursery() as nursery:
            # Each new deadline but the last is earlier than all before it:
            # the timer's sleep is shortened for each.
            for key, after in [("k10", 10.0), ("k5", 5.0), ("k1", 1.0), ("k7", 7.0)]:
                nursery.start_soon(send, key, after)
                await trio.testing.wait_all_tasks_blocked()
            # One answered before its deadline is not stopped.
            nursery.start_soon(send, "answered", 3.0)
            await yield_until(lambda: len(held) == 5)
            held[4].reply("ok")
        assert stops == [
            ("k1", start + 1.0),
            ("k5", start + 5.0),
            ("k7", start + 7.0),
            ("k10", start + 10.0),
        ]
        assert len(tracker) == 0


async def test_a_send_whose_deadline_passed_before_it_parked_is_stopped_as_it_parks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    stops: list[tuple[str, float]] = []
    message = OutboundMessage(peer="p", idempotency_key="late", text="x")
    async with held_asks() as (tracker, ref, _):
        # A deadline that has passed already: the timer stops the send while
        # its caller still runs, before it asks.
        with tracker.track("a", message, deadline=trio.current_time() - 1.0) as pending:
            await yield_until(lambda: pending.stopped is not None)
            assert pending.stopped is not None and not pending.stopped.cut
            await _ask_held(ref, pending, stops)
        assert [key for key, _ in stops] == ["late"]


MINE = "test_finished_sends_are_not_kept_for_their_deadlines"


async def test_finished_sends_are_not_kept_for_their_deadlines(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A finished send's deadline stays in the heap until it comes up, but
    # holds nothing of the send: its message (megabytes, maybe) is freed
    # when it finishes, as it was under a cancel scope of its own.
    tracker = SendTracker()
    with trio.fail_after(CEILING):
        async with trio.open_nursery() as services:
            await services.start(tracker.run)
            live = []
            for i in range(5_000):
                message = OutboundMessage(peer="p", idempotency_key=f"k{i}", text="x" * 1_000)
                tracked = tracker.track(MINE, message, deadline=trio.current_time() + 30.0)
                if i % 1_000 == 0:  # a few stay unfinished
                    live.append(tracked.__enter__())
                else:
                    with tracked:
                        pass
            del tracked
            gc.collect()
            kept = [
                obj for obj in gc.get_objects() if type(obj) is Pending and obj.channel_id == MINE
            ]
            assert len(kept) == len(live) == 5
            assert {id(obj) for obj in kept} == {id(obj) for obj in live}
            services.cancel_scope.cancel()


UPLOAD = "test_a_node_keeps_nothing_of_the_messages_it_sent.bin"


async def test_a_node_keeps_nothing_of_the_messages_it_sent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = SimulatedProvider(latency=Fixed(seconds=0.001), connect_latency=Fixed(seconds=0.0))
    with trio.fail_after(CEILING):
        async with open_node(
            config(sim("a")), channel_defaults=FAST, providers={"simulated": provider}
        ) as node:
            await wait_connected(node, 1)
            for i in range(100):
                media = Media(kind=MediaKind.DOCUMENT, content=b"x" * 100_000, filename=UPLOAD)
                message = OutboundMessage(peer="p", idempotency_key=f"k{i}", media=media)
                await node.send("a", message, timeout=60.0)
            assert len(provider.sent) == 100
            provider.sent.clear()  # the test's record of them
            del media, message
            gc.collect()
            held = sum(
                len(obj.content or b"")
                for obj in gc.get_objects()
                if type(obj) is Media and obj.filename == UPLOAD  # this test's, not another's
            )
            assert held == 0, f"{held:,} bytes of sent uploads still held"


async def test_a_send_enters_no_cancel_scope_in_its_caller_s_task(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, each send entered one (its deadline and the drain's cut): about
    # 7 % of a node's CPU at 2,000 msgs/s.
    provider = SimulatedProvider(latency=Fixed(seconds=0.001), connect_latency=Fixed(seconds=0.0))
    enter = trio.CancelScope.__enter__
    mine = 0

    def counting(scope: trio.CancelScope) -> trio.CancelScope:
        nonlocal mine
        mine += trio.lowlevel.current_task() is caller
        return enter(scope)

    with trio.fail_after(CEILING):
        async with open_node(
            config(sim("a")), channel_defaults=FAST, providers={"simulated": provider}
        ) as node:
            await wait_connected(node, 1)
            caller = trio.lowlevel.current_task()
            monkeypatch.setattr(trio.CancelScope, "__enter__", counting)
            for i in range(100):
                message = OutboundMessage(peer="p", idempotency_key=f"k{i}", text="x")
                await node.send("a", message, timeout=5.0)
            monkeypatch.undo()
    assert len(provider.sent) == 100
    assert mine == 0
