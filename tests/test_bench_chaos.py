"""``python -m bench chaos --quick`` runs end to end and its accounting holds.

Performance is measured, not asserted: these check that every figure the
issue asks for is there (messages accepted / delivered / lost, inbound
injected / stored / lost, node restarts, RSS, /health latency), that the
plots' series are consistent, that every fault kind was applied, and the
invariants the scenario exists for, which hold whatever the machine's
speed: nothing sent or injected is lost (a message is delivered or a dead
letter), the node never restarts, every channel is connected at the end.
One run (PostgreSQL, four emulators in their own process, real sockets)
under a generous hang ceiling.
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

from bench.chaos_faults import KINDS

BENCH_TIMEOUT = 420  # seconds: the quick run takes about a minute; only a hang gets near this

FIGURES = {
    "messages_offered": "",
    "messages_accepted": "",
    "messages_delivered": "",
    "messages_dead_lettered": "",
    "messages_lost": "",
    "inbound_injected": "",
    "inbound_stored": "",
    "inbound_lost": "",
    "node_restarts": "",
    "channels_not_connected": "",
    "faults_applied": "",
    "channel_restarts": "",
    "send_retries": "",
    "platform_duplicates": "",
    "rss_warm": "MiB",
    "rss_end": "MiB",
    "rss_peak": "MiB",
    "rss_slope": "MiB/min",
    "health_p50": "ms",
    "health_p99": "ms",
    "health_max": "ms",
    "health_unanswered": "",
    "send_p99": "s",
}
SERIES = {"rss_over_time", "health_latency_over_time"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Any:
    out = tmp_path_factory.mktemp("chaos")
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "chaos", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=BENCH_TIMEOUT,
        check=False,
        cwd=Path(__file__).resolve().parent.parent,
        env={**os.environ, "COLUMNS": "250"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "result.json").read_text(encoding="utf-8"))
    return data, proc.stdout


def _values(data: dict[str, Any]) -> dict[str, float]:
    return {f["name"]: f["value"] for f in data["figures"]}


@pytest.mark.slow
def test_every_figure_is_present_with_its_unit_and_target(quick_run: Any) -> None:
    data, stdout = quick_run
    figures = {f["name"]: f for f in data["figures"]}
    assert set(figures) == set(FIGURES), data["notes"]
    for name, unit in FIGURES.items():
        f = figures[name]
        assert f["unit"] == unit, name
        assert math.isfinite(f["value"]) and f["value"] >= 0, (name, f)
        assert f["label"] in stdout, name
    targeted = {name for name, f in figures.items() if f["target"] is not None}
    assert {"messages_lost", "inbound_lost", "node_restarts", "rss_slope"} <= targeted
    assert {"health_p50", "health_p99", "health_max"} <= targeted


@pytest.mark.slow
def test_nothing_is_lost_and_the_node_never_restarts(quick_run: Any) -> None:
    data, _ = quick_run
    f = _values(data)
    assert f["messages_offered"] > 0 and f["inbound_injected"] > 0, data["notes"]
    assert f["messages_lost"] == 0, data["notes"]
    assert f["messages_delivered"] + f["messages_dead_lettered"] == f["messages_offered"]
    assert f["messages_accepted"] <= f["messages_offered"]
    assert f["inbound_lost"] == 0, data["notes"]
    assert f["inbound_stored"] == f["inbound_injected"], data["notes"]
    assert f["node_restarts"] == 0, data["notes"]
    assert f["channels_not_connected"] == 0, data["notes"]
    assert f["health_unanswered"] == 0, data["notes"]


@pytest.mark.slow
def test_every_fault_kind_was_applied(quick_run: Any) -> None:
    data, _ = quick_run
    assert _values(data)["faults_applied"] >= len(KINDS), data["notes"]
    faults = next(note for note in data["notes"] if note.startswith("Faults: "))
    for kind in KINDS:
        assert f"{kind} x" in faults, (kind, faults)
    assert not any(note.startswith("fault not applied") for note in data["notes"]), data["notes"]


@pytest.mark.slow
def test_series_are_consistent_and_plotted(quick_run: Any) -> None:
    data, _ = quick_run
    series = {s["name"]: s for s in data["series"]}
    assert set(series) == SERIES
    for s in series.values():
        assert s["x"], s["name"]
        for label, ys in s["lines"].items():
            assert len(ys) == len(s["x"]), (s["name"], label)
            assert all(y is None or (math.isfinite(y) and y >= 0) for y in ys), s["name"]
        assert len(s["marks"]) > len(KINDS), s["name"]  # every fault, and the load's end
    assert {Path(p).stem for p in data["plots"]} == SERIES
    assert all(Path(p).is_file() for p in data["plots"])
