"""Fixtures: a machine on the default topology and a bound accelerator."""

from __future__ import annotations

import pytest

from hwmodel import Machine, default_topology
from hwmodel.testing import ACCEL, Bound, bind


@pytest.fixture
def machine() -> Machine:
    return Machine(default_topology())


@pytest.fixture
def accel(machine: Machine) -> Bound:
    return bind(machine, ACCEL)
