"""The page request queue: ring geometry, PPR/PRO, events and Table 31 auto responses."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hwmodel import (
    PRS_PPR,
    PRS_PRO,
    RESP_INVALID,
    RESP_SUCCESS,
    IommuUnit,
    Machine,
    PageRequestDescriptor,
    PageTable,
    PasidEntry,
    Perm,
    Pgtt,
    TopologySpec,
    default_topology,
)
from hwmodel.testing import ACCEL, bind

SID = 0x3A00


def small_machine(order: int = 0) -> Machine:
    t = default_topology()
    iommus = tuple(replace(u, prq_order=order) for u in t.iommus)
    return Machine(TopologySpec(iommus, t.functions))


def unit_with_entry(order: int = 0) -> IommuUnit:
    unit = small_machine(order).iommus["dmar0"]
    unit.set_context(SID, present=True, pre=True)
    unit.set_pasid_entry(SID, 5, PasidEntry(True, 2, Pgtt.SECOND_STAGE, None, PageTable()))
    unit.set_pasid_entry(SID, None, PasidEntry(True, 2, Pgtt.SECOND_STAGE, None, PageTable()))
    return unit


def req(
    i: int = 0,
    *,
    lpig: bool = True,
    pasid: int | None = 5,
    rd: bool = True,
    wr: bool = False,
    sid: int = SID,
) -> PageRequestDescriptor:
    return PageRequestDescriptor(
        sid=sid,
        pasid_present=pasid is not None,
        pasid=pasid or 0,
        exe_req=False,
        pm_req=False,
        rd_req=rd,
        wr_req=wr,
        lpig=lpig,
        prg_index=i % 512,
        addr=(0x100 + i) << 12,
    )


def test_prq_order_0_has_128_slots_and_holds_127() -> None:
    unit = unit_with_entry(0)
    assert unit.prq.entries == 128 and unit.prq.capacity == 127
    assert Machine(default_topology()).iommus["dmar0"].prq.entries == 2048


def test_accepted_request_is_written_at_tail_sets_ppr_and_fires_one_event() -> None:
    unit = unit_with_entry()
    unit.receive_page_request(req(1))
    assert unit.prq.tail == 32 and unit.prq.head == 0
    assert unit.prq.read_descriptor(0) == req(1)
    assert bytes(unit.prq.ring[:32]) == req(1).encode()
    assert unit.read_prs() == PRS_PPR
    assert unit.irq_pending
    unit.irq_pending = False
    unit.receive_page_request(req(2))
    assert not unit.irq_pending  # PPR already set: no new event
    assert unit.counters["prq_interrupts"] == 1
    unit.write_prs_w1c(PRS_PPR)
    unit.receive_page_request(req(3))
    assert unit.irq_pending and unit.counters["prq_interrupts"] == 2


def test_masked_event_stays_pending_until_unmask_and_clearing_prs_cancels_it() -> None:
    unit = unit_with_entry()
    unit.write_pectl(im=True)
    unit.receive_page_request(req(1))
    assert not unit.irq_pending and unit.read_pectl() == (1 << 31) | (1 << 30)
    unit.write_pectl(im=False)
    assert unit.irq_pending and unit.read_pectl() == 0
    unit.irq_pending = False
    unit.write_pectl(im=True)
    unit.write_prs_w1c(PRS_PPR)
    unit.receive_page_request(req(2))
    assert unit.read_pectl() & (1 << 30)
    unit.write_prs_w1c(PRS_PPR | PRS_PRO)  # clearing PPR and PRO clears IP
    assert unit.read_pectl() == 1 << 31
    unit.write_pectl(im=False)
    assert not unit.irq_pending


def test_ring_wraps_around_with_byte_offsets_and_keeps_order() -> None:
    unit = unit_with_entry(0)
    prq = unit.prq
    seen = []
    for i in range(300):
        unit.receive_page_request(req(i, lpig=False))
        if i % 50 == 49:
            for off in prq.pending_offsets():
                seen.append(prq.read_descriptor(off).addr >> 12)
            prq.head = prq.tail
    assert seen == [0x100 + i for i in range(300)]
    assert prq.tail == (300 * 32) % 4096 and prq.tail % 32 == 0
    assert unit.counters["prq_overflows"] == 0


def test_full_ring_sets_pro_and_auto_answers_success_for_last_page_only() -> None:
    unit = unit_with_entry(0)
    for i in range(127):
        unit.receive_page_request(req(i, lpig=False))
    assert unit.prq.is_full and unit.prq.used == 127
    tail = unit.prq.tail
    unit.receive_page_request(req(200, lpig=False))  # full, not last: no response
    assert unit.read_prs() & PRS_PRO and unit.prq.tail == tail
    assert list(unit.auto_responses) == []
    unit.write_prs_w1c(PRS_PRO)
    unit.receive_page_request(req(201, lpig=True))  # full, last: auto Success
    assert unit.prq.tail == tail
    (resp,) = unit.auto_responses
    assert (resp.response_code, resp.prg_index, resp.sid, resp.pasid) == (RESP_SUCCESS, 201, SID, 5)
    assert unit.counters["prq_overflows"] == 2
    assert unit.counters["hw_auto_responses"] == 1


def test_full_condition_raises_the_event_only_if_prs_was_clear() -> None:
    unit = unit_with_entry(0)
    for i in range(127):
        unit.receive_page_request(req(i, lpig=False))
    unit.write_prs_w1c(PRS_PPR)
    unit.irq_pending = False
    unit.receive_page_request(req(300))
    assert unit.read_prs() == PRS_PRO and unit.irq_pending


def test_pro_set_drops_requests_without_event_even_with_room_and_answers_lpig() -> None:
    unit = unit_with_entry(0)
    for i in range(128):
        unit.receive_page_request(req(i, lpig=False))
    unit.prq.head = unit.prq.tail  # software drained, PRO still set
    unit.write_prs_w1c(PRS_PPR)
    unit.irq_pending = False
    unit.receive_page_request(req(400, lpig=False))
    unit.receive_page_request(req(401, lpig=True))
    assert unit.prq.is_empty and not unit.irq_pending
    assert [r.prg_index for r in unit.auto_responses] == [401]
    assert unit.auto_responses[0].response_code == RESP_SUCCESS
    assert unit.counters["prq_dropped"] == 2
    unit.write_prs_w1c(PRS_PRO)
    unit.receive_page_request(req(402))
    assert unit.prq.used == 1 and unit.irq_pending


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        ("no_context", "context_not_present"),
        ("pre_clear", "pre_clear"),
        ("no_entry", "pasid_entry_not_present"),
        ("not_present", "pasid_entry_not_present"),
        ("too_wide", "pasid_too_wide"),
        ("pasid0", "pasid_is_rid_pasid"),
    ],
)
def test_remapping_table_error_is_not_queued_and_gets_auto_invalid_for_lpig(
    setup: str, reason: str
) -> None:
    unit = unit_with_entry()
    pasid = 5
    if setup == "no_context":
        unit.set_context(SID, present=False, pre=True)
    elif setup == "pre_clear":
        unit.set_context(SID, present=True, pre=False)
    elif setup == "no_entry":
        unit.set_pasid_entry(SID, 5, None)
    elif setup == "not_present":
        unit.clear_pasid_present(SID, 5)
        assert unit.pasid_entry(SID, 5) is not None  # only P cleared
    elif setup == "too_wide":
        pasid = (1 << 20) - 1
        unit = Machine(
            TopologySpec((replace(default_topology().iommus[0], pasid_bits=8),), ())
        ).iommus["dmar0"]
        unit.set_context(SID, present=True, pre=True)
    elif setup == "pasid0":
        pasid = 0
    unit.receive_page_request(req(1, lpig=False, pasid=pasid))
    unit.receive_page_request(req(2, lpig=True, pasid=pasid))
    assert unit.prq.is_empty and unit.read_prs() == 0
    assert [(r.prg_index, r.response_code) for r in unit.auto_responses] == [(2, RESP_INVALID)]
    assert unit.counters["table_faults"] == 2
    assert unit.counters["hw_auto_responses"] == 1
    assert unit.fault_log[-1].reason == reason


def test_stop_marker_passes_through_the_ring_without_auto_response() -> None:
    unit = unit_with_entry()
    unit.receive_page_request(req(9, lpig=True, rd=False, wr=False))
    d = unit.prq.read_descriptor(0)
    assert d.is_stop_marker
    assert unit.counters["prq_stop_markers"] == 1
    unit.set_context(SID, present=False, pre=False)
    unit.receive_page_request(req(9, lpig=True, rd=False, wr=False))
    assert not unit.auto_responses  # a stop marker never needs a response


def test_request_without_pasid_walks_the_rid_pasid_entry() -> None:
    unit = unit_with_entry()
    unit.receive_page_request(req(1, pasid=None))
    assert unit.prq.used == 1
    d = unit.prq.read_descriptor(0)
    assert not d.pasid_present and d.pasid == 0
    unit.set_pasid_entry(SID, None, None)
    unit.receive_page_request(req(2, pasid=None))
    assert unit.prq.used == 1 and unit.auto_responses[-1].response_code == RESP_INVALID
    assert not unit.auto_responses[-1].pasid_present


@pytest.mark.parametrize("pgtt", [Pgtt.SECOND_STAGE, Pgtt.FIRST_STAGE, Pgtt.NESTED])
def test_accepting_a_request_invalidates_the_iotlb_for_that_address(pgtt: Pgtt) -> None:
    m = small_machine()
    b = bind(m, ACCEL, pgtt=pgtt)
    unit = b.unit
    addr = 0x100 << 12
    if pgtt == Pgtt.NESTED:
        b.s1.map(addr, 0x40000, 0x1000, Perm.READ)
        b.s2.map(0x40000, 0x80000, 0x1000, Perm.READ)
    elif pgtt == Pgtt.FIRST_STAGE:
        b.s1.map(addr, 0x80000, 0x1000, Perm.READ)
    else:
        b.s2.map(addr, 0x80000, 0x1000, Perm.READ)
    assert unit.translate(SID, 5, addr, Perm.READ).ok
    (b.s1 if pgtt != Pgtt.SECOND_STAGE else b.s2).unmap(addr, 0x1000)
    assert unit.translate(SID, 5, addr, Perm.READ).ok  # stale IOTLB hit
    unit.receive_page_request(req(0))
    assert not unit.translate(SID, 5, addr, Perm.READ).ok


def test_software_head_write_must_be_a_slot_inside_the_ring() -> None:
    unit = unit_with_entry(0)
    for bad in (16, 4096, -32):
        with pytest.raises(ValueError):
            unit.prq.head = bad
    unit.prq.head = 4064
    assert unit.prq.head == 4064
