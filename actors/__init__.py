"""The actor kernel: actors, refs, mailboxes, timers and resilience primitives.

Start with :func:`open_actor_system`, subclass :class:`Actor`, and talk to
actors through the :class:`ActorRef` that ``spawn`` returns.
"""

from .actor import Actor, ActorState, Exit, ExitKind
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
from .ref import ActorRef, ActorStatistics, ActorStatus
from .system import ActorSystem, DeadLetter, SystemStatistics, open_actor_system
from .timers import Timer

__all__ = [
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
    "AskTimeout",
    "CircuitOpen",
    "DeadLetter",
    "Exit",
    "ExitKind",
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
