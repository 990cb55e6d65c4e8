"""Media uploads: the bytes, name and type of a :class:`~providers.base.Media` to upload.

Design: every provider uploads the same way: the bytes come from
``Media.content`` or are read from ``Media.path`` (in a worker thread, by
trio), the size is checked against the platform's limit before any request,
and the file name and media type are the given ones or guessed from the
name (:mod:`mimetypes`). A file that cannot be read is a permanent failure
of that message, not of the channel.
"""

from __future__ import annotations

import mimetypes
import os
from typing import Final

import attrs
import trio

from .base import Media, MediaKind, MediaTooLarge, PermanentSendError

__all__ = ["DEFAULT_NAMES", "Upload", "read_upload"]

DEFAULT_NAMES: Final = {
    MediaKind.IMAGE: ("image.jpg", "image/jpeg"),
    MediaKind.VIDEO: ("video.mp4", "video/mp4"),
    MediaKind.DOCUMENT: ("document.bin", "application/octet-stream"),
    MediaKind.AUDIO: ("audio.mp3", "audio/mpeg"),
}


@attrs.frozen(kw_only=True)
class Upload:
    """One upload, ready for a multipart request.

    Attributes:
        data: the bytes.
        filename: the name the platform shows.
        mime_type: the media type.
    """

    data: bytes = attrs.field(repr=lambda data: f"<{len(data)} bytes>")
    filename: str
    mime_type: str


async def read_upload(media: Media, *, limit: int, peer: str, platform: str) -> Upload:
    """The bytes and names of ``media`` (which must be an upload).

    Args:
        media: media with ``content`` or ``path``.
        limit: the platform's largest upload, bytes.
        peer: the recipient (errors name it).
        platform: the provider's name (errors name it).

    Raises:
        MediaTooLarge: the bytes exceed ``limit``.
        PermanentSendError: the file cannot be read.
    """
    if media.content is not None:
        data = media.content
        name = media.filename
    else:
        assert media.path is not None, "read_upload needs media with content or a path"
        name = media.filename or os.path.basename(media.path)
        path = trio.Path(media.path)
        try:
            size = (await path.stat()).st_size
            if size > limit:
                raise _too_large(size, limit, peer, platform)
            data = await path.read_bytes()
        except OSError as exc:
            raise PermanentSendError(
                f"{platform}: cannot read the file to upload {media.path!r} "
                f"({exc.strerror or exc}); the message was not sent",
                peer=peer,
            ) from exc
    if len(data) > limit:
        raise _too_large(len(data), limit, peer, platform)
    default_name, default_type = DEFAULT_NAMES[media.kind]
    name = name or default_name
    mime_type = media.mime_type or mimetypes.guess_type(name)[0] or default_type
    return Upload(data=data, filename=name, mime_type=mime_type)


def _too_large(size: int, limit: int, peer: str, platform: str) -> MediaTooLarge:
    return MediaTooLarge(
        f"{platform}: an upload of {size} bytes exceeds the platform's {limit}; "
        "send a link instead or make the file smaller",
        peer=peer,
    )
