"""A local WhatsApp Cloud API: the messages endpoint, its limits, and signed webhooks.

Design:
- Speaks the Cloud API at its real paths: ``POST /{version}/{phone_number_id}/messages``
  (Bearer token, JSON body) answering ``{"messaging_product", "contacts",
  "messages": [{"id": "wamid..."}]}``, and ``GET /{version}/{phone_number_id}``;
  errors are Graph error objects ``{"error": {"message", "type", "code",
  "error_subcode"?, "error_data", "fbtrace_id"}}`` with Meta's HTTP statuses
  (mostly 400; 401 for tokens, 403 for policy blocks, 429 for the shared
  ``rate_limit`` fault).
- Enforces what a client must cope with: 80 messages/s per number (130429),
  about one message per 6 s per recipient with a burst of 3 (131056, a token
  bucket), the 24-hour customer-service window (free-form messages to a user
  who has not written within 24 h fail with 131047; templates always pass),
  and 4096-character texts (100). A user "writes" through ``inject``.
  Unlike Meta, 131047 is answered synchronously rather than as a ``failed``
  status webhook (``fail_next`` with ``"via": "webhook"`` gives the latter).
- Everything inbound goes out as webhooks signed with ``X-Hub-Signature-256``
  (HMAC-SHA256 of the raw body with the app secret, computed here with
  :mod:`hmac` independently of the provider). ``inject`` delivers its message
  before answering, so tests can wait on the result; statuses (sent, then
  delivered, then read) are delivered by worker tasks that live in the ASGI
  lifespan, one message's statuses in order (unless the
  ``out_of_order_statuses`` fault is on). A failed delivery is logged and,
  with ``redeliver=True``, retried with doubling delays for ``REDELIVER_FOR``
  seconds (Meta retries for days), so a receiver that was down gets it later.
- Beyond sending: ``{"status": "read", "message_id"}`` marks an inbound
  message read (with ``typing_indicator: {"type": "text"}`` it also shows
  typing), answering ``{"success": true}``; ``type: reaction`` messages react
  (an empty emoji removes the reaction); ``POST /{version}/{phone_number_id}/media``
  (multipart ``file``, ``type``, ``messaging_product``) answers a media ``id``
  that messages may carry instead of a ``link``, and ``GET /{version}/{media_id}``
  describes it. A read mark or reaction of a message the number never had is
  code 100 "… not found". All of these are kept in ``operations``.
- Business-scoped user ids: every user has a BSUID (``US.<digits>``, stable
  per phone number): webhooks carry it as ``contacts[].user_id``,
  ``messages[].from_user_id`` and ``statuses[].recipient_user_id`` (status
  webhooks carry ``contacts`` too), and sends may name it in ``recipient``
  instead of ``to``. ``inject`` with ``"hide_number": true`` is a user who
  hides their number: no ``wa_id`` and no ``from``, only the BSUID.
- Decisions use ``trio.current_time()``; payload timestamps use the wall clock.

Platform faults (``POST /_emulator/fault``):
  ``{"kind": "fail_next", "code": 131026, "count": 1, "via": "response"|"webhook"}``,
  ``{"kind": "out_of_order_statuses", "enabled": true, "order": ["read", "sent", "delivered"]}``,
  ``{"kind": "bad_signature", "count": 1}`` (sign the next webhooks with a wrong key),
  ``{"kind": "expire_window", "from": "<wa_id>"}`` (forget that the user wrote).
The webhook target is set in the constructor or with ``POST /_emulator/webhook
{"url": ..., "verify_token": ...}``, which performs Meta's GET handshake first.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from typing import Any, Final

import attrs
import httpx
import trio
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from .base import MAX_FAULT_COUNT, Emulator, FaultError, trim

__all__ = ["WhatsAppEmulator"]

DEFAULT_APP_SECRET: Final = "emulator-app-secret"
WINDOW: Final = 24 * 3600.0  # seconds of the customer-service window
THROUGHPUT: Final = 80  # messages per second per phone number
PAIR_RATE: Final = 1 / 6  # messages per second to one recipient
PAIR_BURST: Final = 3  # messages
MAX_TEXT: Final = 4096  # characters
WEBHOOK_WORKERS: Final = 4
WEBHOOK_TIMEOUT: Final = 10.0  # seconds per delivery
REDELIVER_FIRST: Final = 0.05  # seconds before the first retry of a failed webhook; doubles
REDELIVER_MAX: Final = 2.0  # seconds between retries at most
REDELIVER_FOR: Final = 60.0  # seconds a failed webhook is retried
_VERSION: Final = re.compile(r"^v\d+\.\d+$")
_STATUS_ORDER: Final = ("sent", "delivered", "read")
_MESSAGE_TYPES: Final = {"text", "image", "video", "document", "audio", "template", "reaction"}
_BSUID: Final = re.compile(r"[A-Z]{2}\.(?:ENT\.)?\d+")

# code -> (HTTP status, message, details)
_ERRORS: Final[dict[int, tuple[int, str, str]]] = {
    4: (429, "(#4) Application request limit reached", "Too many API calls from this app."),
    100: (400, "(#100) Invalid parameter", ""),
    190: (401, "Invalid OAuth access token - Cannot parse access token", ""),
    368: (
        403,
        "(#368) Temporarily blocked for policies violations",
        "The account is restricted for violating WhatsApp Business policies.",
    ),
    130429: (
        400,
        "(#130429) Rate limit hit",
        "Cloud API message throughput has been reached.",
    ),
    131000: (500, "(#131000) Something went wrong", "Something went wrong."),
    131008: (400, "(#131008) Required parameter is missing", ""),
    131016: (503, "(#131016) Service unavailable", "A service is temporarily unavailable."),
    131053: (400, "(#131053) Media upload error", "The media id is not known."),
    131026: (
        400,
        "(#131026) Message Undeliverable",
        "Unable to deliver message: the recipient may not be a WhatsApp user.",
    ),
    131047: (
        400,
        "(#131047) Re-engagement message",
        "Message failed to send because more than 24 hours have passed since the "
        "customer last replied to this number.",
    ),
    131056: (
        400,
        "(#131056) (Business Account, Consumer Account) pair rate limit hit",
        "Message failed to send because there were too many messages sent from this "
        "phone number to the same phone number in a short period of time.",
    ),
}


@attrs.frozen(kw_only=True)
class _Failure:
    code: int
    status: int
    message: str
    details: str = ""
    subcode: int | None = None
    via: str = "response"


def _failure(code: int, details: str | None = None, *, subcode: int | None = None) -> _Failure:
    status, message, default = _ERRORS.get(code, (400, f"(#{code}) Error", ""))
    return _Failure(
        code=code,
        status=status,
        message=message,
        details=default if details is None else details,
        subcode=subcode,
    )


@attrs.define
class _Bucket:
    tokens: float
    updated: float


def _wa_id(to: str) -> str:
    return re.sub(r"\D", "", to)


def bsuid_for(wa_id: str) -> str:
    """The business-scoped user id the emulator gives the user ``wa_id`` (stable)."""
    return f"US.{int(hashlib.sha256(wa_id.encode()).hexdigest()[:16], 16)}"


class WhatsAppEmulator(Emulator):
    """The WhatsApp Cloud API, in-process.

    Args:
        app_secret: signs the webhooks (the provider's ``app_secret``).
        tokens: the valid access tokens; ``None`` accepts any non-empty token.
        phone_number_ids: the numbers that exist; ``None`` accepts any id.
        webhook_url: where webhooks go (also settable through the control API).
        display_phone_number: shown in webhook metadata.
        window: seconds of the 24-hour customer-service window.
        throughput: messages per second per number.
        pair_rate: messages per second to one recipient.
        pair_burst: burst to one recipient.
        seed: seeds message ids and shuffled status orders.
        redeliver: retry failed webhook deliveries (as Meta does) instead of
            only logging them.
    """

    name = "whatsapp"

    def __init__(
        self,
        *,
        app_secret: str = DEFAULT_APP_SECRET,
        tokens: Collection[str] | None = None,
        phone_number_ids: Collection[str] | None = None,
        webhook_url: str | None = None,
        display_phone_number: str = "15550000000",
        window: float = WINDOW,
        throughput: int = THROUGHPUT,
        pair_rate: float = PAIR_RATE,
        pair_burst: int = PAIR_BURST,
        seed: int = 0,
        redeliver: bool = False,
    ) -> None:
        super().__init__()
        self.app_secret = app_secret
        self.tokens = None if tokens is None else set(tokens)
        self.phone_number_ids = None if phone_number_ids is None else set(phone_number_ids)
        self.webhook_url = webhook_url
        self.display_phone_number = display_phone_number
        self.window = window
        self.throughput = throughput
        self.pair_rate = pair_rate
        self.pair_burst = pair_burst
        self.webhooks: list[dict[str, Any]] = []  # every delivery: kind, payload, status
        self._rng = random.Random(seed)
        self._recent: dict[str, deque[float]] = {}  # phone number id -> accept times
        self._pairs: dict[tuple[str, str], _Bucket] = {}
        self._last_inbound: dict[tuple[str, str], float] = {}  # (number, wa_id) -> time
        self._fail_next: deque[_Failure] = deque()
        self._shuffle = False
        self._order: tuple[str, ...] | None = None
        self._bad_signatures = 0
        self._jobs_in, self._jobs_out = trio.open_memory_channel[list[dict[str, Any]]](10_000)
        self._client: httpx.AsyncClient | None = None
        self._last_number: str | None = None
        self.redeliver = redeliver
        self._nursery: trio.Nursery | None = None
        self._users: dict[str, str] = {}  # BSUID -> the user's key (wa_id, or the BSUID)
        self._inbound_ids: set[str] = set()  # messages users sent
        self._sent_ids: set[str] = set()  # messages the business sent
        self.media: dict[str, tuple[bytes, str, str]] = {}  # id -> (bytes, mime type, name)

    def __repr__(self) -> str:
        faults = []
        if self._fail_next:
            faults.append(f"fail_next={len(self._fail_next)}")
        if self._shuffle:
            faults.append("out_of_order")
        if self._bad_signatures:
            faults.append(f"bad_signature={self._bad_signatures}")
        return (
            f"<WhatsAppEmulator sent={len(self.sent)} webhooks={len(self.webhooks)} "
            f"users_in_window={len(self._last_inbound)} url={self.webhook_url!r} "
            f"faults=[{' '.join(faults)}]>"
        )

    # --- serving -------------------------------------------------------------------------

    @property
    def app(self) -> Starlette:
        """The ASGI app, with a lifespan that runs the status-webhook workers."""
        app = super().app
        app.router.lifespan_context = self._lifespan
        return app

    @asynccontextmanager
    async def _lifespan(self, app: object) -> AsyncIterator[None]:
        async with httpx.AsyncClient(timeout=WEBHOOK_TIMEOUT) as client:
            self._client = client
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    for _ in range(WEBHOOK_WORKERS):
                        nursery.start_soon(self._deliver_jobs, client)
                    try:
                        yield
                    finally:
                        self._nursery = None
                        nursery.cancel_scope.cancel()
            finally:
                self._client = None

    def platform_routes(self) -> list[BaseRoute]:
        """The Cloud API routes plus ``/_emulator/webhook``."""
        return [
            Route("/_emulator/webhook", self._webhook_config, methods=["GET", "POST"]),
            Route("/_emulator/media/{media_id}", self._media_file, methods=["GET"]),
            Route("/{version}/{phone_number_id}/messages", self._messages, methods=["POST"]),
            Route("/{version}/{phone_number_id}/media", self._upload, methods=["POST"]),
            Route("/{version}/{phone_number_id}", self._phone_number, methods=["GET"]),
        ]

    # --- errors --------------------------------------------------------------------------

    def _error(self, failure: _Failure, headers: dict[str, str] | None = None) -> Response:
        error: dict[str, Any] = {
            "message": failure.message,
            "type": "OAuthException",
            "code": failure.code,
            "error_data": {"messaging_product": "whatsapp", "details": failure.details},
            "fbtrace_id": "A" + base64.urlsafe_b64encode(self._rng.randbytes(15)).decode(),
        }
        if failure.subcode is not None:
            error["error_subcode"] = failure.subcode
        self.stats[f"error_{failure.code}"] += 1
        return JSONResponse({"error": error}, status_code=failure.status, headers=headers)

    def _authenticate_token(self, request: Request) -> Response | None:
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        token = token or request.query_params.get("access_token", "")
        if not token or (self.tokens is not None and token not in self.tokens):
            return self._error(_failure(190, subcode=463 if token else None))
        if self.is_banned(token):
            return self._error(_failure(368))
        return None

    def _authenticate(self, request: Request) -> Response | None:
        refused = self._authenticate_token(request)
        if refused is not None:
            return refused
        remaining = self.rate_limit_remaining()
        if remaining > 0:
            return self._error(_failure(4), headers={"Retry-After": f"{remaining:.3f}"})
        version, number = request.path_params["version"], request.path_params["phone_number_id"]
        if not _VERSION.match(version) or (
            self.phone_number_ids is not None and number not in self.phone_number_ids
        ):
            return self._error(
                _failure(
                    100,
                    f"Unsupported request. Object with ID '{number}' does not exist, cannot be "
                    "loaded due to missing permissions, or does not support this operation.",
                    subcode=33,
                )
            )
        self._last_number = number
        return None

    # --- the Cloud API -------------------------------------------------------------------

    async def _phone_number(self, request: Request) -> Response:
        refused = self._authenticate(request)
        if refused is not None:
            return refused
        number = request.path_params["phone_number_id"]
        if number in self.media:  # GET /{version}/{media_id}
            data, mime_type, _ = self.media[number]
            return JSONResponse(
                {
                    "messaging_product": "whatsapp",
                    "url": f"{request.base_url}_emulator/media/{number}",
                    "mime_type": mime_type,
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "file_size": len(data),
                    "id": number,
                }
            )
        return JSONResponse(
            {
                "id": number,
                "display_phone_number": self.display_phone_number,
                "verified_name": "Switchboard Emulator",
                "quality_rating": "GREEN",
            }
        )

    async def _messages(self, request: Request) -> Response:
        refused = self._authenticate(request)
        if refused is not None:
            return refused
        number = request.path_params["phone_number_id"]
        try:
            body = json.loads(await request.body())
        except ValueError:
            return self._error(_failure(100, "The request body is not valid JSON."))
        if not isinstance(body, dict):
            return self._error(_failure(100, "The request body must be a JSON object."))
        if body.get("status") == "read":
            return self._read(number, body)
        failure = self._validate(body)
        injected: _Failure | None = None
        if failure is None and self._fail_next:
            injected = self._fail_next.popleft()
            if injected.via == "response":
                failure = injected
        if failure is None:
            failure = self._admit(number, body, trio.current_time())
        if failure is not None:
            return self._error(failure)
        return self._accept(number, body, failed_with=injected)

    def _user(self, body: dict[str, Any]) -> str | None:
        """The user a message goes to: a ``to`` phone number, or a ``recipient`` BSUID."""
        recipient = body.get("recipient")
        if isinstance(recipient, str) and _BSUID.fullmatch(recipient):
            return self._users.get(recipient, recipient)
        to = body.get("to")
        if isinstance(to, str) and _wa_id(to):
            return _wa_id(to)
        return None

    def _read(self, number: str, body: dict[str, Any]) -> Response:
        """``status: read`` (and the typing indicator): ``{"success": true}``."""
        if body.get("messaging_product") != "whatsapp":
            return self._error(_failure(131008, "The parameter messaging_product is required."))
        message_id = body.get("message_id")
        if not isinstance(message_id, str) or not message_id:
            return self._error(_failure(131008, "The parameter message_id is required."))
        if message_id not in self._inbound_ids:
            return self._error(_failure(100, f"Message with id {message_id} not found."))
        typing = body.get("typing_indicator")
        if typing is not None and not (isinstance(typing, dict) and typing.get("type") == "text"):
            return self._error(_failure(100, "Param typing_indicator['type'] must be 'text'."))
        self.record_operation(
            {
                "op": "read",
                "phone_number_id": number,
                "message_id": message_id,
                "typing": typing is not None,
            }
        )
        return JSONResponse({"success": True})

    async def _upload(self, request: Request) -> Response:
        """``POST /{version}/{phone_number_id}/media``: ``{"id": <media id>}``."""
        refused = self._authenticate(request)
        if refused is not None:
            return refused
        try:
            async with request.form() as form:
                upload = form.get("file")
                kind = form.get("type")
                product = form.get("messaging_product")
                data = await upload.read() if isinstance(upload, UploadFile) else None
                name = upload.filename if isinstance(upload, UploadFile) else None
        except (ValueError, AssertionError):
            return self._error(_failure(100, "The request is not multipart/form-data."))
        if product != "whatsapp":
            return self._error(_failure(131008, "The parameter messaging_product is required."))
        if data is None or not isinstance(kind, str) or not kind:
            return self._error(_failure(131008, "The parameters file and type are required."))
        media_id = str(self._rng.randrange(10**15, 10**16))
        self.media[media_id] = (data, kind, name or "file")
        self.stats["uploaded_bytes"] += len(data)
        self.record_operation(
            {"op": "upload", "media_id": media_id, "type": kind, "size": len(data), "name": name}
        )
        return JSONResponse({"id": media_id})

    async def _media_file(self, request: Request) -> Response:
        refused = self._authenticate_token(request)
        if refused is not None:
            return refused
        found = self.media.get(request.path_params["media_id"])
        if found is None:
            return Response(status_code=404)
        return Response(found[0], media_type=found[1])

    def _validate(self, body: dict[str, Any]) -> _Failure | None:
        if body.get("messaging_product") != "whatsapp":
            return _failure(131008, "The parameter messaging_product is required.")
        if self._user(body) is None:
            return _failure(131008, "The parameter to (or recipient) is required.")
        kind = body.get("type", "text")
        if kind not in _MESSAGE_TYPES:
            return _failure(100, f"Param type must be one of {sorted(_MESSAGE_TYPES)}.")
        part = body.get(kind)
        if not isinstance(part, dict):
            return _failure(131008, f"The parameter {kind} is required.")
        if kind == "text":
            text = part.get("body")
            if not isinstance(text, str) or not text:
                return _failure(131008, "The parameter text['body'] is required.")
            if len(text) > MAX_TEXT:
                return _failure(
                    100, f"Param text['body'] must be at most {MAX_TEXT} characters long."
                )
        elif kind == "reaction":
            target = part.get("message_id")
            if not isinstance(target, str) or not isinstance(part.get("emoji"), str):
                return _failure(131008, "A reaction needs message_id and emoji.")
            if target not in self._inbound_ids and target not in self._sent_ids:
                return _failure(100, f"Message with id {target} not found.")
        elif kind == "template":
            language = part.get("language")
            if not isinstance(part.get("name"), str) or not (
                isinstance(language, dict) and isinstance(language.get("code"), str)
            ):
                return _failure(131008, "A template needs a name and language.code.")
        elif not isinstance(part.get("link") or part.get("id"), str):
            return _failure(131008, f"The parameter {kind}['link'] or {kind}['id'] is required.")
        elif part.get("id") is not None and part["id"] not in self.media:
            return _failure(131053)
        return None

    def _admit(self, number: str, body: dict[str, Any], now: float) -> _Failure | None:
        """The limits a valid message must pass; consumes quota only when it passes."""
        recent = self._recent.setdefault(number, deque())
        while recent and recent[0] <= now - 1.0:
            recent.popleft()
        if len(recent) >= self.throughput:
            return _failure(130429)
        wa_id = self._user(body) or ""
        if body.get("type", "text") != "template":
            wrote = self._last_inbound.get((number, wa_id))
            if wrote is None or now - wrote > self.window:
                return _failure(131047)
        bucket = self._pairs.get((number, wa_id))
        if bucket is None:
            bucket = self._pairs[number, wa_id] = _Bucket(float(self.pair_burst), now)
        bucket.tokens = min(
            float(self.pair_burst), bucket.tokens + (now - bucket.updated) * self.pair_rate
        )
        bucket.updated = now
        if bucket.tokens < 1.0:
            return _failure(131056)
        bucket.tokens -= 1.0
        recent.append(now)
        return None

    def _accept(
        self, number: str, body: dict[str, Any], *, failed_with: _Failure | None
    ) -> Response:
        wa_id = self._user(body) or ""
        message_id = "wamid." + base64.b64encode(self._rng.randbytes(30)).decode()
        to = body.get("to") or body.get("recipient")
        if body.get("type") == "reaction":
            self.record_operation(
                {
                    "op": "react",
                    "phone_number_id": number,
                    "to": to,
                    "message_id": body["reaction"]["message_id"],
                    "emoji": body["reaction"]["emoji"],
                }
            )
        else:
            self._sent_ids.add(message_id)
            self.record_sent({"id": message_id, "phone_number_id": number, "to": to, "body": body})
        if failed_with is not None:
            order: list[str] = ["sent", "failed"]
        elif self._order is not None:
            order = list(self._order)
        else:
            order = list(_STATUS_ORDER)
            if self._shuffle:
                self._rng.shuffle(order)
        job = [self._status(number, message_id, wa_id, s, failed_with) for s in order]
        try:
            self._jobs_in.send_nowait(job)
        except trio.WouldBlock:
            self.stats["webhooks_dropped"] += len(job)
        answer: dict[str, Any] = {"id": message_id}
        if body.get("type") == "template":
            answer["message_status"] = "accepted"
        contact: dict[str, Any] = {"input": to, "user_id": self._bsuid_of(wa_id)}
        if not _BSUID.fullmatch(wa_id):
            contact["wa_id"] = wa_id
        return JSONResponse(
            {"messaging_product": "whatsapp", "contacts": [contact], "messages": [answer]}
        )

    def _bsuid_of(self, user: str) -> str:
        """The BSUID of a user key (a wa_id, or already a BSUID), registered."""
        bsuid = user if _BSUID.fullmatch(user) else bsuid_for(user)
        self._users.setdefault(bsuid, user)
        return bsuid

    # --- webhooks ------------------------------------------------------------------------

    def _envelope(self, number: str, value: dict[str, Any]) -> dict[str, Any]:
        value = {
            "messaging_product": "whatsapp",
            "metadata": {
                "display_phone_number": self.display_phone_number,
                "phone_number_id": number,
            },
            **value,
        }
        return {
            "object": "whatsapp_business_account",
            "entry": [
                {"id": "102290129340398", "changes": [{"value": value, "field": "messages"}]}
            ],
        }

    def _status(
        self, number: str, message_id: str, wa_id: str, status: str, failure: _Failure | None
    ) -> dict[str, Any]:
        bsuid = self._bsuid_of(wa_id)
        item: dict[str, Any] = {
            "id": message_id,
            "status": status,
            "timestamp": str(int(time.time())),
            "recipient_user_id": bsuid,
        }
        contact: dict[str, Any] = {"user_id": bsuid}
        if not _BSUID.fullmatch(wa_id):
            item["recipient_id"] = contact["wa_id"] = wa_id
        if status == "sent":
            item["conversation"] = {"id": message_id[-16:], "origin": {"type": "service"}}
            item["pricing"] = {"billable": True, "pricing_model": "CBP", "category": "service"}
        if status == "failed" and failure is not None:
            item["errors"] = [
                {
                    "code": failure.code,
                    "title": failure.message.split(") ", 1)[-1],
                    "message": failure.message.split(") ", 1)[-1],
                    "error_data": {"details": failure.details},
                }
            ]
        return self._envelope(number, {"contacts": [contact], "statuses": [item]})

    def _signature(self, raw: bytes) -> str:
        secret = self.app_secret
        if self._bad_signatures:
            self._bad_signatures -= 1
            secret = "not-the-app-secret"
        return "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()

    async def _post(
        self, client: httpx.AsyncClient, kind: str, payload: dict[str, Any]
    ) -> int | None:
        """POST one signed webhook; its HTTP status, or ``None`` when it did not arrive."""
        record: dict[str, Any] = {"kind": kind, "payload": payload, "status": None}
        self.webhooks.append(record)
        trim(self.webhooks, self.max_kept)
        if self.webhook_url is None:
            self.stats["webhooks_unconfigured"] += 1
            return None
        raw = json.dumps(payload, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", "X-Hub-Signature-256": self._signature(raw)}
        try:
            response = await client.post(self.webhook_url, content=raw, headers=headers)
        except httpx.HTTPError as exc:
            record["error"] = repr(exc)
            self.stats["webhooks_failed"] += 1
            return None
        record["status"] = response.status_code
        self.stats["webhooks_delivered" if response.is_success else "webhooks_refused"] += 1
        return response.status_code

    async def _deliver_jobs(self, client: httpx.AsyncClient) -> None:
        async for job in self._jobs_out:
            for payload in job:
                status = await self._post(client, "status", payload)
                self._maybe_redeliver("status", payload, status)

    def _maybe_redeliver(self, kind: str, payload: dict[str, Any], status: int | None) -> None:
        delivered = status is not None and 200 <= status < 300
        if delivered or not self.redeliver or self._nursery is None or self.webhook_url is None:
            return
        self._nursery.start_soon(self._redeliver, kind, payload)

    async def _redeliver(self, kind: str, payload: dict[str, Any]) -> None:
        """Retry one failed webhook with doubling delays until it lands or time is up."""
        assert self._client is not None
        delay, until = REDELIVER_FIRST, trio.current_time() + REDELIVER_FOR
        while trio.current_time() < until:
            await trio.sleep(delay)
            self.stats["webhooks_redelivered"] += 1
            status = await self._post(self._client, kind, payload)
            if status is not None and 200 <= status < 300:
                return
            delay = min(delay * 2, REDELIVER_MAX)
        self.stats["webhooks_given_up"] += 1

    async def inject(self, payload: dict[str, Any]) -> dict[str, Any]:
        """A user writes: ``{"from", "text", "name"?, "reply_to"?, "phone_number_id"?}``.

        Without ``phone_number_id`` the message goes to the first configured
        number, else to the number last used by a client.

        Opens the user's 24-hour window and delivers the signed webhook before
        answering ``{"message_id", "webhook_status"}``.
        """
        sender, text = payload.get("from"), payload.get("text")
        if not isinstance(sender, str) or not _wa_id(sender) or not isinstance(text, str):
            return {"error": "inject needs string 'from' (a phone number) and 'text'"}
        number = str(payload.get("phone_number_id") or self._default_number())
        hidden = bool(payload.get("hide_number"))
        bsuid = bsuid_for(_wa_id(sender))
        user = bsuid if hidden else _wa_id(sender)  # what the business can address
        self._users[bsuid] = user
        self._last_inbound[number, user] = trio.current_time()
        message_id = "wamid." + base64.b64encode(self._rng.randbytes(30)).decode()
        self._inbound_ids.add(message_id)
        message: dict[str, Any] = {
            "from_user_id": bsuid,
            "id": message_id,
            "timestamp": str(int(time.time())),
            "type": "text",
            "text": {"body": text},
        }
        if not hidden:
            message["from"] = user
        if isinstance(payload.get("reply_to"), str):
            message["context"] = {"from": self.display_phone_number, "id": payload["reply_to"]}
        contact: dict[str, Any] = {
            "profile": {"name": str(payload.get("name", "Emulated User"))},
            "user_id": bsuid,
        }
        if not hidden:
            contact["wa_id"] = user
        body = self._envelope(number, {"contacts": [contact], "messages": [message]})
        if self._client is not None:
            status = await self._post(self._client, "message", body)
            self._maybe_redeliver("message", body, status)
        else:
            async with httpx.AsyncClient(timeout=WEBHOOK_TIMEOUT) as client:
                status = await self._post(client, "message", body)
        return {"message_id": message_id, "webhook_status": status, "user_id": bsuid}

    def _default_number(self) -> str:
        """For ``inject`` without a number: the first configured, else the last one used."""
        if self.phone_number_ids:
            return sorted(self.phone_number_ids)[0]
        return self._last_number or "1"

    async def _webhook_config(self, request: Request) -> Response:
        if request.method == "GET":
            return JSONResponse({"url": self.webhook_url, "deliveries": self.webhooks})
        try:
            payload = await request.json()
        except ValueError:
            return JSONResponse({"error": "the body is not JSON"}, status_code=400)
        url, token = payload.get("url"), payload.get("verify_token")
        if url is not None and not isinstance(url, str):
            return JSONResponse({"error": "'url' must be a string or null"}, status_code=400)
        if url is not None and isinstance(token, str):
            challenge = str(self._rng.randrange(10**9))
            query = {"hub.mode": "subscribe", "hub.challenge": challenge, "hub.verify_token": token}
            try:
                async with httpx.AsyncClient(timeout=WEBHOOK_TIMEOUT) as client:
                    answer = await client.get(url, params=query)
            except httpx.HTTPError as exc:
                return JSONResponse({"error": f"verification failed: {exc!r}"}, status_code=400)
            if answer.status_code != 200 or answer.text != challenge:
                return JSONResponse(
                    {
                        "error": "the callback did not echo hub.challenge",
                        "status": answer.status_code,
                    },
                    status_code=400,
                )
        self.webhook_url = url
        return JSONResponse({"url": url, "verified": isinstance(token, str)})

    # --- faults --------------------------------------------------------------------------

    async def platform_fault(self, payload: dict[str, Any]) -> dict[str, Any]:
        """``fail_next``, ``out_of_order_statuses``, ``bad_signature``, ``expire_window``.

        Raises:
            FaultError: unknown kind or bad arguments.
        """
        kind = payload.get("kind")
        count = payload.get("count", 1)
        if not isinstance(count, int) or not 1 <= count <= MAX_FAULT_COUNT:
            raise FaultError(f"{kind} needs a positive integer 'count' (at most {MAX_FAULT_COUNT})")
        if kind == "fail_next":
            code, via = payload.get("code"), payload.get("via", "response")
            if not isinstance(code, int) or via not in ("response", "webhook"):
                raise FaultError("fail_next needs an integer 'code' and 'via' response|webhook")
            subcode = payload.get("subcode")
            failure = attrs.evolve(
                _failure(
                    code,
                    payload.get("details"),
                    subcode=subcode if isinstance(subcode, int) else None,
                ),
                via=via,
            )
            if isinstance(payload.get("status"), int):
                failure = attrs.evolve(failure, status=payload["status"])
            self._fail_next.extend([failure] * count)
            return {"fail_next": code, "count": count, "via": via}
        if kind == "out_of_order_statuses":
            self._shuffle = bool(payload.get("enabled", True))
            order = payload.get("order")
            if order is not None and (
                not isinstance(order, list) or sorted(order) != sorted(_STATUS_ORDER)
            ):
                raise FaultError(f"'order' must be a permutation of {list(_STATUS_ORDER)}")
            self._order = tuple(order) if order is not None and self._shuffle else None
            return {"out_of_order_statuses": self._shuffle, "order": order}
        if kind == "bad_signature":
            self._bad_signatures += count
            return {"bad_signature": self._bad_signatures}
        if kind == "expire_window":
            sender = payload.get("from")
            if not isinstance(sender, str):
                raise FaultError("expire_window needs the user's 'from'")
            gone = [key for key in self._last_inbound if key[1] == _wa_id(sender)]
            for key in gone:
                del self._last_inbound[key]
            return {"expired": len(gone)}
        return await super().platform_fault(payload)
