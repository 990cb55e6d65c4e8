"""The ``crash`` scenario: channel actors crash at a set rate under load; nothing is lost.

Design:
- The channels run in a real node (``open_node``, the embedding API), not in
  a hand-built supervisor: the crash then meets the product's own
  supervision tree, the channels' one-for-one supervisor with the node's
  ``[supervisor]`` intensity, period and restart backoff, and, past the
  intensity, the node restarting that supervisor (every channel started
  anew), up to the node's own limit, after which the node fails. Messages
  go through ``Node.send``, as a product sends them.
- The platform is the websocket emulator, in-process and over real sockets
  on 127.0.0.1 (or the simulated platform, no sockets). Its provider is
  wrapped by :class:`~bench.crash_faults.CrashingProvider`, which can raise
  an exception inside a channel actor while it is connected: the default
  crash, a bug. ``crash_mode = "kill"`` uses ``ref.kill()`` instead.
- Load is open-loop at ``rate`` messages per second over all channels, each
  message retried with its idempotency key until acknowledged
  (:mod:`bench.crash_load`); crashes arrive as a Poisson process at
  ``crash_rate`` per second, each on a random connected channel that is not
  already restarting.
- After the load, the run waits (bounded) for every send to finish and
  every crashed channel to be connected again, then compares the keys sent
  with the keys the platform accepted: ``lost`` must be 0. Restarts are the
  channels' own counters (their memory outlives every incarnation), and
  must equal the crashes unless the supervisor escalated.
- Every phase is bounded by the run's time limit; a run cut short says so
  in its notes, and whatever was not delivered by then counts as lost.
"""

from __future__ import annotations

import math
import random
import time
from typing import Final

import attrs
import trio

from actors import ActorState, ChannelMemory, ChannelStatus
from providers.base import OutboundMessage, Provider, SendResult
from providers.emulators.websocket import WebSocketEmulator
from providers.simulated import SimulatedProvider, Uniform
from providers.websocket import WebSocketProvider
from runtime import ChannelSpec, Node, NodeConfig, open_node
from runtime.config import RestartBackoffConfig
from supervisors import SupervisorExited

from .crash_faults import CrashingProvider, CrashLog
from .crash_load import LoadGenerator
from .crash_observe import (
    EmulatorLedger,
    Ledger,
    LogTally,
    ReconnectWatch,
    SimulatedLedger,
    captured_logs,
)
from .crash_report import (
    SAMPLE_INTERVAL,
    CrashOutcome,
    Sample,
    escalation_expected,
    figures,
    notes,
    series,
)
from .report import Report, load_average, machine_info, utc_now
from .rig import node_config
from .scenario import RunContext, Scenario, ScenarioError

__all__ = ["SCENARIO", "CrashParams", "run"]

PROVIDERS: Final = ("websocket", "simulated")
CRASH_MODES: Final = ("exception", "kill")
START_LIMIT: Final = 60.0  # seconds for every channel to connect
SETTLE_LIMIT: Final = 30.0  # seconds for the last sends and reconnects after the load
MIN_SETTLE: Final = 5.0  # seconds of settling the load is never shortened below
DRAIN_RESERVE: Final = 8.0  # seconds kept for leaving the node (drain, close links)
PICK_TRIES: Final = 32  # random channels tried per crash before the crash is skipped
SIMULATED_LATENCY: Final = Uniform(low=0.0005, high=0.002)  # seconds per simulated send


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@attrs.frozen(kw_only=True)
class CrashParams:
    """The knobs of the crash scenario (each is also a ``--option``)."""

    provider: str = attrs.field(
        default="websocket",
        validator=attrs.validators.in_(PROVIDERS),
        metadata=_help("websocket (emulator over 127.0.0.1 sockets) or simulated (no sockets)"),
    )
    channels: int = attrs.field(
        default=200, validator=attrs.validators.ge(1), metadata=_help("channels (actors)")
    )
    rate: float = attrs.field(
        default=200.0,
        validator=attrs.validators.gt(0.0),
        metadata=_help("messages per second offered, all channels together"),
    )
    crash_rate: float = attrs.field(
        default=5.0,
        validator=attrs.validators.ge(0.0),
        metadata=_help("crashes per second, Poisson arrivals"),
    )
    duration: float = attrs.field(
        default=40.0,
        validator=attrs.validators.gt(0.0),
        metadata=_help("seconds of load and crashes"),
    )
    crash_mode: str = attrs.field(
        default="exception",
        validator=attrs.validators.in_(CRASH_MODES),
        metadata=_help("exception (raised inside the actor) or kill (ref.kill())"),
    )
    intensity: int = attrs.field(
        default=100,
        validator=attrs.validators.ge(0),
        metadata=_help("channels supervisor: restarts allowed per period before it escalates"),
    )
    period: float = attrs.field(
        default=10.0,
        validator=attrs.validators.gt(0.0),
        metadata=_help("channels supervisor: the intensity's window, seconds"),
    )
    restart_backoff: float = attrs.field(
        default=0.1,
        validator=attrs.validators.gt(0.0),
        metadata=_help(
            "channels supervisor: first restart delay, seconds (doubles for each further "
            "crash of a channel within a minute)"
        ),
    )
    rate_limits: bool = attrs.field(
        default=False, metadata=_help("keep the platform's send rate limits")
    )
    send_timeout: float = attrs.field(
        default=10.0,
        validator=attrs.validators.gt(0.0),
        metadata=_help("seconds one send attempt may take before it is retried"),
    )
    seed: int = attrs.field(default=1, metadata=_help("seed of the crash times and targets"))


def run(params: CrashParams, ctx: RunContext) -> Report:
    """Run the scenario and build its report."""
    if ctx.target is not None:
        raise ScenarioError(
            "crash runs its own node (it crashes actors inside it); --target is not supported"
        )
    started, before, clock = utc_now(), load_average(), time.monotonic()
    sections: dict[str, float] = {}
    with captured_logs() as logs:
        outcome = trio.run(_measure, params, ctx, sections, logs)
    setup = (
        f"{params.channels} {params.provider} channels in one node ("
        + (
            "emulator in-process, real sockets on 127.0.0.1"
            if params.provider == "websocket"
            else "simulated platform, no sockets"
        )
        + f"), rate limits {'on' if params.rate_limits else 'off'}; channels supervisor "
        f"one_for_one, intensity {params.intensity} per {params.period:g} s, restart backoff "
        f"from {params.restart_backoff:g} s"
    )
    return Report(
        scenario="crash",
        started=started,
        duration=time.monotonic() - clock,
        parameters=attrs.asdict(params),
        machine=machine_info(),
        load_average={"before": before, "after": load_average()},
        section_seconds=sections,
        figures=figures(outcome),
        notes=notes(outcome, logs, setup),
        series=series(outcome),
    )


# ---------------------------------------------------------------- the run


class _NodeSend:
    """``Node.send`` with the scenario's timeout, for a node that starts later."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.node: Node | None = None

    async def __call__(self, channel_id: str, message: OutboundMessage) -> SendResult:
        assert self.node is not None, "the load started before the node"
        return await self.node.send(channel_id, message, timeout=self.timeout)


@attrs.define
class _Run:
    """What one run's tasks share."""

    params: CrashParams
    ctx: RunContext
    outcome: CrashOutcome
    watch: ReconnectWatch
    crash_log: CrashLog
    provider: CrashingProvider
    channel_ids: list[str]
    logs: LogTally
    ledger: Ledger | None = None
    node: Node | None = None
    memories: dict[str, ChannelMemory] = attrs.Factory(dict)
    load_start: float = 0.0
    incarnations_before: int = 0
    failure: str | None = None  # why the run cannot go on
    finished: bool = False  # the run's own work inside the node came to its end

    def restarts(self) -> int:
        """Incarnations started since the load began, over every channel."""
        return sum(m.incarnations for m in self.memories.values()) - self.incarnations_before

    def sample(self) -> Sample:
        return Sample(
            t=trio.current_time() - self.load_start,
            offered=self.outcome.load.offered,
            delivered=self.ledger.delivered() if self.ledger is not None else 0,
            crashes=len(self.crash_log),
            restarts=self.restarts(),
            escalations=self.logs.escalations,
        )


async def _measure(
    params: CrashParams, ctx: RunContext, sections: dict[str, float], logs: LogTally
) -> CrashOutcome:
    channel_ids = [f"crash-{i:05d}" for i in range(params.channels)]
    inner = _inner_provider(params)
    watch = ReconnectWatch()
    crash_log = CrashLog(on_landed=watch.crashed)
    provider = CrashingProvider(inner, crash_log)
    send = _NodeSend(params.send_timeout)
    state = _Run(
        params=params,
        ctx=ctx,
        outcome=CrashOutcome(
            channels=params.channels,
            provider=params.provider,
            crash_mode=params.crash_mode,
            load=LoadGenerator(send, channel_ids, params.rate),
            escalations_expected=escalation_expected(
                params.crash_rate, params.period, params.intensity
            ),
        ),
        watch=watch,
        crash_log=crash_log,
        provider=provider,
        channel_ids=channel_ids,
        logs=logs,
    )
    clock = time.monotonic()
    ctx.progress.phase(f"starting a node with {params.channels} {params.provider} channels")
    with trio.move_on_after(ctx.remaining()) as budget:
        try:
            async with open_node(
                _config(params, channel_ids, ctx.port_base), providers={provider.name: provider}
            ) as node:
                state.node = send.node = node
                state.ledger = _ledger(node, inner)
                if await _connect(state, node):
                    sections["start"] = time.monotonic() - clock
                    clock = time.monotonic()
                    await _load_and_settle(state, node)
                    sections["load and settle"] = time.monotonic() - clock
                    clock = time.monotonic()
                state.finished = True
                ctx.progress.phase("leaving the node (drain)")
        except SupervisorExited as exc:
            state.outcome.node_failure = str(exc.exit)
    # Raised out here: inside the node, an error leaves wrapped in its nurseries' groups.
    if state.failure is not None:
        raise ScenarioError(state.failure)
    if budget.cancelled_caught:
        state.outcome.cut_short = "the run's time limit"
    elif not state.finished and state.outcome.node_failure is None and state.node is not None:
        # open_node may end quietly when its tree gives up (see the report); ask the tree.
        state.outcome.node_failure = _tree_exit(state.node)
    sections["drain"] = time.monotonic() - clock
    _collect(state)
    return state.outcome


def _tree_exit(node: Node) -> str:
    """Why the node's supervision tree ended, as its root's exit says."""
    try:
        node.tree()
    except SupervisorExited as exc:
        return str(exc.exit)
    return "the node ended while the run was still going"


def _inner_provider(params: CrashParams) -> Provider:
    if params.provider == "simulated":
        return SimulatedProvider(latency=SIMULATED_LATENCY, seed=params.seed)
    return WebSocketProvider()


def _ledger(node: Node, inner: Provider) -> Ledger:
    if isinstance(inner, SimulatedProvider):
        return SimulatedLedger(inner)
    emulator = node.emulators.emulators.get("websocket") if node.emulators else None
    if not isinstance(emulator, WebSocketEmulator):
        raise ScenarioError("the node did not start its websocket emulator")
    return EmulatorLedger(emulator)


def _config(params: CrashParams, channel_ids: list[str], port_base: int = 0) -> NodeConfig:
    """A bench node (``bench.rig``) with the scenario's supervisor policy and channels."""
    config = node_config(
        params.provider,
        in_process_emulator=params.provider == "websocket",
        limits=params.rate_limits,
        intensity=params.intensity,
        port_base=port_base,
    )
    supervisor = attrs.evolve(
        config.supervisor,
        period=params.period,
        restart_backoff=RestartBackoffConfig(base=params.restart_backoff),
    )
    emulated = params.provider == "websocket"
    channels = [
        ChannelSpec(id=channel_id, provider=params.provider, tenant="bench", emulator=emulated)
        for channel_id in channel_ids
    ]
    return attrs.evolve(config, supervisor=supervisor, channels=channels)


async def _connect(state: _Run, node: Node) -> bool:
    """Watch every channel the node started; wait until all are connected (False: not all)."""
    progress, n = state.ctx.progress, len(state.channel_ids)
    for channel_id in state.channel_ids:
        memory = node.channel(channel_id).memory
        state.memories[channel_id] = memory
        state.watch.attach(channel_id, memory)
    progress.phase("connecting", total=n, unit="channels")
    limit = min(START_LIMIT, state.ctx.remaining())
    with trio.move_on_after(limit):
        await state.watch.wait_all_connected()
    connected = len(state.watch.connected)
    progress.update(connected)
    if connected < n:
        state.failure = (
            f"only {connected}/{n} channels connected within {limit:.0f} s; "
            "try fewer channels or a longer time_limit"
        )
    return state.failure is None


async def _load_and_settle(state: _Run, node: Node) -> None:
    """Offer the load with crashes, then wait for the last sends and reconnects."""
    params, ctx, outcome = state.params, state.ctx, state.outcome
    assert state.ledger is not None
    duration = min(params.duration, ctx.remaining() - DRAIN_RESERVE - MIN_SETTLE)
    if duration <= 0:
        state.failure = f"the time limit leaves no time for the load ({ctx.remaining():.0f} s left)"
        return
    if duration < params.duration:
        outcome.cut_short = f"the load ran {duration:.1f} s of {params.duration:g} (time limit)"
    state.incarnations_before = sum(m.incarnations for m in state.memories.values())
    state.load_start = trio.current_time()
    delivered_before = state.ledger.delivered()
    outcome.samples.append(state.sample())
    ctx.progress.phase(
        f"load {params.rate:,.0f} msgs/s, {params.crash_rate:g} crashes/s",
        total=duration,
        unit="s",
    )
    settle = min(SETTLE_LIMIT, ctx.remaining() - duration - DRAIN_RESERVE)
    async with trio.open_nursery() as watchers:
        watchers.start_soon(_sample_periodically, state, duration, duration + settle)
        with trio.move_on_after(duration + settle) as settle_scope:
            async with trio.open_nursery() as sends:
                if params.crash_rate > 0:
                    sends.start_soon(_inject_crashes, state, node, duration)
                await outcome.load.offer(duration, sends)
                load_end = trio.current_time()
                outcome.load_seconds = load_end - state.load_start
                outcome.delivered_in_load = state.ledger.delivered() - delivered_before
                ctx.progress.phase(
                    "settling: last sends and reconnects", total=outcome.load.offered, unit="msgs"
                )
            outcome.settle_seconds = trio.current_time() - load_end
            await state.watch.wait_all_back()
        if settle_scope.cancelled_caught:
            outcome.cut_short = (
                f"{outcome.load.in_flight} send(s) or {len(state.watch.pending)} reconnect(s) "
                f"still pending {settle:.0f} s after the load"
            )
        watchers.cancel_scope.cancel()


async def _sample_periodically(state: _Run, load_seconds: float, until: float) -> None:
    progress, load = state.ctx.progress, state.outcome.load
    for tick in range(1, math.ceil(until / SAMPLE_INTERVAL) + 1):
        await trio.sleep_until(state.load_start + tick * SAMPLE_INTERVAL)
        sample = state.sample()
        state.outcome.samples.append(sample)
        progress.update(
            sample.t if sample.t <= load_seconds else load.acked,
            sent=sample.offered,
            delivered=sample.delivered,
            in_flight=load.in_flight,
            crashes=sample.crashes,
            restarts=sample.restarts,
            retries=sum(load.retries.values()),
            escalations=sample.escalations,
        )


async def _inject_crashes(state: _Run, node: Node, duration: float) -> None:
    """Crash random connected channels at Poisson times for ``duration`` seconds."""
    params = state.params
    rng = random.Random(params.seed)
    end = state.load_start + duration
    at = state.load_start
    # Bounded: more than four times the expected count is out of the question.
    for _ in range(math.ceil(params.crash_rate * duration * 4) + 16):
        at += rng.expovariate(params.crash_rate)
        if at >= end:
            return
        await trio.sleep_until(at)
        target = _pick(state, rng)
        if target is None or not _crash(state, node, target):
            state.outcome.skipped += 1


def _pick(state: _Run, rng: random.Random) -> str | None:
    """A random channel that is connected and not already waiting to reconnect."""
    for _ in range(PICK_TRIES):
        channel_id = rng.choice(state.channel_ids)
        memory = state.memories[channel_id]
        if memory.status is ChannelStatus.CONNECTED and channel_id not in state.watch.pending:
            return channel_id
    return None


def _crash(state: _Run, node: Node, channel_id: str) -> bool:
    if state.params.crash_mode == "exception":
        return state.provider.crash(channel_id)
    ref = node.channel(channel_id).ref
    if ref.state is not ActorState.RUNNING:
        return False
    ref.kill()
    state.crash_log.landed(channel_id, trio.current_time())
    return True


def _collect(state: _Run) -> None:
    """The final counts, read once the node is gone (the platform's records outlive it)."""
    outcome = state.outcome
    state.crash_log.settle()
    outcome.crash_times = [t - state.load_start for t in state.crash_log.times]
    outcome.missed = state.crash_log.missed
    outcome.restarts = state.restarts()
    outcome.restart_latencies = list(state.watch.latencies)
    outcome.not_back = len(state.watch.pending)
    # Every supervisor that gives up logs it once; the node's root is the last, if it did.
    outcome.escalations = state.logs.escalations - (1 if outcome.node_failure else 0)
    outcome.restart_waits = list(state.watch.restart_waits)
    outcome.reconnects = list(state.watch.reconnects)
    if state.ledger is not None:
        outcome.delivered_keys = state.ledger.delivered_keys()
        outcome.duplicates = state.ledger.duplicates()


SCENARIO: Final = Scenario(
    name="crash",
    help="channel actors crash at a set rate under load: restarts, lost messages (must be 0), "
    "escalations",
    params=CrashParams,
    run=run,
)
