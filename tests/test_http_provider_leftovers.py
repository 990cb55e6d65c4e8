"""Leftovers of the HTTP providers' fault run (Telegram, WhatsApp): each test is a
defect an earlier run found and left.

A Graph API answer whose message id is not a string, a 503 whose ``Retry-After``
was not waited, a ``Retry-After`` given as an HTTP date, and a Telegram 5xx page
that echoes the bot's token. Pure tests of the sans-IO cores, and the shells and
the node against a scripted ``httpx`` transport on trio's virtual clock: no
sockets, no real sleeps.
"""

from __future__ import annotations

from typing import Any, Final

import httpx
import pytest
import trio
import trio.testing

from providers.base import (
    TransientError,
)
from providers.whatsapp import core as whatsapp_core

from .support import CEILING
from .test_http_send_faults import (
    MESSAGE,
    wa_node,
)

MAINTENANCE: Final = 20.0  # seconds a 503's Retry-After asks for
PAST: Final = "Wed, 21 Oct 2015 07:28:00 GMT"  # RFC 9110's own example
FAR_FUTURE: Final = "Fri, 01 Jan 2100 00:00:00 GMT"


def wa_answer(posts: list[float], *, first: httpx.Response | None = None, body: Any = None) -> Any:
    """A Graph API whose first message post is answered ``first`` (if given) and the
    rest ``body`` (a message id by default); when each post came is in ``posts``."""

    def answer(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json={"id": "123"})
        posts.append(trio.current_time())
        if first is not None and len(posts) == 1:
            return first
        return httpx.Response(200, json=body or {"messages": [{"id": "wamid.1"}]})

    return answer


# --- 1. a WhatsApp message id that is JSON null (or no string) ----------------------------


@pytest.mark.parametrize("message_id", [None, 5, {"id": "wamid.1"}], ids=["null", "int", "object"])
async def test_an_accepted_whatsapp_send_whose_id_is_not_a_string_is_delivered_once(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch, message_id: Any
) -> None:
    """A 2xx of the Graph API's own whose ``messages[0].id`` is JSON ``null`` (or a
    number, an object) has no readable id: it is answered with no message id
    (``""``) and not sent again, as one without the id is. The converter read
    ``null`` as the id ``"None"`` (and ``5`` as ``"5"``): the sender kept an id
    WhatsApp never gave, and an edit, a reaction or a reply to it named it."""
    posts: list[float] = []
    body = {"messaging_product": "whatsapp", "messages": [{"id": message_id}]}
    with trio.fail_after(CEILING):
        async with wa_node(wa_answer(posts, body=body), monkeypatch) as node:
            result = await node.send("wa", MESSAGE)
    assert len(posts) == 1
    assert result.platform_message_id == "" and result.peer == MESSAGE.peer


def test_a_whatsapp_upload_answered_with_a_null_id_is_not_the_id_none() -> None:
    """An upload answered ``{"id": null}`` has no media id: a ``TransientError``,
    as one without the id. It was the media id ``"None"``, which the message then
    carried, and Meta refused it as an unknown media (a permanent refusal)."""
    with pytest.raises(TransientError):
        whatsapp_core.parse_media_response(200, {}, b'{"id": null}', peer="42")
