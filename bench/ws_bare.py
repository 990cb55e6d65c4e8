"""The baseline for a channel's memory: bare trio-websocket client connections.

``python -m bench.ws_bare URL COUNT`` opens ``COUNT`` connections to the
websocket emulator at ``URL`` (``ws://host:port/ws``), each with one task
reading its messages (what any live client needs: heartbeats arrive), waits
until all are open, and prints one JSON line: ``{"connections": n,
"rss_delta": bytes, "per_connection": bytes, "seconds": s}``.

It runs in a fresh process so its RSS delta holds nothing but those
connections; the channels scenario runs it against the same emulator
before its own channels connect.
"""

from __future__ import annotations

import gc
import json
import sys
import time

import psutil
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, connect_websocket_url


async def _hold(
    nursery: trio.Nursery,
    url: str,
    opened: list[WebSocketConnection],
    all_open: trio.Event,
    count: int,
) -> None:
    ws = await connect_websocket_url(nursery, url)
    opened.append(ws)
    if len(opened) == count:
        all_open.set()
    try:
        while True:
            await ws.get_message()
    except ConnectionClosed:
        return


async def measure(url: str, count: int) -> dict[str, float]:
    """Open ``count`` connections; their RSS cost once all are open."""
    gc.collect()
    before = psutil.Process().memory_info().rss
    started = time.perf_counter()
    opened: list[WebSocketConnection] = []
    all_open = trio.Event()
    sep = "&" if "?" in url else "?"
    async with trio.open_nursery() as nursery:
        for i in range(count):
            nursery.start_soon(
                _hold, nursery, f"{url}{sep}token=bare-{i:05d}", opened, all_open, count
            )
        await all_open.wait()
        seconds = time.perf_counter() - started
        gc.collect()
        after = psutil.Process().memory_info().rss
        nursery.cancel_scope.cancel()
    delta = after - before
    return {
        "connections": len(opened),
        "rss_delta": delta,
        "per_connection": delta / max(1, len(opened)),
        "seconds": seconds,
    }


def main() -> int:
    url, count = sys.argv[1], int(sys.argv[2])
    print(json.dumps(trio.run(measure, url, count)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
