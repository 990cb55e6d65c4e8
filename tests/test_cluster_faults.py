"""The cluster under Redis and node faults, as an operator meets them.

A node frozen (SIGSTOP) past its lease and thawed, a Redis that lost its
data while the nodes ran: whatever happens, two nodes never run (or send
on) one channel at once. The channel tests run in virtual time; the Redis
ones against a real Redis (``SWITCHBOARD_TEST_REDIS``), each under a key
prefix of its own, deleted afterwards.
"""

from __future__ import annotations

import contextlib
import math
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from actors import ChannelStatus
from actors.channel import Tenure
from providers.base import OutboundMessage, RateLimited
from providers.simulated import SimulatedProvider
from providers.testing import FakeProvider
from runtime import open_node
from runtime.cluster import open_cluster
from runtime.cluster.forwarding import Forwarding
from runtime.cluster.leases import Acquired, Held, Leases
from runtime.cluster.ownership import Ownership
from runtime.cluster.placement import HashRing
from runtime.config.model import ChannelSpec, ClusterConfig, StorageConfig
from runtime.errors import AskTimeout
from runtime.store import open_store
from tests.support import CEILING
from tests.test_channel_actor import GENEROUS, open_channel
from tests.test_cluster_redis import CEILING as REAL_CEILING
from tests.test_cluster_redis import REDIS_URL, Runner, redis
from tests.test_node_cluster import cluster_config
from tests.test_node_embedded import wait_connected
from tests.test_store_durable import checkpoint, state

# --- a node frozen past its lease, then thawed ------------------------------------------------

THAWS = 24  # each thaw's order of wake-ups is trio's coin toss: every one must hold


async def _thaw_once(clock: trio.testing.MockClock) -> list[float]:
    """A send waits (a rate limit) when the node freezes; it thaws past both its
    tenure and the wait. When did the platform see a send attempt?"""
    provider = FakeProvider(
        limits=GENEROUS, send_script=[RateLimited("slow down", retry_after=8.0)]
    )
    start = trio.current_time()
    tenure = Tenure(start + 5.0, token=3)
    async with open_channel(provider, tenure=tenure) as channel, trio.open_nursery() as nursery:
        await provider.wait_connected(1)

        async def send() -> None:
            with contextlib.suppress(Exception):  # (its fate: what went out matters)
                await channel.send(OutboundMessage(peer="p", text="hi", idempotency_key="k"))

        nursery.start_soon(send)
        await trio.testing.wait_all_tasks_blocked()
        assert len(provider.send_attempts) == 1  # refused for now: it waits 8 s
        clock.jump(20.0)  # frozen past the tenure (5 s) and the wait, then thawed
        await trio.testing.wait_all_tasks_blocked()
        late = [at - start for at, _ in provider.send_attempts[1:] if at >= tenure.deadline]
        clock.autojump_threshold = 0  # the stop's own waits run out (virtual time)
        nursery.cancel_scope.cancel()
    clock.autojump_threshold = math.inf
    return late


async def test_a_thawed_node_sends_nothing_on_a_link_its_lapsed_tenure_forbids(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A node frozen (SIGSTOP) past its lease thaws with a send whose wait ran out
    meanwhile: nothing may reach the platform, since another node may run the
    channel by now. Today the send goes out on the old link whenever trio wakes
    it before the connection's cancel is delivered (half the thaws): the send
    path took ``_conn`` without looking at the tenure."""
    for _ in range(THAWS):
        with trio.fail_after(CEILING):
            assert await _thaw_once(mock_clock) == []


# --- Redis lost its data while the nodes ran ----------------------------------------------------


def _config(prefix: str) -> ClusterConfig:
    # Long intervals: between the loss and the new node's join, the running
    # node does not touch Redis on its own (only what the join announces).
    return ClusterConfig(
        redis_url=REDIS_URL,
        key_prefix=prefix,
        heartbeat_interval=30.0,
        member_timeout=60.0,
        lease_ttl=60.0,
        settle_delay=0.0,
        move_cooldown=0.0,
    )


class StoreRunner(Runner):
    """A stand-in node whose floor is the shared store's checkpoint, as the node's is."""

    def __init__(self, store: Any) -> None:
        super().__init__()
        self.store = store

    async def floor_token(self, channel_id: str) -> int:
        stored = await self.store.load_checkpoint(channel_id)
        return 0 if stored is None else int(stored.owner_token)


def _answers(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], Any]:
    """Record each node's lease answers; returns ``first(node)``: its first answer, awaited."""
    seen: dict[str, list[Acquired | Held]] = {}
    events: dict[str, trio.Event] = {}
    acquire = Leases.acquire

    async def recorded(self: Leases, channel_id: str, *, floor: int = 0) -> Acquired | Held:
        answer = await acquire(self, channel_id, floor=floor)
        seen.setdefault(self.node_id, []).append(answer)
        events.setdefault(self.node_id, trio.Event()).set()
        return answer

    monkeypatch.setattr(Leases, "acquire", recorded)

    async def first(node: str) -> Acquired | Held:
        await events.setdefault(node, trio.Event()).wait()
        return seen[node][0]

    return first


async def test_a_node_that_joins_a_redis_that_lost_its_data_does_not_lift_the_quarantine(
    prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis lost the cluster's data (a restart without persistence) while node a
    runs channel ch; node b starts and is the first to reach it. No lease may be
    granted for a lease TTL (the quarantine): a still holds ch on its own clock.
    Today b's first heartbeat, made before b knew the cluster, marks the Redis
    as new, so nobody sees the rebirth: b takes ch at once, a runs it too."""
    first = _answers(monkeypatch)
    spec = ChannelSpec(id="ch", provider="fake")
    config = _config(prefix)
    with trio.fail_after(REAL_CEILING):
        async with open_store(StorageConfig(backend="memory")) as store:
            a_runner, b_runner = StoreRunner(store), StoreRunner(store)
            async with open_cluster(
                config, node_id="a", store=store, runner=a_runner, file_specs=[spec]
            ):
                tenure = await a_runner.started("ch")
                await store.write_checkpoints([checkpoint("ch", tenure.token, state())])
                async with redis() as link:  # Redis loses everything of this cluster
                    await link.call("DEL", *await link.call("KEYS", f"{prefix}:*"))
                async with open_cluster(
                    config, node_id="b", store=store, runner=b_runner, file_specs=[spec]
                ):
                    answer = await first("b")
                    assert tenure.valid()  # a still runs ch
                    assert isinstance(answer, Held), answer  # not a second owner
                    assert "quarantine" in answer.holder
                    assert "ch" not in b_runner.tenures


# --- forwarding across a Redis that lost its data -----------------------------------------------


class Echo:
    """A stand-in owner: answers every forwarded call with its body."""

    async def handle_forwarded(
        self,
        op: str,
        channel_id: str,
        body: Mapping[str, Any],
        *,
        timeout: float,  # noqa: ASYNC109 - the handler's signature
    ) -> dict[str, Any]:
        return {"ok": {"op": op, "channel": channel_id, **body}}


async def test_a_call_forwarded_as_redis_comes_back_empty_is_answered(prefix: str) -> None:
    """Redis lost the owner's inbox and its consumer group; a call is forwarded to
    the owner as it comes back. It must be answered. Today the owner makes its
    group again at the stream's end ("$"), after the calls already written
    there: they are never read, and each caller waits its whole attempt (a
    lease TTL) for nothing, then asks again."""
    with trio.fail_after(REAL_CEILING):
        async with redis(within=2.0) as link, trio.open_nursery() as nursery:
            owner = Forwarding(link, prefix=prefix, node_id="owner", handler=Echo(), block=0.2)
            caller = Forwarding(link, prefix=prefix, node_id="caller", handler=Echo(), block=0.2)
            await nursery.start(owner.run)
            await nursery.start(caller.run)
            assert await caller.call("owner", "send", "ch", {"n": 1}, timeout=10.0) == {
                "ok": {"op": "send", "channel": "ch", "n": 1}
            }
            await link.call("DEL", *await link.call("KEYS", f"{prefix}:*"))  # Redis lost it all
            answer = await caller.call("owner", "send", "ch", {"n": 2}, timeout=REAL_CEILING / 2)
            assert answer == {"ok": {"op": "send", "channel": "ch", "n": 2}}
            nursery.cancel_scope.cancel()


# --- a node whose file lacks a channel of the catalog -------------------------------------------


async def test_a_channel_is_not_taken_from_its_node_by_one_that_cannot_run_it(
    prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Node a runs channel x from its file; node b joins with a file that lacks x
    (a rolling upgrade, a file not copied to every host). x must keep running
    somewhere. Placement gave x to b, a let it go at once, and b, which has no
    spec for it, never started it: x was dark on every node, and only b's log
    said anything (a warning at each catalog reload). Now b publishes its
    file's channels with its membership, and x is placed only where it runs."""
    config = attrs.evolve(
        _config(prefix), heartbeat_interval=0.2, member_timeout=1.0, lease_ttl=3.0
    )
    ring = HashRing(("a", "b"), vnodes=config.vnodes)
    x = next(c for c in (f"x{n}" for n in range(1000)) if ring.owner(c) == "b")
    spec = ChannelSpec(id=x, provider="fake")
    settled = trio.Event()  # a has reconciled with b a member
    reconcile = Ownership.reconcile

    async def recorded(self: Ownership) -> None:
        await reconcile(self)
        if self.node_id == "a" and self.ring.members == ("a", "b"):
            settled.set()

    monkeypatch.setattr(Ownership, "reconcile", recorded)
    with trio.fail_after(REAL_CEILING):
        async with open_store(StorageConfig(backend="memory")) as store:
            a_runner, b_runner = StoreRunner(store), StoreRunner(store)
            async with open_cluster(
                config, node_id="a", store=store, runner=a_runner, file_specs=[spec]
            ) as a:
                await a_runner.started(x)
                async with open_cluster(
                    config, node_id="b", store=store, runner=b_runner, file_specs=[]
                ):
                    await settled.wait()
                    assert x in a.ownership.owned or x in b_runner.tenures


# --- keys of another deployment under the same prefix -------------------------------------------


async def test_a_lease_key_another_deployment_wrote_under_the_prefix_leaves_the_node_running(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Another deployment (another release, another program) wrote ``<prefix>:lease:b``
    in a format of its own, with no expiry. The node must go on running its other
    channels, its cluster view must answer, a send to b must be refused with a
    typed error, and the log must say why b cannot be had. Today the node stops at
    once: reading the lease holders raised ValueError (int() of the token) in the
    task that keeps them fresh; the cluster view raised it too; and the node asked
    for b 20 times a second, for good, saying nothing above debug."""
    prefix = f"sbtest-{secrets.token_hex(4)}"
    async with redis() as link:
        await link.call("SET", f"{prefix}:lease:b", "v2:node-7:41")
    try:
        with trio.fail_after(REAL_CEILING):
            async with open_node(
                cluster_config(tmp_path, prefix, "a", "b"),
                providers={"simulated": SimulatedProvider()},
            ) as node:
                await wait_connected(node, 1)
                view = await node.cluster()
                lease = next(lease for lease in view.leases if lease.channel_id == "b")
                assert lease.token is None and lease.expires_in is None
                with pytest.raises(AskTimeout):
                    await node.send(
                        "b", OutboundMessage(peer="p", text="hi", idempotency_key="k"), timeout=0.5
                    )
                await node._refresh_holders()  # (the task that crashed the node)
                # A token of digits no int() reads ("²") is no token either (the
                # console's move and release read the holder so).
                async with redis() as link:
                    await link.call("SET", f"{prefix}:lease:b", "node-7|\u00b2")
                holder = await node.lease_holder("b")
                assert holder.holder == "node-7" and holder.token is None
                assert {s.channel_id: s.status for s in node.channels()}["a"] is (
                    ChannelStatus.CONNECTED
                )
    finally:
        async with redis() as link:
            keys = await link.call("KEYS", f"{prefix}:*")
            if keys:
                await link.call("DEL", *keys)
    warned = [r.getMessage() for r in caplog.records if r.name == "switchboard.cluster"]
    assert any(f"{prefix}:lease:b" in w and "key_prefix" in w for w in warned), warned
    assert not any("v2:node-7:41" in w for w in warned)  # another program's value: not quoted


# --- a node restarted after a kill, with many forwarded calls pending ---------------------------


class Counting:
    """A stand-in owner that holds every call until all ``expected`` have come."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.calls: dict[int, int] = {}
        self.all_came = trio.Event()

    async def handle_forwarded(
        self,
        op: str,
        channel_id: str,
        body: Mapping[str, Any],
        *,
        timeout: float,  # noqa: ASYNC109 - the handler's signature
    ) -> dict[str, Any]:
        n = int(body["n"])
        self.calls[n] = self.calls.get(n, 0) + 1
        if len(self.calls) == self.expected:
            self.all_came.set()
        await self.all_came.wait()  # (a send in flight on the platform meanwhile)
        return {"ok": {}}


async def test_a_restarted_node_handles_each_pending_forwarded_call_once(prefix: str) -> None:
    """Node "owner" was killed with 250 forwarded calls read and not answered (a
    busy node); it restarts within their time to live. Each must be handled once,
    and the node must run. Today the pending list is read from its start again
    after each batch of 100, so the calls of the first batch, still being handled
    (unacknowledged), come again: the limiter refuses to count one entry twice
    (RuntimeError) and the node's cluster stops, at every restart while they
    live."""
    pending = 250
    inbox = f"{prefix}:inbox:owner"
    with trio.fail_after(REAL_CEILING):
        async with redis(within=2.0) as link:
            await link.call("XGROUP", "CREATE", inbox, "owners", "$", "MKSTREAM")
            for n in range(pending):
                fields = {
                    "id": f"r{n}",
                    "from": "caller",
                    "op": "send",
                    "channel": "ch",
                    "ttl_ms": "60000",
                    "body": f'{{"n":{n}}}',
                }
                await link.call("XADD", inbox, "*", *[x for kv in fields.items() for x in kv])
            # The killed process had read them all (pending to it), answered none.
            await link.call("XREADGROUP", "GROUP", "owners", "owner", "STREAMS", inbox, ">")
            handler = Counting(pending)
            owner = Forwarding(link, prefix=prefix, node_id="owner", handler=handler, block=0.2)
            async with trio.open_nursery() as nursery:
                await nursery.start(owner.run)
                await handler.all_came.wait()
                nursery.cancel_scope.cancel()
    assert handler.calls == dict.fromkeys(range(pending), 1)


async def test_a_node_s_streams_do_not_outlive_it_for_good(prefix: str) -> None:
    """A node's inbox and reply stream must leave Redis some time after the node
    is gone for good (a host replaced, a pod named anew at each start). Today
    they have no expiry: each node id ever seen keeps its inbox, its consumer
    group and up to 10,000 replies in Redis for good."""
    with trio.fail_after(REAL_CEILING):
        async with redis(within=2.0) as link, trio.open_nursery() as nursery:
            owner = Forwarding(link, prefix=prefix, node_id="owner", handler=Echo(), block=0.2)
            caller = Forwarding(link, prefix=prefix, node_id="caller", handler=Echo(), block=0.2)
            await nursery.start(owner.run)
            await nursery.start(caller.run)
            await caller.call("owner", "send", "ch", {"n": 1}, timeout=10.0)
            for stream in (owner.inbox, caller.replies):
                assert await link.call("PTTL", stream) > 0, stream
            nursery.cancel_scope.cancel()
