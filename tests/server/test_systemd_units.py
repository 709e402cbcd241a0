"""systemd integration: the shipped units verify, and the daemon runs the way systemd
starts it (a listening fd at 3, LISTEN_PID, NOTIFY_SOCKET, WATCHDOG_USEC)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from iopfd_harness import iopfd_command
from iopfd_rawclient import RawClient

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "systemd"


def test_units_pass_systemd_analyze_verify_without_a_warning(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    exe = iopfd_command()[0]
    assert os.access(exe, os.X_OK), exe
    service = (UNITS / "iopfd.service").read_text()
    assert "ExecStart=/usr/local/bin/iopfd " in service
    # verify checks that ExecStart exists: point it at this checkout's iopfd.
    (tmp_path / "iopfd.service").write_text(
        service.replace("ExecStart=/usr/local/bin/iopfd ", f"ExecStart={exe} ")
    )
    shutil.copy(UNITS / "iopfd.socket", tmp_path / "iopfd.socket")
    proc = subprocess.run(
        [tool, "verify", str(tmp_path / "iopfd.socket"), str(tmp_path / "iopfd.service")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr


def test_service_unit_has_the_settings_the_daemon_relies_on() -> None:
    service = (UNITS / "iopfd.service").read_text()
    for line in (
        "Type=notify",
        "RuntimeDirectory=iopfd",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "RestrictAddressFamilies=AF_UNIX",
        "MemoryDenyWriteExecute=yes",
        "SystemCallFilter=@system-service",
    ):
        assert line in service.splitlines(), line
    assert any(line.startswith("WatchdogSec=") for line in service.splitlines())
    sock = (UNITS / "iopfd.socket").read_text().splitlines()
    assert "ListenStream=/run/iopfd/iopfd.sock" in sock
    assert "SocketMode=0660" in sock


def test_the_service_fd_limit_covers_max_connections_and_their_fault_fds() -> None:
    """Issue 11: the unit's 1024 fds ran out before max_connections did."""
    from iopfd.server.config import Limits

    service = (UNITS / "iopfd.service").read_text().splitlines()
    [limit] = [int(line.split("=", 1)[1]) for line in service if line.startswith("LimitNOFILE=")]
    assert limit >= 2 * Limits().max_connections + 64


def test_the_example_config_is_valid_and_lists_every_limit() -> None:
    from iopfd.server.config import Limits, load_config

    config = load_config(UNITS / "iopfd.toml")
    text = (UNITS / "iopfd.toml").read_text()
    for name in Limits.model_fields:
        assert f"\n{name} = " in text, name
    assert config.limits.max_connections_per_uid == Limits().max_connections_per_uid


def _recv_all(notify: socket.socket, until: str, timeout: float) -> list[str]:
    msgs: list[str] = []
    deadline = time.monotonic() + timeout
    while not any(until in m for m in msgs):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {until} within {timeout}s; got {msgs}")
        notify.settimeout(left)
        msgs.append(notify.recv(4096).decode())
    return msgs


def test_socket_activated_daemon_notifies_ready_watchdog_and_stopping(tmp_path: Path) -> None:
    sock_path = str(tmp_path / "activated.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sock_path)
    listener.listen()
    notify_path = str(tmp_path / "notify")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    env = {
        **os.environ,
        "NOTIFY_SOCKET": notify_path,
        "LISTEN_FDS": "1",
        "LISTEN_FDNAMES": "iopfd.socket",
        "WATCHDOG_USEC": "200000",
    }
    log_path = tmp_path / "iopfd.log"
    cmd = " ".join(iopfd_command())
    fd = listener.fileno()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            # exec keeps the pid, so that LISTEN_PID names the daemon itself.
            ["sh", "-c", f"LISTEN_PID=$$ WATCHDOG_PID=$$ exec {cmd} --log-format json"],
            env=env,
            pass_fds=(3,),
            preexec_fn=lambda: os.dup2(fd, 3),  # noqa: PLW1509 - no threads in this test
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    try:
        msgs = _recv_all(notify, "READY=1", 15)
        ready = next(m for m in msgs if "READY=1" in m)
        assert "STATUS=" in ready
        with RawClient(sock_path, client="activated") as c:
            assert c.call("devices")["devices"]
            assert c.call("status")["counters"]["groups"] >= 0
        msgs = _recv_all(notify, "WATCHDOG=1", 2)
        time.sleep(0.25)
        msgs += _recv_all(notify, "WATCHDOG=1", 2)
        assert sum("WATCHDOG=1" in m for m in msgs) >= 2
        proc.terminate()
        assert proc.wait(10) == 0
        msgs = _recv_all(notify, "STOPPING=1", 2)
        # The socket belongs to the socket unit: the daemon must leave it in place.
        assert os.path.exists(sock_path)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        listener.close()
        notify.close()
    assert not any(
        "socket=" in line and "listening" in line for line in log_path.read_text().splitlines()
    )
