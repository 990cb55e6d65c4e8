"""Webhooks that land on a node that does not run their channel reach its owner, once.

Two real `switchboard run` nodes share one Redis and one PostgreSQL schema
(``bench.cluster_rig``). WhatsApp sends every number's notifications to one
URL, here node n1's, so the numbers that n2 runs are checked on n1 and
carried to n2; Telegram webhooks are posted to the node that does not run
the bot. What the owner's channels took is read from the shared store and
from the nodes' metrics: every event once, none lost, none twice.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from bench.cluster_rig import (
    API_TOKEN,
    WA_NUMBER_BASE,
    WA_VERIFY_TOKEN,
    WEBHOOK_SECRET,
    ClusterRig,
    RigParams,
    open_cluster_rig,
    stored_inbound,
)
from providers.telegram import SECRET_HEADER
from providers.whatsapp.webhook import SIGNATURE_HEADER, sign
from runtime.cluster.placement import HashRing

CEILING = 240.0  # real seconds for a whole test; only a hang gets near it
NUMBERS = 4
BOTS = 2


async def held(rig: ClusterRig, prefix: str, count: int) -> dict[str, str]:
    """The holders of the ``prefix`` channels once each is held where the ring of the
    nodes puts it (a joiner gets its share a little after it joined) and connected there."""
    ring = HashRing(list(rig.processes))
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    async with httpx.AsyncClient(headers=headers, timeout=30.0) as client:
        while True:
            holders = {c: n for c, n in (await rig.holders()).items() if c.startswith(prefix)}
            connected = set()
            for node_id in set(holders.values()):
                listing = (await client.get(rig.ops_urls[node_id] + "/v1/channels")).json()
                connected |= {
                    (item["channel"], node_id)
                    for item in listing["channels"]
                    if item["status"] == "connected"
                }
            placed = all(node == ring.owner(channel) for channel, node in holders.items())
            if len(holders) == count and placed and set(holders.items()) <= connected:
                return holders
            await trio.sleep(0.2)


async def metric(rig: ClusterRig, name: str, provider: str) -> float:
    """``name`` summed over the live nodes' /metrics for ``provider``."""
    total = 0.0
    async with httpx.AsyncClient(timeout=30.0) as client:
        for node_id in rig.processes:
            text = (await client.get(rig.ops_urls[node_id] + "/metrics")).text
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name == name and sample.labels.get("provider") == provider:
                        total += sample.value
    return total


async def counted(rig: ClusterRig, provider: str, at_least: int) -> float:
    """The nodes' count of inbound events taken, once it reaches ``at_least``."""
    while True:
        received = await metric(rig, "switchboard_messages_received_total", provider)
        if received >= at_least:
            await trio.sleep(1.0)  # one more look: a duplicate would be counted by now
            return await metric(rig, "switchboard_messages_received_total", provider)
        await trio.sleep(0.2)


async def stored_for(rig: ClusterRig, prefix: str) -> set[tuple[str, str]]:
    stored = await stored_inbound(rig.params.pg_dsn, rig.schema)
    return {row for row in stored if row[0].startswith(prefix)}


async def test_whatsapp_notifications_to_one_node_reach_every_number_s_owner_once(
    tmp_path: Path,
) -> None:
    params = RigParams(
        nodes=2,
        websocket=0,
        telegram=0,
        discord=0,
        whatsapp=NUMBERS,
        whatsapp_redeliver=True,  # as Meta does: a non-2xx answer is delivered again
        cooldown=0.0,
        ops=True,
        workdir=tmp_path,
    )
    with trio.fail_after(CEILING):
        async with open_cluster_rig(params) as rig:
            holders = await held(rig, "wa-", NUMBERS)
            assert "n2" in holders.values()  # placement is fixed by the names: n2 runs some
            await rig.whatsapp.webhook(url=rig.ops_urls["n1"] + "/webhooks/whatsapp")
            expected: set[tuple[str, str]] = set()
            for round_ in range(3):
                for i in range(NUMBERS):
                    made = await rig.whatsapp.inject(
                        **{
                            "from": f"49151000000{i:02d}",
                            "text": f"hello {round_}",
                            "phone_number_id": str(WA_NUMBER_BASE + i),
                        }
                    )
                    # 200 only from the owner's link: n2's numbers went through Redis.
                    assert made["webhook_status"] == 200, (i, holders[f"wa-{i:04d}"], made)
                    expected.add((f"wa-{i:04d}", made["message_id"]))
            while await stored_for(rig, "wa-") != expected:  # noqa: ASYNC110 - PostgreSQL
                await trio.sleep(0.2)
            # Stored first, then published and counted: wait for the count to catch up.
            received = await counted(rig, "whatsapp", len(expected))
            assert received == len(expected)
            assert await metric(rig, "switchboard_inbound_duplicates_total", "whatsapp") == 0

            async with httpx.AsyncClient(timeout=30.0) as client:
                n2_number = next(
                    WA_NUMBER_BASE + int(c[3:]) for c, n in holders.items() if n == "n2"
                )
                body = json.dumps(
                    {
                        "object": "whatsapp_business_account",
                        "entry": [
                            {
                                "id": "1",
                                "changes": [
                                    {
                                        "field": "messages",
                                        "value": {
                                            "messaging_product": "whatsapp",
                                            "metadata": {
                                                "display_phone_number": "1555",
                                                "phone_number_id": str(n2_number),
                                            },
                                        },
                                    }
                                ],
                            }
                        ],
                    }
                ).encode()
                # A forged notification for n2's number is refused on n1: it never travels.
                forged = await client.post(
                    rig.ops_urls["n1"] + "/webhooks/whatsapp",
                    content=body,
                    headers={SIGNATURE_HEADER: sign("not-the-app-secret", body)},
                )
                assert forged.status_code == 403
                # Meta's verification GET is answered by a node that runs no number.
                n2_only = next(c for c, n in holders.items() if n == "n2")
                verified = await client.get(
                    rig.ops_urls["n1"] + f"/webhooks/whatsapp/{n2_only}",
                    params={
                        "hub.mode": "subscribe",
                        "hub.verify_token": WA_VERIFY_TOKEN,
                        "hub.challenge": "1234",
                    },
                )
                assert (verified.status_code, verified.text) == (200, "1234")

            # The owner of some numbers dies: their notifications, still sent to n1,
            # are taken once n1 holds the numbers (the platform delivers again meanwhile).
            await rig.kill_node("n2", signal.SIGKILL)
            late: set[tuple[str, str]] = set()
            for i in range(NUMBERS):
                made = await rig.whatsapp.inject(
                    **{
                        "from": f"49151000000{i:02d}",
                        "text": "after the kill",
                        "phone_number_id": str(WA_NUMBER_BASE + i),
                    }
                )
                late.add((f"wa-{i:04d}", made["message_id"]))
            while not (expected | late) <= await stored_for(rig, "wa-"):  # noqa: ASYNC110
                await trio.sleep(0.2)
            assert await stored_for(rig, "wa-") == expected | late


def telegram_update(update_id: int, text: str) -> bytes:
    message = {
        "message_id": update_id,
        "date": 1_700_000_000,
        "chat": {"id": 4242, "type": "private"},
        "from": {"id": 4242, "is_bot": False, "first_name": "User"},
        "text": text,
    }
    return json.dumps({"update_id": update_id, "message": message}).encode()


async def test_a_telegram_webhook_on_the_other_node_reaches_the_bot_s_owner_once(
    tmp_path: Path,
) -> None:
    params = RigParams(
        nodes=2,
        websocket=0,
        telegram=BOTS,
        discord=0,
        telegram_webhooks=True,
        cooldown=0.0,
        ops=True,
        workdir=tmp_path,
    )
    with trio.fail_after(CEILING):
        async with open_cluster_rig(params) as rig:
            holders = await held(rig, "tg-", BOTS)
            async with httpx.AsyncClient(timeout=30.0) as client:
                answers: list[Any] = []
                for bot, owner in sorted(holders.items()):
                    other = "n1" if owner == "n2" else "n2"
                    url = rig.ops_urls[other] + f"/webhooks/telegram/{bot}"
                    while True:  # a 404 seen once in a full-suite run (see the closing note)
                        forged = await client.post(
                            url, content=telegram_update(1, "x"), headers={SECRET_HEADER: "wrong"}
                        )
                        if forged.status_code != 404:
                            break
                        await trio.sleep(0.2)
                    assert forged.status_code == 403, forged.text
                    for update_id in (101, 102, 103):
                        # 503 until the owner's webhook is set, or the connection closed
                        # with no answer (a kept-alive one the node closed as it was
                        # reused, seen once in a full-suite run on a starved machine):
                        # deliver again, as Telegram does.
                        while True:
                            try:
                                answer = await client.post(
                                    url,
                                    content=telegram_update(update_id, f"to {bot}"),
                                    headers={SECRET_HEADER: WEBHOOK_SECRET},
                                )
                            except httpx.RemoteProtocolError:
                                continue  # a new connection, at once
                            if answer.status_code != 503:
                                break
                            await trio.sleep(0.2)
                        answers.append((bot, update_id, answer.status_code))
            assert {status for _, _, status in answers} == {200}, answers
            while len(await stored_for(rig, "tg-")) < BOTS * 3:  # noqa: ASYNC110 - PostgreSQL
                await trio.sleep(0.2)
            assert len(await stored_for(rig, "tg-")) == BOTS * 3
            assert await counted(rig, "telegram", BOTS * 3) == BOTS * 3
