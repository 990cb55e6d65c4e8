"""A protocol-faithful local Discord: REST v10 and gateway v10 on one port.

Design:
- The REST routes live at Discord's paths under ``/api/v10`` and answer with
  Discord's JSON shapes, ``Content-Type: application/json`` and the
  ``X-RateLimit-*`` headers of a per-channel bucket on
  ``POST /channels/{id}/messages`` and of the bot's global limit (50
  requests per second per token: a global 429 past it); the gateway speaks the real protocol on
  ``/gateway`` (and ``/resume``, the ``resume_gateway_url``, so tests can see
  which URL a client resumed on): Hello, Identify/Resume validation, READY,
  sequence numbers, heartbeat ACKs, dispatches, the 120-per-60-s frame limit
  (close 4008) and Discord's close codes.
- The bot is a member of one guild (``DEFAULT_GUILD_ID``, owned by
  ``OWNER_ID``): READY lists it unavailable and GUILD_CREATE follows, as on
  Discord. An inject into a channel (or guild) not seen before creates it
  first with CHANNEL_CREATE (or GUILD_CREATE), so a client's cache resolves
  ``message.channel`` to a text channel; guild MESSAGE_CREATEs carry
  ``guild_id`` and ``member``; op 8 is answered with GUILD_MEMBERS_CHUNK.
  discord.py runs against this unchanged (tests/test_emulator_compat.py).
- REST answers carry ``Via: 1.1 google`` like Discord's; a 429 without it is
  Cloudflare's ban, so only the ``ip_block`` fault leaves it out.
- Sessions outlive their sockets: dispatches for a session whose socket is
  gone are kept (bounded) and replayed on Resume, as Discord does, so a
  resumed client loses nothing. A close with 1000/1001 ends the session.
- Every socket has a writer task fed through a memory channel, so injects and
  faults from other tasks never write to a websocket concurrently.
- Faults (``POST /_emulator/fault``), besides the base's ``ban_token`` (REST
  401, gateway close 4004) and ``rate_limit`` (global 429 with headers)::

      {"kind": "drop"}                        sockets end without a Discord close code
      {"kind": "close", "code": 4009}         sockets close with that code
      {"kind": "reconnect"}                   op 7 on every socket
      {"kind": "invalid_session", "resumable": false}   op 9
      {"kind": "withhold_acks"}               current sockets get no heartbeat ACKs
      {"kind": "ip_block", "duration": 5}     REST 429s without rate-limit headers
      {"kind": "delete_channel", "channel_id": "1"}     404 Unknown Channel

  ASGI cannot reset a TCP connection, so ``drop`` ends the socket the way a
  crashed gateway node does: the server closes with 1011 (internal error).
- Known gap: hypercorn 0.18 reports every client-initiated close to the app
  as 1006, so the emulator cannot tell a client's 1000 (session ends) from
  4000 (session stays); it keeps the session resumable in both cases.
"""

from .emulator import DiscordEmulator

__all__ = ["DiscordEmulator"]
