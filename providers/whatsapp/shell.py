"""The trio I/O shell of the WhatsApp provider: httpx out, webhooks in.

Design:
- WhatsApp has no socket to keep open: sends are HTTPS calls, and inbound
  traffic arrives on a webhook served by the node's ops HTTP server. A
  :class:`WhatsAppConnection` therefore owns an ``httpx.AsyncClient`` and a
  bounded memory channel: :meth:`WhatsAppConnection.handle_webhook` (called
  by the ops server) feeds it, :meth:`WhatsAppConnection.events` drains it.
- All protocol decisions live in :mod:`.core` and :mod:`.webhook`; this
  module only performs the requests they describe and maps httpx's errors at
  the boundary, through one table (``WhatsAppConnection._errors``) and
  :class:`~providers._exceptions.map_exceptions`, chained to their cause.
- Backpressure goes back to Meta: when the event buffer cannot take a whole
  notification, the webhook answers 503 and queues nothing, and Meta
  redelivers later (it retries failed deliveries for days). Redeliveries
  and Meta's own duplicates are removed downstream by message id.
- The webhook path has no session, so :meth:`WhatsAppConnection.session_state`
  is empty and ``resumable`` changes nothing.
"""

from __future__ import annotations

import functools
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Final

import httpx
import trio

from providers._exceptions import ExceptionMap, map_exceptions
from providers._http import Answer, shared_ssl_context, without_token
from providers._http import fetch as _fetch
from providers._pool import pool_limits
from providers.base import (
    ChannelConfig,
    ConnectionState,
    ConnectionStateChanged,
    Event,
    FatalError,
    InboundMessage,
    OutboundMessage,
    PermanentSendError,
    PlatformLimits,
    ProviderError,
    SendResult,
    SessionState,
    TransientError,
    Unsupported,
)
from providers.media import read_upload
from providers.operations import DeleteMessage, EditMessage, MarkRead, React, SendTyping

from . import core, webhook
from .core import WHATSAPP_LIMITS, ApiRequest, WhatsAppSettings

__all__ = ["WhatsAppConnection", "WhatsAppProvider"]

log = logging.getLogger("switchboard.providers.whatsapp")

CLOSE_GRACE: Final = 5.0  # seconds for in-flight requests when the block ends
LAST_INBOUND_KEPT: Final = 10_000  # peers whose last message id is kept (for typing)


class WhatsAppConnection:
    """One WhatsApp Cloud API number, as a :class:`~providers.base.Connection`.

    Create it with :meth:`WhatsAppProvider.open_connection`.
    """

    # A send on its way at close() still gets its answer until the block ends
    # (which closes the HTTP client): the channel waits for it (see Connection).
    answers_after_close = True

    def __init__(self, settings: WhatsAppSettings, client: httpx.AsyncClient) -> None:
        self.settings = settings
        self._client = client
        self._send_events, self._receive_events = trio.open_memory_channel[Event](
            settings.event_buffer
        )
        self._closed = False
        self._sent = 0
        self._received = 0
        self._upload_limit = WHATSAPP_LIMITS.max_upload_bytes
        # Typing shows only as part of a read mark of a message: the last one per peer.
        self._last_inbound: OrderedDict[str, str] = OrderedDict()
        self._signer = webhook.signer_id(settings.app_secret)
        self._dropped = 0  # malformed items of signed notifications, not yet taken
        self._take_at_once: Callable[[Event], bool] | None = None
        # Events put in the buffer, and those the consumer came back from (it
        # reads on only once the last is kept): a notification is answered 200
        # once every event of it was kept, not when it was buffered.
        self._buffered = 0
        self._kept = 0
        self._kept_lot = trio.lowlevel.ParkingLot()
        self._answer_when_kept = False

    def __repr__(self) -> str:
        state = "CLOSED" if self._closed else "OPEN"
        queued = self._send_events.statistics().current_buffer_used
        return (
            f"<WhatsAppConnection {self.settings.channel_id} "
            f"number={self.settings.phone_number_id} [{state} sent={self._sent} "
            f"received={self._received} queued={queued}]>"
        )

    # --- inbound -------------------------------------------------------------------------

    async def events(self) -> AsyncIterator[Event]:
        """Inbound events from the webhook, until :meth:`close`.

        The first event is ``ConnectionStateChanged(CONNECTED)``. Receipts come
        as they arrive, possibly out of order: keep the furthest per message.
        """
        try:
            async for event in self._receive_events:
                yield event
                self._kept += 1  # the consumer is back for more: done with this one
                if self._kept_lot:
                    self._kept_lot.unpark_all()
        except trio.ClosedResourceError:
            return  # our own close() raced the iteration: end quietly

    @property
    def answers_when_kept(self) -> bool:
        """:meth:`answer_when_kept` was called: receipts are kept before the reader
        reads on too (no ``take_events_at_once``, no write behind)."""
        return self._answer_when_kept

    def answer_when_kept(self) -> None:
        """Answer each notification only once the consumer of :meth:`events` came
        back from all its events (one that reads on only once the last is kept:
        the ChannelActor). Else it is answered 200 once they are buffered."""
        self._answer_when_kept = True

    def take_events_at_once(self, take: Callable[[Event], bool] | None) -> None:
        """Offer each event to ``take`` in the webhook's task first (``None``: stop).

        Offered only while no event waits ahead of it and the consumer of
        :meth:`events` waits for one, so order holds; ``take`` returns True
        for an event it took (it never reaches :meth:`events`), and must
        neither block nor raise. Meta hears 200 once each event of the
        notification was taken so, or kept by the consumer of :meth:`events`.
        """
        self._take_at_once = take

    async def handle_webhook(
        self,
        method: str,
        query: Mapping[str, str],
        headers: Mapping[str, str],
        body: bytes,
        *,
        signatures: webhook.PostSignatures | None = None,
    ) -> tuple[int, bytes]:
        """Answer one webhook request addressed to this channel.

        Args:
            method: ``GET`` (Meta's verification) or ``POST`` (a notification).
            query: the query parameters.
            headers: the request headers (``X-Hub-Signature-256``).
            body: the raw body, exactly as received.
            signatures: the post's signature verdicts, shared by every channel
                it is handed to (:meth:`check_post`): this channel's app
                secret is then hashed once per post, not once per channel.

        Returns:
            ``(status, body)`` for the HTTP answer: 200 with the challenge or
            ``ok``; 403 for a failed verification or signature; 400 for an
            unreadable notification; 503 when closed or the buffer is full (Meta
            retries).
        """
        outcome = webhook.handle_webhook(
            method,
            query,
            headers,
            body,
            app_secret=self.settings.app_secret,
            verify_token=self.settings.verify_token,
            channel_id=self.settings.channel_id,
            phone_number_id=self.settings.phone_number_id,
            media_root=self.settings.api_root,
            signatures=signatures,
        )
        if outcome.dropped:
            self._dropped += len(outcome.dropped)
            for problem in outcome.dropped:
                log.warning(
                    "whatsapp %s: dropped from a notification: %s",
                    self.settings.channel_id,
                    problem,
                )
        if not outcome.events:
            return outcome.status, outcome.body
        if self._closed:
            return 503, b"channel closed; redeliver later"
        stats = self._send_events.statistics()
        if stats.current_buffer_used + len(outcome.events) > stats.max_buffer_size:
            return 503, b"event buffer full; redeliver later"
        take = None if self._answer_when_kept else self._take_at_once
        for event in outcome.events:
            if take is not None:
                waiting = self._send_events.statistics()
                idle = waiting.current_buffer_used == 0 and waiting.tasks_waiting_receive > 0
                if idle and take(event):
                    continue
            self._send_events.send_nowait(event)
            self._buffered += 1
            if isinstance(event, InboundMessage):
                self._remember_inbound(event)
        self._received += len(outcome.events)
        await trio.lowlevel.checkpoint()
        last = self._buffered
        # Meta forgets a notification answered 200: kept first, where the consumer keeps.
        while self._answer_when_kept and self._kept < last:
            if self._closed:
                return 503, b"channel closed before keeping it; redeliver later"
            await self._kept_lot.park()
        return outcome.status, outcome.body

    @property
    def webhook_signer(self) -> str:
        """Who signs this channel's notifications (:func:`.webhook.signer_id`, no secret).

        Channels with equal signers accept exactly the same signatures.
        """
        return self._signer

    def take_dropped(self) -> int:
        """How many malformed items signed notifications carried since the last call."""
        dropped, self._dropped = self._dropped, 0
        return dropped

    def check_post(self, signatures: webhook.PostSignatures) -> bool:
        """Whether the post is signed with this channel's app secret.

        The verdict is kept in ``signatures`` (hashed once per app secret):
        :meth:`handle_webhook` given the same ``signatures`` reads it instead
        of hashing again. Thread-safe (the ops server hashes large bodies off
        the event loop).
        """
        return signatures.signed_by(self.settings.app_secret)

    # --- outbound ------------------------------------------------------------------------

    async def _perform(self, request: ApiRequest) -> Answer:
        if self._closed:
            raise trio.ClosedResourceError(
                f"whatsapp channel {self.settings.channel_id!r} is closed; open a new connection"
            )
        settings = self.settings
        fetch = functools.partial(
            _fetch,
            self._client,
            request.method,
            request.url,
            deadline=settings.request_deadline,
            max_body=settings.max_body_bytes,
            what=f"{request.method} to the Graph API",
            headers=dict(request.headers),
        )
        with map_exceptions(self._errors(request)):
            if request.upload is not None:
                upload = request.upload
                return await fetch(
                    data=dict(request.form or {}),
                    files={"file": (upload.filename, upload.data, upload.mime_type)},
                )
            return await fetch(json=request.json)

    def _errors(self, request: ApiRequest) -> ExceptionMap:
        """The shell's mapping table: httpx's errors are transient (first match wins),
        but a URL httpx refuses, which no retry mends (a phone number id with a
        newline from an environment file): it crashed the channel's actor."""
        return {
            httpx.InvalidURL: lambda exc: FatalError(
                f"whatsapp channel {self.settings.channel_id!r}: the request URL is not "
                f"valid ({exc}); check base_url, options.api_version and "
                "options.phone_number_id"
            ),
            httpx.TimeoutException: lambda exc: TransientError(
                f"the Graph API did not answer {request.method} within "
                f"{self.settings.timeout} s; retry with backoff (the message may have been sent)"
            ),
            httpx.HTTPError: lambda exc: TransientError(
                f"{request.method} to the Graph API failed: {exc!r}; retry with backoff"
            ),
        }

    async def send(self, msg: OutboundMessage) -> SendResult:
        """Send one message; return once the Cloud API accepted it.

        Raises:
            TransientError: network failure, timeout or 5xx.
            RateLimited: 130429 (channel), 131056 (peer), 4/80007 (app, account).
            FatalError: AuthenticationFailed (190, 401), Banned (368), MissingPermissions,
                a request URL httpx refuses (the channel's options).
            PermanentSendError: OutsideWindow (131047), BadRecipient (131026),
                MessageTooLong (over 4096 characters), other refusals.
            trio.ClosedResourceError: the connection was closed by its owner.
        """
        try:
            media_id = None
            if msg.media is not None and msg.media.is_upload:
                upload = await read_upload(
                    msg.media, limit=self._upload_limit, peer=msg.peer, platform="whatsapp"
                )
                uploaded = await self._perform(core.build_media_upload(self.settings, upload))
                media_id = core.parse_media_response(
                    uploaded.status_code, uploaded.headers, uploaded.content, peer=msg.peer
                )
            request = core.build_send_request(self.settings, msg, media_id=media_id)
            response = await self._perform(request)
            result = core.parse_send_response(
                response.status_code, response.headers, response.content, peer=msg.peer
            )
            self._sent += 1
            return result
        except ProviderError as exc:
            without_token(exc, self.settings.token)
            raise

    async def edit(self, op: EditMessage) -> SendResult:
        """The Cloud API cannot edit a business's message.

        Raises:
            Unsupported: always.
        """
        raise self._unsupported("edit", op.peer)

    async def delete(self, op: DeleteMessage) -> None:
        """The Cloud API cannot delete a business's message.

        Raises:
            Unsupported: always.
        """
        raise self._unsupported("delete", op.peer)

    async def mark_read(self, op: MarkRead) -> None:
        """``status: read`` for the message (and the typing indicator with ``op.typing``).

        Raises:
            MessageNotFound: WhatsApp does not have the message.
            The errors of :meth:`send` otherwise.
        """
        try:
            request = core.build_read_request(self.settings, op.message_id, typing=op.typing)
            response = await self._perform(request)
            core.parse_success_response(
                response.status_code, response.headers, response.content, peer=op.peer
            )
        except ProviderError as exc:
            without_token(exc, self.settings.token)
            raise

    async def typing(self, op: SendTyping) -> None:
        """The typing indicator, which WhatsApp shows as part of reading a message:
        ``op.message_id``, else the last message received from the peer (it is
        marked read too; the indicator lasts until the answer, 25 s at most).

        Raises:
            PermanentSendError: no message from the peer to answer is known.
            The errors of :meth:`mark_read` otherwise.
        """
        message_id = op.message_id or self._last_inbound.get(op.peer)
        if message_id is None:
            raise PermanentSendError(
                f"whatsapp shows typing only while answering a message, and no message from "
                f"{op.peer!r} is known to this connection: give SendTyping.message_id",
                peer=op.peer,
            )
        await self.mark_read(
            MarkRead(
                peer=op.peer,
                message_id=message_id,
                typing=True,
                idempotency_key=op.idempotency_key,
            )
        )

    async def react(self, op: React) -> None:
        """A ``reaction`` message (``remove`` sends the empty emoji).

        Raises:
            MessageNotFound: WhatsApp does not have the message.
            The errors of :meth:`send` otherwise.
        """
        try:
            response = await self._perform(core.build_reaction_request(self.settings, op))
            core.parse_send_response(
                response.status_code, response.headers, response.content, peer=op.peer
            )
        except ProviderError as exc:
            without_token(exc, self.settings.token)
            raise

    def _unsupported(self, operation: str, peer: str) -> Unsupported:
        return Unsupported(
            f"whatsapp cannot {operation} a message the business sent; nothing was sent",
            peer=peer,
            operation=operation,
            provider="whatsapp",
        )

    def _remember_inbound(self, message: InboundMessage) -> None:
        last = self._last_inbound
        last[message.peer] = message.platform_message_id
        last.move_to_end(message.peer)
        if len(last) > LAST_INBOUND_KEPT:
            last.popitem(last=False)

    async def verify(self) -> None:
        """Prove the token and phone number id with one GET.

        Raises:
            FatalError, TransientError, RateLimited: as :func:`core.parse_phone_number_response`.
        """
        try:
            response = await self._perform(core.build_phone_number_request(self.settings))
            core.parse_phone_number_response(
                response.status_code, response.headers, response.content
            )
        except ProviderError as exc:
            without_token(exc, self.settings.token)
            raise

    # --- lifecycle -----------------------------------------------------------------------

    def session_state(self) -> SessionState:
        """Nothing to resume: webhook delivery has no session."""
        return SessionState(provider="whatsapp", data={})

    async def close(self, *, resumable: bool = True) -> None:
        """Stop accepting webhooks and end :meth:`events` after the queued ones."""
        self._closed = True
        self._kept_lot.unpark_all()  # what waits to be kept: 503, and Meta redelivers
        await self._send_events.aclose()


class WhatsAppProvider:
    """The WhatsApp Cloud API adapter.

    Credentials: ``token`` (system-user access token), ``app_secret`` (signs
    webhooks), ``verify_token`` (webhook verification). Options:
    ``phone_number_id`` (required), ``api_version`` (default ``v21.0``),
    ``timeout``, ``verify_on_open``, ``event_buffer``.

    Args:
        limits: the platform defaults (80 msgs/s per number; 1 per 6 s, burst
            3, per recipient; 4096 characters).
        transport: an httpx transport, for tests.
    """

    name: str = "whatsapp"
    operations = core.OPERATIONS

    def __init__(
        self,
        *,
        limits: PlatformLimits = WHATSAPP_LIMITS,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.limits = limits
        self._transport = transport

    def __repr__(self) -> str:
        return f"<WhatsAppProvider limits={self.limits.per_channel_rate:g}/s>"

    def open_connection(
        self, config: ChannelConfig, session: SessionState | None = None
    ) -> AbstractAsyncContextManager[WhatsAppConnection]:
        """Open a connection for one WhatsApp number.

        Raises:
            AuthenticationFailed: missing credentials, or the token is rejected.
            Banned: the account is blocked (368).
            FatalError: malformed options or an unknown phone number id.
            TransientError, RateLimited: the verification call failed for now.
        """
        return self._open(WhatsAppSettings.from_config(config), pool_limits(config, self.limits))

    @asynccontextmanager
    async def _open(
        self, settings: WhatsAppSettings, pool: httpx.Limits
    ) -> AsyncIterator[WhatsAppConnection]:
        client = httpx.AsyncClient(
            timeout=settings.timeout,
            transport=self._transport,
            limits=pool,
            verify=shared_ssl_context(),
        )
        try:
            connection = WhatsAppConnection(settings, client)
            if settings.verify_on_open:
                await connection.verify()
            connection._buffered += 1
            connection._send_events.send_nowait(
                ConnectionStateChanged(
                    channel_id=settings.channel_id,
                    state=ConnectionState.CONNECTED,
                    detail=f"phone number {settings.phone_number_id}",
                )
            )
            try:
                yield connection
            finally:
                await connection.close()
        finally:
            with trio.move_on_after(CLOSE_GRACE) as scope:
                scope.shield = True
                await client.aclose()
