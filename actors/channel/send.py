"""The send path: one outbound message from the caller to the platform and back.

Design:
- Every operation takes this path, not only messages: edits, deletes,
  typing indicators, read marks, reactions and uploads
  (:data:`~providers.operations.Operation`) pass the same limiters, breaker,
  retries and dead letters; only the provider call differs
  (:func:`~providers.operations.perform`). An operation the platform lacks
  is refused first (``Unsupported``), before any budget is spent.
- The order of checks is fixed: support and length → rate limiters (per channel and per
  peer; waiting never spends budget) → circuit breaker → a live connection
  → a limiter token → the provider's send → the ``SendResult``.
- What happens after an error is a pure decision, :func:`decide`, from the
  error's class alone (as ``add_restart`` decides a supervisor's restart):
  a ``RateLimited`` pauses the limiter for exactly ``retry_after`` and is not
  a failure (a send refused so again waits at least its send backoff: a
  platform that keeps answering 429 with no wait is not hammered); a
  ``PermanentSendError`` is dead-lettered at once; a ``FatalError`` fails
  the channel; any other ``ProviderError`` retries with
  the send backoff until ``send_attempts`` is spent, then is dead-lettered
  (a ``TransientError`` with a ``retry_after``, a 503's, waits at least that).
  The loop in :class:`SendPath` only applies decisions and sleeps.
- A retry reuses the message's idempotency key, so a platform that
  deduplicates never delivers it twice.
- Sends are pipelined: the actor takes up to its window of sends off the
  mailbox (:mod:`.window`) and runs each peer's chain in a task of its own,
  answering each asker when its send is done (``lowlevel.defer_reply``).
  While the actor is idle, an asked send enters the window from the asker's
  own task (``receive_at_once``), with no hop through the mailbox, as long
  as the window keeps room; the rest take the mailbox, in order.
  Sends waiting for the channel's limiter take turns (:mod:`.pacing`):
  one sleeps on the clock, the rest queue behind it.
  A refusal found before any budget is spent (unsupported, too long) is
  answered at once. A chain cut off by the end of the incarnation goes back
  to the front of the mailbox (``lowlevel.requeue``) for the next one: a
  send cut on the wire then goes again, with the same idempotency key
  (at least once, as after a drain).
- A chain's send that would wait for nothing (a connection that can write
  now, ``can_start_at_once``; a closed breaker; nobody in line for the
  limiter; a token now) takes no task: its frame goes out in the task that
  launched it, and the connection's reader hands its fate to
  :meth:`SendPath._landed`, which answers the asker and launches the next
  send of the chain. A failed first attempt goes on in a task from that
  error; a defect is handled as one in a task (``_give_up_on``).
"""

from __future__ import annotations

import contextlib
import enum
import functools
import logging
import math
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import attrs
import outcome
import trio
from trio.lowlevel import ParkingLot

from providers.base import (
    FatalError,
    MediaTooLarge,
    MessageTooLong,
    OutboundMessage,
    PermanentSendError,
    ProviderError,
    RateLimited,
    RateLimitScope,
    SendResult,
    TransientError,
)
from providers.operations import (
    EditMessage,
    Operation,
    check_supported,
    operation_print,
    perform,
    remembered_result,
)

from .. import lowlevel
from ..backoff import BackoffPolicy
from ..errors import (
    ActorCrashed,
    ChannelFailed,
    ChannelUnavailable,
    CircuitOpen,
    KeyReused,
    NotInActorContext,
    SendFailed,
)
from .pacing import Turns
from .state import ChannelStatus
from .window import Flight, SendWindow

if TYPE_CHECKING:
    from providers.base import ChannelConfig, Connection, Provider

    from ..ref import ActorRef
    from .state import ChannelMemory, ChannelSettings

# What a send may end with, as its asker hears it (anything else is a defect).
_REFUSALS: Final = (ChannelFailed, ChannelUnavailable, SendFailed, PermanentSendError)

__all__ = ["SendAction", "SendDecision", "SendPath", "decide"]


class SendAction(enum.Enum):
    """What the send loop does after a failed attempt."""

    PAUSE = "pause"
    """The platform asked us to wait: hold the limiter, then try again (not a failure)."""
    RETRY = "retry"
    """A transient failure: wait ``delay``, then try again with the same key."""
    DEAD_LETTER = "dead_letter"
    """Give up on this message: dead-letter it and tell the caller."""
    FAIL_CHANNEL = "fail_channel"
    """The platform refuses the channel for good: dead-letter and stop the channel."""


@attrs.frozen(kw_only=True)
class SendDecision:
    """The verdict on one failed attempt.

    Attributes:
        action: what to do.
        delay: seconds before the next attempt (``RETRY``), or the pause
            the platform asked for (``PAUSE``).
        pause_peer: for ``PAUSE``, the one peer the pause covers; ``None``
            pauses the whole channel.
        breaker_failure: whether the circuit breaker counts a failure
            (otherwise the attempt counts as a success for it: the platform
            answered).
    """

    action: SendAction
    delay: float = 0.0
    pause_peer: str | None = None
    breaker_failure: bool = False


def decide(
    error: ProviderError,
    *,
    peer: str,
    attempts: int,
    max_attempts: int,
    backoff: BackoffPolicy,
    rng: random.Random,
    limited: int = 0,
) -> SendDecision:
    """Decide what follows a failed send attempt, from the error's class alone.

    Args:
        error: what the provider raised.
        peer: the message's recipient.
        attempts: attempts made so far, this one included (a rate limit spends none).
        max_attempts: the most attempts a transient failure gets.
        backoff: the delay policy between transient retries.
        rng: the jitter source.
        limited: the platform's rate-limit refusals of the send so far, this one included.

    Returns:
        The decision; the caller applies it.
    """
    if isinstance(error, RateLimited):
        per_peer = error.scope is RateLimitScope.PEER
        delay = error.retry_after
        if limited > 1:
            # Refused before: a platform that keeps asking for (next to) no wait
            # is not tried again at once, for ever; the send backoff's delay at least.
            delay = max(delay, backoff.compute(limited - 1, rng=rng))
        return SendDecision(
            action=SendAction.PAUSE,
            delay=delay,
            pause_peer=(error.peer or peer) if per_peer else None,
        )
    if isinstance(error, PermanentSendError):
        return SendDecision(action=SendAction.DEAD_LETTER)
    if isinstance(error, FatalError):
        return SendDecision(action=SendAction.FAIL_CHANNEL)
    if attempts >= max_attempts:
        return SendDecision(action=SendAction.DEAD_LETTER, breaker_failure=True)
    delay = backoff.compute(attempts, rng=rng)
    if isinstance(error, TransientError) and error.retry_after is not None:
        delay = max(delay, error.retry_after)  # the platform's least wait (a 503's)
    return SendDecision(action=SendAction.RETRY, delay=delay, breaker_failure=True)


def _closed_under(error: trio.ClosedResourceError) -> TransientError:
    """The send's error for a connection that was closed while the send used it."""
    transient = TransientError(
        f"the connection was closed while the send was under way ({error}); "
        "it goes again on the next connection"
    )
    transient.__cause__ = error
    return transient


async def _raise(error: Exception) -> None:
    try:
        raise error
    finally:
        del error  # no cycle through this frame's traceback


class SendPath:
    """The send half of a :class:`~actors.ChannelActor` (a mixin).

    It reads the actor's ``config``, ``provider``, ``memory`` and
    ``settings``, and relies on the connection half for
    ``_live_connection``, ``_raise_if_failed`` and ``_fail``.
    """

    # Empty slots, so the actor keeps no __dict__; hidden from mypy, which
    # would otherwise refuse the actor's own slots assigned here.
    if not TYPE_CHECKING:
        __slots__ = ()

    config: ChannelConfig
    provider: Provider
    memory: ChannelMemory
    settings: ChannelSettings
    _window: SendWindow
    _turns: Turns | None
    _conn: Connection | None
    _breaker_moved: trio.Event | None
    _now: Callable[[], float]  # the run's clock reader (trio.current_time, two frames fewer)
    _calls: int  # sends in a call to the platform now
    _calls_lot: ParkingLot | None  # who waits for them (made by the first)

    if TYPE_CHECKING:

        @property
        def ref(self) -> ActorRef: ...

        def start_task(self, fn: Any, *args: Any) -> None: ...

        async def _live_connection(self) -> Connection: ...

        def _raise_if_failed(self) -> None: ...

        def _fail(self, error: BaseException) -> None: ...

        @property
        def _log(self) -> logging.LoggerAdapter[logging.Logger]: ...

    async def _keep_dead_letters(self) -> None:
        """Write a new dead letter at once, before its sender hears why (not in a second)."""
        memory = self.memory
        if memory.checkpoints is None:
            return
        try:
            await memory.checkpoints.write_now(memory)
        except Exception as exc:  # kept dirty: the writer's next round tries again
            self._log.warning("%r: a dead letter could not be written at once: %s", self, exc)

    def _unheard(self, message: Operation, error: BaseException, *, again: bool) -> None:
        """A refusal its sender does not hear: the message becomes a dead letter
        (again), written at once, so that nothing is lost.

        ``again``: a replayed letter (told), put back whatever else is among
        the letters (its own was taken; another of its key may be there).
        Else a kept message's resend: once per key (see :meth:`_keep_refused`).
        """
        memory = self.memory
        letters = memory.dead_letters
        if again:
            letters.add(message, error, 0)
        elif not letters.add_once(message, error, 0):
            return
        memory.touch()
        # (As the incarnation ends there is no task to start: its stop's checkpoint writes it.)
        with contextlib.suppress(RuntimeError, NotInActorContext):
            self.start_task(self._keep_dead_letters)
        self._log.error("%r: %s; it is in the dead-letter queue", self, error)

    async def _keep_refused(
        self, message: Operation, error: PermanentSendError, *, again: bool = False
    ) -> None:
        """A refused message nobody waits for becomes a dead letter (see ``Send.keep_refused``).

        Once per idempotency key: a message already among the letters (its
        resend was dead-lettered, then the process died before the node
        forgot it) is not added again; except a replayed one (``again``),
        whose own letter was taken.
        """
        letters = self.memory.dead_letters
        if again:
            letters.add(message, error, 0)
        elif not letters.add_once(message, error, 0):
            return
        self.memory.touch()
        await self._keep_dead_letters()

    def _check(self, message: Operation) -> None:
        """Refuse before sending what can never go: an operation the platform
        lacks, a text over the limit, an upload over the limit."""
        if type(message) is OutboundMessage and message.media is None:
            # Most sends: a message (a send, which every platform has) with
            # one text to measure; one over the limit is refused below.
            text = message.text
            if text is None or len(text) <= self.memory.limits.max_text_length:
                return
        check_supported(self.provider, message)
        limits = self.memory.limits
        if type(message) is EditMessage:
            texts: tuple[tuple[str, str | None], ...] = (("text", message.text),)
        elif type(message) is OutboundMessage:
            media = message.media
            caption = media.caption if media is not None else None
            texts = (("text", message.text), ("caption", caption))
            content = media.content if media is not None else None
            if content is not None and len(content) > limits.max_upload_bytes:
                raise MediaTooLarge(
                    f"an upload of {len(content)} bytes exceeds {self.provider.name}'s limit "
                    f"of {limits.max_upload_bytes} on channel {self.config.channel_id!r}; "
                    "send a link instead",
                    peer=message.peer,
                )
        else:
            return
        limit = limits.max_text_length
        for field, text in texts:
            if text is not None and len(text) > limit:
                raise MessageTooLong(
                    f"{field} of {len(text)} characters exceeds {self.provider.name}'s limit "
                    f"of {limit} on channel {self.config.channel_id!r}; split the message",
                    peer=message.peer,
                )

    # --- the window -------------------------------------------------------------------

    async def _take(self, send: Any, message: Operation) -> Any:
        """Take a ``Send`` off the mailbox into the window (the actor's task).

        Returns at once with the refusal of what can never go; otherwise
        the asker is answered when the send is done, and this returns once
        the window has room for the next one (until then the actor takes no
        more messages, which wait in the mailbox).
        """
        try:
            self._check(message)
        except PermanentSendError as exc:
            if getattr(send, "keep_refused", False):
                await self._keep_refused(message, exc, again=getattr(send, "replayed", False))
            return outcome.Error(exc)
        if self._window.elsewhere(message):
            return self._refuse_elsewhere(send, message)
        window = self._admit(send, message)
        if window.full:
            await window.wait_for_room()
        return None

    def _take_at_once(self, send: Any, message: Operation) -> Any:
        """Take an asked ``Send`` into the window in the asker's task (the actor is idle).

        Only while the window keeps room after it: the actor's own ``_take``
        then finds room as ever. Otherwise (and for a refusal that must be
        kept) it is queued (``AT_LEISURE``) and ``_take`` handles it.
        """
        window = self._window
        if len(window) + 1 >= window.capacity or window.closing:
            return lowlevel.AT_LEISURE
        try:
            self._check(message)
        except PermanentSendError as exc:
            if getattr(send, "keep_refused", False):
                return lowlevel.AT_LEISURE
            return outcome.Error(exc)
        if window.elsewhere(message):
            return self._refuse_elsewhere(send, message)
        self._admit(send, message)
        return None

    def _refuse_elsewhere(self, send: Any, message: Operation) -> outcome.Error:
        """The refusal of a send whose key is on its way to another peer (a
        send nobody waits for, or a kept one's, a dead letter too)."""
        key = message.idempotency_key
        error = KeyReused(
            f"channel {self.config.channel_id!r}, idempotency key {key!r}: the key is being "
            "sent to another peer; this message was not sent (send it with a key of its own)",
            channel_id=self.config.channel_id,
        )
        if getattr(send, "keep_refused", False):
            self._unheard(message, error, again=getattr(send, "replayed", False))
        return outcome.Error(error)

    def _admit(self, send: Any, message: Operation) -> SendWindow:
        """Take the ``Send`` being handled into the window; its chain flies if it heads one."""
        ask = lowlevel.defer_reply(self.ref)
        flight = Flight(message, send if ask is None else ask)
        window = self._window
        if window.admit(flight):
            self._launch(flight)
        return window

    def _launch(self, flight: Flight) -> None:
        """Send the head of a chain: at once if nothing stands in its way, else in a task."""
        head = self._unanswered(flight)
        if head is None:
            return
        flight = head
        try:
            if self._fly_at_once(flight):
                return
        except Exception as exc:  # a defect, outside any task of the send path
            self._give_up_on(flight, exc)
            return
        self.start_task(self._fly, flight)

    def _give_up_on(self, flight: Flight, defect: Exception) -> None:
        """A defect while sending ``flight`` at once: what ``_outcome`` does in a task.

        Its asker hears ``ActorCrashed``, the rest of its chain goes back to
        the mailbox, and the actor crashes (from a task of its own: this may
        run in the connection's reader, or in the asker's task). An answer
        the connection still brings for it is ignored (``settled``).
        """
        self._tell_defect(flight, defect)
        self._abandon(flight)
        self.start_task(_raise, defect)

    def _tell_defect(self, flight: Flight, defect: Exception) -> None:
        """Settle ``flight`` for a defect: its asker hears ``ActorCrashed`` (once)."""
        flight.settled = True
        item = flight.item
        if type(item) is lowlevel.Ask:
            error = ActorCrashed(
                f"{self.ref!r} raised {type(defect).__name__} while sending {flight.message!r}"
            )
            error.__cause__ = defect
            item.fail(error)

    def _fly_at_once(self, flight: Flight) -> bool:
        """Start ``flight``'s first attempt in this task, with no task of its own.

        Only on the common path, where the send would wait for nothing: a
        live connection that can write now (``can_start_at_once``), a
        closed breaker, no send in line for the channel's limiter, and a
        token from the limiter at once. Its fate comes back to
        :meth:`_landed`; a failed first attempt goes on in a task, down the
        send path from its error (retries, pauses, dead letters), as if
        that task had made it.

        Returns:
            False if it did not start (nothing was spent): send it in a task.
        """
        conn = self._conn
        if conn is None:
            return False
        memory = self.memory
        tenure = memory.tenure
        if tenure is not None and not tenure.valid():  # thawed past it: see _live_connection
            return False
        message = flight.message
        can_start = getattr(conn, "can_start_at_once", None)
        if can_start is None or not can_start(message):
            return False
        turns = self._turns
        if (
            memory.status is ChannelStatus.FAILED
            or not memory.breaker.closed
            or (turns is not None and not turns.idle)
        ):
            return False
        limiter = memory.limiter
        now = self._now()
        peer = message.peer
        if not limiter.admits_freely(now, key=peer):  # limits on: charge it, or wait in a task
            if limiter.delay(now, key=peer) > 0 or not limiter.try_acquire(now, key=peer):
                return False
            if not memory.dirty:  # the limiter moved: checkpoint it (write-behind)
                memory.touch()
        # (Limits off, nothing moved: the answer marks the memory, in _settle.)
        try:
            conn.start_at_once(message, functools.partial(self._landed, flight))  # type: ignore[attr-defined]
        except ProviderError as exc:  # its frame could not be made: nothing went out
            self._landed(flight, None, exc)
        return True

    def _landed(
        self, flight: Flight, result: SendResult | None, error: ProviderError | None
    ) -> None:
        """The fate of a send started at once, in the task that learnt it (the
        connection's reader or the run's read hub, or whichever ended the
        connection).

        A kill as the ack came shows as the current task's cancelled scope
        (the reader's). In the read hub's task it does not: the hub hands
        the rest of a read to the reader once a callback cancelled it, but
        the callback's own answer may still start the next send, which the
        kill's close then fails back to the mailbox (sent again under its
        key after the restart).
        """
        if flight.settled:  # given up on already (a defect as it started)
            return
        if error is not None:
            try:  # the rest of the send path, from that error, in a task
                self.start_task(self._fly, flight, error)
            except (RuntimeError, NotInActorContext):  # the incarnation is over: to the mailbox
                self._abandon(flight)
            return
        memory = self.memory
        memory.breaker.record_success(self._now())
        if self._breaker_moved is not None:
            self._breaker_told()
        if type(flight.message) is OutboundMessage:
            memory.counters["sent"] += 1
        following = self._settle(flight, result)
        if following is None:
            return
        if trio.current_effective_deadline() == -math.inf:
            # The incarnation ends (a kill as the ack came): nothing more goes
            # out on this link; the task hands the chain back to the mailbox.
            self.start_task(self._fly, following)
        else:
            self._launch(following)

    async def _fly(self, flight: Flight, failed: ProviderError | None = None) -> None:
        """Send a peer's chain, head first, answering each asker in turn.

        ``failed``: the head's first attempt, started at once, failed so.
        """
        if failed is not None:
            # Spawned as the incarnation ends (its connection closed under a
            # kill): the chain goes back, with no failure counted against
            # the platform, as for a send cut off in a task.
            try:
                await trio.lowlevel.checkpoint_if_cancelled()
            except BaseException:
                self._abandon(flight)
                raise
        current: Flight | None = flight
        while current is not None:
            if failed is None:
                current = self._unanswered(current)
                if current is None:
                    break
            answered = False
            try:
                result = await self._outcome(current, failed)
                answered = True
            finally:
                if not answered:  # cancelled (the incarnation ends), or a defect
                    self._abandon(current)
            failed = None
            current = self._settle(current, result)

    def _unanswered(self, flight: Flight) -> Flight | None:
        """``flight``, or the first send of its chain from it whose key is not
        answered yet; the others are answered as their key was, not sent.

        A send of a key the channel has answered since the send was asked
        (its caller gave up waiting and asked again while the first was on
        its way, and the second waited behind it in its peer's chain) would
        go out twice: the node looks for the answer before it asks, not
        after the send has waited its turn.
        """
        sent = self.memory.sent
        window = self._window
        current: Flight | None = flight
        while current is not None:
            message = current.message
            key = message.idempotency_key
            known = sent.get(key)
            if known is None:
                return current
            item = current.item
            if sent.reused(key, operation_print(message)):
                # Another message under an answered key: refused, not answered as it.
                error = KeyReused(
                    f"channel {self.config.channel_id!r}, idempotency key {key!r}: the key "
                    "was sent already with another message; this one was not sent (send it "
                    "with a key of its own)",
                    channel_id=self.config.channel_id,
                )
                asked = type(item) is lowlevel.Ask
                if not asked or getattr(item.msg, "keep_refused", False):
                    # A replayed dead letter (nobody waits) or a kept message's
                    # resend: a dead letter (again), saying why, not lost.
                    self._unheard(message, error, again=not asked)
                if asked:
                    item.fail(error)
                del error  # (no cycle through this frame)
            elif type(item) is lowlevel.Ask:
                item.reply(remembered_result(message, known))
            current = window.finish(current)
            if current is not None and window.closing:
                self._abandon(current)
                return None
        return None

    def _settle(self, flight: Flight, result: Any) -> Flight | None:
        """Answer a chain's head; returns the next send of its chain, to send now."""
        if type(result) is not outcome.Error:
            # Remembered here, not by whoever asked: an asker that gave up
            # waiting (its timeout) and asks again is answered, not sent twice.
            message = flight.message
            key = message.idempotency_key
            memory = self.memory
            if result is None:
                memory.sent.put(key, "", "", operation_print(message))
            else:
                memory.sent.put(
                    key, result.platform_message_id, result.peer, operation_print(message)
                )
            if not memory.dirty:  # checkpointed (write-behind), even if a round came since it left
                memory.touch()
        item = flight.item
        if type(item) is lowlevel.Ask:
            item.reply(result)
        elif type(result) is outcome.Error and not flight.settled:
            # Refused, and not dead-lettered on the way (no connection within
            # connect_wait, a channel failed since): nobody hears it.
            self._unheard(flight.message, result.error, again=True)
        window = self._window
        following = window.finish(flight)
        if following is not None and window.closing:  # stopping: the rest waits in the mailbox
            self._abandon(following)
            return None
        return following

    def _abandon(self, head: Flight) -> None:
        """Hand a cut-off chain back to the mailbox, in order, for the next incarnation."""
        item = head.item
        if head.settled and type(item) is lowlevel.Ask:
            # Dead-lettered, and cut off before its sender heard (a no-op
            # for a defect's, which did hear).
            item.fail(
                SendFailed(
                    f"gave up on {head.message.idempotency_key!r} to {head.message.peer!r} "
                    f"as channel {self.config.channel_id!r} stopped; it is in the "
                    "dead-letter queue",
                    channel_id=self.config.channel_id,
                )
            )
        lowlevel.requeue(self.ref, [each.item for each in self._window.abandon(head)])

    async def _outcome(self, flight: Flight, failed: ProviderError | None = None) -> Any:
        """The send's result, or its refusal as ``outcome.Error``."""
        message = flight.message
        try:
            return await self._send(message, flight, failed)
        except _REFUSALS as exc:
            return outcome.Error(exc)
        except Exception as exc:
            # A defect: the actor crashes, and this send's asker hears why
            # (as if it had crashed the actor on its own, one at a time).
            self._tell_defect(flight, exc)
            raise
        finally:
            failed = None  # the refusal may be this one, and holds this frame: no cycle

    # --- one send -----------------------------------------------------------------------

    async def _send(
        self,
        message: Operation,
        flight: Flight | None = None,
        failed: ProviderError | None = None,
    ) -> SendResult | None:
        """Send (or perform the operation) until the platform accepts, or raise why not.

        ``failed``: the first attempt was made elsewhere (at once) and failed so.

        Returns:
            The ``SendResult`` of a message or an edit; ``None`` for the other operations.

        Raises:
            PermanentSendError: the platform will never take it (dead-lettered,
                except a too-long text, a too-large upload and an unsupported
                operation, refused before sending).
            ChannelFailed: the channel failed for good (dead-lettered).
            SendFailed: transient failures outlasted the attempts (dead-lettered).
            ChannelUnavailable: no connection within ``connect_wait``.
        """
        memory = self.memory
        breaker = memory.breaker
        peer = message.peer
        attempts = 0
        limited = 0  # the platform's rate limits: they spend no attempt
        holding = False  # woken in turn (or slept for all): the next waits on this send
        try:
            if failed is not None:
                if isinstance(failed, RateLimited):
                    limited = 1
                else:
                    attempts = 1
                try:
                    await self._after(failed, message, attempts, flight, limited)
                finally:
                    failed = None  # what it raises may be this one: no cycle through this frame
            while True:
                self._raise_if_failed()
                # Read again at each turn: a pause gives a channel whose limits
                # are off its own limiter in place of the shared one.
                limiter = memory.limiter
                now = self._now()
                delay = limiter.delay(now, key=peer)
                if delay > 0:
                    memory.counters["rate_limit_waits"] += 1
                    until = now + delay
                    if until <= limiter.shared_deadline():  # everyone's turn, not this peer's
                        turns = self._turns
                        if turns is None:  # made by the first wait: most channels never queue
                            turns = self._turns = Turns()
                        await turns.wait(until)
                        holding = True
                    else:
                        if self._turns is not None:
                            self._turns.pass_on()  # not waiting in line: the next may go
                        await trio.sleep(delay)
                    continue
                try:
                    round_ = breaker.allow(now)
                except CircuitOpen as exc:
                    await self._breaker_wait(exc.retry_at)
                    continue
                trial = not breaker.closed  # (a trial slot taken: given back if no call follows)
                try:
                    conn = await self._live_connection()
                except BaseException:
                    if trial:
                        breaker.release(round_)  # (held a reset_timeout, the others waiting)
                        self._breaker_told()
                    raise
                if not memory.limiter.try_acquire(self._now(), key=peer):
                    # Its trial slot back, the breaker as it was: nothing reached the
                    # platform (a success recorded here closed it, and let every
                    # send it held go to a platform that may still be down).
                    if trial:
                        breaker.release(round_)
                        self._breaker_told()
                    continue
                if self._turns is not None:
                    self._turns.pass_on()  # this turn is taken: the next in line may go or wait
                holding = False
                if not memory.dirty:  # the limiter moved: checkpoint it (write-behind)
                    memory.touch()
                attempts += 1
                self._calls += 1
                try:
                    try:
                        result = await perform(conn, message)
                    finally:
                        self._calls -= 1
                        if not self._calls and self._calls_lot is not None:
                            self._calls_lot.unpark_all()
                except ProviderError as exc:
                    if isinstance(exc, RateLimited):
                        attempts -= 1  # (a rate limit spends no attempt)
                        limited += 1
                    await self._after(exc, message, attempts, flight, limited)
                    continue
                except trio.ClosedResourceError as exc:
                    # The connection loop closed the link under the send (a liveness
                    # timeout, a broken poll), between the requests of one send (an
                    # upload's): it goes again on the next, as after a transient failure.
                    await self._after(_closed_under(exc), message, attempts, flight)
                    continue
                except BaseException:
                    if trial:
                        # Cut off (the incarnation ends) or a defect: no outcome will
                        # come, and the send goes again as the next incarnation's.
                        breaker.release(round_)
                        self._breaker_told()
                    raise
                breaker.record_success(self._now())
                self._breaker_told()
                if type(message) is OutboundMessage:
                    memory.counters["sent"] += 1
                return result
        finally:
            if holding and self._turns is not None:
                self._turns.pass_on()  # left the line by an exception or a cancel

    async def _calls_answered(self) -> None:
        """Return once no send is in a call to the platform (``perform``).

        The connection loop waits for this before it leaves the block of a
        connection that ``answers_after_close`` (its end closes the provider's
        HTTP client, and with it each request on its way): a send that
        Telegram had taken when its long poll failed was otherwise cut off,
        and its retry delivered it again.
        """
        while self._calls:
            lot = self._calls_lot
            if lot is None:
                lot = self._calls_lot = ParkingLot()
            await lot.park()

    async def _breaker_wait(self, until: float) -> None:
        """Wait while the breaker refuses: until ``until``, or until a call's outcome
        is recorded (a trial's closes the breaker, or opens it again), whichever
        comes first.

        A breaker HALF_OPEN with its trial slot taken answers ``retry_at`` as
        the time the slot is reclaimed should the trial never report, a whole
        ``reset_timeout`` away: the sends behind it waited that long after
        the trial had closed the breaker, and timed out.
        """
        event = self._breaker_moved
        if event is None:
            event = self._breaker_moved = trio.Event()
        with trio.move_on_at(until):
            await event.wait()

    def _breaker_told(self) -> None:
        """A call's outcome went to the breaker: the sends it holds look again."""
        event = self._breaker_moved
        if event is not None:
            self._breaker_moved = None
            event.set()

    async def _after(
        self,
        error: ProviderError,
        message: Operation,
        attempts: int,
        flight: Flight | None,
        limited: int = 0,
    ) -> None:
        """Decide what follows a failed attempt and carry it out (wait, or raise)."""
        verdict = decide(
            error,
            peer=message.peer,
            attempts=attempts,
            max_attempts=self.settings.send_attempts,
            backoff=self.settings.send_backoff,
            rng=self.memory.rng,
            limited=limited,
        )
        try:
            await self._apply(verdict, error, message, attempts, flight)
        finally:
            del error  # what it raises holds this frame: no cycle through it

    async def _apply(
        self,
        verdict: SendDecision,
        error: ProviderError,
        message: Operation,
        attempts: int,
        flight: Flight | None = None,
    ) -> None:
        """Carry out a decision: record it, then wait, or raise to the caller."""
        memory = self.memory
        memory.touch()
        now = self._now()
        action = verdict.action
        if action is SendAction.FAIL_CHANNEL:
            memory.dead_letters.add(message, error, attempts)
            if flight is not None:
                flight.settled = True
            self._fail(error)
            await self._keep_dead_letters()
            failed = ChannelFailed(
                f"channel {self.config.channel_id!r} failed while sending: {error}; the "
                "message is in the dead-letter queue",
                channel_id=self.config.channel_id,
            )
            failed.dead_lettered = True
            try:
                raise failed from error
            finally:
                del failed  # no cycle through this frame's traceback
        if verdict.breaker_failure:
            memory.breaker.record_failure(now)
        else:
            memory.breaker.record_success(now)
        self._breaker_told()
        if action is SendAction.PAUSE:
            # Not a failure; the limiter wait it causes is counted on the way round.
            until = now + verdict.delay
            if verdict.pause_peer is not None:
                memory.own_limiter().pause_until(until, key=verdict.pause_peer)
            else:
                memory.own_limiter().pause_until(until)
            return
        memory.counters["send_failures"] += 1
        if action is SendAction.RETRY:
            await trio.sleep(verdict.delay)
            return
        memory.dead_letters.add(message, error, attempts)
        if flight is not None:
            flight.settled = True
        await self._keep_dead_letters()
        if isinstance(error, PermanentSendError):
            try:
                raise error
            finally:
                del error  # no cycle through this frame's traceback
        raise SendFailed(
            f"giving up on {message.idempotency_key!r} to {message.peer!r} after "
            f"{attempts} attempts ({type(error).__name__}: {error}); it is in the "
            "dead-letter queue",
            channel_id=self.config.channel_id,
        ) from error
