"""Sends that go out from the asker's task, with no task of their own.

A websocket channel that would wait for nothing (a live link nobody else
writes to, a closed breaker, a token from its limiter at once) writes the
frame in the task that asked, and the reader answers the asker when the ack
comes (``SendPath._fly_at_once``, ``WebSocketConnection.start_at_once``).
Whatever goes wrong after that continues down the ordinary send path in a
task, and an incarnation that ends hands the send back to the mailbox.

Real sockets against the websocket emulator (and, for the link, a scripted
peer), in real time: each test has a hang ceiling only.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio
import trio.testing

from actors import ChannelStatus, MemoryInboundSink
from providers.base import (
    ChannelConfig,
    Media,
    MediaKind,
    OutboundMessage,
    SendResult,
    TransientError,
)
from providers.emulators.base import open_emulator
from providers.emulators.websocket import WebSocketEmulator
from providers.websocket import WebSocketProvider
from providers.websocket.link import LinkClosed, WebSocketLink
from tests.support import control, open_client_protocol
from tests.test_channels_e2e import CEILING, RIGS, open_rig, wait_status
from tests.test_websocket_link import STANDOFF_COUNT, STANDOFF_SIZE, standoff


class FlightTasks(trio.abc.Instrument):
    """Counts the tasks spawned to carry a send (``SendPath._fly``)."""

    def __init__(self) -> None:
        self.spawned = 0

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith("._fly"):
            self.spawned += 1


class WatchedEmulator(WebSocketEmulator):
    """The websocket emulator, telling when it has taken a number of messages."""

    def __init__(self) -> None:
        super().__init__()
        self._waiting: list[tuple[int, trio.Event]] = []

    def record_sent(self, message: dict[str, Any]) -> None:
        super().record_sent(message)
        for count, event in self._waiting:
            if len(self.sent) >= count:
                event.set()

    async def wait_sent(self, count: int) -> None:
        if len(self.sent) < count:
            event = trio.Event()
            self._waiting.append((count, event))
            await event.wait()


def message(key: str, peer: str = "user-1", text: str = "hi") -> OutboundMessage:
    return OutboundMessage(peer=peer, idempotency_key=key, text=text)


async def test_sends_to_an_idle_channel_take_no_task_of_their_own() -> None:
    flights = FlightTasks()
    with trio.fail_after(CEILING):
        async with open_rig(RIGS["websocket"](), MemoryInboundSink()) as (channel, base_url):
            await wait_status(channel, ChannelStatus.CONNECTED)
            trio.lowlevel.add_instrument(flights)
            try:
                results = [await channel.send(message(f"k{i}", text=f"m{i}")) for i in range(20)]
            finally:
                trio.lowlevel.remove_instrument(flights)
            sent = await control(base_url, "sent")
    assert flights.spawned == 0
    assert all(isinstance(result, SendResult) for result in results)
    assert len({result.platform_message_id for result in results}) == 20
    assert [item["text"] for item in sent] == [f"m{i}" for i in range(20)]
    assert channel.statistics().sent == 20


async def test_a_first_attempt_at_once_that_fails_goes_on_in_a_task() -> None:
    flights = FlightTasks()
    with trio.fail_after(CEILING):
        async with open_rig(RIGS["websocket"](), MemoryInboundSink()) as (channel, base_url):
            await wait_status(channel, ChannelStatus.CONNECTED)
            await control(base_url, "fault", {"kind": "fail_sends", "code": "internal"})
            trio.lowlevel.add_instrument(flights)
            try:
                result = await channel.send(message("retried"))
            finally:
                trio.lowlevel.remove_instrument(flights)
    assert result.platform_message_id
    assert flights.spawned == 1  # the retry's task, and only for this send
    stats = channel.statistics()
    assert (stats.sent, stats.send_failures) == (1, 1)


async def test_a_send_at_once_cut_off_by_a_kill_goes_again_in_the_next_incarnation() -> None:
    # The ack never comes (the emulator is silent); the actor is killed. The
    # send goes back to the mailbox, the next incarnation sends it again and
    # answers the same asker, and the kill counts as no failure of the
    # platform: neither the breaker nor the send failures hear of it.
    answers: list[SendResult] = []
    emulator = WatchedEmulator()
    rig = attrs.evolve(RIGS["websocket"](), emulator=lambda: emulator)
    with trio.fail_after(CEILING):
        async with open_rig(rig, MemoryInboundSink()) as (channel, base_url):
            await wait_status(channel, ChannelStatus.CONNECTED)
            memory = channel.memory
            first = channel.ref
            await control(base_url, "fault", {"kind": "silence"})
            async with trio.open_nursery() as nursery:

                async def ask() -> None:
                    answers.append(await channel.send(message("cut-off"), timeout=CEILING))

                nursery.start_soon(ask)
                await emulator.wait_sent(1)  # the frame reached the platform
                # Its ack was dropped: the platform answers again, but not that.
                await control(base_url, "fault", {"kind": "resume"})
                first.kill()
    assert len(answers) == 1 and answers[0].platform_message_id
    assert memory.incarnations == 2
    assert memory.breaker.state.consecutive_failures == 0
    assert memory.counters["send_failures"] == 0


async def test_sends_to_one_peer_leave_in_the_order_they_were_asked() -> None:
    # Each waits for the ack of the one before (a chain per peer); the ack
    # comes later than the sends are asked, so all but the first wait in the
    # chain and leave from the reader's task, with no task of their own,
    # when the one ahead is answered.
    order = [f"m{i}" for i in range(10)]
    results: dict[str, SendResult] = {}
    flights = FlightTasks()
    emulator = WatchedEmulator()
    rig = attrs.evolve(RIGS["websocket"](), emulator=lambda: emulator)
    with trio.fail_after(CEILING):
        async with open_rig(rig, MemoryInboundSink()) as (channel, base_url):
            await wait_status(channel, ChannelStatus.CONNECTED)
            await control(base_url, "fault", {"kind": "latency", "seconds": 0.3})
            trio.lowlevel.add_instrument(flights)
            try:
                async with trio.open_nursery() as nursery:
                    for text in order:

                        async def ask(text: str = text) -> None:
                            results[text] = await channel.send(message(text, text=text))

                        nursery.start_soon(ask)
                        await trio.testing.wait_all_tasks_blocked()  # asked: the next after
                    chained = len(emulator.sent)  # all asked, the first still unanswered
            finally:
                trio.lowlevel.remove_instrument(flights)
            other = await channel.send(message("other", peer="user-2"))
    assert chained == 1  # the other nine waited in the chain
    assert [item["text"] for item in emulator.sent[:10]] == order
    assert sorted(results) == sorted(order)
    assert flights.spawned == 0
    assert other.platform_message_id


def config_for(base_url: str) -> ChannelConfig:
    return ChannelConfig(
        channel_id="ws-at-once",
        provider="websocket",
        base_url=base_url.replace("http://", "ws://") + "/ws",
        credentials={"token": "t1"},
        options={"pong_timeout": CEILING, "liveness_timeout": CEILING},
    )


@pytest.fixture
async def connection() -> Any:
    async with open_emulator(WebSocketEmulator()) as base_url:
        async with WebSocketProvider().open_connection(config_for(base_url)) as conn:
            yield conn, base_url


async def test_a_send_started_at_once_hears_its_fate_once_when_the_link_ends() -> None:
    heard: list[tuple[Any, Any]] = []
    emulator = WatchedEmulator()
    with trio.fail_after(CEILING):
        async with open_emulator(emulator) as base_url:
            async with WebSocketProvider().open_connection(config_for(base_url)) as conn:
                await control(base_url, "fault", {"kind": "silence"})
                sending = message("unanswered")
                assert conn.can_start_at_once(sending)
                conn.start_at_once(sending, lambda result, error: heard.append((result, error)))
                # Out already: a second send with the key waits for the first.
                assert not conn.can_start_at_once(sending)
                # One whose completion was cut off (the reader cancelled while it
                # applied the end of the link): the core no longer holds it.
                cut = message("cut")
                conn.start_at_once(cut, lambda result, error: heard.append((result, error)))
                del conn._core._pending["cut"]
                await emulator.wait_sent(2)
                assert heard == []
    assert len(heard) == 2
    for (result, error), key in zip(heard, ["unanswered", "cut"], strict=True):
        assert result is None and isinstance(error, TransientError)
        assert repr(key) in str(error)


async def test_what_cannot_go_at_once_is_left_to_the_ordinary_send(connection: Any) -> None:
    conn, _ = connection
    upload = OutboundMessage(
        peer="user-1",
        idempotency_key="file",
        media=Media(kind=MediaKind.DOCUMENT, path="/nonexistent/report.pdf"),
    )
    assert not conn.can_start_at_once(upload)  # its file is read first, which waits
    answered = trio.Event()
    heard: list[Any] = []

    def done(result: Any, error: Any) -> None:
        heard.append((result, error))
        answered.set()

    with trio.fail_after(CEILING):
        conn.start_at_once(message("acked"), done)
        await answered.wait()
    [(result, error)] = heard
    assert error is None and isinstance(result, SendResult) and result.peer == "user-1"


async def test_a_frame_sent_now_that_fills_the_socket_is_finished_in_a_task() -> None:
    # The socket takes only part of the frame; the rest is written by a task
    # of its own, holding the link's lock, so the reader's pong (it reads on
    # meanwhile: the peer writes until its own writes drain) goes after the
    # whole frame, never into it.
    async def send(link: Any, text: str) -> None:
        assert link.can_send_now
        rest = link.send_text_now(text)
        assert rest is not None and not link.can_send_now  # locked until the rest is out
        await link.send_rest(rest)
        assert link.can_send_now

    heard = await standoff(send)
    assert heard == [STANDOFF_SIZE * STANDOFF_COUNT, b"still-there"]


async def test_an_ordinary_send_hears_a_fate_that_came_while_it_waited_for_the_link(
    connection: Any,
) -> None:
    # The send waits for the link's lock (another writer holds it) when its
    # ack deadline passes and the reader settles it: it must hear that, not
    # wait for an answer that already came (a review found the lost wake-up).
    conn, _ = connection
    link = conn._link
    link._lock.acquire_nowait()  # another writer holds the link
    heard: list[Any] = []

    async def send() -> None:
        try:
            heard.append(await conn.send(message("waits-for-the-link")))
        except TransientError as exc:
            heard.append(exc)

    with trio.fail_after(CEILING):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            await trio.testing.wait_all_tasks_blocked()
            [(deadline, _)] = conn._core._pending.values()
            await conn._apply(conn._core.tick(deadline), reader=True)  # as the reader would
            await link._release()  # the other writer is done
    [error] = heard
    assert isinstance(error, TransientError) and "no ack" in str(error)


async def test_a_cancelled_link_does_not_wait_for_a_close_frame_nobody_reads() -> None:
    # A kill cancels the connection's block and its reader together; the
    # shielded close then sends our close frame, and must not wait
    # close_timeout (here twice the hang ceiling: the close is shielded) for
    # the server's, which no task is left to read. (A killed channel restarted
    # only after close_timeout.)
    emulator = WatchedEmulator()
    with trio.fail_after(CEILING):
        async with open_emulator(emulator) as base_url:
            config = attrs.evolve(
                config_for(base_url),
                options={"liveness_timeout": None, "close_timeout": 2 * CEILING},
            )
            with trio.CancelScope() as kill:
                async with WebSocketProvider().open_connection(config):
                    await trio.testing.wait_all_tasks_blocked()  # the reader waits for bytes
                    kill.cancel()
                    await trio.lowlevel.checkpoint()  # the cancel lands here
    assert kill.cancelled_caught


async def test_a_defect_as_a_send_starts_at_once_crashes_the_channel_and_stalls_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As a defect in a send's task does: the asker hears ActorCrashed, the
    # channel restarts, and the next send to the same recipient goes (its
    # chain was handed back, not left stuck behind the broken one).
    from actors import ActorCrashed
    from providers.websocket.shell import WebSocketConnection

    real = WebSocketConnection.start_at_once

    def broken(self: Any, msg: Any, done: Any) -> None:
        if msg.idempotency_key == "broken":
            raise RuntimeError("a defect")
        real(self, msg, done)

    monkeypatch.setattr(WebSocketConnection, "start_at_once", broken)
    with trio.fail_after(CEILING):
        async with open_rig(RIGS["websocket"](), MemoryInboundSink()) as (channel, _):
            await wait_status(channel, ChannelStatus.CONNECTED)
            with pytest.raises(ActorCrashed, match="RuntimeError"):
                await channel.send(message("broken"))
            result = await channel.send(message("after"))
    assert result.platform_message_id
    assert channel.memory.incarnations == 2


class _ResetAfterFirstWrite:
    """A socket that takes one write, then is reset by the peer (EPIPE/ECONNRESET)."""

    backlogged = False

    def __init__(self) -> None:
        self.writes = 0

    async def send_all(self, data: bytes, *, schedule: bool = True) -> None:
        self.writes += 1
        await trio.lowlevel.checkpoint()
        if self.writes > 1:
            raise LinkClosed("the link broke while sending: [Errno 104] Connection reset by peer")

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def test_send_rest_does_not_raise_when_the_reader_s_pong_meets_a_reset() -> None:
    # send_text_now left part of its frame; the task finishing it writes the
    # rest, then the pong the reader left meanwhile, and the peer has reset.
    # send_rest runs in the connection's nursery: a LinkClosed out of it
    # takes the whole connection block (and the channel actor) down with a
    # non-provider error, instead of "the reader sees the end of the link".
    link = WebSocketLink(_ResetAfterFirstWrite(), open_client_protocol())  # type: ignore[arg-type]
    link._lock.acquire_nowait()  # as send_text_now leaves it when the socket was full
    link._replies.append(b"\x8a\x00")  # a pong the reader framed while the holder wrote
    with trio.fail_after(CEILING):
        await link.send_rest(b"the rest of the frame")  # must not raise
    assert link._lock.value == 1
    assert link.finished


async def test_send_rest_may_run_in_another_task_than_the_one_that_sent_now() -> None:
    # As start_at_once does it: the rest goes in a task of its own. (The
    # existing standoff test finishes the rest in the same task, so it also
    # passes with a trio.Lock, which refuses a release from another task.)
    async def send(link: Any, text: str) -> None:
        rest = link.send_text_now(text)
        assert rest is not None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(link.send_rest, rest)

    heard = await standoff(send)
    assert heard == [STANDOFF_SIZE * STANDOFF_COUNT, b"still-there"]


async def test_a_link_broken_by_a_write_while_bytes_still_arrive_ends_the_connection() -> None:
    # A write fails (EPIPE/ECONNRESET: send_text_now, send_rest or any
    # sender marks the link broken) while the server's last frames still sit
    # in our receive buffer. The reader feeds them, finds link.finished and
    # returns without telling the core: the phase stays OPEN, events() never
    # ends, the timer is gone, and every send waits for good (an at-once
    # send's `done` is never called: its peer's chain stalls).
    heard: list[Any] = []
    async with open_emulator(WebSocketEmulator()) as base_url:
        async with WebSocketProvider().open_connection(config_for(base_url)) as conn:
            link = conn._link
            conn.start_at_once(message("acked"), lambda result, error: heard.append(error))
            link._broken = True  # as a failed write leaves it; the ack is still on its way
            with trio.fail_after(CEILING):
                with pytest.raises(TransientError):
                    await conn.send(message("after-the-break"))


async def test_a_graceful_close_still_waits_for_the_server_s_close_frame() -> None:
    # reading_ended() must not cut the closing handshake of a normal close:
    # the server's close frame is read before the socket is closed.
    async with open_emulator(WebSocketEmulator()) as base_url:
        async with WebSocketProvider().open_connection(config_for(base_url)) as conn:
            link = conn._link
            with trio.fail_after(CEILING):
                await conn.close()
            assert link._ws.close_rcvd is not None


async def test_an_at_once_send_times_out_on_its_own_deadline_while_the_reader_is_parked() -> None:
    # The reader parked with its timer at the next ping (here far past the
    # ceiling); a send started at once brings the deadline earlier
    # (start_at_once's _rearm). Without it the missing ack is noticed only at
    # the ping, and the at-once send's chain waits that long. (No test of
    # tests/test_sends_at_once.py fails when that _rearm is removed.)
    answered = trio.Event()
    heard: list[Any] = []

    def done(result: Any, error: Any) -> None:
        heard.append(error)
        answered.set()

    async with open_emulator(WebSocketEmulator()) as base_url:
        config = attrs.evolve(
            config_for(base_url),
            options={
                "ping_interval": 4 * CEILING,
                "pong_timeout": CEILING,
                "liveness_timeout": None,
                "send_timeout": 0.05,
            },
        )
        async with WebSocketProvider().open_connection(config) as conn:
            await control(base_url, "fault", {"kind": "silence"})
            await trio.testing.wait_all_tasks_blocked()  # the reader is parked
            with trio.fail_after(CEILING):
                conn.start_at_once(message("never-acked"), done)
                await answered.wait()
    [error] = heard
    assert isinstance(error, TransientError) and "no ack" in str(error)
