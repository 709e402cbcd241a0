"""The kernel's iommufd IOPF selftests (kernel-iopf.md section 4), against the core."""

from __future__ import annotations

import pytest

from iopfd.core import CoreError, CoreLimits
from iopfd.core.io_pgfault import LAST_PAGE, NEEDS_PASID, PASID_VALID
from iopfd.core.testing import ACCEL, ATS_NO_PRI, RW, Env, check_invariants, faults_of

# test_cmd_trigger_iopf: grpid 0x2, perm READ|WRITE, addr 0xdeadbeaf (page-aligned here)
TRIGGER_ADDR = 0xDEADB000
TRIGGER_GRPID = 0x2


def _errno(fn: object, *args: object) -> str:
    with pytest.raises(CoreError) as ei:
        fn(*args)  # type: ignore[operator]
    return ei.value.errno


def _trigger(env: Env, pasid: int | None) -> tuple[int, dict[str, int]]:
    env.inject(ACCEL, pasid, TRIGGER_ADDR, grpid=TRIGGER_GRPID)
    (ev,) = faults_of(env.service())
    assert len(ev.faults) == 1
    return ev.cookie, ev.faults[0]


def test_selftest_1_fault_object_basics(env: Env) -> None:
    ctx = env.ctx
    fq = ctx.fault_alloc()
    assert fq != 0
    dev = ctx.bind(ACCEL, env.now)
    ioas = ctx.ioas_alloc()
    hwpt = ctx.hwpt_alloc(dev, ioas, [], fq, None)
    assert _errno(ctx.destroy, fq, env.now) == "EBUSY"
    ctx.destroy(hwpt, env.now)
    ctx.destroy(fq, env.now)


def test_selftest_2_nested_iopf_hwpt_on_a_nesting_parent(env: Env) -> None:
    ctx = env.ctx
    dev = ctx.bind(ACCEL, env.now)
    ioas = ctx.ioas_alloc()
    parent = ctx.hwpt_alloc(dev, ioas, ["nest_parent"], None, None)
    ctx.attach(dev, parent, None, env.now)
    fq = ctx.fault_alloc()
    nested = ctx.hwpt_alloc(dev, parent, [], fq, {"type": "vtd_s1"})
    ctx.replace(dev, nested, None, env.now)
    assert _errno(ctx.destroy, nested, env.now) == "EBUSY"
    cookie, rec = _trigger(env, None)
    assert rec["flags"] == LAST_PAGE and rec["perm"] == RW and rec["grpid"] == TRIGGER_GRPID
    assert ctx.page_response(fq, [(cookie, 0)], env.now) == 1
    ctx.replace(dev, parent, None, env.now)
    ctx.destroy(nested, env.now)
    ctx.destroy(fq, env.now)
    check_invariants(env)


def test_selftest_3_bad_fault_id_and_bad_flags(env: Env) -> None:
    ctx = env.ctx
    dev = ctx.bind(ACCEL, env.now)
    ioas = ctx.ioas_alloc()
    parent = ctx.hwpt_alloc(dev, ioas, ["nest_parent"], None, None)
    fq = ctx.fault_alloc()
    data = {"type": "vtd_s1"}
    assert _errno(ctx.hwpt_alloc, dev, parent, [], 0xFFFF_FFFF, data) == "ENOENT"
    assert _errno(ctx.hwpt_alloc, dev, parent, ["bit31"], fq, data) == "EOPNOTSUPP"
    nested = ctx.hwpt_alloc(dev, parent, [], fq, data)
    ctx.attach(dev, nested, None, env.now)
    assert _errno(ctx.destroy, nested, env.now) == "EBUSY"
    cookie, _rec = _trigger(env, None)
    assert ctx.page_response(fq, [(cookie, 0)], env.now) == 1
    ctx.detach(dev, None, env.now)
    ctx.destroy(nested, env.now)
    ctx.destroy(fq, env.now)
    check_invariants(env)


def test_selftest_4_pasid_path(env: Env) -> None:
    ctx = env.ctx
    dev = ctx.bind(ACCEL, env.now)
    ioas = ctx.ioas_alloc()
    fq = ctx.fault_alloc()
    iopf = ctx.hwpt_alloc(dev, ioas, ["pasid"], fq, None)
    s2 = ctx.hwpt_alloc(dev, ioas, ["pasid"], None, None)
    not_compat = ctx.hwpt_alloc(dev, ioas, [], None, None)
    ctx.attach(dev, iopf, 2048, env.now)
    info = env.core.devices[ACCEL]
    assert info.handles[2048].hwpt.id == iopf
    # The selftest's mock ioctl gets EBUSY here; through VFIO (what iopfd's attach is)
    # an attach where attached is a replace, and to the same HWPT changes nothing.
    ctx.attach(dev, iopf, 2048, env.now)
    assert _errno(ctx.attach, dev, ioas, 2049, env.now) == "EINVAL"
    assert _errno(ctx.attach, dev, not_compat, 2049, env.now) == "EINVAL"
    assert _errno(ctx.replace, dev, s2, 2049, env.now) == "EINVAL"
    cookie, rec = _trigger(env, 2048)
    assert rec["flags"] == PASID_VALID | NEEDS_PASID | LAST_PAGE and rec["pasid"] == 2048
    assert ctx.page_response(fq, [(cookie, 0)], env.now) == 1
    _trigger(env, 2048)  # left unanswered: replace must answer it
    ctx.replace(dev, s2, 2048, env.now)
    assert env.core.pending(env.now) == []
    ctx.detach(dev, 2048, env.now)
    ctx.destroy(iopf, env.now)
    ctx.destroy(fq, env.now)
    check_invariants(env)


def test_selftest_4_failed_pasid_replace_keeps_the_old_domain(env: Env) -> None:
    ctx = env.ctx
    dev = ctx.bind(ATS_NO_PRI, env.now)
    ioas = ctx.ioas_alloc()
    s2 = ctx.hwpt_alloc(dev, ioas, ["pasid"], None, None)
    ctx.attach(dev, s2, 1024, env.now)
    fq = ctx.fault_alloc()
    iopf = ctx.hwpt_alloc(dev, ioas, ["pasid"], fq, None)
    assert _errno(ctx.replace, dev, iopf, 1024, env.now) == "ENODEV"
    assert env.core.devices[ATS_NO_PRI].handles[1024].hwpt.id == s2


def test_selftest_5_hwpt_alloc_without_fault_id(env: Env) -> None:
    dev = env.ctx.bind(ACCEL, env.now)
    hwpt = env.ctx.hwpt_alloc(dev, env.ctx.ioas_alloc(), [], None, None)
    env.ctx.attach(dev, hwpt, None, env.now)


def test_selftest_6_queue_overflow_is_reported_then_clears() -> None:
    # The vEVENTQ depth test, re-expressed on the fault queue's max_pending bound.
    env = Env(limits=CoreLimits(max_pending=2))
    _dev, _ioas, fq, _hwpt = env.fault_hwpt(pasid=None)
    for g in range(3):
        env.inject(ACCEL, None, TRIGGER_ADDR, grpid=g)
    evs = faults_of(env.service())
    assert len(evs) == 2 and env.core.status_counters()["throttled"] == 1
    env.ctx.page_response(fq, [(e.cookie, 0) for e in evs], env.now)
    env.inject(ACCEL, None, TRIGGER_ADDR, grpid=5)
    (ev,) = faults_of(env.service())
    assert ev.throttled == 1
    env.inject(ACCEL, None, TRIGGER_ADDR, grpid=6)
    (ev,) = faults_of(env.service())
    assert ev.throttled == 0


def test_selftest_7_teardown_releases_everything(env: Env) -> None:
    dev, ioas, fq, _hwpt = env.fault_hwpt(pasid=5)
    env.ctx.ioas_map(ioas, 0x10000, 0x1000, RW, env.now)
    env.ctx.dma(dev, 5, 0x10000, 0x1000, RW, env.now, "t")
    env.inject(ACCEL, 5, TRIGGER_ADDR, grpid=1)
    env.service()
    env.core.close_context(env.ctx, env.now)
    assert env.core.objects() == [] and env.core.pending(env.now) == []
    assert all(us.dids_in_use() == 0 for us in env.core.units.values())
    assert env.core.devices[ACCEL].info.iopf_refcount == 0
    assert env.machine.function(ACCEL).pri.enabled is env.core.profile.pri_at_probe
    assert not env.machine.function(ACCEL).atc
    assert not any(env.machine.iommus["dmar0"]._iotlb.values())
    fresh = env.core.open_context("fresh")
    assert fresh.bind(ACCEL, env.now) > 0
    check_invariants(env)
