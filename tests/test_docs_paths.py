"""The documents cite only files that exist: every backticked repository path in
README.md and docs/*.md names something in the tree."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: Top-level directories whose paths are the repository's own.
TOP = sorted(p.name for p in ROOT.iterdir() if not p.name.startswith("."))
#: Built or generated, not committed: named by the docs as what a command produces.
PRODUCED = re.compile(
    r"^(build/|clients/c/iopf-vmm-c$|bench/results/quick/|\.venv/|iopfd/\d)|\{|\*|<|\.\.\."
)
_PATH = re.compile(r"`([A-Za-z0-9_./{},*<>-]+)`")
_FILE = re.compile(r"`([A-Za-z0-9_-]+\.(?:py|md|toml))`")
#: Bare file names the docs tell the reader to create.
YOURS = {"fault_handler.py", "test_my_vmm.py"}


def cited_paths(text: str) -> set[str]:
    out = set()
    for m in _PATH.finditer(text):
        path = m.group(1).rstrip(".,:")
        first = path.split("/", 1)[0]
        if ("/" in path and first in TOP) or path in TOP:
            out.add(path)
    return out


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_backticked_repository_path_exists(doc: Path) -> None:
    missing = sorted(
        p
        for p in cited_paths(doc.read_text())
        if not PRODUCED.search(p) and not (ROOT / p).exists()
    )
    assert not missing, f"{doc.name} cites paths that are not in the repository: {missing}"


def test_the_scan_finds_paths_and_would_catch_a_missing_one() -> None:
    found = cited_paths("see `clients/launch.py`, `docs/nope.md` and `hwmodel/`")
    assert found == {"clients/launch.py", "docs/nope.md", "hwmodel/"}
    assert not (ROOT / "docs/nope.md").exists()


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_backticked_file_name_is_a_file_of_the_repository(doc: Path) -> None:
    """A bare ``name.py``/``.md``/``.toml`` (a module in a table, a document) exists
    somewhere in the tree, unless it is one the page tells the reader to write."""
    names = {p.name for p in ROOT.rglob("*") if ".venv" not in p.parts and ".git" not in p.parts}
    missing = sorted({n for n in _FILE.findall(doc.read_text()) if n not in names} - YOURS)
    assert not missing, f"{doc.name} cites files that are not in the repository: {missing}"
