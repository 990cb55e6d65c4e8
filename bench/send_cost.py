"""The cost of one send through a node, measured so that a loaded machine cannot move it.

``python -m bench.send_cost [--client C] [--provider P] [--channels N] [--callers K] [--sends S]``
    runs a node in this process with ``N`` channels of provider ``P``
    (``websocket``, the default, or ``simulated``) and ``K`` callers per
    channel, each sending ``S`` messages closed-loop (the next once the
    platform accepted the last), and prints one JSON line: ``{"client",
    "provider", "channels", "callers", "sends", "cpu_seconds",
    "cpu_per_send"}``. A websocket node talks to the lean far end
    (:mod:`bench.far_end`), started in a process of its own unless
    ``--far-end URL`` names one. ``--client bare`` (``C`` is ``node`` by
    default) does the same sends with a bare trio + wsproto client instead
    of a node: ``N`` connections with the connection code of
    :mod:`bench.ws_bare`, each caller sending a frame and waiting for its
    ``ack``; the baseline the node's figure is judged against.

``python -m bench.send_cost --instructions [the same options]``
    counts the instructions of that run under ``valgrind --tool=callgrind``
    instead of timing it: twice, with ``S`` and with ``3 S`` sends per
    caller, the far end (not counted) running natively. It prints
    ``{"instructions_per_send", "runs": [...]}``: the difference of the two
    totals over the sends between them, so that start-up and connects
    cancel out.

Design notes: the channels benchmark times the node against a bare client
in a fresh process, and on a shared machine both move by tens of percent
from run to run (the bare client alone by 38 % between two runs of one
command). A change of a few percent on the send path cannot be seen that
way. An instruction count is not CPU time (it misses cache misses and
stalls), but it does not move with the machine's load, and the same run
gives the same count to within about 1 %: two trees compared this way
differ by what their code does. The sends are closed-loop, not paced: a
paced run's cost depends on how far the node falls behind, which valgrind's
slowdown (about 50 times) changes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Final
from urllib.parse import urlsplit

import trio

from actors import ChannelStatus
from providers.base import OutboundMessage
from runtime import open_node, parse_config
from runtime.config import ChannelSpec

__all__ = ["instructions_per_send", "main", "measure"]

TEXT: Final = "x" * 40  # the channels benchmark's default text size
CONNECT_WAIT: Final = 60.0  # seconds for every channel to connect (under valgrind: slow)
_COLLECTED: Final = re.compile(r"Collected : (\d+)")


async def measure(
    provider: str,
    *,
    channels: int,
    callers: int,
    sends: int,
    far_end: str | None = None,
    connect_wait: float = CONNECT_WAIT,
) -> dict[str, Any]:
    """Run the closed-loop sends once and return the JSON line's fields.

    Raises:
        RuntimeError: not every channel connected within ``connect_wait`` seconds.
    """
    async with contextlib.AsyncExitStack() as stack:
        if provider == "websocket" and far_end is None:
            from .rig import open_far_end_process

            far_end = (await stack.enter_async_context(open_far_end_process())).channel_url
        config = parse_config(
            {
                "node": {"id": "send-cost", "start_timeout": connect_wait},
                "ops": {"enabled": False},
                "providers": {provider: {"rate_limit": {"enabled": False}}},
                "channels": [],
            }
        )
        node = await stack.enter_async_context(open_node(config))
        ids = [f"ch{index:05d}" for index in range(channels)]
        for index, channel_id in enumerate(ids):
            if provider == "websocket":
                spec = ChannelSpec(
                    id=channel_id,
                    provider=provider,
                    tenant="bench",
                    base_url=far_end,
                    credentials={"token": f"send-cost-{index:05d}"},
                )
            else:
                spec = ChannelSpec(id=channel_id, provider=provider, tenant="bench")
            await node.start_channel(spec)
        with trio.move_on_after(connect_wait):
            await _connected(node, len(ids))
        unconnected = [s for s in node.channels() if s.status is not ChannelStatus.CONNECTED]
        if unconnected:
            problems = "; ".join(f"{s.channel_id}: {s.problem}" for s in unconnected[:3])
            raise RuntimeError(
                f"{len(unconnected)} of {channels} channels did not connect within "
                f"{connect_wait:g} s ({problems}); nothing was measured"
            )

        async def caller(channel_id: str, number: int) -> None:
            for n in range(sends):
                key = f"{channel_id}-{number}-{n}"
                message = OutboundMessage(peer=f"p{n % 7}", idempotency_key=key, text=TEXT)
                await node.send(channel_id, message)

        cpu = await _run_callers(ids, callers, caller)
    return _result("node", provider, channels, callers, sends, cpu)


async def measure_bare(url: str, *, channels: int, callers: int, sends: int) -> dict[str, Any]:
    """The sends of :func:`measure` by a bare trio + wsproto client: the baseline.

    ``channels`` connections to the far end at ``url``, each with ``callers``
    callers that send a frame and wait for its ``ack`` (an event per send,
    as a plain client would). Raises ``ConnectionError`` when a connection
    cannot be opened.
    """
    # The connection code of the open-loop baseline, so that the two bare
    # clients differ only in how they load the far end.
    from .ws_bare import PEERS, _Connection, _serve_connection, _Session, _Tally

    class Answers(_Tally):
        """Wakes the caller of each answered send."""

        def __init__(self) -> None:
            super().__init__()
            self.waiting: dict[str, trio.Event] = {}

        def on_frame(self, frame: dict[str, Any]) -> None:
            if frame.get("type") in ("ack", "error"):
                event = self.waiting.pop(str(frame.get("id")), None)
                if event is not None:
                    event.set()

    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    session = _Session()
    answers = session.tally = Answers()
    encode = json.JSONEncoder(separators=(",", ":")).encode
    async with trio.open_nursery() as nursery:
        opened: list[_Connection] = []
        for index in range(channels):
            token = f"send-cost-{index:05d}"
            target = f"{parts.path or '/'}?token={token}"
            opened.append(
                await nursery.start(_serve_connection, session, host, port, target, token)
            )

        async def caller(connection: _Connection, number: int) -> None:
            for n in range(sends):
                key = f"{connection.token}-{number}-{n}"
                event = answers.waiting[key] = trio.Event()
                frame = {"type": "send", "id": key, "peer": f"user-{n % PEERS}", "text": TEXT}
                connection.send_text(encode(frame))
                await event.wait()

        cpu = await _run_callers(opened, callers, caller)
        nursery.cancel_scope.cancel()
    return _result("bare", "websocket", channels, callers, sends, cpu)


async def _run_callers(
    targets: Sequence[Any], callers: int, caller: Callable[[Any, int], Awaitable[None]]
) -> float:
    """Run ``callers`` callers of each target at once; the CPU seconds they took."""
    began = time.process_time()
    async with trio.open_nursery() as nursery:
        for target in targets:
            for number in range(callers):
                nursery.start_soon(caller, target, number)
    return time.process_time() - began


def _result(
    client: str, provider: str, channels: int, callers: int, sends: int, cpu: float
) -> dict[str, Any]:
    total = channels * callers * sends
    return {
        "client": client,
        "provider": provider,
        "channels": channels,
        "callers": callers,
        "sends": total,
        "cpu_seconds": cpu,
        "cpu_per_send": cpu / total,
    }


async def _connected(node: Any, count: int) -> None:
    with node.subscribe(kind="state") as changes:
        while sum(s.status is ChannelStatus.CONNECTED for s in node.channels()) < count:
            await changes.receive()


def instructions_per_send(small: int, big: int, sends_between: int) -> int:
    """The instructions of one send: the difference of two runs' totals over the sends between."""
    if sends_between <= 0:
        raise ValueError(f"the runs must differ by some sends, not {sends_between}")
    return round((big - small) / sends_between)


def collected(valgrind_output: str) -> int:
    """The total instructions a ``callgrind`` run printed ("Collected : N").

    Raises:
        ValueError: the output holds no such line (valgrind failed; its output is quoted).
    """
    found = _COLLECTED.search(valgrind_output)
    if found is None:
        raise ValueError(f"no instruction count in valgrind's output: {valgrind_output[-800:]!r}")
    return int(found.group(1))


def _counted_run(args: argparse.Namespace, sends: int, far_end: str | None) -> int:
    command = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={os.devnull}",
        sys.executable,
        "-m",
        "bench.send_cost",
        *("--client", args.client, "--provider", args.provider),
        *("--channels", str(args.channels)),
        *("--callers", str(args.callers), "--sends", str(sends)),
    ]
    if far_end is not None:
        command += ["--far-end", far_end]
    environment = {**os.environ, "PYTHONHASHSEED": "0"}
    with tempfile.TemporaryFile("w+") as log:
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=environment, check=False)
        log.seek(0)
        return collected(log.read())


@contextlib.asynccontextmanager
async def _far_end_for(provider: str, given: str | None) -> AsyncIterator[str | None]:
    if provider != "websocket" or given is not None:
        yield given
        return
    from .rig import open_far_end_process

    async with open_far_end_process() as far_end:
        yield far_end.channel_url


def _count_instructions(args: argparse.Namespace) -> dict[str, Any]:
    if shutil.which("valgrind") is None:
        raise SystemExit(
            "--instructions needs valgrind (apt install valgrind), which is not installed"
        )
    runs: list[dict[str, Any]] = []

    async def both() -> None:
        async with _far_end_for(args.provider, args.far_end) as url:
            for sends in (args.sends, 3 * args.sends):
                total = await trio.to_thread.run_sync(_counted_run, args, sends, url)
                runs.append({"sends_per_caller": sends, "instructions": total})

    trio.run(both)
    between = args.channels * args.callers * 2 * args.sends
    return {
        "client": args.client,
        "provider": args.provider,
        "channels": args.channels,
        "callers": args.callers,
        "instructions_per_send": instructions_per_send(
            runs[0]["instructions"], runs[1]["instructions"], between
        ),
        "runs": runs,
    }


async def _bare(args: argparse.Namespace) -> dict[str, Any]:
    async with _far_end_for("websocket", args.far_end) as url:
        assert url is not None
        return await measure_bare(
            url, channels=args.channels, callers=args.callers, sends=args.sends
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.send_cost", description=__doc__)
    parser.add_argument(
        "--client", choices=["node", "bare"], default="node", help="a node, or the bare baseline"
    )
    parser.add_argument("--provider", choices=["websocket", "simulated"], default="websocket")
    parser.add_argument("--channels", type=int, default=50)
    parser.add_argument("--callers", type=int, default=2, help="callers per channel")
    parser.add_argument("--sends", type=int, default=20, help="sends per caller")
    parser.add_argument("--far-end", metavar="URL", help="a running lean far end (ws://.../ws)")
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="count instructions per send under valgrind instead of timing",
    )
    args = parser.parse_args(argv)
    # A channel's lifecycle is logged; the figure is the one line printed.
    logging.getLogger("switchboard").setLevel(logging.ERROR)
    for name in ("channels", "callers", "sends"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.client == "bare" and args.provider != "websocket":
        parser.error("--client bare is a websocket client: --provider websocket only")
    if args.instructions:
        result = _count_instructions(args)
    elif args.client == "bare":
        result = trio.run(_bare, args)
    else:
        result = trio.run(
            lambda: measure(
                args.provider,
                channels=args.channels,
                callers=args.callers,
                sends=args.sends,
                far_end=args.far_end,
            )
        )
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
