"""The emulated Discord's global rate limit: 50 requests per second per bot token.

The emulator's ASGI app (as served: behind the latency and the HTTP faults)
runs in memory through ``httpx.ASGITransport``, so the autojump clock keeps
exact virtual times (no sockets, no wall clock). The window is fixed and
starts at a token's first request; a refused request is not counted.
"""

from __future__ import annotations

import random
from typing import Any, Final

import httpx
import pytest
import trio
import trio.testing

from actors import ExponentialBackoff
from actors.channel.send import SendAction, decide
from providers.base import RateLimited, RateLimitScope
from providers.discord.rest import interpret_send
from providers.emulators.discord import DiscordEmulator
from providers.emulators.discord.state import GLOBAL_LIMIT

BASE: Final = "http://discord.in-memory"  # never resolved: the transport is in memory
CEILING: Final = 30.0  # virtual seconds; only a hang gets near it


def _client(emulator: DiscordEmulator, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=emulator.served_app),
        base_url=BASE,
        headers={"Authorization": f"Bot {token}"},
    )


async def _post(client: httpx.AsyncClient, channel: int) -> httpx.Response:
    """A message to a DM channel of its own, so no route bucket binds."""
    return await client.post(f"/api/v10/channels/{channel}/messages", json={"content": "hi"})


def _is_global_429(answer: httpx.Response, retry_after: float, header: str = "1") -> bool:
    body: dict[str, Any] = answer.json()
    return (
        answer.status_code == 429
        and body["global"] is True
        and body["retry_after"] == pytest.approx(retry_after)
        and answer.headers["X-RateLimit-Global"] == "true"
        and answer.headers["X-RateLimit-Scope"] == "global"
        and answer.headers["Retry-After"] == header  # whole seconds, rounded up
        and answer.headers["Via"] == "1.1 google"
    )


async def test_the_51st_request_of_a_token_within_a_second_is_a_global_429(
    autojump_clock: trio.testing.MockClock,
) -> None:
    assert GLOBAL_LIMIT == (50, 1.0)
    emulator = DiscordEmulator()
    with trio.fail_after(CEILING):
        async with _client(emulator, "bot-a") as a, _client(emulator, "bot-b") as b:
            began = trio.current_time()
            first = [await _post(a, 1000 + n) for n in range(50)]
            await trio.sleep_until(began + 0.4)
            refused = await _post(a, 2000)
            other = await b.get("/api/v10/users/@me")  # another bot has its own window
            await trio.sleep_until(began + 1.0)
            next_window = await _post(a, 2001)
    assert [r.status_code for r in first] == [200] * 50
    assert _is_global_429(refused, 0.6)
    assert other.status_code == 200
    assert next_window.status_code == 200
    assert emulator.stats["rest_429_global"] == 1 and emulator.stats["rest_429"] == 1
    assert emulator.stats["messages_sent"] == 51


async def test_the_window_starts_at_the_token_s_first_request_and_counts_every_route(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A window of 3 per 0.5 s: a request at 0.2 opens it, two more (another
    # route, then a send) fill it, the fourth just before 0.7 is refused and
    # not counted, and the one at 0.7 opens the next window.
    emulator = DiscordEmulator(global_limit=(3, 0.5))
    with trio.fail_after(CEILING):
        async with _client(emulator, "bot-a") as a:
            began = trio.current_time()
            await trio.sleep_until(began + 0.2)
            opened = [await a.get("/api/v10/gateway/bot"), await a.get("/api/v10/users/@me")]
            await trio.sleep_until(began + 0.6)
            filled = await _post(a, 1)
            await trio.sleep_until(began + 0.69)
            refused = await _post(a, 2)
            await trio.sleep_until(began + 0.7)
            taken = [await _post(a, 3 + n) for n in range(3)]
            past = await _post(a, 9)
    assert [r.status_code for r in opened] == [200, 200] and filled.status_code == 200
    assert _is_global_429(refused, 0.01)
    assert [r.status_code for r in taken] == [200, 200, 200]
    assert _is_global_429(past, 0.5)
    assert emulator.stats["rest_429_global"] == 2


async def test_unauthorised_requests_do_not_count(
    autojump_clock: trio.testing.MockClock,
) -> None:
    emulator = DiscordEmulator(global_limit=(2, 1.0), tokens={"bot-a"})
    with trio.fail_after(CEILING):
        async with _client(emulator, "bot-a") as a, _client(emulator, "stranger") as s:
            strangers = [await s.get("/api/v10/users/@me") for _ in range(5)]
            own = [await a.get("/api/v10/users/@me") for _ in range(3)]
    assert [r.status_code for r in strangers] == [401] * 5
    assert [r.status_code for r in own] == [200, 200, 429]


async def test_the_injected_global_rate_limit_still_refuses_every_token_and_lifts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The base's ``rate_limit`` fault: a global 429 for its duration, whatever
    # the tokens' windows say; the refusals it answers use up no window.
    emulator = DiscordEmulator(global_limit=(2, 10.0))
    with trio.fail_after(CEILING):
        async with _client(emulator, "bot-a") as a, _client(emulator, "bot-b") as b:
            began = trio.current_time()
            fault = await a.post("/_emulator/fault", json={"kind": "rate_limit", "duration": 1.5})
            refused = [await _post(a, n) for n in range(4)]
            await trio.sleep_until(began + 1.0)
            other = await _post(b, 5)
            await trio.sleep_until(began + 1.5)
            lifted = [await _post(a, 10 + n) for n in range(3)]
    assert fault.status_code == 200
    assert all(_is_global_429(r, 1.5, "2") for r in refused)
    assert _is_global_429(other, 0.5)
    assert [r.status_code for r in lifted] == [200, 200, 429]  # the window: 2 per 10 s
    assert emulator.stats["rest_429_global"] == 6


async def test_the_provider_reads_a_global_429_as_a_pause_of_the_whole_channel(
    autojump_clock: trio.testing.MockClock,
) -> None:
    emulator = DiscordEmulator(global_limit=(1, 1.0))
    with trio.fail_after(CEILING):
        async with _client(emulator, "bot-a") as a:
            await _post(a, 1)
            answer = await _post(a, 2)
    with pytest.raises(RateLimited) as raised:
        interpret_send(answer.status_code, answer.headers, answer.content, peer="2")
    error = raised.value
    assert error.scope is RateLimitScope.GLOBAL and error.retry_after == pytest.approx(1.0)
    decision = decide(
        error,
        peer="2",
        attempts=1,
        max_attempts=5,
        backoff=ExponentialBackoff(base=1.0, cap=1.0),
        rng=random.Random(1),
    )
    assert decision.action is SendAction.PAUSE and decision.pause_peer is None
    assert decision.delay == pytest.approx(1.0)
