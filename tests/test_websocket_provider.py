"""The websocket provider: its sans-IO core with plain numbers, then the shell
against the emulator over real sockets on 127.0.0.1 (short real timeouts, no
MockClock: virtual time and real sockets do not mix)."""

from __future__ import annotations

import gc
import inspect
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import example, given
from hypothesis import strategies as st

import providers.websocket
from providers import registry
from providers.base import (
    AuthenticationFailed,
    BadRecipient,
    Banned,
    ChannelConfig,
    Connection,
    ConnectionState,
    ConnectionStateChanged,
    DeliveryReceipt,
    Event,
    FatalError,
    InboundMessage,
    Media,
    MediaKind,
    MessageEdited,
    MessageTooLong,
    MissingPermissions,
    OutboundMessage,
    PermanentSendError,
    Provider,
    ProviderError,
    RateLimited,
    RateLimitScope,
    ReceiptStatus,
    SendResult,
    Template,
    TransientError,
)
from providers.emulators.base import open_emulator
from providers.emulators.websocket import WebSocketEmulator
from providers.testing import LinkBreaker
from providers.websocket import WebSocketProvider
from providers.websocket.core import (
    HEARTBEAT_ACK,
    CloseLink,
    CompleteSend,
    Emit,
    Fail,
    Phase,
    SendFrame,
    SendPing,
    WebSocketCore,
    _ReceiptFrame,
    _structure,
    error_from_close,
    error_from_code,
)
from providers.websocket.shell import parse_options
from tests.support import clock_window

IO_CEILING = 10.0  # real seconds; only a hang gets near it

# --- the sans-IO core ------------------------------------------------------------------------


def make_core(
    *,
    now: float = 100.0,
    ping_interval: float | None = 10.0,
    pong_timeout: float = 5.0,
    liveness_timeout: float | None = 30.0,
    send_timeout: float = 8.0,
    ready: bool = True,
) -> WebSocketCore:
    core = WebSocketCore(
        "ch",
        now=now,
        ping_interval=ping_interval,
        pong_timeout=pong_timeout,
        liveness_timeout=liveness_timeout,
        send_timeout=send_timeout,
    )
    if ready:
        core.frame_received('{"type":"ready","session":"s-1"}', now)
    return core


def frame(**fields: Any) -> str:
    return json.dumps(fields)


def text_msg(key: str = "k1", peer: str = "p1") -> OutboundMessage:
    return OutboundMessage(peer=peer, idempotency_key=key, text="hello")


def test_ready_opens_the_link_and_emits_connected() -> None:
    core = make_core(ready=False)
    assert core.phase is Phase.AWAITING_READY
    with pytest.raises(TransientError, match="has not sent 'ready' yet"):
        core.start_send(text_msg(), 100.0)
    actions = core.frame_received(frame(type="ready", session="s-9"), 101.0)
    assert actions == [
        Emit(
            event=ConnectionStateChanged(
                channel_id="ch", state=ConnectionState.CONNECTED, detail="ready"
            )
        )
    ]
    assert core.phase is Phase.OPEN and core.session == "s-9"
    assert repr(core) == "<WebSocketCore ch [OPEN pending=0]>"


def test_inbound_frames_become_events() -> None:
    core = make_core()
    media = {"kind": "image", "url": "https://x/y.png", "caption": "c"}
    [msg] = core.frame_received(
        frame(type="message", id="m1", peer="p", sender="u", media=media, timestamp=5), 101.0
    )
    assert msg == Emit(
        event=InboundMessage(
            channel_id="ch",
            platform_message_id="m1",
            peer="p",
            sender="u",
            media=Media(kind=MediaKind.IMAGE, url="https://x/y.png", caption="c"),
            timestamp=5.0,
        )
    )
    [edit] = core.frame_received(frame(type="edit", id="m1", peer="p", sender="u", text="e"), 1)
    assert edit == Emit(
        event=MessageEdited(
            channel_id="ch", platform_message_id="m1", peer="p", sender="u", text="e"
        )
    )
    [receipt] = core.frame_received(frame(type="receipt", id="o1", status="read", peer="p"), 1)
    assert receipt == Emit(
        event=DeliveryReceipt(
            channel_id="ch", platform_message_id="o1", peer="p", status=ReceiptStatus.READ
        )
    )
    # A heartbeat is answered, so the server knows this client is alive.
    assert core.frame_received(frame(type="heartbeat"), 1) == [SendFrame(text=HEARTBEAT_ACK)]
    assert core.frame_received(frame(type="future-thing"), 1) == []
    assert core.ignored_frames == 1
    assert core.last_message_id == "m1"


_RECEIPT_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),  # a huge one is no float: the converter refuses it
    st.floats(-1e3, 1e3),
    st.sampled_from(["o1", "sent", "delivered", "read", "failed", "lost", "", "1.5"]),
    st.lists(st.integers(0, 2), max_size=2),
    st.dictionaries(st.sampled_from(["a"]), st.integers(0, 1), max_size=1),
)


@given(
    st.dictionaries(
        st.sampled_from(["id", "status", "peer", "timestamp", "error", "extra"]),
        _RECEIPT_VALUES,
    )
)
@example({"timestamp": 10**400})  # no float: refused, never an OverflowError out of the reader
@example({"timestamp": 3})
def test_a_receipt_is_read_as_the_converter_reads_it(fields: dict[str, Any]) -> None:
    """Plain receipts skip the converter (one per message sent): the same event either
    way; a receipt of a status word this node does not know is skipped either way."""
    fields = {"status": "delivered", "id": "o1", **fields}
    data = frame(type="receipt", **fields)
    core = make_core()
    actions = core.frame_received(data, 101.0)
    status = fields["status"]
    if type(status) is str and status not in {s.value for s in ReceiptStatus}:
        assert actions == [] and core.ignored_frames == 1  # a new status: skipped
        return
    [action] = actions
    try:
        r = _structure(json.loads(data), _ReceiptFrame)
    except ValueError:
        assert isinstance(action, Fail)
        return
    assert action == Emit(
        event=DeliveryReceipt(
            channel_id="ch",
            platform_message_id=r.id,
            peer=r.peer,
            status=r.status,
            timestamp=r.timestamp,
            error=r.error,
        )
    )
    event = action.event  # type: ignore[union-attr]
    assert type(event.platform_message_id) is str
    assert type(event.timestamp) is type(r.timestamp)  # 3 == 3.0: equality cannot see it


def test_send_then_ack_completes_with_the_platform_id_and_peer() -> None:
    core = make_core()
    [send] = core.start_send(text_msg("k1", "p7"), 100.0)
    assert isinstance(send, SendFrame)
    assert json.loads(send.text) == {"type": "send", "id": "k1", "peer": "p7", "text": "hello"}
    assert core.start_send(text_msg("k1", "p7"), 100.5) == []  # in flight: not sent twice
    assert core.pending == 1
    actions = core.frame_received(frame(type="ack", id="k1", message_id="m9"), 101.0)
    assert actions == [
        CompleteSend(key="k1", result=SendResult(platform_message_id="m9", peer="p7"))
    ]
    assert core.pending == 0


def test_frames_msgspec_refuses_go_out_and_come_in_as_the_standard_library_takes_them() -> None:
    """Half of a UTF-16 pair (a string cut inside an emoji by a client that
    counts UTF-16 units) neither crashes a send nor fails the link; read, it is
    U+FFFD (no store or websocket carries a lone surrogate)."""
    core = make_core()
    cut = "see you \ud83d"  # the emoji's first half only
    [send] = core.start_send(OutboundMessage(peer="p", idempotency_key="k1", text=cut), 100.0)
    assert isinstance(send, SendFrame)
    assert "\\ud83d" in send.text and json.loads(send.text)["text"] == cut
    [msg] = core.frame_received(frame(type="message", id="m1", peer="p", sender="u", text=cut), 101)
    assert isinstance(msg, Emit) and isinstance(msg.event, InboundMessage)
    assert msg.event.text == "see you \ufffd"
    # A NaN, which msgspec refuses as well, and an integer over 64 bits, kept whole.
    [msg] = core.frame_received(
        '{"type":"message","id":"m2","peer":"p","sender":"u","text":"t","timestamp":NaN,'
        '"extra":123456789012345678901234567890}',
        102,
    )
    assert isinstance(msg, Emit) and isinstance(msg.event, InboundMessage)
    assert core.phase is Phase.OPEN
    assert core.frame_received("{not json", 103)[-1] == Fail(error=core.failure)


def test_media_and_reply_to_are_encoded_and_templates_refused() -> None:
    core = make_core()
    msg = OutboundMessage(
        peer="p",
        idempotency_key="k",
        media=Media(kind=MediaKind.DOCUMENT, url="u", filename="f.pdf"),
        reply_to="m1",
    )
    [send] = core.start_send(msg, 100.0)
    assert isinstance(send, SendFrame)
    assert json.loads(send.text) == {
        "type": "send",
        "id": "k",
        "peer": "p",
        "media": {"kind": "document", "url": "u", "filename": "f.pdf"},
        "reply_to": "m1",
    }
    template = OutboundMessage(
        peer="p", idempotency_key="t", template=Template(name="n", language="en")
    )
    with pytest.raises(PermanentSendError, match="cannot send WhatsApp templates"):
        core.start_send(template, 100.0)


@pytest.mark.parametrize(
    ("code", "extra", "expected"),
    [
        ("rate_limited", {"retry_after": 2.5}, RateLimited),
        ("unauthorized", {}, AuthenticationFailed),
        ("banned", {}, Banned),
        ("forbidden", {}, MissingPermissions),
        ("bad_recipient", {"peer": "p1"}, BadRecipient),
        ("too_long", {}, MessageTooLong),
        ("internal", {}, TransientError),
        ("something_new", {}, TransientError),
    ],
)
def test_send_error_codes_map_into_the_error_tree(
    code: str, extra: dict[str, Any], expected: type[ProviderError]
) -> None:
    core = make_core()
    core.start_send(text_msg("k1"), 100.0)
    [done] = core.frame_received(frame(type="error", id="k1", code=code, **extra), 101.0)
    assert isinstance(done, CompleteSend) and type(done.error) is expected
    assert core.phase is Phase.OPEN  # a failed send does not fail the link
    if expected is RateLimited:
        assert isinstance(done.error, RateLimited) and done.error.retry_after == 2.5
    if expected is BadRecipient:
        assert isinstance(done.error, BadRecipient) and done.error.peer == "p1"


def test_rate_limit_scope_and_default_wait() -> None:
    channel = error_from_code("rate_limited")
    peer = error_from_code("rate_limited", retry_after=3.0, peer="p")
    assert isinstance(channel, RateLimited) and isinstance(peer, RateLimited)
    assert (channel.retry_after, channel.scope) == (1.0, RateLimitScope.CHANNEL)
    assert (peer.retry_after, peer.scope, peer.peer) == (3.0, RateLimitScope.PEER, "p")


def test_an_error_without_id_fails_the_link_and_abandons_pending_sends() -> None:
    core = make_core()
    core.start_send(text_msg("k1"), 100.0)
    actions = core.frame_received(frame(type="error", code="banned", message="bye"), 101.0)
    assert [type(a) for a in actions] == [CompleteSend, Fail]
    done, fail = actions
    assert isinstance(done, CompleteSend) and isinstance(done.error, TransientError)
    assert "retry with the same idempotency key" in str(done.error)
    assert isinstance(fail, Fail) and isinstance(fail.error, Banned)
    assert core.phase is Phase.FAILED and core.next_deadline() == float("inf")
    assert core.frame_received(frame(type="heartbeat"), 102.0) == []
    with pytest.raises(TransientError, match="it failed"):
        core.start_send(text_msg("k2"), 102.0)


def test_a_send_without_ack_times_out_and_a_late_ack_is_ignored() -> None:
    core = make_core(ping_interval=None, liveness_timeout=None)
    core.start_send(text_msg("k1"), 100.0)
    assert core.next_deadline() == 108.0
    assert core.tick(107.9) == []
    [done] = core.tick(108.0)
    assert isinstance(done, CompleteSend) and isinstance(done.error, TransientError)
    assert "no ack for send 'k1' within 8.0s" in str(done.error)
    assert core.frame_received(frame(type="ack", id="k1", message_id="m"), 109.0) == []
    assert core.next_deadline() == float("inf")


def test_keepalive_pings_on_schedule_and_a_missing_pong_kills_the_link() -> None:
    core = make_core(liveness_timeout=None)
    assert core.next_deadline() == 110.0
    assert core.tick(109.0) == []
    [ping] = core.tick(110.0)
    assert ping == SendPing(payload=b"sb-1")
    assert core.next_deadline() == 115.0  # the pong deadline
    assert core.pong_received(b"sb-1", 112.0) == []
    assert core.next_deadline() == 120.0  # the next ping
    [ping] = core.tick(120.0)
    assert ping == SendPing(payload=b"sb-2")
    assert core.pong_received(b"other", 121.0) == []  # not ours
    [fail] = core.tick(125.0)
    assert isinstance(fail, Fail) and isinstance(fail.error, TransientError)
    assert "no pong within 5.0s" in str(fail.error)


def test_frames_from_the_server_put_the_keepalive_ping_off() -> None:
    """A ping proves the transport; so does any frame from the server. A link
    that heartbeats more often than ``ping_interval`` is never pinged."""
    core = make_core(liveness_timeout=None)  # ready at 100, ping_interval 10
    core.frame_received(frame(type="heartbeat"), 107.0)
    assert core.next_deadline() == 117.0  # silent for 10 s from the heartbeat
    assert core.tick(110.0) == []  # a timer set earlier finds nothing to do
    for at in (115.0, 123.0, 131.0):
        core.frame_received(frame(type="heartbeat"), at)
        assert core.tick(at + 9.9) == []
    [ping] = core.tick(141.0)  # silent since 131: now a ping
    assert ping == SendPing(payload=b"sb-1")
    assert core.next_deadline() == 146.0  # and its pong is awaited as before
    # Pongs are not frames from the server's application: a silent server
    # that only answers pings is pinged every interval.
    core.pong_received(ping.payload, 142.0)
    [again] = core.tick(151.0)
    assert again == SendPing(payload=b"sb-2")
    [fail] = core.tick(156.0)
    assert isinstance(fail, Fail) and "no pong within 5.0s" in str(fail.error)


def test_liveness_counts_application_frames_not_pongs() -> None:
    core = make_core(ping_interval=None, liveness_timeout=30.0)
    assert core.next_deadline() == 130.0
    core.frame_received(frame(type="heartbeat"), 120.0)
    assert core.next_deadline() == 150.0
    core.pong_received(b"x", 140.0)
    [fail] = core.tick(150.0)
    assert isinstance(fail, Fail) and "liveness timeout 30.0s" in str(fail.error)


def test_a_stalled_reader_is_not_taken_for_a_dead_link() -> None:
    """A full event buffer stops the reading (issue 11): the pong and the
    heartbeats that arrived meanwhile wait unread, so the timers restart."""
    core = make_core(liveness_timeout=30.0)
    [ping] = core.tick(110.0)
    assert core.next_deadline() == 115.0  # the pong deadline
    assert core.reader_stalled(111.0, 160.0) == []  # 49 s with the consumer full
    assert core.tick(160.0) == []  # neither the pong nor the liveness has failed
    assert core.next_deadline() == 165.0  # the pong, judged from now
    assert core.pong_received(ping.payload, 160.1) == []  # read at last
    assert core.next_deadline() == 160.0  # the next ping, overdue since the stall
    [again] = core.tick(160.1)
    assert isinstance(again, SendPing)
    core.pong_received(again.payload, 160.2)
    [fail] = core.tick(190.0)  # the liveness also restarted at 160
    assert isinstance(fail, Fail) and "liveness timeout 30.0s" in str(fail.error)


def test_a_stall_gives_each_ack_only_the_time_it_overlapped_so_acks_stay_in_order() -> None:
    """Acks are due in the order their sends went (next_deadline reads the
    first): a send made during a stall must not be due after one made later."""
    core = make_core(ping_interval=None, liveness_timeout=None, send_timeout=10.0)
    core.start_send(text_msg("a"), 100.0)  # due at 110: 4 s of it overlap the stall
    core.start_send(text_msg("b"), 103.0)  # during the stall: waited 2 s of it
    assert core.reader_stalled(101.0, 105.0) == []
    core.start_send(text_msg("c"), 105.0)  # after it: due at 115
    assert core.next_deadline() == 114.0  # a: 110 + the 4 s it waited unread
    [late_a] = core.tick(114.0)
    assert isinstance(late_a, CompleteSend) and late_a.key == "a"
    assert core.next_deadline() == 115.0  # b (103 + 10 + 2) and c, not 117
    assert sorted(action.key for action in core.tick(115.0)) == ["b", "c"]


def test_a_late_timer_graces_an_ack_no_later_than_a_send_made_then_is_due() -> None:
    # A pong timeout longer than the send timeout: graced to "as long again as
    # the loop looked away" (10 s), the ack would be due after a send made just
    # after it, and that send's timeout would be noticed only then.
    core = make_core(ping_interval=None, liveness_timeout=None, pong_timeout=30.0)
    core.start_send(text_msg("a"), 100.0)  # due at 108
    assert core.tick(118.0, due=108.0) == []  # 10 s late: graced, to 118 + 8 at most
    core.start_send(text_msg("b"), 118.5)  # due at 126.5
    assert core.next_deadline() == 126.0  # a's grace, before b
    [late_a] = core.tick(126.0)
    assert isinstance(late_a, CompleteSend) and late_a.key == "a"
    assert core.next_deadline() == 126.5


def test_a_timer_that_fires_late_reads_before_it_blames_the_link() -> None:
    """The node's loop was busy for 3 s past the pong deadline (issue 12): the pong
    may be unread in the socket, so the link gets as long again, once."""
    core = make_core(liveness_timeout=None)
    [ping] = core.tick(110.0)
    assert core.tick(118.0, due=115.0) == []  # 3 s late: not blamed yet
    assert core.next_deadline() == 121.0  # judged after as long again
    assert core.pong_received(ping.payload, 118.01) == []  # it was there: the link is fine
    [again] = core.tick(120.0, due=120.0)
    assert isinstance(again, SendPing)
    # A dead link is still found: one grace, then the verdict, however late.
    assert core.tick(128.0, due=125.0) == []
    [fail] = core.tick(133.0, due=131.0)
    assert isinstance(fail, Fail) and "no pong within 5.0s" in str(fail.error)


def test_the_grace_of_a_late_timer_is_at_most_a_pong_timeout() -> None:
    """A node frozen for 600 s does not give a dead link 600 s more."""
    core = make_core(liveness_timeout=None)
    core.tick(110.0)
    assert core.tick(715.0, due=115.0) == []
    assert core.next_deadline() == 720.0  # 715 + pong_timeout, not 715 + 600
    [fail] = core.tick(720.0, due=720.0)
    assert isinstance(fail, Fail)


def test_a_timer_on_time_or_a_little_late_judges_at_once() -> None:
    core = make_core(liveness_timeout=None)
    core.tick(110.0)
    [fail] = core.tick(115.05, due=115.0)  # within LATE_TIMER: the link's fault
    assert isinstance(fail, Fail)


def test_a_late_timer_gives_each_overdue_ack_one_grace_in_order() -> None:
    core = make_core(ping_interval=None, liveness_timeout=None, send_timeout=8.0)
    core.start_send(OutboundMessage(peer="p", idempotency_key="k1", text="a"), 100.0)
    core.start_send(OutboundMessage(peer="p", idempotency_key="k2", text="b"), 101.0)
    core.start_send(OutboundMessage(peer="p", idempotency_key="k3", text="c"), 104.0)
    assert core.tick(110.0, due=108.0) == []  # k1 was due at 108, k2 at 109
    assert core.next_deadline() == 112.0  # and k3 (due 112) keeps its place
    # A chatty server does not renew the grace of an ack that never comes.
    core.frame_received(frame(type="heartbeat"), 111.0)
    done = core.tick(114.0, due=112.0)  # late again: k1, k2 had theirs (k3 shared its end)
    assert [a.key for a in done if isinstance(a, CompleteSend)] == ["k1", "k2", "k3"]
    assert core.next_deadline() == float("inf")


def test_a_late_timer_gives_the_liveness_one_grace_until_a_frame_comes() -> None:
    core = make_core(ping_interval=None, liveness_timeout=30.0)
    assert core.tick(131.0, due=130.0) == []  # 1 s late: looks for 1 s more
    assert core.next_deadline() == 132.0
    [fail] = core.tick(134.0, due=132.0)
    assert isinstance(fail, Fail) and "liveness timeout 30.0s" in str(fail.error)


def test_disabled_timers_leave_nothing_armed() -> None:
    core = make_core(ping_interval=None, liveness_timeout=None)
    assert core.next_deadline() == float("inf")
    assert core.tick(1e9) == []


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ("not json", "protocol violation"),
        ("[1, 2]", "must be a JSON object"),
        (frame(type="message", id="m1", sender="u"), r"\$\.peer"),
        (frame(type="receipt", id="o1", status=7), r"\$\.status"),  # a new word is skipped
    ],
)
def test_malformed_frames_fail_the_link_with_a_readable_reason(data: str, match: str) -> None:
    core = make_core()
    [fail] = core.frame_received(data, 101.0)
    assert isinstance(fail, Fail) and isinstance(fail.error, TransientError)
    assert re.search(match, str(fail.error))


def test_close_abandons_pending_sends_and_is_idempotent() -> None:
    core = make_core()
    core.start_send(text_msg("k1"), 100.0)
    done, close = core.close()
    assert isinstance(done, CompleteSend) and "closed by us" in str(done.error)
    assert close == CloseLink(code=1000, reason="client closing")
    assert core.phase is Phase.CLOSED
    assert core.close() == [] and core.connection_lost(1000, None) == []
    with pytest.raises(TransientError, match="closed by us"):
        core.start_send(text_msg("k2"), 101.0)


@pytest.mark.parametrize(
    ("code", "reason", "expected"),
    [
        (4001, "unauthorized", AuthenticationFailed),
        (4003, "banned", Banned),
        (4029, "2.5", RateLimited),
        (1000, None, TransientError),
        (1011, "oops", TransientError),
        (None, "the TCP link broke", TransientError),
    ],
)
def test_close_codes_map_into_the_error_tree(
    code: int | None, reason: str | None, expected: type[ProviderError]
) -> None:
    error = error_from_close(code, reason)
    assert type(error) is expected
    if isinstance(error, RateLimited):
        assert error.retry_after == 2.5
    core = make_core()
    [fail] = core.connection_lost(code, reason)
    assert isinstance(fail, Fail) and type(fail.error) is expected


operations = st.lists(
    st.tuples(
        st.sampled_from(["tick", "frame", "pong", "send", "ack"]),
        st.floats(min_value=0.0, max_value=20.0),
    ),
    max_size=40,
)


@given(operations)
def test_the_timer_loop_never_spins(ops: list[tuple[str, float]]) -> None:
    """After ``tick(now)``, the next deadline lies in the future (or the link is dead)."""
    core = make_core(now=0.0, ping_interval=3.0, pong_timeout=1.0, liveness_timeout=7.0)
    now, sends = 0.0, 0
    for op, step in ops:
        now += step
        if op == "frame":
            core.frame_received(frame(type="heartbeat"), now)
        elif op == "pong":
            core.pong_received(b"sb-%d" % core._ping_counter, now)
        elif op == "send" and core.phase is Phase.OPEN:
            sends += 1
            core.start_send(text_msg(f"k{sends}"), now)
        elif op == "ack":
            core.frame_received(frame(type="ack", id=f"k{sends}", message_id="m"), now)
        while core.next_deadline() <= now:
            core.tick(now)
        assert core.next_deadline() > now or core.phase is Phase.FAILED


def test_options_are_validated_with_paths() -> None:
    assert parse_options({}).ping_interval == 20.0
    assert parse_options({"ping_interval": None}).ping_interval is None
    with pytest.raises(FatalError, match=r"\$\.options"):
        parse_options({"ping_intreval": 1.0})
    with pytest.raises(FatalError, match="positive number of seconds"):
        parse_options({"pong_timeout": -1})


def test_options_are_parsed_once_per_distinct_set_and_a_refusal_every_time() -> None:
    # Every connect asks: channels sharing their options share one parse.
    first = parse_options({"ping_interval": 7.0, "send_timeout": 3.0})
    assert parse_options({"send_timeout": 3.0, "ping_interval": 7.0}) is first
    assert parse_options({"ping_interval": 8.0, "send_timeout": 3.0}).ping_interval == 8.0
    for _ in range(2):  # a refusal is not remembered as anything
        with pytest.raises(FatalError, match="positive number of seconds"):
            parse_options({"pong_timeout": -1})
        with pytest.raises(FatalError, match=r"\$\.options\.ping_interval"):
            parse_options({"ping_interval": [1]})  # no key: parsed (and refused) each time


def test_public_face_and_registry() -> None:
    public = {n for n in vars(providers.websocket) if not n.startswith("_")}
    public -= {"core", "hub", "link", "shell", "timers"}
    assert public == set(providers.websocket.__all__)
    assert registry.load(registry.PROVIDERS, "websocket") is WebSocketProvider
    assert registry.load(registry.EMULATORS, "websocket") is WebSocketEmulator
    provider = WebSocketProvider()
    assert isinstance(provider, Provider)
    assert provider.name == "websocket" and provider.limits.max_text_length == 16_384


# --- the shell against the emulator, over real sockets ----------------------------------------


@asynccontextmanager
async def serving(emulator: WebSocketEmulator) -> AsyncIterator[str]:
    async with open_emulator(emulator) as base_url:
        yield base_url.replace("http://", "ws://") + "/ws"


def config(url: str, token: str = "t1", **options: Any) -> ChannelConfig:
    # Pings flow beside everything the tests do, but only a hang could miss the
    # pong or liveness deadlines: a stalled machine must not end the link. The
    # tests of those deadlines set their own.
    opts = {
        "ping_interval": 0.05,
        "pong_timeout": IO_CEILING,
        "liveness_timeout": IO_CEILING,
        **options,
    }
    return ChannelConfig(
        channel_id="ws-1",
        provider="websocket",
        base_url=url,
        credentials={"token": token},
        options=opts,
    )


async def next_event(events: AsyncIterator[Event], kind: type[Any]) -> Any:
    """The next event of type ``kind`` (skipping the others)."""
    async for event in events:
        if isinstance(event, kind):
            return event
    raise AssertionError(f"the events ended before a {kind.__name__}")


async def drain(events: AsyncIterator[Event]) -> None:
    async for _ in events:
        pass


@pytest.mark.parametrize("token_in_query", [False, True], ids=["header", "query"])
async def test_inbound_send_ack_and_receipt(token_in_query: bool) -> None:
    emulator = WebSocketEmulator(tokens={"t1"}, heartbeat_interval=0.05)
    with trio.fail_after(IO_CEILING):
        async with serving(emulator) as url:
            cfg = config(url, token_in_query=token_in_query)
            async with WebSocketProvider().open_connection(cfg) as conn:
                assert isinstance(conn, Connection)
                assert repr(conn).startswith("<WebSocketConnection ws-1 [OPEN pending=0")
                events = conn.events()
                ready = await next_event(events, ConnectionStateChanged)
                assert ready.state is ConnectionState.CONNECTED
                await emulator.inject({"text": "hi", "peer": "chat-1", "sender": "ann"})
                inbound = await next_event(events, InboundMessage)
                assert (inbound.channel_id, inbound.peer, inbound.sender, inbound.text) == (
                    "ws-1",
                    "chat-1",
                    "ann",
                    "hi",
                )
                result = await conn.send(text_msg("k1", "chat-1"))
                assert result == SendResult(platform_message_id="out-1", peer="chat-1")
                receipt = await next_event(events, DeliveryReceipt)
                assert (receipt.platform_message_id, receipt.status) == (
                    "out-1",
                    ReceiptStatus.DELIVERED,
                )
                again = await conn.send(text_msg("k1", "chat-1"))  # a retry: deduplicated
                assert again == result
                assert [s["id"] for s in emulator.sent] == ["k1"]
                assert emulator.stats["duplicates"] == 1
                assert conn.session_state().data == {"last_message_id": inbound.platform_message_id}
                await conn.close()
                await drain(events)  # ends quietly after our close
                with pytest.raises(TransientError, match="closed by us"):
                    await conn.send(text_msg("k2"))


async def test_inject_pushes_typed_frames_as_they_are_and_queues_when_nobody_listens() -> None:
    emulator = WebSocketEmulator(heartbeat_interval=0.05)
    with trio.fail_after(IO_CEILING):
        async with serving(emulator) as url:
            queued = await emulator.inject({"text": "early", "token": "t1"})
            assert queued["queued"] is True
            async with WebSocketProvider().open_connection(config(url)) as conn:
                events = conn.events()
                early = await next_event(events, InboundMessage)
                assert early.text == "early"
                edit = {"type": "edit", "id": early.platform_message_id, "peer": "p", "sender": "u"}
                result = await emulator.inject({**edit, "text": "edited"})
                assert result["delivered_to"] == 1
                edited = await next_event(events, MessageEdited)
                assert edited.text == "edited"


@pytest.mark.parametrize(
    ("fault", "expected", "match"),
    [
        ({"kind": "drop"}, TransientError, "code 1001"),
        ({"kind": "close", "code": 1011}, TransientError, "code 1011"),
        ({"kind": "close", "code": 4001}, AuthenticationFailed, "bad token"),
        ({"kind": "close", "code": 4003}, Banned, "do not reconnect"),
        ({"kind": "close", "code": 4029, "reason": "3"}, RateLimited, "code 4029"),
    ],
    ids=["drop", "1011", "4001", "4003", "4029"],
)
async def test_a_server_close_raises_from_events(
    fault: dict[str, Any], expected: type[ProviderError], match: str
) -> None:
    emulator = WebSocketEmulator(heartbeat_interval=0.05)
    with trio.fail_after(IO_CEILING):
        async with serving(emulator) as url:
            async with WebSocketProvider().open_connection(config(url)) as conn:
                events = conn.events()
                await next_event(events, ConnectionStateChanged)
                await emulator.platform_fault(fault)
                with pytest.raises(expected, match=match) as info:
                    await drain(events)
                assert conn.phase is Phase.FAILED
                if isinstance(info.value, RateLimited):
                    assert info.value.retry_after == 3.0


async def test_heartbeats_move_the_liveness_deadline() -> None:
    # Whether the link *stays up* on heartbeats is a matter of time, which a
    # real socket cannot fake and a loaded machine cannot promise for short
    # timeouts; the core's tests show that a frame postpones the deadline.
    # What the shell must do is feed every heartbeat to the core with the
    # time it arrived: the liveness deadline follows the last heartbeat.
    emulator = WebSocketEmulator(heartbeat_interval=0.05)
    liveness = 3600.0  # seconds: never reached here, however slow the machine
    with trio.fail_after(IO_CEILING):
        async with serving(emulator) as url:
            cfg = config(url, ping_interval=None, liveness_timeout=liveness)
            async with WebSocketProvider().open_connection(cfg) as conn:
                events = conn.events()
                await next_event(events, ConnectionStateChanged)
                core = conn._core  # the shell's state: white-box on purpose
                ready_at, frames = core.last_frame_at, core.frames_received
                while core.frames_received < frames + 3:  # noqa: ASYNC110 - no event to wait on
                    await trio.sleep(0.01)  # a poll for heartbeats, not a wait for time to pass
                assert ready_at < core.last_frame_at <= trio.current_time()
                assert core.next_deadline() == core.last_frame_at + liveness
                assert conn.phase is Phase.OPEN


async def test_a_silent_server_is_dead_after_the_liveness_timeout() -> None:
    emulator = WebSocketEmulator(heartbeat_interval=0.05)
    with trio.fail_after(IO_CEILING):
        async with serving(emulator) as url:
            cfg = config(url, ping_interval=None, liveness_timeout=0.3)
            async with WebSocketProvider().open_connection(cfg) as conn:
                events = conn.events()
                await next_event(events, ConnectionStateChanged)
                await emulator.platform_fault({"kind": "silence"})
                with pytest.raises(TransientError, match=r"liveness timeout 0.3s") as info:
                    await drain(events)
                assert conn.phase is Phase.FAILED
    # Never before the timeout, however late (a loaded machine only makes it later).
    silent_for = re.search(r"no frame from the server for ([0-9.]+)s", str(info.value))
    assert silent_for is not None, info.value
    assert float(silent_for.group(1)) >= 0.3


async def test_a_silent_server_times_out_sends_and_the_ready_wait() -> None:
    emulator = WebSocketEmulator(heartbeat_interval=None)
    with trio.fail_after(IO_CEILING):
        async with serving(emulator) as url:
            cfg = config(url, ping_interval=None, liveness_timeout=None, send_timeout=0.2)
            async with WebSocketProvider().open_connection(cfg) as conn:
                await emulator.platform_fault({"kind": "silence"})
                with pytest.raises(TransientError, match=r"no ack for send 'k1' within 0.2s"):
                    await conn.send(text_msg("k1"))
                assert [s["id"] for s in emulator.sent] == ["k1"]  # it did arrive
            with pytest.raises(TransientError, match=r"no 'ready' from .* within 0.3s"):
                async with WebSocketProvider().open_connection(config(url, connect_timeout=0.3)):
                    pass


async def test_a_banned_token_is_refused_and_a_live_one_is_closed() -> None:
    emulator = WebSocketEmulator(heartbeat_interval=0.05)
    provider = WebSocketProvider()
    with trio.fail_after(IO_CEILING):
        async with serving(emulator) as url:
            async with provider.open_connection(config(url, token="live")) as conn:
                events = conn.events()
                await next_event(events, ConnectionStateChanged)
                emulator.banned_tokens.add("live")  # what the ban_token fault does
                with pytest.raises(Banned, match="code 4003"):
                    await drain(events)
            with pytest.raises(Banned, match="4003"):
                async with provider.open_connection(config(url, token="live")):
                    pass
            assert emulator.stats["refused_banned"] == 1


async def test_an_unknown_token_fails_authentication_on_entry() -> None:
    emulator = WebSocketEmulator(tokens={"good"})
    with trio.fail_after(IO_CEILING):
        async with serving(emulator) as url:
            with pytest.raises(AuthenticationFailed, match="unauthorized"):
                async with WebSocketProvider().open_connection(config(url, token="bad")):
                    pass


async def test_rate_limits_refuse_sends_and_connections_with_retry_after() -> None:
    emulator = WebSocketEmulator(heartbeat_interval=0.05)
    provider = WebSocketProvider()
    with trio.fail_after(IO_CEILING):
        async with serving(emulator) as url:
            async with provider.open_connection(config(url)) as conn:
                until = emulator.rate_limited_until = trio.current_time() + 5.0  # the fault
                # What is left of the 5 s when the emulator answers, which it
                # does between the two readings of the same clock.
                with clock_window() as window, pytest.raises(RateLimited) as info:
                    await conn.send(text_msg("k1"))
                least, most = window.remaining(until)
                assert least <= info.value.retry_after <= most
                assert info.value.scope is RateLimitScope.CHANNEL
                assert conn.phase is Phase.OPEN
                with clock_window() as window, pytest.raises(RateLimited) as info:
                    async with provider.open_connection(config(url)):
                        pass
                least, most = window.remaining(until)
                # the close reason carries milliseconds
                assert least - 0.0005 <= info.value.retry_after <= most + 0.0005
            assert emulator.sent == []


@pytest.mark.parametrize(
    ("setup", "msg", "expected"),
    [
        ({"kind": "unknown_peer", "peer": "ghost"}, text_msg("k", "ghost"), BadRecipient),
        (None, OutboundMessage(peer="p", idempotency_key="k", text="x" * 20), MessageTooLong),
        ({"kind": "fail_sends", "code": "internal"}, text_msg(), TransientError),
        ({"kind": "fail_sends", "code": "forbidden"}, text_msg(), MissingPermissions),
    ],
    ids=["bad_recipient", "too_long", "internal", "forbidden"],
)
async def test_send_errors_from_the_server(
    setup: dict[str, Any] | None, msg: OutboundMessage, expected: type[ProviderError]
) -> None:
    emulator = WebSocketEmulator(heartbeat_interval=0.05, max_text_length=10)
    with trio.fail_after(IO_CEILING):
        async with serving(emulator) as url:
            async with WebSocketProvider().open_connection(config(url)) as conn:
                if setup is not None:
                    await emulator.platform_fault(setup)
                with pytest.raises(expected):
                    await conn.send(msg)
                assert conn.phase is Phase.OPEN
                assert (await conn.send(text_msg("next"))).platform_message_id == "out-1"


async def test_connection_refused_is_transient() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    await listeners[0].aclose()  # nobody listens on it now
    with trio.fail_after(IO_CEILING):
        with pytest.raises(TransientError, match="cannot connect"):
            async with WebSocketProvider().open_connection(config(f"ws://127.0.0.1:{port}/ws")):
                pass


async def test_an_error_in_the_block_propagates_unwrapped() -> None:
    emulator = WebSocketEmulator()
    with trio.fail_after(IO_CEILING):
        async with serving(emulator) as url:
            with pytest.raises(ValueError, match="mine"):
                async with WebSocketProvider().open_connection(config(url)):
                    raise ValueError("mine")


# --- a TCP proxy that can freeze or cut the link (faults below the websocket layer) --------


@pytest.mark.parametrize(
    ("fault", "pong_timeout", "error"),
    [
        ("freeze", 0.2, r"no pong within 0.2s"),
        # Only the cut may end this link: no pong deadline a stall could miss.
        ("cut", IO_CEILING * 10, r"TCP link broke|code 1006"),
    ],
)
async def test_faults_below_the_websocket_layer(
    fault: str, pong_timeout: float, error: str
) -> None:
    # That pongs keep a link up is tests/test_websocket_link.py's
    # test_each_ping_goes_out_once_the_last_pong_came_back (counted, not timed).
    emulator = WebSocketEmulator(heartbeat_interval=None)
    with trio.fail_after(IO_CEILING):
        async with open_emulator(emulator) as base_url, trio.open_nursery() as nursery:
            breaker = LinkBreaker(int(base_url.rsplit(":", 1)[1]))
            port = await nursery.start(breaker.serve)
            cfg = config(
                f"ws://127.0.0.1:{port}/ws",
                ping_interval=0.05,
                pong_timeout=pong_timeout,
                liveness_timeout=None,
                close_timeout=0.2,
            )
            async with WebSocketProvider().open_connection(cfg) as conn:
                events = conn.events()
                # Through the proxy both ways: the upgrade went up, 'ready' came down.
                await next_event(events, ConnectionStateChanged)
                if fault == "freeze":
                    breaker.frozen = True
                else:
                    breaker.cut()
                with pytest.raises(TransientError, match=error):
                    await drain(events)
            nursery.cancel_scope.cancel()


async def test_an_open_connection_keeps_no_generator_frame() -> None:
    # Every connected channel holds its block for the connection's life: no
    # suspended generator, manager object and weak reference besides it.
    from providers.websocket import shell

    emulator = WebSocketEmulator()
    with trio.fail_after(IO_CEILING):
        async with serving(emulator) as url:
            async with WebSocketProvider().open_connection(config(url)) as conn:
                frames = [
                    obj
                    for obj in gc.get_objects()
                    if inspect.isasyncgen(obj)
                    and obj.ag_code.co_filename == shell.__file__
                    and obj.ag_code.co_name == "open_connection"
                ]
                assert frames == []
                assert conn.phase is Phase.OPEN


async def test_receipts_taken_at_once_skip_the_consumer_and_the_rest_still_reach_it() -> None:
    emulator = WebSocketEmulator(tokens={"t1"}, heartbeat_interval=0.05)
    taken: list[Event] = []
    took = trio.Event()

    def take(event: Event) -> bool:
        if not isinstance(event, DeliveryReceipt):
            return False
        taken.append(event)
        took.set()
        return True

    seen: list[Event] = []
    consumed = trio.Event()

    async def consume(events: AsyncIterator[Event]) -> None:
        async for event in events:
            seen.append(event)
            if isinstance(event, InboundMessage):
                consumed.set()

    with trio.fail_after(IO_CEILING):
        async with serving(emulator) as url:
            async with WebSocketProvider().open_connection(config(url)) as conn:
                conn.take_events_at_once(take)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(consume, conn.events())
                    await conn.send(text_msg("k1", "chat-1"))
                    await took.wait()  # in the reader's task, not through events()
                    await emulator.inject({"text": "hi", "peer": "chat-1", "sender": "ann"})
                    await consumed.wait()  # refused by take: handed to the consumer
                    nursery.cancel_scope.cancel()
    assert [r.platform_message_id for r in taken] == ["out-1"]  # type: ignore[attr-defined]
    after = [type(e).__name__ for e in seen if not isinstance(e, ConnectionStateChanged)]
    assert after == ["InboundMessage"]


async def test_an_event_is_offered_at_once_only_to_a_waiting_consumer_with_nothing_ahead() -> None:
    from providers.websocket.shell import _EventBuffer

    def message(n: int) -> InboundMessage:
        return InboundMessage(channel_id="c", platform_message_id=f"m{n}", peer="p", sender="p")

    buffer = _EventBuffer(8)
    got: list[Any] = []
    with trio.fail_after(IO_CEILING):
        async with trio.open_nursery() as nursery:
            assert not buffer.idle  # nobody waits for an event yet
            gate = trio.Event()

            async def consume() -> None:
                got.append(await buffer.get())
                await gate.wait()  # busy with it
                got.append(await buffer.get())

            nursery.start_soon(consume)
            await trio.testing.wait_all_tasks_blocked()
            assert buffer.idle  # waiting, nothing ahead
            await buffer.put(message(1))
            assert not buffer.idle  # one ahead (the consumer has not run yet)
            await trio.testing.wait_all_tasks_blocked()
            assert not buffer.idle  # the consumer took it and is busy with it
            await buffer.put(message(2))
            gate.set()
            await trio.testing.wait_all_tasks_blocked()
            assert [e.platform_message_id for e in got] == ["m1", "m2"]
            nursery.start_soon(buffer.get)
            await trio.testing.wait_all_tasks_blocked()
            assert buffer.idle
            buffer.close()
            assert not buffer.idle


@pytest.mark.parametrize("hub", [True, False], ids=["read-hub", "trio-io"])
async def test_acks_and_taken_receipts_are_applied_without_waking_the_reader(
    hub: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over a plain socket the reader parks in the run's read hub, which
    applies an ack and a receipt the channel takes at once in place: twenty
    sends wake the reader's task not once. An inbound message (not taken)
    wakes it. Without the hub (no epoll), the reader reads as before, with
    the same results."""
    import providers.websocket.hub as hub_module
    import providers.websocket.link as link_module

    if not hub:
        monkeypatch.setattr(link_module, "read_hub", lambda: None)
    emulator = WebSocketEmulator(tokens={"t1"}, heartbeat_interval=None)
    taken: list[DeliveryReceipt] = []
    consumed: list[Event] = []

    def take(event: Event) -> bool:
        if isinstance(event, DeliveryReceipt):
            taken.append(event)
            return True
        return False

    async def consume(events: AsyncIterator[Event]) -> None:
        async for event in events:  # (waiting: the reader may offer events at once)
            consumed.append(event)

    with trio.fail_after(IO_CEILING):
        async with serving(emulator) as url:
            cfg = config(url, ping_interval=None)
            async with (
                WebSocketProvider().open_connection(cfg) as conn,
                trio.open_nursery() as nursery,
            ):
                conn.take_events_at_once(take)
                nursery.start_soon(consume, conn.events())
                await trio.testing.wait_all_tasks_blocked()
                assert [type(event) for event in consumed] == [ConnectionStateChanged]
                started = hub_module.started_hub()
                assert (started is not None) is hub
                wakes = started.statistics().wakes if started is not None else 0
                for n in range(20):
                    result = await conn.send(text_msg(f"k{n}", "chat-1"))
                    assert result.platform_message_id == f"out-{n + 1}"
                await trio.testing.wait_all_tasks_blocked()  # (each receipt follows its ack)
                assert [r.platform_message_id for r in taken] == [f"out-{n}" for n in range(1, 21)]
                if started is not None:
                    assert (
                        started.statistics().wakes == wakes
                    )  # twenty acks and receipts, no wake-up
                await emulator.inject({"text": "hi", "peer": "chat-1", "sender": "ann"})
                await trio.testing.wait_all_tasks_blocked()
                assert [type(event) for event in consumed][1:] == [InboundMessage]
                if started is not None:
                    assert started.statistics().wakes > wakes
                await conn.close()
