"""Shared test fixtures.

Photos come from the shared data folder (FACEJOB_DATA, default ../shared/data next to the
repository). Without it, tests that need photos skip with the reason; under CI (CI=true) a
missing folder fails them instead, so CI can never go green by skipping.

`make test` runs the suite in two pytest-xdist workers (`-n 2 --dist loadfile`). Each worker is a
session of its own: its own Ray head, moto server and Ray token; every port, temp dir and bucket
a test uses is its own, so the workers never meet.
"""
from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.ray_cluster import joined, start_head
from tests.s3_server import child_env, cmdline, descendants, kill_pids, reserve_port
from tests.s3_server import s3, s3_endpoint  # noqa: F401  (one moto server per test session)

# Before anything imports torch: OpenMP's busy-waiting crawls on a shared 2-core machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Before anything imports Ray: every Ray this session starts or joins (the shared head, a test's
# own local Ray, `facejob` subprocesses) uses token auth with one token of the session's.
os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))

REPO = Path(__file__).resolve().parents[1]


# The files that take longest (tens of seconds to two minutes each on 2 cores), longest first.
# `--dist loadfile` hands files to the workers in collection order; starting with these keeps one
# long file from running alone at the end while the other worker idles. A stale list costs only time.
LONG_FILES = ("test_multinode", "test_benches", "test_failures", "test_nightly_defaults", "test_heal",
              "test_errors", "test_incremental", "test_report", "test_retinaface")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        stem = item.path.stem
        return LONG_FILES.index(stem) if stem in LONG_FILES else len(LONG_FILES)

    items.sort(key=rank)  # stable: the other files, and the tests within a file, keep their order


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


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray head (2 CPUs) for the whole session; its address. Tests that kill a driver
    or a node start their own Ray. The workers inherit an S3 endpoint where nothing listens:
    a run on S3 works only if its driver hands the workers its own S3 settings."""
    temp_dir = tempfile.mkdtemp(prefix="fj-ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    dead = reserve_port()  # held, not listening: connections to it are refused
    # Niceness 0, as `facejob index` gives its own local Ray: at Ray's default 15, any other busy
    # process on the machine starves the workers.
    env = {**child_env(f"http://127.0.0.1:{dead.getsockname()[1]}"), "RAY_ADDRESS": "", "RAY_worker_niceness": "0"}
    head = None
    try:
        head, address, _ = start_head(temp_dir, env, "--num-cpus=2")
        yield address
    finally:
        if head is not None:
            head.stop()
        # Anything still running from this cluster names its unique temp dir: ours to end.
        kill_pids([pid for pid in descendants(0) if temp_dir in cmdline(pid)])
        shutil.rmtree(temp_dir, ignore_errors=True)
        dead.close()


@pytest.fixture(scope="module")
def ray_local(ray_cluster):
    """The session's Ray for one test module: joined in-process and by `facejob` subprocesses."""
    with joined(ray_cluster) as address:
        yield address


@pytest.fixture
def ray_address(ray_cluster, monkeypatch) -> str:
    """The session's Ray for `facejob` subprocesses of one test (through RAY_ADDRESS)."""
    monkeypatch.setenv("RAY_ADDRESS", ray_cluster)
    return ray_cluster


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
