"""The node's store: inbound events and unsent outbound messages.

One async interface, :class:`Store`, two backends picked by
``[storage] backend``: ``memory`` (the embedded default, no server) and
``postgres`` (asyncpg, run inside trio through trio-asyncio and confined to
:mod:`runtime.store.postgres`, so nothing else sees asyncio)::

    async with open_store(config.storage) as store:
        await store.save_inbound(events)     # buffered; written in batches
        kept = await store.read_outbound()   # what the last run could not send
        await store.forget_outbound([k.kept_id for k in sent])  # once the platform took them

Failures are :class:`runtime.errors.StoreError`. :mod:`runtime.store.codec`
turns events and messages into JSON-able dicts and back.
"""

from .base import KeptMessage, Store, StoreStatistics, open_store
from .codec import (
    decode_event,
    decode_kept,
    decode_outbound,
    encode_event,
    encode_kept,
    encode_outbound,
)
from .memory import MemoryStore

__all__ = [
    "KeptMessage",
    "MemoryStore",
    "Store",
    "StoreStatistics",
    "decode_event",
    "decode_kept",
    "decode_outbound",
    "encode_event",
    "encode_kept",
    "encode_outbound",
    "open_store",
]
