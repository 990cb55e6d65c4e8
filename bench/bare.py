"""What the bare-client baselines share (:mod:`bench.ws_bare`, :mod:`bench.http_bare`).

Kept free of the bench's report stack: a baseline runs in a fresh process
holding as little as it can, so that its CPU and memory are the client's.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Iterable
from typing import Any

import trio

__all__ = ["add_load_arguments", "cpu_seconds", "print_lines", "rates", "step_answers"]


def cpu_seconds() -> float:
    """User + system time of this process, as :func:`bench.rig.cpu_seconds` measures the node."""
    return time.process_time()


def rates(text: str) -> list[float]:
    """``--rates``: msgs/s, comma-separated."""
    return [float(r) for r in text.split(",") if r.strip()]


def add_load_arguments(send: argparse.ArgumentParser) -> None:
    """The load options of both ``send`` commands: ``--rates``, ``--duration``, ``--text-size``."""
    send.add_argument("--rates", type=rates, required=True, help="msgs/s, comma-separated")
    send.add_argument("--duration", type=float, required=True, help="seconds per rate")
    send.add_argument("--text-size", type=int, default=40, help="characters per message")


def print_lines(results: Iterable[dict[str, Any]]) -> None:
    """One JSON line per result, as the benches read them."""
    for result in results:
        print(json.dumps(result), flush=True)


def step_answers(
    latencies: list[float], cpu: float, last_answer: float, start: float
) -> dict[str, Any]:
    """A load step's acked count, CPU per acked message, latency percentiles and length."""
    ordered = sorted(latencies)
    acked = len(ordered)
    return {
        "acked": acked,
        "cpu_seconds": cpu,
        "cpu_per_message": cpu / acked if acked else None,
        "p50": _percentile(ordered, 50),
        "p90": _percentile(ordered, 90),
        "p99": _percentile(ordered, 99),
        "elapsed": (last_answer or trio.current_time()) - start,
    }


def _percentile(ordered: list[float], q: float) -> float | None:
    # Nearest rank, as bench.report.percentile (not imported: it loads the report stack).
    if not ordered:
        return None
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]
