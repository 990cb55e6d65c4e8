"""The cluster's forwarding streams and its rebirth quarantine: what holds.

- A forwarded call is handled once, even when the node's consumer group is
  lost and made again from the stream's start while the call's handler runs
  (it was handed over again: the limiter's RuntimeError stopped the cluster).
- A node id gone for good leaves nothing in Redis: a caller's reply stream
  that an owner's answer made expires, as do streams made again after Redis
  lost its data (they had no expiry for up to a quarter of ``STREAM_KEEP``).
- A node that starts as Redis comes back empty does not lift the quarantine,
  even when the catalog's first channels were just added and have no
  checkpoint yet (a sample of eight sorted ids missed that the cluster ran).

Against a real Redis (``SWITCHBOARD_TEST_REDIS``), each under a key prefix of
its own, deleted afterwards.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
import trio

from runtime.cluster import open_cluster
from runtime.cluster.forwarding import GROUP, Forwarding
from runtime.cluster.leases import Acquired, Held, Leases
from runtime.config.model import ChannelSpec, StorageConfig
from runtime.store import open_store
from tests.test_cluster_faults import StoreRunner, _config
from tests.test_cluster_redis import CEILING as REAL_CEILING
from tests.test_cluster_redis import redis
from tests.test_store_durable import checkpoint, state


class Holding:
    """A stand-in owner that holds the call numbered ``held`` until released;
    the others are answered at once. Counts the calls it is handed."""

    def __init__(self, held: int) -> None:
        self.held = held
        self.calls: dict[int, int] = {}
        self.came = trio.Event()
        self.release = trio.Event()

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
        if n == self.held:
            self.came.set()
            await self.release.wait()  # (a send in flight on the platform meanwhile)
        return {"ok": {"n": n}}


async def test_a_lost_consumer_group_does_not_hand_a_call_in_flight_over_again(
    prefix: str,
) -> None:
    """The owner's consumer group is lost while its inbox is not (an operator's
    XGROUP DESTROY, a failover that kept the stream): a call being handled at
    that moment must be handled once, and the owner must keep serving. Today
    the group is made again from the stream's start ("0", 9c1c364): the call in
    flight, still in the stream (entries leave it only once answered), is read
    again and handed over a second time while the first is still on the
    platform: the limiter refuses to count one entry twice (RuntimeError), and
    the owner's forwarding, and with it its cluster, stops; had it not, the
    message would have been sent twice."""
    with trio.fail_after(REAL_CEILING):
        async with redis(within=2.0) as link, trio.open_nursery() as nursery:
            handler = Holding(1)
            owner = Forwarding(link, prefix=prefix, node_id="owner", handler=handler, block=0.2)
            caller = Forwarding(link, prefix=prefix, node_id="caller", handler=handler, block=0.2)
            await nursery.start(owner.run)
            await nursery.start(caller.run)
            first: list[dict[str, Any]] = []
            answered = trio.Event()

            async def call_first() -> None:
                first.append(await caller.call("owner", "send", "ch", {"n": 1}, timeout=20.0))
                answered.set()

            nursery.start_soon(call_first)
            await handler.came.wait()  # call 1 is on the platform, unanswered
            await link.call("XGROUP", "DESTROY", owner.inbox, GROUP)  # the group is lost
            # A later call goes through once the owner has made its group again.
            second = await caller.call("owner", "send", "ch", {"n": 2}, timeout=20.0)
            assert second == {"ok": {"n": 2}}
            assert handler.calls == {1: 1, 2: 1}  # call 1 was not handed over again
            handler.release.set()
            await answered.wait()
            assert first == [{"ok": {"n": 1}}]
            nursery.cancel_scope.cancel()


async def test_a_caller_killed_with_a_call_in_flight_leaves_no_reply_stream_for_good(
    prefix: str,
) -> None:
    """A node forwards a call and is killed (for good: a host replaced, a pod
    named anew) before the answer comes; it had no reply stream yet (its first
    call, or none answered within the last hour, STREAM_KEEP). The reply
    stream the owner's answer makes must expire like every other stream of a
    gone node id. Today only the caller itself gives its reply stream an expiry,
    when it reads an answer there (2a702be): the owner's XADD makes a stream
    with no expiry, nobody ever reads it, and it stays in Redis for good, which
    is what the commit set out to end."""
    with trio.fail_after(REAL_CEILING):
        async with redis(within=2.0) as link, trio.open_nursery() as nursery:
            handler = Holding(1)
            owner = Forwarding(link, prefix=prefix, node_id="owner", handler=handler, block=0.2)
            await nursery.start(owner.run)
            caller = Forwarding(link, prefix=prefix, node_id="caller", handler=handler, block=0.2)
            async with trio.open_nursery() as caller_process:
                await caller_process.start(caller.run)

                async def call() -> None:
                    await caller.call("owner", "send", "ch", {"n": 1}, timeout=20.0)

                caller_process.start_soon(call)
                await handler.came.wait()
                caller_process.cancel_scope.cancel()  # the caller is killed
            async with redis(within=REAL_CEILING) as watch:
                handler.release.set()  # the owner answers the gone caller
                found = await watch.call(
                    "XREAD", "BLOCK", int(REAL_CEILING * 500), "STREAMS", caller.replies, "0"
                )
                assert found, "the owner's answer never reached the caller's reply stream"
            assert await link.call("PTTL", caller.replies) > 0  # -1 today: kept for good
            nursery.cancel_scope.cancel()


async def test_channels_added_to_the_catalog_do_not_hide_that_the_cluster_ran(
    prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Node a runs channel ch (its checkpoint is in the shared store); the operator
    adds eight channels to the config (ids that sort before "ch"), and Redis loses
    the cluster's data; node b starts with the new config and is the first to
    reach Redis. No lease may be granted for a lease TTL: a still holds ch on its
    own clock. Today ``ran_before`` looks only at the catalog's first eight ids in
    sorted order (a3fd6ae): those are the new channels, with no checkpoint yet,
    so b is taken for a first start, its first heartbeat marks the Redis as new,
    and b takes ch while a still runs it: the two owners a3fd6ae set out to end."""
    answers: dict[tuple[str, str], trio.Event] = {}
    seen: dict[tuple[str, str], Acquired | Held] = {}
    acquire = Leases.acquire

    async def recorded(self: Leases, channel_id: str, *, floor: int = 0) -> Acquired | Held:
        answer = await acquire(self, channel_id, floor=floor)
        seen.setdefault((self.node_id, channel_id), answer)
        answers.setdefault((self.node_id, channel_id), trio.Event()).set()
        return answer

    monkeypatch.setattr(Leases, "acquire", recorded)
    ch = ChannelSpec(id="ch", provider="fake")
    added = [ChannelSpec(id=f"added-{i}", provider="fake") for i in range(8)]
    config = _config(prefix)
    with trio.fail_after(REAL_CEILING):
        async with open_store(StorageConfig(backend="memory")) as store:
            a_runner, b_runner = StoreRunner(store), StoreRunner(store)
            async with open_cluster(
                config, node_id="a", store=store, runner=a_runner, file_specs=[ch]
            ):
                tenure = await a_runner.started("ch")
                await store.write_checkpoints([checkpoint("ch", tenure.token, state())])
                async with redis() as link:  # Redis loses everything of this cluster
                    await link.call("DEL", *await link.call("KEYS", f"{prefix}:*"))
                async with open_cluster(
                    config, node_id="b", store=store, runner=b_runner, file_specs=[ch, *added]
                ):
                    await answers.setdefault(("b", "ch"), trio.Event()).wait()
                    answer = seen[("b", "ch")]
                    assert tenure.valid()  # a still runs ch
                    assert isinstance(answer, Held), answer  # not a second owner
                    assert "quarantine" in answer.holder
                    assert "ch" not in b_runner.tenures


async def test_streams_made_again_after_redis_lost_its_data_expire(prefix: str) -> None:
    """Redis lost the cluster's data while both nodes ran; a call goes through
    again (the owner's inbox and the caller's reply stream are made anew). Both
    streams must carry an expiry again, as the first ones did, so that a node
    gone for good after the loss leaves nothing behind. Today each node
    remembers that it moved the expiry "recently" (``_kept_at``, trio time) and
    does not look again for a quarter of STREAM_KEEP (15 minutes): the streams
    made anew have none meanwhile, and a node that dies in that window keeps
    its inbox, its consumer group and its replies in Redis for good."""
    with trio.fail_after(REAL_CEILING):
        async with redis(within=2.0) as link, trio.open_nursery() as nursery:
            handler = Holding(0)
            handler.release.set()
            owner = Forwarding(link, prefix=prefix, node_id="owner", handler=handler, block=0.2)
            caller = Forwarding(link, prefix=prefix, node_id="caller", handler=handler, block=0.2)
            await nursery.start(owner.run)
            await nursery.start(caller.run)
            await caller.call("owner", "send", "ch", {"n": 1}, timeout=10.0)
            await link.call("DEL", *await link.call("KEYS", f"{prefix}:*"))  # Redis lost it all
            answer = await caller.call("owner", "send", "ch", {"n": 2}, timeout=REAL_CEILING / 2)
            assert answer == {"ok": {"n": 2}}
            for stream in (owner.inbox, caller.replies):
                assert await link.call("PTTL", stream) > 0, stream  # -1 today: kept for good
            nursery.cancel_scope.cancel()
