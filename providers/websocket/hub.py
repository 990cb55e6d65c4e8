"""The websocket readers' poller: one task per trio run reads every parked link.

Design: a link's reader used to wait for bytes in trio's I/O manager, one
wait per read. Each frame that came (an ack, nearly always) then cost a
task step of the reader's own, a ``recv`` that found the socket empty, and
a re-arm of trio's one-shot epoll registration: about 7-9 µs a message on
top of the read itself, measured with 500 socket pairs in one process
(10-13 µs a message read by a task per socket, 3.3-3.5 µs by one task
reading them all; issue 12's floor is a client that waits on all its
sockets from one task). In a node's closed-loop sends that was 7 % of the
instructions a send (411,980 to 384,406, ``python -m bench.send_cost
--instructions``).

So a parked reader hands its socket to this hub instead. The hub keeps an
epoll of its own, level-triggered, and waits on that one descriptor in
trio's I/O manager: one wake-up of its task reads every socket that has
bytes. For each, it reads the bytes and calls the reader's *take* in place,
a synchronous function that applies them as far as it can without waiting
(an ack settles a send, a receipt goes to the store's batch). Only what
needs a wait (a reply to write, an event for a busy consumer, a close, a
defect) wakes the reader's task, with whatever take hands back; the reader
carries it out and parks again. A socket stays registered while its
reader stays parked, so the common frame costs one ``recv`` and no
``epoll_ctl``.

Contract of a take, called with the bytes read (never empty):

* it runs in the hub's task, inside the reader task's context (its
  contextvars: log fields), and must neither block nor wait;
* it returns ``None`` when it applied everything (the reader stays
  parked), or a value that wakes the reader with it;
* an exception it raises wakes the reader with that exception, raised at
  its wait, as if the reader had met it itself.

The end of the stream (or a reset) wakes the reader with ``None``, as
``_SocketIO.receive`` returns it. A cancelled wait (the reader's timer, a
kill) takes the socket out of the hub and consumes nothing: what came
stays in the socket. A socket closed while its reader is parked
(:meth:`ReadHub.closing`, before the close) wakes the reader with ``None``.

Where ``select.epoll`` does not exist (not Linux), :func:`read_hub` returns
``None`` and readers wait in trio's I/O manager as before.

The hub's task is a system task: its exception would end the run, so
nothing a take does can reach it. A take may even cancel a scope around
its own reader (a callback that kills the channel): trio's abort then only
keeps the cancellation, :attr:`ReadHub.reader_cancelled` tells the take to
hand the rest to the reader, and the hub wakes the reader once the take is
done, with what it handed back (the cancellation comes at the reader's
next checkpoint), its exception, or the cancellation itself.
"""

from __future__ import annotations

import contextlib
import select
import socket
from collections.abc import Callable
from typing import Any, Final, NoReturn

import attrs
import outcome
import trio
import trio.lowlevel
from trio.lowlevel import Abort, RunVar, Task

__all__ = ["ReadHub", "ReadHubStatistics", "read_hub", "started_hub"]

MAX_EVENTS: Final = 1024  # sockets read per wake-up of the hub; the rest on the next one
_EPOLLIN: Final = getattr(select, "EPOLLIN", 1)


class _Parked:
    """One reader parked in the hub: its socket, its task and its take.

    While its take runs (the hub's ``_taking``), a cancellation of the reader (a
    take may cancel a scope around its own reader) is only kept, as
    ``cancelled`` (trio's ``raise_cancel``), and the hub wakes the reader
    itself once the take is done.
    """

    __slots__ = ("cancelled", "size", "sock", "take", "task")

    def __init__(self, sock: socket.socket, take: Callable[[bytes], Any], task: Task, size: int):
        self.sock = sock
        self.take = take
        self.task = task
        self.size = size
        self.cancelled: Callable[[], NoReturn] | None = None


@attrs.frozen(kw_only=True)
class ReadHubStatistics:
    """A snapshot of a :class:`ReadHub`.

    Attributes:
        parked: readers parked now.
        wakes: readers woken since the hub started (the rest of their reads
            were applied in place).
    """

    parked: int
    wakes: int


class ReadHub:
    """Every parked reader's socket in one trio run (see the module docstring)."""

    __slots__ = ("_epoll", "_parked", "_taking", "_wakes")

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._parked: dict[int, _Parked] = {}
        self._taking: _Parked | None = None  # whose take runs now
        self._wakes = 0

    def __repr__(self) -> str:
        return f"<ReadHub parked={len(self._parked)} wakes={self._wakes}>"

    def statistics(self) -> ReadHubStatistics:
        """How many readers are parked, and how many were woken."""
        return ReadHubStatistics(parked=len(self._parked), wakes=self._wakes)

    @property
    def reader_cancelled(self) -> bool:
        """Whether the reader whose take runs now has been cancelled during it
        (by a callback of its own): the take should hand the rest to the
        reader, whose task meets the cancellation."""
        taking = self._taking
        return taking is not None and taking.cancelled is not None

    async def receive(self, sock: socket.socket, take: Callable[[bytes], Any], size: int) -> Any:
        """Park the calling reader until its socket has bytes, and apply them in place.

        Args:
            sock: the reader's non-blocking socket.
            take: called in the hub's task with each chunk read (see the
                module docstring); ``None`` keeps the reader parked.
            size: the most bytes read at once.

        Returns:
            What ``take`` handed back; ``None`` at the end of the stream, after
            a reset, or once ``sock`` was closed.

        Raises:
            trio.BusyResourceError: another reader is parked on ``sock``.
            Exception: what ``take`` raised. Cancel-safe: a cancelled wait
            consumes nothing.
        """
        fd = sock.fileno()
        parked = self._parked
        if fd in parked:
            raise trio.BusyResourceError("another task is already reading this socket")
        if fd == -1:
            await trio.lowlevel.checkpoint()
            return None
        try:
            self._epoll.register(fd, _EPOLLIN)
        except OSError:  # closed behind our back
            await trio.lowlevel.checkpoint()
            return None
        entry = parked[fd] = _Parked(sock, take, trio.lowlevel.current_task(), size)

        def abort(raise_cancel: Callable[[], NoReturn]) -> Abort:
            if self._taking is entry:  # its own take cancelled it: the hub wakes it after
                entry.cancelled = raise_cancel
                return Abort.FAILED
            self._unpark(fd)
            return Abort.SUCCEEDED

        return await trio.lowlevel.wait_task_rescheduled(abort)

    def closing(self, sock: socket.socket) -> None:
        """``sock`` is about to close: its parked reader (if any) wakes with ``None``."""
        fd = sock.fileno()
        entry = self._parked.get(fd)
        if entry is not None and entry.sock is sock:
            self._wake(fd, entry, outcome.Value(None))

    def _unpark(self, fd: int) -> None:
        del self._parked[fd]
        with contextlib.suppress(OSError):  # (already closed: the kernel dropped it)
            self._epoll.unregister(fd)

    def _wake(self, fd: int, entry: _Parked, result: outcome.Outcome[Any]) -> None:
        if self._parked.get(fd) is not entry:  # (closing() woke it during its own take)
            return
        self._unpark(fd)
        self._wakes += 1
        trio.lowlevel.reschedule(entry.task, result)

    async def serve(self) -> None:
        """Read every socket that has bytes, each time the epoll has some (never raises)."""
        epoll = self._epoll
        try:
            while True:
                await trio.lowlevel.wait_readable(epoll.fileno())
                for fd, _ in epoll.poll(0, MAX_EVENTS):
                    self._read(fd)
        finally:
            epoll.close()

    def _read(self, fd: int) -> None:
        entry = self._parked.get(fd)
        if entry is None:  # woken or cancelled earlier in this batch (or a stale registration)
            with contextlib.suppress(OSError):  # (level-triggered: it would come up again)
                self._epoll.unregister(fd)
            return
        try:
            data = entry.sock.recv(entry.size)
        except BlockingIOError:  # (someone else read it)
            return
        except OSError:  # reset by the peer
            data = b""
        if not data:
            self._wake(fd, entry, outcome.Value(None))
            return
        self._taking = entry
        try:
            handed = entry.task.context.run(entry.take, data)
        except BaseException as exc:
            self._wake(fd, entry, outcome.Error(exc))
            return
        finally:
            self._taking = None
        if handed is not None:  # (a cancellation is met at the reader's next checkpoint)
            self._wake(fd, entry, outcome.Value(handed))
        elif entry.cancelled is not None:
            self._wake(fd, entry, outcome.capture(entry.cancelled))


_HUB: Final[RunVar[ReadHub | None]] = RunVar("websocket_read_hub")


def read_hub() -> ReadHub | None:
    """This trio run's hub, started (as a system task) on first use; ``None``
    where the platform has no epoll."""
    try:
        return _HUB.get()
    except LookupError:
        hub = ReadHub() if hasattr(select, "epoll") else None
        if hub is not None:
            trio.lowlevel.spawn_system_task(hub.serve, name="websocket read hub")
        _HUB.set(hub)
        return hub


def started_hub() -> ReadHub | None:
    """This trio run's hub if one was started (never starts one)."""
    return _HUB.get(None)
