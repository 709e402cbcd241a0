"""The invalidation queue: in-order execution, counters, IQE, wait with SW/IF/PD."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hwmodel import (
    IOTLB_G_DSI,
    PC_G_PASID,
    ContextCacheInvDescriptor,
    InvalidDescriptorError,
    InvWaitDescriptor,
    IotlbInvDescriptor,
    Machine,
    PageGroupResponseDescriptor,
    PasidCacheInvDescriptor,
    PasidDevTlbInvDescriptor,
    PasidIotlbInvDescriptor,
    Perm,
    TopologySpec,
    default_topology,
)
from hwmodel.testing import ACCEL1, Bound, bind


def test_descriptors_execute_in_order_and_are_counted_by_type(accel: Bound) -> None:
    iq = accel.unit.iq
    iq.submit(
        [
            ContextCacheInvDescriptor(1),
            PasidCacheInvDescriptor(PC_G_PASID, 2, 5),
            IotlbInvDescriptor(IOTLB_G_DSI, did=2),
            PasidIotlbInvDescriptor(2, 2, 5),
            PasidDevTlbInvDescriptor(0x3A00, 5),
            InvWaitDescriptor(status_data=7, status_addr=0x40),
        ]
    )
    c = accel.unit.counters
    for name in ("context_cache", "pasid_cache", "iotlb", "pasid_iotlb", "pasid_dev_tlb", "wait"):
        assert c[f"iq_descriptors_{name}"] == 1, name
    assert iq.head == iq.tail == 6 * 32
    assert iq.status_memory == {0x40: 7}


def test_the_ring_wraps_and_a_batch_larger_than_the_ring_still_runs(accel: Bound) -> None:
    iq = accel.unit.iq
    iq.submit([InvWaitDescriptor(status_data=i, status_addr=0x100) for i in range(600)])
    assert iq.head == iq.tail == (600 * 32) % (256 * 32)
    assert iq.status_memory[0x100] == 599
    assert accel.unit.counters["iq_descriptors_wait"] == 600


def test_invalid_descriptor_sets_iqe_leaves_head_on_it_and_stops_the_queue(accel: Bound) -> None:
    iq = accel.unit.iq
    bad = IotlbInvDescriptor(granularity=0, did=2)  # G=0 is reserved
    with pytest.raises(InvalidDescriptorError) as ei:
        iq.submit(
            [
                InvWaitDescriptor(status_data=1, status_addr=0x8),
                bad,
                InvWaitDescriptor(status_data=2, status_addr=0x10),
            ]
        )
    assert ei.value.offset == 32 and iq.iqe and iq.head == 32 and iq.tail == 96
    assert iq.status_memory == {0x8: 1}  # nothing after the bad one ran
    with pytest.raises(InvalidDescriptorError, match="IQE"):
        iq.submit([InvWaitDescriptor(status_data=3, status_addr=0x18)])
    iq.clear_iqe()  # Linux qi_check_fault recovery
    assert not iq.iqe and iq.status_memory[0x10] == 2 and iq.head == iq.tail
    assert accel.unit.counters["iq_errors"] == 1


def test_page_group_response_on_a_unit_without_prs_is_invalid() -> None:
    t = default_topology()
    m = Machine(TopologySpec((replace(t.iommus[0], prs=False), t.iommus[1]), t.functions))
    with pytest.raises(InvalidDescriptorError, match="PRS"):
        m.iommus["dmar0"].iq.submit([PageGroupResponseDescriptor(0x3A00, True, 5, 0, 1)])
    assert m.iommus["dmar0"].iq.iqe


def test_page_drain_bit_is_reserved_without_pds() -> None:
    t = default_topology()
    m = Machine(TopologySpec((replace(t.iommus[0], pds=False), t.iommus[1]), t.functions))
    with pytest.raises(InvalidDescriptorError, match="PDS"):
        m.iommus["dmar0"].iq.submit([InvWaitDescriptor(pd=True)])


def test_wait_with_if_sets_iwc() -> None:
    m = Machine(default_topology())
    iq = m.iommus["dmar0"].iq
    iq.submit([InvWaitDescriptor(sw=False, if_flag=True)])
    assert iq.iwc and not iq.status_memory


def test_wait_with_pd_delivers_requests_already_posted_before_completing(accel: Bound) -> None:
    m = accel.machine
    other = bind(m, ACCEL1)
    t = m.start_dma(accel.fn.rid, 5, 0, 2 * 0x1000, Perm.READ, now=0)
    m.start_dma(other.fn.rid, 5, 0, 0x1000, Perm.READ, now=0)
    assert t.faults == 2 and accel.unit.prq.is_empty
    accel.unit.iq.submit([InvWaitDescriptor(status_data=1, status_addr=0x20)])
    assert accel.unit.prq.is_empty  # without PD nothing is pushed out
    accel.drain_wait()
    assert accel.unit.prq.used == 2  # dmar0's requests are in its PRQ
    assert accel.unit.iq.status_memory[0x1000] == 1
    assert other.unit.prq.is_empty and m.posted_page_requests == 1  # dmar1 untouched
    assert accel.unit.counters["iq_drains"] == 1


def test_response_and_drain_in_one_batch_keep_submission_order(accel: Bound) -> None:
    m = accel.machine
    t = m.start_dma(accel.fn.rid, 5, 0, 0x1000, Perm.READ, now=0)
    accel.drain_wait()
    (r,) = accel.drain_prq()
    accel.s2.map(0, 0x5000, 0x1000, Perm.READ)
    accel.unit.iq.submit(
        [
            PageGroupResponseDescriptor(r.sid, True, 5, 0, r.prg_index),
            InvWaitDescriptor(pd=True, status_data=1, status_addr=0x30),
        ]
    )
    assert t.waiting == "retry"  # the response reached the function before the wait
    m.advance(1)
    assert t.status is not None and t.status.value == "ok"


def test_encode_errors_reach_software_before_anything_is_queued(accel: Bound) -> None:
    iq = accel.unit.iq
    with pytest.raises(ValueError):
        iq.submit([InvWaitDescriptor(), IotlbInvDescriptor(2, did=1 << 16)])
    assert iq.head == iq.tail == 0 and not iq.iqe


def test_page_group_response_is_routed_by_sid_on_its_own_unit_only(machine: Machine) -> None:
    a = bind(machine, "0000:3a:00.0")
    other = bind(machine, ACCEL1)  # behind dmar1
    t = machine.start_dma(other.fn.rid, 5, 0, 0x1000, Perm.READ, now=0)
    machine.advance(1)
    (r,) = other.drain_prq()
    a.unit.iq.submit([PageGroupResponseDescriptor(r.sid, True, 5, 1, r.prg_index)])
    assert t.waiting == "response"  # dmar0 has no function with that SID
    assert a.unit.counters["page_responses_to_absent"] == 1
    other.unit.iq.submit([PageGroupResponseDescriptor(r.sid, True, 5, 1, r.prg_index)])
    assert t.status is not None and t.status.value == "invalid"


@pytest.mark.parametrize(
    ("word", "bit"), [(0, 5), (0, 8), (0, 52), (0, 63), (1, 0), (1, 1), (1, 12), (2, 0), (3, 63)]
)
def test_page_group_response_with_a_reserved_bit_halts_the_queue(
    accel: Bound, word: int, bit: int
) -> None:
    """The IQ reads responses straight from ring memory; it must refuse exactly what
    the descriptor's decoder refuses (QEMU's reserved masks, vtd-hw.md 3.1)."""
    iq = accel.unit.iq
    image = bytearray(PageGroupResponseDescriptor(0x3A00, True, 5, 0, 1).encode())
    image[word * 8 + bit // 8] |= 1 << (bit % 8)
    with pytest.raises(InvalidDescriptorError):
        iq.submit_images([bytes(image)])
    assert iq.iqe and iq.head == 0
    assert accel.unit.counters["iq_descriptors_page_group_response"] == 0


@pytest.mark.parametrize(("word", "bit"), [(0, 8), (0, 31), (1, 0), (1, 1), (2, 7), (3, 0)])
def test_wait_with_a_reserved_bit_halts_the_queue(accel: Bound, word: int, bit: int) -> None:
    iq = accel.unit.iq
    image = bytearray(InvWaitDescriptor(status_data=7, status_addr=0x40).encode())
    image[word * 8 + bit // 8] |= 1 << (bit % 8)
    with pytest.raises(InvalidDescriptorError):
        iq.submit_images([bytes(image)])
    assert iq.iqe and iq.status_memory == {}


def test_response_tap_sees_each_executed_response_whole(accel: Bound) -> None:
    seen: list[PageGroupResponseDescriptor] = []
    accel.unit.response_tap = seen.append
    resp = PageGroupResponseDescriptor(0x3A00, True, 5, 1, 7)
    accel.unit.iq.submit([resp, InvWaitDescriptor()])
    assert seen == [resp]
