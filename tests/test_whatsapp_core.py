"""The WhatsApp sans-IO core: request building, error mapping, webhook verify and parse."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any, Final

import pytest

from providers.base import (
    AuthenticationFailed,
    BadRecipient,
    Banned,
    ChannelConfig,
    DeliveryReceipt,
    FatalError,
    InboundMessage,
    Media,
    MediaKind,
    MessageTooLong,
    MissingPermissions,
    OutboundMessage,
    OutsideWindow,
    PermanentSendError,
    ProviderError,
    RateLimited,
    RateLimitScope,
    ReceiptStatus,
    SendResult,
    Template,
    TransientError,
)
from providers.whatsapp import core, webhook
from providers.whatsapp.core import WhatsAppSettings

SECRET = "s3cr3t-app-secret"
VERIFY = "verify-me"


def settings(**overrides: Any) -> WhatsAppSettings:
    values: dict[str, Any] = {
        "channel_id": "wa:main",
        "phone_number_id": "1234567890",
        "token": "EAAG-token",
        "app_secret": SECRET,
        "verify_token": VERIFY,
        "base_url": "https://graph.example/",
        "api_version": "v21.0",
    }
    values.update(overrides)
    return WhatsAppSettings(**values)


def text(body: str = "hello", **kw: Any) -> OutboundMessage:
    return OutboundMessage(peer="15551230000", idempotency_key="k1", text=body, **kw)


# --- settings -------------------------------------------------------------------------


def test_settings_from_config_take_defaults_and_hide_secrets() -> None:
    # (Meta's tokens are visible ASCII: one of their shape passes the token check.)
    config = ChannelConfig(
        channel_id="wa:1",
        provider="whatsapp",
        credentials={"token": "T", "app_secret": "A", "verify_token": "V"},
        options={"phone_number_id": 42},
    )
    s = WhatsAppSettings.from_config(config)
    assert (s.phone_number_id, s.base_url, s.api_version) == ("42", core.DEFAULT_BASE_URL, "v21.0")
    assert s.api_root == "https://graph.facebook.com/v21.0"
    assert "T" not in repr(s).replace("True", "") and "'A'" not in repr(s)


def test_settings_missing_credentials_fail_authentication() -> None:
    config = ChannelConfig(
        channel_id="wa:1",
        provider="whatsapp",
        credentials={"token": "T"},
        options={"phone_number_id": "1"},
    )
    with pytest.raises(AuthenticationFailed, match=r"\['app_secret', 'verify_token'\]"):
        WhatsAppSettings.from_config(config)


@pytest.mark.parametrize(
    "token",
    [
        "SECRET-T0KEN\n",
        "SECRET-T0KEN\r\n",
        " SECRET-T0KEN",
        "SECRET T0KEN",
        "\ufeffSECRET-T0KEN",  # a byte-order mark from a text file
        "SECRET-T0KEN\u00e9",
    ],
)
def test_a_token_a_header_cannot_carry_is_refused_without_quoting_it(token: str) -> None:
    # The HTTP layer's refusal quoted the header, token and all, into the channel's error.
    config = ChannelConfig(
        channel_id="wa:1",
        provider="whatsapp",
        credentials={"token": token, "app_secret": "A", "verify_token": "V"},
        options={"phone_number_id": "1"},
    )
    with pytest.raises(AuthenticationFailed, match="a request cannot carry") as info:
        WhatsAppSettings.from_config(config)
    assert "SECRET" not in str(info.value)


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({}, r"\$\.options\.phone_number_id"),
        ({"phone_number_id": "1", "timeout": "soon"}, r"\$\.options\.timeout"),
        ({"phone_number_id": "1", "phone_number": "typo"}, "phone_number"),
    ],
)
def test_settings_malformed_options_name_the_field(options: dict[str, Any], needle: str) -> None:
    config = ChannelConfig(
        channel_id="wa:1",
        provider="whatsapp",
        credentials={"token": "T", "app_secret": "A", "verify_token": "V"},
        options=options,
    )
    with pytest.raises(FatalError, match=needle):
        WhatsAppSettings.from_config(config)


# --- requests -------------------------------------------------------------------------


def test_text_request_has_the_path_the_bearer_token_and_the_body() -> None:
    request = core.build_send_request(settings(), text("hi", reply_to="wamid.PREV"))
    assert request.method == "POST"
    assert request.url == "https://graph.example/v21.0/1234567890/messages"
    assert request.headers == {"Authorization": "Bearer EAAG-token"}
    assert "EAAG-token" not in repr(request)
    assert request.json == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "15551230000",
        "type": "text",
        "text": {"body": "hi", "preview_url": False},
        "context": {"message_id": "wamid.PREV"},
    }


@pytest.mark.parametrize("kind", list(MediaKind))
def test_media_goes_by_link_with_caption(kind: MediaKind) -> None:
    caption = None if kind is MediaKind.AUDIO else "look"
    media = Media(kind=kind, url="https://cdn.example/f", caption=caption, filename="f.pdf")
    body = core.message_payload(OutboundMessage(peer="1", idempotency_key="k", media=media))
    assert body["type"] == kind.value
    expected: dict[str, Any] = {"link": "https://cdn.example/f"}
    if caption:
        expected["caption"] = caption
    if kind is MediaKind.DOCUMENT:
        expected["filename"] = "f.pdf"
    assert body[kind.value] == expected


def test_audio_with_caption_is_refused_before_sending() -> None:
    media = Media(kind=MediaKind.AUDIO, url="https://cdn.example/a.ogg", caption="no")
    with pytest.raises(PermanentSendError, match="audio"):
        core.message_payload(OutboundMessage(peer="1", idempotency_key="k", media=media))


def test_template_carries_name_language_and_components() -> None:
    components = ({"type": "body", "parameters": [{"type": "text", "text": "Ada"}]},)
    msg = OutboundMessage(
        peer="1",
        idempotency_key="k",
        template=Template(name="hello_world", language="en_US", components=components),
    )
    assert core.message_payload(msg)["template"] == {
        "name": "hello_world",
        "language": {"code": "en_US"},
        "components": [dict(components[0])],
    }
    bare = OutboundMessage(
        peer="1", idempotency_key="k", template=Template(name="t", language="de")
    )
    assert core.message_payload(bare)["template"] == {"name": "t", "language": {"code": "de"}}


def test_text_over_4096_characters_is_too_long_before_any_request() -> None:
    assert core.message_payload(text("x" * 4096))["text"]["body"] == "x" * 4096
    with pytest.raises(MessageTooLong, match="4097 characters exceeds WhatsApp's 4096") as info:
        core.build_send_request(settings(), text("x" * 4097))
    assert info.value.peer == "15551230000"


def test_phone_number_request_is_a_get_on_the_number() -> None:
    request = core.build_phone_number_request(settings())
    assert request.method == "GET"
    assert request.url.startswith("https://graph.example/v21.0/1234567890?fields=")


# --- responses and errors -------------------------------------------------------------


def graph_error(code: int, message: str = "", details: str = "", **extra: Any) -> bytes:
    error: dict[str, Any] = {"message": message, "type": "OAuthException", "code": code}
    error["error_data"] = {"messaging_product": "whatsapp", "details": details}
    error["fbtrace_id"] = "Atrace"
    error.update(extra)
    return json.dumps({"error": error}).encode()


def test_a_success_gives_the_message_id() -> None:
    body = json.dumps(
        {
            "messaging_product": "whatsapp",
            "contacts": [{"input": "15551230000", "wa_id": "15551230000"}],
            "messages": [{"id": "wamid.ABC"}],
        }
    ).encode()
    result = core.parse_send_response(200, {}, body, peer="15551230000")
    assert result == SendResult(platform_message_id="wamid.ABC", peer="15551230000")


def test_a_success_without_an_id_is_transient() -> None:
    with pytest.raises(TransientError, match=r"no messages\[0\]\.id"):
        core.parse_send_response(200, {}, b'{"messages": []}', peer="1")


@pytest.mark.parametrize(
    ("status", "code", "message", "expected"),
    [
        (400, 131047, "(#131047) Re-engagement message", OutsideWindow),
        (400, 131026, "(#131026) Message Undeliverable", BadRecipient),
        (403, 368, "(#368) Temporarily blocked for policies violations", Banned),
        (401, 190, "Invalid OAuth access token", AuthenticationFailed),
        (401, 12345, "unknown code but 401", AuthenticationFailed),
        (403, 10, "(#10) Permission denied", MissingPermissions),
        (400, 100, "(#100) Invalid parameter", PermanentSendError),
        (500, 131000, "(#131000) Something went wrong", TransientError),
        (503, 131016, "(#131016) Service unavailable", TransientError),
        (502, 99999, "gateway", TransientError),
    ],
)
def test_graph_error_codes_map_into_the_tree(
    status: int, code: int, message: str, expected: type[ProviderError]
) -> None:
    error = core.map_error(status, {}, graph_error(code, message), peer="1555")
    assert type(error) is expected
    assert f"code {code}" in str(error) and "Atrace" in str(error)
    if isinstance(error, PermanentSendError):
        assert error.peer == "1555"


def test_code_100_about_length_is_message_too_long() -> None:
    body = graph_error(
        100, "(#100) Invalid parameter", "Param text['body'] must be at most 4096 characters long."
    )
    assert isinstance(core.map_error(400, {}, body, peer="1"), MessageTooLong)


@pytest.mark.parametrize(
    ("code", "scope", "retry_after", "peer"),
    [
        (130429, RateLimitScope.CHANNEL, core.THROUGHPUT_RETRY_AFTER, None),
        (131056, RateLimitScope.PEER, core.PAIR_RETRY_AFTER, "1555"),
        (4, RateLimitScope.GLOBAL, core.APP_RETRY_AFTER, None),
        (80007, RateLimitScope.CHANNEL, core.APP_RETRY_AFTER, None),
    ],
)
def test_rate_limits_get_a_scope_and_a_documented_default_wait(
    code: int, scope: RateLimitScope, retry_after: float, peer: str | None
) -> None:
    error = core.map_error(400, {}, graph_error(code), peer="1555")
    assert isinstance(error, RateLimited)
    assert (error.scope, error.retry_after, error.peer) == (scope, retry_after, peer)


def test_server_guidance_overrides_the_default_wait() -> None:
    error = core.map_error(429, {"Retry-After": "2.5"}, graph_error(4), peer=None)
    assert isinstance(error, RateLimited) and error.retry_after == 2.5
    usage = json.dumps({"102": [{"type": "whatsapp", "estimated_time_to_regain_access": 3}]})
    error = core.map_error(400, {"X-Business-Use-Case-Usage": usage}, graph_error(80007))
    assert isinstance(error, RateLimited) and error.retry_after == 180.0


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (401, AuthenticationFailed),
        (429, RateLimited),
        (503, TransientError),
        (404, PermanentSendError),
    ],
)
def test_non_graph_bodies_map_by_status(status: int, expected: type[ProviderError]) -> None:
    assert type(core.map_error(status, {}, b"<html>proxy</html>")) is expected


def test_phone_number_check_turns_send_refusals_into_fatal() -> None:
    body = graph_error(100, "(#100) Unsupported get request", subcode=33)
    with pytest.raises(FatalError, match="phone_number_id"):
        core.parse_phone_number_response(400, {}, body)
    with pytest.raises(AuthenticationFailed):
        core.parse_phone_number_response(401, {}, graph_error(190))
    assert core.parse_phone_number_response(200, {}, b'{"id": "1"}') == {"id": "1"}


# --- webhook: verification ------------------------------------------------------------


def test_verification_echoes_the_challenge_for_the_right_token() -> None:
    query = {"hub.mode": "subscribe", "hub.verify_token": VERIFY, "hub.challenge": "1158201444"}
    outcome = webhook.verify_subscription(query, VERIFY)
    assert (outcome.status, outcome.body, outcome.content_type) == (
        200,
        b"1158201444",
        "text/plain",
    )


@pytest.mark.parametrize(
    "query",
    [
        {"hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "1"},
        {"hub.mode": "unsubscribe", "hub.verify_token": VERIFY, "hub.challenge": "1"},
        {"hub.mode": "subscribe", "hub.challenge": "1"},
        {"hub.mode": "subscribe", "hub.verify_token": VERIFY},
        {},
    ],
)
def test_verification_refuses_anything_else(query: dict[str, str]) -> None:
    outcome = webhook.verify_subscription(query, VERIFY)
    assert outcome.status == 403 and b"1" not in outcome.body


# --- webhook: signatures --------------------------------------------------------------


BODY = b'{"object":"whatsapp_business_account","entry":[]}'


def test_signature_test_vector() -> None:
    expected = "sha256=" + hmac.new(SECRET.encode(), BODY, hashlib.sha256).hexdigest()
    assert webhook.sign(SECRET, BODY) == expected
    # A fixed vector, so a change of algorithm or encoding cannot go unnoticed.
    assert webhook.sign("key", b"The quick brown fox jumps over the lazy dog") == (
        "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
    )
    assert webhook.verify_signature(SECRET, {"X-Hub-Signature-256": expected}, BODY)
    assert webhook.verify_signature(
        SECRET, {"x-hub-signature-256": expected.upper().replace("SHA256=", "sha256=")}, BODY
    )


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({"X-Hub-Signature-256": webhook.sign(SECRET, BODY)}, BODY + b" "),
        ({"X-Hub-Signature-256": webhook.sign(SECRET, BODY)}, BODY.replace(b"[]", b"[{}]")),
        ({"X-Hub-Signature-256": webhook.sign("other-secret", BODY)}, BODY),
        ({"X-Hub-Signature-256": webhook.sign(SECRET, BODY).removeprefix("sha256=")}, BODY),
        ({"X-Hub-Signature": "sha1=" + hmac.new(SECRET.encode(), BODY, "sha1").hexdigest()}, BODY),
        ({}, BODY),
    ],
    ids=["trailing-space", "tampered", "wrong-secret", "no-prefix", "sha1-only", "missing"],
)
def test_tampered_or_unsigned_bodies_are_refused(headers: dict[str, str], body: bytes) -> None:
    assert not webhook.verify_signature(SECRET, headers, body)
    outcome = webhook.handle_webhook(
        "POST", {}, headers, body, app_secret=SECRET, verify_token=VERIFY, channel_id="wa:main"
    )
    assert outcome.status == 403 and outcome.events == ()


# --- webhook: parsing -----------------------------------------------------------------


def notification(value: dict[str, Any], *, number: str = "1234567890") -> bytes:
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550001111", "phone_number_id": number},
        **value,
    }
    return json.dumps(
        {
            "object": "whatsapp_business_account",
            "entry": [{"id": "WABA", "changes": [{"value": value, "field": "messages"}]}],
        }
    ).encode()


def signed_post(body: bytes, **kw: Any) -> webhook.WebhookOutcome:
    return webhook.handle_webhook(
        "POST",
        {},
        {"X-Hub-Signature-256": webhook.sign(SECRET, body)},
        body,
        app_secret=SECRET,
        verify_token=VERIFY,
        channel_id="wa:main",
        **kw,
    )


def test_a_text_message_becomes_an_inbound_message() -> None:
    body = notification(
        {
            "contacts": [{"profile": {"name": "Ada"}, "wa_id": "16505551234"}],
            "messages": [
                {
                    "from": "16505551234",
                    "id": "wamid.IN1",
                    "timestamp": "1700000000",
                    "type": "text",
                    "text": {"body": "hi there"},
                    "context": {"from": "15550001111", "id": "wamid.OUT0"},
                }
            ],
        }
    )
    outcome = signed_post(body, phone_number_id="1234567890")
    assert outcome.status == 200
    assert outcome.events == (
        InboundMessage(
            channel_id="wa:main",
            platform_message_id="wamid.IN1",
            peer="16505551234",
            sender="16505551234",
            text="hi there",
            reply_to="wamid.OUT0",
            timestamp=1700000000.0,
            metadata={"type": "text", "profile_name": "Ada"},
        ),
    )


def test_inbound_media_points_at_the_graph_media_object() -> None:
    body = notification(
        {
            "messages": [
                {
                    "from": "1",
                    "id": "wamid.IMG",
                    "timestamp": "1",
                    "type": "image",
                    "image": {
                        "id": "MEDIA9",
                        "mime_type": "image/jpeg",
                        "sha256": "h",
                        "caption": "cat",
                    },
                }
            ]
        }
    )
    (event,) = webhook.parse_notification(body, channel_id="c", media_root="https://g/v21.0/")
    assert isinstance(event, InboundMessage)
    assert event.media == Media(kind=MediaKind.IMAGE, url="https://g/v21.0/MEDIA9", caption="cat")
    assert event.text is None
    assert event.metadata["media_id"] == "MEDIA9"


def test_button_and_interactive_replies_carry_their_text() -> None:
    body = notification(
        {
            "messages": [
                {
                    "from": "1",
                    "id": "a",
                    "type": "button",
                    "button": {"text": "Yes", "payload": "Y"},
                },
                {
                    "from": "1",
                    "id": "b",
                    "type": "interactive",
                    "interactive": {
                        "type": "list_reply",
                        "list_reply": {"id": "x", "title": "Blue"},
                    },
                },
                {"from": "1", "id": "c", "type": "sticker", "sticker": {"id": "S"}},
            ]
        }
    )
    events = webhook.parse_notification(body, channel_id="c")
    assert [(e.text, e.metadata["type"]) for e in events if isinstance(e, InboundMessage)] == [
        ("Yes", "button"),
        ("Blue", "interactive"),
        (None, "sticker"),
    ]


def test_statuses_are_emitted_as_they_come_with_errors_on_failed() -> None:
    statuses = [
        {"id": "wamid.O", "status": "read", "timestamp": "3", "recipient_id": "1555"},
        {"id": "wamid.O", "status": "sent", "timestamp": "1", "recipient_id": "1555"},
        {"id": "wamid.O", "status": "delivered", "timestamp": "2", "recipient_id": "1555"},
        {"id": "wamid.O", "status": "deleted", "timestamp": "4", "recipient_id": "1555"},
        {
            "id": "wamid.P",
            "status": "failed",
            "timestamp": "5",
            "recipient_id": "1555",
            "errors": [
                {
                    "code": 131047,
                    "title": "Re-engagement message",
                    "error_data": {"details": "more than 24 hours"},
                }
            ],
        },
    ]
    events = webhook.parse_notification(notification({"statuses": statuses}), channel_id="c")
    assert all(isinstance(e, DeliveryReceipt) for e in events)
    receipts = [e for e in events if isinstance(e, DeliveryReceipt)]
    assert [r.status for r in receipts] == [
        ReceiptStatus.READ,
        ReceiptStatus.SENT,
        ReceiptStatus.DELIVERED,
        ReceiptStatus.FAILED,
    ]
    assert receipts[0].peer == "1555" and receipts[0].timestamp == 3.0
    assert receipts[3].error == "131047 Re-engagement message: more than 24 hours"


def test_other_numbers_and_other_fields_are_skipped() -> None:
    other = notification(
        {"messages": [{"from": "1", "id": "x", "type": "text", "text": {"body": "hi"}}]},
        number="999",
    )
    assert signed_post(other, phone_number_id="1234567890").events == ()
    assert len(webhook.parse_notification(other, channel_id="c")) == 1
    account = json.dumps(
        {
            "object": "whatsapp_business_account",
            "entry": [
                {"id": "W", "changes": [{"field": "account_update", "value": {"event": "x"}}]}
            ],
        }
    ).encode()
    assert signed_post(account).events == ()


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"not json", b"not JSON"),
        (b'{"object": "page", "entry": []}', b"'page'"),
        (b'{"entry": []}', b"$.object"),
        (b"[" * 50_000, b"nests more than the 64 levels allowed"),
    ],
)
def test_signed_but_malformed_bodies_get_400_naming_the_problem(body: bytes, needle: bytes) -> None:
    outcome = signed_post(body)
    assert outcome.status == 400 and outcome.events == ()
    assert needle in outcome.body


GOOD: Final = {"from": "1", "id": "wamid.GOOD", "type": "text", "text": {"body": "kept"}}


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ({"messages": [{"from": "1", "type": "text"}, GOOD]}, "messages[0].id"),
        ({"messages": [{"from": "1", "id": None, "text": {"body": "x"}}, GOOD]}, "messages[0].id"),
        ({"messages": [{"from": 5, "id": "n", "text": {"body": "x"}}, GOOD]}, "messages[0].from"),
        (
            {"messages": [GOOD, {"from": "1", "id": "t", "text": {"body": None}}]},
            "messages[1].text",
        ),
        ({"messages": ["junk", GOOD]}, "messages[0]"),
        ({"messages": [{"from": None, "id": "x", "text": {"body": "?"}}, GOOD]}, "no sender"),
        ({"messages": [GOOD], "statuses": [{"id": None, "status": "read"}]}, "statuses[0].id"),
        ({"messages": [GOOD], "contacts": [{"wa_id": 7}]}, "contacts[0].wa_id"),
    ],
    ids=[
        "no-id",
        "null-id",
        "number-from",
        "null-body",
        "not-object",
        "nobody",
        "status",
        "contact",
    ],
)
def test_a_malformed_item_is_dropped_and_named_and_the_rest_kept(
    value: dict[str, Any], needle: str
) -> None:
    """Loose coercion made ``"id": null`` the message id "None" and ``"from": 5`` a sender "5"."""
    outcome = signed_post(notification(value))
    assert outcome.status == 200
    texts = [e.text for e in outcome.events if isinstance(e, InboundMessage)]
    assert texts == ["kept"]
    assert all(
        isinstance(e, InboundMessage) or e.platform_message_id != "None" for e in outcome.events
    )
    (problem,) = outcome.dropped
    assert needle in problem and "$.entry[0].changes[0].value." in problem


def test_a_malformed_change_is_dropped_and_the_other_changes_kept() -> None:
    good = json.loads(notification({"messages": [GOOD]}))["entry"][0]["changes"][0]
    bad = {"field": "messages", "value": {"metadata": None}}
    entry = {"id": "WABA", "changes": [bad, good]}
    body = json.dumps({"object": "whatsapp_business_account", "entry": [entry]}).encode()
    outcome = signed_post(body)
    assert outcome.status == 200
    assert [e.platform_message_id for e in outcome.events] == ["wamid.GOOD"]
    (problem,) = outcome.dropped
    assert "$.entry[0].changes[0].value" in problem


def test_other_methods_are_not_allowed() -> None:
    outcome = webhook.handle_webhook(
        "PUT", {}, {}, b"", app_secret=SECRET, verify_token=VERIFY, channel_id="c"
    )
    assert outcome.status == 405


def test_the_package_exports_exactly_its_all() -> None:
    import types

    import providers.whatsapp as package

    public = {
        name
        for name, value in vars(package).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == set(package.__all__)
    assert "WhatsAppProvider" in package.__all__
