"""``--set KEY=VALUE`` and ``${env:NAME:-default}``: settings from outside the file.

An override is checked exactly as the same value written in the file is:
these tests compare the two, problem for problem.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from runtime.config import ConfigError, parse_config
from runtime.config.overrides import Override, apply_overrides, parse_override

ROOT = Path(__file__).resolve().parent.parent

BASE = textwrap.dedent(
    """
    [ops]
    port = 8321

    [[channels]]
    id = "a"
    provider = "websocket"
    base_url = "ws://127.0.0.1:1/ws"

    [[channels]]
    id = "b-2"
    provider = "websocket"
    base_url = "ws://127.0.0.1:2/ws"
    """
)


def problems(text: str, *overrides: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, overrides=overrides, env=env or {})
    return [str(p) for p in caught.value.problems]


@pytest.mark.parametrize(
    ("override", "in_file"),
    [
        ("ops.port=70000", "[ops]\nport = 70000"),
        ('ops.port="x"', '[ops]\nport = "x"'),
        ("logging.levle=debug", '[logging]\nlevle = "debug"'),
        ("logging.level=loud", '[logging]\nlevel = "loud"'),
        ("node.drain_deadline=-1", "[node]\ndrain_deadline = -1"),
        ("storage.backend=postgres", '[storage]\nbackend = "postgres"'),
        ("ops.api_token=hunter22", '[ops]\napi_token = "hunter22"'),
        ("ops.port=${env:NOPE}", '[ops]\nport = "${env:NOPE}"'),
    ],
)
def test_an_override_gets_the_messages_and_paths_of_the_same_value_in_the_file(
    override: str, in_file: str
) -> None:
    from_file = problems(in_file)
    assert from_file  # each case is a bad value
    assert problems("", override) == from_file


def test_override_values_are_read_as_toml_values_or_else_as_strings() -> None:
    config = parse_config(
        BASE,
        overrides=[
            "ops.port=9000",
            "logging.level=debug",
            "ops.enabled=false",
            'node.id="n-1"',
            "supervisor.restart_backoff={ base = 0.5, cap = 5 }",
            "profiling.tags.region=eu-west-1",
            'profiling.tags."my key"=x',
        ],
        env={},
    )
    assert config.ops.port == 9000
    assert config.logging.level == "debug"
    assert config.ops.enabled is False
    assert config.node.id == "n-1"
    assert (config.supervisor.restart_backoff.base, config.supervisor.restart_backoff.cap) == (
        0.5,
        5.0,
    )
    assert config.profiling.tags == {"region": "eu-west-1", "my key": "x"}


def test_later_overrides_win_and_the_file_is_not_changed() -> None:
    config = parse_config(BASE, overrides=["ops.port=1", "ops.port=2"], env={})
    assert config.ops.port == 2
    assert parse_config(BASE, env={}).ops.port == 8321


def test_a_channel_is_named_by_index_or_by_id_and_one_past_the_end_adds_one() -> None:
    config = parse_config(
        BASE,
        overrides=[
            "channels[0].base_url=ws://127.0.0.1:9/ws",
            "channels.b-2.tenant=acme",
            "channels[2].id=c",
            "channels[2].provider=websocket",
            "channels[2].base_url=ws://127.0.0.1:3/ws",
        ],
        env={},
    )
    assert [c.id for c in config.channels] == ["a", "b-2", "c"]
    assert config.channels[0].base_url == "ws://127.0.0.1:9/ws"
    assert config.channels[1].tenant == "acme"


def test_an_override_that_cannot_be_placed_says_where_and_why() -> None:
    found = problems(
        BASE,
        "ops.port.x=1",
        "channels[5].id=x",
        "channels.zz.tenant=t",
        "no equals sign",
        "a..b=1",
        "=1",
    )
    assert found == [
        "expected KEY=VALUE, as in --set ops.port=9000 or --set "
        "channels[0].base_url=http://127.0.0.1:8080 @ --set #4",
        "expected a dotted path of keys, with [N] for an array's item, not 'a..b'; as in "
        "--set ops.port=9000 or --set channels[0].base_url=http://127.0.0.1:8080 @ --set #5",
        "expected KEY=VALUE, as in --set ops.port=9000 or --set "
        "channels[0].base_url=http://127.0.0.1:8080 @ --set #6",
        "--set ops.port.x: ops.port is not a table @ ops.port",
        "--set channels[5].id: there is no item [5] (it has 2; [2] adds one) @ channels",
        '--set channels.zz.tenant: no channel has id "zz" (ids: "a", "b-2") @ channels',
    ]


def test_a_secret_set_from_the_command_line_must_be_a_reference_and_is_never_echoed() -> None:
    found = problems(BASE, "channels[0].credentials.token=s3cr3t-t0ken")
    assert found == [
        'secrets must not be written in the file; use "${env:NAME}" @ channels[0].credentials.token'
    ]
    config = parse_config(
        BASE, overrides=["channels[0].credentials.token=${env:TOK}"], env={"TOK": "s3cr3t-t0ken"}
    )
    assert config.channels[0].credentials == {"token": "s3cr3t-t0ken"}


def test_parse_override_keeps_the_path_and_value_apart() -> None:
    parsed = parse_override('profiling.tags."a.b"=1', position=1)
    path = ("profiling", "tags", "a.b")
    assert parsed == Override(key='profiling.tags."a.b"', path=path, value=1)
    override = parse_override("x[0].y=z", position=1)
    assert isinstance(override, Override)
    doc, found = apply_overrides({"x": [{"id": "k"}]}, [override])
    assert (doc, found) == ({"x": [{"id": "k", "y": "z"}]}, [])


# --- ${env:NAME:-default} -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "port"),
    [({}, 9100), ({"PORT": ""}, 9100), ({"PORT": "9200"}, 9200)],
)
def test_a_default_applies_when_the_variable_is_unset_or_empty(
    env: dict[str, str], port: int
) -> None:
    config = parse_config('[ops]\nport = "${env:PORT:-9100}"', env=env)
    assert config.ops.port == port


def test_a_default_may_be_empty_and_sits_inside_a_longer_string() -> None:
    config = parse_config(
        '[ops]\npublic_url = "https://${env:HOST:-hooks.example.com}${env:SUFFIX:-}"', env={}
    )
    assert config.ops.public_url == "https://hooks.example.com"


def test_a_default_value_is_checked_like_any_value() -> None:
    found = problems('[ops]\nport = "${env:PORT:-eighty}"')
    assert found == ['expected an integer, got "eighty" @ ops.port']


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ('[ops]\napi_token = "${env:TOKEN:-letmein1}"', "ops.api_token"),
        (
            '[storage]\nbackend = "postgres"\ndsn = "postgresql://u:${env:PW:-pw12345}@db/x"',
            "storage.dsn",
        ),
        (
            '[[channels]]\nid = "a"\nprovider = "discord"\n'
            'credentials = { token = "${env:T:-abcdefgh}" }',
            "channels[0].credentials.token",
        ),
    ],
)
def test_a_secret_takes_no_default_and_the_default_is_not_echoed(text: str, path: str) -> None:
    found = problems(text)
    assert any(p.startswith("a secret takes no default") and p.endswith(f"@ {path}") for p in found)
    assert not any(s in " ".join(found) for s in ("letmein1", "pw12345", "abcdefgh"))


# --- the command line ------------------------------------------------------------------------


def test_switchboard_check_reads_set_options(tmp_path: Path) -> None:
    file = tmp_path / "n.toml"
    file.write_text(BASE, encoding="utf-8")
    command = [sys.executable, "-m", "runtime.cli", "check", str(file)]
    env = {**os.environ, "OPS_PORT": "9999"}
    ok = subprocess.run(
        [*command, "--set", "ops.port=${env:OPS_PORT}", "--set", "channels.a.enabled=false"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert "1/2 channels enabled" in ok.stdout
    bad = subprocess.run(
        [*command, "--set", "ops.port=99999", "--set", "logging.level=loud"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2
    assert bad.stderr.splitlines()[1:] == [
        f"{file}: 2 problems",
        "  expected a port number from 0 to 65535, got 99999 @ ops.port",
        '  expected one of "debug", "info", "warning", "error", got "loud" @ logging.level',
    ]
