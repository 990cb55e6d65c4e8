"""The embedded API used wrongly, and secrets in what leaves the process, under a
fault run (each test is a defect one found, fixed).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator
from typing import Any, Final

import httpx
import pytest
import trio

from actors import ChannelStateChanged, ChannelStatus
from providers.base import AuthenticationFailed, ChannelConfig, SessionState
from providers.simulated import Fixed, SimulatedProvider
from runtime import NodeDraining, open_node, parse_config
from runtime.config import ChannelSpec

from .test_node_embedded import FAST, message, node_config, sim, wait_connected

CEILING: Final = 30.0


async def test_a_second_drain_waiting_on_a_cancelled_first_does_not_hang(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Two drains at once, the first cancelled: the second drains itself and returns
    a report. It waited for ever: the first reset its flag as it was cancelled,
    and never woke the caller already waiting."""
    provider = SimulatedProvider(latency=Fixed(seconds=5.0))
    async with open_node(
        node_config([sim("a")]), channel_defaults=FAST, providers={"simulated": provider}
    ) as node:
        await wait_connected(node, 1)
        reports: list[Any] = []
        answered = trio.Event()

        async def second() -> None:
            reports.append(await node.drain())
            answered.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(node.send, "a", message("k1"))
            await trio.testing.wait_all_tasks_blocked()  # k1 is on the wire (5 s)
            with trio.move_on_after(0.5):  # the first drain is cancelled here
                async with trio.open_nursery() as inner:
                    inner.start_soon(node.drain)
                    await trio.testing.wait_all_tasks_blocked()  # it waits for k1
                    nursery.start_soon(second)
                    await trio.sleep_forever()
            with trio.move_on_after(60):  # virtual seconds: the drain deadline is 10
                await answered.wait()
            nursery.cancel_scope.cancel()
        assert reports, (
            f"the second drain() still waits 60 s on: state {node.state.name}, "
            f"drain under way {node._drain_attempt is not None}, drained {node._drained.is_set()}"
        )


async def test_restart_during_a_drain_is_refused_and_leaves_the_channel_running(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """restart_channel() while the node drains raises NodeDraining and changes
    nothing. It stopped and forgot the channel (under a send the drain waited
    for) and only then found that the node took no new start."""
    provider = SimulatedProvider(latency=Fixed(seconds=2.0))
    async with open_node(
        node_config([sim("a")]), channel_defaults=FAST, providers={"simulated": provider}
    ) as node:
        await wait_connected(node, 1)
        outcome: list[Any] = []

        async def send() -> None:
            try:
                outcome.append(await node.send("a", message("k1")))
            except Exception as exc:
                outcome.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            await trio.testing.wait_all_tasks_blocked()  # the send is on the wire (2 s)
            nursery.start_soon(node.drain)
            await trio.testing.wait_all_tasks_blocked()  # the drain waits for it
            assert node.draining
            with pytest.raises(NodeDraining):
                await node.restart_channel("a")
            assert [s.channel_id for s in node.channels()] == ["a"]
        assert len(outcome) == 1 and not isinstance(outcome[0], Exception), outcome


async def test_subscription_ends_when_the_node_has_ended(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A subscriber iterating the node's events sees the iteration end once the
    node's block has ended, and ``subscribe`` after it raises NodeNotRunning. Both
    waited for ever: nothing closed them."""
    from runtime import NodeNotRunning

    provider = SimulatedProvider(latency=Fixed(seconds=0.1))
    ended = trio.Event()

    async def consume(subscription: Any) -> None:
        with subscription:
            async for _ in subscription:
                pass
        ended.set()

    async with trio.open_nursery() as nursery:
        async with open_node(
            node_config([sim("a")]), channel_defaults=FAST, providers={"simulated": provider}
        ) as node:
            await wait_connected(node, 1)
            nursery.start_soon(consume, node.subscribe(kind="inbound"))
        with pytest.raises(NodeNotRunning):
            node.subscribe(kind="inbound")
        with trio.move_on_after(600):
            await ended.wait()
        nursery.cancel_scope.cancel()
    assert ended.is_set()


@pytest.mark.parametrize("bad", [math.nan, "5", -1.0])
async def test_a_bad_drain_deadline_is_refused_before_the_node_stops_taking_work(
    autojump_clock: trio.testing.MockClock, bad: Any
) -> None:
    """A drain's deadline that is not seconds >= 0 (NaN, "5", -1) is a ValueError
    before anything stops. NaN and "5" raised trio's errors after the node had
    stopped taking work, its channels still running; -1 killed every channel."""
    provider = SimulatedProvider(latency=Fixed(seconds=0.1))
    async with open_node(
        node_config([sim("a")]), channel_defaults=FAST, providers={"simulated": provider}
    ) as node:
        await wait_connected(node, 1)
        with pytest.raises(ValueError, match="deadline"):
            await node.drain(bad)
        assert node.ready, node.state
        await node.send("a", message("k1"))


OPS_TOKEN: Final = "h2-ops-token-9f8e"
RUNTIME_SECRET: Final = "opaque-credential-4c1d9b"  # no credential shape: known by value only


class EchoingProvider(SimulatedProvider):
    """A platform whose refusal echoes the credential it was sent (an error page)."""

    @contextlib.asynccontextmanager
    async def open_connection(
        self, config: ChannelConfig, session: SessionState | None = None
    ) -> AsyncIterator[Any]:
        await trio.lowlevel.checkpoint()
        raise AuthenticationFailed(f"401: token {config.credentials.get('token')} rejected")
        yield  # pragma: no cover


async def test_a_credential_of_a_channel_started_at_run_time_is_redacted(
    monkeypatch: pytest.MonkeyPatch, when: str = "started at run time"
) -> None:
    """The credentials of a channel given to ``start_channel`` are secrets like those
    of a configured channel: never in an ops HTTP answer (``/health/detail``). The
    ops server's redactor was built once from ``config.secrets()``, and a
    platform's refusal echoing such a token was served verbatim."""
    monkeypatch.setenv("SB_H2_OPS", OPS_TOKEN)
    monkeypatch.setenv("SB_H2_CRED", RUNTIME_SECRET)
    spec: dict[str, Any] = {
        "id": "ws-x",
        "tenant": "acme",
        "provider": "simulated",
        "credentials": {"token": RUNTIME_SECRET},
    }
    config = parse_config(
        {
            "node": {"id": "t", "drain_deadline": 2.0, "start_timeout": 5.0},
            "ops": {"port": 0, "api_token": "${env:SB_H2_OPS}"},
            "providers": {"simulated": {"rate_limit": {"enabled": False}}},
            "channels": (
                [{**spec, "credentials": {"token": "${env:SB_H2_CRED}"}}]
                if when == "configured"
                else []
            ),
        }
    )
    with trio.fail_after(CEILING):
        async with open_node(
            config, channel_defaults=FAST, providers={"simulated": EchoingProvider()}
        ) as node:
            if when != "configured":
                await node.start_channel(ChannelSpec(**spec))
            with node.subscribe(kind="state") as changes:
                while node.channels()[0].status is not ChannelStatus.FAILED:
                    await changes.receive()
            assert node.ops_url is not None
            async with httpx.AsyncClient(base_url=node.ops_url) as client:
                detail = await client.get(
                    "/health/detail", headers={"Authorization": f"Bearer {OPS_TOKEN}"}
                )
    assert "rejected" in detail.text, detail.text
    assert RUNTIME_SECRET not in detail.text


@pytest.mark.parametrize(
    ("secret", "extra"),
    [
        # A password with an apostrophe, in a text field that also holds a double quote.
        ("pa'ss-word-91", lambda s: {"error_text": f'upstream said "no" to {s}'}),
        # Any secret inside a dict (or list, or bytes) extra: str() then repr() again.
        ("pa\\ss-word-92", lambda s: {"detail": {"password": s}}),
        ("pa'ss-word-93", lambda s: {"raw": s.encode()}),
    ],
    ids=["apostrophe-in-quoted-field", "backslash-in-dict-field", "apostrophe-in-bytes-field"],
)
def test_a_text_log_line_never_shows_a_configured_secret_in_an_extra_field(
    secret: str, extra: Any
) -> None:
    """Every configured secret is ``***`` on a text log line, whatever field holds it.

    Each value is scrubbed before the console renderer ``repr``s it (a value with
    blanks or quotes). Only the whole line used to be scrubbed: ``repr`` escapes
    the secret (``\\'`` once both quote kinds are in the value; ``\\\\`` and
    ``\\'`` again for a dict, list or bytes value already shown with ``str``), and
    the redactor only knows the secret's raw, JSON, single-``repr`` and
    %-encoded forms, so the escaped secret was written out whole. (JSON lines
    held: they scrub before encoding.)
    """
    import io
    import logging

    from runtime.config.model import LoggingConfig
    from runtime.telemetry import configure_logging

    stream = io.StringIO()
    with configure_logging(
        LoggingConfig(format="text"), node_id="n", secrets=[secret], stream=stream
    ):
        logging.getLogger("switchboard.h2").warning("refused", extra=extra(secret))
    line = stream.getvalue()
    assert "***" in line and secret[-7:] not in line, line


async def test_a_cancelled_stop_leaves_no_channel_listed_connected_that_cannot_send(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A stop_channel() cancelled while the channel stops leaves it stopped and
    forgotten (it can be started again): the supervisor's stop is shielded. The
    row kept its channel: listed CONNECTED, every send ChannelUnavailable, a
    start ChannelExists."""
    provider = SimulatedProvider(latency=Fixed(seconds=2.0))
    async with open_node(
        node_config([sim("a")]), channel_defaults=FAST, providers={"simulated": provider}
    ) as node:
        await wait_connected(node, 1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(node.send, "a", message("k1"))
            await trio.testing.wait_all_tasks_blocked()  # k1 is on the wire
            with trio.move_on_after(1.0):  # the stop waits for k1 (2 s on the wire)
                await node.stop_channel("a")
        listed = {s.channel_id: s.status for s in node.channels()}
        if "a" in listed:
            assert listed["a"] is ChannelStatus.CONNECTED
            await node.send("a", message("k2"), timeout=5)  # listed connected: it sends
        else:
            await node.start_channel(ChannelSpec(id="a", tenant="acme", provider="simulated"))


@pytest.mark.parametrize("left_by", ["normally", "an exception"])
async def test_channel_administration_after_the_block_ended_raises_node_not_running(
    autojump_clock: trio.testing.MockClock, left_by: str
) -> None:
    """stop_channel, restart_channel and tree on a node whose block has ended raise
    NodeNotRunning (a NodeError); they raised ``supervisors.SupervisorExited``."""
    from runtime import NodeNotRunning

    provider = SimulatedProvider(latency=Fixed(seconds=0.1))
    kept: list[Any] = []
    with contextlib.suppress(KeyError, BaseExceptionGroup):
        async with open_node(
            node_config([sim("a")]), channel_defaults=FAST, providers={"simulated": provider}
        ) as node:
            kept.append(node)
            await wait_connected(node, 1)
            if left_by == "an exception":
                raise KeyError("the embedding program failed")
    (node,) = kept
    with pytest.raises(NodeNotRunning):
        await node.stop_channel("a")
    with pytest.raises(NodeNotRunning):
        await node.restart_channel("a")
    with pytest.raises(NodeNotRunning):
        node.tree()


async def test_wait_drained_after_the_block_was_left_by_an_exception_does_not_hang(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A node whose block was left by an exception answers ``wait_drained()`` at
    once (NodeNotRunning: it never drained), and lists its killed channels as
    stopped. ``wait_drained()`` waited for ever, and they were listed CONNECTED."""
    provider = SimulatedProvider(latency=Fixed(seconds=0.1))
    kept: list[Any] = []
    with contextlib.suppress(KeyError, BaseExceptionGroup):
        async with open_node(
            node_config([sim("a")]), channel_defaults=FAST, providers={"simulated": provider}
        ) as node:
            kept.append(node)
            await wait_connected(node, 1)
            raise KeyError("the embedding program failed")
    (node,) = kept
    assert node.state.name == "DRAINED"
    answered = False
    with trio.move_on_after(60):
        with contextlib.suppress(Exception):  # raising at once is an answer too
            await node.wait_drained()
        answered = True
    assert answered, "wait_drained() of a DRAINED node still waits after 60 s"
    assert [s.status for s in node.channels()] != [ChannelStatus.CONNECTED]


def test_a_json_log_line_with_a_non_finite_number_is_still_json() -> None:
    """Every JSON log line parses as JSON (RFC 8259), whatever its fields hold.

    A float field that is infinite or NaN (a timeout of ``math.inf``, a rate's NaN
    from a platform) is written as text (``"inf"``, ``"nan"``). ``_ecs_json`` used
    to call ``json.dumps`` with its default ``allow_nan=True``, which wrote the
    bare tokens ``Infinity`` / ``NaN``; strict parsers (Elasticsearch ingest, jq,
    Go, Rust) refuse them, and the line was lost at the shipper.
    """
    import io
    import json
    import logging

    from runtime.config.model import LoggingConfig
    from runtime.telemetry import configure_logging

    stream = io.StringIO()
    with configure_logging(LoggingConfig(format="json"), node_id="n", stream=stream):
        logging.getLogger("switchboard.h2").warning(
            "waits", extra={"switchboard.delay_s": math.inf, "switchboard.rate": math.nan}
        )
    line = stream.getvalue().strip()

    def refuse(token: str) -> None:
        raise ValueError(f"not JSON: {token}")

    json.loads(line, parse_constant=refuse)


def test_many_filtered_subscriptions_cost_linear_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Taking or closing one subscription visits no other subscriber, so N of them
    cost O(N) in all (one per conversation or websocket client is a normal pattern).

    Counted, not timed: a subscriber is visited when the hub reads its ``kinds``
    or compares it with another. ``subscribe`` and ``close`` used to recompute
    the wanted kinds over the whole subscriber list and ``remove`` did an ``in``
    and a ``list.remove``: every subscriber was visited each time, so 10k
    subscriptions took 2 s to take and 3 s to close, 20k 9 s and 8 s, all of it
    blocking the node's event loop.
    """
    from runtime import events

    visits = 0

    class Counted(events.Subscription):
        @property  # type: ignore[override]
        def kinds(self) -> frozenset[str] | None:
            nonlocal visits
            visits += 1
            return self._kinds

        @kinds.setter
        def kinds(self, kinds: frozenset[str] | None) -> None:
            self._kinds = kinds

        def __eq__(self, other: object) -> bool:
            nonlocal visits
            visits += 1
            return self is other

        __hash__ = events.Subscription.__hash__

    monkeypatch.setattr(events, "Subscription", Counted)

    def one_more_and_one_less(count: int) -> int:
        """Visits while taking one more subscription and closing one, beside ``count``."""
        nonlocal visits
        hub = events.EventHub()
        taken = [hub.subscribe(kind="receipt", channel=f"c{i}") for i in range(count)]
        visits = 0
        hub.subscribe(kind="state", channel="new").close()
        taken[count // 2].close()
        assert hub.wants("receipt") and not hub.wants("state")
        return visits

    assert one_more_and_one_less(2_000) == one_more_and_one_less(10)


async def test_closing_the_hub_ends_its_subscriptions_and_refuses_new_ones() -> None:
    """``EventHub.close`` (the node has ended) ends every subscription after what it
    has buffered, takes no new subscriber, and a closed hub wants no kind.

    Nothing closed the hub: a subscriber iterating a node's events after the
    node had ended waited forever, and so did one that subscribed afterwards.
    """
    from runtime import NodeNotRunning
    from runtime.events import EventHub

    hub = EventHub()
    every = hub.subscribe()
    receipts = hub.subscribe(kind="receipt")
    tap = hub.tap("a", "acme", "simulated")
    tap.send_nowait(ChannelStatus.CONNECTED)  # not an event: nothing published
    state = ChannelStateChanged(
        channel_id="a", status=ChannelStatus.CONNECTED, previous=ChannelStatus.CONNECTING
    )
    tap.send_nowait(state)
    hub.close()
    hub.close()  # again: nothing more
    assert [event.event async for event in every] == [state]
    assert [event async for event in receipts] == []
    assert hub.closed and not hub.wants("state") and not hub.wants("receipt")
    with pytest.raises(NodeNotRunning, match="ended"):
        hub.subscribe(kind="inbound")
    with pytest.raises(NodeNotRunning):
        hub.watch(lambda event: None)


async def test_channels_started_at_run_time_build_the_redactor_once(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hundred channels started with tokens of their own rebuild the redactor's
    pattern once, at its next use, not once each: each build takes every secret's
    forms, so one a channel was quadratic (1,000 channels: ~38 s of a stalled loop)."""
    import re as real_re

    from runtime.config import ChannelSpec
    from runtime.telemetry import redaction

    built: list[int] = []

    class CountingRe:
        def __getattr__(self, name: str) -> Any:
            return getattr(real_re, name)

        def compile(self, pattern: str, *args: Any) -> Any:
            built.append(pattern.count("|") + 1)
            return real_re.compile(pattern, *args)

    monkeypatch.setattr(redaction, "re", CountingRe())
    tokens = [f"token-{i:06d}-abcdefghijkl" for i in range(100)]
    async with open_node(
        node_config([]), channel_defaults=FAST, providers={"simulated": SimulatedProvider()}
    ) as node:
        for i, token in enumerate(tokens):  # one at a time, as an embedding program may
            await node.start_channel(
                ChannelSpec(
                    id=f"c{i}", provider="simulated", tenant="acme", credentials={"token": token}
                )
            )
        assert built == []  # none used yet
        shown = node.redactor.scrub(f"refused: {tokens[0]} and {tokens[-1]}")
    assert len(built) == 1
    assert tokens[0] not in shown and tokens[-1] not in shown
