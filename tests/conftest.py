"""Shared pytest fixtures of hpcblend's tests."""

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data directory (``$HPCBLEND_SHARED_DATA`` or ``<repo>/../shared/data``).

    Skips the test when the data are absent, unless the environment variable
    ``CI`` is set: then a missing data directory fails the test.
    """
    env = os.environ.get("HPCBLEND_SHARED_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    if not path.is_dir():
        msg = f"shared data directory not found: {path} (set HPCBLEND_SHARED_DATA)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path
