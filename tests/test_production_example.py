"""The shipped ``config/production.example.toml``, run as a user would run it.

Its environment references are set, and only what must point at this
machine is changed, with ``--set``: the platforms' URLs (the emulators),
the database (the test PostgreSQL, in a schema of its own), the listen
address, and the profiler's server. Every channel must connect, receive
and send, and the node must drain and exit 0 on SIGTERM.

Real sockets, a real subprocess and real time; each wait polls a condition
under a hang ceiling.
"""

from __future__ import annotations

import http.server
import re
import secrets
import socket
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from providers import ChannelConfig, FatalError
from providers.emulators.base import open_emulator
from providers.registry import EMULATORS, load
from providers.whatsapp.core import WhatsAppSettings
from runtime.config.refs import walk
from tests.test_cli_run import poll, run_command, run_node, wait_health
from tests.test_store import PG_DSN, dropped_afterwards, new_schema

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "production.example.toml"
CEILING = 90.0  # seconds of real time; only a hang gets near it

ENV = {
    "SWITCHBOARD_PG_PASSWORD": "pg-password-unused",  # the DSN is overridden
    "SWITCHBOARD_OPS_TOKEN": "ops-" + secrets.token_hex(8),
    "ACME_DISCORD_TOKEN": "discord-" + secrets.token_hex(8),
    "ACME_TELEGRAM_TOKEN": "123456:" + secrets.token_urlsafe(26)[:35],
    "ACME_TELEGRAM_WEBHOOK_SECRET": "tg-" + secrets.token_hex(8),
    "ACME_WA_TOKEN": "wa-" + secrets.token_hex(8),
    "ACME_WA_APP_SECRET": "wa-app-" + secrets.token_hex(8),
    "ACME_WA_VERIFY_TOKEN": "wa-verify-" + secrets.token_hex(8),
    "GLOBEX_WS_TOKEN": "ws-" + secrets.token_hex(8),
}

# channel id -> (platform, what a user writes through the emulator, the peer to answer)
CHANNELS = {
    "acme-discord": ("discord", {"channel_id": "123", "content": "hello discord"}, "123"),
    "acme-telegram": ("telegram", {"chat_id": 42, "text": "hello telegram"}, "42"),
    "acme-whatsapp": (
        "whatsapp",
        {"from": "16505551234", "text": "hello whatsapp", "phone_number_id": "106540352242922"},
        "16505551234",
    ),
    "globex-chat": ("websocket", {"peer": "user-1", "text": "hello websocket"}, "user-1"),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def pyroscope() -> Iterator[str]:
    """Where the example's profiler uploads: a local server that answers 200."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_the_test_sets_every_reference_of_the_example() -> None:
    doc = tomllib.loads(EXAMPLE.read_text("utf-8"))
    names = {
        name
        for _, value in walk(doc)
        if isinstance(value, str)
        for name in re.findall(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)", value)
    }
    assert names == set(ENV)


async def test_check_refuses_a_whatsapp_base_url_with_a_version() -> None:
    code, _, err = await run_command(
        "check",
        str(EXAMPLE),
        "--set",
        "providers.whatsapp.base_url=https://graph.facebook.com/v21.0",
        env=ENV,
    )
    assert code == 2
    assert (
        'base_url ends in the Graph API version "v21.0", which the provider adds itself: write '
        '"https://graph.facebook.com" (the version is options.api_version, default "v21.0") '
        "@ providers.whatsapp.base_url"
    ) in err


async def test_the_production_example_connects_receives_sends_and_drains(pyroscope: str) -> None:
    emulators = {
        "discord": load(EMULATORS, "discord")(),
        "telegram": load(EMULATORS, "telegram")(),
        "whatsapp": load(EMULATORS, "whatsapp")(app_secret=ENV["ACME_WA_APP_SECRET"]),
        "websocket": load(EMULATORS, "websocket")(),
    }
    port = _free_port()
    ops = f"http://127.0.0.1:{port}"
    emulators["whatsapp"].webhook_url = f"{ops}/webhooks/whatsapp"
    schema = new_schema()
    with trio.fail_after(CEILING):
        async with (
            open_emulator(emulators["discord"]) as discord,
            open_emulator(emulators["telegram"]) as telegram,
            open_emulator(emulators["whatsapp"]) as whatsapp,
            open_emulator(emulators["websocket"]) as websocket,
            dropped_afterwards(schema),
        ):
            urls = {
                "discord": discord,
                "telegram": telegram,
                "whatsapp": whatsapp,
                "websocket": websocket,
            }
            overrides = {
                "storage.dsn": "${env:TEST_PG_DSN}",
                "storage.schema": schema,
                "ops.host": "127.0.0.1",
                "ops.port": str(port),
                "ops.public_url": ops,
                "profiling.pyroscope_url": pyroscope,
                "providers.discord.base_url": discord,
                "providers.telegram.base_url": telegram,
                "providers.whatsapp.base_url": whatsapp,
                "channels.globex-chat.base_url": websocket.replace("http://", "ws://") + "/ws",
            }
            argv = [arg for k, v in overrides.items() for arg in ("--set", f"{k}={v}")]
            env = {**ENV, "TEST_PG_DSN": PG_DSN}
            code, _, err = await run_command("check", str(EXAMPLE), *argv, env=env)
            assert code == 0, err
            async with run_node(EXAMPLE, env=env, args=argv) as node:
                await node.wait_output(r"channels:\s+4/4 started")
                health = await wait_health(
                    ops, lambda h: h["providers"] and _connected(h) == 4, within=60
                )
                assert health["status"] == "ok", health
                bearer = {"Authorization": f"Bearer {ENV['SWITCHBOARD_OPS_TOKEN']}"}
                async with httpx.AsyncClient(timeout=10.0) as client:
                    for platform, payload, _ in CHANNELS.values():
                        response = await client.post(
                            f"{urls[platform]}/_emulator/inject", json=payload
                        )
                        assert response.status_code == 200, (platform, response.text)

                    async def received() -> dict[str, float]:
                        text = (await client.get(f"{ops}/metrics")).text
                        return {
                            s.labels["channel"]: s.value
                            for family in text_string_to_metric_families(text)
                            if family.name == "switchboard_channel_messages_received"
                            for s in family.samples
                            if s.name.endswith("_total")
                        }

                    counts: dict[str, float] = {}
                    for _ in range(600):
                        counts = await received()
                        if all(counts.get(c) == 1 for c in CHANNELS):
                            break
                        await trio.sleep(0.05)
                    assert counts == dict.fromkeys(CHANNELS, 1.0)
                    for channel, (platform, _, peer) in CHANNELS.items():
                        response = await client.post(
                            f"{ops}/v1/channels/{channel}/messages",
                            headers=bearer,
                            json={"peer": peer, "idempotency_key": f"e2e-{channel}", "text": "hi"},
                        )
                        assert response.status_code == 200, (channel, response.text)
                        await poll(lambda p=platform: len(emulators[p].sent) == 1)  # type: ignore[misc]
                assert await node.stop() == 0
                assert "Traceback" not in node.err
                assert not any(value in node.err + node.out for value in ENV.values())


def _connected(health: dict[str, Any]) -> int:
    return sum(int(p["connected"]) for p in health["providers"].values())


@pytest.mark.parametrize(
    "base_url", ["https://graph.facebook.com/v21.0", "http://127.0.0.1:9/v19.0/", "http://h/v22"]
)
def test_the_provider_refuses_a_base_url_with_a_version_instead_of_doubling_it(
    base_url: str,
) -> None:
    config = ChannelConfig(
        channel_id="wa",
        provider="whatsapp",
        credentials={"token": "t", "app_secret": "s", "verify_token": "v"},
        base_url=base_url,
        options={"phone_number_id": "1"},
    )
    with pytest.raises(FatalError, match="ends in the Graph API version") as caught:
        WhatsAppSettings.from_config(config)
    assert "provider adds itself" in str(caught.value)
    fine = attrs.evolve(config, base_url="https://graph.facebook.com")
    assert WhatsAppSettings.from_config(fine).api_root == "https://graph.facebook.com/v21.0"
