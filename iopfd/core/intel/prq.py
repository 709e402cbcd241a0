"""The page request queue thread and the PASID drain (``drivers/iommu/intel/prq.c``)."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from hwmodel import RESP_INVALID, IotlbInvDescriptor, PasidIotlbInvDescriptor
from hwmodel.descriptors import DESC_SIZE, IOTLB_G_DSI, PIOTLB_G_PASID, InvDescriptor
from iopfd.core.intel.cache import DEVTLB_MASK_ALL, devtlb_descriptor
from iopfd.core.intel.dmar import WAIT_FENCE, qi_submit_sync
from iopfd.core.io_pgfault import LAST_PAGE, NEEDS_PASID, PASID_VALID

if TYPE_CHECKING:
    from iopfd.core.intel.iommu import IntelIommu, UnitState
    from iopfd.core.iommu import Device

PRS_PPR = 1
PRS_PRO = 2
_PAGE_REQ = struct.Struct("<QQ")  # qw0, qw1 of a page request descriptor
_ADDR_MASK = 0xFFFF_FFFF_FFFF_F000
_CANONICAL_LOW = 1 << 47  # 48-bit virtual addresses (4-level paging)
_CANONICAL_HIGH = (1 << 64) - (1 << 47)
_EXE_PM = 3 << 52  # qw0: execute and privileged-mode requested
#: Bound on drain rounds repeated because of PRO; each round takes the ring to empty.
MAX_DRAIN_ROUNDS = 64


def prq_event_thread(drv: IntelIommu, us: UnitState, now: int) -> int:
    """One pass of ``prq_event_thread`` (vtd-hw.md 2.5); returns descriptors taken. The
    caller holds a response batch: the answers of the pass go out together."""
    unit = us.unit
    prq = unit.prq
    counters = drv.counters
    report = drv.iopf.report
    # 1. W1C PPR before reading head and tail, so later arrivals raise a new event.
    unit.write_prs_w1c(PRS_PPR)
    head = prq.head
    tail = prq.tail
    size = prq.size_bytes
    devices = us.devices
    taken = 0
    ring = prq.ring
    # 2. Every descriptor from head to tail, read straight from the ring memory as the
    # driver reads ``struct page_req_dsc`` (vtd-hw.md 2.1): no object per request.
    unpack_from = _PAGE_REQ.unpack_from
    while head != tail:
        qw0, qw1 = unpack_from(ring, head)
        head = (head + DESC_SIZE) % size
        taken += 1
        addr = qw1 & _ADDR_MASK
        if qw1 & 3 and not qw0 & _EXE_PM and addr < _CANONICAL_LOW:
            # The common request: read and/or write, neither execute nor privileged, at
            # a canonical user address; its perm is RD | WR << 1, the low bits of qw1.
            dev = devices.get((qw0 >> 16) & 0xFFFF)
            if dev is not None:
                if qw0 & 0x100:  # PASID present
                    pasid = (qw0 >> 32) & 0xFFFFF
                    flags = (LAST_PAGE if qw1 & 4 else 0) | PASID_VALID | NEEDS_PASID
                else:
                    pasid = 0
                    flags = LAST_PAGE if qw1 & 4 else 0
                report(dev, (flags, pasid, (qw1 >> 3) & 0x1FF, qw1 & 3, addr), now)
                continue
        sid = (qw0 >> 16) & 0xFFFF
        pp = (qw0 >> 8) & 1
        pasid = (qw0 >> 32) & 0xFFFFF if pp else 0
        exe = (qw0 >> 52) & 1
        pm = (qw0 >> 53) & 1
        rd = qw1 & 1
        wr = (qw1 >> 1) & 1
        lpig = (qw1 >> 2) & 1
        prgi = (qw1 >> 3) & 0x1FF
        if (
            _CANONICAL_LOW <= addr < _CANONICAL_HIGH  # not canonical
            or (pm and (rd or wr))  # privileged mode: not supported
            or (exe and rd)  # execute: not supported
        ):
            _bad_request(
                drv, us, sid, pp, pasid, prgi, lpig, rd | wr << 1 | exe << 2 | pm << 3, addr, now
            )
            continue
        if lpig and not rd and not wr:
            counters["stop_markers"] += 1  # Stop Marker: no response
            continue
        dev = devices.get(sid)  # seed 000: one dict lookup
        if dev is None:
            _bad_request(drv, us, sid, pp, pasid, prgi, lpig, 0, addr, now)
            continue
        # ``intel_prq_report``: PASID_VALID and NEEDS_PASID together for a PASID request.
        flags = (LAST_PAGE if lpig else 0) | (PASID_VALID | NEEDS_PASID if pp else 0)
        report(dev, (flags, pasid, prgi, rd | wr << 1 | exe << 2 | pm << 3, addr), now)
    # 3. PQH once for the whole batch.
    prq.write_head(tail)
    drv.hot["page_requests"] += taken
    # 4. Overflow: once the ring is empty, partial groups may have lost their last
    # request (auto-answered Success by the hardware): discard them, then clear PRO.
    if unit.read_prs() & PRS_PRO and prq.head == prq.tail:
        # ``iopf_queue_discard_partial``
        dropped = sum(
            drv.iopf.remove_device(dev) for dev in devices.values() if dev.fault_param.n_partials
        )
        unit.write_prs_w1c(PRS_PRO)
        counters["prq_overflows"] += 1
        if drv.sink.trace_enabled:
            drv.sink.trace("overflow", iommu=unit.name, partials_discarded=dropped, t_ns=now)
    return taken


def _bad_request(  # noqa: PLR0917 - the descriptor's fields
    drv: IntelIommu,
    us: UnitState,
    sid: int,
    pp: int,
    pasid: int,
    prgi: int,
    lpig: int,
    perm: int,
    addr: int,
    now: int,
) -> None:
    """``handle_bad_prq_event``: a request the driver cannot service, or of a device not
    in the RID table. The last request of a group is answered INVALID; a non-last one
    is dropped with no answer, and the rest of its group is still reported. The kernel
    then leaves the group's set-aside requests for the next group that reuses the
    index; iopfd frees them with the answer (docs/core.md, *Where iopfd differs*)."""
    drv.counters["bad_requests"] += 1
    if lpig:
        drv.batch.add(us.unit, sid, bool(pp), pasid, prgi, RESP_INVALID)
        dev = us.devices.get(sid)
        if dev is not None:
            drv.iopf.discard_group_partials(dev, prgi)
    else:
        drv.counters["bad_requests_dropped"] += 1
    if drv.sink.trace_enabled:
        drv.sink.trace(
            "auto_response",
            iommu=us.unit.name,
            sid=sid,
            pasid=pasid if pp else None,
            grpid=prgi,
            code=RESP_INVALID,
            reason="bad_request",
            answered=bool(lpig),
            perm=perm,
            addr=addr,
            t_ns=now,
        )


def _ring_holds(us: UnitState, sid: int, pasid: int | None) -> bool:
    prq = us.unit.prq
    for off in prq.pending_offsets():
        req = prq.read_descriptor(off)
        if req.sid == sid and (req.pasid if req.pasid_present else None) == pasid:
            return True
    return False


def drain_pasid_prq(drv: IntelIommu, dev: Device, pasid: int | None, did: int, now: int) -> None:
    """``intel_iommu_drain_pasid_prq`` (vtd-hw.md 4.2): when it returns, every page request
    of (device, PASID) the function had posted was taken off the PRQ and reported.

    Preconditions: the attachment is out of the lookup table, the PASID entry is not
    present and the caches were invalidated.
    """
    info = dev.info
    if not dev.fn.pri.enabled:
        # PRI off (a VF looks at its PF's): the function sends no page request. The
        # kernel returns unless the device has fault-capable attachments; iopfd drains
        # whenever requests can be in flight, so that invariant 3 holds for non-fault
        # attachments too under profile 6.18, where PRI is on from probe.
        return
    drv.counters["drains"] += 1
    us = info.ustate
    unit = info.unit
    with drv.batch:
        # Software scan: requests already in the ring go through the PRQ thread first.
        while _ring_holds(us, info.sid, pasid):
            prq_event_thread(drv, us, now)
        p = 0 if pasid is None else pasid
        descs: list[InvDescriptor] = [WAIT_FENCE]
        if pasid is None:
            descs.append(IotlbInvDescriptor(granularity=IOTLB_G_DSI, did=did))
        else:
            descs.append(PasidIotlbInvDescriptor(granularity=PIOTLB_G_PASID, did=did, pasid=p))
        if dev.fn.ats_enabled:
            descs.append(devtlb_descriptor(info.sid, info.pfsid, pasid, 0, DEVTLB_MASK_ALL))
        # Hardware drain: the devTLB completion is ordered behind every page request the
        # function dispatched, and PD=1 orders the wait behind their PRQ writes (SPEC 7.10).
        for _ in range(MAX_DRAIN_ROUNDS):
            qi_submit_sync(unit, descs, drv.counters, drain=True)
            overflowed = unit.read_prs() & PRS_PRO
            prq_event_thread(drv, us, now)
            if not overflowed:
                break
            drv.counters["drain_retries"] += 1  # spec step d: repeat b and c
