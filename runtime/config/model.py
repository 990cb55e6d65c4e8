"""The shape of a deployment file: one frozen attrs class per TOML table.

Design: these classes are plain data. Reading a file into them (TOML,
``${env:NAME}`` references, every problem reported at once with its path) is
:mod:`runtime.config.loader`; the cross-field rules are
:mod:`runtime.config.rules`. Fields that hold secrets are ``repr=False`` and
listed by :meth:`NodeConfig.secrets`, so logging can scrub them.

The rule on a single value (a positive rate, a port number, a channel id's
alphabet) is a :class:`Check` on the field: attrs runs it when code builds a
config (the embedded runtime, the admin console), and the loader runs the
same check while reading a file, so it can report every bad value with its
path instead of the first one. Type checks belong to the loader's converter.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import attrs

from providers.masking import option_secrets, options_repr, url_repr, url_secrets

from .units import PerSecond, Seconds

__all__ = [
    "AdminConfig",
    "AdminToken",
    "BackoffConfig",
    "ChannelSpec",
    "Check",
    "ClusterConfig",
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
]


@attrs.frozen
class Check:
    """A rule on one value: an attrs validator the loader also understands.

    ``None`` passes (it means "unset") unless ``optional`` is false; the
    loader only calls ``test`` on a value of the field's type.

    Attributes:
        expected: what a valid value is, as the loader words it:
            ``"a positive number"`` gives ``expected a positive number, got -1``.
        test: true for a valid value.
    """

    expected: str
    test: Callable[[Any], bool] = attrs.field(repr=False)
    optional: bool = True  # None passes (a field that may be unset)

    def __call__(self, instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        """Validate ``value`` for attrs.

        A value of a type the test cannot take (a string where a number is
        expected, as code that builds a spec by hand may pass) fails it too.

        Raises:
            ValueError: the value fails the check (it is named unless the
                field is ``repr=False``, i.e. a secret; masked where the
                field's ``repr`` masks it).
        """
        if value is None and self.optional:
            return
        try:
            if value is not None and self.test(value):
                return
        except (TypeError, AttributeError):
            pass
        if callable(attribute.repr):  # a field that shows itself masked (a URL's credentials)
            try:
                shown = f", got {attribute.repr(value)}"
            except Exception:  # a value of another type: the masking repr cannot read it
                shown = f", got a value of type {type(value).__name__}"
        else:
            shown = f", got {value!r}" if attribute.repr else ""
        raise ValueError(f"{attribute.name}: expected {self.expected}{shown}")


_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_SQL_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def _is_url(value: str, schemes: tuple[str, ...]) -> bool:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (raises ValueError: not a number, or past 65535)
    except ValueError:
        return False
    return parts.scheme in schemes and bool(parts.netloc)


def _integer(value: Any) -> bool:
    """An int (an ``IntEnum`` too), not a bool, a float or a string."""
    return isinstance(value, int) and not isinstance(value, bool)


POSITIVE: Final = Check("a positive number", lambda v: math.isfinite(v) and v > 0)
AT_LEAST_ONE: Final = Check("an integer >= 1", lambda v: _integer(v) and v >= 1)
NOT_NEGATIVE: Final = Check("an integer >= 0", lambda v: _integer(v) and v >= 0)
NOT_NEGATIVE_SECONDS: Final = Check("0 or more seconds", lambda v: math.isfinite(v) and v >= 0)
LOOP_LAG: Final = Check(
    # Below it, the probe's own jitter (a wake-up a few milliseconds late) would shed.
    "0 (off) or at least 0.05 seconds",
    lambda v: v == 0 or (math.isfinite(v) and v >= 0.05),
)
FRACTION: Final = Check("a number from 0 to 1", lambda v: 0 <= v <= 1)
PORT: Final = Check("a port number from 0 to 65535", lambda v: _integer(v) and 0 <= v <= 65535)
# A NUL reaches no file name, host or header, and PostgreSQL cannot store it (a
# tenant with one stopped its channel's checkpoints).
NOT_EMPTY: Final = Check(
    "a non-empty string with no NUL character", lambda v: bool(v.strip()) and "\x00" not in v
)
NAME: Final = Check(
    "a non-empty string with no NUL character",
    lambda v: type(v) is str and bool(v.strip()) and "\x00" not in v,
    optional=False,
)
# A bearer token travels in a header, which holds no control character and
# loses the whitespace around it: one read with its trailing newline (a secret
# written with echo) could never match what a client sends.
TOKEN: Final = Check(
    "a non-empty string with no whitespace around it and no control characters",
    lambda v: bool(v.strip()) and v == v.strip() and v.isprintable(),
)
FLAG: Final = Check("true or false", lambda v: type(v) is bool, optional=False)
# A name whose values the rules check (a provider's): here only that it is text
# (a number reached the registry and came back as an unknown provider).
TEXT: Final = Check("a string", lambda v: type(v) is str, optional=False)
STRING_KEYS: Final = Check(
    "a table whose keys are strings",
    lambda v: isinstance(v, dict) and all(type(k) is str for k in v),
)
# Credentials are text: the redactor learns and scrubs strings, so a token given
# as bytes was used by the channel but redacted nowhere (logs, errors, /health).
STRING_TABLE: Final = Check(
    "a table whose keys and values are strings (decode a credential given as bytes)",
    lambda v: (
        isinstance(v, dict) and all(type(k) is str and isinstance(x, str) for k, x in v.items())
    ),
)
IDENTIFIER: Final = Check(
    "1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit",
    lambda v: _ID.fullmatch(v) is not None,
)
SQL_NAME: Final = Check(
    "an SQL name (letters, digits and '_', not starting with a digit)",
    lambda v: _SQL_NAME.fullmatch(v) is not None,
)
HTTP_URL: Final = Check("an http:// or https:// URL", lambda v: _is_url(v, ("http", "https")))
ENDPOINT_URL: Final = Check(
    "an http(s):// or ws(s):// URL", lambda v: _is_url(v, ("http", "https", "ws", "wss"))
)
# A password's ? # / @ or : written bare reads as the URL's port, path or query.
_URL_RULES: Final = "with a port from 0 to 65535, and ? # / @ : in a password percent-encoded"
POSTGRES_URL: Final = Check(
    f"a postgresql:// URL ({_URL_RULES})", lambda v: _is_url(v, ("postgresql", "postgres"))
)
REDIS_URL: Final = Check(
    f"a redis:// or rediss:// URL ({_URL_RULES})", lambda v: _is_url(v, ("redis", "rediss"))
)


@attrs.frozen(kw_only=True)
class NodeSection:
    """``[node]``: who this node is and how it stops.

    Attributes:
        id: the node's identity (logs, metrics, profiling tags, cluster).
        drain_deadline: seconds a graceful shutdown waits for queued sends.
        start_timeout: seconds startup waits for channels to connect before
            reporting how many did.
        max_sends_in_flight: sends the node holds at once, accepted and not
            finished (in a cluster, those it forwarded to their channel's
            owner too); past it a send is refused at once (``Overloaded``).
        max_channel_sends: the same bound for one channel: its window and
            what waits for it (in a cluster, also the sends of a channel
            another node runs that this node forwards to it).
        max_loop_lag: seconds the node's event loop may stay behind: past
            it, the node takes only as many sends in flight as its loop runs
            within this (``Overloaded``, see ``runtime.admission``); 0 turns
            the bound off, and any other value is at least 0.05 s.
        gc: the garbage-collection policy: ``tuned`` (freeze what settled,
            fewer young collections; see ``runtime.collection``) or
            ``default`` (CPython's collector left as the program set it).
    """

    id: str = attrs.field(default="local", validator=IDENTIFIER)
    drain_deadline: Seconds = attrs.field(default=10.0, validator=POSITIVE)
    start_timeout: Seconds = attrs.field(default=10.0, validator=POSITIVE)
    max_sends_in_flight: int = attrs.field(default=50_000, validator=AT_LEAST_ONE)
    max_channel_sends: int = attrs.field(default=1_000, validator=AT_LEAST_ONE)
    max_loop_lag: Seconds = attrs.field(default=0.25, validator=LOOP_LAG)
    gc: Literal["tuned", "default"] = "tuned"


@attrs.frozen(kw_only=True)
class ClusterConfig:
    """``[cluster]``: this node as one of many, with membership and leases in Redis.

    Every node of a cluster runs the same file (or files that differ only in
    ``[node] id`` and listen addresses); ``[node] id`` is the node's name in
    the cluster. Without this section a node runs alone.

    Attributes:
        redis_url: where the cluster's Redis is (a secret when it carries a
            password: use ``${env:NAME}``).
        key_prefix: the namespace of this cluster's keys in Redis.
        heartbeat_interval: seconds between a node's heartbeats.
        member_timeout: seconds without a heartbeat after which a node is
            declared dead (on Redis's clock).
        lease_ttl: seconds a channel's lease lasts without renewal; renewed
            every third of it.
        vnodes: points per node on the placement ring (more: more even).
        renew_batch: leases renewed per Redis script call.
        settle_delay: seconds the members must hold still before channels
            move away from a live node to follow placement.
        move_cooldown: seconds a channel stays on a node before it may move
            away again (no ping-pong when a node flaps).
        max_moves: channels one node takes or hands off at once.
    """

    redis_url: str = attrs.field(repr=False, validator=REDIS_URL)
    key_prefix: str = attrs.field(default="switchboard", validator=IDENTIFIER)
    heartbeat_interval: Seconds = attrs.field(default=1.0, validator=POSITIVE)
    member_timeout: Seconds = attrs.field(default=5.0, validator=POSITIVE)
    lease_ttl: Seconds = attrs.field(default=10.0, validator=POSITIVE)
    vnodes: int = attrs.field(default=1024, validator=AT_LEAST_ONE)
    renew_batch: int = attrs.field(default=500, validator=AT_LEAST_ONE)
    settle_delay: Seconds = attrs.field(default=2.0, validator=NOT_NEGATIVE_SECONDS)
    move_cooldown: Seconds = attrs.field(default=10.0, validator=NOT_NEGATIVE_SECONDS)
    max_moves: int = attrs.field(default=64, validator=AT_LEAST_ONE)


@attrs.frozen(kw_only=True)
class StorageConfig:
    """``[storage]``: where inbound events and unsent messages are kept.

    Which backend when: ``memory`` for tests and throwaway runs (nothing
    survives the process); ``sqlite`` for a single node without a database
    server (one file, the embedded durable default); ``postgres`` for
    production and for every node of a cluster.

    Attributes:
        backend: ``memory``, ``sqlite`` or ``postgres``.
        dsn: the PostgreSQL DSN (a secret: use ``${env:NAME}``).
        schema: the PostgreSQL schema for the node's tables.
        path: the SQLite file; relative to the deployment file's directory;
            unset: ``data/<node id>.sqlite3`` beside the deployment file.
        outbox_file: deprecated (the stores keep unsent messages themselves):
            a JSON file an older release kept unsent messages in; read once
            at start into the store, then deleted.
        checkpoint_interval: seconds between two checkpoints of one
            channel's durable state (written behind, in batches).
        batch_size: inbound events written per batch.
        flush_interval: seconds before a partial batch is written.
    """

    backend: Literal["memory", "sqlite", "postgres"] = "memory"
    dsn: str | None = attrs.field(default=None, repr=False, validator=POSTGRES_URL)
    schema: str = attrs.field(default="switchboard", validator=SQL_NAME)
    path: str | None = attrs.field(default=None, validator=NOT_EMPTY)
    outbox_file: str | None = attrs.field(default=None, validator=NOT_EMPTY)
    checkpoint_interval: Seconds = attrs.field(default=1.0, validator=POSITIVE)
    batch_size: int = attrs.field(default=500, validator=AT_LEAST_ONE)
    flush_interval: Seconds = attrs.field(default=0.5, validator=POSITIVE)


@attrs.frozen(kw_only=True)
class OpsConfig:
    """``[ops]``: the ops HTTP listener (health, metrics, webhooks).

    Attributes:
        enabled: serve it at all.
        host: interface to bind.
        port: TCP port (0 picks a free one).
        public_url: the URL platforms reach this listener at, for webhooks
            (defaults to ``http://host:port``).
        api_token: bearer token that enables the message API
            (``POST /v1/channels/{id}/messages``); a secret.
        certfile: a PEM certificate (chain) to serve HTTPS with; relative
            to the deployment file's directory.
        keyfile: its PEM private key (with ``certfile``).
    """

    enabled: bool = True
    host: str = attrs.field(default="127.0.0.1", validator=NOT_EMPTY)
    port: int = attrs.field(default=8321, validator=PORT)
    public_url: str | None = attrs.field(default=None, validator=HTTP_URL, repr=url_repr)
    api_token: str | None = attrs.field(default=None, repr=False, validator=TOKEN)
    certfile: str | None = attrs.field(default=None, validator=NOT_EMPTY)
    keyfile: str | None = attrs.field(default=None, validator=NOT_EMPTY)


def _is_timestamp(value: str) -> bool:
    try:
        return datetime.fromisoformat(value).tzinfo is not None
    except ValueError:
        return False


TIMESTAMP: Final = Check(
    'an ISO 8601 time with its offset, as in "2027-01-31T00:00:00Z"', _is_timestamp
)
SCOPES: Final = ("read", "operate", "admin")


@attrs.frozen(kw_only=True)
class AdminToken:
    """``[[admin.tokens]]``: one bearer token of the admin console.

    Attributes:
        name: who holds it: audit events and logs name the token by this.
        token: the secret, a ``${env:NAME}`` reference; the console keeps
            only its SHA-256 digest.
        scope: ``read`` (inspect, tail events), ``operate`` (also start, stop,
            restart and revive channels, replay and discard dead letters) or
            ``admin`` (also drain the node).
        tenants: the tenants it may see and act on (unset: all).
        expires: when it stops working, an ISO 8601 time with its offset.
    """

    name: str = attrs.field(validator=IDENTIFIER)
    token: str = attrs.field(repr=False, validator=TOKEN)
    scope: Literal["read", "operate", "admin"] = "read"
    tenants: list[str] | None = None
    expires: str | None = attrs.field(default=None, validator=TIMESTAMP)


@attrs.frozen(kw_only=True)
class AdminConfig:
    """``[admin]``: the admin console's listener (off without this section).

    JSON-RPC 2.0 over a websocket on a listener of its own: a Unix socket
    (made 0600), and/or TCP. TCP on an address other than loopback needs TLS
    (``certfile`` and ``keyfile``) or ``insecure = true``, which is logged
    loudly at every start.

    Attributes:
        socket: a Unix socket path; relative to the deployment file's directory.
        host: a TCP interface to bind (unset: no TCP listener).
        port: the TCP port (0 picks a free one).
        certfile: a PEM certificate (chain) for wss://; relative to the file.
        keyfile: its PEM private key.
        insecure: allow plain ws:// on an address other than loopback.
        max_message_size: bytes one websocket message may have (the
            connection is closed with 1009 beyond).
        max_connections: connections open at once; more are refused (503).
        calls_per_second: calls one connection may make per second
            (``"20/s"``); more are refused with -32005.
        call_burst: calls allowed at once above that rate.
        events_per_second: event notifications sent to one connection per
            second; more are dropped and counted.
        event_burst: notifications allowed at once above that rate.
        tokens: the bearer tokens.
    """

    socket: str | None = attrs.field(default=None, validator=NOT_EMPTY)
    host: str | None = attrs.field(default=None, validator=NOT_EMPTY)
    port: int = attrs.field(default=8322, validator=PORT)
    certfile: str | None = attrs.field(default=None, validator=NOT_EMPTY)
    keyfile: str | None = attrs.field(default=None, validator=NOT_EMPTY)
    insecure: bool = False
    max_message_size: int = attrs.field(default=1024 * 1024, validator=AT_LEAST_ONE)
    max_connections: int = attrs.field(default=64, validator=AT_LEAST_ONE)
    calls_per_second: PerSecond = attrs.field(default=20.0, validator=POSITIVE)
    call_burst: int = attrs.field(default=40, validator=AT_LEAST_ONE)
    events_per_second: PerSecond = attrs.field(default=200.0, validator=POSITIVE)
    event_burst: int = attrs.field(default=400, validator=AT_LEAST_ONE)
    tokens: list[AdminToken] = attrs.field(factory=list)

    @property
    def tls(self) -> bool:
        return self.certfile is not None and self.keyfile is not None


@attrs.frozen(kw_only=True)
class MetricsConfig:
    """``[metrics]``: what ``/metrics`` exports.

    Per-tenant and per-provider aggregates are always there. Series per
    channel (eleven families, one series each per channel) are what makes a
    large node's scrape heavy, so they are opt-in above a size.

    Attributes:
        per_channel: ``"auto"``: per-channel series while the node runs at
            most ``per_channel_limit`` channels, aggregates only above;
            ``"always"``; ``"never"``.
        per_channel_limit: the channel count ``"auto"`` allows them up to.
    """

    per_channel: Literal["auto", "always", "never"] = "auto"
    per_channel_limit: int = attrs.field(default=1000, validator=NOT_NEGATIVE)

    def per_channel_series(self, channels: int) -> bool:
        """Whether a node running ``channels`` channels exports per-channel series."""
        if self.per_channel == "auto":
            return channels <= self.per_channel_limit
        return self.per_channel == "always"


@attrs.frozen(kw_only=True)
class ProfilingConfig:
    """``[profiling]``: continuous profiling with pyroscope (off unless a URL is set).

    Attributes:
        pyroscope_url: the pyroscope server.
        application_name: the application name profiles are filed under.
        tags: process-wide tags (the node id is added); never per actor.
        sample_rate: samples per second.
        auth_token: the server's token, if it wants one (a secret).
    """

    pyroscope_url: str | None = attrs.field(default=None, validator=HTTP_URL, repr=url_repr)
    application_name: str = attrs.field(default="switchboard", validator=NOT_EMPTY)
    tags: dict[str, str] = attrs.field(factory=dict)
    sample_rate: int = attrs.field(default=100, validator=AT_LEAST_ONE)
    auth_token: str | None = attrs.field(default=None, repr=False)


@attrs.frozen(kw_only=True)
class LoggingConfig:
    """``[logging]``.

    Attributes:
        level: the lowest level logged.
        format: ``text`` (for people), ``json`` (JSON lines), or ``auto``
            (text on a terminal, JSON otherwise).
        inbound: log every inbound message at INFO (handy locally; noisy at scale).
    """

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "text", "json"] = "auto"
    inbound: bool = False


@attrs.frozen(kw_only=True)
class RateLimitConfig:
    """Overrides of a platform's default send limits (unset: the platform's).

    The keys are :class:`providers.base.PlatformLimits`' names; ``per_second``,
    ``burst`` and ``per_peer_per_second`` are the deprecated names of
    ``per_channel_rate``, ``per_channel_burst`` and ``per_peer_rate``.

    Attributes:
        per_channel_rate: messages per second for the whole channel (``"30/s"``).
        per_channel_burst: burst for it, messages.
        per_peer_rate: messages per second to one chat / recipient (``"1/s"``,
            ``"20/min"``).
        per_peer_burst: burst for it, messages.
        max_text_length: longest text accepted, in characters.
        enabled: false turns the limiters off (load tests against emulators).
    """

    per_channel_rate: PerSecond | None = attrs.field(default=None, validator=POSITIVE)
    per_channel_burst: int | None = attrs.field(default=None, validator=AT_LEAST_ONE)
    per_peer_rate: PerSecond | None = attrs.field(default=None, validator=POSITIVE)
    per_peer_burst: int | None = attrs.field(default=None, validator=AT_LEAST_ONE)
    max_text_length: int | None = attrs.field(default=None, validator=AT_LEAST_ONE)
    enabled: bool = True


@attrs.frozen(kw_only=True)
class BackoffConfig:
    """Reconnect backoff overrides (full jitter; unset: the defaults).

    The keys are the backoff vocabulary every retry loop shares (see
    ``[supervisor] restart_backoff``); ``stable_after`` is the deprecated
    name of ``reset_after``.

    Attributes:
        base: seconds before the first retry (before jitter).
        cap: the longest wait.
        reset_after: seconds connected before the backoff starts over.
        max_attempts: give up (channel FAILED) after this many failed
            connects in a row; unset retries forever.
    """

    base: Seconds | None = attrs.field(default=None, validator=POSITIVE)
    cap: Seconds | None = attrs.field(default=None, validator=POSITIVE)
    reset_after: Seconds | None = attrs.field(default=None, validator=POSITIVE)
    max_attempts: int | None = attrs.field(default=None, validator=AT_LEAST_ONE)


@attrs.frozen(kw_only=True)
class ProviderDefaults:
    """``[providers.<name>]``: defaults for every channel of one provider.

    Attributes:
        max_connections: channels of this provider one node may run at once
            (unset: no limit).
        base_url: the platform's API root (unset: the provider's default).
        rate_limit: send limit overrides.
        backoff: reconnect backoff overrides.
        send_attempts: tries per message for transient failures.
        liveness_timeout: seconds without any event before a link is dead.
        send_window: sends in flight at once per channel (unset: enough
            for the platform's rate over a 300 ms round trip).
        options: provider-specific options, merged under each channel's.
    """

    max_connections: int | None = attrs.field(default=None, validator=NOT_NEGATIVE)
    base_url: str | None = attrs.field(default=None, validator=ENDPOINT_URL, repr=url_repr)
    rate_limit: RateLimitConfig = attrs.field(factory=RateLimitConfig)
    backoff: BackoffConfig = attrs.field(factory=BackoffConfig)
    send_attempts: int | None = attrs.field(default=None, validator=AT_LEAST_ONE)
    liveness_timeout: Seconds | None = attrs.field(default=None, validator=POSITIVE)
    send_window: int | None = attrs.field(default=None, validator=AT_LEAST_ONE)
    options: dict[str, Any] = attrs.field(factory=dict, repr=options_repr)


@attrs.frozen(kw_only=True)
class RestartBackoffConfig:
    """Delay between restarts of a crashed channel actor (Akka-style).

    The same vocabulary as a channel's reconnect ``backoff``; ``min`` and
    ``max`` are the deprecated names of ``base`` and ``cap``.

    Attributes:
        base: first delay, seconds.
        cap: longest delay before jitter, seconds.
        random_factor: jitter as a fraction of the delay.
        reset_after: seconds a restarted channel must stay up before the
            delays start over from ``base``.
    """

    base: Seconds = attrs.field(default=0.1, validator=POSITIVE)
    cap: Seconds = attrs.field(default=30.0, validator=POSITIVE)
    random_factor: float = attrs.field(default=0.2, validator=FRACTION)
    reset_after: Seconds = attrs.field(default=60.0, validator=POSITIVE)


@attrs.frozen(kw_only=True)
class SupervisorConfig:
    """``[supervisor]``: the policy of the channels' supervisor.

    Attributes:
        intensity: restarts allowed within ``period`` before the channels'
            supervisor gives up (OTP's MaxR).
        period: seconds (OTP's MaxT).
        restart_backoff: delay between restarts, so a crash loop never
            becomes a reconnect storm.
        shutdown: seconds a channel gets to stop before it is killed.
        channel_intensity: restarts one channel's actor may need within
            ``channel_period`` (each channel counts its own, never against
            ``intensity``); one more and that channel alone is FAILED, with
            the reason, while the others carry on.
        channel_period: seconds (the window of ``channel_intensity``).
    """

    intensity: int = attrs.field(default=100, validator=NOT_NEGATIVE)
    period: Seconds = attrs.field(default=10.0, validator=POSITIVE)
    channel_intensity: int = attrs.field(default=5, validator=NOT_NEGATIVE)
    channel_period: Seconds = attrs.field(default=60.0, validator=POSITIVE)
    restart_backoff: RestartBackoffConfig = attrs.field(factory=RestartBackoffConfig)
    shutdown: Seconds = attrs.field(default=5.0, validator=POSITIVE)


@attrs.frozen(kw_only=True)
class EmulatorConfig:
    """``[emulators.<platform>]``: a platform emulator started in-process.

    For local runs and tests: channels with ``emulator = true`` connect to it
    with credentials the node makes up, so none are written anywhere.

    Attributes:
        host: interface to bind: a loopback address unless ``allow_remote``.
        port: TCP port (0 picks a free one).
        allow_remote: allow a ``host`` that is not loopback (the emulator's
            control API has no authentication: only on a network you trust).
        options: keyword options of the emulator class.
    """

    host: str = attrs.field(default="127.0.0.1", validator=NOT_EMPTY)
    port: int = attrs.field(default=0, validator=PORT)
    allow_remote: bool = False
    options: dict[str, Any] = attrs.field(factory=dict, repr=options_repr)


@attrs.frozen(kw_only=True)
class ChannelSpec:
    """``[[channels]]``: one channel.

    Attributes:
        id: unique within the deployment (letters, digits, ``-_.``).
        tenant: the product tenant it belongs to.
        provider: ``discord``, ``telegram``, ``whatsapp``, ``websocket`` or
            ``simulated``.
        enabled: false keeps it in the file without starting it.
        emulator: connect to the in-process emulator of the provider
            (``[emulators.<provider>]``) with made-up credentials.
        credentials: tokens and secrets, each a ``${env:NAME}`` reference (in
            code, each a ``str``: the node learns them so, to redact them).
        base_url: the platform's API root (unset: provider default).
        options: provider-specific options (over the provider defaults').
        rate_limit: overrides of the provider defaults' limits.
        backoff: overrides of the provider defaults' backoff.
        send_attempts: overrides the provider defaults'.
        liveness_timeout: overrides the provider defaults'.
        send_window: overrides the provider defaults'.
    """

    id: str = attrs.field(validator=IDENTIFIER)
    tenant: str = attrs.field(default="default", validator=NAME)
    provider: str = attrs.field(validator=TEXT)
    enabled: bool = attrs.field(default=True, validator=FLAG)
    emulator: bool = attrs.field(default=False, validator=FLAG)
    credentials: dict[str, str] = attrs.field(factory=dict, repr=False, validator=STRING_TABLE)
    base_url: str | None = attrs.field(default=None, validator=ENDPOINT_URL, repr=url_repr)
    options: dict[str, Any] = attrs.field(factory=dict, repr=options_repr, validator=STRING_KEYS)
    rate_limit: RateLimitConfig | None = attrs.field(
        default=None,
        validator=Check("a RateLimitConfig", lambda v: isinstance(v, RateLimitConfig)),
    )
    backoff: BackoffConfig | None = attrs.field(
        default=None,
        validator=Check("a BackoffConfig", lambda v: isinstance(v, BackoffConfig)),
    )
    send_attempts: int | None = attrs.field(default=None, validator=AT_LEAST_ONE)
    liveness_timeout: Seconds | None = attrs.field(default=None, validator=POSITIVE)
    send_window: int | None = attrs.field(default=None, validator=AT_LEAST_ONE)


def channel_secrets(spec: ChannelSpec) -> list[str]:
    """A channel's secret values: its credentials, secret-bearing options and the
    credentials inside its URL (a channel started at run time has them too)."""
    found = [value for value in spec.credentials.values() if value]
    found.extend(option_secrets(spec.options))
    found.extend(url_secrets(spec.base_url))
    return found


@attrs.frozen(kw_only=True)
class NodeConfig:
    """A whole deployment file.

    Attributes:
        node: identity and shutdown.
        storage: where events and unsent messages are kept.
        ops: the ops HTTP listener.
        metrics: what ``/metrics`` exports.
        profiling: continuous profiling.
        logging: log level and format.
        supervisor: the channels' supervisor policy.
        providers: per-provider defaults, by provider name.
        emulators: in-process emulators, by platform name.
        channels: the channels, in start order.
        cluster: membership, placement and leases in Redis; ``None``: alone.
        admin: the admin console's listener and tokens; ``None``: no console.
        source: where the config came from (a path or ``<string>``).
        resolved_secrets: the values of ``${env:NAME}`` references resolved
            inside secret fields (the password inside a DSN, say), so logs
            can scrub them even where they appear without the rest.
        deprecations: one line per deprecated key the file uses (read under
            its new name), for ``check`` to print and ``run`` to log.
    """

    node: NodeSection = attrs.field(factory=NodeSection)
    storage: StorageConfig = attrs.field(factory=StorageConfig)
    ops: OpsConfig = attrs.field(factory=OpsConfig)
    metrics: MetricsConfig = attrs.field(factory=MetricsConfig)
    profiling: ProfilingConfig = attrs.field(factory=ProfilingConfig)
    logging: LoggingConfig = attrs.field(factory=LoggingConfig)
    supervisor: SupervisorConfig = attrs.field(factory=SupervisorConfig)
    providers: dict[str, ProviderDefaults] = attrs.field(factory=dict)
    emulators: dict[str, EmulatorConfig] = attrs.field(factory=dict)
    channels: list[ChannelSpec] = attrs.field(factory=list)
    cluster: ClusterConfig | None = None
    admin: AdminConfig | None = None
    source: str = "<string>"
    resolved_secrets: tuple[str, ...] = attrs.field(default=(), repr=False)
    deprecations: tuple[str, ...] = ()

    def secrets(self) -> list[str]:
        """Every secret value in the config, for log and HTTP redaction.

        Credentials, the DSN, tokens, the Redis URL, secret-bearing options
        (``webhook_secret``...) and the credentials inside URLs.
        """
        found = [
            value
            for value in (
                self.storage.dsn,
                self.ops.api_token,
                self.profiling.auth_token,
            )
            if value
        ]
        for channel in self.channels:
            found.extend(channel_secrets(channel))
        for defaults in self.providers.values():
            found.extend(option_secrets(defaults.options))
            found.extend(url_secrets(defaults.base_url))
        for emulator in self.emulators.values():
            found.extend(option_secrets(emulator.options))
        found.extend(url_secrets(self.ops.public_url))
        found.extend(url_secrets(self.profiling.pyroscope_url))
        found.extend(url_secrets(self.storage.dsn))  # (its password's pieces too)
        if self.cluster is not None:
            found.append(self.cluster.redis_url)
            found.extend(url_secrets(self.cluster.redis_url))
        if self.admin is not None:
            found.extend(token.token for token in self.admin.tokens if token.token)
        found.extend(value for value in self.resolved_secrets if value)
        return list(dict.fromkeys(found))  # (once each, in order)
