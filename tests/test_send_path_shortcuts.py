"""The send path's shortcuts answer what the long way answers.

A send is checked, limited and timed on every message, so the common case
takes a shortcut: a plain text message is checked in one pass over its
strings instead of a walk of its fields; a channel with its limits off
keeps the limiter it shares with others instead of looking it up by its
limits' hash; a channel checks a text's length without asking which
operation it is; the actor and the websocket connection read the run's
clock without ``trio.current_time``'s two frames. Each test here holds a
shortcut to the long way's answer, on the inputs where the two could part.
"""

from __future__ import annotations

import math

import attrs
import pytest
import trio
import trio.testing

from actors._clock import clock_reader
from actors.breaker import CircuitBreaker
from actors.channel.state import ChannelMemory, ChannelSettings
from actors.ratelimit.composite import CompositeLimiter
from providers.base import Media, MediaKind, OutboundMessage, PlatformLimits, Template
from providers.operations import _walked_problems, json_problems

_TEXTS = ["hi", "", " ", "\t", "a\x00b", "\x00", "café", "\ud83d", "😀", "a" * 5_000]


def _messages() -> list[OutboundMessage]:
    made = []
    for peer in ["user-1", "", "  ", "p\x00", "pé", "\udc80"]:
        for key in ["k-1", "", " \n", "k\x00", "ké"]:
            made.append(OutboundMessage(peer=peer, idempotency_key=key, text="hello"))
    for text in _TEXTS:
        made.append(OutboundMessage(peer="p", idempotency_key="k", text=text))
        made.append(OutboundMessage(peer="p", idempotency_key="k", text="t", reply_to=text))
    made += [
        OutboundMessage(peer="p", idempotency_key="k", text="t", reply_to=5),  # type: ignore[arg-type]
        OutboundMessage(peer=5, idempotency_key="k", text="t"),  # type: ignore[arg-type]
        OutboundMessage(peer="p", idempotency_key=None, text="t"),  # type: ignore[arg-type]
        OutboundMessage(peer="p", idempotency_key="k", text=b"t"),  # type: ignore[arg-type]
        OutboundMessage(peer="p", idempotency_key="k", text="t", metadata={"a": math.nan}),
        OutboundMessage(peer="p", idempotency_key="k", text="t", metadata={"a": 1}),
        OutboundMessage(peer="p", idempotency_key="k", text="t", metadata={}),
        OutboundMessage(
            peer="p", idempotency_key="k", media=Media(kind=MediaKind.IMAGE, url="https://x/\x00")
        ),
        OutboundMessage(
            peer="p", idempotency_key="k", template=Template(name="hello_world", language="en")
        ),
    ]

    class Text(str):
        """A subclass of str: the shortcut leaves it to the walk."""

    made.append(OutboundMessage(peer=Text("p"), idempotency_key="k", text="t"))
    return made


@pytest.mark.parametrize("message", _messages(), ids=repr)
def test_a_message_checked_the_short_way_has_the_problems_the_walk_finds(
    message: OutboundMessage,
) -> None:
    """The one-pass check of a plain text message (ASCII, no NUL, a peer and
    a key that are not blank) says "no problem" only where the walk of every
    field finds none; anything else is walked, so every refusal reads as
    before."""
    assert json_problems(message) == _walked_problems(message)


def test_the_short_way_is_taken_for_a_plain_text_and_refuses_nothing_it_should_not() -> None:
    """The shortcut's own answer is no problem for the case it is for (a
    shortcut that never applied would pass the test above too)."""
    plain = OutboundMessage(peer="user-7", idempotency_key="c-1-2", text="x" * 40, reply_to="m1")
    assert json_problems(plain) == [] == _walked_problems(plain)
    blank = OutboundMessage(peer="user-7", idempotency_key="   ", text="x")
    assert json_problems(blank) == [("$.idempotency_key", "must not be empty")]


def _limits(channel_rate: float, peer_rate: float) -> PlatformLimits:
    return PlatformLimits(
        per_channel_rate=channel_rate,
        per_channel_burst=5,
        per_peer_rate=peer_rate,
        per_peer_burst=1,
        max_text_length=4_096,
    )


def _memory(limits: PlatformLimits) -> ChannelMemory:
    return ChannelMemory(limits, ChannelSettings())


def test_a_channel_with_its_limits_off_reads_one_shared_limiter_until_it_must_pause() -> None:
    """Limits off: the channel's limiter is the one every such channel shares,
    read from the memory without a lookup, and no limiter of its own is made
    until a pause asks for one; then the channel reads its own."""
    off = _limits(math.inf, math.inf)
    first, second = _memory(off), _memory(attrs.evolve(off))
    shared = first.limiter
    assert isinstance(shared, CompositeLimiter)
    assert first.limiter is shared is second.limiter
    assert not first.limiter_made
    own = first.own_limiter()
    assert own is not shared and first.limiter is own and first.limiter_made
    assert second.limiter is shared  # the other channel still shares it


def test_a_channel_with_limits_on_makes_its_own_limiter_once() -> None:
    """Limits on: the first read makes the channel's own limiter, every read after gives it."""
    on = _limits(30.0, 1.0)
    memory = _memory(on)
    limiter = memory.limiter
    assert memory.limiter_made and memory.limiter is limiter is memory.own_limiter()
    assert _memory(on).limiter is not limiter


@pytest.mark.parametrize("now", [math.nan, math.inf, -math.inf, 2.0**32, -(2.0**32)])
def test_the_inline_clock_checks_refuse_what_check_time_refuses(now: float) -> None:
    """The breaker's success and the limiter's free admission check their
    reading inline (no call on a send): a reading ``check_time`` refuses is
    still refused, by the same error."""
    limiter = _memory(_limits(math.inf, math.inf)).limiter
    with pytest.raises(ValueError, match="finite clock reading"):
        limiter.admits_freely(now, key="p")
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout=1.0)
    if math.isfinite(now):
        breaker.record_success(now)  # (only the limiter bounds its readings)
        assert breaker.closed
    else:
        with pytest.raises(ValueError, match="finite clock reading"):
            breaker.record_success(now)


async def test_the_clock_reader_reads_the_runs_clock(mock_clock: trio.testing.MockClock) -> None:
    """Made inside a run, the reader is the run's clock (a test's mock clock
    included); made outside one, it reads whichever run calls it."""
    inside = clock_reader()
    mock_clock.jump(12.5)
    assert inside() == trio.current_time()
    assert outside() == trio.current_time()


outside = clock_reader()  # (made as the module is imported: in no run)
