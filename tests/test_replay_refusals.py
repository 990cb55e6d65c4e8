"""Replayed dead letters and the refusals nobody hears, under attack.

A replay tells the channel each letter after writing their taking: whatever
refuses one (a key sent meanwhile to another peer, no connection, a stop)
must make it a letter again, even beside another letter of its key; a
replay larger than the mailbox's room keeps what it could not tell; the
sends an open breaker holds hear at once that the channel failed; and a
repeated JSON key is refused in every encoding JSON allows.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import trio
import trio.testing

from providers import bounded_json
from providers.base import BadRecipient, TransientError
from providers.testing import FakeProvider
from tests.support import CEILING
from tests.test_channel_actor import (
    DOWN_WAIT,
    GENEROUS,
    letters_and_no_link,
    open_channel,
    out,
)

# --- (c) a replay refused as nobody hears it: a letter again, "once per key" --------------


async def test_two_letters_of_one_key_replayed_while_down_both_stay_letters(
    autojump_clock: Any,
) -> None:
    # A caller sends key k to the wrong peer (refused: a dead letter), then
    # the same key to the right peer, which fails too: two letters of key k
    # (the channel allows it: k was never answered). The platform goes down
    # and the operator replays both. The one to b is refused at once (its
    # key is on its way to a: KeyReused, a letter again); the one to a waits
    # connect_wait and is refused too (ChannelUnavailable) -- but add_once
    # finds a letter of key k already there and drops it, while the log says
    # "it is in the dead-letter queue".
    async with letters_and_no_link(out(peer="a", key="k"), out(peer="b", key="k")) as (_, ch):
        assert len(await ch.dead_letters()) == 2
        assert await ch.replay_dead_letters() == 2
        await trio.sleep(DOWN_WAIT + 1.0)  # (virtual) the wait for a connection runs out
        letters = await ch.dead_letters()
    assert sorted(letter.message.peer for letter in letters) == ["a", "b"], letters


async def test_a_replay_of_one_letter_refused_while_another_of_its_key_waits_stays(
    autojump_clock: Any,
) -> None:
    # Two letters of key k (two texts); only the first is replayed (by id),
    # while the platform is down. Refused (ChannelUnavailable), nobody hears
    # it: it must be a letter again. add_once sees the other letter of k and
    # drops it.
    one_and_two = out("one", peer="a", key="k"), out("two", peer="a", key="k")
    async with letters_and_no_link(*one_and_two) as (_, ch):
        one, _two = await ch.dead_letters()
        assert await ch.replay_dead_letters([one.id]) == 1
        await trio.sleep(DOWN_WAIT + 1.0)  # (virtual) the wait for a connection runs out
        letters = await ch.dead_letters()
    assert sorted(letter.message.text for letter in letters) == ["one", "two"], letters


# --- bounded_json.loads(unique_keys=True) ---------------------------------------------------


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16", "utf-32"])
def test_a_repeated_key_in_utf16_or_utf32_is_refused(encoding: str) -> None:
    # json.loads takes UTF-16 and UTF-32 bytes (msgspec refuses them, and
    # parsed() falls back to json). _keys_spelt scans the bytes as UTF-8: a
    # character whose bytes are '"' ':' (U+3A22, '\u3a22') makes it count one
    # key that is not there, so it matches the keys held and the repeat passes.
    body = '{"peer":"\u3a22","peer":"b"}'.encode(encoding)
    assert bounded_json.loads(body) == {"peer": "b"}  # JSON, as the API reads it
    with pytest.raises(bounded_json.JSONDuplicateKey):
        bounded_json.loads(body, unique_keys=True)


# --- (b) sends the breaker holds ----------------------------------------------------------


async def test_sends_held_by_the_breaker_hear_a_channel_failed_by_its_trial_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Threshold 1, reset 10 s. p0 fails (the breaker opens at 0.3); p1 and p2
    # are held to 10.3, then one is the trial and the other waits for its
    # slot (retry_at 20.3). p1's answer is a fatal error: the channel fails.
    # Failing recorded nothing with the breaker and woke nobody it held.
    from actors import ChannelFailed
    from providers.base import AuthenticationFailed
    from tests.test_send_order import _outcome_of
    from tests.test_send_window import RoundTrip
    from tests.test_send_window import open_channel as open_window_channel
    from tests.test_send_window import out as wout

    provider = RoundTrip(
        scripts={"p0": [TransientError("x")], "p1": [AuthenticationFailed("revoked")]}
    )
    heard: dict[str, tuple[float, Any]] = {}

    async def ask(key: str, peer: str) -> None:
        result = await _outcome_of(channel.send(wout(peer, key), timeout=CEILING))
        heard[key] = (trio.current_time(), result)

    with trio.fail_after(CEILING * 2):
        async with open_window_channel(
            provider, window=8, send_attempts=1, breaker_threshold=1, breaker_reset=10.0
        ) as channel:
            await provider.wait_connected(1)
            await _outcome_of(channel.send(wout("p0", "k0")))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ask, "k1", "p1")
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(ask, "k2", "p2")
    # Whichever held send the half-open breaker let through first, the channel
    # failed by 10.9 s, and the one it held heard it then, not at 20.3 s.
    assert sorted(heard) == ["k1", "k2"]
    assert any(isinstance(result, ChannelFailed) for _, result in heard.values()), heard
    assert max(at for at, _ in heard.values()) <= 11.0, heard


# --- (c) a replay larger than the room its mailbox has ------------------------------------


class _SlowCheckpoints:
    """A checkpoint writer whose write takes a second (a store 1 s away)."""

    def __init__(self) -> None:
        self.writes = 0

    async def write_now(self, memory: Any) -> None:
        self.writes += 1
        await trio.sleep(1.0)


async def test_a_replay_killed_while_its_taking_is_written_keeps_its_letters(
    autojump_clock: Any,
) -> None:
    # The kill cut the write: the letters were out of the queue, in the memory
    # that outlives the restart, and were never put back.
    provider = FakeProvider(limits=GENEROUS)
    with trio.fail_after(CEILING):
        async with open_channel(provider) as channel:
            await provider.wait_connected(1)
            memory = channel.memory
            for key in ("d1", "d2"):
                memory.dead_letters.add(out(peer="p", key=key), BadRecipient("x"), 1)
            memory.checkpoints = _SlowCheckpoints()  # type: ignore[assignment]
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_outcome_of_replay, channel)
                await trio.sleep(0.5)  # the taking is being written
                channel.ref.kill()
            memory.checkpoints = None
            await provider.wait_connected(2)  # (restarted)
            letters = await channel.dead_letters()
    assert [letter.message.idempotency_key for letter in letters] == ["d1", "d2"]
    assert provider.sent == []


async def _outcome_of_replay(channel: Any) -> None:
    with contextlib.suppress(Exception):  # (the kill answers it: not what is read here)
        await channel.replay_dead_letters()


async def test_a_replay_past_the_mailboxs_room_loses_no_letter(autojump_clock: Any) -> None:
    # 10,000 letters (the queue's capacity) are replayed; the taking is
    # written (1 s), and meanwhile one send is queued behind the replay. The
    # replay then tells 10,000 Sends into a mailbox of 10,000 holding one:
    # tell raises MailboxFull at the last, the actor crashes, and the letter
    # not told is gone (its taking was written) -- not sent, not a letter.
    from actors.channel.state import DEFAULT_DEAD_LETTERS

    provider = FakeProvider(limits=GENEROUS)
    with trio.fail_after(10_000):
        async with open_channel(provider) as channel:
            await provider.wait_connected(1)
            memory = channel.memory
            for i in range(DEFAULT_DEAD_LETTERS):
                memory.dead_letters.add(out(peer="p", key=f"d{i}"), BadRecipient("x"), 1)
            memory.checkpoints = _SlowCheckpoints()  # type: ignore[assignment]
            replayed: list[Any] = []

            async def replay() -> None:
                try:
                    replayed.append(await channel.replay_dead_letters())
                except Exception as exc:
                    replayed.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(replay)
                await trio.sleep(0.5)  # the taking is being written
                nursery.start_soon(channel.send, out(peer="q", key="behind"))
            await trio.sleep(100.0)
            memory.checkpoints = None
            letters = await channel.dead_letters()
    sent = {m.idempotency_key for _, m in provider.sent if m.peer == "p"}
    lost = (
        {f"d{i}" for i in range(DEFAULT_DEAD_LETTERS)}
        - sent
        - {letter.message.idempotency_key for letter in letters}
    )
    assert lost == set(), (replayed, sorted(lost))


# --- 2. the undelivered handler and the node's last checkpoints (held, if they pass) -------


@pytest.mark.parametrize("how", ["stop", "restart"])
async def test_replays_a_stop_or_restart_cuts_off_are_letters_in_the_checkpoint(
    how: str, autojump_clock: trio.testing.MockClock
) -> None:
    from runtime import open_store
    from runtime.config import StorageConfig
    from tests.test_node_embedded import three_letters_replayed

    with trio.fail_after(CEILING):
        async with open_store(StorageConfig()) as store:
            async with three_letters_replayed(store) as (node, provider):
                await trio.sleep(0.5)
                if how == "stop":
                    await node.stop_channel("a")
                else:
                    await node.restart_channel("a")
                    letters = await node.channel("a").dead_letters()
                    assert [x.message.idempotency_key for x in letters] == ["d2", "d3"]
                stored = await store.load_checkpoint("a")
    assert stored is not None and stored.state is not None
    keys = [record.message.idempotency_key for record in stored.state.dead_letters]
    assert [m.idempotency_key for m in provider.sent] == ["d1"]
    assert keys == ["d2", "d3"], keys


async def test_a_utf16_body_naming_a_key_twice_answers_400_and_sends_nothing() -> None:
    # The message API reads a body in UTF-16 as JSON (json.loads detects it):
    # the same repeat as test_a_body_naming_a_key_twice_answers_400, sent in
    # UTF-16 with "\u3a22" five times in its text, is taken and sent to "b".
    from tests.test_hostile_input import API_TOKEN, BEARER, hostile_node, serving

    text = "\u3a22" * 5
    spelt = f'{{"peer": "a", "idempotency_key": "k1", "text": "{text}", "peer": "b"}}'
    body = spelt.encode("utf-16")
    node = hostile_node()
    with trio.fail_after(CEILING):
        async with serving(node, api_token=API_TOKEN) as (client, _):
            answer = await client.post("/v1/channels/tg-1/messages", content=body, headers=BEARER)
    assert answer.status_code == 400, (answer.status_code, answer.text, node.sent)
    assert node.sent == []
