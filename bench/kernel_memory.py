"""Idle memory of one side, measured alone in this (fresh) process.

``python -m bench.kernel_memory --side actors|trio --actors N [--trace K]``
prints one JSON line: ``rss_before``, ``rss_after`` (bytes), ``n`` and
``bytes_per_actor`` = (after - before) / N.

- ``actors``: N plain actors (``await system.spawn(Idle)``), each told one
  message; measured once the dispatcher has handled them all and every
  actor is idle again.
- ``trio``: N ``nursery.start_soon`` tasks, each with its own memory channel
  (capacity = the default mailbox capacity), each sent one message with
  ``send_nowait``; measured once every task has received it and parked in
  ``receive`` again.

Both sides queue all N messages before any is handled (a plain-actor spawn
does not yield; ``start_soon`` tasks first run at the next checkpoint), so
the N one-message mailboxes (channel buffers) exist at once: RSS keeps the
allocator's high-water mark of that burst even after the queues are freed.
The figure is therefore an upper bound of the steady-state cost; ``--trace``
shows what stays allocated.

Both sides: the list that holds the N refs (or send channels) is allocated
before the first reading; one actor (task) is created and exercised first so
that lazily-initialised machinery is not counted; ``gc.collect()`` runs
before each RSS reading (psutil ``memory_info().rss``) and ``gc.freeze()``
after the first, as in :mod:`bench.kernel`;
``trio.testing.wait_all_tasks_blocked()`` decides "everything is idle".

``--trace K`` additionally runs tracemalloc over the N creations and prints
the K biggest allocation sites to stderr (it slows the run; the RSS figure
is then not comparable).

Once the figure is printed the process ends with ``os._exit(0)`` instead of
tearing the N actors (tasks) down: teardown is measured by the stop-time
figure, and here it would double the run's duration.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tracemalloc
from typing import Any, Final

import trio
import trio.testing

from actors import Actor, MailboxConfig, open_actor_system

from .memory_probe import finish, rss

CAPACITY: Final = MailboxConfig().capacity  # messages; the default mailbox bound


class Idle(Actor):
    """Same as ``bench.kernel.Idle``; defined here so this process imports no more."""

    def receive(self, msg: Any) -> None:
        return None


_snapshots: list[tracemalloc.Snapshot] = []


def _rss(*, final: bool = False) -> int:
    value = rss()
    if final and tracemalloc.is_tracing():
        _snapshots.append(tracemalloc.take_snapshot())
    return value


def _finish(side: str, n: int, before: int, after: int, trace: int) -> None:
    """Print the result and end the process at once (see the module docstring)."""
    if trace:
        stats = _snapshots[-1].statistics("traceback")
        total = sum(s.size for s in stats)
        print(
            f"tracemalloc: {total / n:.0f} bytes per actor still allocated "
            f"(whole process, incl. the {n:,}-slot list)",
            file=sys.stderr,
        )
        for stat in stats[:trace]:
            print(f"{stat.size / n:8.1f} B/actor  {stat.count:>8} blocks", file=sys.stderr)
            for line in stat.traceback.format(limit=4, most_recent_first=True):
                print(f"        {line}", file=sys.stderr)
    finish(side, n, before, after)


async def measure_actors(n: int, trace: int) -> None:
    async with open_actor_system() as system:
        refs: list[Any] = [None] * n
        warm = await system.spawn(Idle)
        warm.tell(0)
        await trio.testing.wait_all_tasks_blocked()
        before = _rss()
        gc.freeze()  # the N creations below do not rescan the start-up heap
        for i in range(n):
            ref = await system.spawn(Idle)
            ref.tell(i)
            refs[i] = ref
        await trio.testing.wait_all_tasks_blocked()
        after = _rss(final=True)
        handled = sum(ref.statistics().processed for ref in refs)
        if handled != n:
            raise RuntimeError(f"only {handled} of {n} actors handled their message")
        _finish("actors", n, before, after, trace)


async def _parked(recv: trio.MemoryReceiveChannel[Any], handled: list[int]) -> None:
    async for _ in recv:
        handled[0] += 1


async def measure_trio(n: int, trace: int) -> None:
    handled = [0]
    async with trio.open_nursery() as nursery:
        sends: list[Any] = [None] * n
        warm_send, warm_recv = trio.open_memory_channel[Any](CAPACITY)
        nursery.start_soon(_parked, warm_recv, [0])
        warm_send.send_nowait(0)
        await trio.testing.wait_all_tasks_blocked()
        before = _rss()
        gc.freeze()  # the N creations below do not rescan the start-up heap
        for i in range(n):
            send, recv = trio.open_memory_channel[Any](CAPACITY)
            nursery.start_soon(_parked, recv, handled)
            send.send_nowait(i)
            sends[i] = send
        await trio.testing.wait_all_tasks_blocked()
        after = _rss(final=True)
        if handled[0] != n:
            raise RuntimeError(f"only {handled[0]} of {n} tasks received their message")
        _finish("trio", n, before, after, trace)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.kernel_memory")
    parser.add_argument("--side", choices=("actors", "trio"), required=True)
    parser.add_argument("--actors", type=int, default=100_000)
    parser.add_argument("--trace", type=int, default=0, metavar="K")
    args = parser.parse_args(argv)
    if args.trace:
        tracemalloc.start(8)
    fn = measure_actors if args.side == "actors" else measure_trio
    trio.run(fn, args.actors, args.trace)
    raise AssertionError("unreachable: the measurement ends the process")


if __name__ == "__main__":
    sys.exit(main())
