"""Overload and the resilience primitives, as a demanding production user meets them.

Each test says what must hold and what went wrong before its fix: a
channel's liveness timer that fires late because the node's own loop was
busy (not the link); a platform answering 429 with no wait, to sends and
to connects, hammered without a pause; a HALF_OPEN breaker's trial cut off
by a crash (or left by another process) holding the breaker a whole reset
timeout; an ``Overloaded`` from another node with its ``retry_after``
taken unchecked into the 503's ``Retry-After``; limits and channel
settings that no limiter or breaker can keep, accepted and then crashing
the channel at every send. Virtual time throughout: a stalled loop is a
jump of the clock that no task sees until it runs again.
"""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing

from actors import BreakerState, ChannelSettings, CircuitOpen
from actors.channel import ChannelMemory
from actors.channel.durable import export_state, restore_state
from providers.base import (
    UNLIMITED,
    InboundMessage,
    PlatformLimits,
    RateLimited,
    SendResult,
    TransientError,
)
from providers.testing import FakeConnection, FakeProvider, SendDelay
from runtime import Overloaded
from runtime.admission import MAX_RETRY_AFTER, NODE_RETRY_AFTER
from runtime.errors import error_from_wire, error_to_wire
from tests.support import CEILING
from tests.test_channel_actor import GENEROUS, open_channel, out, settings

LIMITS_OFF = PlatformLimits(
    per_channel_rate=UNLIMITED,
    per_channel_burst=1,
    per_peer_rate=UNLIMITED,
    per_peer_burst=1,
    max_text_length=100,
)


def _inbound(msg_id: str) -> InboundMessage:
    return InboundMessage(
        channel_id="ch", platform_message_id=msg_id, peer="u1", sender="u1", text="hi"
    )


# --- liveness: a late timer is the loop's lateness, not a dead link ----------------------------


async def _pump(socket: trio.MemoryReceiveChannel[InboundMessage], conn: FakeConnection) -> None:
    """The provider's own reader: bytes read off the socket become the link's events."""
    async for event in socket:
        conn.push(event)


async def test_a_liveness_timer_fired_late_by_a_stalled_loop_does_not_drop_the_link(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A channel with ``liveness_timeout`` calls its link dead only after a silence.

    The node's loop stalls (a collection, a burst of work) across the
    liveness deadline while the peer's event arrives: the event is in the
    socket, unread, because the provider's reader has not run yet. Before
    the fix the deadline was judged first, as the loop came back, and the
    healthy link was dropped and reconnected ("no event for 30 s") with the
    event unread; the providers' own cores give such a late timer as long
    again as the loop looked away (``LATE_TIMER``), the channel's did not.
    A link that stays silent is still dead, once its grace is over.
    """
    provider = FakeProvider(limits=GENEROUS)
    with trio.fail_after(CEILING * 10):
        async with (
            open_channel(provider, channel_settings=settings(liveness_timeout=30.0)) as channel,
            trio.open_nursery() as nursery,
        ):
            events = channel.subscribe(accepts=lambda e: isinstance(e, InboundMessage))
            conn = await provider.wait_connected(1)
            to_socket, socket = trio.open_memory_channel[InboundMessage](10)
            nursery.start_soon(_pump, socket, conn)
            await trio.sleep(20.0)
            await trio.testing.wait_all_tasks_blocked()
            # The loop stalls for 15 s: the deadline (t+30) passes with nothing run,
            # and the peer's event arrives during the stall.
            autojump_clock.jump(15.0)
            to_socket.send_nowait(_inbound("during-the-stall"))
            await trio.testing.wait_all_tasks_blocked()
            assert "liveness" not in (channel.statistics().last_error or "")
            assert events.receive_nowait().platform_message_id == "during-the-stall"
            assert len(provider.connections) == 1
            # Silent from here on: dead after the timeout, reconnected.
            await provider.wait_connected(2)
            assert "liveness timeout" in (channel.statistics().last_error or "")
            # A stall across the deadline of a link that stays silent: dead once the
            # grace is over too (the grace is given once, not for ever).
            await trio.sleep(20.0)
            autojump_clock.jump(15.0)
            await provider.wait_connected(3)
            assert channel.statistics().reconnects == 2
            nursery.cancel_scope.cancel()


# --- retries: a platform that keeps refusing is not hammered -----------------------------------


async def test_a_send_refused_again_and_again_with_no_wait_backs_off(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A platform that answers every try of a send with 429 and no wait to speak
    of (``Retry-After: 0``) is tried again at the pace of the send backoff.

    A rate limit is not a failure (it spends no attempt and is never
    dead-lettered), and the first one is waited exactly. Before the fix
    each further one was too: a channel with its limits off (or a rate
    above the platform's) sent the same message again at once, every time,
    for as long as the platform refused it: 5,000 tries at the same
    instant here, one platform round trip apart on a real link, for ever.
    Once the platform takes it, the caller has its answer.
    """
    refusals = 200
    provider = FakeProvider(
        limits=LIMITS_OFF, send_script=[RateLimited("429", retry_after=0.0)] * refusals
    )
    with trio.fail_after(CEILING * 100):
        async with open_channel(provider) as channel:  # send backoff: 1 s each
            await provider.wait_connected(1)
            with trio.move_on_after(5.0):
                await channel.send(out())
            # The first refusal is waited exactly (no wait), the rest a second each.
            assert len(provider.send_attempts) <= 7
            assert isinstance(await channel.send(out(), timeout=math.inf), SendResult)
            assert len(provider.send_attempts) == refusals + 1
            assert channel.statistics().dead_letters == 0


async def test_connects_refused_again_and_again_with_no_wait_back_off(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A platform that refuses every connect with 429 and no wait to speak of is
    connected to again at the pace of the reconnect backoff.

    A rate limit is no failure of the link (the first one is waited
    exactly, and none counts toward ``max_reconnects``). Before the fix
    each one was waited exactly: every handshake at the same instant here,
    a reconnect storm against a platform that asked us to slow down. Once
    it lets the channel in, the channel is connected.
    """
    refusals = 20
    provider = FakeProvider(
        limits=GENEROUS, connect_script=[RateLimited("429", retry_after=0.0)] * refusals
    )
    with trio.fail_after(CEILING * 100):
        async with open_channel(provider) as channel:  # reconnect backoff: 1, 2, 4, 8 s
            with trio.move_on_after(5.0):
                await provider.wait_connected(1)
            # The first refusal is waited exactly (no wait), then 1 s, 2 s ...
            assert len(provider.connect_times) <= 4
            await provider.wait_connected(1)
            assert len(provider.connect_times) == refusals + 1
            assert channel.statistics().rate_limit_waits == refusals


# --- the circuit breaker: a trial cut off gives its slot back -----------------------------------


async def test_a_trial_send_cut_off_by_a_crash_does_not_hold_the_breaker_after_the_restart(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A HALF_OPEN breaker's trial whose send is cut off (the actor crashes, or
    is restarted, while the trial is at the platform) gives its slot back.

    The cut-off send goes back to the mailbox and is sent again by the next
    incarnation; nothing of the old one will ever report the trial's
    outcome. Before the fix its slot stayed taken in the channel's memory
    (which outlives the crash), so the breaker refused every send, the
    requeued one included, until the slot was reclaimed a whole
    ``breaker_reset`` later: a restart in HALF_OPEN stalled the channel
    although nothing was on its way to the platform.
    """
    provider = FakeProvider(limits=GENEROUS, send_script=[TransientError("5xx"), SendDelay(100)])
    results: dict[str, object] = {}

    async def send(key: str) -> None:
        results[key] = await channel.send(out(key=key), timeout=math.inf)

    with trio.fail_after(CEILING * 10):
        async with (
            open_channel(
                provider, channel_settings=settings(breaker_threshold=1, breaker_reset=10.0)
            ) as channel,
            trio.open_nursery() as nursery,
        ):
            await provider.wait_connected(1)
            nursery.start_soon(send, "k0")  # fails: the breaker opens for 10 s
            await trio.sleep(12.0)  # the trial went at 10 s, and the platform is slow
            breaker = channel.memory.breaker
            assert breaker.statistics().trials_in_flight == 1
            channel.ref.tell(object())  # an unknown message crashes the actor
            await trio.testing.wait_all_tasks_blocked()
            assert channel.statistics().restarts == 1
            # The restarted channel sent k0 again at once, as the breaker's trial.
            assert [m.idempotency_key for _, m in provider.send_attempts] == ["k0"] * 3
            assert isinstance(results.get("k0"), SendResult)
            assert breaker.current_state(trio.current_time()) is BreakerState.CLOSED


def test_a_breaker_restored_from_another_process_holds_no_trial_of_it() -> None:
    """A checkpoint taken while a HALF_OPEN breaker's trial was out (the process
    was then killed, or the channel moved to another node) restores the
    breaker HALF_OPEN with its trial slot free: the call that held it was
    the dead process's, and its outcome will never be reported here.

    Before the fix the slot came back taken, and the restored channel
    refused every send (``CircuitOpen``) until it was reclaimed a whole
    ``breaker_reset`` after the old trial began.
    """
    crashed = ChannelMemory(GENEROUS, settings(breaker_threshold=1, breaker_reset=30.0))
    crashed.breaker.record_failure(0.0)
    crashed.breaker.allow(30.0)  # the trial, at the platform as the process dies
    state = export_state(crashed, now=31.0, clock_offset=1000.0, clean=False)
    assert state.breaker.trials_in_flight == 1
    restored = ChannelMemory(GENEROUS, settings(breaker_threshold=1, breaker_reset=30.0))
    restore_state(restored, state, now=40.0, clock_offset=1000.0)
    breaker = restored.breaker
    assert breaker.current_state(40.0) is BreakerState.HALF_OPEN
    breaker.allow(40.0)  # a trial of this process goes at once
    with pytest.raises(CircuitOpen):
        breaker.allow(40.0)  # and only one


# --- the refusal's Retry-After, as another node sent it ----------------------------------------


@pytest.mark.parametrize(
    ("sent", "read"),
    [
        (5, 5),
        (0, 1),  # a retry at once: at least a second, as Overloaded promises
        (-3, 1),
        (2.5, 3),  # whole seconds, never sooner than asked
        (1e300, MAX_RETRY_AFTER),  # finite, and no longer than a node ever asks
        (-math.inf, 1),
        ("soon", NODE_RETRY_AFTER),  # not a number: the node's own default
        (True, NODE_RETRY_AFTER),
        (None, NODE_RETRY_AFTER),
    ],
)
def test_an_overloaded_from_another_node_says_a_sane_retry_after(sent: object, read: int) -> None:
    """``Overloaded.retry_after`` is whole seconds, at least 1, whatever the wire held.

    A node that forwards a send hands the owner's refusal to its caller,
    and the message API puts ``retry_after`` into the 503's ``Retry-After``
    header. Before the fix the wire's value was taken as it came: a float
    (``Retry-After: 2.5``, which HTTP does not allow), 0 or a negative
    number (clients retrying at once, in a loop, against a full node), a
    string, or ``1e+300``.
    """
    wire = error_to_wire(Overloaded("full", channel_id="a", idempotency_key="k"))
    wire["retry_after"] = sent
    error = error_from_wire(wire)
    assert isinstance(error, Overloaded)
    assert type(error.retry_after) is int
    assert error.retry_after == read


# --- limits: refused where they are made, not at every send --------------------------------------


_LIMITS = {
    "per_channel_rate": 30.0,
    "per_channel_burst": 1,
    "per_peer_rate": 1.0,
    "per_peer_burst": 1,
    "max_text_length": 4096,
}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("per_channel_rate", 0.0),
        ("per_channel_rate", -30.0),
        ("per_channel_rate", math.nan),
        ("per_peer_rate", 0.0),
        ("per_channel_burst", 0),
        ("per_peer_burst", -1),
        ("per_channel_burst", 1.5),
        ("max_text_length", 0),
    ],
)
def test_limits_no_limiter_can_keep_are_refused_where_they_are_made(
    field: str, value: object
) -> None:
    """``PlatformLimits`` (a provider's declaration, or a channel's override in
    ``ChannelSettings.limits``) refuses a rate that is not above 0, a burst
    that is not a whole number >= 1, and a text limit below 1.

    The config file's limits are checked at load; these were not. Before
    the fix a channel given such limits connected, and then every send
    crashed its actor (``ActorCrashed``, a ``ValueError`` from the rate
    limiter it made at the first send), one crash per send, until its
    supervisor gave up on it.
    """
    with pytest.raises(ValueError, match=field):
        PlatformLimits(**{**_LIMITS, field: value})
    PlatformLimits(**_LIMITS)
    PlatformLimits(**{**_LIMITS, "per_channel_rate": math.inf, "per_peer_rate": UNLIMITED})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("breaker_threshold", 0),
        ("breaker_reset", 0.0),
        ("breaker_reset", math.nan),
        ("breaker_reset", math.inf),
        ("connect_timeout", -1.0),
        ("connect_wait", -1.0),
        ("liveness_timeout", 0.0),
    ],
)
def test_channel_settings_no_channel_can_run_with_are_refused_where_they_are_made(
    field: str, value: object
) -> None:
    """``ChannelSettings`` refuses a breaker, a connect deadline, a wait for a
    link or a liveness timeout that no channel can run with.

    The channel reads them later (its breaker is made at its first send,
    its waits when one is needed). Before the fix a breaker threshold of 0
    or a reset that is not a finite time above 0 crashed the channel's
    actor at every send (``ActorCrashed``), a connect deadline below 0 kept
    it backing off for ever without a word, and a negative wait for a link
    crashed it at every send made while it was down.
    """
    with pytest.raises(ValueError, match=field):
        ChannelSettings(**{field: value})
    ChannelSettings(connect_wait=0.0, connect_timeout=None, liveness_timeout=None)
