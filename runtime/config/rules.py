"""The rules of a deployment file that no single value's type or range can say.

Design: a rule is a pure function from the file's tree to the problems it
finds. Rules read the raw tree (TOML tables as dicts), not the structured
:class:`~runtime.config.model.NodeConfig`, so they run even when a value
elsewhere in the file failed to structure: every problem is reported at
once. They trust only values of the right type; a wrong type is the
converter's problem, reported once, by it. Numbers are read as the converter
reads them (``"30"`` from an environment variable is 30).

:data:`WRITTEN_RULES` see the file as written (a literal secret is a
property of the text); :data:`RULES` see it with ``${env:NAME}`` resolved.
No rule quotes the value of a secret field.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final, TypeAlias
from urllib.parse import parse_qsl, urlsplit

import attrs

from providers.emulators.base import is_loopback
from providers.options import credential_problem, emulator_problems, option_problems
from providers.registry import EMULATORS, PROVIDERS
from providers.whatsapp.core import graph_version_problem

from ..errors import ConfigProblem
from .model import AdminConfig, EmulatorConfig, OpsConfig, RestartBackoffConfig
from .refs import Path, dotted, has_reference, walk
from .units import parse_duration, parse_rate

__all__ = [
    "CREDENTIALS",
    "DEPRECATED_KEYS",
    "DEPRECATED_SETTINGS",
    "REQUIRED_OPTIONS",
    "RULES",
    "SECRET_FIELDS",
    "WRITTEN_RULES",
    "Rule",
    "admin_listener",
    "channel_credentials",
    "cluster_needs",
    "consistent_limits",
    "emulators_configured",
    "holds_secret",
    "is_secret",
    "known_providers",
    "listener_ports",
    "literal_secrets",
    "ops_tls",
    "renamed_keys",
    "storage_dsn",
    "unique_channel_ids",
    "unknown_name",
    "whatsapp_base_url",
]

Rule: TypeAlias = Callable[[Mapping[str, Any]], list[ConfigProblem]]
"""A rule: the file's tree in, its problems out."""

SECRET_FIELDS: Final = frozenset(
    {
        ("storage", "dsn"),
        ("ops", "api_token"),
        ("profiling", "auth_token"),
        ("cluster", "redis_url"),
    }
)
"""Fields (besides every ``channels[i].credentials`` value) that must be references."""

CREDENTIALS: Final[Mapping[str, Mapping[str, str | None]]] = {
    "discord": {"token": "the bot token"},
    "telegram": {"token": "the bot token from @BotFather", "webhook_secret": None},
    "whatsapp": {
        "token": "the system-user access token",
        "app_secret": "the Meta app secret",
        "verify_token": "the webhook verify token",
    },
    "websocket": {"token": None},
}
"""The credentials each provider reads: name -> what it is (``None``: optional).

A provider missing here (``simulated``) takes any credentials.
"""

REQUIRED_OPTIONS: Final[Mapping[str, Mapping[str, str]]] = {
    "whatsapp": {"phone_number_id": "the Cloud API phone number id"},
}
"""Options a provider cannot run without, in the channel's or its provider's options."""

_LITERAL_SECRET: Final = 'secrets must not be written in the file; use "${env:NAME}"'
_LITERAL_PASSWORD: Final = (
    "passwords must not be written in the file; use a reference for the password"
)
_SECRET_NAME: Final = re.compile(r"secret|token|password|passwd|api_?key", re.IGNORECASE)
# Pairs that must be ordered, low <= high, and why.
_ORDERED: Final = (
    (
        "rate_limit",
        "per_peer_rate",
        "per_channel_rate",
        "no peer is sent to faster than the channel",
    ),
    (
        "rate_limit",
        "per_peer_burst",
        "per_channel_burst",
        "no peer gets a larger burst than the channel",
    ),
    ("backoff", "base", "cap", "the longest wait cannot be shorter than the first"),
)


def is_secret(path: Path) -> bool:
    """Whether the value at ``path`` is a secret field, which must be a reference."""
    in_credentials = len(path) >= 3 and path[0] == "channels" and path[2] == "credentials"
    admin_token = len(path) == 4 and path[:2] == ("admin", "tokens") and path[3] == "token"
    return in_credentials or admin_token or path[:2] in SECRET_FIELDS


def holds_secret(path: Path) -> bool:
    """A secret field, or a key named like a secret anywhere (``options.webhook_secret``).

    Values found there are never quoted in problems, and the environment
    values resolved there join :attr:`NodeConfig.resolved_secrets`.
    """
    last = path[-1] if path else None
    return is_secret(path) or (isinstance(last, str) and _SECRET_NAME.search(last) is not None)


def unknown_name(what: str, name: str, known: Iterable[str]) -> str:
    """``unknown key "per_secnd"; did you mean "per_second"?`` (or the known names)."""
    names = sorted(known)
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"did you mean {_quote(close[0])}?" if close else f"expected one of {_quote(*names)}"
    return f"unknown {what} {_quote(name)}; {hint}"


# --- rules on the file as written -------------------------------------------------


def literal_secrets(doc: Mapping[str, Any]) -> list[ConfigProblem]:
    """Secret fields must reference the environment; a DSN may be literal without a password."""
    problems: list[ConfigProblem] = []
    for path, value in walk(doc):
        if not is_secret(path) or isinstance(value, Mapping | list):
            continue
        if path in (("storage", "dsn"), ("cluster", "redis_url")) and isinstance(value, str):
            if any(not has_reference(password) for password in _dsn_passwords(value)):
                example = (
                    '"redis://:${env:REDIS_PASSWORD}@host:6379"'
                    if path[0] == "cluster"
                    else '"postgresql://user:${env:PG_PASSWORD}@host/db"'
                )
                problems.append(
                    ConfigProblem(dotted(path), f"{_LITERAL_PASSWORD}, as in {example}")
                )
        elif not (isinstance(value, str) and has_reference(value)):
            problems.append(ConfigProblem(dotted(path), _LITERAL_SECRET))
    return problems


def _dsn_passwords(dsn: str) -> list[str]:
    """The password parts of a DSN, in URL or ``key=value`` form, as written."""
    if has_reference(dsn) and not re.search(r"://|password\s*=", dsn):
        return []  # the whole DSN comes from the environment
    try:
        parts = urlsplit(dsn)
    except ValueError:
        return [dsn]  # unparseable: only a reference is safe
    if parts.scheme:
        found = [parts.password] if parts.password else []
        return found + [value for key, value in parse_qsl(parts.query) if key == "password"]
    return re.findall(r"\bpassword\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", dsn)


# --- rules on the resolved file ----------------------------------------------------


def known_providers(doc: Mapping[str, Any]) -> list[ConfigProblem]:
    """``[providers.X]``, ``[emulators.X]`` and ``channels[i].provider`` name real ones."""
    problems = [
        ConfigProblem(dotted(("providers", name)), unknown_name("provider", name, PROVIDERS))
        for name in _table(doc, "providers")
        if name not in PROVIDERS
    ]
    for name in _table(doc, "emulators"):
        if name in PROVIDERS and name not in EMULATORS:
            message = f"the {name} provider has no emulator (it needs none); remove this table"
            problems.append(ConfigProblem(dotted(("emulators", name)), message))
        elif name not in EMULATORS:
            message = unknown_name("emulator", name, EMULATORS)
            problems.append(ConfigProblem(dotted(("emulators", name)), message))
    for index, channel in _channels(doc):
        provider = channel.get("provider")
        if isinstance(provider, str) and provider not in PROVIDERS:
            message = unknown_name("provider", provider, PROVIDERS)
            problems.append(ConfigProblem(f"channels[{index}].provider", message))
    return problems


def unique_channel_ids(doc: Mapping[str, Any]) -> list[ConfigProblem]:
    """No two channels share an id (the problem names both)."""
    problems = []
    first: dict[str, int] = {}
    for index, channel in _channels(doc):
        channel_id = channel.get("id")
        if not isinstance(channel_id, str):
            continue
        if channel_id in first:
            message = (
                f"duplicate channel id {_quote(channel_id)}: "
                f"channels[{first[channel_id]}] and channels[{index}] both use it"
            )
            problems.append(ConfigProblem(f"channels[{index}].id", message))
        else:
            first[channel_id] = index
    return problems


def emulators_configured(doc: Mapping[str, Any]) -> list[ConfigProblem]:
    """A channel with ``emulator = true`` needs ``[emulators.<its provider>]``."""
    problems = []
    emulators = _table(doc, "emulators")
    for index, channel in _channels(doc):
        provider = channel.get("provider")
        if not _flag(channel.get("emulator")) or not isinstance(provider, str):
            continue
        if provider not in PROVIDERS:
            continue
        if provider not in EMULATORS:
            message = f"the {provider} provider has no emulator; remove emulator = true"
        elif provider not in emulators:
            message = f"emulator = true needs an [emulators.{provider}] table"
        else:
            continue
        problems.append(ConfigProblem(f"channels[{index}].emulator", message))
    return problems


def cluster_needs(doc: Mapping[str, Any]) -> list[ConfigProblem]:
    """A cluster shares its durable state: no memory store; sane timings."""
    cluster = _table(doc, "cluster")
    if not cluster:
        return []
    problems = []
    backend = _table(doc, "storage").get("backend", "memory")
    if backend == "memory":
        problems.append(
            ConfigProblem(
                "storage.backend",
                "a cluster shares its channels' state between nodes: storage backend "
                '"memory" cannot; use "postgres" (or "sqlite" for nodes on one machine)',
            )
        )
    interval = _number(cluster.get("heartbeat_interval", 1.0))
    timeout = _number(cluster.get("member_timeout", 5.0))
    ttl = _number(cluster.get("lease_ttl", 10.0))
    if interval is not None and timeout is not None and timeout < 2 * interval:
        problems.append(
            ConfigProblem(
                "cluster.member_timeout",
                f"member_timeout ({_num(timeout)}) must be at least twice heartbeat_interval "
                f"({_num(interval)}): one late heartbeat must not declare a node dead",
            )
        )
    if interval is not None and ttl is not None and ttl < 3 * interval:
        problems.append(
            ConfigProblem(
                "cluster.lease_ttl",
                f"lease_ttl ({_num(ttl)}) must be at least three heartbeat_intervals "
                f"({_num(3 * interval)}): leases are renewed every third of it",
            )
        )
    return problems


def ops_tls(doc: Mapping[str, Any]) -> list[ConfigProblem]:
    """``ops.certfile`` and ``ops.keyfile`` go together (HTTPS needs both)."""
    ops = _table(doc, "ops")
    if "keyfile" in ops and "certfile" not in ops:
        return [ConfigProblem("ops", 'keyfile needs a certfile: add certfile = "cert.pem"')]
    if "certfile" in ops and "keyfile" not in ops:
        return [ConfigProblem("ops", 'certfile needs a keyfile: add keyfile = "key.pem"')]
    return []


def admin_listener(doc: Mapping[str, Any]) -> list[ConfigProblem]:
    """``[admin]`` listens somewhere, safely, with tokens of distinct names.

    TCP beyond loopback needs TLS or an explicit ``insecure = true``.
    """
    if "admin" not in doc:
        return []
    admin = _table(doc, "admin")
    problems: list[ConfigProblem] = []
    if "socket" not in admin and "host" not in admin:
        problems.append(
            ConfigProblem(
                "admin",
                'listens nowhere: add socket = "admin.sock" (a Unix socket) and/or '
                'host = "127.0.0.1"',
            )
        )
    has_cert, has_key = "certfile" in admin, "keyfile" in admin
    if has_key and not has_cert:
        problems.append(
            ConfigProblem("admin", 'keyfile needs a certfile: add certfile = "cert.pem"')
        )
    if has_cert and not has_key:
        problems.append(ConfigProblem("admin", 'certfile needs a keyfile: add keyfile = "k.pem"'))
    host = admin.get("host")
    if (
        isinstance(host, str)
        and host.strip()
        and not is_loopback(host)
        and not (has_cert and has_key)
        and admin.get("insecure") is not True
    ):
        problems.append(
            ConfigProblem(
                "admin.host",
                f"{json.dumps(host)} is not a loopback address: the console there needs TLS "
                "(certfile and keyfile), or insecure = true to serve it unencrypted anyway",
            )
        )
    tokens = admin.get("tokens", [])
    if isinstance(tokens, list):
        if not tokens:
            problems.append(
                ConfigProblem(
                    "admin",
                    "has no tokens, so nobody could use it: add [[admin.tokens]] with a name, "
                    'token = "${env:NAME}" and a scope',
                )
            )
        seen: set[str] = set()
        for index, token in enumerate(tokens):
            name = token.get("name") if isinstance(token, Mapping) else None
            if isinstance(name, str) and name in seen:
                problems.append(
                    ConfigProblem(
                        f"admin.tokens[{index}].name",
                        f"duplicate token name {json.dumps(name)}: audit events must tell "
                        "tokens apart",
                    )
                )
            if isinstance(name, str):
                seen.add(name)
    return problems


def storage_dsn(doc: Mapping[str, Any]) -> list[ConfigProblem]:
    """``backend = "postgres"`` needs a DSN."""
    storage = _table(doc, "storage")
    if storage.get("backend") != "postgres" or "dsn" in storage:
        return []
    message = 'missing "dsn": backend "postgres" needs one; add dsn = "${env:NAME}"'
    return [ConfigProblem("storage", message)]


def channel_credentials(doc: Mapping[str, Any]) -> list[ConfigProblem]:
    """Each channel has the credentials and options its provider needs, and no others.

    Channels with ``emulator = true`` need none: the node makes them up.
    """
    problems: list[ConfigProblem] = []
    providers = _table(doc, "providers")
    for index, channel in _channels(doc):
        provider = channel.get("provider")
        if not isinstance(provider, str) or provider not in CREDENTIALS:
            continue
        known = CREDENTIALS[provider]
        path = f"channels[{index}].credentials"
        credentials = _table(channel, "credentials")
        problems.extend(
            ConfigProblem(path, unknown_name("credential", key, known))
            for key in credentials
            if key not in known
        )
        if _flag(channel.get("emulator")):
            continue
        for key, value in credentials.items():
            if key in known and isinstance(value, str) and value:
                why = credential_problem(provider, key, value)
                if why is not None:
                    problems.append(ConfigProblem(f"{path}.{key}", why))
        for key, what in known.items():
            if what is not None and key not in credentials:
                message = f'missing credential "{key}" ({what}); add {key} = "${{env:NAME}}"'
                problems.append(ConfigProblem(path, message))
        options = {**_table(_table(providers, provider), "options"), **_table(channel, "options")}
        for key, what in REQUIRED_OPTIONS.get(provider, {}).items():
            if key not in options:
                message = (
                    f'missing option "{key}" ({what}); set it in the channel\'s options '
                    f"or in [providers.{provider}.options]"
                )
                problems.append(ConfigProblem(f"channels[{index}].options", message))
    return problems


def provider_options(doc: Mapping[str, Any]) -> list[ConfigProblem]:
    """Each channel's options, over its provider's, are what its provider accepts.

    The provider's own reading of its options runs here (:mod:`providers.options`),
    so ``check`` refuses what ``run`` would (Discord ``intents = "all"``).
    """
    problems: list[ConfigProblem] = []
    providers = _table(doc, "providers")
    for index, channel in _channels(doc):
        provider = channel.get("provider")
        if not isinstance(provider, str) or provider not in PROVIDERS:
            continue
        if not isinstance(channel.get("options", {}), Mapping):
            continue  # the converter reports the wrong type
        defaults = _table(_table(providers, provider), "options")
        own = _table(channel, "options")
        # An emulated channel's credentials are the emulator's (a token, no more).
        credentials = (
            () if _flag(channel.get("emulator")) else tuple(_table(channel, "credentials"))
        )
        for key, message in option_problems(provider, {**defaults, **own}, credentials):
            path: Path = ("channels", index, "options")
            if key in own:
                path = (*path, key)
            elif key in defaults:  # the provider's default, shared by its channels
                path = ("providers", provider, "options", key)
            problem = ConfigProblem(dotted(path), message)
            if problem not in problems:  # a default's problem, once for all its channels
                problems.append(problem)
    return problems


def emulator_hosts(doc: Mapping[str, Any]) -> list[ConfigProblem]:
    """An emulator binds to loopback unless ``allow_remote = true`` says otherwise."""
    problems: list[ConfigProblem] = []
    for name, emulator in _table(doc, "emulators").items():
        host = emulator.get("host") if isinstance(emulator, Mapping) else None
        remote = isinstance(host, str) and bool(host.strip()) and not is_loopback(host)
        if remote and not _flag(emulator.get("allow_remote")):
            message = (
                f"the {name} emulator would serve on {host!r}, beyond this machine: its "
                "control API has no authentication (anyone could inject signed messages "
                "and read every message sent); use 127.0.0.1, or set allow_remote = true "
                "on a network you trust"
            )
            problems.append(ConfigProblem(dotted(("emulators", name, "host")), message))
    return problems


# Hosts that bind every interface, so any other host's port is theirs too.
_EVERY_INTERFACE: Final = frozenset({"", "0.0.0.0", "::", "*"})


def listener_ports(doc: Mapping[str, Any]) -> list[ConfigProblem]:
    """No two listeners of the file (ops, the admin console's TCP, each emulator) on one
    port of overlapping hosts: the one started second could never listen, and its
    error would send the operator looking for another process."""
    listeners: list[tuple[str, str, int]] = []  # (port's setting, host, port)

    def add(path: Path, table: Mapping[str, Any], host: Any, port: Any) -> None:
        host, port = table.get("host", host), _port(table.get("port", port))
        if isinstance(host, str) and port:  # (0: any free port, never taken twice)
            listeners.append((dotted((*path, "port")), host.strip().lower(), port))

    if "ops" not in doc or _table(doc, "ops").get("enabled", True) not in (False, "false"):
        add(("ops",), _table(doc, "ops"), "127.0.0.1", attrs.fields(OpsConfig).port.default)
    admin = _table(doc, "admin")
    if "host" in admin:
        add(("admin",), admin, None, attrs.fields(AdminConfig).port.default)
    for name, emulator in _table(doc, "emulators").items():
        if isinstance(emulator, Mapping):
            add(
                ("emulators", name),
                emulator,
                "127.0.0.1",
                attrs.fields(EmulatorConfig).port.default,
            )
    problems = []
    for index, (setting, host, port) in enumerate(listeners):
        for other, other_host, other_port in listeners[:index]:
            overlap = host == other_host or _EVERY_INTERFACE & {host, other_host}
            if port == other_port and overlap:
                problems.append(
                    ConfigProblem(
                        setting,
                        f"{other} is {port} too, on an interface this one binds: only one "
                        f"of them could listen; change {setting} or {other}",
                    )
                )
                break
    return problems


def _port(value: Any) -> int | None:
    """A port as the converter reads it (``"9000"`` from the environment too), else ``None``."""
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            return None  # the converter reports it
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def emulator_options(doc: Mapping[str, Any]) -> list[ConfigProblem]:
    """``[emulators.X] options`` are keyword arguments the emulator takes."""
    problems: list[ConfigProblem] = []
    for name, emulator in _table(doc, "emulators").items():
        options = _table(emulator, "options")
        if not options or name not in EMULATORS:
            continue
        for key, message in emulator_problems(name, options):
            path: Path = (
                ("emulators", name, "options", key) if key else ("emulators", name, "options")
            )
            problems.append(ConfigProblem(dotted(path), message))
    return problems


def whatsapp_base_url(doc: Mapping[str, Any]) -> list[ConfigProblem]:
    """A WhatsApp ``base_url`` is the Graph API root, without a version.

    The provider adds the version itself (``options.api_version``), so
    ``https://graph.facebook.com/v21.0`` would call ``/v21.0/v21.0/...``.
    """
    places: list[tuple[Path, Any]] = [
        (("providers", "whatsapp", "base_url"), _table(_table(doc, "providers"), "whatsapp"))
    ]
    places += [
        (("channels", index, "base_url"), channel)
        for index, channel in _channels(doc)
        if channel.get("provider") == "whatsapp"
    ]
    problems = []
    for path, table in places:
        value = table.get("base_url")
        message = graph_version_problem(value) if isinstance(value, str) else None
        if message is not None:
            problems.append(ConfigProblem(dotted(path), message))
    return problems


def consistent_limits(doc: Mapping[str, Any]) -> list[ConfigProblem]:
    """Ordered pairs stay ordered once a channel's values overlay its provider's.

    ``per_peer_per_second <= per_second``, ``per_peer_burst <= burst``,
    backoff ``base <= cap``, and the supervisor's restart backoff
    ``base <= cap``. A pair is checked where one of its values is written:
    in ``[providers.X]`` alone, or in a channel over its provider's values.
    """
    problems = []
    providers = _table(doc, "providers")
    for name, defaults in providers.items():
        if isinstance(defaults, Mapping):
            problems.extend(_ordered_pairs(defaults, {}, ("providers", name), ""))
    for index, channel in _channels(doc):
        provider = channel.get("provider")
        under = _table(providers, provider) if isinstance(provider, str) else {}
        problems.extend(
            _ordered_pairs(channel, under, ("channels", index), f"providers.{provider}")
        )
    restart = _table(_table(doc, "supervisor"), "restart_backoff")
    low = _number(restart.get("base", RestartBackoffConfig().base))
    high = _number(restart.get("cap", RestartBackoffConfig().cap))
    if restart and _misordered(low, high):
        message = (
            f"cap ({_num(high)}) is below base ({_num(low)}): the longest delay cannot be "
            "shorter than the first"
        )
        problems.append(ConfigProblem("supervisor.restart_backoff", message))
    return problems


def _ordered_pairs(
    layer: Mapping[str, Any], under: Mapping[str, Any], path: Path, under_name: str
) -> list[ConfigProblem]:
    problems = []
    for section, low_key, high_key, why in _ORDERED:
        own, base = _table(layer, section), _table(under, section)
        if low_key not in own and high_key not in own:
            continue
        shown = []
        values = []
        for key in (low_key, high_key):
            inherited = key not in own
            value = _number((base if inherited else own).get(key))
            values.append(value)
            origin = f", from [{under_name}.{section}]" if inherited else ""
            shown.append(f"{key} ({_num(value)}{origin})")
        if _misordered(values[0], values[1]):
            message = f"{shown[0]} is above {shown[1]}: {why}"
            problems.append(ConfigProblem(dotted((*path, section)), message))
    return problems


# (where, old key, new key): keys renamed when every backoff took one vocabulary,
# and when the rate limits took PlatformLimits' names.
DEPRECATED_KEYS: Final[tuple[tuple[Path, str, str], ...]] = (
    (("supervisor", "restart_backoff"), "min", "base"),
    (("supervisor", "restart_backoff"), "max", "cap"),
    (("providers", "*", "backoff"), "stable_after", "reset_after"),
    (("channels", "*", "backoff"), "stable_after", "reset_after"),
    # The rate-limit keys took PlatformLimits' names.
    (("providers", "*", "rate_limit"), "per_second", "per_channel_rate"),
    (("providers", "*", "rate_limit"), "burst", "per_channel_burst"),
    (("providers", "*", "rate_limit"), "per_peer_per_second", "per_peer_rate"),
    (("channels", "*", "rate_limit"), "per_second", "per_channel_rate"),
    (("channels", "*", "rate_limit"), "burst", "per_channel_burst"),
    (("channels", "*", "rate_limit"), "per_peer_per_second", "per_peer_rate"),
)


# (where, key, what to do instead): settings still read, reported as deprecated.
DEPRECATED_SETTINGS: Final[tuple[tuple[Path, str, str], ...]] = (
    (
        ("storage",),
        "outbox_file",
        "the store keeps unsent messages itself (backend = 'sqlite' keeps them across "
        "restarts); the file is read once at start into the store, then deleted",
    ),
)


def renamed_keys(doc: Mapping[str, Any]) -> tuple[dict[str, Any], list[ConfigProblem], list[str]]:
    """The file with its deprecated keys read under their new names.

    Returns:
        ``(doc, problems, notices)``: a copy of ``doc`` with each deprecated
        key renamed in place (its position kept), a problem for each table
        that sets both names, and one notice per deprecated key found.
    """
    out = _copy_tables(doc)
    problems: list[ConfigProblem] = []
    notices: list[str] = []
    for where, old, new in DEPRECATED_KEYS:
        for path, table in _tables_at(out, where, ()):
            if old not in table:
                continue
            at = dotted(path)
            if new in table:
                problems.append(
                    ConfigProblem(
                        f"{at}.{old}",
                        f"both {old!r} and {new!r} are set; {old!r} is the deprecated "
                        f"name of {new!r}: keep only {new!r}",
                    )
                )
                del table[old]  # reported once, here, not again as an unknown key
                continue
            notices.append(f"{at}.{old} is deprecated: call it {new!r} (read as {at}.{new})")
            items = [(new if key == old else key, value) for key, value in table.items()]
            table.clear()
            table.update(items)
    for where, key, instead in DEPRECATED_SETTINGS:
        for path, table in _tables_at(out, where, ()):
            if key in table:
                notices.append(f"{dotted((*path, key))} is deprecated: {instead}")
    return out, problems, notices


def _copy_tables(node: Any) -> Any:
    if isinstance(node, Mapping):
        return {key: _copy_tables(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_copy_tables(value) for value in node]
    return node


def _tables_at(node: Any, where: Path, path: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    if not where:
        if isinstance(node, dict):
            yield path, node
        return
    head, rest = where[0], where[1:]
    if head == "*":
        if isinstance(node, dict):
            for key, value in node.items():
                yield from _tables_at(value, rest, (*path, key))
        elif isinstance(node, list):
            for index, value in enumerate(node):
                yield from _tables_at(value, rest, (*path, index))
    elif isinstance(node, dict) and head in node:
        yield from _tables_at(node[head], rest, (*path, head))


RULES: Final[tuple[Rule, ...]] = (
    known_providers,
    unique_channel_ids,
    emulators_configured,
    storage_dsn,
    ops_tls,
    admin_listener,
    channel_credentials,
    consistent_limits,
    cluster_needs,
    whatsapp_base_url,
    provider_options,
    emulator_options,
    emulator_hosts,
    listener_ports,
)
"""The rules on the file with its references resolved."""

WRITTEN_RULES: Final[tuple[Rule, ...]] = (literal_secrets,)
"""The rules on the file as written."""


# --- reading the raw tree -----------------------------------------------------------


def _table(node: Any, key: Any) -> Mapping[str, Any]:
    """``node[key]`` if both are tables, else an empty one (a wrong type is reported elsewhere)."""
    value = node.get(key) if isinstance(node, Mapping) else None
    return value if isinstance(value, Mapping) else {}


def _channels(doc: Mapping[str, Any]) -> Iterator[tuple[int, Mapping[str, Any]]]:
    channels = doc.get("channels")
    if isinstance(channels, list):
        for index, channel in enumerate(channels):
            if isinstance(channel, Mapping):
                yield index, channel


def _number(value: Any) -> float | None:
    """A finite number as the converter reads it (``"10s"`` and ``"30/s"`` too), else ``None``."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None  # an integer beyond any float: the converter reports it
    except ValueError:
        text = str(value)
        parsed = parse_rate(text) if "/" in text else parse_duration(text)
        return parsed
    return number if math.isfinite(number) else None


def _misordered(low: float | None, high: float | None) -> bool:
    """``low > high``, for two valid (positive) values; anything else is reported elsewhere."""
    return low is not None and high is not None and 0 < high < low


def _flag(value: Any) -> bool:
    return value is True or value == "true"


def _num(value: float | None) -> str:
    return "unset" if value is None else f"{value:g}"


def _quote(*names: str) -> str:
    return ", ".join(json.dumps(name, ensure_ascii=False) for name in names)
