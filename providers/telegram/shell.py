"""The trio I/O shell around the Bot API core: httpx calls, the poll task, close.

The shell only moves bytes: :mod:`.core` builds every request and reads every
answer, :mod:`.webhook` judges webhook requests. Inbound events travel through
an unbuffered memory channel, so handing an event to the consumer of
:meth:`TelegramConnection.events` is a rendezvous, and a webhook request is
answered 200 only once its event was taken. The poll task asks Telegram for
the next batch (whose ``offset`` confirms the previous one) only once the
consumer has come back for the event after the last one: taken is not kept
(the ChannelActor asks for the next event only once the last is in the
store), and a getUpdates sent while the last update was being stored would
confirm it to Telegram, so a kill -9 in that window would lose it. A crash
therefore never confirms an update nobody kept; at worst one is delivered
twice, and the ChannelActor deduplicates by ``platform_message_id``. (The
farewell on close still confirms what was handed out: an event taken and
not yet kept stays in the channel's memory as ``pending``, handed over again
by its successor; see :mod:`actors.channel.inbound`.)

Polling failures end :meth:`~TelegramConnection.events` with the mapped
error instead of being retried here: reconnect policy (backoff, waiting out
``retry_after``, giving up on ``Conflict``) belongs to the ChannelActor, which
reopens with :meth:`~TelegramConnection.session_state`.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, Final

import attrs
import httpx
import trio

from .._exceptions import ExceptionMap, map_exceptions
from .._http import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_REQUEST_DEADLINE,
    check_token,
    quoted,
    shared_ssl_context,
    without_token,
)
from .._http import fetch as _fetch
from .._nursery import open_connection_nursery
from .._pool import pool_limits
from ..base import (
    ChannelConfig,
    ConnectionState,
    ConnectionStateChanged,
    Event,
    FatalError,
    OutboundMessage,
    PlatformLimits,
    ProviderError,
    SendResult,
    SessionState,
    TransientError,
    Unsupported,
)
from ..media import read_upload
from ..operations import DeleteMessage, EditMessage, MarkRead, React, SendTyping
from . import core
from .webhook import WebhookHandler, WebhookVerdict
from .wire import User

log = logging.getLogger("switchboard.providers.telegram")

__all__ = ["CLOSE_TIMEOUT", "TelegramConnection", "TelegramProvider"]

CLOSE_TIMEOUT: Final = 5.0  # seconds for the final offset confirmation or deleteWebhook
CONNECT_TIMEOUT: Final = 10.0  # seconds


class _Phase(enum.Enum):
    OPEN = "OPEN"
    BROKEN = "BROKEN"
    CLOSED = "CLOSED"


async def _cancel_when(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


@attrs.frozen
class _Item:
    update_id: int
    event: Event
    kept: trio.Event = attrs.field(factory=trio.Event)  # the consumer came back for more


class _BotApi:
    """Performs :class:`core.ApiRequest` s for one bot token."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        base_url: str,
        token: str,
        *,
        max_body: int = DEFAULT_MAX_BODY_BYTES,
        deadline: float = DEFAULT_REQUEST_DEADLINE,
    ) -> None:
        self._client = client
        self._base_url = base_url
        self._token = token
        self._max_body = max_body
        self._deadline = deadline

    def _redact(self, text: str) -> str:
        return text.replace(self._token, "<token>") if self._token else text

    async def call(self, request: core.ApiRequest) -> Any:
        """POST ``request`` as JSON and return its result (errors mapped by the core).

        Raises:
            TransientError: network failure, a timeout, no whole answer within
                the total deadline (``request_deadline``, plus the long poll's
                own wait for getUpdates), an answer over ``max_body_bytes``
                (and what the core maps).
            FatalError: the base URL is unusable (and what the core maps).
            RateLimited, PermanentSendError: as mapped by the core.
        """
        url = core.method_url(self._base_url, self._token, request.method)
        timeout = httpx.Timeout(CONNECT_TIMEOUT, read=request.read_timeout)
        # A long poll waits for updates by design: its wait comes on top.
        deadline = self._deadline + max(0.0, request.read_timeout - core.REQUEST_TIMEOUT)
        fetch = functools.partial(
            _fetch,
            self._client,
            "POST",
            url,
            deadline=deadline,
            max_body=self._max_body,
            what=f"telegram {request.method}",
            timeout=timeout,
        )
        with map_exceptions(self._errors(request)):
            if request.files:
                # Multipart: scalars as text, nested values as JSON, as the Bot API reads them.
                data = {
                    key: value if isinstance(value, str) else json.dumps(value)
                    for key, value in request.params.items()
                }
                files = {
                    name: (upload.filename, upload.data, upload.mime_type)
                    for name, upload in request.files.items()
                }
                response = await fetch(data=data, files=files)
            else:
                response = await fetch(json=dict(request.params))
        try:
            return core.parse_response(
                request, response.status_code, response.content, response.headers
            )
        except ProviderError as exc:
            # What the core quotes of an answer (an error page that echoes the
            # request's path, /bot<token>/...) goes out with the error.
            without_token(exc, self._token)
            raise

    def _errors(self, request: core.ApiRequest) -> ExceptionMap:
        """The shell's mapping table: httpx's errors in the provider tree (first match wins)."""
        return {
            httpx.TimeoutException: lambda exc: TransientError(
                f"telegram {request.method}: no answer within {request.read_timeout:g} s "
                f"({type(exc).__name__}); retry later"
            ),
            httpx.UnsupportedProtocol: lambda exc: FatalError(
                f"telegram: base_url {self._base_url!r} is not http(s); fix the channel config"
            ),
            httpx.HTTPError: lambda exc: TransientError(
                f"telegram {request.method}: {type(exc).__name__}: {self._redact(str(exc))}; "
                "retry later"
            ),
            httpx.InvalidURL: lambda exc: FatalError(
                f"telegram: base_url {self._base_url!r} is not a valid URL: fix the channel config"
            ),
        }


class TelegramConnection:
    """One bot's link to the Bot API, by long polling or by webhook.

    Made by :meth:`TelegramProvider.open_connection`; not constructed directly.
    """

    # A send on its way at close() still gets its answer until the block ends
    # (which closes the HTTP client): the channel waits for it (see Connection).
    answers_after_close = True

    def __init__(
        self,
        *,
        config: ChannelConfig,
        options: core.TelegramOptions,
        api: _BotApi,
        cursor: core.UpdateCursor,
        bot: User,
        upload_limit: int = core.TELEGRAM_LIMITS.max_upload_bytes,
    ) -> None:
        self.channel_id = config.channel_id
        self._upload_limit = upload_limit
        self.options = options
        self.bot = bot
        self._api = api
        self._cursor = cursor
        self._resumed = cursor.offset is not None
        self._phase = _Phase.OPEN
        self._failure: ProviderError | None = None
        self._send_channel, self._receive_channel = trio.open_memory_channel[_Item](0)
        self._poll_scope = trio.CancelScope()
        self._poll_done = trio.Event()
        self._closing = trio.Event()  # a webhook waiting for its event's keep gives up
        self._answer_when_kept = False
        self._webhook: WebhookHandler | None = None
        if options.mode == "webhook":
            assert options.webhook_secret is not None  # parse_options guarantees it
            self._webhook = WebhookHandler(
                channel_id=self.channel_id, secret=options.webhook_secret
            )
            self._poll_done.set()

    def __repr__(self) -> str:
        return (
            f"<TelegramConnection {self.channel_id} {self.options.mode} "
            f"offset={self._cursor.offset} [{self._phase.value}]>"
        )

    # --- the Connection protocol ------------------------------------------------------

    async def events(self) -> AsyncGenerator[Event, None]:
        """Inbound events, until :meth:`close` (quietly) or a failure (raised).

        The first event is a :class:`ConnectionStateChanged` (``RESUMED`` when
        a saved offset was given). An update counts as handed out, and moves
        :meth:`session_state`, the moment its event is yielded.

        Raises:
            TransientError, RateLimited, FatalError: polling failed.
        """
        yield ConnectionStateChanged(
            channel_id=self.channel_id,
            state=ConnectionState.RESUMED if self._resumed else ConnectionState.CONNECTED,
            detail=f"{self.options.mode} as @{self.bot.username or self.bot.id}",
        )
        async for item in self._receive_channel:
            self._cursor.handed_out(item.update_id)
            yield item.event
            item.kept.set()  # asked for the next event: the consumer is done with this one
        if self._failure is not None and self._phase is _Phase.BROKEN:
            raise self._failure

    async def send(self, msg: OutboundMessage) -> SendResult:
        """Send text (sendMessage) or media by URL (sendPhoto, sendVideo, ...).

        Raises:
            trio.ClosedResourceError: the connection was closed by us.
            TransientError: network failure or 5xx; retry with backoff.
            RateLimited: 429; wait ``retry_after``.
            FatalError: the token was revoked (AuthenticationFailed), ...
            PermanentSendError: BadRecipient (chat not found, bot blocked),
                MessageTooLong, or another refusal of this message.
        """
        self._check_open()
        upload = None
        if msg.media is not None and msg.media.is_upload:
            upload = await read_upload(
                msg.media, limit=self._upload_limit, peer=msg.peer, platform="telegram"
            )
        request = core.send_request(msg, upload)
        result = await self._api.call(request)
        sent = core.sent_result(result, msg.peer)
        if not sent.platform_message_id:
            log.warning(
                "telegram %s: a send to %r was answered ok with %s, not a Message: it went "
                "out, and is answered without a message id (not sent again)",
                self.channel_id,
                msg.peer,
                quoted(repr(result)),
            )
        return sent

    async def edit(self, op: EditMessage) -> SendResult:
        """editMessageText.

        Raises:
            MessageNotFound: "message to edit not found".
            PermanentSendError: "message is not modified", "message can't be edited", ...
            The errors of :meth:`send` otherwise.
        """
        self._check_open()
        result = await self._api.call(core.operation_request(op))
        if isinstance(result, dict):
            return core.parse_sent(result, op.peer)
        return SendResult(platform_message_id=op.message_id, peer=op.peer)  # inline: True

    async def delete(self, op: DeleteMessage) -> None:
        """deleteMessage (MessageNotFound: "message to delete not found")."""
        self._check_open()
        await self._api.call(core.operation_request(op))

    async def typing(self, op: SendTyping) -> None:
        """sendChatAction with the op's action (Telegram shows it for 5 s or until a message)."""
        self._check_open()
        await self._api.call(core.operation_request(op))

    async def mark_read(self, op: MarkRead) -> None:
        """Bots have no read receipts on Telegram.

        Raises:
            Unsupported: always.
        """
        raise Unsupported(
            "telegram bots cannot mark messages read; nothing was sent",
            peer=op.peer,
            operation="mark_read",
            provider=core.PROVIDER_NAME,
        )

    async def react(self, op: React) -> None:
        """setMessageReaction (an empty list when ``op.emoji`` is None removes it)."""
        self._check_open()
        await self._api.call(core.operation_request(op))

    def _check_open(self) -> None:
        if self._phase is _Phase.CLOSED:
            raise trio.ClosedResourceError(f"{self!r} is closed; open a new connection to send")

    def session_state(self) -> SessionState:
        """``SessionState(provider="telegram", data={"offset": n})`` to resume from."""
        return self._cursor.session_state()

    async def close(self, *, resumable: bool = True) -> None:
        """Stop polling, confirm the handed-out offset to Telegram, close ``events()``.

        Args:
            resumable: False also deletes the webhook this connection set
                (webhook mode); polling needs nothing more, the offset is in
                :meth:`session_state` either way.
        """
        if self._phase is _Phase.CLOSED:
            return
        failed = self._failure is not None
        self._phase = _Phase.CLOSED
        self._closing.set()
        self._poll_scope.cancel()
        with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
            await self._poll_done.wait()
            self._send_channel.close()
            # Best effort: the offset is in session_state() and the next
            # getUpdates confirms it anyway.
            with contextlib.suppress(ProviderError):
                await self._farewell(resumable=resumable, failed=failed)

    async def _farewell(self, *, resumable: bool, failed: bool) -> None:
        if self.options.mode == "polling":
            # Not after a failure: after a Conflict it would knock out the poller that won.
            if not failed and self._cursor.needs_confirmation():
                await self._api.call(
                    core.get_updates(offset=self._cursor.offset, timeout=0, limit=1)
                )
                self._cursor.polled(self._cursor.offset)
        elif not resumable and self.options.webhook_url is not None:
            await self._api.call(core.delete_webhook())

    # --- webhook mode -------------------------------------------------------------------

    def check_webhook_headers(self, headers: Any) -> int | None:
        """Judge a webhook request by its headers, before its body is read.

        Args:
            headers: request headers (a mapping or ASGI ``(name, value)`` pairs).

        Returns:
            ``None`` when the body should be read and given to
            :meth:`feed_webhook`; else the HTTP status to answer at once, the
            one :meth:`feed_webhook` would: 404 this connection polls, 403 a
            missing or wrong secret (compared in constant time).
        """
        if self._webhook is None:
            return 404
        refused = self._webhook.check_headers(headers)
        return None if refused is None else refused.status

    def answer_when_kept(self) -> None:
        """Answer a webhook only once the consumer of :meth:`events` came back from
        its event (one that reads on only once the last is kept: the
        ChannelActor). Else it is answered once the event was taken."""
        self._answer_when_kept = True

    async def feed_webhook(self, headers: Any, body: bytes) -> int:
        """Hand one webhook request to the connection; return the HTTP status to answer.

        Waits until the update's event was taken from :meth:`events`, and
        after :meth:`answer_when_kept` until the consumer came back from it
        (so a 200 means it was kept); Telegram redelivers on anything else.

        Args:
            headers: request headers (a mapping or ASGI ``(name, value)`` pairs).
            body: the raw request body.

        Returns:
            200 accepted, 400 malformed body, 403 bad secret, 404 this
            connection polls instead, 503 closed (Telegram will retry).
        """
        if self._webhook is None:
            return 404
        if self._phase is not _Phase.OPEN:
            return 503
        verdict: WebhookVerdict = self._webhook.handle(headers, body)
        if verdict.update is None:
            return verdict.status
        if verdict.update.event is not None:
            item = _Item(verdict.update.update_id, verdict.update.event)
            try:
                await self._send_channel.send(item)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                return 503
            if not self._answer_when_kept:
                return verdict.status
            # Telegram forgets an update answered 200: kept first (closed: 503, sent again).
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_cancel_when, self._closing, nursery.cancel_scope)
                await item.kept.wait()
                nursery.cancel_scope.cancel()
            if not item.kept.is_set():
                return 503
        else:
            self._cursor.handed_out(verdict.update.update_id)
        return verdict.status

    # --- polling mode --------------------------------------------------------------------

    async def _poll(self) -> None:
        try:
            with self._poll_scope:
                await self._poll_forever()
        except ProviderError as exc:
            self._failure = exc
            if self._phase is _Phase.OPEN:
                self._phase = _Phase.BROKEN
        finally:
            self._poll_done.set()
            self._send_channel.close()

    async def _poll_forever(self) -> None:
        opts = self.options
        while True:
            offset = self._cursor.offset
            request = core.get_updates(
                offset=offset,
                timeout=opts.poll_timeout,
                limit=opts.poll_limit,
                allowed_updates=opts.allowed_updates,
            )
            updates = core.parse_updates(await self._api.call(request), self.channel_id)
            self._cursor.polled(offset)
            for update in updates:
                if offset is not None and update.update_id < offset:
                    continue  # confirmed already; a faithful server never resends it
                if update.event is not None:
                    item = _Item(update.update_id, update.event)
                    await self._send_channel.send(item)
                    await item.kept.wait()  # its next getUpdates would confirm it
                # The consumer is done with it (or it had no event).
                self._cursor.handed_out(update.update_id)


class TelegramProvider:
    """The Telegram Bot API adapter (long polling or webhook).

    Args:
        limits: the platform limits to declare (default :data:`core.TELEGRAM_LIMITS`).
        transport: an httpx transport to use instead of the network (tests).
    """

    name: str = core.PROVIDER_NAME
    operations = core.OPERATIONS

    def __init__(
        self,
        *,
        limits: PlatformLimits = core.TELEGRAM_LIMITS,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.limits = limits
        self._transport = transport

    def __repr__(self) -> str:
        return f"<TelegramProvider limits={self.limits.per_channel_rate:g}/s>"

    @contextlib.asynccontextmanager
    async def open_connection(
        self, config: ChannelConfig, session: SessionState | None = None
    ) -> AsyncIterator[TelegramConnection]:
        """Open the bot's connection; polling runs in a task inside the block.

        Checks the token with getMe, and in webhook mode with a
        ``webhook_url`` calls setWebhook. Leaving the block closes the
        connection (see :meth:`TelegramConnection.close`).

        Args:
            config: ``credentials["token"]`` (required), ``base_url`` (default
                https://api.telegram.org), ``options`` (see
                :class:`core.TelegramOptions`).
            session: a previous connection's :meth:`~TelegramConnection.session_state`.

        Raises:
            AuthenticationFailed: the token is missing, unknown or revoked.
            FatalError: bad options, a foreign session, an unusable base_url.
            Conflict: webhook mode could not take over the bot.
            RateLimited: 429 on getMe / setWebhook.
            TransientError: network failure or 5xx.
        """
        token = config.credentials.get("token", "")
        if not token:
            raise FatalError(
                f"telegram channel {config.channel_id!r}: credentials['token'] is missing"
            )
        check_token(token, f"telegram channel {config.channel_id!r}")  # in the URL
        options = core.parse_options(config.options, config.credentials)
        cursor = core.UpdateCursor.from_session(session)
        base_url = config.base_url or core.DEFAULT_BASE_URL
        pool = pool_limits(config, self.limits, extra=1)  # + the getUpdates long poll
        async with httpx.AsyncClient(
            transport=self._transport, limits=pool, verify=shared_ssl_context()
        ) as client:
            api = _BotApi(
                client,
                base_url,
                token,
                max_body=options.max_body_bytes,
                deadline=options.request_deadline,
            )
            bot = core.parse_me(await api.call(core.get_me()))
            if options.mode == "webhook" and options.webhook_url is not None:
                assert options.webhook_secret is not None
                await api.call(
                    core.set_webhook(
                        url=options.webhook_url,
                        secret_token=options.webhook_secret,
                        allowed_updates=options.allowed_updates,
                        drop_pending_updates=options.drop_pending_updates,
                    )
                )
            conn = TelegramConnection(
                config=config,
                options=options,
                api=api,
                cursor=cursor,
                bot=bot,
                upload_limit=self.limits.max_upload_bytes,
            )
            # The poll task stores its ProviderErrors instead of raising, so what
            # leaves this block is the caller's own exception, and it leaves
            # unwrapped (a Conflict must not reach the ChannelActor as an
            # ExceptionGroup).
            async with open_connection_nursery() as nursery:
                if options.mode == "polling":
                    nursery.start_soon(conn._poll)
                try:
                    yield conn
                finally:
                    await conn.close()
                    nursery.cancel_scope.cancel()
