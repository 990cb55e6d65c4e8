"""Membership, leases and ownership against a real Redis (``SWITCHBOARD_TEST_REDIS``).

Each test has a key prefix of its own, deleted afterwards. Real time with
short intervals, bounded by hard ceilings; the Redis-restart tests run a
Redis server of their own on a free port.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import traceback
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Final

import pytest
import trio

from actors.channel import Tenure
from providers.testing import LinkBreaker
from runtime.cluster.leases import Acquired, Held, LeaseClock, Leases
from runtime.cluster.membership import Membership, View
from runtime.cluster.ownership import Ownership
from runtime.cluster.redis import ClusterUnavailable, RedisLink, open_redis
from runtime.lag import PROBE_INTERVAL, LoopLag

REDIS_URL: Final = os.environ.get("SWITCHBOARD_TEST_REDIS", "redis://127.0.0.1:6379/0")
CEILING: Final = 30.0  # real seconds per test; only a hang gets near it


@asynccontextmanager
async def redis(url: str = REDIS_URL, *, within: float = 1.0) -> AsyncIterator[RedisLink]:
    async with open_redis(url, timeout=within) as link:
        yield link


def member(link: RedisLink, prefix: str, node: str, **timing: float) -> Membership:
    return Membership(
        link,
        prefix=prefix,
        node_id=node,
        heartbeat_interval=timing.get("interval", 0.1),
        member_timeout=timing.get("timeout", 0.5),
    )


# --- membership ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "written", ["x?Tr0ub4dorSecret", "Tr0ub4dor/Secret", "Tr0ub4dor#Secret", "1234/Tr0ub4dorSecret"]
)
async def test_a_redis_password_written_without_its_escapes_is_not_quoted(written: str) -> None:
    # redis-py's own words quote the URL: "Port could not be cast to integer
    # value as 'Tr0ub4dor'" for a password with a bare ? / or #.
    with trio.fail_after(10), pytest.raises(ClusterUnavailable) as caught:
        async with open_redis(f"redis://:{written}@127.0.0.1:6379/0", timeout=1.0):
            pytest.fail("a URL that cannot be read was used")
    assert "Tr0ub4dor" not in str(caught.value) and "Secret" not in str(caught.value)
    if not written[0].isdigit():  # (digits first: read as a port, and refused on connecting)
        assert "percent-encoded" in str(caught.value)
    assert "Tr0ub4dor" not in "".join(traceback.format_exception(caught.value))


async def test_members_join_see_each_other_and_leave(prefix: str) -> None:
    seen: list[View] = []
    with trio.fail_after(CEILING):
        async with redis() as link, trio.open_nursery() as nursery:
            a, b = member(link, prefix, "a"), member(link, prefix, "b")
            first = await nursery.start(a.run, seen.append)
            assert first.members == ("a",)
            await nursery.start(b.run, lambda view: None)
            while seen[-1].members != ("a", "b"):  # noqa: ASYNC110 - Redis changes, not a trio task
                await trio.sleep(0.02)
            joined = seen[-1].epoch
            await b.leave()
            while seen[-1].members != ("a",):  # noqa: ASYNC110 - Redis changes, not a trio task
                await trio.sleep(0.02)
            assert seen[-1].epoch != joined
            nursery.cancel_scope.cancel()


async def test_a_second_process_with_a_live_node_s_id_is_refused(prefix: str) -> None:
    # It joined silently, shared the first's forwarding inbox and took its
    # forwarded sends; its own API's sends waited 60 s for an answer.
    with trio.fail_after(CEILING):
        async with redis() as link, trio.open_nursery() as nursery:
            first, copy = member(link, prefix, "n1"), member(link, prefix, "n1")
            await nursery.start(first.run, lambda view: None)
            with pytest.raises(ClusterUnavailable, match="node id 'n1' is taken"):
                await copy.run(lambda view: None)
            assert first.view is not None and first.view.members == ("n1",)
            nursery.cancel_scope.cancel()


async def test_a_process_whose_id_another_took_while_it_was_silent_stops(prefix: str) -> None:
    # Silent past member_timeout (a pause), then another process took the id:
    # the first went on, both acting as n1 (placing its channels, one inbox).
    ended = trio.Event()
    raised: list[ClusterUnavailable] = []
    with trio.fail_after(CEILING):
        async with redis() as link, trio.open_nursery() as nursery:
            old, new = member(link, prefix, "n1"), member(link, prefix, "n1")

            async def run_old(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
                try:
                    await old.run(lambda view: None, task_status=task_status)
                except ClusterUnavailable as exc:
                    raised.append(exc)
                    ended.set()

            await nursery.start(run_old)
            # Its hold ran out (as after member_timeout without a heartbeat).
            await link.call("DEL", old.instance_key)
            await link.call("ZREM", old.members_key, "n1")
            await new.beat()
            assert not new.taken  # the new process holds n1 now
            await ended.wait()  # the old one's next heartbeat finds it taken
            nursery.cancel_scope.cancel()
    assert "was taken by another process" in str(raised[0])


@pytest.mark.parametrize("ending", ["crash", "drain"])
async def test_a_restarted_node_takes_its_id_back(prefix: str, ending: str) -> None:
    # A crashed process's hold runs out within member_timeout; a drain gives it back.
    views: list[View] = []
    with trio.fail_after(CEILING):
        async with redis() as link:
            async with trio.open_nursery() as nursery:
                old = member(link, prefix, "n1")
                await nursery.start(old.run, lambda view: None)
                if ending == "drain":
                    await old.leave()
                nursery.cancel_scope.cancel()  # (a crash: no more heartbeats, no leave)
            new = member(link, prefix, "n1")
            if ending == "drain":
                await new.beat()
                assert not new.taken  # at once
            async with trio.open_nursery() as nursery:
                await nursery.start(new.run, views.append)
                nursery.cancel_scope.cancel()
    assert views[0].members == ("n1",)


async def test_a_silent_member_is_declared_dead_on_redis_s_clock(prefix: str) -> None:
    with trio.fail_after(CEILING):
        async with redis() as link:
            a, b = member(link, prefix, "a"), member(link, prefix, "b")
            await a.beat()
            view = await b.beat()
            assert view.members == ("a", "b")
            # "a" stops beating; "b" goes on: after member_timeout "a" is gone.
            started = view.redis_time
            while (view := await b.beat()).members != ("b",):  # noqa: ASYNC110 - Redis changes, not a trio task
                await trio.sleep(0.05)
            assert view.redis_time - started >= 0.5
            assert view.epoch > 0


# --- leases -------------------------------------------------------------------------------


async def test_a_lease_is_held_by_one_node_and_its_token_only_grows(prefix: str) -> None:
    with trio.fail_after(CEILING):
        async with redis() as link:
            a = Leases(link, prefix=prefix, node_id="a", ttl=0.5)
            b = Leases(link, prefix=prefix, node_id="b", ttl=0.5)
            first = await a.acquire("ch")
            assert isinstance(first, Acquired)
            held = await b.acquire("ch")
            assert isinstance(held, Held)
            assert held.holder == f"a|{first.token}"
            assert 0 < held.expires_in <= 0.5
            assert await b.release("ch", first.token) is False  # not b's to give
            assert await a.renew([("ch", first.token, True)]) == []
            # a stops renewing: its lease runs out on Redis's clock
            while isinstance(second := await b.acquire("ch"), Held):  # noqa: ASYNC110
                await trio.sleep(0.05)
            assert second.token == first.token + 1
            assert await a.renew([("ch", first.token, True)]) == ["ch"]  # a lost it
            assert await b.release("ch", second.token) is True
            third = await a.acquire("ch", floor=100)  # the store knows token 100
            assert isinstance(third, Acquired) and third.token == 101
            assert await a.holders(["ch", "other"]) == {"ch": ("a", 101)}


async def test_a_release_is_announced_so_the_next_owner_need_not_wait_for_expiry(
    prefix: str,
) -> None:
    with trio.fail_after(CEILING):
        async with redis() as link, trio.open_nursery() as nursery:
            a = Leases(link, prefix=prefix, node_id="a", ttl=60.0)
            b = Leases(link, prefix=prefix, node_id="b", ttl=60.0)
            heard: list[str] = []
            got = trio.Event()

            async def listen() -> None:
                async for channel in b.released():
                    heard.append(channel)
                    got.set()

            nursery.start_soon(listen)
            first = await a.acquire("ch")
            assert isinstance(first, Acquired)
            assert isinstance(await b.acquire("ch"), Held)  # a minute left on it
            while not heard:  # the subscription may not be in place yet: release again
                assert await a.release("ch", first.token) in (True, False)
                with trio.move_on_after(0.2):
                    await got.wait()
                if not heard:
                    again = await a.acquire("ch")
                    assert isinstance(again, Acquired)
                    first = again
            assert heard == ["ch"]
            assert isinstance(await b.acquire("ch"), Acquired)  # no expiry waited for
            assert await a.release("ch", first.token) is False  # not a's any more: not announced
            with trio.move_on_after(0.3):
                await trio.sleep_forever()
            assert heard == ["ch"]
            nursery.cancel_scope.cancel()


async def test_renewals_go_in_one_batch_and_report_the_lost(prefix: str) -> None:
    with trio.fail_after(CEILING):
        async with redis() as link:
            leases = Leases(link, prefix=prefix, node_id="a", ttl=5.0)
            tokens = {}
            for channel in ("x", "y", "z"):
                acquired = await leases.acquire(channel)
                assert isinstance(acquired, Acquired)
                tokens[channel] = acquired.token
            await link.call("DEL", leases.lease_key("y"))  # Redis forgot one
            lost = await leases.renew([(c, t, True) for c, t in tokens.items()])
            assert lost == ["y"]
            assert await link.call("PTTL", leases.lease_key("x")) > 4000


class Runner:
    """A stand-in node: records what ownership asks of it."""

    def __init__(self) -> None:
        self.tenures: dict[str, Tenure] = {}
        self.stopped: list[str] = []
        self._started: dict[str, trio.Event] = {}

    async def floor_token(self, channel_id: str) -> int:
        return 0

    async def start_owned(self, channel_id: str, tenure: Tenure) -> None:
        self.tenures[channel_id] = tenure
        self._started.setdefault(channel_id, trio.Event()).set()

    async def started(self, channel_id: str) -> Tenure:
        """The tenure ``channel_id`` started under, once ownership has started it."""
        await self._started.setdefault(channel_id, trio.Event()).wait()
        return self.tenures[channel_id]

    async def stop_owned(self, channel_id: str) -> None:
        self.stopped.append(channel_id)

    def released(self, channel_id: str) -> None:
        pass

    def catalog_changed(self, channel_ids: frozenset[str]) -> None:
        pass


def owning_ch(leases: Leases, runner: Runner) -> Ownership:
    """Node "a", alone in the cluster, owning the catalog's one channel "ch"."""
    ownership = Ownership(node_id="a", leases=leases, runner=runner, vnodes=16, renew_batch=100)
    ownership.set_members(["a"])
    ownership.set_catalog(["ch"])
    return ownership


async def test_a_node_cut_off_from_redis_drops_its_connection_before_its_lease_can_expire(
    prefix: str,
) -> None:
    host, port = REDIS_URL.split("//")[1].split("/")[0].split(":")
    breaker = LinkBreaker(int(port), target_host=host)
    runner = Runner()
    ttl = 1.5
    with trio.fail_after(CEILING):
        async with trio.open_nursery() as outer, redis() as watcher:
            proxy_port = await outer.start(breaker.serve)
            async with redis(f"redis://127.0.0.1:{proxy_port}/0", within=0.2) as link:
                leases = Leases(link, prefix=prefix, node_id="a", ttl=ttl)
                ownership = owning_ch(leases, runner)
                async with trio.open_nursery() as nursery:
                    await nursery.start(ownership.run)
                    tenure = await runner.started("ch")
                    await trio.sleep(ttl)  # renewals keep it
                    assert tenure.valid()
                    breaker.frozen = True  # bytes vanish: renewals time out
                    while tenure.valid():  # noqa: ASYNC110 - Redis changes, not a trio task
                        await trio.sleep(0.01)
                    # The connection is gone here, while Redis still holds the lease.
                    remaining = await watcher.call("PTTL", leases.lease_key("ch"))
                    assert remaining > 0, remaining
                    nursery.cancel_scope.cancel()
            breaker.frozen = False
            breaker.cut()
            outer.cancel_scope.cancel()


class StuckRunner(Runner):
    """A node whose channels do not stop within a drain's hand-off."""

    def __init__(self) -> None:
        super().__init__()
        self.let_go: list[str] = []

    async def stop_owned(self, channel_id: str) -> None:
        await trio.sleep_forever()

    def released(self, channel_id: str) -> None:
        self.let_go.append(channel_id)


async def test_a_hand_off_cut_by_its_deadline_gives_the_lease_back_when_the_node_leaves(
    prefix: str,
) -> None:
    """Out of time, the channel's tenure ends at once but its lease is still held;
    leaving gives it back then, instead of making the next owner wait out the TTL."""
    runner = StuckRunner()
    with trio.fail_after(CEILING):
        async with redis() as link:
            leases = Leases(link, prefix=prefix, node_id="a", ttl=60.0)
            ownership = owning_ch(leases, runner)
            async with trio.open_nursery() as nursery:
                await nursery.start(ownership.run)
                await runner.started("ch")
                handed = await ownership.hand_off(trio.current_time() + 0.2)
                assert handed == 0  # it did not stop in time ...
                assert runner.tenures["ch"].revoked  # ... but its connection is ended
                assert await link.call("EXISTS", leases.lease_key("ch")) == 1
                assert "ch" in ownership.owned and runner.let_go == []
                await ownership.release_all()  # the drain stopped it: leaving
                assert await link.call("EXISTS", leases.lease_key("ch")) == 0
                assert ownership.owned == {} and runner.let_go == ["ch"]
                nursery.cancel_scope.cancel()


async def test_a_loop_that_runs_late_holds_its_connections_for_less(prefix: str) -> None:
    runner = Runner()
    ttl = 1.5
    with trio.fail_after(CEILING):
        async with redis() as link:
            leases = Leases(link, prefix=prefix, node_id="a", ttl=ttl)
            ownership = owning_ch(leases, runner)
            ownership.lag.record(trio.current_time(), 0.2)  # the loop woke 0.2 s late
            async with trio.open_nursery() as nursery:
                await nursery.start(ownership.run)
                await runner.started("ch")
                seen = trio.current_time()  # after the acquire was sent
                # Twice the lateness given up on top of the drift margin.
                assert runner.tenures["ch"].deadline <= seen + ttl - leases.clock.margin - 0.4
                nursery.cancel_scope.cancel()


def test_the_loop_lag_is_the_worst_within_its_window_and_its_allowance_is_capped() -> None:
    lag = LoopLag(window=2.0, cap=0.5)
    assert lag.worst(0.0) == 0.0 and lag.allowance(0.0) == 0.0
    lag.record(1.0, 0.1)
    lag.record(1.5, 0.05)
    assert lag.worst(1.5) == 0.1 and lag.allowance(1.5) == 0.2
    lag.record(2.0, 0.4)
    assert lag.worst(2.0) == 0.4 and lag.allowance(2.0) == 0.5  # capped
    assert lag.worst(3.9) == 0.4  # still within the window
    lag.record(4.1, 0.0)
    assert lag.worst(4.1) == 0.0  # 0.4 at 2.0 is older than the window
    clock = LeaseClock(10.0)
    assert clock.deadline(100.0, lag=0.5) == clock.deadline(100.0) - 0.5


async def test_the_probe_sees_a_loop_that_ran_late(mock_clock: trio.testing.MockClock) -> None:
    lag = LoopLag(window=60.0, cap=1.0)
    with trio.fail_after(CEILING):
        async with trio.open_nursery() as nursery:
            await nursery.start(lag.run)
            mock_clock.jump(0.3)  # time passed and no task ran: a stalled loop
            await trio.testing.wait_all_tasks_blocked()  # the probe woke, late
            nursery.cancel_scope.cancel()
    # It asked to wake one probe interval after it started, and woke 0.3 s after.
    assert lag.worst(trio.current_time()) == pytest.approx(0.3 - PROBE_INTERVAL)


async def test_the_link_breaker_outlives_a_far_end_that_is_down() -> None:
    port = free_port()  # nothing listens there yet
    breaker = LinkBreaker(port)
    with trio.fail_after(CEILING):
        async with trio.open_nursery() as nursery:
            proxy_port = await nursery.start(breaker.serve)
            refused = await trio.open_tcp_stream("127.0.0.1", proxy_port)
            assert await refused.receive_some() == b""  # closed: the far end is down
            listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")

            async def echo(stream: trio.SocketStream) -> None:
                async with stream:
                    async for chunk in stream:
                        await stream.send_all(chunk)

            await nursery.start(trio.serve_listeners, echo, listeners)
            async with await trio.open_tcp_stream("127.0.0.1", proxy_port) as passing:
                await passing.send_all(b"ping")
                assert await passing.receive_some() == b"ping"  # the breaker still serves
            nursery.cancel_scope.cancel()


# --- Redis restarted without persistence ---------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def own_redis(port: int) -> Iterator[subprocess.Popen[bytes]]:
    server = shutil.which("redis-server")
    assert server, "redis-server is not installed"
    process = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield process
    finally:
        process.kill()
        process.wait()


async def wait_up(url: str) -> None:
    while True:
        try:
            async with redis(url):
                return
        except ClusterUnavailable:
            await trio.sleep(0.05)


async def test_a_redis_restarted_empty_rebuilds_the_view_and_never_reissues_a_token() -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    seen: list[View] = []
    with trio.fail_after(CEILING):
        with own_redis(port):
            await wait_up(url)
            async with redis(url) as link:
                ring = member(link, "p", "a", interval=0.05, timeout=1.0)
                await ring.beat()
                leases = Leases(link, prefix="p", node_id="a", ttl=5.0)
                before = await leases.acquire("ch", floor=41)
                assert isinstance(before, Acquired) and before.token == 42
        with own_redis(port):  # the same port, nothing kept
            await wait_up(url)
            async with redis(url) as link, trio.open_nursery() as nursery:
                ring = member(link, "p", "a", interval=0.05, timeout=1.0)
                view = await nursery.start(ring.run, seen.append)
                assert view.members == ("a",)
                leases = Leases(link, prefix="p", node_id="a", ttl=5.0)
                # The node knows token 42 from its store's checkpoint.
                after = await leases.acquire("ch", floor=before.token)
                assert isinstance(after, Acquired) and after.token == 43
                nursery.cancel_scope.cancel()


async def test_a_redis_that_lost_its_data_grants_no_lease_until_the_old_ones_ran_out() -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    ttl = 1.0
    with trio.fail_after(CEILING):
        with own_redis(port):
            await wait_up(url)
            async with redis(url) as link:
                a = Leases(link, prefix="p", node_id="a", ttl=ttl)
                live = await a.acquire("live")
                frozen = await a.acquire("frozen")
                assert isinstance(live, Acquired) and isinstance(frozen, Acquired)
        with own_redis(port):  # reborn: nothing kept, the holders still run
            await wait_up(url)
            async with redis(url) as link:
                b = Leases(link, prefix="p", node_id="b", ttl=ttl)
                b.known = True  # b had seen the cluster too
                a = Leases(link, prefix="p", node_id="a", ttl=ttl)
                reborn_at = trio.current_time()
                refused = await b.acquire("frozen")
                assert isinstance(refused, Held) and "quarantine" in refused.holder
                assert 0 < refused.expires_in <= ttl
                # "a" is alive: its tenure of "live" is valid, it re-asserts the lease;
                # "a" is frozen as far as "frozen" goes: it renews nothing there.
                assert await a.renew([("live", live.token, True), ("gone", 99, False)]) == ["gone"]
                assert await a.holders(["live"]) == {"live": ("a", live.token)}
                while isinstance(answer := await b.acquire("frozen"), Held):
                    assert "quarantine" in answer.holder
                    assert await a.renew([("live", live.token, True)]) == []  # a lives on
                    await trio.sleep(0.05)
                # Not before a whole TTL: whatever "a" held had run out on its clock.
                assert trio.current_time() - reborn_at >= ttl - 0.1
                assert answer.token == 1  # a fresh counter: the store's floor lifts it
                assert isinstance(again := await b.acquire("live"), Held)
                assert again.holder == f"a|{live.token}"  # re-asserted: still a's


async def test_a_first_start_is_not_a_rebirth(prefix: str) -> None:
    with trio.fail_after(CEILING):
        async with redis() as link:
            a = Leases(link, prefix=prefix, node_id="a", ttl=30.0)
            ring = member(link, prefix, "a")
            await ring.beat()
            assert isinstance(await a.acquire("ch"), Acquired)  # no quarantine


async def test_what_redis_py_reports_to_its_loop_is_logged_and_the_link_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An asyncio library's report to its loop (redis-py's unclosed connections, a
    task's unretrieved error) is logged; trio-asyncio's own handler raised it."""
    with trio.fail_after(CEILING):
        async with redis() as link:
            link._loop.call_exception_handler(
                {"message": "Unclosed connection", "exception": ConnectionError("reset")}
            )
            await trio.lowlevel.checkpoint()  # where trio-asyncio's handler raised
            assert await link.call("PING") is True
    reports = [r.getMessage() for r in caplog.records if r.name == "switchboard.asyncio"]
    assert any("Unclosed connection: ConnectionError: reset" in r for r in reports)


async def test_an_unreachable_redis_is_a_clear_error() -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    with trio.fail_after(CEILING), pytest.raises(ClusterUnavailable) as raised:
        async with redis(url):
            pass
    assert "could not reach the cluster's Redis at 127.0.0.1" in str(raised.value)
    assert "hunter2" not in str(raised.value)
