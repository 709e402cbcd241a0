"""make demo: runs the whole stack and leaves no process and no socket behind."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line mentions ``text`` (the demo's private temp dir)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd:
            found.append(int(pid))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_demo_runs_clean_and_leaves_no_process_and_no_socket() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "iopfd.demo", "--duration", "1", "--", "--pages", "64"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    m = re.search(r"iopfd pid (\d+), socket (\S+),", proc.stdout)
    assert m, proc.stdout
    pid, sock = int(m.group(1)), m.group(2)
    workdir = os.path.dirname(sock)
    assert "invariants     ok" in proc.stdout
    assert "exactly-once: groups" in proc.stdout and "holds" in proc.stdout
    assert "iopfd exited 0 and removed its socket" in proc.stdout
    assert not _alive(pid)
    assert not os.path.exists(sock) and not os.path.exists(workdir)
    assert _processes_mentioning(workdir) == []


def test_interrupted_demo_still_stops_everything_it_started() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "iopfd.demo", "--duration", "20"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        deadline = time.monotonic() + 30
        for line in proc.stdout:
            lines.append(line)
            if "[  0.5/20 s]" in line or "[  1.0/20 s]" in line:
                break  # the VMM is faulting away
            assert time.monotonic() < deadline, "".join(lines)
        m = re.search(r"iopfd pid (\d+), socket (\S+),", "".join(lines))
        assert m, "".join(lines)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1 and "interrupted" in rest
    pid, sock = int(m.group(1)), m.group(2)
    assert not _alive(pid) and not os.path.exists(sock)
    assert _processes_mentioning(os.path.dirname(sock)) == []
    assert "logs kept in" in rest  # a failed demo keeps the daemon log for a look
    shutil.rmtree(os.path.dirname(sock), ignore_errors=True)


def test_a_killed_demo_takes_its_daemon_and_vmm_with_it() -> None:
    """SIGKILL leaves the demo no chance to clean up; its children still go
    (PR_SET_PDEATHSIG), and the daemon, told by SIGTERM, removes its socket."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "iopfd.demo", "--duration", "20"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        deadline = time.monotonic() + 30
        for line in proc.stdout:
            lines.append(line)
            if "[  0.5/20 s]" in line or "[  1.0/20 s]" in line:
                break
            assert time.monotonic() < deadline, "".join(lines)
        m = re.search(r"iopfd pid (\d+), socket (\S+),", "".join(lines))
        assert m, "".join(lines)
        proc.kill()
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    pid, sock = int(m.group(1)), m.group(2)
    workdir = os.path.dirname(sock)
    deadline = time.monotonic() + 15
    while (_alive(pid) or _processes_mentioning(workdir)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)
    assert _processes_mentioning(workdir) == []
    assert not os.path.exists(sock)
    shutil.rmtree(workdir, ignore_errors=True)
