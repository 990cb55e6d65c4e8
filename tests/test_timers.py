"""Actor timers: once and periodic, in virtual time, owned by one incarnation."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from actors import Actor, ActorState, Exit, NotInActorContext, Timer, open_actor_system
from tests.support import CEILING


class Ticker:
    """Starts the timers in ``plan`` in on_start; logs (incarnation, time, msg).

    ``plan`` items are ``(delay, msg, interval)``. A message ``("cancel", i)``
    cancels the i-th timer; ``"crash"`` raises.
    """

    def __init__(self, log: list[Any], plan: list[tuple[float, Any, float | None]]) -> None:
        self.log = log
        self.plan = plan
        self.timers: list[Timer] = []

    def begin(self) -> None:
        for delay, msg, interval in self.plan:
            self.timers.append(self.start_timer(delay, msg, interval=interval))  # type: ignore[attr-defined]

    def handle(self, msg: Any) -> None:
        self.log.append((self.ref.incarnation, trio.current_time(), msg))  # type: ignore[attr-defined]
        if isinstance(msg, tuple) and msg[0] == "cancel":
            self.timers[msg[1]].cancel()
        if msg == "crash":
            raise RuntimeError("crash")


class PlainTicker(Ticker, Actor):
    def on_start(self) -> None:
        self.begin()

    def receive(self, msg: Any) -> None:
        self.handle(msg)


class AsyncTicker(Ticker, Actor):
    async def on_start(self) -> None:
        self.begin()

    async def receive(self, msg: Any) -> None:
        self.handle(msg)


@pytest.fixture(params=[PlainTicker, AsyncTicker], ids=["plain", "async"])
def ticker(request: pytest.FixtureRequest) -> type[Actor]:
    cls: type[Actor] = request.param
    return cls


async def test_a_once_timer_fires_once_at_its_deadline(
    ticker: type[Actor], autojump_clock: trio.testing.MockClock
) -> None:
    log: list[Any] = []
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            await trio.sleep(0.25)
            ref = await system.spawn(ticker, log, [(1.5, "ding", None), (0.0, "now", None)])
            await trio.sleep(10)
            assert log == [(1, 0.25, "now"), (1, 1.75, "ding")]
            assert system.statistics().timers == 0
            assert system.statistics().timers_fired == 2
            assert ref.state is ActorState.RUNNING


async def test_a_periodic_timer_fires_at_a_fixed_rate_until_cancelled(
    ticker: type[Actor], autojump_clock: trio.testing.MockClock
) -> None:
    log: list[Any] = []
    plan = [(1.0, "tick", 0.5), (2.75, ("cancel", 0), None)]
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            await system.spawn(ticker, log, plan)
            await trio.sleep(10)
    assert log == [
        (1, 1.0, "tick"),
        (1, 1.5, "tick"),
        (1, 2.0, "tick"),
        (1, 2.5, "tick"),
        (1, 2.75, ("cancel", 0)),
    ]


async def test_timer_cancel_before_it_fires_and_cancel_is_idempotent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            ref = await system.spawn(PlainTicker, log, [(1.0, "never", None), (2.0, "kept", None)])
            inst = ref._instance
            assert isinstance(inst, PlainTicker)
            timer = inst.timers[0]
            assert repr(timer) == "<Timer once at 1.000000 active msg='never'>"
            timer.cancel()
            timer.cancel()
            assert not timer.active
            assert "cancelled" in repr(timer)
            assert system.statistics().timers == 1
            await trio.sleep(5)
            assert log == [(1, 2.0, "kept")]
            assert system.statistics().timers_fired == 1


async def test_timers_are_cancelled_when_the_actor_stops(
    ticker: type[Actor], autojump_clock: trio.testing.MockClock
) -> None:
    log: list[Any] = []
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            ref = await system.spawn(ticker, log, [(1.0, "tick", 1.0), (3.0, "once", None)])
            await trio.sleep(2.5)
            await ref.stop()
            assert system.statistics().timers == 0
            await trio.sleep(10)
            assert log == [(1, 1.0, "tick"), (1, 2.0, "tick")]
            assert system.statistics().timers_fired == 2
            assert system.dead_letters == type(system.dead_letters)()


async def test_timers_are_cancelled_when_the_actor_crashes(
    ticker: type[Actor], autojump_clock: trio.testing.MockClock
) -> None:
    log: list[Any] = []
    plan = [(1.0, "tick", 1.0), (2.5, "crash", None)]
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            ref = await system.spawn(ticker, log, plan)
            await trio.sleep(10)
            assert ref.state is ActorState.FAILED
            assert system.statistics().timers == 0
    assert log == [(1, 1.0, "tick"), (1, 2.0, "tick"), (1, 2.5, "crash")]


async def test_timers_of_an_incarnation_are_cancelled_when_it_restarts(
    ticker: type[Actor], autojump_clock: trio.testing.MockClock
) -> None:
    log: list[Any] = []
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            ref = await system.spawn(ticker, log, [(1.0, "tick", 1.0), (2.75, "once", None)])
            await trio.sleep(2.5)
            ref.restart()  # the new incarnation starts its own timers at 2.5
            await trio.sleep(3.25)
            assert system.statistics().timers == 1
            await ref.stop()
    # without the cancel, incarnation 1 would still tick at 3, 4, 5 and say "once" at 2.75
    assert log == [
        (1, 1.0, "tick"),
        (1, 2.0, "tick"),
        (2, 3.5, "tick"),
        (2, 4.5, "tick"),
        (2, 5.25, "once"),
        (2, 5.5, "tick"),
    ]


async def test_a_timer_started_inside_receive_fires_and_carries_none(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Later(Actor):
        def __init__(self, log: list[Any]) -> None:
            self.log = log

        def receive(self, msg: Any) -> None:
            self.log.append((trio.current_time(), msg))
            if msg == "arm":
                self.start_timer(0.5, None)

    log: list[Any] = []
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            ref = await system.spawn(Later, log)
            await trio.sleep(1)
            ref.tell("arm")
            await trio.sleep(1)
    assert log == [(1.0, "arm"), (1.5, None)]


async def test_start_timer_outside_a_running_incarnation_and_bad_delays_are_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    errors: list[BaseException] = []

    class Late(Actor):
        def receive(self, msg: Any) -> Any:
            for delay, interval in ((-1.0, None), (float("nan"), None), (1.0, 0.0)):
                try:
                    self.start_timer(delay, "x", interval=interval)
                except ValueError as exc:
                    errors.append(exc)
            return None

        def on_stop(self, exit: Exit) -> None:
            try:
                self.start_timer(1.0, "too late")
            except NotInActorContext as exc:
                errors.append(exc)

    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            ref = await system.spawn(Late)
            await ref.ask("go")
            await ref.stop()
            assert system.statistics().timers == 0
    assert [type(e) for e in errors] == [ValueError, ValueError, ValueError, NotInActorContext]
    assert "cannot start a timer" in str(errors[-1])


async def test_the_timer_heap_stays_bounded_under_start_and_stop_churn(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    with trio.fail_after(3600 + CEILING):
        async with open_actor_system() as system:
            keeper = await system.spawn(PlainTicker, log, [(3600.0, "hourly", 3600.0)])
            for _ in range(10_000):
                ref = await system.spawn(PlainTicker, log, [(60.0, "a", None), (120.0, "b", 1.0)])
                await ref.stop()
            service = system._timers
            assert len(service) == system.statistics().timers == 1
            assert len(service._heap) <= 2 * 64 + 2  # cancelled entries are compacted
            await trio.sleep(3601)
            assert log == [(1, 3600.0, "hourly")]
            await keeper.stop()
            assert system.statistics().timers == 0
