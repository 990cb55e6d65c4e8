"""The four platform emulators in a process of their own, for the benches that judge by them.

Design:
- ``python -m bench.platforms`` reads a :class:`PlatformsSpec` as JSON on
  its standard input, serves the websocket, Telegram, Discord and WhatsApp
  emulators on 127.0.0.1, prints one line ``platforms: name=url ...`` and
  runs until it is terminated. :func:`open_platforms` runs it for a block.
- A process of its own because the emulators are the judges: what they
  keep (every message sent, the backlogs) must not count in a node's RSS,
  their CPU (thousands of websockets heartbeating) must not slow the
  process that measures, and on a 2-core machine they get the other core.
- The spec goes on standard input, not the command line: a rig's
  websocket tokens are thousands (an argument is capped at 128 KiB).
- Once they serve, the process freezes what start-up built and collects
  young objects less often (``runtime.collection.freeze_start_up``): the
  judges' collector pauses must not be the clients' tail latency.
- Everything a bench does to them (inject, faults, reading what was sent
  and who held which connection) goes through each emulator's control
  API over HTTP (:class:`~bench.rig.EmulatorControl`), as a test or a
  person would. With ``keep_all`` the ledger keeps every message
  (``max_kept = None``) and is read back in pages (``/_emulator/sent?offset=``).
"""

from __future__ import annotations

import contextlib
import json
import resource
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any, Final

import attrs
import cattrs
import trio

from .scenario import ScenarioError

__all__ = ["PLATFORMS", "PlatformsSpec", "main", "open_platforms", "reap"]

PLATFORMS: Final = ("websocket", "telegram", "discord", "whatsapp")
STARTUP_TIMEOUT: Final = 60.0  # seconds for the process to listen
PREFIX: Final = "platforms: "
COLLECTOR: Final = "collector: "  # the line before, once its start-up is frozen
OPEN_FILES: Final = 20_000  # the most this machine allows a process (a socket per connection)
UNLIMITED: Final = 10**9  # sends a second (or a burst) that no load reaches: a limit that is off

_converter: Final = cattrs.Converter()  # the spec's own wire format: JSON on stdin


@attrs.frozen(kw_only=True)
class PlatformsSpec:
    """How the platforms process sets its emulators up.

    Attributes:
        websocket_tokens: the tokens the websocket emulator accepts
            (``None``: any non-empty token).
        heartbeat_interval: seconds between the websocket and Discord
            emulators' heartbeats (``None``: each emulator's default).
        client_timeout: seconds a websocket or Discord client may stay
            silent before the emulator takes it for dead (``None``: the
            emulators' defaults).
        whatsapp_app_secret: signs the WhatsApp emulator's webhooks.
        whatsapp_numbers: the phone number ids the WhatsApp emulator knows
            (``None``, the default: any id; an empty tuple: none).
        whatsapp_redeliver: the WhatsApp emulator delivers a webhook again
            after a non-2xx answer, as Meta does.
        keep_all: keep every message sent (the emulators' cap lifted), for
            a bench's ledger.
        latency: seconds every emulator holds back its answers, a round
            trip (:mod:`providers.emulators.latency`; 0: none).
        limits: the Telegram and WhatsApp emulators refuse what the platforms
            would (per bot, number, chat and recipient, with 429 or 130429 and
            kin); off, they accept whatever comes, so that a closed-loop load
            runs as fast as the client does and never waits on a limiter.
    """

    websocket_tokens: tuple[str, ...] | None = None
    heartbeat_interval: float | None = None
    client_timeout: float | None = None
    whatsapp_app_secret: str = "platforms-whatsapp-app-secret"
    whatsapp_numbers: tuple[str, ...] | None = None
    whatsapp_redeliver: bool = False
    keep_all: bool = True
    latency: float = 0.0
    limits: bool = True


def _emulators(spec: PlatformsSpec) -> dict[str, Any]:
    from providers.emulators.discord import DiscordEmulator
    from providers.emulators.telegram import TelegramEmulator
    from providers.emulators.websocket import WebSocketEmulator
    from providers.emulators.whatsapp import WhatsAppEmulator

    heartbeat: dict[str, Any] = {}
    discord: dict[str, Any] = {}
    if spec.heartbeat_interval is not None:
        heartbeat["heartbeat_interval"] = spec.heartbeat_interval
        discord["heartbeat_interval"] = spec.heartbeat_interval
    if spec.client_timeout is not None:
        heartbeat["client_timeout"] = spec.client_timeout
        discord["heartbeat_timeout"] = spec.client_timeout
    telegram: dict[str, Any] = {}
    whatsapp: dict[str, Any] = {}
    if not spec.limits:
        telegram = {"bot_rate": UNLIMITED, "chat_interval": 0.0, "group_per_minute": UNLIMITED}
        whatsapp = {"throughput": UNLIMITED, "pair_burst": UNLIMITED}
    emulators = {
        "websocket": WebSocketEmulator(tokens=spec.websocket_tokens, **heartbeat),
        "telegram": TelegramEmulator(**telegram),
        "discord": DiscordEmulator(**discord),
        "whatsapp": WhatsAppEmulator(
            app_secret=spec.whatsapp_app_secret,
            phone_number_ids=None if spec.whatsapp_numbers is None else set(spec.whatsapp_numbers),
            redeliver=spec.whatsapp_redeliver,
            **whatsapp,
        ),
    }
    for emulator in emulators.values():
        emulator.latency = spec.latency
    return emulators


async def _serve(spec: PlatformsSpec, port_base: int) -> None:
    from providers.emulators.base import serve_emulator
    from runtime.collection import freeze_start_up

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = OPEN_FILES if hard == resource.RLIM_INFINITY else min(OPEN_FILES, hard)
    if wanted > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    emulators = _emulators(spec)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            urls = []
            for n, (name, emulator) in enumerate(emulators.items()):
                if spec.keep_all:
                    emulator.max_kept = None  # the ledger reads every message sent
                port = port_base + n if port_base else 0
                url = await nursery.start(
                    lambda task_status, e=emulator, p=port: serve_emulator(
                        e, port=p, task_status=task_status
                    )
                )
                urls.append(f"{name}={url}")
            frozen = freeze_start_up()  # the judges' collector pauses would be the clients' tail
            print(f"{COLLECTOR}{frozen} start-up objects frozen")
            print(PREFIX + " ".join(urls), flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


def run_platforms(spec: PlatformsSpec, port_base: int = 0) -> None:
    """Serve the platforms in this process until SIGTERM or SIGINT."""
    trio.run(_serve, spec, port_base)


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.platforms [port_base] < spec.json``."""
    args = sys.argv[1:] if argv is None else argv
    spec = _converter.structure(json.loads(sys.stdin.read()), PlatformsSpec)
    run_platforms(spec, int(args[0]) if args else 0)
    return 0


@contextlib.asynccontextmanager
async def open_platforms(
    spec: PlatformsSpec, *, port_base: int = 0
) -> AsyncIterator[tuple[dict[str, str], int]]:
    """Run the platforms process for the block; yield ({platform: url}, pid).

    Args:
        spec: how the emulators are set up.
        port_base: the first of four ports, one per platform (0: any free ports).

    Raises:
        ScenarioError: it did not start listening in time.
    """
    command = [sys.executable, "-m", "bench.platforms", str(port_base)]
    # A harness killed outright (SIGTERM, the watchdog) kills its children
    # first (bench.__main__); a normal exit ends this one below.
    process = await trio.lowlevel.open_process(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None
    )
    try:
        assert process.stdin is not None and process.stdout is not None
        await process.stdin.send_all(json.dumps(_converter.unstructure(spec)).encode())
        await process.stdin.aclose()
        yield await _read_urls(process.stdout), process.pid
    finally:
        await reap(process)


async def reap(process: trio.Process, *, grace: float = 5.0) -> None:
    """Ask a child process to end, kill it after ``grace`` seconds, and wait for it.

    Shielded: a block left by a cancel still reaps its child.
    """
    process.terminate()
    with trio.CancelScope(shield=True):
        with trio.move_on_after(grace):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _read_urls(stream: Any) -> dict[str, str]:
    """The platforms' URLs, from the process's ``platforms:`` line."""
    line = (await _read_start(stream))[-1]
    return dict(item.split("=", 1) for item in line[len(PREFIX) :].split())


async def _read_start(stream: Any) -> list[str]:
    """What the platforms process printed up to its ``platforms:`` line, that one last
    (its collector's line comes before it).

    Raises:
        ScenarioError: no such line within :data:`STARTUP_TIMEOUT`.
    """
    buffer = b""
    with trio.move_on_after(STARTUP_TIMEOUT):
        while True:
            lines = buffer.decode(errors="replace").split("\n")[:-1]  # the complete ones
            for at, line in enumerate(lines):
                if line.startswith(PREFIX):
                    return lines[: at + 1]
            chunk = await stream.receive_some()
            if not chunk:
                break
            buffer += chunk
    raise ScenarioError(
        f"the platforms process did not start within {STARTUP_TIMEOUT:.0f} s; "
        f"it printed: {buffer.decode(errors='replace')[-400:]!r}"
    )


if __name__ == "__main__":
    sys.exit(main())
