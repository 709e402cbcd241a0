"""Budgets per uid and global: objects, mapped pages and domain IDs are charged to the
uid that opened the context; one uid over budget gets ENOSPC, never another uid's share."""

from __future__ import annotations

import pytest

from iopfd.core import CoreError, CoreLimits
from iopfd.core.testing import ACCEL, NIC_PF, Env

ALICE, MALLORY = 1000, 1001
MIB = 1 << 20


def errno_of(fn: object, *args: object) -> str:
    with pytest.raises(CoreError) as ei:
        fn(*args)  # type: ignore[operator]
    return ei.value.errno


def test_objects_are_capped_per_uid_across_its_contexts_not_per_connection_only() -> None:
    env = Env(limits=CoreLimits(max_objects_per_context=10, max_objects_per_uid=15))
    a, b = (env.core.open_context(f"m{i}", uid=MALLORY) for i in range(2))
    for _ in range(10):
        a.ioas_alloc()
    for _ in range(5):
        b.ioas_alloc()
    assert errno_of(b.ioas_alloc) == "ENOSPC"  # the uid's budget, though b holds 5
    alice = env.core.open_context("alice", uid=ALICE)
    for _ in range(10):
        alice.ioas_alloc()  # another uid is untouched
    assert env.core.status_counters()["budget_refused_objects_uid"] == 1


def test_a_closed_context_gives_its_uid_budget_back() -> None:
    env = Env(limits=CoreLimits(max_objects_per_uid=4))
    a = env.core.open_context("m", uid=MALLORY)
    for _ in range(4):
        a.ioas_alloc()
    env.core.close_context(a, env.now)
    b = env.core.open_context("m2", uid=MALLORY)
    for _ in range(4):
        b.ioas_alloc()
    assert env.core.budgets.accounts[MALLORY].objects == 4


def test_objects_total_caps_the_daemon() -> None:
    env = Env(limits=CoreLimits(max_objects_total=3))
    # Env's own context (uid None) holds nothing yet.
    a = env.core.open_context("a", uid=ALICE)
    b = env.core.open_context("b", uid=MALLORY)
    a.ioas_alloc()
    b.ioas_alloc()
    b.ioas_alloc()
    assert errno_of(a.ioas_alloc) == "ENOSPC"


def test_mapped_pages_are_capped_per_uid_across_its_contexts() -> None:
    env = Env(limits=CoreLimits(max_mapped_pages_per_uid=(MIB // 4096) * 3))
    a, b = (env.core.open_context(f"m{i}", uid=MALLORY) for i in range(2))
    ia, ib = a.ioas_alloc(), b.ioas_alloc()
    a.ioas_map(ia, 1 << 30, 2 * MIB, 3, env.now)
    assert errno_of(b.ioas_map, ib, 1 << 30, 2 * MIB, 3, env.now) == "ENOSPC"
    b.ioas_map(ib, 1 << 30, MIB, 3, env.now)
    alice = env.core.open_context("alice", uid=ALICE)
    alice.ioas_map(alice.ioas_alloc(), 1 << 30, 3 * MIB, 3, env.now)
    # Unmapping gives the pages back to the uid.
    a.ioas_unmap(ia, 1 << 30, 2 * MIB, env.now)
    b.ioas_map(ib, 1 << 31, 2 * MIB, 3, env.now)
    assert env.core.budgets.accounts[MALLORY].mapped_pages == 3 * MIB // 4096


def test_mapped_pages_total_caps_the_daemon() -> None:
    env = Env(limits=CoreLimits(max_mapped_pages_total=MIB // 4096))
    a = env.core.open_context("a", uid=ALICE)
    a.ioas_map(a.ioas_alloc(), 1 << 30, MIB, 3, env.now)
    b = env.core.open_context("b", uid=MALLORY)
    assert errno_of(b.ioas_map, b.ioas_alloc(), 1 << 30, 4096, 3, env.now) == "ENOSPC"
    env.core.close_context(a, env.now)
    assert env.core.budgets.mapped_pages == 0


def _attach_domains(env: Env, ctx_uid: int, n: int) -> list[str]:
    """``n`` PASID attachments, each through its own HWPT (so its own DID)."""
    ctx = env.core.open_context(f"u{ctx_uid}", uid=ctx_uid)
    dev = ctx.bind(ACCEL, env.now)
    ioas = ctx.ioas_alloc()
    flags = ["pasid"] if env.core.profile.pasid_attach else []
    errors = []
    for pasid in range(1, n + 1):
        hwpt = ctx.hwpt_alloc(dev, ioas, flags, None, None)
        try:
            ctx.attach(dev, hwpt, pasid, env.now)
        except CoreError as e:
            errors.append(e.errno)
    return errors


def test_one_uid_cannot_take_every_domain_id_of_a_unit() -> None:
    env = Env(limits=CoreLimits(max_dids_per_uid=8))
    assert _attach_domains(env, MALLORY, 10) == ["ENOSPC", "ENOSPC"]
    counters = env.core.status_counters()
    assert counters["budget_max_dids_uid"] == 8
    assert counters["budget_refused_dids_uid"] == 2
    # Another uid still gets DIDs on the same unit (dmar0).
    alice = env.core.open_context("alice", uid=ALICE)
    dev = alice.bind(NIC_PF, env.now)
    hwpt = alice.hwpt_alloc(dev, alice.ioas_alloc(), [], None, None)
    alice.attach(dev, hwpt, None, env.now)
    assert env.core.budgets.accounts[ALICE].dids == {"dmar0": 1}


def test_domain_ids_are_released_to_the_uid_on_detach_and_close() -> None:
    env = Env(limits=CoreLimits(max_dids_per_uid=4))
    ctx = env.core.open_context("m", uid=MALLORY)
    dev = ctx.bind(ACCEL, env.now)
    ioas = ctx.ioas_alloc()
    flags = ["pasid"] if env.core.profile.pasid_attach else []
    hwpts = [ctx.hwpt_alloc(dev, ioas, flags, None, None) for _ in range(5)]
    for pasid, hwpt in enumerate(hwpts[:4], start=1):
        ctx.attach(dev, hwpt, pasid, env.now)
    assert errno_of(ctx.attach, dev, hwpts[4], 5, env.now) == "ENOSPC"
    ctx.detach(dev, 1, env.now)
    ctx.attach(dev, hwpts[4], 5, env.now)  # the freed DID's budget is back
    env.core.close_context(ctx, env.now)
    assert MALLORY not in env.core.budgets.accounts
    assert env.core.budgets.objects == 0


def test_attachments_are_charged_per_uid_and_given_back_by_every_detach() -> None:
    env = Env(limits=CoreLimits(max_attachments_per_uid=5, max_attachments_total=8))
    ctx = env.ctx
    dev, _ioas, _fq, hwpt = env.fault_hwpt(ACCEL, pasid=1)
    for pasid in range(2, 6):
        ctx.attach(dev, hwpt, pasid, env.now)
    with pytest.raises(CoreError) as ei:
        ctx.attach(dev, hwpt, 6, env.now)
    assert ei.value.errno == "ENOSPC"
    assert ctx.account.attachments == 5
    ctx.attach(dev, hwpt, 5, env.now)  # a replace where attached takes nothing more
    ctx.detach(dev, 5, env.now)
    ctx.attach(dev, hwpt, 6, env.now)
    # Another uid has its own budget, under the daemon's total.
    other = env.core.open_context("other", uid=1000)
    odev, _, _, ohwpt = env.fault_hwpt(NIC_PF, pasid=None, ctx=other)
    assert other.account.attachments == 1
    c = env.core.status_counters()
    assert c["budget_attachments"] == 6 and c["budget_refused_attachments_uid"] == 1
    # unbind, a teardown and an unplug give them all back.
    ctx.unbind(dev, env.now)
    assert ctx.account.attachments == 0
    env.core.close_context(other, env.now)
    assert env.core.budgets.attachments == 0
