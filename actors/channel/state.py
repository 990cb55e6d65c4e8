"""What a channel keeps across crashes: settings, memory, dead letters, statistics.

Design: the ChannelActor instance is replaced on every restart; the
:class:`ChannelMemory` is not. It holds the live rate limiters, the backoff
and circuit breaker, the provider's session state, the recent inbound ids,
the dead letters and the subscribers, so a restart neither resets a budget
(and bursts into a ban) nor replays or drops updates. Every part also has a
frozen ``state`` record for a store to persist across processes.
"""

from __future__ import annotations

import enum
import functools
import itertools
import math
import random
from array import array
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeAlias

import attrs
import trio

from providers.base import UNLIMITED, InboundMessage, MessageEdited, PlatformLimits, SessionState
from providers.operations import Operation

from ..backoff import Backoff, ExponentialBackoff
from ..breaker import CircuitBreaker
from ..ratelimit import GCRA, CompositeLimiter, KeyedLimiter

if TYPE_CHECKING:
    from .durable import CheckpointSink
    from .tenure import Tenure

__all__ = [
    "ChannelMemory",
    "ChannelSettings",
    "ChannelStateChanged",
    "ChannelStatistics",
    "ChannelStatus",
    "DeadLetterQueue",
    "EventReceiver",
    "OutboundDeadLetter",
    "RecentIds",
    "SentEntry",
    "SentResults",
    "SentWindow",
    "channel_bucket",
    "channel_statistics",
]

DEFAULT_DEDUPE_WINDOW: Final = 10_000  # inbound ids remembered per channel
DEFAULT_PEER_BUCKETS: Final = 10_000  # per-peer limiter buckets per channel
DEFAULT_DEAD_LETTERS: Final = 10_000  # dead letters kept per channel
SENT_KEPT: Final = 1_000  # send results remembered per channel, by idempotency key

# A platform that counts a channel's sends over any one second (WhatsApp,
# Telegram, Discord's global limit: ``PlatformLimits.per_channel_strict``)
# refuses the one past its rate, and each refusal pauses the channel for a
# second or more (on the bench: 55 of WhatsApp's 80/s). Sending exactly at the
# rate is not enough: the network and both event loops move each send by a few
# milliseconds, and two that land closer than 1/rate put rate + 1 into some
# second. So such a channel paces (burst 1) at PACING_SHARE of the rate, which
# leaves (1 - share) of every second for that jitter; no rate + 1 consecutive
# sends can land within one second as long as tolerance + jitter < about 30 ms.
# PACING_TOLERANCE lets the pacer's own late wake-ups (a timer fires a
# millisecond late) be made up instead of lost at every turn.
PACING_SHARE: Final = 0.97  # of a strict platform's per-channel rate
PACING_TOLERANCE: Final = 0.005  # seconds a paced send may come before its turn


def channel_bucket(limits: PlatformLimits) -> GCRA:
    """The channel's own rate limiter (the per-peer one is keyed beside it).

    A platform whose window is strict (``limits.per_channel_strict``) gets
    a pacer a little below its rate; any other gets the bucket it declares.
    """
    if limits.per_channel_rate >= UNLIMITED:
        return GCRA(rate=math.inf, burst=limits.per_channel_burst)
    if not limits.per_channel_strict:
        return GCRA(rate=limits.per_channel_rate, burst=limits.per_channel_burst)
    return GCRA(
        rate=limits.per_channel_rate * PACING_SHARE,
        burst=limits.per_channel_burst,
        tolerance=PACING_TOLERANCE,
    )


def new_limiter(limits: PlatformLimits) -> CompositeLimiter:
    """A fresh limiter for a channel: its own bucket, then one per peer."""
    return CompositeLimiter(
        channel_bucket(limits),
        KeyedLimiter(
            rate=math.inf if limits.per_peer_rate >= UNLIMITED else limits.per_peer_rate,
            burst=limits.per_peer_burst,
            max_keys=DEFAULT_PEER_BUCKETS,
        ),
    )


def unlimited(limits: PlatformLimits) -> bool:
    """Whether ``limits`` are off: no rate for the channel, none per peer."""
    return limits.per_channel_rate >= UNLIMITED and limits.per_peer_rate >= UNLIMITED


class _SharedLimiter(CompositeLimiter):
    """A limiter of limits off that channels share: admitting changes nothing in
    it, and a pause, which would hold every channel, is refused."""

    __slots__ = ()

    def pause_until(self, t: float, *, key: Hashable | None = None) -> None:
        raise RuntimeError("a shared limiter cannot pause: pause the channel's own_limiter()")


@functools.lru_cache(maxsize=64)
def _free_limiter(limits: PlatformLimits) -> CompositeLimiter:
    """The limiter every channel with these ``limits`` (off) reads until it must
    pause (:meth:`ChannelMemory.own_limiter` gives it one of its own then)."""
    limiter = new_limiter(limits)
    return _SharedLimiter(*limiter.parts)


# The jitter source of every channel that is not given its own generator. A
# Mersenne Twister keeps 2.5 KB of state, as much as the rest of a channel's
# memory; draws from one shared stream spread reconnects just as well (trio
# runs one task at a time, so sharing needs no lock). Tests inject a seeded
# generator per channel.
_JITTER: Final = random.Random()


class EventReceiver(Protocol):
    """Where a channel publishes events: a trio send channel, or anything that
    takes an event without waiting (raising ``trio.WouldBlock`` when full)."""

    def send_nowait(self, value: Any, /) -> None: ...


class ChannelStatus(enum.Enum):
    """The states of a channel's connection."""

    IDLE = "idle"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    BACKING_OFF = "backing_off"
    STOPPED = "stopped"
    FAILED = "failed"


@attrs.frozen(kw_only=True)
class ChannelStateChanged:
    """Published to subscribers whenever the channel's status changes.

    Attributes:
        channel_id: the channel.
        status: the new status.
        previous: the status before.
        reason: why (the error, as text), if any.
        attempt: consecutive reconnect failures so far.
        delay: seconds until the next connect, when backing off.
    """

    channel_id: str
    status: ChannelStatus
    previous: ChannelStatus
    reason: str | None = None
    attempt: int = 0
    delay: float | None = None


def _seconds(
    *, optional: bool = False, zero: bool = False, finite: bool = False
) -> Callable[[Any, Any, Any], None]:
    """A validator of a ``ChannelSettings`` time: seconds > 0 (``zero``: >= 0;
    ``finite``: not ``math.inf``), or ``None`` where ``optional``.

    Checked where settings are made: the channel reads most of them only
    later (its breaker at its first send, its waits at the first that needs
    one), and a value none of them can take crashed the channel there, at
    every send or every connect.
    """

    def check(_: Any, attribute: Any, value: Any) -> None:
        if value is None and optional:
            return
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if number and (value > 0 or (zero and value == 0)) and not (finite and math.isinf(value)):
            return
        wanted = ("finite " if finite else "") + ("seconds >= 0" if zero else "seconds > 0")
        raise ValueError(
            f"{attribute.name} must be {wanted}{' or None' if optional else ''}, got {value!r}"
        )

    return check


@attrs.frozen(kw_only=True)
class ChannelSettings:
    """How a channel reconnects, sends and remembers.

    Attributes:
        reconnect: the reconnect backoff policy (full jitter by default).
        reset_after: seconds a connection must last before the reconnect
            backoff starts over.
        max_reconnects: give up (FAILED) after this many consecutive failed
            connects; ``None`` retries forever.
        liveness_timeout: a connection that delivers no event for this many
            seconds is treated as dead; ``None`` leaves it to the provider's
            own keepalive.
        limits: overrides the provider's default limits.
        send_attempts: tries per message for transient failures.
        send_backoff: delay between those tries.
        connect_wait: seconds a send waits for the channel to (re)connect.
        connect_timeout: the total deadline of one connect, from its turn at
            the provider's connect gate to the open connection, whatever the
            provider's own timeouts (a platform that drips its answers, or
            a handshake that never ends): past it the attempt is a
            ``TransientError``, its gate slot is freed and the channel backs
            off. ``None``: only the provider's own deadlines apply.
        breaker_threshold: consecutive send failures that open the breaker.
        breaker_reset: seconds the breaker stays open before a trial.
        dedupe_window: inbound platform ids remembered.
        inbound_retry: seconds between tries to hand inbound events to a
            sink that refused them (the store is down); meanwhile the
            channel reads no more from the platform.
    """

    reconnect: ExponentialBackoff = attrs.field(
        factory=lambda: ExponentialBackoff(base=0.5, cap=60.0)
    )
    reset_after: float = 60.0
    max_reconnects: int | None = None
    liveness_timeout: float | None = attrs.field(default=None, validator=_seconds(optional=True))
    limits: PlatformLimits | None = None
    send_attempts: int = attrs.field(default=5, validator=attrs.validators.ge(1))
    send_backoff: ExponentialBackoff = attrs.field(
        factory=lambda: ExponentialBackoff(base=0.2, cap=10.0)
    )
    connect_wait: float = attrs.field(default=30.0, validator=_seconds(zero=True))
    connect_timeout: float | None = attrs.field(default=60.0, validator=_seconds(optional=True))
    breaker_threshold: int = attrs.field(default=5, validator=attrs.validators.ge(1))
    breaker_reset: float = attrs.field(default=30.0, validator=_seconds(finite=True))
    dedupe_window: int = DEFAULT_DEDUPE_WINDOW
    inbound_retry: float = 0.5


@attrs.frozen(kw_only=True)
class OutboundDeadLetter:
    """A message the channel gave up on.

    Attributes:
        id: unique within the channel, for replay.
        message: the message.
        reason: why (the final error, as text).
        error_type: the final error's class name.
        attempts: send attempts made.
        at: when it was dead-lettered (trio clock).
    """

    id: int
    message: Operation
    reason: str
    error_type: str
    attempts: int
    at: float


class DeadLetterQueue:
    """Bounded, ordered dead letters; the oldest are dropped (and counted) when full.

    The table is made with the first letter: most channels never have one.
    """

    __slots__ = ("_letters", "capacity", "changes", "dropped", "total")

    def __init__(self, capacity: int = DEFAULT_DEAD_LETTERS) -> None:
        self.capacity = capacity
        self._letters: OrderedDict[int, OutboundDeadLetter] | None = None
        self.dropped = 0
        self.total = 0
        self.changes = 0  # adds and takes so far: a checkpoint rewrites the letters when it moved

    def __len__(self) -> int:
        return 0 if self._letters is None else len(self._letters)

    def add(self, message: Operation, error: BaseException, attempts: int) -> OutboundDeadLetter:
        if self._letters is None:
            self._letters = OrderedDict()
        letter = OutboundDeadLetter(
            id=self.total + 1,  # ids count every letter ever added, dropped ones too
            message=message,
            reason=str(error),
            error_type=type(error).__name__,
            attempts=attempts,
            at=trio.current_time(),
        )
        self._letters[letter.id] = letter
        self.total += 1
        self.changes += 1
        while len(self._letters) > self.capacity:
            self._letters.popitem(last=False)
            self.dropped += 1
        return letter

    def add_once(self, message: Operation, error: BaseException, attempts: int) -> bool:
        """:meth:`add`, unless a letter of the message's idempotency key is here
        already (a resend dead-lettered, then the process died before the node
        forgot it); returns whether it added one."""
        key = message.idempotency_key
        if any(letter.message.idempotency_key == key for letter in self.letters()):
            return False
        self.add(message, error, attempts)
        return True

    def restore(self, letters: list[OutboundDeadLetter], *, total: int, dropped: int) -> None:
        """Put back letters kept by an earlier process (a fresh queue only)."""
        if letters:
            self._letters = OrderedDict((letter.id, letter) for letter in letters)
        self.total = max(total, max((letter.id for letter in letters), default=0))
        self.dropped = dropped

    def put_back(self, letters: list[OutboundDeadLetter]) -> None:
        """Return letters that :meth:`take` took (a replay that could not go ahead)."""
        if not letters:
            return
        merged = [*(self._letters or {}).values(), *letters]
        self._letters = OrderedDict((letter.id, letter) for letter in sorted(merged, key=_by_id))
        self.changes += 1

    def letters(self) -> list[OutboundDeadLetter]:
        """Every dead letter, oldest first."""
        return [] if self._letters is None else list(self._letters.values())

    def take(self, ids: list[int] | None = None) -> list[OutboundDeadLetter]:
        """Remove and return the given letters (all when ``ids`` is None)."""
        letters = self._letters
        if letters is None:
            return []
        if ids is None:
            taken = list(letters.values())
            letters.clear()
        else:
            taken = [letters.pop(i) for i in ids if i in letters]
        if taken:
            self.changes += 1
        return taken


def _by_id(letter: OutboundDeadLetter) -> int:
    return letter.id


class RecentIds:
    """The last ``capacity`` ids seen, for deduplication in bounded memory.

    The table is made with the first id: a send-only channel never needs one.
    """

    __slots__ = ("_ids", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, None] | None = None

    def __len__(self) -> int:
        return 0 if self._ids is None else len(self._ids)

    def newest(self, count: int) -> tuple[str, ...]:
        """The newest ``count`` ids, oldest first.

        Walked from the newest end: a checkpoint asks for a thousand of up to
        ten thousand ids every second, and a copy of the whole table cost
        it more than the ids it keeps.
        """
        ids = self._ids
        if not ids or count <= 0:
            return ()
        if len(ids) <= count:
            return tuple(ids)
        newest_first = list(itertools.islice(reversed(ids), count))
        newest_first.reverse()
        return tuple(newest_first)

    def add(self, key: str) -> bool:
        """Record ``key``; False if it was already among the recent ones."""
        ids = self._ids
        if ids is None:
            ids = self._ids = OrderedDict()
        elif key in ids:
            ids.move_to_end(key)
            return False
        ids[key] = None
        if len(ids) > self.capacity:
            ids.popitem(last=False)
        return True


SentEntry: TypeAlias = tuple[str, str, str]
"""A send's answer: ``(idempotency key, platform message id, peer)``."""

_Answer: TypeAlias = "str | tuple[str, str, str]"
"""How a table keeps a send's answer: ``"<platform message id>\\0<peer>\\0<print>"``,
or ``(platform message id, peer, print)`` when the id holds a NUL or either
is no exact string (see :class:`SentResults`). The print
(``providers.operations.operation_print``) is the sent operation's, empty
where it is not known (an answer restored from a checkpoint)."""

_SEP: Final = "\0"


def _answer(platform_message_id: str, peer: str, printed: str = "") -> _Answer:
    if type(platform_message_id) is str and type(peer) is str and _SEP not in platform_message_id:
        # (One string made: not a + _SEP + b. The print, hex digits, holds no NUL.)
        return f"{platform_message_id}\0{peer}\0{printed}"
    return (platform_message_id, peer, printed)  # (anything else, as it was given)


def _read(answer: _Answer) -> tuple[str, str]:
    if type(answer) is str:
        platform_message_id, _, peer = answer[: answer.rindex(_SEP)].partition(_SEP)
        return platform_message_id, peer
    return answer[0], answer[1]  # (the tuple kept)


def _printed(answer: _Answer) -> str:
    """The print an answer keeps ("": not known)."""
    if type(answer) is str:
        return answer[answer.rindex(_SEP) + 1 :]
    return answer[2]  # (the tuple kept)


_LENGTH: Final = array("q").itemsize  # bytes a text's length takes in SentWindow._lengths


def _packed(texts: list[str]) -> bytes:
    """The texts' lengths as machine integers, in bytes: an object the collector
    does not track (an ``array`` is one it does)."""
    return array("q", map(len, texts)).tobytes()


def _lengths(packed: bytes) -> memoryview:
    """The lengths :func:`_packed` packed, as a sequence of ints."""
    return memoryview(packed).cast("q")


class SentWindow:
    """The newest send answers a checkpoint carries, oldest first: read as
    :data:`SentEntry` triples.

    A value: compared and hashed by its entries. It keeps the keys and the
    table's answers (:data:`_Answer`, the very strings the table holds), so
    a checkpoint's answers (256 per busy channel) add no object per answer
    for the collector to count.

    Design notes: a busy channel's checkpoint (one a second) carries the
    same few hundred answers as the last, less the oldest few, plus the few
    sent since. So:

    - **The answers are a range of a log, not a copy.** A window is
      ``[_start, _end)`` of two lists, the keys and the answers, that the
      windows shifted from one another share. The log only grows at its
      end (the entries of a range never change), and only by the window
      that ends at its end: a window shifted from it extends the log in
      place and moves its range, so a shift touches the new answers only,
      not every answer kept (a copy of 256 keys and answers, taking and
      later dropping a reference to each, out of the caches, was 4.8-6.3
      µs of every busy channel's checkpoint, 1,000 of them a second). An
      older window shifted again copies its range instead. Once the log's
      dead head is a window long it is cut off (a copy of one window,
      every ``count`` answers put: a few copies per answer at most).
    - **Its text is made once, and shifted too** (:meth:`text`): the store
      codec's text of the entries joined, with each entry's length. The
      window shifted from one that has its text starts from that text less
      the entries it drops (a slice) and makes the text of its new entries
      only: no walk of the hundreds it keeps.
    """

    __slots__ = ("_answers", "_end", "_from", "_keys", "_lengths", "_start", "_text")

    def __init__(self, entries: Iterable[SentEntry] = ()) -> None:
        entries = tuple(entries)
        self._keys: list[str] = [key for key, _, _ in entries]
        self._answers: list[_Answer] = [_answer(m, p) for _, m, p in entries]
        self._start = 0
        self._end = len(self._keys)
        self._text: str | None = None  # the entries' texts joined by ",", once made
        self._lengths: bytes | None = None  # each entry's text's length (_packed), with _text
        # What the text starts from, when the window it was shifted from had its
        # text: (that text, where the kept entries begin in it, their lengths).
        self._from: tuple[str, int, bytes] | None = None

    @classmethod
    def _of(cls, keys: list[str], answers: list[_Answer], start: int = 0) -> SentWindow:
        """The window of ``keys[start:]`` and their ``answers`` (the log: kept, not copied)."""
        window = cls.__new__(cls)
        window._keys = keys
        window._answers = answers
        window._start = start
        window._end = len(keys)
        window._text = window._lengths = window._from = None
        return window

    @property
    def entries(self) -> tuple[SentEntry, ...]:
        """Its answers as triples (made for the asker)."""
        return tuple(self)

    def __len__(self) -> int:
        return self._end - self._start

    def __iter__(self) -> Iterator[SentEntry]:
        keys = self._keys
        answers = self._answers
        for index in range(self._start, self._end):
            yield (keys[index], *_read(answers[index]))

    def __getitem__(self, index: int) -> SentEntry:
        size = self._end - self._start
        if index < 0:
            index += size
        if not 0 <= index < size:
            raise IndexError("SentWindow index out of range")
        at = self._start + index
        return (self._keys[at], *_read(self._answers[at]))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SentWindow):
            return NotImplemented
        return len(self) == len(other) and self.entries == other.entries

    def __hash__(self) -> int:
        return hash(self.entries)

    def __repr__(self) -> str:
        return f"SentWindow({self.entries!r})"

    def shifted(self, new: list[SentEntry], count: int) -> SentWindow:
        """This window followed by ``new``, less its oldest beyond ``count``."""
        return self._shifted([key for key, _, _ in new], [_answer(m, p) for _, m, p in new], count)

    def _shifted(self, keys: list[str], answers: list[_Answer], count: int) -> SentWindow:
        """:meth:`shifted` by ``keys`` with their ``answers`` as a table keeps them."""
        size = self._end - self._start
        drop = max(0, size + len(keys) - count)
        if drop >= size:  # nothing kept
            first = drop - size
            return SentWindow._of(keys[first:], answers[first:])
        start = self._start + drop
        log_keys = self._keys
        log_answers = self._answers
        if len(log_keys) == self._end and start < count:
            # The log ends where this window does: extend it in place.
            log_keys.extend(keys)
            log_answers.extend(answers)
        else:
            # A window shifted from this one already extended the log, or the
            # log's dead head is a window long (left behind): a log of its own.
            log_keys = log_keys[start : self._end] + keys
            log_answers = log_answers[start : self._end] + answers
            start = 0
        window = SentWindow._of(log_keys, log_answers, start)
        text = self._text
        if text is not None:
            lengths = self._lengths
            assert lengths is not None  # (made with the text)
            # The dropped texts and their commas are cut off the text's head.
            cut = sum(_lengths(lengths)[:drop]) + drop if drop else 0
            window._from = (text, cut, lengths[drop * _LENGTH :])
        return window

    def text(self, encode: Callable[[SentEntry], str]) -> str:
        """The entries' texts by ``encode`` (the store's codec) joined by ``","``.

        Made once per window (a later call returns it, whatever ``encode``
        it passes), and each entry's text once along a run of shifted
        windows whose every window is written before it is shifted (a
        window shifted before its text was made starts over).
        """
        text = self._text
        if text is not None:
            return text
        shifted_from = self._from
        if shifted_from is None:
            texts = [encode(entry) for entry in self]
            lengths = _packed(texts)
            text = ",".join(texts)
        else:
            source, cut, lengths = shifted_from
            head = source[cut:] if cut else source
            new = [encode(self[index]) for index in range(len(lengths) // _LENGTH, len(self))]
            if new:
                lengths += _packed(new)
                text = f"{head},{','.join(new)}"
            else:
                text = head
        self._text = text
        self._lengths = lengths
        self._from = None
        return text


class SentResults:
    """The platform's answers to the last ``capacity`` sends, by idempotency key.

    A send repeated with a key found here (a caller's retry, a request the
    cluster delivered twice, a retry after the channel moved) is answered
    with the first answer instead of being sent again. The key reused for
    another message (another peer, text, media...) is refused instead: each
    answer keeps the print of what it answered (:meth:`reused`; an answer
    restored from a checkpoint has none, and answers any send of its key).
    The table is made with the first send: a receive-only channel never
    needs one.

    Design notes:

    - **Nothing here for the collector to count, and little to walk.** The table holds
      up to ``capacity`` answers for every channel that sends (a million at
      1,000 busy channels), for as long as the node runs. Each answer is
      kept as one string, ``"<platform message id>\\0<peer>\\0<print>"`` (a
      tuple where the id holds a NUL), which the collector does not track. A
      tuple per answer, as before, was untracked only by the first collection
      that saw it, and every one made counted towards that collection: until each
      channel's table was full (a put then frees what it replaces), the
      answers set off a young collection every 20,000 sends, 25-48 ms each at
      1,000 channels (measured in the channels benchmark). A checkpoint's
      :class:`SentWindow` holds the same strings, in two lists a busy
      channel's windows share: a full collection walks them (up to twice a
      window's answers each, about 800 references a busy channel, where a
      list of the window's 256 texts was before).
    - **A checkpoint's list is shifted, not rebuilt.** A checkpoint asks for
      the same newest ``count`` answers every second, and a busy channel adds
      only a few between two asks. So :meth:`newest` keeps what it last
      returned (a window that keeps its encoding for the next checkpoint) and
      the keys put since, and the next ask shifts that window by those
      few instead of walking ``count`` entries of the table backwards again
      (:class:`SentWindow`: a shift touches the new answers only).
      A put of a key already here moves it out of order: it drops the window
      (the next ask walks the table), as do more puts since the last ask than
      the window holds (a channel nobody checkpoints keeps no list that grows).
    """

    __slots__ = ("_put_since", "_results", "_window", "_window_count", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        # key -> its answer (see _Answer)
        self._results: OrderedDict[str, _Answer] | None = None
        # What newest(_window_count) returned last, and the keys put since,
        # oldest first (still in the table: no more of them than a window
        # holds, which is no more than the table does); None when there is no
        # window to shift (made with the first window: most channels never
        # have one).
        self._window: SentWindow | None = None
        self._window_count = 0
        self._put_since: list[str] | None = None

    def __len__(self) -> int:
        return 0 if self._results is None else len(self._results)

    def get(self, key: str) -> tuple[str, str] | None:
        """``(platform message id, peer)`` of the send with ``key``, if recent."""
        answer = None if self._results is None else self._results.get(key)
        return None if answer is None else _read(answer)

    def reused(self, key: str, printed: str) -> bool:
        """Whether ``key`` was answered for another operation than the one
        whose print is ``printed`` (``providers.operations.operation_print``):
        the key reused for another message, which its answer does not answer.
        ``False`` when the key is not here or its print is not known."""
        answer = None if self._results is None else self._results.get(key)
        if answer is None:
            return False
        kept = _printed(answer)
        return bool(kept) and kept != printed

    def put(self, key: str, platform_message_id: str, peer: str, printed: str = "") -> None:
        """Remember the answer to the send of ``key``; ``printed``: the sent
        operation's print ("" where it is not known)."""
        results = self._results
        if results is None:
            results = self._results = OrderedDict()
        answer = _answer(platform_message_id, peer, printed)
        if key in results:  # the key was here: it moves, out of the window's order
            results[key] = answer
            results.move_to_end(key)
            self._drop_window()
            return
        results[key] = answer
        if self._window is not None:
            since = self._put_since
            assert since is not None  # made with the window
            if len(since) < self._window_count:
                since.append(key)
            else:  # the window is all new: walking the table is no dearer
                self._drop_window()
        if len(results) > self.capacity:
            results.popitem(last=False)

    def newest(self, count: int) -> SentWindow:
        """The newest ``count`` answers, oldest first.

        The last ask's answers shifted by the puts since, when it asked for
        as many and nothing moved; else only the newest ``count`` entries
        of the table are walked.
        """
        results = self._results
        if not results:
            return _NO_ANSWERS
        window = self._window
        since = self._put_since
        if window is not None and since is not None and count == self._window_count:
            if since:
                # The table's newest are the window's then, and the puts since
                # (none of them was there before, or the window was dropped).
                answers = [results[key] for key in since]
                window = self._window = window._shifted(since, answers, count)
                since.clear()
            return window
        newest_first = list(itertools.islice(reversed(results.items()), count))
        newest_first.reverse()
        window = SentWindow._of(
            [key for key, _ in newest_first], [answer for _, answer in newest_first]
        )
        # A table smaller than the window drops its oldest answers on a put,
        # which may be the window's: such a window is not kept.
        if count <= self.capacity:
            self._window = window
            self._window_count = count
            if since is None:
                self._put_since = []
            else:
                since.clear()
        return window

    def _drop_window(self) -> None:
        self._window = None
        if self._put_since is not None:
            self._put_since.clear()


_NO_ANSWERS: Final = SentWindow()


@attrs.frozen(kw_only=True)
class ChannelStatistics:
    """A snapshot of one channel."""

    channel_id: str
    provider: str
    status: ChannelStatus
    reconnect_attempt: int
    connected_since: float | None
    sent: int
    send_failures: int
    received: int
    duplicates: int
    reconnects: int
    rate_limit_waits: int
    dead_letters: int
    subscriber_drops: int
    restarts: int
    last_error: str | None


class ChannelTimings(Protocol):
    """Where a channel reports how long things took (the node's histograms).

    Called in the channel's task; an implementation must not block.
    """

    def connected(self, seconds: float) -> None:
        """A handshake took ``seconds``, from its turn at the connect gate."""

    def delivered(self, seconds: float) -> None:
        """An inbound event took ``seconds`` from the platform to the subscribers."""


class LinkWatch(Protocol):
    """Told whenever a channel's live link comes or goes (the node's webhook index).

    Called in the channel's task at the moment the link is set or dropped;
    an implementation must not block.
    """

    def link_changed(self) -> None:
        """A channel's live connection was set, or dropped."""


def seen_key(event: InboundMessage | MessageEdited) -> str:
    """The event's key in the channel's window of recent ids (``seen``)."""
    if isinstance(event, MessageEdited):
        return f"edit:{event.platform_message_id}:{event.edit_id or event.timestamp}"
    return event.platform_message_id


def kept_seen(memory: ChannelMemory, count: int) -> tuple[str, ...]:
    """The newest ``count`` ids of ``seen`` whose events are kept: not those still
    in the channel's hands (``pending``). A checkpoint holds these: one taken
    while an event waits for the store, then a kill -9, made the platform's
    redelivery of that event a duplicate, never kept nor published."""
    newest = memory.seen.newest(count)
    unkept = {
        seen_key(event)
        for event, _ in memory.pending
        if isinstance(event, InboundMessage | MessageEdited)
    }
    return tuple(key for key in newest if key not in unkept) if unkept else newest


class ChannelMemory:
    """Everything about a channel that must outlive one actor incarnation."""

    __slots__ = (
        "_breaker",
        "_limiter",
        "_settings",
        "_shared",
        "backoff",
        "checkpoints",
        "connected_since",
        "counters",
        "current_ref",
        "dead_letters",
        "dirty",
        "in_store",
        "incarnations",
        "last_error",
        "limits",
        "links",
        "pending",
        "rng",
        "seen",
        "sent",
        "session",
        "status",
        "subscribers",
        "tenure",
        "timings",
    )

    def __init__(
        self,
        limits: PlatformLimits,
        settings: ChannelSettings,
        *,
        rng: random.Random | None = None,
        session: SessionState | None = None,
    ) -> None:
        self.limits = settings.limits or limits
        self.rng = rng or _JITTER
        self._settings = settings
        # The limiters and the breaker are made by the first send (or the
        # first checkpoint or statistics that need them): a storm of ten
        # thousand connects makes none, and a receive-only channel never does.
        self._limiter: CompositeLimiter | None = None
        self._shared: CompositeLimiter | None = None  # limits off: the one channels share
        self._breaker: CircuitBreaker | None = None
        self.backoff = Backoff(
            settings.reconnect,
            max_attempts=settings.max_reconnects,
            reset_after=settings.reset_after,
            rng=self.rng,
        )
        self.session = session
        self.seen = RecentIds(settings.dedupe_window)
        self.sent = SentResults(SENT_KEPT)
        self.dead_letters = DeadLetterQueue()
        self.subscribers: list[tuple[EventReceiver, Any]] = []
        # Inbound events the sink refused (the store is down), oldest first:
        # kept here so a kill loses none, and handed over before newer ones.
        self.pending: list[Any] = []
        # Receipts the store took without the reader waiting, not yet
        # published, and what rides behind them (``.inbound.receipt_kept``):
        # a list made by the first (a few at a time; an empty deque is 600 B).
        self.in_store: list[Any] | None = None
        self.status = ChannelStatus.IDLE
        self.connected_since: float | None = None
        self.last_error: str | None = None
        self.incarnations = 0
        # The ref of the newest incarnation: a supervisor restarted from
        # scratch starts its children under new refs, and handles follow.
        self.current_ref: Any = None
        # Durable state changed since the last checkpoint; the sink (the
        # node's checkpoint writer, if any) is told once per change of heart.
        self.dirty = False
        self.checkpoints: CheckpointSink | None = None
        # In a cluster: until when this node may hold the connection (its lease).
        self.tenure: Tenure | None = None
        # The node's histograms for this channel's provider, if it keeps them.
        self.timings: ChannelTimings | None = None
        # Told when the live link comes or goes, if anyone keeps an index of links.
        self.links: LinkWatch | None = None
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "sent",
                "send_failures",
                "received",
                "duplicates",
                "reconnects",
                "rate_limit_waits",
                "subscriber_drops",
                "sink_failures",
            ),
            0,
        )

    @property
    def limiter(self) -> CompositeLimiter:
        """The channel's rate limiters: its own bucket, then one per peer.

        With its limits off, and until a platform asks it to wait, a channel
        reads one limiter shared by every such channel (it keeps no state:
        nothing it admits changes it), so it holds none of its own (0.7 KB).
        Read it again after anything that may pause: a pause goes to
        :meth:`own_limiter`.
        """
        limiter = self._limiter
        if limiter is None:
            limiter = self._shared  # (looked up once: a send reads it, and hashing limits costs)
            if limiter is None:
                limits = self.limits
                if unlimited(limits):
                    limiter = self._shared = _free_limiter(limits)
                else:
                    limiter = self._limiter = new_limiter(limits)
        return limiter

    @limiter.setter
    def limiter(self, limiter: CompositeLimiter) -> None:
        self._limiter = limiter

    def own_limiter(self) -> CompositeLimiter:
        """The channel's own limiter, made if it reads the shared one: what a pause changes."""
        limiter = self._limiter
        if limiter is None:
            limiter = self._limiter = new_limiter(self.limits)
        return limiter

    @property
    def limiter_made(self) -> bool:
        """Whether the channel has a limiter of its own yet (until then its
        :attr:`limiter` is a fresh one, or the shared one of limits off)."""
        return self._limiter is not None

    @property
    def breaker(self) -> CircuitBreaker:
        """The send circuit breaker."""
        breaker = self._breaker
        if breaker is None:
            settings = self._settings
            breaker = self._breaker = CircuitBreaker(
                failure_threshold=settings.breaker_threshold, reset_timeout=settings.breaker_reset
            )
        return breaker

    @breaker.setter
    def breaker(self, breaker: CircuitBreaker) -> None:
        self._breaker = breaker

    @property
    def breaker_made(self) -> bool:
        """Whether :attr:`breaker` exists yet (until then it is a fresh one)."""
        return self._breaker is not None

    def touch(self) -> None:
        """Durable state changed: have it checkpointed (the next round of the writer).

        Cheap when already dirty: one attribute test.
        """
        if not self.dirty:
            self.dirty = True
            sink = self.checkpoints
            if sink is not None:
                sink.mark(self)


def channel_statistics(channel_id: str, provider: str, memory: ChannelMemory) -> ChannelStatistics:
    """A snapshot of a channel, from its memory (valid between incarnations too)."""
    counters = memory.counters
    return ChannelStatistics(
        channel_id=channel_id,
        provider=provider,
        status=memory.status,
        reconnect_attempt=memory.backoff.failures,
        connected_since=memory.connected_since,
        sent=counters["sent"],
        send_failures=counters["send_failures"],
        received=counters["received"],
        duplicates=counters["duplicates"],
        reconnects=counters["reconnects"],
        rate_limit_waits=counters["rate_limit_waits"],
        dead_letters=len(memory.dead_letters),
        subscriber_drops=counters["subscriber_drops"],
        restarts=max(0, memory.incarnations - 1),
        last_error=memory.last_error,
    )
