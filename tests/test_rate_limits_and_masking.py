"""Rate limits, a platform's echo of a token, and another node's Overloaded: what holds.

- A WhatsApp token the Graph API echoes ("Malformed access token EAA...") is
  masked even where the error's quote of Meta's message cut it short: a real
  Meta token is about 200 characters, the quote keeps 200, and the whole
  token was never found, so most of it reached the sender, the channel's last
  error and the dead letter.
- A platform whose handshake passes and whose first call after it is refused
  with ``retry_after: 0`` (Telegram: getMe answers, the getUpdates poll is
  refused) is reconnected to at the pace of the reconnect backoff: the count
  of refusals went back to 0 at every link that opened, so it never grew.
- A rate limit spends no attempt of a send: each 429 was counted, so a send
  refused twice with 429 and then failing once was dead-lettered after a
  single transient failure with ``send_attempts = 3``.
- An ``Overloaded`` read off another node's answer whose ``retry_after`` is an
  integer no float holds (JSON carries one) is the longest wait, not an
  ``OverflowError`` out of ``error_from_wire``.

Virtual time throughout (trio's MockClock with autojump); no real sleeps.
"""

from __future__ import annotations

import json
import math
from typing import Final

import httpx
import pytest
import trio
import trio.testing

from providers.base import ChannelConfig, ProviderError, RateLimited, SendResult, TransientError
from providers.telegram import TelegramProvider
from providers.testing import FakeProvider
from providers.whatsapp import WhatsAppProvider
from runtime import Overloaded, open_node
from runtime.admission import MAX_RETRY_AFTER
from runtime.errors import error_from_wire, error_to_wire
from tests.support import CEILING, telegram_me
from tests.test_channel_actor import GENEROUS, open_channel, out, settings
from tests.test_http_send_faults import FAST, MESSAGE, TG_TOKEN, error_texts, tg_config

# A Meta system-user access token is about 200 characters: "EAA" and base62.
_ALPHABET: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
LONG_WA_TOKEN: Final = "EAAG" + "".join(_ALPHABET[(i * 7 + 3) % 62] for i in range(206))


def _long_token_config() -> ChannelConfig:
    return ChannelConfig(
        channel_id="wa",
        provider="whatsapp",
        credentials={"token": LONG_WA_TOKEN, "app_secret": "s", "verify_token": "v"},
        base_url="http://graph.test",
        options={"phone_number_id": "123", "verify_on_open": False},
    )


# --- 1. a real-length token the Graph API echoes is cut by the quoting, then not masked ---------


async def test_a_whatsapp_token_of_real_length_that_the_graph_api_echoes_is_masked(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """What must hold: a token the Graph API echoes ("Malformed access token
    EAA...") is in no part in the error a send raises (its message and the
    errors it came from), whatever the token's length.

    What goes wrong: ``GraphError.describe`` quotes Meta's message at most 200
    characters (``quoted``) and only then does the shell mask the token, by
    looking for it whole (``token in str(error)``). A Meta access token is
    about 200 characters, so the quoted message holds its first ~177
    characters and not the whole token: nothing is masked, and those
    characters of the credential go to the sender, the channel's last error,
    the dead letter in the store and the logs. (The module's own test uses a
    44-character token, which the quoting leaves whole.)
    """
    echoed = {
        "error": {
            "message": f"Malformed access token {LONG_WA_TOKEN}",
            "type": "OAuthException",
            "code": 190,
            "fbtrace_id": "AbC",
        }
    }

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json=echoed)

    provider = WhatsAppProvider(transport=httpx.MockTransport(answer))
    raised: BaseException | None = None
    with trio.fail_after(CEILING):
        try:
            async with provider.open_connection(_long_token_config()) as conn:
                await conn.send(MESSAGE)
        except ProviderError as exc:
            raised = exc
    assert raised is not None
    text = error_texts(raised)
    assert "Malformed access token" in text  # Meta's words are still told
    leaked = [
        LONG_WA_TOKEN[i : i + 24]
        for i in range(0, len(LONG_WA_TOKEN) - 24, 8)
        if LONG_WA_TOKEN[i : i + 24] in text
    ]
    assert not leaked, f"{len(leaked)} pieces of the token in the error: {text[:300]!r}"


# --- 2. a link refused with 429 and no wait right after each connect: a storm ------------------


async def test_a_telegram_poll_refused_again_and_again_with_no_wait_backs_off(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What must hold: a Telegram channel whose long poll the Bot API refuses
    again and again with 429 and ``retry_after: 0`` reconnects at the pace of
    its reconnect backoff after the first refusals, as the change promises for
    a platform that "keeps answering 429 with no wait" (d58d037).

    What goes wrong: the refusals are counted (``_rate_limited``) only between
    connections, and the count is reset when a connection opens. Telegram's
    connect is getMe, which succeeds; the refusal comes from the getUpdates
    right after it, so every refusal is "the first after a connection" and is
    waited exactly: no wait at all. The channel calls getMe and getUpdates
    back to back for as long as the Bot API refuses it (here every one of the
    refused polls at the same virtual instant), the reconnect storm against
    a platform that asked it to slow down.
    """
    refusals = 8
    polled_at: list[float] = []
    held = trio.Event()  # the poll after the refusals has begun

    async def answer(request: httpx.Request) -> httpx.Response:
        method = request.url.path.rsplit("/", 1)[-1]
        body = json.loads(request.content or b"{}")
        if method == "getMe":
            return telegram_me()
        if method == "getUpdates":
            polled_at.append(trio.current_time())
            if len(polled_at) <= refusals:
                refused = {
                    "ok": False,
                    "error_code": 429,
                    "description": "Too Many Requests: retry after 0",
                    "parameters": {"retry_after": 0},
                }
                return httpx.Response(429, json=refused)
            held.set()
            await trio.sleep(body.get("timeout", 0))  # (virtual) a long poll, held
            return httpx.Response(200, json={"ok": True, "result": []})
        return httpx.Response(404, json={"ok": False, "error_code": 404})

    monkeypatch.setenv("H2_TG_TOKEN", TG_TOKEN)
    provider = TelegramProvider(transport=httpx.MockTransport(answer))
    with trio.fail_after(CEILING):
        async with open_node(tg_config(), channel_defaults=FAST, providers={"telegram": provider}):
            await held.wait()  # each refusal, then the poll that holds
    # Reconnect backoff 0.05 s, capped at 0.2 s: refused eight times in a row, the
    # channel waited some of it between the refusals after the first.
    assert polled_at[refusals - 1] > polled_at[0], (
        f"all {refusals} refused polls at t={polled_at[0]}: reconnected at once each time"
    )


# --- 3. a rate limit spends an attempt of the send ----------------------------------------------


async def test_rate_limits_spend_no_attempt_of_a_send(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """What must hold: "a rate limit still spends no attempt and is never
    dead-lettered" (9fafb63, and the overload tests' docstring): a send refused
    twice with 429, then failing once transiently, is tried again and
    delivered when ``send_attempts = 3``.

    What goes wrong: ``_send`` counts every call to the platform as an attempt
    (``attempts += 1`` before ``perform``), 429s included, and ``decide`` dead-
    letters a transient failure once ``attempts >= send_attempts``: the
    message is dead-lettered (``SendFailed``) after its first transient
    failure. A channel that the platform rate-limits, which is when transient
    failures come too, loses its messages to the dead-letter queue early.
    (The counting predates the change, which states the opposite; the floor
    ``decide`` now puts under a 429's wait is read off the same count, so it
    also grows with the transient failures before it.)
    """
    provider = FakeProvider(
        limits=GENEROUS,
        send_script=[
            RateLimited("429", retry_after=0.0),
            RateLimited("429", retry_after=0.0),
            TransientError("502"),
            None,
        ],
    )
    with trio.fail_after(CEILING * 10):
        async with open_channel(provider, channel_settings=settings(send_attempts=3)) as channel:
            await provider.wait_connected(1)
            try:
                result: object = await channel.send(out(), timeout=math.inf)
            except Exception as exc:
                result = exc
            dead = channel.statistics().dead_letters
    assert isinstance(result, SendResult), repr(result)
    assert dead == 0
    assert len(provider.send_attempts) == 4


# --- 4. an Overloaded whose retry_after is an integer past any float ---------------------------


def test_an_overloaded_whose_retry_after_no_float_holds_is_read_as_the_longest_wait() -> None:
    """What must hold: ``error_from_wire`` answers an ``Overloaded`` whose
    ``retry_after`` is whole seconds within the node's bounds whatever the wire
    held: an integer past any float (JSON allows one: ``1`` and 400 zeros) is
    read as ``MAX_RETRY_AFTER``, as ``1e300`` is.

    What goes wrong: the sanitizer calls ``math.isnan`` on it, which converts
    it to a float and raises ``OverflowError``: the forwarded send's caller
    gets an ``OverflowError`` out of the cluster's forwarding (a 500 from the
    message API) instead of the owner's ``Overloaded`` and a 503 with a sane
    ``Retry-After``.
    """
    wire = error_to_wire(Overloaded("full", channel_id="a", idempotency_key="k"))
    wire = json.loads(json.dumps(wire).replace('"retry_after": 1', '"retry_after": 1' + "0" * 400))
    assert type(wire["retry_after"]) is int and wire["retry_after"] > 10**399
    error = error_from_wire(wire)
    assert isinstance(error, Overloaded)
    assert error.retry_after == MAX_RETRY_AFTER
