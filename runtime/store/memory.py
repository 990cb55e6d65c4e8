"""The in-memory store: the embedded default, no server needed.

Design:
- Inbound events live in a bounded window (``RECENT_CAPACITY`` events) for
  ``recent_inbound``; older ones are evicted and counted. Duplicates are
  recognised by the same key PostgreSQL uses (:func:`.codec.dedupe_key`),
  within the window.
- The window gives the collector nothing to count or walk for the common
  events: a delivery receipt, and a message with only text, are kept as
  their fields written by :mod:`marshal` (bytes), under their dedupe key
  written the same way, in one ordered table; they are made into events
  again when read. A full window of event objects is 100,000 objects more
  (200,000 with their entries) for every middle and full collection to
  walk. Kept as tuples, which the collector stops tracking once it has
  seen them, they were still three new container objects per event, and
  the collector starts a young collection per 20,000 containers made and
  not freed: a node that sends fills the window by a receipt or more per
  message, so until it was full (20 s at 5,000 messages a second) the
  window alone set off a young collection every 5,000 messages or so.
- Kept outbound messages, checkpoints and dead letters live as long as the
  store object: nothing survives the process (use ``sqlite`` for that). A
  node reopened on the same store in one process restores exactly what it
  would from a database: checkpoints are encoded as the durable backends
  encode them (JSON).
"""

from __future__ import annotations

import itertools
import json
import marshal
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final, TypeAlias

import attrs
import trio

from providers.base import DeliveryReceipt, Event, InboundMessage, MessageEdited, ReceiptStatus

from ..config.model import StorageConfig
from .base import BatchingStore, BatchResult, KeptMessage
from .codec import dedupe_key, dumps, encode_outbound, state_from_text
from .durable import (
    Checkpoint,
    CheckpointResult,
    DeadLetterFilter,
    StoredCheckpoint,
    StoredDeadLetter,
    decoded_checkpoint,
    encode_checkpoints_in_steps,
    letter_from_row,
    letters_matching,
)

__all__ = ["RECENT_CAPACITY", "MemoryStore", "open_memory_store"]

RECENT_CAPACITY: Final = 100_000  # inbound events the memory store keeps


# How the window keeps an event: its fields written by marshal, or the event itself.
_Kept: TypeAlias = bytes | Event
_RECEIPT: Final = "r"
_TEXT: Final = "t"
# A dedupe key (four strings) in marshal's version 2, which writes no back-references:
# equal keys are equal bytes. Its first five bytes are the tuple's header.
_KEY_VERSION: Final = 2
_KEPT_KINDS: Final = (InboundMessage, MessageEdited, DeliveryReceipt)  # what the window keeps
_KEY_HEAD: Final = marshal.dumps(("", "", "", ""), _KEY_VERSION)[:5]


def _window_key(event: InboundMessage | MessageEdited | DeliveryReceipt) -> bytes:
    """The window's key for ``event``: its dedupe key as bytes."""
    key = dedupe_key(event)
    try:
        return marshal.dumps(key, _KEY_VERSION)
    except ValueError:  # marshal takes no subclass of str: the same text as a plain one
        return marshal.dumps(tuple(map(str.__str__, key)), _KEY_VERSION)


def _channel_prefix(channel_id: str) -> bytes:
    """How the window's key of every event of ``channel_id`` begins."""
    return _KEY_HEAD + marshal.dumps(str.__str__(channel_id), _KEY_VERSION)


def _kept(event: Event) -> _Kept:
    """What the window keeps for ``event`` (see the module's notes)."""
    try:
        return _marshalled(event)
    except ValueError:  # a field marshal does not take (a subclass of str): kept as is
        return event


def _marshalled(event: Event) -> _Kept:
    if type(event) is DeliveryReceipt:
        return marshal.dumps(
            (
                _RECEIPT,
                event.channel_id,
                event.platform_message_id,
                event.peer,
                event.status.value,
                event.timestamp,
                event.error,
            )
        )
    if type(event) is InboundMessage and event.media is None and not event.metadata:
        return marshal.dumps(
            (
                _TEXT,
                event.channel_id,
                event.platform_message_id,
                event.peer,
                event.sender,
                event.text,
                event.reply_to,
                event.timestamp,
            )
        )
    return event


def _event(kept: _Kept) -> Event:
    """The event ``kept`` holds, equal to the one written."""
    if not isinstance(kept, bytes):
        return kept
    fields = marshal.loads(kept)
    if fields[0] == _RECEIPT:
        _, channel_id, message_id, peer, status, timestamp, error = fields
        return DeliveryReceipt(
            channel_id=channel_id,
            platform_message_id=message_id,
            peer=peer,
            status=ReceiptStatus(status),
            timestamp=timestamp,
            error=error,
        )
    _, channel_id, message_id, peer, sender, text, reply_to, timestamp = fields
    return InboundMessage(
        channel_id=channel_id,
        platform_message_id=message_id,
        peer=peer,
        sender=sender,
        text=text,
        reply_to=reply_to,
        timestamp=timestamp,
    )


class MemoryStore(BatchingStore):
    """The in-memory store (see the module docstring).

    Args:
        batch_size: inbound events written per batch.
        flush_interval: seconds before a partial batch is written.
        capacity: inbound events kept for ``recent_inbound``.
    """

    backend = "memory"
    durable = False

    def __init__(
        self, *, batch_size: int, flush_interval: float, capacity: int = RECENT_CAPACITY
    ) -> None:
        super().__init__(batch_size=batch_size, flush_interval=flush_interval)
        self._capacity = capacity
        self._recent: OrderedDict[bytes, _Kept] = OrderedDict()  # by dedupe key, oldest first
        self._kept_here: dict[int, KeptMessage] = {}  # by kept_id, oldest first
        self._kept_ids = itertools.count(1)
        self._owner_token = 0
        # channel -> (token, tenant, version, state JSON); channel -> its letter rows
        self._checkpoints: dict[str, tuple[int, str, int, str]] = {}
        self._letters: dict[str, list[tuple[Any, ...]]] = {}
        self._catalog: dict[str, str] = {}  # channel -> spec JSON

    async def _write_batch(self, batch: Sequence[Event]) -> BatchResult:
        written = duplicates = 0
        fresh: list[bool] = []
        recent = self._recent
        for event in batch:
            assert isinstance(event, _KEPT_KINDS)
            key = _window_key(event)
            if key in recent:
                fresh.append(False)
                duplicates += 1
                continue
            fresh.append(True)
            recent[key] = _kept(event)
            written += 1
            if len(recent) > self._capacity:
                recent.popitem(last=False)
                self._evicted += 1
        return BatchResult(written=written, duplicates=duplicates, fresh=tuple(fresh))

    async def recent_inbound(self, channel_id: str | None = None, limit: int = 100) -> list[Event]:
        """See :meth:`runtime.store.Store.recent_inbound`."""
        self._check_open()
        if limit < 0:
            raise ValueError(f"limit must not be negative, not {limit}")
        await trio.lowlevel.checkpoint()
        found: list[Event] = []
        prefix = None if channel_id is None else _channel_prefix(channel_id)
        for key, kept in reversed(self._recent.items()):
            if len(found) >= limit:
                break
            if prefix is None or key.startswith(prefix):  # a dedupe key starts with it
                found.append(_event(kept))
        found.reverse()
        return found

    async def keep_outbound(self, items: Sequence[KeptMessage]) -> list[KeptMessage]:
        """See :meth:`runtime.store.Store.keep_outbound`."""
        self._check_open()
        await trio.lowlevel.checkpoint()
        # Encoded although kept as objects: the memory store refuses what the others do.
        keepable, refused = self._encode_kept(items, _checked)
        for item in keepable:
            kept_id = next(self._kept_ids)
            self._kept_here[kept_id] = attrs.evolve(item, kept_id=kept_id)
        self._kept += len(keepable)
        return refused

    async def read_outbound(self) -> list[KeptMessage]:
        """See :meth:`runtime.store.Store.read_outbound`."""
        self._check_open()
        await trio.lowlevel.checkpoint()
        return list(self._kept_here.values())

    async def forget_outbound(self, kept_ids: Sequence[int]) -> int:
        """See :meth:`runtime.store.Store.forget_outbound`."""
        self._check_open()
        await trio.lowlevel.checkpoint()
        return sum(self._kept_here.pop(kept_id, None) is not None for kept_id in set(kept_ids))

    # --- channels' durable state ---------------------------------------------------------

    async def next_owner_token(self) -> int:
        """See :meth:`runtime.store.Store.next_owner_token`."""
        self._check_open()
        await trio.lowlevel.checkpoint()
        stored = max((row[0] for row in self._checkpoints.values()), default=0)
        self._owner_token = max(self._owner_token, stored) + 1
        return self._owner_token

    async def write_checkpoints(self, items: Sequence[Checkpoint]) -> CheckpointResult:
        """See :meth:`runtime.store.Store.write_checkpoints`."""
        self._check_open()
        await trio.lowlevel.checkpoint()
        written: list[str] = []
        refused: list[tuple[str, int]] = []
        encoded, rejected = await encode_checkpoints_in_steps(items)
        self._report_rejected(rejected)
        for each in encoded:
            item = each.item
            stored = self._checkpoints.get(item.channel_id)
            if stored is not None and stored[0] > item.owner_token:
                refused.append((item.channel_id, stored[0]))
                continue
            self._checkpoints[item.channel_id] = (
                item.owner_token,
                item.tenant,
                item.state.version,
                each.state,
            )
            if item.letters_changed:
                self._letters[item.channel_id] = list(each.letters)
            written.append(item.channel_id)
        return CheckpointResult(
            written=tuple(written), refused=tuple(refused), rejected=tuple(rejected)
        )

    async def load_checkpoint(self, channel_id: str) -> StoredCheckpoint | None:
        """See :meth:`runtime.store.Store.load_checkpoint`."""
        self._check_open()
        await trio.lowlevel.checkpoint()
        stored = self._checkpoints.get(channel_id)
        if stored is None:
            return None
        token, _, version, text = stored
        decoded: object
        try:
            decoded = state_from_text(text)
        except ValueError as exc:
            decoded = exc
        letters = [item.letter for item in self._stored_letters(channel_id)]
        return decoded_checkpoint(channel_id, token, version, decoded, letters)

    async def dead_letters(self, where: DeadLetterFilter) -> list[StoredDeadLetter]:
        """See :meth:`runtime.store.Store.dead_letters`."""
        self._check_open()
        await trio.lowlevel.checkpoint()
        channels = [where.channel_id] if where.channel_id is not None else list(self._letters)
        found = [item for channel in channels for item in self._stored_letters(channel)]
        return letters_matching(found, where)

    async def discard_dead_letters(self, where: DeadLetterFilter) -> int:
        """See :meth:`runtime.store.Store.discard_dead_letters`."""
        self._check_open()
        await trio.lowlevel.checkpoint()
        count = 0
        for channel, rows in self._letters.items():
            kept = []
            for row, item in zip(rows, self._stored_letters(channel), strict=True):
                if where.matches(channel, item.tenant, item.letter):
                    count += 1
                else:
                    kept.append(row)
            self._letters[channel] = kept
        return count

    # --- the cluster's channel catalog ----------------------------------------------------

    async def catalog(self) -> dict[str, dict[str, Any]]:
        """See :meth:`runtime.store.Store.catalog`."""
        self._check_open()
        await trio.lowlevel.checkpoint()
        return {channel: json.loads(spec) for channel, spec in self._catalog.items()}

    async def catalog_put(self, specs: Mapping[str, dict[str, Any]], *, source: str) -> None:
        """See :meth:`runtime.store.Store.catalog_put`."""
        self._check_open()
        await trio.lowlevel.checkpoint()
        self._catalog.update({channel: dumps(spec) for channel, spec in specs.items()})

    async def catalog_remove(self, channel_id: str) -> bool:
        """See :meth:`runtime.store.Store.catalog_remove`."""
        self._check_open()
        await trio.lowlevel.checkpoint()
        return self._catalog.pop(channel_id, None) is not None

    def _stored_letters(self, channel_id: str) -> list[StoredDeadLetter]:
        return [letter_from_row(row) for row in self._letters.get(channel_id, ())]


@asynccontextmanager
async def open_memory_store(config: StorageConfig) -> AsyncIterator[MemoryStore]:
    """Open a memory store for the block (use :func:`runtime.store.open_store`).

    Raises:
        StoreError: the block ended normally but the last flush failed.
    """
    store = MemoryStore(batch_size=config.batch_size, flush_interval=config.flush_interval)
    async with store.serving():
        yield store


def _checked(item: KeptMessage) -> KeptMessage:
    dumps(encode_outbound(item.message))  # raises as the durable stores' encoding would
    return item
