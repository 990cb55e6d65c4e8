"""A task-mode incarnation's kill: the nursery's own cancel scope, not one of its own.

A node runs ten thousand task-mode actors (every channel), each alive for
hours, so an incarnation keeps one cancel scope (its nursery's) instead of a
kill scope around the nursery as well (issue 12). A kill still ends the
incarnation wherever it lands, without ``on_stop`` once the mailbox loop has
begun to wind down, and reports ``KILLED``. In virtual time.
"""

from __future__ import annotations

import gc
from typing import Any

import pytest
import trio
import trio.testing

from actors import Actor, Exit, ExitKind, StartFailed, open_actor_system
from tests.support import CEILING

KILLED = Exit(kind=ExitKind.KILLED)


class Waiting(Actor):
    """A task-mode actor that only waits for mail."""

    async def receive(self, msg: Any) -> None:
        await trio.lowlevel.checkpoint()


def _cancel_scopes() -> int:
    gc.collect()
    return sum(isinstance(obj, trio.CancelScope) for obj in gc.get_objects())


async def test_a_running_task_mode_actor_keeps_one_cancel_scope(
    autojump_clock: trio.testing.MockClock,
) -> None:
    count = 20
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            before = _cancel_scopes()
            refs = [await system.spawn(Waiting) for _ in range(count)]
            await trio.testing.wait_all_tasks_blocked()
            assert _cancel_scopes() - before == count  # each its nursery's, no more
            for ref in refs:
                await ref.stop()


class Recorded(Actor):
    """Records its hooks; ``hang`` says which one never returns."""

    def __init__(self, log: list[str], hang: str, starting: list[Any] | None = None) -> None:
        self.log = log
        self.hang = hang
        self.starting = starting  # where a hanging on_start puts its ref

    async def on_start(self) -> None:
        self.log.append("start")
        if self.hang == "on_start":
            assert self.starting is not None
            self.starting.append(self.ref)
            await trio.sleep_forever()
        self.start_task(self._owned)

    async def _owned(self) -> None:
        try:
            await trio.sleep_forever()
        finally:
            if self.hang == "owned_cleanup":
                with trio.CancelScope(shield=True):
                    await trio.sleep(10.0)  # a cleanup the nursery waits for

    async def receive(self, msg: Any) -> None:
        await trio.lowlevel.checkpoint()

    async def on_stopping(self, exit: Exit) -> None:
        self.log.append("stopping")
        if self.hang == "on_stopping":
            await trio.sleep_forever()

    async def on_stop(self, exit: Exit) -> None:
        self.log.append("stop")
        if self.hang == "on_stop":
            await trio.sleep_forever()
        self.log.append("stopped")


async def test_a_kill_during_on_stopping_skips_on_stop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            ref = await system.spawn(Recorded, log, "on_stopping")
            await ref.stop(timeout=1.0)
            assert await ref.wait_terminated() == KILLED
    assert log == ["start", "stopping"]


async def test_a_kill_while_the_owned_tasks_wind_down_skips_on_stop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            ref = await system.spawn(Recorded, log, "owned_cleanup")
            await ref.stop(timeout=1.0)  # the owned task's cleanup takes 10 s
            assert await ref.wait_terminated() == KILLED
            assert trio.current_time() == 10.0  # a shielded cleanup is not cut short
    assert log == ["start", "stopping"]


async def test_a_kill_during_on_stop_cuts_it_short(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            ref = await system.spawn(Recorded, log, "on_stop")
            await ref.stop(timeout=1.0)
            assert await ref.wait_terminated() == KILLED
    assert log == ["start", "stopping", "stop"]


async def test_a_stop_that_needs_no_kill_runs_every_hook(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            ref = await system.spawn(Recorded, log, "")
            await ref.stop(timeout=1.0)
            assert (await ref.wait_terminated()).kind is ExitKind.SHUTDOWN
    assert log == ["start", "stopping", "stop", "stopped"]


async def test_a_kill_during_on_start_fails_the_start(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    starting: list[Any] = []

    async def kill_in_a_second() -> None:
        await trio.sleep(1.0)
        (ref,) = starting
        ref.kill()

    with trio.fail_after(CEILING):
        async with open_actor_system() as system, trio.open_nursery() as nursery:
            nursery.start_soon(kill_in_a_second)
            with pytest.raises(StartFailed, match="killed before on_start finished"):
                await system.spawn(Recorded, log, "on_start", starting)
            assert trio.current_time() == 1.0
    assert log == ["start"]
