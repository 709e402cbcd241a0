"""Benchmarks of the sans-IO core (no daemon, no sockets).

    python -m bench.bench_core [--quick]

Prints JSON on stdout: ``{"entries": [{"name", "figure", "unit", "detail"}, ...]}``.
Figures are medians of several repetitions on this machine; nothing here is a test.

- ``fault_cycle_functions_N``: microseconds per full fault cycle through ``Core`` (a
  one-page DMA misses, its page request goes through the PRQ thread and the fault path
  to a ``FaultDelivered``, the client maps the page and answers SUCCESS, the device
  retries and the ``DmaDone`` comes out) with N functions probed (1, 1024, 65536).
- ``fault_path_functions_N``: microseconds per group for the core's own part only
  (PRQ thread, device lookup, fault path, delivery, response descriptor), with requests
  injected in batches: the part that must not grow with N.
- ``fault_cycle_pending_K``: the same cycle with K groups pending in another fault
  queue (1, 10 000, 100 000).
- ``unmap_invalidations``: descriptors one ``ioas_unmap`` issues for a nesting-parent
  domain attached to N functions on M units, K of them with ATS, plus nested children,
  against the minimum (one IOTLB flush per unit and DID, one device-TLB flush per ATS
  function and PASID) and against a per-device flush.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

from hwmodel import FunctionSpec, IommuSpec, Machine, Rid, TopologySpec, generated_topology
from iopfd.core import Core, CoreLimits, DmaDone, FaultDelivered

RW = 3
BASE = 0x1_0000_0000
RETRY_NS = 1_000_000


def _first_rid(core: Core) -> str:
    return next(iter(core.devices))


def _setup(core: Core, rid: str) -> tuple[Any, int, int, int]:
    ctx = core.open_context("bench")
    dev = ctx.bind(rid, 0)
    ioas = ctx.ioas_alloc()
    fq = ctx.fault_alloc()
    hwpt = ctx.hwpt_alloc(dev, ioas, ["pasid"], fq, None)  # attached at a PASID (6.15+)
    ctx.attach(dev, hwpt, 5, 0)
    return ctx, dev, ioas, fq


def _cycles(
    core: Core, ctx: Any, dev: int, ioas: int, fq: int, n: int, start: int, now: int
) -> tuple[float, int]:
    """n fault cycles on fresh pages; returns (seconds, now)."""
    t0 = time.perf_counter()
    for i in range(n):
        iova = BASE + (start + i) * 4096
        ctx.dma(dev, 5, iova, 4096, RW, now, i)
        core.service(now)
        ev = core.take_events()
        fault = ev[-1]
        assert isinstance(fault, FaultDelivered), ev
        ctx.ioas_map(ioas, iova, 4096, RW, now)
        ctx.page_response(fq, [(fault.cookie, 0)], now)
        now += RETRY_NS
        core.service(now)
        done = core.take_events()
        assert done and isinstance(done[-1], DmaDone) and done[-1].status == "ok", done
    return time.perf_counter() - t0, now


def bench_fault_cycle(n_functions: int, n: int, reps: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    machine = Machine(generated_topology(n_functions))
    core = Core(machine)
    build_s = time.perf_counter() - t0
    ctx, dev, ioas, fq = _setup(core, _first_rid(core))
    now = 1
    per: list[float] = []
    start = 0
    _cycles(core, ctx, dev, ioas, fq, 200, start, now)  # warm up
    start += 200
    for _ in range(reps):
        dt, now = _cycles(core, ctx, dev, ioas, fq, n, start, now)
        start += n
        per.append(dt / n * 1e6)
    return {
        "name": f"fault_cycle_functions_{n_functions}",
        "figure": statistics.median(per),
        "unit": "us/fault",
        "detail": {"functions": n_functions, "cycles": n, "reps_us": per, "build_s": build_s},
    }


def bench_fault_path(n_functions: int, n: int, reps: int) -> dict[str, Any]:
    """Core-only cost per group: inject whole one-page groups in PRQ-sized batches, time
    service (PRQ thread + fault path + delivery) and the answers (response descriptors)."""
    machine = Machine(generated_topology(n_functions))
    core = Core(machine, CoreLimits(max_pending=1 << 20))
    rid = _first_rid(core)
    ctx, _dev, _ioas, fq = _setup(core, rid)
    info = core.devices[rid]
    batch = min(1024, machine.iommus[info.info.unit.name].prq.capacity)
    per: list[float] = []
    now = 1
    for _ in range(reps):
        spent = 0.0
        done = 0
        while done < n:
            k = min(batch, n - done)
            for i in range(k):
                core.emulation.inject(rid, 5, BASE + i * 4096, RW, i % 512, True, now)
            machine.advance(now)  # hardware side: not the core's cost
            t0 = time.perf_counter()
            core.service(now)
            events = core.take_events()
            ctx.page_response(
                fq, [(e.cookie, 0) for e in events if isinstance(e, FaultDelivered)], now
            )
            spent += time.perf_counter() - t0
            done += k
            now += 1
        per.append(spent / n * 1e6)
    return {
        "name": f"fault_path_functions_{n_functions}",
        "figure": statistics.median(per),
        "unit": "us/group",
        "detail": {"functions": n_functions, "groups": n, "reps_us": per},
    }


def bench_pending(k: int, n: int, reps: int) -> dict[str, Any]:
    machine = Machine(generated_topology(2, n_iommus=1))
    core = Core(machine, CoreLimits(max_pending=k + 16))
    rids = list(core.devices)
    ctx, dev, ioas, fq = _setup(core, rids[0])
    # k groups left pending in another context's queue, on the other device.
    _other, _d, _i, _fq = _setup(core, rids[1])
    now = 1
    left = k
    cap = machine.iommus["dmar0"].prq.capacity
    while left:
        m = min(left, cap)
        for i in range(m):
            core.emulation.inject(rids[1], 5, BASE + i * 4096, RW, i % 512, True, now)
        core.service(now)
        core.take_events()
        left -= m
    assert len(core.pending(now)) == k
    per: list[float] = []
    start = 0
    _cycles(core, ctx, dev, ioas, fq, 200, start, now)
    start += 200
    for _ in range(reps):
        dt, now = _cycles(core, ctx, dev, ioas, fq, n, start, now)
        start += n
        per.append(dt / n * 1e6)
    return {
        "name": f"fault_cycle_pending_{k}",
        "figure": statistics.median(per),
        "unit": "us/fault",
        "detail": {"pending_elsewhere": k, "cycles": n, "reps_us": per},
    }


def _inv_topology(n: int, m: int, k: int) -> TopologySpec:
    units = tuple(IommuSpec(f"dmar{i}") for i in range(m))
    funcs = tuple(
        FunctionSpec(
            Rid(0, 1 + (i >> 5), (i >> 3) & 0x3, i & 7),
            f"dmar{i % m}",
            ats=i < k,
            pri=False,
            pri_capacity=0,
            pasid_bits=20 if i < k else 0,
        )
        for i in range(n)
    )
    return TopologySpec(units, funcs)


def bench_unmap(n: int, m: int, k: int, nested: int, reps: int) -> dict[str, Any]:
    """One unmap of a nesting parent attached (RID) to n functions on m units, k with
    ATS, plus ``nested`` nested HWPTs each attached at PASID 7 of one ATS function."""
    machine = Machine(_inv_topology(n, m, k))
    core = Core(machine)
    ctx = core.open_context("bench")
    devs = [ctx.bind(rid, 0) for rid in core.devices]
    infos = list(core.devices.values())
    ioas = ctx.ioas_alloc()
    # PASID-compatible (6.15+): children sit at PASIDs of functions whose RID holds it.
    parent = ctx.hwpt_alloc(devs[0], ioas, ["nest_parent", "pasid"], None, None)
    for d in devs:
        ctx.attach(d, parent, None, 0)
    nested_units: set[str] = set()
    nested_ats = 0
    for j in range(nested):
        d = devs[j % k]
        child = ctx.hwpt_alloc(d, parent, ["pasid"], None, {"type": "vtd_s1"})
        ctx.attach(d, child, 7 + j // k, 0)
        nested_units.add(infos[j % k].info.unit.name)
        nested_ats += 1
    units_used = {i.info.unit.name for i in infos}
    minimum_iotlb = len(units_used) + nested  # parent's DID per unit + each nested DID
    minimum_devtlb = k + nested_ats  # per ATS function (RID) + per nested PASID
    times: list[float] = []
    stats = None
    for r in range(reps):
        ctx.ioas_map(ioas, BASE + r * 0x10000, 0x10000, RW, 0)
        t0 = time.perf_counter()
        ctx.ioas_unmap(ioas, BASE + r * 0x10000, 0x10000, 0)
        times.append((time.perf_counter() - t0) * 1e6)
        stats = core.last_flush
    assert stats is not None
    naive = n + nested + k + nested_ats  # one IOTLB flush per device attachment
    return {
        "name": f"unmap_invalidations_n{n}_m{m}_k{k}_nested{nested}",
        "figure": stats.descriptors,
        "unit": "descriptors",
        "detail": {
            "iotlb": stats.iotlb,
            "devtlb": stats.devtlb,
            "waits": stats.waits,
            "submissions_per_unit": stats.per_unit,
            "minimum": minimum_iotlb + minimum_devtlb,
            "minimum_iotlb": minimum_iotlb,
            "minimum_devtlb": minimum_devtlb,
            "per_device_flush": naive,
            "at_minimum": stats.descriptors == minimum_iotlb + minimum_devtlb,
            "unmap_us_median": statistics.median(times),
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_core")
    ap.add_argument("--quick", action="store_true", help="small sizes (CI smoke)")
    args = ap.parse_args(argv)
    quick = args.quick
    reps = 3 if quick else 5
    cycles = 300 if quick else 2000
    functions = (1, 1024, 4096) if quick else (1, 1024, 65536)
    pendings = (1, 1000, 10_000) if quick else (1, 10_000, 100_000)
    entries: list[dict[str, Any]] = []
    for nf in functions:
        entries.append(bench_fault_cycle(nf, cycles, reps))
    for nf in functions:
        entries.append(bench_fault_path(nf, 2000 if quick else 20_000, reps))
    for k in pendings:
        entries.append(bench_pending(k, cycles, reps))
    for n, m, k, nested in ((8, 2, 8, 0), (64, 4, 32, 8), (256, 8, 128, 32)):
        entries.append(bench_unmap(n, m, k, nested, reps))
    json.dump(
        {"entries": entries, "quick": quick, "python": sys.version.split()[0]}, sys.stdout, indent=2
    )
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
