"""Run the real ``iopfd`` as a subprocess on a temporary socket, for the tests.

Started by ``clients.launch`` (ready on ``READY=1``, never by polling the socket).
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iopfd_rawclient import RawClient

from clients.launch import Launched, launch

START_TIMEOUT_S = 15.0


def iopfd_command() -> list[str]:
    """The installed ``iopfd`` console script (the unit files and the exit-status tests
    run it directly, not through the launcher)."""
    script = Path(sys.executable).parent / "iopfd"
    if script.exists():
        return [str(script)]
    found = shutil.which("iopfd")
    return [found] if found else [sys.executable, "-m", "iopfd.server.main"]


@dataclass
class DaemonProc:
    launched: Launched

    @property
    def socket(self) -> str:
        return self.launched.socket

    @property
    def log_path(self) -> Path:
        return self.launched.log_path

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
        return counters["groups"], (
            counters["responses"]
            + counters["auto_responses"]
            + counters["throttled"]
            + len(pending)
        )

    def assert_identity_at_rest(self, timeout: float = 5.0) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        while True:
            counters, pending = self.counters_and_pending()
            lhs = counters["groups"]
            rhs = (
                counters["responses"]
                + counters["auto_responses"]
                + counters["throttled"]
                + len(pending)
            )
            if lhs == rhs:
                return counters
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"exactly-once identity broken: groups={lhs} != {rhs} "
                    f"counters={counters} pending={pending}"
                )
            time.sleep(0.02)

    def alive(self) -> bool:
        return self.launched.alive()

    def log(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log_path.read_text().splitlines():
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                lines.append({"raw": line})
        return lines

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        return self.launched.stop(timeout, sig=sig)


def start_daemon(
    tmp: Path, config: str = "", *, socket_path: str | None = None, args: tuple[str, ...] = ()
) -> DaemonProc:
    sock = socket_path or str(tmp / "run" / "iopfd.sock")
    cfg = tmp / "iopfd.toml"
    cfg.write_text(config)
    return DaemonProc(
        launch(
            socket=sock,
            config=cfg,
            log=tmp / "iopfd.log",
            args=("--log-format", "json", *args),
            ready_timeout=START_TIMEOUT_S,
        )
    )


def finish(d: DaemonProc) -> None:
    if d.alive():
        rc = d.stop()
        assert rc == 0, f"iopfd exited {rc} on SIGTERM:\n{d.log_path.read_text()}"


__all__ = ["DaemonProc", "finish", "iopfd_command", "start_daemon"]
