"""The chaos scenario's fault script: what hits the platforms, the store and the actors.

Design:
- One fault every ``interval`` seconds, the kinds in a fixed rotation
  (:data:`KINDS`) so that a short run still meets each, their targets drawn
  from a seeded random source so that a run can be repeated. Each fault
  is what the issue names, made the way a broken platform or operator
  makes it:

  ========== ==========================================================
  5xx        Telegram's next calls answer 502; Discord's and WhatsApp's
             next sends 500 / 503 (the HTTP layer of the emulator)
  upgrade    websocket links dropped and their reconnects refused with
             503; every Discord gateway socket dropped, the next
             upgrades (resumes) refused with 503
  drip       Telegram polls and WhatsApp sends answered a byte a second;
             dropped websocket links' reconnects held unanswered
  huge       Telegram polls and Discord sends answered with a body far
             over any cap; dropped websocket links' reconnects answered
             with one message far over it
  drop       websocket links dropped (1001), Discord's gateway asks its
             bots to reconnect (op 7)
  ban        a websocket and a Telegram bot banned (the channel must go
             FAILED, not hammer), unbanned after ``ban_seconds`` and
             revived with ``Node.restart_channel`` as an operator does
  store      PostgreSQL unreachable for ``outage`` seconds: links cut, new
             connections refused (:class:`~providers.testing.LinkBreaker`)
  kill       channel actors killed (``ref.kill()``: no ``on_stop``)
  refuse     the next websocket and WhatsApp sends refused for good
             (bad recipient, 131026): those messages must end as dead
             letters
  ========== ==========================================================

- The faults run beside the load, as tasks of the script's nursery (a
  ban's lifting, the store coming back), all bounded in time; every fault
  applied is recorded with its time for the report's plots.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Sequence
from typing import Any, Final

import attrs
import httpx
import trio

from actors import ActorState
from providers.testing import LinkBreaker
from runtime import Node, NodeError

from .chaos_load import ChaosChannel
from .rig import EmulatorControl
from .scenario import ScenarioError

__all__ = ["KINDS", "FaultRecord", "FaultScript"]

KINDS: Final = ("5xx", "kill", "upgrade", "drip", "store", "huge", "drop", "refuse", "ban")
DRIP_SECONDS: Final = 20.0  # how long a drip holds a request (the clients' deadlines cut it)
HUGE_BYTES: Final = 32 << 20  # over every provider's cap (8 MiB bodies by default)


@attrs.frozen(kw_only=True)
class FaultRecord:
    """One fault applied: when (seconds since the load began), what, and on what."""

    at: float
    kind: str
    detail: str


class FaultScript:
    """Applies :data:`KINDS` in turn, one every ``interval`` seconds.

    Args:
        node: the node under test (actor kills, reviving banned channels).
        controls: each platform's control API.
        channels: every channel of the run.
        breaker: the link between the node and PostgreSQL.
        banned: channel ids banned now (the loads leave them alone); shared.
        seed: seeds the choice of targets.
        share: fraction of a platform's channels one fault targets.
        outage: seconds a store outage lasts.
        ban_seconds: seconds a ban lasts.

    Attributes:
        records: every fault applied, in order.
        revived: banned channels brought back with ``restart_channel``.
        errors: faults that could not be applied, with why.
    """

    def __init__(
        self,
        *,
        node: Node,
        controls: dict[str, EmulatorControl],
        channels: Sequence[ChaosChannel],
        breaker: LinkBreaker,
        banned: set[str],
        seed: int,
        share: float,
        outage: float,
        ban_seconds: float,
    ) -> None:
        self.node = node
        self.controls = controls
        self.by_provider: dict[str, list[ChaosChannel]] = {}
        for channel in channels:
            self.by_provider.setdefault(channel.provider, []).append(channel)
        self.breaker = breaker
        self.banned = banned
        self.rng = random.Random(seed)
        self.share = share
        self.outage = outage
        self.ban_seconds = ban_seconds
        self.records: list[FaultRecord] = []
        self.revived = 0
        self.errors: list[str] = []
        self.start = 0.0

    def __repr__(self) -> str:
        return f"<FaultScript applied={len(self.records)} banned={len(self.banned)}>"

    async def run(self, duration: float, interval: float, *, first: float) -> None:
        """Apply faults from ``first`` seconds on, every ``interval``, until ``duration``.

        Returns once every fault's own tasks (a ban's lifting, the store
        coming back) are over.
        """
        self.start = trio.current_time()
        async with trio.open_nursery() as nursery:
            at, n = first, 0
            while at < duration:
                await trio.sleep_until(self.start + at)
                # Each in a task of its own: a platform slow to answer its control
                # API (a reconnect storm) must not push the later faults back.
                nursery.start_soon(self._guarded, KINDS[n % len(KINDS)], nursery)
                at, n = at + interval, n + 1

    async def _guarded(self, kind: str, nursery: trio.Nursery) -> None:
        try:
            await self._apply(kind, nursery)
        except (ScenarioError, NodeError, httpx.HTTPError) as exc:
            self.errors.append(f"{kind}: {exc!r}")

    def _record(self, kind: str, detail: str, at: float) -> None:
        self.records.append(FaultRecord(at=at - self.start, kind=kind, detail=detail))

    def _sample(self, provider: str, *, at_least: int = 1) -> list[ChaosChannel]:
        pool = [c for c in self.by_provider.get(provider, []) if c.id not in self.banned]
        n = min(len(pool), max(at_least, round(len(pool) * self.share)))
        return self.rng.sample(pool, n)

    def _count(self, provider: str) -> int:
        return max(2, round(len(self.by_provider.get(provider, [])) * self.share))

    async def _fault(self, provider: str, **payload: Any) -> None:
        if provider in self.by_provider:
            await self.controls[provider].fault(**payload)

    async def _drop_websockets(self) -> int:
        dropped = self._sample("websocket")
        for channel in dropped:
            await self._fault("websocket", kind="drop", token=channel.token)
        return len(dropped)

    async def _apply(self, kind: str, nursery: trio.Nursery) -> None:
        began = trio.current_time()
        if kind == "5xx":
            await self._fault(
                "telegram", kind="server_error", status=502, count=self._count("telegram")
            )
            await self._fault(
                "discord",
                kind="http_status",
                status=500,
                path="/messages",
                scope="http",
                count=self._count("discord"),
            )
            await self._fault(
                "whatsapp",
                kind="http_status",
                status=503,
                path="/messages",
                count=self._count("whatsapp"),
            )
            self._record(kind, "Telegram 502, Discord sends 500, WhatsApp sends 503", began)
        elif kind == "upgrade":
            n = await self._drop_websockets()
            await self._fault(
                "websocket", kind="http_status", status=503, scope="websocket", count=n
            )
            await self._fault("discord", kind="drop")
            await self._fault(
                "discord",
                kind="http_status",
                status=503,
                scope="websocket",
                count=self._count("discord"),
            )
            self._record(
                kind, f"{n} websocket links dropped and every Discord socket; upgrades 503", began
            )
        elif kind == "drip":
            n = await self._drop_websockets()
            drip = {"kind": "drip", "interval": 1.0, "duration": DRIP_SECONDS}
            await self._fault("websocket", **drip, scope="websocket", count=n)
            await self._fault("telegram", **drip, path="/getUpdates", count=self._count("telegram"))
            await self._fault("whatsapp", **drip, path="/messages", count=self._count("whatsapp"))
            self._record(
                kind, f"Telegram polls, WhatsApp sends, {n} websocket reconnects drip", began
            )
        elif kind == "huge":
            n = await self._drop_websockets()
            huge = {"kind": "huge_body", "size": HUGE_BYTES}
            await self._fault("websocket", **huge, scope="websocket", count=n)
            await self._fault("telegram", **huge, path="/getUpdates", count=self._count("telegram"))
            await self._fault(
                "discord", **huge, path="/messages", scope="http", count=self._count("discord")
            )
            self._record(
                kind, f"32 MiB bodies: Telegram polls, Discord sends, {n} websocket links", began
            )
        elif kind == "drop":
            n = await self._drop_websockets()
            await self._fault("discord", kind="reconnect")
            self._record(kind, f"{n} websocket links dropped, Discord op 7 on every socket", began)
        elif kind == "refuse":
            await self._fault(
                "websocket", kind="fail_sends", code="bad_recipient", count=self._count("websocket")
            )
            await self._fault(
                "whatsapp", kind="fail_next", code=131026, count=self._count("whatsapp")
            )
            self._record(kind, "next websocket and WhatsApp sends refused for good", began)
        elif kind == "kill":
            killed = self._kill()
            self._record(kind, f"{killed} channel actors killed", began)
        elif kind == "store":
            nursery.start_soon(self._store_outage)
            self._record(kind, f"PostgreSQL unreachable for {self.outage:g} s", began)
        elif kind == "ban":
            victims = [*self._sample("websocket", at_least=1)[:1], *self._sample("telegram")[:1]]
            for channel in victims:
                self.banned.add(channel.id)
                await self._fault(channel.provider, kind="ban_token", token=channel.token)
                nursery.start_soon(self._lift_ban, channel)
            self._record(
                kind, f"{', '.join(c.id for c in victims)} banned for {self.ban_seconds:g} s", began
            )

    def _kill(self) -> int:
        killed = 0
        everyone = [c for cs in self.by_provider.values() for c in cs if c.id not in self.banned]
        for channel in self.rng.sample(
            everyone, min(len(everyone), max(1, round(len(everyone) * self.share)))
        ):
            with contextlib.suppress(NodeError):
                ref = self.node.channel(channel.id).ref
                if ref.state is ActorState.RUNNING:
                    ref.kill()
                    killed += 1
        return killed

    async def _store_outage(self) -> None:
        self.breaker.refusing = True
        self.breaker.cut()
        try:
            await trio.sleep(self.outage)
        finally:
            self.breaker.refusing = False

    async def _lift_ban(self, channel: ChaosChannel) -> None:
        await trio.sleep(self.ban_seconds)
        await self._fault(channel.provider, kind="unban_token", token=channel.token)
        try:
            await self.node.restart_channel(channel.id)
            self.revived += 1
        except NodeError as exc:
            self.errors.append(f"revive {channel.id}: {exc}")
        finally:
            self.banned.discard(channel.id)
