"""The Discord emulator shows a bot's message outside a guild (its DM channel) to that
bot's own sessions only; a guild message goes to every bot in the guild."""

from __future__ import annotations

import pytest
import trio

from actors import ChannelStatus
from providers.base import OutboundMessage
from providers.emulators.base import open_emulator
from providers.emulators.discord import DiscordEmulator
from runtime import open_node, parse_config

GUILD_TEXT_CHANNEL = "123"  # joins the default guild with the first inject there
DM_CHANNEL = "200000000000000002"  # in no guild: a DM channel


@pytest.mark.parametrize(("peer", "dispatched"), [(DM_CHANNEL, 1), (GUILD_TEXT_CHANNEL, 2)])
async def test_who_sees_a_bots_message(peer: str, dispatched: int) -> None:
    emulator = DiscordEmulator()
    with trio.fail_after(30.0):
        async with open_emulator(emulator) as base:
            config = parse_config(
                {
                    "node": {"id": "dm", "drain_deadline": 5.0, "start_timeout": 10.0},
                    "ops": {"enabled": False},
                    "channels": [
                        {
                            "id": f"dc-{n}",
                            "provider": "discord",
                            "base_url": base,
                            "credentials": {"token": f"${{env:T{n}}}"},
                        }
                        for n in range(2)
                    ],
                },
                env={"T0": "dm-bot-0", "T1": "dm-bot-1"},
            )
            async with open_node(config) as node:
                with node.subscribe(kind="state") as changes:
                    while any(s.status is not ChannelStatus.CONNECTED for s in node.channels()):
                        await changes.receive()
                await emulator.inject({"channel_id": GUILD_TEXT_CHANNEL, "content": "hello"})
                before = emulator.stats["dispatched"]
                await node.send("dc-0", OutboundMessage(peer=peer, idempotency_key="k", text="hi"))
                after = emulator.stats["dispatched"]
    assert after - before == dispatched


async def test_a_socket_hopelessly_behind_is_dropped_not_given_a_gap() -> None:
    """An outbox that overflows drops the socket (the session resumes and its backlog is
    replayed); it used to skip the frame, a gap in the sequence no client notices."""
    from providers.emulators.discord.state import Link

    class _Socket:
        def __init__(self) -> None:
            self.sent: list[str] = []

        async def send_text(self, text: str) -> None:
            self.sent.append(text)

    emulator = DiscordEmulator()
    send, receive = trio.open_memory_channel[tuple[object, ...]](1)
    link = Link(outbox=send, netloc="test", compress=None)
    link.push("frame", {"op": 0, "s": 1})
    assert not link.behind
    link.push("frame", {"op": 0, "s": 2})  # no room: behind
    assert link.behind
    socket = _Socket()
    with trio.fail_after(5.0):
        await emulator._writer(socket, link, receive)
    assert socket.sent == []
    assert emulator.stats["gateway_dropped_behind"] == 1
