"""The console's errors: each becomes one JSON-RPC error answer.

::

    ConsoleError               a call refused or failed, with its JSON-RPC code and data
    ├── Refused                outside the token's scope or tenants, or over the rate
    └── ConfirmationRequired   a call on many channels without its dry run's count

The node's own errors (:class:`~runtime.errors.NodeError`) are mapped into
codes in one place, :func:`code_of`.
"""

from __future__ import annotations

from typing import Any

from supervisors import SupervisorError

from ..cluster import ClusterUnavailable
from ..errors import NodeDraining, NodeError, NodeNotRunning, UnknownChannel
from .rpc import ErrorCode

__all__ = ["ConfirmationRequired", "ConsoleError", "Refused", "code_of"]


class ConsoleError(Exception):
    """A call the console answers with an error.

    Attributes:
        code: the JSON-RPC error code.
        data: what goes in the error's ``data``.
    """

    def __init__(self, code: ErrorCode, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.data = data


class Refused(ConsoleError):
    """Outside the token's scope (``forbidden``), tenants (``tenant``), or rate (``rate_limited``).

    Attributes:
        reason: the refusal's label in ``/metrics``.
        shown_as: what the caller is answered instead, where the refusal
            itself would tell too much (another tenant's channel is answered
            as one that does not exist); counted and audited as refused.
    """

    def __init__(
        self,
        code: ErrorCode,
        reason: str,
        message: str,
        data: Any = None,
        *,
        shown_as: NodeError | None = None,
    ) -> None:
        super().__init__(code, message, data)
        self.reason = reason
        self.shown_as = shown_as


class ConfirmationRequired(ConsoleError):
    """A call on many channels: dry run first, then echo the count as ``confirm``."""

    def __init__(self, message: str, count: int) -> None:
        super().__init__(ErrorCode.CONFIRMATION_REQUIRED, message, {"count": count})


def code_of(exc: BaseException) -> ErrorCode:
    """The JSON-RPC code for an error of the node."""
    if isinstance(exc, UnknownChannel):
        return ErrorCode.NOT_FOUND
    if isinstance(exc, NodeDraining | NodeNotRunning | ClusterUnavailable | SupervisorError):
        return ErrorCode.UNAVAILABLE
    if isinstance(exc, NodeError):
        return ErrorCode.NODE_ERROR
    if isinstance(exc, ValueError):  # the node refused a value the params let through
        return ErrorCode.INVALID_PARAMS
    return ErrorCode.INTERNAL_ERROR
