"""Asks taken at once: ``Actor.receive_at_once`` runs in the asker's task.

The contract: only while the actor is idle (running, parked on an empty
mailbox, no stop asked for), so nothing is overtaken; ``AT_LEISURE`` or an
exception leaves the ask to the mailbox and ``receive`` (a defect crashes
the actor there, and the asker hears it); a refusal is raised in the asker;
a deferred ask is answered later, from any task; what is handled counts in
the actor's status. The actors wait on an event the test sets, not on time.
"""

from __future__ import annotations

import math
from typing import Any

import outcome
import pytest
import trio
import trio.lowlevel
import trio.testing

from actors import Actor, ActorCrashed, ActorDead, ActorState, lowlevel, open_actor_system
from tests.support import CEILING, yield_until


class Boom(Exception):
    """The error test actors raise on purpose."""


class Quick(Actor):
    """Takes ``("now", x)`` at once; defers ``("later", x)`` to a task; leaves the rest.

    The deferred answer and a ``("slow", x)`` message wait for ``gate``.
    """

    def __init__(self, log: list[Any], gate: trio.Event) -> None:
        self.log = log
        self.gate = gate

    def receive_at_once(self, msg: Any) -> Any:
        kind, value = msg
        self.log.append(("at once", value, trio.lowlevel.current_task()))
        if kind == "now":
            return value
        if kind == "refuse":
            return outcome.Error(Boom(value))
        if kind == "later":
            ask = lowlevel.defer_reply(self.ref)
            assert ask is not None
            self.start_task(self._answer, ask, value)
            return None
        if kind == "defect":
            raise Boom("a defect in receive_at_once")
        return lowlevel.AT_LEISURE

    async def _answer(self, ask: lowlevel.Ask, value: Any) -> None:
        await self.gate.wait()
        ask.reply(value)

    async def receive(self, msg: Any) -> Any:
        kind, value = msg
        self.log.append(("receive", value, trio.lowlevel.current_task()))
        if kind == "slow":
            await self.gate.wait()
        if kind == "defect":
            raise Boom("crashed in receive")
        return value


async def test_an_idle_actor_takes_an_ask_in_the_asker_s_task(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    gate = trio.Event()
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            ref = await system.spawn(Quick, log, gate)
            await yield_until(lambda: lowlevel.idle(ref))
            me = trio.lowlevel.current_task()
            assert await ref.ask(("now", 1)) == 1
            assert log == [("at once", 1, me)]
            with pytest.raises(Boom, match="no"):
                await ref.ask(("refuse", "no"))
            answers: list[Any] = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_ask_into, answers, ref, ("later", 3))
                await trio.testing.wait_all_tasks_blocked()
                assert answers == []  # taken over: answered by a task of the actor...
                gate.set()  # ...once it may
            assert answers == [3]
            assert await ref.ask(("queue", 4)) == 4  # left to receive, in the actor's task
            assert log[-2][:2] == ("at once", 4) and log[-1][:2] == ("receive", 4)
            assert log[-1][2] is not me
            assert ref.statistics().processed == 4
            await ref.stop()


async def test_a_busy_actor_gets_its_asks_through_the_mailbox_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    answers: list[Any] = []
    gate = trio.Event()
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            ref = await system.spawn(Quick, log, gate)
            await yield_until(lambda: lowlevel.idle(ref))
            async with trio.open_nursery() as nursery:
                ref.tell(("slow", "first"))  # busy until the gate opens
                for value in ("a", "b", "c"):
                    nursery.start_soon(_ask_into, answers, ref, ("now", value))
                    await trio.testing.wait_all_tasks_blocked()  # asked in this order
                gate.set()
            assert sorted(answers) == ["a", "b", "c"]  # (trio wakes its askers in any order)
            # None overtook the slow one: all waited in the mailbox for receive.
            assert [entry[:2] for entry in log] == [
                ("receive", "first"),
                ("receive", "a"),
                ("receive", "b"),
                ("receive", "c"),
            ]
            await ref.stop()


async def test_a_defect_in_receive_at_once_leaves_the_ask_to_receive_which_crashes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            ref = await system.spawn(Quick, log, trio.Event())
            await yield_until(lambda: lowlevel.idle(ref))
            with pytest.raises(ActorCrashed) as raised:
                await ref.ask(("defect", "x"))
            assert isinstance(raised.value.__cause__, Boom)
            assert [entry[:2] for entry in log] == [("at once", "x"), ("receive", "x")]
            await yield_until(lambda: ref.state is not ActorState.RUNNING)


async def test_a_stopping_actor_is_not_asked_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            ref = await system.spawn(Quick, log, trio.Event())
            await yield_until(lambda: lowlevel.idle(ref))
            lowlevel.request_stop(ref)
            with pytest.raises(ActorDead):  # queued behind the stop, which ends it
                await ref.ask(("now", "late"), timeout=1)
            assert ("at once", "late") not in [entry[:2] for entry in log]


class AnswersInHand(Actor):
    """Takes the ask over and answers it before ``receive_at_once`` returns."""

    def receive_at_once(self, msg: Any) -> Any:
        ask = lowlevel.defer_reply(self.ref)
        assert ask is not None
        if msg == "fail":
            ask.fail(Boom("refused in hand"))
        else:
            ask.reply(("answered", msg))
        return None

    async def receive(self, msg: Any) -> Any:
        return ("receive", msg)


async def test_an_ask_taken_over_and_answered_in_hand_gets_that_answer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Answering a deferred ask wakes its asker; at once, the asker is the task
    # running: the answer is kept for it instead (waking it would crash trio).
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            ref = await system.spawn(AnswersInHand)
            await yield_until(lambda: lowlevel.idle(ref))
            assert await ref.ask("x") == ("answered", "x")
            with pytest.raises(Boom, match="refused in hand"):
                await ref.ask("fail")
            # Parked, this task would meet a stray wake-up (trio fails the run).
            await trio.testing.wait_all_tasks_blocked()
            assert ref.statistics().processed == 2
            await ref.stop()


class DefectAfterTakingOver(Actor):
    """Takes the ask over, starts the task that answers it (once ``gate`` is set), then raises."""

    def __init__(self, log: list[Any], gate: trio.Event) -> None:
        self.log = log
        self.gate = gate

    def receive_at_once(self, msg: Any) -> Any:
        ask = lowlevel.defer_reply(self.ref)
        assert ask is not None
        self.start_task(self._answer, ask, msg)
        raise Boom("a defect after taking the ask over")

    async def _answer(self, ask: lowlevel.Ask, msg: Any) -> None:
        await self.gate.wait()
        ask.reply(("late", msg))
        self.log.append(("answered late", msg))

    async def receive(self, msg: Any) -> Any:
        self.log.append(("receive", msg))
        return ("receive", msg)


async def test_a_defect_after_taking_an_ask_over_fails_it_once_and_queues_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    gate = trio.Event()
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            ref = await system.spawn(DefectAfterTakingOver, log, gate)
            await yield_until(lambda: lowlevel.idle(ref))
            with pytest.raises(ActorCrashed) as raised:
                await ref.ask("m")
            assert isinstance(raised.value.__cause__, Boom)
            gate.set()  # the holder answers late, while this task is parked:
            await trio.testing.wait_all_tasks_blocked()  # a stray wake-up would fail the run
            # Answered into nothing, and not handled a second time by receive.
            assert log == [("answered late", "m")]
            await ref.stop()


class Gated(Actor):
    """Handles each message once ``gate`` is set."""

    def __init__(self, log: list[Any], gate: trio.Event) -> None:
        self.log = log
        self.gate = gate

    async def receive(self, msg: Any) -> Any:
        await self.gate.wait()
        self.log.append(msg)
        return msg


async def _ask_into(answers: list[Any], ref: Any, msg: Any) -> None:
    answers.append(await ref.ask(msg, timeout=30))


@pytest.mark.parametrize("seconds", [-1.0, math.nan])
async def test_a_status_ask_with_a_timeout_that_is_no_duration_is_refused_before_it_is_queued(
    autojump_clock: trio.testing.MockClock, seconds: float
) -> None:
    log: list[Any] = []
    gate = trio.Event()
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            ref = await system.spawn(Gated, log, gate)
            ref.tell("busy")
            with pytest.raises(ValueError, match="timeout is seconds >= 0"):
                await ref.ask_status(timeout=seconds)
            gate.set()  # the actor goes on while this task is parked:
            await trio.testing.wait_all_tasks_blocked()  # a stray answer would fail the run
            assert log == ["busy"]
            assert ref.statistics().mailbox.system_depth == 0
            await ref.stop()
