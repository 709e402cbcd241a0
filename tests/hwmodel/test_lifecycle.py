"""Hot removal, hot plug and function-level reset (vtd-hw.md 6.4, SPEC 7.9)."""

from __future__ import annotations

import pytest

from hwmodel import (
    RESP_SUCCESS,
    DmaStatus,
    Machine,
    PasidDevTlbInvDescriptor,
    Perm,
    default_topology,
)
from hwmodel.testing import ACCEL, NIC_PF, NIC_VF0, Bound, bind, response_for

PAGE = 0x1000


def test_hot_removal_in_the_middle_of_outstanding_requests(accel: Bound) -> None:
    m = accel.machine
    waiting = m.start_dma(accel.fn.rid, 5, 0, 2 * PAGE, Perm.READ, now=0)
    m.advance(1)
    reqs = accel.drain_prq()  # queued and read by software, not answered
    posted = m.start_dma(accel.fn.rid, 5, 0x100000, PAGE, Perm.READ, now=2)  # still on link
    m.hot_remove(accel.fn.rid, now=3)
    assert waiting.status is DmaStatus.REMOVED and posted.status is DmaStatus.REMOVED
    assert accel.fn.pri.outstanding == 0 and not accel.fn.pri.enabled
    assert not accel.fn.present and not accel.fn.atc
    m.advance(4)  # the posted request never arrives
    assert accel.unit.prq.is_empty and m.counters["page_requests_lost"] == 1
    accel.respond(reqs[-1], RESP_SUCCESS)  # late answer: dropped by the root port
    accel.unit.iq.submit([PasidDevTlbInvDescriptor(accel.fn.sid, 5)])
    assert accel.unit.counters["page_responses_to_absent"] == 1
    assert accel.unit.counters["dev_tlb_inv_to_absent"] == 1
    t = m.start_dma(accel.fn.rid, 5, 0, PAGE, Perm.READ, now=5)
    assert t.status is DmaStatus.REMOVED
    assert {x.id for x in m.take_completed()} == {waiting.id, posted.id, t.id}


def test_hot_plug_brings_the_function_back_fresh(accel: Bound) -> None:
    m = accel.machine
    m.start_dma(accel.fn.rid, 5, 0, PAGE, Perm.READ, now=0)
    m.hot_remove(accel.fn.rid, now=1)
    m.hot_plug(accel.fn.rid, now=2)
    fn = accel.fn
    assert fn.present and not fn.ats_enabled and not fn.pasid_enabled
    assert not fn.pri.enabled and fn.pri.stopped and fn.pri.outstanding == 0
    assert fn.outstanding_groups == 0
    b = bind(m, ACCEL)  # the driver probes it again
    t = m.start_dma(b.fn.rid, 5, 0, PAGE, Perm.READ, now=3)
    assert t.faults == 1


def test_removing_a_pf_removes_its_vfs_and_plugging_a_vf_needs_the_pf() -> None:
    m = Machine(default_topology())
    vf = bind(m, NIC_VF0, pasid=7)
    t = m.start_dma(vf.fn.rid, 7, 0, PAGE, Perm.READ, now=0)
    m.hot_remove(m.function(NIC_PF).rid, now=1)
    assert not vf.fn.present and t.status is DmaStatus.REMOVED
    with pytest.raises(ValueError):
        m.hot_plug(vf.fn.rid, now=2)
    m.hot_plug(m.function(NIC_PF).rid, now=2)
    assert vf.fn.present


def test_flr_resets_pri_cancels_requests_and_discards_their_late_responses(accel: Bound) -> None:
    m = accel.machine
    t = m.start_dma(accel.fn.rid, 5, 0, PAGE, Perm.READ, now=0)
    m.advance(1)
    (r,) = accel.drain_prq()
    accel.s2.map(0x10000, 0x90000, PAGE, Perm.READ)
    m.start_dma(accel.fn.rid, 5, 0x10000, PAGE, Perm.READ, now=1)
    assert accel.fn.atc
    accel.respond(r, 0xF)  # RF set
    assert accel.fn.pri.response_failure
    m.flr(accel.fn.rid, now=2)
    pri = accel.fn.pri
    assert t.status is DmaStatus.FAILURE
    assert not pri.enabled and not pri.response_failure and not pri.unexpected_prgi
    assert pri.outstanding == 0 and pri.stopped and not accel.fn.atc
    assert accel.fn.ats_enabled and accel.fn.pasid_enabled  # restored, as Linux does
    pri.enable(64)
    t2 = m.start_dma(accel.fn.rid, 5, 0x200000, PAGE, Perm.READ, now=3)
    m.advance(4)
    (r2,) = accel.drain_prq()
    accel.fn.iommu.iq.submit([response_for(r2, 0x1)])
    assert t2.status is DmaStatus.INVALID


def test_flr_in_flight_group_response_is_discarded_silently_not_uprgi(accel: Bound) -> None:
    m = accel.machine
    t = m.start_dma(accel.fn.rid, 5, 0, PAGE, Perm.READ, now=0)
    m.advance(1)
    (r,) = accel.drain_prq()
    m.flr(accel.fn.rid, now=2)
    assert t.status is DmaStatus.FAILURE
    accel.respond(r)
    assert not accel.fn.pri.unexpected_prgi
    assert accel.fn.counters["page_responses_discarded"] == 1


def test_credits_returned_by_a_removed_vf_wake_transfers_of_the_pf() -> None:
    m = Machine(default_topology())
    pf = bind(m, NIC_PF, pasid=3, did=3, reqs=1)
    vf = bind(m, NIC_VF0, pasid=4, did=4)
    tv = m.start_dma(vf.fn.rid, 4, 0, PAGE, Perm.READ, now=0)
    tp = m.start_dma(pf.fn.rid, 3, 0, PAGE, Perm.READ, now=0)
    assert tv.faults == 1 and tp.waiting == "credits"
    m.hot_remove(vf.fn.rid, now=1)
    assert tv.status is DmaStatus.REMOVED and pf.fn.pri.outstanding == 0
    m.advance(2)
    assert tp.faults == 1 and tp.waiting == "response"


def test_stop_dma_ends_transfers_removed_but_keeps_their_requests_outstanding() -> None:
    from hwmodel import DmaStatus, Machine, Perm, default_topology
    from hwmodel.testing import bind, response_for

    m = Machine(default_topology())
    b = bind(m, "0000:3a:00.0", pasid=5)
    t = m.start_dma(b.fn.rid, 5, 0x10_0000, 4096, Perm.READ, 0)
    m.advance(0)
    sent = b.unit.prq.used
    assert sent == 1 and b.fn.pri.outstanding == 1
    m.stop_dma(b.fn.rid, 1)
    assert t.status is DmaStatus.REMOVED
    # The request it sent is still outstanding: its credit comes back with the answer.
    assert b.fn.pri.outstanding == 1
    desc = b.unit.prq.read_descriptor(b.unit.prq.head)
    b.unit.iq.submit([response_for(desc, 0)])
    assert b.fn.pri.outstanding == 0
    assert not b.fn.pri.unexpected_prgi
    assert b.fn.counters["page_responses_after_stop"] == 1
