"""The node's webhook targets: kept between requests, found by channel or number, live links.

At 1,000 WhatsApp numbers the ops server built every channel's target for
each webhook (three status webhooks a message); the node now keeps them,
indexed, until its channel table changes, and each target reads its
channel's link when asked, so a kept target never hands a webhook to a
link that has gone.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from actors import ChannelFailed, ChannelStatus
from providers.base import AuthenticationFailed, OutboundMessage
from providers.emulators.base import open_emulator
from providers.emulators.whatsapp import WhatsAppEmulator
from runtime import open_node, parse_config

NUMBERS = ("1065400001", "1065400002", "1065400003")
SECRET, TOKEN = "index-app-secret", "EAAG-index"


def _config(base: str) -> Any:
    return parse_config(
        {
            "node": {"id": "hooks", "drain_deadline": 2.0, "start_timeout": 10.0},
            "ops": {"port": 0},
            "channels": [
                {
                    "id": f"wa-{i}",
                    "provider": "whatsapp",
                    "base_url": base,
                    "credentials": {
                        "token": "${env:SB_INDEX_WA_TOKEN}",
                        "app_secret": "${env:SB_INDEX_WA_SECRET}",
                        "verify_token": "${env:SB_INDEX_WA_TOKEN}",
                    },
                    "options": {"phone_number_id": number},
                }
                for i, number in enumerate(NUMBERS)
            ],
        }
    )


async def test_targets_are_kept_indexed_and_read_their_channel_s_live_link(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SB_INDEX_WA_TOKEN", TOKEN)
    monkeypatch.setenv("SB_INDEX_WA_SECRET", SECRET)
    emulator = WhatsAppEmulator(app_secret=SECRET, tokens={TOKEN}, phone_number_ids=set(NUMBERS))
    with trio.fail_after(60.0):
        async with open_emulator(emulator) as base, open_node(_config(base)) as node:
            with node.subscribe(kind="state") as changes:
                while any(c.status is not ChannelStatus.CONNECTED for c in node.channels()):
                    await changes.receive()
            targets = node.webhook_targets("whatsapp")
            assert [t.channel_id for t in targets] == ["wa-0", "wa-1", "wa-2"]
            assert node.webhook_targets("whatsapp") is targets  # kept: nothing changed
            assert node.webhook_targets_for("whatsapp", {NUMBERS[2], NUMBERS[1]}) == [
                targets[1],
                targets[2],
            ]  # in the targets' order
            assert node.webhook_targets_for("whatsapp", {"999"}) == []
            kept = node.webhook_target("whatsapp", "wa-1")
            assert kept is targets[1]
            assert kept.connection is node.channel("wa-1").connection is not None

            # A webhook for one number reaches that channel through the index.
            assert node.ops_url is not None
            emulator.webhook_url = node.ops_url + "/webhooks/whatsapp"
            with node.subscribe(kind="inbound") as inbound:
                answer = await emulator.inject(
                    {"from": "16505551234", "text": "hi", "phone_number_id": NUMBERS[1]}
                )
                assert answer.get("webhook_status") == 200, answer
                event = await inbound.receive()
            assert event.channel_id == "wa-1"

            # Stopped: the table changed, the index is rebuilt, and the target kept
            # from before reads no link (its channel has none), never a closed one.
            await node.stop_channel("wa-1")
            assert kept.connection is None
            assert node.webhook_target("whatsapp", "wa-1") is None
            assert [t.channel_id for t in node.webhook_targets("whatsapp")] == ["wa-0", "wa-2"]
            assert node.webhook_targets_for("whatsapp", {NUMBERS[1]}) == []


async def test_live_links_are_kept_until_a_link_comes_or_goes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The signers a post is checked against are kept between webhooks, and follow links.

    A channel whose link goes (here: FAILED by a refused token, its row kept,
    so the table does not change) leaves them at once; a webhook for its
    number is then refused with 503, never handed to the gone link; started
    again, it is back, and its webhooks reach it.
    """
    monkeypatch.setenv("SB_INDEX_WA_TOKEN", TOKEN)
    monkeypatch.setenv("SB_INDEX_WA_SECRET", SECRET)
    emulator = WhatsAppEmulator(app_secret=SECRET, tokens={TOKEN}, phone_number_ids=set(NUMBERS))
    with trio.fail_after(60.0):
        async with open_emulator(emulator) as base, open_node(_config(base)) as node:
            with node.subscribe(kind="state") as changes:
                while any(c.status is not ChannelStatus.CONNECTED for c in node.channels()):
                    await changes.receive()
            targets = node.webhook_targets("whatsapp")
            links = node.webhook_links("whatsapp")
            assert [t.channel_id for t in links.live] == ["wa-0", "wa-1", "wa-2"]
            assert (links.judged, len(links.signers), links.remote) == (3, 1, False)
            assert node.webhook_links("whatsapp") is links  # kept: no link came or went
            assert node.ops_url is not None
            emulator.webhook_url = node.ops_url + "/webhooks/whatsapp"

            # wa-1's token is refused: the channel FAILS and its link goes; its row stays.
            await emulator.platform_fault({"kind": "fail_next", "code": 190})
            with node.subscribe(kind="state") as changes:
                with pytest.raises((AuthenticationFailed, ChannelFailed)):
                    await node.send(
                        "wa-1", OutboundMessage(peer="16505551234", idempotency_key="k", text="x")
                    )
                while node.channel("wa-1").statistics().status is not ChannelStatus.FAILED:
                    await changes.receive()
            await trio.testing.wait_all_tasks_blocked()  # the link's task has unwound
            assert node.channel("wa-1").connection is None
            assert node.webhook_targets("whatsapp") is targets  # the table did not change
            after = node.webhook_links("whatsapp")
            assert after is not links
            assert [t.channel_id for t in after.live] == ["wa-0", "wa-2"]
            assert (after.judged, len(after.signers)) == (2, 1)
            answer = await emulator.inject(
                {"from": "16505551234", "text": "hi", "phone_number_id": NUMBERS[1]}
            )
            assert answer.get("webhook_status") == 503, answer

            # Started again: its new link is among the live ones, and takes its webhooks.
            with node.subscribe(kind="state") as changes:
                await node.restart_channel("wa-1")
                while node.channel("wa-1").statistics().status is not ChannelStatus.CONNECTED:
                    await changes.receive()
            again = node.webhook_links("whatsapp")
            assert [t.channel_id for t in again.live] == ["wa-0", "wa-2", "wa-1"]
            with node.subscribe(kind="inbound") as inbound:
                answer = await emulator.inject(
                    {"from": "16505551234", "text": "back", "phone_number_id": NUMBERS[1]}
                )
                assert answer.get("webhook_status") == 200, answer
                event = await inbound.receive()
            assert event.channel_id == "wa-1"
