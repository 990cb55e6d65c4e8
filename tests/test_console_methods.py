"""The console's methods in virtual time: scopes, tenants, audit, dry runs, events, bad input.

A node with simulated channels (a1, a2 of tenant acme; g1 of globex; spare,
acme, in the file but not enabled) and a console; each client is a session
with no socket (the websocket shell is tested in test_console_server.py).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio

from actors import ChannelStatus
from providers.base import OutboundMessage
from providers.simulated import FailureRates, SimulatedProvider
from runtime.console.auth import Scope
from runtime.console.methods import METHODS
from runtime.console.rpc import ErrorCode
from runtime.console.session import EVENT_BUFFER, MAX_BATCH, MAX_SUBSCRIPTIONS

from .console_support import TOKENS, Harness, console_config, console_node
from .support import CEILING

# Valid parameters for every method (the table must not grow without them).
VALID: dict[str, Any] = {
    "system.describe": None,
    "system.whoami": None,
    "node.stats": None,
    "node.tree": None,
    "channels.list": {"tenant": "acme"},
    "channels.get": {"channel": "a1"},
    "channels.start": {"channel": "spare", "reason": "test"},
    "channels.stop": {"channel": "a1", "reason": "test"},
    "channels.restart": {"channel": "a1", "reason": "test"},
    "channels.revive": {"channel": "a1", "reason": "test"},
    "dead_letters.list": {"channel": "a1"},
    "dead_letters.replay": {"channel": "a1", "reason": "test"},
    "dead_letters.discard": {"channel": "a1", "reason": "test"},
    "events.subscribe": {"kinds": ["state"], "tenants": ["acme"]},
    "events.unsubscribe": {"subscription": 99},
    "node.drain": {"reason": "test"},
    "cluster.members": None,
    "cluster.placement": None,
    "cluster.leases": None,
    "cluster.stats": None,
    "cluster.restart_channels": {"tenant": "acme", "reason": "test", "dry_run": True},
    "cluster.pause_rebalancing": {"reason": "test"},
    "cluster.resume_rebalancing": {"reason": "test"},
    "cluster.move_channel": {"channel": "a1", "node": "t", "reason": "test"},
    "cluster.unpin_channel": {"channel": "a1", "reason": "test"},
    "cluster.release_lease": {"channel": "a1", "reason": "test"},
}
# What an allowed call may still answer, beside a result: a1 is not FAILED, there
# is no subscription 99, and this node is in no cluster.
ALLOWED_ERRORS = {
    "channels.revive": ErrorCode.NODE_ERROR,
    "events.unsubscribe": ErrorCode.NOT_FOUND,
    "cluster.members": ErrorCode.UNAVAILABLE,
    "cluster.placement": ErrorCode.UNAVAILABLE,
    "cluster.leases": ErrorCode.UNAVAILABLE,
    "cluster.stats": ErrorCode.UNAVAILABLE,
    "cluster.restart_channels": ErrorCode.UNAVAILABLE,
    "cluster.pause_rebalancing": ErrorCode.UNAVAILABLE,
    "cluster.resume_rebalancing": ErrorCode.UNAVAILABLE,
    "cluster.move_channel": ErrorCode.UNAVAILABLE,
    "cluster.unpin_channel": ErrorCode.UNAVAILABLE,
    "cluster.release_lease": ErrorCode.UNAVAILABLE,
}
SCOPES = {"reader": Scope.READ, "operator": Scope.OPERATE, "admin": Scope.ADMIN}


def test_every_method_has_valid_params_here() -> None:
    assert set(VALID) == set(METHODS)


@pytest.mark.parametrize("token", sorted(SCOPES))
@pytest.mark.parametrize("method", sorted(METHODS))
async def test_every_method_under_every_scope(
    autojump_clock: trio.testing.MockClock, method: str, token: str
) -> None:
    with trio.fail_after(CEILING):
        async with console_node() as harness, harness.client(token) as client:
            answer = await client.call(method, VALID[method])
            needs = METHODS[method].scope
            if SCOPES[token] < needs:
                assert answer["error"]["code"] == ErrorCode.FORBIDDEN
                assert answer["error"]["data"] == {"needs": needs.label, "has": token_scope(token)}
                assert harness.console.refusals.counts["forbidden"] == 1
            elif method in ALLOWED_ERRORS:
                assert answer["error"]["code"] == ALLOWED_ERRORS[method], answer
            else:
                assert "result" in answer, answer
                assert harness.console.refusals.counts["forbidden"] == 0


def token_scope(token: str) -> str:
    return SCOPES[token].label


async def test_describe_lists_params_and_scopes(autojump_clock: trio.testing.MockClock) -> None:
    async with console_node() as harness, harness.client("reader") as client:
        described = await client.ok("system.describe")
        methods = {m["name"]: m for m in described["methods"]}
        assert set(methods) == set(METHODS)
        stop = methods["channels.stop"]
        assert stop["scope"] == "operate" and stop["changes_state"] is True
        params = {p["name"]: p for p in stop["params"]}
        assert params["reason"]["required"] is True
        assert params["dry_run"] == {
            "name": "dry_run",
            "type": "bool",
            "required": False,
            "default": False,
        }
        assert methods["node.drain"]["scope"] == "admin"
        assert described["token"] == {
            "name": "reader",
            "scope": "read",
            "tenants": None,
            "expires_at": None,
        }


async def test_inspection(autojump_clock: trio.testing.MockClock) -> None:
    async with console_node() as harness, harness.client("reader") as client:
        stats = await client.ok("node.stats")
        assert stats["node"] == "t" and stats["state"] == "ready"
        assert stats["channels"] == 3 and stats["by_state"] == {"connected": 3}
        assert (stats["sends_in_flight"], stats["sends_refused"]) == (0, {})
        assert stats["sends_limit"] == 50_000  # [node] max_sends_in_flight: on time
        assert stats["loop_lag"] >= 0.0
        tree = await client.ok("node.tree")
        channels = next(child for child in tree["children"] if child["id"] == "channels")
        assert [child["id"] for child in channels["children"]] == ["a1", "a2", "g1"]
        assert all(child["restarts"] == 0 for child in channels["children"])
        listed = await client.ok("channels.list")
        assert listed["total"] == 3 and listed["next_offset"] is None
        assert [c["channel"] for c in listed["items"]] == ["a1", "a2", "g1"]
        page = await client.ok("channels.list", {"limit": 2})
        assert [c["channel"] for c in page["items"]] == ["a1", "a2"]
        assert page["next_offset"] == 2
        rest = await client.ok("channels.list", {"offset": 2, "limit": 2})
        assert [c["channel"] for c in rest["items"]] == ["g1"]
        assert (await client.ok("channels.list", {"provider": "simulated", "state": "connected"}))[
            "total"
        ] == 3
        assert (await client.ok("channels.list", {"state": "failed"}))["total"] == 0
        assert (await client.ok("channels.list", {"owner": "t"}))["total"] == 3
        detail = await client.ok("channels.get", {"channel": "a1"})
        assert detail["state"] == "connected" and detail["tenant"] == "acme"
        assert detail["breaker"]["state"] == "closed"
        assert detail["session"] is None or "keys" in detail["session"]
        assert detail["letters"] == [] and detail["dead_letters"] == 0
        assert detail["mailbox_depth"] == 0
        assert [h["state"] for h in detail["history"]][-1] == "connected"
        missing = await client.error("channels.get", {"channel": "nope"})
        assert missing["code"] == ErrorCode.NOT_FOUND
        assert "nope" in missing["message"]


def _renamed(params: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    """``params`` with the channel id ``old`` (alone or in a list) replaced by ``new``."""
    return {
        key: new if value == old else [new] if value == [old] else value
        for key, value in params.items()
    }


async def test_a_tenant_token_sees_and_touches_only_its_tenants(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with console_node() as harness, harness.client("acme-operator") as client:
        listed = await client.ok("channels.list")
        assert [c["channel"] for c in listed["items"]] == ["a1", "a2"]
        assert (await client.ok("node.stats"))["channels"] == 2
        tree = await client.ok("node.tree")
        channels = next(child for child in tree["children"] if child["id"] == "channels")
        assert [child["id"] for child in channels["children"]] == ["a1", "a2"]
        for method, params in [
            ("channels.list", {"tenant": "globex"}),
            ("events.subscribe", {"tenants": ["globex"]}),
        ]:
            error = await client.error(method, params)
            assert error["code"] == ErrorCode.TENANT_FORBIDDEN, (method, error)
        # A call on another tenant's channel is answered as one on a channel that
        # does not exist: the token learns neither that g1 exists nor whose it is.
        for method, params in [
            ("channels.get", {"channel": "g1"}),
            ("channels.restart", {"channel": "g1", "reason": "x"}),
            ("channels.stop", {"channel": "g1", "reason": "x"}),
            ("dead_letters.list", {"channel": "g1"}),
            ("dead_letters.replay", {"channel": "g1", "reason": "x"}),
            ("events.subscribe", {"channels": ["g1"]}),
        ]:
            error = await client.error(method, params)
            unknown = await client.error(method, {**params, **_renamed(params, "g1", "zz9")})
            assert error["code"] == unknown["code"] == ErrorCode.NOT_FOUND, (method, error)
            assert error["message"] == unknown["message"].replace("zz9", "g1"), method
            assert "globex" not in str(error)
        assert harness.console.refusals.counts["tenant"] == 8
        # Allowed on its own tenant.
        assert (await client.ok("channels.restart", {"channel": "a1", "reason": "x"}))["count"] == 1
        # A bulk restart with no tenant filter touches only what it sees.
        dry = await client.ok("channels.restart", {"reason": "all", "dry_run": True})
        assert dry["count"] == 2 and sorted(dry["channels"]) == ["a1", "a2"]
    async with console_node() as harness, harness.client("acme-admin") as client:
        error = await client.error("node.drain", {"reason": "x"})
        assert error["code"] == ErrorCode.TENANT_FORBIDDEN
        assert not harness.node.draining


async def test_an_expired_token_is_refused(autojump_clock: trio.testing.MockClock) -> None:
    async with console_node() as harness:
        from runtime.console.auth import Unauthenticated

        with pytest.raises(Unauthenticated, match="expired"):
            harness.console.authenticate("expired-secret-6")
        with pytest.raises(Unauthenticated, match="unknown token"):
            harness.console.authenticate("read-secret-")
        with pytest.raises(Unauthenticated, match="no bearer token"):
            harness.console.authenticate(None)
        assert harness.console.refusals.counts["unauthenticated"] == 3
        # A token that expires while its connection is open stops working there.
        async with harness.client("reader") as client:
            grant = client.session.grant
            client.session.grant = type(grant)(
                name=grant.name, scope=grant.scope, expires_at=harness.console.clock() - 1
            )
            error = await client.error("node.stats")
            assert error["code"] == ErrorCode.UNAUTHENTICATED


async def test_changes_are_audited_logged_and_published(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with (
        console_node() as harness,
        harness.client("reader") as watcher,
        harness.client("acme-operator") as acme_watcher,
        harness.client("operator") as operator,
    ):
        await watcher.ok("events.subscribe", {"kinds": ["audit"]})
        await acme_watcher.ok("events.subscribe", {"kinds": ["audit"]})
        with caplog.at_level("INFO", logger="switchboard.audit"):
            await operator.ok("channels.restart", {"channel": "g1", "reason": "stuck since 3am"})
            missing = await operator.error("channels.stop", {"channel": "nope", "reason": "typo"})
            assert missing["code"] == ErrorCode.NOT_FOUND
            no_reason = await operator.error("channels.stop", {"channel": "a1"})
            assert no_reason["code"] == ErrorCode.INVALID_PARAMS
            assert "required @ $.reason" in no_reason["data"]["problems"]
            blank = await operator.error("channels.stop", {"channel": "a1", "reason": "  "})
            assert blank["code"] == ErrorCode.INVALID_PARAMS
            refused = await watcher.error("channels.stop", {"channel": "a1", "reason": "try"})
            assert refused["code"] == ErrorCode.FORBIDDEN
            await trio.sleep(0.1)
        events = [n["params"]["event"] for n in watcher.notifications]
        assert [(e["token"], e["method"], e["outcome"], e["reason"]) for e in events] == [
            ("operator", "channels.restart", "ok", "stuck since 3am"),
            ("operator", "channels.stop", "failed", "typo"),
            ("operator", "channels.stop", "failed", None),
            ("operator", "channels.stop", "failed", "  "),
            ("reader", "channels.stop", "refused", "try"),
        ]
        assert events[0]["target"] == {"channels": ["g1"]}
        assert events[0]["at"] == harness.console.clock()
        assert all(n["method"] == "events.event" for n in watcher.notifications)
        # The acme-only watcher saw only what touched acme's a1: nothing of globex's g1
        # nor of the channel that does not exist.
        seen = [n["params"]["event"] for n in acme_watcher.notifications]
        assert [(e["token"], e["target"]) for e in seen] == [
            ("operator", {"channels": ["a1"]}),
            ("operator", {"channels": ["a1"]}),
            ("reader", {"channels": ["a1"]}),
        ]
        lines = [r.getMessage() for r in caplog.records if r.name == "switchboard.audit"]
        assert lines[0] == "admin channels.restart by operator (stuck since 3am): ok"
        assert len(lines) == 5


async def test_bulk_changes_need_a_dry_run_and_its_count(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with console_node() as harness, harness.client("operator") as client:
        bulk = {"tenant": "acme", "reason": "acme's token rotated"}
        unconfirmed = await client.error("channels.restart", bulk)
        assert unconfirmed["code"] == ErrorCode.CONFIRMATION_REQUIRED
        assert unconfirmed["data"] == {"count": 2}
        dry = await client.ok("channels.restart", {**bulk, "dry_run": True})
        assert dry == {"dry_run": True, "count": 2, "channels": ["a1", "a2"]}
        wrong = await client.error("channels.restart", {**bulk, "confirm": 3})
        assert wrong["code"] == ErrorCode.CONFIRMATION_REQUIRED
        assert wrong["data"] == {"count": 2}
        before = {s.channel_id: s.statistics.restarts for s in harness.node.channels()}
        done = await client.ok("channels.restart", {**bulk, "confirm": 2})
        assert done["count"] == 2 and done["channels"] == ["a1", "a2"]
        # Restarted from their specs: new actors (restart counts carry over).
        assert {s.channel_id for s in harness.node.channels()} == {"a1", "a2", "g1"}
        assert before["g1"] == 0
        stopped = await client.ok(
            "channels.stop", {"provider": "simulated", "reason": "maintenance", "confirm": 3}
        )
        assert stopped["count"] == 3
        assert harness.node.channels() == []


async def test_start_stop_restart_revive(autojump_clock: trio.testing.MockClock) -> None:
    provider = SimulatedProvider()
    async with (
        console_node(provider=provider) as harness,
        harness.client("operator") as client,
    ):
        started = await client.ok("channels.start", {"channel": "spare", "reason": "needed"})
        assert started["channel"] == "spare"
        again = await client.error("channels.start", {"channel": "spare", "reason": "again"})
        assert again["code"] == ErrorCode.NODE_ERROR
        unknown = await client.error("channels.start", {"channel": "ghost", "reason": "x"})
        assert unknown["code"] == ErrorCode.NOT_FOUND
        await client.ok("channels.stop", {"channel": "a2", "reason": "noisy"})
        assert "a2" not in {s.channel_id for s in harness.node.channels()}
        await client.ok("channels.start", {"channel": "a2", "reason": "back"})
        # A banned channel fails; revive starts it over once the ban is lifted.
        provider.ban("g1")
        provider.drop("g1")
        with harness.node.subscribe(kind="state", channel="g1") as changes:
            while harness.node.channel_detail("g1").snapshot.status is not ChannelStatus.FAILED:
                await changes.receive()
        listed = await client.ok("channels.list", {"state": "failed"})
        assert [c["channel"] for c in listed["items"]] == ["g1"]
        detail = await client.ok("channels.get", {"channel": "g1"})
        assert detail["last_errors"] and "banned" in detail["last_errors"][-1], detail
        provider.banned.discard("g1")
        revived = await client.ok("channels.revive", {"channel": "g1", "reason": "ban lifted"})
        assert revived["channel"] == "g1"
        not_failed = await client.error("channels.revive", {"channel": "a1", "reason": "x"})
        assert not_failed["code"] == ErrorCode.NODE_ERROR
        assert not_failed["data"]["error"] == "NotFailed"


async def test_dead_letters_list_replay_discard(autojump_clock: trio.testing.MockClock) -> None:
    provider = SimulatedProvider(failures=FailureRates(send_permanent=1.0))
    async with console_node(provider=provider) as harness:
        for index in range(3):
            with pytest.raises(Exception, match="simulated"):
                await harness.node.send(
                    "a1", OutboundMessage(peer="p", idempotency_key=f"k{index}", text="x")
                )
        async with harness.client("operator") as client:
            letters = await client.ok("dead_letters.list", {"channel": "a1"})
            assert [letter["idempotency_key"] for letter in letters] == ["k0", "k1", "k2"]
            detail = await client.ok("channels.get", {"channel": "a1"})
            assert len(detail["letters"]) == 3 and detail["dead_letters"] == 3
            provider.failures = FailureRates()
            replayed = await client.ok(
                "dead_letters.replay", {"channel": "a1", "ids": [1], "reason": "fixed"}
            )
            assert replayed == {"replayed": 1}
            discarded = await client.ok(
                "dead_letters.discard", {"channel": "a1", "reason": "obsolete"}
            )
            assert discarded == {"discarded": 2}
            assert await client.ok("dead_letters.list", {"channel": "a1"}) == []


async def test_drain_from_the_console(autojump_clock: trio.testing.MockClock) -> None:
    async with console_node() as harness, harness.client("admin") as client:
        answer = await client.ok("node.drain", {"reason": "kernel upgrade", "deadline": 2.0})
        assert answer == {"draining": True, "already": False, "deadline": 2.0}
        report = await harness.node.wait_drained()
        assert report is not None and harness.node.draining
        assert (await client.ok("node.drain", {"reason": "again"}))["already"] is True
        refused = await client.error("channels.restart", {"channel": "a1", "reason": "x"})
        assert refused["code"] == ErrorCode.UNAVAILABLE


async def test_events_subscription_filters(autojump_clock: trio.testing.MockClock) -> None:
    async with console_node() as harness, harness.client("reader") as client:
        sub = await client.ok("events.subscribe", {"kinds": ["inbound"], "tenants": ["globex"]})
        harness.provider.inject("a1", "for acme")
        harness.provider.inject("g1", "for globex")
        await trio.sleep(1)
        assert [n["params"]["channel"] for n in client.notifications] == ["g1"]
        params = client.notifications[0]["params"]
        assert params["subscription"] == sub["subscription"]
        assert params["kind"] == "inbound" and params["event"]["text"] == "for globex"
        assert params["dropped"] == 0
        assert "metadata" not in params["event"]
        totals = await client.ok("events.unsubscribe", sub)
        assert totals == {"subscription": 1, "sent": 1, "dropped": 0}
        harness.provider.inject("g1", "after")
        await trio.sleep(1)
        assert len(client.notifications) == 1
        bad = await client.error("events.subscribe", {"kinds": ["gossip"]})
        assert bad["code"] == ErrorCode.INVALID_PARAMS


async def test_a_slow_subscriber_never_slows_the_node(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The node keeps its send rate while a subscriber reads one event a second."""

    async def send_all(harness: Harness, count: int) -> float:
        began = trio.current_time()
        for index in range(count):
            await harness.node.send(
                "a1", OutboundMessage(peer="p", idempotency_key=f"m{index}", text="x")
            )
            await trio.sleep(0.01)  # 100 messages a second
        return trio.current_time() - began

    async with console_node() as harness:
        alone = await send_all(harness, 500)
    async with console_node() as harness, harness.client("reader", slow=1.0) as client:
        await client.ok("events.subscribe", {"kinds": ["receipt", "inbound"]})
        watched = await send_all(harness, 500)
        totals = await client.ok("events.unsubscribe", {"subscription": 1})
    assert watched == pytest.approx(alone, abs=1e-9)  # the same, in virtual time
    assert totals["sent"] < 500 and totals["dropped"] > 0
    # Every receipt was sent, dropped, or is still in the subscription's bounded buffer.
    assert totals["sent"] + totals["dropped"] + EVENT_BUFFER >= 500
    reported = [n["params"]["dropped"] for n in client.notifications]
    assert reported == sorted(reported) and reported[-1] > 0


async def test_notifications_are_rate_limited_per_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = console_config(events_per_second="10/s", event_burst=5)
    async with console_node(config) as harness, harness.client("reader") as client:
        await client.ok("events.subscribe", {"kinds": ["inbound"]})
        for index in range(50):
            harness.provider.inject("a1", f"m{index}")
        await trio.sleep(0.5)
        totals = await client.ok("events.unsubscribe", {"subscription": 1})
        assert totals["sent"] + totals["dropped"] == 50
        assert 5 <= totals["sent"] <= 15, totals


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("{not json", ErrorCode.PARSE_ERROR),
        ("", ErrorCode.PARSE_ERROR),
        ("\x00\xff", ErrorCode.PARSE_ERROR),
        ("[]", ErrorCode.INVALID_REQUEST),
        ("[" * 100_000 + "]" * 100_000, ErrorCode.PARSE_ERROR),
        ('{"jsonrpc": "2.0", "id": 1}', ErrorCode.INVALID_REQUEST),
        ('{"jsonrpc": "2.0", "method": "nope.nope", "id": 1}', ErrorCode.METHOD_NOT_FOUND),
        ('{"jsonrpc": "2.0", "method": "rpc.discover", "id": 1}', ErrorCode.METHOD_NOT_FOUND),
        (
            '{"jsonrpc": "2.0", "method": "channels.list", "params": {"limit": "x"}, "id": 1}',
            ErrorCode.INVALID_PARAMS,
        ),
        (
            '{"jsonrpc": "2.0", "method": "channels.list", "params": {"limit": 0}, "id": 1}',
            ErrorCode.INVALID_PARAMS,
        ),
        (
            '{"jsonrpc": "2.0", "method": "channels.list", "params": {"state": "happy"}, "id": 1}',
            ErrorCode.INVALID_PARAMS,
        ),
        (
            '{"jsonrpc": "2.0", "method": "channels.get", "params": [1], "id": 1}',
            ErrorCode.INVALID_PARAMS,
        ),
        (
            '{"jsonrpc": "2.0", "method": "channels.get", "params": {"channel": null}, "id": 1}',
            ErrorCode.INVALID_PARAMS,
        ),
        (
            '{"jsonrpc": "2.0", "method": "dead_letters.replay", "params": '
            '{"channel": "a1", "reason": "r", "ids": ["x"]}, "id": 1}',
            ErrorCode.INVALID_PARAMS,
        ),
    ],
)
async def test_bad_input_gets_the_right_error(
    autojump_clock: trio.testing.MockClock, text: str, code: int
) -> None:
    async with console_node() as harness, harness.client("admin") as client:
        answer = await client.raw(text)
        assert answer["error"]["code"] == code, answer
        assert (await client.ok("node.stats"))["channels"] == 3  # still serving


async def test_subscriptions_per_connection_are_bounded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with console_node() as harness, harness.client("reader") as client:
        for _ in range(MAX_SUBSCRIPTIONS):
            await client.ok("events.subscribe", {"kinds": ["state"]})
        refused = await client.error("events.subscribe", {"kinds": ["state"]})
        assert refused["code"] == ErrorCode.RATE_LIMITED
        await client.ok("events.unsubscribe", {"subscription": 3})
        assert (await client.ok("events.subscribe"))["subscription"] == MAX_SUBSCRIPTIONS + 1


async def test_a_flood_of_calls_is_refused_past_the_rate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = console_config(calls_per_second="10/s", call_burst=20)
    async with console_node(config) as harness, harness.client("reader") as client:
        call = {"jsonrpc": "2.0", "method": "system.whoami"}
        batch = [{**call, "id": index} for index in range(MAX_BATCH)]
        answers = await client.raw(json.dumps(batch))
        ok = [a for a in answers if "result" in a]
        limited = [a for a in answers if "error" in a]
        assert len(ok) == 20 and len(limited) == MAX_BATCH - 20
        assert {a["error"]["code"] for a in limited} == {ErrorCode.RATE_LIMITED}
        assert limited[0]["error"]["data"]["retry_after"] > 0
        assert harness.console.refusals.counts["rate_limited"] == MAX_BATCH - 20
        too_big = await client.raw(json.dumps([{**call, "id": 1}] * (MAX_BATCH + 1)))
        assert too_big["error"]["code"] == ErrorCode.INVALID_REQUEST
        await trio.sleep(1.0)  # the budget comes back
        assert (await client.ok("system.whoami"))["name"] == "reader"


async def test_errors_never_carry_a_secret(autojump_clock: trio.testing.MockClock) -> None:
    async with console_node() as harness, harness.client("admin") as client:
        error = await client.error("channels.get", {"channel": "admin-secret-3"})
        assert "admin-secret-3" not in json.dumps(error)
        answers = [
            await client.ok("system.describe"),
            await client.ok("channels.get", {"channel": "a1"}),
            await client.ok("node.tree"),
        ]
        text = json.dumps(answers)
        for secret, *_ in TOKENS.values():
            assert secret not in text


async def test_refusals_are_counted_on_metrics(autojump_clock: trio.testing.MockClock) -> None:
    from prometheus_client import generate_latest

    from runtime.ops.metrics import WebhookCounters, ops_registry

    async with console_node() as harness, harness.client("reader") as client:
        await client.error("node.drain", {"reason": "x"})
        await client.error("channels.stop", {"channel": "a1", "reason": "x"})
        registry = ops_registry(harness.node, WebhookCounters())
        text = generate_latest(registry).decode()
        assert 'switchboard_admin_refused_total{reason="forbidden"} 2.0' in text
        assert "switchboard_admin_calls_total 2.0" in text
        assert "switchboard_admin_connections 1.0" in text


# --- the cluster views (real Redis, real time) ----------------------------------------------


async def test_cluster_views(tmp_path: Any) -> None:
    import secrets

    from runtime import open_node, parse_config
    from runtime.console.session import Console
    from tests.test_cluster_redis import REDIS_URL, redis

    from .console_support import admin_section, token_env

    prefix = f"sbtest-{secrets.token_hex(4)}"
    config = parse_config(
        {
            "node": {"id": "solo", "drain_deadline": 2.0, "start_timeout": 5.0},
            "ops": {"enabled": False},
            "storage": {"backend": "sqlite", "path": str(tmp_path / "solo.sqlite3")},
            "cluster": {
                "redis_url": REDIS_URL,
                "key_prefix": prefix,
                "heartbeat_interval": 0.2,
                "member_timeout": 1.0,
                "lease_ttl": 1.5,
            },
            "providers": {"simulated": {"rate_limit": {"enabled": False}}},
            "channels": [
                {"id": "a1", "tenant": "acme", "provider": "simulated"},
                {"id": "g1", "tenant": "globex", "provider": "simulated"},
            ],
            "admin": admin_section(),
        },
        env=token_env(),
    )
    try:
        with trio.fail_after(CEILING):
            async with open_node(config, providers={"simulated": SimulatedProvider()}) as node:
                while len(node.channels()) < 2 or not all(  # noqa: ASYNC110 - Redis answers
                    s.status is ChannelStatus.CONNECTED for s in node.channels()
                ):
                    await trio.sleep(0.05)
                assert config.admin is not None
                console = Console(node, config.admin)
                async with trio.open_nursery() as nursery:
                    await nursery.start(console.run)
                    harness = Harness(node, console, SimulatedProvider(), nursery)
                    async with harness.client("reader") as client:
                        members = await client.ok("cluster.members")
                        assert members["node"] == "solo" and members["epoch"] >= 1
                        assert [
                            (m["node"], m["placed"], m["held"]) for m in members["members"]
                        ] == [("solo", 2, 2)]
                        placement = await client.ok("cluster.placement")
                        assert placement == {
                            "node": "solo",
                            "placed": {"solo": 2},
                            "held": {"solo": 2},
                            "moving": 0,
                            "unplaced": [],
                            "paused": None,
                            "pins": {},
                        }
                        leases = await client.ok("cluster.leases")
                        assert [
                            (lease["channel_id"], lease["holder"]) for lease in leases["leases"]
                        ] == [
                            ("a1", "solo"),
                            ("g1", "solo"),
                        ]
                        assert all(lease["token"] >= 1 for lease in leases["leases"])
                        assert (await client.ok("cluster.leases", {"moving_only": True}))[
                            "total"
                        ] == 0
                        listed = await client.ok("channels.list", {"owner": "solo"})
                        assert listed["total"] == 2
                    async with harness.client("acme-operator") as acme:
                        leases = await acme.ok("cluster.leases")
                        assert [lease["channel_id"] for lease in leases["leases"]] == ["a1"]
                        assert (await acme.ok("cluster.placement"))["placed"] == {"solo": 1}
                    nursery.cancel_scope.cancel()
    finally:
        async with redis() as link:
            keys = await link.call("KEYS", f"{prefix}:*")
            if keys:
                await link.call("DEL", *keys)


async def test_a_method_that_fails_is_an_internal_error_and_the_session_goes_on(
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with console_node() as harness, harness.client("reader") as client:

        def broken() -> None:
            raise RuntimeError("a bug with admin-secret-3 in it")

        monkeypatch.setattr(harness.node, "tree", broken)
        error = await client.error("node.tree")
        assert error["code"] == ErrorCode.INTERNAL_ERROR
        assert "admin-secret-3" not in json.dumps(error)
        assert "node.tree failed" in caplog.text
        assert (await client.ok("node.stats"))["channels"] == 3
