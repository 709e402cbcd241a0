"""Hardware page tables (``drivers/iommu/iommufd/hw_pagetable.c``).

A paging HWPT translates through its IOAS's stage-2 table; with ``nest_parent`` it may
carry nested HWPTs, each with its own stage-1 table (the guest's) over the parent's
IOAS. Each HWPT owns one VT-d domain (``DmarDomain``): its per-unit domain IDs, its
cache-tag list and its count of pending groups.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from iopfd.core.intel.domain import DmarDomain
from iopfd.core.objects import IommufdObject

if TYPE_CHECKING:
    from iopfd.core.context import Context
    from iopfd.core.eventq import FaultQueue
    from iopfd.core.ioas import Ioas


class HwPagetable(IommufdObject):
    __slots__ = ("attached", "children", "domain", "fault", "ioas", "nest_parent", "parent",
                 "pasid_compat")

    def __init__(
        self,
        obj_id: int,
        ctx: Context,
        *,
        ioas: Ioas,
        parent: HwPagetable | None,
        nest_parent: bool,
        fault: FaultQueue | None,
        pasid_compat: bool = False,
    ) -> None:
        super().__init__(obj_id, ctx)
        #: Allocated with ``IOMMU_HWPT_ALLOC_PASID``: may be attached to a PASID.
        self.pasid_compat = pasid_compat
        self.ioas = ioas  # for a nested HWPT: the parent's IOAS
        self.parent = parent
        self.nest_parent = nest_parent
        self.fault = fault
        self.children: dict[int, HwPagetable] = {}  # nested HWPTs on a nest_parent
        self.attached = 0  # (device, pasid) attachments through this HWPT
        self.domain: DmarDomain = DmarDomain(
            ioas.table,
            nested=parent is not None,
            parent=parent.domain if parent is not None else None,
        )

    kind: ClassVar[str] = "hwpt"

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
            fault_id=self.fault.id if self.fault is not None else None,
            attached=self.attached,
            pending=self.domain.pending,
            dids=dict(sorted((u, d[0]) for u, d in self.domain.dids.items())),
        )
        return row
