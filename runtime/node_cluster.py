"""The node as one of a cluster: the channels the cluster places here, and routing.

Design:
- The cluster (``runtime.cluster``) decides which channels this node runs
  and drives them through this mixin's :class:`~runtime.cluster.ownership.ChannelRunner`
  methods: the highest token the store knows (the lease's floor), start
  inside a tenure (the lease), stop before the lease is released.
- The node's table holds every channel of the cluster's catalog: the ones
  running here, and the others as rows with no channel, shown with the node
  placement puts them on and, as last read from Redis, their lease.
- ``start_channel`` and ``stop_channel`` change the catalog; whichever node
  owns the channel starts or stops it. (Sending to, and operating, a channel
  that runs on another node is the cluster's forwarding, which is not here
  yet: such calls say which node runs it.)
- A channel the platform says is held elsewhere (``Conflict``: Telegram's
  409) is reported to ownership as fenced, stopped without a checkpoint
  (its FAILED must not follow it to its real owner) and released.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any, Final

import trio

from actors import ChannelStatus
from actors.channel import Tenure

from .errors import ChannelUnavailable, NodeError, StoreError
from .table import ChannelRow

if TYPE_CHECKING:
    from .checkpoints import CheckpointWriter
    from .cluster import Cluster
    from .config.model import ChannelSpec, NodeConfig
    from .store import Store
    from .store.durable import StoredCheckpoint
    from .table import ChannelTable
    from .view import ChannelSnapshot

__all__ = ["ClusterMode"]

log = logging.getLogger("switchboard.node")

HOLDERS_BATCH: Final = 1_000  # lease keys read per MGET when listing remote channels


class ClusterMode:
    """What a node does as a member of a cluster (a mixin of :class:`~runtime.node.Node`)."""

    if TYPE_CHECKING:
        config: NodeConfig
        store: Store
        _table: ChannelTable
        _checkpoints: CheckpointWriter
        _cluster: Cluster | None
        _preloaded: dict[str, StoredCheckpoint]
        _holders: dict[str, tuple[str, int]]

        @property
        def node_id(self) -> str: ...

        async def _start(
            self, spec: ChannelSpec, *, tenure: Tenure | None = None
        ) -> ChannelSnapshot: ...

        async def _stop_local(self, row: ChannelRow, *, checkpoint: bool) -> None: ...

    # --- the runner the cluster drives ---------------------------------------------------

    async def floor_token(self, channel_id: str) -> int:
        """The token of the channel's checkpoint (kept for the start that follows)."""
        stored = await self.store.load_checkpoint(channel_id)
        if stored is None:
            self._preloaded.pop(channel_id, None)
            return 0
        self._preloaded[channel_id] = stored
        return stored.owner_token

    async def start_owned(self, channel_id: str, tenure: Tenure) -> None:
        """Run a channel the cluster placed here, inside its lease's tenure."""
        assert self._cluster is not None
        spec = self._cluster.catalog.specs.get(channel_id)
        if spec is None:
            raise ChannelUnavailable(
                f"channel {channel_id!r} is not in the catalog this node read",
                channel_id=channel_id,
            )
        await self._start(spec, tenure=tenure)

    async def stop_owned(self, channel_id: str) -> None:
        """Stop a channel the cluster moves away (checkpoint written, unless fenced)."""
        assert self._cluster is not None
        row = self._table.find(channel_id)
        if row is None or not row.running:
            return
        fenced = channel_id in self._cluster.ownership.fenced
        await self._stop_local(row, checkpoint=not fenced)
        self._table.put(ChannelRow(spec=row.spec))  # shown as running elsewhere

    def catalog_changed(self, channel_ids: frozenset[str]) -> None:
        """Show every channel of the catalog; forget the ones taken out."""
        assert self._cluster is not None
        specs = self._cluster.catalog.specs
        for channel_id in channel_ids:
            if channel_id not in self._table and channel_id in specs:
                self._table.put(ChannelRow(spec=specs[channel_id]))
        for row in list(self._table):
            if row.spec.id not in channel_ids and not row.running:
                self._table.remove(row.spec.id)

    # --- what the node does differently in a cluster ------------------------------------

    async def _cluster_start(self, spec: ChannelSpec) -> None:
        assert self._cluster is not None
        await self._cluster.catalog.put(spec)
        if spec.id not in self._table:
            self._table.put(ChannelRow(spec=spec))

    async def _cluster_stop(self, channel_id: str) -> None:
        assert self._cluster is not None
        await self._cluster.catalog.remove(channel_id)
        row = self._table.find(channel_id)
        if row is not None and row.running:
            await self._stop_local(row, checkpoint=True)
        self._table.remove(channel_id)

    def _remote_owner(self, channel_id: str) -> str | None:
        """Where a channel that does not run here runs (its lease, else its placement)."""
        held = self._holders.get(channel_id)
        if held is not None:
            return held[0]
        return self._cluster.owner(channel_id) if self._cluster is not None else None

    def _not_here(self, channel_id: str) -> ChannelUnavailable:
        owner = self._remote_owner(channel_id)
        return ChannelUnavailable(
            f"channel {channel_id!r} runs on node {owner!r}, not on {self.node_id!r}; "
            "send through that node",
            channel_id=channel_id,
        )

    async def _watch_cluster(self) -> None:
        """Fence channels the platform says are held elsewhere; keep lease holders fresh."""
        assert self._cluster is not None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_conflicts)
            while True:
                await self._refresh_holders()
                await trio.sleep(self._cluster.config.lease_ttl / 3)

    async def _refresh_holders(self) -> None:
        assert self._cluster is not None
        remote = [row.spec.id for row in self._table if not row.running]
        found: dict[str, tuple[str, int]] = {}
        try:
            for start in range(0, len(remote), HOLDERS_BATCH):
                found.update(await self._cluster.holders(remote[start : start + HOLDERS_BATCH]))
        except NodeError as exc:
            log.debug("cluster: could not read the lease holders: %s", exc)
            return
        self._holders = found

    async def _watch_conflicts(self) -> None:
        assert self._cluster is not None
        with self.subscribe(kind="state") as changes:  # type: ignore[attr-defined]
            async for change in changes:
                event: Any = change.event
                if event.status is ChannelStatus.FAILED and "Conflict" in (event.reason or ""):
                    log.error(
                        "cluster: the platform says channel %s is held elsewhere: this node "
                        "was fenced; it lets the channel go",
                        change.channel_id,
                        extra={"channel": change.channel_id},
                    )
                    with contextlib.suppress(StoreError):
                        self._cluster.ownership.mark_fenced(change.channel_id)
