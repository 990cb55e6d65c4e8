"""Hostile input at the node's HTTP edge: no body crashes a handler, none is parsed unbounded.

JSON bodies are bounded in size and nesting before they are parsed
(:mod:`providers.bounded_json`); the webhooks and the message API answer 400
(413 for size) with a clear message, never a 500 with a traceback. The server
is the real hypercorn on 127.0.0.1, and the webhook judges are the providers'
own sans-IO code.
"""

from __future__ import annotations

import logging
from typing import Any, Final

import pytest
import trio

from providers import bounded_json
from providers.telegram import SECRET_HEADER
from providers.telegram.webhook import MAX_UPDATE_BYTES, WebhookHandler
from providers.whatsapp import webhook as whatsapp_webhook
from runtime.ops import MAX_BODY
from runtime.view import WebhookTarget
from tests.test_ops_http import (
    API_TOKEN,
    CEILING,
    NUMBER_A,
    WA_SECRET,
    FakeNode,
    SignedHook,
    serving,
    signed,
)

DEEP: Final = b"[" * 50_000
BEARER: Final = {"Authorization": f"Bearer {API_TOKEN}"}
TG_SECRET: Final = "tg-hostile-secret"


# --- the bounded parser -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        b"[" * 50_000,
        b"{" * 50_000,
        b'{"a":' * 65 + b"1" + b"}" * 65,
        b"[" * 65 + b"]" * 65,
        b"[[]," * 70 + b"1" + b"]" * 70,  # siblings at every level: still 71 deep
        "[" * 65 + "]" * 65,  # str as well as bytes
    ],
)
def test_json_nested_past_the_limit_is_refused_before_parsing(text: bytes | str) -> None:
    with pytest.raises(bounded_json.JSONTooDeep, match="more than the 64 levels allowed"):
        bounded_json.loads(text)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (b"[" * 64 + b"]" * 64, eval("[" * 64 + "]" * 64)),
        (b'["' + b"[" * 1000 + b'"]', ["[" * 1000]),  # brackets in a string do not count
        (b'["\\"' + b"[" * 1000 + b'"]', ['"' + "[" * 1000]),  # nor after an escaped quote
        (b"[1," * 64 + b"1" + b"]" * 64, eval("[1," * 64 + "1" + "]" * 64)),
        (b'"plain"', "plain"),
    ],
)
def test_json_within_the_limit_parses_as_the_stdlib_does(text: bytes, value: Any) -> None:
    assert bounded_json.loads(text) == value


def test_json_over_the_size_limit_is_refused_and_bad_json_is_a_value_error() -> None:
    with pytest.raises(bounded_json.JSONTooLarge, match="11 bytes, more than the 10 allowed"):
        bounded_json.loads(b'"123456789"', max_bytes=10)
    with pytest.raises(ValueError, match="Expecting value"):
        bounded_json.loads(b"[[[[")  # unmatched, but shallow: the parser's own error
    with pytest.raises(bounded_json.JSONTooDeep):
        bounded_json.loads(b"]" + b"[" * 100)


# --- the providers' webhook judges ------------------------------------------------------------


def test_whatsapp_refuses_deep_and_oversized_notifications_without_crashing() -> None:
    outcome = whatsapp_webhook.handle_webhook(
        "POST", {}, signed(DEEP), DEEP, app_secret=WA_SECRET, verify_token="v", channel_id="wa"
    )
    assert outcome.status == 400
    assert b"nests more than the 64 levels allowed" in outcome.body
    big = b" " * (whatsapp_webhook.MAX_NOTIFICATION_BYTES + 1)
    outcome = whatsapp_webhook.handle_webhook(
        "POST", {}, {}, big, app_secret=WA_SECRET, verify_token="v", channel_id="wa"
    )
    assert outcome.status == 413  # before hashing, signed or not


def test_telegram_refuses_deep_and_oversized_updates_without_crashing() -> None:
    handler = WebhookHandler(channel_id="tg", secret=TG_SECRET)
    verdict = handler.handle({SECRET_HEADER: TG_SECRET}, DEEP)
    assert (verdict.status, verdict.update) == (400, None)
    assert "nests more than the 64 levels allowed" in verdict.reason
    verdict = handler.handle({SECRET_HEADER: TG_SECRET}, b" " * (MAX_UPDATE_BYTES + 1))
    assert verdict.status == 413


# --- over HTTP --------------------------------------------------------------------------------


class TelegramHook:
    """A Telegram webhook endpoint judged by the provider's own sans-IO handler."""

    def __init__(self) -> None:
        self.handler = WebhookHandler(channel_id="tg-1", secret=TG_SECRET)

    async def feed_webhook(self, headers: Any, body: bytes) -> int:
        await trio.lowlevel.checkpoint()
        return self.handler.handle(headers, body).status


class LetterNode(FakeNode):
    """A FakeNode with dead letters to replay (none)."""

    async def replay_dead_letters(self, channel_id: str, ids: Any) -> int:
        await trio.lowlevel.checkpoint()
        return 0


def hostile_node() -> FakeNode:
    node = LetterNode()
    hook = SignedHook("wa-a", NUMBER_A, WA_SECRET)
    node.targets["whatsapp"] = [
        WebhookTarget(channel_id="wa-a", options={"phone_number_id": NUMBER_A}, connection=hook)  # type: ignore[arg-type]
    ]
    node.targets["telegram"] = [
        WebhookTarget(channel_id="tg-1", options={}, connection=TelegramHook())  # type: ignore[arg-type]
    ]
    return node


DEEP_REQUESTS: Final = [
    ("/webhooks/whatsapp", {}),
    ("/webhooks/whatsapp", signed(DEEP)),
    ("/webhooks/whatsapp/wa-a", signed(DEEP)),
    ("/webhooks/telegram/tg-1", {SECRET_HEADER: TG_SECRET}),
    ("/v1/channels/tg-1/messages", BEARER),
    ("/v1/channels/tg-1/operations", BEARER),
    ("/v1/channels/tg-1/dead-letters/replay", BEARER),
]


@pytest.mark.parametrize(("path", "headers"), DEEP_REQUESTS)
async def test_deeply_nested_json_answers_400_and_logs_no_error(
    path: str, headers: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    node = hostile_node()
    with trio.fail_after(CEILING), caplog.at_level(logging.WARNING):
        async with serving(node, api_token=API_TOKEN) as (client, _):
            answer = await client.post(path, content=DEEP, headers=headers)
            assert answer.status_code == 400, answer.text
            if "telegram" not in path:  # Telegram's answer is the status phrase alone
                assert "64 levels" in answer.text
            assert (await client.get("/healthz")).status_code == 200
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert node.sent == []


async def test_a_nested_multipart_message_answers_400() -> None:
    files = {"message": (None, DEEP), "file": ("a.txt", b"x", "text/plain")}
    with trio.fail_after(CEILING):
        async with serving(hostile_node(), api_token=API_TOKEN) as (client, _):
            answer = await client.post("/v1/channels/tg-1/messages", files=files, headers=BEARER)
    assert answer.status_code == 400, answer.text
    assert "64 levels" in answer.text


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/webhooks/whatsapp", {}),
        ("/webhooks/whatsapp/wa-a", {}),
        ("/webhooks/telegram/tg-1", {SECRET_HEADER: TG_SECRET}),
        ("/v1/channels/tg-1/messages", BEARER),
        ("/v1/channels/tg-1/operations", BEARER),
    ],
)
async def test_an_oversized_body_answers_413(path: str, headers: dict[str, str]) -> None:
    with trio.fail_after(CEILING):
        async with serving(hostile_node(), api_token=API_TOKEN) as (client, _):
            answer = await client.post(path, content=b"[" * (MAX_BODY + 1), headers=headers)
    assert (answer.status_code, answer.json()["error"]) == (413, "PayloadTooLarge")
