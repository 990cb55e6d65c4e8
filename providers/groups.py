"""Exception groups at API boundaries: one helper for every layer.

Design: trio's nurseries wrap whatever leaves them in a ``BaseExceptionGroup``
(strict groups are trio's default), yet an API that runs a nursery inside
promises its caller the error it documents: a ``ProviderError`` from a
connection, a ``StoreError`` from a store, the crash of an actor's handler.
The nursery is an implementation detail, so the layer that added the
grouping removes it, and nothing else:

- :func:`lone_exception` finds the single real error inside the wrapping;
- :func:`reraise` raises it exactly as it was first raised (its
  ``__cause__`` and ``__context__`` intact), not chained to the group;
- :func:`ungrouped` does both for an async context manager's block.

Two or more errors stay a group: picking one would hide the others.
``trio.Cancelled`` and ``GeneratorExit`` are ordinary leaves here, so a lone
one comes out bare for the cancel scope or generator machinery that expects
it. This module sits at the bottom of the import graph (``providers``), so
the kernel, the providers and the node share it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import NoReturn, TypeVar

__all__ = ["lone_exception", "reraise", "ungrouped"]

T = TypeVar("T")


def lone_exception(exc: BaseException, *, nested: bool = True) -> BaseException:
    """The single exception inside one-element groups, or ``exc`` itself.

    Args:
        exc: an exception, possibly a group.
        nested: remove every level of one-element grouping (a nursery inside a
            nursery); with ``False`` only the outer level, because a nested
            group is then some task's own exception.

    Returns:
        The lone leaf, or the first group on the way that holds several
        exceptions, or ``exc`` when it is no group.
    """
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
        if not nested:
            break
    return exc


def reraise(exc: BaseException) -> NoReturn:
    """Raise ``exc`` as it was raised before, its ``__context__`` restored.

    Call it *outside* the ``except`` clause that caught the group: raising
    inside one would chain ``exc`` to the group (Python sets ``__context__``
    to the exception being handled).
    """
    context = exc.__context__
    try:
        raise exc
    finally:
        exc.__context__ = context
        del exc, context


@asynccontextmanager
async def ungrouped(manager: AbstractAsyncContextManager[T]) -> AsyncIterator[T]:
    """Enter ``manager``; a lone exception leaving the block comes out as it was raised.

    For an API whose context manager runs a nursery inside: the caller gets
    the documented error, not the nursery's one-element group.
    """
    lone: BaseException | None = None
    try:
        async with manager as value:
            yield value
    except BaseExceptionGroup as group:
        lone = lone_exception(group)
        if lone is group:
            raise
    if lone is not None:
        # Raised outside the except clause, so it is exactly the exception
        # that was raised, not chained to the group.
        reraise(lone)
