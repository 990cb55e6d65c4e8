"""Eager starts: a task-mode actor whose ``on_start`` is a plain function.

Its ``on_start`` runs in the starter's task and its own task is spawned
without the starter waiting for it (no ``Nursery.start``). The contract is
the one of every actor: tasks started in ``on_start`` run with the
incarnation, mail sent before its task runs is handled in order, a start
failure is ``StartFailed``, a kill before the task runs ends it with
nothing of it started, and a supervisor restarts it as any other child.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing

from actors import Actor, ActorState, Exit, ExitKind, StartFailed, lowlevel, open_actor_system
from supervisors import ChildSpec, open_supervisor
from tests.support import CEILING, yield_until


class Boom(Exception):
    """The error test actors raise on purpose."""


class Eager(Actor):
    """A plain ``on_start`` that starts a task; async ``receive``."""

    def __init__(self, log: list[Any], *, fail_start: bool = False) -> None:
        self.log = log
        self.fail_start = fail_start

    def on_start(self) -> None:
        self.log.append(("start", id(self)))
        self.start_task(self.ticker)
        if self.fail_start:
            raise Boom("no")

    async def ticker(self) -> None:
        self.log.append(("ticker", trio.current_time()))
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            self.log.append(("ticker cancelled", trio.current_time()))
            raise

    async def receive(self, msg: Any) -> Any:
        self.log.append(("recv", msg))
        if msg == "crash":
            raise Boom("crashed on purpose")
        await trio.sleep(1)
        return msg

    def on_stop(self, exit: Exit) -> None:
        self.log.append(("stop", exit.kind))


class AwaitingStart(Eager):
    async def on_start(self) -> None:  # type: ignore[override]
        await trio.lowlevel.checkpoint()
        super().on_start()


class StepCounter(trio.abc.Instrument):
    """Counts the steps of one task (each resumption after it yielded)."""

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.steps += 1


def test_a_plain_on_start_with_an_async_hook_is_an_eager_start() -> None:
    assert Eager._needs_task and not Eager._async_on_start
    assert AwaitingStart._async_on_start


@pytest.mark.parametrize(("cls", "suspends"), [(Eager, False), (AwaitingStart, True)])
async def test_an_eager_start_does_not_suspend_the_starter(
    autojump_clock: trio.testing.MockClock, cls: type[Eager], suspends: bool
) -> None:
    log: list[Any] = []
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            counter = StepCounter(trio.lowlevel.current_task())
            trio.lowlevel.add_instrument(counter)
            try:
                ref = await system.spawn(cls, log)
            finally:
                trio.lowlevel.remove_instrument(counter)
            assert (counter.steps > 0) is suspends
            assert ref.state is ActorState.RUNNING
            assert log[0][0] == "start"
            await ref.stop()


async def test_tasks_of_on_start_run_with_the_incarnation_and_early_mail_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            ref = await system.spawn(Eager, log)
            assert [entry[0] for entry in log] == ["start"]  # its task has not run yet
            ref.tell("a")
            assert await ref.ask("b", timeout=10) == "b"
            await ref.stop()
    assert ("ticker", 0.0) in log
    assert [entry for entry in log if entry[0] != "ticker"][1:] == [
        ("recv", "a"),
        ("recv", "b"),
        ("ticker cancelled", 2.0),
        ("stop", ExitKind.SHUTDOWN),
    ]


async def test_a_kill_before_the_task_runs_ends_it_with_nothing_started(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            ref = await system.spawn(Eager, log)
            lowlevel.kill_incarnation(ref)
            exit = await ref.wait_terminated()
            assert exit.kind is ExitKind.KILLED
            await trio.testing.wait_all_tasks_blocked()  # whatever would start has run
    assert [entry[0] for entry in log] == ["start"]  # no ticker, no on_stop


async def test_a_failing_plain_on_start_raises_start_failed_and_starts_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            with pytest.raises(StartFailed, match="on_start raised") as info:
                await system.spawn(lambda: Eager(log, fail_start=True), name="bad")
            assert isinstance(info.value.__cause__, Boom)
            assert system.statistics().actors == 0
            assert system.whereis("bad") is None
            await trio.testing.wait_all_tasks_blocked()  # whatever would start has run
    assert [entry[0] for entry in log] == ["start"]


async def test_a_supervisor_restarts_an_eager_child_keeping_its_mailbox(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            spec = ChildSpec(id="c", start=lambda: Eager(log))
            async with open_supervisor(system, [spec], intensity=5, period=10.0) as sup:
                ref = await sup.whereis_child("c")
                assert ref is not None
                ref.tell("crash")
                ref.tell("after")
                await yield_until(lambda: ("recv", "after") in log)
                assert await sup.whereis_child("c") is ref
                starts = [entry for entry in log if entry[0] == "start"]
                assert len(starts) == 2 and starts[0][1] != starts[1][1]
                assert log.count(("stop", ExitKind.CRASHED)) == 1
                assert [entry for entry in log if entry[0] == "ticker cancelled"] == [
                    ("ticker cancelled", 0.0)
                ]


async def test_a_supervisor_reports_a_child_whose_plain_on_start_fails(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from supervisors import StartChildFailed

    log: list[Any] = []
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            async with open_supervisor(system, []) as sup:
                with pytest.raises(StartChildFailed, match="failed to start") as info:
                    await sup.start_child(
                        ChildSpec(id="bad", start=lambda: Eager(log, fail_start=True))
                    )
                assert isinstance(info.value.__cause__, Boom)
                assert await sup.which_children() == []


async def test_the_task_of_an_eager_start_is_the_incarnation_itself(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Ten thousand channels each keep their task for hours: no wrapper frame
    # around the incarnation's own coroutine, and no list of the tasks its
    # on_start asked for.
    log: list[Any] = []
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            ref = await system.spawn(Eager, log)
            await yield_until(lambda: ref._parked is not None)
            task = ref._parked
            assert task is not None
            assert task.coro.cr_code.co_name == "run_task"
            assert task.coro.cr_frame.f_locals["early"] == []
            await ref.stop()
