"""Live progress on the terminal: the phase, a bar and the running figures.

Design: a run calls :meth:`Progress.update` as often as it likes (every
message, every connect); forwarding is rate-limited here, so the call costs
a clock read. On a terminal, rich draws (``rich.progress``): one row per
phase, which stays on screen with its final state when the next phase
begins, each row fitted to the terminal's width (the figures are cut with
an ellipsis rather than wrapped), redrawn in place a few times a second.
Otherwise (CI logs, a pipe) a plain line is printed every few seconds and
once at the end of each phase, so a log stays readable and shows where each
phase ended. Everything goes to stderr: stdout carries the summary table
only. rich is imported when a terminal is drawn on (it is in the ``bench``
extra, which ``python -m bench`` checks for before it starts).
"""

from __future__ import annotations

import math
import sys
import threading
import time
from typing import Any, Final, TextIO

__all__ = ["Progress"]

TTY_INTERVAL: Final = 0.2  # seconds between forwarded updates on a terminal
LOG_INTERVAL: Final = 5.0  # seconds between lines otherwise
BAR_WIDTH: Final = 24  # characters, plain lines


def _format(value: float | str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int) or (math.isfinite(value) and value == int(value) and value > 99):
        return f"{int(value):,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except Exception:
        return False


class Progress:
    """Progress of one run, drawn on ``stream`` (stderr by default).

    Args:
        name: shown at the start of every line (the scenario).
        stream: where to draw.
        interactive: draw live with rich; default: whether ``stream`` is a terminal.
        width: columns to draw in (default: the terminal's).
    """

    def __init__(
        self,
        name: str,
        *,
        stream: TextIO | None = None,
        interactive: bool | None = None,
        width: int | None = None,
    ) -> None:
        self.name = name
        self.stream = stream if stream is not None else sys.stderr
        self.interactive = _is_terminal(self.stream) if interactive is None else interactive
        self._phase = ""
        self._total: float | None = None
        self._unit = ""
        self._done: float | None = None
        self._figures: dict[str, float | str] = {}
        self._phase_started = time.monotonic()
        self._drawn = 0.0
        self._lock = threading.Lock()  # the watchdog's note comes from its own thread
        self._live: Any = None  # rich.progress.Progress while drawing on a terminal
        self._task: Any = None
        if self.interactive:
            self._live = self._open_live(width)

    def __repr__(self) -> str:
        return f"<Progress {self.name}: {self._phase!r} {self._done}/{self._total}>"

    def _open_live(self, width: int | None) -> Any:
        from rich.console import Console
        from rich.progress import BarColumn, TaskProgressColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichProgress
        from rich.table import Column

        console = Console(file=self.stream, width=width, force_terminal=True, highlight=False)
        live = RichProgress(
            TextColumn(
                "[bold]{task.description}", table_column=Column(no_wrap=True, overflow="ellipsis")
            ),
            BarColumn(bar_width=None, table_column=Column(ratio=1, min_width=10)),
            TaskProgressColumn(),
            TextColumn("{task.fields[count]}", table_column=Column(no_wrap=True)),
            TimeElapsedColumn(),
            TextColumn(
                "{task.fields[figures]}",
                table_column=Column(ratio=2, no_wrap=True, overflow="ellipsis"),
            ),
            console=console,
            auto_refresh=True,
            refresh_per_second=5,
            expand=True,
        )
        live.start()
        return live

    def phase(self, text: str, total: float | None = None, unit: str = "") -> None:
        """Start a named phase; with ``total``, a bar shows how far it is."""
        with self._lock:
            self._end_phase()
            self._phase, self._total, self._unit = text, total, unit
            self._done, self._figures = (0 if total is not None else None), {}
            self._phase_started = time.monotonic()
            self._drawn = 0.0
            if self._live is not None:
                from rich.markup import escape

                self._task = self._live.add_task(
                    escape(f"[{self.name}] {text}"), total=total, count="", figures=""
                )
            else:
                self._write(f"[{self.name}] {text}\n")

    def update(self, done: float | None = None, **figures: float | str) -> None:
        """Record progress and running figures; drawn at most a few times a second."""
        if done is not None:
            self._done = done
        self._figures.update(figures)
        now = time.monotonic()
        if now - self._drawn >= (TTY_INTERVAL if self.interactive else LOG_INTERVAL):
            self._drawn = now
            with self._lock:
                self._draw()

    def note(self, text: str) -> None:
        """A line above the bars (a warning, a decision the run took)."""
        with self._lock:
            if self._live is not None:
                self._live.console.print(f"[{self.name}] {text}", markup=False, highlight=False)
            else:
                self._write(f"[{self.name}] {text}\n")

    def close(self) -> None:
        """Draw the last phase's final state and stop drawing."""
        with self._lock:
            self._end_phase()
            if self._live is not None:
                self._live.stop()
                self._live = None

    def line(self) -> str:
        """The current bar and figures as one line of text (the plain rendering)."""
        elapsed = time.monotonic() - self._phase_started
        parts = [f"[{self.name}] {self._phase}"]
        if self._total:
            done = self._done or 0
            frac = min(1.0, max(0.0, done / self._total))
            filled = round(frac * BAR_WIDTH)
            parts.append(
                f"|{'#' * filled}{'.' * (BAR_WIDTH - filled)}| {frac:4.0%} {self._count()}"
            )
        elif self._done is not None:
            parts.append(self._count())
        parts.append(f"{elapsed:.0f}s")
        if self._figures:
            parts.append(self._figure_text())
        return "  ".join(parts)

    def _count(self) -> str:
        unit = f" {self._unit}" if self._unit else ""
        if self._done is None:
            return ""
        if self._total:
            return f"{_format(self._done)}/{_format(self._total)}{unit}"
        return f"{_format(self._done)}{unit}"

    def _figure_text(self) -> str:
        return " ".join(f"{k}={_format(v)}" for k, v in self._figures.items())

    def _draw(self) -> None:
        if self._live is not None:
            if self._task is not None:
                from rich.markup import escape

                self._live.update(
                    self._task,
                    completed=self._done or 0,
                    count=escape(self._count()),
                    figures=escape(self._figure_text()),
                )
        elif self._phase:
            self._write(self.line() + "\n")

    def _end_phase(self) -> None:
        """Draw where the phase ended (its final count and figures), once."""
        if not self._phase:
            return
        if self._done is not None or self._figures:
            self._draw()
        if self._live is not None and self._task is not None:
            self._live.stop_task(self._task)
        self._phase = ""

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()
