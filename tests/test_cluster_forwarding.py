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

import httpx
import pytest
import trio

from bench.cluster_rig import API_TOKEN, ClusterRig, RigParams, open_cluster_rig

CEILING = 240.0  # real seconds for a whole test; only a hang gets near it
CHANNELS = 6


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[ClusterRig]:
    params = RigParams(
        nodes=2, websocket=CHANNELS, telegram=0, discord=0, ops=True, workdir=tmp_path
    )
    with trio.fail_after(CEILING):
        async with open_cluster_rig(params) as opened:
            yield opened


def api(rig: ClusterRig) -> httpx.AsyncClient:
    return httpx.AsyncClient(headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=60.0)


async def post(client: httpx.AsyncClient, url: str, channel: str, body: dict[str, Any]) -> Any:
    return await client.post(f"{url}/v1/channels/{channel}/messages", json=body)


async def test_a_send_on_any_node_returns_the_owner_s_result_once(rig: ClusterRig) -> None:
    channels = [f"ws-{i:04d}" for i in range(CHANNELS)]
    with trio.fail_after(CEILING):
        async with api(rig) as client:
            listing = (await client.get(rig.ops_urls["n1"] + "/v1/channels")).json()["channels"]
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
            sent = {(m["id"], m["message_id"]) for m in rig.websocket.sent}
            assert sent == {(f"{c}-{n}", mid) for (c, n), mid in results.items()}
            # The same key again, through the other node: the owner answers from memory.
            for channel in channels:
                body = {"peer": "p1", "text": "via n2", "idempotency_key": f"{channel}-n1"}
                again = await post(client, rig.ops_urls["n2"], channel, body)
                assert again.status_code == 200
                assert again.json()["platform_message_id"] == results[(channel, "n1")]
            assert len(rig.websocket.sent) == len(results)
            assert rig.websocket.stats["duplicates"] == 0  # not even offered twice


async def test_an_error_on_the_owner_comes_back_as_the_same_error(rig: ClusterRig) -> None:
    with trio.fail_after(CEILING):
        async with api(rig) as client:
            listing = (await client.get(rig.ops_urls["n1"] + "/v1/channels")).json()["channels"]
            remote = next(item["channel"] for item in listing if item["node"] == "n2")
            url = rig.ops_urls["n1"]  # not the owner
            long = {"peer": "p1", "text": "x" * 100_000, "idempotency_key": "too-long"}
            refused = await post(client, url, remote, long)
            assert refused.status_code == 422
            assert refused.json()["error"] == "MessageTooLong"
            rig.websocket.unknown_peers.add("nobody")
            bad = {"peer": "nobody", "text": "hi", "idempotency_key": "bad-peer"}
            answer = await post(client, url, remote, bad)
            assert answer.json()["error"] == "BadRecipient", answer.text
            unknown = await post(client, url, "no-such-channel", bad)
            assert unknown.status_code == 404
            assert unknown.json()["error"] == "UnknownChannel"
            # The dead letter (the bad recipient; a text too long is refused before it
            # is sent) lives on the owner; replay and discard go there.
            letters = await client.get(f"{url}/v1/dead-letters", params={"channel": remote})
            assert letters.status_code == 200, letters.text
            assert [item["peer"] for item in letters.json()["dead_letters"]] == ["nobody"]
            replayed = await client.post(f"{url}/v1/channels/{remote}/dead-letters/replay")
            assert replayed.status_code == 200, replayed.text
            assert replayed.json()["replayed"] == 1  # and it fails again: a dead letter anew
            discarded = await client.post(f"{url}/v1/channels/{remote}/dead-letters/discard")
            assert discarded.status_code == 200, discarded.text
            assert discarded.json()["discarded"] == 1
