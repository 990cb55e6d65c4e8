"""The PostgreSQL store: asyncpg, run inside trio through trio-asyncio.

Design:
- asyncio stays in this module. :func:`open_postgres_store` opens a
  trio-asyncio loop unless the calling task already runs inside one (then it
  is reused: loops do not nest), and a small asyncpg pool; every call crosses
  the bridge with ``aio_as_trio(fn, loop=...)``, the loop named explicitly so
  a caller whose context never saw the loop (a task spawned elsewhere) works.
- The traps (ARCHITECTURE.md): a trio cancellation inside
  ``async with aio_as_trio(pool.acquire())`` leaks the connection and a
  later ``pool.close()`` hangs; a cancelled ``async with conn.transaction()``
  sends no ROLLBACK. So connections are acquired with
  ``aio_as_trio(pool.acquire)()`` and released in a ``finally`` under a
  shielded, bounded scope; transactions are explicit BEGIN / COMMIT, with a
  shielded ROLLBACK on any exception (cancellation included). A connection
  that cannot be rolled back or released in time is terminated.
- Inbound batches are one statement: ``INSERT ... SELECT FROM unnest($1..$5)
  WITH ORDINALITY ORDER BY n ON CONFLICT DO NOTHING``. Measured for 500 rows
  on this machine (best of 30): unnest 2.7 ms, COPY into a temporary table +
  ``INSERT ... SELECT`` 4.0 ms, ``executemany`` 3.6 ms (and executemany cannot
  report how many rows were duplicates). One statement is atomic, so a
  cancelled write leaves nothing half done.
- ``inbound_events`` has, besides the key and payload, a ``seq`` column
  (bigserial) so ``recent_inbound`` returns events in the order they were
  saved; ``stored_at`` alone cannot (one batch shares one ``now()``).
- An event PostgreSQL can never store (a NUL character in text, a NaN) is
  logged with its contents, counted as an error and skipped, so one bad
  event cannot block every batch behind it.
- Errors become :class:`~runtime.errors.StoreError` naming the server
  (``host:port/db``), the table and the operation; the DSN's password never
  appears, and a cause whose text would show it is not chained.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final, NoReturn
from urllib.parse import urlsplit

import asyncpg  # type: ignore[import-untyped]
import attrs
import trio
import trio_asyncio  # type: ignore[import-untyped]

from providers.base import DeliveryReceipt, Event, InboundMessage, MessageEdited
from providers.masking import scrubbed, url_secrets

from ..aio import asyncio_loop
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
    stored_json,
)
from .postgres_durable import PostgresDurable

__all__ = ["PostgresStore", "describe_dsn", "open_postgres_store"]

log = logging.getLogger("switchboard.store")

POOL_MIN_SIZE: Final = 1  # connections
POOL_MAX_SIZE: Final = 4  # connections
CONNECT_TIMEOUT: Final = 10.0  # seconds to open one connection
COMMAND_TIMEOUT: Final = 30.0  # seconds one statement may take
RELEASE_TIMEOUT: Final = 5.0  # seconds to hand a connection back to the pool
ROLLBACK_TIMEOUT: Final = 5.0  # seconds a ROLLBACK may take before the connection is dropped
CLOSE_TIMEOUT: Final = 10.0  # seconds pool.close() gets before the pool is terminated
SCHEMA_LOCK: Final = 0x5357_5354  # advisory lock key: one node creates the schema at a time

_DB_ERRORS: Final = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)


def describe_dsn(dsn: str) -> tuple[str, list[str]]:
    """Where a DSN points, fit for messages, and the secrets to keep out of them.

    Returns:
        ``("host:port/db", secrets)``: the password as written and
        percent-decoded, and the pieces of one written without its escapes
        (``providers.masking.url_secrets``); the first is scrubbed of them.
    """
    secrets = url_secrets(dsn)
    try:
        parts = urlsplit(dsn)
        host = parts.hostname or "localhost"
        port = 5432 if parts.port is None else parts.port
        database = parts.path.lstrip("/") or parts.username or "postgres"
    except ValueError:
        return "<a DSN that is not a postgresql:// URL>", secrets
    return scrubbed(f"{host}:{port}/{database}", secrets), secrets


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


# A JSON escape of U+0000 (an even run of backslashes before it is text, not an escape).
_NUL_ESCAPE: Final = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def nul_free(text: str) -> str:
    """``text`` (JSON) if PostgreSQL's jsonb can hold it.

    Raises:
        ValueError: it holds the NUL character, which jsonb refuses (one
            such record would fail the whole statement it is part of).
    """
    if _NUL_ESCAPE.search(text):
        raise ValueError("PostgreSQL cannot store the NUL character (U+0000)")
    return text


def _holds_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, Mapping):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_holds_nul(item) for item in value)
    return False


def _terminate(conn: Any) -> None:
    """End a session for good, so that the pool never hands it out again.

    A session whose link was lost is one the pool has already taken back:
    its handle refuses every call (``InterfaceError``), ``terminate()``
    included. There is nothing left to end then, and that refusal must not
    replace the error that says what happened.
    """
    with contextlib.suppress(asyncpg.InterfaceError):
        conn.terminate()


class PostgresStore(PostgresDurable, BatchingStore):
    """The PostgreSQL store (see the module docstring); made by :func:`open_postgres_store`.

    Args:
        pool: an open asyncpg pool.
        loop: the trio-asyncio loop the pool runs on.
        schema: the schema holding the tables.
        where: ``host:port/db`` for messages.
        secrets: strings never to show in messages.
        batch_size: inbound events written per batch.
        flush_interval: seconds before a partial batch is written.
    """

    backend = "postgres"
    durable = True
    _db_errors = _DB_ERRORS
    _nul_free = staticmethod(nul_free)

    def __init__(
        self,
        *,
        pool: Any,
        loop: Any,
        schema: str,
        where: str,
        secrets: Sequence[str],
        batch_size: int,
        flush_interval: float,
    ) -> None:
        super().__init__(batch_size=batch_size, flush_interval=flush_interval)
        self._pool = pool
        self._loop = loop
        self.schema = schema
        self._where = where
        self._secrets = list(secrets)
        self.inbound_table = f"{_quote(schema)}.inbound_events"
        self.outbound_table = f"{_quote(schema)}.kept_outbound"
        # Which rows were new comes back as their positions in the arrays.
        self._insert_inbound = (
            "WITH r AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], "
            "$4::text[], $5::jsonb[]) WITH ORDINALITY AS r(c, k, m, s, p, n)), "
            f"ins AS (INSERT INTO {self.inbound_table} "
            "(channel_id, kind, platform_message_id, status, payload) "
            "SELECT c, k, m, s, p FROM r ORDER BY n ON CONFLICT DO NOTHING "
            "RETURNING channel_id, kind, platform_message_id, status) "
            # A key twice in one batch was inserted once: by its first row.
            "SELECT min(r.n) AS n FROM r JOIN ins ON ins.channel_id = r.c AND ins.kind = r.k "
            "AND ins.platform_message_id = r.m AND ins.status = r.s "
            "GROUP BY ins.channel_id, ins.kind, ins.platform_message_id, ins.status"
        )

    def _repr_extra(self) -> str:
        return f" at={self._where} schema={self.schema}"

    def _table(self, name: str) -> str:
        return f"{_quote(self.schema)}.{name}"

    # --- the bridge ---------------------------------------------------------------------

    def _aio(self, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        wrapped: Callable[..., Awaitable[Any]] = trio_asyncio.aio_as_trio(fn, loop=self._loop)
        return wrapped

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        conn = await self._aio(self._pool.acquire)()
        try:
            yield conn
        finally:
            with trio.move_on_after(RELEASE_TIMEOUT, shield=True) as scope:
                try:
                    await self._aio(self._pool.release)(conn)
                except _DB_ERRORS as exc:
                    log.warning(
                        "postgres store at %s: releasing a connection: %s", self._where, exc
                    )
                    _terminate(conn)
            if scope.cancelled_caught:
                log.warning(
                    "postgres store at %s: a connection was not released within %s s; "
                    "it is terminated",
                    self._where,
                    RELEASE_TIMEOUT,
                )
                _terminate(conn)

    @asynccontextmanager
    async def _transaction(self, conn: Any) -> AsyncIterator[None]:
        try:
            # Inside the try: a cancel that lands while BEGIN is on its way
            # may leave the session in a transaction all the same.
            await self._aio(conn.execute)("BEGIN")
            yield
        except BaseException:
            rolled_back = False
            with trio.move_on_after(ROLLBACK_TIMEOUT, shield=True):
                try:
                    await self._aio(conn.execute)("ROLLBACK")
                    rolled_back = True
                except _DB_ERRORS as exc:
                    log.warning("postgres store at %s: ROLLBACK failed: %s", self._where, exc)
            if not rolled_back:
                _terminate(conn)  # the server rolls back a transaction whose session ends
            raise
        try:
            await self._aio(conn.execute)("COMMIT")
        except BaseException:
            _terminate(conn)  # whether it committed is unknown: never reuse the session
            raise

    def _fail(self, operation: str, exc: BaseException, *, count: bool = True) -> NoReturn:
        if count:
            self._errors += 1
        detail = scrubbed(f"{type(exc).__name__}: {exc}", self._secrets)
        error = StoreError(f"PostgreSQL at {self._where}: {operation} failed: {detail}")
        if any(secret in str(exc) for secret in self._secrets):
            raise error from None
        raise error from exc

    # --- schema -------------------------------------------------------------------------

    async def create_schema(self) -> None:
        """Create the schema and apply the migrations it lacks (runtime.store.migrations).

        Raises:
            StoreError: they could not be applied, or the database is at a
                newer version than this code knows.
        """
        schema = _quote(self.schema)
        prefix = f"{schema}."
        try:
            async with self._connection() as conn, self._transaction(conn):
                execute = self._aio(conn.execute)
                await execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
                await execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
                await execute(
                    f"CREATE TABLE IF NOT EXISTS {prefix}schema_migrations ("
                    "version integer PRIMARY KEY, description text NOT NULL, "
                    "applied_at timestamptz NOT NULL DEFAULT now())"
                )
                current = await self._aio(conn.fetchval)(
                    f"SELECT coalesce(max(version), 0) FROM {prefix}schema_migrations"
                )
                try:
                    todo = migrations.pending(
                        migrations.POSTGRES, current, f"PostgreSQL at {self._where} ({schema})"
                    )
                except ValueError as exc:
                    raise StoreError(str(exc)) from None
                for version, description, statements in todo:
                    for statement in statements:
                        await execute(statement.format(schema=prefix))
                    await execute(
                        f"INSERT INTO {prefix}schema_migrations (version, description) "
                        "VALUES ($1, $2)",
                        version,
                        description,
                    )
                    log.info(
                        "postgres store at %s: schema %s migrated to version %d (%s)",
                        self._where,
                        schema,
                        version,
                        description,
                    )
        except _DB_ERRORS as exc:
            self._fail(f"creating schema {schema} and its tables", exc)

    # --- inbound ------------------------------------------------------------------------

    def _columns(self, batch: Sequence[Event]) -> tuple[list[list[str]], list[int]]:
        """The insert's columns, and the batch position of each row in them."""
        columns: list[list[str]] = [[], [], [], [], []]
        positions: list[int] = []
        for position, event in enumerate(batch):
            assert isinstance(event, InboundMessage | MessageEdited | DeliveryReceipt)
            try:
                encoded = encode_event(event)
                if _holds_nul(encoded):
                    raise ValueError("PostgreSQL cannot store the NUL character (U+0000)")
                payload = dumps(encoded)
            except (ValueError, TypeError) as exc:
                log.error(
                    "postgres store at %s: an inbound event cannot be stored and is skipped "
                    "(%s): %r",
                    self._where,
                    exc,
                    event,
                )
                continue
            positions.append(position)
            for column, value in zip(columns, (*dedupe_key(event), payload), strict=True):
                column.append(value)
        return columns, positions

    async def _write_batch(self, batch: Sequence[Event]) -> BatchResult:
        columns, positions = self._columns(batch)
        rejected = len(batch) - len(positions)
        fresh = [True] * len(batch)  # a rejected event is news that could not be kept
        if not positions:
            return BatchResult(rejected=rejected, fresh=tuple(fresh))
        try:
            async with self._connection() as conn:
                rows = await self._aio(conn.fetch)(self._insert_inbound, *columns)
        except _DB_ERRORS as exc:
            # count=False: BatchingStore counts (and logs) a failed batch write.
            self._fail(
                f"insert of {len(columns[0])} rows into {self.inbound_table}", exc, count=False
            )
        inserted = {int(row["n"]) - 1 for row in rows}
        for index, position in enumerate(positions):
            fresh[position] = index in inserted
        written = len(inserted)
        return BatchResult(
            written=written,
            duplicates=len(positions) - written,
            rejected=rejected,
            fresh=tuple(fresh),
        )

    async def recent_inbound(self, channel_id: str | None = None, limit: int = 100) -> list[Event]:
        """See :meth:`runtime.store.Store.recent_inbound`."""
        self._check_open()
        if limit < 0:
            raise ValueError(f"limit must not be negative, not {limit}")
        columns = "channel_id, kind, platform_message_id, status, payload"
        try:
            async with self._connection() as conn:
                if channel_id is None:
                    rows = await self._aio(conn.fetch)(
                        f"SELECT {columns} FROM {self.inbound_table} ORDER BY seq DESC LIMIT $1",
                        limit,
                    )
                else:
                    rows = await self._aio(conn.fetch)(
                        f"SELECT {columns} FROM {self.inbound_table} WHERE channel_id = $1 "
                        "ORDER BY seq DESC LIMIT $2",
                        channel_id,
                        limit,
                    )
        except _DB_ERRORS as exc:
            self._fail(f"select from {self.inbound_table}", exc)
        events: list[Event] = []
        for row in reversed(rows):
            try:
                events.append(decode_event(stored_json(row["payload"])))
            except ValueError as exc:
                self._errors += 1
                key = tuple(row[name] for name in ("channel_id", "kind", "platform_message_id"))
                raise StoreError(
                    f"PostgreSQL at {self._where}: row {key} of {self.inbound_table} "
                    f"is not a stored event: {exc}"
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
                nul_free(dumps(encode_outbound(item.message))),
                item.reason,
                dt.datetime.fromtimestamp(item.accepted_at, tz=dt.UTC),
            ),
        )
        if not rows:
            await trio.lowlevel.checkpoint()
            return refused
        columns = [list(column) for column in zip(*rows, strict=True)]
        try:
            async with self._connection() as conn:
                await self._aio(conn.execute)(
                    f"INSERT INTO {self.outbound_table} (channel_id, payload, reason, accepted_at) "
                    "SELECT c, p, r, a FROM unnest($1::text[], $2::jsonb[], $3::text[], "
                    "$4::timestamptz[]) WITH ORDINALITY AS k(c, p, r, a, n) ORDER BY n",
                    *columns,
                )
        except _DB_ERRORS as exc:
            self._fail(f"insert of {len(rows)} rows into {self.outbound_table}", exc)
        self._kept += len(rows)
        return refused

    async def read_outbound(self) -> list[KeptMessage]:
        """See :meth:`runtime.store.Store.read_outbound`."""
        self._check_open()
        try:
            async with self._connection() as conn:
                rows = await self._aio(conn.fetch)(
                    # The time as seconds: a valid timestamptz past Python's datetime
                    # (year 200000) failed the whole read, at every start.
                    "SELECT id, channel_id, payload, reason, "
                    "EXTRACT(EPOCH FROM accepted_at)::float8 AS accepted_at "
                    f"FROM {self.outbound_table} ORDER BY id"
                )
        except _DB_ERRORS as exc:
            self._fail(f"select from {self.outbound_table}", exc)
        kept = []
        for row in rows:
            try:
                kept.append(self._kept_message(row))
            except ValueError as exc:
                self._errors += 1
                log.error(
                    "PostgreSQL at %s: row id=%s of %s is not a kept message (%s); it is left "
                    "in place and not sent: fix or delete that row",
                    self._where,
                    row["id"],
                    self.outbound_table,
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
        try:
            async with self._connection() as conn:
                status = await self._aio(conn.execute)(
                    f"DELETE FROM {self.outbound_table} WHERE id = ANY($1::bigint[])", ids
                )
        except _DB_ERRORS as exc:
            self._fail(f"delete of {len(ids)} rows from {self.outbound_table}", exc)
        return int(status.split()[-1])

    @staticmethod
    def _kept_message(row: Any) -> KeptMessage:
        kept = decode_kept(
            {
                "channel_id": row["channel_id"],
                "message": stored_json(row["payload"]),
                "reason": row["reason"],
                "accepted_at": row["accepted_at"],
            }
        )
        return attrs.evolve(kept, kept_id=row["id"])


async def _create_pool(loop: Any, dsn: str, where: str, secrets: Sequence[str], name: str) -> Any:
    try:
        return await trio_asyncio.aio_as_trio(asyncpg.create_pool, loop=loop)(
            dsn=dsn,
            min_size=POOL_MIN_SIZE,
            max_size=POOL_MAX_SIZE,
            timeout=CONNECT_TIMEOUT,
            command_timeout=COMMAND_TIMEOUT,
            server_settings={"application_name": name[:63]},
        )
    except (*_DB_ERRORS, ValueError) as exc:
        if isinstance(exc, socket.gaierror):
            detail = "its host could not be looked up (an @ in the password is written %40)"
        elif isinstance(exc, OSError) and exc.errno:  # refused, unreachable: said plainly
            detail = os.strerror(exc.errno).lower()
        elif type(exc) is ValueError:
            # The DSN's own parse: its words quote the DSN, password and all.
            detail = (
                "the DSN could not be read (a password with ? # / @ or : in it must "
                "write them percent-encoded: %3F %23 %2F %40 %3A)"
            )
        else:
            detail = scrubbed(f"{type(exc).__name__}: {exc}", secrets)
        error = StoreError(
            f"could not connect to PostgreSQL at {where}: {detail}; "
            "check storage.dsn and that the server is up"
        )
        if isinstance(exc, ValueError) or any(secret in str(exc) for secret in secrets):
            raise error from None  # (a parse error's words quote the DSN)
        raise error from exc


async def _close_pool(loop: Any, pool: Any, where: str) -> None:
    with trio.move_on_after(CLOSE_TIMEOUT, shield=True) as scope:
        try:
            await trio_asyncio.aio_as_trio(pool.close, loop=loop)()
        except _DB_ERRORS as exc:
            log.warning("postgres store at %s: closing the pool: %s; terminating it", where, exc)
            pool.terminate()
    if scope.cancelled_caught:
        log.warning(
            "postgres store at %s: the pool did not close within %s s (a connection "
            "still in use?); terminating it",
            where,
            CLOSE_TIMEOUT,
        )
        pool.terminate()


@asynccontextmanager
async def open_postgres_store(config: StorageConfig) -> AsyncIterator[PostgresStore]:
    """Open a PostgreSQL store for the block (use :func:`runtime.store.open_store`).

    Raises:
        StoreError: no DSN, the server cannot be reached, the schema cannot be
            created, or the block ended normally but the last flush failed.
    """
    if not config.dsn:
        raise StoreError(
            "storage.backend is 'postgres' but storage.dsn is not set; set it, "
            'e.g. dsn = "${env:SWITCHBOARD_PG}"'
        )
    where, secrets = describe_dsn(config.dsn)
    async with contextlib.AsyncExitStack() as stack:
        loop = await stack.enter_async_context(asyncio_loop())
        pool = await _create_pool(loop, config.dsn, where, secrets, f"switchboard:{config.schema}")
        stack.push_async_callback(_close_pool, loop, pool, where)
        store = PostgresStore(
            pool=pool,
            loop=loop,
            schema=config.schema,
            where=where,
            secrets=secrets,
            batch_size=config.batch_size,
            flush_interval=config.flush_interval,
        )
        await store.create_schema()
        async with store.serving():
            yield store
