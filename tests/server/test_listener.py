"""The daemon's own listening socket: mode, stale sockets, live sockets."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from iopfd.server.listener import SocketInUse, UnsafeSocketDirectory, bind_unix_socket
from iopfd.server.peer import PeerCred, is_admin, peer_credentials


def test_bind_creates_the_parent_directory_and_applies_the_mode(tmp_path: Path) -> None:
    path = tmp_path / "run" / "iopfd" / "s.sock"
    b = bind_unix_socket(path, 0o660, None)
    try:
        st = os.stat(path)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o660
    finally:
        b.sock.close()
        b.remove()
    assert not path.exists()


def test_a_stale_socket_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens: stale
    b = bind_unix_socket(path, 0o600, None)
    b.sock.close()
    b.remove()


def test_a_live_socket_is_never_clobbered(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(str(path))
    live.listen()
    try:
        with pytest.raises(SocketInUse, match="another daemon"):
            bind_unix_socket(path, 0o600, None)
        assert path.exists()
    finally:
        live.close()


def test_a_regular_file_at_the_path_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    path.write_text("not a socket")
    with pytest.raises(SocketInUse, match="not a socket"):
        bind_unix_socket(path, 0o600, None)
    assert path.read_text() == "not a socket"


def test_remove_leaves_a_successors_socket_alone(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    b = bind_unix_socket(path, 0o600, None)
    b.sock.close()
    os.unlink(path)
    successor = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    successor.bind(str(path))
    try:
        b.remove()
        assert path.exists()
    finally:
        successor.close()


def test_peer_credentials_report_pid_uid_gid_and_groups() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        cred = peer_credentials(a)
        assert (cred.pid, cred.uid, cred.gid) == (os.getpid(), os.getuid(), os.getgid())
        assert set(os.getgroups()) <= cred.groups | {os.getgid()}
    finally:
        a.close()
        b.close()


def test_admin_is_root_or_our_uid_or_the_admin_group() -> None:
    me = os.getuid()
    other = 65534 if me != 65534 else 65533
    assert is_admin(PeerCred(1, 0, 0, frozenset()), None)
    assert is_admin(PeerCred(1, me, 100, frozenset()), None)
    assert not is_admin(PeerCred(1, other, 100, frozenset()), None)
    assert not is_admin(PeerCred(1, other, 100, frozenset({5})), 7)
    assert is_admin(PeerCred(1, other, 7, frozenset()), 7)
    assert is_admin(PeerCred(1, other, 100, frozenset({3, 7})), 7)


# --- host safety: no chmod/chown through the path, no unsafe directory ------------------


def test_a_link_planted_at_the_path_after_bind_never_redirects_the_mode_or_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race of issue 11: bind, then an attacker swaps the path for a link to a file
    of root's before the daemon's chmod/chown by path. Nothing may reach the victim."""
    victim = tmp_path / "victim"
    victim.write_text("root's")
    victim.chmod(0o600)
    path = tmp_path / "s.sock"
    real_chmod, real_chown = os.chmod, os.chown

    def swap_if_final(target: object) -> None:
        if Path(str(target)) == path and not path.is_symlink():
            path.unlink()
            path.symlink_to(victim)

    def chmod(target: object, mode: int, **kw: object) -> None:
        swap_if_final(target)
        real_chmod(target, mode, **kw)  # type: ignore[arg-type]

    def chown(target: object, uid: int, gid: int, **kw: object) -> None:
        swap_if_final(target)
        real_chown(target, uid, gid, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "chmod", chmod)
    monkeypatch.setattr(os, "chown", chown)
    b = bind_unix_socket(path, 0o666, os.getgid())
    try:
        st = os.lstat(path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o666
        assert stat.S_IMODE(os.stat(victim).st_mode) == 0o600
    finally:
        b.sock.close()
        b.remove()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim"]  # no private dir left


def test_a_world_writable_directory_without_the_sticky_bit_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(UnsafeSocketDirectory, match="sticky"):
        bind_unix_socket(shared / "s.sock", 0o660, None)
    shared.chmod(0o1777)  # sticky: nobody else may unlink our socket
    bind_unix_socket(shared / "s.sock", 0o660, None).sock.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory away")
def test_a_directory_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, 65534, 65534)
    with pytest.raises(UnsafeSocketDirectory, match="owned by uid 65534"):
        bind_unix_socket(theirs / "s.sock", 0o660, None)
