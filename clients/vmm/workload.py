"""The guest's DMA workload: which buffers exist, and the order the devices touch them.

Pure and seeded: the same options and seed give the same plan, op for op, so a
run can be repeated exactly (timing aside).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from clients.records import PAGE_SIZE, Perm

#: Guest RAM as the IOAS sees it (stage-2 input, gpa). Buffers live inside it.
GUEST_RAM_BASE = 0x4000_0000
#: Where nested-mode buffers sit in the guest's I/O virtual space (stage-1 input).
GUEST_IOVA_BASE = 0x7F00_0000_0000
#: Addresses a misbehaving guest driver hands the device: outside guest RAM (and
#: outside the nested iova range), yet canonical, so the IOMMU driver delivers them
#: rather than rejecting them as bad requests (bit 47 clear, as prq.c checks).
BAD_BASE = 0x5EAD_0000_0000
BAD_SPAN_PAGES = 1 << 16

PATTERNS = ("sequential", "random", "strided")
_PERMS = (Perm.READ, Perm.WRITE, Perm.READ | Perm.WRITE)


@dataclass(frozen=True, slots=True)
class Target:
    """One DMA stream: a device's RID (pasid None) or one PASID, with its own buffer."""

    index: int
    rid: str
    dev_id: int
    pasid: int | None
    iova: int  # buffer start, in the address space the device issues (iova)
    gpa: int  # where that buffer lives in guest RAM
    pages: int

    @property
    def label(self) -> str:
        return self.rid if self.pasid is None else f"{self.rid}/pasid{self.pasid}"

    def page_iova(self, page: int) -> int:
        return self.iova + page * PAGE_SIZE


@dataclass(frozen=True, slots=True)
class DmaOp:
    """One transfer a device performs: ``npages`` pages from ``iova`` with ``perm``."""

    target: Target
    iova: int
    npages: int
    perm: Perm
    bad: bool  # outside guest memory: the VMM must answer INVALID

    @property
    def length(self) -> int:
        return self.npages * PAGE_SIZE

    def pages(self) -> range:
        """The buffer page indexes this op touches (empty for a bad op)."""
        if self.bad:
            return range(0)
        first = (self.iova - self.target.iova) // PAGE_SIZE
        return range(first, first + self.npages)


def layout_targets(
    devices: list[tuple[str, int, list[int | None]]], pages: int, nested: bool
) -> list[Target]:
    """Give every (device, pasid) its own buffer of ``pages`` pages, back to back in guest RAM."""
    targets: list[Target] = []
    for rid, dev_id, pasids in devices:
        for pasid in pasids:
            i = len(targets)
            gpa = GUEST_RAM_BASE + i * pages * PAGE_SIZE
            iova = GUEST_IOVA_BASE + i * pages * PAGE_SIZE if nested else gpa
            targets.append(Target(i, rid, dev_id, pasid, iova, gpa, pages))
    return targets


def plan_epoch(
    targets: list[Target],
    *,
    pattern: str,
    dma_pages: int,
    stride: int,
    bad_fraction: float,
    rng: random.Random,
) -> list[DmaOp]:
    """One pass of the workload over every buffer, the targets interleaved round-robin."""
    if pattern not in PATTERNS:
        raise ValueError(f"unknown pattern {pattern!r}")
    per_target: list[list[DmaOp]] = []
    for t in targets:
        nchunks = max(1, t.pages // dma_pages)
        if pattern == "sequential":
            order = list(range(nchunks))
        elif pattern == "strided":
            order = [c for off in range(stride) for c in range(off, nchunks, stride)]
        else:
            order = [rng.randrange(nchunks) for _ in range(nchunks)]
        ops: list[DmaOp] = []
        for chunk in order:
            perm = rng.choice(_PERMS)
            if bad_fraction > 0 and rng.random() < bad_fraction:
                iova = BAD_BASE + rng.randrange(BAD_SPAN_PAGES) * PAGE_SIZE
                ops.append(DmaOp(t, iova, 1, perm, True))
            else:
                first = chunk * dma_pages
                npages = min(dma_pages, t.pages - first)
                ops.append(DmaOp(t, t.page_iova(first), npages, perm, False))
        per_target.append(ops)
    plan: list[DmaOp] = []
    for i in range(max((len(o) for o in per_target), default=0)):
        plan.extend(ops[i] for ops in per_target if i < len(ops))
    return plan


def page_runs(pages: list[int]) -> list[tuple[int, int]]:
    """Sorted page numbers as (first, count) runs of consecutive pages."""
    runs: list[tuple[int, int]] = []
    for p in sorted(set(pages)):
        if runs and runs[-1][0] + runs[-1][1] == p:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((p, 1))
    return runs
