"""The node: configuration, lifecycle, storage, ops surfaces and the CLI.

Embed a node in a trio program::

    from runtime import load_config, open_node

    async with open_node(load_config("config/local.toml")) as node:
        with node.subscribe(kind="inbound") as events:
            async for event in events:
                await node.send(event.channel_id, reply_to(event.event))

or run one from a file: ``switchboard run config/local.toml``.
"""

from .config import ChannelSpec, NodeConfig, load_config, parse_config
from .drain import DrainReport
from .errors import (
    AskTimeout,
    BadRecipient,
    ChannelCrashed,
    ChannelExists,
    ChannelFailed,
    ChannelFenced,
    ChannelStartFailed,
    ChannelUnavailable,
    ConfigError,
    ConfigProblem,
    ConnectionLimitReached,
    InvalidMessage,
    KeyReused,
    MailboxFull,
    MediaTooLarge,
    MessageNotFound,
    MessageTooLong,
    NodeDraining,
    NodeError,
    NodeNotRunning,
    NodeStarting,
    OutsideWindow,
    Overloaded,
    PermanentSendError,
    SendError,
    SendFailed,
    StartupFailed,
    StoreError,
    UnknownChannel,
    UnknownProvider,
    Unsupported,
)
from .events import EventKind, NodeEvent, Subscription
from .node import Node, NodeState, open_node
from .outbox import Outbox, Sent
from .store import KeptMessage, Store, open_store
from .view import ChannelDetail, ChannelSnapshot, NodeStatistics

__all__ = [
    "AskTimeout",
    "BadRecipient",
    "ChannelCrashed",
    "ChannelDetail",
    "ChannelExists",
    "ChannelFailed",
    "ChannelFenced",
    "ChannelSnapshot",
    "ChannelSpec",
    "ChannelStartFailed",
    "ChannelUnavailable",
    "ConfigError",
    "ConfigProblem",
    "ConnectionLimitReached",
    "DrainReport",
    "EventKind",
    "InvalidMessage",
    "KeptMessage",
    "KeyReused",
    "MailboxFull",
    "MediaTooLarge",
    "MessageNotFound",
    "MessageTooLong",
    "Node",
    "NodeConfig",
    "NodeDraining",
    "NodeError",
    "NodeEvent",
    "NodeNotRunning",
    "NodeStarting",
    "NodeState",
    "NodeStatistics",
    "Outbox",
    "OutsideWindow",
    "Overloaded",
    "PermanentSendError",
    "SendError",
    "SendFailed",
    "Sent",
    "StartupFailed",
    "Store",
    "StoreError",
    "Subscription",
    "UnknownChannel",
    "UnknownProvider",
    "Unsupported",
    "load_config",
    "open_node",
    "open_store",
    "parse_config",
]
