"""Leftovers of the HTTP providers' fault run (Telegram, WhatsApp): each test is a
defect an earlier run found and left.

A Graph API answer whose message id is not a string, a 503 whose ``Retry-After``
was not waited, a ``Retry-After`` given as an HTTP date, and a Telegram 5xx page
that echoes the bot's token. Pure tests of the sans-IO cores, and the shells and
the node against a scripted ``httpx`` transport on trio's virtual clock: no
sockets, no real sleeps.
"""

from __future__ import annotations

import json
from email.utils import parsedate_to_datetime
from typing import Any, Final

import httpx
import pytest
import trio
import trio.testing

from providers._http import retry_after_header
from providers.base import (
    MAX_RETRY_AFTER,
    ChannelConfig,
    ProviderError,
    RateLimited,
    TransientError,
)
from providers.telegram import TelegramProvider
from providers.telegram import core as telegram_core
from providers.whatsapp import core as whatsapp_core
from runtime import open_node

from .support import CEILING, telegram_me
from .test_http_send_faults import (
    FAST,
    MESSAGE,
    TG_TOKEN,
    FakeTelegram,
    error_texts,
    tg_config,
    tg_node,
    wa_node,
)

MAINTENANCE: Final = 20.0  # seconds a 503's Retry-After asks for
PAST: Final = "Wed, 21 Oct 2015 07:28:00 GMT"  # RFC 9110's own example
FAR_FUTURE: Final = "Fri, 01 Jan 2100 00:00:00 GMT"


def wa_answer(posts: list[float], *, first: httpx.Response | None = None, body: Any = None) -> Any:
    """A Graph API whose first message post is answered ``first`` (if given) and the
    rest ``body`` (a message id by default); when each post came is in ``posts``."""

    def answer(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json={"id": "123"})
        posts.append(trio.current_time())
        if first is not None and len(posts) == 1:
            return first
        return httpx.Response(200, json=body or {"messages": [{"id": "wamid.1"}]})

    return answer


# --- 1. a WhatsApp message id that is JSON null (or no string) ----------------------------


@pytest.mark.parametrize("message_id", [None, 5, {"id": "wamid.1"}], ids=["null", "int", "object"])
async def test_an_accepted_whatsapp_send_whose_id_is_not_a_string_is_delivered_once(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch, message_id: Any
) -> None:
    """A 2xx of the Graph API's own whose ``messages[0].id`` is JSON ``null`` (or a
    number, an object) has no readable id: it is answered with no message id
    (``""``) and not sent again, as one without the id is. The converter read
    ``null`` as the id ``"None"`` (and ``5`` as ``"5"``): the sender kept an id
    WhatsApp never gave, and an edit, a reaction or a reply to it named it."""
    posts: list[float] = []
    body = {"messaging_product": "whatsapp", "messages": [{"id": message_id}]}
    with trio.fail_after(CEILING):
        async with wa_node(wa_answer(posts, body=body), monkeypatch) as node:
            result = await node.send("wa", MESSAGE)
    assert len(posts) == 1
    assert result.platform_message_id == "" and result.peer == MESSAGE.peer


def test_a_whatsapp_upload_answered_with_a_null_id_is_not_the_id_none() -> None:
    """An upload answered ``{"id": null}`` has no media id: a ``TransientError``,
    as one without the id. It was the media id ``"None"``, which the message then
    carried, and Meta refused it as an unknown media (a permanent refusal)."""
    with pytest.raises(TransientError):
        whatsapp_core.parse_media_response(200, {}, b'{"id": null}', peer="42")


# --- 2. a 503 with Retry-After (maintenance) ----------------------------------------------


def tg_503(body: bytes, retry_after: str) -> ProviderError:
    try:
        telegram_core.parse_response(
            telegram_core.send_request(MESSAGE), 503, body, {"Retry-After": retry_after}
        )
    except ProviderError as exc:
        return exc
    raise AssertionError("a 503 raised nothing")


def wa_503(body: bytes, retry_after: str) -> ProviderError:
    try:
        whatsapp_core.parse_send_response(503, {"Retry-After": retry_after}, body, peer="42")
    except ProviderError as exc:
        return exc
    raise AssertionError("a 503 raised nothing")


TG_503_JSON: Final = b'{"ok": false, "error_code": 503, "description": "Service Unavailable"}'
WA_503_JSON: Final = json.dumps({"error": {"code": 2, "message": "Service unavailable"}}).encode()
UNAVAILABLE: Final = [
    lambda retry_after: tg_503(TG_503_JSON, retry_after),
    lambda retry_after: tg_503(b"<html>down for maintenance</html>", retry_after),
    lambda retry_after: wa_503(WA_503_JSON, retry_after),
    lambda retry_after: wa_503(b"<html>down for maintenance</html>", retry_after),
]
UNAVAILABLE_IDS: Final = ["telegram-json", "telegram-page", "whatsapp-graph", "whatsapp-page"]


@pytest.mark.parametrize("make", UNAVAILABLE, ids=UNAVAILABLE_IDS)
def test_a_503_s_retry_after_is_the_least_wait_of_a_transient_error(make: Any) -> None:
    """A 503 with ``Retry-After`` (a platform in maintenance) stays a
    ``TransientError`` (retried with backoff, not a rate limit that pauses the
    whole channel), and carries the header's wait as the least wait before its
    retry. The header was not read: the retry came at the send backoff's pace,
    within milliseconds, into the maintenance."""
    error = make("30")
    assert isinstance(error, TransientError) and not isinstance(error, RateLimited)
    assert error.retry_after == 30.0


@pytest.mark.parametrize("make", UNAVAILABLE, ids=UNAVAILABLE_IDS)
def test_a_503_s_retry_after_is_kept_within_the_longest_wait(make: Any) -> None:
    """A 503's wait is bounded as a 429's is (``MAX_RETRY_AFTER``)."""
    assert make("99999999").retry_after == MAX_RETRY_AFTER


async def test_a_telegram_send_refused_with_503_is_retried_after_its_retry_after(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the node: the retry of a send refused with 503 and ``Retry-After:
    20`` comes 20 s later at the earliest (the send backoff alone: 0.05 s at
    most), and the message is delivered."""
    sent_at: list[float] = []

    def send(body: dict[str, Any]) -> httpx.Response:
        sent_at.append(trio.current_time())
        if len(sent_at) == 1:
            return httpx.Response(
                503, content=TG_503_JSON, headers={"Retry-After": f"{MAINTENANCE:g}"}
            )
        sent = {"message_id": 1, "chat": {"id": body["chat_id"]}, "date": 0}
        return httpx.Response(200, json={"ok": True, "result": sent})

    fake = FakeTelegram(send)
    with trio.fail_after(CEILING):
        async with tg_node(fake, monkeypatch) as node:
            result = await node.send("tg", MESSAGE)
    assert result.platform_message_id == "42:1"
    assert len(sent_at) == 2
    assert sent_at[1] - sent_at[0] >= MAINTENANCE


async def test_a_whatsapp_send_refused_with_503_is_retried_after_its_retry_after(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same for WhatsApp."""
    posts: list[float] = []
    unavailable = httpx.Response(
        503, content=b"<html>maintenance</html>", headers={"Retry-After": f"{MAINTENANCE:g}"}
    )
    with trio.fail_after(CEILING):
        async with wa_node(wa_answer(posts, first=unavailable), monkeypatch) as node:
            result = await node.send("wa", MESSAGE)
    assert result.platform_message_id == "wamid.1"
    assert len(posts) == 2
    assert posts[1] - posts[0] >= MAINTENANCE


async def test_a_telegram_poll_refused_with_503_reconnects_after_its_retry_after(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long poll refused with 503 and ``Retry-After`` ends the link as a
    transient failure, and the channel connects again no sooner than the header
    asks (its reconnect backoff alone: 0.2 s at most)."""
    refused_at: list[float] = []
    connected_at: list[float] = []
    back = trio.Event()

    async def answer(request: httpx.Request) -> httpx.Response:
        method = request.url.path.rsplit("/", 1)[-1]
        body = json.loads(request.content or b"{}")
        if method == "getMe":
            connected_at.append(trio.current_time())
            if refused_at:
                back.set()
            return telegram_me()
        if not refused_at:
            refused_at.append(trio.current_time())
            return httpx.Response(
                503, content=TG_503_JSON, headers={"Retry-After": f"{MAINTENANCE:g}"}
            )
        await trio.sleep(body.get("timeout", 0))  # (virtual) a long poll, held
        return httpx.Response(200, json={"ok": True, "result": []})

    monkeypatch.setenv("H2_TG_TOKEN", TG_TOKEN)
    provider = TelegramProvider(transport=httpx.MockTransport(answer))
    with trio.fail_after(CEILING):
        async with open_node(tg_config(), channel_defaults=FAST, providers={"telegram": provider}):
            await back.wait()
    assert connected_at[1] - refused_at[0] >= MAINTENANCE


# --- 3. a Retry-After given as an HTTP date --------------------------------------------------


def test_a_retry_after_date_is_read_against_the_wall_clock() -> None:
    """``Retry-After: <HTTP date>`` (RFC 9110) is the seconds from ``now`` (the
    wall clock's) to that date, none for a date gone by. It was ignored: the
    wait was the platform's default."""
    now = parsedate_to_datetime(PAST).timestamp() - 120
    assert retry_after_header({"Retry-After": PAST}, now=now) == 120.0
    assert retry_after_header({"Retry-After": PAST}, now=now + 600) == 0.0
    assert retry_after_header({"Retry-After": "soon"}, now=now) is None


@pytest.mark.parametrize(
    ("date", "expected"), [(PAST, 0.0), (FAR_FUTURE, MAX_RETRY_AFTER)], ids=["past", "far-future"]
)
def test_a_telegram_429_waits_as_its_retry_after_date_says(date: str, expected: float) -> None:
    """A Telegram 429 whose wait is only in a ``Retry-After`` date waits until
    then: at once for a date gone by, an hour at most (``MAX_RETRY_AFTER``) as
    the seconds form is bounded. It waited the default 1 s either way."""
    with pytest.raises(RateLimited) as caught:
        telegram_core.parse_response(
            telegram_core.send_request(MESSAGE), 429, b"", {"Retry-After": date}
        )
    assert caught.value.retry_after == expected


@pytest.mark.parametrize(
    ("date", "expected"), [(PAST, 0.0), (FAR_FUTURE, MAX_RETRY_AFTER)], ids=["past", "far-future"]
)
def test_a_whatsapp_429_waits_as_its_retry_after_date_says(date: str, expected: float) -> None:
    """The same for WhatsApp (its default was 1 s)."""
    with pytest.raises(RateLimited) as caught:
        whatsapp_core.parse_send_response(429, {"Retry-After": date}, b"", peer="42")
    assert caught.value.retry_after == expected


def test_a_503_s_retry_after_date_is_its_least_wait() -> None:
    """A 503's ``Retry-After`` date is read as its seconds are (bounded)."""
    assert tg_503(TG_503_JSON, FAR_FUTURE).retry_after == MAX_RETRY_AFTER
    assert wa_503(WA_503_JSON, "Wed, 21 Oct 2015 07:28:00 +0000").retry_after == 0.0


# --- 4. a Telegram 5xx page that echoes the bot's token ---------------------------------------

ECHOED_TOKEN: Final = "123456:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"  # a real token's shape
SECRET: Final = ECHOED_TOKEN.partition(":")[2]  # the part after the bot's id


@pytest.mark.parametrize("before", [0, 33], ids=["whole", "cut-by-the-snippet"])
async def test_a_telegram_5xx_page_that_echoes_the_token_does_not_leak_it(
    autojump_clock: trio.testing.MockClock, before: int
) -> None:
    """A 5xx to a send whose body is not the Bot API's JSON (a proxy's error page
    that echoes the request's path, ``/bot<token>/sendMessage``) is quoted in part
    (80 bytes) in the send's error: the token in it is masked, whole or cut by the
    quote. It went out as it was, to the sender, the logs, the channel's last
    error and the dead letters."""
    page = ("x" * before + f"<html>502 Bad Gateway: /bot{ECHOED_TOKEN}/sendMessage</html>").encode()

    async def answer(request: httpx.Request) -> httpx.Response:
        method = request.url.path.rsplit("/", 1)[-1]
        if method == "getMe":
            return telegram_me()
        if method == "getUpdates":
            await trio.sleep_forever()
        return httpx.Response(502, content=page)

    config = ChannelConfig(
        channel_id="tg",
        provider="telegram",
        credentials={"token": ECHOED_TOKEN},
        base_url="http://telegram.test",
        options={"poll_timeout": 5},
    )
    provider = TelegramProvider(transport=httpx.MockTransport(answer))
    with trio.fail_after(CEILING), pytest.raises(TransientError) as caught:
        async with provider.open_connection(config) as conn:
            await conn.send(MESSAGE)
    text = error_texts(caught.value)
    assert "502" in text
    leaked = [SECRET[i : i + 6] for i in range(len(SECRET) - 6) if SECRET[i : i + 6] in text]
    assert not leaked, text
