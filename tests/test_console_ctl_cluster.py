"""``switchboard ctl`` and the cluster's controls against a real ``switchboard run`` node.

One node of a cluster (real Redis at ``SWITCHBOARD_TEST_REDIS``, a key
prefix of the test's own, a SQLite store) as a subprocess, and ``ctl`` as
an operator runs it: each control under the wrong scope (exit 3), the
right one (0), a live holder's lease (2: confirmation required), and
``cluster.stats`` with a member that does not answer (4: partial).
"""

from __future__ import annotations

import secrets
from pathlib import Path

import trio

from runtime.cluster.membership import Membership
from tests.test_cluster_redis import REDIS_URL, redis

from .test_cli_run import run_node
from .test_console_ctl import TOKENS, ctl

CEILING = 120.0  # real seconds; only a hang gets near it


def deployment(tmp_path: Path, prefix: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(
        f"""
[node]
id = "ctl-n1"
drain_deadline = "5s"
start_timeout = "5s"

[storage]
backend = "sqlite"
path = "{tmp_path / "n1.sqlite3"}"

[ops]
enabled = false

[logging]
format = "json"

[cluster]
redis_url = "{REDIS_URL}"
key_prefix = "{prefix}"
heartbeat_interval = "0.2s"
member_timeout = "1s"
lease_ttl = "1.5s"

[providers.simulated]
rate_limit = {{ enabled = false }}

[admin]
socket = "{tmp_path / "admin.sock"}"

[[admin.tokens]]
name = "reader"
token = "${{env:SB_READ}}"
scope = "read"

[[admin.tokens]]
name = "operator"
token = "${{env:SB_OPERATE}}"
scope = "operate"

[[admin.tokens]]
name = "root"
token = "${{env:SB_ADMIN}}"
scope = "admin"

[[channels]]
id = "a1"
tenant = "acme"
provider = "simulated"

[[channels]]
id = "g1"
tenant = "globex"
provider = "simulated"
"""
    )
    return path


async def test_ctl_drives_the_cluster_controls_with_their_exit_codes(tmp_path: Path) -> None:
    prefix = f"sbtest-{secrets.token_hex(4)}"
    unix = f"unix:{tmp_path / 'admin.sock'}"
    try:
        with trio.fail_after(CEILING):
            async with run_node(deployment(tmp_path, prefix), env=TOKENS) as node:
                await node.wait_output(r"admin console: unix:\S+")
                while True:  # both channels held and connected here
                    code, out, _ = await ctl(unix, "SB_READ", "cluster.leases", "-o", "json")
                    assert code == 0
                    listed = await ctl(unix, "SB_READ", "channels.list", "-o", "json")
                    states = {c["channel"]: c["state"] for c in listed[1]["items"]}
                    if [lease["holder"] for lease in out["leases"]] == ["ctl-n1", "ctl-n1"] and (
                        set(states.values()) == {"connected"}
                    ):
                        break
                    await trio.sleep(0.1)
                token = next(
                    lease["token"] for lease in out["leases"] if lease["channel_id"] == "a1"
                )

                code, out, _ = await ctl(unix, "SB_READ", "system.describe", "-o", "json")
                described = {m["name"]: m for m in out["methods"]}
                for name in (
                    "cluster.pause_rebalancing",
                    "cluster.resume_rebalancing",
                    "cluster.move_channel",
                    "cluster.unpin_channel",
                    "cluster.release_lease",
                ):
                    assert described[name]["scope"] == "admin", name
                    assert described[name]["changes_state"] is True
                    assert "reason" in {p["name"] for p in described[name]["params"]}
                assert "forwarding" in described["cluster.stats"]["summary"]

                # 3: scope.
                for env in ("SB_READ", "SB_OPERATE"):
                    code, _, err = await ctl(unix, env, "cluster.pause_rebalancing", "reason=x")
                    assert code == 3 and "needs scope 'admin'" in err
                    code, _, err = await ctl(
                        unix, env, "cluster.release_lease", "channel=a1", "reason=x"
                    )
                    assert code == 3

                # 0: pause, seen in the cluster view, and resume.
                code, out, _ = await ctl(
                    unix, "SB_ADMIN", "cluster.pause_rebalancing", "reason=deploy", "-o", "json"
                )
                assert (code, out) == (0, {"paused": True, "already": False})
                code, out, _ = await ctl(unix, "SB_READ", "cluster.members", "-o", "json")
                assert code == 0 and out["paused"]["by"] == "root"
                assert out["paused"]["reason"] == "deploy"
                code, out, _ = await ctl(
                    unix, "SB_ADMIN", "cluster.resume_rebalancing", "reason=done", "-o", "json"
                )
                assert (code, out) == (0, {"paused": False, "already": False})

                # Move: to a node that is no member (1), to this one (0), unpinned (0).
                code, _, err = await ctl(
                    unix, "SB_ADMIN", "cluster.move_channel", "channel=a1", "node=n9", "reason=x"
                )
                assert code == 1 and "not a live member" in err
                code, out, _ = await ctl(
                    unix,
                    "SB_ADMIN",
                    "cluster.move_channel",
                    "channel=a1",
                    "node=ctl-n1",
                    "reason=keep it here",
                    "-o",
                    "json",
                )
                assert code == 0 and out["node"] == "ctl-n1" and out["moving"] is False
                code, out, _ = await ctl(unix, "SB_READ", "cluster.placement", "-o", "json")
                assert out["pins"] == {"a1": "ctl-n1"}
                code, out, _ = await ctl(
                    unix,
                    "SB_ADMIN",
                    "cluster.unpin_channel",
                    "channel=a1",
                    "reason=x",
                    "-o",
                    "json",
                )
                assert code == 0 and out["was_pinned_to"] == "ctl-n1"

                # 2: a live holder's lease needs its token echoed, and the answer says why.
                code, _, err = await ctl(
                    unix, "SB_ADMIN", "cluster.release_lease", "channel=a1", "reason=stuck"
                )
                assert code == 2 and "is alive" in err and f"confirm={token}" in err

                # 0, then 4: cluster.stats with every member answering, then one silent.
                code, out, _ = await ctl(unix, "SB_READ", "cluster.stats", "-o", "json")
                assert code == 0 and out["failed"] == {} and out["channels"] == 2
                code, _, _ = await ctl(unix, "SB_ADMIN", "cluster.pause_rebalancing", "reason=x")
                assert code == 0  # so that the ghost draws no channel away
                async with redis() as link:
                    ghost = Membership(
                        link,
                        prefix=prefix,
                        node_id="ghost",
                        heartbeat_interval=1.0,
                        member_timeout=60.0,
                    )
                    await ghost.beat()  # a member that answers nothing
                    while True:
                        code, out, err = await ctl(unix, "SB_READ", "cluster.stats", "-o", "json")
                        if out["members"] == 2:
                            break
                        await trio.sleep(0.1)
                    assert code == 4, err
                    assert list(out["failed"]) == ["ghost"]
                    assert out["answered"] == 1 and out["channels"] == 2
                    await ghost.leave()
    finally:
        async with redis() as link:
            keys = await link.call("KEYS", f"{prefix}:*")
            if keys:
                await link.call("DEL", *keys)
