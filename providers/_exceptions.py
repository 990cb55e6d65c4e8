"""Mapping a lower layer's exceptions into ours, in one place per boundary.

Design: httpcore's ``map_exceptions({trio.TooSlowError: ReadTimeout, ...})``
(``_exceptions.py``), used around each transport call. Each I/O shell keeps
one mapping table (a function of the call's context, because our messages
say which call failed and what to do next) and wraps every transport call
in :class:`map_exceptions` with it, so the classification of httpx, trio,
trio-websocket, wsproto and OS errors into the :mod:`providers.base` tree is
written once per shell and every mapped error is chained to its cause
(``raise X(...) from exc``).

It is a class rather than a ``@contextmanager`` generator: it wraps every
send, and a plain ``__exit__`` costs a fraction of a generator's frame.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, TypeAlias

__all__ = ["ExceptionMap", "map_exceptions"]

ExceptionMap: TypeAlias = Mapping[
    type[Exception] | tuple[type[Exception], ...], Callable[[Any], Exception]
]
"""From an exception class (or a tuple of them) to what makes its replacement."""


class map_exceptions:  # a context manager, named like contextlib.suppress
    """Replace an exception that leaves the block by the mapped one, chained.

    The first entry whose classes match wins, as in a chain of ``except``
    clauses: list subclasses before their bases. An exception that matches
    no entry leaves unchanged, and so does every ``BaseException`` that is
    not an ``Exception`` (``trio.Cancelled``, ``KeyboardInterrupt``).

    Args:
        mapping: exception classes and, for each, a callable that takes the
            caught exception and returns the one to raise in its place.
    """

    __slots__ = ("_mapping",)

    def __init__(self, mapping: ExceptionMap) -> None:
        self._mapping = mapping

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if not isinstance(exc, Exception):
            return
        for kinds, make in self._mapping.items():
            if isinstance(exc, kinds):
                raise make(exc) from exc
