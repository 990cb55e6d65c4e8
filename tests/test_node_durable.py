"""A channel's durable state across node restarts, in virtual time (issue 13).

Two nodes opened one after the other on one store stand in for a node that
is restarted: what the first checkpointed, the second restores. The wall
clock is tied to trio's virtual one, so restored limiter schedules are exact.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
import trio

import runtime.checkpoints
from actors import ChannelSettings, ChannelStatus, ExponentialBackoff
from actors.channel.durable import ChannelState
from providers.base import OutboundMessage, PermanentSendError
from providers.simulated import FailureRates, Fixed, SimulatedProvider
from runtime import ChannelFenced, ChannelSpec, open_node, open_store, parse_config
from runtime.config import StorageConfig
from runtime.store.durable import Checkpoint

from .support import CEILING

FAST = ChannelSettings(
    reconnect=ExponentialBackoff(base=0.05, cap=0.2),
    send_backoff=ExponentialBackoff(base=0.01, cap=0.05),
    send_attempts=2,
    connect_wait=1.0,
)
EPOCH = 1_800_000_000.0  # what the virtual clock's zero is in unix time


@pytest.fixture(autouse=True)
def virtual_wall_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime.checkpoints, "wall_clock", lambda: EPOCH + trio.current_time())


def config(*channels: dict[str, Any], limits: dict[str, Any] | None = None) -> Any:
    return parse_config(
        {
            "node": {"id": "t", "drain_deadline": 2.0, "start_timeout": 1.0},
            "ops": {"enabled": False},
            "providers": {"simulated": {"rate_limit": limits or {"enabled": False}}},
            "channels": list(channels),
        }
    )


def sim_node(
    store: Any, provider: SimulatedProvider, *channels: dict[str, Any], **options: Any
) -> AbstractAsyncContextManager[Any]:
    """A node of ``channels`` (simulated) on ``store``: one process of the test's."""
    return open_node(
        config(*channels, **options),
        store=store,
        channel_defaults=FAST,
        providers={"simulated": provider},
    )


def sim(channel_id: str, tenant: str = "acme") -> dict[str, Any]:
    return {"id": channel_id, "tenant": tenant, "provider": "simulated"}


def message(key: str, peer: str = "p1") -> OutboundMessage:
    return OutboundMessage(peer=peer, idempotency_key=key, text=f"text {key}")


async def wait_status(node: Any, channel_id: str, status: ChannelStatus) -> None:
    with node.subscribe(kind="state") as changes:
        while node.channels()[0].status is not status:
            await changes.receive()


async def test_dead_letters_survive_a_restart_and_a_racing_replay_sends_each_once(
    autojump_clock: Any,
) -> None:
    refusing = SimulatedProvider(failures=FailureRates(send_permanent=1.0))
    accepting = SimulatedProvider()
    with trio.fail_after(CEILING):
        async with open_store(StorageConfig()) as store:
            async with sim_node(store, refusing, sim("a")) as node:
                for key in ("k1", "k2"):
                    with pytest.raises(PermanentSendError):
                        await node.send("a", message(key))
            async with sim_node(store, accepting, sim("a")) as node:
                listed = await node.dead_letters()
                assert [
                    (d.channel_id, d.tenant, d.letter.message.idempotency_key) for d in listed
                ] == [
                    ("a", "acme", "k1"),
                    ("a", "acme", "k2"),
                ]
                assert listed[0].letter.error_type == "PermanentSendError"
                first = listed[0].letter.id
                replayed: list[int] = []
                async with trio.open_nursery() as nursery:
                    for _ in range(2):  # two operators, the same letter, at once
                        nursery.start_soon(
                            lambda: _collect(replayed, node.replay_dead_letters("a", [first]))
                        )
                assert sorted(replayed) == [0, 1]
                await wait_status(node, "a", ChannelStatus.CONNECTED)
                await trio.sleep(1.0)
                assert [r.idempotency_key for r in accepting.sent] == ["k1"]
                assert [d.letter.message.idempotency_key for d in await node.dead_letters()] == [
                    "k2"
                ]
                assert await node.discard_dead_letters("a") == 1
                assert await node.dead_letters() == []
            async with sim_node(store, accepting, sim("a")) as node:
                assert await node.dead_letters() == []  # the replay and the discard were kept


async def _collect(into: list[int], call: Any) -> None:
    into.append(await call)


async def test_a_failed_channel_stays_failed_across_a_restart_until_revived(
    autojump_clock: Any,
) -> None:
    provider = SimulatedProvider()
    provider.banned.add("a")
    with trio.fail_after(CEILING):
        async with open_store(StorageConfig()) as store:
            async with sim_node(store, provider, sim("a")) as node:
                await wait_status(node, "a", ChannelStatus.FAILED)
            provider.banned.clear()  # the ban is lifted, but nobody said so yet
            attempts = provider.statistics().connect_failures + provider.statistics().connects
            async with sim_node(store, provider, sim("a")) as node:
                await trio.sleep(5.0)
                snapshot = node.channels()[0]
                assert snapshot.status is ChannelStatus.FAILED
                assert snapshot.statistics is not None
                assert "Banned" in (snapshot.statistics.last_error or "")
                stats = provider.statistics()
                assert stats.connect_failures + stats.connects == attempts  # never hammered
                await node.restart_channel("a")  # the operator revives it
                await wait_status(node, "a", ChannelStatus.CONNECTED)
            async with sim_node(store, provider, sim("a")) as node:
                await wait_status(node, "a", ChannelStatus.CONNECTED)


async def test_a_restart_cannot_mint_rate_limit_budget(autojump_clock: Any) -> None:
    """One message per 10 s: a restart in between must not allow a second one sooner."""
    provider = SimulatedProvider()
    limits = {
        "per_channel_rate": 0.1,
        "per_channel_burst": 1,
        "per_peer_rate": 0.1,
        "per_peer_burst": 1,
    }
    with trio.fail_after(CEILING):
        async with open_store(StorageConfig()) as store:
            async with sim_node(store, provider, sim("a"), limits=limits) as node:
                await node.send("a", message("k1"))
                first = trio.current_time()
            async with sim_node(store, provider, sim("a"), limits=limits) as node:
                await node.send("a", message("k2"))
                second = trio.current_time()
    assert second - first >= 10.0 - 1e-6
    assert [r.idempotency_key for r in provider.sent] == ["k1", "k2"]


async def test_a_checkpoint_written_by_a_newer_owner_fences_this_node(
    autojump_clock: Any,
) -> None:
    provider = SimulatedProvider()
    with trio.fail_after(CEILING):
        async with open_store(StorageConfig()) as store:
            async with sim_node(store, provider, sim("a"), sim("b")) as node:
                await trio.sleep(2.0)  # both checkpointed with this node's token
                newer = node._checkpoints.token + 10
                stored = await store.load_checkpoint("a")
                assert stored is not None and stored.state is not None
                # Another node took "a" over and wrote its checkpoint.
                await store.write_checkpoints(
                    [
                        Checkpoint(
                            channel_id="a",
                            tenant="acme",
                            provider="simulated",
                            owner_token=newer,
                            state=stored.state,
                        )
                    ]
                )
                node.channel("a").memory.touch()
                await trio.sleep(2.0)  # this node's next write of "a" is refused
                states = {s.channel_id: s for s in node.channels()}
                assert states["a"].start_error is not None
                assert "Fenced" in states["a"].start_error
                assert states["b"].status is ChannelStatus.CONNECTED
                assert node._checkpoints.statistics().refused == 1
                after = await store.load_checkpoint("a")
                assert after is not None and after.owner_token == newer
            # A node that starts later takes a token above the newer owner's.
            async with sim_node(store, provider, sim("a")) as node:
                assert node._checkpoints.token > newer
                await wait_status(node, "a", ChannelStatus.CONNECTED)


async def test_starting_a_channel_a_newer_owner_runs_is_refused(autojump_clock: Any) -> None:
    with trio.fail_after(CEILING):
        async with open_store(StorageConfig()) as store:
            async with sim_node(store, SimulatedProvider()) as node:
                await store.write_checkpoints(
                    [
                        Checkpoint(
                            channel_id="x",
                            tenant="t",
                            provider="simulated",
                            owner_token=node._checkpoints.token + 1,
                            state=ChannelState(),
                        )
                    ]
                )
                spec = ChannelSpec(id="x", provider="simulated", tenant="t")
                with pytest.raises(ChannelFenced, match="newer owner"):
                    await node.start_channel(spec)
                assert node.channels()[0].start_error is not None


class Crash(Exception):
    pass


async def test_an_event_delivered_again_after_a_crash_is_published_once(
    autojump_clock: Any,
) -> None:
    """Killed before any checkpoint: the store's key, not the window, knows the event."""
    with trio.fail_after(CEILING):
        async with open_store(StorageConfig()) as store:
            first_run = SimulatedProvider()
            with pytest.raises(BaseExceptionGroup) as crashed:
                async with sim_node(store, first_run, sim("a")) as node:
                    await wait_status(node, "a", ChannelStatus.CONNECTED)
                    with node.subscribe(kind="inbound") as events:
                        first_run.inject("a", "hello")
                        seen = await events.receive()
                    assert seen.event.platform_message_id == "a:in-1"
                    raise Crash  # at once: no checkpoint was written after it
            assert crashed.group_contains(Crash)
            # The platform never heard the event was taken and delivers it again.
            second_run = SimulatedProvider()
            async with sim_node(store, second_run, sim("a")) as node:
                with node.subscribe(kind="inbound") as events:
                    assert second_run.inject("a", "hello") == "a:in-1"
                    assert second_run.inject("a", "and more") == "a:in-2"
                    published = await events.receive()
                    assert published.event.platform_message_id == "a:in-2"
                stats = node.channels()[0].statistics
                assert stats is not None
                assert (stats.received, stats.duplicates) == (1, 1)


async def test_channels_stopped_together_write_their_final_checkpoints_together(
    autojump_clock: Any,
) -> None:
    channels = [f"c{i:02d}" for i in range(40)]
    batches: list[int] = []
    with trio.fail_after(CEILING):
        async with open_store(StorageConfig()) as store:
            write = store.write_checkpoints

            async def round_trip(items: Any) -> Any:  # a database's: others ask meanwhile
                batches.append(len(items))
                await trio.sleep(0.01)
                return await write(items)

            store.write_checkpoints = round_trip  # type: ignore[method-assign]
            async with sim_node(store, SimulatedProvider(), *(sim(c) for c in channels)) as node:
                await trio.sleep(2.0)
                batches.clear()
                async with trio.open_nursery() as nursery:
                    for channel_id in channels:
                        nursery.start_soon(node.stop_channel, channel_id)
                stopped = list(batches)
            for channel_id in channels:
                stored = await store.load_checkpoint(channel_id)
                assert stored is not None and stored.state is not None
                assert stored.state.clean  # each written after its actor ended
    assert sum(stopped) == len(channels)  # each final checkpoint written once
    assert len(stopped) < len(channels) / 4, stopped  # in groups, not one by one


async def test_a_repeated_send_is_answered_from_memory_across_a_restart(
    autojump_clock: Any,
) -> None:
    # record=False: the platform would send a repeat again; only the node's memory stops it.
    provider = SimulatedProvider(record=False)
    with trio.fail_after(CEILING):
        async with open_store(StorageConfig()) as store:
            async with sim_node(store, provider, sim("a")) as node:
                first = await node.send("a", message("k1"))
                again = await node.send("a", message("k1"))
                assert again == first
                assert provider.statistics().sends == 1
            # The next owner of the channel (here: the next process) has its memory.
            async with sim_node(store, provider, sim("a")) as node:
                assert await node.send("a", message("k1")) == first
                other = await node.send("a", message("k2"))
                assert other != first
                assert provider.statistics().sends == 2


async def test_the_same_key_sent_twice_at_once_is_sent_once(autojump_clock: Any) -> None:
    # A retry that overtakes its first attempt (a forwarded request delivered
    # twice) waits for the first and gets its answer; the platform sees one.
    provider = SimulatedProvider(latency=Fixed(seconds=0.5), record=False)
    with trio.fail_after(CEILING):
        async with (
            open_store(StorageConfig()) as store,
            sim_node(store, provider, sim("a")) as node,
        ):
            await wait_status(node, "a", ChannelStatus.CONNECTED)
            results: list[Any] = []
            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(lambda: _collect(results, node.send("a", message("k"))))
            assert len(results) == 3 and len(set(results)) == 1
            assert provider.statistics().sends == 1


async def test_an_answer_that_comes_after_a_checkpoint_round_is_checkpointed(
    autojump_clock: Any,
) -> None:
    # The ack comes 3 s after the send, and a checkpoint round (every 1 s)
    # writes the channel in between: the answer must reach the next one, or
    # a process that then dies forgets it and a retry of the key goes out twice.
    provider = SimulatedProvider(latency=Fixed(seconds=3.0), record=False)
    with trio.fail_after(CEILING):
        async with open_store(StorageConfig()) as store:
            async with sim_node(store, provider, sim("a")) as node:
                await wait_status(node, "a", ChannelStatus.CONNECTED)
                await node.send("a", message("k1"))
                await node._checkpoints.flush()  # what the next round would write, now
                stored = await store.load_checkpoint("a")
                assert stored is not None and stored.state is not None
                assert [key for key, _, _ in stored.state.sent] == ["k1"]
