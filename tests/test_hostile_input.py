"""Hostile input at the node's HTTP edge: no body crashes a handler, none is parsed unbounded.

JSON bodies are bounded in size and nesting before they are parsed
(:mod:`providers.bounded_json`); the webhooks and the message API answer 400
(413 for size) with a clear message, never a 500 with a traceback. The server
is the real hypercorn on 127.0.0.1, and the webhook judges are the providers'
own sans-IO code.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Final

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from providers import bounded_json
from providers.telegram import SECRET_HEADER
from providers.telegram.webhook import MAX_UPDATE_BYTES, WebhookHandler
from providers.whatsapp import webhook as whatsapp_webhook
from runtime.ops import MAX_BODY
from runtime.view import WebhookTarget
from runtime.webhooks import check_here
from tests.test_ops_http import (
    API_TOKEN,
    CEILING,
    NUMBER_A,
    NUMBER_B,
    WA_SECRET,
    FakeNode,
    SignedHook,
    metric,
    notification,
    rejected_total,
    serving,
    signed,
    whatsapp_config,
    whatsapp_rig,
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


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (b'{"peer": "a", "peer": "b"}', "peer"),
        (b'{"peer": "a", "text": "x", "peer" : "b"}', "peer"),  # a blank before the colon
        (b'{"media": {"kind": "image", "kind": "video"}}', "kind"),  # in a nested object
        (b'[{"a": 1}, {"b": 1, "b": 2}]', "b"),  # in an array
        (b'{"\\u0070eer": "a", "peer": "b"}', "peer"),  # the same key, spelt escaped
        ('{"tëxt": 1, "tëxt": 2}'.encode("utf-16"), "tëxt"),  # another encoding: exact too
        ('{"p": "a", "p": "b"}', "p"),  # str as well as bytes
    ],
)
def test_a_key_named_twice_is_refused_where_keys_must_be_unique(text: bytes, key: str) -> None:
    with pytest.raises(bounded_json.JSONDuplicateKey, match=r"names the key .* twice") as caught:
        bounded_json.loads(text, unique_keys=True)
    assert caught.value.key == key
    bounded_json.loads(text)  # (by default, as JSON allows: the last one wins)


@pytest.mark.parametrize(
    "text",
    [
        b'{"a": "b:", "c": ["d", ":", "e:f"], "g": {"a": 1}}',  # colons and keys in strings
        b'{"a\\"": 1, "a": 2, "\\\\": {"\\\\\\"": 3}}',  # escaped quotes and backslashes
        b'["a", ":", "b"]',
        b'"no:keys"',
        b'{"a":{"a":{"a":{}}}}',  # one name at several levels is no repeat
    ],
)
def test_unique_keys_accepts_what_repeats_no_key(text: bytes) -> None:
    assert bounded_json.loads(text, unique_keys=True) == json.loads(text)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(alphabet='ab:"\\ {}[],', max_size=3), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(_JSON, st.booleans())
def test_unique_keys_agrees_with_a_parser_that_sees_every_key(value: Any, spaced: bool) -> None:
    text = json.dumps(value, separators=(", ", " : ") if spaced else (",", ":"))
    assert bounded_json.loads(text, unique_keys=True) == value
    # The same text beside an object that repeats a key, and inside one: refused, by name.
    for doubled in (f'[{text}, {{"dup": 0, "dup": 1}}]', f'{{"dup": {text}, "dup": 1}}'):
        with pytest.raises(bounded_json.JSONDuplicateKey) as caught:
            bounded_json.loads(doubled, unique_keys=True)
        assert caught.value.key == "dup"


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


# A WhatsApp post is judged by its signature first: unsigned, it is 403 before its
# depth is looked at (tests/test_inbound_faults.py).
DEEP_REQUESTS: Final = [
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
    ("path", "body", "error"),
    [
        (
            "/v1/channels/tg-1/messages",
            b'{"peer": "a", "text": "hi", "peer": "b"}',
            "InvalidMessage",
        ),
        (
            "/v1/channels/tg-1/operations",
            b'{"op": "message", "peer": "a", "text": "hi", "text": "bye"}',
            "InvalidOperation",
        ),
        ("/v1/channels/tg-1/dead-letters/replay", b'{"ids": [1], "ids": [2]}', "InvalidBody"),
    ],
)
async def test_a_body_naming_a_key_twice_answers_400_and_sends_nothing(
    path: str, body: bytes, error: str
) -> None:
    node = hostile_node()
    with trio.fail_after(CEILING):
        async with serving(node, api_token=API_TOKEN) as (client, _):
            answer = await client.post(path, content=body, headers=BEARER)
    assert (answer.status_code, answer.json()["error"]) == (400, error), answer.text
    assert "twice" in answer.json()["message"]
    assert node.sent == []


async def test_a_multipart_message_naming_a_key_twice_answers_400() -> None:
    message = b'{"peer": "a", "media": {"kind": "image"}, "peer": "b"}'
    files = {"message": (None, message), "file": ("a.png", b"x", "image/png")}
    node = hostile_node()
    with trio.fail_after(CEILING):
        async with serving(node, api_token=API_TOKEN) as (client, _):
            answer = await client.post("/v1/channels/tg-1/messages", files=files, headers=BEARER)
    assert answer.status_code == 400, answer.text
    assert answer.json()["problems"][0]["path"] == "$.message"
    assert 'names the key "peer" twice' in answer.json()["message"]
    assert node.sent == []


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


# --- a flood of unsigned WhatsApp notifications ---------------------------------------------


class CountingHook(SignedHook):
    """A WhatsApp channel that counts its signature checks and webhook calls."""

    def __init__(self, channel_id: str, number: str, app_secret: str) -> None:
        super().__init__(channel_id, number, app_secret)
        self.webhook_signer = whatsapp_webhook.signer_id(app_secret)
        self.checks = 0
        self.calls = 0

    def check_post(self, signatures: whatsapp_webhook.PostSignatures) -> bool:
        self.checks += 1
        return signatures.signed_by(self.app_secret)

    async def handle_webhook(
        self, method: str, query: Any, headers: Any, body: bytes, **kwargs: Any
    ) -> tuple[int, bytes]:
        self.calls += 1
        return await super().handle_webhook(method, query, headers, body, **kwargs)


def counting_node(channels: int) -> tuple[FakeNode, list[CountingHook]]:
    """``channels`` numbers of one Meta app and one of another, all connected."""
    hooks = [CountingHook(f"wa-{i}", f"{1000 + i}", WA_SECRET) for i in range(channels)]
    hooks.append(CountingHook("wa-other", "9990", "the-other-apps-secret"))
    node = FakeNode()
    node.targets["whatsapp"] = [
        WebhookTarget(channel_id=h.channel_id, options={"phone_number_id": h.number}, connection=h)  # type: ignore[arg-type]
        for h in hooks
    ]
    return node, hooks


async def test_an_unsigned_flood_is_hashed_once_per_app_secret_and_probes_are_answered() -> None:
    """Numberless posts (which name no channel) used to be HMAC'd by every channel."""
    node, hooks = counting_node(60)
    padding = "x" * (1024 * 1024)
    body = json.dumps({"object": "whatsapp_business_account", "entry": [], "pad": padding})
    bogus = {"X-Hub-Signature-256": "sha256=" + "0" * 64}
    statuses: list[int] = []
    probes: list[int] = []
    with trio.fail_after(CEILING):
        async with serving(node) as (client, _):

            async def post(headers: dict[str, str]) -> None:
                answer = await client.post("/webhooks/whatsapp", content=body, headers=headers)
                statuses.append(answer.status_code)

            async def probe(done: trio.Event) -> None:
                while not done.is_set():
                    probes.append((await client.get("/healthz")).status_code)

            done = trio.Event()
            async with trio.open_nursery() as prober:
                prober.start_soon(probe, done)
                async with trio.open_nursery() as flood:
                    for i in range(8):
                        flood.start_soon(post, bogus if i % 2 else {})
                done.set()
            assert await rejected_total(client, "whatsapp", "signature") == 8

    assert statuses == [403] * 8
    # Four posts carried a well-formed (wrong) signature: each hashed once per app secret.
    assert sum(hook.checks for hook in hooks) == 4 * 2
    assert sum(hook.calls for hook in hooks) == 0  # no channel was handed a forgery
    assert probes and set(probes) == {200}
    assert hooks[0].events == []


async def test_a_signed_account_notification_is_judged_by_one_channel_of_its_app() -> None:
    node, hooks = counting_node(60)
    account = json.dumps({"object": "whatsapp_business_account", "entry": []}).encode()
    with trio.fail_after(CEILING):
        async with serving(node) as (client, _):
            for secret in (WA_SECRET, "the-other-apps-secret"):
                ack = await client.post(
                    "/webhooks/whatsapp", content=account, headers=signed(account, secret)
                )
                assert ack.status_code == 200
    assert sum(hook.checks for hook in hooks) == 2 * 2
    assert sum(hook.calls for hook in hooks) == 2  # one channel of the app that signed it
    assert hooks[-1].calls == 1


async def test_malformed_items_of_a_signed_notification_are_dropped_and_counted() -> None:
    good = json.loads(notification((NUMBER_A, "kept")))
    value = good["entry"][0]["changes"][0]["value"]
    value["messages"].insert(0, {"from": None, "id": None, "type": "text", "text": {"body": "x"}})
    value["statuses"] = [{"id": 5, "status": "read"}]
    body = json.dumps(good).encode()
    with trio.fail_after(CEILING):
        async with whatsapp_rig() as (rig, client):
            dropped = "switchboard_webhook_items_dropped_total"
            assert await metric(client, dropped, provider="whatsapp") == 0
            answer = await client.post("/webhooks/whatsapp", content=body, headers=signed(body))
            assert (answer.status_code, answer.text) == (200, "ok")
            assert await rig.next_text("wa-a") == "kept"
            assert await metric(client, dropped, provider="whatsapp") == 2


# --- one post naming many numbers: hashed once per app secret -------------------------------


@pytest.fixture
def hashes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the bodies HMAC'd with an app secret (``webhook.sign``), in order."""
    hashed: list[int] = []
    real = whatsapp_webhook.sign

    def counting(app_secret: str, body: bytes) -> str:
        hashed.append(len(body))
        return real(app_secret, body)

    monkeypatch.setattr(whatsapp_webhook, "sign", counting)
    return hashed


async def test_a_post_naming_several_numbers_is_hashed_once_per_app_secret(
    hashes: list[int],
) -> None:
    """The real connections of one app take their parts of one post, verified once at the edge.

    Before the verdict travelled with the post, the edge hashed it once and
    each chosen channel's ``handle_webhook`` hashed it again: 3 for 2 numbers.
    """
    body = notification((NUMBER_A, "for a"), (NUMBER_B, "for b"))
    with trio.fail_after(CEILING):
        async with whatsapp_rig() as (rig, client):
            answer = await client.post("/webhooks/whatsapp", content=body, headers=signed(body))
            assert (answer.status_code, answer.text) == (200, "ok")
            assert await rig.next_text("wa-a") == "for a"
            assert await rig.next_text("wa-b") == "for b"
            assert hashes == [len(body)]
            hashes.clear()
            # Wrongly signed: refused, hashed once, handed to no channel.
            forged = {**signed(body, "not-the-app-secret")}
            answer = await client.post("/webhooks/whatsapp", content=body, headers=forged)
            assert answer.status_code == 403
            assert hashes == [len(body)]
            # Unsigned: refused unhashed.
            answer = await client.post("/webhooks/whatsapp", content=body)
            assert answer.status_code == 403
            assert hashes == [len(body)]
            assert await rejected_total(client, "whatsapp", "signature") == 2


def test_a_channel_trusts_a_verdict_only_for_the_body_and_header_it_was_made_from(
    hashes: list[int],
) -> None:
    body = notification((NUMBER_A, "a"))
    good = whatsapp_webhook.PostSignatures(signed(body), body)
    assert good.signed_by(WA_SECRET) and good.signed_by(WA_SECRET)
    assert not good.signed_by("another-secret")
    assert good.hashed == 2 and len(hashes) == 2  # once per app secret
    assert "wa-app-secret" not in repr(good)

    def judge(headers: dict[str, str], payload: bytes) -> int:
        return whatsapp_webhook.handle_webhook(
            "POST",
            {},
            headers,
            payload,
            app_secret=WA_SECRET,
            verify_token="v",
            channel_id="wa-a",
            phone_number_id=NUMBER_A,
            signatures=good,
        ).status

    assert judge(signed(body), body) == 200
    assert len(hashes) == 2  # read, not hashed again
    other = notification((NUMBER_A, "forged"))
    assert judge(signed(body), other) == 403  # another body: checked on its own, refused
    assert judge(signed(body, "another-secret"), body) == 403  # another header: likewise
    assert len(hashes) == 4
    unsigned = whatsapp_webhook.PostSignatures({}, body)
    assert not unsigned.well_formed and not unsigned.signed_by(WA_SECRET)
    assert unsigned.hashed == 0


def test_check_here_shares_the_posts_verdicts_across_the_channels_it_names(
    hashes: list[int],
) -> None:
    """Channels that run on other nodes: checked here, once per app secret per post."""
    body = notification((NUMBER_A, "a"), (NUMBER_B, "b"))
    headers = signed(body)
    signatures = whatsapp_webhook.PostSignatures(headers, body)
    for channel_id, number in (("wa-a", NUMBER_A), ("wa-b", NUMBER_B)):
        config = whatsapp_config("http://127.0.0.1:9", channel_id, number)
        judged = check_here("whatsapp", config, "POST", {}, headers, body, signatures=signatures)
        assert judged is None  # signed: carried to its owner
    assert hashes == [len(body)]
    forged = signed(body, "not-the-app-secret")
    config = whatsapp_config("http://127.0.0.1:9", "wa-a", NUMBER_A)
    judged = check_here("whatsapp", config, "POST", {}, forged, body, signatures=signatures)
    assert judged is not None and judged.status == 403  # the verdict is not for this header
