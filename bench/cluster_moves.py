"""The cluster under a scripted life: a node joins, one drains, one is killed and restarted.

The rig of :mod:`bench.cluster_rig` (real ``switchboard run`` nodes, one
emulator per platform, one Redis, PostgreSQL) runs ``channels`` channels
(mostly websocket, some Discord and Telegram bots) on ``nodes`` nodes with
one more configured and not started. A sustained send load goes to random
live nodes' message API (so about (N-1)/N of it is forwarded), users write
to the Discord and Telegram bots, and the script runs::

    join     the standby node starts: the ring gives it a share
    drain    n1 gets SIGTERM: it leaves and hands its channels off
    kill     n2 gets SIGKILL: its leases expire and the others take over
    restart  n2 starts again and takes its share back

After each event the run waits until every channel is held where the
ring of the live nodes puts it and every persistent channel (websocket,
Discord) holds exactly one connection.

Judged by the emulators and the store: every send the API accepted is at
the platform (lost must be 0); the platform's duplicate counter (a send
repeated across a move, deduplicated by its key); every user message is in
the store (missed must be 0); Discord identifies spent by the planned moves
(join, drain: 0 means every moved session resumed); overlaps (must be 0).
"""

from __future__ import annotations

import contextlib
import random
import signal
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Final

import attrs
import httpx
import trio

from runtime.cluster.placement import HashRing
from runtime.cluster.redis import ClusterUnavailable, RedisLink, open_redis

from .cluster_rig import API_TOKEN, ClusterRig, RigParams, open_cluster_rig, stored_inbound
from .report import Figure, Series, Target, Verdict, percentile
from .scenario import RunContext, ScenarioError

__all__ = ["MoveParams", "failure_kinds", "move_figures", "move_run", "move_series"]

EVENTS: Final = ("join", "drain", "kill", "restart")
SETTLE_WITHIN: Final = 300.0  # seconds an event may take to settle before the run fails
POLL: Final = 0.25  # seconds between looks at Redis and the emulators
SEND_TIMEOUT: Final = 60.0  # seconds a client waits for one send
USERS_EVERY: Final = 0.5  # seconds between user messages to the bots
STORE_WAIT: Final = 60.0  # seconds the last user messages may take to reach the store
TELEGRAM_CHAT: Final = 1000  # the chat users write to the Telegram bots from


@attrs.frozen(kw_only=True)
class MoveParams:
    """What the moves run does (from the cluster scenario's parameters)."""

    nodes: int
    channels: int
    rate: float
    warmup: float
    lease_ttl: float
    seed: int
    workdir: Path
    latency: float = 0.0  # seconds every platform holds its answers back


@attrs.define
class _Send:
    at: float  # seconds since the load began
    node: str
    forwarded: bool
    key: str
    latency: float | None = None  # seconds, when accepted
    error: str | None = None


@attrs.define
class _Event:
    name: str
    at: float  # seconds since the load began
    moved: dict[str, float] = attrs.Factory(dict)  # channel -> seconds until connected again
    settled: float | None = None  # seconds until all held by the ring and connected
    identifies: int = 0
    resumes: int = 0


@attrs.define
class _Sample:
    at: float
    owned: dict[str, int]
    connected: int


class _Run:
    def __init__(self, rig: ClusterRig, p: MoveParams, link: RedisLink) -> None:
        self.rig = rig
        self.link = link
        self.p = p
        self.rng = random.Random(p.seed)
        self.t0 = trio.current_time()
        self.wall0 = time.time()
        self.sends: list[_Send] = []
        self.events: list[_Event] = []
        self.samples: list[_Sample] = []
        self.holders: dict[str, str] = {}
        self.links: set[str] = set()  # persistent channels with one platform connection
        self.ready: set[str] = set(rig.processes)  # the nodes the load goes to
        self.injected: set[tuple[str, str]] = set()
        self.stop = trio.Event()
        self.ws_ids = [c for c in rig.channel_ids() if c.startswith("ws-")]
        self.tokens = {c: rig.token_of(c) for c in rig.channel_ids()}

    def now(self) -> float:
        return trio.current_time() - self.t0

    def live(self) -> list[str]:
        """The nodes running (those the ring places channels on)."""
        return sorted(self.rig.processes)

    async def until_ready(self, node: str) -> None:
        """Offer load to ``node`` once its ``/readyz`` says so (as a load balancer does)."""
        async with httpx.AsyncClient(timeout=5.0) as client:
            while node in self.rig.processes:
                with contextlib.suppress(httpx.HTTPError):
                    answer = await client.get(self.rig.ops_urls[node] + "/readyz")
                    if answer.status_code == 200:
                        self.ready.add(node)
                        return
                await trio.sleep(POLL)

    def linked(self, channel: str) -> bool:
        """Whether a persistent channel held exactly one platform connection at the
        last look."""
        if channel.startswith(("ws-", "dc-")):
            return channel in self.links
        return True  # Telegram polls: held is all there is to see

    # --- the load ------------------------------------------------------------------------

    async def send_load(self) -> None:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
        headers = {"Authorization": f"Bearer {API_TOKEN}"}
        async with (
            httpx.AsyncClient(headers=headers, timeout=SEND_TIMEOUT, limits=limits) as client,
            trio.open_nursery() as nursery,
        ):
            n = 0
            next_at = trio.current_time()
            while not self.stop.is_set():
                next_at += 1.0 / self.p.rate
                await trio.sleep_until(next_at)
                nursery.start_soon(self.one_send, client, n)
                n += 1

    async def one_send(self, client: httpx.AsyncClient, n: int) -> None:
        channel = self.rng.choice(self.ws_ids)
        node = self.rng.choice(sorted(self.ready))
        send = _Send(
            at=self.now(),
            node=node,
            forwarded=self.holders.get(channel) not in (None, node),
            key=f"load-{n}",
        )
        self.sends.append(send)
        body = {"peer": "load", "text": f"m{n}", "idempotency_key": send.key}
        url = f"{self.rig.ops_urls[node]}/v1/channels/{channel}/messages"
        started = trio.current_time()
        try:
            answer = await client.post(url, json=body)
        except httpx.HTTPError as exc:
            send.error = f"{type(exc).__name__} (node {node})"
            return
        if answer.status_code == 200:
            send.latency = trio.current_time() - started
        else:
            send.error = f"HTTP {answer.status_code}: {answer.text[:200]}"

    async def users(self) -> None:
        """Users write to every Discord bot (one guild message) and each Telegram bot."""
        p = self.rig.params
        n = 0
        while not self.stop.is_set():
            if p.discord:
                made = await self.rig.discord.inject(channel_id="42", content=f"u{n}")
                self.injected |= {(f"dc-{i:04d}", str(made["id"])) for i in range(p.discord)}
            for i in range(p.telegram):
                channel = f"tg-{i:04d}"
                made = await self.rig.telegram.inject(
                    chat_id=TELEGRAM_CHAT, text=f"u{n}", token=self.tokens[channel]
                )
                self.injected.add((channel, f"{TELEGRAM_CHAT}:{made['message_id']}"))
            n += 1
            await trio.sleep(USERS_EVERY)

    async def look(self) -> None:
        """Read the holders again (kept as they were if Redis is slow to answer), and
        which channels the platforms see connected."""
        with contextlib.suppress(ClusterUnavailable):
            self.holders = await self.rig.holders(self.link)
        self.links = await self.rig.linked()

    async def watch(self) -> None:
        """Holders and connections every POLL; a sample for the plots every second."""
        last_sample = -1.0
        while not self.stop.is_set():
            await self.look()
            if self.now() - last_sample >= 1.0:
                last_sample = self.now()
                owned: dict[str, int] = defaultdict(int)
                for node in self.holders.values():
                    owned[node] += 1
                connected = sum(self.linked(c) for c in self.holders)
                self.samples.append(_Sample(at=last_sample, owned=dict(owned), connected=connected))
            await trio.sleep(POLL)

    # --- the script ----------------------------------------------------------------------

    def unsettled(self) -> dict[str, list[str]]:
        """The channels not yet where the ring of the live nodes puts them, or not linked."""
        ring = HashRing(self.live())
        channels = self.rig.channel_ids()
        return {
            "misplaced": [c for c in channels if self.holders.get(c) != ring.owner(c)],
            "unlinked": [c for c in channels if not self.linked(c)],
        }

    def settled(self) -> bool:
        return not any(self.unsettled().values())

    async def too_slow(self, what: str) -> ScenarioError:
        left = self.unsettled()
        shown = {
            kind: f"{len(ids)} (e.g. {', '.join(f'{c}@{self.holders.get(c)}' for c in ids[:5])})"
            for kind, ids in left.items()
        }
        unlinked = await self.rig.diagnose(left["unlinked"], since=self.wall0, shown=10)
        return ScenarioError(
            f"{what} did not settle within {SETTLE_WITHIN:g} s: {shown}; live nodes "
            f"{self.live()}; unlinked: {unlinked}"
        )

    async def event(self, name: str, nursery: trio.Nursery) -> _Event:
        before = dict(self.holders)
        discord = await self.rig.discord.stats()
        identified, resumed = discord.get("identify", 0), discord.get("resume", 0)
        event = _Event(name=name, at=self.now())
        self.events.append(event)
        if name in ("join", "restart"):
            node = self.rig.node_ids[-1] if name == "join" else "n2"
            await self.rig.start_node(node)
            nursery.start_soon(self.until_ready, node)
        else:
            node = "n1" if name == "drain" else "n2"
            self.ready.discard(node)  # the load balancer stops sending there first
            await self.rig.kill_node(node, signal.SIGTERM if name == "drain" else signal.SIGKILL)
        with trio.move_on_after(SETTLE_WITHIN) as waited:
            while True:
                now = self.now()
                for channel, node in self.holders.items():
                    if (
                        node != before.get(channel)
                        and channel not in event.moved
                        and self.linked(channel)
                    ):
                        event.moved[channel] = now - event.at
                if self.settled():
                    break
                await trio.sleep(POLL)
        if waited.cancelled_caught:
            raise await self.too_slow(f"the {name}")
        event.settled = self.now() - event.at
        # A channel that left and came back to its first node moved too; one whose
        # holder is unchanged and never left is not counted.
        event.moved = {c: t for c, t in event.moved.items() if self.holders.get(c) != before.get(c)}
        discord = await self.rig.discord.stats()
        event.identifies = discord.get("identify", 0) - identified
        event.resumes = discord.get("resume", 0) - resumed
        return event

    async def script(self, ctx: RunContext, nursery: trio.Nursery) -> None:
        await trio.sleep(self.p.warmup)
        for i, name in enumerate(EVENTS):
            event = await self.event(name, nursery)
            ctx.progress.update(
                i + 1, last=f"{name}: {len(event.moved)} moved, settled in {event.settled:.1f} s"
            )
            await trio.sleep(self.p.warmup)
        self.stop.set()


async def move_run(p: MoveParams, ctx: RunContext) -> dict[str, Any]:
    """Run the script; the raw outcome for :func:`move_figures` and :func:`move_series`."""
    discord = max(2, p.channels // 30)
    telegram = max(2, p.channels // 30)
    rig_params = RigParams(
        nodes=p.nodes,
        standby=1,
        websocket=p.channels - discord - telegram,
        telegram=telegram,
        discord=discord,
        lease_ttl=p.lease_ttl,
        member_timeout=p.lease_ttl * 3 / 4,
        ops=True,
        breakers=False,  # no link faults here: the nodes reach Redis directly
        freezes=False,  # nor frozen nodes: the platforms heartbeat at their own pace
        # The drain is a planned handoff of every channel the node holds:
        # batches of max_moves (64), about a second each on this rig.
        drain_deadline=max(3.0, p.channels / p.nodes / 64 * 1.5),
        seed=p.seed,
        workdir=p.workdir,
        latency=p.latency,
    )
    ctx.progress.phase(
        f"moves: {p.nodes} nodes + 1 joining, {p.channels:,} channels, {p.rate:g} sends/s",
        total=len(EVENTS),
        unit="events",
    )
    async with (
        open_cluster_rig(rig_params) as rig,
        open_redis(f"redis://127.0.0.1:{rig.redis_port}/0", timeout=30.0) as link,
    ):
        run = _Run(rig, p, link)
        placed = trio.current_time()
        with trio.move_on_after(SETTLE_WITHIN) as waited:
            while not run.settled():
                await run.look()
                await trio.sleep(POLL)
        if waited.cancelled_caught:
            raise await run.too_slow("the start")
        placed = trio.current_time() - placed
        duplicates_before = (await rig.websocket.stats()).get("duplicates", 0)
        started = time.perf_counter()
        platforms_cpu = rig.websocket.cpu_seconds() or 0.0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run.watch)
            nursery.start_soon(run.users)
            nursery.start_soon(run.send_load)
            await run.script(ctx, nursery)
        elapsed = time.perf_counter() - started
        platforms_cpu = (rig.websocket.cpu_seconds() or 0.0) - platforms_cpu
        accepted = {s.key for s in run.sends if s.latency is not None}
        at_platform = {m["id"] for m in await rig.websocket.sent()}
        stored: set[tuple[str, str]] = set()
        with trio.move_on_after(STORE_WAIT):  # written behind: give the store its interval
            while True:
                stored = await stored_inbound(rig.params.pg_dsn, rig.schema)
                if run.injected <= stored:
                    break
                await trio.sleep(1.0)
        return {
            "run": run,
            "elapsed": elapsed,
            "startup": rig.startup,
            "placed": placed,
            "platforms_cpu": platforms_cpu / elapsed,  # share of a core, the emulators' process
            "lost": len(accepted - at_platform),
            "platform_duplicates": (await rig.websocket.stats()).get("duplicates", 0)
            - duplicates_before,
            "missed": len(run.injected - stored),
            "missed_examples": sorted(run.injected - stored)[:5],
            "injected": len(run.injected),
            "overlaps": await rig.overlaps(),
            "overlap_examples": await rig.overlap_examples(),
            "final_owned": _owned(run.holders),
        }


def _owned(holders: dict[str, str]) -> dict[str, int]:
    owned: dict[str, int] = defaultdict(int)
    for node in holders.values():
        owned[node] += 1
    return dict(owned)


def _ms(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values`` seconds, in ms (0 for none)."""
    return percentile(sorted(values), q) * 1000 if values else 0.0


def _versus_owner(q: float, forwarded: list[float], local: list[float]) -> Figure:
    """Forwarded-send latency at ``q`` beside sends made on the owner itself."""
    value, baseline = _ms(forwarded, q), _ms(local, q)
    return Figure(
        name=f"moves_forwarded_p{q:g}",
        label=f"forwarded send latency p{q:g}",
        unit="ms",
        value=value,
        baseline=baseline,
        baseline_label="sends made on the owner, same run",
        ratio=value / baseline if baseline else None,
        better="lower",
        samples=[value],
        baseline_samples=[baseline],
        target=None,
        verdict=Verdict.NONE,
    )


def failure_kinds(outcome: dict[str, Any]) -> dict[str, int]:
    """The failed sends by what they met (the text before any detail)."""
    run: _Run = outcome["run"]
    kinds: dict[str, int] = defaultdict(int)
    for send in run.sends:
        if send.error is not None:
            kinds[send.error.split(":")[0]] += 1
    return dict(kinds)


def move_figures(outcome: dict[str, Any]) -> list[Figure]:
    run: _Run = outcome["run"]
    done = [s for s in run.sends if s.latency is not None]
    forwarded = [s.latency for s in done if s.forwarded and s.latency is not None]
    local = [s.latency for s in done if not s.forwarded and s.latency is not None]
    failed = [s for s in run.sends if s.error is not None]
    owned = outcome["final_owned"]
    figures = [
        Figure.single(
            name="moves_delivered_rate",
            label="sends accepted per second through the run",
            unit="msgs/s",
            value=len(done) / outcome["elapsed"],
            better="higher",
        ),
        _versus_owner(50, forwarded, local),
        _versus_owner(99, forwarded, local),
        Figure.single(
            name="moves_lost",
            label="sends accepted and not at the platform",
            unit="msgs",
            value=float(outcome["lost"]),
            better="lower",
            target=Target(applies_to="value", op="<=", threshold=0.0, text="0"),
        ),
        Figure.single(
            name="moves_failed_sends",
            label="sends refused or failed (a killed node's own connections among them)",
            unit="msgs",
            value=float(len(failed)),
            better="lower",
        ),
        Figure.single(
            name="moves_platform_duplicates",
            label="sends repeated at the platform (deduplicated there by key)",
            unit="msgs",
            value=float(outcome["platform_duplicates"]),
            better="lower",
        ),
        Figure.single(
            name="moves_inbound_missed",
            label=f"user messages missing from the store (of {outcome['injected']:,})",
            unit="events",
            value=float(outcome["missed"]),
            better="lower",
            target=Target(applies_to="value", op="<=", threshold=0.0, text="0"),
        ),
        Figure.single(
            name="moves_overlaps",
            label="overlaps judged by the emulators",
            unit="overlaps",
            value=float(outcome["overlaps"]),
            better="lower",
            target=Target(applies_to="value", op="<=", threshold=0.0, text="0"),
        ),
        Figure.single(
            name="moves_balance",
            label="balance at the end (most owned / mean)",
            unit="x",
            value=max(owned.values()) / statistics.mean(owned.values()) if owned else 0.0,
            better="lower",
        ),
    ]
    for event in run.events:
        times = sorted(event.moved.values())
        planned = event.name in ("join", "drain")
        figures += [
            Figure.single(
                name=f"moves_{event.name}_moved",
                label=f"{event.name}: channels moved",
                unit="channels",
                value=float(len(times)),
                better="lower",
            ),
            Figure.single(
                name=f"moves_{event.name}_back_median",
                label=f"{event.name}: moved channel connected again, median",
                unit="s",
                value=statistics.median(times) if times else 0.0,
                samples=times,
                better="lower",
            ),
            Figure.single(
                name=f"moves_{event.name}_back_max",
                label=f"{event.name}: moved channel connected again, max",
                unit="s",
                value=max(times) if times else 0.0,
                better="lower",
            ),
            Figure.single(
                name=f"moves_{event.name}_identifies",
                label=f"{event.name}: Discord identifies spent ({event.resumes} resumed)",
                unit="identifies",
                value=float(event.identifies),
                better="lower",
                target=(
                    Target(applies_to="value", op="<=", threshold=0.0, text="0")
                    if planned
                    else None
                ),
            ),
        ]
    return figures


def move_series(outcome: dict[str, Any]) -> list[Series]:
    run: _Run = outcome["run"]
    marks = {event.name: round(event.at, 1) for event in run.events}
    xs = [round(s.at, 1) for s in run.samples]
    nodes = sorted({n for s in run.samples for n in s.owned})
    seconds = int(max((s.at for s in run.sends), default=0.0)) + 1
    done: list[list[float]] = [[] for _ in range(seconds)]
    for send in run.sends:
        if send.latency is not None:
            done[int(send.at)].append(send.latency)
    per_second = [float(x) for x in range(seconds)]
    return [
        Series(
            name="moves_owned",
            title="channels per node",
            x_label="s",
            y_label="channels",
            x=xs,
            lines={n: [float(s.owned.get(n, 0)) for s in run.samples] for n in nodes},
            group="moves",
            marks=marks,
        ),
        Series(
            name="moves_connected",
            title="channels held and connected",
            x_label="s",
            y_label="channels",
            x=xs,
            lines={"connected": [float(s.connected) for s in run.samples]},
            group="moves",
            marks=marks,
        ),
        Series(
            name="moves_rate",
            title="sends accepted per second (by when they were sent)",
            x_label="s",
            y_label="msgs/s",
            x=per_second,
            lines={"accepted": [float(len(d)) for d in done]},
            group="moves",
            marks=marks,
        ),
        Series(
            name="moves_latency",
            title="send latency",
            x_label="s",
            y_label="ms",
            x=per_second,
            lines={
                "p50": [_ms(d, 50) if d else None for d in done],
                "p99": [_ms(d, 99) if d else None for d in done],
            },
            group="moves",
            marks=marks,
        ),
    ]
