"""``python -m bench checkpoints --quick`` runs end to end and its figures add up.

Performance goals are measured, not asserted: this checks what holds at any
speed (every figure there, finite, with its unit; every round wrote every
channel; no channel written more than once a second; the send path's
checkpoints written with them on and not with them off), never how fast.
The write phase uses real SQLite and PostgreSQL (``SWITCHBOARD_TEST_PG``).
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest

from bench.__main__ import load_scenario
from bench.checkpoints import CheckpointsParams
from bench.checkpoints_write import split_cost
from bench.scenario import ScenarioError, load_run_file, resolve_params

ROOT = Path(__file__).resolve().parent.parent
BENCH_TIMEOUT = 300  # seconds: the quick run takes ~20 s alone, more on a loaded machine
BACKENDS = ("sqlite", "postgres")
WRITE_FIGURES = {
    "rows_s": "rows/s",
    "cpu_us": "µs",
    "round_ms": "ms",
    "stall_ms": "ms",
    "writes_per_channel_s": "1/s",
    "rows_written": "rows",
}
FIGURES = {
    **{f"{name}_{b}": unit for b in BACKENDS for name, unit in WRITE_FIGURES.items()},
    "export_us": "µs",
    "encode_us": "µs",
    "encode_again_us": "µs",
    "export_next_us": "µs",
    "encode_next_us": "µs",
    "state_bytes": "B",
    "send_cpu_us": "µs",
    "send_rate": "msgs/s",
    "send_stored_on": "rows",
    "send_stored_off": "rows",
}


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench") / "checkpoints"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "checkpoints", "--quick", "--no-plots", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=BENCH_TIMEOUT,
        check=False,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "250"},
    )
    assert proc.returncode == 0, proc.stderr
    data: dict[str, Any] = json.loads((out / "result.json").read_text(encoding="utf-8"))
    return data


def _figures(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["name"]: f for f in data["figures"]}


def test_every_figure_is_there_with_its_unit(quick_run: dict[str, Any]) -> None:
    figures = _figures(quick_run)
    assert set(figures) == set(FIGURES), quick_run["notes"]
    for name, unit in FIGURES.items():
        f = figures[name]
        assert f["unit"] == unit, name
        assert _finite(f["value"]) and f["value"] >= 0, (name, f["value"])
        assert f["samples"] and all(_finite(x) for x in f["samples"]), name


def test_every_round_writes_every_channel_and_none_twice_a_second(
    quick_run: dict[str, Any],
) -> None:
    params = quick_run["parameters"]
    channels, rounds = params["channels"], params["rounds"]
    figures = _figures(quick_run)
    for b in BACKENDS:
        written = figures[f"rows_written_{b}"]
        assert written["value"] == channels * rounds, b
        assert written["samples"] == [channels] * rounds, b
        assert len(figures[f"cpu_us_{b}"]["samples"]) == rounds, b
        assert len(figures[f"stall_ms_{b}"]["samples"]) == rounds, b
        per_channel = figures[f"writes_per_channel_s_{b}"]
        assert 0 < per_channel["value"] <= 1.0, (b, per_channel)
        assert per_channel["verdict"] == "pass", b
        assert all(0 < x <= 1.0 for x in per_channel["samples"]), b
        assert figures[f"rows_s_{b}"]["value"] > 0, b
        assert figures[f"cpu_us_{b}"]["value"] > 0, b


def test_what_was_written_reads_back(quick_run: dict[str, Any]) -> None:
    read_back = [
        re.search(r"(\d+)/(\d+) sampled channels read back", note) for note in quick_run["notes"]
    ]
    counts = [(int(m[1]), int(m[2])) for m in read_back if m is not None]
    assert len(counts) == len(BACKENDS), quick_run["notes"]
    for ok, sampled in counts:
        assert sampled > 0 and ok == sampled


def test_the_send_path_compares_checkpoints_on_with_off(quick_run: dict[str, Any]) -> None:
    params = quick_run["parameters"]
    figures = _figures(quick_run)
    cpu = figures["send_cpu_us"]
    for key in ("value", "baseline", "ratio"):
        assert _finite(cpu[key]) and cpu[key] > 0, (key, cpu[key])
    assert cpu["ratio"] == pytest.approx(cpu["value"] / cpu["baseline"])
    assert len(cpu["samples"]) == len(cpu["baseline_samples"]) == params["repeat"]
    assert cpu["target"] is not None and cpu["verdict"] in ("pass", "fail")
    # On: the writer wrote every channel that sent while the node ran. Off: no round came.
    assert figures["send_stored_on"]["samples"] == [params["send_channels"]] * params["repeat"]
    assert figures["send_stored_off"]["samples"] == [0] * params["repeat"]


def test_the_scenario_file_keeps_10k_channels_and_rejects_an_unknown_backend() -> None:
    run_file = load_run_file(ROOT / "bench" / "scenarios" / "checkpoints.toml")
    scenario = load_scenario(run_file.scenario, where="test")
    params = resolve_params(scenario, run_file, quick=False, overrides={})
    assert isinstance(params, CheckpointsParams)
    assert params.channels == 10_000 and params.backends == ["sqlite", "postgres"]
    with pytest.raises(ScenarioError, match="backends"):
        resolve_params(scenario, run_file, quick=True, overrides={"backends": ["redis"]})


def test_the_split_is_timed_under_the_node_s_collector_policy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Under CPython's thresholds the split timed the full collections of a
    # 10,000-channel heap too, which a node's policy does not run.
    import gc

    import actors.channel.durable
    from runtime.collection import YOUNG_THRESHOLD

    real = actors.channel.durable.export_state
    during: list[tuple[int, int]] = []

    def watched(*args: Any, **kwargs: Any) -> Any:
        during.append((gc.get_threshold()[0], gc.get_freeze_count()))
        return real(*args, **kwargs)

    monkeypatch.setattr(actors.channel.durable, "export_state", watched)
    before = gc.get_threshold()
    split = split_cost(20, peers=2, seen=3, sent=3)
    assert len(during) == 40  # the first checkpoint of each channel, then the next
    assert all(young == YOUNG_THRESHOLD and frozen > 0 for young, frozen in during)
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0  # put back, thawed
    for value in attrs.astuple(split):
        assert _finite(value) and value >= 0


async def test_the_write_rounds_run_under_the_policy_and_leave_it_on_a_failure(
    autojump_clock: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gc

    from bench import checkpoints_write
    from bench.progress import Progress
    from runtime.collection import YOUNG_THRESHOLD

    rounds: list[tuple[int, int]] = []
    real_flush = checkpoints_write._TimedWriter.flush

    async def watched(self: Any) -> None:
        rounds.append((gc.get_threshold()[0], gc.get_freeze_count()))
        if len(rounds) == 3:
            raise RuntimeError("the store broke")
        await real_flush(self)

    monkeypatch.setattr(checkpoints_write._TimedWriter, "flush", watched)
    before = gc.get_threshold()
    with pytest.raises(BaseException) as raised:  # (in the nursery's group)
        await checkpoints_write.measure_writes(
            "sqlite",
            channels=5,
            rounds=3,
            interval=1.0,
            peers=1,
            seen=1,
            sent=1,
            workdir=tmp_path,
            pg_dsn="",
            progress=Progress("test", stream=io.StringIO(), interactive=False),
        )
    assert "the store broke" in repr(raised.value)
    assert len(rounds) == 3
    assert all(young == YOUNG_THRESHOLD and frozen > 0 for young, frozen in rounds)
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
