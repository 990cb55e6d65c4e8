"""The websocket provider's wsproto link, against a scripted server over real sockets.

The emulator speaks the protocol politely; these cases need a server that
misbehaves on cue: it sends frames in the same segment as its handshake,
refuses the upgrade with an HTTP status, is not a websocket server at all,
pings, fragments a message, or sends one too large. The server side is
wsproto in server mode, driven by each test (real time, short ceilings).
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import attrs
import pytest
import trio
import trio.lowlevel
import trio.testing
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from providers.base import (
    AuthenticationFailed,
    Banned,
    ChannelConfig,
    ConnectionStateChanged,
    FatalError,
    InboundMessage,
    OutboundMessage,
    ProviderError,
    RateLimited,
    TransientError,
)
from providers.websocket import WebSocketProvider
from providers.websocket.core import DEFAULT_RETRY_AFTER, HEARTBEAT_ACK
from providers.websocket.link import MAX_MESSAGE_SIZE, _handshake

MESSAGE_TOO_BIG = 1009  # RFC 6455's close code for a message over the limit
IO_CEILING = 10.0  # real seconds; only a hang gets near it
READY = json.dumps({"type": "ready", "session": "s-1"})


def message(msg_id: str, **fields: Any) -> str:
    return json.dumps({"type": "message", "id": msg_id, "peer": "p", "sender": "u", **fields})


class Peer:
    """The server end of one connection, as the test scripts it."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.SERVER)

    async def next_event(self) -> Any:
        """The next wsproto event from the client (reading as needed)."""
        while True:
            for event in self.ws.events():
                return event
            data = await self.stream.receive_some(65_536)
            self.ws.receive_data(data or None)

    async def accept(self, *frames: str) -> None:
        """Accept the upgrade and send ``frames`` in the very same write."""
        request = await self.next_event()
        assert isinstance(request, Request)
        data = self.ws.send(AcceptConnection())
        data += b"".join(self.ws.send(TextMessage(data=text)) for text in frames)
        await self.stream.send_all(data)

    async def send(self, *events: Any) -> None:
        await self.stream.send_all(b"".join(self.ws.send(event) for event in events))

    async def wait_for_bytes(self) -> None:
        """Read one chunk from the client (kept for :meth:`next_event`)."""
        self.ws.receive_data(await self.stream.receive_some(65_536) or None)


Script = Callable[[Peer], Awaitable[None]]


@asynccontextmanager
async def scripted(script: Script) -> AsyncIterator[str]:
    """Serve ``script`` for each connection; yields the ws:// URL."""

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            await script(Peer(stream))

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        yield f"ws://127.0.0.1:{port}/ws"
        nursery.cancel_scope.cancel()


def config(url: str, **options: Any) -> ChannelConfig:
    opts = {"ping_interval": None, "liveness_timeout": None, **options}
    return ChannelConfig(
        channel_id="ws-1",
        provider="websocket",
        base_url=url,
        credentials={"token": "t1"},
        options=opts,
    )


async def hold(peer: Peer) -> None:
    """Keep the connection open, reading (and answering) until the client leaves."""
    while not isinstance(await peer.next_event(), CloseConnection):
        pass


async def test_frames_sent_with_the_handshake_are_read_at_once() -> None:
    # The server sends nothing after its 'ready': a link that waited for more
    # bytes before parsing what came with the handshake would never be ready.
    async def script(peer: Peer) -> None:
        await peer.accept(
            READY, json.dumps({"type": "message", "id": "m1", "peer": "p", "sender": "u"})
        )
        await hold(peer)

    with trio.fail_after(IO_CEILING):
        async with scripted(script) as url:
            cfg = config(url, connect_timeout=IO_CEILING / 2)
            async with WebSocketProvider().open_connection(cfg) as conn:
                events = conn.events()
                assert isinstance(await anext(events), ConnectionStateChanged)
                inbound = await anext(events)
                assert isinstance(inbound, InboundMessage)
                assert inbound.platform_message_id == "m1"


@pytest.mark.parametrize(
    ("status", "headers", "body", "expected", "match"),
    [
        (401, [], b"", AuthenticationFailed, "HTTP 401: bad token"),
        (403, [], b"go away", Banned, "HTTP 403: banned"),
        (429, [(b"Retry-After", b"7")], b"", RateLimited, "HTTP 429"),
        (429, [], b"slow down", RateLimited, "HTTP 429"),
        (503, [], b"", TransientError, "HTTP 503; retry"),
        (200, [], b"<html>not a websocket</html>", TransientError, "HTTP 200; retry"),
    ],
    ids=["401", "403", "429-retry-after", "429-default", "503", "200"],
)
async def test_a_refused_upgrade_maps_into_the_error_tree(
    status: int,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    expected: type[ProviderError],
    match: str,
) -> None:
    async def script(peer: Peer) -> None:
        assert isinstance(await peer.next_event(), Request)
        refusal = RejectConnection(status_code=status, headers=headers, has_body=bool(body))
        events: list[Any] = [refusal]
        if body:
            events.append(RejectData(data=body, body_finished=True))
        await peer.send(*events)

    with trio.fail_after(IO_CEILING):
        async with scripted(script) as url:
            with pytest.raises(expected, match=match) as info:
                async with WebSocketProvider().open_connection(config(url)):
                    pass
    if isinstance(info.value, RateLimited):
        assert info.value.retry_after == (7.0 if headers else DEFAULT_RETRY_AFTER)


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "bad websocket handshake"),
        (b"", "hung up during the websocket handshake"),
    ],
    ids=["not-http", "hang-up"],
)
async def test_a_server_that_does_not_speak_websocket_is_transient(
    answer: bytes, match: str
) -> None:
    async def script(peer: Peer) -> None:
        await peer.stream.receive_some(65_536)
        if answer:
            await peer.stream.send_all(answer)

    with trio.fail_after(IO_CEILING):
        async with scripted(script) as url:
            with pytest.raises(TransientError, match=match):
                async with WebSocketProvider().open_connection(config(url)):
                    pass


@pytest.mark.parametrize("base_url", ["http://127.0.0.1:1/ws", "ws:///ws", "127.0.0.1:80"])
async def test_a_base_url_that_is_not_websocket_is_fatal(base_url: str) -> None:
    with pytest.raises(FatalError, match="needs base_url ws://"):
        async with WebSocketProvider().open_connection(config(base_url)):
            pass


async def test_pings_from_the_server_are_answered_with_their_payload() -> None:
    pongs: list[bytes] = []

    async def script(peer: Peer) -> None:
        await peer.accept(READY)
        await peer.send(Ping(payload=b"are-you-there"))
        event = await peer.next_event()
        assert isinstance(event, Pong)
        pongs.append(bytes(event.payload))
        await peer.send(TextMessage(data=json.dumps({"type": "heartbeat"})))
        await peer.send(CloseConnection(code=1000, reason="done"))
        await hold(peer)

    with trio.fail_after(IO_CEILING):
        async with scripted(script) as url:
            async with WebSocketProvider().open_connection(config(url)) as conn:
                with pytest.raises(TransientError, match="code 1000"):
                    async for _ in conn.events():
                        pass
    assert pongs == [b"are-you-there"]


async def test_each_ping_goes_out_once_the_last_pong_came_back() -> None:
    # Our keepalive keeps one ping in flight: the server sees ping n+1 only
    # after the client took pong n. So three pings seen are two pongs taken,
    # counted rather than timed (a pong deadline far above the ceiling: only
    # pongs that never reach the core could stop the third ping).
    pings: list[bytes] = []

    async def script(peer: Peer) -> None:
        await peer.accept(READY)
        while len(pings) < 3:
            event = await peer.next_event()
            assert isinstance(event, Ping), event
            pings.append(bytes(event.payload))
            await peer.send(event.response())
        await peer.send(CloseConnection(code=1000, reason="done"))
        await hold(peer)

    with trio.fail_after(IO_CEILING):
        async with scripted(script) as url:
            cfg = config(url, ping_interval=0.01, pong_timeout=IO_CEILING * 10)
            async with WebSocketProvider().open_connection(cfg) as conn:
                with pytest.raises(TransientError, match="code 1000"):
                    async for _ in conn.events():
                        pass
    assert pings == [b"sb-1", b"sb-2", b"sb-3"]


async def test_a_fragmented_message_arrives_whole() -> None:
    text = json.dumps(
        {"type": "message", "id": "m1", "peer": "p", "sender": "u", "text": "x" * 300}
    )

    async def script(peer: Peer) -> None:
        await peer.accept(READY)
        parts = [text[:100], text[100:250], text[250:]]
        await peer.send(
            *(
                TextMessage(data=part, message_finished=i == len(parts) - 1)
                for i, part in enumerate(parts)
            )
        )
        await hold(peer)

    with trio.fail_after(IO_CEILING):
        async with scripted(script) as url:
            async with WebSocketProvider().open_connection(config(url)) as conn:
                events = conn.events()
                await anext(events)  # ready
                inbound = await anext(events)
                assert isinstance(inbound, InboundMessage)
                assert inbound.text == "x" * 300


async def test_a_token_a_header_cannot_carry_is_refused_by_name_and_not_sent() -> None:
    heard: list[bytes] = []

    async def script(peer: Peer) -> None:
        heard.append(await peer.stream.receive_some(65_536))

    with trio.fail_after(IO_CEILING):
        async with scripted(script) as url:
            cfg = config(url)
            cfg = attrs.evolve(cfg, credentials={"token": "t1\r\nX-Injected: yes"})
            with pytest.raises(FatalError, match=r"credentials\['token'\] holds CR, LF") as info:
                async with WebSocketProvider().open_connection(cfg):
                    pass
    assert "Injected" not in str(info.value)
    assert heard == []  # nothing was sent (the server never got a request)
    with pytest.raises(ValueError, match="'authorization' holds CR, LF or NUL") as raw:
        await _handshake(_NeverIO(), "h", "/", [(b"authorization", b"Bearer a\nb")])  # type: ignore[arg-type]
    assert "Bearer" not in str(raw.value)


@pytest.mark.parametrize("port", ["0", "99999", "8o80"])
async def test_a_url_whose_port_cannot_be_connected_fails_the_channel_naming_the_port(
    port: str,
) -> None:
    # Port 0 is not the scheme's default (it used to mean 80), and one that
    # cannot be read is fatal, not a crash: neither heals by retrying.
    cfg = attrs.evolve(config("ws://127.0.0.1:1/"), base_url=f"ws://127.0.0.1:{port}/")
    with trio.fail_after(IO_CEILING), pytest.raises(FatalError, match="port"):
        async with WebSocketProvider().open_connection(cfg):
            pass


class _NeverIO:
    backlogged = False

    async def send_all(self, data: bytes, *, schedule: bool = True) -> None:
        raise AssertionError("nothing may be sent")


async def test_a_message_over_the_size_limit_closes_the_link_with_1009() -> None:
    closed: list[int] = []

    async def script(peer: Peer) -> None:
        await peer.accept(READY)
        half = "x" * (MAX_MESSAGE_SIZE // 2 + 1)
        await peer.send(TextMessage(data=half, message_finished=False))
        await peer.send(TextMessage(data=half, message_finished=True))
        event = await peer.next_event()
        assert isinstance(event, CloseConnection)
        closed.append(event.code)

    with trio.fail_after(IO_CEILING):
        async with scripted(script) as url:
            async with WebSocketProvider().open_connection(config(url)) as conn:
                with pytest.raises(TransientError, match=f"code {MESSAGE_TOO_BIG}"):
                    async for _ in conn.events():
                        pass
    assert closed == [MESSAGE_TOO_BIG]


async def test_a_refused_peer_is_read_out_before_the_consumer_hears_of_it() -> None:
    # We closed the link (1007) over the server's frame: the server must be able
    # to read why, so the link is held open, reading, until the server hangs up
    # (or close_timeout), and only then do the events end; a consumer that leaves
    # at once would close the socket under the close frame.
    seen: list[str] = []
    consumer_done = trio.Event()
    opened = trio.Event()

    async def script(peer: Peer) -> None:
        await peer.accept(READY)
        await opened.wait()
        await peer.stream.send_all(b"\x81\x02\xff\xfe")  # a text that is not UTF-8
        event = await peer.next_event()
        assert isinstance(event, CloseConnection) and event.code == 1007
        await trio.testing.wait_all_tasks_blocked()
        seen.append("consumer ended first" if consumer_done.is_set() else "link held open")
        await peer.stream.send_all(b"\x81\x01x")  # read and dropped by the client

    with trio.fail_after(IO_CEILING):
        async with scripted(script) as url:
            cfg = config(url, close_timeout=IO_CEILING)
            async with WebSocketProvider().open_connection(cfg) as conn:
                opened.set()
                with pytest.raises(TransientError, match="1007"):
                    async for _ in conn.events():
                        pass
                consumer_done.set()
    assert seen == ["link held open"]


# A ping framed by hand (unmasked, opcode 9): wsproto has a server refuse to
# ping once our close came, as a real server may not.
LATE_PING = b"\x89\x04late"


@pytest.mark.parametrize("before_its_close", [b"", LATE_PING], ids=["plain", "late-ping"])
async def test_our_close_completes_the_handshake_without_waiting_out_the_timeout(
    before_its_close: bytes,
) -> None:
    # With a ping after our close frame went: the protocol answers it (a
    # control frame after a close, which RFC 6455 allows) and the handshake
    # completes, not "the link failed".
    closes: list[tuple[int, str | None]] = []

    async def script(peer: Peer) -> None:
        await peer.accept(READY)
        event = await peer.next_event()
        assert isinstance(event, CloseConnection)
        closes.append((event.code, event.reason))
        await peer.stream.send_all(before_its_close + peer.ws.send(event.response()))

    # close_timeout far above the ceiling: only a completed handshake returns in time
    with trio.fail_after(IO_CEILING):
        async with scripted(script) as url:
            cfg = config(url, close_timeout=IO_CEILING * 10)
            async with WebSocketProvider().open_connection(cfg) as conn:
                events = conn.events()
                await anext(events)  # ready
                link = conn._link
                await conn.close()
                assert [e async for e in events] == []  # ends quietly after our close
                assert link._ws.close_rcvd is not None  # the server's close was read
                assert link.finished
    assert closes == [(1000, "client closing")]


async def test_a_slow_consumer_gets_every_event_in_order() -> None:
    count = 20

    async def script(peer: Peer) -> None:
        await peer.accept(READY, *(message(f"m{i}") for i in range(count)))
        await hold(peer)

    with trio.fail_after(IO_CEILING):
        async with scripted(script) as url:
            # a buffer of 2: the reader waits for the consumer most of the time
            async with WebSocketProvider().open_connection(config(url, event_buffer=2)) as conn:
                events = conn.events()
                await anext(events)  # ready
                ids = []
                for _ in range(count):
                    await trio.lowlevel.checkpoint()  # let the reader run ahead
                    inbound = await anext(events)
                    assert isinstance(inbound, InboundMessage)
                    ids.append(inbound.platform_message_id)
    assert ids == [f"m{i}" for i in range(count)]


async def test_what_the_read_hub_cannot_apply_goes_to_the_reader_with_everything_after_it() -> None:
    """One read brings an ack, a message and a second ack. The hub settles the
    first send in place; the message (no take at once: it is for the event
    buffer) wakes the reader with the rest, which it applies in order: the
    message once, then the second ack."""
    sent: list[str] = []

    async def script(peer: Peer) -> None:
        await peer.accept(READY)
        while len(sent) < 2:
            event = await peer.next_event()
            if isinstance(event, TextMessage):
                sent.append(json.loads(event.data)["id"])
        await peer.send(
            TextMessage(data=json.dumps({"type": "ack", "id": sent[0], "message_id": "o1"})),
            TextMessage(data=message("m1")),
            TextMessage(data=json.dumps({"type": "ack", "id": sent[1], "message_id": "o2"})),
        )
        await hold(peer)

    results: dict[str, str] = {}
    with trio.fail_after(IO_CEILING):
        async with scripted(script) as url:
            async with WebSocketProvider().open_connection(config(url)) as conn:
                events = conn.events()
                await anext(events)  # ready

                async def send(key: str) -> None:
                    msg = OutboundMessage(peer="p", idempotency_key=key, text="hi")
                    results[key] = (await conn.send(msg)).platform_message_id

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(send, "k1")
                    nursery.start_soon(send, "k2")
                inbound = await anext(events)
                assert isinstance(inbound, InboundMessage)
                assert inbound.platform_message_id == "m1"
                await conn.close()
                assert [event async for event in events] == []  # m1 came once
    assert sorted(sent) == ["k1", "k2"]  # sent in the order the two tasks ran
    assert results == {sent[0]: "o1", sent[1]: "o2"}


class _Yields(trio.abc.Instrument):
    """Counts the times one task gives the scheduler back its turn."""

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.count = 0

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.count += 1


async def test_a_write_the_caller_waits_after_does_not_yield_first() -> None:
    # The send path writes a frame and then waits for its ack: that wait is its
    # checkpoint, so the write (taken by the socket at once) does not yield.
    # A cancelled caller is still refused, and any other write is a checkpoint.
    from providers.websocket.link import _SocketIO

    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    io = _SocketIO(ours)
    yields = _Yields(trio.lowlevel.current_task())
    trio.lowlevel.add_instrument(yields)
    try:
        with trio.fail_after(IO_CEILING):
            await io.send_all(b"frame", schedule=False)
            assert yields.count == 0
            await io.send_all(b"pong")
            assert yields.count == 1
            with trio.CancelScope() as scope:
                scope.cancel()
                await io.send_all(b"late", schedule=False)
            assert scope.cancelled_caught
        assert theirs.recv(64) == b"framepong"
    finally:
        trio.lowlevel.remove_instrument(yields)
        ours.close()
        theirs.close()


async def test_a_send_cancelled_before_it_writes_leaves_the_link_whole() -> None:
    # Only a write cut half-way spoils the stream; a sender cancelled before
    # it wrote a byte (its caller gave up) leaves the link to the others.
    from providers.websocket.link import open_link

    received: list[str] = []
    both = trio.Event()

    async def script(peer: Peer) -> None:
        await peer.accept()
        while True:
            event = await peer.next_event()
            if isinstance(event, CloseConnection):
                return
            if isinstance(event, TextMessage):
                received.append(event.data)
                if len(received) == 2:
                    both.set()

    with trio.fail_after(IO_CEILING):
        async with scripted(script) as url:
            link = await open_link(url, [])
            try:
                with trio.CancelScope() as scope:
                    scope.cancel()
                    await link.send_text("never")
                assert scope.cancelled_caught
                await link.send_text("after")
                await link.send_text("again", schedule=False)
                await both.wait()
            finally:
                await link.aclose()
    assert received == ["after", "again"]


STANDOFF_SIZE, STANDOFF_COUNT = 8_192, 2_000  # 16 MB each way: more than both sockets' buffers


async def standoff(send: Callable[[Any, str], Awaitable[None]]) -> list[Any]:
    """``send(link, text)`` fills the socket one way while the peer floods the other.

    The peer writes to us faster than we read and reads nothing until its
    writes drain; once our frame has begun, it pings. The reader reads on
    meanwhile. Returns what the peer heard: our message's length, then the
    pong's payload (after our whole frame, never inside it).
    """
    from providers.websocket.link import open_link

    size, count = STANDOFF_SIZE, STANDOFF_COUNT
    heard: list[Any] = []
    sent_all, answered = trio.Event(), trio.Event()

    async def script(peer: Peer) -> None:
        await peer.accept()
        await peer.wait_for_bytes()  # our sender has begun: it holds the lock from now on
        await peer.send(Ping(payload=b"still-there"))
        await peer.send(*(TextMessage(data="m" * size) for _ in range(count)))
        sent_all.set()
        text = ""
        while True:
            event = await peer.next_event()
            if isinstance(event, TextMessage):
                text += event.data
                if event.message_finished:
                    heard.append(len(text))
                    text = ""
            elif isinstance(event, Pong):
                heard.append(bytes(event.payload))
                answered.set()
                return

    with trio.fail_after(IO_CEILING):
        async with scripted(script) as url:
            link = await open_link(url, [], max_message_size=size)
            try:
                read = 0

                async def reader() -> None:
                    nonlocal read
                    while read < count:
                        items = link.feed(await link.receive_bytes())
                        await link.flush()
                        read += sum(1 for item in items if isinstance(item, str))

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(send, link, "s" * size * count)
                    nursery.start_soon(reader)
                assert sent_all.is_set() and read == count
                await answered.wait()
            finally:
                await link.aclose()
    return heard


async def test_a_sender_blocked_on_a_full_socket_does_not_stop_the_reader() -> None:
    # A reader that waited for the sender's lock to answer a ping would stop
    # reading: neither end would ever drain. The pong goes out after the
    # sender's frame, written by the sender before it lets go of the lock.
    async def send(link: Any, text: str) -> None:
        await link.send_text(text)

    heard = await standoff(send)
    assert heard == [STANDOFF_SIZE * STANDOFF_COUNT, b"still-there"]


async def test_the_reader_answers_a_heartbeat_without_waiting_for_a_blocked_send() -> None:
    # The same standoff one level up: the protocol's heartbeat is answered by
    # the reader with a frame of its own, which a blocked send must not hold.
    size, count = 8_192, 2_000
    heard: list[str] = []
    answered = trio.Event()

    async def script(peer: Peer) -> None:
        await peer.accept(READY)
        await peer.wait_for_bytes()  # our send has begun: it holds the lock from now on
        await peer.send(
            TextMessage(data=json.dumps({"type": "heartbeat"})),
            *(TextMessage(data=message(f"m{n}", text="m" * size)) for n in range(count)),
        )
        text = ""
        while not answered.is_set():
            event = await peer.next_event()
            if isinstance(event, TextMessage):
                text += event.data
                if event.message_finished:
                    heard.append(text if text == HEARTBEAT_ACK else "send")
                    text = ""
                    if heard[-1] == HEARTBEAT_ACK:
                        answered.set()
        await hold(peer)

    with trio.fail_after(IO_CEILING):
        async with scripted(script) as url:
            async with WebSocketProvider().open_connection(config(url)) as conn:
                received = 0
                sending = trio.CancelScope()  # its ack never comes: cancelled at the end

                async def send() -> None:
                    with sending:
                        await conn.send(
                            OutboundMessage(peer="p", text="s" * size * count, idempotency_key="k")
                        )

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(send)
                    async for event in conn.events():
                        if isinstance(event, InboundMessage):
                            received += 1
                            if received == count:
                                break
                    await answered.wait()
                    sending.cancel()
    assert received == count
    assert heard == ["send", HEARTBEAT_ACK]
