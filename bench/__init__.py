"""Switchboard's benchmark harness: ``python -m bench <scenario> ...``.

Each scenario measures our side beside the same workload written directly on
trio, in the same process and run, and prints a table (and optionally writes
JSON) with both figures, their ratio and the target each one is held to.

Scenarios:
    kernel: the actor kernel (ask, fan-in, spawn/stop, idle memory,
        crash-to-restarted latency); see :mod:`bench.kernel`.

Nothing in the product imports this package.
"""
