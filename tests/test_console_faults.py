"""The admin console under a fault run: each test is a defect one found (fixed).

Virtual time (``autojump_clock``) for the sessions without a socket; the one
test over a real socket uses a Unix socket under ``tmp_path`` with a ceiling.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
import trio

from .console_support import NOW, console_node


async def _states(harness: Any) -> dict[str, str]:
    return {s.channel_id: s.status.value for s in harness.node.channels()}


async def test_a_dry_run_on_one_channel_changes_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``channels.stop`` / ``channels.restart`` with ``dry_run: true`` and a ``channel``
    must not stop or restart it: a dry run only counts (the console's promise of
    "dry runs for bulk actions"; an operator checking what a call would touch must
    not have it happen)."""
    async with console_node() as harness, harness.client("operator") as client:
        await client.call("channels.stop", {"channel": "a1", "reason": "x", "dry_run": True})
        await trio.sleep(1.0)
        assert (await _states(harness)).get("a1") == "connected"  # stopped: gone from the node
        before = harness.node.channel_detail("a2").incarnations
        await client.call("channels.restart", {"channel": "a2", "reason": "x", "dry_run": True})
        await trio.sleep(1.0)
        assert harness.node.channel_detail("a2").incarnations == before


async def test_a_subscription_ended_in_the_same_batch_stops_forwarding(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``events.unsubscribe`` answers that subscription N has ended; after it no
    ``events.event`` of N may reach the peer, and the node must not keep a
    subscriber for it. Subscribed and ended in one batch (no checkpoint between),
    the forwarding task has not started yet when ``unsubscribe`` cancels its
    scopes (there are none yet), so it starts afterwards and forwards for the
    rest of the connection; repeating the batch also gets round
    ``MAX_SUBSCRIPTIONS``."""
    async with console_node() as harness, harness.client("reader") as client:
        hub = harness.node._hub
        before = {id(subscriber) for subscriber in hub._subscribers}
        batch = [
            {"jsonrpc": "2.0", "method": "events.subscribe", "params": {"kinds": ["state"]}},
            {"jsonrpc": "2.0", "method": "events.unsubscribe", "params": {"subscription": 1}},
        ]
        for index, call in enumerate(batch, start=1):
            call["id"] = index
        answers = await client.raw(json.dumps(batch))
        assert answers[1]["result"]["subscription"] == 1, answers
        await trio.sleep(0.5)
        harness.provider.drop("a1")  # state events: backing_off, connecting, connected
        await trio.sleep(2.0)
        assert client.notifications == []
        assert {id(subscriber) for subscriber in hub._subscribers} <= before  # none added


async def test_an_expired_token_stops_receiving_events(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Expiry is checked at every call "so a long-lived connection stops working when
    its token expires" (auth.py). Its subscriptions must stop too: once the token has
    expired, no more ``events.event`` notifications (inbound messages, state, audit)
    may reach that connection. Today the calls are refused but the events keep
    flowing for as long as the connection stays open."""
    async with console_node() as harness:
        clock = [1_798_000_000.0]  # before the "expired" token's expiry (2027-01-01)
        harness.console.clock = lambda: clock[0]
        async with harness.client("expired") as client:
            await client.ok("events.subscribe", {"kinds": ["inbound", "state"]})
            clock[0] = NOW  # the token has expired now
            refused = await client.error("system.whoami")
            assert refused["code"] == -32001  # calls: refused
            harness.provider.inject("a1", "a message the expired token must not read")
            harness.provider.drop("g1")
            await trio.sleep(2.0)
            assert client.notifications == []


async def test_a_lone_surrogate_in_a_request_is_answered_and_the_connection_lives(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """JSON allows ``"\\ud800"`` (a lone surrogate escape); Python reads it into a str
    that cannot be encoded as UTF-8. The console echoes the request's ``id`` into its
    answer as is, so the answer cannot be sent as a websocket text frame: the
    connection's task dies with UnicodeEncodeError ("a connection failed" in the log)
    and the peer's connection is dropped with no answer. The console should answer
    (an error for an unusable id, or the id escaped) and the connection go on."""
    from trio_websocket import open_websocket_url

    from .test_console_server import READ, served, url_of

    with trio.fail_after(60):
        async with served(tmp_path) as (_, addresses):
            url = url_of(addresses, "ws:")
            headers = [(b"authorization", f"Bearer {READ}".encode())]
            async with open_websocket_url(url, extra_headers=headers) as ws:
                await ws.send_message('{"jsonrpc":"2.0","method":"system.whoami","id":"\\ud800"}')
                await ws.send_message('{"jsonrpc":"2.0","method":"system.whoami","id":2}')
                first = json.loads(await ws.get_message())
                assert "error" in first or "result" in first
                second = json.loads(await ws.get_message())
                assert second["result"]["name"] == "reader"
    assert "a connection failed" not in caplog.text


CREDENTIAL = "g1-platform-credential-7f3a9c"


def _config_with_a_credential(credential: str = CREDENTIAL) -> Any:
    from .console_support import console_config

    return console_config(
        g1={"credentials": {"token": "${env:G1_TOKEN}"}}, env={"G1_TOKEN": credential}
    )


def _echoing_provider(echo: Any = None) -> Any:
    """A platform whose refusal echoes the credential it was sent (as real error pages do)."""
    from contextlib import asynccontextmanager

    from providers.base import TransientError
    from providers.simulated import SimulatedProvider

    class Echoing(SimulatedProvider):
        refuse = False

        @asynccontextmanager
        async def open_connection(self, config: Any, session: Any = None) -> Any:
            if self.refuse and config.channel_id == "g1":
                await trio.lowlevel.checkpoint()
                token = config.credentials["token"]
                raise TransientError(
                    echo(token) if echo else f"401 Unauthorized: token {token} was revoked"
                )
            async with super().open_connection(config, session) as conn:
                yield conn

    return Echoing()


async def _refused(harness: Any, words: str) -> None:
    """Wait until g1's history records a refusal saying ``words``."""
    with harness.node.subscribe(kind="state", channel="g1") as changes:
        while words not in str(harness.console.history("g1")):
            await changes.receive()
        await trio.lowlevel.checkpoint()  # the console records it


async def test_a_channels_last_error_never_shows_its_credential(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A channel's last error may quote the platform's refusal, which may echo the
    credential. The ops HTTP API scrubs every such text with the node's Redactor
    (``/health`` and its detail); the console's ``state history`` is scrubbed too,
    but ``channels.list`` and ``channels.get`` put ``last_error`` (and
    ``statistics.last_error``, ``last_errors``) in the answer raw, and
    ``events.event`` notifications of kind ``state`` carry the change's reason raw,
    so any ``read`` token reads the channel's credential."""
    provider = _echoing_provider()
    async with console_node(_config_with_a_credential(), provider) as harness:
        async with harness.client("reader") as client:
            await client.ok("events.subscribe", {"kinds": ["state", "connection"]})
            provider.refuse = True
            provider.drop("g1")
            await _refused(harness, "Unauthorized")
            detail = await client.ok("channels.get", {"channel": "g1"})
            assert CREDENTIAL not in json.dumps(detail["history"])  # scrubbed there
            shown = {
                "channels.list": await client.ok("channels.list"),
                "channels.get last_error": detail["last_error"],
                "channels.get statistics": detail["statistics"],
                "channels.get last_errors": detail["last_errors"],
                "events.event (state)": client.notifications,
            }
            leaks = [where for where, value in shown.items() if CREDENTIAL in json.dumps(value)]
            assert leaks == []


async def test_a_change_called_by_position_is_audited_with_its_reason(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Parameters may come by position (JSON-RPC 2.0, ``structure_params``), and every
    change is audited "with a reason". Called by position, the change is made with its
    reason, but the audit event (log line and ``audit`` subscribers) says ``reason:
    null`` / "no reason given": the session reads the reason from the raw params only
    when they are an object. The audit must carry the reason the call was made with."""
    async with (
        console_node() as harness,
        harness.client("reader") as watcher,
        harness.client("operator") as operator,
    ):
        await watcher.ok("events.subscribe", {"kinds": ["audit"]})
        with caplog.at_level("INFO", logger="switchboard.audit"):
            started = await operator.ok("channels.start", ["spare", "spare for the sale"])
            assert started["channel"] == "spare"
            await trio.sleep(0.1)
        (event,) = [n["params"]["event"] for n in watcher.notifications]
        assert (event["method"], event["outcome"]) == ("channels.start", "ok")
        assert event["reason"] == "spare for the sale"
        lines = [r.getMessage() for r in caplog.records if r.name == "switchboard.audit"]
        assert lines == ["admin channels.start by operator (spare for the sale): ok"]


async def test_max_connections_holds_for_connections_that_arrive_together(
    tmp_path: Any,
) -> None:
    """At most ``max_connections`` connections at once; more are refused (503). The
    bound is checked before the handshake's ``await request.accept()`` but counted
    only after it (``open_session``), so handshakes that arrive together all see
    room and all get in: with ``max_connections = 1``, several are open at once."""
    from trio_websocket import ConnectionRejected, open_websocket_url

    from .test_console_server import READ, served, url_of

    with trio.fail_after(60):
        async with served(tmp_path, max_connections=1) as (harness, addresses):
            url = url_of(addresses, "ws:")
            headers = [(b"authorization", f"Bearer {READ}".encode())]
            opened: list[int] = []
            answered = [0]
            all_answered = trio.Event()
            done = trio.Event()

            def count() -> None:
                answered[0] += 1
                if answered[0] == 5:
                    all_answered.set()

            async def one() -> None:
                try:
                    async with open_websocket_url(url, extra_headers=headers):
                        opened.append(1)
                        count()
                        await done.wait()
                except ConnectionRejected:
                    count()

            async with trio.open_nursery() as nursery:
                for _ in range(5):
                    nursery.start_soon(one)
                await all_answered.wait()  # every handshake accepted or refused
                peak = harness.console.connections
                done.set()
            assert len(opened) <= 1 and peak <= 1, (len(opened), peak)


async def test_the_console_scrubs_a_secret_in_every_form_the_node_does(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """What the console scrubs (state history, error answers, audit reasons) goes
    through ``Console.scrub``, a plain ``str.replace`` of each secret in config order.
    The node's own :class:`~runtime.telemetry.redaction.Redactor` (log lines, the ops
    API) also removes a secret percent-encoded (a platform's error quoting the request
    URL), escaped by ``repr`` or JSON, and credential shapes (``token=...``,
    ``Bearer ...``), longest secret first. The console must not show what the ops API
    and the log hide: here the channel's credential, percent-encoded in the URL the
    platform's refusal quotes, is shown in ``channels.get``'s history."""
    import urllib.parse

    credential = "g1/cred+key=9f3a7c"
    provider = _echoing_provider(
        lambda token: (
            "401 from GET https://api.example/v1/me?t=" + urllib.parse.quote(token, safe="")
        )
    )
    async with console_node(_config_with_a_credential(credential), provider) as harness:
        async with harness.client("reader") as client:
            provider.refuse = True
            provider.drop("g1")
            await _refused(harness, "401 from")
            detail = await client.ok("channels.get", {"channel": "g1"})
            encoded = urllib.parse.quote(credential, safe="")
            assert encoded not in json.dumps(detail["history"])


async def test_an_audit_subscription_for_some_channels_gets_only_theirs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``events.subscribe`` filters "here" by kinds, tenants and channels. An
    ``audit`` subscription with ``channels: ["a1"]`` is filtered by tenant only
    (``Console.publish_audit`` never looks at ``forward.channels``): it is sent the
    audit events of changes to every other channel too (g1's restart here). It
    should get only the audit events whose target is one of its channels."""
    async with (
        console_node() as harness,
        harness.client("reader") as watcher,
        harness.client("operator") as operator,
    ):
        await watcher.ok("events.subscribe", {"kinds": ["audit"], "channels": ["a1"]})
        await operator.ok("channels.restart", {"channel": "g1", "reason": "stuck"})
        await trio.sleep(0.1)
        targets = [n["params"]["event"]["target"] for n in watcher.notifications]
        assert targets == []


def test_a_token_with_non_ascii_characters_is_accepted() -> None:
    """``[[admin.tokens]] token`` may be any non-empty string (its check is
    NOT_EMPTY). The console's own client sends it UTF-8 encoded
    (``open_admin``: ``f"Bearer {token}".encode()``), but the server reads the
    header as Latin-1 (``auth.bearer``) before hashing the text as UTF-8, so a
    configured token with a non-ASCII character can never authenticate: every
    connection with it is refused as "unknown token". What the client sends
    must be what the server compares."""
    from runtime.config.model import AdminToken
    from runtime.console.auth import TokenTable, bearer

    secret = "Päßwort-ζ-0b9c2e"
    table = TokenTable([AdminToken(name="ops", token=secret, scope="read")])
    sent = [(b"authorization", f"Bearer {secret}".encode())]  # as open_admin sends it
    assert table.authenticate(bearer(sent), now=NOW).name == "ops"


def test_ctl_tables_do_not_pass_terminal_control_sequences_through() -> None:
    """``switchboard ctl`` (table output, the default, and the shell) prints what the
    node answers, including text that came from a platform or a peer (a channel's
    ``last_error``, a dead letter's ``reason`` and ``peer``), with ``str()``: an
    escape sequence in it reaches the operator's terminal and is obeyed (retitle
    the window, clear the screen, rewrite what was printed above). Control
    characters should be shown escaped, as the JSON output does."""
    from runtime.console.ctl import render

    letters = [{"channel": "a1", "reason": "HTTP 400: \x1b]0;owned\x07\x1b[2J\x1b[1A", "peer": "p"}]
    shown = render(letters, "table") + render({"last_error": "\x1b[2Jx"}, "table")
    assert "\x1b" not in shown and "\x07" not in shown


async def test_a_named_channel_that_the_filter_does_not_match_is_left_alone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``channels.stop`` and ``channels.restart`` take a ``ChannelFilter`` ("which
    channels: every given field must match") and a ``channel``. Given both, the
    filter is ignored: ``{"channel": "a1", "state": "failed"}`` ("stop a1 if it
    failed") stops a1, which is connected. A channel the filter does not match must
    not be acted on (answered with a count of 0, or refused as invalid params)."""
    async with console_node() as harness, harness.client("operator") as client:
        await client.call("channels.stop", {"channel": "a1", "state": "failed", "reason": "x"})
        await trio.sleep(1.0)
        assert (await _states(harness)).get("a1") == "connected"


async def test_a_letter_id_out_of_range_is_invalid_params_not_an_internal_error(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """``dead_letters.discard`` takes ``ids: list[int]`` with no bound. On a node with
    the SQLite store, an id beyond 64 bits (here 2**63) reaches sqlite3, whose
    OverflowError is neither a ValueError nor a NodeError: the answer is -32603
    "the console failed" with a traceback in the log (PostgreSQL answers -32000
    StoreError for the same call). A letter id the store cannot hold is a bad
    parameter: -32602, with its path, and no traceback."""
    from .console_support import console_config

    config = console_config(
        sections={"storage": {"backend": "sqlite", "path": str(tmp_path / "node.sqlite3")}}
    )
    with trio.fail_after(60):
        async with console_node(config) as harness, harness.client("operator") as client:
            await client.ok("channels.stop", {"channel": "a1", "reason": "x"})
            error = await client.error(
                "dead_letters.discard", {"channel": "a1", "reason": "x", "ids": [2**63]}
            )
            assert error["code"] == -32602, error
    assert "dead_letters.discard failed" not in caplog.text


async def test_a_client_call_with_a_non_finite_number_does_not_hang(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``switchboard ctl dead_letters.list older_than=nan`` (``_typed`` reads a float
    parameter with ``float()``, which takes ``nan`` and ``inf``; ``key:=NaN`` too):
    ``rpc.dumps`` writes ``NaN`` although its docstring says a non-finite float
    becomes null, the console rightly answers -32700 with a null id, and
    ``AdminClient._call`` skips every answer whose id is not its own, so it waits
    for ever: ctl hangs. The call should fail at once (refused before sending, or
    the null-id error taken as the answer)."""
    from runtime.console.client import AdminClient

    async with console_node() as harness, harness.client("reader") as client:
        send, receive = trio.open_memory_channel[str](10)

        class Wire:  # a websocket whose far end is the console's session
            async def send_message(self, text: str) -> None:
                answer = await client.session.handle(text)
                if answer is not None:
                    await send.send(answer)

            async def get_message(self) -> str:
                return await receive.receive()

        admin = AdminClient(Wire())  # type: ignore[arg-type]
        assert (await admin.call("system.whoami"))["name"] == "reader"
        with trio.move_on_after(60) as waited, contextlib.suppress(Exception):
            await admin.call("dead_letters.list", {"older_than": float("nan")})  # any error: ok
        assert not waited.cancelled_caught, "the call waited for ever"


async def test_an_inbound_message_with_a_lone_surrogate_does_not_kill_subscribers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The same fault as the echoed id, set off by any chat user: a platform's JSON
    may carry ``"\\ud83d"`` alone (a cut emoji), which the provider reads into the
    message text. A subscriber's ``events.event`` notification is written by
    ``rpc.dumps(..., ensure_ascii=False)`` and the websocket encodes it as UTF-8,
    which fails: the forwarding task raises, the session's nursery fails and the
    admin connection (``switchboard top``, ``ctl events.subscribe``) is dropped,
    every time such a message arrives. The notification should be sent (the
    surrogate escaped or replaced) and the connection go on."""
    from .console_support import TOKENS

    async with console_node() as harness:
        grant = harness.console.authenticate(TOKENS["reader"][0])
        frames: list[bytes] = []

        async def send(text: str) -> None:
            frames.append(text.encode("utf-8"))  # what the websocket does with a text frame

        async with harness.console.open_session(grant, send) as session:
            await session.handle(
                json.dumps(
                    {
                        "jsonrpc": "2.0",
                        "method": "events.subscribe",
                        "params": {"kinds": ["inbound"]},
                        "id": 1,
                    }
                )
            )
            harness.provider.inject("a1", "look \ud83d")
            harness.provider.inject("a1", "and this one")
            await trio.sleep(1.0)
            assert len(frames) == 2
