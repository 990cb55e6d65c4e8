"""Fault run on the Discord and generic websocket providers: hostile or odd server
frames and headers. Each test reproduces one defect and says what should happen.

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
)
from providers.discord import DiscordProvider
from providers.discord import shell as discord_shell
from providers.discord.gateway import GatewayCore
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
    """A send answered 429 (rate-limit headers present, so not a Cloudflare block) whose
    body's ``retry_after`` is an integer past any float (JSON allows it; msgspec keeps
    every digit) should raise a classified ProviderError (RateLimited with a finite
    wait). Instead ``BucketTracker.update`` and ``rest._error`` call ``float()`` on it
    through ``_float``, which catches TypeError/ValueError but not OverflowError: a bare
    OverflowError leaves ``conn.send``, and the channel actor treats it as a defect and
    crashes (again on every retry of the same send)."""
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
    """The same answer as a *global* 429 (``X-RateLimit-Global: true``): the shell hands
    it to ``BucketTracker.update`` before the answer is interpreted, so the tracker must
    take it (hold every route for a sane, finite while). It raises OverflowError."""
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
    """Discord's REST limits are read from the answer, so a 429 body's ``retry_after``
    of 1e400 (inf) or an ``X-RateLimit-Reset-After: inf`` header is platform input. Like
    ``RateLimited`` itself (commit 3c5f0f6: "a platform's infinite 429 paused a
    channel's sends for good"), the tracker should read it as a finite wait (at most
    ``MAX_RETRY_AFTER``, or the header's fallback). Instead ``global_until`` (or the
    bucket's ``reset_at``) becomes inf: ``reserve`` answers inf for ever, so every later
    send of the connection (every route, for the global one) is refused with
    RateLimited without a request being made, until the channel reconnects."""
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
    """``GET /gateway/bot`` answers a ``session_start_limit.reset_after`` that is an
    integer past any float. The connect should either go on (the budget read as a
    sane reset) or fail with a ProviderError (TransientError) so the channel backs off.
    Instead ``GatewayCore.set_session_start_limit`` divides it (``reset_after / 1000``)
    and a bare OverflowError leaves ``open_connection`` (it runs outside the shell's
    exception map): the channel actor crashes, and on every restart again (the same
    answer each time), a crash loop."""

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
    """With ``compress=zstd-stream``, one BINARY gateway frame of about 8 KB (far under
    the 1 MiB ``max_message_bytes``) that decompresses to 256 MiB of zeros should be
    refused (CompressionError: the socket is dropped and resumed) having held no more
    than about the cap. ``Inflater.feed`` calls ``decompressobj().decompress(data)``
    with no output bound and compares the length afterwards: the whole 256 MiB is
    allocated first (a frame at the 1 MiB limit inflates to ~32 GiB and the node is
    killed for memory), where the zlib path bounds its output (``max_length``). The
    module says "a small frame cannot inflate into more than a plain frame may
    carry"."""
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
    """The REST API is ``https://`` and ``GET /gateway/bot`` answers a plain
    ``ws://`` gateway URL. The Identify carries the bot token, so it should only go
    over TLS: the provider should refuse that URL (a classified error) or use
    ``wss://``. The resume URL has exactly this guard (``_resume_url``: "plain ws://
    only where the configured gateway is plain"), but the gateway URL it compares
    with is this very answer, taken unchecked: the Identify (token included) goes out
    in clear text, and every resume URL may then be ws:// as well."""

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
    """Session A runs; the consumer takes its events. The gateway invalidates it (op 9,
    not resumable); the connection identifies anew: session B, whose seq starts again at
    1 (READY), then messages s=2 and s=3. The consumer took A's READY and m1 (A's s=2)
    and is then held back (its store is down), so DISCONNECTED, B's READY and both
    messages wait in the buffer. The connection now ends (a stop, a move):
    ``session_state()`` should let the next connection resume B from a seq before its
    first unread event (<= 1), so both messages are replayed (its docstring's promise:
    "the resume must have the gateway replay them"). It saves B's session_id with the
    seq of the last event *taken*, which is session A's (2): the next connection
    resumes B after s=2, and m2 is never replayed (lost for good). Had the consumer
    taken the DISCONNECTED event last, the seq saved is None and the next connection
    identifies anew, losing m2 and m3."""
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
    """A server's text frame nested 5000 arrays deep (valid JSON, 10 KB: far under the
    1 MiB frame limit) should be a protocol violation like any unreadable frame (a Fail
    with a TransientError: the link is dropped and the channel reconnects), or be read.
    ``frame_received`` catches ValueError only, and ``providers._json.parsed`` raises
    RecursionError here (msgspec and json.loads alike): it leaves the sans-IO core."""
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
    """End to end, over a real socket on 127.0.0.1: the server sends ``ready`` and then
    the deeply nested frame. ``events()`` should end with a ProviderError (the link is
    dropped, the channel actor backs off and reconnects). The RecursionError is raised
    in the read hub's take, handed to the reader task and out of it, unmapped: what
    leaves the connection is a bare RecursionError (not a ProviderError), which the
    channel actor takes for a defect and crashes on, again at every reconnect while the
    server sends it."""
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
    """A send answered 200 whose JSON body carries one field nested 5000 arrays deep
    (10 KB, under ``max_body_bytes``) should be a TransientError ("unreadable success
    answer"), or be read. ``providers._http.json_body`` catches ValueError only and
    ``parsed`` raises RecursionError: a bare RecursionError leaves ``conn.send`` (the
    channel actor crashes). The same body to ``GET /gateway/bot`` escapes
    ``open_connection`` (a crash at every restart), and to a global 429
    ``BucketTracker.update``; json_body is shared by the Telegram and WhatsApp
    providers too."""
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
    """The gateway answers every Resume with RESUMED and then at once asks for a
    reconnect (op 7; a close with 4000 does the same). Each socket is "successful", so
    the core's ``_reconnects`` count goes back to 0 on every RESUMED and
    ``max_reconnects`` never trips; op 7 reconnects with delay 0. The connection should
    slow down (a growing delay between sockets that live only moments) or give up to
    the channel actor's backoff ("a channel reconnects with backoff"). Instead it opens
    socket after socket with no wait at all: 200 TLS connects (and Resumes, each
    carrying the token) in no time, for as long as the gateway flaps."""
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
            began = trio.current_time()
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
                while len(gateway.sockets) < 200 and ended is None:
                    await trio.lowlevel.checkpoint()
                elapsed = trio.current_time() - began
                nursery.cancel_scope.cancel()
    if ended is None:
        assert elapsed > 60.0, f"{len(gateway.sockets)} sockets in {elapsed:g}s: no backoff"


# --- 9. a generic websocket event whose timestamp is an integer past any float ---------------


@pytest.mark.parametrize("kind", ["message", "edit", "receipt"])
def test_a_websocket_event_whose_timestamp_no_float_can_hold_is_kept(kind: str) -> None:
    """A server's ``message`` (or ``edit``, or ``receipt``) frame whose ``timestamp`` is an
    integer past any float (10**400; JSON allows it, msgspec keeps every digit) should
    be read as the event with no timestamp, as ``1e400`` and ``NaN`` already are (commit
    a15dcc6). Instead the converter's ``float()`` raises OverflowError, the frame is a
    "protocol violation", the link fails (every pending send is abandoned) and the
    event is lost for good: this protocol has no replay of a refused event."""
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
    """An ``error`` frame for one pending send, ``rate_limited`` with ``retry_after``
    10**400, should fail that send alone with RateLimited (the wait read as the default,
    as for NaN or inf: ``retry_after_seconds``). Instead the converter's OverflowError
    makes it a protocol violation: the whole link fails and every pending send is
    abandoned."""
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
