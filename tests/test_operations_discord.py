"""Discord's operations beyond send, its transport compression and its session
rules, against the emulator over real sockets on 127.0.0.1.

Edits, deletes, typing, reactions and attachments, with their failure classes
(10008 Unknown Message is ``MessageNotFound``, an unknown channel
``BadRecipient``, a 429 ``RateLimited``, a banned token
``AuthenticationFailed``); ``mark_read`` is ``Unsupported``. The gateway with
``compress=zlib-stream`` and ``zstd-stream``; a server-initiated close that
leaves the session resumable; the bot's user id as its token encodes it.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import pytest
import trio

from providers.base import (
    AuthenticationFailed,
    BadRecipient,
    ChannelConfig,
    ConnectionState,
    ConnectionStateChanged,
    Event,
    FatalError,
    InboundMessage,
    Media,
    MediaKind,
    MessageEdited,
    MessageNotFound,
    OutboundMessage,
    RateLimited,
    Unsupported,
)
from providers.discord import DiscordProvider
from providers.discord.compress import Inflater
from providers.discord.rest import OPERATIONS, build_operation, build_send
from providers.emulators.base import open_emulator
from providers.emulators.discord import DiscordEmulator
from providers.emulators.discord.model import token_for, user_id_for
from providers.operations import (
    DeleteMessage,
    EditMessage,
    MarkRead,
    OperationKind,
    React,
    SendTyping,
)
from tests.support import control

QUIET: Final = 3600.0  # seconds between heartbeats: none falls within a test
CEILING: Final = 10.0  # seconds; only a hang gets near it
CHANNEL: Final = "300000000000000001"


def provider(**kwargs: Any) -> DiscordProvider:
    return DiscordProvider(rng=random.Random(1), invalid_session_delay=(0.01, 0.05), **kwargs)


def config(base_url: str, token: str = "tok", **options: Any) -> ChannelConfig:
    return ChannelConfig(
        channel_id="dc",
        provider="discord",
        credentials={"token": token},
        base_url=base_url,
        options=options,
    )


async def next_of(stream: AsyncIterator[Event], kind: type[Any]) -> Any:
    async for event in stream:
        if isinstance(event, kind):
            return event
    raise AssertionError(f"the events ended before a {kind.__name__}")


def test_declared_operations_and_routes() -> None:
    assert DiscordProvider.operations == OPERATIONS
    assert OperationKind.MARK_READ not in OPERATIONS
    edit = build_operation(EditMessage(peer="1", message_id="2", text="t"))
    assert (edit.method, edit.path, dict(edit.json or {})) == (
        "PATCH",
        "/api/v10/channels/1/messages/2",
        {"content": "t"},
    )
    add = build_operation(React(peer="1", message_id="2", emoji="👍"))
    remove = build_operation(React(peer="1", message_id="2", emoji="👍", remove=True))
    assert add.path == remove.path == "/api/v10/channels/1/messages/2/reactions/%F0%9F%91%8D/@me"
    assert (add.method, remove.method) == ("PUT", "DELETE")
    assert add.route != remove.route  # each route has its own bucket
    with pytest.raises(BadRecipient):
        build_operation(SendTyping(peer="general"))
    with pytest.raises(MessageNotFound):
        build_operation(DeleteMessage(peer="1", message_id="not-a-snowflake"))


@pytest.mark.parametrize("peer", ["²", "١٢٣", "1" * 21, "9" * 70_000, ""])
def test_an_id_that_no_snowflake_can_be_is_refused_before_any_request(peer: str) -> None:
    # str.isdigit took superscripts, Arabic digits and any length: 70,000 digits
    # made a URL httpx refused (InvalidURL), which crashed the channel's actor,
    # and five such sends failed the channel for good.
    with pytest.raises(BadRecipient) as caught:
        build_send(OutboundMessage(peer=peer, idempotency_key="k", text="hi"))
    assert len(str(caught.value)) < 200  # the id is not echoed whole
    with pytest.raises(BadRecipient):
        build_operation(SendTyping(peer=peer))
    with pytest.raises(MessageNotFound):
        build_operation(EditMessage(peer="1", message_id=peer, text="t"))
    assert build_send(OutboundMessage(peer="9" * 20, idempotency_key="k", text="hi")).major


async def test_edit_delete_typing_react_and_their_failures() -> None:
    emulator = DiscordEmulator(heartbeat_interval=QUIET, message_bucket=(50, 1.0))
    with trio.fail_after(CEILING):
        async with (
            open_emulator(emulator) as url,
            provider().open_connection(config(url)) as conn,
        ):
            stream = conn.events()
            await next_of(stream, ConnectionStateChanged)
            sent = await conn.send(OutboundMessage(peer=CHANNEL, idempotency_key="k", text="v1"))
            mid = sent.platform_message_id
            edited = await conn.edit(EditMessage(peer=CHANNEL, message_id=mid, text="v2"))
            assert edited.platform_message_id == mid
            await conn.typing(SendTyping(peer=CHANNEL))
            await conn.react(React(peer=CHANNEL, message_id=mid, emoji="👍"))
            await conn.react(React(peer=CHANNEL, message_id=mid, emoji="👍", remove=True))
            await conn.delete(DeleteMessage(peer=CHANNEL, message_id=mid))
            ops = await control(url, "operations")
            assert [(o["op"], o.get("emoji")) for o in ops] == [
                ("edit", None),
                ("typing", None),
                ("react", "👍"),
                ("unreact", "👍"),
                ("delete", None),
            ]
            for gone in (
                EditMessage(peer=CHANNEL, message_id=mid, text="v3"),
                DeleteMessage(peer=CHANNEL, message_id=mid),
                React(peer=CHANNEL, message_id=mid, emoji="👍"),
            ):
                with pytest.raises(MessageNotFound):
                    if isinstance(gone, EditMessage):
                        await conn.edit(gone)
                    elif isinstance(gone, DeleteMessage):
                        await conn.delete(gone)
                    else:
                        await conn.react(gone)
            with pytest.raises(Unsupported):
                await conn.mark_read(MarkRead(peer=CHANNEL, message_id=mid))
            await control(url, "fault", {"kind": "delete_channel", "channel_id": "77"})
            with pytest.raises(BadRecipient):
                await conn.typing(SendTyping(peer="77"))
            await control(url, "fault", {"kind": "rate_limit", "duration": 2})
            with pytest.raises(RateLimited):
                await conn.typing(SendTyping(peer=CHANNEL))


async def test_a_banned_token_fails_operations_as_authentication() -> None:
    emulator = DiscordEmulator(heartbeat_interval=QUIET)
    with trio.fail_after(CEILING):
        async with (
            open_emulator(emulator) as url,
            provider().open_connection(config(url, token="soon-banned")) as conn,
        ):
            await control(url, "fault", {"kind": "ban_token", "token": "soon-banned"})
            with pytest.raises(AuthenticationFailed):
                await conn.typing(SendTyping(peer=CHANNEL))


async def test_attachments_by_bytes_and_by_file(tmp_path: Path) -> None:
    emulator = DiscordEmulator(heartbeat_interval=QUIET, message_bucket=(50, 1.0))
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"v" * 500)
    with trio.fail_after(CEILING):
        async with (
            open_emulator(emulator) as url,
            provider().open_connection(config(url)) as conn,
        ):
            image = Media(kind=MediaKind.IMAGE, content=b"GIF89a-data", caption="look")
            await conn.send(OutboundMessage(peer=CHANNEL, idempotency_key="a", media=image))
            video = Media(kind=MediaKind.VIDEO, path=str(clip))
            await conn.send(OutboundMessage(peer=CHANNEL, idempotency_key="b", media=video))
    first, second = emulator.sent
    assert first["content"] == "look"  # the caption; the bytes are the attachment
    assert [(a["filename"], a["size"], a["content_type"]) for a in first["attachments"]] == [
        ("image.jpg", 11, "image/jpeg")
    ]
    assert [(a["filename"], a["size"], a["content_type"]) for a in second["attachments"]] == [
        ("clip.mp4", 512, "video/mp4")
    ]
    assert emulator.files[second["attachments"][0]["id"]] == clip.read_bytes()


@pytest.mark.parametrize("compress", ["zlib-stream", "zstd-stream"])
async def test_compressed_gateway_receives_and_resumes(compress: str) -> None:
    emulator = DiscordEmulator(heartbeat_interval=QUIET)
    with trio.fail_after(CEILING):
        async with (
            open_emulator(emulator) as url,
            provider().open_connection(config(url, compress=compress)) as conn,
        ):
            stream = conn.events()
            await next_of(stream, ConnectionStateChanged)
            for n in range(3):
                await control(url, "inject", {"channel_id": "5", "content": f"hello {n}" * 20})
                message = await next_of(stream, InboundMessage)
                assert message.text == f"hello {n}" * 20
            inflater = conn.inflater
            assert isinstance(inflater, Inflater) and inflater.compression == compress
            # One stream per socket: later payloads reuse the window and shrink.
            assert 0 < inflater.wire_bytes < inflater.payload_bytes
            await control(url, "fault", {"kind": "drop"})
            back = await next_of(stream, ConnectionStateChanged)
            while back.state is not ConnectionState.RESUMED:
                back = await next_of(stream, ConnectionStateChanged)
            await control(url, "inject", {"channel_id": "5", "content": "after"})
            assert (await next_of(stream, InboundMessage)).text == "after"
    assert emulator.stats["resume"] == 1
    assert emulator.stats["gateway_wire_bytes"] < emulator.stats["gateway_payload_bytes"]


async def test_an_unknown_compression_is_refused() -> None:
    emulator = DiscordEmulator(heartbeat_interval=QUIET)
    with trio.fail_after(CEILING):
        async with open_emulator(emulator) as url:
            with pytest.raises(FatalError, match=r"options\.compress"):
                async with provider().open_connection(config(url, compress="brotli")):
                    pass


@pytest.mark.parametrize("code", [4000, 4008, 1000])
async def test_a_server_close_keeps_the_session_resumable(code: int) -> None:
    emulator = DiscordEmulator(heartbeat_interval=QUIET)
    with trio.fail_after(CEILING):
        async with (
            open_emulator(emulator) as url,
            provider().open_connection(config(url)) as conn,
        ):
            stream = conn.events()
            await next_of(stream, ConnectionStateChanged)
            await control(url, "fault", {"kind": "close", "code": code})
            lost = await next_of(stream, ConnectionStateChanged)
            assert lost.state is ConnectionState.DISCONNECTED
            # A message while the client is away is replayed on RESUME, not lost.
            await control(url, "inject", {"channel_id": "5", "content": "while away"})
            # Replayed on RESUME (before RESUMED itself, as Discord does), not lost.
            seen: list[Any] = []
            async for event in stream:
                seen.append(event)
                if isinstance(event, ConnectionStateChanged):
                    break
            assert seen[-1].state is ConnectionState.RESUMED
            assert [e.text for e in seen if isinstance(e, InboundMessage)] == ["while away"]
    assert emulator.stats["resume"] == 1 and emulator.stats["resume_failed"] == 0
    assert emulator.stats["identify"] == 1


async def test_the_bot_user_id_is_the_one_its_token_encodes() -> None:
    token = token_for("123456789012345678")
    assert user_id_for(token) == "123456789012345678"
    assert user_id_for("compat-token").isdigit()  # a token that encodes none: a stable id
    emulator = DiscordEmulator(heartbeat_interval=QUIET)
    with trio.fail_after(CEILING):
        async with (
            open_emulator(emulator) as url,
            provider().open_connection(config(url, token=token)) as conn,
        ):
            stream = conn.events()
            await next_of(stream, ConnectionStateChanged)
            assert conn.session_state().data["user_id"] == "123456789012345678"
            sent = await conn.send(OutboundMessage(peer=CHANNEL, idempotency_key="k", text="x"))
            await control(url, "inject", {"channel_id": CHANNEL, "content": "y", "edit": None})
            # Our own message (authored by the encoded id) does not come back as inbound.
            message = await next_of(stream, InboundMessage | MessageEdited)
            assert message.platform_message_id != sent.platform_message_id
