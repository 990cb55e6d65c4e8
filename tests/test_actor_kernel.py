"""The actor kernel: lifecycle, ask/tell, errors, priority lane, restarts, shutdown.

Most behaviours run in both execution modes (parametrized ``plain`` / ``async``):
an actor whose hooks are all plain functions runs on the system's dispatcher
(and an ``ask`` to an idle one runs inline), an actor with any async hook runs
in a task of its own. Both must obey the same contract.

Everything that waits runs in virtual time (``autojump_clock``) and asserts
exact times; every test that could hang has a ``trio.fail_after`` ceiling.
"""

from __future__ import annotations

import inspect
import logging
import math
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing

import actors
from actors import (
    Actor,
    ActorCrashed,
    ActorDead,
    ActorRef,
    ActorState,
    AskTimeout,
    Exit,
    ExitKind,
    NotInActorContext,
    StartFailed,
    lowlevel,
    open_actor_system,
)
from actors.lowlevel import ChildExited, Parent
from tests.support import CEILING, yield_until


class Boom(Exception):
    """The error test actors raise on purpose."""


# --------------------------------------------------------------------------- actors


class Recorder:
    """Shared behaviour of the two mode variants below; logs into ``log``.

    ``receive``: ``"crash"`` raises Boom, ``"stop"`` stops the actor,
    ``("echo", x)`` answers ``x``; everything else answers ``("got", msg)``.
    """

    def __init__(self, log: list[Any], tag: str = "a") -> None:
        self.log = log
        self.tag = tag

    def started(self) -> None:
        self.log.append(("start", self.tag, id(self)))

    def handle(self, msg: Any) -> Any:
        self.log.append(("recv", self.tag, msg))
        if msg == "crash":
            raise Boom(f"{self.tag} crashed on purpose")
        if msg == "stop":
            self.stop()  # type: ignore[attr-defined]
        if isinstance(msg, tuple) and msg[0] == "echo":
            return msg[1]
        return ("got", msg)

    def stopped(self, exit: Exit) -> None:
        self.log.append(("stop", self.tag, exit.kind))

    def status(self) -> dict[str, Any]:
        self.log.append(("status", self.tag))
        return {"tag": self.tag}


class PlainActor(Recorder, Actor):
    def on_start(self) -> None:
        self.started()

    def receive(self, msg: Any) -> Any:
        return self.handle(msg)

    def on_stop(self, exit: Exit) -> None:
        self.stopped(exit)


class AsyncActor(Recorder, Actor):
    async def on_start(self) -> None:
        await trio.lowlevel.checkpoint()
        self.started()

    async def receive(self, msg: Any) -> Any:
        await trio.lowlevel.checkpoint()
        return self.handle(msg)

    async def on_stop(self, exit: Exit) -> None:
        await trio.lowlevel.checkpoint()
        self.stopped(exit)


@pytest.fixture(params=[PlainActor, AsyncActor], ids=["plain", "async"])
def actor_cls(request: pytest.FixtureRequest) -> type[Actor]:
    cls: type[Actor] = request.param
    return cls


def test_mode_is_decided_by_the_hooks() -> None:
    assert PlainActor._needs_task is False
    assert AsyncActor._needs_task is True


def test_all_matches_the_exports() -> None:
    public = {
        name
        for name, value in vars(actors).items()
        if not name.startswith("_") and not inspect.ismodule(value)
    }
    assert set(actors.__all__) == public
    for name in actors.__all__:
        assert getattr(actors, name) is not None


# ------------------------------------------------------------------------- lifecycle


async def test_hooks_run_in_order_and_on_stop_gets_the_reason(
    actor_cls: type[Actor], autojump_clock: trio.testing.MockClock
) -> None:
    log: list[Any] = []
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            ref = await system.spawn(actor_cls, log)
            # spawn returns once on_start has run
            assert log == [("start", "a", log[0][2])]
            assert ref.state is ActorState.RUNNING
            ref.tell(1)
            assert await ref.ask(2) == ("got", 2)
            await ref.stop()
            assert log[1:] == [("recv", "a", 1), ("recv", "a", 2), ("stop", "a", ExitKind.SHUTDOWN)]
            assert ref.state is ActorState.STOPPED
            assert ref.exit == Exit(kind=ExitKind.SHUTDOWN)
            assert not ref.alive
            assert await ref.wait_terminated() == Exit(kind=ExitKind.SHUTDOWN)
            assert trio.current_time() == 0.0


async def test_self_stop_is_a_normal_exit_and_later_mail_is_dead_lettered(
    actor_cls: type[Actor], autojump_clock: trio.testing.MockClock
) -> None:
    log: list[Any] = []
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            ref = await system.spawn(actor_cls, log)
            ref.tell("stop")
            ref.tell("after")
            exit = await ref.wait_terminated()
            assert exit == Exit(kind=ExitKind.NORMAL)
            assert ref.state is ActorState.STOPPED
            # the stop takes effect once the current message is handled
            assert [e for e in log if e[0] != "start"] == [
                ("recv", "a", "stop"),
                ("stop", "a", ExitKind.NORMAL),
            ]
            assert [d.message for d in system.dead_letters] == ["after"]
            assert system.dead_letters[0].reason == exit


@pytest.mark.parametrize("verdict", ["takes", "declines", "raises"])
async def test_the_owner_of_undelivered_tells_hears_them_as_the_actor_ends(
    verdict: str, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    heard: list[tuple[Any, Exit]] = []

    def handler(msg: Any, exit: Exit) -> bool:
        heard.append((msg, exit))
        if verdict == "raises":
            raise Boom("a defect of the owner's")
        return verdict == "takes"

    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            ref = await system.spawn(SlowAsync, [])
            actors.lowlevel.set_undelivered(ref, handler)
            for msg in ("first", "second", "third"):
                ref.tell(msg)
            await trio.testing.wait_all_tasks_blocked()  # "first" is handled; the others wait
            await ref.stop()
            exit = ref.exit
            dead = [d.message for d in system.dead_letters]
    assert heard == [("second", exit), ("third", exit)]
    assert dead == ([] if verdict == "takes" else ["second", "third"])
    assert ("handler of undelivered messages raised" in caplog.text) == (verdict == "raises")


async def test_spawn_with_failing_on_start_raises_start_failed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class PlainBad(Actor):
        def on_start(self) -> None:
            raise Boom("no")

    class AsyncBad(Actor):
        async def on_start(self) -> None:
            await trio.sleep(1)
            raise Boom("no")

    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            for cls in (PlainBad, AsyncBad):
                with pytest.raises(StartFailed) as info:
                    await system.spawn(cls, name="bad")
                assert isinstance(info.value.__cause__, Boom)
                assert "on_start raised" in str(info.value)
                assert system.statistics().actors == 0
                assert system.whereis("bad") is None
            assert trio.current_time() == 1.0


# -------------------------------------------------------------- one message at a time


class SlowAsync(Actor):
    """Each message takes one virtual second; logs entries and exits."""

    def __init__(self, log: list[Any]) -> None:
        self.log = log
        self.inside = 0

    async def receive(self, msg: Any) -> Any:
        self.inside += 1
        self.log.append((trio.current_time(), "enter", msg, self.inside))
        await trio.sleep(1)
        self.log.append((trio.current_time(), "leave", msg))
        self.inside -= 1
        return msg


async def test_an_awaiting_receive_never_interleaves_messages(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    replies: dict[str, tuple[Any, float]] = {}
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            ref = await system.spawn(SlowAsync, log)

            async def asker(msg: str) -> None:
                replies[msg] = (await ref.ask(msg, timeout=10), trio.current_time())

            ref.tell("t1")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(asker, "q1")
                await trio.testing.wait_all_tasks_blocked()
                ref.tell("t2")
                nursery.start_soon(asker, "q2")
            assert trio.current_time() == 4.0
    assert log == [
        (0.0, "enter", "t1", 1),
        (1.0, "leave", "t1"),
        (1.0, "enter", "q1", 1),
        (2.0, "leave", "q1"),
        (2.0, "enter", "t2", 1),
        (3.0, "leave", "t2"),
        (3.0, "enter", "q2", 1),
        (4.0, "leave", "q2"),
    ]
    assert replies == {"q1": ("q1", 2.0), "q2": ("q2", 4.0)}


async def test_a_message_sent_to_self_waits_for_the_current_one(
    actor_cls: type[Actor], autojump_clock: trio.testing.MockClock
) -> None:
    class Reentrant(actor_cls):  # type: ignore[valid-type,misc]
        depth = 0

        def handle(self, msg: Any) -> Any:
            type(self).depth += 1
            self.log.append(("enter", msg, type(self).depth))
            if msg == "outer":
                self.ref.tell("inner")
            self.log.append(("leave", msg))
            type(self).depth -= 1

    log: list[Any] = []
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            ref = await system.spawn(Reentrant, log)
            await ref.ask("outer")
            await ref.ask("sync")
    assert [e for e in log if e[0] in ("enter", "leave")] == [
        ("enter", "outer", 1),
        ("leave", "outer"),
        ("enter", "inner", 1),
        ("leave", "inner"),
        ("enter", "sync", 1),
        ("leave", "sync"),
    ]


# ------------------------------------------------------------------------ tell / ask


async def test_tell_returns_at_once_even_to_a_busy_actor(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Stuck(Actor):
        async def receive(self, msg: Any) -> None:
            await trio.sleep_forever()

    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            ref = await system.spawn(Stuck)
            ref.tell("block")
            await trio.sleep(1)
            for i in range(1000):
                assert ref.tell(i) is None
            assert trio.current_time() == 1.0
            assert ref.statistics().mailbox.depth == 1000
            await ref.stop(timeout=1)
            assert trio.current_time() == 2.0
            assert ref.exit == Exit(kind=ExitKind.KILLED)
            assert [d.message for d in system.dead_letters] == list(range(1000))


async def test_ask_returns_the_reply(
    actor_cls: type[Actor], autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            ref = await system.spawn(actor_cls, [])
            assert await ref.ask(("echo", 42), timeout=1) == 42
            # queued behind a tell (not inline) as well
            ref.tell("first")
            assert await ref.ask(("echo", None), timeout=1) is None
            assert trio.current_time() == 0.0


async def test_ask_times_out_with_ask_timeout_and_the_late_reply_is_dropped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            ref = await system.spawn(SlowAsync, log)
            with pytest.raises(AskTimeout, match=r"did not answer 'slow' within 0\.5 s"):
                await ref.ask("slow", timeout=0.5)
            assert trio.current_time() == 0.5
            # the actor is fine and answers the next one once the first is done
            assert await ref.ask("next", timeout=5) == "next"
            assert trio.current_time() == 2.0
            assert ref.state is ActorState.RUNNING


@pytest.mark.parametrize("seconds", [-1.0, -math.inf, math.nan])
async def test_an_ask_with_a_timeout_that_is_no_duration_is_refused_before_it_is_queued(
    autojump_clock: trio.testing.MockClock, seconds: float
) -> None:
    # Before, it was queued and then refused by trio: the late reply then
    # rescheduled a task that had moved on, and brought the run down.
    log: list[Any] = []
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            ref = await system.spawn(SlowAsync, log)
            ref.tell("slow")  # busy: the ask would be queued
            with pytest.raises(ValueError, match="timeout is seconds >= 0"):
                await ref.ask("next", timeout=seconds)
            assert ref.statistics().mailbox.depth == 1  # the tell only
            assert await ref.ask("after", timeout=5) == "after"
    assert [entry[2] for entry in log if entry[1] == "enter"] == ["slow", "after"]


@pytest.mark.parametrize("path", ["plain-inline", "plain-queued", "async"])
async def test_a_crash_on_the_asked_message_raises_actor_crashed(
    path: str, autojump_clock: trio.testing.MockClock
) -> None:
    cls = AsyncActor if path == "async" else PlainActor
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            ref = await system.spawn(cls, [])
            if path == "plain-queued":
                ref.tell("before")  # the actor is now scheduled: the ask queues
            with pytest.raises(ActorCrashed) as info:
                await ref.ask("crash")
            assert not isinstance(info.value, ActorDead)
            cause = info.value.__cause__
            assert isinstance(cause, Boom)
            assert "raised Boom while handling 'crash'" in str(info.value)
            # unsupervised: terminated as FAILED with the crash as reason
            await ref.wait_terminated()
            assert ref.state is ActorState.FAILED
            assert ref.exit == Exit(kind=ExitKind.CRASHED, error=cause)


async def test_ask_or_tell_to_a_terminated_actor_raises_actor_dead_with_the_reason(
    actor_cls: type[Actor], autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            ref = await system.spawn(actor_cls, [])
            await ref.stop()
            with pytest.raises(ActorDead, match="has terminated") as info:
                await ref.ask("x")
            assert info.value.reason == Exit(kind=ExitKind.SHUTDOWN)
            with pytest.raises(ActorDead) as info:
                ref.tell("x")
            assert info.value.reason == Exit(kind=ExitKind.SHUTDOWN)
            with pytest.raises(ActorDead):
                await ref.ask_status()
            with pytest.raises(ActorDead):
                ref.restart()
            await ref.stop()  # idempotent


@pytest.mark.parametrize("ending", ["self-stop", "crash"])
async def test_queued_asks_fail_with_actor_dead_and_tells_go_to_dead_letters(
    actor_cls: type[Actor], ending: str, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            ref = await system.spawn(actor_cls, [])
            ref.tell("stop" if ending == "self-stop" else "crash")
            ref.tell("queued tell")
            with pytest.raises(ActorDead) as info:
                await ref.ask("queued ask")
            # distinct from a crash on the asked message itself
            assert not isinstance(info.value, ActorCrashed)
            expected_kind = ExitKind.NORMAL if ending == "self-stop" else ExitKind.CRASHED
            assert info.value.reason.kind is expected_kind
            assert info.value.reason is ref.exit
            [letter] = system.dead_letters
            assert letter.message == "queued tell"
            assert letter.reason is ref.exit
            assert "PlainActor" in letter.recipient or "AsyncActor" in letter.recipient
            assert system.statistics().dead_letters == 1


async def test_queued_asks_fail_when_the_target_is_stopped_from_outside(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    outcomes: list[Any] = []
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            ref = await system.spawn(SlowAsync, log)

            async def asker() -> None:
                try:
                    await ref.ask("queued", timeout=10)
                except ActorDead as exc:
                    outcomes.append((trio.current_time(), exc.reason))

            ref.tell("busy")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(asker)
                await trio.testing.wait_all_tasks_blocked()
                ref.tell("queued tell")
                await ref.stop()
                assert trio.current_time() == 1.0  # the stop waited for "busy"
            assert outcomes == [(1.0, Exit(kind=ExitKind.SHUTDOWN))]
            assert [d.message for d in system.dead_letters] == ["queued tell"]
            assert [e[2] for e in log] == ["busy", "busy"]


async def test_an_ask_in_hand_when_the_actor_is_killed_fails_with_actor_dead(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Stuck(Actor):
        async def receive(self, msg: Any) -> None:
            await trio.sleep_forever()

    outcomes: list[Any] = []
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            ref = await system.spawn(Stuck)

            async def asker() -> None:
                with pytest.raises(ActorDead) as info:
                    await ref.ask("never answered", timeout=30)
                outcomes.append((trio.current_time(), info.value.reason))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(asker)
                await trio.sleep(0.5)
                await ref.stop(timeout=1)
                assert trio.current_time() == 1.5
    assert outcomes == [(1.5, Exit(kind=ExitKind.KILLED))]


# ------------------------------------------------------------------- priority lane


async def test_ask_status_overtakes_the_backlog(
    actor_cls: type[Actor], autojump_clock: trio.testing.MockClock
) -> None:
    log: list[Any] = []
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            ref = await system.spawn(actor_cls, log, name="st")
            for i in range(300):  # more than one dispatcher turn (256)
                ref.tell(i)
            status = await ref.ask_status()
            assert status.details == {"tag": "a"}
            stats = status.statistics
            assert stats.processed == 0
            assert stats.mailbox.depth == 300
            assert stats.state is ActorState.RUNNING
            assert stats.name == "st"
            await ref.ask("sync")
            assert [e[2] if e[0] == "recv" else e[0] for e in log[1:]] == [
                "status",
                *range(300),
                "sync",
            ]


async def test_stop_overtakes_the_backlog(
    actor_cls: type[Actor], autojump_clock: trio.testing.MockClock
) -> None:
    log: list[Any] = []
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            ref = await system.spawn(actor_cls, log)
            for i in range(300):
                ref.tell(i)
            await ref.stop()
            assert log[1:] == [("stop", "a", ExitKind.SHUTDOWN)]  # no message handled
            assert [d.message for d in system.dead_letters] == list(range(300))
            assert ref.statistics().processed == 0


# ------------------------------------------------------------------------ restarts


async def test_restart_keeps_queued_messages_and_starts_a_new_instance(
    actor_cls: type[Actor], autojump_clock: trio.testing.MockClock
) -> None:
    log: list[Any] = []
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            ref = await system.spawn(actor_cls, log)
            assert (ref.incarnation, ref.statistics().restarts) == (1, 0)
            ref.tell("m1")
            ref.tell("m2")
            ref.restart()  # overtakes m1 and m2, which the new instance gets
            ref.tell("m3")
            assert await ref.ask("sync") == ("got", "sync")
            first, second = log[0][2], log[2][2]
            assert first != second
            assert log == [
                ("start", "a", first),
                ("stop", "a", ExitKind.SHUTDOWN),
                ("start", "a", second),
                ("recv", "a", "m1"),
                ("recv", "a", "m2"),
                ("recv", "a", "m3"),
                ("recv", "a", "sync"),
            ]
            stats = ref.statistics()
            assert (ref.incarnation, stats.restarts, stats.processed) == (2, 1, 4)
            assert ref.state is ActorState.RUNNING
            assert system.statistics().actors == 1
            assert trio.current_time() == 0.0


async def test_stop_while_an_in_place_restart_is_pending_terminates_for_good(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            ref = await system.spawn(AsyncActor, log)
            # The window (old incarnation over, new one not begun) lasts one
            # scheduling batch, and trio shuffles batches: restart until the
            # test task lands in it.
            for _ in range(100):
                ref.restart()

                def between_or_past(before: int = ref.incarnation) -> bool:
                    return ref.state is ActorState.RESTARTING or ref.incarnation > before

                await yield_until(between_or_past)
                if ref.state is ActorState.RESTARTING:
                    break
                await yield_until(lambda: ref.state is ActorState.RUNNING)
            else:
                pytest.fail("never observed the actor between incarnations")
            await ref.stop()
            assert ref.state is ActorState.STOPPED
            await trio.sleep(1)
            # the pending restart must not bring it back, nor start an
            # incarnation that never gets its on_stop
            assert ref.state is ActorState.STOPPED
            kinds = [e[0] for e in log]
            assert kinds == ["start", "stop"] * (len(kinds) // 2)
            assert system.statistics().actors == 0


class RestartingParent(Actor, Parent):
    """A minimal stand-in for a supervisor: restarts every exited child at once."""

    def __init__(self, exits: list[Any]) -> None:
        self.exits = exits

    async def on_start(self) -> None:  # async: parents need a task of their own
        pass

    def receive(self, msg: Any) -> None:
        return None

    async def child_exited(self, msg: ChildExited) -> None:
        self.exits.append((msg.incarnation, msg.exit.kind, type(msg.exit.error)))
        await lowlevel.start_incarnation(msg.child)


async def test_a_crash_loses_no_queued_message(
    actor_cls: type[Actor], autojump_clock: trio.testing.MockClock
) -> None:
    log: list[Any] = []
    exits: list[Any] = []
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            parent = await system.spawn(RestartingParent, exits)
            child = await system.spawn(actor_cls, log, parent=parent)
            child.tell("crash")
            child.tell("m1")
            child.tell("m2")
            assert await child.ask("sync") == ("got", "sync")
            assert exits == [(1, ExitKind.CRASHED, Boom)]
            assert [e[:2] if e[0] != "recv" else e[2] for e in log] == [
                ("start", "a"),
                "crash",
                ("stop", "a"),
                ("start", "a"),
                "m1",
                "m2",
                "sync",
            ]
            assert log[2] == ("stop", "a", ExitKind.CRASHED)
            stats = child.statistics()
            assert (stats.incarnation, stats.restarts, stats.processed) == (2, 1, 3)
            assert child.state is ActorState.RUNNING
            assert system.dead_letters == type(system.dead_letters)()


class RecordingParent(Actor, Parent):
    """A stand-in supervisor that records child exits and lets them terminate."""

    def __init__(self, exits: list[Any]) -> None:
        self.exits = exits

    async def on_start(self) -> None:
        pass

    def receive(self, msg: Any) -> None:
        return None

    def child_exited(self, msg: ChildExited) -> None:
        self.exits.append((trio.current_time(), msg.exit.kind))
        lowlevel.terminate(msg.child, msg.exit)


async def test_stop_kills_a_supervised_actor_hung_in_on_stop_after_the_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    exits: list[Any] = []
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            parent = await system.spawn(RecordingParent, exits)
            child = await system.spawn(SlowStop, log, "child", None, parent=parent)
            await child.stop(timeout=1)
            assert trio.current_time() == 1.0
            assert log == [
                ("on_stop", "child", ExitKind.SHUTDOWN, 0.0),
                ("killed", "child", 1.0),
            ]
            await child.wait_terminated()
            assert exits == [(1.0, ExitKind.KILLED)]
            assert child.exit == Exit(kind=ExitKind.KILLED)


# ----------------------------------------------------------- statistics and repr


async def test_statistics_and_repr_show_state(
    actor_cls: type[Actor], autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            ref = await system.spawn(actor_cls, [], name="worker")
            assert repr(ref) == f"<ActorRef worker {actor_cls.__name__} [RUNNING] mailbox=0/10000>"
            anon = await system.spawn(actor_cls, [])
            assert repr(anon).startswith(f"<ActorRef #{anon.statistics().actor_id} ")
            await ref.ask("one")
            ref.tell("two")
            ref.tell("three")
            stats = ref.statistics()
            assert stats.mailbox.depth == 2
            assert "mailbox=2/10000" in repr(ref)
            assert stats.processed == 1
            assert stats.state is ActorState.RUNNING
            assert stats.actor_class == actor_cls.__name__
            assert (stats.restarts, stats.incarnation) == (0, 1)
            await ref.ask("sync")
            ref.restart()
            await ref.ask("sync")
            stats = ref.statistics()
            assert (stats.processed, stats.restarts, stats.mailbox.depth) == (5, 1, 0)
            await ref.stop()
            assert repr(ref) == f"<ActorRef worker {actor_cls.__name__} [STOPPED] mailbox=0/10000>"
            assert ref.statistics().state is ActorState.STOPPED
            with pytest.raises(ActorCrashed):
                await anon.ask("crash")
            await anon.wait_terminated()
            assert "[FAILED]" in repr(anon)
            assert repr(system) == "<ActorSystem actors=0 run_queue=0>"


# ----------------------------------------------------------------- owned tasks


class TaskOwner(Actor):
    def __init__(self, log: list[Any], fail_at: float | None = None) -> None:
        self.log = log
        self.fail_at = fail_at

    async def on_start(self) -> None:
        self.start_task(self.ticker)

    async def ticker(self) -> None:
        try:
            while True:
                await trio.sleep(1)
                self.log.append(("tick", trio.current_time()))
                if self.fail_at is not None and trio.current_time() >= self.fail_at:
                    raise Boom("owned task failed")
        except trio.Cancelled:
            self.log.append(("cancelled", trio.current_time()))
            raise

    async def receive(self, msg: Any) -> Any:
        await trio.sleep(10)
        return msg

    def on_stop(self, exit: Exit) -> None:
        self.log.append(("stop", exit.kind, trio.current_time()))


async def test_owned_task_is_cancelled_when_the_actor_stops(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            ref = await system.spawn(TaskOwner, log)
            await trio.sleep(2.5)
            await ref.stop()
            await trio.sleep(5)
    assert log == [
        ("tick", 1.0),
        ("tick", 2.0),
        ("cancelled", 2.5),
        ("stop", ExitKind.SHUTDOWN, 2.5),
    ]


async def test_owned_task_failure_crashes_the_actor(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            ref = await system.spawn(TaskOwner, log, 3.0)
            with pytest.raises(ActorCrashed) as info:
                await ref.ask("in hand", timeout=30)  # handled when the task fails
            assert trio.current_time() == 3.0
            exit = await ref.wait_terminated()
            assert exit.kind is ExitKind.CRASHED
            assert isinstance(exit.error, Boom)
            assert info.value.__cause__ is exit.error
            assert ref.state is ActorState.FAILED
    assert log == [
        ("tick", 1.0),
        ("tick", 2.0),
        ("tick", 3.0),
        ("stop", ExitKind.CRASHED, 3.0),
    ]


async def test_start_task_in_a_plain_actor_raises_not_in_actor_context(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def nothing() -> None:
        pass

    class Plain(Actor):
        def receive(self, msg: Any) -> Any:
            try:
                self.start_task(nothing)
            except NotInActorContext as exc:
                return exc
            return None

    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            ref = await system.spawn(Plain)
            error = await ref.ask("go")
            assert isinstance(error, NotInActorContext)
            assert "only an actor with an async hook" in str(error)
            assert ref.state is ActorState.RUNNING

    with pytest.raises(NotInActorContext, match="not by calling the class"):
        _ = Plain().ref


# ------------------------------------------------------------- unsupervised crash


async def test_an_unsupervised_crash_terminates_as_failed_and_is_logged(
    actor_cls: type[Actor],
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    log: list[Any] = []
    caplog.set_level(logging.ERROR, logger="switchboard.actors")
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            ref = await system.spawn(actor_cls, log, name="crasher")
            ref.tell("crash")
            exit = await ref.wait_terminated()
            assert exit.kind is ExitKind.CRASHED
            assert isinstance(exit.error, Boom)
            assert exit.abnormal
            assert str(exit) == "crashed: Boom: a crashed on purpose"
            assert ref.state is ActorState.FAILED
            assert ref.exit is exit
            assert log[-1] == ("stop", "a", ExitKind.CRASHED)
            assert system.whereis("crasher") is None
            assert system.statistics().actors == 0
            with pytest.raises(ActorDead) as info:
                ref.tell("more")
            assert info.value.reason is exit
    [record] = [r for r in caplog.records if r.name == "switchboard.actors"]
    assert record.levelno == logging.ERROR
    assert "crasher" in record.getMessage()
    assert "crashed in incarnation 1" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[1] is exit.error


# ------------------------------------------------------------------------ shutdown


class SlowStop(Actor):
    """Async on_stop that takes ``stop_time`` seconds (forever if None)."""

    def __init__(self, log: list[Any], tag: str, stop_time: float | None) -> None:
        self.log = log
        self.tag = tag
        self.stop_time = stop_time

    async def receive(self, msg: Any) -> Any:
        if msg == "stop":
            self.stop()
        return msg

    async def on_stop(self, exit: Exit) -> None:
        self.log.append(("on_stop", self.tag, exit.kind, trio.current_time()))
        try:
            if self.stop_time is None:
                await trio.sleep_forever()
            await trio.sleep(self.stop_time)
        except trio.Cancelled:
            self.log.append(("killed", self.tag, trio.current_time()))
            raise
        self.log.append(("stopped", self.tag, trio.current_time()))


async def test_shutdown_stops_top_level_actors_newest_first(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            plain = await system.spawn(PlainActor, log, "plain-1")
            slow = await system.spawn(SlowStop, log, "slow-2", 1.0)
            newest = await system.spawn(AsyncActor, log, "async-3")
            log.clear()
    assert log == [
        ("stop", "async-3", ExitKind.SHUTDOWN),
        ("on_stop", "slow-2", ExitKind.SHUTDOWN, 0.0),
        ("stopped", "slow-2", 1.0),
        ("stop", "plain-1", ExitKind.SHUTDOWN),
    ]
    assert trio.current_time() == 1.0
    for ref in (plain, slow, newest):
        assert ref.state is ActorState.STOPPED
        assert ref.exit == Exit(kind=ExitKind.SHUTDOWN)
    assert system.statistics().actors == 0
    with pytest.raises(RuntimeError, match="shutting down"):
        await system.spawn(PlainActor, log)


async def test_shutdown_kills_an_actor_whose_on_stop_hangs_after_the_grace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    with trio.fail_after(CEILING):
        async with open_actor_system(shutdown_grace=2.0) as system:
            first = await system.spawn(PlainActor, log, "first")
            hung = await system.spawn(SlowStop, log, "hung", None)
            log.clear()
    assert log == [
        ("on_stop", "hung", ExitKind.SHUTDOWN, 0.0),
        ("killed", "hung", 2.0),
        ("stop", "first", ExitKind.SHUTDOWN),
    ]
    assert trio.current_time() == 2.0
    assert hung.state is ActorState.STOPPED
    assert hung.exit == Exit(kind=ExitKind.KILLED)
    assert first.exit == Exit(kind=ExitKind.SHUTDOWN)
    assert system.statistics().actors == 0


async def test_stop_waits_for_an_actor_already_in_its_on_stop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    with trio.fail_after(CEILING):
        async with open_actor_system(shutdown_grace=5.0) as system:
            finishing = await system.spawn(SlowStop, log, "finishing", 1.0)
            finishing.tell("stop")
            hung = await system.spawn(SlowStop, log, "hung", None)
            hung.tell("stop")
            await yield_until(lambda: hung.state is ActorState.STOPPING)
            # mail sent while it stops is kept, then dead-lettered (not refused)
            hung.tell("late")
            await finishing.stop()
            assert trio.current_time() == 1.0
            assert finishing.exit == Exit(kind=ExitKind.NORMAL)
        # shutdown (from t=1) gives the self-stopping actor the full grace
    assert log[-1] == ("killed", "hung", 6.0)
    assert hung.exit == Exit(kind=ExitKind.KILLED)
    assert hung.state is ActorState.STOPPED
    assert [d.message for d in system.dead_letters] == ["late"]


async def test_started_actor_with_no_hooks_overridden_rejects_messages_loudly(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Empty(Actor):
        pass

    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            ref: ActorRef = await system.spawn(Empty)
            with pytest.raises(ActorCrashed) as info:
                await ref.ask("hello")
            assert isinstance(info.value.__cause__, NotImplementedError)
            assert "does not override receive()" in str(info.value.__cause__)


class _PlainParent(Actor):
    def receive(self, msg: Any) -> Any:
        return msg


class _Crasher(Actor):
    def receive(self, msg: Any) -> Any:
        raise RuntimeError("child crash")


@pytest.mark.parametrize("parent_cls", ["plain", "async"])
async def test_child_of_a_non_supervising_parent_is_terminated_not_left_in_limbo(
    autojump_clock: Any, parent_cls: str
) -> None:
    class _AsyncParent(Actor):
        async def receive(self, msg: Any) -> Any:
            return msg

    async with open_actor_system() as system:
        parent = await system.spawn(_PlainParent if parent_cls == "plain" else _AsyncParent)
        child = await system.spawn(_Crasher, parent=parent)
        child.tell("boom")
        await trio.testing.wait_all_tasks_blocked()
        assert child.state is ActorState.FAILED
        assert child.exit is not None and child.exit.kind is ExitKind.CRASHED
        assert parent.state is ActorState.RUNNING


# --------------------------------------------------------------------------- deferred replies


class Deferring(Actor):
    """Answers asks later, out of order; hands them back to the mailbox on demand.

    ``("hold", x)``: keep the ask; ``"answer"``: answer every held ask,
    newest first, with its ``x``; ``"hand_back"``: requeue the held ones,
    then crash (the next incarnation answers them at once).
    """

    def __init__(self, log: list[Any]) -> None:
        self.log = log
        self.held: list[tuple[lowlevel.Ask, Any]] = []

    async def receive(self, msg: Any) -> Any:
        if msg == "answer":
            for ask, value in reversed(self.held):
                ask.reply(value)
            self.held.clear()
            return "answered"
        if msg == "hand_back":
            lowlevel.requeue(self.ref, [ask for ask, _ in self.held])
            raise Boom("hand back")
        _, value = msg
        if self.log:  # a later incarnation answers at once, in the mailbox's order
            self.log.append(value)
            return ("again", value)
        ask = lowlevel.defer_reply(self.ref)
        assert ask is not None
        self.held.append((ask, value))
        return "ignored: the reply is deferred"


async def test_a_deferred_reply_is_answered_later_and_out_of_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    answers: list[Any] = []

    async def ask(ref: ActorRef, value: Any) -> None:
        answers.append(await ref.ask(("hold", value), timeout=5))

    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            ref = await system.spawn(Deferring, [])
            async with trio.open_nursery() as nursery:
                for value in (1, 2):
                    nursery.start_soon(ask, ref, value)
                    await trio.testing.wait_all_tasks_blocked()
                assert answers == []  # held, not answered with receive's return value
                assert await ref.ask("answer") == "answered"
    assert sorted(answers) == [1, 2]


@pytest.mark.parametrize("supervised", [True, False])
async def test_requeued_asks_go_back_to_the_front_of_the_mailbox_in_order(
    autojump_clock: trio.testing.MockClock, supervised: bool
) -> None:
    from supervisors import ChildSpec, open_supervisor

    answers: list[Any] = []
    log: list[Any] = []

    async def ask(ref: ActorRef, value: Any) -> None:
        try:
            answers.append(await ref.ask(("hold", value), timeout=5))
        except ActorDead:
            answers.append(("dead", value))

    async def exercise(ref: ActorRef) -> None:
        async with trio.open_nursery() as nursery:
            for value in (1, 2):
                nursery.start_soon(ask, ref, value)
                await trio.testing.wait_all_tasks_blocked()
            log.append("held")
            ref.tell("hand_back")
            nursery.start_soon(ask, ref, 3)  # queued after the hand-back

    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            if supervised:
                spec = ChildSpec(id="d", start=lambda: Deferring(log))
                async with open_supervisor(system, [spec]) as sup:
                    ref = await sup.whereis_child("d")
                    assert ref is not None
                    await exercise(ref)
            else:
                ref = await system.spawn(Deferring, log)
                await exercise(ref)
                assert ref.state is ActorState.FAILED
    if supervised:  # the next incarnation answers them first, in their order
        assert log == ["held", 1, 2, 3]
        assert sorted(answers) == [("again", 1), ("again", 2), ("again", 3)]
    else:  # handed back to an actor that then ended for good: as queued asks
        assert sorted(answers) == [("dead", 1), ("dead", 2), ("dead", 3)]


async def test_only_a_running_task_mode_actor_defers_a_reply() -> None:
    async with open_actor_system() as system:
        ref = await system.spawn(Deferring, [])
        ref.tell("hand_back")
        await ref.wait_terminated()
        with pytest.raises(NotInActorContext):
            lowlevel.defer_reply(ref)


async def test_an_ask_without_a_timeout_waits_under_no_cancel_scope(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A supervisor's calls wait forever (timeout=inf): no cancel scope, and
    # no deadline, per call. A finite timeout still gets its scope.
    from actors import ref as ref_module

    scopes: list[float] = []
    real = trio.move_on_after

    def counting(seconds: float, **kwargs: Any) -> trio.CancelScope:
        scopes.append(seconds)
        return real(seconds, **kwargs)

    monkeypatch.setattr(ref_module.trio, "move_on_after", counting)
    log: list[Any] = []
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            ref = await system.spawn(AsyncActor, log)
            assert await ref.ask(("echo", 1), timeout=math.inf) == 1
            assert scopes == []
            assert await ref.ask(("echo", 2), timeout=3.0) == 2
            assert scopes == [3.0]
