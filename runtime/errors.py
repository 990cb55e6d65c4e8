"""The node's errors: one root for everything the node raises.

::

    NodeError
    ├── ConfigError            the deployment file is invalid (every problem, with paths)
    ├── UnknownChannel         no channel with that id on this node            (also KeyError)
    ├── UnknownProvider        no such provider, or its emulator is not run    (also KeyError)
    ├── ChannelExists          a channel with that id is already running
    ├── ConnectionLimitReached a provider's per-node connection limit is full
    ├── ChannelStartFailed     the channel's actor did not start
    │                                                   (also supervisors.StartChildFailed)
    ├── ChannelFenced          a newer owner wrote the channel's checkpoint: it runs elsewhere
    ├── NodeNotRunning         the node's tree is not running                  (also RuntimeError)
    ├── NodeStarting           the node is starting and takes no work yet
    ├── NodeDraining           the node is shutting down and takes no new work
    ├── StoreError             the store could not read or write
    ├── StartupFailed          something outside the node stopped it starting: a port
    │                          in use, a bad TLS file (setting: the key to change)
    └── SendError              a send did not go through (channel_id, idempotency_key)
        ├── InvalidMessage         it holds what JSON cannot carry (NaN, a non-JSON value),
        │                          a wrong type, an empty peer or key; refused
        │                          before anything was done              (also ValueError)
        ├── ChannelFailed          the channel stopped for good      (also actors.ChannelFailed)
        ├── ChannelUnavailable     not running, or not connected in time
        │                                                        (also actors.ChannelUnavailable)
        ├── SendFailed             transient failures outlasted the retries; dead-lettered
        │                                                        (also actors.SendFailed)
        ├── PermanentSendError     the platform will never take it; dead-lettered
        │   │                                          (also providers.base.PermanentSendError)
        │   ├── BadRecipient       (also providers.base.BadRecipient)
        │   ├── MessageTooLong     (also providers.base.MessageTooLong)
        │   ├── MediaTooLarge      (also providers.base.MediaTooLarge)
        │   ├── MessageNotFound    an edit, delete, reaction or read mark of a message
        │   │                      the platform no longer has (also providers.base.…)
        │   ├── OutsideWindow      (also providers.base.OutsideWindow)
        │   └── Unsupported        the platform has no such operation; refused before
        │                          sending, not dead-lettered (also providers.base.…)
        ├── Overloaded             the node or the channel has its bound of sends in
        │                          flight, or the node's loop runs behind: refused at
        │                          once, retry after ``retry_after``
        ├── MailboxFull            the channel's queue is full: slow down  (also actors.MailboxFull)
        ├── AskTimeout             no answer within the send's timeout     (also actors.AskTimeout)
        └── ChannelCrashed         the channel actor crashed on this message
                                                            (also actors.ActorCrashed)

An argument of the wrong type given to the embedded API (a channel id that
is no string, a spec that is no ``ChannelSpec``) is the caller's mistake, not
the node's state: it is a plain ``TypeError`` (a wrong value, ``ValueError``)
raised at the call, naming the argument and what it must be
(:func:`wrong_argument`), before anything was done.

Errors of the layers below (the actor kernel, the supervisors, the
providers) are mapped into this tree where they leave the node, by one
function (:func:`send_error`), chained: ``exc.__cause__`` is the original.
Each mapped class also derives from the class it replaces and keeps its
name, so ``except actors.ChannelFailed`` and ``except MessageTooLong`` go on
working, and the ops API's error names do not change.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Final

import attrs

import actors
import providers.base as platform
import supervisors
from providers.masking import shown

__all__ = [
    "AskTimeout",
    "BadRecipient",
    "ChannelCrashed",
    "ChannelExists",
    "ChannelFailed",
    "ChannelFenced",
    "ChannelStartFailed",
    "ChannelUnavailable",
    "ConfigError",
    "ConfigProblem",
    "ConnectionLimitReached",
    "InvalidMessage",
    "KeyReused",
    "MailboxFull",
    "MediaTooLarge",
    "MessageNotFound",
    "MessageTooLong",
    "NodeDraining",
    "NodeError",
    "NodeNotRunning",
    "NodeStarting",
    "OutsideWindow",
    "Overloaded",
    "PermanentSendError",
    "SendError",
    "SendFailed",
    "StartupFailed",
    "StoreError",
    "UnknownChannel",
    "UnknownProvider",
    "Unsupported",
    "error_from_wire",
    "error_to_wire",
    "send_error",
    "wrong_argument",
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


class StartupFailed(NodeError):
    """The node could not start because of something outside it.

    The message is one line for a person: what, where (the address or the
    path), why, and the setting to change. It never holds a secret.

    Attributes:
        setting: the configuration key to change (``ops.port``).
        exit_code: for ``switchboard run``: 2 when the setting names
            something invalid (a TLS file that is not one), 1 otherwise.
        fields: facts for the log record (``server.address``, ``file.path``).
    """

    def __init__(
        self,
        message: str,
        *,
        setting: str,
        exit_code: int = 1,
        fields: dict[str, str | int] | None = None,
    ) -> None:
        super().__init__(message)
        self.setting = setting
        self.exit_code = exit_code
        self.fields = dict(fields or {})


SHOWN_ID: Final = 80  # characters of an unknown channel's id an error shows


def wrong_argument(
    argument: str, expected: str, value: object, *, secret: bool = False
) -> TypeError:
    """The error for ``argument`` of an API call given a value of the wrong type: it
    names the argument, what it must be and what it was (its type, and its
    ``repr`` cut to :data:`SHOWN_ID` characters), and says that nothing was done.

    ``wrong_argument("channel_id", "a str (a channel's id)", 123)`` reads
    ``channel_id must be a str (a channel's id), not int 123; nothing was done``.
    ``secret``: the value may hold a secret the node has not learnt (a token
    given to ``learn_secrets``, a spec's credentials), so only its type is shown.
    """
    if secret:
        return TypeError(
            f"{argument} must be {expected}, not {type(value).__name__} (not shown: it may "
            "hold a secret); nothing was done"
        )
    try:
        text = repr(value)
    except Exception:
        text = "(unprintable)"
    if len(text) > SHOWN_ID:
        text = f"{text[:SHOWN_ID]}... ({len(text):,} characters)"
    return TypeError(
        f"{argument} must be {expected}, not {type(value).__name__} {text}; nothing was done"
    )


class UnknownChannel(NodeError, KeyError):
    """No channel with that id runs on this node."""

    def __init__(self, channel_id: str) -> None:
        self.channel_id = channel_id
        super().__init__(f"no channel {shown(str(channel_id), SHOWN_ID)} on this node")

    def __str__(self) -> str:
        return str(self.args[0])


class UnknownProvider(NodeError, KeyError):
    """No provider of that name is registered, or the channel wants an emulator
    the node does not run."""

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


class ChannelStartFailed(NodeError, supervisors.StartChildFailed):
    """The channel's actor failed to start (its error is chained).

    Attributes:
        child_id: the channel id.
    """

    def __init__(self, message: str, *, child_id: str) -> None:
        supervisors.StartChildFailed.__init__(self, message, child_id=child_id)


class ChannelFenced(NodeError):
    """A newer owner (a higher owner token) wrote the channel's checkpoint.

    Another node runs the channel; this one must not connect it.
    """


class NodeNotRunning(NodeError, RuntimeError):
    """The node's supervision tree is not running (not opened yet, or gone)."""


class NodeDraining(NodeError):
    """The node is shutting down and takes no new work."""


class NodeStarting(NodeError):
    """The node is starting: it takes work once ready (``/readyz``); ask again shortly."""


class StoreError(NodeError):
    """The store failed to read or write (the cause is chained)."""


# --- sends -------------------------------------------------------------------------------


class SendError(NodeError):
    """A send through the node did not go through; the cause is chained.

    Attributes:
        channel_id: the channel it was sent on.
        idempotency_key: the message's key (resend with it to stay exactly-once).
    """

    def __init__(self, message: str, *, channel_id: str = "", idempotency_key: str = "") -> None:
        # Every class below also derives from the layer's own class; their
        # constructors differ, so set what each one's users read directly.
        Exception.__init__(self, message)
        self.channel_id = channel_id
        self.idempotency_key = idempotency_key


class InvalidMessage(SendError, ValueError):
    """The message cannot be sent or kept: it holds what JSON cannot carry (NaN,
    infinity, a value of no JSON type), a field declared a string holds another
    type, its peer or idempotency key is empty, or it is no operation at all.

    Refused before anything was done: it could neither be sent nor kept.

    Attributes:
        problems: ``(path, problem)`` for each, as ``("$.metadata.score", "nan is ...")``.
    """

    problems: tuple[tuple[str, str], ...] = ()


class KeyReused(InvalidMessage, actors.KeyReused):
    """The idempotency key was sent already with another message (another
    peer, text or media), whose answer is not this message's: nothing was
    sent. Send it with a key of its own.

    A retry must carry the same message as the first send; a key whose
    answer was restored from a checkpoint (after the node restarted, or on
    the channel's next owner) answers any send of it, as before this check.
    A kept message's resend or a replayed dead letter refused so is a dead
    letter (this error its reason).
    """


class ChannelFailed(SendError, actors.ChannelFailed):
    """The channel stopped for good after a fatal platform error."""


class ChannelUnavailable(SendError, actors.ChannelUnavailable):
    """The channel is not running, or did not connect within the send's wait."""


class SendFailed(SendError, actors.SendFailed):
    """Transient failures outlasted the attempts; the message was dead-lettered."""


class PermanentSendError(SendError, platform.PermanentSendError):
    """The platform will never take this message as it is; it was dead-lettered.

    Attributes:
        peer: the recipient.
    """

    peer: str | None = None


class BadRecipient(PermanentSendError, platform.BadRecipient):
    """The recipient does not exist or cannot be messaged."""


class MessageTooLong(PermanentSendError, platform.MessageTooLong):
    """The text exceeds the platform's limit (refused before sending)."""


class OutsideWindow(PermanentSendError, platform.OutsideWindow):
    """WhatsApp: free-form messages need a reply within 24 hours; use a template."""


class MediaTooLarge(PermanentSendError, platform.MediaTooLarge):
    """The upload exceeds the platform's size limit."""


class MessageNotFound(PermanentSendError, platform.MessageNotFound):
    """The platform no longer has the message to edit, delete, react to or mark read
    (dead-lettered, never retried)."""


class Unsupported(PermanentSendError, platform.Unsupported):
    """The channel's platform has no such operation (refused before sending).

    Attributes:
        operation: the operation's name (``edit``, ``mark_read``, ...).
        provider: the provider that lacks it.
    """

    operation: str = ""
    provider: str = ""


class Overloaded(SendError):
    """The node or the channel holds its bound of sends, or the node runs behind.

    Refused at once, before anything is queued (admission control), rather
    than queued into a timeout: retry after ``retry_after`` seconds, or
    send elsewhere.

    Attributes:
        scope: ``"node"`` or ``"channel"``: which bound of sends was reached;
            ``"loop"``: the node's event loop ran behind more than
            ``[node] max_loop_lag``, and it holds as many sends as it runs
            within that.
        limit: the bound of sends (for ``"loop"``, the sends the node's loop
            runs within its bound of lateness, as the node reckoned it then).
        retry_after: seconds after which a retry may be taken (whole, >= 1).
    """

    scope: str = "node"
    limit: int = 0
    retry_after: int = 1


class MailboxFull(SendError, actors.MailboxFull):
    """The channel's queue is full; slow down and retry.

    Attributes:
        capacity: the queue's capacity.
    """

    capacity: int = 0


class AskTimeout(SendError, actors.AskTimeout):
    """No answer within the send's timeout (the message may still be sent)."""


class ChannelCrashed(SendError, actors.ActorCrashed):
    """The channel's actor crashed while handling this message (a defect: see the log)."""


# Most specific first: the first class in the raised error's MRO found here wins.
_SEND_ERRORS: Final[dict[type[BaseException], type[SendError]]] = {
    actors.ChannelFailed: ChannelFailed,
    actors.KeyReused: KeyReused,
    actors.ChannelUnavailable: ChannelUnavailable,
    actors.ActorDead: ChannelUnavailable,
    actors.SendFailed: SendFailed,
    actors.MailboxFull: MailboxFull,
    actors.AskTimeout: AskTimeout,
    actors.ActorCrashed: ChannelCrashed,
    platform.BadRecipient: BadRecipient,
    platform.MessageTooLong: MessageTooLong,
    platform.OutsideWindow: OutsideWindow,
    platform.MediaTooLarge: MediaTooLarge,
    platform.MessageNotFound: MessageNotFound,
    platform.Unsupported: Unsupported,
    platform.PermanentSendError: PermanentSendError,
}


def send_error(exc: BaseException, channel_id: str, idempotency_key: str) -> SendError | None:
    """The node's error for ``exc``, an error of one send from the layers below.

    The caller raises it chained (``raise error from exc``). ``None``: ``exc``
    passes unchanged (an error already in the node's tree, or one not
    listed: a defect).
    """
    if isinstance(exc, NodeError) or not isinstance(
        exc, actors.ActorError | platform.ProviderError
    ):
        return None
    mapped = _mapped_class(type(exc))
    if mapped is None:
        return None
    text = str(exc)
    if isinstance(exc, actors.ActorDead):
        # The kernel's words ("cannot ask <ActorRef ...>: ... look it up again")
        # mean nothing to a caller of the node; the cause keeps them.
        text = (
            f"channel {channel_id!r} stopped while this send (idempotency key "
            f"{idempotency_key!r}) waited for it, so it may not have been sent; send it "
            "again with the same key once the channel runs (a repeat of a sent key is "
            "answered, not sent twice)"
        )
    error = mapped(text, channel_id=channel_id, idempotency_key=idempotency_key)
    _copy_details(exc, error)
    return error


def _mapped_class(kind: type[BaseException]) -> type[SendError] | None:
    for base in kind.__mro__:
        mapped = _SEND_ERRORS.get(base)
        if mapped is not None:
            return mapped
    return None


def _copy_details(source: BaseException, target: SendError) -> None:
    details: Any = source
    for name in ("peer", "capacity", "actor", "reason", "operation", "provider", "dead_lettered"):
        if hasattr(details, name):
            setattr(target, name, getattr(details, name))


# --- errors that cross the cluster -------------------------------------------------------------

# The classes an answer from another node may carry, by name. A name not
# here (a defect, or a newer node's class) arrives as a plain NodeError.
_WIRE: Final[dict[str, type[NodeError]]] = {
    kind.__name__: kind
    for kind in (
        InvalidMessage,
        KeyReused,
        ChannelFailed,
        ChannelUnavailable,
        SendFailed,
        PermanentSendError,
        BadRecipient,
        MessageTooLong,
        OutsideWindow,
        MessageNotFound,
        MediaTooLarge,
        Unsupported,
        MailboxFull,
        Overloaded,
        AskTimeout,
        ChannelCrashed,
        NodeDraining,
        NodeStarting,
        ChannelExists,
        ChannelFenced,
        NodeNotRunning,
        StoreError,
        NodeError,
    )
}
_DETAILS: Final = (
    "peer",
    "capacity",
    "reason",
    "operation",
    "provider",
    "scope",
    "limit",
    "retry_after",
)


def error_to_wire(exc: BaseException) -> dict[str, Any]:
    """A node error as a JSON object, for a caller on another node."""
    wire: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, UnknownChannel):
        wire["channel_id"] = exc.channel_id
    if isinstance(exc, SendError):
        wire["channel_id"] = exc.channel_id
        wire["idempotency_key"] = exc.idempotency_key
        for name in _DETAILS:
            value = getattr(exc, name, None)
            if isinstance(value, str | int | float) and not isinstance(value, bool):
                wire[name] = value
        if getattr(exc, "dead_lettered", False) is True:
            wire["dead_lettered"] = True  # (a ChannelFailed whose message is a letter)
    return wire


def _retry_after(value: Any) -> int:
    """An ``Overloaded.retry_after`` read off the wire: whole seconds within the
    node's own bounds, or the node's default if it is not a number."""
    from .admission import MAX_RETRY_AFTER, NODE_RETRY_AFTER  # (admission imports this module)

    if not isinstance(value, int | float) or isinstance(value, bool):
        return NODE_RETRY_AFTER
    if isinstance(value, float) and math.isnan(value):  # (an int may be past any float)
        return NODE_RETRY_AFTER
    if value >= MAX_RETRY_AFTER:
        return MAX_RETRY_AFTER
    return math.ceil(value) if value > 1 else 1


def error_from_wire(wire: Any) -> NodeError:
    """The error :func:`error_to_wire` wrote, as the same class where this node knows it."""
    if not isinstance(wire, dict):
        return NodeError(f"another node answered with an unreadable error: {wire!r:.200}")
    name = str(wire.get("type", "NodeError"))
    message = str(wire.get("message", ""))
    if name == "UnknownChannel":
        return UnknownChannel(str(wire.get("channel_id", "")))
    kind = _WIRE.get(name)
    if kind is None:
        return NodeError(f"{name}: {message}")
    if issubclass(kind, SendError):
        error: NodeError = kind(
            message,
            channel_id=str(wire.get("channel_id", "")),
            idempotency_key=str(wire.get("idempotency_key", "")),
        )
        for detail in _DETAILS:
            if detail in wire:
                setattr(error, detail, wire[detail])
        if isinstance(error, Overloaded):
            # It becomes a 503's Retry-After: whole seconds, at least one, as promised.
            error.retry_after = _retry_after(wire.get("retry_after"))
        if wire.get("dead_lettered") is True:
            error.dead_lettered = True  # type: ignore[attr-defined]
        return error
    return kind(message)
