"""A TCP proxy that adds a round trip: the network between a node and its platform.

Design: a real platform is 50-300 ms away, and loopback hides what that
costs a channel (one send in flight caps it at 1/RTT messages per second).
Every chunk read from either side is forwarded ``rtt / 2`` seconds after it
arrived, by a writer task per direction, so the delay is a pure latency:
chunks in flight overlap as packets on a long link do, and the bandwidth is
not cut. Plain trio streams carry the bytes (no protocol parsing here); an
end of stream is passed on once what came before it has been delivered.

Usage: ``port = await nursery.start(DelayProxy(target_port, rtt=0.15).serve)``,
then point the client at ``127.0.0.1:port``.
"""

from __future__ import annotations

import math
from typing import Any, Final

import trio

__all__ = ["DelayProxy"]

CHUNK: Final = 65_536  # bytes per read


class DelayProxy:
    """Forwards connections to ``target_host:target_port`` with ``rtt`` added.

    Attributes:
        rtt: seconds added to every round trip (half each way).
        connections: connections accepted so far.
    """

    def __init__(self, target_port: int, *, rtt: float, target_host: str = "127.0.0.1") -> None:
        if rtt < 0 or not math.isfinite(rtt):
            raise ValueError(f"a round trip is a finite number of seconds >= 0, not {rtt!r}")
        self.target_host = target_host
        self.target_port = target_port
        self.rtt = rtt
        self.connections = 0

    def __repr__(self) -> str:
        return f"<DelayProxy -> {self.target_host}:{self.target_port} rtt={self.rtt * 1e3:g} ms>"

    async def serve(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Accept and forward connections until cancelled; ``started(port)``."""
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.SocketStream) -> None:
        self.connections += 1
        try:
            server = await trio.open_tcp_stream(self.target_host, self.target_port)
        except OSError:
            await client.aclose()
            return
        async with client, server, trio.open_nursery() as nursery:
            nursery.start_soon(self._direction, client, server, nursery.cancel_scope)
            nursery.start_soon(self._direction, server, client, nursery.cancel_scope)

    async def _direction(
        self, source: trio.SocketStream, sink: trio.SocketStream, link: trio.CancelScope
    ) -> None:
        """Read ``source`` and deliver each chunk to ``sink`` half a round trip later."""
        send, receive = trio.open_memory_channel[tuple[float, bytes]](math.inf)
        delay = self.rtt / 2
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._deliver, receive, sink, link)
            async with send:
                try:
                    while True:
                        data = await source.receive_some(CHUNK)
                        if not data:
                            break
                        send.send_nowait((trio.current_time() + delay, data))
                except _BROKEN:
                    link.cancel()  # one side broke: the whole link goes, as a reset would

    async def _deliver(
        self,
        receive: trio.MemoryReceiveChannel[tuple[float, bytes]],
        sink: trio.SocketStream,
        link: trio.CancelScope,
    ) -> None:
        try:
            async with receive:
                async for due, data in receive:
                    await trio.sleep_until(due)
                    await sink.send_all(data)
            await sink.send_eof()
        except _BROKEN:
            link.cancel()


_BROKEN: Final = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
