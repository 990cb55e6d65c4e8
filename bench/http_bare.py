"""The baseline for an HTTP channel: a bare httpx client against the same emulator.

``python -m bench.http_bare send URL --provider P --connections N --rates R[,R...] --duration D``
    the sends a node's Telegram or WhatsApp channels make, done by a bare
    client: ``httpx.AsyncClient`` on trio, no Switchboard. ``URL`` is the
    emulator's base (``http://host:port``). ``N`` clients, one per bot
    (Telegram) or phone number (WhatsApp), each with its own connection pool
    of ``--window`` connections, as each channel of a node has; each opens
    as the channel does (``getMe``; ``GET /{version}/{phone_number_id}``),
    then per rate an open-loop load of ``R`` msgs/s for ``D`` seconds spread
    round-robin over them. A send is the request the channel's provider
    makes, on the wire: Telegram ``POST {URL}/bot{token}/sendMessage`` with
    ``{"chat_id": <int>, "text"}``; WhatsApp ``POST
    {URL}/v21.0/{phone_number_id}/messages`` with ``Authorization: Bearer
    {token}`` and the ``hello_world`` template body the channels bench sends
    (WhatsApp takes free-form text only inside the 24-hour window). It
    completes when the answer is read: an accepted message (``ok`` with a
    result; ``messages[0].id``) is acked, anything else is counted by the
    platform's error code (or HTTP status, or httpx's exception type). It
    prints one JSON line per rate: ``{"client", "provider", "connections",
    "window", "workers", "rate", "duration", "text_size", "scheduled",
    "acked", "errors": {code: n}, "unanswered", "cpu_seconds",
    "cpu_per_message", "p50", "p90", "p99", "elapsed"}`` (seconds
    throughout; ``workers``: the most worker tasks started so far).
    ``--via provider`` makes the same load through the providers' own
    connections (``TelegramProvider`` / ``WhatsAppProvider``
    ``open_connection``, then ``Connection.send``, with the same
    credentials and send window) and no node: the step between the bare
    client and the node, so that the node's extra CPU splits into the
    provider layer's and the node's own (refusals then count by error class).

Design: what a plain, reasonably efficient client would be, paced as
:mod:`bench.channels` paces the node, so that the two figures differ by what
the node adds. One pacing loop wakes every :data:`PACER_TICK` and appends
the number of every message now due to one queue; worker tasks take
numbers off it, each doing one request at a time, and park when it is
empty; a worker is started only when every one is busy (no task per
message, as the channels bench's own pacer). Latency runs from when a
message was due to when its answer was read, so a stalled client shows as
latency (no coordinated omission). CPU is the process's user + system time
from the first send to the last answer. The bare bots and numbers are
apart from the node's (bot ids from :data:`TELEGRAM_BOT_BASE`, numbers from
:data:`WHATSAPP_NUMBER_BASE`), so the emulator's per-bot and per-number
state never mixes the two runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import ssl
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Final

import httpx
import trio
import trio.lowlevel

from .bare import Workers, add_load_arguments, cpu_seconds, print_lines, step_answers

CLIENT: Final = "httpx AsyncClient on trio (no Switchboard)"
PROVIDER_CLIENT: Final = "the provider's Connection.send (no node, no channel actor)"
VIA: Final = ("httpx", "provider")
PROVIDERS: Final = ("telegram", "whatsapp")
PACER_TICK: Final = 0.002  # seconds between pacer wake-ups, as bench.channels paces
PEERS: Final = 997  # distinct recipients, as bench.rig rotates them
DRAIN_LIMIT: Final = 60.0  # seconds to wait for the answers still due after a step
REQUEST_TIMEOUT: Final = 30.0  # seconds per read, as the providers' requests
CONNECT_TIMEOUT: Final = 10.0  # seconds, as the providers' connects
TELEGRAM_BOT_BASE: Final = 900_000  # bare bots' ids (the node's made-up bots: 100,001...)
WHATSAPP_NUMBER_BASE: Final = 200_000_000_000  # bare numbers (the node's: 100,000,000,001...)
WHATSAPP_API_VERSION: Final = "v21.0"  # providers.whatsapp.core.DEFAULT_API_VERSION


# ---------------------------------------------------------------- the platforms


class _Platform:
    """What one provider's channel sends, and how its answers read."""

    name: str

    def token(self, index: int) -> str:
        """Client ``index``'s credential (a bot token, an access token)."""
        raise NotImplementedError

    def client_headers(self, index: int) -> dict[str, str]:
        """Headers every request of client ``index`` carries (auth)."""
        return {}

    def opening(self, base: str, index: int) -> tuple[str, str]:
        """The request a channel makes when it opens: (method, URL)."""
        raise NotImplementedError

    def send_url(self, base: str, index: int) -> str:
        raise NotImplementedError

    def body(self, number: int, text: str) -> dict[str, Any]:
        """The JSON body of message ``number``."""
        raise NotImplementedError

    def refusal(self, status: int, content: bytes) -> str | None:
        """``None`` for an accepted message; else what refused it (a code, in words)."""
        raise NotImplementedError


class _Telegram(_Platform):
    name = "telegram"

    def token(self, index: int) -> str:
        # The Bot API's shape, <bot id>:<35 characters>, as bench.rig makes the node's.
        return f"{TELEGRAM_BOT_BASE + index}:{'bare-token-' + f'{index:05d}':_<35}"

    def opening(self, base: str, index: int) -> tuple[str, str]:
        return "POST", f"{base}/bot{self.token(index)}/getMe"

    def send_url(self, base: str, index: int) -> str:
        return f"{base}/bot{self.token(index)}/sendMessage"

    def body(self, number: int, text: str) -> dict[str, Any]:
        return {"chat_id": 1_000 + number % PEERS, "text": text}

    def refusal(self, status: int, content: bytes) -> str | None:
        try:
            answer = json.loads(content)
        except ValueError:
            return f"HTTP {status}"
        if status == 200 and isinstance(answer, dict) and answer.get("ok"):
            return None if isinstance(answer.get("result"), dict) else "no result"
        code = answer.get("error_code") if isinstance(answer, dict) else None
        return str(code if code is not None else f"HTTP {status}")


class _WhatsApp(_Platform):
    name = "whatsapp"

    def number(self, index: int) -> str:
        return str(WHATSAPP_NUMBER_BASE + index + 1)

    def token(self, index: int) -> str:
        return f"EAAGbare{index:05d}"

    def client_headers(self, index: int) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(index)}"}

    def opening(self, base: str, index: int) -> tuple[str, str]:
        # The query the provider's verify_on_open asks (build_phone_number_request).
        number = f"{base}/{WHATSAPP_API_VERSION}/{self.number(index)}"
        return "GET", f"{number}?fields=id,display_phone_number,verified_name"

    def send_url(self, base: str, index: int) -> str:
        return f"{base}/{WHATSAPP_API_VERSION}/{self.number(index)}/messages"

    def body(self, number: int, text: str) -> dict[str, Any]:
        # bench.rig sends templates to WhatsApp (a business opens a conversation
        # with one); the body is the provider's for that message.
        return {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": f"15550{number % PEERS:06d}",
            "type": "template",
            "template": {"name": "hello_world", "language": {"code": "en_US"}},
        }

    def refusal(self, status: int, content: bytes) -> str | None:
        try:
            answer = json.loads(content)
        except ValueError:
            return f"HTTP {status}"
        if 200 <= status < 300:
            messages = answer.get("messages") if isinstance(answer, dict) else None
            first = messages[0] if isinstance(messages, list) and messages else None
            return None if isinstance(first, dict) and first.get("id") else "no messages[0].id"
        error = answer.get("error") if isinstance(answer, dict) else None
        code = error.get("code") if isinstance(error, dict) else None
        return str(code if code is not None else f"HTTP {status}")


PLATFORMS: Final[dict[str, _Platform]] = {"telegram": _Telegram(), "whatsapp": _WhatsApp()}


# ---------------------------------------------------------------- the load


class _Tally:
    """One load step's sends: how many are out, and what came back."""

    def __init__(self) -> None:
        self.out = 0  # scheduled and not answered yet
        self.latencies: list[float] = []  # seconds, in answer order
        self.errors: Counter[str] = Counter()
        self.last_answer = 0.0
        self.pacing = True
        self.drained = trio.Event()  # pacing is over and nothing is out

    def answered(self, due: float, refusal: str | None) -> None:
        self.last_answer = now = trio.current_time()
        if refusal is None:
            self.latencies.append(now - due)
        else:
            self.errors[refusal] += 1
        self.out -= 1
        if not self.pacing and not self.out:
            self.drained.set()


Sender = Callable[[int], Awaitable["str | None"]]  # message number -> None, or its refusal


def _httpx_sender(client: httpx.AsyncClient, url: str, platform: _Platform, text: str) -> Sender:
    """Message ``number`` as one ``client.post``; its answer read as :meth:`_Platform.refusal`."""

    async def send(number: int) -> str | None:
        try:
            response = await client.post(url, json=platform.body(number, text))
        except httpx.HTTPError as exc:  # counted by type, as a refusal is by code
            return type(exc).__name__
        return platform.refusal(response.status_code, response.content)

    return send


class _Load(Workers[tuple[int, float, _Tally]]):
    """The senders, the queue of due messages and the workers that send them."""

    def __init__(self, platform: _Platform, senders: list[Sender], text: str) -> None:
        super().__init__(self._send)
        self.platform = platform
        self.senders = senders
        self._count = len(senders)  # (read once, as the worker loop before kept it)
        self.text = text

    async def _send(self, item: tuple[int, float, _Tally]) -> None:
        number, due_at, tally = item
        tally.answered(due_at, await self.senders[number % self._count](number))


async def _load_step(
    load: _Load, nursery: trio.Nursery, *, rate: float, duration: float, window: int, via: str
) -> dict[str, Any]:
    tally = _Tally()
    n = len(load.senders)
    cap = n * window  # no more requests at once than every pool's connections
    total = int(rate * duration)
    cpu0 = cpu_seconds()
    start = trio.current_time()
    i = 0
    while i < total:
        due_now = min(total, int((trio.current_time() - start) * rate) + 1)
        while i < due_now:
            load.due.append((i, start + i / rate, tally))
            tally.out += 1
            i += 1
        load.wake(nursery, cap)
        await trio.sleep(PACER_TICK)
    tally.pacing = False
    if tally.out:
        with trio.move_on_after(DRAIN_LIMIT):
            await tally.drained.wait()
    cpu = cpu_seconds() - cpu0
    return {
        "client": CLIENT if via == "httpx" else PROVIDER_CLIENT,
        "provider": load.platform.name,
        "connections": n,
        "window": window,
        "workers": load.workers,
        "rate": rate,
        "duration": duration,
        "text_size": len(load.text),
        "scheduled": total,
        "errors": dict(tally.errors),
        "unanswered": tally.out,
        **step_answers(tally.latencies, cpu, tally.last_answer, start),
    }


async def _open(client: httpx.AsyncClient, platform: _Platform, base: str, index: int) -> None:
    method, url = platform.opening(base, index)
    response = await client.request(method, url)
    if response.status_code != 200:
        raise ConnectionError(
            f"{platform.name} client {index}: opening {method} answered "
            f"{response.status_code}: {response.text[:200]!r}"
        )


async def _httpx_senders(
    stack: contextlib.AsyncExitStack,
    platform: _Platform,
    base: str,
    count: int,
    window: int,
    text: str,
) -> list[Sender]:
    """``count`` bare clients, opened as the channels open (all at once)."""
    # One TLS context for every client, as the providers share one: each
    # AsyncClient would otherwise load the CA bundle (no TLS here; its CPU).
    verify = ssl.create_default_context()
    limits = httpx.Limits(max_connections=window, max_keepalive_connections=window)
    timeout = httpx.Timeout(REQUEST_TIMEOUT, connect=CONNECT_TIMEOUT)
    clients = [
        await stack.enter_async_context(
            httpx.AsyncClient(
                headers=platform.client_headers(i), limits=limits, timeout=timeout, verify=verify
            )
        )
        for i in range(count)
    ]
    async with trio.open_nursery() as opening:
        for i, client in enumerate(clients):
            opening.start_soon(_open, client, platform, base, i)
    return [
        _httpx_sender(client, platform.send_url(base, i), platform, text)
        for i, client in enumerate(clients)
    ]


async def _provider_senders(
    stack: contextlib.AsyncExitStack,
    platform: _Platform,
    base: str,
    count: int,
    window: int,
    text: str,
) -> list[Sender]:
    """``count`` connections of the provider itself, with the same credentials: the
    same load through ``Connection.send``, without a node (``--via provider``)."""
    from providers.base import ChannelConfig, OutboundMessage, ProviderError, Template
    from providers.telegram import TelegramProvider
    from providers.whatsapp import WhatsAppProvider

    def message(number: int) -> OutboundMessage:
        key = f"bare-{number}"
        if platform.name == "whatsapp":  # as bench.rig.Rig.message
            template = Template(name="hello_world", language="en_US")
            return OutboundMessage(
                peer=f"15550{number % PEERS:06d}", idempotency_key=key, template=template
            )
        return OutboundMessage(peer=str(1_000 + number % PEERS), idempotency_key=key, text=text)

    def sender(connection: Any) -> Sender:
        async def send(number: int) -> str | None:
            try:
                await connection.send(message(number))
            except ProviderError as exc:
                return type(exc).__name__
            return None

        return send

    senders = []
    for i in range(count):
        credentials = {"token": platform.token(i)}
        common: dict[str, Any] = {
            "provider": platform.name,
            "base_url": base,
            "send_window": window,
        }
        if isinstance(platform, _WhatsApp):
            credentials |= {"app_secret": "bare-app-secret", "verify_token": "bare-verify"}
            config = ChannelConfig(
                channel_id=f"bare-{i:05d}",
                credentials=credentials,
                options={"phone_number_id": platform.number(i)},
                **common,
            )
            opened: Any = WhatsAppProvider().open_connection(config)
        else:
            config = ChannelConfig(channel_id=f"bare-{i:05d}", credentials=credentials, **common)
            opened = TelegramProvider().open_connection(config)
        senders.append(sender(await stack.enter_async_context(opened)))
    return senders


async def measure_send(
    url: str,
    *,
    provider: str,
    connections: int,
    rates: list[float],
    duration: float,
    window: int,
    text_size: int,
    via: str = "httpx",
) -> list[dict[str, Any]]:
    """Open ``connections`` bare clients to the emulator at ``url``, then one load step per rate.

    Args:
        via: ``httpx`` (the bare client) or ``provider`` (the same load through
            the provider's connections, without a node: where between the
            bare client and the node the CPU goes).

    Returns:
        One result per rate (the JSON lines ``send`` prints).

    Raises:
        ConnectionError: an opening request was refused.
        httpx.HTTPError: one could not be made.
        providers.base.ProviderError: a provider's connection could not open.
    """
    platform = PLATFORMS[provider]
    base = url.rstrip("/")
    text = ("x" * text_size)[:text_size]
    opener = _httpx_senders if via == "httpx" else _provider_senders
    results = []
    async with contextlib.AsyncExitStack() as stack:
        senders = await opener(stack, platform, base, connections, window, text)
        load = _Load(platform, senders, text)
        async with trio.open_nursery() as nursery:
            for rate in rates:
                step = _load_step(
                    load, nursery, rate=rate, duration=duration, window=window, via=via
                )
                results.append(await step)
            nursery.cancel_scope.cancel()
    return results


# ---------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.http_bare", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    send = commands.add_parser("send", help="CPU per acked send, bare httpx client")
    send.add_argument("url", help="the emulator's base URL, http://host:port")
    send.add_argument("--provider", choices=PROVIDERS, required=True)
    send.add_argument("--connections", type=int, required=True, help="clients (bots, numbers)")
    add_load_arguments(send)
    send.add_argument(
        "--window", type=int, default=1, help="connections per client, as a channel's send window"
    )
    send.add_argument(
        "--via",
        choices=VIA,
        default="httpx",
        help="httpx: the bare client; provider: the same load through the provider's "
        "connections, without a node (where the node's extra CPU goes)",
    )
    args = parser.parse_args(argv)
    results = trio.run(
        lambda: measure_send(
            args.url,
            provider=args.provider,
            connections=args.connections,
            rates=args.rates,
            duration=args.duration,
            window=args.window,
            text_size=args.text_size,
            via=args.via,
        )
    )
    print_lines(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
