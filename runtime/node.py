"""The node: one process's channels, its services, and the API a product embeds.

Design:
- ``open_node(config)`` runs a supervision tree in the caller's trio program:

  ::

      node (one_for_one)
      ├── emulator-<platform>   in-process emulators (local runs), if configured
      ├── ops                   the ops HTTP server (health, metrics, webhooks)
      └── channels (one_for_one, the file's [supervisor] policy)
          └── <channel id> ...  one ChannelActor per channel, added at run time

  Services are :class:`~runtime.services.ServiceActor` children, so a crashed
  ops server is restarted like a crashed channel. The channels supervisor
  is rebuilt from the node's own list of channel specs if it is itself
  restarted, so no channel is forgotten.
- The store sits outside the tree: it is a resource every channel writes
  to (its inbound sink), opened first and closed last.
- Startup degrades gracefully: a channel that cannot start is recorded with
  the reason, shows in ``channels()`` and ``/health``, and the rest run.
- Every accepted ``send`` is tracked until it returns. ``drain()`` stops
  taking work, waits for the tracked sends up to the deadline, keeps the rest
  in the store (reported, never silently dropped), stops the channels (each
  flushes its inbound events and closes its link resumably), and flushes the
  store. See :mod:`runtime.drain`.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator, Collection, Mapping
from contextlib import asynccontextmanager
from typing import Any, Final

import attrs
import trio

from actors import (
    ActorSystem,
    ChannelActor,
    ChannelMemory,
    ChannelRef,
    ChannelSettings,
    ChannelStatus,
    ChannelUnavailable,
    open_actor_system,
)
from providers.base import OutboundMessage, Provider, SendResult
from providers.registry import PROVIDERS, load
from supervisors import (
    INFINITY,
    ChildSnapshot,
    ChildSpec,
    ChildType,
    RestartBackoff,
    Strategy,
    Supervisor,
    SupervisorRef,
    open_supervisor,
)

from .channels import channel_config, channel_settings
from .config.model import ChannelSpec, NodeConfig
from .drain import DrainReport, Pending, drain_node
from .emulated import LocalEmulators
from .errors import ChannelExists, ConnectionLimitReached, NodeDraining, UnknownChannel
from .events import EventHub, Subscription
from .ops import serve_ops
from .services import ServiceActor, ServiceHandle
from .store import Store, open_store
from .view import ChannelSnapshot, NodeStatistics, WebhookTarget

__all__ = ["Node", "open_node"]

REPORT_PROBLEMS: Final = 20  # channels named in the startup line; /health has them all
log = logging.getLogger("switchboard.node")

ROOT_INTENSITY: Final = 5  # service restarts the node tolerates ...
ROOT_PERIOD: Final = 60.0  # ... within this many seconds
DEFAULT_SEND_TIMEOUT: Final = 60.0  # seconds a send may take, queueing included
WEBHOOK_PROVIDERS: Final = frozenset(("whatsapp", "telegram"))


@attrs.define
class _Managed:
    """A channel the node was asked to run, started or not."""

    spec: ChannelSpec
    memory: ChannelMemory | None = None
    channel: ChannelRef | None = None
    start_error: str | None = None


class Node:
    """A running node; get one from :func:`open_node`.

    All methods are for the trio program that opened the node.
    """

    def __init__(
        self,
        config: NodeConfig,
        system: ActorSystem,
        store: Store,
        *,
        emulators: LocalEmulators | None,
        base_settings: ChannelSettings | None,
        providers: Mapping[str, Provider] | None = None,
    ) -> None:
        self.config = config
        self.system = system
        self.store = store
        self.emulators = emulators
        self._base_settings = base_settings
        self._hub = EventHub(log_inbound=config.logging.inbound)
        self._managed: dict[str, _Managed] = {}
        self._child_specs: dict[str, ChildSpec] = {}
        self._providers: dict[str, Provider] = dict(providers or {})
        self._inflight: set[Pending] = set()
        self._inflight_changed = trio.Event()
        self._ready = False
        self._draining = False
        self._drain_report: DrainReport | None = None
        self._started_at = trio.current_time()
        self._root: SupervisorRef | None = None
        self._channels: SupervisorRef | None = None
        self.ops = ServiceHandle("ops")
        self._emulator_handles: dict[str, ServiceHandle] = {}
        self._nursery: trio.Nursery | None = None

    def __repr__(self) -> str:
        state = "draining" if self._draining else "ready" if self._ready else "starting"
        running = sum(1 for m in self._managed.values() if m.channel is not None)
        return f"<Node {self.node_id} [{state}] channels={running}/{len(self._managed)}>"

    # --- identity and addresses -----------------------------------------------------

    @property
    def node_id(self) -> str:
        """The node's id (``[node] id``)."""
        return self.config.node.id

    @property
    def ready(self) -> bool:
        """True once the configured channels were started, until draining begins."""
        return self._ready and not self._draining

    @property
    def draining(self) -> bool:
        """True once :meth:`drain` began: no new work is taken."""
        return self._draining

    @property
    def ops_url(self) -> str | None:
        """The ops HTTP server's base URL, once it serves."""
        url: str | None = self.ops.url
        return url

    @property
    def emulator_urls(self) -> dict[str, str]:
        """The in-process emulators' base URLs, by platform."""
        return {name: handle.url for name, handle in self._emulator_handles.items() if handle.url}

    # --- channels -------------------------------------------------------------------

    async def start_channel(self, spec: ChannelSpec) -> ChannelSnapshot:
        """Start a channel and return its snapshot (it connects in the background).

        Raises:
            NodeDraining: the node is shutting down.
            ChannelExists: a channel with that id is running.
            ConnectionLimitReached: its provider's ``max_connections`` is full.
            KeyError: unknown provider, or its emulator is not configured.
            supervisors.StartChildFailed: the actor failed to start.
        """
        self._check_accepting()
        current = self._managed.get(spec.id)
        if current is not None and current.channel is not None:
            raise ChannelExists(
                f"channel {spec.id!r} is already running; stop it first (stop_channel)"
            )
        provider = self._provider(spec.provider)
        self._check_limit(spec.provider)
        managed = _Managed(spec=spec)
        self._managed[spec.id] = managed
        try:
            config = self._channel_config(spec)
            defaults = self.config.providers.get(spec.provider)
            settings = channel_settings(spec, defaults, provider.limits, base=self._base_settings)
            factory, memory = ChannelActor.factory(
                config, provider, settings=settings, sink=self.store
            )
            memory.subscribers.append((self._hub.tap(spec.id, spec.tenant, provider.name), None))
            child = ChildSpec(id=spec.id, start=factory, shutdown=self.config.supervisor.shutdown)
            ref = await self._channel_supervisor().start_child(child)
        except BaseException as exc:
            managed.start_error = f"{type(exc).__name__}: {exc}"
            raise
        self._child_specs[spec.id] = child
        managed.memory = memory
        managed.channel = ChannelRef(ref, memory, spec.id, provider.name)
        return self._snapshot(managed)

    async def stop_channel(self, channel_id: str) -> None:
        """Stop a channel (its shutdown applies) and forget it.

        Raises:
            UnknownChannel: no such channel.
        """
        managed = self._get(channel_id)
        if managed.channel is not None:
            supervisor = self._channel_supervisor()
            await supervisor.terminate_child(channel_id)
            await supervisor.delete_child(channel_id)
        self._child_specs.pop(channel_id, None)
        del self._managed[channel_id]

    async def restart_channel(self, channel_id: str) -> ChannelSnapshot:
        """Start a channel over from its spec, with fresh memory.

        The way to revive a FAILED channel (a ban lifted, a token replaced):
        failed channels never reconnect by themselves. Its dead letters are
        carried over.

        Raises:
            UnknownChannel, and what :meth:`start_channel` raises.
        """
        managed = self._get(channel_id)
        letters = managed.memory.dead_letters if managed.memory is not None else None
        await self.stop_channel(channel_id)
        snapshot = await self.start_channel(managed.spec)
        fresh = self._managed[channel_id].memory
        if letters is not None and fresh is not None:
            fresh.dead_letters = letters
        return snapshot

    def channel(self, channel_id: str) -> ChannelRef:
        """The handle of a running channel (dead letters, its own subscription).

        Raises:
            UnknownChannel: no such channel.
            ChannelUnavailable: it did not start (the reason is in the message).
        """
        managed = self._get(channel_id)
        if managed.channel is None:
            raise ChannelUnavailable(
                f"channel {channel_id!r} is not running: {managed.start_error or 'stopped'}",
                channel_id=channel_id,
            )
        return managed.channel

    def channels(self) -> list[ChannelSnapshot]:
        """A snapshot of every channel the node was asked to run, in start order."""
        return [self._snapshot(managed) for managed in self._managed.values()]

    # --- messages and events ------------------------------------------------------------

    async def send(
        self,
        channel_id: str,
        message: OutboundMessage,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> SendResult:
        """Send a message; returns once the platform accepted it.

        Args:
            channel_id: the channel to send on.
            message: the message; its ``idempotency_key`` makes retries safe.
            timeout: seconds for the whole send, queueing included (default 60).

        Raises:
            NodeDraining: the node is shutting down; or it was, before this
                message could be sent, and kept it for the next start.
            UnknownChannel: no such channel.
            ChannelUnavailable: the channel is not running or did not connect
                in time.
            ChannelFailed: the channel stopped for good (ban, bad token).
            PermanentSendError: the platform will never take this message
                (``MessageTooLong``, ``BadRecipient``, ...; dead-lettered).
            SendFailed: transient failures outlasted the retries (dead-lettered).
            MailboxFull: the channel's queue is full; slow down.
            AskTimeout: no answer within ``timeout``.
        """
        self._check_accepting()
        channel = self.channel(channel_id)
        pending = Pending(channel_id=channel_id, message=message, accepted_at=time.time())
        self._inflight.add(pending)
        try:
            with pending.scope:
                try:
                    return await channel.send(
                        message, timeout=DEFAULT_SEND_TIMEOUT if timeout is None else timeout
                    )
                except Exception as exc:
                    if not pending.cut:
                        raise
                    # The drain stopped the channel under this send: wait
                    # until the drain has kept the message, then say so.
                    await pending.settled.wait()
                    raise _kept_error(pending) from exc
            raise _kept_error(pending)
        finally:
            self._inflight.discard(pending)
            self._inflight_changed.set()

    def subscribe(
        self,
        *,
        tenant: str | Collection[str] | None = None,
        channel: str | Collection[str] | None = None,
        kind: str | Collection[str] | None = None,
        buffer: int = 1_000,
    ) -> Subscription:
        """Every channel's events as an async iterator of ``NodeEvent``.

        Use ``with node.subscribe(...) as events: async for event in events:``.
        Filters take one value or several; ``None`` takes all. Kinds:
        ``inbound``, ``edited``, ``receipt``, ``state``, ``connection``.
        The node never waits for a subscriber: one ``buffer`` events behind
        loses the newest (counted in ``Subscription.dropped``).

        Raises:
            ValueError: an unknown kind, or a buffer below 1.
        """
        return self._hub.subscribe(tenant=tenant, channel=channel, kind=kind, buffer=buffer)

    # --- what the ops server reads ------------------------------------------------------

    def statistics(self) -> NodeStatistics:
        """Node-wide figures."""
        snapshots = self.channels()
        store = self.store.statistics()
        return NodeStatistics(
            node_id=self.node_id,
            started=sum(1 for s in snapshots if s.start_error is None),
            configured=len(snapshots),
            restarts=sum(s.statistics.restarts for s in snapshots if s.statistics is not None),
            draining=self._draining,
            uptime=trio.current_time() - self._started_at,
            store_backend=store.backend,
            store_pending=store.inbound_pending,
        )

    def webhook_targets(self, provider: str) -> list[WebhookTarget]:
        """The running channels of ``provider`` (WhatsApp, Telegram) and their live links."""
        return [
            WebhookTarget(
                channel_id=channel_id,
                options=self._options_of(managed),
                connection=managed.channel.connection,
            )
            for channel_id, managed in self._managed.items()
            if managed.spec.provider == provider and managed.channel is not None
        ]

    def tree(self) -> ChildSnapshot:
        """The node's supervision tree, for introspection."""
        assert self._root is not None
        return self._root.snapshot()

    # --- shutdown --------------------------------------------------------------------------

    async def drain(self, deadline: float | None = None) -> DrainReport:
        """Shut down gracefully within ``deadline`` seconds (default ``[node] drain_deadline``).

        Stops taking work, lets accepted sends finish, keeps the ones that
        could not in the store, stops the channels and flushes the store.
        Idempotent: a second call returns the first report.
        """
        if self._drain_report is not None:
            return self._drain_report
        self._draining = True
        self._drain_report = await drain_node(
            self, self.config.node.drain_deadline if deadline is None else deadline
        )
        return self._drain_report

    # --- internals ----------------------------------------------------------------------

    def _check_accepting(self) -> None:
        if self._draining:
            raise NodeDraining(f"node {self.node_id!r} is shutting down and takes no new work")

    def _get(self, channel_id: str) -> _Managed:
        try:
            return self._managed[channel_id]
        except KeyError:
            raise UnknownChannel(channel_id) from None

    def _provider(self, name: str) -> Provider:
        provider = self._providers.get(name)
        if provider is None:
            provider = load(PROVIDERS, name)()
            self._providers[name] = provider
        return provider

    def _check_limit(self, provider: str) -> None:
        defaults = self.config.providers.get(provider)
        limit = defaults.max_connections if defaults is not None else None
        if limit is None:
            return
        running = sum(
            1
            for managed in self._managed.values()
            if managed.spec.provider == provider and managed.channel is not None
        )
        if running >= limit:
            raise ConnectionLimitReached(provider, limit)

    def _channel_config(self, spec: ChannelSpec) -> Any:
        defaults = self.config.providers.get(spec.provider)
        extra: dict[str, Any] = {}
        if spec.provider == "telegram" and self.ops_url is not None:
            mode = spec.options.get("mode", (defaults.options if defaults else {}).get("mode"))
            if mode == "webhook":
                public = self.config.ops.public_url or self.ops_url
                extra["webhook_url"] = f"{public.rstrip('/')}/webhooks/telegram/{spec.id}"
        if not spec.emulator:
            return channel_config(spec, defaults, extra_options=extra)
        if self.emulators is None:
            raise KeyError(
                f"channel {spec.id!r} wants the {spec.provider} emulator, but the node runs "
                f"none ([emulators.{spec.provider}])"
            )
        return channel_config(
            spec,
            defaults,
            base_url=self.emulators.base_url(spec),
            credentials=self.emulators.credentials(spec),
            extra_options={**extra, **self.emulators.options(spec)},
        )

    def _options_of(self, managed: _Managed) -> dict[str, Any]:
        defaults = self.config.providers.get(managed.spec.provider)
        options = {**(defaults.options if defaults else {}), **managed.spec.options}
        if managed.spec.emulator and self.emulators is not None:
            options.update(self.emulators.options(managed.spec))
        return options

    def _channel_supervisor(self) -> SupervisorRef:
        if self._channels is None:
            raise RuntimeError("the node's channels supervisor is not running")
        return self._channels

    def _snapshot(self, managed: _Managed) -> ChannelSnapshot:
        spec = managed.spec
        if managed.channel is None:
            return ChannelSnapshot(
                channel_id=spec.id,
                tenant=spec.tenant,
                provider=spec.provider,
                status=ChannelStatus.FAILED if managed.start_error else ChannelStatus.STOPPED,
                statistics=None,
                start_error=managed.start_error,
            )
        stats = managed.channel.statistics()
        return ChannelSnapshot(
            channel_id=spec.id,
            tenant=spec.tenant,
            provider=spec.provider,
            status=stats.status,
            statistics=stats,
            mailbox_depth=managed.channel.ref.statistics().mailbox.depth,
        )

    def _channels_child(self) -> ChildSpec:
        sup = self.config.supervisor
        backoff = RestartBackoff(
            min_delay=sup.restart_backoff.min,
            max_delay=sup.restart_backoff.max,
            random_factor=sup.restart_backoff.random_factor,
        )

        def start() -> Supervisor:
            # Rebuilt from the node's list, so a restarted channels
            # supervisor brings every channel back.
            return Supervisor(
                list(self._child_specs.values()),
                strategy=Strategy.ONE_FOR_ONE,
                intensity=sup.intensity,
                period=sup.period,
                restart_backoff=backoff,
            )

        start.__name__ = "Supervisor"
        return ChildSpec(id="channels", start=start, type=ChildType.SUPERVISOR, shutdown=INFINITY)

    async def _start_configured(self) -> None:
        wanted = [spec for spec in self.config.channels if spec.enabled]
        for spec in wanted:
            try:
                await self.start_channel(spec)
            except Exception as exc:  # one channel never stops the others
                log.error(
                    "channel %s did not start: %s",
                    spec.id,
                    self._managed[spec.id].start_error if spec.id in self._managed else exc,
                    extra={"channel": spec.id, "tenant": spec.tenant, "provider": spec.provider},
                )
                if spec.id not in self._managed:
                    self._managed[spec.id] = _Managed(
                        spec=spec, start_error=f"{type(exc).__name__}: {exc}"
                    )
        failed = [m for m in self._managed.values() if m.start_error is not None]
        started = len(wanted) - len(failed)
        reasons = "; ".join(f"{m.spec.id}: {m.start_error}" for m in failed)
        log.log(
            logging.WARNING if failed else logging.INFO,
            "started %d/%d channels%s",
            started,
            len(wanted),
            f"; not started: {reasons}" if failed else "",
        )

    async def _report_connected(self) -> None:
        """Log once how many channels connected within ``start_timeout``.

        Settling is followed from the state events one channel at a time:
        a snapshot of every channel per event would make a 10,000-channel
        start quadratic. Only if the subscription lost events is the set
        rebuilt from a snapshot.
        """
        unsettled_states = (ChannelStatus.IDLE, ChannelStatus.CONNECTING)

        def unsettled_now() -> set[str]:
            return {s.channel_id for s in self.channels() if s.status in unsettled_states}

        with (
            self.subscribe(kind="state") as changes,
            trio.move_on_after(self.config.node.start_timeout),
        ):
            unsettled = unsettled_now()
            lost = 0
            while unsettled:
                change = (await changes.receive()).event
                if change.status in unsettled_states:
                    unsettled.add(change.channel_id)
                else:
                    unsettled.discard(change.channel_id)
                if changes.dropped != lost:
                    lost = changes.dropped
                    unsettled = unsettled_now()
        snapshots = self.channels()
        connected = [s for s in snapshots if s.status is ChannelStatus.CONNECTED]
        troubled = [s for s in snapshots if s.problem]
        problems = "; ".join(f"{s.channel_id}: {s.problem}" for s in troubled[:REPORT_PROBLEMS])
        if len(troubled) > REPORT_PROBLEMS:
            problems += f"; and {len(troubled) - REPORT_PROBLEMS} more (see /health)"
        log.log(
            logging.WARNING if problems else logging.INFO,
            "%d/%d channels connected%s",
            len(connected),
            len(snapshots),
            f"; {problems}" if problems else "",
        )

    async def _resend_kept(self) -> None:
        """Send again what the previous run kept at its drain deadline."""
        kept = await self.store.take_outbound()
        if not kept:
            return
        log.info("resending %d message(s) kept by the previous run", len(kept))
        assert self._nursery is not None
        for item in kept:
            self._nursery.start_soon(self._resend_one, item)

    async def _resend_one(self, item: Any) -> None:
        try:
            await self.send(item.channel_id, item.message)
        except NodeDraining:
            return  # kept again by the drain
        except Exception as exc:
            log.error(
                "a message kept by the previous run (idempotency key %s) could not be sent: %s",
                item.message.idempotency_key,
                exc,
                extra={"channel": item.channel_id},
            )
            await self.store.keep_outbound([attrs.evolve(item, reason=f"resend failed: {exc}")])


def _kept_error(pending: Pending) -> NodeDraining:
    if not pending.kept:
        return NodeDraining(
            f"not sent by the drain deadline, and keeping it failed (see the log): channel "
            f"{pending.channel_id!r}, idempotency key {pending.message.idempotency_key!r}"
        )
    return NodeDraining(
        f"not sent by the drain deadline; kept for the next start "
        f"(channel {pending.channel_id!r}, idempotency key {pending.message.idempotency_key!r})"
    )


@asynccontextmanager
async def open_node(
    config: NodeConfig,
    *,
    store: Store | None = None,
    channel_defaults: ChannelSettings | None = None,
    providers: Mapping[str, Provider] | None = None,
) -> AsyncIterator[Node]:
    """Run a node in the caller's trio program for the duration of the block.

    The block is entered once the services run and every enabled channel of
    ``config`` was started (channels connect in the background; a channel
    that cannot start is logged and shown in ``channels()``, the others run).
    Leaving the block normally drains the node gracefully (see
    :meth:`Node.drain`); leaving it by an exception stops it at once.

    Args:
        config: the deployment (``runtime.config.load_config``).
        store: use this store instead of opening ``config.storage``.
        channel_defaults: library defaults under the file's settings
            (tests use fast backoffs).
        providers: provider instances to use instead of the registry's
            defaults, by name (a simulated platform with latency, say).

    Raises:
        StoreError: the store could not be opened.
        supervisors.SupervisorExited: in an ExceptionGroup, when the node's
            tree gave up (services crashed too often).
    """
    async with open_actor_system() as system, _open_store(config, store) as opened:
        emulators = LocalEmulators(config.emulators) if config.emulators else None
        node = Node(
            config,
            system,
            opened,
            emulators=emulators,
            base_settings=channel_defaults,
            providers=providers,
        )
        children: list[ChildSpec] = []
        if emulators is not None:
            for platform in emulators.emulators:
                handle = ServiceHandle(f"{platform} emulator")
                node._emulator_handles[platform] = handle
                children.append(
                    ChildSpec(
                        id=f"emulator-{platform}",
                        start=ServiceActor.factory(handle, emulators.serve(platform)),
                    )
                )
        if config.ops.enabled:
            serve = functools.partial(
                serve_ops,
                node,
                host=config.ops.host,
                port=config.ops.port,
                api_token=config.ops.api_token,
            )
            children.append(ChildSpec(id="ops", start=ServiceActor.factory(node.ops, serve)))
        children.append(node._channels_child())
        # The nursery lives inside the root supervisor's block: cancelling it
        # on the way out must not swallow the root's own "I gave up", which
        # the supervisor raises when its block ends (SupervisorExited).
        async with (
            open_supervisor(
                system,
                children,
                name=f"node:{config.node.id}",
                intensity=ROOT_INTENSITY,
                period=ROOT_PERIOD,
            ) as root,
            trio.open_nursery() as nursery,
        ):
            node._nursery = nursery
            node._root = root
            channels_ref = await root.whereis_child("channels")
            assert channels_ref is not None
            node._channels = SupervisorRef(channels_ref)
            if emulators is not None:
                emulators.urls.update(node.emulator_urls)
                if node.ops_url is not None:
                    emulators.set_webhook_base(config.ops.public_url or node.ops_url)
            await node._start_configured()
            node._ready = True
            nursery.start_soon(node._report_connected)
            nursery.start_soon(node._resend_kept)
            try:
                yield node
            except BaseException:
                # Leaving by an exception (a second signal, a crash): stop at
                # once, every channel brutally killed with its supervisor.
                node._draining = True
                root.ref.kill()
                raise
            else:
                await node.drain()
            finally:
                nursery.cancel_scope.cancel()


@asynccontextmanager
async def _open_store(config: NodeConfig, store: Store | None) -> AsyncIterator[Store]:
    if store is not None:
        yield store
        return
    async with open_store(config.storage) as opened:
        yield opened
