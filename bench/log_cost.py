"""What one log line costs: ``python -m bench.log_cost``.

Times ``logger.info`` through the node's own handler
(:func:`runtime.telemetry.configure_logging`) into an in-memory stream, for
the text and JSON formats, with the context a channel's line carries and a
few facts as fields, and with secrets configured (the scrubbing is part of
the cost). Prints the median of several runs, in microseconds per line.
"""

from __future__ import annotations

import io
import logging
import statistics
import sys
import time
from typing import Final

from runtime.config.model import LoggingConfig
from runtime.telemetry import configure_logging, log_context

LINES: Final = 20_000  # per run
RUNS: Final = 7


def per_line(fmt: str, lines: int = LINES) -> float:
    """Microseconds per line for ``fmt`` (``text`` or ``json``)."""
    stream = io.StringIO()
    handle = configure_logging(
        LoggingConfig(level="info", format=fmt),  # type: ignore[arg-type]
        node_id="bench",
        secrets=["s3cr3t-token-value", "another-secret-value"],
        stream=stream,
    )
    log = logging.getLogger("switchboard.events")
    extra = {
        "switchboard.peer": "42",
        "user.id": "42",
        "switchboard.message_id": "42:1",
        "switchboard.idempotency_key": "k-1",
    }
    try:
        with log_context(channel="telegram-local", tenant="demo", provider="telegram"):
            began = time.perf_counter()
            for i in range(lines):
                log.info("inbound message %s from %s: %r", i, "42", "hi", extra=extra)
            elapsed = time.perf_counter() - began
    finally:
        handle.close()
    return elapsed / lines * 1e6


def main() -> int:
    for fmt in ("text", "json"):
        per_line(fmt, 1000)  # warm-up
        runs = [per_line(fmt) for _ in range(RUNS)]
        print(
            f"{fmt}: {statistics.median(runs):.1f} us per line (median of {RUNS} runs of "
            f"{LINES:,}; min {min(runs):.1f}, max {max(runs):.1f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
