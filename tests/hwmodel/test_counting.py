"""Per-fault counts in plain dicts, and the unit's memory of checked entries: speed-ups
that must never show (``hwmodel/counting.py``, ``IommuUnit._valid_entries``)."""

from __future__ import annotations

from collections import Counter

import pytest

from hwmodel import (
    RESP_INVALID,
    PageRequestDescriptor,
    PageTable,
    PasidEntry,
    Perm,
    Pgtt,
    default_topology,
)
from hwmodel.counting import HotCounts
from hwmodel.machine import Machine
from hwmodel.testing import ACCEL, bind

SID = 0x3A00


def test_hot_counts_fold_into_the_counter_on_read_and_add_no_zero_keys() -> None:
    counts = HotCounts(dict.fromkeys(("a", "b"), 0))
    counts.cold["a"] += 2
    counts.cold["c"] += 1
    counts.hot["a"] += 3
    folded = counts.folded()
    assert folded is counts.cold  # one Counter, whoever reads it
    assert folded == Counter({"a": 5, "c": 1})
    assert "b" not in folded  # a hot key never counted does not appear
    assert counts.hot == {"a": 0, "b": 0}
    counts.hot["b"] += 1
    assert counts.folded()["b"] == 1 and counts.folded()["a"] == 5  # folded once


def test_a_function_and_its_unit_show_per_fault_counts_through_counters() -> None:
    m = Machine(default_topology())
    b = bind(m, ACCEL)
    t = m.start_dma(b.fn.rid, 5, 0, 0x1000, Perm.READ, now=1)
    m.advance(2)
    (req,) = b.drain_prq()
    b.s2.map(req.addr, req.addr, 0x1000, Perm.READ | Perm.WRITE)
    b.respond(req)
    m.advance(3)
    fn_counts = b.fn.counters
    assert fn_counts["dma_started"] == 1 and fn_counts["page_requests"] == 1
    assert fn_counts["atc_misses"] == fn_counts["ats_translation_requests"] == 2
    assert fn_counts["retries"] == 1 and fn_counts["dma_completed_ok"] == 1
    unit_counts = b.unit.counters
    assert unit_counts["page_requests_received"] == unit_counts["prq_writes"] == 1
    assert unit_counts["prq_interrupts"] == 1 and unit_counts["iotlb_misses"] == 2
    assert unit_counts["iq_descriptors_page_group_response"] == 1
    assert b.unit.iq.counters is unit_counts  # the IQ counts on its unit
    total = m.counters
    assert total["page_requests"] == 1 and total["dma_pages"] == 1
    assert total["dma_completed_ok"] == 1
    assert t.status is not None and t.status.value == "ok"


def _unit_with_mapping() -> tuple[Machine, PageTable]:
    m = Machine(default_topology())
    unit = m.iommus["dmar0"]
    s2 = PageTable()
    s2.map(0x1000, 0x5000, 0x1000, Perm.READ | Perm.WRITE)
    unit.set_context(SID, present=True, pre=True)
    unit.set_pasid_entry(SID, 5, PasidEntry(True, 2, Pgtt.SECOND_STAGE, None, s2))
    return m, s2


@pytest.mark.parametrize("change", ["clear_present", "remove_entry", "context_absent"])
def test_a_table_write_is_seen_by_the_next_translation(change: str) -> None:
    m, _s2 = _unit_with_mapping()
    unit = m.iommus["dmar0"]
    assert unit.translate(SID, 5, 0x1000, Perm.READ).ok  # the entry passed the checks
    if change == "clear_present":
        unit.clear_pasid_present(SID, 5)
    elif change == "remove_entry":
        unit.set_pasid_entry(SID, 5, None)
    else:
        unit.set_context(SID, present=False, pre=False)
    unit.inv_iotlb_global()  # no cached translation either: only the tables answer
    tr = unit.translate(SID, 5, 0x1000, Perm.READ)
    assert not tr.ok and tr.table_fault


def test_a_replaced_pasid_entry_translates_through_its_new_table() -> None:
    m, _s2 = _unit_with_mapping()
    unit = m.iommus["dmar0"]
    assert unit.translate(SID, 5, 0x1000, Perm.READ).addr == 0x5000
    other = PageTable()
    other.map(0x1000, 0x9000, 0x1000, Perm.READ)
    unit.set_pasid_entry(SID, 5, PasidEntry(True, 3, Pgtt.SECOND_STAGE, None, other))
    assert unit.translate(SID, 5, 0x1000, Perm.READ).addr == 0x9000


def test_pre_cleared_after_an_accepted_request_makes_the_next_one_a_table_fault() -> None:
    m, _s2 = _unit_with_mapping()
    unit = m.iommus["dmar0"]
    answers: list[int] = []
    unit.response_tap = lambda resp: answers.append(resp.response_code)

    def req(prgi: int) -> PageRequestDescriptor:
        return PageRequestDescriptor(SID, True, 5, False, False, True, False, True, prgi, 0x1000)

    unit.receive_page_request(req(1))
    assert unit.prq.used == 1 and not answers
    unit.set_context(SID, present=True, pre=False)
    unit.receive_page_request(req(2))
    assert unit.prq.used == 1 and answers == [RESP_INVALID]
    assert unit.counters["table_faults"] == 1
