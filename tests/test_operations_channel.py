"""Operations beyond send take the channel's send path, in virtual time.

Edits, deletes, typing, read marks and reactions pass the same rate
limiters, retries, circuit breaker and dead letters as messages: a
transient failure is retried with the same key, a 429 waited out exactly, a
message the platform no longer has is dead-lettered at once (never retried),
and an operation the provider lacks is refused with ``Unsupported`` before
any budget is spent.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from actors import SendFailed
from providers.base import (
    Media,
    MediaKind,
    MediaTooLarge,
    MessageNotFound,
    MessageTooLong,
    OutboundMessage,
    PlatformLimits,
    RateLimited,
    SendResult,
    TransientError,
    Unsupported,
)
from providers.operations import (
    SEND_ONLY,
    DeleteMessage,
    EditMessage,
    MarkRead,
    OperationKind,
    React,
    SendTyping,
    check_supported,
    operation_kind,
)
from providers.testing import FakeProvider
from tests.support import CEILING
from tests.test_channel_actor import GENEROUS, open_channel, settings

ONE_PER_SECOND = PlatformLimits(
    per_channel_rate=1.0,
    per_channel_burst=1,
    per_peer_rate=1.0,
    per_peer_burst=1,
    max_text_length=10,
    max_upload_bytes=5,
)


def test_kinds_and_support() -> None:
    upload = OutboundMessage(
        peer="p", idempotency_key="u", media=Media(kind=MediaKind.IMAGE, content=b"x")
    )
    by_url = OutboundMessage(
        peer="p", idempotency_key="l", media=Media(kind=MediaKind.IMAGE, url="https://x/y.png")
    )
    assert operation_kind(upload) is OperationKind.UPLOAD
    assert operation_kind(by_url) is OperationKind.SEND
    assert operation_kind(React(peer="p", message_id="m", emoji="👍")) is OperationKind.REACT
    old = FakeProvider(operations=SEND_ONLY)
    check_supported(old, by_url)  # sending is always there
    with pytest.raises(Unsupported) as info:
        check_supported(old, upload)
    assert (info.value.operation, info.value.provider) == ("upload", "fake")
    with pytest.raises(ValueError, match="exactly one of url, content or path"):
        Media(kind=MediaKind.IMAGE, url="https://x", content=b"x")


async def test_every_operation_reaches_the_provider_in_order(autojump_clock: Any) -> None:
    provider = FakeProvider(limits=GENEROUS)
    with trio.fail_after(CEILING):
        async with open_channel(provider) as channel:
            await provider.wait_connected(1)
            edited = await channel.perform(EditMessage(peer="p1", message_id="m1", text="new"))
            assert isinstance(edited, SendResult)
            for op in (
                DeleteMessage(peer="p1", message_id="m1"),
                SendTyping(peer="p1"),
                MarkRead(peer="p1", message_id="m0"),
                React(peer="p1", message_id="m0", emoji="👍"),
            ):
                assert await channel.perform(op) is None
            kinds = [type(op).__name__ for _, op in provider.sent]
            assert kinds == ["EditMessage", "DeleteMessage", "SendTyping", "MarkRead", "React"]
            assert channel.statistics().sent == 0  # counts messages, not operations


async def test_operations_share_the_rate_limiter_with_sends(autojump_clock: Any) -> None:
    provider = FakeProvider(limits=ONE_PER_SECOND)
    with trio.fail_after(CEILING):
        async with open_channel(provider) as channel:
            await provider.wait_connected(1)
            start = trio.current_time()
            await channel.send(OutboundMessage(peer="p1", idempotency_key="s", text="hi"))
            await channel.perform(SendTyping(peer="p1"))
            await channel.perform(EditMessage(peer="p1", message_id="m1", text="x"))
            times = [t - start for t, _ in provider.sent]
            assert times == pytest.approx(
                [0.0, 1.0, 2.0], abs=1e-5
            )  # one per second, whatever the op
            assert channel.statistics().rate_limit_waits >= 2


async def test_transient_failures_retry_with_the_same_key_and_a_429_is_waited_out(
    autojump_clock: Any,
) -> None:
    provider = FakeProvider(
        limits=GENEROUS,
        send_script=[TransientError("flaky"), RateLimited("slow down", retry_after=7.0)],
    )
    with trio.fail_after(CEILING):
        async with open_channel(provider) as channel:
            await provider.wait_connected(1)
            start = trio.current_time()
            op = React(peer="p1", message_id="m1", emoji="👍", idempotency_key="r-1")
            assert await channel.perform(op) is None
            attempts = [(t - start, o.idempotency_key) for t, o in provider.send_attempts]
            # 1 s send backoff after the transient failure, then exactly the 429's 7 s.
            assert attempts == [(0.0, "r-1"), (1.0, "r-1"), (8.0, "r-1")]
            assert await channel.dead_letters() == []


async def test_a_message_that_is_gone_is_dead_lettered_at_once(autojump_clock: Any) -> None:
    provider = FakeProvider(limits=GENEROUS, send_script=[MessageNotFound("gone", peer="p1")])
    with trio.fail_after(CEILING):
        async with open_channel(provider, channel_settings=settings(send_attempts=5)) as channel:
            await provider.wait_connected(1)
            op = DeleteMessage(peer="p1", message_id="m9", idempotency_key="del-1")
            with pytest.raises(MessageNotFound):
                await channel.perform(op)
            assert len(provider.send_attempts) == 1  # not a retry loop
            [letter] = await channel.dead_letters()
            assert (letter.message, letter.error_type, letter.attempts) == (
                op,
                "MessageNotFound",
                1,
            )


async def test_exhausted_retries_dead_letter_an_operation_and_replay_sends_it(
    autojump_clock: Any,
) -> None:
    provider = FakeProvider(limits=GENEROUS, send_script=[TransientError("down")] * 3)
    with trio.fail_after(CEILING):
        async with open_channel(provider, channel_settings=settings(send_attempts=3)) as channel:
            await provider.wait_connected(1)
            op = EditMessage(peer="p1", message_id="m1", text="v2", idempotency_key="e-1")
            with pytest.raises(SendFailed):
                await channel.perform(op)
            [letter] = await channel.dead_letters()
            assert letter.message == op
            assert await channel.replay_dead_letters() == 1
            await trio.sleep(5.0)
            assert provider.sent[-1][1] == op
            assert await channel.dead_letters() == []


async def test_unsupported_and_oversized_are_refused_before_any_budget(
    autojump_clock: Any,
) -> None:
    provider = FakeProvider(
        limits=ONE_PER_SECOND,
        operations={OperationKind.SEND, OperationKind.UPLOAD, OperationKind.TYPING},
    )
    with trio.fail_after(CEILING):
        async with open_channel(provider) as channel:
            await provider.wait_connected(1)
            with pytest.raises(Unsupported, match="fake has no edit operation"):
                await channel.perform(EditMessage(peer="p1", message_id="m1", text="x"))
            with pytest.raises(Unsupported):
                await channel.perform(MarkRead(peer="p1", message_id="m1"))
            big = Media(kind=MediaKind.DOCUMENT, content=b"123456")
            with pytest.raises(MediaTooLarge):
                await channel.send(OutboundMessage(peer="p1", idempotency_key="b", media=big))
            provider.operations = frozenset(OperationKind)
            with pytest.raises(MessageTooLong):
                await channel.perform(EditMessage(peer="p1", message_id="m1", text="x" * 11))
            start = trio.current_time()
            await channel.perform(SendTyping(peer="p1"))  # the budget is untouched
            assert trio.current_time() == start
            assert provider.send_attempts[0][1] == SendTyping(
                peer="p1", idempotency_key=provider.send_attempts[0][1].idempotency_key
            )
            assert len(provider.send_attempts) == 1
            assert await channel.dead_letters() == []  # refusals are not dead letters
