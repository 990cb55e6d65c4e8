"""The CPU of one websocket channel connect, measured so that a loaded machine cannot move it.

``python -m bench.connect_cost [--client C] [--channels N] [--tls]``
    connects ``N`` websocket channels (100 by default) to the lean far end
    (:mod:`bench.far_end`, no heartbeats, in a process of its own unless
    ``--far-end URL`` names one), waits until every one is connected, and
    prints one JSON line: ``{"client", "channels", "connected",
    "cpu_seconds", "cpu_per_connect"}``, the process's CPU from the first
    start to the last connect. ``C`` is one of:

    - ``node`` (the default): a node in this process starts ``N`` websocket
      channels (``Node.start_channels``, as it starts its configured ones;
      they connect in the background) and follows their ``state`` events, as the channels
      benchmark does; each channel's token goes as ``Authorization: Bearer``,
      the provider's default.
    - ``bare``: a bare trio + wsproto client opens ``N`` connections at once
      with the connection code of :mod:`bench.ws_bare` (a trio socket
      stream, the upgrade with the same ``Authorization`` header, frames
      until the far end's ``ready``, then a reader and a writer task each):
      the same request and frames as the node's (wsproto orders and spells
      the upgrade's headers as it does, the node as ``websockets`` does),
      the baseline.
    - ``trio-websocket``: the baseline the channels benchmark's "node CPU
      per connect" is judged against: ``N`` trio-websocket connections with
      their reader tasks (:mod:`bench.ws_bare`'s memory client; token in the
      query). As there, a connection counts as open at the upgrade's answer:
      its reader takes the ``ready`` frame after (and would see a refusal
      only then).

    With ``--tls`` the far end serves ``wss://`` with a certificate of a
    private CA (:mod:`bench.tls`), which the node's channels (their option
    ``ca_file``) and the bare client (trio's TLS stream) trust; a given
    ``wss://`` ``--far-end`` takes ``--ca-file``.

``python -m bench.connect_cost --instructions [the same options]``
    counts the instructions of that run under ``valgrind --tool=callgrind``
    instead of timing it: twice, with ``N`` and with ``3 N`` channels, the
    far end (not counted) running natively; each counted run ends the
    process (``os._exit``) as soon as every channel is connected, so that
    neither the channels' teardown nor the interpreter's cleanup is
    counted. It prints ``{"client", "channels", "instructions_per_connect",
    "runs": [...]}``: the difference of the two totals over the ``2 N``
    connects between them, so that start-up cancels out. A run that fails,
    or connects fewer channels than asked (or any of them twice), fails the
    command.

Design notes: the channels benchmark times a node's connects against the
bare client's in another process, and on this shared 2-core machine the
ratio moved between 1.53 and 1.98 from run to run. An instruction count
does not move with the machine's load (see :mod:`bench.send_cost`, whose
machinery this reuses). The node keeps its defaults but for its rate
limits (off, as in every bench here) and what runs by the wall clock,
which valgrind's slowdown (about 50 times) and the machine's load
stretch: the connect timeout and the websocket ping and
liveness timers are set far off (armed as usual, never due), and so is
the checkpoint interval, so no checkpoint round runs during a run. Left
at one second, the rounds wrote 1.65 checkpoints per channel in a counted
run against 1.0 natively, and two counts of one tree differed by 4.6 %.
The figure is therefore a connect without its checkpoint write, which
natively follows within a second (190,805 instructions more, counted on
200 channels with and without one round).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import ssl
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, Final
from urllib.parse import urlsplit

import trio

from actors.channel import ChannelStateChanged, ChannelStatus
from runtime import open_node, parse_config
from runtime.config import ChannelSpec

from . import callgrind
from .rig import StateLog, _follow
from .send_cost import _far_end_for
from .tls import add_arguments as add_tls_arguments

__all__ = ["CLIENTS", "counted", "instructions_per_connect", "main", "measure"]

CLIENTS: Final = ("node", "bare", "trio-websocket")
CONNECT_WAIT: Final = 600.0  # seconds for every channel to connect (under valgrind: slow)
FAR_OFF: Final = 3_600.0  # seconds: keepalive timers armed as usual, never due within a run
STATE_BUFFER_PER_CHANNEL: Final = 10  # state events the bench's log may fall behind by, per channel

Connected = Callable[[dict[str, Any]], None]


def _token(index: int) -> str:
    return f"connect-cost-{index:05d}"


def _result(client: str, channels: int, connected: int, cpu: float) -> dict[str, Any]:
    return {
        "client": client,
        "channels": channels,
        "connected": connected,
        "cpu_seconds": cpu,
        "cpu_per_connect": cpu / max(1, connected),
    }


async def measure(
    client: str,
    url: str,
    *,
    channels: int,
    connect_wait: float = CONNECT_WAIT,
    on_connected: Connected | None = None,
    ca_file: str | None = None,
) -> dict[str, Any]:
    """Connect ``channels`` times to the far end at ``url`` with ``client``; the JSON line.

    Args:
        client: one of :data:`CLIENTS`.
        on_connected: called with the line once every channel is connected,
            before anything is closed (a counted run ends the process there).
        ca_file: what a ``wss://`` far end's certificate chains to (None:
            the system's trust store); the node's channels take it as their
            option ``ca_file``, the bare client as its context's.

    Raises:
        RuntimeError: not every channel connected once within ``connect_wait``
            seconds (a connection that could not be opened raises its own
            error, inside the nursery's exception group).
        ValueError: an unknown client.
    """
    if client == "node":
        return await measure_node(
            url,
            channels=channels,
            connect_wait=connect_wait,
            on_connected=on_connected,
            ca_file=ca_file,
        )
    runner: Callable[[str, int, Connected | None], Awaitable[dict[str, Any]]]
    if client == "bare":
        runner = partial(_bare, ca_file=ca_file)
    elif client == "trio-websocket":
        runner = _trio_websocket
    else:
        raise ValueError(f"client: expected one of {', '.join(CLIENTS)}, got {client!r}")
    with trio.move_on_after(connect_wait) as bound:
        result = await runner(url, channels, on_connected)
    if bound.cancelled_caught:
        raise RuntimeError(
            f"the {client} client's {channels} connections were not all open within "
            f"{connect_wait:g} s; nothing was measured"
        )
    return result


async def measure_node(
    url: str,
    *,
    channels: int,
    connect_wait: float = CONNECT_WAIT,
    on_connected: Connected | None = None,
    ca_file: str | None = None,
) -> dict[str, Any]:
    """A node's connects (see :func:`measure`).

    Raises:
        RuntimeError: not every channel connected, or one connected more than once.
    """
    config = parse_config(
        {
            "node": {"id": "connect-cost", "start_timeout": connect_wait},
            "ops": {"enabled": False},
            "storage": {"checkpoint_interval": FAR_OFF},
            "providers": {"websocket": {"rate_limit": {"enabled": False}}},
            "channels": [],
        }
    )
    options: dict[str, Any] = {
        "connect_timeout": connect_wait,
        "ping_interval": FAR_OFF,
        "liveness_timeout": FAR_OFF,
    }
    if ca_file is not None:
        options["ca_file"] = ca_file
    states = _Connects()
    async with open_node(config) as node, trio.open_nursery() as nursery:
        await nursery.start(_follow, node, states, STATE_BUFFER_PER_CHANNEL * channels + 100)

        async def start_all(race: trio.CancelScope) -> None:
            specs = [
                ChannelSpec(
                    id=f"ch{index:05d}",
                    provider="websocket",
                    tenant="bench",
                    base_url=url,
                    credentials={"token": _token(index)},
                    options=options,
                )
                for index in range(channels)
            ]
            for result in await node.start_channels(specs):
                if isinstance(result, Exception):
                    raise result
            await states.wait_connected(channels)
            race.cancel()

        async def missed(race: trio.CancelScope) -> None:
            await states.missed.wait()
            race.cancel()

        began = time.process_time()
        with trio.move_on_after(connect_wait):
            async with trio.open_nursery() as race:
                race.start_soon(start_all, race.cancel_scope)
                race.start_soon(missed, race.cancel_scope)
        cpu = time.process_time() - began
        result = _result("node", channels, states.connected, cpu)
        retried = len(states.backoff_delays) + len(states.disconnected_at)
        if states.connected < channels or len(states.connected_at) != channels or retried:
            problems = "; ".join(
                f"{s.channel_id}: {s.status.value} ({s.problem})"
                for s in node.channels()
                if s.problem is not None
            )
            raise RuntimeError(
                f"{states.connected} of {channels} channels connected at their first try "
                f"({len(states.connected_at)} connects, {retried} retries or losses, "
                f"{len(states.failed)} failed, {states.dropped} state events lost, "
                f"{connect_wait:g} s allowed): {problems[:500] or 'no problem reported'}; "
                "nothing was measured"
            )
        if on_connected is not None:
            on_connected(result)
        nursery.cancel_scope.cancel()
    return result


class _Connects(StateLog):
    """The channels benchmark's state log, and an event set at the first channel
    that did not connect at its first try (a retry, a loss or a failure): the
    run is over then, with nothing measured."""

    def __init__(self) -> None:
        super().__init__()
        self.missed = trio.Event()

    def record(self, change: ChannelStateChanged, now: float) -> None:
        super().record(change, now)
        if change.status in _MISSED:
            self.missed.set()


_MISSED: Final = frozenset((ChannelStatus.BACKING_OFF, ChannelStatus.FAILED, ChannelStatus.STOPPED))


async def _bare(
    url: str, channels: int, on_connected: Connected | None, *, ca_file: str | None = None
) -> dict[str, Any]:
    # The connection code of the send baselines (bench.ws_bare, bench.send_cost).
    from .ws_bare import _Connection, _serve_connection, _Session

    parts = urlsplit(url)
    tls = ssl.create_default_context(cafile=ca_file) if parts.scheme == "wss" else None
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    target = parts.path or "/"
    session = _Session()
    opened: list[_Connection] = []
    async with trio.open_nursery() as nursery:

        async def open_one(index: int) -> None:
            token = _token(index)
            headers = [(b"authorization", f"Bearer {token}".encode())]
            opened.append(
                await nursery.start(
                    partial(_serve_connection, ssl_context=tls),
                    session,
                    host,
                    port,
                    target,
                    token,
                    headers,
                )
            )

        began = time.process_time()
        async with trio.open_nursery() as opening:
            for index in range(channels):
                opening.start_soon(open_one, index)
        cpu = time.process_time() - began
        if session.lost:
            raise RuntimeError(f"the far end closed {session.lost} of the bare connections")
        result = _result("bare", channels, len(opened), cpu)
        if on_connected is not None:
            on_connected(result)
        nursery.cancel_scope.cancel()
    return result


async def _trio_websocket(
    url: str, channels: int, on_connected: Connected | None
) -> dict[str, Any]:
    # The channels benchmark's baseline for a connect: bench.ws_bare's memory client.
    from .ws_bare import _Holders

    holders = _Holders(channels)
    sep = "&" if "?" in url else "?"
    async with trio.open_nursery() as nursery:
        began = time.process_time()
        for index in range(channels):
            nursery.start_soon(holders.hold, nursery, f"{url}{sep}token={_token(index)}")
        await holders.all_open.wait()
        cpu = time.process_time() - began
        if holders.lost:
            raise RuntimeError(
                f"the far end closed {holders.lost} of the trio-websocket connections"
            )
        result = _result("trio-websocket", channels, len(holders.opened), cpu)
        if on_connected is not None:
            on_connected(result)
        holders.closing = True  # cancelled, not lost
        nursery.cancel_scope.cancel()
    return result


def instructions_per_connect(small: int, big: int, connects_between: int) -> int:
    """The instructions of one connect: two runs' totals apart, over the connects between."""
    return callgrind.per_unit(small, big, connects_between, "connects")


def counted(output: str, returncode: int, channels: int) -> int:
    """The instructions of a counted run that connected all its ``channels``, from its output.

    Raises:
        ValueError: the run failed, or did not say it connected them all (its output is quoted).
    """
    return callgrind.counted(
        output, returncode, field="connected", expected=channels, what="channels connected"
    )


def _counted_run(args: argparse.Namespace, channels: int, far_end: str, ca_file: str | None) -> int:
    arguments = [
        *("--client", args.client, "--channels", str(channels)),
        *("--far-end", far_end, "--exit-when-connected"),
    ]
    if ca_file is not None:
        arguments += ["--ca-file", ca_file]
    return callgrind.run_counted(
        "bench.connect_cost",
        arguments,
        field="connected",
        expected=channels,
        what="channels connected",
    )


def _count_instructions(args: argparse.Namespace) -> dict[str, Any]:
    callgrind.require_valgrind()
    runs: list[dict[str, Any]] = []

    async def both() -> None:
        async with _far_end_for(
            "websocket", args.far_end, args.channels, tls=args.tls, ca_file=args.ca_file
        ) as (url, ca_file):
            assert url is not None
            for channels in (args.channels, 3 * args.channels):
                total = await trio.to_thread.run_sync(_counted_run, args, channels, url, ca_file)
                runs.append({"channels": channels, "instructions": total})

    trio.run(both)
    return {
        "client": args.client,
        "channels": args.channels,
        "instructions_per_connect": instructions_per_connect(
            runs[0]["instructions"], runs[1]["instructions"], 2 * args.channels
        ),
        "runs": runs,
    }


def _exit_now(result: dict[str, Any]) -> None:
    """Print the line and end the process at once: no teardown is counted."""
    print(json.dumps(result), flush=True)
    sys.stderr.flush()
    os._exit(0)


async def _timed(args: argparse.Namespace) -> dict[str, Any]:
    on_connected = _exit_now if args.exit_when_connected else None
    async with _far_end_for(
        "websocket", args.far_end, args.channels, tls=args.tls, ca_file=args.ca_file
    ) as (url, ca_file):
        assert url is not None
        return await measure(
            args.client, url, channels=args.channels, on_connected=on_connected, ca_file=ca_file
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.connect_cost",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--client", choices=CLIENTS, default="node", help="a node, or a bare baseline"
    )
    parser.add_argument("--channels", type=int, default=100, help="channels (default 100)")
    parser.add_argument(
        "--far-end", metavar="URL", help="a running lean far end (ws://.../ws or wss://)"
    )
    add_tls_arguments(parser)
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="count instructions per connect under valgrind instead of timing (minutes)",
    )
    # A counted run's own: print the line and end the process once all are connected.
    parser.add_argument("--exit-when-connected", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.channels < 1:
        parser.error("--channels must be at least 1")
    if (args.tls or args.ca_file) and args.client == "trio-websocket":
        parser.error("--tls, --ca-file: the node and the bare client only")
    if args.tls and args.far_end is not None:
        parser.error("--tls: a far end of the bench's own only (--ca-file for a given one)")
    if args.ca_file is not None and not (args.far_end or "").startswith("wss://"):
        parser.error("--ca-file: for a wss:// --far-end only (--tls makes its own CA)")
    if args.instructions and args.exit_when_connected:
        parser.error("--exit-when-connected is a counted run's own, not for --instructions")
    # A channel's lifecycle is logged; the figure is the one line printed.
    logger = logging.getLogger("switchboard")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        result = _count_instructions(args) if args.instructions else trio.run(_timed, args)
    finally:
        logger.setLevel(level)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
