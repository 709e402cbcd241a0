"""Translation, the IOTLB and the ATC: real caches that stay stale until the right
invalidation descriptor executes (vtd-hw.md 5.4), and nested walks."""

from __future__ import annotations

import gc

import pytest

from hwmodel import (
    IOTLB_G_DSI,
    IOTLB_G_GLOBAL,
    IOTLB_G_PSI,
    PIOTLB_G_PASID,
    PIOTLB_G_PSI,
    DevTlbInvDescriptor,
    DmaStatus,
    IotlbInvDescriptor,
    Machine,
    PageTable,
    PasidDevTlbInvDescriptor,
    PasidEntry,
    PasidIotlbInvDescriptor,
    Perm,
    Pgtt,
    default_topology,
    dev_tlb_encode_range,
)
from hwmodel.testing import ACCEL, LEGACY, Bound, bind

RW = Perm.READ | Perm.WRITE
SID = 0x3A00


def test_second_stage_translation_and_permissions(accel: Bound) -> None:
    accel.s2.map(0x10000, 0x80000, 0x2000, Perm.READ)
    tr = accel.unit.translate(SID, 5, 0x10123, Perm.READ)
    assert tr.ok and tr.addr == 0x80123 and tr.perm == Perm.READ
    tr = accel.unit.translate(SID, 5, 0x11000, Perm.WRITE)
    assert not tr.ok and not tr.table_fault and tr.reason == "permission"
    tr = accel.unit.translate(SID, 5, 0x12000, Perm.READ)
    assert not tr.ok and tr.reason == "not_mapped"
    tr = accel.unit.translate(SID, 6, 0x10000, Perm.READ)
    assert not tr.ok and tr.table_fault


@pytest.mark.parametrize(
    ("desc", "gone"),
    [
        (IotlbInvDescriptor(IOTLB_G_PSI, did=2, addr=0x10000, am=0), True),
        (IotlbInvDescriptor(IOTLB_G_PSI, did=2, addr=0x13000, am=3), True),  # 0x10000-0x17fff
        (IotlbInvDescriptor(IOTLB_G_PSI, did=2, addr=0x11000, am=0), False),  # other page
        (IotlbInvDescriptor(IOTLB_G_PSI, did=3, addr=0x10000, am=0), False),  # other DID
        (IotlbInvDescriptor(IOTLB_G_DSI, did=2), True),
        (IotlbInvDescriptor(IOTLB_G_DSI, did=3), False),
        (IotlbInvDescriptor(IOTLB_G_GLOBAL), True),
        (PasidIotlbInvDescriptor(PIOTLB_G_PASID, did=2, pasid=5), False),  # S2 is tagged by DID
    ],
)
def test_second_stage_iotlb_is_stale_until_a_matching_did_invalidation(
    accel: Bound, desc: object, gone: bool
) -> None:
    unit = accel.unit
    accel.s2.map(0x10000, 0x80000, 0x1000, RW)
    assert unit.translate(SID, 5, 0x10000, Perm.READ).ok
    accel.s2.unmap(0x10000, 0x1000)
    assert unit.translate(SID, 5, 0x10000, Perm.READ).ok  # stale hit
    assert unit.counters["iotlb_hits"] == 1
    unit.iq.submit([desc])  # type: ignore[list-item]
    assert unit.translate(SID, 5, 0x10000, Perm.READ).ok is not gone


@pytest.mark.parametrize(
    ("desc", "gone"),
    [
        (PasidIotlbInvDescriptor(PIOTLB_G_PSI, did=2, pasid=5, addr=0x10000), True),
        (PasidIotlbInvDescriptor(PIOTLB_G_PASID, did=2, pasid=5), True),
        (PasidIotlbInvDescriptor(PIOTLB_G_PASID, did=2, pasid=6), False),  # other PASID
        (PasidIotlbInvDescriptor(PIOTLB_G_PASID, did=3, pasid=5), False),  # other DID
        (PasidIotlbInvDescriptor(PIOTLB_G_PSI, did=2, pasid=5, addr=0x20000), False),
        (IotlbInvDescriptor(IOTLB_G_DSI, did=2), False),  # first-stage needs P_IOTLB
        (IotlbInvDescriptor(IOTLB_G_GLOBAL), True),
    ],
)
def test_first_stage_iotlb_is_tagged_by_did_and_pasid(desc: object, gone: bool) -> None:
    m = Machine(default_topology())
    b = bind(m, ACCEL, pgtt=Pgtt.FIRST_STAGE)
    b.s1.map(0x10000, 0x80000, 0x1000, RW)
    assert b.unit.translate(SID, 5, 0x10000, Perm.READ).ok
    b.s1.unmap(0x10000, 0x1000)
    assert b.unit.translate(SID, 5, 0x10000, Perm.READ).ok
    b.unit.iq.submit([desc])  # type: ignore[list-item]
    assert b.unit.translate(SID, 5, 0x10000, Perm.READ).ok is not gone


def test_nested_walk_goes_s1_then_s2_and_intersects_permissions() -> None:
    m = Machine(default_topology())
    b = bind(m, ACCEL, pgtt=Pgtt.NESTED)
    b.s1.map(0x10000, 0x40000, 0x3000, Perm.READ | Perm.WRITE | Perm.EXEC)
    b.s2.map(0x40000, 0x900000, 0x1000, Perm.READ)  # gpa page 0x40 read-only
    b.s2.map(0x41000, 0x901000, 0x1000, RW)
    unit = b.unit
    tr = unit.translate(SID, 5, 0x10010, Perm.READ)
    assert tr.ok and tr.addr == 0x900010
    assert tr.perm == Perm.READ | Perm.EXEC  # W cut by S2, X only from S1
    assert not unit.translate(SID, 5, 0x10000, Perm.WRITE).ok
    assert unit.translate(SID, 5, 0x11000, Perm.WRITE).ok
    assert not unit.translate(SID, 5, 0x12000, Perm.READ).ok  # S1 maps it, S2 does not


def test_nested_entries_drop_on_any_iotlb_psi_for_their_did() -> None:
    m = Machine(default_topology())
    b = bind(m, ACCEL, pgtt=Pgtt.NESTED)
    b.s1.map(0x10000, 0x40000, 0x1000, RW)
    b.s2.map(0x40000, 0x900000, 0x1000, RW)
    assert b.unit.translate(SID, 5, 0x10000, Perm.READ).ok
    b.s2.unmap(0x40000, 0x1000)  # S2 (parent) unmap at a GPA
    assert b.unit.translate(SID, 5, 0x10000, Perm.READ).ok
    b.unit.iq.submit([IotlbInvDescriptor(IOTLB_G_PSI, did=2, addr=0x40000)])
    assert not b.unit.translate(SID, 5, 0x10000, Perm.READ).ok


def test_pass_through_is_identity() -> None:
    m = Machine(default_topology())
    b = bind(m, ACCEL, pgtt=Pgtt.PASS_THROUGH)
    tr = b.unit.translate(SID, 5, 0x1234_5678, Perm.WRITE)
    assert tr.ok and tr.addr == 0x1234_5678


def test_nested_needs_ecap_nest_and_both_tables() -> None:
    m = Machine(default_topology())
    b = bind(m, ACCEL)
    b.unit.set_pasid_entry(SID, 5, PasidEntry(True, 2, Pgtt.NESTED, None, b.s2))
    assert b.unit.translate(SID, 5, 0, Perm.READ).table_fault


def _atc_setup() -> tuple[Bound, Bound]:
    m = Machine(default_topology())
    b5 = bind(m, ACCEL, pasid=5, did=2)
    b6 = bind(m, ACCEL, pasid=6, did=3)
    for b in (b5, b6):
        b.s2.map(0x10000, 0x80000, 0x1000, RW)
        t = m.start_dma(b.fn.rid, b.pasid, 0x10000, 0x1000, Perm.READ, now=0)
        assert t.status is DmaStatus.OK
    assert (5, 0x10) in b5.fn.atc and (6, 0x10) in b5.fn.atc
    for b in (b5, b6):
        b.s2.unmap(0x10000, 0x1000)
        b.unit.iq.submit([IotlbInvDescriptor(IOTLB_G_DSI, did=b.did)])
    return b5, b6


def _dma_ok(b: Bound) -> bool:
    t = b.machine.start_dma(b.fn.rid, b.pasid, 0x10000, 0x1000, Perm.READ, now=1)
    return t.status is DmaStatus.OK


def test_atc_is_stale_after_unmap_and_iotlb_flush_until_dev_tlb_invalidation() -> None:
    b5, _ = _atc_setup()
    hits = b5.fn.counters["atc_hits"]
    assert _dma_ok(b5)  # stale ATC: the DMA still succeeds
    assert b5.fn.counters["atc_hits"] == hits + 1
    b5.unit.iq.submit([PasidDevTlbInvDescriptor(sid=SID, pasid=5, addr=0x10000)])
    assert not _dma_ok(b5)


@pytest.mark.parametrize(
    ("desc", "gone5", "gone6"),
    [
        (PasidDevTlbInvDescriptor(sid=SID, pasid=5, addr=0x10000), True, False),
        (PasidDevTlbInvDescriptor(sid=SID, pasid=6, addr=0x10000), False, True),
        (PasidDevTlbInvDescriptor(sid=SID, pasid=5, addr=0x11000), False, False),
        (PasidDevTlbInvDescriptor(sid=0x3B00, pasid=5, addr=0x10000), False, False),  # other SID
        (PasidDevTlbInvDescriptor(sid=SID, pasid=7, addr=0x10000, g=True), True, True),
        (PasidDevTlbInvDescriptor(SID, 5, *dev_tlb_encode_range(0, 52)), True, False),
        (PasidDevTlbInvDescriptor(SID, 5, *dev_tlb_encode_range(0x10000, 4)), True, False),
        (PasidDevTlbInvDescriptor(SID, 5, *dev_tlb_encode_range(0x20000, 4)), False, False),
        (DevTlbInvDescriptor(sid=SID, addr=0x10000), False, False),  # no-PASID entries only
    ],
)
def test_dev_tlb_invalidation_hits_only_its_sid_pasid_and_range(
    desc: object, gone5: bool, gone6: bool
) -> None:
    b5, b6 = _atc_setup()
    b5.unit.iq.submit([desc])  # type: ignore[list-item]
    assert ((5, 0x10) not in b5.fn.atc) is gone5
    assert ((6, 0x10) not in b5.fn.atc) is gone6


def test_dev_tlb_without_pasid_invalidates_requests_without_pasid() -> None:
    m = Machine(default_topology())
    b = bind(m, ACCEL, pasid=None)
    b.s2.map(0, 0x80000, 0x1000, RW)
    assert m.start_dma(b.fn.rid, None, 0, 0x1000, Perm.READ, now=0).status is DmaStatus.OK
    assert (None, 0) in b.fn.atc
    b.unit.iq.submit([DevTlbInvDescriptor(SID, *dev_tlb_encode_range(0, 52))])
    assert (None, 0) not in b.fn.atc


def test_function_without_ats_translates_each_access_through_the_iotlb() -> None:
    m = Machine(default_topology())
    b = bind(m, LEGACY, pasid=None)
    b.s2.map(0, 0x80000, 0x2000, RW)
    t = m.start_dma(b.fn.rid, None, 0, 0x2000, Perm.WRITE, now=0)
    assert t.status is DmaStatus.OK and not b.fn.atc
    assert b.fn.counters["untranslated_requests"] == 2


def test_iotlb_is_bounded_and_evicts_oldest(accel: Bound) -> None:
    unit = accel.unit
    unit.iotlb_entries = 8
    accel.s2.map(0, 0x100000, 16 * 0x1000, RW)
    for i in range(16):
        assert unit.translate(SID, 5, i << 12, Perm.READ).ok
    assert unit.iotlb_size == 8 and unit.counters["iotlb_evictions"] == 8
    assert not unit.iotlb_cached(2, None, 0) and unit.iotlb_cached(2, None, 15)


def test_page_table_entries_are_left_alone_by_the_cyclic_collector() -> None:
    """A mapped page is a tuple of two ints: the collector untracks it, so a full
    collection with a million pages mapped does not walk them all."""
    pt = PageTable()
    pt.map(0x10000, 0x20000, 64 * 4096, Perm.READ | Perm.WRITE)
    gc.collect()
    assert not any(gc.is_tracked(v) for v in pt._pages.values())
    assert pt.lookup(0x10000) == (0x20000, Perm.READ | Perm.WRITE)
