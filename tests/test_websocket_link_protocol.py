"""The websocket link on ``websockets``' protocol where it differs from wsproto's.

The handshake against raw answers a misbehaving server may give (refusals
the protocol's parser gives up on, an echo of our request), the reader's
``flush`` while a sender holds the lock, a close inside a fragmented
message, and the protocol's DEBUG log. Each failed on the link's first
version on ``websockets``.
"""

from __future__ import annotations

import base64
import gc
import hashlib
import logging
from collections.abc import Callable

import pytest
import trio
import trio.testing
from websockets.http11 import Response
from wsproto import ConnectionType
from wsproto.connection import Connection
from wsproto.events import CloseConnection, TextMessage

from providers.websocket.link import (
    Closed,
    LinkHandshakeFailed,
    LinkRejected,
    WebSocketLink,
    open_link,
)
from tests.support import open_client_protocol

CEILING = 10.0  # real seconds; only a hang gets near it
BIG = 2 * 1024 * 1024  # past websockets' 1 MiB cap on a response body
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _accept(request: bytes) -> bytes:
    """The 101 answer to ``request``, with its right accept key."""
    for line in request.split(b"\r\n"):
        if line.lower().startswith(b"sec-websocket-key:"):
            key = line.split(b":", 1)[1].strip()
            accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
            return (
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
    raise AssertionError(f"no key in {request!r}")


Answer = Callable[[bytes], list[bytes | None]]  # the request -> chunks to send (None: hang up)


async def _open_against(answer: Answer) -> WebSocketLink:
    """``open_link`` (a token in the query and in a header) against a server that
    sends ``answer``'s chunks, then stays (or hangs up at a ``None``)."""

    async def handle(stream: trio.SocketStream) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            request += await stream.receive_some(65_536)
        for chunk in answer(request):
            if chunk is None:
                await stream.aclose()
                return
            await stream.send_all(chunk)
        await trio.sleep_forever()

    opened: WebSocketLink | Exception
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, handle, 0)
        port = listeners[0].socket.getsockname()[1]
        try:
            with trio.fail_after(CEILING):
                opened = await open_link(
                    f"ws://127.0.0.1:{port}/ws?token=QSECRET",
                    [(b"authorization", b"Bearer HSECRET")],
                )
        except Exception as exc:  # raised below, outside the server's nursery
            opened = exc
        nursery.cancel_scope.cancel()
    if isinstance(opened, Exception):
        raise opened
    return opened


@pytest.mark.parametrize(
    ("answer", "status", "body"),
    [
        (lambda r: [b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 5\r\n\r\nnope!"], 401, b"nope!"),
        (
            lambda r: [
                b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
            ],
            403,
            b"abc",
        ),
        (lambda r: [b"HTTP/1.1 503 Busy\r\n\r\nlater", None], 503, b"later"),
        (
            lambda r: [
                b"HTTP/1.1 429 Slow\r\nRetry-After: 7\r\nContent-Length: %d\r\n\r\n" % BIG
                + b"x" * BIG
            ],
            429,
            None,
        ),
        (lambda r: [b"HTTP/1.1 429 Slow\r\nRetry-After: 7\r\n\r\n" + b"x" * BIG, None], 429, None),
        (
            lambda r: [b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 50\r\n\r\nnope", None],
            401,
            b"nope",
        ),
        (lambda r: [b"HTTP/1.0 401 Unauthorized\r\nContent-Length: 0\r\n\r\n"], 401, b""),
    ],
    ids=[
        "body",
        "chunked",
        "until-eof",
        "body-over-1MiB",
        "over-1MiB-until-eof",
        "cut-short",
        "http-1.0",
    ],
)
async def test_every_refusal_is_a_rejection_with_its_status(
    answer: Answer, status: int, body: bytes | None
) -> None:
    # Refusals the protocol's parser gives up on (a body over its cap, one cut
    # short, HTTP/1.0) are still refusals: a 401 must stay AuthenticationFailed
    # and a 429 keep its Retry-After, not become "retry with backoff".
    with pytest.raises(LinkRejected) as info:
        await _open_against(answer)
    assert info.value.status_code == status
    if body is not None:
        assert info.value.body == body
    else:
        assert 0 < len(info.value.body) <= 65_536
    if status == 429:
        assert (b"retry-after", b"7") in info.value.headers


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        (lambda r: [b"hello there\r\n\r\n", None], "bad websocket handshake"),
        (lambda r: [r, None], "bad websocket handshake"),  # an echo of our request
        (lambda r: [_accept(r).replace(b"Accept: ", b"Accept: AAAA")], "bad websocket handshake"),
        (lambda r: [None], "hung up during the websocket handshake"),
    ],
    ids=["garbage", "echo", "bad-accept", "hang-up"],
)
async def test_a_failed_handshake_says_so_without_quoting_a_secret(
    answer: Answer, match: str
) -> None:
    with pytest.raises(LinkHandshakeFailed, match=match) as info:
        await _open_against(answer)
    assert "SECRET" not in str(info.value) and "SECRET" not in repr(info.value)


async def test_frames_that_come_with_the_accept_are_the_first_feed_s() -> None:
    link = await _open_against(lambda r: [_accept(r) + b"\x81\x02hi\x89\x01p"])  # a text, a ping
    try:
        assert link.feed(b"") == ["hi"]
        assert link._replies, "the ping's pong is owed"
    finally:
        await link.aclose()


async def test_the_protocol_s_debug_log_holds_no_token(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        link = await _open_against(lambda r: [_accept(r) + b"\x81\x02hi"])
        link.feed(b"")
        await link.aclose()
    assert not [r for r in caplog.records if "SECRET" in r.getMessage()]


class _BlockedIO:
    """A socket the peer reads nothing from: every write waits for good."""

    backlogged = False  # (no TLS: nothing of its own waits to be written)

    async def send_all(self, data: bytes, *, schedule: bool = True) -> None:
        await trio.sleep_forever()

    async def receive(self) -> bytes | None:
        await trio.sleep_forever()

    async def aclose(self) -> None:
        pass


@pytest.mark.parametrize(
    ("holder", "data"),
    [("close", b"\x89\x01p"), ("send", None)],
    ids=["a-ping-while-our-close-waits", "the-end-while-a-send-waits"],
)
async def test_the_reader_s_flush_never_waits_behind_a_blocked_sender(
    holder: str, data: bytes | None
) -> None:
    # The reader must go on reading (and report the end) while a sender is
    # stuck on a full socket: the pong after our close is the holder's to
    # write, and the protocol's end-of-stream marker is nothing to write.
    link = WebSocketLink(_BlockedIO(), open_client_protocol())  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        if holder == "close":
            nursery.start_soon(link.close, 1000, "bye")
        else:
            nursery.start_soon(link.send_text, "x")
        await trio.testing.wait_all_tasks_blocked()
        items = link.feed(data)
        with trio.fail_after(CEILING):
            await link.flush()
        nursery.cancel_scope.cancel()
    if data is None:
        assert [(type(i), i.code) for i in items if isinstance(i, Closed)] == [(Closed, None)]


async def test_a_close_inside_a_fragmented_message_keeps_the_server_s_code() -> None:
    # RFC 6455 lets a close come between a message's frames; the server's code
    # (4029: rate limited, 4003: banned) decides how the channel reconnects.
    server = Connection(ConnectionType.SERVER)
    frames = server.send(TextMessage(data="part", message_finished=False))
    frames += server.send(CloseConnection(code=4029, reason="30"))
    link = WebSocketLink(_BlockedIO(), open_client_protocol())  # type: ignore[arg-type]
    items = link.feed(frames)
    assert [(i.code, i.reason) for i in items if isinstance(i, Closed)] == [(4029, "30")]
    assert link.feed(None) == []  # told once


async def test_an_open_link_keeps_none_of_the_handshake_s_answer() -> None:
    # The protocol's parser holds the 101 answer for the link's life (ten
    # thousand links hold one each): its headers and body are dropped.
    link = await _open_against(lambda r: [_accept(r)])
    try:
        seen: set[int] = set()
        todo: list[object] = [link]
        answers = []
        while todo:
            item = todo.pop()
            if id(item) in seen or isinstance(item, type):
                continue
            seen.add(id(item))
            if isinstance(item, Response):
                answers.append(item)
            todo.extend(gc.get_referents(item))
        assert answers, "the protocol no longer keeps the answer: drop this test's premise"
        assert all(not answer.headers and not answer.body for answer in answers)
    finally:
        await link.aclose()
