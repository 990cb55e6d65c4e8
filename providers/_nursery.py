"""The nursery that runs one connection's background tasks.

Design: each provider's ``open_connection`` runs its reader, driver or timer
tasks in a trio nursery that lives as long as the ``async with`` block. With
strict exception groups (trio's default), anything leaving that block comes
out wrapped in a one-element ``BaseExceptionGroup``, yet the ``Provider``
contract promises the caller a ``ProviderError`` (or its own exception) that
``except RateLimited:`` can catch. The nursery is an implementation detail,
so :func:`open_connection_nursery` removes exactly the one level of grouping
that it added:

- a lone exception, from the block or from a task, comes out as the very
  object that was raised, its ``__cause__`` and ``__context__`` intact; a
  group raised by the block or a task is such an exception too and is not
  flattened (trio's cancel scope may re-derive it with ``split``);
- ``trio.Cancelled`` and ``GeneratorExit`` are never caught or replaced: a
  lone one comes out bare, like any lone exception, so the cancel scope or
  the async generator machinery that expects it sees it;
- two or more exceptions stay in the nursery's group: picking one would
  hide the others.

The cleanup a provider needs before its tasks are cancelled (shielded
closes, ``nursery.cancel_scope.cancel()``) stays in a ``try``/``finally``
inside the block, so it runs before the nursery waits for its tasks.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any

import trio

from .groups import lone_exception, reraise


def unwrap_single(group: BaseExceptionGroup[Any]) -> BaseException:
    """The one exception directly inside ``group``, or ``group`` if it holds more.

    Only the outer level is removed: a nested group is some task's or the
    caller's own exception and is returned as it is.
    """
    return lone_exception(group, nested=False)


class open_connection_nursery:  # lower case: called like trio.open_nursery()
    """A :func:`trio.open_nursery` whose single exception leaves it unwrapped.

    A class rather than an ``@asynccontextmanager``: every connected channel
    holds one for the connection's life, and a generator-based manager would
    keep a manager object, a suspended generator frame and trio's weak
    reference to the generator besides the nursery (about 600 bytes).

    Yields:
        The nursery for the connection's background tasks.

    Raises:
        BaseException: the lone exception raised by the block or by one of
            the tasks, unwrapped (``trio.Cancelled`` and ``GeneratorExit``
            included).
        BaseExceptionGroup: the nursery's group, when it holds several.
    """

    __slots__ = ("_manager",)

    def __init__(self) -> None:
        self._manager: AbstractAsyncContextManager[trio.Nursery] = trio.open_nursery()

    async def __aenter__(self) -> trio.Nursery:
        return await self._manager.__aenter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        try:
            return bool(await self._manager.__aexit__(exc_type, exc, tb))
        except BaseExceptionGroup as group:
            lone = unwrap_single(group)
            if lone is group:
                raise
        # Raised outside the except clause, as trio's own Nursery.start does,
        # so that it is exactly the exception that was raised.
        reraise(lone)
