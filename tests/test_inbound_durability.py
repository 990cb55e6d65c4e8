"""Inbound events are kept before the platform hears they arrived, and text that
is no Unicode never stops a store.

- A webhook is answered 200 only once its events are kept: Telegram and Meta
  forget a notification answered 200, and one answered while its events sat in
  a buffer was lost to a kill, a crash or a stop of its channel.
- Half of a UTF-16 pair (a lone surrogate, ``\\ud83d``: valid JSON, a client
  that cut a string inside an emoji) is read as U+FFFD where platform JSON is
  parsed; a store refuses one that reaches it otherwise, alone, instead of
  failing its whole batch (SQLite's flusher died of UnicodeEncodeError, and
  PostgreSQL retried the batch for ever) or every checkpoint of the node.

Store tests against SQLite / PostgreSQL use real time with a ceiling (threads,
sockets); the rest run on virtual time.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import httpx
import pytest
import trio
import trio.testing

from actors import open_actor_system
from actors.channel import ChannelActor, ChannelMemory, ChannelRef, ChannelSettings
from providers.base import ChannelConfig, InboundMessage
from providers.telegram import SECRET_HEADER, TelegramProvider
from providers.telegram.webhook import WebhookHandler
from providers.whatsapp import WhatsAppProvider
from providers.whatsapp import webhook as wa_webhook
from runtime import open_store
from runtime.config import StorageConfig
from runtime.webhooks import deliver
from supervisors import ChildSpec, open_supervisor

PG_DSN: Final = os.environ.get("SWITCHBOARD_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REAL_CEILING: Final = 20.0  # real seconds; only a hang gets near it
TG_TOKEN: Final = "123456:" + "A" * 35
TG_SECRET: Final = "hook-secret_1"
WA_SECRET: Final = "the-app-secret"
WA_NUMBER: Final = "1555000"


def tg_body(message: dict[str, Any], update_id: int = 1) -> bytes:
    return json.dumps({"update_id": update_id, "message": message}).encode()


def tg_message(text: str = "hi", message_id: int = 1, date: Any = 1700000000) -> dict[str, Any]:
    return {"message_id": message_id, "date": date, "chat": {"id": 42}, "text": text}


def lone_surrogate_update(update_id: int = 1, message_id: int = 1) -> bytes:
    """A Telegram update whose text is cut inside an emoji (JSON ``\\ud83d`` alone)."""
    return tg_body(tg_message(text="cut \ud83d", message_id=message_id), update_id=update_id)


def parsed_event(body: bytes) -> InboundMessage:
    """The event the Telegram webhook handler makes of ``body`` (the real parsing path)."""
    verdict = WebhookHandler(channel_id="tg:1", secret=TG_SECRET).handle(
        {SECRET_HEADER: TG_SECRET}, body
    )
    assert verdict.status == 200 and verdict.update is not None, verdict
    event = verdict.update.event
    assert isinstance(event, InboundMessage)
    return event


# --- lone surrogates ----------------------------------------------------------------------


def test_a_lone_surrogate_in_platform_json_is_read_as_the_replacement_character() -> None:
    event = parsed_event(lone_surrogate_update(1, 1))
    assert event.text == "cut \ufffd"
    whole = parsed_event(tg_body(tg_message(text="an emoji \U0001f600")))
    assert whole.text == "an emoji \U0001f600"  # a pair is one character, as ever


def surrogate_event(message_id: str = "m-bad") -> InboundMessage:
    """An event made in code (not parsed from a platform) with a lone surrogate."""
    return InboundMessage(
        channel_id="tg:1",
        platform_message_id=message_id,
        peer="42",
        sender="42",
        text="cut \ud83d",
    )


async def test_sqlite_keeps_a_platform_s_cut_text_and_refuses_a_lone_surrogate_alone(
    tmp_path: Path,
) -> None:
    cut = parsed_event(lone_surrogate_update(1, 1))
    good = parsed_event(tg_body(tg_message(text="fine", message_id=2), update_id=2))
    config = StorageConfig(backend="sqlite", path=str(tmp_path / "s.sqlite3"))
    with trio.fail_after(REAL_CEILING):
        async with open_store(config) as store:
            await store.store_inbound([cut, surrogate_event(), good])
            kept = await store.recent_inbound("tg:1")
            errors = store.statistics().errors
            await store.store_inbound([surrogate_event("m-after")])  # the store still takes
    assert [e.platform_message_id for e in kept] == ["42:1", "42:2"], kept
    assert kept[0] == cut and kept[0].text == "cut \ufffd"
    assert errors == 1


async def test_postgres_refuses_a_lone_surrogate_alone_instead_of_its_whole_batch() -> None:
    from tests.test_store import dropped_afterwards, new_schema

    cut = parsed_event(lone_surrogate_update(1, 1))
    good = parsed_event(tg_body(tg_message(text="fine", message_id=2), update_id=2))
    schema = new_schema()
    async with dropped_afterwards(schema):
        config = StorageConfig(backend="postgres", dsn=PG_DSN, schema=schema)
        with trio.fail_after(REAL_CEILING):
            async with open_store(config) as store:
                stored = False
                with trio.move_on_after(5):  # (the batch was retried for ever)
                    await store.store_inbound([cut, surrogate_event(), good])
                    stored = True
                kept = await store.recent_inbound("tg:1")
    assert stored
    assert [e.platform_message_id for e in kept] == ["42:1", "42:2"], kept


async def test_a_lone_surrogate_in_one_channel_s_dedupe_window_rejects_its_checkpoint_alone(
    tmp_path: Path,
) -> None:
    """The checkpoint whose window (``seen``) holds the id is rejected and reported;
    the other channel's is written. SQLite's UnicodeEncodeError (no StoreError)
    killed the node's checkpoint writer; PostgreSQL failed the whole batch."""
    import attrs

    from tests.test_store_durable import checkpoint, state

    poisoned = attrs.evolve(state(), seen=("wamid.fine", "wamid.\ud83d"))
    config = StorageConfig(backend="sqlite", path=str(tmp_path / "s.sqlite3"))
    with trio.fail_after(REAL_CEILING):
        async with open_store(config) as store:
            token = await store.next_owner_token()
            result = await store.write_checkpoints(
                [checkpoint("wa:1", token, poisoned), checkpoint("tg:2", token, state())]
            )
    assert result.written == ("tg:2",)
    assert [channel for channel, _ in result.rejected] == ["wa:1"]
    assert "lone surrogate" in result.rejected[0][1]


# --- webhooks: 200 once kept --------------------------------------------------------------


@contextlib.asynccontextmanager
async def gated_channel_of(
    provider: Any, config: ChannelConfig
) -> AsyncIterator[tuple[Any, Any, ChannelRef]]:
    """A real provider's channel actor keeping its events in a memory store whose
    batch writes wait at a gate (``gate.open()``): a store that has not written yet."""
    from tests.test_inbound_receipts import Gate

    settings = ChannelSettings()
    memory = ChannelMemory(provider.limits, settings)
    async with open_store(StorageConfig(backend="memory")) as store:
        gate = Gate(store)
        factory, memory = ChannelActor.factory(
            config, provider, settings=settings, sink=store, memory=memory
        )
        async with open_actor_system() as system:
            async with open_supervisor(
                system, [ChildSpec(id=config.channel_id, start=factory)], intensity=10, period=60.0
            ) as sup:
                ref = await sup.whereis_child(config.channel_id)
                assert ref is not None
                channel = ChannelRef(ref, memory, config.channel_id, provider.name)
                yield store, gate, channel
                gate.open()


async def live_connection(channel: ChannelRef) -> Any:
    while channel.connection is None:  # noqa: ASYNC110 - set by the actor's own task
        await trio.sleep(0.01)
    await trio.testing.wait_all_tasks_blocked()
    return channel.connection


def telegram_api(request: httpx.Request) -> httpx.Response:
    """Enough of the Bot API for a webhook-mode bot to open (getMe)."""
    me = {"id": 123456, "is_bot": True, "first_name": "b", "username": "b_bot"}
    result: Any = me if request.url.path.endswith("/getMe") else True
    return httpx.Response(200, json={"ok": True, "result": result})


async def test_a_telegram_webhook_is_not_answered_200_before_its_event_is_kept(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Telegram forgets an update once its webhook is answered 2xx: the link answers
    once the channel's reader came back from the event (it reads on only once the
    event is kept), as the polling path confirms an offset. It answered once the
    reader had taken the event, so a kill -9 before the write lost the update."""
    config = ChannelConfig(
        channel_id="tg:1",
        provider="telegram",
        credentials={"token": TG_TOKEN, "webhook_secret": TG_SECRET},
        base_url="http://telegram.test",
        options={"mode": "webhook"},
    )
    provider = TelegramProvider(transport=httpx.MockTransport(telegram_api))
    with trio.fail_after(120):
        async with gated_channel_of(provider, config) as (store, _gate, channel):
            conn = await live_connection(channel)
            reply = await deliver(
                "telegram", conn, "POST", {}, {SECRET_HEADER: TG_SECRET}, tg_body(tg_message())
            )
            kept = store.statistics().inbound_written
            assert (reply.status, kept) != (200, 0), "answered 200 with nothing kept"


def wa_notification(*message_ids: str) -> bytes:
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "1555", "phone_number_id": WA_NUMBER},
        "contacts": [{"wa_id": "4477", "profile": {"name": "Ann"}}],
        "messages": [
            {
                "from": "4477",
                "id": mid,
                "timestamp": "1700000000",
                "type": "text",
                "text": {"body": f"text {mid}"},
            }
            for mid in message_ids
        ],
    }
    body = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "waba", "changes": [{"field": "messages", "value": value}]}],
    }
    return json.dumps(body).encode()


def whatsapp_config() -> ChannelConfig:
    return ChannelConfig(
        channel_id="wa:1",
        provider="whatsapp",
        credentials={"token": "tok", "app_secret": WA_SECRET, "verify_token": "vt"},
        base_url="http://graph.test",
        options={"phone_number_id": WA_NUMBER, "verify_on_open": False},
    )


async def test_a_whatsapp_webhook_is_not_answered_200_before_its_messages_are_kept(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Meta stops delivering a notification once it is answered 200: the link answers
    once every message of it is kept. It answered as soon as they were in its buffer
    (``event_buffer``, 1,024), before the store had them."""
    body = wa_notification("wamid.1", "wamid.2", "wamid.3")
    headers = {"X-Hub-Signature-256": wa_webhook.sign(WA_SECRET, body)}
    provider = WhatsAppProvider(transport=httpx.MockTransport(lambda r: httpx.Response(200)))
    with trio.fail_after(120):
        async with gated_channel_of(provider, whatsapp_config()) as (store, _gate, channel):
            conn = await live_connection(channel)
            reply = await deliver("whatsapp", conn, "POST", {}, headers, body)
            kept = store.statistics().inbound_written
            assert (reply.status, kept) != (200, 0), "answered 200 with nothing kept"


@pytest.mark.parametrize("how", ["kill", "stop"])
async def test_a_whatsapp_notification_its_channel_lost_before_keeping_is_redelivered_whole(
    autojump_clock: trio.testing.MockClock, how: str
) -> None:
    """Three messages in one notification while the store is slow; the channel is
    killed (a crash) or stopped (an operator's stop, a handoff, the drain) before
    it kept them. Meta hears 503 and delivers the notification again, to the next
    connection: all three are kept. Before, it heard 200 once they were buffered,
    and the two behind the one in the reader's hands were gone."""
    body = wa_notification("wamid.1", "wamid.2", "wamid.3")
    headers = {"X-Hub-Signature-256": wa_webhook.sign(WA_SECRET, body)}
    provider = WhatsAppProvider(transport=httpx.MockTransport(lambda r: httpx.Response(200)))
    replies: list[int] = []
    first_delivery = functools.partial(delivered_into, replies, headers, body)

    with trio.fail_after(120):
        async with gated_channel_of(provider, whatsapp_config()) as (store, gate, channel):
            first = await live_connection(channel)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(first_delivery, first)
                await trio.testing.wait_all_tasks_blocked()
                assert replies == []  # waits for the store
                if how == "kill":
                    channel.ref.kill()
                else:
                    nursery.start_soon(channel.ref.stop)
            assert replies == [503]  # Meta delivers it again
            gate.open()
            while channel.connection in (None, first):  # noqa: ASYNC110 - restarted
                await trio.sleep(0.01)
            again = await deliver("whatsapp", channel.connection, "POST", {}, headers, body)
            assert again.status == 200
            await store.flush()
            kept = sorted(e.platform_message_id for e in await store.recent_inbound("wa:1"))
    assert kept == ["wamid.1", "wamid.2", "wamid.3"]


def wa_status_notification(*message_ids: str) -> bytes:
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "1555", "phone_number_id": WA_NUMBER},
        "statuses": [
            {"id": mid, "status": "delivered", "timestamp": "1700000000", "recipient_id": "4477"}
            for mid in message_ids
        ],
    }
    body = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "waba", "changes": [{"field": "messages", "value": value}]}],
    }
    return json.dumps(body).encode()


async def test_whatsapp_receipts_are_answered_200_only_once_kept(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A notification of delivery receipts too: they are kept before the reader
    reads on (no write behind, nothing taken in the webhook's task). They went to
    the store's batch and Meta heard 200 before it was written."""
    body = wa_status_notification("wamid.1", "wamid.2")
    headers = {"X-Hub-Signature-256": wa_webhook.sign(WA_SECRET, body)}
    provider = WhatsAppProvider(transport=httpx.MockTransport(lambda r: httpx.Response(200)))
    replies: list[int] = []
    delivered = functools.partial(delivered_into, replies, headers, body)

    with trio.fail_after(120):
        async with gated_channel_of(provider, whatsapp_config()) as (store, gate, channel):
            conn = await live_connection(channel)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(delivered, conn)
                await trio.testing.wait_all_tasks_blocked()
                assert replies == []  # not while the store holds them
                gate.open()
            assert replies == [200]
            assert store.statistics().inbound_written == 2


async def test_a_redelivery_of_an_event_a_restart_left_unkept_waits_for_its_keep(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The channel crashed with a message in hand while the store was slow: it stays
    ``pending``, kept by the next incarnation in the background. Meta's redelivery
    (it heard 503) finds the id in the window: it is answered once that message is
    kept, not at once as a duplicate (200 with nothing kept: a kill -9 then lost it)."""
    body = wa_notification("wamid.1")
    headers = {"X-Hub-Signature-256": wa_webhook.sign(WA_SECRET, body)}
    provider = WhatsAppProvider(transport=httpx.MockTransport(lambda r: httpx.Response(200)))
    replies: list[int] = []
    delivered = functools.partial(delivered_into, replies, headers, body)

    with trio.fail_after(120):
        async with gated_channel_of(provider, whatsapp_config()) as (store, gate, channel):
            first = await live_connection(channel)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(delivered, first)
                await trio.testing.wait_all_tasks_blocked()
                channel.ref.kill()
            assert replies == [503]
            while channel.connection in (None, first):  # noqa: ASYNC110 - restarted
                await trio.sleep(0.01)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(delivered, channel.connection)
                await trio.testing.wait_all_tasks_blocked()
                assert replies == [503]  # the redelivery waits for the first's keep
                gate.open()
            assert replies == [503, 200]
            assert [e.platform_message_id for e in await store.recent_inbound("wa:1")] == [
                "wamid.1"
            ]


# --- the dedupe window a checkpoint keeps ---------------------------------------------------


async def test_a_checkpoint_taken_while_an_event_waits_for_the_store_does_not_mark_it_seen(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An event's id enters the window (``seen``) as it is read, and a busy channel
    is checkpointed every round whatever its inbound batches do. A checkpoint taken
    while the event waits for the store holds only the ids of kept events: after a
    kill -9, the platform's redelivery of this one is news, kept and published. It
    held the id, and the redelivery was dropped as a duplicate."""
    from actors.channel.durable import export_state, restore_state
    from providers.testing import FakeProvider
    from tests.test_inbound_receipts import message

    provider = FakeProvider()
    with trio.fail_after(60):
        async with gated_channel_of(
            provider, ChannelConfig(channel_id="ch", provider="fake", credentials={"token": "t"})
        ) as (store, gate, channel):
            conn = await provider.wait_connected(1)
            conn.push(message("m0"))
            await trio.testing.wait_all_tasks_blocked()
            gate.open()  # m0 kept; m1 waits at a gate of its own
            await trio.testing.wait_all_tasks_blocked()
            gate.opened = trio.Event()
            conn.push(message("m1"))
            await trio.testing.wait_all_tasks_blocked()
            assert store.statistics().inbound_written == 1  # m1 still at the store's gate
            state = export_state(channel.memory, now=trio.current_time(), clock_offset=0.0)
            gate.open()
    # What a restart from that checkpoint makes of the platform's redeliveries:
    reborn = ChannelMemory(provider.limits, ChannelSettings())
    restore_state(reborn, state, now=0.0, clock_offset=0.0)
    assert reborn.seen.add("m1"), "the redelivered m1 would be dropped as a duplicate"
    assert not reborn.seen.add("m0")  # kept: a redelivery is a duplicate, as before


async def delivered_into(
    replies: list[int], headers: dict[str, str], body: bytes, conn: Any
) -> None:
    """Deliver a WhatsApp notification to ``conn``; its answer's status into ``replies``."""
    replies.append((await deliver("whatsapp", conn, "POST", {}, headers, body)).status)
