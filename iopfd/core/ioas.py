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
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, ClassVar

from mypy_extensions import trait

from hwmodel import PageTable, Perm, perm_of
from iopfd.core.errors import EBUSY, EINVAL, ENOENT, ENOSPC, EOPNOTSUPP, EPERM, CoreError
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
#: The reserved IOVA ranges of every IOAS, ``[start, last]``: the interrupt window and
#: what lies beyond the aperture. The kernel reserves them when a VT-d domain joins the
#: IOAS (``iopt_table_enforce_dev_resv_regions``, ``iopt_table_add_domain``); iopfd
#: reports them from the start, as if every IOAS had one.
RESERVED_IOVAS = ((MSI_RESERVED[0], MSI_RESERVED[1] - 1), (IOVA_LIMIT, (1 << 64) - 1))
#: ``out_iova_alignment``: VT-d's smallest page.
IOVA_ALIGNMENT = PAGE_SIZE
#: ``IOMMU_OPTION`` values: ``option`` -> ``action`` -> ...
OPTIONS = ("rlimit_mode", "huge_pages")


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
    __slots__ = ("allowed", "areas", "file_maps", "huge_pages", "hwpts", "table")
    kind: ClassVar[str] = "ioas"

    def __init__(self, obj_id: int, ctx: ContextBase) -> None:
        super().__init__(obj_id, ctx)
        self.table = PageTable()
        self.areas = IovaAreas()
        # Paging HWPTs built on this IOAS; each holds a ``users`` reference on it.
        self.hwpts: dict[int, HwPagetable] = {}
        #: ``IOMMU_IOAS_ALLOW_IOVAS``: ``[start, last]`` ranges, sorted; empty: none set.
        self.allowed: list[tuple[int, int]] = []
        #: ``IOMMU_OPTION_HUGE_PAGES`` (``!iopt.disable_large_pages``).
        self.huge_pages = True
        #: ``IOMMU_IOAS_MAP_FILE`` areas: first page -> (pages, file offset).
        self.file_maps: dict[int, tuple[int, int]] = {}

    def describe(self) -> dict[str, object]:
        row = super().describe()
        row["hwpts"] = sorted(self.hwpts)
        row["huge_pages"] = self.huge_pages
        row["allowed_iovas"] = [{"start": a, "last": b} for a, b in self.allowed]
        row["map_files"] = [
            {"iova": first * PAGE_SIZE, "length": n * PAGE_SIZE, "start": start}
            for first, (n, start) in sorted(self.file_maps.items())
        ]
        return row


def _overlaps_reserved(start: int, last: int) -> bool:
    return any(start <= r_last and r_start <= last for r_start, r_last in RESERVED_IOVAS)


def check_perm(perm: int, allowed: int) -> Perm:
    if not isinstance(perm, int) or perm <= 0 or perm & ~allowed:
        raise CoreError(EINVAL, f"perm {perm!r} must be a non-zero subset of {allowed:#x}")
    return perm_of(perm)


def _destroy(ctx: ContextBase, obj: IommufdObject, now: int) -> None:
    assert isinstance(obj, Ioas)
    ctx.uncharge_pages(len(obj.table))


register_object_ops(Ioas, ObjectOps(destroy=_destroy, teardown_rank=lambda o: 3))


@trait
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
        """``IOMMU_IOAS_MAP``: at ``iova`` (``IOMMU_IOAS_MAP_FIXED_IOVA``; ``EINVAL``
        across a reserved range, ``EBUSY`` over a mapped page, the kernel's
        ``EEXIST``), or, with ``iova`` None, at the lowest
        free hole the daemon picks (``ENOSPC`` when none fits). Returns the IOVA."""
        ioas = self.get(ioas_id, Ioas, "an IOAS")
        p = check_perm(perm, RW)
        return self._map_pages(ioas, iova, length, p)

    def _map_pages(
        self,
        ioas: Ioas,
        iova: int | None,
        length: int,
        p: Perm,
        target: Callable[[int], int] | None = None,
    ) -> int:
        """``iopt_map_pages``: the IOVA chosen (``iopt_alloc_iova``) or checked, then
        ``length`` bytes mapped, at byte ``offset`` to ``target(offset)`` (a copy's
        source pages) or, without ``target``, to the IOVA itself."""
        npages = length // PAGE_SIZE if isinstance(length, int) else 0
        if iova is None:
            check_range(0, length)
            first = _alloc_iova(ioas.areas, npages, ioas.allowed)
            if first is None:
                raise CoreError(ENOSPC, f"no free IOVA range of {length:#x} bytes")
            iova = first * PAGE_SIZE
        else:
            _check_not_reserved(iova, length)
        self.check_map_length(length)
        first = iova // PAGE_SIZE
        if ioas.areas.overlaps(first, first + npages):
            raise CoreError(EBUSY, f"[{iova:#x}, {iova + length:#x}) overlaps a mapping")
        self.charge_pages(npages)
        # The emulation has no memory: a map's "host" address is its IOVA; a copy's is
        # its source's.
        if target is None:
            ioas.table.map(iova, iova, length, p)
        else:
            for off in range(0, length, PAGE_SIZE):
                ioas.table.map(iova + off, target(off), PAGE_SIZE, p)
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
        end = first + length // PAGE_SIZE
        for lo, hi in ioas.areas.cut(first, end):
            unmapped += ioas.table.unmap(lo * PAGE_SIZE, (hi - lo) * PAGE_SIZE)
        if ioas.file_maps:
            for f_first, (n, _) in list(ioas.file_maps.items()):
                if f_first < end and first < f_first + n:
                    del ioas.file_maps[f_first]
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

    def ioas_iova_ranges(self, ioas_id: int) -> dict[str, object]:
        """``iommufd_ioas_iova_ranges``: the holes of the reserved ranges, ascending
        (``ENOENT``; another kind ``EINVAL``). The allowed list does not narrow them."""
        self.get(ioas_id, Ioas, "an IOAS")
        ranges = []
        cur = 0
        for start, last in RESERVED_IOVAS:
            if start > cur:
                ranges.append({"start": cur, "last": start - 1})
            cur = last + 1
        if cur < 1 << 64:
            ranges.append({"start": cur, "last": (1 << 64) - 1})
        return {"ranges": ranges, "iova_alignment": IOVA_ALIGNMENT}

    def ioas_allow_iovas(self, ioas_id: int, ranges: Sequence[tuple[int, int]]) -> None:
        """``iommufd_ioas_allow_iovas``: the IOAS (``ENOENT``), each range in turn
        (``EINVAL`` start >= last or overlapping an earlier one:
        ``iommufd_ioas_load_iovas``), then ``iopt_set_allow_iova``: a range over a
        reserved one is the kernel's ``EADDRINUSE``, ``EBUSY`` here. The list replaces
        the previous one (empty: none); it steers only the IOVAs the daemon picks."""
        ioas = self.get(ioas_id, Ioas, "an IOAS")
        loaded: list[tuple[int, int]] = []
        for start, last in ranges:
            if start >= last:
                raise CoreError(EINVAL, f"allowed range [{start:#x}, {last:#x}]: start >= last")
            if any(start <= b and a <= last for a, b in loaded):
                raise CoreError(EINVAL, f"allowed range [{start:#x}, {last:#x}] overlaps another")
            loaded.append((start, last))
        for start, last in loaded:
            if _overlaps_reserved(start, last):
                raise CoreError(
                    EBUSY, f"allowed range [{start:#x}, {last:#x}] overlaps a reserved range"
                )
        ioas.allowed = sorted(loaded)

    def ioas_copy(  # noqa: PLR0917 - one argument per field of struct iommu_ioas_copy
        self,
        src_ioas_id: int,
        src_iova: int,
        dst_ioas_id: int,
        dst_iova: int | None,
        length: int,
        perm: int,
        now: int,
    ) -> int:
        """``iommufd_ioas_copy``: ``perm`` (``EINVAL``), the source IOAS (``ENOENT``),
        ``iopt_get_pages``: the source range covered by areas without a gap
        (``ENOENT``), the destination IOAS (``ENOENT``), then ``iopt_map_pages`` as
        ``ioas_map`` (alignment ``EINVAL``, a reserved range ``EINVAL``, overlap
        ``EBUSY``, no hole ``ENOSPC``); ``WRITE`` of a page mapped without it is
        the kernel's ``EPERM`` (``iopt_insert_area``), ``EINVAL`` here. The copy
        translates to the source's pages."""
        p = check_perm(perm, RW)
        src = self.get(src_ioas_id, Ioas, "an IOAS")
        check_range(src_iova, length, "src_iova")
        first = src_iova // PAGE_SIZE
        npages = length // PAGE_SIZE
        if not _covered(src.areas, first, first + npages):
            raise CoreError(
                ENOENT, f"[{src_iova:#x}, {src_iova + length:#x}) is not mapped without a gap"
            )
        targets = []
        for page in range(first, first + npages):
            hit = src.table.lookup_page(page)
            assert hit is not None  # covered by areas: every page is mapped
            targets.append(hit[0] * PAGE_SIZE)
            if p & Perm.WRITE and not hit[1] & Perm.WRITE:
                # iopt_insert_area's EPERM; the wire's EPERM is for peers, not pages.
                raise CoreError(EINVAL, f"page {page * PAGE_SIZE:#x} is mapped read-only")
        dst = self.get(dst_ioas_id, Ioas, "an IOAS")
        return self._map_pages(dst, dst_iova, length, p, lambda off: targets[off // PAGE_SIZE])

    def ioas_map_file(  # noqa: PLR0917 - one argument per field of struct iommu_ioas_map_file
        self, ioas_id: int, iova: int | None, start: int, length: int, perm: int, now: int
    ) -> int:
        """``iommufd_ioas_map_file``: as ``ioas_map`` (the emulation has no memory, so
        nothing of the file is read); ``start`` (the file offset, 4 KiB aligned) is
        recorded for ``objects``."""
        ioas = self.get(ioas_id, Ioas, "an IOAS")
        p = check_perm(perm, RW)
        if not isinstance(start, int) or start < 0 or start % PAGE_SIZE:
            raise CoreError(EINVAL, f"start {start!r} is not 4 KiB aligned")
        iova = self._map_pages(ioas, iova, length, p)
        ioas.file_maps[iova // PAGE_SIZE] = (length // PAGE_SIZE, start)
        return iova

    def option(
        self,
        option: str,
        action: str,
        object_id: int | None,
        val64: int | None,
        *,
        capable: bool,
    ) -> int | None:
        """``iommufd_option``: ``rlimit_mode`` (``iommufd_option_rlimit_mode``: per
        context; ``object_id`` ``EOPNOTSUPP``; set: ``EPERM`` unless ``capable``,
        ``EBUSY`` when the context holds objects, ``EINVAL`` beyond 1) and
        ``huge_pages`` (``iommufd_ioas_option``: the IOAS first, ``ENOENT``; set
        ``EINVAL`` beyond 1, and 0 while a domain of the IOAS holds areas:
        ``iopt_disable_large_pages``). An unknown option or action is ``EOPNOTSUPP``.
        Returns ``val64`` for get, None for set."""
        if option == "rlimit_mode":
            if object_id:
                raise CoreError(EOPNOTSUPP, "rlimit_mode takes no object_id")
            if action == "get":
                return int(self.rlimit_mode)
            if action != "set":
                raise CoreError(EOPNOTSUPP, f"unknown option action {action!r}")
            if not capable:
                raise CoreError(EPERM, "setting rlimit_mode needs CAP_SYS_RESOURCE (an admin)")
            if self.objects:
                raise CoreError(EBUSY, "rlimit_mode is set before the context holds objects")
            if val64 not in (0, 1):
                raise CoreError(EINVAL, f"rlimit_mode {val64!r} is neither 0 nor 1")
            self.rlimit_mode = val64 == 1
            return None
        if option != "huge_pages":
            raise CoreError(EOPNOTSUPP, f"unknown option {option!r}")
        ioas = self.get(object_id if object_id is not None else 0, Ioas, "an IOAS")
        if action == "get":
            return int(ioas.huge_pages)
        if action != "set":
            raise CoreError(EOPNOTSUPP, f"unknown option action {action!r}")
        if val64 == 1:
            ioas.huge_pages = True
        elif val64 == 0:
            if ioas.huge_pages and ioas.hwpts and ioas.areas.starts:
                raise CoreError(EINVAL, "a domain of the IOAS already holds mappings")
            ioas.huge_pages = False
        else:
            raise CoreError(EINVAL, f"huge_pages {val64!r} is neither 0 nor 1")
        return None


def _check_not_reserved(iova: int, length: int) -> None:
    """``iopt_check_iova``: a fixed IOVA range crossing a reserved one is ``EINVAL``."""
    check_range(iova, length)
    if _overlaps_reserved(iova, iova + length - 1):
        raise CoreError(EINVAL, f"[{iova:#x}, {iova + length:#x}) crosses a reserved range")


def _covered(areas: IovaAreas, first: int, end: int) -> bool:
    """``iopt_get_pages``: ``[first, end)`` lies in areas that follow each other."""
    i = bisect.bisect_right(areas.starts, first) - 1
    if i < 0:
        return False
    cur = first
    starts, ends = areas.starts, areas.ends
    while cur < end:
        if i >= len(starts) or starts[i] > cur or ends[starts[i]] <= cur:
            return False
        cur = ends[starts[i]]
        i += 1
    return True


def _alloc_iova(
    areas: IovaAreas, npages: int, allowed: Sequence[tuple[int, int]] = ()
) -> int | None:
    """``iopt_alloc_iova``: the lowest hole above page 0 that avoids the interrupt
    window, naturally aligned to the power of two covering the length (up to 2 MiB),
    inside an allowed range when ``IOMMU_IOAS_ALLOW_IOVAS`` set some."""
    if not allowed:
        return _alloc_in(areas, npages, IOVA_ALLOC_START // PAGE_SIZE, IOVA_LIMIT // PAGE_SIZE)
    for start, last in allowed:
        lo = max(-(-start // PAGE_SIZE), 1)
        hi = min((last + 1) // PAGE_SIZE, IOVA_LIMIT // PAGE_SIZE)
        if hi - lo >= npages:
            found = _alloc_in(areas, npages, lo, hi)
            if found is not None:
                return found
    return None


def _alloc_in(areas: IovaAreas, npages: int, first: int, limit: int) -> int | None:
    align = min(1 << max(0, (npages - 1).bit_length()), 512)
    lo, hi = MSI_RESERVED[0] // PAGE_SIZE, MSI_RESERVED[1] // PAGE_SIZE
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
    "IOVA_ALIGNMENT",
    "IOVA_ALLOC_START",
    "MSI_RESERVED",
    "OPTIONS",
    "RESERVED_IOVAS",
    "RW",
    "Ioas",
    "IoasOps",
    "IovaAreas",
    "check_perm",
]
