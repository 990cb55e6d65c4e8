"""The sans-IO core of the generic JSON-over-websocket channel.

Design: the protocol (the envelope, acks, error mapping, keepalive and
liveness timers) is decided here, with no sockets and no clock: the shell
feeds in frames, pongs and ``now``, applies the :data:`Action` s that come
out, and sleeps until :meth:`WebSocketCore.next_deadline`. That keeps every
timer rule unit-testable with plain numbers (as h11 and wsproto do) and
leaves the trio-websocket shell a thin loop.

The wire protocol (text frames, one JSON object each)::

    server -> client
      {"type": "ready", "session"?}                       after the token is accepted
      {"type": "message", "id", "peer", "sender", "text"?, "media"?, "reply_to"?,
       "timestamp"?}                                      a user wrote to the bot
      {"type": "edit", "id", "peer", "sender", "text"?, "timestamp"?}
      {"type": "receipt", "id", "status", "peer"?, "timestamp"?, "error"?}
                                                          fate of a sent message
      {"type": "ack", "id", "message_id"}                 a send was accepted
      {"type": "error", "id"?, "code", "message"?, "retry_after"?, "peer"?}
                                                          with "id": a send failed;
                                                          without: the link failed
      {"type": "heartbeat"}                               proves the server is alive
    client -> server
      {"type": "send", "id": idempotency_key, "peer", "text" | "media", "reply_to"?}
      {"type": "edit", "id", "peer", "message_id", "text"}
      {"type": "delete", "id", "peer", "message_id"}
      {"type": "typing", "id", "peer", "action"}          a chat action ("typing", ...)
      {"type": "read", "id", "peer", "message_id"}        mark an inbound message read
      {"type": "react", "id", "peer", "message_id", "emoji", "remove"}
                                                          remove: take it away
                                                          each answered by "ack" or "error"
      {"type": "heartbeat_ack"}                           answers a heartbeat: the
                                                          client is alive (a server
                                                          may drop a client that
                                                          stops answering)

    media = {"kind": "image" | "video" | "document" | "audio", "url" | "data",
             "caption"?, "filename"?, "mime_type"?}     data: an upload, base64

A receipt's ``status`` is one of ``sent``, ``delivered``, ``read``, ``failed``; a
receipt of another status word (one a newer server added) is skipped, as a
frame of an unknown type is, and the link stays open.

A message's media from the server is read by its ``url`` alone: without one
(``data``, or a local ``path`` that only an upload may name) the message comes
without its media, so a node never takes a file or bytes a server chose.

Error codes map to the provider error tree (:func:`error_from_code`):
``rate_limited`` -> RateLimited, ``unauthorized`` -> AuthenticationFailed,
``banned`` -> Banned, ``forbidden`` -> MissingPermissions, ``bad_recipient`` ->
BadRecipient, ``too_long`` -> MessageTooLong, ``too_large`` -> MediaTooLarge,
``not_found`` -> MessageNotFound, ``unsupported`` -> Unsupported, anything
else -> TransientError.
Close codes map likewise (:func:`error_from_close`): 4001 -> AuthenticationFailed,
4003 -> Banned, 4029 -> RateLimited (the reason may carry the seconds to wait),
anything else -> TransientError.

Two timers decide that a link is dead, and they prove different things:

- keepalive: a websocket ping once the link has been silent for
  ``ping_interval`` seconds (no frame from the server; as gRPC's keepalive,
  a frame proves the transport as well as a pong); no pong within
  ``pong_timeout`` -> the *transport* is dead (half-open TCP, frozen NAT).
  A server that heartbeats more often than that is never pinged: an idle
  node's pings and their pongs were about half its CPU (issue 12);
- liveness: no application frame (pongs do not count, heartbeats do) for
  ``liveness_timeout`` seconds -> the *server application* is hung, even if
  its websocket stack still answers pings. A server speaking this protocol
  must therefore send something, a heartbeat at least, more often than that.

Either timer may be disabled with ``None``.

A timer that fires late (the node's own loop was busy: a collection, a
burst of work) does not blame the link for the node's lateness: the
pong, frames and acks may be waiting unread in the socket. When
:meth:`WebSocketCore.tick` is told the timer was due more than
:data:`~providers.base.LATE_TIMER` earlier, what is overdue gets as long
again as the node looked away (at most ``pong_timeout``) while the reader
reads, then is judged: once for the awaited pong (until a pong comes), once
for the liveness (until a frame comes), once for each pending ack.
"""

from __future__ import annotations

import base64
import enum
import math
from typing import Any, Final

import attrs
import cattrs

from providers._json import compact as _compact
from providers._json import parsed as _parsed
from providers.base import (
    LATE_TIMER,
    AuthenticationFailed,
    BadRecipient,
    Banned,
    ConnectionState,
    ConnectionStateChanged,
    DeliveryReceipt,
    Event,
    InboundMessage,
    Media,
    MediaKind,
    MediaTooLarge,
    MessageEdited,
    MessageNotFound,
    MessageTooLong,
    MissingPermissions,
    OutboundMessage,
    PermanentSendError,
    ProviderError,
    RateLimited,
    RateLimitScope,
    ReceiptStatus,
    SendResult,
    TransientError,
    Unsupported,
    retry_after_seconds,
)
from providers.operations import (
    DeleteMessage,
    EditMessage,
    MarkRead,
    Operation,
    React,
    SendTyping,
)

__all__ = [
    "DEFAULT_RETRY_AFTER",
    "Action",
    "CloseLink",
    "CompleteSend",
    "Emit",
    "Fail",
    "Phase",
    "SendFrame",
    "SendPing",
    "WebSocketCore",
    "error_from_close",
    "error_from_code",
    "unacknowledged",
]


DEFAULT_RETRY_AFTER: Final = 1.0  # seconds, when a rate limit names no wait
CLOSE_NORMAL: Final = 1000
_NEVER: Final = float("inf")


# --- actions ------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class SendFrame:
    """Send this text frame to the server."""

    text: str


@attrs.frozen(kw_only=True)
class SendPing:
    """Send a websocket ping with this payload; report its pong with ``pong_received``."""

    payload: bytes


@attrs.frozen(kw_only=True)
class Emit:
    """Hand this event to the consumer of ``events()``."""

    event: Event


@attrs.frozen(kw_only=True)
class CompleteSend:
    """The send with idempotency key ``key`` is over: exactly one of result or error."""

    key: str
    result: SendResult | None = None
    error: ProviderError | None = None


@attrs.frozen(kw_only=True)
class Fail:
    """The link is dead: ``events()`` raises ``error`` once the buffered events are read."""

    error: ProviderError


@attrs.frozen(kw_only=True)
class CloseLink:
    """Close the websocket with this code (the shell bounds the closing handshake)."""

    code: int
    reason: str


Action = SendFrame | SendPing | Emit | CompleteSend | Fail | CloseLink


class Phase(enum.Enum):
    """Where the link is in its life."""

    AWAITING_READY = "awaiting_ready"
    OPEN = "open"
    CLOSED = "closed"  # we closed it
    FAILED = "failed"  # the peer broke it, or a timer declared it dead


# --- error mapping --------------------------------------------------------------------------


def error_from_code(
    code: str, message: str = "", *, retry_after: float | None = None, peer: str | None = None
) -> ProviderError:
    """The provider error for an ``error`` frame's ``code``.

    Args:
        code: the frame's code (``rate_limited``, ``unauthorized``, ...).
        message: the server's explanation.
        retry_after: seconds to wait, for ``rate_limited`` (kept within 0 and
            :data:`~providers.base.MAX_RETRY_AFTER`; NaN or an infinity is no wait given).
        peer: the recipient, for send errors.

    Returns:
        The mapped error; unknown codes are transient.
    """
    text = f"websocket server error {code!r}: {message or 'no detail'}"
    if code == "rate_limited":
        wait = retry_after_seconds(retry_after, DEFAULT_RETRY_AFTER)
        scope = RateLimitScope.CHANNEL if peer is None else RateLimitScope.PEER
        return RateLimited(f"{text}; retry after {wait}s", retry_after=wait, scope=scope, peer=peer)
    if code == "unauthorized":
        return AuthenticationFailed(f"{text}; check credentials['token']")
    if code == "banned":
        return Banned(f"{text}; the server refuses this token, do not reconnect")
    if code == "forbidden":
        return MissingPermissions(text)
    if code == "bad_recipient":
        return BadRecipient(text, peer=peer)
    if code == "too_long":
        return MessageTooLong(text, peer=peer)
    if code == "too_large":
        return MediaTooLarge(text, peer=peer)
    if code == "not_found":
        return MessageNotFound(f"{text}; the message is gone", peer=peer)
    if code == "unsupported":
        return Unsupported(text, peer=peer, provider="websocket")
    return TransientError(f"{text}; retry")


def unacknowledged(key: str, why: str) -> TransientError:
    """The error of a send whose ack will never come (``why``: the link's end)."""
    return TransientError(
        f"send {key!r} was not acknowledged ({why}); retry with the same idempotency key"
    )


def error_from_close(code: int | None, reason: str | None) -> ProviderError:
    """The provider error for a close the server initiated (or a lost TCP link).

    Args:
        code: the websocket close code (None when the TCP link just broke).
        reason: the close reason.
    """
    detail = f"code {code}" + (f" ({reason})" if reason else "")
    if code == 4001:
        return AuthenticationFailed(f"the server closed the link with {detail}: bad token")
    if code == 4003:
        return Banned(f"the server closed the link with {detail}: banned, do not reconnect")
    if code == 4029:
        try:
            asked = float(reason or "")
        except ValueError:
            asked = DEFAULT_RETRY_AFTER
        wait = retry_after_seconds(asked, DEFAULT_RETRY_AFTER)
        return RateLimited(f"the server closed the link with {detail}", retry_after=wait)
    return TransientError(f"the server closed the link with {detail}; reconnect")


# --- wire frames ------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class _ReceivedMedia:
    # What a server may say of a message's media: never a ``path`` or
    # ``content``, which in a Media mean "upload this local file (or these
    # bytes)", so a product echoing inbound media would upload the node's files.
    kind: MediaKind
    url: str | None = None
    caption: str | None = None
    filename: str | None = None
    mime_type: str | None = None

    def media(self) -> Media | None:
        """The received media; None without a URL (nothing a node can fetch)."""
        if self.url is None:
            return None
        return Media(
            kind=self.kind,
            url=self.url,
            caption=self.caption,
            filename=self.filename,
            mime_type=self.mime_type,
        )


@attrs.frozen(kw_only=True)
class _MessageFrame:
    id: str
    peer: str
    sender: str
    text: str | None = None
    media: _ReceivedMedia | None = None
    reply_to: str | None = None
    timestamp: float | None = None


@attrs.frozen(kw_only=True)
class _EditFrame:
    id: str
    peer: str
    sender: str
    text: str | None = None
    timestamp: float | None = None


@attrs.frozen(kw_only=True)
class _ReceiptFrame:
    id: str
    status: ReceiptStatus
    peer: str = ""
    timestamp: float | None = None
    error: str | None = None


@attrs.frozen(kw_only=True)
class _AckFrame:
    id: str
    message_id: str


@attrs.frozen(kw_only=True)
class _ErrorFrame:
    code: str
    id: str | None = None
    message: str = ""
    retry_after: float | None = None
    peer: str | None = None


_WIRE: Final = cattrs.Converter(forbid_extra_keys=False)


def _number_or_none(value: Any, _: Any) -> float | None:
    """A frame's optional number; an integer past any float (10**400) is none, as
    ``1e400`` and NaN are where they are read: it failed the whole link."""
    if value is None:
        return None
    try:
        return float(value)
    except OverflowError:
        return None


_WIRE.register_structure_hook_func(lambda t: t == (float | None), _number_or_none)


_STATUSES: Final = {status.value: status for status in ReceiptStatus}


def _finite(timestamp: float | None) -> float | None:
    """A frame's timestamp, or None for NaN or an infinity (``1e400``): no store
    keeps such a number, and this protocol has no replay of a refused event."""
    return timestamp if timestamp is None or math.isfinite(timestamp) else None


def _plain_receipt(frame: dict[str, Any], channel_id: str) -> DeliveryReceipt | None:
    """A receipt frame whose fields have their exact types, without the converter.

    One comes per message sent, and the converter would only copy its
    strings. ``None`` for any other (a field of another type, a timestamp
    that is an integer, which may be too large for a float, an unknown
    status): the converter decides what it makes of it, as before, unless
    the status is a word this node does not know (:func:`_new_status`).
    """
    key, status, peer = frame.get("id"), frame.get("status"), frame.get("peer", "")
    timestamp, error = frame.get("timestamp"), frame.get("error")
    if (
        type(key) is not str
        or type(status) is not str
        or type(peer) is not str
        or (timestamp is not None and type(timestamp) is not float)
        or (error is not None and type(error) is not str)
    ):
        return None
    known = _STATUSES.get(status)
    if known is None:
        return None
    return DeliveryReceipt(
        channel_id=channel_id,
        platform_message_id=key,
        peer=peer,
        status=known,
        timestamp=_finite(timestamp),
        error=error,
    )


def _new_status(frame: dict[str, Any]) -> bool:
    """Whether a receipt's status is a word this node does not know.

    A server may add statuses (as WhatsApp's ``deleted`` and ``warning``): such
    a receipt is skipped, for forward compatibility, as unknown frame types are.
    It failed the link as a protocol violation, at every such receipt. A status
    of another type is still a malformed frame.
    """
    status = frame.get("status")
    return type(status) is str and status not in _STATUSES


def _structure(frame: dict[str, Any], cls: type[Any]) -> Any:
    try:
        return _WIRE.structure(frame, cls)
    except Exception as exc:
        problems = "; ".join(cattrs.transform_error(exc, path="$"))
        raise ValueError(f"malformed {frame.get('type')!r} frame: {problems}") from exc


def _media(media: Media) -> dict[str, Any]:
    part: dict[str, Any] = {"kind": media.kind.value}
    if media.url is not None:
        part["url"] = media.url
    else:
        # The shell has read a path into content before the core sees the message.
        assert media.content is not None, "a media path must be read before encoding"
        part["data"] = base64.b64encode(media.content).decode("ascii")
    for name in ("caption", "filename", "mime_type"):
        value = getattr(media, name)
        if value is not None:
            part[name] = value
    return part


def encode_operation(op: Operation) -> str:
    """The frame for ``op``: ``send``, ``edit``, ``delete``, ``typing``, ``read``, ``react``.

    Raises:
        PermanentSendError: ``op`` carries a template, which this protocol has not.
    """
    if isinstance(op, OutboundMessage):
        return encode_send(op)
    frame: dict[str, Any] = {"id": op.idempotency_key, "peer": op.peer}
    if isinstance(op, EditMessage):
        frame.update(type="edit", message_id=op.message_id, text=op.text)
    elif isinstance(op, DeleteMessage):
        frame.update(type="delete", message_id=op.message_id)
    elif isinstance(op, SendTyping):
        frame.update(type="typing", action=op.action.value)
    elif isinstance(op, MarkRead):
        frame.update(type="read", message_id=op.message_id)
    elif isinstance(op, React):
        frame.update(type="react", message_id=op.message_id, emoji=op.emoji, remove=op.remove)
    return _compact(frame)


def encode_send(msg: OutboundMessage) -> str:
    """The ``send`` frame for ``msg``.

    Raises:
        PermanentSendError: ``msg`` carries a template, which this protocol has not.
    """
    if msg.template is not None:
        raise PermanentSendError(
            f"the websocket channel cannot send WhatsApp templates (to {msg.peer!r}); "
            "send text or media instead",
            peer=msg.peer,
        )
    frame: dict[str, Any] = {"type": "send", "id": msg.idempotency_key, "peer": msg.peer}
    if msg.text is not None:
        frame["text"] = msg.text
    if msg.media is not None:
        frame["media"] = _media(msg.media)
    if msg.reply_to is not None:
        frame["reply_to"] = msg.reply_to
    return _compact(frame)


# --- the core -----------------------------------------------------------------------------------


HEARTBEAT_ACK: Final = '{"type":"heartbeat_ack"}'


class WebSocketCore:
    """The protocol state of one websocket channel: frames and time in, actions out.

    Args:
        channel_id: our channel, stamped on every event.
        now: the time the link opened (any monotonic clock, in seconds).
        ping_interval: seconds of silence from the server before a websocket ping;
            None disables keepalive.
        pong_timeout: seconds a pong may take before the link is declared dead.
        liveness_timeout: seconds without an application frame before the link
            is declared dead; None disables it.
        send_timeout: seconds a send may wait for its ack.
    """

    __slots__ = (
        "_acks_graced_to",
        "_awaited_pong",
        "_heard_at",
        "_liveness_graced",
        "_next_ping_at",
        "_pending",
        "_ping_counter",
        "_pong_graced",
        "channel_id",
        "failure",
        "frames_received",
        "ignored_frames",
        "last_frame_at",
        "last_message_id",
        "liveness_timeout",
        "phase",
        "ping_interval",
        "pong_timeout",
        "send_timeout",
        "session",
    )

    def __init__(
        self,
        channel_id: str,
        *,
        now: float,
        ping_interval: float | None,
        pong_timeout: float,
        liveness_timeout: float | None,
        send_timeout: float,
    ) -> None:
        self.channel_id = channel_id
        self.phase = Phase.AWAITING_READY
        self.ping_interval = ping_interval
        self.pong_timeout = pong_timeout
        self.liveness_timeout = liveness_timeout
        self.send_timeout = send_timeout
        self.last_frame_at = now
        self.last_message_id: str | None = None
        self.session: str | None = None
        self.frames_received = 0
        self.ignored_frames = 0
        self._next_ping_at = now + ping_interval if ping_interval is not None else None
        self._heard_at = now  # the last frame from the server, for the keepalive
        self._ping_counter = 0
        self._awaited_pong: tuple[bytes, float] | None = None  # payload, deadline
        self._pending: dict[str, tuple[float, str]] = {}  # key -> (ack deadline, peer)
        # A late timer's grace (see _grace): given to the awaited pong, to the
        # liveness since the last frame, to the acks due up to this time.
        self._pong_graced = False
        self._liveness_graced = False
        self._acks_graced_to = -math.inf
        self.failure: ProviderError | None = None

    def __repr__(self) -> str:
        pong = "" if self._awaited_pong is None else " awaiting-pong"
        return (
            f"<WebSocketCore {self.channel_id} [{self.phase.name} pending={len(self._pending)}"
            f"{pong}]>"
        )

    @property
    def pending(self) -> int:
        """Sends waiting for their ack."""
        return len(self._pending)

    def next_deadline(self) -> float:
        """When :meth:`tick` next has something to do (``inf`` when nothing is armed)."""
        if self.phase in (Phase.CLOSED, Phase.FAILED):
            return _NEVER
        deadline = _NEVER
        if self._pending:
            # Asked after every frame: no scan. Sends are stamped with a
            # non-decreasing ``now`` and one timeout, and the dict keeps
            # insertion order, so the oldest pending ack is due first.
            deadline = next(iter(self._pending.values()))[0]
        if self._awaited_pong is not None:
            deadline = min(deadline, self._awaited_pong[1])
        elif self._next_ping_at is not None and self.ping_interval is not None:
            deadline = min(deadline, max(self._next_ping_at, self._heard_at + self.ping_interval))
        if self.liveness_timeout is not None:
            deadline = min(deadline, self.last_frame_at + self.liveness_timeout)
        return deadline

    # --- inputs -------------------------------------------------------------------------------

    def tick(self, now: float, *, due: float | None = None) -> list[Action]:
        """Fire every timer due at ``now``; ``due``: when the shell's timer was set to fire."""
        if self.phase in (Phase.CLOSED, Phase.FAILED):
            return []
        # Late: as long again as the node looked away, at most a pong's timeout.
        late = 0.0 if due is None else now - due
        if late > LATE_TIMER and self._grace(now, until=now + min(late, self.pong_timeout)):
            return []
        if self._awaited_pong is not None and now >= self._awaited_pong[1]:
            return self._fail(
                TransientError(
                    f"no pong within {self.pong_timeout}s in {self.phase.name}: "
                    "the link is dead; reconnect"
                )
            )
        if self.liveness_timeout is not None and now >= self.last_frame_at + self.liveness_timeout:
            return self._fail(
                TransientError(
                    f"no frame from the server for {now - self.last_frame_at:.3f}s "
                    f"(liveness timeout {self.liveness_timeout}s) in {self.phase.name}: "
                    "the server is hung; reconnect"
                )
            )
        actions: list[Action] = []
        for key, (deadline, _) in list(self._pending.items()):
            if now >= deadline:
                del self._pending[key]
                error = TransientError(
                    f"no ack for send {key!r} within {self.send_timeout}s; "
                    "retry with the same idempotency key"
                )
                actions.append(CompleteSend(key=key, error=error))
        if (
            self._awaited_pong is None
            and self._next_ping_at is not None
            and self.ping_interval is not None
            and now >= self._next_ping_at
        ):
            heard = self._heard_at + self.ping_interval
            if heard > now:  # a frame came within the interval: the link is not silent
                self._next_ping_at = heard
                return actions
            self._ping_counter += 1
            payload = f"sb-{self._ping_counter}".encode()
            self._awaited_pong = (payload, now + self.pong_timeout)
            self._next_ping_at = now + self.ping_interval
            actions.append(SendPing(payload=payload))
        return actions

    def _grace(self, now: float, *, until: float) -> bool:
        """A late timer: what is overdue, and has had no grace yet, fails no sooner
        than ``until``; whether anything had.

        One grace each: the pong until a pong comes, the liveness until a frame
        comes, a pending ack once (acks graced before are the oldest, so the
        dict's deadlines stay in order: no per-send state on the common path).
        """
        graced = False
        pong = self._awaited_pong
        if pong is not None and now >= pong[1] and not self._pong_graced:
            self._awaited_pong = (pong[0], until)
            self._pong_graced = graced = True
        liveness = self.liveness_timeout
        silent = liveness is not None and now >= self.last_frame_at + liveness
        if silent and liveness is not None and not self._liveness_graced:
            self.last_frame_at = until - liveness
            self._liveness_graced = graced = True
        # An ack is graced no later than a send made now would be due (a pong
        # timeout longer than the send timeout): the acks stay due in the order
        # they went, which next_deadline counts on.
        until = min(until, now + self.send_timeout)
        floor = self._acks_graced_to
        for key, (deadline, peer) in self._pending.items():
            if deadline >= until:
                break  # in order: the rest are later still
            if deadline <= now and deadline <= floor:
                continue  # had its grace
            self._pending[key] = (until, peer)
            if deadline <= now:
                self._acks_graced_to = until
                graced = True
        return graced

    def reader_stalled(self, since: float, now: float) -> list[Action]:
        """The shell did not read from ``since`` to ``now``: its consumer was full.

        Whatever the server sent meanwhile (pongs, heartbeats, acks) waits
        unread in the socket, so no timer may blame the link for that time:
        the awaited pong and the liveness are judged from ``now``, and each
        pending ack's deadline moves by the part of the stall it waited
        through. (A slow consumer is backpressure, not a dead link: closing
        it would lose what the server queued on it.)
        """
        stalled = now - since
        if stalled <= 0 or self.phase in (Phase.CLOSED, Phase.FAILED):
            return []
        if self._awaited_pong is not None:
            payload, deadline = self._awaited_pong
            self._awaited_pong = (payload, max(deadline, now + self.pong_timeout))
        self.last_frame_at = max(self.last_frame_at, now)
        if self._next_ping_at is not None:
            self._next_ping_at = max(self._next_ping_at, now)
        # Each ack gets as long again as it waited unread: the whole stall, or
        # since it went (a send made during the stall), which is at most now + the
        # timeout. So the acks stay due in the order they went (next_deadline reads
        # the first), before and after any send made from now on.
        latest = now + self.send_timeout
        for key, (deadline, peer) in self._pending.items():
            self._pending[key] = (min(deadline + stalled, latest), peer)
        return []

    def pong_received(self, payload: bytes, now: float) -> list[Action]:
        """The pong for ``payload`` arrived."""
        if self._awaited_pong is not None and self._awaited_pong[0] == payload:
            self._awaited_pong = None
            self._pong_graced = False
        return []

    def start_send(self, msg: Operation, now: float) -> list[Action]:
        """Begin sending ``msg`` (a message or another operation); its outcome
        arrives later as a :class:`CompleteSend`.

        A key already in flight is not sent twice: the shell waits for the
        first attempt's outcome.

        Raises:
            PermanentSendError: the message cannot be expressed in this protocol.
            TransientError: the link is closed, failed or not ready.
        """
        if self.phase is not Phase.OPEN:
            detail = (
                "it was closed by us"
                if self.phase is Phase.CLOSED
                else f"it failed ({self.failure})"
                if self.phase is Phase.FAILED
                else "the server has not sent 'ready' yet"
            )
            raise TransientError(
                f"cannot send {msg.idempotency_key!r} on {self.channel_id}: {detail}; "
                "retry on a new connection"
            )
        frame = encode_operation(msg)
        if msg.idempotency_key in self._pending:
            return []
        self._pending[msg.idempotency_key] = (now + self.send_timeout, msg.peer)
        return [SendFrame(text=frame)]

    def frame_received(self, data: str | bytes, now: float) -> list[Action]:
        """A text (or binary UTF-8) frame arrived from the server."""
        if self.phase in (Phase.CLOSED, Phase.FAILED):
            return []
        self.last_frame_at = self._heard_at = now
        self.frames_received += 1
        self._liveness_graced = False
        try:
            frame = _parsed(data)
            if not isinstance(frame, dict):
                raise ValueError("a frame must be a JSON object")
            return self._dispatch(frame)
        except ValueError as exc:
            return self._fail(TransientError(f"protocol violation by the server: {exc}; reconnect"))

    def connection_lost(self, code: int | None, reason: str | None) -> list[Action]:
        """The websocket closed (``code`` None: the TCP link broke without a close frame)."""
        if self.phase in (Phase.CLOSED, Phase.FAILED):
            return []
        return self._fail(error_from_close(code, reason))

    def close(self) -> list[Action]:
        """We close the link: pending sends fail as transient, events end quietly."""
        if self.phase in (Phase.CLOSED, Phase.FAILED):
            return []
        self.phase = Phase.CLOSED
        actions: list[Action] = self._abandon_pending("the connection was closed by us")
        actions.append(CloseLink(code=CLOSE_NORMAL, reason="client closing"))
        return actions

    # --- internals ----------------------------------------------------------------------------

    def _dispatch(self, frame: dict[str, Any]) -> list[Action]:
        kind = frame.get("type")
        # First the two frames each message sent brings: its ack and its receipt.
        if kind == "ack":
            # One per message sent: a well-formed ack skips the converter, which
            # would only copy its two strings (and explains a malformed one).
            key, message_id = frame.get("id"), frame.get("message_id")
            if type(key) is not str or type(message_id) is not str:
                a = _structure(frame, _AckFrame)
                key, message_id = a.id, a.message_id
            pending = self._pending.pop(key, None)
            if pending is None:
                self.ignored_frames += 1  # a late ack for a send that timed out
                return []
            result = SendResult(platform_message_id=message_id, peer=pending[1])
            return [CompleteSend(key=key, result=result)]
        if kind == "receipt":
            receipt = _plain_receipt(frame, self.channel_id)
            if receipt is None and _new_status(frame):
                self.ignored_frames += 1  # a status this node does not know: nothing it tracks
                return []
            if receipt is None:  # the converter takes what is not plain (or explains it)
                r = _structure(frame, _ReceiptFrame)
                receipt = DeliveryReceipt(
                    channel_id=self.channel_id,
                    platform_message_id=r.id,
                    peer=r.peer,
                    status=r.status,
                    timestamp=_finite(r.timestamp),
                    error=r.error,
                )
            return [Emit(event=receipt)]
        if kind == "heartbeat":
            return [SendFrame(text=HEARTBEAT_ACK)]
        if kind == "ready":
            if self.phase is not Phase.AWAITING_READY:
                return []
            self.phase = Phase.OPEN
            session = frame.get("session")
            self.session = session if isinstance(session, str) else None
            event = ConnectionStateChanged(
                channel_id=self.channel_id, state=ConnectionState.CONNECTED, detail="ready"
            )
            return [Emit(event=event)]
        if kind == "message":
            m = _structure(frame, _MessageFrame)
            self.last_message_id = m.id
            inbound = InboundMessage(
                channel_id=self.channel_id,
                platform_message_id=m.id,
                peer=m.peer,
                sender=m.sender,
                text=m.text,
                media=m.media.media() if m.media is not None else None,
                reply_to=m.reply_to,
                timestamp=_finite(m.timestamp),
            )
            return [Emit(event=inbound)]
        if kind == "edit":
            e = _structure(frame, _EditFrame)
            edited = MessageEdited(
                channel_id=self.channel_id,
                platform_message_id=e.id,
                peer=e.peer,
                sender=e.sender,
                text=e.text,
                timestamp=_finite(e.timestamp),
            )
            return [Emit(event=edited)]
        if kind == "error":
            err = _structure(frame, _ErrorFrame)
            error = error_from_code(
                err.code, err.message, retry_after=err.retry_after, peer=err.peer
            )
            if err.id is None:
                return self._fail(error)
            if self._pending.pop(err.id, None) is None:
                self.ignored_frames += 1
                return []
            return [CompleteSend(key=err.id, error=error)]
        self.ignored_frames += 1  # unknown types are skipped, for forward compatibility
        return []

    def _fail(self, error: ProviderError) -> list[Action]:
        self.phase = Phase.FAILED
        self.failure = error
        actions: list[Action] = self._abandon_pending(f"the link failed: {error}")
        actions.append(Fail(error=error))
        return actions

    def _abandon_pending(self, why: str) -> list[Action]:
        actions: list[Action] = [
            CompleteSend(key=key, error=unacknowledged(key, why)) for key in self._pending
        ]
        self._pending.clear()
        self._awaited_pong = None
        return actions
