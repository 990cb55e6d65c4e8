"""The emulators judge single ownership: live connections per identity, and every overlap."""

from __future__ import annotations

import contextlib
from typing import Any

import httpx
import trio
import trio.testing
from trio_websocket import ConnectionClosed, open_websocket_url

from providers.emulators.base import Holders, open_emulator
from providers.emulators.telegram import TelegramEmulator
from providers.emulators.websocket import WebSocketEmulator
from tests.support import CEILING, yield_until
from tests.test_telegram_provider import IN_MEMORY, TOKEN, in_memory


async def test_two_websockets_of_one_token_at_once_are_an_overlap() -> None:
    emulator = WebSocketEmulator(tokens={"tok-a", "tok-b"})
    with trio.fail_after(CEILING):
        async with open_emulator(emulator) as base:
            url = base.replace("http", "ws") + "/ws"
            async with open_websocket_url(f"{url}?token=tok-a"):
                async with open_websocket_url(f"{url}?token=tok-b"):
                    pass  # another identity: no overlap
                async with open_websocket_url(f"{url}?token=tok-a"):
                    pass
            async with open_websocket_url(f"{url}?token=tok-a"):  # one at a time: fine
                pass
            async with httpx.AsyncClient() as client:
                stats = (await client.get(f"{base}/_emulator/stats")).json()["ownership"]
    assert stats["overlap_count"] == 1
    (overlap,) = stats["overlaps"]
    assert overlap["identity"] == "tok-a"
    assert overlap["held_since"] <= overlap["opened_at"]
    assert stats["identities"]["tok-a"]["max_concurrent"] == 2
    assert stats["identities"]["tok-b"]["max_concurrent"] == 1
    # tok-a was without a connection once: between its first two and its last.
    assert [(identity, why) for identity, _, _, why in emulator.holders.gaps] == [
        ("tok-a", "the client closed it")
    ]


async def test_a_gap_says_the_emulator_took_a_silent_client_for_dead() -> None:
    emulator = WebSocketEmulator(tokens={"tok-a"}, heartbeat_interval=0.05, client_timeout=0.1)
    with trio.fail_after(CEILING):
        async with open_emulator(emulator) as base:
            url = base.replace("http", "ws") + "/ws?token=tok-a"
            async with open_websocket_url(url) as silent:  # reads, never acks
                with contextlib.suppress(ConnectionClosed):
                    while True:
                        await silent.get_message()
            async with open_websocket_url(url):
                pass
    ((identity, _, _, why),) = emulator.holders.gaps
    assert identity == "tok-a" and "4009" in why, why


def test_a_gap_runs_from_the_last_connection_s_end_to_the_next_opening() -> None:
    holders = Holders()
    first = holders.opened("bot")
    second = holders.opened("bot")  # an overlap, not a gap
    holders.closed("bot", first)
    holders.opened("other")
    assert holders.gaps == []  # "bot" still holds one
    holders.closed("bot", second, "timed out")
    holders.closed("bot", second)  # a second report of the same end changes nothing
    assert holders.gaps == []  # dark, but not yet back
    holders.opened("bot")
    ((identity, since, until, why),) = holders.gaps
    assert identity == "bot" and since <= until and why == "timed out"


async def test_waiting_for_no_live_connection_returns_when_the_last_one_ends() -> None:
    holders = Holders()
    await holders.wait_none_live()  # none ever opened: at once
    first, second = holders.opened("tok-a"), holders.opened("tok-b")
    done = trio.Event()

    async def wait() -> None:
        await holders.wait_none_live()
        done.set()

    with trio.fail_after(CEILING):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait)
            await trio.testing.wait_all_tasks_blocked()
            holders.closed("tok-a", first)
            await trio.testing.wait_all_tasks_blocked()
            assert not done.is_set()  # tok-b is still live
            holders.closed("tok-b", second)
            await done.wait()


async def test_two_telegram_polls_at_once_are_an_overlap_and_a_409(
    autojump_clock: trio.testing.MockClock,
) -> None:
    emu = TelegramEmulator()
    answers: list[Any] = []
    with trio.fail_after(CEILING):
        async with httpx.AsyncClient(transport=in_memory(emu), base_url=IN_MEMORY) as client:
            await client.get(f"/bot{TOKEN}/getMe")

            async def poll() -> None:
                answer = await client.get(f"/bot{TOKEN}/getUpdates", params={"timeout": 10})
                answers.append(answer.status_code)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(poll)
                await yield_until(lambda: emu.bots[TOKEN].poll is not None)
                nursery.start_soon(poll)  # a second poller: the first is terminated
            stats = (await client.get("/_emulator/stats")).json()["ownership"]
    assert sorted(answers) == [200, 409]
    assert stats["overlap_count"] == 1
    assert stats["identities"]


async def test_the_ownership_brief_shows_live_connections_overlaps_and_gaps_since() -> None:
    """What a rig in another process judges by: ``GET /_emulator/ownership``."""
    emulator = WebSocketEmulator(tokens={"tok-a", "tok-b", "a-token-longer-than-12"})
    with trio.fail_after(CEILING):
        async with open_emulator(emulator) as base, httpx.AsyncClient() as client:
            url = base.replace("http", "ws") + "/ws"

            async def brief(**params: Any) -> Any:
                return (await client.get(f"{base}/_emulator/ownership", params=params)).json()

            async with open_websocket_url(f"{url}?token=tok-a"):
                pass
            async with (
                open_websocket_url(f"{url}?token=tok-a"),
                open_websocket_url(f"{url}?token=a-token-longer-than-12"),
            ):
                async with open_websocket_url(f"{url}?token=tok-a"):
                    await yield_until(lambda: emulator.holders.live("tok-a") == 2)
                    during = await brief()
                await yield_until(lambda: emulator.holders.live("tok-a") == 1)
                after = await brief()
            ((_, _, ended, _),) = emulator.holders.gaps
            since_then = await brief(gaps_since=ended)
            later = await brief(gaps_since=ended + 1.0)
            refused = await client.get(f"{base}/_emulator/ownership?gaps_since=soon")
    assert during["live"] == {"tok-a": 2, "a-toke…n-12": 1}  # tokens are shown shortened
    assert during["overlap_count"] == 1 and during["overlaps"][0]["identity"] == "tok-a"
    assert "gaps" not in during  # only when asked
    assert during["dark"] == {}  # tok-b never connected: not dark, unknown
    assert after["live"] == {"tok-a": 1, "a-toke…n-12": 1}
    assert since_then["dark"]["a-toke…n-12"][1] == "the client closed it"  # all closed now
    assert [gap[0] for gap in since_then["gaps"]] == ["tok-a"]  # the gap between tok-a's first two
    assert since_then["gaps"][0][3] == "the client closed it"
    assert later["gaps"] == []
    assert refused.status_code == 400
