"""Wire framing for clients: a 4-byte big-endian length, then one msgpack map.

The same rules as ``docs/protocol.md`` *Transport and framing*. Kept here so
that the client library has no dependency on the daemon's internals beyond the
wire format itself.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

import msgpack

HEADER = struct.Struct(">I")
DEFAULT_MAX_FRAME = 1 << 20


class FramingError(Exception):
    """The peer sent bytes that are not a valid frame (the connection is unusable)."""


def encode_frame(obj: Mapping[str, object]) -> bytes:
    """Encode one message as a frame: length header plus msgpack map."""
    body: bytes = msgpack.packb(obj, use_bin_type=True)
    return HEADER.pack(len(body)) + body


class FrameDecoder:
    """Incremental decoder: feed it bytes, get back the complete messages."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()

    def feed(self, data: bytes | bytearray) -> list[dict[str, Any]]:
        self._buf += data
        out: list[dict[str, Any]] = []
        pos = 0
        buf = self._buf
        while len(buf) - pos >= HEADER.size:
            (length,) = HEADER.unpack_from(buf, pos)
            if length == 0 or length > self.max_frame:
                raise FramingError(f"frame length {length} out of range 1..{self.max_frame}")
            end = pos + HEADER.size + length
            if len(buf) < end:
                break
            try:
                msg = msgpack.unpackb(
                    bytes(buf[pos + HEADER.size : end]), raw=False, strict_map_key=True
                )
            except (ValueError, msgpack.UnpackException) as e:
                raise FramingError(f"frame is not valid msgpack: {e}") from e
            if not isinstance(msg, dict) or not all(isinstance(k, str) for k in msg):
                raise FramingError("frame is not a msgpack map with string keys")
            out.append(msg)
            pos = end
        if pos:
            del buf[:pos]
        return out

    @property
    def buffered(self) -> int:
        """Bytes received but not yet forming a complete frame."""
        return len(self._buf)
