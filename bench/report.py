"""Benchmark results: figures, targets, the printed table and the JSON file.

Design:
- A :class:`Figure` is one measured quantity on our side, as a median over
  the repetitions with every raw sample kept, and, where the scenario has
  one, beside the same workload written directly on trio (or on a peer
  runtime). ``ratio`` is always ``value / baseline`` in the figure's own
  unit, so "ask ≤ 0.5x trio" and "fan-in ≥ 7x trio" both read off the same
  column. Load-test figures (delivered msgs/s, p99 latency) have no
  baseline: :meth:`Figure.single`.
- A :class:`Series` is a measurement over time (or over categories) that a
  picture shows better than a table; :mod:`bench.plots` draws each one.
- A :class:`Target` applies either to the ratio or to the absolute value and
  yields a verdict; figures without a target are there so that a reader sees
  the fairer comparisons beside the headline ones.
- The JSON file is written through one cattrs converter (STYLE: one converter
  per wire format) and carries the scenario, its parameters, the machine
  (CPU count and model, Python and package versions) and every figure.
"""

from __future__ import annotations

import datetime
import enum
import io
import json
import math
import os
import platform
import sys
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, Final, Literal

import attrs
import cattrs

__all__ = [
    "Figure",
    "Machine",
    "Report",
    "Series",
    "Target",
    "Verdict",
    "load_average",
    "machine_info",
    "percentile",
    "read_json",
    "render_compare",
    "render_table",
    "to_json",
    "write_json",
]

PACKAGES = (
    "switchboard-runtime",
    "trio",
    "trio-websocket",
    "hypercorn",
    "attrs",
    "cattrs",
    "psutil",
    "httpx",
    "matplotlib",
    "pykka",
)


class Verdict(enum.Enum):
    """How a figure stands against its target."""

    PASS = "pass"
    FAIL = "fail"
    NONE = "no target"


@attrs.frozen(kw_only=True)
class Target:
    """A goal for one figure.

    Attributes:
        applies_to: ``"ratio"`` (ours / trio) or ``"value"`` (our absolute figure).
        op: ``"<="`` or ``">="``.
        threshold: the bound, in the unit of what it applies to.
        text: how the table shows it, e.g. ``"ratio ≤ 0.5"``.
    """

    applies_to: Literal["ratio", "value"]
    op: Literal["<=", ">="]
    threshold: float
    text: str

    def check(self, value: float, ratio: float) -> Verdict:
        x = ratio if self.applies_to == "ratio" else value
        ok = x <= self.threshold if self.op == "<=" else x >= self.threshold
        return Verdict.PASS if ok else Verdict.FAIL


@attrs.frozen(kw_only=True)
class Figure:
    """One measured quantity, ours beside a baseline where there is one.

    Attributes:
        name: stable key, e.g. ``"ask_round_trip"``.
        label: what the table shows.
        unit: unit of ``value`` and ``baseline``.
        value: our median over the repetitions.
        baseline: the baseline workload's median, or None.
        baseline_label: which workload the baseline is ("" without one).
        ratio: ``value / baseline``, or None without a baseline.
        better: whether a lower or a higher value is better.
        samples: our per-repetition values.
        baseline_samples: the baseline's per-repetition values.
        target: the goal, if any.
        verdict: ``target`` applied to the medians.
    """

    name: str
    label: str
    unit: str
    value: float
    baseline: float | None
    baseline_label: str
    ratio: float | None
    better: Literal["lower", "higher"]
    samples: list[float]
    baseline_samples: list[float]
    target: Target | None
    verdict: Verdict

    @classmethod
    def single(
        cls,
        *,
        name: str,
        label: str,
        unit: str,
        value: float,
        better: Literal["lower", "higher"],
        target: Target | None = None,
        samples: list[float] | None = None,
    ) -> Figure:
        """A figure with no baseline (a load test's absolute result).

        Raises:
            ValueError: a target on the ratio (there is none).
        """
        if target is not None and target.applies_to == "ratio":
            raise ValueError(f"{name}: a figure without a baseline has no ratio to target")
        verdict = target.check(value, math.nan) if target is not None else Verdict.NONE
        return cls(
            name=name,
            label=label,
            unit=unit,
            value=value,
            baseline=None,
            baseline_label="",
            ratio=None,
            better=better,
            samples=list(samples) if samples is not None else [value],
            baseline_samples=[],
            target=target,
            verdict=verdict,
        )

    @classmethod
    def from_samples(
        cls,
        *,
        name: str,
        label: str,
        unit: str,
        samples: list[float],
        baseline_samples: list[float],
        baseline_label: str,
        better: Literal["lower", "higher"],
        target: Target | None = None,
    ) -> Figure:
        value = median(samples)
        baseline = median(baseline_samples)
        ratio = value / baseline if baseline else math.inf
        verdict = target.check(value, ratio) if target is not None else Verdict.NONE
        return cls(
            name=name,
            label=label,
            unit=unit,
            value=value,
            baseline=baseline,
            baseline_label=baseline_label,
            ratio=ratio,
            better=better,
            samples=list(samples),
            baseline_samples=list(baseline_samples),
            target=target,
            verdict=verdict,
        )


@attrs.frozen(kw_only=True)
class Series:
    """Values over time (or categories) for a plot.

    Attributes:
        name: file stem of its PNG, e.g. ``"latency_over_time"``.
        title: the plot's title.
        x_label: e.g. ``"seconds since load start"``.
        y_label: e.g. ``"ms"``.
        x: the x values (seconds, bin starts or category indices).
        lines: legend label -> y values, each as long as ``x``; None where
            there is no value (an interval with no samples: a gap in the line).
        kind: ``"line"``, ``"step"`` (counts per interval), ``"bar"``
            (a histogram or categories side by side) or ``"percentile"``
            (a latency distribution: ``x`` from
            :func:`bench.plots.percentile_x`, HdrHistogram's plot).
        categories: for ``"bar"`` over categories, their names (same
            length as ``x``); empty otherwise.
        group: series with the same group are drawn as small multiples in
            one figure, ``<group>.png``; empty: a figure of its own.
        marks: events on the x axis (label -> x), drawn as vertical lines.
    """

    name: str
    title: str
    x_label: str
    y_label: str
    x: list[float]
    lines: Mapping[str, Sequence[float | None]]
    kind: Literal["line", "step", "bar", "percentile"] = "line"
    categories: list[str] = attrs.Factory(list)
    group: str = ""
    marks: Mapping[str, float] = attrs.Factory(dict)


@attrs.frozen(kw_only=True)
class Machine:
    """Where the benchmark ran."""

    cpu_count: int | None
    cpus_usable: int | None
    cpu_model: str
    platform: str
    python: str
    python_implementation: str
    packages: dict[str, str]


@attrs.frozen(kw_only=True)
class Report:
    """Everything one scenario run produced.

    Attributes:
        scenario: the scenario's registry name.
        started: UTC timestamp (ISO 8601).
        duration: seconds the whole run took.
        parameters: the knobs the run used.
        machine: CPU, Python and package versions.
        load_average: the 1/5/15-minute load averages before and after the
            run: other processes on the machine compete for the CPUs.
        section_seconds: wall time of each part of the run.
        figures: every measured figure.
        notes: what a reader must know to interpret the figures.
        series: measurements over time, for the plots.
        plots: the PNG files drawn from ``series`` (paths as written).
    """

    scenario: str
    started: str
    duration: float
    parameters: dict[str, Any]
    machine: Machine
    load_average: dict[str, list[float]]
    section_seconds: dict[str, float]
    figures: list[Figure]
    notes: list[str]
    series: list[Series] = attrs.Factory(list)
    plots: list[str] = attrs.Factory(list)

    def figure(self, name: str) -> Figure:
        """The figure called ``name``.

        Raises:
            KeyError: no such figure.
        """
        for f in self.figures:
            if f.name == name:
                return f
        raise KeyError(name)


def median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    if n == 0:
        raise ValueError("median of no samples")
    mid = n // 2
    return s[mid] if n % 2 else (s[mid - 1] + s[mid]) / 2


def percentile(sorted_values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of already sorted values, nearest rank.

    Raises:
        ValueError: no values.
    """
    if not sorted_values:
        raise ValueError("percentile of no values")
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> list[float]:
    """The 1, 5 and 15-minute load averages (empty where unsupported)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def machine_info() -> Machine:
    """Describe this machine and interpreter."""
    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = "not installed"
    try:
        usable: int | None = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = None
    return Machine(
        cpu_count=os.cpu_count(),
        cpus_usable=usable,
        cpu_model=_cpu_model(),
        platform=platform.platform(),
        python=sys.version.split()[0],
        python_implementation=platform.python_implementation(),
        packages=packages,
    )


# ---------------------------------------------------------------- JSON

_json = cattrs.Converter()


def to_json(report: Report) -> dict[str, Any]:
    """The report as JSON-ready data."""
    data: dict[str, Any] = _json.unstructure(report)
    return data


def write_json(report: Report, path: str | os.PathLike[str]) -> None:
    """Write the report to ``path`` (UTF-8, indented)."""
    text = json.dumps(to_json(report), indent=2, ensure_ascii=False, allow_nan=False)
    Path(path).write_text(text + "\n", encoding="utf-8")


def read_json(path: str | os.PathLike[str]) -> Report:
    """Read a result file written by :func:`write_json`.

    Raises:
        ValueError: not a result file (with what was wrong and where).
        OSError: unreadable.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON: {exc}") from None
    try:
        return _json.structure(data, Report)
    except Exception as exc:
        details = "; ".join(cattrs.transform_error(exc, path="$"))
        raise ValueError(f"{path}: not a bench result file: {details}") from None


# ---------------------------------------------------------------- table


def _num(x: float) -> str:
    """Three significant figures, thousands separated, no exponent."""
    if x == 0 or not math.isfinite(x):
        return str(x)
    if float(x).is_integer() and abs(x) >= 1:  # counts: 5,000 channels, not 5.00e3
        return f"{int(x):,}"
    digits = max(0, 2 - math.floor(math.log10(abs(x))))
    return f"{x:,.{digits}f}"


def _grid(rows: list[tuple[str, ...]], right: set[int]) -> list[str]:
    """Rows as aligned text columns, a rule under the first."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]

    def line(r: tuple[str, ...]) -> str:
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    return [line(rows[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in rows[1:]]


def _verdict(f: Figure) -> str:
    return f.verdict.name if f.verdict is not Verdict.NONE else "-"


TABLE_WIDTH: Final = 100  # columns, when the output is no terminal


def render_table(report: Report, *, width: int | None = None) -> str:
    """The human-readable summary: the run, one row per figure, then the notes.

    The figures are a rich table fitted to ``width`` columns (default: the
    terminal's, else :data:`TABLE_WIDTH`): a long label folds within its
    cell, numbers never break. The long texts (machine, parameters,
    baselines, plots, notes) come after it, wrapped to the same width.
    """
    import shutil
    import textwrap

    from rich import box
    from rich.console import Console
    from rich.table import Table

    columns = width or shutil.get_terminal_size((TABLE_WIDTH, 24)).columns
    m = report.machine

    def para(label: str, text: str) -> list[str]:
        return textwrap.wrap(
            text,
            width=columns,
            initial_indent=f"{label:<9}",
            subsequent_indent=" " * 9,
            break_on_hyphens=False,
        ) or [label]

    head = para("scenario", f"{report.scenario}  ({report.started}, {report.duration:.1f} s)")
    # Baselines are long sentences: the table shows a letter, the legend the text.
    letters: dict[str, str] = {}
    for f in report.figures:
        if f.baseline is not None:
            letters.setdefault(f.baseline_label, "abcdefghijklmnopqrstuvwxyz"[len(letters) % 26])
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    table.add_column("figure", ratio=1, overflow="fold")
    table.add_column("switchboard" if letters else "value", justify="right", no_wrap=True)
    if letters:
        table.add_column("baseline", justify="right", no_wrap=True)
        table.add_column("ratio", justify="right", no_wrap=True)
    table.add_column("target", no_wrap=True)
    table.add_column("verdict", no_wrap=True)
    for f in report.figures:
        target = f.target.text if f.target is not None else "-"
        cells = [f.label, f"{_num(f.value)} {f.unit}"]
        if letters:
            base = (
                f"{_num(f.baseline)} {f.unit} [{letters[f.baseline_label]}]"
                if f.baseline is not None
                else "-"
            )
            cells += [base, f"{f.ratio:.2f}x" if f.ratio is not None else "-"]
        table.add_row(*cells, target, _verdict(f))
    console = Console(width=columns, record=True, file=io.StringIO(), color_system=None)
    console.print(table, markup=False, highlight=False)
    body = [line.rstrip() for line in console.export_text().splitlines()]
    after: list[str] = [""]
    if letters:
        after.append("baselines (same work, same run):")
        for label, letter in letters.items():
            after += textwrap.wrap(
                f"[{letter}] {label}",
                width=columns,
                initial_indent="  ",
                subsequent_indent="      ",
            )
        after.append("")
    after += para(
        "machine",
        f"{m.cpu_count} CPUs ({m.cpus_usable} usable), {m.cpu_model}; Python {m.python}; "
        + ", ".join(f"{k} {v}" for k, v in m.packages.items()),
    )
    after += para(
        "load",
        ", ".join(f"{k} {'/'.join(map(str, v))}" for k, v in report.load_average.items())
        + " (1/5/15-min load averages)",
    )
    after += para("params", ", ".join(f"{k}={v}" for k, v in report.parameters.items()))
    after += para(
        "sections", ", ".join(f"{k} {v:.1f} s" for k, v in report.section_seconds.items())
    )
    if report.plots:
        after += ["", "plots:"] + [f"  {p}" for p in report.plots]
    if report.notes:
        after += ["", "notes:"]
        for note in report.notes:
            after += textwrap.wrap(
                note, width=columns, initial_indent="  - ", subsequent_indent="    "
            )
    return "\n".join([*head, "", *body, *after])


def render_compare(before: Report, after: Report, *, names: tuple[str, str]) -> str:
    """Figure by figure, ``after`` against ``before``: values, ratio, better or worse.

    The ratio is ``after / before`` in the figure's unit; the last column
    reads it through the figure's ``better`` (a higher latency is worse).
    Figures in only one file are listed as such, never silently dropped.
    """
    head = [f"A = {names[0]}  ({before.scenario}, {before.started})"]
    head.append(f"B = {names[1]}  ({after.scenario}, {after.started})")
    if before.scenario != after.scenario:
        head.append(
            f"warning: different scenarios ({before.scenario} vs {after.scenario}); "
            "only figures with the same name are compared"
        )
    changed = {
        k: (before.parameters.get(k), after.parameters.get(k))
        for k in sorted(set(before.parameters) | set(after.parameters))
        if before.parameters.get(k) != after.parameters.get(k)
    }
    if changed:
        head.append(
            "parameters differ: "
            + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items())
        )
    if before.machine != after.machine:
        head.append("machines differ: compare with care")
    head.append("")
    old = {f.name: f for f in before.figures}
    new = {f.name: f for f in after.figures}
    rows: list[tuple[str, ...]] = [("figure", "A", "B", "B/A", "change")]
    for name in list(old) + [n for n in new if n not in old]:
        a, b = old.get(name), new.get(name)
        if a is None or b is None:
            only = "A" if b is None else "B"
            f = a or b
            assert f is not None
            rows.append(
                (
                    f.label,
                    "-" if a is None else _num(a.value),
                    "-" if b is None else _num(b.value),
                    "-",
                    f"only in {only}",
                )
            )
            continue
        ratio = b.value / a.value if a.value else math.inf
        rows.append(
            (
                b.label,
                f"{_num(a.value)} {a.unit}",
                f"{_num(b.value)} {b.unit}",
                f"{ratio:.2f}x" if math.isfinite(ratio) else "-",
                _change(ratio, b.better),
            )
        )
    return "\n".join(head + _grid(rows, {1, 2, 3}))


NOISE: Final = 0.03  # a change within 3 % is reported as "same"


def _change(ratio: float, better: Literal["lower", "higher"]) -> str:
    if not math.isfinite(ratio):
        return "A was 0"
    if abs(ratio - 1) <= NOISE:
        return "same"
    improved = ratio < 1 if better == "lower" else ratio > 1
    pct = abs(ratio - 1) * 100
    return f"{'better' if improved else 'WORSE'} by {pct:.0f}%"
