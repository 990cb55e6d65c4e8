"""What the HTTP adapters' sans-IO cores share when they read an answer.

Design: platform answers are read leniently, because an error answer is
often not what its documentation says (an HTML page from a proxy, an empty
429): :func:`json_body` never raises, and the core decides what a missing or
malformed body means. Header names are case-insensitive on the wire and
httpx keeps them as sent, so cores look them up in :func:`lower_keys`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["json_body", "lower_keys"]


def json_body(body: bytes) -> Any:
    """The JSON value of ``body``; ``None`` when it is empty or not JSON."""
    try:
        return json.loads(body)
    except ValueError:  # empty, not JSON, or not UTF-8 (UnicodeDecodeError)
        return None


def lower_keys(headers: Mapping[str, str]) -> dict[str, str]:
    """``headers`` with lower-case names, for case-insensitive lookups."""
    return {k.lower(): v for k, v in headers.items()}
