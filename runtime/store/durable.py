"""What the store keeps of channels: checkpoints and dead letters, fenced by owner tokens.

Design:
- A :class:`Checkpoint` is one channel's :class:`~actors.channel.durable.ChannelState`
  with who wrote it: the owner token, an integer that only grows. A write
  whose token is lower than the stored one is refused (fencing): a node that
  lost a channel can never overwrite the newer owner's state. A single node
  takes a new token at each start (:meth:`Store.next_owner_token`); in a
  cluster the token is the channel's lease token.
- A checkpoint is written whole (one row per channel, one JSON object), at
  most once per interval per channel (the node's writer). The channel's dead
  letters are rows of their own, replaced together with the checkpoint when
  they changed, in the same transaction, so they can be listed and filtered
  across channels without reading every checkpoint.
- One bad record never spoils a batch: a checkpoint whose state JSON cannot
  carry is left out of its batch, a dead letter whose message JSON cannot
  carry is left out of its channel's letters (:func:`encode_checkpoints`),
  each reported (logged, counted, in ``CheckpointResult.rejected``); the
  rest of the batch is written.
- Reading a checkpoint never raises for its contents: a row written by an
  incompatible version, or one that does not decode, comes back with the
  ``problem`` set, for the node to ignore with a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

import attrs
import trio

from actors.channel.durable import STATE_VERSION, ChannelState, DeadLetterRecord

from .codec import decode_outbound, dumps, encode_outbound, state_text, storable, stored_json

log = logging.getLogger("switchboard.store")

__all__ = [
    "LETTER_COLUMNS",
    "Checkpoint",
    "CheckpointResult",
    "DeadLetterFilter",
    "EncodedCheckpoint",
    "StoredCheckpoint",
    "StoredDeadLetter",
    "decoded_checkpoint",
    "encode_checkpoints",
    "encode_checkpoints_in_steps",
    "letter_from_row",
    "letter_rows",
    "letters_matching",
    "state_json",
    "unreadable_letter",
]

DEFAULT_LETTER_LIMIT: Final = 1_000  # dead letters one listing returns at most
NO_LETTER_ID: Final = 2**63  # the first number no letter id reaches (a store's 64-bit integer)
# A limit above any channel's queue (10,000 by default): a checkpoint's read takes them all.
EVERY_LETTER: Final = 2**31 - 1

LETTER_COLUMNS: Final = (
    "channel_id",
    "letter_id",
    "tenant",
    "error_type",
    "reason",
    "attempts",
    "dead_at",
    "message",
)
"""A dead letter row's columns, in the order :func:`letter_rows` gives them."""


@attrs.frozen(kw_only=True)
class Checkpoint:
    """One channel's state to keep.

    Attributes:
        channel_id: the channel.
        tenant: its tenant.
        provider: its provider.
        owner_token: who writes it; a lower token than the stored one is refused.
        state: the durable state, wall-clock times.
        letters_changed: whether the dead letters changed since the last
            write (unchanged ones are not rewritten).
    """

    channel_id: str
    tenant: str
    provider: str
    owner_token: int
    state: ChannelState
    letters_changed: bool = True


@attrs.frozen(kw_only=True)
class CheckpointResult:
    """What a batch of checkpoint writes did.

    Attributes:
        written: channels whose checkpoint was written.
        refused: ``(channel, stored token)`` for each write whose token was
            below the stored one (fenced: another owner wrote since).
        rejected: ``(channel, problem)`` for each checkpoint or dead letter
            left out because JSON cannot carry it (logged by the store); a
            checkpoint that lost only a dead letter is still ``written``.
    """

    written: tuple[str, ...] = ()
    refused: tuple[tuple[str, int], ...] = ()
    rejected: tuple[tuple[str, str], ...] = ()


@attrs.frozen(kw_only=True)
class StoredCheckpoint:
    """A checkpoint as read back.

    Attributes:
        channel_id: the channel.
        owner_token: the token it was written with.
        version: the ``STATE_VERSION`` of the code that wrote it.
        state: the state with its dead letters, or ``None`` when ``problem``.
        problem: why the state cannot be used (a newer or older version, a
            row that does not decode); ``None`` when it can.
        letters: with a ``problem``, the channel's dead letters all the same
            (rows of their own, read whole): a state set aside must not take
            them with it.
    """

    channel_id: str
    owner_token: int
    version: int
    state: ChannelState | None
    problem: str | None = None
    letters: tuple[DeadLetterRecord, ...] = ()


@attrs.frozen(kw_only=True)
class StoredDeadLetter:
    """A dead letter as listed across channels.

    Attributes:
        channel_id: the channel it was sent on.
        tenant: the channel's tenant.
        letter: the letter (its id is unique within the channel).
    """

    channel_id: str
    tenant: str
    letter: DeadLetterRecord


def _within_queue(limit: int) -> int:
    return min(limit, EVERY_LETTER)


@attrs.frozen(kw_only=True)
class DeadLetterFilter:
    """Which dead letters to list or act on.

    Attributes:
        channel_id: one channel only.
        tenant: one tenant only.
        error_type: one final error class only (``SendFailed``, ``BadRecipient`` ...).
        older_than: only letters dead before this time, unix seconds.
        ids: only these letter ids (within ``channel_id``).
        limit: at most this many, oldest first.
    """

    channel_id: str | None = None
    tenant: str | None = None
    error_type: str | None = None
    older_than: float | None = None
    ids: tuple[int, ...] | None = None
    # (Above any queue's size it means all: a store binds no integer past 64 bits.)
    limit: int = attrs.field(
        default=DEFAULT_LETTER_LIMIT,
        validator=attrs.validators.ge(0),
        converter=_within_queue,
    )

    def matches(self, channel_id: str, tenant: str, letter: DeadLetterRecord) -> bool:
        """Whether one letter passes the filter (the limit aside)."""
        return (
            (self.channel_id is None or channel_id == self.channel_id)
            and (self.tenant is None or tenant == self.tenant)
            and (self.error_type is None or letter.error_type == self.error_type)
            and (self.older_than is None or letter.at < self.older_than)
            and (self.ids is None or letter.id in self.ids)
        )


def letters_matching(
    letters: Iterable[StoredDeadLetter], where: DeadLetterFilter
) -> list[StoredDeadLetter]:
    """The letters that pass ``where``, oldest first, at most ``where.limit``."""
    found = [item for item in letters if where.matches(item.channel_id, item.tenant, item.letter)]
    found.sort(key=lambda item: (item.letter.at, item.channel_id, item.letter.id))
    return found[: where.limit]


def decoded_checkpoint(
    channel_id: str,
    owner_token: int,
    version: int,
    decode: object,
    letters: Sequence[DeadLetterRecord],
) -> StoredCheckpoint:
    """A stored checkpoint from its row: ``decode`` is the state or the error decoding it.

    Args:
        channel_id: the channel.
        owner_token: the row's token.
        version: the row's version.
        decode: the decoded :class:`ChannelState` (without letters), or the
            ``ValueError`` decoding raised.
        letters: the channel's dead letter rows, oldest first.
    """
    if version != STATE_VERSION:
        problem = (
            f"written by a version of Switchboard whose channel state is v{version}; "
            f"this one reads v{STATE_VERSION}"
        )
        return StoredCheckpoint(
            channel_id=channel_id,
            owner_token=owner_token,
            version=version,
            state=None,
            problem=problem,
            letters=tuple(letters),
        )
    if not isinstance(decode, ChannelState):
        return StoredCheckpoint(
            channel_id=channel_id,
            owner_token=owner_token,
            version=version,
            state=None,
            problem=str(decode),
            letters=tuple(letters),
        )
    return StoredCheckpoint(
        channel_id=channel_id,
        owner_token=owner_token,
        version=version,
        state=attrs.evolve(decode, dead_letters=tuple(letters)),
    )


def state_json(item: Checkpoint) -> str:
    """The checkpoint's state as the JSON a row keeps (dead letters apart).

    Raises:
        ValueError, TypeError: the state holds what JSON cannot carry.
    """
    return state_text(item.state)


def letter_rows(items: Iterable[Checkpoint]) -> list[tuple[Any, ...]]:
    """The dead letter rows (:data:`LETTER_COLUMNS`) of the items whose letters changed.

    Raises:
        ValueError, TypeError: a message holds what JSON cannot carry.
    """
    return [
        _letter_row(item, record)
        for item in items
        if item.letters_changed
        for record in item.state.dead_letters
    ]


def letter_from_row(row: Sequence[Any]) -> StoredDeadLetter:
    """A stored dead letter from a row in :data:`LETTER_COLUMNS` order.

    Raises:
        ValueError: the message column is not an encoded message.
    """
    channel_id, letter_id, tenant, error_type, reason, attempts, dead_at, message = row
    return StoredDeadLetter(
        channel_id=channel_id,
        tenant=tenant,
        letter=DeadLetterRecord(
            id=int(letter_id),
            message=decode_outbound(stored_json(message)),
            reason=reason,
            error_type=error_type,
            attempts=int(attempts),
            at=float(dead_at),
        ),
    )


def unreadable_letter(where: str, row: Sequence[Any], error: ValueError) -> None:
    """Report a dead letter row that is no letter (it is left out, the rest read).

    One such row kept its channel from starting and failed every listing.
    Left out, it stays in the store until the channel's next change of
    letters, which writes them all again: the log says so, and names the
    row, never its content (a message may hold a URL's token, an upload).
    """
    channel_id, letter_id, *_ = row
    log.error(
        "%s: dead letter %s of channel %r is not a letter (%s); it is left out, and its "
        "row stays until the channel's letters next change: mend or copy it before then",
        where,
        letter_id,
        channel_id,
        error,
        extra={"channel": channel_id},
    )


@attrs.frozen
class EncodedCheckpoint:
    """A checkpoint as its rows: the state's JSON and its dead letter rows."""

    item: Checkpoint
    state: str
    letters: tuple[tuple[Any, ...], ...]

    @property
    def row(self) -> tuple[Any, ...]:
        """The checkpoint's row: channel, tenant, provider, owner token, version, state."""
        i = self.item
        return (i.channel_id, i.tenant, i.provider, i.owner_token, i.state.version, self.state)


_UNENCODABLE = (ValueError, TypeError, OverflowError, RecursionError)


def encode_checkpoints(
    items: Iterable[Checkpoint], *, check: Callable[[str], object] | None = None
) -> tuple[list[EncodedCheckpoint], list[tuple[str, str]]]:
    """Each checkpoint as rows, leaving out what JSON cannot carry.

    Args:
        items: the checkpoints.
        check: a backend's own test of each JSON text (PostgreSQL refuses
            NUL characters); raises ``ValueError`` for one it cannot keep.

    Returns:
        The encoded checkpoints (their letter rows only where the letters
        changed), and ``(channel, problem)`` for each checkpoint or dead
        letter left out.
    """
    encoded: list[EncodedCheckpoint] = []
    rejected: list[tuple[str, str]] = []
    for item in items:
        try:
            state = storable(state_json(item))
            if check is not None:
                check(state)
        except _UNENCODABLE as exc:
            rejected.append((item.channel_id, f"its checkpoint cannot be encoded: {exc}"))
            continue
        rows = []
        if item.letters_changed:
            for record in item.state.dead_letters:
                try:
                    row = _letter_row(item, record)
                    if check is not None:
                        check(row[-1])
                    rows.append(row)
                except _UNENCODABLE as exc:
                    rejected.append(
                        (
                            item.channel_id,
                            f"its dead letter {record.id} (idempotency key "
                            f"{record.message.idempotency_key!r}) cannot be encoded: {exc}",
                        )
                    )
        encoded.append(EncodedCheckpoint(item=item, state=state, letters=tuple(rows)))
    return encoded, rejected


ENCODE_STEP: Final = 25  # checkpoints encoded between two yields to the other tasks


async def encode_checkpoints_in_steps(
    items: Sequence[Checkpoint], *, check: Callable[[str], object] | None = None
) -> tuple[list[EncodedCheckpoint], list[tuple[str, str]]]:
    """:func:`encode_checkpoints`, letting the other tasks run every :data:`ENCODE_STEP`.

    A batch of a few hundred busy channels takes tens of milliseconds to
    encode: held at once, that is the tail of every send waiting on the
    event loop meanwhile.
    """
    encoded: list[EncodedCheckpoint] = []
    rejected: list[tuple[str, str]] = []
    for first in range(0, len(items), ENCODE_STEP):
        if first:
            await trio.lowlevel.checkpoint()
        more, refused = encode_checkpoints(items[first : first + ENCODE_STEP], check=check)
        encoded += more
        rejected += refused
    return encoded, rejected


def _letter_row(item: Checkpoint, record: DeadLetterRecord) -> tuple[Any, ...]:
    return (
        item.channel_id,
        record.id,
        item.tenant,
        record.error_type,
        record.reason,
        record.attempts,
        record.at,
        dumps(encode_outbound(record.message)),
    )
