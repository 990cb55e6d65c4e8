"""The chaos scenario's platforms: all four emulators in a process of their own.

Design:
- ``python -m bench.chaos_platforms --websocket N --telegram N --discord N
  --whatsapp N`` serves the websocket, Telegram, Discord and WhatsApp
  emulators on 127.0.0.1, prints one line ``chaos platforms: name=url ...``
  and runs until it is terminated. A process of its own because the
  emulators are the judges: what they keep (every message sent, the
  backlogs) must not count in the node's RSS, and on a 2-core machine they
  get the other core.
- The identities are made up here, by index, and the bench names its
  channels' credentials with the same functions (:func:`token`,
  :func:`wa_number`), so the two processes agree without a file between
  them.
- Everything the bench does to them (inject, faults, reading what was
  sent) goes through each emulator's control API over HTTP
  (:class:`~bench.rig.EmulatorControl`), as a test or a person would.
  The ledger keeps every message (``max_kept = None``) and reads them back
  in pages (``/_emulator/sent?offset=``).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final

import trio

from .scenario import ScenarioError

__all__ = [
    "PLATFORMS",
    "WA_APP_SECRET",
    "WA_VERIFY_TOKEN",
    "main",
    "open_platforms",
    "token",
    "wa_number",
]

PLATFORMS: Final = ("websocket", "telegram", "discord", "whatsapp")
WA_APP_SECRET: Final = "chaos-whatsapp-app-secret"
WA_VERIFY_TOKEN: Final = "chaos-whatsapp-verify-token"
WA_NUMBER_BASE: Final = 2_000_000  # channel i's phone number id is this + i
STARTUP_TIMEOUT: Final = 60.0  # seconds for the process to listen
PREFIX: Final = "chaos platforms: "


def token(provider: str, index: int) -> str:
    """The made-up platform token of channel ``index`` of ``provider``."""
    if provider == "telegram":  # the Bot API's shape: <bot id>:<35 characters>
        return f"{300_000 + index}:{index:035d}"
    return f"chaos-{provider[:2]}-{index:05d}"


def wa_number(index: int) -> str:
    """The phone number id of WhatsApp channel ``index``."""
    return str(WA_NUMBER_BASE + index)


async def _serve(counts: dict[str, int], port_base: int) -> None:
    from providers.emulators.base import Emulator, serve_emulator
    from providers.emulators.discord import DiscordEmulator
    from providers.emulators.telegram import TelegramEmulator
    from providers.emulators.websocket import WebSocketEmulator
    from providers.emulators.whatsapp import WhatsAppEmulator

    emulators: dict[str, Emulator] = {
        "websocket": WebSocketEmulator(
            tokens={token("websocket", i) for i in range(counts["websocket"])}
        ),
        "telegram": TelegramEmulator(),
        "discord": DiscordEmulator(),
        "whatsapp": WhatsAppEmulator(
            app_secret=WA_APP_SECRET,
            phone_number_ids={wa_number(i) for i in range(counts["whatsapp"])},
            redeliver=True,  # Meta retries a webhook the node answered 503 (store outage)
        ),
    }
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            urls = []
            for n, (name, emulator) in enumerate(emulators.items()):
                emulator.max_kept = None  # the ledger reads every message sent
                port = port_base + n if port_base else 0
                url = await nursery.start(
                    lambda task_status, e=emulator, p=port: serve_emulator(
                        e, port=p, task_status=task_status
                    )
                )
                urls.append(f"{name}={url}")
            print(PREFIX + " ".join(urls), flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos_platforms")
    for name in PLATFORMS:
        parser.add_argument(f"--{name}", type=int, default=0, help=f"{name} channels")
    parser.add_argument("--port-base", type=int, default=0, help="first port (0: any)")
    args = parser.parse_args(argv)
    counts = {name: getattr(args, name) for name in PLATFORMS}
    trio.run(_serve, counts, args.port_base)
    return 0


@contextlib.asynccontextmanager
async def open_platforms(
    counts: dict[str, int], *, port_base: int = 0
) -> AsyncIterator[tuple[dict[str, str], int]]:
    """Run the platforms process for the block; yield ({platform: url}, pid).

    Raises:
        ScenarioError: it did not start listening in time.
    """
    command = [sys.executable, "-m", "bench.chaos_platforms", "--port-base", str(port_base)]
    for name in PLATFORMS:
        command += [f"--{name}", str(counts.get(name, 0))]
    process = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE, stderr=None)
    try:
        assert process.stdout is not None
        yield await _read_urls(process.stdout), process.pid
    finally:
        process.terminate()
        with trio.move_on_after(5):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _read_urls(stream: Any) -> dict[str, str]:
    buffer = b""
    with trio.move_on_after(STARTUP_TIMEOUT):
        while b"\n" not in buffer:
            chunk = await stream.receive_some()
            if not chunk:
                break
            buffer += chunk
    line = buffer.decode(errors="replace").split("\n", 1)[0]
    if not line.startswith(PREFIX):
        raise ScenarioError(
            f"the chaos platforms process did not start within {STARTUP_TIMEOUT:.0f} s; "
            f"it printed: {buffer.decode(errors='replace')[-400:]!r}"
        )
    return dict(item.split("=", 1) for item in line[len(PREFIX) :].split())


if __name__ == "__main__":
    sys.exit(main())
