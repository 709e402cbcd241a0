"""The mypyc overlay of ``make accel`` (hwmodel/accel.py): found on ``sys.path``, put
ahead of the sources, and all or nothing. ``make test`` runs the whole suite twice,
without and with ``PYTHONPATH=build/accel``; these tests hold in both runs."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

import hwmodel
import iopfd.core
from hwmodel.accel import GROUP_LIBRARY, compiled, overlay_path

TAG = sys.implementation.cache_tag


def _fake_overlay(root: Path, *package: str) -> Path:
    path = root.joinpath(TAG, *package)
    path.mkdir(parents=True)
    return path


def test_the_overlay_of_a_package_is_found_below_a_sys_path_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hw = _fake_overlay(tmp_path, "hwmodel")
    core = _fake_overlay(tmp_path, "iopfd", "core")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sys.modules, GROUP_LIBRARY, types.ModuleType(GROUP_LIBRARY))
    assert overlay_path("hwmodel") == [str(hw)]
    assert overlay_path("iopfd.core") == [str(core)]
    assert overlay_path("iopfd.protocol") == []


def test_only_the_first_overlay_on_sys_path_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _fake_overlay(tmp_path / "a", "hwmodel")
    _fake_overlay(tmp_path / "b", "hwmodel")
    monkeypatch.setattr(sys, "path", [str(tmp_path / "a"), str(tmp_path / "b")])
    monkeypatch.setitem(sys.modules, GROUP_LIBRARY, types.ModuleType(GROUP_LIBRARY))
    assert overlay_path("hwmodel") == [str(first)]


def test_no_overlay_on_sys_path_leaves_the_sources_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "hwmodel").mkdir()  # a package directory on sys.path is not an overlay
    monkeypatch.setattr(sys, "path", [str(tmp_path)])
    assert overlay_path("hwmodel") == []


def test_an_overlay_without_its_library_is_an_import_error_that_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_overlay(tmp_path, "hwmodel")
    monkeypatch.setattr(sys, "path", [str(tmp_path)])
    monkeypatch.delitem(sys.modules, GROUP_LIBRARY, raising=False)
    with pytest.raises(ImportError, match="make accel"):
        overlay_path("hwmodel")


def test_the_build_in_use_is_all_compiled_or_all_python() -> None:
    """With the overlay on PYTHONPATH every module of both packages comes from it
    (nothing shadows it, not the editable install's finder); without, none does."""
    assert bool(overlay_path("hwmodel")) == hwmodel.COMPILED
    assert iopfd.core.__path__[0].endswith(str(Path(TAG, "iopfd", "core"))) == hwmodel.COMPILED
    loaded = [
        name
        for name in sys.modules
        if name.startswith(("hwmodel.", "iopfd.core.")) and name != "hwmodel.accel"
    ]
    assert "hwmodel.iommu" in loaded and "iopfd.core.io_pgfault" in loaded
    assert [n for n in loaded if compiled(n) != hwmodel.COMPILED] == []
