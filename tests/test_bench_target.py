"""``python -m bench target``: load-testing a running node, as a team runs it.

The node is ``switchboard run`` in a subprocess (in-process emulators, the
API token from an environment variable) and the load test is another
subprocess, so both run exactly as a user runs them. Real sockets mean real
time: every test has a hard ceiling. Only the shape of the results is
checked (counts that must agree, finite positive latencies, the node's own
figures present), never their size: performance is measured, not asserted.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Final

import pytest
import trio

from bench.scenario import ScenarioError
from bench.target import ChannelInfo, TargetParams, parse_metrics, peer_for, select_channels
from tests.test_cli_run import ROOT, run_node, wait_health

CEILING: Final = 90.0  # seconds of real time; only a hang gets near it
API_TOKEN: Final = "bench-target-token-5b1e"
PROVIDERS: Final = ("discord", "telegram", "whatsapp", "websocket")

NODE: Final = """
[node]
id = "bench-target"
drain_deadline = 3.0
start_timeout = 10.0

[ops]
port = 0
{api_token}

[logging]
format = "json"

{emulators}
{channels}
"""


def node_config(path: Path, *, with_token: bool) -> Path:
    """Every provider, each with one channel on its in-process emulator (ports picked free)."""
    path.write_text(
        NODE.format(
            api_token='api_token = "${env:SB_TEST_BENCH_TOKEN}"' if with_token else "",
            emulators="\n".join(f"[emulators.{p}]\nport = 0\n" for p in PROVIDERS),
            channels="\n".join(
                f'[[channels]]\nid = "{p}-1"\ntenant = "t"\nprovider = "{p}"\nemulator = true\n'
                for p in PROVIDERS
            ),
        )
    )
    return path


async def bench(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = await trio.run_process(
        [sys.executable, "-m", "bench", "target", *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        # An empty value removes the variable, so a test can run without the token.
        env={k: v for k, v in {**os.environ, **(env or {})}.items() if v},
        cwd=ROOT,
    )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


def figures(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {figure["name"]: figure for figure in result["figures"]}


def one_line_error(stderr: str) -> str:
    """The one line a run that cannot start ends with (after its progress lines)."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert lines and lines[-1].startswith("bench: "), stderr
    assert not any(line.startswith("bench: ") for line in lines[:-1]), stderr
    return lines[-1]


def positive_finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and x > 0


# --- a quick load test against a real node ---------------------------------------------------


async def test_a_quick_load_test_answers_every_request_and_reads_the_node(
    tmp_path: Path,
) -> None:
    config = node_config(tmp_path / "node.toml", with_token=True)
    out = tmp_path / "out"
    env = {"SB_TEST_BENCH_TOKEN": API_TOKEN, "SWITCHBOARD_API_TOKEN": ""}
    with trio.fail_after(CEILING):
        async with run_node(config, env) as node:
            await node.wait_output(r"channels:\s+4/4 started")
            ops = node.url("ops HTTP:")
            await wait_health(ops, lambda h: h["status"] == "ok")
            code, stdout, stderr = await bench(
                "--target", ops, "--token", API_TOKEN, "--quick", "--out", str(out)
            )
            assert code == 0, stderr
            wrong, _, refused = await bench(
                "--target", ops, "--token", "not-the-token", "--quick", "--out", str(out / "x")
            )
    assert wrong == 2, refused
    assert one_line_error(refused).startswith("bench: the node refused the API token (401)")
    assert "not-the-token" not in refused

    text = await trio.Path(out / "result.json").read_text()
    assert API_TOKEN not in text + stdout + stderr
    result = json.loads(text)
    assert result["scenario"] == "target"
    found = figures(result)
    sent = found["requests_sent"]["value"]
    assert sent > 0
    assert found["requests_answered"]["value"] == sent
    assert found["unanswered"]["value"] == 0
    assert found["errors"]["value"] == 0
    assert not [name for name in found if name.startswith("errors_") and found[name]["value"]]
    latencies = [found[f"latency_{q}"]["value"] for q in ("p50", "p90", "p99", "max")]
    assert all(positive_finite(x) for x in latencies)
    assert latencies == sorted(latencies)
    assert {found[f"latency_{q}"]["unit"] for q in ("p50", "max")} == {"ms"}
    assert positive_finite(found["accepted_per_second"]["value"])
    for provider in PROVIDERS:
        assert positive_finite(found[f"accepted_per_second_{provider}"]["value"]), provider
        assert found[f"errors_{provider}"]["value"] == 0

    # The node's own account of the run, from /metrics.
    assert found["node_sent"]["value"] == sent  # every accepted message counted by the node
    assert (found["node_reconnects"]["value"], found["node_dead_letters"]["value"]) == (0, 0)
    for name in ("node_rss_before", "node_rss_after", "node_rss_peak", "node_cpu"):
        assert positive_finite(found[name]["value"]), name
    assert found["node_rss_peak"]["value"] >= found["node_rss_after"]["value"]

    series = {s["name"]: s for s in result["series"]}
    assert {"latency_over_time", "accepted_over_time", "node_rss_over_time"} <= set(series)
    for one in series.values():
        assert one["x"] and all(len(line) == len(one["x"]) for line in one["lines"].values())
    accepted = series["accepted_over_time"]["lines"]["accepted/s"]
    assert sum(accepted) * result["parameters"]["sample_interval"] == sent
    assert result["plots"]
    for plot in result["plots"]:
        assert await trio.Path(plot).is_file(), plot


# --- runs that cannot start: one line, exit 2 -------------------------------------------------


async def test_a_node_without_the_message_api_an_unreachable_url_and_no_token_exit_2(
    tmp_path: Path,
) -> None:
    config = node_config(tmp_path / "node.toml", with_token=False)
    closed = trio.socket.socket()
    await closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    env = {"SWITCHBOARD_API_TOKEN": API_TOKEN}
    with trio.fail_after(CEILING):
        async with run_node(config) as node:
            await node.wait_output(r"channels:\s+4/4 started")
            ops = node.url("ops HTTP:")
            off = await bench("--target", ops, "--quick", "--out", str(tmp_path / "a"), env=env)
        unreachable = await bench(
            "--target", f"http://127.0.0.1:{port}", "--quick", "--out", str(tmp_path / "b"), env=env
        )
        tokenless = await bench(
            "--target",
            ops,
            "--quick",
            "--out",
            str(tmp_path / "c"),
            env={"SWITCHBOARD_API_TOKEN": ""},
        )
        untargeted = await bench("--quick", "--out", str(tmp_path / "d"), env=env)
    for (code, _, err), expected in (
        (off, "message API is off"),
        (unreachable, f"cannot reach http://127.0.0.1:{port}"),
        (tokenless, "no API token"),
        (untargeted, "pass --target URL"),
    ):
        assert code == 2, err
        assert expected in one_line_error(err)
        assert API_TOKEN not in err


# --- the pure parts ---------------------------------------------------------------------------


LISTED: Final = [
    ChannelInfo(channel="dc-1", tenant="t", provider="discord", status="connected"),
    ChannelInfo(channel="tg-1", tenant="t", provider="telegram", status="backing_off"),
    ChannelInfo(channel="ws-1", tenant="t", provider="websocket", status="connected"),
]


def test_channels_default_to_the_connected_ones_and_a_chosen_one_that_is_not_is_noted() -> None:
    assert select_channels(LISTED, [], "n") == ([LISTED[0], LISTED[2]], [])
    chosen, notes = select_channels(LISTED, ["tg-1", "dc-1", "tg-1"], "n")
    assert [info.channel for info in chosen] == ["tg-1", "dc-1"]
    assert notes == ["channel tg-1 was backing_off when the load started: expect errors from it"]


def test_unknown_channels_and_a_node_with_nothing_connected_are_scenario_errors() -> None:
    with pytest.raises(ScenarioError, match=r"no channel nope; it has: dc-1, tg-1, ws-1"):
        select_channels(LISTED, ["ws-1", "nope"], "n")
    with pytest.raises(ScenarioError, match="no connected channel"):
        select_channels([LISTED[1]], [], "n")


def test_recipients_come_from_each_providers_template() -> None:
    params = TargetParams(peers=3)
    assert [peer_for(params, "whatsapp", n) for n in (1, 3)] == ["16505550001", "16505550003"]
    assert peer_for(params, "telegram", 2) == "2"
    assert peer_for(params, "simulated", 7) == "user-7"
    with pytest.raises(ValueError, match="telegram_peer"):
        TargetParams(telegram_peer="{m}")
    with pytest.raises(ValueError, match="whatsapp_template"):
        TargetParams(whatsapp_template="hello_world")


def test_metrics_are_summed_over_channels_and_process_figures_read() -> None:
    text = "\n".join(
        [
            "# TYPE switchboard_channel_reconnects counter",
            'switchboard_channel_reconnects_total{channel="a",tenant="t",provider="p"} 2.0',
            'switchboard_channel_reconnects_total{channel="b",tenant="t",provider="p"} 3.0',
            "# TYPE switchboard_channel_dead_letters gauge",
            'switchboard_channel_dead_letters{channel="a",tenant="t",provider="p"} 1.0',
            "# TYPE process_resident_memory_bytes gauge",
            "process_resident_memory_bytes 5.0e+07",
            "",
        ]
    )
    sample = parse_metrics(text, 12.5)
    assert (sample.at, sample.reconnects, sample.dead_letters) == (12.5, 5.0, 1.0)
    assert (sample.rss, sample.cpu, sample.sent) == (5.0e07, None, 0.0)
