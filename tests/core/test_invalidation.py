"""Invalidation (seed 002): one sorted tag list per domain, the minimum descriptors."""

from __future__ import annotations

from hwmodel import IommuSpec, TopologySpec, default_topology, generated_topology
from iopfd.core.intel.cache import CacheTagList, TagType, psi_aligned
from iopfd.core.intel.dmar import QI_MAX_BATCHED_DESC_COUNT
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
        env: Env) -> None:
    ctx = env.ctx
    ioas = ctx.ioas_alloc()
    ctx.ioas_map(ioas, A, 0x10000, RW, env.now)
    devs = {rid: ctx.bind(rid, env.now) for rid in (ACCEL, NIC_PF, ACCEL1, LEGACY)}
    hwpt = ctx.hwpt_alloc(devs[ACCEL], ioas, [], None, None)
    for dev in devs.values():
        ctx.attach(dev, hwpt, None, env.now)
    ctx.attach(devs[ACCEL], hwpt, 5, env.now)   # same domain, same device, another PASID
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
    parent = ctx.hwpt_alloc(d0, ioas, ["nest_parent"], None, None)
    n0 = ctx.hwpt_alloc(d0, parent, [], None, {"type": "vtd_s1"})
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
    parent = ctx.hwpt_alloc(d0, ioas, ["nest_parent"], None, None)
    nested = ctx.hwpt_alloc(d0, parent, [], None, {"type": "vtd_s1"})
    ctx.hwpt_s1_map(nested, 0x1000_0000, 0x2000, A, RW)
    ctx.attach(d0, nested, 5, env.now)
    ctx.attach(d0, parent, None, env.now)
    env.ctx.dma(d0, 5, 0x1000_0000, 0x2000, RW, env.now, "fill")
    dma_done(env.settle())
    assert ctx.hwpt_s1_unmap(nested, 0x1000_0000, 0x1000) == 0x1000
    ctx.hwpt_invalidate(nested, 0x1000_0000, 0x1000, env.now)
    st = env.core.last_flush
    assert (st.iotlb, st.devtlb) == (1, 1)    # P_IOTLB (DID, PASID 5) + ATC of PASID 5
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


def test_flush_batches_at_most_16_descriptors_per_submission() -> None:
    env = Env(generated_topology(40, n_iommus=1))
    ctx = env.ctx
    ioas = ctx.ioas_alloc()
    devs = [ctx.bind(rid, env.now) for rid in env.machine.functions]
    hwpt = ctx.hwpt_alloc(devs[0], ioas, [], None, None)
    for d in devs:
        ctx.attach(d, hwpt, None, env.now)
    ctx.ioas_map(ioas, A, 0x1000, RW, env.now)
    unit = env.machine.iommus["dmar0"]
    sizes: list[int] = []
    orig = unit.iq.submit

    def submit(descs: object) -> None:
        sizes.append(len(descs))  # type: ignore[arg-type]
        orig(descs)  # type: ignore[arg-type]

    unit.iq.submit = submit  # type: ignore[method-assign]
    ctx.ioas_unmap(ioas, A, 0x1000, env.now)
    st = env.core.last_flush
    assert (st.iotlb, st.devtlb) == (1, 40)
    assert st.waits == 3 and sizes == [QI_MAX_BATCHED_DESC_COUNT + 1] * 2 + [41 - 32 + 1]


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
    addr, mask = psi_aligned(0x3000, 0x5000)     # pages 3..4 straddle an 8-page boundary
    assert addr <= 0x3000 and addr + (4096 << mask) >= 0x5000 and addr % (4096 << mask) == 0


def test_units_with_small_prq_still_flush_per_unit() -> None:
    topo = default_topology()
    env = Env(TopologySpec((IommuSpec("dmar0", prq_order=0), IommuSpec("dmar1")),
                           topo.functions))
    dev, ioas, _fq, _hwpt = env.fault_hwpt(pasid=None)
    env.ctx.ioas_map(ioas, A, 0x1000, RW, env.now)
    _fill(env, dev, None, pages=1)
    env.ctx.ioas_unmap(ioas, A, 0x1000, env.now)
    assert env.core.last_flush.per_unit == {"dmar0": 2}
