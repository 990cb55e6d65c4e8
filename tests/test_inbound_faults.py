"""The inbound side under a fault run: hostile payloads and webhooks (each test is a
defect one found, fixed; the durability ones are in test_inbound_durability).

Store tests against SQLite / PostgreSQL use real time with a hard ceiling
(threads, sockets); the rest run on virtual time.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from actors import open_actor_system
from actors.channel import ChannelActor, ChannelRef, ChannelSettings
from providers.base import (
    ChannelConfig,
    ConnectionStateChanged,
    Event,
    InboundMessage,
    ProviderError,
)
from providers.telegram import SECRET_HEADER, TelegramProvider
from providers.telegram.webhook import WebhookHandler
from providers.whatsapp import webhook as wa_webhook
from runtime import open_store
from runtime.config import StorageConfig
from runtime.events import EventHub
from runtime.node_cluster import ClusterMode
from runtime.table import ChannelRow, ChannelTable
from supervisors import ChildSpec, open_supervisor
from tests.test_inbound_durability import (
    REAL_CEILING,
    TG_SECRET,
    TG_TOKEN,
    WA_SECRET,
    tg_body,
    tg_message,
    wa_notification,
)


def huge_date_update(update_id: int) -> bytes:
    """A Telegram update whose ``date`` is an integer no float can hold (10**400)."""
    body = tg_body(tg_message(date=7), update_id=update_id)
    return body.replace(b'"date": 7', b'"date": 1' + b"0" * 400)


# --- 1. a Telegram update whose date overflows a float ------------------------------------


def test_a_telegram_webhook_update_with_an_out_of_range_date_gets_an_answer() -> None:
    """A signed (secret-bearing) update whose ``date`` is 10**400 gets a verdict (200
    with the update skipped, as for any well-numbered unreadable update, or 400). It
    used to raise OverflowError out of the sans-IO handler (the ops server answered
    500 and Telegram redelivered it forever)."""
    handler = WebhookHandler(channel_id="tg:1", secret=TG_SECRET)
    verdict = handler.handle({SECRET_HEADER: TG_SECRET}, huge_date_update(5))
    assert verdict.status in (200, 400)


async def test_a_polled_telegram_update_with_an_out_of_range_date_does_not_crash_the_link(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """getUpdates answers an update whose ``date`` is 10**400, then a good one. The bad
    update is skipped (its update_id is readable, so the offset moves past it) and the
    good one delivered; at worst a ProviderError would end events(). A bare
    OverflowError used to escape the poll task and the provider, crashing the channel
    actor; the offset never moved, so every restart crashed again on the same update."""
    bad = huge_date_update(10)
    good = tg_body(tg_message(text="after", message_id=2), update_id=11)
    served: list[int] = []

    def answer(request: httpx.Request) -> httpx.Response:
        method = request.url.path.rsplit("/", 1)[-1]
        if method == "getMe":
            me = {"id": 123456, "is_bot": True, "first_name": "b", "username": "b_bot"}
            return httpx.Response(200, json={"ok": True, "result": me})
        if method == "getUpdates":
            offset = json.loads(request.content or b"{}").get("offset")
            served.append(offset or 0)
            if offset is None or offset <= 10:
                text = b'{"ok": true, "result": [' + bad + b", " + good + b"]}"
            else:
                text = b'{"ok": true, "result": []}'
            return httpx.Response(200, content=text, headers={"content-type": "application/json"})
        return httpx.Response(200, json={"ok": True, "result": True})

    config = ChannelConfig(
        channel_id="tg:1",
        provider="telegram",
        credentials={"token": TG_TOKEN},
        base_url="http://telegram.test",
        options={"poll_timeout": 1},
    )
    provider = TelegramProvider(transport=httpx.MockTransport(answer))
    got: list[Event] = []
    with trio.fail_after(60):
        try:
            async with provider.open_connection(config) as conn:
                async with contextlib.aclosing(conn.events()) as events:
                    async for event in events:
                        if isinstance(event, ConnectionStateChanged):
                            continue
                        got.append(event)
                        break
        except ProviderError:
            pass  # classified: acceptable
    assert [getattr(e, "text", None) for e in got] == ["after"]


# --- 4. a webhook forwarded for a channel that has just come here, not yet connected ------


class Spinning(Exception):
    pass


class StandIn:
    """Just enough of a cluster node for ``forward_webhook``: one Telegram channel
    that runs here, with ``connection`` as its link (None: still connecting)."""

    node_id = "n1"
    forward_webhook = ClusterMode.forward_webhook
    _runs_here = ClusterMode._runs_here
    _link_here = ClusterMode._link_here
    _real_forward = ClusterMode._forward

    def __init__(self, connection: Any = None) -> None:
        self.calls = 0
        self._hub = EventHub()
        self._table = ChannelTable()
        spec = SimpleNamespace(id="tg:1", provider="telegram")
        channel = SimpleNamespace(connection=connection)
        self._table.put(ChannelRow(spec=spec, channel=channel))  # type: ignore[arg-type]
        self._cluster = SimpleNamespace(
            ownership=SimpleNamespace(owned={"tg:1"}),
            config=SimpleNamespace(lease_ttl=10.0),
        )
        self._moving: dict[str, trio.Event] = {}
        self._holders: dict[str, Any] = {}

    def subscribe(self, **filters: Any) -> Any:
        return self._hub.subscribe(**filters)

    def _channel_config(self, spec: Any) -> ChannelConfig:
        return ChannelConfig(
            channel_id="tg:1",
            provider="telegram",
            credentials={"token": TG_TOKEN, "webhook_secret": TG_SECRET},
            options={"mode": "webhook"},
        )

    async def _forward(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls > 10_000:
            raise Spinning(f"_forward called {self.calls} times at t={trio.current_time()}")
        return await self._real_forward(*args, **kwargs)

    async def webhook(self) -> Any:
        return await self.forward_webhook(
            "telegram", "tg:1", "POST", {}, {SECRET_HEADER: TG_SECRET}, tg_body(tg_message())
        )


async def test_a_forwarded_webhook_for_a_channel_now_here_but_unconnected_does_not_spin(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The ops app saw the channel as remote and calls ``forward_webhook``; meanwhile
    the channel moved here (handoff, failover) and is still connecting (no link).
    It waits for the link, yielding, and answers 503 by WEBHOOK_FORWARD_TIMEOUT
    (Telegram redelivers). It looped with no checkpoint: the node's whole loop
    spun for ever, and the channel could never connect to end it."""
    node = StandIn()
    others_ran = 0

    async def another_task() -> None:
        nonlocal others_ran
        for _ in range(100):  # then it ends: the clock may jump to the webhook's deadline
            await trio.lowlevel.checkpoint()
            others_ran += 1

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(another_task)
            await trio.lowlevel.checkpoint()
            others_ran = 0
            try:
                reply = await node.webhook()
            except Spinning as exc:
                pytest.fail(
                    f"forward_webhook spins: {exc}; other tasks ran {others_ran} times meanwhile"
                )
            nursery.cancel_scope.cancel()
    assert reply.status == 503
    assert others_ran == 100  # the loop went on meanwhile


async def test_a_forwarded_webhook_that_came_here_is_answered_within_its_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Handed to a link here whose channel does not take it, it is answered 503
    when the forward's own wait (WEBHOOK_FORWARD_TIMEOUT) runs out: the link got
    what was left of it. It got a WEBHOOK_TIMEOUT of its own on top, and the
    platform heard nothing for up to 50 s."""
    from runtime.node_cluster import WEBHOOK_FORWARD_TIMEOUT

    class Stuck:  # a Telegram link whose channel never comes back for the event
        async def feed_webhook(self, headers: Any, body: bytes) -> int:
            await trio.sleep_forever()
            raise AssertionError("unreachable")

    node = StandIn(Stuck())
    with trio.fail_after(120):
        began = trio.current_time()
        reply = await node.webhook()
    assert reply.status == 503
    assert trio.current_time() - began == pytest.approx(WEBHOOK_FORWARD_TIMEOUT)


# --- 6. a non-finite WhatsApp timestamp makes a message unstorable -------------------------


@pytest.mark.parametrize("timestamp", ["NaN", "inf", "1e400"])
async def test_a_whatsapp_message_with_a_non_finite_timestamp_is_still_kept(
    tmp_path: Path, timestamp: str
) -> None:
    """A timestamp of ``"NaN"``, ``"inf"`` or ``"1e400"`` is read as unknown (None) and
    the message kept. ``_time`` used to turn any float text into the timestamp, and
    the durable stores refuse NaN and infinities (``dumps(allow_nan=False)``), so the
    message, already answered 200 to Meta, was logged and skipped: published once,
    never kept (a redelivery after a restart was news again)."""
    body = wa_notification("wamid.T").replace(b'"1700000000"', json.dumps(timestamp).encode())
    outcome = wa_webhook.handle_webhook(
        "POST",
        {},
        {"X-Hub-Signature-256": wa_webhook.sign(WA_SECRET, body)},
        body,
        app_secret=WA_SECRET,
        verify_token="vt",
        channel_id="wa:1",
    )
    assert outcome.status == 200 and len(outcome.events) == 1, outcome
    config = StorageConfig(backend="sqlite", path=str(tmp_path / "s.sqlite3"))
    with trio.fail_after(REAL_CEILING):
        async with open_store(config) as store:
            await store.store_inbound(list(outcome.events))
            kept = await store.recent_inbound("wa:1")
    assert [e.platform_message_id for e in kept] == ["wamid.T"]


# --- 7. a platform's rate-limit wait that is negative, NaN or infinite ---------------------


@pytest.mark.parametrize("reason", ["-1", "nan", "inf"])
def test_a_websocket_server_s_4029_wait_is_a_finite_non_negative_delay(reason: str) -> None:
    """A generic websocket server closes with 4029 and a reason the provider reads as
    the wait (or sends an error frame with ``retry_after``): "-1", "nan" and "inf"
    become a finite wait >= 0 (clamped, or the default for a reason that is not one).
    They used to be taken as they were: the channel waits exactly ``retry_after`` with
    ``trio.move_on_after``, where -1 and NaN raised ValueError (the channel actor
    crashed, every reconnect again) and inf never reconnected."""
    import math

    from providers.websocket.core import error_from_close, error_from_code

    for error in (
        error_from_close(4029, reason),
        error_from_code("rate_limited", "slow down", retry_after=float(reason)),
    ):
        wait = getattr(error, "retry_after", 0.0)
        assert math.isfinite(wait) and wait >= 0, (type(error).__name__, wait)


async def test_a_negative_rate_limit_wait_at_connect_does_not_crash_the_channel(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A server's 4029 "-1" ends a connect attempt: the channel waits no time at all
    (the wait is clamped to 0) and connects on the next attempt, without its actor
    crashing. The
    RateLimited used to carry retry_after=-1, ``move_on_after(-1)`` raised ValueError
    in the connection loop and the supervisor restarted the actor (a crash per
    attempt)."""
    from providers.testing import FakeProvider
    from providers.websocket.core import error_from_close

    provider = FakeProvider(connect_script=[error_from_close(4029, "-1"), None])
    config = ChannelConfig(channel_id="ch", provider="fake", credentials={"token": "t"})
    settings = ChannelSettings()
    factory, memory = ChannelActor.factory(config, provider, settings=settings)
    with trio.fail_after(60):
        async with open_actor_system() as system:
            async with open_supervisor(
                system, [ChildSpec(id="ch", start=factory)], intensity=10, period=60.0
            ) as sup:
                ref = await sup.whereis_child("ch")
                assert ref is not None
                channel = ChannelRef(ref, memory, "ch", provider.name)
                await provider.wait_connected(1)
                assert channel.statistics().restarts == 0


async def test_a_wait_of_a_day_at_connect_is_waited_whole(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Discord's session starts come back after up to a day: the connection loop
    waits the platform's whole wait. It capped every wait at an hour, and a bot
    out of identifies knocked again every hour."""
    from providers.base import RateLimited, RateLimitScope
    from providers.testing import FakeProvider

    day = 86_400.0
    provider = FakeProvider(
        connect_script=[
            RateLimited("no session starts left", retry_after=day, scope=RateLimitScope.GLOBAL),
            None,
        ]
    )
    config = ChannelConfig(channel_id="ch", provider="fake", credentials={"token": "t"})
    factory, _ = ChannelActor.factory(config, provider, settings=ChannelSettings())
    with trio.fail_after(2 * day):
        async with open_actor_system() as system:
            async with open_supervisor(
                system, [ChildSpec(id="ch", start=factory)], intensity=10, period=60.0
            ):
                began = trio.current_time()
                await provider.wait_connected(1)
                assert trio.current_time() - began >= day


@pytest.mark.parametrize("retry_after", [b"-1", b"1" + b"0" * 400])
def test_a_telegram_429_to_get_updates_is_a_finite_non_negative_wait(retry_after: bytes) -> None:
    """A 429 to getUpdates (the polling inbound path) whose ``parameters.retry_after``
    is -1 or 10**400 is a RateLimited with a finite wait >= 0. The first used to
    become RateLimited(retry_after=-1.0) (the channel actor crashed on
    ``move_on_after(-1)``), the second a bare OverflowError from ``float()`` in
    ``_map_error`` (not a ProviderError: the poll task, the provider and the actor
    died)."""
    import math

    from providers.base import RateLimited
    from providers.telegram import core as tg_core

    body = (
        b'{"ok": false, "error_code": 429, "description": "Too Many Requests", '
        b'"parameters": {"retry_after": ' + retry_after + b"}}"
    )
    with pytest.raises(RateLimited) as caught:
        tg_core.parse_response(tg_core.get_updates(offset=None, timeout=1, limit=100), 429, body)
    wait = caught.value.retry_after
    assert math.isfinite(wait) and wait >= 0, wait


# --- 8. unsigned WhatsApp posts cost the node's loop a full parse -------------------------


async def test_an_unsigned_whatsapp_post_is_not_parsed_where_a_number_runs_elsewhere(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ops/app.py promises "only a signed body is parsed", also in a cluster (a target
    ``remote``) or while a local number is reconnecting: an unsigned post (no
    X-Hub-Signature-256 at all) is refused 403 unparsed. There the 403 short cut used
    to be skipped, and the post was parsed on the event loop (``bounded_json.loads``,
    up to 4 MiB: ~1 s of CPU for 4 MiB of 64-deep arrays) before the remote number's
    owner check refused it (403)."""
    from runtime.ops import ops_app
    from runtime.view import WebhookTarget
    from runtime.webhooks import check_here
    from tests.test_ops_http import NUMBER_A, NUMBER_B, FakeNode, SignedHook, notification
    from tests.test_ops_http import WA_SECRET as OPS_WA_SECRET

    class ClusterNode(FakeNode):
        async def forward_webhook(
            self,
            provider: str,
            channel_id: str,
            method: str,
            query: Any,
            headers: Any,
            body: bytes,
            *,
            signatures: Any = None,
        ) -> Any:
            config = ChannelConfig(
                channel_id=channel_id,
                provider="whatsapp",
                credentials={"token": "t", "app_secret": OPS_WA_SECRET, "verify_token": "v"},
                options={"phone_number_id": NUMBER_B},
            )
            judged = check_here(
                provider, config, method, query, headers, body, signatures=signatures
            )
            assert judged is not None, "a forged post was forwarded"
            await trio.lowlevel.checkpoint()
            return judged

    node = ClusterNode()
    local = SignedHook("wa-a", NUMBER_A, OPS_WA_SECRET)
    node.targets["whatsapp"] = [
        WebhookTarget(channel_id="wa-a", options={"phone_number_id": NUMBER_A}, connection=local),  # type: ignore[arg-type]
        WebhookTarget(channel_id="wa-b", options={"phone_number_id": NUMBER_B}, remote=True),
    ]
    parsed_bodies: list[int] = []
    import providers.bounded_json as bj

    real_loads = bj.loads

    def spying_loads(data: Any, **kwargs: Any) -> Any:
        parsed_bodies.append(len(data))
        return real_loads(data, **kwargs)

    monkeypatch.setattr(bj, "loads", spying_loads)
    body = notification((NUMBER_B, "forged"))
    app = ops_app(node)  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ops") as client:
        answer = await client.post("/webhooks/whatsapp", content=body)
    assert answer.status_code == 403
    assert parsed_bodies == [], f"an unsigned post was parsed: {parsed_bodies}"


@pytest.mark.parametrize("where", ["remote", "reconnecting"])
async def test_a_forged_whatsapp_post_is_judged_by_configured_secrets_before_it_is_read(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """A post with a well-formed signature that no app secret made, for a number on
    another node or one reconnecting here, is refused 403 before its depth is checked
    or it is parsed: the node checks it against the app secrets in those channels'
    configs (``WebhookTarget.signer``). One signed with such a secret goes on (parsed,
    then routed: forwarded, or 503 while the channel reconnects)."""
    from runtime.ops import ops_app
    from runtime.view import WebhookTarget
    from runtime.webhooks import ConfiguredSigner, WebhookReply
    from tests.test_ops_http import NUMBER_A, NUMBER_B, FakeNode, JudgingHook, notification, signed
    from tests.test_ops_http import WA_SECRET as OPS_WA_SECRET

    b_secret = "b-apps-secret"

    class ClusterNode(FakeNode):
        forwarded = 0

        async def forward_webhook(self, *args: Any, **kwargs: Any) -> WebhookReply:
            self.forwarded += 1
            await trio.lowlevel.checkpoint()
            return WebhookReply(status=200, body=b"ok")

    node = ClusterNode()
    node.targets["whatsapp"] = [
        WebhookTarget(
            channel_id="wa-a",
            options={"phone_number_id": NUMBER_A},
            connection=JudgingHook("wa-a", NUMBER_A, OPS_WA_SECRET),  # type: ignore[arg-type]
        ),
        WebhookTarget(
            channel_id="wa-b",
            options={"phone_number_id": NUMBER_B},
            remote=where == "remote",
            signer=ConfiguredSigner(b_secret),
        ),
    ]
    read = spied_reads(monkeypatch)
    body = notification((NUMBER_B, "for b"))
    app = ops_app(node)  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ops") as client:
        forged = await client.post(
            "/webhooks/whatsapp", content=body, headers=signed(body, "not-any-app-secret")
        )
        assert forged.status_code == 403
        assert read == [], f"a forged post was read: {read}"
        good = await client.post("/webhooks/whatsapp", content=body, headers=signed(body, b_secret))
    assert good.status_code == (200 if where == "remote" else 503)
    assert "loads" in read  # a signed post is read
    assert node.forwarded == (1 if where == "remote" else 0)


async def test_an_unsigned_whatsapp_post_does_not_hold_the_node_s_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A single node, every number connected and judged: an unsigned 4 MiB post of
    arrays nested 62 deep (within the 64 allowed) is refused 403 before its depth is
    checked or it is parsed. ``bounded_json.check_depth`` used to run on the event
    loop before the signature: up to 64 passes of ``bytes.replace`` over the whole
    body, ~0.9 s of CPU (an HMAC of the same body takes ~3 ms, in a worker thread),
    during which every channel of the node (heartbeats, sends, other webhooks)
    stalled, so a single client posting in a loop kept the node's loop busy. The
    order is asserted (spies on the depth check and the parser), not the stall's
    length: a wall-clock bound fails at random on a loaded machine."""
    from runtime.ops import ops_app
    from runtime.view import WebhookTarget
    from tests.test_hostile_input import CountingHook
    from tests.test_ops_http import NUMBER_A, FakeNode
    from tests.test_ops_http import WA_SECRET as OPS_WA_SECRET

    node = FakeNode()
    hook = CountingHook("wa-a", NUMBER_A, OPS_WA_SECRET)
    node.targets["whatsapp"] = [
        WebhookTarget(channel_id="wa-a", options={"phone_number_id": NUMBER_A}, connection=hook)  # type: ignore[arg-type]
    ]
    block = b"[" * 62 + b"]" * 62
    count = (4 * 1024 * 1024 - 20) // (len(block) + 1)
    body = b'{"a":[' + b",".join([block] * count) + b"]}"
    read = spied_reads(monkeypatch)
    app = ops_app(node)  # type: ignore[arg-type]
    with trio.fail_after(REAL_CEILING):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ops") as client:
            answer = await client.post("/webhooks/whatsapp", content=body)
    assert answer.status_code == 403
    assert hook.calls == 0
    assert read == [], f"an unsigned post was read: {read}"


# --- 9. a Discord READY whose session fields are not strings --------------------------------


def test_a_ready_with_non_string_session_fields_does_not_break_the_reconnect() -> None:
    """READY's ``session_id`` and ``resume_gateway_url`` of the wrong type are ignored:
    the next reconnect identifies afresh on the configured gateway URL, and they are
    never stored. They used to be kept as they came (``d.get(...)``, no type check):
    an integer there made the next reconnect's ``connect_url()`` raise AttributeError
    (called outside the shell's exception map, so the channel actor crashed), ``repr``
    of the core raise TypeError, and the values went into ``session_state()``, i.e.
    the checkpoint, so every restart resumed with them and crashed again."""
    from providers.discord.gateway import GatewayCore

    core = GatewayCore(
        token="bot-token", channel_id="dc", gateway_url="wss://gateway.discord.gg", now=0.0
    )
    core.connection_made(0.0)
    core.receive(json.dumps({"op": 10, "d": {"heartbeat_interval": 41250}}), 0.0)
    ready = {"session_id": 12345678901, "resume_gateway_url": 5, "user": {"id": "1"}}
    core.receive(json.dumps({"op": 0, "s": 1, "t": "READY", "d": ready}), 0.1)
    core.receive(json.dumps({"op": 7}), 0.2)  # the gateway asks for a reconnect
    url = core.connect_url()
    assert url.startswith("wss://gateway.discord.gg")
    repr(core)
    data = core.session_state().data
    assert all(isinstance(data.get(k, ""), str) for k in ("session_id", "resume_gateway_url"))


# --- 10. two Telegram edits within one second ------------------------------------------------


async def test_two_telegram_edits_of_a_message_within_one_second_both_arrive(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Telegram's ``edit_date`` has a resolution of one second, and a message is often
    edited several times a second (a bot streaming its answer by edits). Two edits
    are two updates (distinct update_id, distinct text), and both (at least the last
    one) reach the subscribers and the store: an edit is keyed by its update_id
    (``MessageEdited.edit_id``). The channel used to key an edit by
    ``edit:{id}:{timestamp}`` (inbound.py) and the store by ``(id, repr(timestamp))``:
    the second edit was counted a duplicate and never published nor kept, so the
    product was left with the older text."""
    from providers.base import MessageEdited
    from providers.testing import FakeProvider

    def edit(update_id: int, text: str) -> MessageEdited:
        body = json.dumps(
            {
                "update_id": update_id,
                "edited_message": {
                    "message_id": 7,
                    "date": 1700000000,
                    "edit_date": 1700000100,
                    "chat": {"id": 42},
                    "from": {"id": 5},
                    "text": text,
                },
            }
        ).encode()
        verdict = WebhookHandler(channel_id="ch", secret=TG_SECRET).handle(
            {SECRET_HEADER: TG_SECRET}, body
        )
        assert verdict.update is not None
        event = verdict.update.event
        assert isinstance(event, MessageEdited)
        return event

    first, second = edit(100, "Thinking"), edit(101, "Thinking... the answer is 42")
    provider = FakeProvider()
    config = ChannelConfig(channel_id="ch", provider="fake", credentials={"token": "t"})
    settings = ChannelSettings()
    with trio.fail_after(60):
        async with open_store(StorageConfig(backend="memory")) as store:
            factory, memory = ChannelActor.factory(config, provider, settings=settings, sink=store)
            async with open_actor_system() as system:
                async with open_supervisor(
                    system, [ChildSpec(id="ch", start=factory)], intensity=10, period=60.0
                ) as sup:
                    ref = await sup.whereis_child("ch")
                    assert ref is not None
                    channel = ChannelRef(ref, memory, "ch", provider.name)
                    events = channel.subscribe(accepts=lambda e: isinstance(e, MessageEdited))
                    conn = await provider.wait_connected(1)
                    conn.push(first, second)
                    await trio.sleep(1)
                    got = []
                    while True:
                        try:
                            got.append(events.receive_nowait().text)
                        except trio.WouldBlock:
                            break
                    kept = [e.text for e in await store.recent_inbound("ch")]
    assert got[-1:] == ["Thinking... the answer is 42"], got
    assert "Thinking... the answer is 42" in kept, kept


# --- 12. a generic websocket server can put a local file path into an inbound message -----


def test_an_inbound_websocket_message_never_carries_a_local_file_path() -> None:
    """A message frame's ``media`` is read by its URL alone (Media's own contract:
    received media always has one); a server sending ``"media": {"kind": "document",
    "path": "config/production.toml"}`` gets a message without that media. The core
    used to structure the frame's ``media`` straight into ``providers.base.Media``,
    whose ``path`` is "a local file to upload": a product that forwards or echoes
    inbound media (``OutboundMessage(media=event.media)`` in an embedded program: only
    the HTTP API refuses local paths) made the node read the file and upload it to a
    platform."""
    from providers.websocket.core import Emit, WebSocketCore

    core = WebSocketCore(
        "ws:1",
        now=0.0,
        ping_interval=None,
        pong_timeout=10.0,
        liveness_timeout=None,
        send_timeout=10.0,
    )
    core.frame_received(json.dumps({"type": "ready", "session": "s"}), 0.0)
    frame = {
        "type": "message",
        "id": "m1",
        "peer": "p",
        "sender": "s",
        "media": {"kind": "document", "path": "config/production.toml"},
    }
    actions = core.frame_received(json.dumps(frame), 0.1)
    media = [
        a.event.media
        for a in actions
        if isinstance(a, Emit) and isinstance(a.event, InboundMessage) and a.event.media
    ]
    assert all(m.path is None and m.content is None for m in media), media


def test_a_websocket_event_with_a_non_finite_timestamp_is_storable() -> None:
    """As WhatsApp's: a generic websocket message or receipt whose timestamp is NaN
    or 1e400 has none (no store keeps such a number, and this protocol has no
    replay of a refused event)."""
    from providers.websocket import core
    from runtime.store.codec import dumps, encode_event

    ws = core.WebSocketCore(
        "ch",
        now=0.0,
        ping_interval=None,
        pong_timeout=10.0,
        liveness_timeout=None,
        send_timeout=10.0,
    )
    ws.phase = core.Phase.OPEN
    frames = [
        b'{"type":"message","id":"m1","peer":"p","sender":"s","text":"hi","timestamp":1e400}',
        b'{"type":"receipt","id":"m0","status":"delivered","timestamp":NaN}',
        b'{"type":"edit","id":"m1","peer":"p","sender":"s","text":"yo","timestamp":-1e400}',
    ]
    events = [
        action.event
        for frame in frames
        for action in ws.frame_received(frame, 1.0)
        if isinstance(action, core.Emit)
    ]
    assert [event.timestamp for event in events] == [None, None, None]
    for event in events:
        dumps(encode_event(event))  # (raised ValueError: out of range float values)


def spied_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What reads a WhatsApp post from now on: ``check_depth`` and ``loads``, in order."""
    import providers.bounded_json as bj

    read: list[str] = []
    real_check_depth, real_loads = bj.check_depth, bj.loads

    def spying_check_depth(data: Any, *args: Any, **kwargs: Any) -> Any:
        read.append("check_depth")
        return real_check_depth(data, *args, **kwargs)

    def spying_loads(data: Any, *args: Any, **kwargs: Any) -> Any:
        read.append("loads")
        return real_loads(data, *args, **kwargs)

    monkeypatch.setattr(bj, "check_depth", spying_check_depth)
    monkeypatch.setattr(bj, "loads", spying_loads)
    return read
