"""Fixtures for the core's tests."""

from __future__ import annotations

import pytest

from iopfd.core.profile import PROFILES
from iopfd.core.testing import Env


@pytest.fixture
def env() -> Env:
    return Env()


@pytest.fixture(params=sorted(PROFILES))
def kenv(request: pytest.FixtureRequest) -> Env:
    """An ``Env`` under each kernel profile, for rules that hold in both."""
    return Env(kernel=request.param)
