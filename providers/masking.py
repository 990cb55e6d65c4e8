"""Secret-bearing values kept out of reprs and messages: option values and URL credentials.

Design:
- Credentials have their own field (``credentials``, never shown), but
  secrets also arrive where they are not expected: an option named
  ``webhook_secret``, a ``base_url`` with ``user:password@`` or
  ``?access_token=``. Every config type that carries ``options`` or a URL
  shows them through :func:`options_repr` / :func:`url_repr`, and
  :func:`option_secrets` / :func:`url_secrets` hand the same values to the
  log and HTTP scrubbers.
- An option is secret when its name says so (:func:`is_secret_key`: it
  contains ``secret``, ``token``, ``password``, ``key``, ``credential``,
  ``auth``, ``signature`` or ``dsn``) and its value is a string, at any
  depth; a string option that is a URL has its userinfo and credential
  query parameters masked like ``base_url``.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final

__all__ = [
    "MASK",
    "SHORTEST_MASKED_TOKEN",
    "is_secret_key",
    "mask_options",
    "mask_token",
    "mask_url",
    "option_secrets",
    "options_repr",
    "scrubbed",
    "shown",
    "url_repr",
    "url_secrets",
]

MASK: Final = "***"
# Characters; a shorter token (no platform's is) would mask ordinary words.
SHORTEST_MASKED_TOKEN: Final = 8

_SECRET_KEY: Final = re.compile(
    r"(?i)secret|token|passw|pwd|credential|api_?key|private_?key|signature|auth|dsn|^key$|^sig$"
)


def is_secret_key(name: object) -> bool:
    """Whether an option named ``name`` holds a secret (``webhook_secret``, ``api_key``...)."""
    return isinstance(name, str) and _SECRET_KEY.search(name) is not None


def _split(url: str) -> urllib.parse.SplitResult | None:
    if "://" not in url:
        return None
    try:
        return urllib.parse.urlsplit(url)
    except ValueError:
        return None


def mask_url(url: str | None) -> str | None:
    """``url`` with its userinfo and every query value replaced by ``***``."""
    if url is None:
        return None
    parts = _split(url)
    if parts is None or ("@" not in parts.netloc and not _secret_query(parts.query)):
        return url
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rpartition('@')[2]}"
    query = "&".join(
        f"{name}={MASK if is_secret_key(name) else urllib.parse.quote(value, safe='')}"
        for name, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    )
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


def _secret_query(query: str) -> list[str]:
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    return [value for name, value in pairs if is_secret_key(name) and value]


def url_secrets(url: str | None) -> list[str]:
    """The secret parts of ``url``: its userinfo (whole, and the password), the
    password as written and its pieces (:func:`_written_password`), and the
    values of credential query parameters (``access_token=``, ``key=``, ``sig=``...)."""
    found = _written_password(url) if url is not None else []
    parts = _split(url) if url is not None else None
    if parts is None:
        return found
    if "@" in parts.netloc:
        userinfo = parts.netloc.rpartition("@")[0]
        found.append(userinfo)
        _, colon, password = userinfo.partition(":")
        if colon and password:
            found.extend({password, urllib.parse.unquote(password)})
    found.extend(_secret_query(parts.query))
    return found


def _written_password(url: str) -> list[str]:
    """The password between ``user:`` and the host's ``@`` as written, and its pieces.

    A password with a character a URL must escape (``? # /``) written bare
    is not the password a URL parser finds: ``user:x?Tr0ub4dor@host`` is the
    password ``x`` and a query; ``user:1234/Tr0ub4dor@host`` is the host
    ``user``, the port ``1234`` and a path. The parsers quote the rest in
    their errors, and "where" such a URL points, read off the parsed parts,
    holds it. So each piece of three characters or more is a secret too,
    lowercased as a parser gives back a host, and a piece of digits as it
    gives back a port (``0099``: ``99``).
    """
    _, scheme, rest = url.partition("://")
    userinfo, at, _ = rest.rpartition("@")
    if not scheme or not at or ":" not in userinfo:
        return []
    written = userinfo.split(":", 1)[1]
    pieces = [piece for piece in re.split(r"[?#/@:\[\]]", written) if len(piece) >= 3]
    found = [written, *pieces, *(piece.lower() for piece in pieces)]
    found += [str(int(piece)) for piece in pieces if piece.isdigit()]
    return [secret for secret in found if secret]


def scrubbed(text: str, secrets: Iterable[str]) -> str:
    """``text`` with each of ``secrets`` replaced by ``***``, longest first, whatever
    its case."""
    for secret in sorted(set(secrets), key=len, reverse=True):
        if secret:
            text = re.sub(re.escape(secret), MASK, text, flags=re.IGNORECASE)
    return text


def mask_token(text: str, token: str) -> str:
    """``text`` with ``token`` masked, and any start of it that is cut short.

    An error quotes a platform's text in part (a Meta token is about 200
    characters, and an echo of it was cut inside it; a Telegram error quotes
    80 bytes of a proxy's page that echoes the request's path), so a search
    for the whole token does not find it, and most of it went out. Every
    run of the token's characters that starts with its first
    :data:`SHORTEST_MASKED_TOKEN` is masked; a shorter token is left alone.
    """
    if len(token) < SHORTEST_MASKED_TOKEN:
        return text
    head = token[:SHORTEST_MASKED_TOKEN]
    start = text.find(head)
    while start != -1:
        end = start + len(head)
        while end < len(text) and end - start < len(token) and text[end] == token[end - start]:
            end += 1
        text = text[:start] + MASK + text[end:]
        start = text.find(head, start + len(MASK))
    return text


def mask_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``options`` with every secret-bearing value replaced by ``***``."""
    return {key: _masked(key, value) for key, value in options.items()}


def _masked(key: object, value: Any) -> Any:
    if is_secret_key(key) and isinstance(value, str):
        return MASK
    if isinstance(value, Mapping):
        return {k: _masked(k, v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_masked(None, item) for item in value]
    if isinstance(value, str):
        return mask_url(value)
    return value


def option_secrets(options: Mapping[str, Any]) -> list[str]:
    """Every secret string in ``options`` (by name, or a URL's credentials), for scrubbers."""
    return list(_secrets_in(None, options))


def _secrets_in(key: object, value: Any) -> Iterator[str]:
    if isinstance(value, Mapping):
        for k, v in value.items():
            yield from _secrets_in(k, v)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _secrets_in(key, item)
    elif isinstance(value, str):
        if is_secret_key(key) and value:
            yield value
        else:
            yield from url_secrets(value)


def options_repr(options: Mapping[str, Any]) -> str:
    """``repr(options)`` with secret-bearing values masked (for ``attrs.field(repr=...)``)."""
    return repr(mask_options(options))


def url_repr(url: str | None) -> str:
    """``repr(url)`` with its credentials masked (for ``attrs.field(repr=...)``)."""
    return repr(mask_url(url))


def shown(text: str, limit: int = 40) -> str:
    """``repr(text)``, cut to ``limit`` characters with its length said: what
    an error shows of an id a caller gave (a Discord id of 70,000 digits, a
    channel id pasted whole into a URL, was echoed whole)."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text):,} characters)"
