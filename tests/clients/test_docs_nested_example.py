"""docs/clients.md's nested example tells stage-1 from stage-2 misses and prints what
the page says."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from clients.pytest_plugin import IopfdDaemon

pytestmark = pytest.mark.integration

DOC = Path(__file__).resolve().parents[2] / "docs" / "clients.md"


def _blocks() -> tuple[str, str]:
    text = DOC.read_text()
    m = re.search(
        r"<!-- runnable example: tests/clients/test_docs_nested_example.py.*?-->\s*"
        r"```python\n(.*?)```\s*It prints:\s*```\n(.*?)```",
        text,
        re.S,
    )
    assert m, "docs/clients.md lost its nested (stage-1/stage-2) example"
    return m.group(1), m.group(2)


def test_nested_example_maps_stage_1_for_stage_1_misses_and_the_ioas_for_stage_2(
    iopfd_daemon: IopfdDaemon, tmp_path: Path
) -> None:
    code, printed = _blocks()
    script = tmp_path / "nested.py"
    script.write_text(code)
    proc = subprocess.run(
        [sys.executable, str(script), iopfd_daemon.socket],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == printed.strip()
