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


@pytest.fixture
def root_check():
    """``root_check(comm, check)``: run ``check()`` on rank 0 only, then fail on *every* rank if it raised.

    An assertion that fails on rank 0 alone would leave the other ranks waiting
    in the test's next collective call: a hang until the CI time limit, not a
    failure. Broadcasting the outcome keeps the ranks in step, and every rank
    reports rank 0's message.
    """
    def run(comm, check):
        error = None
        if comm.rank == 0:
            try:
                check()
            except Exception as exc:  # noqa: BLE001 - reported on every rank below
                error = f"{type(exc).__name__} on rank 0: {exc}"
        error = comm.bcast(error, root=0)
        if error is not None:
            pytest.fail(error, pytrace=False)

    return run
