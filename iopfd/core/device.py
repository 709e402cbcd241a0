"""Bound devices and their attachments (``drivers/iommu/iommufd/device.c`` and the VFIO
cdev glue of ``drivers/vfio/iommufd.c``).

``bind`` is ``VFIO_DEVICE_BIND_IOMMUFD``; ``attach``/``detach`` are
``VFIO_DEVICE_ATTACH_IOMMUFD_PT``/``VFIO_DEVICE_DETACH_IOMMUFD_PT``, so an attach where
something is attached is a replace and a detach of nothing succeeds; ``replace`` is
``iommufd_device_replace`` itself. The IOMMU core (``iommu.py``) sequences the driver;
this layer checks what iommufd checks and answers the old attachment's groups:

1. the attachment leaves the lookup table, the driver tears the entry down and drains
   (``IommuCore.detach_device_pasid``): every request already posted is reported and,
   finding no attachment, answered INVALID (seed 001);
2. ``iommufd_auto_response_faults`` answers the groups still pending on the old
   attachment, on its own fault queue;
3. the HWPT reference goes.

When it returns no request of that (device, PASID) is in flight and no translation
through the old HWPT is cached anywhere.
"""

from __future__ import annotations

import itertools
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, ClassVar

from mypy_extensions import trait

from iopfd.core.errors import EBUSY, EINVAL, ENODEV, ENOENT, EOPNOTSUPP, CoreError
from iopfd.core.eventq import auto_response_faults
from iopfd.core.hw_pagetable import HwPagetable, new_paging_hwpt, put_hwpt
from iopfd.core.ioas import ALL_PERMS, Ioas, check_perm, drive
from iopfd.core.main import (
    UINT32_MAX,
    ContextBase,
    IommufdObject,
    ObjectOps,
    check_range,
    register_object_ops,
)

if TYPE_CHECKING:
    from iopfd.core.iommu import Device, IommuCore


class IommufdDevice(IommufdObject):
    """A device bound to a context (``struct iommufd_device``)."""

    __slots__ = ("dev", "removed")
    kind: ClassVar[str] = "device"

    def __init__(self, obj_id: int, ctx: ContextBase, dev: Device) -> None:
        super().__init__(obj_id, ctx)
        self.dev = dev
        self.removed = False  # hot-removed: the ID stays, every use is ENODEV

    def describe(self) -> dict[str, object]:
        row = super().describe()
        row.update(
            rid=self.dev.name,
            removed=self.removed,
            attached=attached_row(self.dev),
            attached_total=len(self.dev.handles),
        )
        return row


#: Attachments a device's row lists (``attached_total`` counts them all).
ATTACHED_SHOWN = 64


def attached_row(dev: Device) -> dict[str, int]:
    """The device's first ``ATTACHED_SHOWN`` attachments (in attach order), RID or
    PASID -> HWPT: a row costs the same however many PASIDs a tenant attached (up to
    ``max_attachments_per_uid``)."""
    return {
        ("rid" if p is None else str(p)): a.hwpt.id
        for p, a in itertools.islice(dev.handles.items(), ATTACHED_SHOWN)
    }


class DmaTag:
    """What the core stores in a transfer's tag: the context and the caller's tag."""

    __slots__ = ("ctx", "tag")

    def __init__(self, ctx: ContextBase, tag: object) -> None:
        self.ctx = ctx
        self.tag = tag


def _refuse(obj: IommufdObject) -> str | None:
    return "a bound device is released by unbind"


def _destroy(ctx: ContextBase, obj: IommufdObject, now: int) -> None:
    assert isinstance(obj, IommufdDevice)
    release_device(ctx, obj, now, "close")


def release_device(ctx: ContextBase, idev: IommufdDevice, now: int, reason: str) -> None:
    """``vfio_iommufd_physical_unbind``: the device's DMA stops (as VFIO's release
    quiesces it, so no retry of this owner's can fault into the next owner's
    attachments; what it had sent is settled by the drains), every PASID is detached,
    then the RID, and the binding goes."""
    for _ in release_device_steps(ctx, idev, now, reason):
        pass


#: Attachments one step of a sliced release detaches (each is a drain and a flush).
DETACHES_PER_STEP = 64


def release_device_steps(
    ctx: ContextBase, idev: IommufdDevice, now: int, reason: str
) -> Iterator[None]:
    """``release_device`` in steps of ``DETACHES_PER_STEP`` detaches: between steps the
    device's DMA is stopped and each remaining attachment is whole, so the fault path
    finds a complete attachment or none (and its groups are answered when it goes)."""
    if idev.removed:
        return
    dev = idev.dev
    ctx.services.machine.stop_dma(dev.rid, now, with_vfs=False)
    # PASIDs first, the RID last; nothing attaches meanwhile (the owner is closing).
    pasids = sorted(dev.handles, key=lambda p: -1 if p is None else p, reverse=True)
    for start in range(0, len(pasids), DETACHES_PER_STEP):
        if start:
            yield
            if dev.binding is not idev or idev.removed:
                return  # an unplug took the device meanwhile, with its attachments
        for pasid in pasids[start : start + DETACHES_PER_STEP]:
            if pasid in dev.handles:
                detach_handle(ctx.iommu, dev, pasid, now, reason)
    dev.binding = None
    if ctx.sink.trace_enabled:
        ctx.sink.trace("device", rid=dev.name, state="free", t_ns=now)


def detach_handle(iommu: IommuCore, dev: Device, pasid: int | None, now: int, reason: str) -> None:
    """``iommufd_hwpt_detach_device``: detach, then answer the old handle's groups."""
    with iommu.response_batch():
        old = iommu.detach_device_pasid(dev, pasid, now)
        auto_response_faults(old, reason, now)
    old.hwpt.ctx.account.release_attachment()
    put_hwpt(old.hwpt, now)


def _destroy_steps(ctx: ContextBase, obj: IommufdObject, now: int) -> Iterator[None]:
    assert isinstance(obj, IommufdDevice)
    return release_device_steps(ctx, obj, now, "close")


register_object_ops(
    IommufdDevice,
    ObjectOps(
        destroy=_destroy, refuse=_refuse, teardown_rank=lambda o: 0, destroy_steps=_destroy_steps
    ),
)


@trait
class DeviceOps(ContextBase):
    """The context's device operations (bind, attach, reset and DMA of a VFIO device)."""

    # ------------------------------------------------------------------ bind
    def bind(self, rid: str, now: int) -> int:
        """``VFIO_DEVICE_BIND_IOMMUFD``: exclusive; ``ENODEV`` once removed or while an
        unplug waits for the device."""
        dev = self.iommu.find(rid)
        if dev.removed or dev.removing:
            raise CoreError(
                ENODEV, f"{dev.name} was removed" if dev.removed else f"{dev.name} is being removed"
            )
        if dev.binding is not None:
            raise CoreError(
                EBUSY,
                f"{dev.name} is bound by another connection"
                if dev.binding.ctx is not self
                else f"{dev.name} is already bound here",
            )
        obj_id = self.new_id()
        idev = IommufdDevice(obj_id, self, dev)
        self.insert(idev)
        dev.binding = idev
        self.iommu.driver.device_bound(dev)
        if self.sink.trace_enabled:
            self.sink.trace("device", rid=dev.name, state="bound", client=self.label, t_ns=now)
        return obj_id

    def unbind(self, dev_id: int, now: int) -> None:
        drive(self.unbind_steps(dev_id, now))

    def unbind_steps(self, dev_id: int, now: int) -> Generator[None, None, None]:
        """``unbind`` in steps of ``DETACHES_PER_STEP`` detaches (``release_device_steps``),
        so the daemon serves others while a device with thousands of PASIDs goes. The
        device is checked at the call, before any step."""
        return self._unbind_steps(self.bound_device(dev_id), now)

    def _unbind_steps(self, idev: IommufdDevice, now: int) -> Generator[None, None, None]:
        yield from release_device_steps(self, idev, now, "unbind")
        if self.objects.get(idev.id) is idev:
            self.remove(idev)

    # ------------------------------------------------------------------ checks
    def check_pasid(self, dev: Device, pasid: int | None) -> None:
        if pasid is None:
            return
        if not isinstance(pasid, int) or pasid < 0 or pasid > UINT32_MAX:
            raise CoreError(EINVAL, f"pasid {pasid!r} out of range")
        if pasid == 0:
            raise CoreError(EINVAL, "PASID 0 is the RID's own translation (IOMMU_NO_PASID)")
        bits = dev.info.pasid_bits
        if bits == 0:
            raise CoreError(EOPNOTSUPP, f"{dev.name} has no PASID capability")
        if pasid >> bits:
            raise CoreError(EINVAL, f"pasid {pasid:#x} exceeds {bits} bits")

    def _check_attach_pasid(self, dev: Device, pasid: int | None) -> None:
        """A PASID for attach, replace or detach: v6.12's ``vfio_df_ioctl_attach_pt`` and
        ``vfio_df_ioctl_detach_pt`` take no flag, so PASID attach is ``EINVAL`` there."""
        if pasid is not None and not self.profile.pasid_attach:
            raise CoreError(
                EINVAL,
                f"kernel {self.profile.name} has no PASID attach "
                "(VFIO_DEVICE_ATTACH_PASID came with 6.15)",
            )
        self.check_pasid(dev, pasid)

    def _attach_target(
        self, dev_id: int, pt_id: int, pasid: int | None
    ) -> tuple[Device, HwPagetable | Ioas]:
        """``iommufd_device_change_pt`` up to the driver: the HWPT of any kind or an
        IOAS (``ENOENT``; another kind ``EINVAL``); a HWPT is checked at once
        (``_check_hwpt``), an IOAS finds its automatic domain later."""
        dev = self.device(dev_id).dev
        self._check_attach_pasid(dev, pasid)
        pt = self.lookup(pt_id)
        if pt is None:
            raise CoreError(ENOENT, f"no object {pt_id!r}")
        if isinstance(pt, Ioas):
            return dev, pt
        if not isinstance(pt, HwPagetable):
            raise CoreError(EINVAL, f"object {pt_id} is not a HWPT or an IOAS")
        self._check_hwpt(dev, pt, pasid)
        return dev, pt

    def _check_hwpt(self, dev: Device, pt: HwPagetable, pasid: int | None) -> None:
        """As ``iommufd_hwpt_attach_device`` checks them: the VF rule and PASID
        compatibility (``EINVAL``). PRI itself is checked when the driver enables IOPF
        (``ENODEV``, ``intel_iommu_enable_iopf``)."""
        profile = self.profile
        info = dev.info
        if (
            pt.fault is not None
            and dev.is_vf
            and (info.pri_supported or not profile.vf_rule_pri_only)
        ):
            # PRI is shared by a PF and its VFs and nothing coordinates it: v6.12's
            # ``iommufd_fault_iopf_enable`` refuses any VF, v6.13+'s
            # ``iommufd_hwpt_compatible_device`` a VF that supports PRI.
            raise CoreError(EINVAL, f"{dev.name} is a VF: PRI is shared with its PF")
        if profile.pasid_attach:
            _check_pasid_compat(dev, pt, pasid)
        if pt.fault is not None and not info.unit.spec.pds and info.pri_supported:
            # Without ECAP.PDS detach could not drain page requests (vtd-hw.md 4.2).
            raise CoreError(EOPNOTSUPP, f"{info.unit.name} cannot drain page requests")
        if pt.is_nested and not info.unit.spec.nest:
            raise CoreError(EOPNOTSUPP, f"{info.unit.name} has no nested translation")

    def _auto_domain(
        self, dev: Device, ioas: Ioas, pasid: int | None, now: int, *, replace: bool
    ) -> int:
        """``iommufd_device_auto_get_domain``: every automatic domain of the IOAS in
        turn (``EINVAL`` means incompatible: try the next; any paging domain suits the
        emulated VT-d otherwise), else a new paging HWPT with flags 0 (neither
        fault-capable nor PASID-compatible), attached, or destroyed if that fails."""
        change = self._replace if replace else self._attach_hwpt
        for hwpt in list(ioas.hwpts.values()):
            if not hwpt.auto_domain:
                continue
            try:
                self._check_hwpt(dev, hwpt, pasid)
                change(dev, pasid, hwpt, now)
            except CoreError as e:
                if e.errno != EINVAL:
                    raise
                continue
            return hwpt.id
        hwpt = new_paging_hwpt(self, ioas, auto_domain=True)
        try:
            self._check_hwpt(dev, hwpt, pasid)
            change(dev, pasid, hwpt, now)
        except CoreError:
            self.destroy(hwpt.id, now)  # iommufd_object_abort_and_destroy
            raise
        return hwpt.id

    # ------------------------------------------------------------------ attach
    def attach(self, dev_id: int, pt_id: int, pasid: int | None, now: int) -> int:
        """``VFIO_DEVICE_ATTACH_IOMMUFD_PT``: where something is attached it is a replace
        (``vfio_iommufd_physical_attach_ioas``). An IOAS attaches its automatic domain.
        Returns the HWPT attached."""
        dev, pt = self._attach_target(dev_id, pt_id, pasid)
        if isinstance(pt, Ioas):
            return self._auto_domain(dev, pt, pasid, now, replace=False)
        self._attach_hwpt(dev, pasid, pt, now)
        return pt.id

    def _attach_hwpt(self, dev: Device, pasid: int | None, hwpt: HwPagetable, now: int) -> None:
        if pasid in dev.handles:
            self._replace(dev, pasid, hwpt, now)
            return
        self.account.charge_attachment()
        try:
            self.iommu.attach_device_pasid(dev, pasid, hwpt)
        except CoreError:
            self.account.release_attachment()
            raise
        hwpt.users += 1
        hwpt.attached += 1

    def replace(self, dev_id: int, pt_id: int, pasid: int | None, now: int) -> int:
        """``iommufd_device_replace``: ``EINVAL`` where nothing is attached. An IOAS
        replaces to its automatic domain. Returns the HWPT attached."""
        dev, pt = self._attach_target(dev_id, pt_id, pasid)
        if pasid not in dev.handles:
            raise CoreError(EINVAL, "nothing attached there to replace")
        if isinstance(pt, Ioas):
            return self._auto_domain(dev, pt, pasid, now, replace=True)
        self._replace(dev, pasid, pt, now)
        return pt.id

    def _replace(self, dev: Device, pasid: int | None, hwpt: HwPagetable, now: int) -> None:
        if dev.handles[pasid].hwpt is hwpt:
            return  # iommufd_device_do_replace: the same HWPT changes nothing
        with self.iommu.response_batch():
            old = self.iommu.replace_device_pasid(dev, pasid, hwpt, now)
            hwpt.users += 1
            hwpt.attached += 1
            # The OLD attachment's pending groups, on the OLD fault queue
            # (kernel-iopf.md 7.5: 6.15-6.18 pass the new HWPT and strand them).
            auto_response_faults(old, "replace", now)
        put_hwpt(old.hwpt, now)

    def detach(self, dev_id: int, pasid: int | None, now: int) -> None:
        """``VFIO_DEVICE_DETACH_IOMMUFD_PT``: nothing attached there is not an error
        (``vfio_iommufd_physical_detach_ioas`` returns)."""
        dev = self.device(dev_id).dev
        self._check_attach_pasid(dev, pasid)
        if pasid in dev.handles:
            detach_handle(self.iommu, dev, pasid, now, "detach")

    def hw_info(self, dev_id: int) -> dict[str, object]:
        """``IOMMU_GET_HW_INFO``: what the IOMMU behind the device can do."""
        return dict(self.iommu.driver.hw_info(self.device(dev_id).dev))

    # ------------------------------------------------------------------ reset, DMA
    def device_reset(self, dev_id: int, now: int) -> None:
        """``VFIO_DEVICE_RESET``: a function-level reset (``IntelIommu.flr``)."""
        self.iommu.driver.flr(self.device(dev_id).dev, now)

    def dma(  # noqa: PLR0917 - the documented public API
        self,
        dev_id: int,
        pasid: int | None,
        iova: int,
        length: int,
        perm: int,
        now: int,
        tag: object,
    ) -> None:
        """The device itself runs a transfer (completion comes as ``DmaDone``)."""
        dev = self.device(dev_id).dev
        self.check_pasid(dev, pasid)
        check_range(iova, length)
        if length > self.limits.max_dma_length:
            raise CoreError(
                EINVAL,
                f"length {length:#x} exceeds max_dma_length ({self.limits.max_dma_length:#x})",
            )
        p = check_perm(perm, ALL_PERMS)
        try:
            self.services.machine.start_dma(
                dev.rid, pasid, iova, length, p, now, tag=DmaTag(self, tag)
            )
        except ValueError as e:  # e.g. PRIV alone: the device has nothing to do
            raise CoreError(EINVAL, str(e)) from None
        self.hot["dma_started"] += 1


def _check_pasid_compat(dev: Device, hwpt: HwPagetable, pasid: int | None) -> None:
    """``iommufd_hwpt_pasid_compat`` (v6.15+): a PASID takes only a HWPT allocated with
    ``IOMMU_HWPT_ALLOC_PASID``, and then the RID must hold none without it; the RID
    takes a HWPT without it only while no PASID is attached. Every failure is
    ``EINVAL``."""
    if pasid is None:
        if not hwpt.pasid_compat and any(p is not None for p in dev.handles):
            raise CoreError(EINVAL, "a PASID is attached: the RID's HWPT needs the pasid flag")
        return
    if not hwpt.pasid_compat:
        raise CoreError(EINVAL, f"HWPT {hwpt.id} was not allocated with the pasid flag")
    rid_att = dev.handles.get(None)
    if rid_att is not None and not rid_att.hwpt.pasid_compat:
        raise CoreError(EINVAL, "the RID holds a HWPT without the pasid flag")


__all__ = [
    "DETACHES_PER_STEP",
    "DeviceOps",
    "DmaTag",
    "IommufdDevice",
    "attached_row",
    "detach_handle",
    "release_device",
    "release_device_steps",
]
