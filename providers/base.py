"""The Provider protocol: what every platform adapter offers the ChannelActor.

Design:
- A provider opens a :class:`Connection` for one channel (an async context
  manager, so its heartbeat and reader tasks are structured); the connection
  yields inbound :data:`Event` s as an async iterator, sends
  :class:`OutboundMessage` s and closes. Messages and events are frozen attrs
  classes, so they can be queued, persisted and compared safely.
- Every platform error is mapped, at the provider boundary, into the tree
  below; the ChannelActor acts on the class alone (retry, wait, stop, or
  dead-letter), never on a platform's status codes::

      ProviderError
      ├── TransientError          retry with backoff (network, 5xx, dropped gateway);
      │                           a 503's Retry-After is its least wait (``retry_after``)
      ├── RateLimited             wait exactly ``retry_after``; not a failure
      ├── FatalError              never retry: stop the channel as failed
      │   ├── AuthenticationFailed   bad or revoked credentials
      │   ├── Banned                 the platform refuses us (ban, IP block)
      │   ├── MissingPermissions     privileged intents / scopes missing
      │   └── Conflict               another client holds the session (Telegram 409)
      └── PermanentSendError      this message can never be sent: dead-letter it
          ├── BadRecipient
          ├── MessageTooLong
          ├── MediaTooLarge          an upload over the platform's size limit
          ├── MessageNotFound        an edit, delete, reaction or read of a message
          │                          the platform no longer has
          ├── OutsideWindow          WhatsApp's 24-hour customer-service window
          └── Unsupported            the platform has no such operation (refused
                                     before anything is sent)

- Beyond sending, a connection edits and deletes what it sent, shows a
  typing indicator, marks inbound messages read and reacts to messages
  (:mod:`providers.operations`); a provider declares which of these its
  platform has in ``Provider.operations``, and an operation it lacks is
  refused with :class:`Unsupported` before any budget is spent.
- Session state a provider needs to resume (Discord ``session_id``/``seq``,
  Telegram's update offset) is exported as a :class:`SessionState` and handed
  back on the next ``open_connection``, so a crash of the actor neither replays nor
  drops updates.
- Providers import nothing from ``actors`` or ``runtime``.
"""

from __future__ import annotations

import enum
import math
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable

import attrs

from .masking import options_repr, url_repr

if TYPE_CHECKING:
    from .operations import (
        DeleteMessage,
        EditMessage,
        MarkRead,
        OperationKind,
        React,
        SendTyping,
    )

__all__ = [
    "DEFAULT_LIMITS",
    "MAX_RETRY_AFTER",
    "SEND_WINDOW_MAX",
    "SEND_WINDOW_RTT",
    "UNLIMITED",
    "AuthenticationFailed",
    "BadRecipient",
    "Banned",
    "ChannelConfig",
    "Conflict",
    "Connection",
    "ConnectionState",
    "ConnectionStateChanged",
    "DeliveryReceipt",
    "Event",
    "FatalError",
    "InboundMessage",
    "Media",
    "MediaKind",
    "MediaTooLarge",
    "MessageEdited",
    "MessageNotFound",
    "MessageTooLong",
    "MissingPermissions",
    "OutboundMessage",
    "OutsideWindow",
    "PermanentSendError",
    "PlatformLimits",
    "Provider",
    "ProviderError",
    "RateLimitScope",
    "RateLimited",
    "ReceiptStatus",
    "SendResult",
    "SessionState",
    "Template",
    "TransientError",
    "Unsupported",
    "default_send_window",
    "retry_after_seconds",
    "send_window",
]


# --- messages ------------------------------------------------------------------------


class MediaKind(enum.Enum):
    """What a :class:`Media` item is."""

    IMAGE = "image"
    VIDEO = "video"
    DOCUMENT = "document"
    AUDIO = "audio"


def _content_repr(content: bytes | None) -> str:
    return "None" if content is None else f"<{len(content)} bytes>"


@attrs.frozen(kw_only=True)
class Media:
    """Media sent by URL or by upload, or received.

    Exactly one of ``url`` (the platform fetches it), ``content`` (uploaded
    from memory) and ``path`` (a local file, read and uploaded when the
    message is sent) says where the media comes from. Received media always
    has a ``url`` (or a platform reference in URL form).

    Attributes:
        kind: image, video, document or audio.
        url: where the platform fetches (or we fetched) it.
        content: the bytes to upload (``repr`` shows only their length).
        path: a local file to upload.
        caption: optional text shown with it.
        filename: the name shown for an upload (default: the path's name).
        mime_type: the upload's media type (default: guessed from the name).
    """

    kind: MediaKind
    url: str | None = None
    content: bytes | None = attrs.field(default=None, repr=_content_repr)
    path: str | None = None
    caption: str | None = None
    filename: str | None = None
    mime_type: str | None = None

    def __attrs_post_init__(self) -> None:
        given = sum(x is not None for x in (self.url, self.content, self.path))
        if given != 1:
            raise ValueError(
                f"a Media item has exactly one of url, content or path (got {given}); "
                "give a URL for the platform to fetch, or bytes or a file to upload"
            )

    @property
    def is_upload(self) -> bool:
        """Whether the media is uploaded (bytes or a file) rather than fetched by URL."""
        return self.url is None


@attrs.frozen(kw_only=True)
class Template:
    """A pre-approved WhatsApp message template.

    Attributes:
        name: the template name.
        language: its language code, e.g. ``en_US``.
        components: the template's parameter components, as the Cloud API takes them.
    """

    name: str
    language: str
    components: tuple[Mapping[str, Any], ...] = ()


@attrs.frozen(kw_only=True)
class OutboundMessage:
    """A message to send on a channel.

    Exactly one of ``text``, ``media`` or ``template`` carries the content
    (``media`` may have a caption).

    Attributes:
        peer: the platform's chat / channel / recipient id.
        idempotency_key: unique per logical message; retries reuse it so the
            platform (or we) can drop duplicates.
        text: text content.
        media: media content.
        template: a WhatsApp template.
        reply_to: platform message id this replies to.
        metadata: free-form platform extras.
    """

    peer: str
    idempotency_key: str
    text: str | None = None
    media: Media | None = None
    template: Template | None = None
    reply_to: str | None = None
    metadata: Mapping[str, Any] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        # Counted without a generator: a message is made on every send.
        given = (self.text is not None) + (self.media is not None) + (self.template is not None)
        if given != 1:
            raise ValueError(
                "an OutboundMessage carries exactly one of text, media or template "
                f"(got {given}) for peer {self.peer!r}"
            )


@attrs.frozen(kw_only=True)
class SendResult:
    """The platform accepted a message.

    Attributes:
        platform_message_id: the platform's id for the sent message.
        peer: where it went.
    """

    platform_message_id: str
    peer: str


# --- events ---------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class InboundMessage:
    """A user sent the bot a message.

    Attributes:
        channel_id: our channel that received it.
        platform_message_id: the platform's id (the deduplication key).
        peer: the chat it belongs to (reply here).
        sender: the user who sent it.
        text: its text, if any.
        media: its media, if any.
        reply_to: the platform message id it replies to.
        timestamp: platform time, seconds since the epoch.
        metadata: platform extras.
    """

    channel_id: str
    platform_message_id: str
    peer: str
    sender: str
    text: str | None = None
    media: Media | None = None
    reply_to: str | None = None
    timestamp: float | None = None
    metadata: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class MessageEdited:
    """A user edited an earlier message.

    Attributes:
        channel_id: our channel that received it.
        platform_message_id: the edited message's id.
        peer: the chat it belongs to.
        sender: the user who edited it.
        text: its new text, if any.
        timestamp: platform time of the edit, seconds since the epoch.
        metadata: platform extras (Telegram: the edit's ``update_id``).
    """

    channel_id: str
    platform_message_id: str
    peer: str
    sender: str
    text: str | None = None
    timestamp: float | None = None
    metadata: Mapping[str, Any] = attrs.field(factory=dict)

    @property
    def edit_id(self) -> str | None:
        """The platform's own id of this edit (``#`` and Telegram's ``update_id``), or None.

        What tells two edits of a message apart where ``timestamp`` cannot:
        Telegram's ``edit_date`` counts whole seconds, and a bot streaming its
        answer edits a message several times a second.
        """
        update_id = self.metadata.get("update_id")
        if isinstance(update_id, int) and not isinstance(update_id, bool):
            return f"#{update_id}"
        return None


class ReceiptStatus(enum.Enum):
    """How far a sent message got; statuses only ever move forward."""

    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"


@attrs.frozen(kw_only=True)
class DeliveryReceipt:
    """The platform reports the fate of a message we sent.

    Statuses may arrive out of order (WhatsApp): consumers keep the furthest.
    """

    channel_id: str
    platform_message_id: str
    peer: str
    status: ReceiptStatus
    timestamp: float | None = None
    error: str | None = None


class ConnectionState(enum.Enum):
    """The provider's view of its link to the platform."""

    CONNECTED = "connected"
    RESUMED = "resumed"
    DISCONNECTED = "disconnected"


@attrs.frozen(kw_only=True)
class ConnectionStateChanged:
    """The provider's link to the platform changed (as seen by the provider)."""

    channel_id: str
    state: ConnectionState
    detail: str = ""


Event = InboundMessage | MessageEdited | DeliveryReceipt | ConnectionStateChanged


# --- configuration, limits and session state --------------------------------------------


@attrs.frozen(kw_only=True)
class ChannelConfig:
    """What a provider needs to open one channel.

    Attributes:
        channel_id: our id for the channel.
        tenant: the product tenant it belongs to.
        provider: the provider name (``discord``, ``telegram``, ...).
        credentials: tokens and secrets; never logged (``repr`` hides them).
        base_url: the platform's API root (an emulator's in tests); ``repr``
            masks its userinfo and credential query parameters.
        options: provider-specific settings; ``repr`` masks secret-bearing
            values (``webhook_secret``...: :mod:`providers.masking`).
        send_window: sends in flight at once on the channel (an HTTP
            provider keeps that many pooled connections); ``None``: the
            platform's default, :func:`default_send_window`.
    """

    channel_id: str
    tenant: str = "default"
    provider: str
    credentials: Mapping[str, str] = attrs.field(factory=dict, repr=False)
    base_url: str | None = attrs.field(default=None, repr=url_repr)
    options: Mapping[str, Any] = attrs.field(factory=dict, repr=options_repr)
    send_window: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.ge(1))
    )


@attrs.frozen(kw_only=True)
class PlatformLimits:
    """A platform's default limits; a channel's config may override them.

    Attributes:
        per_channel_rate: messages per second for the whole channel (bot).
        per_channel_burst: burst for it.
        per_peer_rate: messages per second to one chat / recipient.
        per_peer_burst: burst for it.
        max_text_length: longest text the platform accepts, in characters.
        max_upload_bytes: largest media upload the platform accepts, in bytes.
        per_channel_strict: the platform counts ``per_channel_rate`` over
            any one second and refuses the message past it (a window,
            not a bucket: WhatsApp's 130429, Telegram's 429, Discord's
            global 429), and
            each refusal costs the channel a pause of a second or more. A
            burst on top of the rate overruns such a window, so these
            platforms declare ``per_channel_burst = 1`` and the channel
            paces its sends a little below the rate (see
            :func:`actors.channel.state.channel_bucket`).
    """

    per_channel_rate: float = attrs.field(validator=lambda _, a, v: _check_rate(a.name, v))
    per_channel_burst: int = attrs.field(validator=lambda _, a, v: _check_count(a.name, v))
    per_peer_rate: float = attrs.field(validator=lambda _, a, v: _check_rate(a.name, v))
    per_peer_burst: int = attrs.field(validator=lambda _, a, v: _check_count(a.name, v))
    max_text_length: int = attrs.field(validator=lambda _, a, v: _check_count(a.name, v))
    max_upload_bytes: int = 50 * 1024 * 1024
    per_channel_strict: bool = False


# Checked where limits are made: a channel makes its rate limiters from them at
# its first send, and limits no limiter can keep crashed it at every send.
def _check_rate(name: str, value: float) -> None:
    if isinstance(value, bool) or not (isinstance(value, int | float) and value > 0):
        raise ValueError(
            f"{name} must be messages per second > 0 (UNLIMITED or more: no limit), got {value!r}"
        )


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not (isinstance(value, int) and value >= 1):
        raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")


# Limits off (load tests, a platform that enforces nothing): a rate at or above
# this is no limit at all. A channel then keeps no limiter state for it (no
# schedule, no bucket per recipient); only the pauses a platform asks for
# (a 429's retry-after) still hold its sends.
UNLIMITED: Final = 1e9  # messages per second


# A real platform is 50-300 ms away, and one send in flight caps a channel at
# 1/RTT messages per second: the default window covers the platform's rate
# over the longest of those round trips, with a quarter to spare.
SEND_WINDOW_RTT: Final = 0.3  # seconds
SEND_WINDOW_HEADROOM: Final = 1.25
SEND_WINDOW_MAX: Final = 256  # sends in flight per channel, whatever the rate

# A liveness timer that fires this much after it was due found the node's own
# event loop busy (a collection, a burst of work): what the peer sent
# meanwhile may sit unread in the socket, so the link is not blamed yet. It
# is given as long again as the node looked away, once, and judged after
# the reader has looked (the cores' ``tick``/``timer`` take ``due``).
LATE_TIMER: Final = 0.1  # seconds


def default_send_window(limits: PlatformLimits) -> int:
    """Sends in flight that let one channel reach ``limits.per_channel_rate``
    over a :data:`SEND_WINDOW_RTT` round trip (WhatsApp 80/s: 30; Telegram
    30/s: 12), at most :data:`SEND_WINDOW_MAX`."""
    wanted = math.ceil(limits.per_channel_rate * SEND_WINDOW_RTT * SEND_WINDOW_HEADROOM)
    return max(1, min(SEND_WINDOW_MAX, wanted))


def send_window(config: ChannelConfig, limits: PlatformLimits) -> int:
    """The channel's send window: its config's, else the platform's default."""
    return config.send_window if config.send_window is not None else default_send_window(limits)


DEFAULT_LIMITS: Final = PlatformLimits(
    per_channel_rate=30.0,
    per_channel_burst=30,
    per_peer_rate=1.0,
    per_peer_burst=1,
    max_text_length=4096,
)


@attrs.frozen(kw_only=True)
class SessionState:
    """Provider state that must survive a restart of the channel actor.

    Attributes:
        provider: which provider wrote it (a guard against mix-ups).
        data: provider-defined JSON-compatible values (e.g. Telegram
            ``{"offset": 1234}``, Discord ``{"session_id": ..., "seq": ...}``).
    """

    provider: str
    data: Mapping[str, Any] = attrs.field(factory=dict)


# --- errors ---------------------------------------------------------------------------------


class ProviderError(Exception):
    """Base class of every error a provider raises."""


class TransientError(ProviderError):
    """A failure that may go away: reconnect or retry with backoff.

    Attributes:
        retry_after: the least seconds before the retry, where the platform
            said (a 503's ``Retry-After``: maintenance), within 0 and
            :data:`MAX_RETRY_AFTER`; ``None`` where it did not. The backoff's
            delay still applies when it is longer. Unlike a
            :class:`RateLimited`, the error stays a failure (it spends an
            attempt and counts for the circuit breaker) and pauses nothing
            but its own retry.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = None if retry_after is None else retry_after_seconds(retry_after, 0.0)


class RateLimitScope(enum.Enum):
    """What a :class:`RateLimited` covers."""

    CHANNEL = "channel"
    PEER = "peer"
    GLOBAL = "global"


class RateLimited(ProviderError):
    """The platform asked us to wait ``retry_after`` seconds.

    Attributes:
        retry_after: seconds to wait before the next attempt, 0 or more (NaN or
            an infinity: :data:`UNREADABLE_RETRY_AFTER`).
        scope: what the limit covers (the whole channel, one peer, or global).
        peer: the peer, for a peer-scoped limit.
    """

    def __init__(
        self,
        message: str,
        *,
        retry_after: float,
        scope: RateLimitScope = RateLimitScope.CHANNEL,
        peer: str | None = None,
    ) -> None:
        super().__init__(message)
        # Read from the platform's answer: whatever it said, a wait a channel can
        # sleep (not capped here: Discord's session starts come back after a day).
        try:
            wait = float(retry_after)
        except (TypeError, ValueError, OverflowError):  # 10**400 too
            wait = UNREADABLE_RETRY_AFTER
        self.retry_after = max(0.0, wait) if math.isfinite(wait) else UNREADABLE_RETRY_AFTER
        self.scope = scope
        self.peer = peer


# A platform's wait is read from its answer, so it can be anything: a negative
# or NaN wait makes ``trio.move_on_after`` raise in the connection loop, an
# infinite one never reconnects, and an integer past any float (10**400) raises
# OverflowError where it is converted. Providers read it with the function below.
MAX_RETRY_AFTER: Final = 3600.0  # seconds; a platform's longer wait is read as this
UNREADABLE_RETRY_AFTER: Final = 1.0  # seconds a RateLimited waits for NaN or an infinity


def retry_after_seconds(value: Any, default: float) -> float:
    """A platform's rate-limit wait as seconds a channel can sleep.

    Args:
        value: the wait the platform gave (a number, or whatever its answer held).
        default: the wait when ``value`` is not a finite number.

    Returns:
        ``value`` within 0 and :data:`MAX_RETRY_AFTER`, or ``default`` for NaN, an
        infinity, None or anything that is not a number.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    if isinstance(value, float) and not math.isfinite(value):
        return default
    return float(min(max(0, value), MAX_RETRY_AFTER))


class FatalError(ProviderError):
    """Retrying cannot help and would harm: stop the channel as failed."""


class AuthenticationFailed(FatalError):
    """The platform rejected the credentials."""


class Banned(FatalError):
    """The platform refuses this bot or this address (ban, IP block)."""


class MissingPermissions(FatalError):
    """The bot lacks a permission or privileged intent it needs."""


class Conflict(FatalError):
    """Another client holds the session (Telegram 409: another poller or a webhook)."""


class PermanentSendError(ProviderError):
    """This message can never be delivered as it is: dead-letter it.

    Attributes:
        peer: the recipient.
    """

    def __init__(self, message: str, *, peer: str | None = None) -> None:
        super().__init__(message)
        self.peer = peer


class BadRecipient(PermanentSendError):
    """The recipient does not exist or cannot be messaged."""


class MessageTooLong(PermanentSendError):
    """The text exceeds the platform's limit."""


class OutsideWindow(PermanentSendError):
    """WhatsApp: free-form messages need a reply within 24 hours; use a template."""


class MediaTooLarge(PermanentSendError):
    """The upload exceeds the platform's size limit."""


class MessageNotFound(PermanentSendError):
    """The message to edit, delete, react to or mark read is gone (or never was).

    Retrying cannot bring it back: the operation is dead-lettered, never retried.
    """


class Unsupported(PermanentSendError):
    """The platform has no such operation (WhatsApp cannot edit, Telegram has no
    read receipts for bots, ...). Refused before anything is sent.

    Attributes:
        operation: the operation's name (``edit``, ``mark_read``, ...).
        provider: the provider that lacks it.
    """

    def __init__(
        self, message: str, *, peer: str | None = None, operation: str = "", provider: str = ""
    ) -> None:
        super().__init__(message, peer=peer)
        self.operation = operation
        self.provider = provider


# --- the protocol ----------------------------------------------------------------------------


@runtime_checkable
class Connection(Protocol):
    """An open link to the platform for one channel.

    Two optional shortcuts, which a channel looks up with ``getattr`` (the
    websocket provider has both): ``take_events_at_once(take)`` offers each
    event to ``take`` first, where the connection reads it (a task of its
    own, or the task that reads every connection's socket), and
    ``can_start_at_once(op)`` / ``start_at_once(op, done)`` send an
    operation in the caller's task, with no task waiting for its answer
    (``done(result, error)`` hears it later).

    And one optional flag: ``answers_after_close = True`` says that a send on
    its way when :meth:`close` is called still gets its answer, until the
    connection's block ends (which closes the provider's HTTP client, and
    the requests on it): the channel then lets those answers come, within
    its close's grace, before it leaves the block.
    """

    def events(self) -> AsyncIterator[Event]:
        """Inbound events, until the connection ends.

        The iterator ends quietly after :meth:`close`; a broken link raises a
        :class:`ProviderError` (``TransientError`` to reconnect,
        ``FatalError`` to stop, ``RateLimited`` to wait).
        """
        ...

    async def send(self, msg: OutboundMessage) -> SendResult:
        """Send one message (text, media by URL or by upload, a template);
        return once the platform accepted it.

        Raises:
            TransientError, RateLimited, FatalError, PermanentSendError
            (MediaTooLarge for an upload over the limit).
        """
        ...

    async def edit(self, op: EditMessage) -> SendResult:
        """Replace the text of a message this bot sent.

        Raises:
            MessageNotFound: the platform no longer has the message.
            Unsupported: the platform cannot edit messages.
            TransientError, RateLimited, FatalError, PermanentSendError.
        """
        ...

    async def delete(self, op: DeleteMessage) -> None:
        """Delete a message.

        Raises:
            MessageNotFound: the platform no longer has the message.
            Unsupported, TransientError, RateLimited, FatalError, PermanentSendError.
        """
        ...

    async def typing(self, op: SendTyping) -> None:
        """Show a typing (or other chat action) indicator to the peer.

        Raises:
            Unsupported, TransientError, RateLimited, FatalError, PermanentSendError.
        """
        ...

    async def mark_read(self, op: MarkRead) -> None:
        """Mark an inbound message as read.

        Raises:
            MessageNotFound, Unsupported, TransientError, RateLimited, FatalError,
            PermanentSendError.
        """
        ...

    async def react(self, op: React) -> None:
        """Set (or, with no emoji, remove) the bot's reaction to a message.

        Raises:
            MessageNotFound, Unsupported, TransientError, RateLimited, FatalError,
            PermanentSendError.
        """
        ...

    def session_state(self) -> SessionState:
        """What the next ``open_connection`` needs to resume where this one stopped."""
        ...

    async def close(self, *, resumable: bool = True) -> None:
        """Close the link; ``resumable`` keeps the platform session resumable."""
        ...


@runtime_checkable
class Provider(Protocol):
    """A platform adapter."""

    name: str
    limits: PlatformLimits
    operations: frozenset[OperationKind]
    """What the platform can do beyond sending text (see :mod:`providers.operations`)."""

    def open_connection(
        self, config: ChannelConfig, session: SessionState | None = None
    ) -> AbstractAsyncContextManager[Connection]:
        """Open a connection for one channel, resuming ``session`` if given.

        Used as ``async with provider.open_connection(cfg, session) as conn:``;
        the connection's own tasks (heartbeats, readers) live inside the block
        and leaving it closes the connection.

        Raises:
            TransientError, RateLimited, FatalError: on entering the block.
        """
        ...
