"""The emulators' HTTP-layer faults (a status, a refused upgrade, a drip, a huge body),
``unban_token`` and paging through ``/_emulator/sent``: real sockets on 127.0.0.1."""

from __future__ import annotations

import httpx
import pytest
import trio
from trio_websocket import ConnectionRejected, open_websocket_url

from providers.emulators.base import HttpVersionTally, open_emulator
from providers.emulators.telegram import TelegramEmulator
from providers.emulators.websocket import WebSocketEmulator

TOKEN = "123456:" + "A" * 35
CEILING = 30.0  # seconds; only a hang gets near it


async def _fault(client: httpx.AsyncClient, base: str, **payload: object) -> httpx.Response:
    return await client.post(f"{base}/_emulator/fault", json=payload)


async def test_a_status_hits_the_next_matching_requests_only() -> None:
    with trio.fail_after(CEILING):
        async with open_emulator(TelegramEmulator()) as base, httpx.AsyncClient() as client:
            queued = await _fault(
                client, base, kind="http_status", status=502, count=2, path="/getMe"
            )
            assert queued.status_code == 200, queued.text
            other = await client.get(f"{base}/bot{TOKEN}/getWebhookInfo")
            first = await client.get(f"{base}/bot{TOKEN}/getMe")
            stats = await client.get(f"{base}/_emulator/stats")  # never faulted
            second = await client.get(f"{base}/bot{TOKEN}/getMe")
            third = await client.get(f"{base}/bot{TOKEN}/getMe")
    assert other.status_code == 200
    assert (first.status_code, second.status_code, third.status_code) == (502, 502, 200)
    assert stats.json()["http_faults"] == {"http_status": 1}


@pytest.mark.parametrize(
    "payload",
    [
        {"kind": "http_status", "status": 99},
        {"kind": "drip", "duration": -1},
        {"kind": "huge_body", "size": 1.5},
        {"kind": "http_status", "count": 0},
        {"kind": "drip", "scope": "udp"},
    ],
)
async def test_bad_fault_arguments_are_refused(payload: dict[str, object]) -> None:
    with trio.fail_after(CEILING):
        async with open_emulator(TelegramEmulator()) as base, httpx.AsyncClient() as client:
            answer = await _fault(client, base, **payload)
    assert answer.status_code == 400, answer.text


async def test_a_huge_body_and_a_drip_are_what_they_say() -> None:
    with trio.fail_after(CEILING):
        async with open_emulator(TelegramEmulator()) as base, httpx.AsyncClient() as client:
            await _fault(client, base, kind="huge_body", size=3_000_000, path="/getMe")
            huge = await client.get(f"{base}/bot{TOKEN}/getMe")
            await _fault(client, base, kind="drip", interval=0.05, duration=0.3, path="/getMe")
            chunks = []
            async with client.stream("GET", f"{base}/bot{TOKEN}/getMe") as dripping:
                async for chunk in dripping.aiter_raw():
                    chunks.append(chunk)
    assert huge.status_code == 200 and len(huge.content) == 3_000_000
    assert len(chunks) > 2 and all(len(c) <= 2 for c in chunks)  # a byte at a time


async def test_an_upgrade_is_refused_with_the_status_or_answered_with_a_huge_message() -> None:
    emulator = WebSocketEmulator(tokens={"t1"})
    with trio.fail_after(CEILING):
        async with open_emulator(emulator) as base, httpx.AsyncClient() as client:
            url = base.replace("http", "ws") + "/ws?token=t1"
            await _fault(client, base, kind="http_status", status=503, scope="websocket")
            with pytest.raises(ConnectionRejected) as refused:
                async with open_websocket_url(url):
                    pass
            await _fault(client, base, kind="huge_body", size=2_000_000, path="/ws")
            async with open_websocket_url(url, max_message_size=4_000_000) as ws:
                message = await ws.get_message()
            async with open_websocket_url(url) as ws:  # the faults are used up
                ready = await ws.get_message()
    assert refused.value.status_code == 503
    assert len(message) == 2_000_000
    assert "ready" in str(ready)


async def test_unban_lifts_a_ban_and_sent_pages_by_offset() -> None:
    emulator = TelegramEmulator()
    with trio.fail_after(CEILING):
        async with open_emulator(emulator) as base, httpx.AsyncClient() as client:
            await _fault(client, base, kind="ban_token", token=TOKEN)
            banned = await client.get(f"{base}/bot{TOKEN}/getMe")
            await _fault(client, base, kind="unban_token", token=TOKEN)
            back = await client.get(f"{base}/bot{TOKEN}/getMe")
            for n in range(5):
                sent = await client.post(
                    f"{base}/bot{TOKEN}/sendMessage", json={"chat_id": 7 + n, "text": f"m{n}"}
                )
                assert sent.status_code == 200, sent.text
            page = await client.get(f"{base}/_emulator/sent", params={"offset": 1, "limit": 3})
    assert (banned.status_code, back.status_code) == (401, 200)
    assert [m["text"] for m in page.json()] == ["m1", "m2", "m3"]


async def test_the_stats_count_platform_requests_by_http_version_and_connection() -> None:
    emulator = TelegramEmulator()
    with trio.fail_after(CEILING):
        async with open_emulator(emulator) as base:
            async with httpx.AsyncClient() as one:  # HTTP/1.1, one connection kept alive
                for _ in range(3):
                    await one.post(f"{base}/bot1:x/getMe")
            async with httpx.AsyncClient(http1=False, http2=True) as two:  # h2c, one connection
                await two.post(f"{base}/bot1:x/getMe")
                await two.post(f"{base}/bot1:x/getMe")
            async with httpx.AsyncClient() as control:
                stats = (await control.get(f"{base}/_emulator/stats")).json()
    # The control API's own requests are not counted.
    assert stats["http"] == {
        "1.1": {"requests": 3, "connections": 1},
        "2": {"requests": 2, "connections": 1},
    }


def test_the_tally_counts_a_request_whatever_its_client_address_looks_like() -> None:
    tally = HttpVersionTally()
    for client in (("10.0.0.1", 4000), ["10.0.0.1", 4001], ("/run/sock", None), None, (), ("x",)):
        tally.count("1.1", client)
    assert tally.statistics() == {"1.1": {"requests": 6, "connections": 3}}
