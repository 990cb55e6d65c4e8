"""Operator controls: rebalancing paused, and channels pinned to a node, cluster-wide in Redis.

Design:
- ``<prefix>:controls:paused`` exists while rebalancing is paused (its value,
  JSON, says who paused it, why and when, on Redis's clock);
  ``<prefix>:controls:pins`` is a hash ``channel -> node``. A change is
  written, then announced on ``<prefix>:controls``; every node reloads at
  the announcement and on its own every few heartbeat intervals (a missed
  announcement costs :data:`RELOAD_EVERY` of them; two commands a reload).
- Ownership applies them (``runtime.cluster.ownership``):
  - paused: no voluntary move. A channel that placement sends elsewhere
    stays where it runs until rebalancing resumes. Taking a channel nobody
    holds (a dead node's, a new one) is not paused: that is availability;
    nor is a drain (an operator's own request) or an operator's move.
  - a pin: the channel's owner is the pinned node while that node is a live
    member (placement as usual while it is not). The node holding the
    channel lets it go at once, by the planned handoff (held sends, final
    checkpoint, release), past the settle and cooldown (the operator asked
    for it now) and through a pause, within the bound on moves in flight.
    Removing the pin gives the channel back to placement, under the usual
    pacing.
- Redis restarted without its data forgets both: the cluster then rebalances
  by placement alone, as if nobody had paused or pinned anything.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs
import trio

from .redis import ClusterUnavailable, RedisLink

__all__ = ["Controls", "OperatorControls"]

log = logging.getLogger("switchboard.cluster")

RELOAD_EVERY: Final = 5  # heartbeat intervals between reloads nobody announced


@attrs.frozen(kw_only=True)
class Controls:
    """The operator controls as Redis holds them.

    Attributes:
        paused: who paused rebalancing, why and when (``by``, ``reason``,
            ``at``: Redis's clock, unix seconds); ``None`` while it runs.
        pins: channels pinned to a node, ``{channel: node}``.
    """

    paused: Mapping[str, Any] | None = None
    pins: Mapping[str, str] = attrs.field(factory=dict)


class OperatorControls:
    """Reads, changes and watches the controls (see the module docstring).

    Args:
        link: the cluster's Redis.
        prefix: the cluster's key prefix.
    """

    def __init__(self, link: RedisLink, *, prefix: str) -> None:
        self.link = link
        self.paused_key = f"{prefix}:controls:paused"
        self.pins_key = f"{prefix}:controls:pins"
        self.announcements = f"{prefix}:controls"
        self._poke = trio.Event()

    async def load(self) -> Controls:
        """The controls now.

        Raises:
            ClusterUnavailable: Redis did not answer.
        """
        paused = await self.link.call("GET", self.paused_key)
        raw = await self.link.call("HGETALL", self.pins_key)
        pins = {_text(k): _text(v) for k, v in _pairs(raw)}
        return Controls(paused=None if paused is None else _loads(_text(paused)), pins=pins)

    async def pause(self, *, by: str, reason: str) -> bool:
        """Pause rebalancing; False if it was paused already (the first pause is kept).

        Raises:
            ClusterUnavailable: Redis did not answer.
        """
        seconds, micros = await self.link.call("TIME")
        at = int(seconds) + int(micros) / 1_000_000
        value = json.dumps({"by": by, "reason": reason, "at": at})
        done = await self.link.call("SET", self.paused_key, value, "NX")
        await self.announce()
        return bool(done)

    async def resume(self) -> bool:
        """Let rebalancing run again; False if it was not paused.

        Raises:
            ClusterUnavailable: Redis did not answer.
        """
        removed = await self.link.call("DEL", self.paused_key)
        await self.announce()
        return bool(int(removed))

    async def pin(self, channel_id: str, node_id: str) -> str | None:
        """Pin a channel to a node; the node it was pinned to before, if any.

        Raises:
            ClusterUnavailable: Redis did not answer.
        """
        before = await self.link.call("HGET", self.pins_key, channel_id)
        await self.link.call("HSET", self.pins_key, channel_id, node_id)
        await self.announce()
        return None if before is None else _text(before)

    async def unpin(self, channel_id: str) -> str | None:
        """Remove a channel's pin; the node it was pinned to (``None``: it was not).

        Raises:
            ClusterUnavailable: Redis did not answer.
        """
        before = await self.link.call("HGET", self.pins_key, channel_id)
        await self.link.call("HDEL", self.pins_key, channel_id)
        await self.announce()
        return None if before is None else _text(before)

    async def announce(self) -> None:
        """Tell every node to reload the controls now (never raises: they reload on their own)."""
        try:
            await self.link.call("PUBLISH", self.announcements, "changed")
        except ClusterUnavailable as exc:  # the others reload on their own soon
            log.warning("cluster: could not announce a change of the operator controls: %s", exc)

    async def watch(self, on_change: Callable[[Controls], Any], *, interval: float) -> None:
        """Reload on every announcement and every ``interval``; report changes, until cancelled."""
        last: Controls | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._listen)
            while True:
                try:
                    controls = await self.load()
                except ClusterUnavailable as exc:
                    log.debug("cluster: could not read the operator controls: %s", exc)
                except Exception as exc:  # what someone wrote into the keys: not a crash
                    log.error("cluster: the operator controls in Redis are unreadable: %s", exc)
                else:
                    if controls != last:
                        last = controls
                        on_change(controls)
                with trio.move_on_after(interval * RELOAD_EVERY):
                    await self._poke.wait()
                self._poke = trio.Event()

    async def _listen(self) -> None:
        async for _ in self.link.listen(self.announcements):
            self._poke.set()


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _pairs(raw: object) -> list[tuple[object, object]]:
    """``HGETALL``'s answer as pairs, whichever shape the client gave."""
    if isinstance(raw, dict):
        return list(raw.items())
    if isinstance(raw, list | tuple):
        return [(raw[i], raw[i + 1]) for i in range(0, len(raw) - 1, 2)]
    return []


def _loads(text: str) -> Mapping[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    return value if isinstance(value, dict) else {"reason": text}
