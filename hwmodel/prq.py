"""The page request queue ring (vtd-hw.md 2.2): 32-byte slots in 2^order 4 KiB pages.

Head (PQH) and tail (PQT) are byte offsets. Empty when head == tail, full when
tail + 32 == head (mod size), so at most N - 1 descriptors are held. Hardware writes
at the tail and advances it; software reads from the head and writes the head back.
"""

from __future__ import annotations

from hwmodel.descriptors import DESC_SIZE, PageRequestDescriptor


class PageRequestQueue:
    __slots__ = ("_head", "_tail", "order", "ring", "size_bytes")

    def __init__(self, order: int = 4) -> None:
        if not 0 <= order <= 7:
            raise ValueError("PRQ order must be in 0..7 (PQA.PQS)")
        self.order = order
        self.size_bytes = 4096 << order
        self.ring = bytearray(self.size_bytes)
        self._head = 0
        self._tail = 0

    # ---- registers
    @property
    def head(self) -> int:
        """PQH: byte offset of the next descriptor software will read."""
        return self._head

    @head.setter
    def head(self, offset: int) -> None:
        self.write_head(offset)

    def write_head(self, offset: int) -> None:
        """Software's PQH write (bits 18:5 are writable; must be inside the ring)."""
        if offset % DESC_SIZE or not 0 <= offset < self.size_bytes:
            raise ValueError(f"PQH {offset:#x} is not a 32-byte slot inside the ring")
        self._head = offset

    @property
    def tail(self) -> int:
        """PQT: byte offset hardware writes next. Read-only for software."""
        return self._tail

    # ---- geometry
    @property
    def entries(self) -> int:
        return self.size_bytes // DESC_SIZE

    @property
    def capacity(self) -> int:
        """Descriptors the ring can hold: entries - 1."""
        return self.entries - 1

    @property
    def used(self) -> int:
        """Descriptors between head and tail."""
        return ((self._tail - self._head) % self.size_bytes) // DESC_SIZE

    @property
    def is_empty(self) -> bool:
        return self._head == self._tail

    @property
    def is_full(self) -> bool:
        return (self._tail + DESC_SIZE) % self.size_bytes == self._head

    # ---- access
    def read_descriptor(self, offset: int) -> PageRequestDescriptor:
        """Decode the slot at byte ``offset`` (as software reads the ring memory)."""
        if offset % DESC_SIZE or not 0 <= offset < self.size_bytes:
            raise ValueError(f"offset {offset:#x} is not a 32-byte slot inside the ring")
        return PageRequestDescriptor.decode(bytes(self.ring[offset : offset + DESC_SIZE]))

    def pending_offsets(self) -> list[int]:
        """Byte offsets of the descriptors from head to tail, in order."""
        out = []
        off = self._head
        while off != self._tail:
            out.append(off)
            off = (off + DESC_SIZE) % self.size_bytes
        return out

    def hw_write(self, raw: bytes) -> None:
        """Hardware side: store one descriptor at the tail and advance the tail."""
        t = self._tail
        self.ring[t : t + DESC_SIZE] = raw
        self._tail = (t + DESC_SIZE) % self.size_bytes

    def reset(self) -> None:
        """Zero PQH/PQT (the driver does this before programming PQA)."""
        self._head = self._tail = 0
