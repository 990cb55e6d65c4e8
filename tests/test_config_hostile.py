"""No deployment file crashes ``switchboard check``: exit 0 or 2, a path, never a secret.

Hostile values (an integer past any float, nesting hundreds deep, a
``provider`` that is an array or a table, options the provider would refuse
at run time, an empty file) are each a problem with its path, exit 2. Then a
property test (hypothesis) mutates the shipped files line by line and checks
``check`` as the command line runs it: in-process through
:func:`runtime.cli.main`, so an escaping exception fails the test itself.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

import attrs
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from providers.base import ChannelConfig, FatalError
from providers.telegram.core import TelegramOptions
from providers.telegram.core import parse_options as telegram_options
from providers.websocket.shell import parse_options as websocket_options
from providers.whatsapp.core import WhatsAppSettings
from runtime.cli import main
from runtime.config import parse_config
from runtime.errors import ConfigError

ROOT: Final = Path(__file__).resolve().parent.parent
SHIPPED: Final = sorted((ROOT / "config").glob("*.toml"))
# The values of every ${env:NAME} in the shipped files: secrets that must never be printed.
ENV: Final = {
    "SWITCHBOARD_PG_PASSWORD": "pg-pass-Zq81x",
    "SWITCHBOARD_OPS_TOKEN": "ops-token-Lm27c",
    "ACME_DISCORD_TOKEN": "discord-token-Rt55v",
    "ACME_TELEGRAM_TOKEN": "123456:" + "T" * 35,
    "ACME_TELEGRAM_WEBHOOK_SECRET": "tg-hook-Wq93n",
    "ACME_WA_APP_SECRET": "wa-app-Hs40k",
    "ACME_WA_TOKEN": "EAAGwatoken8Jd2",
    "ACME_WA_VERIFY_TOKEN": "wa-verify-Pp61b",
    "GLOBEX_WS_TOKEN": "ws-token-Yc70e",
    "NAME": "name-secret-Qa12z",
}


# Numbers a deployment writes in the environment: read as the providers read them.
NUMBERS: Final = {"ACME_DEADLINE": "12.5", "ACME_BODY_BYTES": "65536", "ACME_NO_DEADLINE": "0"}


@contextlib.contextmanager
def environment() -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in {**ENV, **NUMBERS}}
    os.environ.update({**ENV, **NUMBERS})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def check(text: str) -> tuple[int, str]:
    """``switchboard check`` on ``text``, in-process: (exit code, stdout + stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "deployment.toml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        with environment(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["check", str(path)])
    return code, out.getvalue() + err.getvalue()


# --- each defect ------------------------------------------------------------------------------

CHANNEL: Final = '[[channels]]\nid = "a"\nprovider = "simulated"\n'
HUGE: Final = "1" + "0" * 400


@pytest.mark.parametrize(
    ("text", "path"),
    [
        (CHANNEL + f"rate_limit = {{ per_channel_rate = {HUGE} }}\n", "per_channel_rate"),
        (CHANNEL + f"backoff = {{ base = {HUGE} }}\n", "channels[0].backoff.base"),
        (f"[node]\ndrain_deadline = {HUGE}\n", "node.drain_deadline"),
        (CHANNEL + "[channels.options]\nx = " + "[" * 500 + "]" * 500 + "\n", ""),
        (CHANNEL + "[channels.options]\nx = " + "[" * 40 + "1" + "]" * 40 + "\n", "options.x"),
        ('[[channels]]\nid = "a"\nemulator = true\nprovider = ["telegram"]\n', "provider"),
        ('[[channels]]\nid = "a"\nemulator = true\nprovider = { a = 1 }\n', "provider"),
        ('[[channels]]\nid = "a"\nprovider = ["telegram"]\n', "channels[0].provider"),
        ("", ""),
        ("# nothing but a comment\n\n", ""),
    ],
    ids=[
        "huge-rate",
        "huge-backoff",
        "huge-duration",
        "nested-500",
        "nested-40",
        "provider-array",
        "provider-table",
        "provider-array-plain",
        "empty",
        "comment-only",
    ],
)
def test_hostile_values_are_refused_with_exit_2_and_a_path(text: str, path: str) -> None:
    code, output = check(text)
    assert code == 2, output
    assert "Traceback" not in output
    assert "invalid configuration" in output
    assert path in output


def test_an_empty_file_says_what_a_deployment_needs() -> None:
    with pytest.raises(ConfigError, match=r"no settings: a deployment names at least its node"):
        parse_config("")


DISCORD: Final = """
[emulators.discord]

[[channels]]
id = "d"
provider = "discord"
emulator = true
[channels.options]
"""


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (DISCORD + 'intents = "all"\n', "options.intents is a string; expected"),
        (DISCORD + "intents = true\n", "options.intents is true; expected"),
        (DISCORD + 'compress = "gzip"\n', "options.compress is a string; use one of zlib-stream"),
        (
            '[emulators.telegram]\n\n[[channels]]\nid = "t"\nprovider = "telegram"\n'
            'emulator = true\noptions = { mode = "push" }\n',
            "expected one of 'polling', 'webhook' @ channels[0].options.mode",
        ),
        (
            '[emulators.websocket]\n\n[[channels]]\nid = "w"\nprovider = "websocket"\n'
            'emulator = true\noptions = { ping_interval = "often" }\n',
            "expected a finite number, got a string @ channels[0].options.ping_interval",
        ),
        (
            '[providers.whatsapp.options]\nphone_number_id = "1"\ntimeout = "slow"\n\n'
            '[emulators.whatsapp]\n\n[[channels]]\nid = "wa"\nprovider = "whatsapp"\n'
            "emulator = true\n",
            "expected a finite number, got a string @ providers.whatsapp.options.timeout",
        ),
        ("[emulators.telegram]\noptions = { bogus = 1 }\n", "emulators.telegram.options.bogus"),
    ],
    ids=["intents-all", "intents-bool", "compress", "telegram", "websocket", "whatsapp", "emu"],
)
def test_check_refuses_the_options_run_would_refuse(text: str, needle: str) -> None:
    code, output = check(text)
    assert code == 2, output
    assert needle in output
    assert "Traceback" not in output


# The size and time limits each provider reads from its options, with a value each refuses.
_EMULATED: Final = {
    "discord": "",
    "telegram": "",
    "whatsapp": 'phone_number_id = "1"\n',
    "websocket": "",
}
LIMITS: Final = [
    (provider, key, value)
    for provider, keys in {
        "discord": ("max_body_bytes", "max_message_bytes"),
        "telegram": ("max_body_bytes", "request_deadline"),
        "whatsapp": ("max_body_bytes", "request_deadline"),
        "websocket": ("max_message_bytes",),
    }.items()
    for key in keys
    for value in ('"lots"', "0", "-1", "true", "inf", "nan", HUGE, "[1]", "{ a = 1 }")
]


def limited(provider: str, options: str, *, in_defaults: bool = False) -> str:
    """An emulated ``provider`` channel with ``options`` (TOML lines), or in its defaults."""
    defaults = _EMULATED[provider] + (options if in_defaults else "")
    own = "" if in_defaults else options
    text = f"[emulators.{provider}]\n\n"
    if defaults:
        text += f"[providers.{provider}.options]\n{defaults}\n"
    text += f'[[channels]]\nid = "c"\nprovider = "{provider}"\nemulator = true\n'
    return text + (f"[channels.options]\n{own}" if own else "")


@pytest.mark.parametrize(("provider", "key", "value"), LIMITS)
def test_a_bad_limit_option_is_refused_at_check_with_its_path(
    provider: str, key: str, value: str
) -> None:
    """``check`` used to pass these, and the channel refused them only when it opened."""
    code, output = check(limited(provider, f"{key} = {value}\n"))
    assert code == 2, output
    assert "Traceback" not in output
    assert f"options.{key} is " in output
    assert f"@ channels[0].options.{key}\n" in output
    assert ("bytes from 1 to" if key.endswith("_bytes") else "seconds above 0") in output


@pytest.mark.parametrize("provider", ["telegram", "whatsapp"])
def test_a_bad_limit_in_the_provider_defaults_is_named_there_once(provider: str) -> None:
    text = limited(provider, "request_deadline = -5\n", in_defaults=True)
    text += f'\n[[channels]]\nid = "c2"\nprovider = "{provider}"\nemulator = true\n'
    code, output = check(text)
    assert code == 2, output
    assert output.count(f"@ providers.{provider}.options.request_deadline") == 1, output


@pytest.mark.parametrize("provider", ["telegram", "whatsapp"])
def test_a_limit_the_environment_writes_passes_as_the_channel_reads_it(provider: str) -> None:
    # check refused a number from the environment (a string) that the channel takes.
    options = (
        'request_deadline = "${env:ACME_DEADLINE}"\nmax_body_bytes = "${env:ACME_BODY_BYTES}"\n'
    )
    code, output = check(limited(provider, options))
    assert code == 0, output
    read = {"telegram": _telegram, "whatsapp": _whatsapp}[provider]
    parsed = read({"request_deadline": NUMBERS["ACME_DEADLINE"], "max_body_bytes": "65536"})
    read_as = attrs.asdict(parsed)  # type: ignore[arg-type]
    assert (read_as["request_deadline"], read_as["max_body_bytes"]) == (12.5, 65536)


def test_a_limit_the_environment_writes_out_of_bounds_is_refused_at_its_path() -> None:
    code, output = check(limited("whatsapp", 'request_deadline = "${env:ACME_NO_DEADLINE}"\n'))
    assert code == 2, output
    assert "options.request_deadline is a string out of bounds; expected a number of" in output
    assert "@ channels[0].options.request_deadline\n" in output


def test_an_options_class_holds_the_number_itself_not_its_text() -> None:
    # A program building the options in code gets no reading: text in a number's
    # field is refused, not kept as text where a deadline should be.
    with pytest.raises(ValueError, match="request_deadline is a string"):
        TelegramOptions(request_deadline="30")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"max_body_bytes is 64\.0"):
        TelegramOptions(max_body_bytes=64.0)  # type: ignore[arg-type]


def test_a_choice_from_the_environment_is_refused_without_quoting_it() -> None:
    # cattrs' own words for a choice quote the value: "<value> not in literal ...".
    code, output = check(limited("telegram", 'mode = "${env:ACME_TELEGRAM_WEBHOOK_SECRET}"\n'))
    assert code == 2, output
    assert "expected one of 'polling', 'webhook' @ channels[0].options.mode\n" in output
    assert ENV["ACME_TELEGRAM_WEBHOOK_SECRET"] not in output


def test_a_limit_from_the_environment_is_refused_without_quoting_it() -> None:
    text = limited("telegram", 'max_body_bytes = "${env:ACME_WA_APP_SECRET}"\n')
    code, output = check(text)
    assert code == 2, output
    assert "options.max_body_bytes is a string" in output
    assert ENV["ACME_WA_APP_SECRET"] not in output


@pytest.mark.parametrize(
    ("provider", "options"),
    [
        ("discord", "max_body_bytes = 1048576\nmax_message_bytes = 1073741824\n"),
        ("telegram", "max_body_bytes = 1\nrequest_deadline = 0.5\n"),
        ("whatsapp", "max_body_bytes = 8388608\nrequest_deadline = 3600\n"),
        ("websocket", "max_message_bytes = 65536\n"),
    ],
)
def test_good_limit_options_pass(provider: str, options: str) -> None:
    code, output = check(limited(provider, options))
    assert code == 0, output


# What the providers' readings once took, and now refuse, each with the words that say
# what came (a number as written, anything else by its type) and what was expected:
# - a boolean or number read with Python's bool(), int() or float(): "no" was true,
#   2.5 was 2, true was 1 (or 1 second), "nan" no timeout at all; cattrs' words were
#   "invalid value for type, expected int";
# - values no channel can use: a buffer that cannot be made (-5), one that holds
#   everything (10**15), a timeout of nothing, a long poll of 31 years.
REFUSED: Final = [
    ("whatsapp", "verify_on_open", '"no"', "expected true or false, got a string"),
    ("whatsapp", "event_buffer", "true", "expected a whole number, got true"),
    ("telegram", "drop_pending_updates", '"false please"', "expected true or false, got a string"),
    ("telegram", "poll_timeout", "2.5", "expected a whole number, got 2.5"),
    ("websocket", "token_in_query", "1", "expected true or false, got 1"),
    ("websocket", "event_buffer", "1.5", "expected a whole number, got 1.5"),
    ("whatsapp", "timeout", "true", "expected a finite number, got true"),
    ("whatsapp", "timeout", '"nan"', "expected a finite number, got a string"),
    ("websocket", "send_timeout", "false", "expected a finite number, got false"),
    ("whatsapp", "event_buffer", "-5", "options.event_buffer is -5; expected a whole number of"),
    ("whatsapp", "event_buffer", "0", "options.event_buffer is 0; expected"),
    ("websocket", "event_buffer", "70000", "options.event_buffer is 70000; expected"),
    ("websocket", "event_buffer", '"1000000000000000"', "events from 1 to 65536"),
    ("whatsapp", "timeout", "0", "options.timeout is 0.0; expected a number of seconds above 0"),
    ("whatsapp", "timeout", "-1", "options.timeout is -1.0; expected"),
    ("telegram", "poll_timeout", "1000000000", "options.poll_timeout is 1000000000; expected"),
    ("telegram", "poll_timeout", "-1", "whole number of seconds from 0 to 3600"),
]


@pytest.mark.parametrize(("provider", "key", "value", "words"), REFUSED)
def test_an_option_is_read_as_written_and_refused_at_its_path_in_its_reading_s_words(
    provider: str, key: str, value: str, words: str
) -> None:
    code, output = check(limited(provider, f"{key} = {value}\n"))
    assert code == 2, output
    [line] = [line for line in output.splitlines() if words in line]
    assert line.endswith(f" @ channels[0].options.{key}"), output  # one path: the file's
    assert "@ $.options" not in output and "Traceback" not in output
    assert "channel 'check'" not in output  # nor the stand-in channel check reads


TELEGRAM: Final = (
    '[ops]\npublic_url = "https://bots.example.test"\n\n'
    '[[channels]]\nid = "t"\nprovider = "telegram"\n'
    'credentials = { token = "${env:ACME_TELEGRAM_TOKEN}"%s }\n'
    "options = { %s }\n"
)
WEBHOOK_SECRET: Final = ', webhook_secret = "${env:ACME_TELEGRAM_WEBHOOK_SECRET}"'


@pytest.mark.parametrize(
    ("credential", "options", "refusal"),
    [
        ("", 'mode = "webhook"', "webhook mode needs a secret"),
        ("", 'mode = "webhook", webhook_secret = "${env:ACME_WA_APP_SECRET} x"', "1-256 char"),
        ("", 'mode = "webhook", webhook_secret = "${env:ACME_TELEGRAM_WEBHOOK_SECRET}"', None),
        (WEBHOOK_SECRET, 'mode = "webhook"', None),
    ],
    ids=["no-secret", "bad-option-secret", "option-secret", "credential-secret"],
)
def test_check_reads_telegram_s_webhook_secret_where_the_channel_will(
    credential: str, options: str, refusal: str | None
) -> None:
    # check stood in a secret for every channel, so it passed a webhook with none,
    # and never read one in the options, which the channel refused at open.
    code, output = check(TELEGRAM % (credential, options))
    if refusal is None:
        assert code == 0, output
    else:
        assert code == 2, output
        assert refusal in output
        assert "@ channels[0].options." in output
    assert ENV["ACME_WA_APP_SECRET"] not in output


def test_a_webhook_whose_secret_is_in_its_options_is_not_said_to_lack_one() -> None:
    # Another option's refusal had each option read alone: the webhook, read
    # without the secret written beside it, was said to need one.
    options = 'mode = "webhook", webhook_secret = "${env:ACME_TELEGRAM_WEBHOOK_SECRET}", '
    code, output = check(TELEGRAM % ("", options + "poll_timeout = 9999"))
    assert code == 2, output
    assert "@ channels[0].options.poll_timeout" in output
    assert "needs a secret" not in output and "1 problem" in output
    code, output = check(TELEGRAM % ("", 'mode = "webhook", webhook_secret = "not one"'))
    assert code == 2, output
    assert "1 problem" in output and "1-256 char" in output
    assert "@ channels[0].options.webhook_secret\n" in output


def test_a_provider_default_the_provider_refuses_is_named_there_once() -> None:
    # It was reported under every channel's options (the field only in the message):
    # a line per channel, ten thousand of them for a large node.
    text = "[emulators.websocket]\n\n[providers.websocket.options]\nping_interval = true\n"
    for n in range(3):
        text += f'\n[[channels]]\nid = "c{n}"\nprovider = "websocket"\nemulator = true\n'
    text += 'options = { token_in_query = "yes" }\n'  # the last channel's own, at its path
    code, output = check(text)
    assert code == 2, output
    assert output.count("@ providers.websocket.options.ping_interval\n") == 1, output
    assert output.count("@ channels[2].options.token_in_query\n") == 1, output
    assert "@ channels[0].options\n" not in output and "@ channels[1].options\n" not in output


@pytest.mark.parametrize(
    ("provider", "options"),
    [
        ("whatsapp", 'verify_on_open = false\nevent_buffer = 64.0\ntimeout = "2.5"\n'),
        ("telegram", 'drop_pending_updates = "false"\npoll_timeout = "25"\n'),
        ("websocket", "token_in_query = true\nevent_buffer = 16\n"),
    ],
)
def test_booleans_and_whole_numbers_as_toml_and_the_environment_write_them_pass(
    provider: str, options: str
) -> None:
    code, output = check(limited(provider, options))
    assert code == 0, output


def test_good_options_still_pass() -> None:
    code, output = check(DISCORD + 'intents = 33281\ncompress = "zlib-stream"\n')
    assert code == 0, output


def test_the_shipped_files_pass() -> None:
    for path in SHIPPED:
        code, output = check(path.read_text())
        assert code == 0, (path, output)
        for secret in ENV.values():
            assert secret not in output


# --- the property -----------------------------------------------------------------------------

_scalars = st.one_of(
    st.integers(),
    st.integers(min_value=10**300, max_value=10**320),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=20),
    st.sampled_from(
        [
            "all",
            "none",
            "webhook",
            "${env:NOPE}",
            "${env:NAME:-fallback}",
            "https://u:p@h/?access_token=t",
            "postgresql://u@h/d",
            "-1s",
            "30/s",
            "0",
            "",
        ]
    ),
)


class Raw(str):
    """A TOML literal written as it is (deep nesting the generator builds directly)."""


_hostile = st.one_of(
    st.integers(min_value=10**308, max_value=10**400),
    st.integers(min_value=30, max_value=600).map(lambda n: Raw("[" * n + "]" * n)),
    st.integers(min_value=30, max_value=600).map(lambda n: Raw("{a = " * n + "1" + "}" * n)),
)
_values = st.one_of(
    _hostile,
    st.recursive(
        _scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
        ),
        max_leaves=8,
    ),
)


def toml_value(value: object) -> str:
    """A TOML literal for a generated value (TOML's basic strings take JSON's escapes)."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    assert isinstance(value, dict)
    items = ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items())
    return "{ " + items + " }"


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """A shipped file with a few of its lines replaced, removed, repeated or added."""
    lines = draw(st.sampled_from(SHIPPED)).read_text().splitlines()
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        kind = draw(st.sampled_from(["value", "value", "value", "drop", "repeat", "add", "raw"]))
        settings_lines = [
            i for i, line in enumerate(lines) if "=" in line and not line.lstrip().startswith("#")
        ]
        if kind == "value" and settings_lines:
            index = draw(st.sampled_from(settings_lines))
            key = lines[index].split("=", 1)[0]
            lines[index] = f"{key}= {toml_value(draw(_values))}"
            continue
        index = draw(st.integers(min_value=0, max_value=max(len(lines) - 1, 0)))
        line = lines[index] if lines else ""
        if kind == "drop" and lines:
            del lines[index]
        elif kind == "repeat":
            lines.insert(index, line)
        elif kind == "add":
            key = draw(
                st.sampled_from(
                    [
                        *("provider", "options", "id", "base_url", "intents", "x", "rate"),
                        *("max_body_bytes", "max_message_bytes", "request_deadline"),
                    ]
                )
            )
            lines.insert(index, f"{key} = {toml_value(draw(_values))}")
        else:
            lines.insert(index, draw(st.text(max_size=30)))
    return "\n".join(lines) + "\n"


@settings(
    max_examples=int(os.environ.get("SWITCHBOARD_HYPOTHESIS_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(text=mutated())
def test_check_on_mutated_shipped_files_exits_0_or_2_without_a_traceback_or_secret(
    text: str,
) -> None:
    code, output = check(text)
    assert code in (0, 2), output
    assert "Traceback" not in output
    for secret in ENV.values():
        assert secret not in output, (secret, output)


@pytest.mark.parametrize("intents", ["all", True, -1, 1.5])
async def test_discord_refuses_bad_intents_at_open_as_fatal_not_a_crash(intents: object) -> None:
    """``int("all")`` used to escape as a ValueError: a crash on every restart."""
    from providers.base import ChannelConfig, FatalError
    from providers.discord import DiscordProvider

    config = ChannelConfig(
        channel_id="d",
        provider="discord",
        credentials={"token": "discord-token"},
        base_url="http://127.0.0.1:9",  # never reached: the options are read first
        options={"intents": intents},
    )
    with trio.fail_after(10), pytest.raises(FatalError, match=r"options\.intents is"):
        async with DiscordProvider().open_connection(config):
            raise AssertionError("opened with bad intents")


def _telegram(options: dict[str, object]) -> object:
    return telegram_options(options, {})


def _whatsapp(options: dict[str, object]) -> object:
    credentials = {"token": "t", "app_secret": "s", "verify_token": "v"}
    config = ChannelConfig(
        channel_id="wa",
        tenant="acme",
        provider="whatsapp",
        credentials=credentials,
        options={"phone_number_id": "123", **options},
    )
    return WhatsAppSettings.from_config(config)


@pytest.mark.parametrize(
    ("read", "options"),
    [
        (_telegram, {"request_deadline": math.inf}),
        (_telegram, {"max_body_bytes": 2**31}),
        (_whatsapp, {"request_deadline": math.inf}),
        (_whatsapp, {"max_body_bytes": 2**31}),
        (websocket_options, {"max_message_bytes": 2**31}),
        (websocket_options, {"event_buffer": 10**6}),
        (_whatsapp, {"event_buffer": -1}),
        (_whatsapp, {"timeout": 0}),
        (_telegram, {"poll_timeout": 10**6}),
    ],
)
def test_an_embedding_program_s_limit_options_meet_the_same_bounds(
    read: Callable[[dict[str, object]], object], options: dict[str, object]
) -> None:
    # No `switchboard check` reads options built in code: the providers hold
    # them to the bounds themselves (an infinite deadline undoes the cap).
    (key,) = options
    with pytest.raises(FatalError, match=key):
        read(options)
