"""Framing of the wire protocol: a 4-byte big-endian length, then one msgpack map.

Sans-IO: :class:`FrameDecoder` takes bytes as they arrive and gives back complete
messages; :func:`encode_frame` gives the bytes of one message. Nothing here reads or
writes a socket.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Mapping
from typing import Final

import msgpack

HEADER: Final = struct.Struct(">I")
HEADER_SIZE: Final = HEADER.size
_unpackb: Final = msgpack.unpackb

#: ``max_frame`` unless ``hello`` says otherwise (docs/protocol.md, *Framing*).
DEFAULT_MAX_FRAME: Final = 1 << 20


class ProtocolViolation(Exception):
    """The byte stream broke the framing rules; the connection must be closed."""


#: One ``msgpack.Packer`` per thread: ``packb`` builds a new one per call, which costs
#: twice what packing a small reply does.
_PACKERS = threading.local()


def encode_frame(obj: Mapping[str, object]) -> bytes:
    """One frame: the length header and the msgpack encoding of ``obj``."""
    try:
        pack = _PACKERS.pack
    except AttributeError:
        pack = _PACKERS.pack = msgpack.Packer(use_bin_type=True).pack
    body: bytes = pack(obj)
    return len(body).to_bytes(HEADER_SIZE, "big") + body


def decode_body(body: bytes) -> dict[str, object]:
    """Decode one frame's payload, which must be exactly one msgpack map with str keys."""
    try:
        # raw=False and use_list=True are msgpack's defaults (>= 1.0); each keyword
        # costs as much as the decoding of a small request, so only the one needed.
        obj = _unpackb(body, strict_map_key=False)
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
        if buf:
            buf += data
            src: bytes | bytearray = buf
        else:
            # Nothing held back (the usual case): frames are cut straight out of
            # ``data``, and only an incomplete tail is kept.
            src = data
        out: list[dict[str, object]] = []
        pos = 0
        end = len(src)
        max_frame = self.max_frame
        unpack_from = HEADER.unpack_from
        violation = None
        while end - pos >= HEADER_SIZE:
            (length,) = unpack_from(src, pos)
            if length == 0 or length > max_frame:
                violation = ProtocolViolation(f"frame length {length} out of range 1..{max_frame}")
                break
            stop = pos + HEADER_SIZE + length
            if stop > end:
                break
            try:
                out.append(decode_body(bytes(src[pos + HEADER_SIZE : stop])))
            except ProtocolViolation as exc:
                violation = exc
                break
            pos = stop
        if violation is not None:
            buf.clear()
            if not out:
                raise violation
            self._violation = violation
            return out
        if src is buf:
            if pos:
                del buf[:pos]
        elif pos < end:
            buf += src[pos:]
        return out
