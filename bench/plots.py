"""PNG plots of a report's series, with matplotlib's Agg backend (no screen).

Design: one PNG per :class:`~bench.report.Series`, named after it, drawn the
same way for every scenario so a reader learns to read them once: lines for
values over time, steps for counts per interval, bars for histograms and
for categories side by side. matplotlib is imported here only, and only
when a plot is drawn, so a run with ``--no-plots`` (or without the
``bench`` extra) never loads it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from .report import Series

__all__ = ["draw", "draw_all"]

DPI = 110


def draw(series: Series, out_dir: Path, *, subtitle: str = "") -> Path:
    """Draw ``series`` to ``out_dir/<name>.png`` and return the path.

    Raises:
        ValueError: a line whose length differs from ``x``.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    for label, ys in series.lines.items():
        if len(ys) != len(series.x):
            raise ValueError(
                f"series {series.name}: line {label!r} has {len(ys)} values for {len(series.x)} x"
            )
    fig, ax = plt.subplots(figsize=(8, 4.5))
    try:
        if series.kind == "bar":
            _bars(ax, series)
        else:
            for label, values in series.lines.items():
                ys = _gaps(values)
                if series.kind == "step":
                    ax.step(series.x, ys, where="post", label=label)
                else:
                    ax.plot(series.x, ys, label=label, linewidth=1.4)
        ax.set_title(series.title + (f"\n{subtitle}" if subtitle else ""), fontsize=10)
        ax.set_xlabel(series.x_label)
        ax.set_ylabel(series.y_label)
        ax.grid(True, alpha=0.3)
        if len(series.lines) > 1 or series.kind != "bar":
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"{series.name}.png"
        fig.savefig(path, dpi=DPI)
    finally:
        plt.close(fig)
    return path


def _gaps(values: Sequence[float | None]) -> list[float]:
    return [math.nan if v is None else v for v in values]  # matplotlib leaves NaN out


def _bars(ax: object, series: Series) -> None:
    n = max(1, len(series.lines))
    if series.categories:
        width = 0.8 / n
        for i, (label, ys) in enumerate(series.lines.items()):
            xs = [x + (i - (n - 1) / 2) * width for x in series.x]
            ax.bar(xs, _gaps(ys), width=width, label=label)  # type: ignore[attr-defined]
        ax.set_xticks(series.x, series.categories)  # type: ignore[attr-defined]
        return
    # A histogram: x are bin starts, equally spaced.
    step = series.x[1] - series.x[0] if len(series.x) > 1 else 1.0
    for label, ys in series.lines.items():
        ax.bar(series.x, _gaps(ys), width=step * 0.9, align="edge", label=label, alpha=0.8)  # type: ignore[attr-defined]


def draw_all(series: Sequence[Series], out_dir: Path, *, subtitle: str = "") -> list[Path]:
    """Draw every series that has data; return the files written."""
    return [draw(s, out_dir, subtitle=subtitle) for s in series if s.x and s.lines]
