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
import trio.testing

from actors import ChannelStatus

from .console_support import NOW, console_node


async def _dropped_and_back(harness: Any, channel_id: str) -> None:
    """Break the channel's link and wait until it is connected again: every state
    event of the reconnect (backing off, connecting, connected) is out."""
    with harness.node.subscribe(kind="state", channel=channel_id) as changes:
        harness.provider.drop(channel_id)
        while (await changes.receive()).event.status is not ChannelStatus.CONNECTED:
            pass
    await trio.testing.wait_all_tasks_blocked()


async def _inbound(harness: Any, channel_id: str, *texts: str) -> None:
    """A user writes ``texts`` to the channel; waits until the node has published them."""
    with harness.node.subscribe(kind="inbound", channel=channel_id) as events:
        for text in texts:
            harness.provider.inject(channel_id, text)
        for _ in texts:
            await events.receive()
    await trio.testing.wait_all_tasks_blocked()


async def _states(harness: Any) -> dict[str, str]:
    return {s.channel_id: s.status.value for s in harness.node.channels()}


async def test_a_dry_run_on_one_channel_changes_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A dry run only counts, also for one named channel: ``channels.stop`` and
    ``channels.restart`` with ``channel`` and ``dry_run: true`` stopped or restarted
    it (the dry run's answer was given only for a filter)."""
    async with console_node() as harness, harness.client("operator") as client:
        await client.call("channels.stop", {"channel": "a1", "reason": "x", "dry_run": True})
        await trio.testing.wait_all_tasks_blocked()
        assert (await _states(harness)).get("a1") == "connected"  # stopped: gone from the node
        before = harness.node.channel_detail("a2").incarnations
        await client.call("channels.restart", {"channel": "a2", "reason": "x", "dry_run": True})
        await trio.testing.wait_all_tasks_blocked()
        assert harness.node.channel_detail("a2").incarnations == before


async def test_a_subscription_ended_in_the_same_batch_stops_forwarding(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A subscription ended in the batch that made it (no checkpoint between) forwards
    nothing, and the node keeps no subscriber for it. Its forwarding tasks made
    their cancel scopes as they started, after the unsubscribe had cancelled
    none, and forwarded for the rest of the connection."""
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
        await _dropped_and_back(harness, "a1")  # state events: backing_off, connecting, ...
        assert client.notifications == []
        assert {id(subscriber) for subscriber in hub._subscribers} <= before  # none added


async def test_an_expired_token_stops_receiving_events(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Once the token has expired, its calls are refused and its subscriptions
    forward nothing more (inbound messages, state, audit). The events went on for
    as long as the connection stayed open."""
    async with console_node() as harness:
        clock = [1_798_000_000.0]  # before the "expired" token's expiry (2027-01-01)
        harness.console.clock = lambda: clock[0]
        async with harness.client("expired") as client:
            await client.ok("events.subscribe", {"kinds": ["inbound", "state"]})
            clock[0] = NOW  # the token has expired now
            refused = await client.error("system.whoami")
            assert refused["code"] == -32001  # calls: refused
            await _inbound(harness, "a1", "a message the expired token must not read")
            await _dropped_and_back(harness, "g1")
            assert client.notifications == []


async def test_a_lone_surrogate_in_a_request_is_answered_and_the_connection_lives(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """JSON allows ``"\\ud800"`` (a lone surrogate), which no UTF-8 text frame can
    carry: an answer echoing it as the request's id is written escaped. The
    connection's task died of UnicodeEncodeError, with no answer."""
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
    """A channel's last error may quote the platform's refusal, which may echo its
    credential: every answer and notification is scrubbed, as the ops API's are.
    ``channels.list``, ``channels.get`` (``last_error``, ``statistics``,
    ``last_errors``) and state events showed it to any ``read`` token."""
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
    """A change called with its parameters by position is audited with its reason;
    the audit read the reason only from parameters given by name, and said "no
    reason given"."""
    async with (
        console_node() as harness,
        harness.client("reader") as watcher,
        harness.client("operator") as operator,
    ):
        await watcher.ok("events.subscribe", {"kinds": ["audit"]})
        with caplog.at_level("INFO", logger="switchboard.audit"):
            started = await operator.ok("channels.start", ["spare", "spare for the sale"])
            assert started["channel"] == "spare"
            await trio.testing.wait_all_tasks_blocked()
        (event,) = [n["params"]["event"] for n in watcher.notifications]
        assert (event["method"], event["outcome"]) == ("channels.start", "ok")
        assert event["reason"] == "spare for the sale"
        lines = [r.getMessage() for r in caplog.records if r.name == "switchboard.audit"]
        assert lines == ["admin channels.start by operator (spare for the sale): ok"]


async def test_max_connections_holds_for_connections_that_arrive_together(
    tmp_path: Any,
) -> None:
    """Handshakes that arrive together count against ``max_connections`` from the
    check on: the bound was checked before the handshake's accept and counted
    after it, so all of them found room."""
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
    """The console scrubs with the node's own redactor: a secret percent-encoded,
    JSON- or repr-escaped, credential shapes, longest first. Its own plain
    replace left a percent-encoded credential in ``channels.get``'s history."""
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
    """An ``audit`` subscription limited to some channels gets only the audit events
    of changes to them; it was filtered by tenant only, and got every channel's."""
    async with (
        console_node() as harness,
        harness.client("reader") as watcher,
        harness.client("operator") as operator,
    ):
        await watcher.ok("events.subscribe", {"kinds": ["audit"], "channels": ["a1"]})
        await operator.ok("channels.restart", {"channel": "g1", "reason": "stuck"})
        await trio.testing.wait_all_tasks_blocked()
        targets = [n["params"]["event"]["target"] for n in watcher.notifications]
        assert targets == []


def test_a_token_with_non_ascii_characters_is_accepted() -> None:
    """A token with non-ASCII characters authenticates: the client sends it as UTF-8,
    and the server read the header as Latin-1, so it never matched."""
    from runtime.config.model import AdminToken
    from runtime.console.auth import TokenTable, bearer

    secret = "Päßwort-ζ-0b9c2e"
    table = TokenTable([AdminToken(name="ops", token=secret, scope="read")])
    sent = [(b"authorization", f"Bearer {secret}".encode())]  # as open_admin sends it
    assert table.authenticate(bearer(sent), now=NOW).name == "ops"


def test_ctl_tables_do_not_pass_terminal_control_sequences_through() -> None:
    """``switchboard ctl`` shows control characters of what the node answers escaped
    (a platform's or a peer's text: a last error, a dead letter's reason); they
    reached the terminal and were obeyed."""
    from runtime.console.ctl import render

    letters = [{"channel": "a1", "reason": "HTTP 400: \x1b]0;owned\x07\x1b[2J\x1b[1A", "peer": "p"}]
    shown = render(letters, "table") + render({"last_error": "\x1b[2Jx"}, "table")
    assert "\x1b" not in shown and "\x07" not in shown


async def test_a_named_channel_that_the_filter_does_not_match_is_left_alone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A filter beside a named channel is a condition ("stop a1 if it failed"): a
    connected a1 is left alone (a count of 0). The filter was ignored."""
    async with console_node() as harness, harness.client("operator") as client:
        await client.call("channels.stop", {"channel": "a1", "state": "failed", "reason": "x"})
        await trio.testing.wait_all_tasks_blocked()
        assert (await _states(harness)).get("a1") == "connected"


async def test_a_letter_id_out_of_range_is_invalid_params_not_an_internal_error(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A letter id past 64 bits is invalid params (-32602, with its path); on SQLite
    it reached sqlite3's OverflowError, answered -32603 with a traceback logged."""
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
    """``switchboard ctl ... older_than=nan`` fails at once: ctl refuses a number
    that is not finite, the console writes NaN as null, and the client takes an
    error without an id as its call's answer. ctl waited for ever."""
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
    """A lone surrogate in an inbound message reaches subscribers escaped, and the
    connection goes on; the notification could not be encoded as UTF-8, and
    every ``top`` and ``ctl events.subscribe`` connection dropped."""
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
            await _inbound(harness, "a1", "look \ud83d", "and this one")
            assert len(frames) == 2


async def test_a_dry_run_on_one_channel_is_audited_as_a_dry_run(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Its audit event says ``dry_run: true``, as a filter's does: it read a dry run
    only where the target had a count, which one channel's never has."""
    async with (
        console_node() as harness,
        harness.client("reader") as watcher,
        harness.client("operator") as operator,
    ):
        await watcher.ok("events.subscribe", {"kinds": ["audit"]})
        await operator.ok("channels.stop", {"channel": "a1", "reason": "x", "dry_run": True})
        await trio.testing.wait_all_tasks_blocked()
        (event,) = [n["params"]["event"] for n in watcher.notifications]
        assert (event["method"], event["dry_run"]) == ("channels.stop", True), event


async def test_a_drain_with_a_deadline_below_zero_is_invalid_params(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``node.drain`` with a deadline below 0 is -32602 and the node goes on:
    the node's own check raised in the console's background task and took the
    console, and the node, down."""
    async with console_node() as harness, harness.client("admin") as client:
        error = await client.error("node.drain", {"reason": "x", "deadline": -1})
        await trio.testing.wait_all_tasks_blocked()
        assert error["code"] == -32602, error
        assert not harness.node.draining
