"""``--set KEY=VALUE``: settings from the command line, laid over the file as written.

Design: an override changes the raw TOML tree before anything else reads
it, so a value from the command line goes through exactly what a value in
the file goes through: deprecated names, ``${env:NAME}`` references, the
converter's types and checks, the rules, and the same messages with the
same paths. Nothing here validates a value.

- KEY is a path as problems print it: ``ops.port``,
  ``channels[2].base_url``, ``providers.whatsapp.base_url``,
  ``profiling.tags."my key"``. A channel may also be named by its id:
  ``channels.acme-chat.base_url`` is the channel whose ``id`` is
  ``acme-chat``. Missing tables are created; ``channels[N]`` with N one past
  the last appends a channel.
- VALUE is read as a TOML value when it is one (``9000``, ``true``,
  ``"text"``, ``{ base = "1s" }``, ``[1, 2]``) and as a string otherwise
  (``debug``, ``http://127.0.0.1:8080``, ``30s``), as the OpenTelemetry
  Collector's ``--set`` and uvicorn's options read theirs.

Values are never quoted in problems: one may be a secret typed in the
wrong place (and a literal secret is refused where the file refuses it).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from typing import Any, Final

import attrs

from ..errors import ConfigProblem
from .refs import Path, dotted

__all__ = ["Override", "apply_overrides", "parse_override"]

# One segment: a bare or quoted key, then any number of [index].
_SEGMENT: Final = re.compile(
    r'(?:"(?P<quoted>[^"]*)"|(?P<bare>[A-Za-z0-9_-]+))(?P<index>(?:\[\d+\])*)'
)
_INDEX: Final = re.compile(r"\[(\d+)\]")
_EXAMPLE: Final = "as in --set ops.port=9000 or --set channels[0].base_url=http://127.0.0.1:8080"


@attrs.frozen(kw_only=True)
class Override:
    """One ``--set``: where, and the value as TOML reads it.

    Attributes:
        key: the path as written (``channels.acme-chat.base_url``).
        path: its segments; a channel named by id is the string after ``channels``.
        value: the value.
    """

    key: str
    path: Path
    value: Any = attrs.field(repr=False)


def parse_override(text: str, *, position: int) -> Override | ConfigProblem:
    """Read one ``KEY=VALUE``.

    Args:
        text: the argument as given.
        position: its place among the ``--set`` options (1-based), for messages.

    Returns:
        The override, or the problem with it (its value never quoted).
    """
    where = f"--set #{position}"
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        return ConfigProblem(where, f"expected KEY=VALUE, {_EXAMPLE}")
    path = _parse_path(key)
    if path is None:
        message = (
            "expected a dotted path of keys, with [N] for an array's item, "
            f"not {key[:80]!r}; {_EXAMPLE}"
        )
        return ConfigProblem(where, message)
    return Override(key=key, path=path, value=_parse_value(raw))


def _parse_path(key: str) -> Path | None:
    parts: list[str | int] = []
    rest = key
    while True:
        match = _SEGMENT.match(rest)
        if match is None:
            return None
        name = match.group("quoted") if match.group("quoted") is not None else match.group("bare")
        parts.append(name)
        parts.extend(int(i) for i in _INDEX.findall(match.group("index")))
        rest = rest[match.end() :]
        if not rest:
            return tuple(parts)
        if not rest.startswith("."):
            return None
        rest = rest[1:]


def _parse_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        return raw


def apply_overrides(
    doc: Mapping[str, Any], overrides: Sequence[Override]
) -> tuple[dict[str, Any], list[ConfigProblem]]:
    """``doc`` with each override set in turn (later ones win).

    Args:
        doc: the file's tables (not modified).
        overrides: from :func:`parse_override`.

    Returns:
        ``(doc, problems)``: a new tree, and a problem for each override
        that could not be placed (through a value that is not a table, an
        array index past the end, an unknown channel id).
    """
    out = _copy(doc)
    problems = []
    for override in overrides:
        problem = _set(out, override)
        if problem is not None:
            problems.append(problem)
    return out, problems


def _set(doc: dict[str, Any], override: Override) -> ConfigProblem | None:
    node: Any = doc
    walked: list[str | int] = []
    path = override.path
    for depth, part in enumerate(path):
        last = depth == len(path) - 1
        if isinstance(node, list) and isinstance(part, str) and walked == ["channels"]:
            # A channel named by its id.
            found = [i for i, c in enumerate(node) if isinstance(c, dict) and c.get("id") == part]
            if not found:
                ids = [c.get("id") for c in node if isinstance(c, dict)]
                shown = ", ".join(f'"{i}"' for i in ids if isinstance(i, str)) or "none"
                return ConfigProblem(
                    "channels", f'--set {override.key}: no channel has id "{part}" (ids: {shown})'
                )
            part = found[0]
        at = dotted(tuple(walked)) or "the file"
        if isinstance(part, int):
            if not isinstance(node, list):
                return ConfigProblem(dotted(tuple(walked)), f"--set {override.key}: not an array")
            if part > len(node):
                return ConfigProblem(
                    at,
                    f"--set {override.key}: there is no item [{part}] (it has {len(node)}; "
                    f"[{len(node)}] adds one)",
                )
            if part == len(node):
                node.append({})
        elif not isinstance(node, dict):
            return ConfigProblem(at, f"--set {override.key}: {at} is not a table")
        walked.append(part)
        if last:
            node[part] = override.value
            return None
        if isinstance(node, dict) and part not in node:
            # An array where an index follows, or the channels (named by id too):
            # the first channels[0] or admin.tokens[0] of a file that has none.
            listed = isinstance(path[depth + 1], int) or walked == ["channels"]
            node[part] = [] if listed else {}
        node = node[part]
    return None


def _copy(node: Any) -> Any:
    if isinstance(node, Mapping):
        return {key: _copy(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_copy(value) for value in node]
    return node
