"""``python -m bench kernel --quick`` runs end to end and writes complete JSON.

Performance goals are measured, not asserted: this checks the shape of the
results (every figure, with unit, baseline and ratio, all positive and
finite), never their size. That holds for the scaling claims too (the
supervisor's start and stop per child at 100k beside 1k): they are figures
with a target that ``--check`` evaluates, not test assertions.
"""

from __future__ import annotations

import json
import math
import os
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

BENCH_TIMEOUT = 240  # seconds: the quick run takes ~10 s alone, more on a loaded machine

FIGURES = {
    "ask_round_trip": "µs",
    "ask_round_trip_task_mode": "µs",
    "fan_in": "msgs/s",
    "fan_in_vs_send_nowait": "msgs/s",
    "spawn_rate": "actors/s",
    "stop_time": "ms",
    "stop_time_vs_graceful": "ms",
    "idle_memory": "bytes",
    "crash_restart_median": "µs",
    "crash_restart_p90": "µs",
    "crash_restart_p99": "µs",
    "supervisor_start_scaling": "µs",
    "supervisor_stop_scaling": "µs",
}
TARGETED = {
    "ask_round_trip",
    "fan_in",
    "spawn_rate",
    "idle_memory",
    "crash_restart_median",
    "supervisor_start_scaling",
    "supervisor_stop_scaling",
}


def _positive_finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    out = tmp_path_factory.mktemp("bench") / "kernel.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "kernel", "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=BENCH_TIMEOUT,
        check=False,
        cwd=Path(__file__).resolve().parent.parent,
        # A wide terminal, so that each figure's label fits its row (the table
        # folds long labels at 100 columns: tests/test_bench_tools.py).
        env={**os.environ, "COLUMNS": "250"},
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(out.read_text(encoding="utf-8")), proc.stdout


def test_every_figure_has_value_baseline_ratio_and_unit(
    quick_run: tuple[dict[str, Any], str],
) -> None:
    data, _ = quick_run
    figures = {f["name"]: f for f in data["figures"]}
    assert set(figures) == set(FIGURES), data["notes"]
    for name, unit in FIGURES.items():
        f = figures[name]
        assert f["unit"] == unit, name
        for key in ("value", "baseline", "ratio"):
            assert _positive_finite(f[key]), (name, key, f[key])
        assert f["ratio"] == pytest.approx(f["value"] / f["baseline"]), name
        assert f["baseline_label"], name
        assert f["samples"] and f["baseline_samples"], name
        assert all(_positive_finite(x) for x in f["samples"] + f["baseline_samples"]), name
        if name in TARGETED:
            assert f["target"] is not None, name
            assert f["verdict"] in ("pass", "fail"), name
        else:
            assert f["target"] is None, name
            assert f["verdict"] == "no target", name


def test_report_describes_run_and_machine(quick_run: tuple[dict[str, Any], str]) -> None:
    data, stdout = quick_run
    assert data["scenario"] == "kernel"
    assert data["parameters"]["quick"] is True
    assert data["parameters"]["repeat"] == 1
    machine = data["machine"]
    assert machine["cpu_count"] >= 1
    assert machine["cpu_model"]
    assert machine["python"].startswith(f"{sys.version_info.major}.{sys.version_info.minor}")
    assert {"trio", "attrs", "cattrs"} <= set(machine["packages"])
    assert any("silenced" in note for note in data["notes"])
    # The printed table has a row per figure.
    assert "ask round trip" in stdout and "crash→restarted median" in stdout
    assert "supervisor start per child at 10,000 children" in stdout


def test_supervisor_scaling_compares_the_largest_tree_with_1k(
    quick_run: tuple[dict[str, Any], str],
) -> None:
    data, _ = quick_run
    assert data["parameters"]["supervisor_children"] == 10_000  # [quick]
    figures = {f["name"]: f for f in data["figures"]}
    for what in ("start", "stop"):
        f = figures[f"supervisor_{what}_scaling"]
        assert f["baseline_label"] == "the same supervisor with 1,000 children"
        assert f["target"] == {
            "applies_to": "ratio",
            "op": "<=",
            "threshold": 4.0,
            "text": "ratio ≤ 4 (linear)",
        }
        (note,) = [n for n in data["notes"] if n.startswith(f"supervisor {what}, µs per child")]
        assert "1,000: " in note and "10,000: " in note


def test_command_line_overrides_the_scenario_file() -> None:
    run_file = load_run_file(find_run_file("kernel"))
    scenario = load_scenario(run_file.scenario, where="test")
    args = build_parser(scenario, "kernel").parse_args(["--quick", "--actors", "50"])
    params = resolve_params(scenario, run_file, quick=args.quick, overrides=param_overrides(args))
    # --actors beats [quick], [quick] beats [params], the rest from [params].
    assert (params.actors, params.repeat, params.asks) == (50, 1, 5_000)
    full = resolve_params(scenario, run_file, quick=False, overrides={})
    assert (full.actors, full.repeat, full.asks) == (100_000, 5, 50_000)
    assert (params.supervisor_children, full.supervisor_children) == (10_000, 100_000)


def test_supervisor_scaling_needs_a_tree_at_least_as_large_as_its_baseline() -> None:
    run_file = load_run_file(find_run_file("kernel"))
    scenario = load_scenario(run_file.scenario, where="test")
    with pytest.raises(ScenarioError, match="supervisor_children: expected at least 1,000"):
        resolve_params(scenario, run_file, quick=True, overrides={"supervisor_children": 500})
