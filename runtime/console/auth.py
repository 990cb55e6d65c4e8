"""Who may do what on the console: scoped bearer tokens, refusals, audit events.

Design:
- The console keeps a SHA-256 digest of each configured token, never the
  token. A presented token is hashed and compared with *every* digest by
  :func:`hmac.compare_digest` (no early exit), so neither the comparison nor
  the number of comparisons depends on how much of a token was right.
- Scopes are ordered: ``read`` < ``operate`` < ``admin``; a method names the
  least it needs. A token may carry a list of tenants: it sees only their
  channels and may act only on them; node-wide changes (a drain) need a
  token without a tenant list. Expiry is checked at every call, not only
  at connect time, so a long-lived connection stops working when its
  token expires.
- Refusals are counted by reason (:class:`Refusals`, plain ints read by
  ``/metrics`` at scrape time, as the ops server's webhook counters are).
- An :class:`AuditEvent` records every state-changing call: who (the
  token's name), what (the method and its target), why (the caller's
  ``reason``), and the outcome. The console logs it and publishes it to
  subscribers of ``audit`` events.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Final

import attrs

from ..config.model import AdminToken

__all__ = [
    "AuditEvent",
    "Grant",
    "Refusals",
    "Scope",
    "TokenTable",
    "Unauthenticated",
]

REFUSAL_REASONS: Final = ("unauthenticated", "forbidden", "tenant", "rate_limited")


class Scope(enum.IntEnum):
    """What a token may do, each including the ones below it."""

    READ = 1
    """Inspect the node and its channels, tail events."""
    OPERATE = 2
    """Start, stop, restart and revive channels; replay and discard dead letters."""
    ADMIN = 3
    """Drain the node."""

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def of(cls, label: str) -> Scope:
        return cls[label.upper()]


class Unauthenticated(Exception):
    """No token, an unknown token, or an expired one (the message says which, never the token)."""


@attrs.frozen(kw_only=True)
class Grant:
    """What one token allows.

    Attributes:
        name: the token's name (audit events, logs).
        scope: its scope.
        tenants: the tenants it may see (``None``: all).
        expires_at: unix time it stops working (``None``: never).
    """

    name: str
    scope: Scope
    tenants: frozenset[str] | None = None
    expires_at: float | None = None

    def allows(self, needs: Scope) -> bool:
        return self.scope >= needs

    def sees(self, tenant: str) -> bool:
        return self.tenants is None or tenant in self.tenants

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "scope": self.scope.label,
            "tenants": None if self.tenants is None else sorted(self.tenants),
            "expires_at": self.expires_at,
        }


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


class TokenTable:
    """The configured tokens, as digests.

    Args:
        tokens: the ``[[admin.tokens]]`` entries.
    """

    def __init__(self, tokens: Iterable[AdminToken]) -> None:
        self._entries: list[tuple[bytes, Grant]] = [
            (
                _digest(token.token),
                Grant(
                    name=token.name,
                    scope=Scope.of(token.scope),
                    tenants=None if token.tenants is None else frozenset(token.tenants),
                    expires_at=(
                        None
                        if token.expires is None
                        else datetime.fromisoformat(token.expires).timestamp()
                    ),
                ),
            )
            for token in tokens
        ]

    def __repr__(self) -> str:
        return f"<TokenTable {[grant.name for _, grant in self._entries]}>"

    def authenticate(self, presented: str | None, *, now: float) -> Grant:
        """The grant of ``presented``.

        Args:
            presented: the bearer token the client sent (``None``: none).
            now: unix time, for expiry.

        Raises:
            Unauthenticated: none, unknown, or expired.
        """
        if not presented:
            raise Unauthenticated(
                "no bearer token: send the header 'Authorization: Bearer <token>'"
            )
        digest = _digest(presented)
        found: Grant | None = None
        for known, grant in self._entries:  # every entry, whatever matched
            if hmac.compare_digest(known, digest):
                found = grant
        if found is None:
            raise Unauthenticated("unknown token")
        if found.expired(now):
            raise Unauthenticated(f"token {found.name!r} has expired")
        return found


@attrs.define
class Refusals:
    """Calls and connections the console refused, by reason (plain ints for ``/metrics``)."""

    counts: dict[str, int] = attrs.field(factory=lambda: dict.fromkeys(REFUSAL_REASONS, 0))
    calls: int = 0

    def refuse(self, reason: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1


def bearer(headers: Sequence[tuple[bytes, bytes]] | Iterable[tuple[Any, Any]]) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, if any."""
    for name, value in headers:
        key = name.decode("latin-1") if isinstance(name, bytes) else str(name)
        if key.lower() != "authorization":
            continue
        # UTF-8, as the console's client sends a token; else byte for byte.
        text = _header_text(value) if isinstance(value, bytes) else str(value)
        scheme, _, token = text.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return None


def _header_text(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


@attrs.frozen(kw_only=True)
class AuditEvent:
    """One state-changing call, as the audit log and ``audit`` subscribers see it.

    Attributes:
        token: the token's name (who).
        method: the method called (what).
        target: what it acted on: channel ids, dead-letter ids, the node.
        reason: the caller's reason (why).
        outcome: ``ok``, ``refused`` or ``failed``.
        detail: the result in short, or the error.
        dry_run: only counted, nothing changed.
        at: unix time.
    """

    token: str
    method: str
    target: dict[str, Any]
    reason: str | None
    outcome: str
    detail: Any
    dry_run: bool = False
    at: float
