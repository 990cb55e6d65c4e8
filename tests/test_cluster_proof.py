"""The proof of single ownership: 3 ``switchboard run`` nodes, 300 channels, randomised faults.

Judged by the emulators: zero overlaps (two live connections of one bot at
one instant) and, after each fault, every channel connected again (the
rig waits at most the lease TTL + 65 s: a hang ceiling, not a figure). How
fast they come back is a measurement, not an assertion: ``python -m bench
cluster`` reports the longest a channel was dark in a fault against the
target of lease TTL + 5 s (``outage_max``); here each fault's times are
printed. The seed is printed;
set ``SWITCHBOARD_TEST_SEED`` to replay a run, ``SWITCHBOARD_PROOF_FAULTS``
to run more or fewer faults.
"""

from __future__ import annotations

import os
from pathlib import Path

import trio

from bench.cluster_rig import RigParams, open_cluster_rig
from tests.test_store import PG_DSN

SEED = int(os.environ.get("SWITCHBOARD_TEST_SEED", "20261204"))
FAULTS = int(os.environ.get("SWITCHBOARD_PROOF_FAULTS", "25"))


async def test_every_channel_runs_on_exactly_one_node_through_randomised_faults(
    tmp_path: Path,
) -> None:
    print(f"cluster proof: seed {SEED}, {FAULTS} faults (SWITCHBOARD_TEST_SEED replays it)")
    params = RigParams(seed=SEED, pg_dsn=PG_DSN, workdir=tmp_path)
    with trio.fail_after(60.0 + FAULTS * 75.0):
        async with open_cluster_rig(params) as rig:
            for n in range(FAULTS):
                record = await rig.fault()  # raises if the channels do not come back
                where = record.node or "-"
                print(
                    f"fault {n}: {record.kind} {where}: longest dark {record.outage:.1f} s "
                    f"({record.dark}), settled in {record.recovery:.1f} s"
                )
                assert await rig.overlaps() == 0, (n, record, await rig.overlap_examples())
            summary = await rig.summary()
    print(summary)
    assert summary["overlaps"] == 0
    assert summary["faults"] == FAULTS
    assert all(count > 0 for count in summary["by_kind"].values()) or FAULTS < 20
