"""What the fresh-process idle-memory probes share: the reading and the result line.

Design: :mod:`bench.kernel_memory` (Switchboard's actors, trio tasks) and
:mod:`bench.peers_memory` (asyncio tasks, Pykka actors) each run one side in
a process of its own and print one JSON line the parent reads. Both read RSS
the same way (after a full collection) and end the same way: print, flush,
``os._exit(0)`` without tearing the N actors (tasks) down, so the two
modules' figures are comparable by construction.
"""

from __future__ import annotations

import gc
import json
import os
import sys
from typing import NoReturn

import psutil

__all__ = ["finish", "rss"]


def rss() -> int:
    """This process's resident memory in bytes, after a full garbage collection."""
    gc.collect()
    return int(psutil.Process().memory_info().rss)


def finish(side: str, n: int, before: int, after: int) -> NoReturn:
    """Print the result line and end the process at once (no teardown)."""
    result = {
        "side": side,
        "n": n,
        "rss_before": before,
        "rss_after": after,
        "bytes_per_actor": (after - before) / n,
    }
    print(json.dumps(result))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
