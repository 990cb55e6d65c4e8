"""The ``checkpoints`` scenario: what writing channels' durable state behind costs.

Two phases (issue 13's benchmark):

1. Write cost (:mod:`bench.checkpoints_write`): ``channels`` busy channels
   (10,000 by default), every one dirty before every round, written by the
   node's own checkpoint writer on SQLite (a temporary file) and on
   PostgreSQL (a schema of its own, dropped afterwards). Figures per
   backend: rows/s of a round, process CPU per checkpoint, the round's
   wall time, the longest it held the event loop, and the highest rate
   at which one channel was written (the writer's promise: at most once
   per second).
2. The send path: a real node (``open_node``) with ``send_channels``
   channels on the simulated platform (no sockets, no latency) and a
   durable SQLite store, sending closed-loop from ``senders`` tasks for
   ``duration`` seconds after a ``warmup``. Checkpoints on (``[storage]
   checkpoint_interval = 1 s``: every channel that sent is written each
   second) beside off (the same store with an interval no run reaches, so
   no round is written while it sends), a fresh node per run,
   ``repeat`` runs of each, interleaved (the order alternates). Figures:
   process CPU per message sent, on beside off (target: ratio ≤ 1.05),
   and messages/s.

CPU is the process's (``time.process_time``: the trio thread and SQLite's
worker thread); PostgreSQL's server works in a process of its own and is
not counted. Wall times come from trio's clock.
"""

from __future__ import annotations

import itertools
import os
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import attrs
import trio

from providers.base import OutboundMessage
from providers.simulated import SimulatedProvider
from runtime.collection import YOUNG_THRESHOLD

from .checkpoints_write import SplitCost, WriteResult, measure_writes, split_cost
from .report import Figure, Report, Series, Target, load_average, machine_info, median, utc_now
from .scenario import RunContext, Scenario, ScenarioError

__all__ = ["SCENARIO", "CheckpointsParams", "run"]

SEND_CPU_RATIO: Final = 1.05  # CPU per message, checkpoints on / off
WRITES_PER_CHANNEL: Final = 1.0  # writes per second per channel, at most
STORED_WAIT: Final = 30  # intervals the on-mode waits for its rows after the window
OFF_INTERVAL: Final = 86_400.0  # seconds: a checkpoint interval no run reaches
BACKENDS: Final = ("sqlite", "postgres")


def _help(text: str) -> dict[str, str]:
    return {"help": text}


def _check_backends(_: Any, __: Any, value: list[str]) -> None:
    unknown = [b for b in value if b not in BACKENDS]
    if unknown or not value:
        raise ValueError(f"backends: expected some of {', '.join(BACKENDS)}, got {value!r}")


@attrs.frozen(kw_only=True)
class CheckpointsParams:
    """Sizes of the checkpoints run (``bench/scenarios/checkpoints.toml``)."""

    channels: int = attrs.field(default=10_000, metadata=_help("channels written each round"))
    rounds: int = attrs.field(default=5, metadata=_help("measured rounds per backend"))
    backends: list[str] = attrs.field(
        factory=lambda: list(BACKENDS),
        validator=_check_backends,
        metadata=_help("stores the write phase runs on: sqlite, postgres"),
    )
    interval: float = attrs.field(default=1.0, metadata=_help("checkpoint interval, seconds"))
    peers: int = attrs.field(default=4, metadata=_help("active per-peer buckets per channel"))
    seen: int = attrs.field(default=64, metadata=_help("inbound ids in each dedupe window"))
    sent: int = attrs.field(default=32, metadata=_help("send answers kept per channel"))
    send_channels: int = attrs.field(default=1_000, metadata=_help("channels on the sending node"))
    senders: int = attrs.field(default=64, metadata=_help("concurrent sending tasks"))
    warmup: float = attrs.field(default=1.5, metadata=_help("seconds of unmeasured sends"))
    duration: float = attrs.field(default=5.0, metadata=_help("measured seconds of sends"))
    repeat: int = attrs.field(default=3, metadata=_help("runs per mode (on, off)"))
    pg_dsn: str = attrs.field(
        default=os.environ.get("SWITCHBOARD_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test"),
        metadata=_help("the PostgreSQL of the write phase (a schema of its own, dropped after)"),
    )


# --- the send path ---------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class SendRun:
    """One node's measured sends.

    Attributes:
        mode: ``on`` or ``off``.
        messages: messages sent in the measured window.
        seconds: the window's wall time.
        cpu: the process's CPU seconds in it.
        stored: checkpoint rows in the store after the window, before the drain.
    """

    mode: str
    messages: int
    seconds: float
    cpu: float
    stored: int

    @property
    def cpu_us(self) -> float:
        return self.cpu / max(self.messages, 1) * 1e6

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


def _node_config(params: CheckpointsParams, path: Path, interval: float) -> Any:
    from runtime import parse_config

    return parse_config(
        {
            "node": {"id": "ckpt", "start_timeout": 600},
            "ops": {"enabled": False},
            "logging": {"level": "warning"},
            "storage": {"backend": "sqlite", "path": str(path), "checkpoint_interval": interval},
            "providers": {"simulated": {"rate_limit": {"enabled": False}}},
            "channels": [
                {"id": f"c{i}", "tenant": "t0", "provider": "simulated"}
                for i in range(params.send_channels)
            ],
        }
    )


def _stored_rows(path: Path) -> int:
    with sqlite3.connect(path, timeout=30) as conn:
        (count,) = conn.execute("SELECT count(*) FROM channel_checkpoints").fetchone()
    return int(count)


async def _rows_written(params: CheckpointsParams, mode: str, path: Path) -> int:
    """Checkpoint rows in the node's store before its drain (which writes every channel).

    With checkpoints on, waits (outside the measured window) until the
    writer has written every channel that sent, a round or two on a loaded
    machine; with them off, no round ever comes.
    """
    stored = await trio.to_thread.run_sync(_stored_rows, path)
    with trio.move_on_after(STORED_WAIT * params.interval if mode == "on" else 0):
        while stored < params.send_channels:
            await trio.sleep(params.interval / 4)
            stored = await trio.to_thread.run_sync(_stored_rows, path)
    return stored


async def _send_run(params: CheckpointsParams, mode: str, path: Path) -> SendRun:
    from runtime import open_node

    interval = params.interval if mode == "on" else OFF_INTERVAL
    provider = SimulatedProvider(record=False)
    counter = [0]
    measuring = [False]
    sent = [0]

    async def sender(stop: trio.Event) -> None:
        while not stop.is_set():
            i = counter[0]
            counter[0] += 1
            await node.send(
                f"c{i % params.send_channels}",
                OutboundMessage(peer=f"p{i % params.peers}", idempotency_key=f"k{i}", text="hi"),
            )
            if measuring[0]:
                sent[0] += 1

    async with open_node(
        _node_config(params, path, interval), providers={"simulated": provider}
    ) as node:
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            for _ in range(params.senders):
                nursery.start_soon(sender, stop)
            await trio.sleep(params.warmup)
            measuring[0] = True
            start, cpu = trio.current_time(), time.process_time()
            await trio.sleep(params.duration)
            measuring[0] = False
            seconds, cpu = trio.current_time() - start, time.process_time() - cpu
            stop.set()
        stored = await _rows_written(params, mode, path)
    return SendRun(mode=mode, messages=sent[0], seconds=seconds, cpu=cpu, stored=stored)


# --- the run -----------------------------------------------------------------------------


async def _measure(
    params: CheckpointsParams, ctx: RunContext, workdir: Path
) -> tuple[list[WriteResult], list[SendRun], dict[str, float]]:
    sections: dict[str, float] = {}
    writes = []
    for backend in params.backends:
        began = time.perf_counter()
        writes.append(
            await measure_writes(
                backend,
                channels=params.channels,
                rounds=params.rounds,
                interval=params.interval,
                peers=params.peers,
                seen=params.seen,
                sent=params.sent,
                workdir=workdir,
                pg_dsn=params.pg_dsn,
                progress=ctx.progress,
            )
        )
        sections[f"write_{backend}"] = round(time.perf_counter() - began, 2)
    began = time.perf_counter()
    sends: list[SendRun] = []
    ctx.progress.phase("sends, checkpoints on and off", total=2 * params.repeat, unit="nodes")
    for rep in range(params.repeat):
        for mode in ("on", "off") if rep % 2 == 0 else ("off", "on"):
            path = workdir / f"send-{mode}-{rep}.sqlite3"
            sends.append(await _send_run(params, mode, path))
            ctx.progress.update(len(sends))
    sections["send_path"] = round(time.perf_counter() - began, 2)
    return writes, sends, sections


def _write_figures(result: WriteResult) -> list[Figure]:
    b = result.backend
    n = result.channels
    gaps = [later - earlier for earlier, later in itertools.pairwise(result.round_starts)]
    # The highest rate any channel was written at: every round writes every channel.
    per_channel = 1.0 / min(gaps) if gaps else 0.0
    rates = [rows / s for rows, s in zip(result.round_rows, result.round_seconds, strict=True)]
    return [
        Figure.single(
            name=f"rows_s_{b}",
            label=f"{b}: checkpoint rows/s, {n:,} channels all dirty",
            unit="rows/s",
            value=median(rates),
            samples=rates,
            better="higher",
        ),
        Figure.single(
            name=f"cpu_us_{b}",
            label=f"{b}: process CPU per checkpoint",
            unit="µs",
            value=median([c / n * 1e6 for c in result.round_cpu]),
            samples=[c / n * 1e6 for c in result.round_cpu],
            better="lower",
        ),
        Figure.single(
            name=f"round_ms_{b}",
            label=f"{b}: one round (export, encode, write {n:,})",
            unit="ms",
            value=median([s * 1000 for s in result.round_seconds]),
            samples=[s * 1000 for s in result.round_seconds],
            better="lower",
        ),
        Figure.single(
            name=f"stall_ms_{b}",
            label=f"{b}: longest the event loop was held in a round",
            unit="ms",
            value=median([s * 1000 for s in result.round_stalls]),
            samples=[s * 1000 for s in result.round_stalls],
            better="lower",
        ),
        Figure.single(
            name=f"writes_per_channel_s_{b}",
            label=f"{b}: writes per second per channel, highest",
            unit="1/s",
            value=per_channel,
            samples=[1.0 / g for g in gaps],
            better="lower",
            target=Target(
                applies_to="value",
                op="<=",
                threshold=WRITES_PER_CHANNEL,
                text=f"<= {WRITES_PER_CHANNEL:g}",
            ),
        ),
        Figure.single(
            name=f"rows_written_{b}",
            label=f"{b}: rows written in the measured rounds",
            unit="rows",
            value=float(sum(result.round_rows)),
            samples=[float(r) for r in result.round_rows],
            better="higher",
        ),
    ]


def _split_figures(split: SplitCost) -> list[Figure]:
    return [
        Figure.single(
            name="export_us",
            label="of which export_state, per checkpoint",
            unit="µs",
            value=split.export_us,
            better="lower",
        ),
        Figure.single(
            name="encode_us",
            label="of which encoding (cattrs, JSON), per checkpoint, answers new",
            unit="µs",
            value=split.encode_us,
            better="lower",
        ),
        Figure.single(
            name="encode_again_us",
            label="of which encoding, per checkpoint, answers written before",
            unit="µs",
            value=split.encode_again_us,
            better="lower",
        ),
        Figure.single(
            name="export_next_us",
            label="of which export_state, per checkpoint, the next (a change, an interval later)",
            unit="µs",
            value=split.export_next_us,
            better="lower",
        ),
        Figure.single(
            name="encode_next_us",
            label="of which encoding, per checkpoint, the next (a change, an interval later)",
            unit="µs",
            value=split.encode_next_us,
            better="lower",
        ),
        Figure.single(
            name="state_bytes",
            label="encoded state per checkpoint",
            unit="B",
            value=split.state_bytes,
            better="lower",
        ),
    ]


def _send_figures(sends: list[SendRun]) -> list[Figure]:
    on = [s for s in sends if s.mode == "on"]
    off = [s for s in sends if s.mode == "off"]
    baseline = "checkpoints off (the same SQLite store, no round during the run)"
    return [
        Figure.from_samples(
            name="send_cpu_us",
            label="CPU per message sent, checkpoints on (1 s)",
            unit="µs",
            samples=[s.cpu_us for s in on],
            baseline_samples=[s.cpu_us for s in off],
            baseline_label=baseline,
            better="lower",
            target=Target(
                applies_to="ratio",
                op="<=",
                threshold=SEND_CPU_RATIO,
                text=f"ratio <= {SEND_CPU_RATIO:g}",
            ),
        ),
        Figure.from_samples(
            name="send_rate",
            label="messages/s sent, checkpoints on (1 s)",
            unit="msgs/s",
            samples=[s.rate for s in on],
            baseline_samples=[s.rate for s in off],
            baseline_label=baseline,
            better="higher",
        ),
        # What tells the modes apart: rows the writer stored while the node sent.
        Figure.single(
            name="send_stored_on",
            label="checkpoints on: rows stored while sending",
            unit="rows",
            value=median([float(s.stored) for s in on]),
            samples=[float(s.stored) for s in on],
            better="higher",
        ),
        Figure.single(
            name="send_stored_off",
            label="checkpoints off: rows stored while sending",
            unit="rows",
            value=median([float(s.stored) for s in off]),
            samples=[float(s.stored) for s in off],
            better="lower",
        ),
    ]


def _series(writes: list[WriteResult]) -> list[Series]:
    if not writes:
        return []
    rounds = len(writes[0].round_seconds)
    return [
        Series(
            name="checkpoint_rounds",
            title=f"one checkpoint round of {writes[0].channels:,} channels",
            x_label="round",
            y_label="ms",
            x=[float(i + 1) for i in range(rounds)],
            lines={w.backend: [s * 1000 for s in w.round_seconds] for w in writes},
        )
    ]


def _notes(params: CheckpointsParams, writes: list[WriteResult], sends: list[SendRun]) -> list[str]:
    notes = [
        f"write phase: the node's CheckpointWriter (interval {params.interval:g} s) over "
        f"{params.channels:,} channels, each with a session, {params.peers} active per-peer "
        f"buckets, {params.seen} inbound ids and {params.sent} send answers; between rounds "
        "every channel's state changes and it is marked dirty, so each round writes all; "
        "the first round (the inserts) is a warm-up, not in the figures",
        "CPU is time.process_time (the trio thread and SQLite's worker thread); "
        "PostgreSQL's server CPU is not counted",
        "the write phase and the export/encoding split run under the node's collector "
        f"policy (young collections every {YOUNG_THRESHOLD:,} allocations, the channels "
        "frozen once built, as a node freezes them once connected)",
        "stall: a watcher task ticks every 10 ms beside the writer; the latest a tick that "
        "overlaps a round woke is how long that round held the event loop (the export and "
        "the encoding run in the trio thread: no send runs meanwhile)",
    ]
    for w in writes:
        notes.append(
            f"{w.backend}: inserting {w.channels:,} rows took {w.warmup_seconds * 1000:.0f} ms; "
            f"{w.written:,} checkpoints written in all, {w.failures} failed batches; "
            f"{w.stored_ok}/{w.sampled} sampled channels read back with their last change"
        )
    notes.append(
        f"send path: {params.send_channels:,} simulated channels (no latency, no limits), "
        f"{params.senders} closed-loop senders, {params.warmup:g} s warm-up then "
        f"{params.duration:g} s measured; a fresh node and SQLite file per run, "
        f"{params.repeat} runs per mode, interleaved; medians"
    )
    for s in sends:
        notes.append(
            f"send {s.mode}: {s.messages:,} msgs in {s.seconds:.2f} s, "
            f"{s.cpu_us:.1f} µs CPU/msg, {s.stored:,} checkpoint rows stored"
        )
    return notes


def run(params: CheckpointsParams, ctx: RunContext) -> Report:
    """Measure the write cost on each backend, then the send path on and off."""
    for name in ("channels", "rounds", "send_channels", "senders", "repeat"):
        if getattr(params, name) < 1:
            raise ScenarioError(f"--{name.replace('_', '-')}: expected at least 1")
    started = utc_now()
    load_before = load_average()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sb-bench-ckpt-") as tmp:
        writes, sends, sections = trio.run(_measure, params, ctx, Path(tmp))
    ctx.progress.phase("export and encode, timed apart", total=1, unit="passes")
    split = split_cost(
        params.channels,
        peers=params.peers,
        seen=params.seen,
        sent=params.sent,
        interval=params.interval,
    )
    ctx.progress.update(1)
    figures = [
        *(f for w in writes for f in _write_figures(w)),
        *_split_figures(split),
        *_send_figures(sends),
    ]
    return Report(
        scenario="checkpoints",
        started=started,
        duration=time.perf_counter() - t0,
        parameters={**attrs.asdict(params), "pg_dsn": "(hidden)", "quick": ctx.quick},
        machine=machine_info(),
        load_average={"before": load_before, "after": load_average()},
        section_seconds={**sections, "total": round(time.perf_counter() - t0, 2)},
        figures=figures,
        notes=_notes(params, writes, sends),
        series=_series(writes),
    )


SCENARIO: Final = Scenario(
    name="checkpoints",
    help="checkpoint write cost at 10,000 dirty channels, and the send path on vs off",
    params=CheckpointsParams,
    run=run,
)
