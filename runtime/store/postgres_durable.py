"""The PostgreSQL store's half for channels' durable state: checkpoints, dead letters, tokens.

Design:
- A batch of checkpoints is one transaction: one ``INSERT ... SELECT FROM
  unnest(...) ON CONFLICT DO UPDATE ... WHERE stored.owner_token <=
  new.owner_token RETURNING channel_id`` writes the ones the token allows;
  what did not come back was refused (fenced), and its stored token is read
  in the same transaction for the report. The dead letters of the written
  channels whose letters changed are replaced in the same transaction, so a
  checkpoint and its letters never disagree.
- Owner tokens come from one row (``owner_tokens``), always above every
  token a checkpoint holds: a database restored from an old backup, or
  written by a node with a higher token, still moves the counter forward.
- Mixed into :class:`~runtime.store.postgres.PostgresStore`, whose bridge
  (``_connection``, ``_transaction``, ``_aio``) and error mapping
  (``_fail``) it uses.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, NoReturn

from .codec import dumps, state_from_text
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

__all__ = ["PostgresDurable"]

_TOKEN_ROW = "node"


class PostgresDurable:
    """Checkpoints, dead letters and owner tokens in PostgreSQL (a mixin)."""

    if TYPE_CHECKING:
        schema: str
        _where: str
        _errors: int
        _db_errors: tuple[type[BaseException], ...]

        def _connection(self) -> AbstractAsyncContextManager[Any]: ...

        def _transaction(self, conn: Any) -> AbstractAsyncContextManager[None]: ...

        def _aio(self, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]: ...

        def _fail(self, operation: str, exc: BaseException, *, count: bool = True) -> NoReturn: ...

        def _check_open(self) -> None: ...

        def _table(self, name: str) -> str: ...

        def _report_rejected(self, rejected: Sequence[tuple[str, str]]) -> None: ...

        def _nul_free(self, text: str) -> str: ...

    async def next_owner_token(self) -> int:
        """See :meth:`runtime.store.Store.next_owner_token`."""
        self._check_open()
        tokens, checkpoints = self._table("owner_tokens"), self._table("channel_checkpoints")
        floor = f"(SELECT coalesce(max(owner_token), 0) + 1 FROM {checkpoints})"
        try:
            async with self._connection() as conn:
                token = await self._aio(conn.fetchval)(
                    f"INSERT INTO {tokens} (name, token) VALUES ($1, {floor}) "
                    f"ON CONFLICT (name) DO UPDATE SET token = "
                    f"greatest({tokens}.token + 1, {floor}) RETURNING token",
                    _TOKEN_ROW,
                )
        except self._db_errors as exc:
            self._fail(f"taking an owner token from {tokens}", exc)
        return int(token)

    async def write_checkpoints(self, items: Sequence[Checkpoint]) -> CheckpointResult:
        """See :meth:`runtime.store.Store.write_checkpoints`."""
        self._check_open()
        if not items:
            return CheckpointResult()
        checkpoints, letters = self._table("channel_checkpoints"), self._table("dead_letters")
        encoded, rejected = await encode_checkpoints_in_steps(items, check=self._nul_free)
        self._report_rejected(rejected)
        if not encoded:
            return CheckpointResult(rejected=tuple(rejected))
        rows = [e.row for e in encoded]
        fresh_letters = [row for e in encoded for row in e.letters]
        try:
            async with self._connection() as conn, self._transaction(conn):
                written = await self._aio(conn.fetch)(
                    f"INSERT INTO {checkpoints} AS c "
                    "(channel_id, tenant, provider, owner_token, version, state) "
                    "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], "
                    "$5::int[], $6::jsonb[]) "
                    "ON CONFLICT (channel_id) DO UPDATE SET tenant = EXCLUDED.tenant, "
                    "provider = EXCLUDED.provider, owner_token = EXCLUDED.owner_token, "
                    "version = EXCLUDED.version, state = EXCLUDED.state, written_at = now() "
                    "WHERE c.owner_token <= EXCLUDED.owner_token RETURNING channel_id",
                    *(list(column) for column in zip(*rows, strict=True)),
                )
                done = {row["channel_id"] for row in written}
                refused_ids = [e.item.channel_id for e in encoded if e.item.channel_id not in done]
                refused = []
                if refused_ids:
                    stored = await self._aio(conn.fetch)(
                        f"SELECT channel_id, owner_token FROM {checkpoints} "
                        "WHERE channel_id = ANY($1::text[])",
                        refused_ids,
                    )
                    refused = [(row["channel_id"], int(row["owner_token"])) for row in stored]
                changed = [
                    e.item.channel_id
                    for e in encoded
                    if e.item.letters_changed and e.item.channel_id in done
                ]
                if changed:
                    await self._aio(conn.execute)(
                        f"DELETE FROM {letters} WHERE channel_id = ANY($1::text[])", changed
                    )
                fresh = [row for row in fresh_letters if row[0] in done]
                if fresh:
                    await self._aio(conn.execute)(
                        f"INSERT INTO {letters} (channel_id, letter_id, tenant, error_type, "
                        "reason, attempts, dead_at, message) SELECT * FROM unnest($1::text[], "
                        "$2::bigint[], $3::text[], $4::text[], $5::text[], $6::int[], "
                        "$7::float8[], $8::jsonb[])",
                        *(list(column) for column in zip(*fresh, strict=True)),
                    )
        except self._db_errors as exc:
            self._fail(f"writing {len(encoded)} checkpoint(s) to {checkpoints}", exc)
        order = [e.item.channel_id for e in encoded if e.item.channel_id in done]
        return CheckpointResult(
            written=tuple(order), refused=tuple(refused), rejected=tuple(rejected)
        )

    async def load_checkpoint(self, channel_id: str) -> StoredCheckpoint | None:
        """See :meth:`runtime.store.Store.load_checkpoint`."""
        self._check_open()
        checkpoints = self._table("channel_checkpoints")
        try:
            async with self._connection() as conn:
                row = await self._aio(conn.fetchrow)(
                    f"SELECT owner_token, version, state FROM {checkpoints} WHERE channel_id = $1",
                    channel_id,
                )
                if row is None:
                    return None
                letters = await self._fetch_letters(
                    conn, DeadLetterFilter(channel_id=channel_id, limit=EVERY_LETTER)
                )
        except self._db_errors as exc:
            self._fail(f"reading the checkpoint of {channel_id!r} from {checkpoints}", exc)
        decoded: object
        try:
            decoded = state_from_text(row["state"])
        except ValueError as exc:
            decoded = exc
        return decoded_checkpoint(
            channel_id,
            int(row["owner_token"]),
            int(row["version"]),
            decoded,
            [item.letter for item in letters],
        )

    async def dead_letters(self, where: DeadLetterFilter) -> list[StoredDeadLetter]:
        """See :meth:`runtime.store.Store.dead_letters`."""
        self._check_open()
        try:
            async with self._connection() as conn:
                return await self._fetch_letters(conn, where)
        except self._db_errors as exc:
            self._fail(f"listing dead letters from {self._table('dead_letters')}", exc)

    async def discard_dead_letters(self, where: DeadLetterFilter) -> int:
        """See :meth:`runtime.store.Store.discard_dead_letters`."""
        self._check_open()
        table = self._table("dead_letters")
        clause, args = _where(where)
        try:
            async with self._connection() as conn:
                status = await self._aio(conn.execute)(f"DELETE FROM {table} {clause}", *args)
        except self._db_errors as exc:
            self._fail(f"discarding dead letters from {table}", exc)
        return int(status.rsplit(" ", 1)[-1])

    async def catalog(self) -> dict[str, dict[str, Any]]:
        """See :meth:`runtime.store.Store.catalog`."""
        self._check_open()
        table = self._table("channel_catalog")
        try:
            async with self._connection() as conn:
                rows = await self._aio(conn.fetch)(f"SELECT channel_id, spec FROM {table}")
        except self._db_errors as exc:
            self._fail(f"reading {table}", exc)
        return {row["channel_id"]: json.loads(row["spec"]) for row in rows}

    async def catalog_put(self, specs: Mapping[str, dict[str, Any]], *, source: str) -> None:
        """See :meth:`runtime.store.Store.catalog_put`."""
        self._check_open()
        if not specs:
            return
        table = self._table("channel_catalog")
        try:
            async with self._connection() as conn:
                await self._aio(conn.execute)(
                    f"INSERT INTO {table} (channel_id, spec, source) SELECT c, s, $3 "
                    "FROM unnest($1::text[], $2::jsonb[]) AS r(c, s) ON CONFLICT (channel_id) "
                    "DO UPDATE SET spec = EXCLUDED.spec, source = EXCLUDED.source, "
                    "updated_at = now()",
                    list(specs),
                    [dumps(spec) for spec in specs.values()],
                    source,
                )
        except self._db_errors as exc:
            self._fail(f"writing {len(specs)} channel(s) to {table}", exc)

    async def catalog_remove(self, channel_id: str) -> bool:
        """See :meth:`runtime.store.Store.catalog_remove`."""
        self._check_open()
        table = self._table("channel_catalog")
        try:
            async with self._connection() as conn:
                status = await self._aio(conn.execute)(
                    f"DELETE FROM {table} WHERE channel_id = $1", channel_id
                )
        except self._db_errors as exc:
            self._fail(f"removing {channel_id!r} from {table}", exc)
        return bool(int(status.rsplit(" ", 1)[-1]))

    async def _fetch_letters(self, conn: Any, where: DeadLetterFilter) -> list[StoredDeadLetter]:
        table = self._table("dead_letters")
        clause, args = _where(where)
        rows = await self._aio(conn.fetch)(
            f"SELECT {', '.join(LETTER_COLUMNS)} "
            f"FROM {table} {clause} ORDER BY dead_at, channel_id, letter_id "
            f"LIMIT ${len(args) + 1}",
            *args,
            where.limit,
        )
        found = []
        for row in rows:
            values = [row[name] for name in LETTER_COLUMNS]
            try:
                found.append(letter_from_row(values))
            except ValueError as exc:
                self._errors += 1
                unreadable_letter(f"PostgreSQL at {self._where}, {table}", values, exc)
        return found


def _where(where: DeadLetterFilter) -> tuple[str, list[Any]]:
    """A ``WHERE`` clause for ``where`` (the limit aside), with numbered parameters."""
    conditions: list[str] = []
    args: list[Any] = []
    for column, value, cast in (
        ("channel_id", where.channel_id, "text"),
        ("tenant", where.tenant, "text"),
        ("error_type", where.error_type, "text"),
    ):
        if value is not None:
            args.append(value)
            conditions.append(f"{column} = ${len(args)}::{cast}")
    if where.older_than is not None:
        args.append(where.older_than)
        conditions.append(f"dead_at < ${len(args)}::float8")
    if where.ids is not None:
        args.append(list(where.ids))
        conditions.append(f"letter_id = ANY(${len(args)}::bigint[])")
    return ("WHERE " + " AND ".join(conditions) if conditions else ""), args
