"""Instructions counted under ``valgrind --tool=callgrind``: what :mod:`bench.send_cost`
and :mod:`bench.connect_cost` share.

A counted figure comes from two runs of one command that differ only in
how much work they do (sends, connects): the difference of their totals
over the work between them, so that start-up cancels out. A run must say
on its last JSON line how much it did; one that fails, or did less than
asked, fails the count instead of giving a figure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from typing import Final

__all__ = ["collected", "counted", "per_unit", "require_valgrind", "run_counted"]

RUN_LIMIT: Final = 1_800.0  # seconds one run under valgrind may take
_COLLECTED: Final = re.compile(r"Collected : (\d+)")


def require_valgrind() -> None:
    """Refuse to count without valgrind, saying what is missing.

    Raises:
        SystemExit: valgrind is not installed.
    """
    if shutil.which("valgrind") is None:
        raise SystemExit(
            "--instructions needs valgrind (apt install valgrind), which is not installed"
        )


def per_unit(small: int, big: int, between: int, unit: str) -> int:
    """The instructions of one ``unit`` of work: two runs' totals apart, over the units between.

    Raises:
        ValueError: the runs did not differ by any work.
    """
    if between <= 0:
        raise ValueError(f"the runs must differ by some {unit}, not {between}")
    return round((big - small) / between)


def collected(valgrind_output: str) -> int:
    """The total instructions a ``callgrind`` run printed ("Collected : N").

    Raises:
        ValueError: the output holds no such line (valgrind failed; its output is quoted).
    """
    found = _COLLECTED.search(valgrind_output)
    if found is None:
        raise ValueError(f"no instruction count in valgrind's output: {valgrind_output[-800:]!r}")
    return int(found.group(1))


def counted(output: str, returncode: int, *, field: str, expected: int, what: str) -> int:
    """The instructions of a counted run whose last JSON line says ``field`` was ``expected``.

    ``what`` names the work in the error ("sends made").

    Raises:
        ValueError: the run failed, or did not say it did all of it (its output is quoted).
    """
    lines = [line for line in output.splitlines() if line.startswith("{")]
    try:
        done = json.loads(lines[-1]).get(field) if lines else None
    except (ValueError, AttributeError):  # a line that only starts like JSON
        done = None
    if returncode != 0 or done != expected:
        raise ValueError(
            f"the counted run failed (exit {returncode}, {done} of {expected} {what}): "
            f"{output[-1500:]}"
        )
    return collected(output)


def run_counted(
    module: str, arguments: Sequence[str], *, field: str, expected: int, what: str
) -> int:
    """Run ``python -m module arguments`` under callgrind; its instructions (see :func:`counted`).

    Its hash seed is fixed, so that two runs lay out their dicts and sets alike.
    """
    command = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={os.devnull}",
        sys.executable,
        "-m",
        module,
        *arguments,
    ]
    environment = {**os.environ, "PYTHONHASHSEED": "0"}
    with tempfile.TemporaryFile("w+") as log:
        done = subprocess.run(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment,
            check=False,
            timeout=RUN_LIMIT,
        )
        log.seek(0)
        output = log.read()
    return counted(output, done.returncode, field=field, expected=expected, what=what)
