"""Discord gateway v10 as a sans-IO state machine.

Design:
- :class:`GatewayCore` owns every protocol decision: when to heartbeat,
  whether to Identify or Resume, what a close code means, when a connection
  is a zombie, how many frames may go out. It never touches a socket or a
  clock: decoded frames and ``now`` come in, a list of actions goes out
  (:class:`SendFrame`, :class:`CloseSocket`, :class:`EmitEvent`,
  :class:`Reconnect`, :class:`Fail`), and :meth:`GatewayCore.next_deadline`
  tells the shell when to call :meth:`GatewayCore.timer` (the timer is pulled,
  as in h11, so there is one source of truth for it instead of a
  "schedule heartbeat" action that could go stale).
- One core lives for one :class:`~providers.base.Connection` across several
  sockets: op 7, op 9, zombies and resumable close codes make the shell open
  a new socket (:class:`Reconnect`), while fatal codes end it (:class:`Fail`).
  After ``max_reconnects`` consecutive sockets that ended before a heartbeat
  was acknowledged in session (a gateway that answers RESUMED and then drops
  each socket at once counts too) the core gives up with a
  ``TransientError`` so the channel actor's backoff takes over.
- Close codes (https://discord.com/developers/docs/topics/opcodes-and-status-codes)::

      4004                      AuthenticationFailed   (never retry)
      4014                      MissingPermissions     (disallowed intents)
      4010 4011 4012 4013       FatalError             (shard / version / intents)
      4007 4009                 identify anew           (session is gone)
      anything else, or none    resume                  (if we have a session)

- Every wait for the gateway is bounded: Hello within ``hello_timeout`` of
  the socket opening, READY or RESUMED within ``session_timeout`` of the
  Identify or Resume (or of the last dispatch the Resume replayed). Past
  either, the socket is closed resumably and the connection fails with a
  ``TransientError``, so the channel actor's backoff opens a new one (which
  resumes the session, if it has one). A gateway that acknowledged
  heartbeats but never answered a Resume held the connection for ever.
- Sending is limited to 120 frames per 60 s per socket (Discord closes with
  4008 beyond that). Frames queued with :meth:`GatewayCore.queue_frame` wait
  for room; Identify/Resume/heartbeats always go out and ``HEARTBEAT_RESERVE``
  slots are kept for them, which covers heartbeats at any real interval.
- A heartbeat timer that fires late (more than
  :data:`~providers.base.LATE_TIMER` after it was due: our own loop was
  busy) with the ACK still awaited does not call the socket a zombie at
  once: the ACK may be unread in the socket. The shell reads for as long
  again (at most a heartbeat interval), once per ACK, and the timer judges
  then; an ACK read meanwhile sends the held-back heartbeat at once.
"""

from __future__ import annotations

import enum
import math
import random
from collections import deque
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import attrs

from .._json import compact as _compact
from .._json import parsed as _parsed
from ..base import (
    LATE_TIMER,
    AuthenticationFailed,
    ConnectionState,
    ConnectionStateChanged,
    Event,
    FatalError,
    MissingPermissions,
    ProviderError,
    RateLimited,
    RateLimitScope,
    SessionState,
    TransientError,
)
from .compress import Compression
from .wire import API_VERSION, DEFAULT_INTENTS, Op, PayloadError, SessionStartLimit, message_event

__all__ = [
    "FATAL_CLOSE_CODES",
    "REIDENTIFY_CLOSE_CODES",
    "RESUMABLE_CLOSE_CODE",
    "Action",
    "CloseDecision",
    "CloseSocket",
    "EmitEvent",
    "Fail",
    "GatewayCore",
    "GatewayState",
    "Reconnect",
    "SendFrame",
    "SendLimiter",
    "classify_close",
]

SEND_LIMIT: Final = 120  # frames per SEND_WINDOW per socket
SEND_WINDOW: Final = 60.0  # seconds
HEARTBEAT_RESERVE: Final = 5  # frames of SEND_LIMIT kept for heartbeats / identify
HELLO_TIMEOUT: Final = 20.0  # seconds from socket open to Hello
# Seconds from an Identify or a Resume to READY or RESUMED (a replayed dispatch
# during a Resume starts them again: a long replay is progress, not silence).
SESSION_TIMEOUT: Final = 20.0
INVALID_SESSION_DELAY: Final = (1.0, 5.0)  # seconds, uniform, before identifying anew
# Discord admits one Identify per 5 s per max_concurrency bucket; a single
# connection is always in bucket 0 (shard 0), so it keeps its own identifies
# 5 s apart whatever max_concurrency says (which only matters for sharding).
IDENTIFY_SPACING: Final = 5.0  # seconds
BUDGET_WINDOW_MS: Final = 86_400_000  # the identify budget resets within a day (ms)
MAX_RECONNECTS: Final = 5  # consecutive sockets without READY/RESUMED
RESUMABLE_CLOSE_CODE: Final = 4000  # anything but 1000/1001 keeps the session
NORMAL_CLOSE_CODE: Final = 1000  # invalidates the session

FATAL_CLOSE_CODES: Final[Mapping[int, tuple[type[FatalError], str]]] = {
    4004: (AuthenticationFailed, "authentication failed: the bot token is invalid or revoked"),
    4010: (FatalError, "invalid shard was sent in Identify"),
    4011: (FatalError, "sharding is required for this bot"),
    4012: (FatalError, "invalid gateway API version"),
    4013: (FatalError, "invalid intents were sent in Identify"),
    4014: (
        MissingPermissions,
        "disallowed intents: enable the privileged intents for this bot in the developer "
        "portal, or stop requesting them",
    ),
}
REIDENTIFY_CLOSE_CODES: Final[Mapping[int, str]] = {
    4007: "invalid sequence number sent when resuming",
    4009: "session timed out",
}


class CloseDecision(enum.Enum):
    """What a close code from the gateway asks of the client."""

    RESUME = "resume"
    IDENTIFY = "identify"
    FATAL = "fatal"


def classify_close(code: int | None) -> CloseDecision:
    """Decide what a gateway close code means (``None``: the link dropped without one)."""
    if code in FATAL_CLOSE_CODES:
        return CloseDecision.FATAL
    if code in REIDENTIFY_CLOSE_CODES:
        return CloseDecision.IDENTIFY
    return CloseDecision.RESUME


class GatewayState(enum.Enum):
    """Where the core is in the gateway lifecycle."""

    DISCONNECTED = "disconnected"  # no socket (before the first, between two)
    AWAITING_HELLO = "awaiting_hello"
    IDENTIFYING = "identifying"
    RESUMING = "resuming"
    CONNECTED = "connected"  # READY or RESUMED received
    CLOSED = "closed"  # closed by our owner
    FAILED = "failed"  # a fatal error ended it


# --- actions ---------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class SendFrame:
    """Send ``payload`` as one JSON TEXT frame."""

    payload: Mapping[str, Any]

    def text(self) -> str:
        """The frame as JSON text."""
        return _compact(self.payload)


@attrs.frozen(kw_only=True)
class CloseSocket:
    """Close the current socket with ``code`` (4000: keep the session; 1000: end it)."""

    code: int
    reason: str


@attrs.frozen(kw_only=True)
class EmitEvent:
    """Hand ``event`` to the connection's consumer."""

    event: Event


@attrs.frozen(kw_only=True)
class Reconnect:
    """Open a new socket to :meth:`GatewayCore.connect_url` after ``delay`` seconds."""

    resume: bool
    delay: float = 0.0


@attrs.frozen(kw_only=True, eq=False)
class Fail:
    """The connection is over: raise ``error`` to the consumer."""

    error: ProviderError


Action = SendFrame | CloseSocket | EmitEvent | Reconnect | Fail


# --- the send limit -------------------------------------------------------------------------


class SendLimiter:
    """A sliding-window count of frames sent on one socket."""

    def __init__(self, limit: int = SEND_LIMIT, window: float = SEND_WINDOW) -> None:
        if limit <= HEARTBEAT_RESERVE or window <= 0:
            raise ValueError(f"need limit > {HEARTBEAT_RESERVE} and window > 0")
        self.limit = limit
        self.window = window
        self._sent: deque[float] = deque()

    def __repr__(self) -> str:
        return f"<SendLimiter {len(self._sent)}/{self.limit} per {self.window:g}s>"

    def _expire(self, now: float) -> None:
        while self._sent and self._sent[0] <= now - self.window:
            self._sent.popleft()

    def used(self, now: float) -> int:
        """Frames counted in the window ending at ``now``."""
        self._expire(now)
        return len(self._sent)

    def has_room(self, now: float, *, reserve: int = 0) -> bool:
        """Whether one more frame fits while leaving ``reserve`` slots free."""
        return self.used(now) < self.limit - reserve

    def record(self, now: float) -> None:
        """Count a frame sent at ``now``."""
        self._sent.append(now)

    def next_slot(self, *, reserve: int = 0) -> float:
        """When a frame that must leave ``reserve`` slots free may go out (-inf: now)."""
        excess = len(self._sent) - (self.limit - reserve)
        if excess < 0:
            return -math.inf
        return self._sent[excess] + self.window

    def reset(self) -> None:
        """Forget everything (a new socket has a fresh budget)."""
        self._sent.clear()


# --- the core ---------------------------------------------------------------------------


def _text(value: Any) -> str | None:
    """A session field as the gateway (or a checkpoint) gave it, if it is a non-empty string."""
    return value if isinstance(value, str) and value else None


class GatewayCore:
    """The Discord gateway protocol for one connection, without I/O.

    Args:
        token: the bot token (sent in Identify / Resume only).
        channel_id: our channel id, stamped on emitted events.
        gateway_url: the URL from ``GET /gateway/bot`` (used to identify).
        intents: the gateway intents bit set.
        properties: Identify's ``properties`` (os, browser, device).
        session: state of an earlier connection to resume.
        session_start_limit: the identify budget from ``GET /gateway/bot``.
        now: the time ``session_start_limit`` was read.
        rng: randomness for the heartbeat jitter and the op 9 delay.
        invalid_session_delay: (low, high) seconds to wait before identifying anew.
        send_limit: frames per ``send_window`` seconds.
        send_window: seconds.
        hello_timeout: seconds from socket open to Hello.
        session_timeout: seconds from an Identify or a Resume to READY or RESUMED.
        max_reconnects: consecutive sockets without a session before giving up.
        compress: the transport compression to ask for (``zlib-stream`` or
            ``zstd-stream``); the shell decompresses (:mod:`.compress`).

    Raises:
        ValueError: ``session`` was written by another provider.
    """

    def __init__(
        self,
        *,
        token: str,
        channel_id: str,
        gateway_url: str,
        intents: int = DEFAULT_INTENTS,
        properties: Mapping[str, str] | None = None,
        session: SessionState | None = None,
        session_start_limit: SessionStartLimit | None = None,
        now: float = 0.0,
        rng: random.Random | None = None,
        invalid_session_delay: tuple[float, float] = INVALID_SESSION_DELAY,
        send_limit: int = SEND_LIMIT,
        send_window: float = SEND_WINDOW,
        hello_timeout: float = HELLO_TIMEOUT,
        session_timeout: float = SESSION_TIMEOUT,
        max_reconnects: int = MAX_RECONNECTS,
        compress: Compression | None = None,
    ) -> None:
        self._token = token
        self.compress = compress
        self.channel_id = channel_id
        self.gateway_url = gateway_url
        self.intents = int(intents)
        self.properties = dict(
            properties or {"os": "linux", "browser": "switchboard", "device": "switchboard"}
        )
        self._rng = rng or random.Random()
        self._invalid_session_delay = invalid_session_delay
        self._hello_timeout = hello_timeout
        self._session_timeout = session_timeout
        self._max_reconnects = max_reconnects
        self.limiter = SendLimiter(send_limit, send_window)
        self._queue: deque[dict[str, Any]] = deque()

        self.state = GatewayState.DISCONNECTED
        self.session_id: str | None = None
        self.seq: int | None = None
        self.resume_gateway_url: str | None = None
        self.user_id: str | None = None
        if session is not None:
            if session.provider != "discord":
                raise ValueError(
                    f"cannot resume a {session.provider!r} session on the discord provider; "
                    "pass the SessionState this provider exported, or None"
                )
            # A checkpoint is read as READY is: what is not of its type is dropped
            # (an Identify then starts a new session), never resumed with.
            self.session_id = _text(session.data.get("session_id"))
            seq = session.data.get("seq")
            self.seq = seq if isinstance(seq, int) and not isinstance(seq, bool) else None
            self.resume_gateway_url = self._resume_url(session.data.get("resume_gateway_url"))
            self.user_id = _text(session.data.get("user_id"))

        self.heartbeat_interval: float | None = None
        self.latency: float | None = None
        self._next_heartbeat: float | None = None
        self._awaiting_ack = False
        self._graced = False  # a late timer's grace, given since the last ACK
        self._heartbeat_sent_at: float | None = None
        self._hello_deadline: float | None = None
        self._session_deadline: float | None = None  # for READY / RESUMED
        # A late timer's grace for the Hello or the session deadline, given since
        # that deadline was last set (the node was busy: the answer may be unread).
        self._deadline_graced = False
        self._last_identify: float | None = None
        self._identify_at: float | None = None
        self._reconnects = 0
        self.identifies = 0
        self.resumes = 0
        self._budget: SessionStartLimit | None = None
        self._budget_reset_at = 0.0
        if session_start_limit is not None:
            self.set_session_start_limit(session_start_limit, now)

    def __repr__(self) -> str:
        session = self.session_id[:8] if self.session_id else None
        interval = f"{self.heartbeat_interval:g}s" if self.heartbeat_interval else None
        return (
            f"<GatewayCore discord:{self.channel_id} [{self.state.name} seq={self.seq} "
            f"session={session} heartbeat={interval} queued={len(self._queue)}]>"
        )

    # --- queries ---------------------------------------------------------------------

    @property
    def resumable(self) -> bool:
        """Whether the next socket should Resume rather than Identify."""
        return bool(self.session_id and self.resume_gateway_url and self.seq is not None)

    def connect_url(self) -> str:
        """Where the next socket goes: the resume URL when resuming, with ``v`` and ``encoding``."""
        base = self.resume_gateway_url if self.resumable else self.gateway_url
        assert base is not None
        parts = urlsplit(base)
        query = dict(parse_qsl(parts.query))
        query.update({"v": str(API_VERSION), "encoding": "json"})
        if self.compress is not None:
            query["compress"] = self.compress
        return urlunsplit(parts._replace(path=parts.path or "/", query=urlencode(query)))

    def session_state(self) -> SessionState:
        """What a later connection needs to resume (empty once the session is gone)."""
        if not self.resumable:
            return SessionState(provider="discord", data={})
        return SessionState(
            provider="discord",
            data={
                "session_id": self.session_id,
                "seq": self.seq,
                "resume_gateway_url": self.resume_gateway_url,
                "user_id": self.user_id,
            },
        )

    def next_deadline(self) -> float | None:
        """When :meth:`timer` must run next (``None``: nothing is scheduled)."""
        deadlines: list[float] = []
        if self.state is GatewayState.AWAITING_HELLO and self._hello_deadline is not None:
            deadlines.append(self._hello_deadline)
        if self.state is GatewayState.IDENTIFYING and self._identify_at is not None:
            deadlines.append(self._identify_at)
        if self._awaiting_session() and self._session_deadline is not None:
            deadlines.append(self._session_deadline)
        if self._socket_live() and self._next_heartbeat is not None:
            deadlines.append(self._next_heartbeat)
        if self.state is GatewayState.CONNECTED and self._queue:
            deadlines.append(self.limiter.next_slot(reserve=HEARTBEAT_RESERVE))
        return min(deadlines) if deadlines else None

    # --- inputs ------------------------------------------------------------------------

    def set_session_start_limit(self, limit: SessionStartLimit, now: float) -> None:
        """Record the identify budget read at ``now`` from ``GET /gateway/bot``."""
        self._budget = limit
        # At most a day (Discord's own window): 10**400 ms raised OverflowError here,
        # out of the connect, at every restart.
        self._budget_reset_at = now + min(max(0, limit.reset_after), BUDGET_WINDOW_MS) / 1000

    def connection_made(self, now: float) -> list[Action]:
        """A new socket is open; wait for Hello."""
        self.state = GatewayState.AWAITING_HELLO
        self._hello_deadline = now + self._hello_timeout
        self._session_deadline = None
        self._deadline_graced = False
        self._identify_at = None
        self._next_heartbeat = None
        self._awaiting_ack = False
        self._graced = False
        self.limiter.reset()
        return []

    def receive(self, data: str | bytes, now: float) -> list[Action]:
        """Handle one frame from the gateway."""
        if not self._socket_live() and self.state is not GatewayState.AWAITING_HELLO:
            return []
        try:
            frame = _parsed(data)
            op = frame["op"]
        except (ValueError, TypeError, KeyError):
            return self._drop_socket(f"undecodable gateway frame {data[:80]!r}")
        d = frame.get("d")
        if op == Op.HELLO:
            return self._on_hello(d, now)
        if op == Op.HEARTBEAT:
            return [self._heartbeat(now)]
        if op == Op.HEARTBEAT_ACK:
            self._awaiting_ack = False
            if self.state is GatewayState.CONNECTED:
                # A socket that lived a heartbeat in session: the sockets before it
                # no longer count. (At READY/RESUMED a gateway that then drops each
                # socket at once had sockets opened in a storm, with no backoff.)
                self._reconnects = 0
            if self._graced:  # the heartbeat held back for it is overdue: now
                self._graced = False
                if self._next_heartbeat is not None:
                    self._next_heartbeat = min(self._next_heartbeat, now)
            if self._heartbeat_sent_at is not None:
                self.latency = now - self._heartbeat_sent_at
            return []
        if op == Op.DISPATCH:
            if isinstance(frame.get("s"), int):
                self.seq = frame["s"]
            if self._session_deadline is not None:  # the gateway answers: wait on
                self._session_deadline = now + self._session_timeout
                self._deadline_graced = False
            return self._on_dispatch(frame.get("t"), d, now)
        if op == Op.RECONNECT:
            return self._drop_socket("the gateway asked us to reconnect (op 7)")
        if op == Op.INVALID_SESSION:
            if d is True:
                return self._drop_socket("invalid session (op 9), resumable")
            self._forget_session()
            low, high = self._invalid_session_delay
            return self._drop_socket(
                "invalid session (op 9), not resumable", delay=self._rng.uniform(low, high)
            )
        return []

    def protocol_error(self, why: str, now: float) -> list[Action]:
        """The shell could not read the socket's frames (a broken compression stream)."""
        if not self._socket_live() and self.state is not GatewayState.AWAITING_HELLO:
            return []
        return self._drop_socket(why)

    def timer(self, now: float, *, due: float | None = None) -> list[Action]:
        """Run whatever :meth:`next_deadline` said was due (``due``: when it was)."""
        late = 0.0 if due is None else now - due
        hello_due = self._hello_deadline is not None and now >= self._hello_deadline
        if self.state is GatewayState.AWAITING_HELLO and hello_due and self._grace(late):
            assert self._hello_deadline is not None
            self._hello_deadline = now + min(late, self._hello_timeout)
        elif self.state is GatewayState.AWAITING_HELLO and hello_due:
            self.state = GatewayState.DISCONNECTED
            return [
                CloseSocket(code=RESUMABLE_CLOSE_CODE, reason="no Hello"),
                Fail(
                    error=TransientError(
                        f"the Discord gateway sent no Hello within {self._hello_timeout:g}s "
                        "of connecting; reconnect later"
                    )
                ),
            ]
        session_due = self._session_deadline is not None and now >= self._session_deadline
        if self._awaiting_session() and session_due and self._grace(late):
            self._session_deadline = now + min(late, self._session_timeout)
        elif self._awaiting_session() and session_due:
            awaited = "RESUMED" if self.state is GatewayState.RESUMING else "READY"
            asked = "Resume" if self.state is GatewayState.RESUMING else "Identify"
            self.state = GatewayState.DISCONNECTED
            self._session_deadline = None
            return [
                CloseSocket(code=RESUMABLE_CLOSE_CODE, reason=f"no {awaited}"),
                Fail(
                    error=TransientError(
                        f"the Discord gateway sent no {awaited} within "
                        f"{self._session_timeout:g}s of our {asked}; reconnect later"
                    )
                ),
            ]
        actions: list[Action] = []
        if self._socket_live() and self._next_heartbeat is not None and now >= self._next_heartbeat:
            if self._awaiting_ack and (late <= LATE_TIMER or self._graced):
                return self._drop_socket(
                    "zombied connection: no heartbeat ACK before the next heartbeat was due"
                )
            if self._awaiting_ack:
                # Our loop was busy past the heartbeat: the ACK may be unread in
                # the socket. Look as long again (at most an interval) before
                # calling it a zombie, once per ACK.
                assert self.heartbeat_interval is not None
                self._graced = True
                self._next_heartbeat = now + min(late, self.heartbeat_interval)
            else:
                actions.append(self._heartbeat(now))
                assert self.heartbeat_interval is not None
                self._next_heartbeat = now + self.heartbeat_interval
        identify_due = self._identify_at is not None and now >= self._identify_at
        if self.state is GatewayState.IDENTIFYING and identify_due:
            actions.extend(self._identify(now))
        if self.state is GatewayState.CONNECTED:
            actions.extend(self._flush(now))
        return actions

    def connection_lost(self, code: int | None, now: float, reason: str = "") -> list[Action]:
        """The socket ended; ``code`` is the gateway's close code (``None``: no close frame)."""
        if not self._socket_live() and self.state is not GatewayState.AWAITING_HELLO:
            return []  # we closed it ourselves and already decided what comes next
        decision = classify_close(code)
        shown = f"close code {code}" if code is not None else "no close code"
        if decision is CloseDecision.FATAL:
            assert code is not None
            error_class, meaning = FATAL_CLOSE_CODES[code]
            self.state = GatewayState.FAILED
            self._forget_session()
            return [
                Fail(
                    error=error_class(
                        f"the Discord gateway closed the connection with {code}: {meaning}; "
                        "not reconnecting"
                    )
                )
            ]
        if decision is CloseDecision.IDENTIFY:
            assert code is not None
            self._forget_session()
            return self._lost(f"gateway closed with {code} ({REIDENTIFY_CLOSE_CODES[code]})")
        return self._lost(f"gateway connection lost ({shown}{': ' + reason if reason else ''})")

    def close(self, *, resumable: bool = True) -> list[Action]:
        """Our owner closes the connection; ``resumable`` keeps the session."""
        if self.state in (GatewayState.CLOSED, GatewayState.FAILED):
            return []
        self.state = GatewayState.CLOSED
        self._queue.clear()
        if resumable:
            return [CloseSocket(code=RESUMABLE_CLOSE_CODE, reason="closing, will resume")]
        self._forget_session()
        return [CloseSocket(code=NORMAL_CLOSE_CODE, reason="closing")]

    def queue_frame(self, op: int, d: Any, now: float) -> list[Action]:
        """Send a frame of our own (presence update...) within the 120/60 s limit."""
        self._queue.append({"op": int(op), "d": d})
        return self._flush(now) if self.state is GatewayState.CONNECTED else []

    # --- internals -------------------------------------------------------------------

    def _awaiting_session(self) -> bool:
        """Whether an Identify or a Resume went out and READY / RESUMED has not come."""
        return self.state in (GatewayState.IDENTIFYING, GatewayState.RESUMING)

    def _socket_live(self) -> bool:
        return self.state in (
            GatewayState.IDENTIFYING,
            GatewayState.RESUMING,
            GatewayState.CONNECTED,
        )

    def _resume_url(self, value: Any) -> str | None:
        """A resume URL the token may go to, or None: a websocket URL over TLS
        (plain ``ws://`` only where the configured gateway is plain, an emulator's)."""
        if not isinstance(value, str):
            return None
        try:
            parts, configured = urlsplit(value), urlsplit(self.gateway_url)
        except ValueError:  # an unreadable host ("wss://[")
            return None
        allowed = ("wss", "ws") if configured.scheme == "ws" else ("wss",)
        return value if parts.scheme in allowed and parts.netloc else None

    def _forget_session(self) -> None:
        self.session_id = None
        self.seq = None
        self.resume_gateway_url = None

    def _send(self, payload: dict[str, Any], now: float) -> SendFrame:
        self.limiter.record(now)
        return SendFrame(payload=payload)

    def _heartbeat(self, now: float) -> SendFrame:
        self._awaiting_ack = True
        self._heartbeat_sent_at = now
        return self._send({"op": int(Op.HEARTBEAT), "d": self.seq}, now)

    def _flush(self, now: float) -> list[Action]:
        sent: list[Action] = []
        while self._queue and self.limiter.has_room(now, reserve=HEARTBEAT_RESERVE):
            sent.append(self._send(self._queue.popleft(), now))
        return sent

    def _lost(self, why: str, *, delay: float = 0.0) -> list[Action]:
        self.state = GatewayState.DISCONNECTED
        self._reconnects += 1
        actions: list[Action] = [
            EmitEvent(
                event=ConnectionStateChanged(
                    channel_id=self.channel_id, state=ConnectionState.DISCONNECTED, detail=why
                )
            )
        ]
        if self._reconnects > self._max_reconnects:
            actions.append(
                Fail(
                    error=TransientError(
                        f"{self._reconnects} gateway sockets in a row ended before READY or "
                        f"RESUMED (last: {why}); back off before opening a new connection"
                    )
                )
            )
        else:
            actions.append(Reconnect(resume=self.resumable, delay=delay))
        return actions

    def _drop_socket(self, why: str, *, delay: float = 0.0) -> list[Action]:
        close = CloseSocket(code=RESUMABLE_CLOSE_CODE, reason=why[:120])
        return [close, *self._lost(why, delay=delay)]

    def _on_hello(self, d: Any, now: float) -> list[Action]:
        if self.state is not GatewayState.AWAITING_HELLO:
            return []
        interval = d.get("heartbeat_interval") if isinstance(d, dict) else None
        if not isinstance(interval, int | float) or interval <= 0:
            return self._drop_socket(f"Hello without a valid heartbeat_interval: {d!r}")
        self.heartbeat_interval = interval / 1000
        self._hello_deadline = None
        self._next_heartbeat = now + self.heartbeat_interval * self._rng.random()
        self._awaiting_ack = False
        if self.resumable:
            self.state = GatewayState.RESUMING
            self.resumes += 1
            self._session_deadline = now + self._session_timeout
            self._deadline_graced = False
            resume = {"token": self._token, "session_id": self.session_id, "seq": self.seq}
            return [self._send({"op": int(Op.RESUME), "d": resume}, now)]
        self.state = GatewayState.IDENTIFYING
        if self._last_identify is not None and now < self._last_identify + IDENTIFY_SPACING:
            # Too soon after the last one: heartbeat meanwhile, identify when allowed.
            self._identify_at = self._last_identify + IDENTIFY_SPACING
            return []
        return self._identify(now)

    def _identify(self, now: float) -> list[Action]:
        self._identify_at = None
        refused = self._take_identify(now)
        if refused is not None:
            self.state = GatewayState.FAILED
            return [CloseSocket(code=NORMAL_CLOSE_CODE, reason="identify budget spent"), refused]
        self._last_identify = now
        self.identifies += 1
        self._session_deadline = now + self._session_timeout
        self._deadline_graced = False
        identify = {"token": self._token, "intents": self.intents, "properties": self.properties}
        return [self._send({"op": int(Op.IDENTIFY), "d": identify}, now)]

    def _grace(self, late: float) -> bool:
        """Whether a Hello or session deadline that came ``late`` (the node's loop
        was busy, or the shell waited for its consumer: a replay read slowly)
        waits as long again, at most its timeout, before failing the link: once
        for each time the deadline was set (see ``LATE_TIMER``)."""
        if late <= LATE_TIMER or self._deadline_graced:
            return False
        self._deadline_graced = True
        return True

    def _take_identify(self, now: float) -> Fail | None:
        if self._budget is None:
            return None
        if now >= self._budget_reset_at:
            self._budget = attrs.evolve(self._budget, remaining=self._budget.total)
            self._budget_reset_at = now + 86_400.0  # Discord's period; refreshed on next read
        if self._budget.remaining <= 0:
            retry_after = max(0.0, self._budget_reset_at - now)
            return Fail(
                error=RateLimited(
                    f"no identifies left today (0 of {self._budget.total}); Discord resets the "
                    f"session start limit in {retry_after:.0f}s",
                    retry_after=retry_after,
                    scope=RateLimitScope.GLOBAL,
                )
            )
        self._budget = attrs.evolve(self._budget, remaining=self._budget.remaining - 1)
        return None

    def _on_dispatch(self, name: Any, d: Any, now: float) -> list[Action]:
        if not isinstance(d, dict):
            return []
        if name == "READY":
            self.session_id = _text(d.get("session_id"))
            self.resume_gateway_url = self._resume_url(d.get("resume_gateway_url"))
            user = d.get("user")
            if isinstance(user, dict) and user.get("id") is not None:
                self.user_id = str(user["id"])
            return self._connected(ConnectionState.CONNECTED, now)
        if name == "RESUMED":
            return self._connected(ConnectionState.RESUMED, now)
        try:
            event = message_event(name, d, channel_id=self.channel_id, own_user_id=self.user_id)
        except PayloadError:
            return []  # one malformed message must not cost the session
        return [EmitEvent(event=event)] if event is not None else []

    def _connected(self, state: ConnectionState, now: float) -> list[Action]:
        self.state = GatewayState.CONNECTED
        self._session_deadline = None
        event = ConnectionStateChanged(channel_id=self.channel_id, state=state)
        return [EmitEvent(event=event), *self._flush(now)]
