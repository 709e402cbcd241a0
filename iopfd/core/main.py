"""The iommufd object table (``drivers/iommu/iommufd/main.c``).

Every object has a daemon-wide uint32 ID that is never reused, an owning context,
and ``users``: the references other objects hold on it. ``destroy`` of an object
whose ``users`` is not zero is ``EBUSY``, as ``iommufd_object_remove`` refuses it;
otherwise it goes to its kind's ``destroy``, registered by the kind's module in
``OBJECT_OPS`` as the kernel's ``iommufd_object_ops[]`` table does.

``ContextBase`` is ``struct iommufd_ctx``: one client's objects and the narrow set of
collaborators its operations touch (the IOMMU core, the ID allocator, the limits,
the counters and the event sink), never the whole ``Core``. The operations
themselves live in the module of the object kind they act on (``ioas.py``,
``hw_pagetable.py``, ``eventq.py``, ``device.py``); ``context.py`` puts them together.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, TypeVar

from mypy_extensions import trait

from iopfd.core.errors import EBUSY, EINVAL, ENODEV, ENOENT, ENOSPC, CoreError

if TYPE_CHECKING:
    from collections import Counter

    from hwmodel import Machine
    from iopfd.core.budgets import Budgets, UidAccount
    from iopfd.core.device import IommufdDevice
    from iopfd.core.errors import CoreLimits
    from iopfd.core.eventq import ResponseDeadlines
    from iopfd.core.events import EventSink
    from iopfd.core.iommu import IommuCore
    from iopfd.core.profile import KernelProfile

UINT32_MAX = 0xFFFF_FFFF
PAGE_SIZE = 4096
UINT64_LIMIT = 1 << 64


class IommufdObject:
    """Base of the object kinds: device, ioas, hwpt_paging, hwpt_nested, fault."""

    __slots__ = ("ctx", "id", "users")
    kind: ClassVar[str] = "object"

    def __init__(self, obj_id: int, ctx: ContextBase) -> None:
        self.id = obj_id
        self.ctx = ctx
        self.users = 0

    def describe(self) -> dict[str, object]:
        """The row of the admin ``objects`` result."""
        return {
            "id": self.id,
            "type": self.type_name(),
            "client": self.ctx.label,
            "users": self.users,
        }

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


@dataclass(frozen=True, slots=True)
class ObjectOps:
    """``struct iommufd_object_ops``: what the table does with one kind of object."""

    #: Release the object's references and resources; it is out of the table after.
    destroy: Callable[[ContextBase, IommufdObject, int], None]
    #: Teardown order at context close: users before what they use (lower first).
    teardown_rank: Callable[[IommufdObject], int]
    #: Refuse a ``destroy`` the client may not do (e.g. a bound device): an errno
    #: message, or ``None`` when ``users == 0`` is all that is needed.
    refuse: Callable[[IommufdObject], str | None] = lambda obj: None
    #: ``destroy`` in steps, for a teardown the daemon slices (a device with thousands
    #: of PASID attachments): each step leaves the object consistent, and the last
    #: step has done all ``destroy`` does. ``None``: ``destroy`` is one step.
    destroy_steps: Callable[[ContextBase, IommufdObject, int], Iterator[None]] | None = None


#: ``iommufd_object_ops[]``: filled by each kind's module, keyed by its class.
OBJECT_OPS: dict[type[IommufdObject], ObjectOps] = {}

_O = TypeVar("_O", bound=IommufdObject)


def register_object_ops(cls: type[IommufdObject], ops: ObjectOps) -> None:
    OBJECT_OPS[cls] = ops


@dataclass(slots=True)
class CoreServices:
    """What a context's operations may touch besides its own objects."""

    iommu: IommuCore
    machine: Machine
    ids: IdAllocator
    limits: CoreLimits
    profile: KernelProfile
    counters: Counter[str]
    #: The per-fault counts, folded into ``counters`` on read (``Core.counters``).
    hot: dict[str, int]
    sink: EventSink
    budgets: Budgets
    deadlines: ResponseDeadlines


# A trait, as are the *Ops classes: mypyc (make accel) compiles Context's several bases
# only as traits. Plain Python ignores the decorator.
@trait
class ContextBase:
    """``struct iommufd_ctx``: one client's objects, every ID visible to it alone."""

    def __init__(
        self, services: CoreServices, ctx_id: int, label: str, uid: int | None = None
    ) -> None:
        self.services = services
        self.iommu = services.iommu
        self.limits = services.limits
        self.profile = services.profile
        self.counters = services.counters
        self.hot = services.hot
        self.sink = services.sink
        self.id = ctx_id
        self.label = label
        self.objects: dict[int, IommufdObject] = {}
        self.closed = False
        #: 4 KiB pages this context maps, in its IOASes and stage-1 tables.
        self.mapped_pages = 0
        #: ``IOMMU_OPTION_RLIMIT_MODE``: pages accounted to the mm (1) or the user (0).
        self.rlimit_mode = False
        #: The owner's uid and what that uid holds across its contexts (``budgets.py``).
        self.uid = uid
        self.account: UidAccount = services.budgets.open(uid)

    def __repr__(self) -> str:
        return f"<Context {self.id} {self.label!r}>"

    # ------------------------------------------------------------------ the table
    def new_id(self) -> int:
        if self.closed:
            raise CoreError(EINVAL, "context is closed")
        if len(self.objects) >= self.limits.max_objects_per_context:
            raise CoreError(ENOSPC, "too many objects on this connection")
        self.account.check_object()
        return self.services.ids.alloc()

    def insert(self, obj: IommufdObject) -> None:
        """Publish a new object in the table, charged to the owner's uid."""
        self.account.charge_object()
        self.objects[obj.id] = obj

    def remove(self, obj: IommufdObject) -> None:
        del self.objects[obj.id]
        self.account.release_object()

    def uncharge_pages(self, npages: int) -> None:
        """Pages this context no longer maps (unmap, or its table destroyed)."""
        self.mapped_pages -= npages
        self.account.release_pages(npages)

    def lookup(self, obj_id: object) -> IommufdObject | None:
        """``iommufd_get_object(..., IOMMUFD_OBJ_ANY)``: None when not this context's."""
        return self.objects.get(obj_id) if isinstance(obj_id, int) else None

    def get(self, obj_id: int, cls: type[_O], what: str) -> _O:
        """An object of one kind: ``ENOENT`` when absent, ``EINVAL`` when another kind."""
        obj = self.lookup(obj_id)
        if obj is None:
            raise CoreError(ENOENT, f"no object {obj_id!r}")
        if not isinstance(obj, cls):
            raise CoreError(EINVAL, f"object {obj_id} is not {what}")
        return obj

    def bound_device(self, dev_id: int) -> IommufdDevice:
        """A device bound here, removed or not: ``ENOENT`` otherwise."""
        obj = self.objects.get(dev_id) if isinstance(dev_id, int) else None
        if obj is None or obj.kind != "device":
            raise CoreError(ENOENT, f"no device {dev_id!r}")
        return obj  # type: ignore[return-value]  # the only kind named "device"

    def device(self, dev_id: int) -> IommufdDevice:
        """A device bound here and present: ``ENOENT``, or ``ENODEV`` once removed."""
        obj = self.objects.get(dev_id) if isinstance(dev_id, int) else None
        if obj is None or obj.kind != "device":
            raise CoreError(ENOENT, f"no device {dev_id!r}")
        idev: IommufdDevice = obj  # type: ignore[assignment]  # the only kind named "device"
        if idev.removed:
            raise CoreError(ENODEV, f"device {idev.dev.name} was removed")
        return idev

    def destroy(self, obj_id: int, now: int) -> None:
        """``IOMMU_DESTROY``: ``EBUSY`` while another object uses it."""
        obj = self._destroyable(obj_id)
        OBJECT_OPS[type(obj)].destroy(self, obj, now)
        self.remove(obj)

    def destroy_steps(self, obj_id: int, now: int) -> Generator[None, None, None]:
        """``destroy`` in the object's bounded steps where it has them (an IOAS with a
        million pages); checked at the call, before any step."""
        obj = self._destroyable(obj_id)
        return self._destroy_in_steps(obj, now)

    def _destroy_in_steps(self, obj: IommufdObject, now: int) -> Generator[None, None, None]:
        ops = OBJECT_OPS[type(obj)]
        if ops.destroy_steps is None:
            ops.destroy(self, obj, now)
        else:
            yield from ops.destroy_steps(self, obj, now)
        if self.objects.get(obj.id) is obj:
            self.remove(obj)

    def _destroyable(self, obj_id: int) -> IommufdObject:
        obj = self.lookup(obj_id)
        if obj is None:
            raise CoreError(ENOENT, f"no object {obj_id!r}")
        refusal = OBJECT_OPS[type(obj)].refuse(obj)
        if refusal is not None:
            raise CoreError(EBUSY, refusal)
        if obj.users:
            raise CoreError(EBUSY, f"object {obj_id} is in use ({obj.users} users)")
        return obj

    def teardown(self, now: int) -> None:
        """Release everything, as closing ``/dev/iommu`` does: users before what they
        use (devices, nested HWPTs, HWPTs, then fault queues and IOASes)."""
        for _ in self.teardown_steps(now, nullcontext):
            pass

    def teardown_steps(
        self, now: int, step: Callable[[], AbstractContextManager[object]]
    ) -> Iterator[None]:
        """``teardown`` as a generator: it yields between bounded steps (an object, or
        one attachment of a device), each run inside ``step()``'s context (the driver's
        response batch), so the daemon can serve others in between. Each step leaves the
        context consistent: a teardown left suspended is finished by ``teardown``, and
        every group is still answered exactly once."""
        ranked = sorted(
            self.objects.values(), key=lambda o: (OBJECT_OPS[type(o)].teardown_rank(o), o.id)
        )
        for obj in ranked:
            if self.objects.get(obj.id) is not obj:
                continue  # released meanwhile (a teardown that finished it)
            ops = OBJECT_OPS[type(obj)]
            if ops.destroy_steps is not None:
                steps = ops.destroy_steps(self, obj, now)
                while True:
                    with step():
                        more = next(steps, False) is None
                    if not more:
                        break
                    yield
            else:
                with step():
                    ops.destroy(self, obj, now)
            self.remove(obj)
            yield
        self.closed = True


def check_range(iova: int, length: int, what: str = "iova") -> None:
    """A 4 KiB-aligned, non-empty range inside 64 bits, or ``EINVAL``."""
    if not isinstance(iova, int) or not isinstance(length, int):
        raise CoreError(EINVAL, f"{what} and length must be integers")
    if iova < 0 or iova % PAGE_SIZE:
        raise CoreError(EINVAL, f"{what} {iova:#x} is not 4 KiB aligned")
    if length <= 0 or length % PAGE_SIZE:
        raise CoreError(EINVAL, f"length {length:#x} is not a positive multiple of 4 KiB")
    if iova + length > UINT64_LIMIT:
        raise CoreError(EINVAL, "range exceeds the 64-bit address space")


__all__ = [
    "OBJECT_OPS",
    "PAGE_SIZE",
    "UINT32_MAX",
    "ContextBase",
    "CoreServices",
    "IdAllocator",
    "IommufdObject",
    "ObjectOps",
    "check_range",
    "register_object_ops",
]
