"""``python -m bench.http_bare send``: the bare httpx client makes the providers' sends.

The client runs as the channels scenario runs it, a fresh process, against
an in-process emulator with a tiny load. The figures (CPU, latency) are
measured, not asserted; these check the account (every send acked, or
counted as an error by the platform's code) and that its requests are the
ones the Telegram and WhatsApp providers build for the same message: the
same URL, JSON body and credentials.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Final

import trio

from bench.http_bare import PLATFORMS
from providers.base import OutboundMessage, Template
from providers.emulators.base import Emulator, open_emulator
from providers.emulators.telegram import TelegramEmulator
from providers.emulators.telegram.model import TOKEN_PATTERN
from providers.emulators.whatsapp import WhatsAppEmulator
from providers.telegram import core as telegram
from providers.whatsapp import core as whatsapp

ROOT: Final = Path(__file__).resolve().parent.parent
HANG_CEILING: Final = 120.0  # seconds; a tiny run takes a few, more on a loaded machine
BASE: Final = "http://127.0.0.1:9"
FIELDS: Final = {
    "client",
    "provider",
    "connections",
    "window",
    "workers",
    "rate",
    "duration",
    "text_size",
    "scheduled",
    "acked",
    "errors",
    "unanswered",
    "cpu_seconds",
    "cpu_per_message",
    "p50",
    "p90",
    "p99",
    "elapsed",
}


async def _send(emulator: Emulator, provider: str, *args: str) -> list[dict[str, Any]]:
    with trio.fail_after(HANG_CEILING):
        async with open_emulator(emulator) as base:
            command = [sys.executable, "-m", "bench.http_bare", "send", base]
            command += ["--provider", provider, *args]
            proc = await trio.run_process(
                command, cwd=ROOT, capture_stdout=True, capture_stderr=True, check=False
            )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    return [json.loads(line) for line in proc.stdout.decode().splitlines()]


def _check_account(line: dict[str, Any], *, rate: float, duration: float) -> None:
    assert set(line) == FIELDS
    assert line["scheduled"] == int(rate * duration)
    assert line["acked"] + sum(line["errors"].values()) == line["scheduled"], line
    assert line["unanswered"] == 0
    assert 1 <= line["workers"] <= line["connections"] * line["window"]
    assert line["cpu_per_message"] == line["cpu_seconds"] / line["acked"]
    assert 0 < line["p50"] <= line["p90"] <= line["p99"]


# ---------------------------------------------------------------- the requests


def test_telegram_sends_are_the_providers_requests() -> None:
    bare = PLATFORMS["telegram"]
    for index, number in ((0, 0), (7, 1_000)):
        token = bare.token(index)
        assert TOKEN_PATTERN.fullmatch(token), token  # the emulator takes it for a bot token
        assert bare.send_url(BASE, index) == telegram.method_url(BASE, token, "sendMessage")
        message = OutboundMessage(peer=str(1_000 + number % 997), idempotency_key="k", text="hi")
        request = telegram.send_request(message)
        assert bare.body(number, "hi") == dict(request.params)
    assert bare.opening(BASE, 3) == ("POST", telegram.method_url(BASE, bare.token(3), "getMe"))


def test_whatsapp_sends_are_the_providers_requests() -> None:
    bare = PLATFORMS["whatsapp"]
    settings = whatsapp.WhatsAppSettings(
        channel_id="ch",
        phone_number_id=bare.number(4),
        token=bare.token(4),
        app_secret="secret",
        verify_token="verify",
        base_url=BASE,
    )
    # The channels bench sends WhatsApp a template (bench.rig.Rig.message).
    message = OutboundMessage(
        peer=f"15550{1_000 % 997:06d}",
        idempotency_key="k",
        template=Template(name="hello_world", language="en_US"),
    )
    request = whatsapp.build_send_request(settings, message)
    assert (request.method, request.url) == ("POST", bare.send_url(BASE, 4))
    assert dict(request.headers) == bare.client_headers(4)
    assert bare.body(1_000, "ignored") == request.json
    verify = whatsapp.build_phone_number_request(settings)
    assert (verify.method, verify.url) == bare.opening(BASE, 4)


# ---------------------------------------------------------------- against the emulators


async def test_telegram_every_send_is_acked_once_per_bot() -> None:
    emulator = TelegramEmulator()
    lines = await _send(
        emulator, "telegram", "--connections", "3", "--rates", "4,40", "--duration", "1.5",
        "--window", "2", "--text-size", "7",
    )  # fmt: skip
    assert [line["rate"] for line in lines] == [4.0, 40.0]
    for line in lines:
        _check_account(line, rate=line["rate"], duration=1.5)
        assert line["acked"] == line["scheduled"] and line["errors"] == {}, line
        assert (line["provider"], line["connections"], line["window"]) == ("telegram", 3, 2)
        assert line["client"].startswith("httpx")
    assert emulator.stats["method_getme"] == 3  # each client opens as a channel does
    sent = emulator.sent
    assert len(sent) == 6 + 60
    bots = {PLATFORMS["telegram"].token(i).split(":")[0] for i in range(3)}
    assert {str(m["bot_id"]) for m in sent} == bots
    assert {m["text"] for m in sent} == {"xxxxxxx"}
    assert {m["method"] for m in sent} == {"sendMessage"}
    assert {m["chat_id"] for m in sent} == {1_000 + i for i in range(60)}


async def test_telegram_refusals_are_counted_by_error_code() -> None:
    emulator = TelegramEmulator()
    await emulator.platform_fault({"kind": "unknown_chat", "chat_id": 1_001})
    await emulator.platform_fault({"kind": "block", "chat_id": 1_002})
    (line,) = await _send(
        emulator, "telegram", "--connections", "2", "--rates", "10", "--duration", "1"
    )
    _check_account(line, rate=10, duration=1)
    assert line["errors"] == {"400": 1, "403": 1}  # messages 1 and 2 of 10
    assert line["acked"] == 8


async def test_whatsapp_every_send_is_acked_with_each_numbers_token() -> None:
    bare = PLATFORMS["whatsapp"]
    # Only the bare clients' tokens and numbers exist: a request with the wrong
    # Authorization or URL would be refused, and counted as an error.
    emulator = WhatsAppEmulator(
        tokens={bare.token(i) for i in range(3)},
        phone_number_ids={bare.number(i) for i in range(3)},
    )
    (line,) = await _send(
        emulator, "whatsapp", "--connections", "3", "--rates", "30", "--duration", "1.5"
    )
    _check_account(line, rate=30, duration=1.5)
    assert line["acked"] == line["scheduled"] == 45 and line["errors"] == {}, line
    assert line["client"].startswith("httpx")
    sent = emulator.sent
    assert len(sent) == 45
    numbers = [bare.number(i % 3) for i in range(45)]
    assert sorted(m["phone_number_id"] for m in sent) == sorted(numbers)
    assert {m["body"]["type"] for m in sent} == {"template"}


async def test_whatsapp_refusals_are_counted_by_graph_error_code() -> None:
    emulator = WhatsAppEmulator()
    await emulator.platform_fault(
        {"kind": "fail_next", "code": 131026, "count": 2, "via": "response"}
    )
    (line,) = await _send(
        emulator, "whatsapp", "--connections", "2", "--rates", "10", "--duration", "1"
    )
    _check_account(line, rate=10, duration=1)
    assert line["errors"] == {"131026": 2}
    assert line["acked"] == 8


async def test_via_the_provider_the_same_load_goes_through_its_connections() -> None:
    # The step between the bare client and the node: the providers' own
    # Connection.send, same credentials and window, every send accepted.
    telegram_emulator, whatsapp_emulator = TelegramEmulator(), WhatsAppEmulator()
    args = ("--connections", "2", "--rates", "10", "--duration", "1", "--via", "provider")
    (tg,) = await _send(telegram_emulator, "telegram", *args)
    (wa,) = await _send(whatsapp_emulator, "whatsapp", *args)
    for line in (tg, wa):
        _check_account(line, rate=10, duration=1)
        assert line["acked"] == 10 and line["errors"] == {}, line
        assert "Connection.send" in line["client"]
    assert telegram_emulator.stats["method_getme"] == 2
    bots = {int(PLATFORMS["telegram"].token(i).split(":")[0]) for i in range(2)}
    assert {m["bot_id"] for m in telegram_emulator.sent} == bots
    assert {m["phone_number_id"] for m in whatsapp_emulator.sent} == {
        PLATFORMS["whatsapp"].number(i) for i in range(2)
    }
