"""What iopf-vmm measured: counters, latency percentiles, the progress line and the summary."""

from __future__ import annotations

import json
import math
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, TextIO


def percentile(sorted_samples: list[int], q: float) -> int:
    """Nearest-rank percentile of already sorted samples (0 when there are none)."""
    if not sorted_samples:
        return 0
    k = max(0, min(len(sorted_samples) - 1, math.ceil(q / 100 * len(sorted_samples)) - 1))
    return sorted_samples[k]


def latency_summary(samples_ns: list[int]) -> dict[str, float]:
    """count, p50/p90/p99 and max, in milliseconds."""
    s = sorted(samples_ns)
    out: dict[str, float] = {"count": float(len(s))}
    for q in (50, 90, 99):
        out[f"p{q}_ms"] = round(percentile(s, q) / 1e6, 3)
    out["max_ms"] = round((s[-1] if s else 0) / 1e6, 3)
    return out


@dataclass
class VmmStats:
    """Everything the run counts. Latencies are nanoseconds."""

    groups: int = 0
    faults: int = 0  # fault records (pages requested) in those groups
    throttled: int = 0  # groups the daemon answered SUCCESS itself (queue full)
    batches: int = 0
    answers: Counter[str] = field(default_factory=Counter)
    dma: Counter[str] = field(default_factory=Counter)
    dma_bytes: int = 0
    dma_faults: int = 0
    pages_mapped: int = 0  # IOAS pages mapped on demand
    map_calls: int = 0
    s1_pages_mapped: int = 0  # guest stage-1 entries written on demand (nested)
    s1_map_calls: int = 0
    epochs: int = 0
    touched_pages: int = 0  # buffer pages DMA'd in the last epoch
    verified_pages: int = 0
    verify_dmas: int = 0
    fault_service_ns: list[int] = field(default_factory=list)
    dma_fault_ns: list[int] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    def violate(self, what: str) -> None:
        """Record a broken invariant (the run will exit non-zero); keep the first 50."""
        if len(self.violations) < 50:
            self.violations.append(what)

    @property
    def dmas(self) -> int:
        return sum(self.dma.values())


@dataclass(frozen=True)
class RunInfo:
    devices: list[str]
    targets: int
    mode: str
    pattern: str
    pages: int
    seed: int
    daemon: str
    kernel: str = ""
    released: list[str] = field(default_factory=list)  # given back on device_request


def summary_dict(info: RunInfo, st: VmmStats) -> dict[str, Any]:
    return {
        "ok": not st.violations,
        "daemon": info.daemon,
        "kernel": info.kernel,
        "devices": info.devices,
        "released": info.released,
        "targets": info.targets,
        "mode": info.mode,
        "pattern": info.pattern,
        "pages_per_target": info.pages,
        "seed": info.seed,
        "elapsed_s": round(st.elapsed_s, 3),
        "epochs": st.epochs,
        "groups": st.groups,
        "faults": st.faults,
        "throttled": st.throttled,
        "batches": st.batches,
        "answers": {"SUCCESS": st.answers["SUCCESS"], "INVALID": st.answers["INVALID"]},
        "dma": dict(sorted(st.dma.items())),
        "dma_total": st.dmas,
        "dma_bytes": st.dma_bytes,
        "dma_page_requests": st.dma_faults,
        "pages_mapped": st.pages_mapped,
        "ioas_map_calls": st.map_calls,
        "s1_pages_mapped": st.s1_pages_mapped,
        "s1_map_calls": st.s1_map_calls,
        "touched_pages": st.touched_pages,
        "verified_pages": st.verified_pages,
        "verify_dmas": st.verify_dmas,
        # event read off the socket -> page_response reply received (the VMM's service time)
        "fault_service_latency": latency_summary(st.fault_service_ns),
        # dma request sent -> dma reply received, for transfers that faulted (device stall)
        "faulting_dma_latency": latency_summary(st.dma_fault_ns),
        "violations": st.violations,
    }


def _lat(d: dict[str, float]) -> str:
    if not d["count"]:
        return "no samples"
    return (
        f"p50 {d['p50_ms']:.3f} ms  p90 {d['p90_ms']:.3f} ms  p99 {d['p99_ms']:.3f} ms  "
        f"max {d['max_ms']:.3f} ms  (n={int(d['count'])})"
    )


def print_summary(info: RunInfo, st: VmmStats, out: TextIO, as_json: bool) -> None:
    d = summary_dict(info, st)
    if as_json:
        json.dump(d, out, indent=2)
        out.write("\n")
        return
    w = out.write
    dma = ", ".join(f"{n} {k}" for k, n in d["dma"].items()) or "none"
    avg = st.groups / st.batches if st.batches else 0.0
    w(f"iopf-vmm summary ({info.daemon}, kernel {info.kernel}, seed {info.seed})\n")
    w(f"  devices        {', '.join(info.devices)}\n")
    w(
        f"  setup          {info.targets} DMA streams, {info.mode}, {info.pattern}, "
        f"{info.pages} pages each\n"
    )
    w(f"  ran            {st.elapsed_s:.2f} s, {st.epochs} epoch(s)\n")
    if info.released:
        w(
            f"  released       {', '.join(info.released)} on the daemon's device_request "
            "(hot-unplug): stopped early\n"
        )
    w(
        f"  dma            {st.dmas} transfers ({dma}), {st.dma_bytes / 2**20:.1f} MiB, "
        f"{st.dma_faults} page requests issued\n"
    )
    w(
        f"  fault groups   {st.groups} handled in {st.batches} batches (avg {avg:.1f}), "
        f"{st.faults} faults, {st.throttled} throttled by the daemon\n"
    )
    w(f"  answers        SUCCESS {st.answers['SUCCESS']}, INVALID {st.answers['INVALID']}\n")
    w(f"  mapped         {st.pages_mapped} IOAS pages in {st.map_calls} ioas_map calls")
    if info.mode == "nested":
        w(f"; {st.s1_pages_mapped} stage-1 pages in {st.s1_map_calls} hwpt_s1_map calls")
    w("\n")
    w(f"  fault service  {_lat(d['fault_service_latency'])}\n")
    w("                 (fault event read -> page_response reply received)\n")
    w(f"  faulting dma   {_lat(d['faulting_dma_latency'])}\n")
    w("                 (dma sent -> dma reply, transfers that faulted)\n")
    w(
        f"  verified       {st.verified_pages} of {st.touched_pages} pages touched in the last "
        f"epoch mapped ({st.verify_dmas} DMAs without a fault)\n"
    )
    if st.violations:
        w(f"  INVARIANTS BROKEN ({len(st.violations)}):\n")
        for v in st.violations:
            w(f"    - {v}\n")
        if st.throttled and st.dma["retry_limit"]:
            w(
                "  note: the daemon throttled groups (its fault queue limit, max_pending) and\n"
                "        answered them SUCCESS itself; devices that kept meeting a full queue\n"
                "        ran out of retries: lower --concurrency or raise max_pending\n"
            )
    else:
        w("  invariants     ok: every DMA ended as expected, every group answered\n")


class Progress:
    """A one-line status on stderr: rewritten in place on a TTY, else one line per tick."""

    def __init__(self, enabled: bool, stream: TextIO | None = None) -> None:
        self.enabled = enabled
        # Looked up when built, not when imported: sys.stderr may have been replaced since.
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self._last_len = 0

    def show(self, elapsed: float, st: VmmStats, total: float | None) -> None:
        if not self.enabled:
            return
        rate = st.groups / elapsed if elapsed > 0 else 0.0
        of = f"/{total:.0f}" if total else ""
        line = (
            f"[{elapsed:5.1f}{of} s] epoch {st.epochs}  dma {st.dmas}  groups {st.groups} "
            f"({rate:,.0f}/s)  faults {st.faults}  mapped {st.pages_mapped}  "
            f"invalid {st.answers['INVALID']}"
        )
        if self.tty:
            pad = max(0, self._last_len - len(line))
            self.stream.write("\r" + line + " " * pad)
            self._last_len = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def setup(self, what: str, done: int, total: int) -> None:
        """Set-up progress (binding, attaching PASIDs): never silent for long."""
        if not self.enabled:
            return
        self._write(f"[setup] {what} {done}/{total}")

    def _write(self, line: str) -> None:
        if self.tty:
            pad = max(0, self._last_len - len(line))
            self.stream.write("\r" + line + " " * pad)
            self._last_len = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def done(self) -> None:
        if self.enabled and self.tty and self._last_len:
            self.stream.write("\n")
            self.stream.flush()
