"""Errors raised by the actor kernel and its resilience primitives.

Every error the ``actors`` package raises derives from :class:`ActorError`::

    ActorError
    ├── MailboxFull          the target's bounded mailbox had no room
    ├── AskTimeout           no reply arrived within the ask's deadline
    ├── ActorDead            the target stopped before it could take or answer
    │                        the message (asks queued at its death get this too)
    ├── ActorCrashed         the target raised while handling this very message
    ├── NameTaken            a registry name is already held by a live actor
    ├── ActorNotFound        no live actor holds that registry name
    ├── StartFailed          on_start raised; the actor never ran
    ├── NotInActorContext    an actor-only operation was called from outside one
    ├── RetriesExhausted     a backoff gave up after its maximum attempts
    ├── CircuitOpen          a circuit breaker refused the call
    └── ChannelError         a channel could not take or deliver a message
        ├── ChannelFailed        the channel stopped for good (fatal platform error)
        ├── ChannelUnavailable   it did not (re)connect within the send's wait
        └── SendFailed           transient failures outlasted the retries
                                 (the message is in the dead-letter queue)

Permanent platform refusals (bad recipient, too long, outside the 24-hour
window) reach the caller as the provider's own ``PermanentSendError``.

"You stopped it" and "it broke" are different things here: ``ActorDead``
carries the exit reason, so a caller can tell a clean shutdown from a crash.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ActorCrashed",
    "ActorDead",
    "ActorError",
    "ActorNotFound",
    "AskTimeout",
    "ChannelError",
    "ChannelFailed",
    "ChannelUnavailable",
    "CircuitOpen",
    "KeyReused",
    "MailboxFull",
    "NameTaken",
    "NotInActorContext",
    "RetriesExhausted",
    "SendFailed",
    "StartFailed",
]


class ActorError(Exception):
    """Base class of every error raised by the ``actors`` package."""


class MailboxFull(ActorError):
    """The target's mailbox is at capacity and its overflow policy refused to wait.

    Attributes:
        actor: ``repr`` of the target actor.
        capacity: the mailbox capacity that was reached.
    """

    def __init__(self, message: str, *, actor: str = "", capacity: int = 0) -> None:
        super().__init__(message)
        self.actor = actor
        self.capacity = capacity


class AskTimeout(ActorError):
    """An ``ask`` got no reply before its deadline.

    The message may still be processed later; its reply is then discarded.
    """


class ActorDead(ActorError):
    """The target actor is not running and will never answer this message.

    Attributes:
        reason: the exit reason of the target (an ``ExitReason`` or the
            exception that killed it), or ``None`` if it never existed.
    """

    def __init__(self, message: str, *, reason: Any = None) -> None:
        super().__init__(message)
        self.reason = reason


class ActorCrashed(ActorError):
    """The target raised while handling the message this ``ask`` sent.

    The original exception is chained as ``__cause__``. The actor itself is
    now in its supervisor's hands (restarted, or stopped).
    """


class NameTaken(ActorError):
    """A live actor already holds this registry name."""


class ActorNotFound(ActorError):
    """No live actor holds this registry name."""


class NotInActorContext(ActorError):
    """An operation that only makes sense inside an actor was called outside one."""


class RetriesExhausted(ActorError):
    """A backoff reached its maximum number of attempts.

    Attributes:
        attempts: how many failures had been recorded.
    """

    def __init__(self, message: str, *, attempts: int = 0) -> None:
        super().__init__(message)
        self.attempts = attempts


class CircuitOpen(ActorError):
    """A circuit breaker is open and refuses calls until ``retry_at``.

    Attributes:
        retry_at: the clock time at which the breaker lets a trial call through.
    """

    def __init__(self, message: str, *, retry_at: float = 0.0) -> None:
        super().__init__(message)
        self.retry_at = retry_at


class StartFailed(ActorError):
    """An actor's ``on_start`` raised; the actor never ran.

    The original exception is chained as ``__cause__``.
    """


class ChannelError(ActorError):
    """A channel could not take or deliver a message.

    Attributes:
        channel_id: the channel.
    """

    def __init__(self, message: str, *, channel_id: str = "") -> None:
        super().__init__(message)
        self.channel_id = channel_id


class ChannelFailed(ChannelError):
    """The channel stopped for good after a fatal platform error (chained).

    ``dead_lettered``: the message whose send failed the channel is in its
    dead-letter queue (a send refused because the channel had failed
    before is not).
    """

    dead_lettered: bool = False


class ChannelUnavailable(ChannelError):
    """The channel was not connected, and did not connect within the send's wait."""


class SendFailed(ChannelError):
    """Transient failures outlasted the send attempts; the message was dead-lettered."""


class KeyReused(ChannelError, ValueError):
    """The message's idempotency key was sent already, with another message
    (another peer, text or media): its answer is not this message's, and
    sending this one under that key would break what the key guarantees.
    Nothing was sent; send it with a key of its own."""
