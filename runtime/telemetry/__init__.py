"""Telemetry for the node: structured logs and continuous profiling.

- :func:`configure_logging` installs the node's one log handler (text or
  JSON lines, channel/tenant/provider context, secrets redacted) and
  :func:`log_context` scopes the context fields.
- :func:`start_profiling` starts the process-wide pyroscope agent when a
  server is configured.
"""

from .logging import (
    CONTEXT_FIELDS,
    LIBRARY_LOGGER,
    REDACTED,
    LogHandle,
    configure_logging,
    log_context,
)
from .profiling import (
    DEFAULT_STOP_GRACE,
    DEFAULT_UPLOAD_INTERVAL,
    ProfilingHandle,
    start_profiling,
)

__all__ = [
    "CONTEXT_FIELDS",
    "DEFAULT_STOP_GRACE",
    "DEFAULT_UPLOAD_INTERVAL",
    "LIBRARY_LOGGER",
    "REDACTED",
    "LogHandle",
    "ProfilingHandle",
    "configure_logging",
    "log_context",
    "start_profiling",
]
