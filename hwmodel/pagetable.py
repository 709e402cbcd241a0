"""A 4 KiB-granular page table: page number -> (target page number, permissions).

Each entry is a tuple of two ints, the permissions as a plain ``int`` (``Perm``'s
value), never the ``Perm`` object: a tuple of ints is untracked by CPython's cyclic
collector, so a million mapped pages cost a full collection nothing, where tuples
holding an enum member made each one walk them all (0.4-0.9 s with 1 M pages).
"""

from __future__ import annotations

from hwmodel.rid import PAGE_MASK, PAGE_SHIFT, Perm, perm_of


def _check_range(iova: int, length: int) -> None:
    if iova < 0 or iova & PAGE_MASK:
        raise ValueError(f"address {iova:#x} is not 4 KiB aligned")
    if length <= 0 or length & PAGE_MASK:
        raise ValueError(f"length {length:#x} is not a positive multiple of 4 KiB")
    if iova + length > 1 << 64:
        raise ValueError("range exceeds the 64-bit address space")


class PageTable:
    """Mappings at 4 KiB granularity; mapping over an existing page replaces it."""

    __slots__ = ("_pages",)

    def __init__(self) -> None:
        self._pages: dict[int, tuple[int, int]] = {}

    def map(self, iova: int, target: int, length: int, perm: Perm) -> None:
        _check_range(iova, length)
        _check_range(target, length)
        p = int(perm_of(int(perm)))
        first, tfirst = iova >> PAGE_SHIFT, target >> PAGE_SHIFT
        pages = self._pages
        for i in range(length >> PAGE_SHIFT):
            pages[first + i] = (tfirst + i, p)

    def unmap(self, iova: int, length: int) -> int:
        """Remove mappings in the range; returns the bytes that were mapped."""
        _check_range(iova, length)
        first, n = iova >> PAGE_SHIFT, length >> PAGE_SHIFT
        pages = self._pages
        removed = 0
        if n > len(pages):
            for pn in [p for p in pages if first <= p < first + n]:
                del pages[pn]
                removed += 1
        else:
            for pn in range(first, first + n):
                if pages.pop(pn, None) is not None:
                    removed += 1
        return removed << PAGE_SHIFT

    def lookup(self, iova: int) -> tuple[int, int] | None:
        """(target address including the page offset, perm), or None if unmapped."""
        hit = self._pages.get(iova >> PAGE_SHIFT)
        if hit is None:
            return None
        return (hit[0] << PAGE_SHIFT) | (iova & PAGE_MASK), hit[1]

    def lookup_page(self, page: int) -> tuple[int, int] | None:
        """(target page number, perm) for a page number, or None."""
        return self._pages.get(page)

    def drop_some(self, n: int) -> int:
        """Remove up to ``n`` mappings, whichever; how many went. A table being thrown
        away in bounded steps (freeing a million entries at once takes tens of ms)."""
        pages = self._pages
        k = min(n, len(pages))
        for _ in range(k):
            pages.popitem()
        return k

    def __len__(self) -> int:
        """Number of mapped 4 KiB pages."""
        return len(self._pages)
