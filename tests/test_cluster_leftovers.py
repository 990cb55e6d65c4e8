"""What the cluster's earlier fixes left behind: the webhook path, expiries, a parked send.

- A node thawed past its lease (SIGSTOP, a long pause) hands no webhook to
  the channel's old link: another node may run the channel by then. Sends
  already look at the tenure (``_live_connection``, ``_fly_at_once``); the
  link a webhook is handed (``ChannelRef.connection``: the ops app's
  targets, a forwarded webhook's owner, a webhook that found its channel
  come here) did not.

The channel tests run in virtual time; the Redis ones against a real Redis
(``SWITCHBOARD_TEST_REDIS``), each under a key prefix of its own, deleted
afterwards.
"""

from __future__ import annotations

import math
from typing import Any

import trio
import trio.testing

from actors.channel import Tenure
from providers.testing import FakeProvider
from runtime.view import WebhookTarget, links_of
from runtime.webhooks import deliver
from tests.support import CEILING
from tests.test_channel_actor import GENEROUS, open_channel

# --- a node thawed past its lease, and a webhook ---------------------------------------------


async def test_a_thawed_node_hands_no_webhook_to_a_link_its_lapsed_tenure_forbids(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A node frozen (SIGSTOP) past its lease thaws as a webhook for the channel
    arrives, before trio has delivered the tenure's cancel to the connection:
    the webhook must not be handed to that link (another node may run the
    channel by now; the platform is answered 503 and delivers again). Today
    the channel's handle gives the old link to whoever asks for it (the ops
    app's targets, a forwarded webhook's owner), without the tenure check
    that sends make."""
    provider = FakeProvider(limits=GENEROUS)
    tenure = Tenure(trio.current_time() + 5.0, token=3)
    fed: list[bytes] = []

    async def feed_webhook(headers: Any, body: bytes) -> int:
        fed.append(body)
        return 200

    with trio.fail_after(CEILING):
        async with open_channel(provider, tenure=tenure) as channel:
            conn = await provider.wait_connected(1)
            conn.feed_webhook = feed_webhook  # type: ignore[attr-defined]  # a webhook link
            target = WebhookTarget(channel_id="ch", options={}, channel=channel)
            assert target.connection is conn  # live, within its tenure
            mock_clock.jump(20.0)  # frozen past the tenure, thawed: no trio step since
            link = target.connection  # what the webhook path hands the request to
            if link is not None:
                await deliver("telegram", link, "POST", {}, {}, b"update")
            assert fed == []  # the old link took it today
            assert links_of([target]).live == []
            mock_clock.autojump_threshold = 0  # the stop's own waits run out (virtual time)
    mock_clock.autojump_threshold = math.inf
