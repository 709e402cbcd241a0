"""VT-d domains (``struct dmar_domain``): per-unit domain IDs, cache tags, pending count."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hwmodel import PageTable
from iopfd.core.intel.cache import CacheTagList

if TYPE_CHECKING:
    from iopfd.core.budgets import UidAccount
    from iopfd.core.intel.iommu import UnitState


class DmarDomain:
    """One translation domain: a paging (second-stage) or nested (first-stage over a
    parent's second stage) page table, and where its translations may be cached."""

    __slots__ = ("dids", "nested", "owner", "parent", "pending", "s1", "s2", "tags")

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
        #: The uid account its domain IDs are charged to (``iopfd.core.budgets``).
        self.owner: UidAccount | None = None


def domain_attach_iommu(domain: DmarDomain, us: UnitState) -> int:
    """``domain_attach_iommu``: the domain's DID on this unit, allocated on first use
    (``ENOSPC`` when the unit has none left)."""
    entry = domain.dids.get(us.unit.name)
    if entry is None:
        did = us.alloc_did(domain.owner)
        domain.dids[us.unit.name] = [did, 1]
        return did
    entry[1] += 1
    return entry[0]


def domain_detach_iommu(domain: DmarDomain, us: UnitState) -> None:
    entry = domain.dids[us.unit.name]
    entry[1] -= 1
    if entry[1] == 0:
        del domain.dids[us.unit.name]
        us.free_did(entry[0], domain.owner)


__all__ = ["DmarDomain", "domain_attach_iommu", "domain_detach_iommu"]
