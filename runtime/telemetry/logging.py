"""Structured logs for the node: one handler, two renderings, context, redaction.

Design:
- :func:`configure_logging` installs ONE handler on the ``switchboard``
  logger (the library logs under ``switchboard.*``) and on the third-party
  loggers of :data:`THIRD_PARTY_LOGGERS` (``hypercorn.error``, ``asyncpg``,
  ``trio_asyncio``, ``redis``, ``httpx``; at WARNING or above,
  so their records are formatted and scrubbed like ours), and sets
  ``propagate = False`` on them, so an embedding program's root configuration neither sees these
  records twice nor is touched. :meth:`LogHandle.close` removes the handler
  and restores the loggers' level and propagation. The library logs through
  the standard :mod:`logging` API; rendering is structlog's
  (``structlog.stdlib.ProcessorFormatter``), so every record, ours or a
  library's, goes through the same processors.
- Every fact is a field, named by the Elastic Common Schema (ECS,
  https://www.elastic.co/guide/en/ecs/current/): ``@timestamp``,
  ``log.level``, ``log.logger``, ``message``, ``service.name``,
  ``service.node.name`` (the node), ``error.type`` / ``error.message`` /
  ``error.stack_trace``, ``event.duration`` (nanoseconds), ``user.id`` (a
  sender), ``server.address`` / ``server.port``, ``file.path``; our own under
  ``switchboard.*`` (``channel``, ``tenant``, ``provider``, ``peer``,
  ``message_id``, ``idempotency_key``, ``attempt``, ...). A call site gives
  them as ``extra`` with these names; a plain key (``extra={"reason": ...}``)
  is ours: ``switchboard.reason``.
- Renderings: ``json`` is one ECS log line (the ecs-logging spec: the four
  top-level keys ``@timestamp``, ``log.level``, ``message``, ``ecs.version``
  first, dotted; everything else nested: ``{"switchboard": {"channel": ...}}``);
  ``text`` is structlog's console renderer, for people: time, level
  (coloured on a terminal), logger, message, then the fields as
  ``key=value`` with our ``switchboard.`` prefix left out and the node as
  ``node``; ``auto`` picks text on a terminal and JSON otherwise.
- Control characters in the text rendering (a newline in a peer id or a
  message text, an ``extra`` key, a logger's name) are escaped (``\\n``), so
  no value and no key can forge a line; JSON escapes them itself. Values and
  keys with spaces, ``=`` or quotes are quoted, so none can forge a field.
- Context: ``channel``, ``tenant`` and ``provider`` come from the call's
  ``extra`` (a ``LoggerAdapter`` in the channel actor) or else from
  :func:`log_context`, a contextvar. Trio copies the spawning task's
  contextvars into every new task, so a context set around
  ``nursery.start_soon`` follows the child. The handler reads the contextvar
  while the logging call runs (emit is synchronous), never later.
- Redaction: every configured secret (4 characters or more) is replaced by
  ``***`` in the line that is written, longest first, in the forms it takes
  after JSON escaping, ``repr`` and percent-encoding too; credential shapes
  (Telegram bot tokens, ``Authorization`` values, Meta tokens, URL userinfo,
  credential query parameters: :mod:`.redaction`) are redacted whatever the
  configuration. The text line is scrubbed value by value before the
  renderer quotes (``repr``) any, since a secret escaped by ``repr`` is no
  longer found, and then whole; the JSON document is scrubbed key by key and
  value by value before encoding, so the line is clean and still valid JSON.
  An infinite or NaN number is written as text (``"inf"``, ``"nan"``), never
  as the ``Infinity`` / ``NaN`` that strict JSON parsers refuse. Tracebacks
  are plain text (never a renderer that prints local variables).
- Emit never raises (except ``RecursionError``, as in :mod:`logging`): a
  record whose ``%`` arguments do not fit is written with its raw message
  and arguments, and a failure to write is reported once per record on
  stderr, scrubbed, without the record's arguments (they may hold secrets,
  which :meth:`logging.Handler.handleError` would print verbatim).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType, TracebackType
from typing import Any, Final, Literal, TextIO

import structlog
from structlog.stdlib import ProcessorFormatter

from runtime.config.model import LoggingConfig

from .redaction import REDACTED, Redactor

__all__ = [
    "CONTEXT_FIELDS",
    "ECS_VERSION",
    "LIBRARY_LOGGER",
    "REDACTED",
    "LogHandle",
    "configure_logging",
    "escape_controls",
    "log_context",
]

LIBRARY_LOGGER: Final = "switchboard"
HYPERCORN_LOGGER: Final = "hypercorn.error"
HYPERCORN_MIN_LEVEL: Final = logging.WARNING
# Libraries whose records would otherwise reach the root logger unscrubbed (asyncpg's
# pool logs the DSN's host and errors during an outage; httpx logs request URLs).
THIRD_PARTY_LOGGERS: Final = (
    HYPERCORN_LOGGER,
    "asyncpg",
    "asyncio",
    "trio_asyncio",
    "redis",
    "httpx",
)
CONTEXT_FIELDS: Final = ("channel", "tenant", "provider")
ECS_VERSION: Final = "8.11.0"
SERVICE_NAME: Final = "switchboard"
OUR_NAMESPACE: Final = "switchboard."

_LEVELS: Final[Mapping[str, int]] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
# The ecs-logging spec's top-level keys, first on every JSON line, dotted.
_TOP_LEVEL: Final = ("@timestamp", "log.level", "message", "ecs.version")
# Attributes every LogRecord has; anything else on a record came from ``extra``.
_RECORD_ATTRIBUTES: Final = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
    | {"message", "asctime", "taskName"}
)
# The characters for which structlog's console renderer repr()s a value.
_CONSOLE_QUOTES: Final = frozenset(" \t=\r\n\"'")
# C0 and C1 controls, DEL and the Unicode line separators: escaped in text lines.
_CONTROLS: Final = {
    code: json.dumps(chr(code))[1:-1] if code < 0x20 else f"\\x{code:02x}"
    for code in (*range(0x20), 0x7F, *range(0x80, 0xA0))
} | {0x2028: "\\u2028", 0x2029: "\\u2029"}
# Console keys for fields whose ECS name is long.
_CONSOLE_NAMES: Final = {"service.node.name": "node"}

_context: ContextVar[Mapping[str, str]] = ContextVar(
    "switchboard_log_context", default=MappingProxyType({})
)


@contextmanager
def log_context(
    *, channel: str | None = None, tenant: str | None = None, provider: str | None = None
) -> Iterator[None]:
    """Attach channel, tenant and provider to every record logged inside the block.

    Nestable: an inner block overrides the fields it names and keeps the
    others; leaving a block restores what was there before. Tasks spawned
    inside the block (trio copies contextvars at spawn) keep the fields.
    Fields given as ``extra`` at a logging call win over these.

    Args:
        channel: the channel id.
        tenant: the tenant.
        provider: the provider name.

    Yields:
        Nothing; the fields apply until the block ends.
    """
    given = {"channel": channel, "tenant": tenant, "provider": provider}
    fields = {name: value for name, value in given.items() if value is not None}
    token = _context.set(MappingProxyType({**_context.get(), **fields}))
    try:
        yield
    finally:
        _context.reset(token)


def _safe_str(value: object) -> str:
    try:
        return str(value)
    except Exception:
        return _safe_repr(value)


def _safe_repr(value: object) -> str:
    try:
        return repr(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


def _message(record: logging.LogRecord) -> str:
    """The record's message; never raises, even for bad ``%`` arguments."""
    try:
        return record.getMessage()
    except Exception as exc:
        return (
            f"{_safe_str(record.msg)} [log arguments did not fit: "
            f"{_safe_repr(record.args)}: {type(exc).__name__}: {_safe_str(exc)}]"
        )


def _timestamp(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


def _jsonable(value: object) -> object:
    """``value`` as JSON can carry it: a non-finite number as text, anything else as ``repr``."""
    if value is None or type(value) in (str, int, bool):
        return value  # the common case, without a trial encoding
    try:
        json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        return _safe_repr(value)
    return _finite(value)


def _finite(value: Any) -> Any:
    """``value`` with every infinite or NaN float as text (``"inf"``, ``"-inf"``, ``"nan"``).

    RFC 8259 has no such numbers: ``json.dumps`` would write ``Infinity`` or
    ``NaN``, which strict parsers (Elasticsearch ingest, jq) refuse, losing
    the line. ``value`` already encodes, so it holds no cycle.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(float(value))
    if isinstance(value, dict):  # keys become text on the way (scrub_tree)
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def escape_controls(text: str) -> str:
    """``text`` with control characters and line separators escaped (``\\n``, ``\\x1b``)."""
    return text.translate(_CONTROLS)


def _text_value(value: object, redactor: Redactor) -> object:
    """A field for the console renderer: numbers as they are, text scrubbed and escaped.

    The renderer quotes (``repr``) a string with blanks, quotes or ``=``, and
    ``repr`` escapes what is not printable; any other string is shown as it
    is, so its control characters are escaped here. A value is scrubbed
    before either: once ``repr`` has escaped a secret (``\\'``, ``\\\\``, twice for
    a dict or bytes value already shown with ``repr`` inside ``str``), the
    whole-line scrub no longer recognises it.
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        shown = _safe_repr(value)
        scrubbed = redactor.scrub(shown)
        return value if scrubbed == shown else scrubbed
    shown = redactor.scrub(value if isinstance(value, str) else _safe_str(value))
    if _CONSOLE_QUOTES.intersection(shown):
        return shown  # repr'd by the renderer, which escapes what is not printable
    return escape_controls(shown)


def _text_key(name: str) -> str:
    """A field's name for the console renderer, which writes it as it is: quoted
    (``repr``) if it has blanks, quotes or ``=``, else its controls escaped.

    An ``extra`` key is the caller's text: one with a newline wrote a second,
    forged line; one with ``" node="`` a forged field.
    """
    if _CONSOLE_QUOTES.intersection(name):
        return repr(name)
    return escape_controls(name)


def _nested(flat: Mapping[str, Any]) -> dict[str, Any]:
    """An ECS document: the spec's top-level keys first and dotted, the rest nested.

    A field whose path runs into another field's value (``user`` beside
    ``user.id``) stays dotted at the top rather than lose either.
    """
    document: dict[str, Any] = {key: flat[key] for key in _TOP_LEVEL if key in flat}
    for key, value in flat.items():
        if key in document:
            continue
        *parents, leaf = key.split(".")
        node: Any = document
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                node = None
                break
            node = child
        if node is None or (leaf in node and isinstance(node[leaf], dict)):
            document[key] = value
        else:
            node[leaf] = value
    return document


class _Formatter(ProcessorFormatter):
    """A record, ours or a library's, as one ECS JSON line or one console line.

    structlog's ``ProcessorFormatter`` runs :meth:`_facts` on every record
    (a record's extras, the context, the exception, as ECS fields), then the
    rendering's processors.
    """

    def __init__(self, *, json_lines: bool, node_id: str, redactor: Redactor, colors: bool) -> None:
        self.json_lines = json_lines
        self._node_id = node_id
        self._redactor = redactor
        renderer: list[Any]
        if json_lines:
            renderer = [self._ecs_json]
        else:
            console = structlog.dev.ConsoleRenderer(
                colors=colors,
                sort_keys=False,
                pad_event_to=0,
                exception_formatter=structlog.dev.plain_traceback,
            )
            renderer = [self._console, console]
        super().__init__(
            foreign_pre_chain=[self._facts],
            processors=[ProcessorFormatter.remove_processors_meta, *renderer],
        )

    def format(self, record: logging.LogRecord) -> str:
        # A record whose arguments do not fit its message is written, not raised.
        try:
            record.getMessage()
        except Exception:
            record = logging.makeLogRecord({**vars(record), "msg": _message(record), "args": None})
        line = super().format(record)
        return line if self.json_lines else self._redactor.scrub(line)

    def _facts(self, logger: Any, method: str, event: MutableMapping[str, Any]) -> Any:
        record: logging.LogRecord = event["_record"]
        attributes = vars(record)
        ambient = _context.get()
        facts: dict[str, Any] = {
            "@timestamp": _timestamp(record),
            "log.level": record.levelname.lower(),
            "message": event["event"],
            "ecs.version": ECS_VERSION,
            "log.logger": record.name,
            "service.name": SERVICE_NAME,
            "service.node.name": self._node_id,
        }
        for name in CONTEXT_FIELDS:
            value = attributes.get(name)
            if value is None:
                value = ambient.get(name)
            if value is not None:
                facts[OUR_NAMESPACE + name] = value
        for key, value in attributes.items():
            if key in _RECORD_ATTRIBUTES or key in CONTEXT_FIELDS or key.startswith("_"):
                continue
            name = key if "." in key else OUR_NAMESPACE + key
            facts.setdefault(name, value)
        exc_info = event.get("exc_info")
        if exc_info:
            error = exc_info[1]
            facts["error.type"] = type(error).__name__ if error is not None else "None"
            facts["error.message"] = _safe_str(error)
            facts["error.stack_trace"] = self.formatException(exc_info).rstrip("\n")
        elif record.exc_text:
            facts["error.stack_trace"] = record.exc_text
        if event.get("stack_info"):
            facts[OUR_NAMESPACE + "stack"] = event["stack_info"]
        # What structlog carries on (the record itself, for its meta remover).
        facts["_record"] = record
        facts["_from_structlog"] = False
        return facts

    def _ecs_json(self, logger: Any, method: str, facts: MutableMapping[str, Any]) -> str:
        flat = {key: _jsonable(value) for key, value in facts.items()}
        # allow_nan=False: a non-finite number left anywhere fails the record (reported
        # by the handler) rather than write a line that is not JSON.
        return json.dumps(self._redactor.scrub_tree(_nested(flat)), allow_nan=False)

    def _console(self, logger: Any, method: str, facts: MutableMapping[str, Any]) -> dict[str, Any]:
        """The fields as structlog's console renderer takes them, escaped and quoted."""
        shown: dict[str, Any] = {
            "timestamp": facts.pop("@timestamp"),
            "level": escape_controls(facts.pop("log.level")),
            "event": escape_controls(self._redactor.scrub(_safe_str(facts.pop("message")))),
            "logger_name": escape_controls(facts.pop("log.logger")),
        }
        trace = facts.pop("error.stack_trace", None)
        shown_keys: tuple[str, ...] = ("ecs.version", "service.name")
        if trace is not None:  # the traceback says the type and the message
            shown_keys += ("error.type", "error.message")
        for key in shown_keys:
            facts.pop(key, None)
        for key, value in facts.items():
            name = _CONSOLE_NAMES.get(key, key.removeprefix(OUR_NAMESPACE))
            shown[_text_key(self._redactor.scrub(name))] = _text_value(value, self._redactor)
        if trace is not None:
            shown["exception"] = trace
        return shown


class _Handler(logging.StreamHandler[TextIO]):
    """A stream handler whose failures never print a record's raw arguments."""

    def __init__(self, stream: TextIO, redactor: Redactor) -> None:
        super().__init__(stream)
        self._redactor = redactor
        self.dropped = 0

    def handleError(self, record: logging.LogRecord) -> None:
        self.dropped += 1
        error = sys.exc_info()[1]
        note = (
            f"switchboard logging: could not write a record from {record.name} "
            f"({type(error).__name__}: {_safe_str(error)})\n"
        )
        # Nowhere left to report a failure here; losing a line beats crashing the caller.
        with contextlib.suppress(Exception):
            sys.stderr.write(self._redactor.scrub(note))


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except Exception:
        return False


class LogHandle:
    """The installed log handler: add secrets to redact, or remove it.

    Also a context manager that closes on exit.
    """

    def __init__(
        self,
        *,
        handler: _Handler,
        redactor: Redactor,
        loggers: list[tuple[logging.Logger, int, bool]],
        format: Literal["text", "json"],
        level: int,
        node_id: str,
    ) -> None:
        self._handler = handler
        self._redactor = redactor
        self._saved = loggers
        self._closed = False
        self.format: Final = format
        self.level: Final = level
        self.node_id: Final = node_id

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run."""
        return self._closed

    @property
    def dropped(self) -> int:
        """Records that could not be written (the stream failed)."""
        return self._handler.dropped

    def add_secrets(self, values: Iterable[str]) -> None:
        """Redact these values too from now on (values under 4 characters are ignored).

        Args:
            values: secret strings, e.g. credentials learnt after start-up.
        """
        self._redactor.add(values)

    def close(self) -> None:
        """Remove the handler and restore the loggers' level and propagation.

        Idempotent. Close handles in the reverse order of installing them.
        """
        if self._closed:
            return
        self._closed = True
        for logger, level, propagate in self._saved:
            logger.removeHandler(self._handler)
            logger.setLevel(level)
            logger.propagate = propagate
        self._handler.close()

    def __enter__(self) -> LogHandle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        level = logging.getLevelName(self.level)
        return f"<LogHandle {self.format} level={level} node={self.node_id} [{state}]>"


def configure_logging(
    config: LoggingConfig,
    *,
    node_id: str,
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> LogHandle:
    """Install the node's log handler on ``switchboard`` and the third-party loggers.

    The ``switchboard`` logger gets ``config.level``; each of
    :data:`THIRD_PARTY_LOGGERS` gets WARNING or ``config.level`` if higher.
    They all stop propagating to the root logger until the handle is closed.
    For hypercorn to keep using this handler, give its ``Config.errorlog``
    the ``hypercorn.error`` logger object (a string makes hypercorn replace
    the logger's handlers).

    Args:
        config: level and format.
        node_id: written on every record as ``node``.
        secrets: values to redact from every line (``NodeConfig.secrets()``).
        stream: where lines go (default: ``sys.stderr`` at the time of the call).

    Returns:
        The handle that removes the handler again.

    Raises:
        ValueError: ``config.level`` or ``config.format`` is not one the
            config model allows.
    """
    if config.level not in _LEVELS:
        raise ValueError(f"unknown log level {config.level!r}; expected one of {list(_LEVELS)}")
    if config.format not in ("auto", "text", "json"):
        raise ValueError(f"unknown log format {config.format!r}; expected auto, text or json")
    target: TextIO = stream if stream is not None else sys.stderr
    auto: Literal["text", "json"] = "text" if _isatty(target) else "json"
    fmt = auto if config.format == "auto" else config.format
    level = _LEVELS[config.level]
    redactor = Redactor()
    redactor.add(secrets)
    handler = _Handler(target, redactor)
    colors = _isatty(target) and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"
    handler.setFormatter(
        _Formatter(json_lines=fmt == "json", node_id=node_id, redactor=redactor, colors=colors)
    )
    saved: list[tuple[logging.Logger, int, bool]] = []
    for name, logger_level in (
        (LIBRARY_LOGGER, level),
        *((name, max(level, HYPERCORN_MIN_LEVEL)) for name in THIRD_PARTY_LOGGERS),
    ):
        logger = logging.getLogger(name)
        saved.append((logger, logger.level, logger.propagate))
        logger.setLevel(logger_level)
        logger.propagate = False
        logger.addHandler(handler)
    return LogHandle(
        handler=handler, redactor=redactor, loggers=saved, format=fmt, level=level, node_id=node_id
    )
