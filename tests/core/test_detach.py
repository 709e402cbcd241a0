"""Detach, replace, unbind, teardown, hot removal: drain, then INVALID exactly once."""

from __future__ import annotations

import pytest

from iopfd.core import CoreError, CoreLimits, DeviceRequest, UnplugDone
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

A = 0x20_0000


def _pending(env: Env) -> list[tuple[int, int]]:
    return [(int(str(r["fault_id"])), int(str(r["cookie"]))) for r in env.core.pending(env.now)]


def test_detach_answers_only_that_pasids_groups(env: Env) -> None:
    dev, _ioas, fq, hwpt = env.fault_hwpt(pasid=5)
    env.ctx.attach(dev, hwpt, 6, env.now)
    env.inject(ACCEL, 5, A, grpid=1)
    env.inject(ACCEL, 6, A, grpid=2)
    env.service()
    env.responses.clear()
    env.ctx.detach(dev, 5, env.now)
    assert [(r.pasid, r.prg_index, r.response_code) for _u, r in env.responses] == [(5, 1, 1)]
    assert [r["pasid"] for r in env.core.pending(env.now)] == [6]
    check_invariants(env)


def test_detach_drains_a_request_already_in_the_queue(env: Env) -> None:
    dev, _ioas, _fq, _hwpt = env.fault_hwpt(pasid=5)
    env.inject(ACCEL, 5, A, grpid=3)
    env.machine.advance(env.now)  # in the PRQ, the thread has not run yet
    assert env.machine.iommus["dmar0"].prq.used == 1
    env.ctx.detach(dev, 5, env.now)
    assert env.machine.iommus["dmar0"].prq.used == 0
    assert faults_of(env.service()) == []  # never delivered: the attachment was gone
    c = env.core.status_counters()
    assert (c["groups"], c["auto_responses"], c["delivered"]) == (1, 1, 0)
    check_invariants(env)


def test_detach_drains_requests_still_posted_by_the_function(env: Env) -> None:
    dev, _ioas, _fq, _hwpt = env.fault_hwpt(pasid=5)
    env.ctx.dma(dev, 5, A, 2 * 4096, RW, env.now, "t")  # requests posted, not delivered
    assert env.machine.posted_page_requests == 2
    env.ctx.detach(dev, 5, env.now)
    assert env.machine.posted_page_requests == 0
    (done,) = dma_done(env.service())
    assert done.status == "invalid"
    assert env.core.status_counters()["delivered"] == 0
    check_invariants(env)


def test_detach_discards_partials_of_that_pasid(env: Env) -> None:
    dev, _ioas, _fq, hwpt = env.fault_hwpt(pasid=5)
    env.ctx.attach(dev, hwpt, 6, env.now)
    env.inject(ACCEL, 5, A, grpid=1, last=False)
    env.inject(ACCEL, 6, A, grpid=2, last=False)
    env.service()
    env.ctx.detach(dev, 5, env.now)
    info = env.core.devices[ACCEL]
    assert [f[1] for fs in info.fault_param.partials.values() for f in fs] == [6]


def test_replace_answers_groups_of_the_old_attachment_only_on_the_old_queue(env: Env) -> None:
    dev, ioas, fq_old, old = env.fault_hwpt(pasid=5)
    nic, nic_ioas, fq_new, new = env.fault_hwpt(NIC_PF, pasid=5)
    env.inject(ACCEL, 5, A, grpid=1)
    env.inject(NIC_PF, 5, A, grpid=2)
    env.service()
    env.ctx.replace(dev, new, 5, env.now)
    assert _pending(env) == [(fq_new, 1)]  # the new queue's group is untouched
    c = env.core.status_counters()
    assert c["auto_responses"] == 1
    env.inject(ACCEL, 5, A, grpid=3)
    (ev,) = faults_of(env.service())
    assert ev.fault_id == fq_new  # later faults reach the new HWPT
    check_invariants(env)


def test_replace_to_a_non_fault_hwpt_answers_and_leaves_the_iopf_queue(kenv: Env) -> None:
    env = kenv
    dev, ioas, _fq, _old = env.fault_hwpt(pasid=None)
    env.inject(ACCEL, None, A, grpid=1, last=False)
    env.inject(ACCEL, None, A + 4096, grpid=2)
    env.service()
    plain = env.ctx.hwpt_alloc(dev, ioas, [], None, None)
    env.ctx.replace(dev, plain, None, env.now)
    assert env.core.pending(env.now) == []
    info = env.core.devices[ACCEL]
    assert info.info.iopf_refcount == 0 and info.fault_param.n_partials == 0
    # intel_iommu_disable_iopf: v6.12 turns PRI and PRE off with the last fault-capable
    # attachment; from v6.15 PRI stays on for the device's whole IOMMU lifetime.
    assert env.machine.function(ACCEL).pri.enabled is env.core.profile.pri_at_probe
    check_invariants(env)


def test_unbind_detaches_every_pasid_and_answers(env: Env) -> None:
    dev, _ioas, _fq, hwpt = env.fault_hwpt(pasid=5)
    env.ctx.attach(dev, hwpt, None, env.now)
    env.inject(ACCEL, 5, A, grpid=1)
    env.inject(ACCEL, None, A, grpid=2)
    env.service()
    env.ctx.unbind(dev, env.now)
    assert env.core.pending(env.now) == []
    assert env.core.devices[ACCEL].handles == {}
    assert env.core.status_counters()["auto_responses"] == 2
    check_invariants(env)


def test_close_context_answers_every_pending_group(env: Env) -> None:
    env.fault_hwpt(ACCEL, pasid=5)
    env.fault_hwpt(NIC_PF, pasid=None)
    env.inject(ACCEL, 5, A, grpid=1)
    env.inject(NIC_PF, None, A, grpid=2)
    env.service()
    env.responses.clear()
    env.core.close_context(env.ctx, env.now)
    assert sorted(r.prg_index for _u, r in env.responses) == [1, 2]
    assert all(r.response_code == 1 for _u, r in env.responses)
    c = env.core.status_counters()
    assert c["groups"] == c["auto_responses"] == 2
    check_invariants(env)


def test_forced_unplug_drains_answers_and_leaves_the_dev_id_enodev(env: Env) -> None:
    dev, _ioas, _fq, _hwpt = env.fault_hwpt(pasid=5)
    env.inject(ACCEL, 5, A, grpid=1)
    env.service()
    env.ctx.dma(dev, 5, A + 0x10000, 4096, RW, env.now, "t")  # posted at unplug time
    assert env.core.emulation.unplug(ACCEL, env.now, force=True) is True
    assert env.core.pending(env.now) == []
    (done,) = dma_done(env.service())
    assert done.status in ("invalid", "removed")
    row = next(d for d in env.core.device_list() if d["rid"] == ACCEL)
    assert row["state"] == "removed"
    with pytest.raises(CoreError) as ei:
        env.ctx.attach(dev, 1, None, env.now)
    assert ei.value.errno == "ENODEV"
    with pytest.raises(CoreError) as ei:
        env.core.emulation.unplug(ACCEL, env.now)
    assert ei.value.errno == "EINVAL"
    with pytest.raises(CoreError) as ei:
        env.ctx.bind(ACCEL, env.now)
    assert ei.value.errno == "ENODEV"
    check_invariants(env)
    env.core.emulation.plug(ACCEL, env.now)
    env.ctx.unbind(dev, env.now)  # the stale ID goes away
    env.fault_hwpt(pasid=5)
    env.inject(ACCEL, 5, A, grpid=1)
    assert len(faults_of(env.service())) == 1
    check_invariants(env)


def test_unplug_asks_the_owner_first_and_completes_when_it_unbinds(env: Env) -> None:
    # vfio_unregister_group_dev: the REQ interrupt goes to the user, who may finish;
    # the removal waits for the release.
    dev, ioas, fq, _hwpt = env.fault_hwpt(pasid=5)
    env.inject(ACCEL, 5, A, grpid=1)
    (ev,) = faults_of(env.service())
    assert env.core.emulation.unplug(ACCEL, env.now, ctx=env.ctx, tag="u") is False
    (req,) = [e for e in env.core.take_events() if isinstance(e, DeviceRequest)]
    assert (req.ctx, req.dev_id, req.rid) == (env.ctx, dev, ACCEL)
    assert next(d for d in env.core.device_list() if d["rid"] == ACCEL)["removing"]
    # Still the owner's: the pending cookie is answerable, DMA still runs.
    env.ctx.ioas_map(ioas, A, 4096, RW, env.now)
    assert env.ctx.page_response(fq, [(ev.cookie, 0)], env.now) == 1
    assert [e for e in env.tick() if isinstance(e, UnplugDone)] == []
    other = env.core.open_context("other")
    with pytest.raises(CoreError) as ei:
        env.core.emulation.unplug(ACCEL, env.now)
    assert ei.value.errno == "EBUSY"
    env.ctx.unbind(dev, env.now)
    with pytest.raises(CoreError) as ei:
        other.bind(ACCEL, env.now)  # never bound again on its way out
    assert ei.value.errno == "ENODEV"
    (done,) = [e for e in env.service() if isinstance(e, UnplugDone)]
    assert (done.ctx, done.tag, done.rid, done.forced) == (env.ctx, "u", ACCEL, False)
    assert next(d for d in env.core.device_list() if d["rid"] == ACCEL)["state"] == "removed"
    c = env.core.status_counters()
    assert (c["unplugs"], c["forced_unplugs"], c["responses"]) == (1, 0, 1)
    check_invariants(env)


def test_unplug_forces_the_removal_when_the_grace_period_ends(env: Env) -> None:
    dev, _ioas, _fq, _hwpt = env.fault_hwpt(pasid=5)
    env.inject(ACCEL, 5, A, grpid=1)
    env.service()
    assert env.core.emulation.unplug(ACCEL, env.now, grace_ns=5_000_000_000, tag=1) is False
    assert env.core.next_deadline() == env.now + 5_000_000_000
    assert [e for e in env.tick(4_000_000_000) if isinstance(e, UnplugDone)] == []
    assert len(env.core.pending(env.now)) == 1  # answerable until the removal
    (done,) = [e for e in env.tick(1_000_000_000) if isinstance(e, UnplugDone)]
    assert done.forced and done.tag == 1
    assert env.core.pending(env.now) == []  # answered INVALID by the daemon
    c = env.core.status_counters()
    assert (c["forced_unplugs"], c["auto_responses"]) == (1, 1)
    with pytest.raises(CoreError) as ei:
        env.ctx.dma(dev, 5, A, 4096, RW, env.now, 0)
    assert ei.value.errno == "ENODEV"
    check_invariants(env)


def test_unplug_of_a_free_device_removes_it_at_once(env: Env) -> None:
    assert env.core.emulation.unplug(ACCEL, env.now) is True
    assert not [e for e in env.core.take_events() if isinstance(e, DeviceRequest)]
    assert env.core.status_counters()["forced_unplugs"] == 0


def test_unplug_of_a_pf_takes_its_vfs(env: Env) -> None:
    vf, _ioas, _fq, _hwpt = env.fault_hwpt(NIC_VF0, pasid=None, fault=False)
    # The VF's owner is asked too (its PF goes, so does it); force ends the wait.
    assert env.core.emulation.unplug(NIC_PF, env.now) is False
    (req,) = [e for e in env.core.take_events() if isinstance(e, DeviceRequest)]
    assert (req.dev_id, req.rid) == (vf, NIC_VF0)
    env.ctx.unbind(vf, env.now)
    (done,) = [e for e in env.service() if isinstance(e, UnplugDone)]
    assert done.rid == NIC_PF and not done.forced
    states = {d["rid"]: d["state"] for d in env.core.device_list()}
    assert states[NIC_PF] == states[NIC_VF0] == "removed"
    with pytest.raises(CoreError) as ei:
        env.core.emulation.plug(NIC_VF0, env.now)
    assert ei.value.errno == "EINVAL"
    env.core.emulation.plug(NIC_PF, env.now)
    states = {d["rid"]: d["state"] for d in env.core.device_list()}
    assert states[NIC_PF] == states[NIC_VF0] == "free"
    check_invariants(env)


def test_reset_clears_response_failure_and_restores_pri(kenv: Env) -> None:
    env = kenv
    dev, _ioas, _fq, _hwpt = env.fault_hwpt(pasid=None)
    fn = env.machine.function(ACCEL)
    fn.pri.response_failure = True
    env.ctx.device_reset(dev, env.now)
    assert fn.pri.enabled and not fn.pri.response_failure  # pci_restore_pri_state
    check_invariants(env)


def test_reset_keeps_pending_groups_answerable_and_frees_partials(kenv: Env) -> None:
    env = kenv
    dev, _ioas, fq, _hwpt = env.fault_hwpt(pasid=None)
    env.inject(ACCEL, None, A, grpid=1)
    env.inject(ACCEL, None, A, grpid=2, last=False)
    (ev,) = faults_of(env.service())
    env.ctx.device_reset(dev, env.now)
    assert [r["cookie"] for r in env.core.pending(env.now)] == [ev.cookie]
    # The kernel keeps them for the next group with that index; the function forgot
    # them, so iopfd frees them.
    assert env.core.devices[ACCEL].fault_param.n_partials == 0
    assert env.ctx.page_response(fq, [(ev.cookie, 0)], env.now) == 1
    env.inject(ACCEL, None, A, grpid=2)  # the function is back in service
    (ev2,) = faults_of(env.service())
    assert len(ev2.faults) == 1
    with pytest.raises(CoreError) as ei:
        env.ctx.device_reset(4242, env.now)
    assert ei.value.errno == "ENOENT"
    check_invariants(env)


def test_a_released_device_takes_none_of_its_dma_to_the_next_owner() -> None:
    """A retry of tenant B's transfer must not fault into tenant C's attachment after
    B closed: release stops the device's DMA first, as VFIO's does."""
    env = Env()
    core = env.core
    b = core.open_context("tenantB")
    dev_b, _, fq_b, _ = env.fault_hwpt(ACCEL, 5, ctx=b)
    b.dma(dev_b, 5, 0x7000_0000, 0x1000, 3, env.now, "B")
    for _ in range(2):  # SUCCESS without mapping: a back-off retry is scheduled
        for fd in faults_of(env.service()):
            b.page_response(fq_b, [(fd.cookie, 0)], env.now)
    core.close_context(b, env.now)
    core.service(env.now)  # no time passes: B's back-off retry is still due later
    core.take_events()
    c = core.open_context("tenantC")
    env.fault_hwpt(ACCEL, 5, ctx=c)
    assert faults_of(env.settle(5)) == []
    assert not env.machine.function(ACCEL)._transfers
    check_invariants(env)


def test_unbind_ends_the_devices_dma_in_flight_as_removed(env: Env) -> None:
    dev, _ioas, _fq, _hwpt = env.fault_hwpt(pasid=5)
    env.ctx.dma(dev, 5, 0x7000_0000, 0x1000, 3, env.now, "t")
    assert faults_of(env.service())
    env.ctx.unbind(dev, env.now)
    assert [d.status for d in dma_done(env.settle())] == ["removed"]
    assert env.core.pending(env.now) == []
    check_invariants(env)


def test_an_answer_overdue_past_the_response_timeout_is_given_by_the_daemon() -> None:
    # Shared PRI: a PF owner that never answers must not hold a VF owner's DMA for good.
    env = Env(limits=CoreLimits(response_timeout_ns=5_000_000_000))
    _dev, _ioas, fq, _hwpt = env.fault_hwpt(pasid=5)
    env.inject(ACCEL, 5, A, grpid=1)
    (ev,) = faults_of(env.service())
    assert env.core.next_deadline() == env.now + 5_000_000_000
    env.tick(4_000_000_000)
    assert len(env.core.pending(env.now)) == 1
    env.responses.clear()
    env.tick(1_000_000_000)
    assert env.core.pending(env.now) == []
    assert [(r.prg_index, r.response_code) for _u, r in env.responses] == [(1, 1)]
    c = env.core.status_counters()
    assert (c["response_timeouts"], c["auto_responses"]) == (1, 1)
    with pytest.raises(CoreError) as ei:
        env.ctx.page_response(fq, [(ev.cookie, 0)], env.now)  # too late now
    assert ei.value.errno == "EINVAL"
    check_invariants(env)


def test_a_group_answered_in_time_is_never_timed_out_and_0_means_never() -> None:
    env = Env(limits=CoreLimits(response_timeout_ns=5_000_000_000))
    _dev, _ioas, fq, _hwpt = env.fault_hwpt(pasid=5)
    env.inject(ACCEL, 5, A, grpid=1)
    (ev,) = faults_of(env.service())
    assert env.ctx.page_response(fq, [(ev.cookie, 0)], env.now) == 1
    assert env.core.next_deadline() is None
    env.tick(10_000_000_000)
    assert env.core.status_counters()["response_timeouts"] == 0
    never = Env(limits=CoreLimits(response_timeout_ns=0))
    never.fault_hwpt(pasid=5)
    never.inject(ACCEL, 5, A, grpid=1)
    never.service()
    never.tick(10**12)
    assert len(never.core.pending(never.now)) == 1


def test_the_response_deadlines_never_outgrow_the_pending_groups() -> None:
    # Invariant 4: answered groups leave the deadline heap, whatever the answer order.
    env = Env(limits=CoreLimits(response_timeout_ns=60_000_000_000, max_pending=1 << 16))
    _dev, _ioas, fq, _hwpt = env.fault_hwpt(pasid=5)
    env.inject(ACCEL, 5, A, grpid=500)  # one old group stays pending throughout
    env.service()
    for round_ in range(40):
        for g in range(100):
            env.inject(ACCEL, 5, A, grpid=g)
        cookies = [e.cookie for e in faults_of(env.service())]
        assert env.ctx.page_response(fq, [(c, 0) for c in cookies], env.now) == 100
        env.now += 1_000_000
        assert len(env.core.deadlines.heap) <= 2 * 1 + 64 + 100, round_
    assert env.core.deadlines.live == 1
    check_invariants(env)
