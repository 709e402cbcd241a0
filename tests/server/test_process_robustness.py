"""The process itself: every catchable signal has a defined meaning, a shutdown answers
every group without tearing the machine down attachment by attachment, and the log sink
can neither block nor crash the loop."""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from pathlib import Path

import trio
import trio.testing
from iopfd_flows import ACCEL0
from iopfd_harness import finish, start_daemon
from iopfd_inprocess import NOBODY, ROOT, connect, running

from iopfd.server.logconfig import QueuedWriter

#: PASIDs attached, and groups left pending on some of them, for the shutdown tests.
SHUTDOWN_PASIDS = 300
SHUTDOWN_GROUPS = 24


def _wait_for_event(d: object, event: str, timeout: float = 5.0) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in d.log() if line.get("event") == event]  # type: ignore[attr-defined]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.02)


def test_sighup_usr1_usr2_and_alrm_are_logged_and_the_daemon_keeps_serving(
    tmp_path: Path,
) -> None:
    d = start_daemon(tmp_path)
    try:
        pid = d.launched.process.pid
        for sig in (signal.SIGHUP, signal.SIGUSR2, signal.SIGALRM):
            os.kill(pid, sig)
        os.kill(pid, signal.SIGUSR1)
        assert _wait_for_event(d, "status")[0]["counters"]
        ignored = _wait_for_event(d, "signal ignored")
        deadline = time.monotonic() + 5
        while len(ignored) < 3 and time.monotonic() < deadline:
            ignored = _wait_for_event(d, "signal ignored")
        assert sorted(str(line["signal"]) for line in ignored) == ["SIGALRM", "SIGHUP", "SIGUSR2"]
        assert d.alive() and d.status()["counters"]["daemon_log_dropped"] == 0
    finally:
        finish(d)


def test_sigquit_shuts_down_cleanly_and_removes_the_socket(tmp_path: Path) -> None:
    d = start_daemon(tmp_path)
    assert d.stop(signal.SIGQUIT) == 0
    assert not os.path.exists(d.socket)
    assert [line["signal"] for line in d.log() if line.get("event") == "shutting down"] == [
        "SIGQUIT"
    ]


async def test_shutdown_answers_every_pending_group_and_leaves_the_attachments_to_the_exit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Each detach is a drain and invalidations through the emulated queue: a tenant
    # with 65,533 PASIDs held SIGTERM 37 s. At exit only the answers are owed.
    async with running() as daemon:
        tenant = await connect(daemon, NOBODY)
        admin = await connect(daemon, ROOT)
        dev = (await tenant.call("bind", rid=ACCEL0))["dev_id"]
        ioas = (await tenant.call("ioas_alloc"))["ioas_id"]
        fq = (await tenant.call("fault_alloc"))["fault_id"]
        hwpt = (
            await tenant.call("hwpt_alloc", dev_id=dev, pt_id=ioas, flags=["pasid"], fault_id=fq)
        )["hwpt_id"]
        frames = [
            tenant.frame("attach", dev_id=dev, pt_id=hwpt, pasid=p)
            for p in range(1, SHUTDOWN_PASIDS + 1)
        ]
        await tenant.send(*(f for _, f in frames))
        for rid, _ in frames:
            assert (await tenant.reply(rid)).ok
        for p in range(1, SHUTDOWN_GROUPS + 1):
            await admin.call(
                "inject", rid=ACCEL0, pasid=p, addr=0x1000 * p, perm=1, grpid=p, last=True
            )
        for _ in range(SHUTDOWN_GROUPS):
            await tenant.event("fault")
        core = daemon.core
        detaches = core.counters["detaches"]
        daemon.shutdown("shutdown")
        counters = core.status_counters()
        assert counters["groups"] == SHUTDOWN_GROUPS
        assert counters["auto_responses"] == SHUTDOWN_GROUPS
        assert core.pending(0) == []
        assert not daemon.connections
        assert core.counters["detaches"] == detaches


def test_sigterm_with_many_attachments_and_pending_groups_exits_with_every_group_answered(
    tmp_path: Path,
) -> None:
    from iopfd_rawclient import RawClient

    d = start_daemon(tmp_path)
    with RawClient(d.socket, client="tenant") as tenant, RawClient(d.socket) as admin:
        dev = tenant.call("bind", rid=ACCEL0)["dev_id"]
        ioas = tenant.call("ioas_alloc")["ioas_id"]
        fq = tenant.call("fault_alloc")["fault_id"]
        hwpt = tenant.call("hwpt_alloc", dev_id=dev, pt_id=ioas, flags=["pasid"], fault_id=fq)
        rids = [
            tenant.start("attach", dev_id=dev, pt_id=hwpt["hwpt_id"], pasid=p)
            for p in range(1, SHUTDOWN_PASIDS + 1)
        ]
        for rid in rids:
            assert tenant.wait_reply(rid)["ok"]
        for p in range(1, SHUTDOWN_GROUPS + 1):
            admin.call("inject", rid=ACCEL0, pasid=p, addr=0x1000 * p, perm=1, grpid=p, last=True)
        for _ in range(SHUTDOWN_GROUPS):
            tenant.wait_event("fault")
        assert d.stop(signal.SIGTERM) == 0
    stopped = [line for line in d.log() if line.get("event") == "stopped"]
    counters = stopped[-1]["counters"]
    assert isinstance(counters, dict)
    assert counters["groups"] == SHUTDOWN_GROUPS
    assert counters["auto_responses"] == SHUTDOWN_GROUPS
    assert not os.path.exists(d.socket)


class _Stalled(io.StringIO):
    """A stderr that blocks every write until released (a stalled journal)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def write(self, s: str) -> int:
        self.release.wait()
        return super().write(s)


def test_a_stalled_log_sink_never_blocks_the_writer_and_drops_are_counted() -> None:
    stalled = _Stalled()
    w = QueuedWriter(stalled, maxsize=8, rate=1e9, burst=1e9)
    for i in range(100):
        w.write(f"line {i}\n")  # returns at once though nothing can be written
    assert w.dropped >= 100 - 8 - 1
    stalled.release.set()
    w.close()
    assert stalled.getvalue().startswith("line 0\n")


def test_a_closed_log_sink_is_counted_not_raised() -> None:
    closed = io.StringIO()
    closed.close()
    w = QueuedWriter(closed)
    w.write("one\n")
    w.close()
    assert w.dropped == 1


def test_log_lines_beyond_the_rate_are_dropped_and_counted() -> None:
    sink = io.StringIO()
    w = QueuedWriter(sink, rate=0.0, burst=10)
    for _ in range(50):
        w.write("x\n")
    w.close()
    assert (sink.getvalue().count("\n"), w.dropped) == (10, 40)


def test_the_daemon_raises_its_fd_limit_to_what_max_connections_needs() -> None:
    import resource

    from iopfd.server.main import raise_fd_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        now, wanted = raise_fd_limit(1024)
        assert wanted > 1024
        assert now == (wanted if hard == resource.RLIM_INFINITY else min(wanted, hard))
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == now
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
