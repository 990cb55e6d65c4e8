"""Crashing channel actors on purpose, and keeping count of what landed.

Design:
- A crash is meant to be what a bug does: an exception raised inside the
  ChannelActor, at an arbitrary moment, while it is connected and sending.
  :class:`CrashingProvider` wraps the real provider (the websocket adapter
  talking to its emulator, or the simulated platform) and runs the actor's
  connected phase inside a cancel scope of its own. :meth:`~CrashingProvider.crash`
  cancels that scope; once the cancellation has unwound the actor's read
  loop (its ``finally`` blocks run as they would for any failure), the
  wrapper raises :class:`InjectedCrash` from the connection's ``async with``.
  That is not a ``ProviderError``, so the actor does not mistake it for a
  dropped link: it leaves the connection task and the actor's nursery, the
  incarnation ends ``CRASHED``, the send it was handling fails with
  ``ActorCrashed``, and the supervisor decides, exactly as after a bug.
- ``ref.kill()`` (OTP's ``exit(Pid, kill)``) is the other kind, chosen with
  ``crash_mode = "kill"``: no exception, no ``on_stop``, the send in hand
  fails with ``ActorDead``.
- :class:`CrashLog` counts crashes where they land, not where they are
  asked for: a trigger that arrives as the link ends for another reason
  raises nothing and is counted as missed, so ``crashes`` is exactly the
  number of incarnations that ended by our hand.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio

from providers.base import ChannelConfig, Connection, Provider, SessionState
from providers.operations import supported_operations

__all__ = ["CrashLog", "CrashingProvider", "InjectedCrash"]


class InjectedCrash(Exception):
    """The deliberate failure the crash scenario raises inside a channel actor."""


class CrashLog:
    """When each crash was triggered and whether it landed.

    Attributes:
        times: trio time of every landed crash, in order.
        missed: triggers that landed on no incarnation.
    """

    def __init__(self, on_landed: Callable[[str, float], None]) -> None:
        self.times: list[float] = []
        self.missed = 0
        self._triggered: dict[str, float] = {}
        self._on_landed = on_landed

    def __len__(self) -> int:
        return len(self.times)

    def triggered(self, channel_id: str, at: float) -> None:
        """A crash of ``channel_id`` was asked for at ``at``; it lands later."""
        if channel_id in self._triggered:
            self.missed += 1  # the previous trigger never landed
        self._triggered[channel_id] = at

    def landed(self, channel_id: str, at: float | None = None) -> None:
        """The crash of ``channel_id`` happened (``at``: when it was triggered)."""
        when = self._triggered.pop(channel_id, None) if at is None else at
        if when is None:
            when = trio.current_time()
        self.times.append(when)
        self._on_landed(channel_id, when)

    def settle(self) -> None:
        """Count the triggers that never landed as missed."""
        self.missed += len(self._triggered)
        self._triggered.clear()


class CrashingProvider:
    """A provider whose channels can be made to crash from inside, on demand.

    Args:
        inner: the real provider; connections, limits and name are its own.
        log: where landed crashes are counted.
    """

    def __init__(self, inner: Provider, log: CrashLog) -> None:
        self.inner = inner
        self.name = inner.name
        self.limits = inner.limits
        self.operations = supported_operations(inner)
        self.log = log
        self._armed: dict[str, trio.CancelScope] = {}

    def __repr__(self) -> str:
        return f"<CrashingProvider {self.inner!r} armed={len(self._armed)}>"

    def crash(self, channel_id: str) -> bool:
        """Crash the actor of ``channel_id``; False if it has no open connection now."""
        scope = self._armed.get(channel_id)
        if scope is None or scope.cancel_called:
            return False
        self.log.triggered(channel_id, trio.current_time())
        scope.cancel()
        return True

    @asynccontextmanager
    async def open_connection(
        self, config: ChannelConfig, session: SessionState | None = None
    ) -> AsyncIterator[Connection]:
        """The inner provider's connection; its block can be crashed with :meth:`crash`.

        Raises:
            InjectedCrash: leaving the block after :meth:`crash` cancelled it.
            What the inner provider raises.
        """
        channel_id = config.channel_id
        async with self.inner.open_connection(config, session) as conn:
            scope = trio.CancelScope()
            self._armed[channel_id] = scope
            try:
                with scope:
                    yield conn
            finally:
                if self._armed.get(channel_id) is scope:
                    del self._armed[channel_id]
            if scope.cancelled_caught:
                # Our scope absorbed the cancellation; if an outer one (the actor
                # stopping) is cancelled too, let that win rather than crash.
                await trio.lowlevel.checkpoint_if_cancelled()
                self.log.landed(channel_id)
                raise InjectedCrash(
                    f"injected crash of channel {channel_id!r} (bench crash scenario)"
                )
