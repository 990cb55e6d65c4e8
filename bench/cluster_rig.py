"""A cluster under faults: real ``switchboard run`` nodes, one Redis, emulators as judges.

Design:
- The rig runs, on this machine: a Redis server of its own (so it can be
  restarted empty), one :class:`~providers.testing.LinkBreaker` per node in
  front of it (so one node's link can be frozen and cut), one emulator per
  platform in a process of their own (:mod:`bench.platforms`; the judges:
  they count every identity's live connections and every overlap), and N
  nodes as ``switchboard run`` subprocesses sharing one deployment file but
  for their ids and Redis addresses, and one PostgreSQL schema.
- The emulators are judged and driven over their control API only
  (:class:`~bench.rig.EmulatorControl`: ``/_emulator/ownership``,
  ``stats``, ``sent``, ``inject``, ``fault``, ``webhook``): thousands of
  websockets heartbeating cost most of a core, which must not be the
  rig's own (its polls and clocks would lag behind what they measure).
- :meth:`ClusterRig.fault` draws a fault from a seeded random source:
  SIGKILL and restart, SIGSTOP for longer than the lease TTL then SIGCONT,
  the node's link to Redis frozen then cut, Redis restarted without its
  data, a node leaving (SIGTERM, a drain) and joining again. After each the
  rig waits for every persistent channel to be connected again, once, and
  records how long that took.
- Judged by the emulators, not by the nodes: zero overlaps, every channel
  back within ``lease_ttl + 5 s`` of each fault, none left without a
  connection.

The proof test (``tests/test_cluster_proof.py``) and the bench scenario
``cluster`` both drive it.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import asyncpg  # type: ignore[import-untyped]
import attrs
import httpx
import trio
import trio_asyncio  # type: ignore[import-untyped]

from providers.emulators.base import shown_identity
from providers.testing import LinkBreaker
from runtime.cluster.redis import RedisLink, open_redis

from .platforms import PlatformsSpec, open_platforms
from .rig import EmulatorControl

__all__ = [
    "API_TOKEN",
    "WA_APP_SECRET",
    "WA_NUMBER_BASE",
    "WA_VERIFY_TOKEN",
    "WEBHOOK_SECRET",
    "ClusterRig",
    "FaultRecord",
    "RigParams",
    "drop_pg_schema",
    "free_port",
    "open_cluster_rig",
    "spawn_redis",
    "stored_inbound",
    "wait_port",
]

FAULTS: Final = ("kill", "stop", "link", "redis", "leave")
API_TOKEN: Final = "rig-api-token-0123456789"  # the nodes' message API token (params.ops)
WA_APP_SECRET: Final = "rig-whatsapp-app-secret"  # signs the WhatsApp emulator's webhooks
WA_VERIFY_TOKEN: Final = "rig-whatsapp-verify-token"
WA_NUMBER_BASE: Final = 1_000_000  # wa-NNNN's phone number id is this + N
WEBHOOK_SECRET: Final = "rig-telegram-webhook-secret"  # params.telegram_webhooks
RECOVERY_SLACK: Final = 5.0  # seconds past the lease TTL a channel may take to come back
RECOVERY_CEILING: Final = 60.0  # more seconds before a fault's recovery counts as a hang
POLL: Final = 0.05  # seconds between looks at the platforms ...
POLL_PER: Final = 500  # ... per this many persistent channels (each look lists them all)
CONTROL_TIMEOUT: Final = 30.0  # seconds one call to an emulator's control API may take
STARTUP_BASE: Final = 120.0  # seconds the rig's channels may take to connect at first ...
STARTUP_PER: Final = 0.1  # ... plus this per channel (3,000 channels: 7 minutes)


@attrs.frozen(kw_only=True)
class RigParams:
    """What the rig runs.

    Attributes:
        nodes: node processes started with the rig.
        standby: more node ids (after the started ones) the rig configures
            but does not start: a node that joins later (``start_node``).
        websocket: websocket channels.
        telegram: Telegram channels (judged for overlaps; they poll, so they
            are not counted as "connected").
        discord: Discord channels.
        whatsapp: WhatsApp numbers (``wa-NNNN``, phone number id
            ``WA_NUMBER_BASE + N``); their webhooks go to whichever node the
            emulator's webhook URL names (``await rig.whatsapp.webhook(url=...)``).
        whatsapp_redeliver: the WhatsApp emulator delivers a webhook the
            node did not answer 2xx again, as Meta does.
        telegram_webhooks: the Telegram channels take updates by webhook
            (secret ``WEBHOOK_SECRET``) instead of polling; needs ``ops``.
        lease_ttl: the cluster's lease TTL, seconds.
        heartbeat: the cluster's heartbeat interval, seconds.
        member_timeout: the cluster's member timeout, seconds.
        cooldown: the cluster's ``move_cooldown``, seconds.
        seed: the random source of the faults.
        log_level: the nodes' log level (``SWITCHBOARD_RIG_LOG``; logs go
            to ``<workdir>/<node>.log``).
        freezes: the faults may freeze a node (``stop``, ``link``): the
            platforms heartbeat every TTL/6 and drop a client silent for
            0.45 TTL, so a frozen node's sessions end before its leases can
            expire. Off, they keep their own heartbeat intervals (a killed
            or drained node's sessions end with its sockets).
        drain_deadline: the nodes' ``[node] drain_deadline``, seconds: a
            drain (SIGTERM) hands channels off for most of it and ends the
            rest, so it must cover the channels a node holds for the drain
            to be a planned handoff.
        breakers: put a :class:`~providers.testing.LinkBreaker` between each
            node and Redis (the ``link`` fault needs it); without, the nodes
            talk to Redis directly (no proxy in the rig's own process).
        ops: give each node an ops listener with the message API (its URL in
            :attr:`ClusterRig.ops_urls`, the token :data:`API_TOKEN`).
        pg_dsn: the PostgreSQL the nodes share.
        workdir: where files and logs go.
        latency: seconds every platform holds its answers back, a round
            trip (:attr:`bench.platforms.PlatformsSpec.latency`; 0: none).
        max_sends_in_flight: the nodes' ``[node] max_sends_in_flight``
            (None: the default).
        max_channel_sends: the nodes' ``[node] max_channel_sends`` (None:
            the default).
        websocket_send_timeout: seconds a websocket channel's send waits for
            its ack (the provider's option ``send_timeout``; None: its
            default, 10 s), for sends held longer than that by ``latency``
            or a latency fault.
    """

    nodes: int = 3
    standby: int = 0
    websocket: int = 200
    telegram: int = 50
    discord: int = 50
    whatsapp: int = 0
    whatsapp_redeliver: bool = False
    telegram_webhooks: bool = False
    lease_ttl: float = 4.0
    heartbeat: float = 0.5
    member_timeout: float = 3.0
    cooldown: float = 10.0
    drain_deadline: float = 3.0
    seed: int = 1
    freezes: bool = True
    breakers: bool = True
    ops: bool = False
    log_level: str = os.environ.get("SWITCHBOARD_RIG_LOG", "warning")
    pg_dsn: str = os.environ.get("SWITCHBOARD_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
    workdir: Path = Path("/tmp/switchboard-cluster-rig")
    latency: float = 0.0
    max_sends_in_flight: int | None = None
    max_channel_sends: int | None = None
    websocket_send_timeout: float | None = None


@attrs.frozen(kw_only=True)
class FaultRecord:
    """One fault and what followed.

    Attributes:
        kind: kill, stop, link, redis or leave.
        node: the node hit (``None`` for Redis).
        recovery: seconds from the fault's end until every channel was
            connected and stayed so (for half a lease TTL): the paced moves
            back to a node that came back are in it.
        outage: the longest time any persistent channel (websocket,
            Discord) was without its connection, from the fault's start to
            its recovery: how long the fault kept a channel dark.
        dark: which channel that was, from when (wall clock, to match the
            nodes' logs) and how its connection had ended (the emulator's
            word); ``None`` when none went dark.
        began: wall-clock time the fault began (to match the nodes' logs).
        ended: wall-clock time the fault ended (the node resumed, the link
            or Redis came back, the node was started again).
    """

    kind: str
    node: str | None
    recovery: float
    outage: float
    dark: tuple[str, float, str] | None
    began: float
    ended: float


def spawn_redis(port: int) -> subprocess.Popen[bytes]:
    """A Redis server of our own on ``port``: no persistence, so a restart is empty."""
    server = shutil.which("redis-server")
    if server is None:
        raise RuntimeError("redis-server is not installed")
    return subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def wait_port(port: int, *, process: trio.Process | None = None) -> None:
    """Until something listens on 127.0.0.1:``port``.

    Raises:
        ProcessLookupError: ``process`` (what should listen) ended first.
    """
    while True:
        if process is not None and process.returncode is not None:
            raise ProcessLookupError(f"it exited with {process.returncode}")
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
        except OSError:
            await trio.sleep(POLL)
            continue
        await stream.aclose()
        return


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _switchboard() -> list[str]:
    script = Path(sys.executable).parent / "switchboard"
    if script.exists():
        return [str(script)]
    found = shutil.which("switchboard")
    if found is None:
        raise RuntimeError("the switchboard console script is not installed (pip install -e .)")
    return [found]


class ClusterRig:
    """The running rig (see the module docstring); made by :func:`open_cluster_rig`."""

    def __init__(
        self,
        params: RigParams,
        schema: str,
        nursery: trio.Nursery,
        platforms: dict[str, EmulatorControl],
    ) -> None:
        self.params = params
        self.schema = schema
        self.rng = random.Random(params.seed)
        self.redis_port = free_port()
        self.redis: subprocess.Popen[bytes] | None = None
        self.breakers: dict[str, LinkBreaker] = {}
        self.breaker_ports: dict[str, int] = {}
        self.processes: dict[str, trio.Process] = {}
        self.node_ids = [f"n{i + 1}" for i in range(params.nodes + params.standby)]
        self.ops_ports = {node_id: free_port() for node_id in self.node_ids}
        self.ops_urls = {node_id: f"http://127.0.0.1:{p}" for node_id, p in self.ops_ports.items()}
        self.websocket = platforms["websocket"]
        self.telegram = platforms["telegram"]
        self.discord = platforms["discord"]
        self.whatsapp = platforms["whatsapp"]
        self.urls = {name: control.url for name, control in platforms.items()}
        # The persistent channels (websocket, Discord) by their identity as the
        # emulators show it.
        self.linked_channels = {
            **{shown_identity(self._ws_token(i)): f"ws-{i:04d}" for i in range(params.websocket)},
            **{shown_identity(self._dc_token(i)): f"dc-{i:04d}" for i in range(params.discord)},
        }
        self.faults: list[FaultRecord] = []
        self.restarts = 0
        self.startup = 0.0  # seconds from the nodes' start until every channel connected
        self._nursery = nursery

    @staticmethod
    def platforms_spec(params: RigParams) -> PlatformsSpec:
        """The emulators the rig's channels need (:mod:`bench.platforms`)."""
        # A frozen process cannot close anything: its sessions end when the
        # platform stops hearing from it. So the platforms here drop a client
        # silent for 0.45 TTL (checked every TTL/6: gone within 0.62 TTL),
        # before the earliest moment its lease can expire elsewhere: the last
        # renewal is at most TTL/3 old when the node freezes, so the lease
        # lives at least 2/3 TTL after that. A deployment's TTL must keep the
        # same order over its platforms' own timeouts (README).
        # Without freezes (RigParams.freezes) every node that stops is killed
        # or drained, and its sessions end with its sockets: the platforms keep
        # their own heartbeats (websocket 15 s, Discord 41.25 s). A heartbeat
        # every TTL/6 costs each websocket two frames, about 400 µs each in
        # hypercorn: at 3,000 channels and TTL 10 s more than a core.
        return PlatformsSpec(
            websocket_tokens=tuple(ClusterRig._ws_token(i) for i in range(params.websocket)),
            heartbeat_interval=params.lease_ttl / 6 if params.freezes else None,
            client_timeout=params.lease_ttl * 0.45 if params.freezes else None,
            whatsapp_app_secret=WA_APP_SECRET,
            whatsapp_numbers=tuple(str(WA_NUMBER_BASE + i) for i in range(params.whatsapp)),
            whatsapp_redeliver=params.whatsapp_redeliver,
            keep_all=True,  # the moves run's ledger reads every send
            latency=params.latency,
        )

    # --- identities ---------------------------------------------------------------------

    @staticmethod
    def _ws_token(i: int) -> str:
        return f"ws-token-{i:04d}"

    @staticmethod
    def _tg_token(i: int) -> str:
        return f"{100000 + i}:" + f"{i:035d}"

    @staticmethod
    def _dc_token(i: int) -> str:
        return f"dc-token-{i:04d}"

    def token_of(self, channel_id: str) -> str:
        """The platform token of one of the rig's channels (``ws-``, ``tg-``, ``dc-``)."""
        kind, _, number = channel_id.partition("-")
        made = {"ws": self._ws_token, "tg": self._tg_token, "dc": self._dc_token}[kind]
        return made(int(number))

    def env(self) -> dict[str, str]:
        env = {f"SB_WS_{i}": self._ws_token(i) for i in range(self.params.websocket)}
        env.update({f"SB_TG_{i}": self._tg_token(i) for i in range(self.params.telegram)})
        env.update({f"SB_DC_{i}": self._dc_token(i) for i in range(self.params.discord)})
        env["SB_API_TOKEN"] = API_TOKEN
        env["SB_WA_TOKEN"] = "rig-whatsapp-token"
        env["SB_WA_APP_SECRET"] = WA_APP_SECRET
        env["SB_WA_VERIFY"] = WA_VERIFY_TOKEN
        env["SB_TG_SECRET"] = WEBHOOK_SECRET
        return env

    # --- the file ------------------------------------------------------------------------

    def config_text(self, node_id: str) -> str:
        p = self.params
        lines = [
            "[node]",
            f'id = "{node_id}"',
            f'drain_deadline = "{p.drain_deadline:g}s"',
            'start_timeout = "10s"',
            *(
                f"{key} = {value}"
                for key, value in [
                    ("max_sends_in_flight", p.max_sends_in_flight),
                    ("max_channel_sends", p.max_channel_sends),
                ]
                if value is not None
            ),
            "[storage]",
            'backend = "postgres"',
            f'dsn = "{p.pg_dsn}"',
            f'schema = "{self.schema}"',
            'checkpoint_interval = "1s"',
            "[ops]",
            *(
                [f"port = {self.ops_ports[node_id]}", 'api_token = "${env:SB_API_TOKEN}"']
                if p.ops
                else ["enabled = false"]
            ),
            "[logging]",
            f'level = "{p.log_level}"',
            'format = "json"',
            "[cluster]",
            f'redis_url = "redis://127.0.0.1:{self.breaker_ports.get(node_id, self.redis_port)}/0"',
            'key_prefix = "rig"',
            f'heartbeat_interval = "{p.heartbeat}s"',
            f'member_timeout = "{p.member_timeout}s"',
            f'lease_ttl = "{p.lease_ttl}s"',
            f'move_cooldown = "{p.cooldown}s"',
            "[providers.telegram]",
            "options = { poll_timeout = 1 }",
        ]
        if p.websocket_send_timeout is not None:
            lines += [
                "[providers.websocket]",
                f"options = {{ send_timeout = {p.websocket_send_timeout:g} }}",
            ]
        ws = self.urls["websocket"].replace("http", "ws") + "/ws"
        for i in range(p.websocket):
            lines += _channel(f"ws-{i:04d}", "websocket", ws, f"SB_WS_{i}")
        for i in range(p.telegram):
            hooks = [("webhook_secret", "SB_TG_SECRET")] if p.telegram_webhooks else []
            lines += _channel(
                f"tg-{i:04d}", "telegram", self.urls["telegram"], f"SB_TG_{i}", *hooks
            )
            if p.telegram_webhooks:
                lines.append('options = { mode = "webhook" }')
        for i in range(p.discord):
            lines += _channel(f"dc-{i:04d}", "discord", self.urls["discord"], f"SB_DC_{i}")
        for i in range(p.whatsapp):
            secrets = [("app_secret", "SB_WA_APP_SECRET"), ("verify_token", "SB_WA_VERIFY")]
            lines += _channel(
                f"wa-{i:04d}", "whatsapp", self.urls["whatsapp"], "SB_WA_TOKEN", *secrets
            )
            lines.append(f'options = {{ phone_number_id = "{WA_NUMBER_BASE + i}" }}')
        return "\n".join(lines) + "\n"

    # --- processes ----------------------------------------------------------------------

    def start_redis(self) -> None:
        self.redis = spawn_redis(self.redis_port)

    def stop_redis(self) -> None:
        if self.redis is not None:
            self.redis.kill()
            self.redis.wait()
            self.redis = None

    async def wait_redis(self) -> None:
        await wait_port(self.redis_port)

    async def start_node(self, node_id: str) -> None:
        workdir = self.params.workdir
        path = workdir / f"{node_id}.toml"
        path.write_text(self.config_text(node_id))
        log = open(workdir / f"{node_id}.log", "ab")  # noqa: SIM115, ASYNC230 - the process owns it; a local file
        self.processes[node_id] = await trio.lowlevel.open_process(
            [*_switchboard(), "run", str(path)],
            stdout=log,
            stderr=log,
            env={**os.environ, **self.env()},
        )
        log.close()

    async def kill_node(self, node_id: str, signum: int = signal.SIGKILL) -> None:
        process = self.processes.pop(node_id, None)
        if process is None:
            return
        process.send_signal(signum)
        with trio.fail_after(self.params.drain_deadline + 30):
            await process.wait()

    # --- judging ------------------------------------------------------------------------

    async def holders(self, link: RedisLink | None = None) -> dict[str, str]:
        """Every channel's lease holder as Redis has it now (``{channel: node}``).

        Args:
            link: a connection to the rig's Redis to use; else one is opened.
        """
        channels = self.channel_ids()
        keys = [f"rig:lease:{channel}" for channel in channels]
        if link is None:
            async with open_redis(f"redis://127.0.0.1:{self.redis_port}/0", timeout=5.0) as own:
                values = await own.call("MGET", *keys)
        else:
            values = await link.call("MGET", *keys)
        return {
            channel: (value.decode() if isinstance(value, bytes) else str(value)).rpartition("|")[0]
            for channel, value in zip(channels, values, strict=True)
            if value is not None
        }

    def channel_ids(self) -> list[str]:
        p = self.params
        return (
            [f"ws-{i:04d}" for i in range(p.websocket)]
            + [f"tg-{i:04d}" for i in range(p.telegram)]
            + [f"dc-{i:04d}" for i in range(p.discord)]
            + [f"wa-{i:04d}" for i in range(p.whatsapp)]
        )

    async def linked(self) -> set[str]:
        """The persistent channels (websocket, Discord) that hold exactly one
        platform connection now, as the emulators see it."""
        linked = set()
        for control in (self.websocket, self.discord):
            live = (await control.ownership())["live"]
            linked |= {
                channel
                for identity, count in live.items()
                if count == 1 and (channel := self.linked_channels.get(identity)) is not None
            }
        return linked

    async def connected(self) -> bool:
        """Every persistent channel (websocket, Discord) holds exactly one connection."""
        return len(await self.linked()) == len(self.linked_channels)

    async def longest_gap(self, *, since: float) -> tuple[str, float, float, str] | None:
        """The longest a websocket or Discord channel went dark, of the gaps ended since
        ``since``: ``(channel, from, until, how it had ended)``, wall clock."""
        gaps = [
            (self.linked_channels.get(identity, identity), start, until, why)
            for control in (self.websocket, self.discord)
            for identity, start, until, why in (await control.ownership(gaps_since=since))["gaps"]
        ]
        return max(gaps, key=lambda gap: gap[2] - gap[1], default=None)

    async def overlaps(self) -> int:
        """Overlaps the websocket, Telegram and Discord emulators saw."""
        counts = [
            (await control.ownership())["overlap_count"]
            for control in (self.websocket, self.telegram, self.discord)
        ]
        return int(sum(counts))

    async def overlap_examples(self) -> list[Any]:
        return [
            overlap
            for control in (self.websocket, self.telegram, self.discord)
            for overlap in (await control.ownership())["overlaps"][:3]
        ]

    async def wait_connected(self, within: float, *, settle: float = 0.0) -> float:
        """Seconds until every channel is connected and stays so (raises past ``within``).

        Args:
            within: the most seconds to wait.
            settle: every channel must stay connected this long; a drop
                meanwhile starts the wait over. The figure returned is when
                the last channel came back, so a fault whose effects come
                late (Redis forgetting leases) is measured by them.
        """
        started = trio.current_time()
        back: float | None = started
        poll = POLL * max(1.0, len(self.linked_channels) / POLL_PER)
        with trio.fail_after(within):
            while True:
                if not await self.connected():
                    back = None
                elif back is None:
                    back = trio.current_time()
                if back is not None and trio.current_time() - back >= settle:
                    return back - started
                await trio.sleep(poll)

    async def wait_started(self) -> None:
        """Until every channel is connected the first time and, with ``ops``, every
        node's ops HTTP listens.

        Raises:
            RuntimeError: not within ``STARTUP_BASE + STARTUP_PER`` a channel;
                the message names the channels left, their lease holders and,
                with ``ops``, what the holder says about them; or a node's ops
                HTTP did not listen within that time.
        """
        within = STARTUP_BASE + STARTUP_PER * len(self.channel_ids())
        began = time.time()
        deadline = trio.current_time() + within  # one limit for all of it
        try:
            self.startup = await self.wait_connected(within)
        except trio.TooSlowError:
            left = sorted(set(self.linked_channels.values()) - await self.linked())
            raise RuntimeError(
                f"the rig's channels did not all connect within {within:g} s: "
                f"{len(left)} of {len(self.linked_channels)} websocket and Discord channels "
                f"hold no single connection: {await self.diagnose(left, since=began)}; the "
                f"nodes' logs are in {self.params.workdir} (SWITCHBOARD_RIG_LOG=info)"
            ) from None
        if self.params.ops:
            # A node that runs none of the channels waited for above still has to
            # answer: a test may post a webhook to it first thing.
            for node_id, process in self.processes.items():
                port = self.ops_ports[node_id]
                with trio.move_on_at(deadline) as waited:
                    try:
                        await wait_port(port, process=process)
                    except ProcessLookupError as exc:
                        raise RuntimeError(
                            f"node {node_id} ended before its ops HTTP listened: {exc}; its "
                            f"log is in {self.params.workdir}"
                        ) from None
                if waited.cancelled_caught:
                    raise RuntimeError(
                        f"node {node_id}'s ops HTTP did not listen on port {port} within "
                        f"{within:g} s of the start; its log is in {self.params.workdir} "
                        "(SWITCHBOARD_RIG_LOG=info)"
                    )

    async def diagnose(self, channels: list[str], *, since: float, shown: int = 20) -> str:
        """What the rig knows of ``channels`` (the first ``shown``): each one's lease
        holder, its live connections at the platform and how its last one ended
        (since ``since``, wall clock), and, with ``ops``, its holder's word on it."""
        holders = await self.holders()
        live: dict[str, int] = {}
        ended: dict[str, str] = {}
        for control in (self.websocket, self.discord):
            brief = await control.ownership(gaps_since=since)
            live |= {self.linked_channels.get(i, i): n for i, n in brief["live"].items()}
            ended |= {self.linked_channels.get(g[0], g[0]): g[3] for g in brief["gaps"]}
            ended |= {
                self.linked_channels.get(i, i): f"{why} ({time.time() - since:.0f} s ago)"
                for i, (since, why) in brief["dark"].items()
            }
        problems: dict[str, str] = {}
        if self.params.ops:
            for node_id in sorted(set(holders.values()) & set(self.processes)):
                try:
                    answer = await self.websocket.client.get(self.ops_urls[node_id] + "/health")
                    report = answer.json()
                except (httpx.HTTPError, ValueError) as exc:
                    problems[node_id] = f"/health unanswered: {exc!r}"
                    continue
                problems |= {
                    p["channel"]: f"{p['status']}: {p['reason']}" for p in report["problems"]
                }
        lines = [
            f"{c}@{holders.get(c)} live={live.get(c, 0)}"
            + (f" last ended: {ended[c]}" if c in ended else "")
            + (f" node says: {problems[c]}" if c in problems else "")
            for c in channels[:shown]
        ]
        return "; ".join(lines)

    # --- faults -------------------------------------------------------------------------

    async def fault(self, kind: str | None = None) -> FaultRecord:
        """Inject one fault (drawn if ``kind`` is None), wait for recovery, record it."""
        p = self.params
        kind = kind or self.rng.choice(FAULTS)
        node = None if kind == "redis" else self.rng.choice(self.node_ids)
        began = time.time()
        if kind == "kill":
            assert node is not None
            await self.kill_node(node)
            await trio.sleep(self.rng.uniform(0.0, 1.0))
            await self.start_node(node)
            self.restarts += 1
        elif kind == "stop":
            assert node is not None
            process = self.processes[node]
            process.send_signal(signal.SIGSTOP)
            await trio.sleep(p.lease_ttl + self.rng.uniform(0.2, 1.0))
            process.send_signal(signal.SIGCONT)
        elif kind == "link":
            assert node is not None
            breaker = self.breakers[node]
            breaker.frozen = True
            await trio.sleep(self.rng.uniform(0.3, p.lease_ttl + 1.0))
            breaker.frozen = False
            breaker.cut()
        elif kind == "redis":
            self.stop_redis()
            await trio.sleep(self.rng.uniform(0.0, 0.5))
            self.start_redis()
            await self.wait_redis()
        else:  # leave: a drain, then join again
            assert node is not None
            await self.kill_node(node, signal.SIGTERM)
            await trio.sleep(self.rng.uniform(0.0, 1.0))
            await self.start_node(node)
            self.restarts += 1
        ended = time.time()
        recovery = await self.wait_connected(
            p.lease_ttl + RECOVERY_SLACK + RECOVERY_CEILING, settle=p.lease_ttl / 2
        )
        gap = await self.longest_gap(since=began)
        record = FaultRecord(
            kind=kind,
            node=node,
            recovery=recovery,
            outage=gap[2] - gap[1] if gap is not None else 0.0,
            dark=(gap[0], gap[1], gap[3]) if gap is not None else None,
            began=began,
            ended=ended,
        )
        self.faults.append(record)
        return record

    async def summary(self) -> dict[str, Any]:
        times = [f.recovery for f in self.faults]
        outages = [f.outage for f in self.faults]
        return {
            "faults": len(self.faults),
            "by_kind": {k: sum(f.kind == k for f in self.faults) for k in FAULTS},
            "recovery_median": statistics.median(times) if times else None,
            "recovery_max": max(times) if times else None,
            "outage_median": statistics.median(outages) if outages else None,
            "outage_max": max(outages) if outages else None,
            "overlaps": await self.overlaps(),
            "seed": self.params.seed,
        }


def _channel(
    channel_id: str, provider: str, base_url: str, env: str, *more: tuple[str, str]
) -> list[str]:
    """One ``[[channels]]`` table: its token from ``env``, ``more`` credentials likewise."""
    credentials = ", ".join(f'{key} = "${{env:{name}}}"' for key, name in (("token", env), *more))
    return [
        "[[channels]]",
        f'id = "{channel_id}"',
        f'provider = "{provider}"',
        f'base_url = "{base_url}"',
        f"credentials = {{ {credentials} }}",
    ]


async def stored_inbound(dsn: str, schema: str) -> set[tuple[str, str]]:
    """``(channel, platform message id)`` of every user message in the nodes' store."""
    async with trio_asyncio.open_loop() as loop:
        conn = await trio_asyncio.aio_as_trio(asyncpg.connect, loop=loop)(dsn)
        try:
            rows = await trio_asyncio.aio_as_trio(conn.fetch, loop=loop)(
                f'SELECT channel_id, platform_message_id FROM "{schema}".inbound_events '
                "WHERE kind = 'message'"
            )
        finally:
            await trio_asyncio.aio_as_trio(conn.close, loop=loop)()
    return {(row["channel_id"], row["platform_message_id"]) for row in rows}


async def drop_pg_schema(dsn: str, schema: str) -> None:
    """Drop the nodes' PostgreSQL schema (the rig's own; nothing else is touched)."""
    async with trio_asyncio.open_loop() as loop:
        conn = await trio_asyncio.aio_as_trio(asyncpg.connect, loop=loop)(dsn)
        try:
            await trio_asyncio.aio_as_trio(conn.execute, loop=loop)(
                f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'
            )
        finally:
            await trio_asyncio.aio_as_trio(conn.close, loop=loop)()


@asynccontextmanager
async def open_cluster_rig(params: RigParams) -> AsyncIterator[ClusterRig]:
    """Start the rig's Redis, emulators and nodes; wait until every channel is connected.

    Afterwards the nodes are killed, Redis stopped and the nodes'
    PostgreSQL schema dropped.
    """
    params.workdir.mkdir(parents=True, exist_ok=True)
    schema = f"sb_rig_{int(time.time() * 1000) % 10**9}_{params.seed}"
    async with (
        open_platforms(ClusterRig.platforms_spec(params)) as (urls, pid),
        httpx.AsyncClient(timeout=CONTROL_TIMEOUT) as client,
        trio.open_nursery() as nursery,
    ):
        platforms = {name: EmulatorControl(name, url, client, pid) for name, url in urls.items()}
        rig = ClusterRig(params, schema, nursery, platforms)
        rig.start_redis()
        try:
            await rig.wait_redis()
            for node_id in rig.node_ids if params.breakers else ():
                breaker = LinkBreaker(rig.redis_port)
                rig.breakers[node_id] = breaker
                rig.breaker_ports[node_id] = await nursery.start(breaker.serve)
            try:
                for node_id in rig.node_ids[: params.nodes]:
                    await rig.start_node(node_id)
                await rig.wait_started()
                yield rig
            finally:
                with trio.CancelScope(shield=True):
                    for node_id in list(rig.processes):
                        await rig.kill_node(node_id)
            nursery.cancel_scope.cancel()
        finally:
            rig.stop_redis()
            with trio.CancelScope(shield=True):
                await drop_pg_schema(params.pg_dsn, schema)
