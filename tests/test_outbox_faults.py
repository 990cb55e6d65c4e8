"""Node.outbox under faults, each outcome compared with ``node.send``'s.

The contract (runtime/outbox.py): each send's outcome is what ``await
node.send(...)`` would have returned or raised in the same situation; what
refuses a send at once is raised by ``outbox.send`` and nothing was sent;
sends are tracked, bounded by the timeout and drained (kept) like
``node.send``'s; a block left under an error leaves its sends going on in
the node (tracked, bounded, drained), their outcomes unheard. Virtual time
and the simulated platform, as tests/test_outbox.py.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
from typing import Any

import pytest
import trio
import trio.testing

from providers.base import SendResult
from providers.simulated import Fixed, SimulatedProvider
from runtime import (
    AskTimeout,
    KeyReused,
    NodeDraining,
    Outbox,
    Sent,
    open_node,
)
from runtime.config import StorageConfig
from runtime.store import open_store

from .support import CEILING, record_outcome
from .support import all_outcomes as _all
from .support import sent_key as _key
from .support import sent_outcome as _outcome
from .test_node_embedded import FAST, message, node_config, sim, wait_connected

# --- the drain, after the block was left under an error ------------------------------------


async def _drain_after(*, abandon: bool) -> tuple[set[str], set[str], dict[str, Any]]:
    """Ten sends to one peer (a second each) through an outbox, a drain of
    4.5 s (after the block, left under an error, if ``abandon``): what was
    sent, what was kept, and what ``on_sent`` heard."""
    provider = SimulatedProvider(latency=Fixed(seconds=1.0))
    config = node_config([sim("a")], node={"id": "t", "drain_deadline": 4.5, "start_timeout": 1.0})
    heard: dict[str, Any] = {}
    keys = [f"k{i}" for i in range(10)]
    with trio.fail_after(CEILING):
        async with open_store(StorageConfig()) as store:
            async with open_node(
                config, store=store, channel_defaults=FAST, providers={"simulated": provider}
            ) as node:
                await wait_connected(node, 1)
                with pytest.raises(KeyError) if abandon else contextlib.nullcontext():
                    async with node.outbox(
                        on_sent=lambda sent: heard.__setitem__(_key(sent), _outcome(sent))
                    ) as outbox:
                        for key in keys:
                            outbox.send("a", message(key))
                        if abandon:
                            raise KeyError("the caller's own error")
                        report = await node.drain()
                if abandon:
                    assert node.statistics().sends_in_flight == 10
                    report = await node.drain()
            kept = {item.message.idempotency_key for item in report.kept}
            stored = {item.message.idempotency_key for item in await store.read_outbound()}
            assert kept == stored
    return {m.idempotency_key for m in provider.sent}, kept, heard


async def test_a_drain_after_the_block_was_left_under_an_error_keeps_its_sends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The contract: a block left under an error leaves its sends "going on in
    the node (tracked, bounded, drained)". ``node.send``'s sends, and an open
    outbox's, are kept by the drain: of ten sends to one peer, four go and six
    are kept. The abandoned outbox's six are neither sent nor kept: each cut
    send's ask fails as its channel stops, ``_answered_soon`` cannot spawn
    ``_kept_soon`` (the outbox is gone) and calls ``_end_send`` at once, so
    the Pending is ``done`` before ``_keep_leftovers`` looks, which skips it:
    six accepted messages silently lost.
    """
    sent, kept, heard = await _drain_after(abandon=False)
    assert len(sent) == 4 and len(kept) == 6 and sent | kept == {f"k{i}" for i in range(10)}
    assert all(isinstance(heard[key], NodeDraining) for key in kept)
    sent, kept, heard = await _drain_after(abandon=True)
    assert heard == {}
    assert sent | kept == {f"k{i}" for i in range(10)}, (sorted(sent), sorted(kept))


# --- a key reused for another message while the first is on its way -----------------------


async def test_a_key_on_its_way_reused_for_another_message_is_refused_by_send(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``node.send`` of a key whose send is still on its way, with another
    message, raises ``KeyReused`` at once (``_after_first`` compares the
    prints before it waits for anything) and nothing is sent. The contract
    says what refuses a send at once is raised by ``outbox.send`` (its
    docstring lists ``KeyReused``) and nothing was sent. The outbox instead
    returns normally, starts a task (``_send_in_task``), and reports the
    refusal later as a ``Sent``: the caller cannot tell "refused, nothing
    sent" from a send that failed on the way.
    """
    provider = SimulatedProvider(latency=Fixed(seconds=1.0))
    with trio.fail_after(CEILING):
        async with open_node(
            node_config([sim("a")]), channel_defaults=FAST, providers={"simulated": provider}
        ) as node:
            await wait_connected(node, 1)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(node.send, "a", message("k", text="first"))
                await trio.testing.wait_all_tasks_blocked()
                began = trio.current_time()
                with pytest.raises(KeyReused):
                    await node.send("a", message("k", text="second"))
                assert trio.current_time() == began  # at once
            async with node.outbox() as outbox:
                outbox.send("a", message("j", text="first"))
                with pytest.raises(KeyReused):
                    outbox.send("a", message("j", text="second"))
                assert outbox.outstanding == 1
                await _all(outbox)
    assert [m.text for m in provider.sent] == ["first", "first"]


# --- the channel stopped or its actor killed while sends are out ---------------------------


async def _outcomes_when(
    fault: str, *, through_outbox: bool, window: int | None, count: int = 6
) -> tuple[dict[str, Any], list[str], int]:
    """``count`` sends to two peers (2 s each), then ``fault`` once all are out:
    what each caller heard, what the platform took, sends left in flight.
    ``window``: the channel's send window (2: most wait in its mailbox)."""
    provider = SimulatedProvider(latency=Fixed(seconds=2.0))
    heard: dict[str, Any] = {}
    keys = [f"k{i}" for i in range(count)]
    spec = sim("a") if window is None else {**sim("a"), "send_window": window}
    with trio.fail_after(CEILING):
        async with open_node(
            node_config([spec, sim("b")]),
            channel_defaults=FAST,
            providers={"simulated": provider},
        ) as node:
            await wait_connected(node, 2)

            async def fault_now() -> None:
                if fault == "stop":
                    await node.stop_channel("a")
                elif fault == "restart":
                    await node.restart_channel("a")
                elif fault == "kill":
                    with node.subscribe(kind="state") as changes:
                        node.channel("a").ref.kill()
                        while True:
                            event = await changes.receive()
                            if event.channel_id == "a" and event.event.status.name == "CONNECTED":
                                break
                else:
                    raise AssertionError(fault)

            if through_outbox:
                async with node.outbox() as outbox:
                    for i, key in enumerate(keys):
                        outbox.send("a", message(key, peer=f"p{i % 2}"))
                    await trio.testing.wait_all_tasks_blocked()
                    await fault_now()
                    for sent in await _all(outbox):
                        heard[_key(sent)] = _outcome(sent)
            else:
                async with trio.open_nursery() as nursery:
                    for i, key in enumerate(keys):
                        send = node.send("a", message(key, peer=f"p{i % 2}"))
                        nursery.start_soon(record_outcome, heard, key, send)
                        await trio.testing.wait_all_tasks_blocked()
                    await fault_now()
            left = node.statistics().sends_in_flight
    return heard, [m.idempotency_key for m in provider.sent], left


def _shape(heard: dict[str, Any]) -> dict[str, str]:
    return {
        key: ("ok" if isinstance(value, SendResult) else f"{type(value).__name__}")
        for key, value in heard.items()
    }


@pytest.mark.parametrize("window", [None, 2])
@pytest.mark.parametrize("fault", ["stop", "kill", "restart"])
async def test_a_channel_stopped_or_killed_under_its_sends_answers_each_as_node_send(
    autojump_clock: trio.testing.MockClock, fault: str, window: int | None
) -> None:
    """Each outcome is what ``node.send`` gives in the same situation, the
    platform takes the same messages, and no send stays tracked."""
    expected, sent_expected, left = await _outcomes_when(fault, through_outbox=False, window=window)
    assert left == 0
    heard, sent, left = await _outcomes_when(fault, through_outbox=True, window=window)
    assert left == 0
    assert _shape(heard) == _shape(expected)
    assert sorted(sent) == sorted(sent_expected)
    for peer in range(2):  # each peer's order (two peers' sends interleave as they may)
        mine = [f"k{i}" for i in range(6) if i % 2 == peer]
        assert [k for k in sent if k in mine] == [k for k in sent_expected if k in mine]
    for key, value in heard.items():
        if not isinstance(value, SendResult):
            assert str(value) == str(expected[key])


# --- the block cancelled ------------------------------------------------------------------


async def test_a_cancelled_block_leaves_its_sends_to_end_in_the_node_and_logs_nothing(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Cancelled while it waits: the sends go on, end, and leave nothing
    tracked; nothing is logged (no callback into the dead outbox raises)."""
    provider = SimulatedProvider(latency=Fixed(seconds=1.0))
    heard: list[Sent] = []
    with caplog.at_level(logging.WARNING), trio.fail_after(CEILING):
        async with open_node(
            node_config([sim("a")]), channel_defaults=FAST, providers={"simulated": provider}
        ) as node:
            await wait_connected(node, 1)
            with trio.CancelScope() as scope:
                async with node.outbox(on_sent=heard.append) as outbox:
                    for i in range(6):
                        outbox.send("a", message(f"k{i}", peer=f"p{i % 2}"))
                    outbox.send("a", message("k0", peer="p0"))  # on its way: in a task
                    await trio.testing.wait_all_tasks_blocked()
                    scope.cancel()
                    await outbox.wait_done()
            assert scope.cancelled_caught
            assert node.statistics().sends_in_flight == 6
            # Each peer's sends go in order: these end after the outbox's.
            await node.send("a", message("after0", peer="p0"))
            await node.send("a", message("after1", peer="p1"))
            assert node.statistics().sends_in_flight == 0
    assert heard == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


# --- timeouts -----------------------------------------------------------------------------


@pytest.mark.parametrize("seconds", [0.0, math.inf])
async def test_timeout_zero_and_inf_as_node_send(
    autojump_clock: trio.testing.MockClock, seconds: float
) -> None:
    """timeout=0 and math.inf: outcomes and platform sends as ``node.send``'s."""

    async def run(through_outbox: bool) -> tuple[dict[str, str], list[str]]:
        provider = SimulatedProvider(latency=Fixed(seconds=1.0))
        heard: dict[str, Any] = {}
        async with open_node(
            node_config([sim("a")]), channel_defaults=FAST, providers={"simulated": provider}
        ) as node:
            await wait_connected(node, 1)
            await node.send("a", message("done", peer="done"))
            keys = ["done", "n1", "n2", "n3"]
            if through_outbox:
                async with node.outbox(timeout=seconds) as outbox:
                    for key in keys:
                        outbox.send("a", message(key, peer=key))
                    for sent in await _all(outbox):
                        heard[_key(sent)] = _outcome(sent)
            else:
                async with trio.open_nursery() as nursery:
                    for key in keys:
                        nursery.start_soon(
                            record_outcome,
                            heard,
                            key,
                            node.send("a", message(key, peer=key), timeout=seconds),
                        )
            assert node.statistics().sends_in_flight == 0
        return _shape(heard), sorted(m.idempotency_key for m in provider.sent)

    with trio.fail_after(CEILING):
        assert await run(True) == await run(False)


# --- garbage ------------------------------------------------------------------------------


async def _garbage_of(work: Any) -> int:
    gc.collect()
    gc.disable()
    try:
        await work()
        return gc.collect()
    finally:
        gc.enable()


@pytest.mark.parametrize("latency", [0.0, 1.0])
async def test_outbox_sends_leave_no_cycle_per_send(
    autojump_clock: trio.testing.MockClock, latency: float
) -> None:
    """``node.send``'s sends leave no reference cycle per send
    (tests/test_failure_garbage.py): a busy node's collector must not work in
    step with its sends. The outbox's, sent, timed out, or refused, neither."""
    provider = SimulatedProvider(latency=Fixed(seconds=latency))
    with trio.fail_after(CEILING):
        async with open_node(
            node_config([sim("a")]), channel_defaults=FAST, providers={"simulated": provider}
        ) as node:
            await wait_connected(node, 1)
            counter = iter(range(10**6))

            async def through_outbox(n: int, timeout: float | None = None) -> None:  # noqa: ASYNC109
                async with node.outbox(timeout=timeout) as outbox:
                    for _ in range(n):
                        i = next(counter)
                        outbox.send("a", message(f"k{i}", peer=f"p{i % 7}"))
                    await _all(outbox)

            await through_outbox(20)  # warm up
            few = await _garbage_of(lambda: through_outbox(20))
            many = await _garbage_of(lambda: through_outbox(200))
            assert many - few < 20, (few, many)
            if latency:
                few = await _garbage_of(lambda: through_outbox(20, 0.5))
                many = await _garbage_of(lambda: through_outbox(200, 0.5))
                assert many - few < 20, (few, many)


# --- a busy channel: the mailbox path -----------------------------------------------------


def _sent_count(node: Any) -> int:
    return sum(
        snap.count
        for snap in node.statistics().latencies
        if snap.provider == "simulated" and str(snap.timing).startswith("send")
    )


async def _busy(
    through_outbox: bool,
    timeout: float | None = None,  # noqa: ASYNC109
) -> tuple[dict[str, Any], list[str], int, int]:
    """Forty sends to three peers through a window of four (a second each):
    most wait in the channel's mailbox."""
    provider = SimulatedProvider(latency=Fixed(seconds=1.0))
    spec = {**sim("a"), "send_window": 4}
    heard: dict[str, Any] = {}
    keys = [f"k{i:02}" for i in range(40)]
    async with open_node(
        node_config([spec]), channel_defaults=FAST, providers={"simulated": provider}
    ) as node:
        await wait_connected(node, 1)
        before = _sent_count(node)
        if through_outbox:
            async with node.outbox(timeout=timeout) as outbox:
                for i, key in enumerate(keys):
                    outbox.send("a", message(key, peer=f"p{i % 3}"))
                for sent in await _all(outbox):
                    heard[_key(sent)] = _outcome(sent)
        else:
            async with trio.open_nursery() as nursery:
                for i, key in enumerate(keys):
                    nursery.start_soon(
                        record_outcome,
                        heard,
                        key,
                        node.send("a", message(key, peer=f"p{i % 3}"), timeout=timeout),
                    )
                    await trio.lowlevel.checkpoint()  # (each task's send starts in order)
        timed = _sent_count(node) - before
        left = node.statistics().sends_in_flight
    return heard, [m.idempotency_key for m in provider.sent], timed, left


async def test_sends_through_a_busy_channel_go_in_order_and_are_counted_as_node_send_s(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The mailbox path of ``ask_soon``: every send goes once, each peer's in
    the order given, the provider's send histogram counts each, as for
    ``node.send``."""
    with trio.fail_after(CEILING):
        expected, sent_expected, timed_expected, left = await _busy(False)
        assert left == 0 and timed_expected == 40
        heard, sent, timed, left = await _busy(True)
    assert left == 0
    assert _shape(heard) == _shape(expected)
    assert all(isinstance(v, SendResult) for v in heard.values())
    assert sorted(sent) == sorted(sent_expected)
    for peer in range(3):
        mine = [f"k{i:02}" for i in range(40) if i % 3 == peer]
        assert [key for key in sent if key in mine] == mine
    assert timed == timed_expected


async def test_sends_timed_out_in_a_busy_channel_s_mailbox_as_node_send_s(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Timed out while waiting in the mailbox: the same outcomes, the same
    messages taken by the platform, nothing left tracked."""
    with trio.fail_after(CEILING):
        expected, sent_expected, timed_expected, left = await _busy(False, 2.5)
        assert left == 0
        heard, sent, timed, left = await _busy(True, 2.5)
    assert left == 0
    assert any(isinstance(v, AskTimeout) for v in heard.values())
    assert _shape(heard) == _shape(expected)
    assert sorted(sent) == sorted(sent_expected)
    assert timed == timed_expected


async def test_the_busy_channel_s_sends_left_by_an_error_block_still_go_or_are_kept(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Left under an error with sends waiting in the mailbox: they go on in the
    node, and each is sent; nothing is left tracked."""
    provider = SimulatedProvider(latency=Fixed(seconds=1.0))
    spec = {**sim("a"), "send_window": 2}
    with trio.fail_after(CEILING):
        async with open_node(
            node_config([spec]), channel_defaults=FAST, providers={"simulated": provider}
        ) as node:
            await wait_connected(node, 1)
            with pytest.raises(KeyError):
                async with node.outbox() as outbox:
                    for i in range(12):
                        outbox.send("a", message(f"k{i:02}"))
                    raise KeyError("mine")
            await node.send("a", message("after"))  # one peer: after the twelve
            assert node.statistics().sends_in_flight == 0
    assert [m.idempotency_key for m in provider.sent] == [f"k{i:02}" for i in range(12)] + ["after"]


# --- admission ----------------------------------------------------------------------------


async def test_a_channel_s_bound_refuses_in_send_and_is_counted_as_node_send_s(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``Overloaded`` for the channel's scope: raised by ``outbox.send``, nothing
    sent, counted in ``sends_refused`` once, as ``node.send``'s refusal is."""
    from runtime import Overloaded

    provider = SimulatedProvider(latency=Fixed(seconds=1.0))
    config = node_config([sim("a"), sim("b")], node={"id": "t", "max_channel_sends": 2})
    with trio.fail_after(CEILING):
        async with open_node(
            config, channel_defaults=FAST, providers={"simulated": provider}
        ) as node:
            await wait_connected(node, 2)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(node.send, "a", message("n1", peer="x"))
                nursery.start_soon(node.send, "a", message("n2", peer="y"))
                await trio.testing.wait_all_tasks_blocked()
                with pytest.raises(Overloaded) as by_send:
                    await node.send("a", message("n3", peer="z"))
            refused = dict(node.statistics().sends_refused)
            async with node.outbox() as outbox:
                outbox.send("a", message("o1", peer="x"))
                outbox.send("a", message("o2", peer="y"))
                with pytest.raises(Overloaded) as by_outbox:
                    outbox.send("a", message("o3", peer="z"))
                outbox.send("b", message("o4", peer="z"))  # another channel: room
                outcomes = await _all(outbox)
            assert by_outbox.value.scope == by_send.value.scope == "channel"
            after = dict(node.statistics().sends_refused)
            assert after["channel"] == 2 * refused["channel"]
            assert all(sent.ok for sent in outcomes) and len(outcomes) == 3
    assert "o3" not in {m.idempotency_key for m in provider.sent}


# --- one key through node.send and the outbox at once ----------------------------------------


@pytest.mark.parametrize("first", ["node.send", "outbox"])
async def test_one_key_through_node_send_and_the_outbox_at_once_goes_once(
    autojump_clock: trio.testing.MockClock, first: str
) -> None:
    """Either order: the platform sees the key once, both callers get its answer."""
    provider = SimulatedProvider(latency=Fixed(seconds=1.0))
    results: dict[str, Any] = {}
    with trio.fail_after(CEILING):
        async with open_node(
            node_config([sim("a")]), channel_defaults=FAST, providers={"simulated": provider}
        ) as node:
            await wait_connected(node, 1)
            async with node.outbox() as outbox, trio.open_nursery() as nursery:
                if first == "outbox":
                    outbox.send("a", message("k"))
                nursery.start_soon(record_outcome, results, "send", node.send("a", message("k")))
                await trio.testing.wait_all_tasks_blocked()
                if first != "outbox":
                    outbox.send("a", message("k"))
                (sent,) = await _all(outbox)
            assert node.statistics().sends_in_flight == 0
    assert [m.idempotency_key for m in provider.sent] == ["k"]
    assert sent.ok and sent.result == results["send"]


# --- async for ----------------------------------------------------------------------------


async def test_two_consumers_share_the_outcomes_and_both_end(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = SimulatedProvider(latency=Fixed(seconds=1.0))
    taken: dict[str, list[str]] = {"x": [], "y": []}
    with trio.fail_after(CEILING):
        async with open_node(
            node_config([sim("a")]), channel_defaults=FAST, providers={"simulated": provider}
        ) as node:
            await wait_connected(node, 1)
            async with node.outbox() as outbox:

                async def consume(name: str) -> None:
                    async for sent in outbox:
                        taken[name].append(_key(sent))

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(consume, "x")
                    nursery.start_soon(consume, "y")
                    await trio.testing.wait_all_tasks_blocked()
                    for i in range(150):
                        outbox.send("a", message(f"k{i}", peer=f"p{i % 5}"))
                    outbox.close()
    assert sorted(taken["x"] + taken["y"]) == sorted(f"k{i}" for i in range(150))


async def test_outcomes_left_untaken_are_taken_after_the_block(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = SimulatedProvider(latency=Fixed(seconds=1.0))
    with trio.fail_after(CEILING):
        async with open_node(
            node_config([sim("a")]), channel_defaults=FAST, providers={"simulated": provider}
        ) as node:
            await wait_connected(node, 1)
            async with node.outbox() as outbox:
                for i in range(3):
                    outbox.send("a", message(f"k{i}", peer=f"p{i}"))
            taken = [_key(sent) async for sent in outbox]
            assert [_key(sent) async for sent in outbox] == []
    assert sorted(taken) == ["k0", "k1", "k2"]


# --- on_sent raising at the end of a drain -------------------------------------------------


async def test_an_on_sent_raising_on_a_kept_send_is_logged_and_the_rest_heard(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    provider = SimulatedProvider(latency=Fixed(seconds=1.0))
    config = node_config([sim("a")], node={"id": "t", "drain_deadline": 4.5, "start_timeout": 1.0})
    heard: list[Sent] = []

    def on_sent(sent: Sent) -> None:
        heard.append(sent)
        if not sent.ok:
            raise ValueError("the caller's bug")

    with trio.fail_after(CEILING), caplog.at_level(logging.ERROR, logger="switchboard.outbox"):
        async with open_store(StorageConfig()) as store:
            async with open_node(
                config, store=store, channel_defaults=FAST, providers={"simulated": provider}
            ) as node:
                await wait_connected(node, 1)
                async with node.outbox(on_sent=on_sent) as outbox:
                    for i in range(10):
                        outbox.send("a", message(f"k{i}"))
                    report = await node.drain()
                assert node.statistics().sends_in_flight == 0
    assert len(heard) == 10
    assert len(report.kept) == 6
    logged = [r for r in caplog.records if r.name == "switchboard.outbox"]
    assert len(logged) == 6


async def test_outbox_sends_the_long_way_or_refused_on_the_way_leave_no_cycle_per_send(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """As ``node.send``'s: a key on its way (sent in a task), a message the
    channel refuses (too long), a key answered already: no cycle per send."""
    provider = SimulatedProvider(latency=Fixed(seconds=1.0))
    with trio.fail_after(CEILING):
        async with open_node(
            node_config([sim("a")]), channel_defaults=FAST, providers={"simulated": provider}
        ) as node:
            await wait_connected(node, 1)
            counter = iter(range(10**6))

            async def through_outbox(n: int) -> None:
                async with node.outbox() as outbox:
                    for _ in range(n):
                        i = next(counter)
                        outbox.send("a", message(f"k{i}", peer=f"p{i % 7}"))
                        outbox.send("a", message(f"k{i}", peer=f"p{i % 7}"))
                        outbox.send("a", message(f"long{i}", text="x" * 100_000))
                    await _all(outbox)

            await through_outbox(10)  # warm up
            few = await _garbage_of(lambda: through_outbox(10))
            many = await _garbage_of(lambda: through_outbox(100))
            assert many - few < 20, (few, many)


# --- platform failures, a dropped link, a crash in the send path ---------------------------


async def _under(fault: str, *, through_outbox: bool) -> tuple[dict[str, str], list[str], int]:
    from providers.simulated import FailureRates

    failures = (
        FailureRates(send_transient=0.3, send_permanent=0.2, send_rate_limited=0.1)
        if fault == "failures"
        else FailureRates()
    )
    provider = SimulatedProvider(latency=Fixed(seconds=1.0), failures=failures, seed=7)
    heard: dict[str, Any] = {}
    keys = [f"k{i:02}" for i in range(24)]
    async with open_node(
        node_config([sim("a")]), channel_defaults=FAST, providers={"simulated": provider}
    ) as node:
        await wait_connected(node, 1)
        if fault == "crash":
            conn = provider.connection("a")
            assert conn is not None
            real = conn.send

            async def send(msg: Any) -> Any:
                if msg.idempotency_key == "k05":
                    await trio.sleep(0.5)  # (the platform's latency, then a defect)
                    raise ZeroDivisionError("a defect in the send path")
                return await real(msg)

            conn.send = send  # type: ignore[method-assign]

        async def fault_now() -> None:
            await trio.testing.wait_all_tasks_blocked()
            if fault == "drop":
                provider.drop("a")

        if through_outbox:
            async with node.outbox(timeout=10.0) as outbox:
                for i, key in enumerate(keys):
                    outbox.send("a", message(key, peer=f"p{i % 6}"))
                await fault_now()
                for sent in await _all(outbox):
                    heard[_key(sent)] = _outcome(sent)
        else:
            async with trio.open_nursery() as nursery:
                for i, key in enumerate(keys):
                    nursery.start_soon(
                        record_outcome,
                        heard,
                        key,
                        node.send("a", message(key, peer=f"p{i % 6}"), timeout=10.0),
                    )
                    await trio.lowlevel.checkpoint()
                await fault_now()
        left = node.statistics().sends_in_flight
    shape = {
        key: ("ok" if isinstance(v, SendResult) else f"{type(v).__name__}: {v}")
        for key, v in heard.items()
    }
    return shape, sorted(m.idempotency_key for m in provider.sent), left


@pytest.mark.parametrize("fault", ["drop", "crash"])
async def test_platform_failures_a_dropped_link_and_a_crash_answer_each_as_node_send(
    autojump_clock: trio.testing.MockClock, fault: str
) -> None:
    """Each outcome (type and text) and what the platform took, as ``node.send``'s."""
    with trio.fail_after(CEILING):
        expected = await _under(fault, through_outbox=False)
        got = await _under(fault, through_outbox=True)
    assert expected[2] == got[2] == 0
    assert got[1] == expected[1]
    assert got[0] == expected[0]


async def test_a_full_mailbox_refuses_in_send_and_the_node_holds_no_send_for_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The channel's mailbox full: ``node.send`` raises ``MailboxFull`` and holds
    nothing for it; ``outbox.send`` raises it itself, and the node holds only
    the sends taken."""
    from actors.mailbox import DEFAULT_CAPACITY
    from runtime import MailboxFull

    provider = SimulatedProvider(latency=Fixed(seconds=1.0))
    spec = {**sim("a"), "send_window": 2}
    config = node_config(
        [spec], node={"id": "t", "max_channel_sends": 3 * DEFAULT_CAPACITY, "start_timeout": 1.0}
    )
    with trio.fail_after(CEILING):
        async with open_node(
            config, channel_defaults=FAST, providers={"simulated": provider}
        ) as node:
            await wait_connected(node, 1)
            taken = 0
            with pytest.raises(KeyError):
                async with node.outbox() as outbox:
                    while taken < 2 * DEFAULT_CAPACITY:
                        try:
                            outbox.send("a", message(f"k{taken}"))
                        except MailboxFull:
                            break
                        taken += 1
                    assert DEFAULT_CAPACITY <= taken < DEFAULT_CAPACITY + 5
                    assert outbox.outstanding == taken
                    assert node.statistics().sends_in_flight == taken
                    raise KeyError("done")


# --- after a block left under an error ------------------------------------------------------


async def test_async_for_and_wait_done_end_after_a_block_left_under_an_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A block left under an error: "its sends go on in the node, their
    outcomes unheard", so ``async for`` after it (or in another task) and
    ``wait_done`` have nothing left to wait for and must end. They hang: a
    send that went the long way (a key on its way, in ``_send_in_task``) is
    cancelled with the outbox's nursery and never calls ``_ended``, so
    ``_outstanding`` never reaches 0 (nor does it for a send the drain cuts
    once the outbox is gone: ``_answered_soon`` only calls ``_end_send``).
    ``node.send``'s callers are each told, or cancelled; none waits forever.
    """
    provider = SimulatedProvider(latency=Fixed(seconds=1.0))
    with trio.fail_after(CEILING):
        async with open_node(
            node_config([sim("a")]), channel_defaults=FAST, providers={"simulated": provider}
        ) as node:
            await wait_connected(node, 1)
            with pytest.raises(KeyError):
                async with node.outbox() as outbox:
                    outbox.send("a", message("k"))
                    outbox.send("a", message("k"))  # on its way: the long way, in a task
                    await trio.testing.wait_all_tasks_blocked()
                    raise KeyError("the caller's own error")
            await node.send("a", message("after"))  # after "k": it ended
            assert node.statistics().sends_in_flight == 0
            with trio.move_on_after(CEILING / 2) as hung:
                rest = [sent async for sent in outbox]
                await outbox.wait_done()
            assert not hung.cancelled_caught, outbox
            assert rest == []
    assert [m.idempotency_key for m in provider.sent] == ["k", "after"]


async def test_a_block_cancelled_during_the_drain_leaves_its_cut_sends_to_be_kept(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The drain cuts the sends still out and stops the channels (``b``, then
    ``a``, whose close is held here); the outbox's block is cancelled
    meanwhile. Its source says "Left under an error, or cancelled while it
    waited: the sends out now go on in the node (tracked, bounded, drained)",
    so the drain must keep ``b``'s cut sends. They are lost: each waits for
    the keep in ``_kept_soon``, a task of the outbox's nursery; cancelled
    with the block, its ``finally`` ends the send (``Pending.done``) before
    the drain looks for leftovers, which then skips it: neither sent nor kept.
    """
    provider = SimulatedProvider(latency=Fixed(seconds=1.0))
    config = node_config(
        [sim("a"), sim("b")], node={"id": "t", "drain_deadline": 4.5, "start_timeout": 1.0}
    )
    keys = {f"k{i}" for i in range(10)}
    closing = trio.Event()
    release = trio.Event()
    with trio.fail_after(CEILING):
        async with open_store(StorageConfig()) as store:
            async with open_node(
                config, store=store, channel_defaults=FAST, providers={"simulated": provider}
            ) as node:
                await wait_connected(node, 2)
                conn = provider.connection("a")
                assert conn is not None
                close = conn.close

                async def held_close(*, resumable: bool = True) -> None:
                    closing.set()
                    await release.wait()
                    await close(resumable=resumable)

                conn.close = held_close  # type: ignore[method-assign]
                reports: list[Any] = []
                async with trio.open_nursery() as nursery:
                    with trio.CancelScope() as scope:
                        async with node.outbox() as outbox:
                            for key in sorted(keys):  # one peer: a second each
                                outbox.send("b", message(key))

                            async def drain() -> None:
                                reports.append(await node.drain())

                            nursery.start_soon(drain)
                            await closing.wait()  # b stopped: its cut sends wait for the keep
                            await trio.testing.wait_all_tasks_blocked()
                            scope.cancel()
                            release.set()
                    assert scope.cancelled_caught
            kept = {item.message.idempotency_key for item in reports[0].kept}
    sent = {m.idempotency_key for m in provider.sent}
    assert len(sent) == 4
    assert sent | kept == keys, (sorted(sent), sorted(kept))


async def test_an_on_sent_that_sends_again_works_from_whichever_task_tells_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``on_sent`` runs in the task that learnt the outcome (the tracker's
    timer for a timeout, this task for a key answered at once): a retry sent
    from it is tracked, bounded and told as any other."""
    provider = SimulatedProvider(latency=Fixed(seconds=2.0))
    heard: list[Sent] = []
    outbox_box: list[Outbox] = []
    all_heard = trio.Event()

    def on_sent(sent: Sent) -> None:
        heard.append(sent)
        if len(heard) == 10:
            all_heard.set()
        key = _key(sent)
        if not key.startswith("again-"):
            outbox_box[0].send("a", message(f"again-{key}", peer=sent.message.peer))

    with trio.fail_after(CEILING):
        async with open_node(
            node_config([sim("a")]), channel_defaults=FAST, providers={"simulated": provider}
        ) as node:
            await wait_connected(node, 1)
            await node.send("a", message("done", peer="d"))
            async with node.outbox(timeout=1.5, on_sent=on_sent) as outbox:
                outbox_box.append(outbox)
                outbox.send("a", message("done", peer="d"))  # answered at once: in send
                for i in range(4):
                    outbox.send("a", message(f"k{i}", peer=f"p{i}"))  # time out: in the timer
                await all_heard.wait()  # (the block's end would close it to the retries)
            assert outbox.outstanding == 0
            assert node.statistics().sends_in_flight == 0
    assert sorted(_key(s) for s in heard) == sorted(
        ["done", "again-done"] + [f"k{i}" for i in range(4)] + [f"again-k{i}" for i in range(4)]
    )
    assert all(
        isinstance(s.error, AskTimeout) for s in heard if _key(s).startswith(("k", "again-k"))
    )
