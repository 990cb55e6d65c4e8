"""The console's core: a node's console, and one session per connection.

Design:
- :class:`Console` is handed a running node and holds what every
  connection shares: the token table, the refusal counters (exported on
  ``/metrics`` through ``node.metric_sources``), the audit feed, a short
  state history per channel (recorded from the node's ``state`` events,
  which never wait for this console), and a nursery for work that must
  outlive the call that started it (a drain).
- :class:`Session` is one authenticated connection with no socket in it:
  text in (:meth:`Session.handle`), text out (its return value, and the
  ``send`` callable it was given for event notifications). The websocket
  server is a thin shell around it, and tests drive it in virtual time.
- Each call (a batch's every member, notifications too) takes one unit of
  the connection's call budget (GCRA: ``calls_per_second``, ``call_burst``);
  past it, calls are refused with -32005 and the time to wait. A batch has
  at most :data:`MAX_BATCH` members.
- Events reach a subscriber through a bounded buffer: the node hands them
  over without waiting and drops what does not fit; the session forwards
  them as notifications within ``events_per_second``, dropping the excess.
  Every notification says how many were dropped so far. A subscriber that
  reads slowly slows only its own connection, never a channel.
- The wall clock (token expiry, audit times) is injected, for tests.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any, Final

import attrs
import trio
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from actors import GCRA
from supervisors import SupervisorError

from ..config.model import AdminConfig
from ..errors import NodeError, UnknownChannel
from ..node import Node
from ..view import ChannelSnapshot
from . import rpc, shapes
from .auth import AuditEvent, Grant, Refusals, TokenTable, Unauthenticated
from .errors import ConsoleError, Refused, code_of
from .methods import METHODS
from .rpc import Call, ErrorCode, InvalidParams, Response

__all__ = ["MAX_BATCH", "MAX_SUBSCRIPTIONS", "Console", "Session"]

log = logging.getLogger("switchboard.console")
audit_log = logging.getLogger("switchboard.audit")

MAX_BATCH: Final = 100  # calls in one batch
MAX_SUBSCRIPTIONS: Final = 16  # open subscriptions per connection
HISTORY: Final = 20  # state changes kept per channel
EVENT_BUFFER: Final = 256  # events waiting per subscription before the newest are dropped
AUDIT_BUFFER: Final = 64  # audit events waiting per subscription
STATE_BUFFER: Final = 10_000  # state events waiting for the history recorder


@attrs.define
class _Forward:
    """One subscription of a session."""

    number: int
    kinds: frozenset[str] | None
    tenants: frozenset[str] | None
    channels: frozenset[str] | None
    scopes: list[trio.CancelScope] = attrs.field(factory=list)
    closers: list[Callable[[], None]] = attrs.field(factory=list)
    node_dropped: Callable[[], int] = lambda: 0
    audit_dropped: int = 0
    rate_dropped: int = 0
    sent: int = 0
    audit: trio.MemorySendChannel[AuditEvent] | None = None

    def dropped(self) -> int:
        return self.node_dropped() + self.audit_dropped + self.rate_dropped


class Console:
    """A node's admin console (no listener: see :func:`runtime.console.serve_admin`).

    Args:
        node: the running node.
        config: the ``[admin]`` section.
        clock: the wall clock, unix seconds (token expiry, audit times).
    """

    def __init__(
        self, node: Node, config: AdminConfig, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.node = node
        self.config = config
        self.tokens = TokenTable(config.tokens)
        self.refusals = Refusals()
        self.clock = clock
        self.connections = 0
        self.arriving = 0  # handshakes under way (they count against max_connections)
        self._audit: list[tuple[_Forward, Grant]] = []
        self._history: dict[str, deque[dict[str, Any]]] = {}
        # The node's own redaction: each secret in every form it may be quoted in
        # (percent-encoded, JSON, repr), longest first, and credential shapes.
        self._redactor = node.redactor  # (it learns the secrets of channels started later)
        self._nursery: trio.Nursery | None = None

    def __repr__(self) -> str:
        return f"<Console node={self.node.node_id} connections={self.connections}>"

    @property
    def running(self) -> bool:
        """:meth:`run` runs."""
        return self._nursery is not None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Record state history and hold the console's nursery until cancelled.

        Raises:
            RuntimeError: it runs already.
        """
        if self._nursery is not None:
            raise RuntimeError("the console runs already")
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.node.metric_sources.append(self._metrics)
            try:
                with self.node.subscribe(kind="state", buffer=STATE_BUFFER) as changes:
                    for snapshot in self.node.channels():  # where each stands as we begin
                        last = snapshot.statistics.last_error if snapshot.statistics else None
                        self._history[snapshot.channel_id] = deque(
                            [
                                {
                                    "at": self.clock(),
                                    "state": shapes.state_of(snapshot),
                                    "previous": None,
                                    "reason": self.scrub(last) if last else None,
                                    "attempt": 0,
                                }
                            ],
                            maxlen=HISTORY,
                        )
                    task_status.started()
                    async for change in changes:
                        self._record(change.channel_id, change.event)
            finally:
                self._nursery = None
                if self._metrics in self.node.metric_sources:
                    self.node.metric_sources.remove(self._metrics)

    def start_soon(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``fn`` in the console's nursery: it outlives the call that started it."""
        if self._nursery is None:
            raise RuntimeError("the console is not running (Console.run)")
        self._nursery.start_soon(fn, *args)

    def authenticate(self, presented: str | None) -> Grant:
        """The grant of a bearer token; a refusal is counted.

        Raises:
            Unauthenticated: no token, an unknown one, or an expired one.
        """
        try:
            return self.tokens.authenticate(presented, now=self.clock())
        except Unauthenticated as exc:
            self.refusals.refuse("unauthenticated")
            log.warning("admin console: connection refused: %s", exc)
            raise

    @asynccontextmanager
    async def open_session(
        self, grant: Grant, send: Callable[[str], Awaitable[None]]
    ) -> AsyncIterator[Session]:
        """A session for one connection; its subscriptions end with the block."""
        self.connections += 1
        try:
            async with trio.open_nursery() as nursery:
                session = Session(self, grant, send, nursery)
                try:
                    yield session
                finally:
                    session.close()
                    nursery.cancel_scope.cancel()
        finally:
            self.connections -= 1

    def scrub(self, text: str) -> str:
        """``text`` without any secret of the node's config (as the log has it)."""
        return self._redactor.scrub(text)

    def scrub_tree(self, value: Any) -> Any:
        """Every string of an answer or a notification, scrubbed: a channel's last
        error may quote a platform's refusal, which may echo its credential."""
        return self._redactor.scrub_tree(value)

    def history(self, channel_id: str) -> list[dict[str, Any]]:
        """The channel's last state changes, oldest first."""
        return list(self._history.get(channel_id, ()))

    def _record(self, channel_id: str, change: Any) -> None:
        entries = self._history.get(channel_id)
        if entries is None:
            entries = self._history[channel_id] = deque(maxlen=HISTORY)
        entries.append(
            {
                "at": self.clock(),
                "state": change.status.value,
                "previous": change.previous.value,
                "reason": self.scrub(change.reason) if change.reason else None,
                "attempt": change.attempt,
            }
        )

    # --- audit ---------------------------------------------------------------------------

    def publish_audit(self, event: AuditEvent, tenants: Iterable[str]) -> None:
        """Log ``event`` and hand it to every subscriber allowed to see it."""
        touched = frozenset(tenants)
        audit_log.log(
            logging.INFO if event.outcome == "ok" else logging.WARNING,
            "admin %s by %s (%s): %s%s",
            event.method,
            event.token,
            event.reason or "no reason given",
            event.outcome,
            " (dry run)" if event.dry_run else "",
            extra={
                "user.name": event.token,
                "event.action": event.method,
                "event.outcome": event.outcome,
                "event.reason": event.reason,
                "switchboard.target": rpc.dumps(event.target),
            },
        )
        named = frozenset(event.target.get("channels", ()))
        for forward, grant in list(self._audit):
            if grant.tenants is not None and not (touched and touched <= grant.tenants):
                continue
            if forward.tenants is not None and not (touched and touched <= forward.tenants):
                continue
            if forward.channels is not None and not (named and named <= forward.channels):
                continue  # limited to some channels: a change to others is not theirs
            if forward.audit is None:
                continue
            try:
                forward.audit.send_nowait(event)
            except trio.WouldBlock:
                forward.audit_dropped += 1
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                pass

    def _watch_audit(self, forward: _Forward, grant: Grant) -> None:
        self._audit.append((forward, grant))

    def _unwatch_audit(self, forward: _Forward) -> None:
        self._audit = [(f, g) for f, g in self._audit if f is not forward]

    # --- metrics -------------------------------------------------------------------------

    def counters(self) -> dict[str, Any]:
        """Calls, refusals by reason, open connections."""
        return {
            "calls": self.refusals.calls,
            "refused": dict(self.refusals.counts),
            "connections": self.connections,
        }

    def _metrics(self) -> Iterable[Metric]:
        calls = CounterMetricFamily(
            "switchboard_admin_calls", "Calls made on the admin console (refused ones too)."
        )
        calls.add_metric((), self.refusals.calls)
        yield calls
        refused = CounterMetricFamily(
            "switchboard_admin_refused",
            "Admin console calls and connections refused: unauthenticated, forbidden "
            "(scope), tenant, rate_limited.",
            labels=("reason",),
        )
        for reason, count in sorted(self.refusals.counts.items()):
            refused.add_metric((reason,), count)
        yield refused
        yield GaugeMetricFamily(
            "switchboard_admin_connections",
            "Open admin console connections.",
            self.connections,
        )


class Session:
    """One authenticated connection's calls and subscriptions (no socket here).

    Args:
        console: the console.
        grant: what the connection's token allows.
        send: sends one text to the peer (event notifications).
        nursery: where the session's subscriptions run.
    """

    def __init__(
        self,
        console: Console,
        grant: Grant,
        send: Callable[[str], Awaitable[None]],
        nursery: trio.Nursery,
    ) -> None:
        self.console = console
        self.grant = grant
        self._send = send
        self._nursery = nursery
        config = console.config
        self._calls = GCRA(rate=config.calls_per_second, burst=config.call_burst)
        self._events = GCRA(rate=config.events_per_second, burst=config.event_burst)
        self._subscriptions: dict[int, _Forward] = {}
        self._numbers = 0
        self._target: dict[str, Any] = {}
        self._touched: set[str] = set()

    def __repr__(self) -> str:
        subscriptions = len(self._subscriptions)
        return f"<Session {self.grant.name} [{self.grant.scope.label}] subs={subscriptions}>"

    # --- calls ---------------------------------------------------------------------------

    async def handle(self, text: str | bytes) -> str | None:
        """Answer one websocket message (a call, a notification or a batch)."""
        incoming = rpc.parse(text)
        if incoming.batch and len(incoming.items) > MAX_BATCH:
            answer = rpc.failure(
                None,
                ErrorCode.INVALID_REQUEST,
                data=f"a batch of {len(incoming.items)} calls; at most {MAX_BATCH}",
            )
            return rpc.encode([answer], batch=False)
        answers: list[Response] = []
        for item in incoming.items:
            if isinstance(item, Response):
                answers.append(item)
                continue
            answer = await self.call(item)
            if not item.notification:
                answers.append(answer)
        return rpc.encode(answers, batch=incoming.batch)

    async def call(self, call: Call) -> Response:
        """Run one call and answer it (the answer of a notification is dropped)."""
        console = self.console
        console.refusals.calls += 1
        method = METHODS.get(call.method)
        self._target = {}
        self._touched = set()
        try:
            if not self._calls.try_acquire(trio.current_time()):
                wait = max(self._calls.next_deadline() - trio.current_time(), 0.0)
                raise Refused(
                    ErrorCode.RATE_LIMITED,
                    "rate_limited",
                    f"more than {console.config.calls_per_second:g} calls per second on this "
                    "connection; slow down",
                    {"retry_after": round(wait, 3)},
                )
            if method is None:
                return rpc.failure(
                    call.id,
                    ErrorCode.METHOD_NOT_FOUND,
                    data=f"no method {call.method!r}; system.describe lists them",
                )
            if self.grant.expired(console.clock()):
                raise Refused(
                    ErrorCode.UNAUTHENTICATED,
                    "unauthenticated",
                    f"token {self.grant.name!r} has expired",
                )
            if not self.grant.allows(method.scope):
                raise Refused(
                    ErrorCode.FORBIDDEN,
                    "forbidden",
                    f"{method.name} needs scope {method.scope.label!r}; token "
                    f"{self.grant.name!r} has {self.grant.scope.label!r}",
                    {"needs": method.scope.label, "has": self.grant.scope.label},
                )
            if method.node_wide and self.grant.tenants is not None:
                raise Refused(
                    ErrorCode.TENANT_FORBIDDEN,
                    "tenant",
                    f"{method.name} acts on the whole node; token {self.grant.name!r} is "
                    "limited to tenants",
                    {"tenants": sorted(self.grant.tenants)},
                )
            params: Any = rpc.structure_params(call.params, method.params)
            if method.changes and not method.node_wide and console.node.draining:
                raise ConsoleError(
                    ErrorCode.UNAVAILABLE,
                    f"node {console.node.node_id!r} is draining and takes no changes",
                    {"error": "NodeDraining"},
                )
            result = await method.handler(self, params)
        except Refused as exc:
            console.refusals.refuse(exc.reason)
            self._audit(call, "refused", str(exc))
            shown = exc.shown_as
            if shown is not None:
                text = console.scrub(_text_of(shown))
                return rpc.failure(call.id, code_of(shown), text, {"error": type(shown).__name__})
            return rpc.failure(call.id, exc.code, console.scrub(str(exc)), exc.data)
        except ConsoleError as exc:
            self._audit(call, "failed", str(exc))
            return rpc.failure(call.id, exc.code, console.scrub(str(exc)), exc.data)
        except InvalidParams as exc:
            self._audit(call, "failed", f"invalid params: {exc}")
            return rpc.failure(
                call.id,
                ErrorCode.INVALID_PARAMS,
                console.scrub(f"invalid params: {exc}"),
                {"problems": [console.scrub(problem) for problem in exc.problems]},
            )
        except (NodeError, SupervisorError, ValueError) as exc:
            text = console.scrub(_text_of(exc))
            self._audit(call, "failed", text)
            return rpc.failure(call.id, code_of(exc), text, {"error": type(exc).__name__})
        except Exception:
            log.exception("admin console: %s failed", call.method)
            self._audit(call, "failed", "internal error")
            return rpc.failure(
                call.id,
                ErrorCode.INTERNAL_ERROR,
                "the console failed to answer this call; the node's log has the details",
            )
        if method.changes:
            dry = bool(getattr(params, "dry_run", False))  # one channel or many: counted only
            self._audit(call, "ok", _summary(result), dry_run=dry, params=params)
        return rpc.success(call.id, console.scrub_tree(result))

    def _audit(
        self,
        call: Call,
        outcome: str,
        detail: Any,
        *,
        dry_run: bool = False,
        params: Any = None,
    ) -> None:
        """Publish the audit event of a change; ``params``: the call's, once
        structured (by name or by position), else what the raw ones name."""
        method = METHODS.get(call.method)
        if method is None or not method.changes:
            return
        if params is not None:
            reason = getattr(params, "reason", None)
            named = getattr(params, "channel", None)
        else:
            raw = call.params if isinstance(call.params, dict) else {}
            reason = raw.get("reason")
            named = raw.get("channel")
        if not self._target and isinstance(named, str):
            # Refused or invalid before the method said what it acts on.
            self._target = {"channels": [named]}
            try:
                self._touched = {self.tenant_of(named)}
            except UnknownChannel:
                self._touched = set()
        event = AuditEvent(
            token=self.grant.name,
            method=call.method,
            target=dict(self._target),
            reason=self.console.scrub(reason) if isinstance(reason, str) else None,
            outcome=outcome,
            detail=detail if outcome == "ok" else self.console.scrub(str(detail)),
            dry_run=dry_run,
            at=self.console.clock(),
        )
        self.console.publish_audit(event, self._touched)

    # --- what methods use ----------------------------------------------------------------

    def audit_target(self, *, tenants: Iterable[str] = (), **target: Any) -> None:
        """Say what the call acts on (for its audit event)."""
        self._target.update({key: value for key, value in target.items() if value is not None})
        self._touched.update(tenants)

    def visible_channels(self) -> list[ChannelSnapshot]:
        """The node's channels this token may see."""
        return [s for s in self.console.node.channels() if self.grant.sees(s.tenant)]

    def tenant_of(self, channel_id: str) -> str:
        """The tenant of a channel of the node, or of the deployment file.

        Raises:
            UnknownChannel: neither has it.
        """
        for snapshot in self.console.node.channels():
            if snapshot.channel_id == channel_id:
                return snapshot.tenant
        for spec in self.console.node.config.channels:
            if spec.id == channel_id:
                return spec.tenant
        raise UnknownChannel(channel_id)

    def check_tenant(self, tenant: str | None) -> None:
        """Refuse (-32003) a tenant this token may not see; ``None`` passes.

        Raises:
            Refused: it may not.
        """
        if tenant is not None and not self.grant.sees(tenant):
            raise Refused(
                ErrorCode.TENANT_FORBIDDEN,
                "tenant",
                f"token {self.grant.name!r} may not see tenant {tenant!r}",
                {"tenant": tenant},
            )

    def check_channel(self, channel_id: str, tenant: str) -> None:
        """Refuse a channel of a tenant this token may not see, answered as a
        channel that does not exist (-32006): the token learns neither that it
        exists nor whose it is (a -32003 naming the tenant told both).

        Raises:
            Refused: it may not (counted and audited as a tenant refusal).
        """
        if not self.grant.sees(tenant):
            raise Refused(
                ErrorCode.TENANT_FORBIDDEN,
                "tenant",
                f"token {self.grant.name!r} may not see channel {channel_id!r} (tenant {tenant!r})",
                {"tenant": tenant},
                shown_as=UnknownChannel(channel_id),
            )

    # --- events --------------------------------------------------------------------------

    def subscribe(
        self,
        *,
        kinds: frozenset[str] | None,
        tenants: frozenset[str] | None,
        channels: frozenset[str] | None,
    ) -> int:
        """Start forwarding events as ``events.event`` notifications; returns its number.

        Raises:
            Refused: the connection has :data:`MAX_SUBSCRIPTIONS` open already.
        """
        if len(self._subscriptions) >= MAX_SUBSCRIPTIONS:
            raise Refused(
                ErrorCode.RATE_LIMITED,
                "rate_limited",
                f"at most {MAX_SUBSCRIPTIONS} subscriptions per connection; "
                "events.unsubscribe one first",
                {"subscriptions": sorted(self._subscriptions)},
            )
        self._numbers += 1
        visible = tenants if tenants is not None else self.grant.tenants
        forward = _Forward(number=self._numbers, kinds=kinds, tenants=visible, channels=channels)
        self._subscriptions[forward.number] = forward
        node_kinds = None if kinds is None else kinds - {"audit"}
        # Each task's scope is made here, not as it starts: an unsubscribe in the
        # same batch (no checkpoint between) cancels it before it forwards a thing.
        if node_kinds is None or node_kinds:
            subscription = self.console.node.subscribe(
                tenant=visible, channel=channels, kind=node_kinds, buffer=EVENT_BUFFER
            )
            forward.node_dropped = lambda: subscription.dropped
            forward.closers.append(subscription.close)
            self._nursery.start_soon(self._forward_node, forward, subscription, _scope_of(forward))
        if kinds is None or "audit" in kinds:
            send, receive = trio.open_memory_channel[AuditEvent](AUDIT_BUFFER)
            forward.audit = send
            forward.closers.append(send.close)
            self.console._watch_audit(forward, self.grant)
            self._nursery.start_soon(self._forward_audit, forward, receive, _scope_of(forward))
        return forward.number

    def unsubscribe(self, number: int) -> dict[str, Any]:
        """End a subscription; its totals."""
        forward = self._subscriptions.pop(number, None)
        if forward is None:
            raise ConsoleError(
                ErrorCode.NOT_FOUND,
                f"no subscription {number} on this connection",
                {"subscriptions": sorted(self._subscriptions)},
            )
        for scope in forward.scopes:
            scope.cancel()
        self.console._unwatch_audit(forward)
        forward.audit = None
        for close in forward.closers:  # the node forgets the subscriber now
            close()
        return {"subscription": number, "sent": forward.sent, "dropped": forward.dropped()}

    def close(self) -> None:
        for number in list(self._subscriptions):
            self.unsubscribe(number)

    async def _forward_node(
        self, forward: _Forward, subscription: Any, scope: trio.CancelScope
    ) -> None:
        with scope, subscription:
            async for found in subscription:
                await self._notify(forward, shapes.event(found))

    async def _forward_audit(
        self,
        forward: _Forward,
        receive: trio.MemoryReceiveChannel[AuditEvent],
        scope: trio.CancelScope,
    ) -> None:
        with scope, receive:
            async for event in receive:
                await self._notify(forward, {"kind": "audit", "event": shapes.jsonable(event)})

    async def _notify(self, forward: _Forward, payload: dict[str, Any]) -> None:
        console = self.console
        if self.grant.expired(console.clock()):
            # Its calls are refused since; its events stop too (every subscription).
            self.close()
            return
        if not self._events.try_acquire(trio.current_time()):
            forward.rate_dropped += 1
            return
        forward.sent += 1
        params = {"subscription": forward.number, **payload, "dropped": forward.dropped()}
        await self._send(rpc.notification("events.event", console.scrub_tree(params)))


def _scope_of(forward: _Forward) -> trio.CancelScope:
    scope = trio.CancelScope()
    forward.scopes.append(scope)
    return scope


def _text_of(exc: BaseException) -> str:
    return str(exc)


def _summary(result: Any) -> Any:
    if isinstance(result, dict):
        kept = ("count", "replayed", "discarded", "paused", "already", "released", "free_in")
        return {key: result[key] for key in kept if key in result}
    return None
