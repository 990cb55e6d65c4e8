"""The embedding API in virtual time: a simulated platform, no sockets.

Startup that degrades gracefully, connection limits, the channel
administration calls, the event stream's filters, and the drain: what is
sent by the deadline, what is kept, and the next start that sends it.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from actors import Actor, ChannelSettings, ChannelStatus, ExponentialBackoff
from actors.channel import ChannelStateChanged
from providers.base import InboundMessage, OutboundMessage, SendResult
from providers.simulated import Fixed, SimulatedProvider
from runtime import (
    ChannelExists,
    ConnectionLimitReached,
    NodeDraining,
    NodeEvent,
    StoreError,
    UnknownChannel,
    UnknownProvider,
    open_node,
    open_store,
    parse_config,
)
from runtime.config import ChannelSpec, StorageConfig
from runtime.drain import STORE_GRACE, SendStopped
from runtime.node import ROOT_INTENSITY, START_TOGETHER
from runtime.ops.health import health_report
from runtime.resend import RESEND_RETRY_CAP
from supervisors import ChildSpec, SupervisorExited

from .support import CEILING, record_outcome

FAST = ChannelSettings(
    reconnect=ExponentialBackoff(base=0.05, cap=0.2),
    send_backoff=ExponentialBackoff(base=0.01, cap=0.05),
    connect_wait=5.0,
    inbound_retry=0.05,
)


def node_config(channels: list[dict[str, Any]], **sections: Any) -> Any:
    return parse_config(
        {
            "node": {"id": "t", "drain_deadline": 10.0, "start_timeout": 1.0},
            "ops": {"enabled": False},
            "providers": {"simulated": {"rate_limit": {"enabled": False}}},
            "channels": channels,
            **sections,
        }
    )


def sim(channel_id: str, tenant: str = "acme") -> dict[str, Any]:
    return {"id": channel_id, "tenant": tenant, "provider": "simulated"}


async def wait_connected(node: Any, count: int) -> None:
    with node.subscribe(kind="state") as changes:
        while sum(s.status is ChannelStatus.CONNECTED for s in node.channels()) < count:
            await changes.receive()


def message(key: str, text: str = "hi", peer: str = "p1") -> OutboundMessage:
    return OutboundMessage(peer=peer, idempotency_key=key, text=text)


async def test_node_starts_channels_and_sends(autojump_clock: trio.testing.MockClock) -> None:
    provider = SimulatedProvider(latency=Fixed(seconds=0.25))
    config = node_config([sim("a"), sim("b", tenant="globex")])
    with trio.fail_after(CEILING):
        async with open_node(
            config, channel_defaults=FAST, providers={"simulated": provider}
        ) as node:
            assert node.ready
            await wait_connected(node, 2)
            started = trio.current_time()
            result = await node.send("a", message("k1", "hello"))
            assert isinstance(result, SendResult)
            assert result.peer == "p1"
            assert trio.current_time() - started == pytest.approx(0.25)
            assert [m.text for m in provider.sent if m.channel_id == "a"] == ["hello"]
            snapshots = {s.channel_id: s for s in node.channels()}
            assert snapshots["a"].statistics is not None
            assert snapshots["a"].statistics.sent == 1
            assert snapshots["b"].tenant == "globex"
            assert health_report(node)["status"] == "ok"
            stats = node.statistics()
            assert (stats.started, stats.configured, stats.draining) == (2, 2, False)


async def test_start_channels_answers_each_spec_in_order_and_starts_the_rest(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = node_config(
        [sim("a")],
        providers={"simulated": {"max_connections": 70, "rate_limit": {"enabled": False}}},
    )
    # More than START_TOGETHER, so that a second batch starts once the first has.
    many = [ChannelSpec(id=f"m{n:02d}", provider="simulated") for n in range(START_TOGETHER + 6)]
    specs = [
        ChannelSpec(id="a", provider="simulated"),  # running already
        *many[:3],
        ChannelSpec(id="m01", provider="simulated"),  # twice in one call: the second is refused
        ChannelSpec(id="x", provider="nosuch"),
        ChannelSpec(id="e", provider="simulated", emulator=True),  # refused once claimed
        *many[3:],
    ]
    with trio.fail_after(CEILING):
        async with open_node(config, channel_defaults=FAST) as node:
            results = await node.start_channels(specs)
            assert len(results) == len(specs)
            assert isinstance(results[0], ChannelExists)
            assert isinstance(results[4], ChannelExists)
            assert isinstance(results[5], UnknownProvider)
            assert isinstance(results[6], UnknownProvider)
            assert "emulator" in str(results[6])
            refused = {s.channel_id: s for s in node.channels()}["e"]
            assert refused.start_error is not None and "emulator" in refused.start_error
            started = [r for r in results if not isinstance(r, Exception)]
            # 70 connections: "a" and 69 of the 70 new ones; the last is refused.
            assert [r.channel_id for r in started] == [spec.id for spec in many[:-1]]
            assert isinstance(results[-1], ConnectionLimitReached)
            # The node lists them in the order given, whatever order they started in.
            listed = [s.channel_id for s in node.channels() if s.start_error is None]
            assert listed == ["a"] + [spec.id for spec in many[:-1]]
            await wait_connected(node, 70)
            assert await node.send("m68", message("k"))


async def test_two_starts_of_one_channel_at_once_start_it_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    outcomes: list[Any] = []

    async def start(node: Any) -> None:
        try:
            outcomes.append(await node.start_channel(ChannelSpec(id="d", provider="simulated")))
        except ChannelExists as exc:
            outcomes.append(exc)

    with trio.fail_after(CEILING):
        async with open_node(node_config([]), channel_defaults=FAST) as node:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(start, node)
                nursery.start_soon(start, node)
            assert sorted(type(outcome).__name__ for outcome in outcomes) == [
                "ChannelExists",
                "ChannelSnapshot",
            ]
            await wait_connected(node, 1)
            assert [s.channel_id for s in node.channels()] == ["d"]
            assert node.statistics().started == 1


def hold_checkpoint_reads(node: Any) -> trio.Event:
    """Hold every checkpoint read of ``node``'s store until the event is set."""
    release = trio.Event()
    load = node.store.load_checkpoint

    async def held(channel_id: str) -> Any:
        await release.wait()
        return await load(channel_id)

    node.store.load_checkpoint = held
    return release


async def test_a_stop_during_start_channels_waits_for_the_start_then_stops_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    specs = [ChannelSpec(id=name, provider="simulated") for name in ("a", "b")]
    with trio.fail_after(CEILING):
        async with open_node(node_config([]), channel_defaults=FAST) as node:
            release = hold_checkpoint_reads(node)
            results: list[Any] = []
            stopped = trio.Event()

            async def stop_a() -> None:
                await node.stop_channel("a")
                stopped.set()

            async with trio.open_nursery() as nursery:

                async def start() -> None:
                    results.extend(await node.start_channels(specs))

                nursery.start_soon(start)
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(stop_a)
                await trio.testing.wait_all_tasks_blocked()
                assert not stopped.is_set()  # it waits for the start
                release.set()
            assert [r.channel_id for r in results] == ["a", "b"]  # both started
            assert [s.channel_id for s in node.channels()] == ["b"]  # then "a" stopped
            await wait_connected(node, 1)
            assert node.statistics().started == 1
            snapshot = await node.start_channel(specs[0])  # "a" is free to start again
            assert snapshot.channel_id == "a"


@pytest.mark.parametrize("attempt", range(6))  # the waiters wake in either order
async def test_a_stop_and_a_restart_behind_a_failing_start_leave_no_channel_unlisted(
    autojump_clock: trio.testing.MockClock, attempt: int
) -> None:
    spec = ChannelSpec(id="a", provider="simulated")
    outcomes: dict[str, Any] = {}
    with trio.fail_after(CEILING):
        async with open_node(node_config([]), channel_defaults=FAST) as node:
            release = trio.Event()
            load = node.store.load_checkpoint
            reads = [0]

            async def first_read_fails(channel_id: str) -> Any:
                reads[0] += 1
                if reads[0] == 1:
                    await release.wait()
                    raise StoreError("the store is down")
                return await load(channel_id)

            node.store.load_checkpoint = first_read_fails

            async def call(name: str, fn: Any, *args: Any) -> None:
                try:
                    outcomes[name] = await fn(*args)
                except Exception as exc:
                    outcomes[name] = exc

            async with trio.open_nursery() as nursery:
                nursery.start_soon(call, "start", node.start_channel, spec)
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(call, "restart", node.restart_channel, "a")
                nursery.start_soon(call, "stop", node.stop_channel, "a")
                await trio.testing.wait_all_tasks_blocked()
                release.set()
            assert isinstance(outcomes["start"], StoreError)
            # Whichever ran first, nothing runs that the node does not list:
            # a channel it no longer lists starts again (no AlreadyStarted).
            if "a" in {s.channel_id for s in node.channels()}:
                await node.stop_channel("a")
            assert (await node.start_channel(spec)).channel_id == "a"
            await wait_connected(node, 1)


class SlowToStart(Actor):
    """Holds its supervisor as it starts, until ``release`` is set: requests wait in
    the supervisor's mailbox meanwhile."""

    def __init__(self, release: trio.Event) -> None:
        self.release = release

    async def on_start(self) -> None:
        await self.release.wait()

    async def receive(self, msg: Any) -> Any:
        return None


def keep_busy(node: Any, nursery: trio.Nursery) -> trio.Event:
    """Keep the node's channels supervisor starting a slow child; set the event to let it."""
    release = trio.Event()
    supervisor = node._channel_supervisor()
    slow = ChildSpec(id="slow", start=functools.partial(SlowToStart, release))
    nursery.start_soon(supervisor.start_child, slow)
    return release


@pytest.mark.parametrize("together", [True, False], ids=["start_channels", "start_channel"])
async def test_a_start_cancelled_while_the_supervisor_starts_it_lists_what_started(
    autojump_clock: trio.testing.MockClock, together: bool
) -> None:
    # A busy supervisor takes the request into its mailbox and starts the
    # children whatever becomes of the caller; the node hears its answer, so
    # that no channel runs that the node does not list.
    specs = [ChannelSpec(id=n, provider="simulated") for n in ("a", "b")]
    started = specs if together else specs[:1]
    with trio.fail_after(CEILING):
        async with open_node(node_config([]), channel_defaults=FAST) as node:
            async with trio.open_nursery() as nursery:
                release = keep_busy(node, nursery)
                await trio.testing.wait_all_tasks_blocked()
                cut = trio.CancelScope()

                async def start() -> None:
                    with cut:
                        if together:
                            await node.start_channels(specs)
                        else:
                            await node.start_channel(specs[0])

                nursery.start_soon(start)
                await trio.testing.wait_all_tasks_blocked()  # its request is in the mailbox
                cut.cancel()
                await trio.testing.wait_all_tasks_blocked()
                release.set()  # the supervisor starts what it was asked to
            listed = {s.channel_id: s.start_error for s in node.channels()}
            assert listed == {spec.id: None for spec in started}
            await wait_connected(node, len(started))
            for spec in started:
                with pytest.raises(ChannelExists):
                    await node.start_channel(spec)


async def test_a_start_cut_as_its_checkpoint_is_read_leaves_nothing_to_write(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(CEILING):
        async with open_node(node_config([]), channel_defaults=FAST) as node:
            cut = trio.CancelScope()
            load = node.store.load_checkpoint

            async def read_then_cut(channel_id: str) -> Any:
                stored = await load(channel_id)
                cut.cancel()  # a deadline, a sibling's failure: as the read returns
                return stored

            node.store.load_checkpoint = read_then_cut
            with cut:
                await node.start_channel(ChannelSpec(id="a", provider="simulated"))
            node.store.load_checkpoint = load
            assert cut.cancelled_caught
            assert node.statistics().started == 0
            await node._checkpoints.flush()  # writes every channel it holds, as a round does
            assert await node.store.load_checkpoint("a") is None  # never started: never written


@pytest.mark.parametrize("together", [True, False], ids=["start_channels", "start_channel"])
async def test_a_program_cancelled_while_a_start_waits_for_a_busy_supervisor_just_ends(
    autojump_clock: trio.testing.MockClock, together: bool
) -> None:
    # The cancel takes the actors down too, so the supervisor's answer is an
    # error: the program hears its own cancel, not that error.
    spec = ChannelSpec(id="a", provider="simulated")
    with trio.fail_after(CEILING):
        with trio.CancelScope() as outer:
            async with open_node(node_config([]), channel_defaults=FAST) as node:
                async with trio.open_nursery() as nursery:
                    keep_busy(node, nursery)  # never let go
                    await trio.testing.wait_all_tasks_blocked()

                    async def cancel_once_the_start_waits() -> None:
                        await trio.testing.wait_all_tasks_blocked()
                        outer.cancel()  # a deadline, a sibling's failure

                    nursery.start_soon(cancel_once_the_start_waits)
                    if together:
                        await node.start_channels([spec])
                        raise AssertionError("not cancelled")  # (a cancel comes first)
                    await node.start_channel(spec)
        assert outer.cancelled_caught


async def test_a_cancelled_start_channels_leaves_its_channels_free_to_start(
    autojump_clock: trio.testing.MockClock,
) -> None:
    specs = [ChannelSpec(id=name, provider="simulated") for name in ("a", "b", "c")]
    with trio.fail_after(CEILING):
        async with open_node(node_config([]), channel_defaults=FAST) as node:
            release = hold_checkpoint_reads(node)
            async with trio.open_nursery() as nursery:
                with trio.move_on_after(5):
                    nursery.start_soon(node.stop_channel, "a")  # waits for the start
                    await node.start_channels(specs)
            assert node.statistics().started == 0
            cut = {s.channel_id: s.start_error for s in node.channels()}
            assert cut == dict.fromkeys("bc", "Cancelled: its start was cut")  # "a": stopped
            release.set()
            results = await node.start_channels(specs)
            assert [r.channel_id for r in results] == ["a", "b", "c"]
            await wait_connected(node, 3)


async def test_a_channel_that_cannot_start_leaves_the_rest_running(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    config = node_config(
        [sim("a"), sim("b"), sim("c")],
        providers={"simulated": {"max_connections": 2, "rate_limit": {"enabled": False}}},
    )
    with trio.fail_after(CEILING), caplog.at_level("INFO", logger="switchboard"):
        async with open_node(config, channel_defaults=FAST) as node:
            await wait_connected(node, 2)
            snapshots = {s.channel_id: s for s in node.channels()}
            assert snapshots["c"].status is ChannelStatus.FAILED
            assert snapshots["c"].start_error is not None
            assert "providers.simulated.max_connections" in snapshots["c"].start_error
            report = health_report(node)
            assert report["status"] == "degraded"
            assert [p["channel"] for p in report["problems"]] == ["c"]
            assert await node.send("a", message("k"))
            with pytest.raises(ConnectionLimitReached, match="limit"):
                await node.start_channel(ChannelSpec(id="d", provider="simulated"))
    assert "started 2/3 channels" in caplog.text
    assert "c: ConnectionLimitReached" in caplog.text


async def test_channel_administration(autojump_clock: trio.testing.MockClock) -> None:
    provider = SimulatedProvider()
    with trio.fail_after(CEILING):
        async with open_node(
            node_config([sim("a")]), channel_defaults=FAST, providers={"simulated": provider}
        ) as node:
            await wait_connected(node, 1)
            with pytest.raises(ChannelExists):
                await node.start_channel(ChannelSpec(id="a", provider="simulated"))
            with pytest.raises(UnknownChannel, match="'nope'"):
                await node.send("nope", message("k"))
            await node.start_channel(ChannelSpec(id="b", tenant="t2", provider="simulated"))
            await wait_connected(node, 2)
            await node.stop_channel("b")
            assert [s.channel_id for s in node.channels()] == ["a"]
            with pytest.raises(UnknownChannel):
                await node.stop_channel("b")

            # A ban fails the channel for good; restart_channel revives it.
            provider.ban("a")
            with node.subscribe(channel="a", kind="state") as changes:
                while node.channels()[0].status is not ChannelStatus.FAILED:
                    await changes.receive()
            provider.banned.discard("a")  # the platform lifted the ban
            await node.restart_channel("a")
            await wait_connected(node, 1)
            assert await node.send("a", message("after-revive"))


async def test_subscribe_filters_by_tenant_channel_and_kind(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = SimulatedProvider(latency=Fixed(seconds=0.01))
    config = node_config([sim("a", "acme"), sim("b", "acme"), sim("c", "globex")])
    with trio.fail_after(CEILING):
        async with open_node(
            config, channel_defaults=FAST, providers={"simulated": provider}
        ) as node:
            await wait_connected(node, 3)
            acme = node.subscribe(tenant="acme", kind="inbound")
            only_c = node.subscribe(channel="c")
            with pytest.raises(ValueError, match="unknown event kind"):
                node.subscribe(kind="inbund")
            for channel in ("a", "b", "c"):
                provider.inject(channel, f"to {channel}", peer="u")
            seen: list[NodeEvent] = [await acme.receive(), await acme.receive()]
            assert sorted(e.channel_id for e in seen) == ["a", "b"]
            assert all(isinstance(e.event, InboundMessage) and e.tenant == "acme" for e in seen)
            event = await only_c.receive()
            while event.kind != "inbound":
                event = await only_c.receive()
            assert (event.channel_id, event.tenant, event.event.text) == ("c", "globex", "to c")
            acme.close()
            only_c.close()


async def test_a_subscriber_takes_what_is_buffered_without_waiting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = SimulatedProvider(latency=Fixed(seconds=0.01))
    config = node_config([sim("a", "acme")])
    with trio.fail_after(CEILING):
        async with open_node(
            config, channel_defaults=FAST, providers={"simulated": provider}
        ) as node:
            await wait_connected(node, 1)
            with node.subscribe(kind="inbound") as events:
                with pytest.raises(trio.WouldBlock):
                    events.receive_nowait()
                for text in ("one", "two", "three"):
                    provider.inject("a", text, peer="u")
                await trio.sleep(1.0)  # every event published meanwhile
                texts = [events.receive_nowait().event.text for _ in range(3)]
                with pytest.raises(trio.WouldBlock):
                    events.receive_nowait()
                events.close()
                with pytest.raises(trio.EndOfChannel):
                    events.receive_nowait()
    assert texts == ["one", "two", "three"]


async def test_drain_finishes_accepted_sends_within_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = SimulatedProvider(latency=Fixed(seconds=0.5))
    results: list[Any] = []
    with trio.fail_after(CEILING):
        async with open_node(
            node_config([sim("a")]), channel_defaults=FAST, providers={"simulated": provider}
        ) as node:
            await wait_connected(node, 1)
            async with trio.open_nursery() as nursery:
                for i in range(4):
                    nursery.start_soon(_record, results, node.send("a", message(f"k{i}")))
                await trio.testing.wait_all_tasks_blocked()
                report = await node.drain()
            assert not node.ready
            with pytest.raises(NodeDraining):
                await node.send("a", message("late"))
    assert report.in_flight == 4
    assert report.kept == ()
    assert all(isinstance(r, SendResult) for r in results)
    assert sorted(m.idempotency_key for m in provider.sent) == ["k0", "k1", "k2", "k3"]


async def test_what_misses_the_deadline_is_kept_and_sent_at_the_next_start(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # One store across two node lifetimes stands for a durable one (the
    # outbox file and PostgreSQL are tested in the store's own tests: file
    # I/O runs in threads, which virtual time cannot wait for).
    provider = SimulatedProvider(latency=Fixed(seconds=1.0))
    config = node_config([sim("a")], node={"id": "t", "drain_deadline": 4.5, "start_timeout": 1.0})
    results: dict[str, Any] = {}
    with trio.fail_after(CEILING):
        async with open_store(StorageConfig()) as store:
            async with open_node(
                config, store=store, channel_defaults=FAST, providers={"simulated": provider}
            ) as node:
                await wait_connected(node, 1)
                async with trio.open_nursery() as nursery:
                    for i in range(10):
                        key = f"k{i}"
                        nursery.start_soon(
                            record_outcome, results, key, node.send("a", message(key))
                        )
                        await trio.testing.wait_all_tasks_blocked()
                    report = await node.drain()
            kept_keys = {item.message.idempotency_key for item in report.kept}
            sent_keys = {m.idempotency_key for m in provider.sent}
            # Sends take 1 s each, one at a time. The wait ends at 4.5 s minus
            # the close reserve (1.125 s); the send on the wire then finishes
            # (at 4 s) before its channel stops. What was sent is not kept,
            # and everything else is.
            assert len(sent_keys) == 4
            assert sent_keys | kept_keys == {f"k{i}" for i in range(10)}
            assert not sent_keys & kept_keys
            for key, outcome in results.items():
                if key in kept_keys:
                    assert isinstance(outcome, NodeDraining), (key, outcome)
                    assert "kept for the next start" in str(outcome)
                    assert not isinstance(outcome.__cause__, SendStopped)  # the node's own
                else:
                    assert isinstance(outcome, SendResult), (key, outcome)
            assert store.statistics().kept == len(kept_keys)
            assert (report.channels_stopped, report.channels_killed) == (1, 0)

            # The next start sends what was kept, and the store forgets it.
            async with open_node(
                config, store=store, channel_defaults=FAST, providers={"simulated": provider}
            ) as node:
                for _ in range(60):  # virtual seconds
                    if len({m.idempotency_key for m in provider.sent}) == 10:
                        break
                    await trio.sleep(1.0)
                assert len({m.idempotency_key for m in provider.sent}) == 10
                for _ in range(10):  # forgotten once sent, in a batch behind the sends
                    if not await store.read_outbound():
                        break
                    await trio.sleep(1.0)
                assert await store.read_outbound() == []


async def _record(results: list[Any], call: Any) -> None:
    try:
        results.append(await call)
    except Exception as exc:
        results.append(exc)


async def test_a_restarted_channels_supervisor_brings_every_channel_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = SimulatedProvider()
    with trio.fail_after(CEILING):
        async with open_node(
            node_config([sim("a"), sim("b")]),
            channel_defaults=FAST,
            providers={"simulated": provider},
        ) as node:
            await wait_connected(node, 2)
            before = {s.channel_id: s.statistics.restarts for s in node.channels() if s.statistics}
            assert before == {"a": 0, "b": 0}
            assert node._channels is not None
            with node.subscribe(kind="state") as changes:
                node._channels.ref.kill()  # the whole channels subtree dies at once
                reconnected: set[str] = set()
                while reconnected != {"a", "b"}:
                    event = await changes.receive()
                    if event.event.status is ChannelStatus.CONNECTED:
                        reconnected.add(event.channel_id)
            after = {s.channel_id: s.statistics.restarts for s in node.channels() if s.statistics}
            assert after == {"a": 1, "b": 1}  # the same memories, new incarnations
            assert await node.send("b", message("after-restart"))
            assert [c.id for c in node.tree().children] == ["channels"]
            assert [c.id for c in node.tree().children[0].children] == ["a", "b"]


async def test_a_node_whose_tree_gives_up_raises_instead_of_returning(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = SimulatedProvider()
    with trio.fail_after(CEILING), pytest.raises(BaseExceptionGroup) as raised:
        async with open_node(
            node_config([sim("a")]), channel_defaults=FAST, providers={"simulated": provider}
        ) as node:
            await wait_connected(node, 1)
            assert node._root is not None
            # One more death of the channels subtree than the root tolerates.
            for _ in range(ROOT_INTENSITY + 1):
                channels = await node._root.whereis_child("channels")
                assert channels is not None
                channels.kill()
                await trio.sleep(0.01)
            await trio.sleep_forever()  # the root's exit must end the block
    assert raised.group_contains(SupervisorExited, match="maximum restart intensity")


class _FlakyStore:
    """A real memory store whose inbound writes fail while ``down``."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.down = True
        self.refused = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def store_inbound(self, events: Any) -> list[bool]:
        if self.down:
            self.refused += 1
            raise StoreError("the store is down (test)")
        fresh: list[bool] = await self.inner.store_inbound(events)
        return fresh

    def store_inbound_later(self, events: Any, kept: Any) -> bool:
        # Down, it takes nothing without waiting (the waiting way refuses).
        return not self.down and bool(self.inner.store_inbound_later(events, kept))


async def test_inbound_events_wait_out_a_store_outage_without_crashing_the_channel(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = SimulatedProvider()
    with trio.fail_after(CEILING):
        async with open_store(StorageConfig()) as inner:
            store = _FlakyStore(inner)
            async with open_node(
                node_config([sim("a")]),
                store=store,  # type: ignore[arg-type]
                channel_defaults=FAST,
                providers={"simulated": provider},
            ) as node:
                await wait_connected(node, 1)
                provider.inject("a", "while the store is down")
                await trio.sleep(FAST.inbound_retry * 3.5)  # every flush refused
                assert store.refused >= 3
                snapshot = node.channels()[0]
                assert snapshot.status is ChannelStatus.CONNECTED
                assert snapshot.statistics is not None and snapshot.statistics.restarts == 0
                store.down = False
                await trio.sleep(FAST.inbound_retry * 2)
                await inner.flush()
                saved = await inner.recent_inbound("a")
                assert [e.text for e in saved] == ["while the store is down"]


async def test_a_kept_message_leaves_the_store_only_when_sent_or_dead_lettered(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The resend's policy (runtime.resend): what is not done stays kept (issue 11)."""
    from providers.simulated import FailureRates
    from runtime.store import KeptMessage

    def kept(channel: str, key: str) -> KeptMessage:
        return KeptMessage(
            channel_id=channel, message=message(key), reason="drain", accepted_at=1.0
        )

    refusing = SimulatedProvider(failures=FailureRates(send_permanent=1.0))
    calls = count_sends(monkeypatch)
    with trio.fail_after(CEILING):
        async with open_store(StorageConfig()) as store:
            # A blank key was let in by older versions: it can never be sent and is
            # dropped (before, it stayed kept, tried at every start).
            await store.keep_outbound(
                [kept("a", "refused"), kept("gone", "nowhere"), kept("a", " ")]
            )
            async with open_node(
                node_config([sim("a")]),
                store=store,
                channel_defaults=FAST,
                providers={"simulated": refusing},
            ) as node:
                for _ in range(30):  # virtual seconds
                    if len(await store.read_outbound()) == 1:
                        break
                    await trio.sleep(1.0)
                letters = await node.dead_letters()
            left = await store.read_outbound()
    assert [item.message.idempotency_key for item in left] == ["nowhere"]  # unknown channel
    assert [d.letter.message.idempotency_key for d in letters] == ["refused"]
    assert calls == {"refused": 1}  # (" " was never tried)


@pytest.mark.parametrize("outage", ["platform down", "channel failed"])
async def test_a_kept_message_its_channel_cannot_take_yet_goes_once_it_can_without_a_restart(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch, outage: str
) -> None:
    # Before, it stayed kept until the node's next start (weeks, for a node that
    # stays up), because its channel had no connection within connect_wait as
    # the node started, or was FAILED until an operator revived it.
    from providers.simulated import FailureRates
    from runtime.store import KeptMessage

    provider = SimulatedProvider(latency=Fixed(seconds=0.1))
    if outage == "platform down":
        provider.failures = FailureRates(connect_transient=1.0)
    else:
        provider.banned.add("a")
    calls = count_sends(monkeypatch)
    with trio.fail_after(RESEND_RETRY_CAP * 2):  # (virtual seconds)
        async with open_store(StorageConfig()) as store:
            kept = KeptMessage(channel_id="a", message=message("k"), reason="drain", accepted_at=1)
            await store.keep_outbound([kept])
            async with open_node(
                node_config([sim("a")]),
                store=store,
                channel_defaults=FAST,
                providers={"simulated": provider},
            ) as node:
                await trio.sleep(60.0)  # tried, and not taken: still kept
                assert calls == {} and len(await store.read_outbound()) == 1
                if outage == "platform down":
                    provider.failures = FailureRates()
                else:
                    provider.banned.discard("a")
                    await node.restart_channel("a")
                await wait_connected(node, 1)
                await trio.sleep(RESEND_RETRY_CAP + 5.0)  # its next try, at the latest
                assert await store.read_outbound() == []
    assert calls == {"k": 1}


async def test_send_refuses_what_json_cannot_carry_with_a_typed_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """One NaN used to be accepted, then spoil the drain's whole kept batch (issue 11)."""
    from providers.operations import EditMessage
    from runtime import InvalidMessage

    provider = SimulatedProvider()
    bad = OutboundMessage(
        peer="p1", idempotency_key="k-nan", text="hi", metadata={"score": float("nan")}
    )
    with trio.fail_after(CEILING):
        async with open_node(
            node_config([sim("a")]), channel_defaults=FAST, providers={"simulated": provider}
        ) as node:
            await wait_connected(node, 1)
            with pytest.raises(InvalidMessage) as caught:
                await node.send("a", bad)
            with pytest.raises(ValueError, match=r"a set is not a JSON value @ \$\.metadata\.tags"):
                await node.edit(
                    "a", EditMessage(peer="p1", message_id="m", text="t", metadata={"tags": {1}})
                )
            assert (await node.send("a", message("k-fine"))).peer == "p1"
    error = caught.value
    assert (error.channel_id, error.idempotency_key) == ("a", "k-nan")
    assert error.problems == (
        ("$.metadata.score", "nan is not a JSON number (only finite numbers are)"),
    )
    assert "'k-nan'" in str(error) and "$.metadata.score" in str(error)
    assert [m.idempotency_key for m in provider.sent] == ["k-fine"]


async def test_a_resent_message_is_forgotten_once_the_store_takes_the_forget(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A store down while the resend finishes keeps the message kept (sent again at worst,
    never lost), and the forget goes through once it is back."""
    from runtime.store import KeptMessage

    provider = SimulatedProvider()
    attempts: list[float] = []
    with trio.fail_after(CEILING):
        async with open_store(StorageConfig()) as store:
            real_forget = store.forget_outbound

            async def flaky_forget(ids: Any) -> int:
                attempts.append(trio.current_time())
                if len(attempts) <= 3:
                    raise StoreError("the store is down (test)")
                return await real_forget(ids)

            store.forget_outbound = flaky_forget  # type: ignore[method-assign]
            kept = KeptMessage(channel_id="a", message=message("k1"), reason="drain", accepted_at=1)
            await store.keep_outbound([kept])
            async with open_node(
                node_config([sim("a")]),
                store=store,
                channel_defaults=FAST,
                providers={"simulated": provider},
            ):
                for _ in range(60):  # virtual seconds
                    if not await store.read_outbound():
                        break
                    await trio.sleep(1.0)
            left = await store.read_outbound()
    assert [m.idempotency_key for m in provider.sent] == ["k1"]
    assert left == []
    assert len(attempts) == 4
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(attempts)]
    assert gaps == [1.0, 2.0, 4.0]  # backing off while the store is down


async def test_the_drain_keeps_its_leftovers_through_a_short_store_outage(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A store that fails at the drain (a database restarting) is tried again within the
    grace, instead of failing the drain and losing every leftover (issue 11)."""
    provider = SimulatedProvider(latency=Fixed(seconds=30.0))  # nothing is sent in time
    config = node_config([sim("a")], node={"id": "t", "drain_deadline": 2.0, "start_timeout": 1.0})
    refusals: list[float] = []
    results: dict[str, Any] = {}
    with trio.fail_after(CEILING):
        async with open_store(StorageConfig()) as store:
            real_keep = store.keep_outbound

            async def flaky_keep(items: Any) -> Any:
                if len(refusals) < 2:
                    refusals.append(trio.current_time())
                    raise StoreError("the store is restarting (test)")
                return await real_keep(items)

            store.keep_outbound = flaky_keep  # type: ignore[method-assign]
            async with open_node(
                config, store=store, channel_defaults=FAST, providers={"simulated": provider}
            ) as node:
                await wait_connected(node, 1)
                async with trio.open_nursery() as nursery:
                    for i in range(3):
                        key = f"k{i}"
                        nursery.start_soon(
                            record_outcome, results, key, node.send("a", message(key))
                        )
                    await trio.testing.wait_all_tasks_blocked()
                    report = await node.drain()
            kept = await store.read_outbound()
    assert len(refusals) == 2
    assert sorted(item.message.idempotency_key for item in report.kept) == ["k0", "k1", "k2"]
    assert sorted(item.message.idempotency_key for item in kept) == ["k0", "k1", "k2"]
    assert all("kept for the next start" in str(outcome) for outcome in results.values())


async def test_a_store_down_through_the_drain_names_what_it_could_not_keep(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    # The StoreError left the drain at once: the log named no message (only the
    # senders heard, "see the log"), and the channels' last checkpoints were
    # never written. Now: one line a message, the last writes, then the error.
    provider = SimulatedProvider(latency=Fixed(seconds=30.0))  # nothing is sent in time
    config = node_config([sim("a")], node={"id": "t", "drain_deadline": 2.0, "start_timeout": 1.0})
    results: dict[str, Any] = {}
    tries: list[float] = []
    with trio.fail_after(CEILING):
        async with open_store(StorageConfig()) as store:

            async def down(items: Any) -> Any:
                tries.append(trio.current_time())
                raise StoreError("the store is down (test)")

            store.keep_outbound = down  # type: ignore[method-assign]
            flushes: list[float] = []
            flush = store.flush

            async def counted_flush() -> None:
                flushes.append(trio.current_time())
                await flush()

            store.flush = counted_flush  # type: ignore[method-assign]
            with pytest.raises(BaseExceptionGroup) as raised:
                async with open_node(
                    config, store=store, channel_defaults=FAST, providers={"simulated": provider}
                ) as node:
                    await wait_connected(node, 1)
                    async with trio.open_nursery() as nursery:
                        for i in range(3):
                            key = f"k{i}"
                            nursery.start_soon(
                                record_outcome, results, key, node.send("a", message(key))
                            )
                        await trio.testing.wait_all_tasks_blocked()
                        await node.drain()
    assert raised.group_contains(StoreError, match="down")
    assert all("keeping it failed" in str(outcome) for outcome in results.values()), results
    named = [r for r in caplog.records if r.getMessage().startswith("not sent and not kept")]
    assert sorted(getattr(r, "switchboard.idempotency_key") for r in named) == ["k0", "k1", "k2"]
    assert flushes  # the drain's last writes ran
    # The first try as the channels stopped, the last at the grace's end (it gave up
    # a second or more early: the next doubling went past it).
    assert tries[-1] - tries[0] == pytest.approx(STORE_GRACE)


async def _drain_under_timeouts(
    seconds: float, *, store_refusals: int
) -> tuple[dict[str, Any], Any, list[Any]]:
    """Three sends that cannot go in time (30 s each), a drain (deadline 2 s),
    the callers' timeouts at ``seconds``; the store refuses the first keeps."""
    provider = SimulatedProvider(latency=Fixed(seconds=30.0))
    config = node_config([sim("a")], node={"id": "t", "drain_deadline": 2.0, "start_timeout": 1.0})
    results: dict[str, Any] = {}
    refused: list[float] = []
    with trio.fail_after(CEILING):
        async with open_store(StorageConfig()) as store:
            keep = store.keep_outbound

            async def refusing_keep(items: Any) -> Any:
                if len(refused) < store_refusals:
                    refused.append(trio.current_time())
                    raise StoreError("the store is restarting (test)")
                return await keep(items)

            store.keep_outbound = refusing_keep  # type: ignore[method-assign]
            async with open_node(
                config, store=store, channel_defaults=FAST, providers={"simulated": provider}
            ) as node:
                await wait_connected(node, 1)
                async with trio.open_nursery() as nursery:
                    for i in range(3):
                        key = f"k{i}"
                        send = node.send("a", message(key), timeout=seconds)
                        nursery.start_soon(record_outcome, results, key, send)
                    await trio.testing.wait_all_tasks_blocked()
                    report = await node.drain()
            kept = await store.read_outbound()
    assert len(refused) == store_refusals
    return results, report, kept


async def test_a_timeout_between_the_drain_s_cut_and_its_keep_loses_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The drain cuts at 1.5 s and keeps the leftovers once the channel stopped
    # (2.0 s); the callers' timeouts fall between: the sends are still kept,
    # and their callers told so (not "keeping failed").
    results, report, kept = await _drain_under_timeouts(1.75, store_refusals=0)
    keys = ["k0", "k1", "k2"]
    assert sorted(item.message.idempotency_key for item in report.kept) == keys
    assert sorted(item.message.idempotency_key for item in kept) == keys
    assert sorted(results) == keys
    for outcome in results.values():
        assert isinstance(outcome, NodeDraining)
        assert "kept for the next start" in str(outcome)


async def test_a_timeout_while_the_drain_keeps_does_not_report_a_kept_send_as_lost(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The store refuses twice, so the drain keeps the leftovers at about
    # 2.75 s; the callers' timeouts (2.1 s) fall while they wait for it.
    results, _, kept = await _drain_under_timeouts(2.1, store_refusals=2)
    keys = ["k0", "k1", "k2"]
    assert sorted(item.message.idempotency_key for item in kept) == keys
    for outcome in results.values():
        assert isinstance(outcome, NodeDraining)
        assert "kept for the next start" in str(outcome)


@pytest.mark.parametrize("seconds", [-1.0, -math.inf, math.nan])
async def test_a_send_with_a_timeout_that_is_no_duration_is_refused_before_anything(
    autojump_clock: trio.testing.MockClock, seconds: float
) -> None:
    provider = SimulatedProvider(latency=Fixed(seconds=0.5))
    with trio.fail_after(CEILING):
        async with open_node(
            node_config([sim("a")]), channel_defaults=FAST, providers={"simulated": provider}
        ) as node:
            await wait_connected(node, 1)
            with pytest.raises(ValueError, match="timeout must be seconds >= 0") as raised:
                await node.send("a", message("k"), timeout=seconds)
            assert "'k'" in str(raised.value) and "nothing was sent" in str(raised.value)
            assert node.statistics().sends_in_flight == 0
            # The node goes on: the same key, given a real timeout, is sent once.
            assert isinstance(await node.send("a", message("k"), timeout=5), SendResult)
            assert isinstance(await node.send("a", message("k"), timeout=0.0), SendResult)
    assert [sent.idempotency_key for sent in provider.sent] == ["k"]


async def test_a_key_sent_again_while_on_its_way_goes_out_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A caller's retry of a send still waiting for the platform (1 s) waits for that
    # send and takes its answer: the platform sees the key once, in one second.
    provider = SimulatedProvider(latency=Fixed(seconds=1.0))
    results: list[SendResult] = []
    with trio.fail_after(CEILING):
        async with open_node(
            node_config([sim("a")]), channel_defaults=FAST, providers={"simulated": provider}
        ) as node:
            await wait_connected(node, 1)

            async def send() -> None:
                results.append(await node.send("a", message("twice")))

            began = trio.current_time()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(send)
                await trio.testing.wait_all_tasks_blocked()
                assert node.statistics().sends_in_flight == 1  # the retry holds no send
            took = trio.current_time() - began
            assert node.statistics().sends_in_flight == 0
            again = await node.send("a", message("twice"))  # later: from the channel's memory
    assert [m.idempotency_key for m in provider.sent] == ["twice"]
    assert took < 1.5
    assert len(results) == 2 and results[0] == results[1] == again


@contextlib.asynccontextmanager
async def simulated_node(
    provider: SimulatedProvider, channels: list[dict[str, Any]] | None = None, **sections: Any
) -> AsyncIterator[Any]:
    """A node of ``provider``'s channels (``a`` by default) with the config's
    ``sections``, every channel connected, under a hang ceiling."""
    config = node_config(channels or [sim("a")], **sections)
    with trio.fail_after(CEILING):
        async with open_node(
            config, channel_defaults=FAST, providers={"simulated": provider}
        ) as node:
            await wait_connected(node, len(config.channels))
            yield node


class HeldWrites:
    """Holds the node's store's event writes until opened (a slow or failing store)."""

    def __init__(self, store: Any) -> None:
        self.entered = trio.Event()  # a write waits at the gate
        self.opened = trio.Event()
        write = store._write_batch

        async def held(batch: Any) -> Any:
            self.entered.set()
            await self.opened.wait()
            return await write(batch)

        store._write_batch = held


async def test_a_restarted_channels_events_come_after_the_old_ones_the_store_held(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A receipt the store still holds when restart_channel stops the channel:
    # the old incarnation's STOPPED rides behind it, and so must everything the
    # new one publishes. Before, the new CONNECTING and CONNECTED came first and
    # the old STOPPED last: a subscriber (the console's history) saw a running
    # channel as stopped.
    provider = SimulatedProvider(latency=Fixed(seconds=0.01))
    async with simulated_node(provider) as node:
        gate = HeldWrites(node.store)
        connected_again = trio.Event()
        connect = provider.open_connection

        @contextlib.asynccontextmanager
        async def reconnect(*args: Any) -> AsyncIterator[Any]:
            async with connect(*args) as connection:
                connected_again.set()
                yield connection

        provider.open_connection = reconnect  # type: ignore[method-assign]
        with node.subscribe(channel="a") as events:
            await node.send("a", message("k1"))
            await gate.entered.wait()  # the send's receipt is in the store's hands
            await node.restart_channel("a")
            await connected_again.wait()
            assert node.channels()[0].status is ChannelStatus.CONNECTED
            gate.opened.set()  # the old receipt, and what rode behind it, go out
            seen: list[Any] = []
            while not seen or seen[-1] != ChannelStatus.CONNECTED:
                event = (await events.receive()).event
                is_state = isinstance(event, ChannelStateChanged)
                seen.append(event.status if is_state else type(event).__name__)
        assert seen == [
            "DeliveryReceipt",
            ChannelStatus.STOPPED,
            ChannelStatus.CONNECTING,
            ChannelStatus.CONNECTED,
        ]
        assert node.channels()[0].status is ChannelStatus.CONNECTED


async def test_an_inbound_event_a_stop_left_unkept_is_kept_by_the_restarted_channel(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The store holds the write of an inbound message while restart_channel
    # stops the channel: the old incarnation's stop cannot hand it over and is
    # killed after its shutdown. The restarted channel hands it over and
    # publishes it; before, it stayed in the old memory, never published.
    provider = SimulatedProvider(latency=Fixed(seconds=0.01))
    async with simulated_node(provider, supervisor={"shutdown": 1.0}) as node:
        gate = HeldWrites(node.store)
        with node.subscribe(channel="a", kind="inbound") as events:
            sent_id = provider.inject("a", "hello")
            await gate.entered.wait()  # read, and waiting for the store
            await node.restart_channel("a")
            assert node.channel_detail("a").inbound_pending == 1  # taken over
            # While the store still holds it, the channel connects and sends (the
            # event is kept beside, not before, the connect).
            await node.send("a", message("k1"), timeout=5.0)
            gate.opened.set()
            got = (await events.receive()).event
            assert got.platform_message_id == sent_id and got.text == "hello"
            await node.send("a", message("k2"))
            assert node.channel_detail("a").inbound_pending == 0
            with pytest.raises(trio.WouldBlock):
                events._receive.receive_nowait()  # published once


async def append_outcome(outcomes: list[Any], call: Any, *args: Any, **kwargs: Any) -> None:
    """Await ``call(*args, **kwargs)``; append what it returned, or the exception it raised."""
    try:
        outcomes.append(await call(*args, **kwargs))
    except Exception as exc:
        outcomes.append(exc)


@contextlib.asynccontextmanager
async def counted_node(
    monkeypatch: pytest.MonkeyPatch, latency: float, fail_first_of: str | None = None
) -> AsyncIterator[tuple[Any, dict[str, int]]]:
    """A node of one simulated channel ``a`` whose platform takes ``latency``
    seconds a send: ``(node, its send attempts by key)`` (see :func:`count_sends`)."""
    calls = count_sends(monkeypatch, fail_first_of)
    async with simulated_node(SimulatedProvider(latency=Fixed(seconds=latency))) as node:
        yield node, calls


def count_sends(
    monkeypatch: pytest.MonkeyPatch, fail_first_of: str | None = None
) -> dict[str, int]:
    """The simulated platform's send attempts by idempotency key (the first
    attempt of ``fail_first_of`` refused for good)."""
    from providers.base import PermanentSendError
    from providers.simulated import SimulatedConnection

    calls: dict[str, int] = {}
    roll = SimulatedConnection._roll

    async def counted(self: SimulatedConnection, key: str, peer: str) -> None:
        calls[key] = calls.get(key, 0) + 1
        await roll(self, key, peer)
        if key == fail_first_of and calls[key] == 1:
            raise PermanentSendError(f"refused {key!r}", peer=peer)

    monkeypatch.setattr(SimulatedConnection, "_roll", counted)
    return calls


async def test_callers_of_one_key_whose_first_send_failed_go_one_at_a_time(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Twenty callers of one key: the first send is refused; before, the
    # nineteen who waited for it each sent a copy of their own at once.
    outcomes: list[Any] = []
    async with counted_node(monkeypatch, 0.5, fail_first_of="same") as (node, calls):
        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(append_outcome, outcomes, node.send, "a", message("same"))
    assert calls == {"same": 2}  # the refused one, then one more
    errors = [o for o in outcomes if isinstance(o, Exception)]
    assert [type(e).__name__ for e in errors] == ["PermanentSendError"]
    answers = {o.platform_message_id for o in outcomes if isinstance(o, SendResult)}
    assert len(answers) == 1 and len(outcomes) == 20


async def test_a_retry_of_a_send_its_caller_gave_up_on_is_answered_not_sent_again(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The caller stops waiting while its send is on the wire and asks again
    # with the same key: the retry waits behind the first in its peer's chain
    # and gets the first's answer (before, it was sent a second time).
    calls = count_sends(monkeypatch)
    provider = SimulatedProvider(latency=Fixed(seconds=3.0))
    async with simulated_node(provider) as node:
        with trio.move_on_after(1.0) as waited:
            await node.send("a", message("c1"))
        assert waited.cancelled_caught
        retry = await node.send("a", message("c1"))
        assert calls == {"c1": 1}
        assert [m.idempotency_key for m in provider.sent] == ["c1"]
        assert retry.platform_message_id == provider.sent[0].platform_message_id


async def test_a_second_caller_out_of_time_is_not_sent_beside_the_first(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runtime import AskTimeout

    async with counted_node(monkeypatch, 3.0) as (node, calls):
        first: list[Any] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(append_outcome, first, node.send, "a", message("dup"))
            await trio.testing.wait_all_tasks_blocked()
            began = trio.current_time()
            with pytest.raises(AskTimeout, match="still on its way") as caught:
                await node.send("a", message("dup"), timeout=2.0)
            assert trio.current_time() - began == pytest.approx(2.0)
            assert caught.value.idempotency_key == "dup"
        assert isinstance(first[0], SendResult)
        assert calls == {"dup": 1}


async def test_a_key_reused_for_another_message_is_refused_not_answered_as_the_first(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, the second message was answered with the first's result and
    # never sent: the caller was told it went out.
    from providers.operations import EditMessage
    from runtime import InvalidMessage, KeyReused

    async with counted_node(monkeypatch, 0.1) as (node, calls):
        first = await node.send("a", message("k", "hello"))
        others = [
            message("k", "goodbye"),  # another text
            message("k", "hello", peer="p2"),  # another peer
            OutboundMessage(peer="p1", idempotency_key="k", text="hello", reply_to="m1"),
            OutboundMessage(peer="p1", idempotency_key="k", text="hello", metadata={"a": 1}),
            EditMessage(peer="p1", message_id="m1", text="hello", idempotency_key="k"),
        ]
        for other in others:
            with pytest.raises(KeyReused, match="sent already with another message") as caught:
                await node.perform("a", other)
            assert isinstance(caught.value, InvalidMessage)  # (a caller's mistake, as those)
            assert caught.value.idempotency_key == "k"
        # The same message is still a retry, answered as the first.
        again = await node.send("a", message("k", "hello"))
        assert again == first
        assert calls == {"k": 1}


async def test_a_replayed_dead_letter_whose_key_went_out_with_another_message_stays_a_letter(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its key was sent since with another message: the replay cannot send it
    # under that key, and nobody waits for it; before, it was answered as the
    # other and gone.
    from runtime import PermanentSendError

    async with counted_node(monkeypatch, 0.1, fail_first_of="d") as (node, calls):
        with pytest.raises(PermanentSendError):
            await node.send("a", message("d", "one"))
        await node.send("a", message("d", "two"))  # (the key is free: "one" failed)
        assert await node.replay_dead_letters("a") == 1
        await trio.testing.wait_all_tasks_blocked()
        (letter,) = await node.channel("a").dead_letters()
        assert (letter.error_type, letter.message.text) == ("KeyReused", "one")
        assert calls == {"d": 2}


async def test_a_replayed_letter_made_a_letter_again_is_written_at_once(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The replay wrote the letter's taking at once; its return as a letter
    # waited for the next checkpoint round, and a kill before it lost it.
    from runtime import PermanentSendError

    calls = count_sends(monkeypatch, fail_first_of="d")
    provider = SimulatedProvider(latency=Fixed(seconds=0.1))
    async with simulated_node(provider, storage={"checkpoint_interval": 3600}) as node:
        with pytest.raises(PermanentSendError):
            await node.send("a", message("d", "one"))
        await node.send("a", message("d", "two"))
        assert await node.replay_dead_letters("a") == 1
        await trio.testing.wait_all_tasks_blocked()
        stored = await node.store.load_checkpoint("a")
        assert stored is not None and stored.state is not None
        (record,) = stored.state.dead_letters
        assert (record.error_type, record.message.text) == ("KeyReused", "one")
        assert calls == {"d": 2}


@contextlib.asynccontextmanager
async def three_letters_replayed(store: Any) -> AsyncIterator[tuple[Any, SimulatedProvider]]:
    """``(node, platform)``: a node on ``store`` whose channel ``a`` (a window of
    one, each send 1 s) has just replayed its three dead letters d1, d2, d3."""
    from providers.simulated import FailureRates
    from runtime import PermanentSendError

    provider = SimulatedProvider(
        latency=Fixed(seconds=1.0), failures=FailureRates(send_permanent=1.0)
    )
    window = {"simulated": {"rate_limit": {"enabled": False}, "send_window": 1}}
    config = node_config([sim("a")], providers=window)
    async with open_node(
        config, store=store, channel_defaults=FAST, providers={"simulated": provider}
    ) as node:
        await wait_connected(node, 1)
        for key in ("d1", "d2", "d3"):
            with pytest.raises(PermanentSendError):
                await node.send("a", message(key))
        provider.failures = FailureRates()
        assert await node.replay_dead_letters("a") == 3
        yield node, provider


async def test_replayed_letters_a_drain_cuts_off_are_letters_again_in_the_last_checkpoint(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A replay tells the channel each letter (nobody waits for them), after
    # writing their taking; the drain stopped the channel with two still
    # queued, which went to the actor system's dead letters: gone.
    with trio.fail_after(CEILING):
        async with open_store(StorageConfig()) as store:
            async with three_letters_replayed(store) as (node, provider):
                await node.drain(2.5)  # one at a time, 1 s each: the cut comes at 1.875 s
            stored = await store.load_checkpoint("a")
    assert stored is not None and stored.state is not None
    letters = [record.message.idempotency_key for record in stored.state.dead_letters]
    sent = [m.idempotency_key for m in provider.sent]
    assert (sent, letters) == (["d1", "d2"], ["d3"]) or (sent, letters) == (["d1"], ["d2", "d3"])
    assert all(r.error_type == "ChannelUnavailable" for r in stored.state.dead_letters)


async def test_a_failed_channels_replay_is_the_nodes_channel_failed_and_keeps_the_letters(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, the letters were taken and each replayed send refused unheard
    # (gone); and the kernel's own error reached the ops API (500) and the console.
    from runtime import ChannelFailed, NodeError, PermanentSendError

    count_sends(monkeypatch, fail_first_of="d")
    provider = SimulatedProvider(latency=Fixed(seconds=0.1))
    async with simulated_node(provider) as node:
        with pytest.raises(PermanentSendError):
            await node.send("a", message("d", "one"))
        provider.ban("a")
        with node.subscribe(channel="a", kind="state") as changes:
            while node.channels()[0].status is not ChannelStatus.FAILED:
                await changes.receive()
        with pytest.raises(ChannelFailed, match="restart it before replaying") as caught:
            await node.replay_dead_letters("a")
        assert isinstance(caught.value, NodeError)
        (letter,) = await node.channel("a").dead_letters()
        assert letter.message.text == "one"


async def test_a_kept_message_whose_key_went_out_with_another_becomes_a_dead_letter(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A kept message's resend (kept_id: nobody waits for it) refused for its
    # reused key was logged and forgotten by the resend: lost. It is a dead
    # letter now, once per key, which holds it from then on.
    from runtime import KeyReused

    async with counted_node(monkeypatch, 0.1) as (node, calls):
        await node.send("a", message("kept", "sent since"))
        for _ in range(2):
            with pytest.raises(KeyReused):
                await node._perform("a", message("kept", "the kept one"), None, kept_id=7)
        (letter,) = await node.channel("a").dead_letters()
        assert (letter.error_type, letter.message.text) == ("KeyReused", "the kept one")
        assert calls == {"kept": 1}


async def test_a_key_reused_after_restart_channel_is_still_refused(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The restart hands the old memory over in this process: its answers keep
    # their prints (a checkpoint's copy keeps none).
    from runtime import KeyReused

    async with counted_node(monkeypatch, 0.1) as (node, calls):
        first = await node.send("a", message("r", "one"))
        for n in range(300):  # more than a checkpoint's 256 answers, all kept
            await node.send("a", message(f"more-{n}"))
        await node.restart_channel("a")
        await wait_connected(node, 1)
        with pytest.raises(KeyReused):
            await node.send("a", message("r", "two"))
        assert await node.send("a", message("r", "one")) == first
        assert calls["r"] == 1


async def test_a_message_whose_content_cannot_be_printed_is_sent_once_not_crashed(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An enum whose value no hash takes passes json_problems in a typed field;
    # printing it raised in the channel after the platform took the message,
    # which crashed the channel and sent the message again on the retry.
    import enum

    class Odd(enum.Enum):
        SET = {1}

    async with counted_node(monkeypatch, 0.1) as (node, calls):
        odd = OutboundMessage(peer="p1", idempotency_key="odd", text="x", metadata=Odd.SET)  # type: ignore[arg-type]
        first = await node.send("a", odd)
        assert await node.send("a", odd) == first  # (no print: answered as before)
        assert calls == {"odd": 1}
        assert node.channel("a").statistics().restarts == 0


async def test_a_key_reused_while_its_first_send_is_out_is_refused_at_once(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runtime import KeyReused

    async with counted_node(monkeypatch, 3.0) as (node, calls):
        first: list[Any] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(append_outcome, first, node.send, "a", message("out", "one"))
            await trio.testing.wait_all_tasks_blocked()
            began = trio.current_time()
            with pytest.raises(KeyReused, match="is being sent with another message"):
                await node.send("a", message("out", "two"))
            assert trio.current_time() == began  # not after waiting for the first
        assert isinstance(first[0], SendResult)
        assert calls == {"out": 1}


async def test_a_key_reused_behind_its_first_send_in_the_channel_is_refused(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its first caller gave up while the send was on the wire; the other
    # message waits behind it in its peer's chain, and once the key is
    # answered it is refused there (SendPath._unanswered), not answered as it.
    from runtime import KeyReused

    calls = count_sends(monkeypatch)
    provider = SimulatedProvider(latency=Fixed(seconds=3.0))
    async with simulated_node(provider) as node:
        with trio.move_on_after(1.0) as waited:
            await node.send("a", message("gave-up", "one"))
        assert waited.cancelled_caught
        with pytest.raises(KeyReused, match="this one was not sent"):
            await node.send("a", message("gave-up", "two"))
        assert calls == {"gave-up": 1}
        assert [m.idempotency_key for m in provider.sent] == ["gave-up"]


async def test_two_stops_and_three_restarts_of_one_channel_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Before, the second stop (and two of the restarts) reached the supervisor
    # after the first had removed the child: supervisors.ChildNotFound, no
    # error of the node's.
    provider = SimulatedProvider(latency=Fixed(seconds=0.01))
    async with simulated_node(provider, channels=[sim("b"), sim("c")]) as node:
        stops: list[Any] = []
        restarts: list[Any] = []
        async with trio.open_nursery() as nursery:
            for _ in range(2):
                nursery.start_soon(append_outcome, stops, node.stop_channel, "b")
            for _ in range(3):
                nursery.start_soon(append_outcome, restarts, node.restart_channel, "c")
        assert stops == [None, None]
        assert [s.channel_id for s in node.channels()] == ["c"]
        started = [r for r in restarts if not isinstance(r, Exception)]
        assert started and all(r.channel_id == "c" for r in started)
        assert all(isinstance(r, ChannelExists) for r in restarts if r not in started)
        await wait_connected(node, 1)
        await node.send("c", message("after"))


async def test_a_send_cut_off_by_a_stop_says_so_in_the_nodes_words(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from runtime import ChannelUnavailable

    provider = SimulatedProvider(latency=Fixed(seconds=1.0))
    async with simulated_node(provider, channels=[{**sim("a"), "send_window": 1}]) as node:
        outcomes: list[Any] = []
        async with trio.open_nursery() as nursery:
            for key in ("s1", "s2"):  # the second waits in the mailbox: a window of one
                nursery.start_soon(append_outcome, outcomes, node.send, "a", message(key))
                await trio.testing.wait_all_tasks_blocked()
            await node.stop_channel("a")
        cut = [o for o in outcomes if isinstance(o, ChannelUnavailable)]
        assert [c.idempotency_key for c in cut] == ["s2"]
        assert str(cut[0]).startswith("channel 'a' stopped while this send")
        assert "ActorRef" not in str(cut[0])


async def test_a_send_that_times_out_behind_an_open_breaker_says_so(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from providers.simulated import FailureRates
    from runtime import AskTimeout

    provider = SimulatedProvider(
        latency=Fixed(seconds=0.01), failures=FailureRates(send_transient=1.0)
    )
    async with simulated_node(provider) as node:
        outcomes: list[Any] = []
        async with trio.open_nursery() as nursery:  # failures enough to open the breaker
            for n in range(12):
                nursery.start_soon(
                    functools.partial(
                        append_outcome, outcomes, node.send, "a", message(f"m{n}"), timeout=5.0
                    )
                )
        timed_out = [o for o in outcomes if isinstance(o, AskTimeout)]
        assert timed_out, outcomes
        assert all("circuit breaker is open" in str(o) for o in timed_out)


def hold_first_terminate(monkeypatch: pytest.MonkeyPatch) -> tuple[trio.Event, trio.Event]:
    """Hold the channels' supervisor's first ``terminate_child`` (a stop's, a
    restart's) until the test lets it go: ``(entered, release)``."""
    from supervisors import SupervisorRef

    terminate = SupervisorRef.terminate_child
    entered, release = trio.Event(), trio.Event()

    async def first_held(self: SupervisorRef, child_id: str) -> None:
        if not entered.is_set():
            entered.set()
            await release.wait()
        await terminate(self, child_id)

    monkeypatch.setattr(SupervisorRef, "terminate_child", first_held)
    return entered, release


async def test_a_stop_during_a_restart_stops_what_the_restart_started(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, the stop waited for the restart's own stop, returned, and the
    # restart then started the channel: stop_channel said done, the channel ran.
    entered, release = hold_first_terminate(monkeypatch)  # the restart's
    provider = SimulatedProvider(latency=Fixed(seconds=0.01))
    async with simulated_node(provider, channels=[sim("c")]) as node:
        outcomes: list[Any] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(append_outcome, outcomes, node.restart_channel, "c")
            await entered.wait()
            nursery.start_soon(append_outcome, outcomes, node.stop_channel, "c")
            await trio.testing.wait_all_tasks_blocked()
            release.set()
        restarted, stopped = outcomes
        assert restarted.channel_id == "c" and stopped is None
        assert node.channels() == []


async def test_a_caller_who_waited_for_the_first_send_of_its_key_keeps_its_own_timeout(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first send is refused after 3 s; the second caller (4 s) then tries on
    # its own with what is left of its time, not 4 s more (it waited 6 s).
    from runtime import AskTimeout

    count_sends(monkeypatch, fail_first_of="same")
    provider = SimulatedProvider(latency=Fixed(seconds=3.0))
    async with simulated_node(provider) as node:
        first: list[Any] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(append_outcome, first, node.send, "a", message("same"))
            await trio.testing.wait_all_tasks_blocked()
            began = trio.current_time()
            with pytest.raises(AskTimeout):
                await node.send("a", message("same"), timeout=4.0)
            assert trio.current_time() - began == pytest.approx(4.0)


async def test_a_stop_waiting_behind_another_never_stops_a_start_begun_meanwhile(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stops the channel (held in the supervisor), B's stop waits for A, and a
    # start begins once A is done. Before, B could take the start's half-made row
    # for the channel and forget it: a running channel the node no longer listed.
    # Trio wakes B and the start in either order: tried twenty times.
    from supervisors import SupervisorRef

    terminate = SupervisorRef.terminate_child
    gates: list[tuple[trio.Event, trio.Event]] = []

    async def held(self: SupervisorRef, child_id: str) -> None:
        if gates:
            entered, release = gates.pop()
            entered.set()
            await release.wait()
        await terminate(self, child_id)

    monkeypatch.setattr(SupervisorRef, "terminate_child", held)
    provider = SimulatedProvider(latency=Fixed(seconds=0.01))
    async with simulated_node(provider, channels=[sim("c")]) as node:
        spec = node.config.channels[0]
        for _ in range(20):
            if node._table.find("c") is None:
                await node.start_channel(spec)
            entered, release = trio.Event(), trio.Event()
            gates.append((entered, release))
            outcomes: list[Any] = []
            first_done = trio.Event()

            async def stop_first(done: trio.Event) -> None:
                await node.stop_channel("c")
                done.set()

            async def start_after(done: trio.Event, outcomes: list[Any]) -> None:
                await done.wait()
                await append_outcome(outcomes, node.start_channel, spec)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(stop_first, first_done)
                await entered.wait()
                nursery.start_soon(append_outcome, outcomes, node.stop_channel, "c")
                nursery.start_soon(start_after, first_done, outcomes)
                await trio.testing.wait_all_tasks_blocked()
                release.set()
            # Whichever order: what the channels' supervisor runs is what the node lists.
            assert not any(isinstance(o, Exception) for o in outcomes), outcomes
            channels = next(child for child in node.tree().children if child.id == "channels")
            listed = [s.channel_id for s in node.channels()]
            assert [child.id for child in channels.children] == listed, outcomes


async def test_a_channel_whose_lease_is_lost_is_let_go_without_waiting_for_its_sends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Its lease lost, its link dropped: the sends in flight wait for a connection
    # they will never get here. The move's stop waited HANDOFF_WAIT (10 s) for
    # them all the same, the channel dark on every node meanwhile.
    import types

    from actors.channel import Tenure
    from runtime import ChannelUnavailable
    from runtime.node_cluster import HANDOFF_WAIT

    provider = SimulatedProvider(latency=Fixed(seconds=40.0))  # on the wire past any wait
    async with simulated_node(provider, channels=[sim("c")]) as node:
        outcomes: list[Any] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(append_outcome, outcomes, node.send, "c", message("k"))
            await trio.testing.wait_all_tasks_blocked()
            lost = Tenure(trio.current_time() + 60.0)
            lost.revoke()
            node._cluster = types.SimpleNamespace(  # a stand-in cluster: "c" was ours
                ownership=types.SimpleNamespace(
                    owned={"c": types.SimpleNamespace(tenure=lost)}, fenced=set()
                ),
                catalog=types.SimpleNamespace(specs={"c": node.config.channels[0]}),
            )
            began = trio.current_time()
            await node.stop_owned("c")
            took = trio.current_time() - began
            node.released("c")
        node._cluster = None
    assert took < HANDOFF_WAIT, took
    # Cut by the stop: its caller hears it (the cluster's send path asks the
    # next owner, a send that races a move).
    assert len(outcomes) == 1 and isinstance(outcomes[0], ChannelUnavailable), outcomes


async def test_a_restart_forwarded_to_the_new_owner_does_not_hold_up_the_move(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two restarts of an owned channel, then the cluster moves it away. The second
    # restart finds it moving: it is forwarded, and must not hold the channel's
    # lock while its forward waits for the move, whose stop here needs that lock
    # (before, the move stalled for the forward's whole timeout, 60 s).
    import types

    entered, release = hold_first_terminate(monkeypatch)
    provider = SimulatedProvider(latency=Fixed(seconds=0.01))
    async with simulated_node(provider, channels=[sim("c")]) as node:
        owned = {"c": types.SimpleNamespace(tenure=None)}  # a stand-in cluster: "c" is ours
        node._cluster = types.SimpleNamespace(
            ownership=types.SimpleNamespace(owned=owned, fenced=set()),
            catalog=types.SimpleNamespace(specs={"c": node.config.channels[0]}),
        )
        moved: list[float] = []

        async def move_away() -> None:  # as Ownership's let-go does
            try:
                await node.stop_owned("c")
                moved.append(trio.current_time())
            finally:
                node.released("c")

        began = trio.current_time()
        outcomes: list[Any] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(append_outcome, outcomes, node.restart_channel, "c")
            await entered.wait()  # the first restart holds the channel's lock
            nursery.start_soon(append_outcome, outcomes, node.restart_channel, "c")
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(move_away)
            await trio.testing.wait_all_tasks_blocked()
            release.set()
        node._cluster = None
        assert moved and moved[0] - began < 1.0, (moved, outcomes)
