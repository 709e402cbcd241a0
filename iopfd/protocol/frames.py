"""Framing of the wire protocol: a 4-byte big-endian length, then one msgpack map.

Sans-IO: :class:`FrameDecoder` takes bytes as they arrive and gives back complete
messages; :func:`encode_frame` gives the bytes of one message. Nothing here reads or
writes a socket.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Final

import msgpack

HEADER: Final = struct.Struct(">I")
HEADER_SIZE: Final = HEADER.size
#: ``max_frame`` unless ``hello`` says otherwise (docs/protocol.md, *Framing*).
DEFAULT_MAX_FRAME: Final = 1 << 20


class ProtocolViolation(Exception):
    """The byte stream broke the framing rules; the connection must be closed."""


def encode_frame(obj: Mapping[str, object]) -> bytes:
    """One frame: the length header and the msgpack encoding of ``obj``."""
    body: bytes = msgpack.packb(obj, use_bin_type=True)
    return HEADER.pack(len(body)) + body


def decode_body(body: bytes) -> dict[str, object]:
    """Decode one frame's payload, which must be exactly one msgpack map with str keys."""
    try:
        obj = msgpack.unpackb(body, raw=False, strict_map_key=False, use_list=True)
    except msgpack.ExtraData as exc:
        raise ProtocolViolation("trailing bytes after the msgpack object") from exc
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as exc:
        detail = str(exc)[:200] or type(exc).__name__
        raise ProtocolViolation(f"undecodable msgpack: {detail}") from exc
    if not isinstance(obj, dict):
        raise ProtocolViolation(f"frame holds a msgpack {type(obj).__name__}, not a map")
    for key in obj:
        if not isinstance(key, str):
            raise ProtocolViolation("map keys must be strings")
    return obj


class FrameDecoder:
    """Splits a byte stream into messages.

    ``feed`` returns every message completed by the new bytes, in order. A length of
    0 or above ``max_frame``, or a payload that is not a msgpack map with string keys,
    raises :class:`ProtocolViolation`. Messages that precede the bad frame in the same
    chunk are returned first, and the violation is raised by the next ``feed`` or
    ``check`` call, so a caller handles them in order before closing the connection.
    """

    __slots__ = ("_buf", "_violation", "max_frame")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        if max_frame < 1:
            raise ValueError("max_frame must be positive")
        self.max_frame = max_frame
        self._buf = bytearray()
        self._violation: ProtocolViolation | None = None

    def check(self) -> None:
        """Raise the violation held back by the last ``feed``, if any."""
        if self._violation is not None:
            raise self._violation

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held back; non-zero at EOF means a cut frame."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray) -> list[dict[str, object]]:
        self.check()
        buf = self._buf
        buf += data
        out: list[dict[str, object]] = []
        pos = 0
        try:
            while (frame := self._next_frame(pos)) is not None:
                msg, pos = frame
                out.append(msg)
        except ProtocolViolation as exc:
            buf.clear()
            if not out:
                raise
            self._violation = exc
            return out
        if pos:
            del buf[:pos]
        return out

    def _next_frame(self, pos: int) -> tuple[dict[str, object], int] | None:
        buf = self._buf
        if len(buf) - pos < HEADER_SIZE:
            return None
        (length,) = HEADER.unpack_from(buf, pos)
        if length == 0 or length > self.max_frame:
            raise ProtocolViolation(f"frame length {length} out of range 1..{self.max_frame}")
        stop = pos + HEADER_SIZE + length
        if stop > len(buf):
            return None
        return decode_body(bytes(buf[pos + HEADER_SIZE : stop])), stop
