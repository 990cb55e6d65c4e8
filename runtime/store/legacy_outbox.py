"""The outbox file of earlier releases (``storage.outbox_file``), read once.

Design: before the stores kept unsent messages themselves, the memory
backend wrote them to a JSON-lines file at the drain. The setting is
deprecated; so that nothing already kept is lost, a store opened with it
set takes what the file holds into its own outbox and only then deletes the
file. A line that is not a kept message stops the import with a
:class:`~runtime.errors.StoreError` naming ``file:line``, and the file is
left for a person to fix; nothing is imported then.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import trio

from ..errors import StoreError
from .base import KeptMessage, Store
from .codec import decode_kept, stored_json

__all__ = ["import_legacy_outbox"]

log = logging.getLogger("switchboard.store")


async def import_legacy_outbox(store: Store, path: Path) -> int:
    """Move the messages kept in ``path`` into ``store``; returns how many.

    Raises:
        StoreError: the file cannot be read, a line is not a kept message, or
            the store refused them (the file is left in place each time).
    """
    kept = await trio.to_thread.run_sync(_read, path)
    if kept is None:
        return 0
    await store.keep_outbound(kept)
    try:
        await trio.to_thread.run_sync(_delete, path)
    except OSError as exc:
        # Kept twice is better than lost: the next start imports them again
        # and the resend carries the same idempotency keys.
        log.error("imported the outbox file %s but could not delete it: %s", path, exc)
    log.warning(
        "storage.outbox_file is deprecated: %d message(s) kept in %s by an earlier release "
        "were moved into the %s store (the file is deleted); remove the setting",
        len(kept),
        path,
        store.backend,
    )
    return len(kept)


def _read(path: Path) -> list[KeptMessage] | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise StoreError(f"could not read the outbox file {path}: {exc}") from exc
    kept: list[KeptMessage] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            kept.append(decode_kept(stored_json(line)))
        except ValueError as exc:  # not JSON (JSONDecodeError), too deep, or not a message
            raise StoreError(
                f"{path}:{number}: not a kept message ({exc}); nothing was taken and the "
                "file is left as it is: fix or remove that line"
            ) from exc
    return kept


def _delete(path: Path) -> None:
    path.unlink(missing_ok=True)
    try:
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)  # the unlink is durable before anything is sent again
    except OSError:
        pass
    finally:
        os.close(fd)
