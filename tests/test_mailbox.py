"""The bounded two-lane mailbox, its overflow policies, and delivery edge cases.

Virtual time throughout (``autojump_clock``), exact times asserted.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio
import trio.lowlevel
import trio.testing

from actors import (
    Actor,
    ActorDead,
    ActorState,
    ExitKind,
    MailboxConfig,
    MailboxFull,
    MailboxStatistics,
    Overflow,
    open_actor_system,
)
from actors.mailbox import DEFAULT_CAPACITY, Mailbox
from tests.support import CEILING, yield_until


class Busy(Actor):
    """Each message takes ``per_message`` virtual seconds; records (time, msg)."""

    def __init__(self, log: list[Any], per_message: float = 10.0) -> None:
        self.log = log
        self.per_message = per_message

    async def receive(self, msg: Any) -> Any:
        self.log.append((trio.current_time(), msg))
        await trio.sleep(self.per_message)
        return msg


class PlainLog(Actor):
    def __init__(self, log: list[Any]) -> None:
        self.log = log

    def receive(self, msg: Any) -> Any:
        self.log.append(msg)
        return msg


class AsyncLog(Actor):
    def __init__(self, log: list[Any]) -> None:
        self.log = log

    async def receive(self, msg: Any) -> Any:
        self.log.append(msg)
        return msg


def wait_config(capacity: int, timeout: float) -> MailboxConfig:
    return MailboxConfig(capacity=capacity, overflow=Overflow.WAIT, overflow_timeout=timeout)


# -------------------------------------------------------------- the data structure


def test_system_lane_first_user_lane_fifo_and_idle_mailbox_holds_no_deque() -> None:
    box = Mailbox(MailboxConfig(capacity=2))
    assert (box._user, box._system) == (None, None)
    assert not box
    assert len(box) == 0
    box.put("u1")
    box.put("u2")
    assert not box.has_room()
    box.put_system("s1")  # never refused, even when the user lane is full
    assert len(box) == 3
    assert box.statistics() == MailboxStatistics(
        depth=2, system_depth=1, capacity=2, senders_waiting=0
    )
    assert repr(box) == "<Mailbox 2/2 system=1>"
    assert box.pop_system() == "s1"
    assert box.pop_system() is None
    assert [box.pop_user(), box.pop_user()] == ["u1", "u2"]
    assert box.has_room()
    box.release()
    assert (box._user, box._system) == (None, None)


def test_drain_returns_everything_in_order_and_empties_the_lanes() -> None:
    box = Mailbox()
    for i in range(5):
        box.put(i)
    box.put_system("s")
    assert box.drain_user() == [0, 1, 2, 3, 4]
    assert box.drain_system() == ["s"]
    assert box.depth == 0
    assert box.drain_user() == []


def test_config_defaults_and_validation() -> None:
    config = MailboxConfig()
    assert (config.capacity, config.overflow, config.overflow_timeout) == (
        DEFAULT_CAPACITY,
        Overflow.REJECT,
        5.0,
    )
    with pytest.raises(ValueError):
        MailboxConfig(capacity=0)
    with pytest.raises(ValueError):
        MailboxConfig(overflow_timeout=-1.0)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.capacity = 3  # type: ignore[misc]


# ---------------------------------------------------------------------- REJECT


async def test_reject_raises_mailbox_full_with_a_clear_message(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            ref = await system.spawn(Busy, log, name="slowpoke", mailbox=MailboxConfig(capacity=2))
            ref.tell("in hand")
            await trio.sleep(1)  # the actor took it: the mailbox is empty
            ref.tell("q1")
            ref.tell("q2")
            with pytest.raises(MailboxFull) as info:
                ref.tell("q3")
            message = str(info.value)
            assert "slowpoke" in message
            assert "mailbox is full (2 messages)" in message
            assert "not keeping up" in message
            assert "Overflow.WAIT" in message  # says what to do next
            assert info.value.capacity == 2
            assert "slowpoke" in info.value.actor
            with pytest.raises(MailboxFull):
                await ref.ask("q3")
            with pytest.raises(MailboxFull):
                await ref.send("q3")  # REJECT: send does not wait either
            assert trio.current_time() == 1.0
            assert ref.statistics().mailbox.depth == 2
            # system messages are never refused, and overtake q1 and q2
            status = await ref.ask_status(timeout=30)
            assert status.statistics.mailbox.depth == 2
            assert trio.current_time() == 10.0
            await ref.stop(timeout=1)  # q1 is in hand now: killed at 11
            assert trio.current_time() == 11.0
            assert [d.message for d in system.dead_letters] == ["q2"]
            assert log == [(0.0, "in hand"), (10.0, "q1")]


async def test_tell_does_not_wait_under_the_wait_policy_either(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            ref = await system.spawn(Busy, [], mailbox=wait_config(1, 30.0))
            ref.tell("in hand")
            await trio.sleep(1)
            ref.tell("q1")
            with pytest.raises(MailboxFull, match="send"):
                ref.tell("q2")
            assert trio.current_time() == 1.0


# ------------------------------------------------------------------------ WAIT


async def test_wait_send_raises_mailbox_full_after_the_overflow_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            ref = await system.spawn(Busy, log, name="slow", mailbox=wait_config(1, 4.0))
            ref.tell("in hand")  # handled from 0 to 10
            await trio.sleep(1)
            await ref.send("q1")  # room: returns at once
            assert trio.current_time() == 1.0
            with pytest.raises(MailboxFull) as info:
                await ref.send("q2")
            assert trio.current_time() == 5.0
            assert "stayed full (1 messages) for 4.0 s" in str(info.value)
            assert info.value.capacity == 1
            assert ref.statistics().mailbox.senders_waiting == 0
            await ref.stop()
            assert [d.message for d in system.dead_letters] == ["q1"]


async def test_wait_send_succeeds_when_room_appears_oldest_sender_first(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    sent: list[Any] = []
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            ref = await system.spawn(Busy, log, mailbox=wait_config(1, 25.0))

            async def sender(msg: str) -> None:
                await ref.send(msg)
                sent.append((trio.current_time(), msg))

            ref.tell("m0")
            await trio.sleep(1)
            ref.tell("m1")  # full from here on
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sender, "m2")
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(sender, "m3")
                await trio.testing.wait_all_tasks_blocked()
                assert ref.statistics().mailbox.senders_waiting == 2
            await trio.sleep_until(45.0)
            assert ref.statistics().processed == 4
    # the actor takes m1 at 10 (room for m2) and m2 at 20 (room for m3)
    assert sent == [(10.0, "m2"), (20.0, "m3")]
    assert log == [(0.0, "m0"), (10.0, "m1"), (20.0, "m2"), (30.0, "m3")]


@pytest.mark.parametrize("cls", [PlainLog, AsyncLog], ids=["plain", "async"])
async def test_wait_send_gets_room_as_soon_as_the_actor_drains_its_mailbox(
    cls: type[Actor], autojump_clock: trio.testing.MockClock
) -> None:
    log: list[Any] = []
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            ref = await system.spawn(cls, log, mailbox=wait_config(2, 1.0))
            ref.tell(1)
            ref.tell(2)
            with pytest.raises(MailboxFull):
                ref.tell(3)
            await ref.send(3)  # waits for the actor to take one
            assert trio.current_time() == 0.0
            assert await ref.ask("sync") == "sync"
    assert log == [1, 2, 3, "sync"]


async def test_a_sender_waiting_for_room_gets_actor_dead_if_the_actor_terminates(
    autojump_clock: trio.testing.MockClock,
) -> None:
    outcomes: list[Any] = []
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            ref = await system.spawn(Busy, [], mailbox=wait_config(1, 30.0))

            async def sender() -> None:
                with pytest.raises(ActorDead) as info:
                    await ref.send("waiting")
                outcomes.append((trio.current_time(), info.value.reason.kind))

            ref.tell("in hand")
            await trio.sleep(1)
            ref.tell("q1")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sender)
                await trio.sleep(1)
                await ref.stop(timeout=0.5)  # the handler is killed at 2.5
    assert outcomes == [(2.5, ExitKind.KILLED)]
    assert ref.state is ActorState.STOPPED


# --------------------------------------------------------------- odd messages


@pytest.mark.parametrize("cls", [PlainLog, AsyncLog], ids=["plain", "async"])
async def test_none_and_falsy_messages_are_delivered(
    cls: type[Actor], autojump_clock: trio.testing.MockClock
) -> None:
    log: list[Any] = []
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            ref = await system.spawn(cls, log)
            for msg in (None, 0, "", (), None):
                ref.tell(msg)
            assert await ref.ask(None) is None
            assert ref.statistics().processed == 6
    assert log == [None, 0, "", (), None, None]


async def test_mail_sent_while_stopping_is_kept_then_dead_lettered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class SlowToStop(Actor):
        async def receive(self, msg: Any) -> None:
            self.stop()

        async def on_stop(self, exit: Any) -> None:
            await trio.sleep(1)

    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            ref = await system.spawn(SlowToStop)
            ref.tell("stop")
            await yield_until(lambda: ref.state is ActorState.STOPPING)
            ref.tell("late tell")
            with pytest.raises(ActorDead) as info:
                await ref.ask("late ask")
            assert trio.current_time() == 1.0
            assert info.value.reason.kind is ExitKind.NORMAL
            assert [d.message for d in system.dead_letters] == ["late tell"]
