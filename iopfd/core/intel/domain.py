"""VT-d domains (``struct dmar_domain``): per-unit domain IDs, cache tags, pending count."""

from __future__ import annotations

from hwmodel import PageTable
from iopfd.core.intel.cache import CacheTagList


class DmarDomain:
    """One translation domain: a paging (second-stage) or nested (first-stage over a
    parent's second stage) page table, and where its translations may be cached."""

    __slots__ = ("dids", "nested", "parent", "pending", "s1", "s2", "tags")

    def __init__(self, s2: PageTable, *, nested: bool, parent: DmarDomain | None) -> None:
        self.s2 = s2
        self.nested = nested
        self.parent = parent
        self.s1: PageTable | None = PageTable() if nested else None
        # unit name -> [DID, attachments on that unit]; a DID is per IOMMU (vtd-hw.md 5.5).
        self.dids: dict[str, list[int]] = {}
        # Seed 002: ONE sorted list of where this domain's translations may be cached.
        self.tags = CacheTagList()
        # Seed 004 step 6: groups pending on this domain (queued, not yet answered).
        self.pending = 0
