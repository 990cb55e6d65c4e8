"""What of a channel outlives the process: its durable state, exported and restored.

Design:
- ``ChannelMemory`` keeps everything across crashes of the actor; the part
  that must also survive the process (a kill -9, a move to another node) is
  one frozen record, :class:`ChannelState`: the provider's session, the rate
  limiters, the reconnect backoff, the circuit breaker, the inbound dedupe
  window, the dead letters and whether the channel FAILED (it stays FAILED
  until an operator revives it).
- Times: the kernel runs on trio's clock, which is monotonic and local to one
  process. A record holds wall-clock times (unix seconds): exported with the
  exporting process's offset ``wall - trio`` and restored with the restoring
  one's, so a limiter's schedule continues where it stood in real time. Every
  conversion rounds *later*: a restored limiter is never more permissive
  than the truth (a restart cannot mint budget), and time that passed while
  the process was down did pass.
- Only what is not at rest is kept: a per-peer bucket that has refilled is
  the same as a fresh one; the dedupe window keeps its newest
  :data:`DEDUPE_KEPT` ids (a platform redelivers what arrived within a
  checkpoint interval of a crash: far fewer); the answers to recent sends
  keep their newest :data:`SENT_KEPT_DURABLE` (a caller retries within
  seconds, and a channel's new owner answers such a retry from them).
- Writing is behind: a change calls ``memory.touch()``, which marks the
  memory dirty once and tells its :class:`CheckpointSink` (the node's
  writer), which takes a checkpoint at most once per interval.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final, Protocol

import attrs

from providers.base import UNLIMITED, PlatformLimits, SessionState
from providers.operations import Operation

from ..backoff import BackoffState
from ..breaker import CircuitBreakerState
from ..ratelimit import CompositeLimiterState, GCRAState, KeyedLimiterState
from .state import ChannelStatus, SentEntry, SentWindow, kept_seen

if TYPE_CHECKING:
    from .state import ChannelMemory

__all__ = [
    "DEDUPE_KEPT",
    "SENT_KEPT_DURABLE",
    "STATE_VERSION",
    "ChannelState",
    "CheckpointSink",
    "DeadLetterRecord",
    "SentEntry",
    "SentWindow",
    "export_state",
    "restore_state",
]

STATE_VERSION: Final = 1  # bump when ChannelState changes incompatibly
DEDUPE_KEPT: Final = 1_000  # newest inbound ids a checkpoint keeps
SENT_KEPT_DURABLE: Final = 256  # newest send answers a checkpoint keeps


class CheckpointSink(Protocol):
    """Where a channel's memory reports that its durable state changed."""

    def mark(self, memory: ChannelMemory) -> None:
        """Take a checkpoint of ``memory`` soon (the writer's next round)."""
        ...

    async def write_now(self, memory: ChannelMemory) -> None:
        """Take a checkpoint of ``memory`` now (a new dead letter)."""
        ...


@attrs.frozen(kw_only=True)
class DeadLetterRecord:
    """A dead letter as it is kept: the queue's letter, with a wall-clock time.

    Attributes:
        id: unique within the channel.
        message: the message given up on.
        reason: the final error, as text.
        error_type: the final error's class name.
        attempts: send attempts made.
        at: when it was dead-lettered, unix seconds.
    """

    id: int
    message: Operation
    reason: str
    error_type: str
    attempts: int
    at: float


def _window(sent: SentWindow | Iterable[SentEntry]) -> SentWindow:
    """``ChannelState.sent`` as given, or made of ``(key, platform message id, peer)`` triples."""
    if isinstance(sent, SentWindow):
        return sent
    return SentWindow(tuple((key, message_id, peer) for key, message_id, peer in sent))


@attrs.frozen(kw_only=True)
class ChannelState:
    """A channel's durable state, with wall-clock times.

    Attributes:
        version: :data:`STATE_VERSION` of the code that wrote it.
        session: the provider's session, to resume from.
        limiter: the rate limiters (channel, then per peer).
        backoff: the reconnect backoff.
        breaker: the send circuit breaker.
        seen: the newest inbound ids, oldest first.
        failed: why the channel FAILED, if it did (it stays failed).
        dead_letters: every dead letter, oldest first.
        dead_letters_total: letters ever added (the next letter's id - 1).
        dead_letters_dropped: letters dropped because the queue was full.
        sent: the newest sends' answers, oldest first
            (:data:`SENT_KEPT_DURABLE` of them), each ``(idempotency key,
            platform message id, peer)``.
        clean: written once the channel's actor had ended for good (a stop,
            a drain), so it holds all that happened. A checkpoint that is
            not clean may miss the sends of its last interval: restored, its
            limiters first pause for the time they take to refill
            (:func:`refill_window`), so a crash cannot let a burst through
            twice.
    """

    version: int = STATE_VERSION
    session: SessionState | None = None
    limiter: CompositeLimiterState | None = None
    backoff: BackoffState = attrs.field(factory=BackoffState)
    breaker: CircuitBreakerState = attrs.field(factory=CircuitBreakerState)
    seen: tuple[str, ...] = ()
    failed: str | None = None
    dead_letters: tuple[DeadLetterRecord, ...] = ()
    dead_letters_total: int = 0
    dead_letters_dropped: int = 0
    sent: SentWindow = attrs.field(factory=SentWindow, converter=_window)
    clean: bool = False


def export_state(
    memory: ChannelMemory, *, now: float, clock_offset: float, clean: bool = False
) -> ChannelState:
    """The durable part of ``memory``, its times moved to the wall clock.

    Args:
        memory: the channel's memory.
        now: the trio clock now (buckets full by now are left out).
        clock_offset: ``time.time() - trio.current_time()`` of this process.
        clean: the channel's actor has ended for good: nothing happens after
            this export.
    """
    letters = memory.dead_letters
    # A limiter or breaker not made yet is a fresh one: its state holds no
    # time to move, and is the same for every channel with these limits.
    if memory.limiter_made and not memory.limiter.untouched:
        limiter = _active_shifted(memory.limiter.state, now, clock_offset)
    else:
        limiter = _fresh_limiter_state(memory.limits)
    if memory.breaker_made:
        breaker = _shift_breaker(memory.breaker.state, clock_offset)
    else:
        breaker = _FRESH_BREAKER
    return ChannelState(
        session=memory.session,
        limiter=limiter,
        backoff=_shift_backoff(memory.backoff.state, clock_offset),
        breaker=breaker,
        seen=kept_seen(memory, DEDUPE_KEPT),
        failed=(memory.last_error or "failed") if memory.status is ChannelStatus.FAILED else None,
        dead_letters=tuple(
            DeadLetterRecord(
                id=letter.id,
                message=letter.message,
                reason=letter.reason,
                error_type=letter.error_type,
                attempts=letter.attempts,
                at=letter.at + clock_offset,
            )
            for letter in letters.letters()
        )
        if len(letters)
        else (),
        dead_letters_total=letters.total,
        dead_letters_dropped=letters.dropped,
        sent=memory.sent.newest(SENT_KEPT_DURABLE),
        clean=clean,
    )


_FRESH_BREAKER: Final = CircuitBreakerState()


@functools.lru_cache(maxsize=64)
def _fresh_limiter_state(limits: PlatformLimits) -> CompositeLimiterState:
    """The state of a limiter made for ``limits`` and never used."""
    from .state import new_limiter

    return new_limiter(limits).state


def refill_window(limits: PlatformLimits) -> float:
    """Seconds the channel's limiters take to refill from empty.

    After a checkpoint that is not clean, sends of its last interval may be
    unrecorded. Pausing this long before sending again keeps every window
    within the declared curve: the unrecorded sends fit in ``burst + rate *
    x`` before the crash, and at most one refilled burst follows after.
    """
    return max(
        _refill(limits.per_channel_burst, limits.per_channel_rate),
        _refill(limits.per_peer_burst, limits.per_peer_rate),
    )


def _refill(burst: int, rate: float) -> float:
    return 0.0 if rate >= UNLIMITED else burst / rate  # no limit keeps no schedule


def restore_state(
    memory: ChannelMemory, state: ChannelState, *, now: float, clock_offset: float
) -> None:
    """Put ``state`` back into a fresh ``memory``, its times moved to this trio clock.

    Args:
        memory: a memory made for the channel, not yet used.
        state: what :func:`export_state` made.
        now: the trio clock now.
        clock_offset: ``time.time() - trio.current_time()`` of this process.

    Raises:
        ValueError: ``state`` does not fit the channel's limiters (their
            settings changed); nothing is restored then.
    """
    from ..backoff import Backoff
    from ..breaker import CircuitBreaker
    from ..ratelimit import CompositeLimiter
    from .state import ChannelStatus, OutboundDeadLetter

    back = -clock_offset
    limiter: CompositeLimiter | None = None
    if state.limiter is not None:
        restored = CompositeLimiter(
            *memory.limiter.parts, state=_shift_limiter(state.limiter, back)
        )
        if memory.limiter_made or not restored.untouched:  # (else: the shared one of limits off)
            limiter = restored
    backoff = memory.backoff
    restored_backoff = Backoff(
        backoff.policy,
        rng=backoff.rng,
        max_attempts=backoff.max_attempts,
        reset_after=backoff.reset_after,
        state=_shift_backoff(state.backoff, back),
    )
    breaker = memory.breaker
    restored_breaker = CircuitBreaker(
        failure_threshold=breaker.failure_threshold,
        reset_timeout=breaker.reset_timeout,
        half_open_max_calls=breaker.half_open_max_calls,
        name=breaker.name,
        # Trial calls in flight were the exporting incarnation's: none reports here.
        state=_shift_breaker(attrs.evolve(state.breaker, trials_in_flight=0), back),
    )
    # Everything is checked above; from here on nothing raises.
    if limiter is not None:
        memory.limiter = limiter
    memory.backoff = restored_backoff
    memory.breaker = restored_breaker
    memory.session = state.session
    for key in state.seen:
        memory.seen.add(key)
    for key, platform_message_id, peer in state.sent:
        memory.sent.put(key, platform_message_id, peer)
    memory.dead_letters.restore(
        [
            OutboundDeadLetter(
                id=record.id,
                message=record.message,
                reason=record.reason,
                error_type=record.error_type,
                attempts=record.attempts,
                at=record.at + back,
            )
            for record in state.dead_letters
        ],
        total=state.dead_letters_total,
        dropped=state.dead_letters_dropped,
    )
    if state.failed is not None:
        memory.status = ChannelStatus.FAILED
        memory.last_error = state.failed
    window = refill_window(memory.limits)
    if not state.clean and window > 0:  # (limits off: no window, and no limiter of its own)
        memory.own_limiter().pause_until(now + window)


# --- moving times between clocks (always rounding later) --------------------------------


def _later_s(value: float | None, shift: float) -> float | None:
    if value is None:
        return None
    moved = value + shift
    return math.nextafter(moved, math.inf)


def _later_ns(value: int | None, shift: float) -> int | None:
    if value is None:
        return None
    return value + math.ceil(shift * 1e9) + 1


def _shift_gcra(state: GCRAState, shift: float) -> GCRAState:
    return GCRAState(
        tat_ns=_later_ns(state.tat_ns, shift), paused_until=_later_s(state.paused_until, shift)
    )


def _shift_limiter(state: CompositeLimiterState, shift: float) -> CompositeLimiterState:
    parts: list[GCRAState | KeyedLimiterState[Any]] = []
    for part in state.parts:
        if isinstance(part, GCRAState):
            parts.append(_shift_gcra(part, shift))
        else:
            parts.append(
                KeyedLimiterState(
                    buckets=tuple((key, _shift_gcra(b, shift)) for key, b in part.buckets),
                    paused_until=_later_s(part.paused_until, shift),
                    new_keys_paused_until=_later_s(part.new_keys_paused_until, shift),
                )
            )
    return CompositeLimiterState(
        parts=tuple(parts), paused_until=_later_s(state.paused_until, shift)
    )


def _shift_backoff(state: BackoffState, shift: float) -> BackoffState:
    if state.connected_at is None:
        return state  # frozen, and nothing to move
    # Made, not evolved (a connected channel's every checkpoint): a field
    # added to BackoffState fails a test until it is passed on here.
    return BackoffState(
        failures=state.failures,
        last_delay=state.last_delay,
        connected_at=_later_s(state.connected_at, shift),
    )


def _shift_breaker(state: CircuitBreakerState, shift: float) -> CircuitBreakerState:
    if state.retry_at is None:
        return state  # frozen, and nothing to move (a closed breaker)
    return attrs.evolve(state, retry_at=_later_s(state.retry_at, shift))


def _active_shifted(
    state: CompositeLimiterState, now: float, shift: float
) -> CompositeLimiterState:
    """``state`` without the per-peer buckets that are full again by ``now``, nor
    a pause of the whole channel that is over (a 429's, or a restore's), its
    times moved by ``shift`` (:func:`_shift_limiter`), in one pass: a busy
    channel with limits on exports its limiter every checkpoint."""
    now_ns = math.floor(now * 1e9)
    parts: list[GCRAState | KeyedLimiterState[Any]] = []
    for part in state.parts:
        if isinstance(part, GCRAState):
            parts.append(_shift_gcra(part, shift))
            continue
        buckets = []
        for key, bucket in part.buckets:
            paused = bucket.paused_until
            tat_ns = bucket.tat_ns
            resting = (paused is None or not paused > now) and (tat_ns is None or tat_ns <= now_ns)
            if not resting:
                buckets.append((key, _shift_gcra(bucket, shift)))
        parts.append(
            KeyedLimiterState(
                buckets=tuple(buckets),
                paused_until=_later_s(part.paused_until, shift),
                new_keys_paused_until=_later_s(part.new_keys_paused_until, shift),
            )
        )
    paused = state.paused_until
    return CompositeLimiterState(
        parts=tuple(parts),
        paused_until=None if paused is None or paused <= now else _later_s(paused, shift),
    )
