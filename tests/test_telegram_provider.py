"""TelegramProvider against the in-process TelegramEmulator over real sockets.

Real sockets mean real time: no MockClock in those tests. Long polls use
timeouts of one or two seconds, which only matter when nothing happens; every
test has a hard ceiling. What depends on time (how long a poll is held, how
many seconds a 429 asks for) runs the emulator's ASGI app in memory instead
(``httpx.ASGITransport``, which the provider takes as ``transport``): no
sockets, so virtual time, and the tests assert exact times.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any, Final

import httpx
import pytest
import trio
import trio.testing
from hypercorn.config import Config
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from providers.base import (
    AuthenticationFailed,
    BadRecipient,
    ChannelConfig,
    Conflict,
    ConnectionState,
    ConnectionStateChanged,
    Event,
    InboundMessage,
    Media,
    MediaKind,
    MessageEdited,
    OutboundMessage,
    ProviderError,
    RateLimited,
    SendResult,
    SessionState,
    TransientError,
)
from providers.emulators import open_emulator
from providers.emulators.telegram import TelegramEmulator
from providers.serving import serve_asgi
from providers.telegram import SECRET_HEADER, TelegramConnection, TelegramProvider
from tests.support import control, yield_until

CEILING: Final = 15.0  # seconds of real time; only a hang gets near it
TOKEN: Final = "123456:" + "A" * 35
OTHER_TOKEN: Final = "654321:" + "b" * 35
SECRET: Final = "hook-secret_1"


def config(url: str, token: str = TOKEN, **options: Any) -> ChannelConfig:
    return ChannelConfig(
        channel_id="tg:test",
        provider="telegram",
        credentials={"token": token},
        base_url=url,
        options={"poll_timeout": 1, **options},
    )


def msg(text: str, peer: str = "42", **fields: Any) -> OutboundMessage:
    return OutboundMessage(peer=peer, idempotency_key=text, text=text, **fields)


async def inject(url: str, text: str, chat_id: int = 42, **extra: Any) -> dict[str, Any]:
    result: dict[str, Any] = await control(
        url, "inject", {"chat_id": chat_id, "text": text, **extra}
    )
    return result


async def next_message(events: AsyncIterator[Event]) -> InboundMessage | MessageEdited:
    event = await anext(events)
    assert isinstance(event, InboundMessage | MessageEdited), event
    return event


@contextlib.asynccontextmanager
async def emulator() -> AsyncIterator[tuple[TelegramEmulator, str]]:
    emu = TelegramEmulator()
    async with open_emulator(emu) as url:
        yield emu, url


@contextlib.asynccontextmanager
async def connected(
    url: str,
    session: SessionState | None = None,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    **options: Any,
) -> AsyncIterator[tuple[TelegramConnection, AsyncIterator[Event]]]:
    """A polling connection and its events, past the initial state change."""
    provider = TelegramProvider(transport=transport)
    async with provider.open_connection(config(url, **options), session) as conn:
        async with contextlib.aclosing(conn.events()) as events:
            first = await anext(events)
            assert isinstance(first, ConnectionStateChanged)
            yield conn, events


async def wait_for(condition: Any) -> None:
    """Poll an in-process condition (the emulator's state) without a fixed sleep."""
    while not condition():  # noqa: ASYNC110 - the state lives in another object
        await trio.sleep(0.005)


IN_MEMORY: Final = "http://telegram.emulator"  # never resolved: the transport is in memory


def in_memory(emu: TelegramEmulator) -> httpx.ASGITransport:
    """The emulator's app as an httpx transport: no sockets, so virtual time works."""
    return httpx.ASGITransport(app=emu.app)


# --- inbound, outbound ------------------------------------------------------------------------


async def test_injected_messages_arrive_as_inbound_messages_and_edits() -> None:
    with trio.fail_after(CEILING):
        async with emulator() as (emu, url):
            provider = TelegramProvider()
            assert provider.name == "telegram" and provider.limits.per_peer_rate == 1.0
            async with provider.open_connection(config(url)) as conn:
                async with contextlib.aclosing(conn.events()) as events:
                    assert await anext(events) == ConnectionStateChanged(
                        channel_id="tg:test",
                        state=ConnectionState.CONNECTED,
                        detail="polling as @emu123456_bot",
                    )
                    await inject(url, "hello", from_id=7, username="ann")
                    event = await next_message(events)
                    assert isinstance(event, InboundMessage)
                    assert (event.platform_message_id, event.peer, event.sender, event.text) == (
                        "42:1",
                        "42",
                        "7",
                        "hello",
                    )
                    assert event.metadata["username"] == "ann"
                    await inject(url, "hello!", edit_message_id=1)
                    edit = await next_message(events)
                    assert isinstance(edit, MessageEdited)
                    assert (edit.platform_message_id, edit.text) == ("42:1", "hello!")
                    assert repr(conn) == "<TelegramConnection tg:test polling offset=3 [OPEN]>"
            assert repr(conn) == "<TelegramConnection tg:test polling offset=3 [CLOSED]>"
            assert emu.bots[TOKEN].updates == []  # close confirmed the offset


async def test_sends_appear_in_sent() -> None:
    with trio.fail_after(CEILING):
        async with emulator() as (emu, url), connected(url) as (conn, _):
            await inject(url, "question")
            assert await conn.send(msg("answer", reply_to="42:1")) == SendResult(
                platform_message_id="42:2", peer="42"
            )
            photo = Media(kind=MediaKind.IMAGE, url="https://cdn.example/cat.jpg", caption="cat")
            sent = await conn.send(OutboundMessage(peer="43", idempotency_key="p", media=photo))
            assert sent.platform_message_id == "43:1"
            records = await control(url, "sent")
            assert records == [
                {
                    "bot_id": 123456,
                    "method": "sendMessage",
                    "chat_id": 42,
                    "text": "answer",
                    "reply_to_message_id": 1,
                    "message_id": 2,
                },
                {
                    "bot_id": 123456,
                    "method": "sendPhoto",
                    "chat_id": 43,
                    "media": "https://cdn.example/cat.jpg",
                    "caption": "cat",
                    "message_id": 1,
                },
            ]
            assert emu.sent == records
        with pytest.raises(trio.ClosedResourceError, match="is closed"):
            await conn.send(msg("late"))


@pytest.mark.parametrize("fault", ["unknown_chat", "block"])
async def test_unreachable_chats_are_bad_recipients(fault: str) -> None:
    with trio.fail_after(CEILING):
        async with emulator() as (_, url), connected(url) as (conn, _):
            await control(url, "fault", {"kind": fault, "chat_id": 13})
            with pytest.raises(BadRecipient) as info:
                await conn.send(msg("hi", peer="13"))
            assert info.value.peer == "13"


# --- the offset across reconnects ---------------------------------------------------------------


async def test_the_offset_survives_a_reconnect_without_replay_or_loss() -> None:
    with trio.fail_after(CEILING):
        async with emulator() as (emu, url):
            async with connected(url) as (conn, events):
                for text in ("one", "two"):
                    await inject(url, text)
                assert [(await next_message(events)).text for _ in range(2)] == ["one", "two"]
                state = conn.session_state()
            assert state == SessionState(provider="telegram", data={"offset": 3})
            for text in ("three", "four"):  # while nobody polls
                await inject(url, text)
            async with connected(url, session=state) as (conn, events):
                got = [(await next_message(events)).text for _ in range(2)]
                await inject(url, "five")
                got.append((await next_message(events)).text)
            assert got == ["three", "four", "five"]
            assert conn.session_state().data == {"offset": 6}
            assert emu.bots[TOKEN].updates == []


async def test_updates_polled_but_not_handed_out_are_not_confirmed() -> None:
    with trio.fail_after(CEILING):
        async with emulator() as (_, url):
            await make_bot_known(url)
            for text in ("a", "b", "c"):
                await inject(url, text)
            # One getUpdates fetches all three; the consumer takes only one.
            async with connected(url) as (conn, events):
                assert (await next_message(events)).text == "a"
                state = conn.session_state()
            assert state.data == {"offset": 2}
            async with connected(url, session=state) as (conn, events):
                assert [(await next_message(events)).text for _ in range(2)] == ["b", "c"]
                state = conn.session_state()
            assert state.data == {"offset": 4}


async def test_an_update_is_confirmed_only_once_its_consumer_comes_back_for_more() -> None:
    """Taken is not kept: the channel stores an update before it asks for the next one,
    and a getUpdates sent meanwhile would confirm it, so a kill -9 then would lose it."""
    emu = TelegramEmulator()
    with trio.fail_after(CEILING):
        async with httpx.AsyncClient(transport=in_memory(emu), base_url=IN_MEMORY) as client:
            assert (await client.get(f"/bot{TOKEN}/getMe")).json()["ok"] is True

            async def inject_text(text: str) -> None:
                answer = await client.post("/_emulator/inject", json={"chat_id": 42, "text": text})
                assert answer.status_code == 200

            transport = in_memory(emu)
            async with connected(IN_MEMORY, transport=transport, poll_timeout=30) as (conn, events):
                await inject_text("keep me")
                assert (await next_message(events)).text == "keep me"
                await trio.testing.wait_all_tasks_blocked()  # the consumer is still at it
                assert [u["update_id"] for u in emu.bots[TOKEN].updates] == [1]  # not confirmed
                async with trio.open_nursery() as nursery:
                    taken: list[str] = []

                    async def consume() -> None:
                        taken.append((await next_message(events)).text)

                    nursery.start_soon(consume)  # back for more: the poller confirms update 1
                    await yield_until(lambda: not emu.bots[TOKEN].updates)
                    await inject_text("next")
                assert taken == ["next"]
                assert conn.session_state().data == {"offset": 3}


async def make_bot_known(url: str) -> None:
    """Make the emulator know the bot (its first API call) so inject can address it."""
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{url}/bot{TOKEN}/getMe")).json()["ok"] is True


# --- fatal and retryable failures ----------------------------------------------------------------


async def test_a_second_poller_makes_the_first_fail_with_conflict() -> None:
    with trio.fail_after(CEILING):
        async with emulator() as (emu, url), connected(url, poll_timeout=5) as (first, events):
            await wait_for(lambda: emu.bots[TOKEN].poll is not None)
            async with connected(url, poll_timeout=5) as (_, second_events):
                with pytest.raises(Conflict, match="terminated by other getUpdates request"):
                    await anext(events)
                assert repr(first).endswith("[BROKEN]>")
                await inject(url, "for the survivor")
                assert (await next_message(second_events)).text == "for the survivor"
            assert emu.stats["conflicts"] == 1


async def test_polling_while_a_webhook_is_set_is_a_conflict() -> None:
    with trio.fail_after(CEILING):
        async with emulator() as (_, url):
            async with httpx.AsyncClient() as client:
                answer = await client.post(
                    f"{url}/bot{TOKEN}/setWebhook", json={"url": "http://127.0.0.1:9/hook"}
                )
                assert answer.json() == {"ok": True, "result": True}
            with pytest.raises(Conflict, match="webhook is active"):
                async with connected(url) as (_, events):
                    await anext(events)


@pytest.mark.parametrize(
    ("setup", "token", "expected", "match"),
    [
        ({"kind": "ban_token", "token": TOKEN}, TOKEN, AuthenticationFailed, "401 Unauthorized"),
        (None, "123:short", AuthenticationFailed, "404 Not Found"),
        ({"kind": "server_error", "count": 1, "status": 502}, TOKEN, TransientError, "502"),
    ],
)
async def test_failures_on_open(
    setup: dict[str, Any] | None, token: str, expected: type[ProviderError], match: str
) -> None:
    with trio.fail_after(CEILING):
        async with emulator() as (_, url):
            if setup is not None:
                await control(url, "fault", setup)
            with pytest.raises(expected, match=match) as info:
                async with TelegramProvider().open_connection(config(url, token=token)):
                    pass
            assert TOKEN not in str(info.value)


async def test_a_rate_limit_on_open_asks_for_the_whole_seconds_left(
    autojump_clock: trio.testing.MockClock,
) -> None:
    emu = TelegramEmulator()
    provider = TelegramProvider(transport=in_memory(emu))
    with trio.fail_after(CEILING):  # virtual seconds
        async with httpx.AsyncClient(transport=in_memory(emu), base_url=IN_MEMORY) as client:
            await client.post("/_emulator/fault", json={"kind": "rate_limit", "duration": 2.5})
        for waited, retry_after in ((0.0, 3.0), (1.0, 2.0), (1.0, 1.0)):  # 2.5, 1.5, 0.5 left
            await trio.sleep(waited)
            with pytest.raises(RateLimited, match=f"wait {retry_after:g} s") as info:
                async with provider.open_connection(config(IN_MEMORY)):
                    pass
            assert info.value.retry_after == retry_after
            assert TOKEN not in str(info.value)
        await trio.sleep(0.5)  # the 2.5 s are over
        async with provider.open_connection(config(IN_MEMORY)):
            pass
    assert trio.current_time() == 2.5


async def test_an_unreachable_api_is_transient() -> None:
    with trio.fail_after(CEILING):
        with pytest.raises(TransientError, match="ConnectError") as info:
            async with TelegramProvider().open_connection(config("http://127.0.0.1:9")):
                pass
        assert isinstance(info.value.__cause__, httpx.ConnectError)


async def test_a_token_banned_while_polling_ends_events_with_authentication_failed() -> None:
    with trio.fail_after(CEILING):
        async with emulator() as (_, url), connected(url) as (conn, events):
            await control(url, "fault", {"kind": "ban_token", "token": TOKEN})
            await inject(url, "last one")
            assert (await next_message(events)).text == "last one"
            with pytest.raises(AuthenticationFailed):
                await anext(events)
            with pytest.raises(AuthenticationFailed):
                await conn.send(msg("x"))


async def test_sending_faster_than_a_chat_allows_is_rate_limited(
    autojump_clock: trio.testing.MockClock,
) -> None:
    emu = TelegramEmulator()  # one message per second per chat, bursts of three
    with trio.fail_after(CEILING):  # virtual seconds
        async with connected(IN_MEMORY, transport=in_memory(emu)) as (conn, _):
            sent_at = trio.current_time()
            for n in range(3):  # a short burst is allowed, as the Bots FAQ says
                await conn.send(msg(f"burst {n}"))
            await trio.sleep(0.5)
            with pytest.raises(RateLimited) as info:
                await conn.send(msg("fourth"))
            assert info.value.retry_after == 1.0  # 0.5 s left, in whole seconds
            assert info.value.peer == "42"
            await conn.send(msg("other chat", peer="43"))
            await trio.sleep(0.5)
            assert trio.current_time() == sent_at + 1.0
            await conn.send(msg("fourth"))  # one second has refilled one message
            with pytest.raises(RateLimited):
                await conn.send(msg("fifth"))  # and only one
            assert emu.stats["rate_limited"] == 2


# --- webhook mode ----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def webhook_receiver() -> AsyncIterator[tuple[str, list[TelegramConnection]]]:
    """A tiny HTTP server that hands POST /hook to the connection in the list."""
    holder: list[TelegramConnection] = []

    async def hook(request: Request) -> Response:
        if not holder:
            return Response(status_code=503)
        status = await holder[0].feed_webhook(request.headers, await request.body())
        return Response(status_code=status)

    app = Starlette(routes=[Route("/hook", hook, methods=["POST"])])
    cfg = Config()
    cfg.bind = ["127.0.0.1:0"]
    cfg.accesslog = None
    cfg.errorlog = None
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            lambda task_status: serve_asgi(app, cfg, task_status=task_status)
        )
        yield f"{binds[0]}/hook", holder
        nursery.cancel_scope.cancel()


async def test_webhook_mode_end_to_end() -> None:
    with trio.fail_after(CEILING):
        async with emulator() as (emu, url), webhook_receiver() as (hook_url, holder):
            cfg = config(url, mode="webhook", webhook_url=hook_url)
            cfg = ChannelConfig(
                channel_id=cfg.channel_id,
                provider="telegram",
                credentials={"token": TOKEN, "webhook_secret": SECRET},
                base_url=url,
                options=cfg.options,
            )
            async with TelegramProvider().open_connection(cfg) as conn:
                holder.append(conn)
                assert emu.bots[TOKEN].webhook_url == hook_url
                async with contextlib.aclosing(conn.events()) as events:
                    assert isinstance(await anext(events), ConnectionStateChanged)
                    await inject(url, "pushed")
                    event = await next_message(events)
                    assert (event.text, event.platform_message_id) == ("pushed", "42:1")
                    await wait_for(lambda: emu.stats["webhook_delivered"] == 1)
                    async with httpx.AsyncClient() as client:
                        forged = {"update_id": 99, "message": {"message_id": 1}}
                        for headers in ({SECRET_HEADER: "wrong"}, {}):
                            answer = await client.post(hook_url, json=forged, headers=headers)
                            assert answer.status_code == 403
                    assert conn.session_state().data == {"offset": 2}
                await conn.close(resumable=False)
            assert emu.bots[TOKEN].webhook_url is None  # deleteWebhook on a final close
            assert emu.bots[TOKEN].updates == []


async def test_a_failing_webhook_is_retried_until_accepted() -> None:
    with trio.fail_after(CEILING):
        async with emulator() as (emu, url), webhook_receiver() as (hook_url, holder):
            async with httpx.AsyncClient() as client:
                answer = await client.post(
                    f"{url}/bot{TOKEN}/setWebhook",
                    data={"url": hook_url, "secret_token": SECRET},
                )
                assert answer.json()["ok"] is True
            await inject(url, "retry me")
            await wait_for(lambda: emu.stats["webhook_failed"] >= 2)  # 503: nobody fed yet
            cfg = ChannelConfig(
                channel_id="tg:test",
                provider="telegram",
                credentials={"token": TOKEN, "webhook_secret": SECRET},
                base_url=url,
                options={"mode": "webhook"},
            )
            async with TelegramProvider().open_connection(cfg) as conn:
                holder.append(conn)
                async with contextlib.aclosing(conn.events()) as events:
                    await anext(events)
                    assert (await next_message(events)).text == "retry me"
            async with httpx.AsyncClient() as client:
                info = (await client.get(f"{url}/bot{TOKEN}/getWebhookInfo")).json()["result"]
            assert info["url"] == hook_url
            assert info["last_error_message"] == "Wrong response from the webhook: 503"
            assert emu.bots[TOKEN].webhook_url == hook_url  # resumable close keeps it


# --- the emulator's wire protocol, with raw httpx ------------------------------------------------


ENCODINGS: Final = ["query", "urlencoded", "json", "multipart"]


async def call(
    client: httpx.AsyncClient, method: str, params: dict[str, Any], encoding: str
) -> httpx.Response:
    """Call ``method`` with ``params`` in one of the four encodings the Bot API takes."""
    flat = {k: v if isinstance(v, str) else json.dumps(v) for k, v in params.items()}
    path = f"/bot{TOKEN}/{method}"
    if encoding == "query":
        return await client.get(path, params=flat)
    if encoding == "urlencoded":
        return await client.post(path, data=flat)
    if encoding == "json":
        return await client.post(path, json=params)
    return await client.post(path, files={k: (None, v) for k, v in flat.items()})


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_every_parameter_encoding_works(encoding: str) -> None:
    with trio.fail_after(CEILING):
        async with emulator() as (emu, url), httpx.AsyncClient(base_url=url) as client:
            assert (await call(client, "getMe", {}, encoding)).json()["result"]["id"] == 123456
            await inject(url, "question")
            answer = await call(
                client,
                "sendMessage",
                {"chat_id": 42, "text": "reply", "reply_parameters": {"message_id": 1}},
                encoding,
            )
            assert answer.status_code == 200, answer.text
            result = answer.json()["result"]
            assert (result["message_id"], result["text"]) == (2, "reply")
            assert result["reply_to_message"]["message_id"] == 1
            polled = await call(
                client,
                "getUpdates",
                {"offset": 0, "timeout": 0, "allowed_updates": ["message"]},
                encoding,
            )
            assert [u["message"]["text"] for u in polled.json()["result"]] == ["question"]
            assert emu.bots[TOKEN].allowed_updates == {"message"}
            assert emu.sent[-1]["reply_to_message_id"] == 1


async def test_multipart_uploads_a_document() -> None:
    with trio.fail_after(CEILING):
        async with emulator() as (emu, url), httpx.AsyncClient(base_url=url) as client:
            answer = await client.post(
                f"/bot{TOKEN}/sendDocument",
                data={"chat_id": "-100777", "caption": "report"},
                files={"document": ("report.pdf", b"%PDF-1.4", "application/pdf")},
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["result"]["chat"]["type"] == "supergroup"
            assert emu.sent[-1]["media"] == {"upload": "report.pdf", "size": 8}


@pytest.mark.parametrize(
    ("path", "params", "status", "description"),
    [
        (
            f"/bot{TOKEN}/sendMessage",
            {"chat_id": 1, "text": "x" * 4097},
            400,
            "Bad Request: message is too long",
        ),
        (f"/bot{TOKEN}/sendMessage", {"chat_id": 1}, 400, "Bad Request: message text is empty"),
        (f"/bot{TOKEN}/sendMessage", {"text": "x"}, 400, "Bad Request: chat_id is empty"),
        (
            f"/bot{TOKEN}/sendMessage",
            {"chat_id": 1, "text": "x", "reply_to_message_id": 50},
            400,
            "Bad Request: message to be replied not found",
        ),
        (f"/bot{TOKEN}/noSuchMethod", {}, 404, "Not Found"),
        ("/bot123:short/getMe", {}, 404, "Not Found"),
        ("/botnot-a-token/getMe/extra", {}, 404, "Not Found"),
    ],
)
async def test_errors_use_the_bot_api_envelope(
    path: str, params: dict[str, Any], status: int, description: str
) -> None:
    with trio.fail_after(CEILING):
        async with emulator() as (_, url), httpx.AsyncClient(base_url=url) as client:
            answer = await client.post(path, json=params)
            assert answer.status_code == status
            assert answer.json() == {"ok": False, "error_code": status, "description": description}


@pytest.mark.parametrize(
    ("limits", "chats", "retry_after"),
    [
        ({"bot_rate": 2, "chat_interval": 0.0}, [1, 2, 3], 1),
        ({"group_per_minute": 2, "chat_interval": 0.0}, [-5, -5, -5], 60),
        ({}, [7, 7, 7, 7], 1),  # a burst of three, then one per second
    ],
    ids=["per-bot", "per-group", "per-chat"],
)
async def test_emulator_limits_answer_429_with_retry_after(
    limits: dict[str, Any],
    chats: list[int],
    retry_after: int,
    autojump_clock: trio.testing.MockClock,
) -> None:
    emu = TelegramEmulator(**limits)
    with trio.fail_after(retry_after + CEILING):  # virtual seconds: the windows are exact
        async with httpx.AsyncClient(transport=in_memory(emu), base_url=IN_MEMORY) as client:

            async def send(chat: int) -> httpx.Response:
                return await client.post(
                    f"/bot{TOKEN}/sendMessage", json={"chat_id": chat, "text": "x"}
                )

            answers = [await send(chat) for chat in chats]
            assert [a.status_code for a in answers] == [200] * (len(chats) - 1) + [429]
            assert answers[-1].json() == {
                "ok": False,
                "error_code": 429,
                "description": f"Too Many Requests: retry after {retry_after}",
                "parameters": {"retry_after": retry_after},
            }
            await trio.sleep(retry_after - 0.001)  # not quite over yet
            assert (await send(chats[-1])).status_code == 429
            await trio.sleep(0.001)
            assert (await send(chats[-1])).status_code == 200


async def test_get_updates_holds_until_an_update_arrives_or_the_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    emu = TelegramEmulator()
    with trio.fail_after(CEILING):  # virtual seconds
        async with httpx.AsyncClient(transport=in_memory(emu), base_url=IN_MEMORY) as client:
            assert (await client.get(f"/bot{TOKEN}/getMe")).json()["ok"] is True  # known now
            answers: list[Any] = []

            async def poll() -> None:
                answer = await client.get(f"/bot{TOKEN}/getUpdates", params={"timeout": 10})
                answers.append(answer.json())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(poll)
                await yield_until(lambda: emu.bots[TOKEN].poll is not None)
                await trio.sleep(3.0)  # held: nothing to answer yet
                assert answers == []
                injected = await client.post(
                    "/_emulator/inject", json={"chat_id": 42, "text": "wake up"}
                )
                assert injected.status_code == 200
            assert answers[0]["result"][0]["update_id"] == 1
            assert trio.current_time() == 3.0  # answered at the update, not at the timeout
            empty = await client.get(f"/bot{TOKEN}/getUpdates", params={"offset": 2, "timeout": 1})
            assert empty.json() == {"ok": True, "result": []}
            assert trio.current_time() == 4.0  # held for exactly its timeout
            assert emu.bots[TOKEN].updates == []  # offset 2 confirmed update 1
            assert emu.stats["polls_held"] == 2


async def test_inject_needs_a_known_bot() -> None:
    with trio.fail_after(CEILING):
        async with emulator() as (_, url), httpx.AsyncClient(base_url=url) as client:
            answer = await client.post("/_emulator/inject", json={"chat_id": 1, "text": "x"})
            assert answer.status_code == 400
            assert "0 bots are known" in answer.json()["error"]
            answer = await client.post(
                "/_emulator/inject", json={"chat_id": 1, "text": "x", "token": OTHER_TOKEN}
            )
            assert answer.json()["update_id"] == 1


async def test_a_5xx_while_polling_ends_events_with_a_transient_error() -> None:
    with trio.fail_after(CEILING):
        async with emulator() as (_, url), connected(url) as (conn, events):
            await control(url, "fault", {"kind": "server_error", "count": 1, "status": 503})
            await inject(url, "before the outage")
            assert (await next_message(events)).text == "before the outage"
            with pytest.raises(TransientError, match="503"):
                await anext(events)
            assert conn.session_state().data == {"offset": 2}


async def test_feed_webhook_refuses_when_polling_or_closed() -> None:
    with trio.fail_after(CEILING):
        async with emulator() as (_, url):
            async with connected(url) as (conn, _):
                assert await conn.feed_webhook({SECRET_HEADER: SECRET}, b"{}") == 404
            cfg = ChannelConfig(
                channel_id="tg:test",
                provider="telegram",
                credentials={"token": TOKEN, "webhook_secret": SECRET},
                base_url=url,
                options={"mode": "webhook"},
            )
            async with TelegramProvider().open_connection(cfg) as conn:
                assert await conn.feed_webhook({SECRET_HEADER: "nope"}, b"{}") == 403
                assert await conn.feed_webhook({SECRET_HEADER: SECRET}, b"[]") == 400
            assert await conn.feed_webhook({SECRET_HEADER: SECRET}, b"{}") == 503


async def test_an_abandoned_long_poll_is_released_by_the_emulator() -> None:
    with trio.fail_after(CEILING):
        async with emulator() as (emu, url), httpx.AsyncClient(base_url=url) as client:
            await make_bot_known(url)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.get, f"/bot{TOKEN}/getUpdates?timeout=10")
                await wait_for(lambda: emu.bots[TOKEN].poll is not None)
                nursery.cancel_scope.cancel()
            await wait_for(lambda: emu.bots[TOKEN].poll is None)
            assert emu.stats["conflicts"] == 0


@pytest.mark.parametrize("token", ["123:SECRET\n", "123:SECRET\t", "\ufeff123:SECRET"])
async def test_a_token_a_url_cannot_carry_is_refused_by_name_without_quoting_it(token: str) -> None:
    # It used to be reported as a bad base_url: the token is part of every call's URL.
    with pytest.raises(AuthenticationFailed, match="a request cannot carry") as info:
        async with TelegramProvider().open_connection(config(IN_MEMORY, token=token)):
            pass  # pragma: no cover - refused before any call
    assert "SECRET" not in str(info.value)
