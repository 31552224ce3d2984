"""Shared fixtures: the bundled samples."""

from __future__ import annotations

import pytest
from helpers import SAMPLE_NAMES


@pytest.fixture(params=SAMPLE_NAMES)
def sample(request: pytest.FixtureRequest) -> str:
    return str(request.param)
