"""The node's channel table: every channel it was asked to run, in one place.

Design: one row per channel id, in start order, holding everything the node
knows of it: its spec from the file or the API, and while it runs, its
memory, its handle and the child spec its supervisor starts it from. A
channels supervisor that is itself restarted is rebuilt from the rows'
child specs, so no channel is forgotten. Rows of channels that could not
start stay, with the reason, for ``channels()`` and ``/health``.
"""

from __future__ import annotations

from collections.abc import Iterator

import attrs

from actors import ChannelMemory, ChannelRef
from supervisors import ChildSpec

from .config.model import ChannelSpec
from .errors import UnknownChannel

__all__ = ["ChannelRow", "ChannelTable"]

_changes = 0  # rows put, removed or changed, in every table of this process


def _changed(instance: object, attribute: object, value: object) -> object:
    global _changes
    _changes += 1
    return value


@attrs.define(on_setattr=_changed)
class ChannelRow:
    """A channel the node was asked to run, started or not.

    Attributes:
        spec: what was asked for.
        memory: what survives its crashes, while it runs.
        channel: its handle, while it runs.
        child: the child spec its supervisor (re)starts it from, while it runs.
        start_error: why it could not be started, if it could not.
    """

    spec: ChannelSpec
    memory: ChannelMemory | None = None
    channel: ChannelRef | None = None
    child: ChildSpec | None = None
    start_error: str | None = None

    @property
    def running(self) -> bool:
        return self.channel is not None


class ChannelTable:
    """The rows, by channel id, in start order."""

    def __init__(self) -> None:
        self._rows: dict[str, ChannelRow] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[ChannelRow]:
        return iter(self._rows.values())

    def __contains__(self, channel_id: object) -> bool:
        return channel_id in self._rows

    def get(self, channel_id: str) -> ChannelRow:
        """The row of ``channel_id``.

        Raises:
            UnknownChannel: no such channel.
        """
        try:
            return self._rows[channel_id]
        except KeyError:
            raise UnknownChannel(channel_id) from None

    def find(self, channel_id: str) -> ChannelRow | None:
        """The row of ``channel_id``, or ``None``."""
        return self._rows.get(channel_id)

    @property
    def generation(self) -> int:
        """A number that changes whenever a row is put, removed or changed.

        What is built from the rows (the node's webhook index) is kept
        while it stays the same. Counted over every table of the process.
        """
        return _changes

    def put(self, row: ChannelRow) -> None:
        """Add ``row``, or replace the row of the same id (at the end of the order)."""
        global _changes
        _changes += 1
        self._rows.pop(row.spec.id, None)
        self._rows[row.spec.id] = row

    def remove(self, channel_id: str) -> None:
        """Forget a channel (no error if unknown)."""
        global _changes
        _changes += 1
        self._rows.pop(channel_id, None)

    def running(self, provider: str | None = None) -> list[ChannelRow]:
        """The rows of running channels (of one provider), in start order."""
        return [
            row
            for row in self._rows.values()
            if row.channel is not None and (provider is None or row.spec.provider == provider)
        ]

    def child_specs(self) -> list[ChildSpec]:
        """The child specs of the running channels, in start order."""
        return [row.child for row in self._rows.values() if row.child is not None]
