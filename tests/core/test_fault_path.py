"""The fault path: PRQ thread, partial groups, handler lookup, throttling, overflow."""

from __future__ import annotations

from hwmodel import IommuSpec, Perm, TopologySpec, default_topology
from iopfd.core import CoreLimits
from iopfd.core.io_pgfault import LAST_PAGE, NEEDS_PASID, PASID_VALID
from iopfd.core.testing import (
    ACCEL,
    ACCEL1,
    RW,
    Env,
    check_invariants,
    dma_done,
    faults_of,
    traces,
)

A = 0x4000_0000


def test_partials_wait_for_the_last_and_the_group_comes_whole_in_arrival_order(env: Env) -> None:
    dev, _ioas, fq, _hwpt = env.fault_hwpt(pasid=5)
    for i in (2, 0, 1):
        env.inject(ACCEL, 5, A + i * 4096, grpid=7, last=False)
    env.inject(ACCEL, 5, A + 0x9000, grpid=8, last=False)  # another group: not joined
    assert faults_of(env.service()) == []
    env.inject(ACCEL, 5, A + 0x5000, grpid=7, last=True)
    (ev,) = faults_of(env.service())
    assert ev.fault_id == fq and ev.cookie == 1 and ev.throttled == 0
    assert [r["addr"] for r in ev.faults] == [A + 0x2000, A, A + 0x1000, A + 0x5000]
    # intel_prq_report sets NEEDS_PASID with PASID_VALID; iommufd copies flags raw.
    assert [r["flags"] for r in ev.faults] == [5, 5, 5, 7]
    assert [r["flags"] for r in ev.faults] == [PASID_VALID | NEEDS_PASID] * 3 + [
        PASID_VALID | NEEDS_PASID | LAST_PAGE
    ]
    assert {(r["dev_id"], r["pasid"], r["grpid"], r["perm"], r["length"]) for r in ev.faults} == {
        (dev, 5, 7, RW, 0)
    }
    assert env.core.devices[ACCEL].fault_param.n_partials == 1  # grpid 8 still waits
    c = env.core.status_counters()
    assert (c["page_requests"], c["groups"], c["delivered"]) == (5, 1, 1)
    check_invariants(env)


def test_request_without_pasid_has_no_pasid_valid_flag(env: Env) -> None:
    env.fault_hwpt(pasid=None)
    env.inject(ACCEL, None, A, grpid=3)
    (ev,) = faults_of(env.service())
    assert ev.faults[0]["flags"] == LAST_PAGE and ev.faults[0]["pasid"] == 0


def test_request_without_fault_capable_attachment_is_answered_invalid_on_arrival(env: Env) -> None:
    # iommu_report_device_fault: find_fault_handler runs for every request, and
    # err_bad_iopf answers INVALID at once, last request or not; nothing is set aside.
    dev, ioas, _fq, _hwpt = env.fault_hwpt(pasid=5)  # PRE on for the device
    plain = env.ctx.hwpt_alloc(dev, ioas, ["pasid"], None, None)
    env.ctx.attach(dev, plain, None, env.now)
    env.inject(ACCEL, None, A, grpid=4, last=False)
    env.responses.clear()
    assert faults_of(env.service()) == []
    assert [(r.response_code, r.prg_index, r.pasid_present) for _u, r in env.responses] == [
        (1, 4, False)
    ]
    assert env.core.devices[ACCEL].fault_param.n_partials == 0
    env.inject(ACCEL, None, A + 4096, grpid=4, last=True)
    assert faults_of(env.service()) == []
    assert [(r.response_code, r.prg_index) for _u, r in env.responses] == [(1, 4), (1, 4)]
    c = env.core.status_counters()
    # Each request answered on arrival counts as a group of one, answered by the daemon.
    assert (c["groups"], c["auto_responses"], c["delivered"]) == (2, 2, 0)
    assert (c["no_handler_responses"], c["no_handler_partial_responses"]) == (2, 1)
    check_invariants(env)


def test_extra_answers_of_a_dma_group_without_handler_are_unexpected_prgis(env: Env) -> None:
    # A DMA miss on a HWPT without a fault queue under 6.18 (PRI on from probe): every
    # request of the group is answered INVALID; the function takes the first and sees
    # the others as responses matching no outstanding group (PCIe UPRGI).
    dev, ioas, _fq, _hwpt = env.fault_hwpt(pasid=5)
    plain = env.ctx.hwpt_alloc(dev, ioas, ["pasid"], None, None)
    env.ctx.attach(dev, plain, None, env.now)
    env.ctx.dma(dev, None, A, 3 * 4096, RW, env.now, "t")
    (done,) = dma_done(env.settle())
    assert (done.status, done.faults) == ("invalid", 3)
    fn = env.machine.function(ACCEL)
    assert fn.counters["unexpected_prgi"] == 2 and fn.pri.unexpected_prgi
    c = env.core.status_counters()
    assert (c["unexpected_prgi"], c["groups"], c["auto_responses"]) == (2, 3, 3)
    check_invariants(env)


def test_request_to_a_device_with_page_requests_off_is_answered_by_the_hardware(env: Env) -> None:
    env.ctx.bind(ACCEL, env.now)
    env.inject(ACCEL, 5, A, grpid=1)
    env.service()
    c = env.core.status_counters()
    assert c["hw_auto_responses"] == 1 and c["groups"] == 0 and c["page_requests"] == 0


def test_bad_requests_priv_or_exec_read_are_answered_invalid_never_delivered(env: Env) -> None:
    env.fault_hwpt(pasid=5)
    env.inject(ACCEL, 5, A, grpid=1, perm=int(Perm.READ | Perm.PRIV))
    env.inject(ACCEL, 5, A, grpid=2, perm=int(Perm.READ | Perm.EXEC))
    env.responses.clear()
    assert faults_of(env.service()) == []
    assert sorted((r.prg_index, r.response_code) for _u, r in env.responses) == [(1, 1), (2, 1)]
    c = env.core.status_counters()
    assert c["bad_requests"] == 2 and c["groups"] == 0 and c["page_requests"] == 2
    check_invariants(env)


def test_a_bad_non_last_request_is_dropped_and_the_rest_of_its_group_delivered(env: Env) -> None:
    # handle_bad_prq_event answers only a last request; a non-last one is dropped and
    # its group still reaches the handler without it.
    env.fault_hwpt(pasid=5)
    env.inject(ACCEL, 5, A, grpid=3, last=False)
    env.inject(ACCEL, 5, A + 4096, grpid=3, last=False, perm=int(Perm.WRITE | Perm.PRIV))
    env.responses.clear()
    assert faults_of(env.service()) == [] and env.responses == []
    env.inject(ACCEL, 5, A + 8192, grpid=3)
    (ev,) = faults_of(env.service())
    assert [r["addr"] for r in ev.faults] == [A, A + 8192]
    assert env.responses == []
    c = env.core.status_counters()
    assert (c["bad_requests"], c["bad_requests_dropped"], c["groups"], c["delivered"]) == (
        1,
        1,
        1,
        1,
    )
    assert env.core.devices[ACCEL].fault_param.n_partials == 0
    check_invariants(env)


def test_bad_last_request_takes_its_groups_partials_with_it(env: Env) -> None:
    env.fault_hwpt(pasid=5)
    env.inject(ACCEL, 5, A, grpid=4, last=False)
    env.inject(ACCEL, 5, A + 4096, grpid=4, perm=int(Perm.READ | Perm.EXEC))
    assert faults_of(env.service()) == []
    assert env.core.devices[ACCEL].fault_param.n_partials == 0
    env.inject(ACCEL, 5, A, grpid=4)  # a fresh group with that index
    (ev,) = faults_of(env.service())
    assert len(ev.faults) == 1


def test_stop_marker_is_skipped_without_response(env: Env) -> None:
    env.fault_hwpt(pasid=5)
    env.inject(ACCEL, 5, A, grpid=1, perm=0)
    env.responses.clear()
    assert faults_of(env.service()) == []
    assert env.responses == []
    assert env.core.status_counters()["stop_markers"] == 1


def test_response_carries_rid_pasid_and_prgi_of_the_last_request(env: Env) -> None:
    _dev, _ioas, fq, _hwpt = env.fault_hwpt(pasid=9)
    env.inject(ACCEL, 9, A, grpid=0x1AB, last=False)
    env.inject(ACCEL, 9, A + 4096, grpid=0x1AB)
    (ev,) = faults_of(env.service())
    env.responses.clear()
    assert env.ctx.page_response(fq, [(ev.cookie, 1)], env.now) == 1
    ((unit, resp),) = env.responses
    info = env.core.devices[ACCEL]
    assert unit == "dmar0"
    assert (resp.sid, resp.pasid_present, resp.pasid, resp.prg_index, resp.response_code) == (
        info.sid,
        True,
        9,
        0x1AB,
        1,
    )


def test_cookies_start_at_1_and_only_grow(env: Env) -> None:
    _dev, _ioas, fq, _hwpt = env.fault_hwpt(pasid=5)
    cookies = []
    for g in range(4):
        env.inject(ACCEL, 5, A, grpid=g)
        (ev,) = faults_of(env.service())
        cookies.append(ev.cookie)
        env.ctx.page_response(fq, [(ev.cookie, 0)], env.now)  # freed at once
    assert cookies == [1, 2, 3, 4]


def test_full_fault_queue_answers_success_and_reports_throttled_on_next_event() -> None:
    env = Env(limits=CoreLimits(max_pending=2))
    _dev, _ioas, fq, _hwpt = env.fault_hwpt(pasid=5)
    for g in range(4):
        env.inject(ACCEL, 5, A, grpid=g)
    env.responses.clear()
    evs = faults_of(env.service())
    assert [e.cookie for e in evs] == [1, 2]
    assert sorted((r.prg_index, r.response_code) for _u, r in env.responses) == [(2, 0), (3, 0)]
    assert env.core.status_counters()["throttled"] == 2
    env.ctx.page_response(fq, [(1, 0)], env.now)
    env.inject(ACCEL, 5, A, grpid=9)
    (ev,) = faults_of(env.service())
    assert ev.cookie == 3 and ev.throttled == 2
    env.ctx.page_response(fq, [(2, 0)], env.now)
    env.inject(ACCEL, 5, A, grpid=10)
    (ev,) = faults_of(env.service())
    assert ev.throttled == 0
    check_invariants(env)


def test_prq_overflow_discards_partials_and_clears_pro() -> None:
    topo = default_topology()
    topo = TopologySpec((IommuSpec("dmar0", prq_order=0), IommuSpec("dmar1")), topo.functions)
    env = Env(topo)
    env.core.trace_enabled = True
    env.fault_hwpt(pasid=5)
    cap = env.machine.iommus["dmar0"].prq.capacity
    for i in range(cap + 10):
        env.inject(ACCEL, 5, A + i * 4096, grpid=1, last=False)
    env.inject(ACCEL, 5, A, grpid=2)  # lost to the overflow: the hardware answers Success
    ev = env.service()
    c = env.core.status_counters()
    assert c["prq_overflows"] == 1 and c["partials_discarded"] == cap
    assert env.core.devices[ACCEL].fault_param.n_partials == 0
    assert env.machine.iommus["dmar0"].read_prs() == 0
    assert traces(ev, "overflow")
    env.inject(ACCEL, 5, A, grpid=1)
    (fe,) = faults_of(env.service())
    assert len(fe.faults) == 1  # nothing of the discarded partials joined it
    check_invariants(env)


def test_dma_fault_map_success_completes_the_transfer(env: Env) -> None:
    dev, ioas, fq, _hwpt = env.fault_hwpt(pasid=5)
    env.ctx.dma(dev, 5, A, 3 * 4096, RW, env.now, "t")
    (ev,) = faults_of(env.service())
    assert len(ev.faults) == 3
    env.ctx.ioas_map(ioas, A, 3 * 4096, RW, env.now)
    env.ctx.page_response(fq, [(ev.cookie, 0)], env.now)
    (done,) = dma_done(env.settle())
    assert (done.tag, done.status, done.faults, done.bytes) == ("t", "ok", 3, 3 * 4096)
    check_invariants(env)


def test_dma_answered_invalid_fails(env: Env) -> None:
    dev, _ioas, fq, _hwpt = env.fault_hwpt(pasid=None)
    env.ctx.dma(dev, None, A, 4096, RW, env.now, 7)
    (ev,) = faults_of(env.service())
    env.ctx.page_response(fq, [(ev.cookie, 1)], env.now)
    (done,) = dma_done(env.settle())
    assert done.status == "invalid"


def test_two_devices_two_units_each_find_their_own_attachment(env: Env) -> None:
    d0, _i0, f0, _h0 = env.fault_hwpt(ACCEL, pasid=5)
    d1, _i1, f1, _h1 = env.fault_hwpt(ACCEL1, pasid=5)
    env.inject(ACCEL, 5, A, grpid=1)
    env.inject(ACCEL1, 5, A, grpid=1)
    evs = faults_of(env.service())
    assert sorted((e.fault_id, e.faults[0]["dev_id"]) for e in evs) == sorted([(f0, d0), (f1, d1)])


def test_trace_records_only_when_enabled(env: Env) -> None:
    env.fault_hwpt(pasid=5)
    env.inject(ACCEL, 5, A, grpid=1)
    assert traces(env.service(), "fault") == []
    env.core.trace_enabled = True
    env.inject(ACCEL, 5, A, grpid=2)
    (t,) = traces(env.service(), "fault")
    assert t.record["grpid"] == 2 and t.record["rid"] == ACCEL


def test_a_queue_out_of_uint32_cookies_refuses_groups_instead_of_reusing(env: Env) -> None:
    _dev, _ioas, fq, _hwpt = env.fault_hwpt(pasid=5)
    queue = env.ctx.objects[fq]
    queue.next_cookie = 0xFFFF_FFFF  # type: ignore[attr-defined]
    env.inject(ACCEL, 5, A, grpid=1)
    env.inject(ACCEL, 5, A, grpid=2)
    evs = faults_of(env.service())
    assert [e.cookie for e in evs] == [0xFFFF_FFFF]
    assert env.core.status_counters()["cookies_exhausted"] == 1
    check_invariants(env)


class _NoScan(dict):  # type: ignore[type-arg]
    """A dict that refuses to be walked: lookups only (seed 000, seed 004 step 8)."""

    def __iter__(self):  # type: ignore[no-untyped-def]
        raise AssertionError("the fault path walked a table instead of a lookup")

    def values(self):  # type: ignore[no-untyped-def]
        raise AssertionError("the fault path walked a table instead of a lookup")

    def items(self):  # type: ignore[no-untyped-def]
        raise AssertionError("the fault path walked a table instead of a lookup")


def test_fault_path_and_answers_only_look_up_never_walk(env: Env) -> None:
    dev, ioas, fq, _hwpt = env.fault_hwpt(pasid=5)
    env.fault_hwpt(ACCEL1, pasid=None)
    us = env.core.units["dmar0"]
    us.devices = _NoScan(us.devices)
    queue = env.ctx.objects[fq]
    queue.groups = _NoScan(queue.groups)  # type: ignore[attr-defined]
    info = env.core.devices[ACCEL]
    info.handles = _NoScan(info.handles)
    for g in range(3):
        env.inject(ACCEL, 5, A, grpid=g, last=False)
        env.inject(ACCEL, 5, A + 4096, grpid=g)
    evs = faults_of(env.service())
    assert len(evs) == 3
    assert env.ctx.page_response(fq, [(e.cookie, 0) for e in evs] + [(99, 0)], env.now) == 3


def test_a_partial_of_one_pasid_never_joins_another_pasids_group(env: Env) -> None:
    # The kernel matches set-aside requests by group index alone; iopfd matches the
    # PASID too and frees the other PASID's leftover instead of delivering it.
    dev, _ioas, fq5, _h5 = env.fault_hwpt(pasid=5)
    ioas6 = env.ctx.ioas_alloc()
    fq6 = env.ctx.fault_alloc()
    h6 = env.ctx.hwpt_alloc(dev, ioas6, ["pasid"], fq6, None)
    env.ctx.attach(dev, h6, 6, env.now)
    env.inject(ACCEL, 5, A, grpid=9, last=False)
    env.inject(ACCEL, 6, A + 4096, grpid=9, last=True)
    (ev,) = faults_of(env.service())
    assert ev.fault_id == fq6
    assert [(r["pasid"], r["addr"]) for r in ev.faults] == [(6, A + 4096)]
    assert env.core.devices[ACCEL].fault_param.n_partials == 0
    assert env.core.status_counters()["partials_discarded"] == 1
    env.inject(ACCEL, 5, A + 8192, grpid=9)
    (ev5,) = faults_of(env.service())
    assert ev5.fault_id == fq5 and [r["addr"] for r in ev5.faults] == [A + 8192]
    check_invariants(env)


def test_partials_are_all_freed_when_the_last_fault_capable_attachment_goes(env: Env) -> None:
    # iopf_queue_remove_device frees the device's partial list.
    dev, ioas, _fq, _hwpt = env.fault_hwpt(pasid=5)
    plain = env.ctx.hwpt_alloc(dev, ioas, ["pasid"], None, None)
    env.ctx.attach(dev, plain, None, env.now)
    env.inject(ACCEL, 5, A, grpid=1, last=False)
    env.inject(ACCEL, 5, A + 4096, grpid=2, last=False)
    env.service()
    info = env.core.devices[ACCEL]
    assert info.fault_param.n_partials == 2
    env.ctx.detach(dev, 5, env.now)
    assert info.fault_param.n_partials == 0 and info.fault_param.partials == {}
    assert info.info.iopf_refcount == 0
    check_invariants(env)
