"""The websocket readers' timers (:mod:`providers.websocket.timers`), in virtual time.

The shell runs over in-memory streams, a wsproto server scripted by each
test on the other end and no sockets, so trio's MockClock can jump: every
assertion is on an exact virtual time or on the order of events.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import AcceptConnection, CloseConnection, Ping, Request, TextMessage

import providers.websocket.shell as shell
from providers.base import ChannelConfig, Event, InboundMessage, OutboundMessage, TransientError
from providers.websocket import WebSocketProvider
from providers.websocket.core import Phase
from providers.websocket.link import WebSocketLink, _handshake, _StreamIO
from providers.websocket.timers import (
    COMPACT_MIN,
    TIMER_SLACK,
    TimerService,
    TimerStatistics,
    timer_service,
)

CEILING = 1000.0  # virtual seconds: only a hang gets near it
READY = json.dumps({"type": "ready", "session": "s-1"})


class Peer:
    """The server end of one in-memory link, as the test scripts it."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.SERVER)

    async def next_event(self) -> Any:
        """The next wsproto event from the client (reading as needed)."""
        while True:
            for event in self.ws.events():
                return event
            data = await self.stream.receive_some(65_536)
            self.ws.receive_data(data or None)

    async def accept(self) -> None:
        assert isinstance(await self.next_event(), Request)
        await self.send(AcceptConnection(), TextMessage(data=READY))

    async def send(self, *events: Any) -> None:
        await self.stream.send_all(b"".join(self.ws.send(event) for event in events))

    async def send_frame(self, **frame: Any) -> None:
        await self.send(TextMessage(data=json.dumps(frame)))

    async def hold(self) -> None:
        """Read (and drop) what the client sends; answer its close."""
        while not isinstance(event := await self.next_event(), CloseConnection):
            pass
        if self.ws.state is ConnectionState.REMOTE_CLOSING:  # not the end of the stream
            await self.send(event.response())


class Server:
    """Stands in for ``open_link``: each connect gets a :class:`Peer`, keyed by URL."""

    def __init__(self, nursery: trio.Nursery, *, lockstep: bool) -> None:
        self.nursery = nursery
        self.lockstep = lockstep
        self.peers: dict[str, Peer] = {}

    async def open_link(
        self,
        url: str,
        headers: list[tuple[bytes, bytes]],
        *,
        ssl_context: object = None,
        max_message_size: int,
    ) -> WebSocketLink:
        pair = (
            trio.testing.lockstep_stream_pair if self.lockstep else trio.testing.memory_stream_pair
        )
        client, server = pair()
        peer = self.peers[url] = Peer(server)
        self.nursery.start_soon(peer.accept)
        return await _handshake(
            _StreamIO(client), "test", "/ws", headers, max_message_size=max_message_size
        )


@asynccontextmanager
async def serving(
    monkeypatch: pytest.MonkeyPatch, *, lockstep: bool = False
) -> AsyncIterator[Server]:
    async with trio.open_nursery() as nursery:
        server = Server(nursery, lockstep=lockstep)
        monkeypatch.setattr(shell, "open_link", server.open_link)
        yield server
        nursery.cancel_scope.cancel()


def config(url: str = "ws://test/ws", **options: Any) -> ChannelConfig:
    opts = {"ping_interval": None, "liveness_timeout": None, **options}
    return ChannelConfig(
        channel_id=url.rpartition("/")[2],
        provider="websocket",
        base_url=url,
        credentials={"token": "t1"},
        options=opts,
    )


def on_time(at: float, due: float) -> bool:
    """Fired when due: never early, and no later than the service's slack."""
    return due <= at <= due + TIMER_SLACK


async def drain(events: AsyncIterator[Event]) -> list[Event]:
    return [event async for event in events]


async def test_a_silent_peer_is_dead_after_the_liveness_timeout(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(CEILING):
        async with serving(monkeypatch) as server:
            cfg = config(liveness_timeout=30.0)
            async with WebSocketProvider().open_connection(cfg) as conn:
                opened = trio.current_time()
                server.nursery.start_soon(server.peers[cfg.base_url or ""].hold)
                with pytest.raises(TransientError, match=r"liveness timeout 30.0s"):
                    await drain(conn.events())
                assert on_time(trio.current_time(), opened + 30.0)
                assert conn.phase is Phase.FAILED


async def test_the_keepalive_ping_goes_out_on_time_and_frames_put_it_off(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(CEILING):
        async with serving(monkeypatch) as server:
            cfg = config(ping_interval=20.0, pong_timeout=10.0)
            async with WebSocketProvider().open_connection(cfg) as conn:
                opened = trio.current_time()
                peer = server.peers[cfg.base_url or ""]
                ping = await peer.next_event()
                assert isinstance(ping, Ping) and on_time(trio.current_time(), opened + 20.0)
                await peer.send(ping.response())
                # A frame at +25 puts the next ping off to +45 (the timer armed
                # for +40 is re-armed by the service without waking the reader).
                await trio.sleep_until(opened + 25.0)
                await peer.send_frame(type="heartbeat")
                ack = await peer.next_event()
                assert (
                    isinstance(ack, TextMessage) and json.loads(ack.data)["type"] == "heartbeat_ack"
                )
                ping = await peer.next_event()
                assert isinstance(ping, Ping) and on_time(trio.current_time(), opened + 45.0)
                pinged = trio.current_time()
                server.nursery.start_soon(peer.hold)  # reads, but never answers the ping
                with pytest.raises(TransientError, match=r"no pong within 10.0s"):
                    await drain(conn.events())
                assert on_time(trio.current_time(), pinged + 10.0)


async def test_a_timer_due_while_a_frame_is_applied_waits_for_it(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ack deadline comes (+10) while the reader is sending a frame's
    answer, blocked until the peer reads (+15): the answer goes out whole,
    the link stays up, and the timer is handled once the frame is applied,
    as a late timer (core.tick's grace: as long again as it was late, for
    the reader to read what may have waited, so the send fails at +20)."""
    failed_at: list[float] = []

    async def send(conn: shell.WebSocketConnection) -> None:
        with pytest.raises(TransientError, match=r"no ack for send 'k1' within 10.0s"):
            await conn.send(OutboundMessage(peer="p1", idempotency_key="k1", text="hello"))
        failed_at.append(trio.current_time())

    with trio.fail_after(CEILING):
        async with serving(monkeypatch, lockstep=True) as server:
            cfg = config(send_timeout=10.0)
            async with WebSocketProvider().open_connection(cfg) as conn:
                opened = trio.current_time()
                peer = server.peers[cfg.base_url or ""]
                events = conn.events()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(send, conn)
                    frame = await peer.next_event()
                    assert json.loads(frame.data)["id"] == "k1"
                    await trio.sleep_until(opened + 5.0)
                    await peer.send_frame(type="heartbeat")  # its answer blocks the reader
                    await trio.sleep_until(opened + 15.0)
                    assert not failed_at  # due at +10, not fired in the middle of the frame
                    ack = await peer.next_event()
                    assert json.loads(ack.data) == {"type": "heartbeat_ack"}
                    await trio.sleep_until(opened + 19.0)
                    assert not failed_at
                assert len(failed_at) == 1 and on_time(failed_at[0], opened + 20.0)
                assert conn.phase is Phase.OPEN and conn._link is not None and conn._link.open
                await peer.send_frame(type="message", id="m1", peer="p1", sender="u", text="hi")
                async for event in events:
                    if isinstance(event, InboundMessage):
                        assert event.platform_message_id == "m1"
                        break
                server.nursery.start_soon(peer.hold)


async def test_a_timer_due_while_the_reader_waits_for_room_does_not_blame_the_link(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The liveness comes due (+30) while the reader waits for room in a full
    event buffer (backpressure, until +100): handled once the reader is
    back, it is judged as the core stands then, and the link dies 30 s
    after the stall, not during it."""
    with trio.fail_after(CEILING):
        async with serving(monkeypatch) as server:
            cfg = config(liveness_timeout=30.0, event_buffer=1)
            async with WebSocketProvider().open_connection(cfg) as conn:
                opened = trio.current_time()
                peer = server.peers[cfg.base_url or ""]
                server.nursery.start_soon(peer.hold)
                # The buffer holds 'connected': the message stalls the reader.
                await peer.send_frame(type="message", id="m1", peer="p1", sender="u", text="hi")
                await trio.sleep_until(opened + 100.0)
                assert conn.phase is Phase.OPEN
                events = conn.events()
                received = [event async for event in _until_message(events)]
                assert received[-1].platform_message_id == "m1"
                with pytest.raises(TransientError, match=r"liveness timeout 30.0s"):
                    await drain(events)
                assert on_time(trio.current_time(), opened + 130.0)


async def test_bytes_that_come_as_the_timer_fires_are_applied_first(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race: the reader was already rescheduled with bytes when the
    service cancelled its scope. It leaves the scope with them (no
    checkpoint inside it), applies them, then ticks, in a new scope."""
    with trio.fail_after(CEILING):
        async with serving(monkeypatch) as server:
            cfg = config(liveness_timeout=30.0)
            async with WebSocketProvider().open_connection(cfg) as conn:
                opened = trio.current_time()
                peer = server.peers[cfg.base_url or ""]
                events = conn.events()
                timer = conn._timer
                assert timer is not None and timer.parked and timer.deadline == opened + 30.0
                first_scope = timer.scope
                await trio.sleep_until(opened + 10.0)
                # A frame whose answer is a write (a checkpoint), and a message.
                message = {"type": "message", "id": "m1", "peer": "p1", "sender": "u"}
                heartbeat = TextMessage(data=json.dumps({"type": "heartbeat"}))
                await peer.send(heartbeat, TextMessage(data=json.dumps(message)))
                # The reader is rescheduled, not yet run: fire its timer now.
                timer_service()._fire(math.inf)
                assert timer.due == opened + 30.0 and first_scope is not None
                assert first_scope.cancel_called
                received = [event async for event in _until_message(events)]
                assert received[-1].platform_message_id == "m1"
                await trio.testing.wait_all_tasks_blocked()
                assert timer.due is None and timer.scope is not first_scope and timer.parked
                ack = await peer.next_event()
                assert json.loads(ack.data) == {"type": "heartbeat_ack"}
                assert conn.phase is Phase.OPEN and conn._link is not None and conn._link.open
                # The message counted for the liveness: the link dies 30 s after it.
                server.nursery.start_soon(peer.hold)
                with pytest.raises(TransientError, match=r"liveness timeout 30.0s"):
                    await drain(events)
                assert on_time(trio.current_time(), opened + 40.0)


async def _until_message(events: AsyncIterator[Event]) -> AsyncIterator[InboundMessage]:
    async for event in events:
        if isinstance(event, InboundMessage):
            yield event
            return


async def test_many_connections_timers_fire_independently(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    count = 24
    died_at: dict[int, float] = {}

    async def run(server: Server, i: int, start: float) -> None:
        cfg = config(f"ws://test/ws/{i}", liveness_timeout=10.0 + i)
        async with WebSocketProvider().open_connection(cfg) as conn:
            peer = server.peers[cfg.base_url or ""]
            server.nursery.start_soon(peer.hold)
            if i % 2:  # a heartbeat at +5 puts this one's liveness off by 5 s
                await trio.sleep_until(start + 5.0)
                await peer.send_frame(type="heartbeat")
            with pytest.raises(TransientError, match=rf"liveness timeout {10.0 + i}s"):
                await drain(conn.events())
            died_at[i] = trio.current_time() - start

    with trio.fail_after(CEILING):
        async with serving(monkeypatch) as server:
            start = trio.current_time()
            async with trio.open_nursery() as nursery:
                for i in range(count):
                    nursery.start_soon(run, server, i, start)
            assert sorted(died_at) == list(range(count))
            for i, at in died_at.items():
                assert on_time(at, 10.0 + i + (5.0 if i % 2 else 0.0)), (i, at)
            stats = timer_service().statistics()
            assert stats.timers == 0 and stats.dead == stats.entries


async def test_a_closed_connection_leaves_nothing_in_the_service(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(CEILING):
        async with serving(monkeypatch) as server:
            cfg = config(ping_interval=20.0, liveness_timeout=60.0)
            async with WebSocketProvider().open_connection(cfg) as conn:
                opened = trio.current_time()
                server.nursery.start_soon(server.peers[cfg.base_url or ""].hold)
                service = timer_service()
                assert service.statistics() == TimerStatistics(timers=1, entries=1, dead=0)
                timer = conn._timer
                assert timer is not None and timer.deadline == opened + 20.0
            assert conn._timer is None
            assert timer.owner is None and timer.scope is None  # nothing holds the connection
            assert service.statistics() == TimerStatistics(timers=0, entries=1, dead=1)
            await trio.sleep(21.0)  # the dead entry comes up (+20) and is dropped
            assert service.statistics() == TimerStatistics(timers=0, entries=0, dead=0)


class _Owner:
    def __init__(self, deadline: float) -> None:
        self.deadline = deadline

    def next_deadline(self) -> float:
        return self.deadline


async def test_closed_timers_are_swept_from_the_heap(
    autojump_clock: trio.testing.MockClock,
) -> None:
    service = TimerService()
    timers = [service.register(_Owner(1000.0 + i)) for i in range(300)]
    assert service.statistics() == TimerStatistics(timers=300, entries=300, dead=0)
    for timer in timers:
        timer.close()
    stats = service.statistics()
    assert stats.timers == 0 and stats.dead == stats.entries <= COMPACT_MIN


async def test_a_late_deadline_is_re_armed_without_a_wake_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    service = TimerService()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(service.serve)
        start = trio.current_time()
        owner = _Owner(start + 10.0)
        timer = service.register(owner)
        owner.deadline = start + 25.0  # moved later: nothing to do until +10
        await trio.sleep(11.0)
        assert timer.due is None and timer.deadline == start + 25.0
        timer.arm(start + 15.0)  # earlier: a new entry, the one for +25 is dead
        owner.deadline = start + 15.0
        assert service.statistics() == TimerStatistics(timers=1, entries=2, dead=1)
        await trio.sleep(5.0)
        assert timer.due == start + 15.0  # not parked: marked due for the reader
        await trio.sleep(10.0)
        assert service.statistics() == TimerStatistics(timers=1, entries=0, dead=0)
        timer.close()
        nursery.cancel_scope.cancel()
