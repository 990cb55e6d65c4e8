"""The Telegram Bot API provider: long polling (getUpdates) or webhooks.

:mod:`.core` is the sans-IO Bot API core (requests, answers, error mapping,
the update offset), :mod:`.webhook` judges webhook requests without I/O, and
:mod:`.shell` is the thin trio + httpx layer that runs them.
"""

from .core import GROUP_MESSAGES_PER_MINUTE, TELEGRAM_LIMITS, TelegramOptions
from .shell import TelegramConnection, TelegramProvider
from .webhook import SECRET_HEADER, WebhookHandler, WebhookVerdict

__all__ = [
    "GROUP_MESSAGES_PER_MINUTE",
    "SECRET_HEADER",
    "TELEGRAM_LIMITS",
    "TelegramConnection",
    "TelegramOptions",
    "TelegramProvider",
    "WebhookHandler",
    "WebhookVerdict",
]
