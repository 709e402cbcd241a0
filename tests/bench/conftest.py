"""`bench` is not an installed package (it lives beside the ones pyproject ships); make it
importable the way `python -m bench.run` from the repository root sees it."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = str(Path(__file__).resolve().parents[2])
if REPO not in sys.path:
    sys.path.insert(0, REPO)
