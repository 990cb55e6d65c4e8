"""PNG plots of a report's series, with matplotlib's Agg backend (no screen).

Design: every scenario's series are drawn the same way, so a reader learns
to read them once: lines for values over time, steps for counts per
interval, bars for histograms and for categories side by side (each bar
with its value written on it), and latency distributions as percentile
plots in the HdrHistogram style (the x axis is the percentile on a log
scale of 1/(1 - p), so 99 %, 99.9 % and 99.99 % get as much room as the
median). Series that share a ``group`` are drawn as small multiples in one
figure (one PNG); a series without a group gets a PNG of its own. An axis
whose positive values span two decades or more is logarithmic, so a
0.8 µs bar stays visible beside a 57 µs one. matplotlib is imported here
only, and only when a plot is drawn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from .report import Series

__all__ = ["PERCENTILES", "draw", "draw_all", "percentile_x", "spans_decades"]

DPI: Final = 110
PANEL: Final = (6.4, 4.0)  # inches per small multiple
MAX_COLUMNS: Final = 3  # small multiples per row
DECADES: Final = 1.5  # an axis spanning this many powers of ten (x32) or more is logarithmic
PERCENTILES: Final = (50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99)
_TICKS: Final = ((50.0, "50%"), (90.0, "90%"), (99.0, "99%"), (99.9, "99.9%"), (99.99, "99.99%"))


def percentile_x(q: float) -> float:
    """Where percentile ``q`` (0-100) sits on a percentile plot's axis: 1 / (1 - q)."""
    return 1.0 / max(1e-9, 1.0 - q / 100.0)


def spans_decades(values: Sequence[float | None]) -> bool:
    """Whether the positive values span :data:`DECADES` powers of ten or more."""
    positive = [v for v in values if v is not None and v > 0 and math.isfinite(v)]
    return len(positive) > 1 and math.log10(max(positive) / min(positive)) >= DECADES


def _check(series: Series) -> None:
    for label, ys in series.lines.items():
        if len(ys) != len(series.x):
            raise ValueError(
                f"series {series.name}: line {label!r} has {len(ys)} values for {len(series.x)} x"
            )


def draw(series: Series, out_dir: Path, *, subtitle: str = "") -> Path:
    """Draw ``series`` alone to ``out_dir/<name>.png`` and return the path.

    Raises:
        ValueError: a line whose length differs from ``x``.
    """
    return _figure([series], out_dir / f"{series.name}.png", title=subtitle)


def draw_all(series: Sequence[Series], out_dir: Path, *, subtitle: str = "") -> list[Path]:
    """Draw every series that has data, a group per figure; return the files written.

    Raises:
        ValueError: a line whose length differs from its ``x``.
    """
    groups: dict[str, list[Series]] = {}
    alone: list[Series] = []
    for s in series:
        if not (s.x and s.lines):
            continue
        if s.group:
            groups.setdefault(s.group, []).append(s)
        else:
            alone.append(s)
    paths = [
        _figure(members, out_dir / f"{name}.png", title=subtitle)
        for name, members in groups.items()
    ]
    paths += [draw(s, out_dir, subtitle=subtitle) for s in alone]
    return paths


def _figure(members: Sequence[Series], path: Path, *, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    for s in members:
        _check(s)
    columns = min(MAX_COLUMNS, len(members))
    rows = math.ceil(len(members) / columns)
    fig, axes = plt.subplots(
        rows, columns, figsize=(PANEL[0] * columns, PANEL[1] * rows), squeeze=False
    )
    try:
        for ax, s in zip(axes.flat, members, strict=False):
            _panel(ax, s)
        for ax in list(axes.flat)[len(members) :]:
            ax.set_visible(False)
        if title:
            fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        fig.savefig(path, dpi=DPI)
    finally:
        plt.close(fig)
    return path


def _panel(ax: Any, series: Series) -> None:
    if series.kind == "bar":
        _bars(ax, series)
    elif series.kind == "percentile":
        _percentiles(ax, series)
    else:
        for label, values in series.lines.items():
            ys = _gaps(values)
            if series.kind == "step":
                ax.step(series.x, ys, where="post", label=label)
            else:
                ax.plot(series.x, ys, label=label, linewidth=1.4)
        if spans_decades([v for ys in series.lines.values() for v in ys]):
            ax.set_yscale("log")
        for label, x in series.marks.items():
            ax.axvline(x, color="grey", linestyle=":", linewidth=1)
            ax.annotate(
                label,
                (x, 1.0),
                xycoords=("data", "axes fraction"),
                fontsize=7,
                rotation=90,
                va="top",
                ha="right",
            )
    ax.set_title(series.title, fontsize=9)
    ax.set_xlabel(series.x_label)
    ax.set_ylabel(series.y_label)
    ax.grid(True, alpha=0.3, which="both" if ax.get_yscale() == "log" else "major")
    if len(series.lines) > 1 or series.kind not in ("bar",):
        ax.legend(fontsize=8)


def _gaps(values: Sequence[float | None]) -> list[float]:
    return [math.nan if v is None else v for v in values]  # matplotlib leaves NaN out


def _short(value: float) -> str:
    if not math.isfinite(value):
        return ""
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _bars(ax: Any, series: Series) -> None:
    n = max(1, len(series.lines))
    values = [v for ys in series.lines.values() for v in ys]
    if spans_decades(values):
        ax.set_yscale("log")
    if series.categories:
        width = 0.8 / n
        for i, (label, ys) in enumerate(series.lines.items()):
            xs = [x + (i - (n - 1) / 2) * width for x in series.x]
            bars = ax.bar(xs, _gaps(ys), width=width, label=label)
            ax.bar_label(bars, labels=[_short(v) for v in _gaps(ys)], fontsize=7, padding=2)
        ax.set_xticks(series.x, series.categories)
        return
    # A histogram: x are bin starts, equally spaced.
    step = series.x[1] - series.x[0] if len(series.x) > 1 else 1.0
    for label, ys in series.lines.items():
        ax.bar(series.x, _gaps(ys), width=step * 0.9, align="edge", label=label, alpha=0.8)


def _percentiles(ax: Any, series: Series) -> None:
    """HdrHistogram's plot: latency by percentile, the tail stretched out."""
    from matplotlib.ticker import NullLocator

    ax.set_xscale("log")
    for label, ys in series.lines.items():
        ax.plot(series.x, _gaps(ys), label=label, linewidth=1.4, marker=".")
    if spans_decades([v for ys in series.lines.values() for v in ys]):
        ax.set_yscale("log")
    top = max(series.x)
    ticks = [(percentile_x(q), text) for q, text in _TICKS if percentile_x(q) <= top * 1.01]
    ax.set_xticks([x for x, _ in ticks], [text for _, text in ticks])
    ax.xaxis.set_minor_locator(NullLocator())
