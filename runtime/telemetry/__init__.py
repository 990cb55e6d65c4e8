"""Telemetry for the node: structured logs and continuous profiling.

- :func:`configure_logging` installs the node's one log handler (structlog's
  console rendering or ECS JSON lines, every fact a field, channel/tenant/
  provider context, secrets redacted) and :func:`log_context` scopes the
  context fields.
- :mod:`runtime.telemetry.histograms`: the latency histograms behind
  ``/metrics``.
- :func:`start_profiling` starts the process-wide pyroscope agent when a
  server is configured.
"""

from .logging import (
    CONTEXT_FIELDS,
    ECS_VERSION,
    LIBRARY_LOGGER,
    REDACTED,
    LogHandle,
    configure_logging,
    escape_controls,
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
    "ECS_VERSION",
    "LIBRARY_LOGGER",
    "REDACTED",
    "LogHandle",
    "ProfilingHandle",
    "configure_logging",
    "escape_controls",
    "log_context",
    "start_profiling",
]
