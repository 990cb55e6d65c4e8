"""Discord gateway transport compression in the ``channels`` scenario: bytes and CPU per event.

Design:
- One phase per mode (``none``, ``zlib-stream``, ``zstd-stream``), in one
  run and one node, against one Discord emulator (a separate process by
  default, so the node's CPU is the client's alone): start the phase's
  channels with ``options.compress`` set, wait until every one is
  connected, inject ``events`` messages (each reaches every channel as a
  MESSAGE_CREATE dispatch), wait until the node has received every one,
  then stop the channels before the next mode.
- Per dispatch: the bytes on the wire and the JSON they carry (the
  emulator's ``gateway_wire_bytes`` / ``gateway_payload_bytes`` counters,
  read before and after), the node's CPU (decompression, JSON, events) and
  the emulator's (compression). The figures are each mode beside ``none``
  in the same run: ratios, not absolute claims.
- Each message's text is different and made of seeded random words, so the
  stream does not flatter compression with repeated content; what still
  compresses is Discord's JSON around it (keys, ids, the author, the member).
"""

from __future__ import annotations

import random
import string
from typing import Final

import attrs
import trio

from .report import Figure
from .rig import Rig, cpu_seconds
from .scenario import RunContext, ScenarioError

__all__ = ["MODES", "CompressionPhase", "compression_figures", "measure_compression"]

MODES: Final = ("none", "zlib-stream", "zstd-stream")
CHANNEL: Final = "300000000000000001"  # the emulated guild's text channel


@attrs.frozen(kw_only=True)
class CompressionPhase:
    """One mode's results.

    Attributes:
        mode: ``none``, ``zlib-stream`` or ``zstd-stream``.
        dispatches: events the node received (injects times channels).
        wire_bytes: bytes the emulator wrote to the gateway sockets.
        payload_bytes: the JSON those bytes carried.
        node_cpu: node process CPU seconds over the phase's receive window.
        emulator_cpu: emulator process CPU seconds (None when in-process).
    """

    mode: str
    dispatches: int
    wire_bytes: int
    payload_bytes: int
    node_cpu: float
    emulator_cpu: float | None

    def per_event(self, total: float) -> float:
        return total / self.dispatches if self.dispatches else float("nan")


async def measure_compression(
    rig: Rig,
    *,
    modes: list[str],
    channels: int,
    events: int,
    text_size: int,
    ctx: RunContext,
) -> list[CompressionPhase]:
    """Run one receive phase per mode; see the module docstring.

    Raises:
        ScenarioError: the rig is not Discord's, or a mode is unknown.
    """
    if rig.provider != "discord" or rig.emulator is None:
        raise ScenarioError("compression: measured on discord channels only")
    unknown = [mode for mode in modes if mode not in MODES]
    if unknown:
        raise ScenarioError(f"compressions: {unknown} not among {', '.join(MODES)}")
    results = []
    for number, mode in enumerate(modes):
        results.append(
            await _phase(
                rig, mode, number, channels=channels, events=events, text=text_size, ctx=ctx
            )
        )
    return results


async def _phase(
    rig: Rig, mode: str, number: int, *, channels: int, events: int, text: int, ctx: RunContext
) -> CompressionPhase:
    assert rig.emulator is not None
    ids = []
    for index in range(channels):
        base = rig.spec(10_000 * (number + 1) + index)
        spec = attrs.evolve(base, id=f"z{number}-{index:04d}", options={"compress": mode})
        await rig.node.start_channel(spec)
        ids.append(spec.id)
    ctx.progress.phase(f"compression {mode}: {channels} channels, {events} injects")
    with trio.move_on_after(60.0) as waited:
        await rig.states.wait_connected(channels)  # the earlier phases' are stopped
    if waited.cancelled_caught:
        raise ScenarioError(
            f"compression {mode}: {rig.states.connected} of {channels} channels connected "
            f"within 60 s; statuses {dict(rig.states.statuses())}"
        )
    rng = random.Random(0)  # every mode's phase sends the same texts
    received = [0]
    expected = events * channels
    done = trio.Event()
    with rig.node.subscribe(channel=ids, kind="inbound", buffer=expected + 1_000) as inbound:

        async def count() -> None:
            async for _ in inbound:
                received[0] += 1
                if received[0] >= expected:
                    done.set()
                    return

        before = await rig.emulator.stats()
        cpu0, emu0 = cpu_seconds(), rig.emulator.cpu_seconds()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(count)
            for _ in range(events):
                await rig.emulator.inject(channel_id=CHANNEL, content=_text(rng, text))
            with trio.move_on_after(max(30.0, ctx.remaining() / 4)):
                await done.wait()
            nursery.cancel_scope.cancel()
        cpu1, emu1 = cpu_seconds(), rig.emulator.cpu_seconds()
        after = await rig.emulator.stats()
    for channel_id in ids:
        await rig.node.stop_channel(channel_id)
    return CompressionPhase(
        mode=mode,
        dispatches=received[0],
        wire_bytes=after.get("gateway_wire_bytes", 0) - before.get("gateway_wire_bytes", 0),
        payload_bytes=after.get("gateway_payload_bytes", 0)
        - before.get("gateway_payload_bytes", 0),
        node_cpu=cpu1 - cpu0,
        emulator_cpu=None if emu0 is None or emu1 is None else emu1 - emu0,
    )


def _text(rng: random.Random, size: int) -> str:
    """``size`` characters of random words (lowercase, 2-9 letters each)."""
    words: list[str] = []
    length = 0
    while length < size:
        word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 9)))
        words.append(word)
        length += len(word) + 1
    return " ".join(words)[:size]


def compression_figures(phases: list[CompressionPhase]) -> list[Figure]:
    """Bytes and CPU per event for each mode, beside ``none`` where it ran."""
    plain = next((p for p in phases if p.mode == "none"), None)
    figures: list[Figure] = []
    for phase in phases:
        key = phase.mode.replace("-", "_")
        rows = [
            ("wire_bytes", "bytes on the wire per event", "B", phase.per_event(phase.wire_bytes)),
            (
                "node_cpu",
                "node CPU per event (read, decompress, JSON, publish)",
                "µs",
                phase.per_event(phase.node_cpu) * 1e6,
            ),
        ]
        if phase.emulator_cpu is not None:
            rows.append(
                (
                    "emulator_cpu",
                    "emulator CPU per event (JSON, compress, send)",
                    "µs",
                    phase.per_event(phase.emulator_cpu) * 1e6,
                )
            )
        for name, label, unit, value in rows:
            base = None
            if plain is not None and phase is not plain:
                base = {
                    "wire_bytes": plain.per_event(plain.wire_bytes),
                    "node_cpu": plain.per_event(plain.node_cpu) * 1e6,
                    "emulator_cpu": (
                        plain.per_event(plain.emulator_cpu) * 1e6
                        if plain.emulator_cpu is not None
                        else None
                    ),
                }[name]
            if base is None:
                figures.append(
                    Figure.single(
                        name=f"gateway_{key}_{name}",
                        label=f"discord {phase.mode}: {label}",
                        unit=unit,
                        value=value,
                        better="lower",
                    )
                )
            else:
                figures.append(
                    Figure.from_samples(
                        name=f"gateway_{key}_{name}",
                        label=f"discord {phase.mode}: {label}",
                        unit=unit,
                        samples=[value],
                        baseline_samples=[base],
                        baseline_label="uncompressed, same run",
                        better="lower",
                    )
                )
        figures.append(
            Figure.single(
                name=f"gateway_{key}_payload_bytes",
                label=f"discord {phase.mode}: JSON bytes per event",
                unit="B",
                value=phase.per_event(phase.payload_bytes),
                better="lower",
            )
        )
    return figures
