"""``python -m bench.send_cost``: closed-loop sends through a node, timed or counted.

The figures (CPU, instructions) are measured, not asserted; these check the
account (every send reached the platform, once), the JSON line, and the
arithmetic and parsing of the instruction count. Valgrind itself is too
slow for a test (a minute a run): a missing valgrind is refused clearly.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import trio

from bench import send_cost
from bench.http_bare import PLATFORMS, _WhatsApp
from bench.platforms import PlatformsSpec, _emulators
from bench.rig import WA_APP_SECRET, WA_NUMBER_BASE
from providers.emulators.base import Emulator, open_emulator
from providers.emulators.websocket import WebSocketEmulator

from .support import CEILING


async def test_every_send_of_every_caller_reaches_the_websocket_far_end() -> None:
    emulator = WebSocketEmulator(heartbeat_interval=None)
    with trio.fail_after(CEILING):
        async with open_emulator(emulator) as base:
            url = base.replace("http://", "ws://", 1) + "/ws"
            line = await send_cost.measure("websocket", channels=3, callers=2, sends=4, far_end=url)
    assert line["sends"] == 3 * 2 * 4
    assert line["cpu_per_send"] == line["cpu_seconds"] / line["sends"] > 0
    sent = emulator.sent
    assert len(sent) == 24
    assert len({m["id"] for m in sent}) == 24  # one idempotency key per send, none sent twice
    assert {m["token"] for m in sent} == {f"send-cost-{index:05d}" for index in range(3)}


@pytest.mark.parametrize("client", ["node", "bare"])
async def test_every_send_reaches_a_wss_far_end_of_a_private_ca(client: str) -> None:
    # --tls: the lean far end serves wss://, the channels (option ca_file) and
    # the bare client trust its CA.
    with trio.fail_after(CEILING):
        if client == "node":
            line = await send_cost.measure("websocket", channels=2, callers=2, sends=3, tls=True)
        else:
            async with send_cost._far_end_for("websocket", None, 2, tls=True) as (url, ca):
                assert url is not None and url.startswith("wss://")
                line = await send_cost.measure_bare(url, channels=2, callers=2, sends=3, ca_file=ca)
    assert (line["client"], line["sends"]) == (client, 12)


async def test_channels_that_cannot_connect_are_named_and_nothing_is_measured() -> None:
    with (
        trio.fail_after(CEILING),
        pytest.RaisesGroup(
            pytest.RaisesExc(
                RuntimeError, match=r"2 of 2 channels did not connect within 0.5 s \(ch00000: "
            ),
            flatten_subgroups=True,
        ),
    ):
        await send_cost.measure(
            "websocket",
            channels=2,
            callers=1,
            sends=1,
            far_end="ws://127.0.0.1:9/ws",
            connect_wait=0.5,
        )


@pytest.mark.parametrize(
    ("library", "client"), [("wsproto", "bare"), ("websockets", "bare-websockets")]
)
async def test_the_bare_client_s_sends_all_reach_the_far_end_once(
    library: str, client: str
) -> None:
    emulator = WebSocketEmulator(heartbeat_interval=None)
    with trio.fail_after(CEILING):
        async with open_emulator(emulator) as base:
            url = base.replace("http://", "ws://", 1) + "/ws"
            line = await send_cost.measure_bare(
                url, channels=3, callers=2, sends=4, library=library
            )
    assert (line["client"], line["sends"]) == (client, 24)
    sent = emulator.sent
    assert len(sent) == 24 and len({m["id"] for m in sent}) == 24
    assert {m["token"] for m in sent} == {f"send-cost-{index:05d}" for index in range(3)}
    assert {m["text"] for m in sent} == {send_cost.TEXT}
    assert len({m["peer"] for m in sent}) == 24


async def test_the_bare_client_s_sends_are_bounded_in_all(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(send_cost, "ANSWER_WAIT", 0.0)  # no time at all: nothing is answered
    emulator = WebSocketEmulator(heartbeat_interval=None)
    with (
        trio.fail_after(CEILING),
        pytest.RaisesGroup(  # raised inside the emulator's block
            pytest.RaisesExc(RuntimeError, match="2 sends not answered within 0 s"),
            flatten_subgroups=True,
        ),
    ):
        async with open_emulator(emulator) as base:
            url = base.replace("http://", "ws://", 1) + "/ws"
            await send_cost.measure_bare(url, channels=2, callers=1, sends=3)


async def test_the_bare_client_fails_on_a_refused_send() -> None:
    emulator = WebSocketEmulator(heartbeat_interval=None)
    emulator.failing_sends = [{"code": "rate_limited", "retry_after": 1.0}]
    with (
        trio.fail_after(CEILING),
        pytest.RaisesGroup(
            pytest.RaisesExc(RuntimeError, match="the far end refused a send"),
            flatten_subgroups=True,
        ),
    ):
        async with open_emulator(emulator) as base:
            url = base.replace("http://", "ws://", 1) + "/ws"
            await send_cost.measure_bare(url, channels=1, callers=1, sends=3)


def _limitless_emulator(provider: str, channels: int = 3) -> Emulator:
    """The emulator ``send_cost`` runs in a process of its own, here in-process:
    limits off, the node's and the bare client's WhatsApp numbers known."""
    numbers = [str(WA_NUMBER_BASE + i + 1) for i in range(channels)]
    numbers += [_WhatsApp().number(i) for i in range(channels)]
    spec = PlatformsSpec(
        whatsapp_app_secret=WA_APP_SECRET, whatsapp_numbers=tuple(numbers), limits=False
    )
    emulator: Emulator = _emulators(spec)[provider]
    return emulator


def _recipients(provider: str, sent: list[dict[str, Any]]) -> list[tuple[Any, Any]]:
    """(sender, recipient) of each message a platform recorded."""
    if provider == "telegram":
        return [(m["bot_id"], m["chat_id"]) for m in sent]
    return [(m["phone_number_id"], m["to"]) for m in sent]


@pytest.mark.parametrize("client", ["node", "bare"])
@pytest.mark.parametrize("provider", ["telegram", "whatsapp"])
async def test_every_send_of_every_caller_reaches_the_http_platform_once(
    provider: str, client: str
) -> None:
    emulator = _limitless_emulator(provider)
    with trio.fail_after(CEILING):
        async with open_emulator(emulator) as base:
            if client == "node":
                line = await send_cost.measure(
                    provider, channels=3, callers=2, sends=4, far_end=base
                )
            else:
                line = await send_cost.measure_bare(
                    base, channels=3, callers=2, sends=4, provider=provider
                )
    assert (line["client"], line["provider"], line["sends"]) == (client, provider, 24)
    sent = emulator.sent
    pairs = _recipients(provider, sent)
    assert len(pairs) == len(set(pairs)) == 24  # every send once, each to a recipient of its own
    assert len({sender for sender, _ in pairs}) == 3  # a bot or number per channel
    # The node and the bare client send to the same 24 recipients, the same content.
    body = PLATFORMS[provider].body
    if provider == "telegram":
        assert {chat for _, chat in pairs} == {body(k, "")["chat_id"] for k in range(24)}
        assert {m["text"] for m in sent} == {send_cost.TEXT}
    else:
        assert {to for _, to in pairs} == {body(k, "")["to"] for k in range(24)}
        assert {m["body"]["template"]["name"] for m in sent} == {"hello_world"}
    assert emulator.stats["rate_limited"] == 0


@pytest.mark.parametrize("provider", ["telegram", "whatsapp"])
async def test_the_http_far_end_s_limits_are_off(provider: str) -> None:
    platform = PLATFORMS[provider]
    emulator = _limitless_emulator(provider)
    with trio.fail_after(CEILING):
        async with (
            open_emulator(emulator) as base,
            httpx.AsyncClient(headers=platform.client_headers(0)) as client,
        ):
            url = platform.send_url(base, 0)
            # One recipient ten times at once: Telegram takes 3 at once per
            # chat, WhatsApp 3 per user, each then one a second or less.
            answers = [await client.post(url, json=platform.body(0, "x")) for _ in range(10)]
    assert [platform.refusal(a.status_code, a.content) for a in answers] == [None] * 10


async def test_the_bare_http_client_fails_on_a_refused_send() -> None:
    emulator = _limitless_emulator("telegram")
    emulator.blocked_chats.add(1_002)  # type: ignore[attr-defined]
    with (
        trio.fail_after(CEILING),
        pytest.RaisesGroup(
            pytest.RaisesExc(RuntimeError, match="the telegram platform refused a send: 403"),
            flatten_subgroups=True,
        ),
    ):
        async with open_emulator(emulator) as base:
            await send_cost.measure_bare(base, channels=1, callers=1, sends=3, provider="telegram")


def test_an_http_count_runs_both_sends_against_one_far_end(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    commands: list[list[str]] = []

    def run(command: list[str], *, stdout: Any, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        commands.append(command)
        sends = int(command[command.index("--sends") + 1])
        made = {"client": "bare", "sends": 2 * 3 * sends}
        stdout.write(f"{json.dumps(made)}\n==1== Collected : {1_000_000 + 700 * 6 * sends}\n")
        return subprocess.CompletedProcess(command, 0)

    opened: list[tuple[str, int]] = []

    @contextlib.asynccontextmanager
    async def far_end(provider: str, channels: int) -> AsyncIterator[str]:
        opened.append((provider, channels))
        yield "http://127.0.0.1:9"

    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: f"/usr/bin/{name}")
    monkeypatch.setattr(subprocess, "run", run)
    monkeypatch.setattr(send_cost, "_http_far_end", far_end)
    arguments = ["--instructions", "--provider", "telegram", "--client", "bare"]
    assert send_cost.main([*arguments, "--channels", "2", "--callers", "3", "--sends", "5"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["client"], result["provider"], result["instructions_per_send"]) == (
        "bare",
        "telegram",
        700,
    )
    assert opened == [("telegram", 2)]  # one far end, started natively, for both runs
    for command, sends in zip(commands, ["5", "15"], strict=True):
        assert command[:2] == ["valgrind", "--tool=callgrind"]
        assert command[command.index("--sends") + 1] == sends
        assert command[command.index("--provider") + 1] == "telegram"
        assert command[command.index("--client") + 1] == "bare"
        assert command[command.index("--far-end") + 1] == "http://127.0.0.1:9"


@pytest.mark.parametrize(
    ("arguments", "refusal"),
    [
        (
            ["--client", "bare", "--provider", "simulated"],
            "--client bare has no simulated client: --provider websocket, telegram, whatsapp only",
        ),
        (
            ["--provider", "simulated", "--far-end", "ws://127.0.0.1:9/ws"],
            "--far-end: simulated channels have no far end",
        ),
        (
            ["--provider", "telegram", "--far-end", "ws://127.0.0.1:9/ws"],
            "--far-end: a telegram far end is a http:// URL, not 'ws://127.0.0.1:9/ws'",
        ),
        (
            ["--far-end", "http://127.0.0.1:9"],
            "--far-end: a websocket far end is a ws:// URL, not 'http://127.0.0.1:9'",
        ),
        (["--provider", "discord"], "argument --provider: invalid choice: 'discord'"),
        (["--tls", "--provider", "telegram"], "--tls: --provider websocket and a far end of"),
        (["--tls", "--far-end", "wss://127.0.0.1:9/ws"], "--tls: --provider websocket and"),
        (["--ca-file", "ca.pem"], "--ca-file: for a wss:// --far-end only"),
        (
            ["--client", "bare-websockets", "--provider", "telegram"],
            "--client bare-websockets: --provider websocket only",
        ),
    ],
)
def test_arguments_that_cannot_run_are_refused_by_name(
    arguments: list[str], refusal: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as refused:
        send_cost.main(arguments)
    assert refused.value.code == 2
    assert refusal in capsys.readouterr().err


def test_the_command_prints_one_json_line(capsys: pytest.CaptureFixture[str]) -> None:
    arguments = ["--provider", "simulated", "--channels", "2", "--callers", "3", "--sends", "5"]
    assert send_cost.main(arguments) == 0
    (line,) = capsys.readouterr().out.splitlines()
    result = json.loads(line)
    assert set(result) == {
        "client",
        "provider",
        "channels",
        "callers",
        "sends",
        "cpu_seconds",
        "cpu_per_send",
    }
    assert (result["provider"], result["channels"], result["callers"]) == ("simulated", 2, 3)
    assert result["sends"] == 30


@pytest.mark.parametrize("option", ["--channels", "--callers", "--sends"])
def test_a_count_below_one_is_refused(option: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as refused:
        send_cost.main(["--provider", "simulated", option, "0"])
    assert refused.value.code == 2
    assert f"{option} must be at least 1" in capsys.readouterr().err


def test_a_counted_run_must_say_it_made_every_send() -> None:
    # The arithmetic and the refusals are bench.callgrind's (tests/test_bench_callgrind.py).
    assert send_cost.instructions_per_send(3_614_781_089, 3_714_726_443, 200) == 499_727
    output = '{"client": "node", "sends": 40}\n==1== Collected : 1529894269\n'
    assert send_cost.counted(output, 0, 40) == 1_529_894_269
    with pytest.raises(ValueError, match=r"exit 0, 40 of 80 sends made"):
        send_cost.counted(output, 0, 80)


def test_the_command_leaves_the_loggers_as_they_were() -> None:
    logger = logging.getLogger("switchboard")
    before = logger.level
    send_cost.main(["--provider", "simulated", "--channels", "1", "--callers", "1", "--sends", "1"])
    assert logger.level == before


def test_counting_without_valgrind_says_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    real = shutil.which

    def which(name: str, *args: Any, **kwargs: Any) -> str | None:
        return None if name == "valgrind" else real(name, *args, **kwargs)

    monkeypatch.setattr(shutil, "which", which)
    with pytest.raises(SystemExit, match="needs valgrind"):
        send_cost.main(["--instructions", "--provider", "simulated"])
