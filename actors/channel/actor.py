"""ChannelActor: one long-lived connection to a chat platform, as an actor.

Design:
- The actor owns the connection's lifecycle and the requests made to it;
  its three halves live beside it, one concept each: the connection loop
  (``connection``), the send path (``send``) and the inbound path
  (``inbound``). The product talks to it through ``ChannelRef`` (``handle``).
- Everything that must survive a crash lives in a ``ChannelMemory`` the
  factory closes over (``state``): limiters, backoff, breaker, session,
  dedupe window, dead letters, subscribers, events the store refused.
- Sends are messages; the actor takes up to its send window of them at
  once, in chains per recipient (``send``, ``window``), and answers each
  asker when its send is done; a refusal travels back to the asker as
  ``outcome.Error`` (the kernel raises it there). A stop lets the sends in
  the window finish first (within the stopper's shutdown timeout).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, MutableMapping
from typing import Any

import attrs
import outcome
import trio
from trio.lowlevel import ParkingLot

from providers.base import ChannelConfig, Connection, Provider, send_window
from providers.operations import Operation

from .. import lowlevel
from .._clock import clock_reader
from ..actor import Actor, Exit, ExitKind
from ..errors import ChannelFailed, ChannelUnavailable, MailboxFull
from .connection import ConnectionLoop
from .inbound import InboundPath, InboundSink, publish_in_order
from .pacing import Turns
from .send import SendPath
from .state import (
    ChannelMemory,
    ChannelSettings,
    ChannelStateChanged,
    ChannelStatistics,
    ChannelStatus,
    channel_statistics,
)
from .window import SendWindow

__all__ = ["ChannelActor", "DiscardDeadLetters", "ListDeadLetters", "ReplayDeadLetters", "Send"]

log = logging.getLogger("switchboard.channels")


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
    # A dead letter sent again (told: nobody waits). Refused, it is a letter
    # again even beside another letter of its key: its own was taken.
    replayed: bool = attrs.field(default=False, kw_only=True)


@attrs.frozen
class ReplayDeadLetters:
    """Resend dead letters (all, or the given ids); the reply is how many."""

    ids: tuple[int, ...] | None = None


@attrs.frozen
class DiscardDeadLetters:
    """Drop dead letters (all, or the given ids); the reply is how many."""

    ids: tuple[int, ...] | None = None


@attrs.frozen
class ListDeadLetters:
    """The reply is the channel's dead letters, oldest first."""


def _unsent_replay(memory: ChannelMemory, channel_id: str, msg: Any, exit: Exit) -> bool:
    """A replayed dead letter still queued as the channel ends for good (a stop,
    a drain: ``lowlevel.set_undelivered``): a letter again, in the channel's
    last checkpoint. Nobody waits for a replay, and its taking was written:
    the kernel's dead letters would have lost it without a word."""
    if type(msg) is not Send:
        return False
    error = ChannelUnavailable(
        f"channel {channel_id!r} ended ({exit}) before this replayed dead letter was sent",
        channel_id=channel_id,
    )
    memory.dead_letters.add(msg.message, error, 0)  # (its own letter was taken: no key check)
    memory.touch()
    log.warning(
        "channel %s: %s; it is in the dead-letter queue again",
        channel_id,
        error,
        extra={"channel": channel_id, "switchboard.idempotency_key": msg.message.idempotency_key},
    )
    return True


class _ChannelLog(logging.LoggerAdapter[logging.Logger]):
    """The channel's context on every line, merged with the call's own fields.

    (``LoggerAdapter`` replaces a call's ``extra`` with its own before 3.13.)
    """

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        kwargs["extra"] = {**(self.extra or {}), **(kwargs.get("extra") or {})}
        return msg, kwargs


class ChannelActor(ConnectionLoop, SendPath, InboundPath, Actor):
    """The connection actor of one channel.

    Create it through :meth:`factory`, which makes the crash-surviving
    memory once and hands it to every incarnation.
    """

    # A node runs ten thousand of these: no per-instance __dict__.
    __slots__ = (
        "_breaker_moved",
        "_calls",
        "_calls_lot",
        "_conn",
        "_connected",
        "_connection_scope",
        "_failure",
        "_leftover",
        "_now",
        "_rate_limited",
        "_stopping",
        "_turns",
        "_window",
        "config",
        "memory",
        "provider",
        "settings",
        "sink",
    )

    def __init__(
        self,
        config: ChannelConfig,
        provider: Provider,
        memory: ChannelMemory,
        settings: ChannelSettings,
        sink: InboundSink | None = None,
    ) -> None:
        self.config = config
        self.provider = provider
        self.memory = memory
        self.settings = settings
        self.sink = sink
        self._now = clock_reader()
        self._conn: Connection | None = None
        self._connected: trio.Event | None = None  # made by a send that waits for a link
        self._failure: BaseException | None = None
        self._connection_scope: trio.CancelScope | None = None
        self._stopping = False
        self._rate_limited = 0  # connects refused in a row with a rate limit
        # Set once the events the last incarnation left are kept (None: none left).
        self._leftover: trio.Event | None = None
        self._window = SendWindow(send_window(config, provider.limits))
        self._turns: Turns | None = None  # sends waiting for the limiter (.pacing)
        self._breaker_moved: trio.Event | None = None  # made by a send the breaker holds
        self._calls = 0  # sends in a call to the platform now (.send)
        self._calls_lot: ParkingLot | None = None

    @classmethod
    def factory(
        cls,
        config: ChannelConfig,
        provider: Provider,
        *,
        settings: ChannelSettings | None = None,
        sink: InboundSink | None = None,
        memory: ChannelMemory | None = None,
    ) -> tuple[Callable[[], ChannelActor], ChannelMemory]:
        """A start factory for a supervisor child spec, and the memory it shares.

        Returns:
            ``(factory, memory)``: call ``factory()`` for each incarnation.
        """
        settings = settings or ChannelSettings()
        shared = memory or ChannelMemory(provider.limits, settings)
        # A partial of the class, not a closure: the kernel sees which class
        # it makes, and a supervisor starts it without a trip through its
        # mailbox (``lowlevel.starts_without_waiting``).
        start = functools.partial(cls, config, provider, shared, settings, sink)
        return start, shared

    @property
    def _log(self) -> logging.LoggerAdapter[logging.Logger]:
        # Made when a line is logged, which is rare, rather than kept by each
        # of ten thousand channels.
        config = self.config
        context = {"channel": config.channel_id, "tenant": config.tenant}
        return _ChannelLog(log, {**context, "provider": self.provider.name})

    def __repr__(self) -> str:
        memory = self.memory
        extra = ""
        if memory.status is ChannelStatus.BACKING_OFF:
            extra = f" attempt={memory.backoff.failures}"
        elif memory.status is ChannelStatus.FAILED and memory.last_error:
            extra = f" {memory.last_error}"
        return (
            f"<ChannelActor {self.provider.name}:{self.config.channel_id} "
            f"[{memory.status.name}{extra}]>"
        )

    @staticmethod
    def crashed_for_good(memory: ChannelMemory, channel_id: str, exit: Exit) -> None:
        """Mark the channel FAILED: its supervisor stopped restarting it.

        The hook of an isolated channel's child spec (``ChildSpec.on_give_up``):
        a channel whose actor keeps crashing (a defect, or a platform fault no
        provider classified) is given up alone, FAILED with the reason in its
        status, ``/health`` and checkpoint, like a channel the platform refused.
        """
        previous = memory.status
        if previous is ChannelStatus.FAILED:
            return
        reason = f"the channel kept crashing and is no longer restarted (last: {exit})"
        memory.status = ChannelStatus.FAILED
        memory.last_error = reason
        memory.connected_since = None
        log.error(
            "channel %s failed for good: %s",
            channel_id,
            reason,
            extra={"channel": channel_id, "error.type": "CrashedForGood"},
        )
        publish_in_order(  # behind the receipts the store still holds, as every state change
            memory,
            ChannelStateChanged(
                channel_id=channel_id,
                status=ChannelStatus.FAILED,
                previous=previous,
                reason=reason,
                attempt=memory.backoff.failures,
            ),
        )
        memory.touch()  # FAILED stays FAILED across a restart of the process too

    # --- lifecycle ------------------------------------------------------------------

    def on_start(self) -> None:
        # A plain function: the kernel runs it in the starter's task and
        # spawns the actor's own task without waiting for it (an eager start).
        self.memory.incarnations += 1
        self.memory.current_ref = self.ref
        lowlevel.set_undelivered(
            self.ref, functools.partial(_unsent_replay, self.memory, self.config.channel_id)
        )
        if self.memory.status is ChannelStatus.FAILED:
            # A failed channel stays failed across restarts; only an
            # operator's explicit action (a new memory) revives it.
            return
        if self.memory.pending:
            # Left by a killed incarnation, or by the memory a restart replaced:
            # kept while this one connects (a store outage must not keep the
            # channel from sending); what it reads waits behind them.
            self._leftover = trio.Event()
            self.start_task(self._keep_leftover)
        self.start_task(self._run_connection)

    async def _keep_leftover(self) -> None:
        leftover = self._leftover
        try:
            await self._keep_pending(retry=True)
        finally:
            self._leftover = None
            if leftover is not None:
                leftover.set()

    async def on_stopping(self, exit: Exit) -> None:
        # The sends on the wire finish first, as the one in hand did when
        # sends went one at a time (bounded by the shutdown timeout); what
        # waits behind them, or is cut off, goes back to the mailbox.
        self._window.closing = True
        await self._window.wait_idle()
        # Close while the provider's own tasks still run, so the close
        # handshake completes (Discord: 4000, which keeps the session).
        await self._close_for_stop()

    async def on_stop(self, exit: Exit) -> None:
        # The receipts the store took are not waited for (a restart must not
        # wait out a store outage): the store publishes them from its own
        # task, and STOPPED, published below, rides behind them.
        await self._hand_over(retry=False)
        memory = self.memory
        if exit.kind is ExitKind.CRASHED and memory.status is not ChannelStatus.FAILED:
            # Its supervisor restarts it (after [supervisor] restart_backoff) or
            # gives it up (crashed_for_good: FAILED): until then it is trying
            # again, with the crash as its reason, not stopped by anyone.
            error = exit.error
            crash = "a crash" if error is None else f"a crash ({type(error).__name__}: {error})"
            self._set_status(ChannelStatus.BACKING_OFF, reason=f"restarting after {crash}")
        elif memory.status is not ChannelStatus.FAILED:
            self._set_status(ChannelStatus.STOPPED, reason=str(exit))
        # Written once the actor has ended for good (the drain writes every
        # stopped channel in one batch): then it holds all that happened.
        memory.touch()

    def status(self) -> dict[str, Any]:
        return attrs.asdict(self.statistics(), recurse=False)

    def statistics(self) -> ChannelStatistics:
        return channel_statistics(self.config.channel_id, self.provider.name, self.memory)

    # --- status ---------------------------------------------------------------------

    def _set_status(
        self,
        status: ChannelStatus,
        *,
        reason: str | None = None,
        delay: float | None = None,
    ) -> None:
        memory = self.memory
        previous = memory.status
        memory.status = status
        if reason is not None and status in (ChannelStatus.BACKING_OFF, ChannelStatus.FAILED):
            memory.last_error = reason
        memory.connected_since = trio.current_time() if status is ChannelStatus.CONNECTED else None
        if (
            status is ChannelStatus.CONNECTED
            and previous is not status
            and log.isEnabledFor(logging.INFO)  # no adapter, nor repr, for a line not logged
        ):
            self._log.info("%r: connected", self)
        if previous is not status or status is ChannelStatus.BACKING_OFF:
            self._publish(
                ChannelStateChanged(
                    channel_id=self.config.channel_id,
                    status=status,
                    previous=previous,
                    reason=reason,
                    attempt=memory.backoff.failures,
                    delay=delay,
                )
            )

    def _fail(self, error: BaseException) -> None:
        if self.memory.status is ChannelStatus.FAILED:
            return
        if self._connection_scope is not None:
            # Found by a send: the connection task must stop calling the platform too.
            self._connection_scope.cancel()
        self._failure = error
        self._log.error(
            "%r failed for good: %s",
            self,
            error,
            extra={"error.type": type(error).__name__, "error.message": str(error)},
        )
        self._set_status(ChannelStatus.FAILED, reason=f"{type(error).__name__}: {error}")
        self.memory.touch()  # FAILED stays FAILED across a restart of the process too
        self._wake_senders()  # so that they see the failure
        self._breaker_told()  # and the ones an open breaker holds

    # --- requests -------------------------------------------------------------------

    async def _take_dead_letters(self, ids: tuple[int, ...] | None, *, replay: bool) -> Any:
        """Take letters off the queue, durably, then (replay) send each again.

        The taking is written before anything is sent: a crash right after
        cannot bring a replayed letter back to be replayed twice. If it
        cannot be written, the letters go back and the request is refused.
        """
        memory = self.memory
        if replay and memory.status is ChannelStatus.FAILED:
            # Each would be refused as it went (ChannelFailed): they stay letters.
            return outcome.Error(
                ChannelFailed(
                    f"channel {self.config.channel_id!r} has failed ({memory.last_error}); "
                    "restart it before replaying its dead letters, which stay where they are",
                    channel_id=self.config.channel_id,
                )
            )
        letters = memory.dead_letters.take(None if ids is None else list(ids))
        if not letters:
            return 0
        memory.touch()
        if memory.checkpoints is not None:
            try:
                await memory.checkpoints.write_now(memory)
            except BaseException as exc:
                memory.dead_letters.put_back(letters)  # (cut by a kill too: memory outlives it)
                if not isinstance(exc, Exception):
                    raise
                return outcome.Error(
                    ChannelUnavailable(
                        f"channel {self.config.channel_id!r}: the dead letters could not be "
                        f"taken, because the store did not record it: {exc}",
                        channel_id=self.config.channel_id,
                    )
                )
        if replay:
            # Nobody waits for a replay: whatever refuses a letter makes it one
            # again (keep_refused as it is taken, SendPath._unheard after).
            for told, letter in enumerate(letters):
                try:
                    self.ref.tell(Send(letter.message, keep_refused=True, replayed=True))
                except MailboxFull:
                    # No room for the rest (the queue holds as many as the mailbox):
                    # they stay letters, and the answer counts what went.
                    memory.dead_letters.put_back(letters[told:])
                    memory.touch()
                    if memory.checkpoints is not None:
                        with contextlib.suppress(Exception):  # (dirty: the next round)
                            await memory.checkpoints.write_now(memory)
                    self._log.warning(
                        "%r: replayed %d of %d dead letter(s): the mailbox is full; the "
                        "others stay letters, replay them again",
                        self,
                        told,
                        len(letters),
                    )
                    return told
        return len(letters)

    def receive_at_once(self, msg: Any) -> Any:
        # An ask to send, while the actor is idle: into the window from the
        # asker's task (no hop through the mailbox), as long as it has room.
        if type(msg) is Send:
            return self._take_at_once(msg, msg.message)
        return lowlevel.AT_LEISURE

    async def receive(self, msg: Any) -> Any:
        kind = type(msg)
        if kind is Send:
            return await self._take(msg, msg.message)
        if kind is ListDeadLetters:
            return self.memory.dead_letters.letters()
        if kind is ReplayDeadLetters or kind is DiscardDeadLetters:
            return await self._take_dead_letters(msg.ids, replay=kind is ReplayDeadLetters)
        raise TypeError(f"{self!r} got an unknown message {msg!r}")
