"""The websocket readers' poller (:mod:`providers.websocket.hub`), over real socket pairs.

A parked reader's bytes are applied by its take in the hub's task; the
reader wakes only with what the take hands back, at the end of the stream,
with the take's exception, or when its socket closes. A cancelled wait
consumes nothing. Sockets are local pairs, so every wait is a real one,
bounded by a ceiling only a hang reaches.
"""

from __future__ import annotations

import contextvars
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import trio
import trio.testing

from providers.websocket.hub import ReadHub, ReadHubStatistics, read_hub, started_hub
from providers.websocket.link import _SocketIO

CEILING = 10.0  # real seconds; only a hang gets near it


@contextmanager
def socket_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    try:
        yield ours, theirs
    finally:
        ours.close()
        theirs.close()


async def test_bytes_are_taken_in_place_and_the_reader_wakes_only_with_what_take_hands_back() -> (
    None
):
    hub = read_hub()
    assert hub is not None and started_hub() is hub
    taken: list[bytes] = []
    woken: list[Any] = []

    def take(data: bytes) -> Any:
        taken.append(data)
        return "done" if data.endswith(b"!") else None

    with trio.fail_after(CEILING), socket_pair() as (ours, theirs):

        async def reader() -> None:
            woken.append(await hub.receive(ours, take, 65_536))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            wakes = hub.statistics().wakes
            for chunk in (b"one", b"two", b"three"):
                theirs.send(chunk)
                await trio.testing.wait_all_tasks_blocked()  # the hub has read it
                assert taken[-1] == chunk
            assert hub.statistics() == ReadHubStatistics(parked=1, wakes=wakes) and not woken
            theirs.send(b"last!")
        assert taken == [b"one", b"two", b"three", b"last!"]
        assert woken == ["done"]
        assert hub.statistics() == ReadHubStatistics(parked=0, wakes=wakes + 1)


async def test_the_end_of_the_stream_wakes_the_reader_with_none() -> None:
    hub = read_hub()
    assert hub is not None
    with trio.fail_after(CEILING), socket_pair() as (ours, theirs):
        theirs.shutdown(socket.SHUT_WR)
        assert await hub.receive(ours, lambda data: pytest.fail("nothing to take"), 1024) is None
        assert hub.statistics().parked == 0


async def test_an_exception_in_take_is_raised_in_the_reader() -> None:
    hub = read_hub()
    assert hub is not None

    def take(data: bytes) -> None:
        raise ValueError(f"cannot apply {data!r}")

    with trio.fail_after(CEILING), socket_pair() as (ours, theirs):
        theirs.send(b"bad")
        with pytest.raises(ValueError, match=r"cannot apply b'bad'"):
            await hub.receive(ours, take, 1024)
        assert hub.statistics().parked == 0
        # The hub goes on serving others.
        theirs.send(b"good")
        assert await hub.receive(ours, lambda data: data, 1024) == b"good"


async def test_a_cancelled_wait_consumes_nothing() -> None:
    """Bytes that came as the wait was cancelled (before the hub ran) stay in
    the socket for the next wait."""
    hub = read_hub()
    assert hub is not None
    with trio.fail_after(CEILING), socket_pair() as (ours, theirs):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hub.receive, ours, lambda data: pytest.fail("cancelled"), 1024)
            await trio.testing.wait_all_tasks_blocked()
            theirs.send(b"kept")
            nursery.cancel_scope.cancel()  # no checkpoint since the send: the hub has not run
        assert hub.statistics().parked == 0
        assert await hub.receive(ours, lambda data: data, 1024) == b"kept"


async def test_a_socket_closed_under_a_parked_reader_wakes_it_with_none() -> None:
    with trio.fail_after(CEILING), socket_pair() as (ours, _theirs):
        io = _SocketIO(ours)
        got: list[Any] = ["not yet"]

        async def reader() -> None:
            got[0] = await io.receive_taking(lambda data: pytest.fail("closed"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            hub = started_hub()
            assert hub is not None and hub.statistics().parked == 1
            await io.aclose()
        assert got == [None] and hub.statistics().parked == 0


async def test_take_runs_in_the_readers_context() -> None:
    """Log fields live in contextvars: what take logs carries the reader's."""
    hub = read_hub()
    assert hub is not None
    field: contextvars.ContextVar[str] = contextvars.ContextVar("field", default="hub's")
    seen: list[str] = []

    def take(data: bytes) -> str:
        seen.append(field.get())
        return "ok"

    with trio.fail_after(CEILING), socket_pair() as (ours, theirs):

        async def reader() -> None:
            field.set("reader's")
            assert await hub.receive(ours, take, 1024) == "ok"

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            theirs.send(b"x")
    assert seen == ["reader's"]


async def test_two_readers_on_one_socket_are_refused() -> None:
    hub = read_hub()
    assert hub is not None
    with trio.fail_after(CEILING), socket_pair() as (ours, theirs):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hub.receive, ours, lambda data: "first", 1024)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await hub.receive(ours, lambda data: "second", 1024)
            theirs.send(b"x")
        assert hub.statistics().parked == 0


async def test_without_epoll_the_link_waits_in_trios_io_manager(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where there is no epoll (not Linux) there is no hub: receive_taking is receive."""
    import providers.websocket.link as link_module

    monkeypatch.setattr(link_module, "read_hub", lambda: None)
    with trio.fail_after(CEILING), socket_pair() as (ours, theirs):
        theirs.send(b"raw")
        assert await _SocketIO(ours).receive_taking(lambda data: pytest.fail("no hub")) == b"raw"


async def read_once_within(
    scope: trio.CancelScope,
    hub: ReadHub,
    ours: socket.socket,
    theirs: socket.socket,
    take: Callable[[bytes], Any],
    data: bytes,
) -> list[Any]:
    """Park a reader on ``ours`` inside ``scope``, send it ``data`` once it is
    parked: what it got, then "not cancelled" if a checkpoint after passed."""
    got: list[Any] = []

    async def reader() -> None:
        with scope:
            got.append(await hub.receive(ours, take, 1024))
            await trio.lowlevel.checkpoint()
            got.append("not cancelled")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        theirs.send(data)
    return got


@pytest.mark.parametrize("hands_back", [True, False], ids=["handed", "applied"])
async def test_a_take_that_cancels_its_own_reader_does_not_reach_the_hub(hands_back: bool) -> None:
    """A take may run a callback that cancels a scope around its own reader.
    The hub wakes the reader once the take is done: with what it handed back
    (the cancellation then comes at the reader's next checkpoint), or, for a
    take that applied everything, into the cancellation. The run goes on."""
    hub = read_hub()
    assert hub is not None
    scope = trio.CancelScope()

    def take(data: bytes) -> str | None:
        scope.cancel()
        return "handed" if hands_back else None

    with trio.fail_after(CEILING), socket_pair() as (ours, theirs):
        got = await read_once_within(scope, hub, ours, theirs, take, b"x")
        assert scope.cancelled_caught and hub.statistics().parked == 0
        assert got == (["handed"] if hands_back else [])
        # The hub still serves.
        theirs.send(b"y")
        assert await hub.receive(ours, lambda data: data, 1024) == b"y"


async def test_a_take_whose_callback_kills_its_reader_leaves_the_rest_to_the_reader() -> None:
    """A callback run in a take (a send's answer) may kill the channel, that
    is cancel a scope around the reader. The hub tells the take
    (``reader_cancelled``); a take that hands the rest back then wakes the
    reader with it, and the reader meets the cancellation at its next
    checkpoint, before applying it."""
    hub = read_hub()
    assert hub is not None
    scope = trio.CancelScope()
    seen: list[Any] = []

    def take(data: bytes) -> list[bytes] | None:
        frames = data.split(b";")
        for index, frame in enumerate(frames):
            if hub.reader_cancelled:
                return frames[index:]  # the rest: the reader's
            seen.append(frame)
            if frame == b"kill":
                scope.cancel()
        return None

    with trio.fail_after(CEILING), socket_pair() as (ours, theirs):
        seen += await read_once_within(scope, hub, ours, theirs, take, b"ack;kill;ack2;ack3")
        assert seen == [b"ack", b"kill", [b"ack2", b"ack3"]] and scope.cancelled_caught
        assert not hub.reader_cancelled and hub.statistics().parked == 0
