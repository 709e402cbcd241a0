"""The daemon benches: iopfd's fault path against the transport ceilings of the same run.

Each bench starts the real daemon (`python -m iopfd.server.main`) on a generated
topology and drives it with raw frames (bench/wire.py), so the client costs what the
ceiling's client costs:

- serial fault round trip: `dma` on an unmapped page -> `fault` event -> `ioas_map` +
  `page_response` (one write) -> `dma` reply; against trio ceiling / 2, since a fault
  needs two round trips;
- fault throughput: 16 devices x 4 PASIDs faulting with 256 `dma` in flight, answered in
  batches (one `ioas_map` per contiguous run of pages, one `page_response` per batch);
  groups/s against the pipelined ceiling;
- scale: per-fault cost with 1 / 1 024 / 65 536 devices in the topology and with
  1 / 10 000 / 100 000 groups pending in other queues; the daemons of one series (two
  per size) run side by side on one CPU and are compared within each of many interleaved
  rounds, so the drift and bursts of a shared machine cancel;
- invalidation: descriptors issued by one `ioas_unmap` on a nesting parent against the
  minimum the VT-d caches need (vtd-hw.md 5.4);
- memory: peak RSS while a client that never answers has page requests thrown at it;
- start-up: exec to READY=1.

`python -m bench.faults profile serial|throughput|inject [SECONDS]` runs one load while
py-spy samples the daemon and prints where its time goes.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from bench import ceilings
from bench.ceilings import PIPELINE_WINDOW
from bench.common import Entry, latency_summary_us, median, python_cmd, running
from bench.wire import PAGE, READ, WRITE, Daemon, Fn, Wire, daemon, generated_functions

Log = Callable[[str], None]
IOVA_BASE = 0x10_0000_0000
RW = READ | WRITE
#: The memory bench throws 10^6 page requests unless the daemon is too slow to take them
#: in this long; `make bench` has to stay within a few minutes on 2 cores.
MEMORY_BUDGET_S = 90
SECTION_TIMEOUT_S = 240
#: Daemons per size in the scale benches: two identical daemons differ by about 5 percent
#: (memory layout, caches), half the scale target; the mean of two halves that.
SCALE_REPLICAS = 2
SCALE_REPLICAS_QUICK = 1


# --- a VMM at the frame level ---------------------------------------------------------------


@dataclass
class Vmm:
    """One connection's objects: bound devices, one IOAS, fault queue(s), attachments."""

    wire: Wire
    ioas_id: int
    dev_ids: dict[str, int] = field(default_factory=dict)
    fault_ids: dict[str, int] = field(default_factory=dict)  # per rid
    streams: list[tuple[int, int | None]] = field(default_factory=list)  # (dev_id, pasid)
    next_iova: int = IOVA_BASE

    def take_iova(self, pages: int = 1) -> int:
        iova = self.next_iova
        self.next_iova += pages * PAGE
        return iova


def serial_entry(
    name: str,
    rates: list[float],
    ceilings_half: list[float],
    latency: dict[str, Any],
    *,
    cpu_us: float,
    client_cpu_us: float,
    note: str,
) -> Entry:
    """A serial fault bench's entry: each rep's rate against the trio ceiling / 2 measured
    next to it, the median of those ratios against 0.8."""
    ratios = [r / c for r, c in zip(rates, ceilings_half, strict=True)]
    ratio = round(median(ratios), 3)
    return Entry(
        name=name,
        figure=round(median(rates)),
        unit="faults/s",
        ceiling=round(median(ceilings_half)),
        ratio=ratio,
        target=">= 0.8 x trio ceiling / 2",
        met=ratio >= 0.8,
        detail={
            **latency,
            "rates": [round(r) for r in rates],
            "paired_ceilings_half": [round(c) for c in ceilings_half],
            "pair_ratios": [round(r, 3) for r in ratios],
            "daemon_cpu_us_per_fault": cpu_us,
            "client_cpu_us_per_fault": client_cpu_us,
            "note": note,
        },
    )


def throughput_entry(
    name: str,
    rates: list[float],
    ceilings_pipelined: list[float],
    latency: dict[str, Any],
    batches: dict[str, float],
    *,
    cpu_us: float,
    client_cpu_us: float,
    note: str,
) -> Entry:
    """A throughput bench's entry: each rep's rate against the pipelined ceiling measured
    next to it, the median of those ratios against 0.25."""
    ratios = [r / c for r, c in zip(rates, ceilings_pipelined, strict=True)]
    ratio = round(median(ratios), 3)
    return Entry(
        name=name,
        figure=round(median(rates)),
        unit="groups/s",
        ceiling=round(median(ceilings_pipelined)),
        ratio=ratio,
        target=">= 0.25 x pipelined ceiling",
        met=ratio >= 0.25,
        detail={
            **latency,
            "rates": [round(r) for r in rates],
            "paired_ceilings": [round(c) for c in ceilings_pipelined],
            "pair_ratios": [round(r, 3) for r in ratios],
            **batches,
            "daemon_cpu_us_per_group": cpu_us,
            "client_cpu_us_per_group": client_cpu_us,
            "note": note,
        },
    )


async def open_vmm(
    path: str,
    name: str,
    rids: Sequence[str],
    pasids: Sequence[int | None] = (None,),
    *,
    queue_per_device: bool = False,
) -> Vmm:
    """Bind `rids`, attach a fault-capable paging HWPT at each of `pasids` of each.

    With a PASID among `pasids` the HWPT is allocated with flag `pasid` (protocol v2,
    kernel profile 6.18: PASID attach needs a PASID-compatible HWPT, the RID's too)."""
    wire = await Wire.open(path, name)
    ioas_id = (await wire.call("ioas_alloc"))["ioas_id"]
    vmm = Vmm(wire, ioas_id)
    shared_fault = None if queue_per_device else (await wire.call("fault_alloc"))["fault_id"]
    for rid in rids:
        dev_id = (await wire.call("bind", rid=rid))["dev_id"]
        fault_id = shared_fault or (await wire.call("fault_alloc"))["fault_id"]
        flags = ["pasid"] if any(p is not None for p in pasids) else []
        hwpt_id = (
            await wire.call(
                "hwpt_alloc", dev_id=dev_id, pt_id=ioas_id, flags=flags, fault_id=fault_id
            )
        )["hwpt_id"]
        for pasid in pasids:
            args: dict[str, Any] = {"dev_id": dev_id, "pt_id": hwpt_id}
            if pasid is not None:
                args["pasid"] = pasid
            await wire.call("attach", **args)
            vmm.streams.append((dev_id, pasid))
        vmm.dev_ids[rid] = dev_id
        vmm.fault_ids[rid] = fault_id
    return vmm


def dma_request(vmm: Vmm, dev_id: int, pasid: int | None, iova: int) -> dict[str, Any]:
    args: dict[str, Any] = {"dev_id": dev_id, "iova": iova, "length": PAGE, "perm": WRITE}
    if pasid is not None:
        args["pasid"] = pasid
    return vmm.wire.request("dma", **args)


# --- serial fault round trip -----------------------------------------------------------------


@dataclass
class CpuMeter:
    """CPU spent by the daemon and by this (client) process over the measured window."""

    daemon: Daemon
    daemon_ns: int = 0
    client_ns: int = 0

    def start(self) -> None:
        self.daemon_ns = -self.daemon.cpu_ns()
        self.client_ns = -time.process_time_ns()

    def stop(self) -> None:
        self.daemon_ns += self.daemon.cpu_ns()
        self.client_ns += time.process_time_ns()


async def serial_faults(
    vmm: Vmm, seconds: float, warmup: int, meter: CpuMeter | None = None
) -> tuple[int, float, list[int]]:
    """One fault at a time on the first stream; returns (faults, elapsed s, latencies ns)."""
    wire = vmm.wire
    dev_id, pasid = vmm.streams[0]
    fault_id = next(iter(vmm.fault_ids.values()))
    perf = time.perf_counter_ns
    samples: list[int] = []
    i = 0
    start = 0
    deadline = None
    while True:
        if i == warmup:
            if meter:
                meter.start()
            start = perf()
            deadline = start + int(seconds * 1e9)
        t0 = perf()
        dma = dma_request(vmm, dev_id, pasid, vmm.take_iova())
        await wire.send([dma])
        event = None
        while event is None:
            for m in await wire.recv():
                if m.get("event") == "fault":
                    event = m
                elif "event" not in m:
                    raise RuntimeError(f"dma completed without a fault: {m}")
        addr = event["faults"][0]["addr"]
        mapping = wire.request("ioas_map", ioas_id=vmm.ioas_id, iova=addr, length=PAGE, perm=RW)
        answer = wire.request(
            "page_response", fault_id=fault_id, responses=[{"cookie": event["cookie"], "code": 0}]
        )
        await wire.send([mapping, answer])
        waiting = {mapping["id"], answer["id"], dma["id"]}
        while waiting:
            for m in await wire.recv():
                if "event" in m:
                    raise RuntimeError(f"unexpected event in a serial run: {m}")
                if not m.get("ok") or (m["id"] == dma["id"] and m["result"]["status"] != "ok"):
                    raise RuntimeError(f"fault round trip failed: {m}")
                if m["id"] == answer["id"] and m["result"]["done"] != 1:
                    raise RuntimeError(f"page_response applied {m['result']['done']} of 1")
                waiting.discard(m["id"])
        t1 = perf()
        i += 1
        if deadline is not None:
            samples.append(t1 - t0)
            if t1 >= deadline:
                if meter:
                    meter.stop()
                return len(samples), (t1 - start) / 1e9, samples


# --- fault throughput -------------------------------------------------------------------------


def _ranges(pages: list[int]) -> list[tuple[int, int]]:
    """Contiguous runs of page addresses as (iova, length)."""
    out: list[tuple[int, int]] = []
    for addr in sorted(set(pages)):
        if out and out[-1][0] + out[-1][1] == addr:
            out[-1] = (out[-1][0], out[-1][1] + PAGE)
        else:
            out.append((addr, PAGE))
    return out


async def fault_throughput(
    vmm: Vmm, seconds: float, window: int, meter: CpuMeter | None = None
) -> dict[str, Any]:
    """Keep `window` one-page `dma`s in flight over every stream; answer faults in batches."""
    wire = vmm.wire
    fault_id = next(iter(vmm.fault_ids.values()))
    streams = vmm.streams
    perf = time.perf_counter_ns
    dma_ids: set[int] = set()
    answers: dict[int, int] = {}  # page_response id -> entries sent (all must apply)
    sent_at: dict[int, int] = {}
    latencies: list[int] = []
    k = 0

    def new_dmas(n: int) -> list[dict[str, Any]]:
        nonlocal k
        out = []
        now = perf()
        for _ in range(n):
            dev_id, pasid = streams[k % len(streams)]
            k += 1
            m = dma_request(vmm, dev_id, pasid, vmm.take_iova())
            dma_ids.add(m["id"])
            if k & 15 == 0:
                sent_at[m["id"]] = now
            out.append(m)
        return out

    await wire.send(new_dmas(window))
    groups = records = batches = completed = 0
    warm_until = perf() + int(min(0.3, seconds / 3) * 1e9)
    start = deadline = 0
    measuring = False
    stopping = False
    while dma_ids:
        msgs = await wire.recv()
        now = perf()
        if not measuring and now >= warm_until and not stopping:
            measuring = True
            if meter:
                meter.start()
            groups = records = batches = completed = 0
            latencies.clear()
            start = now
            deadline = start + int(seconds * 1e9)
        if measuring and now >= deadline:
            measuring = False
            stopping = True
            if meter:
                meter.stop()
            elapsed = (now - start) / 1e9
            result: dict[str, Any] = {"groups": groups, "records": records, "batches": batches}
            result.update(elapsed=elapsed, completed=completed)
        cookies = []
        pages = []
        done = 0
        for m in msgs:
            if "event" in m:
                if m["event"] == "fault":
                    cookies.append({"cookie": m["cookie"], "code": 0})
                    pages += [f["addr"] for f in m["faults"]]
                continue
            mid = m["id"]
            if not m.get("ok"):
                raise RuntimeError(f"request failed under load: {m}")
            if mid in dma_ids:
                dma_ids.discard(mid)
                if m["result"]["status"] != "ok":
                    raise RuntimeError(f"dma under load ended {m['result']}")
                done += 1
                t = sent_at.pop(mid, None)
                if t is not None and measuring:
                    latencies.append(now - t)
            elif mid in answers and m["result"]["done"] != answers.pop(mid):
                raise RuntimeError(f"page_response under load stopped early: {m}")
        out = [
            wire.request("ioas_map", ioas_id=vmm.ioas_id, iova=iova, length=length, perm=RW)
            for iova, length in _ranges(pages)
        ]
        if cookies:
            out.append(wire.request("page_response", fault_id=fault_id, responses=cookies))
            answers[out[-1]["id"]] = len(cookies)
            groups += len(cookies)
            records += len(pages)
            batches += 1
        completed += done
        if not stopping:
            out += new_dmas(done)
        if out:
            await wire.send(out)
    result["rate"] = result["groups"] / result["elapsed"]
    result["latency"] = latency_summary_us(latencies)
    return result


# --- pending groups in other queues ----------------------------------------------------------


async def fill_pending(admin: Wire, stuck: Vmm, count: int) -> None:
    """Inject `count` one-page groups into the stuck VMM's queues.

    Each (rid, pasid, grpid) is used once, as a device never reuses an outstanding PRG index.
    """
    rids = list(stuck.dev_ids)
    pasids = sorted({p for _, p in stuck.streams}, key=lambda p: -1 if p is None else p)
    per_rid = 512 * len(pasids)
    if count > per_rid * len(rids):
        raise ValueError(f"{count} pending groups need more stuck devices than {len(rids)}")

    def injects() -> Any:
        for n in range(count):
            rid = rids[n % len(rids)]
            slot = n // len(rids)
            pasid = pasids[slot // 512]
            msg: dict[str, Any] = {
                "rid": rid,
                "addr": IOVA_BASE + n * PAGE,
                "perm": READ,
                "grpid": slot % 512,
                "last": True,
            }
            if pasid is not None:
                msg["pasid"] = pasid
            yield admin.request("inject", **msg)

    await admin.pipeline(list(injects()), window=512)


def pending_now(counters: dict[str, int]) -> int:
    """The exactly-once identity of docs/protocol.md, solved for `pending`."""
    return (
        counters["groups"]
        - counters["responses"]
        - counters["auto_responses"]
        - counters["throttled"]
    )


# --- the individual benches ---------------------------------------------------------------------


async def _bench_serial_and_throughput(d: Daemon, quick: bool, ceiling_sock: str) -> list[Entry]:
    """Each rep measures the ceiling, then iopfd, back to back: the ratio is per pair.

    A shared machine's load changes over seconds; a ceiling measured a minute earlier
    would turn that drift into a wrong ratio. Pairing cancels it.
    """
    # Short slices, alternating: the load of a shared machine moves within a second.
    seconds = 0.2 if quick else 0.3
    reps = 2 if quick else 10
    rids = [f.rid for f in generated_functions(16)]
    entries = []

    vmm = await open_vmm(d.socket, "bench-serial", rids[:1], (None,))
    rates_s, ceil_s, samples_all, cpu, client_cpu = [], [], [], [], []
    for k in range(reps):
        # Alternate which of the pair runs first, so a trend in the load cancels too.
        if k % 2:
            cn, cel, _ = await ceilings.trio_serial(ceiling_sock, seconds, 20)
        meter = CpuMeter(d)
        n, elapsed, samples = await serial_faults(vmm, seconds, warmup=10, meter=meter)
        if not k % 2:
            cn, cel, _ = await ceilings.trio_serial(ceiling_sock, seconds, 20)
        cpu.append(meter.daemon_ns / n / 1000)
        client_cpu.append(meter.client_ns / n / 1000)
        rates_s.append(n / elapsed)
        ceil_s.append(cn / cel / 2)
        samples_all += samples
    await vmm.wire.aclose()
    entries.append(
        serial_entry(
            "fault.serial_round_trip",
            rates_s,
            ceil_s,
            latency_summary_us(samples_all),
            cpu_us=round(median(cpu), 1),
            client_cpu_us=round(median(client_cpu), 1),
            note="dma -> fault -> ioas_map+page_response -> dma reply, one at a time; "
            "ceiling: trio round trips / 2, measured next to each rep",
        )
    )

    vmm = await open_vmm(d.socket, "bench-throughput", rids, (1, 2, 3, 4))
    runs, ceil_p, cpu, client_cpu = [], [], [], []
    seconds, reps = (0.3, 2) if quick else (0.5, 6)
    for k in range(reps):
        if k % 2:
            cn, cel, _ = await ceilings.trio_pipelined(ceiling_sock, seconds, PIPELINE_WINDOW)
        meter = CpuMeter(d)
        r = await fault_throughput(vmm, seconds, window=PIPELINE_WINDOW, meter=meter)
        if not k % 2:
            cn, cel, _ = await ceilings.trio_pipelined(ceiling_sock, seconds, PIPELINE_WINDOW)
        cpu.append(meter.daemon_ns / max(1, r["groups"]) / 1000)
        client_cpu.append(meter.client_ns / max(1, r["groups"]) / 1000)
        runs.append(r)
        ceil_p.append(cn / cel)
    await vmm.wire.aclose()
    best = min(runs, key=lambda r: abs(r["rate"] - median([r["rate"] for r in runs])))
    entries.append(
        throughput_entry(
            "fault.throughput",
            [r["rate"] for r in runs],
            ceil_p,
            best["latency"],
            {"groups_per_batch": round(best["groups"] / max(1, best["batches"]), 1)},
            cpu_us=round(median(cpu), 1),
            client_cpu_us=round(median(client_cpu), 1),
            note=f"16 devices x 4 PASIDs, {PIPELINE_WINDOW} dma in flight, batched "
            "answers; p50/p99: dma latency; ceiling measured next to each rep",
        )
    )
    return entries


async def _interleaved_rounds(
    vmms: Sequence[tuple[Daemon, Vmm]], rounds: int, seconds: float
) -> list[dict[str, list[float]]]:
    """Short serial fault rounds taking turns over the daemons, in alternating order.

    A round's cost per daemon is its median fault (a burst of load moves the mean, not
    the median) and the daemon's CPU per fault; the rounds stay aligned across daemons
    so that costs measured a fraction of a second apart can be compared.

    Client and daemons share one CPU meanwhile. Unpinned, whether a daemon happens to
    sit on the client's CPU or the other one changes its round trip by several times
    (python-toolkit.md 2a), and identical daemons then differ by 10-15 percent, as much
    as the target; on one CPU they agree within a few percent.
    """
    mine = os.sched_getaffinity(0)
    cpu = {max(mine)}
    os.sched_setaffinity(0, cpu)
    for d, _ in vmms:
        os.sched_setaffinity(d.pid, cpu)
    per: list[dict[str, list[float]]] = [{"wall_us": [], "cpu_us": []} for _ in vmms]
    order = list(range(len(vmms)))
    try:
        for r in range(rounds + 1):
            for i in order if r % 2 else reversed(order):
                d, vmm = vmms[i]
                meter = CpuMeter(d)
                n, _, samples = await serial_faults(vmm, seconds, warmup=20, meter=meter)
                if r == 0:
                    continue  # the first round warms caches, the allocator and the ATC
                per[i]["wall_us"].append(median(samples) / 1000)
                per[i]["cpu_us"].append(meter.daemon_ns / n / 1000)
    finally:
        os.sched_setaffinity(0, mine)
        for d, _ in vmms:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(d.pid, mine)
    return per


def _relative(per: list[dict[str, list[float]]], key: str, replicas: int) -> list[float]:
    """Each size's cost over the smallest size's, round by round, then the median round.

    A shared machine's load drifts over seconds and comes in bursts; a ratio taken within
    one round cancels the drift and the median over rounds drops the bursts. `per` holds
    `replicas` daemons per size, consecutive; a size's cost in a round is their mean, which
    halves what one process's luck (its memory layout, its caches) can add.
    """
    sizes = len(per) // replicas
    rounds = len(per[0][key])
    cost = [
        [
            sum(per[s * replicas + k][key][r] for k in range(replicas)) / replicas
            for r in range(rounds)
        ]
        for s in range(sizes)
    ]
    return [round(median([c / b for c, b in zip(row, cost[0], strict=True)]), 3) for row in cost]


def _scale_entry(
    name: str, sizes: Sequence[int], per: list[dict[str, list[float]]], what: str, replicas: int
) -> Entry:
    wall = _relative(per, "wall_us", replicas)
    cpu = _relative(per, "cpu_us", replicas)
    ratio = max(wall)
    return Entry(
        name=name,
        figure=ratio,
        unit=f"worst cost per fault / cost at {sizes[0]:,} {what} "
        f"(sizes {', '.join(f'{n:,}' for n in sizes)})",
        ceiling=1.0,
        ratio=ratio,
        target="<= 1.1",
        met=ratio <= 1.1,
        detail={
            "sizes": list(sizes),
            "relative_cost": wall,
            "relative_daemon_cpu": cpu,
            "p50_us_per_fault_by_daemon": [round(median(p["wall_us"]), 1) for p in per],
            "daemon_cpu_us_per_fault_by_daemon": [round(median(p["cpu_us"]), 1) for p in per],
            "rounds": len(per[0]["wall_us"]),
            "daemons_per_size": replicas,
            "note": "serial faults in interleaved rounds on one CPU; cost relative to the smallest "
            f"size within each round, median over rounds; daemon CPU alike: {max(cpu)}",
        },
    )


async def _bench_scale_devices(quick: bool, log: Log) -> tuple[Entry, dict[str, float]]:
    sizes = (1, 1024) if quick else (1, 1024, 65536)
    replicas = SCALE_REPLICAS_QUICK if quick else SCALE_REPLICAS
    startup: dict[str, float] = {}
    with ExitStack() as stack:
        pairs = []
        for n in sizes:
            for _ in range(replicas):
                log(f"  scale: starting iopfd with {n} devices")
                d = stack.enter_context(daemon(generated_functions(n)))
                startup[str(n)] = round((d.ready_ns or 0) - d.started_ns) / 1e9
                pairs.append((d, await open_vmm(d.socket, f"bench-scale-{n}", ["0000:00:00.0"])))
        costs = await _interleaved_rounds(pairs, rounds=3 if quick else 12, seconds=0.15)
        for _, vmm in pairs:
            await vmm.wire.aclose()
    return _scale_entry("scale.devices", sizes, costs, "devices", replicas), startup


async def _bench_scale_pending(quick: bool, log: Log) -> tuple[Entry, dict[str, Any]]:
    sizes = (1, 1000) if quick else (1, 10_000, 100_000)
    replicas = SCALE_REPLICAS_QUICK if quick else SCALE_REPLICAS
    stuck_pasids: tuple[int | None, ...] = (None, 1, 2, 3, 4, 5, 6)
    n_stuck = 32
    functions = generated_functions(1 + n_stuck)
    stuck_rids = [f.rid for f in functions[1:]]
    mem: dict[str, Any] = {}
    with ExitStack() as stack:
        async with trio.open_nursery() as nursery:
            pairs = []
            for n in [n for n in sizes for _ in range(replicas)]:
                log(f"  scale: starting iopfd and injecting {n:,} pending groups")
                # max_outbuf raised: 100 000 fault events must not close the stuck client
                # should this process fall behind reading them on a loaded machine.
                limits = {"max_pending": 1 << 16, "max_outbuf": 256 << 20}
                d = stack.enter_context(daemon(functions, limits=limits))
                stuck = await open_vmm(
                    d.socket, "bench-stuck", stuck_rids, stuck_pasids, queue_per_device=True
                )
                nursery.start_soon(stuck.wire.drain_forever)
                admin = await Wire.open(d.socket, "bench-admin")
                rss0 = d.rss_kib()["VmRSS"]
                t0 = time.perf_counter()
                await fill_pending(admin, stuck, n)
                inject_rate = n / (time.perf_counter() - t0)
                counters = (await admin.call("status"))["counters"]
                if pending_now(counters) != n:
                    raise RuntimeError(f"expected {n} pending groups, the daemon has {counters}")
                mem[str(n)] = {
                    "rss_growth_kib": d.rss_kib()["VmRSS"] - rss0,
                    "inject_per_s": round(inject_rate),
                }
                await admin.aclose()
                pairs.append((d, await open_vmm(d.socket, f"bench-scale-{n}", [functions[0].rid])))
            costs = await _interleaved_rounds(pairs, rounds=3 if quick else 12, seconds=0.15)
            for _, vmm in pairs:
                await vmm.wire.aclose()
            nursery.cancel_scope.cancel()
    big = str(sizes[-1])
    mem["bytes_per_pending_group"] = round(mem[big]["rss_growth_kib"] * 1024 / sizes[-1])
    return _scale_entry("scale.pending_groups", sizes, costs, "pending groups", replicas), mem


@dataclass(frozen=True)
class InvScenario:
    """A nesting parent "P" (stage 2) and nested children "C*" attached as `attach` says."""

    name: str
    functions: tuple[Fn, ...]
    attach: tuple[tuple[str, str, int | None], ...]  # (hwpt, rid, pasid)

    @property
    def iommus(self) -> list[str]:
        return sorted({f.iommu for f in self.functions})

    @property
    def children(self) -> list[str]:
        return sorted({h for h, _, _ in self.attach if h != "P"})

    def describe(self) -> str:
        return (
            f"{len(self.functions)} devices on {len(self.iommus)} units, "
            f"{sum(f.ats for f in self.functions)} ATS, parent + {len(self.children)} nested "
            f"children, {len(self.attach)} attachments"
        )


# Small: a nested domain twice behind one unit, RID and PASID attachments, 3 units.
INV_SMALL = InvScenario(
    "small",
    (
        Fn("0000:10:00.0", "dmar0", ats=True),
        Fn("0000:10:01.0", "dmar0", ats=True),
        Fn("0000:10:02.0", "dmar0", ats=False, pri=False),
        Fn("0000:20:00.0", "dmar1", ats=True),
        Fn("0000:20:01.0", "dmar1", ats=True),
        Fn("0000:20:02.0", "dmar1", ats=False, pri=False),
        Fn("0000:30:00.0", "dmar2", ats=True),
    ),
    (
        ("P", "0000:10:00.0", None),
        ("P", "0000:10:02.0", None),
        ("P", "0000:20:00.0", None),
        ("P", "0000:20:02.0", None),
        ("C1", "0000:10:00.0", 1),
        ("C1", "0000:10:01.0", 1),
        ("C1", "0000:20:01.0", 2),
        ("C2", "0000:10:01.0", 2),
        ("C2", "0000:30:00.0", None),
    ),
)


def _large_scenario() -> InvScenario:
    """24 devices on 2 units, two in three with ATS; the parent on 12 RIDs, four children
    each on the other 12 devices at their own PASID: more than 16 descriptors per unit."""
    functions = tuple(
        Fn(f"0000:{0x40 + u:02x}:{i:02x}.0", f"dmar{u}", ats=i % 3 != 2, pri=i % 3 != 2)
        for u in range(2)
        for i in range(12)
    )
    attach: list[tuple[str, str, int | None]] = []
    for f in functions:
        i = int(f.rid.split(":")[2].split(".")[0], 16)
        if i < 6:
            attach.append(("P", f.rid, None))
        else:
            attach += [(f"C{k}", f.rid, k) for k in range(1, 5)]
    return InvScenario("large", functions, tuple(attach))


INV_LARGE = _large_scenario()


def invalidation_minimum(sc: InvScenario) -> dict[str, int]:
    """What one stage-2 unmap must invalidate, by hand from vtd-hw.md 5.4 and 5.5.

    - IOTLB: one per (unit, DID); every domain has one DID per unit it is attached on, and
      an IOTLB invalidation by a nested domain's DID covers all of its PASIDs;
    - device TLB: one per (ATS function, PASID) attached to the parent or a child;
    - one wait per unit touched: the IQ holds 256 descriptors, so one submission per unit
      can carry them all (Linux's qi_batch stops at 16 per submission, a software choice).
    """
    unit_of = {f.rid: f.iommu for f in sc.functions}
    ats = {f.rid for f in sc.functions if f.ats}
    iotlb = {(unit_of[rid], hwpt) for hwpt, rid, _ in sc.attach}
    devtlb = {(rid, pasid) for _, rid, pasid in sc.attach if rid in ats}
    units = {unit_of[rid] for _, rid, _ in sc.attach}
    return {"iotlb": len(iotlb), "dev_tlb": len(devtlb), "wait": len(units)}


async def _bench_invalidation(sc: InvScenario) -> Entry:
    with daemon(sc.functions, iommus=sc.iommus) as d:
        wire = await Wire.open(d.socket, "bench-invalidation")
        ioas = (await wire.call("ioas_alloc"))["ioas_id"]
        dev = {}
        for f in sc.functions:
            dev[f.rid] = (await wire.call("bind", rid=f.rid))["dev_id"]
        first = dev[sc.functions[0].rid]
        hwpt = {
            # PASID-compatible (protocol v2): children sit at PASIDs, the parent at RIDs of
            # the same functions.
            "P": (
                await wire.call(
                    "hwpt_alloc", dev_id=first, pt_id=ioas, flags=["nest_parent", "pasid"]
                )
            )["hwpt_id"]
        }
        for child in sc.children:
            hwpt[child] = (
                await wire.call(
                    "hwpt_alloc",
                    dev_id=first,
                    pt_id=hwpt["P"],
                    flags=["pasid"],
                    data={"type": "vtd_s1"},
                )
            )["hwpt_id"]
        for name, rid, pasid in sc.attach:
            args: dict[str, Any] = {"dev_id": dev[rid], "pt_id": hwpt[name]}
            if pasid is not None:
                args["pasid"] = pasid
            await wire.call("attach", **args)
        await wire.call("ioas_map", ioas_id=ioas, iova=IOVA_BASE, length=16 * PAGE, perm=RW)
        admin = await Wire.open(d.socket, "bench-admin")
        before = (await admin.call("status"))["counters"]
        await wire.call("ioas_unmap", ioas_id=ioas, iova=IOVA_BASE, length=16 * PAGE)
        after = (await admin.call("status"))["counters"]
        await admin.aclose()
        await wire.aclose()
    delta = {
        k[len("iq_descriptors_") :]: after.get(k, 0) - before.get(k, 0)
        for k in set(after) | set(before)
        if k.startswith("iq_descriptors_") and after.get(k, 0) != before.get(k, 0)
    }
    issued = {
        "iotlb": delta.get("iotlb", 0) + delta.get("pasid_iotlb", 0),
        "dev_tlb": delta.get("dev_tlb", 0) + delta.get("pasid_dev_tlb", 0),
        "wait": delta.get("wait", 0),
    }
    other = {
        k: v
        for k, v in delta.items()
        if k not in {"iotlb", "pasid_iotlb", "dev_tlb", "pasid_dev_tlb", "wait"}
    }
    minimum = invalidation_minimum(sc)
    total, floor = sum(delta.values()), sum(minimum.values())
    return Entry(
        name=f"invalidation.s2_unmap_{sc.name}",
        figure=total,
        unit="descriptors per ioas_unmap",
        ceiling=floor,
        ratio=round(total / floor, 3),
        target="= minimum exactly",
        met=issued == minimum and not other,
        detail={
            "issued": issued,
            "minimum": minimum,
            "by_type": delta,
            "invalidations_counter": after.get("invalidations", 0) - before.get("invalidations", 0),
            "note": sc.describe(),
        },
    )


async def _bench_memory(quick: bool, bytes_per_group: int | None, log: Log) -> Entry:
    total = 10_000 if quick else 1_000_000
    max_pending = 4096
    max_outbuf = 8 << 20
    pasids: tuple[int | None, ...] = (None, 1, 2, 3, 4, 5, 6, 7)
    functions = generated_functions(2)
    with daemon(functions, limits={"max_pending": max_pending, "max_outbuf": max_outbuf}) as d:
        async with trio.open_nursery() as nursery:
            stuck = await open_vmm(d.socket, "bench-stuck", [functions[1].rid], pasids)
            nursery.start_soon(stuck.wire.drain_forever)
            admin = await Wire.open(d.socket, "bench-admin")
            await trio.sleep(0.2)
            idle = d.rss_kib()["VmRSS"]
            samples: list[tuple[float, int]] = []

            async def sample() -> None:
                while True:
                    samples.append((time.perf_counter(), d.rss_kib()["VmRSS"]))
                    await trio.sleep(0.05)

            nursery.start_soon(sample)
            rid = functions[1].rid
            t0 = time.perf_counter()
            sent = 0
            chunk = max_pending
            queue_full_at = None  # once two queues' worth went in, RSS must stay put
            budget_end = time.perf_counter() + (15 if quick else MEMORY_BUDGET_S)
            while sent < total and time.perf_counter() < budget_end:
                n = min(chunk, total - sent)
                msgs = []
                for j in range(sent, sent + n):
                    pasid = pasids[(j // 512) % len(pasids)]
                    args: dict[str, Any] = {
                        "rid": rid,
                        "addr": IOVA_BASE + (j % (1 << 20)) * PAGE,
                        "perm": READ,
                        "grpid": j % 512,
                        "last": True,
                    }
                    if pasid is not None:
                        args["pasid"] = pasid
                    msgs.append(admin.request("inject", **args))
                await admin.pipeline(msgs, window=512)
                sent += n
                if queue_full_at is None and sent >= 2 * max_pending:
                    queue_full_at = time.perf_counter()
            elapsed = time.perf_counter() - t0
            counters = (await admin.call("status"))["counters"]
            rss = d.rss_kib()
            nursery.cancel_scope.cancel()
    log(f"  memory: {sent:,} page requests in {elapsed:.1f} s")
    peak = rss["VmHWM"]
    per_group = bytes_per_group or 2048
    bound_kib = (max_pending * per_group + max_outbuf) // 1024
    growth = peak - idle
    short = "" if sent == total else f"; stopped at {sent:,} of {total:,} by the time budget"

    # Flat: once the queue is full, further page requests are throttled and cost nothing.
    later = [kib for t, kib in samples if queue_full_at is not None and t >= queue_full_at]
    drift = (later[-1] - later[0]) if len(later) >= 2 else 0
    flat = drift <= max(1024, idle // 50)
    return Entry(
        name="memory.stuck_client_rss",
        figure=growth,
        unit="KiB above idle (peak)",
        ceiling=bound_kib,
        ratio=round(growth / bound_kib, 3),
        target="<= queue bound, flat over time",
        met=growth <= bound_kib and flat,
        detail={
            "page_requests": sent,
            "page_requests_planned": total,
            "idle_kib": idle,
            "peak_kib": peak,
            "end_kib": rss["VmRSS"],
            "drift_after_queue_full_kib": drift,
            "flat": flat,
            "bound": f"max_pending {max_pending} x {per_group} B/group + max_outbuf {max_outbuf}",
            "injected_per_s": round(sent / elapsed),
            "throttled": counters.get("throttled"),
            "pending": pending_now(counters),
            "rss_samples_kib": [kib for _, kib in samples[:: max(1, len(samples) // 40)]],
            "note": f"{sent:,} injected page requests, stuck client reads but never answers"
            + short,
        },
    )


def describe(exc: BaseException) -> str:
    """An exception as one line, the leaves of a trio ExceptionGroup spelled out."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe(e) for e in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"


# --- entry point ------------------------------------------------------------------------------


async def _measure(quick: bool, rates: dict[str, float], log: Log) -> tuple[list[Entry], list[str]]:
    entries: list[Entry] = []
    notes: list[str] = []
    errors: list[str] = []

    async def section(name: str, fn: Callable[[], Any]) -> Any:
        log(name)
        try:
            # A daemon that stops answering must fail its section, not hang make bench.
            with trio.fail_after(SECTION_TIMEOUT_S):
                return await fn()
        except Exception as exc:
            errors.append(f"{name}: {describe(exc)}")
            return None

    async def serial() -> None:
        with daemon(generated_functions(16)) as d:
            start_s = ((d.ready_ns or 0) - d.started_ns) / 1e9
            ceiling_sock = str(d.dir / "ceiling.sock")
            server = python_cmd("-m", "bench.ceilings", "serve", "trio", ceiling_sock)
            with running(server, ceiling_sock):
                entries.extend(await _bench_serial_and_throughput(d, quick, ceiling_sock))
        starts = [start_s]
        for _ in range(0 if quick else 2):
            with daemon(generated_functions(16)) as d2:
                starts.append(((d2.ready_ns or 0) - d2.started_ns) / 1e9)
        entries.append(
            Entry(
                name="startup.exec_to_ready",
                figure=round(median(starts) * 1000, 1),
                unit="ms",
                detail={"runs_ms": [round(s * 1000, 1) for s in starts], "note": "16 devices"},
            )
        )

    await section("fault: serial round trip, throughput, start-up", serial)
    dev = await section("scale: devices", lambda: _bench_scale_devices(quick, log))
    if dev:
        entries.append(dev[0])
        entries[-1].detail["startup_s_by_devices"] = dev[1]
        biggest = max(dev[1], key=int)
        entries.append(
            Entry(
                name=f"startup.exec_to_ready_{biggest}_devices",
                figure=round(dev[1][biggest] * 1000, 1),
                unit="ms",
                detail={
                    "note": f"{int(biggest):,} devices (the topology file is parsed, "
                    "validated and built into the machine before READY=1)"
                },
            )
        )
    pend = await section("scale: pending groups", lambda: _bench_scale_pending(quick, log))
    per_group = None
    if pend:
        entries.append(pend[0])
        entries[-1].detail["memory"] = pend[1]
        per_group = pend[1]["bytes_per_pending_group"]
    for sc in (INV_SMALL, INV_LARGE):
        inv = await section(f"invalidation ({sc.name})", functools.partial(_bench_invalidation, sc))
        if inv:
            entries.append(inv)
    mem = await section("memory", lambda: _bench_memory(quick, per_group, log))
    if mem:
        entries.append(mem)
    if errors:
        raise RuntimeError("; ".join(errors)) if not entries else BenchPartialError(entries, errors)
    return entries, notes


class BenchPartialError(RuntimeError):
    def __init__(self, entries: list[Entry], errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.entries = entries
        self.errors = errors


def measure(
    quick: bool, rates: dict[str, float], log: Log = print
) -> tuple[list[Entry], list[str]]:
    return trio.run(_measure, quick, rates, log)


# --- profiling the daemon under one of the loads ----------------------------------------------


#: Where a sample's time is charged in the per-package view: the innermost frame of one
#: of these (path fragment, name); the standard library, enum and dataclass code count
#: for the project package that called them.
PACKAGES = (
    ("hwmodel/", "hwmodel"),
    ("iopfd/core/", "iopfd.core"),
    ("iopfd/protocol/", "iopfd.protocol"),
    ("iopfd/server/", "iopfd.server"),
    ("trio/", "trio"),
)


def _package(frame: str) -> str | None:
    return next((name for part, name in PACKAGES if part in frame), None)


def summarize_py_spy(raw: str, top: int = 40) -> str:
    """Self shares per package, then self and inclusive shares per function, from
    `py-spy record -f raw` output."""
    import collections

    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    packages: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [f.rsplit(":", 1)[0] + ")" if f.endswith(")") else f for f in stack.split(";")]
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
        pkg = next((p for f in reversed(frames) if (p := _package(f)) is not None), "other")
        packages[pkg] += n
    total = max(total, 1)
    lines = [f"{total} samples", "", "self, by package:"]
    lines += [f"{100 * v / total:5.1f}%  {k}" for k, v in packages.most_common()]
    lines += ["", "self:"]
    lines += [f"{100 * v / total:5.1f}%  {k}" for k, v in own.most_common(top // 2)]
    lines += ["", "inclusive:"]
    lines += [f"{100 * v / total:5.1f}%  {k}" for k, v in incl.most_common(top)]
    return "\n".join(lines)


async def _profile(load: str, seconds: float, out: str) -> None:
    import shutil
    import subprocess
    import sys

    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        raise SystemExit("py-spy is not installed: .venv/bin/pip install py-spy")
    functions = generated_functions(16)
    limits = {"max_pending": 4096}
    with daemon(functions, limits=limits) as d:
        async with trio.open_nursery() as nursery:
            rids = [f.rid for f in functions]
            if load == "serial":
                vmm = await open_vmm(d.socket, "profile", rids[:1])
                await serial_faults(vmm, 0.5, 100)
            elif load == "throughput":
                vmm = await open_vmm(d.socket, "profile", rids, (1, 2, 3, 4))
                await fault_throughput(vmm, 0.5, PIPELINE_WINDOW)
            else:
                stuck = await open_vmm(d.socket, "stuck", rids[1:2], (None, 1, 2, 3, 4, 5, 6, 7))
                nursery.start_soon(stuck.wire.drain_forever)
                vmm = Vmm(await Wire.open(d.socket, "admin"), 0)
            spy = subprocess.Popen(
                [
                    py_spy,
                    "record",
                    "-p",
                    str(d.pid),
                    "-d",
                    str(round(seconds)),
                    "-r",
                    "500",
                    # Samples of Python running only: a wait in epoll or a syscall is
                    # not CPU the daemon's code spent.
                    "--gil",
                    "-f",
                    "raw",
                    "-o",
                    out,
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            await trio.sleep(0.3)
            if load == "serial":
                n, el, _ = await serial_faults(vmm, seconds, 0)
                print(f"serial: {n / el:.0f} faults/s under the profiler")
            elif load == "throughput":
                r = await fault_throughput(vmm, seconds, PIPELINE_WINDOW)
                print(f"throughput: {r['rate']:.0f} groups/s under the profiler")
            else:
                t0 = time.perf_counter()
                sent = 0
                while time.perf_counter() - t0 < seconds:
                    msgs = [
                        vmm.wire.request(
                            "inject",
                            rid=rids[1],
                            pasid=1 + (j // 512) % 7,
                            addr=IOVA_BASE + j * PAGE,
                            perm=READ,
                            grpid=j % 512,
                            last=True,
                        )
                        for j in range(sent, sent + 4096)
                    ]
                    sent += await vmm.wire.pipeline(msgs, 512)
                print(f"inject: {sent / (time.perf_counter() - t0):.0f} page requests/s")
            await trio.to_thread.run_sync(spy.wait)
            nursery.cancel_scope.cancel()
    print(summarize_py_spy(Path(out).read_text()))


def main(argv: list[str] | None = None) -> None:
    """`python -m bench.faults [--quick]`, or `profile serial|throughput|inject [SECONDS]`."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["profile"]:
        load = args[1] if len(args) > 1 else "serial"
        if load not in {"serial", "throughput", "inject"}:
            raise SystemExit("profile what? serial | throughput | inject")
        seconds = float(args[2]) if len(args) > 2 else 6.0
        trio.run(_profile, load, seconds, f"/tmp/iopfd-profile-{load}.txt")
        return
    q = "--quick" in args
    _, r = ceilings.measure(q)
    for e in measure(q, r)[0]:
        print(e.as_dict())


if __name__ == "__main__":
    main()
