"""A node hears its own changes to the catalog: a channel it starts or stops itself.

``start_channel`` and ``stop_channel`` change the cluster's catalog
(``runtime.cluster.catalog``) and announce it; every node reloads it and
its ownership follows. The node that made the change changed its own copy
of the catalog in place: when that copy was still the one its last reload
had reported (no reload since a change was reported), the next reload read
what it already held, saw no change, and its ownership never heard of it,
until some later change to the catalog. The other nodes did. So:

- a channel started through the API on the node placement gives it to
  did not start (nowhere, in a one-node cluster);
- a channel stopped on the node that owns it stayed in that node's
  ownership: stopped there, but its lease renewed, and no node ran it.

A channel of the deployment file was not hit: starting or stopping it
changes which entries are file entries too, which the reload compared.
The console starts only those; it stops any channel, through the same
``stop_channel``.

The catalog is reloaded here only when a change is announced (not also
every few heartbeats, as it is to catch a missed announcement): a reload
with nothing to report would have hidden the fault or not, by timing. Two
nodes in process (``tests.test_console_cluster``'s pair: one SQLite store,
one simulated platform, a real Redis under a key prefix of the test's
own), real time.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import trio

import runtime.cluster.catalog as catalog_module
from runtime import Node
from runtime.cluster.catalog import Catalog
from runtime.config.model import ChannelSpec
from tests.support import until_moved
from tests.test_console_cluster import CEILING, CHANNELS, Pair, _connected, pair, placed_on_both


@pytest.fixture(autouse=True)
def announced_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each node reloads the catalog when a change is announced, and only then."""
    monkeypatch.setattr(catalog_module, "RELOAD_EVERY", math.inf)


def _catalog(node: Node) -> Catalog:
    assert node._cluster is not None
    return node._cluster.catalog


async def listening(nodes: Pair) -> None:
    """Until every node hears the catalog's announcements."""
    for node in nodes.nodes.values():
        await _catalog(node).listening.wait()


def api_channel(nodes: Pair, owner: str) -> ChannelSpec:
    """A channel (not in the file) that placement over the nodes gives to ``owner``."""
    cluster = nodes.nodes[owner]._cluster
    assert cluster is not None
    channel_id = next(
        f"api{i}" for i in range(1000) if cluster.ownership.ring.owner(f"api{i}") == owner
    )
    return ChannelSpec(id=channel_id, tenant="acme", provider="simulated")


def _listed(node: Node, channel_id: str) -> bool:
    return any(s.channel_id == channel_id for s in node.channels())


async def runs_on(nodes: Pair, channel_id: str, owner: str) -> None:
    """Until the channel is connected on ``owner`` (which connects it only while
    it holds its lease); then its lease is ``owner``'s."""
    cluster = nodes.nodes[owner]._cluster
    assert cluster is not None
    await until_moved(lambda: _connected(nodes.nodes[owner], channel_id))
    held = (await cluster.holders([channel_id])).get(channel_id)
    assert held is not None and held[0] == owner, held


async def gone_for_good(nodes: Pair, channel_id: str) -> None:
    """Until its lease is gone and no node's ownership has the channel; then no node
    lists it, and the catalog does not hold it: nothing will start it again."""
    clusters = [node._cluster for node in nodes.nodes.values() if node._cluster is not None]
    link, leases = clusters[0].link, clusters[0].leases
    # An owner forgets a channel (owned) once it gave its lease back.
    await until_moved(
        lambda: (
            not any(
                channel_id in cluster.ownership.catalog or channel_id in cluster.ownership.owned
                for cluster in clusters
            )
        )
    )
    assert await link.call("GET", leases.lease_key(channel_id)) is None
    assert not any(_listed(node, channel_id) for node in nodes.nodes.values())
    assert channel_id not in await clusters[0].catalog.store.catalog()


# --- start_channel on the node placement gives the channel to ------------------------------


async def test_a_channel_started_on_a_node_alone_in_its_cluster_runs_there(
    tmp_path: Path,
) -> None:
    """Started right after the node's start (its one reload: the file's channels)."""
    with trio.fail_after(CEILING):
        async with pair(tmp_path) as nodes:
            n1 = await nodes.start("n1")
            await nodes.wait_held(dict.fromkeys(CHANNELS, "n1"))
            await listening(nodes)
            spec = api_channel(nodes, "n1")
            await n1.start_channel(spec)
            await runs_on(nodes, spec.id, "n1")  # never, before the fix
            assert spec.id in _catalog(n1).specs


async def test_a_channel_started_on_the_node_placement_gives_it_to_runs_there(
    tmp_path: Path,
) -> None:
    """n1 joins n2 (n1's one reload, at its start, reported the catalog) and
    starts a channel placement gives to n1: n2 hears of it, n1 must too."""
    with trio.fail_after(CEILING):
        async with pair(tmp_path) as nodes:
            n2 = await nodes.start("n2")
            n1 = await nodes.start("n1")
            placed = await placed_on_both(nodes)
            await nodes.wait_held({c: str(owner) for c, owner in placed.items()})
            await listening(nodes)
            spec = api_channel(nodes, "n1")
            await n1.start_channel(spec)
            await runs_on(nodes, spec.id, "n1")  # never, before the fix: only n2 heard
            shown = next(s for s in n2.channels() if s.channel_id == spec.id)
            assert shown.remote and shown.owner == "n1"


# --- stop_channel on the node that owns the channel ----------------------------------------


async def test_a_channel_its_owner_alone_stops_gives_its_lease_back_for_good(
    tmp_path: Path,
) -> None:
    """Started through the API elsewhere (another node's, or this node's earlier
    run: its spec is in the store); n1, alone, runs it and stops it."""
    with trio.fail_after(CEILING):
        async with pair(tmp_path) as nodes:
            n1 = await nodes.start("n1")
            await nodes.wait_held(dict.fromkeys(CHANNELS, "n1"))
            await listening(nodes)
            spec = api_channel(nodes, "n1")
            own = _catalog(n1)
            elsewhere = Catalog(own.store, own.link, prefix=nodes.prefix, file_specs=[])
            await elsewhere.put(spec)
            await runs_on(nodes, spec.id, "n1")
            await n1.stop_channel(spec.id)
            await gone_for_good(nodes, spec.id)  # its lease renewed on, before the fix


async def test_a_channel_its_owner_stops_gives_its_lease_back_and_runs_nowhere(
    tmp_path: Path,
) -> None:
    """Started through n2's API, placed on n1 (n1 hears of it: n2 changed the
    catalog), stopped on n1."""
    with trio.fail_after(CEILING):
        async with pair(tmp_path) as nodes:
            n1 = await nodes.start("n1")
            n2 = await nodes.start("n2")
            placed = await placed_on_both(nodes)
            await nodes.wait_held({c: str(owner) for c, owner in placed.items()})
            await listening(nodes)
            spec = api_channel(nodes, "n1")
            await n2.start_channel(spec)
            await runs_on(nodes, spec.id, "n1")
            await n1.stop_channel(spec.id)
            await gone_for_good(nodes, spec.id)  # n1 kept its lease, before the fix


async def test_a_channel_stopped_from_its_owner_s_console_gives_its_lease_back(
    tmp_path: Path,
) -> None:
    """The console's ``channels.stop`` is ``stop_channel``: the same, from an
    operator's session on the owner."""
    with trio.fail_after(CEILING):
        async with pair(tmp_path) as nodes:
            await nodes.start("n1")
            n2 = await nodes.start("n2")
            placed = await placed_on_both(nodes)
            await nodes.wait_held({c: str(owner) for c, owner in placed.items()})
            await listening(nodes)
            spec = api_channel(nodes, "n1")
            await n2.start_channel(spec)
            await runs_on(nodes, spec.id, "n1")
            async with nodes.client("n1", "operator") as client:
                stopped = await client.ok("channels.stop", {"channel": spec.id, "reason": "gone"})
            assert stopped == {"count": 1, "channels": [spec.id], "failed": {}}
            await gone_for_good(nodes, spec.id)
