"""The node's garbage-collection policy (``[node] gc``; runtime/collection.py).

Thresholds while a node runs and back afterwards; a freeze once a storm of
connects has gone quiet, a thaw on the way out; nothing touched with
``gc = "default"``. In virtual time, against the simulated platform.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest
import trio

from actors import ChannelStateChanged, ChannelStatus
from providers.simulated import SimulatedProvider
from runtime import open_node
from runtime.collection import (
    QUIET,
    REFREEZE_INTERVAL,
    STORM_CONNECTS,
    YOUNG_THRESHOLD,
    CollectorPolicy,
    freeze_start_up,
)
from runtime.events import EventHub

from .support import CEILING
from .test_node_embedded import FAST, node_config, sim, wait_connected


@pytest.fixture(autouse=True)
def collector_as_found() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_a_serving_process_freezes_its_start_up_and_collects_young_objects_less_often() -> None:
    # (the emulators' processes: ``switchboard emulate``, ``bench.platforms``)
    gc.unfreeze()
    _, middle, old = gc.get_threshold()
    built = [[n] for n in range(1_000)]  # what start-up leaves, alive for good (tracked)
    assert any(o is built[0] for o in gc.get_objects())  # walked by every full collection
    cycle = _Node()
    cycle.next = cycle  # start-up garbage in a cycle: collected first, never frozen
    gone = weakref.ref(cycle)
    del cycle
    frozen = freeze_start_up()
    assert gone() is None
    assert frozen >= len(built) and gc.get_freeze_count() == frozen
    assert gc.get_threshold() == (YOUNG_THRESHOLD, middle, old)  # the older ones as they were
    assert not any(o is built[0] for o in gc.get_objects())  # frozen: never walked again


class _Node:
    next: _Node | None = None


def test_the_thresholds_hold_while_any_node_runs_and_come_back_after_the_last() -> None:
    before = gc.get_threshold()
    with CollectorPolicy(enabled=True):
        assert gc.get_threshold() == (YOUNG_THRESHOLD, before[1], before[2])
        with CollectorPolicy(enabled=True):  # a second node of the process
            pass
        assert gc.get_threshold()[0] == YOUNG_THRESHOLD  # the first still runs
    assert gc.get_threshold() == before
    with CollectorPolicy(enabled=False):
        assert gc.get_threshold() == before


def test_a_node_that_leaves_thaws_what_it_froze_while_another_runs_on() -> None:
    with CollectorPolicy(enabled=True) as staying:
        with CollectorPolicy(enabled=True) as leaving:
            leaving.settle(0.0)
            assert gc.get_freeze_count() > 0
        assert gc.get_freeze_count() == 0  # its heap can be collected now
        assert gc.get_threshold()[0] == YOUNG_THRESHOLD  # the other still runs tuned
        staying.settle(1.0)
        assert gc.get_freeze_count() > 0


def test_a_storm_is_settled_once_quiet_and_a_trickle_only_after_the_interval() -> None:
    policy = CollectorPolicy(enabled=True)
    assert not policy.due(0.0)  # nothing connected
    for _ in range(STORM_CONNECTS):
        policy.changed(1.0)
    assert not policy.due(1.0 + QUIET / 2)  # still connecting
    assert policy.due(1.0 + QUIET)
    with policy:
        policy.settle(1.0 + QUIET)
        assert gc.get_freeze_count() > 0 and policy.settles == 1
    assert gc.get_freeze_count() == 0  # thawed on the way out
    policy.changed(100.0)  # one reconnect: not worth a collection...
    assert not policy.due(100.0 + QUIET)
    assert policy.due(1.0 + QUIET + REFREEZE_INTERVAL)  # ...until the interval has passed
    assert not CollectorPolicy(enabled=False).due(1e9)


def test_the_moment_it_falls_due_it_is_due() -> None:
    # (3.2 + 5.0) - 3.2 < 5.0 in floating point: a subtraction would say "not
    # yet" at the very moment its timer woke it, and the loop would spin.
    policy = CollectorPolicy(enabled=True)
    for _ in range(STORM_CONNECTS):
        policy.changed(3.2)
    assert (3.2 + QUIET) - 3.2 < QUIET
    assert policy.due_at() == 3.2 + QUIET
    assert policy.due(policy.due_at())


class _TaskSteps(trio.abc.Instrument):
    """Counts the steps of the tasks whose name ends with ``name``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith(self.name):
            self.steps += 1


async def test_a_storm_wakes_the_policy_a_few_times_not_once_per_event(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The policy counts the changes as the hub publishes them; its task only
    # wakes when a settle could be due, and settles QUIET after the last one.
    hub = EventHub()
    tap = hub.tap("c", "t", "simulated")
    steps = _TaskSteps("CollectorPolicy.run")
    channels = 2 * STORM_CONNECTS
    with CollectorPolicy(enabled=True) as policy:
        async with trio.open_nursery() as nursery:
            await nursery.start(policy.run, hub)
            trio.lowlevel.add_instrument(steps)
            try:
                for i in range(channels):  # one channel at a time, each connecting, connected
                    for previous, status in (
                        (ChannelStatus.IDLE, ChannelStatus.CONNECTING),
                        (ChannelStatus.CONNECTING, ChannelStatus.CONNECTED),
                    ):
                        change = ChannelStateChanged(
                            channel_id=f"c{i}", status=status, previous=previous
                        )
                        tap.send_nowait(change)
                    last = trio.current_time()
                    await trio.sleep(0.01)
                await trio.sleep_until(last + QUIET - 0.001)
                assert policy.settles == 0  # still within the quiet after the last connect
                await trio.sleep_until(last + QUIET + 0.001)
                assert policy.settles == 1
            finally:
                trio.lowlevel.remove_instrument(steps)
            # The storm became one when its STORM_CONNECTS-th connect came (a
            # wake), then the task woke QUIET later for the settle (another),
            # found the storm still going, and woke for the settle once more.
            assert steps.steps <= 4, steps.steps
            nursery.cancel_scope.cancel()


def test_a_watch_sees_the_kinds_it_asked_for_until_closed() -> None:
    hub = EventHub()
    tap = hub.tap("c", "t", "simulated")
    seen: list[str] = []
    change = ChannelStateChanged(
        channel_id="c", status=ChannelStatus.CONNECTED, previous=ChannelStatus.CONNECTING
    )
    with hub.watch(lambda event: seen.append(event.kind), kind="state"):
        tap.send_nowait(change)
        tap.send_nowait(object())  # not an event the hub knows: not published
    tap.send_nowait(change)  # closed: no longer called
    assert seen == ["state"]
    with pytest.raises(ValueError, match="unknown event kind"):
        hub.watch(seen.append, kind="nope")


@pytest.mark.parametrize("policy", ["tuned", "default"])
async def test_a_node_freezes_what_its_channels_built_and_thaws_on_the_way_out(
    policy: str, autojump_clock: trio.testing.MockClock
) -> None:
    before = gc.get_threshold()
    channels = [sim(f"c{i}") for i in range(STORM_CONNECTS)]
    config = node_config(channels, node={"id": "t", "start_timeout": 1.0, "gc": policy})
    with trio.fail_after(CEILING):
        async with open_node(
            config, channel_defaults=FAST, providers={"simulated": SimulatedProvider()}
        ) as node:
            await wait_connected(node, STORM_CONNECTS)
            await trio.sleep(QUIET + 1.0)
            if policy == "tuned":
                assert gc.get_threshold()[0] == YOUNG_THRESHOLD
                assert gc.get_freeze_count() > 0
            else:
                assert gc.get_threshold() == before
                assert gc.get_freeze_count() == 0
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before
