"""Responses: found by (fault queue, cookie), applied in order as the fault fd's
``write()`` applies them (``iommufd_fault_fops_write``): a bad entry ends the write."""

from __future__ import annotations

import pytest

from iopfd.core import CoreError
from iopfd.core.testing import ACCEL, ACCEL1, Env, check_invariants, faults_of

A = 0x10_0000


def _two_groups(env: Env) -> tuple[int, list[int]]:
    _dev, _ioas, fq, _hwpt = env.fault_hwpt(pasid=5)
    assert fq is not None
    env.inject(ACCEL, 5, A, grpid=1)
    env.inject(ACCEL, 5, A, grpid=2)
    return fq, [e.cookie for e in faults_of(env.service())]


def _einval(env: Env, fq: int, responses: list[tuple[int, int]]) -> None:
    with pytest.raises(CoreError) as ei:
        env.ctx.page_response(fq, responses, env.now)
    assert ei.value.errno == "EINVAL"


def test_entries_apply_in_order_and_stop_at_the_first_unknown_cookie(env: Env) -> None:
    # iommufd_fault_fops_write: a bad entry ends the write; what came before stays.
    fq, (c1, c2) = _two_groups(env)
    assert env.ctx.page_response(fq, [(c1, 0), (999, 0), (c2, 1)], env.now) == 1
    assert env.core.status_counters()["responses"] == 1
    assert [r["cookie"] for r in env.core.pending(env.now)] == [c2]
    assert env.ctx.page_response(fq, [(c2, 1)], env.now) == 1
    check_invariants(env)


def test_a_first_entry_that_is_bad_is_einval_and_applies_nothing(env: Env) -> None:
    fq, (c1, c2) = _two_groups(env)
    env.responses.clear()
    _einval(env, fq, [(999, 0), (c1, 0), (c2, 0)])
    assert env.responses == []
    assert len(env.core.pending(env.now)) == 2
    check_invariants(env)


def test_repeated_cookie_stops_at_the_repeat(env: Env) -> None:
    fq, (c1, c2) = _two_groups(env)
    env.responses.clear()
    assert env.ctx.page_response(fq, [(c1, 0), (c1, 0), (c2, 1)], env.now) == 1
    assert len(env.responses) == 1
    assert [r["cookie"] for r in env.core.pending(env.now)] == [c2]
    check_invariants(env)


def test_code_other_than_0_or_1_stops_processing_and_keeps_the_group(env: Env) -> None:
    fq, (c1, c2) = _two_groups(env)
    env.responses.clear()
    _einval(env, fq, [(c1, 2), (c2, 0)])
    _einval(env, fq, [(c1, 0xF)])
    assert env.responses == []
    assert env.ctx.page_response(fq, [(c1, 0), (c2, -1)], env.now) == 1
    assert [r["cookie"] for r in env.core.pending(env.now)] == [c2]
    assert env.ctx.page_response(fq, [(c2, 0)], env.now) == 1
    check_invariants(env)


def test_an_empty_write_applies_nothing_and_returns_zero(env: Env) -> None:
    fq, _cookies = _two_groups(env)
    assert env.ctx.page_response(fq, [], env.now) == 0
    assert len(env.core.pending(env.now)) == 2


def test_unknown_or_foreign_fault_id_is_enoent_for_the_whole_call(env: Env) -> None:
    fq, (c1, _c2) = _two_groups(env)
    other = env.core.open_context("other")
    with pytest.raises(CoreError) as ei:
        other.page_response(fq, [(c1, 0)], env.now)
    assert ei.value.errno == "ENOENT"
    with pytest.raises(CoreError) as ei:
        env.ctx.page_response(12345, [(c1, 0)], env.now)
    assert ei.value.errno == "ENOENT"
    ioas = env.ctx.ioas_alloc()
    with pytest.raises(CoreError) as ei:
        env.ctx.page_response(ioas, [(c1, 0)], env.now)
    assert ei.value.errno == "ENOENT"
    assert len(env.core.pending(env.now)) == 2


def test_cookie_of_another_queue_is_einval(env: Env) -> None:
    fq, (c1, _c2) = _two_groups(env)
    _d, _i, fq2, _h = env.fault_hwpt(ACCEL1, pasid=5)
    assert fq2 is not None
    _einval(env, fq2, [(c1, 0)])
    assert len(env.core.pending(env.now)) == 2


def test_late_answer_after_auto_response_is_einval(env: Env) -> None:
    fq, (c1, c2) = _two_groups(env)
    dev_id = env.core.devices[ACCEL].dev_id
    env.ctx.detach(dev_id, 5, env.now)
    env.responses.clear()
    _einval(env, fq, [(c1, 0), (c2, 0)])
    assert env.responses == []
    c = env.core.status_counters()
    assert (c["auto_responses"], c["responses"]) == (2, 0)
    check_invariants(env)


def test_pending_rows_carry_the_admin_fields(env: Env) -> None:
    fq, (c1, c2) = _two_groups(env)
    env.now += 2_000_000_000
    rows = env.core.pending(env.now)
    assert [
        (r["fault_id"], r["cookie"], r["rid"], r["pasid"], r["grpid"], r["client"]) for r in rows
    ] == [(fq, c1, ACCEL, 5, 1, "vmm"), (fq, c2, ACCEL, 5, 2, "vmm")]
    assert all(r["age_s"] == pytest.approx(2.0) for r in rows)
