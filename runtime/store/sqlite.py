"""The SQLite store: the embedded durable default, one file, no server.

Design:
- One file (``storage.path``) in WAL mode, opened by one connection that
  one worker thread at a time uses (``trio.to_thread`` under a capacity
  limiter of 1): SQLite serialises writers anyway, and one writer per node
  never waits on a lock of its own. Each operation is a function run in
  that thread, and each write is one ``BEGIN IMMEDIATE ... COMMIT``, rolled
  back if anything in it fails; a cancelled caller waits for the thread to
  finish (an abandoned transaction would hold the file's write lock).
- ``synchronous = NORMAL`` in WAL mode: a killed process loses nothing
  committed (the WAL is in the OS's hands); a power cut may lose the last
  transactions, never corrupt the file. That is the trade SQLite documents
  for WAL, and what a single node's checkpoints (at most a second old by
  design) can afford.
- The schema is PostgreSQL's (``runtime.store.migrations``), in SQLite's
  types; the same tests run against both.
- Errors become :class:`~runtime.errors.StoreError` naming the file and the
  operation.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final, TypeVar

import attrs
import trio

from providers.base import DeliveryReceipt, Event, InboundMessage, MessageEdited

from ..config.model import StorageConfig
from ..errors import StoreError
from . import migrations
from .base import BatchingStore, BatchResult, KeptMessage
from .codec import (
    decode_event,
    decode_kept,
    dedupe_key,
    dumps,
    encode_event,
    encode_outbound,
    state_from_text,
    stored_json,
)
from .durable import (
    EVERY_LETTER,
    LETTER_COLUMNS,
    Checkpoint,
    CheckpointResult,
    DeadLetterFilter,
    StoredCheckpoint,
    StoredDeadLetter,
    decoded_checkpoint,
    encode_checkpoints_in_steps,
    letter_from_row,
    unreadable_letter,
)

__all__ = ["SqliteStore", "open_sqlite_store"]

log = logging.getLogger("switchboard.store")

BUSY_TIMEOUT_MS: Final = 5_000  # how long a statement waits for another process's lock
_SQLITE_PARAMS: Final = 500  # ids per DELETE (SQLite's host parameters are limited)
_TOKEN_CEILING: Final = 2**63  # an owner token is a signed 64-bit integer
_T = TypeVar("_T")


class SqliteStore(BatchingStore):
    """The SQLite store (see the module docstring); made by :func:`open_sqlite_store`.

    Args:
        path: the database file.
        batch_size: inbound events written per batch.
        flush_interval: seconds before a partial batch is written.
    """

    backend = "sqlite"
    durable = True

    def __init__(self, *, path: Path, batch_size: int, flush_interval: float) -> None:
        super().__init__(batch_size=batch_size, flush_interval=flush_interval)
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._thread = trio.CapacityLimiter(1)

    def _repr_extra(self) -> str:
        return f" file={self.path}"

    # --- the worker thread ------------------------------------------------------------

    async def _run(self, operation: str, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``fn(connection)`` in the store's thread; map SQLite's errors."""
        conn = self._conn
        if conn is None:
            raise StoreError(f"the sqlite store at {self.path} is not open")
        try:
            return await trio.to_thread.run_sync(fn, conn, limiter=self._thread)
        except sqlite3.Error as exc:
            self._errors += 1
            raise StoreError(f"SQLite at {self.path}: {operation} failed: {exc}") from exc

    async def _write(self, operation: str, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Like :meth:`_run`, inside one write transaction."""

        def transaction(conn: sqlite3.Connection) -> _T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        return await self._run(operation, transaction)

    async def open(self) -> None:
        """Open the file (WAL mode) and apply the migrations it lacks.

        Raises:
            StoreError: the file cannot be opened or migrated, or it holds a
                newer schema than this code knows.
        """
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = await trio.to_thread.run_sync(_connect, self.path)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(
                f"could not open the SQLite store at {self.path}: {exc}; check storage.path"
            ) from exc
        where = f"SQLite at {self.path}"

        def migrate(conn: sqlite3.Connection) -> list[int]:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
                "description TEXT NOT NULL, applied_at REAL NOT NULL)"
            )
            current = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations")
            todo = migrations.pending(migrations.SQLITE, current.fetchone()[0], where)
            for version, description, statements in todo:
                for statement in statements:
                    conn.execute(statement.format(schema=""))
                conn.execute(
                    "INSERT INTO schema_migrations VALUES (?, ?, ?)",
                    (version, description, time.time()),
                )
            return [version for version, _, _ in todo]

        try:
            await self._write("applying the schema migrations", migrate)
        except ValueError as exc:
            raise StoreError(str(exc)) from None

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await trio.to_thread.run_sync(conn.close, limiter=self._thread)

    # --- inbound ------------------------------------------------------------------------

    async def _write_batch(self, batch: Sequence[Event]) -> BatchResult:
        rows: list[tuple[str, ...]] = []
        positions: list[int] = []
        for position, event in enumerate(batch):
            assert isinstance(event, InboundMessage | MessageEdited | DeliveryReceipt)
            try:
                rows.append((*dedupe_key(event), dumps(encode_event(event))))
            except (ValueError, TypeError) as exc:
                self._reject(event, exc)
                continue
            positions.append(position)

        def insert(conn: sqlite3.Connection) -> list[bool]:
            return [
                conn.execute(
                    "INSERT OR IGNORE INTO inbound_events "
                    "(channel_id, kind, platform_message_id, status, payload) "
                    "VALUES (?, ?, ?, ?, ?)",
                    row,
                ).rowcount
                == 1
                for row in rows
            ]

        fresh = [True] * len(batch)  # a rejected event is news that could not be kept
        rejected = len(batch) - len(rows)
        if not rows:
            return BatchResult(rejected=rejected, fresh=tuple(fresh))
        inserted = await self._write(f"insert of {len(rows)} inbound events", insert)
        for position, new in zip(positions, inserted, strict=True):
            fresh[position] = new
        written = sum(inserted)
        return BatchResult(
            written=written, duplicates=len(rows) - written, rejected=rejected, fresh=tuple(fresh)
        )

    def _reject(self, event: Event, exc: BaseException) -> None:
        log.error(
            "sqlite store at %s: an inbound event cannot be stored and is skipped (%s): %r",
            self.path,
            exc,
            event,
        )

    async def recent_inbound(self, channel_id: str | None = None, limit: int = 100) -> list[Event]:
        """See :meth:`runtime.store.Store.recent_inbound`."""
        self._check_open()
        if limit < 0:
            raise ValueError(f"limit must not be negative, not {limit}")

        def select(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            if channel_id is None:
                cursor = conn.execute(
                    "SELECT seq, payload FROM inbound_events ORDER BY seq DESC LIMIT ?", (limit,)
                )
            else:
                cursor = conn.execute(
                    "SELECT seq, payload FROM inbound_events WHERE channel_id = ? "
                    "ORDER BY seq DESC LIMIT ?",
                    (channel_id, limit),
                )
            return cursor.fetchall()

        rows = await self._run("select from inbound_events", select)
        events: list[Event] = []
        for seq, payload in reversed(rows):
            try:
                events.append(decode_event(stored_json(payload)))
            except ValueError as exc:
                self._errors += 1
                raise StoreError(
                    f"SQLite at {self.path}: row seq={seq} of inbound_events is not a "
                    f"stored event: {exc}"
                ) from exc
        return events

    # --- outbound -----------------------------------------------------------------------

    async def keep_outbound(self, items: Sequence[KeptMessage]) -> list[KeptMessage]:
        """See :meth:`runtime.store.Store.keep_outbound`."""
        self._check_open()
        rows, refused = self._encode_kept(
            items,
            lambda item: (
                item.channel_id,
                dumps(encode_outbound(item.message)),
                item.reason,
                item.accepted_at,
            ),
        )
        if not rows:
            await trio.lowlevel.checkpoint()
            return refused

        def insert(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO kept_outbound (channel_id, payload, reason, accepted_at) "
                "VALUES (?, ?, ?, ?)",
                rows,
            )

        await self._write(f"insert of {len(rows)} rows into kept_outbound", insert)
        self._kept += len(rows)
        return refused

    async def read_outbound(self) -> list[KeptMessage]:
        """See :meth:`runtime.store.Store.read_outbound`."""
        self._check_open()

        def read(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return conn.execute(
                "SELECT id, channel_id, payload, reason, accepted_at FROM kept_outbound ORDER BY id"
            ).fetchall()

        rows = await self._run("select from kept_outbound", read)
        kept = []
        for row in rows:
            try:
                kept.append(self._kept_message(row))
            except ValueError as exc:
                self._errors += 1
                log.error(
                    "SQLite at %s: row id=%s of kept_outbound is not a kept message (%s); "
                    "it is left in place and not sent: fix or delete that row",
                    self.path,
                    row[0],
                    exc,
                )
        return kept

    async def forget_outbound(self, kept_ids: Sequence[int]) -> int:
        """See :meth:`runtime.store.Store.forget_outbound`."""
        self._check_open()
        ids = sorted(set(kept_ids))
        if not ids:
            await trio.lowlevel.checkpoint()
            return 0

        def forget(conn: sqlite3.Connection) -> int:
            forgotten = 0
            for start in range(0, len(ids), _SQLITE_PARAMS):
                chunk = ids[start : start + _SQLITE_PARAMS]
                marks = ", ".join("?" * len(chunk))
                cursor = conn.execute(f"DELETE FROM kept_outbound WHERE id IN ({marks})", chunk)
                forgotten += cursor.rowcount
            return forgotten

        return await self._write(f"delete of {len(ids)} rows from kept_outbound", forget)

    @staticmethod
    def _kept_message(row: tuple[Any, ...]) -> KeptMessage:
        row_id, channel_id, payload, reason, accepted_at = row
        kept = decode_kept(
            {
                "channel_id": channel_id,
                "message": stored_json(payload),
                "reason": reason,
                "accepted_at": accepted_at,
            }
        )
        return attrs.evolve(kept, kept_id=row_id)

    # --- channels' durable state ---------------------------------------------------------

    async def next_owner_token(self) -> int:
        """See :meth:`runtime.store.Store.next_owner_token`."""
        self._check_open()

        def take(conn: sqlite3.Connection) -> int:
            floor = conn.execute(
                "SELECT coalesce(max(owner_token), 0) + 1 FROM channel_checkpoints "
                "WHERE typeof(owner_token) = 'integer'"
            ).fetchone()[0]
            row = conn.execute(
                "INSERT INTO owner_tokens (name, token) VALUES ('node', ?) "
                "ON CONFLICT (name) DO UPDATE SET token = max(token + 1, excluded.token) "
                "RETURNING token",
                (floor,),
            ).fetchone()
            token = row[0]
            # Past 2**63 - 1 SQLite's sum is a float (a row edited by hand): no
            # token a checkpoint could be written with, so none is taken.
            if type(token) is not int or not 0 < token < _TOKEN_CEILING:
                raise sqlite3.DataError(
                    f"the next owner token would be {token!r}, not a whole number "
                    f"from 1 to {_TOKEN_CEILING - 1} (a row of owner_tokens or "
                    "channel_checkpoints was written by hand); nothing was taken"
                )
            return token

        return await self._write("taking an owner token", take)

    async def write_checkpoints(self, items: Sequence[Checkpoint]) -> CheckpointResult:
        """See :meth:`runtime.store.Store.write_checkpoints`."""
        self._check_open()
        if not items:
            return CheckpointResult()
        encoded, rejected = await encode_checkpoints_in_steps(items)
        self._report_rejected(rejected)
        if not encoded:
            await trio.lowlevel.checkpoint()
            return CheckpointResult(rejected=tuple(rejected))
        rows = [e.row for e in encoded]
        fresh_letters = [row for e in encoded for row in e.letters]
        now = time.time()

        def write(conn: sqlite3.Connection) -> CheckpointResult:
            written: list[str] = []
            refused: list[tuple[str, int]] = []
            for row in rows:
                cursor = conn.execute(
                    "INSERT INTO channel_checkpoints "
                    "(channel_id, tenant, provider, owner_token, version, state, written_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (channel_id) DO UPDATE "
                    "SET tenant = excluded.tenant, provider = excluded.provider, "
                    "owner_token = excluded.owner_token, version = excluded.version, "
                    "state = excluded.state, written_at = excluded.written_at "
                    "WHERE owner_token <= excluded.owner_token",
                    (*row, now),
                )
                if cursor.rowcount:
                    written.append(row[0])
                else:
                    stored = conn.execute(
                        "SELECT owner_token FROM channel_checkpoints WHERE channel_id = ?",
                        (row[0],),
                    ).fetchone()[0]
                    refused.append((row[0], int(stored)))
            done = set(written)
            changed = [
                (e.item.channel_id,)
                for e in encoded
                if e.item.letters_changed and e.item.channel_id in done
            ]
            conn.executemany("DELETE FROM dead_letters WHERE channel_id = ?", changed)
            conn.executemany(
                f"INSERT INTO dead_letters ({', '.join(LETTER_COLUMNS)}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [row for row in fresh_letters if row[0] in done],
            )
            return CheckpointResult(
                written=tuple(written), refused=tuple(refused), rejected=tuple(rejected)
            )

        return await self._write(f"writing {len(encoded)} checkpoint(s)", write)

    async def load_checkpoint(self, channel_id: str) -> StoredCheckpoint | None:
        """See :meth:`runtime.store.Store.load_checkpoint`."""
        self._check_open()
        # Every letter: a listing's default limit here restored the oldest 1,000,
        # and the first checkpoint after the start deleted the rest.
        where = DeadLetterFilter(channel_id=channel_id, limit=EVERY_LETTER)

        def read(conn: sqlite3.Connection) -> tuple[Any, list[tuple[Any, ...]]]:
            row = conn.execute(
                "SELECT owner_token, version, state FROM channel_checkpoints WHERE channel_id = ?",
                (channel_id,),
            ).fetchone()
            return row, _select_letters(conn, where)

        row, letter_rows_found = await self._run(f"reading the checkpoint of {channel_id!r}", read)
        if row is None:
            return None
        token, version, text = row
        decoded: object
        try:
            decoded = state_from_text(text)
        except ValueError as exc:
            decoded = exc
        letters = [item.letter for item in self._letters(letter_rows_found)]
        return decoded_checkpoint(channel_id, int(token), int(version), decoded, letters)

    async def dead_letters(self, where: DeadLetterFilter) -> list[StoredDeadLetter]:
        """See :meth:`runtime.store.Store.dead_letters`."""
        self._check_open()
        rows = await self._run("listing dead letters", lambda conn: _select_letters(conn, where))
        return self._letters(rows)

    async def discard_dead_letters(self, where: DeadLetterFilter) -> int:
        """See :meth:`runtime.store.Store.discard_dead_letters`."""
        self._check_open()
        clause, args = _where(where)

        def delete(conn: sqlite3.Connection) -> int:
            return conn.execute(f"DELETE FROM dead_letters {clause}", args).rowcount

        return await self._write("discarding dead letters", delete)

    # --- the cluster's channel catalog ----------------------------------------------------

    async def catalog(self) -> dict[str, dict[str, Any]]:
        """See :meth:`runtime.store.Store.catalog`."""
        self._check_open()
        rows = await self._run(
            "reading the channel catalog",
            lambda conn: conn.execute("SELECT channel_id, spec FROM channel_catalog").fetchall(),
        )
        return {channel: json.loads(spec) for channel, spec in rows}

    async def catalog_put(self, specs: Mapping[str, dict[str, Any]], *, source: str) -> None:
        """See :meth:`runtime.store.Store.catalog_put`."""
        self._check_open()
        rows = [(channel, dumps(spec), source, time.time()) for channel, spec in specs.items()]

        def put(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO channel_catalog (channel_id, spec, source, updated_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (channel_id) DO UPDATE SET spec = excluded.spec, "
                "source = excluded.source, updated_at = excluded.updated_at",
                rows,
            )

        await self._write(f"writing {len(rows)} channel(s) to the catalog", put)

    async def catalog_remove(self, channel_id: str) -> bool:
        """See :meth:`runtime.store.Store.catalog_remove`."""
        self._check_open()

        def remove(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute("DELETE FROM channel_catalog WHERE channel_id = ?", (channel_id,))
            return cursor.rowcount > 0

        return await self._write(f"removing {channel_id!r} from the catalog", remove)

    def _letters(self, rows: list[tuple[Any, ...]]) -> list[StoredDeadLetter]:
        found = []
        for row in rows:
            try:
                found.append(letter_from_row(row))
            except ValueError as exc:
                self._errors += 1
                unreadable_letter(f"SQLite at {self.path}", row, exc)
        return found


def _connect(path: Path) -> sqlite3.Connection:
    # check_same_thread=False: trio's worker threads take turns (a limiter of
    # one), never use it at once.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return conn


def _where(where: DeadLetterFilter) -> tuple[str, list[Any]]:
    conditions: list[str] = []
    args: list[Any] = []
    for column, value in (
        ("channel_id", where.channel_id),
        ("tenant", where.tenant),
        ("error_type", where.error_type),
    ):
        if value is not None:
            conditions.append(f"{column} = ?")
            args.append(value)
    if where.older_than is not None:
        conditions.append("dead_at < ?")
        args.append(where.older_than)
    if where.ids is not None:
        conditions.append(f"letter_id IN ({', '.join('?' * len(where.ids)) or 'NULL'})")
        args.extend(where.ids)
    return ("WHERE " + " AND ".join(conditions) if conditions else ""), args


def _select_letters(conn: sqlite3.Connection, where: DeadLetterFilter) -> list[tuple[Any, ...]]:
    clause, args = _where(where)
    return conn.execute(
        f"SELECT {', '.join(LETTER_COLUMNS)} FROM dead_letters {clause} "
        "ORDER BY dead_at, channel_id, letter_id LIMIT ?",
        (*args, where.limit),
    ).fetchall()


@asynccontextmanager
async def open_sqlite_store(config: StorageConfig) -> AsyncIterator[SqliteStore]:
    """Open an SQLite store for the block (use :func:`runtime.store.open_store`).

    Raises:
        StoreError: no path, the file cannot be opened or migrated, or the
            block ended normally but the last flush failed.
    """
    if not config.path:
        raise StoreError(
            "storage.backend is 'sqlite' but storage.path is not set (the loader sets it "
            "beside the deployment file): set it"
        )
    store = SqliteStore(
        path=Path(config.path), batch_size=config.batch_size, flush_interval=config.flush_interval
    )
    await store.open()
    try:
        async with store.serving():
            yield store
    finally:
        with trio.CancelScope(shield=True):
            await store.close()
