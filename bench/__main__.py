"""``python -m bench <scenario> [--json PATH] [--repeat N] [--quick] ...``.

Scenarios register in :data:`SCENARIOS`; adding one is adding its module's
``SCENARIO`` to the tuple below.
"""

from __future__ import annotations

import argparse
import sys
from typing import Final

from . import kernel_scenario
from .report import render_table, write_json
from .scenario import Scenario

SCENARIOS: Final[dict[str, Scenario]] = {s.name: s for s in (kernel_scenario.SCENARIO,)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Switchboard benchmarks: each figure beside the same workload on plain trio.",
    )
    sub = parser.add_subparsers(dest="scenario", required=True, metavar="SCENARIO")
    for scenario in SCENARIOS.values():
        p = sub.add_parser(scenario.name, help=scenario.help, description=scenario.help)
        p.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
        p.add_argument(
            "--repeat",
            type=int,
            metavar="N",
            help="repetitions per workload; medians are reported (default 5, 1 with --quick)",
        )
        p.add_argument(
            "--quick", action="store_true", help="small sizes and one repetition (for tests)"
        )
        scenario.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.repeat is not None and args.repeat < 1:
        print("--repeat must be at least 1", file=sys.stderr)
        return 2
    report = SCENARIOS[args.scenario].run(args)
    print(render_table(report))
    if args.json:
        write_json(report, args.json)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
