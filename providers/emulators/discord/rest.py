"""The emulated Discord's REST API (v10): the routes a bot library calls.

Design:
- Discord's paths under ``/api/v10``, Discord's JSON shapes and
  ``Content-Type: application/json``; unknown routes and wrong methods are
  answered in JSON too (404 / 405), as Discord does.
- ``POST /channels/{id}/messages`` has a per-channel bucket with the
  ``X-RateLimit-*`` headers, validates the form as Discord does (50035,
  50006), honours ``enforce_nonce``, and broadcasts MESSAGE_CREATE to the
  gateway sessions.
- Answers carry ``Via: 1.1 google`` like Discord's; a 429 without it is
  Cloudflare's ban, so only the ``ip_block`` fault leaves it out.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Final

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Match, Route

from .model import APPLICATION_FLAGS, OWNER, Bucket
from .state import DiscordState

__all__ = ["DiscordRest"]

MAX_CONTENT: Final = 2000  # characters
MAX_NONCE: Final = 25  # characters
RATE_LIMITED: Final = "You are being rate limited."
HTTP_METHODS: Final = ("GET", "POST", "PUT", "PATCH", "DELETE")


def _json(
    data: Any, status: int = 200, headers: dict[str, str] | None = None, *, via: bool = True
) -> Response:
    """A REST answer. Discord's API answers pass its Google front end (``Via: 1.1
    google``); a 429 without ``Via`` is Cloudflare's ban, and discord.py tells the two
    apart by exactly that, so only the ``ip_block`` fault leaves it out."""
    headers = {**(headers or {}), **({"Via": "1.1 google"} if via else {})}
    return JSONResponse(data, status_code=status, headers=headers)


class DiscordRest(DiscordState):
    """Discord's REST routes over :class:`DiscordState`."""

    def _rest_routes(self) -> list[BaseRoute]:
        return [
            Route("/api/v10/gateway", self._get_gateway, methods=["GET"]),
            Route("/api/v10/gateway/bot", self._get_gateway_bot, methods=["GET"]),
            Route("/api/v10/users/@me", self._get_me, methods=["GET"]),
            Route("/api/v10/oauth2/applications/@me", self._get_application, methods=["GET"]),
            Route("/api/v10/channels/{channel_id}/messages", self._post_message, methods=["POST"]),
            # Last: Discord answers unknown routes and wrong methods in JSON, not plain text.
            Route("/api/v10/{rest:path}", self._no_route, methods=list(HTTP_METHODS)),
        ]

    async def _no_route(self, request: Request) -> Response:
        for route in self.app.routes:
            if route.endpoint is self._no_route:  # type: ignore[attr-defined]
                break
            if route.matches(request.scope)[0] is Match.PARTIAL:
                return _json({"message": "405: Method Not Allowed", "code": 0}, 405)
        return _json({"message": "404: Not Found", "code": 0}, 404)

    def _admit(self, request: Request) -> Response | str:
        """Common REST checks; the bot token when the request may proceed."""
        self.stats["rest_requests"] += 1
        now = trio.current_time()
        if now < self.ip_blocked_until:
            self.stats["rest_ip_blocked"] += 1
            return _json(
                {
                    "message": "You are being blocked from accessing our API temporarily due "
                    "to exceeding our rate limits frequently.",
                    "code": 0,
                },
                429,
                via=False,
            )
        auth = request.headers.get("authorization", "")
        token = auth[4:] if auth.startswith("Bot ") else None
        if not self._token_ok(token):
            self.stats["rest_401"] += 1
            return _json({"message": "401: Unauthorized", "code": 0}, 401)
        assert token is not None
        remaining = self.rate_limit_remaining()
        if remaining > 0:
            self.stats["rest_429"] += 1
            return _json(
                {
                    "message": RATE_LIMITED,
                    "retry_after": remaining,
                    "global": True,
                },
                429,
                {
                    "Retry-After": str(max(1, round(remaining))),
                    "X-RateLimit-Global": "true",
                    "X-RateLimit-Scope": "global",
                },
            )
        return token

    async def _get_gateway(self, request: Request) -> Response:
        return _json({"url": f"ws://{request.url.netloc}/gateway"})

    async def _get_gateway_bot(self, request: Request) -> Response:
        admitted = self._admit(request)
        if isinstance(admitted, Response):
            return admitted
        return _json(
            {
                "url": f"ws://{request.url.netloc}/gateway",
                "shards": 1,
                "session_start_limit": {
                    "total": self.session_start_total,
                    "remaining": self.session_start_remaining,
                    "reset_after": 86_400_000,
                    "max_concurrency": 1,
                },
            }
        )

    async def _get_me(self, request: Request) -> Response:
        admitted = self._admit(request)
        if isinstance(admitted, Response):
            return admitted
        return _json(self._bot_user(admitted))

    async def _get_application(self, request: Request) -> Response:
        admitted = self._admit(request)
        if isinstance(admitted, Response):
            return admitted
        user = self._bot_user(admitted)
        # The bot's application shares the bot user's id, as on Discord; an
        # emulated bot has no team, so its owner is a (made-up) user.
        return _json(
            {
                "id": user["id"],
                "name": user["username"],
                "icon": None,
                "description": "",
                "summary": "",
                "type": None,
                "bot_public": True,
                "bot_require_code_grant": False,
                "verify_key": hashlib.sha256(admitted.encode()).hexdigest(),
                "flags": APPLICATION_FLAGS,
                "bot": user,
                "owner": OWNER,
                "team": None,
                "redirect_uris": [],
                "interactions_endpoint_url": None,
            }
        )

    def _bucket_headers(self, bucket: Bucket, now: float) -> dict[str, str]:
        reset_after = max(0.0, bucket.reset_at - now)
        return {
            "X-RateLimit-Limit": str(self.message_bucket[0]),
            "X-RateLimit-Remaining": str(bucket.remaining),
            "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
            "X-RateLimit-Reset-After": f"{reset_after:.3f}",
            "X-RateLimit-Bucket": "emulated-create-message",
        }

    async def _post_message(self, request: Request) -> Response:
        admitted = self._admit(request)
        if isinstance(admitted, Response):
            return admitted
        token = admitted
        channel_id = request.path_params["channel_id"]
        if not channel_id.isdigit() or channel_id in self.deleted_channels:
            return _json({"message": "Unknown Channel", "code": 10003}, 404)
        now = trio.current_time()
        limit, per = self.message_bucket
        bucket = self._buckets.get(channel_id)
        if bucket is None or now >= bucket.reset_at:
            bucket = self._buckets[channel_id] = Bucket(limit, now + per)
        if bucket.remaining <= 0:
            self.stats["rest_429"] += 1
            retry_after = round(bucket.reset_at - now, 3)
            headers = self._bucket_headers(bucket, now)
            headers.update(
                {"Retry-After": str(max(1, round(retry_after))), "X-RateLimit-Scope": "user"}
            )
            return _json(
                {
                    "message": RATE_LIMITED,
                    "retry_after": retry_after,
                    "global": False,
                },
                429,
                headers,
            )
        bucket.remaining -= 1
        headers = self._bucket_headers(bucket, now)
        try:
            body = await request.json()
        except ValueError:
            return _json({"message": "400: Bad Request", "code": 0}, 400, headers)
        if not isinstance(body, dict):
            return _json({"message": "400: Bad Request", "code": 0}, 400, headers)
        content = body.get("content") or ""
        nonce = body.get("nonce")
        errors: dict[str, Any] = {}
        if not isinstance(content, str) or len(content) > MAX_CONTENT:
            errors["content"] = {
                "_errors": [
                    {"code": "BASE_TYPE_MAX_LENGTH", "message": "Must be 2000 or fewer in length."}
                ]
            }
        if nonce is not None and len(str(nonce)) > MAX_NONCE:
            errors["nonce"] = {
                "_errors": [{"code": "BASE_TYPE_MAX_LENGTH", "message": "Must be 25 or fewer."}]
            }
        if errors:
            invalid = {"message": "Invalid Form Body", "code": 50035, "errors": errors}
            return _json(invalid, 400, headers)
        if not content and not body.get("embeds") and not body.get("attachments"):
            return _json({"message": "Cannot send an empty message", "code": 50006}, 400, headers)
        nonce_key = (token, channel_id, str(nonce))
        if nonce is not None and body.get("enforce_nonce") and nonce_key in self._nonces:
            self.stats["nonce_deduplicated"] += 1
            return _json(self._nonces[nonce_key], 200, headers)
        guild = self._guild_of(channel_id)
        message = self._message(
            channel_id=channel_id,
            content=content,
            author=self._bot_user(token),
            guild_id=None,
            nonce=nonce,
            reply_to=(body.get("message_reference") or {}).get("message_id"),
            reference_guild_id=None if guild is None else guild.id,
        )
        if nonce is not None:
            self._nonces[nonce_key] = message
        self.record_sent(message)
        if guild is None:
            self._broadcast("MESSAGE_CREATE", message)
        else:
            # The REST answer has neither; the gateway's MESSAGE_CREATE has both.
            member = guild.member(None)
            self._broadcast("MESSAGE_CREATE", {**message, "guild_id": guild.id, "member": member})
        return _json(message, 200, headers)
