"""``python -m bench crash --quick`` runs end to end: every crash restarted, nothing lost.

Performance is measured, not asserted: these check the shape of the results
(every figure with its unit, finite, the plots' series consistent) and the
invariants the scenario exists for, which hold whatever the machine's
speed: no message lost, one restart per crash, no escalation at the quick
crash rate. Two runs cover both crash kinds and both platforms: an
exception inside the actor against the websocket emulator over sockets, and
``ref.kill()`` against the simulated platform.
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

BENCH_TIMEOUT = 120  # seconds: the quick run takes ~8 s, more on a loaded machine

FIGURES = {
    "crashes": "crashes",
    "restarts": "restarts",
    "escalations": "escalations",
    "messages_sent": "msgs",
    "messages_delivered": "msgs",
    "messages_lost": "msgs",
    "duplicates": "msgs",
    "send_retries": "retries",
    "restart_latency_p50": "ms",
    "restart_latency_p99": "ms",
    "restart_wait_p50": "ms",
    "reconnect_p50": "ms",
    "delivered_rate": "msgs/s",
    "send_latency_p50": "ms",
    "send_latency_p99": "ms",
}
POSITIVE = {
    "crashes",
    "restarts",
    "messages_sent",
    "messages_delivered",
    "restart_latency_p50",
    "restart_latency_p99",
    "restart_wait_p50",
    "reconnect_p50",
    "delivered_rate",
    "send_latency_p50",
    "send_latency_p99",
}
SERIES = {
    "crashes_over_time",
    "delivered_over_time",
    "send_latency_over_time",
    "restart_latency_histogram",
}
RUNS = {
    "websocket-exception": ["--provider", "websocket", "--crash-mode", "exception"],
    "simulated-kill": ["--provider", "simulated", "--crash-mode", "kill"],
}


@pytest.fixture(scope="module", params=sorted(RUNS))
def quick_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    out = tmp_path_factory.mktemp(request.param)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "crash",
            "--quick",
            "--out",
            str(out),
            *RUNS[request.param],
        ],
        capture_output=True,
        text=True,
        timeout=BENCH_TIMEOUT,
        check=False,
        cwd=Path(__file__).resolve().parent.parent,
        # A wide terminal, so that each figure's label fits its row (the table
        # folds long labels at 100 columns: tests/test_bench_tools.py).
        env={**os.environ, "COLUMNS": "250"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "result.json").read_text(encoding="utf-8"))
    return data, proc.stdout


def _figures(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["name"]: f for f in data["figures"]}


def test_every_figure_is_present_with_its_unit(quick_run: Any) -> None:
    data, stdout = quick_run
    figures = _figures(data)
    assert set(figures) == set(FIGURES), data["notes"]
    for name, unit in FIGURES.items():
        f = figures[name]
        assert f["unit"] == unit, name
        value = f["value"]
        assert isinstance(value, int | float) and math.isfinite(value) and value >= 0, (name, f)
        if name in POSITIVE:
            assert value > 0, (name, data["notes"])
        assert f["label"] in stdout, name


def test_nothing_is_lost_and_every_crash_is_restarted(quick_run: Any) -> None:
    data, _ = quick_run
    f = {name: figure["value"] for name, figure in _figures(data).items()}
    assert f["messages_lost"] == 0, data["notes"]
    assert f["messages_delivered"] == f["messages_sent"], data["notes"]
    assert f["restarts"] == f["crashes"], data["notes"]
    assert f["escalations"] == 0, data["notes"]
    for name in ("messages_lost", "restarts", "escalations"):
        assert _figures(data)[name]["verdict"] == "pass", (name, data["notes"])


def test_series_are_consistent_and_plotted(quick_run: Any) -> None:
    data, _ = quick_run
    series = {s["name"]: s for s in data["series"]}
    assert set(series) == SERIES
    for s in series.values():
        assert s["x"], s["name"]
        for label, ys in s["lines"].items():
            assert len(ys) == len(s["x"]), (s["name"], label)
            assert all(math.isfinite(y) and y >= 0 for y in ys), (s["name"], label)
    # Every crash of the run came back, so each is in the restart-latency histogram.
    crashes = _figures(data)["crashes"]["value"]
    assert sum(series["restart_latency_histogram"]["lines"]["crashes"]) == crashes
    assert {Path(p).stem for p in data["plots"]} == SERIES
    assert all(Path(p).is_file() for p in data["plots"])


def test_report_names_the_run(quick_run: Any) -> None:
    data, _ = quick_run
    assert data["scenario"] == "crash"
    params = data["parameters"]
    assert params["channels"] == 20 and params["duration"] == 4.0
    assert params["provider"] in ("websocket", "simulated")
    assert any("a crash is" in note for note in data["notes"])
