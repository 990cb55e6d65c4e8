"""Paced rebalancing: settle, cooldown and moves in flight (the pure policy, then against Redis)."""

from __future__ import annotations

import math

import pytest
import trio

from actors.channel import Tenure
from runtime.cluster.leases import Leases
from runtime.cluster.ownership import Ownership
from runtime.cluster.rebalance import Pacing, Rebalancer
from tests.test_cluster_redis import CEILING, redis


def test_a_voluntary_move_waits_for_the_members_to_settle_and_the_channel_to_cool() -> None:
    rebalancer = Rebalancer(Pacing(settle=2.0, cooldown=10.0))
    rebalancer.arrived("ch", 100.0)
    assert not rebalancer.may_let_go("ch", 105.0)  # arrived 5 s ago: cooling
    assert rebalancer.may_let_go("ch", 110.0)
    rebalancer.members_changed(111.0)
    assert not rebalancer.may_let_go("ch", 112.0)  # the members just changed
    assert rebalancer.when_may_let_go("ch") == 113.0
    assert rebalancer.may_let_go("ch", 113.0)
    rebalancer.left("ch")
    assert rebalancer.when_may_let_go("other") == 113.0  # never here: only the settle


def test_pacing_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="moves"):
        Pacing(moves=0)
    with pytest.raises(ValueError, match="0 or more"):
        Pacing(settle=-1.0)
    assert Rebalancer(Pacing()).when_may_let_go("x") == -math.inf


class SlowRunner:
    """Counts the channels being stopped at once; each stop takes a while."""

    def __init__(self) -> None:
        self.running: set[str] = set()
        self.started_at: dict[str, float] = {}
        self.stopped_at: dict[str, float] = {}
        self.stopping = 0
        self.most_stopping = 0
        self.stopped: list[str] = []
        self.let_go: list[str] = []  # stopped, and then their leases released
        self._released = trio.Event()  # set at each release, then made anew

    async def floor_token(self, channel_id: str) -> int:
        return 0

    async def start_owned(self, channel_id: str, tenure: Tenure) -> None:
        self.running.add(channel_id)
        self.started_at[channel_id] = trio.current_time()

    async def stop_owned(self, channel_id: str) -> None:
        self.stopped_at[channel_id] = trio.current_time()
        self.stopping += 1
        self.most_stopping = max(self.most_stopping, self.stopping)
        await trio.sleep(0.05)
        self.stopping -= 1
        self.running.discard(channel_id)
        self.stopped.append(channel_id)

    def released(self, channel_id: str) -> None:
        self.let_go.append(channel_id)
        self._released.set()
        self._released = trio.Event()

    async def wait_let_go(self, count: int) -> None:
        """Return once ``count`` channels have been stopped and released."""
        while len(self.let_go) < count:
            await self._released.wait()

    def catalog_changed(self, channel_ids: frozenset[str]) -> None:
        pass


async def test_a_joiner_gets_its_share_only_after_settle_and_cooldown_a_few_at_a_time(
    prefix: str,
) -> None:
    runner = SlowRunner()
    channels = [f"ch-{i}" for i in range(60)]
    pacing = Pacing(settle=0.3, cooldown=1.0, moves=4)
    with trio.fail_after(CEILING):
        async with redis() as link, trio.open_nursery() as nursery:
            leases = Leases(link, prefix=prefix, node_id="a", ttl=30.0)
            ownership = Ownership(
                node_id="a",
                leases=leases,
                runner=runner,
                vnodes=64,
                renew_batch=100,
                pacing=pacing,
            )
            ownership.set_members(["a"])
            ownership.set_catalog(channels)
            await nursery.start(ownership.run)
            while len(runner.running) < len(channels):  # noqa: ASYNC110 - Redis answers
                await trio.sleep(0.02)
            changed = trio.current_time()
            ownership.set_members(["a", "b"])  # b joins: placement sends it about half
            moving = {c for c in channels if ownership.ring.owner(c) == "b"}
            assert 10 < len(moving) < 50
            # The last batch is stopped before its leases are given back: wait
            # for the releases, not the stops, before looking at what is owned.
            await runner.wait_let_go(len(moving))
            assert set(runner.stopped) == set(runner.let_go) == moving
            for channel in moving:  # none went before the settle, nor before it had cooled
                assert runner.stopped_at[channel] >= changed + pacing.settle
                assert runner.stopped_at[channel] >= runner.started_at[channel] + pacing.cooldown
            assert runner.most_stopping == pacing.moves  # a batch at a time, never more
            assert set(ownership.owned) == set(channels) - moving
            nursery.cancel_scope.cancel()
