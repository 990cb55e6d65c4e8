"""The load rig: emulators, a node full of channels, and what they do over time.

Design:
- The channels under test run in a real node (:func:`runtime.node.open_node`,
  the embedding API a chat product uses), so every figure includes the
  supervisor, the event hub and the store, as a deployment would.
- Emulators run in-process (the node's own ``[emulators]``, made-up
  credentials, any provider) or, for scale, as a separate process
  (``switchboard emulate``): a connection costs a file descriptor at each
  end, and the other process has its own open-files limit and its own CPU.
  Every provider may run either way; out of process, each channel gets a
  made-up token, which the emulators accept. A WhatsApp emulator out of
  process signs its webhooks with :data:`WA_APP_SECRET`, which its channels
  share, and is pointed at the node's ops server once a channel is
  connected (:meth:`Rig.wire_webhooks`: Meta's verification handshake needs
  a live channel to answer it).
- Websocket channels may instead talk to the lean far end
  (:mod:`bench.far_end`, ``far_end="lean"``): the emulator's protocol at a
  small fraction of its CPU per message, so that the node is what saturates.
  Either far end may run as K processes (:class:`EmulatorFleet`), channel
  ``i`` on process ``i mod K``, their CPU summed.
- Faults and injections go through the emulators' control API over HTTP,
  the same way a test or a person would use it; so does a round trip
  (``rtt_ms``, :func:`rtt_field`): every far end holds its answers back
  that long (:mod:`providers.emulators.latency`), set before any channel
  connects.
- :class:`StateLog` follows every channel's status from the node's event
  hub (never by polling the channels): when each one connected, every
  scheduled reconnect delay, every FAILED. It is the raw material of the
  connect-rate, storm and crash figures.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import logging
import resource
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, Final

import attrs
import httpx
import psutil
import trio

from actors.channel import ChannelStateChanged, ChannelStatus
from providers.base import OutboundMessage, Template
from providers.emulators.latency import MAX_LATENCY, checked_latency
from runtime.config.model import (
    BackoffConfig,
    ChannelSpec,
    EmulatorConfig,
    LoggingConfig,
    NodeConfig,
    NodeSection,
    OpsConfig,
    ProviderDefaults,
    RateLimitConfig,
    StorageConfig,
    SupervisorConfig,
)
from runtime.node import Node, open_node

from .platforms import reap
from .scenario import ScenarioError

__all__ = [
    "EMULATED",
    "FAR_ENDS",
    "ConnectPhase",
    "EmulatorControl",
    "EmulatorFleet",
    "FarEndProcess",
    "Rig",
    "StateLog",
    "connect_all",
    "emulator_processes_field",
    "far_end_field",
    "far_end_of",
    "open_external_emulator",
    "open_far_end_process",
    "open_fleet",
    "open_rig",
    "raise_open_files_limit",
    "rss",
    "rtt_field",
]

EMULATED: Final = ("websocket", "discord", "telegram", "whatsapp")
PROVIDERS: Final = (*EMULATED, "simulated")
RECIPIENTS: Final = 997  # distinct recipients a load rotates over (a prime: no beat with N)
FDS_RESERVED: Final = 200  # descriptors kept for everything but connections
STARTUP_TIMEOUT: Final = 30.0  # seconds for an emulator process to listen
PORTS_PER_RUN: Final = 16  # ports from --port-base on that one run may use (bench.__main__)
MESSAGE_IDS_PER_PROCESS: Final = 10**12  # out-N ids each lean far end may hand out
FAR_ENDS: Final = ("auto", "lean", "emulator")
# A WhatsApp emulator in a process of its own signs its webhooks with this
# secret, and the node's channels verify them with it (they are made up).
WA_APP_SECRET: Final = "bench-rig-whatsapp-app-secret"
WA_VERIFY_TOKEN: Final = "bench-rig-whatsapp-verify-token"
WA_NUMBER_BASE: Final = 100_000_000_000  # channel i's phone number id is base + i + 1

log = logging.getLogger("bench.rig")


def rtt_field() -> Any:
    """The ``rtt_ms`` parameter a scenario with a far end shares (``--rtt MS``)."""
    return attrs.field(
        default=0.0,
        metadata={
            "help": (
                "milliseconds every far end holds its answers back: a round trip "
                f"(0: loopback; at most {MAX_LATENCY * 1e3:g})"
            ),
            "aliases": ["--rtt"],
        },
        validator=_check_rtt,
    )


def far_end_field() -> Any:
    """The ``far_end`` parameter a scenario with far ends in processes of their own shares
    (``--far-end``; :func:`far_end_of` says which one a run gets)."""
    return attrs.field(
        default="auto",
        metadata={
            "help": (
                "with emulator=process: lean (bench.far_end, websocket only), emulator "
                "(switchboard emulate), or auto (lean for websocket, else the emulator)"
            )
        },
        validator=_check_far_end,
    )


def emulator_processes_field() -> Any:
    """The ``emulator_processes`` parameter that goes with :func:`far_end_field`."""
    return attrs.field(
        default=1,
        metadata={"help": "far-end processes (emulator=process); channel i uses process i mod K"},
        validator=_check_processes,
    )


def _check_far_end(instance: Any, attribute: Any, far_end: Any) -> None:
    if far_end not in FAR_ENDS:
        raise ValueError(f"far_end: expected one of {', '.join(FAR_ENDS)}, got {far_end!r}")


def _check_processes(instance: Any, attribute: Any, processes: Any) -> None:
    if not isinstance(processes, int) or processes < 1:
        raise ValueError(f"emulator_processes: expected at least 1, got {processes!r}")


def _check_rtt(instance: Any, attribute: Any, rtt_ms: Any) -> None:
    try:
        checked_latency(rtt_ms / 1e3, "rtt_ms")
    except (TypeError, ValueError):
        raise ValueError(
            f"rtt_ms (--rtt): expected milliseconds within 0..{MAX_LATENCY * 1e3:g}, got {rtt_ms!r}"
        ) from None


def rss() -> int:
    """This process's resident set size in bytes, after a full collection."""
    gc.collect()
    return int(psutil.Process().memory_info().rss)


def raise_open_files_limit(wanted: int) -> int:
    """Raise the soft open-files limit toward ``wanted``; return what it is now.

    Never above the hard limit (raising that needs privileges the harness
    should not ask for).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    goal = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if goal > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (goal, hard))
        soft = goal
    return int(soft)


def connection_capacity(fds_per_connection: int) -> int:
    """How many connections this process's open-files limit allows."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return max(0, (int(soft) - FDS_RESERVED) // fds_per_connection)


# ---------------------------------------------------------------- emulators


def _answer(response: httpx.Response, refused: Callable[[], str]) -> dict[str, Any]:
    """A control call's JSON answer; a refusal is a ``ScenarioError`` saying ``refused()``
    (made only then: the inject calls run in the node's process, on its CPU)."""
    if response.status_code >= 400:
        raise ScenarioError(f"{refused()}: {response.status_code} {response.text.strip()}")
    data: dict[str, Any] = response.json()
    return data


@attrs.define
class EmulatorControl:
    """An emulator's base URL and its control API (``/_emulator/...``)."""

    provider: str
    url: str
    client: httpx.AsyncClient
    pid: int | None = None  # set when the emulator is a separate process

    async def fault(self, **payload: Any) -> dict[str, Any]:
        return await self._post("fault", payload)

    async def inject(self, **payload: Any) -> dict[str, Any]:
        return await self._post("inject", payload)

    async def webhook(self, **payload: Any) -> dict[str, Any]:
        """Point the platform's webhooks somewhere (``POST /_emulator/webhook``: WhatsApp)."""
        return await self._post("webhook", payload)

    async def stats(self) -> dict[str, Any]:
        response = await self.client.get(f"{self.url}/_emulator/stats")
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    async def ownership(self, *, gaps_since: float | None = None) -> dict[str, Any]:
        """Who holds which identity's connection now (``GET /_emulator/ownership``):
        ``live``, ``overlap_count``, the first ``overlaps``, and with ``gaps_since``
        (wall clock) the ``gaps`` ended since then."""
        params = {} if gaps_since is None else {"gaps_since": repr(gaps_since)}
        response = await self.client.get(f"{self.url}/_emulator/ownership", params=params)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    async def sent(self, *, page: int = 5_000) -> list[dict[str, Any]]:
        """Everything the platform recorded as sent, oldest first, read in pages."""
        records: list[dict[str, Any]] = []
        while True:
            response = await self.client.get(
                f"{self.url}/_emulator/sent", params={"offset": len(records), "limit": page}
            )
            response.raise_for_status()
            chunk = response.json()
            if not chunk:
                return records
            records += chunk

    def channel_url(self, index: int) -> str:
        """The base URL channel ``index`` connects to (a websocket channel's ends in ``/ws``)."""
        if self.provider == "websocket":
            return self.url.replace("http://", "ws://", 1) + "/ws"
        return self.url

    def cpu_seconds(self) -> float | None:
        """CPU time the emulator process used so far (None when in-process)."""
        if self.pid is None:
            return None
        times = psutil.Process(self.pid).cpu_times()
        return float(times.user + times.system)

    async def _post(self, what: str, payload: dict[str, Any]) -> dict[str, Any]:
        return await self._post_to(self.url, what, payload)

    async def _post_to(self, base: str, what: str, payload: dict[str, Any]) -> dict[str, Any]:
        response = await self.client.post(f"{base}/_emulator/{what}", json=payload)
        return _answer(response, lambda: f"{self.provider} emulator refused {what} {payload}")


@contextlib.asynccontextmanager
async def open_external_emulator(
    provider: str, *, port: int = 0, app_secret: str | None = None
) -> AsyncIterator[tuple[str, int]]:
    """Run ``switchboard emulate <provider>`` as a child process; yield (url, pid).

    Args:
        provider: the platform.
        port: where it listens (0: any free port).
        app_secret: WhatsApp: the secret that signs its webhooks.

    Raises:
        ScenarioError: it did not start listening in time.
    """
    command = [sys.executable, "-m", "runtime.cli", "emulate", provider, "--port", str(port)]
    if app_secret is not None:
        command += ["--app-secret", app_secret]
    # A harness killed outright (SIGTERM, the watchdog) kills its children
    # first (bench.__main__); a normal exit ends this one below.
    process = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE, stderr=None)
    try:
        assert process.stdout is not None
        url = await _read_url(process.stdout, provider)
        yield url, process.pid
    finally:
        await reap(process)


@attrs.frozen(kw_only=True)
class FarEndProcess:
    """One process of a fleet: where its channels connect, its control API, its pid."""

    channel_url: str  # ws://host:port/ws for websocket channels, http://host:port for others
    control_url: str  # http://host:port (the control API is under /_emulator/)
    pid: int


@attrs.define
class EmulatorFleet(EmulatorControl):
    """Several far-end processes behind one control; channel ``i`` goes to process ``i mod K``.

    ``url`` is where the first process serves its platform (the baseline's
    bare clients connect there). Injections and faults go to every process
    (an injection without a token reaches every connected channel, as with
    one emulator, and a drop closes every connection: ``closed`` is summed),
    counters and CPU are summed, ``sent`` is every process's
    in turn. A lean far end refuses what it does not serve with HTTP 501,
    which becomes a :class:`~bench.scenario.ScenarioError` that says so.
    """

    members: list[FarEndProcess] = attrs.Factory(list)

    def channel_url(self, index: int) -> str:
        return self.members[index % len(self.members)].channel_url

    def cpu_seconds(self) -> float:
        """CPU time all the far-end processes used so far."""
        total = 0.0
        for member in self.members:
            times = psutil.Process(member.pid).cpu_times()
            total += times.user + times.system
        return total

    async def _post(self, what: str, payload: dict[str, Any]) -> dict[str, Any]:
        answers = [await self._post_to(m.control_url, what, payload) for m in self.members]
        merged: dict[str, Any] = {"processes": answers}
        if what == "inject":
            merged["delivered_to"] = sum(a.get("delivered_to", 0) for a in answers)
            merged["queued"] = any(a.get("queued", False) for a in answers)
        elif what == "fault" and all("closed" in a for a in answers):  # a drop or a close
            merged["closed"] = sum(a["closed"] for a in answers)
            merged["code"] = answers[0]["code"]
        return merged

    async def stats(self) -> dict[str, Any]:
        counters: Counter[str] = Counter()
        for member in self.members:
            data = await self._get(member.control_url, "stats")
            counters.update({k: v for k, v in data.items() if isinstance(v, int)})
        return {**counters, "processes": len(self.members)}

    async def sent(self, *, page: int = 5_000) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        for member in self.members:
            records += await EmulatorControl(self.provider, member.control_url, self.client).sent(
                page=page
            )
        return records

    async def ownership(self, *, gaps_since: float | None = None) -> dict[str, Any]:
        if len(self.members) > 1:
            raise ScenarioError(
                "ownership: several emulator processes each judge their own channels; "
                "run this scenario with one emulator process"
            )
        single = EmulatorControl(self.provider, self.members[0].control_url, self.client)
        return await single.ownership(gaps_since=gaps_since)

    async def _get(self, base: str, what: str) -> dict[str, Any]:
        response = await self.client.get(f"{base}/_emulator/{what}")
        return _answer(response, lambda: f"{self.provider} far end at {base} refused {what}")


@contextlib.asynccontextmanager
async def open_far_end_process(
    *,
    port: int = 0,
    control_port: int = 0,
    first_message_id: int = 1,
    heartbeat_interval: float | None = None,
    latency: float = 0.0,
    tls_cert: str | None = None,
) -> AsyncIterator[FarEndProcess]:
    """Run the lean websocket far end (``python -m bench.far_end``) as a child process.

    Args:
        port: its websocket port (0: any free port).
        control_port: its control API's port (0: any free port).
        first_message_id: the number of its first ``out-N`` message id.
        heartbeat_interval: seconds between its heartbeat frames (None: the
            emulator's default, 15 s).
        latency: seconds it holds its answers back (``--rtt``; 0: none).
        tls_cert: a PEM file with its certificate chain and key: it serves
            ``wss://`` (see :mod:`bench.tls`).

    Raises:
        ScenarioError: it did not start listening in time.
    """
    command = [
        *(sys.executable, "-m", "bench.far_end", "--port", str(port)),
        *("--control-port", str(control_port), "--first-message-id", str(first_message_id)),
    ]
    if heartbeat_interval is not None:
        command += ["--heartbeat-interval", str(heartbeat_interval)]
    if latency:
        command += ["--rtt", repr(latency * 1e3)]
    if tls_cert is not None:
        command += ["--tls-cert", tls_cert]
    process = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE, stderr=None)
    try:
        assert process.stdout is not None
        line = await _read_banner(process.stdout, "lean websocket far end")
        channel_url = line.split("listening on ", 1)[1].split()[0]
        control_url = line.split("control API: ", 1)[1].split()[0].removesuffix("/_emulator/)")
        yield FarEndProcess(channel_url=channel_url, control_url=control_url, pid=process.pid)
    finally:
        await reap(process)


@contextlib.asynccontextmanager
async def open_fleet(
    provider: str, *, far_end: str, processes: int, port_base: int = 0
) -> AsyncIterator[list[FarEndProcess]]:
    """Run ``processes`` far ends: ``lean`` (websocket only) or ``emulator`` processes.

    With ``port_base`` the processes take the ports after the node's, one
    each (two for a lean far end: its control API has its own).

    Raises:
        ScenarioError: a lean far end for another provider, too many processes
            for the ports a run may use, or one did not start in time.
    """
    if far_end == "lean" and provider != "websocket":
        raise ScenarioError(f"far end: the lean far end speaks websocket only, not {provider}")
    ports = 2 if far_end == "lean" else 1
    if port_base and 1 + processes * ports > PORTS_PER_RUN:
        raise ScenarioError(
            f"emulator processes: {processes} {far_end} processes need {processes * ports} "
            f"ports after --port-base and a run has {PORTS_PER_RUN - 1}; use fewer or no "
            "--port-base"
        )
    async with contextlib.AsyncExitStack() as stack:
        members: list[FarEndProcess] = []
        for k in range(processes):
            first = port_base + 1 + k * ports if port_base else 0
            if far_end == "lean":
                member = await stack.enter_async_context(
                    open_far_end_process(
                        port=first,
                        control_port=first + 1 if first else 0,
                        first_message_id=k * MESSAGE_IDS_PER_PROCESS + 1,
                    )
                )
            else:
                secret = WA_APP_SECRET if provider == "whatsapp" else None
                url, pid = await stack.enter_async_context(
                    open_external_emulator(provider, port=first, app_secret=secret)
                )
                channel_url = url.replace("http://", "ws://", 1) + "/ws"
                member = FarEndProcess(
                    channel_url=channel_url if provider == "websocket" else url,
                    control_url=url,
                    pid=pid,
                )
            members.append(member)
        yield members


async def _read_url(stream: trio.abc.ReceiveStream, provider: str) -> str:
    line = await _read_banner(stream, f"the {provider} emulator")
    return line.split("listening on ", 1)[1].split()[0]


async def _read_banner(stream: trio.abc.ReceiveStream, what: str) -> str:
    """The line in which a child process says where it listens."""
    buffer = b""
    with trio.move_on_after(STARTUP_TIMEOUT):
        while b"\n" not in buffer or b"listening on " not in buffer:
            chunk = await stream.receive_some()
            if not chunk:
                break
            buffer += chunk
        for line in buffer.decode(errors="replace").splitlines():
            if "listening on " in line:
                return line
    raise ScenarioError(
        f"{what} process did not start listening within "
        f"{STARTUP_TIMEOUT:.0f} s; it printed: {buffer.decode(errors='replace')[-400:]!r}"
    )


# ---------------------------------------------------------------- state log


class StateLog:
    """Every channel's status over time, from the node's ``state`` events.

    Attributes:
        connected_at: per connect, the trio time it happened (in order).
        disconnected_at: per lost connection, when.
        backoff_delays: every reconnect delay a channel scheduled, seconds.
        failed: channels that went FAILED, with the reason.
        connected: channels connected right now.
        dropped: events the subscription lost (the tally is then a lower bound).
    """

    def __init__(self) -> None:
        self.connected_at: list[float] = []
        self.disconnected_at: list[float] = []
        self.backoff_delays: list[float] = []
        self.failed: dict[str, str] = {}
        self.status: dict[str, ChannelStatus] = {}
        self.connected = 0
        self.dropped = 0
        self._waiters: list[tuple[int, trio.Event]] = []
        self._connect_waiters: list[tuple[int, trio.Event]] = []

    def __repr__(self) -> str:
        return f"<StateLog connected={self.connected} failed={len(self.failed)}>"

    def record(self, change: ChannelStateChanged, now: float) -> None:
        was = self.status.get(change.channel_id)
        self.status[change.channel_id] = change.status
        if change.status is ChannelStatus.CONNECTED and was is not ChannelStatus.CONNECTED:
            self.connected += 1
            self.connected_at.append(now)
        elif was is ChannelStatus.CONNECTED and change.status is not ChannelStatus.CONNECTED:
            self.connected -= 1
            self.disconnected_at.append(now)
        if change.status is ChannelStatus.BACKING_OFF and change.delay is not None:
            self.backoff_delays.append(change.delay)
        if change.status is ChannelStatus.FAILED:
            self.failed[change.channel_id] = change.reason or "no reason given"
        self._wake()

    def statuses(self) -> Counter[str]:
        return Counter(s.value for s in self.status.values())

    async def wait_connected(self, count: int) -> None:
        """Until at least ``count`` channels are connected at once."""
        if self.connected >= count:
            return
        event = trio.Event()
        self._waiters.append((count, event))
        await event.wait()

    async def wait_connects(self, total: int) -> None:
        """Until ``total`` connects have happened since the log began."""
        if len(self.connected_at) >= total:
            return
        event = trio.Event()
        self._connect_waiters.append((total, event))
        await event.wait()

    def _wake(self) -> None:
        if self._waiters:
            ready = [(n, e) for n, e in self._waiters if self.connected >= n]
            for item in ready:
                self._waiters.remove(item)
                item[1].set()
        if self._connect_waiters:
            done = len(self.connected_at)
            ready = [(n, e) for n, e in self._connect_waiters if done >= n]
            for item in ready:
                self._connect_waiters.remove(item)
                item[1].set()


# ---------------------------------------------------------------- the rig


@attrs.define
class Rig:
    """A node, its channels, their emulator and the state log."""

    node: Node
    provider: str
    emulator: EmulatorControl | None
    states: StateLog
    channel_ids: list[str] = attrs.Factory(list)
    external_credentials: bool = False
    far_end: str = ""  # what the channels talk to, in words, for a report's notes
    webhooks: bool = True  # wire a WhatsApp emulator process's status webhooks to the node
    _webhooks_wired: bool = False

    def spec(self, index: int) -> ChannelSpec:
        channel_id = f"ch{index:05d}"
        if self.provider == "simulated":
            return ChannelSpec(id=channel_id, provider="simulated", tenant="bench")
        if self.external_credentials:
            assert self.emulator is not None
            base = self.emulator.channel_url(index)
            credentials = {"token": _made_up_token(self.provider, index)}
            options: dict[str, Any] = {}
            if self.provider == "whatsapp":
                credentials |= {"app_secret": WA_APP_SECRET, "verify_token": WA_VERIFY_TOKEN}
                options = {"phone_number_id": str(WA_NUMBER_BASE + index + 1)}
            return ChannelSpec(
                id=channel_id,
                provider=self.provider,
                tenant="bench",
                base_url=base,
                credentials=credentials,
                options=options,
            )
        return ChannelSpec(id=channel_id, provider=self.provider, tenant="bench", emulator=True)

    async def wire_webhooks(self) -> None:
        """Point a WhatsApp emulator in a process of its own at the node's ops server
        (once; nothing to do for other providers, an emulator in the node's
        process, which the node wires itself, or with ``webhooks`` off: the
        emulator then keeps its statuses, as with no webhook configured).

        Raises:
            ScenarioError: the emulator refused it (no channel answered the handshake).
        """
        if self.provider != "whatsapp" or not self.external_credentials or self._webhooks_wired:
            return
        if not self.webhooks:
            return
        assert self.emulator is not None and self.node.ops_url is not None
        await self.emulator.webhook(
            url=self.node.ops_url + "/webhooks/whatsapp", verify_token=WA_VERIFY_TOKEN
        )
        self._webhooks_wired = True

    async def start_channels(self, count: int, rate: float = 0.0) -> None:
        """Start ``count`` more channels, at ``rate`` per second (0: at once, as a node
        starts its configured channels: ``Node.start_channels``)."""
        first = len(self.channel_ids)
        if rate <= 0:
            specs = [self.spec(index) for index in range(first, first + count)]
            for spec, result in zip(specs, await self.node.start_channels(specs), strict=True):
                if isinstance(result, Exception):
                    raise result
                self.channel_ids.append(spec.id)
            return
        start = trio.current_time()
        for n, index in enumerate(range(first, first + count)):
            await trio.sleep_until(start + n / rate)
            spec = self.spec(index)
            await self.node.start_channel(spec)
            self.channel_ids.append(spec.id)

    def message(self, number: int, key: str, text: str) -> OutboundMessage:
        """Message ``number`` of a load: text, or for WhatsApp a template.

        Recipients rotate with the message number, so per-recipient limits
        (Telegram's one message a second per chat, WhatsApp's pair limit) meet
        a spread load, as they would in a product. WhatsApp only takes
        free-form text within 24 hours of the user's last message; a business
        starts a conversation with a template.
        """
        if self.provider == "whatsapp":
            return OutboundMessage(
                peer=self.peer(number),
                idempotency_key=key,
                template=Template(name="hello_world", language="en_US"),
            )
        return OutboundMessage(peer=self.peer(number), idempotency_key=key, text=text)

    def peer(self, number: int) -> str:
        """A recipient every emulator accepts, one of 997 by ``number``."""
        if self.provider == "telegram":
            return str(1_000 + number % RECIPIENTS)
        if self.provider == "discord":
            return "100000000000000001"  # the emulator's default text channel
        if self.provider == "whatsapp":
            return f"15550{number % RECIPIENTS:06d}"
        return f"user-{number % RECIPIENTS}"


@attrs.frozen(kw_only=True)
class ConnectPhase:
    """How starting a batch of channels went.

    Attributes:
        wanted: channels started.
        connected: channels connected at the end of the phase.
        start: trio time of the first start.
        seconds: from the first start until all connected (or the phase gave up).
        times: trio time of every connect in the phase.
        rss_before: node RSS before the first start (after a collection).
        rss_after: node RSS once all connected (after a collection).
        cpu: node process CPU seconds the phase took.
        emulator_cpu: the emulator process's, when it is a process of its own.
    """

    wanted: int
    connected: int
    start: float
    seconds: float
    times: list[float]
    rss_before: int
    rss_after: int
    cpu: float
    emulator_cpu: float | None

    @property
    def rate(self) -> float:
        return self.connected / self.seconds if self.seconds else 0.0


async def connect_all(
    rig: Rig, count: int, *, rate: float, budget: float, progress: Any
) -> ConnectPhase:
    """Start ``count`` channels and wait until all are connected, within ``budget`` seconds."""
    rss_before = rss()
    cpu_before = cpu_seconds()
    emulator_before = rig.emulator.cpu_seconds() if rig.emulator is not None else None
    progress.phase(f"starting {count:,} {rig.provider} channels", count, "connected")
    first = len(rig.states.connected_at)
    start = trio.current_time()
    with trio.move_on_after(budget):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(rig.start_channels, count, rate)
            while rig.states.connected < count:
                progress.update(rig.states.connected, failed=len(rig.states.failed))
                with trio.move_on_after(0.2):
                    await rig.states.wait_connected(count)
    seconds = trio.current_time() - start
    if rig.states.connected:
        await rig.wire_webhooks()
    cpu = cpu_seconds() - cpu_before
    emulator_after = rig.emulator.cpu_seconds() if rig.emulator is not None else None
    progress.update(rig.states.connected)
    return ConnectPhase(
        wanted=count,
        connected=rig.states.connected,
        start=start,
        seconds=seconds,
        times=rig.states.connected_at[first:],
        rss_before=rss_before,
        rss_after=rss(),
        cpu=cpu,
        emulator_cpu=(
            emulator_after - emulator_before
            if emulator_after is not None and emulator_before is not None
            else None
        ),
    )


def _made_up_token(provider: str, index: int) -> str:
    if provider == "telegram":  # the Bot API's shape: <bot id>:<35 characters>
        return f"{100_000 + index}:{'bench-token-' + f'{index:05d}':_<35}"
    return f"bench-token-{index:05d}"


def node_config(
    provider: str,
    *,
    in_process_emulator: bool,
    limits: bool,
    backoff: BackoffConfig | None = None,
    intensity: int = 1_000_000,
    port_base: int = 0,
    gc_policy: str = "tuned",
    node: Mapping[str, Any] | None = None,
    storage: Mapping[str, Any] | None = None,
) -> NodeConfig:
    """A node for benchmarks: memory store, no ops listener (but for WhatsApp's webhooks),
    quiet logs; its listeners on ``port_base`` and up (0: any free ports); ``node``
    and ``storage``: keys of its ``[node]`` and ``[storage]`` to set."""
    if provider not in PROVIDERS:
        raise ScenarioError(f"provider: expected one of {', '.join(PROVIDERS)}, got {provider!r}")
    defaults = ProviderDefaults(
        rate_limit=RateLimitConfig(enabled=limits),
        backoff=backoff or BackoffConfig(),
    )
    emulators = (
        {provider: EmulatorConfig(port=emulator_port(port_base))} if in_process_emulator else {}
    )
    return NodeConfig(
        node=NodeSection(
            id="bench",
            start_timeout=600.0,
            drain_deadline=5.0,
            gc="default" if gc_policy == "default" else "tuned",
            **(node or {}),
        ),
        ops=OpsConfig(enabled=provider == "whatsapp", port=port_base),
        logging=LoggingConfig(level="error"),
        supervisor=SupervisorConfig(intensity=intensity),
        providers={provider: defaults},
        emulators=emulators,
        storage=StorageConfig(**(storage or {})),
        channels=[],
    )


@contextlib.asynccontextmanager
async def open_rig(
    provider: str,
    *,
    external: bool,
    limits: bool,
    backoff: BackoffConfig | None = None,
    intensity: int = 1_000_000,
    state_buffer: int = 100_000,
    port_base: int = 0,
    gc_policy: str = "tuned",
    far_end: str = "emulator",
    emulator_processes: int = 1,
    rtt: float = 0.0,
    node_settings: Mapping[str, Any] | None = None,
    storage_settings: Mapping[str, Any] | None = None,
) -> AsyncIterator[Rig]:
    """A node with no channels yet, its emulator, and the state log running.

    Args:
        port_base: the node's ops port; the emulator's is the next (0: any
            free ports), so that two runs can share a machine.
        provider: which platform the channels speak.
        external: run the emulator as a separate process.
        limits: keep the platform's rate limits (False turns them off).
        backoff: reconnect backoff overrides for every channel.
        intensity: the channels supervisor's restart intensity.
        state_buffer: events the state log may fall behind by.
        gc_policy: the node's ``[node] gc``: ``tuned`` or ``default``.
        node_settings: keys of the node's ``[node]`` to set
            (``max_sends_in_flight``, ``max_loop_lag``: its admission bounds).
        storage_settings: keys of the node's ``[storage]`` to set
            (``checkpoint_interval``: how often its checkpoint rounds run).
        far_end: with ``external``, what the channels talk to: ``emulator``
            (``switchboard emulate``), ``lean`` (:mod:`bench.far_end`, websocket
            only) or ``auto`` (lean for websocket, else the emulator).
        emulator_processes: with ``external``, how many far-end processes;
            channel ``i`` connects to process ``i mod K``.
        rtt: seconds every far end holds its answers back (0: none), set
            through the control API before any channel starts.

    Raises:
        ScenarioError: a combination that cannot run (see :func:`far_end_of`),
            or a far end that refused the latency.
    """
    far_end = far_end_of(provider, external=external, far_end=far_end, processes=emulator_processes)
    if external and provider == "simulated":
        external = False  # the simulated provider has no emulator at all
    quiet = logging.getLogger("switchboard")
    previous = quiet.level
    quiet.setLevel(logging.CRITICAL)  # a storm logs a line per reconnect: not the figure
    async with contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(httpx.AsyncClient(timeout=30.0))
        emulator: EmulatorControl | None = None
        if external and (far_end == "lean" or emulator_processes > 1):
            members = await stack.enter_async_context(
                open_fleet(
                    provider, far_end=far_end, processes=emulator_processes, port_base=port_base
                )
            )
            # The first process's platform, as an http URL (the baseline connects there).
            first = members[0].channel_url.replace("ws://", "http://", 1).removesuffix("/ws")
            emulator = EmulatorFleet(provider, first, client, members=members)
        elif external:
            secret = WA_APP_SECRET if provider == "whatsapp" else None
            url, pid = await stack.enter_async_context(
                open_external_emulator(provider, port=emulator_port(port_base), app_secret=secret)
            )
            emulator = EmulatorControl(provider, url, client, pid)
        config = node_config(
            provider,
            in_process_emulator=provider in EMULATED and not external,
            limits=limits,
            backoff=backoff,
            intensity=intensity,
            port_base=port_base,
            gc_policy=gc_policy,
            node=node_settings,
            storage=storage_settings,
        )
        node = await stack.enter_async_context(open_node(config))
        if emulator is None and provider in EMULATED:
            emulator = EmulatorControl(provider, node.emulator_urls[provider], client)
        if rtt and emulator is not None:
            await emulator.fault(kind="latency", seconds=rtt)
        states = StateLog()
        nursery = await stack.enter_async_context(trio.open_nursery())
        await nursery.start(_follow, node, states, state_buffer)
        try:
            yield Rig(
                node=node,
                provider=provider,
                emulator=emulator,
                states=states,
                external_credentials=external,
                far_end=_far_end_line(far_end, provider, external, emulator_processes, rtt),
            )
        finally:
            nursery.cancel_scope.cancel()
            quiet.setLevel(previous)


def far_end_of(provider: str, *, external: bool, far_end: str, processes: int) -> str:
    """The far end a run uses: ``lean`` or ``emulator`` (``auto``: lean for websocket
    channels against a separate process when picows is installed, else the emulator).

    Raises:
        ScenarioError: an unknown far end, a lean one for another provider or
            in the node's process, or several processes in the node's.
    """
    if far_end not in FAR_ENDS:
        raise ScenarioError(f"far end: expected one of {', '.join(FAR_ENDS)}, got {far_end!r}")
    if processes < 1:
        raise ScenarioError(f"emulator processes: expected at least 1, got {processes}")
    separate = external and provider in EMULATED
    if far_end == "auto":
        lean = separate and provider == "websocket" and _importable("picows")
        return "lean" if lean else "emulator"
    if far_end == "lean" and not (separate and provider == "websocket"):
        raise ScenarioError(
            "far end: the lean far end serves websocket channels from a separate process "
            f"only (this run: {provider}, emulator {'process' if external else 'inprocess'})"
        )
    if processes > 1 and not separate:
        raise ScenarioError(
            f"emulator processes: {processes} needs emulators in processes of their own "
            f"(this run: {provider}, emulator {'process' if external else 'inprocess'})"
        )
    return far_end


def _importable(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _far_end_line(
    far_end: str, provider: str, external: bool, processes: int, rtt: float = 0.0
) -> str:
    if provider not in EMULATED:
        return "far end: none (the simulated provider has no sockets)"
    held = f"; every answer held back {rtt * 1e3:g} ms (a round trip)" if rtt else ""
    if not external:
        return f"far end: the {provider} emulator in the node's process{held}"
    what = (
        "the lean websocket far end (bench.far_end: picows on uvloop)"
        if far_end == "lean"
        else f"the {provider} emulator (switchboard emulate: hypercorn)"
    )
    spread = f", channels spread across {processes} processes" if processes > 1 else ""
    return f"far end: {what}, in processes of their own{spread}; their CPU is summed{held}"


async def _follow(
    node: Node, states: StateLog, buffer: int, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    with node.subscribe(kind="state", buffer=buffer) as events:
        task_status.started()
        async for event in events:
            now = trio.current_time()
            states.record(event.event, now)
            # Everything buffered, at once: one event per wake-up is one per
            # scheduling round, and a storm's rounds are long (thousands of
            # channels' tasks run in each): the log fell seconds behind the
            # channels and dated their reconnects late, all in one burst.
            while True:
                try:
                    more = events.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                states.record(more.event, now)
            states.dropped = events.dropped


def emulator_port(port_base: int) -> int:
    """The emulator's port for a run on ``port_base`` (0: any free port)."""
    return port_base + 1 if port_base else 0


def per_interval(times: Sequence[float], start: float, end: float, width: float) -> list[int]:
    """How many of ``times`` fall in each ``width``-second interval of [start, end)."""
    bins = [0] * max(1, int((end - start) / width + 0.999999))
    for t in times:
        i = int((t - start) / width)
        if 0 <= i < len(bins):
            bins[i] += 1
    return bins


def cpu_seconds() -> float:
    """CPU time this process used so far (user + system, every thread).

    ``time.process_time`` rather than ``os.times``: the same sum, to the
    nanosecond instead of to the 10 ms clock tick; an idle node or bare
    client spends a few ticks in a 20 s window, so ticks would be the figure.
    """
    return time.process_time()
