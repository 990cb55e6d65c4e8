"""providers._http.fetch: one request within its deadline and body cap, always closed.

Every way a request ends (read whole, refused as too large before or while
its body is read, cut by the total deadline) hands the response back: its
stream is closed, so the pool's connection is released, as ``client.stream``
would have.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator

import httpx
import pytest
import trio
import trio.testing

from providers._http import fetch
from providers.base import ChannelConfig, ProviderError, TransientError
from providers.telegram import TelegramProvider


class _Body(httpx.AsyncByteStream):
    """A response body in chunks; optionally one that never ends. Counts its closes."""

    def __init__(self, chunks: list[bytes], *, stall: bool = False) -> None:
        self.chunks = chunks
        self.stall = stall
        self.closed = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
        if self.stall:
            await trio.sleep_forever()

    async def aclose(self) -> None:
        self.closed += 1


def _client(body: _Body, seen: list[httpx.Request], headers: dict[str, str]) -> httpx.AsyncClient:
    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, headers=headers, stream=body)

    return httpx.AsyncClient(transport=httpx.MockTransport(answer), base_url="http://platform")


async def test_an_answer_is_read_whole_and_its_response_closed() -> None:
    body, seen = _Body([b'{"ok":', b"true}"]), []
    async with _client(body, seen, {}) as client:
        answer = await fetch(
            client,
            "POST",
            "/bot/sendMessage",
            deadline=5.0,
            max_body=100,
            what="test send",
            json={"chat_id": 1},
            headers={"X-Test": "yes"},
        )
    assert (answer.status_code, answer.content) == (200, b'{"ok":true}')
    assert body.closed == 1
    [request] = seen
    assert request.url == "http://platform/bot/sendMessage"
    assert request.headers["x-test"] == "yes"
    assert json.loads(request.content) == {"chat_id": 1}


@pytest.mark.parametrize(
    ("chunks", "headers", "detail"),
    [
        ([b"x" * 10], {"content-length": "1000"}, "it announced 1000 bytes"),
        ([b"x" * 60, b"x" * 60], {}, "its body went on past that"),
    ],
)
async def test_a_body_over_the_cap_is_refused_and_its_response_closed(
    chunks: list[bytes], headers: dict[str, str], detail: str
) -> None:
    body, seen = _Body(chunks), []
    async with _client(body, seen, headers) as client:
        with pytest.raises(TransientError, match=detail):
            await fetch(client, "GET", "/big", deadline=5.0, max_body=100, what="test get")
    assert body.closed == 1


async def test_a_body_that_never_ends_is_cut_at_the_deadline_and_its_response_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    body, seen = _Body([b"{"], stall=True), []
    async with _client(body, seen, {}) as client:
        began = trio.current_time()
        with pytest.raises(TransientError, match="no complete answer within 7 s"):
            await fetch(client, "GET", "/drip", deadline=7.0, max_body=100, what="test get")
        assert trio.current_time() - began == 7.0
    assert body.closed == 1


async def test_a_request_goes_straight_to_the_transport_and_keeps_no_cookie() -> None:
    # No auth flow, no redirect handling, no cookie jar around each request:
    # a platform's Set-Cookie is not kept, so the next request carries none.
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, headers={"Set-Cookie": "session=abc; Path=/"}, content=b"{}")

    async with httpx.AsyncClient(
        transport=httpx.MockTransport(answer),
        base_url="http://platform",
        headers={"Authorization": "Bot t"},
    ) as client:
        for _ in range(2):
            answer_ = await fetch(
                client, "GET", "/getMe", deadline=5.0, max_body=100, what="test call"
            )
            assert answer_.status_code == 200
        assert len(client.cookies) == 0
    assert [str(r.url) for r in seen] == ["http://platform/getMe"] * 2
    assert all(r.headers["Authorization"] == "Bot t" for r in seen)  # the client's defaults
    assert "cookie" not in seen[1].headers


async def test_a_transport_error_names_its_request_as_the_client_would() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    async with httpx.AsyncClient(
        transport=httpx.MockTransport(refuse), base_url="http://platform"
    ) as client:
        with pytest.raises(httpx.ConnectError) as caught:
            await fetch(client, "POST", "/send", deadline=5.0, max_body=100, what="test send")
    assert str(caught.value.request.url) == "http://platform/send"


async def test_the_transport_is_the_one_the_client_picks_for_the_url() -> None:
    # A mount (as an environment proxy makes one) still routes its URLs.
    hits: list[str] = []

    def by(name: str) -> httpx.MockTransport:
        return httpx.MockTransport(lambda request: (hits.append(name), httpx.Response(204))[1])

    async with httpx.AsyncClient(
        transport=by("default"), mounts={"http://proxied": by("mounted")}
    ) as client:
        for url in ("http://proxied/x", "http://other/y"):
            await fetch(client, "GET", url, deadline=5.0, max_body=10, what="test call")
    assert hits == ["mounted", "default"]


async def test_a_closed_client_refuses_a_request_instead_of_sending_it() -> None:
    sent: list[httpx.Request] = []
    client = httpx.AsyncClient(
        transport=httpx.MockTransport(
            lambda request: (sent.append(request), httpx.Response(200))[1]
        )
    )
    await client.aclose()
    with pytest.raises(TransientError, match="could not be read"):
        await fetch(client, "GET", "http://platform/x", deadline=5.0, max_body=10, what="late")
    assert sent == []


TELEGRAM_TOKEN = "123456:" + "a" * 35


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def test_userinfo_in_a_url_is_still_sent_as_basic_auth() -> None:
    # A base_url with user:password@ (a reverse proxy in front of the
    # platform; providers.masking hides it in reprs) is HTTP Basic auth, made
    # by the client's auth flow; the transport alone would drop it.
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=b"{}")

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        await fetch(
            client,
            "POST",
            "http://bot:s3cret@platform/botT/getMe",
            deadline=5.0,
            max_body=100,
            what="test call",
            json={},
        )
    assert seen[0].headers.get("authorization") == _basic("bot", "s3cret")


async def test_userinfo_in_a_client_base_url_is_still_sent_as_basic_auth() -> None:
    # The Discord shell's shape: base_url on the client, its own Authorization
    # header absent here (a proxy's Basic auth in the URL).
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=b"{}")

    async with httpx.AsyncClient(
        transport=httpx.MockTransport(answer), base_url="http://bot:s3cret@platform/api"
    ) as client:
        await fetch(client, "GET", "/gateway/bot", deadline=5.0, max_body=100, what="t")
    assert seen[0].headers.get("authorization") == _basic("bot", "s3cret")


@pytest.mark.parametrize(
    "location",
    [
        pytest.param("http://[::1", id="ipv6-unclosed"),
        pytest.param("http://[bad", id="bracket"),
    ],
)
async def test_a_redirect_to_an_unparsable_location_is_a_provider_error(location: str) -> None:
    # A 3xx whose Location urllib cannot read is still a redirect, so a
    # TransientError (the channel backs off), not a ValueError from the core.
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"Location": location})

    provider = TelegramProvider(transport=httpx.MockTransport(answer))
    cfg = ChannelConfig(
        channel_id="tg:test",
        provider="telegram",
        credentials={"token": TELEGRAM_TOKEN},
        base_url="http://telegram.emulator",
        options={"poll_timeout": 1},
    )
    with pytest.raises(ProviderError) as caught:
        async with provider.open_connection(cfg):
            pass
    assert isinstance(caught.value, TransientError)
