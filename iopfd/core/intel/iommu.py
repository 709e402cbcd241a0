"""Per-unit and per-device driver state (``drivers/iommu/intel/iommu.c``).

``UnitState.devices`` is the unit's ``device_rbtree``: the PRQ thread finds the device
of a request by one dict lookup on its source ID (seed 000), never by a search. A
device is in it while probed; hot removal takes it out only after PRI is off and its
page requests were drained, so no request can be reported against a released device.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING

from hwmodel import PciError
from hwmodel.descriptors import CC_G_DEVICE, ContextCacheInvDescriptor
from iopfd.core.errors import EBUSY, ENODEV, ENOSPC, CoreError
from iopfd.core.intel.dmar import qi_submit_sync

if TYPE_CHECKING:
    from collections import Counter

    from hwmodel import IommuUnit, PciFunction
    from iopfd.core.context import Context
    from iopfd.core.device import Attachment
    from iopfd.core.io_pgfault import Fault
    from iopfd.core.profile import KernelProfile

#: DID 0 is reserved (caching mode), 1 is FLPT_DEFAULT_DID; domains get 2 and up.
FIRST_DOMAIN_ID = 2
MAX_DOMAIN_ID = 0xFFFF
#: ``pci_enable_pri(pdev, PRQ_DEPTH)``: the outstanding-request allocation VT-d grants.
PRQ_DEPTH = 2048


class UnitState:
    """What the driver keeps per VT-d unit: the RID table and the DID allocator."""

    __slots__ = ("_free_dids", "_next_did", "devices", "index", "unit")

    def __init__(self, unit: IommuUnit, index: int) -> None:
        self.unit = unit
        self.index = index
        self.devices: dict[int, DeviceInfo] = {}  # sid -> probed device (device_rbtree)
        self._next_did = FIRST_DOMAIN_ID
        self._free_dids: list[int] = []

    def alloc_did(self) -> int:
        """Lowest free DID from 2 (the kernel's IDA)."""
        if self._free_dids:
            return heapq.heappop(self._free_dids)
        did = self._next_did
        if did > MAX_DOMAIN_ID:
            raise CoreError(ENOSPC, f"{self.unit.name}: domain IDs exhausted")
        self._next_did = did + 1
        return did

    def free_did(self, did: int) -> None:
        heapq.heappush(self._free_dids, did)

    def dids_in_use(self) -> int:
        return self._next_did - FIRST_DOMAIN_ID - len(self._free_dids)


class DeviceInfo:
    """``struct device_domain_info`` plus the io-pgfault per-device fault state."""

    __slots__ = (
        "attachments",
        "dev_id",
        "fn",
        "iopf_refcount",
        "n_partials",
        "name",
        "owner",
        "partials",
        "pfsid",
        "pri_enabled",
        "rid",
        "sid",
        "state",
        "unit",
        "ustate",
    )

    def __init__(self, fn: PciFunction, ustate: UnitState) -> None:
        self.fn = fn
        self.rid = fn.rid
        self.name = str(fn.rid)
        self.sid = fn.rid.sid
        self.pfsid = fn.pf.rid.sid if fn.pf is not None else self.sid
        self.ustate = ustate
        self.unit = ustate.unit
        self.state = "free"            # free | bound | removed
        self.owner: Context | None = None
        self.dev_id = 0
        # The (device, PASID) attachment table the fault path reads (seed 003): a dict,
        # written only by attach/replace/detach, read by the fault path without a lock.
        self.attachments: dict[int | None, Attachment] = {}
        self.iopf_refcount = 0         # fault-capable attachments (the iopf queue's users)
        self.pri_enabled = False       # ``info->pri_enabled``: the driver turned PRI on
        self.partials: dict[int, list[Fault]] = {}  # grpid -> non-last requests, arrival order
        self.n_partials = 0

    @property
    def is_vf(self) -> bool:
        return self.fn.pf is not None

    @property
    def pri_supported(self) -> bool:
        """``pri_supported``: ATS, the unit's ECAP.PRS and the PF's PRI capability."""
        pf_spec = self.fn.pf.spec if self.fn.pf is not None else self.fn.spec
        return bool(self.fn.spec.ats and pf_spec.pri and self.unit.spec.prs)

    @property
    def pasid_bits(self) -> int:
        return min(self.fn.spec.pasid_bits, self.unit.spec.pasid_bits)


def probe(dev: DeviceInfo, profile: KernelProfile, counters: Counter[str]) -> None:
    """``intel_iommu_probe_device``: the SM context entry present; ATS devices go into
    the RID table (only they can send page requests). Profile 6.18 ("iommu/vt-d: Move
    PRI enablement in probe path"): PASID, ATS and PRI are enabled here, in that
    order, and PRE is set whenever the function supports PRI, for the device's whole
    IOMMU lifetime. Profile 6.12: PRE and PRI wait for the first fault-capable
    attachment (``enable_iopf``)."""
    if dev.fn.spec.ats:
        dev.ustate.devices[dev.sid] = dev
    if profile.pri_at_probe:
        enable_dev_features(dev)
        if dev.pri_supported:
            _enable_pri(dev, counters)
    dev.unit.set_context(dev.sid, present=True, pre=dev.pri_enabled)
    counters["devices_probed"] += 1


def release(dev: DeviceInfo) -> None:
    """``intel_iommu_release_device``: out of the RID table, context entry cleared."""
    dev.ustate.devices.pop(dev.sid, None)
    dev.unit.set_context(dev.sid, present=False, pre=False)
    dev.pri_enabled = False


def enable_dev_features(dev: DeviceInfo) -> None:
    """PASID first, then ATS (PCIe leaves PASID-after-ATS undefined; vtd-hw.md 6.3)."""
    fn = dev.fn
    if fn.spec.pasid_bits and not fn.pasid_enabled:
        fn.enable_pasid()
    if fn.spec.ats and not fn.ats_enabled:
        fn.enable_ats()


def _enable_pri(dev: DeviceInfo, counters: Counter[str]) -> None:
    """``iommu_enable_pci_pri``: ``pci_reset_pri`` then ``pci_enable_pri(PRQ_DEPTH)`` on a
    PF; on a VF ``pci_enable_pri`` only checks that the PF's PRI is on. Raises
    ``PriError`` when the function refuses."""
    fn = dev.fn
    if fn.pf is None:
        pri = fn.pri
        if not pri.enabled:
            pri.do_reset()
            pri.enable(PRQ_DEPTH)
    else:
        fn.enable_pri(PRQ_DEPTH)
    dev.pri_enabled = True
    counters["pri_enables"] += 1


def _context_flush(dev: DeviceInfo, counters: Counter[str]) -> None:
    qi_submit_sync(dev.unit, (ContextCacheInvDescriptor(granularity=CC_G_DEVICE,
                                                        sid=dev.sid),), counters)


def enable_iopf(dev: DeviceInfo, profile: KernelProfile, counters: Counter[str]) -> None:
    """``intel_iommu_enable_iopf``, for each fault-capable attachment. The first adds the
    device to the unit's iopf queue; profile 6.12 also resets and enables PRI and sets
    PRE there (``iommu_dev_enable_feature(IOMMU_DEV_FEAT_IOPF)``). ``ENODEV`` when the
    function cannot issue page requests (``!info->pri_enabled`` / ``!pri_supported``)."""
    if dev.iopf_refcount == 0:
        if profile.pri_at_probe:
            if not dev.pri_enabled:
                raise CoreError(ENODEV, f"{dev.name}: PRI is not enabled")
        else:
            if not dev.pri_supported or not dev.fn.ats_enabled:
                raise CoreError(ENODEV, f"{dev.name} cannot issue page requests (no PRI)")
            try:
                _enable_pri(dev, counters)
            except PciError as e:
                raise CoreError(EBUSY, f"{dev.name}: cannot enable PRI: {e}") from None
            dev.unit.set_context(dev.sid, present=True, pre=True)
            _context_flush(dev, counters)
    dev.iopf_refcount += 1


def disable_iopf(dev: DeviceInfo, profile: KernelProfile, counters: Counter[str]) -> bool:
    """``intel_iommu_disable_iopf``: the last fault-capable attachment is gone (and
    drained). ``iopf_queue_remove_device`` follows, which frees the device's partial
    requests: the caller does that when this returns True. Profile 6.12 also clears
    PRE and disables PRI; 6.18 keeps PRI on."""
    dev.iopf_refcount -= 1
    if dev.iopf_refcount:
        return False
    if not profile.pri_at_probe:
        if dev.state != "removed":
            dev.unit.set_context(dev.sid, present=True, pre=False)
            _context_flush(dev, counters)
        if dev.fn.pf is None:
            dev.fn.pri.disable()
        dev.pri_enabled = False
        counters["pri_disables"] += 1
    return True
