"""``make demo``: iopfd, the reference VMM, and iopfctl, end to end, in a few seconds.

Starts ``iopfd`` on a private socket with the default topology (JSON logs to a file),
runs ``iopf-vmm`` against it so that you watch page faults being served, shows
the first trace records and ``iopfctl status``, then stops the daemon with SIGTERM
and checks that it exited 0 and removed its socket. Whatever happens (a failure,
Ctrl-C, SIGTERM), nothing it started is left running.

    python -m iopfd.demo [--duration SECONDS] [--nested] [-- extra iopf-vmm options]
    python -m iopfd.demo --c-vmm clients/c/iopf-vmm-c --preload build/c/libiopf-preload.so
        (make demo-c: the C reference VMM on the kernel uAPI, under LD_PRELOAD)
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from types import FrameType

from clients.launch import Launched, LaunchError, launch

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
        self.daemon: Launched | None = None
        self.children: list[subprocess.Popen[bytes]] = []

    def start_daemon(self) -> None:
        # Own session: a Ctrl-C reaches us, and we stop the daemon in order.
        self.daemon = launch(
            socket=self.socket,
            log=self.log_path,
            args=("--log-format", "json"),
            ready_timeout=START_TIMEOUT_S,
            new_session=True,
            preexec_fn=_die_with_parent,
        )
        print(f"iopfd pid {self.daemon.pid}, socket {self.socket}, logs {self.log_path}")

    def spawn(
        self, argv: Sequence[str], capture: bool = False, extra_env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        env = dict(os.environ, IOPFD_SOCKET=self.socket, **(extra_env or {}))
        sys.stdout.flush()
        # stderr joins stdout so progress and summary stay in order through a pipe
        proc = subprocess.Popen(
            list(argv),
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - the demo runs no threads
            stdout=subprocess.PIPE if capture else None,
            stderr=None if capture else subprocess.STDOUT,
        )
        self.children.append(proc)
        return proc

    def stop_daemon(self) -> int:
        assert self.daemon is not None
        return self.daemon.stop(STOP_TIMEOUT_S)

    def cleanup(self) -> None:
        for p in self.children:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.children:
            try:
                p.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if self.daemon is not None:
            with contextlib.suppress(LaunchError):
                self.daemon.stop(STOP_TIMEOUT_S)  # kills it if it will not stop


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

        trace = demo.spawn(
            [_tool("iopfctl"), "trace", "--topic", "fault", "--topic", "response", "--count", "16"],
            capture=True,
        )
        _wait_for_subscriber(demo.socket)
        vmm_argv = [
            _tool("iopf-vmm"),
            "--socket",
            demo.socket,
            "--duration",
            str(args.duration),
            "--pattern",
            args.pattern,
            "--progress",
            *(["--nested"] if args.nested else []),
            *args.vmm_args,
        ]
        vmm_env = None
        if args.c_vmm:  # the C reference VMM speaks the kernel uAPI through the preload
            vmm_argv = [os.path.abspath(args.c_vmm), *vmm_argv[1:]]
            vmm_env = {"LD_PRELOAD": os.path.abspath(args.preload)}
        _say(f"running the reference VMM for {args.duration:g} s: {' '.join(vmm_argv[1:])}")
        vmm = demo.spawn(vmm_argv, extra_env=vmm_env)
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
        if (
            subprocess.run(
                [_tool("iopfctl"), "--socket", demo.socket, "status"], check=False
            ).returncode
            != 0
        ):
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
    except (LaunchError, RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        failures.append(str(e))
    finally:
        demo.cleanup()
    if failures:
        print(
            f"\ndemo FAILED: {'; '.join(failures)} (daemon log: {demo.log_path})", file=sys.stderr
        )
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m iopfd.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--duration", type=float, default=4.0, help="VMM workload seconds")
    p.add_argument("--pattern", default="sequential", choices=("sequential", "random", "strided"))
    p.add_argument("--nested", action="store_true", help="nested (vtd_s1) translation")
    p.add_argument("--keep", action="store_true", help="keep the temp dir with the logs")
    p.add_argument("--c-vmm", metavar="PATH", help="run this C VMM (iopf-vmm-c) instead")
    p.add_argument(
        "--preload",
        metavar="LIB",
        default="build/c/libiopf-preload.so",
        help="LD_PRELOAD for --c-vmm (default: %(default)s)",
    )
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
