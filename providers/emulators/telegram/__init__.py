"""A local Telegram Bot API: getUpdates long polling, webhooks, sends and limits.

Design:
- Methods live at ``/bot<token>/<method>`` (names case-insensitive, GET or
  POST) and take their parameters as a query string, urlencoded form, JSON or
  multipart form, like the real API; in the form encodings nested values
  (``reply_parameters``, ``allowed_updates``) are JSON strings. Answers are
  ``{"ok": true, "result": ...}`` or ``{"ok": false, "error_code",
  "description", "parameters"}`` with the real status codes and texts, so a
  real bot library runs against it unchanged.
- Any well-formed token (``<digits>:<35 characters>``) is a bot; a malformed
  one is 404 Not Found, a banned one (fault ``ban_token``) 401 Unauthorized.
  Any integer chat id is a reachable chat unless a fault says otherwise
  (``unknown_chat`` → 400 chat not found, ``block`` → 403 bot was blocked).
- getUpdates holds the request until an update arrives or ``timeout`` passes;
  ``offset`` drops every update below it (that is the confirmation); a second
  getUpdates while one is held terminates the older with 409, as Telegram
  does; a set webhook makes getUpdates 409. While a webhook is set, a task
  POSTs each update in order with ``X-Telegram-Bot-Api-Secret-Token`` until
  the receiver answers 2xx, retrying with doubling delays. Those tasks live in
  a nursery opened by the ASGI lifespan, so they never outlive the server.
- Limits: 30 sends/s per bot, one per second per chat, 20 per minute per group
  (negative ids), each refused with 429 and ``retry_after`` (whole seconds).
- Messages look like Telegram's to bot libraries (python-telegram-bot runs
  against this unchanged, see tests/test_emulator_compat.py): plain text gets
  the ``bot_command`` and ``mention`` entities Telegram adds on its own (a
  CommandHandler needs them), and ``reply_to_message`` is the replied message
  itself, one level deep, for the last ``MESSAGES_KEPT`` messages per bot.
- Deliberate leniency: webhook URLs may be ``http://`` (for local receivers);
  lengths count code points, not UTF-16 units; ``parse_mode`` is recorded in
  ``/_emulator/sent`` but the markup is neither validated nor turned into
  entities.

Platform faults (``POST /_emulator/fault``): ``{"kind": "unknown_chat",
"chat_id"}``, ``{"kind": "block", "chat_id"}``, ``{"kind": "server_error",
"count", "status"}`` (the next ``count`` calls answer ``status``, default 500).
"""

from .emulator import TelegramEmulator

__all__ = ["TelegramEmulator"]
