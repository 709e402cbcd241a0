"""Long IOAS operations in bounded steps. ``ioas_unmap`` (``IoasOps.ioas_unmap_steps``):
a range holding many pages is unmapped ``UNMAP_PAGES_PER_STEP`` pages at a time, each
step leaving the IOAS, its page table, the budgets and the caches in agreement (each
step flushes what it unmapped); the IOVA areas splice once per step however many areas
go. A map, copy or file map without an IOVA searches the IOAS's areas for a hole in
steps too."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iopfd.core import CoreError, CoreLimits, FaultDelivered
from iopfd.core import ioas as ioas_module
from iopfd.core.ioas import IOVA_ALLOC_START, UNMAP_PAGES_PER_STEP, Ioas, IovaAreas
from iopfd.core.testing import ACCEL, Env, check_invariants, dma_done

RW = 3
PAGE = 4096
CHUNK = UNMAP_PAGES_PER_STEP * PAGE
BASE = 0x1_0000_0000


def _ioas(env: Env, ioas_id: int) -> Ioas:
    obj = env.ctx.objects[ioas_id]
    assert isinstance(obj, Ioas)
    return obj


def _areas_pages(areas: IovaAreas) -> int:
    return sum(areas.ends[s] - s for s in areas.starts)


def test_a_big_unmap_runs_in_steps_each_flushing_what_it_unmapped() -> None:
    env = Env()
    dev, ioas_id, _fq, _hwpt = env.fault_hwpt(ACCEL, pasid=None)
    ctx = env.ctx
    ioas = _ioas(env, ioas_id)
    # Three full chunks in one piece each, then 100 single pages with holes between.
    for i in range(3):
        ctx.ioas_map(ioas_id, BASE + i * CHUNK, CHUNK, RW, env.now)
    tail = BASE + 3 * CHUNK
    for i in range(100):
        ctx.ioas_map(ioas_id, tail + 2 * i * PAGE, PAGE, RW, env.now)
    total = 3 * UNMAP_PAGES_PER_STEP + 100
    assert ctx.mapped_pages == total
    # The device caches a translation of the first page (its IOTLB entry).
    env.ctx.dma(dev, None, BASE, PAGE, RW, env.now, "warm")
    assert [d.status for d in dma_done(env.service())] == ["ok"]
    flushes = env.core.counters["flushes"]
    steps = ctx.ioas_unmap_steps(ioas_id, BASE, 4 * CHUNK, env.now)
    yields = 0
    while True:
        try:
            next(steps)
        except StopIteration as done:
            unmapped = done.value
            break
        yields += 1
        # Between steps: table, areas and budgets agree, and each step flushed.
        assert ctx.mapped_pages == len(ioas.table) == _areas_pages(ioas.areas)
        assert ctx.mapped_pages == total - yields * UNMAP_PAGES_PER_STEP
        assert env.core.counters["flushes"] == flushes + yields
        env.service()
        check_invariants(env)
    assert yields == 3
    assert unmapped == total * PAGE
    assert ctx.mapped_pages == len(ioas.table) == 0 and not ioas.areas.starts
    assert env.core.counters["flushes"] == flushes + 4
    # No device reaches the old translation: the same DMA now faults.
    env.ctx.dma(dev, None, BASE, PAGE, RW, env.now, "after")
    events = env.service()
    assert not dma_done(events)
    assert any(isinstance(ev, FaultDelivered) for ev in events)
    check_invariants(env)


def test_an_unmap_of_a_huge_empty_range_takes_no_step() -> None:
    env = Env()
    ioas_id = env.ctx.ioas_alloc()
    env.ctx.ioas_map(ioas_id, BASE, PAGE, RW, env.now)
    steps = env.ctx.ioas_unmap_steps(ioas_id, BASE + PAGE, 1 << 47, env.now)
    with pytest.raises(StopIteration) as done:
        next(steps)
    assert done.value.value == 0
    assert env.ctx.mapped_pages == 1


def test_unmap_steps_check_their_arguments_at_the_call() -> None:
    env = Env()
    ioas_id = env.ctx.ioas_alloc()
    for args in ((9999, BASE, PAGE), (ioas_id, BASE + 1, PAGE), (ioas_id, BASE, 0)):
        with pytest.raises(CoreError):
            env.ctx.ioas_unmap_steps(*args, env.now)


def test_an_unmap_drops_exactly_the_file_maps_it_touches() -> None:
    env = Env()
    ctx = env.ctx
    ioas_id = ctx.ioas_alloc()
    for i in range(6):  # adjacent file maps of 2 pages each
        ctx.ioas_map_file(ioas_id, BASE + 2 * i * PAGE, i * 0x10000, 2 * PAGE, RW, env.now)
    # Touches the last page of map 1 and the first of map 2.
    assert ctx.ioas_unmap(ioas_id, BASE + 3 * PAGE, 2 * PAGE, env.now) == 2 * PAGE
    row = next(r for r in env.core.objects() if r["id"] == ioas_id)
    assert [m["iova"] for m in row["map_files"]] == [  # type: ignore[attr-defined]
        BASE + 2 * i * PAGE for i in (0, 3, 4, 5)
    ]
    assert _ioas(env, ioas_id).file_firsts == [BASE // PAGE + 2 * i for i in (0, 3, 4, 5)]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 200), st.integers(1, 12)), max_size=25),
    st.lists(st.tuples(st.integers(0, 220), st.integers(1, 60)), max_size=10),
    st.integers(1, 20),
)
def test_iova_areas_cut_and_step_end_agree_with_a_set_of_pages(
    maps: list[tuple[int, int]], cuts: list[tuple[int, int]], step: int
) -> None:
    areas = IovaAreas()
    model: set[int] = set()
    for first, n in maps:
        if not areas.overlaps(first, first + n):
            areas.add(first, first + n)
            model.update(range(first, first + n))
    for first, n in cuts:
        end = first + n
        inside = sorted(p for p in model if first <= p < end)
        x = areas.step_end(first, end, step)
        # the shortest [first, x) holding ``step`` pages, or end
        assert x == (inside[step - 1] + 1 if len(inside) >= step else end)
        removed = areas.cut(first, end)
        assert sorted(p for lo, hi in removed for p in range(lo, hi)) == inside
        model.difference_update(inside)
        pages = {p for s in areas.starts for p in range(s, areas.ends[s])}
        assert pages == model
        assert areas.starts == sorted(areas.ends) and all(areas.ends[s] > s for s in areas.starts)


def test_a_copy_longer_than_max_map_length_is_refused_before_the_source_is_walked() -> None:
    env = Env(limits=CoreLimits(max_map_length=16 * PAGE))
    ctx = env.ctx
    src, dst = ctx.ioas_alloc(), ctx.ioas_alloc()
    for i in range(4):
        ctx.ioas_map(src, BASE + i * 16 * PAGE, 16 * PAGE, RW, env.now)
    # EINVAL (the length) before ENOENT (the source's gap): the source is not looked
    # at, page by page, for a copy that could never be mapped.
    for length in (64 * PAGE, 65 * PAGE):
        with pytest.raises(CoreError) as ei:
            ctx.ioas_copy(src, BASE, dst, None, length, RW, env.now)
        assert ei.value.errno == "EINVAL"
    assert ctx.ioas_copy(src, BASE, dst, None, 16 * PAGE, RW, env.now)


def test_a_daemon_picked_iova_is_searched_in_steps_of_areas(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ioas_module, "HOLE_AREAS_PER_STEP", 8)
    env = Env()
    ctx = env.ctx
    ioas_id = ctx.ioas_alloc()
    low = IOVA_ALLOC_START
    for i in range(100):  # one-page maps with one-page holes: no two-page hole below
        ctx.ioas_map(ioas_id, low + 2 * i * PAGE, PAGE, RW, env.now)
    steps = ctx.ioas_map_steps(ioas_id, None, 2 * PAGE, RW, env.now)
    yields = 0
    while True:
        try:
            next(steps)
        except StopIteration as done:
            iova = done.value
            break
        yields += 1
        assert ctx.mapped_pages == 100  # nothing mapped until the search ends
    assert yields >= 100 // 8
    assert iova == low + 200 * PAGE  # the first two-page hole, above the last map
    assert ctx.mapped_pages == 102
    # The one-call form picks the same way.
    assert ctx.ioas_map(ioas_id, None, 2 * PAGE, RW, env.now) == low + 202 * PAGE
    assert ctx.ioas_map_file(ioas_id, None, 0, PAGE, RW, env.now) == low + PAGE
    src = ctx.ioas_alloc()
    ctx.ioas_map(src, BASE, PAGE, RW, env.now)
    assert ctx.ioas_copy(src, BASE, ioas_id, None, PAGE, RW, env.now) == low + 3 * PAGE


def test_an_ioas_holding_many_pages_is_destroyed_in_steps() -> None:
    env = Env()
    ctx = env.ctx
    ioas_id = ctx.ioas_alloc()
    for i in range(3):
        ctx.ioas_map(ioas_id, BASE + i * CHUNK, CHUNK, RW, env.now)
    steps = ctx.destroy_steps(ioas_id, env.now)
    yields = 0
    for _ in steps:
        yields += 1
        assert ioas_id in ctx.objects  # it goes with the last step
        assert ctx.mapped_pages == (3 - yields) * UNMAP_PAGES_PER_STEP
    assert yields == 2
    assert ioas_id not in ctx.objects and ctx.mapped_pages == 0
    assert env.core.budgets.objects == 0 and env.core.budgets.mapped_pages == 0


def test_an_ioas_destroy_left_half_done_is_finished_by_the_teardown() -> None:
    env = Env()
    ctx = env.ctx
    ioas_id = ctx.ioas_alloc()
    for i in range(3):
        ctx.ioas_map(ioas_id, BASE + i * CHUNK, CHUNK, RW, env.now)
    steps = ctx.destroy_steps(ioas_id, env.now)
    next(steps)
    steps.close()
    assert ctx.mapped_pages == 2 * UNMAP_PAGES_PER_STEP
    env.core.close_context(ctx, env.now)
    assert env.core.budgets.objects == 0 and env.core.budgets.mapped_pages == 0


def test_an_ioas_row_lists_its_lowest_file_maps_and_counts_them_all() -> None:
    env = Env()
    ctx = env.ctx
    ioas_id = ctx.ioas_alloc()
    n = ioas_module.MAP_FILES_SHOWN + 10
    for i in reversed(range(n)):
        ctx.ioas_map_file(ioas_id, BASE + 2 * i * PAGE, i * PAGE, PAGE, RW, env.now)
    row = next(r for r in env.core.objects() if r["id"] == ioas_id)
    shown = row["map_files"]
    assert isinstance(shown, list) and len(shown) == ioas_module.MAP_FILES_SHOWN
    assert [m["iova"] for m in shown] == [BASE + 2 * i * PAGE for i in range(len(shown))]
    assert row["map_files_total"] == n
