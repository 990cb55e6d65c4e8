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
    lines = await trio.to_thread.run_sync(_read, path)
    if lines is None:
        return 0
    kept = [item for item, _ in lines]
    refused = {id(item) for item in await store.keep_outbound(kept)}
    # What the store refused (it logged each one) stays in the file, alone:
    # deleting the file lost it, and leaving the rest would import them twice.
    left = [line for item, line in lines if id(item) in refused]
    try:
        await trio.to_thread.run_sync(_delete if not left else _rewrite, path, left)
    except OSError as exc:
        # Kept twice is better than lost: the next start imports them again
        # and the resend carries the same idempotency keys.
        log.error("imported the outbox file %s but could not delete it: %s", path, exc)
    moved = len(kept) - len(left)
    log.warning(
        "storage.outbox_file is deprecated: %d message(s) kept in %s by an earlier release "
        "were moved into the %s store (%s); remove the setting",
        moved,
        path,
        store.backend,
        "the file is deleted"
        if not left
        else f"the {len(left)} the store refused are left in the file, alone: fix them",
    )
    return moved


def _read(path: Path) -> list[tuple[KeptMessage, str]] | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise StoreError(f"could not read the outbox file {path}: {exc}") from exc
    kept: list[tuple[KeptMessage, str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            kept.append((decode_kept(stored_json(line)), line))
        except ValueError as exc:  # not JSON (JSONDecodeError), too deep, or not a message
            raise StoreError(
                f"{path}:{number}: not a kept message ({exc}); nothing was taken and the "
                "file is left as it is: fix or remove that line"
            ) from exc
    return kept


def _rewrite(path: Path, lines: list[str]) -> None:
    """``path`` with ``lines`` alone, replaced at once (a crash leaves either file)."""
    fresh = path.with_name(path.name + ".tmp")
    with fresh.open("w", encoding="utf-8") as out:
        out.write("".join(line + "\n" for line in lines))
        out.flush()
        os.fsync(out.fileno())
    os.replace(fresh, path)
    _sync_dir(path)


def _delete(path: Path, _: object = None) -> None:
    path.unlink(missing_ok=True)
    _sync_dir(path)


def _sync_dir(path: Path) -> None:
    try:
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)  # the change is durable before anything is sent again
    except OSError:
        pass
    finally:
        os.close(fd)
