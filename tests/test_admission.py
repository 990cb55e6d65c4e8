"""Admission control: past the node's or a channel's bound a send fails at once.

The decision as a pure function, then a node in virtual time whose sends
take a second each on the simulated platform: the bounds refuse without
waiting (``Overloaded``, with when to retry), and take sends again once
the ones in flight are done.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from actors import ChannelStatus
from providers.base import SendResult
from providers.simulated import Fixed, SimulatedProvider
from runtime import Overloaded, open_node
from runtime.admission import MAX_RETRY_AFTER, NODE_RETRY_AFTER, admit
from runtime.errors import error_from_wire, error_to_wire

from .support import CEILING, FAST_CHANNELS, text_to_own_peer, two_simulated_channels

FAST = FAST_CHANNELS


def _admit(**counts: Any) -> None:
    base: dict[str, Any] = {
        "node_id": "n1",
        "channel_id": "wa",
        "idempotency_key": "k",
        "node_sends": 0,
        "node_limit": 100,
        "channel_sends": 0,
        "channel_limit": 10,
        "channel_rate": 80.0,
    }
    admit(**{**base, **counts})


def test_below_both_bounds_a_send_is_admitted() -> None:
    _admit(node_sends=99, channel_sends=9)


@pytest.mark.parametrize(
    ("channel_sends", "channel_limit", "rate", "retry_after"),
    [
        (10, 10, 80.0, 1),  # an eighth of a second of work: retry in a second
        (400, 400, 80.0, 5),  # five seconds of work at 80/s
        (10_000, 10, 30.0, MAX_RETRY_AFTER),  # capped
        (10, 10, 0.0, MAX_RETRY_AFTER),  # a channel that cannot send
    ],
)
def test_a_channel_at_its_bound_says_when_its_backlog_is_sent(
    channel_sends: int, channel_limit: int, rate: float, retry_after: int
) -> None:
    with pytest.raises(Overloaded, match=r"channel 'wa' already holds .*max_channel_sends") as err:
        _admit(channel_sends=channel_sends, channel_limit=channel_limit, channel_rate=rate)
    assert (err.value.scope, err.value.limit, err.value.retry_after) == (
        "channel",
        channel_limit,
        retry_after,
    )
    assert (err.value.channel_id, err.value.idempotency_key) == ("wa", "k")


def test_a_node_at_its_bound_refuses_every_channel() -> None:
    with pytest.raises(Overloaded, match=r"node 'n1' already holds 100 sends") as err:
        _admit(node_sends=100)
    assert (err.value.scope, err.value.limit, err.value.retry_after) == (
        "node",
        100,
        NODE_RETRY_AFTER,
    )


def test_the_refusal_crosses_the_cluster_with_its_details() -> None:
    with pytest.raises(Overloaded) as err:
        _admit(channel_sends=400, channel_limit=400)
    back = error_from_wire(error_to_wire(err.value))
    assert isinstance(back, Overloaded)
    assert (back.scope, back.limit, back.retry_after) == ("channel", 400, 5)
    assert str(back) == str(err.value)


# --- in a node ------------------------------------------------------------------------------


async def test_a_node_refuses_at_once_past_its_bounds_and_takes_sends_again_after(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = SimulatedProvider(latency=Fixed(seconds=1.0))
    results: dict[str, Any] = {}

    async def send(node: Any, channel: str, key: str) -> None:
        try:
            results[key] = await node.send(channel, text_to_own_peer(key))
        except Overloaded as exc:
            results[key] = exc

    config = two_simulated_channels(max_sends_in_flight=5, max_channel_sends=3)
    with trio.fail_after(CEILING):
        async with open_node(
            config, channel_defaults=FAST, providers={"simulated": provider}
        ) as node:
            with node.subscribe(kind="state") as changes:
                while any(s.status is not ChannelStatus.CONNECTED for s in node.channels()):
                    await changes.receive()
            began = trio.current_time()
            async with trio.open_nursery() as nursery:
                for channel, key in [("a", "a1"), ("a", "a2"), ("a", "a3"), ("a", "a4")]:
                    nursery.start_soon(send, node, channel, key)
                    await trio.testing.wait_all_tasks_blocked()
                # a4 found channel a at its bound of 3: refused at once
                assert isinstance(results["a4"], Overloaded)
                assert results["a4"].scope == "channel"
                assert trio.current_time() == began
                for key in ("b1", "b2", "b3"):
                    nursery.start_soon(send, node, "b", key)
                    await trio.testing.wait_all_tasks_blocked()
                # b3 found the node at its bound of 5 (3 on a, 2 on b)
                assert isinstance(results["b3"], Overloaded)
                assert results["b3"].scope == "node"
                assert trio.current_time() == began
            assert trio.current_time() == pytest.approx(began + 1.0)  # the rest went at once
            # with the sends done, there is room again
            assert isinstance(await node.send("a", text_to_own_peer("a5")), SendResult)
            assert node.statistics().sends_in_flight == 0
    accepted = {"a1", "a2", "a3", "b1", "b2"}
    assert all(isinstance(results[key], SendResult) for key in accepted), results
    assert {m.idempotency_key for m in provider.sent} == accepted | {"a5"}
