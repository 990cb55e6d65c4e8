"""The deployment-file loader: every section, every kind of problem, secrets kept out of errors."""

from __future__ import annotations

import re
import textwrap
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest

import runtime.config
from runtime.config import (
    BackoffConfig,
    ChannelSpec,
    ConfigError,
    ConfigProblem,
    EmulatorConfig,
    LoggingConfig,
    NodeConfig,
    NodeSection,
    OpsConfig,
    ProfilingConfig,
    ProviderDefaults,
    RateLimitConfig,
    RestartBackoffConfig,
    StorageConfig,
    SupervisorConfig,
    load_config,
    parse_config,
)

REPO: Path = Path(__file__).resolve().parent.parent
URL_RULES = "with a port from 0 to 65535, and ? # / @ : in a password percent-encoded"

FULL = """
[node]
id = "node-1"
drain_deadline = "20s"
start_timeout = "15s"

[storage]
backend = "postgres"
dsn = "postgresql://sb:${env:PG_PASSWORD}@db:5432/sb"
schema = "sb_test"
batch_size = 1000
flush_interval = "250ms"
checkpoint_interval = "2.5s"

[ops]
enabled = true
host = "0.0.0.0"
port = "${env:OPS_PORT}"
public_url = "https://hooks.example.com"
api_token = "${env:API_TOKEN}"

[profiling]
pyroscope_url = "http://pyroscope:4040"
application_name = "sb"
tags = { region = "eu", zone = "${env:ZONE}" }
sample_rate = 50
auth_token = "${env:PYROSCOPE_TOKEN}"

[logging]
level = "debug"
format = "json"
inbound = true

[supervisor]
intensity = 0
period = "5s"
shutdown = "2500ms"
restart_backoff = { base = "0.5s", cap = "1m", random_factor = 1 }

[providers.telegram]
max_connections = 0
base_url = "https://telegram.example/api"
send_attempts = 3
liveness_timeout = "1m30s"
options = { poll_timeout = 25 }
backoff = { base = "1s", cap = "60s", reset_after = "30s", max_attempts = 10 }

[providers.telegram.rate_limit]
per_channel_rate = "30/s"
per_channel_burst = 30
per_peer_rate = "60/min"
per_peer_burst = 3
max_text_length = 4096

[providers.whatsapp.options]
phone_number_id = "10001"

[emulators.telegram]
host = "127.0.0.1"
port = 8081
options = { bot_rate = 40 }

[[channels]]
id = "tg.support-1"
tenant = "acme"
provider = "telegram"
credentials = { token = "${env:TELEGRAM_TOKEN}" }
options = { mode = "webhook", webhook_secret = "${env:TG_HOOK_SECRET}" }
rate_limit = { per_channel_rate = "20/s", enabled = false }
backoff = { cap = "2m" }
send_attempts = 5
liveness_timeout = "45.5s"

[[channels]]
id = "tg-local"
provider = "telegram"
emulator = true
enabled = false

[[channels]]
id = "wa_1"
provider = "whatsapp"
base_url = "http://127.0.0.1:9000"

[channels.credentials]
token = "${env:WA_TOKEN}"
app_secret = "${env:WA_APP_SECRET}"
verify_token = "${env:WA_VERIFY}"

[[channels]]
id = "ws"
provider = "websocket"
base_url = "wss://chat.example/ws"

[[channels]]
id = "sim"
provider = "simulated"
"""

FULL_ENV = {
    "PG_PASSWORD": "pg-pass-123",
    "OPS_PORT": "9100",
    "API_TOKEN": "api-token-456",
    "ZONE": "eu-1a",
    "PYROSCOPE_TOKEN": "pyro-token-789",
    "TELEGRAM_TOKEN": "123:tg-token",
    "TG_HOOK_SECRET": "hook-secret-000",
    "WA_TOKEN": "wa-token-111",
    "WA_APP_SECRET": "wa-app-secret-222",
    "WA_VERIFY": "wa-verify-333",
}

SIM = '[[channels]]\nid = "sim"\nprovider = "simulated"\n'
TG = '[[channels]]\nid = "tg"\nprovider = "telegram"\ncredentials = { token = "${env:TG}" }\n'
TG_ENV = {"TG": "tg-secret-value"}


def problems(text: str, env: Mapping[str, str] | None = None) -> list[str]:
    """The problems of a file that must be invalid, as their ``str``."""
    with pytest.raises(ConfigError) as caught:
        parse_config(textwrap.dedent(text), env=env or {})
    assert caught.value.source == "<string>"
    assert all(isinstance(problem, ConfigProblem) for problem in caught.value.problems)
    return [str(problem) for problem in caught.value.problems]


# --- valid files ----------------------------------------------------------------------


def test_every_section_of_a_full_file_is_read() -> None:
    config = parse_config(FULL, source="full.toml", env=FULL_ENV)

    expected = NodeConfig(
        node=NodeSection(id="node-1", drain_deadline=20.0, start_timeout=15.0),
        storage=StorageConfig(
            backend="postgres",
            dsn="postgresql://sb:pg-pass-123@db:5432/sb",
            schema="sb_test",
            batch_size=1000,
            flush_interval=0.25,
            checkpoint_interval=2.5,
        ),
        ops=OpsConfig(
            enabled=True,
            host="0.0.0.0",
            port=9100,
            public_url="https://hooks.example.com",
            api_token="api-token-456",
        ),
        profiling=ProfilingConfig(
            pyroscope_url="http://pyroscope:4040",
            application_name="sb",
            tags={"region": "eu", "zone": "eu-1a"},
            sample_rate=50,
            auth_token="pyro-token-789",
        ),
        logging=LoggingConfig(level="debug", format="json", inbound=True),
        supervisor=SupervisorConfig(
            intensity=0,
            period=5.0,
            shutdown=2.5,
            restart_backoff=RestartBackoffConfig(base=0.5, cap=60.0, random_factor=1.0),
        ),
        providers={
            "telegram": ProviderDefaults(
                max_connections=0,
                base_url="https://telegram.example/api",
                send_attempts=3,
                liveness_timeout=90.0,
                options={"poll_timeout": 25},
                rate_limit=RateLimitConfig(
                    per_channel_rate=30.0,
                    per_channel_burst=30,
                    per_peer_rate=1.0,
                    per_peer_burst=3,
                    max_text_length=4096,
                ),
                backoff=BackoffConfig(base=1.0, cap=60.0, reset_after=30.0, max_attempts=10),
            ),
            "whatsapp": ProviderDefaults(options={"phone_number_id": "10001"}),
        },
        emulators={
            "telegram": EmulatorConfig(host="127.0.0.1", port=8081, options={"bot_rate": 40})
        },
        channels=[
            ChannelSpec(
                id="tg.support-1",
                tenant="acme",
                provider="telegram",
                credentials={"token": "123:tg-token"},
                options={"mode": "webhook", "webhook_secret": "hook-secret-000"},
                rate_limit=RateLimitConfig(per_channel_rate=20.0, enabled=False),
                backoff=BackoffConfig(cap=120.0),
                send_attempts=5,
                liveness_timeout=45.5,
            ),
            ChannelSpec(id="tg-local", provider="telegram", emulator=True, enabled=False),
            ChannelSpec(
                id="wa_1",
                provider="whatsapp",
                base_url="http://127.0.0.1:9000",
                credentials={
                    "token": "wa-token-111",
                    "app_secret": "wa-app-secret-222",
                    "verify_token": "wa-verify-333",
                },
            ),
            ChannelSpec(id="ws", provider="websocket", base_url="wss://chat.example/ws"),
            ChannelSpec(id="sim", provider="simulated"),
        ],
        source="full.toml",
        resolved_secrets=(
            "pg-pass-123",
            "api-token-456",
            "pyro-token-789",
            "123:tg-token",
            "hook-secret-000",
            "wa-token-111",
            "wa-app-secret-222",
            "wa-verify-333",
        ),
    )
    assert config == expected
    # Types are the declared ones, not merely equal (1 == 1.0, "9100" != 9100).
    assert type(config.node.start_timeout) is float
    assert type(config.ops.port) is int
    assert type(config.supervisor.restart_backoff.random_factor) is float


def test_secrets_lists_every_secret_including_resolved_parts() -> None:
    config = parse_config(FULL, env=FULL_ENV)
    secrets = config.secrets()
    # Whole secret fields, and each environment value resolved inside one.
    assert "postgresql://sb:pg-pass-123@db:5432/sb" in secrets
    assert "pg-pass-123" in secrets
    assert "hook-secret-000" in secrets  # options.webhook_secret: named like a secret
    assert set(FULL_ENV.values()) - set(secrets) == {"9100", "eu-1a"}  # port and zone are not
    assert len(secrets) == len(set(secrets))
    # and none of them in the repr
    text = repr(config)
    assert not [secret for secret in secrets if secret in text and secret != "hook-secret-000"]


def test_the_pieces_of_a_dsn_password_written_without_escapes_are_secrets_to_the_logs() -> None:
    # The URL parser reads "1234/Tr0ub4dorX" as a port and a database: its
    # pieces reach its errors, and only the whole DSN was known to the logs.
    from runtime.telemetry.redaction import Redactor

    dsn = "postgresql://sb:1234/Tr0ub4dorX@db.example/sb"
    config = parse_config({"storage": {"backend": "postgres", "dsn": dsn}}, env={})
    line = "could not connect to sb:1234/Tr0ub4dorX@db.example (Tr0ub4dorX@db.example)"
    assert "Tr0ub4dorX" not in Redactor(config.secrets()).scrub(line)


def test_an_empty_file_is_refused_and_an_empty_table_is_all_defaults() -> None:
    with pytest.raises(ConfigError, match="the file has no settings"):
        parse_config("# only a comment\n", env={})
    assert parse_config({}, source="inline", env={}) == NodeConfig(source="inline")


def test_a_minimal_channel_gets_the_defaults() -> None:
    config = parse_config(SIM, env={})
    assert config.channels == [ChannelSpec(id="sim", provider="simulated")]
    channel = config.channels[0]
    assert (channel.tenant, channel.enabled, channel.emulator) == ("default", True, False)
    assert channel.rate_limit is None and channel.backoff is None
    assert config.storage.backend == "memory" and config.ops.port == 8321


def test_load_config_reads_a_file_and_names_it(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(TG, encoding="utf-8")
    config = load_config(path, env=TG_ENV)
    assert config.source == str(path)
    assert config.channels[0].credentials == {"token": "tg-secret-value"}
    assert config.resolved_secrets == ("tg-secret-value",)


def test_load_config_uses_the_process_environment_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "node.toml"
    path.write_text(TG, encoding="utf-8")
    monkeypatch.setenv("TG", "from-os-environ")
    assert load_config(str(path)).channels[0].credentials["token"] == "from-os-environ"


def test_a_mapping_is_checked_like_a_file() -> None:
    data: dict[str, Any] = {"ops": {"port": 70000}, "channels": [{"id": "x"}]}
    with pytest.raises(ConfigError) as caught:
        parse_config(data, source="api", env={})
    assert caught.value.source == "api"
    assert [str(problem) for problem in caught.value.problems] == [
        "expected a port number from 0 to 65535, got 70000 @ ops.port",
        'missing required key "provider" @ channels[0]',
    ]
    assert data == {"ops": {"port": 70000}, "channels": [{"id": "x"}]}  # not modified


# --- environment references --------------------------------------------------------


def test_references_resolve_in_every_string() -> None:
    config = parse_config(
        """
        [ops]
        port = "${env:PORT}"
        enabled = "${env:ON}"
        public_url = "https://${env:HOST}:8443/hooks"
        [emulators.telegram]
        [providers.simulated.options]
        greeting = ["hi ${env:WHO}", { nested = "${env:WHO}${env:WHO}" }]
        [[channels]]
        id = "${env:ID}"
        provider = "telegram"
        emulator = true
        base_url = "http://${env:HOST}"
        rate_limit = { per_channel_rate = "${env:RATE}" }
        """,
        env={"PORT": "8080", "ON": "false", "HOST": "h", "WHO": "w", "ID": "c1", "RATE": "2.5"},
    )
    assert (config.ops.port, config.ops.enabled) == (8080, False)
    assert config.ops.public_url == "https://h:8443/hooks"
    assert config.providers["simulated"].options == {"greeting": ["hi w", {"nested": "ww"}]}
    channel = config.channels[0]
    assert (channel.id, channel.base_url) == ("c1", "http://h")
    assert channel.rate_limit == RateLimitConfig(per_channel_rate=2.5)
    assert config.resolved_secrets == ()  # nothing resolved inside a secret field


def test_a_doubled_dollar_escapes_a_reference() -> None:
    config = parse_config(
        '[profiling.tags]\nliteral = "$${env:HOME} costs $$5 and $${x"\n', env={"HOME": "/root"}
    )
    assert config.profiling.tags == {"literal": "${env:HOME} costs $$5 and ${x"}


def test_an_escaped_reference_does_not_make_a_secret_a_reference() -> None:
    assert problems(TG.replace("${env:TG}", "$${env:TG}")) == [
        'secrets must not be written in the file; use "${env:NAME}" @ channels[0].credentials.token'
    ]


@pytest.mark.parametrize(
    ("value", "env", "message"),
    [
        ("${env:TG}", {}, "environment variable TG is not set"),
        ("${env:TG}", {"TG": ""}, "environment variable TG is set but empty"),
        ("Bot ${env:TG} ${env:OTHER}", {"TG": "x"}, "environment variable OTHER is not set"),
        (
            "${env:}",
            {},
            'malformed reference: NAME in "${env:NAME}" is letters, digits and "_", '
            "not starting with a digit",
        ),
        (
            "${foo:TG}",
            {},
            'unknown reference: write "${env:NAME}" (or "$${" for a literal "${")',
        ),
        (
            "${env:TG",
            {"TG": "x"},
            'unclosed "${": write "${env:NAME}" (or "$${" for a literal "${")',
        ),
    ],
)
def test_bad_references_in_a_secret_field(value: str, env: dict[str, str], message: str) -> None:
    # In a secret field even a malformed reference is not quoted: it may hold part of a secret.
    text = TG.replace("${env:TG}", value)
    assert problems(text, env) == [f"{message} @ channels[0].credentials.token"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("${env:}", 'malformed reference "${env:}": NAME in "${env:NAME}" is letters,'),
        ("${env:9LIVES}", 'malformed reference "${env:9LIVES}": NAME in'),
        ("${vault:db/pw}", 'unknown reference "${vault:db/pw}": write "${env:NAME}"'),
        ("http://${env:HOST", 'unclosed "${": write'),
    ],
)
def test_bad_references_elsewhere_are_quoted(value: str, message: str) -> None:
    [problem] = problems(f'[ops]\npublic_url = "{value}"\n')
    assert problem.startswith(message)
    assert problem.endswith(" @ ops.public_url")


def test_a_failed_reference_is_one_problem_not_three() -> None:
    # The value stays as written; its type error, its unknown provider ... would be noise.
    text = """
        [ops]
        port = "${env:PORT}"
        [[channels]]
        id = "${env:ID}"
        provider = "${env:PROVIDER}"
    """
    assert problems(text, {"PORT": ""}) == [
        "environment variable PORT is set but empty @ ops.port",
        "environment variable ID is not set @ channels[0].id",
        "environment variable PROVIDER is not set @ channels[0].provider",
    ]


def test_a_blank_api_token_is_refused_when_the_file_is_checked() -> None:
    # Whitespace only: check said ok, and run failed later in the ops server's start.
    assert problems('[ops]\napi_token = "${env:SB_API}"\n', {"SB_API": "   "}) == [
        "expected a non-empty string with no whitespace around it and no control characters"
        " @ ops.api_token"  # (a secret: its value not shown)
    ]


# --- secrets --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "path"),
    [
        (
            '[storage]\ndsn = "${env:X}"\n[ops]\napi_token = "s3cr3t-v4lue"\n',
            "ops.api_token",
        ),
        ('[profiling]\nauth_token = "s3cr3t-v4lue"\n', "profiling.auth_token"),
        (TG.replace("${env:TG}", "s3cr3t-v4lue"), "channels[0].credentials.token"),
        (SIM + 'credentials = { anything = "s3cr3t-v4lue" }\n', "channels[0].credentials.anything"),
        ('[storage]\ndsn = "s3cr3t-v4lue"\n', None),  # no password part: see the next test
    ],
)
def test_a_literal_secret_is_refused_without_echoing_it(text: str, path: str | None) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, env={"X": "postgresql://db/x"})
    report = str(caught.value)
    assert "s3cr3t-v4lue" not in report
    if path is None:
        assert [str(p) for p in caught.value.problems] == [
            f"expected a postgresql:// URL ({URL_RULES}) @ storage.dsn"
        ]
    else:
        assert [str(p) for p in caught.value.problems] == [
            f'secrets must not be written in the file; use "${{env:NAME}}" @ {path}'
        ]


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://postgres@127.0.0.1/test",
        "postgres://sb@db:5432/sb?sslmode=require",
        "postgresql://sb:${env:PG_PASSWORD}@db/sb",
        "postgresql://sb@db/sb?password=${env:PG_PASSWORD}",
        "${env:DATABASE_URL}",
    ],
)
def test_a_dsn_may_be_literal_when_its_password_is_not(dsn: str) -> None:
    env = {"PG_PASSWORD": "pw-1", "DATABASE_URL": "postgresql://u:pw-2@db/x"}
    config = parse_config(f'[storage]\nbackend = "postgres"\ndsn = "{dsn}"\n', env=env)
    assert config.storage.dsn is not None and config.storage.dsn.startswith("postgres")
    assert "${" not in config.storage.dsn


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://sb:hunter2@db/sb",
        "postgresql://sb:hunter2@${env:HOST}/sb",
        "postgresql://sb@${env:HOST}/sb?password=hunter2",
    ],
)
def test_a_literal_password_in_a_dsn_is_refused(dsn: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(f'[storage]\nbackend = "postgres"\ndsn = "{dsn}"\n', env={"HOST": "db"})
    assert "hunter2" not in str(caught.value)
    assert [p.path for p in caught.value.problems] == ["storage.dsn"]
    assert caught.value.problems[0].message.startswith(
        "passwords must not be written in the file; use a reference for the password"
    )


def test_secret_values_never_appear_in_the_error() -> None:
    # PW is valid inside a DSN but not as a channel id, where it gets quoted (and scrubbed).
    env = {"TOKEN": "tok-abcdef-123", "PW": "pw zyxwvu 987", "SHORT": "ab"}
    text = """
        [storage]
        dsn = "postgresql://u:${env:PW}@db:notaport/x"
        [ops]
        port = "${env:TOKEN}"
        host = 12345678
        api_token = ["tok-in-a-list-42"]
        [profiling]
        auth_token = "${env:SHORT}"
        sample_rate = "${env:SHORT}"
        [[channels]]
        id = "c"
        provider = "discord"
        credentials = { token = 31415926, other = 9876543210 }
        [[channels]]
        id = "d"
        provider = "discord"
        credentials = "whole-table-as-a-string-77"
        [[channels]]
        id = "e"
        provider = "simulated"
        credentials = { token = "${env:TOKEN}" }
        options = { webhook_secret = 271828 }
        [[channels]]
        id = "${env:PW}"
        provider = "simulated"
    """
    with pytest.raises(ConfigError) as caught:
        parse_config(textwrap.dedent(text), env=env)
    report = str(caught.value)
    for secret in (
        "tok-abcdef-123",
        "zyxwvu",
        "9876543210",
        "tok-in-a-list-42",
        "31415926",
        "whole-table-as-a-string-77",
        "271828",
        '"ab"',
    ):
        assert secret not in report, secret
    lines = [line.strip() for line in report.splitlines()[1:]]
    assert "expected a string, got 12345678 @ ops.host" in lines  # not a secret: quoted
    assert "expected a string @ ops.api_token" in lines  # a secret: not even its kind
    assert 'expected an integer, got "<secret>" @ ops.port' in lines
    assert 'expected an integer, got "<secret>" @ profiling.sample_rate' in lines
    assert "expected a string @ channels[0].credentials.token" in lines
    assert "expected a string @ channels[0].credentials.other" in lines
    assert "expected a table @ channels[1].credentials" in lines
    assert (
        "expected 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit, "
        'got "<secret>" @ channels[3].id'
    ) in lines


# --- problems, one kind at a time ------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # types
        ('[ops]\nport = "abc"\n', 'expected an integer, got "abc" @ ops.port'),
        ("[ops]\nport = 80.5\n", "expected an integer, got 80.5 @ ops.port"),
        ("[ops]\nport = true\n", "expected an integer, got true @ ops.port"),
        ('[ops]\nport = "--5"\n', 'expected an integer, got "--5" @ ops.port'),
        ('[ops]\nport = "\u00b2"\n', 'expected an integer, got "\u00b2" @ ops.port'),
        ('[ops]\nenabled = "yes"\n', 'expected true or false, got "yes" @ ops.enabled'),
        ("[ops]\nhost = 127\n", "expected a string, got 127 @ ops.host"),
        (
            '[node]\ndrain_deadline = "soon"\n',
            'expected a duration such as "10s", "250ms", "2m" or "1h", got "soon" '
            "@ node.drain_deadline",
        ),
        (
            "[node]\ndrain_deadline = nan\n",
            'expected a duration such as "10s", "250ms", "2m" or "1h", got nan '
            "@ node.drain_deadline",
        ),
        (
            "[node]\ndrain_deadline = inf\n",
            'expected a duration such as "10s", "250ms", "2m" or "1h", got inf '
            "@ node.drain_deadline",
        ),
        (
            "[node]\nstart_timeout = false\n",
            'expected a duration such as "10s", "250ms", "2m" or "1h", got false '
            "@ node.start_timeout",
        ),
        (
            '[storage]\nbackend = "mongodb"\n',
            'expected one of "memory", "sqlite", "postgres", got "mongodb" @ storage.backend',
        ),
        (
            '[logging]\nlevel = "INFO"\n',
            'expected one of "debug", "info", "warning", "error", got "INFO" @ logging.level',
        ),
        ("node = 5\n", "expected a table, got 5 @ node"),
        ('[[node]]\nid = "x"\n', "expected a table, got an array @ node"),
        ('channels = { id = "x" }\n', "expected an array, got a table @ channels"),
        ('channels = ["x"]\n', 'expected a table, got "x" @ channels[0]'),
        ("providers = [1]\n", "expected a table, got an array @ providers"),
        ("[providers]\ntelegram = 1\n", "expected a table, got 1 @ providers.telegram"),
        ("[profiling]\ntags = { a = 1 }\n", "expected a string, got 1 @ profiling.tags.a"),
        ('[profiling]\ntags = { "a b" = 1 }\n', 'expected a string, got 1 @ profiling.tags."a b"'),
        (SIM + "options = 3\n", "expected a table, got 3 @ channels[0].options"),
        (SIM + "rate_limit = 3\n", "expected a table, got 3 @ channels[0].rate_limit"),
        ("[node]\nid = 1979-05-27\n", "expected a string, got a date @ node.id"),
        # required keys
        ('[[channels]]\nprovider = "simulated"\n', 'missing required key "id" @ channels[0]'),
        ('[[channels]]\nid = "x"\n', 'missing required key "provider" @ channels[0]'),
        # ranges
        (
            SIM + "rate_limit = { per_channel_rate = 0 }\n",
            "expected a positive number, got 0 @ channels[0].rate_limit.per_channel_rate",
        ),
        (
            SIM + "rate_limit = { per_channel_burst = 0 }\n",
            "expected an integer >= 1, got 0 @ channels[0].rate_limit.per_channel_burst",
        ),
        (
            SIM + "rate_limit = { max_text_length = 0 }\n",
            "expected an integer >= 1, got 0 @ channels[0].rate_limit.max_text_length",
        ),
        (
            SIM + "backoff = { reset_after = -1.5 }\n",
            "expected a positive number, got -1.5 @ channels[0].backoff.reset_after",
        ),
        (
            SIM + "backoff = { max_attempts = 0 }\n",
            "expected an integer >= 1, got 0 @ channels[0].backoff.max_attempts",
        ),
        (
            SIM + "send_attempts = 0\n",
            "expected an integer >= 1, got 0 @ channels[0].send_attempts",
        ),
        (
            SIM + "liveness_timeout = -5\n",
            "expected a positive number, got -5 @ channels[0].liveness_timeout",
        ),
        ("[ops]\nport = 65536\n", "expected a port number from 0 to 65535, got 65536 @ ops.port"),
        ("[ops]\nport = -1\n", "expected a port number from 0 to 65535, got -1 @ ops.port"),
        (
            "[emulators.discord]\nport = 99999\n",
            "expected a port number from 0 to 65535, got 99999 @ emulators.discord.port",
        ),
        (
            "[supervisor]\nintensity = -1\n",
            "expected an integer >= 0, got -1 @ supervisor.intensity",
        ),
        ("[supervisor]\nperiod = 0\n", "expected a positive number, got 0 @ supervisor.period"),
        (
            "[supervisor]\nshutdown = 0.0\n",
            "expected a positive number, got 0.0 @ supervisor.shutdown",
        ),
        (
            "[supervisor.restart_backoff]\nrandom_factor = 1.5\n",
            "expected a number from 0 to 1, got 1.5 @ supervisor.restart_backoff.random_factor",
        ),
        (
            "[supervisor.restart_backoff]\nbase = 0\n",
            "expected a positive number, got 0 @ supervisor.restart_backoff.base",
        ),
        (
            "[providers.telegram]\nmax_connections = -1\n",
            "expected an integer >= 0, got -1 @ providers.telegram.max_connections",
        ),
        (
            "[providers.telegram]\nsend_attempts = 0\n",
            "expected an integer >= 1, got 0 @ providers.telegram.send_attempts",
        ),
        (
            "[profiling]\nsample_rate = 0\n",
            "expected an integer >= 1, got 0 @ profiling.sample_rate",
        ),
        ("[storage]\nbatch_size = 0\n", "expected an integer >= 1, got 0 @ storage.batch_size"),
        (
            "[storage]\nflush_interval = 0\n",
            "expected a positive number, got 0 @ storage.flush_interval",
        ),
        (
            '[storage]\nschema = "sb; drop"\n',
            "expected an SQL name (letters, digits and '_', not starting with a digit), "
            'got "sb; drop" @ storage.schema',
        ),
        (
            '[ops]\npublic_url = "hooks.example.com"\n',
            'expected an http:// or https:// URL, got "hooks.example.com" @ ops.public_url',
        ),
        (
            SIM + 'base_url = "ftp://x"\n',
            'expected an http(s):// or ws(s):// URL, got "ftp://x" @ channels[0].base_url',
        ),
        (
            '[[channels]]\nid = "-x"\nprovider = "simulated"\n',
            "expected 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit, "
            'got "-x" @ channels[0].id',
        ),
        (
            f'[[channels]]\nid = "{"a" * 65}"\nprovider = "simulated"\n',
            "expected 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit, "
            f'got "{"a" * 65}" @ channels[0].id',
        ),
        (
            SIM + 'tenant = " "\n',
            'expected a non-empty string with no NUL character, got " " @ channels[0].tenant',
        ),
        # cross-field
        (
            '[storage]\nbackend = "postgres"\n',
            'missing "dsn": backend "postgres" needs one; add dsn = "${env:NAME}" @ storage',
        ),
        (
            '[[channels]]\nid = "x"\nprovider = "telegram"\nemulator = true\n',
            "emulator = true needs an [emulators.telegram] table @ channels[0].emulator",
        ),
        (
            SIM + "emulator = true\n",
            "the simulated provider has no emulator; remove emulator = true @ channels[0].emulator",
        ),
        (
            "[emulators.simulated]\n",
            "the simulated provider has no emulator (it needs none); remove this table "
            "@ emulators.simulated",
        ),
        (
            "[supervisor.restart_backoff]\ncap = 0.05\n",
            "cap (0.05) is below base (0.1): the longest delay cannot be shorter than the first "
            "@ supervisor.restart_backoff",
        ),
        (
            "[providers.discord.backoff]\nbase = 10\ncap = 5\n",
            "base (10) is above cap (5): the longest wait cannot be shorter than the first "
            "@ providers.discord.backoff",
        ),
        (
            "[providers.discord.rate_limit]\nper_channel_burst = 5\nper_peer_burst = 6\n",
            "per_peer_burst (6) is above per_channel_burst (5): no peer gets a larger burst "
            "than the channel "
            "@ providers.discord.rate_limit",
        ),
    ],
)
def test_one_problem(text: str, expected: str) -> None:
    assert problems(text) == [expected]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("nodes = 1\n", 'unknown key "nodes"; did you mean "node"?'),  # "" is the top
        ('source = "x"\n', 'unknown key "source"; did you mean "storage"?'),
        (
            "resolved_secrets = []\n",
            'unknown key "resolved_secrets"; expected one of "admin", "channels", ',
        ),
        (
            "[node]\ndrain_deadlin = 1\n",
            'unknown key "drain_deadlin"; did you mean "drain_deadline"? @ node',
        ),
        (
            SIM + "rate_limit = { per_channel_rte = 3 }\n",
            'unknown key "per_channel_rte"; did you mean "per_channel_rate"? '
            "@ channels[0].rate_limit",
        ),
        (SIM + 'tennant = "a"\n', 'unknown key "tennant"; did you mean "tenant"? @ channels[0]'),
        (
            "[providers.telegram]\nmax_conections = 2\n",
            'unknown key "max_conections"; did you mean "max_connections"? @ providers.telegram',
        ),
        (
            "[providers.telegram.backoff]\ncapp = 2\n",
            'unknown key "capp"; did you mean "cap"? @ providers.telegram.backoff',
        ),
        (
            "[emulators.telegram]\nprot = 1\n",
            'unknown key "prot"; did you mean "port"? @ emulators.telegram',
        ),
        (
            "[supervisor.restart_backoff]\ncapp = 1\n",
            'unknown key "capp"; did you mean "cap"? @ supervisor.restart_backoff',
        ),
        (
            "[ops]\nzzz = 1\n",
            'unknown key "zzz"; expected one of "api_token", "certfile", "enabled", "host", '
            '"keyfile", "port", "public_url" @ ops',
        ),
        (
            "[providers.telgram]\n",
            'unknown provider "telgram"; did you mean "telegram"? @ providers.telgram',
        ),
        (
            "[emulators.discrod]\n",
            'unknown emulator "discrod"; did you mean "discord"? @ emulators.discrod',
        ),
        (
            '[[channels]]\nid = "x"\nprovider = "whatsap"\n',
            'unknown provider "whatsap"; did you mean "whatsapp"? @ channels[0].provider',
        ),
        (
            '[[channels]]\nid = "x"\nprovider = "irc"\n',
            'unknown provider "irc"; expected one of "discord", "simulated", "telegram", '
            '"websocket", "whatsapp" @ channels[0].provider',
        ),
        (
            TG.replace("token =", "tokn ="),
            'unknown credential "tokn"; did you mean "token"? @ channels[0].credentials',
        ),
    ],
)
def test_unknown_names_are_refused_with_the_closest_valid_one(text: str, expected: str) -> None:
    found = problems(text, TG_ENV)
    assert found[0].startswith(expected)


@pytest.mark.parametrize(
    ("provider", "credentials", "expected"),
    [
        ("discord", "", ['missing credential "token" (the bot token); add token = "${env:NAME}"']),
        (
            "telegram",
            "",
            [
                'missing credential "token" (the bot token from @BotFather); '
                'add token = "${env:NAME}"'
            ],
        ),
        (
            "whatsapp",
            'credentials = { token = "${env:T}" }',
            [
                # The options table is not written: its problem sorts at the channel's start.
                'missing option "phone_number_id" (the Cloud API phone number id); '
                "set it in the channel's options or in [providers.whatsapp.options]",
                'missing credential "app_secret" (the Meta app secret); '
                'add app_secret = "${env:NAME}"',
                'missing credential "verify_token" (the webhook verify token); '
                'add verify_token = "${env:NAME}"',
            ],
        ),
        ("websocket", "", []),
        ("simulated", 'credentials = { whatever = "${env:T}" }', []),
    ],
)
def test_required_credentials(provider: str, credentials: str, expected: list[str]) -> None:
    text = f'[[channels]]\nid = "c"\nprovider = "{provider}"\n{credentials}\n'
    if not expected:
        assert parse_config(text, env={"T": "t"}).channels[0].provider == provider
        return
    found = problems(text, {"T": "t"})
    assert [problem.rsplit(" @ ", 1)[0] for problem in found] == expected
    assert {problem.rsplit(" @ ", 1)[1] for problem in found} <= {
        "channels[0].credentials",
        "channels[0].options",
    }


@pytest.mark.parametrize(
    ("provider", "key", "value", "complaint"),
    [
        ("telegram", "token", "123:abc\n", "whitespace at its start or end"),
        ("discord", "token", " abc", "whitespace at its start or end"),
        ("whatsapp", "app_secret", "abc\t", "whitespace at its start or end"),
        ("telegram", "webhook_secret", "not ok!", "1-256 characters of A-Z"),
        ("telegram", "webhook_secret", "x" * 257, "1-256 characters of A-Z"),
    ],
)
def test_a_credential_the_platform_would_refuse_is_found_by_check(
    provider: str, key: str, value: str, complaint: str
) -> None:
    # Before, check said ok and the channel failed at its first connect
    # (a Telegram secret's refusal named options.webhook_secret).
    needed = {
        "discord": ["token"],
        "telegram": ["token"],
        "whatsapp": ["token", "app_secret", "verify_token"],
    }[provider]
    names = dict.fromkeys(needed, "good-value")
    names[key] = value
    env = {f"V{i}": v for i, v in enumerate(names.values())}
    refs = ", ".join(f'{k} = "${{env:V{i}}}"' for i, k in enumerate(names))
    options = 'options = { phone_number_id = "1" }\n' if provider == "whatsapp" else ""
    text = f'[[channels]]\nid = "c"\nprovider = "{provider}"\ncredentials = {{ {refs} }}\n{options}'
    (found,) = problems(text, env)
    assert complaint in found
    assert found.endswith(f"@ channels[0].credentials.{key}")
    assert value.strip() not in found or not value.strip()  # the value is never quoted
    names[key] = value.strip() if complaint.startswith("whitespace") else "fine_secret-1"
    env = {f"V{i}": v for i, v in enumerate(names.values())}
    assert parse_config(text, env=env).channels[0].provider == provider


def test_telegram_refuses_a_bad_webhook_secret_in_the_credentials_by_its_place() -> None:
    from providers.base import FatalError
    from providers.telegram.core import parse_options

    with pytest.raises(FatalError, match=r"credentials\.webhook_secret is refused"):
        parse_options({"mode": "webhook"}, {"webhook_secret": "not ok!"})
    assert parse_options({"mode": "webhook"}, {"webhook_secret": "ok_1"}).webhook_secret == "ok_1"


def test_emulated_channels_need_no_credentials_and_defaults_can_supply_options() -> None:
    config = parse_config(
        """
        [emulators.whatsapp]
        [providers.whatsapp.options]
        phone_number_id = "1"
        [[channels]]
        id = "emulated"
        provider = "whatsapp"
        emulator = true
        [[channels]]
        id = "real"
        provider = "whatsapp"
        credentials = { token = "${env:A}", app_secret = "${env:B}", verify_token = "${env:C}" }
        """,
        env={"A": "a-1", "B": "b-2", "C": "c-3"},
    )
    assert [channel.id for channel in config.channels] == ["emulated", "real"]


def test_limits_are_checked_after_merging_provider_defaults() -> None:
    text = """
        [providers.telegram.rate_limit]
        per_channel_rate = 10
        [providers.telegram.backoff]
        cap = 30
        [[channels]]
        id = "tg"
        provider = "telegram"
        emulator = true
        rate_limit = { per_peer_rate = 20 }
        backoff = { base = 60 }
        [[channels]]
        id = "ok"
        provider = "telegram"
        emulator = true
        rate_limit = { per_channel_rate = 50, per_peer_rate = 20 }
        [emulators.telegram]
    """
    assert problems(text) == [
        "per_peer_rate (20) is above per_channel_rate (10, from [providers.telegram.rate_limit]): "
        "no peer is sent to faster than the channel @ channels[0].rate_limit",
        "base (60) is above cap (30, from [providers.telegram.backoff]): "
        "the longest wait cannot be shorter than the first @ channels[0].backoff",
    ]


def test_more_channels_than_max_connections_is_valid() -> None:
    # The node refuses the extra channels at run time; the file is not wrong.
    text = "[providers.simulated]\nmax_connections = 1\n" + SIM + SIM.replace('"sim"', '"sim2"')
    assert len(parse_config(text, env={}).channels) == 2


def test_duplicate_channel_ids_name_both_indices() -> None:
    text = SIM + SIM.replace('"sim"', '"other"') + SIM + SIM
    assert problems(text) == [
        'duplicate channel id "sim": channels[0] and channels[2] both use it @ channels[2].id',
        'duplicate channel id "sim": channels[0] and channels[3] both use it @ channels[3].id',
    ]


# --- the whole picture -----------------------------------------------------------------


def test_every_problem_in_a_file_is_reported_at_once_in_file_order() -> None:
    text = """
        [node]
        id = "n 1"
        drain_deadline = -1

        [[channels]]
        id = "tg"
        provider = "telegram"
        credentials = { token = "${env:TELEGRAM_TOKEN}" }
        rate_limit = { per_channel_rte = 3, per_channel_burst = 0 }

        [[channels]]
        id = "tg"
        provider = "telegarm"
        send_attempts = "many"

        [[channels]]
        id = "wa"
        provider = "whatsapp"
        credentials = { token = "plain-text-token", app_secret = "${env:WA_SECRET}" }

        [storage]
        backend = "postgres"

        [ops]
        port = 65536
        api_token = "${env:}"

        [providers.telegram]
        max_connections = "two"
    """
    with pytest.raises(ConfigError) as caught:
        parse_config(textwrap.dedent(text), source="node.toml", env={"WA_SECRET": ""})
    error = caught.value
    assert [str(problem) for problem in error.problems] == [
        "expected 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit, "
        'got "n 1" @ node.id',
        "expected a positive number, got -1 @ node.drain_deadline",
        "environment variable TELEGRAM_TOKEN is not set @ channels[0].credentials.token",
        'unknown key "per_channel_rte"; did you mean "per_channel_rate"? @ channels[0].rate_limit',
        "expected an integer >= 1, got 0 @ channels[0].rate_limit.per_channel_burst",
        'duplicate channel id "tg": channels[0] and channels[1] both use it @ channels[1].id',
        'unknown provider "telegarm"; did you mean "telegram"? @ channels[1].provider',
        'expected an integer, got "many" @ channels[1].send_attempts',
        'missing option "phone_number_id" (the Cloud API phone number id); set it in the '
        "channel's options or in [providers.whatsapp.options] @ channels[2].options",
        'missing credential "verify_token" (the webhook verify token); '
        'add verify_token = "${env:NAME}" @ channels[2].credentials',
        'secrets must not be written in the file; use "${env:NAME}" '
        "@ channels[2].credentials.token",
        "environment variable WA_SECRET is set but empty @ channels[2].credentials.app_secret",
        'missing "dsn": backend "postgres" needs one; add dsn = "${env:NAME}" @ storage',
        "expected a port number from 0 to 65535, got 65536 @ ops.port",
        'malformed reference: NAME in "${env:NAME}" is letters, digits and "_", '
        "not starting with a digit @ ops.api_token",
        'expected an integer, got "two" @ providers.telegram.max_connections',
    ]
    assert str(error).splitlines()[0] == "node.toml: 16 problems"
    assert "plain-text-token" not in str(error)


def test_a_toml_syntax_error_is_one_problem_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('[node]\nid = "a"\n\n[ops\nport = 1\n', encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    [problem] = caught.value.problems
    assert problem.path == ""
    assert problem.message.startswith("invalid TOML: ")
    assert "line 4" in problem.message
    assert isinstance(caught.value.__cause__, tomllib.TOMLDecodeError)


def test_an_unreadable_file_is_one_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "missing.toml", env={})
    assert [str(p) for p in caught.value.problems] == [
        "cannot read the file: No such file or directory"
    ]
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b'id = "\xff"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(binary, env={})
    assert [str(p) for p in caught.value.problems] == [
        "the file is not UTF-8 text (bad byte at offset 6)"
    ]


@pytest.mark.parametrize(
    ("field", "url"),
    [
        ("dsn", "postgresql://u:hunter2@db:99999/x"),  # past 65535: the driver overflowed
        ("dsn", "postgresql://u:hun/ter2@db/x"),  # a bare / makes "hun" the port
        ("redis_url", "redis://:hunter2@cache:70000/0"),
    ],
)
def test_a_url_whose_port_cannot_be_read_is_refused_as_the_config_loads(
    field: str, url: str
) -> None:
    """Refused where the config is read, naming the rule, never the URL; before,
    a port past 65535 reached the PostgreSQL driver, which raised OverflowError
    out of the node's start."""
    section = "storage" if field == "dsn" else "cluster"
    text = f'[{section}]\n{field} = "${{env:URL}}"\n'
    if section == "cluster":
        text = '[node]\nid = "n1"\n' + text
    with pytest.raises(ConfigError) as caught:
        parse_config(text, env={"URL": url})
    report = str(caught.value)
    assert "hunter2" not in report and "hun" not in report
    assert f"URL ({URL_RULES}) @ {section}.{field}" in report


def test_code_that_builds_a_config_gets_the_same_value_checks() -> None:
    with pytest.raises(ValueError, match=r"^id: expected 1 to 64 letters.*got 'tg:support'$"):
        ChannelSpec(id="tg:support", provider="telegram")
    with pytest.raises(ValueError, match=r"^per_channel_rate: expected a positive number, got -1$"):
        RateLimitConfig(per_channel_rate=-1)
    with pytest.raises(ValueError) as caught:
        StorageConfig(dsn="mysql://u:hunter2@db/x")
    assert str(caught.value) == f"dsn: expected a postgresql:// URL ({URL_RULES})"  # not echoed
    assert attrs.evolve(ChannelSpec(id="a", provider="simulated"), tenant="t").tenant == "t"


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"send_window": 2.5}, "send_window: expected an integer >= 1, got 2.5"),
        ({"send_window": True}, "send_window: expected an integer >= 1, got True"),
        ({"send_attempts": 2.5}, "send_attempts: expected an integer >= 1, got 2.5"),
        (
            {"tenant": None},
            "tenant: expected a non-empty string with no NUL character, got None",
        ),
        ({"enabled": "no"}, "enabled: expected true or false, got 'no'"),
        ({"options": {3: 4}}, "options: expected a table whose keys are strings, got {3: 4}"),
        (
            {"credentials": {1: "s3cret"}},
            "credentials: expected a table whose keys and values are strings "
            "(decode a credential given as bytes)",
        ),
        ({"liveness_timeout": "5"}, "liveness_timeout: expected a positive number, got '5'"),
        (
            {"rate_limit": {"per_channel_rate": -5}},
            "rate_limit: expected a RateLimitConfig, got {'per_channel_rate': -5}",
        ),
    ],
    ids=lambda value: next(iter(value)) if isinstance(value, dict) else "",
)
def test_a_spec_built_by_hand_of_the_wrong_types_is_refused_with_the_field_named(
    given: dict[str, Any], message: str
) -> None:
    # Before, each of these was accepted (a float where an int is due, a dict
    # where a config class is) or raised a bare TypeError from inside a check.
    with pytest.raises(ValueError) as caught:
        ChannelSpec(id="a", provider="simulated", **given)
    assert str(caught.value) == message


def test_the_package_exports_exactly_its_all() -> None:
    exported = {name for name in vars(runtime.config) if not name.startswith("_")}
    modules = {"loader", "model", "overrides", "refs", "rules", "units"}
    assert exported - modules == set(runtime.config.__all__)
    assert all(getattr(runtime.config, name).__doc__ for name in runtime.config.__all__)


# --- the repository's own deployment files ---------------------------------------------

CONFIG_FILES = sorted((REPO / "config").glob("*.toml"))


def _dummy_environment(text: str) -> dict[str, str]:
    """A plausible value for every ``${env:NAME}`` the file references, by where it is used."""
    env: dict[str, str] = {}
    for key, value in re.findall(r'^\s*([A-Za-z_]+)\s*=\s*"([^"\n]*)"', text, re.MULTILINE):
        for name in re.findall(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}", value):
            whole = value == f"${{env:{name}}}"
            if whole and key == "dsn":
                env[name] = "postgresql://switchboard@db.invalid/switchboard"
            elif whole and key.endswith("url"):
                env[name] = "https://example.invalid"
            elif whole and key in {"port", "sample_rate", "batch_size"}:
                env[name] = "1"
            else:
                env[name] = f"dummy-{name.lower()}"
    for name in re.findall(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}", text):
        env.setdefault(name, f"dummy-{name.lower()}")  # inline tables on one line
    return env


@pytest.mark.parametrize("path", CONFIG_FILES, ids=[path.name for path in CONFIG_FILES])
def test_the_repository_config_files_load(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    env = _dummy_environment(text) if "example" in path.name else {}
    config = load_config(path, env=env)
    assert config.source == str(path)
    assert len({channel.id for channel in config.channels}) == len(config.channels)
    assert set(env.values()) >= set(config.resolved_secrets)


# --- one backoff vocabulary: the old keys are read, and reported as deprecated ----------


def test_deprecated_backoff_keys_are_read_under_their_new_names() -> None:
    config = parse_config(
        '[supervisor.restart_backoff]\nmin = "0.5s"\nmax = "9s"\n'
        '[providers.simulated]\nbackoff = { stable_after = "12s" }\n'
        + SIM
        + 'backoff = { stable_after = "3s" }\n'
    )
    assert config.supervisor.restart_backoff.base == 0.5
    assert config.supervisor.restart_backoff.cap == 9.0
    assert config.providers["simulated"].backoff.reset_after == 12.0
    assert config.channels[0].backoff is not None
    assert config.channels[0].backoff.reset_after == 3.0
    assert config.deprecations == (
        "supervisor.restart_backoff.min is deprecated: call it 'base' "
        "(read as supervisor.restart_backoff.base)",
        "supervisor.restart_backoff.max is deprecated: call it 'cap' "
        "(read as supervisor.restart_backoff.cap)",
        "providers.simulated.backoff.stable_after is deprecated: call it 'reset_after' "
        "(read as providers.simulated.backoff.reset_after)",
        "channels[0].backoff.stable_after is deprecated: call it 'reset_after' "
        "(read as channels[0].backoff.reset_after)",
    )


def test_a_deprecated_key_beside_its_new_name_is_a_problem() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config("[supervisor.restart_backoff]\nmin = 0.5\nbase = 0.2\n")
    assert [str(p) for p in raised.value.problems] == [
        "both 'min' and 'base' are set; 'min' is the deprecated name of 'base': keep only "
        "'base' @ supervisor.restart_backoff.min"
    ]


def test_sqlite_paths_are_resolved_beside_the_file(tmp_path: Path) -> None:
    file = tmp_path / "deploy" / "node.toml"
    file.parent.mkdir()
    file.write_text('[node]\nid = "n7"\n[storage]\nbackend = "sqlite"\n')
    assert load_config(file).storage.path == str(file.parent / "data" / "n7.sqlite3")
    file.write_text('[storage]\nbackend = "sqlite"\npath = "state/x.db"\n')
    assert load_config(file).storage.path == str(file.parent / "state" / "x.db")
    file.write_text('[storage]\noutbox_file = "old.jsonl"\n')
    loaded = load_config(file)
    assert loaded.storage.outbox_file == str(file.parent / "old.jsonl")
    assert loaded.deprecations == (
        "storage.outbox_file is deprecated: the store keeps unsent messages itself (backend = "
        "'sqlite' keeps them across restarts); the file is read once at start into the store, "
        "then deleted",
    )
