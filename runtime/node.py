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
- A send past the node's or its channel's bound of sends in flight, or past
  the sends the node's event loop runs within its bound of lateness, is
  refused at once (``Overloaded``, :mod:`runtime.admission`) rather than
  queued into a timeout.
- Every accepted ``send`` is tracked until it returns. ``drain()`` stops
  taking work, waits for the tracked sends up to the deadline, keeps the rest
  in the store (reported, never silently dropped), stops the channels (each
  flushes its inbound events and closes its link resumably), and flushes the
  store. See :mod:`runtime.drain`.
- The node's life is one :class:`NodeState`: starting → ready → draining →
  drained. Its channels are one :class:`~runtime.table.ChannelTable`.
- Everything the node raises is a :class:`~runtime.errors.NodeError`: the
  errors of the layers below are mapped where they leave it, chained.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import functools
import logging
import math
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager
from typing import Any, Final

import attrs
import outcome
import trio

from actors import (
    ActorRef,
    ActorSystem,
    ChannelActor,
    ChannelMemory,
    ChannelRef,
    ChannelSettings,
    ChannelStatus,
    lowlevel,
    open_actor_system,
)
from actors.channel import Tenure
from actors.channel.durable import ChannelState, export_state, restore_state
from actors.channel.inbound import take_over
from providers.base import OutboundMessage, Provider, SendResult
from providers.operations import (
    DeleteMessage,
    EditMessage,
    MarkRead,
    Operation,
    React,
    SendTyping,
    json_problems,
    operation_print,
    remembered_result,
)
from providers.registry import PROVIDERS, load
from supervisors import (
    INFINITY,
    ChildSnapshot,
    ChildSpec,
    ChildType,
    RestartBackoff,
    StartChildFailed,
    Strategy,
    Supervisor,
    SupervisorError,
    SupervisorRef,
    open_supervisor,
)

from .admission import Shedder, admit
from .channels import channel_config, channel_settings, overrides_settings
from .checkpoints import CheckpointWriter, clock_offset
from .cluster import Cluster, ClusterUnavailable, open_cluster
from .collection import CollectorPolicy
from .config.model import ChannelSpec, NodeConfig, ProviderDefaults, channel_secrets
from .dead_letters import DeadLetterOps
from .drain import DrainReport, Pending, SendTracker, drain
from .emulated import LocalEmulators
from .errors import (
    AskTimeout,
    ChannelExists,
    ChannelFenced,
    ChannelStartFailed,
    ChannelUnavailable,
    ConnectionLimitReached,
    InvalidMessage,
    KeyReused,
    NodeDraining,
    NodeError,
    NodeNotRunning,
    NodeStarting,
    Overloaded,
    SendError,
    StoreError,
    UnknownProvider,
    send_error,
    wrong_argument,
)
from .events import EventHub, Subscription
from .lag import LoopLag
from .node_cluster import ClusterMode
from .ops import serve_ops
from .outbox import Outbox, Sent, open_outbox
from .resend import resend_kept
from .services import ServiceActor, ServiceHandle, naming_bind_errors
from .store import KeptMessage, Store, open_store
from .store.durable import StoredCheckpoint
from .table import ChannelRow, ChannelTable
from .telemetry.histograms import NodeTimings, ProviderTimings
from .telemetry.redaction import Redactor
from .view import (
    TOTAL_FIELDS,
    ChannelDetail,
    ChannelSnapshot,
    ChannelTotals,
    NodeStatistics,
    WebhookLinks,
    WebhookTarget,
    links_of,
)
from .webhooks import ConfiguredSigner, configured_signer

__all__ = ["Node", "NodeState", "open_node"]

REPORT_PROBLEMS: Final = 20  # channels named in the startup line; /health has them all
log = logging.getLogger("switchboard.node")

ROOT_INTENSITY: Final = 5  # service restarts the node tolerates ...
ROOT_PERIOD: Final = 60.0  # ... within this many seconds
DEFAULT_SEND_TIMEOUT: Final = 60.0  # seconds a send may take, queueing included
_NUMBERS: Final = (int, float)  # (a tuple: ``int | float`` in an isinstance is made at each call)
LAG_REPORTED: Final = 10.0  # seconds over which statistics report the loop's worst lateness
HANDOFF_SHARE: Final = 0.8  # of a cluster drain's deadline, for handing the channels off
WEBHOOK_PROVIDERS: Final = frozenset(("whatsapp", "telegram"))
START_TOGETHER: Final = 64  # channels start_channels starts at once (a node's configured ones)


class NodeState(enum.Enum):
    """Where a node is in its life."""

    STARTING = "starting"
    """Services and configured channels are being started."""
    READY = "ready"
    """Taking work."""
    DRAINING = "draining"
    """Shutting down: no new work; accepted sends finish or are kept."""
    DRAINED = "drained"
    """Drained (or stopped at once): nothing runs any more."""


class Node(ClusterMode, DeadLetterOps):
    """A running node; get one from :func:`open_node`.

    All methods are for the trio program that opened the node.
    """

    def __init__(
        self,
        config: NodeConfig,
        system: ActorSystem,
        store: Store,
        *,
        owner_token: int,
        emulators: LocalEmulators | None,
        base_settings: ChannelSettings | None,
        providers: Mapping[str, Provider] | None = None,
    ) -> None:
        self.config = config
        self.system = system
        self.store = store
        self._checkpoints = CheckpointWriter(
            store,
            token=owner_token,
            interval=config.storage.checkpoint_interval,
            on_fenced=self._fenced,
        )
        self.emulators = emulators
        self._base_settings = base_settings
        # Per provider, the settings of every channel that overrides none (frozen).
        self._shared_settings: dict[str, ChannelSettings] = {}
        self._hub = EventHub(log_inbound=config.logging.inbound)
        self._table = ChannelTable()
        self._starting: dict[str, _Claim] = {}  # the channels being started, by id
        self._changes: dict[str, trio.Lock] = {}  # a stop or restart under way, by id
        self._providers: dict[str, Provider] = dict(providers or {})
        self._sends = SendTracker()
        # How late the event loop runs: past [node] max_loop_lag, the node takes only as
        # many sends in flight as its loop runs within it.
        self._loop_lag = LoopLag(window=LAG_REPORTED)
        self._shedder = Shedder(
            self._loop_lag,
            config.node.max_loop_lag,
            holding=self._held,
            most=config.node.max_sends_in_flight,
        )
        self._refused: collections.Counter[str] = collections.Counter()  # by Overloaded.scope
        self._timings = NodeTimings(store_flush=getattr(store, "flush_seconds", None))
        self._cluster: Cluster | None = None
        self._preloaded: dict[str, StoredCheckpoint] = {}  # read for a lease's floor, kept
        self._holders: dict[str, tuple[str, int]] = {}  # remote channels' leases, last read
        self._moving: dict[str, trio.Event] = {}  # channels being let go: sends wait
        self._calls = SendTracker()  # sends accepted here in a cluster, wherever they run
        # Of those, sent to their channel's owner and not answered yet: in all, by channel.
        self._forwarding = 0
        self._forwards: collections.Counter[str] = collections.Counter()
        self._in_flight: dict[tuple[str, str], Pending] = {}  # (channel, key) being sent
        self._webhook_indexes: dict[str, _WebhookIndex] = {}  # by provider
        self._link_changes = _LinkChanges()  # every channel's live link coming or going
        self._state = NodeState.STARTING
        self._drain_report: DrainReport | None = None
        self._drained = trio.Event()  # set by a drain's report, or by the node's end
        # What the node never shows: the config's secrets, and those it learns.
        self.redactor = Redactor(config.secrets())
        self._secret_sinks: list[Callable[[Iterable[str]], None]] = []
        self._drain_attempt: trio.Event | None = None  # set as the drain under way ends
        self._ended = False  # the node's block is over: its tree is gone
        self.metric_sources: list[Callable[[], Iterable[Any]]] = []
        """Extra ``/metrics`` families, each a callable returning them (the console's)."""
        # The run's clock reader: trio.current_time less two frames (read on every send).
        self._now = trio.lowlevel.current_clock().current_time
        self._started_at = self._now()
        self._root: SupervisorRef | None = None
        self._channels: SupervisorRef | None = None
        self.ops = ServiceHandle("ops")
        self._emulator_handles: dict[str, ServiceHandle] = {}
        self._nursery: trio.Nursery | None = None

    def __repr__(self) -> str:
        running = len(self._table.running())
        return f"<Node {self.node_id} [{self._state.name}] channels={running}/{len(self._table)}>"

    # --- identity and addresses -----------------------------------------------------

    @property
    def node_id(self) -> str:
        """The node's id (``[node] id``)."""
        return self.config.node.id

    @property
    def state(self) -> NodeState:
        """Where the node is in its life."""
        return self._state

    @property
    def ready(self) -> bool:
        """True once the configured channels were started, until draining begins."""
        return self._state is NodeState.READY

    @property
    def draining(self) -> bool:
        """True once :meth:`drain` began: no new work is taken."""
        return self._state in (NodeState.DRAINING, NodeState.DRAINED)

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

        Its durable state (session, limiters, backoff, breaker, dedupe window,
        dead letters, FAILED) is restored from its last checkpoint first.

        Raises:
            NodeDraining: the node is shutting down.
            ChannelExists: a channel with that id is running.
            ConnectionLimitReached: its provider's ``max_connections`` is full.
            UnknownProvider: unknown provider, or its emulator is not configured
                (also a ``KeyError``).
            ChannelStartFailed: the actor failed to start (also
                ``supervisors.StartChildFailed``; the cause is chained).
            NodeNotRunning: the node's tree is not running.
            ChannelFenced: a newer owner wrote the channel's checkpoint.
            StoreError: its checkpoint could not be read.
            TypeError: ``spec`` is no ``ChannelSpec`` (nothing was done).

        In a cluster the channel enters the cluster's catalog, and the node
        placement puts it on starts it there (the snapshot may then show it
        running elsewhere).
        """
        _check_spec(spec)
        if self._cluster is not None:
            self._check_accepting()
            self.learn_secrets(channel_secrets(spec))
            await self._cluster_start(spec)
            return self._snapshot(self._table.get(spec.id))
        return await self._start(spec)

    def learn_secrets(self, values: Iterable[str]) -> None:
        """Redact these values too, wherever the node shows text (the ops API, the
        console, and each sink given to :meth:`on_new_secrets`: the log). A
        channel started at run time adds its credentials so.

        Raises:
            TypeError: ``values`` is one string (not an iterable of them), or
                holds something that is no string (bytes: decode them first);
                nothing was learnt.
        """
        if isinstance(values, str | bytes):
            # A string is an iterable of its characters, each too short to redact:
            # the secret was silently not learnt.
            raise wrong_argument(
                "values", "an iterable of str (not one string)", values, secret=True
            )
        try:
            fresh = list(values)
        except TypeError:
            raise wrong_argument("values", "an iterable of str", values, secret=True) from None
        for index, value in enumerate(fresh):
            if not isinstance(value, str):
                raise wrong_argument(
                    f"values[{index}]", "a str (a secret's text)", value, secret=True
                )
        if not fresh:
            return
        self.redactor.add(fresh)
        for sink in self._secret_sinks:
            sink(fresh)

    def on_new_secrets(self, sink: Callable[[Iterable[str]], None]) -> None:
        """Call ``sink`` with the secrets the node learns from now on
        (``LogHandle.add_secrets``, so the log redacts them too)."""
        self._secret_sinks.append(sink)

    async def start_channels(
        self, specs: Sequence[ChannelSpec]
    ) -> list[ChannelSnapshot | Exception]:
        """Start many channels together: for each spec, in order, its snapshot or the
        error that kept it from starting (the errors of :meth:`start_channel`).

        One channel's failure never stops the others. Up to
        :data:`START_TOGETHER` start at once, entering the node in the order
        given, so their connects overlap: started one after another, each
        start ran among the connects of the ones before and a connect cost
        the node about 1.5 times as much CPU (``bench.connect_cost``, 1,000
        channels). A node starts its configured channels so.

        An item that is no ``ChannelSpec`` is answered with a ``TypeError``.

        Raises:
            TypeError: ``specs`` is no sequence (a string, one spec, a generator).
        """
        if not isinstance(specs, Sequence) or isinstance(specs, str | bytes):
            raise wrong_argument("specs", "a sequence of ChannelSpec", specs, secret=True)
        self.learn_secrets(
            secret
            for spec in specs
            if isinstance(spec, ChannelSpec)
            for secret in channel_secrets(spec)
        )
        results: list[ChannelSnapshot | Exception | None] = [None] * len(specs)
        if self._cluster is not None:
            # The catalog places each one (perhaps elsewhere): one after the other.
            for index, spec in enumerate(specs):
                try:
                    results[index] = await self.start_channel(spec)
                except Exception as exc:
                    results[index] = exc
            return _all_answered(results)

        for first in range(0, len(specs), START_TOGETHER):
            await self._start_batch(
                specs, range(first, min(first + START_TOGETHER, len(specs))), results
            )
        return _all_answered(results)

    async def _start_batch(
        self,
        specs: Sequence[ChannelSpec],
        batch: range,
        results: list[ChannelSnapshot | Exception | None],
    ) -> None:
        """Start ``specs[batch]`` together, each one's outcome into ``results``.

        Claimed in order, prepared (their checkpoints read) at once, started
        by one request to the channels' supervisor, in order: so the
        supervisor's children and the node's table keep the order given.
        """
        claimed: dict[int, tuple[Provider, _Claim]] = {}
        for index in batch:
            try:
                claimed[index] = self._claim(specs[index])
            except Exception as exc:
                results[index] = exc
        prepared: dict[int, tuple[ChildSpec, ChannelMemory]] = {}

        async def prepare(index: int) -> None:
            provider, claim = claimed[index]
            try:
                prepared[index] = await self._prepare(specs[index], provider)
            except Exception as exc:
                self._unclaim(claim, exc)
                results[index] = exc

        try:
            async with trio.open_nursery() as nursery:
                for index in claimed:
                    nursery.start_soon(prepare, index)
            order = sorted(prepared)
            children = [prepared[index][0] for index in order]
            outcomes: list[ActorRef | Exception] = []
            if children:
                await trio.lowlevel.checkpoint_if_cancelled()  # cut before asking: none starts
                try:
                    with trio.CancelScope(shield=True):  # asked: hear which started (below)
                        outcomes += await self._channel_supervisor().start_children(children)
                except Exception as exc:  # the supervisor is gone: none of them started
                    await trio.lowlevel.checkpoint_if_cancelled()  # a cancel that took it wins
                    outcomes = [exc] * len(children)
            for index, started in zip(order, outcomes, strict=True):
                spec = specs[index]
                provider, claim = claimed[index]
                child, memory = prepared.pop(index)
                if isinstance(started, ActorRef):
                    self._unclaim(claim, None)
                    results[index] = self._started(claim, provider, child, memory, started)
                    continue
                error = started
                if isinstance(started, StartChildFailed):
                    error = self._not_started(spec, memory, started)
                else:
                    self._checkpoints.detach(memory)
                self._unclaim(claim, error)
                results[index] = error
        finally:  # cut short (cancelled): what this batch still holds did not start
            for _, memory in prepared.values():
                self._checkpoints.detach(memory)
            for _, claim in claimed.values():
                if not claim.ended.is_set():
                    self._unclaim(claim, "Cancelled: its start was cut")

    def _claim(self, spec: ChannelSpec) -> tuple[Provider, _Claim]:
        """Check that ``spec`` may start and enter its row: its provider, and the claim
        its start holds until it ends (:meth:`_unclaim`).

        While claimed, a channel is taken (``ChannelExists``) and counts
        against its provider's ``max_connections``, so that starts running
        together cannot both take one id or one slot; a stop or a restart
        of it waits for the start to end (:meth:`_start_ended`).
        """
        _check_spec(spec)
        self._check_accepting()
        self.learn_secrets(channel_secrets(spec))
        current = self._table.find(spec.id)
        if spec.id in self._starting or (current is not None and current.running):
            raise ChannelExists(
                f"channel {spec.id!r} is already running; stop it first (stop_channel)"
            )
        provider = self._provider(spec.provider)
        self._check_limit(spec.provider)
        claim = _Claim(ChannelRow(spec=spec))
        self._table.put(claim.row)
        self._starting[spec.id] = claim
        return provider, claim

    async def _start(
        self,
        spec: ChannelSpec,
        *,
        carry: ChannelMemory | None = None,
        revive: bool = False,
        tenure: Tenure | None = None,
    ) -> ChannelSnapshot:
        provider, claim = self._claim(spec)
        return await self._start_claimed(claim, provider, carry=carry, revive=revive, tenure=tenure)

    async def _start_claimed(
        self,
        claim: _Claim,
        provider: Provider,
        *,
        carry: ChannelMemory | None = None,
        revive: bool = False,
        tenure: Tenure | None = None,
    ) -> ChannelSnapshot:
        """Start the channel :meth:`_claim` entered."""
        spec = claim.row.spec
        try:
            child, memory = await self._prepare(
                spec, provider, carry=carry, revive=revive, tenure=tenure
            )
            try:
                await trio.lowlevel.checkpoint_if_cancelled()  # cut before asking: none starts
                # Once asked, a busy supervisor starts the child even if this caller
                # is cancelled meanwhile: its answer is heard, so that no channel runs
                # that the node does not list (a cancel then comes at the next
                # checkpoint). It answers once it has started the child, or failed.
                with trio.CancelScope(shield=True):
                    ref = await self._channel_supervisor().start_child(child)
            except BaseException as exc:
                self._checkpoints.detach(memory)
                # A cancel that came meanwhile is what the caller hears (one that
                # took the actors down made the supervisor's answer an error).
                await trio.lowlevel.checkpoint_if_cancelled()
                if isinstance(exc, StartChildFailed):
                    raise self._not_started(spec, memory, exc) from exc
                raise
        except BaseException as exc:
            self._unclaim(claim, exc)
            raise
        self._unclaim(claim, None)
        return self._started(claim, provider, child, memory, ref)

    async def _prepare(
        self,
        spec: ChannelSpec,
        provider: Provider,
        *,
        carry: ChannelMemory | None = None,
        revive: bool = False,
        tenure: Tenure | None = None,
    ) -> tuple[ChildSpec, ChannelMemory]:
        """The child spec that starts a claimed channel, and its memory, its durable
        state restored into it and its checkpoints attached."""
        config = self._channel_config(spec)
        defaults = self.config.providers.get(spec.provider)
        settings = self._settings_of(spec, defaults, provider)
        factory, memory = ChannelActor.factory(config, provider, settings=settings, sink=self.store)
        if carry is not None:
            take_over(memory, carry)  # behind what the store still holds of the old one
        memory.subscribers.append((self._hub.tap(spec.id, spec.tenant, provider.name), None))
        memory.tenure = tenure
        memory.timings = self._timings.provider(provider.name)
        memory.links = self._link_changes
        token = self._checkpoints.token if tenure is None else tenure.token
        await self._restore(spec, memory, carry=carry, revive=revive, token=token)
        self._checkpoints.attach(memory, spec.id, spec.tenant, provider.name, token=token)
        sup = self.config.supervisor
        child = ChildSpec(
            id=spec.id,
            start=factory,
            shutdown=sup.shutdown,
            # Isolated: a channel that keeps crashing is FAILED alone and
            # never counts against the channels' supervisor, so no number
            # of channels crashing together can take the node down.
            intensity=sup.channel_intensity,
            period=sup.channel_period,
            on_give_up=functools.partial(ChannelActor.crashed_for_good, memory, spec.id),
        )
        return child, memory

    def _not_started(
        self, spec: ChannelSpec, memory: ChannelMemory, exc: StartChildFailed
    ) -> ChannelStartFailed:
        self._checkpoints.detach(memory)
        return ChannelStartFailed(f"channel {spec.id!r} did not start: {exc}", child_id=spec.id)

    def _unclaim(self, claim: _Claim, error: BaseException | str | None) -> None:
        """The claimed channel started, or did not (``error``, or why): its start ended."""
        if self._starting.get(claim.row.spec.id) is claim:
            del self._starting[claim.row.spec.id]
        if error is not None:
            why = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
            claim.row.start_error = why
        claim.ended.set()

    async def _start_ended(self, channel_id: str) -> None:
        """Wait until no start of ``channel_id`` is under way (another may have
        begun as the one waited for ended: a restart's)."""
        while (claim := self._starting.get(channel_id)) is not None:
            await claim.ended.wait()

    def _started(
        self,
        claim: _Claim,
        provider: Provider,
        child: ChildSpec,
        memory: ChannelMemory,
        ref: ActorRef,
    ) -> ChannelSnapshot:
        row = claim.row
        spec = row.spec
        row.child = child
        row.memory = memory
        row.channel = ChannelRef(ref, memory, spec.id, provider.name)
        return self._snapshot(row)

    async def stop_channel(self, channel_id: str) -> None:
        """Stop a channel (its shutdown applies) and forget it.

        A channel still starting is stopped once its start has ended (one
        started by :meth:`start_channels` may wait for its batch, up to
        :data:`START_TOGETHER` starts).

        Raises:
            UnknownChannel: no such channel.
            NodeNotRunning: the node's tree is not running.
            TypeError: ``channel_id`` is no ``str``.
        """
        _check_channel_id(channel_id)
        self._check_not_ended()
        await self._start_ended(channel_id)
        self._table.get(channel_id)  # (UnknownChannel)
        async with self._changing(channel_id):
            await self._start_ended(channel_id)  # (one begun while this call waited)
            row = self._table.find(channel_id)
            if row is None:
                return  # stopped by another call while this one waited: as asked
            if self._cluster is not None:
                await self._cluster_stop(channel_id)
                return
            await self._stop_and_forget(row)

    async def _stop_and_forget(self, row: ChannelRow) -> None:
        try:
            await self._stop_local(row, checkpoint=True)
        finally:  # (cancelled once stopped: forgotten all the same)
            if not row.running and self._table.find(row.spec.id) is row:  # (not a newer start's)
                self._table.remove(row.spec.id)

    @contextlib.asynccontextmanager
    async def _changing(self, channel_id: str) -> AsyncIterator[None]:
        """One stop or restart of ``channel_id`` at a time (a cluster move's stop too).

        A stop that comes while a restart runs waits for it, then stops what
        the restart started (it returned while the restarted channel ran);
        a second stop finds the channel stopped.
        """
        lock = self._changes.get(channel_id)
        if lock is None:
            lock = self._changes[channel_id] = trio.Lock()
        async with lock:
            try:
                yield
            finally:
                if lock.statistics().tasks_waiting == 0:
                    del self._changes[channel_id]

    async def _stop_local(self, row: ChannelRow, *, checkpoint: bool) -> tuple[float, float]:
        """Stop a channel running here; write its final checkpoint unless told not to.

        Its callers hold the channel's :meth:`_changing` lock: one stop of a
        row at a time (a second would reach the supervisor after the first
        had removed the child, and its ``ChildNotFound`` is no error of the
        node's).

        Returns:
            the seconds the stop took, and the final checkpoint (for the logs).
        """
        if not checkpoint and row.memory is not None:
            self._checkpoints.detach(row.memory)
        started = trio.current_time()
        if row.running:
            supervisor = self._channel_supervisor()
            # Shielded (the channel's shutdown bounds it): a caller cancelled
            # half-way left a row listed CONNECTED whose actor was gone.
            with trio.CancelScope(shield=True):
                await supervisor.terminate_child(row.spec.id)
                await supervisor.delete_child(row.spec.id)
        row.channel = row.child = None
        stopped = trio.current_time()
        memory, row.memory = row.memory, None
        if memory is not None:
            try:
                if checkpoint:
                    with contextlib.suppress(StoreError):  # logged by the writer
                        await self._checkpoints.write_now(memory)  # ended: a clean checkpoint
            finally:
                self._checkpoints.detach(memory)
        return stopped - started, trio.current_time() - stopped

    async def restart_channel(self, channel_id: str) -> ChannelSnapshot:
        """Start a channel over from its spec, no longer FAILED.

        The way to revive a FAILED channel (a ban lifted, a token replaced):
        failed channels never reconnect by themselves, across restarts of
        the node too. Everything else it keeps (dead letters, limiters,
        session) is carried over.

        Raises:
            UnknownChannel, and what :meth:`start_channel` raises.
            NodeDraining: the node is shutting down (the channel is left as it is).
            NodeNotRunning: the node's block is over.
            TypeError: ``channel_id`` is no ``str``.
        """
        _check_channel_id(channel_id)
        self._check_not_ended()
        self._check_accepting()
        await self._start_ended(channel_id)
        self._table.get(channel_id)  # (UnknownChannel)
        async with self._changing(channel_id):
            self._check_accepting()  # (a drain begun while this call waited)
            await self._start_ended(channel_id)  # (one begun while this call waited)
            row = self._table.get(channel_id)  # (stopped while this call waited: unknown)
            if self._cluster is None:
                memory = row.memory
                await self._stop_and_forget(row)
                return await self._start(row.spec, carry=memory, revive=True)
            owned = self._cluster.ownership.owned.get(channel_id)
            if owned is not None and channel_id not in self._moving:
                memory = row.memory  # held here: running, FAILED, or it did not start
                if row.running:
                    await self._stop_local(row, checkpoint=True)
                return await self._start(row.spec, carry=memory, revive=True, tenure=owned.tenure)
        # It runs elsewhere (or moves there): asked of its owner once the lock is
        # let go, which the move's own stop here (stop_owned) may be waiting for.
        await self._forward_op(channel_id, "restart", {})
        return next(s for s in self.channels() if s.channel_id == channel_id)

    def channel(self, channel_id: str) -> ChannelRef:
        """The handle of a running channel (dead letters, its own subscription).

        Raises:
            UnknownChannel: no such channel.
            ChannelUnavailable: it did not start (the reason is in the message).
            TypeError: ``channel_id`` is no ``str``.
        """
        _check_channel_id(channel_id)
        return self._channel_ref(channel_id)

    def _channel_ref(self, channel_id: str) -> ChannelRef:
        """:meth:`channel`, for a ``channel_id`` already checked (the send path)."""
        row = self._table.get(channel_id)
        if row.channel is None:
            if self._cluster is not None and row.start_error is None:
                raise self._not_here(channel_id)
            raise ChannelUnavailable(
                f"channel {channel_id!r} is not running: {row.start_error or 'stopped'}",
                channel_id=channel_id,
            )
        return row.channel

    def channels(self) -> list[ChannelSnapshot]:
        """A snapshot of every channel the node was asked to run, in start order."""
        return [self._snapshot(row) for row in self._table]

    def channel_detail(self, channel_id: str) -> ChannelDetail:
        """One channel in depth, read off its memory: never waits for its actor.

        Raises:
            UnknownChannel: no such channel.
            TypeError: ``channel_id`` is no ``str``.
        """
        _check_channel_id(channel_id)
        row = self._table.get(channel_id)
        snapshot = self._snapshot(row)
        memory = row.memory
        if memory is None:
            return ChannelDetail(snapshot=snapshot)
        limits = memory.limits
        breaker = attrs.asdict(memory.breaker.statistics())
        breaker["state"] = memory.breaker.statistics().state.value
        session = memory.session
        return ChannelDetail(
            snapshot=snapshot,
            limits={
                "per_channel_rate": limits.per_channel_rate,
                "per_channel_burst": limits.per_channel_burst,
                "per_peer_rate": limits.per_peer_rate,
                "per_peer_burst": limits.per_peer_burst,
                "max_text_length": limits.max_text_length,
            },
            breaker=breaker,
            reconnect_failures=memory.backoff.failures,
            incarnations=memory.incarnations,
            session=(
                None
                if session is None
                else {"provider": session.provider, "keys": sorted(session.data)}
            ),
            dead_letters=tuple(
                {
                    "id": letter.id,
                    "error_type": letter.error_type,
                    "reason": letter.reason,
                    "attempts": letter.attempts,
                    "idempotency_key": letter.message.idempotency_key,
                    "peer": letter.message.peer,
                    "age": trio.current_time() - letter.at,
                }
                for letter in memory.dead_letters.letters()
            ),
            dead_letters_dropped=memory.dead_letters.dropped,
            inbound_pending=len(memory.pending),
        )

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

        Every error is a :class:`~runtime.errors.NodeError`; the send errors
        also derive from the classes of ``actors`` and ``providers`` they
        replace (``except actors.ChannelFailed`` keeps working), with the
        original chained as ``__cause__``.

        Raises:
            NodeDraining: the node is shutting down; or it was, before this
                message could be sent, and kept it for the next start.
            NodeStarting: the node is still starting (its ops listener
                already serves); ask again shortly.
            UnknownChannel: no such channel.
            ChannelUnavailable: the channel is not running or did not connect
                in time.
            ChannelFailed: the channel stopped for good (ban, bad token).
            PermanentSendError: the platform will never take this message
                (``MessageTooLong``, ``BadRecipient``, ...; dead-lettered).
            SendFailed: transient failures outlasted the retries (dead-lettered).
            Overloaded: the node or the channel holds its bound of sends, or
                as many as the node's loop runs within its bound of lateness
                (``[node] max_loop_lag``); nothing was queued: retry after
                ``retry_after`` seconds.
            MailboxFull: the channel's queue is full; slow down.
            AskTimeout: no answer within ``timeout``.
            ChannelCrashed: the channel's actor crashed on this message.
            ValueError: ``timeout`` is not a number of seconds >= 0 (nothing was sent).
            InvalidMessage: ``message`` is no operation, or holds what cannot be
                sent (also ``ValueError``; nothing was sent).
            TypeError: ``channel_id`` is no ``str`` (nothing was sent).
        """
        result = await self._perform(channel_id, message, timeout)
        assert result is not None
        return result

    def outbox(
        self,
        *,
        timeout: float | None = None,
        on_sent: Callable[[Sent], object] | None = None,
    ) -> contextlib.AbstractAsyncContextManager[Outbox]:
        """Many sends in flight from one task, with no task waiting on each.

        ``outbox.send(channel_id, op)`` starts a send (any operation) and
        returns at once; how it ended comes back as a :class:`~runtime.outbox.Sent`
        (what :meth:`perform` would have returned or raised), through
        ``async for sent in outbox`` or, given ``on_sent``, handed to it in
        a task of the outbox's, which takes every outcome that came since it
        last ran in one wake-up (``on_sent`` may send again; what it raises
        is logged). The block ends once every send it started has ended::

            async with node.outbox() as outbox:
                for customer in customers:
                    outbox.send("wa-main", OutboundMessage(...))
                outbox.close()
                async for sent in outbox:
                    if not sent.ok: ...

        Args:
            timeout: seconds for each send, queueing included (default 60).
            on_sent: called with each outcome instead of keeping it for ``async for``.

        ``outbox.send`` raises what refuses a send at once (bad arguments,
        ``NodeDraining``, ``UnknownChannel``, ``Overloaded``, ...: see
        :meth:`Outbox.send`), and nothing was sent. Left under an error,
        the block stops waiting: its sends go on in the node (bounded,
        drained), their outcomes unheard.
        """
        return open_outbox(self, timeout=timeout, on_sent=on_sent)

    async def edit(
        self,
        channel_id: str,
        edit: EditMessage,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> SendResult:
        """Replace the text of a message the channel sent; returns once the platform took it.

        Edits (and every operation below) take the send path: the channel's
        rate limiters, circuit breaker, retries and dead letters, and the
        drain keeps those not done by its deadline.

        Raises:
            Unsupported: the platform cannot edit (WhatsApp); nothing was sent.
            MessageNotFound: the platform no longer has the message (dead-lettered).
            The errors of :meth:`send` otherwise.
        """
        result = await self._perform(channel_id, edit, timeout)
        assert result is not None
        return result

    async def delete(
        self,
        channel_id: str,
        delete: DeleteMessage,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> None:
        """Delete a message.

        Raises:
            Unsupported: the platform cannot delete (WhatsApp); nothing was sent.
            MessageNotFound: the platform no longer has the message (dead-lettered).
            The errors of :meth:`send` otherwise.
        """
        await self._perform(channel_id, delete, timeout)

    async def typing(
        self,
        channel_id: str,
        typing: SendTyping,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> None:
        """Show the peer a typing (chat action) indicator.

        Raises:
            The errors of :meth:`send`.
        """
        await self._perform(channel_id, typing, timeout)

    async def mark_read(
        self,
        channel_id: str,
        read: MarkRead,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> None:
        """Mark an inbound message read (WhatsApp; ``read.typing`` also shows typing).

        Raises:
            Unsupported: the platform has no read marks for bots (Telegram, Discord).
            MessageNotFound: the platform does not know the message (dead-lettered).
            The errors of :meth:`send` otherwise.
        """
        await self._perform(channel_id, read, timeout)

    async def react(
        self,
        channel_id: str,
        react: React,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> None:
        """Set (``emoji``) or remove (``emoji=None``) the bot's reaction to a message.

        Raises:
            MessageNotFound: the platform no longer has the message (dead-lettered).
            The errors of :meth:`send` otherwise.
        """
        await self._perform(channel_id, react, timeout)

    async def perform(
        self,
        channel_id: str,
        op: Operation,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> SendResult | None:
        """Any operation (a message or one of the above), as the ops API sends them.

        Returns:
            The ``SendResult`` of a message or an edit, ``None`` for the others.

        Raises:
            The errors of :meth:`send`, and ``Unsupported`` / ``MessageNotFound``.
        """
        return await self._perform(channel_id, op, timeout)

    def _perform(
        self,
        channel_id: str,
        message: Operation,
        wait: float | None,
        *,
        kept_id: int | None = None,
    ) -> Awaitable[SendResult | None]:
        """The send, for the caller to await at once.

        A bad timeout or message, a node not started or not accepting, is
        raised by this call; the rest as the send is awaited. ``kept_id``:
        the store's id of a kept message this resends (the drain keeps it
        once). Not a coroutine: the caller awaits the send itself, one frame
        fewer on every send in flight.
        """
        timeout = self._checked(channel_id, message, wait)
        return self._route(channel_id, message, timeout, kept_id=kept_id)

    def _checked(self, channel_id: str, message: Operation, wait: float | None) -> float:
        """What every send checks before it goes anywhere: its timeout, in seconds.

        Raises:
            TypeError, ValueError, InvalidMessage: a bad argument.
            NodeStarting: the node is still starting.
        """
        if not isinstance(channel_id, str):  # (before it is shown, looked up or kept)
            raise wrong_argument("channel_id", "a str (a channel's id)", channel_id)
        key = getattr(message, "idempotency_key", None)  # (checked below: message may be anything)
        timeout = DEFAULT_SEND_TIMEOUT if wait is None else wait
        if (
            not isinstance(timeout, _NUMBERS) or isinstance(timeout, bool) or not timeout >= 0
        ):  # NaN, "5" and True too
            raise ValueError(
                f"channel {channel_id!r}, idempotency key {key!r}: timeout must be seconds "
                f">= 0 (math.inf: no limit), not {timeout!r}; nothing was sent"
            )
        problems = json_problems(message)
        if problems:
            # Refused here, before it can be sent, kept or forwarded: JSON carries it
            # everywhere, and one such message would spoil every batch it joined.
            error = InvalidMessage(
                f"channel {channel_id!r}, idempotency key {key!r}: the message can be "
                "neither sent nor kept: "
                + "; ".join(f"{text} @ {path}" for path, text in problems),
                channel_id=channel_id,
                idempotency_key=key if type(key) is str else "",
            )
            error.problems = tuple(problems)
            try:
                raise error
            finally:
                del error  # no cycle through this frame's traceback
        self._check_started()
        return timeout

    def _route(
        self, channel_id: str, message: Operation, timeout: float, *, kept_id: int | None = None
    ) -> Awaitable[SendResult | None]:
        """A checked send (:meth:`_checked`), for the caller to await at once."""
        if self._cluster is not None and self._drain_report is None:
            # Even while draining: the call goes to wherever the channel runs.
            return self._cluster_send(
                channel_id, message, timeout=timeout, keep_refused=kept_id is not None
            )
        self._check_accepting()
        return self._send_here(
            channel_id, message, timeout=timeout, kept_id=kept_id, keep_refused=kept_id is not None
        )

    async def _send_here(
        self,
        channel_id: str,
        message: Operation,
        *,
        timeout: float,  # noqa: ASYNC109
        kept_id: int | None = None,
        keep_refused: bool = False,
    ) -> SendResult | None:
        """:meth:`perform` on a channel that runs on this node.

        A repeat of a recent idempotency key is answered as the first time,
        not done again (the channel remembers its answers; see ``SentResults``);
        the key reused for another message is refused (``KeyReused``).
        ``keep_refused``: a kept message's resend (here, or forwarded from the
        node that read it), whose refusal before sending the channel
        dead-letters (``runtime.resend``), and which the node never sheds for
        its loop's lateness.
        """
        channel = self._channel_ref(channel_id)
        sent = channel.memory.sent
        known = sent.get(message.idempotency_key)
        if known is not None:
            _check_not_reused(channel, channel_id, message, keep_refused)
            return remembered_result(message, known)
        flight_key = (channel_id, message.idempotency_key)
        first = self._in_flight.get(flight_key)
        left = timeout  # of the caller's timeout, once it waited for the first
        if first is not None:
            called = trio.current_time()
            channel, known = await self._after_first(
                channel_id, message, flight_key, timeout, keep_refused
            )
            if known is not None:
                _check_not_reused(channel, channel_id, message, keep_refused)
                return remembered_result(message, known)
            left = max(0.0, timeout - (trio.current_time() - called))
        sends = self._sends
        self._admit(
            channel_id,
            message,
            channel_sends=sends.count(channel_id),
            channel=channel,
            keep_refused=keep_refused,
        )
        began = self._now()
        # No cancel scope: the send's Pending bounds its ask (the tracker's timer stops
        # it at the caller's deadline, the drain once it kept it). No context managers
        # either: each is an object and a bound method on every send while it waits.
        pending = sends.pending(channel_id, message, kept_id=kept_id, deadline=began + left)
        sends.begin(pending)
        stopped = False
        try:
            self._in_flight[flight_key] = pending
            result = await channel.asking(
                message, timeout=math.inf, keep_refused=keep_refused, watch=pending
            )
        except Exception as exc:
            if exc is pending.stopped:
                # Never leaves the node; its traceback would hold this frame,
                # which holds the pending send that holds it (a cycle per send).
                exc.__traceback__ = None
            if pending.cut:
                # The drain cut this send (its channel stopped under it, or the
                # caller's deadline came after the cut): wait, outside the
                # deadline, until the drain has kept the message, then say so.
                await pending.settled.wait()
                # The drain's own stop is no cause to show the caller.
                raise _kept_error(pending) from (None if exc is pending.stopped else exc)
            if exc is pending.stopped:
                stopped = True  # its deadline passed: raised once out of this handler
            else:
                error = send_error(exc, channel_id, message.idempotency_key)
                if error is None:
                    raise
                try:
                    raise error from exc
                finally:
                    del error  # no cycle through this frame's traceback
        finally:
            self._end_send(pending, flight_key)
        if stopped:
            # Raised out here, not in the handler: the stop stays inside the node.
            error = _timed_out(channel, channel_id, message, timeout)
            try:
                raise error
            finally:
                del error  # no cycle through this frame's traceback
        # (The channel remembered the answer: see SendPath._fly.)
        self._time_send(channel, began)
        return result

    def _time_send(self, channel: ChannelRef, began: float) -> None:
        """Count a send done in the node's histograms for its provider (the
        channel's memory holds them)."""
        timings = channel.memory.timings
        if not isinstance(timings, ProviderTimings):
            timings = self._timings.provider(channel.provider_name)
        timings.sent(self._now() - began)

    def _send_soon(
        self,
        channel_id: str,
        message: Operation,
        timeout: float,
        done: Callable[[SendResult | None, BaseException | None], object],
    ) -> bool:
        """Start a checked send (:meth:`_checked`) with no task waiting for it.

        The common path of :class:`~runtime.outbox.Outbox`: a channel of
        this node, a key neither answered recently nor on its way. The
        send is tracked, bounded and drained as :meth:`_send_here`'s, and
        ``done(result, error)`` hears how it ended, as :meth:`_send_here`
        would have returned or raised, in the task that learnt it. A key
        answered already is answered at once, as a repeat is.

        Returns:
            False, having done nothing, where it must go the long way, in a
            task (:meth:`_route`): a node in a cluster, a key on its way.

        Raises (nothing was sent): the errors :meth:`_send_here` raises
        before it asks the channel (``NodeDraining``, ``UnknownChannel``,
        ``KeyReused``, ``Overloaded``), and ``ChannelFailed`` or
        ``MailboxFull`` as the channel refuses it at once.
        """
        if self._cluster is not None and self._drain_report is None:
            return False
        self._check_accepting()
        channel = self._channel_ref(channel_id)
        key = message.idempotency_key
        known = channel.memory.sent.get(key)
        if known is not None:
            _check_not_reused(channel, channel_id, message, False)
            done(remembered_result(message, known), None)
            return True
        flight_key = (channel_id, key)
        first = self._in_flight.get(flight_key)
        if first is not None:  # answered once that one is (_after_first), unless reused
            if operation_print(first.message) != operation_print(message):
                raise _refused_reuse(channel, channel_id, message, False, under_way=True)
            return False
        sends = self._sends
        self._admit(
            channel_id,
            message,
            channel_sends=sends.count(channel_id),
            channel=channel,
            keep_refused=False,
        )
        began = self._now()
        pending = sends.pending(channel_id, message, deadline=began + timeout)
        sends.begin(pending)
        self._in_flight[flight_key] = pending
        answered = functools.partial(self._answered_soon, channel, pending, timeout, began, done)
        try:
            channel.asking_soon(message, answered, watch=pending)
        except Exception as exc:
            self._end_send(pending, flight_key)
            error = send_error(exc, channel_id, key)
            if error is None:
                raise
            try:
                raise error from exc
            finally:
                del error  # no cycle through this frame's traceback
        return True

    def _answered_soon(
        self,
        channel: ChannelRef,
        pending: Pending,
        timeout: float,
        began: float,
        done: Callable[[SendResult | None, BaseException | None], object],
        answer: outcome.Outcome[SendResult | None],
    ) -> None:
        """How a send of :meth:`_send_soon` ended, as :meth:`_send_here` takes it."""
        message = pending.message
        channel_id = pending.channel_id
        flight_key = (channel_id, message.idempotency_key)
        if type(answer) is outcome.Value:
            self._end_send(pending, flight_key)
            self._time_send(channel, began)
            done(answer.value, None)
            return
        assert isinstance(answer, outcome.Error)
        exc = answer.error
        if pending.cut:
            # The drain cut it: told once the drain has kept the message, in a
            # task of the node's (the drain keeps it whether or not anyone listens).
            try:
                self._background(self._kept_soon, pending, flight_key, exc, done)
            except NodeNotRunning:  # (never into the task that learnt it)
                self._end_send(pending, flight_key)
                done(None, _kept_error(pending))
            return
        self._end_send(pending, flight_key)
        error: BaseException | None
        if exc is pending.stopped:
            error = _timed_out(channel, channel_id, message, timeout)
        else:
            error = send_error(exc, channel_id, message.idempotency_key)
            if error is None:
                error = exc  # (no error of the node's: a defect, as it came)
            else:
                error.__cause__ = exc
        done(None, error)

    async def _kept_soon(
        self,
        pending: Pending,
        flight_key: tuple[str, str],
        exc: BaseException,
        done: Callable[[SendResult | None, BaseException | None], object],
    ) -> None:
        """A send of :meth:`_send_soon` the drain cut: done once it is kept."""
        try:
            await pending.settled.wait()
        finally:
            self._end_send(pending, flight_key)
        error = _kept_error(pending)
        error.__cause__ = None if exc is pending.stopped else exc
        done(None, error)

    def _end_send(self, pending: Pending, flight_key: tuple[str, str]) -> None:
        self._sends.end(pending)  # (a second send of the key, waiting for it, goes on)
        if self._in_flight.get(flight_key) is pending:
            del self._in_flight[flight_key]

    def _background(self, fn: Callable[..., Awaitable[object]], *args: Any) -> None:
        """Run ``fn(*args)`` in a task of the node's: a send's own work that
        must go on whoever waits for it (an outbox's sends).

        Raises:
            NodeNotRunning: the node's block is over.
        """
        nursery = self._nursery
        if nursery is None:
            raise NodeNotRunning(f"node {self.node_id!r} is not running")
        try:
            nursery.start_soon(fn, *args)
        except RuntimeError as exc:  # its nursery is closed: the node's block is over
            raise NodeNotRunning(f"node {self.node_id!r} is not running") from exc

    async def _after_first(
        self,
        channel_id: str,
        message: Operation,
        flight_key: tuple[str, str],
        timeout: float,  # noqa: ASYNC109
        keep_refused: bool = False,
    ) -> tuple[ChannelRef, tuple[str, str] | None]:
        """Wait while the same key is on its way already (a caller's retry, a
        forwarded request delivered twice): its answer is this one's too.

        Returns the channel and the key's remembered answer once no send of
        the key is under way: answered, or failed (``None``: this one tries
        on its own). Callers who waited for the same failed send go one after
        another, each waiting for the one before (before, each sent its own
        copy at once). One that runs out of time while the first is still
        out is not sent: a copy would go out beside the first.

        Raises:
            AskTimeout: ``timeout`` passed while the first was still out.
            KeyReused: the send under way is another message (not waited for).
        """
        deadline = trio.current_time() + timeout
        printed = operation_print(message)
        while (first := self._in_flight.get(flight_key)) is not None:
            if operation_print(first.message) != printed:
                raise _refused_reuse(
                    self._channel_ref(channel_id), channel_id, message, keep_refused, under_way=True
                )
            with trio.move_on_at(deadline):
                await first.finished.wait()
            channel = self._channel_ref(channel_id)  # (it may have been restarted meanwhile)
            known = channel.memory.sent.get(message.idempotency_key)
            if known is not None:
                return channel, known
            if not first.finished.is_set():
                raise AskTimeout(
                    f"channel {channel_id!r}, idempotency key {message.idempotency_key!r}: a "
                    f"send of this key is still on its way after {timeout} s; this one was "
                    "not sent beside it (ask again: it is answered once that one is)",
                    channel_id=channel_id,
                    idempotency_key=message.idempotency_key,
                )
        return self._channel_ref(channel_id), None

    def _held(self) -> int:
        """The sends this node holds: sent here (its callers' and those forwarded to
        it), and in a cluster those it forwarded to their channel's owner and awaits."""
        return len(self._sends) + self._forwarding

    def _admit(
        self,
        channel_id: str,
        message: Operation,
        *,
        channel_sends: int,
        channel: ChannelRef | None,
        keep_refused: bool,
    ) -> None:
        """Refuse a send past a bound (``Overloaded``, saying which), and count the refusal.

        ``channel_sends``: the sends of the channel this node holds (those it
        sends, or those it forwards to the channel's owner); ``channel``: the
        channel, ``None`` for one that runs elsewhere (its rate is its
        owner's to know). ``keep_refused``: a kept message's resend (here or
        forwarded), the node's own duty, not new work: a start's connect storm
        must not put it off to the next start, so the loop's limit spares it.
        """
        node = self.config.node
        node_sends = self._held()
        loop_limit = math.inf if keep_refused else self._shedder.limit
        if (
            node_sends < node.max_sends_in_flight
            and channel_sends < node.max_channel_sends
            and node_sends < loop_limit
        ):
            return
        try:
            admit(
                node_id=self.node_id,
                channel_id=channel_id,
                idempotency_key=message.idempotency_key,
                node_sends=node_sends,
                node_limit=node.max_sends_in_flight,
                channel_sends=channel_sends,
                channel_limit=node.max_channel_sends,
                channel_rate=None if channel is None else channel.memory.limits.per_channel_rate,
                loop_limit=loop_limit,
                loop_bound=node.max_loop_lag,
            )
        except Overloaded as refused:
            self._refused[refused.scope] += 1
            raise

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
            TypeError: a filter that is neither a ``str`` nor a collection of
                them (``b"a"``), or a buffer that is no ``int`` (``math.inf``).
            NodeNotRunning: the node's block is over (its subscriptions ended too).
        """
        return self._hub.subscribe(tenant=tenant, channel=channel, kind=kind, buffer=buffer)

    # --- what the ops server reads ------------------------------------------------------

    def statistics(self) -> NodeStatistics:
        """Node-wide figures."""
        configured = started = restarts = 0
        for row in self._table:  # counted off the rows: no snapshot per channel
            if self._is_remote(row):
                continue
            configured += 1
            started += row.start_error is None
            if row.channel is not None and row.memory is not None:
                restarts += max(0, row.memory.incarnations - 1)
        store = self.store.statistics()
        return NodeStatistics(
            node_id=self.node_id,
            started=started,
            configured=configured,
            restarts=restarts,
            draining=self.draining,
            uptime=trio.current_time() - self._started_at,
            store_backend=store.backend,
            store_pending=store.inbound_pending,
            latencies=self._timings.snapshots(),
            sends_in_flight=self._held(),
            sends_limit=int(min(self.config.node.max_sends_in_flight, self._shedder.limit)),
            sends_refused=dict(self._refused),
            loop_lag=self._loop_lag.worst(trio.current_time()),
        )

    def channel_totals(self) -> ChannelTotals:
        """The channels running here, summed per tenant and provider, and counted by state.

        The same figures as summing :meth:`channels`, read straight off each
        channel's memory: a scrape of a large node builds no object per channel.
        """
        width = len(TOTAL_FIELDS)
        sums: dict[tuple[str, str], list[int]] = {}
        states: dict[tuple[str, ChannelStatus | None], int] = {}
        count = 0
        for row in self._table:
            if self._is_remote(row):
                continue
            count += 1
            spec = row.spec
            values = sums.get((spec.tenant, spec.provider))
            if values is None:
                values = sums[spec.tenant, spec.provider] = [0] * width
            memory = row.memory
            if row.channel is None or memory is None:
                status = None if row.start_error else ChannelStatus.STOPPED
            else:
                status = memory.status
                counters = memory.counters
                values[0] += counters["sent"]
                values[1] += counters["send_failures"]
                values[2] += counters["received"]
                values[3] += counters["duplicates"]
                values[4] += counters["reconnects"]
                values[5] += counters["rate_limit_waits"]
                values[6] += max(0, memory.incarnations - 1)
                values[7] += counters["subscriber_drops"]
                values[8] += len(memory.dead_letters)
                values[9] += lowlevel.mailbox_depth(row.channel.ref)
                values[10] += status is ChannelStatus.CONNECTED
            key = (spec.provider, status)
            states[key] = states.get(key, 0) + 1
        return ChannelTotals(
            sums={key: tuple(values) for key, values in sums.items()}, states=states, channels=count
        )

    def _is_remote(self, row: ChannelRow) -> bool:
        """A channel of the cluster that another node runs (see :meth:`_snapshot`)."""
        return row.channel is None and self._cluster is not None and row.start_error is None

    def webhook_targets(self, provider: str) -> Sequence[WebhookTarget]:
        """The channels of ``provider`` (WhatsApp, Telegram) that take webhooks here.

        Those running here (each target reads its channel's live link when
        asked); in a cluster also those that run elsewhere (``remote``: their
        webhooks are carried there). Kept between requests while the table
        does not change: a webhook is never a walk over every channel.
        """
        return self._webhook_index(provider).targets

    def webhook_target(self, provider: str, channel_id: str) -> WebhookTarget | None:
        """The one channel of :meth:`webhook_targets` with ``channel_id`` (``None``: none)."""
        return self._webhook_index(provider).by_id.get(channel_id)

    def webhook_targets_for(self, provider: str, numbers: Collection[str]) -> list[WebhookTarget]:
        """The channels of :meth:`webhook_targets` whose ``phone_number_id`` is in ``numbers``.

        In the order of :meth:`webhook_targets`.
        """
        index = self._webhook_index(provider)
        found = {t.channel_id: t for number in numbers for t in index.by_number.get(number, ())}
        return sorted(found.values(), key=lambda target: index.position[target.channel_id])

    def webhook_links(self, provider: str) -> WebhookLinks:
        """The live links among :meth:`webhook_targets`, as they are now.

        Kept until a channel's link comes or goes (its actor tells the node)
        or the table changes: a WhatsApp post is checked against the app
        secrets of the channels connected here without a walk over them.
        """
        return self._webhook_index(provider).links(self._link_changes.count)

    def _webhook_index(self, provider: str) -> _WebhookIndex:
        generation = self._table.generation
        index = self._webhook_indexes.get(provider)
        if index is None or index.generation != generation:
            here = [
                WebhookTarget(
                    channel_id=row.spec.id,
                    options=self._options_of(row),
                    channel=row.channel,
                    signer=self._webhook_signer(row),
                )
                for row in self._table.running(provider)
            ]
            elsewhere = [
                WebhookTarget(
                    channel_id=row.spec.id,
                    options=self._options_of(row),
                    remote=True,
                    signer=self._webhook_signer(row),
                )
                for row in self._table
                if row.spec.provider == provider and self._is_remote(row)
            ]
            index = self._webhook_indexes[provider] = _WebhookIndex(generation, here + elsewhere)
        return index

    def tree(self) -> ChildSnapshot:
        """The node's supervision tree, for introspection.

        Raises:
            NodeNotRunning: the node's tree is not running.
        """
        if self._root is None:
            raise NodeNotRunning(f"node {self.node_id!r} has no supervision tree running")
        return self._root.snapshot()

    # --- shutdown --------------------------------------------------------------------------

    async def drain(self, deadline: float | None = None) -> DrainReport:
        """Shut down gracefully within ``deadline`` seconds (default ``[node] drain_deadline``).

        Stops taking work, lets accepted sends finish, keeps the ones that
        could not in the store, stops the channels and flushes the store.
        Idempotent: a second call returns the first report (waiting for it
        if the first is still under way).
        """
        if deadline is not None and (
            not isinstance(deadline, int | float) or isinstance(deadline, bool) or not deadline >= 0
        ):  # checked before the node stops taking work; NaN and "5" too
            raise ValueError(
                f"node {self.node_id!r}: a drain's deadline is seconds >= 0 (math.inf: none), "
                f"not {deadline!r}; nothing was stopped"
            )
        while True:
            if self._drain_report is not None:
                return self._drain_report
            if self._ended:
                raise NodeNotRunning(f"node {self.node_id!r} has ended without draining")
            attempt = self._drain_attempt
            if attempt is None:
                break
            # Begun elsewhere (a signal, the admin console): its report, or, if it
            # was cancelled or failed, this call drains.
            await attempt.wait()
        self._drain_attempt = attempt = trio.Event()
        try:
            return await self._drain(deadline)
        finally:
            self._drain_attempt = None
            attempt.set()

    async def _drain(self, deadline: float | None) -> DrainReport:
        self._state = NodeState.DRAINING
        budget = self.config.node.drain_deadline if deadline is None else deadline
        if self._cluster is not None:
            # A planned move of every channel: the others take them over where
            # they stopped, and the sends accepted here follow them.
            started = trio.current_time()
            await self._hand_off(started + budget * HANDOFF_SHARE)
            deadline = max(budget - (trio.current_time() - started), 0.0)
        try:
            self._drain_report = await drain(
                node_id=self.node_id,
                sends=self._sends,
                stop_channels=self._stop_channels,
                checkpoints=self._checkpoints,
                store=self.store,
                deadline=self.config.node.drain_deadline if deadline is None else deadline,
            )
        except Exception:
            # Its store failed it (what it could not keep is in the log), past the
            # channels' stop all the same: their leases go back now, not at expiry.
            if self._cluster is not None:
                with contextlib.suppress(ClusterUnavailable):
                    await self._cluster.leave()
            raise
        if self._cluster is not None:
            await self._cluster.leave()  # the channels are stopped: the leases go back
        self._state = NodeState.DRAINED
        self._drained.set()
        return self._drain_report

    async def wait_drained(self) -> DrainReport:
        """Wait until a drain (started anywhere: a signal, the admin console) is done.

        Raises:
            NodeNotRunning: the node ended without a drain (its block was left
                by an exception, or every drain failed).
        """
        await self._drained.wait()
        if self._drain_report is None:
            raise NodeNotRunning(f"node {self.node_id!r} has ended without draining")
        return self._drain_report

    def _end(self) -> None:
        """The node's block is over: its tree is gone, and nothing waits for it."""
        self._ended = True
        self._state = NodeState.DRAINED
        self._channels = self._root = None
        for row in self._table:  # killed with the tree: stopped, not as last seen
            row.channel = row.child = None
        self._hub.close()  # subscriptions end after what they hold; new ones are refused
        self._drained.set()

    # --- internals ----------------------------------------------------------------------

    async def _restore(
        self,
        spec: ChannelSpec,
        memory: ChannelMemory,
        *,
        carry: ChannelMemory | None,
        revive: bool,
        token: int,
    ) -> None:
        """Put the channel's durable state into its fresh ``memory`` before it starts.

        From ``carry`` (the memory of the incarnation a restart replaces), or
        else from the store's checkpoint. ``revive`` drops a FAILED status.
        """
        offset = clock_offset()
        now = trio.current_time()
        if carry is not None:  # handed over in this process: exact, like a clean stop
            state = export_state(carry, now=now, clock_offset=offset, clean=True)
        else:
            stored = self._preloaded.pop(spec.id, None) or await self.store.load_checkpoint(spec.id)
            if stored is None:
                return
            if stored.owner_token > token:
                raise ChannelFenced(
                    f"channel {spec.id!r}: its checkpoint was written by a newer owner (token "
                    f"{stored.owner_token}, this node's is {token}); another node runs it, "
                    "and this one will not"
                )
            if stored.state is None:
                kept = len(stored.letters)
                log.warning(
                    "channel %s: its checkpoint is ignored and it starts afresh%s: %s",
                    spec.id,
                    f" (its {kept} dead letter(s) kept)" if kept else "",
                    stored.problem,
                    extra={"channel": spec.id},
                )
                if not kept:
                    return
                # Its letters are rows of their own, read whole: the first checkpoint
                # of the fresh state deleted them.
                state = ChannelState(
                    dead_letters=stored.letters,
                    dead_letters_total=max(letter.id for letter in stored.letters),
                )
            else:
                state = stored.state
        if revive:
            state = attrs.evolve(state, failed=None)
        try:
            restore_state(memory, state, now=now, clock_offset=offset)
        except ValueError as exc:
            log.warning(
                "channel %s: its saved limiter state no longer fits its settings and is "
                "ignored (%s); the rest is restored",
                spec.id,
                exc,
                extra={"channel": spec.id},
            )
            restore_state(memory, attrs.evolve(state, limiter=None), now=now, clock_offset=offset)
        if carry is not None:
            # The old table whole: all its answers, not a checkpoint's newest 256,
            # with the prints a checkpoint does not keep (a key reused after a
            # restart is still refused). The old incarnations put no more.
            memory.sent = carry.sent

    def _fenced(self, channel_id: str) -> None:
        """A newer owner wrote the channel's checkpoint: stop running it here."""
        if self._cluster is not None:
            self._cluster.ownership.lease_lost(channel_id)  # its lease is another's now
        elif self._nursery is not None and not self.draining:
            self._nursery.start_soon(self._stop_fenced, channel_id)

    async def _stop_fenced(self, channel_id: str) -> None:
        row = self._table.find(channel_id)
        if row is None or not row.running:
            return
        with contextlib.suppress(NodeError, SupervisorError):
            supervisor = self._channel_supervisor()
            await supervisor.terminate_child(channel_id)
            await supervisor.delete_child(channel_id)
        if row.memory is not None:
            self._checkpoints.detach(row.memory)
        row.channel = row.child = row.memory = None
        row.start_error = "ChannelFenced: a newer owner took the channel over"

    async def _stop_channels(self, end: float) -> tuple[int, int]:
        """Stop every channel by trio time ``end``; kill what has not stopped by then.

        Returns:
            (channels stopped gracefully, channels killed at the deadline).
        """
        root = self._root
        channels = self._channels
        if root is None or channels is None:
            return 0, 0
        running = self._table.running()
        with trio.move_on_at(end) as scope:
            # terminate_child, not stop: the root must not restart the channels.
            await root.terminate_child("channels")
        if not scope.cancelled_caught:
            return len(running), 0
        still = [row for row in running if row.channel is not None and row.channel.ref.alive]
        log.warning(
            "%d channel(s) did not stop by the drain deadline and are killed: %s",
            len(still),
            ", ".join(row.spec.id for row in still),
        )
        channels.ref.kill()
        await channels.ref.wait_terminated()
        for row in still:  # killed: stopped, not listed as last seen (CONNECTED)
            row.channel = row.child = None
        return len(running) - len(still), len(still)

    def _check_not_ended(self) -> None:
        if self._ended:
            raise NodeNotRunning(f"node {self.node_id!r} has ended: its channels are gone")

    def _check_accepting(self) -> None:
        if self.draining:
            raise NodeDraining(f"node {self.node_id!r} is shutting down and takes no new work")

    def _check_started(self) -> None:
        # The ops listener serves while the channels (or the cluster's catalog) are
        # still being set up: a call now would find no channel where one will be.
        if self._state is NodeState.STARTING:
            raise NodeStarting(f"node {self.node_id!r} is starting; ask again shortly")

    def _load_providers(self) -> None:
        """Import every provider the config names before a channel starts.

        Otherwise the first channel of each pays the import and the attrs and
        cattrs code its modules generate (30-60 ms for the websocket
        provider) inside its connect. One that cannot be loaded is left to
        the start of its channels, which reports it for each.
        """
        named = {spec.provider for spec in self.config.channels} | set(self.config.providers)
        for name in sorted(named):
            with contextlib.suppress(Exception):
                self._provider(name)

    def _provider(self, name: str) -> Provider:
        provider = self._providers.get(name)
        if provider is None:
            try:
                cls = load(PROVIDERS, name)
            except KeyError as exc:
                raise UnknownProvider(f"no provider {name!r}: {exc.args[0]}") from exc
            provider = self._providers[name] = cls()
        return provider

    def _settings_of(
        self, spec: ChannelSpec, defaults: ProviderDefaults | None, provider: Provider
    ) -> ChannelSettings:
        """The channel's actor settings; one shared object for all that override nothing."""
        if overrides_settings(spec):
            return channel_settings(spec, defaults, provider.limits, base=self._base_settings)
        settings = self._shared_settings.get(spec.provider)
        if settings is None:
            settings = channel_settings(spec, defaults, provider.limits, base=self._base_settings)
            self._shared_settings[spec.provider] = settings
        return settings

    def _check_limit(self, provider: str) -> None:
        defaults = self.config.providers.get(provider)
        limit = defaults.max_connections if defaults is not None else None
        if limit is None:
            return
        starting = sum(
            1 for claim in self._starting.values() if claim.row.spec.provider == provider
        )
        if len(self._table.running(provider)) + starting >= limit:
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
            raise UnknownProvider(
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

    def _webhook_signer(self, row: ChannelRow) -> ConfiguredSigner | None:
        """A WhatsApp channel's signature check from its config (its app secret), so a
        post is judged before it is read even while the channel has no link here."""
        if row.spec.provider != "whatsapp":
            return None
        try:
            config = self._channel_config(row.spec)
        except NodeError:  # a config its start refuses: its posts are judged as before
            return None
        return configured_signer(row.spec.provider, config)

    def _options_of(self, row: ChannelRow) -> dict[str, Any]:
        defaults = self.config.providers.get(row.spec.provider)
        options = {**(defaults.options if defaults else {}), **row.spec.options}
        if row.spec.emulator and self.emulators is not None:
            options.update(self.emulators.options(row.spec))
        return options

    def _channel_supervisor(self) -> SupervisorRef:
        if self._channels is None:
            raise NodeNotRunning(f"node {self.node_id!r}: the channels supervisor is not running")
        return self._channels

    def _snapshot(self, row: ChannelRow) -> ChannelSnapshot:
        spec = row.spec
        if row.channel is None:
            if self._cluster is not None and row.start_error is None:
                held = self._holders.get(spec.id)
                return ChannelSnapshot(
                    channel_id=spec.id,
                    tenant=spec.tenant,
                    provider=spec.provider,
                    status=ChannelStatus.IDLE,
                    statistics=None,
                    owner=self._remote_owner(spec.id),
                    lease_token=held[1] if held is not None else None,
                    remote=True,
                )
            return ChannelSnapshot(
                channel_id=spec.id,
                tenant=spec.tenant,
                provider=spec.provider,
                status=ChannelStatus.FAILED if row.start_error else ChannelStatus.STOPPED,
                statistics=None,
                start_error=row.start_error,
            )
        stats = row.channel.statistics()
        tenure = row.memory.tenure if row.memory is not None else None
        return ChannelSnapshot(
            channel_id=spec.id,
            tenant=spec.tenant,
            provider=spec.provider,
            status=stats.status,
            statistics=stats,
            mailbox_depth=lowlevel.mailbox_depth(row.channel.ref),
            owner=self.node_id,
            lease_token=tenure.token if tenure is not None else None,
        )

    def _channels_child(self) -> ChildSpec:
        sup = self.config.supervisor
        backoff = RestartBackoff(
            base=sup.restart_backoff.base,
            cap=sup.restart_backoff.cap,
            random_factor=sup.restart_backoff.random_factor,
            reset_after=sup.restart_backoff.reset_after,
        )

        def start() -> Supervisor:
            # Rebuilt from the node's list, so a restarted channels
            # supervisor brings every channel back.
            return Supervisor(
                self._table.child_specs(),
                strategy=Strategy.ONE_FOR_ONE,
                intensity=sup.intensity,
                period=sup.period,
                restart_backoff=backoff,
            )

        start.__name__ = "Supervisor"
        return ChildSpec(id="channels", start=start, type=ChildType.SUPERVISOR, shutdown=INFINITY)

    async def _start_configured(self) -> None:
        wanted = [spec for spec in self.config.channels if spec.enabled]
        results = await self.start_channels(wanted)  # one channel never stops the others
        for spec, result in zip(wanted, results, strict=True):
            if isinstance(result, Exception):
                exc = result
                row = self._table.find(spec.id)
                if row is None:
                    row = ChannelRow(spec=spec, start_error=f"{type(exc).__name__}: {exc}")
                    self._table.put(row)
                log.error(
                    "channel %s did not start: %s",
                    spec.id,
                    row.start_error,
                    extra={"channel": spec.id, "tenant": spec.tenant, "provider": spec.provider},
                )
        failed = [row for row in self._table if row.start_error is not None]
        started = len(wanted) - len(failed)
        reasons = "; ".join(f"{row.spec.id}: {row.start_error}" for row in failed)
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
        """Send again what the previous run kept at its drain (see ``runtime.resend``)."""

        async def send(item: KeptMessage) -> None:
            await self._perform(item.channel_id, item.message, None, kept_id=item.kept_id)

        configured = {spec.id for spec in self.config.channels}  # a disabled one too

        def known(channel_id: str) -> bool:
            return channel_id in configured or channel_id in self._table

        await resend_kept(self.store, send, self._checkpoints.flush, known=known)


def _check_spec(spec: object) -> None:
    """A channel's spec given to the API is a ``ChannelSpec`` (a dict, or a file's
    table, failed deep inside with an ``AttributeError``)."""
    if not isinstance(spec, ChannelSpec):
        raise wrong_argument(
            "spec", "a runtime.config.ChannelSpec (parse_config reads a file's)", spec, secret=True
        )


def _check_channel_id(channel_id: object) -> None:
    """A channel id given to the API is a ``str`` (a list failed deep inside as
    unhashable; a number was looked up and reported as an unknown channel)."""
    if not isinstance(channel_id, str):
        raise wrong_argument("channel_id", "a str (a channel's id)", channel_id)


def _timed_out(
    channel: ChannelRef, channel_id: str, message: Operation, timeout: float
) -> SendError:
    """The error of a send stopped at its caller's deadline (``AskTimeout``,
    saying what the channel waits for), its cause the ask's own timeout."""
    timed_out = channel.ref.ask_timeout(message, timeout)
    error = send_error(timed_out, channel_id, message.idempotency_key)
    assert error is not None  # an AskTimeout always maps
    why = _why_waiting(channel.memory)
    if why:
        error.args = (f"{error}; {why}",)
    error.__cause__ = timed_out
    return error


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
            owner_token=await opened.next_owner_token(),
            emulators=emulators,
            base_settings=channel_defaults,
            providers=providers,
        )
        children: list[ChildSpec] = []
        if emulators is not None:
            for platform in emulators.emulators:
                handle = ServiceHandle(f"{platform} emulator")
                node._emulator_handles[platform] = handle
                emulator = config.emulators[platform]
                serve_emulator = naming_bind_errors(
                    emulators.serve(platform),
                    what=f"the {platform} emulator",
                    host=emulator.host,
                    port=emulator.port,
                    setting=f"emulators.{platform}.port",
                )
                children.append(
                    ChildSpec(
                        id=f"emulator-{platform}",
                        start=ServiceActor.factory(handle, serve_emulator),
                    )
                )
        if config.ops.enabled:
            serve = naming_bind_errors(
                functools.partial(
                    serve_ops,
                    node,
                    host=config.ops.host,
                    port=config.ops.port,
                    api_token=config.ops.api_token,
                    certfile=config.ops.certfile,
                    keyfile=config.ops.keyfile,
                    metrics=config.metrics,
                    redactor=node.redactor,
                ),
                what="ops HTTP",
                host=config.ops.host,
                port=config.ops.port,
                setting="ops.port",
            )
            children.append(ChildSpec(id="ops", start=ServiceActor.factory(node.ops, serve)))
        children.append(node._channels_child())
        # The nursery lives inside the root supervisor's block: cancelling it
        # on the way out must not swallow the root's own "I gave up", which
        # the supervisor raises when its block ends (SupervisorExited).
        try:
            async with (
                open_supervisor(
                    system,
                    children,
                    name=f"node:{config.node.id}",
                    intensity=ROOT_INTENSITY,
                    period=ROOT_PERIOD,
                ) as root,
                trio.open_nursery() as nursery,
                # Inside the nursery: what enters the stack (the cluster and its own
                # tasks) is left before the nursery is, in the reverse order.
                contextlib.AsyncExitStack() as stack,
            ):
                node._nursery = nursery
                node._root = root
                await nursery.start(node._sends.run)  # the sends' deadlines
                await nursery.start(node._loop_lag.run)
                await nursery.start(node._checkpoints.run)
                # Following the channels' states before the first one starts.
                collector = stack.enter_context(CollectorPolicy(enabled=config.node.gc == "tuned"))
                await nursery.start(collector.run, node._hub)
                channels_ref = await root.whereis_child("channels")
                assert channels_ref is not None
                node._channels = SupervisorRef(channels_ref)
                if emulators is not None:
                    emulators.urls.update(node.emulator_urls)
                    if node.ops_url is not None:
                        emulators.set_webhook_base(config.ops.public_url or node.ops_url)
                node._load_providers()
                if config.cluster is None:
                    await node._start_configured()
                else:
                    if config.storage.backend == "sqlite":
                        log.warning(
                            "cluster on SQLite: every node must open this same file (%s); a "
                            "node with a file of its own has its own channel set and its own "
                            "memory of what was sent, and sends again what another node sent",
                            config.storage.path,
                        )
                    node._cluster = await stack.enter_async_context(
                        open_cluster(
                            config.cluster,
                            node_id=config.node.id,
                            store=opened,
                            runner=node,
                            file_specs=config.channels,
                        )
                    )
                    nursery.start_soon(node._watch_cluster)
                node._state = NodeState.READY
                nursery.start_soon(node._report_connected)
                nursery.start_soon(node._resend_kept)
                try:
                    yield node
                except BaseException:
                    # Leaving by an exception (a second signal, a crash): stop at
                    # once, every channel brutally killed with its supervisor.
                    node._state = NodeState.DRAINED
                    root.ref.kill()
                    raise
                else:
                    await node.drain()
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            node._end()  # (once its tasks are gone: none meets a tree half cleared)


@asynccontextmanager
async def _open_store(config: NodeConfig, store: Store | None) -> AsyncIterator[Store]:
    if store is not None:
        yield store
        return
    async with open_store(config.storage) as opened:
        yield opened


def _check_not_reused(
    channel: ChannelRef, channel_id: str, message: Operation, keep_refused: bool
) -> None:
    """Refuse ``message`` when its key's remembered answer is another message's.

    Raises:
        KeyReused: it is.
    """
    if channel.memory.sent.reused(message.idempotency_key, operation_print(message)):
        raise _refused_reuse(channel, channel_id, message, keep_refused)


def _refused_reuse(
    channel: ChannelRef,
    channel_id: str,
    message: Operation,
    keep_refused: bool,
    *,
    under_way: bool = False,
) -> KeyReused:
    """The refusal of ``message``'s reused key; a kept message's resend (``keep_refused``:
    nobody waits for it) becomes a dead letter too, once per key, not lost."""
    error = _key_reused(channel_id, message, under_way=under_way)
    memory = channel.memory
    if keep_refused and memory.dead_letters.add_once(message, error, 0):
        memory.touch()
    return error


def _key_reused(channel_id: str, message: Operation, *, under_way: bool = False) -> KeyReused:
    key = message.idempotency_key
    done = "is being sent" if under_way else "was sent already"
    return KeyReused(
        f"channel {channel_id!r}, idempotency key {key!r}: the key {done} with "
        "another message (another peer, text or content), so its answer is not this "
        "message's; nothing was sent (a retry must repeat the first message: send a new "
        "message with a key of its own)",
        channel_id=channel_id,
        idempotency_key=key,
    )


def _why_waiting(memory: ChannelMemory) -> str:
    """What may have held a send that timed out, read off its channel's memory
    (the kernel's timeout names only the actor's state and mailbox)."""
    reasons = []
    if memory.status is not ChannelStatus.CONNECTED:
        reasons.append(f"the channel is {memory.status.value}")
        if memory.last_error:
            reasons[-1] += f" (last error: {memory.last_error})"
    if memory.breaker_made and not memory.breaker.closed:
        reasons.append(
            "its circuit breaker is open after repeated send failures: sends wait for its "
            "trial calls"
        )
    return "; ".join(reasons)


class _WebhookIndex:
    """A provider's webhook targets, by channel and by WhatsApp number, for one table generation.

    At 1,000 WhatsApp numbers, building every channel's target for each
    webhook (three status webhooks a message) was most of the node's CPU.
    """

    __slots__ = ("_links", "_links_at", "by_id", "by_number", "generation", "position", "targets")

    def __init__(self, generation: int, targets: list[WebhookTarget]) -> None:
        self.generation = generation
        self.targets = targets
        self._links: WebhookLinks | None = None
        self._links_at = -1  # the count of link changes ``_links`` was read at
        self.by_id = {target.channel_id: target for target in targets}
        self.position = {target.channel_id: i for i, target in enumerate(targets)}
        self.by_number: dict[str, list[WebhookTarget]] = {}
        for target in targets:
            number = target.options.get("phone_number_id")
            if number is not None:
                self.by_number.setdefault(str(number), []).append(target)

    def links(self, changes: int) -> WebhookLinks:
        """The targets' live links, read again only when ``changes`` (links that came
        or went, node-wide) moved since they were last read."""
        links = self._links
        if links is None or self._links_at != changes:
            links = self._links = links_of(self.targets)
            self._links_at = changes
        return links


class _LinkChanges:
    """Counts the node's channels' live links coming and going (their ``LinkWatch``)."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    def link_changed(self) -> None:
        self.count += 1


def _all_answered(
    results: list[ChannelSnapshot | Exception | None],
) -> list[ChannelSnapshot | Exception]:
    answered = [result for result in results if result is not None]
    assert len(answered) == len(results)  # every spec got its snapshot or its error
    return answered


class _Claim:
    """A channel's start under way: its row, and an event set once the start ended."""

    __slots__ = ("ended", "row")

    def __init__(self, row: ChannelRow) -> None:
        self.row = row
        self.ended = trio.Event()
