"""Kept messages that can never be sent, on both durable backends (runtime.resend, issue 11).

A kept message its channel refuses before sending (an operation the platform
lacks, a text over its limit) becomes a dead letter with the refusal as its
reason, once, and leaves the outbox: the next start does not try it again. A
kept message for a channel the deployment no longer has stays kept, is not
sent, and is reported once per start in one line for its channel. Real
SQLite (a temporary file) and real PostgreSQL (``SWITCHBOARD_TEST_PG``, a
schema per test), so real time with a hard ceiling.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

import attrs
import pytest
import trio

from providers.base import OutboundMessage
from providers.operations import SEND_ONLY, EditMessage, Operation
from providers.simulated import DEFAULT_LIMITS, SimulatedProvider
from runtime import open_node
from runtime.config import StorageConfig
from runtime.store import KeptMessage, Store, open_store
from tests.test_node_embedded import FAST, node_config, sim
from tests.test_store import PG_DSN, dropped_afterwards, new_schema

CEILING: Final = 60.0  # real seconds; only a hang gets near it
MAX_TEXT: Final = 20  # characters the platform takes


class SendOnly(SimulatedProvider):
    """A platform that sends messages and nothing else (no edits), with short texts."""

    operations = SEND_ONLY


@pytest.fixture(params=["sqlite", "postgres"])
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StorageConfig]:
    if request.param == "sqlite":
        yield StorageConfig(backend="sqlite", path=str(tmp_path / "node.sqlite3"))
        return
    schema = new_schema()
    async with dropped_afterwards(schema):
        yield StorageConfig(backend="postgres", dsn=PG_DSN, schema=schema)


def kept(channel: str, message: Operation) -> KeptMessage:
    return KeptMessage(
        channel_id=channel,
        message=message,
        reason="not sent by the drain deadline",
        accepted_at=1.7e9,
    )


EDIT: Final = EditMessage(peer="p1", message_id="m1", text="new", idempotency_key="k-edit")
LONG: Final = OutboundMessage(peer="p1", idempotency_key="k-long", text="x" * (MAX_TEXT + 1))
FINE: Final = OutboundMessage(peer="p1", idempotency_key="k-fine", text="fine")
GONE: Final = [OutboundMessage(peer="p2", idempotency_key=f"k-gone-{n}", text="t") for n in (1, 2)]


async def kept_keys(store: Store) -> list[str]:
    return sorted(item.message.idempotency_key for item in await store.read_outbound())


async def until_kept(store: Store, keys: list[str]) -> None:
    while await kept_keys(store) != keys:  # noqa: ASYNC110 - the resend runs in the node's task
        await trio.sleep(0.02)


def orphan_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "which this deployment" in r.getMessage()]


async def test_unsendable_kept_messages_become_dead_letters_once_and_orphans_stay_reported(
    storage: StorageConfig, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: Unsupported stayed kept and was tried at every start; MessageTooLong was
    forgotten as if dead-lettered, with no dead letter (lost); each orphan was logged
    one error line per message."""
    provider = SendOnly(limits=attrs.evolve(DEFAULT_LIMITS, max_text_length=MAX_TEXT))
    config = node_config([sim("a")])
    gone = [f"k-gone-{n}" for n in (1, 2)]
    with trio.fail_after(CEILING), caplog.at_level(logging.INFO, logger="switchboard"):
        async with open_store(storage) as store:
            await store.keep_outbound(
                [kept("a", EDIT), kept("a", LONG), kept("a", FINE)]
                + [kept("gone", message) for message in GONE]
            )
            async with open_node(
                config, store=store, channel_defaults=FAST, providers={"simulated": provider}
            ) as node:
                await until_kept(store, gone)
                letters = await node.dead_letters()
            assert [m.idempotency_key for m in provider.sent] == ["k-fine"]
            found = {d.letter.message.idempotency_key: d.letter for d in letters}
            assert sorted(found) == ["k-edit", "k-long"]
            assert found["k-edit"].error_type == "Unsupported"
            assert "has no edit operation" in found["k-edit"].reason
            assert found["k-long"].error_type == "MessageTooLong"
            assert [d.channel_id for d in letters] == ["a", "a"]
            (line,) = orphan_lines(caplog)
            assert "2 message(s)" in line and "'gone'" in line and "stay kept" in line
            assert not [r for r in caplog.records if "k-gone" in r.getMessage()]

            # The next start: nothing to try again but the orphans, reported once more.
            # The edit is back as if a kill had come between its letter and its forget:
            # it is forgotten again, and still one letter.
            caplog.clear()
            await store.keep_outbound([kept("a", EDIT)])
            async with open_node(
                config, store=store, channel_defaults=FAST, providers={"simulated": provider}
            ) as node:
                await until_kept(store, gone)
                letters = await node.dead_letters()
            assert sorted(d.letter.message.idempotency_key for d in letters) == [
                "k-edit",
                "k-long",
            ]
            assert [m.idempotency_key for m in provider.sent] == ["k-fine"]
            assert len(orphan_lines(caplog)) == 1
            assert await kept_keys(store) == gone
