"""Durability at its edges: a kept message that failed its channel, a drain whose
store hangs, rows an older release wrote, a node id held by one process
across a Redis restart and a leave, and a DSN option the driver refuses.
"""

from __future__ import annotations

import contextlib
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from providers.simulated import Fixed, SimulatedProvider
from runtime import open_node
from runtime.config import StorageConfig
from runtime.resend import RESEND_RETRY_CAP
from runtime.store import open_store

from .test_node_embedded import FAST, message, node_config, sim, wait_connected


async def test_a_kept_message_dead_lettered_by_fail_channel_is_not_sent_again_on_revive(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The resend's first try meets a fatal platform error: the channel
    # dead-letters the message (FAIL_CHANNEL) and raises ChannelFailed. The
    # resend takes ChannelFailed for "not yet" and, once the channel is
    # revived, sends the message again: it goes out while its dead letter
    # stays listed (and the kept row was never forgotten till then).
    from providers.base import Banned
    from providers.simulated import SimulatedConnection
    from runtime.store import KeptMessage

    calls: dict[str, int] = {}
    roll = SimulatedConnection._roll

    async def counted(self: SimulatedConnection, key: str, peer: str) -> None:
        calls[key] = calls.get(key, 0) + 1
        await roll(self, key, peer)
        if calls[key] == 1:
            raise Banned("banned while sending (test)")

    monkeypatch.setattr(SimulatedConnection, "_roll", counted)
    provider = SimulatedProvider(latency=Fixed(seconds=0.1))
    with trio.fail_after(RESEND_RETRY_CAP * 3):
        async with open_store(StorageConfig()) as store:
            kept = KeptMessage(channel_id="a", message=message("k"), reason="drain", accepted_at=1)
            await store.keep_outbound([kept])
            async with open_node(
                node_config([sim("a")]),
                store=store,
                channel_defaults=FAST,
                providers={"simulated": provider},
            ) as node:
                await trio.sleep(30.0)
                assert calls == {"k": 1}
                letters = await node.channel("a").dead_letters()
                assert [x.message.idempotency_key for x in letters] == ["k"]
                await node.restart_channel("a")  # an operator revives it
                await wait_connected(node, 1)
                await trio.sleep(RESEND_RETRY_CAP + 5.0)
                letters = await node.channel("a").dead_letters()
                outbox = await store.read_outbound()
    # Dead-lettered once: the letter holds it, the kept row is forgotten, not sent again.
    assert [x.message.idempotency_key for x in letters] == ["k"]
    assert outbox == []
    assert calls == {"k": 1}, "sent again although its dead letter stands"


# --- drain: a store down through the grace --------------------------------------------------


async def test_a_drain_with_its_store_down_ends_within_the_grace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # STORE_GRACE is "seconds past the deadline the final store flush may take":
    # the keep, the last checkpoints and the flush share it (each had one of its
    # own, and a store that hangs held the drain to deadline + 3 x STORE_GRACE).
    from runtime.drain import STORE_GRACE
    from runtime.errors import StoreError

    provider = SimulatedProvider(latency=Fixed(seconds=30.0))  # nothing is sent in time
    deadline = 2.0
    config = node_config([sim("a")], node={"id": "t", "drain_deadline": deadline})
    took: list[float] = []
    with trio.fail_after(600):
        async with open_store(StorageConfig()) as store:

            async def down(items: Any) -> Any:
                raise StoreError("the store is down (test)")

            async def hangs(*args: Any, **kwargs: Any) -> Any:
                await trio.sleep_forever()

            with pytest.raises(BaseExceptionGroup):
                async with open_node(
                    config, store=store, channel_defaults=FAST, providers={"simulated": provider}
                ) as node:
                    await wait_connected(node, 1)
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(_swallow, node.send("a", message("k")))
                        await trio.testing.wait_all_tasks_blocked()
                        store.keep_outbound = down  # type: ignore[method-assign]
                        store.write_checkpoints = hangs  # type: ignore[method-assign]
                        store.flush = hangs  # type: ignore[method-assign]
                        began = trio.current_time()
                        try:
                            await node.drain()
                        finally:
                            took.append(trio.current_time() - began)
    assert took[0] <= deadline + STORE_GRACE + 0.5, took


async def _swallow(call: Any) -> None:
    with contextlib.suppress(Exception):  # (its sender's fate is not what this test reads)
        await call


# --- codec: the strict string hook and rows an older release wrote --------------------------


@pytest.mark.parametrize("field", ["peer", "reply_to"])
async def test_a_dead_letter_an_older_release_wrote_with_a_number_for_a_string_is_not_lost(
    tmp_path: Any, field: str
) -> None:
    # Before c0567ba the send path took OutboundMessage(peer=12345) (a Telegram
    # chat id as the platform gives it) or reply_to=42, and its dead letter was
    # written with a JSON number there; cattrs' str() read it back as "12345".
    # _str_in now refuses it: the letter is left out of the checkpoint's read
    # and of every listing, and the channel's next change of letters deletes
    # its row -- a dead letter of an older release silently lost (only logged).
    import sqlite3

    from providers.base import OutboundMessage
    from runtime.store.durable import DeadLetterFilter

    from .test_store_durable import checkpoint, letter, state

    one = letter(1, 1_800_000_000.0)
    two = attrs.evolve(
        letter(2, 1_800_000_001.0),
        message=OutboundMessage(peer="12345", idempotency_key="k2", text="t", reply_to="42"),
    )
    config = StorageConfig(backend="sqlite", path=str(tmp_path / "s.sqlite3"))
    with trio.fail_after(30):
        async with open_store(config) as store:
            await store.write_checkpoints([checkpoint("tg:1", 1, state(one, two))])
            with sqlite3.connect(config.path) as conn:
                conn.execute(
                    f"UPDATE dead_letters SET message = json_set(message, '$.{field}', "
                    f"{12345 if field == 'peer' else 42}) WHERE letter_id = 2"
                )
            loaded = await store.load_checkpoint("tg:1")
            listed = await store.dead_letters(DeadLetterFilter())
    assert loaded is not None and loaded.state is not None
    assert [x.id for x in loaded.state.dead_letters] == [1, 2]
    assert [x.letter.id for x in listed] == [1, 2]


# --- membership and the driver ------------------------------------------------------------


async def test_a_redis_restarted_empty_gives_a_live_node_its_id_back(prefix: str) -> None:
    from .test_cluster_redis import member, redis

    with trio.fail_after(10):
        async with redis() as link:
            a = member(link, prefix, "n1")
            await a.beat()
            keys = await link.call("KEYS", f"{prefix}:*")
            await link.call("DEL", *keys)  # (a rebirth: every key gone)
            view = await a.beat()
            assert not a.taken and view.members == ("n1",)
            assert await link.call("GET", a.instance_key) in (a.token, a.token.encode())


async def test_the_leave_of_a_taken_over_node_leaves_the_new_holder_a_member(
    prefix: str,
) -> None:
    from .test_cluster_redis import member, redis

    with trio.fail_after(10):
        async with redis() as link:
            old, new = member(link, prefix, "n1"), member(link, prefix, "n1")
            await old.beat()
            await link.call("DEL", old.instance_key)
            await link.call("ZREM", old.members_key, "n1")
            await new.beat()
            await old.leave()
            view = await new.beat()
            assert view.members == ("n1",) and not new.taken


async def test_a_dsn_option_the_driver_refuses_is_named_not_blamed_on_a_password() -> None:
    # asyncpg's ClientConfigurationError is a ValueError: _create_pool now takes
    # every ValueError for the URL parser's and says "the DSN could not be read
    # (a password with ? # / @ ...)", cause dropped. A DSN with no password and
    # a bad sslmode used to say what was wrong (scrubbed); now it points at a
    # password that does not exist.
    from runtime.errors import StoreError

    dsn = "postgresql://postgres@127.0.0.1:5432/test?sslmode=bogus"
    with trio.fail_after(20), pytest.raises(StoreError) as caught:
        async with open_store(StorageConfig(backend="postgres", dsn=dsn)):
            pytest.fail("connected")
    assert "sslmode" in str(caught.value), str(caught.value)


async def test_an_owner_token_edited_to_64_bits_is_a_store_error_not_a_crash(
    tmp_path: Any,
) -> None:
    """SQLite sums past 2**63 - 1 as a float; the token taken from it crashed
    the node's first checkpoint with OverflowError. Now taking it fails with a
    StoreError that says which rows to repair, and takes nothing."""
    import sqlite3

    from runtime.errors import StoreError

    config = StorageConfig(backend="sqlite", path=str(tmp_path / "store.db"))
    async with open_store(config) as store:
        assert await store.next_owner_token() == 1
    with contextlib.closing(sqlite3.connect(tmp_path / "store.db")) as conn, conn:
        conn.execute("UPDATE owner_tokens SET token = ?", (2**63 - 1,))
    async with open_store(config) as store:
        with pytest.raises(StoreError, match=r"owner token would be .*written by hand"):
            await store.next_owner_token()
    with contextlib.closing(sqlite3.connect(tmp_path / "store.db")) as conn:
        assert conn.execute("SELECT token FROM owner_tokens").fetchone()[0] == 2**63 - 1
