"""Invalidation (seed 002): one sorted tag list per domain, the minimum descriptors."""

from __future__ import annotations

import pytest

from hwmodel import IommuSpec, TopologySpec, default_topology, generated_topology
from iopfd.core import CoreError
from iopfd.core.intel.cache import CacheTagList, TagType, psi_aligned
from iopfd.core.testing import (
    ACCEL,
    ACCEL1,
    LEGACY,
    NIC_PF,
    RW,
    Env,
    check_invariants,
    check_no_stale_translation,
    dma_done,
)

A = 0x40_0000


def _fill(env: Env, dev: int, pasid: int | None, pages: int = 2) -> None:
    env.ctx.dma(dev, pasid, A, pages * 4096, RW, env.now, "fill")
    (done,) = dma_done(env.settle())
    assert done.status == "ok"


def test_unmap_of_a_domain_on_many_devices_issues_one_flush_per_did_and_per_ats_pasid(
    env: Env,
) -> None:
    ctx = env.ctx
    ioas = ctx.ioas_alloc()
    ctx.ioas_map(ioas, A, 0x10000, RW, env.now)
    devs = {rid: ctx.bind(rid, env.now) for rid in (ACCEL, NIC_PF, ACCEL1, LEGACY)}
    hwpt = ctx.hwpt_alloc(devs[ACCEL], ioas, ["pasid"], None, None)
    for dev in devs.values():
        ctx.attach(dev, hwpt, None, env.now)
    ctx.attach(devs[ACCEL], hwpt, 5, env.now)  # same domain, same device, another PASID
    for dev in devs.values():
        _fill(env, dev, None)
    _fill(env, devs[ACCEL], 5)
    assert ctx.ioas_unmap(ioas, A, 0x10000, env.now) == 0x10000
    st = env.core.last_flush
    # 2 units -> 2 IOTLB (one DID each, both PASIDs of ACCEL share it); ATS functions:
    # ACCEL (RID and PASID 5), NIC_PF, ACCEL1 -> 4 device-TLB; LEGACY has no ATS.
    assert (st.iotlb, st.devtlb, st.units, st.waits) == (2, 4, 2, 2)
    check_no_stale_translation(env)
    check_invariants(env)


def test_tags_collapse_and_stay_sorted_by_unit_then_type(env: Env) -> None:
    units = list(env.machine.iommus.values())
    tags = CacheTagList()
    k1 = tags.assign(TagType.DEVTLB, units[1], 1, 2, None, sid=0x100)
    k2 = tags.assign(TagType.IOTLB, units[1], 1, 2, None)
    k3 = tags.assign(TagType.IOTLB, units[0], 0, 3, 5)
    k4 = tags.assign(TagType.IOTLB, units[0], 0, 3, 5, sid=0x200)  # same unit/DID/PASID
    assert k3 == k4 and len(tags) == 3
    assert [t.key for t in tags.tags] == sorted([k1, k2, k3])
    assert [t.users for t in tags.tags] == [2, 1, 1]
    tags.unassign(k3)
    assert len(tags) == 3
    tags.unassign(k4)
    assert len(tags) == 2


def test_nesting_parent_unmap_reaches_every_nested_did(env: Env) -> None:
    ctx = env.ctx
    ioas = ctx.ioas_alloc()
    ctx.ioas_map(ioas, A, 0x10000, RW, env.now)
    d0, d1 = ctx.bind(ACCEL, env.now), ctx.bind(ACCEL1, env.now)
    parent = ctx.hwpt_alloc(d0, ioas, ["nest_parent", "pasid"], None, None)
    n0 = ctx.hwpt_alloc(d0, parent, ["pasid"], None, {"type": "vtd_s1"})
    n1 = ctx.hwpt_alloc(d1, parent, [], None, {"type": "vtd_s1"})
    ctx.hwpt_s1_map(n0, 0x1000_0000, 0x2000, A, RW)
    ctx.hwpt_s1_map(n1, 0x2000_0000, 0x2000, A, RW)
    ctx.attach(d0, n0, 5, env.now)
    ctx.attach(d1, n1, None, env.now)
    ctx.attach(d0, parent, None, env.now)
    for dev, pasid, iova in ((d0, 5, 0x1000_0000), (d1, None, 0x2000_0000), (d0, None, A)):
        env.ctx.dma(dev, pasid, iova, 0x2000, RW, env.now, "fill")
        (done,) = dma_done(env.settle())
        assert done.status == "ok"
    ctx.ioas_unmap(ioas, A, 0x2000, env.now)
    st = env.core.last_flush
    # dmar0: parent's own DID + n0's DID; dmar1: n1's DID. devTLB: ACCEL RID (range),
    # ACCEL PASID 5 (whole, nested), ACCEL1 RID (whole, nested).
    assert (st.iotlb, st.devtlb) == (3, 3)
    check_no_stale_translation(env)
    check_invariants(env)


def test_hwpt_invalidate_flushes_the_nested_domain_only(env: Env) -> None:
    ctx = env.ctx
    ioas = ctx.ioas_alloc()
    ctx.ioas_map(ioas, A, 0x10000, RW, env.now)
    d0 = ctx.bind(ACCEL, env.now)
    parent = ctx.hwpt_alloc(d0, ioas, ["nest_parent", "pasid"], None, None)
    nested = ctx.hwpt_alloc(d0, parent, ["pasid"], None, {"type": "vtd_s1"})
    ctx.hwpt_s1_map(nested, 0x1000_0000, 0x2000, A, RW)
    ctx.attach(d0, nested, 5, env.now)
    ctx.attach(d0, parent, None, env.now)
    env.ctx.dma(d0, 5, 0x1000_0000, 0x2000, RW, env.now, "fill")
    dma_done(env.settle())
    # One call covers at most max_map_length bytes, as a map does: a bounded cost.
    with pytest.raises(CoreError) as ei:
        ctx.hwpt_s1_unmap(nested, 0, env.core.limits.max_map_length + 0x1000)
    assert ei.value.errno == "EINVAL"
    assert ctx.hwpt_s1_unmap(nested, 0x1000_0000, 0x1000) == 0x1000
    ctx.hwpt_invalidate(nested, 0x1000_0000, 0x1000, env.now)
    st = env.core.last_flush
    assert (st.iotlb, st.devtlb) == (1, 1)  # P_IOTLB (DID, PASID 5) + ATC of PASID 5
    check_no_stale_translation(env)
    ctx.hwpt_invalidate(nested, None, None, env.now)
    assert (env.core.last_flush.iotlb, env.core.last_flush.devtlb) == (1, 1)


def test_ioas_shared_by_two_paging_hwpts_flushes_both(env: Env) -> None:
    ctx = env.ctx
    ioas = ctx.ioas_alloc()
    ctx.ioas_map(ioas, A, 0x10000, RW, env.now)
    d0, d1 = ctx.bind(ACCEL, env.now), ctx.bind(NIC_PF, env.now)
    h0 = ctx.hwpt_alloc(d0, ioas, [], None, None)
    h1 = ctx.hwpt_alloc(d1, ioas, [], None, None)
    ctx.attach(d0, h0, None, env.now)
    ctx.attach(d1, h1, None, env.now)
    _fill(env, d0, None)
    _fill(env, d1, None)
    ctx.ioas_unmap(ioas, A, 0x10000, env.now)
    assert (env.core.last_flush.iotlb, env.core.last_flush.devtlb) == (2, 2)
    check_no_stale_translation(env)


def _record_submissions(env: Env, unit_name: str) -> list[int]:
    sizes: list[int] = []
    env.machine.iommus[unit_name].iq.submit_tap = sizes.append
    return sizes


def _one_domain_on_every_function(env: Env) -> int:
    ctx = env.ctx
    ioas = ctx.ioas_alloc()
    devs = [ctx.bind(rid, env.now) for rid in env.machine.functions]
    hwpt = ctx.hwpt_alloc(devs[0], ioas, [], None, None)
    for d in devs:
        ctx.attach(d, hwpt, None, env.now)
    ctx.ioas_map(ioas, A, 0x1000, RW, env.now)
    return ioas


def test_a_units_flush_is_one_submission_closed_by_one_wait() -> None:
    """Seed 002: the invalidations of a unit, then a wait; not a wait per 16 as the
    kernel's fixed-size qi_batch costs."""
    env = Env(generated_topology(40, n_iommus=1))
    ioas = _one_domain_on_every_function(env)
    sizes = _record_submissions(env, "dmar0")
    env.ctx.ioas_unmap(ioas, A, 0x1000, env.now)
    st = env.core.last_flush
    assert (st.iotlb, st.devtlb) == (1, 40)
    assert st.waits == 1 and sizes == [1 + 40 + 1]
    check_no_stale_translation(env)


def test_a_flush_larger_than_the_queue_splits_where_the_queue_is_full() -> None:
    """A submission of N descriptors needs N + 2 free slots (qi_submit_sync): 300
    device-TLB invalidations on a 256-entry queue take two submissions, no more."""
    env = Env(generated_topology(300, n_iommus=1))
    ioas = _one_domain_on_every_function(env)
    sizes = _record_submissions(env, "dmar0")
    env.ctx.ioas_unmap(ioas, A, 0x1000, env.now)
    st = env.core.last_flush
    entries = env.machine.iommus["dmar0"].iq.entries
    assert (st.iotlb, st.devtlb) == (1, 300)
    assert st.waits == 2 and sizes == [entries - 2 + 1, 301 - (entries - 2) + 1]
    check_no_stale_translation(env)


def test_unmap_of_nothing_issues_nothing(env: Env) -> None:
    env.fault_hwpt(pasid=None)
    before = env.core.counters["invalidations"]
    assert env.ctx.ioas_unmap(env.ctx.ioas_alloc(), A, 0x1000, env.now) == 0
    assert env.core.counters["invalidations"] == before


def test_detach_leaves_no_cached_translation_of_the_old_hwpt(env: Env) -> None:
    dev, ioas, _fq, hwpt = env.fault_hwpt(pasid=5)
    env.ctx.ioas_map(ioas, A, 0x4000, RW, env.now)
    _fill(env, dev, 5, pages=4)
    assert env.machine.function(ACCEL).atc
    env.ctx.detach(dev, 5, env.now)
    assert not env.machine.function(ACCEL).atc
    assert not any(env.machine.iommus["dmar0"]._iotlb.values())
    check_invariants(env)


def test_psi_alignment_covers_the_range() -> None:
    assert psi_aligned(0x1000, 0x2000) == (0x1000, 0)
    assert psi_aligned(0x0, 0x4000) == (0x0, 2)
    addr, mask = psi_aligned(0x3000, 0x5000)  # pages 3..4 straddle an 8-page boundary
    assert addr <= 0x3000 and addr + (4096 << mask) >= 0x5000 and addr % (4096 << mask) == 0


def test_units_with_small_prq_still_flush_per_unit() -> None:
    topo = default_topology()
    env = Env(TopologySpec((IommuSpec("dmar0", prq_order=0), IommuSpec("dmar1")), topo.functions))
    dev, ioas, _fq, _hwpt = env.fault_hwpt(pasid=None)
    env.ctx.ioas_map(ioas, A, 0x1000, RW, env.now)
    _fill(env, dev, None, pages=1)
    env.ctx.ioas_unmap(ioas, A, 0x1000, env.now)
    assert env.core.last_flush.per_unit == {"dmar0": 2}
