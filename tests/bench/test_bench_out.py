"""`make bench QUICK=1` writes its smoke results apart from the committed figures."""

from __future__ import annotations

from bench.common import RESULTS
from bench.run import QUICK_RESULTS, default_out


def test_quick_runs_write_under_results_quick_never_over_the_committed_latest() -> None:
    assert default_out(quick=False) == RESULTS
    assert default_out(quick=True) == QUICK_RESULTS == RESULTS / "quick"
    assert (RESULTS / "latest.json").exists()  # the committed full run it must not overwrite
