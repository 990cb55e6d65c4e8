"""Fixtures shared by several test modules."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest

from runtime.config.model import StorageConfig
from tests.test_cluster_redis import redis
from tests.test_store import PG_DSN, Backend, dropped_afterwards, new_schema


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "memory":
        yield Backend("memory", StorageConfig(backend="memory"))
        return
    if request.param == "sqlite":
        path = request.getfixturevalue("tmp_path") / "store.sqlite3"
        yield Backend("sqlite", StorageConfig(backend="sqlite", path=str(path)))
        return
    schema = new_schema()
    async with dropped_afterwards(schema):
        yield Backend("postgres", StorageConfig(backend="postgres", dsn=PG_DSN, schema=schema))


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    """A Redis key prefix of the test's own, its keys deleted afterwards."""
    name = f"sbtest-{secrets.token_hex(4)}"
    yield name
    async with redis() as link:
        keys = await link.call("KEYS", f"{name}:*")
        if keys:
            await link.call("DEL", *keys)
