"""The in-memory store: the embedded default, no server needed.

Design:
- Inbound events live in a bounded window (``RECENT_CAPACITY`` events) for
  ``recent_inbound``; older ones are evicted and counted. Duplicates are
  recognised by the same key PostgreSQL uses (:func:`.codec.dedupe_key`),
  within the window.
- Kept outbound messages are the one thing that can outlive the process:
  with ``outbox_file`` set, every ``keep_outbound`` rewrites the whole file
  (what it held plus the new messages, one JSON object per line) to a
  temporary file in the same directory, fsyncs it and renames it over the
  old one, so a crash leaves either the old file or the new one, never half
  of one. ``take_outbound`` reads it and deletes it only after every line
  was understood; a line that is not a kept message is a
  :class:`~runtime.errors.StoreError` naming ``file:line``, and the file is
  left for someone to fix. Without ``outbox_file`` they stay in memory, for
  ``take_outbound`` in the same process.
- File work runs in a worker thread (``trio.to_thread``), one at a time.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

import trio

from providers.base import DeliveryReceipt, Event, InboundMessage, MessageEdited

from ..config.model import StorageConfig
from ..errors import StoreError
from .base import BatchingStore, BatchResult, KeptMessage
from .codec import DedupeKey, decode_kept, dedupe_key, dumps, encode_kept

__all__ = ["RECENT_CAPACITY", "MemoryStore", "open_memory_store"]

RECENT_CAPACITY: Final = 100_000  # inbound events the memory store keeps


class MemoryStore(BatchingStore):
    """The in-memory store (see the module docstring).

    Args:
        batch_size: inbound events written per batch.
        flush_interval: seconds before a partial batch is written.
        outbox_file: where kept messages survive the process (None: memory only).
        capacity: inbound events kept for ``recent_inbound``.
    """

    backend = "memory"

    def __init__(
        self,
        *,
        batch_size: int,
        flush_interval: float,
        outbox_file: str | os.PathLike[str] | None = None,
        capacity: int = RECENT_CAPACITY,
    ) -> None:
        super().__init__(batch_size=batch_size, flush_interval=flush_interval)
        self.outbox_file = Path(outbox_file) if outbox_file is not None else None
        self.durable = self.outbox_file is not None
        self._capacity = capacity
        self._recent: collections.deque[tuple[DedupeKey, Event]] = collections.deque()
        self._keys: set[DedupeKey] = set()
        self._kept_here: list[KeptMessage] = []
        self._outbox_lock = trio.Lock()

    async def _write_batch(self, batch: Sequence[Event]) -> BatchResult:
        written = duplicates = 0
        for event in batch:
            assert isinstance(event, InboundMessage | MessageEdited | DeliveryReceipt)
            key = dedupe_key(event)
            if key in self._keys:
                duplicates += 1
                continue
            self._keys.add(key)
            self._recent.append((key, event))
            written += 1
            if len(self._recent) > self._capacity:
                old_key, _ = self._recent.popleft()
                self._keys.discard(old_key)
                self._evicted += 1
        return BatchResult(written=written, duplicates=duplicates)

    async def recent_inbound(self, channel_id: str | None = None, limit: int = 100) -> list[Event]:
        """See :meth:`runtime.store.Store.recent_inbound`."""
        self._check_open()
        if limit < 0:
            raise ValueError(f"limit must not be negative, not {limit}")
        await trio.lowlevel.checkpoint()
        found: list[Event] = []
        for _, event in reversed(self._recent):
            if len(found) >= limit:
                break
            if channel_id is None or event.channel_id == channel_id:
                found.append(event)
        found.reverse()
        return found

    async def keep_outbound(self, items: Sequence[KeptMessage]) -> None:
        """See :meth:`runtime.store.Store.keep_outbound`."""
        self._check_open()
        await trio.lowlevel.checkpoint()
        if not items:
            return
        if self.outbox_file is None:
            self._kept_here.extend(items)
        else:
            lines = [dumps(encode_kept(item)) for item in items]
            async with self._outbox_lock:
                try:
                    await trio.to_thread.run_sync(_append_lines, self.outbox_file, lines)
                except OSError as exc:
                    self._errors += 1
                    raise StoreError(
                        f"could not keep {len(items)} outbound messages in "
                        f"{self.outbox_file}: {exc}"
                    ) from exc
        self._kept += len(items)

    async def take_outbound(self) -> list[KeptMessage]:
        """See :meth:`runtime.store.Store.take_outbound`."""
        self._check_open()
        await trio.lowlevel.checkpoint()
        taken, self._kept_here = self._kept_here, []
        if self.outbox_file is None:
            return taken
        async with self._outbox_lock:
            try:
                from_file = await trio.to_thread.run_sync(_take_lines, self.outbox_file)
            except StoreError:
                self._errors += 1
                self._kept_here[:0] = taken
                raise
        return taken + from_file


def _append_lines(path: Path, lines: list[str]) -> None:
    """Rewrite ``path`` atomically with its old lines plus ``lines``."""
    try:
        old = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        old = ""
    if old and not old.endswith("\n"):
        old += "\n"
    text = old + "".join(line + "\n" for line in lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    _fsync_directory(path.parent)


def _take_lines(path: Path) -> list[KeptMessage]:
    """Every kept message in ``path``; the file is deleted once all were read."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise StoreError(f"could not read the outbox file {path}: {exc}") from exc
    kept: list[KeptMessage] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            kept.append(decode_kept(json.loads(line)))
        except ValueError as exc:  # json.JSONDecodeError is a ValueError too
            raise StoreError(
                f"{path}:{number}: not a kept message ({exc}); nothing was taken and the "
                "file is left as it is: fix or remove that line"
            ) from exc
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        raise StoreError(f"read the outbox file {path} but could not delete it: {exc}") from exc
    _fsync_directory(path.parent)
    return kept


def _fsync_directory(directory: Path) -> None:
    """Make a rename or unlink in ``directory`` durable (best effort off POSIX)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@asynccontextmanager
async def open_memory_store(config: StorageConfig) -> AsyncIterator[MemoryStore]:
    """Open a memory store for the block (use :func:`runtime.store.open_store`).

    Raises:
        StoreError: the block ended normally but the last flush failed.
    """
    store = MemoryStore(
        batch_size=config.batch_size,
        flush_interval=config.flush_interval,
        outbox_file=config.outbox_file,
    )
    async with store.serving():
        yield store
