"""Live progress on the terminal: the phase, a bar and the running figures.

Design: a run calls :meth:`Progress.update` as often as it likes (every
message, every connect); drawing is rate-limited here, so the call costs a
clock read. On a terminal the bar redraws in place (``\\r``) a few times a
second; otherwise (CI logs, a pipe) a plain line is printed every few
seconds, so a log stays readable. Everything goes to stderr: stdout carries
the summary table only.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Final, TextIO

__all__ = ["Progress"]

TTY_INTERVAL: Final = 0.2  # seconds between redraws on a terminal
LOG_INTERVAL: Final = 5.0  # seconds between lines otherwise
BAR_WIDTH: Final = 24


def _format(value: float | str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int) or (math.isfinite(value) and value == int(value) and value > 99):
        return f"{int(value):,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


class Progress:
    """Progress of one run, drawn on ``stream`` (stderr by default).

    Args:
        name: shown at the start of every line (the scenario).
        stream: where to draw.
        interactive: redraw in place; default: whether ``stream`` is a terminal.
    """

    def __init__(
        self, name: str, *, stream: TextIO | None = None, interactive: bool | None = None
    ) -> None:
        self.name = name
        self.stream = stream if stream is not None else sys.stderr
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self._phase = ""
        self._total: float | None = None
        self._unit = ""
        self._done: float | None = None
        self._figures: dict[str, float | str] = {}
        self._phase_started = time.monotonic()
        self._drawn = 0.0
        self._dirty_line = False

    def __repr__(self) -> str:
        return f"<Progress {self.name}: {self._phase!r} {self._done}/{self._total}>"

    def phase(self, text: str, total: float | None = None, unit: str = "") -> None:
        """Start a named phase; with ``total``, a bar shows how far it is."""
        self._finish_line()
        self._phase, self._total, self._unit = text, total, unit
        self._done, self._figures = (0 if total is not None else None), {}
        self._phase_started = time.monotonic()
        self._write(f"[{self.name}] {text}\n")
        self._drawn = 0.0

    def update(self, done: float | None = None, **figures: float | str) -> None:
        """Record progress and running figures; redraws at most a few times a second."""
        if done is not None:
            self._done = done
        self._figures.update(figures)
        now = time.monotonic()
        if now - self._drawn >= (TTY_INTERVAL if self.interactive else LOG_INTERVAL):
            self._drawn = now
            self._draw()

    def note(self, text: str) -> None:
        """A line above the bar (a warning, a decision the run took)."""
        self._finish_line()
        self._write(f"[{self.name}] {text}\n")

    def close(self) -> None:
        """Leave the last bar on screen and end its line."""
        if self._done is not None or self._figures:
            self._draw()
        self._finish_line()

    def line(self) -> str:
        """The current bar and figures as one line of text."""
        elapsed = time.monotonic() - self._phase_started
        parts = [f"[{self.name}] {self._phase}"]
        if self._total:
            done = self._done or 0
            frac = min(1.0, max(0.0, done / self._total))
            filled = round(frac * BAR_WIDTH)
            parts.append(
                f"|{'#' * filled}{'.' * (BAR_WIDTH - filled)}| {frac:4.0%} "
                f"{_format(done)}/{_format(self._total)}{' ' + self._unit if self._unit else ''}"
            )
        elif self._done is not None:
            parts.append(f"{_format(self._done)}{' ' + self._unit if self._unit else ''}")
        parts.append(f"{elapsed:.0f}s")
        parts += [f"{k}={_format(v)}" for k, v in self._figures.items()]
        return "  ".join(parts)

    def _draw(self) -> None:
        if self.interactive:
            self._write("\r\x1b[2K" + self.line())
            self._dirty_line = True
        else:
            self._write(self.line() + "\n")

    def _finish_line(self) -> None:
        if self._dirty_line:
            self._write("\n")
            self._dirty_line = False

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()
