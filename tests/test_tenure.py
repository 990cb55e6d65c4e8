"""A channel holds its connection only within its tenure (the cluster's lease), in virtual time."""

from __future__ import annotations

from typing import Any

import trio

from actors.channel import ChannelStatus, Tenure
from providers.testing import FakeProvider
from tests.support import CEILING
from tests.test_channel_actor import GENEROUS, open_channel


async def test_a_lapsed_tenure_drops_the_connection_without_a_goodbye_and_waits(
    autojump_clock: Any,
) -> None:
    provider = FakeProvider(limits=GENEROUS)
    tenure = Tenure(10.0, token=7)
    with trio.fail_after(CEILING):
        async with open_channel(provider, tenure=tenure) as channel:
            first = await provider.wait_connected(1)
            assert channel.statistics().status is ChannelStatus.CONNECTED
            await trio.sleep_until(10.0)
            await trio.testing.wait_all_tasks_blocked()
            assert first.closed
            assert first.closed_resumable is None  # dropped at the deadline: no close frame
            assert provider.connects == 1
            await trio.sleep(20.0)  # lapsed: it does not connect again by itself
            assert provider.connects == 1
            tenure.extend(trio.current_time() + 30.0)  # a renewal came through after all
            second = await provider.wait_connected(2)
            assert trio.current_time() == 30.0
            assert not second.closed
            assert channel.statistics().status is ChannelStatus.CONNECTED


async def test_a_revoked_tenure_cancels_the_connection_at_once(autojump_clock: Any) -> None:
    provider = FakeProvider(limits=GENEROUS)
    tenure = Tenure(3600.0)
    with trio.fail_after(CEILING):
        async with open_channel(provider, tenure=tenure):
            conn = await provider.wait_connected(1)
            await trio.sleep(1.0)
            tenure.revoke()
            await trio.testing.wait_all_tasks_blocked()
            assert conn.closed
            assert trio.current_time() == 1.0


async def test_a_channel_with_no_tenure_yet_waits_before_connecting(autojump_clock: Any) -> None:
    provider = FakeProvider(limits=GENEROUS)
    tenure = Tenure()  # acquired later
    with trio.fail_after(CEILING):
        async with open_channel(provider, tenure=tenure):
            await trio.sleep(5.0)
            assert provider.connects == 0
            tenure.extend(trio.current_time() + 10.0)
            await provider.wait_connected(1)
            assert provider.connect_times == [5.0]


async def test_a_revoked_tenure_stays_revoked_whatever_renewal_arrives(
    autojump_clock: Any,
) -> None:
    provider = FakeProvider(limits=GENEROUS)
    tenure = Tenure(60.0)
    with trio.fail_after(CEILING):
        async with open_channel(provider, tenure=tenure):
            conn = await provider.wait_connected(1)
            tenure.revoke()  # proven lost (a refused checkpoint, a renewal that said so)
            tenure.extend(trio.current_time() + 60.0)  # a renewal sent before that lands now
            assert tenure.revoked and not tenure.valid()
            await trio.sleep(30.0)
            assert conn.closed
            assert provider.connects == 1  # never again under this tenure
