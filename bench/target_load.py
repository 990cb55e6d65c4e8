"""The ``target`` scenario's load driver: open-loop requests to the message API.

Design:
- Request ``i`` is due at ``i / rate`` seconds, round robin over the
  channels and, per channel, over ``peers`` recipients (the platforms limit
  messages per recipient, so one recipient would measure the limiter).
- At most ``concurrency`` requests are in flight; a request that had to
  wait for a slot starts late, and that lateness (schedule lag) is recorded
  beside the latency (no coordinated omission).
- Every answer is recorded (:class:`Answer`): ``ok`` (200), ``<status>
  <error type>`` from the node's JSON error body, or the transport error's
  class.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import attrs
import httpx
import trio

from .progress import Progress
from .target_discover import ChannelInfo
from .target_params import TargetParams

__all__ = ["Answer", "Load", "peer_for"]


def peer_for(params: TargetParams, provider: str, n: int) -> str:
    """The ``n``-th recipient (1-based) on ``provider``, from its template."""
    templates = {
        "discord": params.discord_peer,
        "telegram": params.telegram_peer,
        "whatsapp": params.whatsapp_peer,
        "websocket": params.websocket_peer,
    }
    return templates.get(provider, params.other_peer).format(n=n)


@attrs.frozen(kw_only=True, slots=True)
class Answer:
    """How one request ended.

    Attributes:
        start: seconds since the load started, when it went out.
        latency: seconds until its answer (or its failure).
        lag: seconds it went out after it was due (waiting for a slot).
        outcome: ``ok``, ``<status> <error type>``, or a transport error's class.
        answered: an HTTP answer came back (any status).
        provider: the provider of the channel it was sent on.
    """

    start: float
    latency: float
    lag: float
    outcome: str
    answered: bool
    provider: str


def _outcome(response: httpx.Response) -> str:
    if response.status_code == 200:
        return "ok"
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        error = None
    return f"{response.status_code} {error or response.reason_phrase or 'error'}"


class Load:
    """The open-loop sender: a schedule, a slot limit, and every answer."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        params: TargetParams,
        channels: Sequence[ChannelInfo],
        progress: Progress,
    ) -> None:
        self.client = client
        self.params = params
        self.channels = channels
        self.progress = progress
        self.run_id = secrets.token_hex(4)  # idempotency keys must not repeat across runs
        self.text = ("load test " * (params.text_bytes // 10 + 1))[: params.text_bytes]
        self.answers: list[Answer] = []
        self.sent = 0
        self.accepted = 0
        self.t0 = 0.0

    def __repr__(self) -> str:
        return f"<Load {self.sent} sent, {len(self.answers)} ended, {self.accepted} accepted>"

    def request(self, i: int) -> tuple[ChannelInfo, str, dict[str, Any]]:
        """The channel, path and body of request ``i``: round robin over channels, then peers."""
        info = self.channels[i % len(self.channels)]
        n = (i // len(self.channels)) % self.params.peers + 1
        body: dict[str, Any] = {
            "peer": peer_for(self.params, info.provider, n),
            "idempotency_key": f"bench-{self.run_id}-{i}",
        }
        if info.provider == "whatsapp" and self.params.whatsapp_template:
            name, _, language = self.params.whatsapp_template.partition(":")
            body["template"] = {"name": name, "language": language}
        else:
            body["text"] = self.text
        return info, f"/v1/channels/{quote(info.channel, safe='')}/messages", body

    async def run(self, t0: float, window: float, total: int, drain: float) -> None:
        """Send ``total`` requests due over ``window``; wait ``drain`` s for stragglers."""
        self.t0 = t0
        slots = trio.Semaphore(self.params.concurrency)
        with trio.move_on_at(t0 + window + drain):
            async with trio.open_nursery() as nursery:
                with trio.move_on_at(t0 + window):
                    for i in range(total):
                        due = t0 + i / self.params.rate
                        await trio.sleep_until(due)
                        await slots.acquire()
                        nursery.start_soon(self._send, i, due, slots)

    async def _send(self, i: int, due: float, slots: trio.Semaphore) -> None:
        info, path, body = self.request(i)
        started = trio.current_time()
        self.sent += 1
        try:
            response = await self.client.post(path, json=body)
        except httpx.TransportError as exc:
            outcome, answered = type(exc).__name__, False
        else:
            outcome, answered = _outcome(response), True
        finally:
            slots.release()
        ended = trio.current_time()
        self.answers.append(
            Answer(
                start=started - self.t0,
                latency=ended - started,
                lag=started - due,
                outcome=outcome,
                answered=answered,
                provider=info.provider,
            )
        )
        self.accepted += outcome == "ok"
        elapsed = max(ended - self.t0, 1e-9)
        self.progress.update(
            len(self.answers),
            accepted=self.accepted,
            errors=len(self.answers) - self.accepted,
            in_flight=self.sent - len(self.answers),
            rate=f"{self.accepted / elapsed:,.0f}/s",
        )
