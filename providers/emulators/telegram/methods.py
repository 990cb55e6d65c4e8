"""The emulated Telegram's methods beyond sending: edits, deletes, chat actions, and more.

Design:
- A mixin of :class:`~providers.emulators.telegram.TelegramEmulator`: each
  method takes the bot, its coerced parameters and the :class:`~.model.Call`,
  and answers what the Bot API answers, with its error texts:
  ``editMessageText`` (``message to edit not found``, ``message is not
  modified``), ``deleteMessage`` (``message to delete not found``),
  ``sendChatAction`` (``wrong parameter action in request``),
  ``setMessageReaction`` (``message to react not found``), ``getChat``,
  ``getFile`` (and the download path ``/file/bot<token>/<file_path>``),
  ``copyMessage``, ``forwardMessage``, ``sendMediaGroup``,
  ``setMyCommands`` / ``getMyCommands`` / ``deleteMyCommands`` and
  ``answerCallbackQuery``.
- What a bot did is kept in :attr:`operations` (``GET /_emulator/operations``
  on the control API shows it), besides ``/_emulator/sent`` for messages.
- Uploaded files (multipart parts) are kept with their bytes so ``getFile``
  and the download path return them; a file sent by URL has no bytes here
  (the emulator fetches nothing), and its download answers 404.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Final

from starlette.requests import Request
from starlette.responses import Response

from ..base import Emulator
from .model import (
    MAX_CAPTION_LENGTH,
    MAX_TEXT_LENGTH,
    ApiError,
    Bot,
    Call,
    Upload,
    chat,
    chat_id_param,
    int_param,
    json_param,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ["CHAT_ACTIONS", "TelegramMethods"]

CHAT_ACTIONS: Final = frozenset(
    {
        "typing",
        "upload_photo",
        "record_video",
        "upload_video",
        "record_voice",
        "upload_voice",
        "upload_document",
        "choose_sticker",
        "find_location",
        "record_video_note",
        "upload_video_note",
    }
)
MEDIA_GROUP_TYPES: Final = {"photo", "video", "document", "audio"}
MAX_REACTIONS: Final = 1  # a bot sets at most one reaction (non-premium)
NOT_MODIFIED: Final = (
    "Bad Request: message is not modified: specified new message content and reply "
    "markup are exactly the same as a current content and reply markup of the message"
)


class TelegramMethods(Emulator):
    """The Bot API methods beyond getUpdates and the send methods (a mixin)."""

    if TYPE_CHECKING:
        bots: dict[str, Bot]
        unknown_chats: set[int]
        blocked_chats: set[int]

        def _post(
            self, bot: Bot, chat_id: int, message: dict[str, Any], record: dict[str, Any]
        ) -> dict[str, Any]: ...

    def __init__(self) -> None:
        super().__init__()
        self.files: dict[str, tuple[bytes | None, str]] = {}  # file_id -> (bytes, file_path)
        self.commands: dict[int, list[dict[str, Any]]] = {}  # bot id -> its commands

    def more_methods(self) -> dict[str, Callable[[Bot, dict[str, Any], Call], Awaitable[Any]]]:
        """The methods of this mixin, by lower-case name."""
        return {
            "editmessagetext": self._edit_message_text,
            "deletemessage": self._delete_message,
            "sendchataction": self._send_chat_action,
            "setmessagereaction": self._set_message_reaction,
            "getchat": self._get_chat,
            "getfile": self._get_file,
            "copymessage": self._copy_message,
            "forwardmessage": self._forward_message,
            "sendmediagroup": self._send_media_group,
            "setmycommands": self._set_my_commands,
            "getmycommands": self._get_my_commands,
            "deletemycommands": self._delete_my_commands,
            "answercallbackquery": self._answer_callback_query,
        }

    def _operation(self, bot: Bot, call: Call, **fields: Any) -> None:
        self.record_operation({"bot_id": bot.id, "method": call.method, **fields})

    def _reachable(self, chat_id: int) -> None:
        if chat_id in self.unknown_chats:
            raise ApiError(400, "Bad Request: chat not found")
        if chat_id in self.blocked_chats:
            raise ApiError(403, "Forbidden: bot was blocked by the user")

    # --- files --------------------------------------------------------------------------

    def _store_file(self, field: str, media: Any) -> str:
        """Keep an uploaded (or referenced) file; its ``file_id``."""
        if isinstance(media, str) and media in self.files:
            return media  # a file_id sent again
        self.stats["files"] += 1
        number = self.stats["files"]
        file_id = f"emu-{field}-{number}"
        data = media.data if isinstance(media, Upload) else None
        name = media.filename if isinstance(media, Upload) and media.filename else f"file_{number}"
        self.files[file_id] = (data, f"{field}s/{name}")
        if data is not None:
            self.stats["uploaded_bytes"] += len(data)
        return file_id

    def _file_object(self, field: str, file_id: str) -> Any:
        data, _ = self.files[file_id]
        unique = f"u{file_id.rsplit('-', 1)[-1]}"
        file: dict[str, Any] = {"file_id": file_id, "file_unique_id": unique}
        if data is not None:
            file["file_size"] = len(data)
        if field == "photo":
            return [{**file, "width": 1280, "height": 720}]
        return file

    async def _get_file(self, bot: Bot, params: dict[str, Any], call: Call) -> Any:
        file_id = params.get("file_id")
        if not isinstance(file_id, str) or file_id not in self.files:
            raise ApiError(400, "Bad Request: invalid file_id")
        data, path = self.files[file_id]
        answer: dict[str, Any] = {
            "file_id": file_id,
            "file_unique_id": f"u{file_id.rsplit('-', 1)[-1]}",
            "file_path": path,
        }
        if data is not None:
            answer["file_size"] = len(data)
        return answer

    async def _download(self, request: Request) -> Response:
        path = request.path_params["file_path"]
        token = request.path_params["token"]
        if token not in self.bots or self.is_banned(token):
            return Response("Unauthorized", status_code=401)
        for data, file_path in self.files.values():
            if file_path == path and data is not None:
                return Response(data, media_type="application/octet-stream")
        return Response("Not Found", status_code=404)

    # --- changing messages ------------------------------------------------------------------

    def _existing(self, bot: Bot, params: dict[str, Any], what: str) -> tuple[int, int]:
        chat_id = chat_id_param(params)
        self._reachable(chat_id)
        message_id = int_param(params, "message_id")
        if message_id is None:
            raise ApiError(400, "Bad Request: message identifier is not specified")
        if not bot.message_exists(chat_id, message_id):
            raise ApiError(400, f"Bad Request: message to {what} not found")
        return chat_id, message_id

    async def _edit_message_text(self, bot: Bot, params: dict[str, Any], call: Call) -> Any:
        if params.get("inline_message_id"):
            raise ApiError(400, "Bad Request: MESSAGE_ID_INVALID")  # no inline messages here
        chat_id, message_id = self._existing(bot, params, "edit")
        text = params.get("text")
        if not isinstance(text, str) or not text:
            raise ApiError(400, "Bad Request: message text is empty")
        if len(text) > MAX_TEXT_LENGTH:
            raise ApiError(400, "Bad Request: MESSAGE_TOO_LONG")
        kept = bot.messages.get((chat_id, message_id))
        if kept is not None and kept.get("from", {}).get("id") != bot.id:
            raise ApiError(400, "Bad Request: message can't be edited")
        if kept is not None and kept.get("text") == text:
            raise ApiError(400, NOT_MODIFIED)
        message = (
            dict(kept)
            if kept is not None
            else {
                "message_id": message_id,
                "chat": chat(chat_id),
                "from": bot.user(),
                "date": int(time.time()),
            }
        )
        message.update(text=text, edit_date=int(time.time()))
        message.pop("entities", None)
        bot.remember(message)
        self._operation(bot, call, chat_id=chat_id, message_id=message_id, text=text)
        return message

    async def _delete_message(self, bot: Bot, params: dict[str, Any], call: Call) -> Any:
        chat_id, message_id = self._existing(bot, params, "delete")
        bot.deleted.add((chat_id, message_id))
        bot.messages.pop((chat_id, message_id), None)
        self._operation(bot, call, chat_id=chat_id, message_id=message_id)
        return True

    async def _set_message_reaction(self, bot: Bot, params: dict[str, Any], call: Call) -> Any:
        chat_id, message_id = self._existing(bot, params, "react")
        reaction = json_param(params, "reaction") or []
        if not isinstance(reaction, list) or len(reaction) > MAX_REACTIONS:
            raise ApiError(400, "Bad Request: REACTIONS_TOO_MANY")
        emojis = []
        for item in reaction:
            if not isinstance(item, dict) or item.get("type") not in ("emoji", "custom_emoji"):
                raise ApiError(400, "Bad Request: REACTION_INVALID")
            emojis.append(item.get("emoji") or item.get("custom_emoji_id"))
        self._operation(bot, call, chat_id=chat_id, message_id=message_id, reaction=emojis)
        return True

    async def _send_chat_action(self, bot: Bot, params: dict[str, Any], call: Call) -> Any:
        chat_id = chat_id_param(params)
        self._reachable(chat_id)
        action = params.get("action")
        if action not in CHAT_ACTIONS:
            raise ApiError(400, "Bad Request: wrong parameter action in request")
        self._operation(bot, call, chat_id=chat_id, action=action)
        return True

    # --- more messages ----------------------------------------------------------------------

    def _copied(
        self, bot: Bot, params: dict[str, Any], call: Call
    ) -> tuple[int, dict[str, Any], dict[str, Any]]:
        chat_id = chat_id_param(params)
        from_chat = params.get("from_chat_id")
        try:
            source_chat = int(from_chat) if from_chat is not None else 0
        except (TypeError, ValueError):
            raise ApiError(400, "Bad Request: chat not found") from None
        message_id = int_param(params, "message_id")
        if message_id is None or not bot.message_exists(source_chat, message_id):
            what = "copy" if call.method.lower() == "copymessage" else "forward"
            raise ApiError(400, f"Bad Request: message to {what} not found")
        self._reachable(chat_id)
        original = bot.messages.get((source_chat, message_id)) or {}
        content = {
            k: v
            for k, v in original.items()
            if k in ("text", "entities", "caption", "photo", "video", "document", "audio")
        }
        record = {
            "bot_id": bot.id,
            "method": call.method,
            "chat_id": chat_id,
            "from_chat_id": source_chat,
            "source_message_id": message_id,
        }
        return chat_id, content, record

    async def _copy_message(self, bot: Bot, params: dict[str, Any], call: Call) -> Any:
        chat_id, content, record = self._copied(bot, params, call)
        caption = params.get("caption")
        if isinstance(caption, str):
            if len(caption) > MAX_CAPTION_LENGTH:
                raise ApiError(400, "Bad Request: message caption is too long")
            content["caption"] = caption
        message = {"chat": chat(chat_id), "from": bot.user(), "date": int(time.time()), **content}
        sent = self._post(bot, chat_id, message, record)
        return {"message_id": sent["message_id"]}

    async def _forward_message(self, bot: Bot, params: dict[str, Any], call: Call) -> Any:
        chat_id, content, record = self._copied(bot, params, call)
        source = bot.messages.get((record["from_chat_id"], record["source_message_id"])) or {}
        sender = source.get("from") or {"id": record["from_chat_id"], "is_bot": False}
        message = {
            "chat": chat(chat_id),
            "from": bot.user(),
            "date": int(time.time()),
            "forward_origin": {
                "type": "user",
                "sender_user": sender,
                "date": source.get("date", 0),
            },
            **content,
        }
        return self._post(bot, chat_id, message, record)

    async def _send_media_group(self, bot: Bot, params: dict[str, Any], call: Call) -> Any:
        chat_id = chat_id_param(params)
        media = json_param(params, "media")
        if not isinstance(media, list) or not 2 <= len(media) <= 10:
            raise ApiError(400, "Bad Request: wrong number of media in the group (2-10)")
        self._reachable(chat_id)
        items = []
        for item in media:
            if not isinstance(item, dict) or item.get("type") not in MEDIA_GROUP_TYPES:
                raise ApiError(400, "Bad Request: wrong type of the media in the group")
            ref = item.get("media")
            if isinstance(ref, str) and ref.startswith("attach://"):
                ref = params.get(ref[len("attach://") :])
            if not ref:
                raise ApiError(400, "Bad Request: there is no media in the group item")
            items.append((item, ref))
        group = f"{bot.id}{int(time.time() * 1000)}"
        sent = []
        for item, ref in items:
            field = item["type"]
            file_id = self._store_file(field, ref)
            message: dict[str, Any] = {
                "chat": chat(chat_id),
                "from": bot.user(),
                "date": int(time.time()),
                "media_group_id": group,
                field: self._file_object(field, file_id),
            }
            record: dict[str, Any] = {
                "bot_id": bot.id,
                "method": call.method,
                "chat_id": chat_id,
                "media": ref.record() if isinstance(ref, Upload) else ref,
            }
            if isinstance(item.get("caption"), str):
                message["caption"] = record["caption"] = item["caption"]
            sent.append(self._post(bot, chat_id, message, record))
        return sent

    # --- the bot and its chats ---------------------------------------------------------------

    async def _get_chat(self, bot: Bot, params: dict[str, Any], call: Call) -> Any:
        chat_id = chat_id_param(params)
        if chat_id in self.unknown_chats:
            raise ApiError(400, "Bad Request: chat not found")
        # ChatFullInfo: these three are required (Bot API 7.3, 9.0; gifts_from_channels 9.3).
        return {
            **chat(chat_id),
            "accent_color_id": 0,
            "max_reaction_count": 11,
            "accepted_gift_types": {
                "unlimited_gifts": False,
                "limited_gifts": False,
                "unique_gifts": False,
                "premium_subscription": False,
                "gifts_from_channels": False,
            },
        }

    async def _set_my_commands(self, bot: Bot, params: dict[str, Any], call: Call) -> Any:
        commands = json_param(params, "commands")
        if not isinstance(commands, list) or len(commands) > 100:
            raise ApiError(400, "Bad Request: commands must be a list of at most 100")
        for command in commands:
            if not (
                isinstance(command, dict)
                and isinstance(command.get("command"), str)
                and 1 <= len(command["command"]) <= 32
                and isinstance(command.get("description"), str)
                and 1 <= len(command["description"]) <= 256
            ):
                raise ApiError(400, "Bad Request: BOT_COMMAND_INVALID")
        self.commands[bot.id] = [
            {"command": c["command"], "description": c["description"]} for c in commands
        ]
        self._operation(bot, call, commands=len(commands))
        return True

    async def _get_my_commands(self, bot: Bot, params: dict[str, Any], call: Call) -> Any:
        return self.commands.get(bot.id, [])

    async def _delete_my_commands(self, bot: Bot, params: dict[str, Any], call: Call) -> Any:
        self.commands.pop(bot.id, None)
        return True

    async def _answer_callback_query(self, bot: Bot, params: dict[str, Any], call: Call) -> Any:
        query = params.get("callback_query_id")
        if not isinstance(query, str) or not query:
            raise ApiError(
                400,
                "Bad Request: query is too old and response timeout expired or query ID is invalid",
            )
        self._operation(bot, call, callback_query_id=query, text=params.get("text"))
        return True
