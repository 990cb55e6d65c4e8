"""A half-open breaker's trial slots given back only to their own round, and
connection URLs whose password, written without its escapes, the parser read
as a host or a port: no piece of it in where the URL points or in an error.
"""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from actors.backoff import ExponentialBackoff
from providers.base import TransientError
from providers.testing import FakeProvider, SendDelay
from tests.support import CEILING
from tests.test_channel_actor import GENEROUS, open_channel, out, settings
from tests.test_send_order import _outcome_of

# --- a trial slot given back to its own round ----------------------------------------------


async def test_a_stale_trial_gives_back_the_next_rounds_slot_two_trials_go(
    autojump_clock: Any,
) -> None:
    # Threshold 1, reset 10 s, connect_wait 12 s. k0 fails at 0: OPEN to 10.
    # The link is down. At 10, X takes the trial slot (its round ends at 20)
    # and waits for a connection. At 20 its slot is reclaimed and Y takes the
    # new round's slot; Z waits (to 30, or an outcome). At 22 X's connect_wait
    # runs out: breaker.release() frees *Y's* slot, and Z takes a second trial.
    # The link comes back at ~23: two trial calls go to a half-open platform
    # at once (half_open_max_calls=1) where one was due.
    provider = FakeProvider(limits=GENEROUS, send_script=[TransientError("x"), SendDelay(5.0)])
    chosen = settings(
        connect_wait=12.0,
        breaker_threshold=1,
        breaker_reset=10.0,
        send_attempts=1,
        reconnect=ExponentialBackoff(base=1.0, cap=1.0),
    )
    with trio.fail_after(CEILING * 20):
        async with open_channel(provider, channel_settings=chosen) as channel:
            first = await provider.wait_connected(1)
            await _outcome_of(channel.send(out(peer="p0", key="k0")))
            provider.connect_script.extend([TransientError("down")] * 10_000)
            first.drop()
            await trio.sleep(0.5)
            async with trio.open_nursery() as nursery:
                for n in (1, 2, 3):
                    nursery.start_soon(
                        _outcome_of, channel.send(out(peer=f"p{n}", key=f"k{n}"), timeout=200.0)
                    )
                    await trio.testing.wait_all_tasks_blocked()
                await trio.sleep_until(22.5)
                provider.connect_script.clear()  # the link comes back at ~23
                await trio.sleep_until(27.0)
                early = [at for at, msg in provider.send_attempts if at > 1.0]
                nursery.cancel_scope.cancel()
    # One trial at a time: the second send waits for the first's outcome (at ~28).
    assert len(early) == 1, early


# --- a piece of the password reaches "where" a URL points, lowercased ---------------------


def test_describe_dsn_hides_a_password_piece_the_parser_lowercased_as_host() -> None:
    # Password "AB@CDEF/ghi" written bare: urlsplit finds host "CDEF" and
    # lowercases it; the scrub is case-sensitive, so "cdef" (a piece of the
    # password, >= 3 characters) is in every store message ("at cdef:5432/...").
    from runtime.store.postgres import describe_dsn

    where, _secrets = describe_dsn("postgresql://u:AB@CDEF/ghi@db.example.com/app")
    assert "cdef" not in where.lower(), where


def test_describe_redis_hides_a_password_piece_the_parser_lowercased_as_host() -> None:
    from runtime.cluster.redis import describe_redis

    where = describe_redis("redis://:AB@CDEF/ghi@redis.example.com:6379/0")
    assert "cdef" not in where.lower(), where


# --- held (passes): a send cut by a lost lease's stop hears ChannelUnavailable -------------


async def test_open_redis_error_holds_no_password_piece_the_parser_lowercased() -> None:
    # The same URL on connecting: redis-py connects to host "cdef" (lowercased
    # by urlparse) and says so; the scrub misses it, and the cause is chained.
    import pytest

    from runtime.cluster.redis import ClusterUnavailable, open_redis
    from runtime.run import describe

    with trio.fail_after(30), pytest.raises(ClusterUnavailable) as caught:
        async with open_redis("redis://:AB@CDEF/ghi@127.0.0.1:6379/0", timeout=2.0):
            pass
    text = describe(caught.value)
    assert "cdef" not in text.lower(), text


def test_describe_dsn_hides_a_password_piece_before_a_colon_the_parser_took_for_a_port() -> None:
    # Password "ab@cdefgh:0099/ijk" written bare: the parser finds host
    # "cdefgh", port 99 (from "0099"). The pieces are split on ? # / @ only:
    # "cdefgh:0099" is one piece, and "cdefgh:99" matches nothing: the
    # password's "cdefgh" is in every store message. (No upper case needed.)
    from runtime.cluster.redis import describe_redis
    from runtime.store.postgres import describe_dsn

    where, _ = describe_dsn("postgresql://u:ab@cdefgh:0099/ijk@db.example.com/app")
    assert "cdefgh" not in where, where
    where = describe_redis("redis://:ab@cdefgh:0099/ijk@redis.example.com:6379/0")
    assert "cdefgh" not in where, where
