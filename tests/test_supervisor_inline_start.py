"""start_child at the caller's site: an idle supervisor, a child that starts without waiting.

The request is handled as the supervisor's task would handle it, without the
trip through its mailbox; anything else (a factory whose class is unknown, an
``on_start`` that awaits, a supervisor with mail queued) still goes through it.
The answers are the same either way: the child's ref, or the same refusals.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing

from actors import Actor, ActorState, lowlevel, open_actor_system
from supervisors import AlreadyStarted, ChildSpec, StartChildFailed, open_supervisor
from tests.support import CEILING


class Boom(Exception):
    """The error test actors raise on purpose."""


class Worker(Actor):
    def __init__(self, log: list[Any], fail: bool = False) -> None:
        self.log = log
        self.fail = fail

    def on_start(self) -> None:
        self.log.append("start")
        if self.fail:
            raise Boom("no")

    async def receive(self, msg: Any) -> Any:
        return msg


class AwaitingWorker(Worker):
    async def on_start(self) -> None:  # type: ignore[override]
        await trio.lowlevel.checkpoint()
        super().on_start()


class TaskSteps(trio.abc.Instrument):
    """Counts the steps of the tasks in ``tasks``."""

    def __init__(self) -> None:
        self.tasks: set[trio.lowlevel.Task] = set()
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task in self.tasks:
            self.steps += 1


def test_a_factory_says_its_class_when_it_is_one_or_a_partial_of_one() -> None:
    partial = functools.partial(Worker, [])
    assert lowlevel.factory_class(Worker) is Worker
    assert lowlevel.factory_class(functools.partial(partial, True)) is Worker
    assert lowlevel.factory_class(lambda: Worker([])) is None
    assert lowlevel.starts_without_waiting(partial)
    assert not lowlevel.starts_without_waiting(functools.partial(AwaitingWorker, []))
    assert not lowlevel.starts_without_waiting(lambda: Worker([]))


@pytest.mark.parametrize(
    ("factory", "through_mailbox"),
    [
        (functools.partial(Worker, []), False),
        (functools.partial(AwaitingWorker, []), True),
        (lambda: Worker([]), True),  # which class it makes is unknown
    ],
    ids=["known", "awaits", "closure"],
)
async def test_an_idle_supervisor_starts_a_known_child_without_its_task(
    autojump_clock: trio.testing.MockClock, factory: Any, through_mailbox: bool
) -> None:
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            async with open_supervisor(system, []) as sup:
                await sup.start_child(ChildSpec(id="first", start=functools.partial(Worker, [])))
                steps = TaskSteps()
                parked = sup.ref._parked
                assert parked is not None and lowlevel.idle(sup.ref)
                steps.tasks.add(parked)
                trio.lowlevel.add_instrument(steps)
                try:
                    ref = await sup.start_child(ChildSpec(id="second", start=factory))
                finally:
                    trio.lowlevel.remove_instrument(steps)
                assert (steps.steps > 0) is through_mailbox
                assert ref.state is ActorState.RUNNING
                assert await sup.whereis_child("second") is ref
                assert [c.id for c in await sup.which_children()] == ["first", "second"]
                assert (await sup.count_children()).active == 2


async def test_refusals_at_the_callers_site_are_those_of_the_mailbox(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            async with open_supervisor(system, []) as sup:
                spec = ChildSpec(id="w", start=functools.partial(Worker, log), name="w")
                ref = await sup.start_child(spec)
                with pytest.raises(AlreadyStarted) as taken:
                    await sup.start_child(spec)
                assert taken.value.ref is ref
                with pytest.raises(StartChildFailed, match="failed to start") as failed:
                    await sup.start_child(
                        ChildSpec(id="bad", start=functools.partial(Worker, log, True))
                    )
                assert isinstance(failed.value.__cause__, Boom)
                with pytest.raises(StartChildFailed, match="already held"):
                    await sup.start_child(
                        ChildSpec(id="w2", start=functools.partial(Worker, log), name="w")
                    )
                assert [c.id for c in await sup.which_children()] == ["w"]
                assert system.statistics().actors == 2  # the supervisor and "w"
    assert log == ["start", "start"]


async def test_a_cancelled_start_child_starts_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            async with open_supervisor(system, []) as sup:
                with trio.CancelScope() as scope:
                    scope.cancel()
                    await sup.start_child(ChildSpec(id="w", start=functools.partial(Worker, log)))
                assert scope.cancelled_caught
                assert await sup.which_children() == []
    assert log == []


async def test_a_supervisor_with_mail_queued_is_not_idle(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            async with open_supervisor(system, []) as sup:
                assert lowlevel.idle(sup.ref)
                sup.ref.tell("not understood")  # queued: it must be handled first
                assert not lowlevel.idle(sup.ref)
                ref = await sup.start_child(ChildSpec(id="w", start=functools.partial(Worker, [])))
                assert ref.state is ActorState.RUNNING


@pytest.mark.parametrize(
    ("worker", "through_mailbox"),
    [(Worker, False), (AwaitingWorker, True)],
    ids=["at-once", "awaits"],
)
async def test_start_children_starts_each_in_order_and_answers_each(
    autojump_clock: trio.testing.MockClock, worker: type[Worker], through_mailbox: bool
) -> None:
    log: list[Any] = []
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            async with open_supervisor(system, []) as sup:
                first = await sup.start_child(
                    ChildSpec(id="a", start=functools.partial(Worker, []))
                )
                steps = TaskSteps()
                parked = sup.ref._parked
                assert parked is not None
                steps.tasks.add(parked)
                trio.lowlevel.add_instrument(steps)
                try:
                    answers = await sup.start_children(
                        [
                            ChildSpec(id="b", start=functools.partial(worker, log)),
                            ChildSpec(id="a", start=functools.partial(worker, log)),  # taken
                            ChildSpec(id="bad", start=functools.partial(worker, log, True)),
                            ChildSpec(id="c", start=functools.partial(worker, log)),
                        ]
                    )
                finally:
                    trio.lowlevel.remove_instrument(steps)
                assert (steps.steps > 0) is through_mailbox
                b, taken, bad, c = answers
                assert isinstance(taken, AlreadyStarted) and taken.ref is first
                assert isinstance(bad, StartChildFailed) and isinstance(bad.__cause__, Boom)
                assert await sup.whereis_child("b") is b
                assert await sup.whereis_child("c") is c
                # The children after a refusal started; the order is the one given.
                assert [child.id for child in await sup.which_children()] == ["a", "b", "c"]
                assert await sup.start_children([]) == []
    assert log == ["start", "start", "start"]
