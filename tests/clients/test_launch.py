"""clients.launch: ready on READY=1, errors with the daemon's log, nothing left behind."""

from __future__ import annotations

import os
import signal
import socket
import sys
import tempfile
from pathlib import Path

import pytest

from clients.launch import LaunchError, launch, launched

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """launch's temporary directories go to a directory of this test's own, so what is
    left behind is this test's, not another process's running beside it."""
    private = tmp_path / "tmp"
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))


def _leftovers() -> set[str]:
    return {
        p
        for p in os.listdir(tempfile.gettempdir())
        if p.startswith(("iopfd-launch-", "iopfd-notify-"))
    }


def _fake_python(tmp_path: Path, body: str) -> str:
    """An executable standing in for the interpreter: ``<it> -m iopfd.server.main ...``
    runs ``body`` instead of the daemon."""
    script = tmp_path / "fake-python"
    script.write_text(f"#!{sys.executable}\nimport os, signal, socket, sys, time\n{body}\n")
    script.chmod(0o755)
    return str(script)


def test_launch_returns_a_ready_daemon_and_stop_returns_its_exit_status() -> None:
    before = _leftovers()
    d = launch()
    try:
        assert d.alive() and d.pid == d.process.pid
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(d.socket)  # listening the moment launch returned
        assert _leftovers() - before == {d.private_dir.name}  # type: ignore[union-attr]
    finally:
        assert d.stop() == 0
    assert not os.path.exists(d.socket)
    assert _leftovers() == before
    assert d.stop() == 0  # again: the same status


def test_launched_stops_the_daemon_and_keeps_a_given_log(tmp_path: Path) -> None:
    log = tmp_path / "iopfd.log"
    with launched(
        socket=tmp_path / "s.sock", log=log, args=("--log-format", "json"), kernel="6.12"
    ) as d:
        assert d.socket == str(tmp_path / "s.sock") and d.private_dir is None
    assert not d.alive()
    assert '"ready"' in log.read_text() and '"6.12"' in log.read_text()


def test_a_daemon_that_exits_before_ready_is_a_launch_error_with_its_output() -> None:
    before = _leftovers()
    with pytest.raises(LaunchError, match=r"status 2 before READY=1(.|\n)*--kernel"):
        launch(kernel="9.9")
    assert _leftovers() == before


def test_no_ready_within_the_timeout_is_a_launch_error_and_the_process_is_killed(
    tmp_path: Path,
) -> None:
    pidfile = tmp_path / "pid"
    python = _fake_python(
        tmp_path,
        f"open({str(pidfile)!r}, 'w').write(str(os.getpid()))\n"
        "print('starting slowly', flush=True)\ntime.sleep(600)",
    )
    with pytest.raises(LaunchError, match=r"no READY=1 within 0.5 s(.|\n)*starting slowly"):
        launch(python=python, ready_timeout=0.5)
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_launched_raises_when_the_daemon_exits_non_zero_on_sigterm(tmp_path: Path) -> None:
    python = _fake_python(
        tmp_path,
        """\
def term(*_):
    print("dying badly", flush=True)
    sys.exit(3)
signal.signal(signal.SIGTERM, term)
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto(b"STATUS=up\\nREADY=1", os.environ["NOTIFY_SOCKET"])
while True:
    time.sleep(1)""",
    )
    with (
        pytest.raises(LaunchError, match=r"status 3 on SIGTERM(.|\n)*dying badly"),
        launched(python=python),
    ):
        pass


def test_stop_with_another_signal_reports_it(tmp_path: Path) -> None:
    d = launch(socket=tmp_path / "s.sock", log=tmp_path / "log")
    assert d.stop(sig=signal.SIGINT) == 0  # iopfd shuts down cleanly on SIGINT too
