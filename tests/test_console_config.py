"""``[admin]`` in a deployment file: checked by ``switchboard check`` like every section."""

from __future__ import annotations

from typing import Any

import pytest

from runtime import ConfigError, parse_config

ENV = {"RO": "read-only-token-value", "OP": "operate-token-value"}


def admin(**section: Any) -> dict[str, Any]:
    return {
        "admin": {
            "tokens": [{"name": "ro", "token": "${env:RO}", "scope": "read"}],
            **section,
        }
    }


def problems(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(doc, env=ENV)
    return [f"{p.message} @ {p.path}" for p in caught.value.problems]


def test_off_unless_configured() -> None:
    assert parse_config({}).admin is None


def test_a_valid_section(tmp_path: Any) -> None:
    path = tmp_path / "node.toml"
    path.write_text(
        "[admin]\n"
        'socket = "run/admin.sock"\n'
        'host = "127.0.0.1"\n'
        "port = 0\n"
        'calls_per_second = "5/s"\n'
        "[[admin.tokens]]\n"
        'name = "ops"\n'
        'token = "${env:OP}"\n'
        'scope = "operate"\n'
        'tenants = ["acme"]\n'
        'expires = "2027-06-01T00:00:00+00:00"\n'
    )
    from runtime import load_config

    config = load_config(path, env=ENV)
    assert config.admin is not None
    assert config.admin.socket == str(tmp_path / "run" / "admin.sock")
    assert config.admin.calls_per_second == 5.0
    (token,) = config.admin.tokens
    assert (token.name, token.scope, token.tenants) == ("ops", "operate", ["acme"])
    assert "operate-token-value" not in repr(config)
    assert "operate-token-value" in config.secrets()


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (
            admin(),
            'listens nowhere: add socket = "admin.sock" (a Unix socket) and/or '
            'host = "127.0.0.1" @ admin',
        ),
        (
            admin(host="0.0.0.0"),
            '"0.0.0.0" is not a loopback address: the console there needs TLS (certfile and '
            "keyfile), or insecure = true to serve it unencrypted anyway @ admin.host",
        ),
        (
            admin(host="::1", certfile="c.pem"),
            'certfile needs a keyfile: add keyfile = "k.pem" @ admin',
        ),
        (
            {"admin": {"host": "127.0.0.1", "tokens": []}},
            "has no tokens, so nobody could use it: add [[admin.tokens]] with a name, "
            'token = "${env:NAME}" and a scope @ admin',
        ),
        (
            {"admin": {"host": "127.0.0.1", "tokens": [{"name": "x", "token": "literal"}]}},
            'secrets must not be written in the file; use "${env:NAME}" @ admin.tokens[0].token',
        ),
        (
            {
                "admin": {
                    "host": "127.0.0.1",
                    "tokens": [
                        {"name": "x", "token": "${env:RO}"},
                        {"name": "x", "token": "${env:OP}"},
                    ],
                }
            },
            'duplicate token name "x": audit events must tell tokens apart @ admin.tokens[1].name',
        ),
        (
            {
                "admin": {
                    "host": "127.0.0.1",
                    "tokens": [{"name": "x", "token": "${env:RO}", "scope": "root"}],
                }
            },
            'expected one of "read", "operate", "admin", got "root" @ admin.tokens[0].scope',
        ),
        (
            {
                "admin": {
                    "host": "127.0.0.1",
                    "tokens": [{"name": "x", "token": "${env:RO}", "expires": "2027-01-01"}],
                }
            },
            'expected an ISO 8601 time with its offset, as in "2027-01-31T00:00:00Z", '
            'got "2027-01-01" @ admin.tokens[0].expires',
        ),
        (
            admin(host="127.0.0.1", max_message_size=0),
            "expected an integer >= 1, got 0 @ admin.max_message_size",
        ),
        (admin(host="127.0.0.1", prot=1), 'unknown key "prot"; did you mean "port"? @ admin'),
    ],
)
def test_problems(doc: dict[str, Any], expected: str) -> None:
    assert expected in problems(doc)


def test_beyond_loopback_with_tls_or_an_explicit_opt_out() -> None:
    assert parse_config(admin(host="0.0.0.0", certfile="c.pem", keyfile="k.pem"), env=ENV).admin
    assert parse_config(admin(host="10.1.2.3", insecure=True), env=ENV).admin


def test_a_token_value_is_never_quoted() -> None:
    # The token pasted into another setting by mistake: that problem must not quote it.
    found = problems(admin(host="127.0.0.1", port="${env:RO}"))
    assert any("admin.port" in line for line in found)
    assert not any("read-only-token-value" in line for line in found)
