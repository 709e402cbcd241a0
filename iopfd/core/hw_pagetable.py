"""Hardware page tables (``drivers/iommu/iommufd/hw_pagetable.c``).

A paging HWPT translates through its IOAS's stage-2 table; with ``nest_parent`` it may
carry nested HWPTs, each with its own stage-1 table (the guest's) over the parent's
IOAS. Each HWPT owns one driver domain (``DmarDomain``): its per-unit domain IDs, its
cache-tag list and its count of pending groups.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, ClassVar

from mypy_extensions import trait

from iopfd.core.errors import EINVAL, ENOENT, EOPNOTSUPP, CoreError
from iopfd.core.eventq import FaultQueue
from iopfd.core.ioas import ALL_PERMS, Ioas, IoasOps, check_perm
from iopfd.core.main import (
    PAGE_SIZE,
    ContextBase,
    IommufdObject,
    ObjectOps,
    check_range,
    register_object_ops,
)

if TYPE_CHECKING:
    from iopfd.core.intel.domain import DmarDomain

#: ``enum iommufd_hwpt_alloc_flags`` iopfd knows, by their wire names.
HWPT_FLAGS = frozenset({"nest_parent", "pasid"})


class HwPagetable(IommufdObject):
    __slots__ = (
        "attached",
        "auto_domain",
        "children",
        "domain",
        "fault",
        "ioas",
        "nest_parent",
        "parent",
        "pasid_compat",
    )
    kind: ClassVar[str] = "hwpt"

    def __init__(
        self,
        obj_id: int,
        ctx: ContextBase,
        *,
        ioas: Ioas,
        parent: HwPagetable | None,
        nest_parent: bool,
        fault: FaultQueue | None,
        pasid_compat: bool,
        domain: DmarDomain,
        auto_domain: bool = False,
    ) -> None:
        super().__init__(obj_id, ctx)
        self.ioas = ioas  # for a nested HWPT: the parent's IOAS
        self.parent = parent
        self.nest_parent = nest_parent
        self.fault = fault
        #: Allocated with ``IOMMU_HWPT_ALLOC_PASID``: may be attached to a PASID.
        self.pasid_compat = pasid_compat
        self.children: dict[int, HwPagetable] = {}  # nested HWPTs on a nest_parent
        self.attached = 0  # (device, pasid) attachments through this HWPT
        self.domain = domain
        #: Made by an attach to the IOAS (``iommufd_device_auto_get_domain``): it goes
        #: when its last attachment does.
        self.auto_domain = auto_domain

    def type_name(self) -> str:
        return "hwpt_nested" if self.parent is not None else "hwpt_paging"

    @property
    def is_nested(self) -> bool:
        return self.parent is not None

    def describe(self) -> dict[str, object]:
        row = super().describe()
        row.update(
            ioas_id=self.ioas.id,
            parent_id=self.parent.id if self.parent is not None else None,
            nest_parent=self.nest_parent,
            pasid=self.pasid_compat,
            auto_domain=self.auto_domain,
            fault_id=self.fault.id if self.fault is not None else None,
            attached=self.attached,
            pending=self.domain.pending,
            dids=dict(sorted((u, d[0]) for u, d in self.domain.dids.items())),
        )
        return row


def _refuse(obj: IommufdObject) -> str | None:
    assert isinstance(obj, HwPagetable)
    if obj.domain.pending:
        # Seed 004: a domain is freed only once its pending count is zero. Detach
        # answers its groups first, so this only guards the rule.
        return f"HWPT {obj.id} still has groups pending"
    return None


def _destroy(ctx: ContextBase, obj: IommufdObject, now: int) -> None:
    assert isinstance(obj, HwPagetable)
    if obj.parent is not None:
        if obj.domain.s1 is not None:
            ctx.uncharge_pages(len(obj.domain.s1))
        obj.parent.users -= 1
        del obj.parent.children[obj.id]
    else:
        obj.ioas.users -= 1
        del obj.ioas.hwpts[obj.id]
    if obj.fault is not None:
        obj.fault.users -= 1


def new_paging_hwpt(
    ctx: ContextBase,
    ioas: Ioas,
    *,
    nest_parent: bool = False,
    fault: FaultQueue | None = None,
    pasid_compat: bool = False,
    auto_domain: bool = False,
) -> HwPagetable:
    """``iommufd_hwpt_paging_alloc`` once its checks passed: a new paging HWPT on
    ``ioas``, charged and in the table (``ENOSPC`` at the object budgets)."""
    obj_id = ctx.new_id()
    hwpt = HwPagetable(
        obj_id,
        ctx,
        ioas=ioas,
        parent=None,
        nest_parent=nest_parent,
        fault=fault,
        pasid_compat=pasid_compat,
        domain=ctx.iommu.driver.domain_alloc(ioas.table, None),
        auto_domain=auto_domain,
    )
    ioas.hwpts[obj_id] = hwpt
    ioas.users += 1
    if fault is not None:
        fault.users += 1
    hwpt.domain.owner = ctx.account
    ctx.insert(hwpt)
    return hwpt


def put_hwpt(hwpt: HwPagetable, now: int) -> None:
    """``iommufd_hw_pagetable_put`` after a detach: an automatic domain whose last
    user went is destroyed (``iommufd_object_put_and_try_destroy``)."""
    hwpt.users -= 1
    hwpt.attached -= 1
    if hwpt.auto_domain and hwpt.users == 0:
        ctx = hwpt.ctx
        if ctx.objects.get(hwpt.id) is hwpt:
            _destroy(ctx, hwpt, now)
            ctx.remove(hwpt)


register_object_ops(
    HwPagetable,
    ObjectOps(
        destroy=_destroy,
        refuse=_refuse,
        teardown_rank=lambda o: 1 if isinstance(o, HwPagetable) and o.is_nested else 2,
    ),
)


@trait
class HwptOps(IoasOps):
    """The context's HWPT operations (``IOMMU_HWPT_ALLOC``, ``IOMMU_HWPT_INVALIDATE``,
    and the guest's stage-1 writes)."""

    def hwpt_alloc(
        self,
        dev_id: int,
        pt_id: int,
        flags: Sequence[str],
        fault_id: int | None,
        data: Mapping[str, object] | None,
    ) -> int:
        """``iommufd_hwpt_alloc``, in its order: the device (``ENOENT``), ``pt_id`` of any
        kind (``EINVAL`` when it is not an object of this context), the per-kind flags
        (``EOPNOTSUPP``), then the fault queue (``ENOENT``)."""
        idev = self.device(dev_id)
        pt = self.lookup(pt_id)
        if pt is None:
            raise CoreError(EINVAL, f"pt_id {pt_id!r} is not an IOAS or HWPT of this connection")
        profile = self.profile
        for flag in flags:
            if flag not in HWPT_FLAGS or (flag == "pasid" and not profile.pasid_attach):
                raise CoreError(EOPNOTSUPP, f"hwpt flag {flag!r} is not supported")
        pasid_compat = "pasid" in flags
        unit = idev.dev.info.unit
        driver = self.iommu.driver
        if isinstance(pt, Ioas):
            # iommufd_hwpt_paging_alloc
            nest_parent = "nest_parent" in flags
            if data is not None:
                raise CoreError(EINVAL, "data is only for a nested HWPT")
            if fault_id is not None and not profile.paging_fault_hwpt:
                # v6.12's paging valid_flags lack IOMMU_HWPT_FAULT_ID_VALID.
                raise CoreError(
                    EOPNOTSUPP,
                    f"kernel {profile.name}: a paging HWPT cannot "
                    "be fault-capable (use a nested HWPT)",
                )
            if fault_id is not None and nest_parent:
                raise CoreError(EOPNOTSUPP, "a nest_parent HWPT cannot be fault-capable")
            if nest_parent and not unit.spec.nest:
                raise CoreError(EOPNOTSUPP, f"{unit.name} has no nested translation")
            fault = self._fault_queue(fault_id)
            return new_paging_hwpt(
                self, pt, nest_parent=nest_parent, fault=fault, pasid_compat=pasid_compat
            ).id
        if isinstance(pt, HwPagetable):
            # iommufd_hwpt_nested_alloc: FAULT_ID_VALID and (6.15+) PASID only, user
            # data required (both EOPNOTSUPP), then the parent (EINVAL).
            if set(flags) - {"pasid"}:
                raise CoreError(EOPNOTSUPP, "a nested HWPT takes no flag but pasid")
            if data is None or "type" not in data:
                raise CoreError(EOPNOTSUPP, "a nested HWPT needs data = {'type': 'vtd_s1'}")
            if not pt.nest_parent:
                raise CoreError(EINVAL, f"HWPT {pt_id} was not allocated with nest_parent")
            if data["type"] != "vtd_s1":
                raise CoreError(EOPNOTSUPP, f"data type {data['type']!r} is not supported")
            if not unit.spec.nest:
                raise CoreError(EOPNOTSUPP, f"{unit.name} has no nested translation")
            fault = self._fault_queue(fault_id)
            obj_id = self.new_id()
            hwpt = HwPagetable(
                obj_id,
                self,
                ioas=pt.ioas,
                parent=pt,
                nest_parent=False,
                fault=fault,
                pasid_compat=pasid_compat,
                domain=driver.domain_alloc(pt.ioas.table, pt.domain),
            )
            pt.children[obj_id] = hwpt
        else:
            raise CoreError(EINVAL, f"object {pt_id} is neither an IOAS nor a HWPT")
        pt.users += 1
        if fault is not None:
            fault.users += 1
        hwpt.domain.owner = self.account
        self.insert(hwpt)
        return obj_id

    def _fault_queue(self, fault_id: int | None) -> FaultQueue | None:
        """``iommufd_get_fault``: ``ENOENT`` unless ``fault_id`` is a fault queue here."""
        if fault_id is None:
            return None
        fq = self.lookup(fault_id)
        if not isinstance(fq, FaultQueue):
            raise CoreError(ENOENT, f"no fault queue {fault_id!r}")
        return fq

    def _nested(self, hwpt_id: int) -> HwPagetable:
        hwpt = self.get(hwpt_id, HwPagetable, "a HWPT")
        if not hwpt.is_nested:
            raise CoreError(EINVAL, f"HWPT {hwpt_id} is not a nested HWPT")
        return hwpt

    def hwpt_s1_map(self, hwpt_id: int, iova: int, length: int, gpa: int, perm: int) -> None:
        """The guest writes its stage-1 page table: no invalidation implied."""
        hwpt = self._nested(hwpt_id)
        check_range(iova, length)
        check_range(gpa, length, "gpa")
        p = check_perm(perm, ALL_PERMS)
        self.check_map_length(length)
        s1 = hwpt.domain.s1
        assert s1 is not None
        first = iova // PAGE_SIZE
        # Entries are rewritten in place (a guest rewrites its page table); only new
        # ones are charged.
        self.charge_pages(
            sum(
                1
                for page in range(first, first + length // PAGE_SIZE)
                if s1.lookup_page(page) is None
            )
        )
        s1.map(iova, gpa, length, p)

    def hwpt_s1_unmap(self, hwpt_id: int, iova: int, length: int) -> int:
        """The guest clears stage-1 entries; at most ``max_map_length`` bytes a call, as
        a map, so one call costs a bounded time (the entries are not kept sorted)."""
        hwpt = self._nested(hwpt_id)
        check_range(iova, length)
        self.check_map_length(length)
        assert hwpt.domain.s1 is not None
        unmapped = hwpt.domain.s1.unmap(iova, length)
        self.uncharge_pages(unmapped // PAGE_SIZE)
        return unmapped

    def hwpt_invalidate(self, hwpt_id: int, iova: int | None, length: int | None, now: int) -> None:
        """``IOMMU_HWPT_INVALIDATE`` (VTD_S1): the nested domain's stage-1 entries in
        the IOTLB and its devices' ATCs."""
        hwpt = self._nested(hwpt_id)
        if (iova is None) != (length is None):
            raise CoreError(EINVAL, "give both iova and length, or neither")
        if iova is not None and length is not None:
            check_range(iova, length)
        self.iommu.driver.flush_iotlb_range(
            [hwpt.domain],
            first_stage=True,
            start=iova,
            end=None if iova is None or length is None else iova + length,
            reason="hwpt_invalidate",
            now=now,
        )


__all__ = ["HWPT_FLAGS", "HwPagetable", "HwptOps", "new_paging_hwpt", "put_hwpt"]
