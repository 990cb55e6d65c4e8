"""The emulators' control API stays on this machine, and what it keeps is capped.

The control API has no authentication: it injects signed messages, lists
every message sent and repoints webhooks. So an emulator refuses to serve on
an address that is not loopback unless told explicitly (library, command
line and config alike), and its lists are bounded. Real sockets on
127.0.0.1, real subprocesses for the command line.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Final

import httpx
import pytest
import trio

from providers.emulators import open_emulator
from providers.emulators.base import MAX_KEPT, MAX_LISTED, is_loopback
from providers.emulators.telegram import TelegramEmulator
from providers.emulators.websocket import WebSocketEmulator
from providers.emulators.whatsapp import WhatsAppEmulator
from runtime.config import parse_config
from runtime.errors import ConfigError

ROOT: Final = Path(__file__).resolve().parent.parent
CEILING: Final = 15.0


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("example.com", False),
        ("", False),
    ],
)
def test_what_counts_as_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
async def test_an_emulator_refuses_a_wildcard_address_without_the_flag(host: str) -> None:
    with trio.fail_after(CEILING), pytest.raises(ValueError, match="allow_remote"):
        async with open_emulator(TelegramEmulator(), host=host):
            raise AssertionError("served beyond loopback")


async def test_the_flag_lets_it_serve_beyond_loopback() -> None:
    with trio.fail_after(CEILING):
        async with open_emulator(TelegramEmulator(), host="0.0.0.0", allow_remote=True) as url:
            port = url.rsplit(":", 1)[1]
            async with httpx.AsyncClient() as client:
                stats = await client.get(f"http://127.0.0.1:{port}/_emulator/stats")
            assert stats.status_code == 200


def test_the_command_line_refuses_a_remote_host_without_the_flag() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "emulate", "telegram", "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "--allow-remote" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_config_refuses_a_remote_emulator_host_without_allow_remote() -> None:
    text = '[emulators.telegram]\nhost = "0.0.0.0"\n'
    with pytest.raises(ConfigError, match=r"set allow_remote = true") as caught:
        parse_config(text, env={})
    assert "emulators.telegram.host" in str(caught.value)
    config = parse_config(text + "allow_remote = true\n", env={})
    assert config.emulators["telegram"].allow_remote is True


async def test_sends_and_operations_kept_are_capped_and_listed_capped() -> None:
    emulator = WebSocketEmulator()
    for number in range(MAX_KEPT + MAX_KEPT // 4 + 1):
        emulator.record_sent({"id": str(number)})
    assert len(emulator.sent) == MAX_KEPT  # the last ones
    assert emulator.sent[-1] == {"id": str(MAX_KEPT + MAX_KEPT // 4)}
    assert emulator.stats["messages_sent"] == MAX_KEPT + MAX_KEPT // 4 + 1  # counted all
    with trio.fail_after(CEILING):
        async with open_emulator(emulator) as url, httpx.AsyncClient() as client:
            listed = (await client.get(f"{url}/_emulator/sent")).json()
            assert len(listed) == MAX_LISTED
            assert listed[-1] == emulator.sent[-1]
            few = (await client.get(f"{url}/_emulator/sent", params={"limit": 3})).json()
            assert few == emulator.sent[-3:]
            huge = await client.get(f"{url}/_emulator/sent", params={"limit": "9" * 5000})
            assert len(huge.json()) == MAX_LISTED  # not a 500 for a 5000-digit number


async def test_fault_counts_are_bounded_and_control_bodies_bounded() -> None:
    with trio.fail_after(CEILING):
        async with (
            open_emulator(WhatsAppEmulator()) as url,
            httpx.AsyncClient() as client,
        ):
            flood = {"kind": "fail_next", "code": 131000, "count": 10**9}
            answer = await client.post(f"{url}/_emulator/fault", json=flood)
            assert answer.status_code == 400
            assert "at most" in answer.json()["error"]
            deep = await client.post(f"{url}/_emulator/inject", content=b"[" * 50_000)
            assert deep.status_code == 400
