"""The invalidation queue (vtd-hw.md 5.3): a ring of 32-byte descriptors.

``submit()`` plays the driver's part (encode into the ring, move IQT) and the
hardware's (fetch from IQH and execute in order, synchronously). An invalid
descriptor sets IQE, leaves IQH on it and raises ``InvalidDescriptorError``; nothing
after it runs until ``clear_iqe()``.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from hwmodel.descriptors import (
    CC_G_DEVICE,
    CC_G_DOMAIN,
    CC_G_GLOBAL,
    DESC_SIZE,
    INV_DESCRIPTOR_TYPES,
    IOTLB_G_DSI,
    IOTLB_G_GLOBAL,
    IOTLB_G_PSI,
    PC_G_DOMAIN,
    PC_G_GLOBAL,
    PC_G_PASID,
    PIOTLB_G_PASID,
    PIOTLB_G_PSI,
    ContextCacheInvDescriptor,
    DevTlbInvDescriptor,
    InvDescriptor,
    InvWaitDescriptor,
    IotlbInvDescriptor,
    PageGroupResponseDescriptor,
    PasidCacheInvDescriptor,
    PasidDevTlbInvDescriptor,
    PasidIotlbInvDescriptor,
    decode_inv_descriptor,
    descriptor_type,
    dev_tlb_decode_range,
)
from hwmodel.rid import PAGE_SHIFT

if TYPE_CHECKING:
    from hwmodel.iommu import IommuUnit

FSTS_IQE = 1 << 4

# IQER.IQEI reasons (subset): 1 = invalid descriptor type/reserved bits, 2 = unsupported feature.
IQEI_INVALID = 1
IQEI_UNSUPPORTED = 2

_QWORDS = struct.Struct("<4Q")
# Reserved-bit masks of the two descriptors every submission carries (page group
# response, wait), from their layouts: the fast path checks exactly what decode checks.
_PGR_RESERVED0, _PGR_RESERVED1 = PageGroupResponseDescriptor._LAYOUT.reserved[:2]
_WAIT_RESERVED0, _WAIT_RESERVED1 = InvWaitDescriptor._LAYOUT.reserved[:2]
_TYPE_PGR = PageGroupResponseDescriptor.TYPE
_TYPE_WAIT = InvWaitDescriptor.TYPE


class InvalidDescriptorError(Exception):
    """An invalidation descriptor the hardware refused (FSTS.IQE set)."""

    def __init__(self, unit: str, offset: int, reason: str) -> None:
        super().__init__(f"{unit}: invalid descriptor at IQH={offset:#x}: {reason}")
        self.unit = unit
        self.offset = offset
        self.reason = reason


class _Invalid(Exception):
    def __init__(self, reason: str, iqei: int = IQEI_INVALID) -> None:
        super().__init__(reason)
        self.iqei = iqei


class InvalidationQueue:
    def __init__(self, unit: IommuUnit, entries: int = 256) -> None:
        self.unit = unit
        self.entries = entries
        self.size_bytes = entries * DESC_SIZE
        self.ring = bytearray(self.size_bytes)
        self.head = 0  # IQH, byte offset; hardware advances it
        self.tail = 0  # IQT, byte offset; software writes it
        self.iqe = False  # FSTS.IQE
        self.iqei = 0  # IQER.IQEI
        self.iwc = False  # ICS.IWC (a wait with IF=1 completed)
        self.status_memory: dict[int, int] = {}  # status writes of wait descriptors (addr -> data)
        self.hot_counters = unit.hot_counters
        self.cold_counters = unit.cold_counters
        # An observer of each submission's size in descriptors (tests, tracing).
        self.submit_tap: Callable[[int], None] | None = None

    @property
    def counters(self) -> Counter[str]:
        """The unit's counters (the IQ counts there)."""
        return self.unit.counters

    # ------------------------------------------------------------------ software side
    def submit(self, descs: Sequence[InvDescriptor]) -> None:
        """Write ``descs`` into the ring, ring the tail, let hardware execute them in order."""
        if self.iqe:
            raise InvalidDescriptorError(
                self.unit.name, self.head, "queue halted: FSTS.IQE still set (call clear_iqe)"
            )
        self.submit_images([d.encode() for d in descs])  # out of range: a software bug

    def submit_images(self, images: Sequence[bytes]) -> None:
        """``submit`` for descriptors already encoded (32 bytes each): what a driver
        that formats descriptors in place writes into the ring."""
        if self.iqe:
            raise InvalidDescriptorError(
                self.unit.name, self.head, "queue halted: FSTS.IQE still set (call clear_iqe)"
            )
        if self.submit_tap is not None:
            self.submit_tap(len(images))
        for raw in images:
            if (self.tail + DESC_SIZE) % self.size_bytes == self.head:
                self._execute_pending()  # ring full: wait for hardware to make room
            t = self.tail
            self.ring[t : t + DESC_SIZE] = raw
            self.tail = (t + DESC_SIZE) % self.size_bytes
        self._execute_pending()

    def clear_iqe(self, *, resume: bool = True) -> None:
        """Recover as Linux ``qi_check_fault`` does: the bad descriptor becomes a no-op wait,
        IQE clears, and (with ``resume``) hardware goes on with the rest; else drops it."""
        if not self.iqe:
            return
        h = self.head
        self.ring[h : h + DESC_SIZE] = InvWaitDescriptor(sw=False).encode()
        self.iqe = False
        self.iqei = 0
        if resume:
            self._execute_pending()
        else:
            self.head = self.tail

    @property
    def pending(self) -> int:
        return ((self.tail - self.head) % self.size_bytes) // DESC_SIZE

    # ------------------------------------------------------------------ hardware side
    def _execute_pending(self) -> None:
        ring = self.ring
        size = self.size_bytes
        unit = self.unit
        prs = unit.spec.prs
        c = self.hot_counters
        unpack_from = _QWORDS.unpack_from
        while self.head != self.tail and not self.iqe:
            h = self.head
            # Fast path for the two descriptors of every answer: read the qwords from
            # ring memory and act on them without building an object. Anything
            # unusual (reserved bits, a unit without PRS) takes the checked path below.
            qw0, qw1, qw2, qw3 = unpack_from(ring, h)
            t = (qw0 & 0xF) | ((qw0 >> 9) & 7) << 4
            if t == _TYPE_PGR and prs:
                if not (qw0 & _PGR_RESERVED0 | qw1 & _PGR_RESERVED1 | qw2 | qw3):
                    c["iq_descriptors_page_group_response"] += 1
                    if unit.response_tap is not None:
                        unit.response_tap(
                            PageGroupResponseDescriptor.decode(bytes(ring[h : h + DESC_SIZE]))
                        )
                    unit.send_prg_response(
                        (qw0 >> 16) & 0xFFFF, (qw1 >> 3) & 0x1FF, (qw0 >> 12) & 0xF
                    )
                    self.head = (h + DESC_SIZE) % size
                    continue
            elif (
                t == _TYPE_WAIT
                and not qw0 & 0x80
                and not (qw0 & _WAIT_RESERVED0 | qw1 & _WAIT_RESERVED1 | qw2 | qw3)
            ):
                # ``_wait_fields`` with PD=0, inline: SW, then IF.
                c["iq_descriptors_wait"] += 1
                if qw0 & 0x20:
                    self.status_memory[qw1] = qw0 >> 32
                    c["iq_wait_status_writes"] += 1
                if qw0 & 0x10:
                    self.iwc = True
                    self.cold_counters["iq_wait_interrupts"] += 1
                self.head = (h + DESC_SIZE) % size
                continue
            raw = bytes(ring[h : h + DESC_SIZE])
            try:
                desc = decode_inv_descriptor(raw)
                self._execute(desc)
            except (ValueError, _Invalid) as e:
                self.iqe = True
                self.iqei = e.iqei if isinstance(e, _Invalid) else IQEI_INVALID
                self.cold_counters["iq_errors"] += 1
                t = descriptor_type(raw)
                self.cold_counters[f"iq_errors_type_{t:#x}"] += 1
                raise InvalidDescriptorError(self.unit.name, h, str(e)) from None
            self.head = (h + DESC_SIZE) % size

    def _execute(self, d: InvDescriptor) -> None:
        unit = self.unit
        c = self.cold_counters
        if isinstance(d, PageGroupResponseDescriptor):
            if not unit.spec.prs:
                raise _Invalid("page group response on a unit without ECAP.PRS", IQEI_UNSUPPORTED)
            c["iq_descriptors_page_group_response"] += 1
            unit.send_page_response(d)
        elif isinstance(d, IotlbInvDescriptor):
            if d.granularity == IOTLB_G_GLOBAL:
                n = unit.inv_iotlb_global()
            elif d.granularity == IOTLB_G_DSI:
                n = unit.inv_iotlb_did(d.did)
            elif d.granularity == IOTLB_G_PSI:
                first, npages = _psi_range(d.addr, d.am)
                n = unit.inv_iotlb_did(d.did, first, npages)
            else:
                raise _Invalid(f"IOTLB invalidation with reserved granularity {d.granularity}")
            c["iq_descriptors_iotlb"] += 1
            c["iotlb_entries_invalidated"] += n
        elif isinstance(d, PasidIotlbInvDescriptor):
            if d.granularity == PIOTLB_G_PASID:
                n = unit.inv_iotlb_pasid(d.did, d.pasid)
            elif d.granularity == PIOTLB_G_PSI:
                first, npages = _psi_range(d.addr, d.am)
                n = unit.inv_iotlb_pasid(d.did, d.pasid, first, npages)
            else:
                raise _Invalid(f"P_IOTLB invalidation with reserved granularity {d.granularity}")
            c["iq_descriptors_pasid_iotlb"] += 1
            c["iotlb_entries_invalidated"] += n
        elif isinstance(d, DevTlbInvDescriptor):
            c["iq_descriptors_dev_tlb"] += 1
            start, size = dev_tlb_decode_range(d.addr, d.s)
            self._dev_tlb(d.sid, None, start, size, all_pasids=False)
        elif isinstance(d, PasidDevTlbInvDescriptor):
            c["iq_descriptors_pasid_dev_tlb"] += 1
            start, size = dev_tlb_decode_range(d.addr, d.s)
            self._dev_tlb(d.sid, d.pasid, start, size, all_pasids=d.g)
        elif isinstance(d, InvWaitDescriptor):
            self._wait(d)
        elif isinstance(d, PasidCacheInvDescriptor):
            # The model reads PASID entries directly (no PASID cache), so nothing is stale.
            if d.granularity not in (PC_G_DOMAIN, PC_G_PASID, PC_G_GLOBAL):
                raise _Invalid(f"PASID-cache invalidation, reserved granularity {d.granularity}")
            c["iq_descriptors_pasid_cache"] += 1
        elif isinstance(d, ContextCacheInvDescriptor):
            if d.granularity not in (CC_G_GLOBAL, CC_G_DOMAIN, CC_G_DEVICE):
                raise _Invalid(f"context-cache invalidation, reserved granularity {d.granularity}")
            c["iq_descriptors_context_cache"] += 1
        else:  # pragma: no cover - decode_inv_descriptor only returns the types above
            raise _Invalid(f"unsupported descriptor {d!r}")

    def _dev_tlb(
        self, sid: int, pasid: int | None, start: int, size: int, all_pasids: bool
    ) -> None:
        ep = self.unit.endpoints.get(sid)
        if ep is None or not ep.present:
            # A real unit would time out (ITE); the model ignores it and counts it.
            self.cold_counters["dev_tlb_inv_to_absent"] += 1
            return
        self.cold_counters["atc_entries_invalidated"] += ep.invalidate_atc(
            pasid, start, size, all_pasids
        )

    def _wait(self, d: InvWaitDescriptor) -> None:
        if d.pd and not self.unit.spec.pds:
            raise _Invalid("wait descriptor with PD=1 on a unit without ECAP.PDS")
        self._wait_fields(d.pd, d.sw, d.status_data, d.status_addr, d.if_flag)

    def _wait_fields(
        self, pd: bool, sw: bool, status_data: int, status_addr: int, if_flag: bool
    ) -> None:
        unit = self.unit
        c = self.cold_counters
        c["iq_descriptors_wait"] += 1
        if pd:
            # SPEC 7.10 / vtd-hw.md 4.1: the status write becomes visible only after the PRQ
            # writes of every page request the functions had already dispatched.
            c["iq_drains"] += 1
            if unit.drain_hook is not None:
                unit.drain_hook(unit)
        if sw:
            self.status_memory[status_addr] = status_data
            c["iq_wait_status_writes"] += 1
        if if_flag:
            self.iwc = True
            c["iq_wait_interrupts"] += 1


def _psi_range(addr: int, am: int) -> tuple[int, int]:
    if am > 52:
        raise _Invalid(f"address mask {am} beyond 52 (CAP.MAMV)")
    npages = 1 << am
    return (addr >> PAGE_SHIFT) & ~(npages - 1), npages


__all__ = ["INV_DESCRIPTOR_TYPES", "InvalidDescriptorError", "InvalidationQueue"]
