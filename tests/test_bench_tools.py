"""The bench harness as a tool: its name, its optional packages, its files, ports, table, plots."""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import attrs
import matplotlib
import pytest
import trio

import bench.__main__ as bench_main
import bench.channels as bench_channels
from bench import plots
from bench.__main__ import build_parser, load_scenario, main
from bench.channels import ChannelsParams
from bench.report import Figure, Report, Series, Target, machine_info, render_table
from bench.rig import emulator_port, node_config, open_rig

matplotlib.use("Agg")

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runtime.cli", "bench", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
        env=env,
    )


def test_switchboard_bench_help_names_itself() -> None:
    top = _run("--help")
    assert top.returncode == 0, top.stderr
    assert top.stdout.startswith("usage: switchboard bench ")
    assert "`switchboard bench <scenario> --help`" in top.stdout
    scenario = _run("scrape", "--help")
    assert scenario.stdout.startswith("usage: switchboard bench scrape ")
    assert "--port-base PORT" in scenario.stdout
    direct = subprocess.run(
        [sys.executable, "-m", "bench", "scrape", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    assert direct.stdout.startswith("usage: python -m bench scrape ")


BLOCKED = """
import sys
sys.modules["matplotlib"] = None  # as if the bench extra were not installed
from bench.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_missing_optional_package_is_said_before_anything_runs(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKED, "scrape", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (
        "bench: missing matplotlib (the plots (or --no-plots)): install the bench extra "
        "(pip install -e '.[bench]'); nothing was run"
    )
    assert not out.exists()
    # Without plots, the same run needs no matplotlib and writes its result.
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKED, "scrape", "--quick", "--no-plots", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "result.json").read_text())["scenario"] == "scrape"


def test_result_json_is_written_before_the_plots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[bool] = []

    def failing(*args: object, **kwargs: object) -> list[Path]:
        seen.append((tmp_path / "result.json").is_file())
        raise RuntimeError("the plotting library broke")

    monkeypatch.setattr(plots, "draw_all", failing)
    fake = Report(
        scenario="demo",
        started="2026-01-01T00:00:00+00:00",
        duration=1.0,
        parameters={},
        machine=machine_info(),
        load_average={},
        section_seconds={},
        figures=[Figure.single(name="x", label="x", unit="ms", value=1.0, better="lower")],
        notes=[],
        series=[Series(name="s", title="t", x_label="", y_label="", x=[0.0], lines={"a": [1.0]})],
    )
    scenario = attrs.evolve(load_scenario("scrape", where="test"), run=lambda params, ctx: fake)
    monkeypatch.setattr(bench_main, "load_scenario", lambda name, where: scenario)
    assert main(["scrape", "--quick", "--out", str(tmp_path)]) == 0
    assert seen == [True]  # on disk when the plots began
    assert json.loads((tmp_path / "result.json").read_text())["figures"][0]["name"] == "x"
    assert "the plots failed (RuntimeError: the plotting library broke)" in capsys.readouterr().err


def test_port_base_places_the_node_and_its_emulator() -> None:
    scenario = load_scenario("channels", where="test")
    args = build_parser(scenario, "channels").parse_args(["--port-base", "9100"])
    assert args.port_base == 9100
    config = node_config("whatsapp", in_process_emulator=True, limits=False, port_base=9100)
    assert (config.ops.port, config.emulators["whatsapp"].port) == (9100, 9101)
    assert emulator_port(9100) == 9101
    free = node_config("whatsapp", in_process_emulator=True, limits=False)
    assert (free.ops.port, free.emulators["whatsapp"].port) == (0, 0)  # any free ports
    assert main(["channels", "--port-base", "70000"]) == 2


async def test_checkpoint_interval_reaches_the_benchmarks_node(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scenario = load_scenario("channels", where="test")
    args = build_parser(scenario, "channels").parse_args(["--checkpoint-interval", "3600"])
    assert args.param__checkpoint_interval == 3600.0
    for bad in (0.0, -1.0, math.inf, math.nan):  # refused, with its reason
        with pytest.raises(ValueError, match="checkpoint_interval: expected a positive finite"):
            ChannelsParams(checkpoint_interval=bad)
    default = node_config("websocket", in_process_emulator=False, limits=False)
    assert default.storage.checkpoint_interval == 1.0  # the product's default
    # The rig hands it to the node's [storage] (the memory store still)...
    with trio.fail_after(60):
        async with open_rig(
            "simulated",
            external=False,
            limits=False,
            storage_settings={"checkpoint_interval": 3600.0},
        ) as rig:
            assert rig.node.config.storage.checkpoint_interval == 3600.0
            assert rig.node.config.storage.backend == "memory"
    # ...and the scenario hands its parameter to the rig.
    handed: dict[str, Any] = {}

    class Stop(Exception):
        pass

    @contextlib.asynccontextmanager
    async def recording_rig(*args: Any, **kwargs: Any) -> AsyncIterator[None]:
        handed.update(kwargs)
        raise Stop
        yield  # (a generator)

    monkeypatch.setattr(bench_channels, "open_rig", recording_rig)
    params = ChannelsParams(provider="simulated", checkpoint_interval=3600.0)
    with pytest.raises(Stop):
        await bench_channels._run(params, SimpleNamespace(port_base=0))  # type: ignore[arg-type]
    assert handed["storage_settings"] == {"checkpoint_interval": 3600.0}


def _report(notes: list[str]) -> Report:
    return Report(
        scenario="channels",
        started="2026-01-01T00:00:00+00:00",
        duration=12.5,
        parameters={"channels": 10_000, "rates": [1000, 2000, 4000], "file": "x" * 150},
        machine=machine_info(),
        load_average={"before": [1.0, 2.0, 3.0]},
        section_seconds={"connect": 12.0},
        figures=[
            Figure.from_samples(
                name="ask",
                label="ask round trip, plain actor (inline), a long label that must fold in "
                "its cell rather than push the columns off the screen",
                unit="µs",
                samples=[0.8],
                baseline_samples=[14.6],
                baseline_label="the same work on trio with a memory channel ping-pong, " * 3,
                better="lower",
                target=Target(applies_to="ratio", op="<=", threshold=0.5, text="ratio ≤ 0.5"),
            ),
            Figure.single(
                name="n", label="delivered", unit="msgs/s", value=1334.0, better="higher"
            ),
        ],
        notes=notes,
    )


def test_the_summary_table_fits_100_columns_and_the_notes_follow_it() -> None:
    note = "a long note " * 30
    text = render_table(_report([note]), width=100)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 100
    header = next(i for i, line in enumerate(lines) if line.lstrip().startswith("figure"))
    assert "switchboard" in lines[header] and "verdict" in lines[header]
    assert any("0.05x" in line and "PASS" in line for line in lines)  # a whole row
    notes = lines.index("notes:")
    assert notes > header and lines[notes + 1].startswith("  - a long note")
    assert lines.index("baselines (same work, same run):") > header


def test_bars_spanning_decades_get_a_log_axis_and_their_values() -> None:
    from matplotlib import pyplot as plt

    bars = Series(
        name="rt",
        title="round trip",
        x_label="",
        y_label="µs",
        x=[0.0, 1.0, 2.0],
        lines={"median": [0.8, 57.0, 18.2]},
        kind="bar",
        categories=["switchboard", "pykka", "asyncio"],
    )
    assert plots.spans_decades([0.8, 57.0]) and not plots.spans_decades([10.0, 57.0])
    fig, ax = plt.subplots()
    plots._panel(ax, bars)
    assert ax.get_yscale() == "log"
    assert [t.get_text() for t in ax.texts] == ["0.8", "57", "18.2"]
    plt.close(fig)


def test_latency_percentiles_are_drawn_hdrhistogram_style(tmp_path: Path) -> None:
    from matplotlib import pyplot as plt

    xs = [plots.percentile_x(q) for q in plots.PERCENTILES]
    curve = Series(
        name="p",
        title="latency by percentile",
        x_label="percentile",
        y_label="ms",
        x=xs,
        lines={"latency": [1.0, 1.2, 2.0, 3.0, 9.0, 20.0, 80.0, 90.0, 120.0]},
        kind="percentile",
        group="latency",
    )
    fig, ax = plt.subplots()
    plots._panel(ax, curve)
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["50%", "90%", "99%", "99.9%", "99.99%"]
    plt.close(fig)
    over_time = Series(
        name="t", title="over time", x_label="s", y_label="ms", x=[0.0, 1.0], lines={"p99": [1, 2]},
        group="latency",
    )  # fmt: skip
    alone = Series(name="a", title="a", x_label="", y_label="", x=[0.0], lines={"a": [1.0]})
    paths = plots.draw_all([curve, over_time, alone], tmp_path)
    assert sorted(p.name for p in paths) == ["a.png", "latency.png"]  # small multiples: one PNG
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in paths)
