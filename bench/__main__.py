"""``python -m bench <scenario | file.toml> [options]``, ``--list``, ``--compare A B``.

Design: the first argument picks a scenario file (a name under
``bench/scenarios/`` or a path); the file names the registered scenario
that runs it, and that scenario's parameters class gives the options, so
the parser is built in two steps. The harness owns everything around a
run: the output directory, the live progress, a watchdog that ends a run
which overstays its time limit, the plots, the JSON result and the table.
Adding a scenario is adding its module to :data:`SCENARIOS`.

Optional packages (the ``bench`` extra: matplotlib for the plots, rich for
the terminal and the table) are checked before a run starts, and
``result.json`` is written before the plots are drawn, so a missing
package or a failing plot never costs a run its figures. (Pykka is not
checked: the peers scenario measures the peers it can import and says
which it could not.)

Exit codes: 0 done (targets are reported, not enforced, unless ``--check``),
1 ``--check`` and a target failed, 2 bad input (file, option, unreachable
target, a missing optional package), 3 the watchdog ended an overdue run,
130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import importlib.util
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import attrs
import psutil

from .progress import Progress
from .report import Report, Verdict, read_json, render_compare, render_table, write_json
from .scenario import (
    SCENARIO_DIR,
    RunContext,
    Scenario,
    ScenarioError,
    add_param_options,
    find_run_file,
    load_run_file,
    param_overrides,
    resolve_params,
)

# Registered scenarios and the module whose ``SCENARIO`` runs each; a module is
# imported only when its scenario runs (peers loads asyncio and Pykka workloads).
SCENARIOS: Final[dict[str, str]] = {
    "kernel": "bench.kernel_scenario",
    "channels": "bench.channels",
    "storm": "bench.storm",
    "crash": "bench.crash",
    "peers": "bench.peers",
    "target": "bench.target",
    "cluster": "bench.cluster",
    "scrape": "bench.scrape",
    "rtt": "bench.rtt",
    "checkpoints": "bench.checkpoints",
    "chaos": "bench.chaos",
}
WATCHDOG_GRACE: Final = 30.0  # seconds past the time limit before the watchdog ends a run
RESULTS_DIR: Final = Path("bench-results")
PROG_VARIABLE: Final = "SWITCHBOARD_BENCH_PROG"  # how the harness was called, for --help
BENCH_EXTRA: Final = "pip install -e '.[bench]'"


def prog() -> str:
    """How the harness was called: ``python -m bench`` or ``switchboard bench``."""
    return os.environ.get(PROG_VARIABLE) or "python -m bench"


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog(),
        description=(
            "Switchboard's benchmark and load-test harness. Run a scenario by name "
            f"(a file in {SCENARIO_DIR}) or give the path of your own scenario file."
        ),
        epilog=f"`{prog()} <scenario> --help` lists that scenario's options.",
    )
    parser.add_argument("scenario", nargs="?", help="scenario name or .toml file")
    parser.add_argument("--list", action="store_true", help="list the scenario files")
    parser.add_argument(
        "--compare",
        nargs=2,
        metavar=("A.json", "B.json"),
        help="print B's figures against A's (ratios B/A) and exit",
    )
    return parser


def build_parser(scenario: Scenario, stem: str) -> argparse.ArgumentParser:
    """The options of one scenario run: the common ones, then its parameters."""
    parser = argparse.ArgumentParser(prog=f"{prog()} {stem}", description=scenario.help)
    parser.add_argument("--quick", action="store_true", help="the file's [quick] sizes (tests)")
    parser.add_argument(
        "--out",
        metavar="DIR",
        type=Path,
        help=f"where result.json and the plots go (default {RESULTS_DIR}/{stem}-<time>/)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the result JSON here")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument(
        "--time-limit", type=float, metavar="S", help="seconds the run may take (default: file's)"
    )
    parser.add_argument(
        "--check", action="store_true", help="exit 1 when a figure misses its target"
    )
    parser.add_argument(
        "--target",
        metavar="URL",
        help="load-test mode: drive a running deployment's ops endpoint instead of a local node",
    )
    parser.add_argument(
        "--token",
        metavar="TOKEN",
        help="the deployment's API token (default: $SWITCHBOARD_API_TOKEN)",
    )
    parser.add_argument(
        "--port-base",
        type=int,
        default=0,
        metavar="PORT",
        help="the first port of the node and emulators the run starts, so that two runs "
        "can share a machine (default: any free ports)",
    )
    add_param_options(parser, scenario.params)
    return parser


def _list() -> int:
    for path in sorted(SCENARIO_DIR.glob("*.toml")):
        try:
            run_file = load_run_file(path)
        except ScenarioError as exc:
            print(f"{path.stem:<16} (unreadable: {exc})")
            continue
        print(f"{path.stem:<16} [{run_file.scenario}] {run_file.description}")
    return 0


def _compare(a: str, b: str) -> int:
    try:
        before, after = read_json(a), read_json(b)
    except (OSError, ValueError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    print(render_compare(before, after, names=(a, b)))
    return 0


def _end_now(code: int) -> None:
    """Exit at once, taking the run's child processes (emulators) along."""
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            child.kill()
    os._exit(code)


def _watchdog(limit: float, progress: Progress) -> threading.Timer:
    def overdue() -> None:
        progress.note(
            f"the run is {WATCHDOG_GRACE:.0f} s past its time limit ({limit:.0f} s): ending it "
            "(raise --time-limit if the scenario needs longer)"
        )
        _end_now(3)

    timer = threading.Timer(limit + WATCHDOG_GRACE, overdue)
    timer.daemon = True
    return timer


def missing_packages(*, plots: bool, terminal: bool) -> list[str]:
    """The optional packages a run needs and cannot import, with what each is for.

    (Pykka is not among them: the peers scenario measures the peers it can
    import and says which it could not.)
    """
    wanted: dict[str, str] = {}
    if plots:
        wanted["matplotlib"] = "the plots (or --no-plots)"
    if terminal:
        wanted["rich"] = "progress on a terminal"
    wanted.setdefault("rich", "the summary table")
    return [f"{name} ({why})" for name, why in wanted.items() if not _importable(name)]


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a broken install
        return False


def load_scenario(name: str, *, where: str) -> Scenario:
    """The registered scenario ``name``.

    Raises:
        ScenarioError: not registered.
    """
    module = SCENARIOS.get(name)
    if module is None:
        raise ScenarioError(
            f"{where}: scenario = {name!r} is not registered; known: {', '.join(SCENARIOS)}"
        )
    scenario: Scenario = importlib.import_module(module).SCENARIO
    return scenario


def run_scenario(name_or_path: str, argv: Sequence[str]) -> int:
    """Parse the scenario's options, run it and write its results."""
    run_file = load_run_file(find_run_file(name_or_path))
    scenario = load_scenario(run_file.scenario, where=str(run_file.path))
    args = build_parser(scenario, run_file.stem).parse_args(argv)
    params = resolve_params(scenario, run_file, quick=args.quick, overrides=param_overrides(args))
    if not 0 <= args.port_base <= 65535 - 16:
        raise ScenarioError(f"--port-base: expected a port from 1 to 65519, got {args.port_base}")
    missing = missing_packages(plots=not args.no_plots, terminal=sys.stderr.isatty())
    if missing:
        raise ScenarioError(
            f"missing {', '.join(missing)}: install the bench extra ({BENCH_EXTRA}); "
            "nothing was run"
        )
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = args.out or RESULTS_DIR / f"{run_file.stem}-{stamp}"
    out_dir.mkdir(parents=True, exist_ok=True)
    limit = args.time_limit or run_file.time_limit
    if limit <= 0:
        raise ScenarioError(f"--time-limit: expected a positive number of seconds, got {limit}")
    progress = Progress(run_file.stem)
    ctx = RunContext(
        progress=progress,
        time_limit=limit,
        quick=args.quick,
        out_dir=out_dir,
        target=args.target,
        token=args.token or os.environ.get("SWITCHBOARD_API_TOKEN") or None,
        port_base=args.port_base,
    )
    watchdog = _watchdog(limit, progress)
    watchdog.start()
    signal.signal(signal.SIGTERM, lambda signum, frame: _end_now(128 + signum))
    try:
        report = scenario.run(params, ctx)
    finally:
        watchdog.cancel()
        progress.close()
    report = attrs.evolve(
        report, parameters={"file": str(run_file.path), "time_limit": limit, **report.parameters}
    )
    # The figures are safe on disk before anything else can fail.
    write_json(report, out_dir / "result.json")
    if args.json:
        write_json(report, args.json)
    drawn = _draw(report, out_dir, skip=args.no_plots, progress=progress)
    if drawn is not report:  # with the plots' paths
        report = drawn
        write_json(report, out_dir / "result.json")
        if args.json:
            write_json(report, args.json)
    print(render_table(report))
    print(f"\nwrote {out_dir / 'result.json'}" + (f" and {args.json}" if args.json else ""))
    failed = [f.name for f in report.figures if f.verdict is Verdict.FAIL]
    return 1 if args.check and failed else 0


def _draw(report: Report, out_dir: Path, *, skip: bool, progress: Progress) -> Report:
    if skip or not report.series:
        return report
    from .plots import draw_all

    subtitle = f"{report.scenario} {report.started}"
    try:
        paths = draw_all(report.series, out_dir, subtitle=subtitle)
    except Exception as exc:  # a plot is not worth the run: the JSON is written
        print(f"bench: the plots failed ({type(exc).__name__}: {exc})", file=sys.stderr)
        return report
    return attrs.evolve(report, plots=[str(p) for p in paths])


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-"):
        name, rest = argv[0], argv[1:]
        try:
            return run_scenario(name, rest)
        except ScenarioError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("bench: interrupted", file=sys.stderr)
            return 130
    args = _top_parser().parse_args(argv)
    if args.compare:
        return _compare(*args.compare)
    if args.list:
        return _list()
    _top_parser().print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
