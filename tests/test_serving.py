"""Serving through hypercorn: a client hanging up never ends the server.

The race is in hypercorn's trio ``TCPServer`` (see :mod:`providers.serving`):
its ``_close()`` sent the EOF outside the connection's send lock, so a write
that began meanwhile raised ``trio.BusyResourceError``, which ended the
whole server. The scripted tests drive that interleaving step by step with a
transport whose EOF takes a while; the served test shows the symptom over
real sockets (before the fix, about one connection in four ended the server).
"""

from __future__ import annotations

from typing import Final

import httpx
import trio
import trio.testing
from hypercorn.config import Config
from hypercorn.events import Closed, Event, RawData
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from providers.serving import install_close_fix, serve_asgi
from tests.support import hang_up_mid_request

CEILING: Final = 10.0  # real seconds; only a hang gets near it
HANG_UPS: Final = 50  # connections that hang up mid-request (before the fix: 1 in 4 crashed)


class SlowEofStream(trio.abc.HalfCloseableStream):
    """A scripted transport whose EOF goes out only when the test says so.

    It keeps trio's rule for streams: one send operation (``send_all`` or
    ``send_eof``) at a time, else ``trio.BusyResourceError``. With
    ``hold_writes``, a write waits for the peer to read, which it never does:
    it ends only when the stream is closed (as a socket's does).
    """

    def __init__(self, *, hold_writes: bool = False) -> None:
        self.hold_writes = hold_writes
        self.written = bytearray()
        self.closed = False
        self.writing = trio.Event()
        self.eof_started = trio.Event()
        self.eof_release = trio.Event()
        self._sending = False
        self._closing = trio.Event()

    def _claim(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is currently sending data on this stream")
        if self.closed:
            raise trio.ClosedResourceError("the stream is closed")
        self._sending = True

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self._claim()
        try:
            if self.hold_writes:
                self.writing.set()
                await self._closing.wait()
                raise trio.ClosedResourceError("the stream was closed during the write")
            await trio.lowlevel.checkpoint()
            self.written += data
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def send_eof(self) -> None:
        self._claim()
        try:
            self.eof_started.set()
            await self.eof_release.wait()
        finally:
            self._sending = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        self.closed = True
        self._closing.set()
        await trio.lowlevel.checkpoint()


class Recorder:
    """Stands in for hypercorn's protocol: what the server told it."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    async def handle(self, event: Event) -> None:
        self.events.append(event)
        await trio.lowlevel.checkpoint()


def connection(stream: SlowEofStream) -> tuple[TCPServer, Recorder]:
    install_close_fix()
    server = TCPServer(None, Config(), WorkerContext(None), {}, stream)  # type: ignore[arg-type]
    recorder = Recorder()
    server.protocol = recorder  # type: ignore[assignment]
    return server, recorder


async def test_a_write_that_meets_the_eof_going_out_finds_the_connection_closed() -> None:
    # The app's task closes the connection (it answered before the body came);
    # the reader task, seeing the client hang up, writes its 400 meanwhile.
    stream = SlowEofStream()
    server, recorder = connection(stream)
    with trio.fail_after(CEILING):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server._close)
            await stream.eof_started.wait()
            nursery.start_soon(server.protocol_send, RawData(data=b"HTTP/1.1 400 \r\n\r\n"))
            await trio.testing.wait_all_tasks_blocked()
            stream.eof_release.set()
    assert stream.closed
    assert stream.written == b""  # nothing goes out after the EOF
    assert recorder.events == [Closed()]  # hypercorn's way of hearing the peer is gone


async def test_closing_during_a_write_that_cannot_finish_does_not_wait_for_it() -> None:
    # A write the peer never reads holds the send lock for good (hypercorn
    # shields it): closing must end it, never queue behind it.
    stream = SlowEofStream(hold_writes=True)
    server, recorder = connection(stream)
    with trio.fail_after(CEILING):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.protocol_send, RawData(data=b"a large answer"))
            await stream.writing.wait()
            await server._close()
    assert stream.closed and not stream.eof_started.is_set()
    assert recorder.events == [Closed()]


def test_the_fix_is_installed_once() -> None:
    install_close_fix()
    close = TCPServer._close
    install_close_fix()
    assert TCPServer._close is close


async def _refuse(request: Request) -> Response:
    """Answers on the headers alone, never reading the body (a 503 "closed", a 401...)."""
    return Response(b"closed", status_code=503)


async def test_clients_hanging_up_on_an_early_answer_leave_the_server_serving() -> None:
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    app = Starlette(routes=[Route("/", _refuse, methods=["GET", "POST"])])
    with trio.fail_after(CEILING):
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(
                lambda task_status: serve_asgi(app, config, task_status=task_status)
            )
            await hang_up_mid_request(binds[0], "/", times=HANG_UPS)
            async with httpx.AsyncClient() as client:
                answer = await client.get(binds[0])
            assert (answer.status_code, answer.content) == (503, b"closed")
            nursery.cancel_scope.cancel()
