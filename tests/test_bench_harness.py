"""The harness around every scenario: files, options, progress, plots, --compare.

These run in-process on small inputs; the scenarios themselves have their
own tests (``test_bench_<scenario>.py``) that run them end to end.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import attrs
import pytest

from bench.__main__ import build_parser, load_scenario, main
from bench.plots import draw_all
from bench.progress import Progress
from bench.report import (
    Figure,
    Report,
    Series,
    Target,
    Verdict,
    machine_info,
    read_json,
    write_json,
)
from bench.scenario import (
    ScenarioError,
    find_run_file,
    load_run_file,
    param_overrides,
    resolve_params,
)

ROOT = Path(__file__).resolve().parent.parent


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mine.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_every_shipped_scenario_file_loads_and_resolves() -> None:
    files = sorted((ROOT / "bench" / "scenarios").glob("*.toml"))
    assert {p.stem for p in files} >= {"kernel", "channels", "storm", "crash", "peers", "target"}
    for path in files:
        run_file = load_run_file(path)
        scenario = load_scenario(run_file.scenario, where=str(path))
        for quick in (False, True):
            params = resolve_params(scenario, run_file, quick=quick, overrides={})
            assert isinstance(params, scenario.params), path
        # --help renders every parameter's help (argparse formats it with %:
        # chaos's "30% websocket" raised ValueError out of --help)
        assert "scenario parameters" in build_parser(scenario, path.stem).format_help(), path


def test_a_users_file_is_checked_with_every_problem_and_its_place(tmp_path: Path) -> None:
    path = _file(
        tmp_path,
        'scenario = "channels"\ntime_limt = 5\n[params]\nchanels = 5\nduration = "long"\n',
    )
    with pytest.raises(ScenarioError) as raised:
        run_file = load_run_file(path)
    assert "time_limt: unknown key; did you mean 'time_limit'?" in str(raised.value)
    path = _file(tmp_path, 'scenario = "channels"\n[params]\nchanels = 5\n')
    run_file = load_run_file(path)
    scenario = load_scenario("channels", where="test")
    with pytest.raises(
        ScenarioError, match=r"\[params\] chanels: unknown parameter; did you mean 'channels'\?"
    ):
        resolve_params(scenario, run_file, quick=False, overrides={})
    path = _file(tmp_path, 'scenario = "channels"\n[params]\nduration = "long"\nchannels = 0\n')
    with pytest.raises(ScenarioError) as raised:
        resolve_params(scenario, load_run_file(path), quick=False, overrides={})
    assert "expected float, got 'long' @ params.duration" in str(raised.value)
    path = _file(tmp_path, 'scenario = "nope"\n')
    with pytest.raises(ScenarioError, match="'nope' is not registered"):
        load_scenario(load_run_file(path).scenario, where=str(path))


def test_options_override_quick_which_overrides_the_file() -> None:
    run_file = load_run_file(find_run_file("channels"))
    scenario = load_scenario("channels", where="test")
    args = build_parser(scenario, "channels").parse_args(
        [
            *("--quick", "--rates", "100,300", "--no-limits"),
            *("--provider", "telegram", "--inbound-rate", "0"),
        ]
    )
    params = resolve_params(scenario, run_file, quick=True, overrides=param_overrides(args))
    assert params.rates == [100.0, 300.0]  # the option
    assert params.limits is False
    assert params.provider == "telegram"
    assert params.channels == run_file.quick["channels"]  # [quick]
    assert params.text_size == run_file.params["text_size"]  # [params]


def test_bad_input_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["nosuch"]) == 2
    assert "no scenario 'nosuch'" in capsys.readouterr().err
    assert main(["channels", "--quick", "--channels", "0", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "channels: expected at least 1, got 0" in err
    bad = _file(tmp_path, "this is not toml")
    assert main([str(bad)]) == 2
    assert "not valid TOML" in capsys.readouterr().err


def test_list_names_every_scenario_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    for name in ("kernel", "channels", "channels-10k", "storm", "crash", "peers", "target"):
        assert name in out


def _report(**values: float) -> Report:
    figures = [
        Figure.single(
            name="rate", label="rate", unit="msgs/s", value=values["rate"], better="higher"
        ),
        Figure.single(
            name="p99",
            label="p99",
            unit="ms",
            value=values["p99"],
            better="lower",
            target=Target(applies_to="value", op="<=", threshold=10, text="< 10 ms"),
        ),
    ]
    return Report(
        scenario="channels",
        started="2026-11-22T00:00:00+00:00",
        duration=1.0,
        parameters={"channels": 10},
        machine=machine_info(),
        load_average={},
        section_seconds={},
        figures=figures,
        notes=[],
    )


def test_compare_reads_both_files_and_judges_each_figure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    write_json(_report(rate=10_000, p99=8.0), a)
    write_json(_report(rate=12_000, p99=16.0), b)
    assert read_json(a).figure("p99").verdict is Verdict.PASS
    assert main(["--compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    rate_line = next(line for line in out.splitlines() if line.startswith("rate"))
    p99_line = next(line for line in out.splitlines() if line.startswith("p99"))
    assert "1.20x" in rate_line and "better by 20%" in rate_line
    assert "2.00x" in p99_line and "WORSE by 100%" in p99_line
    (tmp_path / "junk.json").write_text(json.dumps({"scenario": 1}), encoding="utf-8")
    assert main(["--compare", str(a), str(tmp_path / "junk.json")]) == 2
    assert "not a bench result file" in capsys.readouterr().err


def test_progress_in_a_log_is_plain_lines_with_each_phases_final_state() -> None:
    log = io.StringIO()
    progress = Progress("demo", stream=log, interactive=False)
    progress.phase("load", 10, "steps")
    progress.update(3)  # the first update draws; the next ones wait LOG_INTERVAL
    progress.update(10, sent=1000)
    progress.note("capped at 9,800 channels")
    progress.phase("drain")
    progress.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and "\x1b" not in log.getvalue()
    assert lines[0] == "[demo] load"
    assert "3/10 steps" in lines[1]
    assert lines[2] == "[demo] capped at 9,800 channels"
    # The phase's final state is drawn when it ends, not lost.
    assert "100% 10/10 steps" in lines[3] and "sent=1,000" in lines[3]
    assert lines[4] == "[demo] drain"


def test_plots_are_pngs_and_a_ragged_series_is_refused(tmp_path: Path) -> None:
    good = Series(
        name="latency",
        title="t",
        x_label="s",
        y_label="ms",
        x=[0.0, 1.0, 2.0],
        lines={"p50": [1.0, 2.0, 1.5], "p99": [3.0, 4.0, 3.5]},
    )
    bars = Series(
        name="peers",
        title="t",
        x_label="",
        y_label="µs",
        x=[0.0, 1.0],
        lines={"median": [1.0, 2.0]},
        kind="bar",
        categories=["switchboard", "trio"],
    )
    paths = draw_all([good, bars], tmp_path)
    assert [p.name for p in paths] == ["latency.png", "peers.png"]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ragged = attrs.evolve(good, lines={"p50": [1.0]})
    with pytest.raises(ValueError, match="line 'p50' has 1 values for 3 x"):
        draw_all([ragged], tmp_path)


def test_switchboard_bench_is_python_m_bench() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "bench", "--list"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert "storm" in proc.stdout
