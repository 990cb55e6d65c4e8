"""The platforms' own client libraries against the emulators.

The requirement is that the emulators are faithful enough for the libraries
people actually use: python-telegram-bot (v21+) and aiogram (v3) for
Telegram, discord.py (v2) and hikari (v2) for Discord, pywa (v4) for
WhatsApp. Each is run unchanged except for its base URL, and exercises login,
receive, reply, edit, delete, typing, media upload, a 429 waited out, a
resume after a server close (or the platform's analog) and the error mapping
of a banned token. Both are
asyncio libraries, so each check is a small asyncio script run in a
subprocess against an emulator served in-process by this test's trio loop.
The script drives the scenario (it must wait for its own client to be ready
before injecting), prints ``CHECK <name>`` per step and a final ``RESULT
<json>``; the test asserts on both and on the emulator's own state.

Which interpreter runs the scripts: ``$SWITCHBOARD_COMPAT_PYTHON`` when set
(a separate virtualenv keeps the project's clean), else this interpreter if
it can import both libraries; otherwise the module is skipped.

Real time and real sockets (the libraries have their own clocks): emulators
use tiny intervals, and every test has a hard ceiling.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import textwrap
from typing import Any, Final

import trio

from providers.emulators.base import open_emulator
from providers.emulators.discord import DiscordEmulator
from providers.emulators.discord.model import token_for
from providers.emulators.telegram import TelegramEmulator
from providers.emulators.whatsapp import WhatsAppEmulator, bsuid_for


def _compat_python() -> str:
    """The interpreter that runs the platforms' own libraries (this one by default).

    Both libraries are in the ``test`` extra, so a missing one is a broken
    set-up, reported as a failure rather than skipped.
    """
    configured = os.environ.get("SWITCHBOARD_COMPAT_PYTHON")
    if configured:
        return configured
    missing = [
        name
        for name in ("telegram", "discord", "aiogram", "hikari", "pywa")
        if importlib.util.find_spec(name) is None
    ]
    assert not missing, (
        f"{missing} not installed: pip install -e '.[test]' installs python-telegram-bot, "
        "aiogram, discord.py, hikari and pywa"
    )
    return sys.executable


PYTHON: Final = _compat_python()
CEILING: Final = 45.0  # seconds; a run takes a few, only a hang gets near it
# The longer scenarios (importing aiogram or hikari alone takes seconds on a loaded
# machine, and a poller backs off through an outage) get more room; still a hang guard.
LONG_CEILING: Final = 120.0  # seconds
SCRIPT_TIMEOUT: Final = 10.0  # seconds any single await inside a script may take


async def run_script(script: str, *args: str) -> tuple[list[str], dict[str, Any]]:
    """Run ``script`` with the compat interpreter; its CHECK names and RESULT."""
    prelude = f"STEP_TIMEOUT = {SCRIPT_TIMEOUT!r}\n"
    done = await trio.run_process(
        [PYTHON, "-c", prelude + textwrap.dedent(script), *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    out, err = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 0, f"the script failed ({done.returncode}):\n{out}\n{err}"
    lines = out.splitlines()
    checks = [line.split(" ", 1)[1] for line in lines if line.startswith("CHECK ")]
    results = [line.split(" ", 1)[1] for line in lines if line.startswith("RESULT ")]
    assert len(results) == 1, f"no RESULT line:\n{out}\n{err}"
    return checks, json.loads(results[0])


# --- Telegram: python-telegram-bot ---------------------------------------------------------

TOKEN: Final = "123456:" + "A" * 35

TELEGRAM_BOT_API = """
import asyncio, json, sys
import httpx
from telegram import Bot, ReplyParameters
from telegram.constants import ParseMode

base, token = sys.argv[1], sys.argv[2]

async def inject(**body):
    async with httpx.AsyncClient() as client:
        response = await client.post(base + "/_emulator/inject", json=body)
        response.raise_for_status()

async def stats():
    async with httpx.AsyncClient() as client:
        response = await client.get(base + "/_emulator/stats")
        response.raise_for_status()
        return response.json()

async def main():
    async with Bot(token, base_url=base + "/bot") as bot:
        me = await bot.get_me()
        assert me.id == 123456 and me.is_bot and me.username, me
        print("CHECK get_me")

        await inject(chat_id=42, text="question", token=token)
        updates = await bot.get_updates(timeout=5)
        assert [u.message.text for u in updates] == ["question"], updates
        question = updates[0].message
        assert question.chat.id == 42 and question.from_user.id == 42
        print("CHECK get_updates")
        assert await bot.get_updates(offset=updates[-1].update_id + 1, timeout=0) == ()
        print("CHECK offset confirms")

        hello = await bot.send_message(42, "<b>hi</b>", parse_mode=ParseMode.HTML)
        assert hello.chat.id == 42 and hello.from_user.id == me.id, hello
        print("CHECK send_message")
        reply = await bot.send_message(
            42, "answer", reply_parameters=ReplyParameters(question.message_id)
        )
        assert reply.reply_to_message.message_id == question.message_id
        assert reply.reply_to_message.text == "question", reply.reply_to_message
        print("CHECK reply")
        photo = await bot.send_photo(43, "https://cdn.example/cat.jpg", caption="cat")
        assert photo.photo and photo.caption == "cat", photo
        print("CHECK send_photo")

        async def later():
            # Once the emulator holds the poll (an event, not a guess at a delay).
            while (await stats()).get("polls_held", 0) < 1:
                await asyncio.sleep(0.01)
            await inject(chat_id=-1001, text="/start@emu123456_bot go", from_id=7, token=token)

        poll = asyncio.create_task(
            bot.get_updates(offset=updates[-1].update_id + 1, timeout=5)
        )
        await asyncio.wait_for(later(), STEP_TIMEOUT)
        held = await asyncio.wait_for(poll, STEP_TIMEOUT)
        command = held[0].message
        assert command.chat.type == "supergroup" and command.from_user.id == 7
        assert command.parse_entities() != {}, command
        assert [e.type for e in command.entities] == ["bot_command"], command.entities
        print("CHECK long poll")
        await bot.get_updates(offset=held[-1].update_id + 1, timeout=0)
    print("RESULT " + json.dumps({"hello_id": hello.message_id}))

asyncio.run(main())
"""


async def test_python_telegram_bot_calls() -> None:
    emulator = TelegramEmulator(chat_interval=0.0)  # several sends to one chat in a row
    with trio.fail_after(CEILING):
        async with open_emulator(emulator) as url:
            checks, result = await run_script(TELEGRAM_BOT_API, url, TOKEN)
    assert checks == [
        "get_me",
        "get_updates",
        "offset confirms",
        "send_message",
        "reply",
        "send_photo",
        "long poll",
    ]
    assert [(s["method"], s["chat_id"]) for s in emulator.sent] == [
        ("sendMessage", 42),
        ("sendMessage", 42),
        ("sendPhoto", 43),
    ]
    assert emulator.sent[0]["parse_mode"] == "HTML"  # passed through as sent
    assert emulator.sent[0]["message_id"] == result["hello_id"]
    assert emulator.sent[1]["reply_to_message_id"] == 1
    assert emulator.sent[2]["media"] == "https://cdn.example/cat.jpg"
    assert emulator.bots[TOKEN].updates == []
    assert emulator.stats["polls_held"] == 1  # the long poll waited for the command


TELEGRAM_ERRORS = """
import asyncio, json, sys
import httpx
from telegram import Bot
from telegram.error import BadRequest, Forbidden, InvalidToken, RetryAfter

base, token = sys.argv[1], sys.argv[2]
banned = "654321:" + "B" * 35

async def fault(**body):
    async with httpx.AsyncClient() as client:
        response = await client.post(base + "/_emulator/fault", json=body)
        response.raise_for_status()

def seconds(retry_after):
    return getattr(retry_after, "total_seconds", lambda: retry_after)()

async def main():
    result = {}
    async with Bot(token, base_url=base + "/bot") as bot:
        for n in range(3):  # a burst of three is allowed, then one per second per chat
            await bot.send_message(1, f"burst {n}")
        try:
            await bot.send_message(1, "too soon")
        except RetryAfter as exc:
            result["chat_retry_after"] = seconds(exc.retry_after)
        print("CHECK per-chat 429")
        await fault(kind="unknown_chat", chat_id=2)
        try:
            await bot.send_message(2, "x")
        except BadRequest as exc:
            result["unknown_chat"] = exc.message
        print("CHECK chat not found")
        await fault(kind="block", chat_id=3)
        try:
            await bot.send_message(3, "x")
        except Forbidden as exc:
            result["blocked"] = exc.message
        print("CHECK blocked")
        await fault(kind="rate_limit", duration=5)
        try:
            await bot.send_message(4, "x")
        except RetryAfter as exc:
            result["retry_after"] = seconds(exc.retry_after)
        print("CHECK global 429")
    await fault(kind="ban_token", token=banned)
    try:
        await Bot(banned, base_url=base + "/bot").initialize()
    except InvalidToken as exc:
        result["banned"] = type(exc).__name__
    print("CHECK banned token")
    try:
        await Bot("not-a-token", base_url=base + "/bot").get_me()
    except InvalidToken as exc:
        result["malformed"] = type(exc).__name__
    print("CHECK malformed token")
    print("RESULT " + json.dumps(result))

asyncio.run(main())
"""


async def test_python_telegram_bot_error_mapping() -> None:
    emulator = TelegramEmulator()
    with trio.fail_after(CEILING):
        async with open_emulator(emulator) as url:
            checks, result = await run_script(TELEGRAM_ERRORS, url, TOKEN)
    assert len(checks) == 6
    assert result == {
        "chat_retry_after": 1,
        "unknown_chat": "Chat not found",  # the library capitalizes the description
        "blocked": "Forbidden: bot was blocked by the user",
        "retry_after": 5,
        "banned": "InvalidToken",
        "malformed": "InvalidToken",
    }
    assert emulator.stats["error_401"] == 1 and emulator.stats["error_404"] == 1


TELEGRAM_APPLICATION = """
import asyncio, json, sys
import httpx
from telegram.ext import ApplicationBuilder, CommandHandler, MessageHandler, filters

base, token = sys.argv[1], sys.argv[2]

async def main():
    seen = asyncio.Queue()

    async def echo(update, context):
        await update.message.reply_text("echo: " + update.message.text)
        await seen.put(("text", update.message.text))

    async def start(update, context):
        await seen.put(("command", context.args))

    app = ApplicationBuilder().token(token).base_url(base + "/bot").build()
    app.add_handler(CommandHandler("start", start))
    app.add_handler(MessageHandler(filters.TEXT & ~filters.COMMAND, echo))
    async with app:
        await app.start()
        await app.updater.start_polling(poll_interval=0.0, timeout=1)
        print("CHECK polling")
        got = []
        async with httpx.AsyncClient() as client:
            for chat_id, text in [(42, "ping"), (43, "/start now")]:
                response = await client.post(
                    base + "/_emulator/inject", json={"chat_id": chat_id, "text": text}
                )
                response.raise_for_status()
                got.append(await asyncio.wait_for(seen.get(), STEP_TIMEOUT))
        print("CHECK handlers")
        await app.updater.stop()
        await app.stop()
    print("RESULT " + json.dumps(got))

asyncio.run(main())
"""


async def test_python_telegram_bot_application_polls_and_dispatches() -> None:
    emulator = TelegramEmulator()
    with trio.fail_after(CEILING):
        async with open_emulator(emulator) as url:
            checks, result = await run_script(TELEGRAM_APPLICATION, url, TOKEN)
    assert checks == ["polling", "handlers"]
    # The command reaches CommandHandler: it needs the bot_command entity Telegram adds.
    assert result == [["text", "ping"], ["command", ["now"]]]
    assert [(s["chat_id"], s["text"]) for s in emulator.sent] == [(42, "echo: ping")]
    assert emulator.stats["method_deletewebhook"] >= 1  # start_polling clears any webhook


# --- Discord: discord.py -----------------------------------------------------------------

DISCORD_PRELUDE = """
import asyncio, json, logging, sys
import aiohttp, yarl
import discord
import discord.gateway
from discord.http import Route

base, token = sys.argv[1], sys.argv[2]
# The two knobs for another host: REST base, and the gateway a plain Client dials
# (discord.py 2.x does not ask GET /gateway/bot unless it is auto-sharded).
Route.BASE = base + "/api/v10"
discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(
    base.replace("http://", "ws://") + "/gateway"
)
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

async def control(path, **body):
    async with aiohttp.ClientSession() as session:
        async with session.post(base + "/_emulator/" + path, json=body) as response:
            assert response.status == 200, await response.text()
            return await response.json()

# discord.py reports ready this long after the last GUILD_CREATE (it has no
# count to wait for): long enough that a stalled machine does not make it
# report ready before our GUILD_CREATE, which follows READY at once.
GUILD_READY = 1.0

async def step(queue, kind):
    while True:
        event = await asyncio.wait_for(queue.get(), STEP_TIMEOUT)
        if event[0] == kind:
            return event[1:]

async def stats():
    async with aiohttp.ClientSession() as session:
        async with session.get(base + "/_emulator/stats") as response:
            assert response.status == 200, await response.text()
            return await response.json()
"""

DISCORD_CLIENT = (
    DISCORD_PRELUDE
    + """
CHANNEL = 300000000000000001

intents = discord.Intents.default()
intents.message_content = True
client = discord.Client(intents=intents, guild_ready_timeout=GUILD_READY)
events = asyncio.Queue()

@client.event
async def on_ready():
    await events.put(("ready",))

@client.event
async def on_resumed():
    await events.put(("resumed",))

@client.event
async def on_message(message):
    await events.put(("message", message))

async def scenario():
    result = {}
    await step(events, "ready")
    result["user_id"] = str(client.user.id)
    result["guilds"] = [str(g.id) for g in client.guilds]
    print("CHECK ready")
    shards, url, _ = await client.http.get_bot_gateway()
    assert url.startswith(base.replace("http://", "ws://")), url
    print("CHECK gateway/bot")

    await control("inject", channel_id=str(CHANNEL), content="hello bot")
    (message,) = await step(events, "message")
    assert message.content == "hello bot" and not message.author.bot
    assert isinstance(message.channel, discord.TextChannel), message.channel
    assert message.guild is not None and isinstance(message.author, discord.Member)
    print("CHECK on_message")

    pong = await message.channel.send("pong")
    assert pong.content == "pong" and pong.author == client.user
    (echo,) = await step(events, "message")
    assert echo.id == pong.id and echo.guild is not None
    partial = client.get_partial_messageable(CHANNEL)
    reply = await partial.send("re", reference=message)
    assert reply.reference.message_id == message.id
    assert reply.reference.resolved is not None and reply.reference.resolved.content == "hello bot"
    print("CHECK send")

    async def heartbeats_acknowledged(count):  # events to wait for, not a delay
        while client.latency == float("inf") or (await stats())["heartbeat_acks"] < count:
            await asyncio.sleep(0.05)

    await asyncio.wait_for(heartbeats_acknowledged(3), STEP_TIMEOUT)
    print("CHECK heartbeats")

    await control("fault", kind="drop")
    await step(events, "resumed")
    await control("inject", channel_id=str(CHANNEL), content="after resume")
    (after,) = await step(events, "message")
    assert after.content == "after resume"
    print("CHECK resume")
    result["sent"] = [pong.id, reply.id]
    await client.close()
    return result

async def main():
    async with client:
        task = asyncio.create_task(scenario())
        await client.start(token)
        print("RESULT " + json.dumps(await task))

asyncio.run(main())
"""
)


async def test_discord_py_client_connects_receives_sends_and_resumes() -> None:
    emulator = DiscordEmulator(heartbeat_interval=0.25)
    with trio.fail_after(CEILING):
        async with open_emulator(emulator) as url:
            checks, result = await run_script(DISCORD_CLIENT, url, "compat-token")
    assert checks == ["ready", "gateway/bot", "on_message", "send", "heartbeats", "resume"]
    assert result["user_id"] == DiscordEmulator.user_id_for("compat-token")
    assert result["guilds"] == ["200000000000000001"]
    assert [int(m["id"]) for m in emulator.sent] == result["sent"]
    assert [m["content"] for m in emulator.sent] == ["pong", "re"]
    assert emulator.stats["identify"] == 1 and emulator.stats["resume"] == 1
    assert emulator.stats["heartbeat_acks"] >= 3
    assert emulator.stats["gateway_close_4009"] == 0


DISCORD_ERRORS = (
    DISCORD_PRELUDE
    + """
async def main():
    result = {}
    await control("fault", kind="ban_token", token="banned-token")
    try:
        async with discord.Client(intents=discord.Intents.default()) as banned:
            await banned.login("banned-token")
    except discord.LoginFailure:
        result["banned"] = "LoginFailure"
    print("CHECK banned token")

    client = discord.Client(intents=discord.Intents.default())
    async with client:
        await client.login(token)
        channel = client.get_partial_messageable(300000000000000001)
        await control("fault", kind="rate_limit", duration=1)
        sent = await channel.send("waited out the 429")  # discord.py sleeps and retries
        result["after_429"] = sent.content
        print("CHECK global 429")
        await control("fault", kind="delete_channel", channel_id="300000000000000002")
        try:
            await client.get_partial_messageable(300000000000000002).send("x")
        except discord.NotFound as exc:
            result["deleted"] = [exc.status, exc.code, exc.text]
        print("CHECK unknown channel")
        try:
            await client.http.request(Route("GET", "/no/such/route"))
        except discord.NotFound as exc:
            result["no_route"] = [exc.status, exc.text]
        print("CHECK unknown route")
    print("RESULT " + json.dumps(result))

asyncio.run(main())
"""
)


async def test_discord_py_error_mapping() -> None:
    emulator = DiscordEmulator(heartbeat_interval=0.25)
    with trio.fail_after(CEILING):
        async with open_emulator(emulator) as url:
            checks, result = await run_script(DISCORD_ERRORS, url, "compat-token")
    assert len(checks) == 4
    assert result == {
        "banned": "LoginFailure",
        "after_429": "waited out the 429",
        "deleted": [404, 10003, "Unknown Channel"],
        "no_route": [404, "404: Not Found"],
    }
    assert emulator.stats["rest_429"] >= 1 and emulator.stats["rest_401"] == 1


DISCORD_CHUNKING = (
    DISCORD_PRELUDE
    + """
intents = discord.Intents.default()
intents.members = True  # without presences: discord.py chunks every guild before on_ready
client = discord.Client(intents=intents, guild_ready_timeout=GUILD_READY)

@client.event
async def on_ready():
    guild = client.guilds[0]
    result = {"chunked": guild.chunked, "members": sorted(str(m.id) for m in guild.members)}
    print("CHECK ready")
    print("RESULT " + json.dumps(result))
    await client.close()

asyncio.run(asyncio.wait_for(client.start(token), STEP_TIMEOUT))
"""
)


async def test_discord_py_chunks_guilds_with_the_members_intent() -> None:
    emulator = DiscordEmulator(heartbeat_interval=0.25)
    with trio.fail_after(CEILING):
        async with open_emulator(emulator) as url:
            checks, result = await run_script(DISCORD_CHUNKING, url, "compat-token")
    assert checks == ["ready"]
    # GUILD_CREATE lists the bot alone (member_count 2): the owner and a chunked
    # guild at on_ready come only from our GUILD_MEMBERS_CHUNK. Had discord.py
    # given up waiting for it (5 s), on_ready would have come unchunked.
    assert result == {
        "chunked": True,
        "members": sorted(["100000000000000000", DiscordEmulator.user_id_for("compat-token")]),
    }
    assert emulator.stats["op_8"] == 1


# --- Telegram: aiogram ---------------------------------------------------------------------

AIOGRAM_PRELUDE = """
import asyncio, io, json, sys
import aiohttp
from aiogram import Bot, Dispatcher
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import TelegramBadRequest, TelegramRetryAfter, TelegramUnauthorizedError
from aiogram.types import (
    BotCommand,
    BufferedInputFile,
    InputMediaPhoto,
    Message,
    ReactionTypeEmoji,
)

base, token = sys.argv[1], sys.argv[2]

def session():
    # The one change for another host: the API server's base URL.
    return AiohttpSession(api=TelegramAPIServer.from_base(base))

async def control(path, **body):
    async with aiohttp.ClientSession() as http:
        async with http.post(base + "/_emulator/" + path, json=body) as response:
            assert response.status == 200, await response.text()
            return await response.json()

async def read(path):
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "/_emulator/" + path) as response:
            return await response.json()

async def step(queue):
    return await asyncio.wait_for(queue.get(), STEP_TIMEOUT)
"""

AIOGRAM_POLLING = (
    AIOGRAM_PRELUDE
    + """
async def main():
    result = {}
    bot = Bot(token, session=session())
    me = await bot.get_me()
    assert me.id == 123456 and me.is_bot, me
    print("CHECK login")

    dp = Dispatcher()
    seen = asyncio.Queue()

    @dp.message()
    async def on_message(message: Message) -> None:
        await seen.put(message)

    polling = asyncio.create_task(
        dp.start_polling(bot, polling_timeout=1, handle_signals=False, close_bot_session=False)
    )
    await control("inject", chat_id=42, text="hello", token=token)
    question = await step(seen)
    assert question.text == "hello" and question.chat.id == 42
    print("CHECK receive")

    answer = await question.reply("hi there")
    assert answer.reply_to_message.message_id == question.message_id
    print("CHECK reply")
    edited = await bot.edit_message_text("hi, edited", chat_id=42, message_id=answer.message_id)
    assert edited.text == "hi, edited" and edited.edit_date is not None
    print("CHECK edit")
    assert await bot.send_chat_action(42, "typing") is True
    assert await bot.set_message_reaction(
        42, question.message_id, [ReactionTypeEmoji(emoji="\\N{THUMBS UP SIGN}")]
    )
    print("CHECK typing")
    picture = b"\\x89PNG\\r\\n\\x1a\\n" + b"p" * 100
    photo = await bot.send_photo(42, BufferedInputFile(picture, filename="cat.png"), caption="cat")
    file = await bot.get_file(photo.photo[-1].file_id)
    downloaded = await bot.download(file, destination=io.BytesIO())
    assert downloaded.getvalue() == picture
    print("CHECK upload")
    assert await bot.delete_message(42, answer.message_id) is True
    try:
        await bot.delete_message(42, answer.message_id)
    except TelegramBadRequest as exc:
        result["deleted_twice"] = exc.message
    print("CHECK delete")

    chat = await bot.get_chat(42)
    assert chat.id == 42 and chat.type == "private"
    copied = await bot.copy_message(45, from_chat_id=42, message_id=question.message_id)
    forwarded = await bot.forward_message(46, from_chat_id=42, message_id=question.message_id)
    assert forwarded.text == "hello" and forwarded.forward_origin is not None
    album = await bot.send_media_group(
        47,
        [
            InputMediaPhoto(media=BufferedInputFile(picture, filename="a.png")),
            InputMediaPhoto(media=BufferedInputFile(picture, filename="b.png")),
        ],
    )
    assert len(album) == 2 and album[0].media_group_id == album[1].media_group_id
    assert await bot.set_my_commands([BotCommand(command="start", description="Start")])
    assert [c.command for c in await bot.get_my_commands()] == ["start"]
    assert await bot.answer_callback_query("query-1", text="done")
    result["copied"] = copied.message_id
    print("CHECK more methods")

    await control("fault", kind="rate_limit", duration=1)
    try:
        await bot.send_message(43, "too soon")
    except TelegramRetryAfter as exc:
        result["retry_after"] = exc.retry_after
        await asyncio.sleep(exc.retry_after)
    later = await bot.send_message(43, "waited")
    assert later.text == "waited"
    print("CHECK 429 waited out")

    # The server fails the long polls (502 twice); the poller backs off and comes
    # back with its offset: nothing sent meanwhile is lost.
    await control("fault", kind="server_error", count=2, status=502)
    await control("inject", chat_id=44, text="after the outage", token=token)
    back = await step(seen)
    assert back.text == "after the outage"
    print("CHECK resume")
    await dp.stop_polling()
    await polling
    await bot.session.close()

    banned = "654321:" + "B" * 35
    await control("fault", kind="ban_token", token=banned)
    outcast = Bot(banned, session=session())
    try:
        await outcast.get_me()
    except TelegramUnauthorizedError as exc:
        result["banned"] = type(exc).__name__
    await outcast.session.close()
    print("CHECK banned")
    print("RESULT " + json.dumps(result))

asyncio.run(main())
"""
)


async def test_aiogram_polls_replies_edits_deletes_uploads_and_recovers() -> None:
    emulator = TelegramEmulator()
    with trio.fail_after(LONG_CEILING):
        async with open_emulator(emulator) as url:
            checks, result = await run_script(AIOGRAM_POLLING, url, TOKEN)
    assert checks == [
        "login",
        "receive",
        "reply",
        "edit",
        "typing",
        "upload",
        "delete",
        "more methods",
        "429 waited out",
        "resume",
        "banned",
    ]
    assert result == {
        "deleted_twice": "Bad Request: message to delete not found",
        "copied": 1,  # the first message in chat 45
        "retry_after": 1,
        "banned": "TelegramUnauthorizedError",
    }
    methods = [o["method"] for o in emulator.operations]
    assert methods == [
        "editMessageText",
        "sendChatAction",
        "setMessageReaction",
        "deleteMessage",
        "setMyCommands",
        "answerCallbackQuery",
    ]
    assert [(s["method"], s["chat_id"]) for s in emulator.sent][2:6] == [
        ("copyMessage", 45),
        ("forwardMessage", 46),
        ("sendMediaGroup", 47),
        ("sendMediaGroup", 47),
    ]
    assert emulator.sent[1]["media"] == {"upload": "cat.png", "size": 108}
    assert emulator.stats["error_502"] == 2  # the outage the poller came back from


AIOGRAM_WEBHOOK = (
    AIOGRAM_PRELUDE
    + """
from aiogram.webhook.aiohttp_server import SimpleRequestHandler
from aiohttp import web

SECRET = "hook-secret"

async def main():
    bot = Bot(token, session=session())
    dp = Dispatcher()

    @dp.message()
    async def on_message(message: Message):
        # Answered in the webhook's response body ("making requests when getting updates").
        return message.answer("pong: " + message.text)

    app = web.Application()
    SimpleRequestHandler(dp, bot, handle_in_background=False, secret_token=SECRET).register(
        app, path="/hook"
    )
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    assert await bot.set_webhook(f"http://127.0.0.1:{port}/hook", secret_token=SECRET)
    print("CHECK webhook set")
    await control("inject", chat_id=42, text="ping", token=token)

    async def answered():
        while not any(s.get("text") == "pong: ping" for s in await read("sent")):
            await asyncio.sleep(0.02)

    await asyncio.wait_for(answered(), STEP_TIMEOUT)
    print("CHECK answered in the response")
    await bot.delete_webhook()
    await runner.cleanup()
    await bot.session.close()
    print("RESULT {}")

asyncio.run(main())
"""
)


async def test_aiogram_webhook_answers_with_a_method_in_the_response() -> None:
    emulator = TelegramEmulator()
    with trio.fail_after(LONG_CEILING):
        async with open_emulator(emulator) as url:
            checks, _ = await run_script(AIOGRAM_WEBHOOK, url, TOKEN)
    assert checks == ["webhook set", "answered in the response"]
    assert [(s["method"], s["chat_id"], s["text"]) for s in emulator.sent] == [
        ("sendMessage", 42, "pong: ping")
    ]
    assert emulator.stats["webhook_reply_calls"] == 1


# --- Discord: hikari ------------------------------------------------------------------------

HIKARI_BOT = """
import asyncio, json, sys, logging
import aiohttp
import hikari

base, token, banned = sys.argv[1], sys.argv[2], sys.argv[3]
CHANNEL = 300000000000000001
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

async def control(path, **body):
    async with aiohttp.ClientSession() as http:
        async with http.post(base + "/_emulator/" + path, json=body) as response:
            assert response.status == 200, await response.text()
            return await response.json()

async def read(path):
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "/_emulator/" + path) as response:
            return await response.json()

async def step(queue, kind):
    while True:
        event = await asyncio.wait_for(queue.get(), STEP_TIMEOUT)
        if event[0] == kind:
            return event[1:]

async def main():
    result = {}
    intents = hikari.Intents.ALL_UNPRIVILEGED | hikari.Intents.MESSAGE_CONTENT
    bot = hikari.GatewayBot(token, intents=intents, rest_url=base + "/api/v10", banner=None)
    events = asyncio.Queue()

    @bot.listen()
    async def on_started(event: hikari.StartedEvent) -> None:
        await events.put(("started",))

    @bot.listen()
    async def on_message(event: hikari.GuildMessageCreateEvent) -> None:
        if not event.is_bot:
            await events.put(("message", event.message))

    @bot.listen()
    async def on_resumed(event: hikari.ShardResumedEvent) -> None:
        await events.put(("resumed",))

    await bot.start()
    await step(events, "started")
    me = bot.get_me()
    result["user_id"] = str(me.id)
    print("CHECK login")
    await control("inject", channel_id=str(CHANNEL), content="hello hikari")
    (message,) = await step(events, "message")
    assert message.content == "hello hikari"
    print("CHECK receive")
    reply = await message.respond("hi", reply=True)
    print("CHECK reply")
    edited = await bot.rest.edit_message(CHANNEL, reply, "hi, edited")
    assert edited.content == "hi, edited"
    print("CHECK edit")
    await bot.rest.trigger_typing(CHANNEL)
    await bot.rest.add_reaction(CHANNEL, message, "\\N{THUMBS UP SIGN}")
    print("CHECK typing")
    picture = hikari.Bytes(b"GIF89a" + b"g" * 50, "cat.gif")
    sent = await bot.rest.create_message(CHANNEL, attachment=picture)
    assert [a.filename for a in sent.attachments] == ["cat.gif"]
    print("CHECK upload")
    await bot.rest.delete_message(CHANNEL, reply)
    try:
        await bot.rest.delete_message(CHANNEL, reply)
    except hikari.NotFoundError as exc:
        result["deleted_twice"] = [exc.code, exc.message]
    print("CHECK delete")
    await control("fault", kind="rate_limit", duration=1)
    waited = await bot.rest.create_message(CHANNEL, "waited out")
    assert waited.content == "waited out"
    print("CHECK 429 waited out")
    await control("fault", kind="close", code=4000)
    await control("inject", channel_id=str(CHANNEL), content="while away")
    (away,) = await step(events, "message")  # replayed on RESUME, not lost
    assert away.content == "while away"
    print("CHECK resume")
    await bot.close()
    await control("fault", kind="ban_token", token=banned)
    outcast = hikari.GatewayBot(
        banned, intents=intents, rest_url=base + "/api/v10", banner=None
    )
    try:
        await outcast.start()
    except hikari.UnauthorizedError as exc:
        result["banned"] = type(exc).__name__
    print("CHECK banned")
    print("RESULT " + json.dumps(result))

asyncio.run(main())
"""


async def test_hikari_logs_in_with_zstd_replies_edits_deletes_uploads_and_resumes() -> None:
    emulator = DiscordEmulator(heartbeat_interval=1.0)
    token, banned = token_for("400000000000000001"), token_for("400000000000000002")
    with trio.fail_after(LONG_CEILING):
        async with open_emulator(emulator) as url:
            checks, result = await run_script(HIKARI_BOT, url, token, banned)
    assert checks == [
        "login",
        "receive",
        "reply",
        "edit",
        "typing",
        "upload",
        "delete",
        "429 waited out",
        "resume",
        "banned",
    ]
    assert result == {
        "user_id": "400000000000000001",  # the id its token encodes
        "deleted_twice": [10008, "Unknown Message"],
        "banned": "UnauthorizedError",
    }
    # hikari asked for zstd-stream (hikari[zstd]) and read every payload through it.
    assert 0 < emulator.stats["gateway_wire_bytes"] < emulator.stats["gateway_payload_bytes"]
    assert [o["op"] for o in emulator.operations] == ["edit", "typing", "react", "delete"]
    assert emulator.stats["rest_429"] >= 1  # hikari waited the 429 out by itself
    # The emulator's own close (4000): hikari resumed, the session survived.
    assert emulator.stats["gateway_close_4000"] == 1
    assert emulator.stats["resume"] == 1 and emulator.stats["resume_failed"] == 0
    assert emulator.stats["identify"] == 1
    assert emulator.stats["rest_401"] == 1


DISCORD_OPERATIONS = (
    DISCORD_PRELUDE
    + """
import io

CHANNEL = 300000000000000001

intents = discord.Intents.default()
intents.message_content = True
client = discord.Client(intents=intents, guild_ready_timeout=GUILD_READY)
events = asyncio.Queue()

@client.event
async def on_ready():
    await events.put(("ready",))

@client.event
async def on_resumed():
    await events.put(("resumed",))

@client.event
async def on_message(message):
    if message.author != client.user:
        await events.put(("message", message))

async def scenario():
    result = {}
    await step(events, "ready")
    await control("inject", channel_id=str(CHANNEL), content="hello")
    (message,) = await step(events, "message")
    reply = await message.reply("hi")
    edited = await reply.edit(content="hi, edited")
    assert edited.content == "hi, edited" and edited.edited_at is not None
    print("CHECK edit")
    async with message.channel.typing():
        pass
    await message.add_reaction("\\N{THUMBS UP SIGN}")
    print("CHECK typing")
    upload = discord.File(io.BytesIO(b"%PDF-" + b"d" * 95), filename="report.pdf")
    sent = await message.channel.send("the report", file=upload)
    assert [(a.filename, a.size) for a in sent.attachments] == [("report.pdf", 100)]
    print("CHECK upload")
    await reply.delete()
    try:
        await reply.delete()
    except discord.NotFound as exc:
        result["deleted_twice"] = [exc.status, exc.code, exc.text]
    print("CHECK delete")
    # The emulator closes the socket (4000): discord.py resumes, and what was said
    # meanwhile is replayed, not lost.
    await control("fault", kind="close", code=4000)
    await control("inject", channel_id=str(CHANNEL), content="while away")
    (away,) = await step(events, "message")
    assert away.content == "while away"
    print("CHECK resume")
    # A wait longer than hypercorn's default keep-alive (5 s): discord.py reuses its
    # pooled connection afterwards, which a server that reaped it would reset.
    await control("fault", kind="rate_limit", duration=6)
    waited = await message.channel.send("after a long wait")
    assert waited.content == "after a long wait"
    print("CHECK 429 waited out")
    await client.close()
    return result

async def main():
    async with client:
        task = asyncio.create_task(scenario())
        await client.start(token)
        print("RESULT " + json.dumps(await task))

asyncio.run(main())
"""
)


async def test_discord_py_edits_deletes_types_uploads_and_resumes_after_a_server_close() -> None:
    emulator = DiscordEmulator(heartbeat_interval=0.25)
    with trio.fail_after(LONG_CEILING):
        async with open_emulator(emulator) as url:
            checks, result = await run_script(DISCORD_OPERATIONS, url, token_for("5000"))
    assert checks == ["edit", "typing", "upload", "delete", "resume", "429 waited out"]
    assert result == {"deleted_twice": [404, 10008, "Unknown Message"]}
    assert emulator.stats["rest_429"] >= 1
    assert [o["op"] for o in emulator.operations] == ["edit", "typing", "react", "delete"]
    assert emulator.stats["gateway_close_4000"] == 1
    assert emulator.stats["resume"] == 1 and emulator.stats["resume_failed"] == 0


# --- WhatsApp: pywa ------------------------------------------------------------------------

PYWA_BOT = """
import asyncio, json, sys, logging
import aiohttp
from aiohttp import web
from pywa_async import WhatsApp, types
from pywa.errors import TemporarilyBlocked, ToManyAPICalls

base, token, secret, phone_id = sys.argv[1:5]
VERIFY = "verify-me"
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

async def control(path, **body):
    async with aiohttp.ClientSession() as http:
        async with http.post(base + "/_emulator/" + path, json=body) as response:
            assert response.status == 200, await response.text()
            return await response.json()

async def read(path):
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "/_emulator/" + path) as response:
            return await response.json()

def client(access_token):
    wa = WhatsApp(
        phone_id=phone_id, token=access_token, app_secret=secret, verify_token=VERIFY, server=None
    )
    # The one change for another host: the Graph API's base URL (the version kept).
    version = str(wa.api._session.base_url).rstrip("/").rsplit("/", 1)[-1]
    wa.api._session.base_url = f"{base}/{version}"
    return wa

async def serve(wa, port=0):
    async def hook(request):
        if request.method == "GET":
            answer, status = await wa.webhook_challenge_handler(
                request.query.get("hub.verify_token"), request.query.get("hub.challenge")
            )
            return web.Response(text=answer or "", status=status)
        body = await request.read()
        signature = request.headers.get("X-Hub-Signature-256")
        refused = await wa.webhook_update_validator(body, signature)
        if refused:
            return web.Response(text=refused[0], status=refused[1])
        answer, status = await wa.webhook_update_handler(body)
        return web.Response(text=answer, status=status)

    app = web.Application()
    app.router.add_route("*", "/webhook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]

async def step(queue):
    return await asyncio.wait_for(queue.get(), STEP_TIMEOUT)

async def main():
    result = {}
    wa = client(token)
    messages, statuses = asyncio.Queue(), asyncio.Queue()

    @wa.on_message()
    async def on_message(_: WhatsApp, message: types.Message) -> None:
        await messages.put(message)

    @wa.on_message_status()
    async def on_status(_: WhatsApp, status: types.MessageStatus) -> None:
        await statuses.put(status)

    number = await wa.get_business_phone_number()
    assert number.id == phone_id, number
    print("CHECK login")
    runner, port = await serve(wa)
    await control("webhook", url=f"http://127.0.0.1:{port}/webhook", verify_token=VERIFY)

    await control("inject", **{"from": "16505551234", "text": "hello"})
    message = await step(messages)
    assert message.text == "hello"
    result["bsuid"] = message.from_user.bsuid
    result["wa_id"] = message.from_user.wa_id
    print("CHECK receive")
    reply = await message.reply_text("hi there")
    status = await step(statuses)
    assert status.id == reply.id and status.from_user.bsuid == result["bsuid"]
    print("CHECK reply")
    await message.mark_as_read()
    await message.indicate_typing()
    await message.react("\\N{THUMBS UP SIGN}")
    print("CHECK typing")
    picture = b"\\x89PNG\\r\\n\\x1a\\n" + b"p" * 92
    await wa.send_image(
        to=message.from_user.wa_id, image=picture, mime_type="image/png", caption="cat"
    )
    print("CHECK upload")
    await control("fault", kind="rate_limit", duration=1)
    try:
        await message.reply_text("too soon")
    except ToManyAPICalls as exc:
        result["throttled"] = type(exc).__name__
        await asyncio.sleep(1.1)
    await message.reply_text("waited")
    print("CHECK 429 waited out")
    # The bot's webhook server goes away; a message then cannot be delivered, and
    # arrives once the server is back (the platform redelivers).
    await runner.cleanup()
    away = await control("inject", **{"from": "16505551234", "text": "while away"})
    assert away["webhook_status"] is None
    runner, _ = await serve(wa, port)
    again = await step(messages)
    while again.text != "while away":
        again = await step(messages)
    print("CHECK resume")
    await runner.cleanup()
    banned_token = "EAAG-banned"
    await control("fault", kind="ban_token", token=banned_token)
    try:
        await client(banned_token).get_business_phone_number()
    except TemporarilyBlocked as exc:
        result["banned"] = type(exc).__name__
    print("CHECK banned")
    print("RESULT " + json.dumps(result))

asyncio.run(main())
"""


async def test_pywa_receives_replies_reads_types_reacts_uploads_and_gets_redeliveries() -> None:
    emulator = WhatsAppEmulator(app_secret="app-secret", redeliver=True, pair_burst=20)
    with trio.fail_after(LONG_CEILING):
        async with open_emulator(emulator) as url:
            checks, result = await run_script(
                PYWA_BOT, url, "EAAG-token", "app-secret", "106540352242922"
            )
    assert checks == [
        "login",
        "receive",
        "reply",
        "typing",
        "upload",
        "429 waited out",
        "resume",
        "banned",
    ]
    assert result == {
        "bsuid": bsuid_for("16505551234"),  # pywa needs contacts[].user_id to see a message
        "wa_id": "16505551234",
        "throttled": "ToManyAPICalls",
        "banned": "TemporarilyBlocked",
    }
    reads = [(o["op"], o.get("typing")) for o in emulator.operations if o["op"] == "read"]
    assert reads == [("read", False), ("read", True)]
    [react] = [o for o in emulator.operations if o["op"] == "react"]
    assert react["to"] == bsuid_for("16505551234")  # pywa sends by BSUID (recipient)
    [upload] = [o for o in emulator.operations if o["op"] == "upload"]
    assert (upload["type"], upload["size"]) == ("image/png", 100)
    image = emulator.sent[1]["body"]
    assert image["type"] == "image" and image["image"]["id"] == upload["media_id"]
    assert emulator.stats["webhooks_redelivered"] >= 1
    assert emulator.stats["error_368"] == 1


TELEGRAM_OPERATIONS = """
import asyncio, json, sys
import httpx
from telegram import Bot, ReactionTypeEmoji
from telegram.constants import ChatAction
from telegram.error import BadRequest, RetryAfter
from telegram.ext import ApplicationBuilder, MessageHandler, filters

base, token = sys.argv[1], sys.argv[2]

async def control(path, **body):
    async with httpx.AsyncClient() as client:
        response = await client.post(base + "/_emulator/" + path, json=body)
        response.raise_for_status()

def seconds(retry_after):
    return getattr(retry_after, "total_seconds", lambda: retry_after)()

async def main():
    result = {}
    seen = asyncio.Queue()

    async def on_text(update, context):
        await seen.put(update.message)

    # The two base URLs: the Bot API's and its file server's.
    builder = ApplicationBuilder().token(token).base_url(base + "/bot")
    app = builder.base_file_url(base + "/file/bot").build()
    app.add_handler(MessageHandler(filters.TEXT, on_text))
    async with app:
        await app.start()
        await app.updater.start_polling(poll_interval=0.0, timeout=1)
        bot = app.bot
        await control("inject", chat_id=42, text="hello")
        question = await asyncio.wait_for(seen.get(), STEP_TIMEOUT)
        answer = await question.reply_text("hi")
        edited = await answer.edit_text("hi, edited")
        assert edited.text == "hi, edited" and edited.edit_date is not None
        print("CHECK edit")
        assert await bot.send_chat_action(42, ChatAction.TYPING)
        assert await question.set_reaction(ReactionTypeEmoji("\\N{THUMBS UP SIGN}"))
        print("CHECK typing")
        document = await bot.send_document(
            42, document=b"%PDF-" + b"d" * 45, filename="report.pdf", caption="report"
        )
        file = await document.document.get_file()
        assert bytes(await file.download_as_bytearray()) == b"%PDF-" + b"d" * 45
        print("CHECK upload")
        assert await answer.delete()
        try:
            await answer.delete()
        except BadRequest as exc:
            result["deleted_twice"] = exc.message
        print("CHECK delete")
        await control("fault", kind="rate_limit", duration=1)
        try:
            await bot.send_message(43, "too soon")
        except RetryAfter as exc:
            result["retry_after"] = seconds(exc.retry_after)
            await asyncio.sleep(seconds(exc.retry_after))
        assert (await bot.send_message(43, "waited")).text == "waited"
        print("CHECK 429 waited out")
        # Two long polls fail (502); the updater retries with its offset.
        await control("fault", kind="server_error", count=2, status=502)
        await control("inject", chat_id=44, text="after the outage")
        back = await asyncio.wait_for(seen.get(), STEP_TIMEOUT)
        assert back.text == "after the outage"
        print("CHECK resume")
        await app.updater.stop()
        await app.stop()
    print("RESULT " + json.dumps(result))

asyncio.run(main())
"""


async def test_python_telegram_bot_edits_deletes_types_uploads_and_polls_through_an_outage() -> (
    None
):
    emulator = TelegramEmulator()
    with trio.fail_after(LONG_CEILING):
        async with open_emulator(emulator) as url:
            checks, result = await run_script(TELEGRAM_OPERATIONS, url, TOKEN)
    assert checks == ["edit", "typing", "upload", "delete", "429 waited out", "resume"]
    assert result == {
        "deleted_twice": "Message to delete not found",  # the library capitalizes it
        "retry_after": 1,
    }
    assert [o["method"] for o in emulator.operations] == [
        "editMessageText",
        "sendChatAction",
        "setMessageReaction",
        "deleteMessage",
    ]
    assert emulator.sent[1]["media"] == {"upload": "report.pdf", "size": 50}
    assert emulator.stats["error_502"] == 2
