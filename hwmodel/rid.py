"""Requester IDs, access permissions and the page size shared by the whole model."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
PAGE_MASK = PAGE_SIZE - 1


class Perm(enum.IntFlag):
    """Access permissions, with the iommufd uAPI values."""

    READ = 1
    WRITE = 2
    EXEC = 4
    PRIV = 8


# Every value of the four bits, built once: ``Perm(v)`` costs about 1.5 us (enum
# machinery), an index a few ns, and the fault path converts several times a page.
_PERM_TABLE: tuple[Perm, ...] = tuple(Perm(v) for v in range(16))


def perm_of(value: int) -> Perm:
    """``Perm(value)`` for 0..15 without the enum call; other values go through it."""
    if 0 <= value < 16:
        return _PERM_TABLE[value]
    return Perm(value)


def perm_allows(entry: Perm | int, access: Perm | int) -> bool:
    """An access with permission set ``access`` is allowed by an entry with ``entry``."""
    return int(access) & ~int(entry) == 0


# The same forms and messages as iopfd.protocol.rid (hwmodel imports nothing of ours;
# tests/protocol/test_rid.py pins the two together): SSSS:BB:DD.F, or BB:DD.F for segment 0.
_RID_RE = re.compile(r"^(?:([0-9a-fA-F]{4}):)?([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])$")


@dataclass(frozen=True, order=True)
class Rid:
    """A PCI requester ID: segment, bus, device, function."""

    segment: int
    bus: int
    dev: int
    fn: int

    def __post_init__(self) -> None:
        if not 0 <= self.segment <= 0xFFFF:
            raise ValueError(f"segment {self.segment:#x} out of range")
        if not 0 <= self.bus <= 0xFF:
            raise ValueError(f"bus {self.bus:#x} out of range")
        if not 0 <= self.dev <= 0x1F:
            raise ValueError(f"device {self.dev:#x} out of range")
        if not 0 <= self.fn <= 7:
            raise ValueError(f"function {self.fn} out of range")

    @classmethod
    def parse(cls, s: str) -> Rid:
        """Parse ``SSSS:BB:DD.F`` or ``BB:DD.F`` (segment 0), hex; ``ValueError`` on
        anything else."""
        m = _RID_RE.match(s) if isinstance(s, str) else None
        if m is None:
            raise ValueError(
                f"malformed requester ID {s!r}: expected [SSSS:]BB:DD.F (hex), "
                "e.g. 0000:3a:00.0 or 3a:00.0"
            )
        return cls(int(m[1] or "0", 16), int(m[2], 16), int(m[3], 16), int(m[4]))

    @classmethod
    def from_sid(cls, segment: int, sid: int) -> Rid:
        """The RID whose 16-bit source ID (bus<<8 | devfn) is ``sid``."""
        return cls(segment, (sid >> 8) & 0xFF, (sid >> 3) & 0x1F, sid & 7)

    @property
    def devfn(self) -> int:
        return self.dev << 3 | self.fn

    @property
    def sid(self) -> int:
        """The 16-bit source ID used in descriptors: ``bus << 8 | dev << 3 | fn``."""
        return self.bus << 8 | self.dev << 3 | self.fn

    def __str__(self) -> str:
        return f"{self.segment:04x}:{self.bus:02x}:{self.dev:02x}.{self.fn:x}"
