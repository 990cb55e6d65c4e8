"""The console's cluster controls and fan-out: two nodes in process, real Redis, real time.

Two nodes (``n1``, ``n2``) share one Redis (``SWITCHBOARD_TEST_REDIS``, a
key prefix of the test's own) and one simulated platform: the platform
refuses a second connection of a channel (``Conflict``), so two nodes
running one channel at once would show. Each node has a SQLite store of
its own (the channels come from the same file). The console is a session
on one node, as ``switchboard ctl`` would have; the subprocess side is in
``test_console_ctl_cluster.py``.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from actors import ChannelStatus
from providers.base import OutboundMessage
from providers.simulated import SimulatedProvider
from runtime import Node, UnknownChannel, open_node, parse_config
from runtime.cluster.leases import Leases
from runtime.cluster.membership import Membership
from runtime.console.rpc import ErrorCode
from runtime.console.session import Console
from tests.test_cluster_redis import REDIS_URL, redis

from .console_support import FAST, Client, Harness, admin_section, token_env

CEILING = 60.0  # real seconds per test; only a hang gets near it
CHANNELS = [f"c{i}" for i in range(8)]


def node_config(tmp_path: Path, prefix: str, node_id: str, **cluster: Any) -> Any:
    return parse_config(
        {
            "node": {"id": node_id, "drain_deadline": 2.0, "start_timeout": 5.0},
            "ops": {"enabled": False},
            # One store for the cluster (its catalog, checkpoints and answers), as
            # nodes on one machine share it.
            "storage": {"backend": "sqlite", "path": str(tmp_path / "cluster.sqlite3")},
            "cluster": {
                "redis_url": REDIS_URL,
                "key_prefix": prefix,
                "heartbeat_interval": 0.2,
                "member_timeout": 1.0,
                "lease_ttl": 1.5,
                "settle_delay": 0.2,
                "move_cooldown": 0.0,
                **cluster,
            },
            "providers": {"simulated": {"rate_limit": {"enabled": False}}},
            "channels": [
                {"id": c, "tenant": "acme" if i % 2 else "globex", "provider": "simulated"}
                for i, c in enumerate(CHANNELS)
            ],
            "admin": admin_section(),
        },
        env=token_env(),
    )


@attrs.define
class Pair:
    """The nodes of a test, the platform they share, and a console on the first."""

    tmp_path: Path
    prefix: str
    provider: SimulatedProvider
    stack: AsyncExitStack
    cluster: dict[str, Any]
    nodes: dict[str, Node] = attrs.field(factory=dict)
    consoles: dict[str, tuple[Console, trio.Nursery]] = attrs.field(factory=dict)

    async def start(self, node_id: str) -> Node:
        config = node_config(self.tmp_path, self.prefix, node_id, **self.cluster)
        node = await self.stack.enter_async_context(
            open_node(config, channel_defaults=FAST, providers={"simulated": self.provider})
        )
        self.nodes[node_id] = node
        return node

    @asynccontextmanager
    async def client(self, node_id: str, token: str) -> AsyncIterator[Client]:
        node = self.nodes[node_id]
        if node_id not in self.consoles:
            assert node.config.admin is not None
            console = Console(node, node.config.admin)
            # In the stack, after its node: it stops (cancelled) before the node does.
            nursery = await self.stack.enter_async_context(trio.open_nursery())
            self.stack.callback(nursery.cancel_scope.cancel)
            await nursery.start(console.run)
            self.consoles[node_id] = (console, nursery)
        console, nursery = self.consoles[node_id]
        async with Harness(node, console, self.provider, nursery).client(token) as client:
            yield client

    async def holders(self) -> dict[str, tuple[str, int]]:
        any_node = next(iter(self.nodes.values()))
        cluster = any_node._cluster
        assert cluster is not None
        return await cluster.holders(CHANNELS)

    async def wait_held(self, wanted: dict[str, str]) -> dict[str, tuple[str, int]]:
        """Until each channel's lease is held by the node given, and it is connected there."""
        while True:
            held = await self.holders()
            if all(held.get(c, ("", 0))[0] == n for c, n in wanted.items()) and all(
                _connected(self.nodes[n], c) for c, n in wanted.items()
            ):
                return held
            await trio.sleep(0.05)


def _connected(node: Node, channel_id: str) -> bool:
    return any(
        s.channel_id == channel_id and not s.remote and s.status is ChannelStatus.CONNECTED
        for s in node.channels()
    )


@asynccontextmanager
async def pair(tmp_path: Path, **cluster: Any) -> AsyncIterator[Pair]:
    prefix = f"sbtest-{secrets.token_hex(4)}"
    try:
        async with AsyncExitStack() as stack:
            yield Pair(tmp_path, prefix, SimulatedProvider(), stack, cluster)
    finally:
        async with redis() as link:
            keys = await link.call("KEYS", f"{prefix}:*")
            if keys:
                await link.call("DEL", *keys)


def ring_owners(node: Node) -> dict[str, str | None]:
    assert node._cluster is not None
    return {c: node._cluster.ownership.ring.owner(c) for c in CHANNELS}


async def placed_on_both(nodes: Pair) -> dict[str, str | None]:
    """Placement once every node's ring has every node."""
    for node in nodes.nodes.values():
        assert node._cluster is not None
        while node._cluster.ownership.ring.members != tuple(sorted(nodes.nodes)):  # noqa: ASYNC110
            await trio.sleep(0.02)
    return ring_owners(next(iter(nodes.nodes.values())))


# --- scopes ---------------------------------------------------------------------------------

ADMIN_CALLS = {
    "cluster.pause_rebalancing": {"reason": "deploy"},
    "cluster.resume_rebalancing": {"reason": "deploy"},
    "cluster.move_channel": {"channel": "c1", "node": "n1", "reason": "hot spot"},
    "cluster.unpin_channel": {"channel": "c1", "reason": "hot spot over"},
    "cluster.release_lease": {"channel": "c1", "reason": "stuck"},
}


@pytest.mark.parametrize("token", ["reader", "operator"])
async def test_the_controls_are_refused_below_admin_and_change_nothing(
    tmp_path: Path, token: str
) -> None:
    with trio.fail_after(CEILING):
        async with pair(tmp_path) as nodes:
            await nodes.start("n1")
            before = await nodes.wait_held(dict.fromkeys(CHANNELS, "n1"))
            async with nodes.client("n1", token) as client, nodes.client("n1", "admin") as audit:
                await audit.ok("events.subscribe", {"kinds": ["audit"]})
                for method, params in ADMIN_CALLS.items():
                    error = await client.error(method, params)
                    assert error["code"] == ErrorCode.FORBIDDEN, (method, error)
                    assert error["data"]["needs"] == "admin"
                members = await client.ok("cluster.members")
                assert members["paused"] is None and members["pins"] == {}
                while len(audit.notifications) < len(ADMIN_CALLS):  # noqa: ASYNC110 - the session hands them over
                    await trio.sleep(0.01)
                outcomes = [n["params"]["event"] for n in audit.notifications]
                assert [(e["method"], e["outcome"]) for e in outcomes] == [
                    (method, "refused") for method in ADMIN_CALLS
                ]
            assert await nodes.holders() == before  # not even a token changed


async def test_a_tenant_limited_admin_cannot_pause_the_cluster(tmp_path: Path) -> None:
    with trio.fail_after(CEILING):
        async with pair(tmp_path) as nodes:
            await nodes.start("n1")
            async with nodes.client("n1", "acme-admin") as client:
                error = await client.error("cluster.pause_rebalancing", {"reason": "x"})
                assert error["code"] == ErrorCode.TENANT_FORBIDDEN
                globex = await client.error(
                    "cluster.move_channel", {"channel": "c0", "node": "n1", "reason": "x"}
                )
                assert globex["code"] == ErrorCode.NOT_FOUND  # (another tenant's: as unknown)


# --- pause and resume -----------------------------------------------------------------------


async def test_a_join_while_paused_moves_nothing_and_resume_moves_its_share(
    tmp_path: Path,
) -> None:
    with trio.fail_after(CEILING):
        async with pair(tmp_path) as nodes:
            n1 = await nodes.start("n1")
            await nodes.wait_held(dict.fromkeys(CHANNELS, "n1"))
            async with nodes.client("n1", "admin") as client:
                paused = await client.ok("cluster.pause_rebalancing", {"reason": "deploy"})
                assert paused == {"paused": True, "already": False}
                again = await client.ok("cluster.pause_rebalancing", {"reason": "twice"})
                assert again["already"] is True
                assert n1._cluster is not None
                ownership = n1._cluster.ownership
                while not ownership.rebalancer.paused:  # noqa: ASYNC110 - Redis announces it
                    await trio.sleep(0.02)
                members = await client.ok("cluster.members")
                assert members["paused"]["by"] == "admin"
                assert members["paused"]["reason"] == "deploy"  # the first pause is kept

            await nodes.start("n2")  # joins: placement now sends n2 about half
            async with nodes.client("n1", "admin") as client:
                while "n2" not in ownership.ring.members:  # noqa: ASYNC110 - Redis
                    await trio.sleep(0.02)
                joined = trio.current_time()
                placed = ring_owners(n1)
                share = {c for c, owner in placed.items() if owner == "n2"}
                assert 0 < len(share) < len(CHANNELS)
                # Past the settle delay and the cooldown (0), an unpaused n1 lets
                # n2's share go at its next reconcile; paused, it keeps every one.
                await trio.sleep_until(joined + 0.2)
                await ownership.reconcile()
                assert set(ownership.owned) == set(CHANNELS)
                held = await nodes.holders()
                assert {node for node, _ in held.values()} == {"n1"}
                view = await client.ok("cluster.placement")
                assert view["held"] == {"n1": len(CHANNELS)}
                assert view["moving"] == len(share)  # placed on n2, held by n1: kept

                resumed = await client.ok("cluster.resume_rebalancing", {"reason": "done"})
                assert resumed == {"paused": False, "already": False}
                after = await nodes.wait_held({c: str(o) for c, o in placed.items()})
                for channel in share:  # each moved once, by a planned handoff: token + 1
                    assert after[channel][1] == held[channel][1] + 1
                assert (await client.ok("cluster.members"))["paused"] is None
            assert nodes.provider.statistics().connect_failures == 0  # never two at once


# --- move a channel to a named node ---------------------------------------------------------


async def test_move_channel_lands_it_on_the_named_node_losing_no_message(tmp_path: Path) -> None:
    with trio.fail_after(CEILING):
        async with pair(tmp_path) as nodes:
            n1 = await nodes.start("n1")
            n2 = await nodes.start("n2")
            placed = await placed_on_both(nodes)
            await nodes.wait_held({c: str(o) for c, o in placed.items()})
            channel = next(c for c, owner in placed.items() if owner == "n1")
            before = (await nodes.holders())[channel]
            accepted: dict[str, str] = {}
            stop = trio.Event()

            async def sender(node: Node, name: str) -> None:
                n = 0
                while not stop.is_set():
                    key = f"{name}-{n}"
                    message = OutboundMessage(peer="p1", text=key, idempotency_key=key)
                    result = await node.send(channel, message, timeout=20.0)
                    accepted[key] = result.platform_message_id
                    n += 1
                    await trio.sleep(0.01)

            async with nodes.client("n1", "admin") as client:
                # Paused: an operator's move goes through a pause (and past the pacing).
                await client.ok("cluster.pause_rebalancing", {"reason": "moves by hand"})
                for node in (n1, n2):
                    assert node._cluster is not None
                    while not node._cluster.ownership.rebalancer.paused:  # noqa: ASYNC110
                        await trio.sleep(0.02)
                async with trio.open_nursery() as senders:
                    senders.start_soon(sender, n1, "via-n1")
                    senders.start_soon(sender, n2, "via-n2")
                    while len(accepted) < 20:  # noqa: ASYNC110 - sends before the move
                        await trio.sleep(0.01)
                    moved = await client.ok(
                        "cluster.move_channel",
                        {"channel": channel, "node": "n2", "reason": "hot spot"},
                    )
                    assert moved["holder"] == "n1" and moved["moving"] is True
                    assert moved["pinned_before"] is None
                    after = await nodes.wait_held({channel: "n2"})
                    sent_before_landing = len(accepted)
                    while len(accepted) < sent_before_landing + 20:  # noqa: ASYNC110
                        await trio.sleep(0.01)  # and sends after it
                    stop.set()
                assert after[channel][1] == before[1] + 1  # one planned move
                members = await client.ok("cluster.members")
                assert members["pins"] == {channel: "n2"}
                placement = await client.ok("cluster.placement")
                assert placement["moving"] == 0  # pinned there: where it should be

                unknown = await client.error(
                    "cluster.move_channel", {"channel": channel, "node": "n9", "reason": "x"}
                )
                assert unknown["code"] == ErrorCode.NODE_ERROR
                assert "not a live member" in unknown["message"]

                await client.ok("cluster.resume_rebalancing", {"reason": "done"})
                unpinned = await client.ok(
                    "cluster.unpin_channel", {"channel": channel, "reason": "over"}
                )
                assert unpinned == {"channel": channel, "unpinned": True, "was_pinned_to": "n2"}
                await nodes.wait_held({channel: "n1"})  # placement decides again
            sent = [r for r in nodes.provider.sent if r.channel_id == channel]
            assert sorted(r.idempotency_key for r in sent) == sorted(accepted)  # none lost
            assert {r.idempotency_key: r.platform_message_id for r in sent} == accepted
            assert nodes.provider.statistics().duplicates == 0  # none offered twice
            assert nodes.provider.statistics().connect_failures == 0


async def test_a_channel_stopped_on_another_node_leaves_its_owner_s_listing(
    tmp_path: Path,
) -> None:
    # Its owner stopped it (out of the catalog) and listed it again as running
    # elsewhere, for good: a send through that node waited 60 s for an owner.
    with trio.fail_after(CEILING):
        async with pair(tmp_path) as nodes:
            n1 = await nodes.start("n1")
            n2 = await nodes.start("n2")
            placed = await placed_on_both(nodes)
            await nodes.wait_held({c: str(o) for c, o in placed.items()})
            channel = next(c for c, owner in placed.items() if owner == "n2")
            await n1.stop_channel(channel)
            while channel in [s.channel_id for s in n2.channels()]:  # noqa: ASYNC110
                await trio.sleep(0.05)
            assert channel not in [s.channel_id for s in n1.channels()]
            with pytest.raises(UnknownChannel):
                await n2.send(channel, OutboundMessage(peer="p", idempotency_key="k", text="t"))


# --- force-release a lease ------------------------------------------------------------------


async def test_force_release_of_a_dead_holder_s_lease_lets_the_owner_take_it_with_token_plus_one(
    tmp_path: Path,
) -> None:
    # The dead holder's lease would last five minutes, longer than this test
    # may: only the release lets the channel start.
    with trio.fail_after(CEILING):
        async with pair(tmp_path) as nodes:
            async with redis() as link:
                ghost = Membership(
                    link,
                    prefix=nodes.prefix,
                    node_id="ghost",
                    heartbeat_interval=0.2,
                    member_timeout=0.5,
                )
                await ghost.beat()  # a member once, then silent: dead after 0.5 s
                leases = Leases(link, prefix=nodes.prefix, node_id="ghost", ttl=300.0)
                taken = await leases.acquire("c3")
                assert taken.token >= 1  # type: ignore[union-attr]
                token = taken.token  # type: ignore[union-attr]
            n1 = await nodes.start("n1")
            others = [c for c in CHANNELS if c != "c3"]
            await nodes.wait_held(dict.fromkeys(others, "n1"))
            assert not _connected(n1, "c3")
            async with nodes.client("n1", "admin") as client:
                leases_view = await client.ok("cluster.leases")
                row = next(r for r in leases_view["leases"] if r["channel_id"] == "c3")
                assert (row["holder"], row["token"]) == ("ghost", token)
                while True:  # until membership has declared it dead
                    members = await client.ok("cluster.members")
                    if [m["node"] for m in members["members"]] == ["n1"]:
                        break
                    await trio.sleep(0.05)
                # Dead by membership is not proof that its connection is gone.
                asked = await client.error(
                    "cluster.release_lease", {"channel": "c3", "reason": "ghost is gone"}
                )
                assert asked["code"] == ErrorCode.CONFIRMATION_REQUIRED
                assert f"confirm={token}" in asked["message"]
                assert asked["data"]["holder_alive"] is False
                assert not _connected(n1, "c3")  # nothing was released
                released = await client.ok(
                    "cluster.release_lease",
                    {"channel": "c3", "reason": "ghost is gone", "confirm": token},
                )
                assert released["holder"] == "ghost" and released["holder_alive"] is False
                assert released["token"] == token and released["free_in"] == 0
                held = await nodes.wait_held({"c3": "n1"})
                assert held["c3"][1] == token + 1  # fenced: the old token can never write
                gone = await client.error(
                    "cluster.release_lease",
                    {"channel": "c3", "reason": "again", "confirm": token},
                )
                assert gone["code"] == ErrorCode.CONFIRMATION_REQUIRED  # n1 is alive now


async def test_force_release_of_a_live_holder_needs_its_token_and_never_overlaps(
    tmp_path: Path,
) -> None:
    with trio.fail_after(CEILING):
        async with pair(tmp_path) as nodes:
            await nodes.start("n1")
            before = await nodes.wait_held(dict.fromkeys(CHANNELS, "n1"))
            token = before["c2"][1]
            async with nodes.client("n1", "admin") as client:
                refused = await client.error(
                    "cluster.release_lease", {"channel": "c2", "reason": "stuck?"}
                )
                assert refused["code"] == ErrorCode.CONFIRMATION_REQUIRED
                assert "is alive" in refused["message"]
                assert "cluster.move_channel" in refused["message"]  # what to do instead
                assert f"confirm={token}" in refused["message"]
                assert refused["data"]["holder"] == "n1"
                assert refused["data"]["holder_alive"] is True
                wrong = await client.error(
                    "cluster.release_lease",
                    {"channel": "c2", "reason": "stuck?", "confirm": token + 7},
                )
                assert wrong["code"] == ErrorCode.CONFIRMATION_REQUIRED
                assert await nodes.holders() == before  # nothing was touched

                released = await client.ok(
                    "cluster.release_lease", {"channel": "c2", "reason": "stuck", "confirm": token}
                )
                assert released["holder_alive"] is True and released["free_in"] > 0
                # The holder drops the connection at its next renewal; nobody
                # takes the lease before it would have run out; then its owner
                # takes it again with a higher token.
                held = await nodes.wait_held({"c2": "n1"})
                while held["c2"][1] == token:
                    await trio.sleep(0.05)
                    held = await nodes.wait_held({"c2": "n1"})
                assert held["c2"][1] == token + 1
                missing = await client.error(
                    "cluster.release_lease", {"channel": "nope", "reason": "x"}
                )
                assert missing["code"] == ErrorCode.NOT_FOUND
            assert nodes.provider.statistics().connect_failures == 0  # never two at once


# --- fan-out --------------------------------------------------------------------------------


async def test_cluster_stats_asks_every_member_and_names_the_ones_that_failed(
    tmp_path: Path,
) -> None:
    with trio.fail_after(CEILING):
        async with pair(tmp_path) as nodes:
            n1 = await nodes.start("n1")
            await nodes.start("n2")
            placed = await placed_on_both(nodes)
            await nodes.wait_held({c: str(o) for c, o in placed.items()})
            async with nodes.client("n2", "reader") as client:
                stats = await client.ok("cluster.stats")
                assert stats["node"] == "n2" and stats["members"] == 2
                assert stats["failed"] == {}
                per_node = {item["node"]: item["channels"] for item in stats["nodes"]}
                expected = {n: sum(o == n for o in placed.values()) for n in ("n1", "n2")}
                assert per_node == expected
                assert stats["channels"] == len(CHANNELS)
                assert stats["by_state"] == {"connected": len(CHANNELS)}
            async with nodes.client("n2", "acme-operator") as acme:
                mine = await acme.ok("cluster.stats")
                assert mine["channels"] == len(CHANNELS) // 2  # its tenant's only
            async with nodes.client("n1", "admin") as admin:  # the ghost must move nothing
                await admin.ok("cluster.pause_rebalancing", {"reason": "a ghost joins"})
            for node in nodes.nodes.values():
                assert node._cluster is not None
                while not node._cluster.ownership.rebalancer.paused:  # noqa: ASYNC110
                    await trio.sleep(0.02)
            async with redis() as link:
                # A member that heartbeats but answers nothing (its forwarding is stuck).
                ghost = Membership(
                    link,
                    prefix=nodes.prefix,
                    node_id="ghost",
                    heartbeat_interval=1.0,
                    member_timeout=30.0,
                )
                await ghost.beat()
                assert n1._cluster is not None
                while "ghost" not in (n1._cluster.view.members if n1._cluster.view else ()):  # noqa: ASYNC110
                    await trio.sleep(0.05)
                async with nodes.client("n1", "reader") as client:
                    partial = await client.ok("cluster.stats")
                    assert partial["members"] == 3 and partial["answered"] == 2
                    assert list(partial["failed"]) == ["ghost"]
                    assert "no answer" in partial["failed"]["ghost"]
                    assert partial["channels"] == len(CHANNELS)  # the others still count
                await ghost.leave()


async def test_a_restart_by_filter_reaches_every_node_after_its_dry_run(tmp_path: Path) -> None:
    with trio.fail_after(CEILING):
        async with pair(tmp_path) as nodes:
            await nodes.start("n1")
            await nodes.start("n2")
            placed = await placed_on_both(nodes)
            await nodes.wait_held({c: str(o) for c, o in placed.items()})
            globex = [c for i, c in enumerate(CHANNELS) if i % 2 == 0]
            share = {n: sum(placed[c] == n for c in globex) for n in ("n1", "n2")}
            assert all(share.values())  # both nodes run some of globex's
            connects = nodes.provider.statistics().connects
            params = {"tenant": "globex", "reason": "rotated a token"}
            async with nodes.client("n2", "acme-operator") as limited:
                other = await limited.error("cluster.restart_channels", params)
                assert other["code"] == ErrorCode.TENANT_FORBIDDEN
                mine = await limited.ok(
                    "cluster.restart_channels", {"reason": "x", "dry_run": True}
                )
                assert mine["count"] == len(CHANNELS) - len(globex)  # its tenant's, every node
            async with nodes.client("n2", "operator") as client:
                dry = await client.ok("cluster.restart_channels", {**params, "dry_run": True})
                assert dry["count"] == len(globex) and sorted(dry["channels"]) == sorted(globex)
                assert dry["nodes"] == share and dry["failed"] == {}
                unconfirmed = await client.error("cluster.restart_channels", params)
                assert unconfirmed["code"] == ErrorCode.CONFIRMATION_REQUIRED
                assert unconfirmed["data"] == {"count": len(globex)}
                wrong = await client.error(
                    "cluster.restart_channels", {**params, "confirm": len(globex) - 1}
                )
                assert wrong["code"] == ErrorCode.CONFIRMATION_REQUIRED
                assert nodes.provider.statistics().connects == connects  # nothing yet
                done = await client.ok(
                    "cluster.restart_channels", {**params, "confirm": len(globex)}
                )
                assert done["count"] == len(globex) and done["failed"] == {}
                assert {n: entry["count"] for n, entry in done["nodes"].items()} == share
            while nodes.provider.statistics().connects < connects + len(globex):  # noqa: ASYNC110
                await trio.sleep(0.02)
            await nodes.wait_held({c: str(o) for c, o in placed.items()})
            assert nodes.provider.statistics().connects == connects + len(globex)  # acme's kept
