"""One node in cluster mode, in process: ``node.cluster()`` and ``node.channels()``.

The multi-node behaviour runs real subprocess nodes (test_cluster_*); this
file checks the node API's side of it against a real Redis (own key
prefix) with a SQLite store.
"""

from __future__ import annotations

import contextlib
import secrets
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from actors import ChannelStatus
from providers.base import OutboundMessage
from providers.simulated import Fixed, SimulatedProvider
from runtime import NodeError, open_node, parse_config
from tests.test_cluster_redis import CEILING, REDIS_URL, redis
from tests.test_node_embedded import wait_connected


def cluster_config(tmp_path: Path, prefix: str, *channels: str, lease_ttl: float = 1.5) -> Any:
    return parse_config(
        {
            "node": {"id": "solo", "drain_deadline": 2.0, "start_timeout": 5.0},
            "ops": {"enabled": False},
            "storage": {"backend": "sqlite", "path": str(tmp_path / "solo.sqlite3")},
            "cluster": {
                "redis_url": REDIS_URL,
                "key_prefix": prefix,
                "heartbeat_interval": 0.2,
                "member_timeout": 1.0,
                "lease_ttl": lease_ttl,
            },
            "providers": {"simulated": {"rate_limit": {"enabled": False}}},
            "channels": [{"id": c, "provider": "simulated"} for c in channels],
        }
    )


async def test_the_node_reports_the_cluster_it_runs_in(tmp_path: Path) -> None:
    prefix = f"sbtest-{secrets.token_hex(4)}"
    try:
        with trio.fail_after(CEILING):
            async with open_node(
                cluster_config(tmp_path, prefix, "a", "b", "c"),
                providers={"simulated": SimulatedProvider()},
            ) as node:
                while len(node.channels()) < 3 or not all(  # noqa: ASYNC110 - Redis answers
                    s.status is ChannelStatus.CONNECTED for s in node.channels()
                ):
                    await trio.sleep(0.05)
                view = await node.cluster()
                assert view.node_id == "solo" and view.epoch >= 1
                assert [(m.node, m.placed, m.held) for m in view.members] == [("solo", 3, 3)]
                assert [(lease.channel_id, lease.holder) for lease in view.leases] == [
                    ("a", "solo"),
                    ("b", "solo"),
                    ("c", "solo"),
                ]
                assert view.moving == () and view.handing_off == () and view.quarantine == 0
                snapshots = {s.channel_id: s for s in node.channels()}
                assert {s.owner for s in snapshots.values()} == {"solo"}
                tokens = {lease.channel_id: lease.token for lease in view.leases}
                assert {c: s.lease_token for c, s in snapshots.items()} == tokens
    finally:
        async with redis() as link:
            keys = await link.call("KEYS", f"{prefix}:*")
            if keys:
                await link.call("DEL", *keys)


async def test_a_node_alone_has_no_cluster_to_report(tmp_path: Path) -> None:
    config = parse_config({"node": {"id": "alone"}, "ops": {"enabled": False}, "channels": []})
    with trio.fail_after(CEILING):
        async with open_node(config) as node:
            with pytest.raises(NodeError, match="not in a cluster"):
                await node.cluster()


async def test_an_error_in_the_block_leaves_a_cluster_node_cleanly(tmp_path: Path) -> None:
    prefix = f"sbtest-{secrets.token_hex(4)}"

    class Boom(Exception):
        pass

    try:
        with trio.fail_after(CEILING), pytest.raises(BaseExceptionGroup) as raised:
            async with open_node(
                cluster_config(tmp_path, prefix, "a"),
                providers={"simulated": SimulatedProvider()},
            ):
                raise Boom  # stopped at once; no nursery left half-closed
        assert raised.group_contains(Boom)  # as with a node alone: the error, nothing else
        assert not raised.group_contains(AssertionError)  # not trio's "misnesting"
    finally:
        async with redis() as link:
            keys = await link.call("KEYS", f"{prefix}:*")
            if keys:
                await link.call("DEL", *keys)


async def test_a_member_stops_restarting_when_the_caller_would_stop_waiting(
    tmp_path: Path,
) -> None:
    prefix = f"sbtest-{secrets.token_hex(4)}"
    try:
        with trio.fail_after(CEILING):
            async with open_node(
                cluster_config(tmp_path, prefix, "a", "b"),
                providers={"simulated": SimulatedProvider()},
            ) as node:
                await wait_connected(node, 2)
                # A caller that waits no time at all: nothing may be restarted
                # after it gave up, and the answer says which were not.
                answers = await node.ask_members(
                    "restart_matching", {"where": {}, "dry_run": False}, within=0.0
                )
                answer = answers["solo"]["ok"]
                assert answer["count"] == 0 and answer["channels"] == []
                assert set(answer["failed"]) == {"a", "b"}
                assert all("deadline" in why for why in answer["failed"].values())
                answers = await node.ask_members(
                    "restart_matching", {"where": {}, "dry_run": False}, within=30.0
                )
                assert answers["solo"]["ok"]["count"] == 2
    finally:
        async with redis() as link:
            keys = await link.call("KEYS", f"{prefix}:*")
            if keys:
                await link.call("DEL", *keys)


async def test_a_drain_its_store_failed_still_gives_the_leases_back(tmp_path: Path) -> None:
    """The drain raises (the store took nothing), after the channels stopped: the
    node gives their leases back at once, as a drain that succeeded does. It
    left them to expire (``lease_ttl``, 15 s by default), its channels dark
    on every node till then."""
    from runtime.errors import StoreError

    prefix = f"sbtest-{secrets.token_hex(4)}"

    async def down(*args: Any, **kwargs: Any) -> Any:
        raise StoreError("the store is down (test)")

    try:
        # (The node's exit drains again, and fails again: the store is still down.)
        with trio.fail_after(CEILING), pytest.raises(BaseExceptionGroup) as raised:
            async with open_node(
                cluster_config(tmp_path, prefix, "a", lease_ttl=60.0),
                providers={
                    "simulated": SimulatedProvider(
                        latency=Fixed(seconds=30.0), connect_latency=Fixed(seconds=0.0)
                    )
                },
            ) as node:
                await wait_connected(node, 1)
                async with redis() as link:
                    assert await link.call("EXISTS", f"{prefix}:lease:a") == 1
                store = node.store
                store.keep_outbound = down  # type: ignore[method-assign]
                store.write_checkpoints = down  # type: ignore[method-assign]
                store.flush = down  # type: ignore[method-assign]
                async with trio.open_nursery() as nursery:
                    # In flight past the hand-off's share of the drain: the
                    # channel is still held when the drain stops it.
                    nursery.start_soon(_sent_or_not, node, "a")
                    await trio.testing.wait_all_tasks_blocked()
                    with pytest.raises(StoreError):
                        await node.drain()
                async with redis() as link:
                    assert await link.call("EXISTS", f"{prefix}:lease:a") == 0
        assert not raised.group_contains(AssertionError)
    finally:
        async with redis() as link:
            keys = await link.call("KEYS", f"{prefix}:*")
            if keys:
                await link.call("DEL", *keys)


async def _sent_or_not(node: Any, channel_id: str) -> None:
    with contextlib.suppress(Exception):  # its fate is not what the test reads
        await node.send(channel_id, OutboundMessage(peer="p", text="t", idempotency_key="k"))
