"""The ops HTTP server, served by the real hypercorn server on 127.0.0.1.

The node is a small stand-in for :class:`runtime.view.NodeView` (settable
snapshots, a recorded ``send``); the webhook channels are real provider
connections opened against the in-process emulators, so signatures, secrets
and verify tokens are judged by the providers' own code. Real sockets mean
real time: no virtual clock, and every test has a hard ceiling.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import importlib
import json
import logging
import types
from collections.abc import AsyncIterator, Collection, Sequence
from typing import Any, Final

import attrs
import h11
import httpx
import pytest
import trio
import trio.testing

from actors import (
    AskTimeout,
    ChannelFailed,
    ChannelStatistics,
    ChannelStatus,
    ChannelUnavailable,
    MailboxFull,
    SendFailed,
)
from providers.base import (
    BadRecipient,
    ChannelConfig,
    ConnectionStateChanged,
    Event,
    InboundMessage,
    Media,
    MediaKind,
    MessageTooLong,
    OutboundMessage,
    SendResult,
)
from providers.emulators import open_emulator
from providers.emulators.telegram import TelegramEmulator
from providers.emulators.whatsapp import WhatsAppEmulator
from providers.telegram import SECRET_HEADER, TelegramProvider
from providers.whatsapp import WhatsAppProvider
from providers.whatsapp import webhook as whatsapp_webhook
from runtime.errors import KeyReused, NodeDraining, NodeStarting, Overloaded, UnknownChannel
from runtime.ops import health_report, ops_app, serve_ops
from runtime.ops.app import MAX_BODY
from runtime.ops.server import KEEP_ALIVE
from runtime.view import (
    ChannelSnapshot,
    ChannelTotals,
    NodeStatistics,
    WebhookLinks,
    WebhookTarget,
    links_of,
    totals_of,
)
from runtime.webhooks import telegram_headers
from tests.support import emulator_call, hang_up_mid_request, real_time_ceiling

CEILING: Final = 15.0  # seconds of real time; only a hang gets near it
API_TOKEN: Final = "ops-api-token-7f3a"
WA_TOKEN, WA_SECRET, WA_VERIFY = "EAAG-ops", "wa-app-secret", "wa-verify"
NUMBER_A, NUMBER_B, USER = "1110001", "2220002", "16505551234"
TG_TOKEN: Final = "123456:" + "A" * 35
TG_SECRET: Final = "tg-hook-secret"


# --- the stand-in node ------------------------------------------------------------------------


def snapshot(
    channel_id: str,
    status: ChannelStatus,
    *,
    provider: str = "telegram",
    tenant: str = "acme",
    last_error: str | None = None,
    start_error: str | None = None,
    mailbox_depth: int = 0,
    **counters: int,
) -> ChannelSnapshot:
    """A channel snapshot; ``counters`` override ChannelStatistics' ints (default 0)."""
    numbers = dict.fromkeys(
        (
            "reconnect_attempt",
            "sent",
            "send_failures",
            "received",
            "duplicates",
            "reconnects",
            "rate_limit_waits",
            "dead_letters",
            "subscriber_drops",
            "restarts",
        ),
        0,
    )
    numbers.update(counters)
    statistics = None
    if start_error is None:
        statistics = ChannelStatistics(
            channel_id=channel_id,
            provider=provider,
            status=status,
            connected_since=None,
            last_error=last_error,
            **numbers,
        )
    return ChannelSnapshot(
        channel_id=channel_id,
        tenant=tenant,
        provider=provider,
        status=status,
        statistics=statistics,
        mailbox_depth=mailbox_depth,
        start_error=start_error,
    )


class FakeNode:
    """A NodeView with settable state and a recorded send."""

    def __init__(self, node_id: str = "node-1") -> None:
        self.node_id = node_id
        self.ready = True
        self.snapshots: list[ChannelSnapshot] = []
        self.stats = NodeStatistics(
            node_id=node_id,
            started=0,
            configured=0,
            restarts=0,
            draining=False,
            uptime=12.5,
            store_backend="memory",
            store_pending=0,
        )
        self.targets: dict[str, list[WebhookTarget]] = {}
        self.sent: list[tuple[str, OutboundMessage]] = []
        self.send_error: Exception | None = None
        self.broken = False

    def channels(self) -> Sequence[ChannelSnapshot]:
        if self.broken:
            raise RuntimeError("the channel table is broken")
        return self.snapshots

    def statistics(self) -> NodeStatistics:
        return self.stats

    def channel_totals(self) -> ChannelTotals:
        return totals_of(self.channels())

    def webhook_targets(self, provider: str) -> Sequence[WebhookTarget]:
        return self.targets.get(provider, [])

    def webhook_target(self, provider: str, channel_id: str) -> WebhookTarget | None:
        return next((t for t in self.webhook_targets(provider) if t.channel_id == channel_id), None)

    def webhook_targets_for(
        self, provider: str, numbers: Collection[str]
    ) -> Sequence[WebhookTarget]:
        return [
            t
            for t in self.webhook_targets(provider)
            if t.options.get("phone_number_id") is not None
            and str(t.options["phone_number_id"]) in numbers
        ]

    def webhook_links(self, provider: str) -> WebhookLinks:
        return links_of(self.webhook_targets(provider))

    async def send(
        self,
        channel_id: str,
        message: OutboundMessage,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> SendResult:
        self.sent.append((channel_id, message))
        await trio.lowlevel.checkpoint()
        if self.send_error is not None:
            raise self.send_error
        return SendResult(platform_message_id=f"pm-{len(self.sent)}", peer=message.peer)


@contextlib.asynccontextmanager
async def serving(
    node: FakeNode, *, api_token: str | None = None
) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """``serve_ops`` in a nursery; yields a client on its base URL, and the URL."""
    async with trio.open_nursery() as nursery:
        url = await nursery.start(
            functools.partial(serve_ops, node, host="127.0.0.1", port=0, api_token=api_token)
        )
        async with httpx.AsyncClient(base_url=url) as client:
            yield client, url
        nursery.cancel_scope.cancel()


async def metric(client: httpx.AsyncClient, name: str, **labels: str) -> float:
    """One sample's value from GET /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    text = (await client.get("/metrics")).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    raise AssertionError(f"no sample {name}{labels}")


async def requests_total(client: httpx.AsyncClient, provider: str, outcome: str) -> float:
    return await metric(
        client, "switchboard_webhook_requests_total", provider=provider, outcome=outcome
    )


async def rejected_total(client: httpx.AsyncClient, provider: str, reason: str) -> float:
    return await metric(
        client, "switchboard_webhook_rejected_total", provider=provider, reason=reason
    )


# --- the package ------------------------------------------------------------------------------


def test_runtime_ops_all_lists_exactly_the_public_names() -> None:
    module = importlib.import_module("runtime.ops")
    public = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == set(module.__all__)
    assert len(module.__all__) == len(set(module.__all__))


def test_an_empty_api_token_is_refused() -> None:
    with pytest.raises(ValueError, match="api_token is empty"):
        ops_app(FakeNode(), api_token=" ")


# --- probes -----------------------------------------------------------------------------------


async def test_healthz_and_readyz_both_ways() -> None:
    node = FakeNode()
    with trio.fail_after(CEILING):
        async with serving(node) as (client, _):
            alive = await client.get("/healthz")
            assert (alive.status_code, alive.json()) == (200, {"status": "alive", "node": "node-1"})
            ready = await client.get("/readyz")
            assert (ready.status_code, ready.json()) == (200, {"status": "ready", "node": "node-1"})
            node.ready = False
            starting = await client.get("/readyz")
            assert starting.status_code == 503
            assert starting.json() == {
                "status": "not_ready",
                "node": "node-1",
                "reason": "starting",
            }
            node.stats = attrs.evolve(node.stats, draining=True)
            draining = await client.get("/readyz")
            assert (draining.status_code, draining.json()["reason"]) == (503, "draining")
            assert (await client.get("/healthz")).status_code == 200  # alive while draining


# --- health -----------------------------------------------------------------------------------


def _counts(**given: int) -> dict[str, int]:
    states = ("connected", "connecting", "backing_off", "failed", "stopped", "not_started")
    counts = {state: given.get(state, 0) for state in states}
    return {"total": sum(counts.values()), **counts}


def test_an_empty_node_is_ok() -> None:
    report = health_report(FakeNode())
    assert report["status"] == "ok"
    assert (report["providers"], report["problems"]) == ({}, [])


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ((ChannelStatus.CONNECTED, ChannelStatus.CONNECTED), "ok"),
        ((ChannelStatus.CONNECTED, ChannelStatus.FAILED), "degraded"),
        ((ChannelStatus.BACKING_OFF, ChannelStatus.FAILED), "degraded"),
        ((ChannelStatus.CONNECTING, ChannelStatus.STOPPED), "degraded"),
        ((ChannelStatus.FAILED, ChannelStatus.STOPPED), "error"),
        ((ChannelStatus.IDLE,), "error"),
    ],
)
def test_the_overall_status(statuses: tuple[ChannelStatus, ...], expected: str) -> None:
    node = FakeNode()
    node.snapshots = [snapshot(f"ch-{i}", status) for i, status in enumerate(statuses)]
    assert health_report(node)["status"] == expected


def test_a_channel_that_did_not_start_is_not_started_whatever_its_status() -> None:
    node = FakeNode()
    node.snapshots = [snapshot("wa-1", ChannelStatus.FAILED, start_error="no app_secret")]
    report = health_report(node)
    assert report["providers"] == {"telegram": _counts(not_started=1)}
    assert report["problems"][0]["reason"] == "did not start: no app_secret"


class HealthClient:
    """GET /health/detail with the token, checking that public /health agrees."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def get(self, path: str) -> httpx.Response:
        assert path == "/health"
        detail = await self.client.get("/health/detail", headers=BEARER)
        public = await self.client.get("/health")
        assert public.status_code == detail.status_code
        summary = {k: v for k, v in detail.json().items() if k != "problems"}
        assert public.json() == {**summary, "problem_count": len(detail.json()["problems"])}
        return detail


async def test_health_ok_degraded_and_error_with_exact_json() -> None:
    node = FakeNode()
    node.stats = attrs.evolve(node.stats, started=2, configured=3)
    connected = snapshot("tg-1", ChannelStatus.CONNECTED)
    with trio.fail_after(CEILING):
        async with serving(node, api_token=API_TOKEN) as (raw_client, _):
            client = HealthClient(raw_client)
            node.snapshots = [connected]
            ok = await client.get("/health")
            assert ok.status_code == 200
            assert ok.json() == {
                "status": "ok",
                "node": "node-1",
                "uptime": 12.5,
                "draining": False,
                "channels": {"started": 2, "configured": 3},
                "providers": {"telegram": _counts(connected=1)},
                "problems": [],
            }

            node.snapshots = [
                snapshot(
                    "wa-1", ChannelStatus.FAILED, provider="whatsapp", start_error="bad token"
                ),
                snapshot("tg-2", ChannelStatus.BACKING_OFF, last_error="connection reset"),
                connected,
            ]
            degraded = await client.get("/health")
            assert degraded.status_code == 200
            assert degraded.json() == {
                "status": "degraded",
                "node": "node-1",
                "uptime": 12.5,
                "draining": False,
                "channels": {"started": 2, "configured": 3},
                "providers": {
                    "telegram": _counts(connected=1, backing_off=1),
                    "whatsapp": _counts(not_started=1),
                },
                "problems": [
                    {
                        "channel": "tg-2",
                        "tenant": "acme",
                        "provider": "telegram",
                        "status": "backing_off",
                        "reason": "backing_off: connection reset",
                    },
                    {
                        "channel": "wa-1",
                        "tenant": "acme",
                        "provider": "whatsapp",
                        "status": "not_started",
                        "reason": "did not start: bad token",
                    },
                ],
            }

            node.snapshots = [
                snapshot("tg-1", ChannelStatus.FAILED, last_error="Banned: token revoked"),
                snapshot("tg-2", ChannelStatus.STOPPED),
            ]
            error = await client.get("/health")
            assert error.status_code == 503
            assert error.json() == {
                "status": "error",
                "node": "node-1",
                "uptime": 12.5,
                "draining": False,
                "channels": {"started": 2, "configured": 3},
                "providers": {"telegram": _counts(failed=1, stopped=1)},
                "problems": [
                    {
                        "channel": "tg-1",
                        "tenant": "acme",
                        "provider": "telegram",
                        "status": "failed",
                        "reason": "failed: Banned: token revoked",
                    },
                    {
                        "channel": "tg-2",
                        "tenant": "acme",
                        "provider": "telegram",
                        "status": "stopped",
                        "reason": "stopped",
                    },
                ],
            }


# --- errors of the app itself -----------------------------------------------------------------


async def test_unknown_paths_and_methods_answer_json() -> None:
    with trio.fail_after(CEILING):
        async with serving(FakeNode()) as (client, _):
            missing = await client.get("/nope")
            assert missing.status_code == 404
            assert missing.json() == {"error": "NotFound", "message": "GET /nope: Not Found"}
            wrong = await client.delete("/healthz")
            assert wrong.status_code == 405
            assert wrong.json()["error"] == "MethodNotAllowed"
            assert "GET" in wrong.headers["allow"]


async def test_a_secret_pasted_into_an_unknown_path_is_not_echoed() -> None:
    # Its shape is no credential's: only the node's own list knows it (a proxy or a
    # cache keeps such bodies).
    with trio.fail_after(CEILING):
        async with serving(FakeNode(), api_token="plain-token-1234") as (client, _):
            answer = await client.get("/x/plain-token-1234/y")
            assert answer.status_code == 404
            assert "plain-token-1234" not in answer.text
            assert answer.json()["message"].startswith("GET /x/")


async def test_clients_hanging_up_on_a_refusal_leave_the_server_serving() -> None:
    # The app refuses some requests on their headers alone (404 here; 401, 413
    # and Telegram's secret token too): a client hanging up meanwhile once
    # ended the whole server (hypercorn's race, providers.serving).
    with trio.fail_after(CEILING):
        async with serving(FakeNode()) as (client, url):
            await hang_up_mid_request(url, "/nope", times=50)
            assert (await client.get("/healthz")).status_code == 200


async def test_a_failing_handler_answers_500_and_the_server_keeps_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    node = FakeNode()
    node.broken = True
    with trio.fail_after(CEILING):
        async with serving(node) as (client, _):
            for path in ("/health", "/metrics"):
                crashed = await client.get(path)
                assert crashed.status_code == 500
                assert crashed.json()["error"] == "InternalError"
                assert "broken" not in crashed.text  # the details go to the log only
            assert (await client.get("/healthz")).status_code == 200
            node.broken = False
            assert (await client.get("/health")).status_code == 200
    failures = [r for r in caplog.records if r.name == "switchboard.ops" and r.exc_info]
    assert {r.getMessage() for r in failures} == {
        "ops: GET /health failed",
        "ops: GET /metrics failed",
    }


async def test_cancelling_serve_ops_closes_every_connection_promptly(
    mock_clock: trio.testing.MockClock,
) -> None:
    # The clock stands still (rate 0): sockets work and no timer ever fires.
    # The shutdown can only finish if nothing in it waits on a timer
    # (hypercorn's 3 s graceful timeout included), so "promptly" needs no
    # stopwatch; a hang trips the real-time ceiling, which fails the test.
    entered = trio.Event()

    class Stuck:
        async def feed_webhook(self, headers: Any, body: bytes) -> int:
            entered.set()
            await trio.sleep_forever()
            raise AssertionError("unreachable")

    node = FakeNode()
    node.targets["telegram"] = [WebhookTarget(channel_id="tg", options={}, connection=Stuck())]  # type: ignore[arg-type]
    failures: list[BaseException] = []

    async def stuck_request(client: httpx.AsyncClient, url: str) -> None:
        try:
            await client.post(f"{url}/webhooks/telegram/tg", content=b"{}")
        except httpx.TransportError as exc:
            failures.append(exc)

    with real_time_ceiling(mock_clock, CEILING), trio.fail_after(CEILING):
        async with httpx.AsyncClient() as client, trio.open_nursery() as clients:
            async with trio.open_nursery() as server:
                url = await server.start(
                    functools.partial(serve_ops, node, host="127.0.0.1", port=0)
                )
                assert (await client.get(f"{url}/healthz")).status_code == 200  # keep-alive
                clients.start_soon(stuck_request, client, url)
                await entered.wait()
                server.cancel_scope.cancel()
            assert trio.current_time() == 0.0  # stopped with the clock standing still
        assert len(failures) == 1  # the in-flight request was cut, not answered
        with pytest.raises(httpx.ConnectError):
            async with httpx.AsyncClient() as fresh:
                await fresh.get(f"{url}/healthz")


# --- WhatsApp webhooks ------------------------------------------------------------------------


def whatsapp_config(base_url: str, channel_id: str, number: str) -> ChannelConfig:
    return ChannelConfig(
        channel_id=channel_id,
        provider="whatsapp",
        credentials={"token": WA_TOKEN, "app_secret": WA_SECRET, "verify_token": WA_VERIFY},
        base_url=base_url,
        options={"phone_number_id": number},
    )


class WhatsAppRig:
    """The WhatsApp emulator with two numbers, two real connections, the ops server."""

    def __init__(
        self, node: FakeNode, emulator: WhatsAppEmulator, ops_url: str, emulator_url: str
    ) -> None:
        self.node = node
        self.emulator = emulator
        self.ops_url = ops_url
        self.emulator_url = emulator_url
        self.events: dict[str, AsyncIterator[Event]] = {}

    async def inject(self, text: str, number: str) -> dict[str, Any]:
        async with httpx.AsyncClient() as client:
            answer = await client.post(
                f"{self.emulator_url}/_emulator/inject",
                json={"from": USER, "text": text, "phone_number_id": number},
            )
        result: dict[str, Any] = answer.json()
        return result

    async def control(self, path: str, payload: dict[str, Any]) -> httpx.Response:
        return await emulator_call(self.emulator_url, path, payload)

    async def next_text(self, channel_id: str) -> str | None:
        event = await anext(self.events[channel_id])
        assert isinstance(event, InboundMessage), event
        return event.text


@contextlib.asynccontextmanager
async def whatsapp_rig() -> AsyncIterator[tuple[WhatsAppRig, httpx.AsyncClient]]:
    node = FakeNode()
    emulator = WhatsAppEmulator(
        app_secret=WA_SECRET, tokens={WA_TOKEN}, phone_number_ids={NUMBER_A, NUMBER_B}
    )
    provider = WhatsAppProvider()
    async with serving(node) as (client, ops_url), open_emulator(emulator) as emulator_url:
        emulator.webhook_url = f"{ops_url}/webhooks/whatsapp"
        rig = WhatsAppRig(node, emulator, ops_url, emulator_url)
        async with (
            provider.open_connection(whatsapp_config(emulator_url, "wa-a", NUMBER_A)) as conn_a,
            provider.open_connection(whatsapp_config(emulator_url, "wa-b", NUMBER_B)) as conn_b,
        ):
            node.targets["whatsapp"] = [
                WebhookTarget(
                    channel_id="wa-a", options={"phone_number_id": NUMBER_A}, connection=conn_a
                ),
                WebhookTarget(
                    channel_id="wa-b", options={"phone_number_id": NUMBER_B}, connection=conn_b
                ),
            ]
            for channel_id, conn in (("wa-a", conn_a), ("wa-b", conn_b)):
                rig.events[channel_id] = conn.events()
                assert isinstance(await anext(rig.events[channel_id]), ConnectionStateChanged)
            yield rig, client


def notification(*messages: tuple[str, str]) -> bytes:
    """A Cloud API notification with one entry per ``(phone_number_id, text)``."""
    entries = [
        {
            "id": "waba-1",
            "changes": [
                {
                    "field": "messages",
                    "value": {
                        "messaging_product": "whatsapp",
                        "metadata": {"display_phone_number": "15550000000", "phone_number_id": n},
                        "contacts": [{"wa_id": USER, "profile": {"name": "Ann"}}],
                        "messages": [
                            {
                                "from": USER,
                                "id": f"wamid.{n}.{text}",
                                "timestamp": "1700000000",
                                "type": "text",
                                "text": {"body": text},
                            }
                        ],
                    },
                }
            ],
        }
        for n, text in messages
    ]
    return json.dumps({"object": "whatsapp_business_account", "entry": entries}).encode()


def signed(body: bytes, secret: str = WA_SECRET) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"Content-Type": "application/json", "X-Hub-Signature-256": f"sha256={digest}"}


async def test_whatsapp_notifications_are_routed_by_phone_number_id() -> None:
    with trio.fail_after(CEILING):
        async with whatsapp_rig() as (rig, client):
            assert (await rig.inject("for b", NUMBER_B))["webhook_status"] == 200
            assert (await rig.inject("for a", NUMBER_A))["webhook_status"] == 200
            assert await rig.next_text("wa-b") == "for b"
            assert await rig.next_text("wa-a") == "for a"  # "for b" never reached wa-a

            both = notification((NUMBER_A, "a2"), (NUMBER_B, "b2"))
            answer = await client.post("/webhooks/whatsapp", content=both, headers=signed(both))
            assert (answer.status_code, answer.text) == (200, "ok")
            assert (await rig.next_text("wa-a"), await rig.next_text("wa-b")) == ("a2", "b2")

            direct = notification((NUMBER_A, "a3"))
            answer = await client.post(
                "/webhooks/whatsapp/wa-a", content=direct, headers=signed(direct)
            )
            assert answer.status_code == 200
            assert await rig.next_text("wa-a") == "a3"
            assert await requests_total(client, "whatsapp", "accepted") == 4


async def test_a_bad_whatsapp_signature_is_403_and_counted() -> None:
    with trio.fail_after(CEILING):
        async with whatsapp_rig() as (rig, client):
            assert await rejected_total(client, "whatsapp", "signature") == 0
            assert (await rig.control("fault", {"kind": "bad_signature"})).status_code == 200
            assert (await rig.inject("forged", NUMBER_A))["webhook_status"] == 403

            body = notification((NUMBER_B, "forged too"))
            forged = await client.post(
                "/webhooks/whatsapp", content=body, headers=signed(body, "not-the-secret")
            )
            assert (forged.status_code, forged.text) == (403, "invalid X-Hub-Signature-256")
            unsigned = await client.post("/webhooks/whatsapp/wa-b", content=body)
            assert unsigned.status_code == 403

            assert await rejected_total(client, "whatsapp", "signature") == 3
            assert await requests_total(client, "whatsapp", "rejected") == 3
            assert (await rig.inject("genuine", NUMBER_B))["webhook_status"] == 200
            assert await rig.next_text("wa-b") == "genuine"  # nothing forged was queued


async def test_whatsapp_verification_answers_the_challenge_or_403() -> None:
    with trio.fail_after(CEILING):
        async with whatsapp_rig() as (rig, client):
            hook = f"{rig.ops_url}/webhooks/whatsapp"
            verified = await rig.control("webhook", {"url": hook, "verify_token": WA_VERIFY})
            assert verified.json() == {"url": hook, "verified": True}

            refused = await rig.control("webhook", {"url": hook, "verify_token": "guess"})
            assert (refused.status_code, refused.json()["status"]) == (400, 403)

            query = {
                "hub.mode": "subscribe",
                "hub.challenge": "8642",
                "hub.verify_token": WA_VERIFY,
            }
            direct = await client.get("/webhooks/whatsapp/wa-b", params=query)
            assert (direct.status_code, direct.text) == (200, "8642")
            wrong = await client.get(
                "/webhooks/whatsapp/wa-b", params={**query, "hub.verify_token": "nope"}
            )
            assert wrong.status_code == 403
            assert await rejected_total(client, "whatsapp", "verify_token") == 2


async def test_whatsapp_unknown_numbers_channels_and_bad_bodies() -> None:
    with trio.fail_after(CEILING):
        async with whatsapp_rig() as (_, client):
            stray = notification(("9999999", "to nobody"))
            unknown = await client.post("/webhooks/whatsapp", content=stray, headers=signed(stray))
            assert unknown.status_code == 404
            assert unknown.json()["error"] == "UnknownChannel"
            assert (await client.post("/webhooks/whatsapp/nope", content=stray)).status_code == 404

            # Unsigned, it is refused before it is read; signed, a body that is not JSON is 400.
            unsigned = await client.post("/webhooks/whatsapp", content=b"<xml/>")
            assert (unsigned.status_code, unsigned.text) == (403, "invalid X-Hub-Signature-256")
            not_json = await client.post(
                "/webhooks/whatsapp", content=b"<xml/>", headers=signed(b"<xml/>")
            )
            assert (not_json.status_code, not_json.json()["error"]) == (400, "BadRequest")

            # An account-level notification names no number: acknowledged once signed.
            account = json.dumps(
                {
                    "object": "whatsapp_business_account",
                    "entry": [
                        {"id": "waba-1", "changes": [{"field": "account_update", "value": {}}]}
                    ],
                }
            ).encode()
            ack = await client.post("/webhooks/whatsapp", content=account, headers=signed(account))
            assert ack.status_code == 200
            forged = await client.post(
                "/webhooks/whatsapp", content=account, headers=signed(account, "x")
            )
            assert forged.status_code == 403

            counts = {
                outcome: await requests_total(client, "whatsapp", outcome)
                for outcome in ("unknown_channel", "bad_request", "accepted", "rejected")
            }
            assert counts == {"unknown_channel": 2, "bad_request": 1, "accepted": 1, "rejected": 2}


class SignedHook:
    """A WhatsApp webhook endpoint judged by the provider's own sans-IO code."""

    def __init__(self, channel_id: str, number: str, app_secret: str) -> None:
        self.channel_id, self.number, self.app_secret = channel_id, number, app_secret
        self.events: list[Event] = []

    async def handle_webhook(
        self,
        method: str,
        query: Any,
        headers: Any,
        body: bytes,
        *,
        signatures: whatsapp_webhook.PostSignatures | None = None,
    ) -> tuple[int, bytes]:
        outcome = whatsapp_webhook.handle_webhook(
            method,
            query,
            headers,
            body,
            app_secret=self.app_secret,
            verify_token=WA_VERIFY,
            channel_id=self.channel_id,
            phone_number_id=self.number,
            signatures=signatures,
        )
        self.events.extend(outcome.events)
        await trio.lowlevel.checkpoint()
        return outcome.status, outcome.body


async def test_one_refused_signature_among_the_targets_answers_403() -> None:
    """Numbers of two Meta apps on one URL: each judged with its own app secret."""
    node = FakeNode()
    hook_a = SignedHook("wa-a", NUMBER_A, WA_SECRET)
    hook_b = SignedHook("wa-b", NUMBER_B, "the-other-apps-secret")
    node.targets["whatsapp"] = [
        WebhookTarget(channel_id=h.channel_id, options={"phone_number_id": h.number}, connection=h)  # type: ignore[arg-type]
        for h in (hook_a, hook_b)
    ]
    both = notification((NUMBER_A, "a"), (NUMBER_B, "b"))
    account = json.dumps({"object": "whatsapp_business_account", "entry": []}).encode()
    with trio.fail_after(CEILING):
        async with serving(node) as (client, _):
            answer = await client.post("/webhooks/whatsapp", content=both, headers=signed(both))
            assert answer.status_code == 403
            assert [e.channel_id for e in hook_a.events] == ["wa-a"]  # its part was good
            assert hook_b.events == []
            # A notification naming no number is acknowledged by whichever app signed it.
            for secret in (WA_SECRET, "the-other-apps-secret"):
                ack = await client.post(
                    "/webhooks/whatsapp", content=account, headers=signed(account, secret)
                )
                assert ack.status_code == 200
            # A forgery outranks a channel that is down: Meta must hear 403, not "retry".
            node.targets["whatsapp"][0] = WebhookTarget(
                channel_id="wa-a", options={"phone_number_id": NUMBER_A}, connection=None
            )
            answer = await client.post("/webhooks/whatsapp", content=both, headers=signed(both))
            assert answer.status_code == 403
            assert await rejected_total(client, "whatsapp", "signature") == 2


class JudgingHook(SignedHook):
    """A :class:`SignedHook` whose app secret the ops server checks before it parses a
    post, as it does a WhatsApp connection's (``webhook_signer``, ``check_post``)."""

    @property
    def webhook_signer(self) -> str:
        return whatsapp_webhook.signer_id(self.app_secret)

    def check_post(self, signatures: whatsapp_webhook.PostSignatures) -> bool:
        return signatures.signed_by(self.app_secret)


async def test_a_post_signed_for_a_number_whose_channel_is_down_is_503_not_forged() -> None:
    # Another number's channel is live: before, the post (signed with the down
    # channel's own app secret, which no live link knows) was answered 403 and
    # counted as a forged signature.
    node = FakeNode()
    live = JudgingHook("wa-a", NUMBER_A, WA_SECRET)
    node.targets["whatsapp"] = [
        WebhookTarget(channel_id="wa-a", options={"phone_number_id": NUMBER_A}, connection=live),  # type: ignore[arg-type]
        WebhookTarget(channel_id="wa-b", options={"phone_number_id": NUMBER_B}, connection=None),
    ]
    body = notification((NUMBER_B, "while down"))
    with trio.fail_after(CEILING):
        async with serving(node) as (client, _):
            answer = await client.post(
                "/webhooks/whatsapp", content=body, headers=signed(body, "b-apps-secret")
            )
            assert answer.status_code == 503
            assert answer.json()["message"] == "channel 'wa-b' is not connected; redeliver later"
            assert await rejected_total(client, "whatsapp", "signature") == 0
            assert live.events == []


async def test_webhooks_for_channels_that_are_not_connected_answer_503() -> None:
    node = FakeNode()
    node.targets["whatsapp"] = [
        WebhookTarget(channel_id="wa-a", options={"phone_number_id": NUMBER_A}, connection=None)
    ]
    node.targets["telegram"] = [WebhookTarget(channel_id="tg-1", options={}, connection=None)]
    body = notification((NUMBER_A, "while down"))
    with trio.fail_after(CEILING):
        async with serving(node) as (client, _):
            routed = await client.post("/webhooks/whatsapp", content=body, headers=signed(body))
            assert routed.status_code == 503
            assert routed.json() == {
                "error": "ChannelUnavailable",
                "message": "channel 'wa-a' is not connected; redeliver later",
            }
            direct = await client.post("/webhooks/whatsapp/wa-a", content=body)
            assert direct.status_code == 503
            verification = await client.get(
                "/webhooks/whatsapp", params={"hub.mode": "subscribe", "hub.challenge": "1"}
            )
            assert verification.status_code == 503
            telegram = await client.post("/webhooks/telegram/tg-1", content=b"{}")
            assert telegram.status_code == 503
            assert (await client.post("/webhooks/telegram/tg-2", content=b"{}")).status_code == 404
            assert await requests_total(client, "whatsapp", "unavailable") == 3
            assert await requests_total(client, "telegram", "unavailable") == 1


async def test_a_body_over_the_limit_is_413() -> None:
    from runtime.ops import MAX_BODY

    node = FakeNode()
    node.targets["whatsapp"] = [
        WebhookTarget(channel_id="wa-a", options={"phone_number_id": NUMBER_A}, connection=None)
    ]
    with trio.fail_after(CEILING):
        async with serving(node) as (client, _):
            answer = await client.post("/webhooks/whatsapp", content=b" " * (MAX_BODY + 1))
            assert (answer.status_code, answer.json()["error"]) == (413, "PayloadTooLarge")


# --- Telegram webhooks ------------------------------------------------------------------------


async def test_telegram_updates_reach_the_real_connection_and_forgeries_are_counted() -> None:
    node = FakeNode()
    emulator = TelegramEmulator()
    with trio.fail_after(CEILING):
        async with serving(node) as (client, ops_url), open_emulator(emulator) as tg_url:
            hook = f"{ops_url}/webhooks/telegram/tg-1"
            config = ChannelConfig(
                channel_id="tg-1",
                provider="telegram",
                credentials={"token": TG_TOKEN, "webhook_secret": TG_SECRET},
                base_url=tg_url,
                options={"mode": "webhook", "webhook_url": hook},
            )
            async with TelegramProvider().open_connection(config) as conn:
                node.targets["telegram"] = [
                    WebhookTarget(channel_id="tg-1", options={}, connection=conn)
                ]
                async with contextlib.aclosing(conn.events()) as events:
                    assert isinstance(await anext(events), ConnectionStateChanged)
                    async with httpx.AsyncClient(base_url=tg_url) as control:
                        injected = await control.post(
                            "/_emulator/inject", json={"chat_id": 42, "text": "pushed"}
                        )
                        assert injected.status_code == 200
                    event = await anext(events)
                    assert isinstance(event, InboundMessage)
                    assert (event.channel_id, event.text) == ("tg-1", "pushed")

                    update = {"update_id": 99, "message": {"message_id": 1}}
                    for headers in ({SECRET_HEADER: "wrong"}, {}):
                        forged = await client.post(
                            "/webhooks/telegram/tg-1", json=update, headers=headers
                        )
                        assert forged.status_code == 403
                    assert await rejected_total(client, "telegram", "secret") == 2
                    # The emulator's delivery is answered after the event was taken: poll.
                    for _ in range(200):
                        if await requests_total(client, "telegram", "accepted"):
                            break
                    assert await requests_total(client, "telegram", "accepted") == 1


async def _raw_post(ops_url: str, path: str, headers: dict[str, str]) -> bytes:
    """Send a POST's head (with its Content-Length) and no body; the status line that comes back.

    A server that reads the body first waits for bytes that never come.
    """
    host, _, port = ops_url.removeprefix("http://").partition(":")
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 100000\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all((head + "\r\n").encode())
        with trio.move_on_after(5):  # a hang ceiling: the answer comes at once, or never
            answer = b""
            while b"\r\n" not in answer:
                chunk = await stream.receive_some()
                if not chunk:
                    break
                answer += chunk
            return answer.partition(b"\r\n")[0]
    return b"(no answer before the body)"


@pytest.mark.parametrize("mode", ["webhook", "polling"])
async def test_a_telegram_webhook_is_judged_by_its_secret_before_its_body_is_read(
    mode: str,
) -> None:
    """A wrong secret is answered without reading the body (it used to be read, up to the cap)."""
    node = FakeNode()
    emulator = TelegramEmulator()
    with trio.fail_after(CEILING):
        async with serving(node) as (client, ops_url), open_emulator(emulator) as tg_url:
            options: dict[str, Any] = {"mode": mode}
            if mode == "webhook":
                options["webhook_url"] = f"{ops_url}/webhooks/telegram/tg-1"
            config = ChannelConfig(
                channel_id="tg-1",
                provider="telegram",
                credentials={"token": TG_TOKEN, "webhook_secret": TG_SECRET},
                base_url=tg_url,
                options=options,
            )
            async with TelegramProvider().open_connection(config) as conn:
                node.targets["telegram"] = [
                    WebhookTarget(channel_id="tg-1", options={}, connection=conn)
                ]
                path = "/webhooks/telegram/tg-1"
                if mode == "polling":  # no secret to know: 404 as before, body unread
                    answer = await _raw_post(ops_url, path, {SECRET_HEADER: TG_SECRET})
                    assert answer == b"HTTP/1.1 404 "
                    return
                for headers in ({SECRET_HEADER: "wrong"}, {}):
                    answer = await _raw_post(ops_url, path, headers)
                    assert answer == b"HTTP/1.1 403 ", answer
                    # An oversized body with a wrong secret: 403 (not 413), as today's text.
                    forged = await client.post(path, content=b"[" * (MAX_BODY + 1), headers=headers)
                    assert (forged.status_code, forged.text) == (403, "Forbidden")
                assert await rejected_total(client, "telegram", "secret") == 4
                # The right secret: the body is read, and its cap still holds.
                right = {SECRET_HEADER: TG_SECRET}
                large = await client.post(path, content=b"[" * (MAX_BODY + 1), headers=right)
                assert large.status_code == 413


def test_a_telegram_secret_is_judged_from_the_config_for_a_channel_on_another_node() -> None:
    config = ChannelConfig(
        channel_id="tg-1",
        provider="telegram",
        credentials={"token": TG_TOKEN, "webhook_secret": TG_SECRET},
        base_url="http://127.0.0.1:9",
        options={"mode": "webhook", "webhook_url": "https://example.test/webhooks/telegram/tg-1"},
    )
    assert telegram_headers(config, {SECRET_HEADER: TG_SECRET}) is None
    for headers in ({SECRET_HEADER: "wrong"}, {}, {SECRET_HEADER: TG_SECRET + "x"}):
        refused = telegram_headers(config, headers)
        assert refused is not None and (refused.status, refused.body) == (403, b"Forbidden")
    polling = attrs.evolve(config, options={"mode": "polling"})
    refused = telegram_headers(polling, {SECRET_HEADER: TG_SECRET})
    assert refused is not None and refused.status == 404


# --- the message API --------------------------------------------------------------------------

BEARER: Final = {"Authorization": f"Bearer {API_TOKEN}"}
HELLO: Final = {"peer": "42", "idempotency_key": "k-1", "text": "hello"}


async def test_the_message_api_is_absent_without_a_token() -> None:
    node = FakeNode()
    with trio.fail_after(CEILING):
        async with serving(node) as (client, _):
            answer = await client.post("/v1/channels/tg-1/messages", json=HELLO, headers=BEARER)
            assert (answer.status_code, answer.json()["error"]) == (404, "NotFound")
    assert node.sent == []


async def test_the_message_api_needs_the_bearer_token() -> None:
    node = FakeNode()
    with trio.fail_after(CEILING):
        async with serving(node, api_token=API_TOKEN) as (client, _):
            missing = await client.post("/v1/channels/tg-1/messages", json=HELLO)
            assert missing.status_code == 401
            assert missing.headers["www-authenticate"] == 'Bearer realm="switchboard"'
            assert missing.json()["error"] == "Unauthorized"
            for header in (f"Bearer {API_TOKEN}x", f"Basic {API_TOKEN}", "Bearer", API_TOKEN):
                wrong = await client.post(
                    "/v1/channels/tg-1/messages", json=HELLO, headers={"Authorization": header}
                )
                assert wrong.status_code == 401
                assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
                assert API_TOKEN not in wrong.text
    assert node.sent == []


async def test_a_message_is_sent_and_its_result_returned() -> None:
    node = FakeNode()
    media = {"kind": "image", "url": "https://cdn.example/cat.png", "caption": "a cat"}
    with trio.fail_after(CEILING):
        async with serving(node, api_token=API_TOKEN) as (client, _):
            answer = await client.post("/v1/channels/tg-1/messages", json=HELLO, headers=BEARER)
            assert (answer.status_code, answer.json()) == (
                200,
                {"platform_message_id": "pm-1", "peer": "42"},
            )
            photo = {"peer": "43", "idempotency_key": "k-2", "media": media, "reply_to": "m-9"}
            answer = await client.post(
                "/v1/channels/wa-1/messages",
                json=photo,
                headers={"authorization": f"bearer {API_TOKEN}"},
            )
            assert answer.json() == {"platform_message_id": "pm-2", "peer": "43"}
    assert node.sent == [
        ("tg-1", OutboundMessage(peer="42", idempotency_key="k-1", text="hello")),
        (
            "wa-1",
            OutboundMessage(
                peer="43",
                idempotency_key="k-2",
                media=Media(
                    kind=MediaKind.IMAGE, url="https://cdn.example/cat.png", caption="a cat"
                ),
                reply_to="m-9",
            ),
        ),
    ]


def _overloaded(retry_after: int) -> Overloaded:
    error = Overloaded("channel tg-1 already holds 1000 sends", channel_id="tg-1")
    error.scope, error.limit, error.retry_after = "channel", 1000, retry_after
    return error


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("NaN", "nan is not a JSON number"),
        ("Infinity", "inf is not a JSON number"),
        ('[1, {"deep": -Infinity}]', "-inf is not a JSON number"),
    ],
)
async def test_a_message_json_cannot_carry_is_refused_with_its_path(
    value: str, problem: str
) -> None:
    """Python's JSON reads NaN and Infinity; the store and the platforms cannot (issue 11)."""
    node = FakeNode()
    body = (
        f'{{"peer": "42", "idempotency_key": "k-1", "text": "hi", '
        f'"metadata": {{"score": {value}}}}}'
    )
    edit = (
        f'{{"op": "edit", "peer": "42", "message_id": "m-1", "text": "t", '
        f'"metadata": {{"x": {value}}}}}'
    )
    with trio.fail_after(CEILING):
        async with serving(node, api_token=API_TOKEN) as (client, _):
            headers = {**BEARER, "content-type": "application/json"}
            answer = await client.post("/v1/channels/tg-1/messages", content=body, headers=headers)
            refused = await client.post(
                "/v1/channels/tg-1/operations", content=edit, headers=headers
            )
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == "InvalidMessage"
    (found,) = answer.json()["problems"]
    assert found["path"].startswith("$.metadata.score")
    assert problem in found["message"]
    assert problem in answer.json()["message"]
    assert refused.status_code == 400, refused.text
    assert refused.json()["problems"][0]["path"].startswith("$.metadata.x")
    assert node.sent == []


@pytest.mark.parametrize(
    ("error", "status", "retry_after"),
    [
        (UnknownChannel("tg-9"), 404, None),
        (KeyReused("key 'k-1' was sent with another message", channel_id="tg-1"), 422, None),
        (NodeDraining("node-1 is draining and takes no new work; send to another node"), 503, "5"),
        (NodeStarting("node 'n1' is starting; ask again shortly"), 503, "1"),
        (MailboxFull("mailbox of tg-1 is full (1000)", capacity=1000), 429, "1"),
        (_overloaded(retry_after=7), 503, "7"),
        (MessageTooLong("text is 5000 characters; the limit is 4096", peer="42"), 422, None),
        (BadRecipient("chat 42 not found", peer="42"), 422, None),
        (ChannelFailed("tg-1 failed: Banned", channel_id="tg-1"), 409, None),
        (ChannelUnavailable("tg-1 did not connect within 30 s", channel_id="tg-1"), 503, None),
        (SendFailed("5 attempts failed; dead-lettered", channel_id="tg-1"), 503, None),
        (AskTimeout("no reply within 30 s"), 503, None),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else None,
)
async def test_send_errors_map_to_statuses(
    error: Exception, status: int, retry_after: str | None
) -> None:
    node = FakeNode()
    node.send_error = error
    with trio.fail_after(CEILING):
        async with serving(node, api_token=API_TOKEN) as (client, _):
            answer = await client.post("/v1/channels/tg-1/messages", json=HELLO, headers=BEARER)
    assert answer.status_code == status
    assert answer.json() == {"error": type(error).__name__, "message": str(error)}
    assert answer.headers.get("retry-after") == retry_after


def test_an_unknown_channel_is_named_without_echoing_a_long_id_whole() -> None:
    # An id pasted whole into a URL (a token, a page of text) came back whole in the 404.
    assert str(UnknownChannel("tg-9")) == "no channel 'tg-9' on this node"
    text = str(UnknownChannel("x" * 5000))
    assert "(5,000 characters)" in text and len(text) < 150


async def test_the_api_token_never_appears_in_an_answer() -> None:
    node = FakeNode()
    node.send_error = SendFailed(f"upstream echoed {API_TOKEN} back", channel_id="tg-1")
    with trio.fail_after(CEILING):
        async with serving(node, api_token=API_TOKEN) as (client, _):
            answer = await client.post("/v1/channels/tg-1/messages", json=HELLO, headers=BEARER)
            assert answer.status_code == 503
            assert API_TOKEN not in answer.text
            assert answer.json()["message"] == "upstream echoed <api token> back"
            node.send_error = RuntimeError(f"bug holding {API_TOKEN}")
            crashed = await client.post("/v1/channels/tg-1/messages", json=HELLO, headers=BEARER)
            assert (crashed.status_code, crashed.json()["error"]) == (500, "InternalError")
            assert API_TOKEN not in crashed.text
            assert (await client.get("/healthz")).status_code == 200


@pytest.mark.parametrize(
    ("body", "problems"),
    [
        (
            {"peer": 42, "text": "hi", "media": {"kind": "gif", "url": 7}, "colour": "red"},
            {
                ("$.peer", "expected a string, got int"),
                ("$.idempotency_key", "required field missing"),
                ("$.media.kind", "invalid value: 'gif' is not a valid MediaKind"),
                ("$.media.url", "expected a string, got int"),
                ("$", "extra fields found (colour)"),
            },
        ),
        (
            {"peer": "42", "idempotency_key": "k"},
            {
                (
                    "$",
                    "invalid value: an OutboundMessage carries exactly one of text, media or "
                    "template (got 0) for peer '42'",
                )
            },
        ),
        (
            {"peer": "", "idempotency_key": " ", "text": "hi"},
            {("$.peer", "must not be empty"), ("$.idempotency_key", "must not be empty")},
        ),
        (["not", "an", "object"], {("$", "expected a JSON object, got list")}),
    ],
    ids=["types", "no-content", "empty", "array"],
)
async def test_bad_bodies_answer_400_with_every_problem_and_its_path(
    body: Any, problems: set[tuple[str, str]]
) -> None:
    node = FakeNode()
    with trio.fail_after(CEILING):
        async with serving(node, api_token=API_TOKEN) as (client, _):
            answer = await client.post("/v1/channels/tg-1/messages", json=body, headers=BEARER)
    assert answer.status_code == 400
    payload = answer.json()
    assert payload["error"] == "InvalidMessage"
    assert {(p["path"], p["message"]) for p in payload["problems"]} == problems
    assert payload["message"].startswith(f"{len(problems)} problem")
    assert node.sent == []


async def test_a_body_that_is_not_json_answers_400() -> None:
    node = FakeNode()
    with trio.fail_after(CEILING):
        async with serving(node, api_token=API_TOKEN) as (client, _):
            answer = await client.post(
                "/v1/channels/tg-1/messages", content=b"peer=42", headers=BEARER
            )
    assert answer.status_code == 400
    assert [p["path"] for p in answer.json()["problems"]] == ["$"]
    assert answer.json()["message"].startswith("the body is not JSON")


# --- the channel listing ----------------------------------------------------------------------


async def test_the_channel_listing_needs_the_token_and_is_absent_without_one() -> None:
    node = FakeNode()
    node.snapshots = [snapshot("tg-1", ChannelStatus.CONNECTED)]
    with trio.fail_after(CEILING):
        async with serving(node) as (client, _):
            absent = await client.get("/v1/channels", headers=BEARER)
            assert (absent.status_code, absent.json()["error"]) == (404, "NotFound")
        async with serving(node, api_token=API_TOKEN) as (client, _):
            missing = await client.get("/v1/channels")
            assert missing.status_code == 401
            wrong = await client.get("/v1/channels", headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            assert "tg-1" not in missing.text + wrong.text
            assert API_TOKEN not in missing.text + wrong.text
            refused = await client.post("/v1/channels", headers=BEARER)
            assert (refused.status_code, refused.json()["error"]) == (405, "MethodNotAllowed")


async def test_the_channel_listing_shows_every_channel_sorted_with_its_state() -> None:
    node = FakeNode()
    node.snapshots = [
        snapshot("wa-1", ChannelStatus.BACKING_OFF, provider="whatsapp", tenant="beta"),
        snapshot("dc-1", ChannelStatus.CONNECTED, provider="discord"),
        snapshot("tg-2", ChannelStatus.CONNECTED, start_error="max_connections reached"),
        snapshot("tg-1", ChannelStatus.FAILED, last_error="Banned"),
    ]
    with trio.fail_after(CEILING):
        async with serving(node, api_token=API_TOKEN) as (client, _):
            answer = await client.get("/v1/channels", headers=BEARER)
    assert answer.status_code == 200
    assert answer.json() == {
        "node": "node-1",
        "channels": [
            {"channel": "dc-1", "tenant": "acme", "provider": "discord", "status": "connected"},
            {"channel": "tg-1", "tenant": "acme", "provider": "telegram", "status": "failed"},
            {"channel": "tg-2", "tenant": "acme", "provider": "telegram", "status": "not_started"},
            {"channel": "wa-1", "tenant": "beta", "provider": "whatsapp", "status": "backing_off"},
        ],
    }
    assert node.sent == []


class _Noticed(logging.Handler):
    """Sets :attr:`seen` when a record containing ``text`` is logged."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.DEBUG)
        self.text = text
        self.seen = trio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen.set()


async def test_a_client_that_hangs_up_mid_body_is_not_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    node = FakeNode()
    noticed = _Noticed("the client disconnected")
    ops_log = logging.getLogger("switchboard.ops")
    ops_log.addHandler(noticed)
    caplog.set_level(logging.DEBUG, logger="switchboard.ops")
    with contextlib.ExitStack() as cleanup, trio.fail_after(CEILING):
        cleanup.callback(ops_log.removeHandler, noticed)
        async with serving(node, api_token=API_TOKEN) as (client, url):
            host, port = url.removeprefix("http://").split(":")
            stream = await trio.open_tcp_stream(host, int(port))
            head = (
                "POST /v1/channels/a/messages HTTP/1.1\r\n"
                f"Host: {host}\r\nAuthorization: Bearer {API_TOKEN}\r\n"
                "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
            )
            await stream.send_all(head.encode() + b'{"peer": "u')  # 11 of 1000 bytes
            await stream.aclose()  # gone before the body is complete
            await noticed.seen.wait()  # the server noticed the hang-up (and logged why)
            assert (await client.get("/healthz")).status_code == 200
    errors = [r for r in caplog.records if r.name == "switchboard.ops" and r.levelname == "ERROR"]
    assert errors == []


async def test_an_idle_connection_outlives_a_load_balancer_s_idle_timeout(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A balancer reuses an idle connection for 60 s: the node must not close it first."""

    async def get(stream: trio.SocketStream, http: h11.Connection) -> int | None:
        """GET /healthz on the connection: its status, or None if the server had closed it."""
        request = h11.Request(method="GET", target="/healthz", headers=[("Host", "ops")])
        with contextlib.suppress(trio.BrokenResourceError):
            await stream.send_all(http.send(request) + http.send(h11.EndOfMessage()))
        status = None
        while True:
            event = http.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some()
                if not data:
                    return None
                http.receive_data(data)
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.EndOfMessage):
                http.start_next_cycle()
                return status

    # The clock moves only by the jumps below; the ceiling's deadline lies past them.
    with real_time_ceiling(mock_clock, CEILING), trio.fail_after(CEILING + 60.0 + KEEP_ALIVE + 1):
        async with trio.open_nursery() as server:
            url = await server.start(
                functools.partial(serve_ops, FakeNode(), host="127.0.0.1", port=0)
            )
            stream = await trio.open_tcp_stream("127.0.0.1", int(url.rsplit(":", 1)[1]))
            http = h11.Connection(h11.CLIENT)
            assert await get(stream, http) == 200
            await trio.testing.wait_all_tasks_blocked()  # the server's idle timer set
            mock_clock.jump(60.0)  # idle as long as a balancer keeps it
            await trio.testing.wait_all_tasks_blocked()
            assert await get(stream, http) == 200  # on the same connection
            await trio.testing.wait_all_tasks_blocked()
            mock_clock.jump(KEEP_ALIVE + 1)  # idle past the node's own timeout
            await trio.testing.wait_all_tasks_blocked()
            assert await stream.receive_some() == b""  # closed: not kept for ever
            server.cancel_scope.cancel()
