"""The ``switchboard`` command line.

A thin shell over the library: each sub-command parses its arguments and
calls the same public API an embedding program would use. Exit codes: 0 on
success, 2 for bad usage or bad input (``ctl`` adds 1, 3 and 4: see
:mod:`runtime.console.ctl`).
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Any

__all__ = ["main"]

EXIT_BAD_INPUT = 2  # bad usage or an invalid file
EXIT_FAILED = 1  # it could not do what was asked (a port in use)


def _version() -> str:
    try:
        return version("switchboard-runtime")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _bench(argv: list[str]) -> int:
    # `switchboard bench ...` is `python -m bench ...`; run it as its own
    # program so nothing here imports the benchmark package.
    # Its --help says how it was called.
    os.environ["SWITCHBOARD_BENCH_PROG"] = "switchboard bench"
    os.execv(sys.executable, [sys.executable, "-m", "bench", *argv])
    return 0  # not reached


def _emulate(args: argparse.Namespace) -> int:
    # Imported here: the emulators (and their web stack) load only for this command.
    import trio

    from providers.emulators import serve_emulator
    from providers.emulators.base import is_loopback
    from providers.registry import EMULATORS, load
    from runtime.collection import YOUNG_THRESHOLD, freeze_start_up

    if not args.allow_remote and not is_loopback(args.host):
        print(
            f"switchboard emulate: refusing --host {args.host}: the control API (/_emulator/) "
            "has no authentication and lets anyone inject signed messages, read every "
            "message sent and repoint webhooks; use a loopback address, or add "
            "--allow-remote on a network you trust",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    emulator = load(EMULATORS, args.platform)(**_emulator_options(args))
    try:
        emulator.latency = args.rtt / 1e3
    except ValueError as exc:
        print(f"switchboard emulate: --rtt {args.rtt:g} (milliseconds): {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT

    listening = False

    async def run() -> None:
        nonlocal listening
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                url = await nursery.start(
                    functools.partial(
                        serve_emulator,
                        emulator,
                        host=args.host,
                        port=args.port,
                        allow_remote=args.allow_remote,
                    )
                )
                listening = True
                print(
                    f"{args.platform} emulator listening on {url} (control API: {url}/_emulator/)"
                )
                frozen = freeze_start_up()  # its pauses would be every client's tail
                print(
                    f"collector: {frozen:,} start-up objects frozen, young collections every "
                    f"{YOUNG_THRESHOLD:,} allocations"
                )
                print("press Ctrl-C to stop", flush=True)
                async for signum in signals:
                    print(f"{signal.Signals(signum).name}: {args.platform} emulator stopping")
                    nursery.cancel_scope.cancel()
                    break

    try:
        trio.run(run)
    except (OSError, OverflowError, BaseExceptionGroup) as exc:
        cause = None if listening else _listen_error(exc)
        if cause is None:
            raise
        reason = (getattr(cause, "strerror", None) or str(cause)).lower()
        print(
            f"switchboard emulate: cannot listen on {args.host}:{args.port}: {reason}; "
            "choose another --port, or stop what listens there",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return 0


def _listen_error(exc: BaseException) -> OSError | OverflowError | None:
    """The bind error behind ``exc`` (hypercorn's, inside trio's exception groups), if
    that is all it is: ``OSError`` (in use, not permitted) or ``OverflowError`` (the port)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, OSError | OverflowError) else None


def _port(text: str) -> int:
    """``--port``: a TCP port number, refused by argparse (exit 2) otherwise."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port from 0 to 65535")
    return port


def _load(path: str, overrides: list[str] | None = None) -> Any:
    """The config at ``path`` with its ``--set`` overrides, or None after printing its problems."""
    from runtime.config import load_config
    from runtime.errors import ConfigError

    try:
        return load_config(path, overrides=overrides or ())
    except ConfigError as exc:
        print(f"switchboard: invalid configuration\n{exc}", file=sys.stderr)
        return None


def _check(args: argparse.Namespace) -> int:
    config = _load(args.file, args.set)
    if config is None:
        return EXIT_BAD_INPUT
    from runtime.telemetry.redaction import Redactor

    # Nothing in these lines should hold a secret; the scrubber makes sure of it.
    scrub = Redactor(config.secrets()).scrub
    enabled = sum(1 for channel in config.channels if channel.enabled)
    print(
        scrub(
            f"{args.file}: ok (node {config.node.id!r}, {enabled}/{len(config.channels)} "
            f"channels enabled, storage {config.storage.backend})"
        )
    )
    for notice in config.deprecations:
        print(scrub(f"{args.file}: warning: {notice}"), file=sys.stderr)
    return 0


def _run(args: argparse.Namespace) -> int:
    config = _load(args.file, args.set)
    if config is None:
        return EXIT_BAD_INPUT
    from runtime.run import run_node

    return run_node(config)


def _emulator_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if args.platform == "whatsapp" and args.webhook_url:
        options["webhook_url"] = args.webhook_url
    if args.platform == "whatsapp" and args.app_secret:
        options["app_secret"] = args.app_secret
    return options


def _add_set_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=(
            "override a setting of the file, checked as the file is; repeatable "
            "(--set ops.port=9000 --set logging.level=debug --set channels[0].base_url=URL)"
        ),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="switchboard",
        description="Switchboard: supervised, long-lived connections to chat platforms.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    emulate = sub.add_parser(
        "emulate",
        help="run a local, protocol-faithful platform emulator until interrupted",
    )
    emulate.add_argument("platform", choices=["discord", "telegram", "whatsapp", "websocket"])
    emulate.add_argument(
        "--host", default="127.0.0.1", help="interface (default 127.0.0.1; loopback only)"
    )
    emulate.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a --host that is not loopback: the control API (/_emulator/) has no "
        "authentication, so only on a network you trust",
    )
    emulate.add_argument("--port", type=_port, default=0, help="TCP port (default: any free one)")
    emulate.add_argument("--webhook-url", help="whatsapp: where to POST signed webhooks")
    emulate.add_argument("--app-secret", help="whatsapp: the secret that signs webhooks")
    emulate.add_argument(
        "--rtt",
        type=float,
        default=0.0,
        metavar="MS",
        help="hold every answer back this many milliseconds, a round trip (default 0)",
    )
    run = sub.add_parser(
        "run", help="run a node from a deployment file until SIGINT/SIGTERM (then drain)"
    )
    run.add_argument("file", help="the deployment file, e.g. config/local.toml")
    _add_set_option(run)
    check = sub.add_parser(
        "check", help="validate a deployment file without starting anything (exit 0 or 2)"
    )
    check.add_argument("file", help="the deployment file")
    _add_set_option(check)
    from runtime.console.ctl import add_parser as add_ctl
    from runtime.console.top import add_parser as add_top

    add_ctl(sub)
    add_top(sub)
    sub.add_parser(
        "bench",
        help="run a benchmark scenario (same as `python -m bench`)",
        add_help=False,
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``switchboard`` console script."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "bench":
        return _bench(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "emulate":
        return _emulate(args)
    if args.command == "check":
        return _check(args)
    if args.command == "run":
        return _run(args)
    if args.command == "ctl":
        from runtime.console.ctl import ctl

        return ctl(args)
    if args.command == "top":
        from runtime.console.top import top

        return top(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
