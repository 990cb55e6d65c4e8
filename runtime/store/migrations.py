"""The durable stores' schema, as numbered migrations.

Design:
- Each backend has one ordered list of migrations; ``schema_migrations``
  records the versions applied. Opening a store applies the missing ones in
  order, each in the transaction that records it, under a lock (PostgreSQL:
  an advisory lock; SQLite: its one writer), so two nodes starting together
  migrate once.
- Version 1 is the schema from before migrations existed, written with
  ``IF NOT EXISTS``: a database made by the previous release (its tables,
  no ``schema_migrations``) takes version 1 as a no-op and moves on. That is
  the "from the previous version" path, and the tests run it.
- A database at a version this code does not know is refused (a newer
  release wrote it; running an older one against it could lose data).
- Statements hold ``{schema}`` where PostgreSQL's schema goes (quoted by the
  caller); SQLite has one namespace per file and gets an empty prefix.
"""

from __future__ import annotations

from typing import Final

__all__ = ["POSTGRES", "SQLITE", "Migration", "pending"]

Migration = tuple[int, str, tuple[str, ...]]
"""``(version, what it adds, statements)``."""

POSTGRES: Final[tuple[Migration, ...]] = (
    (
        1,
        "inbound events and kept outbound messages",
        (
            """CREATE TABLE IF NOT EXISTS {schema}inbound_events (
                channel_id text NOT NULL,
                kind text NOT NULL,
                platform_message_id text NOT NULL,
                status text NOT NULL DEFAULT '',
                payload jsonb NOT NULL,
                stored_at timestamptz NOT NULL DEFAULT now(),
                seq bigserial NOT NULL,
                PRIMARY KEY (channel_id, kind, platform_message_id, status)
            )""",
            "CREATE INDEX IF NOT EXISTS inbound_events_channel_seq "
            "ON {schema}inbound_events (channel_id, seq)",
            "CREATE INDEX IF NOT EXISTS inbound_events_seq ON {schema}inbound_events (seq)",
            """CREATE TABLE IF NOT EXISTS {schema}kept_outbound (
                id bigserial PRIMARY KEY,
                channel_id text NOT NULL,
                payload jsonb NOT NULL,
                reason text NOT NULL,
                accepted_at timestamptz NOT NULL
            )""",
        ),
    ),
    (
        2,
        "channel checkpoints, dead letters and owner tokens",
        (
            """CREATE TABLE IF NOT EXISTS {schema}channel_checkpoints (
                channel_id text PRIMARY KEY,
                tenant text NOT NULL,
                provider text NOT NULL,
                owner_token bigint NOT NULL,
                version integer NOT NULL,
                state jsonb NOT NULL,
                written_at timestamptz NOT NULL DEFAULT now()
            )""",
            """CREATE TABLE IF NOT EXISTS {schema}dead_letters (
                channel_id text NOT NULL,
                letter_id bigint NOT NULL,
                tenant text NOT NULL,
                error_type text NOT NULL,
                reason text NOT NULL,
                attempts integer NOT NULL,
                dead_at double precision NOT NULL,
                message jsonb NOT NULL,
                PRIMARY KEY (channel_id, letter_id)
            )""",
            "CREATE INDEX IF NOT EXISTS dead_letters_dead_at ON {schema}dead_letters (dead_at)",
            """CREATE TABLE IF NOT EXISTS {schema}owner_tokens (
                name text PRIMARY KEY,
                token bigint NOT NULL
            )""",
        ),
    ),
    (
        3,
        "the cluster's channel catalog",
        (
            """CREATE TABLE IF NOT EXISTS {schema}channel_catalog (
                channel_id text PRIMARY KEY,
                spec jsonb NOT NULL,
                source text NOT NULL,
                updated_at timestamptz NOT NULL DEFAULT now()
            )""",
        ),
    ),
)

SQLITE: Final[tuple[Migration, ...]] = (
    (
        1,
        "inbound events and kept outbound messages",
        (
            """CREATE TABLE IF NOT EXISTS inbound_events (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                channel_id TEXT NOT NULL,
                kind TEXT NOT NULL,
                platform_message_id TEXT NOT NULL,
                status TEXT NOT NULL DEFAULT '',
                payload TEXT NOT NULL,
                stored_at REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0),
                UNIQUE (channel_id, kind, platform_message_id, status)
            )""",
            "CREATE INDEX IF NOT EXISTS inbound_events_channel_seq "
            "ON inbound_events (channel_id, seq)",
            """CREATE TABLE IF NOT EXISTS kept_outbound (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                channel_id TEXT NOT NULL,
                payload TEXT NOT NULL,
                reason TEXT NOT NULL,
                accepted_at REAL NOT NULL
            )""",
        ),
    ),
    (
        2,
        "channel checkpoints, dead letters and owner tokens",
        (
            """CREATE TABLE IF NOT EXISTS channel_checkpoints (
                channel_id TEXT PRIMARY KEY,
                tenant TEXT NOT NULL,
                provider TEXT NOT NULL,
                owner_token INTEGER NOT NULL,
                version INTEGER NOT NULL,
                state TEXT NOT NULL,
                written_at REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0)
            )""",
            """CREATE TABLE IF NOT EXISTS dead_letters (
                channel_id TEXT NOT NULL,
                letter_id INTEGER NOT NULL,
                tenant TEXT NOT NULL,
                error_type TEXT NOT NULL,
                reason TEXT NOT NULL,
                attempts INTEGER NOT NULL,
                dead_at REAL NOT NULL,
                message TEXT NOT NULL,
                PRIMARY KEY (channel_id, letter_id)
            )""",
            "CREATE INDEX IF NOT EXISTS dead_letters_dead_at ON dead_letters (dead_at)",
            """CREATE TABLE IF NOT EXISTS owner_tokens (
                name TEXT PRIMARY KEY,
                token INTEGER NOT NULL
            )""",
        ),
    ),
    (
        3,
        "the cluster's channel catalog",
        (
            """CREATE TABLE IF NOT EXISTS channel_catalog (
                channel_id TEXT PRIMARY KEY,
                spec TEXT NOT NULL,
                source TEXT NOT NULL,
                updated_at REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0)
            )""",
        ),
    ),
)


def pending(migrations: tuple[Migration, ...], current: int, where: str) -> list[Migration]:
    """The migrations to apply to a database at version ``current``, in order.

    Raises:
        ValueError: the database is at a version newer than this code knows
            (the message names ``where`` and both versions).
    """
    known = migrations[-1][0]
    if current > known:
        raise ValueError(
            f"{where} holds schema version {current}, newer than this Switchboard's "
            f"{known}: a newer release wrote it; run that release (or newer) against it"
        )
    return [migration for migration in migrations if migration[0] > current]
