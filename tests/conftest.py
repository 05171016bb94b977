"""Shared test fixtures.

Photos come from the shared data folder (FACEJOB_DATA, default ../shared/data next to the
repository). Without it, tests that need photos skip with the reason; under CI (CI=true) a
missing folder fails them instead, so CI can never go green by skipping.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.s3_server import s3, s3_endpoint  # noqa: F401  (one moto server per test session)

# Before anything imports torch: OpenMP's busy-waiting crawls on a shared 2-core machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    return Path(os.environ.get("FACEJOB_DATA", REPO.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    root = data_root()
    if not (root / "lfw").is_dir():
        msg = f"shared photo folder not found at {root} (set FACEJOB_DATA)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg + "; under CI this is a failure, not a skip")
        pytest.skip(msg)
    return root


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray for one test module (test_guards has its own, with S3 settings for workers)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture(autouse=True)
def _facejob_logging():
    """`facejob.cli.main` points the facejob logger at the sys.stderr of the moment (a test's
    capture, closed afterwards); put it back after each test."""
    import logging

    logger = logging.getLogger("facejob")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]
