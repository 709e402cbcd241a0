"""The listening socket: taken from systemd, or bound at ``--socket PATH``."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import tempfile
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


class UnsafeSocketDirectory(SocketInUse):
    """The socket's directory could let another user swap the path under us."""


#: How long the probe for a live daemon may wait (a full backlog blocks connect()).
PROBE_TIMEOUT_S = 1.0


def check_socket_directory(directory: Path) -> None:
    """Refuse a directory another user could rename or replace our socket in: one that
    is world-writable without the sticky bit, or owned by a user other than root and us
    (``/tmp`` itself, 1777 and root's, is allowed: nobody else may unlink our file)."""
    st = os.stat(directory)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeSocketDirectory(f"{directory} is not a directory")
    if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
        raise UnsafeSocketDirectory(
            f"{directory} is world-writable without the sticky bit: refusing to listen there"
        )
    if st.st_uid not in (0, os.geteuid()):
        raise UnsafeSocketDirectory(
            f"{directory} is owned by uid {st.st_uid}, not root or us: refusing to listen there"
        )


def _clear_stale(path: Path) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketInUse(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(PROBE_TIMEOUT_S)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:
        return  # stale: its daemon is gone; the rename below replaces it
    except TimeoutError:
        raise SocketInUse(f"{path}: a daemon is listening there (its backlog is full)") from None
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

    Refuses an unsafe directory (``check_socket_directory``) and a socket some process
    still answers on; replaces a stale one. The socket is bound inside a private 0700
    directory next to ``path`` under a umask that gives it ``mode`` at once, given its
    group there (no other user can reach that directory), then renamed into place:
    nothing is ever changed through ``path``, so a link planted there cannot redirect a
    chmod or chown to another file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    check_socket_directory(path.parent)
    _clear_stale(path)
    private = Path(tempfile.mkdtemp(prefix=".iopfd-", dir=path.parent))  # mode 0700
    staged = private / "s"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        old_umask = os.umask(0o777 & ~mode)
        try:
            sock.bind(str(staged))
        finally:
            os.umask(old_umask)
        if group is not None:
            os.chown(staged, -1, group, follow_symlinks=False)
        sock.listen(backlog)
        os.rename(staged, path)  # atomic; replaces a stale socket, never follows a link
    except OSError:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staged)
        raise
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(private)
    return BoundSocket(sock, path, os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC))
