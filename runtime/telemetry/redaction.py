"""Secrets out of every text that leaves the process: log lines, HTTP answers.

Design:
- One :class:`Redactor` replaces two kinds of thing with ``***``:

  - the values it was given (every secret of the config, 4 characters or
    more), longest first, in the forms they take after JSON escaping,
    ``repr`` and percent-encoding too;
  - credential *shapes*, whoever they belong to, because not every secret
    is known in advance (a channel added at run time, a platform's error
    page that echoes the request's ``Authorization`` header): the token of
    an ``Authorization: Bearer``/``Basic``/``Bot`` value, Telegram bot
    tokens (``123456:AA...``, also in ``/bot<token>/`` URLs), Meta access
    tokens (``EAA...``), the userinfo of a URL (``scheme://user:pass@``) and
    the values of credential query parameters (``access_token=``,
    ``token=``, ``secret=``, ``password=``, ``key=``, ``sig=``...).

- The log handler (:mod:`.logging`) and the ops HTTP app use the same
  class, so a reason shown in ``/health`` and the log line that reported
  it are scrubbed alike.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Iterable
from typing import Any, Final

__all__ = ["MIN_SECRET_LENGTH", "REDACTED", "Redactor", "scrub_shapes"]

REDACTED: Final = "***"
MIN_SECRET_LENGTH: Final = 4  # characters; shorter values would redact ordinary words

# (pattern, replacement): what a credential looks like, whoever it belongs to.
_SHAPES: Final[tuple[tuple[re.Pattern[str], str], ...]] = (
    # ``/bot<digits>:<token>`` in Telegram Bot API URLs (the colon may be %-encoded).
    (re.compile(r"(?<=/bot)\d+(?::|%3[Aa])[A-Za-z0-9_-]+"), REDACTED),
    # A bare Telegram bot token.
    (re.compile(r"\b\d{5,}:[A-Za-z0-9_-]{30,}"), REDACTED),
    # The credentials of an Authorization header (echoed by an error page, say).
    (
        re.compile(r"(?i)\b(bearer|basic|bot)(\s+|%20)[A-Za-z0-9._~+/=:-]{6,}"),
        rf"\1\2{REDACTED}",
    ),
    # A Meta (WhatsApp Cloud API) access token.
    (re.compile(r"\bEAA[A-Za-z0-9]{16,}"), REDACTED),
    # The userinfo of a URL: scheme://user:password@host.
    (re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://)[^\s/@\"'<>]+@"), rf"\1{REDACTED}@"),
    # The value of a credential in a query string or a form.
    (
        re.compile(
            r"(?i)([?&;](?:access_token|token|secret|client_secret|password|passwd|pwd|api_key|"
            r"apikey|key|sig|signature|auth)=)[^&\s#\"'<>]+"
        ),
        rf"\1{REDACTED}",
    ),
)


def scrub_shapes(text: str) -> str:
    """``text`` with every credential shape (see the module) replaced by ``***``."""
    for pattern, replacement in _SHAPES:
        text = pattern.sub(replacement, text)
    return text


class Redactor:
    """Replaces known secret values and credential shapes in text with ``***``.

    Args:
        secrets: values to redact from the start (more with :meth:`add`).
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        # Secrets added, and the pattern built for how many adds: the pattern is
        # built at the next scrub, so adds in a row (a thousand channels started
        # at run time) cost one build, not one each (a quadratic stall).
        self._version = 0
        self._built = 0
        self.add(secrets)

    def __repr__(self) -> str:
        return f"<Redactor secrets={len(self._secrets)}>"  # never the values

    def add(self, values: Iterable[str]) -> None:
        """Redact these values too from now on (values under 4 characters are ignored)."""
        fresh = {value for value in values if isinstance(value, str)}
        fresh = {value for value in fresh if len(value) >= MIN_SECRET_LENGTH}
        if fresh <= self._secrets:
            return
        self._secrets |= fresh
        self._version += 1

    def _current(self) -> re.Pattern[str] | None:
        """The pattern of every secret added so far (built here if an add came since)."""
        version = self._version
        if self._built != version:
            forms: set[str] = set()
            for secret in tuple(self._secrets):  # (one C call: no thread's add cuts in)
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
            # One assignment each: a thread logging meanwhile builds it too, or
            # reads a pattern that holds every secret added before its scrub.
            self._pattern = re.compile("|".join(map(re.escape, ordered)))
            self._built = version
        return self._pattern

    def scrub(self, text: str) -> str:
        """``text`` without the known secrets and without credential shapes."""
        pattern = self._current()
        if pattern is not None:
            text = pattern.sub(REDACTED, text)
        return scrub_shapes(text)

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
