"""``switchboard ctl`` against a real ``switchboard run`` subprocess: each command, each exit code.

Real processes, real sockets, real time; every test has a hard ceiling and
waits on conditions, not durations.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from runtime.console.ctl import parse_args, render

from .test_cli_run import Node, run_command, run_node, switchboard

CEILING = 120.0
TOKENS = {
    "SB_READ": "reader-token-0123456789",
    "SB_OPERATE": "operator-token-0123456789",
    "SB_ADMIN": "admin-token-0123456789",
    "SB_ACME": "acme-token-0123456789",
}


def deployment(tmp_path: Path) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(
        f"""
[node]
id = "ctl-test"
drain_deadline = "5s"
start_timeout = "2s"

[storage]
backend = "memory"

[ops]
enabled = false

[logging]
format = "json"

[providers.simulated]
max_connections = 3
rate_limit = {{ enabled = false }}

[admin]
socket = "{tmp_path / "admin.sock"}"
host = "127.0.0.1"
port = 0

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

[[admin.tokens]]
name = "acme-ops"
token = "${{env:SB_ACME}}"
scope = "operate"
tenants = ["acme"]

[[channels]]
id = "a1"
tenant = "acme"
provider = "simulated"

[[channels]]
id = "a2"
tenant = "acme"
provider = "simulated"

[[channels]]
id = "g1"
tenant = "globex"
provider = "simulated"

[[channels]]
id = "g2"
tenant = "globex"
provider = "simulated"
"""
    )
    return path


@asynccontextmanager
async def node_with_console(tmp_path: Path) -> AsyncIterator[tuple[Node, str]]:
    async with run_node(deployment(tmp_path), env=TOKENS) as node:
        line = await node.wait_output(r"admin console: ws://\S+")
        yield node, line.split()[-1]


async def ctl(url: str, token_env: str | None, *args: str) -> tuple[int, Any, str]:
    options = ["ctl", "--url", url]
    if token_env is not None:
        options += ["--token-env", token_env]
    env = dict(TOKENS)
    code, out, err = await run_command(*options, *args, env=env)
    try:
        parsed: Any = json.loads(out) if "-o" in args and "json" in args else out
    except ValueError:
        parsed = out
    return code, parsed, err


async def test_ctl_commands_and_exit_codes(tmp_path: Path) -> None:
    with trio.fail_after(CEILING):
        async with node_with_console(tmp_path) as (node, tcp):
            sock = tmp_path / "admin.sock"
            assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
            unix = f"unix:{sock}"

            code, out, _ = await ctl(unix, "SB_READ", "system.describe", "-o", "json")
            assert code == 0
            assert {m["name"] for m in out["methods"]} >= {"channels.list", "node.drain"}

            code, out, _ = await ctl(tcp, "SB_READ", "channels.list")
            assert code == 0
            lines = out.splitlines()
            assert lines[0].split()[:2] == ["total", "4"]
            header = next(line for line in lines if line.startswith("CHANNEL"))
            assert header.split()[:4] == ["CHANNEL", "TENANT", "PROVIDER", "STATE"]
            rows = {line.split()[0]: line.split()[3] for line in lines[lines.index(header) + 1 :]}
            assert rows == {
                "a1": "connected",
                "a2": "connected",
                "g1": "connected",
                "g2": "not_started",
            }

            code, out, _ = await ctl(
                unix, "SB_READ", "channels.list", "tenant=acme", "limit=1", "-o", "json"
            )
            assert code == 0
            assert [c["channel"] for c in out["items"]] == ["a1"] and out["next_offset"] == 1

            code, out, _ = await ctl(unix, "SB_READ", "channels.get", "channel=a1", "-o", "json")
            assert code == 0 and out["state"] == "connected" and out["breaker"]["state"] == "closed"

            code, out, _ = await ctl(unix, "SB_READ", "node.tree", "-o", "json")
            assert code == 0 and out["id"] == "node:ctl-test"

            code, out, _ = await ctl(unix, "SB_READ", "node.stats", "-o", "json")
            assert code == 0 and out["channels"] == 4

            code, out, _ = await ctl(unix, "SB_READ", "dead_letters.list", "-o", "json")
            assert (code, out) == (0, [])

            # 3: authentication or scope.
            code, _, err = await ctl(unix, "SB_READ", "channels.restart", "channel=a1", "reason=x")
            assert code == 3 and "needs scope 'operate'" in err
            code, _, err = await ctl(unix, "SB_NOT_SET", "node.stats")
            assert code == 3 and "SB_NOT_SET is not set" in err
            code, _, err = await ctl(unix, "PATH", "node.stats")  # a wrong token
            assert code == 3 and "unknown token" in err
            code, _, err = await ctl(unix, "SB_ACME", "channels.list", "tenant=globex")
            assert code == 3 and "tenant 'globex'" in err
            # Another tenant's channel is answered as one that does not exist.
            code, _, err = await ctl(unix, "SB_ACME", "channels.get", "channel=g1")
            assert code == 1 and "no channel 'g1'" in err and "globex" not in err
            code, _, err = await ctl(unix, "SB_OPERATE", "node.drain", "reason=x")
            assert code == 3

            # 2: usage.
            code, _, err = await ctl(unix, "SB_READ", "channels.nope")
            assert code == 2 and "no method 'channels.nope'" in err
            code, _, err = await ctl(unix, "SB_READ", "channels.list", "limit=lots")
            assert code == 2 and "limit" in err
            code, _, err = await ctl(unix, "SB_READ", "channels.list", "colour=red")
            assert code == 2 and "no parameter 'colour'" in err
            code, _, err = await ctl(unix, "SB_READ", "channels.list", "limit:=0")
            assert code == 2 and "limit" in err

            # 1: the node's error; or no node at all.
            code, _, err = await ctl(unix, "SB_READ", "channels.get", "channel=nope")
            assert code == 1 and "no channel 'nope'" in err
            code, _, err = await ctl(f"unix:{tmp_path / 'none.sock'}", "SB_READ", "node.stats")
            assert code == 1 and "no admin console" in err

            # Changes: one channel; by filter, dry run then the count.
            code, out, _ = await ctl(
                unix, "SB_OPERATE", "channels.restart", "channel=a1", "reason=stuck", "-o", "json"
            )
            assert code == 0 and out["count"] == 1
            code, _, err = await ctl(
                unix, "SB_OPERATE", "channels.restart", "tenant=acme", "reason=r"
            )
            assert code == 2 and "dry_run" in err
            code, out, _ = await ctl(
                unix,
                "SB_OPERATE",
                "channels.restart",
                "tenant=acme",
                "reason=r",
                "dry_run=true",
                "-o",
                "json",
            )
            assert code == 0 and out["count"] == 2
            code, out, _ = await ctl(
                unix,
                "SB_OPERATE",
                "channels.restart",
                "tenant=acme",
                "reason=r",
                "confirm=2",
                "-o",
                "json",
            )
            assert code == 0 and out["count"] == 2 and out["failed"] == {}

            # 4: partial: g2 cannot start (the provider's max_connections is full).
            code, out, _ = await ctl(
                unix,
                "SB_OPERATE",
                "channels.restart",
                "tenant=globex",
                "reason=r",
                "confirm=2",
                "-o",
                "json",
            )
            assert code == 4
            assert out["channels"] == ["g1"] and list(out["failed"]) == ["g2"]

            # The audit trail is in the node's log.
            await node.wait_output(
                r"admin channels.restart by operator \(stuck\): ok", stream="err"
            )

            # The shell: lines from its input, one connection.
            shell = await trio.run_process(
                [*switchboard(), "ctl", "--url", unix, "--token-env", "SB_OPERATE"],
                stdin=b"help\nnode.stats json\nchannels.get channel=nope\n"
                b"help channels.stop\nchannels.list state=connected\nquit\n",
                capture_stdout=True,
                capture_stderr=True,
                env={**os.environ, **TOKENS},
            )
            said, complained = shell.stdout.decode(), shell.stderr.decode()
            assert shell.returncode == 0, complained
            assert said.startswith("connected as operator (operate)")
            assert "channels.restart" in said and '"state": "ready"' in said
            assert "reason: str (required)" in said
            assert "CHANNEL" in said and "a1" in said
            assert "error -32006: no channel 'nope' on this node" in complained

            # Drain from the console: the node stops, exit code 0.
            code, out, _ = await ctl(unix, "SB_ADMIN", "node.drain", "reason=upgrade", "-o", "json")
            assert code == 0 and out["draining"] is True
            with trio.fail_after(30):
                assert await node.process.wait() == 0
            assert "drained at the admin console's request" in node.err
            assert not sock.exists()


async def test_a_bad_admin_section_fails_check(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[admin]\nhost = "0.0.0.0"\n[[admin.tokens]]\nname = "x"\ntoken = "plain"\n')
    code, _, err = await run_command("check", str(path))
    assert code == 2
    assert "admin.host" in err and "admin.tokens[0].token" in err
    assert "plain" not in err


DESCRIBED = [
    {
        "name": "channels.list",
        "params": [
            {"name": "tenant", "type": "str | None"},
            {"name": "limit", "type": "int"},
        ],
    },
    {
        "name": "dead_letters.replay",
        "params": [
            {"name": "channel", "type": "str"},
            {"name": "ids", "type": "list[int] | None"},
            {"name": "dry_run", "type": "bool"},
        ],
    },
]


def test_arguments_are_typed_by_the_description() -> None:
    assert parse_args("channels.list", ["tenant=acme", "limit=5"], DESCRIBED) == {
        "tenant": "acme",
        "limit": 5,
    }
    assert parse_args(
        "dead_letters.replay", ["channel=7", "ids=1,2", "dry_run=yes"], DESCRIBED
    ) == {"channel": "7", "ids": [1, 2], "dry_run": True}
    assert parse_args("channels.list", ['tenant:="a b"'], DESCRIBED) == {"tenant": "a b"}


def test_shell_completion() -> None:
    from runtime.console.shell import Completer

    completer = Completer(DESCRIBED)
    assert completer.candidates("", "") == [
        "channels.list",
        "dead_letters.replay",
        "exit",
        "help",
        "quit",
    ]
    assert completer.candidates("chan", "chan") == ["channels.list"]
    assert completer.candidates("channels.list ", "") == ["tenant=", "limit="]
    assert completer.candidates("channels.list tenant=a l", "l") == ["limit="]
    assert completer.candidates("help dead", "dead") == ["dead_letters.replay"]


def test_tables() -> None:
    text = render(
        {"total": 2, "items": [{"channel": "a", "n": 1}, {"channel": "bb", "n": None}]}, "table"
    )
    assert text.splitlines() == ["total  2", "CHANNEL  N", "a        1", "bb       -"]
    assert render([], "table") == "(none)"
    assert json.loads(render({"a": 1}, "json")) == {"a": 1}
