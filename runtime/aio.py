"""The asyncio loop that asyncpg and redis-py run on inside trio, whose stray reports are logged.

Design:
- The PostgreSQL store and the cluster's Redis link run asyncio libraries
  through trio-asyncio; both use :func:`asyncio_loop`, which reuses the loop
  the calling task already runs in (loops do not nest) or opens one for the
  block.
- trio-asyncio's own exception handler raises whatever an asyncio library
  reports through ``loop.call_exception_handler`` into the loop's nursery,
  which ends the node. asyncpg reports there things it then handles itself:
  a connection given back to its pool inside a transaction ("Resetting
  connection with an active transaction", after which it rolls back) and
  the error of a release task nobody awaited ("Task exception was never
  retrieved"). A drain that cut a store call at the wrong moment stopped a
  node this way. So the loop logs such reports (logger
  ``switchboard.asyncio``, credential shapes scrubbed; the log handler
  scrubs the configured secrets too) and the node goes on: every call the
  product makes on the loop still reports its own errors to its caller. A
  loop the caller opened gets this handler too, unless it has one of its
  own (an embedding program's choice is kept).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import trio_asyncio  # type: ignore[import-untyped]

from .telemetry.redaction import scrub_shapes

__all__ = ["asyncio_loop", "log_loop_report"]

log = logging.getLogger("switchboard.asyncio")


def log_loop_report(loop: Any, context: Mapping[str, Any]) -> None:
    """An asyncio library's report to its loop, logged instead of raised (see the module)."""
    message = str(context.get("message") or "an error in the asyncio loop")
    exception = context.get("exception")
    if exception is not None:
        message = f"{message}: {type(exception).__name__}: {exception}"
    log.error(
        "asyncio (asyncpg, redis-py) reported: %s",
        scrub_shapes(message),
        exc_info=exception if isinstance(exception, BaseException) else None,
    )


@asynccontextmanager
async def asyncio_loop() -> AsyncIterator[Any]:
    """The trio-asyncio loop for the block: the caller's, else a new one that logs reports."""
    loop = trio_asyncio.current_loop.get()
    if loop is not None and not loop.is_closed():
        if loop.get_exception_handler() is None:  # an embedding program's, left as it came
            loop.set_exception_handler(log_loop_report)
        yield loop
        return
    async with trio_asyncio.open_loop() as loop:
        loop.set_exception_handler(log_loop_report)
        yield loop
