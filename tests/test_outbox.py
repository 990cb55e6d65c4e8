"""Node.outbox: many sends in flight from one task, no task waiting on each.

Each send's outcome is what ``node.send`` would have returned or raised:
compared side by side on a simulated platform in virtual time (a refusal,
a timeout, a repeated key, a key on its way, the drain), and against the
websocket emulator over real sockets (hang ceiling only) for the claim
that matters: no task per send, and per-peer order kept.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
import trio.testing

from providers.base import SendResult
from providers.simulated import Fixed, SimulatedProvider
from runtime import (
    AskTimeout,
    InvalidMessage,
    MessageTooLong,
    NodeDraining,
    Overloaded,
    Sent,
    UnknownChannel,
    open_node,
    parse_config,
)
from runtime.config import StorageConfig
from runtime.store import open_store

from .support import CEILING
from .support import all_outcomes as _all
from .support import sent_key as _key
from .test_node_embedded import FAST, message, node_config, sim, wait_connected


async def test_each_outcome_is_what_node_send_gives(autojump_clock: trio.testing.MockClock) -> None:
    provider = SimulatedProvider(latency=Fixed(seconds=1.0))
    config = node_config([sim("a"), sim("b")])
    with trio.fail_after(CEILING):
        async with open_node(
            config, channel_defaults=FAST, providers={"simulated": provider}
        ) as node:
            await wait_connected(node, 2)
            long = "x" * 1_000_000
            with pytest.raises(MessageTooLong) as refused:
                await node.send("a", message("long-1", text=long))
            began = trio.current_time()
            async with node.outbox() as outbox:
                for i in range(5):
                    outbox.send("a", message(f"a{i}", peer=f"p{i}"))
                    outbox.send("b", message(f"b{i}", peer=f"p{i}"))
                outbox.send("a", message("long-2", text=long))
                outcomes = await _all(outbox)
            # Ten sends to ten peers took one round trip, from this one task.
            assert trio.current_time() == pytest.approx(began + 1.0)
            by_key = {_key(sent): sent for sent in outcomes}
            assert set(by_key) == {f"{c}{i}" for c in "ab" for i in range(5)} | {"long-2"}
            assert outcomes[0] is by_key["long-2"]  # refused before it went: at once
            error = by_key["long-2"].error
            assert type(error) is type(refused.value)
            assert str(error) == str(refused.value)
            assert not by_key["long-2"].ok and by_key["long-2"].result is None
            for key in (f"{c}{i}" for c in "ab" for i in range(5)):
                sent = by_key[key]
                assert sent.ok and isinstance(sent.result, SendResult), sent
                assert sent.at == pytest.approx(began + 1.0)
            assert {m.idempotency_key for m in provider.sent} == set(by_key) - {"long-2"}
            assert node.statistics().sends_in_flight == 0


async def test_a_send_past_its_timeout_fails_as_node_send_does(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = SimulatedProvider(latency=Fixed(seconds=5.0))
    with trio.fail_after(CEILING):
        async with open_node(
            node_config([sim("a")]), channel_defaults=FAST, providers={"simulated": provider}
        ) as node:
            await wait_connected(node, 1)
            with pytest.raises(AskTimeout) as timed_out:
                await node.send("a", message("t1"), timeout=2.0)
            began = trio.current_time()
            async with node.outbox(timeout=2.0) as outbox:
                outbox.send("a", message("t2"))
                (sent,) = await _all(outbox)
            assert trio.current_time() == pytest.approx(began + 2.0)
            assert type(sent.error) is AskTimeout
            assert str(sent.error).replace("t2", "t1") == str(timed_out.value)
            assert sent.error.__cause__ is not None
            assert node.statistics().sends_in_flight == 0


async def test_a_repeated_key_is_answered_at_once_and_one_on_its_way_after_the_first(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = SimulatedProvider(latency=Fixed(seconds=1.0))
    with trio.fail_after(CEILING):
        async with open_node(
            node_config([sim("a")]), channel_defaults=FAST, providers={"simulated": provider}
        ) as node:
            await wait_connected(node, 1)
            first = await node.send("a", message("done"))
            began = trio.current_time()
            async with node.outbox() as outbox:
                outbox.send("a", message("done"))  # answered: at once, not sent again
                outbox.send("a", message("twice", peer="q"))
                outbox.send("a", message("twice", peer="q"))  # on its way: waits for it
                outcomes = await _all(outbox)
            assert [_key(sent) for sent in outcomes] == ["done", "twice", "twice"]
            assert outcomes[0].result == first
            assert outcomes[0].at == began
            assert outcomes[1].result == outcomes[2].result
            assert [m.idempotency_key for m in provider.sent] == ["done", "twice"]


async def test_what_refuses_a_send_at_once_is_raised_by_send_and_nothing_goes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = SimulatedProvider(latency=Fixed(seconds=1.0))
    config = node_config([sim("a")], node={"id": "t", "max_sends_in_flight": 2})
    with trio.fail_after(CEILING):
        async with open_node(
            config, channel_defaults=FAST, providers={"simulated": provider}
        ) as node:
            await wait_connected(node, 1)
            async with node.outbox() as outbox:
                outbox.send("a", message("k1"))
                outbox.send("a", message("k2", peer="p2"))
                with pytest.raises(Overloaded) as overloaded:
                    outbox.send("a", message("k3", peer="p3"))
                assert overloaded.value.scope == "node"
                with pytest.raises(UnknownChannel):
                    outbox.send("nope", message("k4"))
                with pytest.raises(InvalidMessage):
                    outbox.send("a", message("k5", text="\x00"))
                with pytest.raises(TypeError, match="channel_id"):
                    outbox.send(b"a", message("k6"))  # type: ignore[arg-type]
                assert outbox.outstanding == 2
                outcomes = await _all(outbox)
                with pytest.raises(RuntimeError, match="closed"):
                    outbox.send("a", message("k7"))
            assert sorted(_key(sent) for sent in outcomes) == ["k1", "k2"]
            assert all(sent.ok for sent in outcomes)
            assert sorted(m.idempotency_key for m in provider.sent) == ["k1", "k2"]


async def test_the_drain_keeps_what_is_still_out_and_says_so(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = SimulatedProvider(latency=Fixed(seconds=1.0))
    config = node_config([sim("a")], node={"id": "t", "drain_deadline": 4.5, "start_timeout": 1.0})
    outcomes: list[Sent] = []
    with trio.fail_after(CEILING):
        async with open_store(StorageConfig()) as store:
            async with open_node(
                config, store=store, channel_defaults=FAST, providers={"simulated": provider}
            ) as node:
                await wait_connected(node, 1)
                async with node.outbox(on_sent=outcomes.append) as outbox:
                    for i in range(10):  # one peer: one at a time, a second each
                        outbox.send("a", message(f"k{i}"))
                    report = await node.drain()
            kept_keys = {item.message.idempotency_key for item in report.kept}
            sent_keys = {m.idempotency_key for m in provider.sent}
    assert len(sent_keys) == 4  # as for node.send (tests/test_node_embedded.py)
    assert sent_keys | kept_keys == {f"k{i}" for i in range(10)}
    assert len(outcomes) == 10
    for sent in outcomes:
        if _key(sent) in kept_keys:
            assert isinstance(sent.error, NodeDraining), sent
            assert "kept for the next start" in str(sent.error)
        else:
            assert sent.ok, sent


async def test_sends_go_on_in_the_node_when_the_block_is_left_under_an_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = SimulatedProvider(latency=Fixed(seconds=1.0))
    with trio.fail_after(CEILING):
        async with open_node(
            node_config([sim("a")]), channel_defaults=FAST, providers={"simulated": provider}
        ) as node:
            await wait_connected(node, 1)
            heard: list[Sent] = []
            with pytest.raises(KeyError):
                async with node.outbox(on_sent=heard.append) as outbox:
                    for i in range(3):
                        outbox.send("a", message(f"k{i}", peer=f"p{i}"))
                    raise KeyError("the caller's own error")
            assert node.statistics().sends_in_flight == 3
            await node.send("a", message("after", peer="p-after"))  # ends after the three
            assert node.statistics().sends_in_flight == 0
            assert heard == []  # nobody listens any more
            assert sorted(m.idempotency_key for m in provider.sent) == ["after", "k0", "k1", "k2"]


async def test_an_on_sent_that_raises_is_logged_and_the_rest_are_heard(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    provider = SimulatedProvider(latency=Fixed(seconds=1.0))
    heard: list[str] = []

    def on_sent(sent: Sent) -> None:
        heard.append(_key(sent))
        if _key(sent) == "k1":
            raise ValueError("the caller's bug")

    with trio.fail_after(CEILING):
        async with open_node(
            node_config([sim("a")]), channel_defaults=FAST, providers={"simulated": provider}
        ) as node:
            await wait_connected(node, 1)
            with caplog.at_level(logging.ERROR, logger="switchboard.outbox"):
                async with node.outbox(on_sent=on_sent) as outbox:
                    for i in range(3):
                        outbox.send("a", message(f"k{i}", peer=f"p{i}"))
                with pytest.raises(RuntimeError, match="on_sent"):
                    await outbox.__anext__()
    assert sorted(heard) == ["k0", "k1", "k2"]
    assert [r.getMessage() for r in caplog.records if r.name == "switchboard.outbox"] == [
        "an outbox's on_sent raised on <Sent channel='a' key='k1' ok>; the outcome is dropped"
    ]


# --- over real sockets ---------------------------------------------------------------------


class Spawned(trio.abc.Instrument):
    def __init__(self) -> None:
        self.names: list[str] = []

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.names.append(task.name)


async def test_a_websocket_channel_s_sends_take_no_task_each_and_keep_each_peer_s_order() -> None:
    config = parse_config(
        {
            "node": {"id": "n1", "start_timeout": 5.0},
            "ops": {"enabled": False},
            "providers": {"websocket": {"rate_limit": {"enabled": False}}},
            "emulators": {"websocket": {}},
            "channels": [{"id": "w", "provider": "websocket", "emulator": True}],
        }
    )
    count = 200
    spawned = Spawned()
    results: list[Any] = []
    with trio.fail_after(30):
        async with open_node(config, channel_defaults=FAST) as node:
            await wait_connected(node, 1)
            await node.send("w", message("warm"))  # the first send's one-time making
            trio.lowlevel.add_instrument(spawned)
            try:
                async with node.outbox() as outbox:
                    for i in range(count):
                        outbox.send("w", message(f"k{i}", text=f"m{i}", peer=f"p{i % 4}"))
                    outbox.close()
                    async for sent in outbox:
                        results.append(sent)
            finally:
                trio.lowlevel.remove_instrument(spawned)
            assert node.emulators is not None
            emulator = node.emulators.emulators["websocket"]
            delivered = [item["text"] for item in emulator.sent]  # type: ignore[attr-defined]
    assert all(sent.ok for sent in results), [s for s in results if not s.ok][:3]
    assert len({sent.result.platform_message_id for sent in results}) == count  # type: ignore[union-attr]
    for peer in range(4):
        mine = [f"m{i}" for i in range(count) if i % 4 == peer]
        assert [text for text in delivered if text in set(mine)] == mine
    # No task for any send: the few spawned are the node's own (a checkpoint, a flush).
    assert not [name for name in spawned.names if "_fly" in name or "_send_in_task" in name]
    assert len(spawned.names) < 10, spawned.names


async def test_on_sent_may_send_again_and_each_peer_s_order_holds() -> None:
    """A closed loop driven from ``on_sent``: each answer starts the next send
    to its peer, and every peer's messages arrive in the order they were sent."""
    config = parse_config(
        {
            "node": {"id": "n1", "start_timeout": 5.0},
            "ops": {"enabled": False},
            "providers": {"websocket": {"rate_limit": {"enabled": False}}},
            "emulators": {"websocket": {}},
            "channels": [{"id": "w", "provider": "websocket", "emulator": True}],
        }
    )
    rounds, peers = 25, 3
    heard: list[Sent] = []
    with trio.fail_after(30):
        async with open_node(config, channel_defaults=FAST) as node:
            await wait_connected(node, 1)

            finished = trio.Event()

            def on_sent(sent: Sent) -> None:
                heard.append(sent)
                if len(heard) == rounds * peers:
                    finished.set()
                peer, _, n = _key(sent).rpartition("-")
                if int(n) + 1 < rounds:
                    after = int(n) + 1
                    outbox.send("w", message(f"{peer}-{after}", text=f"{peer}-{after}", peer=peer))

            async with node.outbox(on_sent=on_sent) as outbox:
                for peer in range(peers):
                    outbox.send("w", message(f"p{peer}-0", text=f"p{peer}-0", peer=f"p{peer}"))
                await finished.wait()  # (a block that ended would close the outbox)
            assert node.emulators is not None
            emulator = node.emulators.emulators["websocket"]
            delivered = [item["text"] for item in emulator.sent]  # type: ignore[attr-defined]
    assert all(sent.ok for sent in heard), [s for s in heard if not s.ok][:3]
    assert len(heard) == rounds * peers
    for peer in range(peers):
        assert [t for t in delivered if t.startswith(f"p{peer}-")] == [
            f"p{peer}-{n}" for n in range(rounds)
        ]
