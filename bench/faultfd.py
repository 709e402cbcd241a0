"""The kernel-format fault fd as a second transport: a C client on the uAPI, same ceilings.

bench/faults.py drives iopfd with raw protocol frames from Python. Here the client is
`build/c/faultfd-bench` (bench/c/faultfd_bench.c), a C program written against
`<linux/iommufd.h>` and the VFIO cdev as a VMM is, running on `libiopf-preload.so`:
`IOMMU_FAULT_QUEUE_ALLOC`, a fault-capable `IOMMU_HWPT_ALLOC`, `read()` of
`struct iommu_hwpt_pgfault` from the fault fd (the daemon's `fault_fd` socket),
`IOMMU_IOAS_MAP` of the faulting pages, `write()` of `struct iommu_hwpt_page_response`,
and `iopf_dma()` in threads of their own, since it returns only once its faults were
answered. Two benches, mirroring bench/faults.py's, on a daemon started the same way:

- `fault.serial_round_trip_faultfd`: one transfer in flight on vfio0 at its RID;
  faults/s against the trio ceiling / 2, measured next to each rep;
- `fault.throughput_faultfd`: 256 transfers in flight over 16 devices x 4 PASIDs, one
  fault queue, each `read()` taking what is pending, one `IOMMU_IOAS_MAP` per
  contiguous run and one `write()` for every group read; groups/s against the
  pipelined ceiling.

The daemon's CPU per fault (per group) is taken from /proc over the client's measured
window, the client's own CPU with it (its threads and the library's reader thread).
The uAPI costs one round trip more per fault than the frame client: `IOMMU_IOAS_MAP`
is a synchronous ioctl, so the page response can only be written once its reply came,
where the frame client sends `ioas_map` and `page_response` in one write.

Without a C compiler the section says so and measures nothing.
`python -m bench.faultfd [--quick]` runs it alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from typing import IO, Any

import trio

from bench import ceilings
from bench.ceilings import PIPELINE_WINDOW
from bench.common import REPO, Entry, latency_summary_us, median, python_cmd, running
from bench.faults import serial_entry, throughput_entry
from bench.wire import Daemon, daemon, generated_functions

Log = Callable[[str], None]
BINARY = REPO / "build" / "c" / "faultfd-bench"
PRELOAD = REPO / "build" / "c" / "libiopf-preload.so"
DEVICES = 16
PASIDS = 4
#: Set-up (open, bind, attach) and one run's end (every transfer in flight answered).
RUN_TIMEOUT_S = 60.0


def build() -> str | None:
    """`make c-bench` (a no-op when up to date); why not, where it cannot be built.

    A missing compiler is a reason to skip; a compiler that fails is an error."""
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        return f"no C compiler ({cc}): the fault-fd benches were not run"
    if shutil.which("make") is None:
        return "no make: the fault-fd benches were not run"
    proc = subprocess.run(
        ["make", "--no-print-directory", "-s", "c-bench"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"make c-bench failed: {proc.stderr.strip()[-2000:]}")
    return None


class CClient:
    """One faultfd-bench process: its set-up stays, each `run()` is one measured window.

    Runs are asked for over stdin one at a time, so that the ceiling can be measured
    between two of them with the client idle."""

    def __init__(self, d: Daemon, mode: str, args: Sequence[str] = ()) -> None:
        self.stderr_path = d.dir / f"faultfd-bench-{mode}.err"
        self._stderr: IO[bytes] = self.stderr_path.open("wb")
        env = dict(os.environ, IOPFD_SOCKET=d.socket, LD_PRELOAD=str(PRELOAD))
        env.pop("IOPF_DEBUG", None)
        self.proc = subprocess.Popen(
            [str(BINARY), "--daemon-pid", str(d.pid), "--stdin", mode, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=env,
        )

    def run(self, seconds: float) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(f"{seconds}\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except BrokenPipeError:  # it failed before this run (its set-up, say)
            line = ""
        if not line:
            self.proc.wait(5)
            raise RuntimeError(
                f"faultfd-bench exited {self.proc.returncode}: "
                f"{self.stderr_path.read_text(errors='replace').strip()[-2000:]}"
            )
        result: dict[str, Any] = json.loads(line)
        return result

    async def arun(self, seconds: float) -> dict[str, Any]:
        with trio.fail_after(RUN_TIMEOUT_S + seconds):
            return await trio.to_thread.run_sync(self.run, seconds, abandon_on_cancel=True)

    def close(self) -> None:
        """EOF: the client closes its fds (the daemon releases the context) and exits."""
        if self.proc.stdin:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        self._stderr.close()


def _cpu_us(runs: Sequence[dict[str, Any]], key: str) -> float:
    """The median over `runs` of CPU `key` (ns) per group, in us."""
    return round(median([float(r[key]) / max(1, int(r["groups"])) / 1000 for r in runs]), 1)


async def _paired(
    client: CClient,
    ceiling: Callable[[], Any],
    seconds: float,
    reps: int,
) -> tuple[list[dict[str, Any]], list[float]]:
    """Each rep: the ceiling and the client back to back, alternating which goes first."""
    runs, ceils = [], []
    for k in range(reps):
        if k % 2:
            cn, cel, _ = await ceiling()
        runs.append(await client.arun(seconds))
        if not k % 2:
            cn, cel, _ = await ceiling()
        ceils.append(cn / cel)
    return runs, ceils


async def _bench(d: Daemon, quick: bool, ceiling_sock: str) -> list[Entry]:
    entries = []
    seconds, reps = (0.2, 2) if quick else (0.3, 10)
    client = CClient(d, "serial")
    try:
        runs, ceils = await _paired(
            client, lambda: ceilings.trio_serial(ceiling_sock, seconds, 20), seconds, reps
        )
    finally:
        client.close()
    halves = [c / 2 for c in ceils]
    entries.append(
        serial_entry(
            "fault.serial_round_trip_faultfd",
            [r["rate"] for r in runs],
            halves,
            latency_summary_us([s for r in runs for s in r["samples_ns"]]),
            cpu_us=_cpu_us(runs, "daemon_cpu_ns"),
            client_cpu_us=_cpu_us(runs, "client_cpu_ns"),
            note="C client on the fault fd (libiopf-preload): iopf_dma -> read() -> "
            "IOMMU_IOAS_MAP -> write() -> iopf_dma returns, one at a time; ceiling: trio "
            "round trips / 2, measured next to each rep",
        )
    )

    seconds, reps = (0.3, 2) if quick else (0.5, 6)
    args = ["--devices", str(DEVICES), "--pasids", str(PASIDS), "--window", str(PIPELINE_WINDOW)]
    client = CClient(d, "throughput", args)
    try:
        runs, ceils = await _paired(
            client,
            lambda: ceilings.trio_pipelined(ceiling_sock, seconds, PIPELINE_WINDOW),
            seconds,
            reps,
        )
    finally:
        client.close()
    rates = [r["rate"] for r in runs]
    best = min(runs, key=lambda r: abs(r["rate"] - median(rates)))
    batches = max(1, best["batches"])
    entries.append(
        throughput_entry(
            "fault.throughput_faultfd",
            rates,
            ceils,
            latency_summary_us([s for r in runs for s in r["samples_ns"]]),
            {
                "groups_per_batch": round(best["groups"] / batches, 1),
                "maps_per_batch": round(best["maps"] / batches, 1),
            },
            cpu_us=_cpu_us(runs, "daemon_cpu_ns"),
            client_cpu_us=_cpu_us(runs, "client_cpu_ns"),
            note=f"C client on the fault fd: {DEVICES} devices x {PASIDS} PASIDs, "
            f"{PIPELINE_WINDOW} iopf_dma threads, one read() per batch, one "
            "IOMMU_IOAS_MAP per contiguous run, one write() of every answer; p50/p99: "
            "dma latency; ceiling measured next to each rep",
        )
    )
    return entries


async def _measure(quick: bool, log: Log) -> tuple[list[Entry], list[str]]:
    reason = await trio.to_thread.run_sync(build)
    if reason:
        log(f"  {reason}")
        return [], [reason]
    with daemon(generated_functions(DEVICES)) as d:
        ceiling_sock = str(d.dir / "ceiling.sock")
        server = python_cmd("-m", "bench.ceilings", "serve", "trio", ceiling_sock)
        with running(server, ceiling_sock):
            return await _bench(d, quick, ceiling_sock), []


def measure(quick: bool, log: Log = print) -> tuple[list[Entry], list[str]]:
    """The two fault-fd entries, or none and a note saying why (no compiler)."""
    return trio.run(_measure, quick, log)


def compare_notes(entries: Sequence[Entry]) -> list[str]:
    """The C client on the fault fd beside the Python frame client of the same run."""
    by_name = {e.name: e for e in entries}
    notes = []
    for base, per in (("fault.serial_round_trip", "fault"), ("fault.throughput", "group")):
        py, c = by_name.get(base), by_name.get(f"{base}_faultfd")
        if not (py and c):
            continue
        key = f"daemon_cpu_us_per_{per}"
        ckey = f"client_cpu_us_per_{per}"
        notes.append(
            f"{base}: the C client on the fault fd {c.figure:,.0f} {c.unit} "
            f"(ratio {c.ratio}), the Python frame client {py.figure:,.0f} (ratio {py.ratio}); "
            f"daemon CPU per {per} {c.detail.get(key)} us against {py.detail.get(key)} us, "
            f"client CPU {c.detail.get(ckey)} us against {py.detail.get(ckey)} us."
        )
    return notes


def main(argv: list[str] | None = None) -> None:
    import sys

    args = sys.argv[1:] if argv is None else argv
    entries, notes = measure("--quick" in args)
    for e in entries:
        print(json.dumps(e.as_dict()))
    for n in notes:
        print(n)


if __name__ == "__main__":
    main()
