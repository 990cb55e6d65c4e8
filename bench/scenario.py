"""Scenarios: what a run is, where its settings come from, what it may use.

Design:
- A scenario module exposes one :class:`Scenario`: a name, a parameters
  class (``@attrs.frozen``, every field with a default and a ``help``) and a
  synchronous ``run(params, context) -> Report``. ``bench.__main__`` keeps
  the registry.
- A run is described by a TOML file under ``bench/scenarios/`` (or anywhere:
  a user passes its path)::

      scenario = "channels"      # which registered scenario runs it
      description = "one line"
      time_limit = 300           # seconds; the run stops by itself
      [params]                   # fields of the scenario's parameters class
      channels = 1000
      [quick]                    # overrides for --quick (the tests' size)
      channels = 20

  Command-line options override the file: each parameter is an option of
  its own (``--channels 5000``), built from the class, so a new parameter
  needs no parser code. Values are structured with a cattrs converter of
  our own; every problem (unknown key, wrong type) is reported at once with
  its place (``channels.toml: [params] chanels: unknown; did you mean
  'channels'?``) and the run does not start (:class:`ScenarioError`, exit 2).
- :class:`RunContext` is what the harness gives a run: live progress, the
  time it has left, where its files go and, in load-test mode, the target.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import time
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, get_args, get_origin, get_type_hints

import attrs
import cattrs

from .progress import Progress
from .report import Report

__all__ = [
    "SCENARIO_DIR",
    "RunContext",
    "RunFile",
    "Scenario",
    "ScenarioError",
    "add_param_options",
    "load_run_file",
    "param_overrides",
    "resolve_params",
]

SCENARIO_DIR: Final = Path(__file__).resolve().parent / "scenarios"
FILE_KEYS: Final = ("scenario", "description", "time_limit", "params", "quick")


class ScenarioError(Exception):
    """A run that cannot start or cannot go on, with a message for the user.

    ``python -m bench`` prints it as one line (no traceback) and exits 2.
    """


@attrs.frozen(kw_only=True)
class Scenario:
    """One registered scenario.

    Attributes:
        name: the registry name a TOML file's ``scenario`` key refers to.
        help: one line for ``--help`` and ``--list``.
        params: an ``@attrs.frozen(kw_only=True)`` class; every field has a
            default and ``metadata={"help": ...}`` (and optionally
            ``"aliases": ["--short"]``, more option names); field types are int,
            float, str, bool or list[str].
        run: runs the scenario and returns its report.
    """

    name: str
    help: str
    params: type
    run: Callable[[Any, RunContext], Report]


@attrs.frozen(kw_only=True)
class RunFile:
    """A parsed scenario file.

    Attributes:
        path: where it was read from.
        scenario: the registered scenario it runs.
        description: one line about it.
        time_limit: seconds the whole run may take.
        params: the ``[params]`` table, not yet checked against the class.
        quick: the ``[quick]`` overrides.
    """

    path: Path
    scenario: str
    description: str
    time_limit: float
    params: Mapping[str, Any]
    quick: Mapping[str, Any]

    @property
    def stem(self) -> str:
        return self.path.stem


class RunContext:
    """What the harness hands a running scenario.

    Attributes:
        progress: live progress on the terminal.
        time_limit: seconds the whole run may take.
        quick: the reduced (test) size was asked for.
        out_dir: exists; the result file and plots go here, and the scenario
            may put its own files beside them.
        target: ``--target URL`` in load-test mode, else None.
        token: ``--token`` (the deployment's API token), else None.
        port_base: ``--port-base``: the first port of the node and emulators
            the run starts (0: any free ports).
    """

    def __init__(
        self,
        *,
        progress: Progress,
        time_limit: float,
        quick: bool,
        out_dir: Path,
        target: str | None = None,
        token: str | None = None,
        port_base: int = 0,
    ) -> None:
        self.progress = progress
        self.time_limit = time_limit
        self.quick = quick
        self.out_dir = out_dir
        self.target = target
        self.token = token
        self.port_base = port_base
        self._started = time.monotonic()

    def __repr__(self) -> str:
        return f"<RunContext {self.elapsed():.1f}/{self.time_limit:.0f} s out={self.out_dir}>"

    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.monotonic() - self._started

    def remaining(self) -> float:
        """Seconds left before the time limit (never negative)."""
        return max(0.0, self.time_limit - self.elapsed())


# ---------------------------------------------------------------- files


def find_run_file(name_or_path: str) -> Path:
    """``kernel`` -> ``bench/scenarios/kernel.toml``; a path is taken as is."""
    if name_or_path.endswith(".toml") or "/" in name_or_path:
        path = Path(name_or_path)
        if not path.is_file():
            raise ScenarioError(f"{name_or_path}: no such scenario file")
        return path
    path = SCENARIO_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in SCENARIO_DIR.glob("*.toml"))
        hint = _did_you_mean(name_or_path, known)
        raise ScenarioError(
            f"no scenario {name_or_path!r}{hint}; known: {', '.join(known)} "
            "(or give the path of a .toml file)"
        )
    return path


def load_run_file(path: Path) -> RunFile:
    """Read and check the top level of a scenario file.

    Raises:
        ScenarioError: unreadable file, bad TOML, unknown or mistyped keys.
    """
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from None
    problems = [
        f"{key}: unknown key{_did_you_mean(key, FILE_KEYS)}" for key in data if key not in FILE_KEYS
    ]
    scenario = data.get("scenario")
    if not isinstance(scenario, str) or not scenario:
        problems.append("scenario: required, the name of a registered scenario")
    limit = data.get("time_limit", 600)
    if isinstance(limit, bool) or not isinstance(limit, int | float) or limit <= 0:
        problems.append(f"time_limit: expected a positive number of seconds, got {limit!r}")
    for table in ("params", "quick"):
        if not isinstance(data.get(table, {}), dict):
            problems.append(f"{table}: expected a table ([{table}])")
    if problems:
        raise ScenarioError(f"{path}: " + "; ".join(problems))
    return RunFile(
        path=path,
        scenario=str(scenario),
        description=str(data.get("description", "")),
        time_limit=float(limit),
        params=data.get("params", {}),
        quick=data.get("quick", {}),
    )


# ---------------------------------------------------------------- parameters

_params = cattrs.Converter()


def _strict(value: Any, kind: type) -> Any:
    # TOML and the command line are typed: no silent "5" -> 5 or 1.5 -> 1.
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise TypeError(f"expected {kind.__name__}, got {value!r}")
    return value


for _kind in (int, float, str, bool):
    _params.register_structure_hook(_kind, _strict)


def _did_you_mean(name: str, known: Any) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _say(exc: BaseException, _type: Any) -> str:
    return "required" if isinstance(exc, KeyError) else str(exc)


def resolve_params(
    scenario: Scenario,
    run_file: RunFile,
    *,
    quick: bool,
    overrides: Mapping[str, Any],
) -> Any:
    """The file's ``[params]``, then ``[quick]`` if asked, then the command line.

    Raises:
        ScenarioError: every problem, with its place.
    """
    fields = tuple(a.name for a in attrs.fields(scenario.params))
    merged: dict[str, Any] = {}
    problems: list[str] = []
    for table, values in (("[params]", run_file.params), ("[quick]", run_file.quick)):
        if table == "[quick]" and not quick:
            continue
        for key, value in values.items():
            if key not in fields:
                problems.append(f"{table} {key}: unknown parameter{_did_you_mean(key, fields)}")
            else:
                merged[key] = value
    merged.update(overrides)
    if not problems:
        try:
            return _params.structure(merged, scenario.params)
        except (cattrs.BaseValidationError, ValueError, TypeError) as exc:
            # cattrs groups every field's problem; the class's own checks raise ValueError.
            if isinstance(exc, cattrs.BaseValidationError):
                problems = cattrs.transform_error(exc, path="params", format_exception=_say)
            else:
                problems = [str(exc)]
    raise ScenarioError(f"{run_file.path}: " + "; ".join(problems))


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_param_options(parser: argparse.ArgumentParser, params: type) -> None:
    """One ``--<field>`` option per parameter, typed from the class."""
    group = parser.add_argument_group("scenario parameters (override the file)")
    hints = get_type_hints(params)
    for field in attrs.fields(params):
        kind = hints[field.name]
        # argparse formats help with %: a literal one ("30% websocket") is doubled
        help_text = field.metadata.get("help", "").replace("%", "%%")
        default = field.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory()
        shown = str(",".join(map(str, default)) if isinstance(default, list) else default)
        shown = shown.replace("%", "%%")
        dest = f"param__{field.name}"
        # a short name beside the field's own (``rtt_ms``: --rtt-ms and --rtt)
        names = [_option(field.name), *field.metadata.get("aliases", ())]
        if kind is bool:
            group.add_argument(
                *names,
                dest=dest,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"{help_text} (class default {shown})",
            )
        elif get_origin(kind) is list:
            (item,) = get_args(kind)
            group.add_argument(
                *names,
                dest=dest,
                type=functools.partial(_split, item),
                default=None,
                metavar="A,B,...",
                help=f"{help_text} (class default {shown})",
            )
        else:
            group.add_argument(
                *names,
                dest=dest,
                type=kind,
                default=None,
                metavar=kind.__name__.upper(),
                help=f"{help_text} (class default {shown})",
            )


def _split(item: Callable[[str], Any], text: str) -> list[Any]:
    return [item(x) for x in text.split(",") if x]


def param_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The parameters given on the command line."""
    prefix = "param__"
    return {
        key[len(prefix) :]: value
        for key, value in vars(args).items()
        if key.startswith(prefix) and value is not None
    }
