"""sd_listen_fds and sd_notify semantics, in-process."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from iopfd.server.systemd import Notifier, listen_fds, watchdog_interval_s


def test_listen_fds_ignores_variables_meant_for_another_pid(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LISTEN_PID", str(os.getpid() + 1))
    monkeypatch.setenv("LISTEN_FDS", "1")
    assert listen_fds() == []
    assert "LISTEN_PID" not in os.environ and "LISTEN_FDS" not in os.environ


def test_listen_fds_takes_fd_3_when_meant_for_us(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "s"))
    listener.listen()
    saved = os.dup(3) if _fd_open(3) else None
    os.dup2(listener.fileno(), 3)
    try:
        monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
        monkeypatch.setenv("LISTEN_FDS", "1")
        socks = listen_fds()
        assert [s.fileno() for s in socks] == [3]
        assert socks[0].getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        assert not os.get_inheritable(3)
        socks[0].detach()
    finally:
        if saved is not None:
            os.dup2(saved, 3)
            os.close(saved)
        else:
            os.close(3)
        listener.close()


def _fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_watchdog_interval_is_half_of_watchdog_usec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_interval_s() == 1.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert watchdog_interval_s() is None
    monkeypatch.delenv("WATCHDOG_USEC")
    assert watchdog_interval_s() is None


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_notifier_sends_one_datagram_of_newline_separated_assignments(
    tmp_path: Path, abstract: bool
) -> None:
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"iopfd-test-{os.getpid()}-{id(sink)}"
        sink.bind("\0" + name)
        address = "@" + name
    else:
        address = str(tmp_path / "notify")
        sink.bind(address)
    sink.settimeout(2)
    n = Notifier(address)
    assert n.enabled
    n.notify("READY=1", "STATUS=ok")
    assert sink.recv(4096) == b"READY=1\nSTATUS=ok"
    n.close()
    sink.close()


def test_notifier_without_notify_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    assert not n.enabled
    n.notify("READY=1")


def test_notifier_counts_a_failed_send_and_carries_on(tmp_path: Path) -> None:
    n = Notifier(str(tmp_path / "nobody-listens"))
    n.notify("READY=1")
    assert n.failures == 1
    n.close()
