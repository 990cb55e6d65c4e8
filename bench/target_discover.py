"""The ``target`` scenario's discovery: which node, which channels to load.

Design:
- Discovery asks the node, never a config file: ``GET /v1/channels`` (behind
  the same bearer token as the message API) lists every channel with its
  provider, tenant and state. By default every connected channel is loaded;
  ``channels`` picks some by id.
- Problems that mean the run cannot start (unreachable URL, 401, 404
  because the message API is off, no channel to load) are a
  :class:`~bench.scenario.ScenarioError`: one line and exit 2.
- The token is a credential: any text from the node is scrubbed of it
  (:func:`scrub`) before it is shown.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final
from urllib.parse import urlsplit, urlunsplit

import attrs
import httpx

from .scenario import ScenarioError
from .target_params import TOKEN_ENV

__all__ = ["SHOWN_IDS", "ChannelInfo", "base_url", "discover", "scrub", "select_channels"]

SHOWN_IDS: Final = 10  # channel ids a message or note lists before "and N more"


@attrs.frozen(kw_only=True)
class ChannelInfo:
    """One channel as ``GET /v1/channels`` lists it."""

    channel: str
    tenant: str
    provider: str
    status: str


def scrub(text: str, token: str) -> str:
    """``text`` with the API token taken out."""
    return text.replace(token, "<api token>")


def base_url(target: str) -> str:
    """The node's ops URL (a path prefix is kept, for a node behind a proxy).

    Raises:
        ScenarioError: not an http(s) URL, or it carries credentials (the
            API token is the credential; a user:password would replace it).
    """
    parts = urlsplit(target)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ScenarioError(
            f"--target {target!r}: expected the node's ops URL, like http://127.0.0.1:8321"
        )
    if parts.username is not None or parts.password is not None:
        raise ScenarioError(
            "--target: a URL with user:password@ is not supported; the API token "
            f"(--token or {TOKEN_ENV}) is the credential"
        )
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def _refusal(response: httpx.Response, token: str) -> str:
    """Why ``GET /v1/channels`` did not list the channels, for one clear line."""
    if response.status_code == 401:
        return (
            "the node refused the API token (401): pass its [ops] api_token with --token "
            f"or {TOKEN_ENV}"
        )
    if response.status_code == 404:
        return (
            "GET /v1/channels answered 404: the node's message API is off (set [ops] "
            "api_token in its config) or the node predates the channel listing"
        )
    return f"GET /v1/channels answered {response.status_code}: " + scrub(response.text[:200], token)


async def discover(client: httpx.AsyncClient, token: str) -> tuple[str, list[ChannelInfo]]:
    """The node's id and its channels, from ``GET /v1/channels``.

    Args:
        client: a client on the node's ops URL carrying the bearer token.
        token: the token, only to scrub it from the node's answers.

    Returns:
        The node id and every channel it lists.

    Raises:
        ScenarioError: the node cannot be reached, refuses the token, has
            no message API, or answers something that is not a listing.
    """
    try:
        response = await client.get("/v1/channels")
    except httpx.TransportError as exc:
        raise ScenarioError(f"cannot reach {client.base_url}: {type(exc).__name__}: {exc}") from exc
    if response.status_code != 200:
        raise ScenarioError(_refusal(response, token))
    try:
        body = response.json()
        listed = [
            ChannelInfo(
                channel=str(item["channel"]),
                tenant=str(item["tenant"]),
                provider=str(item["provider"]),
                status=str(item["status"]),
            )
            for item in body["channels"]
        ]
        return str(body["node"]), listed
    except (ValueError, KeyError, TypeError) as exc:
        raise ScenarioError(
            f"GET /v1/channels did not answer a channel listing ({type(exc).__name__}: {exc}); "
            "is the URL a Switchboard node's ops listener?"
        ) from exc


def select_channels(
    listed: Sequence[ChannelInfo], wanted: Sequence[str], node: str
) -> tuple[list[ChannelInfo], list[str]]:
    """The channels to load, and notes about the choice.

    Args:
        listed: what the node lists.
        wanted: ids asked for; empty means every connected channel.
        node: the node's id, for messages.

    Returns:
        The chosen channels (in the order asked, or sorted by id) and notes
        (a chosen channel that is not connected will answer errors).

    Raises:
        ScenarioError: an id the node does not have, or nothing to load.
    """
    if not wanted:
        chosen = [info for info in listed if info.status == "connected"]
        if not chosen:
            raise ScenarioError(
                f"node {node!r} has no connected channel to load "
                f"({len(listed)} configured); its /health says why"
            )
        return chosen, []
    by_id = {info.channel: info for info in listed}
    unknown = [channel for channel in wanted if channel not in by_id]
    if unknown:
        known = ", ".join(sorted(by_id)[:SHOWN_IDS]) or "none"
        if len(by_id) > SHOWN_IDS:
            known += f" and {len(by_id) - SHOWN_IDS} more"
        raise ScenarioError(f"node {node!r} has no channel {', '.join(unknown)}; it has: {known}")
    chosen = [by_id[channel] for channel in dict.fromkeys(wanted)]
    notes = [
        f"channel {info.channel} was {info.status} when the load started: expect errors from it"
        for info in chosen
        if info.status != "connected"
    ]
    return chosen, notes
