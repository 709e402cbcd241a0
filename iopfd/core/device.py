"""Bound devices and their attachments (``drivers/iommu/iommufd/device.c`` with the
intel driver's ``set_dev_pasid``/``blocking_domain`` work underneath).

Attach publishes the (device, PASID) attachment last, after PRI, the domain ID, the
cache tags and the PASID entry are in place: the fault path either finds nothing or a
fully formed attachment (seed 003). Detach undoes it in the kernel's order:

1. remove the attachment from the lookup table (the fault path can no longer find it);
2. clear the PASID entry's Present bit; invalidate PASID cache, IOTLB, device TLB;
   clear the whole entry (``intel_pasid_tear_down_entry``);
3. drain (vtd-hw.md 4.2): every request the function had posted reaches the PRQ and is
   reported, finding no attachment, so it is answered INVALID (seed 001);
4. discard that PASID's partial requests;
5. auto-respond INVALID the groups the old attachment still has pending;
6. drop the cache tags and the domain ID, the PRI reference, the HWPT reference.

When it returns no request of that (device, PASID) is in flight and no translation
through the old HWPT is cached anywhere.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from hwmodel import Pgtt
from iopfd.core.errors import CoreError
from iopfd.core.intel.cache import TagKey, TagType
from iopfd.core.intel.iommu import disable_iopf, enable_iopf
from iopfd.core.intel.pasid import (
    pasid_clear_entry,
    pasid_clear_present,
    pasid_replace,
    pasid_setup,
)
from iopfd.core.intel.prq import drain_pasid_prq
from iopfd.core.io_pgfault import auto_respond_attachment, discard_partials
from iopfd.core.objects import IommufdObject

if TYPE_CHECKING:
    from iopfd.core.context import Context
    from iopfd.core.core import Core
    from iopfd.core.eventq import FaultQueue
    from iopfd.core.hw_pagetable import HwPagetable
    from iopfd.core.intel.cache import CacheTagList
    from iopfd.core.intel.domain import DmarDomain
    from iopfd.core.intel.iommu import DeviceInfo
    from iopfd.core.io_pgfault import IopfGroup


class IommufdDevice(IommufdObject):
    """A device bound to a context (``struct iommufd_device``)."""

    __slots__ = ("info", "removed")
    kind: ClassVar[str] = "device"

    def __init__(self, obj_id: int, ctx: Context, info: DeviceInfo) -> None:
        super().__init__(obj_id, ctx)
        self.info = info
        self.removed = False  # hot-removed: the ID stays, every use is ENODEV

    def describe(self) -> dict[str, object]:
        row = super().describe()
        row.update(rid=self.info.name, removed=self.removed,
                   attached={("rid" if p is None else str(p)): a.hwpt.id
                             for p, a in sorted(self.info.attachments.items(),
                                                key=lambda kv: -1 if kv[0] is None else kv[0])})
        return row


class Attachment:
    """One (device, PASID) -> HWPT attachment: the kernel's attach handle."""

    __slots__ = ("dev", "did", "domain", "fault", "groups", "hwpt", "pasid", "tag_keys")

    def __init__(self, dev: DeviceInfo, pasid: int | None, hwpt: HwPagetable, did: int,
                 tag_keys: list[tuple[CacheTagList, TagKey]]) -> None:
        self.dev = dev
        self.pasid = pasid
        self.hwpt = hwpt
        self.domain: DmarDomain = hwpt.domain
        self.fault: FaultQueue | None = hwpt.fault
        self.did = did
        self.tag_keys = tag_keys
        self.groups: dict[int, IopfGroup] = {}  # cookie -> pending group of this attachment

    @property
    def pgtt(self) -> Pgtt:
        return Pgtt.NESTED if self.domain.nested else Pgtt.SECOND_STAGE


def _domain_get_did(domain: DmarDomain, dev: DeviceInfo) -> int:
    """``domain_attach_iommu``: the domain's DID on this unit, allocated on first use."""
    entry = domain.dids.get(dev.unit.name)
    if entry is None:
        did = dev.ustate.alloc_did()
        domain.dids[dev.unit.name] = [did, 1]
        return did
    entry[1] += 1
    return entry[0]


def _domain_put_did(domain: DmarDomain, dev: DeviceInfo) -> None:
    entry = domain.dids[dev.unit.name]
    entry[1] -= 1
    if entry[1] == 0:
        del domain.dids[dev.unit.name]
        dev.ustate.free_did(entry[0])


def _assign_tags(domain: DmarDomain, dev: DeviceInfo, did: int,
                 pasid: int | None) -> list[tuple[CacheTagList, TagKey]]:
    """``cache_tag_assign_domain``: IOTLB (+ DEVTLB with ATS) on the domain; a nested
    domain also puts NESTING_* tags with its own DID on its parent (seed 002)."""
    unit, idx = dev.unit, dev.ustate.index
    ats = dev.fn.ats_enabled
    keys = [(domain.tags, domain.tags.assign(TagType.IOTLB, unit, idx, did, pasid))]
    if ats:
        keys.append((domain.tags, domain.tags.assign(TagType.DEVTLB, unit, idx, did, pasid,
                                                     dev.sid, dev.pfsid)))
    parent = domain.parent
    if parent is not None:
        keys.append((parent.tags, parent.tags.assign(TagType.NESTING_IOTLB, unit, idx, did,
                                                     pasid)))
        if ats:
            keys.append((parent.tags, parent.tags.assign(TagType.NESTING_DEVTLB, unit, idx,
                                                         did, pasid, dev.sid, dev.pfsid)))
    return keys


def _unassign_tags(att: Attachment) -> None:
    for tags, key in att.tag_keys:
        tags.unassign(key)
    att.tag_keys = []


def _get_iopf(core: Core, dev: DeviceInfo, hwpt: HwPagetable) -> None:
    if hwpt.fault is not None:
        enable_iopf(dev, core.profile, core.counters)  # ENODEV without PRI


def _get_did_and_iopf(core: Core, dev: DeviceInfo, hwpt: HwPagetable) -> int:
    """The domain's DID on the device's unit and, for a fault-capable HWPT, a PRI
    reference; either can fail (DIDs exhausted: ENOSPC; no PRI: ENODEV) and then neither
    is held."""
    did = _domain_get_did(hwpt.domain, dev)
    try:
        _get_iopf(core, dev, hwpt)
    except CoreError:
        _domain_put_did(hwpt.domain, dev)
        raise
    return did


def attach(core: Core, dev: DeviceInfo, pasid: int | None, hwpt: HwPagetable) -> Attachment:
    """Attach (checks done by the caller). The attachment becomes visible last."""
    domain = hwpt.domain
    did = _get_did_and_iopf(core, dev, hwpt)  # the fallible steps, before anything shows
    keys = _assign_tags(domain, dev, did, pasid)
    pasid_setup(dev, pasid, domain, did)
    att = Attachment(dev, pasid, hwpt, did, keys)
    dev.attachments[pasid] = att  # published: the fault path may find it from now on
    hwpt.users += 1
    hwpt.attached += 1
    core.counters["attaches"] += 1
    return att


def _release(core: Core, att: Attachment) -> None:
    """Step 6 of detach: tags, DID, PRI reference, HWPT reference."""
    dev = att.dev
    _unassign_tags(att)
    _domain_put_did(att.domain, dev)
    if att.fault is not None and disable_iopf(dev, core.profile, core.counters):
        # ``iopf_queue_remove_device``: the last fault-capable attachment went, so
        # every request the device had set aside goes (PROTOCOL.md v2 item 5).
        discard_partials(core, dev, all_pasids=True)
    att.hwpt.users -= 1
    att.hwpt.attached -= 1


def detach(core: Core, dev: DeviceInfo, pasid: int | None, now: int, reason: str) -> None:
    att = dev.attachments.pop(pasid)                                   # 1
    pasid_clear_present(dev, pasid, att.did, att.pgtt, core.counters)  # 2
    pasid_clear_entry(dev, pasid)
    drain_pasid_prq(core, dev, pasid, att.did, now)                    # 3
    discard_partials(core, dev, pasid)                                 # 4
    auto_respond_attachment(core, att, reason, now)                    # 5
    _release(core, att)                                                # 6
    core.counters["detaches"] += 1


def replace(core: Core, dev: DeviceInfo, pasid: int | None, hwpt: HwPagetable,
            now: int) -> None:
    """Switch (device, PASID) to ``hwpt``; on failure the old attachment stays whole."""
    old = dev.attachments[pasid]
    if old.hwpt is hwpt:
        return
    domain = hwpt.domain
    did = _get_did_and_iopf(core, dev, hwpt)  # the fallible steps: before anything changes
    keys = _assign_tags(domain, dev, did, pasid)
    att = Attachment(dev, pasid, hwpt, did, keys)
    # The entry switches in place; the old DID's cached translations are flushed.
    pasid_replace(dev, pasid, domain, did, old.did, old.pgtt, core.counters)
    dev.attachments[pasid] = att
    hwpt.users += 1
    hwpt.attached += 1
    # Requests posted before the switch reach the PRQ now and are reported at once:
    # they find the new attachment, as the kernel's lookup at report time does.
    drain_pasid_prq(core, dev, pasid, old.did, now)
    # The OLD attachment's pending groups, on the OLD fault queue (kernel-iopf.md 7.5).
    auto_respond_attachment(core, old, "replace", now)
    _release(core, old)
    core.counters["replaces"] += 1
