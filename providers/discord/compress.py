"""Discord gateway transport compression as sans-IO: compressed frames in, JSON text out.

Design:
- ``compress=zlib-stream``: the whole socket is one zlib stream; Discord
  flushes it (``Z_SYNC_FLUSH``) after every payload, so a payload is complete
  once the buffered frames end with ``00 00 ff ff``; one
  :func:`zlib.decompressobj` per socket keeps the shared window.
- ``compress=zstd-stream``: the whole socket is one zstd stream (the
  ``zstandard`` library's streaming decompressor), flushed after every
  payload, so every BINARY frame decompresses to exactly one payload.
- One :class:`Inflater` per socket (a new socket starts a new stream); the
  shell hands it each BINARY frame and gets the payload's text, or ``None``
  while a zlib payload is still incomplete. TEXT frames pass through.
- A frame that does not decompress is a protocol failure of that socket
  (:class:`CompressionError`); the gateway core drops the socket and resumes.
"""

from __future__ import annotations

import zlib
from typing import IO, Final, Literal, TypeAlias, cast

import zstandard

__all__ = ["COMPRESSIONS", "Compression", "CompressionError", "Inflater"]

Compression: TypeAlias = Literal["zlib-stream", "zstd-stream"]
COMPRESSIONS: Final[tuple[Compression, ...]] = ("zlib-stream", "zstd-stream")
ZLIB_SUFFIX: Final = b"\x00\x00\xff\xff"
MAX_PAYLOAD: Final = 64 * 1024 * 1024  # bytes of one decompressed payload (a bomb guard)


class CompressionError(ValueError):
    """A compressed frame that does not decompress (or decompresses too far)."""


class Inflater:
    """Decompresses one gateway socket's frames.

    Args:
        compression: the transport compression asked for in the URL.
        max_payload: the largest decompressed payload, in bytes (the
            provider's ``max_message_bytes``); a larger one is a
            :class:`CompressionError`, so a small frame cannot inflate into
            more than a plain frame may carry.
    """

    def __init__(self, compression: Compression, max_payload: int = MAX_PAYLOAD) -> None:
        self.compression = compression
        self.max_payload = max_payload
        self._zlib = zlib.decompressobj() if compression == "zlib-stream" else None
        # zstd into a sink that counts as it is written: a small frame never
        # holds more than the cap in memory (a decompressobj made it whole
        # first). The writer's output buffer holds a whole payload and one byte
        # more: it hands out only what fits its buffer for the input given, and
        # the rest of a larger payload would come with the next frame.
        self._sink = _CappedSink(max_payload)
        self._zstd = (
            zstandard.ZstdDecompressor().stream_writer(
                cast("IO[bytes]", self._sink), write_size=max_payload + 1
            )
            if compression == "zstd-stream"
            else None
        )
        self._buffer = bytearray()
        self.wire_bytes = 0  # compressed bytes received
        self.payload_bytes = 0  # bytes they decompressed to

    def __repr__(self) -> str:
        return (
            f"<Inflater {self.compression} wire={self.wire_bytes} "
            f"payload={self.payload_bytes} buffered={len(self._buffer)}>"
        )

    def feed(self, data: bytes | str) -> str | None:
        """One frame in; the payload's JSON text out (``None``: wait for more frames).

        Raises:
            CompressionError: the frame does not decompress.
        """
        if isinstance(data, str):
            return data  # a TEXT frame is never compressed
        self.wire_bytes += len(data)
        try:
            if self._zlib is not None:
                self._buffer += data
                if len(self._buffer) < 4 or self._buffer[-4:] != ZLIB_SUFFIX:
                    if len(self._buffer) > self.max_payload:
                        raise CompressionError("a zlib-stream payload without its flush suffix")
                    return None
                raw = self._zlib.decompress(bytes(self._buffer), self.max_payload)
                self._buffer.clear()
                if self._zlib.unconsumed_tail:
                    raise CompressionError(f"a payload over {self.max_payload} bytes")
            else:
                assert self._zstd is not None
                self._zstd.write(data)
                raw = self._sink.take()
        except (zlib.error, zstandard.ZstdError) as exc:
            raise CompressionError(
                f"a {self.compression} frame does not decompress: {exc}"
            ) from exc
        self.payload_bytes += len(raw)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CompressionError(f"a {self.compression} payload is not UTF-8") from exc


class _CappedSink:
    """Where zstd writes one payload; past ``cap`` bytes it refuses, mid-write."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._parts: list[bytes] = []
        self._size = 0

    def write(self, data: bytes) -> int:
        self._size += len(data)
        if self._size > self.cap:
            raise CompressionError(f"a payload over {self.cap} bytes")
        self._parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        """The payload written since the last take."""
        raw = b"".join(self._parts)
        self._parts.clear()
        self._size = 0
        return raw
