"""The complete fault handler in docs/clients.md runs as printed and says what the page says."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.clients.conftest import LiveDaemon

pytestmark = pytest.mark.integration

DOC = Path(__file__).resolve().parents[2] / "docs" / "clients.md"


def _example() -> str:
    text = DOC.read_text()
    m = re.search(r"<!-- runnable example.*?-->\s*```python\n(.*?)```", text, re.S)
    assert m, "docs/clients.md lost its runnable example"
    return m.group(1)


def test_docs_example_serves_faults_and_prints_the_documented_outcome(
    live: LiveDaemon, tmp_path: Path
) -> None:
    script = tmp_path / "fault_handler.py"
    script.write_text(_example())
    proc = subprocess.run(
        [sys.executable, str(script), live.path],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for line in (
        "first touch: ok, 8 page requests",
        "pasid 1:     ok, 1 page requests",
        "again:       ok, 0 page requests",
        "wild:        invalid",
    ):
        assert line in out, out
    assert "-> SUCCESS" in out and "-> INVALID" in out
