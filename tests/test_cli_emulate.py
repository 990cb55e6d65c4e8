"""`switchboard emulate PLATFORM` runs until interrupted and serves its control API,
its start-up heap frozen."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import httpx
import pytest
import trio

CEILING = 30.0  # seconds; only a hang gets near it


@pytest.mark.parametrize("platform", ["discord", "telegram", "whatsapp", "websocket"])
async def test_emulate_serves_until_interrupted(platform: str) -> None:
    command = [sys.executable, "-c", "from runtime.cli import main; raise SystemExit(main())"]
    with trio.fail_after(CEILING):
        process = await trio.lowlevel.open_process(
            [*command, "emulate", platform, "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            assert process.stdout is not None
            output = b""
            while b"press Ctrl-C" not in output:
                chunk = await process.stdout.receive_some(4096)
                assert chunk, f"the emulator exited early: {output.decode()}"
                output += chunk
            match = re.search(rb"listening on (http://127\.0\.0\.1:\d+)", output)
            assert match, output.decode()
            # Its collector tuned once it serves (runtime.collection.freeze_start_up).
            assert re.search(rb"collector: [\d,]+ start-up objects frozen", output), output
            async with httpx.AsyncClient(base_url=match.group(1).decode()) as client:
                response = await client.get("/_emulator/stats")
                assert response.status_code == 200
                assert isinstance(response.json(), dict)
                bad = await client.post("/_emulator/fault", json={"kind": "no-such-fault"})
                assert bad.status_code == 400 and "no-such-fault" in bad.json()["error"]
            process.send_signal(signal.SIGINT)
            assert await process.wait() == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
