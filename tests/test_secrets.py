"""Secrets stay in the process: reprs, HTTP answers, logs, ``switchboard check``.

The ops server is the real hypercorn on 127.0.0.1 in front of the stand-in
node of :mod:`tests.test_ops_http`; logs go through the node's real handler;
``check`` runs as a subprocess.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

import httpx
import pytest
import trio

from actors import ChannelStatus, SendFailed
from providers.base import ChannelConfig
from providers.masking import mask_url, option_secrets, url_secrets
from runtime.config.model import ChannelSpec, LoggingConfig, NodeConfig, ProviderDefaults
from runtime.ops import serve_ops
from runtime.telemetry import configure_logging
from runtime.telemetry.redaction import Redactor
from tests.test_ops_http import API_TOKEN, CEILING, FakeNode, snapshot

ROOT: Final = Path(__file__).resolve().parent.parent
HOOK_SECRET: Final = "hook-secret-5f1e2d"
URL_PASSWORD: Final = "url-password-77aa"
QUERY_TOKEN: Final = "query-token-31c9"
META_TOKEN: Final = "EAAGm0PX4ZCpsBAKZCZBqZA1wZDZD9xY2"
BEARER: Final = {"Authorization": f"Bearer {API_TOKEN}"}
SECRETS: Final = (HOOK_SECRET, URL_PASSWORD, QUERY_TOKEN, META_TOKEN)


def leaky_spec() -> ChannelSpec:
    return ChannelSpec(
        id="tg-1",
        provider="telegram",
        credentials={"token": "123456:" + "B" * 35},
        base_url=f"https://bot:{URL_PASSWORD}@api.example/?access_token={QUERY_TOKEN}&v=2",
        options={"mode": "webhook", "webhook_secret": HOOK_SECRET, "nested": {"api_key": "k-9a"}},
    )


# --- reprs and the config's list of secrets ---------------------------------------------------


def test_reprs_hide_secret_options_and_url_credentials() -> None:
    spec = leaky_spec()
    config = NodeConfig(
        channels=[spec], providers={"telegram": ProviderDefaults(options=dict(spec.options))}
    )
    channel = ChannelConfig(
        channel_id="tg-1",
        provider="telegram",
        credentials=spec.credentials,
        base_url=spec.base_url,
        options=spec.options,
    )
    for shown in (repr(spec), repr(config), repr(channel), str(config)):
        for secret in (*SECRETS, "k-9a", spec.credentials["token"]):
            assert secret not in shown
    assert "'mode': 'webhook'" in repr(channel)  # what is not secret still shows
    assert "https://***@api.example/?access_token=***&v=2" in repr(spec)
    assert {HOOK_SECRET, URL_PASSWORD, QUERY_TOKEN, "k-9a"} <= set(config.secrets())


def test_a_url_refused_by_validation_is_named_without_its_credentials() -> None:
    with pytest.raises(ValueError, match=r"got 'ftp://\*\*\*@h/'") as caught:
        ChannelSpec(id="x", provider="telegram", base_url=f"ftp://u:{URL_PASSWORD}@h/")
    assert URL_PASSWORD not in str(caught.value)


def test_masking_keeps_what_is_not_a_credential() -> None:
    assert mask_url("wss://gateway.discord.gg/?v=10&encoding=json") == (
        "wss://gateway.discord.gg/?v=10&encoding=json"
    )
    found = url_secrets("https://u:p%40ss@h/?sig=abcd&page=2")
    assert set(found) == {"u:p%40ss", "p@ss", "p%40ss", "abcd"}
    assert option_secrets({"max_tokens": 5, "intents": "all", "token_url": "x"}) == ["x"]


# --- the scrubber's credential shapes ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        (f"upstream said: Authorization: Bearer {META_TOKEN}", "Authorization: Bearer ***"),
        (f"401 for {META_TOKEN}", "401 for ***"),
        ("GET https://api.telegram.org/bot123456:" + "C" * 35 + "/getMe", "/bot***/getMe"),
        ("token 123456:" + "D" * 35 + " refused", "token *** refused"),
        (f"connect to redis://:{URL_PASSWORD}@cache:6379/0 failed", "redis://***@cache"),
        (f"GET /v?access_token={QUERY_TOKEN}&x=1", "access_token=***&x=1"),
    ],
)
def test_credential_shapes_are_scrubbed_without_being_configured(text: str, kept: str) -> None:
    scrubbed = Redactor().scrub(text)
    assert kept in scrubbed
    for secret in (META_TOKEN, URL_PASSWORD, QUERY_TOKEN, "C" * 35, "D" * 35):
        assert secret not in scrubbed


# --- over HTTP --------------------------------------------------------------------------------


@asynccontextmanager
async def serving_with_secrets(node: FakeNode) -> AsyncIterator[httpx.AsyncClient]:
    async with trio.open_nursery() as nursery:
        url = await nursery.start(
            functools.partial(
                serve_ops,
                node,
                host="127.0.0.1",
                port=0,
                api_token=API_TOKEN,
                secrets=[HOOK_SECRET],
            )
        )
        async with httpx.AsyncClient(base_url=url) as client:
            yield client
        nursery.cancel_scope.cancel()


def leaky_node() -> FakeNode:
    node = FakeNode()
    echoed = f"403 Forbidden: <pre>Authorization: Bearer {META_TOKEN}</pre>"
    node.snapshots = [
        snapshot("wa-1", ChannelStatus.BACKING_OFF, provider="whatsapp", last_error=echoed),
        snapshot("tg-1", ChannelStatus.FAILED, last_error=f"bad secret {HOOK_SECRET}"),
        snapshot("tg-2", ChannelStatus.CONNECTED),
    ]
    return node


async def test_public_health_is_status_and_counts_and_the_detail_needs_the_token() -> None:
    with trio.fail_after(CEILING):
        async with serving_with_secrets(leaky_node()) as client:
            public = await client.get("/health")
            assert public.status_code == 200
            report = public.json()
            assert report["status"] == "degraded"
            assert report["problem_count"] == 2
            assert "problems" not in report
            for hidden in ("wa-1", "tg-1", "acme", *SECRETS):
                assert hidden not in public.text

            assert (await client.get("/health/detail")).status_code == 401
            wrong = {"Authorization": "Bearer nope"}
            assert (await client.get("/health/detail", headers=wrong)).status_code == 401
            detail = await client.get("/health/detail", headers=BEARER)
            assert detail.status_code == 200
            reasons = {p["channel"]: p["reason"] for p in detail.json()["problems"]}
            assert reasons == {
                "tg-1": "failed: bad secret ***",
                "wa-1": "backing_off: 403 Forbidden: <pre>Authorization: Bearer ***</pre>",
            }
            metrics = await client.get("/metrics")
            for secret in (*SECRETS, API_TOKEN):
                assert secret not in metrics.text
                assert secret not in detail.text


async def test_a_send_error_echoing_credentials_is_scrubbed() -> None:
    node = leaky_node()
    node.send_error = SendFailed(
        f"upstream echoed Authorization: Bearer {META_TOKEN} ({HOOK_SECRET})"
    )
    message = {"peer": "42", "idempotency_key": "k-1", "text": "hi"}
    with trio.fail_after(CEILING):
        async with serving_with_secrets(node) as client:
            answer = await client.post("/v1/channels/tg-1/messages", json=message, headers=BEARER)
    assert answer.status_code == 503
    assert META_TOKEN not in answer.text and HOOK_SECRET not in answer.text
    assert "Bearer ***" in answer.json()["message"]


# --- logs -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["asyncpg.pool", "redis.connection", "trio_asyncio"])
def test_third_party_loggers_go_through_our_formatter_and_scrubber(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    stream = io.StringIO()
    root_seen: list[logging.LogRecord] = []

    class Root(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            root_seen.append(record)

    root = Root()
    logging.getLogger().addHandler(root)
    try:
        with configure_logging(
            LoggingConfig(format="json"), node_id="n1", secrets=[URL_PASSWORD], stream=stream
        ):
            logging.getLogger(name).warning(
                "connection to postgresql://app:%s@db/x lost; Bearer %s", URL_PASSWORD, META_TOKEN
            )
            logging.getLogger(name).info("below WARNING: not written")
    finally:
        logging.getLogger().removeHandler(root)
    (line,) = stream.getvalue().splitlines()
    record = json.loads(line)
    assert record["log"]["logger"] == name
    assert record["service"]["node"]["name"] == "n1"
    assert URL_PASSWORD not in line and META_TOKEN not in line
    assert root_seen == []  # not also handed, unscrubbed, to the embedding program's root


# --- switchboard check ------------------------------------------------------------------------


def test_check_never_prints_a_secret(tmp_path: Path) -> None:
    path = tmp_path / "leaky.toml"
    path.write_text(
        f"""
[node]
id = "leaky"

[ops]
api_token = "${{env:SB_LEAKY_API}}"

[[channels]]
id = "tg-1"
provider = "telegram"
credentials = {{ token = "${{env:SB_LEAKY_TG}}" }}
base_url = "https://bot:{URL_PASSWORD}@api.example/?access_token={QUERY_TOKEN}"

[channels.options]
mode = "webhook"
webhook_url = "https://h.example/hook"
webhook_secret = "{HOOK_SECRET}"
"""
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SB_LEAKY_API": "api-token-leaky-9",
        "SB_LEAKY_TG": "123456:" + "E" * 35,
    }
    result = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "check", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode in (0, 2), output
    assert "Traceback" not in output
    for secret in (*SECRETS, "api-token-leaky-9", "E" * 35):
        assert secret not in output


class LetterNode(FakeNode):
    """A node with one dead letter whose reason echoes a credential."""

    async def dead_letters(self, **where: object) -> list[object]:
        from actors.channel.durable import DeadLetterRecord
        from providers.base import OutboundMessage
        from runtime.store.durable import StoredDeadLetter

        await trio.lowlevel.checkpoint()
        record = DeadLetterRecord(
            id=1,
            message=OutboundMessage(peer="42", idempotency_key="k-1", text="hi"),
            reason=f"403 from upstream: Authorization: Bearer {META_TOKEN}; secret {HOOK_SECRET}",
            error_type="PermanentSendError",
            attempts=1,
            at=0.0,
        )
        return [StoredDeadLetter(channel_id="wa-1", tenant="acme", letter=record)]


async def test_a_dead_letters_reason_is_scrubbed() -> None:
    with trio.fail_after(CEILING):
        async with serving_with_secrets(LetterNode()) as client:
            listed = await client.get("/v1/dead-letters", headers=BEARER)
    assert listed.status_code == 200, listed.text
    (letter,) = listed.json()["dead_letters"]
    assert letter["reason"] == "403 from upstream: Authorization: Bearer ***; secret ***"
    assert META_TOKEN not in listed.text and HOOK_SECRET not in listed.text


async def test_an_unknown_path_with_a_credential_in_it_is_not_echoed() -> None:
    token = "123456:" + "F" * 35
    with trio.fail_after(CEILING):
        async with serving_with_secrets(FakeNode()) as client:
            answer = await client.get(f"/bot{token}/getMe")
    assert answer.status_code == 404
    assert token not in answer.text and "/bot***/getMe" in answer.json()["message"]
