"""What every platform emulator shares: serving, the control API, faults, stats.

Design:
- An emulator is an ASGI application (Starlette routing on anyio, so it runs
  on trio) served by hypercorn (through :func:`providers.serving.serve_asgi`,
  which closes a race in which a client hanging up ended the whole server):
  the HTTP and websocket parsing is theirs, the platform's behaviour is ours.
- Each emulator keeps its platform's state in plain Python objects and
  speaks the platform's wire protocol at the real paths. The control API
  lives on the same port under ``/_emulator/``:

  - ``POST /_emulator/inject``: make a user send the bot a message;
  - ``GET  /_emulator/sent``: what bots sent the platform, in order;
  - ``GET  /_emulator/operations``: what else they did (edits, deletes,
    typing, read marks, reactions, ...), in order;
  - ``POST /_emulator/fault``: inject a fault (``{"kind": ...}``);
  - ``GET  /_emulator/stats``: counters, among them ``http``: the platform
    requests served by HTTP version (``"1.1"``, ``"2"``), each with the
    connections they came on (distinct client addresses, counted up to
    :data:`MAX_CLIENTS_COUNTED`).
  - ``GET  /_emulator/ownership``: the judge of single ownership in brief:
    every identity's live connections, the overlaps, and (``?gaps_since=``)
    the gaps ended since a wall-clock time (a rig in another process reads
    this several times a second).

- Faults every platform shares are handled here: ``ban_token`` (every call
  with that token fails as the platform fails a banned bot; ``unban_token``
  lifts it) and ``rate_limit`` (every API call answers 429 for ``duration``
  seconds), and the HTTP layer's own (a status, an upgrade refused, a drip,
  a huge body: :mod:`providers.emulators.http_faults`, served in front of
  the platform's routes). Platform-specific faults go to
  :meth:`Emulator.platform_fault`.
- ``latency`` is not a fault but a setting (``{"kind": "latency",
  "seconds": 0.15}``; 0 turns it off): answers leave that much later, as
  from a platform a round trip away (:mod:`providers.emulators.latency`
  says exactly what is held back and how, with no task per message).
- Time is ``trio.current_time()``: emulators run in the caller's trio loop
  (in-process for tests and benchmarks) or in their own (``switchboard
  emulate``).
- The control API has no authentication (it injects signed messages, reads
  every message sent, repoints webhooks): an emulator binds to loopback
  only, and :meth:`Emulator.serve` refuses any other address unless it is
  given ``allow_remote=True`` (``switchboard emulate --allow-remote``,
  ``[emulators.X] allow_remote = true``). What it keeps is capped: the
  last :data:`MAX_KEPT` sends, operations and ownership overlaps
  (:attr:`Emulator.max_kept`; a benchmark's ledger lifts it), and a list
  the control API answers has at most :data:`MAX_LISTED` items (the last
  ones; ``?limit=`` asks for fewer, ``?offset=`` pages from the first kept).
"""

from __future__ import annotations

import ipaddress
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
from hypercorn.config import Config
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from providers import bounded_json
from providers.serving import serve_asgi

from .http_faults import (
    CONTROL_PREFIX,
    HTTP_FAULT_KINDS,
    App,
    HttpFaults,
    Receive,
    Scope,
    Send,
    fault_middleware,
)
from .latency import checked_latency, latency_middleware

__all__ = [
    "MAX_FAULT_COUNT",
    "MAX_KEPT",
    "MAX_LISTED",
    "Emulator",
    "FaultError",
    "is_loopback",
    "open_emulator",
    "serve_emulator",
    "shown_identity",
    "trim",
]

MAX_KEPT = 100_000  # sends, operations, overlaps an emulator keeps (the last ones)
MAX_LISTED = 10_000  # items one control API answer lists (the last ones)
MAX_FAULT_COUNT = 100_000  # failures one fault request may queue
MAX_CLIENTS_COUNTED = 100_000  # client addresses an emulator remembers for its stats
OVERLAP_EXAMPLES = 10  # overlaps /_emulator/ownership lists (the first ones)

LISTEN_BACKLOG = 4096  # pending connections; the kernel caps it at net.core.somaxconn
# Real platforms keep an idle HTTP connection for minutes; hypercorn's default
# (5 s) reaps pooled client connections just as clients reuse them after a
# rate-limit wait (discord.py then fails with ECONNRESET).
KEEP_ALIVE_TIMEOUT = 300.0  # seconds


def is_loopback(host: str) -> bool:
    """Whether ``host`` names only this machine (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name or a wildcard ("", "0.0.0.0" is an address, not loopback)


def _check_host(emulator: Emulator, host: str, allow_remote: bool) -> None:
    if not allow_remote and not is_loopback(host):
        raise ValueError(
            f"refusing to serve the {emulator.name} emulator on {host!r}: its control API "
            "(/_emulator/) has no authentication and lets anyone inject signed messages, "
            "read every message sent and repoint webhooks; bind it to 127.0.0.1, or pass "
            "allow_remote (switchboard emulate --allow-remote, [emulators.X] "
            "allow_remote = true) on a network you trust"
        )


def trim(items: list[Any], limit: int | None) -> None:
    """Keep the last ``limit`` of ``items``, trimming in chunks (amortised O(1) an append)."""
    if limit is not None and len(items) > limit + limit // 4:
        del items[: len(items) - limit]


class FaultError(ValueError):
    """A fault request the emulator does not understand (answered with 400)."""


class Holders:
    """Who holds each identity's connection: the judge of single ownership.

    Per identity (a bot token, a phone number, a websocket token): the
    connections live now, the most ever live at once, and every *overlap*:
    a connection opened while another of the same identity was still live,
    with both connections' opening times. For Telegram a "connection" is a
    ``getUpdates`` in flight, and an overlap is what the real platform
    answers with 409 Conflict.

    And every *gap*: a time an identity that had a connection had none,
    from its last connection's end to the next one's opening (wall-clock
    ``(identity, since, until, why)``, ``why`` the way the last one ended),
    so a rig can say how long a channel was without its connection, and why.
    """

    def __init__(self) -> None:
        self._live: dict[str, dict[int, float]] = {}
        self._max: Counter[str] = Counter()
        self._opened: Counter[str] = Counter()
        self._down_since: dict[str, tuple[float, str]] = {}
        self.overlaps: list[dict[str, Any]] = []
        self.gaps: list[tuple[str, float, float, str]] = []
        self._ids = 0
        self._none_live: trio.Event | None = None  # made by the first wait_none_live

    def opened(self, identity: str) -> int:
        """A connection of ``identity`` opened now; returns its handle for :meth:`closed`."""
        now = time.time()
        live = self._live.setdefault(identity, {})
        for other, since in live.items():
            self.overlaps.append(
                {
                    "identity": shown_identity(identity),
                    "held_since": since,
                    "opened_at": now,
                    "held_by": other,
                }
            )
        trim(self.overlaps, MAX_KEPT)
        down = self._down_since.pop(identity, None)
        if down is not None:
            self.gaps.append((identity, down[0], now, down[1]))
            trim(self.gaps, MAX_KEPT)
        self._ids += 1
        live[self._ids] = now
        self._opened[identity] += 1
        self._max[identity] = max(self._max[identity], len(live))
        return self._ids

    def closed(self, identity: str, handle: int, why: str = "the client closed it") -> None:
        """The connection ``handle`` of ``identity`` ended (``why``: how, for the gaps)."""
        live = self._live.get(identity)
        if live is not None and live.pop(handle, None) is not None and not live:
            self._down_since[identity] = (time.time(), why)
            waiting = self._none_live
            if waiting is not None and not any(self._live.values()):
                self._none_live = None
                waiting.set()

    async def wait_none_live(self) -> None:
        """Return once no identity has a connection live (each read all before its end)."""
        while any(self._live.values()):
            if self._none_live is None:
                self._none_live = trio.Event()
            await self._none_live.wait()

    def live(self, identity: str) -> int:
        return len(self._live.get(identity, ()))

    def statistics(self) -> dict[str, Any]:
        """What ``GET /_emulator/stats`` shows under ``ownership``."""
        return {
            "identities": {
                shown_identity(identity): {
                    "live": len(self._live.get(identity, ())),
                    "max_concurrent": self._max[identity],
                    "opened": self._opened[identity],
                }
                for identity in sorted(self._opened)
            },
            "overlaps": list(self.overlaps[-100:]),
            "overlap_count": len(self.overlaps),
        }

    def brief(self, gaps_since: float | None = None) -> dict[str, Any]:
        """What ``GET /_emulator/ownership`` shows: ``live`` (every identity with a
        connection live now, and how many), ``overlap_count``, the first
        :data:`OVERLAP_EXAMPLES` ``overlaps``, ``dark`` (every identity that had a
        connection and has none now: ``[since, why]``), and with ``gaps_since``
        (wall clock) the ``gaps`` ended since then as ``[identity, since, until, why]``."""
        brief: dict[str, Any] = {
            "live": {
                shown_identity(identity): len(live) for identity, live in self._live.items() if live
            },
            "overlap_count": len(self.overlaps),
            "overlaps": self.overlaps[:OVERLAP_EXAMPLES],
            "dark": {
                shown_identity(identity): [since, why]
                for identity, (since, why) in self._down_since.items()
            },
        }
        if gaps_since is not None:
            brief["gaps"] = [
                [shown_identity(identity), since, until, why]
                for identity, since, until, why in self.gaps
                if until >= gaps_since
            ]
        return brief


def shown_identity(identity: str) -> str:
    """An identity as shown: a token is secret-ish even to an emulator's readers."""
    return identity if len(identity) <= 12 else f"{identity[:6]}…{identity[-4:]}"


class Emulator:
    """Base class of the platform emulators.

    Subclasses set ``name``, add their routes in :meth:`platform_routes`,
    and implement :meth:`inject` and, for their own faults,
    :meth:`platform_fault`.
    """

    name = "emulator"
    max_kept: int | None = MAX_KEPT
    """Sends and operations kept (the last ones); ``None`` keeps all (a benchmark's ledger)."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.operations: list[dict[str, Any]] = []
        self.stats: Counter[str] = Counter()
        self.holders = Holders()
        self.banned_tokens: set[str] = set()
        self.rate_limited_until = 0.0
        self.http_faults = HttpFaults(MAX_FAULT_COUNT)
        self.http_versions = HttpVersionTally()
        self._latency = 0.0
        self._app: Starlette | None = None

    @property
    def latency(self) -> float:
        """Seconds every answer is held back (0: none; :mod:`providers.emulators.latency`)."""
        return self._latency

    @latency.setter
    def latency(self, seconds: float) -> None:
        """Raises: ValueError: not a number of seconds within 0..MAX_LATENCY."""
        self._latency = checked_latency(seconds, f"{self.name} emulator latency")

    # --- for subclasses ------------------------------------------------------------

    def platform_routes(self) -> list[BaseRoute]:
        """The platform's own HTTP and websocket routes."""
        return []

    async def inject(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Make a user send the bot a message; return what was injected.

        Raises:
            FaultError: bad arguments (answered with 400 and the message).
        """
        raise NotImplementedError

    async def platform_fault(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Apply a platform-specific fault.

        Raises:
            FaultError: unknown fault kind or bad arguments.
        """
        raise FaultError(f"{self.name} emulator: unknown fault kind {payload.get('kind')!r}")

    async def serve(
        self,
        *,
        host: str,
        port: int,
        allow_remote: bool = False,
        task_status: Any = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve :attr:`app` with hypercorn until cancelled; ``task_status.started(base_url)``.

        Raises:
            ValueError: ``host`` is not a loopback address and ``allow_remote`` is false.
        """
        _check_host(self, host, allow_remote)
        config = Config()
        config.bind = [f"{host}:{port}"]
        config.accesslog = None
        config.errorlog = None
        # hypercorn listens with a backlog of 100: thousands of channels starting
        # together overflow it, and each refused SYN is retried a second or more
        # later. A load test's emulator must take a connect storm.
        config.backlog = LISTEN_BACKLOG
        config.keep_alive_timeout = KEEP_ALIVE_TIMEOUT

        async def run(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            await serve_asgi(self.served_app, config, task_status=task_status)

        async with trio.open_nursery() as nursery:
            binds = await nursery.start(run)
            task_status.started(binds[0])

    def is_banned(self, token: str) -> bool:
        return token in self.banned_tokens

    def rate_limit_remaining(self) -> float:
        """Seconds left of an imposed 429 period (0 when none)."""
        return max(0.0, self.rate_limited_until - trio.current_time())

    def record_sent(self, message: dict[str, Any]) -> None:
        self.sent.append(message)
        trim(self.sent, self.max_kept)
        self.stats["messages_sent"] += 1

    def record_operation(self, operation: dict[str, Any]) -> None:
        """Keep an operation other than a send (an edit, a delete, typing, ...)."""
        self.operations.append(operation)
        trim(self.operations, self.max_kept)
        self.stats["operations"] += 1

    # --- the control API ---------------------------------------------------------------

    async def _inject(self, request: Request) -> Response:
        payload = await _json_object(request)
        if isinstance(payload, Response):
            return payload
        try:
            injected = await self.inject(payload)
        except FaultError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        self.stats["injected"] += 1
        return JSONResponse(injected)

    async def _sent(self, request: Request) -> Response:
        return _listed(request, self.sent)

    async def _operations(self, request: Request) -> Response:
        return _listed(request, self.operations)

    async def _stats(self, request: Request) -> Response:
        return JSONResponse(
            {
                **self.stats,
                "http_faults": dict(self.http_faults.hits),
                "http": self.http_versions.statistics(),
                "ownership": self.holders.statistics(),
            }
        )

    async def _ownership(self, request: Request) -> Response:
        raw = request.query_params.get("gaps_since")
        try:
            since = None if raw is None else float(raw)
        except ValueError:
            return JSONResponse({"error": f"gaps_since: not a number: {raw!r}"}, status_code=400)
        return JSONResponse(self.holders.brief(since))

    async def _fault(self, request: Request) -> Response:
        payload = await _json_object(request)
        if isinstance(payload, Response):
            return payload
        kind = payload.get("kind")
        try:
            if kind == "ban_token":
                token = payload.get("token")
                if not isinstance(token, str) or not token:
                    raise FaultError("ban_token needs a non-empty string 'token'")
                self.banned_tokens.add(token)
                result: dict[str, Any] = {"banned": token}
            elif kind == "unban_token":
                token = payload.get("token")
                if not isinstance(token, str) or not token:
                    raise FaultError("unban_token needs a non-empty string 'token'")
                self.banned_tokens.discard(token)
                result = {"unbanned": token}
            elif kind in HTTP_FAULT_KINDS:
                try:
                    result = self.http_faults.add(payload)
                except ValueError as exc:
                    raise FaultError(str(exc)) from None
            elif kind == "latency":
                where = "latency needs 'seconds'"
                try:
                    self._latency = checked_latency(payload.get("seconds"), where)
                except ValueError as exc:
                    raise FaultError(str(exc)) from None
                result = {"latency": self._latency}
            elif kind == "rate_limit":
                duration = payload.get("duration")
                if not isinstance(duration, int | float) or duration <= 0:
                    raise FaultError("rate_limit needs a positive number 'duration' (seconds)")
                self.rate_limited_until = trio.current_time() + float(duration)
                result = {"rate_limited_for": float(duration)}
            else:
                result = await self.platform_fault(payload)
        except FaultError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        self.stats[f"fault_{kind}"] += 1
        return JSONResponse(result)

    @property
    def app(self) -> Starlette:
        """The ASGI application: platform routes plus the control API."""
        if self._app is None:
            control = [
                Route("/_emulator/inject", self._inject, methods=["POST"]),
                Route("/_emulator/sent", self._sent, methods=["GET"]),
                Route("/_emulator/operations", self._operations, methods=["GET"]),
                Route("/_emulator/fault", self._fault, methods=["POST"]),
                Route("/_emulator/stats", self._stats, methods=["GET"]),
                Route("/_emulator/ownership", self._ownership, methods=["GET"]),
            ]
            self._app = Starlette(routes=[*control, *self.platform_routes()])
        return self._app

    @property
    def served_app(self) -> Any:
        """:attr:`app` as it is served: behind its latency and its HTTP-layer faults."""
        return self.http_versions.middleware(
            latency_middleware(fault_middleware(self.app, self.http_faults), lambda: self._latency)
        )


class HttpVersionTally:
    """The platform requests an emulator served, by HTTP version, and the connections."""

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self._clients: dict[str, set[tuple[str, str]]] = {}

    def middleware(self, app: App) -> App:
        """``app``, its platform requests (not the control API's) counted on the way in."""

        async def counted(scope: Scope, receive: Receive, send: Send) -> None:
            path = scope.get("path")
            if scope.get("type") == "http" and not str(path or "").startswith(CONTROL_PREFIX):
                self.count(str(scope.get("http_version", "1.1")), scope.get("client"))
            await app(scope, receive, send)

        return counted

    def count(self, version: str, client: Any) -> None:
        """One request over ``version`` from ``client`` (``(host, port)``, or None)."""
        self.requests[version] += 1
        clients = self._clients.setdefault(version, set())
        try:
            host, port = client  # a port, or None on a unix socket
        except (TypeError, ValueError):  # no address (None), or not an ASGI one
            return
        if len(clients) < MAX_CLIENTS_COUNTED:
            clients.add((str(host), str(port)))

    def statistics(self) -> dict[str, dict[str, int]]:
        """``{version: {"requests": n, "connections": m}}``."""
        return {
            version: {"requests": n, "connections": len(self._clients.get(version, ()))}
            for version, n in self.requests.items()
        }


def _listed(request: Request, items: list[Any]) -> Response:
    """The last ``?limit=`` (at most :data:`MAX_LISTED`) of ``items`` as JSON.

    With ``?offset=N``: up to ``limit`` items from the ``N``-th kept one on
    (paging through a long list, oldest first).
    """
    raw = request.query_params.get("limit", "")
    limit = int(raw) if raw.isdigit() and len(raw) <= 9 else MAX_LISTED
    limit = min(limit, MAX_LISTED)
    offset = request.query_params.get("offset", "")
    if offset.isdigit() and len(offset) <= 12:
        start = int(offset)
        return JSONResponse(items[start : start + limit])
    return JSONResponse(items[-limit:] if limit else [])


async def _json_object(request: Request) -> dict[str, Any] | Response:
    try:
        payload = bounded_json.loads(await request.body())
    except ValueError as exc:
        return JSONResponse({"error": f"the body is not JSON: {exc}"}, status_code=400)
    if not isinstance(payload, dict):
        return JSONResponse({"error": "the body must be a JSON object"}, status_code=400)
    return payload


async def serve_emulator(
    emulator: Emulator,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    allow_remote: bool = False,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``emulator`` until cancelled; ``task_status.started(base_url)``.

    Args:
        emulator: the emulator to serve.
        host: interface to bind: a loopback address unless ``allow_remote``.
        port: TCP port; 0 picks a free one.
        allow_remote: allow a non-loopback ``host`` (the control API is open).

    Raises:
        ValueError: a non-loopback ``host`` without ``allow_remote``.
    """
    await emulator.serve(host=host, port=port, allow_remote=allow_remote, task_status=task_status)


@asynccontextmanager
async def open_emulator(
    emulator: Emulator, *, host: str = "127.0.0.1", port: int = 0, allow_remote: bool = False
) -> AsyncIterator[str]:
    """Run ``emulator`` in-process for the block; yields its base URL (see serve_emulator).

    Raises:
        ValueError: a non-loopback ``host`` without ``allow_remote``.
    """
    _check_host(emulator, host, allow_remote)
    async with trio.open_nursery() as nursery:
        base_url = await nursery.start(
            lambda task_status: serve_emulator(
                emulator,
                host=host,
                port=port,
                allow_remote=allow_remote,
                task_status=task_status,
            )
        )
        try:
            yield base_url
        finally:
            nursery.cancel_scope.cancel()
