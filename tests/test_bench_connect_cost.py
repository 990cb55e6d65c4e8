"""``python -m bench.connect_cost``: websocket connects by a node and by bare clients.

The figures (CPU, instructions) are measured, not asserted; these check the
account (every channel connected, once, while the line is handed over), the
refusals, and the arithmetic and parsing of the instruction count. Valgrind
itself is too slow for a test (a minute a run).
"""

from __future__ import annotations

import json
import logging
import shutil
from typing import Any

import pytest
import trio

from bench import connect_cost
from providers.emulators.base import open_emulator
from providers.emulators.websocket import WebSocketEmulator

from .support import CEILING

TOKENS = [f"connect-cost-{index:05d}" for index in range(3)]


@pytest.mark.parametrize("client", connect_cost.CLIENTS)
async def test_every_channel_connects_once_and_is_open_when_the_line_is_handed_over(
    client: str,
) -> None:
    emulator = WebSocketEmulator(heartbeat_interval=None, tokens=TOKENS)
    seen: list[tuple[dict[str, Any], int, list[int]]] = []

    def on_connected(line: dict[str, Any]) -> None:
        seen.append((line, emulator.clients, [emulator.holders.live(t) for t in TOKENS]))

    with trio.fail_after(CEILING):
        async with open_emulator(emulator) as base:
            url = base.replace("http://", "ws://", 1) + "/ws"
            line = await connect_cost.measure(client, url, channels=3, on_connected=on_connected)
    assert seen == [(line, 3, [1, 1, 1])]  # once, with every connection open
    assert (line["client"], line["channels"], line["connected"]) == (client, 3, 3)
    assert line["cpu_per_connect"] == line["cpu_seconds"] / 3 > 0
    assert emulator.stats["connections"] == 3  # each token once: no retry
    assert not any(key.startswith("refused") for key in emulator.stats)


@pytest.mark.parametrize("client", ["node", "bare"])
async def test_both_clients_connect_over_wss_to_a_far_end_of_a_private_ca(client: str) -> None:
    from bench.send_cost import _far_end_for

    with trio.fail_after(CEILING):
        async with _far_end_for("websocket", None, 3, tls=True) as (url, ca_file):
            assert url is not None and url.startswith("wss://") and ca_file is not None
            line = await connect_cost.measure(client, url, channels=3, ca_file=ca_file)
    assert (line["client"], line["connected"]) == (client, 3)


async def test_a_node_whose_channels_are_refused_stops_at_once_and_names_them() -> None:
    emulator = WebSocketEmulator(heartbeat_interval=None, tokens=["someone-else"])
    with (
        trio.fail_after(CEILING),
        pytest.RaisesGroup(
            pytest.RaisesExc(
                RuntimeError,
                match=r"0 of 2 channels connected at their first try .*ch0000[01]: failed",
            ),
            flatten_subgroups=True,
        ),
    ):
        async with open_emulator(emulator) as base:
            url = base.replace("http://", "ws://", 1) + "/ws"
            await connect_cost.measure("node", url, channels=2)


async def test_a_bare_client_whose_connection_is_refused_fails() -> None:
    # (The trio-websocket client counts a connection open at the upgrade's
    # answer, as the channels benchmark's baseline does: a refusal comes after.)
    emulator = WebSocketEmulator(heartbeat_interval=None, tokens=["someone-else"])
    with (
        trio.fail_after(CEILING),
        pytest.RaisesGroup(
            pytest.RaisesExc(ConnectionError, match="refused: .*unauthorized"),
            flatten_subgroups=True,
        ),
    ):
        async with open_emulator(emulator) as base:
            url = base.replace("http://", "ws://", 1) + "/ws"
            await connect_cost.measure("bare", url, channels=1)


async def test_an_unknown_client_is_refused() -> None:
    with pytest.raises(ValueError, match="client: expected one of node, bare, trio-websocket"):
        await connect_cost.measure("asyncio", "ws://127.0.0.1:9/ws", channels=1)


@pytest.mark.parametrize(
    ("arguments", "said"),
    [
        (["--channels", "0"], "--channels must be at least 1"),
        (["--client", "asyncio"], "invalid choice: 'asyncio'"),
        (["--instructions", "--exit-when-connected"], "is a counted run's own"),
        (["--tls", "--client", "trio-websocket"], "--tls, --ca-file: the node and the bare"),
        (["--tls", "--far-end", "wss://127.0.0.1:9/ws"], "--tls: a far end of the bench's own"),
        (["--ca-file", "ca.pem"], "--ca-file: for a wss:// --far-end only"),
    ],
)
def test_bad_arguments_are_refused(
    arguments: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as refused:
        connect_cost.main(arguments)
    assert refused.value.code == 2
    assert said in capsys.readouterr().err


def test_the_command_prints_one_json_line_and_leaves_the_loggers_as_they_were(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logger = logging.getLogger("switchboard")
    before = logger.level
    assert connect_cost.main(["--client", "bare", "--channels", "2"]) == 0  # its own far end
    (line,) = capsys.readouterr().out.splitlines()
    result = json.loads(line)
    assert set(result) == {"client", "channels", "connected", "cpu_seconds", "cpu_per_connect"}
    assert (result["client"], result["channels"], result["connected"]) == ("bare", 2, 2)
    assert logger.level == before


def test_a_counted_run_must_say_it_connected_every_channel() -> None:
    # The arithmetic and the refusals are bench.callgrind's (tests/test_bench_callgrind.py).
    assert connect_cost.instructions_per_connect(3_392_112_988, 3_457_632_501, 40) == 1_637_988
    output = '{"client": "node", "connected": 40}\n==1== Collected : 1529894269\n'
    assert connect_cost.counted(output, 0, 40) == 1_529_894_269
    with pytest.raises(ValueError, match=r"exit 0, 40 of 120 channels connected"):
        connect_cost.counted(output, 0, 120)


def test_counting_without_valgrind_says_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    real = shutil.which

    def which(name: str, *args: Any, **kwargs: Any) -> str | None:
        return None if name == "valgrind" else real(name, *args, **kwargs)

    monkeypatch.setattr(shutil, "which", which)
    with pytest.raises(SystemExit, match="needs valgrind"):
        connect_cost.main(["--instructions"])
