"""The machine: posted requests, time, interrupts, completions, injection, exports."""

from __future__ import annotations

import pytest

import hwmodel
from hwmodel import (
    RESP_SUCCESS,
    DmaStatus,
    Machine,
    PageRequestDescriptor,
    Perm,
    Rid,
    default_topology,
)
from hwmodel.testing import ACCEL, ACCEL1, Bound, bind, response_for


def test_public_names_are_exported_and_importable() -> None:
    for name in hwmodel.__all__:
        assert getattr(hwmodel, name) is not None, name
    for required in (
        "Perm",
        "Rid",
        "PageRequestDescriptor",
        "PageGroupResponseDescriptor",
        "IotlbInvDescriptor",
        "DevTlbInvDescriptor",
        "InvWaitDescriptor",
        "PasidIotlbInvDescriptor",
        "PasidCacheInvDescriptor",
        "PasidDevTlbInvDescriptor",
        "ContextCacheInvDescriptor",
        "decode_inv_descriptor",
        "RESP_SUCCESS",
        "RESP_INVALID",
        "RESP_FAILURE",
        "IommuSpec",
        "FunctionSpec",
        "TopologySpec",
        "default_topology",
        "topology_from_dict",
        "load_topology",
        "generated_topology",
        "PageTable",
        "Pgtt",
        "PasidEntry",
        "IommuUnit",
        "Translation",
        "PageRequestQueue",
        "InvalidationQueue",
        "PciFunction",
        "PriCapability",
        "DmaStatus",
        "DmaTransfer",
        "Machine",
        "InvalidDescriptorError",
        "PriError",
    ):
        assert required in hwmodel.__all__, required


def test_posted_requests_make_the_deadline_now_and_advance_delivers_them(accel: Bound) -> None:
    m = accel.machine
    assert m.next_deadline() is None
    m.start_dma(accel.fn.rid, 5, 0, 0x1000, Perm.READ, now=500)
    assert m.next_deadline() == 500 and m.posted_page_requests == 1
    assert m.take_interrupts() == []
    m.advance(600)
    assert m.next_deadline() is None and m.now == 600
    assert m.take_interrupts() == [accel.unit] and m.take_interrupts() == []


def test_now_never_goes_backwards(accel: Bound) -> None:
    m = accel.machine
    m.advance(1000)
    m.advance(10)
    assert m.now == 1000


def test_interrupts_come_from_the_unit_that_queued(machine: Machine) -> None:
    a = bind(machine, ACCEL)
    b = bind(machine, ACCEL1)
    machine.start_dma(b.fn.rid, 5, 0, 0x1000, Perm.READ, now=0)
    machine.advance(1)
    assert machine.take_interrupts() == [b.unit]
    assert a.unit.prq.is_empty and b.unit.prq.used == 1


def test_injected_request_is_queued_and_its_response_absorbed_without_uprgi(accel: Bound) -> None:
    m = accel.machine
    d = PageRequestDescriptor(accel.fn.sid, True, 5, False, False, True, False, True, 77, 0xABC000)
    m.inject_page_request(accel.fn.rid, d, now=0)
    m.advance(1)
    (got,) = accel.drain_prq()
    assert got == d
    accel.respond(got, RESP_SUCCESS)
    assert not accel.fn.pri.unexpected_prgi
    assert accel.fn.counters["page_responses_to_injected"] == 1
    accel.respond(got, RESP_SUCCESS)  # a second answer matches nothing
    assert accel.fn.pri.unexpected_prgi
    with pytest.raises(ValueError, match="SID"):
        m.inject_page_request(
            accel.fn.rid,
            PageRequestDescriptor(0x1234, True, 5, False, False, True, False, True, 1, 0),
            now=2,
        )


def test_machine_counters_sum_units_and_functions(accel: Bound) -> None:
    m = accel.machine
    t = m.start_dma(accel.fn.rid, 5, 0, 0x2000, Perm.READ, now=0)
    m.advance(1)
    reqs = accel.drain_prq()
    accel.s2.map(0, 0x10000, 0x2000, Perm.READ)
    accel.unit.iq.submit([response_for(reqs[-1])])
    m.advance(2)
    assert t.status is DmaStatus.OK
    c = m.counters
    assert c["page_requests"] == 2 and c["prq_writes"] == 2
    assert c["iq_descriptors_page_group_response"] == 1
    assert c["dma_completed_ok"] == 1 and c["dma_started"] == 1 and c["retries"] == 1


def test_start_dma_rejects_malformed_requests(accel: Bound) -> None:
    m = accel.machine
    for args in ((0, 0), (0, -1)):
        with pytest.raises(ValueError):
            m.start_dma(accel.fn.rid, 5, args[0], args[1], Perm.READ, now=0)
    with pytest.raises(ValueError):
        m.start_dma(accel.fn.rid, 5, 0, 0x1000, Perm.PRIV, now=0)
    with pytest.raises(ValueError):
        m.start_dma(accel.fn.rid, 1 << 20, 0, 0x1000, Perm.READ, now=0)
    with pytest.raises(KeyError):
        m.start_dma(Rid.parse("0000:99:00.0"), 5, 0, 0x1000, Perm.READ, now=0)


def test_unaligned_transfer_counts_bytes_not_pages(accel: Bound) -> None:
    m = accel.machine
    accel.s2.map(0, 0x10000, 0x3000, Perm.READ)
    t = m.start_dma(accel.fn.rid, 5, 0x0FF0, 0x1020, Perm.READ, now=0)
    assert t.status is DmaStatus.OK and t.bytes == 0x1020
    assert accel.fn.counters["atc_misses"] == 3  # three pages touched


def test_many_machines_default_topology_is_fresh_each_time() -> None:
    a, b = Machine(default_topology()), Machine(default_topology())
    a.function(ACCEL).enable_ats()
    assert not b.function(ACCEL).ats_enabled
