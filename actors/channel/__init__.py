"""Channels: one long-lived platform connection per actor.

One concept per module: ``actor`` (the ChannelActor and its requests),
``connection`` (connect, read, reconnect), ``send`` (the send path and its
pure decision), ``inbound`` (dedupe, publish, hand to the store), ``state``
(what survives a crash) and ``handle`` (the ChannelRef a product holds).
"""

from .actor import ChannelActor, DiscardDeadLetters, ListDeadLetters, ReplayDeadLetters, Send
from .connection import CLOSE_GRACE, CONNECTS_IN_FLIGHT
from .handle import ChannelRef
from .inbound import InboundSink, MemoryInboundSink
from .send import SendAction, SendDecision, decide
from .state import (
    ChannelMemory,
    ChannelSettings,
    ChannelStateChanged,
    ChannelStatistics,
    ChannelStatus,
    DeadLetterQueue,
    OutboundDeadLetter,
    RecentIds,
    channel_statistics,
)
from .tenure import Tenure

__all__ = [
    "CLOSE_GRACE",
    "CONNECTS_IN_FLIGHT",
    "ChannelActor",
    "ChannelMemory",
    "ChannelRef",
    "ChannelSettings",
    "ChannelStateChanged",
    "ChannelStatistics",
    "ChannelStatus",
    "DeadLetterQueue",
    "DiscardDeadLetters",
    "InboundSink",
    "ListDeadLetters",
    "MemoryInboundSink",
    "OutboundDeadLetter",
    "RecentIds",
    "ReplayDeadLetters",
    "Send",
    "SendAction",
    "SendDecision",
    "Tenure",
    "channel_statistics",
    "decide",
]
