"""Cache tags (``drivers/iommu/intel/cache.c``): where a domain's translations may live.

Seed 002: a domain keeps ONE list of its attachments, as cache tags {type, unit, DID,
PASID, device}, with a ``users`` count so duplicates collapse: every device behind one
unit sharing a DID (and PASID) shares one IOTLB tag. The list is kept sorted by
(unit, type, DID, PASID, SID), so a flush walks it once and emits, per unit, first the
IOTLB invalidations (one per DID[, PASID]) then the device-TLB ones (one per ATS
function and PASID), ready to batch. A nested domain also puts NESTING_* tags on its
parent, so the parent's unmap reaches every nested DID built on it.
"""

from __future__ import annotations

import bisect
import enum
from typing import TYPE_CHECKING

from hwmodel import (
    DevTlbInvDescriptor,
    IotlbInvDescriptor,
    PasidDevTlbInvDescriptor,
    PasidIotlbInvDescriptor,
)
from hwmodel.descriptors import (
    IOTLB_G_DSI,
    IOTLB_G_PSI,
    PIOTLB_G_PASID,
    PIOTLB_G_PSI,
    InvDescriptor,
    dev_tlb_encode_range,
)

if TYPE_CHECKING:
    from hwmodel import IommuUnit
    from iopfd.core.intel.domain import DmarDomain

PAGE_SHIFT = 12
#: CAP.MAMV: the largest address mask a page-selective invalidation may carry; beyond
#: it the driver falls back to a domain- (or PASID-) selective one.
MAMV = 18
#: A device-TLB invalidation mask of 52 or more covers the whole address space.
DEVTLB_MASK_ALL = 52
RID_PASID = 0  # IOMMU_NO_PASID: what a request without PASID is tagged with


class TagType(enum.IntEnum):
    # The order is the flush order within a unit: IOTLBs before device TLBs (Table 28).
    IOTLB = 0
    NESTING_IOTLB = 1
    DEVTLB = 2
    NESTING_DEVTLB = 3


TagKey = tuple[int, int, int, int, int]  # (unit index, type, DID, PASID, SID or -1)


class CacheTag:
    __slots__ = ("did", "key", "pasid", "pfsid", "sid", "type", "unit", "users")

    def __init__(  # noqa: PLR0917
        self,
        key: TagKey,
        ttype: TagType,
        unit: IommuUnit,
        did: int,
        pasid: int | None,
        sid: int,
        pfsid: int,
    ) -> None:
        self.key = key
        self.type = ttype
        self.unit = unit
        self.did = did
        self.pasid = pasid
        self.sid = sid
        self.pfsid = pfsid
        self.users = 1

    def describe(self) -> dict[str, object]:
        return {
            "type": self.type.name,
            "iommu": self.unit.name,
            "did": self.did,
            "pasid": self.pasid,
            "sid": self.sid if self.sid >= 0 else None,
            "users": self.users,
        }


class CacheTagList:
    """The sorted, duplicate-collapsing tag list of one domain."""

    __slots__ = ("_by_key", "tags")

    def __init__(self) -> None:
        self.tags: list[CacheTag] = []
        self._by_key: dict[TagKey, CacheTag] = {}

    def assign(  # noqa: PLR0917
        self,
        ttype: TagType,
        unit: IommuUnit,
        unit_index: int,
        did: int,
        pasid: int | None,
        sid: int = -1,
        pfsid: int = 0,
    ) -> TagKey:
        """Add a tag or take one more user of an equal one; returns its key."""
        if ttype in (TagType.IOTLB, TagType.NESTING_IOTLB):
            sid = -1  # the IOTLB lives in the unit: devices sharing DID and PASID collapse
        key: TagKey = (unit_index, int(ttype), did, -1 if pasid is None else pasid, sid)
        tag = self._by_key.get(key)
        if tag is not None:
            tag.users += 1
            return key
        tag = CacheTag(key, ttype, unit, did, pasid, sid, pfsid)
        self._by_key[key] = tag
        bisect.insort(self.tags, tag, key=lambda t: t.key)
        return key

    def unassign(self, key: TagKey) -> None:
        tag = self._by_key[key]
        tag.users -= 1
        if tag.users == 0:
            del self._by_key[key]
            i = bisect.bisect_left(self.tags, key, key=lambda t: t.key)
            del self.tags[i]

    def __len__(self) -> int:
        return len(self.tags)


def psi_aligned(start: int, end: int) -> tuple[int, int]:
    """(addr, mask): one naturally aligned 2^mask-page block covering [start, end).

    As ``calculate_psi_aligned_address``: if the start is not aligned to the rounded-up
    size, widen the mask to the lowest bit where start and last page agree above it.
    """
    start_pfn = start >> PAGE_SHIFT
    last_pfn = (end - 1) >> PAGE_SHIFT
    pages = last_pfn - start_pfn + 1
    mask = (pages - 1).bit_length()
    if start_pfn & ((1 << mask) - 1):
        shared = ~(start_pfn ^ last_pfn) & ~((1 << mask) - 1)
        mask = (shared & -shared).bit_length() - 1
    return (start_pfn >> mask << mask) << PAGE_SHIFT, mask


class FlushPlan:
    """Invalidation descriptors of one flush, grouped per unit in tag order."""

    __slots__ = ("devtlb", "iotlb", "per_unit")

    def __init__(self) -> None:
        # unit name -> (unit, descriptors, seen); descriptors are frozen, so hashable.
        self.per_unit: dict[str, tuple[IommuUnit, list[InvDescriptor], set[InvDescriptor]]] = {}
        self.iotlb = 0
        self.devtlb = 0

    def _add(self, unit: IommuUnit, desc: InvDescriptor, is_iotlb: bool) -> None:
        entry = self.per_unit.get(unit.name)
        if entry is None:
            entry = (unit, [], set())
            self.per_unit[unit.name] = entry
        if desc in entry[2]:
            return  # e.g. two PASIDs of one second-stage DID: one DID flush covers both
        entry[2].add(desc)
        entry[1].append(desc)
        if is_iotlb:
            self.iotlb += 1
        else:
            self.devtlb += 1

    def add_domain_range(
        self, tags: CacheTagList, *, first_stage: bool, start: int | None, end: int | None
    ) -> None:
        """``cache_tag_flush_range`` (or ``_flush_all`` when start is None)."""
        if start is None or end is None:
            mask = 64
            addr = 0
        else:
            addr, mask = psi_aligned(start, end)
        for tag in tags.tags:
            ttype = tag.type
            if ttype is TagType.IOTLB and first_stage:
                pasid = RID_PASID if tag.pasid is None else tag.pasid
                if mask > MAMV:
                    desc: InvDescriptor = PasidIotlbInvDescriptor(
                        granularity=PIOTLB_G_PASID, did=tag.did, pasid=pasid
                    )
                else:
                    desc = PasidIotlbInvDescriptor(
                        granularity=PIOTLB_G_PSI, did=tag.did, pasid=pasid, addr=addr, am=mask
                    )
                self._add(tag.unit, desc, True)
            elif ttype is TagType.IOTLB or ttype is TagType.NESTING_IOTLB:
                if mask > MAMV:
                    desc = IotlbInvDescriptor(granularity=IOTLB_G_DSI, did=tag.did)
                else:
                    desc = IotlbInvDescriptor(
                        granularity=IOTLB_G_PSI, did=tag.did, addr=addr, am=mask
                    )
                self._add(tag.unit, desc, True)
            else:
                # NESTING_DEVTLB: an S2 change cannot be mapped to the nested
                # translations it affects, so the whole device TLB goes.
                whole = ttype is TagType.NESTING_DEVTLB or mask >= DEVTLB_MASK_ALL
                self._add(
                    tag.unit,
                    devtlb_descriptor(
                        tag.sid,
                        tag.pfsid,
                        tag.pasid,
                        0 if whole else addr,
                        DEVTLB_MASK_ALL if whole else mask,
                    ),
                    False,
                )


def assign_tags(  # noqa: PLR0917 - the tag's fields
    domain: DmarDomain,
    unit: IommuUnit,
    unit_index: int,
    did: int,
    pasid: int | None,
    sid: int,
    pfsid: int,
    *,
    ats: bool,
) -> list[tuple[CacheTagList, TagKey]]:
    """``cache_tag_assign_domain``: IOTLB (+ DEVTLB with ATS) on the domain; a nested
    domain also puts NESTING_* tags with its own DID on its parent (seed 002)."""
    tags = domain.tags
    keys = [(tags, tags.assign(TagType.IOTLB, unit, unit_index, did, pasid))]
    if ats:
        keys.append((tags, tags.assign(TagType.DEVTLB, unit, unit_index, did, pasid, sid, pfsid)))
    parent = domain.parent
    if parent is not None:
        ptags = parent.tags
        keys.append((ptags, ptags.assign(TagType.NESTING_IOTLB, unit, unit_index, did, pasid)))
        if ats:
            keys.append(
                (
                    ptags,
                    ptags.assign(TagType.NESTING_DEVTLB, unit, unit_index, did, pasid, sid, pfsid),
                )
            )
    return keys


def devtlb_descriptor(
    sid: int, pfsid: int, pasid: int | None, addr: int, mask: int
) -> InvDescriptor:
    """``qi_flush_dev_iotlb`` / ``qi_flush_dev_iotlb_pasid`` for 2^mask pages at addr."""
    enc_addr, s = dev_tlb_encode_range(addr, mask)
    if pasid is None:
        return DevTlbInvDescriptor(sid=sid, addr=enc_addr, s=s, pfsid=pfsid, qdep=0)
    return PasidDevTlbInvDescriptor(sid=sid, pasid=pasid, addr=enc_addr, s=s, pfsid=pfsid, qdep=0)
