"""The node's errors.

::

    NodeError
    ├── ConfigError            the deployment file is invalid (every problem, with paths)
    ├── UnknownChannel         no channel with that id on this node
    ├── ChannelExists          a channel with that id is already running
    ├── ConnectionLimitReached a provider's per-node connection limit is full
    ├── NodeDraining           the node is shutting down and takes no new work
    └── StoreError             the store could not read or write

Channel-level failures of a send (``SendFailed``, ``ChannelFailed``,
``MessageTooLong`` ...) come from :mod:`actors` and :mod:`providers`
unchanged: the node adds no layer between a product and its channel.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

__all__ = [
    "ChannelExists",
    "ConfigError",
    "ConfigProblem",
    "ConnectionLimitReached",
    "NodeDraining",
    "NodeError",
    "StoreError",
    "UnknownChannel",
]


class NodeError(Exception):
    """Base class of the node's errors."""


@attrs.frozen
class ConfigProblem:
    """One problem in a deployment file.

    Attributes:
        path: where, as ``channels[3].rate_limit.per_second`` (empty: the file).
        message: what was wrong and what was expected. Never contains a secret.
    """

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.message} @ {self.path}" if self.path else self.message


class ConfigError(NodeError):
    """A deployment file is invalid.

    Attributes:
        source: the file (or ``<string>``).
        problems: every problem found, in file order.
    """

    def __init__(self, source: str, problems: Sequence[ConfigProblem]) -> None:
        self.source = source
        self.problems = list(problems)
        count = len(self.problems)
        lines = [f"{source}: {count} problem{'s' if count != 1 else ''}"]
        lines.extend(f"  {problem}" for problem in self.problems)
        super().__init__("\n".join(lines))


class UnknownChannel(NodeError, KeyError):
    """No channel with that id runs on this node."""

    def __init__(self, channel_id: str) -> None:
        self.channel_id = channel_id
        super().__init__(f"no channel {channel_id!r} on this node")

    def __str__(self) -> str:
        return str(self.args[0])


class ChannelExists(NodeError):
    """A channel with that id is already running; stop it first."""


class ConnectionLimitReached(NodeError):
    """A provider's connection limit on this node is full.

    Attributes:
        provider: the provider.
        limit: the limit.
    """

    def __init__(self, provider: str, limit: int) -> None:
        self.provider = provider
        self.limit = limit
        super().__init__(
            f"{provider}: this node already runs {limit} {provider} channel"
            f"{'s' if limit != 1 else ''}, its limit; raise "
            f"providers.{provider}.max_connections or run the channel on another node"
        )


class NodeDraining(NodeError):
    """The node is shutting down and takes no new work."""


class StoreError(NodeError):
    """The store failed to read or write (the cause is chained)."""
