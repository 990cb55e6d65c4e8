"""``python -m bench peers --quick`` runs end to end and reports every peer.

Performance is measured, not asserted: this checks the shape of the result
(one figure per workload metric and peer, units, medians and ratios positive
and finite, ratio = value / baseline, a bar series per metric, notes that say
what every peer did), never the size of a figure. Pykka is in the ``bench``
extra: where it is not installed, its figures must be absent and a note must
say why.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.__main__ import build_parser, load_scenario
from bench.scenario import (
    ScenarioError,
    find_run_file,
    load_run_file,
    param_overrides,
    resolve_params,
)

BENCH_TIMEOUT = 240  # seconds: the quick run takes ~15 s alone, more on a loaded machine
UNITS = {
    "ping_pong": "µs",
    "fan_in": "msgs/s",
    "spawn": "actors/s",
    "stop": "actors/s",
    "idle_memory": "bytes",
    "crash_restart": "µs",
    "crash_restart_p99": "µs",
}
PYKKA = importlib.util.find_spec("pykka") is not None
PEERS = ("trio", "asyncio", "pykka") if PYKKA else ("trio", "asyncio")


def _positive_finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("peers")
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "peers", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=BENCH_TIMEOUT,
        check=False,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads((out / "result.json").read_text(encoding="utf-8")), out


def test_one_figure_per_metric_and_peer(quick_run: tuple[dict[str, Any], Path]) -> None:
    data, _ = quick_run
    figures = {f["name"]: f for f in data["figures"]}
    expected = {f"{metric}_vs_{peer}": unit for metric, unit in UNITS.items() for peer in PEERS}
    assert set(figures) == set(expected), data["notes"]
    for name, unit in expected.items():
        f = figures[name]
        peer = name.rsplit("_vs_", 1)[1]
        assert f["unit"] == unit, name
        for key in ("value", "baseline", "ratio"):
            assert _positive_finite(f[key]), (name, key, f[key])
        assert f["ratio"] == pytest.approx(f["value"] / f["baseline"]), name
        assert f["baseline_label"].startswith(f"{peer}: "), name
        assert len(f["samples"]) == len(f["baseline_samples"]) == 1, name  # quick: repeat = 1
        assert all(_positive_finite(x) for x in f["samples"] + f["baseline_samples"]), name
        assert f["target"] is None and f["verdict"] == "no target", name
    # Every peer is compared with the same Switchboard samples.
    for metric in UNITS:
        values = {figures[f"{metric}_vs_{peer}"]["value"] for peer in PEERS}
        assert len(values) == 1, metric


def test_a_bar_series_per_metric_with_every_runtime(
    quick_run: tuple[dict[str, Any], Path],
) -> None:
    data, out = quick_run
    runtimes = ["switchboard", *PEERS]
    assert data["parameters"]["runtimes"] == runtimes
    series = {s["name"]: s for s in data["series"]}
    assert set(series) == {f"peers_{metric}" for metric in UNITS}
    figures = {f["name"]: f for f in data["figures"]}
    for metric, unit in UNITS.items():
        s = series[f"peers_{metric}"]
        assert (s["kind"], s["categories"], s["y_label"]) == ("bar", runtimes, unit), metric
        (medians,) = s["lines"].values()
        assert len(medians) == len(s["x"]) == len(runtimes), metric
        # The bars are the figures' medians: Switchboard's value, then each peer's baseline.
        assert medians[0] == figures[f"{metric}_vs_trio"]["value"], metric
        for peer, bar in zip(PEERS, medians[1:], strict=True):
            assert bar == figures[f"{metric}_vs_{peer}"]["baseline"], (metric, peer)
    for plot in data["plots"]:
        assert Path(plot).is_file(), plot
    # One figure with a small multiple per metric, not one image each.
    assert all(series[f"peers_{metric}"]["group"] == "peers" for metric in UNITS)
    assert [Path(p).name for p in data["plots"]] == ["peers.png"]
    # One repetition is "one run", never a "median of 1".
    assert all("median of 1" not in s["title"] and "one run" in s["title"] for s in series.values())
    assert (out / "result.json").is_file()


def test_notes_say_what_every_peer_did(quick_run: tuple[dict[str, Any], Path]) -> None:
    data, _ = quick_run
    notes = "\n".join(data["notes"])
    for workload in ("ping_pong", "fan_in", "spawn_stop", "idle_memory", "crash"):
        line = next(n for n in data["notes"] if n.startswith(f"{workload}: switchboard: "))
        for peer in PEERS:
            assert f"; {peer}: " in line, (workload, peer)
    if PYKKA:
        assert "no supervisor" in notes
    else:
        assert "pykka: NOT MEASURED, it is not installed" in notes
    assert "silenced" in notes
    assert not any("repetitions, stopped" in n for n in data["notes"])


def test_scenario_file_and_command_line() -> None:
    run_file = load_run_file(find_run_file("peers"))
    scenario = load_scenario(run_file.scenario, where="test")
    args = build_parser(scenario, "peers").parse_args(["--quick", "--peers", "trio,asyncio"])
    params = resolve_params(scenario, run_file, quick=args.quick, overrides=param_overrides(args))
    assert (params.repeat, params.peers, params.actors) == (1, ["trio", "asyncio"], 10_000)
    full = resolve_params(scenario, run_file, quick=False, overrides={})
    assert (full.repeat, full.peers) == (5, ["trio", "asyncio", "pykka"])
    with pytest.raises(ScenarioError, match="peers: expected some of trio, asyncio, pykka"):
        resolve_params(scenario, run_file, quick=True, overrides={"peers": ["erlang"]})
    with pytest.raises(ScenarioError, match="crashes: expected at least 1"):
        resolve_params(scenario, run_file, quick=True, overrides={"crashes": 0})
