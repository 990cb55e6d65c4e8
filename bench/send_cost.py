"""The cost of one send through a node, measured so that a loaded machine cannot move it.

``python -m bench.send_cost [--client C] [--provider P] [--channels N] [--callers K] [--sends S]``
    runs a node in this process with ``N`` channels of provider ``P``
    (``websocket``, the default, ``telegram``, ``whatsapp`` or
    ``simulated``) and ``K`` callers per channel, each sending ``S``
    messages closed-loop (the next once the platform accepted the last),
    and prints one JSON line: ``{"client", "provider", "channels",
    "callers", "sends" (all of them), "cpu_seconds", "cpu_per_send"}``.
    Every send goes to a recipient of its own (up to 997), so a node never
    holds a send back behind another to the same recipient. A websocket
    node talks to the lean far end (:mod:`bench.far_end`, with no
    heartbeats), a Telegram or WhatsApp node to the platform's emulator
    (:mod:`bench.platforms`, its rate limits off, as the node's are), each
    started in a process of its own unless ``--far-end URL`` names one
    (``ws://.../ws``; ``http://host:port``). Telegram channels poll, with
    one getUpdates held for the whole run; WhatsApp channels only send
    (no status webhooks: the emulator has nowhere to post them); both
    send what the channels benchmark sends (a text; the ``hello_world``
    template). ``--client bare`` (``C`` is ``node`` by default) does the
    same sends without a node, the baseline the node's figure is judged
    against: for websocket, ``N`` trio + wsproto connections with the
    connection code of :mod:`bench.ws_bare`, each caller sending a frame
    and waiting for its ``ack``; for Telegram and WhatsApp, ``N`` httpx
    clients of :mod:`bench.http_bare` (one per bot or number, each with a
    pool of the channel's send window, opened as a channel opens), each
    caller posting the provider's request and reading its answer.
    ``--client node-outbox``: the same node, its callers chains in one
    ``Node.outbox`` (each answer starts the next send; no task per caller).
    ``--client bare-websockets`` (websocket only): the same bare client on
    the sans-I/O protocol of ``websockets``, which the node's link uses
    (the baseline above is wsproto's): what the node costs above the
    library it sends with.

``python -m bench.send_cost --instructions [the same options]``
    counts the instructions of that run under ``valgrind --tool=callgrind``
    instead of timing it: twice, with ``S`` and with ``3 S`` sends per
    caller, the far end (not counted) running natively; a few minutes. It
    prints ``{"client", "provider", "channels", "callers",
    "instructions_per_send", "runs": [...]}``: the difference of the two
    totals over the sends between them, so that start-up and connects
    cancel out. A run that fails, or makes fewer sends than asked, fails
    the command. An HTTP send counts four to seven times a websocket
    send (httpx, httpcore and h11 in the client, node or bare): 10 to 15
    minutes a count on a busy 2-core machine.

Design notes: the channels benchmark times the node against a bare client
in a fresh process, and on a shared machine both move by tens of percent
from run to run (the bare client alone by 38 % between two runs of one
command). A change of a few percent on the send path cannot be seen that
way. An instruction count is not CPU time (it misses cache misses and
stalls), but it does not move with the machine's load, and the same run
gives the same count to within a few percent (1 to 3 % here): two trees
compared this way differ by what their code does. The sends are
closed-loop, not paced: a paced run's cost depends on how far the node
falls behind, which valgrind's slowdown (about 50 times) changes. For the
same reason the node's checkpoint rounds are put off past the run: a
round every second writes every channel a send touched, and under
valgrind a second holds fewer sends the busier the machine (a node of 10
websocket channels counted 657,827 instructions per send with rounds
every second, 608,124 without). The figure is the send path's; what a
checkpoint costs depends on how many sends share one, and
:mod:`bench.checkpoints` measures it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import ssl
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import trio

from actors import ChannelStatus
from providers.base import OutboundMessage, Template, default_send_window
from runtime import open_node, parse_config
from runtime.config import ChannelSpec

from . import callgrind
from .tls import add_arguments as add_tls_arguments

__all__ = ["counted", "instructions_per_send", "main", "measure"]

TEXT: Final = "x" * 40  # the channels benchmark's default text size
PEERS: Final = 997  # distinct recipients, as the channels benchmark rotates them
ANSWER_WAIT: Final = 900.0  # seconds the bare client's sends may take in all (a bound, not a pace)
CONNECT_WAIT: Final = 60.0  # seconds for every channel to connect (under valgrind: slow)
CHECKPOINTS_OFF: Final = 3_600.0  # the node's checkpoint interval: no round within a run
HTTP: Final = ("telegram", "whatsapp")  # the providers that send over HTTP
PROVIDERS: Final = ("websocket", "simulated", *HTTP)
BARE_PROVIDERS: Final = ("websocket", *HTTP)
LONG_POLL: Final = 3_600  # seconds a Telegram channel's getUpdates is held: longer than a run


async def measure(
    provider: str,
    *,
    channels: int,
    callers: int,
    sends: int,
    far_end: str | None = None,
    connect_wait: float = CONNECT_WAIT,
    tls: bool = False,
    ca_file: str | None = None,
    outbox: bool = False,
) -> dict[str, Any]:
    """Run the closed-loop sends once and return the JSON line's fields.

    ``outbox``: the callers are chains in one ``Node.outbox``, each answer
    starting the next send (``--client node-outbox``), not tasks awaiting
    ``Node.send``.

    ``tls``: the websocket far end this starts serves ``wss://`` with a
    certificate of a private CA, which the channels trust (their option
    ``ca_file``); ``ca_file``: what a given ``wss://`` ``far_end``'s
    certificate chains to (None: the system's trust store).

    Raises:
        RuntimeError: not every channel connected within ``connect_wait`` seconds.
    """
    async with contextlib.AsyncExitStack() as stack:
        if provider != "simulated":
            far_end, ca_file = await stack.enter_async_context(
                _far_end_for(provider, far_end, channels, tls=tls, ca_file=ca_file)
            )
        config = parse_config(
            {
                "node": {"id": "send-cost", "start_timeout": connect_wait},
                "ops": {"enabled": False},
                # No checkpoint round within a run: its work follows the wall clock.
                "storage": {"checkpoint_interval": CHECKPOINTS_OFF},
                "providers": {provider: {"rate_limit": {"enabled": False}}},
                "channels": [],
            }
        )
        node = await stack.enter_async_context(open_node(config))
        ids = [f"ch{index:05d}" for index in range(channels)]
        for index, channel_id in enumerate(ids):
            if provider == "websocket":
                spec = ChannelSpec(
                    id=channel_id,
                    provider=provider,
                    tenant="bench",
                    base_url=far_end,
                    credentials={"token": f"send-cost-{index:05d}"},
                    options={} if ca_file is None else {"ca_file": ca_file},
                )
            elif provider in HTTP:
                assert far_end is not None
                spec = _http_spec(provider, channel_id, index, far_end)
            else:
                spec = ChannelSpec(id=channel_id, provider=provider, tenant="bench")
            await node.start_channel(spec)
        with trio.move_on_after(connect_wait):
            await _connected(node, len(ids))
        unconnected = [s for s in node.channels() if s.status is not ChannelStatus.CONNECTED]
        if unconnected:
            problems = "; ".join(f"{s.channel_id}: {s.problem}" for s in unconnected[:3])
            raise RuntimeError(
                f"{len(unconnected)} of {channels} channels did not connect within "
                f"{connect_wait:g} s ({problems}); nothing was measured"
            )

        def message_for(channel: int, number: int, n: int) -> OutboundMessage:
            if provider in HTTP:
                key = _key(channel, number, n)
                return _http_message(provider, _number(channel, number, callers, sends, n), key)
            key, peer = _key_and_peer(channel, number, callers, sends, n)
            return OutboundMessage(peer=peer, idempotency_key=key, text=TEXT)

        if outbox:
            made, cpu = await _run_outbox(node, ids, callers, sends, message_for)
            return _result("node-outbox", provider, channels, callers, made, cpu)

        async def caller(channel: int, number: int) -> int:
            for n in range(sends):
                await node.send(ids[channel], message_for(channel, number, n))
            return sends

        made, cpu = await _run_callers(channels, callers, caller)
    return _result("node", provider, channels, callers, made, cpu)


async def _run_outbox(
    node: Any,
    ids: list[str],
    callers: int,
    sends: int,
    message_for: Callable[[int, int, int], OutboundMessage],
) -> tuple[int, float]:
    """The callers of :func:`_run_callers` as chains in one ``Node.outbox``: each
    answer (``on_sent``) starts its chain's next send; no task per caller.

    Returns:
        The sends the platform accepted, and the CPU seconds the chains took.
    """
    total = len(ids) * callers * sends
    made = ended = 0
    chains: dict[str, tuple[int, int, int]] = {}
    finished = trio.Event()

    def start(outbox: Any, channel: int, number: int, n: int) -> None:
        message = message_for(channel, number, n)
        chains[message.idempotency_key] = (channel, number, n)
        outbox.send(ids[channel], message)

    def on_sent(sent: Any) -> None:
        nonlocal made, ended
        channel, number, n = chains.pop(sent.message.idempotency_key)
        ended += 1
        made += sent.ok
        if n + 1 < sends:
            start(outbox, channel, number, n + 1)
        elif ended == total:
            finished.set()

    began = time.process_time()
    async with node.outbox(on_sent=on_sent) as outbox:
        for channel in range(len(ids)):
            for number in range(callers):
                start(outbox, channel, number, 0)
        await finished.wait()
    return made, time.process_time() - began


def _http_spec(provider: str, channel_id: str, index: int, far_end: str) -> ChannelSpec:
    """Channel ``index`` of a Telegram or WhatsApp node, with the made-up
    credentials of the channels benchmark's channels (:mod:`bench.rig`)."""
    from .rig import WA_APP_SECRET, WA_NUMBER_BASE, WA_VERIFY_TOKEN, _made_up_token

    credentials = {"token": _made_up_token(provider, index)}
    if provider == "whatsapp":
        credentials |= {"app_secret": WA_APP_SECRET, "verify_token": WA_VERIFY_TOKEN}
        options: dict[str, Any] = {"phone_number_id": str(WA_NUMBER_BASE + index + 1)}
    else:
        # Polling, as a bot is by default, with one getUpdates held for the
        # whole run: a poll every 30 s (the default) would follow the run's
        # wall-clock time, which valgrind stretches, as heartbeats would.
        options = {"poll_timeout": LONG_POLL}
    return ChannelSpec(
        id=channel_id,
        provider=provider,
        tenant="bench",
        base_url=far_end,
        credentials=credentials,
        options=options,
    )


def _http_message(provider: str, number: int, key: str) -> OutboundMessage:
    """Send ``number`` of a Telegram or WhatsApp node: what :mod:`bench.http_bare`'s
    body of that number carries (a chat id; a WhatsApp user and the template
    that opens a conversation, as the channels benchmark sends)."""
    if provider == "whatsapp":
        template = Template(name="hello_world", language="en_US")
        return OutboundMessage(
            peer=f"15550{number % PEERS:06d}", idempotency_key=key, template=template
        )
    return OutboundMessage(peer=str(1_000 + number % PEERS), idempotency_key=key, text=TEXT)


async def measure_bare(
    url: str,
    *,
    channels: int,
    callers: int,
    sends: int,
    provider: str = "websocket",
    library: str = "wsproto",
    ca_file: str | None = None,
) -> dict[str, Any]:
    """The sends of :func:`measure` by a bare client: the baseline.

    Websocket: a trio + wsproto client, ``channels`` connections to the far
    end at ``url``, each with ``callers`` callers that send a frame and wait
    for its ``ack`` (an event per send, as a plain client would);
    ``library="websockets"``: the same client on ``websockets``' sans-I/O
    protocol, the one the node's link uses. Over ``wss://`` each connection
    is trio's TLS stream, trusting ``ca_file`` (None: the system's store).
    Telegram and WhatsApp: :func:`measure_bare_http`.

    Raises:
        RuntimeError: the far end refused a send (inside the nursery's
            exception group, as a connection that could not be opened is),
            or did not answer every send within :data:`ANSWER_WAIT` seconds.
    """
    if provider in HTTP:
        return await measure_bare_http(
            url, provider, channels=channels, callers=callers, sends=sends
        )
    # The connection code of the open-loop baseline, so that the two bare
    # clients differ only in how they load the far end.
    from .ws_bare import _Connection, _serve_connection, _Session, _Tally, _WebsocketsConnection

    class Answers(_Tally):
        """Wakes the caller of each answered send; an ``error`` answer is a failed run."""

        def __init__(self) -> None:
            super().__init__()
            self.waiting: dict[str, trio.Event] = {}

        def on_frame(self, frame: dict[str, Any]) -> None:
            kind = frame.get("type")
            if kind == "error":
                raise RuntimeError(f"the far end refused a send: {frame}")
            if kind == "ack":
                event = self.waiting.pop(str(frame.get("id")), None)
                if event is not None:
                    event.set()

    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    tls = ssl.create_default_context(cafile=ca_file) if parts.scheme == "wss" else None
    session = _Session()
    answers = session.tally = Answers()
    kind = _WebsocketsConnection if library == "websockets" else _Connection
    encode = json.JSONEncoder(separators=(",", ":")).encode
    async with trio.open_nursery() as nursery:
        opened: list[_Connection] = []
        for index in range(channels):
            token = f"send-cost-{index:05d}"
            target = f"{parts.path or '/'}?token={token}"
            opened.append(
                await nursery.start(
                    partial(_serve_connection, kind=kind, ssl_context=tls),
                    session,
                    host,
                    port,
                    target,
                    token,
                )
            )

        async def caller(channel: int, number: int) -> int:
            connection = opened[channel]
            for n in range(sends):
                key, peer = _key_and_peer(channel, number, callers, sends, n)
                event = answers.waiting[key] = trio.Event()
                frame = {"type": "send", "id": key, "peer": peer, "text": TEXT}
                connection.send_text(encode(frame))
                await event.wait()
            return sends

        # One bound for the whole run: a cancel scope per send would cost the
        # bare client what a node's send no longer pays (about 50,000
        # instructions), and a plain client has none.
        with trio.move_on_after(ANSWER_WAIT) as bound:
            made, cpu = await _run_callers(channels, callers, caller)
        nursery.cancel_scope.cancel()
    if bound.cancelled_caught:
        raise RuntimeError(
            f"{len(answers.waiting)} sends not answered within {ANSWER_WAIT:g} s "
            f"({session.lost} connections lost); nothing was measured"
        )
    return _result(
        "bare" if kind is _Connection else "bare-websockets",
        "websocket",
        channels,
        callers,
        made,
        cpu,
    )


async def measure_bare_http(
    url: str, provider: str, *, channels: int, callers: int, sends: int
) -> dict[str, Any]:
    """The sends of a Telegram or WhatsApp node by a bare httpx client: the baseline.

    ``channels`` clients of :mod:`bench.http_bare` against the emulator at
    ``url`` (``http://host:port``), one per bot or phone number, each with
    a pool of the channel's send window and opened as a channel opens; each
    caller posts the request the provider makes for its send and reads the
    answer before the next.

    Raises:
        RuntimeError: the platform refused a send (inside the nursery's
            exception group), or did not answer every send within
            :data:`ANSWER_WAIT` seconds.
        ConnectionError: a client's opening request was refused.
        httpx.HTTPError: one could not be made.
    """
    from .http_bare import PLATFORMS, _httpx_senders

    # A pool of the channel's send window, as bench.channels sizes the bare clients'.
    if provider == "whatsapp":
        from providers.whatsapp.core import WHATSAPP_LIMITS as limits
    else:
        from providers.telegram.core import TELEGRAM_LIMITS as limits
    platform = PLATFORMS[provider]
    window = default_send_window(limits)
    answered = 0
    async with contextlib.AsyncExitStack() as stack:
        senders = await _httpx_senders(stack, platform, url.rstrip("/"), channels, window, TEXT)

        async def caller(channel: int, number: int) -> int:
            nonlocal answered
            send = senders[channel]
            for n in range(sends):
                refusal = await send(_number(channel, number, callers, sends, n))
                if refusal is not None:
                    raise RuntimeError(f"the {provider} platform refused a send: {refusal}")
                answered += 1
            return sends

        # One bound for the whole run, as the websocket bare client has.
        with trio.move_on_after(ANSWER_WAIT) as bound:
            made, cpu = await _run_callers(channels, callers, caller)
    if bound.cancelled_caught:
        raise RuntimeError(
            f"{channels * callers * sends - answered} sends not answered within "
            f"{ANSWER_WAIT:g} s; nothing was measured"
        )
    return _result("bare", provider, channels, callers, made, cpu)


async def _run_callers(
    channels: int, callers: int, caller: Callable[[int, int], Awaitable[int]]
) -> tuple[int, float]:
    """Run ``callers`` callers of each channel at once.

    Returns:
        The sends the callers say they made (each once its last was
        answered), and the CPU seconds they took.
    """
    made = 0

    async def run(channel: int, number: int) -> None:
        nonlocal made
        count = await caller(channel, number)  # (not made += await ...: read before the wait)
        made += count

    began = time.process_time()
    async with trio.open_nursery() as nursery:
        for channel in range(channels):
            for number in range(callers):
                nursery.start_soon(run, channel, number)
    return made, time.process_time() - began


def _result(
    client: str, provider: str, channels: int, callers: int, made: int, cpu: float
) -> dict[str, Any]:
    if made == 0:
        raise RuntimeError("no caller finished its sends; nothing was measured")
    return {
        "client": client,
        "provider": provider,
        "channels": channels,
        "callers": callers,
        "sends": made,
        "cpu_seconds": cpu,
        "cpu_per_send": cpu / made,
    }


def _key_and_peer(channel: int, caller: int, callers: int, sends: int, n: int) -> tuple[str, str]:
    """Send ``n`` of a caller: its idempotency key, and a recipient no other send in flight has.

    The same for the node and the bare client. Each send of a run goes to its
    own recipient (up to :data:`PEERS` of them), so a node never holds one
    back behind another to the same recipient, which a bare client does not do.
    """
    number = _number(channel, caller, callers, sends, n)
    return _key(channel, caller, n), f"user-{number % PEERS}"


def _key(channel: int, caller: int, n: int) -> str:
    """Send ``n`` of a caller: its idempotency key."""
    return f"c{channel:05d}-{caller}-{n}"


def _number(channel: int, caller: int, callers: int, sends: int, n: int) -> int:
    """Send ``n`` of a caller, numbered across the run (its recipient: modulo :data:`PEERS`)."""
    return (channel * callers + caller) * sends + n


async def _connected(node: Any, count: int) -> None:
    with node.subscribe(kind="state") as changes:
        while sum(s.status is ChannelStatus.CONNECTED for s in node.channels()) < count:
            await changes.receive()


def instructions_per_send(small: int, big: int, sends_between: int) -> int:
    """The instructions of one send: the difference of two runs' totals over the sends between."""
    return callgrind.per_unit(small, big, sends_between, "sends")


def counted(output: str, returncode: int, sends: int) -> int:
    """The instructions of a counted run that made all its ``sends``, from its output.

    Raises:
        ValueError: the run failed, or did not say it made them all (its output is quoted).
    """
    return callgrind.counted(output, returncode, field="sends", expected=sends, what="sends made")


def _counted_run(
    args: argparse.Namespace, sends: int, far_end: str | None, ca_file: str | None
) -> int:
    arguments = [
        *("--client", args.client, "--provider", args.provider),
        *("--channels", str(args.channels)),
        *("--callers", str(args.callers), "--sends", str(sends)),
    ]
    if far_end is not None:
        arguments += ["--far-end", far_end]
    if ca_file is not None:
        arguments += ["--ca-file", ca_file]
    return callgrind.run_counted(
        "bench.send_cost",
        arguments,
        field="sends",
        expected=args.channels * args.callers * sends,
        what="sends made",
    )


@contextlib.asynccontextmanager
async def _far_end_for(
    provider: str,
    given: str | None,
    channels: int,
    *,
    tls: bool = False,
    ca_file: str | None = None,
) -> AsyncIterator[tuple[str | None, str | None]]:
    """The far end's URL (``given``, or one started here) and the CA file its
    certificate chains to (``ca_file``, or the private CA of one started with ``tls``)."""
    if provider not in BARE_PROVIDERS or given is not None:
        yield given, ca_file
        return
    if provider in HTTP:
        async with _http_far_end(provider, channels) as url:
            yield url, None
        return
    from .rig import open_far_end_process

    with tempfile.TemporaryDirectory(prefix="send-cost-tls-") as directory:
        tls_cert = None
        if tls:
            from .tls import PrivateAuthority

            authority = PrivateAuthority(Path(directory))
            tls_cert, ca_file = str(authority.server_pem), str(authority.ca_pem)
        # No heartbeats: their number would follow the run's wall-clock time,
        # which valgrind and the machine's load stretch.
        async with open_far_end_process(heartbeat_interval=0, tls_cert=tls_cert) as far_end:
            yield far_end.channel_url, ca_file


@contextlib.asynccontextmanager
async def _http_far_end(provider: str, channels: int) -> AsyncIterator[str]:
    """The platform's emulator in a process of its own (:mod:`bench.platforms`),
    its limits off: a closed loop runs as fast as its client, which would
    meet Telegram's 30 sends/s per bot, and a node would wait ``retry_after``."""
    from .http_bare import _WhatsApp
    from .platforms import PlatformsSpec, open_platforms
    from .rig import WA_APP_SECRET, WA_NUMBER_BASE

    # The numbers that exist: the node's channels' and the bare client's.
    numbers = [str(WA_NUMBER_BASE + i + 1) for i in range(channels)]
    numbers += [_WhatsApp().number(i) for i in range(channels)]
    spec = PlatformsSpec(
        whatsapp_app_secret=WA_APP_SECRET,
        whatsapp_numbers=tuple(numbers),
        keep_all=False,
        limits=False,
    )
    async with open_platforms(spec) as (urls, _):
        yield urls[provider]


def _count_instructions(args: argparse.Namespace) -> dict[str, Any]:
    callgrind.require_valgrind()
    runs: list[dict[str, Any]] = []

    async def both() -> None:
        async with _far_end_for(
            args.provider, args.far_end, args.channels, tls=args.tls, ca_file=args.ca_file
        ) as (url, ca_file):
            for sends in (args.sends, 3 * args.sends):
                total = await trio.to_thread.run_sync(_counted_run, args, sends, url, ca_file)
                runs.append({"sends_per_caller": sends, "instructions": total})

    trio.run(both)
    between = args.channels * args.callers * 2 * args.sends
    return {
        "client": args.client,
        "provider": args.provider,
        "channels": args.channels,
        "callers": args.callers,
        "instructions_per_send": instructions_per_send(
            runs[0]["instructions"], runs[1]["instructions"], between
        ),
        "runs": runs,
    }


async def _bare(args: argparse.Namespace) -> dict[str, Any]:
    async with _far_end_for(
        args.provider, args.far_end, args.channels, tls=args.tls, ca_file=args.ca_file
    ) as (url, ca_file):
        assert url is not None
        return await measure_bare(
            url,
            channels=args.channels,
            callers=args.callers,
            sends=args.sends,
            provider=args.provider,
            library="websockets" if args.client == "bare-websockets" else "wsproto",
            ca_file=ca_file,
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.send_cost",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--client",
        choices=["node", "node-outbox", "bare", "bare-websockets"],
        default="node",
        help="a node (callers awaiting Node.send); a node driven through one Node.outbox "
        "(each answer starts the caller's next send, no task per caller); the bare "
        "baseline (trio + wsproto); or the bare client on the websockets protocol the "
        "node's link uses",
    )
    parser.add_argument("--provider", choices=PROVIDERS, default="websocket")
    parser.add_argument("--channels", type=int, default=50, help="channels (default 50)")
    parser.add_argument("--callers", type=int, default=2, help="callers per channel (default 2)")
    parser.add_argument("--sends", type=int, default=20, help="sends per caller (default 20)")
    parser.add_argument(
        "--far-end",
        metavar="URL",
        help="a running far end: the lean far end (ws://.../ws), or for telegram and "
        "whatsapp the emulator (http://host:port, its limits off)",
    )
    add_tls_arguments(parser)
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="count instructions per send under valgrind instead of timing (minutes)",
    )
    args = parser.parse_args(argv)
    for name in ("channels", "callers", "sends"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.client == "bare-websockets" and args.provider != "websocket":
        parser.error("--client bare-websockets: --provider websocket only")
    if args.client == "bare" and args.provider not in BARE_PROVIDERS:
        parser.error(
            f"--client bare has no {args.provider} client: --provider "
            f"{', '.join(BARE_PROVIDERS)} only"
        )
    if args.tls and (args.provider != "websocket" or args.far_end is not None):
        parser.error("--tls: --provider websocket and a far end of the bench's own only")
    if args.ca_file is not None and not (args.far_end or "").startswith("wss://"):
        parser.error("--ca-file: for a wss:// --far-end only (--tls makes its own CA)")
    if args.far_end is not None:
        wanted = "http" if args.provider in HTTP else "ws"
        if args.provider not in BARE_PROVIDERS:
            parser.error(f"--far-end: {args.provider} channels have no far end")
        elif urlsplit(args.far_end).scheme not in (wanted, "wss" if wanted == "ws" else wanted):
            parser.error(
                f"--far-end: a {args.provider} far end is a {wanted}:// URL, not {args.far_end!r}"
            )
    # A channel's lifecycle is logged; the figure is the one line printed.
    logger = logging.getLogger("switchboard")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        result = _measured(args)
    finally:
        logger.setLevel(level)
    print(json.dumps(result), flush=True)
    return 0


def _measured(args: argparse.Namespace) -> dict[str, Any]:
    if args.instructions:
        return _count_instructions(args)
    if args.client not in ("node", "node-outbox"):
        return trio.run(_bare, args)
    return trio.run(
        lambda: measure(
            args.provider,
            channels=args.channels,
            callers=args.callers,
            sends=args.sends,
            far_end=args.far_end,
            tls=args.tls,
            ca_file=args.ca_file,
            outbox=args.client == "node-outbox",
        )
    )


if __name__ == "__main__":
    raise SystemExit(main())
