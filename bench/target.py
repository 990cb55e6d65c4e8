"""The ``target`` scenario: load-test a running deployment through its ops HTTP API.

``python -m bench target --target http://host:8321 --token T`` (or the token
in ``SWITCHBOARD_API_TOKEN``) sends messages through a node that is already
running, as a team's own deployment runs, and reports what its clients would
see and what the node itself reports about the load. It drives the ops HTTP
endpoints: the embedding API lives inside the embedding program, so a load
test from outside reaches a deployment only through HTTP.

Design:
- Discovery asks the node, never a config file: ``GET /v1/channels`` (behind
  the same bearer token as the message API) lists every channel with its
  provider, tenant and state. By default every connected channel is loaded;
  ``channels`` picks some by id. Problems that mean the run cannot start
  (no token, unreachable URL, 401, 404 because the message API is off, no
  channel to load) are a :class:`~bench.scenario.ScenarioError`: one line and
  exit 2, never a traceback.
- The load is open-loop: request ``i`` is due at ``i / rate`` seconds, round
  robin over the channels and, per channel, over ``peers`` recipients (the
  platforms limit messages per recipient: Telegram one a second, WhatsApp one
  every six, so one recipient would measure the limiter, not the node). At
  most ``concurrency`` requests are in flight; a request that had to wait for
  a slot starts late, and that lateness (schedule lag) is reported beside
  the latency, so a saturated node cannot hide behind a closed loop
  (coordinated omission); requests still waiting for a slot when the window
  closes are never sent, and the notes count them. Latency runs from the
  request going out to its answer: ``POST /v1/channels/{id}/messages``
  answers once the platform accepted the message, so it is the deployment's
  whole send path. WhatsApp channels send a template (``whatsapp_template``,
  Meta's stock ``hello_world`` by default): free-form text only reaches users
  who wrote within 24 hours.
- Every answer is recorded (start, latency, lag, outcome). Outcomes are
  ``ok`` (200), ``<status> <error type>`` from the node's JSON error body, or
  the transport error's class (``ReadTimeout``, ``ConnectError``); a request
  the time limit cut off has no outcome and counts as unanswered. With more
  than one provider loaded, accepted/s, latency and errors are also given
  per provider: a slow provider holds slots and slows the others, and this
  names it. The load generator's own CPU is reported too; above 90% of a
  core it may be what limits the rate, and the notes say so.
- ``/metrics`` is scraped before, every ``sample_interval`` during, and after
  the load, on a connection of its own: node-wide reconnects, dead letters,
  messages sent and send failures (deltas over the run), mailbox depth, and
  the node process's RSS and CPU from prometheus_client's process collector
  (Linux only; absent figures are said in the notes). A node whose
  ``/metrics`` cannot be read is still load-tested, with a note.
- The run ends by itself: the load window is ``duration`` cut to what the
  time limit leaves after a drain allowance (``timeout`` + a final scrape);
  in-flight requests then get until the request timeout to answer.
- The token is sent as a header and nowhere else: it is not a parameter,
  and any text from the node is scrubbed of it before it is shown.
"""

from __future__ import annotations

import itertools
import math
import re
import secrets
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, Final, Literal
from urllib.parse import quote, urlsplit, urlunsplit

import attrs
import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from .progress import Progress
from .report import (
    Figure,
    Report,
    Series,
    load_average,
    machine_info,
    percentile,
    utc_now,
)
from .scenario import RunContext, Scenario, ScenarioError

__all__ = [
    "SCENARIO",
    "TOKEN_ENV",
    "Answer",
    "ChannelInfo",
    "NodeSample",
    "TargetParams",
    "discover",
    "parse_metrics",
    "peer_for",
    "run",
    "select_channels",
]

TOKEN_ENV: Final = "SWITCHBOARD_API_TOKEN"
SCRAPE_TIMEOUT: Final = 5.0  # seconds one /metrics scrape may take (kept for the last one)
MB: Final = 1024 * 1024
SHOWN_IDS: Final = 10  # channel ids a message or note lists before "and N more"
DRIVER_BUSY: Final = 90.0  # % of one core above which the load generator may be the bottleneck


def _positive(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{attribute.name}: expected a positive number, got {value!r}")


def _template(instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    try:
        value.format(n=1)
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(
            f"{attribute.name}: {value!r} is not a recipient template with {{n}} ({exc})"
        ) from None


def _template_name(instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    name, colon, language = value.partition(":")
    if value and not (colon and name.strip() and language.strip()):
        raise ValueError(
            f"{attribute.name}: expected name:language (hello_world:en_US), got {value!r}"
        )


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@attrs.frozen(kw_only=True)
class TargetParams:
    """What load to put on the deployment (``bench/scenarios/target.toml``)."""

    rate: float = attrs.field(
        default=100.0, validator=_positive, metadata=_help("requests per second, all channels")
    )
    duration: float = attrs.field(
        default=30.0, validator=_positive, metadata=_help("seconds of load")
    )
    concurrency: int = attrs.field(
        default=64,
        validator=attrs.validators.ge(1),
        metadata=_help("requests in flight at most"),
    )
    channels: list[str] = attrs.field(
        factory=list, metadata=_help("channel ids to load; empty = every connected channel")
    )
    text_bytes: int = attrs.field(
        default=64, validator=attrs.validators.ge(1), metadata=_help("characters per message")
    )
    peers: int = attrs.field(
        default=1000,
        validator=attrs.validators.ge(1),
        metadata=_help("recipients per channel, cycled (platforms limit each recipient)"),
    )
    discord_peer: str = attrs.field(
        default="{n}", validator=_template, metadata=_help("Discord channel id, {n} = 1..peers")
    )
    telegram_peer: str = attrs.field(
        default="{n}", validator=_template, metadata=_help("Telegram chat id, {n} = 1..peers")
    )
    whatsapp_peer: str = attrs.field(
        default="1650555{n:04d}",
        validator=_template,
        metadata=_help("WhatsApp phone number, {n} = 1..peers"),
    )
    whatsapp_template: str = attrs.field(
        default="hello_world:en_US",
        validator=_template_name,
        metadata=_help(
            "WhatsApp sends this template (name:language); empty = text, which only reaches "
            "users who wrote within 24 h"
        ),
    )
    websocket_peer: str = attrs.field(
        default="user-{n}", validator=_template, metadata=_help("websocket peer, {n} = 1..peers")
    )
    other_peer: str = attrs.field(
        default="user-{n}",
        validator=_template,
        metadata=_help("recipient on any other provider, {n} = 1..peers"),
    )
    timeout: float = attrs.field(
        default=10.0, validator=_positive, metadata=_help("seconds a request may take")
    )
    sample_interval: float = attrs.field(
        default=1.0,
        validator=_positive,
        metadata=_help("seconds between /metrics scrapes and per plot point"),
    )


# ---------------------------------------------------------------- discovery


@attrs.frozen(kw_only=True)
class ChannelInfo:
    """One channel as ``GET /v1/channels`` lists it."""

    channel: str
    tenant: str
    provider: str
    status: str


def _scrub(text: str, token: str) -> str:
    return text.replace(token, "<api token>")


def _base_url(target: str) -> str:
    """The node's ops URL (a path prefix is kept, for a node behind a proxy).

    Raises:
        ScenarioError: not an http(s) URL, or it carries credentials (the
            API token is the credential; a user:password would replace it).
    """
    parts = urlsplit(target)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ScenarioError(
            f"--target {target!r}: expected the node's ops URL, like http://127.0.0.1:8321"
        )
    if parts.username is not None or parts.password is not None:
        raise ScenarioError(
            "--target: a URL with user:password@ is not supported; the API token "
            f"(--token or {TOKEN_ENV}) is the credential"
        )
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def _refusal(response: httpx.Response, token: str) -> str:
    """Why ``GET /v1/channels`` did not list the channels, for one clear line."""
    if response.status_code == 401:
        return (
            "the node refused the API token (401): pass its [ops] api_token with --token "
            f"or {TOKEN_ENV}"
        )
    if response.status_code == 404:
        return (
            "GET /v1/channels answered 404: the node's message API is off (set [ops] "
            "api_token in its config) or the node predates the channel listing"
        )
    return f"GET /v1/channels answered {response.status_code}: " + _scrub(
        response.text[:200], token
    )


async def discover(client: httpx.AsyncClient, token: str) -> tuple[str, list[ChannelInfo]]:
    """The node's id and its channels, from ``GET /v1/channels``.

    Args:
        client: a client on the node's ops URL carrying the bearer token.
        token: the token, only to scrub it from the node's answers.

    Returns:
        The node id and every channel it lists.

    Raises:
        ScenarioError: the node cannot be reached, refuses the token, has
            no message API, or answers something that is not a listing.
    """
    try:
        response = await client.get("/v1/channels")
    except httpx.TransportError as exc:
        raise ScenarioError(f"cannot reach {client.base_url}: {type(exc).__name__}: {exc}") from exc
    if response.status_code != 200:
        raise ScenarioError(_refusal(response, token))
    try:
        body = response.json()
        listed = [
            ChannelInfo(
                channel=str(item["channel"]),
                tenant=str(item["tenant"]),
                provider=str(item["provider"]),
                status=str(item["status"]),
            )
            for item in body["channels"]
        ]
        return str(body["node"]), listed
    except (ValueError, KeyError, TypeError) as exc:
        raise ScenarioError(
            f"GET /v1/channels did not answer a channel listing ({type(exc).__name__}: {exc}); "
            "is the URL a Switchboard node's ops listener?"
        ) from exc


def select_channels(
    listed: Sequence[ChannelInfo], wanted: Sequence[str], node: str
) -> tuple[list[ChannelInfo], list[str]]:
    """The channels to load, and notes about the choice.

    Args:
        listed: what the node lists.
        wanted: ids asked for; empty means every connected channel.
        node: the node's id, for messages.

    Returns:
        The chosen channels (in the order asked, or sorted by id) and notes
        (a chosen channel that is not connected will answer errors).

    Raises:
        ScenarioError: an id the node does not have, or nothing to load.
    """
    if not wanted:
        chosen = [info for info in listed if info.status == "connected"]
        if not chosen:
            raise ScenarioError(
                f"node {node!r} has no connected channel to load "
                f"({len(listed)} configured); its /health says why"
            )
        return chosen, []
    by_id = {info.channel: info for info in listed}
    unknown = [channel for channel in wanted if channel not in by_id]
    if unknown:
        known = ", ".join(sorted(by_id)[:SHOWN_IDS]) or "none"
        if len(by_id) > SHOWN_IDS:
            known += f" and {len(by_id) - SHOWN_IDS} more"
        raise ScenarioError(f"node {node!r} has no channel {', '.join(unknown)}; it has: {known}")
    chosen = [by_id[channel] for channel in dict.fromkeys(wanted)]
    notes = [
        f"channel {info.channel} was {info.status} when the load started: expect errors from it"
        for info in chosen
        if info.status != "connected"
    ]
    return chosen, notes


def peer_for(params: TargetParams, provider: str, n: int) -> str:
    """The ``n``-th recipient (1-based) on ``provider``, from its template."""
    templates = {
        "discord": params.discord_peer,
        "telegram": params.telegram_peer,
        "whatsapp": params.whatsapp_peer,
        "websocket": params.websocket_peer,
    }
    return templates.get(provider, params.other_peer).format(n=n)


# ---------------------------------------------------------------- /metrics


@attrs.frozen(kw_only=True)
class NodeSample:
    """One ``/metrics`` scrape, summed over every channel of the node.

    Attributes:
        at: when the scrape began, on the trio clock.
        rss: the node process's resident memory in bytes, if it reports it.
        cpu: the node process's CPU seconds so far, if it reports them.
        reconnects: reconnections after a lost link.
        dead_letters: messages in the dead-letter queues.
        sent: messages the platforms accepted.
        send_failures: send attempts that failed.
        mailbox_depth: messages waiting in mailboxes.
    """

    at: float
    rss: float | None
    cpu: float | None
    reconnects: float
    dead_letters: float
    sent: float
    send_failures: float
    mailbox_depth: float


_SUMMED: Final = {
    "switchboard_channel_reconnects_total": "reconnects",
    "switchboard_channel_dead_letters": "dead_letters",
    "switchboard_channel_messages_sent_total": "sent",
    "switchboard_channel_send_failures_total": "send_failures",
    "switchboard_channel_mailbox_depth": "mailbox_depth",
}
_PROCESS: Final = {"process_resident_memory_bytes": "rss", "process_cpu_seconds_total": "cpu"}


def parse_metrics(text: str, at: float) -> NodeSample:
    """Sum the per-channel families of one scrape and read the process figures.

    Raises:
        ValueError: ``text`` is not Prometheus exposition text.
    """
    sums = dict.fromkeys(_SUMMED.values(), 0.0)
    process: dict[str, float | None] = dict.fromkeys(_PROCESS.values(), None)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in _SUMMED:
                sums[_SUMMED[sample.name]] += sample.value
            elif sample.name in _PROCESS:
                process[_PROCESS[sample.name]] = sample.value
    return NodeSample(
        at=at,
        rss=process["rss"],
        cpu=process["cpu"],
        reconnects=sums["reconnects"],
        dead_letters=sums["dead_letters"],
        sent=sums["sent"],
        send_failures=sums["send_failures"],
        mailbox_depth=sums["mailbox_depth"],
    )


async def _scrape(client: httpx.AsyncClient, at: float) -> NodeSample | str:
    """One scrape, or why it failed (a scrape failure never stops the load)."""
    try:
        response = await client.get("/metrics")
        response.raise_for_status()
        return parse_metrics(response.text, at)
    except (httpx.HTTPError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"


class _Sampler:
    """Scrapes ``/metrics`` at a fixed interval while the load runs."""

    def __init__(self, client: httpx.AsyncClient, interval: float) -> None:
        self.client = client
        self.interval = interval
        self.samples: list[NodeSample] = []
        self.failures: list[str] = []

    def __repr__(self) -> str:
        return f"<_Sampler {len(self.samples)} samples, {len(self.failures)} failed>"

    async def scrape(self) -> NodeSample | None:
        result = await _scrape(self.client, trio.current_time())
        if isinstance(result, str):
            self.failures.append(result)
            return None
        self.samples.append(result)
        return result

    async def run_until_cancelled(self, t0: float, horizon: float) -> None:
        """Scrape every ``interval`` from ``t0`` for at most ``horizon`` seconds."""
        for k in range(1, math.ceil(horizon / self.interval) + 1):
            await trio.sleep_until(t0 + k * self.interval)
            await self.scrape()


# ---------------------------------------------------------------- the load


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


class _Load:
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
        return f"<_Load {self.sent} sent, {len(self.answers)} ended, {self.accepted} accepted>"

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


# ---------------------------------------------------------------- results


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def _ms(seconds: float) -> float:
    return seconds * 1000.0


def _span(load: _Load, window: float) -> float:
    """Seconds from the load's start to its last answer (at least the window)."""
    return max([window, *(a.start + a.latency for a in load.answers)])


Better = Literal["lower", "higher"]


def _fig(name: str, label: str, unit: str, value: float, better: Better) -> Figure:
    return Figure.single(name=name, label=label, unit=unit, value=value, better=better)


def _latencies(ok: list[float], quantiles: Iterable[int], suffix: str, prefix: str) -> list[Figure]:
    """Percentiles of the sorted latencies ``ok`` (none when nothing was accepted)."""
    if not ok:
        return []
    return [
        _fig(
            f"latency_p{q}{suffix}",
            f"{prefix}send latency p{q}",
            "ms",
            _ms(percentile(ok, q)),
            "lower",
        )
        for q in quantiles
    ]


def _load_figures(load: _Load, window: float) -> list[Figure]:
    """Requests, throughput, latency, lag and errors, as the clients saw them."""
    answers = load.answers
    ok = sorted(a.latency for a in answers if a.outcome == "ok")
    answered = sum(a.answered for a in answers)
    errors = Counter(a.outcome for a in answers if a.outcome != "ok")
    figures = [
        _fig("requests_sent", "requests sent", "requests", load.sent, "higher"),
        _fig("requests_answered", "requests answered (any status)", "requests", answered, "higher"),
        _fig("unanswered", "requests without an answer", "requests", load.sent - answered, "lower"),
        _fig("offered_rate", "requests sent per second", "req/s", load.sent / window, "higher"),
        _fig(
            "accepted_per_second",
            "messages accepted per second",
            "msgs/s",
            len(ok) / _span(load, window),
            "higher",
        ),
        _fig("errors", "errors (all kinds)", "requests", sum(errors.values()), "lower"),
    ]
    figures += [
        _fig(f"errors_{_slug(kind)}", f"errors: {kind}", "requests", count, "lower")
        for kind, count in sorted(errors.items())
    ]
    figures += _latencies(ok, (50, 90, 99), "", "")
    if ok:
        figures.append(_fig("latency_max", "send latency max", "ms", _ms(ok[-1]), "lower"))
    if answers:
        lag = percentile(sorted(a.lag for a in answers), 99)
        figures.append(
            _fig("schedule_lag_p99", "start lag behind schedule p99", "ms", _ms(lag), "lower")
        )
    return figures


def _provider_figures(answers: Sequence[Answer], span: float) -> list[Figure]:
    """Accepted/s, p50, p99 and errors per provider, when the load spans several.

    A slow provider holds concurrency slots and so slows the others: this
    says which one it is.
    """
    by_provider: dict[str, list[Answer]] = {}
    for answer in answers:
        by_provider.setdefault(answer.provider, []).append(answer)
    if len(by_provider) < 2:
        return []
    figures = []
    for provider, mine in sorted(by_provider.items()):
        ok = sorted(a.latency for a in mine if a.outcome == "ok")
        slug, tag = _slug(provider), f"[{provider}] "
        figures.append(
            _fig(
                f"accepted_per_second_{slug}",
                f"{tag}messages accepted per second",
                "msgs/s",
                len(ok) / span,
                "higher",
            )
        )
        figures += _latencies(ok, (50, 99), f"_{slug}", tag)
        figures.append(
            _fig(f"errors_{slug}", f"{tag}errors", "requests", len(mine) - len(ok), "lower")
        )
    return figures


# (NodeSample attribute, label, unit, better) for the node's counters, as deltas over the run.
_NODE_DELTAS: Final[tuple[tuple[str, str, str, Better], ...]] = (
    ("sent", "node: messages sent (Δ)", "msgs", "higher"),
    ("send_failures", "node: send failures (Δ)", "attempts", "lower"),
    ("reconnects", "node: reconnects (Δ)", "reconnects", "lower"),
    ("dead_letters", "node: dead letters (Δ)", "msgs", "lower"),
)


def _node_figures(
    before: NodeSample, after: NodeSample, samples: Sequence[NodeSample]
) -> list[Figure]:
    """What the node's own ``/metrics`` said about the run (node-wide)."""
    figures = [
        _fig(f"node_{name}", label, unit, getattr(after, name) - getattr(before, name), better)
        for name, label, unit, better in _NODE_DELTAS
    ]
    every = (before, *samples, after)
    depth = max(s.mailbox_depth for s in every)
    figures.append(
        _fig(
            "node_mailbox_depth_peak", "node: mailbox depth peak (sampled)", "msgs", depth, "lower"
        )
    )
    if before.rss is not None and after.rss is not None:
        peak = max(s.rss for s in every if s.rss is not None)
        figures += [
            _fig("node_rss_before", "node: RSS before", "MB", before.rss / MB, "lower"),
            _fig("node_rss_after", "node: RSS after", "MB", after.rss / MB, "lower"),
            _fig("node_rss_peak", "node: RSS peak (sampled)", "MB", peak / MB, "lower"),
        ]
    if before.cpu is not None and after.cpu is not None and after.at > before.at:
        busy = 100.0 * (after.cpu - before.cpu) / (after.at - before.at)
        figures.append(_fig("node_cpu", "node: CPU, % of one core", "%", busy, "lower"))
    return figures


def _buckets(values: Iterable[tuple[float, float]], width: float) -> dict[int, list[float]]:
    out: dict[int, list[float]] = {}
    for at, value in values:
        out.setdefault(max(0, int(at // width)), []).append(value)
    return out


def _load_series(answers: Sequence[Answer], width: float) -> list[Series]:
    """Latency percentiles and accepted/s per ``width`` seconds, by completion time."""
    ended = [(a.start + a.latency, a) for a in answers]
    latencies = _buckets(((at, a.latency) for at, a in ended if a.outcome == "ok"), width)
    outcomes = _buckets(((at, float(a.outcome == "ok")) for at, a in ended), width)
    keys = sorted(latencies)
    lines = {
        f"p{q}": [_ms(percentile(sorted(latencies[k]), q)) for k in keys] for q in (50, 90, 99)
    }
    span = range(max(outcomes, default=-1) + 1)
    return [
        Series(
            name="latency_over_time",
            title="send latency percentiles",
            x_label="s since load start",
            y_label="ms",
            x=[k * width for k in keys],
            lines=lines,
        ),
        Series(
            name="accepted_over_time",
            title="messages accepted and errors per second",
            x_label="s since load start",
            y_label="per s",
            x=[k * width for k in span],
            lines={
                "accepted/s": [sum(outcomes.get(k, [])) / width for k in span],
                "errors/s": [
                    (len(outcomes.get(k, [])) - sum(outcomes.get(k, []))) / width for k in span
                ],
            },
            kind="step",
        ),
    ]


def _node_series(samples: Sequence[NodeSample], t0: float) -> list[Series]:
    """The node's RSS and CPU over the run, from the scrapes that reported them."""
    series = []
    rss = [(s.at - t0, s.rss / MB) for s in samples if s.rss is not None]
    if rss:
        series.append(
            Series(
                name="node_rss_over_time",
                title="node RSS",
                x_label="s since load start",
                y_label="MB",
                x=[at for at, _ in rss],
                lines={"RSS": [mb for _, mb in rss]},
            )
        )
    cpu = [(s.at - t0, s.cpu) for s in samples if s.cpu is not None]
    busy = [
        (b_at, 100.0 * (b - a) / (b_at - a_at))
        for (a_at, a), (b_at, b) in itertools.pairwise(cpu)
        if b_at > a_at
    ]
    if busy:
        series.append(
            Series(
                name="node_cpu_over_time",
                title="node CPU",
                x_label="s since load start",
                y_label="% of one core",
                x=[at for at, _ in busy],
                lines={"CPU": [percent for _, percent in busy]},
            )
        )
    return series


# ---------------------------------------------------------------- the run


@attrs.frozen(kw_only=True)
class _Measured:
    """Everything :func:`_measure` brings back from the deployment."""

    node: str
    channels: list[ChannelInfo]
    load: _Load
    window: float
    planned: int
    sampler: _Sampler
    before: NodeSample | None
    after: NodeSample | None
    sections: dict[str, float]
    driver_cpu: float
    notes: list[str]


def _window(params: TargetParams, ctx: RunContext) -> float:
    """Seconds of load: ``duration``, cut to what the time limit leaves after the drain.

    Raises:
        ScenarioError: the time limit leaves no time for load at all.
    """
    drain = params.timeout + SCRAPE_TIMEOUT
    window = min(params.duration, ctx.remaining() - drain)
    if window <= 0:
        raise ScenarioError(
            f"the time limit leaves {ctx.remaining():.1f} s and the drain alone needs "
            f"{drain:.1f} s (timeout + a last scrape): raise --time-limit or lower --timeout"
        )
    return window


async def _measure(params: TargetParams, ctx: RunContext, base: str, token: str) -> _Measured:
    """Discover, scrape, load, drain, scrape: the whole run against the node."""
    progress = ctx.progress
    sections: dict[str, float] = {}
    limits = httpx.Limits(
        max_connections=params.concurrency, max_keepalive_connections=params.concurrency
    )
    async with (
        httpx.AsyncClient(
            base_url=base,
            headers={"Authorization": f"Bearer {token}"},
            timeout=params.timeout,
            limits=limits,
        ) as client,
        httpx.AsyncClient(base_url=base, timeout=SCRAPE_TIMEOUT) as scraper,
    ):
        progress.phase(f"discovering channels at {base}")
        started = trio.current_time()
        node, listed = await discover(client, token)
        channels, notes = select_channels(listed, params.channels, node)
        for note in notes:
            progress.note(note)
        sampler = _Sampler(scraper, params.sample_interval)
        before = await sampler.scrape()
        sections["discover"] = trio.current_time() - started

        window = _window(params, ctx)
        if window < params.duration:
            notes.append(
                f"the time limit cut the load from {params.duration:g} s to {window:.1f} s"
            )
            progress.note(notes[-1])
        total = max(1, math.floor(params.rate * window))
        load = _Load(client, params, channels, progress)
        progress.phase(
            f"loading node {node!r}: {params.rate:g} req/s for {window:.1f} s "
            f"on {len(channels)} channel(s)",
            total=total,
            unit="requests",
        )
        t0, cpu0 = trio.current_time(), time.process_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sampler.run_until_cancelled, t0, window + params.timeout)
            await load.run(t0, window, total, drain=params.timeout)
            nursery.cancel_scope.cancel()
        sections["load"] = trio.current_time() - t0
        driver_cpu = 100.0 * (time.process_time() - cpu0) / max(sections["load"], 1e-9)
        after = await sampler.scrape()
    return _Measured(
        node=node,
        channels=channels,
        load=load,
        window=window,
        planned=total,
        sampler=sampler,
        before=before,
        after=after,
        sections=sections,
        driver_cpu=driver_cpu,
        notes=notes,
    )


def _notes(measured: _Measured, base: str) -> list[str]:
    """What a reader needs to interpret the figures."""
    load, sampler = measured.load, measured.sampler
    ids = ", ".join(info.channel for info in measured.channels[:SHOWN_IDS])
    extra = len(measured.channels) - SHOWN_IDS
    more = f" and {extra} more" if extra > 0 else ""
    notes = [
        f"target {base}, node {measured.node!r}, {len(measured.channels)} channel(s): {ids}{more}",
        "latency runs from the request going out to its answer; the message API answers "
        "once the platform accepted the message, so it covers the node's whole send path",
        "schedule lag: how late requests went out because every concurrency slot was busy",
        "node figures are node-wide deltas from its /metrics: other traffic counts too",
        "machine and load averages describe the load generator, not the node",
        *measured.notes,
    ]
    if measured.driver_cpu >= DRIVER_BUSY:
        notes.append(
            f"the load generator used {measured.driver_cpu:.0f}% of a core: it may be what "
            "limits the rate; run it on another machine than the node, or lower the rate"
        )
    unsent = measured.planned - load.sent
    if unsent:
        notes.append(
            f"{unsent} of {measured.planned} scheduled requests were never sent: every "
            "concurrency slot was busy until the load window closed (the node answered "
            "slower than rate x latency needs; raise concurrency or lower the rate)"
        )
    cut = load.sent - len(load.answers)
    if cut:
        notes.append(f"{cut} request(s) were still in flight at the time limit")
    if measured.before is None or measured.after is None:
        notes.append("no node figures: /metrics could not be read before and after the load")
    if sampler.failures:
        notes.append(
            f"{len(sampler.failures)} /metrics scrape(s) failed; first: {sampler.failures[0]}"
        )
    elif measured.before is not None and measured.before.rss is None:
        notes.append("the node's /metrics has no process figures (RSS, CPU): not on Linux?")
    return notes


def run(params: TargetParams, ctx: RunContext) -> Report:
    """Load-test the deployment at ``ctx.target`` and report what it did.

    Args:
        params: the load.
        ctx: the harness's context; ``target`` and ``token`` are required
            (the harness takes the token from ``--token`` or ``SWITCHBOARD_API_TOKEN``).

    Returns:
        The report: client-side figures, node figures from ``/metrics``,
        and series over time for the plots.

    Raises:
        ScenarioError: no target or token, or the run cannot start (see
            :func:`discover`, :func:`select_channels`).
    """
    if ctx.target is None:
        raise ScenarioError(
            "the target scenario load-tests a running node: pass --target URL "
            f"(its ops listener) and --token or {TOKEN_ENV}"
        )
    token = ctx.token  # the harness reads --token, else the environment variable
    if token is None or not token.strip():
        raise ScenarioError(
            f"no API token: pass --token or set {TOKEN_ENV} (the node's [ops] api_token)"
        )
    base = _base_url(ctx.target)
    started, load_before, clock = utc_now(), load_average(), time.monotonic()
    measured = trio.run(_measure, params, ctx, base, token)
    figures = _load_figures(measured.load, measured.window)
    figures += _provider_figures(measured.load.answers, _span(measured.load, measured.window))
    figures.append(
        _fig("driver_cpu", "load generator: CPU, % of one core", "%", measured.driver_cpu, "lower")
    )
    if measured.before is not None and measured.after is not None:
        figures += _node_figures(measured.before, measured.after, measured.sampler.samples)
    series = _load_series(measured.load.answers, params.sample_interval)
    series += _node_series(measured.sampler.samples, measured.load.t0)
    return Report(
        scenario=SCENARIO.name,
        started=started,
        duration=time.monotonic() - clock,
        parameters=attrs.asdict(params),
        machine=machine_info(),
        load_average={"before": load_before, "after": load_average()},
        section_seconds=measured.sections,
        figures=figures,
        notes=[_scrub(note, token) for note in _notes(measured, base)],
        series=series,
    )


SCENARIO: Final = Scenario(
    name="target",
    help="load-test a running deployment through its ops HTTP message API (--target URL)",
    params=TargetParams,
    run=run,
)
