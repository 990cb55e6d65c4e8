"""The node's services as supervised actors.

Design: a service is anything written trio's way, ``serve_*(task_status)``
that runs until cancelled and reports its address with
``task_status.started(url)`` (the ops HTTP server, an emulator). A
:class:`ServiceActor` runs one in a task its incarnation owns, so the
service sits in the node's supervision tree like any other child: when it
crashes, its supervisor restarts it, and it stops in order with the rest.
``on_start`` returns only once the service reported ready (OTP's init ack),
so the next child starts after it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from actors import Actor, Exit

__all__ = ["ServiceActor", "ServiceHandle"]

log = logging.getLogger("switchboard.node")

Serve = Callable[..., Awaitable[Any]]  # serve(task_status=...) -> None, until cancelled


class ServiceHandle:
    """What the node keeps of a service across restarts: its name and its address.

    Attributes:
        name: the service's name.
        url: what the service reported when it became ready (its base URL).
        starts: how many times it has started.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.url: Any = None
        self.starts = 0

    def __repr__(self) -> str:
        return f"<ServiceHandle {self.name} url={self.url!r} starts={self.starts}>"


class ServiceActor(Actor):
    """Runs ``serve`` as a supervised child; see the module docstring."""

    def __init__(self, handle: ServiceHandle, serve: Serve) -> None:
        self.handle = handle
        self.serve = serve
        self._ready = trio.Event()

    @classmethod
    def factory(cls, handle: ServiceHandle, serve: Serve) -> Callable[[], ServiceActor]:
        """A start function for a child spec."""

        def start() -> ServiceActor:
            return cls(handle, serve)

        start.__name__ = f"{cls.__name__}[{handle.name}]"
        return start

    def __repr__(self) -> str:
        return f"<ServiceActor {self.handle.name} {self.handle.url or '(starting)'}>"

    async def on_start(self) -> None:
        self.start_task(self._run)
        await self._ready.wait()
        self.handle.starts += 1
        if self.handle.starts > 1:
            log.warning(
                "%s restarted (start #%d) at %s",
                self.handle.name,
                self.handle.starts,
                self.handle.url,
            )

    async def _run(self) -> None:
        async with trio.open_nursery() as nursery:
            self.handle.url = await nursery.start(self.serve)
            self._ready.set()

    def receive(self, msg: Any) -> Any:
        log.warning("%r takes no messages; ignored %r", self, msg)

    async def on_stop(self, exit: Exit) -> None:
        return None
