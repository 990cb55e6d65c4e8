"""Idle memory of an asyncio task or a Pykka actor, measured alone in this (fresh) process.

``python -m bench.peers_memory --side asyncio|pykka --actors N`` prints one
JSON line in the format of :mod:`bench.kernel_memory` (``rss_before``,
``rss_after``, ``n``, ``bytes_per_actor``); Switchboard's and trio's sides
are measured by that module, this one adds the two peers with the same
method:

- ``asyncio``: N ``create_task`` tasks, each with its own
  ``asyncio.Queue(maxsize=<default mailbox capacity>)``, each put one
  message with ``put_nowait``; measured once every task has taken it and
  parked in ``get`` again (all N queued before any is handled, as on the
  other sides).
- ``pykka``: N ``ThreadingActor``s, each told one message; measured once
  every actor has handled it and is blocked on its inbox again. Each actor
  is an OS thread: the RSS delta includes the touched pages of its stack
  (the untouched rest of the stack reservation is virtual and not counted).

As in :mod:`bench.kernel_memory`: the list of N slots is allocated before
the first reading, one task (actor) is created and exercised first so that
lazily-initialised machinery is not counted, ``gc.collect()`` runs before
each RSS reading and ``gc.freeze()`` after the first, and the process ends
with ``os._exit(0)`` once the figure is printed instead of tearing the N
tasks (threads) down.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import threading
from collections.abc import Callable
from typing import Any, Final

from actors import MailboxConfig

from .memory_probe import finish, rss

CAPACITY: Final = MailboxConfig().capacity  # messages; the default mailbox bound
TIMEOUT: Final = 120.0  # seconds the N handled messages may take before it is a hang


class _Handled:
    """Counts handled messages; calls ``all_done`` once ``n`` have been (thread-safe)."""

    def __init__(self, n: int, all_done: Callable[[], None]) -> None:
        self.n = n
        self.count = 0
        self.lock = threading.Lock()
        self.all_done = all_done

    def one(self) -> None:
        with self.lock:
            self.count += 1
            if self.count == self.n:
                self.all_done()


async def _parked(queue: asyncio.Queue[Any], handled: _Handled) -> None:
    while True:
        await queue.get()
        handled.one()


async def measure_asyncio(n: int) -> None:
    tasks: list[Any] = [None] * n
    warm_done = asyncio.Event()
    warm_queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=CAPACITY)
    warm_task = asyncio.create_task(_parked(warm_queue, _Handled(1, warm_done.set)))
    warm_queue.put_nowait(0)
    await warm_done.wait()
    all_done = asyncio.Event()
    handled = _Handled(n, all_done.set)
    before = rss()
    gc.freeze()  # the N creations below do not rescan the start-up heap
    for i in range(n):
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=CAPACITY)
        tasks[i] = asyncio.create_task(_parked(queue, handled))
        queue.put_nowait(i)
    # The last handler parks in ``get`` in the same step as it counts, so
    # "all N handled" is "all N idle" once this task runs again.
    async with asyncio.timeout(TIMEOUT):
        await all_done.wait()
    after = rss()
    if warm_task.done():  # the loop holds tasks weakly: the locals keep them parked
        raise RuntimeError("the warm-up task ended; the measurement is void")
    finish("asyncio", n, before, after)


def measure_pykka(n: int) -> None:
    import pykka

    class Idle(pykka.ThreadingActor):
        def __init__(self, handled: _Handled) -> None:
            super().__init__()
            self.handled = handled

        def on_receive(self, message: Any) -> None:
            self.handled.one()

    refs: list[Any] = [None] * n
    warm_done = threading.Event()
    warm = Idle.start(_Handled(1, warm_done.set))
    warm.tell(0)
    warm_done.wait(TIMEOUT)
    all_done = threading.Event()
    handled = _Handled(n, all_done.set)
    before = rss()
    gc.freeze()  # the N creations below do not rescan the start-up heap
    for i in range(n):
        ref = Idle.start(handled)
        ref.tell(i)
        refs[i] = ref
    if not all_done.wait(TIMEOUT):
        raise RuntimeError(f"only {handled.count} of {n} actors handled their message")
    after = rss()
    finish("pykka", n, before, after)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peers_memory")
    parser.add_argument("--side", choices=("asyncio", "pykka"), required=True)
    parser.add_argument("--actors", type=int, default=100_000)
    args = parser.parse_args(argv)
    if args.side == "asyncio":
        asyncio.run(measure_asyncio(args.actors))
    else:
        measure_pykka(args.actors)
    raise AssertionError("unreachable: the measurement ends the process")


if __name__ == "__main__":
    sys.exit(main())
