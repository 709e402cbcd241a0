"""Who is on the other end of a Unix socket, and may they use admin ops."""

from __future__ import annotations

import array
import grp
import os
import socket
import struct
from dataclasses import dataclass
from typing import Protocol

#: Linux SO_PEERGROUPS (4.13+): the peer's supplementary groups at connect() time.
SO_PEERGROUPS = 59
_UCRED = struct.Struct("3i")


class _HasSockopt(Protocol):
    def getsockopt(self, level: int, optname: int, buflen: int, /) -> bytes: ...


@dataclass(frozen=True, slots=True)
class PeerCred:
    pid: int
    uid: int
    gid: int
    groups: frozenset[int]


def _proc_groups(pid: int) -> frozenset[int]:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return frozenset(int(g) for g in line.split()[1:])
    except (OSError, ValueError):
        pass
    return frozenset()


def _peer_groups(sock: _HasSockopt, pid: int) -> frozenset[int]:
    # SO_PEERGROUPS is captured at connect(), so no pid-reuse race; /proc is the fallback.
    size = 4 * 256
    for _ in range(4):
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, size)
        except OSError as exc:
            if exc.errno == 34:  # ERANGE: more groups than room; grow and retry
                size *= 4
                continue
            return _proc_groups(pid)
        gids = array.array("I")
        gids.frombytes(raw[: len(raw) - len(raw) % 4])
        return frozenset(gids)
    return _proc_groups(pid)


def peer_credentials(sock: _HasSockopt) -> PeerCred:
    """SO_PEERCRED (pid, uid, gid) and supplementary groups of a connected AF_UNIX socket."""
    pid, uid, gid = _UCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    )
    return PeerCred(pid, uid, gid, _peer_groups(sock, pid))


def resolve_group(name: str | None) -> int | None:
    """The gid of the admin group named in the config (a name or a number)."""
    if name is None:
        return None
    if name.isdigit():
        return int(name)
    return grp.getgrnam(name).gr_gid


def is_admin(cred: PeerCred, admin_gid: int | None) -> bool:
    """Root, the daemon's own uid, or a member of the admin group (docs/protocol.md)."""
    if cred.uid == 0 or cred.uid == os.getuid():
        return True
    return admin_gid is not None and (cred.gid == admin_gid or admin_gid in cred.groups)
