"""Helpers shared by the tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import httpx
import trio

CEILING: Final = 60.0  # virtual seconds; only a hang gets near it


async def yield_until(condition: Callable[[], bool], *, steps: int = 1_000) -> None:
    """Yield to other tasks, without letting time pass, until ``condition()``.

    Bounded: a busy loop of ``sleep(0)`` never lets the autojump clock reach a
    ``fail_after`` deadline, so an unbounded one would hang instead of failing.
    """
    for _ in range(steps):
        if condition():
            return
        await trio.lowlevel.checkpoint()
    raise AssertionError(f"still not true after {steps} scheduling rounds")


async def emulator_call(
    base_url: str,
    path: str,
    payload: dict[str, Any] | None = None,
    *,
    http: httpx.AsyncClient | None = None,
) -> httpx.Response:
    """Call an emulator's control API: ``GET /_emulator/<path>``, or POST ``payload``.

    Args:
        base_url: the emulator's URL.
        path: ``inject``, ``fault``, ``sent``, ``stats``...
        payload: the JSON body to POST; ``None`` for a GET.
        http: a client to use (default: a new one for this call).

    Returns:
        The answer, whatever its status.
    """
    if http is None:
        async with httpx.AsyncClient() as client:
            return await emulator_call(base_url, path, payload, http=client)
    url = f"{base_url.rstrip('/')}/_emulator/{path}"
    if payload is None:
        return await http.get(url)
    return await http.post(url, json=payload)


async def control(base_url: str, path: str, payload: dict[str, Any] | None = None) -> Any:
    """:func:`emulator_call` that must succeed: its JSON answer.

    Raises:
        httpx.HTTPStatusError: the emulator refused the call.
    """
    response = await emulator_call(base_url, path, payload)
    response.raise_for_status()
    return response.json()
