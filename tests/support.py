"""Helpers shared by the tests."""

from __future__ import annotations

import contextlib
import math
import random
import subprocess
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import httpx
import trio
import trio.testing
from websockets.client import ClientProtocol
from websockets.protocol import State
from websockets.uri import parse_uri

from actors import ChannelSettings, ExponentialBackoff
from providers.base import OutboundMessage
from runtime import Outbox, Sent, parse_config
from runtime.config import NodeConfig

CEILING: Final = 60.0  # virtual seconds; only a hang gets near it
# A channel that reconnects and retries within a fraction of a (virtual) second.
FAST_CHANNELS: Final = ChannelSettings(
    reconnect=ExponentialBackoff(base=0.05, cap=0.2),
    send_backoff=ExponentialBackoff(base=0.01, cap=0.05),
    connect_wait=5.0,
)


class MidwayJitter(random.Random):
    """Every draw at the middle of its range: a Discord core's first heartbeat half
    an interval after Hello, an op 9 delay midway between its bounds.

    A core left its own unseeded generator draws its first heartbeat anywhere in
    ``[0, interval)``: an assertion on ``next_deadline()`` (the earliest of the
    heartbeat and every other deadline) then fails whenever the draw lands the
    beat before the deadline the test means (1 run in 50 for a 20 s deadline
    and a 1000 s interval).
    """

    def random(self) -> float:
        return 0.5

    def uniform(self, a: float, b: float) -> float:
        return (a + b) / 2


async def yield_until(condition: Callable[[], bool], *, steps: int = 1_000) -> None:
    """Yield to other tasks, without letting time pass, until ``condition()``.

    Bounded: a busy loop of ``sleep(0)`` never lets the autojump clock reach a
    ``fail_after`` deadline, so an unbounded one would hang instead of failing.
    """
    for _ in range(steps):
        if condition():
            return
        await trio.lowlevel.checkpoint()
    raise AssertionError(f"still not true after {steps} scheduling rounds")


async def emulator_call(
    base_url: str,
    path: str,
    payload: dict[str, Any] | None = None,
    *,
    http: httpx.AsyncClient | None = None,
) -> httpx.Response:
    """Call an emulator's control API: ``GET /_emulator/<path>``, or POST ``payload``.

    Args:
        base_url: the emulator's URL.
        path: ``inject``, ``fault``, ``sent``, ``stats``...
        payload: the JSON body to POST; ``None`` for a GET.
        http: a client to use (default: a new one for this call).

    Returns:
        The answer, whatever its status.
    """
    if http is None:
        async with httpx.AsyncClient() as client:
            return await emulator_call(base_url, path, payload, http=client)
    url = f"{base_url.rstrip('/')}/_emulator/{path}"
    if payload is None:
        return await http.get(url)
    return await http.post(url, json=payload)


async def hang_up_mid_request(base_url: str, path: str, *, times: int) -> None:
    """Send the headers of a POST with a 100-byte body, then hang up: ``times`` connections.

    A server that answers on the headers alone (a refusal) is then closing the
    connection just as its reader sees the client go: hypercorn's race
    (:mod:`providers.serving`), which before the fix ended the server about
    one connection in four.
    """
    host, _, port = base_url.removeprefix("http://").rstrip("/").rpartition(":")
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 100\r\n\r\n".encode()
    for _ in range(times):
        stream = await trio.open_tcp_stream(host, int(port))
        await stream.send_all(head)
        await stream.aclose()


async def control(base_url: str, path: str, payload: dict[str, Any] | None = None) -> Any:
    """:func:`emulator_call` that must succeed: its JSON answer.

    Raises:
        httpx.HTTPStatusError: the emulator refused the call.
    """
    response = await emulator_call(base_url, path, payload)
    response.raise_for_status()
    return response.json()


class ClockWindow:
    """The trio clock just before and just after a call to an in-process emulator.

    An emulator served by the test's own trio loop reads the same clock at
    some moment in between, so a time it derives from that reading (what is
    left of a rate-limit period, say) lies between the same derivation from
    :attr:`opened` and :attr:`closed`. These are exact bounds whatever the
    machine's load, not a measurement of how long the call took.
    """

    def __init__(self) -> None:
        self.opened = trio.current_time()
        self.closed = math.inf  # until the window closes

    def remaining(self, until: float) -> tuple[float, float]:
        """The least and the most of ``until - now`` the emulator can have seen."""
        return until - self.closed, until - self.opened


@contextmanager
def clock_window() -> Iterator[ClockWindow]:
    """A :class:`ClockWindow` around the block."""
    window = ClockWindow()
    try:
        yield window
    finally:
        window.closed = trio.current_time()


@contextmanager
def real_time_ceiling(clock: trio.testing.MockClock, seconds: float) -> Iterator[None]:
    """A hang guard for a test on a clock that stands still (``MockClock()``, rate 0).

    Real sockets work on such a clock and no timer ever fires, so a test can
    show that something finishes without waiting on any timer. Its
    ``fail_after`` cannot fire either: after ``seconds`` of real time this
    moves the clock far past every deadline, so a hang fails the test.
    """
    token = trio.lowlevel.current_trio_token()

    def jump() -> None:
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(clock.jump, 10 * seconds)

    timer = threading.Timer(seconds, jump)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def self_signed_certificate(directory: Path, name: str) -> tuple[Path, Path]:
    """A certificate and key for 127.0.0.1 in ``directory`` (``<name>.crt``, ``<name>.key``)."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


async def record_outcome(results: dict[Any, Any], key: Any, call: Awaitable[Any]) -> None:
    """Await ``call`` and put what it returned, or the exception it raised, in ``results[key]``."""
    try:
        results[key] = await call
    except Exception as exc:
        results[key] = exc


def open_client_protocol() -> ClientProtocol:
    """A websockets client protocol past its handshake, for a ``WebSocketLink`` built by hand."""
    return ClientProtocol(parse_uri("ws://test/ws"), state=State.OPEN)


def two_simulated_channels(**node: Any) -> NodeConfig:
    """A node with simulated channels ``a`` and ``b``, limits off, no ops listener.

    ``node``: keys of its ``[node]`` (``max_sends_in_flight = 5``, say).
    """
    return parse_config(
        {
            "node": {"id": "n1", "drain_deadline": 10.0, "start_timeout": 1.0, **node},
            "ops": {"enabled": False},
            "providers": {"simulated": {"rate_limit": {"enabled": False}}},
            "channels": [
                {"id": "a", "provider": "simulated"},
                {"id": "b", "provider": "simulated"},
            ],
        }
    )


def text_to_own_peer(key: str) -> OutboundMessage:
    """A text with idempotency key ``key``, to a recipient of its own."""
    return OutboundMessage(peer=f"peer-{key}", idempotency_key=key, text="hi")


def telegram_me() -> httpx.Response:
    """A Bot API answer to ``getMe``: a bot named ``b_bot`` (a fake Telegram's connect)."""
    me = {"id": 1, "is_bot": True, "first_name": "b", "username": "b_bot"}
    return httpx.Response(200, json={"ok": True, "result": me})


def sent_key(sent: Sent) -> str:
    """An outbox outcome's idempotency key."""
    return str(sent.message.idempotency_key)


def sent_outcome(sent: Sent) -> Any:
    """An outbox outcome as ``node.send`` ends: its result, or its error."""
    return sent.result if sent.ok else sent.error


async def all_outcomes(outbox: Outbox) -> list[Sent]:
    """Close ``outbox`` and take every outcome, in the order they came."""
    outbox.close()
    return [sent async for sent in outbox]


class _Stepped(trio.abc.Instrument):
    """Sets ``ran`` once a task other than ``waiter`` has taken a step."""

    def __init__(self, waiter: trio.lowlevel.Task) -> None:
        self.waiter = waiter
        self.ran = trio.Event()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is not self.waiter:
            self.ran.set()


async def until_moved(condition: Callable[[], bool]) -> None:
    """Until ``condition()`` holds, looked at again each time another task has run.

    For state that other tasks move on their own (nodes answering each other
    through Redis, in real time): no time is waited for its own sake, so the
    wait lasts exactly as long as the work does; the caller's ``fail_after``
    catches a hang.
    """
    me = trio.lowlevel.current_task()
    while not condition():
        stepped = _Stepped(me)
        trio.lowlevel.add_instrument(stepped)
        try:
            await stepped.ran.wait()
        finally:
            trio.lowlevel.remove_instrument(stepped)
