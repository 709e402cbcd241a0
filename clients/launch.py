"""Start ``iopfd`` and wait until it is ready, as systemd does: ``READY=1`` on a
``NOTIFY_SOCKET`` (sd_notify(3)); stop it with SIGTERM and report how it exited.

The one launcher of the repository: the tests, ``bench/``, ``make demo`` and
``iopf-vmm`` start the daemon with it. It never polls for the socket file: the daemon
sends ``READY=1`` once it listens, so a client may connect the moment :func:`launch`
returns.

    with launched(config="iopfd.toml") as d:
        SyncClient(d.socket) ...
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket as _socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: How much of the daemon's log a ``LaunchError`` quotes.
LOG_TAIL_BYTES = 4000


class LaunchError(RuntimeError):
    """The daemon exited before it was ready, was not ready in time, did not stop in
    time, or stopped with a non-zero status; the message ends with its log's tail."""


def _tail(path: Path) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - LOG_TAIL_BYTES))
            return f.read().decode(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"


@dataclass
class Launched:
    """A running daemon started by :func:`launch`."""

    socket: str
    process: subprocess.Popen[bytes]
    log_path: Path
    #: The private directory of the daemon's socket and log when none was given;
    #: removed by :meth:`stop` (pass ``log=`` to keep the log).
    private_dir: Path | None = None
    #: The log's tail when the daemon stopped with a non-zero status.
    last_log_tail: str = ""

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self) -> str:
        return _tail(self.log_path)

    def stop(self, timeout: float = 5.0, *, sig: int = signal.SIGTERM) -> int:
        """Send ``sig`` (SIGTERM), wait up to ``timeout`` s and return the exit status
        (negative: killed by that signal). On timeout the daemon is killed and
        :class:`LaunchError` raised. Calling it again returns the same status."""
        try:
            if self.process.poll() is None:
                self.process.send_signal(sig)
                try:
                    self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
                    raise LaunchError(
                        f"iopfd (pid {self.pid}) did not stop within "
                        f"{timeout:g} s of signal {sig}; killed\n"
                        f"{self.log_tail()}"
                    ) from None
            status = self.process.returncode
            if status != 0:
                self.last_log_tail = self.log_tail()  # before the private dir goes
            return status
        finally:
            self._close()

    def _close(self) -> None:
        if self.private_dir is not None:
            shutil.rmtree(self.private_dir, ignore_errors=True)


def daemon_command(python: str | None = None) -> list[str]:
    """How the daemon is started: this (or the given) interpreter, ``-m iopfd.server.main``,
    so that the daemon runs from the same installation as its caller."""
    return [python or sys.executable, "-m", "iopfd.server.main"]


def _wait_ready(
    notify: _socket.socket, process: subprocess.Popen[bytes], log_path: Path, timeout: float
) -> None:
    """Block until ``READY=1`` arrives; wake also when the process exits (a pidfd)."""
    deadline = time.monotonic() + timeout
    pidfd = -1
    with contextlib.suppress(OSError, AttributeError):
        pidfd = os.pidfd_open(process.pid)
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LaunchError(f"iopfd sent no READY=1 within {timeout:g} s\n{_tail(log_path)}")
            watched = [notify.fileno()] + ([pidfd] if pidfd >= 0 else [])
            # Without a pidfd (an old kernel), look at the process at least every 0.1 s.
            ready, _, _ = select.select(
                watched, [], [], remaining if pidfd >= 0 else min(remaining, 0.1)
            )
            if notify.fileno() in ready:
                data = notify.recv(4096)
                if b"READY=1" in data.split(b"\n"):
                    return
            if process.poll() is not None:
                raise LaunchError(
                    f"iopfd exited with status {process.returncode} before "
                    f"READY=1\n{_tail(log_path)}"
                )
    finally:
        if pidfd >= 0:
            os.close(pidfd)


def launch(
    *,
    socket: str | os.PathLike[str] | None = None,
    args: Sequence[str] = (),
    config: str | os.PathLike[str] | None = None,
    kernel: str | None = None,
    env: Mapping[str, str] | None = None,
    log: str | os.PathLike[str] | None = None,
    ready_timeout: float = 20.0,
    python: str | None = None,
    new_session: bool = False,
    preexec_fn: Callable[[], object] | None = None,
) -> Launched:
    """Start the daemon and return once it sent ``READY=1``.

    ``socket``: the path to listen on (default: ``iopfd.sock`` in a private directory);
    ``config``: a TOML config file; ``kernel``: ``--kernel``; ``args``: more flags;
    ``env``: variables added to this process's environment; ``log``: the file for the
    daemon's output (its JSON log lines; default: ``iopfd.log`` in the private
    directory); ``python``: the interpreter. ``new_session`` and ``preexec_fn`` are
    those of ``subprocess.Popen`` (the demo keeps Ctrl-C to itself and ties the daemon's
    life to its own). :class:`LaunchError` if the daemon exits first or is not ready
    within ``ready_timeout`` seconds (it is then killed).
    """
    private = None
    if socket is None or log is None:
        private = Path(tempfile.mkdtemp(prefix="iopfd-launch-"))
    default_dir = private or Path(".")
    sock_path = str(socket) if socket is not None else str(default_dir / "iopfd.sock")
    log_path = Path(log) if log is not None else default_dir / "iopfd.log"
    argv = [*daemon_command(python), "--socket", sock_path]
    if config is not None:
        argv += ["--config", str(config)]
    if kernel is not None:
        argv += ["--kernel", kernel]
    argv += list(args)
    # The notify socket lives only until READY=1: nothing is left behind even if the
    # caller is killed later (the daemon's later notifications then go nowhere, which
    # sd_notify allows).
    notify_dir = Path(tempfile.mkdtemp(prefix="iopfd-notify-"))
    notify = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC)
    launched: Launched | None = None
    try:
        notify_path = str(notify_dir / "notify.sock")
        notify.bind(notify_path)
        full_env = dict(os.environ)
        full_env.update(env or {})
        full_env["NOTIFY_SOCKET"] = notify_path
        for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "WATCHDOG_USEC", "WATCHDOG_PID"):
            if env is None or var not in env:
                full_env.pop(var, None)  # ours, not the daemon's
        with log_path.open("ab") as log_file:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=full_env,
                start_new_session=new_session,
                preexec_fn=preexec_fn,  # noqa: PLW1509 - the caller's choice (the demo's)
            )
        launched = Launched(sock_path, process, log_path, private)
        _wait_ready(notify, process, log_path, ready_timeout)
    except BaseException:
        if launched is not None:
            if process.poll() is None:
                process.kill()
                process.wait()
            launched._close()
        elif private is not None:
            shutil.rmtree(private, ignore_errors=True)
        raise
    finally:
        notify.close()
        shutil.rmtree(notify_dir, ignore_errors=True)
    return launched


@contextlib.contextmanager
def launched(**kw: Any) -> Iterator[Launched]:
    """:func:`launch` for a ``with`` block: stopped with SIGTERM at its end, and
    :class:`LaunchError` unless the daemon then exits 0."""
    daemon = launch(**kw)
    ok = False
    try:
        yield daemon
        ok = True
    finally:
        status = daemon.stop()
        if ok and status != 0:
            raise LaunchError(
                f"iopfd exited with status {status} on SIGTERM\n{daemon.last_log_tail}"
            )


__all__ = ["LaunchError", "Launched", "daemon_command", "launch", "launched"]
