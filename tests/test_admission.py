"""Admission control: past the node's or a channel's bound a send fails at once.

The decision as a pure function, then a node in virtual time whose sends
take a second each on the simulated platform: the bounds refuse without
waiting (``Overloaded``, with when to retry), and take sends again once
the ones in flight are done.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import math
import types
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

import pytest
import trio
import trio.testing

import runtime.node
from actors import ChannelStatus
from providers.base import SendResult
from providers.simulated import Fixed, SimulatedProvider
from runtime import Overloaded, UnknownChannel, open_node
from runtime.admission import (
    LIMIT_GROWTH,
    MAX_RETRY_AFTER,
    NODE_RETRY_AFTER,
    SHED_FLOOR,
    Shedder,
    admit,
)
from runtime.config import ConfigError, StorageConfig, parse_config
from runtime.drain import SendTracker
from runtime.errors import error_from_wire, error_to_wire
from runtime.lag import LoopLag
from runtime.node_cluster import ClusterMode
from runtime.store import KeptMessage, Store, open_store
from runtime.table import ChannelRow, ChannelTable

from .support import CEILING, FAST_CHANNELS, text_to_own_peer, two_simulated_channels

FAST = FAST_CHANNELS


def _admit(**counts: Any) -> None:
    base: dict[str, Any] = {
        "node_id": "n1",
        "channel_id": "wa",
        "idempotency_key": "k",
        "node_sends": 0,
        "node_limit": 100,
        "channel_sends": 0,
        "channel_limit": 10,
        "channel_rate": 80.0,
    }
    admit(**{**base, **counts})


def test_below_both_bounds_a_send_is_admitted() -> None:
    _admit(node_sends=99, channel_sends=9)


@pytest.mark.parametrize(
    ("channel_sends", "channel_limit", "rate", "retry_after"),
    [
        (10, 10, 80.0, 1),  # an eighth of a second of work: retry in a second
        (400, 400, 80.0, 5),  # five seconds of work at 80/s
        (10_000, 10, 30.0, MAX_RETRY_AFTER),  # capped
        (10, 10, 0.0, MAX_RETRY_AFTER),  # a channel that cannot send
    ],
)
def test_a_channel_at_its_bound_says_when_its_backlog_is_sent(
    channel_sends: int, channel_limit: int, rate: float, retry_after: int
) -> None:
    with pytest.raises(Overloaded, match=r"channel 'wa' already holds .*max_channel_sends") as err:
        _admit(channel_sends=channel_sends, channel_limit=channel_limit, channel_rate=rate)
    assert (err.value.scope, err.value.limit, err.value.retry_after) == (
        "channel",
        channel_limit,
        retry_after,
    )
    assert (err.value.channel_id, err.value.idempotency_key) == ("wa", "k")


def test_a_node_at_its_bound_refuses_every_channel() -> None:
    with pytest.raises(Overloaded, match=r"node 'n1' already holds 100 sends") as err:
        _admit(node_sends=100)
    assert (err.value.scope, err.value.limit, err.value.retry_after) == (
        "node",
        100,
        NODE_RETRY_AFTER,
    )


def test_the_refusal_crosses_the_cluster_with_its_details() -> None:
    with pytest.raises(Overloaded) as err:
        _admit(channel_sends=400, channel_limit=400)
    back = error_from_wire(error_to_wire(err.value))
    assert isinstance(back, Overloaded)
    assert (back.scope, back.limit, back.retry_after) == ("channel", 400, 5)
    assert str(back) == str(err.value)


# --- in a node ------------------------------------------------------------------------------


async def connected(node: Any) -> None:
    with node.subscribe(kind="state") as changes:
        while any(s.status is not ChannelStatus.CONNECTED for s in node.channels()):
            await changes.receive()


@contextlib.asynccontextmanager
async def slow_node(**node: Any) -> AsyncIterator[tuple[Any, trio.Nursery]]:
    """A node of two simulated channels whose sends take 5 s, connected, and a nursery.

    ``node``: keys of its ``[node]``.
    """
    provider = SimulatedProvider(latency=Fixed(seconds=5.0))
    config = two_simulated_channels(**node)
    async with (
        open_node(config, channel_defaults=FAST, providers={"simulated": provider}) as running,
        trio.open_nursery() as nursery,
    ):
        await connected(running)
        yield running, nursery


async def send_noting(results: dict[str, Any], node: Any, channel: str, key: str) -> None:
    """Send ``key`` on ``channel``; its result, or its refusal, goes in ``results``."""
    try:
        results[key] = await node.send(channel, text_to_own_peer(key))
    except Overloaded as exc:
        results[key] = exc


async def test_a_node_refuses_at_once_past_its_bounds_and_takes_sends_again_after(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = SimulatedProvider(latency=Fixed(seconds=1.0))
    results: dict[str, Any] = {}
    send = functools.partial(send_noting, results)

    config = two_simulated_channels(max_sends_in_flight=5, max_channel_sends=3)
    with trio.fail_after(CEILING):
        async with open_node(
            config, channel_defaults=FAST, providers={"simulated": provider}
        ) as node:
            await connected(node)
            began = trio.current_time()
            async with trio.open_nursery() as nursery:
                for channel, key in [("a", "a1"), ("a", "a2"), ("a", "a3"), ("a", "a4")]:
                    nursery.start_soon(send, node, channel, key)
                    await trio.testing.wait_all_tasks_blocked()
                # a4 found channel a at its bound of 3: refused at once
                assert isinstance(results["a4"], Overloaded)
                assert results["a4"].scope == "channel"
                assert trio.current_time() == began
                for key in ("b1", "b2", "b3"):
                    nursery.start_soon(send, node, "b", key)
                    await trio.testing.wait_all_tasks_blocked()
                # b3 found the node at its bound of 5 (3 on a, 2 on b)
                assert isinstance(results["b3"], Overloaded)
                assert results["b3"].scope == "node"
                assert trio.current_time() == began
            assert trio.current_time() == pytest.approx(began + 1.0)  # the rest went at once
            # with the sends done, there is room again
            assert isinstance(await node.send("a", text_to_own_peer("a5")), SendResult)
            assert node.statistics().sends_refused == {"channel": 1, "node": 1}
            assert node.statistics().sends_in_flight == 0
    accepted = {"a1", "a2", "a3", "b1", "b2"}
    assert all(isinstance(results[key], SendResult) for key in accepted), results
    assert {m.idempotency_key for m in provider.sent} == accepted | {"a5"}


# --- a node whose event loop runs behind -------------------------------------------------------


def test_a_send_past_the_loop_s_limit_is_refused_saying_why() -> None:
    with pytest.raises(
        Overloaded,
        match=r"node 'n1' already holds 40 sends, as many as its event loop now runs within "
        r"its bound \(\[node\] max_loop_lag = 0.25 s\)",
    ) as err:
        _admit(node_sends=40, loop_limit=40, loop_bound=0.25)
    _admit(node_sends=39, loop_limit=40, loop_bound=0.25)
    _admit(node_sends=99, loop_bound=0.25)  # no limit: math.inf
    back = error_from_wire(error_to_wire(err.value))
    assert isinstance(back, Overloaded)
    assert (back.scope, back.limit, back.retry_after) == ("loop", 40, NODE_RETRY_AFTER)


def test_the_lateness_held_is_the_mean_of_the_last_two_readings() -> None:
    lag = LoopLag(window=10.0)
    assert lag.held() == 0.0
    lag.record(1.0, 0.8)
    assert lag.held() == 0.4  # one late reading: a pause counts half
    lag.record(2.0, 0.6)
    assert lag.held() == pytest.approx(0.7)
    lag.record(2.2, 0.0)
    assert lag.held() == 0.3
    lag.record(2.3, 0.0)
    assert lag.held() == 0.0  # on time twice: caught up


async def stalled_twice(clock: trio.testing.MockClock) -> None:
    """The loop stalls 1.1 s twice (time passes, no task runs): two readings 1 s late."""
    for _ in range(2):
        clock.jump(1.1)
        await trio.testing.wait_all_tasks_blocked()  # the probe woke, late


async def test_a_node_that_stays_behind_refuses_sends_and_takes_them_again_once_caught_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    results: dict[str, Any] = {}
    send = functools.partial(send_noting, results)
    with trio.fail_after(CEILING):
        async with slow_node(max_loop_lag=0.25) as (node, nursery):
            first = await node.send("a", text_to_own_peer("k0"))
            for index in range(SHED_FLOOR):  # what keeps the loop busy: sends in flight
                nursery.start_soon(send, node, "ab"[index % 2], f"load-{index}")
            await trio.testing.wait_all_tasks_blocked()
            assert node.statistics().sends_in_flight == SHED_FLOOR
            # One late reading, a pause of less than twice the bound, refuses nothing.
            autojump_clock.jump(0.5)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(send, node, "a", "k1")
            await trio.testing.wait_all_tasks_blocked()
            # Two readings 1 s behind: at the first, held about 0.7 s with 101 sends,
            # about a third of them run within the bound, and the floor is more (the
            # second cuts nothing: 101 held, past the limit, still drain). Every new
            # send is refused, on every channel.
            await stalled_twice(autojump_clock)
            assert node.statistics().sends_limit == SHED_FLOOR
            for channel, key in (("a", "k2"), ("b", "k3"), ("a", "k4")):
                with pytest.raises(Overloaded) as err:
                    await node.send(channel, text_to_own_peer(key))
                assert (err.value.scope, err.value.retry_after) == ("loop", NODE_RETRY_AFTER)
                assert err.value.limit == SHED_FLOOR
            assert "already holds 101 sends, as many as its event loop" in str(err.value)
            # A key already sent is answered from the channel's memory, not refused.
            assert await node.send("a", text_to_own_peer("k0")) == first
            # On time since: the limit grows a quarter a reading, the load still in
            # flight.
            await trio.sleep(1.05)
            limit = node.statistics().sends_limit
            assert limit is not None and limit > SHED_FLOOR * LIMIT_GROWTH**9
            for key in ("k5", "k6", "k2"):  # k2 again: a refused key is not remembered
                nursery.start_soon(send, node, "b", key)
                await trio.testing.wait_all_tasks_blocked()
            statistics = node.statistics()
            assert statistics.sends_in_flight == SHED_FLOOR + 4
            assert statistics.sends_refused == {"loop": 3}
            assert statistics.loop_lag == pytest.approx(1.0, abs=0.02)
    assert all(isinstance(results[key], SendResult) for key in ("k1", "k5", "k6", "k2"))
    assert len([r for r in results.values() if isinstance(r, SendResult)]) == SHED_FLOOR + 4


async def test_a_channel_at_its_bound_is_refused_for_it_and_the_rest_for_the_loop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    results: dict[str, Any] = {}
    send = functools.partial(send_noting, results)
    with trio.fail_after(CEILING):
        async with slow_node(max_loop_lag=0.25, max_channel_sends=SHED_FLOOR) as (node, nursery):
            for index in range(SHED_FLOOR):  # channel a full, the node at the floor
                nursery.start_soon(send, node, "a", f"load-{index}")
            await trio.testing.wait_all_tasks_blocked()
            await stalled_twice(autojump_clock)
            for channel, key in (("a", "a1"), ("b", "b1")):
                nursery.start_soon(send, node, channel, key)
                await trio.testing.wait_all_tasks_blocked()
            refused = [cast(Overloaded, results[key]) for key in ("a1", "b1")]
            assert [(r.scope, r.limit) for r in refused] == [
                ("channel", SHED_FLOOR),
                ("loop", SHED_FLOOR),
            ]
            assert node.statistics().sends_refused == {"channel": 1, "loop": 1}
            nursery.cancel_scope.cancel()


def test_the_limit_is_what_the_loop_runs_within_its_bound_and_grows_back_once_on_time() -> None:
    lag = LoopLag(window=10.0)
    holding = 4000
    shedder = Shedder(lag, 0.25, holding=lambda: holding, most=50_000)
    lag.record(1.0, 0.5)
    assert shedder.limit == math.inf  # one reading twice the bound: a pause counts half
    lag.record(1.1, 1.0)  # held 0.75 s with 4,000: a third of them run within 0.25 s
    assert shedder.limit == 1333
    holding = 3000
    lag.record(1.2, 1.0)  # held 1 s, but what the cut left out still drains: no cut on it
    assert shedder.limit == 1333
    holding = 1000
    lag.record(1.3, 1.0)  # drained, still behind: cut again, by half at most
    assert shedder.limit == 666
    lag.record(1.4, 0.0)  # held 0.5 s with more than the limit: draining
    assert shedder.limit == 666
    lag.record(1.5, 0.0)  # on time: a quarter more a reading at most ...
    assert shedder.limit == 833
    lag.record(1.6, 0.24)
    assert shedder.limit == 1042
    lag.record(1.7, 0.24)  # ... and only what the lateness says still fits
    assert shedder.limit == math.ceil(1042 * 0.25 / 0.24)
    holding = 3000
    lag.record(1.8, 0.5)
    lag.record(1.9, 0.5)  # held 0.5 s with 3,000: 1,500 would fit, but more than the limit
    assert shedder.limit == 1086  # held is the excess draining: no cut, and never a rise
    holding = 120
    cuts = []
    for n in range(4):
        lag.record(2.0 + n / 10, 4.0)  # far behind with few sends: halved down to the floor
        cuts.append(shedder.limit)
    assert cuts == [543, 271, 135, SHED_FLOOR]
    lag.record(2.4, 0.0)
    assert shedder.limit == SHED_FLOOR  # held 2 s: still behind
    limits = []
    for n in range(1, 40):
        lag.record(2.4 + n / 10, 0.0)  # on time: a quarter a reading ...
        limits.append(shedder.limit)
        if shedder.limit == math.inf:
            break
    expected = [SHED_FLOOR]
    while expected[-1] * LIMIT_GROWTH <= 50_000:
        expected.append(math.ceil(expected[-1] * LIMIT_GROWTH))
    assert limits == [*expected[1:], math.inf]  # ... until past max_sends_in_flight: none
    unbounded = LoopLag(window=10.0)
    off = Shedder(unbounded, 0.0, holding=lambda: holding, most=50_000)
    unbounded.record(1.0, 5.0)
    unbounded.record(1.1, 5.0)
    assert off.limit == math.inf  # no bound
    with pytest.raises(ValueError, match="already has a listener"):
        Shedder(lag, 0.25, holding=lambda: holding, most=50_000)


def test_a_loop_late_with_few_sends_starts_no_limit_and_one_with_room_grows_at_once() -> None:
    lag = LoopLag(window=10.0)
    holding = SHED_FLOOR - 1
    shedder = Shedder(lag, 0.25, holding=lambda: holding, most=50_000)
    lag.record(1.0, 0.6)
    lag.record(1.1, 0.6)  # held 0.6 s: a collection, a connect storm, not these sends
    assert shedder.limit == math.inf
    holding = 1000
    lag.record(1.2, 0.6)
    assert shedder.limit == 416  # these are
    lag.record(1.3, 0.0)  # held 0.3 s, more than the limit held: draining
    holding = 200
    lag.record(1.4, 0.24)  # held 0.12 s
    assert shedder.limit == 520
    lag.record(1.5, 0.24)  # held 0.24 s with less than half the limit held: not these
    assert shedder.limit == 650  # sends' lateness, a quarter more (full, 0.25 / 0.24)


async def test_a_late_loop_refuses_nothing_without_a_bound_or_below_the_floor(
    autojump_clock: trio.testing.MockClock,
) -> None:
    for bound, load in ((0, SHED_FLOOR), (0.25, SHED_FLOOR - 3)):
        with trio.fail_after(CEILING):
            async with slow_node(max_loop_lag=bound) as (node, nursery):
                for index in range(load):
                    nursery.start_soon(node.send, "a", text_to_own_peer(f"{bound}-{index}"))
                await trio.testing.wait_all_tasks_blocked()
                await stalled_twice(autojump_clock)
                for key in ("k1", "k2", "k3"):
                    nursery.start_soon(node.send, "b", text_to_own_peer(f"{bound}-{key}"))
                    await trio.testing.wait_all_tasks_blocked()
                assert node.statistics().sends_in_flight == load + 3
                assert node.statistics().sends_refused == {}


class Emptying:
    """A store that sets ``emptied`` once the node has forgotten every kept message (each sent)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.emptied = trio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def forget_outbound(self, kept_ids: Sequence[int]) -> int:
        forgotten = await self._store.forget_outbound(kept_ids)
        if not await self._store.read_outbound():
            self.emptied.set()
        return forgotten


class AtTheFloor(Shedder):
    """A node's limit as a loop that stayed behind with sends held leaves it: the floor."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limit = SHED_FLOOR

    def _reading(self, now: float) -> None:
        pass  # held there


async def test_kept_messages_are_resent_even_while_the_loop_is_behind(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kept message's resend is the node's own duty: shed, it would wait for the next start."""
    monkeypatch.setattr(runtime.node, "Shedder", AtTheFloor)
    provider = SimulatedProvider(latency=Fixed(seconds=1.0))
    keys = sorted(f"kept-{n}" for n in range(SHED_FLOOR + 20))  # in flight at once: past the limit
    with trio.fail_after(CEILING):
        async with open_store(StorageConfig(backend="memory")) as store:
            await store.keep_outbound(
                [
                    KeptMessage(
                        channel_id="a",
                        message=text_to_own_peer(key),
                        reason="not sent by the drain deadline",
                        accepted_at=1.7e9,
                    )
                    for key in keys
                ]
            )
            emptying = Emptying(store)
            async with (
                open_node(
                    two_simulated_channels(max_loop_lag=0.1),
                    store=cast(Store, emptying),
                    channel_defaults=FAST,
                    providers={"simulated": provider},
                ) as node,
                trio.open_nursery() as nursery,
            ):
                await emptying.emptied.wait()
                assert node.statistics().sends_refused == {}
                # The same limit refuses new work: the node holds as many as it takes.
                for index in range(SHED_FLOOR):
                    nursery.start_soon(node.send, "b", text_to_own_peer(f"new-{index}"))
                await trio.testing.wait_all_tasks_blocked()
                with pytest.raises(Overloaded) as err:
                    await node.send("b", text_to_own_peer("one-more"))
                assert (err.value.scope, err.value.limit) == ("loop", SHED_FLOOR)
    assert sorted(m.idempotency_key for m in provider.sent[: len(keys)]) == keys


@pytest.mark.parametrize("value", ["10ms", "-1s", "nan", True])
def test_a_loop_lag_bound_the_probe_cannot_tell_from_jitter_is_refused_with_its_path(
    value: object,
) -> None:
    with pytest.raises(ConfigError, match=r"node\.max_loop_lag"):
        parse_config({"node": {"max_loop_lag": value}})
    assert parse_config({"node": {"max_loop_lag": "0s"}}).node.max_loop_lag == 0.0
    assert parse_config({"node": {"max_loop_lag": "50ms"}}).node.max_loop_lag == 0.05


class Forwarder(ClusterMode):
    """The forwarding side of a cluster node whose channels all run on another node.

    The node's own admission (``Node._held``, ``Node._admit``) and forwarding
    (``_cluster_send``), with a loop limit pinned at ``limit``. What crosses
    to the owner (``_forward``: Redis Streams, tested with real nodes in
    ``test_cluster_forwarding``) is a stand-in that answers once ``answer`` is set.
    """

    def __init__(self, *, limit: float, **node: Any) -> None:
        self.config = two_simulated_channels(**node)
        self._sends, self._calls = SendTracker(), SendTracker()
        self._forwarding = 0
        self._forwards = collections.Counter()
        self._refused: collections.Counter[str] = collections.Counter()
        self._shedder = cast(Any, types.SimpleNamespace(limit=limit))
        self._table = ChannelTable()
        for spec in self.config.channels:
            self._table.put(ChannelRow(spec=spec))
        self.answer = trio.Event()

    @property
    def node_id(self) -> str:
        return "n1"

    def _held(self) -> int:
        return runtime.node.Node._held(cast(Any, self))

    def _admit(self, *args: Any, **kwargs: Any) -> None:
        runtime.node.Node._admit(cast(Any, self), *args, **kwargs)

    def _runs_here(self, channel_id: str) -> bool:
        return False

    async def _forward(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        await self.answer.wait()
        return {"platform_message_id": "m1", "peer": "p1"}


async def test_a_forwarded_send_meets_the_loop_s_limit_and_a_kept_resend_does_not() -> None:
    node = Forwarder(limit=1)
    with trio.fail_after(CEILING):
        async with trio.open_nursery() as nursery:
            for key, kept in [("first", False), ("kept", True)]:
                send = functools.partial(node._cluster_send, keep_refused=kept, timeout=60.0)
                nursery.start_soon(send, "a", text_to_own_peer(key))
                await trio.testing.wait_all_tasks_blocked()
            assert node._held() == 2  # the kept resend went on past the limit
            with pytest.raises(Overloaded) as refused:
                await node._cluster_send("b", text_to_own_peer("new"), timeout=60.0)
            assert (refused.value.scope, refused.value.limit) == ("loop", 1)
            with pytest.raises(UnknownChannel):  # said as such, not as a bound
                await node._cluster_send("nowhere", text_to_own_peer("lost"), timeout=60.0)
            node.answer.set()
    assert (node._held(), node._forwards, node._refused) == (0, {}, {"loop": 1})


async def test_a_node_refuses_a_channel_s_forwards_past_its_bound_saying_so() -> None:
    node = Forwarder(limit=math.inf, max_channel_sends=1)
    with trio.fail_after(CEILING):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                functools.partial(node._cluster_send, timeout=60.0), "a", text_to_own_peer("1")
            )
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(Overloaded) as refused:
                await node._cluster_send("a", text_to_own_peer("2"), timeout=60.0)
            # The other channel has room of its own.
            nursery.start_soon(
                functools.partial(node._cluster_send, timeout=60.0), "b", text_to_own_peer("3")
            )
            await trio.testing.wait_all_tasks_blocked()
            assert node._forwards == {"a": 1, "b": 1}
            node.answer.set()
    error = refused.value
    assert (error.scope, error.limit, error.retry_after) == ("channel", 1, 1)
    assert "node 'n1' already forwards 1 sends of channel 'a'" in str(error)
    assert (node._held(), node._forwards, node._refused) == (0, {}, {"channel": 1})
