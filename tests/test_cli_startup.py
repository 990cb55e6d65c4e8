"""``switchboard run`` when it cannot start: one line, once, and the exit code that says why.

Each case is a real subprocess against a real obstacle (a port in use, a
file that is no certificate, a database nobody listens for). The line must
name the address or path and the setting to change, and hold no traceback
and no internal repr.
"""

from __future__ import annotations

import shutil
import socket
import ssl
from pathlib import Path

import httpx
import pytest
import trio

from tests.support import self_signed_certificate
from tests.test_cli_run import CEILING, run_command, run_node

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def _config(tmp_path: Path, body: str, node: str = "n1") -> Path:
    path = tmp_path / "node.toml"
    path.write_text(f'[node]\nid = "{node}"\n[logging]\nformat = "text"\n{body}', encoding="utf-8")
    return path


def _one_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and "<" not in err and "ActorRef" not in err, err
    return lines[0]


async def test_an_emulator_port_in_use_names_its_setting(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        path = _config(
            tmp_path,
            f'[ops]\nport = 0\n[emulators.websocket]\nport = {port}\n[[channels]]\nid = "w"\n'
            'provider = "websocket"\nemulator = true\n',
        )
        with trio.fail_after(CEILING):
            code, out, err = await run_command("run", str(path))
    assert code == 1
    line = _one_line(err)
    assert (
        f"cannot start: cannot listen on 127.0.0.1:{port} for the websocket emulator: address "
        "already in use; change emulators.websocket.port, or stop what listens there"
    ) in line
    assert out == ""


@pytest.mark.parametrize("problem", ["not-pem", "missing", "mismatch"])
async def test_a_bad_tls_file_is_a_bad_configuration(tmp_path: Path, problem: str) -> None:
    cert, key = self_signed_certificate(tmp_path, "good")
    if problem == "not-pem":
        cert.write_text("this is not a certificate\n")
        expected = f"from {cert} with key {key}: not a PEM certificate chain and private key"
    elif problem == "missing":
        cert = tmp_path / "nowhere.crt"
        expected = f"from {cert} with key {key}: no such file or directory"
    else:
        _, key = self_signed_certificate(tmp_path, "other")
        expected = f"from {cert} with key {key}: the private key does not match the certificate"
    path = _config(tmp_path, f'[ops]\nport = 0\ncertfile = "{cert}"\nkeyfile = "{key}"\n')
    with trio.fail_after(CEILING):
        code, _, err = await run_command("run", str(path))
    assert code == 2  # the setting names something invalid
    line = _one_line(err)
    assert f"cannot start: cannot serve ops HTTP over TLS {expected}; fix ops.certfile" in line


async def test_a_good_certificate_serves_https(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path, "good")
    path = _config(tmp_path, f'[ops]\nport = 0\ncertfile = "{cert}"\nkeyfile = "{key}"\n')
    with trio.fail_after(CEILING):
        async with run_node(path) as node:
            url = (await node.wait_output(r"ops HTTP:\s+https://\S+")).split()[-1]
            trusted = ssl.create_default_context(cafile=str(cert))
            async with httpx.AsyncClient(verify=trusted, timeout=10.0) as client:
                response = await client.get(f"{url}/healthz")
            assert response.status_code == 200
            assert await node.stop() == 0


async def test_an_unreachable_database_names_the_address_and_the_setting(tmp_path: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: refused
        path = _config(
            tmp_path,
            '[storage]\nbackend = "postgres"\ndsn = "${env:SB_TEST_DSN}"\n[ops]\nport = 0\n',
        )
        env = {"SB_TEST_DSN": f"postgresql://sb:pw-never-shown@127.0.0.1:{port}/sb"}
        with trio.fail_after(CEILING):
            code, _, err = await run_command("run", str(path), env=env)
    assert code == 1
    line = _one_line(err)
    assert (
        f"cannot start: could not connect to PostgreSQL at 127.0.0.1:{port}/sb: connection "
        "refused; check storage.dsn and that the server is up"
    ) in line
    assert "check storage.dsn" in line and " setting=storage.dsn" in line
    assert "pw-never-shown" not in err


async def test_hypercorns_running_on_line_is_not_repeated_beside_ours(tmp_path: Path) -> None:
    path = _config(tmp_path, "[ops]\nport = 0\n")
    with trio.fail_after(CEILING):
        async with run_node(path) as node:
            await node.wait_output(r"ops HTTP for node n1 on http://127\.0\.0\.1:\d+", stream="err")
            assert await node.stop() == 0
    assert "Running on" not in node.err
    assert node.err.count("ops HTTP for node n1 on") == 1
