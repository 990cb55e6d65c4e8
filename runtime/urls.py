"""Passwords in connection URLs (PostgreSQL's DSN, Redis's URL), kept out of messages.

A password with a character a URL must escape (``? # /``) written bare is
not the password a URL parser finds: ``user:x?Tr0ub4dor@host`` is the
password ``x`` and a query; ``user:1234/Tr0ub4dor@host`` is the host
``user``, the port ``1234`` and a path. The parsers then quote the rest in
their errors, and "where" a URL points, read off the parsed parts, holds
it. So the password as written (between ``user:`` and the host's ``@``) and
each piece of it of three characters or more are secrets too, and every
message that names the URL is scrubbed of them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import unquote

__all__ = ["scrubbed", "written_passwords"]


def written_passwords(url: str, parsed: str | None = None) -> list[str]:
    """The secrets of ``url``, longest first: its password as written, each piece
    of it, and ``parsed`` (the password a URL parser found) and its decoding."""
    found = [parsed, unquote(parsed)] if parsed else []
    _, scheme, rest = url.partition("://")
    userinfo, at, _ = rest.rpartition("@")
    if scheme and at and ":" in userinfo:
        written = userinfo.split(":", 1)[1]
        pieces = re.split(r"[?#/@:\[\]]", written)
        found += [written, *(piece for piece in pieces if len(piece) >= 3)]
        # A piece read as a port comes back as a number: "0099" is "99".
        found += [str(int(piece)) for piece in pieces if piece.isdigit() and len(piece) >= 3]
    return sorted({secret for secret in found if secret}, key=len, reverse=True)


def scrubbed(text: str, secrets: Sequence[str]) -> str:
    """``text`` with each secret replaced by ``***`` (longest first), whatever its
    case: a parser lowercases the host it took a piece of a password for."""
    for secret in secrets:
        text = re.sub(re.escape(secret), "***", text, flags=re.IGNORECASE)
    return text
