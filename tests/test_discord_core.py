"""The Discord sans-IO cores, without sockets or clocks: gateway state machine and REST."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from providers.base import (
    AuthenticationFailed,
    BadRecipient,
    Banned,
    ConnectionState,
    ConnectionStateChanged,
    FatalError,
    InboundMessage,
    Media,
    MediaKind,
    MessageEdited,
    MessageTooLong,
    MissingPermissions,
    OutboundMessage,
    PermanentSendError,
    RateLimited,
    RateLimitScope,
    SessionState,
    Template,
    TransientError,
)
from providers.discord.gateway import (
    HEARTBEAT_RESERVE,
    MAX_RECONNECTS,
    SEND_LIMIT,
    SEND_WINDOW,
    Action,
    CloseSocket,
    EmitEvent,
    Fail,
    GatewayCore,
    GatewayState,
    Reconnect,
    SendFrame,
)
from providers.discord.rest import (
    BUCKETS_SWEPT_AT,
    BucketTracker,
    build_send,
    interpret_gateway_bot,
    interpret_send,
    nonce_for,
)
from providers.discord.wire import SessionStartLimit

INTERVAL_MS = 1000
TOKEN = "bot-token"


class StubRng(random.Random):
    """Jitter 0.25, op 9 delays at the middle of their range."""

    def random(self) -> float:
        return 0.25

    def uniform(self, a: float, b: float) -> float:
        return (a + b) / 2


def make_core(**kwargs: Any) -> GatewayCore:
    kwargs.setdefault("rng", StubRng())
    return GatewayCore(
        token=TOKEN, channel_id="chan", gateway_url="wss://gateway.discord.gg", **kwargs
    )


def frame(op: int, d: Any = None, s: int | None = None, t: str | None = None) -> str:
    return json.dumps({"op": op, "d": d, "s": s, "t": t})


def sent(actions: list[Action]) -> list[dict[str, Any]]:
    return [dict(a.payload) for a in actions if isinstance(a, SendFrame)]


def events(actions: list[Action]) -> list[Any]:
    return [a.event for a in actions if isinstance(a, EmitEvent)]


def hello(core: GatewayCore, now: float = 0.0) -> list[Action]:
    core.connection_made(now)
    return core.receive(frame(10, {"heartbeat_interval": INTERVAL_MS}), now)


def ready(core: GatewayCore, now: float = 0.0, seq: int = 1) -> list[Action]:
    d = {
        "session_id": "sess-1",
        "resume_gateway_url": "wss://resume.discord.gg",
        "user": {"id": "999", "username": "bot", "bot": True},
    }
    return core.receive(frame(0, d, s=seq, t="READY"), now)


def connected_core(**kwargs: Any) -> GatewayCore:
    core = make_core(**kwargs)
    hello(core)
    ready(core)
    return core


def message(s: int, *, author: str = "42", content: str = "hi", t: str = "MESSAGE_CREATE") -> str:
    d = {
        "id": f"m{s}",
        "channel_id": "777",
        "guild_id": "1",
        "author": {"id": author, "username": "ann"},
        "content": content,
        "timestamp": "2024-01-01T00:00:00+00:00",
        "edited_timestamp": "2024-01-01T00:01:00+00:00",
        "message_reference": {"message_id": "m0"},
        "attachments": [
            {
                "id": "a",
                "url": "https://cdn/x.png",
                "filename": "x.png",
                "content_type": "image/png",
            }
        ],
    }
    return frame(0, d, s=s, t=t)


# --- identify, hello, heartbeats ---------------------------------------------------------


def test_hello_identifies_and_schedules_the_jittered_first_heartbeat() -> None:
    core = make_core()
    actions = hello(core, now=100.0)
    assert sent(actions) == [
        {
            "op": 2,
            "d": {"token": TOKEN, "intents": core.intents, "properties": core.properties},
        }
    ]
    assert set(core.properties) == {"os", "browser", "device"}
    assert core.state is GatewayState.IDENTIFYING
    assert core.next_deadline() == 100.0 + 0.25 * 1.0


def test_heartbeats_carry_the_last_seq_and_repeat_every_interval() -> None:
    core = connected_core()
    assert core.next_deadline() == 0.25
    assert sent(core.timer(0.25)) == [{"op": 1, "d": 1}]
    assert core.next_deadline() == 1.25
    assert core.receive(frame(11), 0.3) == []
    assert core.latency == pytest.approx(0.05)
    core.receive(message(2), 0.5)
    assert sent(core.timer(1.25)) == [{"op": 1, "d": 2}]


def test_gateway_heartbeat_request_is_answered_at_once() -> None:
    core = connected_core()
    assert sent(core.receive(frame(1), 0.1)) == [{"op": 1, "d": 1}]
    assert core.next_deadline() == 0.25  # the schedule is unchanged


def test_zombie_connection_is_closed_resumably_and_resumed() -> None:
    core = connected_core()
    core.timer(0.25)  # heartbeat, never acknowledged
    actions = core.timer(1.25)
    close = actions[0]
    assert isinstance(close, CloseSocket) and close.code not in (1000, 1001)
    [event] = events(actions)
    assert event.state is ConnectionState.DISCONNECTED and "zombie" in event.detail
    assert actions[-1] == Reconnect(resume=True)
    assert core.next_deadline() is None  # nothing runs until the new socket


def test_a_heartbeat_timer_that_fires_late_reads_before_calling_a_zombie() -> None:
    """Our loop was busy 0.5 s past the heartbeat (issue 12): the ACK may be unread,
    so the core looks as long again, once per ACK, before it calls the socket a zombie."""
    core = connected_core()
    core.timer(0.25, due=0.25)  # heartbeat 1
    assert core.timer(1.75, due=1.25) == []  # ACK not seen, but we were 0.5 s late
    assert core.next_deadline() == 2.25
    assert core.receive(frame(11), 1.76) == []  # it was there ...
    assert core.next_deadline() == 1.76  # ... and heartbeat 2, held back, is overdue
    assert sent(core.timer(1.76, due=1.76)) == [{"op": 1, "d": 1}]
    assert core.next_deadline() == 2.76
    assert core.timer(3.26, due=2.76) == []  # late again, with heartbeat 2 unanswered
    actions = core.timer(4.0, due=3.76)  # late again: once per ACK, so a zombie now
    assert isinstance(actions[0], CloseSocket) and "zombie" in events(actions)[0].detail


def test_a_heartbeat_grace_is_at_most_an_interval_and_ends_with_the_socket() -> None:
    core = connected_core()
    core.timer(0.25, due=0.25)
    assert core.timer(301.25, due=1.25) == []  # a 300 s stall
    assert core.next_deadline() == 302.25  # one interval more, not 300 s
    core.connection_lost(None, 302.0)  # the socket ends; a new one starts afresh
    core.connection_made(303.0)
    core.receive(frame(10, {"heartbeat_interval": 1000}), 303.0)
    first = core.next_deadline()
    assert first is not None
    core.timer(first, due=first)  # its first heartbeat, never acknowledged
    assert core.timer(first + 1.5, due=first + 1.0) == []  # the new socket has its grace


def test_a_heartbeat_timer_a_little_late_still_finds_the_zombie() -> None:
    core = connected_core()
    core.timer(0.25, due=0.25)
    actions = core.timer(1.3, due=1.25)  # within LATE_TIMER: the socket's fault
    assert isinstance(actions[0], CloseSocket)


def test_no_hello_fails_transiently() -> None:
    core = make_core(hello_timeout=5.0)
    core.connection_made(10.0)
    assert core.next_deadline() == 15.0
    actions = core.timer(15.0)
    assert isinstance(actions[-1], Fail) and isinstance(actions[-1].error, TransientError)


# --- READY, seq, resume -------------------------------------------------------------------


def test_ready_records_the_session_and_emits_connected() -> None:
    core = make_core()
    hello(core)
    actions = ready(core, seq=1)
    assert events(actions) == [
        ConnectionStateChanged(channel_id="chan", state=ConnectionState.CONNECTED)
    ]
    assert core.state is GatewayState.CONNECTED
    assert core.session_state() == SessionState(
        provider="discord",
        data={
            "session_id": "sess-1",
            "seq": 1,
            "resume_gateway_url": "wss://resume.discord.gg",
            "user_id": "999",
        },
    )
    assert "CONNECTED seq=1 session=sess-1" in repr(core)


def test_every_dispatch_advances_seq() -> None:
    core = connected_core()
    for s in (2, 3, 7):
        core.receive(message(s), 1.0)
    core.receive(frame(0, {}, s=8, t="TYPING_START"), 1.0)
    assert core.seq == 8


def test_new_socket_resumes_on_the_resume_url_with_session_and_seq() -> None:
    core = connected_core()
    core.receive(message(5), 0.1)
    core.connection_lost(1006, 0.2)
    assert core.connect_url() == "wss://resume.discord.gg/?v=10&encoding=json"
    actions = hello(core, now=0.3)
    assert sent(actions) == [{"op": 6, "d": {"token": TOKEN, "session_id": "sess-1", "seq": 5}}]
    assert core.state is GatewayState.RESUMING
    actions = core.receive(frame(0, {}, s=6, t="RESUMED"), 0.4)
    assert [e.state for e in events(actions)] == [ConnectionState.RESUMED]
    assert core.identifies == 1 and core.resumes == 1


def test_identify_url_without_a_session() -> None:
    assert make_core().connect_url() == "wss://gateway.discord.gg/?v=10&encoding=json"


def test_a_saved_session_resumes_from_the_first_socket() -> None:
    state = SessionState(
        provider="discord",
        data={"session_id": "s", "seq": 41, "resume_gateway_url": "wss://r", "user_id": "9"},
    )
    core = make_core(session=state)
    assert sent(hello(core)) == [{"op": 6, "d": {"token": TOKEN, "session_id": "s", "seq": 41}}]
    assert core.connect_url().startswith("wss://r/")


def test_a_session_of_another_provider_is_refused() -> None:
    with pytest.raises(ValueError, match="telegram"):
        make_core(session=SessionState(provider="telegram", data={"offset": 3}))


# --- op 7, op 9 -----------------------------------------------------------------------------


def test_op7_reconnect_closes_resumably_and_resumes() -> None:
    core = connected_core()
    actions = core.receive(frame(7), 1.0)
    assert isinstance(actions[0], CloseSocket) and actions[0].code == 4000
    assert actions[-1] == Reconnect(resume=True)


def test_op9_resumable_resumes() -> None:
    core = connected_core()
    actions = core.receive(frame(9, True), 1.0)
    assert actions[-1] == Reconnect(resume=True)
    assert core.session_id == "sess-1"


def test_op9_not_resumable_identifies_anew_after_one_to_five_seconds() -> None:
    core = connected_core()
    actions = core.receive(frame(9, False), 1.0)
    assert actions[-1] == Reconnect(resume=False, delay=3.0)
    assert core.session_state().data == {}
    # Hello at t=4, but the last Identify was at t=0: Discord admits one per 5 s
    assert [f["op"] for f in sent(hello(core, now=4.0))] == []
    assert run_until_identify(core) == [(4.25, 1), (5.0, 2)]
    assert core.identifies == 2


def run_until_identify(core: GatewayCore) -> list[tuple[float, int]]:
    """Fire the core's timers (acking heartbeats) until it identifies; (time, op) sent."""
    before = core.identifies
    frames: list[tuple[float, int]] = []
    while core.identifies == before:
        now = core.next_deadline()
        assert now is not None, "nothing scheduled: the identify would never be sent"
        for payload in sent(core.timer(now)):
            frames.append((now, payload["op"]))
            if payload["op"] == 1:
                core.receive(frame(11), now)
    return frames


def test_identifies_are_five_seconds_apart_and_heartbeats_go_on_meanwhile() -> None:
    core = connected_core()  # identified at t=0
    core.receive(frame(9, False), 0.5)
    hello(core, now=1.0)
    assert core.identifies == 1
    # heartbeats at 1.25 (jittered), 2.25, 3.25, 4.25; the Identify at exactly 5.0
    assert run_until_identify(core) == [(1.25, 1), (2.25, 1), (3.25, 1), (4.25, 1), (5.0, 2)]
    core.receive(frame(9, False), 6.0)
    assert sent(hello(core, now=20.0))[0]["op"] == 2  # much later: no wait
    assert core.identifies == 3


def test_op9_delay_is_drawn_between_one_and_five_seconds() -> None:
    for seed in range(20):
        core = connected_core(rng=random.Random(seed))
        reconnect = core.receive(frame(9, False), 1.0)[-1]
        assert isinstance(reconnect, Reconnect) and 1.0 <= reconnect.delay <= 5.0


# --- close codes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (4004, AuthenticationFailed),
        (4010, FatalError),
        (4011, FatalError),
        (4012, FatalError),
        (4013, FatalError),
        (4014, MissingPermissions),
    ],
)
def test_fatal_close_codes(code: int, error: type[Exception]) -> None:
    core = connected_core()
    [fail] = core.connection_lost(code, 1.0)
    assert isinstance(fail, Fail) and type(fail.error) is error
    assert str(code) in str(fail.error)
    assert core.state is GatewayState.FAILED
    assert core.session_state().data == {}


@pytest.mark.parametrize("code", [4007, 4009])
def test_close_codes_that_end_the_session_identify_anew(code: int) -> None:
    core = connected_core()
    actions = core.connection_lost(code, 1.0)
    assert actions[-1] == Reconnect(resume=False)
    assert sent(hello(core, 6.0))[0]["op"] == 2  # past the 5 s identify spacing


@pytest.mark.parametrize("code", [None, 1000, 1001, 1006, 1011, 4000, 4001, 4002, 4003, 4005, 4008])
def test_other_close_codes_resume(code: int | None) -> None:
    core = connected_core()
    actions = core.connection_lost(code, 1.0)
    assert [e.state for e in events(actions)] == [ConnectionState.DISCONNECTED]
    assert actions[-1] == Reconnect(resume=True)
    assert sent(hello(core, 2.0))[0]["op"] == 6


def test_resume_without_a_session_identifies() -> None:
    core = make_core()
    core.connection_made(0.0)
    assert core.connection_lost(4000, 0.1)[-1] == Reconnect(resume=False)


def test_too_many_reconnects_without_a_session_give_up() -> None:
    core = connected_core()
    actions: list[Action] = []
    for i in range(MAX_RECONNECTS + 1):
        actions = core.connection_lost(1006, float(i))
        core.connection_made(float(i))
    assert isinstance(actions[-1], Fail) and isinstance(actions[-1].error, TransientError)


def test_a_close_we_initiated_is_not_classified_again() -> None:
    core = connected_core()
    core.receive(frame(7), 1.0)
    assert core.connection_lost(4000, 1.1) == []


def test_close_resumable_keeps_the_session_and_normal_close_ends_it() -> None:
    core = connected_core()
    assert core.close(resumable=True) == [CloseSocket(code=4000, reason="closing, will resume")]
    assert core.session_state().data["session_id"] == "sess-1"
    core = connected_core()
    assert core.close(resumable=False)[0].code == 1000  # type: ignore[union-attr]
    assert core.session_state().data == {}


def test_undecodable_frame_drops_the_socket_and_resumes() -> None:
    core = connected_core()
    actions = core.receive(b"\x00not json", 1.0)
    assert isinstance(actions[0], CloseSocket) and actions[-1] == Reconnect(resume=True)


# --- identify budget -----------------------------------------------------------------------


def test_identify_is_refused_when_no_session_starts_remain() -> None:
    limit = SessionStartLimit(total=1000, remaining=0, reset_after=7_200_000, max_concurrency=1)
    core = make_core(session_start_limit=limit, now=50.0)
    core.connection_made(60.0)
    actions = core.receive(frame(10, {"heartbeat_interval": INTERVAL_MS}), 60.0)
    assert sent(actions) == []
    fail = actions[-1]
    assert isinstance(fail, Fail) and isinstance(fail.error, RateLimited)
    assert fail.error.retry_after == pytest.approx(7200.0 - 10.0)


def test_identify_budget_counts_down_and_a_resume_costs_nothing() -> None:
    limit = SessionStartLimit(total=5, remaining=1, reset_after=1_000_000, max_concurrency=1)
    core = make_core(session_start_limit=limit)
    hello(core)
    ready(core)
    core.connection_lost(1006, 1.0)
    assert sent(hello(core, 1.0))[0]["op"] == 6  # resume: free
    core.connection_lost(4009, 6.0)
    actions = hello(core, 6.0)  # past the 5 s identify spacing: the budget decides
    assert isinstance(actions[-1], Fail) and isinstance(actions[-1].error, RateLimited)


# --- the 120 / 60 s send limit ------------------------------------------------------------


def test_own_frames_respect_120_per_60_seconds_and_heartbeats_keep_a_reserve() -> None:
    core = connected_core()  # identify used one slot at t=0
    actions: list[Action] = []
    for i in range(200):
        actions += core.queue_frame(3, {"n": i}, 0.0)
    first = len(sent(actions))
    assert first == SEND_LIMIT - HEARTBEAT_RESERVE - 1
    assert core.next_deadline() == 0.25  # the heartbeat comes first
    assert sent(core.timer(0.25)) == [{"op": 1, "d": 1}]  # heartbeats still go out
    core.receive(frame(11), 0.3)
    assert core.next_deadline() == 1.25
    heartbeats = 0
    now = 1.25
    while now < SEND_WINDOW:
        out = sent(core.timer(now))
        assert all(f["op"] == 1 for f in out)
        heartbeats += len(out)
        core.receive(frame(11), now)
        now += 1.0
    # At 60 s the identify and the first frames leave the window; more go out.
    later = sent(core.timer(SEND_WINDOW))
    assert [f["op"] for f in later].count(3) > 0
    assert core.limiter.used(SEND_WINDOW) <= SEND_LIMIT


def test_queued_frames_wait_for_ready() -> None:
    core = make_core()
    hello(core)
    assert core.queue_frame(3, {"status": "online"}, 0.0) == []
    assert sent(ready(core))[0] == {"op": 3, "d": {"status": "online"}}


# --- messages -------------------------------------------------------------------------------


def test_message_create_becomes_an_inbound_message() -> None:
    core = connected_core()
    [event] = events(core.receive(message(2), 1.0))
    assert event == InboundMessage(
        channel_id="chan",
        platform_message_id="m2",
        peer="777",
        sender="42",
        text="hi",
        media=Media(kind=MediaKind.IMAGE, url="https://cdn/x.png", filename="x.png"),
        reply_to="m0",
        timestamp=1704067200.0,
        metadata={"guild_id": "1", "author_name": "ann", "author_is_bot": False},
    )


def test_message_update_becomes_message_edited() -> None:
    core = connected_core()
    [event] = events(core.receive(message(2, content="new", t="MESSAGE_UPDATE"), 1.0))
    assert event == MessageEdited(
        channel_id="chan",
        platform_message_id="m2",
        peer="777",
        sender="42",
        text="new",
        timestamp=1704067260.0,
    )


def test_the_bots_own_messages_are_ignored() -> None:
    core = connected_core()
    assert events(core.receive(message(2, author="999"), 1.0)) == []
    assert core.seq == 2


def test_a_malformed_message_is_skipped_without_losing_the_session() -> None:
    core = connected_core()
    assert core.receive(frame(0, {"content": "no id"}, s=2, t="MESSAGE_CREATE"), 1.0) == []
    assert core.seq == 2 and core.state is GatewayState.CONNECTED


# --- REST -----------------------------------------------------------------------------------


def test_send_request_carries_nonce_enforcement_and_reply() -> None:
    msg = OutboundMessage(peer="123", idempotency_key="k-1", text="hello", reply_to="55")
    request = build_send(msg)
    assert (request.method, request.path) == ("POST", "/api/v10/channels/123/messages")
    assert request.json == {
        "content": "hello",
        "nonce": "k-1",
        "enforce_nonce": True,
        "message_reference": {"message_id": "55", "fail_if_not_exists": False},
    }
    assert request.major == "123"


def test_long_idempotency_keys_hash_to_a_stable_25_character_nonce() -> None:
    key = "a7f1c2d4-1111-2222-3333-444455556666"
    assert nonce_for(key) == nonce_for(key) and len(nonce_for(key)) == 25
    assert nonce_for(key) != nonce_for(key + "x")


def test_media_is_sent_as_caption_and_url() -> None:
    media = Media(kind=MediaKind.IMAGE, url="https://x/y.png", caption="look")
    request = build_send(OutboundMessage(peer="1", idempotency_key="k", media=media))
    assert request.json is not None and request.json["content"] == "look\nhttps://x/y.png"


@pytest.mark.parametrize(
    ("msg", "error"),
    [
        (OutboundMessage(peer="1", idempotency_key="k", text="x" * 2001), MessageTooLong),
        (OutboundMessage(peer="general", idempotency_key="k", text="x"), BadRecipient),
        (
            OutboundMessage(
                peer="1", idempotency_key="k", template=Template(name="t", language="en")
            ),
            PermanentSendError,
        ),
    ],
)
def test_send_requests_refused_before_sending(msg: OutboundMessage, error: type[Exception]) -> None:
    with pytest.raises(error):
        build_send(msg)


def test_exactly_2000_characters_are_allowed() -> None:
    build_send(OutboundMessage(peer="1", idempotency_key="k", text="x" * 2000))


RL = {"X-RateLimit-Bucket": "b", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset-After": "1.5"}


@pytest.mark.parametrize(
    ("status", "headers", "body", "error"),
    [
        (429, RL, {"retry_after": 1.5, "global": False}, RateLimited),
        (429, {"X-RateLimit-Global": "true"}, {"retry_after": 3, "global": True}, RateLimited),
        (429, {}, {"message": "blocked"}, Banned),
        (401, {}, {"message": "401: Unauthorized", "code": 0}, AuthenticationFailed),
        (403, {}, {"message": "Missing Permissions", "code": 50013}, MissingPermissions),
        (403, {}, {"message": "Cannot send", "code": 50007}, BadRecipient),
        (404, {}, {"message": "Unknown Channel", "code": 10003}, BadRecipient),
        (400, {}, {"code": 50035, "errors": {"content": {"_errors": []}}}, MessageTooLong),
        (400, {}, {"code": 50006, "message": "Cannot send an empty message"}, PermanentSendError),
        (500, {}, {}, TransientError),
        (502, {}, None, TransientError),
        (200, {}, {"unexpected": True}, TransientError),
    ],
)
def test_send_answers_map_into_the_error_tree(
    status: int, headers: dict[str, str], body: Any, error: type[Exception]
) -> None:
    raw = json.dumps(body).encode() if body is not None else b"<html>"
    with pytest.raises(error) as info:
        interpret_send(status, headers, raw, peer="123")
    assert type(info.value) is error
    if isinstance(info.value, RateLimited):
        assert info.value.retry_after == body["retry_after"]
        expected = RateLimitScope.GLOBAL if body["global"] else RateLimitScope.CHANNEL
        assert info.value.scope is expected


def test_a_sent_message_returns_its_id() -> None:
    body = json.dumps({"id": "9", "channel_id": "123", "content": "x"}).encode()
    result = interpret_send(200, {}, body, peer="123")
    assert (result.platform_message_id, result.peer) == ("9", "123")


def test_gateway_bot_answer() -> None:
    body = {
        "url": "wss://gateway.discord.gg",
        "shards": 1,
        "session_start_limit": {
            "total": 1000,
            "remaining": 998,
            "reset_after": 5,
            "max_concurrency": 1,
        },
    }
    gateway = interpret_gateway_bot(200, {}, json.dumps(body).encode())
    assert gateway.url == "wss://gateway.discord.gg"
    assert gateway.session_start_limit.remaining == 998
    with pytest.raises(AuthenticationFailed):
        interpret_gateway_bot(401, {}, b"{}")
    with pytest.raises(TransientError, match="session_start_limit"):
        interpret_gateway_bot(200, {}, b'{"url": "x"}')


def test_buckets_make_the_client_wait_instead_of_spending_a_429() -> None:
    buckets = BucketTracker()
    route = "POST /channels/{channel_id}/messages"
    assert buckets.reserve(route, "1", 0.0) == 0.0  # unknown: go
    headers = {
        "X-RateLimit-Bucket": "abc",
        "X-RateLimit-Remaining": "1",
        "X-RateLimit-Reset-After": "2.5",
    }
    buckets.update(route, "1", 200, headers, 0.0)
    assert buckets.reserve(route, "1", 0.1) == 0.0  # the last slot
    assert buckets.reserve(route, "1", 0.5) == pytest.approx(2.0)
    assert buckets.reserve(route, "2", 0.5) == 0.0  # another channel, another bucket
    assert buckets.reserve(route, "1", 2.5) == 0.0  # reset


def test_buckets_of_ever_new_channels_are_swept_once_reset_and_live_ones_kept() -> None:
    """A broadcast writes to a new DM channel per user: the tracker keeps the buckets
    that still hold something back, not one for every channel it ever wrote to."""
    buckets = BucketTracker()
    route = "POST /channels/{channel_id}/messages"
    headers = {
        "X-RateLimit-Bucket": "abc",
        "X-RateLimit-Remaining": "4",
        "X-RateLimit-Reset-After": "5",
    }
    spent = {**headers, "X-RateLimit-Remaining": "0", "X-RateLimit-Reset-After": "1000"}
    buckets.update(route, "held", 200, spent, 0.0)  # spent for 1000 s: must survive
    for n in range(20 * BUCKETS_SWEPT_AT):  # 50 channels a second, each new
        buckets.update(route, str(n), 200, headers, n / 50)
    kept = int(repr(buckets).split("buckets=")[1].split()[0])
    assert 5 * 50 < kept < BUCKETS_SWEPT_AT  # the last 5 s of channels, not 20,480
    now = 20 * BUCKETS_SWEPT_AT / 50
    assert buckets.reserve(route, "held", now) == pytest.approx(1000.0 - now)
    last = str(20 * BUCKETS_SWEPT_AT - 1)
    for _ in range(4):  # the newest is kept, with its 4 slots...
        assert buckets.reserve(route, last, now) == 0.0
    assert buckets.reserve(route, last, now) > 0.0  # ...then spent


def test_a_global_429_blocks_every_route() -> None:
    buckets = BucketTracker()
    buckets.update("r", "1", 429, {"X-RateLimit-Global": "true", "Retry-After": "3"}, 10.0)
    assert buckets.reserve("other", "2", 11.0) == pytest.approx(2.0)


def test_a_global_429_holds_for_the_body_s_exact_retry_after() -> None:
    # Discord rounds Retry-After up to whole seconds; the body's retry_after is exact.
    buckets = BucketTracker()
    headers = {"X-RateLimit-Global": "true", "Retry-After": "1"}
    body = b'{"message": "You are being rate limited.", "retry_after": 0.25, "global": true}'
    buckets.update("r", "1", 429, headers, 10.0, body=body)
    assert buckets.reserve("other", "2", 10.1) == pytest.approx(0.15)
    assert buckets.reserve("other", "2", 10.25) == 0.0
    buckets.update("r", "1", 429, headers, 20.0, body=b"not json")  # the header, then
    assert buckets.reserve("other", "2", 20.5) == pytest.approx(0.5)
