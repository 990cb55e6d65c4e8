"""Telegram's operations beyond send against the emulator, over real sockets.

editMessageText, deleteMessage, sendChatAction, setMessageReaction and
multipart uploads (bytes and a file), each with its failure classes: a
message that is gone is ``MessageNotFound`` (permanent, never retried), an
unknown chat ``BadRecipient``, a 429 ``RateLimited``, a revoked token
``AuthenticationFailed``; ``mark_read`` is ``Unsupported``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import httpx
import pytest
import trio

from providers.base import (
    AuthenticationFailed,
    BadRecipient,
    ChannelConfig,
    Media,
    MediaKind,
    MediaTooLarge,
    MessageNotFound,
    OutboundMessage,
    PermanentSendError,
    PlatformLimits,
    RateLimited,
    SendResult,
    Unsupported,
)
from providers.emulators import open_emulator
from providers.emulators.telegram import TelegramEmulator
from providers.operations import (
    ChatAction,
    DeleteMessage,
    EditMessage,
    MarkRead,
    OperationKind,
    React,
    SendTyping,
    perform,
)
from providers.telegram import TelegramConnection, TelegramProvider, core

CEILING: Final = 15.0  # seconds of real time; only a hang gets near it
TOKEN: Final = "123456:" + "A" * 35


@contextlib.asynccontextmanager
async def connected(
    emu: TelegramEmulator, provider: TelegramProvider | None = None
) -> AsyncIterator[tuple[TelegramConnection, str]]:
    async with open_emulator(emu) as url:
        config = ChannelConfig(
            channel_id="tg:ops",
            provider="telegram",
            credentials={"token": TOKEN},
            base_url=url,
            options={"poll_timeout": 1},
        )
        async with (provider or TelegramProvider()).open_connection(config) as conn:
            yield conn, url


def text(body: str, peer: str = "42") -> OutboundMessage:
    return OutboundMessage(peer=peer, idempotency_key=body, text=body)


def test_declared_operations_and_requests() -> None:
    assert TelegramProvider.operations == core.OPERATIONS
    assert OperationKind.MARK_READ not in core.OPERATIONS
    edit = core.operation_request(EditMessage(peer="42", message_id="42:7", text="new"))
    assert (edit.method, dict(edit.params)) == (
        "editMessageText",
        {"chat_id": 42, "message_id": 7, "text": "new"},
    )
    other_chat = core.operation_request(DeleteMessage(peer="42", message_id="-100:3"))
    assert dict(other_chat.params) == {"chat_id": -100, "message_id": 3}
    bare = core.operation_request(React(peer="42", message_id="9", emoji="👍", remove=True))
    assert dict(bare.params) == {"chat_id": 42, "message_id": 9, "reaction": []}
    action = core.operation_request(SendTyping(peer="42", action=ChatAction.UPLOAD_PHOTO))
    assert dict(action.params) == {"chat_id": 42, "action": "upload_photo"}
    with pytest.raises(MessageNotFound, match="is not"):
        core.operation_request(DeleteMessage(peer="42", message_id="42:x"))


async def test_edit_delete_typing_react_round_trip() -> None:
    emu = TelegramEmulator(chat_interval=0.0)
    with trio.fail_after(CEILING):
        async with connected(emu) as (conn, _):
            sent = await conn.send(text("first"))
            edited = await conn.edit(
                EditMessage(peer="42", message_id=sent.platform_message_id, text="second")
            )
            assert edited == SendResult(platform_message_id=sent.platform_message_id, peer="42")
            await conn.typing(SendTyping(peer="42"))
            await conn.react(React(peer="42", message_id=sent.platform_message_id, emoji="👍"))
            await conn.react(
                React(peer="42", message_id=sent.platform_message_id, emoji="👍", remove=True)
            )
            await conn.delete(DeleteMessage(peer="42", message_id=sent.platform_message_id))
            assert [(o["method"], o.get("reaction")) for o in emu.operations] == [
                ("editMessageText", None),
                ("sendChatAction", None),
                ("setMessageReaction", ["👍"]),
                ("setMessageReaction", []),
                ("deleteMessage", None),
            ]
            assert emu.operations[0]["text"] == "second"
            # The message is gone: editing or deleting it again is permanent.
            for gone in (
                EditMessage(peer="42", message_id=sent.platform_message_id, text="third"),
                DeleteMessage(peer="42", message_id=sent.platform_message_id),
                React(peer="42", message_id=sent.platform_message_id, emoji="👍"),
            ):
                with pytest.raises(MessageNotFound):
                    await perform(conn, gone)
            with pytest.raises(Unsupported):
                await conn.mark_read(MarkRead(peer="42", message_id=sent.platform_message_id))


async def test_editing_to_the_same_text_is_a_permanent_refusal() -> None:
    emu = TelegramEmulator()
    with trio.fail_after(CEILING):
        async with connected(emu) as (conn, _):
            sent = await conn.send(text("same"))
            with pytest.raises(PermanentSendError, match="not modified") as info:
                await conn.edit(
                    EditMessage(peer="42", message_id=sent.platform_message_id, text="same")
                )
            assert not isinstance(info.value, MessageNotFound)


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        ({"kind": "unknown_chat", "chat_id": 42}, BadRecipient),
        ({"kind": "rate_limit", "duration": 3}, RateLimited),
        ({"kind": "ban_token", "token": TOKEN}, AuthenticationFailed),
    ],
    ids=["unknown-chat", "429", "banned"],
)
async def test_operation_failures_map_into_the_tree(
    fault: dict[str, Any], expected: type[Exception]
) -> None:
    emu = TelegramEmulator()
    with trio.fail_after(CEILING):
        async with connected(emu) as (conn, url):
            sent = await conn.send(text("x"))
            async with httpx.AsyncClient() as client:
                (await client.post(url + "/_emulator/fault", json=fault)).raise_for_status()
            with pytest.raises(expected):
                await conn.typing(SendTyping(peer="42"))
            with pytest.raises(expected):
                await conn.edit(
                    EditMessage(peer="42", message_id=sent.platform_message_id, text="y")
                )


async def test_uploads_by_bytes_and_by_file(tmp_path: Path) -> None:
    emu = TelegramEmulator(chat_interval=0.0)
    document = tmp_path / "report.pdf"
    document.write_bytes(b"%PDF-1.4 " + b"x" * 991)
    with trio.fail_after(CEILING):
        async with connected(emu) as (conn, url):
            photo = Media(kind=MediaKind.IMAGE, content=b"\x89PNG-bytes", caption="cat")
            sent = await conn.send(OutboundMessage(peer="42", idempotency_key="p", media=photo))
            pdf = Media(kind=MediaKind.DOCUMENT, path=str(document))
            await conn.send(OutboundMessage(peer="42", idempotency_key="d", media=pdf))
            assert [(s["method"], s["media"]) for s in emu.sent] == [
                ("sendPhoto", {"upload": "image.jpg", "size": 10}),
                ("sendDocument", {"upload": "report.pdf", "size": 1000}),
            ]
            assert emu.sent[0]["caption"] == "cat"
            assert sent.platform_message_id == "42:1"
            # What was uploaded can be fetched back, as from Telegram's file server.
            async with httpx.AsyncClient() as client:
                info = await client.post(
                    f"{url}/bot{TOKEN}/getFile", json={"file_id": "emu-document-2"}
                )
                path = info.json()["result"]["file_path"]
                body = await client.get(f"{url}/file/bot{TOKEN}/{path}")
            assert body.content == document.read_bytes()


async def test_uploads_over_the_limit_and_unreadable_files_are_permanent(tmp_path: Path) -> None:
    limits = PlatformLimits(
        per_channel_rate=30.0,
        per_channel_burst=30,
        per_peer_rate=1.0,
        per_peer_burst=1,
        max_text_length=4096,
        max_upload_bytes=100,
    )
    emu = TelegramEmulator()
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * 101)
    with trio.fail_after(CEILING):
        async with connected(emu, TelegramProvider(limits=limits)) as (conn, _):
            for media in (
                Media(kind=MediaKind.DOCUMENT, path=str(big)),
                Media(kind=MediaKind.DOCUMENT, content=b"x" * 101),
            ):
                with pytest.raises(MediaTooLarge):
                    await conn.send(OutboundMessage(peer="42", idempotency_key="b", media=media))
            gone = Media(kind=MediaKind.DOCUMENT, path=str(tmp_path / "missing.pdf"))
            with pytest.raises(PermanentSendError, match="cannot read"):
                await conn.send(OutboundMessage(peer="42", idempotency_key="m", media=gone))
    assert emu.sent == []  # nothing reached the platform
