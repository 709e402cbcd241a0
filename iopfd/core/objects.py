"""The iommufd object table (``drivers/iommu/iommufd/main.c``).

Every object has a daemon-wide uint32 ID that is never reused, an owning context,
and ``users``: the references other objects hold on it. ``destroy`` of an object
whose ``users`` is not zero is ``EBUSY``, as ``iommufd_object_remove`` refuses it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from iopfd.core.errors import ENOSPC, CoreError

if TYPE_CHECKING:
    from iopfd.core.context import Context

UINT32_MAX = 0xFFFF_FFFF


class IommufdObject:
    """Base of the object kinds: device, ioas, hwpt_paging, hwpt_nested, fault."""

    __slots__ = ("ctx", "id", "users")
    kind: ClassVar[str] = "object"

    def __init__(self, obj_id: int, ctx: Context) -> None:
        self.id = obj_id
        self.ctx = ctx
        self.users = 0

    def describe(self) -> dict[str, object]:
        """The row of the admin ``objects`` result."""
        return {"id": self.id, "type": self.type_name(), "client": self.ctx.label,
                "users": self.users}

    def type_name(self) -> str:
        return self.kind


class IdAllocator:
    """Hands out object IDs from 1 upward; an ID is never handed out twice."""

    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = 1

    def alloc(self) -> int:
        obj_id = self._next
        if obj_id > UINT32_MAX:
            raise CoreError(ENOSPC, "object IDs exhausted")
        self._next = obj_id + 1
        return obj_id
