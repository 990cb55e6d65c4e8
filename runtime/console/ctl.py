"""``switchboard ctl``: call the admin console of a running node, for scripts.

::

    switchboard ctl [--url URL] [--token-env NAME] [-o json|table] METHOD [KEY=VALUE ...]

Design:
- Arguments are ``key=value``; each value is read as the type
  ``system.describe`` gives its parameter (``limit=5`` is an integer,
  ``dry_run=true`` a boolean, ``ids=1,2`` a list of integers,
  ``kinds=inbound,state`` a list of strings); ``key:=<JSON>`` passes JSON
  as it is. So the console's own description is the one source of truth.
- The token is read from an environment variable (``--token-env``, by
  default ``SWITCHBOARD_ADMIN_TOKEN``), never from the command line, where
  other users of the machine could read it (``ps``).
- ``events.subscribe`` prints the events, one JSON document a line, until
  interrupted or ``--max-events`` of them.
- Without a method it is an interactive shell (:mod:`runtime.console.shell`).
- Exit codes: 0 ok; 1 the node answered with an error (or none answered);
  2 bad usage (unknown method, bad parameters); 3 authentication or scope;
  4 partial: a call on many channels where some failed, or a cluster-wide
  call (``cluster.stats``, which the node fans out to every member) where
  some node failed; both list them under ``failed``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Final, TextIO

import trio

from .client import AdminClient, CannotConnect, NotAuthenticated, RemoteError, open_admin
from .rpc import ErrorCode

__all__ = ["EXIT_AUTH", "EXIT_NODE", "EXIT_OK", "EXIT_PARTIAL", "EXIT_USAGE", "add_parser", "ctl"]

EXIT_OK: Final = 0
EXIT_NODE: Final = 1  # the node answered with an error, or no console answered
EXIT_USAGE: Final = 2  # bad usage: unknown method, bad parameters
EXIT_AUTH: Final = 3  # authentication or scope
EXIT_PARTIAL: Final = 4  # some channels, or some nodes of a cluster-wide call, failed

DEFAULT_URL: Final = "ws://127.0.0.1:8322"
DEFAULT_TOKEN_ENV: Final = "SWITCHBOARD_ADMIN_TOKEN"
_AUTH_CODES: Final = frozenset(
    {ErrorCode.UNAUTHENTICATED, ErrorCode.FORBIDDEN, ErrorCode.TENANT_FORBIDDEN}
)
_USAGE_CODES: Final = frozenset(
    {ErrorCode.METHOD_NOT_FOUND, ErrorCode.INVALID_PARAMS, ErrorCode.CONFIRMATION_REQUIRED}
)


class UsageError(ValueError):
    """An argument that cannot be passed as given."""


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """The ``ctl`` sub-command of ``switchboard``."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "ctl",
        help="call a running node's admin console (system.describe lists the methods)",
        description="Call a running node's admin console. Exit codes: 0 ok, 1 error from the "
        "node, 2 usage, 3 authentication or scope, 4 partial.",
    )
    parser.add_argument(
        "--url",
        default=os.environ.get("SWITCHBOARD_ADMIN_URL", DEFAULT_URL),
        help="unix:/path/admin.sock, ws://host:port or wss://host:port "
        f"(default $SWITCHBOARD_ADMIN_URL or {DEFAULT_URL})",
    )
    parser.add_argument(
        "--token-env",
        default=DEFAULT_TOKEN_ENV,
        metavar="NAME",
        help=f"the environment variable holding the token (default {DEFAULT_TOKEN_ENV})",
    )
    parser.add_argument("--cafile", help="wss://: the PEM certificate(s) to trust")
    parser.add_argument("-o", "--output", choices=["json", "table"], default="table")
    parser.add_argument(
        "--max-events",
        type=int,
        default=None,
        metavar="N",
        help="events.subscribe: stop after N events (default: until interrupted)",
    )
    parser.add_argument("method", nargs="?", help="e.g. channels.list; none: an interactive shell")
    parser.add_argument(
        "args", nargs="*", metavar="KEY=VALUE", help="parameters; KEY:=JSON passes JSON as is"
    )
    return parser


def ctl(args: argparse.Namespace, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run ``switchboard ctl``; returns the exit code."""
    out = out or sys.stdout
    err = err or sys.stderr
    token = os.environ.get(args.token_env)
    if not token:
        print(f"switchboard ctl: ${args.token_env} is not set (the admin token)", file=err)
        return EXIT_AUTH
    try:
        return trio.run(_run, args, token, out, err)
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:  # `ctl ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


async def _run(args: argparse.Namespace, token: str, out: TextIO, err: TextIO) -> int:
    try:
        async with open_admin(args.url, token, cafile=args.cafile) as client:
            if not args.method:
                from .shell import run_shell

                return await run_shell(client, out, err, interactive=sys.stdin.isatty())
            try:
                described = await client.call("system.describe")
                params = parse_args(args.method, args.args, described["methods"])
                result = await client.call(args.method, params)
                if args.method == "events.subscribe":
                    return await _follow(client, args.max_events, out)
            except UsageError as exc:
                print(f"switchboard ctl: {exc}", file=err)
                return EXIT_USAGE
    except NotAuthenticated as exc:
        print(f"switchboard ctl: {exc}", file=err)
        return EXIT_AUTH
    except CannotConnect as exc:
        print(f"switchboard ctl: {exc}", file=err)
        return EXIT_NODE
    except RemoteError as exc:
        print(f"switchboard ctl: {args.method}: {printable(exc.message)}", file=err)
        if exc.data is not None:
            print(f"  {json.dumps(exc.data)}", file=err)
        if exc.code in _AUTH_CODES:
            return EXIT_AUTH
        if exc.code in _USAGE_CODES:
            return EXIT_USAGE
        return EXIT_NODE
    print(render(result, args.output), file=out)
    if isinstance(result, dict) and result.get("failed"):
        return EXIT_PARTIAL
    return EXIT_OK


async def _follow(client: AdminClient, limit: int | None, out: TextIO) -> int:
    count = 0
    async for event in client.events():
        print(json.dumps(event["params"]), file=out, flush=True)
        count += 1
        if limit is not None and count >= limit:
            break
    return EXIT_OK


def parse_args(
    method: str, items: Sequence[str], methods: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """``key=value`` arguments as the method's parameters, typed by ``system.describe``.

    Raises:
        UsageError: an unknown method or parameter, or a value of the wrong type.
    """
    found = next((m for m in methods if m["name"] == method), None)
    if found is None:
        names = ", ".join(sorted(m["name"] for m in methods))
        raise UsageError(f"no method {method!r}; the console has: {names}")
    types = {p["name"]: p["type"] for p in found["params"]}
    params: dict[str, Any] = {}
    for item in items:
        if ":=" in item:
            key, _, raw = item.partition(":=")
            try:
                params[key] = json.loads(raw, parse_constant=_no_constant)
            except ValueError as exc:
                raise UsageError(f"{key}: not JSON ({exc})") from None
            continue
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"{item!r}: expected KEY=VALUE")
        if key not in types:
            known = ", ".join(types) or "none"
            raise UsageError(f"{method} has no parameter {key!r} (it takes: {known})")
        params[key] = _typed(key, value, types[key])
    return params


def _typed(key: str, value: str, type_name: str) -> Any:
    kind = type_name.replace(" ", "")
    base = kind.split("|")[0]
    try:
        if base == "int":
            return int(value)
        if base == "float":
            number = float(value)
            if not math.isfinite(number):
                raise ValueError("expected a finite number")
            return number
        if base == "bool":
            if value.lower() in ("true", "yes", "1"):
                return True
            if value.lower() in ("false", "no", "0"):
                return False
            raise ValueError("expected true or false")
        if base == "list[int]":
            return [int(part) for part in value.split(",") if part]
        if base == "list[str]":
            return [part for part in value.split(",") if part]
    except ValueError as exc:
        raise UsageError(f"{key}: {value!r} is not a {base} ({exc})") from None
    return value


# --- output ---------------------------------------------------------------------------------


def render(result: Any, output: str) -> str:
    """``result`` as JSON, or as a table for people.

    What the node answers may quote a platform or a peer (a last error, a dead
    letter's reason): no control character of it reaches the terminal as is.
    """
    if output == "json":  # JSON escapes C0 controls; C1 and DEL are escaped here
        return _C1.sub(_json_escape, json.dumps(result, indent=2, ensure_ascii=False))
    return printable(_rendered(result))


def _rendered(result: Any) -> str:
    if isinstance(result, list):
        return _table(result)
    if isinstance(result, dict):
        for key in ("items", "leases", "members", "methods"):
            rows = result.get(key)
            if isinstance(rows, list) and rows and isinstance(rows[0], dict):
                rest = {k: v for k, v in result.items() if k != key}
                head = _pairs(rest)
                return (head + "\n" if head else "") + _table(rows)
        return _pairs(result)
    return str(result)


_C1: Final = re.compile("[\x7f-\x9f]")


def _json_escape(found: re.Match[str]) -> str:
    return f"\\u{ord(found.group()):04x}"


def printable(text: str) -> str:
    """``text`` with each control character shown as its escape (``\\x1b``); lines kept."""
    if text.isprintable():
        return text
    return "\n".join(
        "".join(c if c.isprintable() else repr(c)[1:-1] for c in line) for line in text.split("\n")
    )


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON can carry")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _pairs(values: Mapping[str, Any]) -> str:
    width = max((len(key) for key in values), default=0)
    return "\n".join(f"{key:<{width}}  {_cell(value)}" for key, value in values.items())


def _table(rows: Sequence[Any]) -> str:
    if not rows:
        return "(none)"
    if not isinstance(rows[0], dict):
        return "\n".join(_cell(row) for row in rows)
    columns = [key for key, value in rows[0].items() if not isinstance(value, dict | list)]
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    widths = [
        max(len(column), *(len(line[index]) for line in cells))
        for index, column in enumerate(columns)
    ]
    lines = ["  ".join(column.upper().ljust(w) for column, w in zip(columns, widths, strict=True))]
    lines.extend(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in cells
    )
    return "\n".join(lines)
