"""Admin views, inject validation, traces and the events the daemon forwards."""

from __future__ import annotations

import pytest

from iopfd.core import TRACE_TOPICS, CoreError, CoreLimits
from iopfd.core.testing import (
    ACCEL,
    NIC_PF,
    NIC_VF0,
    RW,
    Env,
    check_invariants,
    dma_done,
    faults_of,
)

A = 0x30_0000


def _errno(fn: object, *args: object) -> str:
    with pytest.raises(CoreError) as ei:
        fn(*args)  # type: ignore[operator]
    return ei.value.errno


def test_device_list_rows(env: Env) -> None:
    env.fault_hwpt(pasid=5)
    rows = {r["rid"]: r for r in env.core.device_list()}
    assert rows[ACCEL] == {
        "rid": ACCEL,
        "vfio": 0,
        "iommu": "dmar0",
        "pri": True,
        "ats": True,
        "pasid_bits": 20,
        "pf": None,
        "state": "bound",
        "removing": False,
        "ats_enabled": True,
        "pri_enabled": True,
        "pri_status": {"response_failure": False, "unexpected_prgi": False, "stopped": False},
    }
    assert rows[NIC_VF0]["pf"] == NIC_PF and rows[NIC_VF0]["state"] == "free"


def test_topology_and_objects_show_owner_attachments_and_dids(env: Env) -> None:
    dev, ioas, fq, hwpt = env.fault_hwpt(pasid=5)
    topo = env.core.topology()
    units = {u["name"]: u for u in topo["iommus"]}  # type: ignore[attr-defined]
    assert units["dmar0"]["dids_in_use"] == 1 and ACCEL in units["dmar0"]["devices"]
    devs = {d["rid"]: d for d in topo["devices"]}  # type: ignore[attr-defined]
    assert devs[ACCEL]["owner"] == "vmm" and devs[ACCEL]["attached"] == {"5": hwpt}
    objs = {o["id"]: o for o in env.core.objects()}
    assert objs[dev]["type"] == "device" and objs[ioas]["type"] == "ioas"
    assert objs[fq]["type"] == "fault" and objs[hwpt]["type"] == "hwpt_paging"
    assert objs[hwpt]["users"] == 1 and objs[fq]["users"] == 1 and objs[ioas]["users"] == 1


def test_inject_validates_its_arguments(env: Env) -> None:
    assert _errno(env.core.emulation.inject, "bogus", None, 0, 1, 0, True, env.now) == "EINVAL"
    assert (
        _errno(env.core.emulation.inject, "0000:99:00.0", None, 0, 1, 0, True, env.now) == "ENOENT"
    )
    assert _errno(env.core.emulation.inject, ACCEL, 1 << 20, 0, 1, 0, True, env.now) == "EINVAL"
    assert _errno(env.core.emulation.inject, ACCEL, None, 0x123, 1, 0, True, env.now) == "EINVAL"
    assert _errno(env.core.emulation.inject, ACCEL, None, 0, 1, 512, True, env.now) == "EINVAL"
    assert _errno(env.core.emulation.inject, ACCEL, None, 0, 16, 0, True, env.now) == "EINVAL"


def test_plug_of_a_present_device_is_einval_and_unknown_rid_enoent(env: Env) -> None:
    assert _errno(env.core.emulation.plug, ACCEL, env.now) == "EINVAL"
    assert _errno(env.core.emulation.unplug, "0000:99:00.0", env.now) == "ENOENT"
    assert _errno(env.core.emulation.reset, "0000:99:00.0", env.now) == "ENOENT"


def test_every_trace_topic_is_produced_when_enabled() -> None:
    env = Env(limits=CoreLimits(max_pending=1))
    env.core.trace_enabled = True
    dev, ioas, fq, _hwpt = env.fault_hwpt(pasid=5)
    env.ctx.ioas_map(ioas, A, 4096, RW, env.now)
    env.inject(ACCEL, 5, A, grpid=1)
    env.inject(ACCEL, 5, A, grpid=2)  # throttled
    env.inject(ACCEL, 5, A, grpid=3, perm=9)  # bad request
    (ev,) = faults_of(env.service())
    env.ctx.page_response(fq, [(ev.cookie, 0)], env.now)
    env.ctx.ioas_unmap(ioas, A, 4096, env.now)
    env.core.emulation.unplug(ACCEL, env.now)
    topics = {e.topic for e in env.core.take_events() + env.events if hasattr(e, "topic")}
    assert topics >= {"fault", "throttle", "auto_response", "response", "invalidation", "device"}
    assert topics <= TRACE_TOPICS


def test_dma_done_of_a_closed_context_is_not_emitted(env: Env) -> None:
    dev, _ioas, _fq, _hwpt = env.fault_hwpt(pasid=5)
    env.ctx.dma(dev, 5, A, 4096, RW, env.now, "t")
    env.service()
    env.core.close_context(env.ctx, env.now)
    assert dma_done(env.settle()) == []
    check_invariants(env)


def test_dma_arguments_are_checked(env: Env) -> None:
    dev, _ioas, _fq, _hwpt = env.fault_hwpt(pasid=5)
    assert _errno(env.ctx.dma, dev, 5, A + 1, 4096, RW, env.now, 0) == "EINVAL"
    assert _errno(env.ctx.dma, dev, 5, A, 0, RW, env.now, 0) == "EINVAL"
    assert _errno(env.ctx.dma, dev, 5, A, 4096, 0, env.now, 0) == "EINVAL"
    assert _errno(env.ctx.dma, dev, 5, A, 4096, 8, env.now, 0) == "EINVAL"
    assert _errno(env.ctx.dma, 4242, 5, A, 4096, RW, env.now, 0) == "ENOENT"


def test_ioas_map_rules(env: Env) -> None:
    ioas = env.ctx.ioas_alloc()
    assert _errno(env.ctx.ioas_map, ioas, A, 4096, 4, env.now) == "EINVAL"  # EXEC
    assert _errno(env.ctx.ioas_map, ioas, A, 4095, 1, env.now) == "EINVAL"
    assert _errno(env.ctx.ioas_map, ioas, (1 << 64) - 4096, 8192, 1, env.now) == "EINVAL"
    env.ctx.ioas_map(ioas, A, 8192, RW, env.now)
    assert _errno(env.ctx.ioas_map, ioas, A + 4096, 4096, RW, env.now) == "EBUSY"
    assert env.ctx.ioas_unmap(ioas, A, 0x10000, env.now) == 8192


def test_status_counters_have_every_protocol_name(env: Env) -> None:
    c = env.core.status_counters()
    for name in (
        "page_requests",
        "groups",
        "delivered",
        "responses",
        "auto_responses",
        "throttled",
        "prq_overflows",
        "invalidations",
        "bad_requests",
        "hw_auto_responses",
        "partials_discarded",
        "stop_markers",
        "drains",
        "dma_started",
        "dma_completed",
    ):
        assert c[name] == 0, name


def test_an_invalid_descriptor_is_counted_and_does_not_halt_the_queue(env: Env) -> None:
    from hwmodel import IotlbInvDescriptor
    from iopfd.core.intel.dmar import qi_submit_sync

    unit = env.machine.iommus["dmar0"]
    qi_submit_sync(unit, [IotlbInvDescriptor(granularity=0, did=2)], env.core.counters)
    assert env.core.counters["iq_errors"] == 1 and not unit.iq.iqe
    _dev, _ioas, fq, _hwpt = env.fault_hwpt(pasid=5)
    env.inject(ACCEL, 5, A, grpid=1)
    (ev,) = faults_of(env.service())
    assert env.ctx.page_response(fq, [(ev.cookie, 0)], env.now) == 1


def test_forced_unplug_ends_a_dma_in_flight_as_removed_and_answers_its_group_once(env: Env) -> None:
    dev, _ioas, fq, _hwpt = env.fault_hwpt(pasid=5)
    env.ctx.dma(dev, 5, A, 4096, RW, env.now, "t")
    (ev,) = faults_of(env.service())
    auto = env.core.counters["auto_responses"]
    assert env.core.emulation.unplug(ACCEL, env.now, force=True) is True
    (done,) = dma_done(env.settle())
    assert done.status == "removed"
    # The group it had sent was still settled, by the daemon, exactly once.
    assert env.core.counters["auto_responses"] == auto + 1
    assert env.core.pending(env.now) == []
    assert env.core.counters["forced_unplugs"] == 1
    # A late answer from the client is EINVAL and changes nothing.
    responses = env.core.counters["responses"]
    assert _errno(env.ctx.page_response, fq, [(ev.cookie, 0)], env.now) == "EINVAL"
    assert env.core.counters["responses"] == responses
    check_invariants(env)


def test_reset_leaves_the_fault_queues_alone_and_the_function_discards_stale_answers(
    env: Env,
) -> None:
    """VFIO_DEVICE_RESET tells neither iommufd nor the IOMMU driver: what the function
    had posted is still reported and delivered, and stays answerable; the function,
    which forgot those requests in the FLR (SPEC 7.9), discards the answers."""
    dev, _ioas, fq, _hwpt = env.fault_hwpt(pasid=5)
    env.ctx.dma(dev, 5, A, 4096, RW, env.now, "t")  # posted, not yet serviced
    assert env.machine.posted_page_requests
    env.core.emulation.reset(ACCEL, env.now)
    events = env.service()
    (ev,) = faults_of(events)
    (done,) = dma_done(events)
    assert done.status == "failure"  # the FLR aborted the transfer
    assert [r["cookie"] for r in env.core.pending(env.now)] == [ev.cookie]
    fn = env.machine.function(ACCEL)
    assert fn.pri.enabled  # pci_restore_pri_state
    assert env.ctx.page_response(fq, [(ev.cookie, 0)], env.now) == 1
    assert fn.counters["page_responses_discarded"] == 1
    assert fn.counters["unexpected_prgi"] == 0
    assert env.core.counters["resets"] == 1
    check_invariants(env)


def test_hw_info_reports_what_the_unit_implements(env: Env) -> None:
    dev = env.ctx.bind(ACCEL, env.now)
    info = env.ctx.hw_info(dev)
    ecap, cap = int(info["ecap_reg"]), int(info["cap_reg"])  # type: ignore[call-overload]
    assert info["type"] == "intel_vtd"
    assert ecap >> 29 & 1 and ecap >> 42 & 1 and ecap >> 26 & 1  # PRS, PDS, NEST
    assert ecap >> 40 & 1 and (ecap >> 35 & 0x1F) == 19  # PASID, PSS = 20 bits
    assert cap >> 16 & 0x3F == 47 and cap & 7 == 6  # MGAW 48 bits, ND
    assert _errno(env.ctx.hw_info, 4242) == "ENOENT"


def test_devices_carry_a_stable_vfio_index_in_topology_order(env: Env) -> None:
    rows = env.core.device_list()
    assert [r["vfio"] for r in rows] == list(range(len(rows)))
    assert rows[0]["rid"] == ACCEL


def test_objects_and_pending_are_paged_and_build_only_their_page(env: Env) -> None:
    _dev, _ioas, fq, _hwpt = env.fault_hwpt(pasid=5)
    for g in range(7):
        env.inject(ACCEL, 5, A, grpid=g)
    env.service()
    every = env.core.pending(env.now)
    assert len(every) == env.core.pending_count() == 7
    pages = [env.core.pending(env.now, off, 3) for off in (0, 3, 6)]
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [r["cookie"] for p in pages for r in p] == [r["cookie"] for r in every]
    objs = env.core.objects()
    assert len(objs) == env.core.object_count() == 4  # device, IOAS, fault queue, HWPT
    assert env.core.objects(1, 2) == objs[1:3] and env.core.objects(10, 5) == []
