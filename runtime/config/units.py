"""Numbers with units in a deployment file: durations and rates.

Design: one convention, the value carries its unit (as Go, Prometheus and
the OpenTelemetry Collector write durations): ``drain_deadline = "20s"``,
``flush_interval = "500ms"``, ``lease_ttl = "1m"``, ``per_channel_rate =
"30/s"``, ``per_peer_rate = "20/min"`` (or ``"1/6s"``: one per six
seconds). The model keeps plain floats in seconds and in events per second,
so code that builds a config (the embedded runtime) is unchanged; a field
says what it holds by its type, :data:`Seconds` or :data:`PerSecond`.

A bare number is still read, as seconds or per second, and reported as
deprecated (``check`` prints it, ``run`` logs it), as renamed keys are.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterator, Mapping
from types import UnionType
from typing import Annotated, Any, Final, Union, get_args, get_origin

import attrs

from .refs import Path

__all__ = [
    "DURATION_EXAMPLE",
    "RATE_EXAMPLE",
    "PerSecond",
    "Seconds",
    "Unit",
    "bare_numbers",
    "parse_duration",
    "parse_rate",
    "unit_of",
]


class Unit(enum.Enum):
    """What a number in the file measures."""

    SECONDS = "a duration"
    PER_SECOND = "a rate"


Seconds = Annotated[float, Unit.SECONDS]
"""A duration: ``"10s"``, ``"250ms"``, ``"2m"``, ``"1h"``, ``"1m30s"``; in the model, seconds."""

PerSecond = Annotated[float, Unit.PER_SECOND]
"""A rate: ``"30/s"``, ``"20/min"``, ``"100/h"``, ``"1/6s"``; in the model, per second."""

DURATION_EXAMPLE: Final = 'a duration such as "10s", "250ms", "2m" or "1h"'
RATE_EXAMPLE: Final = 'a rate such as "30/s", "20/min" or "1/6s"'

_SCALE: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_PART: Final = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(ms|min|s|m|h)")
_RATE: Final = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*/\s*(.+)")


def parse_duration(text: str) -> float | None:
    """``"1m30s"`` as 90.0 seconds; ``None`` if it is not a duration."""
    compact = text.strip().replace(" ", "")
    if not compact:
        return None
    total, end = 0.0, 0
    for match in _PART.finditer(compact):
        if match.start() != end:
            return None
        total += float(match.group(1)) * _SCALE[match.group(2)]
        end = match.end()
    return total if end == len(compact) and math.isfinite(total) else None


def parse_rate(text: str) -> float | None:
    """``"20/min"`` as 1/3 per second; ``None`` if it is not a rate."""
    match = _RATE.fullmatch(text.strip())
    if match is None:
        return None
    per = match.group(2).strip()
    period = parse_duration(per if per[0].isdigit() or per[0] == "." else f"1{per}")
    if period is None or period <= 0:
        return None
    rate = float(match.group(1)) / period
    return rate if math.isfinite(rate) else None


def unit_of(type_: Any) -> Unit | None:
    """The unit of a field's type (``Seconds``, ``PerSecond | None``), or ``None``."""
    if get_origin(type_) is Annotated:
        return next((m for m in get_args(type_)[1:] if isinstance(m, Unit)), None)
    if get_origin(type_) in (Union, UnionType):
        units = [unit_of(arg) for arg in get_args(type_) if arg is not type(None)]
        return units[0] if len(units) == 1 else None
    return None


def bare_numbers(cl: type, doc: Any, path: Path = ()) -> Iterator[Path]:
    """The paths in ``doc`` (the file's tables) where a unit's field holds a bare number.

    Walks ``doc`` along the attrs classes of the model; anything that does
    not fit the model is left for the converter to report.
    """
    if not isinstance(doc, Mapping):
        return
    attrs.resolve_types(cl)
    fields = {field.name: field.type for field in attrs.fields(cl)}
    for key, value in doc.items():
        type_ = fields.get(key)
        if type_ is None:
            continue
        yield from _bare(type_, value, (*path, key))


def _bare(type_: Any, value: Any, path: Path) -> Iterator[Path]:
    if unit_of(type_) is not None:
        if isinstance(value, int | float) and not isinstance(value, bool):
            yield path
        return
    inner = [arg for arg in get_args(type_) if arg is not type(None)]
    origin = get_origin(type_)
    if origin in (Union, UnionType) and len(inner) == 1:
        yield from _bare(inner[0], value, path)
    elif attrs.has(type_):
        yield from bare_numbers(type_, value, path)
    elif origin is dict and isinstance(value, Mapping) and attrs.has(inner[-1]):
        for key, item in value.items():
            yield from bare_numbers(inner[-1], item, (*path, key))
    elif origin is list and isinstance(value, list) and attrs.has(inner[0]):
        for index, item in enumerate(value):
            yield from bare_numbers(inner[0], item, (*path, index))
