"""Reading a deployment file into a :class:`~runtime.config.model.NodeConfig`.

Design: four passes over the file, each collecting problems instead of
stopping at the first, reported together in file order by one
:class:`~runtime.errors.ConfigError`:

1. TOML: a syntax error is the one problem that stops everything (with its line).
2. :func:`runtime.config.refs.resolve`: ``${env:NAME}`` in every string.
3. Our own cattrs converter, in detailed-validation mode, structures the
   tree. Its hooks are strict (``42`` is not a string, ``true`` not a number,
   ``3.5`` not an integer; a string from the environment may be a number),
   reject unknown keys with the closest valid name, and apply each field's
   :class:`~runtime.config.model.Check`. Its error tree becomes problems
   with dotted paths.
4. :mod:`runtime.config.rules`: what no single value can say.

Secrets: a value at a secret path is never quoted; as a last guard, every
problem text is scrubbed of the secret values the file resolved to, in case
one travelled somewhere it is quoted (a token pasted into ``ops.port``).
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path as FilePath
from typing import Annotated, Any, Final, Literal, get_args, get_origin

import attrs
import cattrs
from cattrs.cols import list_structure_factory, mapping_structure_factory
from cattrs.errors import AttributeValidationNote, ClassValidationError, IterableValidationError
from cattrs.gen import make_dict_structure_fn, override

from providers.masking import mask_url, scrubbed, url_secrets

from ..errors import ConfigError, ConfigProblem
from . import refs, rules, units
from .model import AdminConfig, Check, NodeConfig, OpsConfig, StorageConfig
from .overrides import Override, apply_overrides, parse_override

__all__ = ["CONVERTER", "load_config", "parse_config"]

_LOADER_FIELDS: Final[Mapping[type, frozenset[str]]] = {
    NodeConfig: frozenset({"source", "resolved_secrets", "deprecations"})
}
"""Fields the loader sets, which a file may not."""

MAX_DEPTH: Final = 32  # tables and arrays inside each other; the deepest setting needs 6
_INTEGER: Final = re.compile(r"[+-]?[0-9]+")  # an integer from the environment
_SCRUB_SUBSTRINGS_FROM: Final = 4  # characters; shorter secrets are only scrubbed as quoted values


def load_config(
    path: str | os.PathLike[str],
    *,
    env: Mapping[str, str] | None = None,
    overrides: Sequence[str] = (),
) -> NodeConfig:
    """Read and check a deployment file.

    Args:
        path: the TOML file.
        env: where ``${env:NAME}`` references are looked up (``os.environ`` by default).
        overrides: ``KEY=VALUE`` settings laid over the file (``--set``), see
            :mod:`runtime.config.overrides`; checked exactly as the file is.

    Returns:
        The config, with ``source`` set to ``path``.

    Raises:
        ConfigError: the file cannot be read, is not TOML, or has problems
            (all of them are listed).
    """
    source = os.fspath(path)
    try:
        text = FilePath(source).read_bytes().decode("utf-8")
    except OSError as exc:
        problem = ConfigProblem("", f"cannot read the file: {exc.strerror or exc}")
        raise ConfigError(source, [problem]) from exc
    except UnicodeDecodeError as exc:
        problem = ConfigProblem("", f"the file is not UTF-8 text (bad byte at offset {exc.start})")
        raise ConfigError(source, [problem]) from exc
    return parse_config(text, source=source, env=env, overrides=overrides)


def parse_config(
    data: str | Mapping[str, Any],
    *,
    source: str = "<string>",
    env: Mapping[str, str] | None = None,
    overrides: Sequence[str] = (),
) -> NodeConfig:
    """Check a deployment file's text (TOML) or its already parsed tables.

    Args:
        data: TOML text, or the tables it parses to.
        source: where it came from, for messages and ``NodeConfig.source``.
        env: where ``${env:NAME}`` references are looked up (``os.environ`` by default).
        overrides: ``KEY=VALUE`` settings laid over the file (``--set``).

    Returns:
        The config.

    Raises:
        ConfigError: every problem found, in file order.
    """
    try:
        return _parse_config(data, source=source, env=env, overrides=overrides)
    except ConfigError:
        raise
    except Exception as exc:
        # A file the checks did not foresee is refused (exit 2), never a traceback;
        # the exception's text is left out: it may quote a value of the file.
        message = (
            f"the file could not be checked ({type(exc).__name__} in the checker); "
            "it is refused: simplify the value types, and please report this"
        )
        raise ConfigError(source, [ConfigProblem("", message)]) from exc


def _parse_config(
    data: str | Mapping[str, Any],
    *,
    source: str,
    env: Mapping[str, str] | None,
    overrides: Sequence[str],
) -> NodeConfig:
    parsed = _parse_toml(data, source) if isinstance(data, str) else data
    if not isinstance(parsed, Mapping):
        raise ConfigError(source, [ConfigProblem("", "expected a table of settings")])
    if isinstance(data, str) and not parsed and not overrides:  # a file, not a program's table
        message = (
            "the file has no settings: a deployment names at least its node ([node] id) "
            "or its channels ([[channels]])"
        )
        raise ConfigError(source, [ConfigProblem("", message)])
    too_deep = _too_deep(parsed)
    if too_deep is not None:
        message = f"nested more than {MAX_DEPTH} tables or arrays deep; no setting is"
        raise ConfigError(source, [ConfigProblem(refs.dotted(too_deep), message)])
    parsed, found = _overridden(parsed, overrides)
    # Deprecated keys are read under their new names from here on.
    written, renamed, deprecations = rules.renamed_keys(parsed)
    resolution = refs.resolve(
        written, os.environ if env is None else env, secret=rules.holds_secret
    )
    found.extend(ConfigProblem(refs.dotted(path), message) for path, message in resolution.problems)
    found.extend(renamed)
    bare = [refs.dotted(path) for path in units.bare_numbers(NodeConfig, resolution.doc)]
    if bare:
        deprecations.append(
            f"{len(bare)} number(s) without their unit, read as seconds (rates: per second), "
            'which is deprecated: write the unit, as in drain_deadline = "10s" or '
            f'per_channel_rate = "30/s": {", ".join(bare)}'
        )
    config, problems = _structure(resolution.doc)
    for rule in rules.WRITTEN_RULES:
        problems.extend(rule(written))
    for rule in rules.RULES:
        problems.extend(rule(resolution.doc))
    # A string whose reference failed is left as written; what else it fails is noise.
    unresolved = {refs.dotted(path) for path in resolution.unresolved}
    found.extend(problem for problem in problems if problem.path not in unresolved)
    if found or config is None:
        secrets = {
            *resolution.secrets,
            *resolution.from_env,
            *_secret_values(written),
            *_secret_values(resolution.doc),
        }
        raise ConfigError(source, _scrubbed(_in_file_order(found, written), secrets))
    return attrs.evolve(
        config,
        storage=_storage_paths(config.storage, source, config.node.id),
        ops=_ops_paths(config.ops, source),
        admin=_admin_paths(config.admin, source),
        source=source,
        resolved_secrets=resolution.secrets,
        deprecations=tuple(deprecations),
    )


def _overridden(
    parsed: Mapping[str, Any], items: Sequence[str]
) -> tuple[Mapping[str, Any], list[ConfigProblem]]:
    if not items:
        return parsed, []
    overrides: list[Override] = []
    problems: list[ConfigProblem] = []
    for position, item in enumerate(items, start=1):
        result = parse_override(item, position=position)
        if isinstance(result, Override):
            overrides.append(result)
        else:
            problems.append(result)
    doc, misplaced = apply_overrides(parsed, overrides)
    return doc, problems + misplaced


def _ops_paths(ops: OpsConfig, source: str) -> OpsConfig:
    """The TLS files made absolute, relative to the deployment file's directory."""
    from_file = source != "<string>" and bool(FilePath(source).suffix)
    base = FilePath(source).resolve().parent if from_file else FilePath.cwd()

    def absolute(path: str | None) -> str | None:
        return None if path is None else str(base / FilePath(path).expanduser())

    return attrs.evolve(ops, certfile=absolute(ops.certfile), keyfile=absolute(ops.keyfile))


def _admin_paths(admin: AdminConfig | None, source: str) -> AdminConfig | None:
    """The console's socket and TLS files made absolute, like the ops listener's."""
    if admin is None:
        return None
    from_file = source != "<string>" and bool(FilePath(source).suffix)
    base = FilePath(source).resolve().parent if from_file else FilePath.cwd()

    def absolute(path: str | None) -> str | None:
        return None if path is None else str(base / FilePath(path).expanduser())

    return attrs.evolve(
        admin,
        socket=absolute(admin.socket),
        certfile=absolute(admin.certfile),
        keyfile=absolute(admin.keyfile),
    )


def _storage_paths(storage: StorageConfig, source: str, node_id: str) -> StorageConfig:
    """The storage section with its file paths made absolute.

    A relative path is relative to the deployment file's directory (the
    working directory for a config that is no file); an SQLite store with no
    path gets ``data/<node id>.sqlite3`` there, or under
    ``$XDG_STATE_HOME/switchboard`` for a config that is no file.
    """
    from_file = source != "<string>" and bool(FilePath(source).suffix)
    base = FilePath(source).resolve().parent if from_file else FilePath.cwd()
    path: FilePath | None = None
    if storage.backend == "sqlite":
        if storage.path is None:
            if from_file:
                path = base / "data" / f"{node_id}.sqlite3"
            else:
                state = os.environ.get("XDG_STATE_HOME") or str(FilePath.home() / ".local/state")
                path = FilePath(state) / "switchboard" / f"{node_id}.sqlite3"
        else:
            path = base / FilePath(storage.path).expanduser()
    outbox = storage.outbox_file
    return attrs.evolve(
        storage,
        path=storage.path if path is None else str(path),
        outbox_file=None if outbox is None else str(base / FilePath(outbox).expanduser()),
    )


def _parse_toml(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [ConfigProblem("", f"invalid TOML: {exc}")]) from exc
    except RecursionError as exc:  # tomllib recurses once per nested array or inline table
        message = f"invalid TOML: arrays or inline tables nested too deep (at most {MAX_DEPTH})"
        raise ConfigError(source, [ConfigProblem("", message)]) from exc


def _too_deep(doc: Mapping[str, Any]) -> tuple[str | int, ...] | None:
    """The path of the first value nested deeper than :data:`MAX_DEPTH`, else ``None``.

    Iterative, so a deep document cannot exhaust the stack here; the rules
    and the converter, which recurse, only ever see shallow ones.
    """
    stack: list[tuple[tuple[str | int, ...], Any]] = [((), doc)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, Mapping):
            children: Iterable[tuple[str | int, Any]] = value.items()
        elif isinstance(value, list):
            children = enumerate(value)
        else:
            continue
        if len(path) >= MAX_DEPTH:
            return path
        stack.extend(((*path, key), child) for key, child in children)
    return None


def _structure(doc: Mapping[str, Any]) -> tuple[NodeConfig | None, list[ConfigProblem]]:
    try:
        return CONVERTER.structure(doc, NodeConfig), []
    except (cattrs.BaseValidationError, _Invalid) as exc:
        return None, [ConfigProblem(refs.dotted(path), text) for path, text in _explain(exc, ())]


def _explain(exc: BaseException, path: refs.Path) -> Iterator[tuple[refs.Path, str]]:
    """cattrs' error tree as ``(path, message)``, in the order cattrs met them."""
    if isinstance(exc, ClassValidationError | IterableValidationError):
        with_notes, without = exc.group_exceptions()
        for inner, note in with_notes:
            if isinstance(note, AttributeValidationNote):
                if isinstance(inner, KeyError):
                    yield path, f"missing required key {json.dumps(note.name)}"
                else:
                    yield from _explain(inner, (*path, note.name))
            else:
                yield from _explain(inner, (*path, note.index))
        for inner in without:
            yield from _explain(inner, path)
    elif isinstance(exc, _Invalid):
        yield path, exc.describe(quote_value=not rules.holds_secret(path))
    elif isinstance(exc, _UnknownKey):
        yield path, str(exc)
    else:  # an attrs validator the loader does not know; its message hides secrets
        yield path, f"invalid value ({exc})"


# --- the converter ------------------------------------------------------------------


class _Invalid(ValueError):
    """A value of the wrong type or out of range; the path is added by :func:`_explain`."""

    def __init__(self, expected: str, value: Any) -> None:
        super().__init__(expected)
        self.expected = expected
        self.value = value

    def describe(self, *, quote_value: bool) -> str:
        got = f", got {_show(self.value)}" if quote_value else ""
        return f"expected {self.expected}{got}"


class _UnknownKey(ValueError):
    """A key the table does not have."""


def _structure_str(value: Any, _: type) -> str:
    if not isinstance(value, str):
        raise _Invalid("a string", value)
    return value


def _structure_bool(value: Any, _: type) -> bool:
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):  # from the environment
        return bool(value == "true")
    raise _Invalid("true or false", value)


def _structure_int(value: Any, _: type) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        return int(value)
    raise _Invalid("an integer", value)


def _structure_float(value: Any, _: type) -> float:
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if number is None or number != number or number in (float("inf"), float("-inf")):
        raise _Invalid("a number", value)
    return number


def _structure_unit(value: Any, type_: Any) -> float:
    """A duration (seconds) or a rate (per second): ``"10s"``, ``"30/s"``, or a bare number."""
    unit = units.unit_of(type_)
    rate = unit is units.Unit.PER_SECOND
    expected = units.RATE_EXAMPLE if rate else units.DURATION_EXAMPLE
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)  # deprecated: reported by parse_config, read in the base unit
    elif isinstance(value, str):
        try:
            number = float(value)  # a number from the environment
        except ValueError:
            number = units.parse_rate(value) if rate else units.parse_duration(value)
    if number is None or number != number or number in (float("inf"), float("-inf")):
        raise _Invalid(expected, value)
    return number


def _has_unit(type_: Any) -> bool:
    return get_origin(type_) is Annotated and units.unit_of(type_) is not None


def _is_literal(type_: Any) -> bool:
    return get_origin(type_) is Literal


def _structure_literal(value: Any, type_: Any) -> Any:
    choices = get_args(type_)
    if value not in choices or isinstance(value, bool) != isinstance(choices[0], bool):
        raise _Invalid("one of " + ", ".join(json.dumps(choice) for choice in choices), value)
    return value


def _shaped(
    hook: Callable[[Any, Any], Any], shape: type, expected: str
) -> Callable[[Any, Any], Any]:
    """``hook``, refusing anything that is not a ``shape`` first."""

    def structure(value: Any, type_: Any) -> Any:
        if not isinstance(value, shape):
            raise _Invalid(expected, value)
        return hook(value, type_)

    return structure


def _table_hook(cl: type, converter: cattrs.Converter) -> Callable[[Any, Any], Any]:
    """An attrs class from a TOML table: unknown keys and :class:`Check` s reported with paths."""
    attrs.resolve_types(cl)
    fields = attrs.fields(cl)
    allowed = [a.name for a in fields if a.name not in _LOADER_FIELDS.get(cl, ())]
    overrides = {
        a.name: override(
            struct_hook=_checked(converter, a.type, a.validator, masked=callable(a.repr))
        )
        for a in fields
        if isinstance(a.validator, Check)
    }
    # mypy cannot tell these keyword overrides from the named parameters.
    inner: Callable[[Any, Any], Any] = make_dict_structure_fn(cl, converter, **overrides)  # type: ignore[arg-type]

    def structure(value: Any, _: type) -> Any:
        if not isinstance(value, Mapping):
            raise _Invalid("a table", value)
        errors: list[Exception] = [
            _UnknownKey(rules.unknown_name("key", key, allowed))
            for key in value
            if key not in allowed
        ]
        try:
            result = inner({key: value[key] for key in value if key in allowed}, cl)
        except ClassValidationError as exc:
            errors[:0] = exc.exceptions
        except (ValueError, TypeError) as exc:  # raised by the class itself
            errors.insert(0, exc)
        if errors:
            raise ClassValidationError(f"While structuring {cl.__name__}", errors, cl)
        return result

    return structure


def _checked(
    converter: cattrs.Converter, type_: Any, check: Check, *, masked: bool = False
) -> Callable[[Any, Any], Any]:
    """The field's structure hook, then its check; ``masked``: a field whose ``repr``
    masks it (a URL's credentials) is quoted masked too, as ``Check`` quotes it."""

    def structure(value: Any, _: type) -> Any:
        result = converter.structure(value, type_)
        if result is not None and not check.test(result):
            if masked and isinstance(value, str):
                value = scrubbed(mask_url(value) or value, url_secrets(value))
            raise _Invalid(check.expected, value)
        return result

    return structure


def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(detailed_validation=True)
    converter.register_structure_hook(str, _structure_str)
    converter.register_structure_hook(bool, _structure_bool)
    converter.register_structure_hook(int, _structure_int)
    converter.register_structure_hook(float, _structure_float)
    converter.register_structure_hook_func(_is_literal, _structure_literal)
    converter.register_structure_hook_func(_has_unit, _structure_unit)
    converter.register_structure_hook_factory(
        lambda t: get_origin(t) is list,
        lambda t: _shaped(list_structure_factory(t, converter), list, "an array"),
    )
    converter.register_structure_hook_factory(
        lambda t: get_origin(t) is dict,
        lambda t: _shaped(mapping_structure_factory(t, converter), Mapping, "a table"),
    )
    converter.register_structure_hook_factory(attrs.has, lambda cl: _table_hook(cl, converter))
    return converter


CONVERTER: Final = _make_converter()
"""The deployment file's converter (never cattrs' global one)."""


# --- reporting ---------------------------------------------------------------------------


def _show(value: Any) -> str:
    """A value as the file would spell it (tables and arrays by kind only)."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"a {type(value).__name__}"  # a TOML date or time


def _in_file_order(problems: list[ConfigProblem], doc: Mapping[str, Any]) -> list[ConfigProblem]:
    """Sorted by where their path (or its nearest written parent) is in the file; stable."""
    positions = {refs.dotted(path): index for index, (path, _) in enumerate(refs.walk(doc))}

    def position(problem: ConfigProblem) -> int:
        path = problem.path
        while path not in positions:
            # Back up one segment; a cut inside a quoted key matches nothing.
            cut = max(path.rfind(".", 0, len(path)), path.rfind("[", 0, len(path)))
            path = path[: max(cut, 0)]
        return positions[path]

    return sorted(problems, key=position)


def _secret_values(doc: Mapping[str, Any]) -> Iterator[str]:
    for path, value in refs.walk(doc):
        if rules.holds_secret(path) and isinstance(value, str | int | float):
            yield str(value)


def _scrubbed(problems: list[ConfigProblem], secrets: set[str]) -> list[ConfigProblem]:
    """The problems without any secret in their text (longest secrets first)."""
    ordered = sorted((secret for secret in secrets if secret), key=len, reverse=True)
    clean = []
    for problem in problems:
        message = problem.message
        for secret in ordered:
            message = message.replace(json.dumps(secret, ensure_ascii=False), '"<secret>"')
            if len(secret) >= _SCRUB_SUBSTRINGS_FROM:
                message = message.replace(secret, "<secret>")
        clean.append(attrs.evolve(problem, message=message))
    return clean
