"""Placement over the members that can run a channel, under faults.

A review of "placement gives a channel only to the members that can run
it": Redis losing the members' published files while the nodes run, a
member whose set is gone when the others read it, and the operator's
controls on a channel of another node's file. Against a real Redis
(``SWITCHBOARD_TEST_REDIS``) under a key prefix of the test's own, as the
other cluster tests do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from providers.simulated import SimulatedProvider
from runtime import open_node
from runtime.cluster import open_cluster, rebirth
from runtime.cluster.leases import Leases
from runtime.cluster.membership import Membership, View
from runtime.cluster.ownership import Ownership
from runtime.cluster.placement import HashRing
from runtime.config.model import ChannelSpec, StorageConfig
from runtime.store import open_store
from tests.support import until_moved
from tests.test_cluster_capability import _member, _Reconciles, _Recorder
from tests.test_cluster_faults import _config
from tests.test_cluster_redis import CEILING as REAL_CEILING
from tests.test_cluster_redis import Runner, redis
from tests.test_node_cluster import cluster_config
from tests.test_node_embedded import wait_connected

VNODES = 64


def _placed_on(node: str, members: tuple[str, ...], stem: str = "x") -> str:
    """A channel id the ring of ``members`` (all able) puts on ``node``."""
    ring = HashRing(members, vnodes=VNODES)
    return next(c for c in (f"{stem}{n}" for n in range(1000)) if ring.owner(c) == node)


def _ownership(link: object, prefix: str, node: str, channels: set[str], view: View) -> Ownership:
    """``node``'s ownership with every channel a file entry, placed over ``view``."""
    leases = Leases(link, prefix=prefix, node_id=node, ttl=30.0)  # type: ignore[arg-type]
    ownership = Ownership(
        node_id=node, leases=leases, runner=Runner(), vnodes=VNODES, renew_batch=1
    )
    ownership.set_catalog(channels, from_file=channels)
    ownership.set_members(view.members, view.files)
    return ownership


async def _lose_everything(link: object, prefix: str) -> None:
    """Redis loses the cluster's data (restarted without persistence)."""
    keys = await link.call("KEYS", f"{prefix}:*")  # type: ignore[attr-defined]
    if keys:
        await link.call("DEL", *keys)  # type: ignore[attr-defined]


# --- Redis lost its data while the nodes ran ---------------------------------------------------


async def test_a_member_s_file_read_before_is_kept_when_redis_loses_its_data(prefix: str) -> None:
    """a runs x and s from its file, b runs s only; a has read b's file. Redis
    loses its data. a's first heartbeat after the loss finds itself alone; b's
    finds its set gone (it writes it again before its next one); a's next
    heartbeat reads b's set before b wrote it. a must keep what it read of b
    (b's digest is the same: the design says "meanwhile the others keep what
    they read before"), so x stays on a. Today a forgets b's file as soon as
    one heartbeat misses b (``_files_of`` drops every member absent from the
    view), then finds b's set gone and takes b to run every channel: x,
    which b cannot run, is placed on b, a lets it go (at once with
    settle_delay 0, else once the settle delay passes before a heartbeat
    reads the set again), b never starts it, and during the rebirth's
    quarantine nobody can take it back. Fix: keep the sets read by digest
    (a digest names its set's content), not by member, so a digest seen
    before is never read again nor forgotten with one absent heartbeat."""
    x = _placed_on("b", ("a", "b"))
    with trio.fail_after(REAL_CEILING):
        async with redis() as link:
            a = _member(link, prefix, "a", [x, "s"])
            b = _member(link, prefix, "b", ["s"])
            await a.beat()
            await b.beat()
            before = await a.beat()
            assert before.files["b"] == frozenset({"s"})
            assert _ownership(link, prefix, "a", {x, "s"}, before).owner(x) == "a"
            await _lose_everything(link, prefix)
            assert (await a.beat()).members == ("a",)  # the first after the loss: alone
            assert (await b.beat()).members == ("a", "b")  # b's set is gone now
            after = await a.beat()
            assert after.members == ("a", "b")
            assert _ownership(link, prefix, "a", {x, "s"}, after).owner(x) == "a", (
                f"b is taken to run every channel: a's view of the files is {after.files}"
            )
            assert after.files.get("b") == frozenset({"s"})


async def test_a_member_whose_set_is_being_written_again_is_not_given_channels_it_cannot_run(
    prefix: str,
) -> None:
    """b publishes its file (s only) and Redis loses b's set (evicted: it is a
    key with an expiry; or a Redis restarted). b's heartbeat puts its digest
    back at once and writes the set before its next heartbeat. Node c joins
    in between. b has a digest, so b is a node of this version and its file
    is known to exist: until c can read it, c must not place on b the
    channels of a file b's may lack. Today c takes b to publish nothing, i.e.
    to run every channel (what an older node gets), and places x (a's and
    c's file, not b's) on b: c's view says b runs x, a's and b's say it runs
    elsewhere, and a channel placed so is let go by its holder and started
    by nobody (the dark channel the change set out to end). Fix: a member
    with a digest whose set cannot be read yet is taken to run no file entry
    (``View.files[member] = frozenset()``, or a separate "pending" set that
    ownership treats so); only a member with no digest at all runs
    everything."""
    x = _placed_on("b", ("a", "b", "c"))
    with trio.fail_after(REAL_CEILING):
        async with redis() as link:
            a = _member(link, prefix, "a", [x, "s"])
            b = _member(link, prefix, "b", ["s"])
            await a.beat()
            await b.beat()
            await link.call("DEL", b.files_key)  # Redis lost b's set
            await b.beat()  # its digest is there; the set is written before its next
            assert await link.call("HGET", b.files_hash, "b") is not None
            assert await link.call("EXISTS", b.files_key) == 0
            c = _member(link, prefix, "c", [x, "s"])
            view = await c.beat()
            assert view.members == ("a", "b", "c")
            owner = _ownership(link, prefix, "c", {x, "s"}, view).owner(x)
            assert owner in ("a", "c"), f"x placed on {owner}; c's view of the files: {view.files}"


async def test_a_node_keeps_running_its_file_channel_when_redis_loses_its_data(
    prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nodes a (file: x, s) and b (file: s) run; x would be b's over both, so it
    runs on a. Redis loses its data. a's heartbeat comes first (alone), then
    b's (its set gone); b is slow to write its set again (its next heartbeat's
    call), and a's heartbeat with b back comes before it. x must keep running
    on a: b's digest is the one a read before. Today a's next reconcile stops
    x (settle_delay and move_cooldown 0 here; with the defaults, whenever a's
    re-read comes later than the settle delay), b does not start it, and the
    rebirth's quarantine keeps everyone from taking it back for a lease TTL.
    Fix: as for test_a_member_s_file_read_before_is_kept_when_redis_loses_its_data."""
    config = _config(prefix)  # heartbeats only when poked; settle and cooldown 0
    x = next(
        c
        for c in (f"x{n}" for n in range(1000))
        if HashRing(("a", "b"), vnodes=config.vnodes).owner(c) == "b"
    )
    a_spec, s_spec = ChannelSpec(id=x, provider="fake"), ChannelSpec(id="s", provider="fake")
    reconciles = _Reconciles(monkeypatch)
    with trio.fail_after(REAL_CEILING):
        async with open_store(StorageConfig(backend="memory")) as store:
            a_runner, b_runner = _Recorder(), _Recorder()
            async with open_cluster(
                config, node_id="a", store=store, runner=a_runner, file_specs=[a_spec, s_spec]
            ) as a:
                await a_runner.until(lambda: x in a_runner.running)
                async with open_cluster(
                    config, node_id="b", store=store, runner=b_runner, file_specs=[s_spec]
                ) as b:
                    await reconciles.until(
                        lambda: (
                            reconciles.saw("a", lambda s: "b" in s.files)
                            and reconciles.saw("b", lambda s: "a" in s.files)
                        )
                    )
                    assert x in a_runner.running and a_runner.stops == []
                    # b writes its set again only once a has heartbeat with b back.
                    back = trio.Event()
                    seen_back: list[View] = []
                    beat, write = a.membership.beat, b.membership._write_files

                    async def a_beat() -> View:
                        view = await beat()
                        if lost.is_set() and "b" in view.members and not back.is_set():
                            seen_back.append(view)
                            back.set()
                        return view

                    async def b_write(keys: Any, args: Any) -> Any:
                        await back.wait()
                        return await write(keys, args)

                    lost = trio.Event()
                    monkeypatch.setattr(a.membership, "beat", a_beat)
                    monkeypatch.setattr(b.membership, "_write_files", b_write)
                    async with redis() as link:
                        await _lose_everything(link, prefix)
                    lost.set()
                    assert (await a.membership.beat()).members == ("a",)
                    await b.membership.beat()  # b is back; its set is gone
                    await back.wait()
                    (view,) = seen_back
                    expected = {m: f for m, f in view.files.items() if m in view.members}
                    await reconciles.until(
                        lambda: reconciles.saw(
                            "a", lambda s: s.members == ("a", "b") and s.files == expected
                        )
                    )
                    assert a_runner.stops == [] and x in a_runner.running, (
                        f"a let x go; its view of the files: {view.files}"
                    )


async def test_a_channel_the_older_node_will_not_take_goes_to_a_member_that_will(
    prefix: str,
) -> None:
    """A rolling upgrade: a (this version, its file holds x), b (this version,
    its file lacks x) and o (the version before, publishing nothing; its
    file holds x too). Over all three the ring puts x on b; o's code places
    over every member, so o takes x only if x were placed on o, and it is
    not: o will never start x. a's placement walks past b to the next member
    it takes to be able. x must go to a member that will take it: a. Today
    a takes o, publishing nothing, to run everything, and the walk gives x
    to o: a leaves x to o, o leaves it to b, b cannot run it; x is dark on
    every node for the whole upgrade. Fix: a member that publishes nothing
    runs a channel only where the ring over every member puts it (what its
    own placement does): in ``can_run``/``owner``, such a member is able
    for ``c`` only if ``self.ring.owner(c) == member``."""
    everyone = ("a", "b", "o")
    ring = HashRing(everyone, vnodes=VNODES)
    x = next(
        c
        for c in (f"x{n}" for n in range(5000))
        if ring.owner(c) == "b" and ring.owner(c, lambda m: m != "b") == "o"
    )
    with trio.fail_after(REAL_CEILING):
        async with redis() as link:
            view = View(
                epoch=1,
                members=everyone,
                redis_time=0.0,
                files={"a": frozenset({x}), "b": frozenset()},  # o publishes nothing
            )
            ownership = _ownership(link, prefix, "a", {x}, view)
            older_nodes_owner = ring.owner(x)  # o's own placement (pins aside)
            assert older_nodes_owner == "b"
            assert ownership.owner(x) == "a", "x is left to o, which places it on b"
            assert x in ownership.wanted()


# --- the operator's controls on a channel of another node's file -------------------------------


async def test_a_channel_of_another_node_s_file_can_be_pinned_and_looked_up_from_this_node(
    tmp_path: Path, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Node solo runs c from its file; channel x comes from member other's file
    (solo's lacks it), and other publishes x. solo's cluster view lists x,
    placed on other: it is a channel of the cluster's catalog, as the change
    made the survey say. The operator on solo must be able to pin it to
    other (the one member that can run it) and ask who holds its lease, as
    for any channel of the catalog. Today both answer UnknownChannel ("not
    in the cluster's catalog"): pin_channel and lease_holder look at
    ``ownership.catalog``, the channels solo can run, not at the catalog.
    Fix: check ``channel_id in ownership.catalog | ownership.from_file``
    there (the survey's set), and keep the can_run check for the pin."""
    x = "x-elsewhere"
    config = cluster_config(tmp_path, prefix, "c")
    assert config.cluster is not None
    ring = HashRing(("other", "solo"), vnodes=config.cluster.vnodes)
    c = next(c for c in (f"c{n}" for n in range(1000)) if ring.owner(c) == "solo")
    config = cluster_config(tmp_path, prefix, c)
    async with open_store(config.storage) as store:  # other's file entered x
        await store.catalog_put({x: {"file": True}}, source="file")
    with trio.fail_after(REAL_CEILING):
        async with redis() as link:
            other = Membership(
                link,
                prefix=prefix,
                node_id="other",
                heartbeat_interval=1.0,
                member_timeout=30.0,  # a member for the test's length, silent
                files=[x],
            )
            await other.beat()
            async with open_node(config, providers={"simulated": SimulatedProvider()}) as node:
                await wait_connected(node, 1)
                cluster = node._cluster
                assert cluster is not None
                # Until solo has read other's file (from Redis, at a heartbeat).
                await until_moved(lambda: cluster.ownership.owner(x) == "other")
                view = await node.cluster()
                placed = {lease.channel_id: lease.placed_on for lease in view.leases}
                assert placed.get(x) == "other"
                assert view.unplaced == ()
                holder = await node.lease_holder(x)
                assert holder.channel_id == x and holder.holder is None
                assert await node.pin_channel(x, "other") is None
            await other.leave()


# --- a node of the older version in the cluster -------------------------------------------------

# The heartbeat of a node of the version before the change (runtime/cluster/membership.py
# at c2968e8): it declares the dead as this version's does, knowing nothing of the files.
_OLD_BEAT = (
    rebirth.LUA
    + """
local quarantine = reborn(KEYS[3], KEYS[4], ARGV[4] == '1', ARGV[5])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local changed = false
local taken = 0
if redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now) > 0 then changed = true end
if ARGV[1] ~= '' then
  local holder = redis.call('GET', KEYS[5])
  if holder and holder ~= ARGV[6] then
    taken = 1
  else
    redis.call('SET', KEYS[5], ARGV[6], 'PX', tonumber(ARGV[2]))
    if redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1]) == 1 then changed = true end
  end
end
local epoch
if changed then
  epoch = redis.call('INCR', KEYS[2])
  redis.call('PUBLISH', ARGV[3], epoch)
else
  epoch = tonumber(redis.call('GET', KEYS[2]) or '0')
end
return {epoch, now, redis.call('ZRANGE', KEYS[1], 0, -1), quarantine, taken}
"""
)


async def test_a_member_an_older_node_declares_dead_leaves_no_files_entry_behind(
    prefix: str,
) -> None:
    """A rolling upgrade: node old (the version before the change) and node a
    (this one) run; member brief, of this version, dies, and old's heartbeat
    is the one that declares it dead (any member's may be). brief's entry in
    ``<prefix>:files`` must go as a dead member's does. Today it stays for
    good: old's script removes brief from the members without knowing the
    hash, and a's heartbeats only remove the fields of the members they
    themselves find dead, so the hash (no expiry) keeps one field per node
    id that ever died so during the upgrade (a pod named anew at each start
    adds one each time). Fix: in the heartbeat script, when ``HLEN`` of the
    hash exceeds ``ZCARD`` of the members (both O(1)), remove the fields of
    the names that are not members (``HKEYS`` then ``ZSCORE`` each)."""
    with trio.fail_after(REAL_CEILING):
        async with redis() as link:
            old_beat = link.script(_OLD_BEAT)
            keys = [
                f"{prefix}:members",
                f"{prefix}:epoch",
                *rebirth.keys(prefix),
                f"{prefix}:instance:old",
            ]

            async def old() -> list[str]:
                _, _, members, _, _ = await old_beat(
                    keys, ["old", 5000, f"{prefix}:events", 0, 0, "old-token"]
                )
                return [m.decode() if isinstance(m, bytes) else str(m) for m in members]

            a = _member(link, prefix, "a", ["s"])
            brief = _member(link, prefix, "brief", ["x"], timeout=0.05)
            await old()
            await a.beat()
            assert "brief" in (await brief.beat()).files
            while "brief" in await old():  # old declares it dead, on Redis's clock
                pass
            assert "brief" not in (await a.beat()).members
            await a.beat()
            assert await link.call("HGET", a.files_hash, "brief") is None
