"""PCIe PRI on the function side: groups, the outstanding allocation, response codes,
retries with back-off, VFs sharing the PF's PRI (vtd-hw.md 3.2, 3.3, 6.2)."""

from __future__ import annotations

import pytest

from hwmodel import (
    RESP_FAILURE,
    RESP_INVALID,
    RESP_SUCCESS,
    DmaStatus,
    Machine,
    PageGroupResponseDescriptor,
    Perm,
    PriError,
    default_topology,
)
from hwmodel.testing import (
    ACCEL,
    ATS_NO_PRI,
    LEGACY,
    NIC_PF,
    NIC_VF0,
    NIC_VF1,
    NO_PASID,
    Bound,
    bind,
)

RW = Perm.READ | Perm.WRITE
PAGE = 0x1000


def fault_cycle(b: Bound, now: int) -> list:  # type: ignore[type-arg]
    b.machine.advance(now)
    return b.drain_prq()


def test_a_miss_sends_one_group_of_consecutive_missing_pages_last_one_with_lpig(
    accel: Bound,
) -> None:
    m = accel.machine
    accel.s2.map(0x13000, 0x900000, PAGE, RW)  # page 0x13 present: splits the group
    t = m.start_dma(accel.fn.rid, 5, 0x10000, 6 * PAGE, RW, now=0)
    assert t.waiting == "response" and t.faults == 3
    assert m.posted_page_requests == 3 and accel.unit.prq.is_empty  # posted, not delivered
    reqs = fault_cycle(accel, 1)
    assert [r.addr for r in reqs] == [0x10000, 0x11000, 0x12000]
    assert [r.lpig for r in reqs] == [False, False, True]
    assert len({r.prg_index for r in reqs}) == 1
    assert all(r.sid == 0x3A00 and r.pasid_present and r.pasid == 5 for r in reqs)
    assert all(r.rd_req and r.wr_req and not r.exe_req and not r.pm_req for r in reqs)
    assert accel.fn.pri.outstanding == 3


def test_group_size_is_capped_by_prg_max_pages() -> None:
    m = Machine(default_topology(), prg_max_pages=2)
    b = bind(m, ACCEL)
    m.start_dma(b.fn.rid, 5, 0, 8 * PAGE, Perm.READ, now=0)
    reqs = fault_cycle(b, 1)
    assert len(reqs) == 2 and reqs[-1].lpig and not reqs[0].lpig


def test_exec_and_priv_requests_set_exr_pmr_and_read() -> None:
    m = Machine(default_topology())
    b = bind(m, ACCEL)
    m.start_dma(b.fn.rid, 5, 0, PAGE, Perm.EXEC | Perm.PRIV, now=0)
    (r,) = fault_cycle(b, 1)
    assert r.exe_req and r.pm_req and r.rd_req and not r.wr_req


def test_each_new_group_gets_a_free_9_bit_prg_index() -> None:
    m = Machine(default_topology())
    b = bind(m, ACCEL)
    for i in range(600):
        m.start_dma(b.fn.rid, 5, i * 16 * PAGE, PAGE, Perm.READ, now=0)
    prgis = b.fn.outstanding_prg_indices()
    assert prgis == list(range(512))  # all distinct, 9-bit
    assert b.fn.pri.outstanding == 512  # the 88 others wait for a free index
    assert b.fn.counters["pri_credit_stalls"] == 88


def test_outstanding_requests_stay_within_the_allocation_and_resume_on_response() -> None:
    m = Machine(default_topology())
    b = bind(m, ACCEL, reqs=3)
    assert b.fn.pri.allocation == 3
    t1 = m.start_dma(b.fn.rid, 5, 0, 5 * PAGE, Perm.READ, now=0)
    assert t1.faults == 3  # the group is cut to the 3 credits
    t2 = m.start_dma(b.fn.rid, 5, 0x100000, PAGE, Perm.READ, now=0)
    assert t2.waiting == "credits" and t2.faults == 0
    reqs = fault_cycle(b, 1)
    assert len(reqs) == 3 and b.fn.pri.outstanding == 3
    b.s2.map(0, 0x800000, 5 * PAGE, Perm.READ)
    b.respond(reqs[-1])  # all three credits return
    assert b.fn.pri.outstanding == 0
    m.advance(2)
    assert t2.faults == 1 and t2.waiting == "response"  # woken by the returned credits
    assert t1.status is DmaStatus.OK and t1.bytes == 5 * PAGE and t1.faults == 3


def test_success_retries_at_once_then_backs_off_exponentially_with_a_cap() -> None:
    m = Machine(
        default_topology(), max_retries=20, retry_backoff_ns=1000, retry_backoff_max_ns=5000
    )
    b = bind(m, ACCEL)
    t = m.start_dma(b.fn.rid, 5, 0, PAGE, Perm.READ, now=0)
    now = 10
    delays = []
    for _ in range(6):
        (r,) = fault_cycle(b, now)
        b.respond(r, RESP_SUCCESS)  # "serviced", but the page never appears
        due = m.next_deadline()
        assert due is not None
        delays.append(due - now)
        now = due
        m.advance(now)
    assert delays == [0, 1000, 2000, 4000, 5000, 5000]
    assert t.retries == 6 and t.status is None


def test_more_than_max_retries_success_answers_end_in_retry_limit() -> None:
    m = Machine(default_topology(), max_retries=2, retry_backoff_ns=10)
    b = bind(m, ACCEL)
    t = m.start_dma(b.fn.rid, 5, 0, PAGE, Perm.READ, now=0)
    now = 0
    for _ in range(3):
        (r,) = fault_cycle(b, now)
        b.respond(r)
        now = m.next_deadline() or now
        m.advance(now)
    assert t.status is DmaStatus.RETRY_LIMIT
    assert t.retries == 3 and t.faults == 3
    assert m.take_completed() == [t]


def test_success_after_mapping_completes_the_transfer(accel: Bound) -> None:
    m = accel.machine
    t = m.start_dma(accel.fn.rid, 5, 0x10800, 2 * PAGE, RW, now=0, tag="x")
    reqs = fault_cycle(accel, 1)
    assert [r.addr for r in reqs] == [0x10000, 0x11000, 0x12000]
    accel.s2.map(0x10000, 0x900000, 3 * PAGE, RW)
    accel.respond(reqs[-1])
    assert t.status is None and t.waiting == "retry"  # only marked due by the IQ
    m.advance(2)
    assert t.status is DmaStatus.OK and t.bytes == 2 * PAGE and t.tag == "x"
    assert m.take_completed() == [t] and m.take_completed() == []


def test_invalid_request_fails_the_access(accel: Bound) -> None:
    m = accel.machine
    t = m.start_dma(accel.fn.rid, 5, 0, PAGE, Perm.WRITE, now=0)
    (r,) = fault_cycle(accel, 1)
    accel.respond(r, RESP_INVALID)
    assert t.status is DmaStatus.INVALID and accel.fn.pri.outstanding == 0
    assert not accel.fn.pri.response_failure


@pytest.mark.parametrize("code", [RESP_FAILURE, 0x2, 0xE])
def test_response_failure_or_reserved_code_stops_pri_for_the_pf_and_its_vfs(code: int) -> None:
    m = Machine(default_topology())
    pf = bind(m, NIC_PF)
    vf = bind(m, NIC_VF0, pasid=7)
    t_pf = m.start_dma(pf.fn.rid, 5, 0, PAGE, Perm.READ, now=0)
    t_vf = m.start_dma(vf.fn.rid, 7, 0, PAGE, Perm.READ, now=0)
    reqs = fault_cycle(pf, 1)
    assert len(reqs) == 2 and pf.fn.pri.outstanding == 2
    pf.respond(reqs[0], code)
    pri = pf.fn.pri
    assert t_pf.status is DmaStatus.FAILURE and t_vf.status is DmaStatus.FAILURE
    assert pri.response_failure and pri.status & 1
    assert pri.outstanding == 0 and pri.stopped and pri.status & (1 << 8)
    # PRI issues nothing more and ignores later responses until reset.
    t3 = m.start_dma(vf.fn.rid, 7, 0, PAGE, Perm.READ, now=2)
    assert t3.status is DmaStatus.FAILURE and t3.faults == 0
    pf.respond(reqs[1], RESP_SUCCESS)
    assert vf.fn.counters["page_responses_ignored_rf"] == 1
    # Recovery as Linux does it: disable, reset, enable.
    with pytest.raises(PriError) as ei:
        pri.enable(16)
    assert ei.value.errno == "EBUSY"
    pri.disable()
    pri.do_reset()
    assert not pri.response_failure and pri.stopped
    pri.enable(16)
    t4 = m.start_dma(vf.fn.rid, 7, 0, PAGE, Perm.READ, now=3)
    assert t4.faults == 1 and t4.waiting == "response"


def test_response_with_an_unknown_prg_index_sets_uprgi_and_is_ignored(accel: Bound) -> None:
    m = accel.machine
    t = m.start_dma(accel.fn.rid, 5, 0, PAGE, Perm.READ, now=0)
    (r,) = fault_cycle(accel, 1)
    accel.unit.iq.submit(
        [PageGroupResponseDescriptor(r.sid, True, 5, RESP_SUCCESS, (r.prg_index + 1) % 512)]
    )
    pri = accel.fn.pri
    assert pri.unexpected_prgi and pri.status & 2
    assert t.waiting == "response" and pri.outstanding == 1
    pri.write_status_w1c(2)
    assert not pri.unexpected_prgi


def test_vf_shares_the_pf_pri_capability_and_its_outstanding_allocation() -> None:
    m = Machine(default_topology())
    pf, vf0, vf1 = (m.function(r) for r in (NIC_PF, NIC_VF0, NIC_VF1))
    assert vf0.pri is pf.pri and vf1.pri is pf.pri
    vf0.enable_pasid()
    vf0.enable_ats()
    with pytest.raises(PriError):
        vf0.enable_pri(4)  # pci_enable_pri(vf) needs the PF's enabled
    pf.enable_pri(2)
    vf0.enable_pri(4)  # a no-op now
    assert pf.pri.allocation == 2
    b0 = bind(m, NIC_VF0, pasid=9)
    t0 = m.start_dma(vf0.rid, 9, 0, 4 * PAGE, Perm.READ, now=0)
    assert t0.faults == 2 and pf.pri.outstanding == 2
    b1 = bind(m, NIC_VF1, pasid=9, did=3)  # its own domain
    t1 = m.start_dma(vf1.rid, 9, 0, PAGE, Perm.READ, now=0)
    assert t1.waiting == "credits"  # the VFs share the PF's quota
    reqs = fault_cycle(b0, 1)
    assert {r.sid for r in reqs} == {vf0.sid}  # the VF's own RID on the wire
    b0.s2.map(0, 0x100000, 4 * PAGE, Perm.READ)
    b0.respond(reqs[-1])
    m.advance(2)
    assert t1.faults == 1
    assert b1.fn.counters["pri_credit_stalls"] == 1


@pytest.mark.parametrize(
    ("rid", "why"), [(ATS_NO_PRI, "no PRI"), (LEGACY, "no ATS"), (ACCEL, "PRI disabled")]
)
def test_a_miss_without_usable_pri_ends_no_pri(rid: str, why: str) -> None:
    m = Machine(default_topology())
    b = bind(m, rid, pasid=None, pri=why != "PRI disabled")
    t = m.start_dma(b.fn.rid, None, 0, PAGE, Perm.READ, now=0)
    assert t.status is DmaStatus.NO_PRI and t.faults == 0
    assert m.posted_page_requests == 0


def test_a_table_fault_with_pri_still_sends_the_request_and_gets_auto_invalid(accel: Bound) -> None:
    m = accel.machine
    t = m.start_dma(accel.fn.rid, 5, 0, PAGE, Perm.READ, now=0)
    accel.unit.clear_pasid_present(accel.fn.sid, 5)  # torn down while the request flies
    m.advance(1)
    assert t.status is DmaStatus.INVALID and t.faults == 1
    assert accel.unit.counters["hw_auto_responses_invalid"] == 1
    assert accel.unit.prq.is_empty


def test_function_without_pasid_sends_requests_without_pasid_via_rid_pasid() -> None:
    m = Machine(default_topology())
    b = bind(m, NO_PASID, pasid=None)
    with pytest.raises(ValueError, match="PASID"):
        m.start_dma(b.fn.rid, 3, 0, PAGE, Perm.READ, now=0)
    t = m.start_dma(b.fn.rid, None, 0, PAGE, Perm.READ, now=0)
    (r,) = fault_cycle(b, 1)
    assert not r.pasid_present and r.pasid == 0 and r.sid == 0x5B00
    b.s2.map(0, 0x4000, PAGE, Perm.READ)
    b.respond(r)
    m.advance(2)
    assert t.status is DmaStatus.OK


def test_overflow_auto_success_makes_the_function_retry_and_fault_again() -> None:
    from dataclasses import replace

    from hwmodel import TopologySpec

    topo = default_topology()
    m = Machine(
        TopologySpec(tuple(replace(u, prq_order=0) for u in topo.iommus), topo.functions),
        retry_backoff_ns=100,
    )
    b = bind(m, ACCEL)
    ts = [m.start_dma(b.fn.rid, 5, i * 64 * PAGE, PAGE, Perm.READ, now=0) for i in range(130)]
    m.advance(1)
    unit = b.unit
    assert unit.prq.used == 127 and unit.read_prs() & 2
    # 128th: full -> PRO + auto Success; 129th, 130th: PRO set -> dropped + auto Success.
    # Their first retry is immediate, faults again while PRO is still set: Success again.
    assert unit.counters["prq_overflows"] == 1 and unit.counters["prq_dropped"] == 5
    assert unit.counters["hw_auto_responses_success"] == 6
    retried = [t for t in ts if t.retries]
    assert len(retried) == 3 and all(t.retries == 2 and t.status is None for t in retried)
    reqs = b.drain_prq()  # ring empty, PRO cleared by software
    assert len(reqs) == 127
    m.advance(m.next_deadline() or 1)
    assert unit.prq.used == 3  # the three re-faulted and were queued this time


def test_pri_enable_refuses_unless_disabled_and_stopped_and_clamps_to_capacity() -> None:
    m = Machine(default_topology())
    pri = m.function(ACCEL).pri
    assert pri.stopped and not pri.enabled
    pri.enable(1 << 20)
    assert pri.allocation == 512  # min(capacity, reqs)
    with pytest.raises(PriError) as ei:
        pri.enable(4)
    assert ei.value.errno == "EBUSY"
    with pytest.raises(PriError):
        pri.do_reset()  # Reset needs Enable=0
    with pytest.raises(PriError) as ei:
        m.function(ATS_NO_PRI).pri.enable(4)
    assert ei.value.errno == "EOPNOTSUPP"


def test_atc_keeps_partial_permissions_and_a_write_to_a_read_page_faults(accel: Bound) -> None:
    m = accel.machine
    accel.s2.map(0, 0x40000, PAGE, Perm.READ)
    assert m.start_dma(accel.fn.rid, 5, 0, PAGE, Perm.READ, now=0).status is DmaStatus.OK
    assert accel.fn.atc[(5, 0)] == (0x40, Perm.READ)
    t = m.start_dma(accel.fn.rid, 5, 0, PAGE, Perm.WRITE, now=1)
    (r,) = fault_cycle(accel, 2)
    assert r.wr_req and not r.rd_req and t.faults == 1
    accel.s2.map(0, 0x40000, PAGE, RW)  # software upgrades the mapping
    accel.respond(r)
    m.advance(3)
    assert t.status is DmaStatus.OK and accel.fn.atc[(5, 0)] == (0x40, RW)
