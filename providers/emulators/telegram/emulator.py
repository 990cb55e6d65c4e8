"""The emulated Telegram Bot API: getMe, getUpdates, webhooks, sends and their limits.

Design: see the package docstring. The methods beyond sending (edits,
deletes, chat actions, reactions, chats, files, commands, ...) live in
``methods``; the objects and parameter coercion in ``model``.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

import httpx
import trio
from starlette.applications import Starlette
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ..base import MAX_FAULT_COUNT, FaultError
from .methods import TelegramMethods
from .model import (
    MAX_CAPTION_LENGTH,
    MAX_TEXT_LENGTH,
    MEDIA_FIELDS,
    SECRET_HEADER,
    SECRET_PATTERN,
    TOKEN_PATTERN,
    WEBHOOK_RETRY_FIRST,
    WEBHOOK_RETRY_MAX,
    WEBHOOK_TIMEOUT,
    ApiError,
    Bot,
    Call,
    Poll,
    Upload,
    bool_param,
    chat,
    chat_id_param,
    entities,
    int_param,
    json_param,
    read_params,
    too_many,
)

__all__ = ["TelegramEmulator"]

# --- the emulator ---------------------------------------------------------------------------

Handler = Callable[[Bot, dict[str, Any], Call], Awaitable[Any]]


class TelegramEmulator(TelegramMethods):
    """The Telegram Bot API, in-process.

    Args:
        bot_rate: sends per second per bot.
        chat_interval: seconds between two sends to one chat, on average.
        chat_burst: sends to one chat that may come in a row before that applies.
        group_per_minute: sends per minute to one group chat.
    """

    name = "telegram"

    def __init__(
        self,
        *,
        bot_rate: int = 30,
        chat_interval: float = 1.0,
        chat_burst: int = 3,
        group_per_minute: int = 20,
    ) -> None:
        super().__init__()
        self.bot_rate = bot_rate
        self.chat_interval = chat_interval
        self.chat_burst = chat_burst
        self.group_per_minute = group_per_minute
        self.bots: dict[str, Bot] = {}
        self.unknown_chats: set[int] = set()
        self.blocked_chats: set[int] = set()
        self._server_errors: list[int] = []
        self._nursery: trio.Nursery | None = None
        self._client: httpx.AsyncClient | None = None
        self._methods: dict[str, Handler] = {
            "getme": self._get_me,
            "getupdates": self._get_updates,
            "setwebhook": self._set_webhook,
            "deletewebhook": self._delete_webhook,
            "getwebhookinfo": self._get_webhook_info,
            "sendmessage": self._send,
            **{method: self._send for method in MEDIA_FIELDS},
            **self.more_methods(),
        }

    def __repr__(self) -> str:
        pending = sum(len(b.updates) for b in self.bots.values())
        return f"<TelegramEmulator bots={len(self.bots)} pending={pending} sent={len(self.sent)}>"

    # --- wiring ------------------------------------------------------------------------

    @property
    def app(self) -> Starlette:
        """The ASGI app, with a lifespan that owns the webhook delivery tasks."""
        app = super().app
        app.router.lifespan_context = self._lifespan
        return app

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: object) -> AsyncIterator[None]:
        async with httpx.AsyncClient() as client, trio.open_nursery() as nursery:
            self._client, self._nursery = client, nursery
            try:
                yield
            finally:
                self._client, self._nursery = None, None
                nursery.cancel_scope.cancel()

    def platform_routes(self) -> list[BaseRoute]:
        return [
            Route("/bot{token}/{method}", self._api, methods=["GET", "POST"]),
            Route("/file/bot{token}/{file_path:path}", self._download, methods=["GET"]),
            Route("/bot{rest:path}", self._not_found, methods=["GET", "POST"]),
        ]

    async def _not_found(self, request: Request) -> Response:
        return ApiError(404, "Not Found").response()

    def _bot(self, token: str) -> Bot:
        bot = self.bots.get(token)
        if bot is None:
            match = TOKEN_PATTERN.fullmatch(token)
            assert match is not None
            bot = self.bots[token] = Bot(token=token, id=int(match.group(1)))
        return bot

    async def _api(self, request: Request) -> Response:
        token: str = request.path_params["token"]
        method: str = request.path_params["method"].lower()
        self.stats["api_calls"] += 1
        try:
            if TOKEN_PATTERN.fullmatch(token) is None:
                raise ApiError(404, "Not Found")
            if self.is_banned(token):
                raise ApiError(401, "Unauthorized")
            if method not in self._methods:
                raise ApiError(404, "Not Found")
            call = Call(method=request.path_params["method"], request=request)
            result = await self.call(self._bot(token), await read_params(request), call)
        except ApiError as err:
            self.stats[f"error_{err.code}"] += 1
            return err.response()
        return JSONResponse({"ok": True, "result": result})

    async def call(self, bot: Bot, params: dict[str, Any], call: Call) -> Any:
        """Run one Bot API method for ``bot`` (an HTTP request, or a webhook reply).

        Raises:
            ApiError: the method's error answer.
        """
        method = call.method.lower()
        handler = self._methods.get(method)
        if handler is None:
            raise ApiError(404, "Not Found")
        if (remaining := self.rate_limit_remaining()) > 0:
            raise too_many(remaining)
        if self._server_errors:
            status = self._server_errors.pop(0)
            raise ApiError(status, "Internal Server Error")
        result = await handler(bot, params, call)
        self.stats[f"method_{method}"] += 1
        return result

    # --- the control API -------------------------------------------------------------

    async def _inject(self, request: Request) -> Response:
        try:
            return await super()._inject(request)
        except FaultError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)

    async def inject(self, payload: dict[str, Any]) -> dict[str, Any]:
        """A user writes to a bot: ``{"chat_id", "text"}``, optionally ``token``
        (needed once several bots exist), ``from_id``, ``username``, and
        ``edit_message_id`` (then it is an ``edited_message``).

        Raises:
            FaultError: bad arguments, or no bot to address.
        """
        chat_id, text = payload.get("chat_id"), payload.get("text")
        if not isinstance(chat_id, int) or not isinstance(text, str):
            raise FaultError("inject needs an integer 'chat_id' and a string 'text'")
        token = payload.get("token")
        if token is None:
            if len(self.bots) != 1:
                raise FaultError(
                    f"inject: {len(self.bots)} bots are known; name one with 'token' "
                    "(a bot becomes known with its first API call)"
                )
            bot = next(iter(self.bots.values()))
        elif isinstance(token, str) and TOKEN_PATTERN.fullmatch(token):
            bot = self._bot(token)
        else:
            raise FaultError("inject: 'token' is not a well-formed bot token")
        from_id = payload.get("from_id", chat_id if chat_id > 0 else 1)
        sender = {"id": from_id, "is_bot": False, "first_name": f"User {from_id}"}
        if isinstance(payload.get("username"), str):
            sender["username"] = payload["username"]
        now = int(time.time())
        edit_of = payload.get("edit_message_id")
        message: dict[str, Any] = {
            "chat": chat(chat_id),
            "from": sender,
            "date": now,
            "text": text,
        }
        if found := entities(text):
            message["entities"] = found
        if isinstance(edit_of, int):
            message.update(message_id=edit_of, edit_date=now)
            kind = "edited_message"
        else:
            message["message_id"] = bot.new_message_id(chat_id)
            kind = "message"
        bot.remember(message)
        update_id = bot.add_update(kind, message)
        self.stats["updates_created"] += 1
        return {"update_id": update_id, "message_id": message["message_id"], "chat_id": chat_id}

    async def platform_fault(self, payload: dict[str, Any]) -> dict[str, Any]:
        """``unknown_chat`` / ``block`` (``chat_id``), ``server_error`` (``count``, ``status``).

        Raises:
            FaultError: unknown kind or bad arguments.
        """
        kind = payload.get("kind")
        if kind in ("unknown_chat", "block"):
            chat_id = payload.get("chat_id")
            if not isinstance(chat_id, int):
                raise FaultError(f"{kind} needs an integer 'chat_id'")
            (self.unknown_chats if kind == "unknown_chat" else self.blocked_chats).add(chat_id)
            return {kind: chat_id}
        if kind == "server_error":
            count, status = payload.get("count", 1), payload.get("status", 500)
            if (
                not isinstance(count, int)
                or not 1 <= count <= MAX_FAULT_COUNT
                or status not in range(500, 600)
            ):
                raise FaultError(
                    f"server_error needs a positive 'count' (at most {MAX_FAULT_COUNT}) "
                    "and a 5xx 'status'"
                )
            self._server_errors.extend([status] * count)
            return {"server_errors": len(self._server_errors)}
        return await super().platform_fault(payload)

    # --- methods -------------------------------------------------------------------------

    async def _get_me(self, bot: Bot, params: dict[str, Any], call: Call) -> Any:
        return {
            **bot.user(),
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }

    async def _get_updates(self, bot: Bot, params: dict[str, Any], call: Call) -> Any:
        if bot.webhook_url is not None:
            raise ApiError(
                409,
                "Conflict: can't use getUpdates method while webhook is active; "
                "use deleteWebhook to delete the webhook first",
            )
        offset, limit, timeout = (
            int_param(params, "offset"),
            int_param(params, "limit"),
            int_param(params, "timeout"),
        )
        limit = min(max(limit or 100, 1), 100)
        allowed = json_param(params, "allowed_updates")
        if isinstance(allowed, list):
            bot.allowed_updates = frozenset(allowed) or None
        if offset is not None:
            bot.confirm(offset)
        holder = self.holders.opened(bot.token)  # a poll in flight holds the bot
        try:
            if bot.poll is not None:
                bot.poll.kick(
                    "Conflict: terminated by other getUpdates request; "
                    "make sure that only one bot instance is running"
                )
            updates = bot.ready(limit)
            if updates or not timeout or timeout <= 0:
                return self._handed_out(bot, updates)
            self.stats["polls_held"] += 1
            async with trio.open_nursery() as nursery:
                poll = bot.poll = Poll(scope=nursery.cancel_scope)
                if call.request is not None:
                    nursery.start_soon(_cancel_on_disconnect, call.request, nursery.cancel_scope)
                with trio.move_on_after(timeout):
                    updates = await bot.wait_ready(limit)
                nursery.cancel_scope.cancel()
        finally:
            self.holders.closed(bot.token, holder)
        if bot.poll is poll:
            bot.poll = None
        if poll.kicked is not None:
            self.stats["conflicts"] += 1
            raise ApiError(409, poll.kicked)
        return self._handed_out(bot, updates)

    def _handed_out(self, bot: Bot, updates: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Count what a poll hands out; one handed out before is a redelivery (an old offset)."""
        for update in updates:
            if update["update_id"] in bot.delivered:
                self.stats["updates_redelivered"] += 1
            else:
                bot.delivered.add(update["update_id"])
        return updates

    async def _set_webhook(self, bot: Bot, params: dict[str, Any], call: Call) -> Any:
        url = params.get("url") or ""
        if not isinstance(url, str):
            raise ApiError(400, "Bad Request: bad webhook: url must be a string")
        if not url:
            return await self._delete_webhook(bot, params, call)
        if not url.startswith(("https://", "http://")):
            raise ApiError(
                400, "Bad Request: bad webhook: An HTTPS URL must be provided for webhook"
            )
        secret = params.get("secret_token")
        if secret is not None and not (
            isinstance(secret, str) and SECRET_PATTERN.fullmatch(secret)
        ):
            raise ApiError(400, "Bad Request: secret token contains unallowed characters")
        if self._nursery is None:
            raise ApiError(
                500, "Internal Server Error: webhooks need the emulator served with its lifespan"
            )
        allowed = json_param(params, "allowed_updates")
        if isinstance(allowed, list):
            bot.allowed_updates = frozenset(allowed) or None
        if bool_param(params, "drop_pending_updates"):
            bot.updates.clear()
        if bot.poll is not None:
            bot.poll.kick("Conflict: terminated by setWebhook request")
        self._stop_webhook(bot)
        bot.webhook_url, bot.webhook_secret = url, secret
        bot.webhook_scope = trio.CancelScope()
        self._nursery.start_soon(self._deliver, bot, bot.webhook_scope)
        return True

    def _stop_webhook(self, bot: Bot) -> None:
        if bot.webhook_scope is not None:
            bot.webhook_scope.cancel()
        bot.webhook_url = bot.webhook_secret = bot.webhook_scope = None

    async def _delete_webhook(self, bot: Bot, params: dict[str, Any], call: Call) -> Any:
        if bool_param(params, "drop_pending_updates"):
            bot.updates.clear()
        self._stop_webhook(bot)
        return True

    async def _get_webhook_info(self, bot: Bot, params: dict[str, Any], call: Call) -> Any:
        info: dict[str, Any] = {
            "url": bot.webhook_url or "",
            "has_custom_certificate": False,
            "pending_update_count": len(bot.updates),
        }
        if bot.webhook_url is not None:
            info["max_connections"] = 40
        if bot.allowed_updates is not None:
            info["allowed_updates"] = sorted(bot.allowed_updates)
        if bot.last_error is not None:
            info["last_error_date"], info["last_error_message"] = bot.last_error
        return info

    async def _deliver(self, bot: Bot, scope: trio.CancelScope) -> None:
        """POST the bot's updates to its webhook, in order, until the webhook goes."""
        delay = WEBHOOK_RETRY_FIRST
        with scope:
            while True:
                update = (await bot.wait_ready(1))[0]
                headers = {"content-type": "application/json"}
                if bot.webhook_secret is not None:
                    headers[SECRET_HEADER] = bot.webhook_secret
                assert self._client is not None and bot.webhook_url is not None
                try:
                    response = await self._client.post(
                        bot.webhook_url,
                        content=json.dumps(update),
                        headers=headers,
                        timeout=WEBHOOK_TIMEOUT,
                    )
                    error = (
                        None
                        if response.is_success
                        else f"Wrong response from the webhook: {response.status_code}"
                    )
                except httpx.HTTPError as exc:
                    error = f"Connection failed: {type(exc).__name__}"
                if error is None:
                    bot.updates = [u for u in bot.updates if u is not update]
                    self.stats["webhook_delivered"] += 1
                    delay = WEBHOOK_RETRY_FIRST
                    await self._webhook_reply(bot, response)
                else:
                    bot.last_error = (int(time.time()), error)
                    self.stats["webhook_failed"] += 1
                    await trio.sleep(delay)
                    delay = min(delay * 2, WEBHOOK_RETRY_MAX)

    async def _webhook_reply(self, bot: Bot, response: httpx.Response) -> None:
        """A method call in the webhook's answer ("making requests when getting
        updates"): performed, its result not returned to anyone, as on Telegram."""
        reply = await _reply_params(response)
        if not isinstance(reply, dict) or not isinstance(reply.get("method"), str):
            return
        params = {key: value for key, value in reply.items() if key != "method"}
        try:
            await self.call(bot, params, Call(method=reply["method"], request=None))
        except ApiError as err:
            self.stats["webhook_reply_failed"] += 1
            bot.last_error = (int(time.time()), f"webhook reply: {err.description}")
        else:
            self.stats["webhook_reply_calls"] += 1

    async def _send(self, bot: Bot, params: dict[str, Any], call: Call) -> Any:
        method = call.method.lower()
        chat_id = chat_id_param(params)
        message: dict[str, Any] = {
            "chat": chat(chat_id),
            "from": bot.user(),
            "date": int(time.time()),
        }
        record: dict[str, Any] = {
            "bot_id": bot.id,
            "method": call.method,
            "chat_id": chat_id,
        }
        if method == "sendmessage":
            text = params.get("text")
            if not isinstance(text, str) or not text:
                raise ApiError(400, "Bad Request: message text is empty")
            if len(text) > MAX_TEXT_LENGTH:
                raise ApiError(400, "Bad Request: message is too long")
            message["text"] = record["text"] = text
            # With a parse_mode Telegram would strip the markup into entities; the
            # emulator keeps the text as sent and only records the mode.
            if isinstance(params.get("parse_mode"), str) and params["parse_mode"]:
                record["parse_mode"] = params["parse_mode"]
            elif found := entities(text):
                message["entities"] = found
        else:
            field = MEDIA_FIELDS[method]
            media = params.get(field)
            if not media:
                raise ApiError(400, f"Bad Request: there is no {field} in the request")
            file_id = self._store_file(field, media)
            caption = params.get("caption")
            if isinstance(caption, str) and len(caption) > MAX_CAPTION_LENGTH:
                raise ApiError(400, "Bad Request: message caption is too long")
            message[field] = self._file_object(field, file_id)
            record["media"] = media.record() if isinstance(media, Upload) else media
            if isinstance(caption, str):
                message["caption"] = record["caption"] = caption
        if chat_id in self.unknown_chats:
            raise ApiError(400, "Bad Request: chat not found")
        if chat_id in self.blocked_chats:
            raise ApiError(403, "Forbidden: bot was blocked by the user")
        reply = json_param(params, "reply_parameters")
        reply_to = (
            reply.get("message_id")
            if isinstance(reply, dict)
            else int_param(params, "reply_to_message_id")
        )
        if reply_to is not None:
            allow = isinstance(reply, dict) and bool(reply.get("allow_sending_without_reply"))
            reply_chat = reply.get("chat_id", chat_id) if isinstance(reply, dict) else chat_id
            if bot.message_exists(int(reply_chat), int(reply_to)):
                message["reply_to_message"] = bot.replied(
                    int(reply_chat), int(reply_to), message["date"]
                )
                record["reply_to_message_id"] = int(reply_to)
            elif not allow:
                raise ApiError(400, "Bad Request: message to be replied not found")
        return self._post(bot, chat_id, message, record)

    def _post(
        self, bot: Bot, chat_id: int, message: dict[str, Any], record: dict[str, Any]
    ) -> dict[str, Any]:
        """Charge the limits, number the message, keep and record it; return it."""
        self._admit(bot, chat_id)
        message["message_id"] = record["message_id"] = bot.new_message_id(chat_id)
        bot.remember(message)
        self.record_sent(record)
        return message

    def _admit(self, bot: Bot, chat_id: int) -> None:
        """Charge one send against the bot, chat and group limits, or raise 429."""
        now = trio.current_time()
        while bot.sends and bot.sends[0] <= now - 1.0:
            bot.sends.popleft()
        recent = bot.chat_sends.setdefault(chat_id, deque())
        while recent and recent[0] <= now - 60.0:
            recent.popleft()
        wait = 0.0
        if len(bot.sends) >= self.bot_rate:
            wait = bot.sends[0] + 1.0 - now
        # One per chat_interval on average, with a burst of chat_burst (the Bots FAQ
        # "may allow short bursts"): a token bucket per chat.
        tokens = float(self.chat_burst)
        if self.chat_interval > 0:
            held, at = bot.chat_buckets.get(chat_id, (float(self.chat_burst), now))
            tokens = min(float(self.chat_burst), held + (now - at) / self.chat_interval)
            if tokens < 1.0:
                wait = max(wait, (1.0 - tokens) * self.chat_interval)
        if chat_id < 0 and len(recent) >= self.group_per_minute:
            wait = max(wait, recent[-self.group_per_minute] + 60.0 - now)
        if wait > 0:
            self.stats["rate_limited"] += 1
            raise too_many(wait)
        bot.sends.append(now)
        recent.append(now)
        if self.chat_interval > 0:
            bot.chat_buckets[chat_id] = (tokens - 1.0, now)


async def _reply_params(response: httpx.Response) -> dict[str, Any] | None:
    """A webhook answer's parameters, in any encoding the Bot API reads (aiogram
    answers multipart, others JSON); ``None`` for an answer that carries none."""
    content_type = response.headers.get("content-type", "")
    if content_type.startswith("application/json"):
        try:
            data = response.json()
        except ValueError:
            return None
        return data if isinstance(data, dict) else None
    if content_type.startswith("application/x-www-form-urlencoded"):
        return dict(parse_qsl(response.text))
    if content_type.startswith("multipart/form-data"):

        async def body() -> AsyncGenerator[bytes, None]:
            yield response.content

        try:
            form = await MultiPartParser(Headers(dict(response.headers)), body()).parse()
        except MultiPartException:
            return None
        params: dict[str, Any] = {}
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                data = await value.read()
                params[key] = Upload(
                    filename=value.filename, content_type=value.content_type, data=data
                )
            else:
                params[key] = value
        return params
    return None


async def _cancel_on_disconnect(request: Request, scope: trio.CancelScope) -> None:
    """Cancel ``scope`` when the client goes away (its long poll is abandoned)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return
