"""A node with a console, and clients of its sessions, for the console's tests."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from actors import ChannelSettings, ChannelStatus, ExponentialBackoff
from providers.simulated import SimulatedProvider
from runtime import Node, open_node, parse_config
from runtime.console.session import Console, Session

FAST = ChannelSettings(
    reconnect=ExponentialBackoff(base=0.05, cap=0.2),
    send_backoff=ExponentialBackoff(base=0.01, cap=0.05),
    connect_wait=5.0,
    inbound_retry=0.05,
)

NOW = 1_800_000_000.0  # the console's wall clock in these tests (2027-01-15)

TOKENS = {
    "reader": ("read-secret-1", "read", None, None),
    "operator": ("operate-secret-2", "operate", None, None),
    "admin": ("admin-secret-3", "admin", None, None),
    "acme-operator": ("acme-secret-4", "operate", ["acme"], None),
    "acme-admin": ("acme-admin-secret-5", "admin", ["acme"], None),
    "expired": ("expired-secret-6", "admin", None, "2027-01-01T00:00:00Z"),
}


def admin_section(**extra: Any) -> dict[str, Any]:
    return {
        "host": "127.0.0.1",
        "port": 0,
        "tokens": [
            {
                "name": name,
                "token": f"${{env:TOKEN_{index}}}",
                "scope": scope,
                **({"tenants": tenants} if tenants is not None else {}),
                **({"expires": expires} if expires is not None else {}),
            }
            for index, (name, (_, scope, tenants, expires)) in enumerate(TOKENS.items())
        ],
        **extra,
    }


def token_env() -> dict[str, str]:
    return {f"TOKEN_{index}": secret for index, (secret, *_) in enumerate(TOKENS.values())}


def console_config(
    *,
    g1: Mapping[str, Any] | None = None,
    sections: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    **admin: Any,
) -> Any:
    """The console tests' node: ``g1``: more of g1's settings (its credentials);
    ``sections``: more of the file (a storage); ``env``: more of the environment."""
    return parse_config(
        {
            "node": {"id": "t", "drain_deadline": 5.0, "start_timeout": 1.0},
            "ops": {"enabled": False},
            "providers": {"simulated": {"rate_limit": {"enabled": False}}},
            "channels": [
                {"id": "a1", "tenant": "acme", "provider": "simulated"},
                {"id": "a2", "tenant": "acme", "provider": "simulated"},
                {"id": "g1", "tenant": "globex", "provider": "simulated", **(g1 or {})},
                {"id": "spare", "tenant": "acme", "provider": "simulated", "enabled": False},
            ],
            "admin": admin_section(**admin),
            **(sections or {}),
        },
        env={**token_env(), **(env or {})},
    )


@attrs.define
class Client:
    """A session with the notifications it was sent."""

    session: Session
    notifications: list[dict[str, Any]]
    ids: int = 0

    async def raw(self, text: str) -> Any:
        answer = await self.session.handle(text)
        return None if answer is None else json.loads(answer)

    async def call(self, method: str, params: Any = None) -> dict[str, Any]:
        self.ids += 1
        body: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": self.ids}
        if params is not None:
            body["params"] = params
        answer = await self.raw(json.dumps(body))
        assert answer["id"] == self.ids
        return answer  # type: ignore[no-any-return]

    async def ok(self, method: str, params: Any = None) -> Any:
        answer = await self.call(method, params)
        assert "result" in answer, answer
        return answer["result"]

    async def error(self, method: str, params: Any = None) -> dict[str, Any]:
        answer = await self.call(method, params)
        assert "error" in answer, answer
        return answer["error"]  # type: ignore[no-any-return]


@attrs.define
class Harness:
    node: Node
    console: Console
    provider: SimulatedProvider
    nursery: trio.Nursery

    @asynccontextmanager
    async def client(self, name: str, *, slow: float = 0.0) -> AsyncIterator[Client]:
        notifications: list[dict[str, Any]] = []

        async def send(text: str) -> None:
            if slow:
                await trio.sleep(slow)
            notifications.append(json.loads(text))

        grant = self.console.authenticate(TOKENS[name][0])
        async with self.console.open_session(grant, send) as session:
            yield Client(session, notifications)


async def wait_connected(node: Node, count: int) -> None:
    with node.subscribe(kind="state") as changes:
        while sum(s.status is ChannelStatus.CONNECTED for s in node.channels()) < count:
            await changes.receive()


@asynccontextmanager
async def console_node(
    config: Any = None, provider: SimulatedProvider | None = None
) -> AsyncIterator[Harness]:
    provider = provider or SimulatedProvider()
    config = config or console_config()
    async with open_node(config, channel_defaults=FAST, providers={"simulated": provider}) as node:
        await wait_connected(node, 3)
        assert config.admin is not None
        console = Console(node, config.admin, clock=lambda: NOW)
        async with trio.open_nursery() as nursery:
            await nursery.start(console.run)
            yield Harness(node, console, provider, nursery)
            nursery.cancel_scope.cancel()
