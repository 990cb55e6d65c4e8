"""The cluster's channel set: one catalog every node converges to.

Design:
- The set lives in the shared durable store (``channel_catalog``), not in
  Redis, which a restart without persistence empties. A change is written
  there first, then announced on ``<prefix>:catalog`` so every node reloads
  at once; each also reloads on its own every few heartbeats, in case it
  missed the announcement.
- A channel from the deployment file is entered by id only (``{"file":
  true}``): every node runs the same file and takes the spec, secrets
  included, from its own copy, so those secrets never reach the store. A
  channel started at run time through the API is entered whole, because
  the node that will own it may not be the one it was started on: its
  credentials are kept in the store, beside the checkpoints that already
  hold its sessions.
- So only a node whose own file holds a file entry can run it: the catalog
  says which entries are file entries (:attr:`Catalog.from_file`), each
  node publishes its file's channels with its membership
  (``runtime.cluster.membership``), and placement gives a file entry only
  to the members whose file holds it (``runtime.cluster.ownership``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import trio

from ..config.loader import CONVERTER
from ..config.model import ChannelSpec
from ..store import Store
from .redis import ClusterUnavailable, RedisLink

__all__ = ["Catalog"]

log = logging.getLogger("switchboard.cluster")

RELOAD_EVERY: Final = 5  # heartbeats between reloads that no announcement asked for
_FROM_FILE: Final = {"file": True}


class Catalog:
    """The cluster-wide channel set, as one node sees and changes it.

    Args:
        store: the shared durable store.
        link: the cluster's Redis (for the announcements).
        prefix: the cluster's key prefix.
        file_specs: this node's deployment file's channels.
    """

    def __init__(
        self, store: Store, link: RedisLink, *, prefix: str, file_specs: Sequence[ChannelSpec]
    ) -> None:
        self.store = store
        self.link = link
        self.announcements = f"{prefix}:catalog"
        self.file_specs = {spec.id: spec for spec in file_specs if spec.enabled}
        # Replaced at every change, never changed in place (see watch): read-only here.
        self.specs: Mapping[str, ChannelSpec] = {}
        # The entries entered from a deployment file, this node's or another's.
        self.from_file: frozenset[str] = frozenset()
        self._foreign: frozenset[str] = frozenset()  # file entries this node's file lacks
        self._poke = trio.Event()
        self.listening = trio.Event()  # set once the announcements are heard (watch)

    async def publish_file(self) -> None:
        """Enter this node's file channels (by id) into the catalog.

        Raises:
            StoreError: the store could not be written.
        """
        await self.store.catalog_put(dict.fromkeys(self.file_specs, _FROM_FILE), source="file")
        await self._announce()

    async def put(self, spec: ChannelSpec) -> None:
        """Enter a channel started at run time.

        Raises:
            StoreError: the store could not be written.
        """
        entry = _FROM_FILE if spec == self.file_specs.get(spec.id) else CONVERTER.unstructure(spec)
        await self.store.catalog_put({spec.id: entry}, source="api")
        self.specs = {**self.specs, spec.id: spec}  # a new dict: see watch
        from_file = self.from_file - {spec.id}
        self.from_file = from_file | {spec.id} if entry is _FROM_FILE else from_file
        await self._announce()

    async def remove(self, channel_id: str) -> bool:
        """Take a channel out; False if it was not in.

        Raises:
            StoreError: the store could not be written.
        """
        removed = await self.store.catalog_remove(channel_id)
        self.specs = {c: spec for c, spec in self.specs.items() if c != channel_id}  # see watch
        self.from_file -= {channel_id}
        await self._announce()
        return removed

    async def load(self) -> dict[str, ChannelSpec]:
        """The catalog as specs; an entry this node cannot read is skipped, loudly.

        Raises:
            StoreError: the store could not be read.
        """
        entries = await self.store.catalog()
        specs: dict[str, ChannelSpec] = {}
        for channel_id, entry in entries.items():
            spec = self._spec(channel_id, entry)
            if spec is not None:
                specs[channel_id] = spec
        from_file = frozenset(c for c, entry in entries.items() if entry == _FROM_FILE)
        foreign = from_file - self.file_specs.keys()
        for channel_id in sorted(foreign - self._foreign):  # once, not at every reload
            log.warning(
                "cluster: channel %s comes from another node's file, not this one's: it "
                "runs only on the members whose file holds it (every node of a cluster "
                "runs the same file)",
                channel_id,
            )
        self.specs, self.from_file, self._foreign = specs, from_file, foreign
        return specs

    def _spec(self, channel_id: str, entry: Mapping[str, Any]) -> ChannelSpec | None:
        if entry == _FROM_FILE:
            return self.file_specs.get(channel_id)
        try:
            return CONVERTER.structure(entry, ChannelSpec)
        except Exception as exc:
            log.error("cluster: catalog entry %s is not a channel spec: %s", channel_id, exc)
            return None

    async def _announce(self) -> None:
        try:
            await self.link.call("PUBLISH", self.announcements, "changed")
        except ClusterUnavailable as exc:  # the others reload on their own soon
            log.warning("cluster: could not announce a catalog change: %s", exc)

    async def watch(
        self, on_change: Callable[[dict[str, ChannelSpec]], Any], *, interval: float
    ) -> None:
        """Reload on every announcement and every ``RELOAD_EVERY`` intervals; report changes.

        A change is one of the specs this node can run, or of which entries
        are file entries (:attr:`from_file`, read by ``on_change``).

        The last specs reported are kept to compare with: :meth:`put` and
        :meth:`remove` replace :attr:`specs` (as :meth:`load` does), never
        change it in place. Changed in place, the dict kept was changed too:
        this node's own change then equalled the next reload, was not
        reported, and this node's ownership did not hear of it until some
        later change (a channel started here did not start, one stopped here
        kept its lease).
        """
        last: tuple[dict[str, ChannelSpec], frozenset[str]] | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._listen)
            while True:
                try:
                    specs = await self.load()
                except Exception as exc:
                    log.warning("cluster: could not read the channel catalog: %s", exc)
                else:
                    if (specs, self.from_file) != last:
                        last = (specs, self.from_file)
                        on_change(specs)
                with trio.move_on_after(interval * RELOAD_EVERY):
                    await self._poke.wait()
                self._poke = trio.Event()

    async def _listen(self) -> None:
        async for _ in self.link.listen(self.announcements, subscribed=self.listening):
            self._poke.set()
