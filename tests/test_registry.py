"""The name registry, and "a stopped actor leaves no trace" (no leak at scale)."""

from __future__ import annotations

import gc
import sys
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing

from actors import (
    Actor,
    ActorNotFound,
    ActorState,
    Exit,
    ExitKind,
    NameTaken,
    StartFailed,
    open_actor_system,
)
from actors.system import ActorSystem
from tests.support import CEILING, yield_until


class Plain(Actor):
    def receive(self, msg: Any) -> Any:
        if msg == "stop":
            self.stop()
        if msg == "crash":
            raise RuntimeError("crash")
        return msg


class Async(Actor):
    async def receive(self, msg: Any) -> Any:
        await trio.lowlevel.checkpoint()
        if msg == "stop":
            self.stop()
        if msg == "crash":
            raise RuntimeError("crash")
        return msg


class WithTimers(Actor):
    def on_start(self) -> None:
        self.start_timer(30.0, "once")
        self.start_timer(1.0, "tick", interval=1.0)

    def receive(self, msg: Any) -> Any:
        return msg


class BadStart(Actor):
    def on_start(self) -> None:
        raise RuntimeError("no")


def assert_no_trace(system: ActorSystem) -> None:
    stats = system.statistics()
    assert (stats.actors, stats.named, stats.run_queue, stats.timers) == (0, 0, 0, 0)
    assert system.registered() == []
    assert system._top == {}
    assert len(system._timers._heap) <= 2 * 64 + 1  # cancelled timers get compacted


# -------------------------------------------------------------------- registry


async def test_names_are_unique_while_the_actor_lives(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            ref = await system.spawn(Plain, name="telegram:main")
            with pytest.raises(NameTaken) as info:
                await system.spawn(Async, name="telegram:main")
            assert "'telegram:main' is already held by <ActorRef telegram:main Plain" in str(
                info.value
            )
            assert "stop it first or pick another name" in str(info.value)
            assert system.statistics().actors == 1  # the refused spawn left nothing
            assert system.whereis("telegram:main") is ref
            assert system.lookup("telegram:main") is ref
            assert ref.name == "telegram:main"
            other = await system.spawn(Async, name="discord:main")
            assert sorted(system.registered()) == ["discord:main", "telegram:main"]
            assert system.statistics().named == 2
            assert system.whereis("discord:main") is other


async def test_lookup_of_an_unknown_name_raises_actor_not_found(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            assert system.whereis("nobody") is None
            with pytest.raises(ActorNotFound, match="no live actor is registered as 'nobody'"):
                system.lookup("nobody")


@pytest.mark.parametrize("ending", ["stop", "self-stop", "crash", "restart"])
@pytest.mark.parametrize("cls", [Plain, Async], ids=["plain", "async"])
async def test_the_name_is_freed_when_the_actor_terminates_and_kept_across_restart(
    cls: type[Actor], ending: str, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            ref = await system.spawn(cls, name="n")
            if ending == "stop":
                await ref.stop()
            elif ending == "self-stop":
                ref.tell("stop")
                await ref.wait_terminated()
            elif ending == "crash":
                ref.tell("crash")
                await ref.wait_terminated()
                assert ref.state is ActorState.FAILED
            else:
                ref.restart()
                await ref.ask("sync")
                assert ref.incarnation == 2
                assert system.whereis("n") is ref
                return
            assert system.whereis("n") is None
            with pytest.raises(ActorNotFound):
                system.lookup("n")
            again = await system.spawn(cls, name="n")
            assert system.lookup("n") is again
            assert again is not ref


async def test_a_failed_start_frees_the_name(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            with pytest.raises(StartFailed):
                await system.spawn(BadStart, name="n")
            assert system.whereis("n") is None
            assert_no_trace(system)
            assert (await system.spawn(Plain, name="n")).name == "n"


class CountingName(str):
    """A name that counts how often the registry hashes and compares it."""

    calls: dict[str, int] = {"hash": 0, "eq": 0}

    def __hash__(self) -> int:
        CountingName.calls["hash"] += 1
        return str.__hash__(self)

    def __eq__(self, other: object) -> bool:
        CountingName.calls["eq"] += 1
        return str.__eq__(self, other)


async def test_whereis_and_lookup_cost_the_same_with_twenty_thousand_names(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            for i in range(20_000):
                await system.spawn(Plain, name=CountingName(f"channel:{i}"))
            for probe in ("channel:0", "channel:10000", "channel:19999"):
                CountingName.calls.update(hash=0, eq=0)
                ref = system.whereis(CountingName(probe))
                assert ref is not None and ref.name == probe
                assert system.lookup(CountingName(probe)) is ref
                # a scan would compare against thousands of names; a hash lookup
                # hashes once and compares about once per call
                assert CountingName.calls["hash"] == 2
                assert CountingName.calls["eq"] <= 6
            CountingName.calls.update(hash=0, eq=0)
            assert system.whereis(CountingName("channel:20000")) is None
            assert CountingName.calls["eq"] <= 3


# ------------------------------------------------------------------- no trace


async def test_start_stop_cycles_of_every_kind_leave_no_trace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            for i in range(1_000):
                name = f"a{i % 7}"
                for cls in (Plain, Async, WithTimers):
                    ref = await system.spawn(cls, name=name)
                    ref.tell("queued")
                    await ref.stop()
                ref = await system.spawn(Async, name=name)
                ref.tell("crash")
                await ref.wait_terminated()
                ref = await system.spawn(Plain)
                ref.restart()
                ref.tell("stop")
                await ref.wait_terminated()
                with pytest.raises(StartFailed):
                    await system.spawn(BadStart, name=name)
            assert_no_trace(system)
            assert system.statistics().dead_letters == 3 * 1_000
            assert len(system.dead_letters) == 1_000  # only the most recent are kept
            assert trio.current_time() == 0.0


def _memory() -> tuple[int, int]:
    gc.collect()
    return len(gc.get_objects()), sys.getallocatedblocks()


NAMES = [f"cycle:{i}" for i in range(1_000)]


async def _self_stop_cycles(system: ActorSystem, batches: int) -> None:
    """``batches`` x 1000 spawn+stop cycles of plain, named actors.

    Each actor is stopped by a message it handles (``self.stop()``); the
    dispatcher ends a whole batch in one pass, so the names are free again
    for the next batch.
    """
    spawn = system.spawn
    for _ in range(batches):
        for name in NAMES:
            ref = await spawn(Plain, name=name)
            ref.tell("stop")
        await yield_until(lambda: system._live == 0)


@pytest.mark.slow
async def test_a_million_start_stop_cycles_do_not_leak() -> None:
    with trio.fail_after(120):
        async with open_actor_system() as system:
            await _self_stop_cycles(system, 100)  # warm up: 100k
            objects, blocks = _memory()
            await _self_stop_cycles(system, 900)  # 1M in all
            objects_after, blocks_after = _memory()
            assert_no_trace(system)
            assert system.statistics().dead_letters == 0
            # a leak of even one object per cycle would add 900,000 here
            assert objects_after - objects < 1_000, (objects, objects_after)
            assert blocks_after - blocks < 2_000, (blocks, blocks_after)


@pytest.mark.slow
async def test_spawn_and_await_stop_cycles_do_not_leak() -> None:
    with trio.fail_after(120):
        async with open_actor_system() as system:
            spawn = system.spawn
            for _ in range(10_000):
                ref = await spawn(Plain, name="one")
                await ref.stop()
            objects, blocks = _memory()
            for _ in range(90_000):
                ref = await spawn(Plain, name="one")
                await ref.stop()
            objects_after, blocks_after = _memory()
            assert ref.exit == Exit(kind=ExitKind.SHUTDOWN)
            assert_no_trace(system)
            assert objects_after - objects < 1_000, (objects, objects_after)
            assert blocks_after - blocks < 2_000, (blocks, blocks_after)
