"""Automatic domains (``iommufd_device_auto_get_domain``) and the IOAS ioctls of issue 15:
``iommufd_ioas_iova_ranges``, ``iommufd_ioas_allow_iovas``, ``iommufd_ioas_copy``,
``iommufd_ioas_map_file``, ``iommufd_option``."""

from __future__ import annotations

import pytest

from hwmodel import Perm
from iopfd.core import CoreError, CoreLimits
from iopfd.core.ioas import Ioas
from iopfd.core.testing import ACCEL, ACCEL1, NO_PASID, Env, check_invariants, dma_done

RW = 3
MiB = 1 << 20


def errno_of(fn: object, *args: object, **kw: object) -> str:
    with pytest.raises(CoreError) as ei:
        fn(*args, **kw)  # type: ignore[operator]
    return ei.value.errno


def _row(env: Env, obj_id: int) -> dict[str, object]:
    return next(r for r in env.core.objects() if r["id"] == obj_id)


# ---------------------------------------------------------------- automatic domains


def test_attach_of_an_ioas_makes_one_automatic_domain_and_shares_it(kenv: Env) -> None:
    env, ctx = kenv, kenv.ctx
    ioas = ctx.ioas_alloc()
    dev = ctx.bind(ACCEL, env.now)
    dev1 = ctx.bind(ACCEL1, env.now)
    hwpt = ctx.attach(dev, ioas, None, env.now)
    assert hwpt != ioas
    row = _row(env, hwpt)
    assert row["type"] == "hwpt_paging" and row["auto_domain"] is True
    assert (row["ioas_id"], row["pasid"], row["fault_id"], row["attached"]) == (
        ioas,
        False,
        None,
        1,
    )
    assert _row(env, ioas)["hwpts"] == [hwpt]
    # the second device finds it (any paging domain suits the emulated VT-d)
    assert ctx.attach(dev1, ioas, None, env.now) == hwpt
    assert _row(env, hwpt)["attached"] == 2
    # attach where attached is a replace: to the same domain, nothing changes
    assert ctx.attach(dev, ioas, None, env.now) == hwpt
    # a user HWPT on the IOAS is not an automatic domain and is never picked
    user = ctx.hwpt_alloc(dev, ioas, [], None, None)
    assert _row(env, user)["auto_domain"] is False
    assert ctx.replace(dev, ioas, None, env.now) == hwpt
    check_invariants(env)


def test_the_automatic_domain_goes_with_its_last_attachment(kenv: Env) -> None:
    env, ctx = kenv, kenv.ctx
    ioas = ctx.ioas_alloc()
    dev = ctx.bind(ACCEL, env.now)
    dev1 = ctx.bind(ACCEL1, env.now)
    hwpt = ctx.attach(dev, ioas, None, env.now)
    ctx.attach(dev1, ioas, None, env.now)
    assert errno_of(ctx.destroy, hwpt, env.now) == "EBUSY"  # attached
    assert errno_of(ctx.destroy, ioas, env.now) == "EBUSY"  # under a HWPT
    ctx.detach(dev, None, env.now)
    assert ctx.lookup(hwpt) is not None
    # replace away: the last attachment goes, and so does the domain
    user = ctx.hwpt_alloc(dev1, ioas, [], None, None)
    assert ctx.replace(dev1, user, None, env.now) == user
    assert ctx.lookup(hwpt) is None
    # a new one gets a new ID; unbind takes it too, then close has nothing left of it
    again = ctx.attach(dev, ioas, None, env.now)
    assert again not in (hwpt, user)
    ctx.unbind(dev, env.now)
    assert ctx.lookup(again) is None
    ctx.detach(dev1, None, env.now)
    ctx.destroy(user, env.now)
    ctx.destroy(ioas, env.now)
    assert ctx.objects.keys() == {dev1}
    check_invariants(env)


def test_close_and_unplug_release_automatic_domains(env: Env) -> None:
    ctx = env.ctx
    ioas = ctx.ioas_alloc()
    dev = ctx.bind(ACCEL, env.now)
    ctx.attach(dev, ioas, None, env.now)
    other = env.core.open_context("other")
    ioas2 = other.ioas_alloc()
    dev2 = other.bind(ACCEL1, env.now)
    hwpt2 = other.attach(dev2, ioas2, None, env.now)
    env.core.emulation.unplug(ACCEL1, env.now, force=True)
    assert other.lookup(hwpt2) is None
    env.core.close_context(ctx, env.now)
    env.core.close_context(other, env.now)
    assert env.core.objects() == []
    assert ctx.account.objects == 0
    check_invariants(env)


def test_a_pasid_attach_of_an_ioas_is_einval_in_both_profiles(kenv: Env) -> None:
    # 6.18: the automatic domain has flags 0, not pasid_compat (iommufd_hwpt_pasid_compat);
    # 6.12: no PASID attach at all. The domain made for the failed attach is destroyed.
    env, ctx = kenv, kenv.ctx
    ioas = ctx.ioas_alloc()
    dev = ctx.bind(ACCEL, env.now)
    before = set(ctx.objects)
    assert errno_of(ctx.attach, dev, ioas, 5, env.now) == "EINVAL"
    assert set(ctx.objects) == before
    if env.core.profile.pasid_attach:
        # a RID on an automatic domain; a PASID on a pasid HWPT is then refused too
        ctx.attach(dev, ioas, None, env.now)
        pasid_hwpt = ctx.hwpt_alloc(dev, ioas, ["pasid"], None, None)
        assert errno_of(ctx.attach, dev, pasid_hwpt, 5, env.now) == "EINVAL"
        # and with a PASID attached, the RID cannot take an automatic domain
        ctx.replace(dev, pasid_hwpt, None, env.now)
        ctx.attach(dev, pasid_hwpt, 5, env.now)
        n = len(ctx.objects)
        assert errno_of(ctx.replace, dev, ioas, None, env.now) == "EINVAL"
        assert len(ctx.objects) == n
    check_invariants(env)


def test_replace_to_an_ioas_needs_an_attachment(kenv: Env) -> None:
    env, ctx = kenv, kenv.ctx
    ioas = ctx.ioas_alloc()
    dev = ctx.bind(NO_PASID, env.now)
    assert errno_of(ctx.replace, dev, ioas, None, env.now) == "EINVAL"
    assert ctx.objects.keys() == {ioas, dev}


def test_automatic_domains_are_charged_as_objects() -> None:
    env = Env(limits=CoreLimits(max_objects_per_context=2))
    ctx = env.ctx
    ioas = ctx.ioas_alloc()
    dev = ctx.bind(ACCEL, env.now)
    assert errno_of(ctx.attach, dev, ioas, None, env.now) == "ENOSPC"
    assert ctx.objects.keys() == {ioas, dev}


def test_an_automatic_domain_translates_through_the_ioas(env: Env) -> None:
    ctx = env.ctx
    ioas = ctx.ioas_alloc()
    dev = ctx.bind(ACCEL, env.now)
    ctx.attach(dev, ioas, None, env.now)
    ctx.ioas_map(ioas, 0x40_0000, 0x1000, RW, env.now)
    ctx.dma(dev, None, 0x40_0000, 0x1000, 1, env.now, "t")
    (done,) = dma_done(env.settle())
    assert done.status == "ok" and done.faults == 0


# ---------------------------------------------------------------- IOVA ranges, allow


def test_iova_ranges_are_the_aperture_around_the_interrupt_window(env: Env) -> None:
    ioas = env.ctx.ioas_alloc()
    assert env.ctx.ioas_iova_ranges(ioas) == {
        "ranges": [
            {"start": 0, "last": 0xFEDF_FFFF},
            {"start": 0xFEF0_0000, "last": (1 << 48) - 1},
        ],
        "iova_alignment": 4096,
    }
    assert errno_of(env.ctx.ioas_iova_ranges, 9999) == "ENOENT"
    # an allowed list steers allocation; it does not narrow the ranges (the kernel's)
    env.ctx.ioas_allow_iovas(ioas, [(0x1000_0000, 0x1FFF_FFFF)])
    assert len(env.ctx.ioas_iova_ranges(ioas)["ranges"]) == 2  # type: ignore[arg-type]


def test_fixed_maps_across_a_reserved_range_are_einval(env: Env) -> None:
    # iopt_check_iova: a reserved IOVA intersecting the range is -EINVAL.
    ioas = env.ctx.ioas_alloc()
    assert errno_of(env.ctx.ioas_map, ioas, 0xFEE0_0000, 0x1000, RW, env.now) == "EINVAL"
    assert errno_of(env.ctx.ioas_map, ioas, 0xFED0_0000, 2 * MiB, RW, env.now) == "EINVAL"
    assert errno_of(env.ctx.ioas_map, ioas, 1 << 48, 0x1000, RW, env.now) == "EINVAL"
    env.ctx.ioas_map(ioas, 0xFEF0_0000, 0x1000, RW, env.now)


def test_allow_iovas_rules_and_allocation_inside_the_allowed_ranges(env: Env) -> None:
    ctx = env.ctx
    ioas = ctx.ioas_alloc()
    ctx.ioas_map(ioas, 0x20_0000, 0x1000, RW, env.now)  # outside: kept (only allocation)
    ctx.ioas_allow_iovas(ioas, [(0x4000_0000, 0x4000_3FFF), (0x1000_0000, 0x1000_0FFF)])
    assert ctx.ioas_map(ioas, None, 0x1000, RW, env.now) == 0x1000_0000
    assert ctx.ioas_map(ioas, None, 0x1000, RW, env.now) == 0x4000_0000
    assert ctx.ioas_map(ioas, None, 0x2000, RW, env.now) == 0x4000_2000  # aligned to 8 KiB
    assert ctx.ioas_map(ioas, None, 0x1000, RW, env.now) == 0x4000_1000
    assert errno_of(ctx.ioas_map, ioas, None, 0x1000, RW, env.now) == "ENOSPC"
    # in order: start >= last, overlapping an earlier range: EINVAL; nothing changes
    bad = [(0x1000, 0x1000)]
    assert errno_of(ctx.ioas_allow_iovas, ioas, bad) == "EINVAL"
    bad = [(0x1000, 0x8FFF), (0x8000, 0x9FFF)]
    assert errno_of(ctx.ioas_allow_iovas, ioas, bad) == "EINVAL"
    # over a reserved range: the kernel's EADDRINUSE, EBUSY on the wire
    assert errno_of(ctx.ioas_allow_iovas, ioas, [(0xFE00_0000, 0xFEE0_0000)]) == "EBUSY"
    assert errno_of(ctx.ioas_allow_iovas, ioas, [(1 << 47, 1 << 48)]) == "EBUSY"
    assert _row(env, ioas)["allowed_iovas"] == [
        {"start": 0x1000_0000, "last": 0x1000_0FFF},
        {"start": 0x4000_0000, "last": 0x4000_3FFF},
    ]
    ctx.ioas_allow_iovas(ioas, [])  # cleared: anywhere again
    assert ctx.ioas_map(ioas, None, 0x1000, RW, env.now) == 0x10_0000
    assert errno_of(ctx.ioas_allow_iovas, 9999, []) == "ENOENT"


# ---------------------------------------------------------------- copy, map_file


def test_ioas_copy_maps_the_source_pages_and_follows_the_kernels_order(env: Env) -> None:
    ctx = env.ctx
    src, dst = ctx.ioas_alloc(), ctx.ioas_alloc()
    ctx.ioas_map(src, 0x20_0000, 0x1000, RW, env.now)
    ctx.ioas_map(src, 0x20_1000, 0x1000, 1, env.now)  # adjacent area, read-only
    got = ctx.ioas_copy(src, 0x20_0000, dst, 0x30_0000, 0x2000, 1, env.now)
    assert got == 0x30_0000
    dst_ioas = ctx.objects[dst]
    assert isinstance(dst_ioas, Ioas)
    assert dst_ioas.table.lookup(0x30_1000) == (0x20_1000, Perm.READ)
    # order: perm, src (ENOENT), src coverage (ENOENT), dst (ENOENT), then the map
    assert errno_of(ctx.ioas_copy, src, 0x20_0000, dst, 0x40_0000, 0x1000, 0, env.now) == "EINVAL"
    assert errno_of(ctx.ioas_copy, 9999, 0x20_0000, 9998, None, 0x1000, 1, env.now) == "ENOENT"
    assert errno_of(ctx.ioas_copy, src, 0x20_1000, 9998, None, 0x2000, 1, env.now) == "ENOENT"
    assert errno_of(ctx.ioas_copy, src, 0x1F_F000, dst, None, 0x2000, 1, env.now) == "ENOENT"
    assert errno_of(ctx.ioas_copy, src, 0x20_0000, 9998, None, 0x1000, 1, env.now) == "ENOENT"
    assert errno_of(ctx.ioas_copy, src, 0x20_0000, dst, 0x30_0000, 0x1000, 1, env.now) == "EBUSY"
    assert errno_of(ctx.ioas_copy, src, 0x20_0000, dst, 0xFEE0_0000, 0x1000, 1, env.now) == "EINVAL"
    # WRITE of a read-only page: the kernel's EPERM (iopt_insert_area), EINVAL here
    assert errno_of(ctx.ioas_copy, src, 0x20_1000, dst, None, 0x1000, RW, env.now) == "EINVAL"
    # the daemon picks; into the same IOAS too
    assert ctx.ioas_copy(src, 0x20_0000, src, None, 0x1000, RW, env.now) == 0x10_0000
    assert ctx.mapped_pages == 5


def test_ioas_map_file_maps_and_records_the_file_offset(env: Env) -> None:
    ctx = env.ctx
    ioas = ctx.ioas_alloc()
    assert ctx.ioas_map_file(ioas, None, 0x20_0000, 0x4000, RW, env.now) == 0x10_0000
    assert ctx.ioas_map_file(ioas, 0x80_0000, 0, 0x1000, 1, env.now) == 0x80_0000
    assert _row(env, ioas)["map_files"] == [
        {"iova": 0x10_0000, "length": 0x4000, "start": 0x20_0000},
        {"iova": 0x80_0000, "length": 0x1000, "start": 0},
    ]
    assert errno_of(ctx.ioas_map_file, ioas, 0x80_0000, 0, 0x1000, 1, env.now) == "EBUSY"
    assert errno_of(ctx.ioas_map_file, ioas, None, 0x800, 0x1000, 1, env.now) == "EINVAL"
    assert errno_of(ctx.ioas_map_file, 9999, None, 0, 0x1000, 1, env.now) == "ENOENT"
    ctx.ioas_unmap(ioas, 0x80_0000, 0x1000, env.now)
    assert len(_row(env, ioas)["map_files"]) == 1  # type: ignore[arg-type]


# ---------------------------------------------------------------- option


def test_rlimit_mode_is_per_context_set_by_the_capable_before_any_object(env: Env) -> None:
    ctx = env.ctx
    assert ctx.option("rlimit_mode", "get", None, None, capable=False) == 0
    assert errno_of(ctx.option, "rlimit_mode", "set", None, 1, capable=False) == "EPERM"
    assert errno_of(ctx.option, "rlimit_mode", "get", 3, None, capable=True) == "EOPNOTSUPP"
    assert errno_of(ctx.option, "rlimit_mode", "set", None, 2, capable=True) == "EINVAL"
    assert ctx.option("rlimit_mode", "set", None, 1, capable=True) is None
    assert ctx.option("rlimit_mode", "get", None, None, capable=False) == 1
    other = env.core.open_context("other")
    assert other.option("rlimit_mode", "get", None, None, capable=False) == 0
    ctx.ioas_alloc()
    assert errno_of(ctx.option, "rlimit_mode", "set", None, 0, capable=True) == "EBUSY"
    assert errno_of(ctx.option, "rlimit_mode", "toggle", None, 0, capable=True) == "EOPNOTSUPP"
    assert errno_of(ctx.option, "dirty", "get", None, None, capable=True) == "EOPNOTSUPP"


def test_huge_pages_is_per_ioas_and_cannot_go_off_under_a_domain_with_areas(env: Env) -> None:
    ctx = env.ctx
    ioas = ctx.ioas_alloc()
    assert errno_of(ctx.option, "huge_pages", "get", 9999, None, capable=False) == "ENOENT"
    assert ctx.option("huge_pages", "get", ioas, None, capable=False) == 1
    assert errno_of(ctx.option, "huge_pages", "set", ioas, 2, capable=False) == "EINVAL"
    ctx.option("huge_pages", "set", ioas, 0, capable=False)
    assert _row(env, ioas)["huge_pages"] is False
    ctx.option("huge_pages", "set", ioas, 1, capable=False)
    dev = ctx.bind(ACCEL, env.now)
    ctx.attach(dev, ioas, None, env.now)
    ctx.option("huge_pages", "set", ioas, 0, capable=False)  # a domain, no areas yet
    ctx.option("huge_pages", "set", ioas, 1, capable=False)
    ctx.ioas_map(ioas, None, 0x1000, RW, env.now)
    assert errno_of(ctx.option, "huge_pages", "set", ioas, 0, capable=False) == "EINVAL"
    assert ctx.option("huge_pages", "get", ioas, None, capable=False) == 1
