"""Shared pieces of iopfd's benchmarks: wire framing, machine facts, statistics, output.

Every figure in `bench/results/latest.json` is stated against a ceiling measured in the
same run on the same machine, because a shared 2-vCPU VM is too noisy for absolute
numbers to mean anything from one day to the next.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgpack

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"

# docs/protocol.md "Transport and framing": 4-byte big-endian length, one msgpack map.
HEADER = struct.Struct(">I")
_packb = msgpack.packb
_unpackb = msgpack.unpackb


def encode_frame(obj: Mapping[str, Any]) -> bytes:
    body: bytes = _packb(obj)
    return HEADER.pack(len(body)) + body


def encode_frames(objs: Iterable[Mapping[str, Any]]) -> bytes:
    """Several frames as one buffer, for one coalesced write."""
    parts = []
    for obj in objs:
        body = _packb(obj)
        parts.append(HEADER.pack(len(body)))
        parts.append(body)
    return b"".join(parts)


class FrameReader:
    """Splits a byte stream into decoded frames; no validation beyond the framing."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        buf = self._buf
        buf += data
        out = []
        pos = 0
        end_of_data = len(buf)
        unpack_from = HEADER.unpack_from
        while end_of_data - pos >= 4:
            (length,) = unpack_from(buf, pos)
            end = pos + 4 + length
            if end > end_of_data:
                break
            out.append(_unpackb(buf[pos + 4 : end]))
            pos = end
        if pos:
            del buf[:pos]
        return out


# --- machine facts -------------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _cpuidle_driver() -> str | None:
    with contextlib.suppress(OSError):
        return Path("/sys/devices/system/cpu/cpuidle/current_driver").read_text().strip()
    return None


def _git_commit() -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        if out.returncode == 0:
            return out.stdout.strip()
    return None


def machine_facts() -> dict[str, Any]:
    import trio  # local: the facts record the versions the run actually used

    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "cpuidle_driver": _cpuidle_driver(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "trio": trio.__version__,
        "msgpack": ".".join(map(str, msgpack.version)),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "hostname": socket.gethostname(),
        "git_commit": _git_commit(),
        "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


# --- statistics ------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (q in [0, 100])."""
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1))
    return float(sorted_values[rank])


def latency_summary_us(samples_ns: Sequence[int]) -> dict[str, float]:
    s = sorted(samples_ns)
    return {
        "p50_us": round(percentile(s, 50) / 1000, 1),
        "p99_us": round(percentile(s, 99) / 1000, 1),
        "max_us": round(s[-1] / 1000, 1) if s else float("nan"),
        "samples": len(s),
    }


def median(values: Sequence[float]) -> float:
    s = sorted(values)
    n = len(s)
    if n == 0:
        return float("nan")
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


# --- processes ---------------------------------------------------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds consumed so far by process `pid` (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def proc_rss_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of process `pid`, in KiB."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            key, value = line.split(":", 1)
            out[key] = int(value.split()[0])
    return out


def python_cmd(*args: str) -> list[str]:
    return [sys.executable, *args]


def spawn(
    args: Sequence[str], env: Mapping[str, str] | None = None, **kw: Any
) -> subprocess.Popen[bytes]:
    full_env = dict(os.environ if env is None else env)
    full_env.setdefault("PYTHONPATH", str(REPO))
    return subprocess.Popen(list(args), cwd=REPO, env=full_env, **kw)


def stop(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for_socket(path: str, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
            s.connect(path)
            return
        time.sleep(0.01)
    raise TimeoutError(f"nothing listening on {path} after {timeout} s")


@contextlib.contextmanager
def running(args: Sequence[str], sock_path: str, **kw: Any) -> Iterator[subprocess.Popen[bytes]]:
    proc = spawn(args, **kw)
    try:
        wait_for_socket(sock_path, proc)
        yield proc
    finally:
        stop(proc)


# --- results ---------------------------------------------------------------------------


@dataclass
class Entry:
    """One line of the results: a figure, the ceiling it is held against, and the verdict."""

    name: str
    figure: float
    unit: str
    ceiling: float | None = None
    ratio: float | None = None
    target: str | None = None
    met: bool | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def fmt_num(x: float | None) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and x != x:  # NaN
        return "nan"
    ax = abs(x)
    if ax >= 1000:
        return f"{x:,.0f}"
    if ax >= 100:
        return f"{x:.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    return f"{x:.3g}"


# The detail keys worth a column in the table, in this order; the JSON has them all.
_SHOWN = (
    "p50_us",
    "p99_us",
    "daemon_cpu_us_per_fault",
    "daemon_cpu_us_per_group",
    "relative_cost",
    "p50_us_per_fault",
    "issued",
    "minimum",
    "idle_kib",
    "peak_kib",
    "flat",
    "page_requests",
    "python",  # an <entry>_mypyc's figure on the pure-Python build (bench/run.py)
    "note",
)


def _compact(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_compact(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_compact(v) for v in value) + "]"
    return str(value)


def _detail_text(detail: Mapping[str, Any]) -> str:
    return "; ".join(f"{key} {_compact(detail[key])}" for key in _SHOWN if key in detail)


def write_results(
    facts: Mapping[str, Any],
    entries: Sequence[Entry],
    extra: Mapping[str, Any],
    *,
    json_path: Path,
    md_path: Path,
) -> None:
    doc = {"machine": dict(facts), "entries": [e.as_dict() for e in entries], **extra}
    json_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=False, default=str) + "\n")
    tmp.replace(json_path)

    lines = [
        "# iopfd benchmark results",
        "",
        f"Run {facts.get('utc')} at commit `{facts.get('git_commit')}`"
        f"{' (quick)' if extra.get('quick') else ''}.",
        "",
        f"Machine: {facts.get('cpus_usable')} usable of {facts.get('cpu_count')} CPUs, "
        f"{facts.get('cpu_model')}, kernel {facts.get('kernel')}, "
        f"cpuidle {facts.get('cpuidle_driver')}, Python {facts.get('python')}, "
        f"trio {facts.get('trio')}, msgpack {facts.get('msgpack')}; "
        f"load average at start {facts.get('loadavg')}.",
        "",
        "Every ratio is against a ceiling measured in this same run: raw framed-msgpack",
        "round trips over a Unix socket between two Python processes, no daemon logic.",
        "",
        "| bench | figure | unit | ceiling | ratio | target | met | details |",
        "|---|---:|---|---:|---:|---|:-:|---|",
    ]
    for e in entries:
        met = "-" if e.met is None else ("yes" if e.met else "**no**")
        ratio = "-" if e.ratio is None else f"{e.ratio:.3f}"
        lines.append(
            f"| {e.name} | {fmt_num(e.figure)} | {e.unit} | {fmt_num(e.ceiling)} | {ratio} "
            f"| {e.target or '-'} | {met} | {_detail_text(e.detail)} |"
        )
    notes = extra.get("notes")
    if notes:
        lines += ["", "## Notes", ""]
        lines += [f"- {n}" for n in notes]
    errors = extra.get("errors")
    if errors:
        lines += ["", "## Benches that failed to run", ""]
        lines += [f"- `{k}`: {v}" for k, v in errors.items()]
    md_path.write_text("\n".join(lines) + "\n")
