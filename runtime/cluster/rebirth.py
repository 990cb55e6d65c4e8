"""Rebirth: a Redis that lost its data must not hand out leases that may still be held.

Design:
- A lease's safety rests on Redis remembering it for its TTL: the holder's
  connection runs until its last renewal + TTL - margin on its own clock.
  A Redis restarted without persistence (or failed over to a replica that
  missed the last writes) forgets every lease at once, while their holders
  still run their connections, and a frozen holder cannot even notice.
- So ``<prefix>:alive`` (no expiry) marks a Redis that has served this
  cluster. A script that finds it missing sets it; if the caller had known
  the cluster before (a node that had a view, a renewal, a channel with a
  checkpoint in the store), Redis was reborn, and ``<prefix>:reborn`` is set
  for one lease TTL: the quarantine. While it lasts no lease is acquired:
  every lease granted before the rebirth has run out on its holder's clock
  by the time it ends.
- During the quarantine a holder whose tenure is still valid re-asserts its
  lease at its next renewal (same node, same token; the token counter is
  raised to it), so a live node keeps its connections across a Redis
  restart. Only one node can have a valid tenure for a channel, so only the
  rightful holder can re-assert.
- A cluster whose Redis is new (a first start) has no node that knew it:
  no quarantine. A process that starts knows the cluster if the shared
  store holds its channels' checkpoints (``runtime.cluster.ran_before``):
  the first to reach a reborn Redis is often a node just started (the
  others' next calls come a heartbeat or a renewal later), and its first
  heartbeat, had it known nothing, marked the Redis as new, so nobody saw
  the rebirth and it took channels whose holders still ran them.
"""

from __future__ import annotations

from typing import Final

__all__ = ["LUA", "keys"]

# reborn(alive_key, reborn_key, known, quarantine_ms) -> ms of quarantine left (0: none)
LUA: Final = """
local function reborn(alive_key, reborn_key, known, quarantine_ms)
  if redis.call('EXISTS', alive_key) == 0 then
    redis.call('SET', alive_key, '1')
    if known and tonumber(quarantine_ms) > 0 then
      redis.call('SET', reborn_key, '1', 'PX', quarantine_ms)
    end
  end
  local left = redis.call('PTTL', reborn_key)
  if left < 0 then return 0 end
  return left
end
"""


def keys(prefix: str) -> list[str]:
    """The two keys the scripts check: ``alive`` and ``reborn``."""
    return [f"{prefix}:alive", f"{prefix}:reborn"]
