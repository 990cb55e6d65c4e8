"""Benchmark results: figures, targets, the printed table and the JSON file.

Design:
- A :class:`Figure` is one measured quantity on our side beside the same
  workload written directly on trio, both as medians over the repetitions,
  with every raw sample kept. ``ratio`` is always ``value / baseline`` in the
  figure's own unit, so "ask ≤ 0.5x trio" and "fan-in ≥ 7x trio" both read
  off the same column.
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
import json
import math
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import attrs
import cattrs

__all__ = [
    "Figure",
    "Machine",
    "Report",
    "Target",
    "Verdict",
    "load_average",
    "machine_info",
    "render_table",
    "to_json",
    "write_json",
]

PACKAGES = ("trio", "attrs", "cattrs", "psutil", "switchboard-runtime")


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
    """One measured quantity, ours beside the trio baseline.

    Attributes:
        name: stable key, e.g. ``"ask_round_trip"``.
        label: what the table shows.
        unit: unit of ``value`` and ``baseline``.
        value: our median over the repetitions.
        baseline: the trio workload's median.
        baseline_label: which trio workload the baseline is.
        ratio: ``value / baseline``.
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
    baseline: float
    baseline_label: str
    ratio: float
    better: Literal["lower", "higher"]
    samples: list[float]
    baseline_samples: list[float]
    target: Target | None
    verdict: Verdict

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


def median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    if n == 0:
        raise ValueError("median of no samples")
    mid = n // 2
    return s[mid] if n % 2 else (s[mid - 1] + s[mid]) / 2


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


# ---------------------------------------------------------------- table


def _num(x: float) -> str:
    """Three significant figures, thousands separated, no exponent."""
    if x == 0 or not math.isfinite(x):
        return str(x)
    digits = max(0, 2 - math.floor(math.log10(abs(x))))
    return f"{x:,.{digits}f}"


def render_table(report: Report) -> str:
    """The human-readable summary: one row per figure, then the notes."""
    m = report.machine
    head = [
        f"scenario {report.scenario}  ({report.started}, {report.duration:.1f} s)",
        f"machine  {m.cpu_count} CPUs ({m.cpus_usable} usable), {m.cpu_model}; "
        f"Python {m.python}; " + ", ".join(f"{k} {v}" for k, v in m.packages.items()),
        "load     "
        + ", ".join(f"{k} {'/'.join(map(str, v))}" for k, v in report.load_average.items())
        + " (1/5/15-min load averages)",
        "params   " + ", ".join(f"{k}={v}" for k, v in report.parameters.items()),
        "sections " + ", ".join(f"{k} {v:.1f} s" for k, v in report.section_seconds.items()),
        "",
    ]
    # Baselines are long sentences: the table shows a letter, the legend the text.
    letters: dict[str, str] = {}
    for f in report.figures:
        letters.setdefault(f.baseline_label, "abcdefghijklmnopqrstuvwxyz"[len(letters) % 26])
    columns = ("figure", "switchboard", "trio baseline", "ratio", "target", "verdict")
    rows = [columns]
    for f in report.figures:
        rows.append(
            (
                f.label,
                f"{_num(f.value)} {f.unit}",
                f"{_num(f.baseline)} {f.unit} [{letters[f.baseline_label]}]",
                f"{f.ratio:.2f}x",
                f.target.text if f.target is not None else "-",
                f.verdict.name if f.verdict is not Verdict.NONE else "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(columns))]
    right = {1, 2, 3}

    def line(r: tuple[str, ...]) -> str:
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    body = [line(rows[0]), "  ".join("-" * w for w in widths)]
    body += [line(r) for r in rows[1:]]
    legend = ["", "trio baselines (same work, same process):"]
    legend += [f"  [{letter}] {label}" for label, letter in letters.items()]
    notes = ["", "notes:"] + [f"  - {n}" for n in report.notes] if report.notes else []
    return "\n".join(head + body + legend + notes)
