"""I/O address spaces (``drivers/iommu/iommufd/ioas.c``).

An IOAS holds one stage-2 page table. Every paging HWPT allocated on it translates
through that same table, so an unmap must reach every domain using the IOAS.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from hwmodel import PageTable
from iopfd.core.objects import IommufdObject

if TYPE_CHECKING:
    from iopfd.core.context import Context
    from iopfd.core.hw_pagetable import HwPagetable


class Ioas(IommufdObject):
    __slots__ = ("hwpts", "table")
    kind: ClassVar[str] = "ioas"

    def __init__(self, obj_id: int, ctx: Context) -> None:
        super().__init__(obj_id, ctx)
        self.table = PageTable()
        # Paging HWPTs built on this IOAS; each holds a ``users`` reference on it.
        self.hwpts: dict[int, HwPagetable] = {}

    def describe(self) -> dict[str, object]:
        row = super().describe()
        row["hwpts"] = sorted(self.hwpts)
        return row
