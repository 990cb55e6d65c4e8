"""The node's log handler: formats, context, levels, redaction, robustness."""

from __future__ import annotations

import io
import json
import logging
import re
import types
from collections.abc import Iterator
from typing import Any, Literal

import pytest
import trio

import runtime.telemetry
from runtime.config.model import LoggingConfig
from runtime.telemetry import (
    ECS_VERSION,
    LogHandle,
    configure_logging,
    escape_controls,
    log_context,
)

NODE = "node-7"
SECRET = "s3cr3t-T0ken-value"
TELEGRAM_URL = "https://api.telegram.org/bot123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/getMe"
TS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"

Format = Literal["text", "json"]


class Output:
    """What one configured handler wrote."""

    def __init__(self, fmt: Format, level: str = "debug", secrets: tuple[str, ...] = ()) -> None:
        self.stream = io.StringIO()
        self.handle = configure_logging(
            LoggingConfig(format=fmt, level=level),  # type: ignore[arg-type]
            node_id=NODE,
            secrets=secrets,
            stream=self.stream,
        )

    def lines(self) -> list[str]:
        return self.stream.getvalue().splitlines()

    def records(self) -> list[dict[str, Any]]:
        """The JSON lines, parsed (each must be one valid object), with dotted keys."""
        return [flat(json.loads(line)) for line in self.lines()]


def flat(document: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """An ECS document's nested objects as dotted keys (``{"log": {"logger": x}}``)."""
    out: dict[str, Any] = {}
    for key, value in document.items():
        name = f"{prefix}{key}"
        # An extra whose value is itself a table (the secrets test's "nested") stays one.
        if isinstance(value, dict) and name != "switchboard.nested":
            out.update(flat(value, f"{name}."))
        else:
            out[name] = value
    return out


@pytest.fixture
def outputs() -> Iterator[list[Output]]:
    made: list[Output] = []
    yield made
    for output in reversed(made):
        output.handle.close()


@pytest.fixture
def text(outputs: list[Output]) -> Output:
    outputs.append(Output("text"))
    return outputs[-1]


@pytest.fixture
def jsonl(outputs: list[Output]) -> Output:
    outputs.append(Output("json"))
    return outputs[-1]


channels_log = logging.getLogger("switchboard.channels")


def test_telemetry_all_lists_exactly_the_public_names() -> None:
    declared = set(runtime.telemetry.__all__)
    public = {
        name
        for name, value in vars(runtime.telemetry).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == declared
    assert len(declared) == len(runtime.telemetry.__all__)


# --- formats ---------------------------------------------------------------------------


def test_text_line_has_timestamp_level_logger_message_then_context(text: Output) -> None:
    record = logging.makeLogRecord(
        {
            "name": "switchboard.channels",
            "levelno": logging.INFO,
            "levelname": "INFO",
            "msg": "connected after %d attempts",
            "args": (3,),
            "created": 1795341600.123456,  # 2026-11-22T10:00:00.123Z
            "msecs": 123.456,
            "channel": "tg-1",
            "tenant": "acme",
            "provider": "telegram",
        }
    )
    channels_log.handle(record)
    assert text.lines() == [
        "2026-11-22T10:00:00.123Z [info     ] connected after 3 attempts "
        f"[switchboard.channels] node={NODE} channel=tg-1 tenant=acme provider=telegram"
    ]


def test_text_line_shows_only_the_context_present_and_quotes_spaced_values(text: Output) -> None:
    channels_log.warning("rate limited", extra={"tenant": "acme", "reason": "too many requests"})
    (line,) = text.lines()
    assert re.fullmatch(
        TS + rf" \[warning  \] rate limited \[switchboard\.channels\] node={NODE} tenant=acme "
        r"reason='too many requests'",
        line,
    ), line


def test_json_line_has_the_documented_keys(jsonl: Output) -> None:
    adapter = logging.LoggerAdapter(
        channels_log, {"channel": "tg-1", "tenant": "acme", "provider": "telegram"}
    )
    adapter.info("sent %s", "m-1")
    (line,) = jsonl.lines()
    # The ecs-logging spec: these four first, dotted; the rest nested.
    assert list(json.loads(line))[:4] == ["@timestamp", "log.level", "message", "ecs.version"]
    (record,) = jsonl.records()
    ts = record.pop("@timestamp")
    assert re.fullmatch(TS, ts)
    assert record == {
        "log.level": "info",
        "message": "sent m-1",
        "ecs.version": ECS_VERSION,
        "log.logger": "switchboard.channels",
        "service.name": "switchboard",
        "service.node.name": NODE,
        "switchboard.channel": "tg-1",
        "switchboard.tenant": "acme",
        "switchboard.provider": "telegram",
    }


def test_json_keeps_other_extras_and_reprs_what_json_cannot_hold(jsonl: Output) -> None:
    class Opaque:
        def __repr__(self) -> str:
            return "<Opaque 42>"

    channels_log.info(
        "batch",
        extra={
            "attempt": 3,
            "peers": ["a", "b"],
            "thing": Opaque(),
            "level": "mine",
            "user.id": "u-1",
            "event.duration": 1500,
        },
    )
    (record,) = jsonl.records()
    assert record["switchboard.attempt"] == 3  # a plain key is ours
    assert record["switchboard.peers"] == ["a", "b"]
    assert record["switchboard.thing"] == "<Opaque 42>"
    assert record["log.level"] == "info"
    assert record["switchboard.level"] == "mine"
    assert record["user.id"] == "u-1"  # an ECS name stays as it is
    assert record["event.duration"] == 1500
    assert "switchboard.channel" not in record


def test_json_exception_carries_the_traceback(jsonl: Output) -> None:
    def fail() -> None:
        raise ValueError("bad payload")

    try:
        fail()
    except ValueError:
        channels_log.exception("send failed")
    (record,) = jsonl.records()
    assert record["message"] == "send failed"
    assert record["log.level"] == "error"
    assert record["error.type"] == "ValueError"
    assert record["error.message"] == "bad payload"
    trace = record["error.stack_trace"]
    assert trace.startswith("Traceback (most recent call last):")
    assert "in fail" in trace
    assert trace.endswith("ValueError: bad payload")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("stream", "expected"), [(_Terminal(), "text"), (io.StringIO(), "json")])
def test_auto_is_text_on_a_terminal_and_json_otherwise(
    stream: io.StringIO, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    with configure_logging(LoggingConfig(format="auto"), node_id=NODE, stream=stream) as handle:
        channels_log.info("hello")
    assert handle.format == expected
    line = stream.getvalue().strip()
    if expected == "json":
        assert json.loads(line)["message"] == "hello"
    else:
        # On a terminal the level is coloured (ANSI); NO_COLOR and TERM=dumb turn it off.
        assert "\x1b[" in line
        plain = re.sub(r"\x1b\[[0-9;]*m", "", line)
        assert re.fullmatch(
            TS + rf" \[info     \] hello \[switchboard\.channels\] node={NODE}", plain
        )


@pytest.mark.parametrize("env", [{"NO_COLOR": "1"}, {"TERM": "dumb"}])
def test_no_colour_when_asked_not_to(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    stream = _Terminal()
    with configure_logging(LoggingConfig(format="text"), node_id=NODE, stream=stream):
        channels_log.warning("plain")
    assert "\x1b" not in stream.getvalue()
    assert "[warning  ] plain" in stream.getvalue()


FORGED = "hi\n2026-11-22T10:00:00.000Z [error    ] forged [switchboard.node]"


@pytest.mark.parametrize(
    "value", [FORGED, "a\rb", "tab\there", "esc\x1b[31mred", "nul\x00", "ls\u2028x", "del\x7f"]
)
def test_text_lines_escape_control_characters_in_every_field(text: Output, value: str) -> None:
    # A peer id, a sender or a message text from a platform can hold anything.
    channels_log.info(
        "inbound message %r from %s",
        value,
        value,
        extra={"switchboard.peer": value, "user.id": value, "channel": value},
    )
    (line,) = text.lines()  # one line: nothing forged
    assert not any(ch in line for ch in "\r\x00\x1b\x7f\u2028")
    assert f"from {escape_controls(value)} [switchboard.channels]" in line
    assert "peer=" in line and "user.id=" in line and "channel=" in line


def test_json_lines_keep_control_characters_escaped_and_intact(jsonl: Output) -> None:
    channels_log.info("x %s", FORGED, extra={"switchboard.peer": FORGED})
    (line,) = jsonl.lines()
    assert "\\n" in line and "\n" not in line  # one line, the newline escaped by JSON
    (record,) = jsonl.records()
    assert record["switchboard.peer"] == FORGED
    assert record["message"] == f"x {FORGED}"


def test_every_fact_is_a_field_on_the_inbound_line(jsonl: Output) -> None:
    from providers.base import InboundMessage
    from runtime.events import EventHub, NodeEvent

    hub = EventHub(log_inbound=True)
    message = InboundMessage(
        channel_id="tg-1", platform_message_id="42:1", peer="42", sender="7", text="hi"
    )
    hub.publish(
        NodeEvent(
            kind="inbound", channel_id="tg-1", tenant="acme", provider="telegram", event=message
        )
    )
    (record,) = jsonl.records()
    assert record["message"] == "inbound message 'hi'"
    assert {k: v for k, v in record.items() if k.startswith(("switchboard.", "user."))} == {
        "switchboard.channel": "tg-1",
        "switchboard.tenant": "acme",
        "switchboard.provider": "telegram",
        "switchboard.message_id": "42:1",
        "switchboard.peer": "42",
        "user.id": "7",
    }


def test_a_channel_tap_logs_inbound_with_no_subscriber_and_feeds_one_that_comes_later(
    jsonl: Output,
) -> None:
    # The tap makes no NodeEvent when nobody takes one and nothing is logged;
    # that must not lose the inbound log line, nor an event for a later subscriber.
    from providers.base import DeliveryReceipt, InboundMessage, ReceiptStatus
    from runtime.events import EventHub

    def inbound(n: int) -> InboundMessage:
        return InboundMessage(
            channel_id="ws-1", platform_message_id=f"m{n}", peer="p", sender="u", text="hi"
        )

    receipt = DeliveryReceipt(
        channel_id="ws-1", platform_message_id="m0", peer="p", status=ReceiptStatus.READ
    )
    quiet = EventHub().tap("ws-1", "acme", "websocket")
    quiet.send_nowait(inbound(1))  # nobody, nothing to log
    quiet.send_nowait(receipt)
    assert jsonl.records() == []
    hub = EventHub(log_inbound=True)
    tap = hub.tap("ws-1", "acme", "websocket")
    tap.send_nowait(inbound(1))
    (record,) = jsonl.records()
    assert record["switchboard.message_id"] == "m1"
    quiet_hub = EventHub()
    late_tap = quiet_hub.tap("ws-1", "acme", "websocket")
    seen: list[object] = []
    with quiet_hub.watch(lambda e: seen.append(e.event), kind="state"):
        assert not quiet_hub.wants("receipt")  # a state watch takes no receipt
        with quiet_hub.subscribe(kind="receipt") as later:
            late_tap.send_nowait(receipt)
            event = later.receive_nowait()
        assert not quiet_hub.wants("receipt")  # that subscriber left
        with quiet_hub.subscribe() as every:
            assert quiet_hub.wants("receipt") and quiet_hub.wants("edited")
            late_tap.send_nowait(receipt)
            assert every.receive_nowait().event is receipt
    assert event.event is receipt and event.channel_id == "ws-1" and event.tenant == "acme"
    assert seen == [] and not quiet_hub.wants("state")


# --- context ---------------------------------------------------------------------------


def test_log_context_applies_nests_and_restores(jsonl: Output) -> None:
    with log_context(channel="tg-1", tenant="acme", provider="telegram"):
        channels_log.info("outer")
        with log_context(channel="tg-2"):
            channels_log.info("inner")
        channels_log.info("outer again")
    channels_log.info("outside")
    got = [
        (
            r["message"],
            r.get("switchboard.channel"),
            r.get("switchboard.tenant"),
            r.get("switchboard.provider"),
        )
        for r in jsonl.records()
    ]
    assert got == [
        ("outer", "tg-1", "acme", "telegram"),
        ("inner", "tg-2", "acme", "telegram"),
        ("outer again", "tg-1", "acme", "telegram"),
        ("outside", None, None, None),
    ]
    assert all(r["service.node.name"] == NODE for r in jsonl.records())


def test_extra_wins_over_log_context_field_by_field(jsonl: Output) -> None:
    with log_context(channel="from-context", tenant="acme"):
        channels_log.info("x", extra={"channel": "from-extra"})
    (record,) = jsonl.records()
    assert (record["switchboard.channel"], record["switchboard.tenant"]) == ("from-extra", "acme")


async def test_trio_tasks_inherit_the_context_they_were_spawned_in(jsonl: Output) -> None:
    async def child(name: str) -> None:
        await trio.lowlevel.checkpoint()
        channels_log.info(name)

    async with trio.open_nursery() as nursery:
        with log_context(channel="tg-9", provider="telegram"):
            nursery.start_soon(child, "spawned inside")
        nursery.start_soon(child, "spawned outside")
    by_message = {r["message"]: r for r in jsonl.records()}
    assert by_message["spawned inside"]["switchboard.channel"] == "tg-9"
    assert by_message["spawned inside"]["switchboard.provider"] == "telegram"
    assert "switchboard.channel" not in by_message["spawned outside"]


# --- levels and lifecycle --------------------------------------------------------------


def test_level_filters_switchboard_and_hypercorn_at_least_warning(outputs: list[Output]) -> None:
    outputs.append(Output("json", level="info"))
    out = outputs[-1]
    channels_log.debug("hidden debug")
    channels_log.info("shown info")
    logging.getLogger("hypercorn.error").info("hidden hypercorn info")
    logging.getLogger("hypercorn.error").warning("shown hypercorn warning")
    assert [(r["log.logger"], r["message"]) for r in out.records()] == [
        ("switchboard.channels", "shown info"),
        ("hypercorn.error", "shown hypercorn warning"),
    ]


def test_error_level_also_silences_hypercorn_warnings(outputs: list[Output]) -> None:
    outputs.append(Output("json", level="error"))
    out = outputs[-1]
    channels_log.warning("hidden")
    logging.getLogger("hypercorn.error").warning("hidden too")
    logging.getLogger("switchboard.node").error("shown")
    assert [r["message"] for r in out.records()] == ["shown"]


class _Catcher(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_close_removes_the_handler_restores_the_loggers_and_is_idempotent() -> None:
    library, hypercorn = logging.getLogger("switchboard"), logging.getLogger("hypercorn.error")
    before = [(lg.level, lg.propagate, list(lg.handlers)) for lg in (library, hypercorn)]
    root_catcher = _Catcher()
    root_seen = root_catcher.records
    logging.getLogger().addHandler(root_catcher)
    try:
        out = Output("text", level="debug")
        assert library.level == logging.DEBUG
        assert library.propagate is False
        assert hypercorn.level == logging.WARNING
        channels_log.info("while open")
        assert root_seen == []  # the embedding program's root config sees nothing
        out.handle.close()
        out.handle.close()
        assert out.handle.closed
        assert "[closed]" in repr(out.handle)
        channels_log.warning("after close")
        assert [line.split("] ")[1].split(" [")[0] for line in out.lines()] == ["while open"]
        assert [(lg.level, lg.propagate, list(lg.handlers)) for lg in (library, hypercorn)] == (
            before
        )
        assert [r.getMessage() for r in root_seen] == ["after close"]
    finally:
        logging.getLogger().removeHandler(root_catcher)


# --- secrets ---------------------------------------------------------------------------


def _log_secret_everywhere(handle: LogHandle) -> None:
    channels_log.info(f"token is {SECRET}")
    channels_log.info("token arg is %s", SECRET)
    channels_log.info("dict arg %(token)s", {"token": SECRET})
    channels_log.info("extra", extra={"credential": SECRET, "nested": {"deep": [SECRET]}})
    channels_log.info("opaque extra", extra={"blob": object.__new__(_Leaky)})
    channels_log.info("url %s", TELEGRAM_URL)
    channels_log.info("encoded url https://api.telegram.org/bot42%3AAbc-_def/sendMessage")
    token = SECRET
    try:
        raise ConnectionError(f"rejected credentials {token}")
    except ConnectionError:
        channels_log.exception("connect failed")
    logging.getLogger("hypercorn.error").warning("GET %s", TELEGRAM_URL)


class _Leaky:
    def __repr__(self) -> str:
        return f"<Leaky {SECRET}>"


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_secrets_never_reach_the_output(outputs: list[Output], fmt: Format) -> None:
    outputs.append(Output(fmt, secrets=(SECRET,)))
    out = outputs[-1]
    _log_secret_everywhere(out.handle)
    written = out.stream.getvalue()
    assert SECRET not in written
    assert "AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw" not in written
    assert "Abc-_def" not in written
    assert "api.telegram.org/bot***/getMe" in written
    assert "api.telegram.org/bot***/sendMessage" in written
    assert written.count("***") >= 10
    assert "ConnectionError: rejected credentials ***" in written
    if fmt == "json":
        records = out.records()  # still valid JSON after redaction
        assert records[3]["switchboard.credential"] == "***"
        assert records[3]["switchboard.nested"] == {"deep": ["***"]}
        assert records[4]["switchboard.blob"] == "<Leaky ***>"
        assert "Traceback" in records[7]["error.stack_trace"]
        assert records[7]["error.message"] == "rejected credentials ***"


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_secrets_in_escaped_forms_numbers_and_added_later(
    outputs: list[Output], fmt: Format
) -> None:
    quoted = 'pa"ss\\w\u00f6rd'
    outputs.append(Output(fmt, secrets=(quoted, "87654321", "abc")))
    out = outputs[-1]
    channels_log.info("login %s", quoted, extra={"pin": 87654321, "repr": repr(quoted)})
    channels_log.info("abc stays readable")
    out.handle.add_secrets(["late-secret-value", "xyz"])
    channels_log.info("late %s xyz", "late-secret-value")
    written = out.stream.getvalue()
    for form in (quoted, json.dumps(quoted)[1:-1], repr(quoted)[1:-1], "87654321"):
        assert form not in written
    assert "late-secret-value" not in written
    assert "abc stays readable" in written  # shorter than 4 characters: not a secret
    assert "xyz" in written
    if fmt == "json":
        records = out.records()
        assert records[0]["message"] == "login ***"
        assert records[0]["switchboard.pin"] == "***"
        assert records[2]["message"] == "late *** xyz"


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_longest_secret_is_replaced_first(outputs: list[Output], fmt: Format) -> None:
    outputs.append(Output(fmt, secrets=("abcd", "abcdefgh")))
    out = outputs[-1]
    channels_log.info("key abcdefgh end")
    assert "key *** end" in out.stream.getvalue()


# --- robustness ------------------------------------------------------------------------


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_bad_records_are_written_not_raised(outputs: list[Output], fmt: Format) -> None:
    outputs.append(Output(fmt, secrets=(SECRET,)))
    out = outputs[-1]
    channels_log.info("count %d", "not a number")
    channels_log.info("too few %s %s", "one")
    channels_log.info({"not": "a string"})
    channels_log.info(_Unprintable())
    channels_log.info("odd extra", extra={"thing": _Unprintable()})
    channels_log.info("secret in bad args %d", SECRET)
    lines = out.lines()
    assert len(lines) == 6
    assert "count %d [log arguments did not fit: ('not a number',): TypeError" in lines[0]
    assert "too few %s %s [log arguments did not fit" in lines[1]
    assert "{'not': 'a string'}" in lines[2]
    assert "<unprintable _Unprintable>" in lines[3]
    assert "<unprintable _Unprintable>" in lines[4]
    assert SECRET not in lines[5]
    if fmt == "json":
        assert len(out.records()) == 6


class _BrokenStream(io.StringIO):
    def write(self, text: str) -> int:
        raise OSError("disk full")


def test_a_failing_stream_never_raises_nor_leaks_arguments(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with configure_logging(
        LoggingConfig(format="json"), node_id=NODE, secrets=(SECRET,), stream=_BrokenStream()
    ) as handle:
        channels_log.warning("cannot write %s", SECRET)
        assert handle.dropped == 1
    err = capsys.readouterr().err
    assert "could not write a record from switchboard.channels (OSError: disk full)" in err
    assert SECRET not in err
