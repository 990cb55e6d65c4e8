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

import math
import time
from typing import Final

import attrs
import httpx
import trio

from . import target_report
from .report import Report, load_average, machine_info, utc_now
from .scenario import RunContext, Scenario, ScenarioError
from .target_discover import ChannelInfo, base_url, discover, scrub, select_channels
from .target_load import Answer, Load, peer_for
from .target_metrics import SCRAPE_TIMEOUT, NodeSample, Sampler, parse_metrics
from .target_params import TOKEN_ENV, TargetParams
from .target_report import Measured

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


async def _measure(params: TargetParams, ctx: RunContext, base: str, token: str) -> Measured:
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
        sampler = Sampler(scraper, params.sample_interval)
        before = await sampler.scrape()
        sections["discover"] = trio.current_time() - started

        window = _window(params, ctx)
        if window < params.duration:
            notes.append(
                f"the time limit cut the load from {params.duration:g} s to {window:.1f} s"
            )
            progress.note(notes[-1])
        total = max(1, math.floor(params.rate * window))
        load = Load(client, params, channels, progress)
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
    return Measured(
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
    base = base_url(ctx.target)
    started, load_before, clock = utc_now(), load_average(), time.monotonic()
    measured = trio.run(_measure, params, ctx, base, token)
    return Report(
        scenario=SCENARIO.name,
        started=started,
        duration=time.monotonic() - clock,
        parameters=attrs.asdict(params),
        machine=machine_info(),
        load_average={"before": load_before, "after": load_average()},
        section_seconds=measured.sections,
        figures=target_report.figures(measured),
        notes=[scrub(note, token) for note in target_report.notes(measured, base)],
        series=target_report.series(measured, params.sample_interval),
    )


SCENARIO: Final = Scenario(
    name="target",
    help="load-test a running deployment through its ops HTTP message API (--target URL)",
    params=TargetParams,
    run=run,
)
