"""The measures of issue 11: what one tenant's attack costs the others, on the real daemon.

Each run starts ``iopfd`` with a ``NOTIFY_SOCKET`` of its own (so that every
``WATCHDOG=1`` is seen, not only ``READY=1``) and a socket other uids may open
(``socket_mode`` 0666 in a 0755 directory). The attackers run as other uids (65534
``nobody``, 65533, 65532), each a worker process of this module that drops to its
uid once loaded; the honest tenant is uid 65531; the admin
neighbour is this (root) process. Measured:

1. the neighbour's latency while one uid runs each stalling attack of the issue: an
   admin's ``status`` in a loop and an honest tenant's ``ioas_map`` + ``ioas_unmap`` of
   one page, p50/p99/max against 50 ms (the issue's bound on how long one request or
   disconnect may delay another connection);
   (a) big writes of ``ioas_unmap`` requests of empty ranges on an IOAS with as many
       pages mapped as the uid's budget allows;
   (b) the disconnect of a connection with tens of thousands of PASID attachments;
   (c) the ``unbind`` of a device with as many PASIDs attached;
   (d) a flood of cheap and log-producing requests over every connection the uid may
       open, with protocol violations that each cost a connection and log lines;
   (e) three uids holding every connection slot they may;
2. the gap between ``WATCHDOG=1`` pings during all of it, against ``WatchdogSec`` of
   ``systemd/iopfd.service``;
3. the daemon's RSS while one uid pushes every budget (mapped pages, objects, unread
   output, connections) against the bound those budgets document;
4. SIGTERM to exit while (a), (b) and (c) run, against 5 s;
5. chaos: three attacker uids at once next to an honest VMM doing DMA and fault round
   trips; its latencies against its unloaded ones (target: within 2x).

``python -m bench.attacks [--quick] [--only a,b,...]`` prints the entries; ``bench.run``
records them. The workers are bench/attack_workers.py.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import trio

from bench.attack_workers import IOVA_BASE, MAP_CHUNK_PAGES, describe
from bench.common import (
    REPO,
    Entry,
    percentile,
    proc_rss_kib,
    python_cmd,
)
from bench.wire import PAGE, Fn, Wire, generated_functions, topology_toml
from clients.launch import daemon_command
from iopfd.server.config import Limits

Log = Callable[[str], None]

#: The issue's bound: no request or disconnect delays another connection longer.
STALL_TARGET_MS = 50.0
#: The issue's bound on SIGTERM to exit under any load.
SIGTERM_TARGET_S = 5.0
#: Chaos: the honest VMM's latencies stay within this factor of its unloaded ones.
CHAOS_FACTOR = 2.0
UNIT = REPO / "systemd" / "iopfd.service"

ATTACKER_UIDS = (65534, 65533, 65532)
HONEST_UID = 65531
#: The bench daemon's watchdog: pings every 50 ms, so a stall shows in the gaps at
#: a resolution the unit's 15 s interval would hide; the gap is then projected.
WATCHDOG_USEC = 100_000
#: docs/operations.md, *Security model*: a uid's 1 M mapped pages cost roughly
#: 170 MiB in the daemon, its 64 K objects roughly 120 MiB.
DOC_BYTES_PER_PAGE = 170 * (1 << 20) / (1 << 20)
DOC_BYTES_PER_OBJECT = 120 * (1 << 20) / (1 << 16)
#: What one idle connection may hold at most besides its output: one read's buffer
#: (``RECEIVE_SIZE`` in iopfd/server/connection.py).
CONN_ALLOWANCE_BYTES = 256 * 1024
#: The memory attack stops adding output once the daemon holds this share of the
#: uid's budget (crossing it drops a connection).
OUTPUT_FILL = 0.9
MiB = 1 << 20


@dataclass(frozen=True)
class Sizes:
    pages: int  # mapped for attack (a): the uid's whole budget in a full run
    pasids: int  # PASIDs attached for (b) and (c)
    baseline_s: float
    attack_s: float  # length of the timed part of (a), (d), (e)
    chaos_s: float
    memory: Mapping[str, int]  # the limits of the memory daemon
    devices: int  # functions in the topology


FULL = Sizes(
    pages=1 << 20,
    pasids=65533,
    baseline_s=2.0,
    attack_s=4.0,
    chaos_s=10.0,
    memory={},
    devices=64,
)
QUICK = Sizes(
    pages=MAP_CHUNK_PAGES,
    pasids=512,
    baseline_s=0.4,
    attack_s=0.4,
    chaos_s=1.0,
    memory={
        "max_mapped_pages_per_uid": 2 * MAP_CHUNK_PAGES,
        "max_objects_per_uid": 2048,
        "max_connections_per_uid": 8,
        "max_outbuf_per_uid": 8 * MiB,
    },
    devices=64,
)


def unit_seconds(key: str, unit: Path = UNIT) -> float:
    """``WatchdogSec=30s``-style settings of the unit file, in seconds."""
    m = re.search(rf"^{key}=(\d+(?:\.\d+)?)(ms|s|min)?\s*$", unit.read_text(), re.M)
    if m is None:
        raise ValueError(f"{unit} has no {key}=")
    scale = {"ms": 1e-3, "s": 1.0, None: 1.0, "min": 60.0}[m.group(2)]
    return float(m.group(1)) * scale


# --- the daemon, with a notify socket kept open --------------------------------------------

NotifySocket = socket.socket


@dataclass
class AttackDaemon:
    proc: subprocess.Popen[bytes]
    socket: str
    dir: Path
    log: Path
    notify: NotifySocket
    pings: list[float] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_kib(self) -> dict[str, int]:
        return proc_rss_kib(self.pid)

    async def record_pings(self) -> None:
        """Every ``WATCHDOG=1`` datagram's arrival (CLOCK_MONOTONIC, as the workers')."""
        sock = trio.socket.from_stdlib_socket(self.notify.dup())
        with sock:
            while True:
                data = await sock.recv(4096)
                if b"WATCHDOG=1" in data.split(b"\n"):
                    self.pings.append(time.monotonic())

    def log_lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                out.append(json.loads(line))
        return out


@contextlib.contextmanager
def attack_daemon(
    functions: Sequence[Fn], limits: Mapping[str, int] | None = None
) -> Iterator[AttackDaemon]:
    """``iopfd`` on a socket every uid may open, with ``WATCHDOG_USEC`` set and our own
    ``NOTIFY_SOCKET`` (clients.launch closes its own once ``READY=1`` came)."""
    with tempfile.TemporaryDirectory(prefix="iopfd-attack-") as tmp:
        d = Path(tmp)
        os.chmod(d, 0o755)  # other uids must reach the socket; only root writes here
        (d / "topology.toml").write_text(topology_toml(functions))
        lines = ['log_level = "info"', 'topology_file = "topology.toml"', 'socket_mode = "0666"']
        lines += ["", "[limits]", *(f"{k} = {v}" for k, v in (limits or {}).items())]
        (d / "iopfd.toml").write_text("\n".join(lines) + "\n")
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        notify.bind(str(d / "notify.sock"))
        env = dict(os.environ)
        for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "WATCHDOG_PID"):
            env.pop(var, None)
        env.update(
            NOTIFY_SOCKET=str(d / "notify.sock"),
            WATCHDOG_USEC=str(WATCHDOG_USEC),
            PYTHONPATH=os.environ.get("PYTHONPATH", str(REPO)),
        )
        sock_path = str(d / "iopfd.sock")
        log_path = d / "iopfd.log"
        argv = [*daemon_command(), "--socket", sock_path, "--config", str(d / "iopfd.toml")]
        with log_path.open("ab") as log_file:
            proc = subprocess.Popen(
                [*argv, "--log-format", "json"],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO,
            )
        try:
            deadline = time.monotonic() + 120
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"iopfd exited {proc.returncode}: {log_path.read_text()}")
                if time.monotonic() > deadline:
                    raise TimeoutError("iopfd sent no READY=1")
                ready, _, _ = select.select([notify], [], [], 0.1)
                if ready and b"READY=1" in notify.recv(4096).split(b"\n"):
                    break
            yield AttackDaemon(proc, sock_path, d, log_path, notify)
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            notify.close()


# --- worker processes, run as other uids ----------------------------------------------------


class WorkerFailed(RuntimeError):
    pass


class Worker:
    """A worker process of this module under another uid; JSON lines out, words in."""

    def __init__(self, name: str, proc: trio.Process) -> None:
        self.name = name
        self.proc = proc
        self._buf = b""
        self.stderr = b""

    @classmethod
    async def start(
        cls, nursery: trio.Nursery, role: str, uid: int, args: Mapping[str, Any]
    ) -> Worker:
        env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONDONTWRITEBYTECODE="1")
        proc = await trio.lowlevel.open_process(
            python_cmd("-m", "bench.attack_workers", role, str(uid), json.dumps(dict(args))),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=REPO,
            env=env,
        )
        worker = cls(f"{role}@{uid}", proc)
        nursery.start_soon(worker._drain_stderr)
        return worker

    async def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
            while data := await self.proc.stderr.receive_some(65536):
                self.stderr = (self.stderr + data)[-8000:]

    async def message(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while b"\n" not in self._buf:
            data = await self.proc.stdout.receive_some(1 << 20)
            if not data:
                await self.proc.wait()
                raise WorkerFailed(
                    f"{self.name} exited {self.proc.returncode}: {self.stderr.decode()[-2000:]}"
                )
            self._buf += data
        line, self._buf = self._buf.split(b"\n", 1)
        msg: dict[str, Any] = json.loads(line)
        if "error" in msg:
            raise WorkerFailed(f"{self.name}: {msg['error']}")
        return msg

    async def expect(self, state: str) -> dict[str, Any]:
        msg = await self.message()
        if msg.get("state") != state:
            raise WorkerFailed(f"{self.name}: expected {state}, got {msg}")
        return msg

    async def tell(self, word: str) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.proc.stdin.send_all(word.encode() + b"\n")

    async def finish(self) -> dict[str, Any]:
        msg = await self.expect("done")
        await self.proc.wait()
        return msg

    async def exited(self) -> int:
        """Wait for the process to end (it closes its connections first)."""
        return await self.proc.wait()

    def kill(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()


# --- what the neighbours see ----------------------------------------------------------------


Sample = tuple[float, float]  # (start, CLOCK_MONOTONIC s; latency, us)


def summary(samples: Sequence[Sample]) -> dict[str, Any]:
    lat = sorted(dt for _, dt in samples)
    if not lat:
        return {"samples": 0}
    return {
        "p50_us": round(percentile(lat, 50), 1),
        "p99_us": round(percentile(lat, 99), 1),
        "max_us": round(lat[-1], 1),
        "samples": len(lat),
    }


def within(samples: Sequence[Sample], t0: float, t1: float) -> list[Sample]:
    return [s for s in samples if t0 <= s[0] < t1]


@dataclass
class Run:
    """One daemon, its neighbours, and the named windows of the run."""

    d: AttackDaemon
    nursery: trio.Nursery
    functions: list[Fn]
    sizes: Sizes
    log: Log
    admin_samples: list[Sample] = field(default_factory=list)
    connect_samples: list[Sample] = field(default_factory=list)
    windows: list[tuple[str, float, float]] = field(default_factory=list)
    settle_wire: Wire | None = None
    baseline_clients: int = 0

    @contextlib.contextmanager
    def window(self, name: str) -> Iterator[None]:
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.windows.append((name, t0, time.monotonic()))

    def span(self, key: str) -> tuple[float, float]:
        return span_of(self.windows, key)

    async def sample_status(self) -> None:
        """The admin neighbour: ``status`` every 2 ms, each call timed."""
        wire = await Wire.open(self.d.socket, "neighbour-admin")
        try:
            while True:
                t0 = time.monotonic()
                await wire.call("status")
                self.admin_samples.append((t0, (time.monotonic() - t0) * 1e6))
                await trio.sleep(0.002)
        finally:
            with contextlib.suppress(Exception):
                await wire.aclose()

    async def status(self) -> dict[str, Any]:
        if self.settle_wire is None:
            self.settle_wire = await Wire.open(self.d.socket, "bench-settle")
        return await self.settle_wire.call("status")

    async def settle(self, timeout: float = 180.0) -> float:
        """Wait until every attacker connection is gone (torn down); seconds waited."""
        t0 = time.monotonic()
        with trio.fail_after(timeout):
            while (await self.status())["clients"] > self.baseline_clients:
                await trio.sleep(0.01)
        return time.monotonic() - t0

    async def worker(self, role: str, uid: int, **args: Any) -> Worker:
        return await Worker.start(self.nursery, role, uid, {"socket": self.d.socket, **args})


async def _wait_all(fns: Sequence[Callable[[], Awaitable[Any]]]) -> list[Any]:
    out: list[Any] = [None] * len(fns)

    async def one(i: int) -> None:
        out[i] = await fns[i]()

    async with trio.open_nursery() as n:
        for i in range(len(fns)):
            n.start_soon(one, i)
    return out


# --- the attacks, as the orchestrator runs them ------------------------------------------


async def attack_a(run: Run) -> dict[str, Any]:
    with run.window("a.setup"):
        w = await run.worker(
            "unmap_flood", ATTACKER_UIDS[0], pages=run.sizes.pages, seconds=run.sizes.attack_s
        )
        armed = await w.expect("armed")
    with run.window("a.attack"):
        await w.tell("go")
        done = await w.expect("done")
    with run.window("a.teardown"):
        await w.exited()
        teardown_s = await run.settle()
    return {
        "pages_mapped": armed["mapped"],
        "max_map_ms": max(armed["map_ms"], default=0),
        "unmap_requests": done["requests"],
        "unmaps_per_s": round(done["requests"] / done["elapsed"]),
        "teardown_s": round(teardown_s, 3),
    }


async def _attached(run: Run, role: str, uid: int, rid: str) -> tuple[Worker, dict[str, Any], int]:
    rss0 = run.d.rss_kib()["VmRSS"]
    w = await run.worker(role, uid, rid=rid, pasids=run.sizes.pasids)
    armed = await w.expect("armed")
    return w, armed, (run.d.rss_kib()["VmRSS"] - rss0) * 1024


async def attack_b(run: Run) -> dict[str, Any]:
    with run.window("b.setup"):
        w, armed, grown = await _attached(run, "teardown", ATTACKER_UIDS[1], run.functions[2].rid)
    with run.window("b.attack"):  # the disconnect, and the teardown it starts
        await w.tell("go")
        await w.expect("done")
        await w.exited()
        teardown_s = await run.settle()
    return {
        "pasids": armed["attached"],
        "attach_s": armed["attach_s"],
        "teardown_s": round(teardown_s, 3),
        "rss_bytes_per_attachment": round(grown / max(1, armed["attached"])),
    }


async def attack_c(run: Run) -> dict[str, Any]:
    with run.window("c.setup"):
        w, armed, _ = await _attached(run, "unbind", ATTACKER_UIDS[2], run.functions[3].rid)
    with run.window("c.attack"):
        await w.tell("go")
        done = await w.expect("done")
    with run.window("c.teardown"):
        await w.exited()
        await run.settle()
    return {"pasids": armed["attached"], "unbind_ms": done["unbind_ms"]}


async def attack_d(run: Run) -> dict[str, Any]:
    before = (await run.status())["counters"]
    with run.window("d.setup"):
        w = await run.worker(
            "flood", ATTACKER_UIDS[0], seconds=run.sizes.attack_s, rid=run.functions[4].rid
        )
        armed = await w.expect("armed")
    with run.window("d.attack"):
        await w.tell("go")
        done = await w.expect("done")
    with run.window("d.teardown"):
        await w.exited()
        await run.settle()
    after = (await run.status())["counters"]
    return {
        "connections": armed["connections"],
        "requests": done["requests"],
        "requests_per_s": round(done["requests"] / done["elapsed"]),
        "protocol_violations": done["churned"],
        "bind_unbind_pairs": done["pairs"],
        "log_dropped": after["daemon_log_dropped"] - before["daemon_log_dropped"],
    }


async def _probe_connect(run: Run, until: float) -> None:
    """A fresh admin connection (connect, hello, status) every 50 ms."""
    while time.monotonic() < until:
        t0 = time.monotonic()
        wire = await Wire.open(run.d.socket, "probe-admin")
        await wire.call("status")
        await wire.aclose()
        run.connect_samples.append((t0, (time.monotonic() - t0) * 1e6))
        await trio.sleep(0.05)


async def attack_e(run: Run) -> dict[str, Any]:
    with run.window("e.setup"):
        workers = [await run.worker("slots", uid) for uid in ATTACKER_UIDS]
        armed = await _wait_all([functools.partial(w.expect, "armed") for w in workers])
    with run.window("e.attack"):  # every slot held; root connects meanwhile
        await _probe_connect(run, time.monotonic() + run.sizes.attack_s)
    with run.window("e.teardown"):  # 192 connections closed at once
        for w in workers:
            await w.tell("go")
        await _wait_all([w.finish for w in workers])
        await run.settle()
    t0, t1 = run.span("e")
    return {
        "held_per_uid": [a["held"] for a in armed],
        "refused_per_uid": [a["refused"] for a in armed],
        "admin_connects": summary(within(run.connect_samples, t0, t1)),
    }


ATTACKS: dict[str, tuple[str, Callable[[Run], Awaitable[dict[str, Any]]]]] = {
    "a_unmap_flood": ("a", attack_a),
    "b_teardown": ("b", attack_b),
    "c_unbind": ("c", attack_c),
    "d_flood": ("d", attack_d),
    "e_slots": ("e", attack_e),
}

DESCRIBE = {
    "a": "big writes of ioas_unmap of empty ranges, {pages_mapped:,} pages mapped",
    "b": "disconnect with {pasids:,} PASID attachments",
    "c": "unbind of a device with {pasids:,} PASIDs attached",
    "d": "{connections} connections flooding cheap requests, protocol violations, bind/unbind",
    "e": "3 uids holding their connection slots ({held_per_uid})",
}


def span_of(windows: Sequence[tuple[str, float, float]], key: str) -> tuple[float, float]:
    """From the start of the first window of ``key`` (``a.setup``...) to the last's end."""
    ws = [(a, b) for n, a, b in windows if n.split(".")[0] == key]
    return min(a for a, _ in ws), max(b for _, b in ws)


def neighbour_entry(
    name: str,
    key: str,
    windows: Sequence[tuple[str, float, float]],
    admin_samples: Sequence[Sample],
    honest: Sequence[Sample],
    stats: dict[str, Any],
) -> Entry:
    phases = {}
    worst = 0.0
    all_in: list[Sample] = []
    for wname, t0, t1 in windows:
        if wname.split(".")[0] != key:
            continue
        a = within(admin_samples, t0, t1)
        h = within(honest, t0, t1)
        all_in += a + h
        phase_max = max((dt for _, dt in a + h), default=0.0)
        phases[wname.split(".")[1]] = round(phase_max / 1000, 1)
        worst = max(worst, phase_max)
    t0, t1 = span_of(windows, key)
    admin = summary(within(admin_samples, t0, t1))
    tenant = summary(within(honest, t0, t1))
    both = summary(all_in)
    max_ms = round(worst / 1000, 1)
    p99_ms = round(both.get("p99_us", 0.0) / 1000, 2)
    return Entry(
        name=f"attack.{name}",
        figure=max_ms,
        unit="ms, neighbours' worst request",
        ceiling=STALL_TARGET_MS,
        ratio=round(max_ms / STALL_TARGET_MS, 3),
        target=f"max and p99 <= {STALL_TARGET_MS:g} ms",
        met=max_ms <= STALL_TARGET_MS and p99_ms <= STALL_TARGET_MS,
        detail={
            "p50_us": both.get("p50_us"),
            "p99_us": both.get("p99_us"),
            "p99_met": p99_ms <= STALL_TARGET_MS,
            "admin_status": admin,
            "tenant_map_unmap": tenant,
            "max_ms_by_phase": phases,
            "window_s": round(t1 - t0, 2),
            **stats,
            "note": DESCRIBE[key].format(**stats) + f"; worst by phase (ms) {phases}",
        },
    )


def watchdog_entry(pings: Sequence[float], spans: Mapping[str, tuple[float, float]]) -> Entry:
    interval = WATCHDOG_USEC / 2 / 1e6
    gaps = [(b - a, a) for a, b in itertools.pairwise(pings)]
    worst, at = max(gaps, default=(0.0, 0.0))
    where = next((n for n, (t0, t1) in spans.items() if t0 <= at + worst and at <= t1), "-")
    watchdog_s = unit_seconds("WatchdogSec")
    # Under the unit the pings come every WatchdogSec/2; a stall adds to that the same.
    projected = watchdog_s / 2 + max(0.0, worst - interval)
    return Entry(
        name="attack.watchdog_gap",
        figure=round(worst * 1000, 1),
        unit=f"ms, longest gap between WATCHDOG=1 (pinged every {interval * 1000:g} ms)",
        ceiling=round(watchdog_s * 1000),
        ratio=round(projected / watchdog_s, 3),
        target="projected gap < WatchdogSec",
        met=projected < watchdog_s,
        detail={
            "pings": len(pings),
            "worst_during": where,
            "stall_over_interval_ms": round(max(0.0, worst - interval) * 1000, 1),
            "projected_gap_s": round(projected, 2),
            "watchdog_sec": watchdog_s,
            "p99_us": round(percentile(sorted(g for g, _ in gaps), 99) * 1e6, 1) if gaps else None,
            "note": f"worst gap during {where}; with WatchdogSec={watchdog_s:g}s the pings "
            f"come every {watchdog_s / 2:g} s, so the worst gap would be {projected:.2f} s",
        },
    )


async def _neighbours_run(
    sizes: Sizes, log: Log, only: set[str]
) -> tuple[list[Entry], dict[str, Any]]:
    functions = generated_functions(sizes.devices)
    entries: list[Entry] = []
    with attack_daemon(functions) as d:
        async with trio.open_nursery() as nursery:
            run = Run(d, nursery, functions, sizes, log)
            nursery.start_soon(d.record_pings)
            honest = await run.worker("honest", HONEST_UID, rid=functions[1].rid)
            await honest.expect("armed")
            nursery.start_soon(run.sample_status)
            await run.status()
            while (await run.status())["clients"] < 3:
                await trio.sleep(0.01)
            run.baseline_clients = 3  # the sampler, the settle wire, the honest tenant
            with run.window("baseline.idle"):
                await trio.sleep(sizes.baseline_s)
            stats: dict[str, dict[str, Any]] = {}
            for name, (key, fn) in ATTACKS.items():
                if key in only:
                    log(f"  attack ({key}) {name}")
                    stats[name] = await fn(run)
            await honest.tell("stop")
            result = await honest.finish()
            tenant = [(t, dt) for t, dt in result["samples"]]
            nursery.cancel_scope.cancel()
    for name, (key, _) in ATTACKS.items():
        if name in stats:
            entries.append(
                neighbour_entry(name, key, run.windows, run.admin_samples, tenant, stats[name])
            )
    base = summary(within(run.admin_samples, *run.span("baseline")))
    spans = {n.split(".")[0]: run.span(n.split(".")[0]) for n, _, _ in run.windows}
    entries.append(watchdog_entry(d.pings, spans))
    return entries, {
        "baseline_admin_status": base,
        "baseline_tenant": summary(within(tenant, *run.span("baseline"))),
    }


# --- SIGTERM under load -------------------------------------------------------------------


#: Groups left unanswered by a stuck tenant when SIGTERM comes: each must be answered.
SIGTERM_PENDING_GROUPS = 64


def _log_time(line: Mapping[str, Any]) -> float:
    """A log line's ``timestamp`` (ISO 8601, UTC) as ``time.time()`` seconds."""
    return datetime.fromisoformat(str(line["timestamp"])).timestamp()


async def _sigterm_run(sizes: Sizes, log: Log) -> Entry:
    functions = generated_functions(sizes.devices)
    with attack_daemon(functions) as d:
        async with trio.open_nursery() as nursery:
            run = Run(d, nursery, functions, sizes, log)
            stuck = await run.worker("stuck", HONEST_UID, rid=functions[6].rid)
            await stuck.expect("armed")
            admin = await Wire.open(d.socket, "bench-admin")
            for g in range(SIGTERM_PENDING_GROUPS):
                await admin.call(
                    "inject",
                    rid=functions[6].rid,
                    addr=IOVA_BASE + g * PAGE,
                    perm=1,
                    grpid=g,
                    last=True,
                )
            flood = await run.worker("unmap_flood", ATTACKER_UIDS[0], pages=sizes.pages, seconds=60)
            hold = await run.worker(
                "teardown", ATTACKER_UIDS[1], rid=functions[2].rid, pasids=sizes.pasids
            )
            unbind = await run.worker(
                "unbind", ATTACKER_UIDS[2], rid=functions[3].rid, pasids=sizes.pasids
            )
            await _wait_all([functools.partial(w.expect, "armed") for w in (flood, hold, unbind)])
            await flood.tell("go")
            await unbind.tell("go")
            await trio.sleep(0.3)  # the flood in full swing, the unbind under way
            t0 = time.monotonic()
            wall0 = time.time()
            d.proc.send_signal(signal.SIGTERM)
            exited = await trio.to_thread.run_sync(_wait_exit, d.proc, 120.0)
            elapsed = time.monotonic() - t0
            for w in (flood, hold, unbind, stuck):
                w.kill()
            nursery.cancel_scope.cancel()
        lines = d.log_lines()
    by_event = {line.get("event"): line for line in lines}
    counters = by_event.get("stopped", {}).get("counters", {})
    answered = counters.get("responses", 0) + counters.get("auto_responses", 0)
    answered += counters.get("throttled", 0)
    breakdown = {}
    if "shutting down" in by_event and "stopped" in by_event:
        seen, stopped = _log_time(by_event["shutting down"]), _log_time(by_event["stopped"])
        breakdown = {
            "signal_seen_after_s": round(seen - wall0, 3),
            "shutdown_s": round(stopped - seen, 3),
        }
    return Entry(
        name="attack.sigterm_under_load",
        figure=round(elapsed, 3),
        unit="s from SIGTERM to exit",
        ceiling=SIGTERM_TARGET_S,
        ratio=round(elapsed / SIGTERM_TARGET_S, 3),
        target=f"< {SIGTERM_TARGET_S:g} s, every group answered",
        met=exited
        and elapsed < SIGTERM_TARGET_S
        and d.proc.returncode == 0
        and counters.get("groups") == answered,
        detail={
            "exit_status": d.proc.returncode,
            "groups": counters.get("groups"),
            "groups_answered": answered,
            **breakdown,
            "timeout_stop_sec": unit_seconds("TimeoutStopSec"),
            "note": f"SIGTERM while (a) floods on {sizes.pages:,} pages, (b) holds "
            f"{sizes.pasids:,} PASIDs, (c) unbinds as many, a tenant leaves "
            f"{SIGTERM_PENDING_GROUPS} groups unanswered; exit {d.proc.returncode}, groups "
            f"{counters.get('groups')} answered {answered}; {breakdown}",
        },
    )


def _wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    try:
        proc.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return False


# --- RSS under one uid's memory attack ------------------------------------------------------


async def _memory_run(sizes: Sizes, log: Log) -> Entry:
    from iopfd.server.config import Limits

    limits = Limits.model_validate(dict(sizes.memory))
    functions = generated_functions(sizes.devices)
    with attack_daemon(functions, sizes.memory) as d:
        async with trio.open_nursery() as nursery:
            run = Run(d, nursery, functions, sizes, log)
            admin = await Wire.open(d.socket, "bench-admin")
            await trio.sleep(0.2)
            idle = d.rss_kib()["VmRSS"]
            w = await run.worker(
                "memory",
                ATTACKER_UIDS[0],
                rid=functions[5].rid,
                pages=limits.max_mapped_pages_per_uid,
                objects=limits.max_objects_per_uid,
                connections=limits.max_connections_per_uid,
                outbuf=limits.max_outbuf,
                outbuf_uid=limits.max_outbuf_per_uid,
            )
            rounds = 0
            while True:
                msg = await w.message()
                if msg.get("state") == "armed":
                    break
                rounds += 1
                await trio.sleep(0.05)  # the daemon answers into its buffers
                held = (await admin.call("status"))["counters"]["budget_max_outbytes_uid"]
                full = held >= OUTPUT_FILL * limits.max_outbuf_per_uid or rounds >= 400
                await w.tell("enough" if full else "more")
            armed = msg
            samples = []
            for _ in range(10):
                samples.append(d.rss_kib()["VmRSS"])
                await trio.sleep(0.05)
            counters = (await admin.call("status"))["counters"]
            rss = d.rss_kib()
            await w.tell("go")
            await w.finish()
            await admin.aclose()
            nursery.cancel_scope.cancel()
    conns = limits.max_connections_per_uid
    bound = (
        limits.max_mapped_pages_per_uid * DOC_BYTES_PER_PAGE
        + limits.max_objects_per_uid * DOC_BYTES_PER_OBJECT
        + limits.max_outbuf_per_uid
        + conns * CONN_ALLOWANCE_BYTES
    )
    growth_mib = (rss["VmHWM"] - idle) / 1024
    bound_mib = bound / MiB
    return Entry(
        name="attack.memory_per_uid",
        figure=round(growth_mib, 1),
        unit="MiB RSS above idle (peak)",
        ceiling=round(bound_mib, 1),
        ratio=round(growth_mib / bound_mib, 3),
        target="<= the uid's documented budget",
        met=growth_mib <= bound_mib,
        detail={
            "idle_kib": idle,
            "peak_kib": rss["VmHWM"],
            "held_rss_kib": samples,
            "pages_mapped": armed["pages"],
            "objects": armed["objects"],
            "connections": armed["connections"],
            "unread_requests": armed["unread_requests"],
            "output_rounds": rounds,
            "outbuf_overflows": counters.get("daemon_outbuf_overflows"),
            "budget_max_outbytes_uid": counters.get("budget_max_outbytes_uid"),
            "refused": {k: v for k, v in counters.items() if "refused" in k and v},
            "bound": f"{limits.max_mapped_pages_per_uid:,} pages x {DOC_BYTES_PER_PAGE:.0f} B + "
            f"{limits.max_objects_per_uid:,} objects x {DOC_BYTES_PER_OBJECT:.0f} B + "
            f"max_outbuf_per_uid {limits.max_outbuf_per_uid / MiB:g} MiB + {conns} connections "
            f"x {CONN_ALLOWANCE_BYTES // 1024} KiB",
            "note": f"one uid: {armed['pages']:,} pages, {armed['objects']:,} objects, "
            f"{armed['connections']} connections not reading",
        },
    )


def attachment_entry(stats: Mapping[str, Any]) -> Entry:
    per = stats["rss_bytes_per_attachment"]
    n = stats["pasids"]
    return Entry(
        name="attack.memory_pasid_attachments",
        figure=per,
        unit="B RSS per PASID attachment",
        target="charged to a budget",
        met=True,
        detail={
            "pasids": n,
            "note": f"from (b): {n:,} attachments of one device grew RSS {per * n / MiB:.0f} MiB; "
            f"max_attachments_per_uid ({PER_UID_ATTACHMENTS:,}) bounds one uid at about "
            f"{per * PER_UID_ATTACHMENTS / MiB:.0f} MiB (a device alone takes 2^20 - 1 PASIDs)",
        },
    )


#: The default ``[limits] max_attachments_per_uid``.
PER_UID_ATTACHMENTS: int = Limits.model_fields["max_attachments_per_uid"].default


# --- chaos ------------------------------------------------------------------------------------


async def _chaos_run(sizes: Sizes, log: Log) -> list[Entry]:
    functions = generated_functions(sizes.devices)
    with attack_daemon(functions) as d:
        async with trio.open_nursery() as nursery:
            run = Run(d, nursery, functions, sizes, log)
            vmm = await run.worker("vmm", HONEST_UID, rid=functions[1].rid)
            await vmm.expect("armed")
            await trio.sleep(0.3)
            with run.window("unloaded"):
                await trio.sleep(max(1.0, sizes.chaos_s / 2))
            attackers = [
                await run.worker(
                    "unmap_flood", ATTACKER_UIDS[0], pages=sizes.pages, seconds=sizes.chaos_s
                ),
                await run.worker(
                    "flood", ATTACKER_UIDS[1], seconds=sizes.chaos_s, rid=functions[4].rid
                ),
                await run.worker(
                    "churn_pasids",
                    ATTACKER_UIDS[2],
                    rid=functions[3].rid,
                    pasids=max(64, sizes.pasids // 8),  # several rounds within chaos_s
                    seconds=sizes.chaos_s,
                ),
            ]
            with run.window("setup"):
                await _wait_all([functools.partial(w.expect, "armed") for w in attackers])
            with run.window("chaos"):
                for w in attackers:
                    await w.tell("go")
                done = await _wait_all([w.finish for w in attackers])
            await vmm.tell("stop")
            result = await vmm.finish()
            nursery.cancel_scope.cancel()
    entries = []
    for kind in ("dma", "fault"):
        samples = [(t, dt) for k, t, dt in result["samples"] if k == kind]
        calm = summary(within(samples, *run.span("unloaded")))
        busy = summary(within(samples, *run.span("chaos")))
        r50 = busy["p50_us"] / calm["p50_us"]
        r99 = busy["p99_us"] / calm["p99_us"]
        entries.append(
            Entry(
                name=f"attack.chaos_{kind}_latency",
                figure=busy["p99_us"],
                unit="us p99 of the honest VMM under chaos",
                ceiling=round(CHAOS_FACTOR * calm["p99_us"], 1),
                ratio=round(r99, 3),
                target=f"p50 and p99 <= {CHAOS_FACTOR:g} x unloaded",
                met=r50 <= CHAOS_FACTOR and r99 <= CHAOS_FACTOR,
                detail={
                    "p50_us": busy["p50_us"],
                    "p99_us": busy["p99_us"],
                    "max_us": busy["max_us"],
                    "unloaded": calm,
                    "chaos": busy,
                    "p50_ratio": round(r50, 2),
                    "attackers": [{k: v for k, v in x.items() if k != "state"} for x in done],
                    "note": f"unloaded p50/p99 {calm['p50_us']}/{calm['p99_us']} us, under chaos "
                    f"{busy['p50_us']}/{busy['p99_us']} us (x{r50:.1f}/x{r99:.1f}); 3 uids: "
                    "(a) unmap flood, (d) flood, (b)+(c) PASID teardowns and unbinds",
                },
            )
        )
    return entries


# --- entry point ----------------------------------------------------------------------------


#: A part that takes longer failed (a full run takes about a minute each).
PART_TIMEOUT_S = 300

#: What ``only`` may name: the attacks of the neighbours' run, and the other runs.
PARTS = ("a", "b", "c", "d", "e", "sigterm", "memory", "chaos")


class AttackPartialError(RuntimeError):
    """Some parts failed; ``entries`` and ``notes`` hold what the others measured."""

    def __init__(self, entries: list[Entry], notes: list[str], errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.entries = entries
        self.notes = notes


async def _measure(
    quick: bool, log: Log, only: Sequence[str] = PARTS
) -> tuple[list[Entry], list[str]]:
    sizes = QUICK if quick else FULL
    notes: list[str] = []
    entries: list[Entry] = []
    errors: list[str] = []

    async def part(name: str, fn: Callable[[], Awaitable[list[Entry]]]) -> None:
        log(f"attacks: {name}")
        try:
            # A daemon that stops answering fails its part, never hangs the bench.
            with trio.fail_after(PART_TIMEOUT_S):
                entries.extend(await fn())
        except Exception as exc:
            errors.append(f"{name}: {describe(exc)}")

    async def neighbours() -> list[Entry]:
        out, base = await _neighbours_run(sizes, log, set(only))
        b = next((e for e in out if e.name == "attack.b_teardown"), None)
        if b is not None:
            out.append(attachment_entry(b.detail))
        notes.append(
            f"attacks: unloaded neighbours: admin status {base['baseline_admin_status']}, "
            f"tenant map/unmap {base['baseline_tenant']}"
        )
        return out

    if set(only) & set("abcde"):
        await part("neighbours' latency and watchdog", neighbours)
    if "sigterm" in only:
        await part("SIGTERM under load", lambda: _one(_sigterm_run(sizes, log)))
    if "memory" in only:
        await part("one uid's memory", lambda: _one(_memory_run(sizes, log)))
    if "chaos" in only:
        await part("chaos", lambda: _chaos_run(sizes, log))
    if errors:
        raise AttackPartialError(entries, notes, errors)
    return entries, notes


async def _one(entry: Awaitable[Entry]) -> list[Entry]:
    return [await entry]


def measure(
    quick: bool, log: Log = print, only: Sequence[str] = PARTS
) -> tuple[list[Entry], list[str]]:
    """The entries of issue 11's measures; needs root (the attackers are other uids)."""
    if os.geteuid() != 0:
        return [], ["attacks: skipped, needs root to run the attackers as other uids"]
    return trio.run(_measure, quick, log, only)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    only: Sequence[str] = PARTS
    if "--only" in args:
        only = tuple(args[args.index("--only") + 1].split(","))
    entries, notes = measure("--quick" in args, lambda m: print(m, file=sys.stderr), only)
    for e in entries:
        print(json.dumps(e.as_dict(), default=str))
    for n in notes:
        print(n, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
