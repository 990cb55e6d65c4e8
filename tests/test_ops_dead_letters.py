"""The dead-letter API of the ops server, against a real node over a real socket."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from actors import ChannelSettings, ExponentialBackoff
from providers.base import OutboundMessage, PermanentSendError
from providers.simulated import FailureRates, SimulatedProvider
from runtime import open_node, parse_config

from .support import CEILING

TOKEN = "letters-api-token-12345"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
FAST = ChannelSettings(
    reconnect=ExponentialBackoff(base=0.05, cap=0.2),
    send_backoff=ExponentialBackoff(base=0.01, cap=0.05),
    send_attempts=1,
)


@asynccontextmanager
async def node_with_letters(
    tmp_path: Path, provider: SimulatedProvider
) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    config = parse_config(
        {
            "node": {"id": "letters", "drain_deadline": 2.0, "start_timeout": 2.0},
            "storage": {"backend": "sqlite", "path": str(tmp_path / "node.sqlite3")},
            "ops": {"port": 0, "api_token": "${env:SB_LETTERS_TOKEN}"},
            "providers": {"simulated": {"rate_limit": {"enabled": False}}},
            "channels": [
                {"id": "a", "tenant": "acme", "provider": "simulated"},
                {"id": "b", "tenant": "globex", "provider": "simulated"},
            ],
        },
        env={"SB_LETTERS_TOKEN": TOKEN},
    )
    async with open_node(config, channel_defaults=FAST, providers={"simulated": provider}) as node:
        assert node.ops_url is not None
        async with httpx.AsyncClient(base_url=node.ops_url, timeout=10.0) as client:
            yield node, client


async def refused(node: Any, channel: str, key: str) -> None:
    with pytest.raises(PermanentSendError):
        await node.send(channel, OutboundMessage(peer="p", idempotency_key=key, text=key))


async def test_list_replay_and_discard_over_http(tmp_path: Path) -> None:
    provider = SimulatedProvider(failures=FailureRates(send_permanent=1.0))
    with trio.fail_after(CEILING):
        async with node_with_letters(tmp_path, provider) as (node, client):
            for channel, key in (("a", "a1"), ("a", "a2"), ("b", "b1")):
                await refused(node, channel, key)

            listed = await client.get("/v1/dead-letters", headers=BEARER)
            assert listed.status_code == 200
            letters = listed.json()["dead_letters"]
            assert [(x["channel"], x["idempotency_key"]) for x in letters] == [
                ("a", "a1"),
                ("a", "a2"),
                ("b", "b1"),
            ]
            assert letters[0]["error"] == "PermanentSendError"
            assert letters[0]["tenant"] == "acme"
            globex = await client.get("/v1/dead-letters?tenant=globex", headers=BEARER)
            assert [x["idempotency_key"] for x in globex.json()["dead_letters"]] == ["b1"]

            provider.failures = FailureRates()  # the platform takes them now
            first = letters[0]["id"]
            with node.subscribe(kind="receipt") as receipts:
                replay = await client.post(
                    "/v1/channels/a/dead-letters/replay", json={"ids": [first]}, headers=BEARER
                )
                assert replay.json() == {"channel": "a", "replayed": 1}
                again = await client.post(
                    "/v1/channels/a/dead-letters/replay", json={"ids": [first]}, headers=BEARER
                )
                assert again.json() == {"channel": "a", "replayed": 0}  # taken once
                await receipts.receive()  # the replayed letter was accepted
            assert [r.idempotency_key for r in provider.sent] == ["a1"]

            discard = await client.post("/v1/channels/b/dead-letters/discard", headers=BEARER)
            assert discard.json() == {"channel": "b", "discarded": 1}
            left = await client.get("/v1/dead-letters", headers=BEARER)
            assert [x["idempotency_key"] for x in left.json()["dead_letters"]] == ["a2"]


async def test_the_dead_letter_api_refuses_bad_input_and_strangers(tmp_path: Path) -> None:
    with trio.fail_after(CEILING):
        async with node_with_letters(tmp_path, SimulatedProvider()) as (_, client):
            assert (await client.get("/v1/dead-letters")).status_code == 401
            wrong = await client.post(
                "/v1/channels/a/dead-letters/discard", headers={"Authorization": "Bearer nope"}
            )
            assert wrong.status_code == 401
            for query, complaint in (
                ("older_than=soon", "older_than must be a number"),
                ("older_than=nan", "finite"),
                ("limit=-1", "limit must be a whole number"),
                ("older_than=-1", "unix seconds >= 0"),
                ("chanel=a", "unknown query parameter 'chanel'"),  # (before: every letter)
                ("channel=a&channel=b", "'channel' is given more than once"),
                ("x" * 5000 + "=1", f"unknown query parameter '{'x' * 40}'... (5,000 characters)"),
            ):
                answer = await client.get(f"/v1/dead-letters?{query}", headers=BEARER)
                assert answer.status_code == 400, query
                assert complaint in answer.json()["message"]
            for body, complaint in (
                (b"[1", "not JSON"),
                (b'{"ids": "all"}', "list of whole numbers"),
                (b'{"ids": [true]}', "list of whole numbers"),
                (b'{"ids": [100000000000000000000]}', "from 0 to 2**63 - 1"),  # (before: 500)
                (b'{"ids": [-1]}', "from 0 to 2**63 - 1"),
                (b'{"what": 1}', '{"ids"'),
            ):
                answer = await client.post(
                    "/v1/channels/a/dead-letters/replay", content=body, headers=BEARER
                )
                assert answer.status_code == 400, body
                assert complaint in answer.json()["message"]
            # Past any queue's size a limit means all of them (before: 500, an
            # integer the store could not bind).
            every = await client.get("/v1/dead-letters?limit=1e20", headers=BEARER)
            assert every.status_code == 200, every.text
            unknown = await client.post("/v1/channels/zz/dead-letters/replay", headers=BEARER)
            assert unknown.status_code == 404
