"""The emulation's control panel: what an administrator does to the hardware and the
hot-plug paths around it (admin ``inject``, ``unplug``, ``plug``, ``reset``).

Hot removal follows vfio-pci's remove path (``vfio_unregister_group_dev``): each owner
of the function (a PF takes its VFs) gets a ``DeviceRequest`` (the REQ interrupt,
``vfio_pci_core_request``) and may finish, answer and unbind; its pending groups stay
answerable and nobody may bind the device meanwhile. Once every owner released it, or
when the grace period ran out (``force``: at once; counted ``forced_unplugs``), the
removal runs as seed 000 orders it: stop DMA, detach everything (drain,
auto-respond), PRI off, drain again, remove, release.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from hwmodel import PageRequestDescriptor
from iopfd.core.device import detach_handle
from iopfd.core.errors import EBUSY, EINVAL, ENODEV, CoreError
from iopfd.core.events import DeviceRequest, UnplugDone

if TYPE_CHECKING:
    from collections import Counter

    from hwmodel import Machine
    from iopfd.core.events import EventSink
    from iopfd.core.intel.iommu import IntelIommu
    from iopfd.core.iommu import Device, IommuCore
    from iopfd.core.main import ContextBase

#: How long an ``unplug`` waits for the owners to release the device by default
#: (PROTOCOL.md v2 item 9); vfio-pci re-sends its request every 10 s and never gives up.
DEFAULT_UNPLUG_GRACE_NS = 10_000_000_000


@dataclass
class Removal:
    """An ``unplug`` waiting for the owners of its functions to release them."""

    dev: Device
    victims: list[Device]
    deadline: int
    ctx: ContextBase | None
    tag: object


class Emulation:
    """Admin controls over the emulated hardware."""

    def __init__(
        self,
        iommu: IommuCore,
        driver: IntelIommu,
        machine: Machine,
        counters: Counter[str],
        sink: EventSink,
    ) -> None:
        self.iommu = iommu
        self.driver = driver
        self.machine = machine
        self.counters = counters
        self.sink = sink
        #: Removals waiting for owners to release their devices, by the unplugged rid.
        self.removals: dict[str, Removal] = {}

    # ------------------------------------------------------------------ inject
    def inject(  # noqa: PLR0917 - the documented public API
        self, rid: str, pasid: int | None, addr: int, perm: int, grpid: int, last: bool, now: int
    ) -> None:
        """Write one raw page request as if the device had sent it (admin ``inject``)."""
        dev = self.iommu.find(rid)
        if dev.removed:
            raise CoreError(ENODEV, f"{dev.name} was removed")
        if pasid is not None and not 0 <= pasid < 1 << 20:
            raise CoreError(EINVAL, f"pasid {pasid!r} does not fit 20 bits")
        if not 0 <= grpid < 1 << 9:
            raise CoreError(EINVAL, f"grpid {grpid!r} does not fit 9 bits")
        if not 0 <= addr < 1 << 64 or addr & 0xFFF:
            raise CoreError(EINVAL, f"addr {addr!r} is not a page address")
        if not 0 <= perm <= 0xF:
            raise CoreError(EINVAL, f"perm {perm!r} out of range")
        desc = PageRequestDescriptor(
            sid=dev.sid,
            pasid_present=pasid is not None,
            pasid=pasid or 0,
            exe_req=bool(perm & 4),
            pm_req=bool(perm & 8),
            rd_req=bool(perm & 1),
            wr_req=bool(perm & 2),
            lpig=bool(last),
            prg_index=grpid,
            addr=addr,
        )
        self.machine.inject_page_request(dev.rid, desc, now)
        self.counters["injected"] += 1

    # ------------------------------------------------------------------ reset
    def reset(self, rid: str, now: int) -> None:
        """Admin ``reset``: the same function-level reset as the owner's ``device_reset``."""
        self.driver.flr(self.iommu.find(rid), now)

    # ------------------------------------------------------------------ unplug
    def unplug(
        self,
        rid: str,
        now: int,
        *,
        force: bool = False,
        grace_ns: int = DEFAULT_UNPLUG_GRACE_NS,
        ctx: ContextBase | None = None,
        tag: object = None,
    ) -> bool:
        """Hot removal (see the module docstring). True: removed now; False: an
        ``UnplugDone`` with ``ctx`` and ``tag`` comes from ``service`` when it is."""
        dev = self.iommu.find(rid)
        if dev.removed:
            raise CoreError(EINVAL, f"{dev.name} is already removed")
        if dev.removing:
            raise CoreError(EBUSY, f"a removal of {dev.name} is already in progress")
        devices = self.iommu.devices
        victims = [devices[str(vf.rid)] for vf in dev.fn.vfs if vf.present]
        victims.append(dev)
        bound = [v for v in victims if v.binding is not None]
        if force or not bound:
            self._remove(dev, victims, now, forced=bool(bound))
            return True
        self.removals[dev.name] = Removal(dev, victims, now + grace_ns, ctx, tag)
        for v in victims:
            v.removing = True
        for v in bound:
            assert v.binding is not None
            owner = v.binding.ctx
            self.sink.emit(DeviceRequest(owner, v.dev_id, v.name))
            self.counters["device_requests"] += 1
            if self.sink.trace_enabled:
                self.sink.trace(
                    "device", rid=v.name, state="removing", client=owner.label, t_ns=now
                )
        return False

    def next_deadline(self) -> int | None:
        return min((r.deadline for r in self.removals.values()), default=None)

    def service(self, now: int) -> None:
        """Complete the removals whose owners released their devices or whose grace
        period ended."""
        for name, removal in list(self.removals.items()):
            held = any(v.binding is not None for v in removal.victims)
            if held and now < removal.deadline:
                continue
            del self.removals[name]
            self._remove(removal.dev, removal.victims, now, forced=held)
            self.sink.emit(UnplugDone(removal.ctx, removal.tag, name, held))

    def _remove(self, dev: Device, victims: list[Device], now: int, *, forced: bool) -> None:
        """The removal itself (seed 000): stop DMA, detach all (drain, auto-respond), PRI
        off, drain again, release; a still-bound owner's ``dev_id`` then gives
        ``ENODEV``. A PF takes its VFs with it, as the machine does."""
        # The driver stops DMA first (vtd-hw.md 6.4): a transfer in flight ends
        # `removed`, and the page requests it sent are settled by the drains below.
        self.machine.stop_dma(dev.rid, now)
        for victim in victims:
            for pasid in list(victim.handles):
                detach_handle(self.iommu, victim, pasid, now, "unplug")
        if not dev.is_vf and dev.fn.pri.enabled:
            dev.fn.pri.disable()
        for victim in victims:
            self.driver.final_drain(victim, now)
        self.machine.hot_remove(dev.rid, now)
        if forced:
            self.counters["forced_unplugs"] += 1
        for victim in victims:
            self.driver.release_device(victim)
            binding = victim.binding
            if binding is not None:
                binding.removed = True  # the ID stays in its context, and says ENODEV
                victim.binding = None
            victim.removed = True
            victim.removing = False
            self.counters["unplugs"] += 1
            if self.sink.trace_enabled:
                self.sink.trace("device", rid=victim.name, state="removed", forced=forced, t_ns=now)

    # ------------------------------------------------------------------ plug
    def plug(self, rid: str, now: int) -> None:
        """Bring a removed function back as ``free`` (a PF brings its VFs back too)."""
        dev = self.iommu.find(rid)
        if not dev.removed:
            raise CoreError(EINVAL, f"{dev.name} is present")
        try:
            self.machine.hot_plug(dev.rid, now)
        except ValueError as e:
            raise CoreError(EINVAL, str(e)) from None
        devices = self.iommu.devices
        for d in [dev, *(devices[str(vf.rid)] for vf in dev.fn.vfs)]:
            if d.removed and d.fn.present:
                d.removed = False
                self.driver.probe_device(d)
                self.counters["plugs"] += 1
                if self.sink.trace_enabled:
                    self.sink.trace("device", rid=d.name, state="free", t_ns=now)


__all__ = ["DEFAULT_UNPLUG_GRACE_NS", "Emulation", "Removal"]
