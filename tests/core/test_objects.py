"""The iommufd object model: IDs, references, destroy, hwpt_alloc and attach checks."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hwmodel import Rid, default_topology
from iopfd.core import CoreError, CoreLimits
from iopfd.core.device import ATTACHED_SHOWN
from iopfd.core.testing import (
    ACCEL,
    ACCEL1,
    ATS_NO_PRI,
    LEGACY,
    NIC_PF,
    NIC_VF0,
    NO_PASID,
    Env,
    check_invariants,
)


def errno_of(fn: object, *args: object) -> str:
    with pytest.raises(CoreError) as ei:
        fn(*args)  # type: ignore[operator]
    return ei.value.errno


def test_object_ids_are_uint32_from_1_unique_across_contexts_and_never_reused(env: Env) -> None:
    other = env.core.open_context("other")
    ids = [env.ctx.ioas_alloc(), other.ioas_alloc(), env.ctx.fault_alloc()]
    assert ids == [1, 2, 3]
    env.ctx.destroy(ids[0], env.now)
    assert env.ctx.ioas_alloc() == 4


def test_ids_of_another_context_are_enoent(env: Env) -> None:
    other = env.core.open_context("other")
    ioas = other.ioas_alloc()
    assert errno_of(env.ctx.destroy, ioas, env.now) == "ENOENT"
    assert errno_of(env.ctx.ioas_map, ioas, 0, 4096, 1, env.now) == "ENOENT"


def test_destroy_of_ioas_under_a_hwpt_is_ebusy(env: Env) -> None:
    dev = env.ctx.bind(ACCEL, env.now)
    ioas = env.ctx.ioas_alloc()
    hwpt = env.ctx.hwpt_alloc(dev, ioas, [], None, None)
    assert errno_of(env.ctx.destroy, ioas, env.now) == "EBUSY"
    env.ctx.destroy(hwpt, env.now)
    env.ctx.destroy(ioas, env.now)


def test_destroy_of_fault_queue_referenced_by_a_hwpt_is_ebusy(env: Env) -> None:
    dev = env.ctx.bind(ACCEL, env.now)
    ioas = env.ctx.ioas_alloc()
    fq = env.ctx.fault_alloc()
    hwpt = env.ctx.hwpt_alloc(dev, ioas, [], fq, None)
    assert errno_of(env.ctx.destroy, fq, env.now) == "EBUSY"
    env.ctx.destroy(hwpt, env.now)
    env.ctx.destroy(fq, env.now)


def test_destroy_of_attached_hwpt_is_ebusy_until_detached(env: Env) -> None:
    dev, _ioas, _fq, hwpt = env.fault_hwpt(pasid=None)
    assert errno_of(env.ctx.destroy, hwpt, env.now) == "EBUSY"
    env.ctx.detach(dev, None, env.now)
    env.ctx.destroy(hwpt, env.now)


def test_destroy_of_nest_parent_with_nested_children_is_ebusy(env: Env) -> None:
    dev = env.ctx.bind(ACCEL, env.now)
    ioas = env.ctx.ioas_alloc()
    parent = env.ctx.hwpt_alloc(dev, ioas, ["nest_parent"], None, None)
    child = env.ctx.hwpt_alloc(dev, parent, [], None, {"type": "vtd_s1"})
    assert errno_of(env.ctx.destroy, parent, env.now) == "EBUSY"
    env.ctx.destroy(child, env.now)
    env.ctx.destroy(parent, env.now)


def test_destroy_of_a_bound_device_is_ebusy(env: Env) -> None:
    dev = env.ctx.bind(ACCEL, env.now)
    assert errno_of(env.ctx.destroy, dev, env.now) == "EBUSY"


def test_bind_is_exclusive_and_checks_the_rid(env: Env) -> None:
    other = env.core.open_context("other")
    env.ctx.bind(ACCEL, env.now)
    assert errno_of(other.bind, ACCEL, env.now) == "EBUSY"
    assert errno_of(env.ctx.bind, ACCEL, env.now) == "EBUSY"
    assert errno_of(env.ctx.bind, "0000:99:00.0", env.now) == "ENOENT"
    assert errno_of(env.ctx.bind, "nonsense", env.now) == "EINVAL"


def test_pasid_and_ats_are_on_from_probe_in_6_18_and_from_bind_in_6_12(kenv: Env) -> None:
    # "iommu/vt-d: Move PRI enablement in probe path" (v6.15): PASID, ATS, then PRI at
    # probe. Before it, iopfd enables PASID then ATS when the device is bound.
    env = kenv
    fn = env.machine.function(ACCEL)
    at_probe = env.core.profile.pri_at_probe
    assert fn.ats_enabled is fn.pasid_enabled is fn.pri.enabled is at_probe
    env.ctx.bind(ACCEL, env.now)
    assert fn.ats_enabled and fn.pasid_enabled
    assert fn.pri.enabled is at_probe


def test_object_limit_gives_enospc() -> None:
    env = Env(limits=CoreLimits(max_objects_per_context=2))
    env.ctx.ioas_alloc()
    env.ctx.fault_alloc()
    assert errno_of(env.ctx.ioas_alloc) == "ENOSPC"


# ---------------------------------------------------------------- hwpt_alloc


def test_hwpt_alloc_unknown_flag_is_eopnotsupp_and_unknown_fault_id_enoent(env: Env) -> None:
    dev = env.ctx.bind(ACCEL, env.now)
    ioas = env.ctx.ioas_alloc()
    assert errno_of(env.ctx.hwpt_alloc, dev, ioas, ["dirty_tracking"], None, None) == "EOPNOTSUPP"
    assert errno_of(env.ctx.hwpt_alloc, dev, ioas, ["bogus"], None, None) == "EOPNOTSUPP"
    assert errno_of(env.ctx.hwpt_alloc, dev, ioas, [], 0xFFFF_FFFF, None) == "ENOENT"
    assert errno_of(env.ctx.hwpt_alloc, dev, ioas, [], ioas, None) == "ENOENT"
    env.ctx.hwpt_alloc(dev, ioas, ["pasid"], None, None)


def test_hwpt_alloc_of_a_pt_id_that_is_no_object_here_is_einval(kenv: Env) -> None:
    # iommufd_hwpt_alloc: a failed iommufd_get_object(pt_id, ANY) becomes -EINVAL.
    env = kenv
    dev = env.ctx.bind(ACCEL, env.now)
    other = env.core.open_context("other")
    foreign = other.ioas_alloc()
    assert errno_of(env.ctx.hwpt_alloc, dev, 4242, [], None, None) == "EINVAL"
    assert errno_of(env.ctx.hwpt_alloc, dev, foreign, [], None, None) == "EINVAL"
    fq = env.ctx.fault_alloc()
    assert errno_of(env.ctx.hwpt_alloc, dev, fq, [], None, None) == "EINVAL"
    assert errno_of(env.ctx.hwpt_alloc, 4242, foreign, [], None, None) == "ENOENT"


def test_6_12_has_no_pasid_flag_and_no_fault_capable_paging_hwpt() -> None:
    env = Env(kernel="6.12")
    dev = env.ctx.bind(ACCEL, env.now)
    ioas = env.ctx.ioas_alloc()
    fq = env.ctx.fault_alloc()
    assert errno_of(env.ctx.hwpt_alloc, dev, ioas, ["pasid"], None, None) == "EOPNOTSUPP"
    # The paging valid_flags lack FAULT_ID_VALID: refused before the fault lookup.
    assert errno_of(env.ctx.hwpt_alloc, dev, ioas, [], fq, None) == "EOPNOTSUPP"
    assert errno_of(env.ctx.hwpt_alloc, dev, ioas, [], 0xFFFF_FFFF, None) == "EOPNOTSUPP"
    parent = env.ctx.hwpt_alloc(dev, ioas, ["nest_parent"], None, None)
    assert (
        errno_of(env.ctx.hwpt_alloc, dev, parent, ["pasid"], fq, {"type": "vtd_s1"}) == "EOPNOTSUPP"
    )
    nested = env.ctx.hwpt_alloc(dev, parent, [], fq, {"type": "vtd_s1"})
    env.ctx.attach(dev, nested, None, env.now)
    # VFIO_DEVICE_ATTACH_IOMMUFD_PT takes no flag in 6.12: no PASID attach at all.
    assert errno_of(env.ctx.attach, dev, nested, 5, env.now) == "EINVAL"
    assert errno_of(env.ctx.detach, dev, 5, env.now) == "EINVAL"
    check_invariants(env)


def test_a_nesting_parent_is_never_fault_capable(env: Env) -> None:
    dev = env.ctx.bind(ACCEL, env.now)
    ioas = env.ctx.ioas_alloc()
    fq = env.ctx.fault_alloc()
    assert errno_of(env.ctx.hwpt_alloc, dev, ioas, ["nest_parent"], fq, None) == "EOPNOTSUPP"


def test_hwpt_alloc_data_rules(env: Env) -> None:
    dev = env.ctx.bind(ACCEL, env.now)
    ioas = env.ctx.ioas_alloc()
    assert errno_of(env.ctx.hwpt_alloc, dev, ioas, [], None, {"type": "vtd_s1"}) == "EINVAL"
    plain = env.ctx.hwpt_alloc(dev, ioas, [], None, None)
    parent = env.ctx.hwpt_alloc(dev, ioas, ["nest_parent"], None, None)
    assert errno_of(env.ctx.hwpt_alloc, dev, plain, [], None, {"type": "vtd_s1"}) == "EINVAL"
    # iommufd_hwpt_nested_alloc: no user data is EOPNOTSUPP, as a flag beyond
    # FAULT_ID_VALID and ALLOC_PASID is.
    assert errno_of(env.ctx.hwpt_alloc, dev, parent, [], None, None) == "EOPNOTSUPP"
    assert errno_of(env.ctx.hwpt_alloc, dev, parent, [], None, {"type": "arm"}) == "EOPNOTSUPP"
    assert (
        errno_of(env.ctx.hwpt_alloc, dev, parent, ["nest_parent"], None, {"type": "vtd_s1"})
        == "EOPNOTSUPP"
    )
    nested = env.ctx.hwpt_alloc(dev, parent, ["pasid"], None, {"type": "vtd_s1"})
    env.ctx.attach(dev, nested, 9, env.now)  # nested HWPTs accept ALLOC_PASID (6.15+)
    env.ctx.hwpt_alloc(dev, parent, [], None, {"type": "vtd_s1"})


# ---------------------------------------------------------------- attach checks


def test_attach_takes_a_hwpt_or_an_ioas_and_no_other_kind(env: Env) -> None:
    # iommufd_device_change_pt: HWPT_PAGING/NESTED or IOAS, default -EINVAL.
    dev = env.ctx.bind(ACCEL, env.now)
    fq = env.ctx.fault_alloc()
    assert errno_of(env.ctx.attach, dev, fq, None, env.now) == "EINVAL"
    assert errno_of(env.ctx.attach, dev, 9999, None, env.now) == "ENOENT"
    ioas = env.ctx.ioas_alloc()
    assert env.ctx.attach(dev, ioas, None, env.now) != ioas  # its automatic domain


def test_attach_where_attached_is_a_replace_and_detach_of_nothing_succeeds(env: Env) -> None:
    # vfio_iommufd_physical_(pasid_)attach_ioas: attached -> iommufd_device_replace;
    # vfio_iommufd_physical_(pasid_)detach_ioas returns when nothing is attached.
    dev, ioas, fq, hwpt = env.fault_hwpt(pasid=7)
    env.inject(ACCEL, 7, 0x1000, grpid=1)
    env.service()
    env.ctx.attach(dev, hwpt, 7, env.now)  # the same HWPT: nothing changes
    assert len(env.core.pending(env.now)) == 1
    other = env.ctx.hwpt_alloc(dev, ioas, ["pasid"], fq, None)
    env.ctx.attach(dev, other, 7, env.now)  # a replace: the old group answered
    info = env.core.devices[ACCEL]
    assert info.handles[7].hwpt.id == other
    assert env.core.pending(env.now) == []
    c = env.core.status_counters()
    assert (c["replaces"], c["attaches"], c["auto_responses"]) == (1, 1, 1)
    assert errno_of(env.ctx.replace, dev, hwpt, 8, env.now) == "EINVAL"
    env.ctx.detach(dev, 8, env.now)  # nothing there: not an error
    env.ctx.detach(dev, None, env.now)
    assert c.get("detaches", 0) == env.core.status_counters().get("detaches", 0) == 0
    check_invariants(env)


def test_pasid_attach_needs_a_pasid_compatible_hwpt(env: Env) -> None:
    # iommufd_hwpt_pasid_compat (v6.15+): every failure is EINVAL.
    dev = env.ctx.bind(ACCEL, env.now)
    ioas = env.ctx.ioas_alloc()
    plain = env.ctx.hwpt_alloc(dev, ioas, [], None, None)
    compat = env.ctx.hwpt_alloc(dev, ioas, ["pasid"], None, None)
    assert errno_of(env.ctx.attach, dev, plain, 5, env.now) == "EINVAL"
    env.ctx.attach(dev, plain, None, env.now)  # the RID holds a non-PASID HWPT ...
    assert errno_of(env.ctx.attach, dev, compat, 5, env.now) == "EINVAL"  # ... so no PASID
    env.ctx.attach(dev, compat, None, env.now)  # (a replace)
    env.ctx.attach(dev, compat, 5, env.now)
    # With a PASID attached, the RID may not take a non-PASID HWPT, by attach or replace.
    assert errno_of(env.ctx.attach, dev, plain, None, env.now) == "EINVAL"
    assert errno_of(env.ctx.replace, dev, plain, None, env.now) == "EINVAL"
    assert errno_of(env.ctx.replace, dev, plain, 5, env.now) == "EINVAL"
    assert env.core.devices[ACCEL].handles[None].hwpt.id == compat
    env.ctx.detach(dev, 5, env.now)
    env.ctx.attach(dev, plain, None, env.now)
    check_invariants(env)


def test_pasid_zero_is_einval_and_too_wide_is_einval(env: Env) -> None:
    dev = env.ctx.bind(ACCEL, env.now)
    ioas = env.ctx.ioas_alloc()
    hwpt = env.ctx.hwpt_alloc(dev, ioas, [], None, None)
    assert errno_of(env.ctx.attach, dev, hwpt, 0, env.now) == "EINVAL"
    assert errno_of(env.ctx.attach, dev, hwpt, 1 << 20, env.now) == "EINVAL"
    assert errno_of(env.ctx.dma, dev, 0, 0, 4096, 1, env.now, None) == "EINVAL"


def test_pasid_on_a_device_without_pasid_is_eopnotsupp(env: Env) -> None:
    dev = env.ctx.bind(NO_PASID, env.now)
    ioas = env.ctx.ioas_alloc()
    hwpt = env.ctx.hwpt_alloc(dev, ioas, [], None, None)
    assert errno_of(env.ctx.attach, dev, hwpt, 3, env.now) == "EOPNOTSUPP"


def _fault_capable(env: Env, dev: int, ioas: int) -> int:
    """A fault-capable HWPT the profile allows: paging, or nested (6.12)."""
    fq = env.ctx.fault_alloc()
    if env.core.profile.paging_fault_hwpt:
        return env.ctx.hwpt_alloc(dev, ioas, [], fq, None)
    parent = env.ctx.hwpt_alloc(dev, ioas, ["nest_parent"], None, None)
    return env.ctx.hwpt_alloc(dev, parent, [], fq, {"type": "vtd_s1"})


def test_fault_capable_attach_on_a_vf_is_einval(kenv: Env) -> None:
    env = kenv
    dev = env.ctx.bind(NIC_VF0, env.now)
    ioas = env.ctx.ioas_alloc()
    hwpt = _fault_capable(env, dev, ioas)
    assert errno_of(env.ctx.attach, dev, hwpt, None, env.now) == "EINVAL"
    plain = env.ctx.hwpt_alloc(dev, ioas, [], None, None)
    env.ctx.attach(dev, plain, None, env.now)
    assert errno_of(env.ctx.replace, dev, hwpt, None, env.now) == "EINVAL"
    assert errno_of(env.ctx.attach, dev, hwpt, None, env.now) == "EINVAL"
    check_invariants(env)


def test_the_vf_rule_refuses_any_vf_in_6_12_and_a_pri_vf_in_6_18() -> None:
    topo = default_topology()
    nic = Rid.parse(NIC_PF)
    funcs = tuple(
        replace(f, pri=False, pri_capacity=0) if nic in (f.rid, f.pf) else f for f in topo.functions
    )
    topo = replace(topo, functions=funcs)  # the VF's PF has no PRI
    errnos = {}
    for kernel in ("6.12", "6.18"):
        env = Env(topo, kernel=kernel)
        dev = env.ctx.bind(NIC_VF0, env.now)
        hwpt = _fault_capable(env, dev, env.ctx.ioas_alloc())
        errnos[kernel] = errno_of(env.ctx.attach, dev, hwpt, None, env.now)
    # 6.12: iommufd_fault_iopf_enable refuses is_virtfn; 6.18: the VF passes
    # iommufd_hwpt_compatible_device and intel_iommu_enable_iopf finds no PRI.
    assert errnos == {"6.12": "EINVAL", "6.18": "ENODEV"}


@pytest.mark.parametrize("rid", [ATS_NO_PRI, LEGACY])
def test_fault_capable_attach_without_pri_is_enodev(kenv: Env, rid: str) -> None:
    # intel_iommu_enable_iopf: -ENODEV without PRI (!pri_enabled in 6.18,
    # !ats_enabled || !pri_supported in 6.12).
    env = kenv
    dev = env.ctx.bind(rid, env.now)
    hwpt = _fault_capable(env, dev, env.ctx.ioas_alloc())
    assert errno_of(env.ctx.attach, dev, hwpt, None, env.now) == "ENODEV"
    assert env.core.devices[rid].handles == {}
    assert env.core.devices[rid].info.iopf_refcount == 0
    check_invariants(env)


def test_failed_replace_keeps_the_old_hwpt(env: Env) -> None:
    dev, ioas, _fq, hwpt = env.fault_hwpt(NIC_VF0, pasid=None, fault=False)
    fq = env.ctx.fault_alloc()
    bad = env.ctx.hwpt_alloc(dev, ioas, [], fq, None)
    assert errno_of(env.ctx.replace, dev, bad, None, env.now) == "EINVAL"
    info = env.core.devices[NIC_VF0]
    assert info.handles[None].hwpt.id == hwpt
    check_invariants(env)


# ---------------------------------------------------------------- PRI refcount


def test_6_18_keeps_pri_on_while_the_iopf_refcount_follows_fault_attachments(env: Env) -> None:
    fn = env.machine.function(ACCEL)
    info = env.core.devices[ACCEL]
    ctx_entry = info.info.unit.context(info.sid)
    assert ctx_entry is not None
    assert fn.pri.enabled and ctx_entry.pre  # from probe
    dev, ioas, _fq, hwpt = env.fault_hwpt(pasid=5)
    env.ctx.attach(dev, hwpt, 6, env.now)
    plain = env.ctx.hwpt_alloc(dev, ioas, ["pasid"], None, None)
    env.ctx.attach(dev, plain, None, env.now)
    env.ctx.detach(dev, 5, env.now)
    assert info.info.iopf_refcount == 1
    env.ctx.replace(dev, plain, 6, env.now)
    assert info.info.iopf_refcount == 0
    ctx_entry = info.info.unit.context(info.sid)
    assert ctx_entry is not None and fn.pri.enabled and ctx_entry.pre
    check_invariants(env)


def test_6_12_enables_pri_with_the_first_fault_attachment_and_off_after_last() -> None:
    env = Env(kernel="6.12")
    fn = env.machine.function(ACCEL)
    info = env.core.devices[ACCEL]
    assert not fn.pri.enabled
    dev, ioas, _fq, _hwpt = env.fault_hwpt(pasid=None)
    assert fn.pri.enabled and info.info.unit.context(info.sid).pre
    assert info.info.iopf_refcount == 1
    plain = env.ctx.hwpt_alloc(dev, ioas, [], None, None)
    env.ctx.replace(dev, plain, None, env.now)
    assert not fn.pri.enabled and not info.info.unit.context(info.sid).pre
    check_invariants(env)


def test_each_unit_hands_out_domain_ids_from_2(env: Env) -> None:
    dev0, _i0, _f0, h0 = env.fault_hwpt(ACCEL, pasid=None)
    dev1, _i1, _f1, h1 = env.fault_hwpt(ACCEL1, pasid=None)
    objs = {o["id"]: o for o in env.core.objects()}
    assert objs[h0]["dids"] == {"dmar0": 2}
    assert objs[h1]["dids"] == {"dmar1": 2}
    dev2 = env.ctx.bind(NIC_PF, env.now)
    h2 = env.ctx.hwpt_alloc(dev2, _i0, [], None, None)
    env.ctx.attach(dev2, h2, None, env.now)
    assert {o["id"]: o for o in env.core.objects()}[h2]["dids"] == {"dmar0": 3}
    entry = env.machine.iommus["dmar0"].pasid_entry(env.core.devices[NIC_PF].sid, None)
    assert entry is not None and entry.present and entry.did == 3


def test_close_context_releases_everything(env: Env) -> None:
    env.fault_hwpt(ACCEL, pasid=5)
    env.fault_hwpt(ACCEL1, pasid=None)
    env.core.close_context(env.ctx, env.now)
    assert env.core.objects() == []
    assert all(d["state"] == "free" for d in env.core.device_list())
    assert all(d.info.iopf_refcount == 0 for d in env.core.devices.values())
    assert env.machine.function(ACCEL).pri.enabled  # 6.18: on from probe
    other = env.core.open_context("next")
    other.bind(ACCEL, env.now)
    check_invariants(env)


def test_exhausted_domain_ids_are_enospc_and_leave_nothing_held() -> None:
    from iopfd.core.intel import iommu as intel_iommu

    env = Env()
    dev, ioas, fq, _hwpt = env.fault_hwpt(pasid=5)
    ustate = env.core.devices[ACCEL].info.ustate
    ustate._next_did = intel_iommu.MAX_DOMAIN_ID + 1  # every DID of dmar0 in use
    hwpt2 = env.ctx.hwpt_alloc(dev, ioas, ["pasid"], fq, None)
    pri_refs = env.core.devices[ACCEL].info.iopf_refcount
    with pytest.raises(CoreError) as ei:
        env.ctx.attach(dev, hwpt2, 6, env.now)
    assert ei.value.errno == "ENOSPC"
    assert env.core.devices[ACCEL].info.iopf_refcount == pri_refs
    assert 6 not in env.core.devices[ACCEL].handles
    env.ctx.destroy(hwpt2, env.now)  # not left referenced
    check_invariants(env)


def test_one_request_stays_short_and_mappings_are_bounded_per_context() -> None:
    """A request runs to its end before anyone else is served, and a mapped page costs
    memory: dma and map lengths are capped (EINVAL), mapped pages per context too
    (ENOSPC), and unmap and destroy give the pages back."""
    limits = CoreLimits(
        max_dma_length=8 << 12, max_map_length=16 << 12, max_mapped_pages_per_context=24
    )
    env = Env(limits=limits)
    ctx = env.ctx
    dev, ioas, _fq, _hwpt = env.fault_hwpt(pasid=5)
    assert errno_of(ctx.dma, dev, 5, 0x10_0000, 9 << 12, 1, env.now, 0) == "EINVAL"
    ctx.dma(dev, 5, 0x10_0000, 8 << 12, 1, env.now, 0)
    assert errno_of(ctx.ioas_map, ioas, 0x20_0000, 17 << 12, 3, env.now) == "EINVAL"
    ctx.ioas_map(ioas, 0x20_0000, 16 << 12, 3, env.now)
    assert errno_of(ctx.ioas_map, ioas, 0x40_0000, 9 << 12, 3, env.now) == "ENOSPC"
    ctx.ioas_map(ioas, 0x40_0000, 8 << 12, 3, env.now)
    assert ctx.mapped_pages == 24
    assert ctx.ioas_unmap(ioas, 0x20_0000, 4 << 12, env.now) == 4 << 12
    assert ctx.mapped_pages == 20
    other = ctx.ioas_alloc()
    ctx.ioas_map(other, 0, 4 << 12, 3, env.now)
    assert ctx.mapped_pages == 24
    ctx.destroy(other, env.now)
    assert ctx.mapped_pages == 20
    check_invariants(env)


# ---------------------------------------------------------------- IOAS areas


class _NoWalk(dict):  # type: ignore[type-arg]
    """A page dict that refuses to be walked: the unmap must look up, not scan."""

    def __iter__(self):  # type: ignore[no-untyped-def]
        raise AssertionError("unmap walked the whole IOAS")


def test_unmap_costs_what_the_range_holds_not_what_the_ioas_holds(env: Env) -> None:
    ioas = env.ctx.ioas_alloc()
    for i in range(64):
        env.ctx.ioas_map(ioas, 0x1000_0000 + i * 0x10_0000, 0x10_0000, 3, env.now)
    obj = env.ctx.objects[ioas]
    obj.table._pages = _NoWalk(obj.table._pages)  # type: ignore[attr-defined]
    # An empty range far larger than the IOAS: found empty by bisection alone.
    assert env.ctx.ioas_unmap(ioas, 0x8000_0000, 0xFFFF_F000, env.now) == 0
    # A range cutting two areas in their middles: only those pages go.
    assert env.ctx.ioas_unmap(ioas, 0x1008_0000, 0x10_0000, env.now) == 0x10_0000
    areas = obj.areas  # type: ignore[attr-defined]
    assert areas.starts[:3] == [0x1_0000, 0x1_0180, 0x1_0200]
    assert (areas.ends[0x1_0000], areas.ends[0x1_0180]) == (0x1_0080, 0x1_0200)
    assert env.ctx.mapped_pages == 64 * 256 - 256


def test_a_map_without_iova_takes_the_lowest_aligned_hole(env: Env) -> None:
    ioas = env.ctx.ioas_alloc()
    a = env.ctx.ioas_map(ioas, None, 0x4000, 3, env.now)
    assert a == 0x10_0000
    b = env.ctx.ioas_map(ioas, None, 0x1000, 3, env.now)
    assert b == a + 0x4000
    c = env.ctx.ioas_map(ioas, None, 0x3000, 3, env.now)  # 4-page aligned
    assert c == a + 0x8000 and c % 0x4000 == 0
    env.ctx.ioas_unmap(ioas, a, 0x4000, env.now)
    assert env.ctx.ioas_map(ioas, None, 0x2000, 3, env.now) == a  # the hole is reused
    assert env.ctx.ioas_map(ioas, 0x5000_0000, 0x1000, 3, env.now) == 0x5000_0000
    assert errno_of(env.ctx.ioas_map, ioas, 0x5000_0000, 0x1000, 3, env.now) == "EBUSY"


def test_a_kernel_chosen_iova_avoids_the_interrupt_window(env: Env) -> None:
    ioas = env.ctx.ioas_alloc()
    # Fill below the window in 64 MiB steps, then the next map must land above it.
    iova = 0x10_0000
    while iova + (64 << 20) <= 0xFEE0_0000:
        env.ctx.ioas_map(ioas, iova, 64 << 20, 3, env.now)
        iova += 64 << 20
    got = env.ctx.ioas_map(ioas, None, 0x20_0000, 3, env.now)
    assert not (got < 0xFEF0_0000 and got + 0x20_0000 > 0xFEE0_0000)
    assert got % 0x20_0000 == 0


def test_an_ioas_maps_each_iova_to_the_same_host_address(env: Env) -> None:
    # The emulation has no memory: an IOAS translates iova to itself, fixed or picked.
    ioas = env.ctx.ioas_alloc()
    fixed = env.ctx.ioas_map(ioas, 0x4000_0000, 0x2000, 3, env.now)
    picked = env.ctx.ioas_map(ioas, None, 0x1000, 1, env.now)
    table = env.ctx.objects[ioas].table  # type: ignore[attr-defined]
    assert table.lookup(fixed + 0x1008) == (fixed + 0x1008, 3)
    assert table.lookup(picked) == (picked, 1)


def test_a_device_row_lists_its_first_attachments_and_counts_them_all() -> None:
    env = Env()
    dev, _ioas, _fq, hwpt = env.fault_hwpt(ACCEL, pasid=1)
    n = ATTACHED_SHOWN + 36
    for pasid in range(2, n + 1):
        env.ctx.attach(dev, hwpt, pasid, env.now)
    row = next(r for r in env.core.objects() if r["id"] == dev)
    assert row["attached"] == {str(p): hwpt for p in range(1, ATTACHED_SHOWN + 1)}
    assert row["attached_total"] == n
    devices = env.core.topology()["devices"]
    assert isinstance(devices, list)
    topo = next(d for d in devices if d["rid"] == ACCEL)
    assert topo["attached"] == row["attached"] and topo["attached_total"] == n
