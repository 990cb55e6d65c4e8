"""Sending again what an earlier run kept at its drain (the store's outbox).

Policy (issue 11, "nothing accepted is lost"):

- At start the node reads every kept message (``Store.read_outbound``) and
  sends each again, with its own idempotency key, through its ordinary send
  path, all at once (the channels' limiters pace them).
- A kept message leaves the store only after the platform took it, or after
  its send was dead-lettered (``SendFailed``, or any ``PermanentSendError``:
  the dead letter holds it from then on, listed, replayable and
  discardable). The channels' checkpoints (which hold the dead letters and
  the answers by idempotency key) are written before the ids are forgotten,
  in batches (``forget_outbound``).
- A kept message its channel can never send — an operation the platform
  lacks (``Unsupported``: the provider changed, or the message was kept for
  another one), a text or an upload over the limit — is refused by the
  channel before sending. A resend asks the channel to make that refusal a
  dead letter too (``keep_refused``), with the refusal as its reason and
  once per idempotency key (a kill between the letter and the forget does
  not make a second one); then it is forgotten like any dead-lettered send.
  It is never tried again at the next start.
- A kept message for a channel this deployment does not have
  (``UnknownChannel``: the channel was removed from the file, or renamed)
  stays kept, neither sent nor dead-lettered. A dead letter belongs to a
  channel's checkpoint, which only a configured channel has; and a channel
  removed by mistake gets its messages back when it is configured again (the
  first start that has it sends them, or dead-letters them as above). Each
  start reports them once, one warning per missing channel with how many
  are kept and since when (not one line per message), so that the operator
  decides: configure the channel again, or leave them. A channel the file
  names but disables is the deployment's (its messages wait, logged each);
  in a cluster, so is every channel of the catalog the node has loaded.
- A kept message its channel could not take yet (no connection within
  ``connect_wait``, the channel FAILED until someone revives it, the node
  or the channel without room: ``Overloaded``, ``MailboxFull``, a send that
  timed out) is tried again while the node runs, after 5 s, doubling to 5
  minutes, until it is sent or dead-lettered; it is logged once, when it
  first fails. Before, it waited for the next start, which a node that runs
  for weeks may not have (a platform down for a minute as the node started
  held its kept messages back that long).
- Every other outcome leaves it kept, for the next start: the node drained
  while it was on its way (the drain does not keep it a second time, see
  ``runtime.drain``), an error nobody expected, or the process was killed.
  Each is logged with its channel and key.
- Delivery is therefore at least once: a message the platform took just
  before a kill, and not yet forgotten, is sent again at the next start with
  the same key (a platform that deduplicates, and the channel's memory of
  its answers, make that harmless).
- A store that cannot be read at start (it is down) is read again with a
  capped backoff until it can; the node runs meanwhile. A forget that fails
  is retried; whatever is left unforgotten when the node stops is sent again
  at the next start. Nothing here ever crashes the node.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Final

import trio

from .errors import (
    AskTimeout,
    ChannelFailed,
    ChannelUnavailable,
    InvalidMessage,
    KeyReused,
    MailboxFull,
    NodeDraining,
    NodeStarting,
    Overloaded,
    PermanentSendError,
    SendFailed,
    StoreError,
    UnknownChannel,
)
from .store import KeptMessage, Store

__all__ = ["resend_kept"]

log = logging.getLogger("switchboard.node")

READ_RETRY_CAP: Final = 30.0  # seconds, the longest pause between reads of a store that fails
FORGET_RETRY: Final = 1.0  # seconds before a failed forget is tried again
FORGET_DEADLINE: Final = 5.0  # seconds the last forget may take once the node stops
RESEND_RETRY: Final = 5.0  # seconds before a kept message not taken yet is tried again; doubles
RESEND_RETRY_CAP: Final = 300.0  # seconds, the longest pause between two tries of one message

# Its channel cannot take it yet: tried again while the node runs (see the policy).
_NOT_YET: Final = (
    ChannelUnavailable,
    ChannelFailed,
    Overloaded,
    MailboxFull,
    AskTimeout,
    NodeStarting,
)


async def resend_kept(
    store: Store,
    send: Callable[[KeptMessage], Awaitable[object]],
    settle: Callable[[], Awaitable[None]],
    known: Callable[[str], bool] = lambda channel_id: True,
) -> None:
    """Send every kept message again; forget each once sent or dead-lettered.

    Runs until every resend has an outcome (bound it by cancelling it).

    Args:
        store: the node's store.
        send: sends one kept message through the node (raising the node's
            send errors).
        settle: writes the channels' checkpoints (may raise ``StoreError``);
            awaited before kept messages are forgotten.
        known: whether this deployment has a channel; the kept messages of
            one it lacks are reported, left kept and not sent.
    """
    kept = await _read(store)
    orphans: defaultdict[str, list[KeptMessage]] = defaultdict(list)
    for item in kept:
        if not known(item.channel_id):
            orphans[item.channel_id].append(item)
    _report_orphans(orphans)
    kept = [item for item in kept if item.channel_id not in orphans]
    if not kept:
        return
    log.info("resending %d message(s) kept by the previous run", len(kept))
    forgetter = _Forgetter(store, settle)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(forgetter.run)
            async with trio.open_nursery() as sends:
                for item in kept:
                    sends.start_soon(_resend_one, item, send, forgetter)
            forgetter.close()  # the forgetter ends once the store took every forget
    finally:
        with trio.move_on_after(FORGET_DEADLINE, shield=True):
            await forgetter.forget_due()
        if forgetter.due:
            log.warning(
                "%d resent message(s) are still kept (the store could not forget them): "
                "the next start sends them again with the same idempotency keys",
                len(forgetter.due),
            )


async def _read(store: Store) -> list[KeptMessage]:
    delay = FORGET_RETRY
    while True:
        try:
            return await store.read_outbound()
        except StoreError as exc:
            log.error(
                "the messages kept by the previous run cannot be read yet (retried in %g s): %s",
                delay,
                exc,
            )
        await trio.sleep(delay)
        delay = min(delay * 2, READ_RETRY_CAP)


def _report_orphans(orphans: Mapping[str, Sequence[KeptMessage]]) -> None:
    """One warning per channel this deployment lacks, for its kept messages (see the policy)."""
    for channel_id, items in sorted(orphans.items()):
        oldest = min(item.accepted_at for item in items)
        log.warning(
            "%d message(s) kept by an earlier run are for channel %r, which this deployment "
            "does not have (removed from the file, or renamed?); they stay kept, neither sent "
            "nor dead-lettered, the oldest accepted %s: configure the channel again and the "
            "next start sends them",
            len(items),
            channel_id,
            _when(oldest),
            extra={"channel": channel_id, "switchboard.kept": len(items)},
        )


def _when(unix: float) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(unix))
    except (OverflowError, ValueError, OSError):  # a row's time past the calendar's
        return f"at unix time {unix!r}"


async def _resend_one(
    item: KeptMessage,
    send: Callable[[KeptMessage], Awaitable[object]],
    forgetter: _Forgetter,
) -> None:
    key = item.message.idempotency_key
    extra = {
        "channel": item.channel_id,
        "switchboard.idempotency_key": key,
        "switchboard.peer": item.message.peer,
    }
    try:
        await _send_until_taken(item, send, extra)
    except NodeDraining:
        return  # still kept: the drain leaves it in the store
    except UnknownChannel as exc:  # configured but disabled, or removed while this ran
        log.warning(
            "a message kept by an earlier run (idempotency key %s) is for a channel that "
            "does not run in this deployment; it stays kept for a start that runs it: %s",
            key,
            exc,
            extra={**extra, "error.type": type(exc).__name__},
        )
        return
    except (SendFailed, PermanentSendError, ChannelFailed) as exc:
        # (A ChannelFailed gets here only with its message dead-lettered: the
        # others are tried again while the node runs, see _send_until_taken.)
        log.warning(
            "a message kept by the previous run (idempotency key %s) was dead-lettered: %s",
            key,
            exc,
            extra={**extra, "error.type": type(exc).__name__},
        )
    except InvalidMessage as exc:
        if isinstance(exc, KeyReused):
            # Its key went out meanwhile with another message (a caller reused
            # it): sent under it, it would break what the key guarantees. The
            # node made it a dead letter, which holds it from here on.
            fate = "was dead-lettered: its key was sent since with another message"
        else:
            # Kept by an older version, which let it in: it can never be sent, and
            # kept it would be tried at every start. Not dead-lettered either: what
            # makes it invalid (a None peer) would spoil the channel's checkpoints.
            fate = "can never be sent and is dropped"
        log.error(
            "a message kept by an earlier run (idempotency key %r) %s: %s",
            key,
            fate,
            exc,
            extra={**extra, "error.type": type(exc).__name__},
        )
    except Exception as exc:
        log.error(
            "a message kept by the previous run (idempotency key %s) could not be sent; it "
            "stays kept for the next start: %s",
            key,
            exc,
            extra={**extra, "error.type": type(exc).__name__},
        )
        return
    if item.kept_id is not None:
        forgetter.forget(item.kept_id)


async def _send_until_taken(
    item: KeptMessage, send: Callable[[KeptMessage], Awaitable[object]], extra: dict[str, str]
) -> None:
    """``send(item)``, tried again while its channel cannot take it yet (``_NOT_YET``)."""
    delay = RESEND_RETRY
    tries = 0
    while True:
        try:
            await send(item)
        except _NOT_YET as exc:
            if getattr(exc, "dead_lettered", False):
                raise  # it failed the channel, and its letter holds it: done
            tries += 1
            if tries == 1:
                log.warning(
                    "a message kept by an earlier run (idempotency key %s) could not be sent "
                    "yet; it stays kept and is tried again while this node runs (every %g s "
                    "at most): %s",
                    item.message.idempotency_key,
                    RESEND_RETRY_CAP,
                    exc,
                    extra={**extra, "error.type": type(exc).__name__},
                )
            await trio.sleep(delay)
            delay = min(delay * 2, RESEND_RETRY_CAP)
            continue
        if tries:
            log.info(
                "a message kept by an earlier run (idempotency key %s) went at its try %d",
                item.message.idempotency_key,
                tries + 1,
                extra=extra,
            )
        return


class _Forgetter:
    """Forgets the kept messages that are done, in batches, after a checkpoint write."""

    def __init__(self, store: Store, settle: Callable[[], Awaitable[None]]) -> None:
        self._store = store
        self._settle = settle
        self.due: list[int] = []
        self._wake = trio.Event()
        self._closed = False

    def forget(self, kept_id: int) -> None:
        self.due.append(kept_id)
        self._wake.set()

    def close(self) -> None:
        """No more ids will come: :meth:`run` returns once every due one is forgotten."""
        self._closed = True
        self._wake.set()

    async def run(self) -> None:
        delay = FORGET_RETRY
        while True:
            if not self.due:
                if self._closed:
                    return
                await self._wake.wait()
                self._wake = trio.Event()
                continue
            if await self.forget_due():
                delay = FORGET_RETRY
                continue
            await trio.sleep(delay)  # the store is down: back off, as the reads do
            delay = min(delay * 2, READ_RETRY_CAP)

    async def forget_due(self) -> bool:
        """Forget what is due now; False (logged) if the store failed."""
        if not self.due:
            return True
        batch = list(self.due)
        try:
            await self._settle()
            await self._store.forget_outbound(batch)
        except StoreError as exc:
            log.error(
                "%d resent message(s) could not be forgotten yet (retried): %s", len(batch), exc
            )
            return False
        done = set(batch)
        self.due = [kept_id for kept_id in self.due if kept_id not in done]
        return True
