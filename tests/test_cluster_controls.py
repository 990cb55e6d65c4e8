"""The operator's controls below the console: force-release, pause, pins (real Redis).

Each test has a key prefix of its own (the ``prefix`` fixture), deleted
afterwards; real time, bounded by hard ceilings.
"""

from __future__ import annotations

import math

import trio

from runtime.cluster.controls import Controls, OperatorControls
from runtime.cluster.leases import TOMBSTONE, Acquired, Held, Leases
from runtime.cluster.ownership import Ownership
from runtime.cluster.rebalance import Pacing, Rebalancer
from tests.test_cluster_rebalance import SlowRunner
from tests.test_cluster_redis import CEILING, redis


def test_a_paused_rebalancer_never_lets_a_channel_go_voluntarily() -> None:
    rebalancer = Rebalancer(Pacing(settle=1.0, cooldown=1.0))
    rebalancer.arrived("ch", 0.0)
    assert rebalancer.may_let_go("ch", 5.0)
    rebalancer.paused = True
    assert rebalancer.when_may_let_go("ch") == math.inf
    assert not rebalancer.may_let_go("ch", 1e9)
    rebalancer.paused = False
    assert rebalancer.may_let_go("ch", 5.0)


async def test_a_dead_holder_s_lease_released_by_force_goes_to_the_next_owner_with_token_plus_one(
    prefix: str,
) -> None:
    with trio.fail_after(CEILING):
        async with redis() as link:
            dead = Leases(link, prefix=prefix, node_id="dead", ttl=300.0)
            heir = Leases(link, prefix=prefix, node_id="heir", ttl=300.0)
            first = await dead.acquire("ch")
            assert isinstance(first, Acquired)
            assert isinstance(await heir.acquire("ch"), Held)
            # A stale view (another token) changes nothing.
            assert await heir.force_release("ch", f"dead|{first.token + 1}", keep=False) is None
            assert isinstance(await heir.acquire("ch"), Held)
            assert await heir.force_release("ch", f"dead|{first.token}", keep=False) == 0
            second = await heir.acquire("ch")
            assert second == Acquired(first.token + 1)
            assert await dead.renew([("ch", first.token, True)]) == ["ch"]  # fenced


async def test_a_live_holder_s_lease_becomes_a_tombstone_until_it_would_have_run_out(
    prefix: str,
) -> None:
    with trio.fail_after(CEILING):
        async with redis() as link:
            live = Leases(link, prefix=prefix, node_id="live", ttl=1.0)
            other = Leases(link, prefix=prefix, node_id="other", ttl=1.0)
            first = await live.acquire("ch")
            assert isinstance(first, Acquired)
            left = await other.force_release("ch", f"live|{first.token}", keep=True)
            assert left is not None and 0 < left <= 1.0
            assert await live.renew([("ch", first.token, True)]) == ["ch"]  # it drops it
            held = await other.acquire("ch")
            assert isinstance(held, Held) and held.holder.startswith(TOMBSTONE)
            assert await other.holders(["ch"]) == {}  # nobody to forward to
            while isinstance(taken := await other.acquire("ch"), Held):  # noqa: ASYNC110 - Redis
                await trio.sleep(0.05)
            assert taken == Acquired(first.token + 1)


async def test_pause_and_pins_are_kept_in_redis_and_announced(prefix: str) -> None:
    seen: list[Controls] = []
    with trio.fail_after(CEILING):
        async with redis() as link, trio.open_nursery() as nursery:
            controls = OperatorControls(link, prefix=prefix)
            assert await controls.load() == Controls()
            # A long interval: only the announcements can bring the changes in time.
            nursery.start_soon(lambda: controls.watch(seen.append, interval=600.0))
            while not seen:  # noqa: ASYNC110 - Redis answers
                await trio.sleep(0.02)
            assert await controls.pause(by="oncall", reason="deploy") is True
            assert await controls.pause(by="other", reason="again") is False
            assert await controls.pin("a1", "n2") is None
            assert await controls.pin("a1", "n3") == "n2"
            now = await controls.load()
            assert now.paused is not None
            assert (now.paused["by"], now.paused["reason"]) == ("oncall", "deploy")
            assert now.pins == {"a1": "n3"}
            while seen[-1] != now:  # announced (again: the watch may subscribe late)
                await controls.announce()
                await trio.sleep(0.02)
            assert await controls.unpin("a1") == "n3"
            assert await controls.unpin("a1") is None
            assert await controls.resume() is True
            assert await controls.resume() is False
            while seen[-1] != Controls():
                await controls.announce()
                await trio.sleep(0.02)
            nursery.cancel_scope.cancel()


async def test_a_pin_owns_the_channel_on_a_live_member_only(prefix: str) -> None:
    with trio.fail_after(CEILING):
        await _a_pin_owns_the_channel_on_a_live_member_only(prefix)


async def _a_pin_owns_the_channel_on_a_live_member_only(prefix: str) -> None:
    async with redis() as link:
        leases = Leases(link, prefix=prefix, node_id="a", ttl=30.0)
        ownership = Ownership(
            node_id="a", leases=leases, runner=SlowRunner(), vnodes=64, renew_batch=100
        )
        ownership.set_members(["a", "b"])
        channels = [f"ch-{i}" for i in range(40)]
        on_b = next(c for c in channels if ownership.ring.owner(c) == "b")
        ownership.set_catalog(channels)
        assert on_b not in ownership.wanted()
        ownership.set_controls(paused=False, pins={on_b: "a"})
        assert ownership.owner(on_b) == "a" and on_b in ownership.wanted()
        ownership.set_controls(paused=False, pins={on_b: "gone"})  # not a member
        assert ownership.owner(on_b) == "b" and on_b not in ownership.wanted()


async def test_garbage_written_into_the_controls_never_stops_the_watch(prefix: str) -> None:
    seen: list[Controls] = []
    with trio.fail_after(CEILING):
        async with redis() as link, trio.open_nursery() as nursery:
            controls = OperatorControls(link, prefix=prefix)
            await link.call("HSET", controls.pins_key, b"\xff\xfe", b"\xff")  # not UTF-8
            await link.call("SET", controls.paused_key, b"\xff{not json")
            first = trio.Event()

            def reported(now: Controls) -> None:
                seen.append(now)
                first.set()

            nursery.start_soon(lambda: controls.watch(reported, interval=600.0))
            await first.wait()  # the first load read the garbage, and the watch runs on
            assert seen[0].pins == {"\ufffd\ufffd": "\ufffd"}  # shown, not a crash
            await link.call("DEL", controls.paused_key, controls.pins_key)
            await controls.pin("a1", "n2")
            while not seen or seen[-1].pins != {"a1": "n2"}:
                await controls.announce()
                await trio.sleep(0.02)
            nursery.cancel_scope.cancel()
