"""Continuous profiling: a real pyroscope agent uploads to a local receiver.

The agent is process-global native code, so every test that starts it runs
in a child process (a ``python -c`` script) and cannot disturb other tests.
The receiver is the standard library's ``ThreadingHTTPServer``, on loopback.

pyroscope-io 1.4.0 pushes ``POST /push.v1.PusherService/Push``: a gzipped
protobuf ``PushRequest`` whose series carry labels (``service_name`` = the
application name, the tags beside it) and the pprof profile. No protobuf
library is installed, so the test looks for the exact bytes of the expected
label pairs in the body instead of decoding it.
"""

from __future__ import annotations

import gzip
import http.server
import json
import logging
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Final
from urllib.parse import urlsplit

import attrs
import pytest

from runtime.config.model import ProfilingConfig
from runtime.telemetry import start_profiling

UPLOAD_CEILING: Final = 30.0  # real seconds for the first upload (the agent uploads every 1 s)
EXIT_CEILING: Final = 30.0  # real seconds for the child to stop the agent and exit
PUSH_PATH: Final = "/push.v1.PusherService/Push"
NODE: Final = "node-prof-1"
TOKEN: Final = "prof-token-1234"

CHILD: Final = r"""
import json, select, sys, time

from runtime.config.model import ProfilingConfig
from runtime.telemetry import start_profiling


def _switchboard_burn(until):
    total = 0
    while time.monotonic() < until:
        total += sum(i * i for i in range(2_000))
    return total


url, node_id, token, budget = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
config = ProfilingConfig(
    pyroscope_url=url,
    application_name="switchboard-test",
    tags={"region": "t"},
    auth_token=token,
)
handle = start_profiling(config, node_id=node_id, upload_interval=1)
second = start_profiling(config, node_id=node_id, upload_interval=1)
print(json.dumps({"started": repr(handle), "second": repr(second)}), flush=True)
deadline = time.monotonic() + budget
while time.monotonic() < deadline:  # burn until the parent says stop (a line on stdin)
    _switchboard_burn(time.monotonic() + 0.05)
    if select.select([sys.stdin], [], [], 0)[0]:
        break
handle.stop()
handle.stop()
print(json.dumps({"stopped": handle.stopped}), flush=True)
"""

CHILD_SLOW_SERVER: Final = r"""
import json, select, sys

import trio
import trio.testing

from runtime.config.model import ProfilingConfig
from runtime.telemetry import start_profiling

url, grace = sys.argv[1], float(sys.argv[2])
handle = start_profiling(ProfilingConfig(pyroscope_url=url), node_id="n", upload_interval=1)
# Samples to upload, until the parent says it holds the agent's upload, which
# it never answers (a line on stdin).
while not select.select([sys.stdin], [], [], 0)[0]:
    sum(i * i for i in range(2_000))


async def stop():
    started = trio.current_time()
    await handle.aclose(grace=grace)
    return trio.current_time() - started


# Virtual time: the clock jumps to aclose's deadline as soon as nothing else
# can run, so only aclose's own bound can end the wait for the agent's thread.
took = trio.run(stop, clock=trio.testing.MockClock(autojump_threshold=0))
print(json.dumps({"stop_took": took, "stopped": handle.stopped}), flush=True)
"""


@attrs.frozen(kw_only=True)
class Upload:
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """A local HTTP server that records every POST and answers 200."""

    def __init__(self) -> None:
        self.uploads: list[Upload] = []
        self.arrived = threading.Event()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                split = urlsplit(self.path)
                receiver.uploads.append(
                    Upload(
                        path=split.path,
                        query=split.query,
                        headers={k.lower(): v for k, v in self.headers.items()},
                        body=body,
                    )
                )
                receiver.arrived.set()
                self.send_response(200)
                self.send_header("Content-Type", "application/proto")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass  # quiet: the test reads self.uploads

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    recv = Receiver()
    thread = threading.Thread(target=recv.server.serve_forever, daemon=True)
    thread.start()
    yield recv
    recv.server.shutdown()
    recv.server.server_close()
    thread.join(timeout=5)


def _label(name: str, value: str) -> bytes:
    """A protobuf ``LabelPair{name=1, value=2}`` as written on the wire (strings < 128 B)."""
    raw_name, raw_value = name.encode(), value.encode()
    assert len(raw_name) < 128 and len(raw_value) < 128
    return (
        b"\x0a" + bytes([len(raw_name)]) + raw_name + b"\x12" + bytes([len(raw_value)]) + raw_value
    )


def _run_child(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_profiles_reach_the_server_with_the_app_name_and_tags(receiver: Receiver) -> None:
    child = _run_child(CHILD, receiver.url, NODE, TOKEN, str(UPLOAD_CEILING))
    try:
        arrived = receiver.arrived.wait(UPLOAD_CEILING)
        out, err = child.communicate("stop\n", timeout=EXIT_CEILING)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert arrived, f"no profile upload within {UPLOAD_CEILING} s; child stderr:\n{err}"
    assert child.returncode == 0, err
    started, stopped = (json.loads(line) for line in out.splitlines())
    assert started["started"].startswith("<ProfilingHandle switchboard-test{region=t,node=")
    assert started["second"] == "None"  # one agent per process
    assert "already runs a pyroscope agent" in err
    assert stopped == {"stopped": True}

    first = receiver.uploads[0]
    assert first.path == PUSH_PATH
    assert first.query == ""
    assert first.headers["authorization"] == f"Bearer {TOKEN}"
    assert first.headers["content-encoding"] == "gzip"
    bodies = [gzip.decompress(upload.body) for upload in receiver.uploads]
    assert all(bodies)
    for body in bodies:
        assert _label("service_name", "switchboard-test") in body
        assert _label("node", NODE) in body
        assert _label("region", "t") in body
    # The samples are of our code: the burning function is in the profile.
    assert any(b"_switchboard_burn" in body for body in bodies)


def test_aclose_bounds_the_wait_for_a_server_that_never_answers() -> None:
    grace = 0.5  # seconds, of the child's virtual clock
    with socket.socket() as silent:  # accepts connections (the backlog) and never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        silent.settimeout(UPLOAD_CEILING)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        child = _run_child(CHILD_SLOW_SERVER, url, str(grace))
        try:
            upload, _ = silent.accept()  # the agent is uploading: held open, never answered
            with upload:
                out, err = child.communicate("stop\n", timeout=EXIT_CEILING)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    assert child.returncode == 0, err
    result = json.loads(out)
    assert result["stopped"] is True
    assert result["stop_took"] == grace  # aclose's own deadline ended the wait, exactly
    # ... and said it left the agent's flush behind. (Whether that thread is
    # still alive a moment later is the agent's business: under load it can
    # finish between the deadline and a look at the threads.)
    assert "still flushing its last profile" in err


def test_no_url_means_no_profiling(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="switchboard.telemetry"):
        assert start_profiling(ProfilingConfig(), node_id=NODE) is None
    assert caplog.records == []


@pytest.mark.parametrize(
    "url", ["http://:4040", "http://user:hunter22@", "https://user:hunter22@:4040/"]
)
def test_a_url_without_a_host_is_a_warning_not_a_crash(
    caplog: pytest.LogCaptureFixture, url: str
) -> None:
    # The config model only checks the scheme and that there is a netloc.
    # The agent itself accepts any string, even "not a url", reports success
    # and drops every upload silently (checked against pyroscope-io 1.4.0),
    # so start_profiling refuses before starting it.
    with caplog.at_level(logging.WARNING, logger="switchboard.telemetry"):
        handle = start_profiling(ProfilingConfig(pyroscope_url=url), node_id=NODE)
    assert handle is None
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert "profiling stays off" in record.getMessage()
    assert "hunter22" not in record.getMessage()


@pytest.mark.parametrize("interval", [0, -1, 1.5, True])
def test_upload_interval_must_be_whole_seconds(interval: object) -> None:
    with pytest.raises(ValueError, match="upload_interval"):
        start_profiling(
            ProfilingConfig(pyroscope_url="http://127.0.0.1:4040"),
            node_id=NODE,
            upload_interval=interval,  # type: ignore[arg-type]
        )
