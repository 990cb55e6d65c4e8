"""``switchboard run``: a node from a deployment file, until a signal.

Design: this is a thin user of :func:`runtime.node.open_node`, as an
embedding program would be. It owns what only a process owns: the log
handler, the profiler, and the signals. The first SIGINT or SIGTERM drains
the node within ``[node] drain_deadline`` and exits 0; a second one stops at
once and exits 1. What the user needs to get going (the ops URL, the
emulators' control APIs) goes to stdout; everything else is the log (stderr).
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import AsyncIterator
from typing import Final

import trio

from .config.model import NodeConfig
from .node import Node, open_node
from .telemetry import configure_logging, start_profiling

__all__ = ["describe", "run_node"]

log = logging.getLogger("switchboard.node")

EXIT_OK: Final = 0
EXIT_STOPPED_AT_ONCE: Final = 1  # a second signal cut the drain short
EXIT_FAILED: Final = 1  # the node could not run


def run_node(config: NodeConfig) -> int:
    """Run a node until SIGINT/SIGTERM; returns the process exit code."""
    logs = configure_logging(config.logging, node_id=config.node.id, secrets=config.secrets())
    for notice in config.deprecations:
        log.warning("%s: %s", config.source, notice)
    profiler = start_profiling(config.profiling, node_id=config.node.id)
    try:
        return trio.run(_serve, config)
    except Exception as exc:
        reason = describe(exc)
        log.debug("node %s stopped", config.node.id, exc_info=True)
        log.critical("node %s stopped: %s", config.node.id, reason)
        print(f"switchboard: node {config.node.id!r} stopped: {reason}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if profiler is not None:
            # The agent's last upload may wait on the server: bounded here.
            trio.run(profiler.aclose)
        logs.close()


class _StopAtOnce(Exception):
    """A second signal arrived while draining."""


async def _serve(config: NodeConfig) -> int:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        try:
            async with open_node(config) as node:
                _banner(node)
                first = await signals.__anext__()
                log.info(
                    "%s: draining (deadline %g s); send it again to stop at once",
                    signal.Signals(first).name,
                    config.node.drain_deadline,
                )
                await _drain_unless_signalled(node, signals)
        except _StopAtOnce:
            return EXIT_STOPPED_AT_ONCE
    return EXIT_OK


async def _drain_unless_signalled(node: Node, signals: AsyncIterator[int]) -> None:
    interrupted = False
    async with trio.open_nursery() as nursery:

        async def second_signal() -> None:
            nonlocal interrupted
            again = await signals.__anext__()
            log.warning("%s again: stopping at once", signal.Signals(again).name)
            interrupted = True
            nursery.cancel_scope.cancel()

        nursery.start_soon(second_signal)
        await node.drain()
        nursery.cancel_scope.cancel()
    if interrupted:
        raise _StopAtOnce


def describe(exc: BaseException) -> str:
    """What went wrong, in one line: the leaves of exception groups, each with its cause."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(dict.fromkeys(describe(inner) for inner in exc.exceptions))
    text = f"{type(exc).__name__}: {exc}"
    cause = exc.__cause__
    if cause is not None and str(cause) not in text:
        text += f" (caused by {describe(cause)})"
    return text


def _banner(node: Node) -> None:
    lines = [f"switchboard node {node.node_id!r} running"]
    if node.ops_url:
        lines.append(f"  ops HTTP:   {node.ops_url}  (/health, /metrics, /readyz, /healthz)")
    for platform, url in sorted(node.emulator_urls.items()):
        lines.append(f"  {platform + ' emulator:':<20} {url}  (control API {url}/_emulator/)")
    snapshots = node.channels()
    started = sum(1 for s in snapshots if s.start_error is None)
    lines.append(f"  channels:   {started}/{len(snapshots)} started")
    lines.append("  stop with Ctrl-C or SIGTERM (graceful drain)")
    print("\n".join(lines), flush=True)
    sys.stdout.flush()
