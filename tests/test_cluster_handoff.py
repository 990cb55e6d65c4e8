"""Planned moves: a node drains under load and its channels move without loss or repeat.

Real `switchboard run` nodes (the rig of ``bench.cluster_rig``): sends are
offered through every node's message API the whole time, one node is
drained (SIGTERM), and the emulator must have received every message
exactly once: none lost, none offered twice. The drained node's channels
resume on the other node from its final checkpoints.
"""

from __future__ import annotations

import random
import signal
from pathlib import Path

import httpx
import trio

from bench.cluster_rig import API_TOKEN, RigParams, open_cluster_rig

CEILING = 300.0  # real seconds for the whole test; only a hang gets near it
CHANNELS = 20


async def test_a_drain_hands_every_channel_off_under_load_losing_and_repeating_nothing(
    tmp_path: Path,
) -> None:
    params = RigParams(
        nodes=2, websocket=CHANNELS, telegram=0, discord=0, ops=True, workdir=tmp_path
    )
    rng = random.Random(7)
    accepted: dict[str, str] = {}
    stop_sending = trio.Event()
    with trio.fail_after(CEILING):
        async with (
            open_cluster_rig(params) as rig,
            httpx.AsyncClient(
                headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=60.0
            ) as client,
        ):

            async def send(key: str) -> None:
                channel = f"ws-{rng.randrange(CHANNELS):04d}"
                body = {"peer": "p1", "text": key, "idempotency_key": key}
                while True:  # as a client would: another node when one is gone
                    node = rng.choice(sorted(rig.processes))
                    url = f"{rig.ops_urls[node]}/v1/channels/{channel}/messages"
                    try:
                        answer = await client.post(url, json=body)
                    except httpx.TransportError:
                        await trio.sleep(0.05)
                        continue
                    if answer.status_code == 503:  # draining or unavailable: retry
                        await trio.sleep(0.05)
                        continue
                    assert answer.status_code == 200, answer.text
                    accepted[key] = answer.json()["platform_message_id"]
                    return

            async def sender(name: str) -> None:
                n = 0
                while not stop_sending.is_set():
                    await send(f"{name}-{n}")
                    n += 1

            async with trio.open_nursery() as nursery:
                for name in ("a", "b", "c", "d"):
                    nursery.start_soon(sender, name)
                await trio.sleep(2.0)
                await rig.kill_node("n2", signal.SIGTERM)  # a drain: a planned move
                await rig.wait_connected(60.0)
                await trio.sleep(2.0)
                stop_sending.set()
            sent = rig.websocket.sent
            assert len(accepted) > 50
            assert {m["id"] for m in sent} == set(accepted)  # none lost
            assert len(sent) == len(accepted)
            assert rig.websocket.stats["duplicates"] == 0  # none offered twice
            assert {m["id"]: m["message_id"] for m in sent} == accepted
            owners = rig.websocket.holders.statistics()["identities"]
            assert all(entry["live"] == 1 for entry in owners.values())
            assert rig.overlaps() == 0
