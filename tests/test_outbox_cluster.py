"""Node.outbox on a node in a cluster: two nodes in process, real Redis, real time.

On a node in a cluster every outbox send goes the long way: ``Outbox.send``
runs ``node._route`` (``_cluster_send``) in a task of the node's, and the
send runs here or is forwarded to its channel's owner through Redis. Each
outcome must be what ``await node.send(...)`` gives in the same situation:
compared side by side, the same node, the same channel, the same moment.

Two nodes (``n1``, ``n2``) share one Redis (a key prefix of the test's own),
one SQLite store and one simulated platform, as in
``tests/test_console_cluster.py``. The platform can hold a channel's sends
(:class:`Held`) until the test lets them go: the test waits for what it
needs by polling state under ``fail_after``, never by sleeping a guess.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator, Awaitable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from actors import ChannelStatus
from providers.base import ChannelConfig, SendResult, SessionState
from providers.simulated import SimulatedConnection, SimulatedProvider
from runtime import (
    AskTimeout,
    KeyReused,
    MessageTooLong,
    Node,
    NodeDraining,
    Overloaded,
    Sent,
    UnknownChannel,
    open_node,
    parse_config,
)
from tests.test_cluster_redis import REDIS_URL, redis

from .support import all_outcomes as _all
from .support import record_outcome
from .support import sent_key as _key
from .support import sent_outcome as _outcome
from .support import until_moved as until
from .test_node_embedded import FAST, message

CEILING = 60.0  # real seconds per test; only a hang gets near it
CHANNELS = [f"c{i}" for i in range(8)]


class Held(SimulatedProvider):
    """The simulated platform, whose sends on a channel wait while it is held."""

    def __init__(self) -> None:
        super().__init__()
        self._gates: dict[str, trio.Event] = {}
        self.waiting: list[str] = []  # the keys of the sends held now

    def hold(self, channel_id: str) -> None:
        self._gates[channel_id] = trio.Event()

    def release(self, channel_id: str) -> None:
        self._gates.pop(channel_id).set()

    @asynccontextmanager
    async def open_connection(
        self, config: ChannelConfig, session: SessionState | None = None
    ) -> AsyncIterator[SimulatedConnection]:
        async with super().open_connection(config, session) as conn:
            send = conn.send

            async def held(msg: Any) -> SendResult:
                gate = self._gates.get(config.channel_id)
                if gate is not None:
                    self.waiting.append(msg.idempotency_key)
                    try:
                        await gate.wait()
                    finally:
                        self.waiting.remove(msg.idempotency_key)
                return await send(msg)

            conn.send = held  # type: ignore[method-assign]
            yield conn


def node_config(tmp_path: Path, prefix: str, node_id: str, **node: Any) -> Any:
    return parse_config(
        {
            "node": {"id": node_id, "drain_deadline": 2.0, "start_timeout": 5.0, **node},
            "ops": {"enabled": False},
            # One store for the cluster (its catalog, checkpoints and answers).
            "storage": {"backend": "sqlite", "path": str(tmp_path / "cluster.sqlite3")},
            "cluster": {
                "redis_url": REDIS_URL,
                "key_prefix": prefix,
                "heartbeat_interval": 0.2,
                "member_timeout": 1.0,
                "lease_ttl": 1.5,
                "settle_delay": 0.2,
                "move_cooldown": 0.0,
            },
            "providers": {"simulated": {"rate_limit": {"enabled": False}}},
            "channels": [{"id": c, "provider": "simulated"} for c in CHANNELS],
        }
    )


@attrs.define
class Pair:
    """Two nodes, the platform they share, and a channel each runs."""

    n1: Node
    n2: Node
    provider: Held
    mine: str  # run by n1
    theirs: str  # run by n2: n1 forwards its sends


@asynccontextmanager
async def pair(
    tmp_path: Path, n1: dict[str, Any] | None = None, n2: dict[str, Any] | None = None
) -> AsyncIterator[Pair]:
    """``n1`` and ``n2`` (each given its ``[node]`` settings), each running its share."""
    prefix = f"sbtest-{secrets.token_hex(4)}"
    provider = Held()
    try:
        async with AsyncExitStack() as stack:
            nodes = {}
            for node_id, settings in (("n1", n1), ("n2", n2)):
                config = node_config(tmp_path, prefix, node_id, **(settings or {}))
                nodes[node_id] = await stack.enter_async_context(
                    open_node(config, channel_defaults=FAST, providers={"simulated": provider})
                )
            placed = await _placed(nodes)
            yield Pair(
                nodes["n1"],
                nodes["n2"],
                provider,
                mine=next(c for c, owner in placed.items() if owner == "n1"),
                theirs=next(c for c, owner in placed.items() if owner == "n2"),
            )
    finally:
        async with redis() as link:
            keys = await link.call("KEYS", f"{prefix}:*")
            if keys:
                await link.call("DEL", *keys)


async def _placed(nodes: dict[str, Node]) -> dict[str, str]:
    """The owner of each channel, once each runs on its owner and n1 knows it
    (a node connects a channel only while it holds its lease)."""
    owners: dict[str, str] = {}

    def settled() -> bool:
        owners.clear()
        for node in nodes.values():
            assert node._cluster is not None
            if node._cluster.ownership.ring.members != tuple(sorted(nodes)):
                return False
            for snapshot in node.channels():
                if not snapshot.remote and snapshot.status is ChannelStatus.CONNECTED:
                    owners[snapshot.channel_id] = node.node_id
        n1 = nodes["n1"]
        return (
            sorted(owners) == CHANNELS
            and set(owners.values()) == set(nodes)
            and all(n1._runs_here(c) == (o == "n1") for c, o in owners.items())
        )

    await until(settled)
    cluster = nodes["n1"]._cluster
    assert cluster is not None
    holders = await cluster.holders(CHANNELS)
    assert {c: h[0] for c, h in holders.items()} == owners
    return dict(owners)


def _same_error(outbox_error: Any, send_error: Any, keys: tuple[str, str]) -> None:
    """The outbox's error is node.send's: its class, and its text but for the key
    (and the seconds left, which only real time decides)."""
    assert type(outbox_error) is type(send_error), (outbox_error, send_error)

    def text(error: Any, key: str) -> str:
        said = str(error).replace(key, "<key>")
        return re.sub(r"\d+(\.\d+)?(e-?\d+)?", "<n>", said)

    assert text(outbox_error, keys[0]) == text(send_error, keys[1])


def _forwarding(node: Node) -> int:
    return node._forwarding


# --- (1) a remote and a local channel: once each, in each peer's order -------------------------

COUNT, PEERS = 40, 4


async def _through_outbox(nodes: Pair) -> list[Sent]:
    """COUNT messages on each of n1's and n2's channels, to PEERS peers, through one
    outbox on n1, given alternately (``<channel>-<n>``, to peer ``p<n % PEERS>``)."""
    async with nodes.n1.outbox() as outbox:
        for i in range(COUNT):
            for channel in (nodes.theirs, nodes.mine):
                key = f"{channel}-{i}"
                outbox.send(channel, message(key, text=key, peer=f"p{i % PEERS}"))
        return await _all(outbox)


async def test_outbox_sends_on_a_remote_and_a_local_channel_go_once_each_as_node_send_s(
    tmp_path: Path,
) -> None:
    with trio.fail_after(CEILING):
        async with pair(tmp_path) as nodes:
            n1, provider = nodes.n1, nodes.provider
            outcomes = await _through_outbox(nodes)
            assert len(outcomes) == 2 * COUNT
            assert all(sent.ok for sent in outcomes), [s for s in outcomes if not s.ok][:3]
            by_key = {_key(sent): sent for sent in outcomes}
            assert len(by_key) == 2 * COUNT
            assert len({sent.result.platform_message_id for sent in outcomes}) == 2 * COUNT  # type: ignore[union-attr]
            # Each delivered once, on its channel, with the result the outbox gave.
            assert provider.statistics().duplicates == 0
            records = {r.idempotency_key: r for r in provider.sent}
            assert len(provider.sent) == 2 * COUNT and sorted(records) == sorted(by_key)
            for key, sent in by_key.items():
                assert records[key].platform_message_id == sent.result.platform_message_id  # type: ignore[union-attr]
                assert records[key].channel_id == sent.channel_id
            # What node.send gives for each key (answered from the owner's memory).
            for sent in outcomes:
                assert await n1.send(sent.channel_id, sent.message) == sent.result  # type: ignore[arg-type]
            assert len(provider.sent) == 2 * COUNT
            assert n1.statistics().sends_in_flight == 0 and _forwarding(n1) == 0
            assert nodes.n2.statistics().sends_in_flight == 0


async def test_outbox_sends_on_a_remote_and_a_local_channel_keep_each_peer_s_order(
    tmp_path: Path,
) -> None:
    """On a node alone, an outbox's sends reach their channel in the order they were
    given (``Outbox.send`` hands each to the channel at once: tests/test_outbox.py),
    so each peer's messages are delivered in that order. On a node in a cluster
    each goes the long way, in a task of its own (``_send_in_task``): the tasks
    spawned by one loop of sends start in the order trio's scheduler runs them
    (a batch reversed half the time; shuffled under pytest-trio), so they reach
    the channel, here or through Redis, in no set order; the owner then handles
    each forwarded request in a task of its own too. Fails: each peer's
    messages arrive scrambled, on the node's own channel as on the remote one."""
    with trio.fail_after(CEILING):
        async with pair(tmp_path) as nodes:
            outcomes = await _through_outbox(nodes)
            assert all(sent.ok for sent in outcomes), [s for s in outcomes if not s.ok][:3]
            delivered = [(r.channel_id, r.peer, r.idempotency_key) for r in nodes.provider.sent]
            orders = {}
            for channel in (nodes.theirs, nodes.mine):
                for peer in range(PEERS):
                    wanted = [f"{channel}-{i}" for i in range(COUNT) if i % PEERS == peer]
                    got = [k for c, p, k in delivered if c == channel and p == f"p{peer}"]
                    orders[(channel, peer)] = got == wanted or got
            assert all(kept is True for kept in orders.values()), (
                f"theirs={nodes.theirs}, mine={nodes.mine}: {orders}"
            )


# --- (2) what refuses a send comes as its Sent: node.send's error --------------------------------


async def test_an_unknown_channel_comes_as_the_sent_s_error_as_node_send_raises(
    tmp_path: Path,
) -> None:
    with trio.fail_after(CEILING):
        async with pair(tmp_path) as nodes:
            n1 = nodes.n1
            with pytest.raises(UnknownChannel) as raised:
                await n1.send("no-such-channel", message("u1"))
            async with n1.outbox() as outbox:
                outbox.send("no-such-channel", message("u2"))  # (in a cluster: not raised here)
                (sent,) = await _all(outbox)
            assert sent.channel_id == "no-such-channel" and sent.result is None
            _same_error(sent.error, raised.value, ("u2", "u1"))
            assert nodes.provider.sent == []
            assert n1.statistics().sends_in_flight == 0 and _forwarding(n1) == 0


async def test_a_text_too_long_refused_by_the_owner_comes_as_node_send_raises_it(
    tmp_path: Path,
) -> None:
    long = "x" * 5_000  # past the platform's 4096
    with trio.fail_after(CEILING):
        async with pair(tmp_path) as nodes:
            n1 = nodes.n1
            for channel in (nodes.theirs, nodes.mine):
                with pytest.raises(MessageTooLong) as raised:
                    await n1.send(channel, message(f"{channel}-long-1", text=long))
                async with n1.outbox() as outbox:
                    outbox.send(channel, message(f"{channel}-long-2", text=long))
                    (sent,) = await _all(outbox)
                _same_error(sent.error, raised.value, (f"{channel}-long-2", f"{channel}-long-1"))
            assert nodes.provider.sent == []
            assert n1.statistics().sends_in_flight == 0 and _forwarding(n1) == 0


async def test_the_owner_s_overload_comes_as_the_sent_s_error_as_node_send_raises(
    tmp_path: Path,
) -> None:
    # n2 holds at most 2 sends: the 2 held there fill it, and refuse the next one
    # n1 forwards; n1's own bounds are far.
    with trio.fail_after(CEILING):
        async with pair(tmp_path, n2={"max_sends_in_flight": 2}) as nodes:
            n1, n2, provider, theirs = nodes.n1, nodes.n2, nodes.provider, nodes.theirs
            provider.hold(theirs)
            held: dict[str, Any] = {}
            async with trio.open_nursery() as nursery:
                for key in ("h1", "h2"):
                    send = n1.send(theirs, message(key, peer=key))  # (one peer's go one by one)
                    nursery.start_soon(record_outcome, held, key, send)
                await until(lambda: len(provider.waiting) == 2)
                with pytest.raises(Overloaded) as raised:
                    await n1.send(theirs, message("over-1"))
                async with n1.outbox() as outbox:
                    outbox.send(theirs, message("over-2"))
                    (sent,) = await _all(outbox)
                _same_error(sent.error, raised.value, ("over-2", "over-1"))
                assert isinstance(sent.error, Overloaded)
                assert sent.error.scope == raised.value.scope
                assert sent.error.retry_after == raised.value.retry_after
                assert n2.statistics().sends_in_flight == 2
                provider.release(theirs)
            assert all(isinstance(result, SendResult) for result in held.values()), held
            assert sorted(r.idempotency_key for r in provider.sent) == ["h1", "h2"]
            assert n1.statistics().sends_in_flight == 0 and _forwarding(n1) == 0


async def test_the_sender_s_own_bound_on_forwards_comes_as_the_sent_s_error_as_node_send_raises(
    tmp_path: Path,
) -> None:
    # n1 forwards at most 2 sends of one channel at once (each waits on n1's loop for
    # its owner's answer): the third is refused on n1, before it leaves.
    with trio.fail_after(CEILING):
        async with pair(tmp_path, n1={"max_channel_sends": 2}) as nodes:
            n1, n2, provider, theirs = nodes.n1, nodes.n2, nodes.provider, nodes.theirs
            provider.hold(theirs)
            held: dict[str, Any] = {}
            async with trio.open_nursery() as nursery:
                for key in ("h1", "h2"):
                    send = n1.send(theirs, message(key, peer=key))
                    nursery.start_soon(record_outcome, held, key, send)
                await until(lambda: len(provider.waiting) == 2)
                with pytest.raises(Overloaded) as raised:
                    await n1.send(theirs, message("over-1", peer="over-1"))
                async with n1.outbox() as outbox:
                    outbox.send(theirs, message("over-2", peer="over-2"))
                    (sent,) = await _all(outbox)
                _same_error(sent.error, raised.value, ("over-2", "over-1"))
                assert isinstance(sent.error, Overloaded)
                assert (sent.error.scope, sent.error.retry_after) == (
                    raised.value.scope,
                    raised.value.retry_after,
                )
                assert n2.statistics().sends_in_flight == 2  # neither left n1
                provider.release(theirs)
            assert all(isinstance(result, SendResult) for result in held.values()), held
            assert sorted(r.idempotency_key for r in provider.sent) == ["h1", "h2"]
            assert n1.statistics().sends_in_flight == 0 and _forwarding(n1) == 0


async def test_a_repeated_key_on_a_remote_channel_is_answered_as_node_send_answers_it(
    tmp_path: Path,
) -> None:
    """Answered already: the first result; on its way: the same result, sent once;
    reused for another message: ``KeyReused``, nothing sent (node.send's each)."""
    with trio.fail_after(CEILING):
        async with pair(tmp_path) as nodes:
            n1, provider, theirs = nodes.n1, nodes.provider, nodes.theirs
            first = await n1.send(theirs, message("done"))
            with pytest.raises(KeyReused) as reused:
                await n1.send(theirs, message("done", text="another text"))
            provider.hold(theirs)
            async with n1.outbox() as outbox:
                outbox.send(theirs, message("done"))
                outbox.send(theirs, message("twice", peer="q"))
                outbox.send(theirs, message("twice", peer="q"))
                outbox.send(theirs, message("done", text="another text"))
                await until(lambda: provider.waiting == ["twice"])
                provider.release(theirs)
                outcomes = await _all(outbox)
            by_key: dict[str, list[Sent]] = {}
            for sent in outcomes:
                by_key.setdefault(_key(sent), []).append(sent)
            done = [sent for sent in by_key["done"] if sent.ok]
            assert [sent.result for sent in done] == [first]
            (refused,) = [sent for sent in by_key["done"] if not sent.ok]
            _same_error(refused.error, reused.value, ("done", "done"))
            twice = by_key["twice"]
            assert len(twice) == 2 and all(sent.ok for sent in twice)
            assert twice[0].result == twice[1].result
            assert [r.idempotency_key for r in provider.sent] == ["done", "twice"]
            assert provider.statistics().duplicates == 0
            assert n1.statistics().sends_in_flight == 0 and _forwarding(n1) == 0


@pytest.mark.parametrize("where", ["theirs", "mine"])
async def test_a_send_past_its_timeout_fails_as_node_send_does(tmp_path: Path, where: str) -> None:
    with trio.fail_after(CEILING):
        async with pair(tmp_path) as nodes:
            n1, n2, provider = nodes.n1, nodes.n2, nodes.provider
            channel = nodes.theirs if where == "theirs" else nodes.mine
            provider.hold(channel)
            with pytest.raises(AskTimeout) as raised:
                await n1.send(channel, message("slow-1", peer="p1"), timeout=0.5)
            async with n1.outbox(timeout=0.5) as outbox:
                outbox.send(channel, message("slow-2", peer="p2"))
                (sent,) = await _all(outbox)
            _same_error(sent.error, raised.value, ("slow-2", "slow-1"))
            assert n1.statistics().sends_in_flight == 0 and _forwarding(n1) == 0
            # Let go: each is sent, or not, as the other was.
            provider.release(channel)
            await until(
                lambda: (
                    n1.statistics().sends_in_flight == 0
                    and n2.statistics().sends_in_flight == 0
                    and not provider.waiting
                )
            )
            # (A send that goes after its caller's deadline is the channel's business:
            # both were given up the same way, so both go or neither does.)
            await n1.send(channel, message("after-1", peer="p1"))
            await n1.send(channel, message("after-2", peer="p2"))
            sent_keys = {r.idempotency_key for r in provider.sent}
            assert ("slow-1" in sent_keys) == ("slow-2" in sent_keys), sent_keys


# --- (3) the block waits for every forwarded send; left under an error, they go on ---------------


async def test_the_block_ends_only_once_every_forwarded_send_ended(tmp_path: Path) -> None:
    with trio.fail_after(CEILING):
        async with pair(tmp_path) as nodes:
            n1, provider, theirs = nodes.n1, nodes.provider, nodes.theirs
            provider.hold(theirs)
            heard: list[Sent] = []
            ended = trio.Event()
            out: list[Any] = []

            async def block() -> None:
                async with n1.outbox(on_sent=heard.append) as outbox:
                    out.append(outbox)
                    for i in range(3):
                        outbox.send(theirs, message(f"f{i}", peer=f"p{i}"))
                    outbox.send(nodes.mine, message("here", peer="p9"))
                ended.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(block)
                await until(lambda: len(provider.waiting) == 3 and len(heard) == 1)
                assert not ended.is_set()
                assert out[0].outstanding == 3
                assert _forwarding(n1) == 3 and n1.statistics().sends_in_flight == 3
                assert [_key(sent) for sent in heard] == ["here"] and heard[0].ok
                provider.release(theirs)
                await ended.wait()
                # Ended only with every forwarded send: each outcome heard by then.
                assert sorted(_key(sent) for sent in heard) == ["f0", "f1", "f2", "here"]
                assert all(sent.ok for sent in heard), heard
                assert _forwarding(n1) == 0 and n1.statistics().sends_in_flight == 0
            assert sorted(r.idempotency_key for r in provider.sent) == ["f0", "f1", "f2", "here"]


async def test_a_block_left_under_an_error_leaves_its_forwarded_sends_going(
    tmp_path: Path,
) -> None:
    with trio.fail_after(CEILING):
        async with pair(tmp_path) as nodes:
            n1, n2, provider, theirs = nodes.n1, nodes.n2, nodes.provider, nodes.theirs
            provider.hold(theirs)
            heard: list[Sent] = []
            with pytest.raises(KeyError):
                async with n1.outbox(on_sent=heard.append) as outbox:
                    for i in range(3):
                        outbox.send(theirs, message(f"f{i}", peer=f"p{i}"))
                    await until(lambda: len(provider.waiting) == 3)
                    raise KeyError("the caller's own error")
            # The block is over; the sends are still out, held by both nodes.
            assert _forwarding(n1) == 3 and n1.statistics().sends_in_flight == 3
            assert n2.statistics().sends_in_flight == 3
            provider.release(theirs)
            await until(lambda: n1.statistics().sends_in_flight == 0)
            assert _forwarding(n1) == 0
            assert sorted(r.idempotency_key for r in provider.sent) == ["f0", "f1", "f2"]
            assert heard == []  # nobody listens any more
            # Sent once each: node.send of a key is answered from the owner's memory.
            for i in range(3):
                again = await n1.send(theirs, message(f"f{i}", peer=f"p{i}"))
                assert again.platform_message_id == next(
                    r.platform_message_id for r in provider.sent if r.idempotency_key == f"f{i}"
                )
            assert provider.statistics().duplicates == 0


# --- (4) the drain of the sending node while forwarded sends are out -----------------------------


def _shape(heard: dict[str, Any]) -> dict[str, str]:
    return {
        key: "ok" if isinstance(value, SendResult) else type(value).__name__
        for key, value in heard.items()
    }


@pytest.mark.parametrize("released", ["during the drain", "after the drain"])
@pytest.mark.parametrize("where", ["theirs", "mine"])
async def test_a_drain_of_the_sender_ends_its_outbox_sends_as_node_send_s(
    tmp_path: Path, where: str, released: str
) -> None:
    """node.send's and the outbox's sends on one channel, side by side, held by the
    platform while n1 drains (``theirs``: forwarded to n2; ``mine``: n1 runs it, and
    its drain hands it to n2): each outbox send ends as the node.send beside it,
    and a send started during the drain or after it too."""
    with trio.fail_after(CEILING):
        async with pair(tmp_path) as nodes:
            n1, provider = nodes.n1, nodes.provider
            channel = nodes.theirs if where == "theirs" else nodes.mine
            provider.hold(channel)
            by_send: dict[str, Any] = {}
            by_outbox: dict[str, Any] = {}
            reports: list[Any] = []

            def on_sent(sent: Sent) -> None:
                by_outbox[_key(sent)] = _outcome(sent)

            async def drain() -> None:
                reports.append(await n1.drain())

            def via_send(key: str) -> Awaitable[Any]:
                return n1.send(channel, message(key, peer=key), timeout=10.0)

            async with n1.outbox(on_sent=on_sent, timeout=10.0) as outbox:
                async with trio.open_nursery() as nursery:

                    def both(key: str) -> None:
                        nursery.start_soon(
                            record_outcome, by_send, f"s-{key}", via_send(f"s-{key}")
                        )
                        outbox.send(channel, message(f"o-{key}", peer=f"o-{key}"))

                    for i in range(3):
                        both(f"before-{i}")
                    await until(lambda: len(provider.waiting) == 6)
                    if where == "theirs":
                        assert _forwarding(n1) == 6
                    nursery.start_soon(drain)
                    await until(lambda: n1.draining)
                    both("during-0")  # n1 hands its channels off: still routed
                    if where == "theirs":
                        await until(lambda: len(provider.waiting) == 8)
                        assert _forwarding(n1) == 8
                    if released == "during the drain":
                        provider.release(channel)
                    await until(lambda: bool(reports))
                    # Drained: refused at once, by both.
                    with pytest.raises(NodeDraining) as refused:
                        await via_send("s-after-0")
                    with pytest.raises(NodeDraining) as refused_here:
                        outbox.send(channel, message("o-after-0", peer="o-after-0"))
                    _same_error(refused_here.value, refused.value, ("o-after-0", "s-after-0"))
                    if released == "after the drain":
                        provider.release(channel)
                outbox.close()
            expected = {"o-" + key[2:]: shape for key, shape in _shape(by_send).items()}
            assert _shape(by_outbox) == expected, _shape(by_send)
            for key, value in by_outbox.items():
                if not isinstance(value, SendResult):
                    _same_error(value, by_send["s-" + key[2:]], (key, "s-" + key[2:]))
            assert _forwarding(n1) == 0 and n1.statistics().sends_in_flight == 0
            sent_keys = {r.idempotency_key for r in provider.sent}
            assert {k for k in sent_keys if k.startswith("o-")} == {
                "o-" + k[2:] for k in sent_keys if k.startswith("s-")
            }
            kept = {item.message.idempotency_key for item in reports[0].kept}
            assert {k for k in kept if k.startswith("o-")} == {
                "o-" + k[2:] for k in kept if k.startswith("s-")
            }
