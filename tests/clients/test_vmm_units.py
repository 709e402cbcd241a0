"""iopf-vmm's pure parts: the seeded workload plan, page runs, and the percentiles it reports."""

from __future__ import annotations

import random

from clients.records import PAGE_SIZE
from clients.vmm.report import latency_summary, percentile
from clients.vmm.workload import (
    BAD_BASE,
    GUEST_IOVA_BASE,
    GUEST_RAM_BASE,
    DmaOp,
    Target,
    layout_targets,
    page_runs,
    plan_epoch,
)

DEVICES: list[tuple[str, int, list[int | None]]] = [
    ("0000:3a:00.0", 1, [None, 1, 2]),
    ("0000:5b:00.0", 2, [None]),
]


def _plan(
    pattern: str, seed: int = 7, bad: float = 0.0, pages: int = 64
) -> tuple[list[Target], list[DmaOp]]:
    targets = layout_targets(DEVICES, pages, nested=False)
    return targets, plan_epoch(
        targets, pattern=pattern, dma_pages=4, stride=4, bad_fraction=bad, rng=random.Random(seed)
    )


def test_each_stream_gets_its_own_buffer_back_to_back_in_guest_ram() -> None:
    targets = layout_targets(DEVICES, 16, nested=False)
    assert [(t.rid, t.pasid) for t in targets] == [
        ("0000:3a:00.0", None),
        ("0000:3a:00.0", 1),
        ("0000:3a:00.0", 2),
        ("0000:5b:00.0", None),
    ]
    assert [t.gpa for t in targets] == [GUEST_RAM_BASE + i * 16 * PAGE_SIZE for i in range(4)]
    assert all(t.iova == t.gpa for t in targets)
    nested = layout_targets(DEVICES, 16, nested=True)
    assert nested[1].iova == GUEST_IOVA_BASE + 16 * PAGE_SIZE and nested[1].gpa == targets[1].gpa


def test_sequential_plan_touches_every_page_of_every_buffer_once_in_order() -> None:
    targets, plan = _plan("sequential")
    for t in targets:
        ops = [op for op in plan if op.target is t]
        assert [p for op in ops for p in op.pages()] == list(range(64))


def test_strided_plan_covers_every_chunk_with_the_stride_between_neighbours() -> None:
    targets, plan = _plan("strided")
    firsts = [op.pages()[0] // 4 for op in plan if op.target is targets[0]]
    assert sorted(firsts) == list(range(16))
    assert firsts[:4] == [0, 4, 8, 12]


def test_the_same_seed_gives_the_same_random_plan_and_another_seed_does_not() -> None:
    _, a = _plan("random", seed=3)
    _, b = _plan("random", seed=3)
    _, c = _plan("random", seed=4)
    key = [(op.target.index, op.iova, op.perm) for op in a]
    assert key == [(op.target.index, op.iova, op.perm) for op in b]
    assert key != [(op.target.index, op.iova, op.perm) for op in c]


def test_bad_ops_aim_outside_guest_memory_at_canonical_addresses() -> None:
    targets, plan = _plan("sequential", bad=0.5, pages=256)
    bad = [op for op in plan if op.bad]
    assert 0.35 < len(bad) / len(plan) < 0.65
    end = GUEST_RAM_BASE + len(targets) * 256 * PAGE_SIZE
    for op in bad:
        assert not GUEST_RAM_BASE <= op.iova < end
        assert op.iova >= BAD_BASE and op.iova < 1 << 47 and op.npages == 1
        assert list(op.pages()) == []


def test_page_runs_merge_consecutive_pages_and_drop_duplicates() -> None:
    assert page_runs([5, 1, 2, 3, 3, 9, 10]) == [(1, 3), (5, 1), (9, 2)]
    assert page_runs([]) == []


def test_percentile_is_nearest_rank() -> None:
    s = list(range(1, 101))
    assert (percentile(s, 50), percentile(s, 90), percentile(s, 99)) == (50, 90, 99)
    assert percentile([7], 99) == 7 and percentile([], 50) == 0
    summary = latency_summary([2_000_000, 1_000_000, 3_000_000])
    assert summary == {"count": 3.0, "p50_ms": 2.0, "p90_ms": 3.0, "p99_ms": 3.0, "max_ms": 3.0}
