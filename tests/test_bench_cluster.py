"""``python -m bench cluster --quick --faults 0`` end to end: placement, the leases' cost, moves.

Performance is measured, not asserted: these check the invariants that hold
at any speed (a leave moves none of the others' channels, a join moves about
a fair share, every node is the same ring), that the cost figures come
from Redis's own counters (renewals happened; script calls are few beside
the leases held), and that the moves run's join, drain, kill -9 and restart
of real nodes under load lose no send and miss no user message, never hold
a channel twice, and spend no Discord identify on a planned move. The fault
run is ``tests/test_cluster_proof.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_TIMEOUT = 900  # seconds; the quick run takes ~100 s, more on a loaded machine


def test_cluster_quick_placement_lease_cost_and_moves(tmp_path: Path) -> None:
    args = ["cluster", "--quick", "--faults", "0", "--out", str(tmp_path), "--no-plots"]
    proc = subprocess.run(
        [sys.executable, "-m", "bench", *args],
        capture_output=True,
        text=True,
        timeout=BENCH_TIMEOUT,
        check=False,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "result.json").read_text(encoding="utf-8"))
    figures = {f["name"]: f for f in data["figures"]}
    assert figures["placement_leave_movement"]["value"] == 0
    assert 0.5 < figures["placement_join_movement"]["value"] < 1.5
    assert 1.0 <= figures["placement_balance"]["value"] < 1.5
    lookup = figures["placement_lookup"]
    assert lookup["value"] > 0 and lookup["baseline"] > 0
    # 2,000 leases at a 10 s TTL, renewed every 3.3 s in batches of 500: a few
    # script calls a second (plus heartbeats), thousands of renewals inside them.
    commands = figures["redis_commands_per_10k"]["value"]
    inside = figures["redis_script_ops_per_10k"]["value"]
    assert 0 < commands < 200, commands
    assert inside > 20 * commands, (inside, commands)
    assert "ownership_overlaps" not in figures  # --faults 0
    # The moves run: every event moved channels, and nothing was lost on the way.
    for event in ("join", "drain", "kill", "restart"):
        assert figures[f"moves_{event}_moved"]["value"] > 0, event
    for name in ("moves_lost", "moves_inbound_missed", "moves_overlaps"):
        assert figures[name]["value"] == 0, (name, data["notes"])
    assert figures["moves_join_identifies"]["value"] == 0  # planned moves resume
    assert figures["moves_drain_identifies"]["value"] == 0
    forwarded = figures["moves_forwarded_p50"]
    assert forwarded["value"] > 0 and forwarded["baseline"] > 0  # both kinds were sent
    assert figures["moves_delivered_rate"]["value"] > 0
