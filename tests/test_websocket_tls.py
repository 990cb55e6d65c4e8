"""``wss://``: the link's own TLS over its socket (``_TLSSocketIO``), against a real TLS server.

The server here is trio's TLS stream with the sans-I/O server protocol of
``websockets``, holding a certificate of a private CA (``bench.tls``). The
link must check the certificate and the name, send at once (a send made at
once takes no task, as over ``ws://``), keep every frame whole and in order
when the socket fills, read what the server sends however its records come,
and end cleanly on the server's TLS goodbye or on a cut connection.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from websockets.frames import Frame, Opcode
from websockets.server import ServerProtocol

from bench.rig import open_far_end_process
from bench.tls import PrivateAuthority
from providers.base import ChannelConfig, FatalError, OutboundMessage, TransientError
from providers.websocket import WebSocketProvider
from providers.websocket.link import WebSocketLink, _TLSSocketIO, open_link, tls_context
from providers.websocket.shell import WebSocketConnection

IO_CEILING = 30.0  # real seconds; only a hang gets near it
BIG = 64 * 1024  # characters in a large text: several TLS records


class Peer:
    """The server's side of one accepted link: its TLS stream and websocket protocol."""

    def __init__(self, stream: trio.abc.Stream, protocol: ServerProtocol):
        self.stream = stream
        self.protocol = protocol

    async def send_text(self, text: str) -> None:
        self.protocol.send_text(text.encode())
        await self.stream.send_all(b"".join(self.protocol.data_to_send()))

    async def texts(self, count: int) -> list[str]:
        found: list[str] = []
        while len(found) < count:
            for event in self.protocol.events_received():
                if isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                    found.append(event.data.decode())
            if len(found) < count:
                data = await self.stream.receive_some(65_536)
                assert data, f"the client hung up after {len(found)} of {count} texts"
                self.protocol.receive_data(data)
        return found


Handler = Callable[[Peer], Awaitable[None]]


async def _accept(context: ssl.SSLContext | None, handler: Handler, tcp: trio.SocketStream) -> None:
    stream: trio.abc.Stream = tcp
    if context is not None:
        stream = trio.SSLStream(tcp, context, server_side=True)
    protocol = ServerProtocol(max_size=None)
    try:
        while True:
            data = await stream.receive_some(65_536)
            if not data:
                return
            protocol.receive_data(data)
            events = protocol.events_received()
            if events:
                break
        protocol.send_response(protocol.accept(events[0]))
        await stream.send_all(b"".join(protocol.data_to_send()))
        await handler(Peer(stream, protocol))
    except trio.BrokenResourceError:
        pass  # the client cut it (the tests that do check what they saw)


@asynccontextmanager
async def tls_server(authority: PrivateAuthority | None, handler: Handler) -> AsyncIterator[int]:
    """A websocket server over TLS on 127.0.0.1 (plain without ``authority``); yields its port."""
    context = None
    if authority is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(authority.server_pem))
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(trio.serve_tcp, partial(_accept, context, handler), 0, host="127.0.0.1")
        )
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def raw_server(serve: Callable[[trio.SocketStream], Awaitable[None]]) -> AsyncIterator[int]:
    """A TCP server on 127.0.0.1 that runs ``serve`` for each connection; yields its port."""
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


async def read_texts(link: WebSocketLink, count: int) -> list[str]:
    # Frames that came with the upgrade's answer wait for the first feed.
    found = [item for item in link.feed(b"") if isinstance(item, str)]
    while len(found) < count:
        data = await link.receive_bytes()
        assert data is not None, f"the link ended after {len(found)} of {count} texts"
        found += [item for item in link.feed(data) if isinstance(item, str)]
        await link.flush()
    return found


@pytest.fixture
def authority(tmp_path: Path) -> PrivateAuthority:
    return PrivateAuthority(tmp_path)


async def test_a_wss_link_sends_at_once_and_reads_every_record(
    authority: PrivateAuthority,
) -> None:
    async def handler(peer: Peer) -> None:
        assert await peer.texts(1) == ["hello"]
        for i in range(50):  # a TLS record each: the link reads them all, in order
            await peer.send_text(f"small {i}")
        await peer.send_text("x" * BIG)  # a message over several records
        await peer.stream.aclose()  # with TLS's goodbye

    with trio.fail_after(IO_CEILING):
        async with tls_server(authority, handler) as port:
            link = await open_link(
                f"wss://127.0.0.1:{port}/ws", [], ssl_context=authority.client_context()
            )
            try:
                assert link.can_send_now  # a TLS socket of ours: the at-once path
                assert link.send_text_now("hello") is None  # the socket took it all
                assert await read_texts(link, 51) == [f"small {i}" for i in range(50)] + ["x" * BIG]
                while (data := await link.receive_bytes()) is not None:  # the goodbye: the end
                    link.feed(data)
            finally:
                await link.aclose()


async def test_a_wss_link_parked_in_the_read_hub_decrypts_and_takes_records_in_place(
    authority: PrivateAuthority,
) -> None:
    """The hub reads the ciphertext; the link decrypts it in the hub's task and
    hands the plaintext to ``take``. A message over several records waits
    parked until its last record; the goodbye ends the wait with ``None``."""

    async def handler(peer: Peer) -> None:
        assert await peer.texts(1) == ["hello"]
        for i in range(50):
            await peer.send_text(f"small {i}")
        await peer.send_text("x" * BIG)  # several records: the first ones decrypt to a part
        await peer.stream.aclose()  # with TLS's goodbye

    with trio.fail_after(IO_CEILING):
        async with tls_server(authority, handler) as port:
            link = await open_link(
                f"wss://127.0.0.1:{port}/ws", [], ssl_context=authority.client_context()
            )
            texts = [item for item in link.feed(b"") if isinstance(item, str)]
            taken: list[str] = []  # the texts that came through take

            def take(data: bytes) -> None:
                found = [item for item in link.feed(data) if isinstance(item, str)]
                texts.extend(found)
                taken.extend(found)

            try:
                assert link.send_text_now("hello") is None
                while (got := await link.receive_taking(take)) is not None:
                    assert isinstance(got, bytes)  # decrypted before it parked: not taken
                    texts.extend(item for item in link.feed(got) if isinstance(item, str))
            finally:
                await link.aclose()
    assert texts == [f"small {i}" for i in range(50)] + ["x" * BIG]
    # The message over several records was read while parked: its first
    # records decrypted to a part, which the protocol kept until the last.
    assert taken and taken[-1] == "x" * BIG


async def _tls_pair(
    authority: PrivateAuthority,
) -> tuple[_TLSSocketIO, ssl.SSLObject, ssl.MemoryBIO, socket.socket]:
    """A client ``_TLSSocketIO`` on a socket pair, its handshake done with a server
    engine the test drives byte by byte: (client, server engine, its output, its socket)."""
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(str(authority.server_pem))
    into, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    server = server_context.wrap_bio(into, out, server_side=True)
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    peer = trio.socket.from_stdlib_socket(theirs)
    client = _TLSSocketIO(ours, authority.client_context(), "localhost")

    async def serve_handshake() -> None:
        while True:
            try:
                server.do_handshake()
                break
            except ssl.SSLWantReadError:
                if out.pending:
                    await peer.send(out.read())
                into.write(await peer.recv(65_536))
        if out.pending:
            await peer.send(out.read())

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_handshake)
            await client.handshake()
    except BaseException:
        ours.close()
        theirs.close()
        raise
    return client, server, out, theirs


async def test_records_that_decrypt_to_more_than_one_read_are_all_taken(
    authority: PrivateAuthority,
) -> None:
    """One chunk of ciphertext can complete records worth more than a read
    (65,536 bytes): the socket has nothing more to signal, so the hub's take
    gets all of them before the reader stays parked. A goodbye that comes
    with the last data wakes the reader with the end."""
    taken: list[int] = []

    def take(data: bytes) -> None:
        taken.append(len(data))

    with trio.fail_after(IO_CEILING):
        client, server, out, theirs = await _tls_pair(authority)
    try:
        with trio.fail_after(IO_CEILING):
            for i in range(7):
                server.write(bytes([65 + i]) * 10_000)
            records = out.read()
            theirs.sendall(records[:1000])  # the first record in parts
            async with trio.open_nursery() as nursery:

                async def reader() -> None:
                    assert await client.receive_taking(take) is None  # the goodbye

                nursery.start_soon(reader)
                await trio.testing.wait_all_tasks_blocked()
                assert taken == []
                theirs.sendall(records[1000:])  # completes all seven: 70,000 bytes
                await trio.testing.wait_all_tasks_blocked()
                assert sum(taken) == 70_000 and len(taken) == 2
                server.write(b"last words")
                with contextlib.suppress(ssl.SSLWantReadError):
                    server.unwrap()  # its goodbye, in the same chunk; TCP stays open
                theirs.sendall(out.read())
            assert sum(taken) == 70_010
    finally:
        await client.aclose()
        theirs.close()


async def test_a_wss_send_the_socket_cannot_take_waits_and_keeps_every_frame_in_order(
    authority: PrivateAuthority,
) -> None:
    reading = trio.Event()
    count = 0
    received: list[str] = []

    finished = trio.Event()

    async def handler(peer: Peer) -> None:
        await reading.wait()  # not read until the client's socket is full
        while not received or received[-1] != "end":
            received.extend(await peer.texts(1))
        finished.set()

    with trio.fail_after(IO_CEILING):
        async with tls_server(authority, handler) as port:
            link = await open_link(
                f"wss://127.0.0.1:{port}/ws", [], ssl_context=authority.client_context()
            )
            try:
                rest = None
                while rest is None:
                    assert count < 2_000, "the socket never filled"
                    rest = link.send_text_now(f"{count:06d}" + "y" * BIG)
                    count += 1
                assert rest == b""  # TLS took the text; its records wait in the backlog
                assert not link.can_send_now  # locked until the backlog is written
                reading.set()
                await link.send_rest(rest)
                assert link.can_send_now
                for _ in range(3):  # and the path that waits, after it
                    await link.send_text(f"{count:06d}" + "y" * BIG)
                    count += 1
                await link.send_text("end")
                await finished.wait()
            finally:
                await link.aclose()
    assert count > 3
    assert [text[:6] for text in received[:-1]] == [f"{i:06d}" for i in range(count)]
    assert all(text[6:] == "y" * BIG for text in received[:-1])


async def test_records_tls_made_while_reading_are_written_by_the_reader_s_flush(
    authority: PrivateAuthority,
) -> None:
    # TLS may answer what it reads (a TLS 1.3 key update): records the socket
    # did not take then wait in the backlog; with no sender to write them, the
    # reader's flush does. (Python's ssl cannot make a server ask for a key
    # update: the record is made here, a frame sealed and left unsent.)
    received: list[str] = []
    got = trio.Event()

    async def handler(peer: Peer) -> None:
        received.extend(await peer.texts(1))
        got.set()
        await trio.sleep_forever()

    with trio.fail_after(IO_CEILING):
        async with tls_server(authority, handler) as port:
            link = await open_link(
                f"wss://127.0.0.1:{port}/ws", [], ssl_context=authority.client_context()
            )
            try:
                io = link._io
                assert isinstance(io, _TLSSocketIO)
                link._ws.send_text(b"said while reading")
                io._tls.write(b"".join(link._ws.data_to_send()))
                io._backlog += io._outgoing.read()  # as _answer leaves it on a full socket
                assert io.backlogged
                await link.flush()
                assert not io.backlogged
                await got.wait()
            finally:
                await link.aclose()
    assert received == ["said while reading"]


async def test_a_wss_link_ends_when_the_server_cuts_the_connection(
    authority: PrivateAuthority,
) -> None:
    async def handler(peer: Peer) -> None:
        await peer.send_text("bye")
        await trio.aclose_forcefully(peer.stream)  # no TLS goodbye

    with trio.fail_after(IO_CEILING):
        async with tls_server(authority, handler) as port:
            link = await open_link(
                f"wss://127.0.0.1:{port}/ws", [], ssl_context=authority.client_context()
            )
            try:
                assert await read_texts(link, 1) == ["bye"]
                assert await link.receive_bytes() is None
            finally:
                await link.aclose()


async def test_wss_refuses_a_certificate_of_another_ca_or_another_name(
    authority: PrivateAuthority, tmp_path: Path
) -> None:
    async def handler(peer: Peer) -> None:
        raise AssertionError("a refused server was served")

    (tmp_path / "other").mkdir()
    stranger = PrivateAuthority(tmp_path / "other", names=("other.example",))
    with trio.fail_after(IO_CEILING):
        async with tls_server(authority, handler) as port:
            url = f"wss://127.0.0.1:{port}/ws"
            with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
                await open_link(url, [], ssl_context=stranger.client_context())
        async with tls_server(stranger, handler) as port:
            with pytest.raises(ssl.SSLCertVerificationError, match=r"127\.0\.0\.1"):
                await open_link(
                    f"wss://127.0.0.1:{port}/ws", [], ssl_context=stranger.client_context()
                )


async def test_wss_to_a_server_that_does_not_speak_tls_fails_as_a_connect_error() -> None:
    async def plain_http(stream: trio.SocketStream) -> None:
        await stream.receive_some(4096)
        await stream.send_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
        await stream.aclose()

    async def hangs_up(stream: trio.SocketStream) -> None:
        await stream.receive_some(4096)  # the client's hello, then a clean end
        await stream.aclose()

    with trio.fail_after(IO_CEILING):
        async with raw_server(plain_http) as port:
            with pytest.raises(ssl.SSLError):
                await open_link(f"wss://127.0.0.1:{port}/ws", [])
        async with raw_server(hangs_up) as port:
            with pytest.raises(OSError, match="closed the connection during the TLS handshake"):
                await open_link(f"wss://127.0.0.1:{port}/ws", [])


def test_the_trust_store_is_loaded_once_per_ca_file(authority: PrivateAuthority) -> None:
    # A context per link loaded the system's store each time: 35 ms and 0.86 MB.
    assert tls_context() is tls_context()
    assert tls_context(str(authority.ca_pem)) is tls_context(str(authority.ca_pem))
    assert tls_context(str(authority.ca_pem)) is not tls_context()
    assert tls_context().options & ssl.OP_NO_RENEGOTIATION


@pytest.mark.parametrize("name", ["missing.pem", "not-a-ca.pem", "empty.pem"])
def test_a_ca_file_that_cannot_be_used_is_refused_with_the_options(
    name: str, tmp_path: Path
) -> None:
    from providers.websocket.shell import parse_options

    (tmp_path / "not-a-ca.pem").write_text("not a certificate")
    (tmp_path / "empty.pem").write_text("")
    path = str(tmp_path / name)
    with pytest.raises(
        FatalError, match=r"options\.ca_file: the certificate authorities in "
    ) as no:
        parse_options({"ca_file": path})
    assert "cannot be loaded" in str(no.value) and name in str(no.value)


@pytest.mark.parametrize(
    ("value", "said"), [("", "is empty"), ("certs/ca.pem", "is 'certs/ca.pem'")]
)
def test_a_ca_file_that_is_no_absolute_path_is_refused(value: str, said: str) -> None:
    # "" would be no file (the system's store: the private CA silently not
    # trusted); a relative path would depend on where the node was started.
    from providers.websocket.shell import parse_options

    with pytest.raises(FatalError, match=f"options.ca_file {said}; expected the absolute path"):
        parse_options({"ca_file": value})


async def test_a_channel_sends_over_wss_to_the_lean_far_end_at_once(
    authority: PrivateAuthority,
) -> None:
    # The far end of the benchmarks, serving wss://; the channel trusts its CA
    # through the option ca_file. Its sends go out at once (no task each).
    with trio.fail_after(IO_CEILING):
        async with (
            open_far_end_process(heartbeat_interval=0, tls_cert=str(authority.server_pem)) as end,
            trio.open_nursery() as nursery,
        ):
            assert end.channel_url.startswith("wss://")
            config = ChannelConfig(
                channel_id="tls",
                provider="websocket",
                base_url=end.channel_url,
                credentials={"token": "tls-token"},
                options={"ca_file": str(authority.ca_pem)},
            )
            async with WebSocketProvider().open_connection(config) as conn:
                assert isinstance(conn, WebSocketConnection)
                answers: list[Any] = []
                done = trio.Event()

                def landed(result: Any, error: Any) -> None:
                    answers.append((result, error))
                    if len(answers) == 20:
                        done.set()

                for i in range(20):
                    message = OutboundMessage(peer=f"p{i}", idempotency_key=f"k{i}", text="hi")
                    assert conn.can_start_at_once(message)
                    conn.start_at_once(message, landed)
                await done.wait()
            nursery.cancel_scope.cancel()
    assert [error for _, error in answers] == [None] * 20
    assert len({result.platform_message_id for result, _ in answers}) == 20


async def test_a_channel_that_does_not_trust_the_server_gets_a_transient_connect_error(
    authority: PrivateAuthority,
) -> None:
    with trio.fail_after(IO_CEILING):
        async with open_far_end_process(
            heartbeat_interval=0, tls_cert=str(authority.server_pem)
        ) as end:
            config = ChannelConfig(
                channel_id="tls",
                provider="websocket",
                base_url=end.channel_url,
                credentials={"token": "tls-token"},
            )  # the system's store: the private CA is not in it
            with pytest.raises(TransientError, match="certificate verify failed") as refused:
                async with WebSocketProvider().open_connection(config):
                    pass
    assert "tls-token" not in str(refused.value)


async def _reset_by_the_server(listener: socket.socket) -> socket.socket:
    """A client socket whose server accepted it and reset it (the reset already in)."""
    client = socket.socket()
    client.setblocking(False)
    try:
        client.connect(listener.getsockname())
    except BlockingIOError:
        await trio.lowlevel.wait_writable(client)
    server, _ = listener.accept()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    server.close()  # a reset, not a clean end
    await trio.lowlevel.wait_readable(client)
    return client


async def test_a_reset_during_the_tls_handshake_is_a_transient_connect_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Found by review: the handshake's write raised the link's LinkClosed,
    # which no connect mapping knows: it crashed the channel's actor.
    from providers.websocket import link

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()

        async def reset(host: str, port: int) -> socket.socket:
            return await _reset_by_the_server(listener)

        monkeypatch.setattr(link, "_connect_tcp", reset)
        url = f"wss://127.0.0.1:{listener.getsockname()[1]}/ws"
        with trio.fail_after(IO_CEILING):
            with pytest.raises(ConnectionResetError, match="during the TLS handshake"):
                await open_link(url, [])
            config = ChannelConfig(
                channel_id="tls", provider="websocket", base_url=url, credentials={"token": "t"}
            )
            with pytest.raises(TransientError, match="during the TLS handshake"):
                async with WebSocketProvider().open_connection(config):
                    pass


class _Addresses(trio.abc.HostnameResolver):
    """Answers every lookup with ``addresses``, in their order."""

    def __init__(self, addresses: list[Any]) -> None:
        self.addresses = addresses

    async def getaddrinfo(self, *args: Any, **kwargs: Any) -> list[Any]:
        return self.addresses

    async def getnameinfo(self, *args: Any, **kwargs: Any) -> tuple[str, str]:
        raise OSError("no reverse lookups here")


@pytest.mark.parametrize("scheme", ["ws", "wss"])
async def test_an_address_that_drops_packets_does_not_hold_the_connect(
    scheme: str, authority: PrivateAuthority
) -> None:
    # A dual-stack host whose first address is a black hole (a broken IPv6
    # route): the next address is tried 250 ms on (trio's happy eyeballs), as
    # trio's TCP stream did for wss:// before (found by review).
    async def hello(peer: Peer) -> None:
        await peer.send_text("hello")
        await trio.sleep_forever()

    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(0)
        queued = []  # its accept queue full: the SYNs of another connect are dropped
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(hole.getsockname())
            queued.append(filler)
        try:
            async with tls_server(authority if scheme == "wss" else None, hello) as port:
                addresses = [
                    (socket.AF_INET, socket.SOCK_STREAM, 6, "", hole.getsockname()),
                    (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
                ]

                # Every lookup of this trio run (the test's own), trio's happy eyeballs' too.
                trio.socket.set_custom_hostname_resolver(_Addresses(addresses))
                with trio.fail_after(IO_CEILING):
                    link = await open_link(
                        f"{scheme}://localhost:{port}/ws",
                        [],
                        ssl_context=authority.client_context(),
                    )
                    try:
                        assert await read_texts(link, 1) == ["hello"]
                    finally:
                        await link.aclose()
        finally:
            for filler in queued:
                filler.close()
