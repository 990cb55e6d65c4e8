"""The ``cluster`` scenario: placement, what the leases cost Redis, moves, ownership under faults.

Figures (``python -m bench cluster``; ``--no-moves`` skips the moves run,
``--faults 0`` the fault run):

placement lookup (µs per lookup)
    ``HashRing.owner`` over ``ring_channels`` ids on a ring of
    ``ring_nodes`` members with ``vnodes`` points each, every id looked up
    ``lookups // ring_channels`` times; the baseline is rendezvous hashing
    (xxh3 of member and channel, highest wins) on the same members and ids:
    the alternative the ring was chosen over. Target: ≤ 1 µs.
placement balance (most loaded node / mean)
    ``ring_channels`` ids on ``ring_nodes`` members. Target: ≤ 1.10.
join movement (moved fraction x (N + 1))
    A member joins ``ring_nodes``: the fraction of the channels that changed
    owner, times N + 1 (1.0 is the ideal share). Target: ≤ 1.1.
leave movement (channels moved that were not the leaver's)
    Target: 0.
Redis commands/s per 10,000 leases
    One node (the real :class:`~runtime.cluster.ownership.Ownership` and
    :class:`~runtime.cluster.membership.Membership`, with a runner that runs
    nothing) holds ``leases`` leases at ``cost_ttl`` with ``renew_batch``
    per script call, against a Redis server of its own; ``INFO
    commandstats`` before and after ``cost_window`` seconds. Commands are
    what clients send (a script call is one); script ops are the commands
    the scripts run inside Redis; Redis CPU is ``used_cpu_user + sys``.
    Scaled to 1,000,000 channels on 100 nodes (x 100 per 10,000) with the
    target ≤ 50,000 commands/s, the budget of one Redis primary.
moves (:mod:`bench.cluster_moves`)
    ``nodes`` ``switchboard run`` nodes and ``channels`` channels under
    ``rate`` sends/s offered to random nodes through a scripted join,
    drain, kill -9 and restart: sends accepted per second, forwarded and
    local send latency p50/p99, per event the channels moved and the
    seconds until each was connected again (median, max) and the Discord
    identifies spent, sends lost (target 0), user messages missed (target
    0), overlaps (target 0), the balance at the end; plots over time with
    the events marked. ``--nodes 8 --channels 40000`` on a bigger machine.
single ownership under faults
    The rig of :mod:`bench.cluster_rig` (3 ``switchboard run`` nodes, one
    emulator per platform as the judge, one Redis, PostgreSQL) through
    ``faults`` seeded random faults: overlaps (target 0), and the seconds
    from each fault's end until every channel is connected again (median
    and max; target max ≤ lease TTL + 5 s).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Final

import attrs
import trio
import xxhash

from actors.channel import Tenure
from runtime.cluster.leases import Leases
from runtime.cluster.membership import Membership, View
from runtime.cluster.ownership import Ownership
from runtime.cluster.placement import DEFAULT_VNODES, HashRing
from runtime.cluster.redis import RedisLink, open_redis

from .cluster_moves import MoveParams, failure_kinds, move_figures, move_run, move_series
from .cluster_rig import (
    FAULTS,
    RECOVERY_SLACK,
    RigParams,
    free_port,
    open_cluster_rig,
    spawn_redis,
    wait_port,
)
from .report import Figure, Report, Target, load_average, machine_info, utc_now
from .rig import rtt_field
from .scenario import RunContext, Scenario, ScenarioError

__all__ = ["SCENARIO", "ClusterParams", "run"]

SCALE_CHANNELS: Final = 1_000_000  # the internet-scale deployment the cost is scaled to
SCALE_NODES: Final = 100
REDIS_BUDGET: Final = 50_000  # commands/s one Redis primary is budgeted for
PER: Final = 10_000  # leases the cost figures are given per


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@attrs.frozen(kw_only=True)
class ClusterParams:
    """Sizes of the cluster workloads (``bench/scenarios/cluster.toml``)."""

    nodes: int = attrs.field(default=3, metadata=_help("node processes of the moves run"))
    channels: int = attrs.field(default=3_000, metadata=_help("channels of the moves run"))
    rate: float = attrs.field(default=100.0, metadata=_help("sends/s offered in the moves run"))
    warmup: float = attrs.field(default=10.0, metadata=_help("seconds of load between events"))
    moves: bool = attrs.field(default=True, metadata=_help("run join, drain, kill, restart"))
    moves_lease_ttl: float = attrs.field(
        default=10.0, metadata=_help("the moves run's lease TTL, s (the config's default)")
    )
    ring_nodes: int = attrs.field(default=10, metadata=_help("members of the placement ring"))
    ring_channels: int = attrs.field(default=10_000, metadata=_help("channels placed"))
    vnodes: int = attrs.field(default=DEFAULT_VNODES, metadata=_help("ring points per member"))
    lookups: int = attrs.field(default=1_000_000, metadata=_help("timed placement lookups"))
    leases: int = attrs.field(default=10_000, metadata=_help("leases one node holds (cost)"))
    cost_ttl: float = attrs.field(default=10.0, metadata=_help("lease TTL for the cost, s"))
    renew_batch: int = attrs.field(default=500, metadata=_help("leases renewed per script"))
    cost_window: float = attrs.field(default=30.0, metadata=_help("seconds the cost is measured"))
    faults: int = attrs.field(default=100, metadata=_help("faults in the ownership run (0: none)"))
    websocket: int = attrs.field(default=200, metadata=_help("websocket channels in the rig"))
    telegram: int = attrs.field(default=50, metadata=_help("Telegram channels in the rig"))
    discord: int = attrs.field(default=50, metadata=_help("Discord channels in the rig"))
    lease_ttl: float = attrs.field(default=4.0, metadata=_help("the rig's lease TTL, s"))
    seed: int = attrs.field(default=20261204, metadata=_help("the faults' random seed"))
    rtt_ms: float = rtt_field()

    def __attrs_post_init__(self) -> None:
        names = ("nodes", "channels", "ring_nodes", "ring_channels", "vnodes", "lookups", "leases")
        for name in (*names, "renew_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected at least 1, got {getattr(self, name)}")
        if self.faults < 0:
            raise ValueError(f"faults: expected 0 or more, got {self.faults}")


# --- placement ----------------------------------------------------------------------------------


def _rendezvous(members: tuple[str, ...]) -> Any:
    keyed = [(member, member.encode()) for member in members]

    def owner(channel_id: str) -> str:
        raw = channel_id.encode()
        return max(keyed, key=lambda m: xxhash.xxh3_64_intdigest(m[1] + b"/" + raw))[0]

    return owner


def _lookup_us(owner: Any, ids: list[str], rounds: int) -> float:
    started = time.perf_counter()
    for _ in range(rounds):
        for channel_id in ids:
            owner(channel_id)
    return (time.perf_counter() - started) / (rounds * len(ids)) * 1e6


def placement_figures(p: ClusterParams) -> list[Figure]:
    members = tuple(f"node-{i:02d}" for i in range(p.ring_nodes))
    ids = [f"channel-{i}" for i in range(p.ring_channels)]
    ring = HashRing(members, vnodes=p.vnodes)
    rounds = max(p.lookups // p.ring_channels, 1)
    ring_us: list[float] = []
    rendezvous_us: list[float] = []
    rendezvous = _rendezvous(members)
    for _ in range(3):  # alternate; medians
        ring_us.append(_lookup_us(ring.owner, ids, rounds))
        rendezvous_us.append(_lookup_us(rendezvous, ids, max(rounds // 10, 1)))
    owners = [ring.owner(c) for c in ids]
    counts = [owners.count(m) for m in members]
    balance = max(counts) / (len(ids) / len(members))
    joined = HashRing((*members, "node-new"), vnodes=p.vnodes)
    moved = sum(joined.owner(c) != o for c, o in zip(ids, owners, strict=True))
    join_share = moved / len(ids) * (len(members) + 1)
    leaver = members[0]
    left = HashRing(members[1:], vnodes=p.vnodes) if len(members) > 1 else ring
    wrongly_moved = sum(
        o != leaver and left.owner(c) != o for c, o in zip(ids, owners, strict=True)
    )
    return [
        Figure.from_samples(
            name="placement_lookup",
            label=f"placement lookup ({p.ring_nodes} nodes, {p.vnodes} vnodes)",
            unit="µs",
            samples=ring_us,
            baseline_samples=rendezvous_us,
            baseline_label=f"rendezvous hashing (xxh3), {p.ring_nodes} members",
            better="lower",
            target=Target(applies_to="value", op="<=", threshold=1.0, text="≤ 1 µs"),
        ),
        Figure.single(
            name="placement_balance",
            label=f"most loaded node / mean ({p.ring_nodes} nodes, {p.ring_channels:,} channels)",
            unit="x",
            value=balance,
            better="lower",
            target=Target(applies_to="value", op="<=", threshold=1.10, text="≤ 1.10"),
        ),
        Figure.single(
            name="placement_join_movement",
            label=f"a join: moved fraction x (N+1), N = {p.ring_nodes}",
            unit="x",
            value=join_share,
            better="lower",
            target=Target(applies_to="value", op="<=", threshold=1.1, text="≤ 1.1"),
        ),
        Figure.single(
            name="placement_leave_movement",
            label="a leave: channels moved that were not the leaver's",
            unit="channels",
            value=float(wrongly_moved),
            better="lower",
            target=Target(applies_to="value", op="<=", threshold=0.0, text="0"),
        ),
    ]


# --- what the leases cost Redis -------------------------------------------------------------


class _NothingRuns:
    """A runner for ownership that runs nothing: only the leases are measured."""

    async def floor_token(self, channel_id: str) -> int:
        return 0

    async def start_owned(self, channel_id: str, tenure: Tenure) -> None:
        return None

    async def stop_owned(self, channel_id: str) -> None:
        return None

    def released(self, channel_id: str) -> None:
        return None

    def catalog_changed(self, channel_ids: frozenset[str]) -> None:
        return None


async def _redis_counters(link: RedisLink) -> tuple[dict[str, int], float]:
    """Calls per command (``INFO commandstats``) and Redis's CPU seconds so far."""
    stats = await link.call("INFO", "commandstats")
    cpu = await link.call("INFO", "cpu")
    calls = {
        name.removeprefix("cmdstat_"): int(value["calls"])
        for name, value in stats.items()
        if isinstance(value, dict)
    }
    return calls, float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


# Commands the scripts run inside Redis (counted in commandstats, not sent by a client).
_SCRIPT_OPS: Final = frozenset({"get", "set", "pexpire", "incr", "pttl", "del", "publish"})
_OURS: Final = frozenset({"info"})  # the measurement's own


async def lease_cost(p: ClusterParams) -> dict[str, float]:
    """Hold ``p.leases`` leases on one node for ``p.cost_window`` s; Redis's counts."""
    port = free_port()
    server = spawn_redis(port)
    try:
        await wait_port(port)
        async with open_redis(f"redis://127.0.0.1:{port}/0", timeout=5.0) as link:
            leases = Leases(link, prefix="cost", node_id="n1", ttl=p.cost_ttl)
            ownership = Ownership(
                node_id="n1",
                leases=leases,
                runner=_NothingRuns(),
                vnodes=p.vnodes,
                renew_batch=p.renew_batch,
            )
            membership = Membership(
                link,
                prefix="cost",
                node_id="n1",
                heartbeat_interval=p.cost_ttl / 5,
                member_timeout=p.cost_ttl / 2,
            )

            def on_view(view: View) -> None:
                ownership.set_members(view.members)

            ownership.set_catalog(f"channel-{i}" for i in range(p.leases))
            async with trio.open_nursery() as nursery:
                await nursery.start(membership.run, on_view)
                await nursery.start(ownership.run)
                with trio.fail_after(120):
                    while len(ownership.owned) < p.leases:  # noqa: ASYNC110 - Redis answers
                        await trio.sleep(0.1)
                before, cpu_before = await _redis_counters(link)
                t0 = trio.current_time()
                await trio.sleep(p.cost_window)
                after, cpu_after = await _redis_counters(link)
                elapsed = trio.current_time() - t0
                nursery.cancel_scope.cancel()
    finally:
        server.kill()
        server.wait()
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    script_ops = sum(v for k, v in delta.items() if k in _SCRIPT_OPS)
    sent = sum(v for k, v in delta.items() if k not in _SCRIPT_OPS | _OURS)
    per = PER / p.leases
    return {
        "commands_per_s_per_10k": sent / elapsed * per,
        "script_ops_per_s_per_10k": script_ops / elapsed * per,
        "redis_cpu_per_10k": (cpu_after - cpu_before) / elapsed * per,
        "elapsed": elapsed,
    }


def cost_figures(p: ClusterParams, cost: dict[str, float]) -> list[Figure]:
    scale = SCALE_CHANNELS / PER
    return [
        Figure.single(
            name="redis_commands_per_10k",
            label=f"Redis commands/s per {PER:,} leases (TTL {p.cost_ttl:g} s, "
            f"batch {p.renew_batch})",
            unit="cmd/s",
            value=cost["commands_per_s_per_10k"],
            better="lower",
        ),
        Figure.single(
            name="redis_commands_at_scale",
            label=f"the same at {SCALE_CHANNELS:,} channels on {SCALE_NODES} nodes",
            unit="cmd/s",
            value=cost["commands_per_s_per_10k"] * scale,
            better="lower",
            target=Target(
                applies_to="value", op="<=", threshold=REDIS_BUDGET, text=f"≤ {REDIS_BUDGET:,}"
            ),
        ),
        Figure.single(
            name="redis_script_ops_per_10k",
            label=f"commands run inside the scripts, per {PER:,} leases",
            unit="op/s",
            value=cost["script_ops_per_s_per_10k"],
            better="lower",
        ),
        Figure.single(
            name="redis_cpu_at_scale",
            label=f"Redis CPU at {SCALE_CHANNELS:,} channels (share of one core)",
            unit="cores",
            value=cost["redis_cpu_per_10k"] * scale,
            better="lower",
        ),
    ]


# --- single ownership under faults --------------------------------------------------------------


async def fault_run(p: ClusterParams, ctx: RunContext) -> dict[str, Any]:
    rig_params = RigParams(
        websocket=p.websocket,
        telegram=p.telegram,
        discord=p.discord,
        lease_ttl=p.lease_ttl,
        heartbeat=0.5,
        member_timeout=p.lease_ttl * 3 / 4,
        seed=p.seed,
        workdir=Path(ctx.out_dir) / "rig",
        latency=p.rtt_ms / 1e3,
    )
    ctx.progress.phase(
        f"ownership: 3 nodes, {p.faults} faults (seed {p.seed})", total=p.faults, unit="faults"
    )
    async with open_cluster_rig(rig_params) as rig:
        for n in range(p.faults):
            record = await rig.fault()
            last = f"{record.kind} dark {record.outage:.1f} s, settled {record.recovery:.1f} s"
            ctx.progress.update(n + 1, last=last)
            if await rig.overlaps():
                break  # the judge has spoken; the examples go in the report
        summary = await rig.summary()
        summary["recoveries"] = [f.recovery for f in rig.faults]
        summary["outages"] = [f.outage for f in rig.faults]
        summary["darkest"] = [
            f"{f.kind} {f.node or '-'}: {f.dark[0]} dark {f.outage:.1f} s from "
            f"{time.strftime('%H:%M:%S', time.gmtime(f.dark[1]))} UTC ({f.dark[2]})"
            for f in sorted(rig.faults, key=lambda f: -f.outage)[:5]
            if f.dark is not None
        ]
        summary["overlap_examples"] = await rig.overlap_examples()
    return summary


def _median_and_max(
    name: str, label: str, seconds: list[float], target: Target | None = None
) -> list[Figure]:
    """``<name>_median`` (with the samples) and ``<name>_max`` (held to ``target``)."""
    return [
        Figure.single(
            name=f"{name}_median",
            label=f"{label}, median",
            unit="s",
            value=statistics.median(seconds),
            samples=seconds,
            better="lower",
        ),
        Figure.single(
            name=f"{name}_max",
            label=f"{label}, max",
            unit="s",
            value=max(seconds),
            better="lower",
            target=target,
        ),
    ]


def fault_figures(p: ClusterParams, summary: dict[str, Any]) -> list[Figure]:
    recoveries: list[float] = summary["recoveries"]
    outages: list[float] = summary["outages"]
    bound = p.lease_ttl + RECOVERY_SLACK
    return [
        Figure.single(
            name="ownership_overlaps",
            label=f"overlaps judged by the emulators over {summary['faults']} faults",
            unit="overlaps",
            value=float(summary["overlaps"]),
            better="lower",
            target=Target(applies_to="value", op="<=", threshold=0.0, text="0"),
        ),
        *_median_and_max(
            "outage",
            "longest a channel was without its connection in a fault",
            outages,
            Target(applies_to="value", op="<=", threshold=bound, text=f"≤ {bound:g} s"),
        ),
        *_median_and_max(
            "failover",
            "every channel connected and staying so after a fault (moves back in)",
            recoveries,
        ),
    ]


def _move_params(p: ClusterParams, ctx: RunContext) -> MoveParams:
    return MoveParams(
        nodes=p.nodes,
        channels=p.channels,
        rate=p.rate,
        warmup=p.warmup,
        lease_ttl=p.moves_lease_ttl,
        seed=p.seed,
        workdir=Path(ctx.out_dir) / "moves",
        latency=p.rtt_ms / 1e3,
    )


def run(params: ClusterParams, ctx: RunContext) -> Report:
    """Run the cluster scenario."""
    if ctx.target is not None:
        raise ScenarioError("cluster runs its own nodes, Redis and emulators; no --target")
    started = utc_now()
    load_before = load_average()
    t0 = time.perf_counter()
    sections: dict[str, float] = {}
    ctx.progress.phase("placement")
    figures = placement_figures(params)
    sections["placement"] = round(time.perf_counter() - t0, 2)
    ctx.progress.phase(f"lease cost: {params.leases:,} leases for {params.cost_window:g} s")
    t = time.perf_counter()
    cost = trio.run(lease_cost, params)
    figures += cost_figures(params, cost)
    sections["cost"] = round(time.perf_counter() - t, 2)
    notes = [
        "placement: medians of 3 alternating runs, time.perf_counter; the rendezvous "
        "baseline is timed on a tenth of the rounds",
        f"cost: one node holding {params.leases:,} leases; commands = what clients sent "
        "(a script call is one), script ops = commands run inside the scripts; scaled "
        f"linearly to {SCALE_CHANNELS:,} channels on {SCALE_NODES} nodes "
        f"({SCALE_CHANNELS // SCALE_NODES:,} per node, renewal and heartbeat costs are per "
        "node and per lease, so the scale is linear)",
    ]
    series = []
    if params.moves:
        t = time.perf_counter()
        moves = trio.run(move_run, _move_params(params, ctx), ctx)
        figures += move_figures(moves)
        series += move_series(moves)
        sections["moves"] = round(time.perf_counter() - t, 2)
        notes.append(
            f"moves: {params.nodes} nodes + 1 joining, {params.channels:,} channels, lease TTL "
            f"{params.moves_lease_ttl:g} s (a 30th "
            f"each Discord and Telegram, the rest websocket), {params.rate:g} sends/s to random "
            "live nodes' message API; a send is forwarded when the node asked is not the "
            "lease holder last read (every 0.25 s); 'connected again' = held by its new node "
            "and, for websocket and Discord, exactly one platform connection"
        )
        notes.append(
            f"moves: start-up: every channel connected {moves['startup']:.1f} s after the "
            f"nodes were started, and held where the ring puts it {moves['placed']:.1f} s later; "
            f"the emulators' process used {moves['platforms_cpu']:.0%} of a core through the "
            "script"
        )
        if moves["missed"]:
            notes.append(f"moves: user messages missing from the store: {moves['missed_examples']}")
        if failed := failure_kinds(moves):
            notes.append(f"moves: failed sends by kind: {failed}")
        if moves["overlaps"]:
            notes.append(f"moves overlap examples: {moves['overlap_examples']}")
    fault_summary: dict[str, Any] | None = None
    if params.faults:
        t = time.perf_counter()
        fault_summary = trio.run(fault_run, params, ctx)
        figures += fault_figures(params, fault_summary)
        sections["faults"] = round(time.perf_counter() - t, 2)
        notes.append(
            f"faults drawn from {', '.join(FAULTS)} (seed {params.seed}; by kind: "
            f"{fault_summary['by_kind']}); outage = the longest any websocket or Discord "
            "channel was without its platform connection, from the fault's start until "
            "recovery (the target: lease TTL + 5 s); failover = from the fault's end until "
            "every such channel holds exactly one connection and keeps it for TTL/2, which "
            "includes the paced moves back to a node that returned"
        )
        if fault_summary["darkest"]:
            notes.append(f"faults: the longest dark: {'; '.join(fault_summary['darkest'])}")
        if fault_summary["overlaps"]:
            notes.append(f"overlap examples: {fault_summary['overlap_examples']}")
    return Report(
        scenario="cluster",
        started=started,
        duration=time.perf_counter() - t0,
        parameters={**attrs.asdict(params), "quick": ctx.quick},
        machine=machine_info(),
        load_average={"before": load_before, "after": load_average()},
        section_seconds=sections,
        figures=figures,
        notes=notes,
        series=series,
    )


SCENARIO: Final = Scenario(
    name="cluster",
    help="placement figures, the leases' Redis cost, single ownership through random faults",
    params=ClusterParams,
    run=run,
)
