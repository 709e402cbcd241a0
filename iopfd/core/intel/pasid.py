"""Scalable-mode PASID entries (``drivers/iommu/intel/pasid.c``).

``pasid=None`` is the RID's own entry (RID_PASID, requests without PASID).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hwmodel import (
    IotlbInvDescriptor,
    PasidCacheInvDescriptor,
    PasidEntry,
    PasidIotlbInvDescriptor,
    Pgtt,
)
from hwmodel.descriptors import IOTLB_G_DSI, PC_G_PASID, PIOTLB_G_PASID, InvDescriptor
from iopfd.core.intel.cache import DEVTLB_MASK_ALL, RID_PASID, devtlb_descriptor
from iopfd.core.intel.dmar import qi_submit_sync

if TYPE_CHECKING:
    from collections import Counter

    from hwmodel import IommuUnit
    from iopfd.core.intel.domain import DmarDomain
    from iopfd.core.intel.iommu import DeviceDomainInfo


def pasid_entry_for(domain: DmarDomain, did: int) -> PasidEntry:
    if domain.nested:
        return PasidEntry(present=True, did=did, pgtt=Pgtt.NESTED, s1=domain.s1, s2=domain.s2)
    return PasidEntry(present=True, did=did, pgtt=Pgtt.SECOND_STAGE, s1=None, s2=domain.s2)


def pasid_setup(unit: IommuUnit, sid: int, pasid: int | None, domain: DmarDomain, did: int) -> None:
    """Install a present entry (not-present -> present needs no flush without CM)."""
    unit.set_pasid_entry(sid, pasid, pasid_entry_for(domain, did))


def flush_descriptors(
    dev: DeviceDomainInfo, pasid: int | None, did: int, pgtt: Pgtt
) -> list[InvDescriptor]:
    """PASID cache, IOTLB, device TLB: Table 28's order for a present entry that changed."""
    p = RID_PASID if pasid is None else pasid
    descs: list[InvDescriptor] = [PasidCacheInvDescriptor(granularity=PC_G_PASID, did=did, pasid=p)]
    if pgtt in (Pgtt.SECOND_STAGE, Pgtt.NESTED):
        descs.append(IotlbInvDescriptor(granularity=IOTLB_G_DSI, did=did))
    else:
        descs.append(PasidIotlbInvDescriptor(granularity=PIOTLB_G_PASID, did=did, pasid=p))
    if dev.fn.ats_enabled:
        descs.append(devtlb_descriptor(dev.sid, dev.pfsid, pasid, 0, DEVTLB_MASK_ALL))
    return descs


def pasid_clear_present(
    dev: DeviceDomainInfo, pasid: int | None, did: int, pgtt: Pgtt, counters: Counter[str]
) -> None:
    """``intel_pasid_tear_down_entry`` up to the drain: clear P only (in-flight walks
    still see consistent fields), then PASID cache, IOTLB and device TLB."""
    dev.unit.clear_pasid_present(dev.sid, pasid)
    descs = flush_descriptors(dev, pasid, did, pgtt)
    qi_submit_sync(dev.unit, descs, counters)


def pasid_clear_entry(unit: IommuUnit, sid: int, pasid: int | None) -> None:
    """The whole entry goes (the fields were kept only for walks in flight)."""
    unit.set_pasid_entry(sid, pasid, None)


def pasid_replace(  # noqa: PLR0917
    dev: DeviceDomainInfo,
    pasid: int | None,
    domain: DmarDomain,
    did: int,
    old_did: int,
    old_pgtt: Pgtt,
    counters: Counter[str],
) -> None:
    """``intel_pasid_replace_*``: write the new entry in place, then flush the old DID."""
    dev.unit.set_pasid_entry(dev.sid, pasid, pasid_entry_for(domain, did))
    descs = flush_descriptors(dev, pasid, old_did, old_pgtt)
    qi_submit_sync(dev.unit, descs, counters)
