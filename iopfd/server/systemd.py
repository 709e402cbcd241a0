"""systemd integration without libsystemd: socket activation and sd_notify.

Both follow sd_listen_fds(3) and sd_notify(3): the listening fds start at 3 when
``LISTEN_PID`` is our pid; notifications are newline-separated assignments sent as one
datagram to ``$NOTIFY_SOCKET`` (a leading ``@`` is the abstract namespace).
"""

from __future__ import annotations

import os
import socket
from typing import Final

SD_LISTEN_FDS_START: Final = 3


def listen_fds(*, unset_environment: bool = True) -> list[socket.socket]:
    """The sockets passed by socket activation, as stdlib sockets we now own.

    Empty when ``LISTEN_PID`` is absent or names another process (the variables were
    inherited, not meant for us). The fds are set close-on-exec, and the variables are
    removed so that children do not take them for their own.
    """
    try:
        pid = int(os.environ.get("LISTEN_PID", ""))
        count = int(os.environ.get("LISTEN_FDS", ""))
    except ValueError:
        return []
    finally:
        if unset_environment:
            for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
                os.environ.pop(var, None)
    if pid != os.getpid() or count <= 0:
        return []
    socks = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
        os.set_inheritable(fd, False)
        socks.append(socket.socket(fileno=fd))
    return socks


def _notify_address(raw: str) -> str | bytes | None:
    if raw.startswith("@"):
        return b"\0" + raw[1:].encode()
    if raw.startswith("/"):
        return raw
    return None  # vsock: and other forms are not ours to handle


class Notifier:
    """sd_notify over ``$NOTIFY_SOCKET``; every method is a no-op when it is unset."""

    def __init__(self, address: str | None = None) -> None:
        raw = address if address is not None else os.environ.pop("NOTIFY_SOCKET", None)
        self._sock: socket.socket | None = None
        self.failures = 0
        addr = _notify_address(raw) if raw else None
        if addr is not None:
            # A non-blocking datagram to a local socket: sent at once or dropped, so it can
            # be sent from any task without an await.
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            sock.setblocking(False)
            self._addr: str | bytes = addr
            self._sock = sock

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *assignments: str) -> None:
        """Send ``READY=1``, ``STATUS=...`` etc. as one datagram; errors are ignored.

        A notification is advisory: systemd gone away must never stop the daemon; a
        failed send is counted in ``failures``.
        """
        if self._sock is None:
            return
        try:
            self._sock.sendto("\n".join(assignments).encode(), self._addr)
        except OSError:
            self.failures += 1

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval_s() -> float | None:
    """Half of ``WATCHDOG_USEC`` when the watchdog is meant for us, else ``None``."""
    wpid = os.environ.get("WATCHDOG_PID")
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    try:
        if wpid is not None and int(wpid) != os.getpid():
            return None
        interval = int(usec)
    except ValueError:
        return None
    if interval <= 0:
        return None
    return interval / 2 / 1e6
