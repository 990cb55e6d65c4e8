"""The channels bench's load step: every due send goes once, through one
``Node.outbox`` or on a pool of workers awaiting ``Node.send`` (``send_api``).

In virtual time, against a stand-in node: the step is a measuring
instrument, so what it counts must add up (delivered + shed + errors ==
scheduled), including the sends still out when it gives up.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NamedTuple

import pytest
import trio
import trio.testing

from bench.channels import ChannelsParams, StepResult, _load_step
from runtime.outbox import Sent

Send = Callable[[str, Any], Awaitable[None]]


class _Quiet:
    def phase(self, *args: Any, **kwargs: Any) -> None:
        pass

    def update(self, *args: Any, **kwargs: Any) -> None:
        pass

    def note(self, *args: Any, **kwargs: Any) -> None:
        pass


class _Context:
    def __init__(self, budget: float) -> None:
        self.progress = _Quiet()
        self.budget = budget

    def remaining(self) -> float:
        return self.budget


def _statistics(*readings: tuple[dict[str, int], float]) -> Callable[[], Any]:
    """A stand-in node's statistics: its refusals so far and its loop lag, one reading a call."""
    left = iter(readings)

    def statistics() -> Any:
        refused, lag = next(left)
        return types.SimpleNamespace(sends_refused=refused, loop_lag=lag)

    return statistics


class _Message(NamedTuple):
    i: int
    idempotency_key: str


class _Outbox:
    """A stand-in node's outbox: each send runs the stand-in ``send`` in a task."""

    def __init__(self, nursery: trio.Nursery, send: Send, on_sent: Callable[[Sent], Any]) -> None:
        self._nursery = nursery
        self._send = send
        self._on_sent = on_sent

    def send(self, channel: str, message: Any) -> None:
        self._nursery.start_soon(self._run, channel, message)

    async def _run(self, channel: str, message: Any) -> None:
        try:
            await self._send(channel, message)
        except Exception as exc:
            self._on_sent(Sent(channel, message, None, exc, trio.current_time()))
        else:
            self._on_sent(Sent(channel, message, None, None, trio.current_time()))


def _outbox_of(send: Send) -> Callable[..., contextlib.AbstractAsyncContextManager[_Outbox]]:
    @contextlib.asynccontextmanager
    async def outbox(*, on_sent: Callable[[Sent], Any]) -> AsyncIterator[_Outbox]:
        async with trio.open_nursery() as nursery:
            yield _Outbox(nursery, send, on_sent)

    return outbox


@pytest.fixture(params=["outbox", "send"])
def send_api(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def _step(
    send: Send,
    send_api: str,
    *,
    max_in_flight: int = 10_000,
    budget: float = 5.0,
    statistics: Callable[[], Any] | None = None,
) -> StepResult:
    rig = types.SimpleNamespace(
        channel_ids=[f"ch{i}" for i in range(4)],
        message=lambda i, key, text: _Message(i, key),
        node=types.SimpleNamespace(
            send=send,
            outbox=_outbox_of(send),
            statistics=statistics or _statistics(({}, 0.0), ({}, 0.0)),
        ),
        emulator=None,
        states=types.SimpleNamespace(connected=4),
    )
    params = ChannelsParams(duration=1.0, max_in_flight=max_in_flight, send_api=send_api)
    return await _load_step(rig, params, 1000.0, _Context(budget))  # type: ignore[arg-type]


# The stand-in node answers after a while of virtual time (the autojump clock).


async def test_every_due_send_goes_once(
    autojump_clock: trio.testing.MockClock, send_api: str
) -> None:
    seen: list[int] = []

    async def send(channel: str, message: Any) -> None:
        seen.append(message[0])
        await trio.sleep(0.05 + (message[0] % 7) * 0.01)

    result = await _step(send, send_api)
    assert result.scheduled == 1000
    assert sorted(seen) == list(range(1000))
    assert result.ok == 1000 and result.shed == 0 and not result.errors


async def test_past_the_bound_sends_are_shed_and_counted(
    autojump_clock: trio.testing.MockClock, send_api: str
) -> None:
    async def send(channel: str, message: Any) -> None:
        await trio.sleep(0.5)

    result = await _step(send, send_api, max_in_flight=50)
    assert result.shed > 0
    assert result.ok + result.shed + sum(result.errors.values()) == result.scheduled == 1000


async def test_sends_still_out_when_the_step_gives_up_are_counted(
    autojump_clock: trio.testing.MockClock, send_api: str
) -> None:
    async def send(channel: str, message: Any) -> None:
        if message[0] % 2:
            await trio.sleep_forever()  # the node never answers these
        await trio.sleep(0.01)

    result = await _step(send, send_api, budget=2.0)
    assert result.ok == 500
    assert result.errors["unfinished at the step's deadline"] == 500


async def test_the_step_reports_what_the_node_refused_in_it_and_its_loop_lag(
    autojump_clock: trio.testing.MockClock, send_api: str
) -> None:
    async def send(channel: str, message: Any) -> None:
        await trio.lowlevel.checkpoint()

    statistics = _statistics(
        ({"loop": 2, "channel": 1}, 0.0),  # before the step: not its own
        ({"loop": 7, "channel": 1, "node": 3}, 0.4),
    )
    result = await _step(send, send_api, statistics=statistics)
    assert result.refused == {"loop": 5, "node": 3}
    assert result.loop_lag == 0.4
