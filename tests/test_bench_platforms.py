"""The benches' platforms process (``python -m bench.platforms``): the four
emulators served, its collector tuned once they serve, its URLs read back."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import httpx
import trio

from bench.platforms import (
    COLLECTOR,
    PLATFORMS,
    PlatformsSpec,
    _converter,
    _read_start,
    open_platforms,
    reap,
)

CEILING = 60.0  # seconds; only a hang gets near it


async def test_the_platforms_process_freezes_its_start_up_before_it_says_where_it_serves() -> None:
    with trio.fail_after(CEILING):
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "bench.platforms"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        try:
            assert process.stdin is not None and process.stdout is not None
            spec = _converter.unstructure(PlatformsSpec())
            await process.stdin.send_all(json.dumps(spec).encode())
            await process.stdin.aclose()
            lines = await _read_start(process.stdout)
        finally:
            await reap(process)
    collector = [line for line in lines if line.startswith(COLLECTOR)]
    assert len(collector) == 1, lines
    frozen = re.fullmatch(r"collector: (\d+) start-up objects frozen", collector[0])
    assert frozen is not None and int(frozen.group(1)) > 10_000, collector  # the web stack


async def test_the_urls_are_read_past_the_collector_s_line() -> None:
    with trio.fail_after(CEILING):
        async with open_platforms(PlatformsSpec()) as (urls, _):
            assert set(urls) == set(PLATFORMS)
            async with httpx.AsyncClient() as client:
                stats = await client.get(f"{urls['telegram']}/_emulator/stats")
                assert stats.status_code == 200
