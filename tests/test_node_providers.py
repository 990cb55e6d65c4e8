"""A node imports the providers its config names when it starts.

Otherwise the first channel of each provider paid the import, and the attrs
and cattrs code its modules generate, inside its connect (30-60 ms for the
websocket provider). A provider that cannot be loaded stops only its own
channels, which say why. In a fresh interpreter: the test's own has imported
every provider already.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parent.parent

SCRIPT: Final = """
import sys
import trio
from runtime import open_node, parse_config

config = parse_config(
    {
        "node": {"id": "t", "start_timeout": 0.5},
        "ops": {"enabled": False},
        "providers": {"websocket": {"options": {"url": "ws://127.0.0.1:9/"}}},
        "channels": [{"id": "d", "provider": "discord", "credentials": {"token": "${env:T}"}}],
    },
    env={"T": "discord-token"},
)
# Checking the config imported the providers' option readers: forget them.
for name in [m for m in sys.modules if m.startswith(("providers.websocket", "providers.discord"))]:
    del sys.modules[name]
sys.modules["providers.discord"] = None  # a provider that cannot be imported


async def main():
    async with open_node(config) as node:
        print("websocket imported:", "providers.websocket.shell" in sys.modules)
        [discord] = node.channels()
        print("discord:", discord.status.value, discord.start_error)


trio.run(main)
"""


def test_a_node_imports_the_providers_it_names_and_one_that_fails_stops_only_its_channels() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "websocket imported: True" in lines, result.stdout
    assert "discord: failed ModuleNotFoundError: import of providers.discord halted" in (
        result.stdout
    )
