"""``switchboard run``: a node from a deployment file, until a signal.

Design: this is a thin user of :func:`runtime.node.open_node`, as an
embedding program would be. It owns what only a process owns: the log
handler, the profiler, and the signals. What the user needs to get going
(the ops URL, the emulators' control APIs) goes to stdout; everything else
is the log (stderr).

Exit codes, as shells and service managers read them: 0 after a clean
drain (the first SIGINT or SIGTERM drains within ``[node] drain_deadline``);
2 for a bad configuration (the CLI, before this; or a setting that names
something invalid, such as a TLS file that is not one); 128 + the signal
(130 for SIGINT, 143 for SIGTERM) when a second signal cuts the drain short;
1 for any other failure (a port in use, an unreachable database, a crash).
A failure is one log line, once: what, where, and the setting to change;
no traceback, no internal repr (the traceback is logged at debug level).
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import AsyncIterator
from typing import Final, TypeVar

import trio

from .config.model import NodeConfig
from .errors import StartupFailed, StoreError
from .node import Node, open_node
from .telemetry import LogHandle, configure_logging, start_profiling

__all__ = ["describe", "run_node"]

log = logging.getLogger("switchboard.node")

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1  # the node could not run
EXIT_SIGNALLED: Final = 128  # + the signal that cut the drain short (130 SIGINT, 143 SIGTERM)


def run_node(config: NodeConfig) -> int:
    """Run a node until SIGINT/SIGTERM; returns the process exit code."""
    logs = configure_logging(config.logging, node_id=config.node.id, secrets=config.secrets())
    for notice in config.deprecations:
        log.warning("%s: %s", config.source, notice)
    profiler = start_profiling(config.profiling, node_id=config.node.id)
    started = trio.Event()  # set once the node runs; only an event's flag is read
    try:
        return trio.run(_serve, config, started, logs)
    except Exception as exc:
        stopped = _find(exc, _StopAtOnce)
        if stopped is not None:  # out of a nursery, in a group
            return EXIT_SIGNALLED + stopped.signum
        log.debug("node %s stopped", config.node.id, exc_info=True)
        startup = _startup_failure(exc)
        store = _find(exc, StoreError)
        if startup is None and store is not None and not started.is_set():
            # The store is opened first: it cannot be reached at all.
            startup = StartupFailed(str(store), setting="storage.dsn")
        if startup is not None:
            log.critical(
                "cannot start: %s",
                startup,
                extra={
                    "error.type": type(startup).__name__,
                    "switchboard.setting": startup.setting,
                    **startup.fields,
                },
            )
            return startup.exit_code
        log.critical(
            "node %s stopped: %s",
            config.node.id,
            describe(exc),
            extra={"error.type": type(_leaf(exc)).__name__},
        )
        return EXIT_FAILED
    finally:
        if profiler is not None:
            # The agent's last upload may wait on the server: bounded here.
            trio.run(profiler.aclose)
        logs.close()


class _StopAtOnce(Exception):
    """A second signal arrived while draining."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


async def _serve(config: NodeConfig, started: trio.Event, logs: LogHandle) -> int:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        try:
            async with open_node(config) as node, trio.open_nursery() as services:
                node.on_new_secrets(logs.add_secrets)
                started.set()
                admin: tuple[str, ...] = ()
                if config.admin is not None:
                    from .console import serve_admin

                    addresses = await services.start(serve_admin, node, config.admin)
                    admin = addresses.urls
                _banner(node, admin)
                first = await _signal_or_drained(node, signals)
                if first is None:
                    log.info("drained at the admin console's request")
                else:
                    log.info(
                        "%s: draining (deadline %g s); send it again to stop at once",
                        signal.Signals(first).name,
                        config.node.drain_deadline,
                        extra={"switchboard.signal": signal.Signals(first).name},
                    )
                    await _drain_unless_signalled(node, signals)
                services.cancel_scope.cancel()
        except _StopAtOnce as stop:
            return EXIT_SIGNALLED + stop.signum
    return EXIT_OK


async def _signal_or_drained(node: Node, signals: AsyncIterator[int]) -> int | None:
    """The first signal, or ``None`` when a drain began elsewhere (the admin console) and ended."""
    first: int | None = None
    async with trio.open_nursery() as race:

        async def signalled() -> None:
            nonlocal first
            first = await signals.__anext__()
            race.cancel_scope.cancel()

        async def drained() -> None:
            await node.wait_drained()
            race.cancel_scope.cancel()

        race.start_soon(signalled)
        race.start_soon(drained)
    return first


async def _drain_unless_signalled(node: Node, signals: AsyncIterator[int]) -> None:
    again: int | None = None
    async with trio.open_nursery() as nursery:

        async def second_signal() -> None:
            nonlocal again
            again = await signals.__anext__()
            log.warning("%s again: stopping at once", signal.Signals(again).name)
            nursery.cancel_scope.cancel()

        nursery.start_soon(second_signal)
        await node.drain()
        nursery.cancel_scope.cancel()
    if again is not None:
        raise _StopAtOnce(again)


def _startup_failure(exc: BaseException) -> StartupFailed | None:
    """The :class:`StartupFailed` behind ``exc`` (in groups, causes and failed starts)."""
    return _find(exc, StartupFailed)


_E = TypeVar("_E", bound=BaseException)


def _find(exc: BaseException | None, kind: type[_E]) -> _E | None:
    """The first ``kind`` in ``exc``, its groups and its chain of causes."""
    if exc is None or isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _find(inner, kind)
            if found is not None:
                return found
        return None
    return _find(exc.__cause__, kind)


def _leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def describe(exc: BaseException) -> str:
    """What went wrong, in one line: the leaves of exception groups, each with its cause."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(dict.fromkeys(describe(inner) for inner in exc.exceptions))
    text = f"{type(exc).__name__}: {exc}"
    cause = exc.__cause__
    if cause is not None and str(cause) not in text:
        text += f" (caused by {describe(cause)})"
    return text


def _banner(node: Node, admin: tuple[str, ...] = ()) -> None:
    lines = [f"switchboard node {node.node_id!r} running"]
    if node.ops_url:
        lines.append(f"  ops HTTP:   {node.ops_url}  (/health, /metrics, /readyz, /healthz)")
    for url in admin:
        lines.append(f"  admin console: {url}  (switchboard ctl --url {url} ...)")
    for platform, url in sorted(node.emulator_urls.items()):
        lines.append(f"  {platform + ' emulator:':<20} {url}  (control API {url}/_emulator/)")
    snapshots = node.channels()
    started = sum(1 for s in snapshots if s.start_error is None)
    lines.append(f"  channels:   {started}/{len(snapshots)} started")
    lines.append("  stop with Ctrl-C or SIGTERM (graceful drain)")
    print("\n".join(lines), flush=True)
    sys.stdout.flush()
