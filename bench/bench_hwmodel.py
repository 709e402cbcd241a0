"""Model-only benchmarks of hwmodel (no daemon, no core).

    python -m bench.bench_hwmodel [--quick]

Prints JSON on stdout: ``{"entries": [{"name", "figure", "unit", "detail"}, ...]}``.
Figures are medians of several repetitions on this machine; nothing here is a test.

- ``prq_page_requests``: page requests/s through the PRQ ring, hardware receipt (table
  walk, implicit IOTLB invalidation, 32-byte encode, tail, PPR/event) plus the software
  drain (PPR W1C, decode each slot, one head write per batch).
- ``dma_fault_cycles``: full DMA fault cycles/s through the model alone: a one-page DMA
  misses the ATC and the IOMMU, sends a page request, it is delivered and read from the
  PRQ, the page is mapped, a page group response goes through the IQ, the retry succeeds.
- ``iq_descriptors``: invalidation descriptors/s through the IQ (encode, ring, decode,
  execute), a mix of P_IOTLB PSI, P_devTLB and wait.
- ``descriptor_round_trips``: page request descriptor encode+decode/s.
- ``machine_build_65536``: seconds to build a Machine on generated_topology(65536).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from hwmodel import (
    PIOTLB_G_PSI,
    PRS_PPR,
    PRS_PRO,
    InvWaitDescriptor,
    Machine,
    PageRequestDescriptor,
    PasidDevTlbInvDescriptor,
    PasidIotlbInvDescriptor,
    Perm,
    default_topology,
    generated_topology,
)
from hwmodel.testing import ACCEL, bind, response_for


def _median_rate(fn: Callable[[int], None], n: int, reps: int) -> tuple[float, list[float]]:
    rates = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn(n)
        dt = time.perf_counter() - t0
        rates.append(n / dt)
    return statistics.median(rates), rates


def bench_prq(n: int, reps: int) -> dict[str, Any]:
    batch = 64

    def run(count: int) -> None:
        m = Machine(default_topology())
        b = bind(m, ACCEL)
        unit = b.unit
        prq = unit.prq
        descs = [
            PageRequestDescriptor(
                sid=b.fn.sid,
                pasid_present=True,
                pasid=5,
                exe_req=False,
                pm_req=False,
                rd_req=True,
                wr_req=False,
                lpig=True,
                prg_index=i % 512,
                addr=i << 12,
            )
            for i in range(batch)
        ]
        receive = unit.receive_page_request
        read = prq.read_descriptor
        done = 0
        while done < count:
            for d in descs:
                receive(d)
            unit.write_prs_w1c(PRS_PPR)
            for off in prq.pending_offsets():
                read(off)
            prq.head = prq.tail
            done += batch
        assert unit.counters["prq_writes"] == done and not unit.read_prs() & PRS_PRO

    rate, rates = _median_rate(run, n, reps)
    return {
        "name": "prq_page_requests",
        "figure": round(rate),
        "unit": "requests/s",
        "detail": {"requests": n, "batch": batch, "reps": [round(r) for r in rates]},
    }


def bench_dma_cycles(n: int, reps: int) -> dict[str, Any]:
    def run(count: int) -> None:
        m = Machine(default_topology())
        b = bind(m, ACCEL)
        unit, s2 = b.unit, b.s2
        now = 0
        for i in range(count):
            now += 1000
            t = m.start_dma(b.fn.rid, 5, i << 12, 0x1000, Perm.READ, now)
            m.advance(now)
            (req,) = b.drain_prq()
            s2.map(req.addr, req.addr + (1 << 40), 0x1000, Perm.READ | Perm.WRITE)
            unit.iq.submit([response_for(req)])
            m.advance(now)
            if t.status is None or t.status.value != "ok":
                raise RuntimeError(f"cycle {i} ended {t.status}")
        m.take_completed()

    rate, rates = _median_rate(run, n, reps)
    return {
        "name": "dma_fault_cycles",
        "figure": round(rate),
        "unit": "cycles/s",
        "detail": {"cycles": n, "reps": [round(r) for r in rates]},
    }


def bench_iq(n: int, reps: int) -> dict[str, Any]:
    def run(count: int) -> None:
        m = Machine(default_topology())
        b = bind(m, ACCEL)
        iq = b.unit.iq
        batch = [
            PasidIotlbInvDescriptor(PIOTLB_G_PSI, did=2, pasid=5, addr=0x10000),
            PasidDevTlbInvDescriptor(sid=b.fn.sid, pasid=5, addr=0x10000),
            InvWaitDescriptor(status_data=1, status_addr=0x1000),
        ]
        for _ in range(count // 3):
            iq.submit(batch)

    rate, rates = _median_rate(run, n, reps)
    return {
        "name": "iq_descriptors",
        "figure": round(rate),
        "unit": "descriptors/s",
        "detail": {"descriptors": n, "reps": [round(r) for r in rates]},
    }


def bench_codec(n: int, reps: int) -> dict[str, Any]:
    d = PageRequestDescriptor(0x3A00, True, 5, False, False, True, True, True, 7, 0x1234_5000)

    def run(count: int) -> None:
        dec = PageRequestDescriptor.decode
        for _ in range(count):
            dec(d.encode())

    rate, rates = _median_rate(run, n, reps)
    return {
        "name": "descriptor_round_trips",
        "figure": round(rate),
        "unit": "round trips/s",
        "detail": {"n": n, "reps": [round(r) for r in rates]},
    }


def bench_build(n_functions: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    spec = generated_topology(n_functions, n_iommus=4)
    t1 = time.perf_counter()
    m = Machine(spec)
    t2 = time.perf_counter()
    assert len(m.functions) == n_functions
    return {
        "name": f"machine_build_{n_functions}",
        "figure": round(t2 - t0, 3),
        "unit": "s",
        "detail": {"topology_s": round(t1 - t0, 3), "machine_s": round(t2 - t1, 3)},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_hwmodel")
    ap.add_argument("--quick", action="store_true", help="small sizes (CI smoke)")
    args = ap.parse_args(argv)
    scale = 10 if args.quick else 1
    reps = 3 if args.quick else 5
    entries = [
        bench_prq(200_000 // scale, reps),
        bench_dma_cycles(20_000 // scale, reps),
        bench_iq(60_000 // scale, reps),
        bench_codec(200_000 // scale, reps),
        bench_build(4096 if args.quick else 65536),
    ]
    json.dump(
        {"entries": entries, "quick": args.quick, "python": sys.version.split()[0]},
        sys.stdout,
        indent=2,
    )
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
