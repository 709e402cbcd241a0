"""``make demo``: iopfd, the reference VMM, and iopfctl, end to end, in a few seconds.

Starts ``iopfd`` on a private socket with the default topology (JSON logs to a file),
runs ``iopf-vmm`` against it so that you watch page faults being served, shows
the first trace records and ``iopfctl status``, then stops the daemon with SIGTERM
and checks that it exited 0 and removed its socket. Whatever happens (a failure,
Ctrl-C, SIGTERM), nothing it started is left running.

    python -m iopfd.demo [--duration SECONDS] [--nested] [-- extra iopf-vmm options]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from types import FrameType

BIN = os.path.dirname(os.path.abspath(sys.executable))
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _tool(name: str) -> str:
    """The console script installed next to this interpreter (the project's venv)."""
    path = os.path.join(BIN, name)
    return path if os.path.exists(path) else shutil.which(name) or name


def _say(msg: str) -> None:
    print(f"\n== {msg}", flush=True)


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the demo dies, however it dies (even a
    SIGKILL, which leaves it no chance to clean up): Linux PR_SET_PDEATHSIG."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: cleanup() still covers normal exits
        pass


class Demo:
    """The processes of one demo run; :meth:`cleanup` ends every one still alive."""

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.socket = os.path.join(workdir, "iopfd.sock")
        self.log_path = os.path.join(workdir, "iopfd.log")
        self.daemon: subprocess.Popen[bytes] | None = None
        self.children: list[subprocess.Popen[bytes]] = []

    def start_daemon(self) -> None:
        with open(self.log_path, "wb") as log:
            # own session: a Ctrl-C reaches us, and we stop the daemon in order
            self.daemon = subprocess.Popen(
                [_tool("iopfd"), "--socket", self.socket, "--log-format", "json"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - the demo runs no threads
            )
        print(f"iopfd pid {self.daemon.pid}, socket {self.socket}, logs {self.log_path}")
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.daemon.poll() is not None:
                raise RuntimeError(f"iopfd exited with {self.daemon.returncode} at startup")
            if _accepts(self.socket):
                return
            time.sleep(0.02)
        raise RuntimeError("iopfd did not start listening in time")

    def spawn(self, argv: Sequence[str], capture: bool = False) -> subprocess.Popen[bytes]:
        env = dict(os.environ, IOPFD_SOCKET=self.socket)
        sys.stdout.flush()
        # stderr joins stdout so progress and summary stay in order through a pipe
        proc = subprocess.Popen(
            list(argv), env=env, start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - the demo runs no threads
            stdout=subprocess.PIPE if capture else None,
            stderr=None if capture else subprocess.STDOUT,
        )
        self.children.append(proc)
        return proc

    def stop_daemon(self) -> int:
        assert self.daemon is not None
        self.daemon.send_signal(signal.SIGTERM)
        return self.daemon.wait(STOP_TIMEOUT_S)

    def cleanup(self) -> None:
        procs = [*self.children, *([self.daemon] if self.daemon else [])]
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _accepts(path: str) -> bool:
    if not os.path.exists(path):
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(path)
        except OSError:
            return False
    return True


def _wait_for_subscriber(path: str) -> None:
    """Let the trace client connect and subscribe before the VMM starts faulting."""
    from clients.sync import SyncClient

    deadline = time.monotonic() + 5.0
    with SyncClient(path, client_name="iopfd-demo") as c:
        while time.monotonic() < deadline and c.status().clients < 2:
            time.sleep(0.02)
    time.sleep(0.1)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace, workdir: str) -> int:
    demo = Demo(workdir)
    failures: list[str] = []
    try:
        _say("starting iopfd on the default topology")
        demo.start_daemon()
        sys.stdout.flush()
        subprocess.run([_tool("iopfctl"), "--socket", demo.socket, "devices"], check=False)

        trace = demo.spawn([_tool("iopfctl"), "trace", "--topic", "fault", "--topic",
                            "response", "--count", "16"], capture=True)
        _wait_for_subscriber(demo.socket)
        vmm_argv = [_tool("iopf-vmm"), "--socket", demo.socket, "--duration",
                    str(args.duration), "--pattern", args.pattern, "--progress",
                    *(["--nested"] if args.nested else []), *args.vmm_args]
        _say(f"running the reference VMM for {args.duration:g} s: {' '.join(vmm_argv[1:])}")
        vmm = demo.spawn(vmm_argv)
        vmm_rc = vmm.wait()
        if vmm_rc != 0:
            failures.append(f"iopf-vmm exited {vmm_rc}")

        try:
            out, _ = trace.communicate(timeout=5)
            _say("the first page faults and responses, as `iopfctl trace` saw them live")
            print(out.decode(errors="replace").rstrip())
        except subprocess.TimeoutExpired:
            failures.append("iopfctl trace saw fewer than 16 records")

        _say("iopfctl status")
        sys.stdout.flush()
        if subprocess.run([_tool("iopfctl"), "--socket", demo.socket, "status"],
                          check=False).returncode != 0:
            failures.append("iopfctl status failed")

        _say("stopping iopfd with SIGTERM")
        rc = demo.stop_daemon()
        if rc != 0:
            failures.append(f"iopfd exited {rc}")
        if os.path.exists(demo.socket):
            failures.append("iopfd left its socket behind")
        if not failures:
            print("iopfd exited 0 and removed its socket; nothing left running")
    except KeyboardInterrupt:
        failures.append("interrupted")
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        failures.append(str(e))
    finally:
        demo.cleanup()
    if failures:
        print(f"\ndemo FAILED: {'; '.join(failures)} (daemon log: {demo.log_path})",
              file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m iopfd.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=4.0, help="VMM workload seconds")
    p.add_argument("--pattern", default="sequential",
                   choices=("sequential", "random", "strided"))
    p.add_argument("--nested", action="store_true", help="nested (vtd_s1) translation")
    p.add_argument("--keep", action="store_true", help="keep the temp dir with the logs")
    p.add_argument("vmm_args", nargs="*", help="extra iopf-vmm options, after --")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    workdir = tempfile.mkdtemp(prefix="iopfd-demo-")
    rc = 1
    try:
        rc = run(args, workdir)
    finally:
        if args.keep or rc != 0:
            print(f"logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
