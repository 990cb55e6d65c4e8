"""The admin console: JSON-RPC 2.0 over a websocket, scoped tokens, audit events.

The console sits above the node: it is handed a running node and serves
it (``switchboard run`` starts it when the file has an ``[admin]`` section).
"""
