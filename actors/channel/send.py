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
  a failure; a ``PermanentSendError`` is dead-lettered at once; a
  ``FatalError`` fails the channel; any other ``ProviderError`` retries with
  the send backoff until ``send_attempts`` is spent, then is dead-lettered.
  The loop in :class:`SendPath` only applies decisions and sleeps.
- A retry reuses the message's idempotency key, so a platform that
  deduplicates never delivers it twice.
- The common case costs no hop: while the channel is connected and a send
  would leave at once (nothing queued ahead of it, room in the window, no
  send to its peer out, no limit, pause or open breaker in the way), the
  caller's own task sends it (:meth:`SendPath.send_here`), inside the
  window like any other, with no mailbox, task or timer of the actor's.
  Its call to the platform is shielded from the caller: a caller that
  leaves (a timeout, a cancel) leaves the send to finish, as an ask does.
  If that one attempt fails, the actor takes the send over where it stands
  (the failure's verdict, then the retries, pauses and dead letters below)
  and the caller waits for its answer as an asker (``lowlevel.ask_here``).
- Otherwise sends are pipelined: the actor takes up to its window of sends off the
  mailbox (:mod:`.window`) and runs each peer's chain in a task of its own,
  answering each asker when its send is done (``lowlevel.defer_reply``).
  Sends waiting for the channel's limiter take turns (:mod:`.pacing`):
  one sleeps on the clock, the rest queue behind it.
  A refusal found before any budget is spent (unsupported, too long) is
  answered at once. A chain cut off by the end of the incarnation goes back
  to the front of the mailbox (``lowlevel.requeue``) for the next one: a
  send cut on the wire then goes again, with the same idempotency key
  (at least once, as after a drain).
"""

from __future__ import annotations

import enum
import logging
import random
from typing import TYPE_CHECKING, Any, Final

import attrs
import outcome
import trio

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
)
from providers.operations import EditMessage, Operation, check_supported, perform

from .. import lowlevel
from ..actor import ActorState
from ..backoff import BackoffPolicy
from ..breaker import BreakerState
from ..errors import (
    ActorCrashed,
    AskTimeout,
    ChannelFailed,
    ChannelUnavailable,
    CircuitOpen,
    SendFailed,
)
from .pacing import Turns
from .window import Flight, SendWindow

if TYPE_CHECKING:
    from providers.base import ChannelConfig, Connection, Provider

    from ..ref import ActorRef
    from .state import ChannelMemory, ChannelSettings

# What a send may end with, as its asker hears it (anything else is a defect).
_REFUSALS: Final = (ChannelFailed, ChannelUnavailable, SendFailed, PermanentSendError)

__all__ = ["Send", "SendAction", "SendDecision", "SendPath", "decide"]


@attrs.frozen
class Send:
    """Ask a channel to send ``message`` (or perform the operation); the reply is
    its ``SendResult`` (``None`` for operations that have none).

    ``keep_refused``: a refusal before sending (an unsupported operation, a
    text or upload over the limit) also becomes a dead letter, once per
    idempotency key, as the platform's own refusals are. For a message the
    node accepted earlier and kept, which no caller is waiting to hear about.
    """

    message: Operation
    keep_refused: bool = attrs.field(default=False, kw_only=True)


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
) -> SendDecision:
    """Decide what follows a failed send attempt, from the error's class alone.

    Args:
        error: what the provider raised.
        peer: the message's recipient.
        attempts: attempts made so far, this one included.
        max_attempts: the most attempts a transient failure gets.
        backoff: the delay policy between transient retries.
        rng: the jitter source.

    Returns:
        The decision; the caller applies it.
    """
    if isinstance(error, RateLimited):
        per_peer = error.scope is RateLimitScope.PEER
        return SendDecision(
            action=SendAction.PAUSE,
            delay=error.retry_after,
            pause_peer=(error.peer or peer) if per_peer else None,
        )
    if isinstance(error, PermanentSendError):
        return SendDecision(action=SendAction.DEAD_LETTER)
    if isinstance(error, FatalError):
        return SendDecision(action=SendAction.FAIL_CHANNEL)
    if attempts >= max_attempts:
        return SendDecision(action=SendAction.DEAD_LETTER, breaker_failure=True)
    return SendDecision(
        action=SendAction.RETRY,
        delay=backoff.compute(attempts, rng=rng),
        breaker_failure=True,
    )


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
    _stopping: bool
    _failure: BaseException | None
    _holding: bool  # a send taken off the mailbox waits for room in the window

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

    async def _keep_refused(self, message: Operation, error: PermanentSendError) -> None:
        """A refused message nobody waits for becomes a dead letter (see ``Send.keep_refused``).

        Once per idempotency key: a message already among the letters (its
        resend was dead-lettered, then the process died before the node
        forgot it) is not added again.
        """
        letters = self.memory.dead_letters
        key = message.idempotency_key
        if any(letter.message.idempotency_key == key for letter in letters.letters()):
            return
        letters.add(message, error, 0)
        self.memory.touch()
        await self._keep_dead_letters()

    def _check(self, message: Operation) -> None:
        """Refuse before sending what can never go: an operation the platform
        lacks, a text over the limit, an upload over the limit."""
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
                await self._keep_refused(message, exc)
            return outcome.Error(exc)
        ask = lowlevel.defer_reply(self.ref)
        flight = Flight(message, send if ask is None else ask)
        window = self._window
        if window.full:  # callers' own sends filled it since: wait, holding this one
            self._holding = True  # no caller may overtake it meanwhile
            try:
                await window.wait_for_room()
            finally:
                self._holding = False
        if window.admit(flight):
            self.start_task(self._fly, flight)
        else:
            head = window.head(message.peer)
            if head is not None and head.here and head.landed is None:
                # Behind a send its caller carries: a task of ours runs the rest.
                head.landed = trio.Event()
                self.start_task(self._follow, head)
        if window.full:
            await window.wait_for_room()
        return None

    async def _fly(self, flight: Flight, failed: ProviderError | None = None) -> None:
        """Send a peer's chain, head first, answering each asker in turn.

        ``failed``: the head's first attempt, made on its caller's task, failed so.
        """
        window = self._window
        current: Flight | None = flight
        while current is not None:
            answered = False
            try:
                result = await self._outcome(current, failed)
                answered = True
            finally:
                if not answered:  # cancelled (the incarnation ends), or a defect
                    self._abandon(current)
            failed = None
            item = current.item
            if type(item) is lowlevel.Ask:
                item.reply(result)
            current = window.finish(current)
            if current is not None and window.closing:  # stopping: the rest waits in the mailbox
                self._abandon(current)
                return

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

    async def _follow(self, head: Flight) -> None:
        """Wait for a send its caller carries, then run the chain behind it."""
        landed = head.landed
        assert landed is not None
        waited = False
        try:
            await landed.wait()
            waited = True
        finally:
            if not waited:  # the incarnation ends first: what queued behind goes back
                self._let_go_behind(head, landed.is_set())
        if not head.here:  # its caller's attempt failed: ours from its verdict on
            await self._fly(head, head.failed)
            return
        window = self._window
        following = window.finish(head)
        if following is not None:
            if window.closing:  # stopping: the rest waits in the mailbox
                self._abandon(following)
            else:
                await self._fly(following)

    def _let_go_behind(self, head: Flight, landed: bool) -> None:
        """Hand back what queued behind a caller's send, as the incarnation ends."""
        if not landed:  # still on its way: it stays, and its caller lands it alone
            head.landed = None
            lowlevel.requeue(self.ref, [each.item for each in self._window.cut_followers(head)])
        elif head.here:  # done, and nobody went on from it
            followers = self._window.cut_followers(head)
            self._window.finish(head)
            lowlevel.requeue(self.ref, [each.item for each in followers])
        else:  # failed on its caller's task, handed to us: it goes again, first
            self._abandon(head)

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
            flight.settled = True
            item = flight.item
            if type(item) is lowlevel.Ask:
                error = ActorCrashed(
                    f"{self.ref!r} raised {type(exc).__name__} while sending {message!r}"
                )
                error.__cause__ = exc
                item.fail(error)
            raise

    # --- on the caller's task -----------------------------------------------------------

    def ready_here(self, message: Operation) -> bool:
        """Whether ``message`` would leave at once, so its caller may send it itself.

        Connected, this incarnation running and not stopping, nothing
        queued ahead of it, room in the window and no send to its peer out,
        nobody waiting for the limit, no pause or limit holding its peer,
        the breaker closed. Call :meth:`send_here` right after, with no
        await in between.
        """
        ref = self.ref
        if (
            self._conn is None
            or self._stopping
            or self._failure is not None
            or ref.state is not ActorState.RUNNING
            or lowlevel.current_instance(ref) is not self
            or lowlevel.mailbox_depth(ref)
            or self._holding
            or self._window.closing
            or not self._window.free_for(message.peer)
            or (self._turns is not None and self._turns.busy)
        ):
            return False
        memory = self.memory
        now = trio.current_time()
        return (
            memory.breaker.current_state(now) is BreakerState.CLOSED
            and memory.limiter.delay(now, key=message.peer) == 0.0
        )

    async def send_here(self, message: Operation, *, timeout: float) -> SendResult | None:  # noqa: ASYNC109
        """Send ``message`` on the caller's task (see :meth:`ready_here`).

        One attempt, in the window like any send; if the platform refuses it,
        the actor takes it over from that verdict and this waits for its
        answer, within ``timeout`` (as ``ask`` would).

        Raises:
            The errors of ``ChannelRef.send``.
        """
        deadline = trio.current_time() + timeout
        self._check(message)  # refused before sending, as the actor refuses it
        memory = self.memory
        conn = self._conn
        assert conn is not None
        admitted = memory.limiter.try_acquire(trio.current_time(), key=message.peer)
        assert admitted, "ready_here found no wait, and nothing ran in between"
        if not memory.dirty:  # the limiter moved: checkpoint it (write-behind)
            memory.touch()
        flight = Flight(message, None, here=True)
        self._window.admit(flight)
        try:
            # A caller that leaves (a cancel) does not cut its send on the wire,
            # where its fate would be unknown: only its own deadline does.
            with trio.CancelScope(shield=True, deadline=deadline) as wire:
                result = await perform(conn, message)
        except ProviderError as exc:
            ask = lowlevel.ask_here(Send(message))
            self._hand_over_send(flight, ask, exc)
            left = max(0.0, deadline - trio.current_time())
            answer: SendResult | None = await lowlevel.wait_reply(self.ref, ask, timeout=left)
            return answer
        except Exception as exc:  # a defect: crash the incarnation, as the actor's send would
            flight.settled = True
            self._land(flight)
            error = ActorCrashed(
                f"{self.ref!r} raised {type(exc).__name__} while sending {message!r}"
            )
            if self._running_here():
                self.start_task(_reraise, exc)
            raise error from exc
        if wire.cancelled_caught:
            # Out of time on the wire: the actor sends it again (same key, at
            # least once, as after a crash mid-send); nobody waits for it now.
            self._hand_over_send(flight, Send(message), None)
            raise AskTimeout(
                f"{self.ref!r} did not send {message!r} within {timeout} s; the channel "
                "sends it again with the same idempotency key"
            )
        memory.breaker.record_success(trio.current_time())
        if type(message) is OutboundMessage:
            memory.counters["sent"] += 1
        self._land(flight)
        return result

    def _running_here(self) -> bool:
        """Whether this incarnation still runs (its tasks can be started)."""
        ref = self.ref
        return ref.state is ActorState.RUNNING and lowlevel.current_instance(ref) is self

    def _land(self, flight: Flight) -> None:
        """A send its caller carried is done: what queued behind it may go."""
        landed = flight.landed
        if landed is not None:
            landed.set()  # the actor's task behind it finishes it and goes on
            return
        following = self._window.finish(flight)
        assert following is None, "what queues behind a caller's send makes it a follower"

    def _hand_over_send(self, flight: Flight, item: Any, error: ProviderError | None) -> None:
        """The caller's attempt failed (or ran out of time): the actor carries the
        send on, from the failure's verdict, answering ``item`` (an ask, or nobody)."""
        flight.item = item
        flight.here = False
        flight.failed = error
        landed = flight.landed
        if landed is not None:  # a task of the actor's waits behind it: it goes on
            landed.set()
        elif self._running_here():
            self.start_task(self._fly, flight, error)
        else:  # the incarnation ended meanwhile: the next one sends it
            self._abandon(flight)

    # --- one send -----------------------------------------------------------------------

    async def _send(
        self,
        message: Operation,
        flight: Flight | None = None,
        failed: ProviderError | None = None,
    ) -> SendResult | None:
        """Send (or perform the operation) until the platform accepts, or raise why not.

        ``failed``: a first attempt made elsewhere (on the caller's task)
        failed so; its verdict is carried out first, and it counts.

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
        limiter = memory.limiter
        breaker = memory.breaker
        peer = message.peer
        attempts = 0
        holding = False  # woken in turn (or slept for all): the next waits on this send
        try:
            if failed is not None:
                attempts = 1
                verdict = decide(
                    failed,
                    peer=peer,
                    attempts=attempts,
                    max_attempts=self.settings.send_attempts,
                    backoff=self.settings.send_backoff,
                    rng=memory.rng,
                )
                await self._apply(verdict, failed, message, attempts, flight)
            while True:
                self._raise_if_failed()
                now = trio.current_time()
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
                    breaker.allow(now)
                except CircuitOpen as exc:
                    await trio.sleep_until(exc.retry_at)
                    continue
                conn = await self._live_connection()
                if not limiter.try_acquire(trio.current_time(), key=peer):
                    breaker.record_success(trio.current_time())  # release a trial slot
                    continue
                if self._turns is not None:
                    self._turns.pass_on()  # this turn is taken: the next in line may go or wait
                holding = False
                if not memory.dirty:  # the limiter moved: checkpoint it (write-behind)
                    memory.touch()
                attempts += 1
                try:
                    result = await perform(conn, message)
                except ProviderError as exc:
                    verdict = decide(
                        exc,
                        peer=peer,
                        attempts=attempts,
                        max_attempts=self.settings.send_attempts,
                        backoff=self.settings.send_backoff,
                        rng=memory.rng,
                    )
                    await self._apply(verdict, exc, message, attempts, flight)
                    continue
                breaker.record_success(trio.current_time())
                if type(message) is OutboundMessage:
                    memory.counters["sent"] += 1
                return result
        finally:
            if holding and self._turns is not None:
                self._turns.pass_on()  # left the line by an exception or a cancel

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
        now = trio.current_time()
        action = verdict.action
        if action is SendAction.FAIL_CHANNEL:
            memory.dead_letters.add(message, error, attempts)
            if flight is not None:
                flight.settled = True
            self._fail(error)
            await self._keep_dead_letters()
            raise ChannelFailed(
                f"channel {self.config.channel_id!r} failed while sending: {error}",
                channel_id=self.config.channel_id,
            ) from error
        if verdict.breaker_failure:
            memory.breaker.record_failure(now)
        else:
            memory.breaker.record_success(now)
        if action is SendAction.PAUSE:
            # Not a failure; the limiter wait it causes is counted on the way round.
            until = now + verdict.delay
            if verdict.pause_peer is not None:
                memory.limiter.pause_until(until, key=verdict.pause_peer)
            else:
                memory.limiter.pause_until(until)
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
            raise error
        raise SendFailed(
            f"giving up on {message.idempotency_key!r} to {message.peer!r} after "
            f"{attempts} attempts ({type(error).__name__}: {error}); it is in the "
            "dead-letter queue",
            channel_id=self.config.channel_id,
        ) from error


async def _reraise(error: BaseException) -> None:
    """Raise ``error`` in the actor's nursery: its incarnation crashes with it."""
    raise error
