"""The reader's frames left for the send lock's holder (``WebSocketLink._release``).

A fake I/O (the link's ``_io``) whose writes wait at a gate the test opens,
so that a sender holds the lock for as long as the test wants, as one
blocked on a full socket does. The peer's frames are made (and the link's
read) by wsproto in server mode, and fed to the link as its reader would.
"""

from __future__ import annotations

import trio
import trio.testing
from wsproto import ConnectionType
from wsproto.connection import Connection
from wsproto.events import Ping, Pong, TextMessage

from providers.websocket.link import WebSocketLink
from tests.support import open_client_protocol


class GatedIO:
    """Bytes written are kept; a write waits at ``gates[n]`` (if any) first."""

    backlogged = False

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.gates: dict[int, trio.Event] = {}
        self.calls = 0

    async def receive(self) -> bytes | None:
        await trio.sleep_forever()

    async def send_all(self, data: bytes, *, schedule: bool = True) -> None:
        n = self.calls
        self.calls += 1
        gate = self.gates.get(n)
        if gate is not None:
            # As _SocketIO after wait_writable: once woken, the rest is written
            # at once, with no further checkpoint.
            await gate.wait()
        self.written.append(bytes(data))

    async def aclose(self) -> None:
        pass


def peer_events(io: GatedIO) -> list[object]:
    server = Connection(ConnectionType.SERVER)
    server.receive_data(b"".join(io.written))
    return list(server.events())


def ping_bytes(payload: bytes) -> bytes:
    return Connection(ConnectionType.SERVER).send(Ping(payload=payload))


async def test_a_pong_left_for_a_holder_cancelled_after_its_write_is_still_sent() -> None:
    # The sender blocks on a full socket; the reader gets a ping and leaves
    # the pong for it. The socket drains just as the sender's deadline
    # passes: its frame is written whole (no checkpoint after the wait), but
    # _write_replies sees the cancel and leaves the pong. Nobody else holds
    # or waits for the lock, and the peer waits for its pong before it
    # sends anything more: the pong is never written.
    io = GatedIO()
    io.gates[0] = drained = trio.Event()
    link = WebSocketLink(io, open_client_protocol())  # type: ignore[arg-type]
    scope = trio.CancelScope()

    async def sender() -> None:
        with scope:
            await link.send_text("hello")

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            await trio.testing.wait_all_tasks_blocked()
            # The reader: a ping came; the lock is held, so flush returns at once.
            assert link.feed(ping_bytes(b"p1")) == []
            await link.flush()
            drained.set()  # the socket drains...
            scope.cancel()  # ...as the sender's deadline passes
        await trio.testing.wait_all_tasks_blocked()
        events = peer_events(io)
        assert any(isinstance(e, TextMessage) for e in events)
        # The holder was cancelled, and still wrote the pong as it let go.
        assert [e for e in events if isinstance(e, Pong)] == [Pong(payload=b"p1")], (
            f"pong never written; left behind: {link._replies!r}"
        )


async def test_a_pong_left_for_a_lock_waiter_cancelled_before_it_writes_is_still_sent() -> None:
    # Sender A holds the lock (blocked), sender B waits for it. A finishes
    # and hands the lock to B; before B runs, the reader leaves a pong (the
    # lock is held: by B). B's deadline has passed: it raises Cancelled at
    # its checkpoint_if_cancelled and lets go without writing the pong.
    # The window: a waiter handed the lock, not yet run. The reader's part
    # (feed, flush) runs in A's task right after A let go, with no checkpoint
    # in between, as the reader task would if scheduled there.
    io = GatedIO()
    io.gates[0] = drained = trio.Event()
    link = WebSocketLink(io, open_client_protocol())  # type: ignore[arg-type]
    scope_b = trio.CancelScope()
    a_done = trio.Event()

    async def sender_a() -> None:
        await link.send_text("a")
        # A released: B owns the lock, rescheduled, not yet run.
        assert link._locked
        assert link.feed(ping_bytes(b"p2")) == []
        await link.flush()  # returns at once: "the holder writes them"
        scope_b.cancel()  # B's deadline passes before it runs
        a_done.set()

    async def sender_b2() -> None:
        with scope_b:
            await link.send_text("b")

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender_a)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(sender_b2)
            await trio.testing.wait_all_tasks_blocked()  # B parked in Lock.acquire
            drained.set()
            await a_done.wait()
        await trio.testing.wait_all_tasks_blocked()
        events = peer_events(io)
        assert [e for e in events if isinstance(e, Pong)] == [Pong(payload=b"p2")], (
            f"pong never written; left behind: {link._replies!r}"
        )


async def test_a_sender_whose_frame_went_out_does_not_break_the_link_over_the_replies() -> None:
    # The sender's own frame is written whole; then it writes the pong the
    # reader left, and the socket is full again. Its send timeout passes
    # while that write waits, not a byte of the pong written: _write_locked
    # marks the link broken, though the stream is whole (the sender's frame
    # went out entire, the pong not begun). The socket then drains: the
    # link should still be usable and the pong go out.
    io = GatedIO()
    io.gates[0] = first = trio.Event()
    io.gates[1] = full = trio.Event()  # the replies' write: the socket is full
    link = WebSocketLink(io, open_client_protocol())  # type: ignore[arg-type]
    scope = trio.CancelScope()

    async def sender() -> None:
        with scope:
            await link.send_text("hello")

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            await trio.testing.wait_all_tasks_blocked()
            assert link.feed(ping_bytes(b"p3")) == []
            await link.flush()
            first.set()
            await trio.testing.wait_all_tasks_blocked()  # frame written; blocked on the pong
            assert len(io.written) == 1
            scope.cancel()  # the sender's deadline, not a byte of the pong written
            await trio.testing.wait_all_tasks_blocked()
            full.set()  # the peer reads again
        await trio.testing.wait_all_tasks_blocked()
        assert link.open, "a cancelled write of the reader's replies broke the link"
        assert [e for e in peer_events(io) if isinstance(e, Pong)] == [Pong(payload=b"p3")]


async def test_a_frame_the_reader_left_goes_before_a_close_framed_after_it() -> None:
    # The lock passes from sender A to B, which closes; before B runs, the
    # reader frames a heartbeat's answer and leaves it (the lock is held).
    # B's close must not go out first: nothing may follow a close frame.
    io = GatedIO()
    io.gates[0] = drained = trio.Event()
    link = WebSocketLink(io, open_client_protocol())  # type: ignore[arg-type]
    a_done = trio.Event()

    async def sender_a() -> None:
        await link.send_text("a")
        assert link._locked  # handed to B, which has not run yet
        await link.send_text("ack", queue=True)  # the reader's frame, as _apply sends it
        a_done.set()

    async def closer() -> None:
        await link.close(1000, "bye")

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender_a)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(closer)
            await trio.testing.wait_all_tasks_blocked()  # B waits for the lock
            drained.set()
            await a_done.wait()
        events = peer_events(io)
    assert [type(e).__name__ for e in events] == ["TextMessage", "TextMessage", "CloseConnection"]
    assert [e.data for e in events[:2]] == ["a", "ack"]  # type: ignore[attr-defined]
