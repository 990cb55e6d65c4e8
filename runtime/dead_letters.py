"""The node's dead-letter operations: list, replay, discard.

Design:
- A running channel's dead letters are its own (in its memory, written to
  the store with its checkpoints); a channel that does not run here has
  only its stored ones. So a listing first writes the dirty checkpoints and
  then reads the store: one view across every channel, filterable by
  channel, tenant, error class and age.
- Replay and discard of a running channel go to the channel itself (an
  ask, handled one at a time), so two replays that race take each letter
  once: the first takes it, the second finds it gone. A replayed letter is
  sent again with its original idempotency key; if it fails again, it
  becomes a new dead letter. A channel that does not run here cannot send:
  replaying its letters is refused, discarding them goes to the store.
- In a cluster, replay and discard of a channel that runs on another node
  go to that node (the cluster's forwarding), which holds its letters.
- Mixed into :class:`~runtime.node.Node`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, Any

import actors

from .errors import ChannelCrashed, ChannelFailed, ChannelUnavailable, MailboxFull, NodeError
from .store.durable import DEFAULT_LETTER_LIMIT, DeadLetterFilter, StoredDeadLetter

if TYPE_CHECKING:
    from .checkpoints import CheckpointWriter
    from .cluster import Cluster
    from .store import Store
    from .table import ChannelTable

__all__ = ["DeadLetterOps"]


class DeadLetterOps:
    """``dead_letters``, ``replay_dead_letters`` and ``discard_dead_letters`` (a mixin)."""

    if TYPE_CHECKING:
        store: Store
        _table: ChannelTable
        _checkpoints: CheckpointWriter
        _cluster: Cluster | None

        def _runs_here(self, channel_id: str) -> bool: ...

        async def _forward_op(
            self, channel_id: str, op: str, body: dict[str, Any]
        ) -> dict[str, Any]: ...

    async def dead_letters(
        self,
        *,
        channel: str | None = None,
        tenant: str | None = None,
        error_type: str | None = None,
        older_than: float | None = None,
        limit: int = DEFAULT_LETTER_LIMIT,
    ) -> list[StoredDeadLetter]:
        """The dead letters of every channel, oldest first, filtered.

        Args:
            channel: one channel only.
            tenant: one tenant only.
            error_type: one final error class only (``SendFailed``, ``BadRecipient`` ...).
            older_than: only letters dead before this unix time.
            limit: at most this many.

        Raises:
            StoreError: the store could not be read or written.
            ValueError: a negative limit.
        """
        where = DeadLetterFilter(
            channel_id=channel,
            tenant=tenant,
            error_type=error_type,
            older_than=older_than,
            limit=limit,
        )
        await self._checkpoints.flush()  # running channels' letters, as they are now
        return await self.store.dead_letters(where)

    async def replay_dead_letters(self, channel_id: str, ids: Sequence[int] | None = None) -> int:
        """Send a channel's dead letters again (all, or these ids); returns how many.

        Each is taken from the queue once and sent with its original
        idempotency key; one that fails again is dead-lettered anew.

        Raises:
            UnknownChannel: no such channel.
            ChannelUnavailable: the channel does not run here (start it first),
                or the store did not record the letters' taking (they stay).
            ChannelFailed: the channel failed for good; restart it first (they stay).
        """
        row = self._table.get(channel_id)
        if self._cluster is not None and not self._runs_here(channel_id):
            answer = await self._forward_op(channel_id, "replay", _ids(ids))
            return int(answer["count"])
        if row.channel is None:
            raise ChannelUnavailable(
                f"channel {channel_id!r} does not run here ({row.start_error or 'stopped'}); "
                "start it to replay its dead letters",
                channel_id=channel_id,
            )
        return await _counted(channel_id, row.channel.replay_dead_letters(ids))

    async def discard_dead_letters(self, channel_id: str, ids: Sequence[int] | None = None) -> int:
        """Forget a channel's dead letters (all, or these ids); returns how many.

        A channel that does not run here (stopped, or never started by this
        node) has its stored letters discarded.

        Raises:
            StoreError: a stopped channel's letters could not be discarded.
            ChannelUnavailable: a running channel's store did not record it.
        """
        row = self._table.find(channel_id)
        if self._cluster is not None and row is not None and not self._runs_here(channel_id):
            answer = await self._forward_op(channel_id, "discard", _ids(ids))
            return int(answer["count"])
        if row is not None and row.channel is not None:
            return await _counted(channel_id, row.channel.discard_dead_letters(ids))
        where = DeadLetterFilter(channel_id=channel_id, ids=None if ids is None else tuple(ids))
        return await self.store.discard_dead_letters(where)


async def _counted(channel_id: str, asked: Awaitable[int]) -> int:
    """The count a channel answered; its refusals as the node's errors (the
    ops API and the console answer those, not the kernel's)."""
    try:
        return await asked
    except NodeError:
        raise
    except actors.ChannelFailed as exc:
        raise ChannelFailed(str(exc), channel_id=channel_id) from exc
    except actors.ChannelUnavailable as exc:
        raise ChannelUnavailable(str(exc), channel_id=channel_id) from exc
    except actors.MailboxFull as exc:
        raise MailboxFull(str(exc), channel_id=channel_id) from exc
    except actors.ActorCrashed as exc:
        raise ChannelCrashed(str(exc), channel_id=channel_id) from exc
    except actors.ActorDead as exc:
        raise ChannelUnavailable(
            f"channel {channel_id!r} stopped before it answered, and may not have done "
            "it; list its dead letters once it runs again",
            channel_id=channel_id,
        ) from exc


def _ids(ids: Sequence[int] | None) -> dict[str, Any]:
    return {"ids": None if ids is None else [int(i) for i in ids]}
