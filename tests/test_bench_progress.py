"""The bench's live progress on a real terminal: a pseudo-terminal at 80 and 200 columns.

A child process draws two phases on a pty of a set width; what it wrote is
played into a VT100 emulator (pyte) and the screen it leaves is read back:
exactly one row per phase (no wrapped lines, no stale fragments), each with
its final state, and the note above them.
"""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pyte
import pytest

ROOT = Path(__file__).resolve().parent.parent
ROWS = 40

SCRIPT = r"""
import time
from bench.progress import Progress
p = Progress("demo")
p.phase("connecting", 10_000, "channels")
for i in range(0, 10_001, 500):
    p.update(i, rate=f"{i * 3}/s", p99="12.5 ms", reconnects=i // 7, long_figure_name=123456)
    time.sleep(0.03)
p.note("capped at 9,800 channels")
p.phase("load", 50, "steps")
for i in range(51):
    p.update(i, sent=i * 1000)
    time.sleep(0.01)
p.close()
"""


def screen_after(columns: int) -> list[str]:
    """The non-blank lines a terminal of ``columns`` shows once the child has drawn."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
    env["TERM"] = "xterm-256color"
    child = subprocess.Popen(
        [sys.executable, "-c", SCRIPT], stdin=slave, stdout=slave, stderr=slave, env=env, cwd=ROOT
    )
    os.close(slave)
    written = b""
    try:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the pty
                break
            if not chunk:
                break
            written += chunk
    finally:
        os.close(master)
        assert child.wait(timeout=60) == 0, written.decode(errors="replace")
    screen = pyte.Screen(columns, ROWS)
    pyte.ByteStream(screen).feed(written)
    return [line.rstrip() for line in screen.display if line.strip()]


@pytest.mark.parametrize("columns", [80, 200])
def test_each_phase_is_one_row_with_its_final_state_at_any_width(columns: int) -> None:
    lines = screen_after(columns)
    assert len(lines) == 3, "\n".join(lines)  # nothing wrapped, nothing stale
    note, connecting, load = lines
    assert note == "[demo] capped at 9,800 channels"
    assert connecting.startswith("[demo] connecting")
    assert "100%" in connecting and "10,000/10,000 channels" in connecting
    assert load.startswith("[demo] load")
    assert "100%" in load and "50/50 steps" in load and "sent=50,000" in load
    assert all(len(line) <= columns for line in lines)
    if columns == 80:
        assert connecting.endswith("…")  # the figures cut to fit, not wrapped
    else:
        assert "rate=30000/s p99=12.5 ms reconnects=1,428 long_figure_name=123,456" in connecting
