"""Operator-facing faults found by a fault run, each pinned by a test.

Config loader, the ``switchboard`` CLI, the ops HTTP API, channels that cannot
connect. Each test's docstring says what should happen, and what used to go wrong.
"""

from __future__ import annotations

import contextlib
import functools
import io
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
import trio.testing

from actors import ChannelStatus
from providers.base import ChannelConfig, SessionState
from providers.simulated import SimulatedConnection, SimulatedProvider
from runtime import open_node, parse_config
from runtime.cli import main
from runtime.ops import health_report, serve_ops
from runtime.view import ChannelSnapshot
from tests.support import CEILING
from tests.test_ops_http import API_TOKEN, FakeNode, snapshot
from tests.test_store import PG_DSN, dropped_afterwards, new_schema


def _remote(channel_id: str) -> ChannelSnapshot:
    """A channel another node of the cluster runs, as Node._snapshot shows it here."""
    return ChannelSnapshot(
        channel_id=channel_id,
        tenant="acme",
        provider="telegram",
        status=ChannelStatus.IDLE,
        statistics=None,
        owner="node-2",
        remote=True,
    )


def test_cluster_health_is_judged_on_the_channels_this_node_runs() -> None:
    """A cluster node whose own channels are all connected is ``ok``, and one that runs
    none of the cluster's channels (they all run elsewhere) is ``ok`` too, not ``error``.

    The connected count used to be compared with every snapshot, remote ones
    included: each node of a healthy cluster said ``degraded``, and one that owned
    nothing answered ``GET /health`` 503 ``error``.
    """
    node = FakeNode()
    node.snapshots = [snapshot("mine", ChannelStatus.CONNECTED), _remote("theirs")]
    report: dict[str, Any] = health_report(_stand_in(node))
    assert report["problems"] == []
    assert report["status"] == "ok", report

    idle = FakeNode()
    idle.snapshots = [_remote("a"), _remote("b")]
    assert health_report(_stand_in(idle))["status"] == "ok"


# --- slow and oversized clients of the ops HTTP server ----------------------------------------


@pytest.fixture
def idle_jump_clock() -> trio.testing.MockClock:
    """Virtual time that jumps once every task has waited 0.3 s of real time.

    The loopback sockets deliver within that, so a timer only fires when the
    server and the client really are waiting on each other.
    """
    return trio.testing.MockClock(autojump_threshold=0.3)


class _LettersNode(FakeNode):
    """The stand-in node with a dead-letter queue that is always empty."""

    async def dead_letters(self, **where: Any) -> list[Any]:
        return []

    async def replay_dead_letters(self, channel_id: str, ids: Any = None) -> int:
        return 0

    async def discard_dead_letters(self, channel_id: str, ids: Any = None) -> int:
        return 0


def _stand_in(node: FakeNode) -> Any:
    """The stand-in node, as the ``NodeView`` the ops server takes."""
    return node


@asynccontextmanager
async def _ops(token: str | None = None) -> AsyncIterator[tuple[str, int]]:
    async with trio.open_nursery() as nursery:
        url = await nursery.start(
            functools.partial(
                serve_ops, _stand_in(_LettersNode()), host="127.0.0.1", port=0, api_token=token
            )
        )
        host, port = url.rsplit("//", 1)[1].rsplit(":", 1)
        yield host, int(port)
        nursery.cancel_scope.cancel()


async def _closed_or_answered(stream: trio.SocketStream, within: float) -> bytes | None:
    """What the server sends until it closes the connection, or None if it does neither."""
    received = b""
    with trio.move_on_after(within):
        while True:
            data = await stream.receive_some()
            if not data:
                return received
            received += data
    return received or None


async def test_a_client_that_stalls_mid_body_is_cut_off(
    idle_jump_clock: trio.testing.MockClock,
) -> None:
    """A webhook POST whose body stops arriving is answered (408) or closed within a bounded
    time (nginx's client_body_timeout is 60 s), so stalled clients cannot pile up.

    Without a hypercorn ``read_timeout`` such a request used to hold its
    connection, file descriptor and task for as long as the node ran (the
    keep-alive timer only covers idle connections).
    """
    async with _ops() as (host, port):
        stream = await trio.open_tcp_stream(host, port)
        await stream.send_all(
            b"POST /webhooks/whatsapp HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
            b"X-Hub-Signature-256: sha256=" + b"0" * 64 + b"\r\n\r\n" + b'{"entry": ['
        )
        outcome = await _closed_or_answered(stream, within=600.0)  # ten virtual minutes
        await stream.aclose()
    assert outcome is not None, "the connection is still held open after 10 minutes"


async def test_a_dead_letter_replay_with_a_huge_content_length_is_refused_at_once(
    idle_jump_clock: trio.testing.MockClock,
) -> None:
    """``POST /v1/channels/{id}/dead-letters/replay`` with ``Content-Length`` past the
    64 KiB its body may have answers 413 on the headers, as every other ops
    endpoint does (``_read_body``), without reading (buffering) the body.

    ``DeadLetterApi._act`` used to read the whole body into memory before
    looking at its size, so a client declaring a few gigabytes was waited for.
    """
    async with _ops(API_TOKEN) as (host, port):
        stream = await trio.open_tcp_stream(host, port)
        await stream.send_all(
            b"POST /v1/channels/a/dead-letters/replay HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer " + API_TOKEN.encode() + b"\r\n"
            b"Content-Length: 5000000000\r\n\r\n{"
        )
        answer = await _closed_or_answered(stream, within=30.0)
        await stream.aclose()
    assert answer is not None and answer.startswith(b"HTTP/1.1 413"), answer


# --- switchboard check ------------------------------------------------------------------------


def _check(tmp_path: Path, text: str, *overrides: str) -> tuple[int, str]:
    """``switchboard check`` in-process: (exit code, stdout + stderr)."""
    path = tmp_path / "deployment.toml"
    path.write_text(text, encoding="utf-8")
    out, err = io.StringIO(), io.StringIO()
    argv = ["check", str(path), *(f"--set={item}" for item in overrides)]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue() + err.getvalue()


URL_PASSWORD = "url-pass-Kx81q"
URL_TOKEN = "url-token-Vb27m"


@pytest.mark.parametrize(
    "text",
    [
        # A scheme typo in a channel's URL that carries credentials.
        '[[channels]]\nid = "a"\nprovider = "websocket"\n'
        f'base_url = "htps://bot:{URL_PASSWORD}@api.example/?access_token={URL_TOKEN}"\n',
        # ... in a provider's default URL.
        f'[providers.websocket]\nbase_url = "wsss://u:{URL_PASSWORD}@h/?token={URL_TOKEN}"\n'
        '[[channels]]\nid = "a"\nprovider = "websocket"\nbase_url = "ws://h/"\n',
        # ... in the profiler's and the public URL.
        f'[profiling]\npyroscope_url = "htp://u:{URL_PASSWORD}@pyro:4040/?token={URL_TOKEN}"\n',
        f'[ops]\npublic_url = "htps://u:{URL_PASSWORD}@hooks.example/?token={URL_TOKEN}"\n',
    ],
    ids=["channel", "provider", "profiling", "public_url"],
)
def test_a_refused_url_is_not_quoted_with_its_credentials(tmp_path: Path, text: str) -> None:
    """``check`` names a URL it refuses without the credentials in it, as the model
    itself does (``ChannelSpec(base_url=...)`` says ``got 'ftp://***@h/'``, and
    ``NodeConfig.secrets()`` counts a URL's password and token as secrets).

    The loader's converter used to quote the refused value as written, so the
    password and the ``access_token`` landed in the terminal and CI logs.
    """
    code, output = _check(tmp_path, text)
    assert code == 2, output
    assert "URL" in output  # the problem is reported...
    assert URL_PASSWORD not in output  # ...without the credentials
    assert URL_TOKEN not in output


# --- the dead-letter API on PostgreSQL --------------------------------------------------------


LETTERS_TOKEN = "letters-api-token-h3-5521"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/dead-letters?channel=a%00"),
        ("GET", "/v1/dead-letters?tenant=%00"),
        ("GET", "/v1/dead-letters?error=Send%00Failed"),
        ("POST", "/v1/channels/a%00/dead-letters/discard"),
    ],
    ids=["channel", "tenant", "error", "discard"],
)
async def test_a_nul_in_a_dead_letter_filter_is_a_400_not_a_store_failure(
    method: str, path: str
) -> None:
    """A NUL character in a dead-letter filter (a query parameter, a channel id in the
    path) is the client's mistake: 400 naming the parameter (as the message API
    refuses a NUL in ``peer``), or simply no letters, as the memory and SQLite
    stores answer.

    On PostgreSQL it used to reach the query and fail there
    (CharacterNotInRepertoireError): ``503 StoreError``, which clients retry, with
    the database's address in the message.
    """
    schema = new_schema()
    async with dropped_afterwards(schema):
        config = parse_config(
            {
                "node": {"id": "nul-letters", "drain_deadline": 2.0, "start_timeout": 2.0},
                "storage": {"backend": "postgres", "dsn": PG_DSN, "schema": schema},
                "ops": {"port": 0, "api_token": "${env:SB_H3_TOKEN}"},
                "channels": [{"id": "a", "provider": "simulated"}],
            },
            env={"SB_H3_TOKEN": LETTERS_TOKEN},
        )
        with trio.fail_after(CEILING):
            async with open_node(config) as node:
                assert node.ops_url is not None
                async with httpx.AsyncClient(base_url=node.ops_url, timeout=10.0) as client:
                    answer = await client.request(
                        method, path, headers={"Authorization": f"Bearer {LETTERS_TOKEN}"}
                    )
    assert answer.status_code in (200, 400, 404), answer.text
    assert "StoreError" not in answer.text


# --- --set on a file without channels ---------------------------------------------------------


def test_set_can_add_the_first_channel_to_a_file_without_channels(tmp_path: Path) -> None:
    """``--set channels[0].id=a --set channels[0].provider=simulated`` on a file with no
    ``[[channels]]`` adds a channel, as ``channels[N]`` with N one past the last
    does on a file that has some ("Missing tables are created; channels[N] with
    N one past the last appends a channel", runtime/config/overrides.py).

    ``_set`` used to create every missing step as a table, so ``channels`` became
    ``{}`` and the override was refused with "not an array".
    """
    code, output = _check(
        tmp_path, '[node]\nid = "n"\n', "channels[0].id=a", "channels[0].provider=simulated"
    )
    assert code == 0, output
    assert "1/1 channels enabled" in output


def test_set_naming_a_channel_by_id_in_a_file_without_channels_says_there_is_none(
    tmp_path: Path,
) -> None:
    """``--set channels.acme.tenant=x`` on a file without channels says that no channel has
    id "acme" (as it does when the file has other channels). It used to say
    "expected an array, got a table @ channels", about a table the file never wrote.
    """
    code, output = _check(tmp_path, '[node]\nid = "n"\n', "channels.acme.tenant=x")
    assert code == 2, output
    assert 'no channel has id "acme"' in output, output


# --- the message API: a multipart body with two message parts ---------------------------------


async def test_a_multipart_body_with_two_message_parts_answers_400_and_sends_nothing(
    idle_jump_clock: trio.testing.MockClock,
) -> None:
    """A multipart upload with two ``message`` parts is ambiguous, exactly as a JSON body
    naming a key twice is (refused with 400, tests/test_hostile_input.py): a proxy
    or audit log that reads the first part sees another message than the node
    sends. It answers 400 at ``$.message`` and sends nothing, as two ``file``
    parts already do (``max_files=1``).

    ``read_multipart`` used to take ``form.get("message")``: the last part won
    silently and was sent.
    """
    node = _LettersNode()
    first = b'{"peer": "alice", "idempotency_key": "k-1", "text": "first"}'
    second = b'{"peer": "mallory", "idempotency_key": "k-1", "text": "second"}'
    body = (
        b"--B\r\nContent-Disposition: form-data; name=message\r\n\r\n" + first + b"\r\n"
        b"--B\r\nContent-Disposition: form-data; name=message\r\n\r\n" + second + b"\r\n--B--\r\n"
    )
    async with trio.open_nursery() as nursery:
        url = await nursery.start(
            functools.partial(
                serve_ops, _stand_in(node), host="127.0.0.1", port=0, api_token=API_TOKEN
            )
        )
        async with httpx.AsyncClient(base_url=url) as client:
            answer = await client.post(
                "/v1/channels/a/messages",
                content=body,
                headers={
                    "Authorization": f"Bearer {API_TOKEN}",
                    "Content-Type": "multipart/form-data; boundary=B",
                },
            )
        nursery.cancel_scope.cancel()
    assert answer.status_code == 400, answer.text
    assert node.sent == []


# --- a channel URL whose port is out of range -------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "ws://127.0.0.1:99999/",
        "wss://chat.example:70000/ws",
        "https://graph.example:65536/",
    ],
)
def test_check_refuses_a_channel_url_whose_port_is_out_of_range(tmp_path: Path, url: str) -> None:
    """``check`` refuses a ``base_url`` whose port is past 65535, naming
    ``channels[0].base_url`` (exit 2), as it refuses a URL with a wrong scheme.

    ``model._is_url`` only looks at the scheme and ``netloc``; ``urlsplit``
    raises "Port out of range" only when ``.port`` is read, which happens at
    run time inside the provider (see the next test). Not the known DSN
    case: this is every channel's and provider default's ``base_url`` (and
    ``ops.public_url``).
    """
    code, output = _check(
        tmp_path, f'[[channels]]\nid = "a"\nprovider = "websocket"\nbase_url = "{url}"\n'
    )
    assert code == 2, output
    assert "channels[0].base_url" in output


async def test_a_websocket_url_with_a_bad_port_fails_the_channel_with_a_reason(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A websocket channel whose ``base_url`` has a port past 65535 (built by an embedding
    program, or passed by a check that does not read the port) is classified at the
    provider boundary: FAILED (fatal, a bad URL does not heal) with a reason
    that names the URL's port, and its actor does not crash.

    ``open_link`` used to read ``urlsplit(url).port`` unguarded: the ValueError
    crashed the ChannelActor on every restart, and the channel ended ``stopped``
    with no reason, as if an operator had stopped it.
    """
    from runtime.config.model import ChannelSpec, NodeConfig, OpsConfig

    with attrs.validators.disabled():  # the config's own check refuses this URL
        spec = ChannelSpec(id="w", provider="websocket", base_url="ws://127.0.0.1:99999/")
    config = NodeConfig(ops=OpsConfig(enabled=False), channels=[spec])
    async with open_node(config) as node:
        await trio.sleep(120)
        (channel,) = node.channels()
        problem = channel.problem
        restarts = channel.statistics.restarts if channel.statistics else None
    assert channel.status is ChannelStatus.FAILED, (channel.status, problem)
    assert problem is not None and "port" in problem.lower(), problem
    assert restarts == 0


class _CrashingProvider(SimulatedProvider):
    """An adapter with a defect: its connect raises what no provider error classifies."""

    @asynccontextmanager
    async def open_connection(
        self, config: ChannelConfig, session: SessionState | None = None
    ) -> AsyncIterator[SimulatedConnection]:
        raise RuntimeError("a defect in the adapter")
        yield  # (a generator, as the context manager needs)


async def test_a_channel_waiting_to_be_restarted_is_not_reported_as_stopped_without_a_reason(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """While the supervisor waits to restart a crashed channel (``[supervisor]
    restart_backoff``), health reports it as trying again (``backing_off``, the node
    ``degraded``) with the crash as its reason; it will recover (or fail for
    good) without an operator.

    It used to show ``stopped`` with no reason (what an operator's stop looks
    like), and a node whose channels were all between restarts answered
    ``GET /health`` 503 ``error``.
    """
    from runtime.config.model import (
        ChannelSpec,
        NodeConfig,
        OpsConfig,
        RestartBackoffConfig,
        SupervisorConfig,
    )

    config = NodeConfig(
        ops=OpsConfig(enabled=False),
        supervisor=SupervisorConfig(restart_backoff=RestartBackoffConfig(base=30.0, cap=60.0)),
        channels=[ChannelSpec(id="w", provider="simulated")],
    )
    async with open_node(config, providers={"simulated": _CrashingProvider()}) as node:
        await trio.sleep(5)  # the first crash is behind it, the restart 30 s ahead
        report = health_report(node)
        (channel,) = node.channels()
    assert channel.statistics is not None and channel.statistics.restarts == 0  # not yet
    (problem,) = report["problems"]
    assert problem["status"] != "stopped", report
    assert problem["reason"] != "stopped", report
    assert report["status"] == "degraded", report


# --- an API token with surrounding whitespace -------------------------------------------------


async def test_an_api_token_from_the_environment_with_a_trailing_newline_is_usable_or_refused(
    idle_jump_clock: trio.testing.MockClock,
) -> None:
    """An ``ops.api_token`` whose environment value ends in a newline (a Kubernetes secret
    written with ``echo``, ``$(cat token.txt)``) is either refused by the loader
    with its path, or works with the token as a client can send it: no HTTP client
    can put a newline in a header. The loader refuses it.

    It used to accept it (``NOT_EMPTY`` only refused an all-blank value): every
    request to the token's APIs was then 401, with nothing saying why.
    """
    token = "ops-token-h3-8842"
    try:
        config = parse_config(
            {"ops": {"port": 0, "api_token": "${env:SB_H3_TOKEN}"}},
            env={"SB_H3_TOKEN": token + "\n"},
        )
    except Exception as exc:  # refused at load: fine, if it names the setting
        assert "ops.api_token" in str(exc)
        return
    assert config.ops.api_token is not None
    async with trio.open_nursery() as nursery:
        url = await nursery.start(
            functools.partial(
                serve_ops,
                _stand_in(FakeNode()),
                host="127.0.0.1",
                port=0,
                api_token=config.ops.api_token,
            )
        )
        async with httpx.AsyncClient(base_url=url) as client:
            answer = await client.get("/v1/channels", headers={"Authorization": f"Bearer {token}"})
        nursery.cancel_scope.cancel()
    assert answer.status_code == 200, answer.text


# --- switchboard emulate ----------------------------------------------------------------------


@pytest.mark.parametrize("problem", ["out-of-range", "in-use"])
def test_emulate_with_a_port_it_cannot_bind_is_one_clear_line(problem: str) -> None:
    """``switchboard emulate telegram --port N`` with a port past 65535 exits 2 (bad usage:
    argparse can bound it), and with a port in use exits 1 with one line naming
    the port, as ``switchboard run`` does for its own listeners
    (tests/test_cli_run.py::test_a_busy_port_stops_the_node_with_one_clear_line).

    ``_emulate`` used to take any int and let hypercorn's ``OverflowError`` or
    ``OSError`` escape ``main`` as an exception group (a 40-line traceback).
    """
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = 99999 if problem == "out-of-range" else busy.getsockname()[1]
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code: object
            try:
                code = main(["emulate", "telegram", "--port", str(port)])
            except SystemExit as exit:  # argparse refusing it is fine
                code = exit.code
    assert code in (1, 2), code
    assert str(port) in err.getvalue(), err.getvalue()


# --- a NUL character in a tenant --------------------------------------------------------------


def test_a_nul_character_in_a_tenant_is_refused_with_its_path(tmp_path: Path) -> None:
    """``tenant = "ac\\u0000me"`` (TOML's escape) is refused by ``check`` with
    ``channels[0].tenant``, as the message API refuses a NUL in ``peer`` or ``text``
    ("PostgreSQL cannot store it (its channel's checkpoints would stop)").

    The loader's ``NAME`` check used to ask only for a non-blank string: on a
    PostgreSQL store every checkpoint of that channel then failed, forever.
    """
    code, output = _check(
        tmp_path, '[[channels]]\nid = "a"\ntenant = "ac\\u0000me"\nprovider = "simulated"\n'
    )
    assert code == 2, output
    assert "channels[0].tenant" in output


# --- two listeners of one file on one port ----------------------------------------------------


def test_check_refuses_two_listeners_of_the_file_on_the_same_port(tmp_path: Path) -> None:
    """``[ops] port = N`` and ``[emulators.telegram] port = N`` on the same host can never
    both listen: ``check`` refuses the file, naming both settings (exit 2).

    ``check`` used to say the file was ok, and ``run`` then stopped with "address
    already in use ... stop what listens there": the node's own emulator.
    """
    code, output = _check(
        tmp_path,
        "[ops]\nport = 18555\n[emulators.telegram]\nport = 18555\n"
        '[[channels]]\nid = "t"\nprovider = "telegram"\nemulator = true\n',
    )
    assert code == 2, output
    assert "ops.port" in output and "emulators.telegram.port" in output, output


async def test_a_utf8_ops_api_token_authenticates() -> None:
    """A token with non-ASCII characters, which the config takes, authenticates on
    the message API: the header's bytes are compared with the token's UTF-8 (they
    were read as Latin-1 first, and never matched)."""
    from runtime.config.model import TOKEN
    from runtime.ops.app import ops_app
    from tests.test_ops_http import FakeNode

    token = "pässwörd-tökén"
    assert TOKEN.test(token)  # the loader takes it
    app = ops_app(FakeNode(), api_token=token)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ops") as client:
        right = await client.get(
            "/v1/channels", headers={"Authorization": ("Bearer " + token).encode("utf-8")}
        )
        wrong = await client.get(
            "/v1/channels", headers={"Authorization": ("Bearer " + token[:-1]).encode("utf-8")}
        )
    assert (right.status_code, wrong.status_code) == (200, 401), right.text
