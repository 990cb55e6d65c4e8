"""The WhatsApp Cloud API provider: a sans-IO core and a thin trio shell.

:mod:`.core` builds Cloud API requests and maps Graph errors into the
:mod:`providers.base` tree; :mod:`.webhook` verifies and parses webhooks;
:mod:`.shell` performs the requests with httpx and queues webhook events.
"""

from .core import WHATSAPP_LIMITS, WhatsAppSettings
from .shell import WhatsAppConnection, WhatsAppProvider
from .webhook import WebhookOutcome, WebhookPayloadError

__all__ = [
    "WHATSAPP_LIMITS",
    "WebhookOutcome",
    "WebhookPayloadError",
    "WhatsAppConnection",
    "WhatsAppProvider",
    "WhatsAppSettings",
]
