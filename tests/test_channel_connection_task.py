"""The connection task of a ChannelActor: what it keeps while a channel is
connected, and the one cancel scope per connect attempt (issue 12).

Ten thousand connected channels each keep their connection task's frames
and cancel scopes for hours, so the task keeps no frame it does not need.
One scope per attempt is both the connect's total deadline and what a stop
(or a failure found by a send) cancels; these tests check that the two
roles still hold apart: the deadline starts at the turn at the connect
gate, and a stop or failure while waiting at the gate or backing off
neither connects nor counts a failed attempt. In virtual time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio.testing

from actors import ExponentialBackoff, open_actor_system
from actors.channel import (
    CONNECTS_IN_FLIGHT,
    ChannelActor,
    ChannelMemory,
    ChannelRef,
    ChannelSettings,
    ChannelStatus,
)
from actors.channel.connection import connect_gate
from providers.base import ChannelConfig, TransientError
from providers.testing import FakeProvider
from supervisors import ChildSpec, SupervisorRef, open_supervisor
from tests.test_channel_actor import GENEROUS, MaxJitter, open_channel, settings

VIRTUAL_CEILING = 600.0  # virtual seconds; only a hang gets near it


@asynccontextmanager
async def open_stoppable(
    provider: FakeProvider, channel_settings: ChannelSettings
) -> AsyncIterator[tuple[ChannelRef, SupervisorRef]]:
    """A channel under a supervisor, and the supervisor that can stop it for good."""
    memory = ChannelMemory(provider.limits, channel_settings, rng=MaxJitter())
    config = ChannelConfig(channel_id="ch", provider="fake", credentials={"token": "s3cret"})
    factory, memory = ChannelActor.factory(
        config, provider, settings=channel_settings, memory=memory
    )
    async with (
        open_actor_system() as system,
        open_supervisor(system, [ChildSpec(id="ch", start=factory)]) as sup,
    ):
        ref = await sup.whereis_child("ch")
        assert ref is not None
        yield ChannelRef(ref, memory, "ch", provider.name), sup


def _tasks(nursery: trio.Nursery) -> Iterator[trio.lowlevel.Task]:
    for task in nursery.child_tasks:
        yield task
        for child in task.child_nurseries:
            yield from _tasks(child)


def _all_tasks() -> list[trio.lowlevel.Task]:
    root = trio.lowlevel.current_root_task()
    assert root is not None
    return [task for nursery in root.child_nurseries for task in _tasks(nursery)]


def _await_chain(task: trio.lowlevel.Task) -> list[str]:
    """The qualified names of the coroutines the task is suspended in, outermost first."""
    names = []
    awaiting: Any = task.coro
    while awaiting is not None and hasattr(awaiting, "cr_code"):
        names.append(awaiting.cr_code.co_qualname)
        awaiting = awaiting.cr_await
    return names


async def test_a_connected_channel_keeps_no_wrapper_frames_in_its_connection_task(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = FakeProvider(limits=GENEROUS)
    with trio.fail_after(VIRTUAL_CEILING):
        async with open_channel(provider) as channel:
            await provider.wait_connected(1)
            await trio.testing.wait_all_tasks_blocked()
            assert channel.statistics().status is ChannelStatus.CONNECTED
            chains = [
                chain
                for task in _all_tasks()
                if (chain := _await_chain(task)) and chain[0].endswith("_run_connection")
            ]
            assert len(chains) == 1, [_await_chain(task) for task in _all_tasks()]
            # The task is the connection loop itself (no ``_run`` around it, as
            # only a channel with events left by a killed incarnation needs),
            # and without a tenure it connects straight in.
            (chain,) = chains
            assert chain[:3] == [
                "ConnectionLoop._run_connection",
                "ConnectionLoop._connect_held",
                "ConnectionLoop._read",
            ]


async def test_the_connect_deadline_starts_at_the_turn_at_the_gate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = FakeProvider(limits=GENEROUS)
    channel_settings = settings(connect_timeout=5.0)
    gate = connect_gate(provider.name)
    holders = [object() for _ in range(CONNECTS_IN_FLIGHT)]
    for holder in holders:
        gate.acquire_on_behalf_of_nowait(holder)
    with trio.fail_after(VIRTUAL_CEILING):
        async with open_channel(provider, channel_settings=channel_settings) as channel:
            await trio.sleep(60.0)  # far past the connect timeout, waiting for a turn
            assert provider.connect_times == []
            for holder in holders:
                gate.release_on_behalf_of(holder)
            await provider.wait_connected(1)
            stats = channel.statistics()
            assert stats.status is ChannelStatus.CONNECTED
            assert stats.reconnects == 0
            assert channel.memory.backoff.failures == 0


async def test_a_stop_while_waiting_at_the_gate_never_connects_nor_counts_a_failure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = FakeProvider(limits=GENEROUS)
    gate = connect_gate(provider.name)
    holders = [object() for _ in range(CONNECTS_IN_FLIGHT)]
    for holder in holders:
        gate.acquire_on_behalf_of_nowait(holder)
    with trio.fail_after(VIRTUAL_CEILING):
        async with open_stoppable(provider, settings()) as (channel, sup):
            await trio.sleep(1.0)
            assert channel.statistics().status is ChannelStatus.CONNECTING
            await sup.terminate_child("ch")
            for holder in holders:
                gate.release_on_behalf_of(holder)
            await trio.sleep(60.0)
            assert provider.connect_times == []
            assert channel.statistics().status is ChannelStatus.STOPPED
            assert channel.memory.backoff.failures == 0
            assert gate.borrowed_tokens == 0  # the turn it waited for was not kept


async def test_a_stop_while_backing_off_never_reconnects(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = FakeProvider(limits=GENEROUS, connect_script=[TransientError("down")])
    channel_settings = settings(reconnect=ExponentialBackoff(base=30.0, cap=30.0))
    with trio.fail_after(VIRTUAL_CEILING):
        async with open_stoppable(provider, channel_settings) as (channel, sup):
            await trio.sleep(1.0)
            assert channel.statistics().status is ChannelStatus.BACKING_OFF
            await sup.terminate_child("ch")
            await trio.sleep(120.0)
            assert len(provider.connect_times) == 1
            assert channel.statistics().status is ChannelStatus.STOPPED
            assert channel.memory.backoff.failures == 1  # the one failed connect only


async def test_a_stop_while_connected_counts_no_failed_connect(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = FakeProvider(limits=GENEROUS)
    with trio.fail_after(VIRTUAL_CEILING):
        async with open_stoppable(provider, settings()) as (channel, sup):
            await provider.wait_connected(1)
            await sup.terminate_child("ch")
            assert channel.statistics().status is ChannelStatus.STOPPED
            assert channel.memory.backoff.failures == 0
            assert len(provider.connect_times) == 1
