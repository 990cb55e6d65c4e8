"""The websocket envelope's operations against its emulator, over real sockets.

Edit, delete, typing, read, react and uploads (bytes and a file), each with
its failure classes: a message that is not there is ``MessageNotFound``, an
upload over the limit ``MediaTooLarge``, a server refusal the mapped class.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import pytest
import trio

from providers.base import (
    ChannelConfig,
    Media,
    MediaKind,
    MediaTooLarge,
    MessageNotFound,
    OutboundMessage,
    PermanentSendError,
    RateLimited,
    SendResult,
    TransientError,
)
from providers.emulators.base import open_emulator
from providers.emulators.websocket import WebSocketEmulator
from providers.operations import (
    ChatAction,
    DeleteMessage,
    EditMessage,
    MarkRead,
    OperationKind,
    React,
    SendTyping,
)
from providers.websocket import WebSocketProvider
from providers.websocket.core import encode_operation

IO_CEILING: Final = 20.0  # seconds; a hang guard only


@asynccontextmanager
async def connected(emulator: WebSocketEmulator) -> AsyncIterator[Any]:
    async with open_emulator(emulator) as base_url:
        config = ChannelConfig(
            channel_id="ws-ops",
            provider="websocket",
            base_url=base_url.replace("http://", "ws://") + "/ws",
            credentials={"token": "t1"},
            options={"pong_timeout": IO_CEILING, "liveness_timeout": IO_CEILING},
        )
        async with WebSocketProvider().open_connection(config) as conn:
            yield conn


def test_every_operation_is_declared_and_encoded() -> None:
    assert WebSocketProvider.operations == frozenset(OperationKind)
    frames = [
        encode_operation(EditMessage(peer="p", message_id="m", text="t", idempotency_key="k")),
        encode_operation(DeleteMessage(peer="p", message_id="m", idempotency_key="k")),
        encode_operation(SendTyping(peer="p", action=ChatAction.UPLOAD_PHOTO, idempotency_key="k")),
        encode_operation(MarkRead(peer="p", message_id="m", idempotency_key="k")),
        encode_operation(
            React(peer="p", message_id="m", emoji="👍", remove=True, idempotency_key="k")
        ),
    ]
    assert frames == [
        '{"id":"k","peer":"p","type":"edit","message_id":"m","text":"t"}',
        '{"id":"k","peer":"p","type":"delete","message_id":"m"}',
        '{"id":"k","peer":"p","type":"typing","action":"upload_photo"}',
        '{"id":"k","peer":"p","type":"read","message_id":"m"}',
        '{"id":"k","peer":"p","type":"react","message_id":"m","emoji":"👍","remove":true}',
    ]


async def test_edit_delete_typing_read_react_round_trip() -> None:
    emulator = WebSocketEmulator(heartbeat_interval=None)
    with trio.fail_after(IO_CEILING):
        async with connected(emulator) as conn:
            sent = await conn.send(OutboundMessage(peer="c1", idempotency_key="s1", text="v1"))
            edited = await conn.edit(
                EditMessage(peer="c1", message_id=sent.platform_message_id, text="v2")
            )
            assert edited == SendResult(platform_message_id=sent.platform_message_id, peer="c1")
            assert emulator.sent[0]["text"] == "v2"  # the platform's copy changed
            inbound = await emulator.inject({"peer": "c1", "text": "hello"})
            user_message = inbound["frame"]["id"]
            assert await conn.typing(SendTyping(peer="c1")) is None
            assert await conn.mark_read(MarkRead(peer="c1", message_id=user_message)) is None
            await conn.react(React(peer="c1", message_id=user_message, emoji="👍"))
            await conn.react(React(peer="c1", message_id=user_message, emoji="👍", remove=True))
            await conn.delete(DeleteMessage(peer="c1", message_id=sent.platform_message_id))
            assert [(o["type"], o.get("remove")) for o in emulator.operations] == [
                ("edit", None),
                ("typing", None),
                ("read", None),
                ("react", False),
                ("react", True),
                ("delete", None),
            ]
            # Gone now: an edit or a second delete is permanent, not a retry.
            with pytest.raises(MessageNotFound):
                await conn.edit(
                    EditMessage(peer="c1", message_id=sent.platform_message_id, text="v3")
                )
            with pytest.raises(MessageNotFound):
                await conn.delete(DeleteMessage(peer="c1", message_id=sent.platform_message_id))
            with pytest.raises(MessageNotFound):
                await conn.mark_read(MarkRead(peer="c1", message_id="in-999"))


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        ({"kind": "fail_sends", "code": "rate_limited", "retry_after": 2.0}, RateLimited),
        ({"kind": "fail_sends", "code": "internal"}, TransientError),
        ({"kind": "fail_sends", "code": "unsupported"}, PermanentSendError),
    ],
    ids=["rate_limited", "transient", "unsupported"],
)
async def test_operation_failures_map_like_sends(
    fault: dict[str, Any], expected: type[Exception]
) -> None:
    emulator = WebSocketEmulator(heartbeat_interval=None)
    with trio.fail_after(IO_CEILING):
        async with connected(emulator) as conn:
            await emulator.platform_fault(fault)
            with pytest.raises(expected):
                await conn.typing(SendTyping(peer="c1"))
            await conn.typing(SendTyping(peer="c1"))  # the next one goes through


async def test_uploads_by_bytes_and_by_file_and_the_size_limit(tmp_path: Path) -> None:
    emulator = WebSocketEmulator(heartbeat_interval=None, max_upload_bytes=1000)
    picture = tmp_path / "cat.png"
    picture.write_bytes(b"\x89PNG" + b"x" * 96)
    with trio.fail_after(IO_CEILING):
        async with connected(emulator) as conn:
            by_bytes = Media(kind=MediaKind.IMAGE, content=b"abc", caption="c")
            await conn.send(OutboundMessage(peer="c1", idempotency_key="u1", media=by_bytes))
            by_file = Media(kind=MediaKind.IMAGE, path=str(picture))
            await conn.send(OutboundMessage(peer="c1", idempotency_key="u2", media=by_file))
            assert [s["uploaded_bytes"] for s in emulator.sent] == [3, 100]
            assert emulator.sent[1]["media"]["filename"] == "cat.png"
            assert emulator.sent[1]["media"]["mime_type"] == "image/png"
            big = Media(kind=MediaKind.DOCUMENT, content=b"x" * 1001)
            with pytest.raises(MediaTooLarge):  # the server's limit
                await conn.send(OutboundMessage(peer="c1", idempotency_key="u3", media=big))
            missing = Media(kind=MediaKind.DOCUMENT, path=str(tmp_path / "nope.pdf"))
            with pytest.raises(PermanentSendError, match="cannot read the file"):
                await conn.send(OutboundMessage(peer="c1", idempotency_key="u4", media=missing))
