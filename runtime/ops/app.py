"""The ops HTTP app: probes, health, metrics, platform webhooks, a message API.

Design:
- One Starlette app per node (:func:`ops_app`), reading the node only
  through :class:`~runtime.view.NodeView`, so it is tested against a small
  stand-in. Starlette does the HTTP routing and handles ASGI lifespan (which
  hypercorn's trio server requires); this module only decides answers.
- Routes::

      GET  /healthz                         alive whenever the process serves
      GET  /readyz                          200 ready, 503 starting / draining
      GET  /health                          health.health_summary: status and counts,
                                            public (503 on "error")
      GET  /health/detail                   health.health_report: every channel with a
                                            problem and why, scrubbed (only with an
                                            api_token)
      GET  /metrics                         Prometheus text, our own registry
      GET  /webhooks/whatsapp               Meta's verification, any live number
      POST /webhooks/whatsapp               routed by metadata.phone_number_id
      GET|POST /webhooks/whatsapp/{channel} straight to that channel
      POST /webhooks/telegram/{channel}     to that channel's feed_webhook
      GET  /v1/channels                     list channels (only with an api_token)
      POST /v1/channels/{channel}/messages  send (only with an api_token); JSON, or
                                            multipart with a file to upload
      POST /v1/channels/{channel}/operations
                                            edit, delete, typing, mark_read, react
                                            (only with an api_token; see .operations)

- Webhooks are judged by the channel's own connection (signature, secret,
  verify token: the provider's sans-IO code); the app only routes raw bytes
  and headers (Starlette's case-insensitive ``Headers``, lower-case names)
  and answers 404 for no such channel, 503 while the channel is not
  connected (the platforms redeliver). In a cluster, a channel that runs on
  another node is checked here and its request carried there
  (:mod:`runtime.webhooks`, ``NodeView.forward_webhook``). Every webhook request is counted in
  :class:`~runtime.ops.metrics.WebhookCounters`, 403s also by reason.
- Telegram's secret token is a header: it is checked (constant time) before
  the body is read, by the link's ``check_webhook_headers`` here or from the
  config for a channel on another node (``NodeView.check_webhook_headers``),
  and answered as the link would (403, or 404 for a channel that polls).
- WhatsApp sends one URL for every number of an app. Cheap refusals come
  first, in a channel's own order: a body without a well-formed
  ``X-Hub-Signature-256`` is 403 unhashed (whichever number it names, here
  or on another node), the signature is then checked once per app secret
  among the live channels (their ``webhook_signer``; large bodies are hashed
  in worker threads), not once per channel: a flood of forgeries costs one
  HMAC each and leaves the probes answered. Only then is a body nested too
  deep 400 (:func:`providers.bounded_json.check_depth`). The verdicts (one
  :class:`~providers.whatsapp.webhook.PostSignatures` per post) travel with
  the post to every channel it names, here or checked for another node, so
  a post naming many numbers is still hashed once per app secret. Only a
  signed body is parsed (bounded) to collect
  ``entry[].changes[].value.metadata.phone_number_id``, and the exact raw body
  goes to each matching channel. A notification that names no number
  (account-level fields) goes to one live channel of each app that signed it,
  so Meta stops retrying it. Malformed items the channels leave out of signed
  notifications are counted (``switchboard_webhook_items_dropped_total``).
- A send the node or its channel has no room for, or one past the sends
  the node's loop runs within its bound of lateness (``Overloaded``), is
  answered 503 at once, with the error's own ``Retry-After``.
- The message API is off unless an ``api_token`` is given (its routes then
  do not exist: 404). The bearer token is compared with
  :func:`hmac.compare_digest`; bodies are structured with a cattrs converter
  of our own (:data:`MESSAGE_API`) and every problem comes back with its path.
  ``GET /v1/channels`` is read-only: every configured channel with its tenant,
  provider and the state health reports (so a client, the load-test driver
  ``bench.target`` among them, can find where to send without a config file).
  It sits behind the same token because channel ids and tenants are not public.
- Error bodies are JSON ``{"error": <type>, "message": <text>}``. Every
  text that comes from elsewhere (a channel's last error, a send error, a
  dead letter's reason) is scrubbed on the way out with the node's
  :class:`~runtime.telemetry.redaction.Redactor` (the config's secrets, the
  API token, credential shapes such as an echoed ``Authorization`` header).
  ``/health`` is public and says only the status and the counts; which
  channels have problems and why is ``/health/detail``, behind the token.
  A handler that raises answers 500 and is logged; the server keeps serving.
"""

from __future__ import annotations

import functools
import hmac
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from http import HTTPStatus
from typing import Any, Final

import cattrs
import trio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from actors import (
    ActorError,
    AskTimeout,
    ChannelError,
    ChannelFailed,
    ChannelUnavailable,
    MailboxFull,
    SendFailed,
)
from providers import bounded_json
from providers.base import OutboundMessage, PermanentSendError
from providers.masking import shown
from providers.operations import json_problems
from providers.whatsapp.webhook import PostSignatures

from ..config.model import MetricsConfig
from ..errors import (
    SHOWN_ID,
    InvalidMessage,
    KeyReused,
    NodeDraining,
    NodeError,
    NodeStarting,
    Overloaded,
    UnknownChannel,
)
from ..telemetry.redaction import Redactor
from ..view import NodeView, WebhookLinks, WebhookTarget
from ..webhooks import WEBHOOK_TIMEOUT, WebhookReply, deliver, refusal
from .health import HEALTH_HTTP_STATUS, channel_state, health_report, health_summary
from .letters import DeadLetterApi
from .metrics import WebhookCounters, ops_registry
from .operations import (
    MAX_UPLOAD_BODY,
    InvalidBody,
    bytes_hook,
    no_local_files,
    operation_answer,
    read_multipart,
    structure_operation,
)

__all__ = ["MAX_BODY", "MESSAGE_API", "WEBHOOK_TIMEOUT", "ops_app"]

log = logging.getLogger("switchboard.ops")

MAX_BODY: Final = 4 * 1024 * 1024  # bytes a request body may have (413 beyond)
HASH_OFF_LOOP: Final = 64 * 1024  # bytes from which a signature is hashed in a worker thread
HASHING_THREADS: Final = 2  # worker threads hashing webhook bodies at once
DRAINING_RETRY_AFTER: Final = 5  # seconds, in Retry-After when the node is draining
STARTING_RETRY_AFTER: Final = 1  # seconds, in Retry-After while the node is starting
MAILBOX_RETRY_AFTER: Final = 1  # seconds, in Retry-After when a mailbox is full

MESSAGE_API: Final = cattrs.Converter(detailed_validation=True, forbid_extra_keys=True)
"""The converter for message API bodies (never the global one)."""


def _strict_str(value: Any, _: type) -> str:
    # cattrs' default would turn 5 or {"a": 1} into a string; an API must refuse them.
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


MESSAGE_API.register_structure_hook(str, _strict_str)
MESSAGE_API.register_structure_hook(bytes, bytes_hook)

# Send errors and their answers: (class, HTTP status, Retry-After), first match wins.
_SEND_ERRORS: Final[tuple[tuple[type[Exception], int, int | None], ...]] = (
    (KeyReused, 422, None),  # (as the IETF's Idempotency-Key draft answers a reuse)
    (InvalidMessage, 400, None),
    (UnknownChannel, 404, None),
    (NodeDraining, 503, DRAINING_RETRY_AFTER),
    (NodeStarting, 503, STARTING_RETRY_AFTER),
    (Overloaded, 503, None),  # Retry-After: the error's own
    (MailboxFull, 429, MAILBOX_RETRY_AFTER),
    (PermanentSendError, 422, None),
    (ChannelFailed, 409, None),
    (ChannelUnavailable, 503, None),
    (SendFailed, 503, None),
    (AskTimeout, 503, None),
    (ChannelError, 503, None),
    (ActorError, 503, None),  # ActorDead, CircuitOpen: the channel cannot take it now
    (NodeError, 503, None),  # StoreError
)

_Handler = Callable[[Request], Awaitable[Response]]


def _error(
    status: int,
    error: str,
    message: str,
    *,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    return JSONResponse({"error": error, "message": message, **extra}, status, headers=headers)


def _guarded(handler: _Handler) -> _Handler:
    """Answer 500 (and log) instead of letting a handler's exception escape."""

    @functools.wraps(handler)
    async def guarded(request: Request) -> Response:
        try:
            return await handler(request)
        except ClientDisconnect:
            # The client hung up mid-request (a load test's timeout, a proxy):
            # nobody is left to answer, and nothing here failed.
            log.debug("ops: %s %s: the client disconnected", request.method, request.url.path)
            return Response(status_code=499)
        except Exception:
            log.exception("ops: %s %s failed", request.method, request.url.path)
            return _error(
                500,
                "InternalError",
                "the ops server failed to answer this request; the node's log has the details",
            )

    return guarded


async def _read_body(request: Request, limit: int = MAX_BODY) -> bytes | None:
    """The raw body, or ``None`` when it exceeds ``limit`` (:data:`MAX_BODY`)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int = MAX_BODY) -> JSONResponse:
    return _error(413, "PayloadTooLarge", f"the body exceeds {limit} bytes")


# --- webhooks -------------------------------------------------------------------------------


_Answer = WebhookReply


def _response(answer: _Answer) -> Response:
    return Response(answer.body, answer.status, media_type=answer.media_type)


def _not_connected(target: WebhookTarget) -> _Answer:
    return refusal(
        503,
        "ChannelUnavailable",
        f"channel {target.channel_id!r} is not connected; redeliver later",
    )


_FORGED: Final = _Answer(status=403, body=b"invalid X-Hub-Signature-256")


def _signer(target: WebhookTarget) -> str | None:
    """The target's signer id (``webhook_signer``), or None if it judges for itself."""
    signer = getattr(target.connection, "webhook_signer", None)
    return signer if isinstance(signer, str) else None


async def _signed_by(
    links: WebhookLinks,
    signatures: PostSignatures,
    size: int,
    limiter: trio.CapacityLimiter,
) -> set[str]:
    """The signers (app secrets, by id) that signed the post, among the live links'
    and the configs of the channels with no live link here (``links.elsewhere``).

    Each signer is checked once, however many channels share it, and its
    verdict kept in ``signatures`` for the channels the post is handed to; a
    body without a well-formed signature header is not hashed at all, and a
    large one (``size`` bytes) is hashed in a worker thread (hashlib lets go
    of the GIL), so probes are answered while a flood of big posts is refused.
    """
    if not signatures.well_formed:
        return set()
    signed: set[str] = set()
    checkers: list[tuple[str, Any]] = [*links.signers.items(), *links.elsewhere.items()]
    for signer, checker in checkers:
        check = functools.partial(checker.check_post, signatures)
        if size < HASH_OFF_LOOP:
            accepted = check()
        else:
            accepted = await trio.to_thread.run_sync(check, limiter=limiter)
        if accepted:
            signed.add(signer)
    return signed


def _phone_number_ids(payload: Mapping[str, Any]) -> set[str]:
    """Every ``entry[].changes[].value.metadata.phone_number_id``, tolerating any shape."""
    numbers: set[str] = set()
    entries = payload.get("entry")
    for entry in entries if isinstance(entries, list) else ():
        changes = entry.get("changes") if isinstance(entry, dict) else None
        for change in changes if isinstance(changes, list) else ():
            value = change.get("value") if isinstance(change, dict) else None
            metadata = value.get("metadata") if isinstance(value, dict) else None
            number = metadata.get("phone_number_id") if isinstance(metadata, dict) else None
            if isinstance(number, str | int) and not isinstance(number, bool):
                numbers.add(str(number))
    return numbers


def _worst(answers: Sequence[_Answer]) -> _Answer:
    """403 if any channel refused the signature, else the highest status."""
    refused = [answer for answer in answers if answer.status == 403]
    return refused[0] if refused else max(answers, key=lambda answer: answer.status)


# --- the message API ------------------------------------------------------------------------


_InvalidMessage = InvalidBody


def _describe(exc: BaseException, kind: type | None) -> str:
    if isinstance(exc, ValueError) and str(exc):
        return f"invalid value: {exc}"  # an enum's or OutboundMessage's own words
    if isinstance(exc, TypeError) and str(exc).startswith("expected "):
        return str(exc)
    return cattrs.v.format_exception(exc, kind)


def _structure_message(raw: Any) -> OutboundMessage:
    """Structure a message API body into an :class:`OutboundMessage`.

    Raises:
        _InvalidMessage: with every problem and its path (``$.media.kind``).
    """
    if not isinstance(raw, dict):
        raise _InvalidMessage([("$", f"expected a JSON object, got {type(raw).__name__}")])
    problems = [
        (f"$.{key}", "must not be empty")
        for key in ("peer", "idempotency_key")
        if isinstance(raw.get(key), str) and not raw[key].strip()
    ]
    try:
        message = MESSAGE_API.structure(raw, OutboundMessage)
    except cattrs.BaseValidationError as exc:
        for line in cattrs.transform_error(exc, path="$", format_exception=_describe):
            text, _, path = line.rpartition(" @ ")
            problems.append((path, text))
        raise _InvalidMessage(problems) from exc
    problems.extend(no_local_files(message))
    problems.extend(p for p in json_problems(message) if p not in problems)  # (empties: twice)
    if problems:
        raise _InvalidMessage(problems)
    return message


# --- the app --------------------------------------------------------------------------------


class _Ops:
    """The endpoints, bound to one node."""

    def __init__(
        self,
        node: NodeView,
        api_token: str | None,
        metrics: MetricsConfig,
        secrets: Iterable[str] = (),
        redactor: Redactor | None = None,
    ) -> None:
        self.node = node
        self.token = api_token
        self.redactor = Redactor() if redactor is None else redactor
        self.redactor.add([*secrets, *([api_token] if api_token else [])])
        self.webhooks = WebhookCounters()
        self.registry = ops_registry(node, self.webhooks, metrics=metrics)
        self.letters = DeadLetterApi(node, _error, self._scrub, _read_body)
        self.hashing = trio.CapacityLimiter(HASHING_THREADS)

    def _scrub(self, text: str) -> str:
        if self.token:
            text = text.replace(self.token, "<api token>")
        return self.redactor.scrub(text)

    # --- probes, health, metrics

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "alive", "node": self.node.node_id})

    async def readyz(self, request: Request) -> Response:
        if self.node.ready:
            return JSONResponse({"status": "ready", "node": self.node.node_id})
        reason = "draining" if self.node.statistics().draining else "starting"
        return JSONResponse(
            {"status": "not_ready", "node": self.node.node_id, "reason": reason}, 503
        )

    async def health(self, request: Request) -> Response:
        report = health_summary(health_report(self.node))
        return JSONResponse(report, HEALTH_HTTP_STATUS[report["status"]])

    async def health_detail(self, request: Request) -> Response:
        report = self.redactor.scrub_tree(health_report(self.node))
        return JSONResponse(report, HEALTH_HTTP_STATUS[report["status"]])

    async def metrics(self, request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    # --- webhooks

    def _counted(
        self,
        provider: str,
        answer: _Answer,
        *,
        reason: str | None = None,
        answers: Sequence[_Answer] = (),
    ) -> Response:
        self.webhooks.count(provider, answer.status, reason=reason)
        self.webhooks.dropped(provider, sum(a.dropped for a in (*answers, answer)))
        return _response(answer)

    def _target(self, provider: str, channel_id: str) -> WebhookTarget | None:
        return self.node.webhook_target(provider, channel_id)

    async def _hand(
        self,
        provider: str,
        target: WebhookTarget,
        method: str,
        query: Mapping[str, str],
        headers: Mapping[str, str],
        body: bytes,
        signatures: PostSignatures | None = None,
    ) -> _Answer:
        """One request to one channel: its link here, or checked and carried to its owner.

        ``signatures``: a WhatsApp post's verdicts, shared by every channel it goes to.
        """
        if target.remote:
            return await self.node.forward_webhook(
                provider,
                target.channel_id,
                method,
                query,
                headers,
                body,
                signatures=signatures,
            )
        if target.connection is None:
            return _not_connected(target)
        return await deliver(
            provider, target.connection, method, query, headers, body, signatures=signatures
        )

    async def _verify_whatsapp(
        self, targets: Sequence[WebhookTarget], query: Mapping[str, str], headers: Mapping[str, str]
    ) -> _Answer:
        """Meta's GET verification: the first channel that echoes the challenge answers."""
        live = [target for target in targets if target.connection is not None or target.remote]
        if not live:
            return refusal(503, "ChannelUnavailable", "no whatsapp channel is connected")
        for target in live:
            answer = await self._hand("whatsapp", target, "GET", query, headers, b"")
            if answer.status == 200:
                return answer
        return refusal(403, "Forbidden", "no connected whatsapp channel has that verify token")

    async def whatsapp(self, request: Request) -> Response:
        query = dict(request.query_params)
        targets = self.node.webhook_targets("whatsapp")
        if request.method == "GET":
            answer = await self._verify_whatsapp(targets, query, request.headers)
            return self._counted("whatsapp", answer, reason="verify_token")
        body = await _read_body(request)
        if body is None:
            self.webhooks.count("whatsapp", 413)
            return _too_large()
        # Cheap refusals first, in the order a channel judges a post: not signed at
        # all (403 unhashed: every WhatsApp channel requires X-Hub-Signature-256,
        # wherever it runs), then not signed by any live channel's app secret (403,
        # each secret hashed once), then too deep (400), and only then parsed: the
        # depth check is a pass over the body per level, which a forger must not get.
        signatures = PostSignatures(request.headers, body)
        if not signatures.well_formed:
            return self._counted("whatsapp", _FORGED, reason="signature")
        # The live links' signers, kept by the node until a link comes or goes:
        # a number's webhook costs no walk over the channels.
        links = self.node.webhook_links("whatsapp")
        signers = await _signed_by(links, signatures, len(body), self.hashing)
        # Channels elsewhere, and channels here with no live link (reconnecting),
        # are judged by the app secrets in their configs: a post none of the
        # channels' secrets signed is forged. A post signed for a reconnecting one
        # goes on to be routed by number (503, redeliver later), not counted as
        # forged; where a channel judges for itself, it is asked.
        if links.complete and not signers:
            return self._counted("whatsapp", _FORGED, reason="signature")
        try:
            bounded_json.check_depth(body)
        except bounded_json.JSONTooDeep as exc:
            return self._counted("whatsapp", refusal(400, "BadRequest", str(exc)))
        try:
            payload = bounded_json.loads(body)
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            answer = refusal(400, "BadRequest", "the body is not a JSON object")
            return self._counted("whatsapp", answer)
        numbers = _phone_number_ids(payload)
        if numbers:
            chosen = self.node.webhook_targets_for("whatsapp", numbers)
            if not chosen:
                answer = refusal(
                    404, "UnknownChannel", f"no whatsapp channel for number(s) {sorted(numbers)}"
                )
                return self._counted("whatsapp", answer)
            answers = [
                _FORGED
                if _signer(target) not in (None, *signers)
                else await self._hand(
                    "whatsapp", target, "POST", query, request.headers, body, signatures
                )
                for target in chosen
            ]
            worst = _worst(answers)
            others = [a for a in answers if a is not worst]
            return self._counted("whatsapp", worst, reason="signature", answers=others)
        # Account-level notification: acknowledged by one channel of the app that signed
        # it (or by any channel that judges for itself; with none here, one elsewhere).
        live = links.live or [target for target in targets if target.remote][:1]
        if not live:
            answer = refusal(503, "ChannelUnavailable", "no whatsapp channel is connected")
            return self._counted("whatsapp", answer)
        first_of = {_signer(t): t for t in reversed(live) if _signer(t) in signers}
        asked = [*first_of.values(), *(t for t in live if _signer(t) is None)]
        answers = [
            await self._hand("whatsapp", target, "POST", query, request.headers, body, signatures)
            for target in asked
        ] or [_FORGED]
        accepted = [answer for answer in answers if 200 <= answer.status < 300]
        final = accepted[0] if accepted else _worst(answers)
        others = [a for a in answers if a is not final]
        return self._counted("whatsapp", final, reason="signature", answers=others)

    async def whatsapp_channel(self, request: Request) -> Response:
        channel_id = request.path_params["channel_id"]
        reason = "verify_token" if request.method == "GET" else "signature"
        target = self._target("whatsapp", channel_id)
        if target is None:
            shown_id = shown(channel_id, SHOWN_ID)
            answer = refusal(404, "UnknownChannel", f"no whatsapp channel {shown_id}")
            return self._counted("whatsapp", answer)
        body = b"" if request.method == "GET" else await _read_body(request)
        if body is None:
            self.webhooks.count("whatsapp", 413)
            return _too_large()
        query = dict(request.query_params)
        answer = await self._hand("whatsapp", target, request.method, query, request.headers, body)
        return self._counted("whatsapp", answer, reason=reason)

    def _telegram_headers(
        self, target: WebhookTarget, headers: Mapping[str, str]
    ) -> _Answer | None:
        """A Telegram webhook judged by its headers (the secret token), before its body is read.

        ``None``: read the body and hand it on. Else the answer the link (or,
        for a channel on another node, the check there) gives: 403 for a
        missing or wrong secret, 404 for a channel that polls, 503 while the
        channel is not connected (its secret is then not known here).
        """
        if target.remote:
            return self.node.check_webhook_headers("telegram", target.channel_id, headers)
        if target.connection is None:
            return _not_connected(target)
        check = getattr(target.connection, "check_webhook_headers", None)
        if check is None:  # a link that judges the whole request itself
            return None
        status = check(headers)
        if status is None:
            return None
        return _Answer(status=int(status), body=HTTPStatus(status).phrase.encode())

    async def telegram_channel(self, request: Request) -> Response:
        channel_id = request.path_params["channel_id"]
        target = self._target("telegram", channel_id)
        if target is None:
            shown_id = shown(channel_id, SHOWN_ID)
            answer = refusal(404, "UnknownChannel", f"no telegram channel {shown_id}")
            return self._counted("telegram", answer)
        refused = self._telegram_headers(target, request.headers)
        if refused is not None:  # the body is never read
            return self._counted("telegram", refused, reason="secret")
        body = await _read_body(request)
        if body is None:
            self.webhooks.count("telegram", 413)
            return _too_large()
        query = dict(request.query_params)
        answer = await self._hand("telegram", target, "POST", query, request.headers, body)
        return self._counted("telegram", answer, reason="secret")

    # --- the message API

    def _unauthorized(self, request: Request) -> Response | None:
        assert self.token is not None
        given = request.headers.get("authorization")
        # The header's own bytes: Starlette reads them as Latin-1, and a token is UTF-8.
        raw = next((v for k, v in request.headers.raw if k.lower() == b"authorization"), b"")
        scheme, _, credentials = raw.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(
            credentials.strip(), self.token.encode()
        ):
            return None
        challenge = 'Bearer realm="switchboard"'
        if given is not None:
            challenge += ', error="invalid_token"'
        return _error(
            401,
            "Unauthorized",
            "this API needs 'Authorization: Bearer <token>' with the node's API token",
            headers={"WWW-Authenticate": challenge},
        )

    async def list_channels(self, request: Request) -> Response:
        refusal = self._unauthorized(request)
        if refusal is not None:
            return refusal
        listed = [
            {
                "channel": snapshot.channel_id,
                "tenant": snapshot.tenant,
                "provider": snapshot.provider,
                # In a cluster: where it runs; one on another node is "remote" here.
                "status": "remote" if snapshot.remote else channel_state(snapshot),
                **({"node": snapshot.owner} if snapshot.owner is not None else {}),
            }
            for snapshot in sorted(self.node.channels(), key=lambda s: s.channel_id)
        ]
        return JSONResponse({"node": self.node.node_id, "channels": listed})

    async def send_message(self, request: Request) -> Response:
        refusal = self._unauthorized(request)
        if refusal is not None:
            return refusal
        multipart = request.headers.get("content-type", "").startswith("multipart/form-data")
        body = await _read_body(request, MAX_UPLOAD_BODY if multipart else MAX_BODY)
        if body is None:
            return _too_large(MAX_UPLOAD_BODY if multipart else MAX_BODY)
        try:
            raw = (
                await read_multipart(request.headers, body)
                if multipart
                else bounded_json.loads(body, unique_keys=True)
            )
            message = _structure_message(raw)
        except _InvalidMessage as exc:
            problems = [{"path": path, "message": text} for path, text in exc.problems]
            return _error(400, "InvalidMessage", str(exc), problems=problems)
        except bounded_json.JSONDuplicateKey as exc:
            problems = [{"path": "$", "message": f"the body is ambiguous: {exc}"}]
            return _error(400, "InvalidMessage", problems[0]["message"], problems=problems)
        except ValueError as exc:
            problems = [{"path": "$", "message": f"the body is not JSON: {exc}"}]
            return _error(400, "InvalidMessage", problems[0]["message"], problems=problems)
        try:
            result = await self.node.send(request.path_params["channel_id"], message)
        except (NodeError, ActorError, PermanentSendError) as exc:
            return self._send_error(exc)
        return JSONResponse(
            {"platform_message_id": result.platform_message_id, "peer": result.peer}
        )

    async def perform(self, request: Request) -> Response:
        refusal = self._unauthorized(request)
        if refusal is not None:
            return refusal
        body = await _read_body(request)
        if body is None:
            return _too_large()
        try:
            raw = bounded_json.loads(body, unique_keys=True)
            op = structure_operation(raw, MESSAGE_API, _describe)
        except InvalidBody as exc:
            problems = [{"path": path, "message": text} for path, text in exc.problems]
            return _error(400, "InvalidOperation", str(exc), problems=problems)
        except bounded_json.JSONDuplicateKey as exc:
            problems = [{"path": "$", "message": f"the body is ambiguous: {exc}"}]
            return _error(400, "InvalidOperation", problems[0]["message"], problems=problems)
        except ValueError as exc:
            problems = [{"path": "$", "message": f"the body is not JSON: {exc}"}]
            return _error(400, "InvalidOperation", problems[0]["message"], problems=problems)
        try:
            result = await self.node.perform(request.path_params["channel_id"], op)
        except (NodeError, ActorError, PermanentSendError) as exc:
            return self._send_error(exc)
        return JSONResponse(operation_answer(op, result))

    def _send_error(self, exc: Exception) -> Response:
        for kind, status, retry_after in _SEND_ERRORS:
            if isinstance(exc, kind):
                if isinstance(exc, Overloaded):
                    retry_after = exc.retry_after
                headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
                return _error(status, type(exc).__name__, self._scrub(str(exc)), headers=headers)
        raise exc  # not a send error: the guard answers 500 and logs it

    # --- routes

    def routes(self) -> list[BaseRoute]:
        routes: list[BaseRoute] = [
            Route("/healthz", _guarded(self.healthz), methods=["GET"]),
            Route("/readyz", _guarded(self.readyz), methods=["GET"]),
            Route("/health", _guarded(self.health), methods=["GET"]),
            Route("/metrics", _guarded(self.metrics), methods=["GET"]),
            Route("/webhooks/whatsapp", _guarded(self.whatsapp), methods=["GET", "POST"]),
            Route(
                "/webhooks/whatsapp/{channel_id}",
                _guarded(self.whatsapp_channel),
                methods=["GET", "POST"],
            ),
            Route(
                "/webhooks/telegram/{channel_id}",
                _guarded(self.telegram_channel),
                methods=["POST"],
            ),
        ]
        if self.token is not None:
            detail = _guarded(self._with_token(self.health_detail))
            routes.append(Route("/health/detail", detail, methods=["GET"]))
            routes.append(Route("/v1/channels", _guarded(self.list_channels), methods=["GET"]))
            routes.append(
                Route(
                    "/v1/channels/{channel_id}/messages",
                    _guarded(self.send_message),
                    methods=["POST"],
                )
            )
            routes.append(
                Route(
                    "/v1/channels/{channel_id}/operations",
                    _guarded(self.perform),
                    methods=["POST"],
                )
            )
            for path, handler, method in (
                ("/v1/dead-letters", self.letters.list, "GET"),
                ("/v1/channels/{channel_id}/dead-letters/replay", self.letters.replay, "POST"),
                ("/v1/channels/{channel_id}/dead-letters/discard", self.letters.discard, "POST"),
            ):
                routes.append(Route(path, _guarded(self._with_token(handler)), methods=[method]))
        return routes

    def _with_token(self, handler: _Handler) -> _Handler:
        async def checked(request: Request) -> Response:
            refusal = self._unauthorized(request)
            return refusal if refusal is not None else await handler(request)

        return checked


def _http_error(scrub: Callable[[str], str]) -> Callable[[Request, Exception], Awaitable[Response]]:
    """Starlette's own refusals (no route, wrong method) as JSON, ``scrub`` applied."""

    async def refused(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        error = HTTPStatus(exc.status_code).phrase.replace(" ", "")
        # The path is the client's; a credential pasted into a URL is not echoed
        # back, by its shape or as one of the node's own secrets (the node's
        # api token pasted into a path was: proxies and caches keep such bodies).
        message = scrub(f"{request.method} {request.url.path}: {exc.detail}")
        return _error(exc.status_code, error, message, headers=exc.headers)

    return refused


async def _crash(request: Request, exc: Exception) -> Response:
    """The backstop for failures outside our handlers (hypercorn logs the traceback)."""
    return _error(500, "InternalError", "the ops server failed to answer this request")


def ops_app(
    node: NodeView,
    *,
    api_token: str | None = None,
    metrics: MetricsConfig | None = None,
    secrets: Iterable[str] = (),
    redactor: Redactor | None = None,
) -> Starlette:
    """The ops ASGI app for ``node``.

    Args:
        node: the node, as the ops server sees it.
        api_token: the bearer token of the message API; ``None`` leaves the
            API out (its routes answer 404).
        metrics: what ``/metrics`` exports (default: ``[metrics]``'s defaults).
        secrets: values never to show in an answer (``NodeConfig.secrets()``);
            credential shapes are scrubbed whatever is given here.
        redactor: the node's own (``Node.redactor``), which learns the
            secrets of channels started later; ``secrets`` go into it too.

    Returns:
        A Starlette app (it handles ASGI lifespan). ``app.state.registry`` is
        its Prometheus registry and ``app.state.webhooks`` its webhook counters.

    Raises:
        ValueError: ``api_token`` is empty (pass ``None`` to disable the API).
    """
    if api_token is not None and not api_token.strip():
        raise ValueError("api_token is empty; pass None to run without the message API")
    ops = _Ops(node, api_token, metrics or MetricsConfig(), secrets, redactor)
    app = Starlette(
        routes=ops.routes(),
        exception_handlers={HTTPException: _http_error(ops._scrub), Exception: _crash},
    )
    app.state.registry = ops.registry
    app.state.webhooks = ops.webhooks
    return app
