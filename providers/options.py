"""Provider and emulator options checked before anything runs (``switchboard check``).

Design:
- A channel's ``options`` are read by its provider when the channel opens;
  a bad one used to surface only then, as a traceback on every restart
  (Discord ``intents = "all"``), while ``check`` passed the file. So each
  provider's own reading of its options runs here too, on the merged
  options of a channel, and what it refuses becomes a problem for the
  config; nothing connects and no credential is needed (placeholders stand
  in for them: whether credentials are present is the config's own rule).
- The limits each provider reads from its options (:data:`LIMIT_OPTIONS`:
  ``max_body_bytes``, ``max_message_bytes``, ``request_deadline``) are
  checked here first, one rule for all providers, each refusal with its own
  key (so ``check`` names ``channels[2].options.max_body_bytes``): a whole
  number of bytes from 1 to :data:`MAX_LIMIT_BYTES`, a finite number of
  seconds above 0 and at most :data:`MAX_LIMIT_SECONDS`. ``true`` is not a
  byte count (TOML booleans are Python ints) and ``inf`` is no deadline: both
  would pass the providers' own readings and undo the cap. A string is read
  as the providers read one (``request_deadline = "${env:DEADLINE}"``), so
  ``check`` and a running channel agree. A value is quoted only when it is
  a number (a string may have come from the environment).
- Each provider reads its options with a converter from
  :func:`options_converter`: cattrs' own reading of a boolean is Python's
  ``bool(value)``, so ``verify_on_open = "no"`` was read as true, and of
  an integer ``int(value)``, so ``poll_timeout = 2.5`` became 2 and
  ``true`` became 1. Its booleans are ``true`` or ``false`` (the strings
  too, as the config file's loader takes them); its integers are whole
  numbers that are not booleans (``64.0`` too, and a string of ASCII
  digits, as the loader reads the environment). Any other value of such an
  option is refused with what was expected. A number that may take a
  fraction is finite and not a boolean (``timeout = true`` was 1 second,
  ``"nan"`` no timeout at all); a string of one is taken. Their refusals
  keep their own words in the error (:func:`options_error`), where cattrs
  would say only "invalid value for type, expected int".
- Emulator options are the keyword arguments of the emulator class: an
  unknown name is refused with the known ones, and the class is built once
  with them, so a value it refuses is refused here.
- Providers are imported lazily, by name (:mod:`providers.registry`).
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Collection, Mapping
from typing import Any, Final, Literal, TypeAlias, get_args, get_origin

import cattrs
from cattrs.v import format_exception

from .base import ChannelConfig, FatalError
from .registry import EMULATORS, load

__all__ = [
    "LIMIT_OPTIONS",
    "MAX_EVENT_BUFFER",
    "MAX_LIMIT_BYTES",
    "MAX_LIMIT_SECONDS",
    "OptionValueError",
    "buffer_size",
    "credential_problem",
    "discord_compress",
    "discord_intents",
    "emulator_problems",
    "limit",
    "limit_problem",
    "option_problems",
    "options_converter",
    "options_error",
    "read_limit",
]

_PLACEHOLDER: Final = "placeholder-for-check"
_CREDENTIAL_OPTIONS: Final = frozenset({"webhook_secret"})  # options a credential can stand for
MAX_INTENTS: Final = 2**53  # far above every intent bit Discord defines
MAX_LIMIT_BYTES: Final = 1 << 30  # bytes (1 GiB); a larger cap caps nothing a node can hold
MAX_LIMIT_SECONDS: Final = 3600.0  # seconds; a longer deadline is no deadline
MAX_EVENT_BUFFER: Final = 65536  # events; a larger buffer bounds nothing a node can hold

LIMIT_OPTIONS: Final[Mapping[str, Mapping[str, str]]] = {
    "discord": {"max_body_bytes": "bytes", "max_message_bytes": "bytes"},
    "telegram": {"max_body_bytes": "bytes", "request_deadline": "seconds"},
    "whatsapp": {"max_body_bytes": "bytes", "request_deadline": "seconds"},
    "websocket": {"max_message_bytes": "bytes"},
}
"""The size and time limits each provider reads from a channel's options: key -> unit."""


def _shown(value: Any) -> str:
    """A value for a message: numbers as written, anything else by its type only."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return repr(value) if value.bit_length() <= 64 else "an integer past any limit"
    if isinstance(value, float):
        return repr(value)
    kinds = {str: "a string", dict: "a table", list: "an array"}
    return next((name for kind, name in kinds.items() if isinstance(value, kind)), "a value")


def limit_problem(name: str, unit: str, value: Any) -> str | None:
    """What is wrong with the limit option ``name`` (``unit``: bytes or seconds), or None.

    A string is read as the providers read one (a number written in the
    environment: ``request_deadline = "${env:DEADLINE}"``), then bounded.

    Args:
        name: the option's key (``max_body_bytes``).
        unit: ``"bytes"`` (a whole number from 1 to :data:`MAX_LIMIT_BYTES`) or
            ``"seconds"`` (a finite number above 0, at most :data:`MAX_LIMIT_SECONDS`).
        value: the option's value.
    """
    try:
        read_limit(name, unit, value)
    except OptionValueError as exc:
        return str(exc)
    return None


def read_limit(name: str, unit: str, value: Any, *, text: bool = True) -> int | float:
    """The limit option ``name`` as a number of ``unit`` (see :func:`limit_problem`).

    Args:
        name, unit, value: as for :func:`limit_problem`.
        text: whether the value is read as the providers read an option
            (a string of a number, ``64.0`` for 64 bytes); without it, an
            options class's field, the value must be the number itself.

    Raises:
        OptionValueError: not such a number, or out of bounds; the message
            says which option, what it is and what is expected.
    """
    kinds = int if unit == "bytes" else int | float
    number: int | float | None = None
    if text:
        try:
            number = _strict_int(value, int) if unit == "bytes" else _strict_float(value, float)
        except OptionValueError:
            number = None
    elif isinstance(value, kinds) and not isinstance(value, bool):
        number = value  # compared as it is: an integer past any float stays one
    # A string read as a number is not shown, nor the number (it may be a secret).
    shown = "a string out of bounds" if number is not None and isinstance(value, str) else None
    if unit == "bytes":
        if number is not None and 1 <= number <= MAX_LIMIT_BYTES:
            return number
        raise OptionValueError(
            f"options.{name} is {shown or _shown(value)}; expected a whole number of bytes "
            f"from 1 to {MAX_LIMIT_BYTES} (1 GiB), e.g. {name} = 8388608 for 8 MiB"
        )
    if number is not None and 0 < number <= MAX_LIMIT_SECONDS:
        return number
    raise OptionValueError(
        f"options.{name} is {shown or _shown(value)}; expected a number of seconds above 0 "
        f"and at most {MAX_LIMIT_SECONDS:g}, e.g. {name} = 30"
    )


def limit(unit: str) -> Callable[[Any, Any, Any], None]:
    """An attrs validator of a limit option (:func:`limit_problem`'s bounds, ``unit``).

    The options classes of the providers use it, so that an embedding
    program's options (which no ``switchboard check`` reads) are held to
    the same bounds as a file's: ``true``, ``inf`` or 2 GiB would undo the cap.
    """

    def check(instance: Any, attribute: Any, value: Any) -> None:
        read_limit(attribute.name, unit, value, text=False)

    return check


def buffer_size(instance: Any, attribute: Any, value: int) -> None:
    """An attrs validator of an event buffer's size: 1 to :data:`MAX_EVENT_BUFFER` events.

    A buffer of 0 makes the platform's side wait for each event to be taken,
    a negative one cannot be made (the connection failed at every open), and
    ``10**15`` holds whatever the platform sends while the consumer is slow.
    """
    if not 1 <= value <= MAX_EVENT_BUFFER:
        raise OptionValueError(
            f"options.{attribute.name} is {_shown(value)}; expected a whole number of events "
            f"from 1 to {MAX_EVENT_BUFFER}, e.g. {attribute.name} = 1024"
        )


def options_converter() -> cattrs.Converter:
    """A converter for a provider's options: unknown keys refused, booleans and
    numbers read strictly (see the module docstring)."""
    converter = cattrs.Converter(detailed_validation=True, forbid_extra_keys=True)
    converter.register_structure_hook(bool, _strict_bool)
    converter.register_structure_hook(int, _strict_int)
    converter.register_structure_hook(float, _strict_float)
    return converter


class OptionValueError(ValueError):
    """A provider option's value that its reading refuses; the message says
    what came (a number as written, anything else by its type only) and what
    was expected, and is shown as it is (:func:`options_error`)."""


def options_error(exc: BaseException) -> str:
    """The problems of a provider's reading of its options, each at its path
    (``expected a whole number, got 2.5 @ $.options.poll_timeout``)."""
    if not isinstance(exc, cattrs.BaseValidationError):
        return str(exc)
    return "; ".join(cattrs.transform_error(exc, path="$.options", format_exception=_why))


def _why(exc: BaseException, type_: type | None) -> str:
    # The strict readings and the attrs validators (a bound) say what was wrong;
    # cattrs' own words are only the expected type.
    if isinstance(exc, OptionValueError) or (type_ is None and isinstance(exc, ValueError)):
        return str(exc)
    if get_origin(type_) is Literal:  # cattrs' words quote the value, which may be a secret
        return f"expected one of {', '.join(repr(choice) for choice in get_args(type_))}"
    text = format_exception(exc, type_)
    return f"invalid value ({type(exc).__name__})" if text.startswith("unknown error") else text


def _strict_bool(value: Any, _: type) -> bool:
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return bool(value == "true")
    raise OptionValueError(f"expected true or false, got {_shown(value)}")


_WHOLE: Final = re.compile(r"[+-]?[0-9]{1,18}")  # ASCII digits, as the config loader reads them


def _strict_int(value: Any, _: type) -> int:
    if isinstance(value, bool):
        raise OptionValueError(f"expected a whole number, got {_shown(value)}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _WHOLE.fullmatch(value.strip()):
        return int(value)
    raise OptionValueError(f"expected a whole number, got {_shown(value)}")


def _strict_float(value: Any, _: type) -> float:
    number = math.nan
    if not isinstance(value, bool) and (
        isinstance(value, int | float) or (isinstance(value, str) and len(value) <= 64)
    ):
        try:
            number = float(value)
        except (ValueError, OverflowError):  # not a number; an integer past any float
            number = math.nan
    if not math.isfinite(number):
        raise OptionValueError(f"expected a finite number, got {_shown(value)}")
    return number


def discord_intents(options: Mapping[str, Any], default: int) -> int:
    """The gateway intents of a Discord channel's options.

    Raises:
        FatalError: ``intents`` is not a whole number from 0 (a bit set).
    """
    value = options.get("intents", default)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < MAX_INTENTS:
        raise FatalError(
            f"options.intents is {_shown(value)}; expected the gateway intents as a whole number "
            "(a bit set, e.g. 33281 for guilds, guild messages, direct messages and "
            "message content)"
        )
    return value


def discord_compress(options: Mapping[str, Any], default: str | None) -> str | None:
    """The gateway transport compression of a Discord channel's options (``None``: off).

    Raises:
        FatalError: not one of the compressions Discord offers, nor ``"none"``.
    """
    from .discord.compress import COMPRESSIONS

    value = options.get("compress", default)
    if value == "none" or value is None:
        return None
    if value not in COMPRESSIONS:
        raise FatalError(
            f"options.compress is {_shown(value)}; use one of {', '.join(COMPRESSIONS)} or none"
        )
    return str(value)


def _discord(options: Mapping[str, Any], credentials: Collection[str]) -> None:
    discord_intents(options, 0)
    discord_compress(options, None)


def _telegram(options: Mapping[str, Any], credentials: Collection[str]) -> None:
    from .telegram.core import parse_options

    # A webhook secret in the credentials wins over the options' (then not read);
    # without either, webhook mode is refused.
    secret = {"webhook_secret": _PLACEHOLDER} if "webhook_secret" in credentials else {}
    parse_options(options, secret)


def _whatsapp(options: Mapping[str, Any], credentials: Collection[str]) -> None:
    from .whatsapp.core import WhatsAppSettings

    credentials = dict.fromkeys(("token", "app_secret", "verify_token"), _PLACEHOLDER)
    filled = {"phone_number_id": _PLACEHOLDER, **options}  # a missing one is reported elsewhere
    config = ChannelConfig(
        channel_id="check", provider="whatsapp", credentials=credentials, options=filled
    )
    WhatsAppSettings.from_config(config)


def _websocket(options: Mapping[str, Any], credentials: Collection[str]) -> None:
    from .websocket.shell import parse_options

    parse_options(options)


_Check: TypeAlias = Callable[[Mapping[str, Any], Collection[str]], None]
_CHECKS: Final[Mapping[str, _Check]] = {
    "discord": _discord,
    "telegram": _telegram,
    "whatsapp": _whatsapp,
    "websocket": _websocket,
}


def credential_problem(provider: str, key: str, value: str) -> str | None:
    """What ``provider``'s platform would refuse in the value of credential
    ``key``, without quoting it; ``None`` when nothing is seen.

    Only what is sure to fail: whitespace around a value (a newline read
    from a file with the token: every call of the platform refused, the
    channel failed at its first connect), and a Telegram webhook secret
    outside the platform's characters. A token's own shape is the
    platform's to judge.
    """
    if value != value.strip():
        return (
            f"credential {key!r} has whitespace at its start or end (a newline read from a "
            "file?), which no platform's credentials have: remove it"
        )
    if provider == "telegram" and key == "webhook_secret":
        from .telegram.core import WEBHOOK_SECRET_RULE, webhook_secret_ok

        if not webhook_secret_ok(value):
            return f"credential {key!r} is refused: {WEBHOOK_SECRET_RULE}"
    return None


def option_problems(
    provider: str, options: Mapping[str, Any], credentials: Collection[str] = ()
) -> list[tuple[str, str]]:
    """What ``provider`` would refuse in a channel's (merged) ``options``: ``(key, message)``.

    Args:
        provider: the provider name (one without a check, ``simulated``, takes any).
        options: the channel's options over its provider defaults'.
        credentials: the names of the credentials the channel will have (their
            values are not needed: a stand-in is read): Telegram's
            ``webhook_secret`` there wins over the options'.

    Returns:
        One ``(key, message)`` per refusal, empty when fine: first each bad
        limit (:data:`LIMIT_OPTIONS`, by its key), then the provider's own
        reading of the rest, in its words: one per key it refuses on its own,
        or, when no key does (a combination), key ``""``: the options as a whole.
    """
    check = _CHECKS.get(provider)
    if check is None:
        return []
    problems = [
        (key, message)
        for key, unit in LIMIT_OPTIONS.get(provider, {}).items()
        if key in options and (message := limit_problem(key, unit, options[key])) is not None
    ]
    rest = {key: value for key, value in options.items() if key not in dict(problems)}
    refused = _refusal(check, rest, credentials)
    if refused is None:
        return problems
    # Each key the provider refuses on its own is named, with its own refusal, so
    # that check reports it where it is written (a provider default once, not once
    # per channel); a refusal no key earns alone (a combination) is the options'.
    # The provider's own path of the key (or of the options, where a validator of
    # the key refused it) is dropped there: check names the key's. A key read
    # alone has the credentials the other options give (Telegram's
    # webhook_secret): a webhook is not refused for want of a secret written
    # beside it, which is read, and named, on its own.
    given = (*credentials, *(key for key in rest if key in _CREDENTIAL_OPTIONS))
    own = [
        (key, why.replace(f" @ $.options.{key}", "").removesuffix(" @ $.options"))
        for key in rest
        if (
            why := _refusal(
                check, {key: rest[key]}, credentials if key in _CREDENTIAL_OPTIONS else given
            )
        )
        is not None
    ]
    return problems + (own or [("", refused)])


def _refusal(check: _Check, options: Mapping[str, Any], credentials: Collection[str]) -> str | None:
    """Why ``check`` refuses ``options``, or None."""
    try:
        check(options, credentials)
    except FatalError as exc:
        # The reading's own words, without the provider's preamble about a channel
        # (the one check reads is a stand-in: ``whatsapp channel 'check'``).
        if isinstance(exc.__cause__, cattrs.BaseValidationError):
            return options_error(exc.__cause__)
        return str(exc)
    except (TypeError, ValueError) as exc:  # a provider's reading that is not yet mapped
        return f"invalid options: {exc}"
    return None


def emulator_problems(platform: str, options: Mapping[str, Any]) -> list[tuple[str, str]]:
    """What the ``platform`` emulator would refuse in its ``options``: ``(key, message)``.

    The key is ``""`` for a refusal of the options as a whole.
    """
    if platform not in EMULATORS:
        return []  # an unknown emulator is reported by the config's own rule
    emulator = load(EMULATORS, platform)
    parameters = inspect.signature(emulator).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    known = [
        name
        for name, p in parameters.items()
        if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    unknown = [(key, known) for key in options if key not in known and not takes_any]
    if unknown:
        return [
            (key, f"unknown option {key!r}; the {platform} emulator takes {', '.join(names)}")
            for key, names in unknown
        ]
    try:
        emulator(**options)
    except Exception as exc:  # the emulator's own refusal, in its words, never a traceback
        return [("", f"the {platform} emulator refused its options: {exc}")]
    return []
