"""Fault queues (``drivers/iommu/iommufd/eventq.c``, iommufd's FAULT object).

A fault queue holds the groups delivered to its client and not yet answered, keyed
by cookie: the answer finds its group in O(1) (seed 004 step 8). Unlike the kernel,
which reuses the lowest free cookie, cookies start at 1 and only grow, so a late
answer can never land on a newer group. At most ``max_pending`` groups are held;
beyond that the fault path answers SUCCESS at once and counts the group throttled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from iopfd.core.objects import IommufdObject

if TYPE_CHECKING:
    from iopfd.core.context import Context
    from iopfd.core.io_pgfault import IopfGroup


class FaultQueue(IommufdObject):
    __slots__ = ("delivered", "groups", "next_cookie", "throttled_total", "throttled_unreported")
    kind: ClassVar[str] = "fault"

    def __init__(self, obj_id: int, ctx: Context) -> None:
        super().__init__(obj_id, ctx)
        self.groups: dict[int, IopfGroup] = {}  # the kernel's ``response`` xarray
        self.next_cookie = 1
        self.throttled_unreported = 0  # carried by the next FaultDelivered as ``throttled``
        self.throttled_total = 0
        self.delivered = 0

    def take_cookie(self) -> int:
        cookie = self.next_cookie
        self.next_cookie = cookie + 1
        return cookie

    def describe(self) -> dict[str, object]:
        row = super().describe()
        row.update(
            pending=len(self.groups),
            next_cookie=self.next_cookie,
            delivered=self.delivered,
            throttled=self.throttled_total,
        )
        return row
