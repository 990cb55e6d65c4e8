"""``switchboard top``: a live full-screen view of a node, over its admin console.

Design:
- Two sides that share only plain data: the *feed* (trio, in a thread of
  its own) holds one console connection, polls ``node.stats`` and
  ``channels.list`` every second, tails the events (state changes, audit)
  and runs the restarts the screen asks for; the *screen* (Textual, on its
  own event loop in the main thread) shows the latest :class:`TopData`
  and sends :meth:`Feed.restart` requests back. Either side is tested
  without the other: the screen with a stand-in feed (headless), the feed
  against a real node.
- Rates are the difference of two polls' counters over their interval
  (messages per second sent and received, per channel and in total).
- Keys: ``s`` cycles the sort (busiest, failing first, id), ``f`` shows
  only failing channels, ``/`` filters by text, ``v`` switches the lower
  panel between the selected channel, the supervision tree and the
  cluster, ``r`` restarts the selected channel after a ``y`` to confirm,
  ``q`` quits.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
from collections import deque
from collections.abc import Sequence
from typing import Any, Final, Protocol

import attrs
import trio

from .client import AdminClient, ConsoleClientError, open_admin

__all__ = ["Feed", "TopData", "TopSource", "add_parser", "make_app", "run_top", "top"]

POLL: Final = 1.0  # seconds between polls
TAIL: Final = 200  # events kept for the tail
SORTS: Final = ("busiest", "failing", "id")
_HEALTHY: Final = frozenset({"connected"})


@attrs.frozen(kw_only=True)
class TopData:
    """One poll, as the screen shows it.

    Attributes:
        stats: ``node.stats``.
        channels: ``channels.list`` items, each with ``rate_out`` and ``rate_in``.
        events: the events tail, oldest first, one line each.
        event_count: events seen in all (the tail keeps the last :data:`TAIL`).
        tree: ``node.tree``.
        cluster: ``cluster.members`` and ``cluster.placement``, when clustered.
        error: why the last poll failed, if it did.
    """

    stats: dict[str, Any]
    channels: tuple[dict[str, Any], ...]
    events: tuple[str, ...] = ()
    event_count: int = 0
    tree: dict[str, Any] | None = None
    cluster: dict[str, Any] | None = None
    error: str | None = None


class TopSource(Protocol):
    """What the screen reads and asks (the feed, or a stand-in)."""

    def latest(self) -> TopData | None:
        """The newest data, or ``None`` before the first poll."""
        ...

    def restart(self, channel_id: str) -> None:
        """Ask for a restart of ``channel_id`` (answered in the events tail)."""
        ...


def with_rates(
    before: Sequence[dict[str, Any]], now: Sequence[dict[str, Any]], seconds: float
) -> tuple[dict[str, Any], ...]:
    """``now``'s channels with their send and receive rates since ``before``."""
    old = {c["channel"]: c for c in before}
    out = []
    for channel in now:
        previous = old.get(channel["channel"])
        rate_out = rate_in = 0.0
        if previous is not None and seconds > 0:
            rate_out = max(channel["sent"] - previous["sent"], 0) / seconds
            rate_in = max(channel["received"] - previous["received"], 0) / seconds
        out.append({**channel, "rate_out": rate_out, "rate_in": rate_in})
    return tuple(out)


def event_line(params: dict[str, Any]) -> str:
    """One line of the events tail."""
    event = params.get("event") or {}
    if params.get("kind") == "audit":
        return (
            f"audit  {event.get('token')} {event.get('method')} "
            f"{event.get('target')} ({event.get('reason')}): {event.get('outcome')}"
        )
    if params.get("kind") == "state":
        reason = f" ({event['reason']})" if event.get("reason") else ""
        return (
            f"state  {params.get('channel')}: {event.get('previous')} -> "
            f"{event.get('status')}{reason}"
        )
    return f"{params.get('kind')}  {params.get('channel')}"


class Feed:
    """The trio side: a console connection in a thread of its own.

    Args:
        url: the console's URL.
        token: the bearer token.
        cafile: certificate authorities for ``wss://``.
    """

    def __init__(self, url: str, token: str, *, cafile: str | None = None) -> None:
        self._url = url
        self._token = token
        self._cafile = cafile
        self._lock = threading.Lock()
        self._latest: TopData | None = None
        self._events: deque[str] = deque(maxlen=TAIL)
        self._count = 0
        self._requests: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.failure: str | None = None

    def latest(self) -> TopData | None:
        with self._lock:
            return self._latest

    def restart(self, channel_id: str) -> None:
        self._requests.put(channel_id)

    def start(self) -> None:
        self._thread = threading.Thread(target=trio.run, args=(self._run,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._requests.put(None)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _tail(self, line: str) -> None:
        with self._lock:
            self._events.append(line)
            self._count += 1

    async def _run(self) -> None:
        try:
            async with (
                open_admin(self._url, self._token, cafile=self._cafile) as client,
                open_admin(self._url, self._token, cafile=self._cafile) as events,
                trio.open_nursery() as nursery,
            ):
                await events.call("events.subscribe", {"kinds": ["state", "audit"]})
                nursery.start_soon(self._follow, events)
                nursery.start_soon(self._poll, client)
                await self._serve_requests(client)
                nursery.cancel_scope.cancel()
        except ConsoleClientError as exc:
            self.failure = str(exc)
            with self._lock:
                self._latest = TopData(stats={}, channels=(), error=str(exc))

    async def _follow(self, events: AdminClient) -> None:
        async for note in events.events():
            self._tail(event_line(note["params"]))

    async def _poll(self, client: AdminClient) -> None:
        previous: Sequence[dict[str, Any]] = ()
        last = trio.current_time()
        while True:
            stats = await client.call("node.stats")
            listed = await client.call("channels.list", {"limit": 1000})
            tree = await client.call("node.tree")
            cluster = None
            if stats.get("clustered"):
                try:
                    cluster = {
                        "members": (await client.call("cluster.members"))["members"],
                        "placement": await client.call("cluster.placement"),
                    }
                except ConsoleClientError as exc:
                    cluster = {"error": str(exc)}
            now = trio.current_time()
            channels = with_rates(previous, listed["items"], now - last)
            previous, last = listed["items"], now
            with self._lock:
                self._latest = TopData(
                    stats=stats,
                    channels=channels,
                    events=tuple(self._events),
                    event_count=self._count,
                    tree=tree,
                    cluster=cluster,
                )
            await trio.sleep(POLL)

    async def _serve_requests(self, client: AdminClient) -> None:
        while True:
            channel_id = await trio.to_thread.run_sync(self._requests.get)
            if channel_id is None:
                return
            try:
                await client.call(
                    "channels.restart", {"channel": channel_id, "reason": "switchboard top"}
                )
                self._tail(f"top    restarted {channel_id}")
            except ConsoleClientError as exc:
                self._tail(f"top    restart of {channel_id} failed: {exc}")


def order(
    channels: Sequence[dict[str, Any]], sort: str, *, failing_only: bool, text: str
) -> list[dict[str, Any]]:
    """The channels as the screen lists them."""
    shown = [
        c
        for c in channels
        if (not failing_only or c["state"] not in _HEALTHY)
        and (not text or text in c["channel"] or text in c["tenant"] or text in c["provider"])
    ]
    if sort == "busiest":
        shown.sort(key=lambda c: (-(c["rate_out"] + c["rate_in"]), c["channel"]))
    elif sort == "failing":
        shown.sort(key=lambda c: (c["state"] in _HEALTHY, -c["reconnects"], c["channel"]))
    else:
        shown.sort(key=lambda c: c["channel"])
    return shown


PANELS: Final = ("detail", "tree", "cluster")


def tree_lines(node: dict[str, Any], depth: int = 0) -> list[str]:
    """The supervision tree, one child a line, indented."""
    uptime = node.get("uptime")
    lines = [
        f"{'  ' * depth}{node['id']} [{node.get('status')}] restarts={node.get('restarts')} "
        f"mailbox={node.get('mailbox_depth')}" + (f" up={uptime:.0f}s" if uptime else "")
    ]
    for child in node.get("children", ()):
        lines.extend(tree_lines(child, depth + 1))
    return lines


def cluster_lines(cluster: dict[str, Any] | None) -> list[str]:
    """The cluster view: members, and what is placed, held and moving."""
    if cluster is None:
        return ["not in a cluster"]
    if "error" in cluster:
        return [f"cluster: {cluster['error']}"]
    placement = cluster["placement"]
    lines = [f"moving: {placement['moving']}"]
    unplaced = placement.get("unplaced") or []
    if unplaced:
        shown = ", ".join(unplaced[:5])
        lines.append(
            f"unplaced: {len(unplaced)}, no live member can run them "
            f"({shown}{', ...' if len(unplaced) > 5 else ''})"
        )
    paused = placement.get("paused")
    if paused:
        lines.append(f"rebalancing paused by {paused.get('by', '?')}: {paused.get('reason', '')}")
    pins = placement.get("pins") or {}
    if pins:
        shown = ", ".join(f"{channel}->{node}" for channel, node in list(pins.items())[:5])
        lines.append(f"pinned: {len(pins)} ({shown}{', ...' if len(pins) > 5 else ''})")
    for member in cluster["members"]:
        lines.append(
            f"{member['node']}: heartbeat {member['heartbeat_age']:.1f}s ago, "
            f"placed {member['placed']}, held {member['held']}"
        )
    return lines


def summary(data: TopData) -> str:
    """The header: the node, its channels by state and provider, the total rates."""
    stats = data.stats
    if data.error and not stats:
        return f"switchboard top: {data.error}"
    providers: dict[str, dict[str, int]] = {}
    for channel in data.channels:
        states = providers.setdefault(channel["provider"], {})
        states[channel["state"]] = states.get(channel["state"], 0) + 1
    by_provider = "  ".join(
        f"{name}: " + " ".join(f"{state}={count}" for state, count in sorted(states.items()))
        for name, states in sorted(providers.items())
    )
    out = sum(c["rate_out"] for c in data.channels)
    rate_in = sum(c["rate_in"] for c in data.channels)
    load = ""
    if "sends_in_flight" in stats:  # (a node before these figures leaves them out)
        refused = sum(stats.get("sends_refused", {}).values())
        load = (
            f"  in flight {stats['sends_in_flight']}"
            + (f"/{stats['sends_limit']}" if stats.get("sends_limit") else "")
            + f"  refused {refused}"
            f"  loop lag {stats.get('loop_lag', 0) * 1000:.0f} ms"
        )
    return (
        f"node {stats.get('node')} [{stats.get('state')}]  up {stats.get('uptime', 0):.0f}s  "
        f"channels {stats.get('channels')}  out {out:.1f}/s  in {rate_in:.1f}/s{load}\n"
        f"{by_provider}"
    )


def make_app(source: TopSource) -> Any:
    """The Textual app over ``source`` (imported here: only ``top`` needs Textual)."""
    from rich.text import Text
    from textual.app import App, ComposeResult
    from textual.binding import Binding
    from textual.containers import Vertical
    from textual.screen import ModalScreen
    from textual.widgets import DataTable, Footer, Input, Log, Static

    class Confirm(ModalScreen[bool]):
        BINDINGS = [Binding("y", "yes", "yes"), Binding("n,escape", "no", "no")]

        def __init__(self, question: str) -> None:
            super().__init__()
            self.question = question

        def compose(self) -> ComposeResult:
            yield Static(f"{self.question} [y/n]", id="question", markup=False)

        def action_yes(self) -> None:
            self.dismiss(True)

        def action_no(self) -> None:
            self.dismiss(False)

    class Top(App[None]):
        TITLE = "switchboard top"
        CSS = """
        #summary { height: 3; }
        #channels { height: 1fr; }
        #detail { height: 12; }
        #events { height: 8; }
        #filter { display: none; }
        #filter.visible { display: block; }
        """
        BINDINGS = [
            Binding("q", "quit", "quit"),
            Binding("s", "sort", "sort"),
            Binding("f", "failing", "failing only"),
            Binding("slash", "filter", "filter"),
            Binding("r", "restart", "restart"),
            Binding("v", "panel", "detail/tree/cluster"),
        ]
        COLUMNS = ("CHANNEL", "TENANT", "PROVIDER", "STATE", "OUT/S", "IN/S", "RECONN", "ERROR")

        def __init__(self) -> None:
            super().__init__()
            self.source = source
            self.sort = SORTS[0]
            self.failing_only = False
            self.text = ""
            self.shown: list[dict[str, Any]] = []
            self.panel = PANELS[0]
            self.data: TopData | None = None
            self.seen_events = 0

        def compose(self) -> ComposeResult:
            with Vertical():
                yield Static("connecting...", id="summary", markup=False)
                yield Input(placeholder="filter: channel, tenant or provider", id="filter")
                yield DataTable(id="channels", cursor_type="row")
                yield Static("", id="detail", markup=False)
                yield Log(id="events", max_lines=TAIL)
            yield Footer()

        def on_mount(self) -> None:
            table = self.query_one(DataTable)
            table.add_columns(*self.COLUMNS)
            table.focus()  # keys go to the table and the app, not the hidden filter
            self.refresh_data()
            self.set_interval(0.5, self.refresh_data)

        def refresh_data(self) -> None:
            data = self.source.latest()
            if data is None:
                return
            self.data = data
            self.query_one("#summary", Static).update(
                summary(data)
                + f"\nsort: {self.sort}"
                + ("  failing only" if self.failing_only else "")
                + (f"  filter: {self.text}" if self.text else "")
            )
            table = self.query_one(DataTable)
            row = table.cursor_row
            self.shown = order(
                data.channels, self.sort, failing_only=self.failing_only, text=self.text
            )
            table.clear()
            for c in self.shown:
                cells = (
                    c["channel"],
                    c["tenant"],
                    c["provider"],
                    c["state"],
                    f"{c['rate_out']:.1f}",
                    f"{c['rate_in']:.1f}",
                    str(c["reconnects"]),
                    (c.get("last_error") or "")[:60],
                )
                # Text, not markup: a channel's error may hold "[...]".
                table.add_row(*(Text(cell) for cell in cells), key=c["channel"])
            if self.shown:
                table.move_cursor(row=min(row, len(self.shown) - 1))
            self.show_detail()
            log = self.query_one(Log)
            fresh = min(data.event_count - self.seen_events, len(data.events))
            for line in data.events[len(data.events) - fresh :] if fresh > 0 else ():
                log.write_line(line)
            self.seen_events = data.event_count

        def selected(self) -> dict[str, Any] | None:
            table = self.query_one(DataTable)
            if not self.shown or table.cursor_row >= len(self.shown):
                return None
            return self.shown[table.cursor_row]

        def show_detail(self) -> None:
            if self.panel != "detail" and self.data is not None:
                lines = (
                    tree_lines(self.data.tree)
                    if self.panel == "tree" and self.data.tree
                    else cluster_lines(self.data.cluster)
                )
                self.query_one("#detail", Static).update("\n".join(lines))
                return
            channel = self.selected()
            text = ""
            if channel is not None:
                text = (
                    f"{channel['channel']} ({channel['tenant']}, {channel['provider']}) "
                    f"{channel['state']} on {channel['owner']}: sent {channel['sent']}, "
                    f"received {channel['received']}, failures {channel['send_failures']}, "
                    f"restarts {channel['restarts']}, dead letters {channel['dead_letters']}, "
                    f"mailbox {channel['mailbox_depth']}\nlast error: "
                    f"{channel.get('last_error') or '-'}"
                )
            self.query_one("#detail", Static).update(text)

        def on_data_table_row_highlighted(self, _: Any) -> None:
            self.show_detail()

        def action_sort(self) -> None:
            self.sort = SORTS[(SORTS.index(self.sort) + 1) % len(SORTS)]
            self.refresh_data()

        def action_panel(self) -> None:
            self.panel = PANELS[(PANELS.index(self.panel) + 1) % len(PANELS)]
            self.show_detail()

        def action_failing(self) -> None:
            self.failing_only = not self.failing_only
            self.refresh_data()

        def action_filter(self) -> None:
            box = self.query_one(Input)
            box.add_class("visible")
            box.focus()

        def on_input_submitted(self, event: Input.Submitted) -> None:
            self.text = event.value.strip()
            event.input.remove_class("visible")
            self.query_one(DataTable).focus()
            self.refresh_data()

        def action_restart(self) -> None:
            channel = self.selected()
            if channel is None:
                return
            name = channel["channel"]

            def answered(yes: bool | None) -> None:
                if yes:
                    self.source.restart(name)
                    self.query_one(Log).write_line(f"top    restart of {name} asked")

            self.push_screen(Confirm(f"restart channel {name}?"), answered)

    return Top()


def add_parser(sub: Any) -> None:
    """The ``top`` sub-command of ``switchboard``."""
    from .ctl import DEFAULT_TOKEN_ENV, DEFAULT_URL

    parser = sub.add_parser(
        "top", help="a live full-screen view of a running node (its admin console)"
    )
    parser.add_argument("--url", default=os.environ.get("SWITCHBOARD_ADMIN_URL", DEFAULT_URL))
    parser.add_argument("--token-env", default=DEFAULT_TOKEN_ENV, metavar="NAME")
    parser.add_argument("--cafile", help="wss://: the PEM certificate(s) to trust")


def top(args: Any) -> int:
    """Run ``switchboard top`` from its arguments; returns the exit code."""
    token = os.environ.get(args.token_env)
    if not token:
        print(f"switchboard top: ${args.token_env} is not set (the admin token)", file=sys.stderr)
        return 3
    try:
        import textual  # noqa: F401
    except ImportError:
        print(
            "switchboard top needs Textual: pip install 'switchboard-runtime[console]'",
            file=sys.stderr,
        )
        return 2
    code = run_top(args.url, token, cafile=args.cafile)
    return code


def run_top(url: str, token: str, *, cafile: str | None = None) -> int:
    """Run ``switchboard top`` until ``q``; returns the exit code."""
    feed = Feed(url, token, cafile=cafile)
    feed.start()
    try:
        make_app(feed).run()
    finally:
        feed.stop()
    if feed.failure is not None:
        print(f"switchboard top: {feed.failure}", file=sys.stderr)
        return 1
    return 0
