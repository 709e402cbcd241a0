"""`make demo` (interim): drive the emulated VT-d hardware and show what it did.

Until the daemon exists this plays the kernel driver by hand against ``hwmodel``:
a DMA faults, its page requests land in the page request queue, software answers with
a page group response through the invalidation queue, the function retries and
succeeds; then a stale device TLB, a page-request drain, and a Response Failure.
"""

from __future__ import annotations

from collections.abc import Iterable

from hwmodel import (
    IOTLB_G_PSI,
    PRS_PPR,
    PRS_PRO,
    RESP_FAILURE,
    RESP_INVALID,
    RESP_SUCCESS,
    DmaTransfer,
    IotlbInvDescriptor,
    Machine,
    PageRequestDescriptor,
    PasidDevTlbInvDescriptor,
    Perm,
    default_topology,
)
from hwmodel.testing import ACCEL, NIC_PF, NIC_VF0, Bound, bind, response_for

RW = Perm.READ | Perm.WRITE


def say(title: str) -> None:
    print(f"\n== {title}")


def show(*lines: str) -> None:
    for line in lines:
        print(f"   {line}")


def hexdump(raw: bytes) -> str:
    return " ".join(raw[i:i + 8][::-1].hex() for i in range(0, 32, 8))   # qw0..qw3


def describe(d: PageRequestDescriptor) -> str:
    flags = "".join(c for c, on in (("R", d.rd_req), ("W", d.wr_req), ("X", d.exe_req),
                                    ("P", d.pm_req)) if on) or "-"
    pasid = f"pasid={d.pasid}" if d.pasid_present else "no-pasid"
    last = " LPIG" if d.lpig else ""
    return (f"rid={d.sid >> 8:02x}:{(d.sid >> 3) & 0x1F:02x}.{d.sid & 7} {pasid} "
            f"prgi={d.prg_index} {flags} addr={d.addr:#x}{last}")


def registers(b: Bound) -> str:
    u = b.unit
    prs = u.read_prs()
    bits = [n for n, bit in (("PPR", PRS_PPR), ("PRO", PRS_PRO)) if prs & bit] or ["-"]
    return (f"{u.name}: PQH={u.prq.head:#06x} PQT={u.prq.tail:#06x} "
            f"PRS={'|'.join(bits)}  ({u.prq.used} of {u.prq.capacity} slots used)")


def transfer(t: DmaTransfer) -> str:
    state = t.status.value if t.status else f"waiting for {t.waiting}"
    return (f"DMA #{t.id} {t.rid} pasid={t.pasid} iova={t.iova:#x}+{t.length:#x}: {state}, "
            f"{t.bytes:#x} bytes done, {t.faults} page requests, {t.retries} retries")


def read_prq(b: Bound) -> list[PageRequestDescriptor]:
    """What the driver's PRQ thread does: clear PPR, read head..tail, move the head."""
    u = b.unit
    u.write_prs_w1c(PRS_PPR)
    out = []
    for off in u.prq.pending_offsets():
        d = u.prq.read_descriptor(off)
        show(f"[{off:#06x}] {hexdump(bytes(u.prq.ring[off:off + 32]))}",
             f"         {describe(d)}")
        out.append(d)
    u.prq.head = u.prq.tail
    return out


def counters(title: str, items: Iterable[tuple[str, int]]) -> None:
    rows = [(k, v) for k, v in sorted(items) if v]
    show(f"{title}:" + ("" if rows else " (idle)"))
    for i in range(0, len(rows), 2):
        show("   " + "    ".join(f"{k:<34}{v:>6}" for k, v in rows[i:i + 2]))


def main() -> None:
    m = Machine(default_topology())
    say("Topology (the embedded default; hwmodel/default_topology.toml)")
    for name, unit in m.iommus.items():
        show(f"{name}: PRQ {unit.prq.entries} x 32 B, IQ {unit.iq.entries} x 32 B, "
             f"PDS={int(unit.spec.pds)} NEST={int(unit.spec.nest)}")
        for fn in m.functions.values():
            if fn.iommu is unit:
                caps = [c for c, on in (("ATS", fn.spec.ats), ("PASID", fn.spec.pasid)) if on]
                if fn.spec.pri:
                    caps.append("PRI(shared with PF)" if fn.pf else
                                f"PRI(capacity {fn.spec.pri_capacity})")
                show(f"   {fn.rid}  {fn.spec.name:<18} {' '.join(caps) or 'none'}")

    say("Driver: enable PASID, ATS, PRI on 0000:3a:00.0; PASID 5 -> DID 2, empty stage-2 table")
    b = bind(m, ACCEL, pasid=5, did=2)
    show(f"PRI: Enable=1 allocation={b.fn.pri.allocation} (capacity {b.fn.pri.capacity}); "
         f"context entry P=1 PRE=1")

    say("The function DMAs 3 pages (read+write) at iova 0x10000: ATC miss, IOMMU miss")
    t = m.start_dma(b.fn.rid, 5, 0x10000, 0x3000, RW, now=1_000)
    show(transfer(t), f"{m.posted_page_requests} page requests posted on the link")
    m.advance(2_000)
    show(f"delivered; PRQ event fired on: {[u.name for u in m.take_interrupts()]}",
         registers(b))

    say("Software reads the PRQ (one group: same PRG index, LPIG on the last)")
    reqs = read_prq(b)
    show(registers(b))

    say("Software maps the pages and answers the group: page group response, RC=Success")
    b.s2.map(0x10000, 0x7_0000_0000, 0x3000, RW)
    resp = response_for(reqs[-1], RESP_SUCCESS)
    show(f"IQ descriptor type 0x9: {hexdump(resp.encode())}")
    b.unit.iq.submit([resp])
    show(transfer(t))
    m.advance(3_000)
    show("after advance(): " + transfer(t))

    say("Stale device TLB: unmap a page and flush only the IOTLB")
    b.s2.unmap(0x10000, 0x1000)
    b.unit.iq.submit([IotlbInvDescriptor(IOTLB_G_PSI, did=2, addr=0x10000)])
    t2 = m.start_dma(b.fn.rid, 5, 0x10000, 0x1000, Perm.READ, now=4_000)
    show(f"ATC still holds (5, 0x10): {transfer(t2)}  <- stale, as real hardware")
    b.unit.iq.submit([PasidDevTlbInvDescriptor(sid=b.fn.sid, pasid=5, addr=0x10000)])
    t3 = m.start_dma(b.fn.rid, 5, 0x10000, 0x1000, Perm.READ, now=5_000)
    show(f"after the P_devTLB invalidation: {transfer(t3)}")

    say("Page-request drain: an invalidation wait with PD=1 pushes posted requests into the PRQ")
    show(f"{m.posted_page_requests} posted, PRQ holds {b.unit.prq.used}")
    b.drain_wait()
    show(f"after wait(SW=1, PD=1): PRQ holds {b.unit.prq.used}, status write "
         f"{b.unit.iq.status_memory}")
    (r,) = read_prq(b)
    b.respond(r, RESP_INVALID)
    show("answered Invalid Request: " + transfer(t3))

    say("Table 31: a request for a torn-down PASID is answered by the hardware itself")
    t4 = m.start_dma(b.fn.rid, 5, 0x40000, 0x1000, Perm.READ, now=6_000)
    b.unit.clear_pasid_present(b.fn.sid, 5)
    m.advance(7_000)
    ar = b.unit.auto_responses[-1]
    show(f"auto response RC={ar.response_code} (Invalid Request) prgi={ar.prg_index}; "
         f"PRQ untouched ({b.unit.prq.used} used); " + transfer(t4))

    say("Response Failure through a VF stops the PF's PRI (VFs share it)")
    pf = bind(m, NIC_PF, pasid=3, did=3)
    vf = bind(m, NIC_VF0, pasid=4, did=4)
    tp = m.start_dma(pf.fn.rid, 3, 0, 0x1000, Perm.READ, now=8_000)
    tv = m.start_dma(vf.fn.rid, 4, 0, 0x1000, Perm.READ, now=8_000)
    m.advance(9_000)
    reqs = read_prq(pf)
    vf_req = next(r for r in reqs if r.sid == vf.fn.sid)
    pf.respond(vf_req, RESP_FAILURE)
    pri = pf.fn.pri
    show(f"PRI status: RF={int(pri.response_failure)} UPRGI={int(pri.unexpected_prgi)} "
         f"Stopped={int(pri.stopped)} outstanding={pri.outstanding}",
         transfer(tv), transfer(tp))
    pri.disable()
    pri.do_reset()
    pri.enable(64)
    show(f"after disable + reset + enable: RF={int(pri.response_failure)} "
         f"Enable={int(pri.enabled)} allocation={pri.allocation}")

    say("Counters")
    for name, unit in m.iommus.items():
        counters(name, unit.counters.items())
    counters(f"{ACCEL}", b.fn.counters.items())


if __name__ == "__main__":
    main()
