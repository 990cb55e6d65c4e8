"""The admin console: JSON-RPC 2.0 over a websocket, scoped tokens, audit events.

The console sits above the node: it is handed a running node and serves it
(``switchboard run`` starts it when the file has an ``[admin]`` section; an
embedding program calls :func:`serve_admin`). Modules: :mod:`.rpc` (the
JSON-RPC codec, sans-IO), :mod:`.auth` (tokens, scopes, audit events),
:mod:`.methods` (what can be called on the node), :mod:`.cluster_methods`
(on the cluster: views, calls fanned out to every member, the operator's
controls), :mod:`.specs` (a method's spec), :mod:`.session` (one connection's
calls and subscriptions, no socket), :mod:`.server` (the listener),
:mod:`.client` (``switchboard ctl``'s side), :mod:`.ctl` (the command).
"""

from .auth import AuditEvent, Grant, Scope
from .client import (
    AdminClient,
    CannotConnect,
    ConsoleClientError,
    NotAuthenticated,
    RemoteError,
    open_admin,
)
from .rpc import ErrorCode
from .server import AdminAddresses, serve_admin
from .session import Console, Session

__all__ = [
    "AdminAddresses",
    "AdminClient",
    "AuditEvent",
    "CannotConnect",
    "Console",
    "ConsoleClientError",
    "ErrorCode",
    "Grant",
    "NotAuthenticated",
    "RemoteError",
    "Scope",
    "Session",
    "open_admin",
    "serve_admin",
]
