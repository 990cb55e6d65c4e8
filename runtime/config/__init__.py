"""Deployment files: their shape, how they are read, and what makes them valid.

``load_config("config/local.toml")`` returns a frozen :class:`NodeConfig` or
raises :class:`ConfigError` listing every problem in the file at once, each
a :class:`ConfigProblem` with a dotted path::

    config/x.toml: 2 problems
      expected a positive number, got -1 @ channels[3].rate_limit.per_second
      unknown key "per_secnd"; did you mean "per_second"? @ channels[0].rate_limit

Secrets are never written in a file: credentials, ``storage.dsn``,
``ops.api_token`` and ``profiling.auth_token`` reference the environment as
``${env:NAME}``, which is resolved in every string of the file at load.
"""

from ..errors import ConfigError, ConfigProblem
from .loader import load_config, parse_config
from .model import (
    BackoffConfig,
    ChannelSpec,
    EmulatorConfig,
    LoggingConfig,
    MetricsConfig,
    NodeConfig,
    NodeSection,
    OpsConfig,
    ProfilingConfig,
    ProviderDefaults,
    RateLimitConfig,
    RestartBackoffConfig,
    StorageConfig,
    SupervisorConfig,
)

__all__ = [
    "BackoffConfig",
    "ChannelSpec",
    "ConfigError",
    "ConfigProblem",
    "EmulatorConfig",
    "LoggingConfig",
    "MetricsConfig",
    "NodeConfig",
    "NodeSection",
    "OpsConfig",
    "ProfilingConfig",
    "ProviderDefaults",
    "RateLimitConfig",
    "RestartBackoffConfig",
    "StorageConfig",
    "SupervisorConfig",
    "load_config",
    "parse_config",
]
