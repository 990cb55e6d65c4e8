"""The ``switchboard`` command line.

A thin shell over the library: each sub-command parses its arguments and
calls the same public API an embedding program would use. Exit codes: 0 on
success, 2 for bad usage or bad input.
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib.metadata import PackageNotFoundError, version

__all__ = ["main"]


def _version() -> str:
    try:
        return version("switchboard-runtime")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _bench(argv: list[str]) -> int:
    # `switchboard bench ...` is `python -m bench ...`; run it as its own
    # program so nothing here imports the benchmark package.
    os.execv(sys.executable, [sys.executable, "-m", "bench", *argv])
    return 0  # not reached


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="switchboard",
        description="Switchboard: supervised, long-lived connections to chat platforms.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser(
        "bench",
        help="run a benchmark scenario (same as `python -m bench`)",
        add_help=False,
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``switchboard`` console script."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "bench":
        return _bench(argv[1:])
    parser = build_parser()
    parser.parse_args(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
