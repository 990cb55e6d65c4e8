"""The chaos scenario's platforms: all four emulators in a process of their own.

Design:
- The process is :mod:`bench.platforms` (shared with the cluster rig);
  ``python -m bench.chaos_platforms --websocket N --telegram N --discord N
  --whatsapp N`` runs it with the chaos scenario's identities and prints
  one line ``platforms: name=url ...``.
- The identities are made up here, by index, and the bench names its
  channels' credentials with the same functions (:func:`token`,
  :func:`wa_number`), so the two processes agree without a file between
  them.
- Everything the bench does to them (inject, faults, reading what was
  sent) goes through each emulator's control API over HTTP
  (:class:`~bench.rig.EmulatorControl`), as a test or a person would.
  The ledger keeps every message and reads them back in pages
  (``/_emulator/sent?offset=``).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Final

from .platforms import PLATFORMS, PlatformsSpec, run_platforms
from .platforms import open_platforms as open_platforms_process

__all__ = [
    "PLATFORMS",
    "WA_APP_SECRET",
    "WA_VERIFY_TOKEN",
    "main",
    "open_platforms",
    "spec",
    "token",
    "wa_number",
]

WA_APP_SECRET: Final = "chaos-whatsapp-app-secret"
WA_VERIFY_TOKEN: Final = "chaos-whatsapp-verify-token"
WA_NUMBER_BASE: Final = 2_000_000  # channel i's phone number id is this + i


def token(provider: str, index: int) -> str:
    """The made-up platform token of channel ``index`` of ``provider``."""
    if provider == "telegram":  # the Bot API's shape: <bot id>:<35 characters>
        return f"{300_000 + index}:{index:035d}"
    return f"chaos-{provider[:2]}-{index:05d}"


def wa_number(index: int) -> str:
    """The phone number id of WhatsApp channel ``index``."""
    return str(WA_NUMBER_BASE + index)


def spec(counts: dict[str, int], latency: float = 0.0) -> PlatformsSpec:
    """The emulators for ``counts`` channels per platform, the chaos scenario's way
    (``latency``: seconds each holds its answers back)."""
    return PlatformsSpec(
        websocket_tokens=tuple(token("websocket", i) for i in range(counts.get("websocket", 0))),
        whatsapp_app_secret=WA_APP_SECRET,
        whatsapp_numbers=tuple(wa_number(i) for i in range(counts.get("whatsapp", 0))),
        whatsapp_redeliver=True,  # Meta retries a webhook the node answered 503 (store outage)
        keep_all=True,
        latency=latency,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos_platforms")
    for name in PLATFORMS:
        parser.add_argument(f"--{name}", type=int, default=0, help=f"{name} channels")
    parser.add_argument("--port-base", type=int, default=0, help="first port (0: any)")
    args = parser.parse_args(argv)
    run_platforms(spec({name: getattr(args, name) for name in PLATFORMS}), args.port_base)
    return 0


@contextlib.asynccontextmanager
async def open_platforms(
    counts: dict[str, int], *, port_base: int = 0, latency: float = 0.0
) -> AsyncIterator[tuple[dict[str, str], int]]:
    """Run the platforms process for the block; yield ({platform: url}, pid).

    Raises:
        ScenarioError: it did not start listening in time.
    """
    async with open_platforms_process(spec(counts, latency), port_base=port_base) as opened:
        yield opened


if __name__ == "__main__":
    sys.exit(main())
