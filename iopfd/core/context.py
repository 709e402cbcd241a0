"""One client's view (``struct iommufd_ctx``): its objects and the VMM operations.

Every method checks its arguments, raises ``CoreError`` with the errno of
docs/protocol.md, and is complete when it returns (a detach has drained, an unmap has
invalidated). Objects of another context are invisible: ``ENOENT``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, TypeVar

from hwmodel import Perm, Rid, perm_of
from iopfd.core import device as devops
from iopfd.core.device import IommufdDevice
from iopfd.core.errors import (
    EBUSY,
    EINVAL,
    ENODEV,
    ENOENT,
    ENOSPC,
    EOPNOTSUPP,
    CoreError,
)
from iopfd.core.eventq import FaultQueue
from iopfd.core.hw_pagetable import HwPagetable
from iopfd.core.intel.cache import FlushPlan
from iopfd.core.io_pgfault import auto_respond_attachment, flush_responses, respond
from iopfd.core.ioas import Ioas
from iopfd.core.objects import UINT32_MAX, IommufdObject

if TYPE_CHECKING:
    from iopfd.core.core import Core
    from iopfd.core.intel.iommu import DeviceInfo

PAGE_SIZE = 4096
UINT64_LIMIT = 1 << 64
HWPT_FLAGS = frozenset({"nest_parent", "pasid"})
_RW = int(Perm.READ | Perm.WRITE)
_ALL_PERMS = int(Perm.READ | Perm.WRITE | Perm.EXEC | Perm.PRIV)

_O = TypeVar("_O", bound=IommufdObject)


def _check_range(iova: int, length: int, what: str = "iova") -> None:
    if not isinstance(iova, int) or not isinstance(length, int):
        raise CoreError(EINVAL, f"{what} and length must be integers")
    if iova < 0 or iova % PAGE_SIZE:
        raise CoreError(EINVAL, f"{what} {iova:#x} is not 4 KiB aligned")
    if length <= 0 or length % PAGE_SIZE:
        raise CoreError(EINVAL, f"length {length:#x} is not a positive multiple of 4 KiB")
    if iova + length > UINT64_LIMIT:
        raise CoreError(EINVAL, "range exceeds the 64-bit address space")


def _check_perm(perm: int, allowed: int) -> Perm:
    if not isinstance(perm, int) or perm <= 0 or perm & ~allowed:
        raise CoreError(EINVAL, f"perm {perm!r} must be a non-zero subset of {allowed:#x}")
    return perm_of(perm)


class DmaTag:
    """What the core stores in a transfer's tag: the context and the caller's tag."""

    __slots__ = ("ctx", "tag")

    def __init__(self, ctx: Context, tag: object) -> None:
        self.ctx = ctx
        self.tag = tag


class Context:
    """One client connection's objects (every ID visible to it alone)."""

    def __init__(self, core: Core, ctx_id: int, label: str) -> None:
        self.core = core
        self.id = ctx_id
        self.label = label
        self.objects: dict[int, IommufdObject] = {}
        self.closed = False
        #: 4 KiB pages this context maps, in its IOASes and stage-1 tables.
        self.mapped_pages = 0

    def __repr__(self) -> str:
        return f"<Context {self.id} {self.label!r}>"

    # ------------------------------------------------------------------ lookups
    def _new_id(self) -> int:
        if self.closed:
            raise CoreError(EINVAL, "context is closed")
        if len(self.objects) >= self.core.limits.max_objects_per_context:
            raise CoreError(ENOSPC, "too many objects on this connection")
        return self.core.ids.alloc()

    def _get(self, obj_id: int, cls: type[_O], what: str) -> _O:
        obj = self.objects.get(obj_id) if isinstance(obj_id, int) else None
        if obj is None:
            raise CoreError(ENOENT, f"no object {obj_id!r}")
        if not isinstance(obj, cls):
            raise CoreError(EINVAL, f"object {obj_id} is not {what}")
        return obj

    def _device(self, dev_id: int) -> IommufdDevice:
        obj = self.objects.get(dev_id) if isinstance(dev_id, int) else None
        if not isinstance(obj, IommufdDevice):
            raise CoreError(ENOENT, f"no device {dev_id!r}")
        if obj.removed:
            raise CoreError(ENODEV, f"device {obj.info.name} was removed")
        return obj

    def _check_pasid(self, dev: DeviceInfo, pasid: int | None) -> None:
        if pasid is None:
            return
        if not isinstance(pasid, int) or pasid < 0 or pasid > UINT32_MAX:
            raise CoreError(EINVAL, f"pasid {pasid!r} out of range")
        if pasid == 0:
            raise CoreError(EINVAL, "PASID 0 is the RID's own translation (IOMMU_NO_PASID)")
        if dev.pasid_bits == 0:
            raise CoreError(EOPNOTSUPP, f"{dev.name} has no PASID capability")
        if pasid >> dev.pasid_bits:
            raise CoreError(EINVAL, f"pasid {pasid:#x} exceeds {dev.pasid_bits} bits")

    def _check_attach_pasid(self, dev: DeviceInfo, pasid: int | None) -> None:
        """A PASID for attach, replace or detach: v6.12's ``vfio_df_ioctl_attach_pt`` and
        ``vfio_df_ioctl_detach_pt`` take no flag, so PASID attach is ``EINVAL`` there."""
        if pasid is not None and not self.core.profile.pasid_attach:
            raise CoreError(EINVAL, f"kernel {self.core.profile.name} has no PASID attach "
                                    "(VFIO_DEVICE_ATTACH_PASID came with 6.15)")
        self._check_pasid(dev, pasid)

    # ------------------------------------------------------------------ devices
    def bind(self, rid: str, now: int) -> int:
        core = self.core
        try:
            name = str(Rid.parse(rid))
        except ValueError as e:
            raise CoreError(EINVAL, str(e)) from None
        dev = core.devices.get(name)
        if dev is None:
            raise CoreError(ENOENT, f"no device {name}")
        if dev.state == "removed" or core.removing(dev):
            raise CoreError(ENODEV, f"{name} was removed" if dev.state == "removed"
                            else f"{name} is being removed")
        if dev.state == "bound":
            raise CoreError(EBUSY, f"{name} is bound by another connection"
                            if dev.owner is not self else f"{name} is already bound here")
        obj_id = self._new_id()
        idev = IommufdDevice(obj_id, self, dev)
        self.objects[obj_id] = idev
        core.bind_device(dev, self, obj_id)
        return obj_id

    def device_removed(self, dev_id: int) -> None:
        """Hot removal dropped the binding: the ID stays, and says ``ENODEV``."""
        idev = self.objects.get(dev_id)
        if isinstance(idev, IommufdDevice):
            idev.removed = True

    def unbind(self, dev_id: int, now: int) -> None:
        obj = self.objects.get(dev_id) if isinstance(dev_id, int) else None
        if not isinstance(obj, IommufdDevice):
            raise CoreError(ENOENT, f"no device {dev_id!r}")
        self._unbind(obj, now, "unbind")

    def _unbind(self, idev: IommufdDevice, now: int, reason: str) -> None:
        if not idev.removed:
            dev = idev.info
            # As VFIO's release quiesces the device: its DMA stops first, so no retry of
            # this owner's can fault into the next owner's attachments; what it had
            # sent is settled by the detaches' drains.
            self.core.machine.stop_dma(dev.rid, now, with_vfs=False)
            for pasid in sorted(dev.attachments, key=lambda p: -1 if p is None else p,
                                reverse=True):
                devops.detach(self.core, dev, pasid, now, reason)
            self.core.unbind_device(dev)
        del self.objects[idev.id]

    # ------------------------------------------------------------------ IOAS
    def ioas_alloc(self) -> int:
        obj_id = self._new_id()
        self.objects[obj_id] = Ioas(obj_id, self)
        return obj_id

    def ioas_map(self, ioas_id: int, iova: int, length: int, perm: int, now: int) -> None:
        ioas = self._get(ioas_id, Ioas, "an IOAS")
        _check_range(iova, length)
        p = _check_perm(perm, _RW)
        self._check_map_length(length)
        table = ioas.table
        first = iova // PAGE_SIZE
        npages = length // PAGE_SIZE
        for page in range(first, first + npages):
            if table.lookup_page(page) is not None:
                raise CoreError(EBUSY, f"iova {page * PAGE_SIZE:#x} is already mapped")
        self._charge_pages(npages)
        # The IOAS maps iova to the same "host" address: the emulation has no memory.
        table.map(iova, iova, length, p)
        self.core.counters["ioas_maps"] += 1

    def ioas_unmap(self, ioas_id: int, iova: int, length: int, now: int) -> int:
        ioas = self._get(ioas_id, Ioas, "an IOAS")
        _check_range(iova, length)
        unmapped = ioas.table.unmap(iova, length)
        self.mapped_pages -= unmapped // PAGE_SIZE
        self.core.counters["ioas_unmaps"] += 1
        if unmapped:
            # Every domain using the IOAS, and through NESTING tags every nested DID
            # on a nesting parent among them (seed 002).
            plan = FlushPlan()
            for hwpt in ioas.hwpts.values():
                plan.add_domain_range(hwpt.domain.tags, first_stage=False, start=iova,
                                      end=iova + length)
            self.core.submit_flush(plan, "ioas_unmap", now)
        return unmapped

    # ------------------------------------------------------------------ fault queues
    def fault_alloc(self) -> int:
        obj_id = self._new_id()
        self.objects[obj_id] = FaultQueue(obj_id, self)
        return obj_id

    # ------------------------------------------------------------------ HWPTs
    def hwpt_alloc(self, dev_id: int, pt_id: int, flags: Sequence[str],
                   fault_id: int | None, data: Mapping[str, object] | None) -> int:
        """``iommufd_hwpt_alloc`` (``drivers/iommu/iommufd/hw_pagetable.c``), in its order:
        the device (``ENOENT``), ``pt_id`` of any kind (``EINVAL`` when it is not an
        object of this context), the per-kind flags (``EOPNOTSUPP``), then the fault
        queue (``ENOENT``)."""
        idev = self._device(dev_id)
        pt = self.objects.get(pt_id) if isinstance(pt_id, int) else None
        if pt is None:
            raise CoreError(EINVAL, f"pt_id {pt_id!r} is not an IOAS or HWPT of this "
                                    "connection")
        profile = self.core.profile
        for flag in flags:
            if flag not in HWPT_FLAGS or (flag == "pasid" and not profile.pasid_attach):
                raise CoreError(EOPNOTSUPP, f"hwpt flag {flag!r} is not supported")
        pasid_compat = "pasid" in flags
        unit_nest = idev.info.unit.spec.nest
        if isinstance(pt, Ioas):
            nest_parent = "nest_parent" in flags
            if data is not None:
                raise CoreError(EINVAL, "data is only for a nested HWPT")
            if fault_id is not None and not profile.paging_fault_hwpt:
                # v6.12's paging valid_flags lack IOMMU_HWPT_FAULT_ID_VALID.
                raise CoreError(EOPNOTSUPP, f"kernel {profile.name}: a paging HWPT cannot "
                                            "be fault-capable (use a nested HWPT)")
            if fault_id is not None and nest_parent:
                # iommufd_hwpt_paging_alloc: a nesting parent is never fault-capable.
                raise CoreError(EOPNOTSUPP, "a nest_parent HWPT cannot be fault-capable")
            if nest_parent and not unit_nest:
                raise CoreError(EOPNOTSUPP, f"{idev.info.unit.name} has no nested translation")
            fault = self._fault_queue(fault_id)
            obj_id = self._new_id()
            hwpt = HwPagetable(obj_id, self, ioas=pt, parent=None, nest_parent=nest_parent,
                               fault=fault, pasid_compat=pasid_compat)
            pt.users += 1
            pt.hwpts[obj_id] = hwpt
        elif isinstance(pt, HwPagetable):
            # ``iommufd_hwpt_nested_alloc``: FAULT_ID_VALID and (6.15+) PASID only, user
            # data required (both ``EOPNOTSUPP``), then the parent (``EINVAL``).
            if set(flags) - {"pasid"}:
                raise CoreError(EOPNOTSUPP, "a nested HWPT takes no flag but pasid")
            if data is None or "type" not in data:
                raise CoreError(EOPNOTSUPP, "a nested HWPT needs data = {'type': 'vtd_s1'}")
            if not pt.nest_parent:
                raise CoreError(EINVAL, f"HWPT {pt_id} was not allocated with nest_parent")
            if data["type"] != "vtd_s1":
                raise CoreError(EOPNOTSUPP, f"data type {data['type']!r} is not supported")
            if not unit_nest:
                raise CoreError(EOPNOTSUPP, f"{idev.info.unit.name} has no nested translation")
            fault = self._fault_queue(fault_id)
            obj_id = self._new_id()
            hwpt = HwPagetable(obj_id, self, ioas=pt.ioas, parent=pt, nest_parent=False,
                               fault=fault, pasid_compat=pasid_compat)
            pt.users += 1
            pt.children[obj_id] = hwpt
        else:
            raise CoreError(EINVAL, f"object {pt_id} is neither an IOAS nor a HWPT")
        if fault is not None:
            fault.users += 1
        self.objects[obj_id] = hwpt
        return obj_id

    def _fault_queue(self, fault_id: int | None) -> FaultQueue | None:
        """``iommufd_get_fault``: ``ENOENT`` unless ``fault_id`` is a fault queue here."""
        if fault_id is None:
            return None
        fq = self.objects.get(fault_id) if isinstance(fault_id, int) else None
        if not isinstance(fq, FaultQueue):
            raise CoreError(ENOENT, f"no fault queue {fault_id!r}")
        return fq

    def hwpt_s1_map(self, hwpt_id: int, iova: int, length: int, gpa: int, perm: int) -> None:
        hwpt = self._nested(hwpt_id)
        _check_range(iova, length)
        _check_range(gpa, length, "gpa")
        p = _check_perm(perm, _ALL_PERMS)
        self._check_map_length(length)
        s1 = hwpt.domain.s1
        assert s1 is not None
        first = iova // PAGE_SIZE
        # Entries are rewritten in place (a guest rewrites its page table); only new
        # ones are charged.
        self._charge_pages(sum(1 for page in range(first, first + length // PAGE_SIZE)
                               if s1.lookup_page(page) is None))
        s1.map(iova, gpa, length, p)

    def hwpt_s1_unmap(self, hwpt_id: int, iova: int, length: int) -> int:
        hwpt = self._nested(hwpt_id)
        _check_range(iova, length)
        assert hwpt.domain.s1 is not None
        unmapped = hwpt.domain.s1.unmap(iova, length)
        self.mapped_pages -= unmapped // PAGE_SIZE
        return unmapped

    def _check_map_length(self, length: int) -> None:
        limit = self.core.limits.max_map_length
        if length > limit:
            raise CoreError(EINVAL, f"length {length:#x} exceeds max_map_length ({limit:#x}): "
                                    "map in several calls")

    def _charge_pages(self, npages: int) -> None:
        limit = self.core.limits.max_mapped_pages_per_context
        if self.mapped_pages + npages > limit:
            raise CoreError(ENOSPC, f"mapping {npages} more pages would exceed "
                                    f"max_mapped_pages ({limit}) for this connection")
        self.mapped_pages += npages

    def hwpt_invalidate(self, hwpt_id: int, iova: int | None, length: int | None,
                        now: int) -> None:
        hwpt = self._nested(hwpt_id)
        if (iova is None) != (length is None):
            raise CoreError(EINVAL, "give both iova and length, or neither")
        plan = FlushPlan()
        if iova is None or length is None:
            plan.add_domain_range(hwpt.domain.tags, first_stage=True, start=None, end=None)
        else:
            _check_range(iova, length)
            plan.add_domain_range(hwpt.domain.tags, first_stage=True, start=iova,
                                  end=iova + length)
        self.core.submit_flush(plan, "hwpt_invalidate", now)

    def _nested(self, hwpt_id: int) -> HwPagetable:
        hwpt = self._get(hwpt_id, HwPagetable, "a HWPT")
        if not hwpt.is_nested:
            raise CoreError(EINVAL, f"HWPT {hwpt_id} is not a nested HWPT")
        return hwpt

    # ------------------------------------------------------------------ attach
    def _attach_target(self, dev_id: int, pt_id: int,
                       pasid: int | None) -> tuple[DeviceInfo, HwPagetable]:
        """``iommufd_device_change_pt`` up to the driver: the HWPT of any kind
        (``ENOENT``; an IOAS or another kind ``EINVAL``), then, as
        ``iommufd_hw_pagetable_attach`` checks them, PASID compatibility and the VF
        rule (``EINVAL``). PRI itself is checked when the attach enables IOPF
        (``ENODEV``, ``intel_iommu_enable_iopf``)."""
        idev = self._device(dev_id)
        dev = idev.info
        self._check_attach_pasid(dev, pasid)
        pt = self.objects.get(pt_id) if isinstance(pt_id, int) else None
        if pt is None:
            raise CoreError(ENOENT, f"no object {pt_id!r}")
        if isinstance(pt, Ioas):
            raise CoreError(EINVAL, "attach takes a HWPT; allocate a paging HWPT on the IOAS")
        if not isinstance(pt, HwPagetable):
            raise CoreError(EINVAL, f"object {pt_id} is not a HWPT")
        profile = self.core.profile
        if pt.fault is not None and dev.is_vf and (
                dev.pri_supported or not profile.vf_rule_pri_only):
            # PRI is shared by a PF and its VFs and nothing coordinates it: v6.12's
            # ``iommufd_fault_iopf_enable`` refuses any VF, v6.13+'s
            # ``iommufd_hwpt_compatible_device`` a VF that supports PRI.
            raise CoreError(EINVAL, f"{dev.name} is a VF: PRI is shared with its PF")
        if profile.pasid_attach:
            self._check_pasid_compat(dev, pt, pasid)
        if pt.fault is not None and not dev.unit.spec.pds and dev.pri_supported:
            # Without ECAP.PDS detach could not drain page requests (vtd-hw.md 4.2).
            raise CoreError(EOPNOTSUPP, f"{dev.unit.name} cannot drain page requests")
        if pt.is_nested and not dev.unit.spec.nest:
            raise CoreError(EOPNOTSUPP, f"{dev.unit.name} has no nested translation")
        return dev, pt

    @staticmethod
    def _check_pasid_compat(dev: DeviceInfo, hwpt: HwPagetable, pasid: int | None) -> None:
        """``iommufd_hwpt_pasid_compat`` (v6.15+): a PASID takes only a HWPT allocated with
        ``IOMMU_HWPT_ALLOC_PASID``, and then the RID must hold none without it; the RID
        takes a HWPT without it only while no PASID is attached."""
        if pasid is None:
            if not hwpt.pasid_compat and any(p is not None for p in dev.attachments):
                raise CoreError(EINVAL, "a PASID is attached: the RID's HWPT needs the "
                                        "pasid flag")
            return
        if not hwpt.pasid_compat:
            raise CoreError(EINVAL, f"HWPT {hwpt.id} was not allocated with the pasid flag")
        rid_att = dev.attachments.get(None)
        if rid_att is not None and not rid_att.hwpt.pasid_compat:
            raise CoreError(EINVAL, "the RID holds a HWPT without the pasid flag")

    def attach(self, dev_id: int, pt_id: int, pasid: int | None, now: int) -> None:
        """``VFIO_DEVICE_ATTACH_IOMMUFD_PT``: where something is attached it is a replace
        (``vfio_iommufd_physical_attach_ioas``)."""
        dev, hwpt = self._attach_target(dev_id, pt_id, pasid)
        if pasid in dev.attachments:
            devops.replace(self.core, dev, pasid, hwpt, now)
        else:
            devops.attach(self.core, dev, pasid, hwpt)

    def replace(self, dev_id: int, pt_id: int, pasid: int | None, now: int) -> None:
        dev, hwpt = self._attach_target(dev_id, pt_id, pasid)
        if pasid not in dev.attachments:
            raise CoreError(EINVAL, "nothing attached there to replace")
        devops.replace(self.core, dev, pasid, hwpt, now)

    def detach(self, dev_id: int, pasid: int | None, now: int) -> None:
        """``VFIO_DEVICE_DETACH_IOMMUFD_PT``: nothing attached there is not an error
        (``vfio_iommufd_physical_detach_ioas`` returns)."""
        dev = self._device(dev_id).info
        self._check_attach_pasid(dev, pasid)
        if pasid in dev.attachments:
            devops.detach(self.core, dev, pasid, now, "detach")

    def device_reset(self, dev_id: int, now: int) -> None:
        """``VFIO_DEVICE_RESET``: a function-level reset (``Core.flr``)."""
        self.core.flr(self._device(dev_id).info, now)

    # ------------------------------------------------------------------ responses
    def page_response(self, fault_id: int, responses: Sequence[tuple[int, int]],
                      now: int) -> int:
        """The fault fd's ``write()`` (``iommufd_fault_fops_write``): entries in order,
        stopping at the first whose code is not SUCCESS/INVALID or whose cookie is not
        pending here; what came before it stays applied. Returns how many were applied;
        ``EINVAL`` when the very first entry is bad."""
        fq = self.objects.get(fault_id) if isinstance(fault_id, int) else None
        if not isinstance(fq, FaultQueue):
            raise CoreError(ENOENT, f"no fault queue {fault_id!r}")
        core = self.core
        groups = fq.groups
        done = 0
        error = ""
        for cookie, code in responses:
            if code != 0 and code != 1:
                error = f"entry {done}: code {code!r} is neither SUCCESS (0) nor INVALID (1)"
                break
            group = groups.pop(cookie, None)  # seed 004 step 8: O(1), never a search
            if group is None:
                error = f"entry {done}: cookie {cookie!r} is not pending in fault queue " \
                        f"{fault_id}"
                break
            respond(core, fq.id, group, code, now)
            done += 1
        flush_responses(core)
        if error:
            core.counters["bad_responses"] += 1
            if done == 0:
                raise CoreError(EINVAL, error)
        return done

    # ------------------------------------------------------------------ DMA
    def dma(  # noqa: PLR0917 - the documented public API
        self, dev_id: int, pasid: int | None, iova: int, length: int, perm: int,
            now: int, tag: object) -> None:
        dev = self._device(dev_id).info
        self._check_pasid(dev, pasid)
        _check_range(iova, length)
        if length > self.core.limits.max_dma_length:
            raise CoreError(EINVAL, f"length {length:#x} exceeds max_dma_length "
                                    f"({self.core.limits.max_dma_length:#x})")
        p = _check_perm(perm, _ALL_PERMS)
        try:
            self.core.machine.start_dma(dev.rid, pasid, iova, length, p, now,
                                        tag=DmaTag(self, tag))
        except ValueError as e:  # e.g. PRIV alone: the device has nothing to do
            raise CoreError(EINVAL, str(e)) from None
        self.core.counters["dma_started"] += 1

    # ------------------------------------------------------------------ destroy
    def destroy(self, obj_id: int, now: int) -> None:
        obj = self.objects.get(obj_id) if isinstance(obj_id, int) else None
        if obj is None:
            raise CoreError(ENOENT, f"no object {obj_id!r}")
        if isinstance(obj, IommufdDevice):
            raise CoreError(EBUSY, "a bound device is released by unbind")
        if obj.users:
            raise CoreError(EBUSY, f"object {obj_id} is in use ({obj.users} users)")
        if isinstance(obj, HwPagetable) and obj.domain.pending:
            # Seed 004: a domain is freed only once its pending count is zero. Detach
            # answers its groups first, so this only guards the rule.
            raise CoreError(EBUSY, f"HWPT {obj_id} still has groups pending")
        self._destroy(obj, now)

    def _destroy(self, obj: IommufdObject, now: int) -> None:
        if isinstance(obj, Ioas):
            self.mapped_pages -= len(obj.table)
        elif isinstance(obj, HwPagetable) and obj.is_nested and obj.domain.s1 is not None:
            self.mapped_pages -= len(obj.domain.s1)
        if isinstance(obj, HwPagetable):
            if obj.parent is not None:
                obj.parent.users -= 1
                del obj.parent.children[obj.id]
            else:
                obj.ioas.users -= 1
                del obj.ioas.hwpts[obj.id]
            if obj.fault is not None:
                obj.fault.users -= 1
        elif isinstance(obj, FaultQueue) and obj.groups:
            # Unreachable while HWPTs reference it (EBUSY), kept as the kernel's destroy.
            for group in list(obj.groups.values()):
                auto_respond_attachment(self.core, group.attach, "fault_destroy", now)
        del self.objects[obj.id]

    def teardown(self, now: int) -> None:
        """Release everything, as closing ``/dev/iommu`` does; see ``Core.close_context``."""
        for idev in [o for o in self.objects.values() if isinstance(o, IommufdDevice)]:
            self._unbind(idev, now, "close")
        # Users before what they use: nested HWPTs, HWPTs, then fault queues and IOASes.
        for rank in (0, 1, 2):
            for obj in [o for o in self.objects.values() if _teardown_rank(o) == rank]:
                self._destroy(obj, now)
        self.closed = True


def _teardown_rank(obj: IommufdObject) -> int:
    if isinstance(obj, HwPagetable):
        return 0 if obj.is_nested else 1
    return 2
