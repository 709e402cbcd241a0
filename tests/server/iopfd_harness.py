"""Run the real ``iopfd`` as a subprocess on a temporary socket, for the tests."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iopfd_rawclient import RawClient

START_TIMEOUT_S = 15.0


def iopfd_command() -> list[str]:
    script = Path(sys.executable).parent / "iopfd"
    if script.exists():
        return [str(script)]
    found = shutil.which("iopfd")
    return [found] if found else [sys.executable, "-m", "iopfd.server.main"]


@dataclass
class DaemonProc:
    proc: subprocess.Popen[bytes]
    socket: str
    log_path: Path

    def client(self, **kw: Any) -> RawClient:
        return RawClient(self.socket, **kw)

    def status(self) -> dict[str, Any]:
        with self.client(client="fixture-admin") as c:
            return c.call("status")

    def counters_and_pending(self) -> tuple[dict[str, int], list[dict[str, Any]]]:
        with self.client(client="fixture-admin") as c:
            return c.call("status")["counters"], c.call("pending")["pending"]

    def identity(self) -> tuple[int, int]:
        """(groups, responses + auto_responses + throttled + pending)."""
        counters, pending = self.counters_and_pending()
        return counters["groups"], (counters["responses"] + counters["auto_responses"]
                                    + counters["throttled"] + len(pending))

    def assert_identity_at_rest(self, timeout: float = 5.0) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        while True:
            counters, pending = self.counters_and_pending()
            lhs = counters["groups"]
            rhs = (counters["responses"] + counters["auto_responses"] + counters["throttled"]
                   + len(pending))
            if lhs == rhs:
                return counters
            if time.monotonic() > deadline:
                raise AssertionError(f"exactly-once identity broken: groups={lhs} != {rhs} "
                                     f"counters={counters} pending={pending}")
            time.sleep(0.02)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log_path.read_text().splitlines():
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                lines.append({"raw": line})
        return lines

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


def wait_for_socket(proc: subprocess.Popen[bytes], path: str, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"iopfd exited with {proc.returncode}:\n{log_path.read_text()}")
        if os.path.exists(path):
            try:
                RawClient(path, hello=False).close()
                return
            except (ConnectionRefusedError, FileNotFoundError):
                pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"iopfd did not listen within {START_TIMEOUT_S}s:\n"
                               f"{log_path.read_text()}")
        time.sleep(0.01)


def start_daemon(tmp: Path, config: str = "", *, socket_path: str | None = None,
                 args: tuple[str, ...] = ()) -> DaemonProc:
    sock = socket_path or str(tmp / "run" / "iopfd.sock")
    cfg = tmp / "iopfd.toml"
    cfg.write_text(config)
    log_path = tmp / "iopfd.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*iopfd_command(), "--socket", sock, "--config", str(cfg), "--log-format", "json",
             *args],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log,
        )
    wait_for_socket(proc, sock, log_path)
    return DaemonProc(proc, sock, log_path)


def finish(d: DaemonProc) -> None:
    if d.alive():
        rc = d.stop()
        assert rc == 0, f"iopfd exited {rc} on SIGTERM:\n{d.log_path.read_text()}"


__all__ = ["DaemonProc", "finish", "iopfd_command", "start_daemon"]
