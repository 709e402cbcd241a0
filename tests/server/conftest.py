"""Fixtures of the daemon integration tests.

``daemon`` is one daemon per test module (starting Python takes most of a second);
``iopfd`` hands it to a test and, after the test, checks that the daemon is alive, hit
no internal error, and that the exactly-once identity holds at rest:
``groups == responses + auto_responses + throttled + len(pending)``. ``daemon_612`` and
``iopfd_612`` are the same for a daemon started with ``--kernel 6.12``.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# The helpers next to this file are plain modules with iopfd-specific names.
sys.path.insert(0, str(Path(__file__).parent))

from iopfd_harness import DaemonProc, start_daemon  # noqa: E402


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    d = start_daemon(tmp_path_factory.mktemp("iopfd"))
    try:
        yield d
    finally:
        if d.alive():
            d.stop()


@pytest.fixture(scope="module")
def daemon_612(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    d = start_daemon(tmp_path_factory.mktemp("iopfd612"), args=("--kernel", "6.12"))
    try:
        yield d
    finally:
        if d.alive():
            d.stop()


def _checked(daemon: DaemonProc) -> Iterator[DaemonProc]:
    assert daemon.alive(), daemon.log_path.read_text()
    yield daemon
    assert daemon.alive(), f"iopfd died:\n{daemon.log_path.read_text()}"
    counters = daemon.assert_identity_at_rest()
    assert counters.get("daemon_internal_errors", 0) == 0, [
        line for line in daemon.log() if line.get("level") == "error"
    ]


@pytest.fixture
def iopfd(daemon: DaemonProc) -> Iterator[DaemonProc]:
    yield from _checked(daemon)


@pytest.fixture
def iopfd_612(daemon_612: DaemonProc) -> Iterator[DaemonProc]:
    yield from _checked(daemon_612)


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory uid 65534 can traverse (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="iopfd-test-"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
