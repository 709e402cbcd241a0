"""Teardown in bounded steps (``Core.close_context_steps``): the daemon serves other
connections between steps; each step leaves the core consistent, every group is answered
exactly once, and a teardown left half-done is finished by ``close_context``."""

from __future__ import annotations

import pytest

from iopfd.core import CoreError
from iopfd.core.device import DETACHES_PER_STEP
from iopfd.core.testing import ACCEL, NIC_PF, Env, check_invariants

PASIDS = 3 * DETACHES_PER_STEP + 5


def _many_attachments(env: Env) -> int:
    """The env's context: ACCEL attached on PASIDS PASIDs through one fault-capable
    HWPT, with a group pending on some of them. Returns the fault queue id."""
    _dev, _ioas, fq, hwpt = env.fault_hwpt(ACCEL, pasid=1)
    assert fq is not None
    dev = _dev
    for pasid in range(2, PASIDS + 1):
        env.ctx.attach(dev, hwpt, pasid, env.now)
    for pasid in (1, 70, PASIDS):
        env.inject(ACCEL, pasid, 0x1000_0000, grpid=pasid % 256)
    env.service()
    assert len(env.core.pending(env.now)) == 3
    return fq


def test_close_context_steps_detach_a_device_in_bounded_steps_keeping_invariants() -> None:
    env = Env()
    _many_attachments(env)
    other = env.core.open_context("neighbour", uid=1000)
    steps = 0
    for _ in env.core.close_context_steps(env.ctx, env.now):
        steps += 1
        # Between two steps the core is whole: the neighbour works, invariants hold.
        env.service()
        check_invariants(env)
        other.ioas_alloc()
        handles = len(env.core.devices[ACCEL].handles)
        assert handles == 0 or handles >= PASIDS - steps * DETACHES_PER_STEP
    assert steps > PASIDS // DETACHES_PER_STEP
    assert env.ctx.closed and env.ctx.id not in env.core.contexts
    assert env.core.devices[ACCEL].binding is None
    check_invariants(env)
    assert env.core.pending_count() == 0


def test_a_teardown_left_half_done_is_finished_by_close_context() -> None:
    env = Env()
    _many_attachments(env)
    steps = env.core.close_context_steps(env.ctx, env.now)
    next(steps)
    next(steps)
    steps.close()
    assert not env.ctx.closed and env.core.devices[ACCEL].handles
    env.core.close_context(env.ctx, env.now)
    assert env.ctx.closed and not env.core.devices[ACCEL].handles
    check_invariants(env)
    assert env.core.budgets.objects == 0
    # The device is free for the next owner.
    env.core.open_context("next").bind(ACCEL, env.now)


def test_an_unplug_during_a_sliced_teardown_ends_the_device_steps() -> None:
    env = Env()
    _many_attachments(env)
    steps = env.core.close_context_steps(env.ctx, env.now)
    next(steps)
    env.core.emulation.unplug(ACCEL, env.now, force=True, grace_ns=0, ctx=None, tag=None)
    env.service()
    for _ in steps:
        pass
    assert env.ctx.closed
    check_invariants(env)
    assert NIC_PF in env.core.devices


def test_unbind_steps_detach_in_bounded_steps_and_answer_every_group() -> None:
    env = Env()
    _many_attachments(env)
    dev_id = next(o.id for o in env.ctx.objects.values() if o.kind == "device")
    other = env.core.open_context("neighbour", uid=1000)
    steps = 0
    for _ in env.ctx.unbind_steps(dev_id, env.now):
        steps += 1
        env.service()
        check_invariants(env)
        other.ioas_alloc()
        assert dev_id in env.ctx.objects  # the binding goes with the last step
    assert steps == PASIDS // DETACHES_PER_STEP
    assert dev_id not in env.ctx.objects
    assert env.core.devices[ACCEL].binding is None
    assert not env.core.devices[ACCEL].handles
    check_invariants(env)
    assert env.core.pending_count() == 0
    # The device is free for the next owner.
    other.bind(ACCEL, env.now)


def test_unbind_steps_check_the_device_at_the_call() -> None:
    env = Env()
    with pytest.raises(CoreError) as ei:
        env.ctx.unbind_steps(9999, env.now)
    assert ei.value.errno == "ENOENT"


def test_an_unbind_left_half_done_is_finished_by_the_teardown() -> None:
    env = Env()
    _many_attachments(env)
    dev_id = next(o.id for o in env.ctx.objects.values() if o.kind == "device")
    steps = env.ctx.unbind_steps(dev_id, env.now)
    next(steps)
    steps.close()
    assert env.core.devices[ACCEL].handles and dev_id in env.ctx.objects
    env.core.close_context(env.ctx, env.now)
    assert not env.core.devices[ACCEL].handles and env.core.devices[ACCEL].binding is None
    check_invariants(env)
    assert env.core.budgets.objects == 0


def test_an_unplug_during_a_sliced_unbind_ends_it_and_the_id_goes() -> None:
    env = Env()
    _many_attachments(env)
    dev_id = next(o.id for o in env.ctx.objects.values() if o.kind == "device")
    steps = env.ctx.unbind_steps(dev_id, env.now)
    next(steps)
    env.core.emulation.unplug(ACCEL, env.now, force=True, grace_ns=0, ctx=None, tag=None)
    env.service()
    for _ in steps:
        pass
    assert dev_id not in env.ctx.objects
    check_invariants(env)


def test_shutdown_answers_every_pending_group_once_without_the_per_attachment_teardown() -> None:
    env = Env()
    _many_attachments(env)
    other = env.core.open_context("neighbour", uid=1000)
    dev, _ioas, _fq, _hwpt = env.fault_hwpt(NIC_PF, pasid=None, ctx=other)
    env.inject(NIC_PF, None, 0x2000_0000, grpid=7)  # posted, not yet serviced
    detaches = env.core.counters["detaches"]
    before = env.core.status_counters()
    answered = env.core.shutdown(env.now)
    assert answered == 4  # three pending plus the one the shutdown's service delivered
    c = env.core.status_counters()
    assert c["auto_responses"] == before["auto_responses"] + 4
    assert c["groups"] == c["responses"] + c["auto_responses"] + c["throttled"]
    assert env.core.pending_count() == 0 and not env.core.contexts
    assert env.core.counters["detaches"] == detaches  # no drain, no flush per PASID
    assert env.core.budgets.objects == 0
    # Each function got exactly one response per group (INVALID), nothing unexpected.
    fns = env.machine.functions.values()
    assert sum(fn.counters["unexpected_prgi"] for fn in fns) == 0
