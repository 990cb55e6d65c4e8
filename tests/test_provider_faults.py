"""The Discord and generic websocket providers under a fault run: hostile or odd
server frames and headers (each test is a defect one found, fixed).

Pure tests and virtual time (trio's autojump clock): the Discord shell meets a fake
gateway socket and a fake REST ``fetch`` patched into :mod:`providers.discord.shell`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import trio
import trio.lowlevel
import trio.testing

from providers._http import Answer
from providers.base import (
    ChannelConfig,
    InboundMessage,
    OutboundMessage,
    ProviderError,
    RateLimited,
    SessionState,
    TransientError,
)
from providers.discord import DiscordProvider
from providers.discord import shell as discord_shell
from providers.discord.gateway import MAX_RECONNECTS, GatewayCore
from providers.discord.rest import BucketTracker, interpret_send

TOKEN = "bot-token-secret"
BIG = "1" + "0" * 400  # an integer no float can hold: JSON allows it, msgspec keeps it


# --- the fake Discord: one REST fetch, gateway sockets fed by a script ---------------------


class FakeSocket:
    """Just enough of trio-websocket's WebSocketConnection for the Discord shell."""

    def __init__(self, gateway: FakeGateway, url: str) -> None:
        self.gateway = gateway
        self.url = url
        self.sent: list[dict[str, Any]] = []
        self.closed: tuple[int, str] | None = None
        self._send, self._receive = trio.open_memory_channel[Any](1000)

    def push(self, payload: Any) -> None:
        text = payload if isinstance(payload, str | bytes) else json.dumps(payload)
        self._send.send_nowait(text)

    async def get_message(self) -> str | bytes:
        item = await self._receive.receive()
        if isinstance(item, BaseException):
            raise item
        return item

    async def send_message(self, text: str) -> None:
        frame = json.loads(text)
        self.sent.append(frame)
        self.gateway.on_frame(self, frame)

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        if self.closed is None:
            self.closed = (code, reason or "")


class FakeGateway:
    """Hello at once; READY to an Identify, RESUMED to a Resume (unless told otherwise)."""

    def __init__(self, *, interval_ms: float = 41_250) -> None:
        self.interval_ms = interval_ms
        self.sockets: list[FakeSocket] = []
        self.seq = 0
        self.answer_resume = True
        self.on_identify: Callable[[FakeSocket], None] | None = None

    def dispatch(self, sock: FakeSocket, t: str, d: Any) -> None:
        self.seq += 1
        sock.push({"op": 0, "s": self.seq, "t": t, "d": d})

    def message(self, sock: FakeSocket, n: int) -> None:
        d = {"id": f"m{n}", "channel_id": "5", "author": {"id": "42"}, "content": f"m{n}"}
        self.dispatch(sock, "MESSAGE_CREATE", d)

    async def connect(self, nursery: Any, url: str, ssl_context: Any, **kw: Any) -> FakeSocket:
        sock = FakeSocket(self, url)
        self.sockets.append(sock)
        sock.push({"op": 10, "d": {"heartbeat_interval": self.interval_ms}})
        return sock

    def on_frame(self, sock: FakeSocket, frame: dict[str, Any]) -> None:
        op = frame["op"]
        if op == 1:
            sock.push({"op": 11})
        elif op == 2:
            if self.on_identify is not None:
                self.on_identify(sock)
                return
            ready = {
                "session_id": f"s{len(self.sockets)}",
                "resume_gateway_url": "wss://resume.discord.test",
                "user": {"id": "999"},
            }
            self.dispatch(sock, "READY", ready)
        elif op == 6 and self.answer_resume:
            self.dispatch(sock, "RESUMED", {})


def gateway_bot(url: str = "wss://gateway.discord.test", **limit: Any) -> dict[str, Any]:
    start = {"total": 1000, "remaining": 1000, "reset_after": 0, "max_concurrency": 1}
    start.update(limit)
    return {"url": url, "shards": 1, "session_start_limit": start}


def answer(status: int, body: bytes | dict[str, Any], headers: dict[str, str] | None = None):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Answer(status_code=status, headers=httpx.Headers(headers or {}), content=content)


def patch_discord(
    monkeypatch: pytest.MonkeyPatch,
    gateway: FakeGateway,
    rest: Callable[[str, str, dict[str, Any]], Answer],
) -> None:
    async def fetch(client: Any, method: str, url: str, **kw: Any) -> Answer:
        if url.endswith("/gateway/bot"):
            return rest(method, url, kw)
        return rest(method, url, kw)

    monkeypatch.setattr(discord_shell, "fetch", fetch)
    monkeypatch.setattr(discord_shell, "connect_websocket_url", gateway.connect)


def discord_config(base_url: str = "https://discord.test") -> ChannelConfig:
    return ChannelConfig(
        channel_id="dc", provider="discord", credentials={"token": TOKEN}, base_url=base_url
    )


def plain_rest(method: str, url: str, kw: dict[str, Any]) -> Answer:
    if url.endswith("/gateway/bot"):
        return answer(200, gateway_bot())
    return answer(200, {"id": "900", "channel_id": "5"})


# --- 1. a 429 whose retry_after no float can hold -------------------------------------------


async def test_a_discord_429_whose_retry_after_no_float_can_hold_is_a_rate_limit(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 429 whose ``retry_after`` is an integer no float holds is a RateLimited with
    a finite wait; ``_float`` let OverflowError out of the send, which crashed the
    channel's actor at every retry."""
    body = b'{"message": "You are being rate limited.", "retry_after": ' + BIG.encode() + b"}"
    limited = {
        "X-RateLimit-Limit": "5",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset-After": "1",
        "X-RateLimit-Scope": "user",
        "Retry-After": "1",
    }

    def rest(method: str, url: str, kw: dict[str, Any]) -> Answer:
        if url.endswith("/gateway/bot"):
            return answer(200, gateway_bot())
        return answer(429, body, limited)

    gateway = FakeGateway()
    patch_discord(monkeypatch, gateway, rest)
    msg = OutboundMessage(peer="5", idempotency_key="k1", text="hi")
    raised: BaseException | None = None
    with trio.fail_after(60):
        async with DiscordProvider().open_connection(discord_config()) as conn:
            try:
                await conn.send(msg)
            except Exception as exc:
                raised = exc
    assert isinstance(raised, RateLimited), f"send raised {raised!r}"
    assert math.isfinite(raised.retry_after)


def test_a_global_429_whose_retry_after_no_float_can_hold_is_read_by_the_tracker() -> None:
    """The bucket tracker reads such a global 429 as a finite wait too (it raised
    OverflowError)."""
    buckets = BucketTracker()
    body = b'{"retry_after": ' + BIG.encode() + b', "global": true}'
    headers = {"X-RateLimit-Global": "true", "Retry-After": "1", "X-RateLimit-Scope": "global"}
    buckets.update("POST /channels/{channel_id}/messages", "5", 429, headers, 10.0, body=body)
    try:
        interpret_send(429, headers, body, peer="5")
    except RateLimited as exc:
        assert math.isfinite(exc.retry_after)


# --- 2. an infinite rate-limit wait pauses the REST side for good ------------------------------


@pytest.mark.parametrize(
    "answer_headers, body",
    [
        # a global 429 whose body says 1e400 (json reads it as inf)
        (
            {"X-RateLimit-Global": "true", "Retry-After": "1"},
            b'{"retry_after": 1e400, "global": true}',
        ),
        # a route bucket that says it resets after "inf" seconds
        ({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset-After": "inf"}, b""),
    ],
    ids=["global-retry-after-1e400", "bucket-reset-after-inf"],
)
def test_an_infinite_discord_rate_limit_wait_does_not_pause_the_route_for_good(
    answer_headers: dict[str, str], body: bytes
) -> None:
    """A global 429 of ``1e400`` or a bucket reset of ``inf`` is read as no number:
    the route (or every route) was paused for good, each later send refused."""
    from providers.base import MAX_RETRY_AFTER

    buckets = BucketTracker()
    status = 429 if body else 200
    route = "POST /channels/{channel_id}/messages"
    buckets.update(route, "5", status, answer_headers, 10.0, body=body)
    later = 10.0 + MAX_RETRY_AFTER + 1.0
    assert buckets.reserve(route, "5", later) == 0.0


# --- 3. GET /gateway/bot: a session start limit whose reset_after no float can hold ---------


async def test_a_gateway_bot_reset_after_no_float_can_hold_fails_the_connect_classified(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``reset_after`` of 10**400 from ``GET /gateway/bot`` is read as a day at
    most; it raised OverflowError out of the connect, at every restart."""

    def rest(method: str, url: str, kw: dict[str, Any]) -> Answer:
        if url.endswith("/gateway/bot"):
            text = json.dumps(gateway_bot(reset_after=0)).replace(
                '"reset_after": 0', '"reset_after": ' + BIG
            )
            return answer(200, text.encode())
        return answer(200, {"id": "900", "channel_id": "5"})

    patch_discord(monkeypatch, FakeGateway(), rest)
    raised: BaseException | None = None
    with trio.fail_after(60):
        try:
            async with DiscordProvider().open_connection(discord_config()):
                pass
        except Exception as exc:
            raised = exc
    assert raised is None or isinstance(raised, ProviderError), f"connect raised {raised!r}"


# --- 4. a zstd-stream bomb is inflated whole before the cap is checked -------------------------


def test_a_small_zstd_gateway_frame_cannot_inflate_past_the_message_cap_in_memory() -> None:
    """A zstd frame is refused once its payload passes the cap, while it inflates:
    an 8 KB frame took 256 MiB before it was refused (one at the 1 MiB limit,
    about 32 GiB)."""
    import tracemalloc

    import zstandard

    from providers.discord.compress import CompressionError, Inflater

    cap = 1 << 20
    packer = zstandard.ZstdCompressor(level=19).compressobj()
    zeros = b"\0" * (1 << 20)
    frame = b"".join(packer.compress(zeros) for _ in range(256))
    frame += packer.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    assert len(frame) < cap  # a frame the socket takes
    inflater = Inflater("zstd-stream", cap)
    tracemalloc.start()
    try:
        with pytest.raises(CompressionError):
            inflater.feed(frame)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * cap, f"{peak / 2**20:.0f} MiB held to refuse a {len(frame)}-byte frame"


# --- 5. the bot token over plain ws:// to a gateway URL the REST answer named --------------


async def test_the_token_never_goes_over_plain_ws_when_the_api_is_https(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Behind an ``https://`` API, a plain ``ws://`` gateway is refused: the Identify
    carries the token. It went out in clear text, and every resume URL could
    then be ``ws://`` too."""

    def rest(method: str, url: str, kw: dict[str, Any]) -> Answer:
        if url.endswith("/gateway/bot"):
            return answer(200, gateway_bot(url="ws://gateway.discord.test"))
        return answer(200, {"id": "900", "channel_id": "5"})

    gateway = FakeGateway()
    patch_discord(monkeypatch, gateway, rest)
    with trio.fail_after(60):
        try:
            async with DiscordProvider().open_connection(discord_config("https://discord.test")):
                pass
        except ProviderError:
            pass  # refused: acceptable
    clear = [
        sock.url
        for sock in gateway.sockets
        if sock.url.startswith("ws://") and any(TOKEN in json.dumps(f) for f in sock.sent)
    ]
    assert clear == [], f"the bot token went in clear text to {clear}"


# --- 6. a new session's unread events are resumed with the old session's seq ---------------


async def test_unread_events_of_a_new_session_are_kept_resumable_after_op9(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events of a session an op 9 began, none of them taken yet, are resumed from
    that session's start; the resume went after the seq of the last event taken
    from the old session, and they were never replayed."""
    gateway = FakeGateway()

    def identify(sock: FakeSocket) -> None:
        gateway.seq = 0  # a new session counts from 1
        ready = {
            "session_id": f"s{len(gateway.sockets)}",
            "resume_gateway_url": "wss://resume.discord.test",
            "user": {"id": "999"},
        }
        gateway.dispatch(sock, "READY", ready)
        if len(gateway.sockets) > 1:  # session B: two messages at once
            gateway.message(sock, 2)
            gateway.message(sock, 3)

    gateway.on_identify = identify
    patch_discord(monkeypatch, gateway, plain_rest)
    provider = DiscordProvider(invalid_session_delay=(0.01, 0.02))
    with trio.fail_after(120):
        async with provider.open_connection(discord_config()) as conn:
            stream = conn.events()
            await stream.__anext__()  # CONNECTED (A)
            gateway.message(gateway.sockets[0], 1)
            first = await stream.__anext__()
            assert isinstance(first, InboundMessage) and first.text == "m1"
            # The consumer now stalls (storing m1); the gateway ends session A.
            gateway.sockets[0].push({"op": 9, "d": False})
            while conn._receive_events.statistics().current_buffer_used < 4:  # noqa: ASYNC110
                await trio.sleep(0.5)  # DISCONNECTED, READY (B), m2, m3: unread
            saved = conn.session_state()
            await conn.close(resumable=True)
    assert saved.data.get("session_id") == "s2"
    seq = saved.data.get("seq")
    assert isinstance(seq, int) and seq <= 1, f"session B would resume from seq {seq!r}"
    # And so the next connection resumes rather than identifying (which loses m2, m3).
    assert GatewayCore(
        token=TOKEN,
        channel_id="dc",
        gateway_url="wss://gateway.discord.test",
        session=SessionState(provider="discord", data=dict(saved.data)),
    ).resumable


# --- 7. a generic websocket frame nested deeper than the parser's recursion limit ----------

WS_CEILING = 20.0  # real seconds (a real socket on 127.0.0.1); only a hang gets near it


def deep_message(depth: int = 5000) -> str:
    """A well-formed message frame with one field nested ``depth`` arrays deep."""
    nested = "[" * depth + "]" * depth
    return (
        '{"type": "message", "id": "m1", "peer": "p", "sender": "u", "text": "hi", '
        f'"extra": {nested}}}'
    )


def test_a_websocket_frame_nested_past_the_recursion_limit_fails_the_link_classified() -> None:
    """JSON nested past the recursion limit is an unreadable frame (a classified
    failure of the link); its RecursionError crashed the actor at every reconnect."""
    from providers.websocket.core import Emit as WsEmit
    from providers.websocket.core import Fail as WsFail
    from providers.websocket.core import WebSocketCore

    core = WebSocketCore(
        "ws",
        now=0.0,
        ping_interval=None,
        pong_timeout=5.0,
        liveness_timeout=None,
        send_timeout=5.0,
    )
    core.frame_received('{"type": "ready"}', 0.0)
    try:
        actions = core.frame_received(deep_message(), 1.0)
    except RecursionError:
        pytest.fail("RecursionError left WebSocketCore.frame_received")
    assert any(isinstance(a, WsFail | WsEmit) for a in actions), actions


async def test_a_websocket_server_s_deeply_nested_frame_ends_events_with_a_provider_error() -> None:
    """Over a real socket: the events end with a ProviderError, not a RecursionError."""
    from providers.hostile import accept_then_send, open_hostile_server
    from providers.websocket import WebSocketProvider

    behaviour = accept_then_send('{"type": "ready"}', deep_message())
    raised: BaseException | None = None
    with trio.fail_after(WS_CEILING):
        async with open_hostile_server(lambda request: behaviour) as url:
            config = ChannelConfig(
                channel_id="ws",
                provider="websocket",
                credentials={"token": "t"},
                base_url=url.replace("http://", "ws://") + "/ws",
                options={"connect_timeout": 5.0},
            )
            try:
                async with WebSocketProvider().open_connection(config) as conn:
                    async for _ in conn.events():
                        pass
            except BaseException as exc:
                raised = exc
    assert isinstance(raised, ProviderError), f"the connection ended with {raised!r}"


async def test_a_discord_rest_answer_nested_past_the_recursion_limit_is_classified(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A REST answer nested past the recursion limit is a classified error too."""
    nested = "[" * 5000 + "]" * 5000
    body = ('{"id": "900", "channel_id": "5", "extra": ' + nested + "}").encode()

    def rest(method: str, url: str, kw: dict[str, Any]) -> Answer:
        if url.endswith("/gateway/bot"):
            return answer(200, gateway_bot())
        return answer(200, body)

    patch_discord(monkeypatch, FakeGateway(), rest)
    raised: BaseException | None = None
    with trio.fail_after(60):
        async with DiscordProvider().open_connection(discord_config()) as conn:
            try:
                await conn.send(OutboundMessage(peer="5", idempotency_key="k1", text="hi"))
            except Exception as exc:
                raised = exc
    assert raised is None or isinstance(raised, ProviderError), f"send raised {raised!r}"


# --- 8. a gateway that drops every socket just after RESUMED: reconnects with no delay ------


async def test_a_gateway_that_drops_each_socket_after_resumed_is_not_reconnected_in_a_storm(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gateway that answers every Resume with RESUMED and then drops the socket
    reaches the channel's backoff: a socket counts as good once a heartbeat is
    acknowledged in session. The count went back to 0 at each RESUMED, and 200
    sockets (and Resumes, each carrying the token) were opened in no time."""
    gateway = FakeGateway()
    flapping = False

    def on_frame(sock: FakeSocket, frame: dict[str, Any]) -> None:
        if frame["op"] == 6 and flapping:
            gateway.dispatch(sock, "RESUMED", {})
            sock.push({"op": 7, "d": None})
            return
        FakeGateway.on_frame(gateway, sock, frame)

    gateway.on_frame = on_frame  # type: ignore[method-assign]
    patch_discord(monkeypatch, gateway, plain_rest)
    ended: BaseException | None = None
    with trio.fail_after(10 * 86_400):
        async with DiscordProvider().open_connection(discord_config()) as conn:
            flapping = True
            gateway.sockets[0].push({"op": 7, "d": None})

            async def drain() -> None:
                nonlocal ended
                try:
                    async for _ in conn.events():
                        pass
                except ProviderError as exc:
                    ended = exc

            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain)
                while len(gateway.sockets) < 200 and ended is None:  # (a storm takes no time)
                    await trio.lowlevel.checkpoint()
                nursery.cancel_scope.cancel()
    # Handed to the channel's backoff after the core's few tries, not a socket after another.
    assert isinstance(ended, TransientError), f"{len(gateway.sockets)} sockets, still opening"
    assert len(gateway.sockets) <= MAX_RECONNECTS + 2


# --- 9. a generic websocket event whose timestamp is an integer past any float ---------------


@pytest.mark.parametrize("kind", ["message", "edit", "receipt"])
def test_a_websocket_event_whose_timestamp_no_float_can_hold_is_kept(kind: str) -> None:
    """An event whose timestamp is an integer no float holds has none; the
    converter's OverflowError failed the whole link, and the event was lost."""
    from providers.websocket.core import Emit as WsEmit
    from providers.websocket.core import WebSocketCore

    core = WebSocketCore(
        "ws",
        now=0.0,
        ping_interval=None,
        pong_timeout=5.0,
        liveness_timeout=None,
        send_timeout=5.0,
    )
    core.frame_received('{"type": "ready"}', 0.0)
    fields = {
        "message": '"id": "m1", "peer": "p", "sender": "u", "text": "hi"',
        "edit": '"id": "m1", "peer": "p", "sender": "u", "text": "hi"',
        "receipt": '"id": "m1", "status": "delivered", "peer": "p"',
    }[kind]
    frame = f'{{"type": "{kind}", {fields}, "timestamp": {BIG}}}'
    actions = core.frame_received(frame, 1.0)
    emitted = [a.event for a in actions if isinstance(a, WsEmit)]
    assert len(emitted) == 1 and emitted[0].timestamp is None, actions


def test_a_websocket_rate_limited_error_past_any_float_fails_one_send_only() -> None:
    """An error frame with a ``retry_after`` past any float fails its own send
    only (a RateLimited with the default wait), not the whole link."""
    from providers.websocket.core import CompleteSend, WebSocketCore

    core = WebSocketCore(
        "ws",
        now=0.0,
        ping_interval=None,
        pong_timeout=5.0,
        liveness_timeout=None,
        send_timeout=5.0,
    )
    core.frame_received('{"type": "ready"}', 0.0)
    core.start_send(OutboundMessage(peer="p", idempotency_key="k1", text="a"), 0.0)
    core.start_send(OutboundMessage(peer="p", idempotency_key="k2", text="b"), 0.0)
    frame = f'{{"type": "error", "id": "k1", "code": "rate_limited", "retry_after": {BIG}}}'
    actions = core.frame_received(frame, 1.0)
    done = [a for a in actions if isinstance(a, CompleteSend)]
    assert [a.key for a in done] == ["k1"] and isinstance(done[0].error, RateLimited), actions
    assert core.pending == 1


def test_a_zstd_payload_past_one_output_buffer_comes_whole() -> None:
    """A payload past 128 KiB comes out whole with its own frame. The capped sink
    (the bomb guard above) first got only what one 128 KiB output buffer held, and
    the rest came in front of the next payload: broken JSON twice."""
    import os

    import zstandard

    from providers.discord.compress import Inflater

    inflater = Inflater("zstd-stream", max_payload=1024 * 1024)
    compressor = zstandard.ZstdCompressor().compressobj()
    for i in range(2):
        payload = json.dumps({"op": 0, "d": os.urandom(100_000).hex(), "i": i}).encode()
        frame = compressor.compress(payload) + compressor.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
        assert inflater.feed(frame) == payload.decode()
