"""The cluster: nodes sharing channels through Redis, below the node.

One concept per module: ``redis`` (the asyncio client behind trio-asyncio,
confined there), ``membership`` (who is alive, on Redis's clock, and
which file channels each can run), ``placement`` (pure: members → owner,
over the members able to run the channel), ``leases`` (who may connect, fenced
by tokens), ``rebirth`` (a Redis that lost its data), ``ownership`` (which
channels this node runs), ``catalog`` (the cluster-wide channel set),
``forwarding`` (calls for channels owned elsewhere, over Redis Streams),
``controls`` (an operator's pause of rebalancing and pins, cluster-wide).
Nothing here imports the node: it runs the channels through a
:class:`~runtime.cluster.ownership.ChannelRunner` and answers forwarded
calls through a :class:`~runtime.cluster.forwarding.Handler`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Protocol

import attrs
import trio

from ..config.model import ChannelSpec, ClusterConfig
from ..store import Store
from . import rebirth
from .catalog import Catalog
from .controls import Controls, OperatorControls
from .forwarding import Forwarding, Handler
from .leases import Leases
from .membership import Membership, View
from .ownership import ChannelRunner, Ownership
from .placement import HashRing
from .rebalance import Pacing
from .redis import ClusterUnavailable, RedisLink, open_redis
from .survey import ClusterSurvey, LeaseView, MemberView, survey

log = logging.getLogger("switchboard.cluster")


class Runner(ChannelRunner, Handler, Protocol):
    """What the cluster asks of the node: run channels, answer forwarded calls."""


__all__ = [
    "Cluster",
    "ClusterSurvey",
    "ClusterUnavailable",
    "Controls",
    "HashRing",
    "LeaseHolder",
    "LeaseView",
    "MemberView",
    "View",
    "open_cluster",
]


@attrs.frozen(kw_only=True)
class LeaseHolder:
    """Who holds one channel's lease now, and whether that node is alive.

    Attributes:
        channel_id: the channel.
        holder: the node holding it (``None``: nobody).
        token: its fencing token.
        value: the lease as Redis holds it (``"<node>|<token>"``).
        expires_in: seconds left on it unless renewed.
        alive: the holder is a live member (heartbeating within its timeout).
        heartbeat_age: seconds since the holder's last heartbeat (``None``:
            not a member at all).
    """

    channel_id: str
    holder: str | None
    token: int | None
    value: str | None
    expires_in: float | None
    alive: bool
    heartbeat_age: float | None


class Cluster:
    """This node's part in the cluster (see :func:`open_cluster`)."""

    def __init__(
        self,
        config: ClusterConfig,
        *,
        node_id: str,
        link: RedisLink,
        membership: Membership,
        leases: Leases,
        ownership: Ownership,
        catalog: Catalog,
        forwarding: Forwarding,
        controls: OperatorControls,
    ) -> None:
        self.config = config
        self.controls = controls
        self.forwarding = forwarding
        self.node_id = node_id
        self.link = link
        self.membership = membership
        self.leases = leases
        self.ownership = ownership
        self.catalog = catalog

    def __repr__(self) -> str:
        return f"<Cluster {self.node_id} {self.membership!r} {self.ownership!r}>"

    @property
    def view(self) -> View | None:
        """The members as the last heartbeat saw them."""
        return self.membership.view

    def owner(self, channel_id: str) -> str | None:
        """The node that should own ``channel_id`` (its pin or placement; the lease may lag)."""
        return self.ownership.owner(channel_id)

    async def holders(self, channel_ids: Sequence[str]) -> dict[str, tuple[str, int]]:
        """Who holds these channels' leases now: ``{channel: (node, token)}``.

        Raises:
            ClusterUnavailable: Redis did not answer.
        """
        return await self.leases.holders(channel_ids)

    async def survey(self, *, handing_off: Sequence[str] = ()) -> ClusterSurvey:
        """Members, placement, leases and moves as Redis holds them now.

        Raises:
            ClusterUnavailable: Redis did not answer.
        """
        ownership = self.ownership
        # Every channel this node knows: the ones it can run, and the file
        # entries of other nodes' files (placed on those, or nowhere).
        placement = {
            channel_id: ownership.owner(channel_id)
            for channel_id in ownership.catalog | ownership.from_file
        }
        members, leases, quarantine = await survey(
            self.link,
            leases=self.leases,
            members_key=self.membership.members_key,
            member_timeout=self.config.member_timeout,
            reborn_key=rebirth.keys(self.config.key_prefix)[1],
            placement=placement,
        )
        controls = await self.controls.load()
        view = self.membership.view
        now = trio.current_time()
        return ClusterSurvey(
            node_id=self.node_id,
            epoch=view.epoch if view is not None else 0,
            members=tuple(members),
            leases=tuple(leases),
            handing_off=tuple(sorted(handing_off)),
            waiting_for={
                channel_id: max(at - now, 0.0)
                for channel_id, at in sorted(ownership.waiting().items())
            },
            quarantine=quarantine,
            paused=controls.paused,
            pins=dict(sorted(controls.pins.items())),
        )

    async def lease_holder(self, channel_id: str) -> LeaseHolder:
        """Who holds the channel's lease now (Redis's view), and whether it is alive.

        Raises:
            ClusterUnavailable: Redis did not answer.
        """
        link = self.link
        raw = await link.call("GET", self.leases.lease_key(channel_id))
        left_ms = int(await link.call("PTTL", self.leases.lease_key(channel_id)))
        if raw is None:
            return LeaseHolder(
                channel_id=channel_id,
                holder=None,
                token=None,
                value=None,
                expires_in=None,
                alive=False,
                heartbeat_age=None,
            )
        value = raw.decode() if isinstance(raw, bytes) else str(raw)
        holder, _, token = value.rpartition("|")
        seconds, micros = await link.call("TIME")
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        deadline = await link.call("ZSCORE", self.membership.members_key, holder)
        timeout_ms = self.config.member_timeout * 1000
        age = None if deadline is None else max(now_ms - (float(deadline) - timeout_ms), 0) / 1000
        return LeaseHolder(
            channel_id=channel_id,
            holder=holder,
            token=int(token) if token.isascii() and token.isdigit() else None,
            value=value,
            expires_in=left_ms / 1000 if left_ms >= 0 else None,
            alive=deadline is not None and float(deadline) > now_ms,
            heartbeat_age=age,
        )

    async def force_release(self, seen: LeaseHolder, *, at_once: bool) -> float | None:
        """Release a lease by force, if it is still as ``seen`` (``Leases.force_release``).

        Args:
            seen: the lease as the operator saw it.
            at_once: delete and announce it, so the next owner takes it now
                with a higher token: only for a holder the operator knows is
                gone (a node cut off from Redis keeps its connection until
                its lease would run out). Otherwise the lease is left as a
                tombstone until then: the holder drops the connection at its
                next renewal, and nobody connects before its deadline.

        Returns:
            ``None``: the lease changed meanwhile; else seconds until it is free.

        Raises:
            ClusterUnavailable: Redis did not answer.
        """
        if seen.value is None:
            return None
        return await self.leases.force_release(seen.channel_id, seen.value, keep=not at_once)

    async def leave(self) -> None:
        """Give every lease back and leave (the node stopped its channels: a drain)."""
        self.ownership.frozen = True
        await self.ownership.release_all()
        with contextlib.suppress(ClusterUnavailable):  # else: declared dead after member_timeout
            await self.membership.leave()


async def ran_before(store: Store) -> bool:
    """Whether the cluster's channels ran under leases before (checkpoints in the store).

    The catalog's channels are looked at until one has such a checkpoint: a
    cluster that ran has them for nearly all, one that starts for the first
    time for none (so a first start is no rebirth, and costs no
    quarantine). Every channel may be read (a first start, once): the first
    few may be channels just added, with none yet (a sample of eight sorted
    ids missed a cluster that had run). Asked only of a Redis that does not
    know the cluster (see :func:`open_cluster`).

    Raises:
        StoreError: the store could not be read.
    """
    for channel_id in sorted(await store.catalog()):
        stored = await store.load_checkpoint(channel_id)
        if stored is not None and stored.owner_token > 0:
            return True
    return False


@asynccontextmanager
async def open_cluster(
    config: ClusterConfig,
    *,
    node_id: str,
    store: Store,
    runner: Runner,
    file_specs: Sequence[ChannelSpec],
) -> AsyncIterator[Cluster]:
    """Join the cluster for the block; its tasks run inside it.

    The node is a member once this returns, its file's channels are in the
    catalog, and ownership starts the channels placed here as their leases
    come free. Leave with :meth:`Cluster.leave` before the block ends (a
    drain); leaving the block without it is a crash as the others see it.

    Raises:
        ClusterUnavailable: Redis cannot be reached, or the first heartbeat failed.
        StoreError: the catalog could not be written.
    """
    # A Redis call that takes longer than a renewal interval has failed: the
    # tenures' deadlines (not this timeout) are what keep the leases safe.
    timeout = config.lease_ttl / 3
    async with open_redis(config.redis_url, timeout=timeout) as link:
        prefix = config.key_prefix
        membership = Membership(
            link,
            prefix=prefix,
            node_id=node_id,
            heartbeat_interval=config.heartbeat_interval,
            member_timeout=config.member_timeout,
            quarantine=config.lease_ttl,
            files=[spec.id for spec in file_specs if spec.enabled],
        )
        leases = Leases(link, prefix=prefix, node_id=node_id, ttl=config.lease_ttl)
        ownership = Ownership(
            node_id=node_id,
            leases=leases,
            runner=runner,
            vnodes=config.vnodes,
            renew_batch=config.renew_batch,
            pacing=Pacing(
                settle=config.settle_delay, cooldown=config.move_cooldown, moves=config.max_moves
            ),
        )
        catalog = Catalog(store, link, prefix=prefix, file_specs=file_specs)
        forwarding = Forwarding(
            link, prefix=prefix, node_id=node_id, handler=runner, block=timeout / 2
        )
        controls = OperatorControls(link, prefix=prefix)
        cluster = Cluster(
            config,
            node_id=node_id,
            link=link,
            membership=membership,
            leases=leases,
            ownership=ownership,
            catalog=catalog,
            forwarding=forwarding,
            controls=controls,
        )
        await catalog.publish_file()
        if not await link.call("EXISTS", rebirth.keys(prefix)[0]) and await ran_before(store):
            # A Redis without the cluster's marker, and a store that ran it: reborn.
            membership.known = leases.known = True
        first = await controls.load()  # a pause or pins hold from the first reconcile on
        ownership.set_controls(paused=first.paused is not None, pins=first.pins)
        async with trio.open_nursery() as nursery:
            await nursery.start(forwarding.run)

            def view_changed(view: View) -> None:
                if view.members != ownership.ring.members:
                    log.info(
                        "cluster: members now %s (epoch %d)", ", ".join(view.members), view.epoch
                    )
                ownership.set_members(view.members, view.files)

            await nursery.start(membership.run, view_changed)

            def catalog_changed(specs: dict[str, ChannelSpec]) -> None:
                runner.catalog_changed(frozenset(specs))
                ownership.set_catalog(specs, catalog.from_file)

            watch = functools.partial(
                catalog.watch, catalog_changed, interval=config.heartbeat_interval
            )
            nursery.start_soon(watch)

            def controls_changed(found: Controls) -> None:
                paused = found.paused is not None
                if paused == ownership.rebalancer.paused and found.pins == ownership.pins:
                    return
                log.info(
                    "cluster: rebalancing %s; %d channel(s) pinned",
                    "paused" if paused else "runs",
                    len(found.pins),
                )
                ownership.set_controls(paused=paused, pins=found.pins)

            nursery.start_soon(
                functools.partial(
                    controls.watch, controls_changed, interval=config.heartbeat_interval
                )
            )
            await nursery.start(ownership.run)
            try:
                yield cluster
            finally:
                nursery.cancel_scope.cancel()
