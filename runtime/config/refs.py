"""The file as written: paths into it, and its ``${env:NAME}`` references.

Design: references are resolved on the raw TOML tree, before anything is
structured, so they work in every string value (credentials, a DSN, a
base URL, provider options) and a number can come from the environment too
(the converter reads ``"8080"`` as an int). Resolution never stops at the
first problem: a missing variable, an empty one and a malformed reference
are each reported with their path, and the value is left as written so the
later stages can go on. ``$${`` writes a literal ``${``.

``${env:NAME:-default}`` reads ``default`` when NAME is unset or empty, as
the shell's ``${NAME:-default}`` does. A secret field takes no default: it
would be a secret written in the file.

Messages name variables, never their values: a value may be a secret.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final, TypeAlias

import attrs

__all__ = [
    "Path",
    "Resolution",
    "Substitution",
    "dotted",
    "has_reference",
    "resolve",
    "substitute",
    "walk",
]

Path: TypeAlias = tuple[str | int, ...]
"""Keys and list indices from the top of the file: ``("channels", 3, "rate_limit")``."""

_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_-]+")
# An escaped "$${", a closed "${...}", or an opening "${" that never closes.
_TOKEN: Final = re.compile(r"\$\$\{|\$\{(?P<body>[^}]*)\}|\$\{")
_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NAME_RULE: Final = 'NAME in "${env:NAME}" is letters, digits and "_", not starting with a digit'
_SYNTAX: Final = 'write "${env:NAME}" (or "$${" for a literal "${")'
_DEFAULT: Final = ":-"  # separates NAME from its default


def dotted(path: Path) -> str:
    """``("channels", 3, "rate_limit")`` as ``channels[3].rate_limit``.

    Keys that TOML would quote are quoted (``tags."my key"``).
    """
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
            continue
        key = part if _BARE_KEY.fullmatch(part) else json.dumps(part, ensure_ascii=False)
        text += f".{key}" if text else key
    return text


def walk(node: Any, path: Path = ()) -> Iterator[tuple[Path, Any]]:
    """Every table, array and value under ``node``, parents first, in file order."""
    yield path, node
    if isinstance(node, Mapping):
        for key, child in node.items():
            yield from walk(child, (*path, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            yield from walk(child, (*path, index))


def has_reference(text: str) -> bool:
    """Whether ``text`` tries to reference something (``${``, not the escaped ``$${``)."""
    return any(match.group() != "$${" for match in _TOKEN.finditer(text))


@attrs.frozen(kw_only=True)
class Substitution:
    """One string with its references resolved.

    Attributes:
        text: the result (the input unchanged if anything failed).
        values: the values the references resolved to, in order.
        errors: what went wrong, one message per bad reference.
    """

    text: str
    values: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()


def substitute(
    text: str, env: Mapping[str, str], *, quote: bool = True, defaults: bool = True
) -> Substitution:
    """Resolve the ``${env:NAME}`` and ``${env:NAME:-default}`` references in one string.

    Args:
        text: the string as written.
        env: the environment.
        quote: whether messages may quote a malformed reference (false in a
            secret field, where even a typo may hold part of a secret).
        defaults: whether ``:-default`` is allowed (false in a secret field).

    Returns:
        The result; on any error its ``text`` is the input unchanged.
    """
    pieces: list[str] = []
    values: list[str] = []
    errors: list[str] = []
    end = 0
    for match in _TOKEN.finditer(text):
        pieces.append(text[end : match.start()])
        end = match.end()
        token, body = match.group(), match.group("body")
        shown = f" {json.dumps(token, ensure_ascii=False)}" if quote else ""
        if token == "$${":
            pieces.append("${")
        elif body is None:
            errors.append(f'unclosed "${{": {_SYNTAX}')
        elif not body.startswith("env:"):
            errors.append(f"unknown reference{shown}: {_SYNTAX}")
        elif not _ENV_NAME.fullmatch(name := body[4:].partition(_DEFAULT)[0]):
            errors.append(f"malformed reference{shown}: {_NAME_RULE}")
        elif _DEFAULT in body and not defaults:
            errors.append(
                f"a secret takes no default (it would be written in the file): "
                f'write "${{env:{name}}}" and set {name}'
            )
        elif env.get(name):
            pieces.append(env[name])
            values.append(env[name])
        elif _DEFAULT in body:
            pieces.append(body.partition(_DEFAULT)[2])
        elif name not in env:
            errors.append(f"environment variable {name} is not set")
        else:
            errors.append(f"environment variable {name} is set but empty")
    if errors:
        return Substitution(text=text, errors=tuple(errors))
    pieces.append(text[end:])
    return Substitution(text="".join(pieces), values=tuple(values))


@attrs.frozen(kw_only=True)
class Resolution:
    """A whole tree with its references resolved.

    Attributes:
        doc: the tree, every string resolved (or, where that failed, as written).
        problems: ``(path, message)`` for every bad reference.
        unresolved: the paths of strings left as written because of them.
        secrets: the values resolved inside secret fields.
        from_env: every value resolved from the environment, secret field or
            not (a problem never quotes one: the environment is where
            secrets live, and one may be referenced in the wrong place).
    """

    doc: dict[str, Any]
    problems: list[tuple[Path, str]]
    unresolved: frozenset[Path]
    secrets: tuple[str, ...]
    from_env: tuple[str, ...] = ()


def resolve(
    doc: Mapping[str, Any], env: Mapping[str, str], *, secret: Callable[[Path], bool]
) -> Resolution:
    """Resolve every reference in every string of ``doc``.

    Args:
        doc: the file as written (not modified).
        env: the environment.
        secret: whether a path holds a secret: the values resolved there are
            collected, and its malformed references are not quoted.
    """
    problems: list[tuple[Path, str]] = []
    unresolved: set[Path] = set()
    secrets: list[str] = []
    from_env: list[str] = []

    def visit(node: Any, path: Path) -> Any:
        if isinstance(node, Mapping):
            return {key: visit(child, (*path, key)) for key, child in node.items()}
        if isinstance(node, list):
            return [visit(child, (*path, index)) for index, child in enumerate(node)]
        if not isinstance(node, str):
            return node
        is_secret = secret(path)
        result = substitute(node, env, quote=not is_secret, defaults=not is_secret)
        problems.extend((path, error) for error in result.errors)
        if result.errors:
            unresolved.add(path)
        elif is_secret:
            secrets.extend(value for value in result.values if value not in secrets)
        from_env.extend(result.values)
        return result.text

    resolved = visit(doc, ())
    return Resolution(
        doc=resolved,
        problems=problems,
        unresolved=frozenset(unresolved),
        secrets=tuple(secrets),
        from_env=tuple(dict.fromkeys(from_env)),
    )
