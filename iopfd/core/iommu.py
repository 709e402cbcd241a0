"""The generic IOMMU core (``drivers/iommu/iommu.c``): devices, attach handles, and the
attach / replace / detach sequence every driver is called in.

A ``Device`` is ``struct device`` as the IOMMU core sees a PCI function, and each
layer keeps its own part of it, as in the kernel:

- ``info``: the driver's per-device data (``dev_iommu_priv_get``, the Intel driver's
  ``device_domain_info``: RID table entry, PRI and iopf reference count);
- ``fault_param``: io-pgfault's (``dev->iommu->fault_param``: the partial requests);
- ``handles``: the IOMMU core's attach handles per PASID (``group->pasid_array``),
  the table the fault path reads without a lock (seed 003);
- ``binding``: the VFIO/iommufd binding (``struct iommufd_device``) of its owner.

The core publishes a handle last on attach and removes it first on detach, so the
fault path finds either nothing or a complete attachment.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Protocol

from hwmodel import PageTable, Rid
from iopfd.core.errors import EINVAL, ENOENT, CoreError
from iopfd.core.io_pgfault import IopfParam

if TYPE_CHECKING:
    from collections import Counter

    from hwmodel import PciFunction
    from iopfd.core.device import IommufdDevice
    from iopfd.core.eventq import FaultQueue
    from iopfd.core.hw_pagetable import HwPagetable
    from iopfd.core.intel.domain import DmarDomain
    from iopfd.core.intel.iommu import DeviceDomainInfo, DevPasid
    from iopfd.core.io_pgfault import IopfGroup, IopfQueue


class Device:
    """A PCI function as the kernel's IOMMU layers know it (see the module docstring)."""

    __slots__ = (
        "binding",
        "fault_param",
        "fn",
        "handles",
        "info",
        "name",
        "removed",
        "removing",
        "rid",
    )

    def __init__(self, fn: PciFunction, info: DeviceDomainInfo) -> None:
        self.fn = fn
        self.rid = fn.rid
        self.name = str(fn.rid)
        self.info = info
        self.fault_param = IopfParam()
        #: (device, PASID) -> attach handle; ``None`` is the RID (IOMMU_NO_PASID).
        self.handles: dict[int | None, AttachHandle] = {}
        self.binding: IommufdDevice | None = None
        self.removed = not fn.present
        #: An ``unplug`` is waiting for the owner: the device may not be bound again.
        self.removing = False

    def __repr__(self) -> str:
        return f"<Device {self.name} {self.state}>"

    @property
    def state(self) -> str:
        """``free``, ``bound`` or ``removed``, as the protocol's ``devices`` shows it."""
        if self.removed:
            return "removed"
        return "bound" if self.binding is not None else "free"

    @property
    def dev_id(self) -> int:
        return self.binding.id if self.binding is not None else 0

    @property
    def sid(self) -> int:
        return self.info.sid

    @property
    def is_vf(self) -> bool:
        return self.fn.pf is not None


class AttachHandle:
    """One (device, PASID) -> HWPT attachment: ``iommu_attach_handle`` with iommufd's
    part (the fault queue and the groups it holds for this handle) and the driver's
    (``drv``: domain ID, cache tags)."""

    __slots__ = ("dev", "domain", "drv", "fault", "groups", "hwpt", "pasid")

    def __init__(self, dev: Device, pasid: int | None, hwpt: HwPagetable, drv: DevPasid) -> None:
        self.dev = dev
        self.pasid = pasid
        self.hwpt = hwpt
        self.domain: DmarDomain = hwpt.domain
        self.fault: FaultQueue | None = hwpt.fault
        self.drv = drv
        #: cookie -> pending group of this handle (``iommufd_auto_response_faults``).
        self.groups: dict[int, IopfGroup] = {}


class IommuDriver(Protocol):
    """The ops the generic layers call on the driver (``struct iommu_ops`` and the
    domain ops), implemented by ``intel.iommu.IntelIommu``."""

    def set_dev_pasid(
        self, dev: Device, pasid: int | None, domain: DmarDomain, fault_capable: bool
    ) -> DevPasid: ...

    def replace_dev_pasid(
        self,
        dev: Device,
        pasid: int | None,
        domain: DmarDomain,
        *,
        fault_capable: bool,
        old: AttachHandle,
        now: int,
    ) -> DevPasid: ...

    def remove_dev_pasid(
        self, dev: Device, pasid: int | None, old: AttachHandle, now: int
    ) -> None: ...

    def page_response(  # noqa: PLR0917
        self,
        dev: Device,
        pasid_valid: bool,
        pasid: int,
        grpid: int,
        code: int,
        last: bool = True,
    ) -> None: ...

    def response_batch(self) -> AbstractContextManager[None]: ...

    def domain_alloc(self, s2: PageTable, parent: DmarDomain | None) -> DmarDomain: ...

    def flush_iotlb_range(
        self,
        domains: Iterable[DmarDomain],
        *,
        first_stage: bool,
        start: int | None,
        end: int | None,
        reason: str,
        now: int,
    ) -> None: ...

    def device_bound(self, dev: Device) -> None: ...

    def flr(self, dev: Device, now: int) -> None: ...

    def hw_info(self, dev: Device) -> dict[str, object]: ...


class IommuCore:
    """The devices and the attach sequence (``iommu_attach_device_pasid``,
    ``iommu_replace_device_pasid``, ``iommu_detach_device_pasid``)."""

    def __init__(self, driver: IommuDriver, iopf: IopfQueue, counters: Counter[str]) -> None:
        self.driver = driver
        self.iopf = iopf
        self.counters = counters
        self.devices: dict[str, Device] = {}

    def find(self, rid: str) -> Device:
        """The device named by a requester ID string: ``EINVAL`` if malformed,
        ``ENOENT`` if there is no such function."""
        try:
            name = str(Rid.parse(rid))
        except ValueError as e:
            raise CoreError(EINVAL, str(e)) from None
        dev = self.devices.get(name)
        if dev is None:
            raise CoreError(ENOENT, f"no device {name}")
        return dev

    def response_batch(self) -> AbstractContextManager[None]:
        """Page responses given inside go out together when the outermost batch ends."""
        return self.driver.response_batch()

    def attach_device_pasid(
        self, dev: Device, pasid: int | None, hwpt: HwPagetable
    ) -> AttachHandle:
        """The driver programs the hardware first (its errors leave nothing behind);
        the handle is published last."""
        drv = self.driver.set_dev_pasid(dev, pasid, hwpt.domain, hwpt.fault is not None)
        handle = AttachHandle(dev, pasid, hwpt, drv)
        dev.handles[pasid] = handle  # published: the fault path may find it from now on
        self.counters["attaches"] += 1
        return handle

    def replace_device_pasid(
        self, dev: Device, pasid: int | None, hwpt: HwPagetable, now: int
    ) -> AttachHandle:
        """Switch (device, PASID) to ``hwpt``; returns the old handle, now unpublished,
        for the caller to answer its groups. On failure the old attachment stays."""
        old = dev.handles[pasid]
        drv = self.driver.replace_dev_pasid(
            dev, pasid, hwpt.domain, fault_capable=hwpt.fault is not None, old=old, now=now
        )
        dev.handles[pasid] = AttachHandle(dev, pasid, hwpt, drv)
        self.counters["replaces"] += 1
        return old

    def detach_device_pasid(self, dev: Device, pasid: int | None, now: int) -> AttachHandle:
        """Unpublish first (the fault path can no longer find it), then the driver tears
        the entry down and drains; when this returns no request of (device, PASID) is
        in flight and no translation through the old HWPT is cached."""
        old = dev.handles.pop(pasid)
        self.driver.remove_dev_pasid(dev, pasid, old, now)
        # iopfd frees the PASID's set-aside requests now; the kernel keeps them until
        # the last fault-capable attachment goes (docs/core.md, deliberate differences).
        self.iopf.discard_partial(dev, pasid)
        self.counters["detaches"] += 1
        return old


__all__ = ["AttachHandle", "Device", "IommuCore", "IommuDriver"]
