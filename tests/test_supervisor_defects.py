"""Defects found by an acceptance run against the public API, OTP's supervisor.erl
as the reference (issue 10). Each test failed before its fix.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from actors import Actor, ActorState, ExitKind, open_actor_system
from supervisors import (
    ChildSpec,
    ChildType,
    Restart,
    StartChildFailed,
    Strategy,
    Supervisor,
    SupervisorExited,
    SupervisorRef,
    open_supervisor,
    supervisor_spec,
)

from .support import CEILING


class Named(Actor):
    """A plain worker that records its stops."""

    def __init__(self, stops: list[str], label: str) -> None:
        self.stops = stops
        self.label = label

    def receive(self, msg: Any) -> Any:
        if msg == "crash":
            raise RuntimeError(f"{self.label} crashed")
        return msg

    def on_stop(self, exit: Any) -> None:
        self.stops.append(self.label)


class Squatter(Actor):
    def receive(self, msg: Any) -> Any:
        return msg


def named(stops: list[str], label: str, name: str, **spec: Any) -> ChildSpec:
    return ChildSpec(id=label, start=lambda: Named(stops, label), name=name, **spec)


# --- a registry name that is already taken fails that child, not the supervisor -------


async def test_start_child_with_a_taken_name_fails_that_child(autojump_clock: Any) -> None:
    stops: list[str] = []
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            squatter = await system.spawn(Squatter, name="taken")
            async with open_supervisor(system, [named(stops, "a", "a-name")]) as sup:
                with pytest.raises(StartChildFailed, match="taken") as caught:
                    await sup.start_child(named(stops, "b", "taken"))
                assert caught.value.child_id == "b"
                # The supervisor and its other child carry on.
                assert sup.ref.state is ActorState.RUNNING
                assert [c.id for c in await sup.which_children()] == ["a"]
                assert system.whereis("taken") is squatter


async def test_open_supervisor_with_a_taken_name_stops_the_started_siblings(
    autojump_clock: Any,
) -> None:
    stops: list[str] = []
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            await system.spawn(Squatter, name="taken")
            specs = [named(stops, "a", "a-name"), named(stops, "b", "b-name")]
            specs.append(named(stops, "c", "taken"))
            with pytest.raises(StartChildFailed) as caught:
                async with open_supervisor(system, specs):
                    raise AssertionError("the block must not run")
            assert caught.value.child_id == "c"
            # No orphans: the siblings ran on_stop in reverse order and freed their names.
            assert stops == ["b", "a"]
            assert system.whereis("a-name") is None
            assert system.whereis("b-name") is None


async def test_restart_child_when_the_name_was_taken_meanwhile_is_refused(
    autojump_clock: Any,
) -> None:
    stops: list[str] = []
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            async with open_supervisor(system, [named(stops, "a", "a-name")]) as sup:
                await sup.terminate_child("a")
                await system.spawn(Squatter, name="a-name")
                with pytest.raises(StartChildFailed, match="a-name"):
                    await sup.restart_child("a")
                assert sup.ref.state is ActorState.RUNNING
                assert [c.status for c in await sup.which_children()] == ["undefined"]


async def test_group_restart_with_a_taken_name_retries_until_intensity(
    autojump_clock: Any,
) -> None:
    """OTP's try_again_restart: the failed start is retried, each try counting."""
    stops: list[str] = []
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            specs = [
                named(stops, "a", "a-name", restart=Restart.TRANSIENT),
                named(stops, "b", "b-name"),
            ]
            with pytest.raises(SupervisorExited, match="intensity"):
                async with open_supervisor(
                    system, specs, strategy=Strategy.ONE_FOR_ALL, intensity=3, period=60.0
                ) as sup:
                    await sup.terminate_child("a")  # transient, kept with no ref
                    await system.spawn(Squatter, name="a-name")
                    b = await sup.whereis_child("b")
                    assert b is not None
                    b.tell("crash")  # one_for_all restarts "a" too, whose name is taken
                    await trio.sleep_forever()
            assert sup.ref.exit is not None
            assert sup.ref.exit.kind is ExitKind.SHUTDOWN


# --- an unexpected message is logged, not a crash ---------------------------------------


async def test_an_unexpected_message_does_not_crash_the_tree(
    autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    stops: list[str] = []
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            async with open_supervisor(system, [named(stops, "a", "a-name")]) as sup:
                sup.ref.tell({"what": "is this"})
                counts = await sup.count_children()
                assert counts.active == 1
                assert sup.ref.state is ActorState.RUNNING
                assert stops == []
    assert any("unexpected message" in r.getMessage() for r in caplog.records)


# --- a handle to an exited supervisor raises the documented error -----------------------


async def test_calls_on_an_exited_supervisor_raise_supervisor_exited(autojump_clock: Any) -> None:
    stops: list[str] = []
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            async with open_supervisor(system, [named(stops, "a", "a-name")]) as sup:
                handle = sup
            with pytest.raises(SupervisorExited):
                await handle.which_children()
            with pytest.raises(SupervisorExited):
                await handle.start_child(named(stops, "b", "b-name"))


# --- a sub-supervisor killed at its shutdown timeout reports KILLED ---------------------


class Stubborn(Actor):
    """A task-mode worker whose on_stop never ends."""

    async def on_start(self) -> None:
        return None

    def receive(self, msg: Any) -> Any:
        return msg

    async def on_stop(self, exit: Any) -> None:
        await trio.sleep_forever()


@pytest.mark.parametrize("kind", [ChildType.SUPERVISOR, ChildType.WORKER])
async def test_a_child_killed_at_its_shutdown_timeout_reports_killed(
    autojump_clock: Any, kind: ChildType
) -> None:
    exits: list[Any] = []
    if kind is ChildType.SUPERVISOR:
        # The sub-supervisor waits forever for its stubborn child: it is the one
        # its parent kills when its own shutdown (1 s) runs out.
        inner = [ChildSpec(id="stubborn", start=Stubborn, shutdown="infinity")]
        spec = supervisor_spec("sub", inner)
        spec = ChildSpec(id="sub", start=spec.start, type=kind, shutdown=1.0)
    else:
        spec = ChildSpec(id="sub", start=Stubborn, type=kind, shutdown=1.0)
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            async with open_supervisor(system, [spec]) as sup:
                ref = await sup.whereis_child("sub")
                assert ref is not None
                started = trio.current_time()
                await sup.terminate_child("sub")
                assert trio.current_time() - started == pytest.approx(1.0)
                exits.append(ref.exit)
    assert exits[0] is not None
    assert exits[0].kind is ExitKind.KILLED


def test_supervisor_ref_is_reexported() -> None:
    assert SupervisorRef.__module__.startswith("supervisors")
    assert issubclass(Supervisor, Actor)


# --- one backoff vocabulary ---------------------------------------------------------------


def test_restart_backoff_speaks_the_kernel_s_backoff_vocabulary() -> None:
    import random

    from actors import ProportionalJitterBackoff
    from supervisors import RestartBackoff

    backoff = RestartBackoff(base=1.0, cap=4.0, random_factor=0.0, reset_after=30.0)
    assert backoff.policy == ProportionalJitterBackoff(
        base=1.0, cap=4.0, factor=2.0, random_factor=0.0
    )
    rng = random.Random(0)
    assert [backoff.compute(n, rng) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 4.0]
    with pytest.warns(DeprecationWarning) as warned:
        old = RestartBackoff(min_delay=1.0, max_delay=4.0, random_factor=0.0, reset_after=30.0)
    assert sorted(str(w.message).split("(")[1].split("=")[0] for w in warned) == [
        "max_delay",
        "min_delay",
    ]
    assert old == backoff
    with pytest.raises(TypeError, match="deprecated name"):
        RestartBackoff(min_delay=1.0, base=2.0)
    with pytest.raises(ValueError, match="cap"):
        RestartBackoff(base=5.0, cap=1.0)
