"""``switchboard top``: the screen headless over a stand-in feed, and for real under a pty.

The headless tests drive the Textual app with its test pilot (asyncio, so
they are plain functions that run their own loop); the pty test runs
``switchboard run`` and ``switchboard top`` as a user would, plays what
``top`` draws into a VT100 emulator (pyte), restarts a channel from the
keyboard and reads its reconnect off the screen.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pty
import struct
import termios
from pathlib import Path
from typing import Any

import pyte
import pytest
import trio

from runtime.console.top import TopData, event_line, make_app, order, summary, with_rates

from .test_cli_run import ROOT, run_node, switchboard
from .test_console_ctl import TOKENS, deployment


def channel(name: str, state: str = "connected", sent: int = 0, **extra: Any) -> dict[str, Any]:
    return {
        "channel": name,
        "tenant": extra.pop("tenant", "acme"),
        "provider": extra.pop("provider", "simulated"),
        "state": state,
        "owner": "n1",
        "mailbox_depth": 0,
        "sent": sent,
        "received": 0,
        "send_failures": 0,
        "reconnects": extra.pop("reconnects", 0),
        "restarts": 0,
        "dead_letters": 0,
        "last_error": extra.pop("last_error", None),
    }


def test_rates_sorting_and_the_header() -> None:
    before = [channel("a", sent=10), channel("b", sent=0)]
    now = [channel("a", sent=30), channel("b", sent=5), channel("c", state="failed")]
    rated = with_rates(before, now, 2.0)
    assert [(c["channel"], c["rate_out"]) for c in rated] == [("a", 10.0), ("b", 2.5), ("c", 0.0)]
    assert [c["channel"] for c in order(rated, "busiest", failing_only=False, text="")] == [
        "a",
        "b",
        "c",
    ]
    assert order(rated, "failing", failing_only=False, text="")[0]["channel"] == "c"
    assert [c["channel"] for c in order(rated, "id", failing_only=True, text="")] == ["c"]
    assert [c["channel"] for c in order(rated, "id", failing_only=False, text="b")] == ["b"]
    header = summary(
        TopData(stats={"node": "n1", "state": "ready", "uptime": 5, "channels": 3}, channels=rated)
    )
    assert header.splitlines() == [
        "node n1 [ready]  up 5s  channels 3  out 12.5/s  in 0.0/s",
        "simulated: connected=2 failed=1",
    ]
    loaded = {"sends_in_flight": 40, "sends_refused": {"loop": 7, "node": 1}, "loop_lag": 0.62}
    header = summary(TopData(stats={"node": "n1", "state": "ready", **loaded}, channels=rated))
    assert header.splitlines()[0].endswith("in flight 40  refused 8  loop lag 620 ms")
    limited = summary(TopData(stats={**loaded, "sends_limit": 150}, channels=rated))
    assert limited.splitlines()[0].endswith("in flight 40/150  refused 8  loop lag 620 ms")
    assert (
        event_line(
            {
                "kind": "state",
                "channel": "a",
                "event": {"previous": "connecting", "status": "connected"},
            }
        )
        == "state  a: connecting -> connected"
    )


class StandIn:
    def __init__(self, data: TopData) -> None:
        self.data = data
        self.restarted: list[str] = []

    def latest(self) -> TopData:
        return self.data

    def restart(self, channel_id: str) -> None:
        self.restarted.append(channel_id)


DATA = TopData(
    stats={"node": "n1", "state": "ready", "uptime": 42, "channels": 3},
    channels=with_rates(
        [channel("quiet", sent=0), channel("busy", sent=0)],
        [
            channel("quiet", sent=1),
            channel("busy", sent=100),
            channel("broken", state="failed", reconnects=7, last_error="banned", tenant="globex"),
        ],
        1.0,
    ),
    events=("state  broken: connected -> failed (banned)",),
    event_count=1,
    tree={
        "id": "node:n1",
        "status": "running",
        "restarts": 0,
        "mailbox_depth": 0,
        "uptime": 42.0,
        "children": [
            {
                "id": "channels",
                "status": "running",
                "restarts": 0,
                "mailbox_depth": 0,
                "uptime": 41.0,
                "children": [
                    {
                        "id": "busy",
                        "status": "running",
                        "restarts": 2,
                        "mailbox_depth": 3,
                        "uptime": 5.0,
                        "children": [],
                    },
                ],
            },
        ],
    },
    cluster={
        "members": [{"node": "n1", "heartbeat_age": 0.25, "placed": 3, "held": 2}],
        "placement": {"moving": 1},
    },
)


def rows(app: Any) -> list[str]:
    from textual.widgets import DataTable

    table = app.query_one(DataTable)
    return [str(table.get_row_at(index)[0]) for index in range(table.row_count)]


def text_of(app: Any, selector: str) -> str:
    return str(app.query_one(selector).render())


def test_the_views_headless() -> None:
    source = StandIn(DATA)

    async def scenario() -> None:
        app = make_app(source)
        async with app.run_test(size=(140, 40)) as pilot:
            await pilot.pause()
            assert rows(app) == ["busy", "quiet", "broken"]  # busiest first
            assert "node n1 [ready]" in text_of(app, "#summary")
            assert "simulated: connected=2 failed=1" in text_of(app, "#summary")
            assert "busy (acme, simulated) connected" in text_of(app, "#detail")
            from textual.widgets import Log

            assert "broken: connected -> failed" in "\n".join(app.query_one(Log).lines)
            await pilot.press("s")  # failing first
            assert rows(app)[0] == "broken"
            await pilot.press("s")  # by id
            assert rows(app) == ["broken", "busy", "quiet"]
            await pilot.press("f")  # failing only
            assert rows(app) == ["broken"]
            assert "last error: banned" in text_of(app, "#detail")
            # Restart, with a confirmation: "n" does nothing, "y" asks the feed.
            await pilot.press("r", "n")
            assert source.restarted == []
            await pilot.press("r", "y")
            assert source.restarted == ["broken"]
            await pilot.press("f", "slash", *"qui", "enter")
            assert rows(app) == ["quiet"]
            await pilot.press("v")  # the tree
            assert text_of(app, "#detail").splitlines() == [
                "node:n1 [running] restarts=0 mailbox=0 up=42s",
                "  channels [running] restarts=0 mailbox=0 up=41s",
                "    busy [running] restarts=2 mailbox=3 up=5s",
            ]
            await pilot.press("v")  # the cluster
            assert text_of(app, "#detail").splitlines() == [
                "moving: 1",
                "n1: heartbeat 0.2s ago, placed 3, held 2",
            ]
            await pilot.press("q")

    asyncio.run(scenario())


def test_the_cluster_view_shows_a_pause_and_the_pins() -> None:
    from runtime.console.top import cluster_lines

    cluster = {
        "members": [{"node": "n1", "heartbeat_age": 0.25, "placed": 3, "held": 3}],
        "placement": {
            "moving": 0,
            "paused": {"by": "oncall", "reason": "deploy", "at": 1.0},
            "pins": {"a1": "n1"},
        },
    }
    assert cluster_lines(cluster) == [
        "moving: 0",
        "rebalancing paused by oncall: deploy",
        "pinned: 1 (a1->n1)",
        "n1: heartbeat 0.2s ago, placed 3, held 3",
    ]


# --- a real terminal ---------------------------------------------------------------------------

ROWS, COLUMNS = 40, 160


class Terminal:
    """A pty running a program, its output played into pyte."""

    def __init__(self) -> None:
        self.screen = pyte.Screen(COLUMNS, ROWS)
        self.stream = pyte.ByteStream(self.screen)

    def text(self) -> str:
        return "\n".join(self.screen.display)


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pty")
async def test_top_in_a_terminal_restarts_a_channel_from_the_keyboard(tmp_path: Path) -> None:
    with trio.fail_after(120):
        async with run_node(deployment(tmp_path), env=TOKENS) as node:
            await node.wait_output(r"admin console: ws://\S+")
            master, slave = pty.openpty()
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
            env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
            env.update(TOKENS, TERM="xterm-256color", SWITCHBOARD_ADMIN_TOKEN=TOKENS["SB_OPERATE"])
            top = await trio.lowlevel.open_process(
                [*switchboard(), "top", "--url", f"unix:{tmp_path / 'admin.sock'}"],
                stdin=slave,
                stdout=slave,
                stderr=slave,
                env=env,
                cwd=ROOT,
            )
            os.close(slave)
            terminal = Terminal()
            screen = trio.lowlevel.FdStream(master)

            async def until(text: str, within: float = 30.0) -> None:
                with trio.move_on_after(within):
                    while text not in terminal.text():
                        chunk = await screen.receive_some(65536)
                        if not chunk:
                            raise AssertionError(f"top ended before {text!r}:\n{terminal.text()}")
                        terminal.stream.feed(chunk)
                if text not in terminal.text():
                    raise AssertionError(f"no {text!r} on the screen:\n{terminal.text()}")

            try:
                await until("a1")
                await until("connected")
                await screen.send_all(b"s")  # failing first ...
                await screen.send_all(b"s")  # ... then by id: a1 is selected
                await until("sort: id")
                await screen.send_all(b"r")
                await until("restart channel a1?")
                await screen.send_all(b"y")
                await until("restarted a1")
                # The reconnect, read off the events tail.
                await until("a1: connecting -> connected")
                await screen.send_all(b"q")

                async def drain() -> None:  # what top writes as it leaves must be read
                    with contextlib.suppress(OSError, trio.BrokenResourceError):
                        while await screen.receive_some(65536):
                            pass

                with trio.fail_after(30):
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(drain)
                        assert await top.wait() == 0
                        nursery.cancel_scope.cancel()
            finally:
                if top.returncode is None:
                    top.kill()
                await screen.aclose()
