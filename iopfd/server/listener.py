"""The listening socket: taken from systemd, or bound at ``--socket PATH``."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path


class SocketInUse(Exception):
    """Another live daemon answers at the path, or the path is not a socket."""


@dataclass
class BoundSocket:
    """A socket this daemon bound itself; it removes the file on the way out."""

    sock: socket.socket
    path: Path
    #: An O_PATH fd on the file we bound: it pins the inode, so that its number
    #: cannot be reused by a successor's socket while we compare.
    pin: int

    def remove(self) -> None:
        """Unlink the file if it is still ours: a successor may have bound a new one."""
        if self.pin < 0:
            return
        try:
            ours = os.fstat(self.pin)
            with contextlib.suppress(FileNotFoundError):
                now = os.lstat(self.path)
                if (now.st_dev, now.st_ino) == (ours.st_dev, ours.st_ino):
                    os.unlink(self.path)
        finally:
            os.close(self.pin)
            self.pin = -1


def _clear_stale(path: Path) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketInUse(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:
        os.unlink(path)  # stale: its daemon is gone
        return
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return
        raise
    finally:
        probe.close()
    raise SocketInUse(f"{path}: another daemon is listening there")


def bind_unix_socket(
    path: str | Path, mode: int, group: int | None, backlog: int = 128
) -> BoundSocket:
    """Bind and listen at ``path`` with ``mode`` (and ``group``), creating its directory.

    Refuses to replace a socket some process still answers on; removes a stale one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    _clear_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    # Bind under a tight umask so that the file is never wider than ``mode``.
    old_umask = os.umask(0o777 & ~mode)
    try:
        sock.bind(str(path))
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    try:
        os.chmod(path, mode)
        if group is not None:
            os.chown(path, -1, group)
        sock.listen(backlog)
    except OSError:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise
    return BoundSocket(sock, path, os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC))
