"""Operations through the node: the embedding API and the ops HTTP message API.

A real node with in-process emulators (websocket and Telegram) over real
sockets: edits, deletes, typing, read marks, reactions and uploads reach the
platform through ``Node.edit`` / ``delete`` / ``typing`` / ``mark_read`` /
``react`` and ``POST /v1/channels/{channel}/operations`` (and multipart
``/messages``); a platform without the operation answers ``Unsupported``
(the node's and the provider's class, 422 over HTTP), a message that is gone
``MessageNotFound``.
"""

from __future__ import annotations

import json
from typing import Any, Final

import httpx
import pytest
import trio

import providers.base as platform
import runtime
from actors import ChannelStatus
from providers.base import OutboundMessage
from providers.operations import DeleteMessage, EditMessage, MarkRead, React, SendTyping
from runtime import open_node, parse_config

from .support import control

CEILING: Final = 30.0  # seconds of real time; only a hang gets near it
API_TOKEN: Final = "ops-test-token"
HEADERS: Final = {"Authorization": f"Bearer {API_TOKEN}"}


def node_config() -> Any:
    return parse_config(
        {
            "node": {"id": "ops-node", "drain_deadline": 2.0, "start_timeout": 10.0},
            "ops": {"port": 0, "api_token": "${env:SB_TEST_OPS_TOKEN}"},
            "emulators": {"websocket": {"port": 0}, "telegram": {"port": 0}},
            "channels": [
                {"id": "ws-1", "tenant": "t", "provider": "websocket", "emulator": True},
                {"id": "tg-1", "tenant": "t", "provider": "telegram", "emulator": True},
            ],
        }
    )


async def wait_connected(node: runtime.Node) -> None:
    """Until every channel is connected (the node's state, polled: no fixed sleep)."""
    while any(s.status is not ChannelStatus.CONNECTED for s in node.channels()):  # noqa: ASYNC110
        await trio.sleep(0.02)


async def test_operations_through_the_node_api(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SB_TEST_OPS_TOKEN", API_TOKEN)
    with trio.fail_after(CEILING):
        async with open_node(node_config()) as node:
            await wait_connected(node)
            ws = node.emulator_urls["websocket"]
            with node.subscribe(channel="ws-1", kind="inbound") as events:
                await control(ws, "inject", {"peer": "chat-1", "text": "hello"})
                inbound = (await events.__anext__()).event
            sent = await node.send(
                "ws-1", OutboundMessage(peer="chat-1", idempotency_key="s1", text="v1")
            )
            mid = sent.platform_message_id
            edited = await node.edit("ws-1", EditMessage(peer="chat-1", message_id=mid, text="v2"))
            assert edited.platform_message_id == mid
            await node.typing("ws-1", SendTyping(peer="chat-1"))
            await node.mark_read(
                "ws-1", MarkRead(peer="chat-1", message_id=inbound.platform_message_id)
            )
            await node.react("ws-1", React(peer="chat-1", message_id=mid, emoji="🎉"))
            await node.delete("ws-1", DeleteMessage(peer="chat-1", message_id=mid))
            ops = await control(ws, "operations")
            assert [o["type"] for o in ops] == ["edit", "typing", "read", "react", "delete"]

            with pytest.raises(runtime.MessageNotFound) as gone:
                await node.delete(
                    "ws-1", DeleteMessage(peer="chat-1", message_id=mid, idempotency_key="d2")
                )
            assert isinstance(gone.value, platform.MessageNotFound)  # the layer's class too
            assert (gone.value.channel_id, gone.value.idempotency_key) == ("ws-1", "d2")
            [letter] = await node.channel("ws-1").dead_letters()
            assert letter.error_type == "MessageNotFound"

            with pytest.raises(runtime.Unsupported) as refused:
                await node.mark_read("tg-1", MarkRead(peer="42", message_id="42:1"))
            assert isinstance(refused.value, platform.Unsupported)
            assert (refused.value.operation, refused.value.provider) == ("mark_read", "telegram")
            assert await node.channel("tg-1").dead_letters() == []  # refused, not dead


async def test_operations_and_uploads_through_the_ops_api(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SB_TEST_OPS_TOKEN", API_TOKEN)
    with trio.fail_after(CEILING):
        async with open_node(node_config()) as node:
            await wait_connected(node)
            assert node.ops_url is not None
            ws = node.emulator_urls["websocket"]
            async with httpx.AsyncClient(base_url=node.ops_url, headers=HEADERS) as http:
                sent = await http.post(
                    "/v1/channels/ws-1/messages",
                    json={"peer": "c", "idempotency_key": "1", "text": "a"},
                )
                mid = sent.json()["platform_message_id"]
                edit = await http.post(
                    "/v1/channels/ws-1/operations",
                    json={"op": "edit", "peer": "c", "message_id": mid, "text": "b"},
                )
                assert (edit.status_code, edit.json()) == (
                    200,
                    {"op": "edit", "peer": "c", "platform_message_id": mid},
                )
                typing = await http.post(
                    "/v1/channels/ws-1/operations",
                    json={"op": "typing", "peer": "c", "action": "upload_photo"},
                )
                assert typing.json() == {"op": "typing", "peer": "c"}
                delete = {"op": "delete", "peer": "c", "message_id": mid}
                assert (await http.post("/v1/channels/ws-1/operations", json=delete)).is_success
                again = await http.post("/v1/channels/ws-1/operations", json=delete)
                assert (again.status_code, again.json()["error"]) == (422, "MessageNotFound")
                unsupported = await http.post(
                    "/v1/channels/tg-1/operations",
                    json={"op": "mark_read", "peer": "42", "message_id": "42:1"},
                )
                assert (unsupported.status_code, unsupported.json()["error"]) == (
                    422,
                    "Unsupported",
                )
                bad = await http.post(
                    "/v1/channels/ws-1/operations", json={"op": "edit", "peer": "c", "text": 5}
                )
                assert bad.status_code == 400
                assert {p["path"] for p in bad.json()["problems"]} == {"$.message_id", "$.text"}
                unknown = await http.post("/v1/channels/ws-1/operations", json={"op": "pin"})
                assert unknown.status_code == 400 and "$.op" in unknown.text

                message = {"peer": "c", "idempotency_key": "up-1", "media": {"kind": "image"}}
                upload = await http.post(
                    "/v1/channels/ws-1/messages",
                    data={"message": json.dumps(message)},
                    files={"file": ("cat.png", b"\x89PNG0123456789", "image/png")},
                )
                assert upload.status_code == 200, upload.text
                inline = {
                    "peer": "c",
                    "idempotency_key": "up-2",
                    "media": {"kind": "document", "content": "aGVsbG8=", "filename": "h.txt"},
                }
                assert (await http.post("/v1/channels/ws-1/messages", json=inline)).is_success
                local = {
                    "peer": "c",
                    "idempotency_key": "up-3",
                    "media": {"kind": "document", "path": "/etc/passwd"},
                }
                refused = await http.post("/v1/channels/ws-1/messages", json=local)
                assert refused.status_code == 400
                assert [p["path"] for p in refused.json()["problems"]] == ["$.media.path"]
            uploads = [s for s in await control(ws, "sent") if "uploaded_bytes" in s]
            assert [(s["uploaded_bytes"], s["media"].get("filename")) for s in uploads] == [
                (14, "cat.png"),
                (5, "h.txt"),
            ]
            assert uploads[0]["media"]["mime_type"] == "image/png"
