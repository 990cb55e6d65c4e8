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
from .errors import (
    ActorCrashed,
    ActorDead,
    ActorError,
    ActorNotFound,
    AskTimeout,
    CircuitOpen,
    MailboxFull,
    NameTaken,
    NotInActorContext,
    RetriesExhausted,
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
    "KeyedLimiter",
    "KeyedLimiterState",
    "MailboxConfig",
    "MailboxFull",
    "MailboxStatistics",
    "NameTaken",
    "NotInActorContext",
    "Overflow",
    "RetriesExhausted",
    "StartFailed",
    "SystemStatistics",
    "Timer",
    "open_actor_system",
]
