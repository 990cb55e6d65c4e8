"""Calls for a channel owned by another node reach its owner: real `switchboard run` nodes.

Two nodes share one Redis, one PostgreSQL schema and one websocket emulator
(the rig of ``bench.cluster_rig``, small). Every node's message API is
used for every channel: half of the calls are forwarded through Redis
Streams, and the answers must be the owner's, errors included.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from bench.cluster_rig import API_TOKEN, ClusterRig, RigParams, open_cluster_rig
from runtime.cluster.leases import Leases
from runtime.cluster.placement import HashRing
from runtime.cluster.redis import open_redis
from runtime.cluster.survey import survey
from runtime.config.model import ClusterConfig

CEILING = 240.0  # real seconds for a whole test; only a hang gets near it
CHANNELS = 6
LATE = 10.0  # seconds the platform holds its answers in the bounds test ...
LATE_SEND_TIMEOUT = 60.0  # ... within the channels' wait for an ack (10 s by default)


def two_nodes(workdir: Path, **more: Any) -> RigParams:
    """Two nodes with message APIs and CHANNELS websocket channels (``more``: other params)."""
    return RigParams(
        nodes=2, websocket=CHANNELS, telegram=0, discord=0, ops=True, workdir=workdir, **more
    )


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[ClusterRig]:
    with trio.fail_after(CEILING):
        async with open_cluster_rig(two_nodes(tmp_path)) as opened:
            yield opened


def api(rig: ClusterRig) -> httpx.AsyncClient:
    return httpx.AsyncClient(headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=60.0)


async def post(client: httpx.AsyncClient, url: str, channel: str, body: dict[str, Any]) -> Any:
    return await client.post(f"{url}/v1/channels/{channel}/messages", json=body)


async def settled_listing(client: httpx.AsyncClient, rig: ClusterRig) -> list[dict[str, Any]]:
    """n1's channel list once each node runs the channels the ring gives it.

    Not merely once both run some: the rebalance moves n2's share over
    one by one, paced, so a list with n1's channels connected and one of
    n2's remote can come first.
    """
    ring = HashRing(["n1", "n2"], vnodes=attrs.fields(ClusterConfig).vnodes.default)
    while True:
        try:
            answer = await client.get(rig.ops_urls["n1"] + "/v1/channels")
        except httpx.TransportError:
            # The rig waits for the channels to connect, not for every node's
            # listener: n2 may have taken them all while n1 still starts.
            await trio.sleep(0.2)
            continue
        listing: list[dict[str, Any]] = answer.json()["channels"]
        # n1 runs its own (connected) and sees n2's as remote: a channel n1 holds
        # but has not started yet shows as remote too, so wait for it to run.
        listed = {item["channel"] for item in listing}
        if listed == {f"ws-{i:04d}" for i in range(CHANNELS)} and all(
            item.get("node") == ring.owner(item["channel"])
            and item["status"] == ("connected" if item.get("node") == "n1" else "remote")
            for item in listing
        ):
            return listing
        await trio.sleep(0.2)


async def test_a_send_on_any_node_returns_the_owner_s_result_once(rig: ClusterRig) -> None:
    channels = [f"ws-{i:04d}" for i in range(CHANNELS)]
    with trio.fail_after(CEILING):
        async with api(rig) as client:
            listing = await settled_listing(client, rig)
            owners = {item["channel"]: item["node"] for item in listing}
            assert set(owners.values()) == {"n1", "n2"}  # both own some: both forward some
            assert {item["status"] for item in listing} == {"connected", "remote"}
            results: dict[tuple[str, str], str] = {}
            for channel in channels:
                for node, url in rig.ops_urls.items():
                    body = {
                        "peer": "p1",
                        "text": f"via {node}",
                        "idempotency_key": f"{channel}-{node}",
                    }
                    answer = await post(client, url, channel, body)
                    assert answer.status_code == 200, answer.text
                    results[(channel, node)] = answer.json()["platform_message_id"]
            sent = {(m["id"], m["message_id"]) for m in await rig.websocket.sent()}
            assert sent == {(f"{c}-{n}", mid) for (c, n), mid in results.items()}
            # The same message again, through the other node: the owner answers from memory.
            for channel in channels:
                body = {"peer": "p1", "text": "via n1", "idempotency_key": f"{channel}-n1"}
                again = await post(client, rig.ops_urls["n2"], channel, body)
                assert again.status_code == 200
                assert again.json()["platform_message_id"] == results[(channel, "n1")]
                # Its key with another text is refused, through either node, and not sent.
                for node in ("n1", "n2"):
                    other = {**body, "text": "another message"}
                    refused = await post(client, rig.ops_urls[node], channel, other)
                    assert refused.status_code == 422, refused.text
                    assert refused.json()["error"] == "KeyReused", refused.text
            assert len(await rig.websocket.sent()) == len(results)
            stats = await rig.websocket.stats()
            assert stats.get("duplicates", 0) == 0  # not even offered twice


async def dead_letters(client: httpx.AsyncClient, url: str, channel: str) -> list[Any]:
    letters = await client.get(f"{url}/v1/dead-letters", params={"channel": channel})
    assert letters.status_code == 200, letters.text
    return list(letters.json()["dead_letters"])


async def test_an_error_on_the_owner_comes_back_as_the_same_error(rig: ClusterRig) -> None:
    with trio.fail_after(CEILING):
        async with api(rig) as client:
            listing = await settled_listing(client, rig)
            remote = next(item["channel"] for item in listing if item["node"] == "n2")
            url = rig.ops_urls["n1"]  # not the owner
            long = {"peer": "p1", "text": "x" * 100_000, "idempotency_key": "too-long"}
            refused = await post(client, url, remote, long)
            assert refused.status_code == 422
            assert refused.json()["error"] == "MessageTooLong"
            await rig.websocket.fault(kind="unknown_peer", peer="nobody")
            bad = {"peer": "nobody", "text": "hi", "idempotency_key": "bad-peer"}
            answer = await post(client, url, remote, bad)
            assert answer.json()["error"] == "BadRecipient", answer.text
            unknown = await post(client, url, "no-such-channel", bad)
            assert unknown.status_code == 404
            assert unknown.json()["error"] == "UnknownChannel"
            # The dead letter (the bad recipient; a text too long is refused before it
            # is sent) lives on the owner; replay and discard go there.
            assert [item["peer"] for item in await dead_letters(client, url, remote)] == ["nobody"]
            replayed = await client.post(f"{url}/v1/channels/{remote}/dead-letters/replay")
            assert replayed.status_code == 200, replayed.text
            assert replayed.json()["replayed"] == 1  # and it fails again: a dead letter anew
            # That failure comes after the replay's answer (the platform refuses the
            # send later): the discard must find the letter back first.
            while len(await dead_letters(client, url, remote)) != 1:
                pass  # each look is a request to the node: no busy loop without a checkpoint
            discarded = await client.post(f"{url}/v1/channels/{remote}/dead-letters/discard")
            assert discarded.status_code == 200, discarded.text
            assert discarded.json()["discarded"] == 1


async def test_the_operator_view_shows_members_placement_leases_and_moves(
    rig: ClusterRig,
) -> None:
    url = f"redis://127.0.0.1:{rig.redis_port}/0"
    ring = HashRing(["n1", "n2"])
    placement = {f"ws-{i:04d}": ring.owner(f"ws-{i:04d}") for i in range(CHANNELS)}
    with trio.fail_after(CEILING):
        async with open_redis(url, timeout=2.0) as link:
            leases = Leases(link, prefix="rig", node_id="viewer", ttl=4.0)

            async def look() -> Any:
                return await survey(
                    link,
                    leases=leases,
                    members_key="rig:members",
                    member_timeout=rig.params.member_timeout,
                    reborn_key="rig:reborn",
                    placement=placement,
                )

            # n1 started first and took every channel; the pacing hands n2 its
            # share once the channels have cooled: until then they are "moving".
            members, found, quarantine = await look()
            while [lease for lease in found if lease.moving]:
                await trio.sleep(0.2)
                members, found, quarantine = await look()
    assert [m.node for m in members] == ["n1", "n2"]
    assert all(0 <= m.heartbeat_age < rig.params.member_timeout for m in members)
    assert {m.node: m.held for m in members} == {m.node: m.placed for m in members}
    assert sum(m.held for m in members) == CHANNELS
    assert {lease.channel_id: lease.holder for lease in found} == placement
    assert all(lease.token is not None and lease.token >= 1 for lease in found)
    assert all(0 < (lease.expires_in or 0) <= 4.0 for lease in found)
    assert quarantine == 0


async def metric(client: httpx.AsyncClient, url: str, name: str, **labels: str) -> float:
    """A node's sample ``name`` with ``labels``, read off its ``/metrics`` (0 if absent)."""
    answer = await client.get(f"{url}/metrics")
    assert answer.status_code == 200, answer.text
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


async def sends_held(client: httpx.AsyncClient, url: str) -> float:
    return await metric(client, url, "switchboard_node_sends_in_flight")


async def until_held(client: httpx.AsyncClient, url: str, count: int) -> None:
    """Until the node at ``url`` holds ``count`` sends: each look waits for its answer."""
    while await sends_held(client, url) < count:
        pass


async def test_a_node_counts_the_sends_it_forwards_toward_its_bounds(tmp_path: Path) -> None:
    # Each node holds at most 3 sends, 2 of a channel. What n1 forwards to n2 (whose
    # platform answers LATE seconds later: room for the checks on a loaded machine) is
    # held on both nodes: n1 refuses past its own bounds, for the remote channel and
    # for the node, and the owner never sees what it refused.
    params = two_nodes(
        tmp_path,
        max_sends_in_flight=3,
        max_channel_sends=2,
        websocket_send_timeout=LATE_SEND_TIMEOUT,
    )
    results: dict[str, httpx.Response] = {}
    with trio.fail_after(CEILING):
        async with open_cluster_rig(params) as rig, api(rig) as client:
            listing = await settled_listing(client, rig)
            theirs = [item["channel"] for item in listing if item["node"] == "n2"]
            mine = next(item["channel"] for item in listing if item["node"] == "n1")
            assert len(theirs) >= 2
            n1, n2 = rig.ops_urls["n1"], rig.ops_urls["n2"]

            async def send(channel: str, key: str) -> None:
                body = {"peer": f"p-{key}", "text": "hi", "idempotency_key": key}
                results[key] = await post(client, n1, channel, body)

            async def refused(channel: str, key: str, says: str) -> None:
                body = {"peer": f"p-{key}", "text": "hi", "idempotency_key": key}
                answer = await post(client, n1, channel, body)
                assert answer.status_code == 503, answer.text
                assert answer.json()["error"] == "Overloaded"
                assert says in answer.json()["message"]
                assert answer.headers["Retry-After"] == "1"

            await rig.websocket.fault(kind="latency", seconds=LATE)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send, theirs[0], "held-1")
                nursery.start_soon(send, theirs[0], "held-2")
                await until_held(client, n2, 2)  # both reached n2
                assert await sends_held(client, n1) == 2
                forwarding = f"node 'n1' already forwards 2 sends of channel {theirs[0]!r}"
                await refused(theirs[0], "over-channel", forwarding)
                refusals = "switchboard_node_sends_refused_total"
                assert await metric(client, n1, refusals, scope="channel") == 1
                assert await metric(client, n2, refusals, scope="channel") == 0
                nursery.start_soon(send, mine, "held-3")
                await until_held(client, n1, 3)  # and n1's own send
                await refused(theirs[1], "over-node", "node 'n1' already holds 3 sends")
                assert await metric(client, n1, refusals, scope="node") == 1
                assert await sends_held(client, n2) == 2  # the refused never left n1
            await rig.websocket.fault(kind="latency", seconds=0.0)
            assert {key: answer.status_code for key, answer in results.items()} == {
                "held-1": 200,
                "held-2": 200,
                "held-3": 200,
            }
            assert await sends_held(client, n1) == 0
            await send(theirs[0], "after")
            assert results["after"].status_code == 200, results["after"].text
