"""The write phase of the ``checkpoints`` scenario: N channels, all dirty, every round.

Design:
- The node's own :class:`runtime.checkpoints.CheckpointWriter` runs its own
  loop (``run``: sleep ``interval``, then write every dirty channel as one
  batch) against a real store: SQLite in a temporary directory, or
  PostgreSQL in a schema of its own, dropped afterwards.
- Every channel carries the state a busy channel has (a session, active
  per-peer limiter buckets, a dedupe window, recent send answers), and after
  each round every channel's state changes (its limiters move, one more
  inbound id, one more send answer, the session's offset advances) and it
  is marked dirty again: the next round writes all N. That toucher runs
  between rounds, while the writer sleeps, so it is never inside a round's
  measurement.
- A round is timed around ``flush`` (the export of every channel, the
  encoding and the store's batch): wall time with ``trio.current_time``
  and the process's CPU time (``time.process_time``: the trio thread and
  SQLite's worker thread both; PostgreSQL's server CPU is not in it).
- Beside it a watcher ticks every 10 ms: how late a tick that overlaps a
  round wakes is how long the round held the event loop (the export and
  the encoding run in the trio thread; no send runs meanwhile).
- The first round inserts the rows; it is kept apart (a warm-up). Rounds'
  start times give the rate at which one channel is written: the writer
  promises at most one write per second per channel.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Final

import attrs
import trio

from actors.channel import ChannelMemory, ChannelSettings
from providers.base import DEFAULT_LIMITS, SessionState
from runtime.checkpoints import CheckpointWriter
from runtime.collection import CollectorPolicy
from runtime.config.model import StorageConfig
from runtime.errors import StoreError
from runtime.store import Store, open_store

from .cluster_rig import drop_pg_schema
from .progress import Progress
from .scenario import ScenarioError

__all__ = ["SplitCost", "WriteResult", "measure_writes", "split_cost"]

TICK: Final = 0.01  # seconds between the stall watcher's ticks
SETTLE: Final = 0.05  # seconds after a round before the channels change (the watcher's last tick)


@attrs.frozen(kw_only=True)
class WriteResult:
    """One backend's write phase.

    Attributes:
        backend: ``sqlite`` or ``postgres``.
        channels: channels written each round.
        round_seconds: wall time of each measured round.
        round_cpu: process CPU seconds of each measured round.
        round_starts: trio times the measured rounds began.
        round_rows: checkpoints written by each measured round.
        round_stalls: the longest the event loop was held in each measured round, seconds.
        warmup_seconds: the first round (the inserts).
        written: checkpoints written in all, warm-up included.
        failures: batches the store failed to write.
        stored_ok: sampled channels whose stored checkpoint holds the last round's change.
        sampled: channels sampled.
    """

    backend: str
    channels: int
    round_seconds: list[float]
    round_cpu: list[float]
    round_starts: list[float]
    round_rows: list[int]
    round_stalls: list[float]
    warmup_seconds: float
    written: int
    failures: int
    stored_ok: int
    sampled: int


class _TimedWriter(CheckpointWriter):
    """The node's writer, with each round timed and announced."""

    def __init__(self, store: Store, *, interval: float) -> None:
        super().__init__(store, token=1, interval=interval)
        self.rounds: list[tuple[float, float, float, int]] = []  # start, wall, cpu, rows
        self.stalls: list[float] = []  # per round: the longest the event loop was held
        self.in_round = False
        self.round_done = trio.Event()

    async def flush(self) -> None:
        before = self.statistics().written
        self.stalls.append(0.0)
        self.in_round = True
        start = trio.current_time()
        cpu = time.process_time()
        try:
            await super().flush()
        finally:
            self.in_round = False
        self.rounds.append(
            (
                start,
                trio.current_time() - start,
                time.process_time() - cpu,
                self.statistics().written - before,
            )
        )
        self.round_done.set()
        self.round_done = trio.Event()

    async def watch_stalls(self) -> None:
        """Tick every :data:`TICK` s; a tick that overlaps a round and wakes late is its stall.

        The export and the encoding run in the trio thread: while they do,
        no other task (a send) runs. Lateness is when a tick woke past its
        deadline.
        """
        while True:
            rounds, was_in = len(self.stalls), self.in_round
            began = trio.current_time()
            await trio.sleep(TICK)
            late = trio.current_time() - began - TICK
            if len(self.stalls) > rounds or was_in or self.in_round:
                self.stalls[-1] = max(self.stalls[-1], late)


@attrs.define
class _Busy:
    """A channel's memory and what changes it between rounds."""

    channel_id: str
    memory: ChannelMemory
    step: int = 0


def _busy_channels(count: int, *, peers: int, seen: int, sent: int) -> list[_Busy]:
    settings = ChannelSettings()
    now = trio.current_time()
    rng = random.Random(13)
    busy = []
    for i in range(count):
        channel_id = f"c{i}"
        memory = ChannelMemory(DEFAULT_LIMITS, settings, rng=rng)
        memory.session = SessionState(
            provider="telegram", data={"offset": 100_000 + i, "resume": f"https://p/{i}"}
        )
        for n in range(seen):
            memory.seen.add(f"{channel_id}:in-{n}")
        for n in range(sent):
            memory.sent.put(f"key-{channel_id}-{n}", f"m-{n}", f"peer-{n % max(peers, 1)}")
        for p in range(peers):
            memory.limiter.try_acquire(now, key=f"peer-{p}")
        busy.append(_Busy(channel_id, memory, step=seen))
    return busy


def _change(channel: _Busy, *, peers: int, now: float) -> None:
    """What a busy channel does between two rounds: limiters, an inbound id, a send answer."""
    memory = channel.memory
    channel.step += 1
    step = channel.step
    for p in range(peers):
        memory.limiter.try_acquire(now, key=f"peer-{p}")
    memory.seen.add(f"{channel.channel_id}:in-{step}")
    memory.sent.put(f"key-{channel.channel_id}-{step}", f"m-{step}", f"peer-{step % max(peers, 1)}")
    memory.session = SessionState(
        provider="telegram", data={"offset": 100_000 + step, "resume": channel.channel_id}
    )
    memory.touch()


@contextlib.contextmanager
def _node_collector() -> Iterator[None]:
    """The node's collector policy (``runtime.collection``, ``gc = "tuned"``) over a
    measure: its thresholds, and the channels just built collected and frozen, as a
    node freezes them once they connected. Under CPython's own thresholds a
    process holding 10,000 busy channels spends about as long again in full
    collections, which a node does not: the split's first export of 10,000
    channels measured 53-54 µs a channel under them, 26 µs under the policy
    and 22 µs with the collector off (2026-12-07)."""
    with CollectorPolicy(enabled=True) as policy:
        policy.settle(trio.current_time())
        yield


@contextlib.asynccontextmanager
async def _open(backend: str, workdir: Path, pg_dsn: str) -> AsyncIterator[Store]:
    if backend == "sqlite":
        config = StorageConfig(backend="sqlite", path=str(workdir / "checkpoints.sqlite3"))
        async with open_store(config) as store:
            yield store
        return
    if backend != "postgres":
        raise ScenarioError(f"--backends: expected sqlite or postgres, got {backend!r}")
    schema = f"sb_bench_ckpt_{int(time.time() * 1000) % 10**9}"
    config = StorageConfig(backend="postgres", dsn=pg_dsn, schema=schema)
    try:
        async with open_store(config) as store:
            yield store
    finally:
        with trio.CancelScope(shield=True), contextlib.suppress(OSError):
            await drop_pg_schema(pg_dsn, schema)


async def measure_writes(
    backend: str,
    *,
    channels: int,
    rounds: int,
    interval: float,
    peers: int,
    seen: int,
    sent: int,
    workdir: Path,
    pg_dsn: str,
    progress: Progress,
) -> WriteResult:
    """Run the writer over ``channels`` busy channels for ``rounds`` rounds after the inserts.

    Raises:
        ScenarioError: the store could not be opened (PostgreSQL unreachable).
    """
    progress.phase(f"{backend}: {channels:,} busy channels", total=channels, unit="channels")
    busy = _busy_channels(channels, peers=peers, seen=seen, sent=sent)
    progress.update(channels)
    try:
        with _node_collector():
            async with _open(backend, workdir, pg_dsn) as store:
                writer = _TimedWriter(store, interval=interval)
                for channel in busy:  # attach marks each dirty: the first round inserts them all
                    writer.attach(channel.memory, channel.channel_id, "t0", "telegram")
                progress.phase(f"{backend}: checkpoint rounds", total=rounds + 1, unit="rounds")
                async with trio.open_nursery() as nursery:
                    await nursery.start(writer.run)
                    nursery.start_soon(writer.watch_stalls)
                    while len(writer.rounds) < rounds + 1:
                        await writer.round_done.wait()
                        progress.update(len(writer.rounds))
                        await trio.sleep(SETTLE)  # the round's last late tick is counted first
                        now = trio.current_time()
                        for channel in busy:  # all dirty again, while the writer sleeps
                            _change(channel, peers=peers, now=now)
                    nursery.cancel_scope.cancel()
                stored_ok, sampled = await _check_stored(store, busy)
                stats = writer.statistics()
    except (StoreError, ExceptionGroup) as exc:
        failed = exc if isinstance(exc, StoreError) else exc.subgroup(StoreError)
        if failed is None:
            raise
        raise ScenarioError(
            f"{backend}: the store could not be opened or written ({failed}); "
            "run with --backends sqlite to leave PostgreSQL out"
        ) from None
    warmup, measured = writer.rounds[0], writer.rounds[1 : rounds + 1]
    return WriteResult(
        backend=backend,
        channels=channels,
        round_seconds=[r[1] for r in measured],
        round_cpu=[r[2] for r in measured],
        round_starts=[r[0] for r in measured],
        round_rows=[r[3] for r in measured],
        round_stalls=writer.stalls[1 : rounds + 1],
        warmup_seconds=warmup[1],
        written=stats.written,
        failures=stats.failures,
        stored_ok=stored_ok,
        sampled=sampled,
    )


async def _check_stored(store: Store, busy: list[_Busy]) -> tuple[int, int]:
    """How many of a sample of channels have their last written change in the store.

    The change made after the last measured round is not written (the
    writer was stopped); the one before it is the newest stored.
    """
    sample = busy[:: max(1, len(busy) // 20)]
    ok = 0
    for channel in sample:
        stored = await store.load_checkpoint(channel.channel_id)
        state = None if stored is None else stored.state
        if state is not None and f"{channel.channel_id}:in-{channel.step - 1}" in state.seen:
            ok += 1
    return ok, len(sample)


@attrs.frozen(kw_only=True)
class SplitCost:
    """Where a checkpoint's CPU goes before the store sees it: each channel's first
    checkpoint, then its next after a change (two passes over the channels).

    Attributes:
        export_us: ``export_state`` per channel, µs of CPU.
        encode_us: the stores' encoding (cattrs, JSON) per channel, µs of CPU,
            the first time its send answers are written.
        encode_again_us: the same, when its answers were written before (a
            busy channel's next checkpoint, a second later: each answer is
            encoded once and kept).
        export_next_us: ``export_state`` per channel for its next
            checkpoint, once it did what a busy channel does in a second
            (a send, an inbound id, its limiters used) and a round's
            interval passed, as in the write phase (so its per-peer buckets
            are full again and left out): a round's steady state, where the
            first export walks every window it keeps.
        encode_next_us: that checkpoint's encoding per channel (its one
            new answer encoded, the others' text shifted from the last).
        state_bytes: the encoded state's mean size.
    """

    export_us: float
    encode_us: float
    encode_again_us: float
    export_next_us: float
    encode_next_us: float
    state_bytes: float


def split_cost(count: int, *, peers: int, seen: int, sent: int, interval: float = 1.0) -> SplitCost:
    """Export and encode ``count`` busy channels' first checkpoints, then their next
    ones ``interval`` seconds after a change, timing each step (process CPU)."""
    from actors.channel.durable import export_state
    from runtime.store.durable import Checkpoint, encode_checkpoints

    def exported(busy: list[_Busy], now: float) -> list[Checkpoint]:
        return [
            Checkpoint(
                channel_id=b.channel_id,
                tenant="t0",
                provider="telegram",
                owner_token=1,
                state=export_state(b.memory, now=now, clock_offset=0.0),
            )
            for b in busy
        ]

    async def measure() -> SplitCost:
        busy = _busy_channels(count, peers=peers, seen=seen, sent=sent)
        with _node_collector():
            return timed(busy)

    def timed(busy: list[_Busy]) -> SplitCost:
        now = trio.current_time()
        began = time.process_time()
        items = exported(busy, now)
        first = time.process_time()
        encoded, _ = encode_checkpoints(items)
        done = time.process_time()
        encode_checkpoints(items)
        again = time.process_time()
        for b in busy:
            _change(b, peers=peers, now=now)
        changed = time.process_time()
        items = exported(busy, now + interval)
        next_exported = time.process_time()
        encode_checkpoints(items)
        next_encoded = time.process_time()
        size = sum(len(e.state) for e in encoded) / max(len(encoded), 1)
        return SplitCost(
            export_us=(first - began) / count * 1e6,
            encode_us=(done - first) / count * 1e6,
            encode_again_us=(again - done) / count * 1e6,
            export_next_us=(next_exported - changed) / count * 1e6,
            encode_next_us=(next_encoded - next_exported) / count * 1e6,
            state_bytes=size,
        )

    return trio.run(measure)
