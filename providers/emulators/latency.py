"""Latency: a far end that answers a round trip later, as a platform 50-300 ms away does.

Design: loopback hides what a real round trip costs a client (one request
in flight caps it at 1/RTT per second), so an emulator can hold back its
answers. With a latency of ``L`` seconds, every answer to something a
client sent leaves the emulator ``L`` seconds after it was ready: the whole
round trip is put on the way back, which a client that waits for answers
cannot tell from half each way. What is held back:

- an HTTP response of a platform route (the status line, then the body as
  the route writes it), and a websocket upgrade's answer (the acceptance,
  or a refusal), by :func:`latency_middleware` in front of the platform's
  routes: ``await trio.sleep(L)`` in the request's own task, which the
  server runs anyway, so no task is added;
- on the generic websocket platform, each frame that answers a client's
  frame (``ack``, ``receipt``, ``error``), by a :class:`HeldAnswers` per
  connection: one FIFO drained by one task, started at the connection's
  first held answer, so no task or timer per message. A fixed latency
  keeps the FIFO in due order; after a change, answers keep their order
  (a shorter latency takes effect behind the answers already held).

Not held back: what the platform sends on its own (heartbeats, injected
messages, dispatches, webhooks, closes), and the control API
(``/_emulator/``), which is the rig's and not the platform's.

Set it with ``POST /_emulator/fault {"kind": "latency", "seconds": 0.15}``
(``0`` turns it off), ``switchboard emulate --rtt MS`` or
:attr:`Emulator.latency <providers.emulators.base.Emulator.latency>`.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import Any, Final, Generic, TypeVar

import trio

from .http_faults import CONTROL_PREFIX, App, Receive, Scope, Send

__all__ = ["MAX_LATENCY", "HeldAnswers", "checked_latency", "latency_middleware"]

MAX_LATENCY: Final = 60.0  # seconds: far beyond any real round trip, short of a hang
# The first message of an answer: a response, an acceptance or a refusal of an upgrade.
HELD_TYPES: Final = frozenset(
    {
        "http.response.start",
        "websocket.accept",
        "websocket.close",
        "websocket.http.response.start",
    }
)

T = TypeVar("T")


def checked_latency(value: Any, where: str) -> float:
    """``value`` as a latency in seconds: a number within 0..:data:`MAX_LATENCY`.

    Args:
        value: what was given.
        where: where it was given, for the message (``"POST /_emulator/fault latency
            'seconds'"``, ``"--rtt"``).

    Raises:
        ValueError: not a number, not finite, negative or above the maximum.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where}: a latency is a number of seconds, not {value!r}")
    if not math.isfinite(value) or not 0 <= value <= MAX_LATENCY:
        raise ValueError(
            f"{where}: a latency is within 0..{MAX_LATENCY:g} seconds (0 turns it off), "
            f"not {value!r}"
        )
    return float(value)


def latency_middleware(app: App, latency: Callable[[], float]) -> App:
    """``app`` whose answers (see the module docstring) wait ``latency()`` seconds.

    ``latency`` is read at each request, so a change applies to the next one.
    At 0 the request goes to ``app`` untouched.
    """

    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        delay = latency()
        if (
            delay <= 0
            or scope.get("type") not in ("http", "websocket")
            or scope.get("path", "").startswith(CONTROL_PREFIX)
        ):
            await app(scope, receive, send)
            return
        held = True

        async def held_send(message: Any) -> None:
            nonlocal held
            if held and message.get("type") in HELD_TYPES:
                held = False  # the answer's first message waits; what follows it does not
                await trio.sleep(delay)
            await send(message)

        await app(scope, receive, held_send)

    return serve


class HeldAnswers(Generic[T]):
    """Answers of one connection held until due, in order, drained by one task.

    Args:
        deliver: hands an answer on when it is due (to the connection's writer).

    Usage: :meth:`hold` from anywhere in the connection's trio loop; :meth:`run`
    in a task of the connection's nursery (it runs until cancelled).
    """

    def __init__(self, deliver: Callable[[T], None]) -> None:
        self._deliver = deliver
        self._held: deque[tuple[float, T]] = deque()
        self._waiting = trio.lowlevel.ParkingLot()

    def __repr__(self) -> str:
        return f"<HeldAnswers held={len(self._held)}>"

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, answer: T, due: float) -> None:
        """Deliver ``answer`` at trio time ``due`` (after every answer held before it)."""
        self._held.append((due, answer))
        if len(self._held) == 1:
            self._waiting.unpark()  # the drainer waits for a first answer, if at all

    async def run(self) -> None:
        """Deliver held answers as they fall due, until cancelled."""
        held = self._held
        while True:
            if not held:
                await self._waiting.park()
                continue
            await trio.sleep_until(held[0][0])
            now = trio.current_time()
            while held and held[0][0] <= now:
                self._deliver(held.popleft()[1])
