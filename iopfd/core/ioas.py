"""I/O address spaces (``drivers/iommu/iommufd/ioas.c``).

An IOAS holds one stage-2 page table. Every paging HWPT allocated on it translates
through that same table, so an unmap must reach every domain using the IOAS (and,
through a nesting parent's tags, every nested domain on it: seed 002).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from hwmodel import PageTable, Perm, perm_of
from iopfd.core.errors import EBUSY, EINVAL, ENOSPC, CoreError
from iopfd.core.main import (
    PAGE_SIZE,
    ContextBase,
    IommufdObject,
    ObjectOps,
    check_range,
    register_object_ops,
)

if TYPE_CHECKING:
    from iopfd.core.hw_pagetable import HwPagetable

RW = int(Perm.READ | Perm.WRITE)
ALL_PERMS = int(Perm.READ | Perm.WRITE | Perm.EXEC | Perm.PRIV)


class Ioas(IommufdObject):
    __slots__ = ("hwpts", "table")
    kind: ClassVar[str] = "ioas"

    def __init__(self, obj_id: int, ctx: ContextBase) -> None:
        super().__init__(obj_id, ctx)
        self.table = PageTable()
        # Paging HWPTs built on this IOAS; each holds a ``users`` reference on it.
        self.hwpts: dict[int, HwPagetable] = {}

    def describe(self) -> dict[str, object]:
        row = super().describe()
        row["hwpts"] = sorted(self.hwpts)
        return row


def check_perm(perm: int, allowed: int) -> Perm:
    if not isinstance(perm, int) or perm <= 0 or perm & ~allowed:
        raise CoreError(EINVAL, f"perm {perm!r} must be a non-zero subset of {allowed:#x}")
    return perm_of(perm)


def _destroy(ctx: ContextBase, obj: IommufdObject, now: int) -> None:
    assert isinstance(obj, Ioas)
    ctx.mapped_pages -= len(obj.table)


register_object_ops(Ioas, ObjectOps(destroy=_destroy, teardown_rank=lambda o: 3))


class IoasOps(ContextBase):
    """The context's IOAS operations (``IOMMU_IOAS_*``)."""

    def ioas_alloc(self) -> int:
        obj_id = self.new_id()
        self.objects[obj_id] = Ioas(obj_id, self)
        return obj_id

    def check_map_length(self, length: int) -> None:
        limit = self.limits.max_map_length
        if length > limit:
            raise CoreError(EINVAL, f"length {length:#x} exceeds max_map_length ({limit:#x}): "
                                    "map in several calls")

    def charge_pages(self, npages: int) -> None:
        limit = self.limits.max_mapped_pages_per_context
        if self.mapped_pages + npages > limit:
            raise CoreError(ENOSPC, f"mapping {npages} more pages would exceed "
                                    f"max_mapped_pages ({limit}) for this connection")
        self.mapped_pages += npages

    def ioas_map(self, ioas_id: int, iova: int, length: int, perm: int, now: int) -> None:
        ioas = self.get(ioas_id, Ioas, "an IOAS")
        check_range(iova, length)
        p = check_perm(perm, RW)
        self.check_map_length(length)
        table = ioas.table
        first = iova // PAGE_SIZE
        npages = length // PAGE_SIZE
        for page in range(first, first + npages):
            if table.lookup_page(page) is not None:
                raise CoreError(EBUSY, f"iova {page * PAGE_SIZE:#x} is already mapped")
        self.charge_pages(npages)
        # The IOAS maps iova to the same "host" address: the emulation has no memory.
        table.map(iova, iova, length, p)
        self.counters["ioas_maps"] += 1

    def ioas_unmap(self, ioas_id: int, iova: int, length: int, now: int) -> int:
        """Complete when it returns: every IOTLB and device TLB that could hold the
        range was invalidated (``iopt_unmap_iova`` -> ``iommu_unmap`` -> the driver's
        ``cache_tag_flush_range`` for every domain on the IOAS)."""
        ioas = self.get(ioas_id, Ioas, "an IOAS")
        check_range(iova, length)
        unmapped = ioas.table.unmap(iova, length)
        self.mapped_pages -= unmapped // PAGE_SIZE
        self.counters["ioas_unmaps"] += 1
        if unmapped:
            self.iommu.driver.flush_iotlb_range(
                [hwpt.domain for hwpt in ioas.hwpts.values()], first_stage=False,
                start=iova, end=iova + length, reason="ioas_unmap", now=now)
        return unmapped


__all__ = ["ALL_PERMS", "RW", "Ioas", "IoasOps", "check_perm"]
