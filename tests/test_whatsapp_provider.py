"""The WhatsApp provider against the in-process emulator, over real sockets on loopback.

A small webhook receiver (served like an emulator) stands in for the node's
ops HTTP server: it hands every request to the connection's ``handle_webhook``.
Real sockets, so real time: each test has a hard ``trio.fail_after`` ceiling
and nothing sleeps.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

import attrs
import httpx
import pytest
import trio
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from providers.base import (
    AuthenticationFailed,
    Banned,
    ChannelConfig,
    ConnectionState,
    ConnectionStateChanged,
    DeliveryReceipt,
    Event,
    InboundMessage,
    MessageTooLong,
    OutboundMessage,
    OutsideWindow,
    Provider,
    RateLimited,
    RateLimitScope,
    ReceiptStatus,
    Template,
    TransientError,
)
from providers.emulators import Emulator, open_emulator
from providers.emulators.whatsapp import WhatsAppEmulator
from providers.registry import EMULATORS, PROVIDERS, load
from providers.whatsapp import WhatsAppConnection, WhatsAppProvider, core
from tests.support import clock_window, emulator_call

CEILING: Final = 10.0  # real seconds; only a hang gets near it
TOKEN: Final = "EAAG-test-token"
SECRET: Final = "test-app-secret"
VERIFY: Final = "test-verify-token"
NUMBER: Final = "106540352242922"
USER: Final = "16505551234"


class Receiver(Emulator):
    """The webhook endpoint of the test: forwards to the current connection."""

    name = "receiver"

    def __init__(self) -> None:
        super().__init__()
        self.connection: WhatsAppConnection | None = None

    def platform_routes(self) -> list[BaseRoute]:
        return [Route("/webhook", self._webhook, methods=["GET", "POST"])]

    async def _webhook(self, request: Request) -> Response:
        if self.connection is None:
            return Response(b"no channel", status_code=503)
        status, body = await self.connection.handle_webhook(
            request.method, dict(request.query_params), dict(request.headers), await request.body()
        )
        return Response(body, status_code=status, media_type="text/plain")


@attrs.frozen(kw_only=True)
class Stack:
    emulator: WhatsAppEmulator
    base_url: str
    webhook_url: str
    connection: WhatsAppConnection
    events: AsyncIterator[Event]
    http: httpx.AsyncClient

    async def control(self, path: str, payload: dict[str, Any]) -> httpx.Response:
        return await emulator_call(self.base_url, path, payload, http=self.http)

    async def inject(self, text: str, sender: str = USER) -> dict[str, Any]:
        answer = await self.control("inject", {"from": sender, "text": text})
        assert answer.status_code == 200, answer.text
        result: dict[str, Any] = answer.json()
        return result

    async def next_event(self) -> Event:
        return await self.events.__anext__()

    async def next_inbound(self) -> InboundMessage:
        """The next inbound message, skipping the receipts of earlier sends."""
        while True:
            event = await self.next_event()
            if isinstance(event, InboundMessage):
                return event
            assert isinstance(event, DeliveryReceipt), event

    async def receipts(self, count: int) -> list[DeliveryReceipt]:
        found: list[DeliveryReceipt] = []
        while len(found) < count:
            event = await self.next_event()
            assert isinstance(event, DeliveryReceipt), event
            found.append(event)
        return found


def config(base_url: str, *, token: str = TOKEN, **options: Any) -> ChannelConfig:
    return ChannelConfig(
        channel_id="wa:main",
        provider="whatsapp",
        credentials={"token": token, "app_secret": SECRET, "verify_token": VERIFY},
        base_url=base_url,
        options={"phone_number_id": NUMBER, **options},
    )


@asynccontextmanager
async def open_stack(**emulator_options: Any) -> AsyncIterator[Stack]:
    receiver = Receiver()
    emulator = WhatsAppEmulator(
        app_secret=SECRET, tokens={TOKEN}, phone_number_ids={NUMBER}, **emulator_options
    )
    async with open_emulator(receiver) as receiver_url, open_emulator(emulator) as base_url:
        emulator.webhook_url = f"{receiver_url}/webhook"
        provider = WhatsAppProvider()
        async with provider.open_connection(config(base_url)) as connection:
            receiver.connection = connection
            events = connection.events()
            first = await events.__anext__()
            assert isinstance(first, ConnectionStateChanged)
            assert first.state is ConnectionState.CONNECTED
            async with httpx.AsyncClient() as http:
                yield Stack(
                    emulator=emulator,
                    base_url=base_url,
                    webhook_url=emulator.webhook_url,
                    connection=connection,
                    events=events,
                    http=http,
                )
            receiver.connection = None


def text(body: str, peer: str = USER) -> OutboundMessage:
    return OutboundMessage(peer=peer, idempotency_key=f"k-{body}", text=body)


def template(peer: str = USER) -> OutboundMessage:
    return OutboundMessage(
        peer=peer,
        idempotency_key="t",
        template=Template(name="hello_world", language="en_US"),
    )


# --- the registry ---------------------------------------------------------------------


def test_the_registry_names_the_provider_and_the_emulator() -> None:
    assert load(PROVIDERS, "whatsapp") is WhatsAppProvider
    assert load(EMULATORS, "whatsapp") is WhatsAppEmulator
    provider = WhatsAppProvider()
    assert isinstance(provider, Provider)
    assert provider.limits is core.WHATSAPP_LIMITS
    assert provider.limits.per_peer_rate == pytest.approx(1 / 6)
    assert (provider.limits.per_channel_rate, provider.limits.per_peer_burst) == (80.0, 3)


# --- inbound --------------------------------------------------------------------------


async def test_an_injected_text_arrives_as_an_inbound_message() -> None:
    with trio.fail_after(CEILING):
        async with open_stack() as stack:
            injected = await stack.inject("hello bot", sender="+1 650 555 1234")
            assert injected["webhook_status"] == 200
            event = await stack.next_event()
            assert isinstance(event, InboundMessage)
            assert (event.peer, event.sender, event.text) == (USER, USER, "hello bot")
            assert event.platform_message_id == injected["message_id"]
            assert event.metadata["profile_name"] == "Emulated User"
            assert "received=1" in repr(stack.connection)


async def test_a_bad_signature_is_refused_with_403_and_no_event() -> None:
    with trio.fail_after(CEILING):
        async with open_stack() as stack:
            await stack.control("fault", {"kind": "bad_signature"})
            assert (await stack.inject("forged"))["webhook_status"] == 403
            body = b'{"object":"whatsapp_business_account","entry":[]}'
            forged = "sha256=" + hmac.new(b"wrong", body, hashlib.sha256).hexdigest()
            answer = await stack.http.post(
                stack.webhook_url, content=body, headers={"X-Hub-Signature-256": forged}
            )
            assert answer.status_code == 403
            assert (await stack.inject("genuine"))["webhook_status"] == 200
            event = await stack.next_event()
            assert isinstance(event, InboundMessage) and event.text == "genuine"


async def test_get_verification_echoes_the_challenge_only_for_the_right_token() -> None:
    with trio.fail_after(CEILING):
        async with open_stack() as stack:
            good = {"hub.mode": "subscribe", "hub.verify_token": VERIFY, "hub.challenge": "8731"}
            answer = await stack.http.get(stack.webhook_url, params=good)
            assert (answer.status_code, answer.text) == (200, "8731")
            bad = {**good, "hub.verify_token": "guess"}
            assert (await stack.http.get(stack.webhook_url, params=bad)).status_code == 403
            # The emulator's subscription handshake, as Meta performs it.
            ok = await stack.control("webhook", {"url": stack.webhook_url, "verify_token": VERIFY})
            assert ok.status_code == 200 and ok.json()["verified"] is True
            refused = await stack.control("webhook", {"url": "http://x/", "verify_token": "no"})
            assert refused.status_code == 400
            refused = await stack.control(
                "webhook", {"url": stack.webhook_url, "verify_token": "no"}
            )
            assert refused.status_code == 400 and refused.json()["status"] == 403
            assert stack.emulator.webhook_url == stack.webhook_url


# --- outbound -------------------------------------------------------------------------


async def test_a_send_returns_the_wamid_and_statuses_arrive_as_receipts() -> None:
    with trio.fail_after(CEILING):
        async with open_stack() as stack:
            await stack.inject("hi")
            assert isinstance(await stack.next_event(), InboundMessage)
            result = await stack.connection.send(text("welcome"))
            assert result.peer == USER and result.platform_message_id.startswith("wamid.")
            (sent,) = stack.emulator.sent
            assert sent["id"] == result.platform_message_id
            assert sent["body"]["text"] == {"body": "welcome", "preview_url": False}
            receipts = await stack.receipts(3)
            assert [r.status for r in receipts] == [
                ReceiptStatus.SENT,
                ReceiptStatus.DELIVERED,
                ReceiptStatus.READ,
            ]
            assert {(r.platform_message_id, r.peer) for r in receipts} == {
                (result.platform_message_id, USER)
            }


async def test_out_of_order_statuses_are_emitted_as_they_come() -> None:
    with trio.fail_after(CEILING):
        async with open_stack() as stack:
            order = ["read", "sent", "delivered"]
            await stack.control("fault", {"kind": "out_of_order_statuses", "order": order})
            result = await stack.connection.send(template())
            receipts = await stack.receipts(3)
            assert [r.status.value for r in receipts] == order
            assert all(r.platform_message_id == result.platform_message_id for r in receipts)
            rank = [ReceiptStatus.SENT, ReceiptStatus.DELIVERED, ReceiptStatus.READ]
            assert max((r.status for r in receipts), key=rank.index) is ReceiptStatus.READ


async def test_outside_the_24_hour_window_free_text_fails_but_a_template_passes() -> None:
    with trio.fail_after(CEILING):
        async with open_stack() as stack:
            with pytest.raises(OutsideWindow, match="131047") as info:
                await stack.connection.send(text("are you there?"))
            assert info.value.peer == USER
            assert (await stack.connection.send(template())).peer == USER
            await stack.inject("yes")  # the user writes: the window opens
            assert (await stack.next_inbound()).text == "yes"
            await stack.connection.send(text("great"))
            await stack.control("fault", {"kind": "expire_window", "from": USER})
            with pytest.raises(OutsideWindow):
                await stack.connection.send(text("still there?"))


async def test_throughput_limit_raises_channel_scoped_rate_limited() -> None:
    with trio.fail_after(CEILING):
        async with open_stack(throughput=3) as stack:
            for i in range(3):
                await stack.connection.send(template(peer=f"1555000000{i}"))
            with pytest.raises(RateLimited, match="130429") as info:
                await stack.connection.send(template(peer="15550000009"))
            assert info.value.scope is RateLimitScope.CHANNEL
            assert info.value.retry_after == core.THROUGHPUT_RETRY_AFTER


async def test_pair_rate_limit_raises_peer_scoped_rate_limited() -> None:
    with trio.fail_after(CEILING):
        async with open_stack() as stack:
            for _ in range(3):  # the burst
                await stack.connection.send(template())
            with pytest.raises(RateLimited, match="131056") as info:
                await stack.connection.send(template())
            assert info.value.scope is RateLimitScope.PEER
            assert (info.value.peer, info.value.retry_after) == (USER, core.PAIR_RETRY_AFTER)
            await stack.connection.send(template(peer="15550000001"))  # others are unaffected


async def test_the_shared_rate_limit_fault_uses_its_remaining_time() -> None:
    with trio.fail_after(CEILING):
        async with open_stack() as stack:
            await stack.control("fault", {"kind": "rate_limit", "duration": 30})
            until = stack.emulator.rate_limited_until
            with clock_window() as window, pytest.raises(RateLimited) as info:
                await stack.connection.send(template())
            # What was left when the emulator (same trio clock) answered, in
            # milliseconds on the wire (Retry-After: 29.998).
            least, most = window.remaining(until)
            assert least - 0.0005 <= info.value.retry_after <= most + 0.0005
            assert most <= 30.0


async def test_a_banned_token_is_banned_and_a_wrong_token_fails_authentication() -> None:
    with trio.fail_after(CEILING):
        async with open_stack() as stack:
            await stack.control("fault", {"kind": "ban_token", "token": TOKEN})
            with pytest.raises(Banned, match="368"):
                await stack.connection.send(template())
            with pytest.raises(Banned):
                async with WhatsAppProvider().open_connection(config(stack.base_url)):
                    pytest.fail("opened with a banned token")
            with pytest.raises(AuthenticationFailed, match="190"):
                async with WhatsAppProvider().open_connection(
                    config(stack.base_url, token="revoked")
                ):
                    pytest.fail("opened with a wrong token")


async def test_a_long_text_is_refused_by_both_sides() -> None:
    with trio.fail_after(CEILING):
        async with open_stack() as stack:
            with pytest.raises(MessageTooLong):
                await stack.connection.send(text("x" * 4097))
            assert stack.emulator.sent == []
            await stack.inject("hi")
            body = core.message_payload(text("x" * 4096))
            body["text"]["body"] += "y"  # past the provider's own check
            answer = await stack.http.post(
                f"{stack.base_url}/v21.0/{NUMBER}/messages",
                json=body,
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
            assert answer.status_code == 400
            assert answer.json()["error"]["code"] == 100
            error = core.map_error(answer.status_code, answer.headers, answer.content, peer=USER)
            assert isinstance(error, MessageTooLong)


async def test_a_failure_reported_by_webhook_arrives_as_a_failed_receipt() -> None:
    with trio.fail_after(CEILING):
        async with open_stack() as stack:
            await stack.control("fault", {"kind": "fail_next", "code": 131026, "via": "webhook"})
            result = await stack.connection.send(template())
            sent, failed = await stack.receipts(2)
            assert (sent.status, failed.status) == (ReceiptStatus.SENT, ReceiptStatus.FAILED)
            assert failed.platform_message_id == result.platform_message_id
            assert failed.error is not None and failed.error.startswith(
                "131026 Message Undeliverable"
            )


async def test_server_errors_and_network_failures_are_transient() -> None:
    with trio.fail_after(CEILING):
        async with open_stack() as stack:
            await stack.control("fault", {"kind": "fail_next", "code": 131000})
            with pytest.raises(TransientError, match="131000"):
                await stack.connection.send(template())
        # The emulator is gone: its port refuses connections.
        with pytest.raises(TransientError) as info:
            async with WhatsAppProvider().open_connection(config(stack.base_url)):
                pytest.fail("opened against a closed port")
        assert isinstance(info.value.__cause__, httpx.ConnectError)


async def test_close_ends_events_and_refuses_later_webhooks() -> None:
    with trio.fail_after(CEILING):
        async with open_stack() as stack:
            await stack.inject("queued before close")
            await stack.connection.close()
            assert "[CLOSED" in repr(stack.connection)
            event = await stack.next_event()
            assert isinstance(event, InboundMessage) and event.text == "queued before close"
            with pytest.raises(StopAsyncIteration):
                await stack.next_event()
            assert (await stack.inject("too late"))["webhook_status"] == 503
            with pytest.raises(trio.ClosedResourceError):
                await stack.connection.send(template())


async def test_the_emulator_speaks_the_graph_error_format() -> None:
    with trio.fail_after(CEILING):
        async with open_stack() as stack:
            answer = await stack.http.post(
                f"{stack.base_url}/v21.0/{NUMBER}/messages",
                json={"messaging_product": "whatsapp", "to": USER, "type": "text"},
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
            error = answer.json()["error"]
            assert answer.status_code == 400
            assert {"message", "type", "code", "fbtrace_id"} <= set(error)
            assert error["code"] == 131008
            unknown = await stack.http.get(
                f"{stack.base_url}/v21.0/999", headers={"Authorization": f"Bearer {TOKEN}"}
            )
            assert unknown.json()["error"]["error_subcode"] == 33
            stats = (await stack.http.get(f"{stack.base_url}/_emulator/stats")).json()
            assert stats["error_131008"] == 1
            assert "WhatsAppEmulator sent=0" in repr(stack.emulator)
            log = (await stack.http.get(f"{stack.base_url}/_emulator/webhook")).json()
            assert log["url"] == stack.webhook_url
            assert json.dumps(log)  # plain JSON


async def test_statuses_taken_at_once_skip_the_consumer_and_messages_still_reach_it() -> None:
    taken: list[DeliveryReceipt] = []
    three = trio.Event()

    def take(event: Event) -> bool:
        if not isinstance(event, DeliveryReceipt):
            return False
        taken.append(event)
        if len(taken) == 3:
            three.set()
        return True

    seen: list[Event] = []
    messages = [trio.Event(), trio.Event()]

    async def consume(events: AsyncIterator[Event]) -> None:
        async for event in events:
            seen.append(event)
            if isinstance(event, InboundMessage):
                messages[sum(isinstance(e, InboundMessage) for e in seen) - 1].set()

    with trio.fail_after(CEILING):
        async with open_stack() as stack:
            stack.connection.take_events_at_once(take)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(consume, stack.events)
                await stack.inject("hi")  # opens the 24-hour window
                await messages[0].wait()  # refused by take: handed to the consumer
                result = await stack.connection.send(text("welcome"))
                await three.wait()  # in the webhook's task, not through events()
                await stack.inject("again")
                await messages[1].wait()
                nursery.cancel_scope.cancel()
    assert [r.status for r in taken] == [
        ReceiptStatus.SENT,
        ReceiptStatus.DELIVERED,
        ReceiptStatus.READ,
    ]
    assert {r.platform_message_id for r in taken} == {result.platform_message_id}
    assert [type(e).__name__ for e in seen if not isinstance(e, ConnectionStateChanged)] == [
        "InboundMessage",
        "InboundMessage",
    ]
