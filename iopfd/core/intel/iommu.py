"""The Intel VT-d driver (``drivers/iommu/intel/iommu.c``): per-unit and per-device
state, probe and release, PRI and the iopf reference, and the domain ops the generic
layers call (``set_dev_pasid``, replace, remove, ``page_response``, the IOTLB flush).

``UnitState.devices`` is the unit's ``device_rbtree``: the PRQ thread finds the device
of a request by one dict lookup on its source ID (seed 000), never by a search. A
device is in it while probed; hot removal takes it out only after PRI is off and its
page requests were drained, so no request can be reported against a released device.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hwmodel import InvDescriptor, PageTable, PciError, Pgtt
from hwmodel.descriptors import CC_G_DEVICE, ContextCacheInvDescriptor
from iopfd.core.errors import EBUSY, ENODEV, ENOSPC, CoreError
from iopfd.core.intel.cache import (
    DEVTLB_MASK_ALL,
    CacheTagList,
    FlushPlan,
    TagKey,
    assign_tags,
    devtlb_descriptor,
)
from iopfd.core.intel.dmar import (
    WAIT_FENCE,
    ResponseBatch,
    qi_submit_flush,
    qi_submit_sync,
)
from iopfd.core.intel.domain import DmarDomain, domain_attach_iommu, domain_detach_iommu
from iopfd.core.intel.pasid import (
    pasid_clear_entry,
    pasid_clear_present,
    pasid_replace,
    pasid_setup,
)
from iopfd.core.intel.prq import drain_pasid_prq, prq_event_thread

if TYPE_CHECKING:
    from collections import Counter

    from hwmodel import IommuUnit, Machine, PciFunction
    from iopfd.core.budgets import UidAccount
    from iopfd.core.events import EventSink
    from iopfd.core.io_pgfault import IopfQueue
    from iopfd.core.iommu import AttachHandle, Device
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
        self.devices: dict[int, Device] = {}  # sid -> probed device (device_rbtree)
        self._next_did = FIRST_DOMAIN_ID
        self._free_dids: list[int] = []

    def alloc_did(self, owner: UidAccount | None = None) -> int:
        """Lowest free DID from 2 (the kernel's IDA), charged to ``owner``'s uid
        (``ENOSPC`` past ``max_dids_per_uid`` on this unit)."""
        if self._free_dids:
            did = self._free_dids[0]
        else:
            did = self._next_did
            if did > MAX_DOMAIN_ID:
                raise CoreError(ENOSPC, f"{self.unit.name}: domain IDs exhausted")
        if owner is not None:
            owner.charge_did(self.unit.name)
        if self._free_dids:
            heapq.heappop(self._free_dids)
        else:
            self._next_did = did + 1
        return did

    def free_did(self, did: int, owner: UidAccount | None = None) -> None:
        heapq.heappush(self._free_dids, did)
        if owner is not None:
            owner.release_did(self.unit.name)

    def dids_in_use(self) -> int:
        return self._next_did - FIRST_DOMAIN_ID - len(self._free_dids)


class DeviceDomainInfo:
    """``struct device_domain_info``: what the driver keeps per device."""

    __slots__ = (
        "fn",
        "iopf_refcount",
        "pasid_bits",
        "pfsid",
        "pri_enabled",
        "sid",
        "unit",
        "ustate",
    )

    def __init__(self, fn: PciFunction, ustate: UnitState) -> None:
        self.fn = fn
        self.sid = fn.rid.sid
        self.pfsid = fn.pf.rid.sid if fn.pf is not None else self.sid
        self.ustate = ustate
        self.unit = ustate.unit
        self.iopf_refcount = 0  # fault-capable attachments (the iopf queue's users)
        self.pri_enabled = False  # ``info->pri_enabled``: the driver turned PRI on
        #: The PASID width both the function and its unit support (specs never change).
        self.pasid_bits = min(fn.spec.pasid_bits, self.unit.spec.pasid_bits)

    @property
    def pri_supported(self) -> bool:
        """``pri_supported``: ATS, the unit's ECAP.PRS and the PF's PRI capability."""
        pf_spec = self.fn.pf.spec if self.fn.pf is not None else self.fn.spec
        return bool(self.fn.spec.ats and pf_spec.pri and self.unit.spec.prs)


@dataclass(slots=True)
class DevPasid:
    """The driver's part of one attachment (``dev_pasid_info``): the domain's DID on the
    device's unit, the cache tags it assigned, and whether it holds an iopf reference."""

    did: int
    pgtt: Pgtt
    tag_keys: list[tuple[CacheTagList, TagKey]]
    iopf: bool


@dataclass
class FlushStats:
    """The invalidations one unmap (or hwpt_invalidate) issued."""

    reason: str = ""
    iotlb: int = 0
    devtlb: int = 0
    waits: int = 0
    units: int = 0
    per_unit: dict[str, int] = field(default_factory=dict)

    @property
    def descriptors(self) -> int:
        return self.iotlb + self.devtlb


class IntelIommu:
    """The driver instance over every VT-d unit of the machine."""

    def __init__(
        self,
        machine: Machine,
        profile: KernelProfile,
        iopf: IopfQueue,
        counters: Counter[str],
        sink: EventSink,
        *,
        hot: dict[str, int],
    ) -> None:
        self.machine = machine
        self.profile = profile
        self.iopf = iopf
        self.counters = counters
        self.hot = hot  # the per-fault counts, folded into ``counters`` (``Core.counters``)
        self.sink = sink
        self.units: dict[str, UnitState] = {
            name: UnitState(unit, i) for i, (name, unit) in enumerate(machine.iommus.items())
        }
        self.batch = ResponseBatch(counters, hot)
        self.last_flush = FlushStats()

    def response_batch(self) -> ResponseBatch:
        return self.batch

    # ------------------------------------------------------------------ probe
    def device_info(self, fn: PciFunction) -> DeviceDomainInfo:
        return DeviceDomainInfo(fn, self.units[fn.iommu.name])

    def probe_device(self, dev: Device) -> None:
        """``intel_iommu_probe_device``: the SM context entry present; ATS devices go
        into the RID table (only they can send page requests). Profile 6.18 ("iommu/vt-d:
        Move PRI enablement in probe path"): PASID, ATS and PRI are enabled here, in
        that order, and PRE is set whenever the function supports PRI, for the device's
        whole IOMMU lifetime. Profile 6.12: PRE and PRI wait for the first fault-capable
        attachment (``enable_iopf``)."""
        info = dev.info
        if dev.fn.spec.ats:
            info.ustate.devices[info.sid] = dev
        if self.profile.pri_at_probe:
            _enable_dev_features(dev.fn)
            if info.pri_supported:
                self._enable_pri(info)
        info.unit.set_context(info.sid, present=True, pre=info.pri_enabled)
        self.counters["devices_probed"] += 1

    def release_device(self, dev: Device) -> None:
        """``intel_iommu_release_device``: out of the RID table, context entry cleared."""
        info = dev.info
        info.ustate.devices.pop(info.sid, None)
        info.unit.set_context(info.sid, present=False, pre=False)
        info.pri_enabled = False

    def device_bound(self, dev: Device) -> None:
        """Before 6.15 PASID and ATS come on when a driver takes the device; from then
        on they were enabled at probe and this changes nothing."""
        _enable_dev_features(dev.fn)

    def _enable_pri(self, info: DeviceDomainInfo) -> None:
        """``iommu_enable_pci_pri``: ``pci_reset_pri`` then ``pci_enable_pri(PRQ_DEPTH)``
        on a PF; on a VF ``pci_enable_pri`` only checks that the PF's PRI is on. Raises
        ``PciError`` when the function refuses."""
        fn = info.fn
        if fn.pf is None:
            pri = fn.pri
            if not pri.enabled:
                pri.do_reset()
                pri.enable(PRQ_DEPTH)
        else:
            fn.enable_pri(PRQ_DEPTH)
        info.pri_enabled = True
        self.counters["pri_enables"] += 1

    def _context_flush(self, info: DeviceDomainInfo) -> None:
        qi_submit_sync(
            info.unit,
            (ContextCacheInvDescriptor(granularity=CC_G_DEVICE, sid=info.sid),),
            self.counters,
        )

    # ------------------------------------------------------------------ iopf
    def enable_iopf(self, dev: Device) -> None:
        """``intel_iommu_enable_iopf``, for each fault-capable attachment. The first
        adds the device to the unit's iopf queue; profile 6.12 also resets and enables
        PRI and sets PRE there (``iommu_dev_enable_feature(IOMMU_DEV_FEAT_IOPF)``).
        ``ENODEV`` when the function cannot issue page requests (6.18:
        ``!info->pri_enabled``; 6.12: ``!ats_enabled || !pri_supported``)."""
        info = dev.info
        if info.iopf_refcount == 0:
            if self.profile.pri_at_probe:
                if not info.pri_enabled:
                    raise CoreError(ENODEV, f"{dev.name}: PRI is not enabled")
            else:
                if not info.pri_supported or not info.fn.ats_enabled:
                    raise CoreError(ENODEV, f"{dev.name} cannot issue page requests (no PRI)")
                try:
                    self._enable_pri(info)
                except PciError as e:
                    raise CoreError(EBUSY, f"{dev.name}: cannot enable PRI: {e}") from None
                info.unit.set_context(info.sid, present=True, pre=True)
                self._context_flush(info)
        info.iopf_refcount += 1

    def disable_iopf(self, dev: Device) -> None:
        """``intel_iommu_disable_iopf``: the last fault-capable attachment is gone (and
        drained): ``iopf_queue_remove_device`` frees the device's partial requests.
        Profile 6.12 also clears PRE and disables PRI; 6.18 keeps PRI on."""
        info = dev.info
        info.iopf_refcount -= 1
        if info.iopf_refcount:
            return
        self.iopf.remove_device(dev)
        if not self.profile.pri_at_probe:
            if not dev.removed:
                info.unit.set_context(info.sid, present=True, pre=False)
                self._context_flush(info)
            if info.fn.pf is None:
                info.fn.pri.disable()
            info.pri_enabled = False
            self.counters["pri_disables"] += 1

    # ------------------------------------------------------------------ domains
    def domain_alloc(self, s2: PageTable, parent: DmarDomain | None) -> DmarDomain:
        """A paging domain over ``s2``, or a nested one (its own stage 1) on ``parent``."""
        return DmarDomain(s2, nested=parent is not None, parent=parent)

    def _get_did_and_iopf(self, dev: Device, domain: DmarDomain, fault_capable: bool) -> int:
        """The fallible steps, before anything shows: the domain's DID on the device's
        unit (``ENOSPC`` when exhausted) and, for a fault-capable domain, an iopf
        reference (``iopf_for_domain_set``, ``ENODEV`` without PRI); on failure
        neither is held."""
        did = domain_attach_iommu(domain, dev.info.ustate)
        if fault_capable:
            try:
                self.enable_iopf(dev)
            except CoreError:
                domain_detach_iommu(domain, dev.info.ustate)
                raise
        return did

    def set_dev_pasid(
        self, dev: Device, pasid: int | None, domain: DmarDomain, fault_capable: bool
    ) -> DevPasid:
        """``intel_iommu_set_dev_pasid`` (``intel_iommu_attach_device`` for the RID)."""
        info = dev.info
        did = self._get_did_and_iopf(dev, domain, fault_capable)
        keys = assign_tags(
            domain,
            info.unit,
            info.ustate.index,
            did,
            pasid,
            info.sid,
            info.pfsid,
            ats=info.fn.ats_enabled,
        )
        pasid_setup(info.unit, info.sid, pasid, domain, did)
        return DevPasid(did, _pgtt(domain), keys, fault_capable)

    def replace_dev_pasid(
        self,
        dev: Device,
        pasid: int | None,
        domain: DmarDomain,
        *,
        fault_capable: bool,
        old: AttachHandle,
        now: int,
    ) -> DevPasid:
        """``intel_pasid_replace_*``: the entry switches in place, the old DID's cached
        translations are flushed; requests posted before the switch reach the PRQ now
        and are reported at once, finding the new attachment as the kernel's lookup at
        report time does. Then the old attachment's DID, tags and iopf reference go."""
        info = dev.info
        did = self._get_did_and_iopf(dev, domain, fault_capable)
        keys = assign_tags(
            domain,
            info.unit,
            info.ustate.index,
            did,
            pasid,
            info.sid,
            info.pfsid,
            ats=info.fn.ats_enabled,
        )
        pasid_replace(info, pasid, domain, did, old.drv.did, old.drv.pgtt, self.counters)
        drain_pasid_prq(self, dev, pasid, old.drv.did, now)
        self._release(dev, old)
        return DevPasid(did, _pgtt(domain), keys, fault_capable)

    def remove_dev_pasid(self, dev: Device, pasid: int | None, old: AttachHandle, now: int) -> None:
        """``intel_pasid_tear_down_entry`` then the drain (vtd-hw.md 4.2): clear Present,
        invalidate PASID cache, IOTLB and device TLB, drain (every request the function
        had posted is reported, finding no attachment), clear the entry; then the DID,
        the tags and the iopf reference go (``iopf_for_domain_remove``)."""
        info = dev.info
        pasid_clear_present(info, pasid, old.drv.did, old.drv.pgtt, self.counters)
        pasid_clear_entry(info.unit, info.sid, pasid)
        drain_pasid_prq(self, dev, pasid, old.drv.did, now)
        self._release(dev, old)

    def _release(self, dev: Device, old: AttachHandle) -> None:
        drv = old.drv
        for tags, key in drv.tag_keys:
            tags.unassign(key)
        drv.tag_keys = []
        domain_detach_iommu(old.domain, dev.info.ustate)
        if drv.iopf:
            drv.iopf = False
            self.disable_iopf(dev)

    def hw_info(self, dev: Device) -> dict[str, object]:
        """``intel_iommu_hw_info`` for ``IOMMU_GET_HW_INFO``: the unit's CAP and ECAP
        registers as this emulation implements them (VT-d spec 11.4.2, 11.4.3)."""
        spec = dev.info.unit.spec
        cap = (
            6  # ND: 2^16 domain IDs
            | 1 << 10  # SAGAW: 4-level second-stage tables
            | 47 << 16  # MGAW: 48-bit guest addresses
            | 1 << 39  # PSI: page-selective invalidation
            | 18 << 48
        )  # MAMV (cache.MAMV)
        ecap = (
            1 << 1
            | 1 << 2  # QI, DT (device TLBs)
            | 1 << 6  # PT
            | (1 << 26 if spec.nest else 0)
            | (1 << 29 if spec.prs else 0)
            | ((spec.pasid_bits - 1) << 35 if spec.pasid_bits else 0)
        )
        ecap |= (
            (1 << 40 if spec.pasid_bits else 0)
            | 1 << 41  # DIT: the PF's SID in device-TLB invalidations
            | (1 << 42 if spec.pds else 0)
            | 1 << 43  # SMTS: scalable mode
            | 1 << 46
            | 1 << 47
        )  # SLTS, FLTS
        return {"type": "intel_vtd", "flags": 0, "cap_reg": cap, "ecap_reg": ecap}

    # ------------------------------------------------------------------ answers
    def page_response(  # noqa: PLR0917 - the response's fields
        self,
        dev: Device,
        pasid_valid: bool,
        pasid: int,
        grpid: int,
        code: int,
        last: bool = True,
    ) -> None:
        """``intel_iommu_page_response``: a page group response with the RID, PASID (PP
        as the request had it), PRGI and LPIG of the request it answers, on the unit's
        invalidation queue (batched while a ``response_batch`` is open)."""
        info = dev.info
        self.batch.add(info.unit, info.sid, pasid_valid, pasid, grpid, code, last)

    # ------------------------------------------------------------------ invalidation
    def flush_iotlb_range(
        self,
        domains: Iterable[DmarDomain],
        *,
        first_stage: bool,
        start: int | None,
        end: int | None,
        reason: str,
        now: int,
    ) -> None:
        """``cache_tag_flush_range`` (``_flush_all`` without a range) for each domain:
        per unit, its invalidations then one wait (``qi_submit_flush``)."""
        plan = FlushPlan()
        for domain in domains:
            plan.add_domain_range(domain.tags, first_stage=first_stage, start=start, end=end)
        stats = FlushStats(
            reason=reason, iotlb=plan.iotlb, devtlb=plan.devtlb, units=len(plan.per_unit)
        )
        for name, (unit, descs, _seen) in plan.per_unit.items():
            stats.waits += qi_submit_flush(unit, descs, self.counters)
            stats.per_unit[name] = len(descs)
        self.counters["flushes"] += 1
        self.last_flush = stats
        if self.sink.trace_enabled and stats.descriptors:
            self.sink.trace(
                "invalidation",
                reason=reason,
                iotlb=stats.iotlb,
                devtlb=stats.devtlb,
                waits=stats.waits,
                units=stats.units,
                t_ns=now,
            )

    # ------------------------------------------------------------------ interrupts
    def service(self, now: int, fired: Iterable[IommuUnit]) -> None:
        """The PRQ interrupt of every unit whose event fired."""
        units = self.units
        with self.batch:
            for unit in fired:
                prq_event_thread(self, units[unit.name], now)

    # ------------------------------------------------------------------ lifecycle
    def flr(self, dev: Device, now: int) -> None:
        """``VFIO_DEVICE_RESET`` (``pci_try_reset_function``): save the config space, FLR,
        restore it; ``pci_restore_ats_state`` and ``pci_restore_pri_state`` bring ATS and
        an enabled PRI back. The function forgets its outstanding page requests (PCIe
        terminal condition, SPEC 7.9: credits back, answers that match nothing are
        discarded) and a Response Failure is cleared. iommufd is not told: fault queues,
        pending groups and attachments stay as they are, and the groups stay answerable
        (``pci_dev_reset_iommu_prepare`` came after 6.18)."""
        if dev.removed:
            raise CoreError(ENODEV, f"{dev.name} was removed")
        fn = dev.fn
        pri_was_enabled = fn.pf is None and fn.pri.enabled
        self.machine.flr(dev.rid, now)
        # The function forgot the groups its set-aside requests belong to: the kernel
        # keeps them for the next group with that index, iopfd frees them.
        self.iopf.remove_device(dev)
        if pri_was_enabled:
            try:
                fn.pri.enable(PRQ_DEPTH)
            except PciError as e:  # pragma: no cover - the FLR left PRI disabled, stopped
                self.counters["pri_enable_errors"] += 1
                raise CoreError(EBUSY, f"{dev.name}: PRI not restored: {e}") from None
        self.counters["resets"] += 1
        if self.sink.trace_enabled:
            self.sink.trace("device", rid=dev.name, state=dev.state, reset=True, t_ns=now)

    def final_drain(self, dev: Device, now: int) -> None:
        """Fence the function against the PRQ once PRI is off: anything it had posted
        lands in the queue and is answered; then no partial of it survives."""
        info = dev.info
        if info.unit.spec.pds:
            descs: list[InvDescriptor] = [WAIT_FENCE]
            if dev.fn.ats_enabled:
                descs.append(devtlb_descriptor(info.sid, info.pfsid, None, 0, DEVTLB_MASK_ALL))
            qi_submit_sync(info.unit, descs, self.counters, drain=True)
            self.counters["drains"] += 1
        with self.batch:
            prq_event_thread(self, info.ustate, now)
        self.iopf.remove_device(dev)


def _enable_dev_features(fn: PciFunction) -> None:
    """PASID first, then ATS (PCIe leaves PASID-after-ATS undefined; vtd-hw.md 6.3)."""
    if fn.spec.pasid_bits and not fn.pasid_enabled:
        fn.enable_pasid()
    if fn.spec.ats and not fn.ats_enabled:
        fn.enable_ats()


def _pgtt(domain: DmarDomain) -> Pgtt:
    return Pgtt.NESTED if domain.nested else Pgtt.SECOND_STAGE


__all__ = [
    "FIRST_DOMAIN_ID",
    "MAX_DOMAIN_ID",
    "PRQ_DEPTH",
    "DevPasid",
    "DeviceDomainInfo",
    "FlushStats",
    "IntelIommu",
    "UnitState",
]
