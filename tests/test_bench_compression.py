"""The channels scenario's compression phase: its parameters and its figures."""

from __future__ import annotations

import pytest

from bench.channels import ChannelsParams
from bench.channels_compression import CompressionPhase, compression_figures


def phase(mode: str, wire: int, cpu: float, emulator: float | None = 1.0) -> CompressionPhase:
    return CompressionPhase(
        mode=mode,
        dispatches=1_000,
        wire_bytes=wire,
        payload_bytes=800_000,
        node_cpu=cpu,
        emulator_cpu=emulator,
    )


def test_compression_is_measured_for_discord_only() -> None:
    with pytest.raises(ValueError, match="compressions: measured for discord channels only"):
        ChannelsParams(provider="websocket", compressions=["zlib-stream"])
    with pytest.raises(ValueError, match="compression_events"):
        ChannelsParams(provider="discord", compressions=["none"], compression_events=0)
    assert ChannelsParams(provider="discord", compressions=["none", "zstd-stream"])


def test_each_mode_is_beside_uncompressed_in_the_same_run() -> None:
    figures = {
        f.name: f
        for f in compression_figures(
            [phase("none", 900_000, 0.5), phase("zstd-stream", 45_000, 0.25, 0.5)]
        )
    }
    plain, zstd = figures["gateway_none_wire_bytes"], figures["gateway_zstd_stream_wire_bytes"]
    assert (plain.value, plain.baseline) == (900.0, None)
    assert (zstd.value, zstd.baseline, zstd.ratio) == (45.0, 900.0, 0.05)
    cpu = figures["gateway_zstd_stream_node_cpu"]
    assert (cpu.value, cpu.baseline, cpu.ratio) == (250.0, 500.0, 0.5)  # µs per event
    assert figures["gateway_zstd_stream_emulator_cpu"].ratio == 0.5
    assert figures["gateway_zstd_stream_payload_bytes"].value == 800.0


def test_without_an_uncompressed_phase_the_figures_stand_alone() -> None:
    [wire, cpu, payload] = compression_figures([phase("zlib-stream", 50_000, 0.3, None)])
    assert (wire.value, wire.baseline) == (50.0, None)
    assert cpu.name == "gateway_zlib_stream_node_cpu" and cpu.baseline is None
    assert payload.name == "gateway_zlib_stream_payload_bytes"
