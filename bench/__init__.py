"""Switchboard's benchmark and load-test harness: ``python -m bench <scenario> ...``.

A run is described by a TOML file under ``bench/scenarios/`` (or a user's
own); options override it. The harness (:mod:`bench.__main__`) shows live
progress, prints a summary table, writes ``result.json`` (scenario,
parameters, machine, every figure with its unit) and PNG plots, and compares
two results with ``--compare A.json B.json``.

Scenarios:
    kernel: the actor kernel beside plain trio (:mod:`bench.kernel_scenario`).
    channels: N live channels against emulators over real sockets: connects/s,
        memory per channel, throughput and latency under load (:mod:`bench.channels`).
    storm: every connection dropped at once: recovery, jitter (:mod:`bench.storm`).
    crash: channel actors crashing under load: restarts, nothing lost
        (:mod:`bench.crash`).
    peers: the same workloads on Switchboard, trio, asyncio and Pykka
        (:mod:`bench.peers`).
    target: load-test a running deployment through its ops API
        (:mod:`bench.target`).

Nothing in the product imports this package.
"""
