"""Forwarding: a call for a channel that runs on another node goes there, and its answer back.

Design:
- Every node reads its own inbox, the stream ``<prefix>:inbox:<node>``,
  through the consumer group ``owners``; a caller appends a request there
  (``XADD``) and waits on its own reply stream ``<prefix>:replies:<node>``
  for the answer with the request's id. Requests carry a time to live; the
  owner drops the ones that expired before it read them (the caller has
  given up), measured on Redis's clock (a stream entry's id is the Redis
  time it was added).
- At least once: the owner acknowledges (``XACK``) a request only after its
  answer is written. A node that dies in between finds the request in its
  pending list when it starts again and handles it again if it has not
  expired; a repeated send is answered from the owner's memory of recent
  idempotency keys, never sent twice (the node's business, not this
  module's).
- A request for a channel the node no longer owns (it moved meanwhile) is
  answered ``moved``; the caller asks the new owner, within its own
  deadline. Only the caller's deadline ends a call: a caller never sees
  "not the owner".
- What a request means is the node's: this module carries JSON objects and
  hands each to the :class:`Handler` (the node), one task per request, at
  most :data:`IN_FLIGHT` at once.
- Streams are trimmed on every append (``MAXLEN ~``), so a dead node's
  inbox cannot grow without bound; and each node keeps its own two
  streams alive (an expiry of :data:`STREAM_KEEP`, moved on as it reads
  them), so those of a node id that is gone for good (a host replaced, a
  pod's name) leave Redis an hour later: they stayed for good, up to
  10,000 replies each. An owner's answer that makes a reply stream (again)
  gives it that expiry in the same script call.
- A Redis that lost the inbox and its group (restarted empty) gets them
  again at the next read, the group from the stream's start: the calls
  written since the loss are read, not skipped (their callers waited a
  whole attempt, a lease TTL, for nothing).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import uuid
from collections.abc import Mapping
from typing import Any, Final, Protocol

import trio

from .redis import ClusterUnavailable, RedisLink

__all__ = ["ForwardTimeout", "Forwarding", "Handler"]

log = logging.getLogger("switchboard.cluster")

GROUP: Final = "owners"
IN_FLIGHT: Final = 1_000  # requests one node handles at once
INBOX_MAXLEN: Final = 100_000  # entries kept per inbox (approximate trim)
REPLIES_MAXLEN: Final = 10_000  # entries kept per reply stream
BATCH: Final = 100  # entries read per XREADGROUP / XREAD
RETRY: Final = 0.5  # seconds before a failed read of a stream is tried again
STREAM_KEEP: Final = 3600.0  # seconds a node's streams outlive its last read of them

# An answer, and the expiry of a reply stream that has none (one the answer made),
# in one step: a stream made again for a caller that is gone (lost since the owner
# last moved its expiry on, or the owner killed in between) is not kept for good.
# KEYS: the caller's reply stream; ARGV: its MAXLEN, STREAM_KEEP in ms, the fields.
_ANSWER: Final = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, 3))
if redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return id
"""


class ForwardTimeout(Exception):
    """No answer from the owner within the caller's deadline."""


class Handler(Protocol):
    """What forwarding asks of the node."""

    async def handle_forwarded(
        self,
        op: str,
        channel_id: str,
        body: Mapping[str, Any],
        *,
        timeout: float,  # noqa: ASYNC109 - the caller's time left travels with the request
    ) -> dict[str, Any]:
        """Do ``op`` on a channel of this node's; the JSON answer for the caller."""
        ...


class Forwarding:
    """This node's inbox and reply streams (see the module docstring).

    Args:
        link: the cluster's Redis.
        prefix: the cluster's key prefix.
        node_id: this node's name.
        handler: the node.
        block: seconds one blocking stream read lasts (below the link's timeout).
    """

    def __init__(
        self,
        link: RedisLink,
        *,
        prefix: str,
        node_id: str,
        handler: Handler,
        block: float,
    ) -> None:
        self.link = link
        self.prefix = prefix
        self.node_id = node_id
        self.handler = handler
        self.block_ms = max(int(block * 1000), 10)
        self.inbox = self.inbox_of(node_id)
        self.replies = f"{prefix}:replies:{node_id}"
        self._waiting: dict[str, tuple[trio.Event, list[dict[str, Any]]]] = {}
        self._limiter = trio.CapacityLimiter(IN_FLIGHT)
        self._kept_at: dict[str, float] = {}  # stream -> when its expiry was last moved on
        # The inbox entries being handled: read again (a consumer group made again
        # from the stream's start), each is not handed over a second time.
        self._in_hand: set[str] = set()
        self.handled = 0  # requests answered here
        self.expired = 0  # requests dropped here because their caller had given up
        self.forwarded = 0  # requests this node sent to others
        self._ready = trio.Event()
        self._answer = link.script(_ANSWER)

    def __repr__(self) -> str:
        return f"<Forwarding {self.node_id} waiting={len(self._waiting)} handled={self.handled}>"

    def inbox_of(self, node_id: str) -> str:
        return f"{self.prefix}:inbox:{node_id}"

    # --- the caller's side --------------------------------------------------------------

    async def call(
        self,
        node_id: str,
        op: str,
        channel_id: str,
        body: Mapping[str, Any],
        *,
        timeout: float,  # noqa: ASYNC109 - the request's time to live travels with it
    ) -> dict[str, Any]:
        """Ask ``node_id`` to do ``op`` on ``channel_id``; its answer.

        Raises:
            ForwardTimeout: no answer within ``timeout``.
            ClusterUnavailable: the request could not be written.
        """
        await self._ready.wait()
        request_id = uuid.uuid4().hex
        done = trio.Event()
        slot: list[dict[str, Any]] = []
        self._waiting[request_id] = (done, slot)
        try:
            with trio.move_on_after(timeout):
                fields = {
                    "id": request_id,
                    "from": self.node_id,
                    "op": op,
                    "channel": channel_id,
                    "ttl_ms": str(max(int(timeout * 1000), 1)),
                    "body": json.dumps(body, separators=(",", ":")),
                }
                await self.link.call(
                    "XADD", self.inbox_of(node_id), "MAXLEN", "~", INBOX_MAXLEN, "*",
                    *_flat(fields),
                )  # fmt: skip
                self.forwarded += 1
                await done.wait()
                return slot[0]
        finally:
            del self._waiting[request_id]
        raise ForwardTimeout(f"node {node_id!r} did not answer within {timeout:g} s")

    # --- the owner's side ----------------------------------------------------------------

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Serve this node's inbox and read its replies, until cancelled.

        Raises:
            ClusterUnavailable: the consumer group could not be made (at start).
        """
        await self._make_group()
        # The reply stream is read from the moment this node could first have
        # asked anything: "now" on Redis's side, taken before the first request.
        last_reply = await self._stream_top(self.replies)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read_replies_from, last_reply)
            nursery.start_soon(self._serve, nursery)
            self._ready.set()
            task_status.started()

    async def _stream_top(self, stream: str) -> str:
        info = await self.link.call("XREVRANGE", stream, "+", "-", "COUNT", 1)
        if info:
            return str(_text(info[0][0]))
        return "0-0"

    async def _keep(self, stream: str) -> None:
        """Move the stream's expiry on, once a quarter of :data:`STREAM_KEEP` has passed.

        Raises:
            ClusterUnavailable: Redis did not answer.
        """
        now = trio.current_time()
        if now - self._kept_at.get(stream, -math.inf) < STREAM_KEEP / 4:
            return
        if await self.link.call("PEXPIRE", stream, int(STREAM_KEEP * 1000)):
            self._kept_at[stream] = now  # (else not made yet: next time)

    async def _read_replies_from(self, last: str) -> None:
        while True:
            try:
                found = await self.link.call(
                    "XREAD", "COUNT", BATCH, "BLOCK", self.block_ms, "STREAMS", self.replies, last
                )
                if found:  # (made by the first answer to this node)
                    await self._keep(self.replies)
            except ClusterUnavailable as exc:
                log.debug("cluster: reading replies failed (retrying): %s", exc)
                await trio.sleep(RETRY)
                continue
            for _stream, entries in _streams(found):
                for entry_id, fields in entries:
                    last = entry_id
                    waiter = self._waiting.get(fields.get("id", ""))
                    if waiter is not None:  # else its caller gave up
                        done, slot = waiter
                        slot.append(_loads(fields.get("answer", "")))
                        done.set()

    async def _make_group(self, start: str = "$") -> None:
        try:
            await self.link.call("XGROUP", "CREATE", self.inbox, GROUP, start, "MKSTREAM")
        except ClusterUnavailable as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _serve(self, nursery: trio.Nursery) -> None:
        pending = True  # first what this node read and did not answer before it stopped
        # ... from after the last pending entry taken: each stays pending until its
        # answer is written, and read from the start again, a batch still being
        # handled came back (each handled twice, the limiter refusing the second).
        after = "0"
        while True:
            try:
                await self._keep(self.inbox)
                found = await self.link.call(
                    "XREADGROUP", "GROUP", GROUP, self.node_id, "COUNT", BATCH,
                    "BLOCK", self.block_ms, "STREAMS", self.inbox, after if pending else ">",
                )  # fmt: skip
                now_ms = await self._redis_ms() if found else 0
            except ClusterUnavailable as exc:
                if "NOGROUP" in str(exc):  # Redis lost the stream: make it again
                    # From its start: what callers wrote since the loss is
                    # for this node (the expired ones are dropped as read; those
                    # being handled, not handed over again).
                    self._kept_at.clear()  # (streams made again have no expiry yet)
                    with contextlib.suppress(ClusterUnavailable):
                        await self._make_group("0")
                log.debug("cluster: reading the inbox failed (retrying): %s", exc)
                await trio.sleep(RETRY)
                continue
            entries = [entry for _stream, batch in _streams(found) for entry in batch]
            if pending and not entries:
                pending = False
                continue
            if pending:
                after = entries[-1][0]
            for entry_id, fields in entries:
                if not fields:  # a pending entry trimmed away meanwhile
                    await self._ack(entry_id)
                    continue
                left = _time_left(entry_id, fields, now_ms)
                if left <= 0:
                    self.expired += 1
                    await self._ack(entry_id)
                    continue
                if entry_id in self._in_hand:  # read again while its handler runs
                    continue
                await self._limiter.acquire_on_behalf_of(entry_id)
                self._in_hand.add(entry_id)
                nursery.start_soon(self._handle, entry_id, fields, left)
            if pending and len(entries) < BATCH:
                pending = False

    async def _handle(self, entry_id: str, fields: dict[str, str], left: float) -> None:
        try:
            try:
                body = json.loads(fields.get("body", "{}"))
                if not isinstance(body, dict):
                    raise ValueError("the body is not a JSON object")
                answer = await self.handler.handle_forwarded(
                    fields.get("op", ""), fields.get("channel", ""), body, timeout=left
                )
            except Exception as exc:  # a defect or a bad request: the caller hears of it
                log.exception("cluster: a forwarded request failed here: %s", exc)
                answer = {"error": {"type": "NodeError", "message": f"{type(exc).__name__}"}}
            caller = fields.get("from", "")
            reply = {"id": fields.get("id", ""), "answer": json.dumps(answer)}
            replies = f"{self.prefix}:replies:{caller}"
            try:
                # The answer may make the caller's stream (its first, the first in an
                # hour, or one lost since): it expires like the caller's own, should
                # the caller be gone; the caller moves it on as it reads.
                await self._answer(
                    [replies], [REPLIES_MAXLEN, int(STREAM_KEEP * 1000), *_flat(reply)]
                )
            except ClusterUnavailable as exc:
                # Not acknowledged: handled again (the answer from memory) at the next start.
                log.warning("cluster: the answer to a forwarded request was lost: %s", exc)
                return
            self.handled += 1
            await self._ack(entry_id)
        finally:
            self._in_hand.discard(entry_id)
            self._limiter.release_on_behalf_of(entry_id)

    async def _ack(self, entry_id: str) -> None:
        try:
            await self.link.call("XACK", self.inbox, GROUP, entry_id)
            await self.link.call("XDEL", self.inbox, entry_id)
        except ClusterUnavailable as exc:
            log.debug("cluster: acknowledging %s failed: %s", entry_id, exc)

    async def _redis_ms(self) -> int:
        seconds, micros = await self.link.call("TIME")
        return int(seconds) * 1000 + int(micros) // 1000


def _flat(fields: Mapping[str, str]) -> list[str]:
    return [item for pair in fields.items() for item in pair]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _streams(found: Any) -> list[tuple[str, list[tuple[str, dict[str, str]]]]]:
    """XREAD / XREADGROUP's answer as ``[(stream, [(entry id, fields)])]``, text throughout."""
    if not found:
        return []
    if isinstance(found, dict):  # RESP3
        items = list(found.items())
    else:
        items = [(stream, entries) for stream, entries in found]
    result = []
    for stream, entries in items:
        parsed = []
        for entry_id, raw in entries or ():
            fields: dict[str, str] = {}
            if isinstance(raw, dict):
                fields = {_text(k): _text(v) for k, v in raw.items()}
            elif raw:
                values = list(raw)
                fields = {_text(values[i]): _text(values[i + 1]) for i in range(0, len(values), 2)}
            parsed.append((_text(entry_id), fields))
        result.append((_text(stream), parsed))
    return result


def _time_left(entry_id: str, fields: Mapping[str, str], now_ms: int) -> float:
    """Seconds the caller still waits, on Redis's clock (the entry id is its birth)."""
    try:
        born = int(entry_id.split("-", 1)[0])
        ttl = int(fields.get("ttl_ms", "0"))
    except ValueError:
        return -math.inf
    return (born + ttl - now_ms) / 1000


def _loads(text: str) -> dict[str, Any]:
    try:
        answer = json.loads(text)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        return {"error": {"type": "NodeError", "message": "the owner's answer was not readable"}}
    return answer
