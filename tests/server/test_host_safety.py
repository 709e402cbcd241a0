"""Host safety seen from the client side: a client asked to check the server's uid
(``IOPFD_SERVER_UID``) refuses whoever else listens at the socket path."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from clients.client import check_server_uid
from clients.sync import SyncClient


def test_check_server_uid_compares_so_peercred_when_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        check_server_uid(a, os.getuid())
        with pytest.raises(PermissionError, match="runs as uid"):
            check_server_uid(a, os.getuid() + 1)
        monkeypatch.delenv("IOPFD_SERVER_UID", raising=False)
        check_server_uid(a)  # not asked: nothing checked
        monkeypatch.setenv("IOPFD_SERVER_UID", str(os.getuid() + 1))
        with pytest.raises(PermissionError):
            check_server_uid(a)


def test_a_sync_client_refuses_a_squatter_of_another_uid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "squat.sock"
    squatter = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    squatter.bind(str(path))
    squatter.listen(1)
    with squatter:
        monkeypatch.setenv("IOPFD_SERVER_UID", str(os.getuid() + 1))
        with pytest.raises(PermissionError, match="runs as uid"):
            SyncClient(path, timeout=5)
