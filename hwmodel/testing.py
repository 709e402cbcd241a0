"""Helpers that program the model the way a driver would (for tests, the demo, benches).

Like ``trio.testing``: not used by the model itself. ``bind()`` turns a function's
capabilities on and points its context and PASID entries at fresh page tables;
``Bound`` then offers the software side of the PRQ and the IQ in one call each.
"""

from __future__ import annotations

from dataclasses import dataclass

from hwmodel.descriptors import (
    RESP_SUCCESS,
    InvWaitDescriptor,
    PageGroupResponseDescriptor,
    PageRequestDescriptor,
)
from hwmodel.iommu import PRS_PPR, PRS_PRO, IommuUnit, PasidEntry, Pgtt
from hwmodel.machine import Machine
from hwmodel.pagetable import PageTable
from hwmodel.pci import PciFunction

# The default topology's functions, by role.
ACCEL = "0000:3a:00.0"
NIC_PF = "0000:3b:00.0"
NIC_VF0 = "0000:3b:00.1"
NIC_VF1 = "0000:3b:00.2"
ATS_NO_PRI = "0000:3c:00.0"
ACCEL1 = "0000:5a:00.0"
NO_PASID = "0000:5b:00.0"
LEGACY = "0000:5c:00.0"


@dataclass
class Bound:
    """A function programmed for page requests: context P+PRE, a PASID entry, caps on."""

    machine: Machine
    fn: PciFunction
    pasid: int | None
    did: int
    s1: PageTable
    s2: PageTable

    @property
    def unit(self) -> IommuUnit:
        return self.fn.iommu

    def drain_prq(self) -> list[PageRequestDescriptor]:
        """Software side of the PRQ (prq_event_thread): clear PPR, read head..tail, write
        the head once, then clear PRO if it was set (the ring being empty now)."""
        unit = self.fn.iommu
        unit.write_prs_w1c(PRS_PPR)
        prq = unit.prq
        out = [prq.read_descriptor(off) for off in prq.pending_offsets()]
        prq.head = prq.tail
        if unit.read_prs() & PRS_PRO:
            unit.write_prs_w1c(PRS_PRO)
        return out

    def respond(self, req: PageRequestDescriptor, code: int = RESP_SUCCESS) -> None:
        """Submit the page group response answering ``req``'s group."""
        self.fn.iommu.iq.submit([response_for(req, code)])

    def drain_wait(self, status_addr: int = 0x1000) -> None:
        """Submit an invalidation wait with SW=1 and PD=1 (page-request drain)."""
        self.fn.iommu.iq.submit(
            [InvWaitDescriptor(sw=True, status_data=1, status_addr=status_addr, pd=True)]
        )


def response_for(
    req: PageRequestDescriptor, code: int = RESP_SUCCESS
) -> PageGroupResponseDescriptor:
    return PageGroupResponseDescriptor(
        sid=req.sid,
        pasid_present=req.pasid_present,
        pasid=req.pasid if req.pasid_present else 0,
        response_code=code,
        prg_index=req.prg_index,
    )


def bind(
    machine: Machine,
    rid: str,
    pasid: int | None = 5,
    *,
    did: int = 2,
    pgtt: Pgtt = Pgtt.SECOND_STAGE,
    pri: bool = True,
    reqs: int = 2048,
) -> Bound:
    """Enable PASID, ATS and PRI (as the function supports) and install a PASID entry
    (``pasid=None``: the RID_PASID entry) with empty first- and second-stage tables."""
    fn = machine.function(rid)
    unit = fn.iommu
    s1, s2 = PageTable(), PageTable()
    if fn.spec.pasid and not fn.pasid_enabled:
        fn.enable_pasid()
    if fn.spec.ats and not fn.ats_enabled:
        fn.enable_ats()
    if pri and fn.spec.pri and not fn.pri.enabled:
        (fn.pf or fn).pri.enable(reqs)
    ctx = unit.context(fn.sid)
    pre = (pri and fn.spec.pri) or (ctx is not None and ctx.pre)
    unit.set_context(fn.sid, present=True, pre=pre)
    unit.set_pasid_entry(fn.sid, pasid, PasidEntry(True, did, pgtt, s1, s2))
    return Bound(machine, fn, pasid, did, s1, s2)
