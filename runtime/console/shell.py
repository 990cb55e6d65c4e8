"""``switchboard ctl`` with no method: an interactive shell (supervisorctl's shape).

Design:
- One connection for the whole session; each line is ``METHOD [KEY=VALUE ...]``
  exactly as the one-shot form takes it, answered as a table (``json`` on
  the line's end switches to JSON). ``help`` lists the methods,
  ``help METHOD`` its parameters and scope; ``quit``, ``exit`` or end of
  input leaves.
- Lines are read with :func:`input` in a worker thread, so the trio side
  (the connection) and the terminal side stay apart; GNU readline, where
  Python has it, gives the history (kept in ``~/.switchboard_ctl_history``,
  or ``$SWITCHBOARD_CTL_HISTORY``) and tab completion of method names, then
  of their parameters (``reason=``), from ``system.describe``.
"""

from __future__ import annotations

import contextlib
import os
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TextIO

import trio

from .client import AdminClient, RemoteError
from .ctl import UsageError, parse_args, printable, render

__all__ = ["Completer", "run_shell"]

PROMPT: Final = "switchboard> "
HISTORY_LINES: Final = 1_000
_WORDS: Final = ("help", "quit", "exit")


class Completer:
    """Tab completion from ``system.describe``: method names, then ``param=``."""

    def __init__(self, methods: Sequence[Mapping[str, Any]]) -> None:
        self._params = {m["name"]: [p["name"] for p in m["params"]] for m in methods}

    def candidates(self, line: str, text: str) -> list[str]:
        """What ``text`` (the word under the cursor of ``line``) may become."""
        words = line.split()
        first = not words or (len(words) == 1 and not line.endswith(" "))
        if first:
            return sorted(n for n in [*self._params, *_WORDS] if n.startswith(text))
        if words[0] == "help":
            return sorted(n for n in self._params if n.startswith(text))
        given = {word.split("=", 1)[0] for word in words[1:] if "=" in word}
        return [
            f"{name}="
            for name in self._params.get(words[0], [])
            if name.startswith(text) and name not in given
        ]

    def complete(self, text: str, state: int) -> str | None:
        """readline's completer protocol."""
        import readline

        options = self.candidates(readline.get_line_buffer(), text)
        return options[state] if state < len(options) else None


def _readline(completer: Completer) -> Path | None:
    """Set up GNU readline (completion, history) where Python has it."""
    try:
        import readline
    except ImportError:  # no readline: plain input() still works
        return None
    readline.set_completer(completer.complete)
    readline.set_completer_delims(" \t")
    readline.parse_and_bind("tab: complete")
    history = Path(
        os.environ.get("SWITCHBOARD_CTL_HISTORY") or Path.home() / ".switchboard_ctl_history"
    )
    with contextlib.suppress(OSError):
        readline.read_history_file(history)
    readline.set_history_length(HISTORY_LINES)
    return history


def _describe(methods: Sequence[Mapping[str, Any]], name: str | None) -> str:
    if name is None:
        width = max(len(m["name"]) for m in methods)
        lines = [f"{m['name']:<{width}}  {m['scope']:<7}  {m['summary']}" for m in methods]
        return "\n".join([*lines, "", "help METHOD: its parameters; quit: leave"])
    found = next((m for m in methods if m["name"] == name), None)
    if found is None:
        return f"no method {name!r}"
    lines = [f"{found['name']} (scope {found['scope']}): {found['summary']}"]
    for param in found["params"]:
        default = "required" if param["required"] else f"default {param.get('default')!r}"
        lines.append(f"  {param['name']}: {param['type']} ({default})")
    return "\n".join(lines)


async def run_shell(client: AdminClient, out: TextIO, err: TextIO, *, interactive: bool) -> int:
    """Read and run lines until ``quit`` or the end of input; returns 0."""
    described = await client.call("system.describe")
    methods = described["methods"]
    history = _readline(Completer(methods)) if interactive else None
    token = described["token"]
    print(
        f"connected as {token['name']} ({token['scope']}); help lists the methods, quit leaves",
        file=out,
        flush=True,
    )
    prompt = PROMPT if interactive else ""
    try:
        while True:
            try:
                line = await trio.to_thread.run_sync(input, prompt)
            except EOFError:
                break
            try:
                words = shlex.split(line)
            except ValueError as exc:
                print(f"error: {exc}", file=err, flush=True)
                continue
            if not words:
                continue
            if words[0] in ("quit", "exit"):
                break
            if words[0] == "help":
                print(_describe(methods, words[1] if len(words) > 1 else None), file=out)
                continue
            output = "table"
            if words[-1] in ("json", "table"):
                output = words.pop()
            try:
                params = parse_args(words[0], words[1:], methods)
                result = await client.call(words[0], params)
            except UsageError as exc:
                print(f"error: {exc}", file=err, flush=True)
                continue
            except RemoteError as exc:
                detail = f" {exc.data}" if exc.data is not None else ""
                shown = printable(f"{exc.message}{detail}")
                print(f"error {exc.code}: {shown}", file=err, flush=True)
                continue
            print(render(result, output), file=out, flush=True)
    finally:
        if history is not None:
            import readline

            with contextlib.suppress(OSError):
                readline.write_history_file(history)
    return 0
