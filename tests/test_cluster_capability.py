"""Placement over the members that can run a channel.

A channel of a deployment file is entered in the catalog by id alone: only
a node whose own file holds it can run it. Each node publishes its file's
channels with its membership, and placement hashes a file entry only over
the members that can run it. The ring's part is pure (property-based); the
rest runs against a real Redis (``SWITCHBOARD_TEST_REDIS``) under a key
prefix of the test's own, with in-process nodes (``open_cluster`` and a
stand-in runner) as the other cluster tests do.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.channel import Tenure
from providers.simulated import SimulatedProvider
from runtime import NodeError, open_node
from runtime.cluster import open_cluster
from runtime.cluster.leases import Leases
from runtime.cluster.membership import Membership, digest
from runtime.cluster.ownership import Ownership
from runtime.cluster.placement import HashRing
from runtime.config.model import ChannelSpec, ClusterConfig, StorageConfig
from runtime.console.top import cluster_lines
from runtime.store import open_store
from tests.test_cluster_faults import _config
from tests.test_cluster_redis import CEILING as REAL_CEILING
from tests.test_cluster_redis import Runner, redis
from tests.test_node_cluster import cluster_config
from tests.test_node_embedded import wait_connected

# --- the ring, restricted to the able members (pure) ------------------------------------------

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
members_st = st.lists(names, min_size=1, max_size=8, unique=True)
channels_st = st.lists(names, min_size=1, max_size=60, unique=True)


@settings(max_examples=60, deadline=None)
@given(members_st, channels_st, st.data())
def test_a_channel_goes_where_a_ring_of_the_members_that_can_run_it_alone_puts_it(
    members: list[str], channels: list[str], data: st.DataObject
) -> None:
    able = set(data.draw(st.lists(st.sampled_from(members), unique=True)))
    ring = HashRing(members, vnodes=32)
    of_the_able = HashRing(able, vnodes=32)
    for channel in channels:
        assert ring.owner(channel, able.__contains__) == of_the_able.owner(channel)
        assert ring.owner(channel, lambda _: True) == ring.owner(channel)


# --- what ownership makes of the published files ------------------------------------------------


class _NoRunner(Runner):
    pass


async def test_placement_honours_the_files_each_member_published(prefix: str) -> None:
    async with redis() as link:
        leases = Leases(link, prefix=prefix, node_id="a", ttl=30.0)
        ownership = Ownership(
            node_id="a", leases=leases, runner=_NoRunner(), vnodes=64, renew_batch=1
        )
        ring = HashRing(("a", "b"), vnodes=64)
        channels = [f"ch-{i}" for i in range(40)]
        on_b = [c for c in channels if ring.owner(c) == "b"]
        x, api, z = on_b[0], on_b[1], on_b[2]  # z: in another node's file, not a's
        mine = frozenset(channels) - {api, z}  # a's file
        ownership.set_catalog(set(channels) - {z}, from_file=set(channels) - {api})
        # b publishes nothing (a node of an older version): it runs every channel.
        ownership.set_members(["a", "b"], {"a": mine})
        assert ownership.owner(x) == "b" and x not in ownership.wanted()
        assert ownership.owner(z) == "b" and ownership.unplaced() == frozenset()
        # b's file lacks x: x is a's. A channel with its spec in the store is b's still.
        ownership.set_members(["a", "b"], {"a": mine, "b": frozenset({z})})
        assert ownership.owner(x) == "a" and x in ownership.wanted()
        assert ownership.owner(api) == "b" and api not in ownership.wanted()
        assert ownership.owner(z) == "b" and z not in ownership.wanted()
        # A pin to a member that cannot run the channel is no pin.
        ownership.set_controls(paused=False, pins={x: "b", z: "a"})
        assert ownership.owner(x) == "a" and ownership.owner(z) == "b"
        # Nobody's file holds z any more: placed nowhere, and reported as such.
        ownership.set_members(["a", "b"], {"a": mine, "b": frozenset()})
        assert ownership.owner(z) is None and ownership.unplaced() == {z}
        assert ownership.wanted() == mine  # b runs none of a's file


# --- what each member publishes, in Redis -------------------------------------------------------


def _member(
    link: Any, prefix: str, node: str, files: list[str], *, timeout: float = 5.0
) -> Membership:
    return Membership(
        link,
        prefix=prefix,
        node_id=node,
        heartbeat_interval=0.1,
        member_timeout=timeout,
        files=files,
    )


async def test_each_member_s_file_channels_are_read_once_and_go_when_it_leaves(
    prefix: str,
) -> None:
    with trio.fail_after(REAL_CEILING):
        async with redis() as link:
            a = _member(link, prefix, "a", ["x", "y"])
            b = _member(link, prefix, "b", [])
            old = _member(link, prefix, "old", ["x"])
            old.files_digest = ""  # a node of an older version: it publishes nothing
            await a.beat()
            await b.beat()
            await old.beat()
            view = await a.beat()
            assert view.members == ("a", "b", "old")
            assert view.files == {"a": frozenset({"x", "y"}), "b": frozenset()}
            assert a.files_read == 1  # b's, once (a's own is not read back)
            for _ in range(5):  # nothing changed: nothing more is read, no new epoch
                again = await a.beat()
                await b.beat()
            assert again == attrs.evolve(view, redis_time=again.redis_time)
            assert a.files_read == 1
            # Redis lost a's set (its data, say): a's heartbeat says so, and a
            # writes it again before the next one. Meanwhile b keeps what it
            # read, and c, which never read it, takes a (a member of this
            # version: it published a digest) to run no file channel yet.
            await link.call("DEL", a.files_key)
            c = _member(link, prefix, "c", [])
            assert (await c.beat()).files == {
                "a": frozenset(),
                "b": frozenset(),
                "c": frozenset(),
            }
            assert (await b.beat()).files["a"] == frozenset({"x", "y"})  # as read before
            assert (await a.beat()).files["a"] == frozenset({"x", "y"})  # its own
            assert await link.call("EXISTS", a.files_key) == 0
            await a.beat()
            assert await link.call("SCARD", a.files_key) == 2
            assert (await c.beat()).files["a"] == frozenset({"x", "y"})
            await c.leave()
            await a.leave()
            left = await b.beat()
            assert left.members == ("b", "old") and left.files == {"b": frozenset()}
            # Each set once, by its digest (b's and c's are the same, the empty
            # set's), and a's again by c (the read that found it gone).
            assert (a.files_read, b.files_read, c.files_read) == (1, 1, 2)
            assert await link.call("EXISTS", a.files_key) == 0
            assert await link.call("HGET", a.files_hash, "a") is None
            # A member that dies: its digest goes when it is declared dead.
            brief = _member(link, prefix, "brief", ["x"], timeout=0.05)
            assert "brief" in (await brief.beat()).files
            while "brief" in (await b.beat()).members:  # Redis declares it dead, on its clock
                pass
            assert await link.call("HGET", a.files_hash, "brief") is None


async def test_the_digest_is_the_set_s_in_any_order() -> None:
    assert digest(["b", "a"]) == digest(["a", "b"]) != digest(["a"])
    assert digest([]) == digest(())


# --- nodes of a cluster -------------------------------------------------------------------------


class _Recorder(Runner):
    """A stand-in node: what it runs, with a wait for a condition on it."""

    def __init__(self) -> None:
        super().__init__()
        self.running: set[str] = set()
        self.starts: list[str] = []
        self.stops: list[str] = []
        self._change = trio.Event()

    async def start_owned(self, channel_id: str, tenure: Tenure) -> None:
        await super().start_owned(channel_id, tenure)
        self.running.add(channel_id)
        self.starts.append(channel_id)
        self._change.set()

    async def stop_owned(self, channel_id: str) -> None:
        await super().stop_owned(channel_id)
        self.running.discard(channel_id)
        self.stops.append(channel_id)
        self._change.set()

    async def until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            self._change = trio.Event()
            await self._change.wait()


def _fast(prefix: str) -> Any:
    return attrs.evolve(_config(prefix), heartbeat_interval=0.1, member_timeout=2.0, lease_ttl=3.0)


def _on_b(vnodes: int) -> str:
    ring = HashRing(("a", "b"), vnodes=vnodes)
    return next(c for c in (f"x{n}" for n in range(1000)) if ring.owner(c) == "b")


@attrs.frozen
class _Seen:
    """What a node's ownership knew when one of its reconciles began."""

    members: tuple[str, ...]
    files: dict[str, frozenset[str]]
    from_file: frozenset[str]


class _Reconciles:
    """Each node's reconciles, with a wait for a condition after one of them.

    ``seen[node]`` is what the node's last finished reconcile knew at least
    (read as it began): a condition on it holds for a reconcile that ran.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.seen: dict[str, _Seen] = {}
        self._done = trio.Event()
        reconcile = Ownership.reconcile

        async def recorded(ownership: Ownership) -> None:
            seen = _Seen(ownership.ring.members, dict(ownership.files), ownership.from_file)
            await reconcile(ownership)
            self.seen[ownership.node_id] = seen
            self._done.set()

        monkeypatch.setattr(Ownership, "reconcile", recorded)

    def saw(self, node: str, condition: Callable[[_Seen], bool]) -> bool:
        """Whether ``node``'s last reconcile knew what ``condition`` asks."""
        seen = self.seen.get(node)
        return seen is not None and condition(seen)

    async def until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            self._done = trio.Event()
            await self._done.wait()


async def test_a_channel_follows_the_catalog_to_the_member_that_can_run_it_and_back(
    prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """x is in a's file, not in b's, and placement over both would put it on b.
    It runs on a. Started through the API (its spec now in the store), any
    member can run it: it moves to b. Entered from a's file again, b cannot
    run it: it comes back to a."""
    config = _fast(prefix)
    x = _on_b(config.vnodes)
    spec = ChannelSpec(id=x, provider="fake")
    reconciles = _Reconciles(monkeypatch)
    with trio.fail_after(REAL_CEILING):
        async with open_store(StorageConfig(backend="memory")) as store:
            a_runner, b_runner = _Recorder(), _Recorder()
            async with open_cluster(
                config, node_id="a", store=store, runner=a_runner, file_specs=[spec]
            ) as a:
                await a_runner.until(lambda: x in a_runner.running)
                async with open_cluster(
                    config, node_id="b", store=store, runner=b_runner, file_specs=[]
                ) as b:
                    await reconciles.until(
                        lambda: reconciles.saw("a", lambda s: s.files.get("b") == frozenset())
                    )
                    assert x in a.ownership.owned and a_runner.stops == []
                    await b.catalog.put(spec)  # an API start on b: the spec goes to the store
                    await b_runner.until(lambda: x in b_runner.running)
                    assert a_runner.stops == [x] and x not in a_runner.running
                    await a.catalog.put(spec)  # a's file's spec: a file entry again
                    await a_runner.until(lambda: x in a_runner.running)
                    assert b_runner.stops == [x] and x not in b_runner.running
                    assert a_runner.starts == [x, x] and b_runner.starts == [x]
                    survey = await b.survey()
                    assert survey.unplaced == ()
                    assert {lease.channel_id: lease.placed_on for lease in survey.leases} == {
                        x: "a"
                    }


async def test_a_channel_no_live_member_can_run_is_reported_and_placed_once_one_joins(
    prefix: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The catalog holds x from a file that no live member's file holds: it is
    placed nowhere, the log says so once, and the cluster's view shows it
    unplaced (not moving). A node whose file holds it joins: it runs there."""
    caplog.set_level(logging.INFO, logger="switchboard.cluster")
    config = _fast(prefix)
    x = _on_b(config.vnodes)
    spec = ChannelSpec(id=x, provider="fake")
    reconciles = _Reconciles(monkeypatch)
    with trio.fail_after(REAL_CEILING):
        async with open_store(StorageConfig(backend="memory")) as store:
            await store.catalog_put({x: {"file": True}}, source="file")  # a's file, a gone
            a_runner, b_runner = _Recorder(), _Recorder()
            async with open_cluster(
                config, node_id="b", store=store, runner=b_runner, file_specs=[]
            ) as b:

                def warned() -> list[str]:
                    return [r.getMessage() for r in caplog.records if "no live member" in r.msg]

                await reconciles.until(lambda: bool(warned()))
                survey = await b.survey()
                assert survey.unplaced == (x,)
                (lease,) = survey.leases
                assert lease.placed_on is None and lease.holder is None and not lease.moving
                assert survey.moving == ()
                assert [m.placed for m in survey.members] == [0]
                (warning,) = warned()
                assert x in warning
                async with open_cluster(
                    config, node_id="a", store=store, runner=a_runner, file_specs=[spec]
                ):
                    await a_runner.until(lambda: x in a_runner.running)
                    await reconciles.until(
                        lambda: any("on a live member again" in r.msg for r in caplog.records)
                    )
                    survey = await b.survey()
                    assert survey.unplaced == ()
                    assert [(m.node, m.placed) for m in survey.members] == [("a", 1), ("b", 0)]
            assert b_runner.starts == []


async def test_nothing_moves_and_nothing_is_read_again_while_nothing_changes(
    prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two nodes with different files run side by side: heartbeat after
    heartbeat, the epoch holds, no member's file set is read again, and no
    channel starts or stops."""
    config = _fast(prefix)
    x = _on_b(config.vnodes)
    shared = [ChannelSpec(id=f"s{n}", provider="fake") for n in range(20)]
    a_spec = ChannelSpec(id=x, provider="fake")
    reconciles = _Reconciles(monkeypatch)
    beats: dict[str, int] = {}
    beaten = trio.Event()
    beat = Membership.beat

    async def counted(membership: Membership) -> Any:
        view = await beat(membership)
        beats[membership.node_id] = beats.get(membership.node_id, 0) + 1
        beaten.set()
        return view

    monkeypatch.setattr(Membership, "beat", counted)
    with trio.fail_after(REAL_CEILING):
        async with open_store(StorageConfig(backend="memory")) as store:
            a_runner, b_runner = _Recorder(), _Recorder()
            async with open_cluster(
                config, node_id="a", store=store, runner=a_runner, file_specs=[a_spec, *shared]
            ) as a:
                await a_runner.until(lambda: len(a_runner.running) == 21)
                async with open_cluster(
                    config, node_id="b", store=store, runner=b_runner, file_specs=shared
                ) as b:
                    everything = {x, *(s.id for s in shared)}
                    await reconciles.until(
                        lambda: (
                            a_runner.running | b_runner.running == everything
                            and not a_runner.running & b_runner.running
                            and reconciles.saw("a", lambda s: "b" in s.files)
                            and reconciles.saw("b", lambda s: "a" in s.files)
                            and a.ownership.waiting() == {}
                            and b.ownership.waiting() == {}
                        )
                    )
                    assert x in a_runner.running and b_runner.running  # b took its share
                    epoch = a.membership.view.epoch if a.membership.view else None
                    read = (a.membership.files_read, b.membership.files_read)
                    starts, stops = (
                        len(a_runner.starts + b_runner.starts),
                        len(a_runner.stops + b_runner.stops),
                    )
                    until = {n: beats[n] + 10 for n in ("a", "b")}
                    while any(beats[n] < until[n] for n in until):
                        beaten = trio.Event()
                        await beaten.wait()
                    assert a.membership.view is not None and a.membership.view.epoch == epoch
                    assert (a.membership.files_read, b.membership.files_read) == read == (1, 1)
                    assert len(a_runner.starts + b_runner.starts) == starts
                    assert len(a_runner.stops + b_runner.stops) == stops


async def test_a_node_keeps_its_file_channel_from_a_member_that_cannot_run_it_even_pinned(
    tmp_path: Path, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real node runs channel c from its file; a member whose file lacks c
    joins (its membership only), one placement over both would give c to.
    The node keeps c, its view places c on itself, and a pin of c to the
    other member is refused."""
    ring = HashRing(("other", "solo"), vnodes=attrs.fields(ClusterConfig).vnodes.default)
    c = next(c for c in (f"c{n}" for n in range(1000)) if ring.owner(c) == "other")
    reconciles = _Reconciles(monkeypatch)
    with trio.fail_after(REAL_CEILING):
        async with open_node(
            cluster_config(tmp_path, prefix, c), providers={"simulated": SimulatedProvider()}
        ) as node:
            await wait_connected(node, 1)
            async with redis() as link:
                other = Membership(
                    link,
                    prefix=prefix,
                    node_id="other",
                    heartbeat_interval=1.0,
                    member_timeout=30.0,  # a member for the test's length, silent
                    files=[],
                )
                await other.beat()
                await reconciles.until(
                    lambda: reconciles.saw("solo", lambda s: s.files.get("other") == frozenset())
                )
                view = await node.cluster()
                assert [(m.node, m.placed, m.held) for m in view.members] == [
                    ("other", 0, 0),
                    ("solo", 1, 1),
                ]
                assert view.unplaced == () and view.moving == ()
                with pytest.raises(NodeError, match=f"cannot run channel '{c}'"):
                    await node.pin_channel(c, "other")
                (snapshot,) = node.channels()
                assert snapshot.owner == "solo" and not snapshot.remote
                await other.leave()


def test_the_terminal_view_lists_the_channels_no_member_can_run() -> None:
    cluster = {
        "members": [{"node": "n1", "heartbeat_age": 0.25, "placed": 1, "held": 1}],
        "placement": {"moving": 0, "unplaced": ["x1", "x2"], "paused": None, "pins": {}},
    }
    assert cluster_lines(cluster) == [
        "moving: 0",
        "unplaced: 2, no live member can run them (x1, x2)",
        "n1: heartbeat 0.2s ago, placed 1, held 1",
    ]
