"""Small defects an earlier fault run found, each with the test that shows it fixed:
a websocket receipt of an unknown status, a Discord Resume the gateway never
answers, the embedded API given arguments of the wrong type, a subscription of
the wrong filters or buffer, a text log line forged through an ``extra`` key, and
a channel credential that is no string.

Pure tests and virtual time (trio's autojump clock); no sockets.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from providers.base import DeliveryReceipt, ReceiptStatus
from providers.websocket.core import Emit, Fail, Phase, WebSocketCore

# --- 1. a websocket receipt of a status this node does not know ----------------------------


def ready_core() -> WebSocketCore:
    core = WebSocketCore(
        "ch", now=0.0, ping_interval=None, pong_timeout=5.0, liveness_timeout=None, send_timeout=8.0
    )
    core.frame_received('{"type":"ready"}', 0.0)
    return core


@pytest.mark.parametrize(
    "fields",
    [
        {"id": "o1", "status": "bounced", "peer": "p"},  # a status the server added
        {"id": "o1", "status": "bounced", "timestamp": 3},  # ... through the converter's path
        {"status": "bounced"},  # ... on a receipt this node could not place anyway
    ],
    ids=["plain", "converted", "without-id"],
)
def test_a_websocket_receipt_of_an_unknown_status_is_skipped_not_the_link_failed(
    fields: dict[str, Any],
) -> None:
    """A receipt whose status is a string this node does not know is skipped (and
    counted), and the link stays open: the next receipt is read. It failed the whole
    link as a protocol violation, so a server adding a status took every channel
    on it down at every receipt."""
    core = ready_core()
    actions = core.frame_received(json.dumps({"type": "receipt", **fields}), 1.0)
    assert not any(isinstance(action, Fail) for action in actions), actions
    assert actions == []
    assert core.phase is Phase.OPEN and core.ignored_frames == 1
    [known] = core.frame_received('{"type":"receipt","id":"o2","status":"read","peer":"p"}', 2.0)
    assert known == Emit(
        event=DeliveryReceipt(
            channel_id="ch", platform_message_id="o2", peer="p", status=ReceiptStatus.READ
        )
    )


def test_a_websocket_receipt_whose_status_is_no_string_still_fails_the_link() -> None:
    """A status of another type is a malformed frame, as before: the link fails (only
    a new status word is forward compatible)."""
    core = ready_core()
    actions = core.frame_received('{"type":"receipt","id":"o1","status":7}', 1.0)
    assert isinstance(actions[-1], Fail) and core.phase is Phase.FAILED
