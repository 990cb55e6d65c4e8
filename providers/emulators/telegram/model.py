"""The emulated Telegram's objects and parameters: bots, chats, entities, errors.

Design: plain data and pure helpers, no I/O, shared by the methods of
``emulator`` and ``methods``: one bot's state (:class:`Bot`), the objects
Telegram hands out (chats, entities), its error answers (:class:`ApiError`),
and the parameter coercion every method uses (four encodings: query string,
urlencoded and multipart forms, JSON).
"""

from __future__ import annotations

import json
import math
import re
from collections import deque
from typing import Any, Final

import attrs
import trio
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

__all__ = [
    "AUTO_ENTITIES",
    "MAX_CAPTION_LENGTH",
    "MAX_TEXT_LENGTH",
    "MEDIA_FIELDS",
    "MESSAGES_KEPT",
    "SECRET_HEADER",
    "SECRET_PATTERN",
    "TOKEN_PATTERN",
    "WEBHOOK_RETRY_FIRST",
    "WEBHOOK_RETRY_MAX",
    "WEBHOOK_TIMEOUT",
    "ApiError",
    "Bot",
    "Call",
    "Poll",
    "Upload",
    "bool_param",
    "chat",
    "chat_id_param",
    "entities",
    "int_param",
    "json_param",
    "read_params",
    "too_many",
]

TOKEN_PATTERN: Final = re.compile(r"(\d+):[A-Za-z0-9_-]{35}")
SECRET_PATTERN: Final = re.compile(r"[A-Za-z0-9_-]{1,256}")
SECRET_HEADER: Final = "X-Telegram-Bot-Api-Secret-Token"
MAX_TEXT_LENGTH: Final = 4096  # characters
MAX_CAPTION_LENGTH: Final = 1024  # characters
WEBHOOK_TIMEOUT: Final = 10.0  # seconds the receiver may take to answer
WEBHOOK_RETRY_FIRST: Final = 0.05  # seconds; doubles per failure
WEBHOOK_RETRY_MAX: Final = 2.0  # seconds
MESSAGES_KEPT: Final = 10_000  # per bot, for reply_to_message; older replies get a stub
# What Telegram marks in plain text on its own: /commands (optionally /cmd@botname) and
# @mentions, each at the start or after a non-word character.
AUTO_ENTITIES: Final = re.compile(
    r"(?<![\w/@])(?:(?P<bot_command>/[A-Za-z0-9_]{1,64}(?:@[A-Za-z0-9_]{5,32})?)"
    r"|(?P<mention>@[A-Za-z0-9_]{5,32}))(?![\w@])"
)
MEDIA_FIELDS: Final = {
    "sendphoto": "photo",
    "sendvideo": "video",
    "senddocument": "document",
    "sendaudio": "audio",
}


class ApiError(Exception):
    """An error answer: ``{"ok": false, "error_code", "description", ...}``."""

    def __init__(self, code: int, description: str, *, retry_after: int | None = None) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.retry_after = retry_after

    def response(self) -> Response:
        body: dict[str, Any] = {
            "ok": False,
            "error_code": self.code,
            "description": self.description,
        }
        if self.retry_after is not None:
            body["parameters"] = {"retry_after": self.retry_after}
        return JSONResponse(body, status_code=self.code)


def too_many(wait: float) -> ApiError:
    seconds = max(1, math.ceil(wait))
    return ApiError(429, f"Too Many Requests: retry after {seconds}", retry_after=seconds)


@attrs.frozen(kw_only=True)
class Upload:
    """A file part of a multipart request."""

    filename: str | None
    content_type: str | None
    data: bytes = attrs.field(repr=lambda data: f"<{len(data)} bytes>")

    def record(self) -> dict[str, Any]:
        """How ``/_emulator/sent`` shows it."""
        return {"upload": self.filename, "size": len(self.data)}


@attrs.frozen(kw_only=True)
class Call:
    """One method call: its name as the caller spelled it, and the HTTP request
    it came in (``None`` for a method returned in a webhook's answer)."""

    method: str
    request: Request | None = None


@attrs.define
class Poll:
    """A held getUpdates request; ``kicked`` is the 409 text when another took over."""

    scope: trio.CancelScope
    kicked: str | None = None

    def kick(self, description: str) -> None:
        self.kicked = description
        self.scope.cancel()


@attrs.define(eq=False)
class Bot:
    """One bot's state on the platform side."""

    token: str
    id: int
    updates: list[dict[str, Any]] = attrs.field(factory=list)
    next_update_id: int = 1
    allowed_updates: frozenset[str] | None = None
    next_message_ids: dict[int, int] = attrs.field(factory=dict)
    messages: dict[tuple[int, int], dict[str, Any]] = attrs.field(factory=dict, repr=False)
    poll: Poll | None = None
    webhook_url: str | None = None
    webhook_secret: str | None = attrs.field(default=None, repr=False)
    delivered: set[int] = attrs.field(factory=set, repr=False)  # update ids handed out
    webhook_scope: trio.CancelScope | None = None
    last_error: tuple[int, str] | None = None
    sends: deque[float] = attrs.field(factory=deque)
    chat_sends: dict[int, deque[float]] = attrs.field(factory=dict)
    chat_buckets: dict[int, tuple[float, float]] = attrs.field(factory=dict)  # tokens, at
    deleted: set[tuple[int, int]] = attrs.field(factory=set)
    changed: trio.Event = attrs.field(factory=trio.Event)

    def user(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "is_bot": True,
            "first_name": "Emulated Bot",
            "username": f"emu{self.id}_bot",
        }

    def new_message_id(self, chat_id: int) -> int:
        message_id = self.next_message_ids.get(chat_id, 1)
        self.next_message_ids[chat_id] = message_id + 1
        return message_id

    def message_exists(self, chat_id: int, message_id: int) -> bool:
        return (
            1 <= message_id < self.next_message_ids.get(chat_id, 1)
            and (chat_id, message_id) not in self.deleted
        )

    def remember(self, message: dict[str, Any]) -> None:
        """Keep ``message`` (bounded) so a reply to it can carry it, as Telegram's do."""
        self.messages[(message["chat"]["id"], message["message_id"])] = message
        if len(self.messages) > MESSAGES_KEPT:
            del self.messages[next(iter(self.messages))]

    def replied(self, chat_id: int, message_id: int, date: int) -> dict[str, Any]:
        """``reply_to_message``: the original, one level deep (Telegram does not nest)."""
        original = self.messages.get((chat_id, message_id))
        if original is None:
            return {"message_id": message_id, "chat": chat(chat_id), "date": date}
        return {k: v for k, v in original.items() if k != "reply_to_message"}

    def add_update(self, kind: str, message: dict[str, Any]) -> int:
        update_id = self.next_update_id
        self.next_update_id += 1
        self.updates.append({"update_id": update_id, kind: message})
        self.changed.set()
        self.changed = trio.Event()
        return update_id

    def confirm(self, offset: int) -> None:
        """getUpdates' offset: forget updates below it (negative: keep the last -offset)."""
        if offset < 0:
            self.updates = self.updates[offset:]
        else:
            self.updates = [u for u in self.updates if u["update_id"] >= offset]

    def ready(self, limit: int) -> list[dict[str, Any]]:
        if self.allowed_updates is not None:
            allowed = self.allowed_updates
            self.updates = [u for u in self.updates if (set(u) - {"update_id"}) & allowed]
        return self.updates[:limit]

    async def wait_ready(self, limit: int) -> list[dict[str, Any]]:
        while not (updates := self.ready(limit)):
            await self.changed.wait()
        return updates


def entities(text: str) -> list[dict[str, Any]]:
    """The entities Telegram finds in plain text; offsets count UTF-16 code units."""

    def units(s: str) -> int:
        return len(s.encode("utf-16-le")) // 2

    return [
        {"type": match.lastgroup, "offset": units(text[: match.start()]), "length": units(match[0])}
        for match in AUTO_ENTITIES.finditer(text)
    ]


def chat(chat_id: int) -> dict[str, Any]:
    if chat_id > 0:
        return {"id": chat_id, "type": "private", "first_name": f"User {chat_id}"}
    kind = "supergroup" if str(chat_id).startswith("-100") else "group"
    return {"id": chat_id, "type": kind, "title": f"Group {chat_id}"}


# --- parameters: four encodings, one coercion ---------------------------------------------


async def read_params(request: Request) -> dict[str, Any]:
    params: dict[str, Any] = dict(request.query_params)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        body = await request.body()
        if body.strip():
            try:
                data = json.loads(body)
            except ValueError:
                raise ApiError(400, "Bad Request: can't parse JSON request body") from None
            if not isinstance(data, dict):
                raise ApiError(400, "Bad Request: the JSON request body must be an object")
            params.update(data)
    elif content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        async with request.form() as form:
            for key, value in form.multi_items():
                if isinstance(value, UploadFile):
                    data = await value.read()
                    params[key] = Upload(
                        filename=value.filename, content_type=value.content_type, data=data
                    )
                else:
                    params[key] = value
        # aiogram names a file part and refers to it as "attach://<part>"
        for key, value in list(params.items()):
            if isinstance(value, str) and value.startswith("attach://"):
                attached = params.get(value[len("attach://") :])
                if isinstance(attached, Upload):
                    params[key] = attached
    return params


def int_param(params: dict[str, Any], name: str) -> int | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ApiError(400, f'Bad Request: field "{name}" must be of type Integer')
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ApiError(400, f'Bad Request: field "{name}" must be of type Integer') from None


def json_param(params: dict[str, Any], name: str) -> Any:
    value = params.get(name)
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            raise ApiError(400, f"Bad Request: can't parse {name} JSON object") from None
    return value


def bool_param(params: dict[str, Any], name: str) -> bool:
    value = params.get(name)
    if isinstance(value, str):
        return value.lower() in ("true", "1")
    return bool(value)


def chat_id_param(params: dict[str, Any]) -> int:
    value = params.get("chat_id")
    if value is None or value == "":
        raise ApiError(400, "Bad Request: chat_id is empty")
    try:
        return int(value)
    except (TypeError, ValueError):
        # @channelusername chats are not modelled: none exists.
        raise ApiError(400, "Bad Request: chat not found") from None
