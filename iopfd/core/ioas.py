"""I/O address spaces (``drivers/iommu/iommufd/ioas.c``, ``io_pagetable.c``).

An IOAS holds one stage-2 page table. Every paging HWPT allocated on it translates
through that same table, so an unmap must reach every domain using the IOAS (and,
through a nesting parent's tags, every nested domain on it: seed 002).

Like the kernel's ``io_pagetable`` it also keeps its mappings as areas, sorted by
IOVA: an unmap costs what the range holds (areas found by bisection, pages of those
areas only), never what the whole IOAS holds, and a map without an IOVA finds the
lowest free hole (``iopt_alloc_iova``).
"""

from __future__ import annotations

import bisect
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


#: Where a kernel-chosen IOVA may start: page 0 stays unused, as a NULL DMA address.
IOVA_ALLOC_START = 1 << 20
#: VT-d's aperture with 4-level (48-bit) second-stage tables.
IOVA_LIMIT = 1 << 48
#: The interrupt window every VT-d unit reserves (``IOAPIC_RANGE_START..END``).
MSI_RESERVED = (0xFEE0_0000, 0xFEF0_0000)


class IovaAreas:
    """The mapped ranges of an IOAS, in pages: sorted starts and start -> end."""

    __slots__ = ("ends", "starts")

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: dict[int, int] = {}

    def overlaps(self, first: int, end: int) -> bool:
        i = bisect.bisect_right(self.starts, first) - 1
        if i >= 0 and self.ends[self.starts[i]] > first:
            return True
        return i + 1 < len(self.starts) and self.starts[i + 1] < end

    def add(self, first: int, end: int) -> None:
        bisect.insort(self.starts, first)
        self.ends[first] = end

    def cut(self, first: int, end: int) -> list[tuple[int, int]]:
        """Remove ``[first, end)`` from every area it touches; the pieces removed."""
        starts, ends = self.starts, self.ends
        i = bisect.bisect_right(starts, first) - 1
        if i < 0 or ends[starts[i]] <= first:
            i += 1
        removed = []
        while i < len(starts) and starts[i] < end:
            a_start = starts[i]
            a_end = ends.pop(a_start)
            del starts[i]
            lo, hi = max(a_start, first), min(a_end, end)
            removed.append((lo, hi))
            if a_start < lo:
                starts.insert(i, a_start)
                ends[a_start] = lo
                i += 1
            if hi < a_end:
                starts.insert(i, hi)
                ends[hi] = a_end
                i += 1
        return removed

    def find_hole(self, npages: int, first: int, limit: int) -> int | None:
        """The lowest start >= ``first`` of ``npages`` free pages below ``limit``."""
        cur = first
        i = max(0, bisect.bisect_right(self.starts, first) - 1)
        for start in self.starts[i:]:
            end = self.ends[start]
            if end <= cur:
                continue
            if start - cur >= npages:
                break
            cur = max(cur, end)
        return cur if cur + npages <= limit else None


class Ioas(IommufdObject):
    __slots__ = ("areas", "hwpts", "table")
    kind: ClassVar[str] = "ioas"

    def __init__(self, obj_id: int, ctx: ContextBase) -> None:
        super().__init__(obj_id, ctx)
        self.table = PageTable()
        self.areas = IovaAreas()
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
    ctx.uncharge_pages(len(obj.table))


register_object_ops(Ioas, ObjectOps(destroy=_destroy, teardown_rank=lambda o: 3))


class IoasOps(ContextBase):
    """The context's IOAS operations (``IOMMU_IOAS_*``)."""

    def ioas_alloc(self) -> int:
        obj_id = self.new_id()
        self.insert(Ioas(obj_id, self))
        return obj_id

    def check_map_length(self, length: int) -> None:
        limit = self.limits.max_map_length
        if length > limit:
            raise CoreError(
                EINVAL,
                f"length {length:#x} exceeds max_map_length ({limit:#x}): map in several calls",
            )

    def charge_pages(self, npages: int) -> None:
        limit = self.limits.max_mapped_pages_per_context
        if self.mapped_pages + npages > limit:
            raise CoreError(
                ENOSPC,
                f"mapping {npages} more pages would exceed "
                f"max_mapped_pages ({limit}) for this connection",
            )
        self.account.charge_pages(npages)
        self.mapped_pages += npages

    def ioas_map(self, ioas_id: int, iova: int | None, length: int, perm: int, now: int) -> int:
        """``IOMMU_IOAS_MAP``: at ``iova`` (``IOMMU_IOAS_MAP_FIXED_IOVA``; ``EBUSY`` over
        a mapped page, the kernel's ``EEXIST``), or, with ``iova`` None, at the lowest
        free hole the daemon picks (``ENOSPC`` when none fits). Returns the IOVA."""
        ioas = self.get(ioas_id, Ioas, "an IOAS")
        p = check_perm(perm, RW)
        npages = length // PAGE_SIZE if isinstance(length, int) else 0
        if iova is None:
            check_range(0, length)
            first = _alloc_iova(ioas.areas, npages)
            if first is None:
                raise CoreError(ENOSPC, f"no free IOVA range of {length:#x} bytes")
            iova = first * PAGE_SIZE
        check_range(iova, length)
        self.check_map_length(length)
        first = iova // PAGE_SIZE
        if ioas.areas.overlaps(first, first + npages):
            raise CoreError(EBUSY, f"[{iova:#x}, {iova + length:#x}) overlaps a mapping")
        self.charge_pages(npages)
        # The IOAS maps iova to the same "host" address: the emulation has no memory.
        ioas.table.map(iova, iova, length, p)
        ioas.areas.add(first, first + npages)
        self.counters["ioas_maps"] += 1
        return iova

    def ioas_unmap(self, ioas_id: int, iova: int, length: int, now: int) -> int:
        """Complete when it returns: every IOTLB and device TLB that could hold the
        range was invalidated (``iopt_unmap_iova`` -> ``iommu_unmap`` -> the driver's
        ``cache_tag_flush_range`` for every domain on the IOAS)."""
        ioas = self.get(ioas_id, Ioas, "an IOAS")
        check_range(iova, length)
        first = iova // PAGE_SIZE
        unmapped = 0
        for lo, hi in ioas.areas.cut(first, first + length // PAGE_SIZE):
            unmapped += ioas.table.unmap(lo * PAGE_SIZE, (hi - lo) * PAGE_SIZE)
        self.uncharge_pages(unmapped // PAGE_SIZE)
        self.counters["ioas_unmaps"] += 1
        if unmapped:
            self.iommu.driver.flush_iotlb_range(
                [hwpt.domain for hwpt in ioas.hwpts.values()],
                first_stage=False,
                start=iova,
                end=iova + length,
                reason="ioas_unmap",
                now=now,
            )
        return unmapped


def _alloc_iova(areas: IovaAreas, npages: int) -> int | None:
    """``iopt_alloc_iova``: the lowest hole above page 0 that avoids the interrupt
    window, naturally aligned to the power of two covering the length (up to 2 MiB)."""
    align = min(1 << max(0, (npages - 1).bit_length()), 512)
    lo, hi = MSI_RESERVED[0] // PAGE_SIZE, MSI_RESERVED[1] // PAGE_SIZE
    first = IOVA_ALLOC_START // PAGE_SIZE
    limit = IOVA_LIMIT // PAGE_SIZE
    while True:
        first = -(-first // align) * align
        start = areas.find_hole(npages, first, limit)
        if start is None:
            return None
        aligned = -(-start // align) * align
        if aligned != start:
            first = aligned
            continue
        if start < hi and start + npages > lo:
            first = hi  # over the interrupt window: look above it
            continue
        return start


__all__ = [
    "ALL_PERMS",
    "IOVA_ALLOC_START",
    "MSI_RESERVED",
    "RW",
    "Ioas",
    "IoasOps",
    "IovaAreas",
    "check_perm",
]
