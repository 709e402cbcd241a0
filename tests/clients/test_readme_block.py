"""The README's *Using it* block, pasted into bash as a user would: it prints what the
README says and leaves nothing running."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_block() -> str:
    m = re.search(r"<!-- readme-block.*?-->\s*```sh\n(.*?)```", README.read_text(), re.S)
    assert m, "README.md lost its runnable *Using it* block"
    return m.group(1)


def _ours(marker: str) -> list[int]:
    """Processes whose environment carries ``marker`` (what the block started)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def test_readme_block_runs_as_pasted_and_leaves_nothing_running(tmp_path: Path) -> None:
    marker = f"IOPF_README_TEST={uuid.uuid4().hex}"
    env = {k: v for k, v in os.environ.items() if k not in ("IOPFD_SOCKET", "XDG_RUNTIME_DIR")}
    # no XDG_RUNTIME_DIR: the block's fallback, a private temp dir (under tmp_path here)
    env.update(
        PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""),
        TMPDIR=str(tmp_path),
        IOPF_README_TEST=marker.split("=", 1)[1],
    )
    (tmp_path / "block.sh").write_text(readme_block())
    proc = subprocess.Popen(
        ["bash", "block.sh"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        leftovers = _ours(marker)
        for pid in leftovers:
            os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 0, err
    assert not leftovers, f"the block left processes running: {leftovers}"
    assert "Traceback" not in out + err, err

    assert re.search(r"^iopfd ready at .*iopfd\.sock \(iopfd/", out, re.M), out
    assert re.search(r"^0000:3a:00\.0\s+dmar0\s+free", out, re.M), out
    # the trace, started before the VMM: its faults and answers, and the injected group
    trace = (tmp_path / "trace.txt").read_text()
    assert re.search(r"\bfault\s+rid=0000:3a:00\.0 .*perm=READ", trace), trace[:2000]
    assert re.search(r"\bresponse\s+rid=0000:3a:00\.0 .*code=SUCCESS", trace), trace[:2000]
    injected = re.search(
        r"\bfault\s+rid=0000:3a:00\.0 .*grpid=3 addr=0x1000 perm=READ\|WRITE .*cookie=(\d+)", out
    )
    assert injected, out
    answer = re.search(rf"\bresponse\s+rid=0000:3a:00\.0 .*cookie={injected[1]} code=INVALID", out)
    assert answer, out
    # the VMM: its answer to the inject is the run's only INVALID; every check held
    assert re.search(r"answers\s+SUCCESS \d+, INVALID 1$", out, re.M), out
    assert "invariants     ok" in out, out
    assert "injected\n" in out and "unplugged\n" in out and "plugged\n" in out
    m = re.search(r"^exactly-once: groups (\d+) == .* (\d+): holds$", out, re.M)
    assert m and m[1] == m[2] and int(m[1]) > 0, out
    # the daemon's log went to the file, not the terminal
    log = (tmp_path / "iopfd.log").read_text()
    assert log.lstrip().startswith("{") and '"event"' in log, log[:500]
    assert "iopfd.log" not in err and '"event"' not in out + err
    # SIGTERM removed the socket; the private dir is all that is left of it
    assert not list(tmp_path.glob("tmp.*/iopfd.sock"))
