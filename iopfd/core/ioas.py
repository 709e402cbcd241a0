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
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import TYPE_CHECKING, ClassVar, TypeVar, cast

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

T = TypeVar("T")

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
#: File maps an IOAS's ``objects`` row lists (``map_files_total`` counts them all).
MAP_FILES_SHOWN = 64
#: Areas one step of a daemon-picked IOVA's search walks (a few milliseconds).
HOLE_AREAS_PER_STEP = 16384
#: Pages one step of a sliced ``ioas_unmap`` removes (as many as one ``ioas_map`` of
#: ``max_map_length``'s default maps): a few milliseconds, then the daemon serves others
#: (the kernel's ``iopt_unmap_iova_range`` unmaps area by area with ``cond_resched``).
UNMAP_PAGES_PER_STEP = 16384


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
        """Remove ``[first, end)`` from every area it touches; the pieces removed. One
        splice of ``starts`` however many areas go (not one ``del`` per area)."""
        starts, ends = self.starts, self.ends
        i = bisect.bisect_right(starts, first) - 1
        if i < 0 or ends[starts[i]] <= first:
            i += 1
        j = bisect.bisect_left(starts, end, i)
        if i == j:
            return []
        removed = []
        kept = []
        for a_start in starts[i:j]:
            a_end = ends.pop(a_start)
            lo, hi = max(a_start, first), min(a_end, end)
            removed.append((lo, hi))
            if a_start < lo:
                kept.append(a_start)
                ends[a_start] = lo
            if hi < a_end:
                kept.append(hi)
                ends[hi] = a_end
        starts[i:j] = kept
        return removed

    def step_end(self, first: int, end: int, pages: int) -> int:
        """The end of the shortest ``[first, x)`` holding ``pages`` mapped pages, or
        ``end`` when ``[first, end)`` holds fewer: one step of a sliced unmap."""
        starts, ends = self.starts, self.ends
        i = bisect.bisect_right(starts, first) - 1
        if i < 0 or ends[starts[i]] <= first:
            i += 1
        while i < len(starts) and starts[i] < end:
            lo, hi = max(starts[i], first), min(ends[starts[i]], end)
            if hi - lo >= pages:
                return lo + pages
            pages -= hi - lo
            i += 1
        return end

    def find_hole_steps(
        self, npages: int, first: int, limit: int
    ) -> Generator[None, None, int | None]:
        """The lowest start >= ``first`` of ``npages`` free pages below ``limit``,
        yielding after every ``HOLE_AREAS_PER_STEP`` areas walked: an IOAS of a million
        scattered pages takes a daemon-picked IOVA in slices."""
        starts, ends = self.starts, self.ends
        cur = first
        i = max(0, bisect.bisect_right(starts, first) - 1)
        budget = HOLE_AREAS_PER_STEP
        while i < len(starts):
            start = starts[i]
            end = ends[start]
            if end > cur:
                if start - cur >= npages:
                    break
                cur = max(cur, end)
            i += 1
            budget -= 1
            if not budget:
                yield
                budget = HOLE_AREAS_PER_STEP
        return cur if cur + npages <= limit else None


class Ioas(IommufdObject):
    __slots__ = ("allowed", "areas", "file_firsts", "file_maps", "huge_pages", "hwpts", "table")
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
        #: ``file_maps``' first pages, sorted: an unmap finds its file maps by bisection.
        self.file_firsts: list[int] = []

    def describe(self) -> dict[str, object]:
        row = super().describe()
        row["hwpts"] = sorted(self.hwpts)
        row["huge_pages"] = self.huge_pages
        row["allowed_iovas"] = [{"start": a, "last": b} for a, b in self.allowed]
        # The lowest few, in IOVA order (``file_firsts`` is sorted): a row costs the
        # same however many file maps a tenant made (up to one per mapped page).
        maps = self.file_maps
        row["map_files"] = [
            {
                "iova": first * PAGE_SIZE,
                "length": maps[first][0] * PAGE_SIZE,
                "start": maps[first][1],
            }
            for first in self.file_firsts[:MAP_FILES_SHOWN]
        ]
        row["map_files_total"] = len(maps)
        return row


def _overlaps_reserved(start: int, last: int) -> bool:
    for r_start, r_last in RESERVED_IOVAS:  # noqa: SIM110 - no generator frame per map
        if start <= r_last and r_start <= last:
            return True
    return False


def check_perm(perm: int, allowed: int) -> Perm:
    if not isinstance(perm, int) or perm <= 0 or perm & ~allowed:
        raise CoreError(EINVAL, f"perm {perm!r} must be a non-zero subset of {allowed:#x}")
    return perm_of(perm)


def _destroy(ctx: ContextBase, obj: IommufdObject, now: int) -> None:
    assert isinstance(obj, Ioas)
    ctx.uncharge_pages(len(obj.table))


def _destroy_steps(ctx: ContextBase, obj: IommufdObject, now: int) -> Iterator[None]:
    """``_destroy`` in steps of ``UNMAP_PAGES_PER_STEP`` pages: freeing a million page
    entries at once held every connection for about 50 ms. Nothing translates through
    the table any more (an IOAS in use is never destroyed), so it may go piecemeal."""
    assert isinstance(obj, Ioas)
    table = obj.table
    while len(table):
        ctx.uncharge_pages(table.drop_some(UNMAP_PAGES_PER_STEP))
        if len(table):
            yield


register_object_ops(
    Ioas, ObjectOps(destroy=_destroy, teardown_rank=lambda o: 3, destroy_steps=_destroy_steps)
)


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

    def ioas_map_steps(
        self, ioas_id: int, iova: int | None, length: int, perm: int, now: int
    ) -> Generator[None, None, int]:
        """``ioas_map`` in steps: the search for a daemon-picked IOVA yields between
        slices of the IOAS's areas (a map at a given IOVA is one step)."""
        ioas = self.get(ioas_id, Ioas, "an IOAS")
        p = check_perm(perm, RW)
        if iova is None:
            iova = yield from self._pick_iova(ioas, length)
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
            iova = drive(self._pick_iova(ioas, length))
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
        self.hot["ioas_maps"] += 1
        return iova

    def _pick_iova(self, ioas: Ioas, length: int) -> Generator[None, None, int]:
        """The IOVA the daemon picks for a map without one (``iopt_alloc_iova``), in
        steps; ``ENOSPC`` when no hole fits."""
        check_range(0, length)
        self.check_map_length(length)  # before the search: a refused map costs nothing
        first = yield from _alloc_iova(ioas.areas, length // PAGE_SIZE, ioas.allowed)
        if first is None:
            raise CoreError(ENOSPC, f"no free IOVA range of {length:#x} bytes")
        return first * PAGE_SIZE

    def ioas_unmap(self, ioas_id: int, iova: int, length: int, now: int) -> int:
        """Complete when it returns: every IOTLB and device TLB that could hold the
        range was invalidated (``iopt_unmap_iova`` -> ``iommu_unmap`` -> the driver's
        ``cache_tag_flush_range`` for every domain on the IOAS). Returns the bytes
        unmapped."""
        return drive(self.ioas_unmap_steps(ioas_id, iova, length, now))

    def ioas_unmap_steps(
        self, ioas_id: int, iova: int, length: int, now: int
    ) -> Generator[None, None, int]:
        """``ioas_unmap`` in steps of at most ``UNMAP_PAGES_PER_STEP`` pages; returns
        the bytes unmapped. The arguments are checked at the call, before any step.
        Each step is whole: what it cuts from the areas leaves the page table, the
        budgets and, by its flush, every IOTLB and device TLB, so between two steps the
        devices see a consistent IOAS and when the generator finishes no cache holds
        the range."""
        ioas = self.get(ioas_id, Ioas, "an IOAS")
        check_range(iova, length)
        return self._unmap_steps(ioas, iova, length, now)

    def _unmap_steps(
        self, ioas: Ioas, iova: int, length: int, now: int
    ) -> Generator[None, None, int]:
        first = iova // PAGE_SIZE
        end = first + length // PAGE_SIZE
        areas, table = ioas.areas, ioas.table
        unmapped = 0
        lo = first
        while True:
            hi = areas.step_end(lo, end, UNMAP_PAGES_PER_STEP)
            step = 0
            for p_lo, p_hi in areas.cut(lo, hi):
                step += table.unmap(p_lo * PAGE_SIZE, (p_hi - p_lo) * PAGE_SIZE)
            if step:
                # Each step flushes what it unmapped, as each ``iommu_unmap`` of the
                # kernel's area walk syncs its own gather: between two steps no cache
                # holds a page that has left the table.
                self.uncharge_pages(step // PAGE_SIZE)
                unmapped += step
                self.iommu.driver.flush_iotlb_range(
                    [hwpt.domain for hwpt in ioas.hwpts.values()],
                    first_stage=False,
                    start=lo * PAGE_SIZE if lo > first else iova,
                    end=hi * PAGE_SIZE if hi < end else iova + length,
                    reason="ioas_unmap",
                    now=now,
                )
            if hi >= end or not areas.overlaps(hi, end):
                break
            lo = hi
            yield
        _drop_file_maps(ioas, first, end)
        self.counters["ioas_unmaps"] += 1
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
        return drive(
            self.ioas_copy_steps(src_ioas_id, src_iova, dst_ioas_id, dst_iova, length, perm, now)
        )

    def ioas_copy_steps(  # noqa: PLR0917 - as ioas_copy
        self,
        src_ioas_id: int,
        src_iova: int,
        dst_ioas_id: int,
        dst_iova: int | None,
        length: int,
        perm: int,
        now: int,
    ) -> Generator[None, None, int]:
        """``ioas_copy`` in steps, as ``ioas_map_steps``."""
        p = check_perm(perm, RW)
        src = self.get(src_ioas_id, Ioas, "an IOAS")
        check_range(src_iova, length, "src_iova")
        # Before the source's pages are looked at: a copy costs what one map may.
        self.check_map_length(length)
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
        if dst_iova is None:
            dst_iova = yield from self._pick_iova(dst, length)
        return self._map_pages(dst, dst_iova, length, p, lambda off: targets[off // PAGE_SIZE])

    def ioas_map_file(  # noqa: PLR0917 - one argument per field of struct iommu_ioas_map_file
        self, ioas_id: int, iova: int | None, start: int, length: int, perm: int, now: int
    ) -> int:
        """``iommufd_ioas_map_file``: as ``ioas_map`` (the emulation has no memory, so
        nothing of the file is read); ``start`` (the file offset, 4 KiB aligned) is
        recorded for ``objects``."""
        return drive(self.ioas_map_file_steps(ioas_id, iova, start, length, perm, now))

    def ioas_map_file_steps(  # noqa: PLR0917 - as ioas_map_file
        self, ioas_id: int, iova: int | None, start: int, length: int, perm: int, now: int
    ) -> Generator[None, None, int]:
        """``ioas_map_file`` in steps, as ``ioas_map_steps``."""
        ioas = self.get(ioas_id, Ioas, "an IOAS")
        p = check_perm(perm, RW)
        if not isinstance(start, int) or start < 0 or start % PAGE_SIZE:
            raise CoreError(EINVAL, f"start {start!r} is not 4 KiB aligned")
        if iova is None:
            iova = yield from self._pick_iova(ioas, length)
        iova = self._map_pages(ioas, iova, length, p)
        ioas.file_maps[iova // PAGE_SIZE] = (length // PAGE_SIZE, start)
        bisect.insort(ioas.file_firsts, iova // PAGE_SIZE)
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


def _drop_file_maps(ioas: Ioas, first: int, end: int) -> None:
    """Forget the file maps ``[first, end)`` touches: they do not overlap each other,
    so they are the ones just below ``end``'s place in ``file_firsts``."""
    firsts, maps = ioas.file_firsts, ioas.file_maps
    i = j = bisect.bisect_left(firsts, end)
    while i > 0 and firsts[i - 1] + maps[firsts[i - 1]][0] > first:
        i -= 1
        del maps[firsts[i]]
    del firsts[i:j]


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


def drive(steps: Generator[None, None, T]) -> T:
    """Run ``steps`` to the end at once; its return value."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return cast("T", done.value)


def _alloc_iova(
    areas: IovaAreas, npages: int, allowed: Sequence[tuple[int, int]] = ()
) -> Generator[None, None, int | None]:
    """``iopt_alloc_iova``: the lowest hole above page 0 that avoids the interrupt
    window, naturally aligned to the power of two covering the length (up to 2 MiB),
    inside an allowed range when ``IOMMU_IOAS_ALLOW_IOVAS`` set some. In steps: the
    search may walk every area of the IOAS."""
    if not allowed:
        return (
            yield from _alloc_in(
                areas, npages, IOVA_ALLOC_START // PAGE_SIZE, IOVA_LIMIT // PAGE_SIZE
            )
        )
    for start, last in allowed:
        lo = max(-(-start // PAGE_SIZE), 1)
        hi = min((last + 1) // PAGE_SIZE, IOVA_LIMIT // PAGE_SIZE)
        if hi - lo >= npages:
            found = yield from _alloc_in(areas, npages, lo, hi)
            if found is not None:
                return found
    return None


def _alloc_in(
    areas: IovaAreas, npages: int, first: int, limit: int
) -> Generator[None, None, int | None]:
    align = min(1 << max(0, (npages - 1).bit_length()), 512)
    lo, hi = MSI_RESERVED[0] // PAGE_SIZE, MSI_RESERVED[1] // PAGE_SIZE
    tries = 0
    while True:
        tries += 1
        if tries % 1024 == 0:
            yield  # many misaligned holes: each try is a bisection and a short walk
        first = -(-first // align) * align
        start = yield from areas.find_hole_steps(npages, first, limit)
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
