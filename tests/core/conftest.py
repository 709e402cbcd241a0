"""Fixtures for the core's tests."""

from __future__ import annotations

import pytest

from iopfd.core.testing import Env


@pytest.fixture
def env() -> Env:
    return Env()
