"""Structured logs for the node: one handler, two formats, context, redaction.

Design:
- :func:`configure_logging` installs ONE handler on the ``switchboard``
  logger (the library logs under ``switchboard.*``) and on
  ``hypercorn.error`` (at WARNING or above), and sets ``propagate = False``
  on both, so an embedding program's root configuration neither sees these
  records twice nor is touched. :meth:`LogHandle.close` removes the handler
  and restores the loggers' level and propagation.
- Formats: ``text`` is one human line (``ts LEVEL logger  message  k=v ...``);
  ``json`` is one JSON object per line (``ts level logger message node``,
  the context fields when present, every other ``extra`` field, ``exc``);
  ``auto`` picks text on a terminal and JSON otherwise.
- Context: ``channel``, ``tenant`` and ``provider`` come from the call's
  ``extra`` (a ``LoggerAdapter`` in the channel actor) or else from
  :func:`log_context`, a contextvar. Trio copies the spawning task's
  contextvars into every new task, so a context set around
  ``nursery.start_soon`` follows the child. The handler reads the contextvar
  while the logging call runs (emit is synchronous), never later.
- Redaction: every configured secret (4 characters or more) is replaced by
  ``***`` in the line that is written, longest first, in the forms it takes
  after JSON escaping, ``repr`` and percent-encoding too; Telegram bot tokens
  in URLs (``/bot<digits>:<token>``, as httpx and hypercorn log them) are
  redacted whatever the configuration. The text line is scrubbed whole; the
  JSON formatter scrubs every key and value before encoding, so the line is
  clean and still valid JSON.
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
import re
import sys
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType, TracebackType
from typing import Any, Final, Literal, TextIO

from runtime.config.model import LoggingConfig

__all__ = [
    "CONTEXT_FIELDS",
    "LIBRARY_LOGGER",
    "REDACTED",
    "LogHandle",
    "configure_logging",
    "log_context",
]

LIBRARY_LOGGER: Final = "switchboard"
HYPERCORN_LOGGER: Final = "hypercorn.error"
HYPERCORN_MIN_LEVEL: Final = logging.WARNING
CONTEXT_FIELDS: Final = ("channel", "tenant", "provider")
REDACTED: Final = "***"
MIN_SECRET_LENGTH: Final = 4  # characters; shorter values would redact ordinary words

_LEVELS: Final[Mapping[str, int]] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
# Keys the JSON line owns; an ``extra`` field with one of these names is
# written as ``<name>_`` instead.
_RESERVED_KEYS: Final = frozenset(
    {"ts", "level", "logger", "message", "node", "exc", "stack", *CONTEXT_FIELDS}
)
# Attributes every LogRecord has; anything else on a record came from ``extra``.
_RECORD_ATTRIBUTES: Final = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
    | {"message", "asctime", "taskName"}
)
# ``/bot<digits>:<token>`` in Telegram Bot API URLs (the colon may be %-encoded).
_TELEGRAM_TOKEN: Final = re.compile(r"(?<=/bot)\d+(?::|%3[Aa])[A-Za-z0-9_-]+")
# Text-format values that need quoting to stay one ``key=value`` token.
_NEEDS_QUOTES: Final = re.compile(r'[\s="]')

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


class _Redactor:
    """Replaces secret values and token shapes in text with ``***``."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None

    def add(self, values: Iterable[str]) -> None:
        fresh = {value for value in values if isinstance(value, str)}
        fresh = {value for value in fresh if len(value) >= MIN_SECRET_LENGTH}
        if fresh <= self._secrets:
            return
        self._secrets |= fresh
        forms: set[str] = set()
        for secret in self._secrets:
            forms.update(
                (
                    secret,
                    json.dumps(secret)[1:-1],
                    json.dumps(secret, ensure_ascii=False)[1:-1],
                    repr(secret)[1:-1],
                    urllib.parse.quote(secret, safe=""),
                )
            )
        # Longest first, so a secret that contains another is replaced whole.
        ordered = sorted(forms, key=lambda form: (-len(form), form))
        # One assignment: a thread logging meanwhile sees the old or new pattern.
        self._pattern = re.compile("|".join(map(re.escape, ordered)))

    def scrub(self, text: str) -> str:
        pattern = self._pattern
        if pattern is not None:
            text = pattern.sub(REDACTED, text)
        return _TELEGRAM_TOKEN.sub(REDACTED, text)

    def scrub_tree(self, value: Any) -> Any:
        """Scrub every string, key and number in a JSON-serialisable value."""
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, dict):
            return {self.scrub(str(key)): self.scrub_tree(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self.scrub_tree(item) for item in value]
        if isinstance(value, int | float) and not isinstance(value, bool):
            shown = json.dumps(value)
            scrubbed = self.scrub(shown)
            return value if scrubbed == shown else scrubbed
        return value


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
    try:
        json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        return _safe_repr(value)
    return value


def _text_value(value: object) -> str:
    shown = value if isinstance(value, str) else _safe_str(value)
    if not shown or _NEEDS_QUOTES.search(shown):
        return json.dumps(shown, ensure_ascii=False)
    return shown


class _Formatter(logging.Formatter):
    """Formats a record as one text or JSON line, with context, scrubbed."""

    def __init__(self, *, json_lines: bool, node_id: str, redactor: _Redactor) -> None:
        super().__init__()
        self.json_lines = json_lines
        self._node_id = node_id
        self._redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        context, extras = self._fields(record)
        message = _message(record)
        exc = self._exception_text(record)
        stack = self.formatStack(record.stack_info) if record.stack_info else None
        if self.json_lines:
            return self._json_line(record, message, context, extras, exc, stack)
        return self._redactor.scrub(self._text_line(record, message, context, extras, exc, stack))

    def _fields(self, record: logging.LogRecord) -> tuple[dict[str, object], dict[str, object]]:
        attributes = vars(record)
        ambient = _context.get()
        context: dict[str, object] = {}
        for name in CONTEXT_FIELDS:
            value = attributes.get(name)
            if value is None:
                value = ambient.get(name)
            if value is not None:
                context[name] = value
        extras = {
            key: value
            for key, value in attributes.items()
            if key not in _RECORD_ATTRIBUTES
            and key not in CONTEXT_FIELDS
            and not key.startswith("_")
        }
        return context, extras

    def _exception_text(self, record: logging.LogRecord) -> str | None:
        if record.exc_info:
            return self.formatException(record.exc_info)
        return record.exc_text or None

    def _text_line(
        self,
        record: logging.LogRecord,
        message: str,
        context: dict[str, object],
        extras: dict[str, object],
        exc: str | None,
        stack: str | None,
    ) -> str:
        line = f"{_timestamp(record)} {record.levelname:<5} {record.name}  {message}"
        fields = {**context, **extras, "node": self._node_id}
        line += "  " + " ".join(f"{key}={_text_value(value)}" for key, value in fields.items())
        for block in (exc, stack):
            if block:
                line += "\n" + block
        return line

    def _json_line(
        self,
        record: logging.LogRecord,
        message: str,
        context: dict[str, object],
        extras: dict[str, object],
        exc: str | None,
        stack: str | None,
    ) -> str:
        document: dict[str, object] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
            "node": self._node_id,
        }
        document.update((key, _jsonable(value)) for key, value in context.items())
        for key, value in extras.items():
            document[f"{key}_" if key in _RESERVED_KEYS else key] = _jsonable(value)
        if exc:
            document["exc"] = exc
        if stack:
            document["stack"] = stack
        return json.dumps(self._redactor.scrub_tree(document))


class _Handler(logging.StreamHandler[TextIO]):
    """A stream handler whose failures never print a record's raw arguments."""

    def __init__(self, stream: TextIO, redactor: _Redactor) -> None:
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
        redactor: _Redactor,
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
    """Install the node's log handler on ``switchboard`` and ``hypercorn.error``.

    The ``switchboard`` logger gets ``config.level``; ``hypercorn.error`` gets
    WARNING or ``config.level`` if higher. Both stop propagating to the root
    logger until the handle is closed. For hypercorn to keep using this
    handler, give its ``Config.errorlog`` the ``hypercorn.error`` logger
    object (a string makes hypercorn replace the logger's handlers).

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
    redactor = _Redactor()
    redactor.add(secrets)
    handler = _Handler(target, redactor)
    handler.setFormatter(_Formatter(json_lines=fmt == "json", node_id=node_id, redactor=redactor))
    saved: list[tuple[logging.Logger, int, bool]] = []
    for name, logger_level in (
        (LIBRARY_LOGGER, level),
        (HYPERCORN_LOGGER, max(level, HYPERCORN_MIN_LEVEL)),
    ):
        logger = logging.getLogger(name)
        saved.append((logger, logger.level, logger.propagate))
        logger.setLevel(logger_level)
        logger.propagate = False
        logger.addHandler(handler)
    return LogHandle(
        handler=handler, redactor=redactor, loggers=saved, format=fmt, level=level, node_id=node_id
    )
