"""The emulated Discord's REST API (v10): the routes a bot library calls.

Design:
- Discord's paths under ``/api/v10``, Discord's JSON shapes and
  ``Content-Type: application/json``; unknown routes and wrong methods are
  answered in JSON too (404 / 405), as Discord does.
- ``POST /channels/{id}/messages`` has a per-channel bucket with the
  ``X-RateLimit-*`` headers, validates the form as Discord does (50035,
  50006), honours ``enforce_nonce``, takes ``multipart/form-data``
  (``payload_json`` and ``files[n]``: attachments), and broadcasts
  MESSAGE_CREATE to the gateway sessions.
- The routes on one message (``GET``, ``PATCH``, ``DELETE``, reactions
  ``PUT``/``DELETE …/reactions/{emoji}/@me``) and ``POST /channels/{id}/typing``
  each have their own bucket; a message that is not there is 404 10008
  Unknown Message, an edit of another's message 403 50005. Edits broadcast
  MESSAGE_UPDATE, deletes MESSAGE_DELETE; every operation is kept in
  ``operations``.
- Every authorised request counts against its bot token's global limit,
  ``global_limit`` (Discord's "50 requests per second"): a fixed window per
  token that starts at its first request; past it, a global 429
  (``"global": true``, ``X-RateLimit-Global: true``, ``X-RateLimit-Scope:
  global``, ``Retry-After``) until the window ends, counted in
  ``rest_429_global`` (and ``rest_429``, every rate-limit 429). The
  ``rate_limit`` fault answers the same global 429 to every token.
- Answers carry ``Via: 1.1 google`` like Discord's; a 429 without it is
  Cloudflare's ban, so only the ``ip_block`` fault leaves it out.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from typing import Any, Final

import trio
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Match, Route

from ...discord.wire import Intents
from .model import APPLICATION_FLAGS, OWNER, Bucket, own_user, timestamp
from .state import GLOBAL_SWEPT_AT, DiscordState

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
            Route(
                "/api/v10/channels/{channel_id}/messages/{message_id}",
                self._get_message,
                methods=["GET"],
            ),
            Route(
                "/api/v10/channels/{channel_id}/messages/{message_id}",
                self._patch_message,
                methods=["PATCH"],
            ),
            Route(
                "/api/v10/channels/{channel_id}/messages/{message_id}",
                self._delete_message,
                methods=["DELETE"],
            ),
            Route(
                "/api/v10/channels/{channel_id}/messages/{message_id}/reactions/{emoji}/@me",
                self._reaction,
                methods=["PUT", "DELETE"],
            ),
            Route("/api/v10/channels/{channel_id}/typing", self._typing, methods=["POST"]),
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
            return self._global_429(remaining)
        return self._take_global(token, now) or token

    def _take_global(self, token: str, now: float) -> Response | None:
        """Count one request against ``token``'s global limit (``global_limit``
        requests in a fixed window that starts at its first request): ``None``,
        or the global 429 to answer. A refused request is not counted."""
        limit, per = self.global_limit
        window = self._global.get(token)
        if window is None or now >= window.reset_at:
            if len(self._global) >= self._global_sweep_at:
                self._sweep_global(now)
            window = self._global[token] = Bucket(limit, now + per)
        if window.remaining <= 0:
            return self._global_429(window.reset_at - now)
        window.remaining -= 1
        return None

    def _sweep_global(self, now: float) -> None:
        """Drop the tokens' windows that have ended (amortised: the next sweep
        waits for twice as many as are left), so ever new tokens keep no more
        than the live windows."""
        self._global = {token: w for token, w in self._global.items() if now < w.reset_at}
        self._global_sweep_at = max(GLOBAL_SWEPT_AT, 2 * len(self._global))

    def _global_429(self, retry_after: float) -> Response:
        """Discord's global 429: ``retry_after`` in seconds (a float) in the body,
        whole seconds rounded up in ``Retry-After``."""
        self.stats["rest_429"] += 1
        self.stats["rest_429_global"] += 1
        return _json(
            {"message": RATE_LIMITED, "retry_after": round(retry_after, 3), "global": True},
            429,
            {
                "Retry-After": str(max(1, math.ceil(retry_after))),
                "X-RateLimit-Global": "true",
                "X-RateLimit-Scope": "global",
            },
        )

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
        return _json(own_user(admitted))

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

    def _bucket_headers(self, bucket: Bucket, now: float, name: str) -> dict[str, str]:
        reset_after = max(0.0, bucket.reset_at - now)
        return {
            "X-RateLimit-Limit": str(self.message_bucket[0]),
            "X-RateLimit-Remaining": str(bucket.remaining),
            "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
            "X-RateLimit-Reset-After": f"{reset_after:.3f}",
            "X-RateLimit-Bucket": f"emulated-{name}",
        }

    def _take(self, name: str, channel_id: str) -> Response | dict[str, str]:
        """Take one request from the ``name`` route's bucket of ``channel_id``: its
        headers, or the 429 to answer."""
        now = trio.current_time()
        limit, per = self.message_bucket
        key = channel_id if name == "create-message" else f"{name}:{channel_id}"
        bucket = self._buckets.get(key)
        if bucket is None or now >= bucket.reset_at:
            bucket = self._buckets[key] = Bucket(limit, now + per)
        if bucket.remaining <= 0:
            self.stats["rest_429"] += 1
            retry_after = round(bucket.reset_at - now, 3)
            headers = self._bucket_headers(bucket, now, name)
            headers.update(
                {"Retry-After": str(max(1, round(retry_after))), "X-RateLimit-Scope": "user"}
            )
            return _json(
                {"message": RATE_LIMITED, "retry_after": retry_after, "global": False},
                429,
                headers,
            )
        bucket.remaining -= 1
        return self._bucket_headers(bucket, now, name)

    async def _message_body(
        self, request: Request, headers: dict[str, str]
    ) -> Response | tuple[dict[str, Any], list[dict[str, Any]]]:
        """The JSON body of a message request (``payload_json`` in a multipart one)
        and its uploaded files as attachment objects."""
        content_type = request.headers.get("content-type", "")
        uploads: list[dict[str, Any]] = []
        try:
            if content_type.startswith("multipart/form-data"):
                async with request.form() as form:
                    raw = form.get("payload_json")
                    body = json.loads(raw) if isinstance(raw, str) else {}
                    for key, value in form.multi_items():
                        if isinstance(value, UploadFile) and key.startswith("files["):
                            data = await value.read()
                            uploads.append(self._attachment(value, data))
            else:
                body = await request.json()
        except ValueError:
            return _json({"message": "400: Bad Request", "code": 0}, 400, headers)
        if not isinstance(body, dict):
            return _json({"message": "400: Bad Request", "code": 0}, 400, headers)
        return body, uploads

    def _attachment(self, upload: UploadFile, data: bytes) -> dict[str, Any]:
        attachment_id = self._snowflake()
        name = upload.filename or "file"
        url = f"https://cdn.discordapp.com/attachments/0/{attachment_id}/{name}"
        self.stats["uploaded_bytes"] += len(data)
        self.files[attachment_id] = data
        return {
            "id": attachment_id,
            "filename": name,
            "size": len(data),
            "url": url,
            "proxy_url": url.replace("cdn.discordapp.com", "media.discordapp.net"),
            "content_type": upload.content_type or "application/octet-stream",
        }

    async def _post_message(self, request: Request) -> Response:
        admitted = self._admit(request)
        if isinstance(admitted, Response):
            return admitted
        token = admitted
        channel_id = request.path_params["channel_id"]
        if not channel_id.isdigit() or channel_id in self.deleted_channels:
            return _json({"message": "Unknown Channel", "code": 10003}, 404)
        headers = self._take("create-message", channel_id)
        if isinstance(headers, Response):
            return headers
        read = await self._message_body(request, headers)
        if isinstance(read, Response):
            return read
        body, uploads = read
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
        if not content and not body.get("embeds") and not uploads:
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
            attachments=uploads,
        )
        if nonce is not None:
            self._nonces[nonce_key] = message
        self.record_sent(message)
        self._broadcast_message("MESSAGE_CREATE", message, guild)
        return _json(message, 200, headers)

    def _broadcast_message(self, name: str, message: dict[str, Any], guild: Any) -> None:
        if guild is None:
            # A bot's message outside a guild is in its own DM channel: other bots
            # do not see it (before, every bot on the emulator got every DM).
            self._broadcast(name, message, only=message["author"]["id"])
        else:
            # The REST answer has neither; the gateway's dispatch has both.
            member = guild.member(None)
            self._broadcast(name, {**message, "guild_id": guild.id, "member": member})

    # --- operations on messages ------------------------------------------------------------

    def _own_message(
        self, request: Request, name: str
    ) -> Response | tuple[str, dict[str, Any], dict[str, str]]:
        """Common checks of a route on one message: the token, the channel, the
        bucket, the message (10008 when it is not there)."""
        admitted = self._admit(request)
        if isinstance(admitted, Response):
            return admitted
        channel_id = request.path_params["channel_id"]
        if not channel_id.isdigit() or channel_id in self.deleted_channels:
            return _json({"message": "Unknown Channel", "code": 10003}, 404)
        headers = self._take(name, channel_id)
        if isinstance(headers, Response):
            return headers
        message = self._messages.get(request.path_params["message_id"])
        if message is None or message["channel_id"] != channel_id:
            return _json({"message": "Unknown Message", "code": 10008}, 404, headers)
        return admitted, message, headers

    async def _get_message(self, request: Request) -> Response:
        found = self._own_message(request, "get-message")
        if isinstance(found, Response):
            return found
        _, message, headers = found
        return _json(message, 200, headers)

    async def _patch_message(self, request: Request) -> Response:
        found = self._own_message(request, "edit-message")
        if isinstance(found, Response):
            return found
        token, message, headers = found
        if message["author"]["id"] != self.user_id_for(token):
            refused = {"message": "Cannot edit a message authored by another user", "code": 50005}
            return _json(refused, 403, headers)
        read = await self._message_body(request, headers)
        if isinstance(read, Response):
            return read
        body, _ = read
        content = body.get("content")
        if content is not None and (not isinstance(content, str) or len(content) > MAX_CONTENT):
            invalid = {
                "message": "Invalid Form Body",
                "code": 50035,
                "errors": {
                    "content": {
                        "_errors": [
                            {
                                "code": "BASE_TYPE_MAX_LENGTH",
                                "message": "Must be 2000 or fewer in length.",
                            }
                        ]
                    }
                },
            }
            return _json(invalid, 400, headers)
        if content is not None:
            message["content"] = content
        message["edited_timestamp"] = timestamp()
        self.record_operation(
            {
                "op": "edit",
                "channel_id": message["channel_id"],
                "id": message["id"],
                "content": content,
            }
        )
        self._broadcast_message("MESSAGE_UPDATE", message, self._guild_of(message["channel_id"]))
        return _json(message, 200, headers)

    async def _delete_message(self, request: Request) -> Response:
        found = self._own_message(request, "delete-message")
        if isinstance(found, Response):
            return found
        _, message, headers = found
        del self._messages[message["id"]]
        self.record_operation(
            {"op": "delete", "channel_id": message["channel_id"], "id": message["id"]}
        )
        gone: dict[str, Any] = {"id": message["id"], "channel_id": message["channel_id"]}
        guild = self._guild_of(message["channel_id"])
        if guild is not None:
            gone["guild_id"] = guild.id
        for session in list(self.sessions.values()):
            needed = Intents.GUILD_MESSAGES if guild is not None else Intents.DIRECT_MESSAGES
            if not session.invalid and session.intents & needed:
                self._dispatch(session, "MESSAGE_DELETE", gone)
        return Response(status_code=204, headers={**headers, "Via": "1.1 google"})

    async def _reaction(self, request: Request) -> Response:
        found = self._own_message(request, "reaction")
        if isinstance(found, Response):
            return found
        _, message, headers = found
        emoji = request.path_params["emoji"]
        if not emoji:
            return _json({"message": "Unknown Emoji", "code": 10014}, 400, headers)
        adding = request.method == "PUT"
        self.record_operation(
            {
                "op": "react" if adding else "unreact",
                "channel_id": message["channel_id"],
                "id": message["id"],
                "emoji": emoji,
            }
        )
        return Response(status_code=204, headers={**headers, "Via": "1.1 google"})

    async def _typing(self, request: Request) -> Response:
        admitted = self._admit(request)
        if isinstance(admitted, Response):
            return admitted
        channel_id = request.path_params["channel_id"]
        if not channel_id.isdigit() or channel_id in self.deleted_channels:
            return _json({"message": "Unknown Channel", "code": 10003}, 404)
        headers = self._take("typing", channel_id)
        if isinstance(headers, Response):
            return headers
        self.record_operation({"op": "typing", "channel_id": channel_id})
        return Response(status_code=204, headers={**headers, "Via": "1.1 google"})
