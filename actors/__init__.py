"""The actor kernel: actors, refs, mailboxes, timers and resilience primitives.

Start with :func:`open_actor_system`, subclass :class:`Actor`, and talk to
actors through the :class:`ActorRef` that ``spawn`` returns.
"""

from .actor import Actor, ActorState, Exit, ExitKind
from .backoff import (
    Backoff,
    BackoffPolicy,
    BackoffState,
    DecorrelatedJitterBackoff,
    ExponentialBackoff,
)
from .breaker import BreakerState, BreakerStatistics, CircuitBreaker, CircuitBreakerState
from .channel import (
    ChannelActor,
    ChannelRef,
    ChannelStateChanged,
    InboundSink,
    MemoryInboundSink,
    channel_statistics,
)
from .channel_state import (
    ChannelMemory,
    ChannelSettings,
    ChannelStatistics,
    ChannelStatus,
    OutboundDeadLetter,
)
from .errors import (
    ActorCrashed,
    ActorDead,
    ActorError,
    ActorNotFound,
    AskTimeout,
    ChannelError,
    ChannelFailed,
    ChannelUnavailable,
    CircuitOpen,
    MailboxFull,
    NameTaken,
    NotInActorContext,
    RetriesExhausted,
    SendFailed,
    StartFailed,
)
from .mailbox import MailboxConfig, MailboxStatistics, Overflow
from .ratelimit import (
    GCRA,
    ArrivalCurve,
    CompositeCurve,
    CompositeLimiter,
    CompositeLimiterState,
    GCRAState,
    KeyedLimiter,
    KeyedLimiterState,
)
from .ref import ActorRef, ActorStatistics, ActorStatus
from .system import ActorSystem, DeadLetter, SystemStatistics, open_actor_system
from .timers import Timer

__all__ = [
    "GCRA",
    "Actor",
    "ActorCrashed",
    "ActorDead",
    "ActorError",
    "ActorNotFound",
    "ActorRef",
    "ActorState",
    "ActorStatistics",
    "ActorStatus",
    "ActorSystem",
    "ArrivalCurve",
    "AskTimeout",
    "Backoff",
    "BackoffPolicy",
    "BackoffState",
    "BreakerState",
    "BreakerStatistics",
    "ChannelActor",
    "ChannelError",
    "ChannelFailed",
    "ChannelMemory",
    "ChannelRef",
    "ChannelSettings",
    "ChannelStateChanged",
    "ChannelStatistics",
    "ChannelStatus",
    "ChannelUnavailable",
    "CircuitBreaker",
    "CircuitBreakerState",
    "CircuitOpen",
    "CompositeCurve",
    "CompositeLimiter",
    "CompositeLimiterState",
    "DeadLetter",
    "DecorrelatedJitterBackoff",
    "Exit",
    "ExitKind",
    "ExponentialBackoff",
    "GCRAState",
    "InboundSink",
    "KeyedLimiter",
    "KeyedLimiterState",
    "MailboxConfig",
    "MailboxFull",
    "MailboxStatistics",
    "MemoryInboundSink",
    "NameTaken",
    "NotInActorContext",
    "OutboundDeadLetter",
    "Overflow",
    "RetriesExhausted",
    "SendFailed",
    "StartFailed",
    "SystemStatistics",
    "Timer",
    "channel_statistics",
    "open_actor_system",
]
