"""WhatsApp's operations beyond send against the emulator, over real sockets.

Read marks (with the typing indicator), typing, reactions, uploads through
``POST /media`` (bytes and a file), business-scoped user ids (BSUIDs) in and
out, each with its failure classes: a message WhatsApp does not have is
``MessageNotFound``, a banned token ``Banned``, a 429 ``RateLimited``; edits
and deletes are ``Unsupported``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import pytest
import trio

from providers.base import (
    Banned,
    DeliveryReceipt,
    InboundMessage,
    Media,
    MediaKind,
    MessageNotFound,
    OutboundMessage,
    PermanentSendError,
    RateLimited,
    Unsupported,
)
from providers.emulators.whatsapp import bsuid_for
from providers.operations import (
    DeleteMessage,
    EditMessage,
    MarkRead,
    OperationKind,
    React,
    SendTyping,
)
from providers.whatsapp import WhatsAppProvider, core
from tests.test_whatsapp_provider import TOKEN, USER, open_stack, text

CEILING: Final = 10.0  # real seconds; only a hang gets near it


def test_declared_operations_and_requests() -> None:
    assert WhatsAppProvider.operations == core.OPERATIONS
    assert OperationKind.EDIT not in core.OPERATIONS
    assert OperationKind.DELETE not in core.OPERATIONS
    assert core.is_bsuid("US.13491208655302741918") and core.is_bsuid("US.ENT.118")
    assert not core.is_bsuid("16505551234")
    by_phone = core.message_payload(text("hi"))
    by_bsuid = core.message_payload(text("hi", peer="US.13491208655302741918"))
    assert (by_phone.get("to"), by_phone.get("recipient")) == (USER, None)
    assert (by_bsuid.get("to"), by_bsuid.get("recipient")) == (None, "US.13491208655302741918")


async def test_read_typing_and_reactions() -> None:
    with trio.fail_after(CEILING):
        async with open_stack() as stack:
            await stack.inject("hello")
            inbound = await stack.next_inbound()
            assert inbound.metadata["user_id"] == bsuid_for(USER)
            conn = stack.connection
            await conn.mark_read(MarkRead(peer=USER, message_id=inbound.platform_message_id))
            await conn.typing(SendTyping(peer=USER))  # the last message from USER
            await conn.react(React(peer=USER, message_id=inbound.platform_message_id, emoji="👍"))
            await conn.react(
                React(peer=USER, message_id=inbound.platform_message_id, emoji="👍", remove=True)
            )
            assert [
                (o["op"], o.get("typing"), o.get("emoji")) for o in stack.emulator.operations
            ] == [
                ("read", False, None),
                ("read", True, None),
                ("react", None, "👍"),
                ("react", None, ""),
            ]
            with pytest.raises(MessageNotFound):
                await conn.mark_read(MarkRead(peer=USER, message_id="wamid.unknown"))
            with pytest.raises(MessageNotFound):
                await conn.react(React(peer=USER, message_id="wamid.unknown", emoji="👍"))
            with pytest.raises(PermanentSendError, match="no message from"):
                await conn.typing(SendTyping(peer="15550001111"))  # never wrote
            for op in (
                EditMessage(peer=USER, message_id=inbound.platform_message_id, text="x"),
                DeleteMessage(peer=USER, message_id=inbound.platform_message_id),
            ):
                with pytest.raises(Unsupported):
                    if isinstance(op, EditMessage):
                        await conn.edit(op)
                    else:
                        await conn.delete(op)


async def test_operation_failures_map_into_the_tree() -> None:
    with trio.fail_after(CEILING):
        async with open_stack() as stack:
            await stack.inject("hello")
            inbound = await stack.next_inbound()
            read = MarkRead(peer=USER, message_id=inbound.platform_message_id)
            await stack.control("fault", {"kind": "rate_limit", "duration": 2})
            with pytest.raises(RateLimited):
                await stack.connection.mark_read(read)
            await stack.control("fault", {"kind": "ban_token", "token": TOKEN})
            with pytest.raises(Banned):
                await stack.connection.mark_read(read)


async def test_uploads_by_bytes_and_by_file(tmp_path: Path) -> None:
    voice = tmp_path / "note.ogg"
    voice.write_bytes(b"OggS" + b"o" * 60)
    with trio.fail_after(CEILING):
        async with open_stack() as stack:
            await stack.inject("send me things")  # opens the 24-hour window
            await stack.next_inbound()
            image = Media(kind=MediaKind.IMAGE, content=b"\xff\xd8\xff-jpeg", caption="pic")
            await stack.connection.send(
                OutboundMessage(peer=USER, idempotency_key="i", media=image)
            )
            audio = Media(kind=MediaKind.AUDIO, path=str(voice))
            await stack.connection.send(
                OutboundMessage(peer=USER, idempotency_key="a", media=audio)
            )
            uploads = [o for o in stack.emulator.operations if o["op"] == "upload"]
            assert [(u["type"], u["size"], u["name"]) for u in uploads] == [
                ("image/jpeg", 8, "image.jpg"),
                ("audio/ogg", 64, "note.ogg"),
            ]
            sent = [s["body"] for s in stack.emulator.sent]
            assert sent[0]["image"] == {"id": uploads[0]["media_id"], "caption": "pic"}
            assert sent[1]["audio"] == {"id": uploads[1]["media_id"]}
            assert stack.emulator.media[uploads[1]["media_id"]][0] == voice.read_bytes()


async def test_a_user_who_hides_their_number_is_answered_by_bsuid() -> None:
    with trio.fail_after(CEILING):
        async with open_stack() as stack:
            answer = await stack.control(
                "inject", {"from": "15557654321", "text": "hi", "hide_number": True}
            )
            bsuid = answer.json()["user_id"]
            inbound = await stack.next_inbound()
            assert isinstance(inbound, InboundMessage)
            assert inbound.peer == inbound.sender == bsuid  # no phone number to show
            result = await stack.connection.send(text("hello", peer=bsuid))
            assert stack.emulator.sent[-1]["body"]["recipient"] == bsuid
            assert "to" not in stack.emulator.sent[-1]["body"]
            receipt = await stack.events.__anext__()
            assert isinstance(receipt, DeliveryReceipt)
            assert (receipt.platform_message_id, receipt.peer) == (
                result.platform_message_id,
                bsuid,
            )
