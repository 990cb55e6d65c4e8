"""Every error a hostile platform can cause is a classified ProviderError (issue 11).

Each provider meets a real server on 127.0.0.1 (``providers.hostile``) that
misbehaves: an upgrade answered with 503, a 101 with a bad accept key, a
message over the size limit. Whatever it does, what leaves the provider is a
``ProviderError`` of the tree in ``providers.base``, never trio-websocket's,
wsproto's, h11's or httpx's own exception, which would crash the channel actor.
Real sockets, so real time: every test has a hard ceiling.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from typing import Any

import attrs
import h11
import pytest
import trio
from wsproto.events import Ping, TextMessage

from actors import ChannelSettings, ChannelStatus, ExponentialBackoff
from providers.base import (
    ChannelConfig,
    FatalError,
    OutboundMessage,
    ProviderError,
    TransientError,
)
from providers.discord import DiscordProvider
from providers.discord import rest as discord_rest
from providers.hostile import (
    Behaviour,
    accept_then_send,
    bad_accept,
    drip,
    endless_chunked,
    huge_body,
    json_answer,
    open_hostile_server,
    status,
)
from providers.simulated import SimulatedProvider
from providers.telegram import TelegramProvider
from providers.telegram import core as telegram_core
from providers.websocket import WebSocketProvider
from providers.whatsapp import WhatsAppProvider
from providers.whatsapp import core as whatsapp_core
from runtime import open_node, parse_config

CEILING = 20.0  # seconds; only a hang gets near it
OVER_LIMIT = "x" * (2 << 20)  # characters: twice the 1 MiB message limit


def discord_route(gateway: Behaviour, url: Callable[[], str]) -> Callable[[h11.Request], Behaviour]:
    """``GET /gateway/bot`` answered properly, pointing at ``/gw``, which ``gateway`` serves."""

    def route(request: h11.Request) -> Behaviour:
        if request.target.startswith(b"/api/v10/gateway/bot"):
            limit = {"total": 1000, "remaining": 1000, "reset_after": 0, "max_concurrency": 1}
            return json_answer({"url": url(), "shards": 1, "session_start_limit": limit})
        return gateway

    return route


def fragments_then_ping() -> Behaviour:
    """A message over the limit in fragments, then more, then a ping: we close on the
    fragment that crosses the limit and must not answer (or crash on) the rest."""
    part = OVER_LIMIT[: 1 << 19]
    return accept_then_send(
        TextMessage(data=part, message_finished=False),
        TextMessage(data=part, message_finished=False),
        TextMessage(data=part, message_finished=False),
        Ping(payload=b"still there?"),
        TextMessage(data="end", message_finished=True),
    )


GATEWAY_FAULTS = {
    "upgrade-503": status(503, body=b"upstream unavailable"),
    "bad-accept-key": bad_accept(),
    "message-over-limit": accept_then_send(OVER_LIMIT),
    "fragments-then-ping-while-closing": fragments_then_ping(),
}


@pytest.mark.parametrize("fault", list(GATEWAY_FAULTS))
async def test_a_hostile_discord_gateway_is_a_transient_error(fault: str) -> None:
    where: list[str] = []
    route = discord_route(GATEWAY_FAULTS[fault], lambda: where[0])
    with trio.fail_after(CEILING):
        async with open_hostile_server(route) as url:
            where.append(url.replace("http://", "ws://") + "/gw")
            config = ChannelConfig(
                channel_id="dc", provider="discord", credentials={"token": "t"}, base_url=url
            )
            provider = DiscordProvider(connect_timeout=5.0)
            with pytest.raises(ProviderError) as caught:
                async with provider.open_connection(config) as conn:
                    async for _ in conn.events():
                        pass
    assert isinstance(caught.value, TransientError), repr(caught.value)
    assert "gateway" in str(caught.value)


WEBSOCKET_FAULTS = {
    "upgrade-503": status(503, body=b"upstream unavailable"),
    "bad-accept-key": bad_accept(),
    "message-over-limit": accept_then_send(OVER_LIMIT),
    "fragments-then-ping-while-closing": fragments_then_ping(),
}


@pytest.mark.parametrize("fault", list(WEBSOCKET_FAULTS))
async def test_a_hostile_websocket_server_is_a_transient_error(fault: str) -> None:
    behaviour = WEBSOCKET_FAULTS[fault]
    with trio.fail_after(CEILING):
        async with open_hostile_server(lambda request: behaviour) as url:
            config = ChannelConfig(
                channel_id="ws",
                provider="websocket",
                credentials={"token": "t"},
                base_url=url.replace("http://", "ws://") + "/ws",
                options={"connect_timeout": 5.0},
            )
            with pytest.raises(ProviderError) as caught:
                async with WebSocketProvider().open_connection(config) as conn:
                    async for _ in conn.events():
                        pass
    assert isinstance(caught.value, TransientError), repr(caught.value)


# --- every body capped, every request within a total deadline (items 3 and 4) ----------

LIMIT = 1 << 20  # bytes: the cap the HTTP providers are given here
CALL_DEADLINE = 0.5  # seconds: the total deadline they are given here


def http_channel(provider: str, url: str) -> ChannelConfig:
    options: dict[str, Any] = {"max_body_bytes": LIMIT, "request_deadline": CALL_DEADLINE}
    credentials = {"token": "t"}
    if provider == "whatsapp":
        options["phone_number_id"] = "123"
        credentials = {"token": "t", "app_secret": "s", "verify_token": "v"}
    return ChannelConfig(
        channel_id=provider,
        provider=provider,
        credentials=credentials,
        base_url=url,
        options=options,
    )


def http_provider(provider: str) -> Any:
    if provider == "discord":
        return DiscordProvider(max_body_bytes=LIMIT, request_deadline=CALL_DEADLINE)
    return {"telegram": TelegramProvider, "whatsapp": WhatsAppProvider}[provider]()


HTTP_FAULTS = {
    # (behaviour, what the error says)
    "huge-body": (huge_body(100 * LIMIT), "larger than the limit"),
    "endless-chunked-body": (endless_chunked(), "larger than the limit"),
    "dripping-server": (drip(0.05), "total deadline"),
}


@pytest.mark.parametrize("provider", ["telegram", "whatsapp", "discord"])
@pytest.mark.parametrize("fault", list(HTTP_FAULTS))
async def test_a_hostile_http_answer_is_capped_and_deadlined(provider: str, fault: str) -> None:
    behaviour, says = HTTP_FAULTS[fault]
    with trio.fail_after(CEILING):
        async with open_hostile_server(lambda request: behaviour) as url:
            with pytest.raises(ProviderError) as caught:
                async with http_provider(provider).open_connection(http_channel(provider, url)):
                    pass
    assert isinstance(caught.value, TransientError), repr(caught.value)
    assert says in str(caught.value)


async def test_the_websocket_message_limit_is_the_channel_s_option() -> None:
    behaviour = accept_then_send("x" * 2000)
    with trio.fail_after(CEILING):
        async with open_hostile_server(lambda request: behaviour) as url:
            config = ChannelConfig(
                channel_id="ws",
                provider="websocket",
                credentials={"token": "t"},
                base_url=url.replace("http://", "ws://") + "/ws",
                options={"connect_timeout": 5.0, "max_message_bytes": 1000},
            )
            with pytest.raises(ProviderError) as caught:
                async with WebSocketProvider().open_connection(config) as conn:
                    async for _ in conn.events():
                        pass
    assert isinstance(caught.value, TransientError), repr(caught.value)
    assert "1009" in str(caught.value) or "larger than 1000" in str(caught.value)


# --- one redirect policy (item 5) ---------------------------------------------------------

SECRET = "123456:" + "S" * 35
REDIRECT = {"location": f"https://elsewhere.example/bot{SECRET}/getMe?token={SECRET}"}


def redirect_of_a_send(provider: str) -> BaseException:
    """What each sans-IO core makes of a 302 to a send (no sockets)."""
    message = OutboundMessage(peer="42", idempotency_key="k", text="hi")
    try:
        if provider == "telegram":
            telegram_core.parse_response(telegram_core.send_request(message), 302, b"", REDIRECT)
        elif provider == "discord":
            discord_rest.interpret_send(302, REDIRECT, b"", peer="42")
        else:
            whatsapp_core.parse_send_response(302, REDIRECT, b"<html>moved</html>", peer="42")
    except ProviderError as exc:
        return exc
    raise AssertionError(f"{provider}: a 302 to a send raised nothing")


@pytest.mark.parametrize("provider", ["telegram", "whatsapp", "discord"])
def test_a_redirected_send_is_transient_in_every_provider(provider: str) -> None:
    error = redirect_of_a_send(provider)
    assert type(error) is TransientError, repr(error)  # never dead-lettered, never FAILED
    assert "302" in str(error) and "redirect to elsewhere.example" in str(error)
    assert SECRET not in str(error)


@pytest.mark.parametrize("provider", ["telegram", "whatsapp", "discord"])
async def test_a_redirected_connect_is_transient_in_every_provider(provider: str) -> None:
    behaviour = status(302, headers=list(REDIRECT.items()))
    with trio.fail_after(CEILING):
        async with open_hostile_server(lambda request: behaviour) as url:
            with pytest.raises(ProviderError) as caught:
                async with http_provider(provider).open_connection(http_channel(provider, url)):
                    pass
    assert type(caught.value) is TransientError, repr(caught.value)
    assert "redirect to elsewhere.example" in str(caught.value)
    assert SECRET not in str(caught.value)


# --- the node, end to end: a Discord outage answered with 503 (issue 11's first bullet) --

OUTAGE_CHANNELS = 100  # Discord channels whose gateway answers the upgrade with 503


async def test_a_discord_gateway_answering_503_leaves_the_node_and_the_others_running(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SB_TEST_DISCORD_TOKEN", "not-a-real-token")
    where: list[str] = []
    route = discord_route(status(503, body=b"upstream unavailable"), lambda: where[0])
    healthy = SimulatedProvider()
    with trio.fail_after(CEILING * 3):
        async with open_hostile_server(route) as url:
            where.append(url.replace("http://", "ws://") + "/gw")
            token = {"token": "${env:SB_TEST_DISCORD_TOKEN}"}
            channels: list[dict[str, Any]] = [
                {"id": f"dc{n}", "provider": "discord", "base_url": url, "credentials": token}
                for n in range(OUTAGE_CHANNELS)
            ]
            channels.append({"id": "sim", "provider": "simulated"})
            config = parse_config(
                {
                    "node": {"id": "t", "drain_deadline": 2.0, "start_timeout": 1.0},
                    "ops": {"enabled": False},
                    "providers": {"simulated": {"rate_limit": {"enabled": False}}},
                    "channels": channels,
                }
            )
            settings = ChannelSettings(reconnect=ExponentialBackoff(base=0.2, cap=1.0))
            async with open_node(
                config, channel_defaults=settings, providers={"simulated": healthy}
            ) as node:
                for n in range(20):  # several rounds of refused upgrades go by meanwhile
                    message = OutboundMessage(peer="p", idempotency_key=f"k{n}", text="hi")
                    await node.send("sim", message)
                    await trio.sleep(0.25)
                discord = [s for s in node.channels() if s.provider == "discord"]
                assert {s.status for s in discord} <= {
                    ChannelStatus.BACKING_OFF,
                    ChannelStatus.CONNECTING,
                }
                backing_off = [s for s in discord if s.status is ChannelStatus.BACKING_OFF]
                assert backing_off
                assert "refused with HTTP 503" in (backing_off[0].problem or "")
                assert all(s.statistics.restarts == 0 for s in discord if s.statistics)  # no crash
    assert len(healthy.sent) == 20


async def test_a_compressed_gateway_payload_is_capped_once_inflated() -> None:
    """A small zlib-stream frame that inflates past max_message_bytes (a bomb, in
    little) is refused like an oversized plain frame."""
    hello = {"op": 10, "d": {"heartbeat_interval": 45000}, "pad": " " * 100_000}
    stream = zlib.compressobj()
    frame = stream.compress(json.dumps(hello).encode()) + stream.flush(zlib.Z_SYNC_FLUSH)
    assert len(frame) < 1000  # on the wire, it is under the limit
    where: list[str] = []
    route = discord_route(accept_then_send(frame), lambda: where[0])
    with trio.fail_after(CEILING):
        async with open_hostile_server(route) as url:
            where.append(url.replace("http://", "ws://") + "/gw")
            config = ChannelConfig(
                channel_id="dc",
                provider="discord",
                credentials={"token": "t"},
                base_url=url,
                options={"compress": "zlib-stream", "max_message_bytes": 10_000},
            )
            with pytest.raises(ProviderError) as caught:
                async with DiscordProvider(connect_timeout=5.0).open_connection(config):
                    pass
    assert isinstance(caught.value, TransientError), repr(caught.value)
    assert "over 10000 bytes" in str(caught.value), str(caught.value)


@pytest.mark.parametrize(
    ("provider", "options"),
    [
        ("discord", {"max_body_bytes": "lots"}),
        ("discord", {"max_message_bytes": 0}),
        ("telegram", {"request_deadline": -1}),
        ("whatsapp", {"max_body_bytes": 0}),
        ("whatsapp", {"request_deadline": 0}),
    ],
)
async def test_a_bad_limit_option_is_a_fatal_error_that_names_it(
    provider: str, options: dict[str, Any]
) -> None:
    config = http_channel(provider, "http://127.0.0.1:1")
    config = attrs.evolve(config, options={**config.options, **options})
    with pytest.raises(FatalError, match=next(iter(options))):
        async with http_provider(provider).open_connection(config):
            pass
