"""The Discord provider against the in-process emulator, over real sockets on 127.0.0.1.

Real time (tiny heartbeat intervals): virtual time and real sockets do not mix.
Every test has a hard ceiling.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from providers import registry
from providers.base import (
    AuthenticationFailed,
    BadRecipient,
    Banned,
    ChannelConfig,
    Connection,
    ConnectionState,
    ConnectionStateChanged,
    Event,
    FatalError,
    InboundMessage,
    MissingPermissions,
    OutboundMessage,
    Provider,
    RateLimited,
    RateLimitScope,
    SessionState,
    TransientError,
)
from providers.discord import DiscordProvider
from providers.discord import shell as discord_shell
from providers.emulators.base import open_emulator
from providers.emulators.discord import DiscordEmulator
from tests.support import clock_window, control

INTERVAL = 0.2  # seconds between heartbeats in the emulator's Hello, where they matter
# Elsewhere no heartbeat falls within a test: a stalled machine cannot turn a
# late ACK into a zombie and a resume that the test's counts do not expect.
QUIET = 3600.0  # seconds
CEILING = 10.0  # seconds; only a hang gets near it


@pytest.fixture
def emulator() -> DiscordEmulator:
    return DiscordEmulator(heartbeat_interval=QUIET, message_bucket=(50, 1.0))


@pytest.fixture
async def base_url(emulator: DiscordEmulator) -> AsyncIterator[str]:
    async with open_emulator(emulator) as url:
        yield url


def provider() -> DiscordProvider:
    return DiscordProvider(rng=random.Random(1), invalid_session_delay=(0.01, 0.05))


def config(base_url: str, token: str = "tok") -> ChannelConfig:
    return ChannelConfig(
        channel_id="dc", provider="discord", credentials={"token": token}, base_url=base_url
    )


async def states(stream: AsyncIterator[Event], count: int) -> list[ConnectionStateChanged]:
    seen = []
    async for event in stream:
        assert isinstance(event, ConnectionStateChanged), event
        seen.append(event)
        if len(seen) == count:
            return seen
    raise AssertionError(f"events ended after {seen}")


def test_the_registry_names_these_classes() -> None:
    assert registry.load(registry.PROVIDERS, "discord") is DiscordProvider
    assert registry.load(registry.EMULATORS, "discord") is DiscordEmulator
    assert isinstance(DiscordProvider(), Provider)
    assert DiscordProvider.limits.max_text_length == 2000


async def test_connect_receive_and_send(base_url: str, emulator: DiscordEmulator) -> None:
    with trio.fail_after(CEILING):
        async with provider().open_connection(config(base_url)) as conn:
            assert isinstance(conn, Connection)
            assert "CONNECTED" in repr(conn)
            stream = conn.events()
            [ready] = await states(stream, 1)
            assert ready.state is ConnectionState.CONNECTED
            await control(base_url, "inject", {"channel_id": "123", "content": "hello bot"})
            inbound = await stream.__anext__()
            assert isinstance(inbound, InboundMessage)
            assert (inbound.peer, inbound.text, inbound.channel_id) == ("123", "hello bot", "dc")

            msg = OutboundMessage(
                peer="123", idempotency_key="k-1", text="hi!", reply_to=inbound.platform_message_id
            )
            result = await conn.send(msg)
            assert result.peer == "123"
            again = await conn.send(msg)  # a retry: the nonce de-duplicates it
            assert again.platform_message_id == result.platform_message_id
            [sent] = await control(base_url, "sent")
            assert sent["content"] == "hi!" and sent["nonce"] == "k-1"
            assert sent["message_reference"]["message_id"] == inbound.platform_message_id

            # The echo of our own message is ignored; the next event is the next inject.
            await control(base_url, "inject", {"channel_id": "123", "content": "second"})
            nxt = await stream.__anext__()
            assert isinstance(nxt, InboundMessage) and nxt.text == "second"
    assert emulator.stats["identify"] == 1 and emulator.stats["nonce_deduplicated"] == 1


async def test_resume_after_a_dropped_connection(base_url: str, emulator: DiscordEmulator) -> None:
    with trio.fail_after(CEILING):
        async with provider().open_connection(config(base_url)) as conn:
            stream = conn.events()
            await states(stream, 1)
            await control(base_url, "fault", {"kind": "drop"})
            lost, back = await states(stream, 2)
            assert lost.state is ConnectionState.DISCONNECTED
            assert back.state is ConnectionState.RESUMED
            await control(base_url, "inject", {"channel_id": "5", "content": "after"})
            assert isinstance(await stream.__anext__(), InboundMessage)
    assert emulator.stats["identify"] == 1
    assert emulator.stats["resume"] == 1
    assert emulator.stats["gateway_connections_resume"] == 1  # on resume_gateway_url


async def test_a_restarted_actor_resumes_with_the_saved_session(
    base_url: str, emulator: DiscordEmulator
) -> None:
    with trio.fail_after(CEILING):
        async with provider().open_connection(config(base_url)) as conn:
            await states(conn.events(), 1)
            await conn.close(resumable=True)
            saved = conn.session_state()
        assert saved.provider == "discord"
        assert {"session_id", "seq", "resume_gateway_url"} <= set(saved.data)
        # Missed while no socket was open: replayed on resume.
        await control(base_url, "inject", {"channel_id": "5", "content": "missed"})
        async with provider().open_connection(config(base_url), saved) as conn:
            stream = conn.events()
            replayed = await stream.__anext__()
            assert isinstance(replayed, InboundMessage) and replayed.text == "missed"
            [resumed] = await states(stream, 1)
            assert resumed.state is ConnectionState.RESUMED
    assert emulator.stats["identify"] == 1 and emulator.stats["resume"] == 1


async def test_a_resumable_close_completes_its_handshake_instead_of_timing_out(
    base_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway answers our close frame; close() waits for that answer, not its bound.

    A planned move closes the socket before it releases the lease; a close
    that sat out its timeout (2 s) kept the channel dark that long (issue 18).
    With the bound lifted, a close that does not complete is a hang.
    """
    monkeypatch.setattr(discord_shell, "CLOSE_TIMEOUT", 3600.0)
    with trio.fail_after(CEILING):
        async with provider().open_connection(config(base_url)) as conn:
            await states(conn.events(), 1)
            ws = conn._ws
            assert ws is not None
            await conn.close(resumable=True)
            assert ws.closed is not None
            assert ws.closed.code == 4000  # ours, answered: the session stays resumable
            assert conn.session_state().data


async def test_events_left_unread_are_replayed_by_the_next_connection(
    base_url: str, emulator: DiscordEmulator
) -> None:
    """A consumer held back (its store is down) loses nothing when the connection ends
    under it: the saved session resumes after the last event it took (issue 11)."""
    with trio.fail_after(CEILING):
        async with provider().open_connection(config(base_url)) as conn:
            stream = conn.events()
            await states(stream, 1)
            for n in range(3):
                await control(base_url, "inject", {"channel_id": "5", "content": f"m{n}"})
            first = await stream.__anext__()
            assert isinstance(first, InboundMessage) and first.text == "m0"
            for _ in range(100):  # m1 and m2 arrive in the buffer, unread
                if conn._receive_events.statistics().current_buffer_used >= 2:
                    break
                await trio.sleep(0.01)
            saved = conn.session_state()
            await conn.close(resumable=True)
        async with provider().open_connection(config(base_url), saved) as conn:
            stream = conn.events()
            texts = []
            while len(texts) < 2:
                event = await stream.__anext__()
                if isinstance(event, InboundMessage):
                    texts.append(event.text)
    assert texts == ["m1", "m2"]


async def test_a_normal_close_ends_the_session(base_url: str, emulator: DiscordEmulator) -> None:
    with trio.fail_after(CEILING):
        async with provider().open_connection(config(base_url)) as conn:
            await states(conn.events(), 1)
            await conn.close(resumable=False)
            assert conn.session_state() == SessionState(provider="discord", data={})
            with pytest.raises(trio.ClosedResourceError):
                await conn.send(OutboundMessage(peer="1", idempotency_key="k", text="x"))
    # hypercorn 0.18 reports every client close to the app as 1006, so the
    # emulator cannot check the 1000 itself; the core's unit tests do.


async def test_op7_reconnect_resumes(base_url: str, emulator: DiscordEmulator) -> None:
    with trio.fail_after(CEILING):
        async with provider().open_connection(config(base_url)) as conn:
            stream = conn.events()
            await states(stream, 1)
            await control(base_url, "fault", {"kind": "reconnect"})
            lost, back = await states(stream, 2)
            assert "op 7" in lost.detail and back.state is ConnectionState.RESUMED
    assert (emulator.stats["identify"], emulator.stats["resume"]) == (1, 1)


async def test_op9_not_resumable_identifies_anew(base_url: str, emulator: DiscordEmulator) -> None:
    with trio.fail_after(CEILING):
        async with provider().open_connection(config(base_url)) as conn:
            stream = conn.events()
            await states(stream, 1)
            first = conn.session_state().data["session_id"]
            await control(base_url, "fault", {"kind": "invalid_session", "resumable": False})
            lost, back = await states(stream, 2)
            assert "op 9" in lost.detail and back.state is ConnectionState.CONNECTED
            assert conn.session_state().data["session_id"] != first
    assert (emulator.stats["identify"], emulator.stats["resume"]) == (2, 0)


async def test_fatal_close_4004_raises_authentication_failed(base_url: str) -> None:
    with trio.fail_after(CEILING):
        async with provider().open_connection(config(base_url)) as conn:
            stream = conn.events()
            await states(stream, 1)
            await control(base_url, "fault", {"kind": "close", "code": 4004})
            with pytest.raises(AuthenticationFailed, match="4004"):
                await stream.__anext__()


async def test_a_banned_token_cannot_connect(base_url: str) -> None:
    await control(base_url, "fault", {"kind": "ban_token", "token": "tok"})
    with trio.fail_after(CEILING), pytest.raises(AuthenticationFailed):
        async with provider().open_connection(config(base_url)):
            pass


async def test_disallowed_intents_raise_missing_permissions() -> None:
    emulator = DiscordEmulator(heartbeat_interval=QUIET, allowed_privileged_intents=0)
    with trio.fail_after(CEILING):
        async with open_emulator(emulator) as url:
            with pytest.raises(MissingPermissions, match="4014"):
                async with provider().open_connection(config(url)):
                    pass


async def test_429_with_retry_after_raises_rate_limited(
    base_url: str, emulator: DiscordEmulator
) -> None:
    with trio.fail_after(CEILING):
        async with provider().open_connection(config(base_url)) as conn:
            await control(base_url, "fault", {"kind": "rate_limit", "duration": 3})
            until = emulator.rate_limited_until
            with clock_window() as window, pytest.raises(RateLimited) as info:
                await conn.send(OutboundMessage(peer="1", idempotency_key="k", text="x"))
            assert info.value.scope is RateLimitScope.GLOBAL
            # What was left of the 3 s when the emulator (same trio clock) answered.
            least, most = window.remaining(until)
            assert least <= info.value.retry_after <= most <= 3.0


async def test_429_without_headers_is_an_ip_block(base_url: str) -> None:
    with trio.fail_after(CEILING):
        async with provider().open_connection(config(base_url)) as conn:
            await control(base_url, "fault", {"kind": "ip_block", "duration": 5})
            with pytest.raises(Banned, match="without rate-limit headers"):
                await conn.send(OutboundMessage(peer="1", idempotency_key="k", text="x"))


async def test_an_unknown_channel_is_a_bad_recipient(base_url: str) -> None:
    with trio.fail_after(CEILING):
        async with provider().open_connection(config(base_url)) as conn:
            await control(base_url, "fault", {"kind": "delete_channel", "channel_id": "66"})
            with pytest.raises(BadRecipient):
                await conn.send(OutboundMessage(peer="66", idempotency_key="k", text="x"))


async def test_the_client_waits_for_an_exhausted_bucket_instead_of_a_429() -> None:
    emulator = DiscordEmulator(heartbeat_interval=QUIET, message_bucket=(2, 0.5))
    with trio.fail_after(CEILING):
        async with open_emulator(emulator) as url:
            async with provider().open_connection(config(url)) as conn:
                for i in range(3):
                    await conn.send(OutboundMessage(peer="9", idempotency_key=f"k{i}", text="x"))
    # The emulator's bucket runs on the same clock and refuses a third send
    # before its reset: no 429 means the client waited for the reset, however
    # long the machine took.
    assert emulator.stats["rest_429"] == 0 and emulator.stats["messages_sent"] == 3


async def test_withheld_acks_are_noticed_as_a_zombie() -> None:
    emulator = DiscordEmulator(heartbeat_interval=INTERVAL)
    with trio.fail_after(CEILING):
        async with (
            open_emulator(emulator) as base_url,
            provider().open_connection(config(base_url)) as conn,
        ):
            stream = conn.events()
            await states(stream, 1)
            await control(base_url, "fault", {"kind": "withhold_acks"})
            lost, back = await states(stream, 2)
            assert "zombie" in lost.detail
            assert back.state is ConnectionState.RESUMED
    # Noticed at the first heartbeat due after an unanswered one, counted in
    # heartbeats rather than seconds: exactly one went unanswered (the resumed
    # socket gets its ACKs again).
    assert emulator.stats["heartbeat_acks_withheld"] == 1
    assert emulator.stats["identify"] == 1 and emulator.stats["resume"] == 1


@pytest.mark.parametrize(
    "token", ["SECRET-T0KEN\n", "SECRET T0KEN", "SECRET-T0KEN\x00", "\ufeffSECRET-T0KEN"]
)
async def test_a_token_a_header_cannot_carry_is_refused_without_quoting_it(token: str) -> None:
    with pytest.raises(AuthenticationFailed, match="a request cannot carry") as info:
        async with provider().open_connection(config("http://127.0.0.1:9", token=token)):
            pass  # pragma: no cover - refused before anything connects
    assert "SECRET" not in str(info.value)


async def test_size_options_written_as_text_are_read_as_numbers(base_url: str) -> None:
    # The environment writes numbers as text (``"${env:MAX_BODY}"``): they were refused.
    def sized(options: dict[str, object]) -> ChannelConfig:
        return ChannelConfig(
            channel_id="dc",
            provider="discord",
            credentials={"token": "tok"},
            base_url=base_url,
            options=options,
        )

    with trio.fail_after(CEILING):
        roomy = sized({"max_body_bytes": "65536", "max_message_bytes": "65536"})
        async with provider().open_connection(roomy) as conn:
            [ready] = await states(conn.events(), 1)
            assert ready.state is ConnectionState.CONNECTED
        with pytest.raises(TransientError, match="larger than the limit of 16 bytes"):
            async with provider().open_connection(sized({"max_body_bytes": "16"})):
                raise AssertionError("the gateway's answer was read past 16 bytes")
        with pytest.raises(FatalError, match=r"options\.max_body_bytes is a string; expected"):
            async with provider().open_connection(sized({"max_body_bytes": "16 KiB"})):
                raise AssertionError("opened with a size that is not a number")


async def test_a_wss_gateway_socket_uses_the_process_s_one_tls_context(
    base_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # trio-websocket makes a default context per wss:// socket when given
    # none: 22-35 ms of CPU to load the trust store at every connect and
    # resume, and 0.8 MB held by each socket. Not the REST calls' context
    # either: httpcore sets its ALPN on every connection.
    import attrs

    from providers._http import shared_ssl_context
    from providers._tls import tls_context

    # Discord's answer names a wss:// gateway; the socket is then opened to
    # the emulator's ws:// one, with what the shell gave for TLS recorded.
    given: list[Any] = []
    interpret = discord_shell.interpret_gateway_bot
    connect = discord_shell.connect_websocket_url

    def wss_gateway(*args: Any) -> Any:
        gateway = interpret(*args)
        return attrs.evolve(gateway, url=gateway.url.replace("ws://", "wss://", 1))

    async def recorded(nursery: Any, url: str, ssl_context: Any = None, **kwargs: Any) -> Any:
        given.append((url.split(":", 1)[0], ssl_context))
        return await connect(nursery, url.replace("wss://", "ws://", 1), None, **kwargs)

    monkeypatch.setattr(discord_shell, "interpret_gateway_bot", wss_gateway)
    monkeypatch.setattr(discord_shell, "connect_websocket_url", recorded)
    with trio.fail_after(CEILING):
        async with provider().open_connection(config(base_url)) as conn:
            await states(conn.events(), 1)
    assert given and all(scheme == "wss" for scheme, _ in given)
    assert all(context is tls_context() for _, context in given)
    assert tls_context() is not shared_ssl_context()
