"""What the cluster's earlier fixes left behind: the webhook path, expiries, a parked send.

- A node thawed past its lease (SIGSTOP, a long pause) hands no webhook to
  the channel's old link: another node may run the channel by then. Sends
  already look at the tenure (``_live_connection``, ``_fly_at_once``); the
  link a webhook is handed (``ChannelRef.connection``: the ops app's
  targets, a forwarded webhook's owner, a webhook that found its channel
  come here) did not.
- A send parked on such a lapsed tenure hears the channel's failure at once,
  as a send parked on a connect does; it waited out ``connect_wait``.
- A late answer to a caller that is gone leaves no reply stream without an
  expiry in Redis, even when the stream was lost since the owner last moved
  its expiry on.
- A channel's token counter does not stay in Redis for good once nobody
  takes its lease any more (a channel taken out of the catalog).

The channel tests run in virtual time; the Redis ones against a real Redis
(``SWITCHBOARD_TEST_REDIS``), each under a key prefix of its own, deleted
afterwards.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import trio
import trio.testing

from actors.channel import Tenure
from providers.base import Conflict, OutboundMessage, RateLimited
from providers.testing import FakeProvider
from runtime.cluster import open_cluster
from runtime.cluster.catalog import Catalog
from runtime.cluster.forwarding import Forwarding
from runtime.cluster.leases import Acquired, Leases
from runtime.config.model import ChannelSpec, StorageConfig
from runtime.store import open_store
from runtime.view import WebhookTarget, links_of
from runtime.webhooks import deliver
from tests.support import CEILING
from tests.test_channel_actor import GENEROUS, open_channel, settings
from tests.test_cluster_faults import THAWS, StoreRunner, _config
from tests.test_cluster_redis import CEILING as REAL_CEILING
from tests.test_cluster_redis import redis
from tests.test_cluster_streams_and_rebirth import Holding

# --- a node thawed past its lease, and a webhook ---------------------------------------------


async def test_a_thawed_node_hands_no_webhook_to_a_link_its_lapsed_tenure_forbids(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A node frozen (SIGSTOP) past its lease thaws as a webhook for the channel
    arrives, before trio has delivered the tenure's cancel to the connection:
    the webhook must not be handed to that link (another node may run the
    channel by now; the platform is answered 503 and delivers again). Today
    the channel's handle gives the old link to whoever asks for it (the ops
    app's targets, a forwarded webhook's owner), without the tenure check
    that sends make."""
    provider = FakeProvider(limits=GENEROUS)
    tenure = Tenure(trio.current_time() + 5.0, token=3)
    fed: list[bytes] = []

    async def feed_webhook(headers: Any, body: bytes) -> int:
        fed.append(body)
        return 200

    with trio.fail_after(CEILING):
        async with open_channel(provider, tenure=tenure) as channel:
            conn = await provider.wait_connected(1)
            conn.feed_webhook = feed_webhook  # type: ignore[attr-defined]  # a webhook link
            target = WebhookTarget(channel_id="ch", options={}, channel=channel)
            assert target.connection is conn  # live, within its tenure
            mock_clock.jump(20.0)  # frozen past the tenure, thawed: no trio step since
            link = target.connection  # what the webhook path hands the request to
            if link is not None:
                await deliver("telegram", link, "POST", {}, {}, b"update")
            assert fed == []  # the old link took it today
            assert links_of([target]).live == []
            mock_clock.autojump_threshold = 0  # the stop's own waits run out (virtual time)
    mock_clock.autojump_threshold = math.inf


# --- a send parked on a lapsed tenure, and the channel's failure -----------------------------

CONNECT_WAIT = 30.0  # the channel's connect_wait: what a parked send waited out


async def _fail_while_parked(clock: trio.testing.MockClock) -> tuple[str, float]:
    """Send a is on the platform and send b waits out a rate limit when the node
    freezes; it thaws past both its tenure and b's wait, and a is answered 409
    (another node holds the bot now): the channel fails. What did b hear, and
    how long after the failure?"""
    answer_a = trio.Event()

    async def platform_send(message: OutboundMessage) -> Any:
        if message.peer == "a":
            await answer_a.wait()
            raise Conflict("terminated by other getUpdates request")
        raise RateLimited("slow down", retry_after=8.0)  # b's first attempt

    provider = FakeProvider(limits=GENEROUS)
    tenure = Tenure(trio.current_time() + 5.0, token=3)
    heard: dict[str, tuple[str, float]] = {}
    b_heard = trio.Event()
    channel_settings = settings(connect_wait=CONNECT_WAIT)
    async with (
        open_channel(provider, channel_settings=channel_settings, tenure=tenure) as channel,
        trio.open_nursery() as nursery,
    ):
        conn = await provider.wait_connected(1)
        conn.send = platform_send  # type: ignore[method-assign]

        async def send(peer: str) -> None:
            message = OutboundMessage(peer=peer, text="hi", idempotency_key=peer)
            try:
                await channel.send(message, timeout=CEILING)
            except Exception as exc:
                heard[peer] = (type(exc).__name__, trio.current_time())
            else:
                heard[peer] = ("sent", trio.current_time())
            if peer == "b":
                b_heard.set()

        nursery.start_soon(send, "a")
        await trio.testing.wait_all_tasks_blocked()  # a is on the platform
        nursery.start_soon(send, "b")
        await trio.testing.wait_all_tasks_blocked()  # b waits out its rate limit
        clock.jump(20.0)  # frozen past the tenure (5 s) and b's wait (8 s), then thawed
        await trio.testing.wait_all_tasks_blocked()
        assert "b" not in heard  # b waits: for its tenure, or for a link
        clock.autojump_threshold = 0  # whatever b waits for now, it waits out (virtual time)
        failed_at = trio.current_time()
        answer_a.set()  # a hears 409: the channel fails
        await b_heard.wait()
        nursery.cancel_scope.cancel()
    clock.autojump_threshold = math.inf
    name, at = heard["b"]
    return name, at - failed_at


async def test_a_send_parked_on_a_lapsed_tenure_hears_the_channel_s_failure_at_once(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A node thawed past its lease has a send waiting for its tenure to come
    back (a renewal) when the channel fails (a send on the platform meanwhile
    is answered 409: another node holds the bot). The waiting send must hear
    the failure at once, as a send waiting for a connect does. Today it waits
    on the tenure alone, which nothing renews now: it waits out the whole
    connect_wait, then hears "did not connect" instead of the failure (in the
    thaws where it woke before the connection's cancel was delivered)."""
    for _ in range(THAWS):
        with trio.fail_after(CEILING):
            assert await _fail_while_parked(mock_clock) == ("ChannelFailed", 0.0)


# --- a late answer to a caller that is gone ----------------------------------------------------


async def test_a_reply_stream_made_again_by_a_late_answer_to_a_gone_caller_expires(
    prefix: str,
) -> None:
    """A caller is killed (for good) with a call in flight; meanwhile its reply
    stream was lost (evicted under maxmemory: a key with an expiry is what the
    volatile policies evict first; or Redis lost its data while the owner's
    handler ran). The owner's late answer makes the stream again: it must
    expire like every stream of a gone node id. Today the owner moves a reply
    stream's expiry on at most once per quarter of STREAM_KEEP (it had, for the
    caller's first call): the stream made again has none, and stays for good."""
    with trio.fail_after(REAL_CEILING):
        async with redis(within=2.0) as link, trio.open_nursery() as nursery:
            handler = Holding(2)
            owner = Forwarding(link, prefix=prefix, node_id="owner", handler=handler, block=0.2)
            await nursery.start(owner.run)
            caller = Forwarding(link, prefix=prefix, node_id="caller", handler=handler, block=0.2)
            async with trio.open_nursery() as caller_process:
                await caller_process.start(caller.run)
                assert await caller.call("owner", "send", "ch", {"n": 1}, timeout=20.0) == {
                    "ok": {"n": 1}
                }

                async def call() -> None:
                    await caller.call("owner", "send", "ch", {"n": 2}, timeout=20.0)

                caller_process.start_soon(call)
                await handler.came.wait()
                caller_process.cancel_scope.cancel()  # the caller is killed
            assert await link.call("DEL", caller.replies) == 1  # its reply stream is lost
            async with redis(within=REAL_CEILING) as watch:
                handler.release.set()  # the owner answers the gone caller
                found = await watch.call(
                    "XREAD", "BLOCK", int(REAL_CEILING * 500), "STREAMS", caller.replies, "0"
                )
                assert found, "the owner's answer never reached the caller's reply stream"
            assert await link.call("PTTL", caller.replies) > 0  # -1 today: kept for good
            nursery.cancel_scope.cancel()


# --- token counters of channels nobody runs any more -------------------------------------------


class Releasing(StoreRunner):
    """A stand-in node that says when ownership has given a channel's lease back."""

    def __init__(self, store: Any) -> None:
        super().__init__(store)
        self.given_back: dict[str, trio.Event] = {}

    def released(self, channel_id: str) -> None:
        self.given_back.setdefault(channel_id, trio.Event()).set()


async def test_a_channel_taken_out_of_the_catalog_leaves_no_token_counter_for_good(
    prefix: str,
) -> None:
    """An operator takes channel ch out of the catalog (a customer gone): the
    node that runs it stops it and gives its lease back, and nobody takes the lease again.
    Its token counter must leave Redis in time. Today ``<prefix>:token:ch`` has
    no expiry: every channel that ever ran keeps one in Redis for good."""
    spec = ChannelSpec(id="ch", provider="fake")
    config = attrs.evolve(
        _config(prefix), heartbeat_interval=0.2, member_timeout=1.0, lease_ttl=3.0
    )
    with trio.fail_after(REAL_CEILING):
        async with open_store(StorageConfig(backend="memory")) as store:
            runner = Releasing(store)
            async with open_cluster(
                config, node_id="a", store=store, runner=runner, file_specs=[spec]
            ) as cluster:
                await runner.started("ch")
                # Taken out on another node (an operator's stop_channel there).
                elsewhere = Catalog(store, cluster.link, prefix=prefix, file_specs=[])
                assert await elsewhere.remove("ch")
                await runner.given_back.setdefault("ch", trio.Event()).wait()
                assert "ch" in runner.stopped
                token_key = cluster.leases.token_key("ch")
                assert await cluster.link.call("GET", cluster.leases.lease_key("ch")) is None
                assert await cluster.link.call("PTTL", token_key) > 0  # -1 today


async def test_a_token_counter_raised_by_a_lease_re_asserted_after_a_rebirth_expires(
    prefix: str,
) -> None:
    """Redis lost its data while node a held ch; a's next renewal re-asserts its
    lease and raises the token counter to its token. That counter must expire
    too, like one an acquire made."""
    with trio.fail_after(REAL_CEILING):
        async with redis() as link:
            leases = Leases(link, prefix=prefix, node_id="a", ttl=5.0)
            acquired = await leases.acquire("ch")
            assert isinstance(acquired, Acquired)
            assert await link.call("PTTL", leases.token_key("ch")) > 0
            await link.call("DEL", *await link.call("KEYS", f"{prefix}:*"))  # Redis lost it all
            assert await leases.renew([("ch", acquired.token, True)]) == []  # re-asserted
            assert await link.call("GET", leases.token_key("ch")) == str(acquired.token).encode()
            assert await link.call("PTTL", leases.token_key("ch")) > 0  # -1 today
