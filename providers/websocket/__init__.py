"""A generic JSON-over-websocket channel: a sans-IO core, a trio shell, a websockets link.

The wire protocol and the error mapping are documented in
:mod:`providers.websocket.core`; the configuration in
:mod:`providers.websocket.shell`.
"""

from .shell import WEBSOCKET_LIMITS, WebSocketConnection, WebSocketOptions, WebSocketProvider

__all__ = ["WEBSOCKET_LIMITS", "WebSocketConnection", "WebSocketOptions", "WebSocketProvider"]
