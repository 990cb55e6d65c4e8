"""Platform emulators inside the node, for local runs and tests.

Design: ``[emulators.<platform>]`` starts that platform's emulator in the
node's own trio loop, as a supervised service. A channel with
``emulator = true`` connects to it with credentials the node makes up here
(random, never written anywhere), so a local deployment file holds no
secrets at all. The emulator is told what it needs to know about those
channels: WhatsApp's app secret, phone numbers and the node's webhook URL.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Mapping
from typing import Any, Final

from providers.emulators.base import Emulator, serve_emulator
from providers.registry import EMULATORS, load

from .config.model import ChannelSpec, EmulatorConfig
from .services import Serve

__all__ = ["LocalEmulators"]

WHATSAPP_NUMBER_BASE: Final = 100_000_000_000  # made-up phone number ids start here


class LocalEmulators:
    """The node's in-process emulators and the made-up credentials of their channels."""

    def __init__(self, configs: Mapping[str, EmulatorConfig]) -> None:
        self.configs = dict(configs)
        self.emulators: dict[str, Emulator] = {
            platform: load(EMULATORS, platform)(**config.options)
            for platform, config in self.configs.items()
        }
        self.urls: dict[str, str] = {}
        self._credentials: dict[str, dict[str, str]] = {}
        self._numbers: dict[str, str] = {}
        self._app_secret = secrets.token_hex(16)
        whatsapp = self.emulators.get("whatsapp")
        if whatsapp is not None:
            whatsapp.app_secret = self._app_secret  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"<LocalEmulators {self.urls or sorted(self.emulators)}>"

    def serve(self, platform: str) -> Serve:
        """The ``serve_*`` function of one emulator, for a service actor."""
        config = self.configs[platform]
        return functools.partial(
            serve_emulator,
            self.emulators[platform],
            host=config.host,
            port=config.port,
            allow_remote=config.allow_remote,
        )

    def set_webhook_base(self, base_url: str) -> None:
        """Tell the emulators that call webhooks where the node's ops server is."""
        whatsapp = self.emulators.get("whatsapp")
        if whatsapp is not None and getattr(whatsapp, "webhook_url", None) is None:
            whatsapp.webhook_url = f"{base_url}/webhooks/whatsapp"  # type: ignore[attr-defined]

    def base_url(self, spec: ChannelSpec) -> str:
        """Where a channel reaches its emulator (the emulator must be serving).

        Raises:
            KeyError: no emulator for the channel's provider is running.
        """
        try:
            url = self.urls[spec.provider]
        except KeyError:
            raise KeyError(
                f"channel {spec.id!r} wants the {spec.provider} emulator, which is not "
                f"configured ([emulators.{spec.provider}])"
            ) from None
        if spec.provider == "websocket":
            return url.replace("http://", "ws://", 1) + "/ws"
        return url

    def credentials(self, spec: ChannelSpec) -> dict[str, str]:
        """Made-up credentials for an emulated channel (the same for its lifetime)."""
        made = self._credentials.get(spec.id)
        if made is None:
            made = self._make_credentials(spec)
            self._credentials[spec.id] = made
        return made

    def options(self, spec: ChannelSpec) -> dict[str, Any]:
        """Options the emulator needs the channel to use (WhatsApp: its number)."""
        if spec.provider != "whatsapp":
            return {}
        number = spec.options.get("phone_number_id")
        if number is None:
            number = self._numbers.get(spec.id)
            if number is None:
                number = str(WHATSAPP_NUMBER_BASE + len(self._numbers) + 1)
                self._numbers[spec.id] = number
        whatsapp = self.emulators.get("whatsapp")
        known = getattr(whatsapp, "phone_number_ids", None)
        if whatsapp is not None and (known is None or str(number) not in known):
            whatsapp.phone_number_ids = {*(known or ()), str(number)}  # type: ignore[attr-defined]
        return {"phone_number_id": str(number)}

    def _make_credentials(self, spec: ChannelSpec) -> dict[str, str]:
        if spec.provider == "telegram":
            # The Bot API's token shape: <bot id>:<35 characters>.
            bot_id = 100_000 + len(self._credentials) + 1
            return {"token": f"{bot_id}:{secrets.token_urlsafe(27)[:35]}"}
        if spec.provider == "whatsapp":
            return {
                "token": "EAAG" + secrets.token_hex(16),
                "app_secret": self._app_secret,
                "verify_token": secrets.token_hex(8),
            }
        return {"token": secrets.token_hex(16)}
