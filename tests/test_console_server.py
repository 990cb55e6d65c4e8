"""The admin listener over real sockets: Unix (0600) and TCP, TLS, tokens, bad frames, floods.

Real time and real sockets (the node's channels are simulated); every test
has a hard ceiling and waits on conditions, never on durations.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from runtime import StartupFailed
from runtime.config.model import AdminConfig
from runtime.console.client import CannotConnect, NotAuthenticated, RemoteError
from runtime.console.client import open_admin as connect
from runtime.console.rpc import ErrorCode
from runtime.console.server import AdminAddresses, serve_admin

from .console_support import TOKENS, console_config, console_node
from .support import self_signed_certificate

CEILING = 60.0
READ, OPERATE = TOKENS["reader"][0], TOKENS["operator"][0]


@asynccontextmanager
async def served(tmp_path: Path, **admin: Any) -> AsyncIterator[tuple[Any, AdminAddresses]]:
    admin.setdefault("socket", str(tmp_path / "admin.sock"))
    config = console_config(**admin)
    async with console_node(config) as harness, trio.open_nursery() as nursery:
        assert config.admin is not None
        serve = functools.partial(serve_admin, console=harness.console)
        addresses = await nursery.start(serve, harness.node, config.admin)
        yield harness, addresses
        nursery.cancel_scope.cancel()


def url_of(addresses: AdminAddresses, scheme: str) -> str:
    return next(url for url in addresses.urls if url.startswith(scheme))


async def test_unix_socket_is_owner_only_and_tcp_on_loopback(tmp_path: Path) -> None:
    with trio.fail_after(CEILING):
        async with served(tmp_path) as (_, addresses):
            path = tmp_path / "admin.sock"
            mode = os.stat(path).st_mode
            assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
            assert url_of(addresses, "unix:") == f"unix:{path}"
            for url in addresses.urls:
                async with connect(url, READ) as client:
                    assert (await client.call("system.whoami"))["name"] == "reader"
                    stats = await client.call("node.stats")
                    assert stats["channels"] == 3
        assert not path.exists()  # removed when the console stops


async def test_a_stale_socket_is_replaced_and_a_taken_path_refused(tmp_path: Path) -> None:
    path = tmp_path / "admin.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # a socket file nobody listens on: a killed node's
    with trio.fail_after(CEILING):
        async with served(tmp_path) as (_, addresses):
            async with connect(url_of(addresses, "unix:"), READ) as client:
                assert await client.call("system.whoami")
            # Taken by a live console: a second one says so.
            config = AdminConfig(socket=str(path), tokens=[])
            with pytest.raises(StartupFailed, match="another process listens on it"):
                await serve_admin(None, config)  # type: ignore[arg-type]
        path.write_text("not a socket")
        with pytest.raises(StartupFailed, match="exists and is not a socket"):
            await serve_admin(None, AdminConfig(socket=str(path), tokens=[]))  # type: ignore[arg-type]


async def test_tokens_are_checked_at_the_handshake(tmp_path: Path) -> None:
    with trio.fail_after(CEILING):
        async with served(tmp_path) as (harness, addresses):
            url = url_of(addresses, "ws:")
            for token, why in [
                (None, "no bearer token"),
                ("wrong", "unknown token"),
                (TOKENS["expired"][0], "has expired"),
            ]:
                with pytest.raises(NotAuthenticated, match=why):
                    async with connect(url, token):
                        pass
            assert harness.console.refusals.counts["unauthenticated"] == 3
            async with connect(url, READ) as client:
                with pytest.raises(RemoteError) as caught:
                    await client.call("channels.stop", {"channel": "a1", "reason": "x"})
                assert caught.value.code == ErrorCode.FORBIDDEN
            with pytest.raises(CannotConnect):
                async with connect(f"unix:{tmp_path / 'nothing.sock'}", READ):
                    pass


async def test_bad_frames_and_floods_close_or_refuse_but_never_crash(tmp_path: Path) -> None:
    with trio.fail_after(CEILING):
        async with served(
            tmp_path, max_message_size=4096, calls_per_second="5/s", call_burst=10
        ) as (harness, addresses):
            url = url_of(addresses, "ws:")
            headers = [(b"authorization", f"Bearer {READ}".encode())]
            async with open_websocket_url(url, extra_headers=headers) as ws:
                await ws.send_message("{this is not json")
                answer = json.loads(await ws.get_message())
                assert answer["error"]["code"] == ErrorCode.PARSE_ERROR
                await ws.send_message(b"\xff\xfe binary garbage")
                answer = json.loads(await ws.get_message())
                assert answer["error"]["code"] == ErrorCode.PARSE_ERROR
                await ws.send_message(json.dumps({"jsonrpc": "2.0", "method": 5, "id": 1}))
                answer = json.loads(await ws.get_message())
                assert answer["error"]["code"] == ErrorCode.INVALID_REQUEST
                await ws.send_message('{"jsonrpc":"2.0","method":"node.nope","id":2}')
                answer = json.loads(await ws.get_message())
                assert answer["error"]["code"] == ErrorCode.METHOD_NOT_FOUND
                # A flood: past the burst, each call is refused with the time to wait.
                codes = []
                for index in range(30):
                    await ws.send_message(
                        json.dumps({"jsonrpc": "2.0", "method": "system.whoami", "id": index})
                    )
                    codes.append(json.loads(await ws.get_message()).get("error", {}).get("code"))
                assert codes.count(ErrorCode.RATE_LIMITED) >= 15
                # A huge frame: the connection is closed with 1009, message too big.
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.send_message("x" * 100_000)
                    await ws.get_message()
                assert closed.value.reason.code == 1009
            # The console, and the node, go on serving.
            async with connect(url, READ) as client:
                assert (await client.call("node.stats"))["channels"] == 3
            assert harness.node.ready


async def test_connections_are_bounded(tmp_path: Path) -> None:
    with trio.fail_after(CEILING):
        async with served(tmp_path, max_connections=2) as (harness, addresses):
            url = url_of(addresses, "unix:")
            async with connect(url, READ) as first, connect(url, READ) as second:
                assert await first.call("system.whoami") and await second.call("system.whoami")
                with pytest.raises(CannotConnect, match="HTTP 503"):
                    async with connect(url, READ):
                        pass
            async with connect(url, READ) as again:  # room again
                assert await again.call("system.whoami")
            assert harness.console.refusals.counts["rate_limited"] == 1


async def test_events_reach_a_websocket_subscriber(tmp_path: Path) -> None:
    with trio.fail_after(CEILING):
        async with served(tmp_path) as (harness, addresses):
            async with connect(url_of(addresses, "unix:"), READ) as client:
                await client.call("events.subscribe", {"kinds": ["inbound", "audit"]})
                harness.provider.inject("a1", "hello console")
                events = client.events()
                first = await events.__anext__()
                assert first["method"] == "events.event"
                assert first["params"]["event"]["text"] == "hello console"
                async with connect(url_of(addresses, "unix:"), OPERATE) as operator:
                    await operator.call("channels.restart", {"channel": "g1", "reason": "test"})
                audit = await events.__anext__()
                assert audit["params"]["kind"] == "audit"
                assert audit["params"]["event"]["token"] == "operator"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
async def test_tls(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path, "admin")
    with trio.fail_after(CEILING):
        async with served(tmp_path, certfile=str(cert), keyfile=str(key)) as (_, addresses):
            url = url_of(addresses, "wss:")
            async with connect(url, READ, cafile=str(cert)) as client:
                assert (await client.call("system.whoami"))["name"] == "reader"
            with pytest.raises(CannotConnect):
                async with connect(url.replace("wss:", "ws:"), READ, connect_timeout=2):
                    pass
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    with pytest.raises(StartupFailed, match=r"admin\.certfile"):
        await serve_admin(
            None,  # type: ignore[arg-type]
            AdminConfig(host="127.0.0.1", port=0, certfile=str(bad), keyfile=str(bad), tokens=[]),
        )


async def test_beyond_loopback_without_tls_is_logged_loudly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(CEILING), caplog.at_level("CRITICAL", logger="switchboard.console"):
        async with served(tmp_path, host="0.0.0.0", insecure=True) as (_, addresses):
            assert any(url.startswith("ws://0.0.0.0:") for url in addresses.urls)
    assert any(
        r.levelname == "CRITICAL" and "without TLS" in r.getMessage() for r in caplog.records
    )
