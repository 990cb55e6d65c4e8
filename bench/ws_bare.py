"""The baselines for a websocket channel: bare clients against the same emulator.

Two measurements, each in a fresh process so that it holds nothing else:

``python -m bench.ws_bare memory URL COUNT [--idle S]``
    opens ``COUNT`` trio-websocket connections to the websocket emulator at
    ``URL`` (``ws://host:port/ws``), each with one task reading its messages
    and doing what any live client must (a ``heartbeat`` is answered with
    ``heartbeat_ack``, as the node answers it; trio-websocket answers pings),
    waits until all are open, then holds them ``S`` seconds with nothing
    else to do, and prints one JSON line: ``{"connections": n, "rss_delta":
    bytes, "per_connection": bytes, "seconds": s, "connect_cpu_seconds": s,
    "cpu_per_connect": s, "idle_seconds": s,
    "idle_cpu_seconds": s or null (no idle window), "idle_heartbeats_answered":
    n, "connections_lost": n}``. The idle CPU is the process's user + system
    time over the idle window, as :func:`bench.rig.cpu_seconds` measures the
    node's; the connect CPU is the same time from the first connect started
    to the last one open (handshakes, TCP connects, reader tasks), the bare
    cost a node's connect is judged against.

``python -m bench.ws_bare send URL --connections N --rates R[,R...] --duration D --text-size S``
    the sends a node's websocket channels make, done by a bare trio +
    wsproto client (wsproto straight over trio socket streams; no
    trio-websocket, no Switchboard): ``N`` connections (tokens
    ``bare-00000``...), each with a reader and a writer task, and per rate an
    open-loop load of ``R`` msgs/s for ``D`` seconds spread round-robin over
    them. Each send is a ``{"type": "send", "id", "peer", "text"}`` frame and
    completes when the emulator's ``ack`` for its id comes back (an ``error``
    for it is counted by code); heartbeats are answered with
    ``heartbeat_ack``, pings with pongs. It prints one JSON line per rate:
    ``{"client", "connections", "rate", "duration", "text_size",
    "scheduled", "acked", "errors": {code: n}, "other_frames": {type: n}
    (receipts), "unanswered", "connections_lost", "cpu_seconds", "cpu_per_message", "p50", "p90",
    "p99", "elapsed"}`` (seconds throughout).

Design of the send client: it is what a plain, reasonably efficient client
would be, and it paces as :mod:`bench.channels` does, so the two figures
differ by what the node adds. One pacing loop wakes every
:data:`PACER_TICK`, encodes every message now due and appends its frame to
its connection's outbox; a writer task per connection sends what the outbox
holds in one ``send_all`` (no task per message, and the pacer never waits
on a socket). Latency runs from when a message was due to when its ack was
read, so a stalled client shows as latency (no coordinated omission). CPU
is the process's user + system time from the first send to the last ack.
"""

from __future__ import annotations

import argparse
import gc
import json
import ssl
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any, Final, cast
from urllib.parse import urlsplit

import psutil
import trio
import trio.lowlevel
from trio_websocket import ConnectionClosed, WebSocketConnection, connect_websocket_url
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.events import Message as WsMessage

from .bare import TaskSteps, Workers, add_load_arguments, cpu_seconds, print_lines, step_answers

CLIENT: Final = "trio + wsproto (trio socket streams, no trio-websocket)"
PACER_TICK: Final = 0.002  # seconds between pacer wake-ups, as bench.channels paces
PEERS: Final = 997  # distinct recipients, as bench.rig rotates them (peer "user-<i mod 997>")
CLOSE_GRACE: Final = 10.0  # seconds the memory client's connections have to close cleanly
DRAIN_LIMIT: Final = 60.0  # seconds to wait for the acks still due after a step
READ_SIZE: Final = 65_536  # bytes per socket read
HEARTBEAT_ACK: Final = '{"type":"heartbeat_ack"}'


# ---------------------------------------------------------------- memory


class _Holders:
    """The memory client's connections: how many opened, heartbeats answered, lost."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.opened: list[WebSocketConnection] = []
        self.all_open = trio.Event()
        self.heartbeats = 0  # answered with heartbeat_ack
        self.lost = 0  # closed by the far end
        self.closing = False  # we close them now: an end is not a loss

    async def hold(self, nursery: trio.Nursery, url: str) -> None:
        """Open one connection and read it, answering heartbeats, until it closes."""
        ws = await connect_websocket_url(nursery, url)
        self.opened.append(ws)
        if len(self.opened) == self.count:
            self.all_open.set()
        try:
            while True:
                # Parsed as the node parses every frame; only heartbeats need an answer.
                frame = json.loads(await ws.get_message())
                if isinstance(frame, dict) and frame.get("type") == "heartbeat":
                    await ws.send_message(HEARTBEAT_ACK)
                    self.heartbeats += 1  # once written: a send cut off answered nothing
        except ConnectionClosed:
            if not self.closing:
                self.lost += 1

    async def close_all(self) -> None:
        """Close every connection with the websocket handshake, so that the far
        end reads all we wrote before our close frame (an abrupt end can reset
        the connection and drop what it had not read yet)."""
        self.closing = True
        with trio.move_on_after(CLOSE_GRACE):
            async with trio.open_nursery() as nursery:
                for ws in self.opened:
                    nursery.start_soon(ws.aclose)


async def measure(url: str, count: int, idle: float = 0.0) -> dict[str, Any]:
    """Open ``count`` connections; their RSS cost once all are open, then the
    process's CPU while they stay open ``idle`` seconds (0: not measured)."""
    gc.collect()
    before = psutil.Process().memory_info().rss
    started = time.perf_counter()
    holders = _Holders(count)
    sep = "&" if "?" in url else "?"
    idle_cpu: float | None = None
    idle_seconds = 0.0
    async with trio.open_nursery() as nursery:
        connect_cpu0 = cpu_seconds()
        for i in range(count):
            nursery.start_soon(holders.hold, nursery, f"{url}{sep}token=bare-{i:05d}")
        await holders.all_open.wait()
        connect_cpu = cpu_seconds() - connect_cpu0
        seconds = time.perf_counter() - started
        gc.collect()
        after = psutil.Process().memory_info().rss
        heartbeats = holders.heartbeats
        if idle > 0:
            cpu0 = cpu_seconds()
            t0 = trio.current_time()
            await trio.sleep(idle)
            idle_cpu = cpu_seconds() - cpu0
            idle_seconds = trio.current_time() - t0
        answered = holders.heartbeats - heartbeats
        await holders.close_all()
        nursery.cancel_scope.cancel()
    delta = after - before
    return {
        "connections": len(holders.opened),
        "rss_delta": delta,
        "per_connection": delta / max(1, len(holders.opened)),
        "seconds": seconds,
        "connect_cpu_seconds": connect_cpu,
        "cpu_per_connect": connect_cpu / max(1, len(holders.opened)),
        "idle_seconds": idle_seconds,
        "idle_cpu_seconds": idle_cpu,
        "idle_heartbeats_answered": answered,
        "connections_lost": holders.lost,
    }


# ---------------------------------------------------------------- send


class _Tally:
    """One load step's sends awaiting their answers, and what came back."""

    def __init__(self) -> None:
        self.pending: dict[str, float] = {}  # idempotency key -> when it was due
        self.latencies: list[float] = []  # seconds, in ack order
        self.errors: Counter[str] = Counter()
        self.others: Counter[str] = Counter()  # frames neither acks nor errors: receipts
        self.last_answer = 0.0
        self.pacing = True
        self.drained = trio.Event()  # pacing is over and nothing is pending
        self.workers_waiting: dict[str, trio.lowlevel.Task] = {}  # --await-each: key -> its worker

    def on_frame(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "ack":
            key = str(frame.get("id"))
            due = self.pending.pop(key, None)
            if due is None:
                return
            self.last_answer = trio.current_time()
            self.latencies.append(self.last_answer - due)
        elif kind == "error":
            self.errors[str(frame.get("code"))] += 1
            key = str(frame.get("id"))
            if self.pending.pop(key, None) is not None:
                self.last_answer = trio.current_time()
        else:
            self.others[str(kind)] += 1
            return
        if self.workers_waiting:
            worker = self.workers_waiting.pop(key, None)
            if worker is not None:
                trio.lowlevel.reschedule(worker)
        if not self.pacing and not self.pending:
            self.drained.set()

    async def answer(self, key: str) -> None:
        """``--await-each``: wait until ``key``'s ack or error is read."""
        self.workers_waiting[key] = trio.lowlevel.current_task()

        def abort(_: object) -> trio.lowlevel.Abort:
            del self.workers_waiting[key]
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)


class _Session:
    """What every connection's reader reports to: the current step's tally."""

    def __init__(self) -> None:
        self.tally = _Tally()
        self.lost = 0  # connections the emulator closed (their sends go unanswered)

    def on_lost(self) -> None:
        """A connection is gone: what it had in flight never comes back, so a
        step's drain stops waiting (``unanswered`` and ``connections_lost`` say so)."""
        self.lost += 1
        self.tally.drained.set()


class _Connection:
    """One bare client connection: a trio socket stream, a wsproto state machine, an outbox."""

    def __init__(self, stream: trio.abc.Stream, token: str) -> None:
        self._setup(stream, token)
        self.ws = WSConnection(ConnectionType.CLIENT)

    def _setup(self, stream: trio.abc.Stream, token: str) -> None:
        self.stream = stream
        self.token = token
        self.outbox = bytearray()
        self.waiting = trio.lowlevel.ParkingLot()  # the writer, while the outbox is empty
        self.accepted = False
        self.ready = False
        self.closed = False
        self._parts: list[Any] = []  # a fragmented text message so far

    def __repr__(self) -> str:
        state = "READY" if self.ready else "ACCEPTED" if self.accepted else "OPENING"
        return f"<bare connection {self.token} [{state} outbox={len(self.outbox)}]>"

    def send_text(self, text: str) -> None:
        """Queue one text frame; the writer sends it (dropped once the connection is over)."""
        if self.closed:
            return
        self.outbox += self.ws.send(WsMessage(data=text))
        self.waiting.unpark()

    async def run_writer(self) -> None:
        """Send what the outbox holds, all of it in one write, until cancelled."""
        while True:
            if not self.outbox:
                await self.waiting.park()
                continue
            data, self.outbox = self.outbox, bytearray()
            try:
                await self.stream.send_all(data)
            except trio.BrokenResourceError:
                return  # the emulator went away: the reader sees the end too

    async def handshake(
        self,
        host: str,
        target: str,
        session: _Session,
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        """The HTTP upgrade (with extra request ``headers``), then frames until
        the emulator's ``ready``.

        Raises:
            ConnectionError: rejected, refused or closed before ``ready``.
        """
        await self.stream.send_all(self._upgrade(host, target, headers))
        while not self.ready:
            if not await self.receive(session):
                raise ConnectionError(f"{self!r}: closed before the emulator's ready frame")
            if self.outbox:  # a pong or a close reply queued before the writer runs
                data, self.outbox = self.outbox, bytearray()
                await self.stream.send_all(data)

    def _upgrade(self, host: str, target: str, headers: Sequence[tuple[bytes, bytes]]) -> bytes:
        """The upgrade request's bytes."""
        return self.ws.send(Request(host=host, target=target, extra_headers=list(headers)))

    async def run_reader(self, session: _Session) -> None:
        """Read frames until the emulator closes the connection."""
        while await self.receive(session):
            pass

    async def receive(self, session: _Session) -> bool:
        """Read one chunk and handle its events; False once the connection is over."""
        try:
            # (bytes from a socket stream and from trio's TLS stream alike)
            data = cast(bytes, await self.stream.receive_some(READ_SIZE))
        except trio.BrokenResourceError:
            data = b""  # reset by the emulator: over, as a clean end is
        if not data:
            self.closed = True
            return False
        self.ws.receive_data(data)
        for event in self.ws.events():
            if isinstance(event, TextMessage):
                if not event.message_finished:
                    self._parts.append(event.data)
                    continue
                text = "".join((*self._parts, event.data)) if self._parts else event.data
                self._parts.clear()
                self._on_text(text, session)
            elif isinstance(event, Ping):
                self.outbox += self.ws.send(event.response())
                self.waiting.unpark()
            elif isinstance(event, AcceptConnection):
                self.accepted = True
            elif isinstance(event, RejectConnection):
                raise ConnectionError(f"{self!r}: the upgrade was refused: {event.status_code}")
            elif isinstance(event, CloseConnection):
                self.closed = True  # not answered: the connection is over for this bench
                return False
        return not self.closed

    def _on_text(self, text: str, session: _Session) -> None:
        frame = json.loads(text)
        kind = frame.get("type")
        if kind == "heartbeat":
            self.send_text(HEARTBEAT_ACK)
        elif kind == "ready":
            self.ready = True
        elif kind == "error" and not self.ready:
            raise ConnectionError(f"{self!r}: refused: {text}")
        else:
            session.tally.on_frame(frame)


class _WebsocketsConnection(_Connection):
    """A bare client connection as :class:`_Connection`, on ``websockets``' sans-I/O protocol.

    The node's link speaks websockets through that protocol, so this is the
    baseline that shows what the node's own layers cost above the library
    (the wsproto client shows what the node costs above the bare client
    the issue names). The same stream, outbox and writer as the wsproto one.
    """

    def __init__(self, stream: trio.abc.Stream, token: str) -> None:  # no WSConnection
        self._setup(stream, token)
        self.protocol: ClientProtocol | None = None  # made by the handshake

    def send_text(self, text: str) -> None:
        protocol = self.protocol
        # A close read in the same chunk as a heartbeat: the protocol is closing
        # before the heartbeat is handled, and refuses to frame its ack.
        if self.closed or protocol is None or protocol.state is not State.OPEN:
            return
        protocol.send_text(text.encode())
        for data in protocol.data_to_send():
            self.outbox += data
        self.waiting.unpark()

    def _upgrade(self, host: str, target: str, headers: Sequence[tuple[bytes, bytes]]) -> bytes:
        protocol = self.protocol = ClientProtocol(parse_uri(f"ws://{host}{target}"))
        protocol.debug = False  # as the node's link: no DEBUG log of every frame
        request = protocol.connect()
        for name, value in headers:
            request.headers[name.decode("latin-1")] = value.decode("latin-1")
        protocol.send_request(request)
        return b"".join(protocol.data_to_send())

    async def receive(self, session: _Session) -> bool:
        protocol = self.protocol
        assert protocol is not None
        try:
            data = await self.stream.receive_some(READ_SIZE)
        except trio.BrokenResourceError:
            data = b""
        if not data:
            self.closed = True
            return False
        protocol.receive_data(data)
        replies = protocol.data_to_send()  # pongs, a close's echo
        if replies:
            for reply in replies:
                self.outbox += reply
            self.waiting.unpark()
        for event in protocol.events_received():
            if not isinstance(event, Frame):  # the handshake's answer
                assert isinstance(event, Response)
                if protocol.handshake_exc is not None:
                    raise ConnectionError(f"{self!r}: the upgrade was refused: {event.status_code}")
                self.accepted = True
            elif event.opcode is Opcode.TEXT and event.fin and not self._parts:
                self._on_text(str(event.data, "utf-8"), session)  # a whole text: as the link
            elif event.opcode is Opcode.TEXT or event.opcode is Opcode.CONT:
                self._parts.append(event.data)
                if event.fin:
                    text = b"".join(self._parts).decode()
                    self._parts.clear()
                    self._on_text(text, session)
            elif event.opcode is Opcode.CLOSE:
                self.closed = True
                return False
        if protocol.handshake_exc is not None or protocol.parser_exc is not None:
            self.closed = True
            return False
        return not self.closed


async def _serve_connection(
    session: _Session,
    host: str,
    port: int,
    target: str,
    token: str,
    headers: Sequence[tuple[bytes, bytes]] = (),
    *,
    kind: type[_Connection] = _Connection,
    ssl_context: ssl.SSLContext | None = None,
    task_status: trio.TaskStatus[_Connection] = trio.TASK_STATUS_IGNORED,
) -> None:
    stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
    if ssl_context is not None:  # wss://: trio's TLS stream, as a plain trio client would
        stream = trio.SSLStream(stream, ssl_context, server_hostname=host)
    async with stream:
        connection = kind(stream, token)
        await connection.handshake(f"{host}:{port}", target, session, headers)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(connection.run_writer)
            task_status.started(connection)
            await connection.run_reader(session)
            session.on_lost()
            nursery.cancel_scope.cancel()  # the emulator closed it: nothing more to write


async def _load_step(
    session: _Session,
    connections: list[_Connection],
    rate: float,
    duration: float,
    text: str,
    *,
    await_each: bool = False,
) -> dict[str, Any]:
    tally = session.tally = _Tally()
    n = len(connections)
    total = int(rate * duration)
    encode = json.JSONEncoder(separators=(",", ":")).encode
    cpu0 = cpu_seconds()
    start = trio.current_time()

    def send(i: int) -> str:
        key = f"bare-r{rate:.0f}-{i}"
        tally.pending[key] = start + i / rate
        frame = {"type": "send", "id": key, "peer": f"user-{i % PEERS}", "text": text}
        connections[i % n].send_text(encode(frame))
        return key

    async def send_awaited(i: int) -> None:
        await tally.answer(send(i))

    workers = Workers(send_awaited)
    async with trio.open_nursery() as nursery:
        i = 0
        while i < total:
            due_now = min(total, int((trio.current_time() - start) * rate) + 1)
            if await_each:
                workers.due.extend(range(i, due_now))
                workers.wake(nursery)
                i = max(i, due_now)
            while i < due_now:  # (inline, not send(i): the baseline as it always was)
                key = f"bare-r{rate:.0f}-{i}"
                tally.pending[key] = start + i / rate
                frame = {"type": "send", "id": key, "peer": f"user-{i % PEERS}", "text": text}
                connections[i % n].send_text(encode(frame))
                i += 1
            await trio.sleep(PACER_TICK)
        tally.pacing = False
        if tally.pending and not session.lost:
            with trio.move_on_after(DRAIN_LIMIT):
                await tally.drained.wait()
        nursery.cancel_scope.cancel()  # workers still waiting: their sends went unanswered
    cpu = cpu_seconds() - cpu0
    return {
        "client": CLIENT + (", a worker task awaiting each ack" if await_each else ""),
        "await_each": await_each,
        "workers": workers.workers,
        "connections": n,
        "rate": rate,
        "duration": duration,
        "text_size": len(text),
        "scheduled": total,
        "errors": dict(tally.errors),
        "other_frames": dict(tally.others),
        "unanswered": len(tally.pending),
        "connections_lost": session.lost,
        **step_answers(tally.latencies, cpu, tally.last_answer, start),
    }


async def measure_send(
    url: str,
    *,
    connections: int,
    rates: list[float],
    duration: float,
    text_size: int,
    task_steps: bool = False,
    await_each: bool = False,
) -> list[dict[str, Any]]:
    """Open ``connections`` bare clients to ``url``, then one load step per rate.

    Returns:
        One result per rate (the JSON lines ``send`` prints).

    Raises:
        ConnectionError, OSError: a connection could not be opened.
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path or "/"
    sep = "&" if parts.query else "?"
    base = f"{path}?{parts.query}" if parts.query else path
    session = _Session()
    text = ("x" * text_size)[:text_size]
    results = []
    async with trio.open_nursery() as nursery:
        opened: list[_Connection] = []

        async def open_one(i: int) -> None:
            token = f"bare-{i:05d}"
            target = f"{base}{sep}token={token}"
            opened.append(
                await nursery.start(_serve_connection, session, host, port, target, token)
            )

        async with trio.open_nursery() as opening:
            for i in range(connections):
                opening.start_soon(open_one, i)
        for rate in rates:
            step = _load_step(session, opened, rate, duration, text, await_each=await_each)
            if not task_steps:
                results.append(await step)
                continue
            with TaskSteps() as counted:
                result = await step
            results.append(result | counted.per_message(result["acked"]))
        nursery.cancel_scope.cancel()
    return results


# ---------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ws_bare", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    memory = commands.add_parser(
        "memory", help="RSS per bare trio-websocket connection, and their CPU while idle"
    )
    memory.add_argument("url")
    memory.add_argument("count", type=int)
    memory.add_argument(
        "--idle", type=float, default=0.0, help="seconds to hold them open idle (0: not measured)"
    )
    send = commands.add_parser("send", help="CPU per acked send, bare trio + wsproto client")
    send.add_argument("url")
    send.add_argument("--connections", type=int, required=True)
    send.add_argument(
        "--task-steps", action="store_true", help="count trio task steps and spawns per message"
    )
    send.add_argument(
        "--await-each",
        action="store_true",
        help="send from worker tasks that each await their send's ack, as callers of "
        "Node.send do (the channels bench's harness, and bench.http_bare's)",
    )
    add_load_arguments(send)
    args = parser.parse_args(argv)
    if args.command == "memory":
        print(json.dumps(trio.run(measure, args.url, args.count, args.idle)), flush=True)
        return 0
    results = trio.run(
        lambda: measure_send(
            args.url,
            connections=args.connections,
            rates=args.rates,
            duration=args.duration,
            text_size=args.text_size,
            task_steps=args.task_steps,
            await_each=args.await_each,
        )
    )
    print_lines(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
