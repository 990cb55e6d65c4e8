"""Redis for the cluster, inside trio: redis-py's asyncio client behind trio-asyncio.

Design:
- asyncio stays in this module. :func:`open_redis` reuses the trio-asyncio
  loop the calling task already runs in (the PostgreSQL store may have
  opened one) or opens one, and a redis-py client with its connection pool;
  every call crosses the bridge with ``aio_as_trio(fn, loop=...)``.
- Every command has a socket timeout: a link that freezes must fail a
  lease renewal in time for the node to act, never hang it. redis-py's own
  retries are off; the callers retry on their own schedule.
- Lua scripts are redis-py ``Script`` objects (EVALSHA, and EVAL when Redis
  lost its script cache, as after a restart).
- Errors become :class:`ClusterUnavailable` naming ``host:port``; the URL's
  password never appears in a message.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final
from urllib.parse import urlsplit

import redis.asyncio as aioredis
import redis.exceptions
import trio
import trio_asyncio  # type: ignore[import-untyped]
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from providers.groups import ungrouped
from providers.masking import scrubbed, url_secrets

from ..aio import asyncio_loop
from ..errors import NodeError

__all__ = ["ClusterUnavailable", "RedisLink", "describe_redis", "open_redis"]

CLOSE_TIMEOUT: Final = 5.0  # seconds closing the client may take
LISTEN_POLL: Final = 1.0  # seconds one wait for a pub/sub message lasts

_ERRORS: Final = (redis.exceptions.RedisError, OSError, TimeoutError)


class ClusterUnavailable(NodeError):
    """The cluster's Redis could not be reached or refused a command (the cause is chained)."""


def describe_redis(url: str) -> str:
    """``host:port/db`` of a Redis URL, without its password (nor any piece of it)."""
    try:
        parts = urlsplit(url)
        port = 6379 if parts.port is None else parts.port
        where = f"{parts.hostname or 'localhost'}:{port}{parts.path or '/0'}"
        return scrubbed(where, url_secrets(url))
    except ValueError:
        return "<a URL that is not a redis:// URL>"


class RedisLink:
    """One node's client of the cluster's Redis (see the module docstring)."""

    def __init__(self, client: Any, loop: Any, where: str, secrets: Sequence[str] = ()) -> None:
        self._client = client
        self._loop = loop
        self.where = where
        self._secrets = secrets  # of the URL (providers.masking.url_secrets): never in a message

    def _unavailable(
        self, what: str, exc: BaseException
    ) -> tuple[ClusterUnavailable, BaseException | None]:
        """The error for a failed ``what``, its text scrubbed of the URL's password,
        and its cause (``None`` where the cause's own words held a piece of it)."""
        text = f"{type(exc).__name__}: {exc}"
        clean = scrubbed(text, self._secrets)
        error = ClusterUnavailable(f"Redis at {self.where}: {what} failed: {clean}")
        return error, (exc if clean == text else None)

    def __repr__(self) -> str:
        return f"<RedisLink {self.where}>"

    def _aio(self, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        wrapped: Callable[..., Awaitable[Any]] = trio_asyncio.aio_as_trio(fn, loop=self._loop)
        return wrapped

    async def call(self, *args: Any) -> Any:
        """Run one Redis command.

        Raises:
            ClusterUnavailable: Redis did not answer in time, or refused.
        """
        try:
            return await self._aio(self._client.execute_command)(*args)
        except _ERRORS as exc:
            error, cause = self._unavailable(str(args[0]), exc)
            raise error from cause

    def script(self, source: str) -> Callable[[Sequence[str], Sequence[Any]], Awaitable[Any]]:
        """A Lua script, callable as ``await run(keys, args)``.

        Raises (when called):
            ClusterUnavailable: Redis did not answer in time, or refused.
        """
        registered = self._client.register_script(source)

        async def run(keys: Sequence[str], args: Sequence[Any]) -> Any:
            try:
                return await self._aio(registered)(keys=list(keys), args=list(args))
            except _ERRORS as exc:
                error, cause = self._unavailable("a script", exc)
                raise error from cause

        return run

    async def listen(
        self, channel: str, *, subscribed: trio.Event | None = None
    ) -> AsyncIterator[bytes]:
        """The messages published on ``channel``, until cancelled.

        A broken link ends nothing: it is reopened, and the caller (who also
        polls) misses at most what was published meanwhile.

        Args:
            channel: the channel.
            subscribed: set once the first subscription is in place (from then
                on nothing published is missed but across a broken link).
        """
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await self._aio(pubsub.subscribe)(channel)
                if subscribed is not None:
                    subscribed.set()
                while True:
                    message = await self._aio(pubsub.get_message)(
                        ignore_subscribe_messages=True, timeout=LISTEN_POLL
                    )
                    if message is not None and message.get("type") == "message":
                        yield message["data"]
            except _ERRORS:
                await trio.sleep(LISTEN_POLL)
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
                    with contextlib.suppress(*_ERRORS):
                        await self._aio(pubsub.aclose)()


@asynccontextmanager
async def open_redis(url: str, *, timeout: float) -> AsyncIterator[RedisLink]:  # noqa: ASYNC109
    """A client of the Redis at ``url`` for the block.

    An exception leaving the block comes out as it was raised, not wrapped
    in the exception group of trio-asyncio's loop.

    Args:
        url: ``redis://`` or ``rediss://``.
        timeout: seconds a connect or a command may take.

    Raises:
        ClusterUnavailable: Redis cannot be reached (checked with a PING).
    """
    async with ungrouped(_open_redis(url, timeout)) as link:
        yield link


@asynccontextmanager
async def _open_redis(url: str, timeout: float) -> AsyncIterator[RedisLink]:  # noqa: ASYNC109
    where = describe_redis(url)
    async with contextlib.AsyncExitStack() as stack:
        loop = await stack.enter_async_context(asyncio_loop())
        try:
            client = aioredis.Redis.from_url(
                url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry_on_timeout=False,
                retry=Retry(NoBackoff(), 0),
                health_check_interval=0,
            )
        except ValueError:
            # Not its words: they quote the URL ("Port could not be cast to integer
            # value as 'Tr0ub'" for a password with a bare ? # or /).
            raise ClusterUnavailable(
                f"cluster.redis_url is not usable ({where}): it could not be read (a "
                "password with ? # / @ or : in it must write them percent-encoded: %3F %23 "
                "%2F %40 %3A)"
            ) from None
        link = RedisLink(client, loop, where, url_secrets(url))

        async def close() -> None:
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
                with contextlib.suppress(*_ERRORS):
                    await link._aio(client.aclose)()

        stack.push_async_callback(close)
        try:
            await link.call("PING")
        except ClusterUnavailable as exc:
            cause = exc.__cause__ if exc.__cause__ is not None else exc
            raise ClusterUnavailable(
                f"could not reach the cluster's Redis at {where}: "
                f"{scrubbed(str(cause), link._secrets)}; "
                "check cluster.redis_url and that Redis is up"
            ) from None
        yield link
