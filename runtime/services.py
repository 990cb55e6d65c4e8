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

import errno
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from actors import Actor, Exit

from .errors import StartupFailed

__all__ = ["ServiceActor", "ServiceHandle", "bind_failed", "naming_bind_errors"]

log = logging.getLogger("switchboard.node")

Serve = Callable[..., Awaitable[Any]]  # serve(task_status=...) -> None, until cancelled


def bind_failed(exc: OSError, *, what: str, host: str, port: int, setting: str) -> StartupFailed:
    """An error binding ``host:port`` as one line: where, why, and the setting to change.

    Args:
        exc: what the socket raised.
        what: the listener, for people ("ops HTTP").
        host: the interface it tried.
        port: the port it tried.
        setting: the key of the port (``ops.port``); the host's key is its sibling.
    """
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    host_setting = setting.rpartition(".")[0] + ".host"
    reason = (exc.strerror or str(exc) or type(exc).__name__).lower()
    if exc.errno == errno.EADDRINUSE:
        advice = f"change {setting}, or stop what listens there"
    elif exc.errno == errno.EACCES:
        advice = f"change {setting} to a port above 1023, or run with the right to bind it"
    elif exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT) or isinstance(exc, socket.gaierror):
        advice = f"change {host_setting} to an address of this machine"
        setting = host_setting
    else:
        advice = f"check {host_setting} and {setting}"
    return StartupFailed(
        f"cannot listen on {address} for {what}: {reason}; {advice}",
        setting=setting,
        fields={"server.address": host, "server.port": port},
    )


def naming_bind_errors(serve: Serve, *, what: str, host: str, port: int, setting: str) -> Serve:
    """``serve``, with an ``OSError`` before it is ready (its bind) raised as :func:`bind_failed`.

    After the service reported ready, its errors pass unchanged.
    """

    async def run(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        ready = False

        class _Status:
            def started(self, value: Any = None) -> None:
                nonlocal ready
                ready = True
                task_status.started(value)

        try:
            await serve(task_status=_Status())
        except (OSError, BaseExceptionGroup) as exc:
            cause = None if ready else _first_os_error(exc)
            if cause is None:
                raise
            raise bind_failed(cause, what=what, host=host, port=port, setting=setting) from cause

    return run


def _first_os_error(exc: BaseException) -> OSError | None:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _first_os_error(inner)
            if found is not None:
                return found
        return None
    return exc if isinstance(exc, OSError) else None


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
