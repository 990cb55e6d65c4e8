"""The sans-IO Telegram core and webhook handling, without sockets or clocks."""

from __future__ import annotations

import json
import types
from typing import Any

import pytest

import providers.telegram as telegram
from providers.base import (
    AuthenticationFailed,
    BadRecipient,
    Banned,
    Conflict,
    FatalError,
    InboundMessage,
    Media,
    MediaKind,
    MessageEdited,
    MessageTooLong,
    OutboundMessage,
    PermanentSendError,
    ProviderError,
    RateLimited,
    SendResult,
    SessionState,
    Template,
    TransientError,
)
from providers.telegram import core
from providers.telegram.webhook import SECRET_HEADER, WebhookHandler

CHANNEL = "tg:test"


def body(payload: Any) -> bytes:
    return json.dumps(payload).encode()


def message(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "message_id": 7,
        "date": 1_700_000_000,
        "chat": {"id": 42, "type": "private"},
        "from": {"id": 99, "is_bot": False, "first_name": "Ann", "username": "ann"},
        "text": "hello",
    }
    return base | fields


def text_msg(text: str = "hi", **fields: Any) -> OutboundMessage:
    return OutboundMessage(peer="42", idempotency_key="k1", text=text, **fields)


# --- package face ------------------------------------------------------------------------


def test_all_lists_exactly_the_public_names() -> None:
    public = {
        name
        for name, value in vars(telegram).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == set(telegram.__all__)
    for name in telegram.__all__:
        obj = getattr(telegram, name)
        if isinstance(obj, type):
            assert (obj.__doc__ or "").strip(), name


def test_limits_are_telegrams_documented_defaults() -> None:
    limits = telegram.TELEGRAM_LIMITS
    assert (limits.per_channel_rate, limits.per_peer_rate, limits.max_text_length) == (
        30.0,
        1.0,
        4096,
    )
    assert telegram.GROUP_MESSAGES_PER_MINUTE == 20
    assert core.is_group_chat("-1001234") and core.is_group_chat(-5)
    assert not core.is_group_chat("42")


# --- requests ----------------------------------------------------------------------------


def test_get_updates_carries_offset_timeout_and_a_longer_read_timeout() -> None:
    request = core.get_updates(offset=11, timeout=25, limit=50, allowed_updates=("message",))
    assert request.method == "getUpdates"
    assert request.params == {
        "offset": 11,
        "timeout": 25,
        "limit": 50,
        "allowed_updates": ["message"],
    }
    assert request.read_timeout == 25 + core.POLL_READ_GRACE
    assert "offset" not in core.get_updates(offset=None, timeout=0).params


def test_method_url_puts_the_token_in_the_path() -> None:
    assert core.method_url("http://x/", "1:abc", "getMe") == "http://x/bot1:abc/getMe"


def test_webhook_requests() -> None:
    request = core.set_webhook(
        url="https://h/hook",
        secret_token="s3",
        allowed_updates=["message"],
        drop_pending_updates=True,
    )
    assert (request.method, dict(request.params)) == (
        "setWebhook",
        {
            "url": "https://h/hook",
            "secret_token": "s3",
            "allowed_updates": ["message"],
            "drop_pending_updates": True,
        },
    )
    assert core.delete_webhook().params == {"drop_pending_updates": False}


def test_send_text_with_a_reply_and_passthrough_metadata() -> None:
    request = core.send_request(
        text_msg(reply_to="42:5", metadata={"parse_mode": "HTML", "ignored": 1})
    )
    assert request.method == "sendMessage"
    assert request.peer == "42"
    assert request.params == {
        "chat_id": 42,
        "text": "hi",
        "reply_parameters": {"message_id": 5},
        "parse_mode": "HTML",
    }


@pytest.mark.parametrize(
    ("reply_to", "expected"),
    [("5", {"message_id": 5}), ("-100:9", {"message_id": 9, "chat_id": -100})],
)
def test_reply_to_a_bare_id_or_another_chat(reply_to: str, expected: dict[str, Any]) -> None:
    assert core.send_request(text_msg(reply_to=reply_to)).params["reply_parameters"] == expected


def test_username_chats_stay_strings() -> None:
    msg = OutboundMessage(peer="@news", idempotency_key="k", text="x")
    assert core.send_request(msg).params["chat_id"] == "@news"


@pytest.mark.parametrize(
    ("kind", "method", "field"),
    [
        (MediaKind.IMAGE, "sendPhoto", "photo"),
        (MediaKind.VIDEO, "sendVideo", "video"),
        (MediaKind.DOCUMENT, "sendDocument", "document"),
        (MediaKind.AUDIO, "sendAudio", "audio"),
    ],
)
def test_media_by_url_picks_the_method(kind: MediaKind, method: str, field: str) -> None:
    media = Media(kind=kind, url="https://cdn/x", caption="look")
    request = core.send_request(OutboundMessage(peer="-7", idempotency_key="k", media=media))
    assert request.method == method
    assert request.params == {"chat_id": -7, field: "https://cdn/x", "caption": "look"}


def test_over_long_text_and_caption_fail_before_any_request() -> None:
    assert core.send_request(text_msg("x" * 4096)).params["text"] == "x" * 4096
    with pytest.raises(MessageTooLong, match="4097 characters exceeds 4096") as info:
        core.send_request(text_msg("x" * 4097))
    assert info.value.peer == "42"
    media = Media(kind=MediaKind.IMAGE, url="u", caption="c" * 1025)
    with pytest.raises(MessageTooLong, match="caption"):
        core.send_request(OutboundMessage(peer="1", idempotency_key="k", media=media))


def test_templates_and_bad_reply_ids_are_permanent_errors() -> None:
    template = OutboundMessage(
        peer="1", idempotency_key="k", template=Template(name="t", language="en")
    )
    with pytest.raises(PermanentSendError, match="no message templates"):
        core.send_request(template)
    with pytest.raises(PermanentSendError, match="reply_to 'abc'"):
        core.send_request(text_msg(reply_to="abc"))


# --- responses ----------------------------------------------------------------------------


def test_ok_answers_return_the_result() -> None:
    assert core.parse_response(core.get_me(), 200, body({"ok": True, "result": [1]})) == [1]


SEND = core.send_request(text_msg())
POLL = core.get_updates(offset=None, timeout=0)


@pytest.mark.parametrize(
    ("request_", "status", "description", "expected"),
    [
        (POLL, 409, "Conflict: terminated by other getUpdates request", Conflict),
        (POLL, 409, "Conflict: can't use getUpdates method while webhook is active", Conflict),
        (POLL, 401, "Unauthorized", AuthenticationFailed),
        (POLL, 404, "Not Found", AuthenticationFailed),
        (SEND, 401, "Unauthorized", AuthenticationFailed),
        (POLL, 500, "Internal Server Error", TransientError),
        (SEND, 502, "Bad Gateway", TransientError),
        (POLL, 403, "Forbidden", Banned),
        (POLL, 400, "Bad Request: bad webhook", FatalError),
        (SEND, 400, "Bad Request: chat not found", BadRecipient),
        (SEND, 403, "Forbidden: bot was blocked by the user", BadRecipient),
        (SEND, 403, "Forbidden: bot was kicked from the group chat", BadRecipient),
        (SEND, 400, "Bad Request: message is too long", MessageTooLong),
        (SEND, 400, "Bad Request: message caption is too long", MessageTooLong),
        (SEND, 400, "Bad Request: message to be replied not found", PermanentSendError),
    ],
)
def test_error_mapping(
    request_: core.ApiRequest, status: int, description: str, expected: type[ProviderError]
) -> None:
    answer = {"ok": False, "error_code": status, "description": description}
    with pytest.raises(ProviderError) as info:
        core.parse_response(request_, status, body(answer))
    assert type(info.value) is expected
    assert description in str(info.value)
    if isinstance(info.value, PermanentSendError):
        assert info.value.peer == "42"


def test_429_carries_retry_after() -> None:
    answer = {
        "ok": False,
        "error_code": 429,
        "description": "Too Many Requests: retry after 7",
        "parameters": {"retry_after": 7},
    }
    with pytest.raises(RateLimited) as info:
        core.parse_response(SEND, 429, body(answer))
    assert info.value.retry_after == 7.0
    assert info.value.peer == "42"


def test_a_migrated_group_is_a_bad_recipient_naming_the_new_id() -> None:
    answer = {
        "ok": False,
        "error_code": 400,
        "description": "Bad Request: group chat was upgraded to a supergroup chat",
        "parameters": {"migrate_to_chat_id": -1009},
    }
    with pytest.raises(BadRecipient, match="-1009"):
        core.parse_response(SEND, 400, body(answer))


@pytest.mark.parametrize(
    ("status", "expected"),
    [(502, TransientError), (200, TransientError), (404, AuthenticationFailed)],
)
def test_answers_that_are_not_bot_api_json(status: int, expected: type[ProviderError]) -> None:
    with pytest.raises(expected) as info:
        core.parse_response(POLL, status, b"<html>nginx</html>")
    assert info.value.__cause__ is not None


def test_parse_sent_and_parse_me() -> None:
    sent = core.parse_sent(message(message_id=3, chat={"id": -5, "type": "group"}), "-5")
    assert sent == SendResult(platform_message_id="-5:3", peer="-5")
    with pytest.raises(TransientError):
        core.parse_sent(True, "1")
    # Only the id and the chat are read: the rest of the Message is not structured.
    lean = core.parse_sent({"message_id": 4, "chat": {"id": 7}, "date": "not read"}, "7")
    assert lean == SendResult(platform_message_id="7:4", peer="7")
    for result in ({"message_id": 4}, {"message_id": "four", "chat": {"id": 7}}, "4", []):
        with pytest.raises(TransientError, match="not a Message"):
            core.parse_sent(result, "7")
    assert (
        core.parse_me({"id": 1, "is_bot": True, "first_name": "B", "username": "b"}).username == "b"
    )
    with pytest.raises(TransientError):
        core.parse_me([])


# --- updates --------------------------------------------------------------------------------


def test_a_message_becomes_an_inbound_message() -> None:
    reply = {"message_id": 3, "date": 1, "chat": {"id": 42, "type": "private"}}
    [parsed] = core.parse_updates(
        [{"update_id": 10, "message": message(reply_to_message=reply, unknown_field=1)}], CHANNEL
    )
    assert parsed.update_id == 10
    assert parsed.event == InboundMessage(
        channel_id=CHANNEL,
        platform_message_id="42:7",
        peer="42",
        sender="99",
        text="hello",
        reply_to="42:3",
        timestamp=1_700_000_000.0,
        metadata={"update_id": 10, "chat_type": "private", "username": "ann"},
    )


def test_an_edit_becomes_message_edited_at_its_edit_date() -> None:
    [parsed] = core.parse_updates(
        [{"update_id": 11, "edited_message": message(text="fixed", edit_date=1_700_000_100)}],
        CHANNEL,
    )
    assert parsed.event == MessageEdited(
        channel_id=CHANNEL,
        platform_message_id="42:7",
        peer="42",
        sender="99",
        text="fixed",
        timestamp=1_700_000_100.0,
        metadata={"update_id": 11},
    )


def test_inbound_photos_keep_the_file_id_not_a_token_url() -> None:
    photo = [{"file_id": "small", "file_unique_id": "a"}, {"file_id": "big", "file_unique_id": "b"}]
    fields = message(photo=photo, caption="cat")
    del fields["text"]
    [parsed] = core.parse_updates([{"update_id": 1, "message": fields}], CHANNEL)
    assert isinstance(parsed.event, InboundMessage)
    assert parsed.event.text is None
    assert parsed.event.media == Media(kind=MediaKind.IMAGE, url="tg-file:big", caption="cat")


def test_unhandled_and_unreadable_updates_are_skipped_in_order() -> None:
    parsed = core.parse_updates(
        [
            {"update_id": 5, "callback_query": {"id": "x"}},
            {"update_id": 3, "message": {"message_id": "not a number"}},
            {"update_id": 4, "message": message()},
        ],
        CHANNEL,
    )
    assert [(p.update_id, p.event is None) for p in parsed] == [(3, True), (4, False), (5, True)]


@pytest.mark.parametrize("result", [{"update_id": 1}, [{"message": {}}], None])
def test_malformed_results_are_transient(result: Any) -> None:
    with pytest.raises(TransientError):
        core.parse_updates(result, CHANNEL)


# --- the cursor -----------------------------------------------------------------------------


def test_cursor_moves_only_forward_and_is_the_session_state() -> None:
    cursor = core.UpdateCursor.from_session(None)
    assert cursor.session_state() == SessionState(provider="telegram", data={})
    assert not cursor.needs_confirmation()
    cursor.handed_out(10)
    cursor.handed_out(8)
    assert cursor.offset == 11
    assert cursor.session_state() == SessionState(provider="telegram", data={"offset": 11})
    assert cursor.needs_confirmation()
    cursor.polled(11)
    cursor.polled(None)
    assert not cursor.needs_confirmation()
    resumed = core.UpdateCursor.from_session(cursor.session_state())
    assert resumed.offset == 11
    assert repr(resumed) == "UpdateCursor(offset=11, confirmed=None)"


@pytest.mark.parametrize(
    ("session", "match"),
    [
        (SessionState(provider="discord", data={"offset": 1}), "provider 'discord'"),
        (SessionState(provider="telegram", data={"offset": "12"}), "must be an integer"),
        (SessionState(provider="telegram", data={"offset": True}), "must be an integer"),
    ],
)
def test_foreign_or_malformed_sessions_are_fatal(session: SessionState, match: str) -> None:
    with pytest.raises(FatalError, match=match):
        core.UpdateCursor.from_session(session)


# --- options -------------------------------------------------------------------------------


def test_options_defaults_and_credentials_secret() -> None:
    assert core.parse_options({}, {}) == core.TelegramOptions()
    options = core.parse_options({"mode": "webhook"}, {"webhook_secret": "abc_DEF-1"})
    assert options.webhook_secret == "abc_DEF-1"
    assert "abc_DEF" not in repr(options)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"poll_timeout": "soon"}, r"\$\.options\.poll_timeout"),
        ({"poll_limit": 500}, "poll_limit"),
        ({"mode": "carrier-pigeon"}, r"\$\.options\.mode"),
        ({"pol_timeout": 1}, "pol_timeout"),
        ({"mode": "webhook"}, "webhook mode needs a secret"),
        ({"mode": "webhook", "webhook_secret": "no spaces"}, "1-256 characters"),
    ],
)
def test_bad_options_are_fatal_and_name_the_path(options: dict[str, Any], match: str) -> None:
    with pytest.raises(FatalError, match=match):
        core.parse_options(options, {})


# --- webhook --------------------------------------------------------------------------------


UPDATE = body({"update_id": 77, "message": message()})


@pytest.mark.parametrize(
    "headers",
    [
        {SECRET_HEADER: "s3cret"},
        {SECRET_HEADER.lower(): "s3cret"},
        [(b"x-telegram-bot-api-secret-token", b"s3cret")],
    ],
)
def test_webhook_accepts_the_right_secret(headers: Any) -> None:
    handler = WebhookHandler(channel_id=CHANNEL, secret="s3cret")
    verdict = handler.handle(headers, UPDATE)
    assert verdict.status == 200
    assert verdict.update is not None and verdict.update.update_id == 77
    assert isinstance(verdict.update.event, InboundMessage)
    assert verdict.update.event.platform_message_id == "42:7"


@pytest.mark.parametrize(
    ("headers", "payload", "status"),
    [
        ({}, UPDATE, 403),
        ({SECRET_HEADER: "wrong"}, UPDATE, 403),
        ({SECRET_HEADER: "s3cret" + "x"}, UPDATE, 403),
        ({SECRET_HEADER: "s3cret"}, b"not json", 400),
        ({SECRET_HEADER: "s3cret"}, body({"message": message()}), 400),
    ],
)
def test_webhook_refuses_bad_secrets_and_bodies(
    headers: dict[str, str], payload: bytes, status: int
) -> None:
    handler = WebhookHandler(channel_id=CHANNEL, secret="s3cret")
    verdict = handler.handle(headers, payload)
    assert (verdict.status, verdict.update) == (status, None)
    assert verdict.reason
    assert repr(handler) == f"<WebhookHandler {CHANNEL} accepted=0 refused=1>"


def test_a_boolean_option_is_read_as_written_not_by_python_s_truth() -> None:
    # bool("false") is True: the option converter reads the strings by their words.
    assert core.parse_options({"drop_pending_updates": "false"}, {}).drop_pending_updates is False
    assert core.parse_options({"drop_pending_updates": True}, {}).drop_pending_updates is True
    with pytest.raises(FatalError, match=r"\$\.options\.drop_pending_updates"):
        core.parse_options({"drop_pending_updates": "no"}, {})
    for whole in (2.5, "\u0665", "1" * 300, "1_000"):  # a fraction, an Arabic-Indic 5, ...
        with pytest.raises(FatalError, match=r"\$\.options\.poll_timeout"):
            core.parse_options({"poll_timeout": whole}, {})
    assert core.parse_options({"poll_timeout": " +25 "}, {}).poll_timeout == 25
